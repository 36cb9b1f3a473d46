//! Unit tests: file formats, sticky failure, recovery paths that need
//! crate-private access. Property and crash tests live in `tests/`.

use std::fs;

use offsite_durable::failpoint;
use roaring::RoaringBitmap;

use super::*;
use crate::format::*;

const G: Geometry = Geometry {
    block_size: 4096,
    nblocks: 10_000,
};

fn tuning() -> Tuning {
    Tuning {
        extent_blocks: 16,
        al_capacity: 8,
    }
}

#[test]
fn bitmap_roundtrip_and_rejections() {
    let mut bm = RoaringBitmap::new();
    bm.insert_range(10..5000);
    bm.insert(9999);
    let bytes = encode_bitmap(&bm, 4096, 10_000);
    assert_eq!(decode_bitmap(&bytes, 4096, 10_000).unwrap(), bm);

    // Header layout is pinned.
    assert_eq!(&bytes[0..8], b"OFSCBTBM");
    assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
    assert_eq!(&bytes[12..16], &4096u32.to_le_bytes());
    assert_eq!(&bytes[16..24], &10_000u64.to_le_bytes());
    assert_eq!(
        u64::from_le_bytes(bytes[24..32].try_into().unwrap()) as usize,
        bytes.len() - 36
    );

    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x40;
        assert!(decode_bitmap(&b, 4096, 10_000).is_err(), "flip at {i}");
    }
    for n in 0..bytes.len() {
        assert!(
            decode_bitmap(&bytes[..n], 4096, 10_000).is_err(),
            "truncated to {n}"
        );
    }
    let err = decode_bitmap(&bytes, 4096, 10_001).unwrap_err();
    assert!(matches!(err, FormatError::Geometry { .. }), "{err}");
    let err = decode_bitmap(&bytes, 512, 10_000).unwrap_err();
    assert!(matches!(err, FormatError::Geometry { .. }), "{err}");
    assert!(decode_bitmap(&[0u8; 64], 4096, 10_000).is_err());
}

#[test]
fn bitmap_rejects_blocks_past_the_end() {
    let mut bm = RoaringBitmap::new();
    bm.insert(100);
    let bytes = encode_bitmap(&bm, 512, 100);
    let err = decode_bitmap(&bytes, 512, 100).unwrap_err();
    assert!(
        matches!(
            err,
            FormatError::PastEnd {
                block: 100,
                nblocks: 100
            }
        ),
        "{err}"
    );
}

#[test]
fn al_slot_roundtrip_and_selection() {
    assert_eq!(al_slot_size(1024), 8192);
    assert_eq!(al_slot_size(2), 4096);
    let rec = |seq, extents: Vec<u32>| AlRecord {
        block_size: 4096,
        extent_blocks: 1024,
        capacity: 1024,
        seq,
        extents,
    };
    let ss = al_slot_size(1024);
    let a = encode_al_slot(&rec(4, vec![1, 2, 3]), ss);
    let b = encode_al_slot(&rec(5, vec![7]), ss);
    assert_eq!(a.len(), ss);
    assert_eq!(&a[0..8], b"OFSCBTAL");
    assert_eq!(decode_al_slot(&a, 0).unwrap(), rec(4, vec![1, 2, 3]));
    // A record in the wrong slot is rejected.
    assert!(decode_al_slot(&a, 1).is_err());

    let mut file = [a.clone(), b.clone()].concat();
    assert_eq!(decode_al_file(&file).unwrap().0, rec(5, vec![7]));
    // Torn newest slot: fall back to the older one.
    file[ss + 40] ^= 1;
    assert_eq!(decode_al_file(&file).unwrap().0, rec(4, vec![1, 2, 3]));
    // Both bad: error.
    file[3] ^= 1;
    assert!(decode_al_file(&file).is_err());
    // Truncated: error.
    let file = [a, b].concat();
    assert!(decode_al_file(&file[..file.len() - 1]).is_err());
    assert!(decode_al_file(&file[..ss]).is_err());
    assert!(decode_al_file(&[]).is_err());
    // Every single-byte flip of the newest record's live bytes is caught.
    for i in 0..(AL_HEADER_LEN + 4 + 4) {
        let mut f = file.clone();
        f[ss + i] ^= 0x10;
        let got = decode_al_file(&f).unwrap().0;
        assert_eq!(got.seq, 4, "flip at {i}");
    }
}

