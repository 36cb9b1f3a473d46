//! The journal: checkpoints in the write log, history kept across seals,
//! images at any checkpoint (a prefix of the write order across both
//! volumes), listing and lookup by time, what retention must keep, the
//! history dropped from the front, and reopening (from the indexes, or by
//! scanning).

mod common;

use std::time::Duration;

use common::fast_tmpdir;
use common::journal::{CREATED, Model, jspecs, listed, open_keep, time_of};
use offsite_replica_store::{
    CheckpointId, Consistency, History, JOURNAL_DIR, JournalPolicy, Listing, PitId, ReplicaError,
    ReplicaStore,
};
use proptest::prelude::*;

fn ck(id: u64) -> CheckpointId {
    CheckpointId::new(id).unwrap()
}

/// A day of history: with checkpoints a second apart, no PIT is kept for
/// spacing, only the states the chains start from.
fn day() -> JournalPolicy {
    JournalPolicy::new(Duration::from_secs(86_400), u64::MAX)
}

/// A store with a log and this history (PITs 1, 2 sealed, file 3 open):
/// file 1: w w C1 w C2 | file 2: w C3 w C4 | file 3: w C5.
fn three_files(dir: &std::path::Path) -> (ReplicaStore, offsite_replica_store::WriteLog, Model) {
    let mut m = Model::new(&jspecs());
    let store = m.create_store(dir);
    let mut log = open_keep(&store);
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
    (store, log, m)
}

#[test]
fn every_checkpoint_reads_back_as_its_prefix_of_the_write_order() {
    let d = fast_tmpdir();
    let (store, log, m) = three_files(d.path());
    assert_eq!(listed(&store), vec![1, 2, 3, 4, 5]);
    for id in 1..=5 {
        m.check_image(&store, id);
    }
    // The open PIT is untouched by images: the seal still holds its writes.
    let mut log = log;
    let pit = log.seal(None, CREATED.into()).unwrap();
    let want = m.image(m.writes.len());
    let mut buf = vec![0u8; 8 * 4096];
    store.read(Some(pit.id), "data", 0, &mut buf).unwrap();
    assert!(buf == want[1]);
}

#[test]
fn checkpoints_say_what_they_follow_and_how_consistent_they_are() {
    let d = fast_tmpdir();
    let (store, _log, _m) = three_files(d.path());
    let list = store.list_checkpoints(Listing::Every).unwrap();
    let c: Vec<_> = list.checkpoints;
    assert_eq!(c[0].follows, None, "file 1 follows the base");
    assert_eq!(c[2].follows, PitId::new(1));
    assert_eq!(c[4].follows, PitId::new(2));
    assert_eq!(c[1].consistency, Consistency::Application);
    assert_eq!(c[1].name.as_deref(), Some("app"));
    assert_eq!(c[0].through_seq, Some(3), "three writes before it");
    assert_eq!(c[0].time_ns, time_of(1));
    let s = list.summary;
    assert_eq!(
        (s.count, s.application_consistent, s.unreachable),
        (5, 1, 0)
    );
    assert_eq!(s.oldest.as_ref().unwrap().id, ck(1));
    assert_eq!(s.newest.as_ref().unwrap().id, ck(5));
    assert_eq!(s.files, 3);
    let brief = store.list_checkpoints(Listing::Summary).unwrap();
    assert!(brief.checkpoints.is_empty());
    assert_eq!(brief.summary, s);
}

#[test]
fn lookup_by_time_takes_the_newest_at_or_before() {
    let d = fast_tmpdir();
    let (store, mut log, _m) = three_files(d.path());
    let at = |t| {
        store
            .checkpoint_at_or_before(t)
            .unwrap()
            .map(|c| c.id.get())
    };
    assert_eq!(at(time_of(1) - 1), None);
    assert_eq!(at(time_of(1)), Some(1));
    assert_eq!(at(time_of(3) + 999_999_999), Some(3));
    assert_eq!(at(u64::MAX), Some(5));
    // A primary clock that steps back: the checkpoint keeps the journal's
    // times in order (it takes the previous one's time).
    let c = log
        .checkpoint(time_of(2), Consistency::Crash, None)
        .unwrap();
    assert_eq!(c.time_ns, time_of(5));
    assert_eq!(at(time_of(5)), Some(6), "the newest of equal times");
}

