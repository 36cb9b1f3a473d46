//! The log of `offsite serve` (and of the CLI's own diagnostics).
//!
//! The filter (`RUST_LOG` syntax) comes from, in order: `OFFSITE_LOG`,
//! `RUST_LOG`, then `log.filter` of `config.toml` (default `info`). The
//! environment wins because it is the per-run override (`RUST_LOG=debug
//! offsite serve ...` while investigating); `OFFSITE_LOG` before `RUST_LOG`
//! so that a `RUST_LOG` meant for other programs in the same environment
//! can be overridden for offsite alone. The filter sits in a
//! `tracing_subscriber::reload` layer, so SIGHUP can put a changed
//! `log.filter` in force without a restart (unless the environment set
//! the filter: then it stays, and the reload says so).
//!
//! Lines go to stderr (the journal, under systemd) as text, or as one JSON
//! object per line with `--log-format json`.

use std::io::IsTerminal;
use std::sync::Mutex;

use anyhow::bail;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

/// The environment variables that set the filter, strongest first.
pub const FILTER_VARS: [&str; 2] = ["OFFSITE_LOG", "RUST_LOG"];

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (with colours on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`,
    /// `message` and the event's fields at the top level.
    Json,
}

/// The filter set by the environment, if any: `(variable, value)`. An
/// empty variable counts as unset.
pub fn env_filter() -> Option<(&'static str, String)> {
    FILTER_VARS.iter().find_map(|var| {
        std::env::var(var)
            .ok()
            .filter(|v| !v.trim().is_empty())
            .map(|v| (*var, v))
    })
}

/// Parses a filter, with an error that says where it came from and what a
/// valid one looks like.
pub fn parse_filter(source: &str, filter: &str) -> anyhow::Result<EnvFilter> {
    match EnvFilter::builder().parse(filter) {
        Ok(f) => Ok(f),
        Err(e) => bail!(
            "{source} = {filter:?} is not a valid log filter ({e}); use RUST_LOG syntax, e.g. `info` or `warn,offsite_replication=debug`"
        ),
    }
}

/// The installed log, with the handle that changes its filter.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// The environment variable that set the filter, if one did.
    env: Option<&'static str>,
    /// The filter in force, as text.
    current: Mutex<String>,
}

impl std::fmt::Debug for Logging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logging")
            .field("env", &self.env)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// What [`Logging::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterReload {
    /// The filter was already in force.
    Unchanged,
    /// The filter changed from the first to the second.
    Changed(String, String),
    /// The environment variable set the filter; `config.toml` does not
    /// override it.
    SetByEnvironment(&'static str, String),
}

impl Logging {
    /// Installs the global subscriber: the environment's filter if set,
    /// else `config_filter`. Fails on an invalid filter (the daemon must
    /// not start logging less, or more, than the operator asked for) or if
    /// a subscriber is already installed.
    pub fn install(format: LogFormat, config_filter: &str) -> anyhow::Result<Logging> {
        let (env, text) = match env_filter() {
            Some((var, value)) => (Some(var), value),
            None => (None, config_filter.to_string()),
        };
        let filter = parse_filter(env.unwrap_or("config.toml log.filter"), &text)?;
        let (filter, handle) = reload::Layer::new(filter);
        let ansi = std::io::stderr().is_terminal();
        let output = match format {
            LogFormat::Text => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(std::io::stderr)
                .boxed(),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(output)
            .try_init()?;
        Ok(Logging {
            handle,
            env,
            current: Mutex::new(text),
        })
    }

    /// Puts `config_filter` (a reloaded `log.filter`) in force, unless the
    /// environment set the filter. On an invalid filter the old one stays
    /// and the error says why.
    pub fn reload(&self, config_filter: &str) -> anyhow::Result<FilterReload> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(var) = self.env {
            return Ok(FilterReload::SetByEnvironment(var, current.clone()));
        }
        if *current == config_filter {
            return Ok(FilterReload::Unchanged);
        }
        let filter = parse_filter("config.toml log.filter", config_filter)?;
        self.handle.reload(filter)?;
        let old = std::mem::replace(&mut *current, config_filter.to_string());
        Ok(FilterReload::Changed(old, config_filter.to_string()))
    }
}

/// The log of CLI commands other than `serve`: the environment's filter or
/// `default`, text on stderr. An invalid filter in the environment is
/// reported and the default used: a client command should not fail because
/// of a variable meant for the daemon.
pub fn install_for_cli(default: &str) {
    let filter = match env_filter() {
        Some((var, value)) => parse_filter(var, &value).unwrap_or_else(|e| {
            eprintln!("warning: {e:#}; using {default:?}");
            EnvFilter::new(default)
        }),
        None => EnvFilter::new(default),
    };
    // Fails only when a subscriber is already installed (tests that start
    // several daemons in one process): that one keeps logging.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
