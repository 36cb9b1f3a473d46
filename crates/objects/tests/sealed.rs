//! The sealed-object format (`offsite_objects::sealed`): golden bytes for a
//! fixed key and nonce (`tests/fixtures/sealed/`), the group key's text
//! form, and properties over a directory store: any data and range round
//! trips, any single flipped byte is detected, objects cannot be swapped,
//! renamed or truncated unnoticed.
//!
//! If a golden test fails, the format changed: replicas written before
//! could no longer be read. Add a new format version instead of changing
//! a fixture. `OFFSITE_BLESS=1` writes missing fixtures.

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicUsize};

use offsite_objects::sealed::{
    self, CHUNK_SIZE, FormatError, HEADER_LEN, Header, OpenError, TAG_LEN, plaintext_len,
    sealed_len,
};
use offsite_objects::{
    DirStore, GroupKey, GroupKeyError, Intercepted, ObjectError, ObjectStore, Sealed,
};
use proptest::prelude::*;

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/sealed")
        .join(name)
}

fn fixture(name: &str, bytes: &[u8]) -> Vec<u8> {
    let p = fixture_path(name);
    if !p.exists() && std::env::var_os("OFFSITE_BLESS").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn golden_key() -> GroupKey {
    GroupKey::from_bytes(std::array::from_fn(|i| i as u8))
}

const GOLDEN_NONCE: [u8; 16] = [
    0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
];

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn sealed_objects_match_their_golden_bytes() {
    let key = golden_key();
    let cases: [(&str, &str, Vec<u8>); 3] = [
        ("v1-empty.bin", "empty", Vec::new()),
        (
            "v1-hello.bin",
            "pits/1-1/manifest.pit",
            b"hello, replica".to_vec(),
        ),
        // Two full chunks and a short third one.
        (
            "v1-three-chunks.bin",
            "base/vol/0",
            pattern(2 * CHUNK_SIZE as usize + 1000),
        ),
    ];
    for (file, object_key, plain) in cases {
        let sealed = sealed::seal_with_nonce(&key, object_key, &plain, GOLDEN_NONCE);
        let golden = fixture(file, &sealed);
        assert!(sealed == golden, "{file}: the sealed bytes changed");
        assert_eq!(
            sealed::open(&key, object_key, &golden).unwrap(),
            plain,
            "{file}"
        );
        assert_eq!(
            golden.len() as u64,
            sealed_len(plain.len() as u64, CHUNK_SIZE).unwrap()
        );
        assert_eq!(plaintext_len(golden.len() as u64), Some(plain.len() as u64));
    }

    // The header, field by field (the table in sealed.rs).
    let golden = fixture("v1-hello.bin", &[]);
    let h = &golden[..HEADER_LEN];
    assert_eq!(&h[0..8], b"OFSSEAL\0");
    assert_eq!(&h[8..10], &[1, 0], "format version 1");
    assert_eq!(h[10], 1, "cipher: XChaCha20-Poly1305");
    assert_eq!(h[11], 0);
    assert_eq!(&h[12..16], &CHUNK_SIZE.to_le_bytes());
    assert_eq!(&h[16..24], &14u64.to_le_bytes(), "plaintext length");
    assert_eq!(&h[24..40], key.id().as_bytes());
    assert_eq!(&h[40..56], &GOLDEN_NONCE);
    assert_eq!(&h[56..60], &[0; 4]);
    assert_eq!(&h[60..64], &crc32c::crc32c(&h[..60]).to_le_bytes());
    assert_eq!(golden.len(), HEADER_LEN + 14 + TAG_LEN);
    assert_eq!(
        Header::decode(&golden).unwrap(),
        Header {
            chunk_size: CHUNK_SIZE,
            plaintext_len: 14,
            key_id: key.id(),
            nonce_prefix: GOLDEN_NONCE,
        }
    );
}

#[test]
fn the_group_key_has_a_stable_text_form_and_id() {
    let key = golden_key();
    let line = key.export();
    let golden = fixture("key.txt", format!("{line}\n").as_bytes());
    assert_eq!(
        format!("{line}\n").as_bytes(),
        golden,
        "the key's text form changed"
    );
    assert!(line.starts_with("offsite-key-1:"), "{line}");
    let id = fixture("key-id.txt", format!("{}\n", key.id()).as_bytes());
    assert_eq!(
        format!("{}\n", key.id()).as_bytes(),
        id,
        "the key id changed"
    );

    assert_eq!(GroupKey::import(&format!("  {line}\n")).unwrap(), key);
    assert!(
        !format!("{key:?}").contains(&line[14..30]),
        "Debug hides the key"
    );

    // A typo is caught by the checksum; other damage is named.
    let mut typo = line.clone().into_bytes();
    typo[20] = if typo[20] == b'A' { b'B' } else { b'A' };
    let e = GroupKey::import(std::str::from_utf8(&typo).unwrap()).unwrap_err();
    assert!(matches!(e, GroupKeyError::Checksum), "{e}");
    for bad in [
        "",
        "offsite-key-2:AAAA:00000000",
        &line[..line.len() - 3],
        &line[..40],
        "offsite-key-1:!!!:00000000",
    ] {
        let e = GroupKey::import(bad).unwrap_err();
        assert!(e.to_string().contains("copy"), "{bad:?}: {e}");
    }
    let other = GroupKey::generate();
    assert_ne!(other, key);
    assert_ne!(other.id(), key.id());
}

#[test]
fn the_key_file_is_private_durable_and_never_silently_replaced() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("group.key");
    let key = GroupKey::generate();
    key.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(GroupKey::load(&path).unwrap(), key);
    key.save(&path).unwrap(); // the same key again: fine

    let e = GroupKey::generate().save(&path).unwrap_err();
    assert!(
        matches!(&e, GroupKeyError::Exists { existing, .. } if *existing == key.id()),
        "{e}"
    );
    assert_eq!(GroupKey::load(&path).unwrap(), key);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = GroupKey::load(&path).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    let e = GroupKey::load(&dir.path().join("none")).unwrap_err();
    assert!(e.to_string().contains("none"), "{e}");
}