#[test]
fn the_journal_reopens_from_its_indexes_or_by_scanning() {
    let d = fast_tmpdir();
    let (store, log, m) = three_files(d.path());
    // The open file's zero tail goes when the log reopens: bytes aside.
    let list = |s: &ReplicaStore| {
        let mut l = s.list_checkpoints(Listing::Every).unwrap();
        l.summary.bytes = 0;
        l
    };
    let before = list(&store);
    drop(log);
    drop(store);
    let jdir = d.path().join(JOURNAL_DIR);
    let idx = |n: u64| jdir.join(format!("{n:020}.idx"));
    assert!(idx(1).exists() && idx(2).exists() && !idx(3).exists());
    for damage in ["none", "missing", "flipped", "other file's"] {
        match damage {
            "missing" => std::fs::remove_file(idx(1)).unwrap(),
            "flipped" => {
                let mut b = std::fs::read(idx(2)).unwrap();
                b[70] ^= 0x40;
                std::fs::write(idx(2), b).unwrap();
            }
            "other file's" => std::fs::copy(idx(2), idx(1)).map(|_| ()).unwrap(),
            _ => {}
        }
        // Listing without the log reads the files as they are.
        let store = ReplicaStore::open(d.path()).unwrap();
        assert_eq!(list(&store), before, "{damage}");
        // The log's open rewrites the indexes it had to scan for.
        let log = open_keep(&store);
        assert_eq!(list(&store), before, "{damage}");
        for id in 1..=5 {
            m.check_image(&store, id);
        }
        assert!(idx(1).exists() && idx(2).exists());
        drop(log);
        drop(store);
    }
}

#[test]
fn history_survives_retention_through_the_chain_of_files() {
    let d = fast_tmpdir();
    let (store, mut log, mut m) = three_files(d.path());
    // More seals: PITs 3, 4, each its own file's.
    for i in 0..2u8 {
        m.append(&mut log, &[(0, u64::from(i) + 4, 2, 40 + i)])
            .unwrap();
        m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
        log.seal(None, CREATED.into()).unwrap();
    }
    // Checkpoints 1..=2 replay from the base, the rest from their PITs;
    // to keep them all, retention must keep PIT 1 (the next to fold into
    // the base), and may merge the others into their successors.
    assert_eq!(
        store.journal_pins(&day()).unwrap(),
        vec![PitId::new(1).unwrap()]
    );
    for id in [3, 2] {
        store.remove_pit(PitId::new(id).unwrap()).unwrap();
    }
    assert_eq!(listed(&store), (1..=7).collect::<Vec<_>>());
    for id in 1..=7 {
        m.check_image(&store, id);
    }
    // An image of checkpoint 6 (in the file after PIT 3, which is gone)
    // starts from PIT 1 and replays three files.
    let img = store.checkpoint_image(ck(6)).unwrap();
    assert_eq!(img.starts_from(), PitId::new(1));
    drop(img);
    // Folding PIT 1 into the base folds the checkpoints before it.
    store.remove_pit(PitId::new(1).unwrap()).unwrap();
    assert_eq!(listed(&store), (3..=7).collect::<Vec<_>>());
    let s = store.list_checkpoints(Listing::Summary).unwrap().summary;
    assert_eq!(s.unreachable, 2);
    assert!(matches!(
        store.checkpoint_image(ck(2)),
        Err(ReplicaError::CheckpointUnreachable { .. })
    ));
    assert!(matches!(
        store.checkpoint_image(ck(99)),
        Err(ReplicaError::NoSuchCheckpoint { .. })
    ));
    for id in 3..=7 {
        m.check_image(&store, id);
    }
}

