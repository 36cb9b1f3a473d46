//! Application-consistent checkpoints: a PIT cut while the applications of
//! every VM of its group have flushed their state to the volumes and hold
//! their writes (a VM's `--quiesce` hook: `fsfreeze -f`, a database's backup
//! mode), or while the VM is cleanly stopped. Such a PIT is marked
//! `app_consistent` on both sites: it mounts without journal replay and a
//! database starts from it without crash recovery. Any other PIT is
//! crash-consistent (what a power cut leaves), which journaling file
//! systems and databases recover from, but with a replay and only to their
//! last durable commit.
//!
//! One checkpoint, whether `sync --quiesce`, the group's schedule
//! (`--app-consistent-every`) or `failover prepare`'s final PIT:
//!
//! 1. quiesce every VM of the group, in the group's VM order, each hook
//!    within `[failover] quiesce_timeout_secs`; the first that fails (or
//!    times out) ends the quiescing, since the PIT cannot be app-consistent
//!    any more and the others need not be held;
//! 2. take the cut on every volume (the same consistent cut as any cycle,
//!    or a seal of a sync group's log, which holds every write acknowledged
//!    before it);
//! 3. thaw, in reverse order, every VM whose quiesce hook ran — whether it
//!    succeeded, failed or timed out (a hook killed by its timeout may have
//!    frozen its file system before it was killed);
//! 4. ship and commit the PIT, marked app-consistent only if every quiesce
//!    hook succeeded and nothing else (a VM without a quiesce hook, a
//!    volume outside the group's VMs) stood in the way.
//!
//! A failure never blocks replication: the PIT is made crash-consistent,
//! the failure is reported to the caller, recorded as an event
//! (`vm.hook.failed`, and `group.quiesce.failed` with the PIT), and kept in
//! the group's row (`group status` warns) until an app-consistent PIT
//! commits.

use offsite_catalog::{GroupRow, VmRow};
use offsite_engine::hooks::{HookAction, HookRun};

use crate::Replication;
use crate::model::HookReport;
use crate::primary::blocking;

/// Which VMs a checkpoint quiesces, and what stands in the way of an
/// app-consistent PIT whatever the hooks do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Freeze {
    /// VMs whose quiesce hook runs before the cut (and their thaw hook
    /// after it), in the group's VM order.
    pub(crate) quiesce: Vec<VmRow>,
    /// Why the PIT cannot be app-consistent even if every hook succeeds.
    pub(crate) gaps: Vec<String>,
}

/// What a checkpoint does about the group's applications (carried to the
/// group's runner with a `sync`).
#[derive(Debug, Clone, Default)]
pub(crate) enum CycleFreeze {
    /// Nothing: a crash-consistent PIT, as every ordinary cycle.
    #[default]
    None,
    /// Quiesce [`Freeze::quiesce`] right before the cut, thaw right after.
    Quiesce(Freeze),
    /// The caller holds the VMs quiesced or stopped around the whole
    /// cycle (`failover prepare`, whose volumes are fenced meanwhile); the
    /// PIT is marked as given, and the caller thaws.
    Held {
        /// Every VM was quiesced or cleanly stopped before the cut.
        app_consistent: bool,
    },
}

/// What a `sync` asks of its PIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consistency {
    /// An ordinary, crash-consistent PIT.
    Crash,
    /// Quiesce the group's VMs around the cut (`sync --quiesce`).
    Quiesce,
    /// The caller holds the VMs quiesced or stopped (see
    /// [`CycleFreeze::Held`]).
    Held {
        /// Every VM was quiesced or cleanly stopped.
        app_consistent: bool,
    },
}

/// The VMs quiesced so far and what happened, until they are thawed.
#[derive(Debug, Default)]
#[must_use = "every VM quiesced must be thawed: pass this to `Replication::thaw_vms`"]
pub(crate) struct Frozen {
    /// Every VM whose quiesce hook ran (or was started), in order.
    ran: Vec<VmRow>,
    /// The hooks run, in order.
    pub(crate) hooks: Vec<HookReport>,
    /// The plan's [`Freeze::gaps`].
    gaps: Vec<String>,
    /// Quiesce hooks that failed (at most one: the first ends quiescing).
    failures: Vec<String>,
}

impl Frozen {
    /// Every quiesce hook succeeded and nothing else stood in the way.
    pub(crate) fn app_consistent(&self) -> bool {
        self.gaps.is_empty() && self.failures.is_empty()
    }
}

