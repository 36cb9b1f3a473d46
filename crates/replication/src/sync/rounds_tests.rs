//! A continuous group's resynchronization in rounds (`rounds`), in
//! process: two real sites over the fake link, a continuous mirror on the
//! fake clock. Writes made before, between and during the rounds land in
//! the PIT the cut ends them with, which is exactly the primary's image at
//! that cut; the last cut starts the stream's queue; a resynchronization
//! cut off anywhere leaves every written block tracked, commits nothing,
//! and the next one ships it all.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use offsite_catalog::{GroupRow, Mode};
use offsite_engine::{Volume, WriteMirror};

use super::SyncMirror;
use super::rounds::{RoundsEnd, RoundsLimits};
use crate::testing::{BS, Fault, Pair, write};
use crate::wire::kinds;

const BLOCKS: u64 = 256;

/// A continuous group `g` of `v0` and `v1` ([`BLOCKS`] blocks each)
/// replicating from `a` to `b` (first PIT committed), its mirror attached
/// and its link lost, as after a spill.
struct Spilled {
    p: Pair,
    row: GroupRow,
    volumes: Vec<Arc<Volume>>,
    mirror: Arc<SyncMirror>,
}

async fn spilled() -> Spilled {
    let p = Pair::new();
    p.volume("v0", BLOCKS);
    p.volume("v1", BLOCKS);
    p.replicating("g", &["v0", "v1"], 8).await;
    for r in [&p.a, &p.b] {
        r.site.set_group_mode("g", Mode::Continuous).unwrap();
    }
    let row = p.row(&p.a, "g");
    let volumes: Vec<Arc<Volume>> = ["v0", "v1"]
        .iter()
        .map(|v| p.a.site.volume(v).unwrap())
        .collect();
    let mirror = SyncMirror::continuous(
        "g",
        Duration::from_secs(5),
        64 << 20,
        Default::default(),
        p.clock.clone(),
    );
    for (i, v) in volumes.iter().enumerate() {
        v.set_mirror(Some((mirror.clone() as Arc<dyn WriteMirror>, i as u16)));
    }
    mirror.lose("the replica fell behind (test)".into());
    Spilled {
        p,
        row,
        volumes,
        mirror,
    }
}

impl Spilled {
    /// The newest PIT at the replica.
    async fn newest_pit(&self) -> u64 {
        *self.p.replica_pits("g").await.last().expect("a PIT")
    }

    /// The runner's limits for the group.
    fn limits(&self) -> RoundsLimits {
        RoundsLimits::of(&self.row, None)
    }

    /// Blocks dirty or in flight in each volume's tracker.
    fn tracked(&self) -> Vec<Vec<u32>> {
        self.volumes
            .iter()
            .map(|v| v.tracker().snapshot().iter().collect())
            .collect()
    }
}

/// A writer on a thread of its own: writes pseudo-random blocks of both
/// volumes (each write's byte is its sequence number) until stopped, the
/// way a VM keeps writing during a resynchronization.
struct Writer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Writer {
    fn start(volumes: &[Arc<Volume>]) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, vols) = (stop.clone(), volumes.to_vec());
        let thread = std::thread::spawn(move || {
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) || n < 64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let v = &vols[(x % vols.len() as u64) as usize];
                write(v, (x >> 8) % BLOCKS, n as u8);
                n += 1;
            }
            n
        });
        Writer { stop, thread }
    }

    /// Stops the writer once it has written at least 64 blocks; returns
    /// how many it wrote.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Writes before the rounds, between them and while they read: the PIT
