//! The runner of a sync or continuous group while it replicates: attaches
//! the mirror, resynchronizes (a sync group with ordinary cycles, a
//! continuous one in rounds, see `rounds`), opens the stream, seals
//! on the RPO timer, applies the link-loss policy, and detaches when the
//! group leaves its mode. A continuous group's mirror never makes a write
//! wait and resynchronizes at once after a spill (see `continuous`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use offsite_catalog::GroupRow;
use offsite_catalog::{GroupState, Mode, Role};
use offsite_engine::{Volume, WriteMirror};
use offsite_transport::DirectStream;
use tokio::sync::mpsc;

use super::rounds::{RoundsEnd, RoundsLimits};
use super::{CATCH_UP_BYTES, Policy, SyncMirror, Wait};
use crate::primary::{Command, MirrorSlot, answer};
use crate::wire;
use crate::{RemoteError, ReplError, Replication};

impl Replication {
    /// The runner of a sync group while it is replicating: attaches the
    /// mirror, resynchronizes, streams, seals; returns when the group
    /// leaves sync mode (mirror detached; `true`) or the runner must stop
    /// (`false`).
    pub(crate) async fn run_sync(
        self: &Arc<Self>,
        row: &GroupRow,
        rx: &mut mpsc::Receiver<Command>,
        slot: &MirrorSlot,
        schedule: &mut Option<String>,
    ) -> bool {
        let volumes = match self.live_volumes(row).await {
            Ok(v) => v,
            Err(e) => {
                self.record_error(&row.name, &format!("opening the volumes: {e}"))
                    .await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                return true;
            }
        };
        let stats = self
            .runners
            .get(&row.name)
            .map(|r| r.sync_stats)
            .unwrap_or_default();
        let ack_timeout =
            Duration::from_secs_f64(self.site.config().replication.sync_ack_timeout_secs);
        let mirror = match row.mode {
            Mode::Continuous => SyncMirror::continuous(
                &row.name,
                ack_timeout,
                self.site.config().replication.continuous_queue_bytes,
                stats,
                self.clock.clone(),
            ),
            _ => SyncMirror::new(
                &row.name,
                Policy::of(row),
                ack_timeout,
                stats,
                self.clock.clone(),
            ),
        };
        for (i, v) in volumes.iter().enumerate() {
            v.set_mirror(Some((mirror.clone() as Arc<dyn WriteMirror>, i as u16)));
        }
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some((mirror.clone(), true));
        let keep = self
            .sync_loop(row, rx, slot, &mirror, &volumes, schedule)
            .await;
        for v in &volumes {
            v.set_mirror(None);
        }
        mirror.detach();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
        keep
    }

    async fn set_sync_state(&self, group: &str, state: GroupState, error: Option<String>) {
        let site = self.site.clone();
        let g = group.to_string();
        // Only the sync runner's own states move here (checked and written
        // in one transaction): a prepare or pause in the meantime wins.
        let moved = tokio::task::spawn_blocking(move || {
            site.move_group_state(
                &g,
                &[GroupState::Replicating, GroupState::Resynchronizing],
                state,
                error.as_deref(),
            )
        })
        .await;
        match moved {
            Ok(Ok(_)) => {}
            Ok(Err(offsite_engine::EngineError::Catalog(e))) if e.unexpected_state().is_some() => {}
            Ok(Err(e)) => tracing::warn!(group, %state, "recording the group's state: {e}"),
            Err(e) => tracing::warn!(group, %state, "recording the group's state: {e}"),
        }
    }

    /// Whether the group still streams in `mode` here (a change between
    /// sync and continuous restarts the runner's loop with a new mirror).
    async fn still_sync(&self, group: &str, mode: Mode) -> bool {
        let site = self.site.clone();
        let g = group.to_string();
        matches!(
            tokio::task::spawn_blocking(move || site.groups().get(&g)).await,
            Ok(Ok(r)) if r.role == Role::Primary
                && r.mode == mode
                && matches!(r.state, GroupState::Replicating | GroupState::Resynchronizing)
        )
    }

