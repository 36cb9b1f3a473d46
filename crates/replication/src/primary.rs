//! The primary side of a replication group: creation (checked by the
//! replica at once), initial replication over the network (resumable),
//! delta cycles on the RPO schedule (consistent cut, ship, commit on the
//! replica as a PIT), `sync`, pause/resume, status, measure and verify.
//!
//! One runner task per group owns its cycles, so cycles of a group never
//! overlap; commands (`sync`, `pause`, ...) reach it over a channel.
//!
//! The states a group moves through and the legal moves between them (on
//! both sites) are drawn and enforced in one place, `offsite_catalog::state`
//! (its diagram is checked against the enum and the transition table);
//! here the runner acts on `initial-replication` and `replicating` (a sync
//! group also on `resynchronizing`) and waits in every other state.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use crate::model::{CreateGroup, GroupStatus, PitEntry, SyncResult, VerifyResult};
use offsite_catalog::{GroupRow, GroupVolumeRow, TrafficKind};
use offsite_catalog::{GroupState, Mode, Role};
use offsite_engine::{Site, Volume};
use offsite_protocol::BulkFrame;
use offsite_transport::TokenBucket;
use tokio::sync::{mpsc, oneshot};

pub(crate) use crate::channel::PeerLink;
use crate::decide::{self, Asked, Turn};
use crate::quiesce::{Consistency, CycleFreeze, FreezeOutcome};
use crate::wire::{
    self, GroupCreate, GroupCreated, PitCommit, PitCommitted, PitDesc, VmDesc, VolumeDesc,
};
use crate::{RemoteError, ReplError, Replication, invalid};

/// Blocks per batch frame at most (1 MiB of 4 KiB blocks).
pub(crate) const MAX_BATCH_BYTES: u64 = 1 << 20;
/// Initial replication makes the replica's base durable, and records
/// progress, every this many bytes of each volume.
pub(crate) const BASE_CHECKPOINT: u64 = 64 << 20;
/// Smallest and largest RPO.
pub const RPO_RANGE: std::ops::RangeInclusive<u64> = 30..=86_400;

/// A PIT a `sync` made, and what its checkpoint did to the VMs (when
/// it asked for an application-consistent one).
#[derive(Debug, Clone)]
pub(crate) struct Checkpoint {
    /// The PIT committed.
    pub(crate) pit: PitDesc,
    /// The quiesce and thaw hooks' outcome, when the runner ran them.
    pub(crate) freeze: Option<FreezeOutcome>,
}

/// Commands a group's runner obeys.
#[derive(Debug)]
pub(crate) enum Command {
    /// Run a cycle now (a checkpoint, with `freeze`); reply with its PIT.
    Sync {
        pit_name: Option<String>,
        freeze: CycleFreeze,
        reply: oneshot::Sender<Result<Checkpoint, RemoteError>>,
    },
    /// Verify the replica against a fresh full cut; reply with the result.
    Verify {
        reply: oneshot::Sender<Result<VerifyResult, RemoteError>>,
    },
    /// Compare every block with the replica at a fresh cut and ship the
    /// blocks that differ (`group resync`); reply with the result.
    Resync {
        reply: oneshot::Sender<Result<crate::model::ResyncResult, RemoteError>>,
    },
    /// Re-read the state from the catalog (after start/pause/resume).
    Wake,
}

/// Answers a [`Command`]. The asker may have stopped waiting (`sync`
/// without `--wait`, a request whose client went away): the outcome is
/// recorded in the catalog either way, so an answer nobody takes is dropped.
pub(crate) fn answer<T>(reply: oneshot::Sender<Result<T, RemoteError>>, r: Result<T, RemoteError>) {
    drop(reply.send(r));
}

/// In-memory progress of a running transfer, for status.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    /// Payload bytes of block data sent by initial replication (this daemon's lifetime).
    pub(crate) sent: AtomicU64,
    pub(crate) done: AtomicU64,
    pub(crate) total: AtomicU64,
    /// Bytes of data the volumes hold (estimated from the files'
    /// allocation: holes are skipped without reading, so scanned bytes make
    /// a poor progress and rate), how many are copied (the part before a
    /// resumed attempt's checkpoint estimated the same way), and how many
    /// were when this attempt started.
    pub(crate) data_total: AtomicU64,
    pub(crate) data_done: AtomicU64,
    pub(crate) data_start: AtomicU64,
    /// When this attempt started and how far the volumes were then (the
    /// ETA is from this attempt's rate, not from resumed progress).
    pub(crate) started: std::sync::Mutex<Option<(Instant, u64)>>,
    /// The last instant at which the replica was known to hold every
    /// write (RFC 3339): the cut of the newest PIT this daemon committed,
    /// or an idle cycle that found nothing to ship. `None` until this
    /// daemon's first commit.
    pub(crate) confirmed: std::sync::Mutex<Option<String>>,
    /// A cycle shipping now: when it started, its bytes in all (the cut's
    /// blocks) and those sent.
    pub(crate) cycle: std::sync::Mutex<Option<(Instant, u64, u64)>>,
    /// A running `group resync`: when it started and how far it is.
    pub(crate) resync: std::sync::Mutex<Option<(Instant, crate::model::ResyncProgress)>>,
}

/// A cycle's progress in its runner's [`Progress`] while it ships; gone
/// when the cycle ends, whichever way.
pub(crate) struct CycleTrack(Option<Arc<Progress>>);

impl CycleTrack {
    pub(crate) fn start(progress: Option<Arc<Progress>>, total: u64) -> CycleTrack {
        if let Some(p) = &progress {
            *p.cycle.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), total, 0));
        }
        CycleTrack(progress)
    }

    /// `bytes` more to send (a resynchronization's next round).
    pub(crate) fn grow(&self, bytes: u64) {
        if let Some(p) = &self.0
            && let Some((_, total, _)) = p.cycle.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
        {
            *total += bytes;
        }
    }

    pub(crate) fn sent(&self, bytes: u64) {
        if let Some(p) = &self.0
            && let Some((_, _, sent)) = p.cycle.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
        {
            *sent += bytes;
        }
    }
}

impl Drop for CycleTrack {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            *p.cycle.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

/// A sync group's mirror while its runner has one, and whether it is
/// resynchronizing.
pub(crate) type MirrorSlot = Arc<std::sync::Mutex<Option<(Arc<crate::sync::SyncMirror>, bool)>>>;

/// A runner's handle.
#[derive(Debug, Clone)]
pub(crate) struct Runner {
    tx: mpsc::Sender<Command>,
    pub(crate) progress: Arc<Progress>,
    pub(crate) mirror: MirrorSlot,
    /// Counters of the group's sync mirrors (this daemon's lifetime).
    pub(crate) sync_stats: Arc<crate::sync::SyncStats>,
}

impl Runner {
    /// A new runner's handle and the queue its loop takes commands from.
    pub(crate) fn new() -> (Runner, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(16);
        let runner = Runner {
            tx,
            progress: Arc::new(Progress::default()),
            mirror: Default::default(),
            sync_stats: Default::default(),
        };
        (runner, rx)
    }

    /// Where the runner takes its commands.
    pub(crate) fn tx(&self) -> &mpsc::Sender<Command> {
        &self.tx
    }

    /// Has the runner re-read the group from the catalog. A runner that
    /// has stopped (its group torn down, the daemon shutting down) has
    /// nothing to re-read, so a closed channel is not an error.
    pub(crate) async fn wake(&self) {
        drop(self.tx.send(Command::Wake).await);
    }
}

pub(crate) fn age_seconds(rfc3339: &str) -> u64 {
    let Ok(t) =
        time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
    else {
        return 0;
    };
    (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0) as u64
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, offsite_engine::EngineError> + Send + 'static,
) -> Result<T, ReplError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| invalid(format!("internal error: {e}")))?
        .map_err(ReplError::Engine)
}

