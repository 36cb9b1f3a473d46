//! Crash tests with the failpoint hook: for every operation, fail its N-th
//! file-system step (and freeze the "disk" after it), drop the store
//! without cleanup, and reopen. The visible PITs must be exactly the
//! before-set or the after-set and read back byte for byte; repeating the
//! operation after a "before" outcome completes it. Open itself is then
//! crashed at every one of its steps (on a copy of the crashed directory)
//! and reopened again.

mod common;

use common::{Backend, Oracle, Write, commit, copy_tree, fast_tmpdir, kind, pit, specs};
use offsite_replica_store::{ReplicaError, ReplicaStore, failpoint};

/// A store with a seeded base and `n` overlapping PITs (PIT 2 named).
fn setup(backend: Backend, dir: &std::path::Path, n: u64) -> (ReplicaStore, Oracle) {
    let specs = specs();
    let store = backend.create(dir, &specs).unwrap();
    let mut oracle = Oracle::new(&specs);
    let seed = common::pattern(2048, 7);
    store.write_base("sys", 100, &seed).unwrap();
    store.sync_base().unwrap();
    oracle.base[0][100..100 + 2048].copy_from_slice(&seed);
    for i in 1..=n {
        let writes: Vec<Write> = (0..8)
            .map(|j| {
                let v = (j % 2) as usize;
                let b = (i * 3 + j) % if v == 0 { 24 } else { 12 };
                (v, b, if j == 5 { None } else { Some(i * 10 + j) })
            })
            .collect();
        commit(&store, &mut oracle, &writes, (i == 2).then_some("keep"));
    }
    (store, oracle)
}

type Op = fn(&ReplicaStore) -> Result<(), ReplicaError>;

fn commit_writes() -> Vec<Write> {
    vec![
        (0, 1, Some(901)),
        (0, 2, None),
        (1, 11, Some(902)),
        (1, 0, Some(903)),
    ]
}

fn op_commit(s: &ReplicaStore) -> Result<(), ReplicaError> {
    let mut w = s.begin_pit()?;
    let o = Oracle::new(&specs());
    o.stage(&mut w, &commit_writes());
    w.commit(Some("new".into()), common::CREATED.into())
        .map(|_| ())
}

/// The state `store` is in must be `before` or `after`; returns which.
/// From "before", the operation is repeated and must reach "after".
fn settle(store: &ReplicaStore, before: &Oracle, after: &Oracle, op: Op) -> &'static str {
    if after.same_list(store) {
        after.check(store);
        "after"
    } else if before.same_list(store) {
        before.check(store);
        op(store).unwrap();
        after.check(store);
        "before"
    } else {
        panic!(
            "store shows {:?}, neither before {:?} nor after {:?}",
            store.pits(),
            before.pits.iter().map(|p| p.0).collect::<Vec<_>>(),
            after.pits.iter().map(|p| p.0).collect::<Vec<_>>()
        );
    }
}

fn crash_matrix(npits: u64, op: Op, to_after: fn(&mut Oracle)) {
    for backend in common::BACKENDS {
        crash_matrix_on(backend, npits, op, to_after);
    }
}

