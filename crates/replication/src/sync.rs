//! Synchronous replication (RPO 0): the primary's write mirror, the stream
//! that carries its writes into the replica's write log, seals, and the
//! link-loss policies.
//!
//! **Primary.** A sync group's runner attaches one [`SyncMirror`] to every
//! volume of the group. A write is applied to the local file and queued
//! under the mirror's lock (one write order for the whole group), then
//! waits for its *ticket* to be covered: the replica has fsynced the batch
//! holding it into its log ([`offsite_replica_store::WriteLog`]), or a committed
//! resynchronization cycle took a cut after it. A seal (`sync`, the RPO
//! timer, verify) is a marker queued in the same order with every write
//! held off for an instant ([`Site::seal_cut`]): the PIT it commits holds
//! exactly the writes before it.
//!
//! **No hand-offs on the write path.** Every thread wake-up between the
//! NBD request and its reply is latency the application pays (on this
//! class of machine one costs tens of microseconds), so the stream's
//! connection is a [`DirectStream`] driven by the writers' own threads,
//! leader/follower style, not by tasks:
//!
//! - *sending turn*: the thread that queues a write while no one is sending
//!   writes the queue to the socket itself (one batch per turn, the queue's
//!   order), and keeps going while writes arrive meanwhile. When the NBD
//!   server already holds the next request and it is a write too (a
//!   client refilling its queue after a batch of replies), the write is
//!   only queued, so the burst leaves as one batch instead of its first
//!   write alone followed by the rest a replica cycle later (measured:
//!   26 % of batches held a single write); the last write of the burst,
//!   or the server before it waits for more requests, sends it;
//! - *reading turn*: a thread waiting for its ticket while no one is
//!   reading reads the replica's acknowledgements itself, covers the
//!   tickets, and wakes the other waiters; when its own ticket is covered
//!   it leaves and the next waiter takes the turn;
//! - the runner takes turns only for what no writer waits for: seal
//!   answers, keepalives while writes are idle, the final drain.
//!
//! The replica serves the stream on one thread ([`Replication::serve_stream`]):
//! batches that arrived together share one fsync and one acknowledgement
//! (group commit), and a batch's sequence number is its last ticket, so an
//! acknowledgement covers everything up to it. A second thread copies
//! acknowledged batches into the open PIT while the next ones are written
//! to the log, so the replica's disk does one job per cycle.
//!
//! **Pipelining.** The primary does not wait for an acknowledgement before
//! sending the next batch (that would idle the replica for a round trip per
//! fsync), nor does it flood it (batches sent while the replica is busy
//! merge into one bigger batch on the primary's queue, which is what makes
//! group commit work): it sends while the replica has *read* everything
//! already sent. Each acknowledgement carries the payload bytes the
//! replica has read so far, and the replica sends an early one when it
//! finds its socket dry.
//!
//! **Link loss.** A batch not acknowledged within
//! `replication.sync_ack_timeout_secs` (or any session error) marks the link
//! lost: with `degrade` waiting writes complete at once (they are tracked
//! dirty, the group is `critical`); with `suspend-writes` they keep waiting
//! until a resynchronization covers them or their timeout fails them with
//! `EIO`. Either way the writes are tracked, the volumes are isolated
//! (split-brain evidence), and the runner resynchronizes with ordinary
//! cycles until one ships little, then takes a last cut during which the
//! mirror starts queueing again; once that PIT is committed the stream
//! restarts after it and the group is in sync again. (A continuous group
//! resynchronizes in rounds instead, without a copy-on-write cut per
//! cycle: see `rounds`.)
//!
//! ```mermaid
//! stateDiagram-v2
//!     resynchronizing --> in_sync: last catch-up PIT committed, stream open
//!     in_sync --> degraded: ack timeout / session error
//!     degraded --> resynchronizing: partner reachable
//!     in_sync --> [*]: mode async, pause, prepare (stream drained, log sealed)
//! ```
//!
//! **Replica.** A stream opens the group's write log (sealing a leftover
//! one first), appends each batch durably before acknowledging it, seals
//! it on request, and seals it when the stream ends, so that asynchronous
//! cycles (resynchronization) find no open log.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use offsite_catalog::GroupRow;
use offsite_catalog::{Mode, Role, SyncState};
use offsite_engine::{RecordSink, Site, Volume, WriteMirror};
use offsite_protocol::{BulkFrame, Message};
use offsite_replica_store::{LogApplier, LogRecord, WriteLog};
use offsite_transport::{DirectStream, TransportError};
use tokio::sync::{Notify, oneshot};

use crate::RemoteError;
use crate::clock::Clock;
use crate::control::{Done, Reply, Rpc};
use crate::primary::Checkpoint;
use crate::quiesce::CycleFreeze;
use crate::wire::{self, PitCommitted, PitDesc};
use crate::{ReplError, Replication, invalid};

mod continuous;
mod rounds;
mod runner;
mod stream;

pub(crate) use continuous::Wait;

/// A batch holds at most this many bytes of records.
const MAX_BATCH: usize = 8 << 20;
/// How long one reading turn waits for the replica before checking the
/// acknowledgement deadline.
const READ_SLICE: Duration = Duration::from_millis(200);
/// Sent frames kept for reuse, and the largest buffer kept (a burst's
/// batch of several MiB is not held for the batches of 4 KiB writes).
const SPARE_FRAMES: usize = 4;
const SPARE_CAPACITY: usize = 2 << 20;
/// Resynchronization ends (the stream restarts) after a cycle that
/// shipped at most this much.
const CATCH_UP_BYTES: u64 = 64 << 20;

/// What a lost link does to writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Policy {
    /// Keep acknowledging writes (tracked, shipped later).
    Degrade,
    /// Writes wait up to this long for the replica, then fail.
    Suspend(Duration),
}

