//! Client of a site's REST API, used by the CLI.
//!
//! A site is reached either through its data directory (`--dir DIR`: the
//! API address comes from `DIR/run/daemon.json`, written by the running
//! daemon with the ports it actually bound, and the token from
//! `DIR/api.token`) or through an explicit URL and token file.
//!
//! HTTPS ([`tls`]): an `https://` URL's certificate is checked as
//! [`Trust`] says — public CAs, a CA file, or a pinned fingerprint. Through
//! the data directory, a site serving HTTPS is reached with the fingerprint
//! its daemon recorded in `run/daemon.json` pinned, so local use needs no
//! flag even with a self-signed certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite_api_types::{
    API_PREFIX, AddAuthz, AddPartner, ApiError, AuthzEntry, CreateVolume, Event, PartnerInfo,
    SiteInfo, SiteSettings, UpdateSiteSettings, VolumeInfo, VolumeUrl,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub mod tls;

pub use tls::{Fingerprint, InvalidFingerprint, TlsRefusal, Trust};

/// Client errors; each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon runs for this directory.
    #[error("no running site at {}: start it with `offsite serve --dir {}`", dir.display(), dir.display())]
    NotRunning {
        /// The data directory.
        dir: PathBuf,
    },
    /// The directory is not a site.
    #[error("{} is not an offsite data directory; create one with `offsite site init --dir {} --name NAME`", dir.display(), dir.display())]
    NotASite {
        /// The directory.
        dir: PathBuf,
    },
    /// Neither `--dir` nor `--url` was given.
    #[error("which site? pass --dir DIR (or set OFFSITE_DIR), or --url URL --token-file FILE")]
    NoSite,
    /// Reading a local file failed.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The site could not be reached.
    #[error("cannot reach the site API at {url}: {reason}; is `offsite serve` running?")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The TLS connection to the site was refused (an untrusted or
    /// unexpected certificate) or failed.
    #[error("no secure connection to the site API at {url}: {refusal}")]
    Tls {
        /// The URL.
        url: String,
        /// Why, and what to do.
        refusal: TlsRefusal,
    },
    /// `--ca-file` could not be used.
    #[error(transparent)]
    CaFile(#[from] tls::CaFileError),
    /// A certificate check was asked for a plain HTTP URL.
    #[error(
        "--api-fingerprint and --ca-file check the certificate of a site's HTTPS API, but {url} is plain HTTP; use the site's https:// URL (`offsite site show` at the site prints it as api url)"
    )]
    TrustWithoutTls {
        /// The URL.
        url: String,
    },
    /// The site answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// Message from the site.
        message: String,
    },
    /// The site's answer could not be parsed.
    #[error("unexpected answer from the site API ({0}); are the CLI and daemon the same version?")]
    Protocol(String),
}

/// A connection to one site's API.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

/// What `run/daemon.json` holds.
#[derive(Debug, Clone, serde::Deserialize, Serialize)]
pub struct DaemonInfo {
    /// Daemon pid.
    pub pid: u32,
    /// Bound API address.
    pub api: String,
    /// `http` or `https` (absent: written before the API served HTTPS,
    /// so `http`).
    #[serde(default)]
    pub api_scheme: Option<String>,
    /// The fingerprint of the certificate the API serves over HTTPS.
    #[serde(default)]
    pub api_fingerprint: Option<String>,
    /// Bound NBD address.
    pub nbd: String,
    /// Bound replication address.
    pub listen: String,
}

impl Client {
    /// A client for the site whose data directory is `dir`.
    pub fn for_dir(dir: &Path) -> Result<Client, ClientError> {
        if !dir.join("config.toml").exists() {
            return Err(ClientError::NotASite {
                dir: dir.to_path_buf(),
            });
        }
        let info_path = dir.join("run").join("daemon.json");
        let text = match std::fs::read_to_string(&info_path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ClientError::NotRunning {
                    dir: dir.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(ClientError::Read {
                    path: info_path,
                    source,
                });
            }
        };
        let info: DaemonInfo = serde_json::from_str(&text)
            .map_err(|e| ClientError::Protocol(format!("{}: {e}", info_path.display())))?;
        let token_path = dir.join("api.token");
        let (url, trust) = match info.api_scheme.as_deref() {
            Some("https") => {
                // The daemon wrote the fingerprint of exactly the
                // certificate it serves: pinned, the site's own
                // self-signed one needs no CA, and no other will do.
                let fingerprint = info
                    .api_fingerprint
                    .as_deref()
                    .unwrap_or_default()
                    .parse::<Fingerprint>()
                    .map_err(|e| ClientError::Protocol(format!("{}: {e}", info_path.display())))?;
                (
                    format!("https://{}", info.api),
                    Trust::Fingerprint(fingerprint),
                )
            }
            _ => (format!("http://{}", info.api), Trust::default()),
        };
        let client = Client::new(&url, &token_path, &trust)?;
        // A daemon killed with -9 leaves daemon.json behind: tell the user
        // the site is down, not that the network failed.
        match client.site() {
            Err(ClientError::Unreachable { .. }) => Err(ClientError::NotRunning {
                dir: dir.to_path_buf(),
            }),
            _ => Ok(client),
        }
    }

