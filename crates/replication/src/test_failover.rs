//! Test failover at the replica site (planned and unplanned failover and
//! reverse are in `switch.rs`): writable
//! clones of a PIT (a layered volume: the PIT as the read-only lower layer,
//! a private sparse top layer for the writes) exported over NBD under
//! distinct names, the group's VMs started on them with
//! `OFFSITE_MODE=test`, while replication into the replica keeps
//! committing PITs. `failover stop-test` stops the VMs and discards the
//! clones. A test never changes a PIT: the clone's writes go to its top
//! layer, and the PIT it reads is pinned against retention (a row in the
//! catalog's `failovers` table) until the test stops.
//!
//! Clones live in `STORE/tests/NAME.{top,map}` (format and durability in
//! `offsite_volume_file::layered`); after a restart of the replica they are
//! exported again with every write flushed before the restart.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::model::{ExportedVolume, FailoverResult, FailoverRun, HookReport};
use offsite_catalog::GroupState;
use offsite_catalog::{FailoverRow, GroupRow};
use offsite_engine::hooks::{HookAction, HookRun};
use offsite_engine::{CheckpointLower, PitLower};
use offsite_replica_store::{PitId, ReplicaStore};
use offsite_volume_file::layered::{Layered, Lower};

use crate::model::RecoveryPoint;
use crate::recovery::Source;

use crate::{ReplError, Replication, invalid, run_blocking as blocking};

/// How long a test failover whose clones could not be exported again at
/// start waits before the next try.
const RESTORE_RETRY: Duration = Duration::from_secs(5);

/// A layered volume served over NBD.
struct LayeredDevice(Layered);

impl offsite_nbd::BlockDevice for LayeredDevice {
    fn size(&self) -> u64 {
        self.0.size()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.0.write_at(buf, offset, fua)
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, len, fua)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.0.write_zeroes(offset, len, fua)
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<offsite_nbd::Extent>> {
        offsite_engine::layered_block_status(&self.0, offset, len)
    }

    fn flush(&self) -> io::Result<()> {
        self.0.flush()
    }
}

fn tests_dir(row: &GroupRow) -> PathBuf {
    Path::new(row.store_dir.as_deref().unwrap_or_default()).join("tests")
}

fn test_export(volume: &str, group: &str) -> String {
    format!("{volume}@{group}.test")
}

fn report(r: &HookRun) -> HookReport {
    HookReport {
        vm: r.vm.clone(),
        action: r.action.as_str().to_string(),
        exit_code: r.exit_code,
        duration_ms: r.duration_ms,
    }
}

/// Resolves a PIT given as an id or a name, or the newest.
pub(crate) fn resolve(
    store: &ReplicaStore,
    group: &str,
    pit: Option<&str>,
) -> Result<PitId, ReplError> {
    let pits = store.pits();
    let found = match pit {
        None => pits.last(),
        Some(p) => match p.parse::<u64>() {
            Ok(id) => pits.iter().find(|x| x.id.get() == id),
            Err(_) => pits.iter().rev().find(|x| x.name.as_deref() == Some(p)),
        },
    };
    found.map(|p| p.id).ok_or_else(|| {
        match pit {
            None => invalid(format!("group {group} has no PIT yet; wait for the first cycle (`offsite group status {group}`)")),
            // A PIT the user named that does not exist is "not found"
            // (404 at the API), like an unknown group.
            Some(p) => ReplError::Engine(offsite_engine::EngineError::NotFound(format!(
                "group {group} has no PIT {p:?}; `offsite pit list {group}` shows them"
            ))),
        }
    })
}

