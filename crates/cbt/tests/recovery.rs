//! Open/recovery paths: fresh volumes, clean restarts, simulated crashes,
//! damaged or missing state files, geometry changes, AL overflow.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use offsite_cbt::{CbtError, ChangeTracker, Geometry, OpenReport, RoaringBitmap, Tuning};

use common::{Rng, blocks_of, extent_closure, to_set};

const G: Geometry = Geometry {
    block_size: 4096,
    nblocks: 25_000, // ~100 MiB: 25 extents of 4 MiB
};

fn small() -> Tuning {
    Tuning {
        extent_blocks: 8,
        al_capacity: 4,
    }
}

fn assert_reset(report: &OpenReport, needle: &str) {
    match report {
        OpenReport::Reset { reason } => assert!(
            reason.contains(needle),
            "reason {reason:?} does not mention {needle:?}"
        ),
        other => panic!("expected Reset mentioning {needle:?}, got {other:?}"),
    }
}

fn assert_all_dirty(t: &ChangeTracker) {
    assert_eq!(t.dirty_blocks(), t.geometry().nblocks);
    assert_eq!(t.dirty_bytes(), t.geometry().volume_bytes());
}

/// A tracker with some marks, closed cleanly.
fn closed_volume(dir: &Path) -> RoaringBitmap {
    let t = ChangeTracker::create(dir, "v", G).unwrap();
    t.mark(0, 4096).unwrap();
    t.mark(50 << 20, 1 << 20).unwrap();
    let snap = t.snapshot();
    t.close().unwrap();
    snap
}

#[test]
fn fresh_volume_is_clean_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    assert_eq!(t.dirty_blocks(), 0);
    assert_eq!(t.extent_blocks(), 1024);
    assert!(dir.path().join("v.cbt").exists());
    assert!(dir.path().join("v.al").exists());
    t.crash();
    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(report, OpenReport::Clean);
    assert_eq!(t.dirty_blocks(), 0);
}

#[test]
fn create_refuses_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    ChangeTracker::create(dir.path(), "v", G)
        .unwrap()
        .close()
        .unwrap();
    let err = ChangeTracker::create(dir.path(), "v", G).unwrap_err();
    assert!(matches!(err, CbtError::AlreadyExists { .. }), "{err}");
    fs::remove_file(dir.path().join("v.cbt")).unwrap();
    let err = ChangeTracker::create(dir.path(), "v", G).unwrap_err();
    assert!(matches!(err, CbtError::AlreadyExists { .. }), "{err}");
    ChangeTracker::remove_files(dir.path(), "v").unwrap();
    assert!(!dir.path().join("v.al").exists());
    ChangeTracker::remove_files(dir.path(), "v").unwrap();
    ChangeTracker::create(dir.path(), "v", G).unwrap();
}

#[test]
fn clean_restart_preserves_the_set_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    let mut rng = Rng::new(7);
    for _ in 0..500 {
        let off = rng.below(G.volume_bytes() - 65536);
        t.mark(off, 1 + rng.below(65536)).unwrap();
    }
    let before = t.snapshot();
    t.close().unwrap();
    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(report, OpenReport::Clean);
    assert_eq!(t.snapshot(), before);
}

#[test]
fn crash_recovers_bitmap_plus_active_extents_and_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    t.mark(4096, 4096).unwrap(); // extent 0
    t.checkpoint().unwrap();
    t.mark((10 << 22) + 8192, 100).unwrap(); // extent 10
    let marked = t.snapshot();
    t.crash();

    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(
        report,
        OpenReport::RecoveredAfterCrash { active_extents: 2 }
    );
    let snap = t.snapshot();
    assert!(snap.is_superset(&marked));
    let mut expected = RoaringBitmap::new();
    expected.insert_range(0..1024);
    expected.insert_range(10 * 1024..11 * 1024);
    assert_eq!(snap, expected);

    // The recovered set was persisted and the AL emptied: another crash
    // without writes reopens clean with the same set.
    t.crash();
    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(report, OpenReport::Clean);
    assert_eq!(t.snapshot(), expected);
}

