//! A partner rebuilt with a new identity (`partner replace`): the site
//! was lost with its data directory and set up again under the same name
//! with a new certificate, so it knows none of the groups it shared with
//! this site.
//!
//! Nothing is re-entered by hand. The groups keep naming the partner (the
//! name stays, only the pin changes), and each is brought back from this
//! site's catalog, which holds every group's full definition (volumes,
//! VMs with their hooks, mode, schedule, journal, bandwidth):
//!
//! - a group this site is the **primary** of lost its replica: it is
//!   created again at the partner (`GROUP_CREATE`, its PIT ids going on
//!   after this site's last) and replicated from scratch (initial
//!   replication: a full copy);
//! - a group this site **failed over** (the partner was its primary):
//!   `reverse` finds the partner without the group and does the same,
//!   instead of asking it to turn its volumes into the replica
//!   (`reverse` in `switch.rs`);
//! - a group still **replicating from the partner** must be failed over
//!   here first (the primary is gone): reported, not changed.
//!
//! Plans and VM definitions follow: the plan service sends every plan
//! shared with the partner once its groups exist there (`offsite-plan`),
//! and the VMs travel in each group's definition, defined at the partner
//! when a failback promotes the group there.

use std::sync::Arc;

use offsite_catalog::{GroupRow, GroupState, Role};
use serde::{Deserialize, Serialize};

use crate::wire::{self, GroupCreate, GroupCreated, VmDesc, VolumeDesc};
use crate::{RemoteError, ReplError, Replication, run_blocking as blocking};

/// What `partner replace` did with one group shared with the partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplacedAction {
    /// This site is the primary and the partner lacked the group: created
    /// there again, initial replication (a full copy) started.
    FullCopy,
    /// The partner still knows the group (the same site under a new
    /// certificate): nothing to do.
    Unchanged,
    /// This site failed the group over: `reverse` (or a plan's reprotect)
    /// makes the partner its replica, with a full copy.
    ReverseNext,
    /// The partner was the group's primary and this site has not failed
    /// it over: fail over first (`plan run --mode disaster`, `failover
    /// run --force`), then reverse.
    FailOverFirst,
    /// The partner could not be asked (or refused): run `partner
    /// replace` again once it is reachable and authorizes this site.
    Pending,
}

/// One group in the answer to `partner replace`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplacedGroup {
    /// Group name.
    pub group: String,
    /// What was done or is next.
    pub action: ReplacedAction,
    /// The same in words, with the command to run next if any.
    pub detail: String,
}

/// Whether the partner has no group of that name: the answer of a
/// rebuilt site (or one where the group was deleted).
fn lacks_group(r: &Result<wire::GroupView, ReplError>) -> bool {
    matches!(r, Err(ReplError::Refused(RemoteError::NotFound(_))))
}

impl Replication {
    /// Whether the partner of `row` lacks the group (`Ok(false)`: it has
    /// it; an error: it could not be asked).
    pub(crate) async fn partner_lacks(&self, row: &GroupRow) -> Result<bool, ReplError> {
        let view = self.partner_view(row).await;
        if lacks_group(&view) {
            return Ok(true);
        }
        view.map(|_| false)
    }

    /// The group's definition as its primary sends it (`GROUP_CREATE`),
    /// from this site's catalog row, for a partner that lost it. PIT ids
    /// go on after `pits_after`.
    async fn definition_of(
        &self,
        row: &GroupRow,
        pits_after: u64,
    ) -> Result<GroupCreate, ReplError> {
        let site = self.site.clone();
        let r = row.clone();
        let volumes = blocking(move || {
            let mut out = Vec::new();
            for v in &r.volumes {
                let allocated = site.volume(&v.volume)?.file().allocated_bytes().ok();
                out.push(VolumeDesc {
                    name: v.volume.clone(),
                    size_bytes: v.size_bytes,
                    block_size: v.block_size,
                    allocated_bytes: allocated.map(|a| a.min(v.size_bytes)),
                });
            }
            Ok(out)
        })
        .await?;
        Ok(GroupCreate {
            group: row.name.clone(),
            mode: row.mode.to_string(),
            rpo_secs: row.rpo_secs,
            keep: row.keep,
            security_tag: row.security_tag.clone(),
            on_link_loss: row.on_link_loss.clone(),
            suspend_timeout_secs: row.suspend_timeout_secs,
            volumes,
            vms: row.vms.iter().map(VmDesc::of_row).collect(),
            bandwidth: row.bandwidth,
            compress: row.compress,
            app_consistent_every_secs: row.app_consistent_every_secs,
            journal: Some(wire::JournalDesc::of(&row.journal)),
            pits_after,
            key: self.group_key_line(&row.name).await?,
        })
    }

