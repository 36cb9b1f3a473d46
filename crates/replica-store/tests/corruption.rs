//! Damaged files: open reports a PIT whose manifest or segment fails its
//! checks (and every newer PIT, which depends on it) as damaged, keeps the
//! older PITs readable, and never returns wrong data. A flipped data byte
//! (which the cheap open checks do not read) fails the read of that block,
//! `verify_pit` and merges, without changing anything.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{Oracle, Write, commit, fast_tmpdir, kind, pit, specs};
use offsite_replica_store::ReplicaStore;

fn setup(dir: &Path) -> Oracle {
    let specs = specs();
    let store = ReplicaStore::create(dir, &specs).unwrap();
    let mut oracle = Oracle::new(&specs);
    for i in 1..=3u64 {
        let writes: Vec<Write> = vec![
            (0, i, Some(i)),
            (0, 10 + i, Some(10 + i)),
            (1, i, Some(100 + i)),
            (1, 5, None),
        ];
        commit(&store, &mut oracle, &writes, None);
    }
    oracle
}

fn pit_dir(dir: &Path, id: u64) -> PathBuf {
    fs::read_dir(dir.join("pits"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(&format!("{id:020}-"))
        })
        .unwrap()
}

fn flip(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x10;
    f.write_all_at(&b, at).unwrap();
}

/// Checks that PITs `good` read back as in the oracle and `bad` are damaged.
fn expect(store: &ReplicaStore, oracle: &Oracle, good: &[u64], bad: &[u64], why: &str) {
    let visible: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(visible, good);
    let damaged = store.damaged();
    assert_eq!(damaged.iter().map(|d| d.id.get()).collect::<Vec<_>>(), bad);
    assert!(damaged[0].why.contains(why), "{:?}", damaged[0].why);
    for &id in bad {
        let mut buf = vec![0u8; 512];
        let e = store.read(Some(pit(id)), "sys", 0, &mut buf).unwrap_err();
        assert_eq!(kind(&e), "Damaged", "{e}");
        assert!(e.to_string().contains("discard_damaged"), "{e}");
    }
    let mut buf = vec![0u8; 24 * 512];
    for &id in good {
        store.read(Some(pit(id)), "sys", 0, &mut buf).unwrap();
        let want = &oracle.pits.iter().find(|p| p.0 == id).unwrap().2[0];
        assert!(&buf == want, "PIT {id} reads back wrong data");
    }
}

#[test]
fn corrupt_manifest_damages_that_pit_and_newer_ones() {
    let d = fast_tmpdir();
    let oracle = setup(d.path());
    flip(&pit_dir(d.path(), 2).join("manifest.pit"), 40);
    let store = ReplicaStore::open(d.path()).unwrap();
    expect(&store, &oracle, &[1], &[2, 3], "checksum mismatch");
    assert!(
        store.damaged()[1]
            .why
            .contains("the PITs in between are missing or damaged")
    );
    // New PITs are refused until the damage is discarded.
    let e = store.begin_pit().unwrap_err();
    assert_eq!(kind(&e), "Damaged", "{e}");
    assert_eq!(store.discard_damaged().unwrap(), vec![pit(2), pit(3)]);
    let mut oracle = oracle;
    oracle.pits.truncate(1);
    oracle.next_id = 4;
    oracle.check(&store);
    commit(
        &store,
        &mut oracle,
        &[(0, 0, Some(77))],
        Some("after-repair"),
    );
    drop(store);
    let store = ReplicaStore::open(d.path()).unwrap();
    oracle.check(&store);
}

#[test]
fn truncated_segment_damages_the_newest_pit_only() {
    let d = fast_tmpdir();
    let oracle = setup(d.path());
    let seg = pit_dir(d.path(), 3).join("data-1.seg");
    let len = fs::metadata(&seg).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 10)
        .unwrap();
    let store = ReplicaStore::open(d.path()).unwrap();
    expect(&store, &oracle, &[1, 2], &[3], "truncated or torn");
}