/// Shortest and longest interval between scheduled application-consistent
/// PITs (`--app-consistent-every`; 0 turns them off): each one holds the
/// applications for an instant, so not more often than a minute.
pub const APP_CONSISTENT_EVERY_RANGE: std::ops::RangeInclusive<u64> = 60..=30 * 86_400;

/// `--app-consistent-every` checked: 0 (off) or within
/// [`APP_CONSISTENT_EVERY_RANGE`].
pub(crate) fn check_app_consistent_every(secs: u64) -> Result<(), ReplError> {
    if secs == 0 || APP_CONSISTENT_EVERY_RANGE.contains(&secs) {
        return Ok(());
    }
    Err(invalid(format!(
        "--app-consistent-every {secs}s is outside 1m..30d; use e.g. 1h, or 0 (or off) to turn it off"
    )))
}

/// A schedule of application-consistent PITs needs something to quiesce:
/// refused (saying what to do) for a group none of whose VMs has a quiesce
/// hook.
pub(crate) fn check_schedule_quiescable(
    group: &str,
    vms: &[offsite_catalog::VmRow],
    secs: u64,
) -> Result<(), ReplError> {
    match crate::quiesce::nothing_to_quiesce(group, vms) {
        Some(why) if secs > 0 => Err(invalid(format!("--app-consistent-every: {why}"))),
        _ => Ok(()),
    }
}

/// A continuous group's writes never wait for the replica, so the
/// `suspend-writes` link-loss policy (writes wait, then fail) cannot apply
/// to it: refused rather than silently ignored.
pub(crate) fn refuse_suspend_for_continuous(
    group: &str,
    on_link_loss: &str,
) -> Result<(), ReplError> {
    if on_link_loss == "suspend-writes" {
        return Err(invalid(format!(
            "group {group}: continuous mode never makes a write wait for the replica, so it \
             cannot suspend writes when the link is lost (--on-link-loss suspend-writes); \
             use --on-link-loss degrade (the default) for a continuous group, or sync mode \
             to keep suspend-writes"
        )));
    }
    Ok(())
}

/// A new group's settings, checked: its mode, link-loss policy and
/// suspend timeout (defaults filled in), RPO, retention and bandwidth.
fn checked_settings(req: &CreateGroup) -> Result<(Mode, String, u64), ReplError> {
    offsite_engine::names::validate("group", &req.name)?;
    let mode: Mode = req.mode.parse().map_err(|_| {
        invalid(format!(
            "mode {:?} is not async, sync or continuous",
            req.mode
        ))
    })?;
    let on_link_loss = req.on_link_loss.clone().unwrap_or_else(|| "degrade".into());
    if !matches!(on_link_loss.as_str(), "degrade" | "suspend-writes") {
        return Err(invalid(format!(
            "--on-link-loss {on_link_loss:?} is neither degrade nor suspend-writes"
        )));
    }
    if mode == Mode::Continuous {
        refuse_suspend_for_continuous(&req.name, &on_link_loss)?;
    }
    let suspend_timeout_secs = req.suspend_timeout_secs.unwrap_or(30);
    if !(1..=3600).contains(&suspend_timeout_secs) {
        return Err(invalid(format!(
            "--suspend-timeout {suspend_timeout_secs}s is outside 1s..1h"
        )));
    }
    if !RPO_RANGE.contains(&req.rpo_secs) {
        return Err(invalid(format!(
            "RPO {}s is outside 30s..24h; use e.g. --rpo 5m",
            req.rpo_secs
        )));
    }
    if !(1..=crate::model::MAX_KEEP).contains(&req.keep) {
        return Err(invalid(format!(
            "--keep {} is outside 1..{}",
            req.keep,
            crate::model::MAX_KEEP
        )));
    }
    if let Some(bw) = req.bandwidth_bytes_per_sec {
        offsite_engine::check_bandwidth(bw)?;
    }
    check_app_consistent_every(req.app_consistent_every_secs.unwrap_or(0))?;
    Ok((mode, on_link_loss, suspend_timeout_secs))
}

/// Answers a runner command that cannot run while group `name` is
/// `state`: a request is refused, saying why; `false` once the runner's
/// channel is closed (the runner stops).
fn refuse_while(name: &str, state: GroupState, command: Option<Command>) -> bool {
    let refusal = |asked| RemoteError::Conflict(decide::refused_while(name, state, asked));
    match command {
        Some(Command::Sync { reply, .. }) => answer(reply, Err(refusal(Asked::Sync))),
        Some(Command::Verify { reply }) => answer(reply, Err(refusal(Asked::Verify))),
        Some(Command::Resync { reply }) => answer(reply, Err(refusal(Asked::Resync))),
        Some(Command::Wake) => {}
        None => return false,
    }
    true
}

/// The refusal when a replica answered an encrypted group's
/// `GROUP_CREATE` without keeping its key (an offsite from before
/// encryption): the group is undone there rather than replicated in the
/// clear.
pub(crate) fn old_replica_for_encryption(partner: &str, group: &str) -> ReplError {
    invalid(format!(
        "site {partner} runs an offsite that cannot encrypt replicas, so group {group} was not created; upgrade offsite at {partner}, or create the group without --encrypt"
    ))
}

impl Replication {
    /// `group create` at the primary: validates locally, has the replica
    /// validate and create its side (authorization, storage, space, name),
    /// then records the group.
    pub async fn create_group(&self, req: CreateGroup) -> Result<GroupStatus, ReplError> {
        let (mode, on_link_loss, suspend_timeout_secs) = checked_settings(&req)?;
        let _serial = self.create_lock.lock().await;
        let (volumes, vms) = self.group_members(&req).await?;
        if volumes.len() > usize::from(u16::MAX) {
            return Err(invalid("a group holds at most 65535 volumes".into()));
        }
        let every = req.app_consistent_every_secs.unwrap_or(0);
        let journal = crate::journal::checked(
            offsite_catalog::JournalSettings::default(),
            req.checkpoint_interval_ms,
            req.journal_history_secs,
            req.journal_max_bytes,
        )?;

        // Made and kept here (durably) before anything is sealed with it.
        let key = if req.encrypt {
            Some(self.new_group_key(&req.name).await?)
        } else {
            None
        };
        let created: Result<GroupCreated, ReplError> = async {
            let mut ch = self.channel(&req.partner, None).await?;
            let created: GroupCreated = ch
                .call(&GroupCreate {
                    group: req.name.clone(),
                    mode: req.mode.clone(),
                    rpo_secs: req.rpo_secs,
                    keep: req.keep,
                    security_tag: req.security_tag.clone(),
                    on_link_loss: on_link_loss.clone(),
                    suspend_timeout_secs,
                    volumes: volumes.clone(),
                    vms: vms.clone(),
                    bandwidth: req.bandwidth_bytes_per_sec.filter(|b| *b > 0),
                    compress: req.compress.unwrap_or(true),
                    app_consistent_every_secs: every,
                    journal: Some(crate::wire::JournalDesc::of(&journal)),
                    pits_after: 0,
                    key: key.as_ref().map(|k| crate::wire::KeyLine(k.export())),
                })
                .await?;
            ch.close().await;
            if key.is_some() && !created.encrypted {
                self.undo_replica_side(&req.partner, &req.name).await;
                return Err(old_replica_for_encryption(&req.partner, &req.name));
            }
            Ok(created)
        }
        .await;
        let created = match created {
            Ok(c) => c,
            Err(e) => {
                if req.encrypt {
                    self.forget_new_group_key(&req.name).await;
                }
                return Err(e);
            }
        };
        let site = self.site.clone();
        let row = GroupRow {
            name: req.name.clone(),
            role: Role::Primary,
            partner: req.partner.clone(),
            mode,
            rpo_secs: req.rpo_secs,
            keep: req.keep,
            bandwidth: req.bandwidth_bytes_per_sec.filter(|b| *b > 0),
            compress: req.compress.unwrap_or(true),
            security_tag: req.security_tag.clone(),
            state: GroupState::ReadyForInitialReplication,
            store_dir: None,
            created_at: String::new(),
            state_changed_at: String::new(),
            last_error: None,
            on_link_loss,
            suspend_timeout_secs,
            needs_resync: None,
            last_drill_at: None,
            app_consistent_every_secs: every,
            quiesce_error: None,
            journal,
            volumes: volumes
                .iter()
                .map(|v| GroupVolumeRow {
                    volume: v.name.clone(),
                    size_bytes: v.size_bytes,
                    block_size: v.block_size,
                    initial_done_bytes: 0,
                })
                .collect(),
            vms: vms.iter().map(VmDesc::to_row).collect(),
        };
        let name = req.name.clone();
        if let Err(e) = blocking(move || site.insert_group_row(&row)).await {
            self.undo_replica_side(&req.partner, &name).await;
            if req.encrypt {
                self.forget_new_group_key(&name).await;
            }
            return Err(e);
        }
        tracing::info!(group = %name, replica = %req.partner, store = %created.store_dir, rule = %created.rule, "group created");
        self.group_status(&name).await
    }

