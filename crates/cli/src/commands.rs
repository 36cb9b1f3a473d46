//! The client commands: each turns its arguments into one or more API
//! calls and prints the answer (a table for people, JSON with `--json`).
//! `main.rs` parses the command line and dispatches here; long-running
//! calls draw their progress through [`crate::progress`].

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use offsite_api_types::CreateVolume;
use offsite_client::Client;

use crate::args::{
    self, AuthzCommand, FailoverCommand, Global, GroupCommand, PartnerCommand, PitCommand,
    PlanCommand, ReportFormat, SetArgs, VmCommand, VolumeCommand,
};
use crate::output::{self, Printer};
use crate::progress::{resync, wait_import, wait_initial, with_transfer_bar};
use crate::{absolute, client, units};

/// `offsite volume ...`.
pub(crate) fn volume(c: &Client, cmd: VolumeCommand, p: &Printer) -> anyhow::Result<()> {
    match cmd {
        VolumeCommand::Create(a) => {
            let import = a
                .import
                .as_deref()
                .map(|path| absolute(path).map(|p| p.display().to_string()))
                .transpose()?;
            let v = c.create_volume(&CreateVolume {
                name: a.name,
                size_bytes: a.size.map(|s| s.0),
                block_size: a.block_size.map(|b| b.0 as u32),
                import_path: import,
            })?;
            let v = if v.state == "importing" && !a.no_wait {
                wait_import(c, v, p)?
            } else {
                v
            };
            p.volume(&v)
        }
        VolumeCommand::List => p.volumes(&c.volumes()?),
        VolumeCommand::Show { name } => p.volume(&c.volume(&name)?),
        VolumeCommand::Delete { name } => {
            c.delete_volume(&name)?;
            p.done(
                &format!("volume {name} deleted"),
                serde_json::json!({ "name": name, "deleted": true }),
            )
        }
        VolumeCommand::Url { name } => p.url(&c.volume_url(&name)?),
        VolumeCommand::ClearDirty { name, force } => p.volume(&c.clear_dirty(&name, force)?),
        VolumeCommand::Set { name, nbd_tls } => {
            p.volume(&c.set_volume_nbd_tls(&name, nbd_tls.mode())?)
        }
    }
}

/// `offsite vm ...`.
pub(crate) fn vm(c: &Client, cmd: VmCommand, p: &Printer) -> anyhow::Result<()> {
    match cmd {
        VmCommand::Create {
            name,
            volumes,
            start,
            stop,
            status,
            libvirt,
            quiesce,
            thaw,
        } => p.vm(&c.create_vm(&offsite_api_types::CreateVm {
            name,
            volumes,
            start,
            stop,
            status,
            libvirt,
            quiesce,
            thaw,
        })?),
        VmCommand::List => p.vms(&c.vms()?),
        VmCommand::Show { name } => p.vm(&c.vm(&name)?),
        VmCommand::Set {
            name,
            start,
            stop,
            status,
            volumes,
            quiesce,
            thaw,
        } => p.vm(&c.set_vm(
            &name,
            &offsite_api_types::SetVm {
                start,
                stop,
                status,
                volumes: (!volumes.is_empty()).then_some(volumes),
                quiesce,
                thaw,
            },
        )?),
        VmCommand::Delete { name } => {
            let vm = c.delete_vm(&name)?;
            p.done(
                &format!("VM {name} deleted; its volumes are kept"),
                serde_json::to_value(vm)?,
            )
        }
    }
}

/// `offsite partner ...`.
pub(crate) fn partner(c: &Client, cmd: PartnerCommand, p: &Printer) -> anyhow::Result<()> {
    match cmd {
        PartnerCommand::Add {
            name,
            address,
            fingerprint,
        } => p.partner(&c.add_partner(&offsite_api_types::AddPartner {
            name,
            address,
            fingerprint,
        })?),
        PartnerCommand::List => p.partners(&c.partners()?),
        PartnerCommand::Set { name, address } => {
            let pi = c.update_partner(&name, &address)?;
            p.done(
                &format!("partner {name} now at {}", pi.address),
                serde_json::to_value(&pi)?,
            )
        }
        PartnerCommand::Replace {
            name,
            fingerprint,
            address,
        } => p.partner_replaced(&c.replace_partner(
            &name,
            &offsite_api_types::ReplacePartner {
                address,
                fingerprint,
            },
        )?),
        PartnerCommand::Test {
            name,
            bytes,
            compress,
        } => p.partner_test(&c.partner_test(
            &name,
            &offsite_api_types::PartnerTestRequest {
                bytes: Some(bytes.0),
                compress,
            },
        )?),
        PartnerCommand::Check { name, security_tag } => p.authz_check(&c.authz_check(
            &name,
            &offsite_api_types::AuthzCheckRequest { security_tag },
        )?),
        PartnerCommand::Remove { name } => {
            let removed = c.remove_partner(&name)?;
            p.done(
                &format!("partner {name} removed; its connections are refused from now on"),
                serde_json::to_value(removed)?,
            )
        }
    }
}

