//! The replica's side of a sync stream: the group's write log opened (a
//! leftover one sealed first), batches appended durably and acknowledged
//! with group commit, applied to the open PIT on a second thread, and the
//! log sealed into a PIT on request or when the stream ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use offsite_catalog::{GroupState, Role};
use offsite_protocol::{ErrorCode, Message};
use offsite_replica_store::{Consistency, LogApplier, ReplicaStore, WriteLog};
use offsite_transport::{DirectStream, TransportError};

use super::{APPLY_QUEUE, DecodedBatches, StreamError, apply_payloads};
use crate::RemoteError;
use crate::Replication;
use crate::control::{Rpc, respond};
use crate::replica_side::storage_error;
use crate::wire::{self, PitCommitted, PitDesc};

impl Replication {
    /// Replica: a stream begins; opens the group's write log (sealing what
    /// an earlier stream left).
    pub(crate) async fn begin_stream(
        &self,
        peer: &str,
        req: wire::SyncStreamBegin,
    ) -> Result<(String, Arc<ReplicaStore>, Arc<Mutex<Option<WriteLog>>>), RemoteError> {
        let (row, store) = self.store(&req.group).await?;
        if row.partner != peer {
            return Err(RemoteError::Unauthorized(format!(
                "group {} replicates from {}, not from {peer}",
                row.name, row.partner
            )));
        }
        if matches!(
            row.state,
            GroupState::FailedOver | GroupState::PreparedForFailover
        ) {
            return Err(RemoteError::Conflict(format!(
                "group {} is {} on site {}; it takes no more writes from {peer}",
                row.name,
                row.state,
                self.site.config().name
            )));
        }
        self.seal_log(&req.group).await?;
        let slot = self
            .replica
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(req.group.clone())
            .or_default()
            .clone();
        let st = store.clone();
        let s2 = slot.clone();
        let group = req.group.clone();
        // A streaming group's journal is history (pruned after commits).
        let history = crate::journal::history_of(&row);
        tokio::task::spawn_blocking(move || {
            let mut log = st.open_log().map_err(|e| {
                storage_error(format!("opening the write log of group {group}: {e}"), &e)
            })?;
            log.set_history(history);
            *s2.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
            Ok::<_, RemoteError>(())
        })
        .await??;
        tracing::info!(group = %req.group, partner = %peer, "sync stream started");
        Ok((req.group, store, slot))
    }