/// Retention as a group runs it (keep only the newest PIT and the pinned
/// ones) with pruning after every seal: the front of the history moves
/// on, the journal stays within the window plus one spacing step, and
/// every checkpoint inside the window stays reachable.
#[test]
fn retention_and_pruning_keep_a_sliding_window() {
    let d = fast_tmpdir();
    let mut m = Model::new(&jspecs());
    let store = m.create_store(d.path());
    let mut log = open_keep(&store);
    let policy = JournalPolicy {
        anchor_every: Duration::from_secs(3),
        ..JournalPolicy::new(Duration::from_secs(6), u64::MAX)
    };
    for i in 0..40u64 {
        m.append(
            &mut log,
            &[((i % 2) as usize, i % 8, 1, (i % 200) as u8 + 1)],
        )
        .unwrap();
        m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
        log.seal(None, CREATED.into()).unwrap();
        let pins = store.journal_pins(&policy).unwrap();
        let pits = store.pits();
        for p in &pits[..pits.len() - 1] {
            if !pins.contains(&p.id) {
                store.remove_pit(p.id).unwrap();
            }
        }
        store.prune_journal(&policy, &[]).unwrap();
        let ids = listed(&store);
        let newest = i + 1;
        for id in newest.saturating_sub(6).max(1)..=newest {
            assert!(
                ids.contains(&id),
                "checkpoint {id} inside the window: {ids:?}"
            );
        }
        assert!(
            ids.len() <= 6 + 3 + 1,
            "the window plus one step, got {ids:?}"
        );
        assert!(store.pits().len() <= 5, "{:?}", store.pits());
    }
    for id in listed(&store) {
        m.check_image(&store, id);
    }
}

/// Kept PITs every so many bytes of journal bound how much an image
/// replays; without them every checkpoint replays from the chain's start.
#[test]
fn kept_pits_every_few_bytes_bound_the_replay() {
    for (anchor_bytes, nearest) in [(10_000, true), (u64::MAX, false)] {
        let d = fast_tmpdir();
        let mut m = Model::new(&jspecs());
        let store = m.create_store(d.path());
        let mut log = open_keep(&store);
        let policy = JournalPolicy {
            anchor_bytes,
            ..day()
        };
        for i in 0..20u64 {
            m.append(&mut log, &[(1, i % 8, 1, (i % 200) as u8 + 1)])
                .unwrap();
            m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
            log.seal(None, CREATED.into()).unwrap();
            let pins = store.journal_pins(&policy).unwrap();
            let pits = store.pits();
            for p in &pits[..pits.len() - 1] {
                if !pins.contains(&p.id) {
                    store.remove_pit(p.id).unwrap();
                }
            }
        }
        let img = store.checkpoint_image(ck(20)).unwrap();
        let from = img.starts_from().map_or(0, PitId::get);
        if nearest {
            // ~4.2 KB of journal a file: a kept PIT every 2-3 files.
            assert!(from >= 16, "replays from PIT {from}");
            assert!(store.pits().len() <= 10, "{:?}", store.pits());
        } else {
            assert_eq!(from, 1, "from the chain's start");
        }
        drop(img);
        for id in 1..=20 {
            m.check_image(&store, id);
        }
    }
}

#[test]
fn a_live_image_keeps_the_base_from_moving_under_it() {
    let d = fast_tmpdir();
    let (store, _log, m) = three_files(d.path());
    let img = store.checkpoint_image(ck(1)).unwrap();
    assert_eq!(img.starts_from(), None, "the base");
    assert!(matches!(
        store.remove_pit(PitId::new(1).unwrap()),
        Err(ReplicaError::InUse { anchor: 0 })
    ));
    assert_eq!(
        store.journal_pins(&day()).unwrap(),
        vec![PitId::new(1).unwrap()],
        "the image's state is pinned too"
    );
    // Merging a PIT into its successor leaves the image alone.
    let img5 = store.checkpoint_image(ck(5)).unwrap();
    store.remove_pit(PitId::new(2).unwrap()).err();
    drop(img);
    store.remove_pit(PitId::new(1).unwrap()).unwrap();
    let want = m.image(m.checkpoints[&5].0);
    let mut buf = vec![0u8; 16 * 512];
    img5.read("sys", 0, &mut buf).unwrap();
    assert!(buf == want[0]);
}