/// the cut ends them with is exactly the primary's volumes at that cut,
/// and it is the only PIT they make; afterwards nothing is left dirty.
#[tokio::test]
async fn writes_before_between_and_during_the_rounds_land_in_the_cuts_pit() {
    let s = spilled().await;
    let before = s.p.replica_pits("g").await;
    for b in 0..200u64 {
        write(&s.volumes[0], b, 0x10);
        write(&s.volumes[1], b, 0x20);
    }
    let mut r = s.p.a.begin_rounds(&s.row).await.unwrap();
    let taken = s.p.a.round(&s.row, &mut r).await.unwrap();
    assert_eq!(
        taken,
        400 * BS as u64,
        "the first round takes the dirty set"
    );
    // A block the first round shipped, written again, and a new one: the
    // second round takes exactly those.
    write(&s.volumes[0], 5, 0x11);
    write(&s.volumes[1], 250, 0x21);
    let taken = s.p.a.round(&s.row, &mut r).await.unwrap();
    assert_eq!(taken, 2 * BS as u64);
    // Rounds while a writer runs: some reads race its writes.
    let writer = Writer::start(&s.volumes);
    for _ in 0..4 {
        s.p.a.round(&s.row, &mut r).await.unwrap();
    }
    let written = writer.stop();
    assert!(written >= 64);
    // Nothing is visible at the replica before the cut's commit.
    assert_eq!(s.p.replica_pits("g").await, before);
    s.p.a.end_rounds(&s.row, r, || {}).await.unwrap();
    let after = s.p.replica_pits("g").await;
    assert_eq!(after.len(), before.len() + 1, "one PIT: {after:?}");
    assert_eq!(
        s.p.replica_image("g", s.newest_pit().await).await,
        s.p.primary_image("g"),
        "the PIT is the primary's image at the cut"
    );
    assert_eq!(
        s.tracked(),
        [Vec::<u32>::new(), Vec::new()],
        "every shipped block is clean once committed"
    );
}

/// The whole resynchronization: rounds that take little end with the last
/// cut, during which the mirror starts queueing again, so a write after it
/// is queued for the stream as well as tracked.
#[tokio::test]
async fn a_resynchronization_that_catches_up_ends_with_the_last_cut() {
    let s = spilled().await;
    for b in (0..BLOCKS).step_by(3) {
        write(&s.volumes[0], b, 0x31);
    }
    let issued = s.mirror.issued();
    let writer = Writer::start(&s.volumes);
    let ended =
        s.p.a
            .resync_in_rounds(&s.row, &s.mirror, s.limits(), || async { true })
            .await;
    writer.stop();
    assert!(
        matches!(ended, Ok(RoundsEnd::Committed { caught_up: true })),
        "{ended:?}"
    );
    assert!(!s.mirror.spilled(), "the link is up again");
    assert!(s.mirror.issued() > issued);
    // The writer's writes after the cut are queued for the stream; those
    // before it are in the PIT: together, the primary's image.
    let queued = s.mirror.backlog_bytes();
    write(&s.volumes[1], 9, 0x99);
    assert!(
        s.mirror.backlog_bytes() > queued,
        "a write after the last cut is queued for the stream"
    );
    assert!(s.volumes[1].tracker().snapshot().contains(9), "and tracked");
}

/// Rounds that do not catch up end with a cut anyway once the group's
/// cycle interval has passed on the clock: a consistent PIT, and the
/// stream does not start (the next resynchronization goes on).
#[tokio::test]
async fn rounds_that_do_not_catch_up_still_make_a_consistent_pit_in_time() {
    let s = spilled().await;
    let before = s.p.replica_pits("g").await.len();
    for b in 0..BLOCKS {
        write(&s.volumes[0], b, 0x41);
    }
    // Only an empty round counts as caught up here; between rounds the
    // VM writes one more block while the cycle interval passes.
    let limits = RoundsLimits {
        caught_up_bytes: 0,
        ..s.limits()
    };
    let (clock, v, n) = (s.p.clock.clone(), s.volumes[1].clone(), AtomicU64::new(0));
    let ended =
        s.p.a
            .resync_in_rounds(&s.row, &s.mirror, limits, || {
                write(&v, n.fetch_add(1, Ordering::Relaxed) % BLOCKS, 0x42);
                clock.advance(limits.cut_after / 2);
                async { true }
            })
            .await;
    assert!(
        matches!(ended, Ok(RoundsEnd::Committed { caught_up: false })),
        "{ended:?}"
    );
    assert_eq!(n.load(Ordering::Relaxed), 2, "two rounds, then the cut");
    assert!(
        s.mirror.spilled() || s.mirror.why_lost().is_some(),
        "no stream yet"
    );
    assert_eq!(s.p.replica_pits("g").await.len(), before + 1);
    assert_eq!(
        s.p.replica_image("g", s.newest_pit().await).await,
        s.p.primary_image("g"),
        "the PIT is the image at the cut"
    );
    // The next resynchronization catches up.
    let ended =
        s.p.a
            .resync_in_rounds(&s.row, &s.mirror, s.limits(), || async { true })
            .await;
    assert!(
        matches!(ended, Ok(RoundsEnd::Committed { caught_up: true })),
        "{ended:?}"
    );
}

