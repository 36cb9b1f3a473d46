//! Property test of the tracker against an oracle (a `BTreeSet` of blocks):
//! random mark / clear / take / merge / checkpoint / clean reopen / crash
//! reopen sequences, with tiny extents and activity logs so that AL overflow
//! and the "too many extents → persist bitmap" path happen all the time.

mod common;

use std::collections::BTreeSet;

use offsite_cbt::{ChangeTracker, Geometry, OpenReport, RoaringBitmap, Tuning};
use proptest::prelude::*;

use common::{blocks_of, extent_closure, to_set};

#[derive(Debug, Clone)]
enum Op {
    /// Byte range, as fractions of the volume so that it always fits.
    Mark {
        start: u32,
        len: u32,
    },
    Clear,
    Take,
    MergeTaken,
    Merge(Vec<u32>),
    Checkpoint,
    CloseReopen,
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (any::<u32>(), 0u32..12_000).prop_map(|(start, len)| Op::Mark { start, len }),
        2 => (any::<u32>(), any::<u32>()).prop_map(|(start, len)| Op::Mark { start, len }),
        1 => Just(Op::Clear),
        2 => Just(Op::Take),
        2 => Just(Op::MergeTaken),
        1 => prop::collection::vec(any::<u32>(), 0..20).prop_map(Op::Merge),
        1 => Just(Op::Checkpoint),
        2 => Just(Op::CloseReopen),
        3 => Just(Op::CrashReopen),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    block_size: u32,
    nblocks: u64,
    extent_blocks: u32,
    al_capacity: u32,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![Just(512u32), Just(4096)],
        1u64..600,
        prop_oneof![Just(1u32), Just(4), Just(16)],
        prop_oneof![Just(2u32), Just(4), Just(8)],
    )
        .prop_map(|(block_size, nblocks, extent_blocks, al_capacity)| Setup {
            block_size,
            nblocks,
            extent_blocks,
            al_capacity,
        })
}

fn run(setup: &Setup, ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry {
        block_size: setup.block_size,
        nblocks: setup.nblocks,
    };
    let tuning = Tuning {
        extent_blocks: setup.extent_blocks,
        al_capacity: setup.al_capacity,
    };
    let size = g.volume_bytes();
    let mut t = ChangeTracker::create_tuned(dir.path(), "vol", g, tuning).unwrap();
    // Exactly what the tracker must report now.
    let mut oracle: BTreeSet<u32> = BTreeSet::new();
    // Blocks a crash may legitimately bring back on top of the oracle.
    let mut possible: BTreeSet<u32> = BTreeSet::new();
    let mut taken: Vec<RoaringBitmap> = Vec::new();

    for op in ops {
        match op {
            Op::Mark { start, len } => {
                let offset = u64::from(*start) * size / (u64::from(u32::MAX) + 1);
                let len = (u64::from(*len) * u64::from(setup.block_size) / 1000).min(size - offset);
                t.mark(offset, len).unwrap();
                if len > 0 {
                    let blocks: BTreeSet<u32> = blocks_of(offset, len, g.block_size).collect();
                    possible.extend(extent_closure(&blocks, setup.extent_blocks, g.nblocks));
                    oracle.extend(blocks);
                }
            }
            Op::Clear => {
                t.clear().unwrap();
                oracle.clear();
                possible.clear();
            }
            Op::Take => {
                let got = t.take().unwrap();
                prop_assert_eq!(to_set(&got), std::mem::take(&mut oracle));
                prop_assert_eq!(t.dirty_blocks(), 0);
                taken.push(got);
            }
            Op::MergeTaken => {
                if let Some(set) = taken.pop() {
                    t.merge(&set).unwrap();
                    oracle.extend(set.iter());
                    possible.extend(set.iter());
                }
            }
            Op::Merge(blocks) => {
                let set: RoaringBitmap = blocks
                    .iter()
                    .map(|b| (u64::from(*b) % g.nblocks) as u32)
                    .collect();
                t.merge(&set).unwrap();
                oracle.extend(set.iter());
                possible.extend(set.iter());
            }
            Op::Checkpoint => t.checkpoint().unwrap(),
            Op::CloseReopen => {
                t.close().unwrap();
                let (t2, report) = ChangeTracker::open_tuned(dir.path(), "vol", g, tuning).unwrap();
                prop_assert_eq!(report, OpenReport::Clean);
                t = t2;
                possible = oracle.clone();
            }
            Op::CrashReopen => {
                t.crash();
                let (t2, report) = ChangeTracker::open_tuned(dir.path(), "vol", g, tuning).unwrap();
                prop_assert!(
                    matches!(
                        report,
                        OpenReport::Clean | OpenReport::RecoveredAfterCrash { .. }
                    ),
                    "unexpected {:?}",
                    report
                );
                t = t2;
                let snap = to_set(&t.snapshot());
                prop_assert!(
                    snap.is_superset(&oracle),
                    "lost blocks after crash: {:?}",
                    oracle.difference(&snap).collect::<Vec<_>>()
                );
                let extra: Vec<u32> = snap.difference(&oracle).copied().collect();
                prop_assert!(
                    extra.iter().all(|b| possible.contains(b)),
                    "crash recovery invented blocks that were never in a marked extent: {:?}",
                    extra
                );
                oracle = snap;
                possible = oracle.clone();
            }
        }
        prop_assert_eq!(to_set(&t.snapshot()), oracle.clone(), "after {:?}", op);
        prop_assert_eq!(t.dirty_blocks(), oracle.len() as u64);
        prop_assert_eq!(
            t.dirty_bytes(),
            oracle.len() as u64 * u64::from(g.block_size)
        );
    }
    t.close().unwrap();
    let (t, report) = ChangeTracker::open_tuned(dir.path(), "vol", g, tuning).unwrap();
    prop_assert_eq!(report, OpenReport::Clean);
    prop_assert_eq!(to_set(&t.snapshot()), oracle);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn tracker_matches_oracle(setup in setup(), ops in prop::collection::vec(op(), 1..40)) {
        run(&setup, &ops)?;
    }
}
