//! Golden files: a small store written by format version 1 is checked in
//! under `tests/fixtures/v1/`. The writer must reproduce it byte for byte
//! (a format change breaks this test, not a customer), the fields must sit
//! where the crate docs say, and the fixture must open and read back.
//!
//! To regenerate after a deliberate format change (with a new version
//! number): `OFFSITE_REGEN_FIXTURES=1 cargo test -p offsite-replica-store --test golden`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::copy_tree;
use offsite_replica_store::{PitId, ReplicaStore, VolumeSpec};

const UUID: [u8; 16] = *b"offsite-golden-1";
const PIT1: &str = "pits/00000000000000000001-00000000000000000001";
const PIT2: &str = "pits/00000000000000000002-00000000000000000002";

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1")
}

/// The files of the fixture, relative to the store directory.
fn fixture_files() -> Vec<String> {
    vec![
        "store.meta".into(),
        "base/a.img".into(),
        format!("{PIT1}/manifest.pit"),
        format!("{PIT1}/a.seg"),
        format!("{PIT2}/manifest.pit"),
        format!("{PIT2}/a.seg"),
    ]
}

fn spec() -> Vec<VolumeSpec> {
    vec![VolumeSpec {
        name: "a".into(),
        size_bytes: 4 * 512,
        block_size: 512,
    }]
}

/// Writes the golden store into `dir`.
fn write_golden(dir: &Path) -> ReplicaStore {
    let store = ReplicaStore::create_with_uuid(dir, &spec(), UUID).unwrap();
    store.write_base("a", 0, &[0xAB; 512]).unwrap();
    store.sync_base().unwrap();
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 1, &[0x11; 512]).unwrap();
    w.write_zero_block("a", 3).unwrap();
    w.commit(None, "2024-05-01T12:00:00Z".into()).unwrap();
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 2, &[0x5A; 512]).unwrap();
    w.write_block("a", 1, &[0xC3; 512]).unwrap();
    w.commit(Some("golden".into()), "2024-05-02T00:00:00+02:00".into())
        .unwrap();
    store
}