/// Where [`a_resynchronization_cut_off_anywhere_loses_nothing`] cuts the
/// link.
#[derive(Debug, Clone)]
enum CutOff {
    /// While the rounds send (a fault of the fake link).
    Rounds(Fault),
    /// While the cut that ends them sends its blocks (after the link's
    /// first batch of them).
    CutBlocks,
}

/// The link fails in a round, in the cut's blocks, before the commit, or
/// loses the commit's answer, while the VM writes: nothing new is visible
/// at the replica unless it committed, every block written is still
/// tracked (in flight), and the next resynchronization ships it all.
#[tokio::test]
async fn a_resynchronization_cut_off_anywhere_loses_nothing() {
    for cut_off in [
        // Each volume has dirty blocks: the first round sends at least
        // two batches.
        CutOff::Rounds(Fault::DropAfterFrames(1)),
        CutOff::CutBlocks,
        CutOff::Rounds(Fault::DropBefore(kinds::PIT_COMMIT)),
        CutOff::Rounds(Fault::LoseAnswer(kinds::PIT_COMMIT)),
    ] {
        let s = spilled().await;
        let before = s.p.replica_pits("g").await;
        for b in (0..BLOCKS).step_by(7) {
            write(&s.volumes[0], b, 0x51);
            write(&s.volumes[1], b + 1, 0x52);
        }
        let mut written = s.tracked();
        let ended = match &cut_off {
            CutOff::Rounds(fault) => {
                s.p.to_b.inject(fault.clone());
                let writer = Writer::start(&s.volumes);
                let ended =
                    s.p.a
                        .resync_in_rounds(&s.row, &s.mirror, s.limits(), || async { true })
                        .await;
                writer.stop();
                ended.map(|_| ())
            }
            CutOff::CutBlocks => {
                let mut r = s.p.a.begin_rounds(&s.row).await.unwrap();
                s.p.a.round(&s.row, &mut r).await.unwrap();
                // Three scattered blocks written after the round: the
                // cut sends them as one batch of three records, lost
                // with the link.
                for b in [3, 100, 200] {
                    write(&s.volumes[0], b, 0x53);
                    written[0].push(b as u32);
                }
                s.p.to_b.inject(Fault::DropAfterFrames(0));
                s.p.a.end_rounds(&s.row, r, || {}).await.map(|_| ())
            }
        };
        assert!(ended.is_err(), "{cut_off:?}: {ended:?}");
        let committed = matches!(cut_off, CutOff::Rounds(Fault::LoseAnswer(_)));
        if !committed {
            assert_eq!(s.p.replica_pits("g").await, before, "{cut_off:?}");
        }
        let tracked = s.tracked();
        for (v, blocks) in written.iter().enumerate() {
            for b in blocks {
                assert!(
                    tracked[v].contains(b),
                    "{cut_off:?}: block {b} of v{v} is no longer tracked"
                );
            }
        }
        // What the runner does after a failure (the link is lost again),
        // then the next resynchronization.
        s.mirror.lose("test".into());
        let ended =
            s.p.a
                .resync_in_rounds(&s.row, &s.mirror, s.limits(), || async { true })
                .await;
        assert!(
            matches!(ended, Ok(RoundsEnd::Committed { caught_up: true })),
            "{cut_off:?}: {ended:?}"
        );
        s.mirror.lose("test".into());
        assert_eq!(
            s.p.replica_image("g", s.newest_pit().await).await,
            s.p.primary_image("g"),
            "{cut_off:?}"
        );
    }
}

