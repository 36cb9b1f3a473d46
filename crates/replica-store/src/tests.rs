//! Unit tests: file formats and crate-private helpers. Property, crash,
//! kill, corruption and golden tests live in `tests/`.

use proptest::prelude::*;

use crate::chain::{parse_pit_dir_name, pit_dir_name};
use crate::format::*;
use crate::{
    InvalidInput, PitId, VolumeSpec, validate_created_at, validate_pit_name, validate_volumes,
};

fn meta() -> Meta {
    Meta {
        uuid: *b"0123456789abcdef",
        base_through: 41,
        volumes: vec![
            VolumeSpec {
                name: "disk-0".into(),
                size_bytes: 1 << 30,
                block_size: 4096,
            },
            VolumeSpec {
                name: "log".into(),
                size_bytes: 512 * 7,
                block_size: 512,
            },
        ],
    }
}

fn manifest() -> Manifest {
    Manifest {
        uuid: *b"0123456789abcdef",
        id: 42,
        first: 40,
        name: Some("before-upgrade".into()),
        created_at: "2024-05-01T12:00:00Z".into(),
        volumes: vec![
            VolSummary {
                entries: 10,
                data_blocks: 7,
                digest: [9; 32],
            },
            VolSummary {
                entries: 0,
                data_blocks: 0,
                digest: [1; 32],
            },
        ],
    }
}

/// Every single-bit flip and every truncation is rejected.
fn assert_fragile<T>(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<T, FormatError>) {
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] ^= 0x04;
        assert!(decode(&b).is_err(), "flip at {i} accepted");
    }
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err(), "truncation to {n} accepted");
    }
    assert!(decode(&vec![0u8; bytes.len()]).is_err(), "zeroes accepted");
}

#[test]
fn meta_roundtrip_and_rejections() {
    let bytes = encode_meta(&meta());
    assert_eq!(decode_meta(&bytes).unwrap(), meta());
    assert_eq!(&bytes[0..8], b"OFSRPMET");
    assert_fragile(&bytes, decode_meta);
}

#[test]
fn manifest_roundtrip_and_rejections() {
    for name in [None, Some("before-upgrade".to_string())] {
        let m = Manifest { name, ..manifest() };
        let bytes = encode_manifest(&m);
        assert_eq!(decode_manifest(&bytes).unwrap(), m);
        assert_fragile(&bytes, decode_manifest);
    }
}

#[test]
fn manifest_rejects_bad_ranges_and_tags() {
    for (id, first) in [(0, 0), (5, 0), (5, 6)] {
        let bytes = encode_manifest(&Manifest {
            id,
            first,
            ..manifest()
        });
        let e = decode_manifest(&bytes).unwrap_err();
        assert_eq!(e, FormatError::PitRange { first, id });
        assert!(e.to_string().contains("invalid PIT range"), "{e}");
    }
    let bytes = encode_manifest(&Manifest {
        volumes: vec![VolSummary {
            entries: 1,
            data_blocks: 2,
            digest: [0; 32],
        }],
        ..manifest()
    });
    assert_eq!(
        decode_manifest(&bytes).unwrap_err(),
        FormatError::DataBlocks {
            data_blocks: 2,
            entries: 1
        }
    );
}

#[test]
fn segment_header_roundtrip_and_rejections() {
    let h = SegHeader {
        block_size: 4096,
        uuid: [7; 16],
        pit: 3,
        volume: 1,
        slots: 99,
        entries: 120,
    };
    let bytes = encode_seg_header(&h);
    assert_eq!(decode_seg_header(&bytes).unwrap(), h);
    assert_fragile(&bytes, decode_seg_header);
}