    /// A new key for group `group`, saved at this site (DATA/keys/GROUP.key,
    /// 0600, durably) before anything is sealed with it.
    async fn new_group_key(&self, group: &str) -> Result<offsite_objects::GroupKey, ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        blocking(move || {
            let key = offsite_objects::GroupKey::generate();
            offsite_engine::objects::save_group_key(site.layout(), &g, &key)?;
            Ok(key)
        })
        .await
    }

    /// Removes the key [`Replication::new_group_key`] saved for a group
    /// whose creation failed (nothing was replicated with it).
    async fn forget_new_group_key(&self, group: &str) {
        let path = self.site.layout().group_key(group);
        crate::warn_if_failed(
            &format!("removing the unused key {}", path.display()),
            std::fs::remove_file(&path),
        );
    }

    /// Group `group`'s key as its export line when this site holds one
    /// (the group's replicas are encrypted), for a `GROUP_CREATE`.
    pub(crate) async fn group_key_line(
        &self,
        group: &str,
    ) -> Result<Option<crate::wire::KeyLine>, ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        blocking(move || {
            if !site.layout().group_key(&g).exists() {
                return Ok(None);
            }
            Ok(Some(crate::wire::KeyLine(
                offsite_engine::objects::load_group_key(site.layout(), &g)?.export(),
            )))
        })
        .await
    }

    /// The volumes a new group replicates — its VMs' and the ones named,
    /// each once, ready and in no other group — and its VMs, checked with
    /// the partner and the group's name in the catalog.
    async fn group_members(
        &self,
        req: &CreateGroup,
    ) -> Result<(Vec<VolumeDesc>, Vec<VmDesc>), ReplError> {
        let site = self.site.clone();
        let r = req.clone();
        blocking(move || {
            site.partner(&r.partner)?;
            if let Ok(g) = site.groups().get(&r.name) {
                return Err(offsite_engine::EngineError::Conflict(format!(
                    "a replication group named {:?} already exists here ({} with {})",
                    g.name, g.role, g.partner
                )));
            }
            let mut names: Vec<String> = Vec::new();
            let mut vms: Vec<VmDesc> = Vec::new();
            for vm in &r.vms {
                let vm = site.vm(vm)?;
                names.extend(vm.volumes.iter().cloned());
                if !vms.iter().any(|v| v.name == vm.name) {
                    vms.push(VmDesc {
                        name: vm.name,
                        volumes: vm.volumes,
                        start: vm.start,
                        stop: vm.stop,
                        status: vm.status,
                        libvirt_xml: vm.libvirt_xml,
                        quiesce: vm.quiesce,
                        thaw: vm.thaw,
                    });
                }
            }
            names.extend(r.volumes.iter().cloned());
            if names.is_empty() {
                return Err(offsite_engine::EngineError::Invalid(
                    "a group needs volumes: pass --vm VM or --volume V".into(),
                ));
            }
            let mut out = Vec::new();
            for n in names {
                if out.iter().any(|v: &VolumeDesc| v.name == n) {
                    continue;
                }
                let v = site.volume_info(&n)?;
                if v.state != "ready" {
                    return Err(offsite_engine::EngineError::Invalid(format!(
                        "volume {n} is {}; only ready volumes can be replicated",
                        v.state
                    )));
                }
                if let Some(g) = site.groups().of_volume(&n)? {
                    return Err(offsite_engine::EngineError::Invalid(format!(
                        "volume {n} already belongs to group {g}; a volume is in at most one group"
                    )));
                }
                let allocated = site.volume(&n)?.file().allocated_bytes().ok();
                out.push(VolumeDesc {
                    name: n,
                    size_bytes: v.size_bytes,
                    block_size: v.block_size,
                    allocated_bytes: allocated.map(|a| a.min(v.size_bytes)),
                });
            }
            Ok((out, vms))
        })
        .await
        .and_then(|(volumes, vms)| {
            // The schedule needs a VM to quiesce: checked on the group as
            // it would be.
            let rows: Vec<_> = vms.iter().map(VmDesc::to_row).collect();
            check_schedule_quiescable(
                &req.name,
                &rows,
                req.app_consistent_every_secs.unwrap_or(0),
            )?;
            Ok((volumes, vms))
        })
    }

    /// Undoes the replica's side of a group this site failed to record,
    /// or the name stays taken there (best effort: the error said already
    /// what failed).
    pub(crate) async fn undo_replica_side(&self, partner: &str, group: &str) {
        if let Ok(mut ch) = self.channel(partner, None).await {
            crate::warn_if_failed(
                &format!(
                    "undoing group {group} at {partner} (`offsite group delete` there frees the name)"
                ),
                ch.call(&wire::GroupDelete {
                    group: group.to_string(),
                    delete_replica: false,
                })
                .await,
            );
            ch.close().await;
        }
    }

    /// Opens a channel to `partner` with `group`'s compression and bandwidth (if any).
    pub(crate) async fn channel(
        &self,
        partner: &str,
        group: Option<&GroupRow>,
    ) -> Result<PeerLink, ReplError> {
        #[cfg(test)]
        if let Some(peer) = self.fake_peer.get() {
            return peer.dial(partner).await;
        }
        let mut options = self.session_options();
        if let Some(g) = group {
            options.compression = g.compress;
        }
        let session = self.connect(partner, &options).await?;
        let bucket = group
            .and_then(|g| g.bandwidth)
            .map(|b| Arc::new(TokenBucket::with_rate(b)));
        Ok(Box::new(crate::channel::Channel::new(
            session, partner, bucket,
        )))
    }

    /// Has a group's runner re-read its settings (a mode change).
    pub(crate) async fn wake_runner(&self, group: &str) {
        if let Some(r) = self.runners.get(group) {
            r.wake().await;
        }
    }

    /// Starts the runner of every primary group (daemon start-up).
    pub async fn start_runners(self: &Arc<Self>) -> Result<(), ReplError> {
        // Before any runner: a group known to be taken over elsewhere stays
        // fenced, and the partners of the others are asked at once.
        self.restore_superseded().await?;
        let site = self.site.clone();
        let groups = blocking(move || site.groups().all()).await?;
        for g in groups.into_iter().filter(|g| g.role == Role::Primary) {
            // Until a cycle commits, this site cannot know whether the
            // replica took over while it was down: writes are isolated.
            if g.state == GroupState::Replicating {
                for v in self.live_volumes(&g).await? {
                    let site = self.site.clone();
                    blocking(move || v.begin_isolation(site.layout())).await?;
                }
            }
            self.ensure_runner(&g.name);
        }
        Ok(())
    }

    /// The runner of `group`, started if none runs.
    pub(crate) fn ensure_runner(self: &Arc<Self>, group: &str) -> Runner {
        self.runners.ensure(group, |runner, rx| {
            let me = self.clone();
            let name = group.to_string();
            let progress = runner.progress.clone();
            let mirror = runner.mirror.clone();
            tokio::spawn(async move { me.run_group(name, rx, progress, mirror).await });
        })
    }

    /// `group start`: begins initial replication.
    pub async fn start_group(
        self: &Arc<Self>,
        name: &str,
        seed: Option<String>,
    ) -> Result<GroupStatus, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        blocking(move || {
            let g = site.groups().get(&n)?;
            if g.role != Role::Primary {
                return Err(offsite_engine::EngineError::Invalid(format!(
                    "group {n} is a replica here; run `group start` at the primary site {}",
                    g.partner
                )));
            }
            if g.state != GroupState::ReadyForInitialReplication {
                return Err(offsite_engine::EngineError::Invalid(format!(
                    "group {n} is {}; `group start` applies to a group ready for initial replication",
                    g.state
                )));
            }
            // Everything is copied now: what changed before is irrelevant,
            // what changes from here on is tracked and shipped by the first
            // cycle, which makes the first PIT consistent.
            for v in &g.volumes {
                site.volume(&v.volume)?.tracker().clear()?;
            }
            site.groups().set_seed(&n, seed.as_deref())?;
            site.move_group_state(
                &n,
                &[GroupState::ReadyForInitialReplication],
                GroupState::InitialReplication,
                None,
            )
            .map(drop)
        })
        .await?;
        let runner = self.ensure_runner(name);
        runner.wake().await;
        self.group_status(name).await
    }

    /// `group pause` / `group resume`.
    pub async fn pause_group(
        self: &Arc<Self>,
        name: &str,
        pause: bool,
    ) -> Result<GroupStatus, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        blocking(move || {
            let g = site.groups().get(&n)?;
            if g.role != Role::Primary {
                return Err(offsite_engine::EngineError::Invalid(format!(
                    "group {n} is a replica here; pause or resume it at the primary site {}",
                    g.partner
                )));
            }
            let (from, to) = if pause {
                (GroupState::Replicating, GroupState::Paused)
            } else {
                (GroupState::Paused, GroupState::Replicating)
            };
            match g.state {
                s if s == from => site.move_group_state(&n, &[from], to, None).map(drop),
                s if s == to => Ok(()),
                s => Err(offsite_engine::EngineError::Invalid(format!(
                    "group {n} is {s}; only a replicating group can be paused and only a paused one resumed"
                ))),
            }
        })
        .await?;
        if let Some(r) = self.runners.get(name) {
            r.wake().await;
        }
        self.group_status(name).await
    }

    /// `sync` as an operator asks it (API, or forwarded by the replica):
    /// the PIT name, if any, must be usable later (see
    /// [`Replication::check_new_pit_name`]).
    pub async fn sync_named(
        self: &Arc<Self>,
        name: &str,
        pit_name: Option<String>,
        wait: bool,
    ) -> Result<SyncResult, ReplError> {
        self.sync_checkpoint(name, pit_name, wait, false).await
    }

    /// [`Replication::sync_named`], and with `quiesce` an
    /// application-consistent checkpoint (`sync --quiesce`, see
    /// `crate::quiesce`).
    pub async fn sync_checkpoint(
        self: &Arc<Self>,
        name: &str,
        pit_name: Option<String>,
        wait: bool,
        quiesce: bool,
    ) -> Result<SyncResult, ReplError> {
        let consistency = if quiesce {
            Consistency::Quiesce
        } else {
            Consistency::Crash
        };
        let Some(label) = pit_name.clone() else {
            return self.sync_group_with(name, None, wait, consistency).await;
        };
        self.check_new_pit_name(name, &label).await?;
        // Released once this sync is over, whatever its outcome.
        let Some(_claim) = self.runners.claim_pit_name(name, &label) else {
            return Err(invalid(format!(
                "another sync of group {name} is making a PIT named {label:?}; pick another name, or wait for it and release that PIT first"
            )));
        };
        self.sync_group_with(name, pit_name, wait, consistency)
            .await
    }

    /// Refuses a PIT name that `pit release`, `pit export` and `failover
    /// run --pit` could not tell apart: one that reads as a PIT id (those
    /// commands take a number as an id), or one another PIT of the group
    /// already has (a name must name one PIT). Names the daemon gives
    /// itself (`planned-failover`) do not come through here.
    pub async fn check_new_pit_name(&self, group: &str, label: &str) -> Result<(), ReplError> {
        offsite_engine::names::validate("PIT", label)?;
        if label.parse::<u64>().is_ok() {
            return Err(invalid(format!(
                "PIT name {label:?} reads as a PIT id (commands such as `offsite pit release {group} {label}` take a number as an id); use a name with a letter, e.g. pit-{label}"
            )));
        }
        let site = self.site.clone();
        let g = group.to_string();
        let pits = blocking(move || site.groups().pits(&g)).await?;
        if let Some(p) = pits.iter().find(|p| p.name.as_deref() == Some(label)) {
            return Err(invalid(format!(
                "group {group} already has a PIT named {label:?} (PIT {}); pick another name, or release that one first with `offsite pit release {group} {label}`",
                p.id
            )));
        }
        Ok(())
    }

    /// `sync`: a cycle now, at the primary; at the replica the request is
    /// forwarded to the primary.
    pub async fn sync_group(
        self: &Arc<Self>,
        name: &str,
        pit_name: Option<String>,
        wait: bool,
    ) -> Result<SyncResult, ReplError> {
        self.sync_group_with(name, pit_name, wait, Consistency::Crash)
            .await
    }

    /// [`Replication::sync_group`] whose PIT is the checkpoint
    /// `consistency` asks for.
    pub(crate) async fn sync_group_with(
        self: &Arc<Self>,
        name: &str,
        pit_name: Option<String>,
        wait: bool,
        consistency: Consistency,
    ) -> Result<SyncResult, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let g = blocking(move || site.groups().get(&n)).await?;
        if let Some(label) = &pit_name {
            offsite_engine::names::validate("PIT", label)?;
        }
        if g.state == GroupState::PreparedForFailover {
            // Writes are fenced and the final PIT is on the replica: nothing
            // more will come, so a sync (from either site) returns at once.
            let site = self.site.clone();
            let n = name.to_string();
            let last = blocking(move || site.groups().pits(&n)).await?.pop();
            return Ok(SyncResult {
                group: name.to_string(),
                pit: last.map(|p| entry(PitDesc::of_row(&p))),
                hooks: Vec::new(),
                errors: Vec::new(),
            });
        }
        if g.role == Role::Replica {
            let mut ch = self.channel(&g.partner, None).await?;
            let done: wire::SyncDone = ch
                .call(&wire::SyncRequest {
                    group: name.to_string(),
                    pit_name,
                    wait,
                    quiesce: consistency == Consistency::Quiesce,
                })
                .await?;
            ch.close().await;
            return Ok(SyncResult {
                group: name.to_string(),
                pit: done.pit.map(entry),
                hooks: Vec::new(),
                errors: done.errors,
            });
        }
        must_be_replicating(&g, "sync")?;
        let freeze = match consistency {
            Consistency::Crash => CycleFreeze::None,
            Consistency::Quiesce => {
                CycleFreeze::Quiesce(crate::quiesce::plan_quiesce(&g).map_err(invalid)?)
            }
            Consistency::Held { app_consistent } => CycleFreeze::Held { app_consistent },
        };
        let runner = self.ensure_runner(name);
        let (reply, rx) = oneshot::channel();
        runner
            .tx
            .send(Command::Sync {
                pit_name,
                freeze,
                reply,
            })
            .await
            .map_err(|_| invalid(format!("group {name}'s runner stopped; see the daemon log")))?;
        if !wait {
            tokio::spawn(async move {
                // The runner records and logs the outcome; nobody waits.
                drop(rx.await);
            });
            return Ok(SyncResult {
                group: name.to_string(),
                pit: None,
                hooks: Vec::new(),
                errors: Vec::new(),
            });
        }
        let done = rx
            .await
            .map_err(|_| invalid(format!("group {name}'s runner stopped; see the daemon log")))?
            .map_err(ReplError::Refused)?;
        let (hooks, errors) = done
            .freeze
            .map(|f| (f.hooks.clone(), f.errors()))
            .unwrap_or_default();
        Ok(SyncResult {
            group: name.to_string(),
            pit: Some(entry(done.pit)),
            hooks,
            errors,
        })
    }

    /// Answers a SYNC asked by the replica.
    pub(crate) async fn answer_sync(
        self: &Arc<Self>,
        peer: &str,
        req: wire::SyncRequest,
    ) -> Result<wire::SyncDone, RemoteError> {
        let site = self.site.clone();
        let g = req.group.clone();
        let row = tokio::task::spawn_blocking(move || site.groups().get(&g)).await??;
        if row.role != Role::Primary || row.partner != peer {
            return Err(RemoteError::Unauthorized(format!(
                "site {} is not the primary of group {} for {peer}",
                self.site.config().name,
                req.group
            )));
        }
        let r = self
            .sync_checkpoint(&req.group, req.pit_name, req.wait, req.quiesce)
            .await?;
        let done = wire::SyncDone {
            pit: r.pit.map(|p| PitDesc {
                id: p.id,
                name: p.name,
                created_at: p.created_at,
                bytes: p.bytes,
                app_consistent: p.app_consistent,
            }),
            errors: r.errors,
        };
        Ok(done)
    }

    /// The runner of one primary group.
    async fn run_group(
        self: Arc<Self>,
        name: String,
        mut rx: mpsc::Receiver<Command>,
        progress: Arc<Progress>,
        mirror: MirrorSlot,
    ) {
        let mut backoff = decide::FIRST_BACKOFF;
        let mut last_cycle = Instant::now();
        // The row as last read, and the catalog's change counter just before
        // that read: while the counter stands still the row is current, and
        // an idle group's turn needs no catalog read (nor a hand-off to a
        // blocking thread) at all.
        let mut cached: Option<(GroupRow, u64)> = None;
        // When this runner last attempted a scheduled application-
        // consistent PIT (RFC 3339, on the service's clock).
        let mut schedule: Option<String> = None;
        loop {
            let Some(row) = self.current_row(&name, &mut cached).await else {
                return; // deleted
            };
            let interval =
                decide::cycle_interval(row.rpo_secs, self.site.config().replication.cycle_secs);
            match decide::turn(row.role, row.mode, row.state) {
                Turn::Stop => return, // reversed: this site is the replica now
                Turn::Stream => {
                    if !self.run_sync(&row, &mut rx, &mirror, &mut schedule).await {
                        return;
                    }
                    last_cycle = Instant::now();
                }
                Turn::Initial => match self.initial_replication(&row, &progress).await {
                    Ok(()) => {
                        backoff = decide::FIRST_BACKOFF;
                        let r = self.cycle(&row, None, false).await;
                        last_cycle = Instant::now();
                        if let Err(e) = r {
                            tracing::warn!(group = %name, "first cycle failed: {e}");
                        }
                        continue;
                    }
                    Err(e) => {
                        self.record_error(&name, &format!("initial replication: {e}"))
                            .await;
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            c = rx.recv() => if !refuse_while(&name, row.state, c) {
                                return;
                            },
                        }
                        backoff = decide::next_backoff(backoff);
                        continue;
                    }
                },
                Turn::Scheduled => {
                    let due = (last_cycle + interval).saturating_duration_since(Instant::now());
                    tokio::select! {
                        _ = tokio::time::sleep(due) => {
                            self.scheduled_cycle(&row, &progress, &mut schedule).await;
                            last_cycle = Instant::now();
                        }
                        c = rx.recv() => match c {
                            Some(Command::Sync { pit_name, freeze, reply }) => {
                                let r = self.checkpoint(&row, pit_name, &freeze).await.map_err(RemoteError::from);
                                last_cycle = Instant::now();
                                answer(reply, r);
                            }
                            Some(Command::Verify { reply }) => {
                                let r = self.verify_now(&row).await.map_err(RemoteError::from);
                                last_cycle = Instant::now();
                                answer(reply, r);
                            }
                            Some(Command::Resync { reply }) => {
                                let r = self.resync_now(&row, &progress).await.map_err(RemoteError::from);
                                last_cycle = Instant::now();
                                answer(reply, r);
                            }
                            Some(Command::Wake) => {}
                            None => return,
                        },
                    }
                }
                Turn::Waiting(state) => {
                    // Paused or not started: only commands move it.
                    if !refuse_while(&name, state, rx.recv().await) {
                        return;
                    }
                }
            }
        }
    }

    /// A scheduled turn of an async group: the application-consistent
    /// checkpoint the schedule asks for, if one is due, else a cycle
    /// unless the group is idle. A failed cycle records and logs itself.
    pub(crate) async fn scheduled_cycle(
        &self,
        row: &GroupRow,
        progress: &Progress,
        schedule: &mut Option<String>,
    ) {
        if let Some(freeze) = self.due_checkpoint(row, schedule).await {
            drop(self.checkpoint(row, None, &freeze).await);
            return;
        }
        if !self.confirm_idle(row, progress).await {
            drop(self.cycle(row, None, false).await);
        }
    }

    /// The checkpoint the group's schedule (`--app-consistent-every`) asks
    /// for now, if any: when its newest app-consistent PIT is older than
    /// the interval (or it has none), and this runner's last attempt too
    /// (`last_attempt`, updated here). An attempt that did not give an
    /// app-consistent PIT is retried one interval later, not at every
    /// cycle: each attempt holds the applications. A group with nothing to
    /// quiesce (its VMs' hooks were removed) gets its warning instead.
    pub(crate) async fn due_checkpoint(
        &self,
        row: &GroupRow,
        last_attempt: &mut Option<String>,
    ) -> Option<CycleFreeze> {
        let every = row.app_consistent_every_secs;
        if every == 0 {
            return None;
        }
        let site = self.site.clone();
        let g = row.name.clone();
        let newest = blocking(move || {
            Ok(site
                .groups()
                .pits(&g)?
                .into_iter()
                .rev()
                .find(|p| p.app_consistent)
                .map(|p| p.created_at))
        })
        .await
        .ok()?;
        let age = |t: &Option<String>| t.as_deref().map(|t| self.clock.age_seconds(t));
        if !decide::app_consistent_due(every, age(&newest), age(last_attempt)) {
            return None;
        }
        *last_attempt = Some(self.clock.rfc3339());
        match crate::quiesce::plan_quiesce(row) {
            Ok(freeze) => Some(CycleFreeze::Quiesce(freeze)),
            Err(why) => {
                let site = self.site.clone();
                let g = row.name.clone();
                let why = format!("the scheduled application-consistent PIT was not taken: {why}");
                tracing::warn!(group = %g, "{why}");
                crate::warn_if_failed(
                    "recording the skipped checkpoint",
                    blocking(move || {
                        site.groups().set_quiesce_error(&g, Some(&why))?;
                        site.note("group.quiesce.failed", &g, &why);
                        Ok(())
                    })
                    .await,
                );
                None
            }
        }
    }

    /// The group's row for the runner's next turn: the cached one while the
    /// catalog's change counter stands still, else read again (and
    /// cached); `None` once the group is deleted.
    async fn current_row(
        &self,
        name: &str,
        cached: &mut Option<(GroupRow, u64)>,
    ) -> Option<GroupRow> {
        let current = self.site.group_changes();
        let row = match cached.take() {
            Some((row, at)) if current == at => row,
            _ => {
                let site = self.site.clone();
                let n = name.to_string();
                match tokio::task::spawn_blocking(move || site.groups().get(&n)).await {
                    Ok(Ok(r)) => r,
                    _ => return None,
                }
            }
        };
        *cached = Some((row.clone(), current));
        Some(row)
    }

    /// A scheduled cycle of a group whose volumes hold no changed block
    /// commits nothing: the newest PIT stays the recovery point and the
    /// replica is confirmed to hold every write as of now (no cut, no
    /// session, no catalog write, no retention on the replica), so idle
    /// groups cost next to nothing. Not before this daemon committed once
    /// (that commit ends the start-up isolation) nor while the last attempt
    /// failed (only a cycle shows the partner takes PITs again).
    async fn confirm_idle(&self, row: &GroupRow, progress: &Progress) -> bool {
        if row.last_error.is_some()
            || progress
                .confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
        {
            return false;
        }
        // Taken before the look: a write marks its blocks before its data
        // moves, so no write made before this instant can be missed.
        let at = self.clock.rfc3339();
        // On this task, not a blocking thread: looking a live volume up and
        // counting its dirty blocks take a lock for microseconds, and a
        // hand-off per group per cycle was most of what idle groups cost.
        for v in &row.volumes {
            match self.site.volume(&v.volume) {
                Ok(vol) if vol.tracker().dirty_blocks() == 0 => {}
                _ => return false,
            }
        }
        *progress.confirmed.lock().unwrap_or_else(|e| e.into_inner()) = Some(at);
        true
    }

    /// The last instant at which the replica was known to hold every write
    /// of the group: this daemon's own knowledge at the primary, the
    /// primary's confirmations at the replica.
    pub(crate) fn confirmed_at(&self, row: &GroupRow) -> Option<String> {
        if row.role == Role::Primary {
            self.runners.get(&row.name).and_then(|r| {
                r.progress
                    .confirmed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
            })
        } else {
            self.replica.confirmed_at(&row.name)
        }
    }

    /// Lag, one definition for status, the API and metrics: seconds since
    /// the last instant at which the replica held every write the primary
    /// had acknowledged. That is the cut of the newest PIT, or a later idle
    /// check that found nothing to ship; 0 while a sync group is in sync
    /// (the caller knows); before the first PIT, the group's age.
    pub(crate) fn lag_seconds(&self, row: &GroupRow, newest_pit: Option<&str>) -> u64 {
        let confirmed = self.confirmed_at(row);
        let since = |t: Option<&str>| t.map(|t| self.clock.age_seconds(t));
        match (since(newest_pit), since(confirmed.as_deref())) {
            (Some(p), Some(c)) => p.min(c),
            (Some(p), None) => p,
            (None, _) => self.clock.age_seconds(&row.created_at),
        }
    }

    /// Adds `bytes` moved for `kind` to the group's persistent counters.
    pub(crate) async fn count_traffic(&self, group: &str, kind: TrafficKind, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let site = self.site.clone();
        let g = group.to_string();
        crate::warn_if_failed(
            "counting the group's traffic",
            tokio::task::spawn_blocking(move || site.groups().add_traffic(&g, kind, bytes)).await,
        );
    }

    /// Every byte the group moved so far, all kinds together.
    pub(crate) async fn traffic_total(&self, group: &str) -> u64 {
        let site = self.site.clone();
        let g = group.to_string();
        tokio::task::spawn_blocking(move || site.groups().traffic(&g))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or(0, |t| t.iter().map(|(_, b)| b).sum())
    }

    pub(crate) async fn record_error(&self, group: &str, error: &str) {
        tracing::warn!(group, "{error}");
        let site = self.site.clone();
        let (g, e) = (group.to_string(), error.to_string());
        crate::warn_if_failed(
            "recording the group's error",
            crate::joined(
                tokio::task::spawn_blocking(move || site.set_group_error(&g, Some(&e))).await,
            ),
        );
    }

    pub(crate) async fn live_volumes(&self, row: &GroupRow) -> Result<Vec<Arc<Volume>>, ReplError> {
        let site = self.site.clone();
        let names: Vec<String> = row.volumes.iter().map(|v| v.volume.clone()).collect();
        blocking(move || names.iter().map(|n| site.volume(n)).collect()).await
    }

    /// One delta cycle: cut, ship, commit. With `keep_cut` the (full) cut
    /// stays open for verification and is returned with its volumes.
    pub(crate) async fn cycle(
        &self,
        row: &GroupRow,
        pit_name: Option<String>,
        keep_cut: bool,
    ) -> Result<(PitDesc, Vec<Arc<Volume>>), ReplError> {
        self.cycle_then(row, pit_name, keep_cut, || {}).await
    }

    /// A cycle whose cut runs `during` with every write held off (a sync
    /// group notes the cut's position in its write order there).
    pub(crate) async fn cycle_then(
        &self,
        row: &GroupRow,
        pit_name: Option<String>,
        keep_cut: bool,
        during: impl FnOnce(),
    ) -> Result<(PitDesc, Vec<Arc<Volume>>), ReplError> {
        self.cycle_inner(row, pit_name, keep_cut, &CycleFreeze::None, during)
            .await
            .map(|(c, v)| (c.pit, v))
    }

    /// A checkpoint: a cycle whose cut is taken as `freeze` says (see
    /// `crate::quiesce`).
    pub(crate) async fn checkpoint(
        &self,
        row: &GroupRow,
        pit_name: Option<String>,
        freeze: &CycleFreeze,
    ) -> Result<Checkpoint, ReplError> {
        self.cycle_inner(row, pit_name, false, freeze, || {})
            .await
            .map(|(c, _)| c)
    }

    /// One cycle (see [`Replication::cycle_then`]) as `freeze` asks: with
    /// [`CycleFreeze::Quiesce`] the VMs are quiesced right before the cut
    /// and thawed right after it.
    async fn cycle_inner(
        &self,
        row: &GroupRow,
        pit_name: Option<String>,
        keep_cut: bool,
        freeze: &CycleFreeze,
        during: impl FnOnce(),
    ) -> Result<(Checkpoint, Vec<Arc<Volume>>), ReplError> {
        let volumes = self.live_volumes(row).await?;
        let site = self.site.clone();
        let g = row.name.clone();
        let cycle_id = blocking(move || site.groups().begin_cycle(&g)).await?;
        // The applications are held from their quiesce hook to the cut
        // only, which takes microseconds (the write barrier and a move of
        // the dirty sets): the blocks are read and shipped after the thaw,
        // from the cut's copy-on-write image, so the freeze does not last
        // as long as the transfer (minutes on a slow link).
        let frozen = match freeze {
            CycleFreeze::Quiesce(f) => Some(self.quiesce_vms(row, f).await),
            CycleFreeze::None | CycleFreeze::Held { .. } => None,
        };
        let cut = if keep_cut {
            Site::cut_full_then(&volumes, during)
        } else {
            Site::cut_then(&volumes, during)
        };
        let outcome = match frozen {
            Some(f) => Some(self.thaw_vms(row, f).await),
            None => None,
        };
        let sets = cut?;
        let app_consistent = match freeze {
            CycleFreeze::None => false,
            CycleFreeze::Quiesce(_) => outcome.as_ref().is_some_and(|o| o.app_consistent),
            CycleFreeze::Held { app_consistent } => *app_consistent,
        };
        let created_at = self.clock.rfc3339();
        let mut bytes = 0u64;
        let result = self
            .ship(
                row,
                &volumes,
                &sets,
                pit_name,
                created_at,
                app_consistent,
                &mut bytes,
            )
            .await;
        self.count_cycle_traffic(&row.name, bytes).await;
        match result {
            Ok(mut committed) => {
                if !keep_cut {
                    for v in &volumes {
                        v.end_cut(true);
                    }
                }
                if app_consistent {
                    // This site knows how the cut was taken, whatever the
                    // replica answered (an older one drops the mark).
                    committed.mark_app_consistent();
                }
                let pit = self
                    .record_committed(row, &volumes, cycle_id, bytes, committed)
                    .await?;
                if let Some(o) = &outcome {
                    self.record_checkpoint(&row.name, pit.id, o).await;
                }
                Ok((
                    Checkpoint {
                        pit,
                        freeze: outcome,
                    },
                    volumes,
                ))
            }
            Err(e) => {
                for v in &volumes {
                    v.end_cut(false);
                }
                self.record_failed(row, &volumes, cycle_id, bytes, &e).await;
                Err(e)
            }
        }
    }

    /// Counts a cycle's bytes as the group's cycle (or reverse) traffic.
    pub(crate) async fn count_cycle_traffic(&self, group: &str, bytes: u64) {
        let kind = if self.runners.is_reversing(group) {
            TrafficKind::Reverse
        } else {
            TrafficKind::Cycle
        };
        self.count_traffic(group, kind, bytes).await;
    }

    /// A cycle's PIT was committed by the replica (the cut already ended):
    /// recorded with the cycle, the volumes' isolation ends (the replica
    /// has everything up to the cut again), the group's error is cleared.
    pub(crate) async fn record_committed(
        &self,
        row: &GroupRow,
        volumes: &[Arc<Volume>],
        cycle_id: i64,
        bytes: u64,
        committed: PitCommitted,
    ) -> Result<PitDesc, ReplError> {
        let site = self.site.clone();
        let pit = committed.pit.clone();
        let g = row.name.clone();
        let id = pit.id;
        let vols = volumes.to_vec();
        blocking(move || {
            committed.record(&site, &g)?;
            site.groups().end_cycle(cycle_id, bytes, Some(id), None)?;
            // The replica has everything up to this cut again.
            for v in &vols {
                v.end_isolation(site.layout())?;
            }
            site.set_group_error(&g, None)
        })
        .await?;
        tracing::info!(group = %row.name, pit = pit.id, bytes, "PIT committed");
        if let Some(r) = self.runners.get(&row.name) {
            *r.progress
                .confirmed
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(pit.created_at.clone());
        }
        Ok(pit)
    }

    /// A cycle failed (its cut, if any, already ended uncommitted: the
    /// blocks stay in flight for the next one): recorded, the volumes
    /// isolated, and a refusing partner checked for having taken over.
    pub(crate) async fn record_failed(
        &self,
        row: &GroupRow,
        volumes: &[Arc<Volume>],
        cycle_id: i64,
        bytes: u64,
        e: &ReplError,
    ) {
        let site = self.site.clone();
        let msg = e.to_string();
        let g = row.name.clone();
        let m = msg.clone();
        let vols = volumes.to_vec();
        crate::warn_if_failed(
            "recording the failed cycle",
            blocking(move || {
                // From now on writes may be ones the replica never sees
                // if it takes over: track them apart (split brain).
                for v in &vols {
                    v.begin_isolation(site.layout())?;
                }
                site.groups().end_cycle(cycle_id, bytes, None, Some(&m))?;
                site.set_group_error(&g, Some(&format!("cycle failed: {m}")))
            })
            .await,
        );
        tracing::warn!(group = %row.name, "cycle failed: {msg}");
        // A partner that refuses may have taken the group over; one
        // whose store is full still holds the group as its replica.
        if e.refusal()
            .is_some_and(|r| !matches!(r, RemoteError::StorageFull(_)))
        {
            self.check_superseded(row).await;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn ship(
        &self,
        row: &GroupRow,
        volumes: &[Arc<Volume>],
        sets: &[offsite_engine::RoaringBitmap],
        pit_name: Option<String>,
        created_at: String,
        app_consistent: bool,
        bytes: &mut u64,
    ) -> Result<PitCommitted, ReplError> {
        // The cut's size, for progress (`transfer` in status: a reverse's
        // first cycle, or any cycle while it ships).
        let progress = self.runners.get(&row.name).map(|r| r.progress);
        let total: u64 = volumes
            .iter()
            .zip(sets)
            .map(|(v, set)| set.len() * u64::from(v.row().block_size))
            .sum();
        let track = CycleTrack::start(progress, total);
        let mut ch = self.channel(&row.partner, Some(row)).await?;
        let format = BatchFormat::of(ch.call(&wire::PitBegin::new(&row.name)).await?);
        let mut blocks_sent = 0u64;
        for (idx, (vol, set)) in volumes.iter().zip(sets).enumerate() {
            let ship = Ship {
                idx,
                read: Read::AtCut,
                format,
            };
            blocks_sent += send_blocks(&mut ch, ship, vol, set, bytes, &track).await?;
        }
        let committed: PitCommitted = ch
            .call(&PitCommit {
                group: row.name.clone(),
                name: pit_name,
                created_at,
                blocks: blocks_sent,
                app_consistent,
            })
            .await?;
        ch.close().await;
        Ok(committed)
    }
}

/// Where [`send_blocks`] reads the blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// As they were at the volume's running cut
    /// ([`Volume::read_cut_block`]: the copy-on-write image).
    AtCut,
    /// As the file holds them now (a resynchronization's round, see
    /// `crate::sync::rounds`: no cut, what changes meanwhile is shipped
    /// again).
    Now,
}