impl Policy {
    pub(crate) fn of(row: &GroupRow) -> Policy {
        if row.on_link_loss == "suspend-writes" {
            Policy::Suspend(Duration::from_secs(row.suspend_timeout_secs.max(1)))
        } else {
            Policy::Degrade
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Writes are queued for the stream (which may be starting).
    Up,
    /// The partner was lost: writes are tracked only.
    Lost,
    /// Mirroring ended on purpose (mode change, pause, prepare): waiting
    /// writes complete, the tracker has them.
    Detached,
}

#[derive(Debug)]
enum Item {
    /// Writes in the group's order, their log records encoded straight
    /// into the frame that carries them to the replica (see [`Batcher`]).
    Batch {
        frame: BulkFrame,
        /// The last write whose records end in it or before it (the
        /// batch's sequence number on the wire).
        last: u64,
    },
    Seal {
        /// Which seal this is (1, 2, ...): answers come back in this order.
        ordinal: u64,
        name: Option<String>,
        created_at: String,
        /// Sealed while the group's VMs were quiesced (or stopped).
        app_consistent: bool,
    },
    /// A journal checkpoint after every write queued before it (see
    /// [`SyncMirror::queue_checkpoint`]); sent without an answer.
    Checkpoint(wire::SyncCheckpoint),
}

#[derive(Debug)]
struct MState {
    link: Link,
    /// Last ticket issued.
    issued: u64,
    /// Every ticket up to this one is on the replica.
    covered: u64,
    queue: VecDeque<Item>,
    why_lost: Option<String>,
    /// Last log record sequence number given out (strictly growing in a
    /// log; records are numbered as they are encoded, in queue order).
    record_seq: u64,
    /// The replica's stream, once open.
    stream: Option<Arc<DirectStream>>,
    /// A thread is writing queued items to the stream (one at a time keeps
    /// the queue's order on the wire).
    sending: bool,
    /// A thread is reading the stream for everyone.
    reading: bool,
    /// Threads asleep on the condvar (see [`SyncMirror::cover_locked`]).
    sleepers: usize,
    /// Last tickets of the batches sent and not yet acknowledged, with
    /// their payload bytes (empty: the replica holds everything sent).
    in_flight: VecDeque<(u64, u64)>,
    /// Payload bytes of the batches sent on this stream, and how many of
    /// them the replica said it has read (each acknowledgement carries
    /// that count; see [`SyncMirror::may_send`]).
    sent_bytes: u64,
    taken_bytes: u64,
    /// Since when the replica owes an acknowledgement (restarted by each).
    unacked_since: Option<Instant>,
    /// Seals queued so far, and answered so far (answers come in order).
    seals_queued: u64,
    seals_answered: u64,
    /// Replies of the seals sent and not yet answered, oldest first.
    seal_replies: VecDeque<oneshot::Sender<Result<PitCommitted, RemoteError>>>,
    /// Replies of the seals queued and not yet sent, by ordinal.
    seal_waiting: HashMap<u64, oneshot::Sender<Result<PitCommitted, RemoteError>>>,
    /// Last keepalive sent and last answered.
    ping: u64,
    pong: u64,
    /// The replica of the current stream takes checkpoints
    /// ([`wire::SyncStreamBegun`]).
    checkpoints: bool,
    /// `issued` when the last checkpoint was queued: none is queued again
    /// until a write follows it.
    checkpointed: u64,
    /// Continuous mode (see [`continuous`]): record bytes queued and not
    /// yet sent, and sent and not yet acknowledged; their sum is held
    /// under the queue's bound.
    queued_bytes: u64,
    flight_bytes: u64,
    /// The link was lost because the queue outgrew its bound (a spill),
    /// not because the partner went away.
    spilled: bool,
    /// The sender thread is asleep on `send_cond` (a writer wakes it only
    /// then, so a busy stream costs no futex call per write).
    sender_asleep: bool,
    /// When the writes not yet acknowledged were queued: the first ticket
    /// of each bucket of [`continuous::BUCKET`] and its time (the lag).
    since: VecDeque<(u64, Instant)>,
    /// Frames already sent, emptied, for the next batches: fresh memory
    /// per batch cost the primary a page fault and a page zeroed per 4 KiB
    /// (measured: 15 % of its CPU at QD32).
    spare: Vec<BulkFrame>,
}

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub(crate) struct SyncStats {
    /// Acknowledgements from the replica: one per replica fsync.
    pub(crate) batches: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) link_losses: AtomicU64,
    pub(crate) failed_writes: AtomicU64,
    /// Continuous groups: queues dropped for outgrowing their bound.
    pub(crate) spills: AtomicU64,
    /// Payload bytes of write batches sent down the stream.
    pub(crate) bytes: AtomicU64,
    /// Of those, the ones `group resync` sent (counted as resync).
    pub(crate) resync_bytes: AtomicU64,
    /// `bytes - resync_bytes` already added to the catalog's counters.
    pub(crate) counted: AtomicU64,
}

impl SyncStats {
    /// Stream bytes not yet counted in the catalog (resync's excluded),
    /// marked counted.
    pub(crate) fn take_uncounted(&self) -> u64 {
        let total = self
            .bytes
            .load(Ordering::Relaxed)
            .saturating_sub(self.resync_bytes.load(Ordering::Relaxed));
        total.saturating_sub(self.counted.swap(total, Ordering::Relaxed))
    }
}

/// The write mirror of one sync group (see the module docs).
#[derive(Debug)]
pub(crate) struct SyncMirror {
    group: String,
    policy: Policy,
    /// A batch not acknowledged within this loses the link.
    ack_timeout: Duration,
    st: Mutex<MState>,
    cond: Condvar,
    /// Tells the runner the link changed.
    wake: Notify,
    pub(crate) stats: Arc<SyncStats>,
    /// How long a write has waited is read here (the link-loss policy).
    clock: Arc<dyn Clock>,
    /// Whether a write waits for the replica (sync) or not (continuous).
    wait: Wait,
    /// Continuous: the most bytes queued and in flight before a spill
    /// (`replication.continuous_queue_bytes`, read again at each last cut).
    queue_bound: AtomicU64,
    /// Continuous: where the sender thread sleeps.
    send_cond: Condvar,
}

impl SyncMirror {
    pub(crate) fn new(
        group: &str,
        policy: Policy,
        ack_timeout: Duration,
        stats: Arc<SyncStats>,
        clock: Arc<dyn Clock>,
    ) -> Arc<SyncMirror> {
        Self::build(group, policy, Wait::Acks, ack_timeout, stats, clock)
    }

