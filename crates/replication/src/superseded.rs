//! An old primary that learns its group was failed over elsewhere.
//!
//! After an unplanned failover the old primary may come back (a restart,
//! a healed network) still believing it is the primary: its volumes would
//! take writes that the new primary never sees. As soon as it learns
//! otherwise — at start-up, when it asks the partner, or at the first
//! contact that the partner refuses — the group turns `failed-over-elsewhere`
//! (health critical) and its volumes are fenced: writes fail with an NBD
//! error that says why. The operator resolves it with `reverse` at the new
//! primary (`--discard-changes-on` if it reports a split brain), which makes
//! this site the replica, or, if the failover was reverted there, with
//! `group unfence` here.
//!
//! Writes made before this site learned of the failover are what split-brain
//! detection reports; fencing does not change that.

use std::sync::Arc;

use crate::model::GroupStatus;
use offsite_catalog::GroupRow;
use offsite_catalog::{GroupState, Role};

use crate::{ReplError, Replication, invalid, run_blocking};

/// The state of a primary's group whose partner took it over.
pub(crate) const SUPERSEDED: GroupState = GroupState::FailedOverElsewhere;

/// States of a primary group that a failover elsewhere supersedes (a
/// prepared group is already fenced and expects it).
fn may_be_superseded(row: &GroupRow) -> bool {
    row.role == Role::Primary && GroupState::SUPERSEDABLE.contains(&row.state)
}

impl Replication {
    /// Asks the partner whether it took `row`'s group over; if so, fences
    /// it here. Returns whether it did. An unreachable partner proves
    /// nothing: the group goes on (its writes are isolated, as before).
    pub(crate) async fn check_superseded(&self, row: &GroupRow) -> bool {
        self.ask_superseded(row).await.unwrap_or(false)
    }

    /// [`Self::check_superseded`]; `None` when the partner could not be
    /// asked.
    async fn ask_superseded(&self, row: &GroupRow) -> Option<bool> {
        if !may_be_superseded(row) {
            return Some(false);
        }
        let view = self.partner_view(row).await.ok()?;
        if view.state != GroupState::FailedOver.as_str() {
            return Some(false);
        }
        let why = format!(
            "group {} was failed over to site {}; this site's copy is no longer the primary and refuses writes: run `offsite reverse {}` at {} to make this site its replica (with `--discard-changes-on {}` if it reports a split brain), or `offsite group unfence {}` here if that failover was reverted",
            row.name,
            row.partner,
            row.name,
            row.partner,
            self.site.config().name,
            row.name
        );
        match self.fence_superseded(row, &why).await {
            Ok(()) => Some(true),
            Err(e) => {
                tracing::error!(group = %row.name, "fencing a superseded group failed: {e}");
                Some(false)
            }
        }
    }

    async fn fence_superseded(&self, row: &GroupRow, why: &str) -> Result<(), ReplError> {
        for v in self.live_volumes(row).await? {
            v.fence_because(why.to_string());
        }
        let site = self.site.clone();
        let (g, w) = (row.name.clone(), why.to_string());
        run_blocking(move || {
            site.move_group_state(&g, GroupState::SUPERSEDABLE, SUPERSEDED, Some(&w))?;
            site.note("group.superseded", &g, &w);
            Ok(())
        })
        .await?;
        tracing::warn!(group = %row.name, partner = %row.partner, "the partner took this group over: volumes fenced");
        Ok(())
    }

    /// At start-up: fences the groups known to be superseded, and asks the
    /// partners of the others (in the background: an unreachable partner
    /// must not hold the daemon up).
    pub(crate) async fn restore_superseded(self: &Arc<Self>) -> Result<(), ReplError> {
        let site = self.site.clone();
        let rows = run_blocking(move || Ok(site.groups().all()?)).await?;
        let mut ask = Vec::new();
        for row in rows {
            if row.role == Role::Primary && row.state == SUPERSEDED {
                let why = row.last_error.clone().unwrap_or_else(|| {
                    format!("group {} was failed over to site {}", row.name, row.partner)
                });
                for v in self.live_volumes(&row).await? {
                    v.fence_because(why.clone());
                }
            } else if may_be_superseded(&row) {
                ask.push(row);
            }
        }
        // One group after the other (a site with many groups opens one
        // session at a time), skipping the groups of a partner that could
        // not be asked: their first refused cycle tells instead.
        let me = self.clone();
        tokio::spawn(async move {
            let mut unreachable = std::collections::HashSet::new();
            for row in ask {
                if unreachable.contains(&row.partner) {
                    continue;
                }
                match me.ask_superseded(&row).await {
                    None => {
                        unreachable.insert(row.partner.clone());
                    }
                    Some(true) => {
                        if let Some(r) = me.runners.get(&row.name) {
                            r.wake().await;
                        }
                    }
                    Some(false) => {}
                }
            }
        });
        Ok(())
    }

    /// `group unfence NAME` at a primary whose group was fenced because its
    /// partner had taken it over: after that failover was reverted there,
    /// the group replicates from here again. Refused while the partner
    /// still holds it failed over, unless `force`.
    pub async fn unfence_group(
        self: &Arc<Self>,
        name: &str,
        force: bool,
    ) -> Result<GroupStatus, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let row = run_blocking(move || Ok(site.groups().get(&n)?)).await?;
        if row.role != Role::Primary || row.state != SUPERSEDED {
            return Err(invalid(format!(
                "group {name} is {} {} here; unfence is for a primary whose group was failed over elsewhere ({SUPERSEDED})",
                row.role, row.state
            )));
        }
        if !force {
            match self.partner_view(&row).await {
                Ok(view) if view.state == GroupState::FailedOver.as_str() => {
                    return Err(invalid(format!(
                        "site {} still holds group {name} failed over; resolve it there (`offsite reverse {name}` or `offsite failover revert {name}`), or add --force to take writes here anyway (a split brain)",
                        row.partner
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(invalid(format!(
                        "cannot ask site {} whether it still holds group {name} failed over ({e}); retry when it is reachable, or add --force",
                        row.partner
                    )));
                }
            }
        }
        for v in self.live_volumes(&row).await? {
            v.set_fenced(false);
        }
        let site = self.site.clone();
        let n = name.to_string();
        run_blocking(move || {
            site.move_group_state(&n, &[SUPERSEDED], GroupState::Replicating, None)?;
            site.note("group.unfenced", &n, "writes accepted again; replicating");
            Ok(())
        })
        .await?;
        if let Some(r) = self.runners.get(name) {
            r.wake().await;
        }
        self.group_status(name).await
    }
}
