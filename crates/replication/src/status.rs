//! What a group reports: `group status` and `group list` (one definition
//! of lag, pending and health for the CLI, the API and `/metrics`),
//! `group measure`, `pit list` and the per-group metrics snapshot.

use std::sync::atomic::Ordering;

use crate::model::{GroupMeasure, GroupStatus, PitEntry, PitRef};
use offsite_catalog::{FailoverRow, GroupRow, PitRow};
use offsite_catalog::{GroupState, Mode, Role, SyncState};
use offsite_engine::PartnerInfo;

use crate::model::{GroupMetrics, SyncMetrics};
use crate::primary::{age_seconds, blocking};
use crate::{ReplError, Replication};

/// What the catalog holds about one group that its status needs.
struct StatusFacts {
    row: GroupRow,
    last_pit: Option<PitRow>,
    /// The newest app-consistent PIT.
    last_app_consistent: Option<PitRow>,
    partner: Option<PartnerInfo>,
    /// The PIT a test failover of the group has promoted, if one runs.
    test_pit: Option<u64>,
    /// Bytes pending and written while isolated (primary).
    pending_and_isolated: (u64, u64),
    /// A streaming group's journal window at this replica (from its store).
    journal_window: Option<crate::wire::JournalWindow>,
    /// The id of the group's key when this site holds one (its replicas
    /// are encrypted).
    key_id: Option<String>,
}

/// The id of group `group`'s key when this site holds it (an unreadable
/// key file shows as its error: the group is encrypted all the same).
/// Blocking.
fn key_id_of(site: &offsite_engine::Site, group: &str) -> Option<String> {
    let path = site.layout().group_key(group);
    if !path.exists() {
        return None;
    }
    Some(match offsite_objects::GroupKey::load(&path) {
        Ok(k) => k.id().to_string(),
        Err(e) => format!("(unreadable: {e})"),
    })
}

/// The journal window of a streaming group at its replica, read from its
/// store (cached by the site; the journal's listing is in memory once
/// loaded). `None` at the primary, which shows what the replica reported.
/// Blocking.
fn replica_journal_window(
    site: &offsite_engine::Site,
    row: &GroupRow,
) -> Option<crate::wire::JournalWindow> {
    if row.role != Role::Replica || !row.mode.streams() {
        return None;
    }
    let dir = row.store_dir.as_deref()?;
    let store = site.replica_store(std::path::Path::new(dir)).ok()?;
    crate::journal::window(&store)
}

/// The bytes a primary's volumes hold that the replica has not got yet
/// (their trackers) and the bytes written while isolated; `(0, 0)` on a
/// replica, which tracks neither. Blocking: reads the volumes' trackers.
fn pending_and_isolated(site: &offsite_engine::Site, row: &GroupRow) -> (u64, u64) {
    if row.role != Role::Primary {
        return (0, 0);
    }
    let live: Vec<_> = row
        .volumes
        .iter()
        .filter_map(|v| site.volume(&v.volume).ok())
        .collect();
    (
        live.iter().map(|v| v.tracker().dirty_bytes()).sum(),
        live.iter()
            .map(|v| v.isolated_blocks().len() * u64::from(v.row().block_size))
            .sum(),
    )
}

/// The PIT of `group`'s running test failover, among `failovers`.
fn test_pit_of(group: &str, failovers: impl IntoIterator<Item = FailoverRow>) -> Option<u64> {
    failovers
        .into_iter()
        .find(|f| f.group == group && f.kind == "test")
        .map(|f| f.pit_id)
}