    /// Waits `backoff` while answering commands; `Some(keep)` when the
    /// runner must leave the sync loop.
    async fn resync_pause(
        &self,
        row: &GroupRow,
        rx: &mut mpsc::Receiver<Command>,
        backoff: Duration,
        why: &str,
    ) -> Option<bool> {
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                c = rx.recv() => match c {
                    Some(Command::Sync { reply, .. }) => {
                        answer(reply, Err(RemoteError::Conflict(format!(
                            "group {} is resynchronizing with its partner ({why}); retry once it is in sync",
                            row.name
                        ))));
                    }
                    Some(Command::Verify { reply }) => {
                        answer(reply, Err(RemoteError::Conflict(format!(
                            "group {} is resynchronizing ({why}); verify once it is in sync",
                            row.name
                        ))));
                    }
                    Some(Command::Resync { reply }) => {
                        answer(reply, Err(RemoteError::Conflict(format!(
                            "group {} is resynchronizing ({why}); run resync once it is in sync",
                            row.name
                        ))));
                    }
                    Some(Command::Wake) => {
                        if !self.still_sync(&row.name, row.mode).await {
                            return Some(true);
                        }
                    }
                    None => return Some(false),
                },
            }
        }
    }

    /// The sync group's life while it replicates: catch up with cycles,
    /// cut over to the stream, mirror until the link is lost, and start
    /// again; returns as [`Self::run_sync`] does.
    async fn sync_loop(
        self: &Arc<Self>,
        row: &GroupRow,
        rx: &mut mpsc::Receiver<Command>,
        slot: &MirrorSlot,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        schedule: &mut Option<String>,
    ) -> bool {
        let mut backoff = Duration::from_millis(500);
        loop {
            // A continuous group resynchronizes in rounds without a
            // copy-on-write cut per cycle (see `rounds`); a sync group
            // keeps its catch-up cycles, which release writes held by
            // `suspend-writes` at every commit.
            let stream = if mirror.waits() == Wait::Acks {
                if let Some(keep) = self.catch_up(row, rx, slot, mirror, &mut backoff).await {
                    return keep;
                }
                self.last_cut(row, mirror).await
            } else {
                match self
                    .catch_up_in_rounds(row, rx, slot, mirror, &mut backoff)
                    .await
                {
                    Ok(()) => self.open_after_last_cut(row, mirror).await,
                    Err(keep) => return keep,
                }
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    let why = format!("starting the sync stream: {e}");
                    mirror.lose(why.clone());
                    if let Some(keep) = self.resync_pause(row, rx, backoff, &why).await {
                        return keep;
                    }
                    continue;
                }
            };
            self.go_in_sync(row, slot, mirror, stream).await;
            let lost = match self
                .mirror_until_lost(row, rx, mirror, volumes, schedule)
                .await
            {
                InSyncEnd::Lost(why) => why,
                InSyncEnd::Leave(keep) => return keep,
            };
            if mirror.spilled() {
                // The partner is there, only slower than the writes: catch
                // up at once (a lost link waits out its backoff).
                self.note_spill(row, &lost).await;
                continue;
            }
            self.note_link_lost(row, mirror, volumes, &lost).await;
            if let Some(keep) = self.resync_pause(row, rx, backoff, &lost).await {
                return keep;
            }
        }
    }

    /// Resynchronizes: cycles until one ships little; each one covers the
    /// writes before its cut. The group is `degraded`/`suspended` until a
    /// catch-up cycle gets through, `resynchronizing` from then on.
    /// `Some(keep)` when the runner must leave the sync loop.
    async fn catch_up(
        &self,
        row: &GroupRow,
        rx: &mut mpsc::Receiver<Command>,
        slot: &MirrorSlot,
        mirror: &Arc<SyncMirror>,
        backoff: &mut Duration,
    ) -> Option<bool> {
        let name = row.name.clone();
        let set_resyncing = |on: bool| {
            if let Some(s) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                s.1 = on;
            }
        };
        set_resyncing(false);
        self.set_sync_state(&name, GroupState::Resynchronizing, mirror.why_lost())
            .await;
        loop {
            let at = AtomicU64::new(0);
            match self
                .cycle_then(row, None, false, || {
                    at.store(mirror.issued(), Ordering::Relaxed)
                })
                .await
            {
                Ok((pit, _)) => {
                    mirror.cover(at.load(Ordering::Relaxed));
                    set_resyncing(true);
                    *backoff = Duration::from_millis(500);
                    if pit.bytes <= CATCH_UP_BYTES {
                        return None;
                    }
                }
                Err(e) => {
                    let why = e.to_string();
                    set_resyncing(false);
                    if let Some(keep) = self.resync_pause(row, rx, *backoff, &why).await {
                        return Some(keep);
                    }
                    *backoff = (*backoff * 2).min(Duration::from_secs(15));
                }
            }
            if !self.still_sync(&name, row.mode).await {
                return Some(true);
            }
        }
    }

    /// A continuous group's resynchronization: PITs of rounds (see
    /// `rounds`) until one ends with the last cut (the mirror queues
    /// writes for the stream from there on). The group is
    /// `resynchronizing` throughout; a failure waits out `backoff`.
    /// `Err(keep)` when the runner must leave the sync loop.
    async fn catch_up_in_rounds(
        &self,
        row: &GroupRow,
        rx: &mut mpsc::Receiver<Command>,
        slot: &MirrorSlot,
        mirror: &Arc<SyncMirror>,
        backoff: &mut Duration,
    ) -> Result<(), bool> {
        let name = row.name.clone();
        let set_resyncing = |on: bool| {
            if let Some(s) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
                s.1 = on;
            }
        };
        set_resyncing(false);
        self.set_sync_state(&name, GroupState::Resynchronizing, mirror.why_lost())
            .await;
        loop {
            let ended = self
                .resync_in_rounds(
                    row,
                    mirror,
                    RoundsLimits::of(row, self.site.config().replication.cycle_secs),
                    || self.still_sync(&name, row.mode),
                )
                .await;
            match ended {
                Ok(RoundsEnd::Committed { caught_up, .. }) => {
                    set_resyncing(true);
                    *backoff = Duration::from_millis(500);
                    if caught_up {
                        return Ok(());
                    }
                }
                Ok(RoundsEnd::Left) => return Err(true),
                Err(e) => {
                    let why = e.to_string();
                    // A failure after the last cut leaves the mirror
                    // queueing with no stream to send it on; before it,
                    // the link keeps the reason it was lost for.
                    if mirror.lost().is_none() {
                        mirror.lose(why.clone());
                    }
                    set_resyncing(false);
                    if let Some(keep) = self.resync_pause(row, rx, *backoff, &why).await {
                        return Err(keep);
                    }
                    *backoff = (*backoff * 2).min(Duration::from_secs(15));
                }
            }
            if !self.still_sync(&name, row.mode).await {
                return Err(true);
            }
        }
    }

    /// The stream opened after the last cut's PIT was committed.
    async fn open_after_last_cut(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
    ) -> Result<DirectStream, ReplError> {
        let (stream, begun) = self.open_stream(row).await?;
        mirror.accept_checkpoints(begun.checkpoints);
        Ok(stream)
    }

    /// The last cut: from here on writes queue for the stream, which is
    /// opened once the cycle has shipped everything before the cut.
    async fn last_cut(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
    ) -> Result<DirectStream, ReplError> {
        let at = AtomicU64::new(0);
        mirror.set_queue_bytes(self.site.config().replication.continuous_queue_bytes);
        self.cycle_then(row, None, false, || {
            at.store(mirror.issued(), Ordering::Relaxed);
            mirror.set_up();
        })
        .await?;
        mirror.cover(at.load(Ordering::Relaxed));
        self.open_after_last_cut(row, mirror).await
    }

    /// The group is in sync: recorded (state and event) and the queued
    /// writes go to the replica over `stream`.
    async fn go_in_sync(
        &self,
        row: &GroupRow,
        slot: &MirrorSlot,
        mirror: &Arc<SyncMirror>,
        stream: DirectStream,
    ) {
        if let Some(s) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            s.1 = false;
        }
        self.set_sync_state(&row.name, GroupState::Replicating, None)
            .await;
        let site = self.site.clone();
        let g = row.name.clone();
        let what = match mirror.waits() {
            Wait::Acks => {
                "in sync: every write reaches the replica's log before it is acknowledged"
            }
            Wait::Never { .. } => {
                "streaming: every write is queued to the replica's log as it happens"
            }
        };
        crate::warn_if_failed(
            "recording the group as in sync",
            crate::run_blocking(move || {
                site.note("group.sync", &g, what);
                Ok(())
            })
            .await,
        );
        let m = mirror.clone();
        // `attach` cannot fail; a panic in it is the task's to report.
        drop(tokio::task::spawn_blocking(move || m.attach(stream)).await);
        if mirror.waits() != Wait::Acks {
            mirror.start_continuous();
        }
    }

    /// A continuous group's queue spilled: recorded (error and event); the
    /// runner resynchronizes at once.
    async fn note_spill(&self, row: &GroupRow, why: &str) {
        self.record_error(&row.name, &format!("continuous replication spilled: {why}"))
            .await;
        let site = self.site.clone();
        let (g, w) = (row.name.clone(), why.to_string());
        crate::warn_if_failed(
            "recording the spill",
            crate::run_blocking(move || {
                site.note("group.sync", &g, &format!("spilled: {w}"));
                Ok(())
            })
            .await,
        );
    }

    /// Mirrors the writes while in sync: seals on the RPO timer, keeps the
    /// link alive and answers commands, until the link is lost or the
    /// runner leaves the sync loop.
    async fn mirror_until_lost(
        self: &Arc<Self>,
        row: &GroupRow,
        rx: &mut mpsc::Receiver<Command>,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        schedule: &mut Option<String>,
    ) -> InSyncEnd {
        let name = row.name.clone();
        let mut period = Duration::from_secs(row.rpo_secs.max(30));
        let mut seal_timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let every = Duration::from_secs_f64(self.site.config().replication.keepalive_secs);
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut checkpoints = checkpoint_timer(row.journal.checkpoint_interval_ms);
        loop {
            tokio::select! {
                _ = checkpoints.tick() => self.queue_checkpoint(mirror).await,
                _ = mirror.wake.notified() => {
                    if let Some(why) = mirror.lost() {
                        return InSyncEnd::Lost(why);
                    }
                }
                _ = keepalive.tick() => {
                    let m = mirror.clone();
                    // The reason is the link's status text from here on.
                    let alive = tokio::task::spawn_blocking(move || m.keepalive())
                        .await
                        .unwrap_or_else(|e| Err(e.into()))
                        .map_err(|e| e.to_string());
                    if let Err(why) = alive {
                        // A link already lost (a spill, an acknowledgement
                        // deadline) keeps the reason it was lost for.
                        if let Some(lost) = mirror.lost() {
                            return InSyncEnd::Lost(lost);
                        }
                        mirror.lose(why.clone());
                        return InSyncEnd::Lost(why);
                    }
                }
                _ = seal_timer.tick() => {
                    // The schedule's application-consistent PIT, when one
                    // is due, is this seal. `row` is as the stream started:
                    // the schedule and the VMs' hooks are read again.
                    let site = self.site.clone();
                    let g = name.clone();
                    let freeze = match tokio::task::spawn_blocking(move || site.groups().get(&g)).await {
                        Ok(Ok(now)) => self.due_checkpoint(&now, schedule).await.unwrap_or_default(),
                        _ => Default::default(),
                    };
                    if let Err(e) = self.seal_checkpoint(row, mirror, volumes, None, false, &freeze).await {
                        tracing::warn!(group = %name, "scheduled seal failed: {e}");
                    }
                }
                c = rx.recv() => match c {
                    Some(Command::Sync { pit_name, freeze, reply }) => {
                        let r = self.seal_checkpoint(row, mirror, volumes, pit_name, false, &freeze).await.map_err(RemoteError::from);
                        answer(reply, r);
                    }
                    Some(Command::Verify { reply }) => {
                        let r = self.verify_sync(row, mirror, volumes).await.map_err(RemoteError::from);
                        answer(reply, r);
                    }
                    Some(Command::Resync { reply }) => {
                        let progress = self.runners.get(&name).map_or_else(Default::default, |r| r.progress);
                        let r = self.resync_sync(row, mirror, volumes, &progress).await.map_err(RemoteError::from);
                        answer(reply, r);
                    }
                    Some(Command::Wake) => {
                        if !self.still_sync(&name, row.mode).await {
                            self.stop_stream(mirror, volumes).await;
                            return InSyncEnd::Leave(true);
                        }
                        if let Some(p) = self.new_seal_period(&name, period).await {
                            period = p;
                            seal_timer = tokio::time::interval_at(tokio::time::Instant::now() + p, p);
                        }
                        if let Some(ms) = self.new_checkpoint_interval(&name, checkpoints.period()).await {
                            checkpoints = checkpoint_timer(ms);
                        }
                    }
                    None => {
                        self.stop_stream(mirror, volumes).await;
                        return InSyncEnd::Leave(false);
                    }
                },
            }
        }
    }

    /// Queues a journal checkpoint stamped with this site's clock and sends
    /// it (unless a writer is sending: then it goes with that turn).
    pub(super) async fn queue_checkpoint(&self, mirror: &Arc<SyncMirror>) {
        let time_ns = u64::try_from(self.clock.wall().unix_timestamp_nanos()).unwrap_or(0);
        if mirror.queue_checkpoint(time_ns, false, None) {
            let m = mirror.clone();
            // A failed send loses the link, which the wake arm sees.
            drop(tokio::task::spawn_blocking(move || m.kick()).await);
        }
    }

    /// `group set --checkpoint-interval`: the new interval in
    /// milliseconds, if it is not `period`.
    async fn new_checkpoint_interval(&self, group: &str, period: Duration) -> Option<u64> {
        let site = self.site.clone();
        let g = group.to_string();
        match tokio::task::spawn_blocking(move || site.groups().get(&g)).await {
            Ok(Ok(r)) => Some(r.journal.checkpoint_interval_ms)
                .filter(|&ms| Duration::from_millis(ms.max(1)) != period),
            _ => None,
        }
    }

    /// `group set --rpo`: the new seal period, if it changed from
    /// `period`, to seal on from now on.
    async fn new_seal_period(&self, group: &str, period: Duration) -> Option<Duration> {
        let site = self.site.clone();
        let g = group.to_string();
        match tokio::task::spawn_blocking(move || site.groups().get(&g)).await {
            Ok(Ok(r)) => Some(Duration::from_secs(r.rpo_secs.max(30))).filter(|&p| p != period),
            _ => None,
        }
    }

    /// The partner is lost: from now on writes may be ones the replica
    /// never sees if it takes over (split-brain evidence), so the volumes
    /// record them; the error and the event say why.
    async fn note_link_lost(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        lost: &str,
    ) {
        mirror.lose(lost.to_string());
        let (site, vols) = (self.site.clone(), volumes.to_vec());
        crate::warn_if_failed(
            "recording that the volumes write without the replica",
            crate::run_blocking(move || {
                for v in &vols {
                    v.begin_isolation(site.layout())?;
                }
                Ok(())
            })
            .await,
        );
        self.record_error(&row.name, &format!("sync replication interrupted: {lost}"))
            .await;
        let site = self.site.clone();
        let (g, l) = (row.name.clone(), lost.to_string());
        crate::warn_if_failed(
            "recording the group as out of sync",
            crate::run_blocking(move || {
                site.note("group.sync", &g, &format!("out of sync: {l}"));
                Ok(())
            })
            .await,
        );
    }

    /// Ends mirroring on purpose: new writes are no longer queued, what is
    /// queued is sent, then the stream ends (the replica seals its log).
    async fn stop_stream(&self, mirror: &Arc<SyncMirror>, volumes: &[Arc<Volume>]) {
        for v in volumes {
            v.set_mirror(None);
        }
        let m = mirror.clone();
        // `finish` logs its own failure; a panic in it is the task's to report.
        drop(tokio::task::spawn_blocking(move || m.finish(Duration::from_secs(60))).await);
        mirror.detach();
        let streamed = mirror.stats.take_uncounted();
        self.count_traffic(&mirror.group, offsite_catalog::TrafficKind::Sync, streamed)
            .await;
    }

    /// Opens the stream of a sync group: a session whose connection the
    /// writers' threads then drive themselves ([`DirectStream`]).
    /// Also returns what the replica takes on it (an older one: no
    /// checkpoints).
    async fn open_stream(
        &self,
        row: &GroupRow,
    ) -> Result<(DirectStream, wire::SyncStreamBegun), ReplError> {
        let mut ch = self.channel(&row.partner, Some(row)).await?;
        let begun = ch.call(&wire::SyncStreamBegin::new(&row.name)).await?;
        Ok((ch.into_direct().await?, begun))
    }

    /// `verify` of a sync group: a full cut whose seal is queued at the
    /// cut, so the sealed PIT is the cut's image; then the block compare.
    async fn verify_sync(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
    ) -> Result<crate::model::VerifyResult, ReplError> {
        let pit = self.seal(row, mirror, volumes, None, true).await?;
        let result = self.compare(row, pit.id, volumes).await;
        for v in volumes {
            v.end_cut(true);
        }
        let per = result?;
        Ok(crate::model::VerifyResult {
            group: row.name.clone(),
            pit: pit.id,
            blocks_compared: per.iter().map(|v| v.blocks_compared).sum(),
            differing_blocks: per.iter().map(|v| v.differing_blocks).sum(),
            volumes: per,
        })
    }
}

/// The journal's checkpoint timer: every `ms` milliseconds, the first one
/// interval from now; a late tick is not caught up (one checkpoint covers
/// the writes of the whole gap).
fn checkpoint_timer(ms: u64) -> tokio::time::Interval {
    let every = Duration::from_millis(ms.max(1));
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// How a sync group's time in sync ended.
enum InSyncEnd {
    /// The link to the replica was lost (why): resynchronize.
    Lost(String),
    /// The runner leaves the sync loop: `true` when the group left sync
    /// mode (mirror detached), `false` when the runner must stop.
    Leave(bool),
}
