//! `offsite`: the site daemon (`offsite serve`) and its command-line client.
//!
//! Exit codes: 0 success; 1 the command failed (the one-line error on
//! stderr says what to do); 2 the command line was malformed (clap's usage
//! error). Output to a closed pipe ends the program quietly with 0.

mod args;
mod assets;
mod demo;
mod output;
mod units;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use offsite_api_types::{CreateVolume, VolumeInfo};
use offsite_client::Client;

use crate::args::{
    AuthzCommand, Cli, Command, FailoverCommand, GroupCommand, PartnerCommand, PitCommand,
    PlanCommand, ReportFormat, SiteCommand, VmCommand, VolumeCommand,
};
use crate::output::Printer;

fn main() -> ExitCode {
    // Files this process creates are for its user only: `site init` and
    // `demo` create data directories, `serve` VM disks and replica stores
    // (the daemon sets the same umask itself); the helpers that create them
    // also give explicit 0600/0700 modes where they can.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // `--format html` writes a page, `--json` asks for JSON: one of them
    // would be ignored, so the command line is contradictory (exit 2).
    if let Command::Plan(PlanCommand::Report {
        format: ReportFormat::Html,
        ..
    }) = &cli.command
        && cli.global.json
    {
        return usage_error(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            "`plan report --format html` writes an HTML page and cannot be combined with --json; use --format json (or --json) for JSON",
        ));
    }
    let json = cli.global.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if output::is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            // With --json, stdout holds one JSON document: the result, or
            // this error when the command failed before printing one (a
            // failure after the result, such as `verify` finding
            // differences, keeps the result and the exit code).
            if json && !output::printed() {
                let (code, status) = error_code(&e);
                let _ = output::emit_error(code, &format!("{e:#}"), status);
            }
            ExitCode::FAILURE
        }
    }
}

/// A malformed command line: clap's message and exit code 2 (help and
/// version print and exit 0). With `--json` anywhere before `--`, the
/// error is also a JSON object on stdout.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    let _ = e.print();
    if json {
        // clap's first line is the error itself; the rest is usage.
        let rendered = e.render().to_string();
        let message = rendered.lines().next().unwrap_or_default();
        let _ = output::emit_error("usage", message.trim_start_matches("error: "), None);
    }
    ExitCode::from(2)
}

/// The machine-readable code of a failed command: the API's code when the
/// site answered with an error, else the client's class of failure.
fn error_code(e: &anyhow::Error) -> (&str, Option<u16>) {
    use offsite_client::ClientError as C;
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<C>() {
            return match c {
                C::Api { status, code, .. } => (code.as_str(), Some(*status)),
                C::NotRunning { .. } => ("not_running", None),
                C::NotASite { .. } => ("not_a_site", None),
                C::NoSite => ("no_site", None),
                C::Read { .. } => ("read_failed", None),
                C::Unreachable { .. } => ("unreachable", None),
                C::Protocol(_) => ("protocol", None),
            };
        }
        // Commands that work on the data directory itself (`site init`):
        // the engine's classes, spelled as the API spells them.
        if let Some(e) = cause.downcast_ref::<offsite_engine::EngineError>() {
            use offsite_engine::ErrorKind as K;
            let code = match e.kind() {
                K::NotFound => "not_found",
                K::Conflict => "conflict",
                K::Invalid => "invalid",
                K::Busy => "busy",
                K::Internal => "internal",
            };
            return (code, None);
        }
    }
    ("failed", None)
}

fn init_tracing(default: &str) {
    offsite_daemon::log::install_for_cli(default);
}

fn client(cli: &args::Global) -> anyhow::Result<Client> {
    let c = match (&cli.url, &cli.dir) {
        (Some(url), _) => {
            let token = cli
                .token_file
                .as_deref()
                .context("--url needs --token-file FILE (the site's api.token)")?;
            Client::new(url, token)?
        }
        (None, Some(dir)) => Client::for_dir(dir)?,
        (None, None) => return Err(offsite_client::ClientError::NoSite.into()),
    };
    Ok(c)
}

