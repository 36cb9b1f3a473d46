//! A replica store whose committed state lives in an object store (here a
//! `DirStore`, whose objects are plain files the tests can inspect and
//! damage): base chunks, sparse bases, merges into the base, a new
//! working directory attaching the objects, damage detection. The crash
//! tests (`crash.rs`) run against both backends.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{fast_tmpdir, kind, pattern, pit};
use offsite_objects::{DirStore, ObjectStore};
use offsite_replica_store::{ReplicaError, ReplicaStore, VolumeSpec};

const MIB: u64 = 1 << 20;
/// The base chunk size of the objects layout.
const CHUNK: u64 = 4 * MIB;

fn objects(dir: &Path) -> Arc<DirStore> {
    Arc::new(DirStore::open(dir.join("objects")).unwrap())
}

/// Keys under `prefix`.
fn keys(store: &DirStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

fn chunk(n: u64) -> String {
    format!("base/v/{n:020}")
}

/// One volume of three chunks and a bit, 4 KiB blocks.
fn spec() -> Vec<VolumeSpec> {
    vec![VolumeSpec {
        name: "v".into(),
        size_bytes: 3 * CHUNK + 64 * 1024,
        block_size: 4096,
    }]
}

fn read_all(store: &ReplicaStore, pit: Option<u64>) -> Vec<u8> {
    let mut buf = vec![0u8; spec()[0].size_bytes as usize];
    store.read(pit.map(common::pit), "v", 0, &mut buf).unwrap();
    buf
}

#[test]
fn base_chunks_are_put_when_complete_sparse_and_rewritten_by_merges() {
    let d = fast_tmpdir();
    let objs = objects(d.path());
    let store =
        ReplicaStore::create_in(objs.clone(), d.path().join("work"), &spec(), None, 0).unwrap();
    let size = spec()[0].size_bytes as usize;
    let mut want = vec![0u8; size];

    // Initial copy of chunk 0, sequentially in 1 MiB writes: the chunk is
    // put when its last block arrives, before any sync.
    for i in 0..4u64 {
        let data = pattern(MIB as usize, i + 1);
        store.write_base("v", i * MIB, &data).unwrap();
        want[(i * MIB) as usize..((i + 1) * MIB) as usize].copy_from_slice(&data);
        let expect: Vec<String> = if i == 3 { vec![chunk(0)] } else { vec![] };
        assert_eq!(keys(&objs, "base/"), expect, "after write {i}");
    }
    // A partial, unaligned write into chunk 2 waits for sync_base; reads
    // see it before.
    let part = pattern(10_000, 9);
    let at = (2 * CHUNK + 4096 + 17) as usize;
    store.write_base("v", at as u64, &part).unwrap();
    want[at..at + part.len()].copy_from_slice(&part);
    assert_eq!(read_all(&store, None), want);
    assert_eq!(keys(&objs, "base/"), vec![chunk(0)]);
    store.sync_base().unwrap();
    // Chunks 1 and 3 were never written: sparse, no objects.
    assert_eq!(keys(&objs, "base/"), vec![chunk(0), chunk(2)]);
    assert_eq!(read_all(&store, None), want);
    assert_eq!(
        store.next_data(None, "v", CHUNK).unwrap(),
        Some(2 * CHUNK),
        "the hole of chunk 1 is skipped"
    );
    // A read-modify-write of an existing chunk keeps its other bytes.
    let patch = pattern(4096, 11);
    store.write_base("v", 2 * CHUNK, &patch).unwrap();
    store.sync_base().unwrap();
    want[(2 * CHUNK) as usize..(2 * CHUNK + 4096) as usize].copy_from_slice(&patch);
    assert_eq!(read_all(&store, None), want);

    // PIT 1 changes blocks in chunks 1 and 3 and zeroes one of chunk 0;
    // PIT 2 changes chunk 0 again.
    let b1 = pattern(4096, 21);
    let mut w = store.begin_pit().unwrap();
    w.write_block("v", CHUNK / 4096 + 5, &b1).unwrap();
    w.write_block("v", 3 * CHUNK / 4096 + 2, &b1).unwrap();
    w.write_zero_block("v", 7).unwrap();
    w.commit(None, common::CREATED.into()).unwrap();
    let mut pit1 = want.clone();
    for block in [CHUNK / 4096 + 5, 3 * CHUNK / 4096 + 2] {
        pit1[(block * 4096) as usize..(block * 4096 + 4096) as usize].copy_from_slice(&b1);
    }
    pit1[7 * 4096..8 * 4096].fill(0);
    let b2 = pattern(4096, 22);
    let mut w = store.begin_pit().unwrap();
    w.write_block("v", 1, &b2).unwrap();
    w.commit(Some("two".into()), common::CREATED.into())
        .unwrap();
    let mut pit2 = pit1.clone();
    pit2[4096..8192].copy_from_slice(&b2);
    assert_eq!(read_all(&store, Some(1)), pit1);
    assert_eq!(read_all(&store, Some(2)), pit2);
    assert_eq!(
        keys(&objs, "pits/"),
        vec![
            "pits/00000000000000000001-00000000000000000001/manifest.pit".to_string(),
            "pits/00000000000000000001-00000000000000000001/v.seg".to_string(),
            "pits/00000000000000000002-00000000000000000002/manifest.pit".to_string(),
            "pits/00000000000000000002-00000000000000000002/v.seg".to_string(),
        ]
    );
    // Nothing committed stays in the working directory.
    assert!(!d.path().join("work/pits").exists());
    assert_eq!(
        std::fs::read_dir(d.path().join("work/staging"))
            .unwrap()
            .count(),
        0
    );

    // Merging PIT 1 into the base rewrites chunks 0, 1 and 3.
    store.remove_pit(pit(1)).unwrap();
    assert_eq!(
        keys(&objs, "base/"),
        vec![chunk(0), chunk(1), chunk(2), chunk(3)]
    );
    assert!(keys(&objs, "merging/").is_empty());
    assert_eq!(read_all(&store, None), pit1);
    assert_eq!(read_all(&store, Some(2)), pit2);
    let hashes = store.block_hashes(Some(pit(2)), "v", 0..4).unwrap();
    for (b, h) in hashes.iter().enumerate() {
        assert_eq!(h, blake3::hash(&pit2[b * 4096..(b + 1) * 4096]).as_bytes());
    }
    store.verify_pit(pit(2)).unwrap();
    drop(store);

    // Another site's empty working directory attaches the same objects.
    let other = fast_tmpdir();
    let store = ReplicaStore::open_in(objects(d.path()), other.path().join("work")).unwrap();
    let pits = store.pits();
    assert_eq!(pits.len(), 1);
    assert_eq!(pits[0].id, pit(2));
    assert_eq!(pits[0].name.as_deref(), Some("two"));
    assert_eq!(read_all(&store, None), pit1);
    assert_eq!(read_all(&store, Some(2)), pit2);
    // Ids go on after the attached store's newest PIT.
    assert_eq!(store.begin_pit().unwrap().id(), pit(3));
}

#[test]
fn a_seed_image_is_uploaded_chunk_by_chunk() {
    let d = fast_tmpdir();
    let objs = objects(d.path());
    let store =
        ReplicaStore::create_in(objs.clone(), d.path().join("work"), &spec(), None, 0).unwrap();
    // An earlier initial copy left chunk 2, which the seed has as zeroes.
    store.write_base("v", 2 * CHUNK, &pattern(4096, 3)).unwrap();
    store.sync_base().unwrap();
    assert_eq!(keys(&objs, "base/"), vec![chunk(2)]);
    let size = spec()[0].size_bytes as usize;
    let mut seed = vec![0u8; size];
    seed[..MIB as usize].copy_from_slice(&pattern(MIB as usize, 5));
    seed[size - 4096..].copy_from_slice(&pattern(4096, 6));
    // A sparse image: only what is not zero is written.
    let image = d.path().join("seed.img");
    let f = std::fs::File::create(&image).unwrap();
    f.set_len(size as u64).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &seed[..MIB as usize], 0).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &seed[size - 4096..], (size - 4096) as u64)
        .unwrap();
    drop(f);
    store.adopt_base("v", &image).unwrap();
    assert_eq!(keys(&objs, "base/"), vec![chunk(0), chunk(3)]);
    assert_eq!(read_all(&store, None), seed);
    drop(store);
    let store = ReplicaStore::open_in(objs, d.path().join("work")).unwrap();
    assert_eq!(read_all(&store, None), seed);
}

