//! `config.toml`: the site's name and listener addresses.
//!
//! Format: TOML with a `format_version` key (currently 1); unknown versions
//! are refused. Written once by `site init` (durably: temp file, fsync,
//! rename, fsync directory); edited by hand or by later `site set` commands.
//! TOML has no checksum: it is small, human-edited, and a parse error names
//! the line.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Current `format_version` of `config.toml`.
pub const CONFIG_FORMAT_VERSION: u32 = 1;
/// Default replication listener (TLS, mutually authenticated).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7800";
/// Default REST API address: loopback only.
pub const DEFAULT_API: &str = "127.0.0.1:7801";
/// Default NBD address: loopback only, NBD has no authentication.
pub const DEFAULT_NBD: &str = "127.0.0.1:10809";

/// Contents of `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SiteConfig {
    /// Format version of this file.
    pub format_version: u32,
    /// Site name.
    pub name: String,
    /// Replication listener (HOST:PORT; port 0 picks one).
    pub listen: String,
    /// REST API listener.
    pub api: String,
    /// NBD listener.
    pub nbd: String,
    /// Replication session tuning.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Failover tuning.
    #[serde(default)]
    pub failover: FailoverConfig,
}

/// `[failover]` in `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Seconds a VM hook may run before its process group is killed and
    /// the hook reported as failed.
    pub hook_timeout_secs: f64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            hook_timeout_secs: 300.0,
        }
    }
}

/// `[replication]` in `config.toml`: timers of the replication channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// Seconds between keepalive pings on a session.
    pub keepalive_secs: f64,
    /// A partner silent for this many seconds is declared dead and the
    /// session is re-established with backoff.
    pub dead_after_secs: f64,
    /// Seconds between reachability probes of each partner.
    pub probe_secs: f64,
    /// Seconds a TCP connect to a partner may take.
    pub connect_timeout_secs: f64,
    /// Sync groups: a batch of writes the replica has not acknowledged
    /// within this many seconds means the link is lost (the group's
    /// `--on-link-loss` policy applies). Bounds how long a write stalls
    /// before a `degrade` group carries on without its partner.
    pub sync_ack_timeout_secs: f64,
    /// Sync groups, at the replica: the write log is sealed into a PIT
    /// once it holds this many bytes, whatever the primary's seal schedule
    /// (bounds the log and the open PIT's memory).
    pub sync_log_max_bytes: u64,
    /// Seconds between an async group's scheduled cycles. Unset: half the
    /// group's RPO, at least 15 s (a cycle that finds no changed block
    /// commits nothing, so a short interval costs idle groups little).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_secs: Option<f64>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            keepalive_secs: 5.0,
            dead_after_secs: 30.0,
            probe_secs: 10.0,
            connect_timeout_secs: 10.0,
            sync_ack_timeout_secs: 5.0,
            sync_log_max_bytes: 512 << 20,
            cycle_secs: None,
        }
    }
}

impl SiteConfig {
    /// Reads and validates `config.toml`.
    pub fn load(path: &Path) -> Result<SiteConfig, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                EngineError::NotASite {
                    dir: path.parent().unwrap_or(path).to_path_buf(),
                }
            } else {
                EngineError::io("read", path, e)
            }
        })?;
        let config: SiteConfig = toml::from_str(&text).map_err(|e| EngineError::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if config.format_version != CONFIG_FORMAT_VERSION {
            return Err(EngineError::BadConfig {
                path: path.to_path_buf(),
                reason: format!(
                    "format_version {} is not supported (this offsite reads {CONFIG_FORMAT_VERSION})",
                    config.format_version
                ),
            });
        }
        let r = &config.replication;
        for (what, v) in [
            ("replication.keepalive_secs", r.keepalive_secs),
            ("replication.dead_after_secs", r.dead_after_secs),
            ("replication.probe_secs", r.probe_secs),
            ("replication.connect_timeout_secs", r.connect_timeout_secs),
            ("replication.sync_ack_timeout_secs", r.sync_ack_timeout_secs),
            ("replication.cycle_secs", r.cycle_secs.unwrap_or(1.0)),
            (
                "failover.hook_timeout_secs",
                config.failover.hook_timeout_secs,
            ),
        ] {
            if !(v.is_finite() && v > 0.0 && v <= 86_400.0) {
                return Err(EngineError::BadConfig {
                    path: path.to_path_buf(),
                    reason: format!("{what} = {v} must be between 0 and 86400 seconds"),
                });
            }
        }
        if r.sync_log_max_bytes < 1 << 20 {
            return Err(EngineError::BadConfig {
                path: path.to_path_buf(),
                reason: "replication.sync_log_max_bytes must be at least 1048576 (1 MiB)".into(),
            });
        }
        if r.dead_after_secs < 2.0 * r.keepalive_secs {
            return Err(EngineError::BadConfig {
                path: path.to_path_buf(),
                reason: "replication.dead_after_secs must be at least twice keepalive_secs".into(),
            });
        }
        for (what, addr) in [
            ("listen", &config.listen),
            ("api", &config.api),
            ("nbd", &config.nbd),
        ] {
            parse_addr(addr).map_err(|reason| EngineError::BadConfig {
                path: path.to_path_buf(),
                reason: format!("{what}: {reason}"),
            })?;
        }
        Ok(config)
    }

    /// Writes `config.toml` durably.
    pub fn save(&self, path: &Path) -> Result<(), EngineError> {
        let text = toml::to_string_pretty(self).map_err(|e| EngineError::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let text = format!(
            "# offsite site configuration. Ports set to 0 are chosen at `offsite serve`;\n\
             # the bound addresses are in run/daemon.json and `offsite site show`.\n{text}"
        );
        offsite_store::write_durably(path, text.as_bytes(), offsite_store::PRIVATE_FILE_MODE)
            .map_err(|e| EngineError::io("write", path, e))
    }
}

/// Parses HOST:PORT (IP literal or `localhost`).
pub fn parse_addr(addr: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let mut it = addr
        .to_socket_addrs()
        .map_err(|e| format!("{addr:?} is not HOST:PORT ({e})"))?;
    it.next()
        .ok_or_else(|| format!("{addr:?} resolves to no address"))
}
