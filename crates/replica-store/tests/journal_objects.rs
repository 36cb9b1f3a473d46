//! The journal of a store in an object store: sealed files and the open
//! file's checkpoints reach the bucket (a `DirStore`, plain and sealed
//! with a group key), a working directory without a journal (a new site,
//! a replaced disk) gets it back from there, and every checkpoint reads
//! back byte for byte; crashes of an upload pass, of a prune and of the
//! restoring open, at each of their steps, leave the bucket consistent
//! once the next pass or prune ran.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::journal::{CREATED, Model, block_bytes, jspecs, listed, open_keep, time_of};
use common::{copy_tree, fast_tmpdir};
use offsite_objects::{DirStore, GroupKey, ObjectStore, Sealed};
use offsite_replica_store::{
    Consistency, JOURNAL_DIR, JournalPolicy, Listing, ReplicaStore, WriteLog, failpoint,
};

/// The object store of a test site in `dir`: `dir/objects`, sealed with
/// `key` when there is one.
fn objects(dir: &Path, key: Option<&GroupKey>) -> Arc<dyn ObjectStore> {
    let plain = Arc::new(DirStore::open(dir.join("objects")).unwrap());
    match key {
        Some(k) => Arc::new(Sealed::new(plain, k)),
        None => plain,
    }
}

fn open(dir: &Path, key: Option<&GroupKey>) -> ReplicaStore {
    ReplicaStore::open_in(objects(dir, key), dir.join("work")).unwrap()
}