#[test]
fn missing_files_reset_to_all_dirty() {
    for (remove, needle) in [
        (&["v.cbt", "v.al"][..], "no change-tracking state"),
        (&["v.cbt"][..], "v.cbt is missing"),
        (&["v.al"][..], "v.al is missing"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        closed_volume(dir.path());
        for f in remove {
            fs::remove_file(dir.path().join(f)).unwrap();
        }
        let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
        assert_reset(&report, needle);
        assert_all_dirty(&t);
        // The reset is durable: a clean reopen keeps everything dirty.
        t.close().unwrap();
        let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
        assert_eq!(report, OpenReport::Clean);
        assert_all_dirty(&t);
    }
}

#[test]
fn corrupt_bitmap_resets() {
    let dir = tempfile::tempdir().unwrap();
    closed_volume(dir.path());
    let path = dir.path().join("v.cbt");
    let len = fs::metadata(&path).unwrap().len() as usize;
    for at in [0, 9, 13, 20, 30, 40, len / 2, len - 1] {
        let mut bytes = fs::read(&path).unwrap();
        let orig = bytes.clone();
        bytes[at] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
        assert_reset(&report, "checksum mismatch");
        assert_all_dirty(&t);
        t.crash();
        fs::write(&path, &orig).unwrap();
    }
}

#[test]
fn truncated_or_garbage_al_resets() {
    let dir = tempfile::tempdir().unwrap();
    closed_volume(dir.path());
    let path = dir.path().join("v.al");
    let orig = fs::read(&path).unwrap();
    for (bytes, needle) in [
        (orig[..orig.len() - 100].to_vec(), "truncated"),
        (orig[..orig.len() / 2].to_vec(), "truncated"),
        (Vec::new(), "truncated"),
        (vec![0u8; orig.len()], "no valid slot"),
        (vec![0xAB; orig.len()], "no valid slot"),
    ] {
        fs::write(&path, &bytes).unwrap();
        let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
        assert_reset(&report, needle);
        assert_all_dirty(&t);
        t.close().unwrap();
        // The AL was rewritten in good shape.
        let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
        assert_eq!(report, OpenReport::Clean);
        t.crash();
    }
}

#[test]
fn geometry_mismatch_resets() {
    let dir = tempfile::tempdir().unwrap();
    closed_volume(dir.path());
    let grown = Geometry {
        block_size: 4096,
        nblocks: G.nblocks + 1,
    };
    let (t, report) = ChangeTracker::open(dir.path(), "v", grown).unwrap();
    assert_reset(&report, "geometry mismatch");
    assert_all_dirty(&t);
    t.close().unwrap();

    let rebased = Geometry {
        block_size: 512,
        nblocks: (G.nblocks + 1) * 8,
    };
    let (t, report) = ChangeTracker::open(dir.path(), "v", rebased).unwrap();
    assert_reset(&report, "geometry mismatch");
    assert_all_dirty(&t);
}

#[test]
fn stale_partial_files_are_ignored_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let marked = closed_volume(dir.path());
    fs::write(dir.path().join("v.cbt.partial"), b"half-written").unwrap();
    fs::write(dir.path().join("v.al.partial"), b"half-written").unwrap();
    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(report, OpenReport::Clean);
    assert_eq!(t.snapshot(), marked);
    assert!(!dir.path().join("v.cbt.partial").exists());
    t.checkpoint().unwrap();
    assert!(!dir.path().join("v.cbt.partial").exists());
}

#[test]
fn clear_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    t.mark(0, 1 << 20).unwrap();
    t.clear().unwrap();
    assert_eq!(t.dirty_blocks(), 0);
    t.crash();
    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(report, OpenReport::Clean);
    assert_eq!(t.dirty_blocks(), 0);
    // Marks after a clear re-activate their extent durably.
    t.mark(4096, 1).unwrap();
    t.crash();
    let (t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(
        report,
        OpenReport::RecoveredAfterCrash { active_extents: 1 }
    );
    assert_eq!(t.dirty_blocks(), 1024);
}

#[test]
fn take_and_merge_back() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    t.mark(0, 8192).unwrap();
    t.mark(1 << 30 >> 4, 4096).unwrap();
    let cut = t.take().unwrap();
    assert_eq!(cut.len(), 3);
    assert_eq!(t.dirty_blocks(), 0);
    t.mark(4096 * 100, 4096).unwrap();
    t.checkpoint().unwrap();
    // Shipping failed: give the cut back; merge is durable by itself.
    t.merge(&cut).unwrap();
    assert_eq!(t.dirty_blocks(), 4);
    t.clear().unwrap();
    t.merge(&cut).unwrap();
    t.crash();
    let (t, _) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(t.snapshot(), cut);
    let err = t
        .merge(&RoaringBitmap::from_iter([G.nblocks as u32]))
        .unwrap_err();
    assert!(matches!(err, CbtError::BlockOutOfRange { .. }), "{err}");
}

