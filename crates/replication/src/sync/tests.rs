//! The link-loss policy of a sync group's write mirror, on a real volume
//! and the fake clock: `degrade` acknowledges writes at once when the link
//! is lost (they are tracked and shipped by the resynchronization),
//! `suspend-writes` holds them until a resynchronization covers them or
//! their timeout, read on the clock, fails them.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use offsite_catalog::SyncState;
use offsite_engine::{Volume, WriteMirror};
use offsite_nbd::BlockDevice;

use super::{Policy, StreamError, SyncMirror};
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