    /// Replica: serves a sync stream on this (blocking) thread until the
    /// primary ends it. Batches that arrived together are appended with
    /// one fsync and acknowledged with one message carrying the last
    /// batch's sequence number (the primary's last ticket in it); seals are
    /// answered in stream order, so a PIT holds exactly the writes before
    /// its seal. `Ok` when the primary said `Bye`.
    ///
    /// Acknowledged batches are applied to the open PIT by a second thread
    /// while this one writes the next batch (the log's seal waits for it).
    pub(crate) fn serve_stream(
        &self,
        stream: &DirectStream,
        group: &str,
        store: &Arc<ReplicaStore>,
        slot: &Arc<Mutex<Option<WriteLog>>>,
    ) -> Result<(), StreamError> {
        let (jobs, queue) =
            std::sync::mpsc::sync_channel::<(LogApplier, DecodedBatches)>(APPLY_QUEUE);
        let apply_failed = Mutex::new(None::<StreamError>);
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("sync-apply".into())
                .spawn_scoped(scope, || {
                    for (applier, batches) in queue {
                        if let Err(e) = apply_payloads(applier, &batches) {
                            let why = StreamError::Apply(Box::new(e));
                            tracing::warn!(group, "{why}");
                            apply_failed
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(why);
                        }
                    }
                })
                .map_err(StreamError::Thread)?;
            let r = self.stream_loop(stream, group, store, slot, &jobs, &apply_failed);
            drop(jobs);
            r
        })
    }

    /// Replica: reads the stream, appends each cycle of batches with one
    /// fsync (group commit) and acknowledges it, answers seal requests,
    /// until the primary ends the stream or something fails. Blocking.
    fn stream_loop(
        &self,
        stream: &DirectStream,
        group: &str,
        store: &Arc<ReplicaStore>,
        slot: &Arc<Mutex<Option<WriteLog>>>,
        jobs: &std::sync::mpsc::SyncSender<(LogApplier, DecodedBatches)>,
        apply_failed: &Mutex<Option<StreamError>>,
    ) -> Result<(), StreamError> {
        let silent = Duration::from_secs_f64(self.site.config().replication.dead_after_secs);
        let lost = |source: TransportError| StreamError::Link {
            group: group.to_string(),
            source,
        };
        // Payload bytes read so far: every acknowledgement carries it, and
        // the primary sends its next batch once it has read everything
        // (see `SyncMirror::may_send`).
        let mut received = 0u64;
        let mut acked = 0u64;
        // Messages read and not yet handled, in stream order.
        let mut ahead = VecDeque::new();
        loop {
            if let Some(why) = apply_failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                // The stream ends with this error either way; telling the
                // primary why is a courtesy a broken link cannot carry.
                drop(stream.send(&Message::error(ErrorCode::Internal, why.to_string())));
                return Err(why);
            }
            let waited = ahead.is_empty();
            if waited
                && !wait_for_messages(stream, &mut ahead, &mut received, silent).map_err(lost)?
            {
                return Ok(());
            }
            let (payloads, last, other) = take_cycle(&mut ahead);
            if !payloads.is_empty() {
                // A batch's sequence number is its last ticket, so this
                // cycle holds `last - acked` writes. One alone is a
                // writer at queue depth 1: nothing gathers behind it, and
                // an early report would only cost a send here (before the
                // log write) and a wake-up at the primary.
                if waited && last.saturating_sub(acked) > 1 {
                    // The pipeline had run dry: the primary learns now, not
                    // after the write, that it may send what gathers.
                    stream
                        .send(&Message::BulkAck {
                            seq: acked,
                            bytes: received,
                        })
                        .map_err(lost)?;
                }
                let durable = || {
                    // What arrived during the write is read now, so this
                    // acknowledgement also says it was taken, and the next
                    // batch travels while that one is written.
                    read_available(stream, &mut ahead, &mut received, true).map_err(lost)?;
                    stream
                        .send(&Message::BulkAck {
                            seq: last,
                            bytes: received,
                        })
                        .map_err(lost)
                };
                let apply = |applier, payloads| {
                    // Waits while the apply thread is APPLY_QUEUE cycles
                    // behind. Fails only if that thread died: the dropped
                    // applier then makes the next seal replay the log.
                    drop(jobs.send((applier, payloads)));
                };
                if let Err(e) = self.append_batches(group, store, slot, payloads, durable, apply) {
                    // As above: the error ends the stream; the message is a courtesy.
                    drop(stream.send(&Message::error(ErrorCode::Internal, e.to_string())));
                    return Err(e);
                }
                acked = last;
            }
            self.answer_on_stream(stream, group, store, slot, other)?;
        }
    }

    /// Answers a message on the stream other than a batch: a seal request
    /// is answered, a pong (or nothing) needs no answer, anything else
    /// ends the stream.
    fn answer_on_stream(
        &self,
        stream: &DirectStream,
        group: &str,
        store: &Arc<ReplicaStore>,
        slot: &Arc<Mutex<Option<WriteLog>>>,
        other: Option<Message>,
    ) -> Result<(), StreamError> {
        match other {
            None | Some(Message::Pong { .. }) => Ok(()),
            Some(Message::Request {
                id,
                kind: wire::kinds::SYNC_SEAL,
                body,
            }) => {
                let answer = wire::SyncSeal::decode(&body)
                    .map_err(RemoteError::from)
                    .and_then(|req| self.seal_stream(group, store, slot, req));
                if let Err(e) = &answer {
                    tracing::warn!(group, "sealing the write log: {e}");
                }
                let (ok, body) = respond(answer);
                stream
                    .send(&Message::Response { id, ok, body })
                    .map_err(|source| StreamError::Link {
                        group: group.to_string(),
                        source,
                    })
            }
            Some(Message::Request {
                kind: wire::kinds::SYNC_CHECKPOINT,
                body,
                ..
            }) => {
                // Never answered (the primary counts answers as seals').
                match wire::SyncCheckpoint::decode(&body) {
                    Ok(req) => self.checkpoint_on_stream(group, slot, req),
                    Err(e) => tracing::warn!(group, "a checkpoint on the stream: {e}"),
                }
                Ok(())
            }
            Some(m) => {
                let why = StreamError::Unexpected { tag: m.tag() };
                // As above: the error ends the stream; the message is a courtesy.
                drop(stream.send(&Message::error(
                    ErrorCode::UnexpectedMessage,
                    why.to_string(),
                )));
                Err(why)
            }
        }
    }

    /// Replica: appends batches durably, all with one fsync, then calls
    /// `durable` (the acknowledgement), then hands them to `apply` with the
    /// log's applier (holding the log throughout, so no seal comes between
    /// the append and the hand-over; a seal waits for the applier).
    /// Blocking.
    pub(super) fn append_batches(
        &self,
        group: &str,
        store: &Arc<ReplicaStore>,
        slot: &Arc<Mutex<Option<WriteLog>>>,
        payloads: Vec<Bytes>,
        durable: impl FnOnce() -> Result<(), StreamError>,
        apply: impl FnOnce(LogApplier, DecodedBatches),
    ) -> Result<(), StreamError> {
        // Decoded (and checked) before the log is locked: a seal or a
        // checkpoint waiting for it need not wait for the CRC32Cs too.
        let batches = DecodedBatches::decode(payloads)?;
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        let log = guard.as_mut().ok_or(StreamError::LogSealed)?;
        let applier = batches
            .with(|b| log.append_durable(b))
            .map_err(StreamError::Append)?;
        // Durable batches belong in the open PIT even when the primary can
        // no longer hear about them (a failover seals them).
        let acked = durable();
        apply(applier, batches);
        acked?;
        // The log (and the open PIT's in-memory index) stays bounded
        // whatever the primary's seal schedule: any prefix of the write
        // order is crash-consistent, so the replica may seal on its own.
        // The primary's tracker keeps those blocks until its next seal:
        // a superset, never a loss.
        if log.bytes() >= self.site.config().replication.sync_log_max_bytes {
            let info = log
                .seal(None, offsite_catalog::now_rfc3339())
                .map_err(|source| StreamError::SealFull {
                    group: group.to_string(),
                    source,
                })?;
            drop(guard);
            tracing::info!(
                group,
                pit = info.id.get(),
                "write log reached its bound; sealed"
            );
            crate::replica_side::after_commit(&self.site, store, group, &info, false)?;
        }
        Ok(())
    }

    /// Replica: appends the primary's checkpoint to the journal after every
    /// batch before it on the stream (those were appended first: the
    /// stream is read in order). A checkpoint that cannot be appended is
    /// lost, not the writes: the log's next append or seal meets the same
    /// failure and ends the stream. Blocking.
    pub(super) fn checkpoint_on_stream(
        &self,
        group: &str,
        slot: &Arc<Mutex<Option<WriteLog>>>,
        req: wire::SyncCheckpoint,
    ) {
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        // Sealed by a failover: no more history is taken.
        let Some(log) = guard.as_mut() else {
            return;
        };
        let consistency = if req.app_consistent {
            Consistency::Application
        } else {
            Consistency::Crash
        };
        if let Err(e) = log.checkpoint(req.time_ns, consistency, req.name) {
            tracing::warn!(group, "appending a checkpoint to the journal: {e}");
        }
    }

    /// Replica: seals the stream's log as a PIT, keeping the log open.
    /// Blocking.
    pub(super) fn seal_stream(
        &self,
        group: &str,
        store: &Arc<ReplicaStore>,
        slot: &Arc<Mutex<Option<WriteLog>>>,
        wire::SyncSeal(req): wire::SyncSeal,
    ) -> Result<PitCommitted, RemoteError> {
        let info = {
            let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            let log = guard.as_mut().ok_or_else(|| {
                RemoteError::Conflict("the group's write log was sealed (failover)".into())
            })?;
            log.seal(req.name, req.created_at).map_err(|e| {
                crate::replica_side::note_fenced(&self.site, group, &e);
                storage_error(format!("sealing the write log of group {group}: {e}"), &e)
            })?
        };
        crate::replica_side::after_commit(&self.site, store, group, &info, req.app_consistent)
    }

    /// Replica: seals and closes the group's write log — the open one of a
    /// stream, or one left on disk — so that its writes are a PIT (the
    /// stream ended, a failover needs the newest state). Returns the PIT,
    /// if there was anything to seal.
    pub(crate) async fn seal_log(&self, group: &str) -> Result<Option<PitDesc>, RemoteError> {
        self.seal_log_inner(group, false).await
    }

    /// Seals the group's write log into a PIT but keeps a running stream
    /// going (a test failover wants the newest writes; replication goes on).
    pub(crate) async fn seal_log_keep(&self, group: &str) -> Result<Option<PitDesc>, RemoteError> {
        self.seal_log_inner(group, true).await
    }

    async fn seal_log_inner(
        &self,
        group: &str,
        keep: bool,
    ) -> Result<Option<PitDesc>, RemoteError> {
        let row = {
            let site = self.site.clone();
            let g = group.to_string();
            tokio::task::spawn_blocking(move || site.groups().get(&g)).await??
        };
        if row.role != Role::Replica {
            return Ok(None);
        }
        let (row, store) = self.store(group).await?;
        let history = crate::journal::history_of(&row);
        let slot = self
            .replica
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(group)
            .cloned();
        let (site, g) = (self.site.clone(), group.to_string());
        tokio::task::spawn_blocking(move || {
            let created_at = offsite_catalog::now_rfc3339();
            let info = match slot {
                Some(s) => {
                    let mut guard = s.lock().unwrap_or_else(|e| e.into_inner());
                    match guard.as_mut() {
                        Some(log) if keep => {
                            if log.records() == 0 {
                                Ok(None)
                            } else {
                                log.seal(None, created_at).map(Some)
                            }
                        }
                        Some(_) => guard.take().expect("log").finish(created_at),
                        None => store.seal_leftover_log_with(created_at, history),
                    }
                }
                None => store.seal_leftover_log_with(created_at, history),
            }
            .map_err(|e| storage_error(format!("sealing the write log of group {g}: {e}"), &e))?;
            match info {
                Some(info) => {
                    tracing::info!(group = %g, pit = info.id.get(), "sealed the write log");
                    crate::replica_side::after_commit(&site, &store, &g, &info, false)
                        .map(|c| Some(c.pit))
                }
                None => Ok(None),
            }
        })
        .await?
    }
}
/// Waits (at most `silent`) for the next message, then takes whatever
/// else has arrived with it; `false` when the primary ended the stream.
fn wait_for_messages(
    stream: &DirectStream,
    ahead: &mut VecDeque<Message>,
    received: &mut u64,
    silent: Duration,
) -> Result<bool, TransportError> {
    let Some(first) = stream.recv(Some(silent))? else {
        return Ok(false);
    };
    if let Message::BulkData { payload, .. } = &first {
        *received += payload.len() as u64;
    }
    ahead.push_back(first);
    read_available(stream, ahead, received, false)?;
    Ok(true)
}

