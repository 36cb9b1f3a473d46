//! Replication groups in the catalog: a group with its volumes and VMs,
//! its life's moves (checked by [`crate::state::transition`] inside one
//! transaction), its settings, error, traffic counters and the change
//! counter the runners watch.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{
    Catalog, CatalogError, GroupRow, GroupState, GroupVolumeRow, Mode, PitRow, Role, TrafficKind,
    TransitionError, VmRow, is_unique_violation, now_rfc3339, transition,
};

impl Catalog {
    /// Inserts a group with its volumes, in one transaction.
    pub fn insert_group(&mut self, g: &GroupRow) -> Result<GroupRow, CatalogError> {
        let path = self.path.clone();
        let err = |context: &'static str| {
            let path = path.clone();
            move |source| CatalogError::Sqlite {
                path,
                context,
                source,
            }
        };
        let tx = self.conn.transaction().map_err(err("insert group"))?;
        let now = now_rfc3339();
        let r = tx.execute(
            "INSERT INTO groups (name, role, partner, mode, rpo_secs, keep, bandwidth, compress, security_tag,
                                 state, store_dir, created_at, state_changed_at, on_link_loss, suspend_timeout_secs,
                                 app_consistent_every_secs, checkpoint_interval_ms, journal_history_secs,
                                 journal_max_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
            params![
                g.name,
                g.role,
                g.partner,
                g.mode,
                g.rpo_secs as i64,
                g.keep,
                g.bandwidth.map(|b| b as i64),
                g.compress,
                g.security_tag,
                g.state,
                g.store_dir,
                now,
                g.on_link_loss,
                g.suspend_timeout_secs as i64,
                g.app_consistent_every_secs as i64,
                g.journal.checkpoint_interval_ms as i64,
                g.journal.history_secs as i64,
                g.journal.max_bytes as i64
            ],
        );
        if let Err(e) = r {
            return Err(if is_unique_violation(&e) {
                CatalogError::GroupExists(g.name.clone())
            } else {
                err("insert group")(e)
            });
        }
        for (i, v) in g.volumes.iter().enumerate() {
            tx.execute(
                "INSERT INTO group_volumes (group_name, position, volume, size_bytes, block_size)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    g.name,
                    i as i64,
                    v.volume,
                    v.size_bytes as i64,
                    v.block_size
                ],
            )
            .map_err(err("insert group"))?;
        }
        for (i, vm) in g.vms.iter().enumerate() {
            // Names never hold a newline (names::validate), so it separates.
            tx.execute(
                "INSERT INTO group_vms (group_name, position, name, volumes, start_cmd, stop_cmd, status_cmd,
                                        libvirt_xml, quiesce_cmd, thaw_cmd)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    g.name,
                    i as i64,
                    vm.name,
                    vm.volumes.join("\n"),
                    vm.start_cmd,
                    vm.stop_cmd,
                    vm.status_cmd,
                    vm.libvirt_xml,
                    vm.quiesce_cmd,
                    vm.thaw_cmd
                ],
            )
            .map_err(err("insert group"))?;
        }
        tx.commit().map_err(err("insert group"))?;
        self.group(&g.name)
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Result<GroupRow, CatalogError> {
        // One group's rows only: every group's runner reads its row before
        // each cycle, so this must not cost more with more groups.
        self.load_groups(Some(name))?
            .pop()
            .ok_or_else(|| CatalogError::NoSuchGroup(name.to_string()))
    }

    /// Every group, by name.
    pub fn groups(&self) -> Result<Vec<GroupRow>, CatalogError> {
        self.load_groups(None)
    }

    /// The group called `only`, or every group.
    fn load_groups(&self, only: Option<&str>) -> Result<Vec<GroupRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT name, role, partner, mode, rpo_secs, keep, bandwidth, compress, security_tag,
                        state, store_dir, created_at, state_changed_at, last_error,
                        on_link_loss, suspend_timeout_secs, needs_resync, last_drill_at,
                        app_consistent_every_secs, quiesce_error,
                        checkpoint_interval_ms, journal_history_secs, journal_max_bytes
                 FROM groups {} ORDER BY name",
                if only.is_some() { "WHERE name = ?1" } else { "" }
            ))
            .map_err(self.err("list groups"))?;
        let mut groups = stmt
            .query_map(rusqlite::params_from_iter(only), |r| {
                Ok(GroupRow {
                    name: r.get(0)?,
                    role: r.get(1)?,
                    partner: r.get(2)?,
                    mode: r.get(3)?,
                    rpo_secs: r.get::<_, i64>(4)? as u64,
                    keep: r.get(5)?,
                    bandwidth: r.get::<_, Option<i64>>(6)?.map(|b| b as u64),
                    compress: r.get(7)?,
                    security_tag: r.get(8)?,
                    state: r.get(9)?,
                    store_dir: r.get(10)?,
                    created_at: r.get(11)?,
                    state_changed_at: r.get(12)?,
                    last_error: r.get(13)?,
                    on_link_loss: r.get(14)?,
                    suspend_timeout_secs: r.get::<_, i64>(15)? as u64,
                    needs_resync: r.get(16)?,
                    last_drill_at: r.get(17)?,
                    app_consistent_every_secs: r.get::<_, i64>(18)?.max(0) as u64,
                    quiesce_error: r.get(19)?,
                    journal: crate::JournalSettings {
                        checkpoint_interval_ms: r.get::<_, i64>(20)?.max(1) as u64,
                        history_secs: r.get::<_, i64>(21)?.max(0) as u64,
                        max_bytes: r.get::<_, i64>(22)?.max(1) as u64,
                    },
                    volumes: Vec::new(),
                    vms: Vec::new(),
                })
            })
            .map_err(self.err("list groups"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list groups"))?;
        let by_group = if only.is_some() {
            "WHERE group_name = ?1"
        } else {
            ""
        };
        let index: std::collections::HashMap<String, usize> = groups
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.clone(), i))
            .collect();
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT group_name, volume, size_bytes, block_size, initial_done_bytes
                 FROM group_volumes {by_group} ORDER BY group_name, position"
            ))
            .map_err(self.err("list groups"))?;
        let vols = stmt
            .query_map(rusqlite::params_from_iter(only), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    GroupVolumeRow {
                        volume: r.get(1)?,
                        size_bytes: r.get::<_, i64>(2)? as u64,
                        block_size: r.get(3)?,
                        initial_done_bytes: r.get::<_, i64>(4)? as u64,
                    },
                ))
            })
            .map_err(self.err("list groups"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list groups"))?;
        for (g, v) in vols {
            if let Some(&i) = index.get(&g) {
                groups[i].volumes.push(v);
            }
        }
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT group_name, name, volumes, start_cmd, stop_cmd, status_cmd, libvirt_xml,
                        quiesce_cmd, thaw_cmd
                 FROM group_vms {by_group} ORDER BY group_name, position"
            ))
            .map_err(self.err("list groups"))?;
        let vms = stmt
            .query_map(rusqlite::params_from_iter(only), |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    VmRow {
                        name: r.get(1)?,
                        volumes: r
                            .get::<_, String>(2)?
                            .split('\n')
                            .filter(|v| !v.is_empty())
                            .map(str::to_string)
                            .collect(),
                        start_cmd: r.get(3)?,
                        stop_cmd: r.get(4)?,
                        status_cmd: r.get(5)?,
                        libvirt_xml: r.get(6)?,
                        quiesce_cmd: r.get(7)?,
                        thaw_cmd: r.get(8)?,
                        created_at: String::new(),
                    },
                ))
            })
            .map_err(self.err("list groups"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list groups"))?;
        for (g, v) in vms {
            if let Some(&i) = index.get(&g) {
                groups[i].vms.push(v);
            }
        }
        Ok(groups)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction (committed when it
    /// returns `Ok`, rolled back otherwise): a read and the write it
    /// decides cannot be split by another writer.
    fn immediate<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Connection) -> Result<T, CatalogError>,
    ) -> Result<T, CatalogError> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(self.err(context))?;
        let v = f(&tx)?;
        tx.commit().map_err(self.err(context))?;
        Ok(v)
    }

    /// The state of group `name`, read with `c`.
    fn group_state_in(&self, c: &Connection, name: &str) -> Result<GroupState, CatalogError> {
        c.query_row(
            "SELECT state FROM groups WHERE name = ?1",
            params![name],
            |r| r.get::<_, GroupState>(0),
        )
        .optional()
        .map_err(self.err("read group"))?
        .ok_or_else(|| CatalogError::NoSuchGroup(name.to_string()))
    }

    /// Moves a group to state `to` (and sets its last error), recording
    /// when, in one transaction with the checks: the group must be in one
    /// of `expected_from` (any state when empty), else
    /// [`TransitionError::Unexpected`], and the move must be legal
    /// ([`transition`]), else [`TransitionError::Illegal`]. Returns the
    /// state it was in.
    pub fn move_group_state(
        &self,
        name: &str,
        expected_from: &[GroupState],
        to: GroupState,
        last_error: Option<&str>,
    ) -> Result<GroupState, CatalogError> {
        self.immediate("update group", |c| {
            let from = self.group_state_in(c, name)?;
            let refuse = |source| CatalogError::GroupState {
                group: name.to_string(),
                source,
            };
            if !expected_from.is_empty() && !expected_from.contains(&from) {
                return Err(refuse(TransitionError::Unexpected {
                    found: from,
                    expected: expected_from.to_vec(),
                }));
            }
            transition(from, to).map_err(refuse)?;
            c.execute(
                "UPDATE groups SET state = ?2, last_error = ?3,
                    state_changed_at = CASE WHEN state = ?2 THEN state_changed_at ELSE ?4 END
                 WHERE name = ?1",
                params![name, to, last_error, now_rfc3339()],
            )
            .map_err(self.err("update group"))?;
            Ok(from)
        })
    }

    /// Sets (or clears) a group's last error without changing its state.
    pub fn set_group_error(
        &self,
        name: &str,
        last_error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET last_error = ?2 WHERE name = ?1",
                    params![name, last_error],
                )
            },
        )
    }

    /// A counter of the rows of the group tables (`groups`,
    /// `group_volumes`, `group_vms`) changed since open, cascades included
    /// (SQLite's update hook counts them as they happen). The same value
    /// before and after a read of a group means the read is still current,
    /// which lets every group's runner skip its catalog read while nothing
    /// changed; readable without the catalog's lock.
    pub fn group_changes(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.group_changes.clone()
    }

    /// Why the group's replica may differ from its primary beyond what
    /// the change trackers know (see [`Catalog::set_group_needs_resync`]).
    pub fn group_needs_resync(&self, name: &str) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row(
                "SELECT needs_resync FROM groups WHERE name = ?1",
                params![name],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(self.err("read group"))?
            .ok_or_else(|| CatalogError::NoSuchGroup(name.to_string()))
    }

    /// Records (`Some(why)`) or clears (`None`) that only a comparison of
    /// every block can bring the replica back in line with the primary.
    pub fn set_group_needs_resync(
        &self,
        name: &str,
        why: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET needs_resync = ?2 WHERE name = ?1",
                    params![name, why],
                )
            },
        )
    }

    /// Every group's newest PIT, by group name: one query, whatever the
    /// number of groups (`group list`, the console's overview).
    pub fn newest_pits(&self) -> Result<HashMap<String, PitRow>, CatalogError> {
        self.newest_pits_where(
            "SELECT group_name, id, name, created_at, bytes, app_consistent FROM pits
             WHERE (group_name, id) IN (SELECT group_name, MAX(id) FROM pits GROUP BY group_name)",
        )
    }

    /// Every group's newest app-consistent PIT, by group name: one query
    /// (`group list`, the console's overview).
    pub fn newest_app_consistent_pits(&self) -> Result<HashMap<String, PitRow>, CatalogError> {
        self.newest_pits_where(
            "SELECT group_name, id, name, created_at, bytes, app_consistent FROM pits
             WHERE (group_name, id) IN (SELECT group_name, MAX(id) FROM pits
                                        WHERE app_consistent = 1 GROUP BY group_name)",
        )
    }

    /// One PIT per group, as `sql` (a constant query of `pit_of_group`'s
    /// columns) picks them.
    fn newest_pits_where(
        &self,
        sql: &'static str,
    ) -> Result<HashMap<String, PitRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached(sql)
            .map_err(self.err("list PITs"))?;
        let rows = stmt
            .query_map([], pit_of_group)
            .map_err(self.err("list PITs"))?;
        rows.collect::<Result<HashMap<_, _>, _>>()
            .map_err(self.err("list PITs"))
    }

    /// Sets how often the group's runner takes an app-consistent PIT by
    /// itself (0: never).
    pub fn set_group_app_consistent_every(
        &self,
        name: &str,
        secs: u64,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET app_consistent_every_secs = ?2 WHERE name = ?1",
                    params![name, secs as i64],
                )
            },
        )
    }

    /// Sets the group's journal: checkpoint interval, history and size.
    pub fn set_group_journal(
        &self,
        name: &str,
        journal: &crate::JournalSettings,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET checkpoint_interval_ms = ?2, journal_history_secs = ?3,
                                       journal_max_bytes = ?4
                     WHERE name = ?1",
                    params![
                        name,
                        journal.checkpoint_interval_ms as i64,
                        journal.history_secs as i64,
                        journal.max_bytes as i64
                    ],
                )
            },
        )
    }

    /// Records (`Some(why)`) or clears (`None`) why the group's last
    /// application-consistent checkpoint came out crash-consistent.
    pub fn set_group_quiesce_error(
        &self,
        name: &str,
        why: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET quiesce_error = ?2 WHERE name = ?1",
                    params![name, why],
                )
            },
        )
    }

    /// Records when the group's last successful test drill ended (the
    /// replica, at `stop-test`; the primary, from a PIT commit's answer).
    pub fn set_group_last_drill(&self, name: &str, at: &str) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET last_drill_at = ?2 WHERE name = ?1",
                    params![name, at],
                )
            },
        )
    }

    /// Changes a group's RPO, retention, bandwidth limit and compression
    /// (`group set`).
    pub fn set_group_settings(
        &self,
        name: &str,
        rpo_secs: u64,
        keep: u32,
        bandwidth: Option<u64>,
        compress: bool,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE groups SET rpo_secs = ?2, keep = ?3, bandwidth = ?4, compress = ?5 WHERE name = ?1",
                    params![name, rpo_secs as i64, keep, bandwidth.map(|b| b as i64), compress],
                )
            },
        )
    }

    /// Rewrites the hooks of a group's copy of VM `vm` (`vm set` on a VM
    /// of a group; both sites keep the copy).
    pub fn set_group_vm_hooks(&self, group: &str, vm: &VmRow) -> Result<(), CatalogError> {
        self.change_row(
            "update a VM of a group",
            || CatalogError::NoSuchVm(vm.name.clone()),
            |c| {
                c.execute(
                    "UPDATE group_vms SET start_cmd = ?3, stop_cmd = ?4, status_cmd = ?5,
                                          quiesce_cmd = ?6, thaw_cmd = ?7
                     WHERE group_name = ?1 AND name = ?2",
                    params![
                        group,
                        vm.name,
                        vm.start_cmd,
                        vm.stop_cmd,
                        vm.status_cmd,
                        vm.quiesce_cmd,
                        vm.thaw_cmd
                    ],
                )
            },
        )
    }

    /// Adds `bytes` moved for `kind` to the group's counters.
    pub fn add_group_traffic(
        &self,
        group: &str,
        kind: TrafficKind,
        bytes: u64,
    ) -> Result<(), CatalogError> {
        if bytes == 0 {
            return Ok(());
        }
        self.conn
            .execute(
                "INSERT INTO group_traffic (group_name, kind, bytes) VALUES (?1, ?2, ?3)
                 ON CONFLICT (group_name, kind) DO UPDATE SET bytes = bytes + excluded.bytes",
                params![group, kind.as_str(), bytes as i64],
            )
            .map_err(self.err("count group traffic"))?;
        Ok(())
    }

    /// The group's bytes moved, per kind (every kind, 0 when none).
    pub fn group_traffic(&self, group: &str) -> Result<Vec<(TrafficKind, u64)>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT kind, bytes FROM group_traffic WHERE group_name = ?1")
            .map_err(self.err("read group traffic"))?;
        let rows = stmt
            .query_map([group], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.err("read group traffic"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("read group traffic"))?;
        Ok(TrafficKind::ALL
            .iter()
            .map(|&k| {
                let b = rows
                    .iter()
                    .find(|(name, _)| name == k.as_str())
                    .map_or(0, |(_, b)| *b as u64);
                (k, b)
            })
            .collect())
    }

    /// `group set --mode`: converts a group between async, sync and
    /// continuous;
    /// returns the mode it had (read in the same transaction).
    pub fn set_group_mode(&self, name: &str, mode: Mode) -> Result<Mode, CatalogError> {
        self.immediate("update group", |c| {
            let before = c
                .query_row(
                    "SELECT mode FROM groups WHERE name = ?1",
                    params![name],
                    |r| r.get::<_, Mode>(0),
                )
                .optional()
                .map_err(self.err("read group"))?
                .ok_or_else(|| CatalogError::NoSuchGroup(name.to_string()))?;
            c.execute(
                "UPDATE groups SET mode = ?2 WHERE name = ?1",
                params![name, mode],
            )
            .map_err(self.err("update group"))?;
            Ok(before)
        })
    }

    /// Turns a group around (reverse): its role, store directory and state
    /// (a legal move from the state it is in, see [`transition`]), in one
    /// transaction; clears its last error.
    pub fn set_group_role(
        &self,
        name: &str,
        role: Role,
        store_dir: Option<&str>,
        state: GroupState,
    ) -> Result<(), CatalogError> {
        self.immediate("update group", |c| {
            let from = self.group_state_in(c, name)?;
            transition(from, state).map_err(|source| CatalogError::GroupState {
                group: name.to_string(),
                source,
            })?;
            c.execute(
                "UPDATE groups SET role = ?2, store_dir = ?3, state = ?4, last_error = NULL,
                    state_changed_at = ?5
                 WHERE name = ?1",
                params![name, role, store_dir, state, now_rfc3339()],
            )
            .map_err(self.err("update group"))?;
            Ok(())
        })
    }

    /// Records how much of a volume's initial replication is durable on the replica.
    pub fn set_initial_progress(
        &self,
        group: &str,
        volume: &str,
        done_bytes: u64,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE group_volumes SET initial_done_bytes = ?3 WHERE group_name = ?1 AND volume = ?2",
                params![group, volume, done_bytes as i64],
            )
            .map(drop)
            .map_err(self.err("update group"))
    }

    /// Deletes a group (its PITs and cycles with it).
    pub fn delete_group(&self, name: &str) -> Result<(), CatalogError> {
        self.change_row(
            "delete group",
            || CatalogError::NoSuchGroup(name.to_string()),
            |c| c.execute("DELETE FROM groups WHERE name = ?1", [name]),
        )
    }
}

/// A `(group_name, id, name, created_at, bytes, app_consistent)` row.
fn pit_of_group(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, PitRow)> {
    Ok((
        r.get::<_, String>(0)?,
        PitRow {
            id: r.get::<_, i64>(1)? as u64,
            name: r.get(2)?,
            created_at: r.get(3)?,
            bytes: r.get::<_, i64>(4)? as u64,
            app_consistent: r.get(5)?,
        },
    ))
}
