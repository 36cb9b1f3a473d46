//! The link-loss policy of a sync group's write mirror, on a real volume
//! and the fake clock: `degrade` acknowledges writes at once when the link
//! is lost (they are tracked and shipped by the resynchronization),
//! `suspend-writes` holds them until a resynchronization covers them or
//! their timeout, read on the clock, fails them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use offsite_catalog::SyncState;
use offsite_engine::{RecordSink, Volume, WriteMirror};
use offsite_nbd::BlockDevice;

use super::{Batcher, Item, MAX_BATCH, Policy, StreamError, SyncMirror};
use crate::RemoteError;
use crate::clock::FakeClock;
use crate::testing::{BS, Pair};

const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A volume of `p` mirrored by a fresh mirror with `policy` (its link
/// lost, as a runner's mirror starts before its first resynchronization).
fn mirrored(p: &Pair, policy: Policy) -> (Arc<Volume>, Arc<SyncMirror>) {
    let v = p.volume("v", 16);
    let clock: Arc<FakeClock> = p.clock.clone();
    let mirror = SyncMirror::new("g", policy, ACK_TIMEOUT, Default::default(), clock);
    v.set_mirror(Some((mirror.clone() as Arc<dyn WriteMirror>, 0)));
    (v, mirror)
}

/// Writes block `block` on a thread of its own: it returns once the
/// mirror lets the write complete.
fn write_on_thread(v: &Arc<Volume>, block: u64) -> JoinHandle<std::io::Result<()>> {
    let v = v.clone();
    std::thread::spawn(move || v.write_at(&[7u8; BS], block * BS as u64, false))
}

/// Waits until the mirror has issued `ticket` (the write was applied
/// locally and now waits on the mirror).
fn until_issued(mirror: &SyncMirror, ticket: u64) {
    while mirror.issued() < ticket {
        std::thread::yield_now();
    }
}

/// Moves the clock `by` and wakes the waiting writers until `writer` is
/// done (a writer that had not read its start yet measures from later).
fn advance_until_done<T>(p: &Pair, mirror: &SyncMirror, by: Duration, writer: &JoinHandle<T>) {
    while !writer.is_finished() {
        p.clock.advance(by);
        mirror.cond.notify_all();
        std::thread::yield_now();
    }
}

#[test]
fn degrade_acknowledges_writes_at_once_while_the_link_is_lost() {
    let p = Pair::new();
    let (v, mirror) = mirrored(&p, Policy::Degrade);
    v.write_at(&[1u8; BS], 3 * BS as u64, false).unwrap();
    assert_eq!(mirror.issued(), 1);
    assert!(mirror.ready(1), "a lost link completes the write at once");
    assert_eq!(mirror.state_name(false), SyncState::Degraded);
    // Tracked: the resynchronization's cycle ships it.
    assert_eq!(v.tracker().snapshot().iter().collect::<Vec<_>>(), [3]);
}

#[test]
fn suspend_holds_a_write_until_a_resynchronization_covers_it() {
    let p = Pair::new();
    let (v, mirror) = mirrored(&p, Policy::Suspend(Duration::from_secs(30)));
    assert_eq!(mirror.state_name(false), SyncState::Suspended);
    let writer = write_on_thread(&v, 2);
    until_issued(&mirror, 1);
    assert!(!mirror.ready(1), "held while the link is lost");
    // A catch-up cycle's cut covered it.
    mirror.cover(1);
    writer.join().unwrap().unwrap();
    assert_eq!(
        mirror
            .stats
            .failed_writes
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn suspend_fails_a_write_once_its_timeout_passes_on_the_clock() {
    let p = Pair::new();
    let (v, mirror) = mirrored(&p, Policy::Suspend(Duration::from_secs(30)));
    let writer = write_on_thread(&v, 4);
    until_issued(&mirror, 1);
    advance_until_done(&p, &mirror, Duration::from_secs(31), &writer);
    let e = writer.join().unwrap().unwrap_err();
    assert!(
        e.to_string()
            .contains("did not confirm the write within 30s"),
        "{e}"
    );
    assert_eq!(
        mirror
            .stats
            .failed_writes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Applied here all the same, and tracked for the replica.
    assert_eq!(v.tracker().snapshot().iter().collect::<Vec<_>>(), [4]);
}

#[test]
fn a_stream_that_does_not_open_in_time_falls_back_to_degraded() {
    let p = Pair::new();
    let (v, mirror) = mirrored(&p, Policy::Degrade);
    // The last cut of a resynchronization: writes queue for the stream.
    mirror.set_up();
    let writer = write_on_thread(&v, 1);
    until_issued(&mirror, 1);
    advance_until_done(&p, &mirror, ACK_TIMEOUT + Duration::from_secs(1), &writer);
    writer.join().unwrap().unwrap();
    assert_eq!(mirror.state_name(false), SyncState::Degraded);
    assert!(
        mirror.why_lost().unwrap().contains("did not open within"),
        "{:?}",
        mirror.why_lost()
    );
}

#[test]
fn a_detached_mirror_no_longer_holds_writes() {
    let p = Pair::new();
    let (v, mirror) = mirrored(&p, Policy::Suspend(Duration::from_secs(30)));
    let writer = write_on_thread(&v, 6);
    until_issued(&mirror, 1);
    // The group left sync mode: its waiting writes complete.
    mirror.detach();
    writer.join().unwrap().unwrap();
}

/// A lost link's reason is the group's status text: typed, it reads as
/// it did when it was a string.
#[test]
fn stream_errors_read_as_before() {
    assert_eq!(
        StreamError::NoAnswer { secs: 30.0 }.to_string(),
        "the replica did not answer within 30s"
    );
    let lost = StreamError::Lost("the sync stream stopped".into());
    assert_eq!(
        StreamError::Keepalive(Box::new(lost)).to_string(),
        "keepalive: the sync stream stopped"
    );
    let full = RemoteError::StorageFull("no space left".into());
    assert_eq!(
        StreamError::Seal(full).to_string(),
        "sealing the log: no space left"
    );
    assert_eq!(
        StreamError::LogSealed.to_string(),
        "the group's write log was sealed (failover); no more writes are taken"
    );
}

/// A decoded record: sequence number, volume, first block, blocks, data.
type Record = (u64, u16, u64, u32, Option<Vec<u8>>);

/// The batches in `queue`, each its last ticket and its payload decoded
/// into records.
fn batches(queue: &VecDeque<Item>) -> Vec<(u64, Vec<Record>)> {
    queue
        .iter()
        .map(|item| match item {
            Item::Batch { frame, last } => {
                let records = offsite_replica_store::decode_records(frame.payload())
                    .expect("a batch decodes")
                    .into_iter()
                    .map(|r| {
                        (
                            r.seq,
                            r.volume,
                            r.first,
                            r.count,
                            r.data.map(<[u8]>::to_vec),
                        )
                    })
                    .collect();
                (*last, records)
            }
            Item::Seal { .. } | Item::Checkpoint(_) => panic!("only writes were queued"),
        })
        .collect()
}

/// Writes join the batch at the back, each record encoded straight into
/// it with the next sequence number; the result is exactly the write
/// log's record format.
#[test]
fn writes_are_encoded_once_into_the_batch_at_the_back() {
    let mut queue = VecDeque::new();
    let mut seq = 0;
    let mut b = Batcher::new(&mut queue, &mut seq, 1, 0);
    b.data(10, 2, &[5u8; 2 * BS]);
    b.zeroes(40, 1000);
    let mut b = Batcher::new(&mut queue, &mut seq, 0, 1);
    b.data(3, 1, &[6u8; BS]);
    assert_eq!(seq, 3);
    assert_eq!(
        batches(&queue),
        [(
            0,
            vec![
                (1, 1, 10, 2, Some(vec![5u8; 2 * BS])),
                (2, 1, 40, 1000, None),
                (3, 0, 3, 1, Some(vec![6u8; BS])),
            ]
        )]
    );
}

/// A batch holds at most `MAX_BATCH` bytes: the next write starts a new
/// one, and a write larger than a batch (an NBD write may be 32 MiB, a
/// frame's payload at most 16 MiB) is split into records of whole blocks.
#[test]
fn batches_stay_within_their_bound_and_large_writes_are_split() {
    let mut queue = VecDeque::new();
    let mut seq = 0;
    Batcher::new(&mut queue, &mut seq, 0, 0).data(0, 1, &[1u8; BS]);
    let blocks = 2 * MAX_BATCH / BS + 3;
    let big: Vec<u8> = (0..blocks * BS).map(|i| (i / BS) as u8).collect();
    Batcher::new(&mut queue, &mut seq, 0, 1).data(100, blocks as u32, &big);
    let got = batches(&queue);
    assert!(got.len() >= 3, "{} batches", got.len());
    for item in &queue {
        let Item::Batch { frame, .. } = item else {
            unreachable!()
        };
        assert!(frame.payload_len() <= MAX_BATCH, "{}", frame.payload_len());
    }
    // The big write did not join the first batch, and its records cover
    // its blocks in order, with its bytes.
    assert_eq!(got[0].1.len(), 1);
    let mut next = 100u64;
    let mut rebuilt = Vec::new();
    for (last, records) in &got[1..] {
        assert_eq!(*last, 1, "the write's own batches wait for its ticket");
        for (_, _, first, count, data) in records {
            assert_eq!(*first, next);
            next += u64::from(*count);
            rebuilt.extend_from_slice(data.as_deref().unwrap());
        }
    }
    assert_eq!(next, 100 + blocks as u64);
    assert!(rebuilt == big);
    let seqs: Vec<u64> = got.iter().flat_map(|b| b.1.iter().map(|r| r.0)).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// A write whose volume failed half-way leaves nothing behind: its
/// records, the batches it started and its sequence numbers are taken back.
#[test]
fn a_failed_write_takes_back_its_records() {
    let mut queue = VecDeque::new();
    let mut seq = 0;
    Batcher::new(&mut queue, &mut seq, 0, 0).data(7, 1, &[7u8; BS]);
    let before = batches(&queue);
    let blocks = MAX_BATCH / BS + 1;
    let mut b = Batcher::new(&mut queue, &mut seq, 0, 1);
    b.data(0, blocks as u32, &vec![9u8; blocks * BS]);
    b.zeroes(900, 1);
    b.undo();
    assert_eq!(seq, 1);
    assert_eq!(batches(&queue), before);
}