fn crash_matrix_on(backend: Backend, npits: u64, op: Op, to_after: fn(&mut Oracle)) {
    eprintln!("backend {backend:?}");
    // Count the steps of an undisturbed run.
    let d = fast_tmpdir();
    let (s, before) = setup(backend, d.path(), npits);
    assert_eq!(s.object_store().is_some(), backend == Backend::Objects);
    let mut after = before.clone();
    to_after(&mut after);
    failpoint::disarm();
    op(&s).unwrap();
    let total = failpoint::steps();
    after.check(&s);
    drop(s);
    assert!(total >= 3, "only {total} steps");

    let (mut outcomes_before, mut outcomes_after, mut poisoned) = (0, 0, 0);
    for i in 1..=total {
        let d = fast_tmpdir();
        let (s, _) = setup(backend, d.path(), npits);
        failpoint::arm(i);
        let r = op(&s);
        let fired = failpoint::fired();
        failpoint::disarm();
        assert!(fired, "step {i} of {total} did not fire");
        assert!(r.is_err(), "an injected failure must fail the operation");
        let snapshot = fast_tmpdir(); // the crashed state, kept pristine
        copy_tree(d.path(), snapshot.path());
        // Sticky failure: a poisoned handle refuses changes, reads work.
        if let Err(e) = s.set_pit_name(pit(before.pits[0].0), None) {
            assert_eq!(kind(&e), "Poisoned", "step {i}: {e}");
            assert!(matches!(s.begin_pit(), Err(ReplicaError::Poisoned { .. })));
            poisoned += 1;
            let mut buf = vec![0u8; 512];
            s.read(s.newest().map(|p| p.id), "sys", 0, &mut buf)
                .unwrap();
        }
        drop(s);

        // Crash recovery of the crash: fail open at each of its steps.
        failpoint::disarm();
        let store = backend.open(d.path()).unwrap();
        let open_steps = failpoint::steps();
        match settle(&store, &before, &after, op) {
            "before" => outcomes_before += 1,
            _ => outcomes_after += 1,
        }
        drop(store);
        for j in 1..=open_steps {
            let c = fast_tmpdir();
            copy_tree(snapshot.path(), c.path());
            failpoint::arm(j);
            let r = backend.open(c.path());
            failpoint::disarm();
            assert!(r.is_err(), "open step {j} of {open_steps} did not fail");
            drop(r);
            let store = backend.open(c.path()).unwrap();
            settle(&store, &before, &after, op);
            drop(store);
            let store = backend.open(c.path()).unwrap();
            after.check(&store);
        }
    }
    assert!(outcomes_before > 0, "no crash point left the old state");
    assert!(outcomes_after > 0, "no crash point reached the new state");
    assert!(poisoned > 0, "no crash point poisoned the store");
}

#[test]
fn crash_during_commit() {
    crash_matrix(3, op_commit, |o| {
        o.commit(&commit_writes(), Some("new".into()));
    });
}

#[test]
fn crash_while_removing_the_oldest_pit() {
    crash_matrix(4, |s| s.remove_pit(pit(1)), |o| o.remove(1).unwrap());
}

#[test]
fn crash_while_removing_a_middle_pit() {
    crash_matrix(4, |s| s.remove_pit(pit(2)), |o| o.remove(2).unwrap());
}

#[test]
fn crash_while_removing_the_pit_before_the_newest() {
    crash_matrix(4, |s| s.remove_pit(pit(3)), |o| o.remove(3).unwrap());
}

#[test]
fn crash_while_removing_the_only_pit() {
    crash_matrix(1, |s| s.remove_pit(pit(1)), |o| o.remove(1).unwrap());
}

#[test]
fn crash_while_renaming() {
    crash_matrix(
        3,
        |s| s.set_pit_name(pit(3), Some("renamed".into())),
        |o| assert!(o.set_name(3, Some("renamed".into()))),
    );
}

/// An error before the commit point fails the commit only: the store stays
/// usable without reopening.
#[test]
fn failure_before_the_commit_point_does_not_poison() {
    for backend in common::BACKENDS {
        failure_before_the_commit_point_does_not_poison_on(backend);
    }
}

fn failure_before_the_commit_point_does_not_poison_on(backend: Backend) {
    let d = fast_tmpdir();
    let (s, mut oracle) = setup(backend, d.path(), 2);
    let mut w = s.begin_pit().unwrap();
    oracle.stage(&mut w, &commit_writes());
    failpoint::arm(1); // the first segment's fsync
    let e = w.commit(None, common::CREATED.into()).unwrap_err();
    failpoint::disarm();
    assert_eq!(kind(&e), "Io", "{e}");
    oracle.check(&s);
    commit(&s, &mut oracle, &commit_writes(), None);
    oracle.check(&s);
}