/// How a PIT's blocks travel, as the replica's answer to `PIT_BEGIN`
/// ([`wire::PitBegun`]) allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BatchFormat {
    /// One run per batch ([`wire::write_batch_header`]), its frame hashed
    /// (BLAKE3): what every replica takes.
    Runs,
    /// Every run read by one blocking task in one batch, each run a
    /// write-log record with its own CRC32C
    /// ([`offsite_replica_store::encode_record`]), the frame without its
    /// BLAKE3 where the session negotiated `SELF_CHECKED_BULK`. Scattered
    /// blocks (a resynchronization after a spill under random writes) went
    /// one 4 KiB block per frame, each frame with its own head, hash at
    /// both ends, acknowledgement and TLS record.
    Records,
}

impl BatchFormat {
    /// The format the replica's answer to `PIT_BEGIN` allows.
    pub(crate) fn of(begun: wire::PitBegun) -> BatchFormat {
        if begun.record_batches {
            BatchFormat::Records
        } else {
            BatchFormat::Runs
        }
    }
}

/// Which blocks [`send_blocks`] sends how: the volume's position in the
/// group, where the blocks are read, and the batches' format.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ship {
    /// The volume's position in the group.
    pub(crate) idx: usize,
    /// Where the blocks are read.
    pub(crate) read: Read,
    /// How they travel.
    pub(crate) format: BatchFormat,
}