impl Replication {
    /// `failover run NAME [--test] [--pit P | --at TIME]` at the replica.
    pub async fn failover_run(
        &self,
        group: &str,
        req: &FailoverRun,
    ) -> Result<FailoverResult, ReplError> {
        let at = match (&req.pit, &req.at) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "give either --pit or --at for group {group}, not both"
                )));
            }
            (None, Some(at)) => Some(at.as_str()),
            _ => None,
        };
        if let Some(at) = at {
            // Checked before anything changes (a sync group's log is
            // sealed first).
            crate::recovery::parse_at(at)?;
        }
        if req.test {
            self.test_failover(group, req.pit.as_deref(), at, !req.skip_vm_hooks)
                .await
        } else {
            self.promote(group, req.pit.as_deref(), at, req.force, !req.skip_vm_hooks)
                .await
        }
    }

    /// What a failover reads: PIT `pit` (default the newest), or the
    /// newest consistent point at or before `at`.
    pub(crate) async fn failover_source(
        &self,
        row: &GroupRow,
        store: &Arc<ReplicaStore>,
        pit: Option<&str>,
        at: Option<&str>,
    ) -> Result<(Source, Option<RecoveryPoint>), ReplError> {
        match at {
            Some(at) => {
                let (source, point) = self.resolve_at(row, store, at).await?;
                Ok((source, Some(point)))
            }
            None => Ok((Source::Pit(resolve(store, &row.name, pit)?), None)),
        }
    }

    async fn test_failover(
        &self,
        group: &str,
        pit: Option<&str>,
        at: Option<&str>,
        start_vms: bool,
    ) -> Result<FailoverResult, ReplError> {
        let started = Instant::now();
        let (row, store) = self.local_store(group).await?;
        // In `test-failover` the catalog refuses a second test by name.
        if !matches!(
            row.state,
            GroupState::Replicating | GroupState::Paused | GroupState::TestFailover
        ) {
            return Err(invalid(format!(
                "group {group} is {}; a test failover needs a replicating group with a PIT",
                row.state
            )));
        }
        // A sync group's newest writes are in its log: they become a PIT
        // the test can use, and the stream goes on.
        self.seal_log_keep(group)
            .await
            .map_err(ReplError::Refused)?;
        let (source, point) = self.failover_source(&row, &store, pit, at).await?;
        let site = self.site.clone();
        let g = group.to_string();
        // The PIT is pinned against retention while the test runs (for a
        // checkpoint, the PIT its image starts from).
        let failover = FailoverRow {
            group: g,
            kind: "test".into(),
            pit_id: source.pit(),
            checkpoint: source.checkpoint(),
            started_at: String::new(),
            committed: false,
        };
        blocking(move || Ok(site.catalog_insert_failover(&failover)?)).await?;
        match self.expose_clones(&row, &store, &source, true).await {
            Ok(volumes) => {
                let site = self.site.clone();
                let g = group.to_string();
                blocking(move || {
                    Ok(site.move_group_state(
                        &g,
                        &[
                            GroupState::Replicating,
                            GroupState::Paused,
                            GroupState::TestFailover,
                        ],
                        GroupState::TestFailover,
                        None,
                    )?)
                })
                .await?;
                let hooks = if !start_vms {
                    Vec::new()
                } else {
                    match self
                        .run_vm_hooks(&row, HookAction::Start, "test", &volumes)
                        .await
                    {
                        Ok(h) => h,
                        Err(e) => {
                            // The test did not happen: stop what started, discard.
                            crate::warn_if_failed(
                                "stopping the test failover after its hook failed",
                                self.stop_test(group).await,
                            );
                            return Err(e);
                        }
                    }
                };
                tracing::info!(group, from = %source.describe(), "test failover running");
                Ok(FailoverResult {
                    group: group.to_string(),
                    mode: "test".into(),
                    pit: source.pit(),
                    volumes,
                    vms: hooks,
                    duration_ms: started.elapsed().as_millis() as u64,
                    errors: Vec::new(),
                    point,
                })
            }
            Err(e) => {
                crate::warn_if_failed(
                    "discarding the clones of a failed test failover",
                    self.discard_clones(&row).await,
                );
                let site = self.site.clone();
                let g = group.to_string();
                crate::warn_if_failed(
                    "forgetting a failed test failover",
                    blocking(move || Ok(site.catalog_delete_failover(&g, "test")?)).await,
                );
                Err(e)
            }
        }
    }

    /// Creates (`fresh`) or reopens the clones of `source` and exports them.
    async fn expose_clones(
        &self,
        row: &GroupRow,
        store: &Arc<ReplicaStore>,
        source: &Source,
        fresh: bool,
    ) -> Result<Vec<ExportedVolume>, ReplError> {
        let source = source.clone();
        let dir = tests_dir(row);
        let store = store.clone();
        let group = row.name.clone();
        let site = self.site.clone();
        blocking(move || {
            offsite_volume_file::create_private_dir_all(&dir)
                .map_err(|e| invalid(format!("creating {}: {e}", dir.display())))?;
            let mut out = Vec::new();
            for spec in store.volumes() {
                let lower: Arc<dyn Lower> = match &source {
                    Source::Pit(id) => {
                        Arc::new(PitLower::new(store.clone(), *id, spec.name.clone()))
                    }
                    Source::Checkpoint(image) => Arc::new(CheckpointLower {
                        image: image.clone(),
                        volume: spec.name.clone(),
                    }),
                };
                let layer = if fresh {
                    // A fresh clone replaces any leftover; create fails if
                    // one could not be removed.
                    drop(Layered::remove(&dir, &spec.name));
                    Layered::create(&dir, &spec.name, spec.size_bytes, spec.block_size, lower)
                } else {
                    Layered::open(&dir, &spec.name, spec.size_bytes, spec.block_size, lower)
                }
                .map_err(|e| {
                    invalid(format!("test clone of {} in group {group}: {e}", spec.name))
                })?;
                let export = test_export(&spec.name, &group);
                let url = site.add_export(offsite_nbd::Export {
                    name: export.clone(),
                    description: format!(
                        "test failover clone of volume {} (group {group}, {})",
                        spec.name,
                        source.describe()
                    ),
                    device: Arc::new(LayeredDevice(layer)),
                    tls: None,
                });
                out.push(ExportedVolume {
                    name: spec.name.clone(),
                    export,
                    url,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Stops serving the clones and deletes their files.
    async fn discard_clones(&self, row: &GroupRow) -> Result<(), ReplError> {
        let dir = tests_dir(row);
        let site = self.site.clone();
        let row = row.clone();
        blocking(move || {
            for v in &row.volumes {
                site.remove_export(&test_export(&v.volume, &row.name));
                Layered::remove(&dir, &v.volume).map_err(|e| {
                    invalid(format!("removing the test clone of {}: {e}", v.volume))
                })?;
            }
            // Empty by now; a later test failover uses it again.
            drop(std::fs::remove_dir(&dir));
            Ok(())
        })
        .await
    }

    /// Runs `action` of every VM of the group with a hook for it (start in
    /// the group's order, stop in reverse), with the VM's disks as served in
    /// `volumes`.
    pub(crate) async fn run_vm_hooks(
        &self,
        row: &GroupRow,
        action: HookAction,
        mode: &str,
        volumes: &[ExportedVolume],
    ) -> Result<Vec<HookReport>, ReplError> {
        self.run_vm_hooks_cleanly(row, action, mode, volumes)
            .await
            .map(|(reports, _)| reports)
    }

    /// [`Replication::run_vm_hooks`], also naming the VMs whose action
    /// completed in an orderly way: a hook that exited 0, or a libvirt
    /// domain that shut down in answer to the ACPI request (not one
    /// destroyed after the grace period). `failover prepare` counts the
    /// VMs stopped so as consistent on their volumes.
    pub(crate) async fn run_vm_hooks_cleanly(
        &self,
        row: &GroupRow,
        action: HookAction,
        mode: &str,
        volumes: &[ExportedVolume],
    ) -> Result<(Vec<HookReport>, Vec<String>), ReplError> {
        let mut vms = row.vms.clone();
        if action == HookAction::Stop {
            vms.reverse();
        }
        let mut reports = Vec::new();
        let mut clean = Vec::new();
        for vm in vms {
            if vm.libvirt_xml.is_some() && matches!(action, HookAction::Start | HookAction::Stop) {
                let name = vm.name.clone();
                let (report, orderly) = self.power_domain(row, vm, action, mode, volumes).await?;
                reports.push(report);
                if orderly {
                    clean.push(name);
                }
                continue;
            }
            let cmd = match action {
                HookAction::Start => vm.start_cmd.clone(),
                HookAction::Stop => vm.stop_cmd.clone(),
                HookAction::Status => vm.status_cmd.clone(),
                HookAction::Quiesce => vm.quiesce_cmd.clone(),
                HookAction::Thaw => vm.thaw_cmd.clone(),
            };
            let Some(cmd) = cmd else { continue };
            let mut env = vec![("OFFSITE_MODE".to_string(), mode.to_string())];
            for (n, v) in vm.volumes.iter().enumerate() {
                if let Some(e) = volumes.iter().find(|e| &e.name == v) {
                    env.push((format!("OFFSITE_VOLUME_{n}_URL"), e.url.clone()));
                }
            }
            let site = self.site.clone();
            let group = row.name.clone();
            let timeout = action.timeout(&site);
            let name = vm.name.clone();
            let run =
                blocking(move || Ok(site.run_hook(&group, &vm.name, action, &cmd, &env, timeout)?))
                    .await?;
            reports.push(report(&run));
            clean.push(name);
        }
        Ok((reports, clean))
    }

    /// Start or stop of a VM that is a libvirt domain: defined on the
    /// exports in `volumes` and started (a test copy on the group's
    /// isolated test network `offsite-test-GROUP`), or stopped and
    /// undefined. Reported like a hook that exited 0, with whether it was
    /// orderly (started, or shut down in answer to the ACPI request).
    async fn power_domain(
        &self,
        row: &GroupRow,
        vm: offsite_catalog::VmRow,
        action: HookAction,
        mode: &str,
        volumes: &[ExportedVolume],
    ) -> Result<(HookReport, bool), ReplError> {
        let site = self.site.clone();
        let test = mode == "test";
        let network = format!("offsite-test-{}", row.name);
        let exports: Vec<(String, String)> = volumes
            .iter()
            .map(|e| (e.name.clone(), e.url.clone()))
            .collect();
        let started = std::time::Instant::now();
        let name = vm.name.clone();
        let orderly = blocking(move || {
            Ok(match action {
                HookAction::Start => {
                    site.start_vm_domain(
                        &vm,
                        &exports,
                        test.then_some(network.as_str()),
                        &Default::default(),
                    )?;
                    true
                }
                _ => site.stop_vm_domain_graceful(&vm, test)?.0,
            })
        })
        .await?;
        let report = HookReport {
            vm: name,
            action: action.as_str().to_string(),
            exit_code: Some(0),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        Ok((report, orderly))
    }

    /// `failover stop-test NAME`: stops the test's VMs, discards the clones
    /// and their writes, releases the PIT.
    pub async fn stop_test(&self, group: &str) -> Result<FailoverResult, ReplError> {
        self.stop_test_with(group, true).await
    }

    /// `stop_test`; without `stop_vms` the caller has stopped the test's
    /// VMs already (a recovery plan stops them in reverse priority tiers).
    pub async fn stop_test_with(
        &self,
        group: &str,
        stop_vms: bool,
    ) -> Result<FailoverResult, ReplError> {
        let started = Instant::now();
        let (row, _) = self.local_store(group).await?;
        let site = self.site.clone();
        let test = blocking(move || Ok(site.groups().failovers()?))
            .await?
            .into_iter()
            .find(|f| f.group == group && f.kind == "test")
            .ok_or_else(|| invalid(format!("group {group} has no test failover running")))?;
        let volumes: Vec<ExportedVolume> = row
            .volumes
            .iter()
            .map(|v| {
                let export = test_export(&v.volume, group);
                ExportedVolume {
                    name: v.volume.clone(),
                    url: self.site.volume_url(&export),
                    export,
                }
            })
            .collect();
        // A VM that did not stop may still be writing its clone: keep the
        // test until the stop hook succeeds.
        let hooks = if stop_vms {
            self.run_vm_hooks(&row, HookAction::Stop, "test", &volumes)
                .await?
        } else {
            Vec::new()
        };
        self.discard_clones(&row).await?;
        let site = self.site.clone();
        let g = group.to_string();
        blocking(move || {
            site.catalog_delete_failover(&g, "test")?;
            // The drill succeeded: its clones came up and went away
            // cleanly. The overview shows how long ago (the primary
            // learns it with the next commit's answer).
            site.groups()
                .set_last_drill(&g, &offsite_catalog::now_rfc3339())?;
            match site.move_group_state(
                &g,
                &[GroupState::TestFailover],
                GroupState::Replicating,
                None,
            ) {
                Err(offsite_engine::EngineError::Catalog(e)) if e.unexpected_state().is_some() => {}
                r => {
                    r?;
                }
            }
            Ok(())
        })
        .await?;
        tracing::info!(group, pit = test.pit_id, "test failover stopped");
        Ok(FailoverResult {
            group: group.to_string(),
            mode: "stop-test".into(),
            pit: test.pit_id,
            volumes,
            vms: hooks,
            duration_ms: started.elapsed().as_millis() as u64,
            errors: Vec::new(),
            point: None,
        })
    }

    /// At start-up: exports the clones of every test failover that was
    /// running when the daemon stopped.
    pub async fn restore_failovers(self: &Arc<Self>) -> Result<(), ReplError> {
        self.restore_fences().await?;
        let site = self.site.clone();
        let tests = blocking(move || Ok(site.groups().failovers()?)).await?;
        for t in tests.into_iter().filter(|t| t.kind == "test") {
            let Err(e) = self.restore_test(&t).await else {
                continue;
            };
            // The site starts without them (a store in a bucket that does
            // not answer now): the group says why, and a task exports them
            // once the store opens.
            let why = format!(
                "the clones of group {}'s test failover are not exported: {e}; retried every {} s",
                t.group,
                RESTORE_RETRY.as_secs()
            );
            tracing::warn!(group = %t.group, "{why}");
            self.note_group_error(&t.group, Some(why)).await;
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(RESTORE_RETRY).await;
                    let site = me.site.clone();
                    let running = blocking(move || Ok(site.groups().failovers()?))
                        .await
                        .map(|f| f.iter().any(|x| x.group == t.group && x.kind == "test"));
                    if !matches!(running, Ok(true)) {
                        tracing::info!(group = %t.group, "the test failover ended: its clones are not exported again");
                        return;
                    }
                    match me.restore_test(&t).await {
                        Ok(()) => {
                            me.note_group_error(&t.group, None).await;
                            return;
                        }
                        Err(e) => {
                            tracing::info!(group = %t.group, "test failover clones still not exported: {e}")
                        }
                    }
                }
            });
        }
        Ok(())
    }

    /// Exports the clones of the running test failover `t` again.
    async fn restore_test(&self, t: &FailoverRow) -> Result<(), ReplError> {
        let (row, store) = self.store(&t.group).await.map_err(ReplError::Refused)?;
        let source = match t.checkpoint {
            // The image is built again from the journal (its files
            // and start PIT are kept while the test runs).
            Some(c) => {
                let site = self.site.clone();
                let dir = row.store_dir.clone().unwrap_or_default();
                Source::Checkpoint(
                    blocking(move || Ok(site.checkpoint_image(Path::new(&dir), c)?)).await?,
                )
            }
            None => Source::Pit(
                PitId::new(t.pit_id)
                    .ok_or_else(|| invalid(format!("test failover of {} has PIT 0", t.group)))?,
            ),
        };
        self.expose_clones(&row, &store, &source, false).await?;
        tracing::info!(group = %t.group, from = %source.describe(), "test failover clones exported again");
        Ok(())
    }

    /// Sets (or clears) group `group`'s `last_error`, logging a failure.
    async fn note_group_error(&self, group: &str, why: Option<String>) {
        let site = self.site.clone();
        let g = group.to_string();
        let r = blocking(move || Ok(site.set_group_error(&g, why.as_deref())?)).await;
        if let Err(e) = r {
            tracing::warn!(group, "recording the group's last error: {e}");
        }
    }
}
