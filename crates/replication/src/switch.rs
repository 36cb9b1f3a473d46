//! Planned and unplanned failover, and reverse replication: the commands
//! that move a group's volumes from one site to the other and back.
//!
//! - `failover prepare` (primary): stop the VMs (hooks), fence the volumes
//!   (writes refused), ship a final PIT named `planned-failover`, state
//!   `prepared-for-failover` on both sites (a `sync` then returns at once).
//! - `failover run` (replica): promote a PIT (default the newest) of every
//!   volume to a writable volume of this site under the volume's own name
//!   (a layered volume: no copy, see `offsite_engine` promote), start the
//!   VMs, state `failed-over`. Without `--force` the primary must be
//!   reachable and prepared; with it, anything goes (the primary is lost).
//!   The replica then refuses new PITs from the old primary.
//! - `reverse` (the new primary): the old primary becomes the replica. It
//!   fences and retires its volumes, makes their data files the base images
//!   of a new replica store (hard links: no copy) and reports the blocks it
//!   changed that never reached a committed PIT. The new primary marks
//!   those dirty, together with the blocks of PITs newer than the promoted
//!   one, on top of what it wrote since promotion (its change trackers
//!   started empty at promotion), and the first cycle in the new direction
//!   ships exactly that set. Failback is the same three commands from the
//!   other side.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::model::{
    ExportedVolume, FailoverResult, ReverseRequest, ReverseResult, SplitBrain, SplitBrainSide,
};
use offsite_catalog::{FailoverRow, GroupRow, LowerRef};
use offsite_catalog::{GroupState, Role};
use offsite_engine::RoaringBitmap;
use offsite_engine::hooks::HookAction;
use offsite_replica_store::{PitId, ReplicaStore};

use crate::control::Done;
use crate::decide::ReverseChoice;
use crate::wire::{self, GroupView, ReverseBegin, ReverseReady};
use crate::{RemoteError, ReplError, Replication, invalid, run_blocking as blocking};

mod old_primary;
pub(crate) mod rebuilt;

pub use rebuilt::{ReplacedAction, ReplacedGroup};

/// Name of the final PIT of a planned failover.
pub const PLANNED_PIT: &str = "planned-failover";

fn now_rfc3339() -> String {
    offsite_catalog::now_rfc3339()
}