    /// A client for the API at `url` with the token in `token_file`; an
    /// `https://` URL's certificate is checked as `trust` says (any other
    /// trust than the default needs an `https://` URL).
    pub fn new(url: &str, token_file: &Path, trust: &Trust) -> Result<Client, ClientError> {
        let https = url
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
        if !https && *trust != Trust::default() {
            return Err(ClientError::TrustWithoutTls {
                url: url.to_string(),
            });
        }
        let token = std::fs::read_to_string(token_file).map_err(|source| ClientError::Read {
            path: token_file.to_path_buf(),
            source,
        })?;
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build();
        let agent = if https {
            use ureq::unversioned::transport::{ConnectProxyConnector, Connector, TcpConnector};
            // ureq's default chain without its own TLS (see `tls`).
            let connector =
                ().chain(ConnectProxyConnector::default())
                    .chain(TcpConnector::default())
                    .chain(tls::TlsConnector::new(tls::client_config(trust)?));
            ureq::Agent::with_parts(
                config,
                connector,
                ureq::unversioned::resolver::DefaultResolver::default(),
            )
        } else {
            config.new_agent()
        };
        Ok(Client {
            base: url.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
            agent,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    fn finish<T: DeserializeOwned>(
        &self,
        url: &str,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<T, ClientError> {
        let mut resp = r.map_err(|e| match e {
            ureq::Error::Other(inner) => match inner.downcast::<TlsRefusal>() {
                Ok(refusal) => ClientError::Tls {
                    url: url.to_string(),
                    refusal: *refusal,
                },
                Err(inner) => ClientError::Unreachable {
                    url: url.to_string(),
                    reason: inner.to_string(),
                },
            },
            e => ClientError::Unreachable {
                url: url.to_string(),
                reason: e.to_string(),
            },
        })?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        if (200..300).contains(&status) {
            serde_json::from_str(&body).map_err(|e| ClientError::Protocol(e.to_string()))
        } else {
            match serde_json::from_str::<ApiError>(&body) {
                Ok(e) => Err(ClientError::Api {
                    status,
                    code: e.code,
                    message: e.message,
                }),
                Err(_) => Err(ClientError::Api {
                    status,
                    code: "http".into(),
                    message: format!("the site answered HTTP {status}: {body}"),
                }),
            }
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let r = self
            .agent
            .get(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.finish(&url, r)
    }

    fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let url = self.url(path);
        let r = self
            .agent
            .delete(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .call();
        self.finish(&url, r)
    }

    fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let r = self
            .agent
            .post(&url)
            .header("Authorization", &format!("Bearer {}", self.token))
            .send_json(body);
        self.finish(&url, r)
    }

    fn send<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let url = self.url(path);
        let json = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(json)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let r = self.agent.run(req);
        self.finish(&url, r)
    }

    /// `GET /site`.
    pub fn site(&self) -> Result<SiteInfo, ClientError> {
        self.get("/site")
    }

    /// `GET /volumes`.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>, ClientError> {
        self.get("/volumes")
    }

    /// `GET /volumes/{name}`.
    pub fn volume(&self, name: &str) -> Result<VolumeInfo, ClientError> {
        self.get(&format!("/volumes/{}", encode(name)))
    }

    /// `POST /volumes`.
    pub fn create_volume(&self, req: &CreateVolume) -> Result<VolumeInfo, ClientError> {
        self.post("/volumes", req)
    }

    /// `DELETE /volumes/{name}`.
    pub fn delete_volume(&self, name: &str) -> Result<VolumeUrl, ClientError> {
        self.delete(&format!("/volumes/{}", encode(name)))
    }

    /// `GET /volumes/{name}/url`.
    pub fn volume_url(&self, name: &str) -> Result<VolumeUrl, ClientError> {
        self.get(&format!("/volumes/{}/url", encode(name)))
    }

    /// `POST /volumes/{name}/clear-dirty[?force=true]`.
    pub fn clear_dirty(&self, name: &str, force: bool) -> Result<VolumeInfo, ClientError> {
        let query = if force { "?force=true" } else { "" };
        self.post(
            &format!("/volumes/{}/clear-dirty{query}", encode(name)),
            &(),
        )
    }

    /// `POST /volumes/{name}/nbd-tls`: the volume's own NBD TLS mode
    /// (`off`, `optional`, `required`; `None`: the listener's).
    pub fn set_volume_nbd_tls(
        &self,
        name: &str,
        mode: Option<&str>,
    ) -> Result<VolumeInfo, ClientError> {
        self.post(
            &format!("/volumes/{}/nbd-tls", encode(name)),
            &offsite_api_types::SetVolumeNbdTls {
                mode: mode.map(str::to_string),
            },
        )
    }

    /// `GET /site/settings`.
    pub fn settings(&self) -> Result<SiteSettings, ClientError> {
        self.get("/site/settings")
    }

    /// `PATCH /site/settings`.
    pub fn update_settings(&self, req: &UpdateSiteSettings) -> Result<SiteSettings, ClientError> {
        self.send("PATCH", "/site/settings", req)
    }

    /// `GET /partners`.
    pub fn partners(&self) -> Result<Vec<PartnerInfo>, ClientError> {
        self.get("/partners")
    }

    /// `POST /partners`.
    pub fn add_partner(&self, req: &AddPartner) -> Result<PartnerInfo, ClientError> {
        self.post("/partners", req)
    }

    /// `PATCH /partners/{name}`.
    pub fn update_partner(&self, name: &str, address: &str) -> Result<PartnerInfo, ClientError> {
        self.send(
            "PATCH",
            &format!("/partners/{}", encode(name)),
            &offsite_api_types::UpdatePartner {
                address: address.to_string(),
            },
        )
    }

    /// `POST /site/attach-store`.
    pub fn attach_store(
        &self,
        req: &offsite_api_types::AttachStore,
    ) -> Result<offsite_api_types::StoreAttached, ClientError> {
        self.send("POST", "/site/attach-store", req)
    }

    /// `POST /partners/{name}/replace`.
    pub fn replace_partner(
        &self,
        name: &str,
        req: &offsite_api_types::ReplacePartner,
    ) -> Result<offsite_api_types::PartnerReplaced, ClientError> {
        self.send("POST", &format!("/partners/{}/replace", encode(name)), req)
    }

    /// `DELETE /partners/{name}`.
    pub fn remove_partner(&self, name: &str) -> Result<PartnerInfo, ClientError> {
        self.delete(&format!("/partners/{}", encode(name)))
    }

    /// `POST /partners/{name}/test`.
    pub fn partner_test(
        &self,
        name: &str,
        req: &offsite_api_types::PartnerTestRequest,
    ) -> Result<offsite_api_types::PartnerTestResult, ClientError> {
        self.post(&format!("/partners/{}/test", encode(name)), req)
    }

    /// `POST /partners/{name}/authz-check`.
    pub fn authz_check(
        &self,
        name: &str,
        req: &offsite_api_types::AuthzCheckRequest,
    ) -> Result<offsite_api_types::AuthzCheckResult, ClientError> {
        self.post(&format!("/partners/{}/authz-check", encode(name)), req)
    }

    /// `GET /authz`.
    pub fn authz_entries(&self) -> Result<Vec<AuthzEntry>, ClientError> {
        self.get("/authz")
    }

    /// `POST /authz`.
    pub fn add_authz(&self, req: &AddAuthz) -> Result<AuthzEntry, ClientError> {
        self.post("/authz", req)
    }

    /// `DELETE /authz/{pattern}`.
    pub fn remove_authz(&self, pattern: &str) -> Result<AuthzEntry, ClientError> {
        self.delete(&format!("/authz/{}", encode(pattern)))
    }

    /// `GET /vms`.
    pub fn vms(&self) -> Result<Vec<offsite_api_types::VmInfo>, ClientError> {
        self.get("/vms")
    }

    /// `GET /vms/{name}`.
    pub fn vm(&self, name: &str) -> Result<offsite_api_types::VmInfo, ClientError> {
        self.get(&format!("/vms/{}", encode(name)))
    }

    /// `POST /vms`.
    pub fn create_vm(
        &self,
        req: &offsite_api_types::CreateVm,
    ) -> Result<offsite_api_types::VmInfo, ClientError> {
        self.post("/vms", req)
    }

    /// `PATCH /vms/{name}` (`vm set`).
    pub fn set_vm(
        &self,
        name: &str,
        req: &offsite_api_types::SetVm,
    ) -> Result<offsite_api_types::VmInfo, ClientError> {
        self.send("PATCH", &format!("/vms/{}", encode(name)), req)
    }

    /// `DELETE /vms/{name}`.
    pub fn delete_vm(&self, name: &str) -> Result<offsite_api_types::VmInfo, ClientError> {
        self.delete(&format!("/vms/{}", encode(name)))
    }

    /// `GET /groups`.
    pub fn groups(&self) -> Result<Vec<offsite_api_types::GroupStatus>, ClientError> {
        self.get("/groups")
    }

    /// `POST /groups`.
    pub fn create_group(
        &self,
        req: &offsite_api_types::CreateGroup,
    ) -> Result<offsite_api_types::GroupStatus, ClientError> {
        self.post("/groups", req)
    }

    /// `GET /groups/{name}`.
    pub fn group(&self, name: &str) -> Result<offsite_api_types::GroupStatus, ClientError> {
        self.get(&format!("/groups/{}", encode(name)))
    }

    /// `POST /groups/{name}/ACTION` with `body`.
    pub fn group_action<B: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        action: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.post(&format!("/groups/{}/{action}", encode(name)), body)
    }

    /// `GET /groups/{name}/measure`.
    pub fn group_measure(
        &self,
        name: &str,
    ) -> Result<offsite_api_types::GroupMeasure, ClientError> {
        self.get(&format!("/groups/{}/measure", encode(name)))
    }

    /// `POST /groups/{name}/resync`: compares every block with the
    /// replica and ships the differing ones; waits for the end.
    pub fn resync(&self, name: &str) -> Result<offsite_api_types::ResyncResult, ClientError> {
        self.post(&format!("/groups/{}/resync", encode(name)), &())
    }

    /// `POST /groups/{name}/unfence[?force=true]`.
    pub fn unfence(
        &self,
        name: &str,
        force: bool,
    ) -> Result<offsite_api_types::GroupStatus, ClientError> {
        let query = if force { "?force=true" } else { "" };
        self.post(&format!("/groups/{}/unfence{query}", encode(name)), &())
    }

    /// `DELETE /groups/{name}` (teardown): `force` tears down this side
    /// although the partner cannot be reached; `delete_replica` has the
    /// replica delete its store instead of keeping it aside.
    pub fn teardown(
        &self,
        name: &str,
        force: bool,
        delete_replica: bool,
    ) -> Result<offsite_api_types::GroupStatus, ClientError> {
        let mut query = Vec::new();
        if force {
            query.push("force=true");
        }
        if delete_replica {
            query.push("delete_replica=true");
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        self.delete(&format!("/groups/{}{query}", encode(name)))
    }

    /// `POST /groups/{name}/set` (`group set`).
    pub fn set_group(
        &self,
        name: &str,
        req: &offsite_api_types::SetGroup,
    ) -> Result<offsite_api_types::GroupStatus, ClientError> {
        self.group_action(name, "set", req)
    }

    /// `POST /groups/{name}/pits/{pit}/export`.
    pub fn pit_export(
        &self,
        name: &str,
        pit: &str,
    ) -> Result<offsite_api_types::PitExport, ClientError> {
        self.post(
            &format!("/groups/{}/pits/{}/export", encode(name), encode(pit)),
            &(),
        )
    }

    /// `POST /groups/{name}/pits/export`: the newest consistent point at
    /// or before `at` (RFC 3339), served read-only.
    pub fn pit_export_at(
        &self,
        name: &str,
        at: &str,
    ) -> Result<offsite_api_types::PitExport, ClientError> {
        self.post(
            &format!("/groups/{}/pits/export", encode(name)),
            &offsite_api_types::PitExportAt { at: at.to_string() },
        )
    }

    /// `POST /groups/{name}/pits/check`.
    pub fn pit_check(&self, name: &str) -> Result<offsite_api_types::PitCheck, ClientError> {
        self.post(&format!("/groups/{}/pits/check", encode(name)), &())
    }

    /// `GET /groups/{name}/key`: the group's key (a secret).
    pub fn group_key_export(
        &self,
        name: &str,
    ) -> Result<offsite_api_types::GroupKeyExport, ClientError> {
        self.get(&format!("/groups/{}/key", encode(name)))
    }

    /// `POST /groups/{name}/key`: keep `key` (an export line) as the
    /// group's key.
    pub fn group_key_import(
        &self,
        name: &str,
        key: &str,
    ) -> Result<offsite_api_types::GroupKeyInfo, ClientError> {
        self.post(
            &format!("/groups/{}/key", encode(name)),
            &offsite_api_types::ImportGroupKey {
                key: key.to_string(),
            },
        )
    }

    /// `POST /groups/{name}/pits/{pit}/release`.
    pub fn pit_release(
        &self,
        name: &str,
        pit: &str,
    ) -> Result<Vec<offsite_api_types::PitEntry>, ClientError> {
        self.post(
            &format!("/groups/{}/pits/{}/release", encode(name), encode(pit)),
            &(),
        )
    }

    /// `GET /groups/{name}/pits`.
    pub fn pits(&self, name: &str) -> Result<Vec<offsite_api_types::PitEntry>, ClientError> {
        self.get(&format!("/groups/{}/pits", encode(name)))
    }

    /// `GET /groups/{name}/checkpoints` (`all`: every checkpoint, not
    /// only the summary).
    pub fn checkpoints(
        &self,
        name: &str,
        all: bool,
    ) -> Result<offsite_api_types::JournalListing, ClientError> {
        let q = if all { "?all=true" } else { "" };
        self.get(&format!("/groups/{}/checkpoints{q}", encode(name)))
    }

    /// `GET /plans`.
    pub fn plans(&self) -> Result<Vec<offsite_api_types::PlanInfo>, ClientError> {
        self.get("/plans")
    }

    /// `POST /plans`.
    pub fn create_plan(
        &self,
        req: &offsite_api_types::CreatePlan,
    ) -> Result<offsite_api_types::PlanInfo, ClientError> {
        self.post("/plans", req)
    }

    /// `GET /plans/{name}`.
    pub fn plan(&self, name: &str) -> Result<offsite_api_types::PlanInfo, ClientError> {
        self.get(&format!("/plans/{}", encode(name)))
    }

    /// `DELETE /plans/{name}`.
    pub fn delete_plan(&self, name: &str) -> Result<offsite_api_types::PlanInfo, ClientError> {
        self.delete(&format!("/plans/{}", encode(name)))
    }

    /// `DELETE /plans/{name}/groups/{group}` (`plan remove-group`).
    pub fn plan_remove_group(
        &self,
        name: &str,
        group: &str,
    ) -> Result<offsite_api_types::PlanInfo, ClientError> {
        self.delete(&format!("/plans/{}/groups/{}", encode(name), encode(group)))
    }

    /// `DELETE /plans/{name}/steps/{step}` (`plan remove-step`).
    pub fn plan_remove_step(
        &self,
        name: &str,
        step: &str,
    ) -> Result<offsite_api_types::PlanInfo, ClientError> {
        self.delete(&format!("/plans/{}/steps/{}", encode(name), encode(step)))
    }

    /// `POST /plans/{name}/ACTION` with `body` (`groups`, `priorities`,
    /// `steps`, `run`, `continue`).
    pub fn plan_action<B: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        action: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.post(&format!("/plans/{}/{action}", encode(name)), body)
    }

    /// `GET /plans/{name}/runs`.
    pub fn plan_history(
        &self,
        name: &str,
    ) -> Result<Vec<offsite_api_types::PlanRunSummary>, ClientError> {
        self.get(&format!("/plans/{}/runs", encode(name)))
    }

    /// `GET /plan-runs/{id}`.
    pub fn plan_report(&self, id: &str) -> Result<offsite_api_types::PlanRunReport, ClientError> {
        self.get(&format!("/plan-runs/{}", encode(id)))
    }

    /// `GET /events`.
    pub fn events(&self, limit: u32) -> Result<Vec<Event>, ClientError> {
        self.get(&format!("/events?limit={limit}"))
    }
}

/// Percent-encodes a path segment (names are restricted, but a user may
/// type anything and deserves a "no such volume", not a routing error).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