#[test]
fn bad_arguments_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = ChangeTracker::create(
        dir.path(),
        "v",
        Geometry {
            block_size: 1000,
            nblocks: 10,
        },
    )
    .unwrap_err();
    assert!(matches!(err, CbtError::InvalidGeometry { .. }), "{err}");
    let err = ChangeTracker::create(
        dir.path(),
        "v",
        Geometry {
            block_size: 256,
            nblocks: 10,
        },
    )
    .unwrap_err();
    assert!(matches!(err, CbtError::InvalidGeometry { .. }), "{err}");
    let err = ChangeTracker::create(
        dir.path(),
        "v",
        Geometry {
            block_size: 512,
            nblocks: 1 << 32,
        },
    )
    .unwrap_err();
    assert!(matches!(err, CbtError::TooManyBlocks { .. }), "{err}");
    assert!(Geometry::for_volume(1 << 30, 4096).is_ok());
    assert!(Geometry::for_volume((1 << 30) + 1, 4096).is_err());
    assert!(Geometry::for_volume(0, 4096).is_err());

    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    let size = G.volume_bytes();
    assert!(matches!(t.mark(size, 1), Err(CbtError::OutOfRange { .. })));
    assert!(matches!(
        t.mark(u64::MAX, 2),
        Err(CbtError::OutOfRange { .. })
    ));
    t.mark(size, 0).unwrap();
    t.mark(size - 1, 1).unwrap();
    assert_eq!(t.dirty_blocks(), 1);
}

#[test]
fn largest_volume_works() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry {
        block_size: 512,
        nblocks: u64::from(u32::MAX),
    };
    let t = ChangeTracker::create(dir.path(), "big", g).unwrap();
    t.mark(g.volume_bytes() - 512, 512).unwrap();
    t.mark(0, g.volume_bytes()).unwrap(); // whole volume: bitmap path
    assert_eq!(t.dirty_blocks(), g.nblocks);
    t.crash();
    let (t, report) = ChangeTracker::open(dir.path(), "big", g).unwrap();
    assert_eq!(
        report,
        OpenReport::RecoveredAfterCrash { active_extents: 1 }
    );
    assert_eq!(t.dirty_blocks(), g.nblocks);
    // Run containers keep a full bitmap file tiny.
    t.close().unwrap();
    assert!(fs::metadata(dir.path().join("big.cbt")).unwrap().len() < 1 << 20);
}

#[test]
fn al_overflow_keeps_every_mark() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create_tuned(dir.path(), "v", G, small()).unwrap();
    let mut oracle = BTreeSet::new();
    let mut rng = Rng::new(42);
    for i in 0..400u64 {
        // Walk across extents, revisiting some.
        let block = if i % 3 == 0 {
            rng.below(64)
        } else {
            rng.below(G.nblocks - 20)
        };
        let len = 1 + rng.below(4096 * 12);
        t.mark(block * 4096, len).unwrap();
        oracle.extend(blocks_of(block * 4096, len, 4096));
        assert!(t.active_extents() <= 4);
    }
    assert_eq!(to_set(&t.snapshot()), oracle);
    t.crash();
    let (t, report) = ChangeTracker::open_tuned(dir.path(), "v", G, small()).unwrap();
    assert!(matches!(report, OpenReport::RecoveredAfterCrash { .. }));
    let snap = to_set(&t.snapshot());
    assert!(snap.is_superset(&oracle));
    // Extras are at most the 4 active extents.
    assert!(snap.is_subset(&extent_closure(&oracle, 8, G.nblocks)));
    assert!(snap.len() - oracle.len() <= 4 * 8);
}

#[test]
fn concurrent_marks_with_overflow_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let t = Arc::new(ChangeTracker::create_tuned(dir.path(), "v", G, small()).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|seed| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed);
                let mut mine = BTreeSet::new();
                for _ in 0..300 {
                    let off = rng.below(G.volume_bytes() - 100_000);
                    let max = if rng.below(20) == 0 { 100_000 } else { 5000 };
                    let len = 1 + rng.below(max);
                    t.mark(off, len).unwrap();
                    mine.extend(blocks_of(off, len, 4096));
                    if rng.below(50) == 0 {
                        t.checkpoint().unwrap();
                    }
                }
                mine
            })
        })
        .collect();
    let mut oracle = BTreeSet::new();
    for h in handles {
        oracle.extend(h.join().unwrap());
    }
    assert_eq!(to_set(&t.snapshot()), oracle);
    Arc::try_unwrap(t).unwrap().crash();
    let (t, _) = ChangeTracker::open_tuned(dir.path(), "v", G, small()).unwrap();
    assert!(to_set(&t.snapshot()).is_superset(&oracle));
}