    fn build(
        group: &str,
        policy: Policy,
        wait: Wait,
        ack_timeout: Duration,
        stats: Arc<SyncStats>,
        clock: Arc<dyn Clock>,
    ) -> Arc<SyncMirror> {
        let queue_bound = match wait {
            Wait::Acks => u64::MAX,
            Wait::Never { queue_bytes } => queue_bytes,
        };
        Arc::new(SyncMirror {
            group: group.to_string(),
            policy,
            ack_timeout,
            clock,
            wait,
            queue_bound: AtomicU64::new(queue_bound),
            send_cond: Condvar::new(),
            st: Mutex::new(MState {
                link: Link::Lost,
                issued: 0,
                covered: 0,
                queue: VecDeque::new(),
                why_lost: Some("resynchronizing".into()),
                record_seq: 0,
                stream: None,
                sending: false,
                reading: false,
                sleepers: 0,
                in_flight: VecDeque::new(),
                sent_bytes: 0,
                taken_bytes: 0,
                unacked_since: None,
                seals_queued: 0,
                seals_answered: 0,
                seal_replies: VecDeque::new(),
                seal_waiting: HashMap::new(),
                ping: DirectStream::FIRST_NONCE,
                pong: 0,
                checkpoints: false,
                checkpointed: 0,
                queued_bytes: 0,
                flight_bytes: 0,
                spilled: false,
                sender_asleep: false,
                since: VecDeque::new(),
                spare: Vec::new(),
            }),
            cond: Condvar::new(),
            wake: Notify::new(),
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The last ticket issued (call with writes held off: a cut).
    pub(crate) fn issued(&self) -> u64 {
        self.lock().issued
    }

    /// Starts queueing writes for the stream (call with writes held off);
    /// they are sent once the stream is [attached](Self::attach).
    pub(crate) fn set_up(&self) {
        let mut st = self.lock();
        st.link = Link::Up;
        st.why_lost = None;
        st.spilled = false;
        // Every write before this cut is the cycle's to ship.
        st.since.clear();
    }

    /// The stream is open: what queued meanwhile goes out now (blocking).
    pub(crate) fn attach(&self, stream: DirectStream) {
        let mut st = self.lock();
        if st.link != Link::Up {
            stream.shutdown();
            return;
        }
        st.in_flight.clear();
        st.flight_bytes = 0;
        st.sent_bytes = 0;
        st.taken_bytes = 0;
        // A deadline left by the previous stream is not this one's.
        st.unacked_since = None;
        st.stream = Some(Arc::new(stream));
        // Writes that queued before the stream opened wait on the condvar:
        // one of them takes the reading turn now, not after its slice.
        self.cond.notify_all();
        drop(st);
        self.kick();
    }

    /// Tickets up to `through` are on the replica (a committed cut, or an
    /// acknowledged batch).
    pub(crate) fn cover(&self, through: u64) {
        let mut st = self.lock();
        self.cover_locked(&mut st, through);
    }

    fn cover_locked(&self, st: &mut MState, through: u64) {
        while let Some(&(t, bytes)) = st.in_flight.front()
            && t <= through
        {
            st.in_flight.pop_front();
            st.flight_bytes = st.flight_bytes.saturating_sub(bytes);
        }
        if through > st.covered {
            st.covered = through;
            if self.wait != Wait::Acks {
                continuous::drop_covered(st);
            }
            st.unacked_since = (!st.in_flight.is_empty()).then(Instant::now);
            // Only threads asleep on the condvar need waking; with none (a
            // single writer, QD1) the futex call would be one more system
            // call between the acknowledgement and the NBD reply.
            if st.sleepers > 0 {
                self.cond.notify_all();
            }
        }
    }

    fn end(&self, link: Link, why: Option<String>) {
        let mut st = self.lock();
        self.end_locked(&mut st, link, why);
    }

    fn end_locked(&self, st: &mut MState, link: Link, why: Option<String>) {
        if st.link == Link::Up || link == Link::Detached {
            st.link = link;
            st.why_lost = why.clone();
        }
        let why = why.unwrap_or_else(|| "the sync stream stopped".into());
        st.queue.clear();
        st.queued_bytes = 0;
        // The continuous sender sleeps until told.
        self.send_cond.notify_all();
        // A seal's asker that stopped waiting needs no answer.
        for reply in st.seal_replies.drain(..) {
            drop(reply.send(Err(RemoteError::Refused(why.clone()))));
        }
        for (_, reply) in st.seal_waiting.drain() {
            drop(reply.send(Err(RemoteError::Refused(why.clone()))));
        }
        if let Some(stream) = st.stream.take() {
            // Threads blocked on it fail at once.
            stream.shutdown();
        }
        self.cond.notify_all();
        self.wake.notify_one();
    }

    /// The partner is lost: queued writes are dropped (they are tracked).
    pub(crate) fn lose(&self, why: String) {
        if self.lock().link == Link::Up {
            self.stats.link_losses.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(group = %self.group, "sync replication lost its partner: {why}");
        }
        self.end(Link::Lost, Some(why));
    }

    /// Mirroring ends on purpose; every waiting write completes.
    pub(crate) fn detach(&self) {
        self.end(Link::Detached, Some("mirroring stopped".into()));
    }

    /// `in-sync`, `degraded`/`suspended` (lost) or `resynchronizing`.
    pub(crate) fn state_name(&self, resyncing: bool) -> SyncState {
        let st = self.lock();
        match st.link {
            // In sync only once the stream is attached: between the last
            // cut and the stream's opening, writes queue unconfirmed.
            Link::Up if st.stream.is_some() => match self.wait {
                Wait::Acks => SyncState::InSync,
                Wait::Never { .. } => SyncState::Streaming,
            },
            Link::Up => SyncState::Resynchronizing,
            _ if resyncing => SyncState::Resynchronizing,
            _ if st.spilled => SyncState::Spilled,
            _ => match self.policy {
                Policy::Degrade => SyncState::Degraded,
                Policy::Suspend(_) => SyncState::Suspended,
            },
        }
    }

    /// Why the link is down, if it is.
    pub(crate) fn why_lost(&self) -> Option<String> {
        self.lock().why_lost.clone()
    }

    /// Why the link went down, once it has.
    fn lost(&self) -> Option<String> {
        let st = self.lock();
        (st.link != Link::Up).then(|| {
            st.why_lost
                .clone()
                .unwrap_or_else(|| "the sync stream ended".into())
        })
    }

    /// Queues a seal after every write so far; `None` when the link is not
    /// up (the caller resynchronizes instead). Someone must
    /// [`kick`](Self::kick) the queue afterwards.
    fn queue_seal(
        &self,
        name: Option<String>,
        created_at: String,
        app_consistent: bool,
    ) -> Option<(u64, oneshot::Receiver<Result<PitCommitted, RemoteError>>)> {
        let mut st = self.lock();
        if st.link != Link::Up {
            return None;
        }
        let (reply, rx) = oneshot::channel();
        st.seals_queued += 1;
        let ordinal = st.seals_queued;
        st.seal_waiting.insert(ordinal, reply);
        st.queue.push_back(Item::Seal {
            ordinal,
            name,
            created_at,
            app_consistent,
        });
        Some((ordinal, rx))
    }

    /// Says whether the replica of the stream about to be attached takes
    /// checkpoints (its answer to the stream's opening).
    pub(crate) fn accept_checkpoints(&self, yes: bool) {
        let mut st = self.lock();
        st.checkpoints = yes;
        // The stream starts after a PIT holding every write so far: a
        // checkpoint before the next write would be that PIT's image.
        st.checkpointed = st.issued;
    }

    /// Queues a crash-consistent checkpoint after every write so far, in
    /// the group's write order. No cut is needed: writes are queued under
    /// this lock, so the queue is the write order and whatever precedes
    /// the marker is a prefix of it (each write whole: its records are
    /// encoded within one `submit`). `false` (nothing queued) when the
    /// link is not up or the replica takes no checkpoints, or when no
    /// write was submitted since the last checkpoint: its image would be
    /// the previous one's, and recovery to any later instant already picks
    /// that one (the newest checkpoint at or before the time asked).
    /// Someone must [`kick`](Self::kick) the queue afterwards.
    pub(crate) fn queue_checkpoint(
        &self,
        time_ns: u64,
        app_consistent: bool,
        name: Option<String>,
    ) -> bool {
        let mut st = self.lock();
        // Before the stream is attached (it is opening) the marker waits
        // in the queue with the writes, like them.
        if st.link != Link::Up || !st.checkpoints {
            return false;
        }
        if st.issued == st.checkpointed && name.is_none() && !app_consistent {
            return false;
        }
        st.checkpointed = st.issued;
        st.queue.push_back(Item::Checkpoint(wire::SyncCheckpoint {
            group: self.group.clone(),
            time_ns,
            app_consistent,
            name,
        }));
        true
    }

    /// Whether this thread should take the sending turn now: something is
    /// queued, no one sends, and the replica has read every batch sent.
    ///
    /// That last rule is the pipeline: the replica reports what it has read
    /// when it starts making a batch durable, so the writes that gathered
    /// here meanwhile travel as one batch (one frame, one system call each
    /// way) and wait in its socket while it writes, and it starts on them
    /// the moment it has acknowledged the previous one. Sending each write
    /// at once costs a frame per write on both sides (measured slower);
    /// waiting for the acknowledgement leaves the replica idle for a round
    /// trip every cycle.
    fn may_send(st: &MState) -> bool {
        !st.sending && Self::can_send(st)
    }

    /// [`may_send`](Self::may_send) for the thread that has the turn.
    fn can_send(st: &MState) -> bool {
        st.link == Link::Up
            && st.stream.is_some()
            && !st.queue.is_empty()
            && st.taken_bytes >= st.sent_bytes
    }

    /// Sends what is queued unless another thread is at it (blocking).
    pub(crate) fn kick(&self) {
        let mut st = self.lock();
        if !Self::may_send(&st) {
            return;
        }
        st.sending = true;
        drop(st);
        self.pump();
    }

    /// The sending turn (the caller set `sending`): writes queued items to
    /// the stream until the queue is empty. Writes that arrive meanwhile
    /// join the next batch.
    fn pump(&self) {
        loop {
            let mut st = self.lock();
            let stream = match &st.stream {
                Some(s) if Self::can_send(&st) => s.clone(),
                // Empty, or the replica has not read the last batch yet:
                // the thread that reads its report sends what gathered
                // meanwhile.
                _ => {
                    st.sending = false;
                    return;
                }
            };
            let sent = match st.queue.pop_front() {
                Some(Item::Seal {
                    ordinal,
                    name,
                    created_at,
                    app_consistent,
                }) => {
                    if let Some(reply) = st.seal_waiting.remove(&ordinal) {
                        st.seal_replies.push_back(reply);
                    }
                    drop(st);
                    let req = wire::SyncSeal(wire::PitCommit {
                        group: self.group.clone(),
                        name,
                        created_at,
                        blocks: 0,
                        app_consistent,
                    });
                    let message = Message::Request {
                        id: ordinal,
                        kind: wire::SyncSeal::KIND,
                        body: req.encode(),
                    };
                    stream.send(&message).map(|()| None)
                }
                Some(Item::Checkpoint(req)) => {
                    drop(st);
                    // Fire and forget: the replica answers only seals, and
                    // their answers are counted in order.
                    let message = Message::Request {
                        id: 0,
                        kind: wire::SyncCheckpoint::KIND,
                        body: req.encode(),
                    };
                    stream.send(&message).map(|()| None)
                }
                Some(Item::Batch { mut frame, last }) => {
                    let bytes = frame.payload_len() as u64;
                    st.queued_bytes = st.queued_bytes.saturating_sub(bytes);
                    drop(st);
                    // The batch's sequence number is its last ticket: the
                    // replica acknowledges the last one it made durable.
                    // Its records carry their own CRC32C, which the
                    // replica checks before it appends them.
                    stream
                        .send_bulk_reusing(&mut frame, last, true)
                        .map(|()| Some((last, bytes, frame)))
                }
                None => unreachable!("can_send: the queue is not empty"),
            };
            let sent = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    self.lose(format!("sending writes: {e}"));
                    self.lock().sending = false;
                    return;
                }
            };
            if let Some((last, bytes, mut frame)) = sent {
                let mut st = self.lock();
                if st.spare.len() < SPARE_FRAMES && frame.capacity() <= SPARE_CAPACITY {
                    frame.reset();
                    st.spare.push(frame);
                }
                st.sent_bytes += bytes;
                self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                if last > st.covered {
                    st.in_flight.push_back((last, bytes));
                    st.flight_bytes += bytes;
                    if st.unacked_since.is_none() {
                        st.unacked_since = Some(Instant::now());
                    }
                }
            }
        }
    }

    /// The reading turn: reads one message from the stream for everyone
    /// (at most `cap`, and no later than the acknowledgement deadline) and
    /// applies it; the lock is released while it waits.
    fn read_turn<'a>(
        &'a self,
        mut st: std::sync::MutexGuard<'a, MState>,
        cap: Option<Duration>,
    ) -> std::sync::MutexGuard<'a, MState> {
        let Some(stream) = st.stream.clone() else {
            return st;
        };
        st.reading = true;
        drop(st);
        // A fixed slice (the socket's timeout is set only when it changes);
        // the acknowledgement deadline is checked when it expires.
        let wait = cap.map_or(READ_SLICE, |c| c.min(READ_SLICE));
        let got = stream.recv(Some(wait));
        let mut st = self.lock();
        st.reading = false;
        let failed = match got {
            Ok(Some(m)) => self.apply(&mut st, m).err().map(|e| e.to_string()),
            Ok(None) => Some("the replica closed the sync stream".to_string()),
            Err(TransportError::PeerDead { .. }) => st
                .unacked_since
                .filter(|t| t.elapsed() >= self.ack_timeout)
                .map(|_| {
                    format!(
                        "the replica did not acknowledge writes within {:.1}s",
                        self.ack_timeout.as_secs_f64()
                    )
                }),
            Err(e) => Some(format!("the sync stream failed: {e}")),
        };
        if let Some(why) = failed {
            drop(st);
            self.lose(why);
            st = self.lock();
        } else if Self::may_send(&st) {
            // The replica has read everything sent: what gathered meanwhile
            // goes out as one batch.
            st.sending = true;
            drop(st);
            self.pump();
            st = self.lock();
        }
        st
    }

