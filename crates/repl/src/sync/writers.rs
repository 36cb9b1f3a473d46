//! The replica's log writers: the appends of a sync stream that are on
//! their way to the disk together, and the order in which they are
//! acknowledged.
//!
//! The stream thread stages an append ([`WriteLog::stage`]: its place in
//! the log, whole pages no other append touches) and hands it to one of
//! [`LOG_WRITES`] writer threads, then goes back to the socket: the next
//! batch is staged and written while this one is still being written. A
//! writer makes its append durable, then waits for its *turn* (appends
//! commit, are acknowledged and are applied in the order they were
//! staged), commits it, acknowledges it to the primary, and hands it to the
//! apply thread.
//!
//! Why threads and not one thread writing bigger batches: a disk (a virtio
//! disk in particular) serves two synchronous writes in not much more time
//! than one. Measured on the development VM with fio (40 KiB `O_DIRECT`
//! `O_DSYNC` writes): 4,034 writes/s at 247 µs with one in flight, 6,029
//! at 330 µs with two, 6,803 with three. The log write is ~60 % of a
//! replica cycle (docs/benchmarks.md, stop 13), so a second write in
//! flight is the largest lever on a sync group's throughput.
//!
//! [`WriteLog::stage`]: offsite_replica::WriteLog::stage

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard};

use bytes::Bytes;
use offsite_protocol::{ErrorCode, Message};
use offsite_replica::{LogApplier, LogWrite};
use offsite_transport::DirectStream;

/// Appends written at once. Two take most of what the disk gives (see the
/// module docs); more make each batch smaller and its write no faster.
pub(crate) const LOG_WRITES: usize = 2;

/// An append for a writer: its ticket (staging order), the append, the
/// last primary ticket in it (what its acknowledgement covers) and the
/// batches (for the apply thread).
pub(crate) type Job = (u64, LogWrite, u64, Vec<Bytes>);

/// A committed append on its way into the open PIT.
pub(crate) type Applied = (LogApplier, Vec<Bytes>);

#[derive(Debug, Default)]
struct Turns {
    /// Appends handed to writers.
    staged: u64,
    /// Appends done (committed and acknowledged, or failed): the ticket
    /// whose turn it is.
    done: u64,
    /// Why the pipeline stopped: an append failed or the primary can no
    /// longer be told. Nothing after it is acknowledged.
    failed: Option<String>,
}

/// The appends in flight of one stream (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Pipeline {
    turns: Mutex<Turns>,
    changed: Condvar,
    /// Payload bytes the stream thread has read from the socket: every
    /// acknowledgement carries it (the primary sends its next batch once
    /// the replica has read everything sent).
    pub(crate) received: AtomicU64,
    /// Appends handed to writers, how many of them while another one was
    /// in flight, and the time their writes took (for the stream's
    /// summary in the log: whether the pipeline fills).
    appends: AtomicU64,
    overlapped: AtomicU64,
    write_nanos: AtomicU64,
}

impl Pipeline {
    fn lock(&self) -> MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why the pipeline stopped, if it did.
    pub(crate) fn failed(&self) -> Option<String> {
        self.lock().failed.clone()
    }

    fn fail(&self, why: String) {
        let mut t = self.lock();
        t.failed.get_or_insert(why);
        self.changed.notify_all();
    }

    /// Waits until fewer than `depth` appends are in flight; the ticket
    /// of the next one. Fails once the pipeline stopped.
    pub(crate) fn wait_room(&self, depth: usize) -> Result<u64, String> {
        let mut t = self.lock();
        loop {
            if let Some(why) = &t.failed {
                return Err(why.clone());
            }
            if t.staged - t.done < depth as u64 {
                return Ok(t.staged);
            }
            t = self.changed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Counts an append handed to a writer.
    pub(crate) fn staged(&self) {
        let mut t = self.lock();
        if t.staged > t.done {
            self.overlapped.fetch_add(1, Ordering::Relaxed);
        }
        t.staged += 1;
        self.appends.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends so far, how many were staged while another was in flight,
    /// and their writes' mean time in microseconds.
    pub(crate) fn summary(&self) -> (u64, u64, u64) {
        let n = self.appends.load(Ordering::Relaxed);
        let nanos = self.write_nanos.load(Ordering::Relaxed);
        (
            n,
            self.overlapped.load(Ordering::Relaxed),
            nanos / n.max(1) / 1000,
        )
    }

    /// Waits until every append handed to a writer is done (a seal comes
    /// after all of them). Fails once the pipeline stopped.
    pub(crate) fn wait_idle(&self) -> Result<(), String> {
        self.wait_room(1).map(drop)
    }

    /// A writer thread: writes its appends, then commits, acknowledges and
    /// hands each to the apply thread in its turn. Returns when `jobs`
    /// closes.
    pub(crate) fn writer(
        &self,
        group: &str,
        stream: &DirectStream,
        jobs: Receiver<Job>,
        apply: &SyncSender<Applied>,
    ) {
        for (ticket, write, last, payloads) in jobs {
            let t0 = std::time::Instant::now();
            let durable = write.write();
            self.write_nanos
                .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            let mut t = self.lock();
            while t.done != ticket {
                t = self.changed.wait(t).unwrap_or_else(|e| e.into_inner());
            }
            let stopped = t.failed.is_some();
            drop(t);
            // After a failure nothing more is acknowledged; dropping the
            // append fails the log, which replays its file on next use.
            if !stopped {
                match durable.and_then(|d| d.commit()) {
                    Ok(applier) => {
                        let ack = Message::BulkAck {
                            seq: last,
                            bytes: self.received.load(Ordering::Acquire),
                        };
                        if let Err(e) = stream.send(&ack) {
                            self.fail(format!("the sync stream of group {group} failed: {e}"));
                        }
                        // Durable batches belong in the open PIT even when
                        // the primary can no longer hear about them (a
                        // failover seals them). Waits while the apply
                        // thread is behind; fails only if that thread
                        // died: the dropped applier then makes the next
                        // seal replay the log.
                        let _ = apply.send((applier, payloads));
                    }
                    Err(e) => {
                        let why = format!("appending to the write log: {e}");
                        tracing::warn!(group, "{why}");
                        let _ = stream.send(&Message::error(ErrorCode::Internal, why.clone()));
                        self.fail(why);
                    }
                }
            }
            let mut t = self.lock();
            t.done = ticket + 1;
            self.changed.notify_all();
        }
    }
}