#[test]
fn entry_kinds_are_tagged() {
    let mut out = Vec::new();
    let data = Entry {
        block: 5,
        slot: 3,
        hash: [4; 32],
    };
    let zero = Entry {
        block: 6,
        slot: ZERO_SLOT,
        hash: [0; 32],
    };
    encode_entry(&data, &mut out);
    encode_entry(&zero, &mut out);
    assert_eq!(out.len(), 2 * ENTRY_LEN);
    assert_eq!(decode_entry(&out[..ENTRY_LEN]).unwrap(), data);
    assert_eq!(decode_entry(&out[ENTRY_LEN..]).unwrap(), zero);
    assert!(
        decode_entry(&[0u8; ENTRY_LEN]).is_err(),
        "kind 0 is invalid"
    );
    let mut bad = out[..ENTRY_LEN].to_vec();
    bad[12..16].copy_from_slice(&ZERO_SLOT.to_le_bytes());
    assert!(decode_entry(&bad).is_err(), "data entry without a slot");
}

#[test]
fn pit_dir_names() {
    let n = pit_dir_name(42, 40);
    assert_eq!(n, "00000000000000000042-00000000000000000040");
    assert_eq!(parse_pit_dir_name(&n), Some((42, 40)));
    for bad in [
        "42-40",
        "00000000000000000040-00000000000000000042",
        "00000000000000000000-00000000000000000000",
        "0000000000000000004x-00000000000000000040",
        "00000000000000000042-00000000000000000040.partial",
    ] {
        assert_eq!(parse_pit_dir_name(bad), None, "{bad}");
    }
}

#[test]
fn validation() {
    assert!(validate_volumes(&meta().volumes).is_ok());
    let bad = |name: &str, size: u64, bs: u32| {
        validate_volumes(&[VolumeSpec {
            name: name.into(),
            size_bytes: size,
            block_size: bs,
        }])
        .unwrap_err()
    };
    assert!(matches!(
        bad("../x", 4096, 4096),
        InvalidInput::VolumeName { .. }
    ));
    assert!(matches!(
        bad(".hidden", 4096, 4096),
        InvalidInput::VolumeName { .. }
    ));
    assert!(bad(".hidden", 4096, 4096).to_string().contains("must be"));
    assert!(matches!(
        bad("x", 4096, 1000),
        InvalidInput::BlockSize { .. }
    ));
    assert!(bad("x", 4096, 1000).to_string().contains("power of two"));
    assert!(matches!(
        bad("x", 4097, 4096),
        InvalidInput::VolumeSize { .. }
    ));
    assert!(matches!(bad("x", 0, 4096), InvalidInput::VolumeSize { .. }));
    assert!(bad("x", 0, 4096).to_string().contains("multiple"));
    assert_eq!(
        validate_volumes(&[]).unwrap_err(),
        InvalidInput::VolumeCount { count: 0 }
    );
    assert!(validate_pit_name("").is_err());
    assert!(validate_pit_name("a\nb").is_err());
    assert!(validate_created_at("2024-05-01T12:00:00.5+02:00").is_ok());
    assert!(validate_created_at("yesterday").is_err());
    assert_eq!(PitId::new(0), None);
    assert_eq!(PitId::new(7).unwrap().to_string(), "7");
    assert_eq!("7".parse::<PitId>().unwrap().get(), 7);
    assert!("0".parse::<PitId>().is_err());
}

proptest! {
    /// Decoders never panic on arbitrary input.
    #[test]
    fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_meta(&bytes);
        let _ = decode_manifest(&bytes);
        let _ = decode_seg_header(&bytes);
        if bytes.len() >= ENTRY_LEN {
            let _ = decode_entry(&bytes[..ENTRY_LEN]);
        }
    }

    /// ... nor on valid files with a byte changed and the CRC fixed up.
    #[test]
    fn decoders_never_panic_past_the_crc(at in 0usize..200, val in any::<u8>()) {
        for mut bytes in [encode_meta(&meta()), encode_manifest(&manifest())] {
            let n = bytes.len() - 4;
            bytes[at % n] = val;
            let crc = crc32c::crc32c(&bytes[..n]);
            bytes[n..].copy_from_slice(&crc.to_le_bytes());
            let _ = decode_meta(&bytes);
            let _ = decode_manifest(&bytes);
        }
    }
}