    /// Applies a message from the replica.
    fn apply(&self, st: &mut MState, message: Message) -> Result<(), StreamError> {
        match message {
            Message::BulkAck { seq, bytes } => {
                st.taken_bytes = st.taken_bytes.max(bytes);
                if seq > st.covered {
                    self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .writes
                        .fetch_add(seq - st.covered, Ordering::Relaxed);
                }
                self.cover_locked(st, seq);
                Ok(())
            }
            Message::Response { ok, body, .. } => {
                st.seals_answered += 1;
                let answer = if ok {
                    <PitCommitted as Reply>::decode(&body)
                        .map_err(|e| RemoteError::Refused(format!("malformed seal answer: {e}")))
                } else {
                    Err(RemoteError::from_body(&body))
                };
                let failed = answer.as_ref().err().cloned();
                if let Some(reply) = st.seal_replies.pop_front() {
                    // The seal's asker may have stopped waiting.
                    drop(reply.send(answer));
                }
                self.cond.notify_all();
                match failed {
                    Some(e) => Err(StreamError::Seal(e)),
                    None => Ok(()),
                }
            }
            Message::Pong { nonce, .. } => {
                st.pong = st.pong.max(nonce);
                self.cond.notify_all();
                Ok(())
            }
            other => Err(StreamError::Unexpected { tag: other.tag() }),
        }
    }