/// `offsite authz ...`: who may replicate to this site, and where.
pub(crate) fn authz(c: &Client, cmd: AuthzCommand, p: &Printer) -> anyhow::Result<()> {
    match cmd {
        AuthzCommand::Add {
            allowed_primary,
            storage_location,
            security_tag,
        } => p.authz(
            &[c.add_authz(&offsite_api_types::AddAuthz {
                allowed_primary,
                storage_location,
                security_tag,
            })?],
            true,
        ),
        AuthzCommand::List => p.authz(&c.authz_entries()?, false),
        AuthzCommand::Remove { pattern } => {
            let removed = c.remove_authz(&pattern)?;
            p.done(
                &format!("authorization entry {pattern} removed"),
                serde_json::to_value(removed)?,
            )
        }
    }
}

/// `offsite group ...`.
pub(crate) fn group(
    global: &Global,
    c: &Client,
    cmd: GroupCommand,
    p: &Printer,
) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::Create(a) => p.group(&c.create_group(&offsite_api_types::CreateGroup {
            name: a.name,
            partner: a.partner,
            vms: a.vms,
            volumes: a.volumes,
            mode: args::spelling(&a.mode),
            rpo_secs: a.rpo.0,
            keep: a.keep,
            bandwidth_bytes_per_sec: a.bandwidth.map(|b| b.0),
            compress: Some(a.compress == args::Compress::Zstd),
            security_tag: a.security_tag,
            on_link_loss: a.on_link_loss.as_ref().map(args::spelling),
            suspend_timeout_secs: a.suspend_timeout.map(|d| d.0),
            app_consistent_every_secs: a.app_consistent_every.map(|e| e.0),
            checkpoint_interval_ms: a.checkpoint_interval.map(|d| d.0),
            journal_history_secs: a.journal_history.map(|d| d.0),
            journal_max_bytes: a.journal_max_size.map(|s| s.0),
            encrypt: a.encrypt,
        })?),
        GroupCommand::Start {
            name,
            seed,
            no_wait,
        } => {
            let mut st: offsite_api_types::GroupStatus =
                c.group_action(&name, "start", &offsite_api_types::StartGroup { seed })?;
            if !no_wait {
                st = wait_initial(c, st, p)?;
            }
            p.group(&st)
        }
        GroupCommand::List => p.groups(&c.groups()?),
        GroupCommand::Status {
            name,
            watch,
            interval,
        } if watch => watch_group(c, &name, interval, p),
        GroupCommand::Status { name, .. } => p.group(&c.group(&name)?),
        GroupCommand::Measure { name } => p.measure(&c.group_measure(&name)?),
        GroupCommand::Pause { name } => p.group(&c.group_action(&name, "pause", &())?),
        GroupCommand::Resume { name } => p.group(&c.group_action(&name, "resume", &())?),
        GroupCommand::Set {
            name,
            mode,
            rpo,
            keep,
            bandwidth,
            compression,
            app_consistent_every,
            checkpoint_interval,
            journal_history,
            journal_max_size,
        } => p.group(&c.set_group(
            &name,
            &offsite_api_types::SetGroup {
                mode: mode.as_ref().map(args::spelling),
                rpo_secs: rpo.map(|r| r.0),
                keep,
                bandwidth_bytes_per_sec: bandwidth.map(|b| b.0),
                compress: compression.map(|c| c == args::Compress::Zstd),
                app_consistent_every_secs: app_consistent_every.map(|e| e.0),
                checkpoint_interval_ms: checkpoint_interval.map(|d| d.0),
                journal_history_secs: journal_history.map(|d| d.0),
                journal_max_bytes: journal_max_size.map(|s| s.0),
            },
        )?),
        GroupCommand::Unfence { name, force } => p.group(&c.unfence(&name, force)?),
        GroupCommand::Resync { name } => {
            let r = resync(c, global, &name, p)?;
            p.resync(&r)
        }
        GroupCommand::ExportSeed { name, to } => {
            let r: offsite_api_types::SeedExport = c.group_action(
                &name,
                "export-seed",
                &offsite_api_types::ExportSeed {
                    to: absolute(&to)?.display().to_string(),
                },
            )?;
            p.done(
                &format!(
                    "seed of group {} written to {} ({} of data); carry it to the replica site and run `offsite group start {} --seed DIR`",
                    r.group,
                    r.dir,
                    units::human(r.bytes),
                    r.group
                ),
                serde_json::to_value(&r)?,
            )
        }
        GroupCommand::Key(args::GroupKeyCommand::Export { name }) => {
            let k = c.group_key_export(&name)?;
            eprintln!(
                "warning: this is the secret key of group {}: whoever holds it can read the group's replicas; keep it offline, and never in the bucket",
                k.group
            );
            p.done(&k.key, serde_json::to_value(&k)?)
        }
        GroupCommand::Key(args::GroupKeyCommand::Import { name, key_file }) => {
            let line = std::fs::read_to_string(&key_file)
                .with_context(|| format!("reading the key file {}", key_file.display()))?;
            let k = c.group_key_import(&name, &line)?;
            p.done(
                &format!("site now holds key {} of group {}", k.key_id, k.group),
                serde_json::to_value(&k)?,
            )
        }
        GroupCommand::Teardown {
            name,
            force,
            delete_replica,
        } => {
            let st = c.teardown(&name, force, delete_replica)?;
            let mut json = serde_json::to_value(&st)?;
            json["torn_down"] = true.into();
            json["replica_deleted"] = delete_replica.into();
            p.done(
                &if delete_replica {
                    format!("group {name} torn down; the replica's store and its PITs were deleted")
                } else {
                    format!("group {name} torn down; the replica keeps its PITs aside (delete them with --delete-replica next time)")
                },
                json,
            )
        }
    }
}