fn need_dir(dir: &Option<PathBuf>, cmd: &str) -> anyhow::Result<PathBuf> {
    dir.clone()
        .with_context(|| format!("`offsite {cmd}` needs --dir DIR (the site's data directory)"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let p = Printer::new(cli.global.json);
    match cli.command {
        Command::Serve(a) => {
            // The daemon installs its own log (reloadable, text or JSON).
            let dir = need_dir(&cli.global.dir, "serve")?;
            let options = offsite_daemon::ServeOptions {
                log_format: match a.log_format {
                    args::LogFormat::Text => offsite_daemon::log::LogFormat::Text,
                    args::LogFormat::Json => offsite_daemon::log::LogFormat::Json,
                },
            };
            offsite_daemon::run(&dir, &options)
        }
        Command::GenerateAssets { out } => assets::generate(&out),
        Command::Site(SiteCommand::Init(a)) => {
            init_tracing("warn");
            let dir = need_dir(&cli.global.dir, "site init")?;
            let report = offsite_engine::init::init_site(
                &dir,
                &offsite_engine::init::InitOptions {
                    name: a.name,
                    listen: a.listen,
                    api: a.api,
                    nbd: a.nbd,
                },
            )?;
            p.site_init(&dir, &report)
        }
        Command::Site(SiteCommand::Show) => p.site(&client(&cli.global)?.site()?),
        Command::Volume(cmd) => {
            let c = client(&cli.global)?;
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
                        wait_import(&c, v, &p)?
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
                VolumeCommand::ClearDirty { name, force } => {
                    p.volume(&c.clear_dirty(&name, force)?)
                }
            }
        }
        Command::Site(SiteCommand::Set(a)) => {
            let c = client(&cli.global)?;
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
        Command::Vm(cmd) => {
            let c = client(&cli.global)?;
            match cmd {
                VmCommand::Create {
                    name,
                    volumes,
                    start,
                    stop,
                    status,
                } => p.vm(&c.create_vm(&offsite_api_types::CreateVm {
                    name,
                    volumes,
                    start,
                    stop,
                    status,
                })?),
                VmCommand::List => p.vms(&c.vms()?),
                VmCommand::Show { name } => p.vm(&c.vm(&name)?),
                VmCommand::Set {
                    name,
                    start,
                    stop,
                    status,
                    volumes,
                } => p.vm(&c.set_vm(
                    &name,
                    &offsite_api_types::SetVm {
                        start,
                        stop,
                        status,
                        volumes: (!volumes.is_empty()).then_some(volumes),
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
        Command::Partner(cmd) => {
            let c = client(&cli.global)?;
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
        Command::Authz(cmd) => {
            let c = client(&cli.global)?;
            match cmd {
                AuthzCommand::Add {
                    allowed_primary,
                    storage_location,
                    security_tag,
                } => p.authz(
                    &[c.add_authz(&offsite_api_types::AddAuthz {
                        allowed_primary,
                        storage_location: storage_location.display().to_string(),
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
        Command::Group(cmd) => {
            let c = client(&cli.global)?;
            match cmd {
                GroupCommand::Create(a) => {
                    p.group(&c.create_group(&offsite_api_types::CreateGroup {
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
                    })?)
                }
                GroupCommand::Start {
                    name,
                    seed,
                    no_wait,
                } => {
                    let mut st: offsite_api_types::GroupStatus =
                        c.group_action(&name, "start", &offsite_api_types::StartGroup { seed })?;
                    if !no_wait {
                        st = wait_initial(&c, st, &p)?;
                    }
                    p.group(&st)
                }
                GroupCommand::List => p.groups(&c.groups()?),
                GroupCommand::Status {
                    name,
                    watch,
                    interval,
                } => {
                    if !watch {
                        return p.group(&c.group(&name)?);
                    }
                    let every = Duration::try_from_secs_f64(interval)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .context("--interval must be a positive number of seconds")?;
                    let redraw = !p.json() && std::io::stdout().is_terminal();
                    loop {
                        let st = c.group(&name)?;
                        if redraw {
                            // Clear the screen and go home, like watch(1).
                            output::emit_text("\x1b[2J\x1b[H")?;
                        }
                        p.group_line(&st)?;
                        std::thread::sleep(every);
                    }
                }
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
                } => p.group(&c.set_group(
                    &name,
                    &offsite_api_types::SetGroup {
                        mode: mode.as_ref().map(args::spelling),
                        rpo_secs: rpo.map(|r| r.0),
                        keep,
                        bandwidth_bytes_per_sec: bandwidth.map(|b| b.0),
                        compress: compression.map(|c| c == args::Compress::Zstd),
                    },
                )?),
                GroupCommand::Unfence { name, force } => p.group(&c.unfence(&name, force)?),
                GroupCommand::Resync { name } => {
                    let r = resync(&c, &cli.global, &name, &p)?;
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
        Command::Sync {
            group,
            pit_name,
            no_wait,
        } => {
            let c = client(&cli.global)?;
            let r: offsite_api_types::SyncResult = c.group_action(
                &group,
                "sync",
                &offsite_api_types::SyncGroup { pit_name, no_wait },
            )?;
            p.sync(&r)
        }
        Command::Pit(PitCommand::List { group }) => p.pits(&client(&cli.global)?.pits(&group)?),
        Command::Pit(PitCommand::Export { group, pit }) => {
            p.pit_export(&client(&cli.global)?.pit_export(&group, &pit)?)
        }
        Command::Pit(PitCommand::Check { group }) => {
            let r = client(&cli.global)?.pit_check(&group)?;
            p.pit_check(&r)?;
            if r.damaged > 0 {
                anyhow::bail!(
                    "{} PIT(s) of group {group} do not match their checksums; fail over from an intact PIT and restore the damaged storage",
                    r.damaged
                );
            }
            Ok(())
        }
        Command::Pit(PitCommand::Release { group, pit }) => {
            p.pits(&client(&cli.global)?.pit_release(&group, &pit)?)
        }
        Command::Verify { group } => {
            let c = client(&cli.global)?;
            let r: offsite_api_types::VerifyResult = c.group_action(&group, "verify", &())?;
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
        Command::Failover(FailoverCommand::Run {
            group,
            pit,
            test,
            force,
        }) => {
            let r: offsite_api_types::FailoverResult = client(&cli.global)?.group_action(
                &group,
                "failover",
                &offsite_api_types::FailoverRun {
                    pit,
                    test,
                    force,
                    ..Default::default()
                },
            )?;
            p.failover(&r)?;
            failover_errors(&r)
        }
        Command::Failover(FailoverCommand::Commit { group }) => {
            let r: offsite_api_types::FailoverResult =
                client(&cli.global)?.group_action(&group, "failover/commit", &())?;
            p.failover(&r)
        }
        Command::Failover(FailoverCommand::Revert { group }) => {
            let r: offsite_api_types::FailoverResult =
                client(&cli.global)?.group_action(&group, "failover/revert", &())?;
            p.failover(&r)
        }
        Command::Failover(FailoverCommand::Prepare { group }) => {
            let r: offsite_api_types::FailoverResult =
                client(&cli.global)?.group_action(&group, "failover/prepare", &())?;
            p.failover(&r)
        }
        Command::Reverse {
            group,
            discard_changes_on,
            dry_run,
        } => {
            let c = client(&cli.global)?;
            let req = offsite_api_types::ReverseRequest {
                discard_changes_on,
                dry_run,
            };
            let r: offsite_api_types::ReverseResult =
                with_transfer_bar(&cli.global, &group, "reverse", &p, || {
                    Ok(c.group_action(&group, "reverse", &req)?)
                })?;
            p.reverse(&r)
        }
        Command::Failover(FailoverCommand::StopTest { group }) => {
            let r: offsite_api_types::FailoverResult =
                client(&cli.global)?.group_action(&group, "failover/stop-test", &())?;
            p.failover(&r)
        }
        Command::Events { limit, follow } => {
            let c = client(&cli.global)?;
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
        Command::Plan(cmd) => plan(&cli.global, cmd, &p),
        Command::Demo(a) => {
            init_tracing("warn");
            demo::run(cli.global.dir.as_deref(), a.keep)
        }
    }
}

fn plan(global: &args::Global, cmd: PlanCommand, p: &Printer) -> anyhow::Result<()> {
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
        PlanCommand::Run { plan, mode, resume } => {
            let mode = mode.as_ref().map(args::spelling);
            let r: t::PlanRunReport =
                c.plan_action(&plan, "run", &t::PlanRunRequest { mode, resume })?;
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
                ReportFormat::Html => output::emit_text(&offsite_plan::report::html(&r)),
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

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

/// Polls initial replication until it ends, with a progress bar on a terminal.
fn wait_initial(
    c: &Client,
    mut st: offsite_api_types::GroupStatus,
    p: &Printer,
) -> anyhow::Result<offsite_api_types::GroupStatus> {
    // In bytes of data, with the daemon's rate and ETA (as `volume create
    // --import` shows its copy): holes are skipped, so a percentage of the
    // volumes' size would race to the end and then stall.
    let bar = (!p.json() && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "initial replication {prefix} [{bar:40}] {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(st.name.clone());
        bar
    });
    use offsite_catalog::GroupState;
    while st.state == GroupState::InitialReplication.as_str()
        || (st.state == GroupState::Replicating.as_str() && st.last_pit.is_none())
    {
        std::thread::sleep(Duration::from_millis(250));
        st = c.group(&st.name)?;
        if let (Some(bar), Some(t)) = (&bar, &st.transfer) {
            bar.set_length(t.bytes_total);
            bar.set_position(t.bytes_done);
            bar.set_message(format!(
                "{}/s, eta {}",
                units::human(t.bytes_per_second),
                t.eta_seconds
                    .map_or_else(|| "-".to_string(), |e| format!("{e}s"))
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(st)
}

/// Runs `job` (a request that moves data) on a thread while this one shows
/// the group's `transfer` from `group status` on a terminal: bytes, rate
/// and ETA.
fn with_transfer_bar<T: Send>(
    global: &args::Global,
    group: &str,
    what: &str,
    p: &Printer,
    job: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let template = format!("{what} {group} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{msg}}");
    with_status_bar(global, group, &template, p, job, |st, bar| {
        if let Some(t) = &st.transfer {
            bar.set_length(t.bytes_total);
            bar.set_position(t.bytes_done);
            bar.set_message(format!(
                "{}/s, eta {}",
                units::human(t.bytes_per_second),
                t.eta_seconds
                    .map_or_else(|| "-".to_string(), |e| format!("{e}s"))
            ));
        }
    })
}

/// `group resync`: the request runs on a thread while this one shows the
/// comparison's progress (blocks compared of all, differing, bytes sent)
/// from `group status` on a terminal.
fn resync(
    c: &Client,
    global: &args::Global,
    name: &str,
    p: &Printer,
) -> anyhow::Result<offsite_api_types::ResyncResult> {
    let template =
        format!("resync {name} [{{bar:40}}] {{pos}}/{{len}} blocks compared, {{msg}} eta {{eta}}");
    with_status_bar(
        global,
        name,
        &template,
        p,
        || Ok(c.resync(name)?),
        |st, bar| {
            if let Some(r) = &st.resync {
                bar.set_length(r.blocks_total);
                bar.set_position(r.blocks_compared);
                bar.set_message(format!(
                    "{} differ, {} sent",
                    r.differing_blocks,
                    units::human(r.bytes_sent)
                ));
            }
        },
    )
}

/// Runs `job` on a thread; meanwhile, on a terminal, polls `group status`
/// of `group` and lets `update` draw it on a progress bar of `template`.
/// With --json or without a terminal, just runs `job`.
fn with_status_bar<T: Send>(
    global: &args::Global,
    group: &str,
    template: &str,
    p: &Printer,
    job: impl FnOnce() -> anyhow::Result<T> + Send,
    update: impl Fn(&offsite_api_types::GroupStatus, &indicatif::ProgressBar),
) -> anyhow::Result<T> {
    if p.json() || !std::io::stderr().is_terminal() {
        return job();
    }
    let poller = client(global)?;
    std::thread::scope(|s| {
        let job = s.spawn(job);
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        while !job.is_finished() {
            if let Ok(st) = poller.group(group) {
                update(&st, &bar);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
        job.join()
            .map_err(|_| anyhow::anyhow!("the request's thread panicked"))?
    })
}

/// Polls an import until it ends, with a progress bar on a terminal.
fn wait_import(c: &Client, mut v: VolumeInfo, p: &Printer) -> anyhow::Result<VolumeInfo> {
    let bar = (!p.json() && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(v.size_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "importing {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(v.name.clone());
        bar
    });
    while v.state == "importing" {
        std::thread::sleep(Duration::from_millis(200));
        v = c.volume(&v.name)?;
        if let (Some(bar), Some(imp)) = (&bar, &v.import) {
            bar.set_position(imp.copied_bytes);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if v.state != "ready" {
        let why = v
            .import
            .as_ref()
            .and_then(|i| i.error.clone())
            .unwrap_or_else(|| format!("volume is {}", v.state));
        anyhow::bail!("{why}");
    }
    Ok(v)
}