    /// Waits (blocking) until `done`, taking reading turns when no one
    /// else reads; fails once the link is down or after `limit`.
    fn settle(&self, limit: Duration, done: impl Fn(&MState) -> bool) -> Result<(), StreamError> {
        let end = Instant::now() + limit;
        let mut st = self.lock();
        loop {
            if done(&st) {
                // Our reading turns are over: someone else may need one.
                self.cond.notify_all();
                return Ok(());
            }
            if st.link != Link::Up {
                return Err(StreamError::Lost(
                    st.why_lost
                        .clone()
                        .unwrap_or_else(|| "the sync stream stopped".into()),
                ));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.cond.notify_all();
                return Err(StreamError::NoAnswer {
                    secs: limit.as_secs_f64(),
                });
            }
            st = self.read_or_sleep(st, Some(left), left.min(Duration::from_millis(100)));
        }
    }

    /// Takes the reading turn if no one reads (leader/follower: the next
    /// waiter takes over when this one leaves), else sleeps on the condvar
    /// for at most `sleep`.
    fn read_or_sleep<'a>(
        &'a self,
        mut st: std::sync::MutexGuard<'a, MState>,
        cap: Option<Duration>,
        sleep: Duration,
    ) -> std::sync::MutexGuard<'a, MState> {
        if st.link == Link::Up && !st.reading && st.stream.is_some() {
            return self.read_turn(st, cap);
        }
        st.sleepers += 1;
        let mut st = self
            .cond
            .wait_timeout(st, sleep)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        st.sleepers -= 1;
        st
    }

    /// Proves the replica alive while writes are idle (blocking).
    fn keepalive(&self) -> Result<(), StreamError> {
        let (stream, nonce) = {
            let mut st = self.lock();
            let Some(stream) = st.stream.clone().filter(|_| st.link == Link::Up) else {
                return Ok(());
            };
            st.ping += 1;
            (stream, st.ping)
        };
        stream
            .send(&Message::Ping {
                nonce,
                sent_at_micros: 0,
            })
            .map_err(StreamError::Send)?;
        self.settle(self.ack_timeout, |st| st.pong >= nonce)
            .map_err(|e| StreamError::Keepalive(Box::new(e)))
    }

    /// Ends the stream in order (blocking; the volumes no longer submit):
    /// sends what is queued, waits for every acknowledgement, says `Bye`
    /// (the replica seals its log).
    fn finish(&self, limit: Duration) {
        self.kick();
        let drained = self.settle(limit, |st| {
            st.queue.is_empty() && !st.sending && st.in_flight.is_empty()
        });
        let stream = self.lock().stream.take();
        if let Some(stream) = stream {
            match drained {
                Ok(()) => stream.close(),
                Err(e) => {
                    tracing::warn!(group = %self.group, "ending the sync stream: {e}");
                    stream.shutdown();
                }
            }
        }
    }
}

impl WriteMirror for SyncMirror {
    fn submit(
        &self,
        volume: u16,
        hold: bool,
        apply: &mut dyn FnMut(&mut dyn RecordSink) -> io::Result<()>,
    ) -> io::Result<u64> {
        let mut st = self.lock();
        if st.link != Link::Up {
            // Tracked only: the resynchronization ships it.
            apply(&mut Discard)?;
            st.issued += 1;
            return Ok(st.issued);
        }
        let MState {
            queue,
            record_seq,
            issued,
            spare,
            ..
        } = &mut *st;
        let mut batcher = Batcher::new(queue, record_seq, volume, *issued).with_spares(spare);
        if let Err(e) = apply(&mut batcher) {
            batcher.undo();
            return Err(e);
        }
        let added = batcher.added;
        st.issued += 1;
        let ticket = st.issued;
        match st.queue.back_mut() {
            Some(Item::Batch { last, .. }) => *last = ticket,
            // A write without records (nothing changed) still needs a
            // batch to be acknowledged by.
            _ => st.queue.push_back(Item::Batch {
                frame: BulkFrame::default(),
                last: ticket,
            }),
        }
        if self.wait != Wait::Acks {
            // Continuous: queued, and the sender thread sends it.
            self.queued_continuous(&mut st, ticket, added as u64, hold);
            return Ok(ticket);
        }
        // No one sending: this thread writes the batch itself (no
        // hand-off to another thread on the path of the write), unless
        // the writes right behind this one should go with it.
        if !hold && Self::may_send(&st) {
            st.sending = true;
            drop(st);
            self.pump();
        }
        Ok(ticket)
    }

    fn release(&self) {
        match self.wait {
            Wait::Acks => self.kick(),
            Wait::Never { .. } => self.wake_sender(&mut self.lock()),
        }
    }

    fn completes_at_once(&self) -> bool {
        self.wait != Wait::Acks
    }

    fn ready(&self, ticket: u64) -> bool {
        if self.wait != Wait::Acks {
            // Continuous: the write completes locally (see `continuous`).
            return true;
        }
        let st = self.lock();
        st.covered >= ticket
            || st.link == Link::Detached
            || (st.link == Link::Lost && self.policy == Policy::Degrade)
    }

