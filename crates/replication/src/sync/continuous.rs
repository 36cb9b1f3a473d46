//! Continuous replication: the sync stream without the wait.
//!
//! A continuous group runs the sync runner (resynchronization, the last cut,
//! the stream, seals on the RPO timer, which also bound the replica's log)
//! with a mirror whose writes never wait for the replica
//! ([`Wait::Never`]): the NBD thread encodes the write's records into the
//! batch at the back of the queue — the one copy, as in sync mode — and
//! returns; [`ready`](offsite_engine::WriteMirror::ready) is true at once.
//! Two threads of the mirror's own drive the stream
//! ([`DirectStream`] allows one sender and one reader at a time):
//!
//! - the *sender* sleeps until a writer queues a batch that may go out
//!   (the same pipelining rule as sync, [`SyncMirror::may_send`]: once the
//!   replica has read everything sent); a writer wakes it only when it
//!   sleeps, so a busy stream costs no futex call per write;
//! - the *acknowledgement reader* reads the replica's acknowledgements,
//!   covers the tickets (which is what the lag is measured by), sends what
//!   gathered once the replica reports it has read the last batch, and
//!   loses the link when a batch goes unacknowledged for
//!   `replication.sync_ack_timeout_secs`.
//!
//! **Bounded queue, spill.** The bytes queued and in flight are held under
//! `replication.continuous_queue_bytes`. A write that takes them over it
//! *spills*: the queue is dropped, the link counts as lost with the reason
//! ("the replica fell behind: N MiB queued"), writes go on tracked only,
//! and the runner resynchronizes at once (no backoff: the partner is there,
//! only slow) and returns to streaming by itself. A lost link is sync's
//! `degrade`; `suspend-writes` is refused for continuous groups.
//!
//! **Why nothing is lost.** Every write is marked in the volume's change
//! tracker before it is applied ([`offsite_engine::Volume`]'s write path),
//! and a seal clears from the tracker only the blocks it sealed, after the
//! replica committed them. A queue dropped by a spill or a lost link, or
//! batches the replica never acknowledged, are therefore still dirty in the
//! tracker, and the resynchronization ships them before the stream
//! restarts: in rounds read straight from the volumes and one short cut
//! (`super::rounds`), not catch-up cycles, so that catching up does not
//! make every write pay a copy-on-write.
//!
//! **Lag** ("how many seconds of writes the replica does not have yet"):
//! 0 when every write submitted is acknowledged; otherwise the age of the
//! oldest write not yet acknowledged, kept per [`BUCKET`] of submission
//! time; while spilled or resynchronizing, [`SyncMirror::lag`] says `None`
//! and the status falls back to the age of the newest committed PIT.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use offsite_transport::DirectStream;

use super::{Link, MState, READ_SLICE, SyncMirror};
use crate::clock::Clock;

/// Whether a write waits for the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    /// Sync: a write completes once the replica acknowledged it (or the
    /// link-loss policy says otherwise).
    Acks,
    /// Continuous: a write completes locally; at most `queue_bytes` are
    /// queued and in flight before the queue spills.
    Never {
        /// `replication.continuous_queue_bytes` when the mirror was made.
        queue_bytes: u64,
    },
}

/// The body of one of a continuous stream's threads.
type StreamLoop = fn(&SyncMirror, &Arc<DirectStream>);

/// The lag's resolution: a new submission-time bucket starts when the
/// newest is this old, so the lag overstates by at most this much and
/// costs a clock read and a compare per write.
pub(crate) const BUCKET: Duration = Duration::from_millis(10);

/// Forgets the submission times of acknowledged writes: the front bucket
/// is kept while it holds the oldest write not yet acknowledged.
pub(super) fn drop_covered(st: &mut MState) {
    if st.covered >= st.issued {
        st.since.clear();
        return;
    }
    let oldest = st.covered + 1;
    while st.since.len() >= 2 && st.since[1].0 <= oldest {
        st.since.pop_front();
    }
}

/// How long the oldest write not yet acknowledged has waited at `now`
/// (zero when every write is acknowledged; `None` when its time is not
/// known: writes from before the stream's last cut).
pub(super) fn pending_age(st: &MState, now: Instant) -> Option<Duration> {
    if st.covered >= st.issued {
        return Some(Duration::ZERO);
    }
    st.since
        .front()
        .map(|&(_, t)| now.saturating_duration_since(t))
}

impl SyncMirror {
    /// The mirror of a continuous group (see the module docs).
    pub(crate) fn continuous(
        group: &str,
        ack_timeout: Duration,
        queue_bytes: u64,
        stats: Arc<super::SyncStats>,
        clock: Arc<dyn Clock>,
    ) -> Arc<SyncMirror> {
        Self::build(
            group,
            super::Policy::Degrade,
            Wait::Never { queue_bytes },
            ack_timeout,
            stats,
            clock,
        )
    }