#[test]
fn sticky_failure_refuses_marks_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create_tuned(dir.path(), "v", G, tuning()).unwrap();
    t.mark(0, 4096).unwrap();
    // Active extent: no I/O, still fine with failing storage.
    failpoint::arm_with(1, io::ErrorKind::StorageFull);
    t.mark(4096, 4096).unwrap();
    // A new extent needs an AL write, which fails...
    let err = t.mark(16 * 4096 * 5, 4096).unwrap_err();
    assert!(err.is_storage_full(), "{err}");
    assert!(err.io_error().is_some());
    // ...and from then on everything refuses, even with healthy storage.
    failpoint::disarm();
    assert!(t.is_failed());
    for r in [
        t.mark(0, 4096),
        t.checkpoint(),
        t.clear(),
        t.take().map(|_| ()),
        t.merge(&RoaringBitmap::from_iter([1u32])),
    ] {
        let err = r.unwrap_err();
        assert!(matches!(err, CbtError::Poisoned { .. }), "{err}");
        assert!(err.is_storage_full());
        assert!(err.to_string().contains("reopen"), "{err}");
    }
    assert!(matches!(t.close(), Err(CbtError::Poisoned { .. })));
    // Reopen recovers a superset of what was acknowledged.
    let (t, report) = ChangeTracker::open_tuned(dir.path(), "v", G, tuning()).unwrap();
    assert_eq!(
        report,
        OpenReport::RecoveredAfterCrash { active_extents: 1 }
    );
    let snap = t.snapshot();
    assert!(snap.contains(0) && snap.contains(1));
    assert!(!snap.contains(80));
    t.mark(16 * 4096 * 5, 4096).unwrap();
    t.close().unwrap();
}

#[test]
fn failed_bitmap_write_poisons_too() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create_tuned(dir.path(), "v", G, tuning()).unwrap();
    t.mark(0, 4096).unwrap();
    failpoint::arm_with(1, io::ErrorKind::StorageFull);
    assert!(matches!(t.checkpoint(), Err(CbtError::Io { .. })));
    failpoint::disarm();
    assert!(matches!(t.mark(0, 1), Err(CbtError::Poisoned { .. })));
}

#[test]
fn al_in_different_shape_is_read_and_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let small = Tuning {
        extent_blocks: 8,
        al_capacity: 4,
    };
    let t = ChangeTracker::create_tuned(dir.path(), "v", G, small).unwrap();
    t.mark(8 * 4096 * 3, 1).unwrap(); // extent 3 of 8 blocks: blocks 24..32
    t.crash();
    let big = Tuning {
        extent_blocks: 64,
        al_capacity: 2000,
    };
    let (t, report) = ChangeTracker::open_tuned(dir.path(), "v", G, big).unwrap();
    assert_eq!(
        report,
        OpenReport::RecoveredAfterCrash { active_extents: 1 }
    );
    assert_eq!(t.snapshot(), RoaringBitmap::from_iter(24u32..32));
    t.close().unwrap();
    let len = fs::metadata(dir.path().join("v.al")).unwrap().len();
    assert_eq!(len as usize, 2 * al_slot_size(2000));
    let (t, report) = ChangeTracker::open_tuned(dir.path(), "v", G, big).unwrap();
    assert_eq!(report, OpenReport::Clean);
    assert_eq!(t.snapshot(), RoaringBitmap::from_iter(24u32..32));
}

#[test]
fn second_tracker_on_same_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create(dir.path(), "v", G).unwrap();
    let err = ChangeTracker::open(dir.path(), "v", G).unwrap_err();
    assert!(matches!(err, CbtError::Locked { .. }), "{err}");
    t.close().unwrap();
    let (_t, report) = ChangeTracker::open(dir.path(), "v", G).unwrap();
    assert_eq!(report, OpenReport::Clean);
}

#[test]
fn hasher_spreads_sequential_ids() {
    use std::hash::BuildHasher;
    let b = BuildHasherDefault::<ExtentHasher>::default();
    let mut low: Vec<u64> = (0u32..1024).map(|e| b.hash_one(e) & 1023).collect();
    low.sort_unstable();
    low.dedup();
    assert_eq!(low.len(), 1024);
}

#[test]
fn tracker_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ChangeTracker>();
    assert_send_sync::<CbtError>();
}