/// A checkpoint's outcome for its caller: the hooks run and what failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FreezeOutcome {
    /// The PIT is app-consistent.
    pub(crate) app_consistent: bool,
    /// Quiesce and thaw hooks run, in order.
    pub(crate) hooks: Vec<HookReport>,
    /// What made the PIT crash-consistent besides the hooks (a VM without
    /// a quiesce hook, a volume outside the group's VMs).
    pub(crate) gaps: Vec<String>,
    /// Quiesce hooks that failed or timed out.
    pub(crate) failures: Vec<String>,
    /// Thaw hooks that failed: those VMs may still be quiesced.
    pub(crate) thaw_failures: Vec<String>,
}

impl FreezeOutcome {
    /// Everything that failed or stood in the way, as one list for a
    /// `sync --quiesce` result's `errors`.
    pub(crate) fn errors(&self) -> Vec<String> {
        self.gaps
            .iter()
            .chain(&self.failures)
            .chain(&self.thaw_failures)
            .cloned()
            .collect()
    }

    /// The hooks that failed, quiesce or thaw.
    pub(crate) fn hook_failures(&self) -> Vec<String> {
        self.failures
            .iter()
            .chain(&self.thaw_failures)
            .cloned()
            .collect()
    }

    /// Why the PIT is crash-consistent, if it is.
    fn why_crash_consistent(&self) -> String {
        self.gaps
            .iter()
            .chain(&self.failures)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The volumes of `row` that no VM of the group holds (nothing quiesces
/// their writers), as gaps.
fn volumes_outside_vms(row: &GroupRow) -> Vec<String> {
    row.volumes
        .iter()
        .filter(|v| !row.vms.iter().any(|vm| vm.volumes.contains(&v.volume)))
        .map(|v| {
            format!(
                "volume {} belongs to no VM of the group, so nothing quiesces its writers",
                v.volume
            )
        })
        .collect()
}

/// Why group `group` with `vms` has nothing a checkpoint could quiesce, if
/// it has not: no VM, or none with a quiesce hook.
pub(crate) fn nothing_to_quiesce(group: &str, vms: &[VmRow]) -> Option<String> {
    if vms.iter().any(|vm| vm.quiesce_cmd.is_some()) {
        return None;
    }
    Some(if vms.is_empty() {
        format!(
            "group {group} has no VM, so there is nothing to quiesce; an application-consistent PIT needs the group's volumes in VMs with quiesce hooks (`offsite vm create NAME --volume V --quiesce CMD --thaw CMD`)"
        )
    } else {
        format!(
            "no VM of group {group} has a quiesce hook; give them one with `offsite vm set VM --quiesce CMD --thaw CMD` (e.g. --quiesce 'fsfreeze -f /srv' --thaw 'fsfreeze -u /srv')"
        )
    })
}

/// `sync --quiesce` and the schedule: every VM of the group is quiesced.
/// Refused (the text says what to do) when no VM of the group has a
/// quiesce hook: such a checkpoint could never be app-consistent. A VM
/// without one, or a volume outside the group's VMs, leaves the PIT
/// crash-consistent (a gap, reported with the PIT).
pub(crate) fn plan_quiesce(row: &GroupRow) -> Result<Freeze, String> {
    if let Some(why) = nothing_to_quiesce(&row.name, &row.vms) {
        return Err(why);
    }
    let mut freeze = Freeze::default();
    for vm in &row.vms {
        if vm.quiesce_cmd.is_some() {
            freeze.quiesce.push(vm.clone());
        } else {
            freeze.gaps.push(format!(
                "VM {} has no quiesce hook (`offsite vm set {} --quiesce CMD --thaw CMD`)",
                vm.name, vm.name
            ));
        }
    }
    freeze.gaps.extend(volumes_outside_vms(row));
    Ok(freeze)
}

/// `failover prepare`'s final PIT: the VMs in `stopped_cleanly` are
/// consistent on their volumes already (an orderly shutdown flushed
/// them); every other VM still runs and is quiesced if it can be.
pub(crate) fn plan_for_prepare(row: &GroupRow, stopped_cleanly: &[String]) -> Freeze {
    let mut freeze = Freeze::default();
    if row.vms.is_empty() {
        freeze.gaps.push(format!(
            "group {} has no VM: nothing tells whether its volumes are consistent",
            row.name
        ));
    }
    for vm in &row.vms {
        if stopped_cleanly.contains(&vm.name) {
            continue;
        }
        if vm.quiesce_cmd.is_some() {
            freeze.quiesce.push(vm.clone());
        } else {
            freeze.gaps.push(format!(
                "VM {} was neither stopped cleanly nor quiesced (it has no stop hook that ran, or its libvirt domain did not shut down gracefully, and no quiesce hook)",
                vm.name
            ));
        }
    }
    freeze.gaps.extend(volumes_outside_vms(row));
    freeze
}

fn report(run: &HookRun) -> HookReport {
    HookReport {
        vm: run.vm.clone(),
        action: run.action.as_str().to_string(),
        exit_code: run.exit_code,
        duration_ms: run.duration_ms,
    }
}

impl Replication {
    /// Runs `action` (quiesce or thaw) of `vm`: `OFFSITE_MODE=checkpoint`,
    /// the URLs of its volumes here, and for a libvirt domain its name and
    /// libvirt's URI (`virsh -c "$OFFSITE_LIBVIRT_URI" domfsfreeze
    /// "$OFFSITE_LIBVIRT_DOMAIN"`). Returns the report and, if it failed,
    /// why.
    async fn checkpoint_hook(
        &self,
        row: &GroupRow,
        vm: &VmRow,
        action: HookAction,
    ) -> (HookReport, Option<String>) {
        let cmd = match action {
            HookAction::Thaw => vm.thaw_cmd.clone(),
            _ => vm.quiesce_cmd.clone(),
        }
        .unwrap_or_default();
        let mut env = vec![("OFFSITE_MODE".to_string(), "checkpoint".to_string())];
        for (n, v) in vm.volumes.iter().enumerate() {
            env.push((format!("OFFSITE_VOLUME_{n}_URL"), self.site.volume_url(v)));
        }
        if let Some(domain) = vm
            .libvirt_xml
            .as_deref()
            .and_then(offsite_engine::domain_name)
        {
            env.push(("OFFSITE_LIBVIRT_DOMAIN".to_string(), domain));
            env.push((
                "OFFSITE_LIBVIRT_URI".to_string(),
                self.site.config().libvirt.uri.clone(),
            ));
        }
        let site = self.site.clone();
        let (group, name) = (row.name.clone(), vm.name.clone());
        let timeout = action.timeout(&site);
        let ran =
            blocking(move || site.run_hook_reported(&group, &name, action, &cmd, &env, timeout))
                .await;
        match ran {
            Ok(run) => (report(&run), run.failure()),
            Err(e) => (
                HookReport {
                    vm: vm.name.clone(),
                    action: action.as_str().to_string(),
                    exit_code: None,
                    duration_ms: 0,
                },
                Some(format!(
                    "the {} hook of VM {}: {e}",
                    action.as_str(),
                    vm.name
                )),
            ),
        }
    }

    /// Step 1 of a checkpoint (see the module doc): quiesces the VMs of
    /// `freeze` in order, up to the first that fails. Whatever happens,
    /// pass the result to [`Replication::thaw_vms`] once the cut is taken.
    pub(crate) async fn quiesce_vms(&self, row: &GroupRow, freeze: &Freeze) -> Frozen {
        let mut frozen = Frozen {
            gaps: freeze.gaps.clone(),
            ..Frozen::default()
        };
        for vm in &freeze.quiesce {
            frozen.ran.push(vm.clone());
            let (report, failed) = self.checkpoint_hook(row, vm, HookAction::Quiesce).await;
            frozen.hooks.push(report);
            if let Some(why) = failed {
                frozen.failures.push(why);
                break;
            }
        }
        frozen
    }

    /// Step 3 of a checkpoint: thaws, in reverse order, every VM whose
    /// quiesce hook ran (failed or not).
    pub(crate) async fn thaw_vms(&self, row: &GroupRow, frozen: Frozen) -> FreezeOutcome {
        let app_consistent = frozen.app_consistent();
        let Frozen {
            ran,
            mut hooks,
            gaps,
            failures,
        } = frozen;
        let mut thaw_failures = Vec::new();
        for vm in ran.iter().rev() {
            let (report, failed) = self.checkpoint_hook(row, vm, HookAction::Thaw).await;
            hooks.push(report);
            if let Some(why) = failed {
                thaw_failures.push(format!(
                    "{why}; VM {} may still be quiesced: check it and thaw it by hand",
                    vm.name
                ));
            }
        }
        FreezeOutcome {
            app_consistent,
            hooks,
            gaps,
            failures,
            thaw_failures,
        }
    }

    /// Records a checkpoint's outcome at the primary once its PIT `pit`
    /// committed: an app-consistent PIT clears the group's quiesce warning,
    /// a crash-consistent one sets it (and an event says why), and so does
    /// a thaw hook that failed (an event too). Logged, not failed: the PIT
    /// is committed.
    pub(crate) async fn record_checkpoint(&self, group: &str, pit: u64, outcome: &FreezeOutcome) {
        let site = self.site.clone();
        let g = group.to_string();
        // A thaw that failed warns too, whatever the PIT is: its VM may
        // still be held.
        let mut warnings = Vec::new();
        if !outcome.app_consistent {
            warnings.push(format!(
                "PIT {pit} is crash-consistent, not application-consistent: {}",
                outcome.why_crash_consistent()
            ));
        }
        warnings.extend(outcome.thaw_failures.iter().cloned());
        let warning = (!warnings.is_empty()).then(|| warnings.join("; "));
        let thaws = outcome.thaw_failures.clone();
        let app_consistent = outcome.app_consistent;
        crate::warn_if_failed(
            "recording the checkpoint's outcome",
            blocking(move || {
                site.groups().set_quiesce_error(&g, warning.as_deref())?;
                if let Some(w) = warning.as_ref().filter(|_| !app_consistent) {
                    site.note("group.quiesce.failed", &g, w);
                }
                for t in &thaws {
                    site.note("group.thaw.failed", &g, t);
                }
                Ok(())
            })
            .await,
        );
        if outcome.app_consistent {
            tracing::info!(group, pit, "application-consistent PIT committed");
        } else {
            tracing::warn!(group, pit, why = %outcome.why_crash_consistent(), "checkpoint is crash-consistent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_catalog::{GroupState, GroupVolumeRow, Mode, Role};

    fn vm(name: &str, volumes: &[&str], quiesce: bool) -> VmRow {
        VmRow {
            name: name.into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            start_cmd: None,
            stop_cmd: None,
            status_cmd: None,
            libvirt_xml: None,
            quiesce_cmd: quiesce.then(|| "freeze".to_string()),
            thaw_cmd: quiesce.then(|| "thaw".to_string()),
            created_at: String::new(),
        }
    }

    fn group(vms: Vec<VmRow>, volumes: &[&str]) -> GroupRow {
        GroupRow {
            name: "g".into(),
            role: Role::Primary,
            partner: "b".into(),
            mode: Mode::Async,
            rpo_secs: 60,
            keep: 3,
            bandwidth: None,
            compress: false,
            security_tag: None,
            state: GroupState::Replicating,
            store_dir: None,
            created_at: String::new(),
            state_changed_at: String::new(),
            last_error: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            needs_resync: None,
            last_drill_at: None,
            app_consistent_every_secs: 0,
            quiesce_error: None,
            journal: offsite_catalog::JournalSettings::default(),
            volumes: volumes
                .iter()
                .map(|v| GroupVolumeRow {
                    volume: v.to_string(),
                    size_bytes: 4096,
                    block_size: 4096,
                    initial_done_bytes: 0,
                })
                .collect(),
            vms,
        }
    }

    #[test]
    fn a_quiesce_needs_a_vm_with_a_hook() {
        let e = plan_quiesce(&group(Vec::new(), &["v"])).unwrap_err();
        assert!(e.contains("has no VM"), "{e}");
        let e = plan_quiesce(&group(vec![vm("a", &["v"], false)], &["v"])).unwrap_err();
        assert!(e.contains("offsite vm set VM --quiesce"), "{e}");
    }

    #[test]
    fn every_vm_is_quiesced_in_order_and_what_is_not_is_a_gap() {
        let row = group(
            vec![
                vm("db", &["d0"], true),
                vm("web", &["w0"], false),
                vm("app", &["a0"], true),
            ],
            &["d0", "w0", "a0", "scratch"],
        );
        let f = plan_quiesce(&row).unwrap();
        let names: Vec<&str> = f.quiesce.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["db", "app"]);
        assert_eq!(f.gaps.len(), 2, "{:?}", f.gaps);
        assert!(f.gaps[0].contains("VM web has no quiesce hook"));
        assert!(f.gaps[1].contains("volume scratch belongs to no VM"));
        let all = group(vec![vm("db", &["d0"], true)], &["d0"]);
        assert_eq!(plan_quiesce(&all).unwrap().gaps, Vec::<String>::new());
    }

    #[test]
    fn prepare_counts_cleanly_stopped_vms_and_quiesces_the_running_ones() {
        let row = group(
            vec![vm("db", &["d0"], false), vm("app", &["a0"], true)],
            &["d0", "a0"],
        );
        // Both stopped cleanly: consistent without a hook.
        let f = plan_for_prepare(&row, &["db".into(), "app".into()]);
        assert_eq!(f, Freeze::default());
        // `app` had no stop hook: still running, quiesced.
        let f = plan_for_prepare(&row, &["db".into()]);
        assert_eq!(f.quiesce.len(), 1);
        assert!(f.gaps.is_empty());
        // `db` neither stopped nor quiescable: crash-consistent.
        let f = plan_for_prepare(&row, &["app".into()]);
        assert!(f.quiesce.is_empty());
        assert!(f.gaps[0].contains("VM db was neither"), "{:?}", f.gaps);
        // No VM at all: nothing vouches for the volumes.
        assert!(
            !plan_for_prepare(&group(Vec::new(), &["v"]), &[])
                .gaps
                .is_empty()
        );
    }
}