/// Queues the messages that can be had without waiting, counting the
/// batches' payload bytes into `received`; `fresh` asks the socket even if
/// it was drained a moment ago (the caller did something slow since).
fn read_available(
    stream: &DirectStream,
    ahead: &mut VecDeque<Message>,
    received: &mut u64,
    fresh: bool,
) -> Result<(), TransportError> {
    let mut next = if fresh {
        stream.recv_now()
    } else {
        stream.try_recv()
    };
    while let Some(m) = next? {
        if let Message::BulkData { payload, .. } = &m {
            *received += payload.len() as u64;
        }
        ahead.push_back(m);
        next = stream.try_recv();
    }
    Ok(())
}

/// This cycle: the batches at the front, made durable together, with the
/// sequence number of the last; or, if none is at the front, the message
/// there.
fn take_cycle(ahead: &mut VecDeque<Message>) -> (Vec<Bytes>, u64, Option<Message>) {
    let mut payloads = Vec::new();
    let mut last = 0;
    while let Some(Message::BulkData { .. }) = ahead.front() {
        let Some(Message::BulkData { seq, payload }) = ahead.pop_front() else {
            unreachable!("the front is a batch");
        };
        last = seq;
        payloads.push(payload);
    }
    let other = if payloads.is_empty() {
        ahead.pop_front()
    } else {
        None
    };
    (payloads, last, other)
}