/// What a `kill -9` of the primary would leave of `v`'s tracker now: its
/// files copied aside (the page cache is what survives a process crash)
/// and opened there with crash recovery; the blocks it finds dirty.
fn tracker_after_a_crash(p: &Pair, v: &Volume, into: &std::path::Path) -> Vec<u32> {
    let dir = p.a.site.layout().volumes_dir();
    let stem = offsite_engine::layout::Layout::volume_stem(v.row().id);
    std::fs::create_dir_all(into).unwrap();
    for ext in ["cbt", "al"] {
        let from = dir.join(format!("{stem}.{ext}"));
        if from.exists() {
            std::fs::copy(&from, into.join(format!("{stem}.{ext}"))).unwrap();
        }
    }
    let geometry =
        offsite_cbt::Geometry::for_volume(v.row().size_bytes, v.row().block_size).unwrap();
    let (t, _) = offsite_cbt::ChangeTracker::open(into, &stem, geometry).unwrap();
    t.snapshot().iter().collect()
}

/// The primary crashes in the middle of a resynchronization (rounds sent,
/// the PIT not committed, the VM writing between rounds): every block
/// whose write was acknowledged is dirty in what the tracker's files hold,
/// so the restarted primary ships it again; nothing of the rounds is
/// visible at the replica.
#[tokio::test]
async fn a_crash_of_the_primary_mid_resynchronization_loses_no_acknowledged_write() {
    let s = spilled().await;
    let before = s.p.replica_pits("g").await;
    let mut acknowledged: Vec<Vec<u32>> = vec![Vec::new(), Vec::new()];
    let mut ack = |v: usize, b: u64, byte: u8| {
        write(&s.volumes[v], b, byte);
        acknowledged[v].push(b as u32);
    };
    for b in 0..100u64 {
        ack(0, b * 2, 0x81);
        ack(1, b, 0x82);
    }
    let mut r = s.p.a.begin_rounds(&s.row).await.unwrap();
    s.p.a.round(&s.row, &mut r).await.unwrap();
    // Written again after the round read it, and written for the first
    // time; then a second round; then more writes.
    ack(0, 4, 0x83);
    ack(1, 200, 0x84);
    s.p.a.round(&s.row, &mut r).await.unwrap();
    ack(0, 255, 0x85);
    for (v, vol) in s.volumes.iter().enumerate() {
        let crashed = tracker_after_a_crash(&s.p, vol, &s.p.dir().join(format!("crash-{v}")));
        for b in &acknowledged[v] {
            assert!(
                crashed.contains(b),
                "block {b} of v{v}: acknowledged, shipped by a round, lost by a crash"
            );
        }
    }
    // The crashed daemon's link ends without a commit.
    s.p.a.abandon_rounds(&s.row, r).await;
    assert_eq!(s.p.replica_pits("g").await, before);
}

/// The group leaves continuous mode between rounds: the PIT is abandoned
/// (nothing committed), its blocks stay tracked.
#[tokio::test]
async fn rounds_abandoned_when_the_group_leaves_its_mode_keep_their_blocks() {
    let s = spilled().await;
    let before = s.p.replica_pits("g").await;
    // Enough that the first round does not catch up: over CATCH_UP_BYTES
    // is out of reach of a test volume, so the group leaves at once.
    for b in 0..BLOCKS {
        write(&s.volumes[1], b, 0x61);
    }
    let mut r = s.p.a.begin_rounds(&s.row).await.unwrap();
    s.p.a.round(&s.row, &mut r).await.unwrap();
    s.p.a.abandon_rounds(&s.row, r).await;
    assert_eq!(s.p.replica_pits("g").await, before);
    assert_eq!(s.tracked()[1].len() as u64, BLOCKS);
    // The next resynchronization takes them again (in flight).
    let ended =
        s.p.a
            .resync_in_rounds(&s.row, &s.mirror, s.limits(), || async { true })
            .await;
    assert!(
        matches!(ended, Ok(RoundsEnd::Committed { .. })),
        "{ended:?}"
    );
    assert_eq!(
        s.p.replica_image("g", s.newest_pit().await).await,
        s.p.primary_image("g")
    );
}
