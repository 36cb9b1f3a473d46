//! `config.toml`: the site's name and listener addresses, its timers, its
//! default bandwidth limit, its log filter and the TLS of the NBD and API
//! listeners.
//!
//! `offsite serve` re-reads the file on SIGHUP: the timers of
//! `[replication]` and `[failover]`, `replication.bandwidth_bytes_per_sec`
//! and `log.filter` take effect at once ([`SiteConfig::reload`]); the name
//! and the listener addresses need a restart (the listeners are bound, and
//! partners pin the name), and so do `[nbd_tls]` and `[api_tls]` (loaded
//! at start).
//!
//! Format: TOML with a `format_version` key (currently 1); unknown versions
//! are refused. Written once by `site init` (durably: temp file, fsync,
//! rename, fsync directory); edited by hand or by later `site set` commands.
//! TOML has no checksum: it is small, human-edited, and a parse error names
//! the line.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use offsite_nbd::TlsMode;

use serde::{Deserialize, Serialize};

use crate::EngineError;

/// Current `format_version` of `config.toml`.
pub const CONFIG_FORMAT_VERSION: u32 = 1;
/// Default replication listener (TLS, mutually authenticated).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7800";
/// Default REST API address: loopback only.
pub const DEFAULT_API: &str = "127.0.0.1:7801";
/// Default NBD address: loopback only, NBD without TLS has no
/// authentication (a listener elsewhere needs `[nbd_tls]`).
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
    /// Logging of `offsite serve`.
    #[serde(default)]
    pub log: LogConfig,
    /// The libvirt this site defines, starts and stops domains with.
    #[serde(default)]
    pub libvirt: LibvirtConfig,
    /// TLS on the NBD listener. Left out of the file while it has its
    /// defaults, so sites written before it read and write the same.
    #[serde(default, skip_serializing_if = "NbdTlsConfig::is_default")]
    pub nbd_tls: NbdTlsConfig,
    /// TLS on the API listener (and so the web console). Left out of the
    /// file while it has its defaults, as `nbd_tls`.
    #[serde(default, skip_serializing_if = "ApiTlsConfig::is_default")]
    pub api_tls: ApiTlsConfig,
    /// The S3 service of `s3://` storage locations (endpoint, region,
    /// credentials; see docs/operations.md). Left out of the file while
    /// empty. Reloadable: stores opened after a reload use the new values.
    #[serde(default, skip_serializing_if = "is_default_object_store")]
    pub object_store: offsite_objects::S3Settings,
}

fn is_default_object_store(s: &offsite_objects::S3Settings) -> bool {
    *s == offsite_objects::S3Settings::default()
}

/// Whether `ip` is a loopback address: 127.0.0.0/8, `::1`, or an
/// IPv4-mapped `::ffff:127.x.y.z`. The unspecified addresses (`0.0.0.0`,
/// `::`) are not: a listener there is reachable from every interface.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// `[api_tls] mode`: what the API listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApiTlsMode {
    /// Plain HTTP (the default; refused off loopback unless
    /// `allow_plaintext`).
    #[default]
    Off,
    /// HTTPS with the site's own certificate, generated once into
    /// `tls/api.crt` and `tls/api.key` and kept across restarts; clients
    /// pin its fingerprint (`site show`).
    SelfSigned,
    /// HTTPS with the operator's certificate chain and key (`cert`, `key`).
    Files,
}

impl ApiTlsMode {
    /// The name in `config.toml` and in `site show`.
    pub fn as_str(self) -> &'static str {
        match self {
            ApiTlsMode::Off => "off",
            ApiTlsMode::SelfSigned => "self-signed",
            ApiTlsMode::Files => "files",
        }
    }
}

