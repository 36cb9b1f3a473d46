//! `offsite`: the site daemon (`offsite serve`) and its command-line client.
//!
//! Exit codes: 0 success; 1 the command failed (the one-line error on
//! stderr says what to do); 2 the command line was malformed (clap's usage
//! error). Output to a closed pipe ends the program quietly with 0.

mod args;
mod assets;
mod commands;
mod demo;
mod output;
mod progress;
mod units;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use offsite_client::Client;

use crate::args::{Cli, Command, PlanCommand, ReportFormat, SiteCommand};
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
    // Certificate files serve `--api-tls files`; with another mode they
    // would be ignored (exit 2, as clap's own conflicts).
    if let Command::Site(SiteCommand::Init(a)) = &cli.command
        && a.api_tls_cert.is_some()
        && let Some(mode @ (args::ApiTlsArg::Off | args::ApiTlsArg::SelfSigned)) = a.api_tls
    {
        let mode = clap::ValueEnum::to_possible_value(&mode)
            .map(|v| v.get_name().to_string())
            .unwrap_or_default();
        return usage_error(Cli::command().error(
            clap::error::ErrorKind::ArgumentConflict,
            format!(
                "--api-tls-cert and --api-tls-key serve your certificate (--api-tls files), but --api-tls is {mode}"
            ),
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
                // Stdout is gone if this fails; the exit code still says it.
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
    // As above: if the terminal is gone, the exit code still says it.
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
                C::Tls { .. } => ("tls", None),
                C::CaFile(_) => ("read_failed", None),
                C::TrustWithoutTls { .. } => ("invalid", None),
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

pub(crate) fn client(cli: &args::Global) -> anyhow::Result<Client> {
    let c = match (&cli.url, &cli.dir) {
        (Some(url), _) => {
            let token = cli
                .token_file
                .as_deref()
                .context("--url needs --token-file FILE (the site's api.token)")?;
            let trust = match (&cli.api_fingerprint, &cli.ca_file) {
                (Some(fp), _) => offsite_client::Trust::Fingerprint(fp.clone()),
                (None, Some(ca)) => offsite_client::Trust::CaFile(ca.clone()),
                (None, None) => offsite_client::Trust::PublicRoots,
            };
            Client::new(url, token, &trust)?
        }
        (None, Some(dir)) => {
            if cli.api_fingerprint.is_some() || cli.ca_file.is_some() {
                anyhow::bail!(
                    "--api-fingerprint and --ca-file go with --url; through --dir the CLI pins the certificate the site's daemon serves (run/daemon.json)"
                );
            }
            Client::for_dir(dir)?
        }
        (None, None) => return Err(offsite_client::ClientError::NoSite.into()),
    };
    Ok(c)
}

/// `site init`'s `[api_tls]`, from its flags: the certificate files imply
/// `files`; paths are made absolute (config.toml reads relative ones from
/// the site directory, not from where `site init` ran).
fn init_api_tls(a: &args::InitArgs) -> anyhow::Result<offsite_engine::config::ApiTlsConfig> {
    use offsite_engine::config::{ApiTlsConfig, ApiTlsMode};
    let mode = match (a.api_tls, &a.api_tls_cert) {
        (None, None) | (Some(args::ApiTlsArg::Off), _) => ApiTlsMode::Off,
        (Some(args::ApiTlsArg::SelfSigned), _) => ApiTlsMode::SelfSigned,
        (None, Some(_)) | (Some(args::ApiTlsArg::Files), _) => ApiTlsMode::Files,
    };
    let absolute_opt = |p: &Option<PathBuf>| p.as_deref().map(absolute).transpose();
    Ok(ApiTlsConfig {
        mode,
        cert: absolute_opt(&a.api_tls_cert)?,
        key: absolute_opt(&a.api_tls_key)?,
        allow_plaintext: a.insecure_api,
    })
}

fn need_dir(dir: &Option<PathBuf>, cmd: &str) -> anyhow::Result<PathBuf> {
    dir.clone()
        .with_context(|| format!("`offsite {cmd}` needs --dir DIR (the site's data directory)"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let p = Printer::new(cli.global.json);
    let global = &cli.global;
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
            let api_tls = init_api_tls(&a)?;
            let report = offsite_engine::init::init_site(
                &dir,
                &offsite_engine::init::InitOptions {
                    name: a.name,
                    listen: a.listen,
                    api: a.api,
                    nbd: a.nbd,
                    api_tls,
                },
            )?;
            p.site_init(&dir, &report)
        }
        Command::Site(SiteCommand::Show) => p.site(&client(&cli.global)?.site()?),
        Command::Site(SiteCommand::Set(a)) => commands::site_set(&client(global)?, a, &p),
        Command::Site(SiteCommand::AttachStore {
            location,
            key_files,
        }) => {
            let mut keys = Vec::new();
            for f in key_files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("reading the key file {}", f.display()))?;
                keys.push(text.trim().to_string());
            }
            p.store_attached(
                &client(global)?.attach_store(&offsite_api_types::AttachStore {
                    location: location.clone(),
                    keys,
                })?,
            )
        }
        Command::Volume(cmd) => commands::volume(&client(global)?, cmd, &p),
        Command::Vm(cmd) => commands::vm(&client(global)?, cmd, &p),
        Command::Partner(cmd) => commands::partner(&client(global)?, cmd, &p),
        Command::Authz(cmd) => commands::authz(&client(global)?, cmd, &p),
        Command::Group(cmd) => commands::group(global, &client(global)?, cmd, &p),
        Command::Sync {
            group,
            pit_name,
            no_wait,
            quiesce,
        } => commands::sync(&client(global)?, group, pit_name, no_wait, quiesce, &p),
        Command::Pit(cmd) => commands::pit(&client(global)?, cmd, &p),
        Command::Verify { group } => commands::verify(&client(global)?, &group, &p),
        Command::Failover(cmd) => commands::failover(&client(global)?, cmd, &p),
        Command::Reverse {
            group,
            discard_changes_on,
            dry_run,
        } => commands::reverse(
            global,
            &client(global)?,
            &group,
            discard_changes_on,
            dry_run,
            &p,
        ),
        Command::Events { limit, follow } => commands::events(&client(global)?, limit, follow, &p),
        Command::Plan(cmd) => commands::plan(global, cmd, &p),
        Command::Demo(a) => {
            init_tracing("warn");
            demo::run(cli.global.dir.as_deref(), a.keep)
        }
    }
}

pub(crate) fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}
