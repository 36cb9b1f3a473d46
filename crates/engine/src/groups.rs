//! Replication groups in the catalog, as the replication service reads and
//! updates them. The replication logic itself lives in `offsite-replication`;
//! this module keeps the rows consistent (one group per volume, states
//! persisted before they are reported, each change recorded as an event).
//! Plain reads and records of groups, PITs, cycles and failovers are on
//! [`Site::groups`] ([`crate::GroupCatalog`]).

use offsite_catalog::{FailoverRow, GroupRow, GroupState, Mode, Role};

use std::sync::Arc;

use crate::{EngineError, Site};

impl Site {
    /// The counter of changes to the group tables
    /// ([`offsite_catalog::Catalog::group_changes`]): the same value before
    /// and after a read of a group row means that row is still current.
    pub fn group_changes(&self) -> u64 {
        self.group_changes
            .load(std::sync::atomic::Ordering::Acquire)
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

    /// Converts a group between `async` and `sync` (an event records it).
    pub fn set_group_mode(&self, name: &str, mode: Mode) -> Result<(), EngineError> {
        let before = self.catalog().set_group_mode(name, mode)?;
        if before != mode {
            self.event(
                "group.mode",
                Some(name),
                &format!("mode {before} -> {mode}"),
            );
        }
        Ok(())
    }

    /// Changes a group's RPO, retention, bandwidth limit and compression
    /// (an event records what changed).
    pub fn set_group_settings(
        &self,
        name: &str,
        rpo_secs: u64,
        keep: u32,
        bandwidth: Option<u64>,
        compress: bool,
    ) -> Result<(), EngineError> {
        let before = self.catalog().group(name)?;
        self.catalog()
            .set_group_settings(name, rpo_secs, keep, bandwidth, compress)?;
        let mut changes = Vec::new();
        if before.rpo_secs != rpo_secs {
            changes.push(format!("rpo {}s -> {rpo_secs}s", before.rpo_secs));
        }
        if before.keep != keep {
            changes.push(format!("keep {} -> {keep}", before.keep));
        }
        let bw = |b: Option<u64>| b.map_or("unlimited".to_string(), |b| format!("{b} B/s"));
        if before.bandwidth != bandwidth {
            changes.push(format!(
                "bandwidth {} -> {}",
                bw(before.bandwidth),
                bw(bandwidth)
            ));
        }
        if before.compress != compress {
            let c = |z: bool| if z { "zstd" } else { "none" };
            changes.push(format!(
                "compression {} -> {}",
                c(before.compress),
                c(compress)
            ));
        }
        if !changes.is_empty() {
            self.event("group.settings", Some(name), &changes.join(", "));
        }
        Ok(())
    }

    /// Sets how often the group's runner takes an application-consistent
    /// PIT by itself (0: never; an event records a change).
    pub fn set_group_app_consistent_every(&self, name: &str, secs: u64) -> Result<(), EngineError> {
        let before = self.catalog().group(name)?.app_consistent_every_secs;
        if before == secs {
            return Ok(());
        }
        self.catalog().set_group_app_consistent_every(name, secs)?;
        let every = |s: u64| {
            if s == 0 {
                "off".to_string()
            } else {
                format!("every {s}s")
            }
        };
        self.event(
            "group.settings",
            Some(name),
            &format!(
                "app-consistent checkpoints {} -> {}",
                every(before),
                every(secs)
            ),
        );
        Ok(())
    }

    /// Sets the group's journal (checkpoint interval, history, size); an
    /// event records a change.
    pub fn set_group_journal(
        &self,
        name: &str,
        journal: &offsite_catalog::JournalSettings,
    ) -> Result<(), EngineError> {
        let before = self.catalog().group(name)?.journal;
        if before == *journal {
            return Ok(());
        }
        self.catalog().set_group_journal(name, journal)?;
        let show = |j: &offsite_catalog::JournalSettings| {
            format!(
                "checkpoint every {} ms, {} s of history, at most {} bytes",
                j.checkpoint_interval_ms, j.history_secs, j.max_bytes
            )
        };
        self.event(
            "group.settings",
            Some(name),
            &format!("journal {} -> {}", show(&before), show(journal)),
        );
        Ok(())
    }

    /// Persists a state change (and records an event when it changes); the
    /// move must be legal from whatever state the group is in
    /// ([`offsite_catalog::transition`]).
    pub fn set_group_state(
        &self,
        name: &str,
        state: GroupState,
        error: Option<&str>,
    ) -> Result<(), EngineError> {
        self.move_group_state(name, &[], state, error).map(drop)
    }

    /// Moves a group to `to` if it is in one of `expected_from` (any state
    /// when empty), checked and written in one catalog transaction
    /// ([`offsite_catalog::Catalog::move_group_state`]); records an event
    /// when the state changes. Returns the state it was in.
    pub fn move_group_state(
        &self,
        name: &str,
        expected_from: &[GroupState],
        to: GroupState,
        error: Option<&str>,
    ) -> Result<GroupState, EngineError> {
        let before = self
            .catalog()
            .move_group_state(name, expected_from, to, error)?;
        if before != to {
            self.event(
                "group.state",
                Some(name),
                &match error {
                    Some(e) => format!("{before} -> {to}: {e}"),
                    None => format!("{before} -> {to}"),
                },
            );
        }
        Ok(before)
    }

    /// Records the last error of a group without changing its state.
    pub fn set_group_error(&self, name: &str, error: Option<&str>) -> Result<(), EngineError> {
        self.catalog().set_group_error(name, error)?;
        if let Some(e) = error {
            self.event("group.error", Some(name), e);
        }
        Ok(())
    }

    /// Deletes a group's row (its PITs and cycles with it).
    pub fn delete_group_row(&self, name: &str) -> Result<(), EngineError> {
        self.catalog().delete_group(name)?;
        self.event("group.deleted", Some(name), "group torn down");
        // The key of an encrypted group is never deleted (a store kept
        // aside may need it): it moves aside, so the name is free.
        let key = self.layout.group_key(name);
        if key.exists() {
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let aside = key.with_extension(format!("key.torn-down-{stamp}"));
            std::fs::rename(&key, &aside).map_err(|e| EngineError::io("rename", &key, e))?;
            self.event(
                "group.key-kept",
                Some(name),
                &format!(
                    "the key of torn-down group {name} is kept as {} (the replicas it encrypted need it)",
                    aside.display()
                ),
            );
        }
        Ok(())
    }

    /// Marks (`Some(why)`) or clears the need of a `group resync`; an
    /// event records each change.
    pub fn set_group_needs_resync(&self, name: &str, why: Option<&str>) -> Result<(), EngineError> {
        let before = self.catalog().group_needs_resync(name)?;
        if before.as_deref() == why {
            return Ok(());
        }
        self.catalog().set_group_needs_resync(name, why)?;
        match why {
            Some(why) => self.event(
                "group.needs-resync",
                Some(name),
                &format!("{why}; run `offsite group resync {name}`"),
            ),
            None => self.event(
                "group.resynced",
                Some(name),
                "the replica matches the primary again",
            ),
        }
        Ok(())
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

    /// `failover commit`: the promotion stays (no revert, no other PIT).
    pub fn commit_failover(&self, group: &str) -> Result<(), EngineError> {
        self.catalog().commit_failover(group, "promoted")?;
        self.event(
            "failover.committed",
            Some(group),
            &format!("failover of group {group} committed"),
        );
        Ok(())
    }

    /// Every volume's catalog row.
    pub fn volume_rows(&self) -> Result<Vec<offsite_catalog::VolumeRow>, EngineError> {
        Ok(self.catalog().volumes()?)
    }

    /// Records an event about `subject`.
    pub fn note(&self, kind: &str, subject: &str, message: &str) {
        self.event(kind, Some(subject), message);
    }

    /// Turns a group around (reverse): role, store directory and state.
    pub fn set_group_role(
        &self,
        name: &str,
        role: Role,
        store_dir: Option<&str>,
        state: GroupState,
    ) -> Result<(), EngineError> {
        self.catalog()
            .set_group_role(name, role, store_dir, state)?;
        self.event(
            "group.role",
            Some(name),
            &format!("group {name} is now {role} here ({state})"),
        );
        Ok(())
    }

    /// The file holding volume `name`'s whole image: its data file, or the
    /// top of a flattened layered volume.
    pub fn volume_image_path(&self, name: &str) -> Result<std::path::PathBuf, EngineError> {
        let v = self.volume(name)?;
        match v.file().layered() {
            None => Ok(self.layout.volume_data(v.row().id)),
            Some(l) if l.is_flat() => Ok(self.layout.volumes_dir().join(format!(
                "{}.top",
                crate::layout::Layout::volume_stem(v.row().id)
            ))),
            Some(_) => Err(EngineError::Invalid(format!(
                "volume {name} still reads blocks from its PIT; it has no complete image file yet"
            ))),
        }
    }

    /// Defines the VMs of a group on this site (after a failover made the
    /// group's volumes live here); VMs already defined are left alone.
    pub fn define_group_vms(&self, group: &str) -> Result<Vec<String>, EngineError> {
        let row = self.groups().get(group)?;
        let mut defined = Vec::new();
        for vm in &row.vms {
            if self.catalog().vm(&vm.name).is_ok() {
                continue;
            }
            let mut catalog = self.catalog();
            if vm.volumes.iter().any(|v| catalog.volume(v).is_err()) {
                continue;
            }
            catalog.insert_vm(vm)?;
            defined.push(vm.name.clone());
        }
        Ok(defined)
    }

    /// Takes a group's volume off this site when the group reverses and this
    /// site becomes its replica: writes are fenced, NBD stops serving it, its
    /// row, tracking files and data-file name go, and so do VMs using it
    /// (the group keeps their definitions). The data itself lives on under
    /// the replica store's base image (a hard link the caller made first).
    pub fn retire_volume(&self, name: &str) -> Result<(), EngineError> {
        let row = self.catalog().volume(name)?;
        if let Some(v) = self.live(name) {
            v.set_fenced(true);
        }
        for vm in self.vms_using(name)? {
            self.catalog().delete_vm(&vm)?;
        }
        let removed = self.forget_live(name);
        self.catalog().delete_volume(name)?;
        if let Some(v) = removed
            && let Ok(v) = Arc::try_unwrap(v)
        {
            // Its files are removed next: what closing would flush is moot.
            let _ = v.close();
        }
        crate::Volume::remove_files(&self.layout, row.id)?;
        self.event(
            "volume.retired",
            Some(name),
            "the volume's group now replicates into this site; its data is the replica's base",
        );
        Ok(())
    }
}