    /// Creates group `row` again at its partner, which lacks it, and makes
    /// this site its primary from scratch: initial replication (a full
    /// copy) from the volumes as they are here. The group's other state
    /// here — a promotion, the PIT list of the lost replica — goes; this
    /// site's own replica store of the group (kept from before a failover)
    /// stays where it is, as after any reverse.
    pub(crate) async fn recreate_at_partner(
        self: &Arc<Self>,
        row: &GroupRow,
    ) -> Result<GroupCreated, ReplError> {
        let last_pit = {
            let site = self.site.clone();
            let g = row.name.clone();
            blocking(move || Ok(site.groups().pits(&g)?))
                .await?
                .iter()
                .map(|p| p.id)
                .max()
                .unwrap_or(0)
        };
        let create = self.definition_of(row, last_pit).await?;
        let mut ch = self.channel(&row.partner, None).await?;
        let created: GroupCreated = ch.call(&create).await?;
        if create.key.is_some() && !created.encrypted {
            ch.close().await;
            self.undo_replica_side(&row.partner, &row.name).await;
            return Err(crate::primary::old_replica_for_encryption(
                &row.partner,
                &row.name,
            ));
        }
        ch.close().await;
        let site = self.site.clone();
        let r = row.clone();
        let recorded = blocking(move || {
            // As `group start`: everything is copied now, and what changes
            // from here on is tracked and shipped by the first cycle.
            for v in &r.volumes {
                site.volume(&v.volume)?
                    .tracker()
                    .clear()
                    .map_err(offsite_engine::EngineError::from)?;
                site.groups().set_initial_progress(&r.name, &v.volume, 0)?;
            }
            site.groups().set_seed(&r.name, None)?;
            if r.role == Role::Replica {
                site.catalog_delete_failover(&r.name, "promoted")?;
            }
            site.set_group_role(
                &r.name,
                Role::Primary,
                r.store_dir.as_deref(),
                GroupState::InitialReplication,
            )?;
            site.groups().replace_pits(&r.name, &[])?;
            site.note(
                "group.recreated",
                &r.name,
                &format!(
                    "group {} created again at {}, which had lost it (a rebuilt site); initial replication sends it a full copy",
                    r.name, r.partner
                ),
            );
            Ok(())
        })
        .await;
        if let Err(e) = recorded {
            self.undo_replica_side(&row.partner, &row.name).await;
            return Err(e);
        }
        tracing::info!(group = %row.name, replica = %row.partner, store = %created.store_dir, "group created again at a rebuilt partner: initial replication");
        let runner = self.ensure_runner(&row.name);
        runner.wake().await;
        Ok(created)
    }

    /// `partner replace NAME`: pins the rebuilt partner's new identity,
    /// then brings back every group shared with it that this site can
    /// (see the module doc); the answer says, per group, what was done or
    /// what to run next.
    pub async fn replace_partner(
        self: &Arc<Self>,
        name: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<(offsite_engine::PartnerInfo, Vec<ReplacedGroup>), ReplError> {
        let site = self.site.clone();
        let (n, a, f) = (
            name.to_string(),
            address.to_string(),
            fingerprint.to_string(),
        );
        let partner = blocking(move || Ok(site.replace_partner(&n, &a, &f)?)).await?;
        // Every connection reads the pin from the catalog: the next one
        // to the partner already expects the new certificate.
        let site = self.site.clone();
        let rows: Vec<GroupRow> = blocking(move || Ok(site.groups().all()?))
            .await?
            .into_iter()
            .filter(|g| g.partner == name)
            .collect();
        let mut out = Vec::new();
        for row in rows {
            let (action, detail) = self.replace_one(&row).await;
            out.push(ReplacedGroup {
                group: row.name.clone(),
                action,
                detail,
            });
        }
        Ok((partner, out))
    }

    async fn replace_one(self: &Arc<Self>, row: &GroupRow) -> (ReplacedAction, String) {
        let g = &row.name;
        let p = &row.partner;
        match (row.role, row.state) {
            (Role::Replica, GroupState::FailedOver) => (
                ReplacedAction::ReverseNext,
                format!(
                    "failed over to this site: `offsite reverse {g}` (or the plan's reprotect) makes {p} its replica with a full copy"
                ),
            ),
            (Role::Replica, _) => (
                ReplacedAction::FailOverFirst,
                format!(
                    "{p} was its primary: fail it over here first (`offsite plan run PLAN --mode disaster` or `offsite failover run {g} --force`), then `offsite reverse {g}`"
                ),
            ),
            (Role::Primary, state)
                if !matches!(
                    state,
                    GroupState::Replicating
                        | GroupState::Paused
                        | GroupState::Resynchronizing
                        | GroupState::InitialReplication
                ) =>
            {
                (
                    ReplacedAction::Pending,
                    format!(
                        "group {g} is {state} here; bring it back to replicating, then run `offsite partner replace` again"
                    ),
                )
            }
            (Role::Primary, _) => match self.partner_lacks(row).await {
                Ok(false) => (
                    ReplacedAction::Unchanged,
                    format!("{p} still holds group {g}: nothing to do"),
                ),
                Ok(true) => match self.recreate_at_partner(row).await {
                    Ok(created) => (
                        ReplacedAction::FullCopy,
                        format!(
                            "created again at {p} (store {}, authorized by {}); initial replication sends it a full copy",
                            created.store_dir, created.rule
                        ),
                    ),
                    Err(e) => (
                        ReplacedAction::Pending,
                        format!(
                            "{p} could not take group {g} ({e}); fix that, then run `offsite partner replace` again"
                        ),
                    ),
                },
                Err(e) => (
                    ReplacedAction::Pending,
                    format!(
                        "{p} could not be asked about group {g} ({e}); pair it (`offsite partner add` there) and run `offsite partner replace` again"
                    ),
                ),
            },
        }
    }
}
