//! Crashes of the replica in every phase of the journal, with the
//! failpoint hook: an append, a checkpoint, a seal (the PIT's commit, the
//! next file, the index), retention merging and folding PITs, pruning,
//! and the recovering open itself (a torn tail, a version 1 log being
//! copied in). For every operation, its N-th file-system step fails and
//! the "disk" freezes; the store is dropped without cleanup and reopened
//! with its log. Then no acknowledged checkpoint is missing (unless the
//! operation drops it when it completes: a prune, a fold), every listed
//! checkpoint reads back as exactly its prefix of the write order, the
//! newest PIT holds every acknowledged write, and the log goes on. The
//! recovering open is then crashed at each of its own steps, on a copy of
//! the crashed state, and the checks repeated.

mod common;

use std::path::Path;
use std::time::Duration;

use common::journal::{CREATED, Model, jspecs, listed, open_keep};
use common::{BACKENDS, Backend, copy_tree, fast_tmpdir};
use offsite_replica_store::{
    Consistency, History, JournalPolicy, PitId, ReplicaError, ReplicaStore, WriteLog, failpoint,
};

/// A store with history: PIT 1 and 2 sealed from the first two journal
/// files, checkpoints 1..=5, and a third, open file with writes after
/// checkpoint 5.
fn setup(backend: Backend, dir: &Path) -> (ReplicaStore, WriteLog, Model) {
    let mut m = Model::new(&jspecs());
    let store = m.create_store_on(backend, dir);
    let mut log = open_keep(&store);
    m.append(&mut log, &[(0, 1, 2, 5), (1, 0, 1, 6)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.append(&mut log, &[(0, 1, 1, 0), (0, 9, 3, 8)]).unwrap();
    m.checkpoint(&mut log, Consistency::Application, Some("app"))
        .unwrap();
    log.seal(None, CREATED.into()).unwrap();
    m.append(&mut log, &[(1, 0, 1, 9)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.append(&mut log, &[(0, 0, 16, 10)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    log.seal(None, CREATED.into()).unwrap();
    m.append(&mut log, &[(1, 7, 1, 11), (0, 2, 1, 0)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.append(&mut log, &[(1, 5, 2, 12)]).unwrap();
    (store, log, m)
}

/// What an operation did, when it returned.
struct Done {
    /// The model with what the operation acknowledged.
    model: Model,
}

type Op = fn(&ReplicaStore, &mut WriteLog, &Model) -> Result<Done, ReplicaError>;

fn op_append(_: &ReplicaStore, log: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    let mut m = m.clone();
    m.append(log, &[(0, 4, 3, 21), (1, 6, 2, 0)])?;
    Ok(Done { model: m })
}

fn op_checkpoint(_: &ReplicaStore, log: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    let mut m = m.clone();
    m.checkpoint(log, Consistency::Application, Some("crash-test"))?;
    Ok(Done { model: m })
}

fn op_seal(_: &ReplicaStore, log: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    log.seal(Some("sealed".into()), CREATED.into())?;
    Ok(Done { model: m.clone() })
}

/// A seal of a log that keeps no history: the sealed files go after the
/// next file exists.
fn op_seal_discard(_: &ReplicaStore, log: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    log.set_history(History::Discard);
    log.seal(None, CREATED.into())?;
    Ok(Done { model: m.clone() })
}

/// Retention as the replication crate runs it: PIT 2 is not pinned, so it
/// merges into its successor (sealed first, so there is one).
fn op_retain(s: &ReplicaStore, log: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    log.seal(None, CREATED.into())?;
    let pit = PitId::new(2).unwrap();
    let day = JournalPolicy::new(Duration::from_secs(86_400), u64::MAX);
    assert!(!s.journal_pins(&day)?.contains(&pit));
    s.remove_pit(pit)?;
    Ok(Done { model: m.clone() })
}

/// A fold that ignores the pins: PIT 1 into the base.
fn op_fold(s: &ReplicaStore, _: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    s.remove_pit(PitId::new(1).unwrap())?;
    Ok(Done { model: m.clone() })
}

fn op_prune(s: &ReplicaStore, _: &mut WriteLog, m: &Model) -> Result<Done, ReplicaError> {
    let policy = JournalPolicy::new(Duration::from_millis(1500), u64::MAX);
    s.prune_journal(&policy, &[])?;
    Ok(Done { model: m.clone() })
}

/// Checks a recovered store against `m`: every checkpoint of `must` is
/// listed, every listed one is one of the model's and reads back as its
/// prefix, and the open PIT (sealed now) holds exactly `writes` writes
/// when that is known. Then the log goes on.
fn check(store: &ReplicaStore, log: WriteLog, m: &Model, must: &[u64], writes: Option<usize>) {
    let now = listed(store);
    for id in must {
        assert!(now.contains(id), "checkpoint {id} lost: listed {now:?}");
    }
    for &id in &now {
        assert!(m.checkpoints.contains_key(&id), "unknown checkpoint {id}");
        m.check_image(store, id);
    }
    let mut log = log;
    let mut m = m.clone();
    let pit = log.seal(None, CREATED.into()).unwrap();
    if let Some(n) = writes {
        let want = m.image(n);
        for (v, s) in m.specs.iter().enumerate() {
            let mut buf = vec![0u8; s.size_bytes as usize];
            store.read(Some(pit.id), &s.name, 0, &mut buf).unwrap();
            assert!(buf == want[v], "the newest PIT misses acknowledged writes");
        }
    }
    // The log goes on: numbering continues, images work.
    if let Some(n) = writes {
        m.writes.truncate(n);
    }
    m.append(&mut log, &[(0, 15, 1, 99)]).unwrap();
    let id = m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    if writes.is_some() {
        m.check_image(store, id);
    }
}

/// [`crash_matrix_on`] against every backend (the journal stays in the
/// local directory; sealed PITs go to the store's committed state).
/// Returns each backend's outcomes.
fn crash_matrix(op: Op) -> Vec<Vec<usize>> {
    BACKENDS
        .iter()
        .map(|&backend| crash_matrix_on(backend, op))
        .collect()
}

/// Runs `op` crashing at each of its steps. Returns the number of PITs
/// each crash left (after recovery, before the check's own seal).
fn crash_matrix_on(backend: Backend, op: Op) -> Vec<usize> {
    // A clean run: what the operation may drop, and its step count.
    let d = fast_tmpdir();
    let (store, mut log, m) = setup(backend, d.path());
    let before = listed(&store);
    failpoint::disarm();
    let clean = op(&store, &mut log, &m).unwrap();
    let steps = failpoint::steps();
    let after = listed(&store);
    let dropped: Vec<u64> = before
        .iter()
        .filter(|c| !after.contains(c))
        .copied()
        .collect();
    let must: Vec<u64> = before
        .iter()
        .filter(|c| !dropped.contains(c))
        .copied()
        .collect();
    let full = clean.model;
    drop((log, store));
    assert!(steps > 0, "the operation takes no step");

    let mut outcomes = Vec::new();
    for n in 1..=steps {
        let d = fast_tmpdir();
        let (store, mut log, m) = setup(backend, d.path());
        failpoint::arm(n);
        let r = op(&store, &mut log, &m);
        assert!(failpoint::fired(), "step {n} of {steps} did not fail");
        drop(log);
        drop(store);
        failpoint::disarm();
        // The model: an append that failed may or may not have reached the
        // disk (it was never acknowledged), so the PIT's content is only
        // known when it returned or is known not to have written.
        let (model, writes) = match &r {
            Ok(done) => (done.model.clone(), Some(done.model.writes.len())),
            Err(_) if full.writes.len() > m.writes.len() => (full.clone(), None),
            Err(_) => (full.clone(), Some(m.writes.len())),
        };
        let snapshot = fast_tmpdir();
        copy_tree(d.path(), snapshot.path());
        let store = backend.open(d.path()).unwrap();
        let log = open_keep(&store);
        outcomes.push(store.pits().len());
        check(&store, log, &model, &must, writes);
        drop(store);

        // Crash the recovery at each of its steps, then recover again.
        for j in 1.. {
            let c = fast_tmpdir();
            copy_tree(snapshot.path(), c.path());
            failpoint::arm(j);
            let r = backend
                .open(c.path())
                .and_then(|s| s.open_log().map(|l| (s, l)));
            let fired = failpoint::fired();
            drop(r);
            failpoint::disarm();
            if !fired {
                break;
            }
            let store = backend.open(c.path()).unwrap();
            let log = open_keep(&store);
            check(&store, log, &model, &must, writes);
        }
    }
    outcomes
}

#[test]
fn crash_while_appending() {
    crash_matrix(op_append);
}

#[test]
fn crash_while_checkpointing() {
    crash_matrix(op_checkpoint);
}

#[test]
fn crash_while_sealing() {
    for outcomes in crash_matrix(op_seal) {
        assert!(outcomes.contains(&2), "no crash left the PIT uncommitted");
        assert!(
            outcomes.contains(&3),
            "no crash came after the commit point"
        );
    }
}

#[test]
fn crash_while_sealing_without_history() {
    for outcomes in crash_matrix(op_seal_discard) {
        assert!(
            outcomes.contains(&2) && outcomes.contains(&3),
            "{outcomes:?}"
        );
    }
}

#[test]
fn crash_while_retention_merges_a_pit_of_the_history() {
    for outcomes in crash_matrix(op_retain) {
        assert!(
            outcomes.contains(&2) && outcomes.contains(&3),
            "{outcomes:?}"
        );
    }
}

#[test]
fn crash_while_folding_history_into_the_base() {
    for outcomes in crash_matrix(op_fold) {
        assert!(
            outcomes.contains(&1) && outcomes.contains(&2),
            "{outcomes:?}"
        );
    }
}

#[test]
fn crash_while_pruning() {
    crash_matrix(op_prune);
}

/// The recovering open of a torn tail and of a version 1 log, crashed at
/// each of its steps: the copy into the journal happens once, whole.
#[test]
fn crash_while_opening_a_version_1_log() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/log-v1");
    let prepare = |to: &Path| {
        copy_tree(&fixture, to);
        for sub in ["staging", "merging"] {
            std::fs::create_dir_all(to.join(sub)).unwrap();
        }
    };
    let d = fast_tmpdir();
    prepare(d.path());
    let store = ReplicaStore::open(d.path()).unwrap();
    let want = store
        .open_log()
        .unwrap()
        .finish(CREATED.into())
        .unwrap()
        .unwrap();
    let image = |s: &ReplicaStore, pit: PitId| {
        let mut a = vec![0u8; 8 * 512];
        let mut b = vec![0u8; 4 * 4096];
        s.read(Some(pit), "a", 0, &mut a).unwrap();
        s.read(Some(pit), "b", 0, &mut b).unwrap();
        (a, b)
    };
    let want = image(&store, want.id);
    drop(store);
    for j in 1.. {
        let c = fast_tmpdir();
        prepare(c.path());
        failpoint::arm(j);
        let r = ReplicaStore::open(c.path()).and_then(|s| s.open_log().map(|l| (s, l)));
        let fired = failpoint::fired();
        drop(r);
        failpoint::disarm();
        if !fired {
            break;
        }
        let store = ReplicaStore::open(c.path()).unwrap();
        let pit = store
            .open_log()
            .unwrap()
            .finish(CREATED.into())
            .unwrap()
            .expect("the version 1 log's records");
        assert_eq!(pit.id.get(), 2, "step {j}");
        assert!(image(&store, pit.id) == want, "step {j}");
        assert!(!c.path().join("sync.log").exists());
    }
}