impl std::fmt::Display for ApiTlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[api_tls]` in `config.toml`: TLS on the API listener, which also
/// serves the web console. Read at start (a change of the section waits
/// for a restart); the files of `files` mode are read again on SIGHUP, so
/// a certificate renewed in place is served without a restart.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ApiTlsConfig {
    /// `off`, `self-signed` or `files`.
    pub mode: ApiTlsMode,
    /// `files`: the certificate chain, PEM, leaf first; relative to the
    /// site directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// `files`: the certificate's private key, PEM (PKCS#8, PKCS#1 or
    /// SEC1); relative to the site directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Serve plain HTTP on an address other than loopback (a trusted
    /// network; `site init --insecure-api`). Without it `site init` and
    /// `offsite serve` refuse such a listener while `mode` is `off`.
    pub allow_plaintext: bool,
}

impl ApiTlsConfig {
    fn is_default(&self) -> bool {
        *self == ApiTlsConfig::default()
    }

    /// Whether an API listener at `addr` would be refused with this
    /// configuration: plain HTTP off loopback, unless `allow_plaintext`.
    /// The bearer token and the console's session cookie would cross the
    /// network in the clear.
    pub fn plaintext_refused(&self, addr: SocketAddr) -> bool {
        self.mode == ApiTlsMode::Off && !self.allow_plaintext && !is_loopback(addr.ip())
    }

    /// Why `offsite serve` may not start the API listener at `addr` with
    /// this configuration, if it may not ([`Self::plaintext_refused`]).
    pub fn refusal(&self, addr: SocketAddr) -> Option<String> {
        self.plaintext_refused(addr).then(|| {
            format!(
                "the API listener {addr} (config.toml `api`) is not a loopback address and \
                 [api_tls] mode is off: the API token and console sessions would cross the \
                 network in the clear. Set [api_tls] mode = \"self-signed\" (or \"files\" \
                 with cert and key; docs/operations.md, \"The web console over HTTPS\"), \
                 or set [api_tls] allow_plaintext = true to serve plain HTTP on a trusted \
                 network, or set `api` to a loopback address"
            )
        })
    }

    /// What is inconsistent in the section, if anything: `files` needs
    /// `cert` and `key`, which no other mode reads (set without `files`,
    /// they would be silently ignored).
    pub fn check(&self) -> Option<String> {
        match (self.mode, &self.cert, &self.key) {
            (ApiTlsMode::Files, Some(_), Some(_)) => None,
            (ApiTlsMode::Files, _, _) => Some(
                "[api_tls] mode is files but cert or key is not set: point cert at the \
                 certificate chain (PEM, leaf first) and key at its private key (PEM)"
                    .into(),
            ),
            (_, None, None) => None,
            (mode, _, _) => Some(format!(
                "[api_tls] cert and key are read only with mode = \"files\", but mode is \
                 {mode}: set mode = \"files\" to serve them, or remove cert and key"
            )),
        }
    }

    /// The certificate and key files of `files` mode, relative paths taken
    /// from `site_dir`.
    pub fn files(&self, site_dir: &Path) -> Option<(PathBuf, PathBuf)> {
        match (self.mode, &self.cert, &self.key) {
            (ApiTlsMode::Files, Some(c), Some(k)) => Some((site_dir.join(c), site_dir.join(k))),
            _ => None,
        }
    }
}

/// `[nbd_tls]` in `config.toml`: TLS on the NBD listener
/// (`NBD_OPT_STARTTLS`; credentials in QEMU's layout, see
/// `offsite_nbd::tls`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NbdTlsConfig {
    /// `off` (no TLS), `optional` (clients choose) or `required`; also
    /// the mode of every export that has none of its own (`volume set
    /// --nbd-tls`).
    #[serde(with = "tls_mode")]
    pub mode: TlsMode,
    /// Directory with `ca-cert.pem`, `server-cert.pem` and
    /// `server-key.pem` (QEMU's `tls-creds-x509` directory); relative to
    /// the site directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x509_dir: Option<PathBuf>,
    /// File of `identity:hexkey` lines (QEMU's `keys.psk`, `psktool`);
    /// relative to the site directory.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub psk_file: Option<PathBuf>,
    /// x509 clients must present a certificate signed by `ca-cert.pem`
    /// (QEMU's `verify-peer`, on by default).
    pub verify_peer: bool,
    /// Serve NBD without TLS on an address other than loopback (a
    /// trusted storage network). Without it `offsite serve` refuses such
    /// a listener while `mode` is `off`.
    pub allow_plaintext: bool,
}