#[test]
fn an_image_stays_while_the_log_goes_on_and_history_is_dropped() {
    let d = fast_tmpdir();
    let (store, mut log, mut m) = three_files(d.path());
    let img = store.checkpoint_image(ck(3)).unwrap();
    m.append(&mut log, &[(1, 2, 4, 77)]).unwrap();
    log.seal(None, CREATED.into()).unwrap();
    let policy = JournalPolicy::new(Duration::ZERO, 0);
    let r = store.prune_journal(&policy, &[]).unwrap();
    assert_eq!(r.files, 3, "all but the newest");
    let want = m.image(m.checkpoints[&3].0);
    let mut buf = vec![0u8; 8 * 4096];
    img.read("data", 0, &mut buf).unwrap();
    assert!(buf == want[1], "read through the pruned files' descriptors");
}

#[test]
fn pruning_drops_old_history_from_the_front_only() {
    let d = fast_tmpdir();
    let (store, mut log, mut m) = three_files(d.path());
    assert_eq!(store.prune_journal(&day(), &[]).unwrap().files, 0);
    // Checkpoints are a second apart: 2.5 s of history keeps 3..=5.
    let short = JournalPolicy::new(Duration::from_millis(2_500), u64::MAX);
    let r = store.prune_journal(&short, &[]).unwrap();
    assert_eq!((r.files, r.checkpoints), (1, 2));
    assert_eq!(listed(&store), vec![3, 4, 5]);
    // A kept checkpoint holds its file and everything after it.
    let none = JournalPolicy::new(Duration::ZERO, 0);
    let r = store.prune_journal(&none, &[ck(4)]).unwrap();
    assert_eq!(r.files, 0);
    // Never the newest file (it is the open one).
    let r = store.prune_journal(&none, &[]).unwrap();
    assert_eq!((r.files, r.checkpoints), (1, 2));
    assert_eq!(listed(&store), vec![5]);
    m.check_image(&store, 5);
    // Over the size bound, history goes whatever its age.
    m.append(&mut log, &[(0, 3, 2, 90)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    log.seal(None, CREATED.into()).unwrap();
    let small = JournalPolicy::new(Duration::from_secs(86_400), 1);
    let r = store.prune_journal(&small, &[]).unwrap();
    assert_eq!(r.files, 1);
    assert!(
        listed(&store).is_empty(),
        "the open file has no checkpoint yet"
    );
    // And the log goes on, numbering checkpoints after the dropped ones.
    let id = m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    assert_eq!(id, 7);
    m.check_image(&store, 7);
}

#[test]
fn a_torn_checkpoint_is_dropped_with_the_tail() {
    let d = fast_tmpdir();
    let mut m = Model::new(&jspecs());
    let store = m.create_store(d.path());
    let mut log = open_keep(&store);
    m.append(&mut log, &[(0, 1, 1, 3)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    let end = log.bytes();
    let path = log.path().to_path_buf();
    log.checkpoint(time_of(2), Consistency::Crash, Some("torn".into()))
        .unwrap();
    drop(log);
    drop(store);
    // The second checkpoint reached the disk but for its last byte.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0xEE], end + 40 + 4 + 3).unwrap();
    let store = ReplicaStore::open(d.path()).unwrap();
    assert_eq!(listed(&store), vec![1], "listing reads the valid prefix");
    let log = open_keep(&store);
    assert_eq!(log.bytes(), end);
    assert_eq!(log.last_checkpoint(), Some(ck(1)));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), end);
    m.check_image(&store, 1);
}

/// Between two streams the group resynchronizes with ordinary PITs (no
/// log open): the history before stays reachable from its own PITs, the
/// next stream's file starts after the tip without continuing anything,
/// and retention must keep the state each chain starts from.
#[test]
fn a_resync_between_streams_keeps_the_history_before_it() {
    let d = fast_tmpdir();
    let (store, log, mut m) = three_files(d.path());
    log.finish(CREATED.into()).unwrap();
    // A resync cycle: PIT 4 from another writer, writes the model knows.
    let mut w = store.begin_pit().unwrap();
    let resync = [(1usize, 6u64, 1u32, 61u8)];
    for &(v, b, _, fill) in &resync {
        let s = &m.specs[v];
        let data = common::journal::block_bytes(s.block_size as usize, b, fill);
        w.write_block(&s.name, b, &data).unwrap();
    }
    w.commit(None, CREATED.into()).unwrap();
    m.acked(&resync);
    let mut log = open_keep(&store);
    assert_eq!(log.after(), 4);
    m.append(&mut log, &[(0, 5, 2, 62)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    assert_eq!(listed(&store), (1..=6).collect::<Vec<_>>());
    for id in 1..=6 {
        m.check_image(&store, id);
    }
    // One chain from the base (files 1..=4), one from PIT 4 (file 5).
    let pins: Vec<u64> = store
        .journal_pins(&day())
        .unwrap()
        .iter()
        .map(|p| p.get())
        .collect();
    assert_eq!(pins, vec![1, 4]);
}

/// By default a seal removes the sealed file (no history grows where
/// nothing prunes it); with `History::Keep` it stays, also when the log
/// had to replay itself after a lost applier.
#[test]
fn the_history_mode_decides_what_a_seal_keeps() {
    let d = fast_tmpdir();
    let mut m = Model::new(&jspecs());
    let store = m.create_store(d.path());
    let mut log = store.open_log().unwrap();
    assert_eq!(log.history(), History::Discard);
    m.append(&mut log, &[(0, 1, 1, 7)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    log.seal(None, CREATED.into()).unwrap();
    assert!(listed(&store).is_empty(), "the sealed file went");
    m.append(&mut log, &[(1, 2, 1, 8)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    m.check_image(&store, 2);
    let files = || {
        std::fs::read_dir(d.path().join(JOURNAL_DIR))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 1, "the open file only, no index left behind");
    // A restart's leftover log sealed with the group's mode keeps its
    // history; with the default it would go.
    m.append(&mut log, &[(1, 4, 1, 12)]).unwrap();
    drop(log);
    let sealed = store
        .seal_leftover_log_with(CREATED.into(), History::Keep)
        .unwrap();
    assert!(sealed.is_some());
    assert_eq!(listed(&store), vec![2]);
    m.check_image(&store, 2);
    let mut log = store.open_log().unwrap();
    log.set_history(History::Keep);
    // An applier dropped unapplied: the next append replays the file.
    let raw = m.batch(&[(0, 3, 1, 9)]);
    let recs = offsite_replica_store::decode_records(&raw).unwrap();
    drop(log.append_durable(&[(&raw, &recs)]).unwrap());
    m.acked(&[(0, 3, 1, 9)]);
    m.append(&mut log, &[(0, 4, 1, 10)]).unwrap();
    m.checkpoint(&mut log, Consistency::Crash, None).unwrap();
    log.seal(None, CREATED.into()).unwrap();
    assert_eq!(log.history(), History::Keep);
    assert_eq!(listed(&store), vec![2, 3]);
    m.check_image(&store, 3);
    m.append(&mut log, &[(1, 5, 1, 13)]).unwrap();
    drop(log);
    assert!(store.seal_leftover_log(CREATED.into()).unwrap().is_some());
    assert_eq!(listed(&store), Vec::<u64>::new(), "the default keeps none");
}

#[test]
fn a_bad_checkpoint_name_is_refused() {
    let d = fast_tmpdir();
    let mut m = Model::new(&jspecs());
    let store = m.create_store(d.path());
    let mut log = open_keep(&store);
    for bad in [String::new(), "a\nb".into(), "x".repeat(256)] {
        assert!(matches!(
            log.checkpoint(1, Consistency::Crash, Some(bad)),
            Err(ReplicaError::InvalidArgument { .. })
        ));
    }
    assert_eq!(log.last_checkpoint(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random writes across two volumes, checkpoints, seals, retention
    /// (keeping what the journal asks for, or folding anything), pruning
    /// and reopening with a torn or zero tail: every listed checkpoint
    /// reads back as exactly its prefix of the write order, and none that
    /// was acknowledged disappears except by pruning or by a fold that
    /// ignored the journal's pins.
    #[test]
    fn images_are_prefixes_of_the_write_order(ops in prop::collection::vec(op(), 1..40)) {
        run_ops(&ops);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<common::journal::JWrite>),
    Checkpoint(bool),
    Seal,
    /// Remove the n-th PIT that retention may remove (pins respected).
    Retain(usize),
    /// Remove the n-th PIT, pins or not.
    Fold(usize),
    /// Keep this many seconds of history.
    Prune(u64),
    /// Drop everything and reopen; with garbage after the log's end.
    Reopen(bool),
}

fn write() -> impl Strategy<Value = common::journal::JWrite> {
    prop_oneof![
        (0u64..16, 1u32..4, 0u8..6).prop_map(|(b, n, f)| (0, b.min(16 - u64::from(n)), n, f)),
        (0u64..8, 1u32..3, 0u8..6).prop_map(|(b, n, f)| (1, b.min(8 - u64::from(n)), n, f)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(write(), 1..4).prop_map(Op::Append),
        4 => any::<bool>().prop_map(Op::Checkpoint),
        2 => Just(Op::Seal),
        1 => (0usize..4).prop_map(Op::Retain),
        1 => (0usize..4).prop_map(Op::Fold),
        1 => (0u64..6).prop_map(Op::Prune),
        1 => any::<bool>().prop_map(Op::Reopen),
    ]
}

fn run_ops(ops: &[Op]) {
    let d = fast_tmpdir();
    let mut m = Model::new(&jspecs());
    let mut store = m.create_store(d.path());
    let mut log = Some(open_keep(&store));
    // Checkpoints that must be listed: acknowledged, not dropped.
    let mut expected: Vec<u64> = Vec::new();
    for op in ops {
        let before = listed(&store);
        let mut may_lose = false;
        match op {
            Op::Append(w) => m.append(log.as_mut().unwrap(), w).unwrap(),
            Op::Checkpoint(app) => {
                let c = if *app {
                    Consistency::Application
                } else {
                    Consistency::Crash
                };
                expected.push(m.checkpoint(log.as_mut().unwrap(), c, None).unwrap());
            }
            Op::Seal => {
                log.as_mut().unwrap().seal(None, CREATED.into()).unwrap();
            }
            Op::Retain(n) | Op::Fold(n) => {
                // Spaced pins: a kept PIT every 2 s of checkpoints.
                let policy = JournalPolicy {
                    anchor_every: Duration::from_secs(2),
                    ..day()
                };
                let pins = store.journal_pins(&policy).unwrap();
                let pits = store.pits();
                let newest = pits.last().map(|p| p.id);
                let candidates: Vec<PitId> = pits
                    .iter()
                    .map(|p| p.id)
                    .filter(|id| Some(*id) != newest || pits.len() == 1)
                    .filter(|id| matches!(op, Op::Fold(_)) || !pins.contains(id))
                    .collect();
                if let Some(&id) = candidates.get(*n % candidates.len().max(1)) {
                    store.remove_pit(id).unwrap();
                }
                may_lose = matches!(op, Op::Fold(_));
            }
            Op::Prune(secs) => {
                let policy = JournalPolicy::new(Duration::from_secs(*secs), u64::MAX);
                store.prune_journal(&policy, &[]).unwrap();
                let newest = m.checkpoints.values().map(|c| c.1).max().unwrap_or(0);
                let after = listed(&store);
                for id in before.iter().filter(|id| !after.contains(id)) {
                    assert!(
                        m.checkpoints[id].1 < newest.saturating_sub(secs * 1_000_000_000),
                        "pruning dropped checkpoint {id} inside the history window"
                    );
                }
                may_lose = true;
            }
            Op::Reopen(garbage) => {
                let path = log.as_ref().unwrap().path().to_path_buf();
                let end = log.as_ref().unwrap().bytes();
                drop(log.take());
                drop(store);
                if *garbage {
                    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    std::os::unix::fs::FileExt::write_all_at(&f, b"OLRC\x01 torn", end).unwrap();
                }
                store = ReplicaStore::open(d.path()).unwrap();
                log = Some(open_keep(&store));
            }
        }
        let now = listed(&store);
        if may_lose {
            expected.retain(|id| now.contains(id));
        }
        assert_eq!(now, expected, "after {op:?}");
    }
    for id in listed(&store) {
        m.check_image(&store, id);
    }
}