impl Replication {
    /// `group status`, on either site.
    pub async fn group_status(&self, name: &str) -> Result<GroupStatus, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let facts = blocking(move || {
            let row = site.groups().get(&n)?;
            let pits = site.groups().pits(&n)?;
            let last_app_consistent = pits.iter().rev().find(|p| p.app_consistent).cloned();
            let last_pit = pits.last().cloned();
            let partner = site.partner(&row.partner).ok();
            let test_pit = test_pit_of(&n, site.groups().failovers()?);
            Ok(StatusFacts {
                pending_and_isolated: pending_and_isolated(&site, &row),
                journal_window: replica_journal_window(&site, &row),
                key_id: key_id_of(&site, &n),
                row,
                last_pit,
                last_app_consistent,
                partner,
                test_pit,
            })
        })
        .await?;
        Ok(self.status_from(facts))
    }

    /// `group list` (and the console's overview): every group's status
    /// from one read of the catalog's read connection, however many groups
    /// there are — a trip per group queued each behind the cycles'
    /// commits, and 200 groups took seconds.
    pub async fn group_list(&self) -> Result<Vec<GroupStatus>, ReplError> {
        let site = self.site.clone();
        let facts = blocking(move || {
            let offsite_engine::GroupsSnapshot {
                rows,
                newest_pits: mut newest,
                newest_app_consistent_pits: mut newest_app_consistent,
                failovers,
                partners,
            } = site.groups().snapshot()?;
            Ok(rows
                .into_iter()
                .map(|row| StatusFacts {
                    last_pit: newest.remove(&row.name),
                    last_app_consistent: newest_app_consistent.remove(&row.name),
                    partner: partners.iter().find(|p| p.name == row.partner).cloned(),
                    test_pit: test_pit_of(&row.name, failovers.iter().cloned()),
                    pending_and_isolated: pending_and_isolated(&site, &row),
                    journal_window: replica_journal_window(&site, &row),
                    key_id: key_id_of(&site, &row.name),
                    row,
                })
                .collect::<Vec<_>>())
        })
        .await?;
        Ok(facts.into_iter().map(|f| self.status_from(f)).collect())
    }

    /// A group's status from what the catalog said of it.
    fn status_from(&self, facts: StatusFacts) -> GroupStatus {
        let StatusFacts {
            row,
            last_pit,
            last_app_consistent,
            partner,
            test_pit,
            pending_and_isolated: (mut pending, isolated),
            journal_window,
            key_id,
        } = facts;
        let name = row.name.as_str();
        let last = last_pit.as_ref();
        let mut lag = self.lag_seconds(&row, last.map(|p| p.created_at.as_str()));
        let (health, reason) = health(&row, last.is_some(), lag, partner.as_ref());
        let sync_state = self.sync_mirror_state(&row);
        // Every acknowledged write is on the replica: no lag and nothing
        // pending, whatever the age of the newest PIT (the tracker keeps
        // the blocks until the next seal only in case the link is lost).
        if let Some((SyncState::InSync, _)) = &sync_state {
            lag = 0;
            pending = 0;
        }
        // A continuous group's lag is that of its stream while it runs
        // (the newest PIT's age otherwise, as above).
        let continuous = self.continuous_lag(&row);
        if let Some((stream_lag, backlog)) = continuous {
            lag = stream_lag.as_secs_f64().ceil() as u64;
            pending = backlog;
        }
        let continuous_lag_seconds = match (&continuous, row.mode, row.role) {
            (Some((l, _)), _, _) => Some(round_ms(l.as_secs_f64())),
            (None, Mode::Continuous, Role::Primary) => Some(lag as f64),
            _ => None,
        };
        let (health, reason) =
            self.overriding_health(&row, (health, reason), &sync_state, &row.needs_resync);
        let (health, reason) = quiesce_warning(&row, (health, reason));
        let transfer = self.transfer_progress(&row);
        let progress = transfer.as_ref().filter(|t| t.kind == "initial").map(|t| {
            if t.bytes_total == 0 {
                0.0
            } else {
                t.bytes_done as f64 * 100.0 / t.bytes_total as f64
            }
        });
        let eta = transfer.as_ref().and_then(|t| t.eta_seconds);
        GroupStatus {
            name: row.name.clone(),
            mode: row.mode,
            role: row.role,
            state: row.state,
            health,
            health_reason: reason,
            partner: row.partner.clone(),
            last_pit: last.map(pit_ref),
            app_consistent_age_seconds: last_app_consistent
                .as_ref()
                .map(|p| self.clock.age_seconds(&p.created_at)),
            last_app_consistent_pit: last_app_consistent.as_ref().map(pit_ref),
            app_consistent_every_seconds: (row.app_consistent_every_secs > 0)
                .then_some(row.app_consistent_every_secs),
            quiesce_error: row.quiesce_error.clone(),
            lag_seconds: lag,
            pending_bytes: pending,
            // A sync group's RPO is 0: every acknowledged write is on the
            // replica (its stored RPO only paces the seals).
            continuous_lag_seconds,
            rpo_seconds: if row.mode == Mode::Sync {
                0
            } else {
                row.rpo_secs
            },
            keep: row.keep,
            volumes: row.volumes.iter().map(|v| v.volume.clone()).collect(),
            initial_progress_percent: progress,
            initial_bytes_sent: self
                .runners
                .get(name)
                .map_or(0, |r| r.progress.sent.load(Ordering::Relaxed)),
            isolated_bytes: isolated,
            sync_state: sync_state.map(|(s, _)| s),
            on_link_loss: row.mode.streams().then(|| row.on_link_loss.clone()),
            test_failover_pit: test_pit,
            initial_durable_bytes: (row.role == Role::Primary
                && row.state == GroupState::InitialReplication)
                .then(|| row.volumes.iter().map(|v| v.initial_done_bytes).sum()),
            eta_seconds: eta,
            bandwidth_bytes_per_sec: row.bandwidth,
            compress: row.compress,
            last_error: row.last_error.clone(),
            // A primary may still hold the store of its last promotion
            // (its volumes read it until flattened): not a replica store.
            store_dir: row.store_dir.clone().filter(|_| row.role == Role::Replica),
            needs_resync: row.needs_resync.clone(),
            last_drill_at: row.last_drill_at.clone(),
            resync: self.resync_progress(name),
            confirmed_at: self.confirmed_at(&row),
            transfer,
            seal_interval_seconds: row.mode.streams().then_some(row.rpo_secs.max(30)),
            journal: row.mode.streams().then(|| {
                let window = journal_window.or_else(|| self.runners.journal_window(name));
                crate::model::JournalStatus::of(&row.journal, window)
            }),
            encrypted: key_id.is_some(),
            key_id,
        }
    }

    /// The state of a sync primary's write mirror and why its link was
    /// lost, if it was; `None` for other groups or a runner without a
    /// mirror.
    fn sync_mirror_state(&self, row: &GroupRow) -> Option<(SyncState, Option<String>)> {
        if !row.mode.streams() || row.role != Role::Primary {
            return None;
        }
        self.runners.get(&row.name).and_then(|r| {
            r.mirror
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(m, resyncing)| (m.state_name(*resyncing), m.why_lost()))
        })
    }

    /// A continuous primary's stream lag and the bytes queued or in
    /// flight, while its stream runs; `None` otherwise (no runner, spilled,
    /// resynchronizing: the newest PIT's age is the lag then).
    fn continuous_lag(&self, row: &GroupRow) -> Option<(std::time::Duration, u64)> {
        if row.mode != Mode::Continuous || row.role != Role::Primary {
            return None;
        }
        let r = self.runners.get(&row.name)?;
        let slot = r.mirror.lock().unwrap_or_else(|e| e.into_inner());
        let (m, _) = slot.as_ref()?;
        Some((m.lag()?, m.backlog_bytes()))
    }

    /// The group's health after what outranks the lag and PIT view of
    /// [`health`]: the sync mirror's state, a full replica store and, last,
    /// a pending resynchronization — which nothing else the group does can
    /// repair.
    fn overriding_health(
        &self,
        row: &GroupRow,
        (mut health, mut reason): (String, Option<String>),
        sync_state: &Option<(SyncState, Option<String>)>,
        needs_resync: &Option<String>,
    ) -> (String, Option<String>) {
        match sync_state {
            // In sync, a PIT's age is no reason for concern.
            Some((SyncState::InSync, _))
                if health != "normal" && reason.as_deref().is_some_and(|r| r.contains("PIT")) =>
            {
                health = "normal".into();
                reason = None;
            }
            Some((SyncState::InSync, _)) => {}
            // Streaming, the lag (the stream's) against the RPO is the
            // health, as computed.
            Some((SyncState::Streaming, _)) => {}
            // A continuous group that spilled or lost its link loses no
            // acknowledged promise (its writes never waited): a warning
            // while it catches up by itself, unless the lag made it worse.
            Some((state, why)) if row.mode == Mode::Continuous && health == "normal" => {
                health = "warning".into();
                reason = Some(format!(
                    "continuous replication is {state}{}",
                    why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
                ));
            }
            Some(_) if row.mode == Mode::Continuous => {}
            Some((state, why)) => {
                health = "critical".into();
                reason = Some(format!(
                    "sync replication is {state}{}",
                    why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
                ));
            }
            None => {}
        }
        if row.role == Role::Replica
            && let Some(why) = self.replica.store_full_reason(&row.name)
        {
            health = "critical".into();
            reason = Some(why);
        }
        // Checked last: nothing else the group does can repair it.
        if let Some(why) = needs_resync {
            health = "critical".into();
            reason = Some(format!(
                "the replica may differ from the primary: {why}; run `offsite group resync {}`",
                row.name
            ));
        }
        (health, reason)
    }

    /// How far a running resynchronization of `group` has got.
    fn resync_progress(&self, group: &str) -> Option<crate::model::ResyncProgress> {
        self.runners.get(group).and_then(|r| {
            r.progress
                .resync
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|(started, p)| crate::model::ResyncProgress {
                    elapsed_seconds: started.elapsed().as_secs(),
                    ..p.clone()
                })
        })
    }

    /// The transfer under way: the initial replication, or a cycle (or the
    /// first cycle of a reverse). Progress, rate and ETA by the data read
    /// and sent, not by the bytes scanned: a thin volume's holes pass in an
    /// instant (progress used to jump from 0 % to 91 % with an ETA of 0 s).
    fn transfer_progress(&self, row: &GroupRow) -> Option<crate::model::TransferProgress> {
        let name = row.name.as_str();
        match self.runners.get(name) {
            Some(r) if row.state == GroupState::InitialReplication => {
                let p = &r.progress;
                let done = p.data_done.load(Ordering::Relaxed);
                let total = p.data_total.load(Ordering::Relaxed).max(done);
                let moved = done.saturating_sub(p.data_start.load(Ordering::Relaxed));
                let elapsed = p
                    .started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .map(|(t, _)| t.elapsed().as_secs_f64());
                let rate = elapsed
                    .filter(|&e| e > 0.0 && moved > 0)
                    .map_or(0.0, |e| moved as f64 / e);
                Some(crate::model::TransferProgress {
                    kind: "initial".into(),
                    bytes_done: done,
                    bytes_total: total,
                    bytes_per_second: rate as u64,
                    eta_seconds: (rate > 0.0)
                        .then(|| (total.saturating_sub(done) as f64 / rate).ceil() as u64),
                })
            }
            Some(r) => r
                .progress
                .cycle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .map(|(started, total, sent)| {
                    let secs = started.elapsed().as_secs_f64();
                    let rate = if secs > 0.0 && sent > 0 {
                        sent as f64 / secs
                    } else {
                        0.0
                    };
                    crate::model::TransferProgress {
                        kind: if self.runners.is_reversing(name) {
                            "reverse".into()
                        } else {
                            "cycle".into()
                        },
                        bytes_done: sent,
                        bytes_total: total,
                        bytes_per_second: rate as u64,
                        eta_seconds: (rate > 0.0)
                            .then(|| (total.saturating_sub(sent) as f64 / rate).ceil() as u64),
                    }
                }),
            None => None,
        }
    }

    /// Every group's figures for `/metrics` (blocking: reads the catalog),
    /// in catalog order; the api crate renders them.
    pub fn group_metrics(&self) -> Vec<GroupMetrics> {
        let Ok(groups) = self.site.groups().all() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(groups.len());
        for g in &groups {
            let mut sync = None;
            if g.mode.streams()
                && g.role == Role::Primary
                && let Some(r) = self.runners.get(&g.name)
            {
                let in_sync = r
                    .mirror
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .is_some_and(|(m, resync)| m.state_name(*resync) == SyncState::InSync);
                let st = &r.sync_stats;
                sync = Some(SyncMetrics {
                    in_sync,
                    spills: st.spills.load(Ordering::Relaxed),
                    batches: st.batches.load(Ordering::Relaxed),
                    writes: st.writes.load(Ordering::Relaxed),
                    link_losses: st.link_losses.load(Ordering::Relaxed),
                    failed_writes: st.failed_writes.load(Ordering::Relaxed),
                });
            }
            let rows = self.site.groups().pits(&g.name).unwrap_or_default();
            let in_sync = g.mode == Mode::Sync
                && self.runners.get(&g.name).is_some_and(|r| {
                    r.mirror
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_ref()
                        .is_some_and(|(m, resync)| m.state_name(*resync) == SyncState::InSync)
                });
            let continuous = self.continuous_lag(g);
            let lag_seconds = match &continuous {
                _ if in_sync => 0,
                Some((lag, _)) => lag.as_secs_f64().ceil() as u64,
                None => self.lag_seconds(g, rows.last().map(|p| p.created_at.as_str())),
            };
            let continuous_lag_ms = match &continuous {
                Some((lag, _)) => Some(lag.as_millis() as u64),
                None if g.mode == Mode::Continuous && g.role == Role::Primary => {
                    Some(lag_seconds * 1000)
                }
                None => None,
            };
            let pending_bytes: u64 = if let Some((_, backlog)) = continuous {
                backlog
            } else if g.role == Role::Primary && !in_sync {
                g.volumes
                    .iter()
                    .filter_map(|v| self.site.volume(&v.volume).ok())
                    .map(|v| v.tracker().dirty_bytes())
                    .sum()
            } else {
                0
            };
            let cs = self.site.groups().cycles(&g.name).unwrap_or_default();
            let last = cs.iter().rev().find(|c| c.pit.is_some());
            let sent_bytes: u64 = self
                .site
                .groups()
                .traffic(&g.name)
                .unwrap_or_default()
                .iter()
                .map(|(_, b)| b)
                .sum();
            out.push(GroupMetrics {
                group: g.name.clone(),
                role: g.role,
                lag_seconds,
                continuous_lag_ms,
                pending_bytes,
                pits: rows.len() as u64,
                cycles: cs.len() as u64,
                cycle_errors: cs.iter().filter(|c| c.error.is_some()).count() as u64,
                last_cycle_bytes: last.map_or(0, |c| c.bytes),
                last_cycle_duration_ms: last
                    .and_then(|c| {
                        let end = c.finished_at.as_deref()?;
                        Some(age_seconds(&c.started_at).saturating_sub(age_seconds(end)) * 1000)
                    })
                    .unwrap_or(0),
                sent_bytes,
                sync,
            });
        }
        out
    }

    /// `group measure`.
    pub async fn group_measure(&self, name: &str) -> Result<GroupMeasure, ReplError> {
        let status = self.group_status(name).await?;
        let site = self.site.clone();
        let n = name.to_string();
        let (cycles, pits, traffic) = blocking(move || {
            Ok((
                site.groups().cycles(&n)?,
                site.groups().pits(&n)?,
                site.groups().traffic(&n)?,
            ))
        })
        .await?;
        let ok: Vec<_> = cycles.iter().filter(|c| c.pit.is_some()).collect();
        let errors = cycles.iter().filter(|c| c.error.is_some()).count() as u64;
        let bytes_total: u64 = traffic.iter().map(|(_, b)| b).sum();
        // A cycle complies when its PIT followed the previous one within the RPO.
        let mut compliant = 0u64;
        let mut prev: Option<&str> = None;
        for c in &ok {
            let at = c.finished_at.as_deref().unwrap_or(&c.started_at);
            match prev {
                Some(p) if age_seconds(p).saturating_sub(age_seconds(at)) <= status.rpo_seconds => {
                    compliant += 1
                }
                None => compliant += 1,
                _ => {}
            }
            prev = Some(at);
        }
        let _ = pits;
        Ok(GroupMeasure {
            name: name.to_string(),
            cycles: cycles.len() as u64,
            last_cycle_bytes: ok.last().map_or(0, |c| c.bytes),
            avg_cycle_bytes: if ok.is_empty() {
                0
            } else {
                ok.iter().map(|c| c.bytes).sum::<u64>() / ok.len() as u64
            },
            max_cycle_bytes: ok.iter().map(|c| c.bytes).max().unwrap_or(0),
            rpo_seconds: status.rpo_seconds,
            rpo_compliance_percent: if ok.is_empty() {
                0.0
            } else {
                compliant as f64 * 100.0 / ok.len() as f64
            },
            bytes_total,
            bytes_by_kind: traffic
                .iter()
                .map(|(k, b)| (k.as_str().to_string(), *b))
                .collect(),
            errors,
            lag_seconds: status.lag_seconds,
            pending_bytes: status.pending_bytes,
        })
    }

    /// `pit list`.
    pub async fn pit_list(&self, name: &str) -> Result<Vec<PitEntry>, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let pits = blocking(move || {
            site.groups().get(&n)?;
            site.groups().pits(&n)
        })
        .await?;
        Ok(pits
            .into_iter()
            .map(|p| PitEntry {
                id: p.id,
                name: p.name,
                created_at: p.created_at,
                bytes: p.bytes,
                app_consistent: p.app_consistent,
            })
            .collect())
    }
}

