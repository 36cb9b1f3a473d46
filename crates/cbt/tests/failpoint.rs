//! Crash tests with the counted failpoint of `offsite-durable`: for each
//! operation that writes state files, fail its N-th crash-relevant step
//! (create, write of an AL record, fsync, rename, remove) and freeze the
//! "disk" after it, drop the tracker as a crash would, and reopen. The
//! tracker must come back without a reset (no torn file) and with every
//! acknowledged block dirty. The recovering open is then crashed at each of
//! its own steps (on a copy of the crashed directory) and reopened again.

mod common;

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use offsite_cbt::{CbtError, ChangeTracker, Geometry, OpenReport, RoaringBitmap, Tuning};
use offsite_durable::failpoint;

use common::{blocks_of, to_set};

const G: Geometry = Geometry {
    block_size: 4096,
    nblocks: 4096,
};

fn small() -> Tuning {
    Tuning {
        extent_blocks: 8,
        al_capacity: 4,
    }
}

/// A tracker with a checkpointed bitmap and a few active extents; returns
/// the acknowledged blocks.
fn setup(dir: &Path) -> (ChangeTracker, BTreeSet<u32>) {
    let t = ChangeTracker::create_tuned(dir, "vol", G, small()).unwrap();
    let mut acked = BTreeSet::new();
    let mut mark = |t: &ChangeTracker, offset: u64, len: u64| {
        t.mark(offset, len).unwrap();
        acked.extend(blocks_of(offset, len, G.block_size));
    };
    mark(&t, 0, 3 * 4096);
    mark(&t, 100 * 4096, 4096);
    t.checkpoint().unwrap();
    mark(&t, 200 * 4096, 2 * 4096); // extent 25
    mark(&t, 300 * 4096, 4096); // extent 37
    (t, acked)
}

/// An operation on the tracker; returns the tracker unless it consumed it.
type Op = fn(ChangeTracker) -> (Result<(), CbtError>, Option<ChangeTracker>);

/// A non-consuming operation as an [`Op`].
macro_rules! keep {
    ($t:ident => $e:expr) => {
        |$t: ChangeTracker| {
            let r = $e;
            (r, Some($t))
        }
    };
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Reopens and checks: no reset, every acknowledged block dirty.
fn reopen_and_check(dir: &Path, acked: &BTreeSet<u32>, what: &str) -> OpenReport {
    let (t, report) = ChangeTracker::open_tuned(dir, "vol", G, small()).unwrap();
    assert!(
        !matches!(report, OpenReport::Reset { .. }),
        "{what}: state reset: {report:?}"
    );
    let snap = to_set(&t.snapshot());
    let lost: Vec<u32> = acked.difference(&snap).copied().collect();
    assert!(
        lost.is_empty(),
        "{what}: acknowledged blocks lost: {lost:?}"
    );
    t.close().unwrap();
    report
}

fn crash_matrix(op: Op) {
    let d = tempfile::tempdir().unwrap();
    let (t, _) = setup(d.path());
    failpoint::disarm();
    let (r, t) = op(t);
    r.unwrap();
    let total = failpoint::steps();
    if let Some(t) = t {
        t.crash();
    }
    assert!(total >= 1, "the operation wrote nothing");

    for i in 1..=total {
        let d = tempfile::tempdir().unwrap();
        let (t, acked) = setup(d.path());
        failpoint::arm_with(i, io::ErrorKind::StorageFull);
        let (r, t) = op(t);
        let fired = failpoint::fired();
        failpoint::disarm();
        assert!(fired, "step {i} of {total} did not fire");
        let e = r.expect_err("an injected failure must fail the operation");
        assert!(e.is_storage_full(), "step {i}: {e}");
        // Sticky: the tracker refuses marks until reopened.
        if let Some(t) = t {
            assert!(matches!(t.mark(0, 1), Err(CbtError::Poisoned { .. })));
            t.crash();
        }
        let snapshot = tempfile::tempdir().unwrap();
        copy_dir(d.path(), snapshot.path());

        failpoint::disarm();
        reopen_and_check(d.path(), &acked, &format!("step {i}"));
        // The recovering open crashed at each of its steps.
        let probe = tempfile::tempdir().unwrap();
        copy_dir(snapshot.path(), probe.path());
        failpoint::disarm();
        let (probed, _) = ChangeTracker::open_tuned(probe.path(), "vol", G, small()).unwrap();
        let open_steps = failpoint::steps();
        probed.crash();
        for j in 1..=open_steps {
            let c = tempfile::tempdir().unwrap();
            copy_dir(snapshot.path(), c.path());
            failpoint::arm(j);
            let r = ChangeTracker::open_tuned(c.path(), "vol", G, small());
            failpoint::disarm();
            assert!(r.is_err(), "open step {j} of {open_steps} did not fail");
            drop(r);
            reopen_and_check(c.path(), &acked, &format!("step {i}, open step {j}"));
        }
    }
    // An undisturbed run, for comparison: the set comes back exactly.
    let d = tempfile::tempdir().unwrap();
    let (t, acked) = setup(d.path());
    let (r, t) = op(t);
    r.unwrap();
    if let Some(t) = t {
        t.close().unwrap();
    }
    assert_eq!(
        reopen_and_check(d.path(), &acked, "undisturbed"),
        OpenReport::Clean
    );
}

#[test]
fn crash_during_checkpoint() {
    crash_matrix(keep!(t => t.checkpoint()));
}

#[test]
fn crash_during_close() {
    crash_matrix(|t| (t.close(), None));
}

#[test]
fn crash_during_activity_log_overflow() {
    // Extents 0, 12 (block 100), 25, 37 are active and the AL holds 4: a
    // fifth extent evicts (bitmap persisted) and writes a new AL record.
    crash_matrix(keep!(t => t.mark(500 * 4096, 4096)));
}

#[test]
fn crash_during_merge() {
    crash_matrix(keep!(t => t.merge(&RoaringBitmap::from_iter([1000u32, 1001, 2000]))));
}

/// A failed AL record write does not reach the file: the extent it would
/// have activated stays clean after reopening.
#[test]
fn failed_activity_log_write_leaves_the_old_record() {
    let d = tempfile::tempdir().unwrap();
    let (t, acked) = setup(d.path());
    failpoint::arm(1); // the AL record write of the new extent
    assert!(t.mark(600 * 4096, 4096).is_err());
    failpoint::disarm();
    t.crash();
    reopen_and_check(d.path(), &acked, "AL write");
    let (t, _) = ChangeTracker::open_tuned(d.path(), "vol", G, small()).unwrap();
    assert!(!t.snapshot().contains(600));
    t.close().unwrap();
}
