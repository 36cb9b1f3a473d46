//! Replication groups in the catalog, as the replication service reads and
//! updates them. The replication logic itself lives in `offsite-repl`;
//! this module keeps the rows consistent (one group per volume, states
//! persisted before they are reported).

use offsite_catalog::{CycleRow, FailoverRow, GroupRow, PitRow};

use crate::{EngineError, Site};

impl Site {
    /// The group called `name`.
    pub fn group_row(&self, name: &str) -> Result<GroupRow, EngineError> {
        Ok(self.catalog().group(name)?)
    }

    /// Every group on this site.
    pub fn group_rows(&self) -> Result<Vec<GroupRow>, EngineError> {
        Ok(self.catalog().groups()?)
    }

    /// Records a new group (either role).
    pub fn insert_group_row(&self, row: &GroupRow) -> Result<GroupRow, EngineError> {
        let row = self.catalog().insert_group(row)?;
        self.event(
            "group.created",
            Some(&row.name),
            &format!(
                "{} group {} with {} ({} mode, volumes {})",
                row.role,
                row.name,
                row.partner,
                row.mode,
                row.volumes
                    .iter()
                    .map(|v| v.volume.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        Ok(row)
    }

    /// Persists a state change (and records an event when it changes).
    pub fn set_group_state(
        &self,
        name: &str,
        state: &str,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        let before = self.catalog().group(name)?.state;
        self.catalog().set_group_state(name, state, error)?;
        if before != state {
            self.event(
                "group.state",
                Some(name),
                &match error {
                    Some(e) => format!("{before} -> {state}: {e}"),
                    None => format!("{before} -> {state}"),
                },
            );
        }
        Ok(())
    }

    /// Records the last error of a group without changing its state.
    pub fn set_group_error(&self, name: &str, error: Option<&str>) -> Result<(), EngineError> {
        let state = self.catalog().group(name)?.state;
        self.catalog().set_group_state(name, &state, error)?;
        if let Some(e) = error {
            self.event("group.error", Some(name), e);
        }
        Ok(())
    }

    /// Records initial-replication progress of one volume.
    pub fn set_initial_progress(
        &self,
        group: &str,
        volume: &str,
        done: u64,
    ) -> Result<(), EngineError> {
        Ok(self.catalog().set_initial_progress(group, volume, done)?)
    }

    /// Deletes a group's row (its PITs and cycles with it).
    pub fn delete_group_row(&self, name: &str) -> Result<(), EngineError> {
        self.catalog().delete_group(name)?;
        self.event("group.deleted", Some(name), "group torn down");
        Ok(())
    }

    /// Replaces the recorded PIT list of a group (after a commit and retention).
    pub fn replace_pits(&self, group: &str, pits: &[PitRow]) -> Result<(), EngineError> {
        let c = self.catalog();
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

    /// A group's PITs, oldest first.
    pub fn pit_rows(&self, group: &str) -> Result<Vec<PitRow>, EngineError> {
        Ok(self.catalog().pits(group)?)
    }

    /// Records the start of a cycle.
    pub fn begin_cycle(&self, group: &str) -> Result<i64, EngineError> {
        Ok(self.catalog().begin_cycle(group)?)
    }

    /// Records the end of a cycle.
    pub fn end_cycle(
        &self,
        id: i64,
        bytes: u64,
        pit: Option<u64>,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        Ok(self.catalog().end_cycle(id, bytes, pit, error)?)
    }

    /// A group's cycles, oldest first.
    pub fn cycle_rows(&self, group: &str) -> Result<Vec<CycleRow>, EngineError> {
        Ok(self.catalog().cycles(group)?)
    }

    /// Records the seed directory (on the replica) of a group's initial
    /// replication, or clears it.
    pub fn set_group_seed(&self, group: &str, seed: Option<&str>) -> Result<(), EngineError> {
        Ok(self
            .catalog()
            .set_setting(&format!("seed:{group}"), seed.unwrap_or(""))?)
    }

    /// The seed directory of a group's initial replication, if any.
    pub fn group_seed(&self, group: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .catalog()
            .setting(&format!("seed:{group}"))?
            .filter(|s| !s.is_empty()))
    }

    /// The group a volume belongs to, if any.
    pub fn group_of_volume(&self, volume: &str) -> Result<Option<String>, EngineError> {
        Ok(self
            .group_rows()?
            .into_iter()
            .find(|g| g.role == "primary" && g.volumes.iter().any(|v| v.volume == volume))
            .map(|g| g.name))
    }

    /// Records a failover in progress (its PIT is pinned against retention).
    pub fn catalog_insert_failover(&self, f: &FailoverRow) -> Result<(), EngineError> {
        let mut f = f.clone();
        if f.started_at.is_empty() {
            f.started_at = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
        }
        self.catalog().insert_failover(&f)?;
        self.event(
            "failover.started",
            Some(&f.group),
            &format!(
                "{} failover of group {} from PIT {}",
                f.kind, f.group, f.pit_id
            ),
        );
        Ok(())
    }

    /// Forgets a failover (stopped, committed or reverted).
    pub fn catalog_delete_failover(&self, group: &str, kind: &str) -> Result<(), EngineError> {
        self.catalog().delete_failover(group, kind)?;
        self.event(
            "failover.ended",
            Some(group),
            &format!("{kind} failover of group {group} ended"),
        );
        Ok(())
    }

    /// Failovers in progress on this site.
    pub fn failovers(&self) -> Result<Vec<FailoverRow>, EngineError> {
        Ok(self.catalog().failovers()?)
    }
}