fn pit_ref(p: &PitRow) -> PitRef {
    PitRef {
        id: p.id,
        name: p.name.clone(),
        created_at: p.created_at.clone(),
        app_consistent: p.app_consistent,
    }
}

/// A group whose last application-consistent checkpoint came out
/// crash-consistent is at least `warning` (its newest app-consistent
/// recovery point is older than the operator expects) until one succeeds;
/// a worse health keeps its own reason.
fn quiesce_warning(
    row: &GroupRow,
    (health, reason): (String, Option<String>),
) -> (String, Option<String>) {
    match &row.quiesce_error {
        Some(why) if health == crate::decide::Health::Normal.as_str() => (
            crate::decide::Health::Warning.as_str().to_string(),
            Some(format!(
                "{why}; fix the hook, then `offsite sync {} --quiesce` takes an application-consistent PIT (replication goes on meanwhile)",
                row.name
            )),
        ),
        _ => (health, reason),
    }
}

/// [`crate::decide::health`] of a group's row, with the partner as the
/// monitor last saw it.
fn health(
    row: &GroupRow,
    has_pit: bool,
    lag: u64,
    partner: Option<&offsite_engine::PartnerInfo>,
) -> (String, Option<String>) {
    use crate::decide::{GroupFacts, HealthInputs, PartnerSeen};
    let (level, why) = crate::decide::health(
        &GroupFacts {
            name: &row.name,
            partner: &row.partner,
            role: row.role,
            state: row.state,
            rpo_secs: row.rpo_secs,
            last_error: row.last_error.as_deref(),
        },
        &HealthInputs {
            has_pit,
            lag,
            partner: partner.map(|p| PartnerSeen {
                name: &p.name,
                reachable: p.reachable,
                last_error: p.last_error.as_deref(),
                since_handshake: p.last_handshake_at.as_deref().map(age_seconds),
            }),
        },
    );
    (level.as_str().to_string(), why)
}

/// Seconds to the millisecond (a status figure, not a measurement).
fn round_ms(secs: f64) -> f64 {
    (secs * 1000.0).round() / 1000.0
}