#[test]
fn damaged_objects_are_detected_and_discarded() {
    let d = fast_tmpdir();
    let objs = objects(d.path());
    let store =
        ReplicaStore::create_in(objs.clone(), d.path().join("work"), &spec(), None, 0).unwrap();
    for i in 1..=3u64 {
        let mut w = store.begin_pit().unwrap();
        w.write_block("v", i, &pattern(4096, i)).unwrap();
        w.commit(None, common::CREATED.into()).unwrap();
    }
    drop(store);
    let seg = |id: u64| {
        d.path()
            .join("objects/pits")
            .join(format!("{id:020}-{id:020}"))
            .join("v.seg")
    };
    // A flipped data byte in PIT 2: found by reads and verify, never
    // returned.
    let mut bytes = std::fs::read(seg(2)).unwrap();
    bytes[4096 + 100] ^= 1;
    std::fs::write(seg(2), &bytes).unwrap();
    let store = ReplicaStore::open_in(objs.clone(), d.path().join("work")).unwrap();
    assert_eq!(
        store.pits().len(),
        3,
        "data is checked on read, not at open"
    );
    let mut buf = vec![0u8; 4096];
    let e = store
        .read(Some(pit(2)), "v", 2 * 4096, &mut buf)
        .unwrap_err();
    assert_eq!(kind(&e), "Corrupt", "{e}");
    let e = store.verify_pit(pit(2)).unwrap_err();
    assert_eq!(kind(&e), "Corrupt", "{e}");
    store.verify_pit(pit(1)).unwrap();
    drop(store);

    // A missing segment object: PIT 2 and the newer one are damaged, PIT 1
    // stays readable; discarding deletes their objects.
    std::fs::remove_file(seg(2)).unwrap();
    let store = ReplicaStore::open_in(objs.clone(), d.path().join("work")).unwrap();
    let ids: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, vec![1]);
    let damaged: Vec<u64> = store.damaged().iter().map(|p| p.id.get()).collect();
    assert_eq!(damaged, vec![2, 3]);
    assert!(matches!(
        store.begin_pit(),
        Err(ReplicaError::Damaged { .. })
    ));
    assert_eq!(store.discard_damaged().unwrap(), vec![pit(2), pit(3)]);
    assert_eq!(
        keys(&objs, "pits/"),
        vec![
            "pits/00000000000000000001-00000000000000000001/manifest.pit".to_string(),
            "pits/00000000000000000001-00000000000000000001/v.seg".to_string(),
        ]
    );
    store.read(Some(pit(1)), "v", 4096, &mut buf).unwrap();
    assert_eq!(buf, pattern(4096, 1));
}