impl Default for NbdTlsConfig {
    fn default() -> Self {
        NbdTlsConfig {
            mode: TlsMode::Off,
            x509_dir: None,
            psk_file: None,
            verify_peer: true,
            allow_plaintext: false,
        }
    }
}

impl NbdTlsConfig {
    fn is_default(&self) -> bool {
        *self == NbdTlsConfig::default()
    }

    /// The credentials, with relative paths taken from `site_dir`.
    pub fn credentials(&self, site_dir: &Path) -> offsite_nbd::TlsCredentials {
        offsite_nbd::TlsCredentials {
            x509_dir: self.x509_dir.as_ref().map(|p| site_dir.join(p)),
            psk_file: self.psk_file.as_ref().map(|p| site_dir.join(p)),
            verify_peer: self.verify_peer,
        }
    }

    /// Why `offsite serve` may not start an NBD listener at `addr` with
    /// this TLS configuration, if it may not: plain NBD off loopback needs
    /// `allow_plaintext`.
    pub fn refusal(&self, addr: std::net::SocketAddr) -> Option<String> {
        if self.mode != TlsMode::Off || addr.ip().is_loopback() || self.allow_plaintext {
            return None;
        }
        Some(format!(
            "the NBD listener {addr} (config.toml `nbd`) is not a loopback address and \
                 [nbd_tls] mode is off: NBD without TLS has no authentication, so anyone who \
                 reaches {addr} could read and write every volume. Set [nbd_tls] mode = \
                 \"required\" with x509_dir or psk_file (docs/operations.md, \"NBD over TLS\"), \
                 or set [nbd_tls] allow_plaintext = true to serve plain NBD on a trusted \
                 storage network"
        ))
    }

    /// What is inconsistent in the section, if anything: a mode other
    /// than `off` needs credentials.
    pub fn check(&self) -> Option<String> {
        if self.mode != TlsMode::Off && self.x509_dir.is_none() && self.psk_file.is_none() {
            return Some(format!(
                "[nbd_tls] mode is {} but neither x509_dir nor psk_file is set: \
                 point x509_dir at a directory with ca-cert.pem, server-cert.pem and \
                 server-key.pem, or psk_file at a keys.psk file",
                self.mode
            ));
        }
        None
    }
}

/// (De)serializes a [`TlsMode`] as its name.
mod tls_mode {
    use offsite_nbd::TlsMode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mode: &TlsMode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(mode.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TlsMode, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// `[libvirt]` in `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LibvirtConfig {
    /// The connection URI (`virsh -c`).
    pub uri: String,
    /// Seconds a domain has to shut down after the ACPI request before it
    /// is destroyed.
    pub stop_timeout_secs: f64,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        LibvirtConfig {
            uri: "qemu:///system".into(),
            stop_timeout_secs: 120.0,
        }
    }
}

/// `[log]` in `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// The daemon's log filter, in `RUST_LOG` syntax (`info`,
    /// `warn,offsite_replication=debug`, ...). `OFFSITE_LOG` or `RUST_LOG` in the
    /// daemon's environment take precedence over it.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: "info".into(),
        }
    }
}