#[test]
fn cut_blocks_stay_dirty_until_finished_across_crash_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create_tuned(dir.path(), "v", G, tuning()).unwrap();
    t.mark(0, 4096 * 3).unwrap();
    let cut = t.begin_cut().unwrap();
    assert_eq!(cut.iter().collect::<Vec<_>>(), [0, 1, 2]);
    // Still counted dirty while in flight; new writes go to the fresh set.
    assert_eq!(t.dirty_blocks(), 3);
    t.mark(4096 * 100, 4096).unwrap();
    assert_eq!(t.dirty_blocks(), 4);
    // A bitmap write while in flight must keep the cut's blocks.
    t.checkpoint().unwrap();
    t.crash();
    let (t, _) = ChangeTracker::open_tuned(dir.path(), "v", G, tuning()).unwrap();
    let after: Vec<u32> = t.snapshot().iter().collect();
    for b in [0, 1, 2, 100] {
        assert!(after.contains(&b), "block {b} lost: {after:?}");
    }
    // A cut that never finished is shipped again by the next one.
    let first = t.begin_cut().unwrap();
    t.mark(4096 * 200, 4096).unwrap();
    let second = t.begin_cut().unwrap();
    assert!(second.is_superset(&first) && second.contains(200));
    t.finish_cut();
    assert_eq!(t.dirty_blocks(), 0);
    t.close().unwrap();
    let (t, _) = ChangeTracker::open_tuned(dir.path(), "v", G, tuning()).unwrap();
    assert_eq!(
        t.dirty_blocks(),
        0,
        "a finished cut is clean after a clean restart"
    );
    // An unfinished cut survives a clean close as dirty.
    t.mark(0, 4096).unwrap();
    t.begin_cut().unwrap();
    t.close().unwrap();
    let (t, _) = ChangeTracker::open_tuned(dir.path(), "v", G, tuning()).unwrap();
    assert_eq!(t.snapshot().iter().collect::<Vec<_>>(), [0]);
}

/// A resynchronization's rounds: each takes only what was written since
/// the previous one; every round's blocks stay dirty across a crash (with
/// and without a bitmap write meanwhile) until the cut that ends the
/// rounds is finished.
#[test]
fn rounds_take_what_was_written_since_and_stay_dirty_until_finished() {
    let dir = tempfile::tempdir().unwrap();
    let t = ChangeTracker::create_tuned(dir.path(), "v", G, tuning()).unwrap();
    t.mark(0, 4096 * 3).unwrap();
    // A cut that never finished leaves blocks in flight: the first round
    // of a resynchronization takes them with `begin_cut`.
    assert_eq!(t.begin_cut().unwrap().iter().collect::<Vec<_>>(), [0, 1, 2]);
    t.mark(4096 * 50, 4096).unwrap();
    t.mark(4096, 4096).unwrap();
    let round = t.take_into_flight().unwrap();
    assert_eq!(
        round.iter().collect::<Vec<_>>(),
        [1, 50],
        "only the new writes"
    );
    assert_eq!(t.dirty_blocks(), 4, "in flight still counts as dirty");
    assert!(t.take_into_flight().unwrap().is_empty());
    // Writes to more extents than the activity log holds evict the
    // extents of the blocks in flight: from then on only the bitmap
    // written at the eviction holds them.
    for e in 100..100 + 2 * tuning().al_capacity as u64 {
        t.mark(4096 * 16 * e, 4096).unwrap();
    }
    t.crash();
    let (t, _) = ChangeTracker::open_tuned(dir.path(), "v", G, tuning()).unwrap();
    let after = t.snapshot();
    for b in [0, 1, 2, 50] {
        assert!(after.contains(b), "block {b} lost by the crash: {after:?}");
    }
    // After a bitmap write (AL overflow, checkpoint) too.
    t.begin_cut().unwrap();
    t.mark(4096 * 9000, 4096).unwrap();
    assert_eq!(
        t.take_into_flight().unwrap().iter().collect::<Vec<_>>(),
        [9000]
    );
    t.checkpoint().unwrap();
    t.crash();
    let (t, _) = ChangeTracker::open_tuned(dir.path(), "v", G, tuning()).unwrap();
    let after = t.snapshot();
    for b in [0, 1, 2, 50, 9000] {
        assert!(after.contains(b), "block {b} lost by the crash: {after:?}");
    }
    // Finished: clean, except what was written after the last round.
    t.begin_cut().unwrap();
    t.mark(4096 * 7, 4096).unwrap();
    t.finish_cut();
    assert_eq!(t.snapshot().iter().collect::<Vec<_>>(), [7]);
}