fn sealed_dir() -> (tempfile::TempDir, Arc<dyn ObjectStore>, Sealed, GroupKey) {
    let dir = tempfile::tempdir().unwrap();
    let raw: Arc<dyn ObjectStore> = Arc::new(DirStore::open(dir.path().join("o")).unwrap());
    let key = GroupKey::generate();
    let sealed = Sealed::new(Arc::clone(&raw), &key);
    (dir, raw, sealed, key)
}

#[test]
fn objects_cannot_be_swapped_renamed_truncated_or_read_with_another_key() {
    let (_d, raw, s, _key) = sealed_dir();
    let a = pattern(3 * CHUNK_SIZE as usize);
    let b: Vec<u8> = a.iter().map(|x| x ^ 0x55).collect();
    s.put("a", &a).unwrap();
    s.put_from("b", &mut &b[..], b.len() as u64).unwrap();
    assert_eq!(s.get("a").unwrap(), a);
    assert_eq!(s.get("b").unwrap(), b);
    assert_eq!(s.head("a").unwrap(), Some(a.len() as u64));
    let sizes: Vec<u64> = s.list("").unwrap().iter().map(|o| o.size).collect();
    assert_eq!(sizes, [a.len() as u64, b.len() as u64]);

    let tampered = |e: ObjectError| assert!(matches!(e, ObjectError::Tampered { .. }), "{e}");
    let (raw_a, raw_b) = (raw.get("a").unwrap(), raw.get("b").unwrap());

    // Renamed: "a"'s bytes under the key "c".
    raw.put("c", &raw_a).unwrap();
    tampered(s.get("c").unwrap_err());
    tampered(s.get_range("c", 10, 10).unwrap_err());

    // A chunk of b swapped into a (same index, other object).
    let chunk = CHUNK_SIZE as usize + TAG_LEN;
    let mut mixed = raw_a.clone();
    mixed[HEADER_LEN + chunk..HEADER_LEN + 2 * chunk]
        .copy_from_slice(&raw_b[HEADER_LEN + chunk..HEADER_LEN + 2 * chunk]);
    raw.put("a", &mixed).unwrap();
    tampered(s.get("a").unwrap_err());
    tampered(s.get_range("a", CHUNK_SIZE as u64 + 5, 3).unwrap_err());
    // ...but the chunks around it still open on their own.
    assert_eq!(s.get_range("a", 5, 3).unwrap(), &a[5..8]);

    // Two chunks of a reordered.
    let mut reordered = raw_a.clone();
    let (x, y) = (HEADER_LEN, HEADER_LEN + chunk);
    let first = reordered[x..x + chunk].to_vec();
    reordered.copy_within(y..y + chunk, x);
    reordered[y..y + chunk].copy_from_slice(&first);
    raw.put("a", &reordered).unwrap();
    tampered(s.get("a").unwrap_err());
    tampered(s.get_range("a", 0, 1).unwrap_err());

    // Truncated at a chunk boundary, with the header's length fixed up to
    // match: the last chunk left is not marked final.
    let mut cut = raw_a[..HEADER_LEN + 2 * chunk].to_vec();
    let mut h = Header::decode(&cut).unwrap();
    h.plaintext_len = 2 * u64::from(CHUNK_SIZE);
    cut[..HEADER_LEN].copy_from_slice(&h.encode());
    raw.put("a", &cut).unwrap();
    tampered(s.get("a").unwrap_err());
    // Truncated without fixing the header: the size gives it away.
    raw.put("a", &raw_a[..raw_a.len() - 100]).unwrap();
    tampered(s.get("a").unwrap_err());
    tampered(s.get_range("a", a.len() as u64 - 10, 10).unwrap_err());

    // Not a sealed object at all.
    raw.put(
        "plain",
        b"just some bytes that were never sealed, long enough for a header..",
    )
    .unwrap();
    let e = s.get("plain").unwrap_err();
    assert!(e.to_string().contains("not a sealed object"), "{e}");

    // Another key: named as such.
    raw.put("a", &raw_a).unwrap();
    let other = Sealed::new(Arc::clone(&raw), &GroupKey::generate());
    let e = other.get("a").unwrap_err();
    assert!(matches!(e, ObjectError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("import the group's key"), "{e}");
    let e = other.get_range("a", 0, 1).unwrap_err();
    assert!(matches!(e, ObjectError::WrongKey { .. }), "{e}");
}

#[test]
fn a_source_of_the_wrong_length_writes_nothing() {
    let (_d, raw, s, _key) = sealed_dir();
    let data = pattern(200_000);
    let e = s.put_from("k", &mut &data[..], 300_000).unwrap_err();
    assert!(e.to_string().contains("put k"), "{e}");
    let e = s.put_from("k", &mut &data[..], 100_000).unwrap_err();
    assert!(e.to_string().contains("put k"), "{e}");
    assert!(raw.list("").unwrap().is_empty());
    assert!(matches!(
        s.get_range("missing", 0, 1).unwrap_err(),
        ObjectError::NotFound { .. }
    ));
}

#[test]
fn stored_sizes_map_back_to_plaintext_sizes() {
    let cs = u64::from(CHUNK_SIZE);
    for len in [
        0,
        1,
        15,
        16,
        17,
        cs - 1,
        cs,
        cs + 1,
        2 * cs,
        5 * cs + 7,
        1 << 40,
    ] {
        let stored = sealed_len(len, CHUNK_SIZE).unwrap();
        assert_eq!(plaintext_len(stored), Some(len), "{len}");
    }
    // Sizes no sealed object has.
    for stored in [0, 63, 64, 65, 79, 64 + cs + 16 + 16, 64 + cs + 16 + 5] {
        assert_eq!(plaintext_len(stored), None, "{stored}");
    }
    assert_eq!(sealed_len(u64::MAX - 10, CHUNK_SIZE), None);
    assert_eq!(
        Header::decode(&[0u8; 10]).unwrap_err(),
        FormatError::Short(10)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_data_and_range_round_trips(
        data in prop::collection::vec(any::<u8>(), 0..(3 * CHUNK_SIZE as usize + 100)),
        a in any::<u64>(),
        b in any::<u64>(),
        streamed in any::<bool>(),
    ) {
        let (_d, _raw, s, _key) = sealed_dir();
        if streamed {
            s.put_from("k", &mut &data[..], data.len() as u64).unwrap();
        } else {
            s.put("k", &data).unwrap();
        }
        prop_assert_eq!(&s.get("k").unwrap(), &data);
        prop_assert_eq!(s.head("k").unwrap(), Some(data.len() as u64));
        let n = data.len() as u64;
        let (x, y) = (a % (n + 1), b % (n + 1));
        let (from, to) = (x.min(y), x.max(y));
        let got = s.get_range("k", from, to - from).unwrap();
        prop_assert_eq!(&got[..], &data[from as usize..to as usize]);
        let past = s.get_range("k", to, n - to + 1).unwrap_err();
        let is_short = matches!(past, ObjectError::ShortObject { .. });
        prop_assert!(is_short, "{}", past);
    }

    #[test]
    fn any_flipped_byte_is_detected(
        data in prop::collection::vec(any::<u8>(), 0..(2 * CHUNK_SIZE as usize + 50)),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (_d, raw, s, key) = sealed_dir();
        s.put("obj", &data).unwrap();
        let mut bad = raw.get("obj").unwrap();
        let i = at.index(bad.len());
        bad[i] ^= 1 << bit;
        raw.put("obj", &bad).unwrap();

        let e = s.get("obj").unwrap_err();
        let tampered = matches!(e, ObjectError::Tampered { .. });
        prop_assert!(tampered, "byte {} of {}: {}", i, bad.len(), e);
        // A range read of the damaged chunk (any range, for the header)
        // fails too; an empty range opens nothing.
        if !data.is_empty() {
            let chunk = if i < HEADER_LEN {
                0
            } else {
                (i - HEADER_LEN) / (CHUNK_SIZE as usize + TAG_LEN)
            };
            let from = (chunk * CHUNK_SIZE as usize).min(data.len() - 1);
            let e = s.get_range("obj", from as u64, 1).unwrap_err();
            let tampered = matches!(e, ObjectError::Tampered { .. });
            prop_assert!(tampered, "range at {}, byte {}: {}", from, i, e);
        }
        // The bare decoder says the same.
        let e = sealed::open(&key, "obj", &bad).unwrap_err();
        let named = matches!(e, OpenError::Format(_) | OpenError::Chunk { .. });
        prop_assert!(named, "{:?}", e);
    }
}

/// A store that counts the ranged reads reaching it.
#[derive(Debug)]
/// Counts of a store's ranged reads (see [`counting`]).
#[derive(Default)]
struct Counting {
    ranged: AtomicUsize,
    /// Ranged reads under way now, and the most seen at once.
    in_flight: AtomicUsize,
    most: AtomicUsize,
    /// A ranged read waits (at most a second) for a second one to start,
    /// so that reads issued together are seen together.
    wait_for_company: AtomicBool,
}

/// A directory store whose ranged reads are counted in the [`Counting`].
fn counting(dir: &std::path::Path) -> (Arc<Counting>, Arc<Intercepted<DirStore>>) {
    let counts = Arc::new(Counting::default());
    let c = counts.clone();
    let store = Intercepted::new(
        DirStore::open(dir.join("objects")).unwrap(),
        Box::new(move |_, _, _, read| {
            c.ranged.fetch_add(1, SeqCst);
            let now = c.in_flight.fetch_add(1, SeqCst) + 1;
            c.most.fetch_max(now, SeqCst);
            if c.wait_for_company.load(SeqCst) {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while c.most.load(SeqCst) < 2 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            let got = read();
            c.in_flight.fetch_sub(1, SeqCst);
            got
        }),
    );
    (counts, Arc::new(store))
}

#[test]
fn a_ranged_read_of_a_known_object_is_one_request_and_a_stale_header_heals() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (counts, store) = counting(dir.path());
    let key = golden_key();
    let reader = Sealed::new(store.clone(), &key);
    let first = pattern(5 * CHUNK_SIZE as usize);
    reader.put("o", &first).unwrap();

    // The first read fetches the header and the chunks (at once); the
    // next ones only the chunks.
    let n0 = counts.ranged.load(Ordering::SeqCst);
    assert_eq!(reader.get_range("o", 100, 4096).unwrap(), first[100..4196]);
    assert_eq!(counts.ranged.load(Ordering::SeqCst), n0 + 2);
    assert_eq!(
        reader.get_range("o", 3 * CHUNK_SIZE as u64, 10).unwrap(),
        first[3 * CHUNK_SIZE as usize..3 * CHUNK_SIZE as usize + 10]
    );
    assert_eq!(counts.ranged.load(Ordering::SeqCst), n0 + 3);

    // Rewritten by another writer (a new nonce, another size): the stale
    // header fails to open the chunks, and the read is redone with the new
    // one, returning the new bytes.
    let second: Vec<u8> = pattern(2 * CHUNK_SIZE as usize + 7)
        .iter()
        .map(|b| b ^ 0x5a)
        .collect();
    Sealed::new(store.clone(), &key).put("o", &second).unwrap();
    assert_eq!(reader.get_range("o", 100, 4096).unwrap(), second[100..4196]);
    // A range only the old object had: the new header says it is short.
    assert!(matches!(
        reader.get_range("o", 4 * CHUNK_SIZE as u64, 10),
        Err(ObjectError::ShortObject { .. })
    ));

    // A flipped byte in a chunk still fails, remembered header or not.
    let raw = dir.path().join("objects/o");
    let mut bytes = std::fs::read(&raw).unwrap();
    let at = HEADER_LEN + 10;
    bytes[at] ^= 1;
    std::fs::write(&raw, &bytes).unwrap();
    assert!(matches!(
        reader.get_range("o", 0, 100),
        Err(ObjectError::Tampered { .. })
    ));
}

/// A cold read asks for an object's header and its chunks at the same
/// time (one round trip to a distant store, not two), and a range that
/// runs into a short last chunk, which the guess of the chunks' layout
/// cannot fetch before the header says where the object ends, still
/// reads right.
#[test]
fn a_cold_read_fetches_the_header_and_the_chunks_together() {
    use std::sync::atomic::Ordering;
    let dir = tempfile::tempdir().unwrap();
    let (counts, store) = counting(dir.path());
    let key = golden_key();
    let writer = Sealed::new(store.clone(), &key);
    let data = pattern(3 * CHUNK_SIZE as usize + 1000);
    writer.put("o", &data).unwrap();

    counts.wait_for_company.store(true, Ordering::SeqCst);
    let cold = Sealed::new(store.clone(), &key);
    let n0 = counts.ranged.load(Ordering::SeqCst);
    let at = CHUNK_SIZE as usize + 5;
    assert_eq!(
        cold.get_range("o", at as u64, 8192).unwrap(),
        data[at..at + 8192]
    );
    assert_eq!(counts.ranged.load(Ordering::SeqCst), n0 + 2);
    assert_eq!(
        counts.most.load(Ordering::SeqCst),
        2,
        "header and chunks together"
    );
    counts.wait_for_company.store(false, Ordering::SeqCst);

    // Into the short last chunk, cold: the guessed range runs past the
    // end, and the chunks are read again once the header is known.
    let tail = Sealed::new(store.clone(), &key);
    let n1 = counts.ranged.load(Ordering::SeqCst);
    let at = 3 * CHUNK_SIZE as usize - 100;
    assert_eq!(tail.get_range("o", at as u64, 1100).unwrap(), data[at..]);
    assert_eq!(counts.ranged.load(Ordering::SeqCst), n1 + 3);
    // Past the end: short, as before.
    assert!(matches!(
        tail.get_range("o", data.len() as u64 - 10, 11),
        Err(ObjectError::ShortObject { .. })
    ));
}