#[test]
fn create_and_open_refuse_the_wrong_object_store() {
    let d = fast_tmpdir();
    let objs = objects(d.path());
    let e = ReplicaStore::open_in(objs.clone(), d.path().join("work")).unwrap_err();
    assert!(matches!(e, ReplicaError::NotAStoreInObjects { .. }), "{e}");
    objs.put("something/else", b"x").unwrap();
    let e = ReplicaStore::create_in(objs, d.path().join("work"), &spec(), None, 0).unwrap_err();
    assert!(matches!(e, ReplicaError::ObjectsNotEmpty { .. }), "{e}");
}

#[test]
fn a_second_handle_on_the_same_working_directory_is_refused() {
    let d = fast_tmpdir();
    let objs = objects(d.path());
    let _store =
        ReplicaStore::create_in(objs.clone(), d.path().join("work"), &spec(), None, 0).unwrap();
    let e = ReplicaStore::open_in(objs, d.path().join("work")).unwrap_err();
    assert!(matches!(e, ReplicaError::Locked { .. }), "{e}");
}

/// A store over several base chunks: base data in chunks 0 and 2, PIT 1
/// changing chunks 0, 1 and 3, PIT 2 changing chunk 1. Returns the store
/// and the images of the base, PIT 1 and PIT 2.
fn multi_chunk_setup(dir: &Path) -> (ReplicaStore, [Vec<u8>; 3]) {
    let store = ReplicaStore::create_in(objects(dir), dir.join("work"), &spec(), None, 0).unwrap();
    let mut base = vec![0u8; spec()[0].size_bytes as usize];
    for (at, seed) in [(4096u64, 1u64), (2 * CHUNK + 8192, 2)] {
        let data = pattern(3 * 4096, seed);
        store.write_base("v", at, &data).unwrap();
        base[at as usize..at as usize + data.len()].copy_from_slice(&data);
    }
    store.sync_base().unwrap();
    let mut pit1 = base.clone();
    let mut w = store.begin_pit().unwrap();
    for (i, block) in [2, CHUNK / 4096 + 1, 3 * CHUNK / 4096 + 3]
        .into_iter()
        .enumerate()
    {
        let data = pattern(4096, 10 + i as u64);
        w.write_block("v", block, &data).unwrap();
        pit1[(block * 4096) as usize..(block * 4096 + 4096) as usize].copy_from_slice(&data);
    }
    w.write_zero_block("v", 1).unwrap();
    pit1[4096..8192].fill(0);
    w.commit(None, common::CREATED.into()).unwrap();
    let mut pit2 = pit1.clone();
    let mut w = store.begin_pit().unwrap();
    let data = pattern(4096, 20);
    let block = CHUNK / 4096 + 1;
    w.write_block("v", block, &data).unwrap();
    pit2[(block * 4096) as usize..(block * 4096 + 4096) as usize].copy_from_slice(&data);
    w.commit(None, common::CREATED.into()).unwrap();
    (store, [base, pit1, pit2])
}