#[test]
fn missing_or_foreign_segment_is_damage() {
    let d = fast_tmpdir();
    let oracle = setup(d.path());
    // PIT 2's segment replaced by PIT 3's (right format, wrong PIT).
    let (s2, s3) = (
        pit_dir(d.path(), 2).join("sys.seg"),
        pit_dir(d.path(), 3).join("sys.seg"),
    );
    fs::copy(&s3, &s2).unwrap();
    let store = ReplicaStore::open(d.path()).unwrap();
    expect(&store, &oracle, &[1], &[2, 3], "expected PIT 2");
    drop(store);
    fs::remove_file(pit_dir(d.path(), 1).join("data-1.seg")).unwrap();
    let store = ReplicaStore::open(d.path()).unwrap();
    expect(&store, &oracle, &[], &[1, 2, 3], "No such file");
}

#[test]
fn flipped_data_byte_fails_reads_verify_and_merges_not_silently() {
    let d = fast_tmpdir();
    let oracle = setup(d.path());
    // The first data slot of PIT 1's sys segment (block size 512).
    flip(&pit_dir(d.path(), 1).join("sys.seg"), 512 + 7);
    let store = ReplicaStore::open(d.path()).unwrap();
    assert!(store.damaged().is_empty());
    let mut buf = vec![0u8; 512];
    // Block 1 of PIT 1 is PIT 1's own write to sys.
    let e = store.read(Some(pit(1)), "sys", 512, &mut buf).unwrap_err();
    assert_eq!(kind(&e), "Corrupt", "{e}");
    assert!(e.to_string().contains("BLAKE3"), "{e}");
    let e = store.verify_pit(pit(1)).unwrap_err();
    assert_eq!(kind(&e), "Corrupt", "{e}");
    store.verify_pit(pit(2)).unwrap();
    // Other blocks of PIT 1 are fine.
    store.read(Some(pit(1)), "sys", 11 * 512, &mut buf).unwrap();
    assert_eq!(buf, oracle.pits[0].2[0][11 * 512..12 * 512]);
    // Merging the damaged PIT into the base or the next PIT is refused
    // before anything changes, and the store stays usable.
    let e = store.remove_pit(pit(1)).unwrap_err();
    assert_eq!(kind(&e), "Corrupt", "{e}");
    // PIT 2's own segment is intact, so merging it into PIT 3 works.
    store.remove_pit(pit(2)).unwrap();
    drop(store);
    let store = ReplicaStore::open(d.path()).unwrap();
    let visible: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(visible, [1, 3]);
    store.read(Some(pit(3)), "sys", 11 * 512, &mut buf).unwrap();
    assert_eq!(buf, oracle.pits[2].2[0][11 * 512..12 * 512]);
}

#[test]
fn corrupt_store_meta_refuses_to_open() {
    let d = fast_tmpdir();
    setup(d.path());
    flip(&d.path().join("store.meta"), 20);
    let e = ReplicaStore::open(d.path()).unwrap_err();
    assert_eq!(kind(&e), "Corrupt", "{e}");
    assert!(e.to_string().contains("store.meta"), "{e}");
    let e = ReplicaStore::open(d.path().join("nope")).unwrap_err();
    assert!(e.to_string().contains("not a replica store"), "{e}");
}

#[test]
fn second_open_is_locked_and_second_writer_busy() {
    let d = fast_tmpdir();
    setup(d.path());
    let store = ReplicaStore::open(d.path()).unwrap();
    let e = ReplicaStore::open(d.path()).unwrap_err();
    assert!(e.to_string().contains("open elsewhere"), "{e}");
    let w = store.begin_pit().unwrap();
    assert_eq!(kind(&store.begin_pit().unwrap_err()), "Busy");
    drop(w);
    store.begin_pit().unwrap().abort();
    let e = ReplicaStore::create(d.path(), &specs()).unwrap_err();
    assert!(e.to_string().contains("not empty"), "{e}");
}

#[test]
fn stale_pit_directory_already_in_the_base_is_deleted() {
    let d = fast_tmpdir();
    let mut oracle = setup(d.path());
    let saved = fast_tmpdir();
    let one = pit_dir(d.path(), 1);
    common::copy_tree(&one, saved.path());
    let store = ReplicaStore::open(d.path()).unwrap();
    store.remove_pit(pit(1)).unwrap();
    oracle.remove(1).unwrap();
    drop(store);
    // As if the rename out of pits/ had not reached the disk.
    common::copy_tree(saved.path(), &one);
    let store = ReplicaStore::open(d.path()).unwrap();
    oracle.check(&store);
    assert!(!one.exists());
}