/// `[failover]` in `config.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Seconds a VM hook may run before its process group is killed and
    /// the hook reported as failed.
    pub hook_timeout_secs: f64,
    /// Seconds a VM's quiesce or thaw hook may run (an application is held
    /// while it is quiesced, so this is short); a quiesce that outlives it
    /// is killed, its VM thawed, and the checkpoint stays crash-consistent.
    pub quiesce_timeout_secs: f64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            hook_timeout_secs: 300.0,
            quiesce_timeout_secs: 60.0,
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
    /// Continuous groups, at the primary: the bytes of writes that may be
    /// queued for the replica or sent and not yet acknowledged. Past it
    /// the queue is dropped (the change tracker still has every write)
    /// and the group resynchronizes from the tracker, so a slow or lost
    /// link costs the VM neither memory nor waiting.
    pub continuous_queue_bytes: u64,
    /// Seconds between an async group's scheduled cycles. Unset: half the
    /// group's RPO, at least 15 s (a cycle that finds no changed block
    /// commits nothing, so a short interval costs idle groups little).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_secs: Option<f64>,
    /// The site's default bandwidth limit for bulk replication traffic,
    /// bytes/s (0: unlimited). When set here, it is put in force at start
    /// and on SIGHUP as if by `site set --bandwidth`; when absent, the
    /// value of `site set --bandwidth` stands.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<u64>,
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
            continuous_queue_bytes: 64 << 20,
            cycle_secs: None,
            bandwidth_bytes_per_sec: None,
        }
    }
}

/// What a reload of `config.toml` changed, and what it could not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reload {
    /// Settings now in force, as `key: old -> new`.
    pub changed: Vec<String>,
    /// Settings that differ in the file but wait for a restart, as
    /// `key: running -> in the file`.
    pub need_restart: Vec<String>,
}