    /// A continuous mirror's bound from now on (the configuration may have
    /// been reloaded since the mirror was made).
    pub(crate) fn set_queue_bytes(&self, bytes: u64) {
        if self.wait != Wait::Acks {
            self.queue_bound.store(bytes, Ordering::Relaxed);
        }
    }

    /// Whether writes wait for the replica.
    pub(crate) fn waits(&self) -> Wait {
        self.wait
    }

    /// A continuous write was queued (under the lock): notes when, spills
    /// past the bound, else wakes the sender if it sleeps.
    pub(super) fn queued_continuous(&self, st: &mut MState, ticket: u64, added: u64, hold: bool) {
        st.queued_bytes += added;
        let now = self.clock.now();
        match st.since.back() {
            Some(&(_, t)) if now.saturating_duration_since(t) < BUCKET => {}
            _ => st.since.push_back((ticket, now)),
        }
        let behind = st.queued_bytes + st.flight_bytes;
        if behind > self.queue_bound.load(Ordering::Relaxed) {
            self.spill_locked(st, behind);
        } else if !hold {
            self.wake_sender(st);
        }
    }

    /// Wakes the sender thread if it sleeps and there is something it may
    /// send (one wake-up per sleep, however many writes queue meanwhile).
    pub(super) fn wake_sender(&self, st: &mut MState) {
        if st.sender_asleep && Self::may_send(st) {
            st.sender_asleep = false;
            self.send_cond.notify_one();
        }
    }

    /// Drops the queue that outgrew its bound: the link counts as lost
    /// (the tracker has every write; the runner resynchronizes at once).
    fn spill_locked(&self, st: &mut MState, behind: u64) {
        let why = format!(
            "the replica fell behind: {} MiB queued (replication.continuous_queue_bytes is {} MiB); \
             writes are tracked and shipped by a resynchronization",
            behind >> 20,
            self.queue_bound.load(Ordering::Relaxed) >> 20
        );
        self.stats.spills.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(group = %self.group, "continuous replication spilled: {why}");
        st.spilled = true;
        self.end_locked(st, Link::Lost, Some(why));
    }

    /// Whether the link was lost by a spill (resynchronize at once) rather
    /// than by the partner.
    pub(crate) fn spilled(&self) -> bool {
        let st = self.lock();
        st.link == Link::Lost && st.spilled
    }

    /// How long the oldest write the replica has not acknowledged has
    /// waited (zero when it has them all); `None` while the stream is not
    /// running (spilled, lost, resynchronizing: the newest PIT says).
    pub(crate) fn lag(&self) -> Option<Duration> {
        let st = self.lock();
        if st.link != Link::Up || st.stream.is_none() {
            return None;
        }
        pending_age(&st, self.clock.now())
    }

    /// Bytes of writes queued or in flight to the replica.
    pub(crate) fn backlog_bytes(&self) -> u64 {
        let st = self.lock();
        st.queued_bytes + st.flight_bytes
    }

    /// Starts the sender and the acknowledgement reader of the stream just
    /// [attached](SyncMirror::attach); they end with it.
    pub(crate) fn start_continuous(self: &Arc<Self>) {
        let Some(stream) = self.lock().stream.clone() else {
            return;
        };
        let loops: [(&str, StreamLoop); 2] = [
            ("offsite-stream-send", SyncMirror::send_loop),
            ("offsite-stream-acks", SyncMirror::ack_loop),
        ];
        for (name, body) in loops {
            let (m, s) = (self.clone(), stream.clone());
            let started = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&m, &s));
            if let Err(e) = started {
                self.lose(format!("starting the stream's thread {name}: {e}"));
                return;
            }
        }
    }

    /// Whether `stream` is still the mirror's running stream.
    fn runs(st: &MState, stream: &Arc<DirectStream>) -> bool {
        st.link == Link::Up && st.stream.as_ref().is_some_and(|s| Arc::ptr_eq(s, stream))
    }

    /// The sender thread: sends what may go, sleeps until woken.
    fn send_loop(&self, stream: &Arc<DirectStream>) {
        let mut st = self.lock();
        loop {
            if !Self::runs(&st, stream) {
                st.sender_asleep = false;
                return;
            }
            if Self::may_send(&st) {
                st.sending = true;
                drop(st);
                self.pump();
                st = self.lock();
                continue;
            }
            st.sender_asleep = true;
            // The timeout only bounds a missed wake-up; writers and the
            // end of the stream notify.
            st = self
                .send_cond
                .wait_timeout(st, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.sender_asleep = false;
        }
    }

    /// The acknowledgement reader: reading turns until the stream ends (a
    /// seal's or keepalive's waiter may take a turn meanwhile).
    fn ack_loop(&self, stream: &Arc<DirectStream>) {
        let mut st = self.lock();
        loop {
            if !Self::runs(&st, stream) {
                return;
            }
            if st.reading {
                st.sleepers += 1;
                st = self
                    .cond
                    .wait_timeout(st, READ_SLICE)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                st.sleepers -= 1;
                continue;
            }
            st = self.read_turn(st, None);
        }
    }
}