/// Whether `store` shows the state before removing PIT 1 (true) or after
/// (false); panics on anything else or on a wrong byte.
fn before_or_after(store: &ReplicaStore, [base, pit1, pit2]: &[Vec<u8>; 3]) -> bool {
    let ids: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert!(store.damaged().is_empty(), "{:?}", store.damaged());
    assert_eq!(read_all(store, Some(2)), *pit2);
    match ids[..] {
        [1, 2] => {
            assert_eq!(read_all(store, None), *base);
            assert_eq!(read_all(store, Some(1)), *pit1);
            true
        }
        [2] => {
            assert_eq!(read_all(store, None), *pit1, "the base after the merge");
            false
        }
        _ => panic!("PITs {ids:?}: neither before nor after removing PIT 1"),
    }
}

/// Crash tests of a merge into a base of several chunks: fail each step
/// of `remove_pit(1)` (the marker, every chunk rewrite, `store.meta`, the
/// deletions), reopen — also crashing that open at each of its steps —
/// and check the state is the old or the new one, byte for byte, and that
/// the removal completes from the old one.
#[test]
fn crash_while_merging_into_a_base_of_several_chunks() {
    use offsite_replica_store::failpoint;
    let d = fast_tmpdir();
    let (s, images) = multi_chunk_setup(d.path());
    failpoint::disarm();
    s.remove_pit(pit(1)).unwrap();
    let total = failpoint::steps();
    assert!(!before_or_after(&s, &images));
    drop(s);
    let (mut befores, mut afters) = (0, 0);
    for i in 1..=total {
        let d = fast_tmpdir();
        let (s, _) = multi_chunk_setup(d.path());
        failpoint::arm(i);
        let r = s.remove_pit(pit(1));
        let fired = failpoint::fired();
        failpoint::disarm();
        assert!(fired && r.is_err(), "step {i} of {total}");
        drop(s);
        let snapshot = fast_tmpdir();
        common::copy_tree(d.path(), snapshot.path());
        let open = || ReplicaStore::open_in(objects(d.path()), d.path().join("work")).unwrap();
        let store = open();
        let open_steps = failpoint::steps();
        if before_or_after(&store, &images) {
            befores += 1;
            store.remove_pit(pit(1)).unwrap();
            assert!(!before_or_after(&store, &images));
        } else {
            afters += 1;
        }
        drop(store);
        for j in 1..=open_steps {
            let c = fast_tmpdir();
            common::copy_tree(snapshot.path(), c.path());
            failpoint::arm(j);
            // Opening the object store itself is one of the open's steps.
            let r = common::Backend::Objects.open(c.path());
            failpoint::disarm();
            assert!(r.is_err(), "open step {j} of {open_steps} did not fail");
            drop(r);
            let store = ReplicaStore::open_in(objects(c.path()), c.path().join("work")).unwrap();
            if before_or_after(&store, &images) {
                store.remove_pit(pit(1)).unwrap();
            }
            assert!(!before_or_after(&store, &images));
        }
    }
    assert!(
        befores > 0 && afters > 0,
        "{befores} before, {afters} after"
    );
}