/// A store in `dir`'s bucket with the model's patterned base, and its log
/// keeping history: file 1: w w C1 w C2 | file 2: w C3 w C4 | file 3
/// (open): w C5 w (the last write after every checkpoint).
fn history(
    dir: &Path,
    key: Option<&GroupKey>,
    background: bool,
) -> (ReplicaStore, WriteLog, Model) {
    let mut m = Model::new(&jspecs());
    let store = ReplicaStore::create_in(
        objects(dir, key),
        dir.join("work"),
        &m.specs,
        Some(*b"journal-tests-01"),
        0,
    )
    .unwrap();
    for (v, s) in m.specs.clone().iter().enumerate() {
        let bs = s.block_size as usize;
        for b in (0..s.size_bytes / u64::from(s.block_size)).step_by(3) {
            let data = block_bytes(bs, b, 200 + v as u8);
            store.write_base(&s.name, b * bs as u64, &data).unwrap();
            m.base[v][b as usize * bs..(b as usize + 1) * bs].copy_from_slice(&data);
        }
    }
    store.sync_base().unwrap();
    let mut log = open_keep(&store);
    if !background {
        log.stop_background_uploads();
    }
    m.append(&mut log, &[(0, 1, 2, 5), (1, 0, 1, 6)]).unwrap();
    m.append(&mut log, &[(1, 3, 2, 7)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.append(&mut log, &[(0, 1, 1, 0), (0, 9, 3, 8)]).unwrap();
    m.checkpoint(&mut log, Consistency::Application, Some("app"))
        .unwrap();
    log.seal(None, CREATED.into()).unwrap();
    m.append(&mut log, &[(1, 0, 1, 9)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.append(&mut log, &[(0, 0, 16, 10)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    log.seal(Some("named".into()), CREATED.into()).unwrap();
    m.append(&mut log, &[(1, 7, 1, 11), (0, 2, 1, 0)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.append(&mut log, &[(1, 2, 1, 12)]).unwrap();
    (store, log, m)
}

/// A new site: an empty working directory over a copy of `dir`'s bucket.
fn new_site(dir: &Path) -> tempfile::TempDir {
    let e = fast_tmpdir();
    copy_tree(&dir.join("objects"), &e.path().join("objects"));
    e
}

/// The store at a new site lists checkpoints 1..=5, each exactly its
/// prefix of the write order, and goes on from there: its log replays the
/// open file up to its last uploaded checkpoint.
fn check_restored(store: &ReplicaStore, m: &Model) {
    assert_eq!(listed(store), vec![1, 2, 3, 4, 5]);
    for id in 1..=5 {
        m.check_image(store, id);
    }
    let at = store.checkpoint_at_or_before(time_of(4)).unwrap().unwrap();
    assert_eq!(at.id.get(), 4);
    let mut log = open_keep(store);
    log.stop_background_uploads();
    let pit = log.seal(None, CREATED.into()).unwrap();
    // The write after checkpoint 5 never reached the bucket.
    let want = m.image(m.checkpoints[&5].0);
    for (v, s) in m.specs.iter().enumerate() {
        let mut buf = vec![0u8; s.size_bytes as usize];
        store.read(Some(pit.id), &s.name, 0, &mut buf).unwrap();
        assert!(
            buf == want[v],
            "volume {} of the PIT sealed at the new site",
            s.name
        );
    }
}

/// Keys under `journal/` of `dir`'s bucket (plain names: a sealed store
/// keeps the keys).
fn journal_keys(dir: &Path) -> Vec<String> {
    DirStore::open(dir.join("objects"))
        .unwrap()
        .list("journal/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// The local journal files of `dir`'s working directory: (number, bytes).
fn local_files(dir: &Path) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = std::fs::read_dir(dir.join("work").join(JOURNAL_DIR))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.strip_suffix(".jnl")?.to_string();
            Some((name.parse().ok()?, std::fs::read(&p).unwrap()))
        })
        .collect();
    out.sort();
    out
}

/// The bucket holds every sealed local file whole (no parts left beside
/// it) and a prefix of the open one in contiguous parts; nothing of a
/// file that is not local.
fn check_bucket(dir: &Path, key: Option<&GroupKey>) {
    let objs = objects(dir, key);
    let local = local_files(dir);
    let (open_file, sealed) = local.split_last().unwrap();
    let keys = journal_keys(dir);
    for k in &keys {
        let n: u64 = k["journal/".len().."journal/".len() + 20].parse().unwrap();
        assert!(local.iter().any(|(l, _)| *l == n), "orphan object {k}");
    }
    for (n, bytes) in sealed {
        let whole = format!("journal/{n:020}.jnl");
        assert!(objs.get(&whole).unwrap() == *bytes, "object {whole}");
        assert!(
            !keys.iter().any(|k| k.starts_with(&format!("{whole}."))),
            "parts of sealed file {n} left: {keys:?}"
        );
    }
    let (n, bytes) = open_file;
    let mut joined = Vec::new();
    for k in keys
        .iter()
        .filter(|k| k.starts_with(&format!("journal/{n:020}.jnl.")))
    {
        let off: usize = k.rsplit('.').next().unwrap().parse().unwrap();
        assert_eq!(off, joined.len(), "parts of the open file are contiguous");
        joined.extend(objs.get(k).unwrap());
    }
    assert!(
        joined.len() > 128,
        "the open file's checkpoint reached the bucket"
    );
    assert!(
        joined[..] == bytes[..joined.len()],
        "parts are the open file's prefix"
    );
}

#[test]
fn the_journal_reaches_the_bucket_and_comes_back_from_it() {
    for key in [None, Some(GroupKey::generate())] {
        let key = key.as_ref();
        let d = fast_tmpdir();
        // The background thread uploads after each seal and once more
        // when the log is dropped.
        let (store, log, m) = history(d.path(), key, true);
        drop(log);
        check_bucket(d.path(), key);
        assert_eq!(store.upload_journal().unwrap(), Default::default());
        if key.is_some() {
            // Sealed: the bucket never holds a journal byte in the clear.
            let raw =
                std::fs::read(d.path().join("objects/journal/00000000000000000001.jnl")).unwrap();
            assert!(!raw.windows(8).any(|w| w == b"OFSRPLOG"));
        }
        drop(store);
        // Reopened (the listing read again, sizes in plaintext for a
        // sealed store): nothing is uploaded twice.
        let store = open(d.path(), key);
        assert_eq!(store.upload_journal().unwrap(), Default::default());
        drop(store);

        // A new site attaching the bucket.
        let e = new_site(d.path());
        let store = open(e.path(), key);
        check_restored(&store, &m);
        drop(store);

        // The replica site's own disk replaced: the same from its bucket.
        std::fs::remove_dir_all(d.path().join("work")).unwrap();
        let store = open(d.path(), key);
        assert_eq!(local_files(d.path()).len(), 3);
        check_restored(&store, &m);
    }
}

#[test]
fn a_torn_or_damaged_object_is_cut_or_skipped_like_a_local_file() {
    let d = fast_tmpdir();
    let (store, log, m) = history(d.path(), None, false);
    store.upload_journal().unwrap();
    drop((log, store));
    let objs = d.path().join("objects/journal");
    // Sealed file 2 loses the end of its last checkpoint (a torn copy);
    // file 1's header is damaged.
    let f2 = objs.join("00000000000000000002.jnl");
    let len = std::fs::metadata(&f2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&f2)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let f1 = objs.join("00000000000000000001.jnl");
    let mut b = std::fs::read(&f1).unwrap();
    b[20] ^= 1;
    std::fs::write(&f1, b).unwrap();
    let e = new_site(d.path());
    let store = open(e.path(), None);
    // File 1's checkpoints are gone, so is checkpoint 4 (torn); 3 and 5
    // read back exactly.
    assert_eq!(listed(&store), vec![3, 5]);
    m.check_image(&store, 3);
    m.check_image(&store, 5);
}

#[test]
fn a_crash_in_an_upload_pass_is_finished_by_the_next() {
    let d = fast_tmpdir();
    let (store, _log, _) = history(d.path(), None, false);
    failpoint::disarm();
    store.upload_journal().unwrap();
    let steps = failpoint::steps();
    assert!(steps > 0);
    for n in 1..=steps {
        let d = fast_tmpdir();
        let (store, log, m) = history(d.path(), None, false);
        failpoint::arm(n);
        let r = store.upload_journal();
        assert!(failpoint::fired(), "step {n} of {steps} did not fail");
        assert!(r.is_err(), "step {n} failed silently");
        failpoint::disarm();
        drop((log, store));
        let store = open(d.path(), None);
        store.upload_journal().unwrap();
        check_bucket(d.path(), None);
        drop(store);
        let e = new_site(d.path());
        check_restored(&open(e.path(), None), &m);
    }
}

#[test]
fn a_crash_in_a_prune_leaves_at_worst_orphans_the_next_prune_deletes() {
    // History of one second: file 1 (checkpoints 1, 2) goes, file 2 stays
    // for checkpoint 4.
    let policy = JournalPolicy::new(Duration::from_secs(1), u64::MAX);
    let prepared = |d: &Path| {
        let (store, log, m) = history(d, None, false);
        store.upload_journal().unwrap();
        (store, log, m)
    };
    let d = fast_tmpdir();
    let (store, _log, _) = prepared(d.path());
    failpoint::disarm();
    assert_eq!(store.prune_journal(&policy, &[]).unwrap().files, 1);
    let steps = failpoint::steps();
    assert!(
        !journal_keys(d.path())
            .iter()
            .any(|k| k.contains("00000000000000000001.jnl"))
    );
    for n in 1..=steps {
        let d = fast_tmpdir();
        let (store, log, m) = prepared(d.path());
        failpoint::arm(n);
        drop(store.prune_journal(&policy, &[]));
        assert!(failpoint::fired(), "step {n} of {steps} did not fail");
        failpoint::disarm();
        drop((log, store));
        let store = open(d.path(), None);
        store.prune_journal(&policy, &[]).unwrap();
        check_bucket(d.path(), None);
        assert_eq!(listed(&store), vec![3, 4, 5], "crash at step {n}");
        drop(store);
        let e = new_site(d.path());
        let store = open(e.path(), None);
        assert_eq!(listed(&store), vec![3, 4, 5]);
        for id in 3..=5 {
            m.check_image(&store, id);
        }
    }
}

#[test]
fn a_crash_while_restoring_leaves_no_partial_journal() {
    let d = fast_tmpdir();
    let (store, log, m) = history(d.path(), None, false);
    store.upload_journal().unwrap();
    drop((log, store));
    for j in 1.. {
        let e = new_site(d.path());
        let objs = objects(e.path(), None);
        failpoint::arm(j);
        let r = ReplicaStore::open_in(objs, e.path().join("work"));
        let fired = failpoint::fired();
        failpoint::disarm();
        drop(r);
        if !fired {
            assert!(j > 4, "the restore took {j} steps");
            break;
        }
        let store = open(e.path(), None);
        let summary = store.list_checkpoints(Listing::Summary).unwrap().summary;
        assert_eq!(summary.count, 5, "crash at step {j} of the restore");
        check_restored(&store, &m);
    }
}

#[test]
fn a_journal_kept_local_is_not_copied() {
    let d = fast_tmpdir();
    let mut m = Model::new(&jspecs());
    let store = ReplicaStore::create_in(
        objects(d.path(), None),
        d.path().join("work"),
        &m.specs,
        None,
        0,
    )
    .unwrap();
    store.keep_journal_local();
    let mut log = open_keep(&store);
    m.append(&mut log, &[(0, 1, 2, 5)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    log.seal(None, CREATED.into()).unwrap();
    drop(log);
    assert_eq!(journal_keys(d.path()), Vec::<String>::new());
    assert_eq!(listed(&store), vec![1]);
}