/// `offsite group status NAME --watch`: the status line again every
/// `interval` seconds (the screen redrawn on a terminal) until interrupted.
fn watch_group(c: &Client, name: &str, interval: f64, p: &Printer) -> anyhow::Result<()> {
    let every = Duration::try_from_secs_f64(interval)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--interval must be a positive number of seconds")?;
    let redraw = !p.json() && std::io::stdout().is_terminal();
    loop {
        let st = c.group(name)?;
        if redraw {
            // Clear the screen and go home, like watch(1).
            output::emit_text("\x1b[2J\x1b[H")?;
        }
        p.group_line(&st)?;
        std::thread::sleep(every);
    }
}

/// `offsite site set`: changes the site's settings (none given: shows them).
pub(crate) fn site_set(c: &Client, a: SetArgs, p: &Printer) -> anyhow::Result<()> {
    let update = offsite_api_types::UpdateSiteSettings {
        allow_any_partner: a.allow_any_partner,
        // Passed as given: the path is on the site's machine, which
        // refuses a relative one (it cannot know our directory).
        default_storage_location: a
            .default_storage_location
            .as_deref()
            .map(|p| p.display().to_string()),
        bandwidth_bytes_per_sec: a.bandwidth.map(|b| b.0),
    };
    let settings = if update == offsite_api_types::UpdateSiteSettings::default() {
        c.settings()?
    } else {
        c.update_settings(&update)?
    };
    p.settings(&settings)
}

/// `offsite sync GROUP [--pit-name N] [--no-wait] [--quiesce]`, from
/// either site: exits 1 (after printing the result) when a quiesce asked
/// for did not give an application-consistent PIT.
pub(crate) fn sync(
    c: &Client,
    group: String,
    pit_name: Option<String>,
    no_wait: bool,
    quiesce: bool,
    p: &Printer,
) -> anyhow::Result<()> {
    let r: offsite_api_types::SyncResult = c.group_action(
        &group,
        "sync",
        &offsite_api_types::SyncGroup {
            pit_name,
            no_wait,
            quiesce,
        },
    )?;
    p.sync(&r)?;
    if !r.errors.is_empty() {
        anyhow::bail!(
            "{}{}",
            r.pit.as_ref().map_or(String::new(), |pit| format!(
                "PIT {} was committed{}, but ",
                pit.id,
                if pit.app_consistent {
                    " application-consistent"
                } else {
                    " crash-consistent"
                }
            )),
            r.errors.join("; ")
        );
    }
    Ok(())
}