impl SiteConfig {
    /// The configuration in force after a reload that read `new`: its
    /// timers, bandwidth and log filter; the name and listener addresses of
    /// `self` (they are bound or pinned by partners, so they change only at
    /// a restart). Reports both.
    pub fn reload(&self, new: &SiteConfig) -> (SiteConfig, Reload) {
        let mut report = Reload::default();
        let mut merged = new.clone();
        for (key, running, file, kept) in [
            ("name", &self.name, &new.name, &mut merged.name),
            ("listen", &self.listen, &new.listen, &mut merged.listen),
            ("api", &self.api, &new.api, &mut merged.api),
            ("nbd", &self.nbd, &new.nbd, &mut merged.nbd),
        ] {
            if running != file {
                report
                    .need_restart
                    .push(format!("{key}: {running:?} -> {file:?}"));
                *kept = running.clone();
            }
        }
        if self.nbd_tls != new.nbd_tls {
            report
                .need_restart
                .push("nbd_tls: changed in the file".to_string());
            merged.nbd_tls = self.nbd_tls.clone();
        }
        // The listener's certificate is loaded when it is bound.
        if self.api_tls != new.api_tls {
            report
                .need_restart
                .push("api_tls: changed in the file".to_string());
            merged.api_tls = self.api_tls.clone();
        }
        let (o, n) = (&self.replication, &new.replication);
        for (key, old, new) in [
            (
                "replication.keepalive_secs",
                o.keepalive_secs,
                n.keepalive_secs,
            ),
            (
                "replication.dead_after_secs",
                o.dead_after_secs,
                n.dead_after_secs,
            ),
            ("replication.probe_secs", o.probe_secs, n.probe_secs),
            (
                "replication.connect_timeout_secs",
                o.connect_timeout_secs,
                n.connect_timeout_secs,
            ),
            (
                "replication.sync_ack_timeout_secs",
                o.sync_ack_timeout_secs,
                n.sync_ack_timeout_secs,
            ),
            (
                "failover.hook_timeout_secs",
                self.failover.hook_timeout_secs,
                new.failover.hook_timeout_secs,
            ),
            (
                "failover.quiesce_timeout_secs",
                self.failover.quiesce_timeout_secs,
                new.failover.quiesce_timeout_secs,
            ),
            (
                "libvirt.stop_timeout_secs",
                self.libvirt.stop_timeout_secs,
                new.libvirt.stop_timeout_secs,
            ),
        ] {
            if old != new {
                report.changed.push(format!("{key}: {old} -> {new}"));
            }
        }
        if o.sync_log_max_bytes != n.sync_log_max_bytes {
            report.changed.push(format!(
                "replication.sync_log_max_bytes: {} -> {}",
                o.sync_log_max_bytes, n.sync_log_max_bytes
            ));
        }
        if o.continuous_queue_bytes != n.continuous_queue_bytes {
            report.changed.push(format!(
                "replication.continuous_queue_bytes: {} -> {}",
                o.continuous_queue_bytes, n.continuous_queue_bytes
            ));
        }
        if o.cycle_secs != n.cycle_secs {
            let show = |c: Option<f64>| c.map_or("(half the RPO)".to_string(), |c| c.to_string());
            report.changed.push(format!(
                "replication.cycle_secs: {} -> {}",
                show(o.cycle_secs),
                show(n.cycle_secs)
            ));
        }
        if o.bandwidth_bytes_per_sec != n.bandwidth_bytes_per_sec {
            let show = |b: Option<u64>| match b {
                None => "(not set)".to_string(),
                Some(0) => "unlimited".to_string(),
                Some(b) => format!("{b} B/s"),
            };
            report.changed.push(format!(
                "replication.bandwidth_bytes_per_sec: {} -> {}",
                show(o.bandwidth_bytes_per_sec),
                show(n.bandwidth_bytes_per_sec)
            ));
        }
        if self.libvirt.uri != new.libvirt.uri {
            report.changed.push(format!(
                "libvirt.uri: {:?} -> {:?}",
                self.libvirt.uri, new.libvirt.uri
            ));
        }
        if self.object_store != new.object_store {
            // The secret stays out of the report (the file is named only).
            report.changed.push(
                "object_store: changed in the file (replica stores opened from now on use it)"
                    .to_string(),
            );
        }
        if self.log.filter != new.log.filter {
            report.changed.push(format!(
                "log.filter: {:?} -> {:?}",
                self.log.filter, new.log.filter
            ));
        }
        (merged, report)
    }

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
            (
                "failover.quiesce_timeout_secs",
                config.failover.quiesce_timeout_secs,
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
        if r.continuous_queue_bytes < 1 << 20 {
            return Err(EngineError::BadConfig {
                path: path.to_path_buf(),
                reason: "replication.continuous_queue_bytes must be at least 1048576 (1 MiB)"
                    .into(),
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
        if let Some(reason) = config.nbd_tls.check().or_else(|| config.api_tls.check()) {
            return Err(EngineError::BadConfig {
                path: path.to_path_buf(),
                reason,
            });
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
        offsite_volume_file::write_durably(
            path,
            text.as_bytes(),
            offsite_volume_file::PRIVATE_FILE_MODE,
        )
        .map_err(|e| EngineError::io("write", path, e))
    }
}

/// An address that is not a usable HOST:PORT.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    /// Not of the form HOST:PORT, or the host does not resolve.
    #[error("{addr:?} is not HOST:PORT ({source})")]
    Malformed {
        /// The text given.
        addr: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The host resolves to nothing.
    #[error("{0:?} resolves to no address")]
    NoAddress(String),
}

/// Parses HOST:PORT (IP literal or `localhost`).
pub fn parse_addr(addr: &str) -> Result<std::net::SocketAddr, AddrError> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let mut it = addr
        .to_socket_addrs()
        .map_err(|source| AddrError::Malformed {
            addr: addr.to_string(),
            source,
        })?;
    it.next()
        .ok_or_else(|| AddrError::NoAddress(addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SiteConfig {
        SiteConfig {
            format_version: CONFIG_FORMAT_VERSION,
            name: "a".into(),
            listen: "127.0.0.1:0".into(),
            api: "127.0.0.1:0".into(),
            nbd: "127.0.0.1:0".into(),
            replication: Default::default(),
            failover: Default::default(),
            log: Default::default(),
            nbd_tls: Default::default(),
            libvirt: Default::default(),
            api_tls: Default::default(),
            object_store: Default::default(),
        }
    }

    #[test]
    fn nbd_tls_defaults_stay_out_of_the_file_and_modes_read_by_name() {
        let text = toml::to_string_pretty(&config()).unwrap();
        assert!(!text.contains("nbd_tls"), "{text}");
        let mut with = config();
        with.nbd_tls.mode = TlsMode::Required;
        with.nbd_tls.x509_dir = Some("tls".into());
        let text = toml::to_string_pretty(&with).unwrap();
        assert!(text.contains("mode = \"required\""), "{text}");
        assert_eq!(toml::from_str::<SiteConfig>(&text).unwrap(), with);
        let bad = text.replace("\"required\"", "\"sometimes\"");
        let err = toml::from_str::<SiteConfig>(&bad).unwrap_err().to_string();
        assert!(err.contains("off, optional or required"), "{err}");
    }

    #[test]
    fn a_plain_nbd_listener_off_loopback_is_refused_unless_allowed() {
        let mut tls = NbdTlsConfig::default();
        let any: std::net::SocketAddr = "0.0.0.0:10809".parse().unwrap();
        assert_eq!(tls.refusal("127.0.0.1:10809".parse().unwrap()), None);
        assert_eq!(tls.refusal("[::1]:10809".parse().unwrap()), None);
        let reason = tls.refusal(any).unwrap();
        assert!(reason.contains("allow_plaintext"), "{reason}");
        tls.allow_plaintext = true;
        assert_eq!(tls.refusal(any), None);
        tls.mode = TlsMode::Required;
        assert_eq!(tls.refusal(any), None);
        let reason = tls.check().unwrap();
        assert!(reason.contains("x509_dir"), "{reason}");
        tls.psk_file = Some("keys.psk".into());
        assert_eq!(tls.check(), None);
    }

    #[test]
    fn loopback_is_127_8_and_ipv6_one_only() {
        for ip in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert!(is_loopback(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "0.0.0.0",
            "::",
            "192.0.2.1",
            "10.0.0.1",
            "::ffff:192.0.2.1",
            "2001:db8::1",
        ] {
            assert!(!is_loopback(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn plain_http_off_loopback_is_refused_unless_allowed_or_tls() {
        let mut tls = ApiTlsConfig::default();
        let any: SocketAddr = "0.0.0.0:7801".parse().unwrap();
        let lan: SocketAddr = "192.0.2.1:7801".parse().unwrap();
        for ok in ["127.0.0.1:7801", "[::1]:7801", "127.0.0.2:0"] {
            assert_eq!(tls.refusal(ok.parse().unwrap()), None, "{ok}");
        }
        for addr in [any, lan, "[::]:7801".parse().unwrap()] {
            let reason = tls.refusal(addr).expect("refused");
            assert!(reason.contains(&addr.to_string()), "{reason}");
            assert!(reason.contains("self-signed"), "{reason}");
            assert!(reason.contains("allow_plaintext"), "{reason}");
        }
        tls.allow_plaintext = true;
        assert_eq!(tls.refusal(any), None);
        tls.allow_plaintext = false;
        tls.mode = ApiTlsMode::SelfSigned;
        assert_eq!(tls.refusal(any), None);
    }

    #[test]
    fn api_tls_reads_by_name_stays_out_of_the_file_by_default_and_checks_its_files() {
        let text = toml::to_string_pretty(&config()).unwrap();
        assert!(!text.contains("api_tls"), "{text}");
        let read = |section: &str| {
            let text = format!("{}\n{section}", toml::to_string_pretty(&config()).unwrap());
            toml::from_str::<SiteConfig>(&text).map(|c| c.api_tls)
        };
        let tls = read("[api_tls]\nmode = \"self-signed\"").unwrap();
        assert_eq!(tls.mode, ApiTlsMode::SelfSigned);
        assert_eq!(tls.check(), None);
        let tls = read("[api_tls]\nmode = \"files\"\ncert = \"c.pem\"\nkey = \"/k.pem\"").unwrap();
        assert_eq!(tls.check(), None);
        assert_eq!(
            tls.files(Path::new("/site")),
            Some(("/site/c.pem".into(), "/k.pem".into()))
        );
        let tls = read("[api_tls]\nallow_plaintext = true").unwrap();
        assert_eq!(tls.mode, ApiTlsMode::Off);
        assert!(tls.allow_plaintext);
        let err = read("[api_tls]\nmode = \"on\"").unwrap_err().to_string();
        assert!(err.contains("self-signed"), "{err}");
        let err = read("[api_tls]\nmode = \"off\"\ncertificate = \"c\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("certificate"), "{err}");

        let files_without_key = read("[api_tls]\nmode = \"files\"\ncert = \"c.pem\"").unwrap();
        let reason = files_without_key.check().expect("refused");
        assert!(reason.contains("key"), "{reason}");
        let cert_without_files = read("[api_tls]\ncert = \"c.pem\"\nkey = \"k.pem\"").unwrap();
        let reason = cert_without_files.check().expect("refused");
        assert!(reason.contains("mode = \"files\""), "{reason}");

        let mut with = config();
        with.api_tls.mode = ApiTlsMode::Files;
        with.api_tls.cert = Some("c.pem".into());
        with.api_tls.key = Some("k.pem".into());
        let text = toml::to_string_pretty(&with).unwrap();
        assert!(text.contains("[api_tls]\nmode = \"files\""), "{text}");
        assert_eq!(toml::from_str::<SiteConfig>(&text).unwrap(), with);
    }

    #[test]
    fn a_changed_api_tls_waits_for_a_restart() {
        let running = config();
        let mut file = config();
        file.api_tls.mode = ApiTlsMode::SelfSigned;
        let (merged, report) = running.reload(&file);
        assert_eq!(merged.api_tls, running.api_tls);
        assert_eq!(
            report.need_restart,
            vec!["api_tls: changed in the file".to_string()]
        );
    }

    #[test]
    fn load_refuses_inconsistent_api_tls_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        let mut c = config();
        c.api_tls.mode = ApiTlsMode::Files;
        c.save(&path).unwrap();
        let err = SiteConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("config.toml") && err.contains("cert or key"),
            "{err}"
        );
    }

    #[test]
    fn object_store_settings_round_trip_stay_out_while_empty_and_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("config.toml");
        let running = config();
        running.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("object_store"), "{text}");
        let mut file = config();
        file.object_store.endpoint = Some("http://127.0.0.1:3900".into());
        file.object_store.alternate_endpoints = vec!["http://127.0.0.1:3910".into()];
        file.object_store.secret_access_key_file = Some("s3.secret".into());
        file.save(&path).unwrap();
        assert_eq!(SiteConfig::load(&path).unwrap(), file);
        let (merged, report) = running.reload(&file);
        assert_eq!(merged.object_store, file.object_store);
        assert_eq!(report.changed.len(), 1, "{report:?}");
        assert!(
            report.changed[0].starts_with("object_store: "),
            "{report:?}"
        );
        assert!(!report.changed[0].contains("s3.secret"), "{report:?}");
    }

    #[test]
    fn reload_takes_timers_bandwidth_and_log_but_keeps_name_and_addresses() {
        let running = config();
        let mut file = config();
        file.name = "b".into();
        file.api = "127.0.0.1:9999".into();
        file.replication.keepalive_secs = 1.0;
        file.replication.bandwidth_bytes_per_sec = Some(1 << 20);
        file.failover.hook_timeout_secs = 9.0;
        file.failover.quiesce_timeout_secs = 10.0;
        file.log.filter = "debug".into();
        let (merged, report) = running.reload(&file);
        assert_eq!(merged.name, "a");
        assert_eq!(merged.api, "127.0.0.1:0");
        assert_eq!(merged.replication.keepalive_secs, 1.0);
        assert_eq!(merged.replication.bandwidth_bytes_per_sec, Some(1 << 20));
        assert_eq!(merged.failover.hook_timeout_secs, 9.0);
        assert_eq!(merged.failover.quiesce_timeout_secs, 10.0);
        assert_eq!(merged.log.filter, "debug");
        assert_eq!(report.need_restart.len(), 2, "{report:?}");
        assert!(report.need_restart[0].starts_with("name:"), "{report:?}");
        assert_eq!(report.changed.len(), 5, "{report:?}");
        assert!(
            report
                .changed
                .contains(&"replication.keepalive_secs: 5 -> 1".to_string()),
            "{report:?}"
        );
        let (_, nothing) = running.reload(&running);
        assert_eq!(nothing, Reload::default());
    }
}