#[test]
fn writer_reproduces_the_fixture_byte_for_byte() {
    let d = tempfile::tempdir().unwrap();
    drop(write_golden(d.path()));
    if std::env::var_os("OFFSITE_REGEN_FIXTURES").is_some() {
        for f in fixture_files() {
            let dst = fixture_dir().join(&f);
            fs::create_dir_all(dst.parent().unwrap()).unwrap();
            fs::copy(d.path().join(&f), dst).unwrap();
        }
    }
    for f in fixture_files() {
        let fresh = fs::read(d.path().join(&f)).unwrap();
        let golden = fs::read(fixture_dir().join(&f)).unwrap();
        assert!(fresh == golden, "{f} differs from the checked-in fixture");
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

#[test]
fn fields_sit_where_the_docs_say() {
    let m = fs::read(fixture_dir().join(PIT2).join("manifest.pit")).unwrap();
    assert_eq!(&m[0..8], b"OFSRPMAN");
    assert_eq!(le32(&m, 8), 1, "version");
    assert_eq!(le32(&m, 12), 1, "volume count");
    assert_eq!(&m[16..32], &UUID);
    assert_eq!(le64(&m, 32), 2, "id");
    assert_eq!(le64(&m, 40), 2, "first");
    assert_eq!(m[48], 2, "name tag: named");
    assert_eq!(m[49], 0);
    assert_eq!(u16::from_le_bytes([m[50], m[51]]), 6);
    assert_eq!(&m[52..58], b"golden");
    let created = b"2024-05-02T00:00:00+02:00";
    assert_eq!(u16::from_le_bytes([m[58], m[59]]) as usize, created.len());
    assert_eq!(&m[60..60 + created.len()], created);
    let v = 60 + created.len();
    assert_eq!(le64(&m, v), 2, "entries");
    assert_eq!(le64(&m, v + 8), 2, "data blocks");
    assert_eq!(m.len(), v + 48 + 4);
    assert_eq!(le32(&m, m.len() - 4), crc32c::crc32c(&m[..m.len() - 4]));

    let s = fs::read(fixture_dir().join(PIT2).join("a.seg")).unwrap();
    assert_eq!(&s[0..8], b"OFSRPSEG");
    assert_eq!(le32(&s, 8), 1, "version");
    assert_eq!(le32(&s, 12), 512, "block size");
    assert_eq!(&s[16..32], &UUID);
    assert_eq!(le64(&s, 32), 2, "PIT");
    assert_eq!(le32(&s, 40), 0, "volume number");
    assert_eq!(le32(&s, 44), 2, "data slots");
    assert_eq!(le64(&s, 48), 2, "entries");
    assert_eq!(le32(&s, 56), 0, "reserved");
    assert_eq!(le32(&s, 60), crc32c::crc32c(&s[..60]));
    assert!(s[64..512].iter().all(|&b| b == 0), "header padding");
    // Slots in arrival order: block 2 first, then block 1.
    assert!(s[512..1024].iter().all(|&b| b == 0x5A));
    assert!(s[1024..1536].iter().all(|&b| b == 0xC3));
    // Index, ascending by block: (1, data, slot 1), (2, data, slot 0).
    let ix = 1536;
    assert_eq!(le64(&s, ix), 1);
    assert_eq!(le32(&s, ix + 8), 1, "kind data");
    assert_eq!(le32(&s, ix + 12), 1, "slot");
    assert_eq!(&s[ix + 16..ix + 48], blake3::hash(&[0xC3; 512]).as_bytes());
    assert_eq!(le64(&s, ix + 48), 2);
    assert_eq!(le32(&s, ix + 60), 0, "slot");
    assert_eq!(s.len(), ix + 2 * 48 + 4);
    assert_eq!(le32(&s, ix + 96), crc32c::crc32c(&s[ix..ix + 96]));
    // The manifest's digest covers the segment header and index.
    let mut h = blake3::Hasher::new();
    h.update(&s[..64]);
    h.update(&s[ix..ix + 96]);
    assert_eq!(&m[v + 16..v + 48], h.finalize().as_bytes());

    // PIT 1's zero block: kind 2, slot 0xFFFF_FFFF, hash of zeroes.
    let s1 = fs::read(fixture_dir().join(PIT1).join("a.seg")).unwrap();
    let ix1 = 512 * 2;
    assert_eq!(le64(&s1, ix1 + 48), 3);
    assert_eq!(le32(&s1, ix1 + 56), 2, "kind zero");
    assert_eq!(le32(&s1, ix1 + 60), u32::MAX);
    assert_eq!(&s1[ix1 + 64..ix1 + 96], blake3::hash(&[0; 512]).as_bytes());

    let meta = fs::read(fixture_dir().join("store.meta")).unwrap();
    assert_eq!(&meta[0..8], b"OFSRPMET");
    assert_eq!(le32(&meta, 12), 1);
    assert_eq!(&meta[16..32], &UUID);
    assert_eq!(le64(&meta, 32), 0, "base_through");
    assert_eq!(u16::from_le_bytes([meta[40], meta[41]]), 1);
    assert_eq!(meta[42], b'a');
    assert_eq!(le64(&meta, 43), 2048);
    assert_eq!(le32(&meta, 51), 512);
}

#[test]
fn fixture_store_opens_and_reads_back() {
    let d = tempfile::tempdir().unwrap();
    copy_tree(&fixture_dir(), d.path());
    for sub in ["staging", "merging", "pits"] {
        fs::create_dir_all(d.path().join(sub)).unwrap();
    }
    let store = ReplicaStore::open(d.path()).unwrap();
    assert_eq!(store.store_uuid(), UUID);
    let pits = store.pits();
    assert_eq!(pits.len(), 2);
    assert_eq!(pits[1].name.as_deref(), Some("golden"));
    assert_eq!(pits[0].created_at, "2024-05-01T12:00:00Z");
    assert_eq!((pits[0].blocks, pits[0].bytes), (2, 512));
    let block = |pit: Option<u64>, b: u64| {
        let mut buf = vec![0u8; 512];
        store
            .read(pit.and_then(PitId::new), "a", b * 512, &mut buf)
            .unwrap();
        buf
    };
    assert_eq!(block(None, 0), [0xAB; 512]);
    assert_eq!(block(Some(1), 0), [0xAB; 512]);
    assert_eq!(block(Some(1), 1), [0x11; 512]);
    assert_eq!(block(Some(1), 2), [0; 512]);
    assert_eq!(block(Some(2), 1), [0xC3; 512]);
    assert_eq!(block(Some(2), 2), [0x5A; 512]);
    assert_eq!(block(Some(2), 3), [0; 512]);
    for p in &pits {
        store.verify_pit(p.id).unwrap();
    }
    // Old stores keep working: merge the oldest into the base.
    store.remove_pit(PitId::new(1).unwrap()).unwrap();
    assert_eq!(block(None, 1), [0x11; 512]);
    assert_eq!(block(Some(2), 1), [0xC3; 512]);
}