/// `offsite pit ...`.
pub(crate) fn pit(c: &Client, cmd: PitCommand, p: &Printer) -> anyhow::Result<()> {
    match cmd {
        PitCommand::List {
            group,
            checkpoints: true,
            all,
        } => p.checkpoints(&c.checkpoints(&group, all)?),
        PitCommand::List { group, .. } => p.pits(&c.pits(&group)?),
        PitCommand::Export { group, pit, at } => match (pit, at) {
            (_, Some(at)) => p.pit_export(&c.pit_export_at(&group, &at.0)?),
            (Some(pit), None) => p.pit_export(&c.pit_export(&group, &pit)?),
            // clap requires one of them.
            (None, None) => anyhow::bail!("give a PIT (id or name) or --at TIME"),
        },
        PitCommand::Check { group } => {
            let r = c.pit_check(&group)?;
            p.pit_check(&r)?;
            if r.damaged > 0 {
                anyhow::bail!(
                    "{} PIT(s) of group {group} do not match their checksums; fail over from an intact PIT and restore the damaged storage",
                    r.damaged
                );
            }
            Ok(())
        }
        PitCommand::Release { group, pit } => p.pits(&c.pit_release(&group, &pit)?),
    }
}

/// `offsite verify GROUP`: exits 1 when blocks differ.
pub(crate) fn verify(c: &Client, group: &str, p: &Printer) -> anyhow::Result<()> {
    let r: offsite_api_types::VerifyResult = c.group_action(group, "verify", &())?;
    p.verify(&r)?;
    if r.differing_blocks > 0 {
        anyhow::bail!(
            "{} block(s) differ between the primary and PIT {} of the replica; the group's health is critical until `offsite group resync {}` ships them",
            r.differing_blocks,
            r.pit,
            r.group
        );
    }
    Ok(())
}

/// `offsite failover ...`.
pub(crate) fn failover(c: &Client, cmd: FailoverCommand, p: &Printer) -> anyhow::Result<()> {
    match cmd {
        FailoverCommand::Run {
            group,
            pit,
            at,
            test,
            force,
        } => {
            let r: offsite_api_types::FailoverResult = c.group_action(
                &group,
                "failover",
                &offsite_api_types::FailoverRun {
                    pit,
                    at: at.map(|a| a.0),
                    test,
                    force,
                    ..Default::default()
                },
            )?;
            p.failover(&r)?;
            failover_errors(&r)
        }
        FailoverCommand::Commit { group } => {
            let r: offsite_api_types::FailoverResult =
                c.group_action(&group, "failover/commit", &())?;
            p.failover(&r)
        }
        FailoverCommand::Revert { group } => {
            let r: offsite_api_types::FailoverResult =
                c.group_action(&group, "failover/revert", &())?;
            p.failover(&r)
        }
        FailoverCommand::Prepare { group } => {
            let r: offsite_api_types::FailoverResult =
                c.group_action(&group, "failover/prepare", &())?;
            p.failover(&r)?;
            // A quiesce or thaw hook that failed: the group is prepared,
            // its final PIT crash-consistent.
            if !r.errors.is_empty() {
                anyhow::bail!(
                    "group {} is prepared for failover and its final PIT {} is on the replica, but: {}",
                    r.group,
                    r.pit,
                    r.errors.join("; ")
                );
            }
            Ok(())
        }
        FailoverCommand::StopTest { group } => {
            let r: offsite_api_types::FailoverResult =
                c.group_action(&group, "failover/stop-test", &())?;
            p.failover(&r)
        }
    }
}

/// `offsite reverse GROUP`, at the site a group failed over to.
pub(crate) fn reverse(
    global: &Global,
    c: &Client,
    group: &str,
    discard_changes_on: Option<String>,
    dry_run: bool,
    p: &Printer,
) -> anyhow::Result<()> {
    let req = offsite_api_types::ReverseRequest {
        discard_changes_on,
        dry_run,
    };
    let r: offsite_api_types::ReverseResult =
        with_transfer_bar(global, group, "reverse", p, || {
            Ok(c.group_action(group, "reverse", &req)?)
        })?;
    p.reverse(&r)
}

/// `offsite events [--limit N] [--follow]`.
pub(crate) fn events(c: &Client, limit: u32, follow: bool, p: &Printer) -> anyhow::Result<()> {
    let events = c.events(limit)?;
    if !follow {
        return p.events(&events);
    }
    p.event_lines(&events)?;
    let mut last = events.last().map_or(0, |e| e.id);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let new: Vec<_> = c
            .events(1000)?
            .into_iter()
            .filter(|e| e.id > last)
            .collect();
        if let Some(e) = new.last() {
            last = e.id;
        }
        p.event_lines(&new)?;
    }
}