/// Blocks read at once by one blocking task: a set of scattered blocks
/// (one run each) is read in tasks of many runs, not one task per block.
const READ_CHUNK_BYTES: u64 = 4 << 20;

/// Bytes a write-log record adds to its data.
const RECORD_OVERHEAD: usize =
    offsite_replica_store::RECORD_HEADER_LEN + offsite_replica_store::RECORD_TRAILER_LEN;

/// Reads `n` blocks from `start` of `v` into `data`, as `read` says.
fn read_run(v: &Volume, read: Read, start: u32, data: &mut [u8], bs: u64) -> std::io::Result<()> {
    match read {
        Read::AtCut => {
            for (k, block) in data.chunks_exact_mut(bs as usize).enumerate() {
                v.read_cut_block(start + k as u32, block)?;
            }
            Ok(())
        }
        Read::Now => v.file().read_at(data, u64::from(start) * bs),
    }
}

/// What one blocking task read: batches to send, each with its runs'
/// block counts and data bytes (zero runs: 0).
type ReadChunk = Vec<(Batch, Vec<(u32, u64)>)>;

/// One batch to send, in either format.
enum Batch {
    Run(Vec<u8>),
    Records(BulkFrame),
}

/// Sends the blocks `set` of `vol` on `ch` as `ship` says (zero runs as
/// ranges); adds the data bytes to `bytes`; returns the blocks sent.
pub(crate) async fn send_blocks(
    ch: &mut PeerLink,
    ship: Ship,
    vol: &Arc<Volume>,
    set: &offsite_engine::RoaringBitmap,
    bytes: &mut u64,
    track: &CycleTrack,
) -> Result<u64, ReplError> {
    let Ship { idx, read, format } = ship;
    let bs = u64::from(vol.row().block_size);
    let max_run = (MAX_BATCH_BYTES / bs).max(1) as u32;
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for b in set.iter() {
        match runs.last_mut() {
            Some((start, n)) if *start + *n == b && *n < max_run => *n += 1,
            _ => runs.push((b, 1)),
        }
    }
    let per_chunk = (READ_CHUNK_BYTES / bs).max(1);
    let mut blocks_sent = 0u64;
    let mut i = 0;
    while i < runs.len() {
        // Runs of up to READ_CHUNK_BYTES in all, read in one task: each
        // straight into its batch after the header (one run per batch),
        // or all into one batch of records.
        let mut j = i;
        let mut blocks = 0u64;
        while j < runs.len() && (j == i || blocks + u64::from(runs[j].1) <= per_chunk) {
            blocks += u64::from(runs[j].1);
            j += 1;
        }
        let chunk: Vec<(u32, u32)> = runs[i..j].to_vec();
        i = j;
        let v = vol.clone();
        let batches = tokio::task::spawn_blocking(move || -> std::io::Result<ReadChunk> {
            match format {
                BatchFormat::Runs => {
                    let mut out = Vec::with_capacity(chunk.len());
                    for (start, n) in chunk {
                        let len = (u64::from(n) * bs) as usize;
                        let mut payload = vec![0u8; wire::BATCH_HEADER + len];
                        read_run(&v, read, start, &mut payload[wire::BATCH_HEADER..], bs)?;
                        let zero = payload[wire::BATCH_HEADER..].iter().all(|&x| x == 0);
                        if zero {
                            // Zero runs travel as ranges.
                            payload.truncate(wire::BATCH_HEADER);
                        }
                        wire::write_batch_header(
                            &mut payload,
                            idx as u16,
                            u64::from(start),
                            n,
                            zero,
                        );
                        let sent = if zero { 0 } else { len as u64 };
                        out.push((Batch::Run(payload), vec![(n, sent)]));
                    }
                    Ok(out)
                }
                BatchFormat::Records => {
                    // Batches of at most MAX_BATCH_BYTES of data, as one
                    // run per batch had (the link's window counts frames).
                    let cap = MAX_BATCH_BYTES as usize;
                    // A frame's capacity: its data, and a record's overhead
                    // per block at most (every block a run of its own).
                    let room = |left: u64| {
                        let data = (left * bs).min(MAX_BATCH_BYTES) as usize;
                        data + (data / bs as usize + 1) * RECORD_OVERHEAD
                    };
                    let mut out: ReadChunk = Vec::new();
                    let mut left = blocks;
                    let mut frame = BulkFrame::with_capacity(room(left));
                    let mut data_len = 0usize;
                    let mut counts = Vec::new();
                    let mut scratch = Vec::new();
                    let mut seq = 0u64;
                    for (start, n) in chunk {
                        let len = (u64::from(n) * bs) as usize;
                        if data_len > 0 && data_len + len > cap {
                            let full =
                                std::mem::replace(&mut frame, BulkFrame::with_capacity(room(left)));
                            out.push((Batch::Records(full), std::mem::take(&mut counts)));
                            data_len = 0;
                            seq = 0;
                        }
                        data_len += len;
                        left -= u64::from(n);
                        seq += 1;
                        scratch.resize(len, 0);
                        read_run(&v, read, start, &mut scratch[..len], bs)?;
                        let zero = scratch[..len].iter().all(|&x| x == 0);
                        let rec = offsite_replica_store::LogRecord {
                            seq,
                            volume: idx as u16,
                            first: u64::from(start),
                            count: n,
                            // Zero runs travel as ranges.
                            data: (!zero).then_some(&scratch[..len]),
                        };
                        offsite_replica_store::encode_record(&rec, frame.payload_buf());
                        counts.push((n, if zero { 0 } else { len as u64 }));
                    }
                    out.push((Batch::Records(frame), counts));
                    Ok(out)
                }
            }
        })
        .await
        .map_err(|e| invalid(e.to_string()))?
        .map_err(|e| {
            invalid(format!(
                "reading volume {} {}: {e}",
                vol.name(),
                match read {
                    Read::AtCut => "at the cut",
                    Read::Now => "for its resynchronization",
                }
            ))
        })?;
        for (batch, counts) in batches {
            match batch {
                Batch::Run(payload) => ch.send_batch(payload).await?,
                Batch::Records(frame) => ch.send_records(frame).await?,
            }
            for (n, sent) in counts {
                *bytes += sent;
                blocks_sent += u64::from(n);
                // As before: a zero run counts its blocks' size as shipped.
                track.sent(u64::from(n) * bs);
            }
        }
    }
    Ok(blocks_sent)
}

/// Refuses `what` (a command the group's runner carries out) unless the
/// group replicates; a sync group's runner also takes it while catching up
/// (a reversed group starts resynchronizing at once), once back in sync.
pub(crate) fn must_be_replicating(g: &GroupRow, what: &str) -> Result<(), ReplError> {
    let catching_up = g.mode.streams() && g.state == GroupState::Resynchronizing;
    if g.state == GroupState::Replicating || catching_up {
        return Ok(());
    }
    Err(invalid(format!(
        "group {} is {}; {what} needs a replicating group{}",
        g.name,
        g.state,
        match g.state {
            GroupState::ReadyForInitialReplication => " (run `offsite group start` first)",
            GroupState::Paused => " (run `offsite group resume` first)",
            _ => "",
        }
    )))
}

fn entry(p: PitDesc) -> PitEntry {
    PitEntry {
        id: p.id,
        name: p.name,
        created_at: p.created_at,
        bytes: p.bytes,
        app_consistent: p.app_consistent,
    }
}