    fn wait(&self, ticket: u64) -> io::Result<()> {
        if self.wait != Wait::Acks {
            return Ok(());
        }
        let start = self.clock.now();
        let mut st = self.lock();
        loop {
            if st.covered >= ticket {
                return Ok(());
            }
            let cap = match (st.link, self.policy) {
                (Link::Detached, _) | (Link::Lost, Policy::Degrade) => return Ok(()),
                (_, Policy::Suspend(limit)) => {
                    let waited = self.clock.now().saturating_duration_since(start);
                    if waited >= limit {
                        self.stats.failed_writes.fetch_add(1, Ordering::Relaxed);
                        self.cond.notify_all();
                        return Err(io::Error::other(format!(
                            "group {}: the replica did not confirm the write within {}s (on-link-loss suspend-writes): {}",
                            self.group,
                            limit.as_secs(),
                            st.why_lost
                                .clone()
                                .unwrap_or_else(|| "no acknowledgement".into())
                        )));
                    }
                    Some(limit - waited)
                }
                // Queued while the stream is still opening: the replica may
                // never take it (a partner that stopped answering mid-
                // handshake), so the acknowledgement deadline runs from the
                // write itself; with a stream, reading enforces it.
                (Link::Up, Policy::Degrade) if st.stream.is_none() => {
                    let waited = self.clock.now().saturating_duration_since(start);
                    if waited >= self.ack_timeout {
                        drop(st);
                        self.lose(format!(
                            "the sync stream to the replica did not open within {:.1}s",
                            self.ack_timeout.as_secs_f64()
                        ));
                        st = self.lock();
                        continue;
                    }
                    Some(self.ack_timeout - waited)
                }
                (Link::Up, Policy::Degrade) => None,
            };
            st = self.read_or_sleep(st, cap, cap.unwrap_or(Duration::from_secs(1)));
        }
    }
}

/// Cycles of durable batches the replica's stream may hold for its apply
/// thread. The thread copies a cycle in a fraction of the time the log
/// write takes, so the queue is empty in steady state; when the PIT's
/// segment writes stall on the disk, the stream waits here rather than
/// holding the writes of up to a whole log bound in memory.
const APPLY_QUEUE: usize = 8;