pub(crate) fn plan(global: &args::Global, cmd: PlanCommand, p: &Printer) -> anyhow::Result<()> {
    use offsite_api_types as t;
    let c = client(global)?;
    match cmd {
        PlanCommand::Create {
            name,
            protected_site,
            recovery_site,
            description,
            test_network,
            parallel,
        } => p.plan(&c.create_plan(&t::CreatePlan {
            name,
            protected_site,
            recovery_site,
            description,
            test_network,
            parallel,
        })?),
        PlanCommand::AddGroup { plan, group } => {
            p.plan(&c.plan_action(&plan, "groups", &t::PlanAddGroup { group })?)
        }
        PlanCommand::SetPriority {
            plan,
            vm,
            priority,
            wait_for,
            no_wait,
            wait_timeout,
        } => p.plan(&c.plan_action(
            &plan,
            "priorities",
            &t::PlanSetPriority {
                vm,
                priority,
                wait_for,
                no_wait,
                wait_timeout_secs: wait_timeout.map(|s| s.0),
            },
        )?),
        PlanCommand::SetNetworkMap { plan, mappings } => {
            p.plan(&c.plan_action(&plan, "network-map", &t::PlanSetNetworkMap { mappings })?)
        }
        PlanCommand::AddStep {
            plan,
            name,
            command,
            prompt,
            after_tier,
            skip_in_test,
            timeout,
        } => p.plan(&c.plan_action(
            &plan,
            "steps",
            &t::PlanAddStep {
                name,
                command,
                prompt,
                after_tier,
                skip_in_test,
                timeout_secs: timeout.map(|s| s.0),
            },
        )?),
        PlanCommand::RemoveGroup { plan, group } => p.plan(&c.plan_remove_group(&plan, &group)?),
        PlanCommand::RemoveStep { plan, step } => p.plan(&c.plan_remove_step(&plan, &step)?),
        PlanCommand::Show { plan } => p.plan(&c.plan(&plan)?),
        PlanCommand::List => p.plans(&c.plans()?),
        PlanCommand::Delete { plan } => {
            c.delete_plan(&plan)?;
            p.done(
                &format!("plan {plan} deleted at both sites (its run reports are kept)"),
                serde_json::json!({ "name": plan, "deleted": true }),
            )
        }
        PlanCommand::Run {
            plan,
            mode,
            resume,
            at,
        } => {
            let mode = mode.as_ref().map(args::spelling);
            let r: t::PlanRunReport = c.plan_action(
                &plan,
                "run",
                &t::PlanRunRequest {
                    mode,
                    resume,
                    at: at.map(|a| a.0),
                },
            )?;
            p.plan_run(&r)?;
            run_outcome(&r)
        }
        PlanCommand::Continue { plan } => {
            let r: t::PlanRunReport = c.plan_action(&plan, "continue", &())?;
            p.plan_run(&r)?;
            run_outcome(&r)
        }
        PlanCommand::History { plan } => p.plan_history(&c.plan_history(&plan)?),
        PlanCommand::Report { run_id, format } => {
            let r = c.plan_report(&run_id)?;
            match format {
                ReportFormat::Html => output::emit_text(&offsite_plan::report::html(
                    &offsite_api::plan_run_report(r.clone()),
                )),
                ReportFormat::Json => Printer::new(true).plan_run(&r),
                ReportFormat::Text => p.plan_run(&r),
            }
        }
    }
}

/// A run that stopped at an error, or finished with errors, exits 1.
fn run_outcome(r: &offsite_api_types::PlanRunReport) -> anyhow::Result<()> {
    match r.status.as_str() {
        "failed" => {
            let why = r.errors.last().cloned().unwrap_or_default();
            anyhow::bail!(
                "plan {} run {} stopped: {why}; fix it and run `offsite plan run {} --resume`",
                r.plan,
                r.id,
                r.plan
            )
        }
        "succeeded-with-errors" => anyhow::bail!(
            "plan {} run {} completed with {} error(s): {}",
            r.plan,
            r.id,
            r.errors.len(),
            r.errors.join("; ")
        ),
        _ => Ok(()),
    }
}

/// A failover that completed with errors (a VM hook failed) exits 1.
fn failover_errors(r: &offsite_api_types::FailoverResult) -> anyhow::Result<()> {
    if r.errors.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "group {} failed over with {} error(s): {}",
        r.group,
        r.errors.len(),
        r.errors.join("; ")
    )
}