/// `split-brain-YYYYMMDDTHHMMSSZ`: the name of a PIT keeping a loser's state.
pub(crate) fn split_brain_name() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "split-brain-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl Replication {
    async fn group_row_of(&self, group: &str) -> Result<GroupRow, ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        blocking(move || Ok(site.groups().get(&g)?)).await
    }

    /// The group's volumes as this site serves them (own names).
    fn served(&self, row: &GroupRow) -> Vec<ExportedVolume> {
        row.volumes
            .iter()
            .map(|v| ExportedVolume {
                name: v.volume.clone(),
                export: v.volume.clone(),
                url: self.site.volume_url(&v.volume),
            })
            .collect()
    }

    /// `failover prepare NAME` at the primary.
    pub async fn failover_prepare(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<FailoverResult, ReplError> {
        self.failover_prepare_with(group, true).await
    }

    /// `failover_prepare`; without `stop_vms` the caller has stopped the
    /// group's VMs already (a recovery plan stops them in reverse priority
    /// tiers).
    pub async fn failover_prepare_with(
        self: &Arc<Self>,
        group: &str,
        stop_vms: bool,
    ) -> Result<FailoverResult, ReplError> {
        let started = Instant::now();
        let row = self.group_row_of(group).await?;
        if row.role != Role::Primary {
            return Err(invalid(format!(
                "group {group} is replicated into this site; run `offsite failover prepare {group}` at its primary {}",
                row.partner
            )));
        }
        let volumes = self.served(&row);
        if row.state == GroupState::PreparedForFailover {
            let pit = self.sync_group(group, None, true).await?.pit;
            return Ok(FailoverResult {
                group: group.to_string(),
                mode: "prepare".into(),
                pit: pit.map_or(0, |p| p.id),
                volumes,
                vms: Vec::new(),
                duration_ms: started.elapsed().as_millis() as u64,
                errors: Vec::new(),
                point: None,
            });
        }
        if row.state != GroupState::Replicating {
            return Err(invalid(format!(
                "group {group} is {}; failover prepare needs a replicating group",
                row.state
            )));
        }
        // The final PIT is application-consistent when every VM of the
        // group is consistent on its volumes at the cut: stopped in an
        // orderly way before it (an orderly shutdown flushes and unmounts,
        // and prepare stops every VM that has a stop hook or is a libvirt
        // domain before the final cycle), or, for a VM prepare does not
        // stop (it has no stop hook), quiesced around it.
        let (mut hooks, stopped_cleanly) = if stop_vms {
            self.run_vm_hooks_cleanly(&row, HookAction::Stop, "planned", &volumes)
                .await?
        } else {
            // A recovery plan stopped them in its own steps, which stop at
            // the first failure: a VM with a stop hook ran it and it exited
            // 0. How the plan stopped a libvirt domain (shut down or
            // destroyed) is not known here, so such a VM does not count.
            let hooked = row.vms.iter().filter(|v| v.stop_cmd.is_some());
            (Vec::new(), hooked.map(|v| v.name.clone()).collect())
        };
        let freeze = crate::quiesce::plan_for_prepare(&row, &stopped_cleanly);
        let live = self.live_volumes(&row).await?;
        // Quiesced before the fence: a quiesce hook writes (`fsfreeze -f`
        // flushes the file system's journal and superblock), which the
        // fence would refuse. Nothing from here to the thaw below returns
        // early.
        let frozen = self.quiesce_vms(&row, &freeze).await;
        let app_consistent = frozen.app_consistent();
        for v in &live {
            v.set_fenced(true);
        }
        let unfence = |why: ReplError| {
            for v in &live {
                v.set_fenced(false);
            }
            why
        };
        let done = match self
            .sync_group_with(
                group,
                Some(PLANNED_PIT.into()),
                true,
                crate::quiesce::Consistency::Held { app_consistent },
            )
            .await
        {
            Ok(r) => {
                let pending: u64 = live.iter().map(|v| v.tracker().dirty_bytes()).sum();
                if pending > 0 {
                    Err(unfence(invalid(format!(
                        "{pending} bytes of group {group} are still not on the replica after the final cycle; retry"
                    ))))
                } else {
                    Ok(r.pit)
                }
            }
            Err(e) => Err(unfence(invalid(format!(
                "the final cycle of group {group} failed ({e}); writes are allowed again, the VMs stay stopped: fix the link and retry"
            )))),
        };
        // Thawed once the final cycle is over, not right after its cut as
        // other checkpoints do: the volumes are fenced from before the cut
        // to the end of the failover, so a VM still running here cannot
        // write anyway, and held quiesced its writes wait instead of
        // failing. A failed prepare unfenced the volumes first, so the
        // thaw lets the VM go on as before.
        let outcome = self.thaw_vms(&row, frozen).await;
        let pit = done?;
        if let Some(p) = &pit
            && (outcome.app_consistent || !freeze.quiesce.is_empty())
        {
            // A prepare that tried (or made it) says so in the group's
            // status like any checkpoint; one with nothing to try leaves
            // the status alone.
            self.record_checkpoint(group, p.id, &outcome).await;
        }
        let errors = outcome.hook_failures();
        hooks.extend(outcome.hooks);
        let site = self.site.clone();
        let g = group.to_string();
        blocking(move || {
            Ok(site.move_group_state(
                &g,
                &[GroupState::Replicating],
                GroupState::PreparedForFailover,
                None,
            )?)
        })
        .await?;
        // A sync group's runner ends its stream now.
        self.wake_runner(group).await;
        let pit = pit.map_or(0, |p| p.id);
        self.tell_replica_prepared(&row, pit).await;
        tracing::info!(
            group,
            pit,
            app_consistent = outcome.app_consistent,
            "prepared for failover"
        );
        Ok(FailoverResult {
            group: group.to_string(),
            mode: "prepare".into(),
            pit,
            volumes,
            vms: hooks,
            duration_ms: started.elapsed().as_millis() as u64,
            errors,
            point: None,
        })
    }

    /// The replica learns that the group is prepared (with its final PIT)
    /// now so that its `sync` returns at once; if it cannot, `failover
    /// run` asks the primary itself.
    async fn tell_replica_prepared(&self, row: &GroupRow, pit: u64) {
        let group = row.name.as_str();
        if let Ok(mut ch) = self.channel(&row.partner, None).await {
            let told = ch
                .call(&wire::GroupPrepared {
                    group: group.to_string(),
                    pit,
                })
                .await;
            if let Err(e) = told {
                tracing::warn!(group, "telling the replica the group is prepared: {e}");
            }
            ch.close().await;
        }
    }

    /// Re-applies fencing after a restart: a prepared group's volumes keep
    /// refusing writes.
    pub(crate) async fn restore_fences(&self) -> Result<(), ReplError> {
        let site = self.site.clone();
        let rows = blocking(move || Ok(site.groups().all()?)).await?;
        for row in rows
            .iter()
            .filter(|r| r.role == Role::Primary && r.state == GroupState::PreparedForFailover)
        {
            for v in self.live_volumes(row).await? {
                v.set_fenced(true);
            }
        }
        Ok(())
    }

    /// The partner's view of a group (`None` when it cannot be reached).
    pub(crate) async fn partner_view(&self, row: &GroupRow) -> Result<GroupView, ReplError> {
        let mut ch = self.channel(&row.partner, None).await?;
        let r = ch.call(&wire::GroupQuery::new(&row.name)).await;
        ch.close().await;
        r
    }

    /// Answers [`wire::kinds::GROUP_QUERY`].
    pub(crate) async fn answer_query(
        &self,
        peer: &str,
        req: wire::GroupQuery,
    ) -> Result<GroupView, RemoteError> {
        let row = self.group_row_of(&req.group).await?;
        if row.partner != peer {
            return Err(RemoteError::Unauthorized(format!(
                "group {} on site {} is replicated with {}, not {peer}",
                req.group,
                self.site.config().name,
                row.partner
            )));
        }
        let (mut unreplicated_bytes, mut isolated_bytes) = (0, 0);
        if row.role == Role::Primary {
            for v in self.live_volumes(&row).await? {
                let bs = u64::from(v.row().block_size);
                unreplicated_bytes += v.tracker().dirty_bytes();
                isolated_bytes += v.isolated_blocks().len() * bs;
            }
        }
        let site = self.site.clone();
        let g = row.name.clone();
        let newest_pit = blocking(move || Ok(site.groups().pits(&g)?))
            .await?
            .last()
            .map(|p| p.id);
        let view = GroupView {
            role: row.role.to_string(),
            state: row.state.to_string(),
            partner: row.partner,
            unreplicated_bytes,
            isolated_bytes,
            newest_pit,
        };
        Ok(view)
    }

    /// The group's row if this site is its primary replicating to `peer`
    /// (requests only the primary may answer).
    async fn primary_row_for(&self, peer: &str, group: &str) -> Result<GroupRow, RemoteError> {
        let row = self.group_row_of(group).await?;
        if row.partner != peer || row.role != Role::Primary {
            return Err(RemoteError::Unauthorized(format!(
                "site {} is not the primary of group {group} for {peer} (it is {} with {})",
                self.site.config().name,
                row.role,
                row.partner
            )));
        }
        Ok(row)
    }

    /// Answers [`wire::kinds::GROUP_FORGET`]: the replica tore the group
    /// down; the primary forgets it too (its volumes stay).
    pub(crate) async fn answer_forget(
        &self,
        peer: &str,
        req: wire::GroupForget,
    ) -> Result<Done, RemoteError> {
        let row = self.primary_row_for(peer, &req.group).await?;
        // The primary holds no replica store of the group to delete.
        self.forget_group(&row, false).await?;
        Ok(Done)
    }

    /// `failover run NAME [--pit P | --at TIME] [--force]` (not a test)
    /// at the replica.
    pub(crate) async fn promote(
        &self,
        group: &str,
        pit: Option<&str>,
        at: Option<&str>,
        force: bool,
        start_vms: bool,
    ) -> Result<FailoverResult, ReplError> {
        let started = Instant::now();
        let (row, store) = self.local_store(group).await?;
        let replacing = row.state == GroupState::FailedOver;
        // A time no point answers is refused before anything changes: a
        // promotion being replaced, a sync group's stream the seal ends
        // (the seal only adds a newer point). The image resolved here is
        // shared with the one resolved after the seal when it is the
        // same checkpoint.
        let before_seal = match at {
            Some(at) => Some(self.resolve_at(&row, &store, at).await?),
            None => None,
        };
        self.ready_to_promote(&row).await?;
        let mode = self.failover_mode(&row, replacing, force).await?;
        // A sync group's acknowledged writes are in its log: sealed into a
        // PIT now (and the stream refused from here on), the newest PIT
        // holds every one of them.
        self.seal_log(group).await.map_err(ReplError::Refused)?;
        let (source, point) = self.failover_source(&row, &store, pit, at).await?;
        drop(before_seal);
        self.promote_volumes(&row, &source).await?;
        let served = self.served(&row);
        // The volumes are up: a failing VM hook is reported, not undone.
        let mut errors = Vec::new();
        let hooks = if !start_vms {
            Vec::new()
        } else {
            match self
                .run_vm_hooks(&row, HookAction::Start, mode, &served)
                .await
            {
                Ok(h) => h,
                Err(e) => {
                    errors.push(e.to_string());
                    Vec::new()
                }
            }
        };
        tracing::info!(group, from = %source.describe(), mode, "failed over");
        drop(store);
        Ok(FailoverResult {
            group: group.to_string(),
            mode: mode.into(),
            pit: source.pit(),
            volumes: served,
            vms: hooks,
            duration_ms: started.elapsed().as_millis() as u64,
            errors,
            point,
        })
    }

    /// Whether the group's state allows a failover; a failed-over group
    /// promoting another PIT (before `failover commit`) first has its
    /// promoted volumes and their writes replaced.
    async fn ready_to_promote(&self, row: &GroupRow) -> Result<(), ReplError> {
        let group = row.name.as_str();
        match row.state {
            GroupState::Replicating | GroupState::Paused | GroupState::PreparedForFailover => {}
            GroupState::FailedOver => self.unpromote(row, false).await?,
            GroupState::TestFailover => {
                return Err(invalid(format!(
                    "a test failover of group {group} is running; stop it first with `offsite failover stop-test {group}`"
                )));
            }
            s => {
                return Err(invalid(format!(
                    "group {group} is {s}; failover needs a replica with a committed PIT"
                )));
            }
        }
        Ok(())
    }

    /// Planned or unplanned, by what the primary says (if it can be
    /// reached); refused while the primary is up and not prepared, or down
    /// without `--force`.
    async fn failover_mode(
        &self,
        row: &GroupRow,
        replacing: bool,
        force: bool,
    ) -> Result<&'static str, ReplError> {
        use crate::decide::{FailoverRefusal, PrimarySeen};
        let group = row.name.as_str();
        let (seen, unreachable) = match self.partner_view(row).await {
            Ok(v) => match v.state.parse() {
                Ok(state) => (PrimarySeen::Answered(state), None),
                Err(_) => (
                    PrimarySeen::Unreachable,
                    Some(format!("it reported state {:?}", v.state)),
                ),
            },
            Err(e) => (PrimarySeen::Unreachable, Some(e.to_string())),
        };
        match crate::decide::failover_mode(seen, replacing, force) {
            Ok(m) => Ok(m.as_str()),
            Err(FailoverRefusal::PrimaryUp(state)) => Err(invalid(format!(
                "the primary {} is reachable and group {group} is {state} there: run `offsite failover prepare {group}` at {} first (planned failover), or add --force",
                row.partner, row.partner
            ))),
            Err(FailoverRefusal::PrimaryDown) => Err(invalid(format!(
                "the primary {} cannot be reached ({}); for an unplanned failover from the newest PIT add --force",
                row.partner,
                unreachable.unwrap_or_default()
            ))),
        }
    }

    /// Makes `source` (a PIT, or a checkpoint's image) of every volume a
    /// writable volume of this site under the volume's own name (pinning
    /// the PIT, or the PIT the image starts from, with a failover row), all
    /// or none, and moves the group to `failed-over`.
    async fn promote_volumes(
        &self,
        row: &GroupRow,
        source: &crate::recovery::Source,
    ) -> Result<(), ReplError> {
        let (pit, checkpoint) = (source.pit(), source.checkpoint());
        // Held until the volumes are made: they share this image through
        // the site's cache instead of each building its own.
        let _image = source.clone();
        let site = self.site.clone();
        let r = row.clone();
        let store_dir = row.store_dir.clone().unwrap_or_default();
        blocking(move || {
            for v in &r.volumes {
                if site.volume_info(&v.volume).is_ok() {
                    return Err(invalid(format!(
                        "site {} already has a volume named {}; rename or delete it before failing group {} over",
                        site.config().name,
                        v.volume,
                        r.name
                    )));
                }
            }
            site.catalog_insert_failover(&FailoverRow {
                group: r.name.clone(),
                kind: "promoted".into(),
                pit_id: pit,
                checkpoint,
                started_at: String::new(),
                committed: false,
            })?;
            let mut done: Vec<String> = Vec::new();
            for v in &r.volumes {
                let lower = LowerRef {
                    store_dir: store_dir.clone(),
                    volume: v.volume.clone(),
                    pit,
                    checkpoint,
                };
                if let Err(e) = site.promote_volume(&v.volume, v.size_bytes, v.block_size, &lower) {
                    for d in &done {
                        crate::warn_if_failed(
                            "undoing a partial promotion",
                            site.retire_volume(d),
                        );
                    }
                    crate::warn_if_failed(
                        "undoing a partial promotion",
                        site.catalog_delete_failover(&r.name, "promoted"),
                    );
                    return Err(e.into());
                }
                done.push(v.volume.clone());
            }
            site.define_group_vms(&r.name)?;
            site.move_group_state(
                &r.name,
                &[
                    GroupState::Replicating,
                    GroupState::Paused,
                    GroupState::PreparedForFailover,
                    GroupState::FailedOver,
                ],
                GroupState::FailedOver,
                None,
            )?;
            Ok(())
        })
        .await
    }

    /// Undoes a promotion that was not committed: stops the VMs, discards
    /// the promoted volumes and their writes, unpins the PIT. The replica
    /// store is untouched (it accepted no PIT meanwhile).
    async fn unpromote(&self, row: &GroupRow, restore_state: bool) -> Result<(), ReplError> {
        let site = self.site.clone();
        let g = row.name.clone();
        let promoted = blocking(move || Ok(site.groups().failovers()?))
            .await?
            .into_iter()
            .find(|f| f.group == g && f.kind == "promoted");
        if promoted.as_ref().is_some_and(|p| p.committed) {
            return Err(invalid(format!(
                "the failover of group {} was committed; it can only be reversed (`offsite reverse {}`)",
                row.name, row.name
            )));
        }
        let served = self.served(row);
        self.run_vm_hooks(row, HookAction::Stop, "planned", &served)
            .await?;
        let state = if restore_state {
            match self.partner_view(row).await {
                Ok(v) if v.state == GroupState::PreparedForFailover.as_str() => {
                    GroupState::PreparedForFailover
                }
                _ => GroupState::Replicating,
            }
        } else {
            GroupState::FailedOver
        };
        let site = self.site.clone();
        let r = row.clone();
        blocking(move || {
            for v in &r.volumes {
                if site.volume_info(&v.volume).is_ok() {
                    site.retire_volume(&v.volume)?;
                }
            }
            site.catalog_delete_failover(&r.name, "promoted")?;
            site.move_group_state(&r.name, &[GroupState::FailedOver], state, None)?;
            Ok(())
        })
        .await
    }

    /// `failover commit NAME` at the replica that failed over.
    pub async fn failover_commit(&self, group: &str) -> Result<FailoverResult, ReplError> {
        let started = Instant::now();
        let row = self.group_row_of(group).await?;
        if row.state != GroupState::FailedOver {
            return Err(invalid(format!(
                "group {group} is {} here; commit follows `offsite failover run {group}` at the replica",
                row.state
            )));
        }
        let site = self.site.clone();
        let g = group.to_string();
        let pit = blocking(move || {
            site.commit_failover(&g)?;
            Ok(site
                .groups()
                .failovers()?
                .into_iter()
                .find(|f| f.group == g && f.kind == "promoted")
                .map_or(0, |f| f.pit_id))
        })
        .await?;
        Ok(FailoverResult {
            group: group.to_string(),
            mode: "commit".into(),
            pit,
            volumes: self.served(&row),
            vms: Vec::new(),
            duration_ms: started.elapsed().as_millis() as u64,
            errors: Vec::new(),
            point: None,
        })
    }

    /// `failover revert NAME`: at a prepared primary, cancels the
    /// preparation (writes allowed, VMs started again); at a replica that
    /// failed over without committing, goes back to being the replica.
    pub async fn failover_revert(&self, group: &str) -> Result<FailoverResult, ReplError> {
        let started = Instant::now();
        let row = self.group_row_of(group).await?;
        let mut hooks = Vec::new();
        match (row.role, row.state) {
            (Role::Primary, GroupState::PreparedForFailover) => {
                for v in self.live_volumes(&row).await? {
                    v.set_fenced(false);
                }
                let site = self.site.clone();
                let g = group.to_string();
                blocking(move || {
                    Ok(site.move_group_state(
                        &g,
                        &[GroupState::PreparedForFailover],
                        GroupState::Replicating,
                        None,
                    )?)
                })
                .await?;
                if let Ok(mut ch) = self.channel(&row.partner, None).await {
                    crate::warn_if_failed(
                        &format!(
                            "telling {} that group {group} replicates again",
                            row.partner
                        ),
                        ch.call(&wire::GroupPrepared {
                            group: group.to_string(),
                            pit: 0,
                        })
                        .await,
                    );
                    ch.close().await;
                }
                // The runner waits for commands while prepared: it
                // replicates again (a sync group reopens its stream).
                self.wake_runner(group).await;
                hooks = self
                    .run_vm_hooks(&row, HookAction::Start, "planned", &self.served(&row))
                    .await?;
            }
            (Role::Replica, GroupState::FailedOver) => self.unpromote(&row, true).await?,
            (role, state) => {
                return Err(invalid(format!(
                    "group {group} is {role} {state} here; revert undoes `failover prepare` at the primary or an uncommitted `failover run` at the replica"
                )));
            }
        }
        tracing::info!(group, "failover reverted");
        Ok(FailoverResult {
            group: group.to_string(),
            mode: "revert".into(),
            pit: 0,
            volumes: self.served(&row),
            vms: hooks,
            duration_ms: started.elapsed().as_millis() as u64,
            errors: Vec::new(),
            point: None,
        })
    }

    /// `reverse --discard-changes-on THIS-SITE`: the failover is undone in
    /// favour of the old primary's data. This site's state (the promoted
    /// PIT plus its writes) is kept as a named PIT of its replica store;
    /// the old primary is told to ship every block that differs again.
    async fn discard_here(
        &self,
        row: &GroupRow,
        pit: PitId,
        mut split: SplitBrain,
        started: Instant,
    ) -> Result<ReverseResult, ReplError> {
        let group = row.name.clone();
        let served = self.served(row);
        self.run_vm_hooks(row, HookAction::Stop, "planned", &served)
            .await?;
        let site = self.site.clone();
        let r = row.clone();
        let (name, blocks) = blocking(move || {
            let store =
                site.replica_store(Path::new(r.store_dir.as_deref().unwrap_or_default()))?;
            let mut writer = store
                .begin_pit()
                .map_err(|e| invalid(format!("keeping this site's state: {e}")))?;
            let mut per_volume = Vec::new();
            for v in &r.volumes {
                let vol = site.volume(&v.volume)?;
                let mut set = vol.tracker().snapshot();
                let after = store
                    .blocks_after(pit, &v.volume)
                    .map_err(|e| invalid(format!("reading the PITs after {pit}: {e}")))?;
                set.extend(after.into_iter().filter_map(|b| u32::try_from(b).ok()));
                let bs = u64::from(v.block_size);
                let mut buf = vec![0u8; bs as usize];
                for b in set.iter() {
                    vol.file()
                        .read_at(&mut buf, u64::from(b) * bs)
                        .map_err(|e| invalid(format!("reading {}: {e}", v.volume)))?;
                    let r = if buf.iter().all(|&x| x == 0) {
                        writer.write_zero_block(&v.volume, u64::from(b))
                    } else {
                        writer.write_block(&v.volume, u64::from(b), &buf)
                    };
                    r.map_err(|e| invalid(format!("keeping this site's state: {e}")))?;
                }
                per_volume.push(set.iter().collect::<Vec<u32>>());
            }
            let name = split_brain_name();
            let info = writer
                .commit(Some(name.clone()), now_rfc3339())
                .map_err(|e| invalid(format!("keeping this site's state: {e}")))?;
            tracing::info!(pit = %info.id, "this site's state kept as {name}");
            let rows = crate::pits::pit_rows(&store);
            site.groups().replace_pits(&r.name, &rows)?;
            Ok((name, per_volume))
        })
        .await?;
        // The old primary re-sends what differs; if it cannot be told, the
        // promotion stays and nothing is lost: retry.
        let mut ch = self.channel(&row.partner, None).await?;
        let r = ch
            .call(&wire::MarkDirty {
                group: group.clone(),
                blocks,
            })
            .await;
        ch.close().await;
        r?;
        let site = self.site.clone();
        let rr = row.clone();
        blocking(move || {
            for v in &rr.volumes {
                site.retire_volume(&v.volume)?;
            }
            site.catalog_delete_failover(&rr.name, "promoted")?;
            site.move_group_state(
                &rr.name,
                &[GroupState::FailedOver],
                GroupState::Replicating,
                None,
            )?;
            Ok(())
        })
        .await?;
        tracing::warn!(group = %group, pit = %name, "split brain resolved: this site's changes discarded, kept as a PIT");
        split.kept_as_pit = Some(name);
        Ok(ReverseResult {
            group,
            pit: 0,
            volumes: Vec::new(),
            bytes_transferred: 0,
            rolled_back_bytes: split.sites.get(1).map_or(0, |s| s.written_bytes),
            split_brain: Some(split),
            full_copy: false,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Answers [`wire::kinds::MARK_DIRTY`] at the primary: the replica's
    /// newest PIT differs in these blocks; the next cycle ships them.
    pub(crate) async fn answer_mark_dirty(
        &self,
        peer: &str,
        req: wire::MarkDirty,
    ) -> Result<Done, RemoteError> {
        let row = self.primary_row_for(peer, &req.group).await?;
        let live = self.live_volumes(&row).await?;
        tokio::task::spawn_blocking(move || {
            for (v, blocks) in live.iter().zip(&req.blocks) {
                let set: RoaringBitmap = blocks.iter().copied().collect();
                v.tracker()
                    .merge(&set)
                    .map_err(|e| RemoteError::Internal(e.to_string()))?;
            }
            Ok::<(), RemoteError>(())
        })
        .await??;
        Ok(Done)
    }

    /// `reverse NAME` at the site that failed over: the other site becomes
    /// the replica and the group replicates from here.
    pub async fn reverse(
        self: &Arc<Self>,
        group: &str,
        req: &ReverseRequest,
    ) -> Result<ReverseResult, ReplError> {
        let started = Instant::now();
        let (row, pit) = self.reversible(group).await?;
        // A partner rebuilt with a new identity (`partner replace`) knows
        // nothing of the group: there are no volumes to turn into the
        // replica, no writes to roll back, and it gets a full copy.
        if self
            .partner_lacks(&row)
            .await
            .map_err(|e| Self::old_primary_unreachable(&row, e))?
        {
            return self.reverse_to_rebuilt(&row, req, started).await;
        }
        // Split brain: the old primary wrote while it could not replicate
        // (and so possibly after this site took over). Its writes would be
        // rolled back; that takes the operator's explicit choice.
        let (theirs, split) = self.split_brain_view(&row, pit, req).await?;
        let here = self.site.config().name.clone();
        let ours_written = split.sites[1].written_bytes;
        let diverged = theirs.isolated_bytes > 0;
        let discard_isolated = match crate::decide::reverse_choice(
            &here,
            &row.partner,
            theirs.isolated_bytes,
            req.discard_changes_on.as_deref(),
            req.dry_run,
        ) {
            ReverseChoice::UnknownSite(loser) => {
                return Err(invalid(format!(
                    "--discard-changes-on names {loser}, which is neither site of group {group} ({} or {here})",
                    row.partner
                )));
            }
            ReverseChoice::DryRun => {
                return Ok(ReverseResult {
                    group: group.to_string(),
                    pit: 0,
                    volumes: self.served(&row),
                    bytes_transferred: 0,
                    rolled_back_bytes: 0,
                    split_brain: Some(split),
                    full_copy: false,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
            }
            ReverseChoice::SplitBrain => {
                return Err(invalid(format!(
                    "split brain in group {group}: {} wrote {} bytes while it could not replicate ({}) and {here} wrote {} bytes since it was promoted ({}); nothing was changed. Choose whose changes go: `offsite reverse {group} --discard-changes-on {}` keeps {here}'s data, `--discard-changes-on {here}` keeps {}'s; the loser's state stays there as a PIT named split-brain-TIME. `--dry-run` shows the amounts",
                    row.partner,
                    theirs.isolated_bytes,
                    split.sites[0].generation,
                    ours_written,
                    split.sites[1].generation,
                    row.partner,
                    row.partner,
                )));
            }
            ReverseChoice::DiscardHere => {
                return self.discard_here(&row, pit, split, started).await;
            }
            ReverseChoice::Proceed { discard_isolated } => discard_isolated,
        };
        let ready = self.begin_reverse_at(&row, pit, discard_isolated).await?;
        let suspects = self.suspect_blocks(&row, pit, &ready.unreplicated).await?;
        // A resumed store holds the old primary's data in its newest PIT.
        let (differing, compared_bytes) = self
            .differing_suspects(&row, &suspects, !ready.resumed)
            .await?;
        let rolled_back_bytes: u64 = row
            .volumes
            .iter()
            .zip(&differing)
            .map(|(v, set)| set.len() * u64::from(v.block_size))
            .sum();
        tracing::info!(
            group,
            compared_bytes,
            rolled_back_bytes,
            "reverse: suspect blocks compared with the new replica's copy"
        );
        self.become_primary(&row, differing, &ready).await?;
        tracing::info!(group, replica = %row.partner, store = %ready.store_dir, "reversed: replicating from here");
        self.note_dormant_named_pits(&row).await;
        self.ensure_runner(group);
        let (pit, moved) = self.first_reversed_pit(group).await?;
        let mut split = split;
        split.kept_as_pit = ready.kept_as_pit.clone();
        Ok(ReverseResult {
            group: group.to_string(),
            pit: pit.id,
            volumes: self.served(&row),
            bytes_transferred: moved,
            rolled_back_bytes,
            split_brain: diverged.then_some(split),
            full_copy: false,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// `reverse` when the old primary lacks the group (a rebuilt site):
    /// the group is created there again and sent in full, from the
    /// volumes promoted here.
    async fn reverse_to_rebuilt(
        self: &Arc<Self>,
        row: &GroupRow,
        req: &ReverseRequest,
        started: Instant,
    ) -> Result<ReverseResult, ReplError> {
        let group = row.name.as_str();
        if req.dry_run {
            return Ok(ReverseResult {
                group: group.to_string(),
                pit: 0,
                volumes: self.served(row),
                bytes_transferred: 0,
                rolled_back_bytes: 0,
                split_brain: None,
                full_copy: true,
                duration_ms: started.elapsed().as_millis() as u64,
            });
        }
        let before = self.traffic_total(group).await;
        self.recreate_at_partner(row).await?;
        self.note_dormant_named_pits(row).await;
        let pit = self.initial_replication_done(group).await?;
        let moved = self.traffic_total(group).await.saturating_sub(before);
        tracing::info!(group, replica = %row.partner, bytes = moved, "reversed to a rebuilt site: replicating from here after a full copy");
        Ok(ReverseResult {
            group: group.to_string(),
            pit,
            volumes: self.served(row),
            bytes_transferred: moved,
            rolled_back_bytes: 0,
            split_brain: None,
            full_copy: true,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Waits until group `group`'s initial replication is over and its
    /// first PIT committed (the runner does both); returns that PIT. A
    /// failing attempt does not end the wait (the runner retries, and
    /// `group status` shows the error), but the group leaving initial
    /// replication for anything but replicating does.
    async fn initial_replication_done(&self, group: &str) -> Result<u64, ReplError> {
        let mut warned: Option<String> = None;
        loop {
            let row = self.group_row_of(group).await?;
            match row.state {
                GroupState::Replicating => {
                    let site = self.site.clone();
                    let g = group.to_string();
                    let newest = blocking(move || Ok(site.groups().pits(&g)?))
                        .await?
                        .iter()
                        .map(|p| p.id)
                        .max();
                    if let Some(pit) = newest {
                        return Ok(pit);
                    }
                }
                GroupState::InitialReplication => {}
                other => {
                    return Err(invalid(format!(
                        "group {group} became {other} during its initial replication to {}; see `offsite group status {group}`",
                        row.partner
                    )));
                }
            }
            if row.last_error != warned {
                if let Some(e) = &row.last_error {
                    tracing::warn!(group, "the full copy to {} goes on after: {e}", row.partner);
                }
                warned = row.last_error.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// The group, if it can be reversed here — it failed over to this
    /// site — and the PIT it was promoted from.
    async fn reversible(&self, group: &str) -> Result<(GroupRow, PitId), ReplError> {
        let row = self.group_row_of(group).await?;
        if row.role != Role::Replica || row.state != GroupState::FailedOver {
            return Err(invalid(format!(
                "group {group} is {} {} here; reverse runs at the site a group failed over to, after `offsite failover run {group}`",
                row.role, row.state
            )));
        }
        let site = self.site.clone();
        let g = group.to_string();
        let promoted = blocking(move || Ok(site.groups().failovers()?))
            .await?
            .into_iter()
            .find(|f| f.group == g && f.kind == "promoted")
            .ok_or_else(|| invalid(format!("group {group} has no promoted PIT recorded")))?;
        let pit = PitId::new(promoted.pit_id)
            .ok_or_else(|| invalid(format!("group {group}: promoted PIT 0")))?;
        Ok((row, pit))
    }

    /// Replicates the reversed group until its first PIT from here, and
    /// returns it with the bytes moved: what the reverse moves is
    /// everything the group moves until then — one cycle (async), or a
    /// resynchronization and a seal (sync).
    async fn first_reversed_pit(
        self: &Arc<Self>,
        group: &str,
    ) -> Result<(crate::model::PitEntry, u64), ReplError> {
        let before = self.traffic_total(group).await;
        self.runners.set_reversing(group, true);
        let done = self.sync_group(group, None, true).await;
        self.runners.set_reversing(group, false);
        let moved = self.traffic_total(group).await.saturating_sub(before);
        let done = done?;
        let pit = done.pit.ok_or_else(|| {
            invalid(format!(
                "the first cycle of reversed group {group} returned no PIT"
            ))
        })?;
        Ok((pit, moved))
    }

    /// Why a reverse cannot go on without the old primary.
    fn old_primary_unreachable(row: &GroupRow, e: ReplError) -> ReplError {
        invalid(format!(
            "reverse needs the old primary {}, which becomes the replica, but it cannot be reached ({e}); bring it back and retry — nothing was changed",
            row.partner
        ))
    }

    /// Both sides' writes since they diverged: the old primary's while it
    /// could not replicate (asked of it) and ours since PIT `pit` was
    /// promoted; with the old primary's view of the group.
    async fn split_brain_view(
        &self,
        row: &GroupRow,
        pit: PitId,
        req: &ReverseRequest,
    ) -> Result<(GroupView, SplitBrain), ReplError> {
        let theirs = self
            .partner_view(row)
            .await
            .map_err(|e| Self::old_primary_unreachable(row, e))?;
        let here = self.site.config().name.clone();
        let ours_written: u64 = {
            let site = self.site.clone();
            let r = row.clone();
            blocking(move || {
                let mut n = 0;
                for v in &r.volumes {
                    n += site.volume(&v.volume)?.tracker().dirty_bytes();
                }
                Ok(n)
            })
            .await?
        };
        let split = SplitBrain {
            sites: vec![
                SplitBrainSide {
                    site: row.partner.clone(),
                    generation: format!(
                        "PIT {} + writes while isolated",
                        theirs.newest_pit.map_or("none".into(), |p| p.to_string())
                    ),
                    written_bytes: theirs.isolated_bytes,
                },
                SplitBrainSide {
                    site: here.clone(),
                    generation: format!("PIT {pit} promoted + writes since"),
                    written_bytes: ours_written,
                },
            ],
            discarded_on: req.discard_changes_on.clone(),
            kept_as_pit: None,
        };
        Ok((theirs, split))
    }

    /// Asks the old primary to become the group's replica
    /// ([`wire::kinds::REVERSE_BEGIN`]); its answer says what it holds.
    async fn begin_reverse_at(
        &self,
        row: &GroupRow,
        pit: PitId,
        discard_isolated: bool,
    ) -> Result<ReverseReady, ReplError> {
        let group = row.name.as_str();
        let mut ch = self
            .channel(&row.partner, None)
            .await
            .map_err(|e| Self::old_primary_unreachable(row, e))?;
        let last_pit = {
            let site = self.site.clone();
            let g = group.to_string();
            crate::run_blocking(move || Ok(site.groups().pits(&g)?))
                .await?
                .iter()
                .map(|p| p.id)
                .max()
                .unwrap_or(0)
                .max(pit.get())
        };
        let ready: ReverseReady = ch
            .call(&ReverseBegin {
                group: group.to_string(),
                pit: pit.get(),
                discard_isolated,
                last_pit,
            })
            .await?;
        ch.close().await;
        if ready.unreplicated.len() != row.volumes.len() {
            return Err(invalid(format!(
                "the old primary reported {} volumes for group {group}, this site has {}",
                ready.unreplicated.len(),
                row.volumes.len()
            )));
        }
        Ok(ready)
    }

    /// What the new replica may hold beyond our writes since the
    /// promotion of `pit`: its own unreplicated writes (and, after a crash,
    /// every block of its active extents, which it may or may not have
    /// written) and what the PITs after the promoted one changed there.
    /// Those blocks are only suspect: each is compared by checksum with our
    /// copy (as DRBD's checksum-based resync does), and only the ones that
    /// really differ are sent, with our own writes.
    ///
    /// After a failover to a journal checkpoint, `pit` is the PIT the
    /// checkpoint's image starts from: the blocks of the PITs after it
    /// cover the journal's writes up to the checkpoint (already in our
    /// image) and every write after it (the failover sealed the log into
    /// a PIT first), so the set is a superset of what differs, and the
    /// checksum comparison drops the rest.
    async fn suspect_blocks(
        &self,
        row: &GroupRow,
        pit: PitId,
        unreplicated: &[Vec<u32>],
    ) -> Result<Vec<RoaringBitmap>, ReplError> {
        let site = self.site.clone();
        let r = row.clone();
        let old_store = row.store_dir.clone();
        let unreplicated = unreplicated.to_vec();
        blocking(move || {
            let store: Option<Arc<ReplicaStore>> = old_store
                .as_deref()
                .map(|d| site.replica_store(Path::new(d)))
                .transpose()?;
            let mut out = Vec::new();
            for (v, theirs) in r.volumes.iter().zip(&unreplicated) {
                let mut set: RoaringBitmap = theirs.iter().copied().collect();
                if let Some(store) = &store {
                    match store.blocks_after(pit, &v.volume) {
                        Ok(after) => {
                            set.extend(after.into_iter().filter_map(|b| u32::try_from(b).ok()))
                        }
                        // A checkpoint's image may start from the base
                        // (its PIT merged into it before the failover):
                        // no PIT bounds what changed since, so every block
                        // is suspect and the checksums decide.
                        Err(offsite_replica_store::ReplicaError::NoSuchPit { .. }) => {
                            let blocks = v.size_bytes / u64::from(v.block_size);
                            set.insert_range(0..u32::try_from(blocks).unwrap_or(u32::MAX));
                        }
                        Err(e) => {
                            return Err(invalid(format!(
                                "reading the promoted PIT's successors: {e}"
                            )));
                        }
                    }
                }
                // Our own writes go anyway: no need to compare them.
                set -= site.volume(&v.volume)?.tracker().snapshot();
                out.push(set);
            }
            Ok(out)
        })
        .await
    }

    /// This site takes the group over as its primary: the blocks that
    /// differ at the new replica are marked to ship, the role, PIT list and
    /// settings (bandwidth, compression, as the old primary had them) are
    /// recorded, and the promotion is over.
    async fn become_primary(
        &self,
        row: &GroupRow,
        differing: Vec<RoaringBitmap>,
        ready: &ReverseReady,
    ) -> Result<(), ReplError> {
        let site = self.site.clone();
        let r = row.clone();
        let settings = (ready.bandwidth, ready.compress);
        let pits: Vec<offsite_catalog::PitRow> =
            ready.pits.iter().map(wire::PitDesc::to_row).collect();
        blocking(move || {
            for (v, set) in r.volumes.iter().zip(&differing) {
                let vol = site.volume(&v.volume)?;
                vol.tracker()
                    .merge(set)
                    .map_err(offsite_engine::EngineError::from)?;
            }
            site.set_group_role(
                &r.name,
                Role::Primary,
                r.store_dir.as_deref(),
                GroupState::Replicating,
            )?;
            site.catalog_delete_failover(&r.name, "promoted")?;
            site.groups().replace_pits(&r.name, &pits)?;
            // The group replicates under the settings it had.
            let bandwidth = match settings.0 {
                Some(0) => None,
                Some(b) => Some(b),
                None => r.bandwidth,
            };
            site.set_group_settings(
                &r.name,
                r.rpo_secs,
                r.keep,
                bandwidth,
                settings.1.unwrap_or(r.compress),
            )?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}