/// Why an exchange on a sync stream failed, on either side. The text is
/// what the operator reads in the group's status (the primary records it
/// as the reason the link was lost) and in the daemon log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamError {
    /// The link is down: the reason recorded when it was lost.
    #[error("{0}")]
    Lost(String),
    /// The replica did not answer a seal or keepalive in time.
    #[error("the replica did not answer within {secs:.0}s")]
    NoAnswer {
        /// The time allowed, in seconds.
        secs: f64,
    },
    /// Sending on the stream failed (primary).
    #[error("the sync stream failed: {0}")]
    Send(#[source] TransportError),
    /// Sending or reading on the stream failed (replica).
    #[error("the sync stream of group {group} failed: {source}")]
    Link {
        /// The group.
        group: String,
        /// What the transport saw.
        #[source]
        source: TransportError,
    },
    /// A keepalive went unanswered.
    #[error("keepalive: {0}")]
    Keepalive(Box<StreamError>),
    /// The replica refused a seal, or its answer did not decode.
    #[error("sealing the log: {0}")]
    Seal(RemoteError),
    /// The partner sent a message a sync stream does not carry.
    #[error("unexpected {tag} on the sync stream")]
    Unexpected {
        /// The message's tag.
        tag: offsite_protocol::MessageTag,
    },
    /// A batch of writes does not decode.
    #[error("a batch of writes does not decode: {0}")]
    Decode(#[source] offsite_replica_store::LogFormatError),
    /// The replica store failed applying batches to the open PIT.
    #[error(transparent)]
    Store(#[from] offsite_replica_store::ReplicaError),
    /// The replica could not start the thread that applies batches.
    #[error("starting the sync stream's apply thread: {0}")]
    Thread(#[source] io::Error),
    /// Applying acknowledged batches to the open PIT failed (replica).
    #[error("applying the write log to the open PIT: {0}")]
    Apply(Box<StreamError>),
    /// A failover sealed the write log while the stream ran (replica).
    #[error("the group's write log was sealed (failover); no more writes are taken")]
    LogSealed,
    /// Appending a batch to the write log failed (replica).
    #[error("appending to the write log: {0}")]
    Append(#[source] offsite_replica_store::ReplicaError),
    /// Sealing the write log when it reached its bound failed (replica).
    #[error("sealing the full write log of group {group}: {source}")]
    SealFull {
        /// The group.
        group: String,
        /// What the store said.
        #[source]
        source: offsite_replica_store::ReplicaError,
    },
    /// Recording a PIT sealed from the log failed (replica).
    #[error("{0}")]
    Commit(#[from] RemoteError),
    /// The blocking task serving the stream panicked or was cancelled.
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Batches received on a stream, decoded once: each record's fields and
/// where its data lies in its payload. The stream thread decodes them
/// (checking every record's CRC32C) to append them; the apply thread
/// rebuilds the same records from these positions instead of decoding,
/// and checking, every byte a second time (a decoding borrows the
/// payloads, which travel between the threads).
pub(super) struct DecodedBatches {
    payloads: Vec<Bytes>,
    records: Vec<Vec<RecordAt>>,
}

/// A [`LogRecord`] with its data as a range of its payload.
#[derive(Debug, Clone, Copy)]
struct RecordAt {
    seq: u64,
    volume: u16,
    first: u64,
    count: u32,
    /// Offset and length of the data in the payload; `None`: zeroes.
    data: Option<(usize, usize)>,
}

impl DecodedBatches {
    /// Decodes `payloads` (untrusted: every record is checked, see
    /// `offsite_replica_store::decode_records`).
    pub(super) fn decode(payloads: Vec<Bytes>) -> Result<DecodedBatches, StreamError> {
        let records = payloads
            .iter()
            .map(|p| {
                let recs = offsite_replica_store::decode_records(p)?;
                let base = p.as_ptr() as usize;
                Ok(recs
                    .iter()
                    .map(|r| RecordAt {
                        seq: r.seq,
                        volume: r.volume,
                        first: r.first,
                        count: r.count,
                        data: r.data.map(|d| (d.as_ptr() as usize - base, d.len())),
                    })
                    .collect())
            })
            .collect::<Result<_, _>>()
            .map_err(StreamError::Decode)?;
        Ok(DecodedBatches { payloads, records })
    }

    /// Calls `f` with the batches (each with its raw bytes), as the write
    /// log takes them.
    pub(super) fn with<R>(&self, f: impl FnOnce(&[(&[u8], &[LogRecord<'_>])]) -> R) -> R {
        let records: Vec<Vec<LogRecord<'_>>> = self
            .payloads
            .iter()
            .zip(&self.records)
            .map(|(p, recs)| {
                recs.iter()
                    .map(|r| LogRecord {
                        seq: r.seq,
                        volume: r.volume,
                        first: r.first,
                        count: r.count,
                        data: r.data.map(|(at, len)| &p[at..at + len]),
                    })
                    .collect()
            })
            .collect();
        let batches: Vec<(&[u8], &[LogRecord<'_>])> = self
            .payloads
            .iter()
            .zip(&records)
            .map(|(p, d)| (&p[..], &d[..]))
            .collect();
        f(&batches)
    }
}

/// Applies batches made durable by the stream.
fn apply_payloads(applier: LogApplier, batches: &DecodedBatches) -> Result<(), StreamError> {
    Ok(batches.with(|b| applier.apply(b))?)
}

/// Bytes a log record adds to a batch besides its data.
const RECORD_OVERHEAD: usize =
    offsite_replica_store::RECORD_HEADER_LEN + offsite_replica_store::RECORD_TRAILER_LEN;
/// Capacity a new batch's frame starts with: a few 4 KiB writes' records
/// without growing (larger batches grow by doubling, amortized).
const BATCH_START: usize = 64 << 10;

/// The sink a write's records go to while its volume applies it (under
/// the mirror's lock): each record is encoded (header, data, CRC32C)
/// straight into the frame of the batch at the back of the queue, which
/// is the one copy of the write's bytes between the NBD buffer and the
/// TLS record. A batch holds at most [`MAX_BATCH`] bytes: a write that
/// does not fit starts the next one, and a write larger than a batch is
/// split into records of whole blocks over several (only the batch with
/// its last record carries its ticket, so none is acknowledged early).
struct Batcher<'a> {
    queue: &'a mut VecDeque<Item>,
    record_seq: &'a mut u64,
    volume: u16,
    /// The last ticket issued before this write: a batch this write
    /// starts covers up to it until the write is done.
    before: u64,
    /// Where this write started: the queue's length and the back batch's
    /// payload length then (`None`: no batch at the back), and the record
    /// sequence number, to take the write back if it fails.
    start: (usize, Option<usize>, u64),
    /// Record bytes this write encoded.
    added: usize,
    /// Emptied frames to start new batches in.
    spare: Option<&'a mut Vec<BulkFrame>>,
}

impl<'a> Batcher<'a> {
    fn new(
        queue: &'a mut VecDeque<Item>,
        record_seq: &'a mut u64,
        volume: u16,
        before: u64,
    ) -> Self {
        let back = match queue.back() {
            Some(Item::Batch { frame, .. }) => Some(frame.payload_len()),
            _ => None,
        };
        let start = (queue.len(), back, *record_seq);
        Self {
            queue,
            record_seq,
            volume,
            before,
            start,
            added: 0,
            spare: None,
        }
    }

    /// New batches start in these emptied frames while there are some.
    fn with_spares(mut self, spare: &'a mut Vec<BulkFrame>) -> Self {
        self.spare = Some(spare);
        self
    }

    /// The frame the next record of `len` bytes goes to.
    fn frame_for(&mut self, len: usize) -> &mut BulkFrame {
        let room = match self.queue.back() {
            Some(Item::Batch { frame, .. }) => {
                let used = frame.payload_len();
                used == 0 || used + len <= MAX_BATCH
            }
            _ => false,
        };
        if !room {
            let frame = match self.spare.as_mut().and_then(|s| s.pop()) {
                Some(frame) => frame,
                None => BulkFrame::with_capacity(BATCH_START.max(len)),
            };
            self.queue.push_back(Item::Batch {
                frame,
                last: self.before,
            });
        }
        match self.queue.back_mut() {
            Some(Item::Batch { frame, .. }) => frame,
            _ => unreachable!("a batch was pushed at the back"),
        }
    }

    fn encode(&mut self, first: u64, count: u32, data: Option<&[u8]>) {
        let len = RECORD_OVERHEAD + data.map_or(0, <[u8]>::len);
        *self.record_seq += 1;
        self.added += len;
        let rec = LogRecord {
            seq: *self.record_seq,
            volume: self.volume,
            first,
            count,
            data,
        };
        offsite_replica_store::encode_record(&rec, self.frame_for(len).payload_buf());
    }

    /// Takes back everything this write encoded.
    fn undo(self) {
        let (len, back, seq) = self.start;
        self.queue.truncate(len);
        if let (Some(payload), Some(Item::Batch { frame, .. })) = (back, self.queue.back_mut()) {
            frame.truncate_payload(payload);
        }
        *self.record_seq = seq;
    }
}

impl RecordSink for Batcher<'_> {
    fn data(&mut self, first: u64, count: u32, data: &[u8]) {
        // Whole blocks per record, at most a batch's worth each.
        let bs = data.len() / count.max(1) as usize;
        let per = ((MAX_BATCH - RECORD_OVERHEAD) / bs.max(1)).max(1);
        for (i, chunk) in data.chunks(per * bs.max(1)).enumerate() {
            let n = (chunk.len() / bs.max(1)) as u32;
            self.encode(first + (i * per) as u64, n, Some(chunk));
        }
    }

    fn zeroes(&mut self, first: u64, count: u32) {
        self.encode(first, count, None);
    }
}

/// The sink of a write the mirror does not queue (the link is down: the
/// tracker has the write).
struct Discard;

impl RecordSink for Discard {
    fn data(&mut self, _: u64, _: u32, _: &[u8]) {}
    fn zeroes(&mut self, _: u64, _: u32) {}
}

/// The replica's open write logs, by group: the stream session appends,
/// failover seals.
pub(crate) type Logs = Mutex<HashMap<String, Arc<Mutex<Option<WriteLog>>>>>;

impl Replication {
    /// Seals the open log of a sync group at the primary's request, in the
    /// stream's order; the PIT holds exactly the writes before the seal.
    pub(crate) async fn seal(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        name: Option<String>,
        full_cut: bool,
    ) -> Result<PitDesc, ReplError> {
        self.seal_checkpoint(row, mirror, volumes, name, full_cut, &CycleFreeze::None)
            .await
            .map(|c| c.pit)
    }

    /// [`Replication::seal`] as a checkpoint (see `crate::quiesce`): with
    /// [`CycleFreeze::Quiesce`], the VMs are quiesced before the seal is
    /// queued and thawed right after, before it is even sent. Every write
    /// acknowledged before the quiesce hooks returned is in the write order
    /// ahead of the seal marker, and none made after the thaw is, so the
    /// sealed PIT is the quiesced image: the same guarantee as an async
    /// cycle's cut, with the applications held for microseconds.
    pub(crate) async fn seal_checkpoint(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        name: Option<String>,
        full_cut: bool,
        freeze: &CycleFreeze,
    ) -> Result<Checkpoint, ReplError> {
        let created_at = offsite_catalog::now_rfc3339();
        let frozen = match freeze {
            CycleFreeze::Quiesce(f) => Some(self.quiesce_vms(row, f).await),
            CycleFreeze::None | CycleFreeze::Held { .. } => None,
        };
        let app_consistent = match freeze {
            CycleFreeze::None => false,
            CycleFreeze::Quiesce(_) => frozen.as_ref().is_some_and(|f| f.app_consistent()),
            CycleFreeze::Held { app_consistent } => *app_consistent,
        };
        let mut rx = None;
        let time_ns = u64::try_from(self.clock.wall().unix_timestamp_nanos()).unwrap_or(0);
        let queue = || {
            // A quiesced or named seal is also a checkpoint of the journal
            // at the same point of the write order, marked and named so.
            if app_consistent || name.is_some() {
                mirror.queue_checkpoint(time_ns, app_consistent, name.clone());
            }
            rx = mirror.queue_seal(name.clone(), created_at.clone(), app_consistent);
        };
        let cut = if full_cut {
            Site::cut_full_then(volumes, queue).map(drop)
        } else {
            Site::seal_cut(volumes, queue)
        };
        let outcome = match frozen {
            Some(f) => Some(self.thaw_vms(row, f).await),
            None => None,
        };
        cut?;
        let end = |ok: bool| {
            for v in volumes {
                if full_cut {
                    if !ok {
                        v.end_cut(false);
                    }
                } else {
                    v.end_seal(ok);
                }
            }
        };
        let Some((ordinal, rx)) = rx else {
            end(false);
            return Err(invalid(format!(
                "group {} is not in sync ({}); the PIT will be taken once it is resynchronized",
                row.name,
                mirror.why_lost().unwrap_or_default()
            )));
        };
        // Send it (unless a writer is sending: then it goes with that turn)
        // and read until it is answered (unless a waiting writer reads).
        let limit = Duration::from_secs_f64(self.site.config().replication.sync_ack_timeout_secs)
            .max(Duration::from_secs(30));
        let m = mirror.clone();
        let settled = tokio::task::spawn_blocking(move || {
            m.kick();
            m.settle(limit, |st| st.seals_answered >= ordinal)
        })
        .await
        .unwrap_or_else(|e| Err(e.into()));
        if let Err(why) = settled {
            mirror.lose(format!("sealing the log: {why}"));
        }
        let committed = match rx.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                end(false);
                return Err(invalid(format!("group {}: {e}", row.name)));
            }
            Err(_) => {
                end(false);
                return Err(invalid(format!(
                    "group {}: the sync stream ended",
                    row.name
                )));
            }
        };
        end(true);
        let mut committed = committed;
        if app_consistent {
            committed.mark_app_consistent();
        }
        let site = self.site.clone();
        let g = row.name.clone();
        let answer = committed.clone();
        crate::run_blocking(move || Ok(answer.record(&site, &g)?)).await?;
        if let Some(w) = committed.journal {
            self.runners.set_journal_window(&row.name, w);
        }
        // The stream's bytes reach the counters at each seal (not per
        // batch: a catalog write per batch would cost more than the batch).
        let streamed = mirror.stats.take_uncounted();
        self.count_traffic(&row.name, offsite_catalog::TrafficKind::Sync, streamed)
            .await;
        tracing::info!(group = %row.name, pit = committed.pit.id, "sealed the replica's log as a PIT");
        if let Some(o) = &outcome {
            self.record_checkpoint(&row.name, committed.pit.id, o).await;
        }
        Ok(Checkpoint {
            pit: committed.pit,
            freeze: outcome,
        })
    }

    /// `group set NAME --mode`: converts a group at its primary and tells
    /// the replica; the runner switches at once.
    pub async fn set_group_mode(
        self: &Arc<Self>,
        name: &str,
        mode: &str,
    ) -> Result<crate::model::GroupStatus, ReplError> {
        let mode: Mode = mode
            .parse()
            .map_err(|_| invalid(format!("mode {mode:?} is not async, sync or continuous")))?;
        let site = self.site.clone();
        let n = name.to_string();
        let row = crate::run_blocking(move || Ok(site.groups().get(&n)?)).await?;
        if row.role != Role::Primary {
            return Err(invalid(format!(
                "group {name} is a replica here; run `group set` at its primary site {}",
                row.partner
            )));
        }
        if mode == Mode::Continuous {
            crate::primary::refuse_suspend_for_continuous(name, &row.on_link_loss)?;
        }
        if row.mode != mode {
            let site = self.site.clone();
            let n = name.to_string();
            crate::run_blocking(move || Ok(site.set_group_mode(&n, mode)?)).await?;
            // The replica's copy of the setting follows (it matters once a
            // reverse makes it the primary); a failure here is repaired by
            // the next `group set`.
            if let Ok(mut ch) = self.channel(&row.partner, None).await {
                let told = ch
                    .call(&wire::GroupSetMode {
                        app_consistent_every_secs: None,
                        group: name.to_string(),
                        mode: mode.to_string(),
                        rpo_secs: None,
                        keep: None,
                        bandwidth: None,
                        compress: None,
                        vm: None,
                        journal: None,
                    })
                    .await;
                if let Err(e) = told {
                    tracing::warn!(group = name, "telling the replica the new mode: {e}");
                }
                ch.close().await;
            }
            self.wake_runner(name).await;
        }
        self.group_status(name).await
    }

    /// Replica: the primary converted the group.
    pub(crate) async fn answer_set_mode(
        &self,
        peer: &str,
        req: wire::GroupSetMode,
    ) -> Result<Done, RemoteError> {
        let mode: Mode = req.mode.parse().map_err(|_| {
            RemoteError::BadRequest(format!(
                "mode {:?} is not async, sync or continuous",
                req.mode
            ))
        })?;
        if req.keep == Some(0)
            || req
                .rpo_secs
                .is_some_and(|r| !crate::primary::RPO_RANGE.contains(&r))
        {
            return Err(RemoteError::BadRequest(format!(
                "group {}: RPO {:?}s or keep {:?} out of range",
                req.group, req.rpo_secs, req.keep
            )));
        }
        let site = self.site.clone();
        let peer = peer.to_string();
        tokio::task::spawn_blocking(move || {
            let row = site.groups().get(&req.group)?;
            if row.partner != peer {
                return Err(RemoteError::Unauthorized(format!(
                    "group {} replicates with {}, not {peer}",
                    row.name, row.partner
                )));
            }
            site.set_group_mode(&req.group, mode)?;
            if req.rpo_secs.is_some()
                || req.keep.is_some()
                || req.bandwidth.is_some()
                || req.compress.is_some()
            {
                let bandwidth = match req.bandwidth {
                    Some(0) => None,
                    Some(b) => Some(b),
                    None => row.bandwidth,
                };
                site.set_group_settings(
                    &req.group,
                    req.rpo_secs.unwrap_or(row.rpo_secs),
                    req.keep.unwrap_or(row.keep),
                    bandwidth,
                    req.compress.unwrap_or(row.compress),
                )?;
            }
            if let Some(vm) = &req.vm {
                site.groups().set_vm_hooks(&req.group, &vm.to_row())?;
            }
            if let Some(every) = req.app_consistent_every_secs {
                site.set_group_app_consistent_every(&req.group, every)?;
            }
            if let Some(j) = req.journal {
                let j = j.to_settings();
                crate::journal::check(&j).map_err(RemoteError::BadRequest)?;
                // Applied to the journal at the next commit.
                site.set_group_journal(&req.group, &j)?;
            }
            Ok(())
        })
        .await??;
        Ok(Done)
    }
}

#[cfg(test)]
mod journal_tests;
#[cfg(test)]
mod rounds_tests;
#[cfg(test)]
mod tests;
