//! Changing a group's or a VM's settings in place (`group set`, `vm set`).
//! The replica keeps copies of some of them (the RPO and retention of a
//! group, the hooks of its VMs): those reach it first, so that a partner
//! that cannot be reached or refuses means nothing changed. The primary's
//! runner reads its group row at every turn; waking it is all it takes to
//! apply a change.

use std::sync::Arc;

use crate::model::{GroupStatus, SetGroup};
use offsite_catalog::GroupRow;
use offsite_catalog::{Mode, Role};
use offsite_engine::{SetVm, VmInfo};

use crate::primary::RPO_RANGE;
use crate::wire::{self, VmDesc};
use crate::{RemoteError, ReplError, Replication, invalid};

impl Replication {
    /// `group set NAME [--mode] [--rpo] [--keep] [--bandwidth] [--compression]`,
    /// at the primary.
    pub async fn set_group(
        self: &Arc<Self>,
        name: &str,
        req: &SetGroup,
    ) -> Result<GroupStatus, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let row = crate::run_blocking(move || Ok(site.groups().get(&n)?)).await?;
        if row.role != Role::Primary {
            return Err(invalid(format!(
                "group {name} is a replica here; run `offsite group set` at its primary site {}",
                row.partner
            )));
        }
        if let Some(rpo) = req.rpo_secs
            && !RPO_RANGE.contains(&rpo)
        {
            return Err(invalid(format!(
                "RPO {rpo}s is outside 30s..24h; use e.g. --rpo 5m"
            )));
        }
        if let Some(keep) = req.keep
            && !(1..=crate::model::MAX_KEEP).contains(&keep)
        {
            return Err(invalid(format!(
                "--keep {keep} is outside 1..{}",
                crate::model::MAX_KEEP
            )));
        }
        if let Some(bw) = req.bandwidth_bytes_per_sec {
            offsite_engine::check_bandwidth(bw)?;
        }
        if let Some(mode) = &req.mode
            && mode.parse::<Mode>().is_err()
        {
            return Err(invalid(format!("mode {mode:?} is neither async nor sync")));
        }
        let rpo = req.rpo_secs.unwrap_or(row.rpo_secs);
        let keep = req.keep.unwrap_or(row.keep);
        let bandwidth = match req.bandwidth_bytes_per_sec {
            Some(0) => None,
            Some(b) => Some(b),
            None => row.bandwidth,
        };
        let compress = req.compress.unwrap_or(row.compress);
        let every = req
            .app_consistent_every_secs
            .unwrap_or(row.app_consistent_every_secs);
        if every != row.app_consistent_every_secs {
            crate::primary::check_app_consistent_every(every)?;
            crate::primary::check_schedule_quiescable(name, &row.vms, every)?;
        }
        let journal = crate::journal::checked(
            row.journal,
            req.checkpoint_interval_ms,
            req.journal_history_secs,
            req.journal_max_bytes,
        )?;
        let journal_changed = journal != row.journal;
        if rpo != row.rpo_secs
            || keep != row.keep
            || every != row.app_consistent_every_secs
            || journal_changed
        {
            // The replica's copy: retention runs there, and the RPO is the
            // group's once a reverse makes it the primary (bandwidth and
            // compression ride along for its status; a reverse takes them
            // from this site in any case).
            self.tell_replica(
                &row,
                wire::GroupSetMode {
                    group: name.to_string(),
                    mode: row.mode.to_string(),
                    rpo_secs: Some(rpo),
                    keep: Some(keep),
                    bandwidth: Some(bandwidth.unwrap_or(0)),
                    compress: Some(compress),
                    vm: None,
                    app_consistent_every_secs: (every != row.app_consistent_every_secs)
                        .then_some(every),
                    // The replica keeps and prunes the journal by them.
                    journal: journal_changed.then(|| wire::JournalDesc::of(&journal)),
                },
                "the new settings",
            )
            .await?;
        }
        if every != row.app_consistent_every_secs {
            let site = self.site.clone();
            let n = name.to_string();
            crate::run_blocking(move || Ok(site.set_group_app_consistent_every(&n, every)?))
                .await?;
            // The runner reads the schedule at its next turn.
            self.wake_runner(name).await;
        }
        if journal_changed {
            let site = self.site.clone();
            let n = name.to_string();
            crate::run_blocking(move || Ok(site.set_group_journal(&n, &journal)?)).await?;
            // A streaming runner takes the new checkpoint interval.
            self.wake_runner(name).await;
        }
        if (rpo, keep, bandwidth, compress) != (row.rpo_secs, row.keep, row.bandwidth, row.compress)
        {
            let site = self.site.clone();
            let n = name.to_string();
            crate::run_blocking(move || {
                Ok(site.set_group_settings(&n, rpo, keep, bandwidth, compress)?)
            })
            .await?;
            // A runner waiting for its next cycle recomputes the interval;
            // the next cycle's session takes the bandwidth and compression.
            self.wake_runner(name).await;
        }
        match &req.mode {
            Some(mode) => self.set_group_mode(name, mode).await,
            None => self.group_status(name).await,
        }
    }

    /// Sends a settings change to the group's replica; an error says that
    /// nothing changed.
    async fn tell_replica(
        &self,
        row: &GroupRow,
        change: wire::GroupSetMode,
        what: &str,
    ) -> Result<(), ReplError> {
        let refused = |e: ReplError| {
            let text = format!(
                "the replica {} of group {} did not take {what} ({e}); nothing changed: retry once it is reachable",
                row.partner, row.name
            );
            // The partner's refusal keeps its code; failing to reach it is
            // a refusal of this change.
            ReplError::Refused(match e {
                ReplError::Refused(r) => r.map_message(|_| text),
                _ => RemoteError::Refused(text),
            })
        };
        let mut ch = self.channel(&row.partner, None).await.map_err(refused)?;
        let r = ch.call(&change).await;
        ch.close().await;
        r.map(drop).map_err(refused)
    }

    /// `vm set NAME`: hooks (and volumes while the VM is in no group). The
    /// groups this site replicates the VM in keep a copy of its hooks on
    /// both sites (the replica runs them at failover): the replicas take
    /// the change first.
    pub async fn set_vm(&self, name: &str, req: &SetVm) -> Result<VmInfo, ReplError> {
        let site = self.site.clone();
        let (n, r) = (name.to_string(), req.clone());
        let (vm, groups) = crate::run_blocking(move || Ok(site.vm_change(&n, &r)?)).await?;
        for g in &groups {
            self.tell_replica(
                g,
                wire::GroupSetMode {
                    group: g.name.clone(),
                    mode: g.mode.to_string(),
                    rpo_secs: None,
                    keep: None,
                    bandwidth: None,
                    compress: None,
                    vm: Some(VmDesc::of_row(&vm)),
                    app_consistent_every_secs: None,
                    journal: None,
                },
                &format!("the new hooks of VM {name}"),
            )
            .await?;
        }
        let site = self.site.clone();
        let names: Vec<String> = groups.into_iter().map(|g| g.name).collect();
        crate::run_blocking(move || Ok(site.store_vm(&vm, &names)?)).await
    }
}
