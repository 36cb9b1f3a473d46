//! Replication groups in the site's catalog as the replication service
//! reads and records them: group rows, the VM hooks of a group's copies,
//! initial-replication progress and seeds, PITs, cycles, traffic counters
//! and failovers in progress. The replication logic lives in
//! `offsite-replication`; this is only the catalog access, behind its own
//! handle ([`Site::groups`]) rather than on `Site` itself. What changes a
//! group with an event (state, role, mode, settings, creation, deletion,
//! failovers started and ended) stays on [`Site`] (`groups.rs`).

use offsite_catalog::{CycleRow, FailoverRow, GroupRow, PitRow, Role, TrafficKind, VmRow};

use crate::{EngineError, Site};

impl Site {
    /// The site's replication groups with their PITs, cycles and failovers.
    pub fn groups(&self) -> GroupCatalog<'_> {
        GroupCatalog { site: self }
    }
}

/// The replication groups in a site's catalog (see [`Site::groups`]).
#[derive(Debug, Clone, Copy)]
pub struct GroupCatalog<'a> {
    site: &'a Site,
}

impl GroupCatalog<'_> {
    /// Every group on this site.
    pub fn all(&self) -> Result<Vec<GroupRow>, EngineError> {
        Ok(self.site.catalog().groups()?)
    }

    /// The group called `name`.
    pub fn get(&self, name: &str) -> Result<GroupRow, EngineError> {
        Ok(self.site.catalog().group(name)?)
    }

    /// The group a volume belongs to, if any.
    pub fn of_volume(&self, volume: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .all()?
            .into_iter()
            .find(|g| g.role == Role::Primary && g.volumes.iter().any(|v| v.volume == volume))
            .map(|g| g.name))
    }

    /// Rewrites the hooks of the group's copy of a VM.
    pub fn set_vm_hooks(&self, group: &str, vm: &VmRow) -> Result<(), EngineError> {
        Ok(self.site.catalog().set_group_vm_hooks(group, vm)?)
    }

    /// Records initial-replication progress of one volume.
    pub fn set_initial_progress(
        &self,
        group: &str,
        volume: &str,
        done: u64,
    ) -> Result<(), EngineError> {
        Ok(self
            .site
            .catalog()
            .set_initial_progress(group, volume, done)?)
    }

    /// Records the seed directory (on the replica) of a group's initial
    /// replication, or clears it.
    pub fn set_seed(&self, group: &str, seed: Option<&str>) -> Result<(), EngineError> {
        Ok(self
            .site
            .catalog()
            .set_setting(&format!("seed:{group}"), seed.unwrap_or(""))?)
    }

    /// The seed directory of a group's initial replication, if any.
    pub fn seed(&self, group: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .site
            .catalog()
            .setting(&format!("seed:{group}"))?
            .filter(|s| !s.is_empty()))
    }

    /// Why the group's replica may differ from its primary beyond what
    /// the change trackers hold, if it may (set and cleared, with an event,
    /// by [`Site::set_group_needs_resync`]).
    pub fn needs_resync(&self, name: &str) -> Result<Option<String>, EngineError> {
        Ok(self.site.catalog().group_needs_resync(name)?)
    }

    /// A group's PITs, oldest first.
    pub fn pits(&self, group: &str) -> Result<Vec<PitRow>, EngineError> {
        Ok(self.site.catalog().pits(group)?)
    }

    /// What `group list` reads of every group, on the catalog's read
    /// connection: the last committed state, without waiting for writers.
    pub fn snapshot(&self) -> Result<GroupsSnapshot, EngineError> {
        let c = self.site.catalog_reader();
        Ok(GroupsSnapshot {
            rows: c.groups()?,
            newest_pits: c.newest_pits()?,
            newest_app_consistent_pits: c.newest_app_consistent_pits()?,
            failovers: c.failovers()?,
            partners: c
                .partners()?
                .into_iter()
                .map(crate::partners::partner_info)
                .collect(),
        })
    }

    /// Records why the group's last application-consistent checkpoint came
    /// out crash-consistent (`None`: one succeeded since).
    pub fn set_quiesce_error(&self, group: &str, why: Option<&str>) -> Result<(), EngineError> {
        Ok(self.site.catalog().set_group_quiesce_error(group, why)?)
    }

    /// Records when the group's last successful test drill ended.
    pub fn set_last_drill(&self, group: &str, at: &str) -> Result<(), EngineError> {
        Ok(self.site.catalog().set_group_last_drill(group, at)?)
    }

    /// Replaces the recorded PIT list of a group (after a commit and retention).
    pub fn replace_pits(&self, group: &str, pits: &[PitRow]) -> Result<(), EngineError> {
        let c = self.site.catalog();
        for old in c.pits(group)? {
            if !pits.iter().any(|p| p.id == old.id) {
                c.delete_pit(group, old.id)?;
            }
        }
        for p in pits {
            c.insert_pit(group, p)?;
        }
        Ok(())
    }

    /// Records the start of a cycle.
    pub fn begin_cycle(&self, group: &str) -> Result<i64, EngineError> {
        Ok(self.site.catalog().begin_cycle(group)?)
    }

    /// Records the end of a cycle.
    pub fn end_cycle(
        &self,
        id: i64,
        bytes: u64,
        pit: Option<u64>,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        Ok(self.site.catalog().end_cycle(id, bytes, pit, error)?)
    }

    /// A group's cycles, oldest first.
    pub fn cycles(&self, group: &str) -> Result<Vec<CycleRow>, EngineError> {
        Ok(self.site.catalog().cycles(group)?)
    }

    /// Counts `bytes` the group moved for `kind` (logged, not failed: a
    /// counter must never fail the transfer it counts).
    pub fn add_traffic(&self, group: &str, kind: TrafficKind, bytes: u64) {
        if let Err(e) = self.site.catalog().add_group_traffic(group, kind, bytes) {
            tracing::warn!(group, "counting {bytes} {} bytes: {e}", kind.as_str());
        }
    }

    /// The group's bytes moved, per kind.
    pub fn traffic(&self, group: &str) -> Result<Vec<(TrafficKind, u64)>, EngineError> {
        Ok(self.site.catalog().group_traffic(group)?)
    }

    /// Failovers in progress on this site (recorded and ended, with events,
    /// by [`Site::catalog_insert_failover`] and
    /// [`Site::catalog_delete_failover`]).
    pub fn failovers(&self) -> Result<Vec<FailoverRow>, EngineError> {
        Ok(self.site.catalog().failovers()?)
    }

    /// The journal checkpoints of group `group` (its replica store in
    /// `store_dir`) that something on this site reads: a test failover or
    /// a promotion made from one (`failovers`), and promoted volumes whose
    /// lower layer is one of this store's checkpoints until they are
    /// flattened. Pruning the journal must keep them.
    pub fn checkpoints_in_use(
        &self,
        group: &str,
        store_dir: &str,
    ) -> Result<Vec<u64>, EngineError> {
        let catalog = self.site.catalog();
        let mut ids: Vec<u64> = catalog
            .failovers()?
            .into_iter()
            .filter(|f| f.group == group)
            .filter_map(|f| f.checkpoint)
            .collect();
        ids.extend(
            catalog
                .volumes()?
                .into_iter()
                .filter_map(|v| v.lower)
                .filter(|l| std::path::Path::new(&l.store_dir) == std::path::Path::new(store_dir))
                .filter_map(|l| l.checkpoint),
        );
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// Every group's rows with what their status needs, read at one instant
/// ([`GroupCatalog::snapshot`]).
#[derive(Debug, Clone)]
pub struct GroupsSnapshot {
    /// Every group, by name.
    pub rows: Vec<GroupRow>,
    /// Each group's newest PIT, by group name.
    pub newest_pits: std::collections::HashMap<String, PitRow>,
    /// Each group's newest application-consistent PIT, by group name.
    pub newest_app_consistent_pits: std::collections::HashMap<String, PitRow>,
    /// Failovers in progress.
    pub failovers: Vec<FailoverRow>,
    /// Every partner.
    pub partners: Vec<crate::PartnerInfo>,
}
