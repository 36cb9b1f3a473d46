//! [`S3Store`]: an object store in a bucket of an S3-compatible service
//! (Garage, AWS S3, MinIO, Ceph RGW, ...).
//!
//! Requests are signed with `rusty-s3` (AWS signature v4 in the query
//! string, no I/O of its own) and sent with `ureq` (blocking), so the store
//! needs no async runtime and works on the replica store's own threads.
//!
//! | operation      | requests                                                                          |
//! |----------------|-----------------------------------------------------------------------------------|
//! | `put`          | one `PUT` with `Content-MD5` (the service checks the bytes it got)                  |
//! | `put_from`     | a `PUT` up to [`S3Config::part_size`]; above, a multipart upload of parts of that size (each with `Content-MD5`, four at a time), completed last; any error aborts it, so an incomplete object is never visible |
//! | `get`          | `GET`                                                                             |
//! | `get_range`    | `GET` with `Range: bytes=A-B`, hedged up to 512 KiB: sent again to the other endpoints when the first has not completed within 10 ms (+10 ms per MiB); a 416 or a short answer is [`ObjectError::ShortObject`] |
//! | `head`         | `HEAD`                                                                            |
//! | `list`         | `ListObjectsV2`, following continuation tokens (1000 keys a page)                 |
//! | `delete`       | `DELETE` (S3 answers 204 for a missing key too)                                   |
//!
//! Failures: a connection error, a timeout, HTTP 5xx, 429 or 408 is retried,
//! first on each of [`S3Config::alternate_endpoints`] in turn (the other
//! nodes of a cluster), then with exponential backoff (100 ms doubling to
//! 2 s) for at most
//! [`S3Config::retry_for`] (30 s by default), then the call fails with
//! [`ObjectError::Unavailable`] naming the endpoint and the last failure.
//! 404 is [`ObjectError::NotFound`] (except a missing bucket); any other
//! 4xx is [`ObjectError::Refused`] with the service's error code and
//! message, and is not retried. Every request body is a buffer in memory
//! (a part at most), so a retried request sends the same bytes again.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rusty_s3::actions::{
    CompleteMultipartUploadResponse, CreateMultipartUpload, ListObjectsV2, S3Action,
};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use ureq::unversioned::resolver::DefaultResolver;
use ureq::unversioned::transport::{ConnectProxyConnector, Connector, RustlsConnector};

use crate::quick_ack::QuickAckConnector;
use crate::{ObjectError, ObjectInfo, ObjectStore, check_key};

/// How long a signed request stays valid (it is sent at once; this only
/// has to outlast a slow upload of one part).
const SIGN_FOR: Duration = Duration::from_secs(3600);
/// Default size of a multipart upload's parts, and the largest object
/// written with a single `PUT`.
pub const DEFAULT_PART_SIZE: u64 = 16 << 20;
/// Parts of one multipart upload sent at once.
const PARALLEL_PARTS: usize = 4;
/// S3's smallest part (all but the last).
const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest number of parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Default bound on the retries of one call.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(30);
/// First pause between attempts; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Connecting (and resolving the endpoint's name) must succeed within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Each read or write on the connection must progress within this.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// A ranged GET not completed after this long is sent again to the other
/// endpoints (see `S3Store::get_range_hedged`): above a healthy GET's latency
/// on a local network (2–4 ms on loopback), below a stalled one's (40 ms).
const HEDGE_AFTER: Duration = Duration::from_millis(10);
/// ... plus this long per MiB asked (transfer time, ~100 MB/s).
const HEDGE_PER_MIB: Duration = Duration::from_millis(10);
/// Only ranged GETs up to this long are hedged: the reads someone waits
/// for (a cold read fetches one 256 KiB window of the replica store's
/// cache). Longer ones are bulk (read-ahead, hydration), whose latency
/// matters less than the load a second request adds.
const HEDGE_MAX_LEN: u64 = 512 << 10;

/// How object URLs name the bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3UrlStyle {
    /// `ENDPOINT/BUCKET/KEY`: Garage, MinIO, Ceph RGW and most
    /// self-hosted services (the default).
    #[default]
    Path,
    /// `BUCKET.ENDPOINT-HOST/KEY`: AWS S3's preferred style (AWS accepts
    /// path style too for existing buckets, but recommends this one).
    VirtualHost,
}

impl S3UrlStyle {
    /// Parses `path` or `virtual-host` (the site configuration's words).
    pub fn parse(text: &str) -> Option<S3UrlStyle> {
        match text {
            "path" => Some(S3UrlStyle::Path),
            "virtual-host" => Some(S3UrlStyle::VirtualHost),
            _ => None,
        }
    }

    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            S3UrlStyle::Path => "path",
            S3UrlStyle::VirtualHost => "virtual-host",
        }
    }
}

/// The site's object-store settings (`[object_store]` in `config.toml`);
/// every field is optional, and what is missing comes from the usual
/// environment variables ([`S3Config::from_settings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Settings {
    /// `endpoint`: the service's URL, `http(s)://HOST[:PORT]`
    /// (else `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// `alternate_endpoints`: other addresses of the same service (the
    /// other nodes of a Garage cluster), tried in turn when one does not
    /// answer; the way to ride out a node's loss without a load balancer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alternate_endpoints: Vec<String>,
    /// `region` (else `AWS_REGION`, `AWS_DEFAULT_REGION`; Garage's default
    /// is `garage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// `access_key_id` (else `AWS_ACCESS_KEY_ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// `secret_access_key_file`: a file holding the secret key on one line,
    /// relative to the site directory, readable by the site only
    /// (else `AWS_SECRET_ACCESS_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// `url_style`: `path` (default) or `virtual-host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_style: Option<S3UrlStyle>,
    /// `retry_secs`: how long a call retries an unreachable service before
    /// failing (default 30).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_secs: Option<u64>,
}

/// Why an S3 configuration could not be put together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum S3ConfigError {
    /// A required value is neither in the site configuration nor in the
    /// environment.
    #[error(
        "no S3 {what} configured: set `{key}` in the site's [object_store] configuration or the environment variable {env}"
    )]
    Missing {
        /// What is missing, in words.
        what: &'static str,
        /// The site configuration key.
        key: &'static str,
        /// The environment variable(s).
        env: &'static str,
    },
    /// The endpoint is not an `http://` or `https://` URL with a host.
    #[error(
        "invalid S3 endpoint {endpoint:?}: {reason}; write it as http(s)://HOST[:PORT], for example http://127.0.0.1:3900"
    )]
    Endpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The secret key file could not be read.
    #[error("cannot read the S3 secret key file {}", path.display())]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The secret key file is empty.
    #[error(
        "the S3 secret key file {} is empty: write the secret access key on its first line",
        path.display()
    )]
    EmptySecret {
        /// The file.
        path: PathBuf,
    },
    /// The secret key file can be read by other users.
    #[error(
        "the S3 secret key file {} can be read by other users (mode {mode:o}): run chmod 600 on it",
        path.display()
    )]
    SecretFileMode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Everything [`S3Store`] needs. `Debug` leaves the secret key out.
#[derive(Clone)]
pub struct S3Config {
    /// The service's URL, `http(s)://HOST[:PORT]` (a path is kept as a
    /// prefix of every request's path).
    pub endpoint: String,
    /// Other addresses of the same service, tried in turn when a request
    /// to one fails transiently (may be empty).
    pub alternate_endpoints: Vec<String>,
    /// The region requests are signed for (`garage` for Garage,
    /// `us-east-1`, ...).
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside the bucket, without leading or trailing `/`
    /// (may be empty).
    pub prefix: String,
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key.
    pub secret_access_key: String,
    /// How object URLs name the bucket.
    pub url_style: S3UrlStyle,
    /// How long one call retries transient failures before it fails with
    /// [`ObjectError::Unavailable`].
    pub retry_for: Duration,
    /// The size of multipart parts, and the largest object written with a
    /// single `PUT` (at least 5 MiB, S3's smallest part).
    pub part_size: u64,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("alternate_endpoints", &self.alternate_endpoints)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("url_style", &self.url_style)
            .field("retry_for", &self.retry_for)
            .field("part_size", &self.part_size)
            .finish()
    }
}

impl S3Config {
    /// A configuration with the defaults for everything but the
    /// connection (path-style URLs, 30 s of retries, 16 MiB parts).
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        bucket: impl Into<String>,
        prefix: impl Into<String>,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> S3Config {
        S3Config {
            endpoint: endpoint.into(),
            alternate_endpoints: Vec::new(),
            region: region.into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            access_key_id: access_key_id.into(),
            secret_access_key: secret_access_key.into(),
            url_style: S3UrlStyle::Path,
            retry_for: DEFAULT_RETRY_FOR,
            part_size: DEFAULT_PART_SIZE,
        }
    }

    /// For `bucket` and `prefix` (from an `s3://BUCKET/PREFIX` storage
    /// location), with the endpoint, region and credentials from the
    /// environment only: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`,
    /// `AWS_REGION` or `AWS_DEFAULT_REGION` (default `us-east-1`),
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`.
    pub fn from_env(bucket: &str, prefix: &str) -> Result<S3Config, S3ConfigError> {
        S3Config::from_settings(bucket, prefix, &S3Settings::default(), Path::new("/"))
    }

    /// For `bucket` and `prefix`, from the site's `[object_store]`
    /// settings, each missing value taken from the environment as
    /// [`S3Config::from_env`] does; `site_dir` resolves a relative
    /// `secret_access_key_file`.
    pub fn from_settings(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
        site_dir: &Path,
    ) -> Result<S3Config, S3ConfigError> {
        S3Config::resolve(bucket, prefix, settings, site_dir, |name| {
            std::env::var(name).ok().filter(|v| !v.is_empty())
        })
    }

    /// [`S3Config::from_settings`] with the environment as a function (tests).
    pub fn resolve(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
        site_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<S3Config, S3ConfigError> {
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .ok_or(S3ConfigError::Missing {
                what: "endpoint",
                key: "endpoint",
                env: "AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL",
            })?;
        let region = settings
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            // AWS's own default; Garage wants its s3_region (`garage`).
            .unwrap_or_else(|| "us-east-1".to_string());
        let access_key_id = settings
            .access_key_id
            .clone()
            .or_else(|| env("AWS_ACCESS_KEY_ID"))
            .ok_or(S3ConfigError::Missing {
                what: "access key id",
                key: "access_key_id",
                env: "AWS_ACCESS_KEY_ID",
            })?;
        let secret_access_key = match &settings.secret_access_key_file {
            Some(file) => read_secret_file(&site_dir.join(file))?,
            None => env("AWS_SECRET_ACCESS_KEY").ok_or(S3ConfigError::Missing {
                what: "secret access key",
                key: "secret_access_key_file",
                env: "AWS_SECRET_ACCESS_KEY",
            })?,
        };
        let mut config = S3Config::new(
            endpoint,
            region,
            bucket,
            prefix,
            access_key_id,
            secret_access_key,
        );
        config.alternate_endpoints = settings.alternate_endpoints.clone();
        if let Some(style) = settings.url_style {
            config.url_style = style;
        }
        if let Some(secs) = settings.retry_secs {
            config.retry_for = Duration::from_secs(secs);
        }
        Ok(config)
    }
}

fn read_secret_file(path: &Path) -> Result<String, S3ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| S3ConfigError::SecretFile {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(S3ConfigError::SecretFileMode {
            path: path.to_path_buf(),
            mode: mode & 0o777,
        });
    }
    let text = std::fs::read_to_string(path).map_err(err)?;
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(S3ConfigError::EmptySecret {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

/// An object store in a bucket of an S3-compatible service.
pub struct S3Store {
    /// The endpoint and its alternates, in the configuration's order.
    targets: Vec<Target>,
    /// The target requests go to first (the last one that answered).
    current: AtomicUsize,
    credentials: Credentials,
    agent: ureq::Agent,
    prefix: String,
    retry_for: Duration,
    part_size: u64,
}

impl fmt::Debug for S3Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Store")
            .field("store", &self.describe())
            .field("access_key_id", &self.credentials.key())
            .finish_non_exhaustive()
    }
}

/// One endpoint of the service, with the bucket's URLs on it.
struct Target {
    bucket: Bucket,
    endpoint: String,
}

/// What one attempt of a request got back.
struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

/// Why one attempt failed.
enum Attempt {
    /// Worth another try (connection, timeout, 5xx, 429, 408).
    Transient(String),
    /// Final.
    Failed(ObjectError),
}

impl S3Store {
    /// A store for `config` (no request is made: an unreachable service or
    /// wrong credentials show at the first operation).
    pub fn new(config: S3Config) -> Result<S3Store, S3ConfigError> {
        let style = match config.url_style {
            S3UrlStyle::Path => UrlStyle::Path,
            S3UrlStyle::VirtualHost => UrlStyle::VirtualHost,
        };
        let mut targets = Vec::new();
        for endpoint in std::iter::once(&config.endpoint).chain(&config.alternate_endpoints) {
            let endpoint_err = |reason: String| S3ConfigError::Endpoint {
                endpoint: endpoint.clone(),
                reason,
            };
            let url: url::Url = endpoint
                .parse()
                .map_err(|e: url::ParseError| endpoint_err(e.to_string()))?;
            let bucket = Bucket::new(url, style, config.bucket.clone(), config.region.clone())
                .map_err(|e| endpoint_err(e.to_string()))?;
            targets.push(Target {
                bucket,
                endpoint: endpoint.trim_end_matches('/').to_string(),
            });
        }
        let agent = ureq::Agent::config_builder()
            // Statuses are mapped to typed errors here, not by ureq.
            .http_status_as_error(false)
            .timeout_resolve(Some(CONNECT_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            // S3 does not redirect path-style requests it accepts; a
            // redirect would drop the signature's validity anyway.
            .max_redirects(0)
            .build();
        // TCP that acknowledges responses at once (see `quick_ack`), then
        // TLS for an https endpoint, as ureq's default chain does.
        let connector =
            ().chain(ConnectProxyConnector::default())
                .chain(QuickAckConnector)
                .chain(RustlsConnector::default());
        let agent = ureq::Agent::with_parts(agent, connector, DefaultResolver::default());
        Ok(S3Store {
            targets,
            current: AtomicUsize::new(0),
            credentials: Credentials::new(config.access_key_id, config.secret_access_key),
            agent,
            prefix: config.prefix.trim_matches('/').to_string(),
            retry_for: config.retry_for,
            part_size: config.part_size.max(MIN_PART_SIZE),
        })
    }

    /// The key in the bucket for a store key.
    fn full_key(&self, key: &str) -> Result<String, ObjectError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    /// Sends one request (signed anew for each attempt), retrying transient
    /// failures for at most `retry_for`. A transient failure moves on to
    /// the next endpoint at once; the pause (100 ms doubling to 2 s) comes
    /// after every endpoint failed in turn.
    fn call(
        &self,
        op: &'static str,
        key: &str,
        mut attempt: impl FnMut(&Target) -> Result<Reply, Attempt>,
    ) -> Result<Reply, ObjectError> {
        let start = Instant::now();
        let mut pause = FIRST_BACKOFF;
        let n = self.targets.len();
        let mut which = self.current.load(Ordering::Relaxed) % n;
        let mut failed_in_round = 0;
        loop {
            let target = &self.targets[which];
            match attempt(target) {
                Ok(reply) => {
                    self.current.store(which, Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Transient(reason)) => {
                    which = (which + 1) % n;
                    failed_in_round += 1;
                    if failed_in_round < n {
                        continue;
                    }
                    failed_in_round = 0;
                    if start.elapsed() + pause > self.retry_for {
                        return Err(ObjectError::Unavailable {
                            store: self.describe(),
                            op,
                            key: key.to_string(),
                            reason: format!(
                                "{}: {reason} (gave up after {:.0?} of retries)",
                                target.endpoint,
                                start.elapsed()
                            ),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Performs one HTTP exchange and classifies its outcome: 2xx (and the
    /// statuses in `accept`) are replies; the rest become errors.
    fn exchange(
        &self,
        op: &'static str,
        key: &str,
        request: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        accept: &[u16],
    ) -> Result<Reply, Attempt> {
        self.classify(op, key, read_reply(request), accept)
    }

    /// Classifies a reply read by [`read_reply`] (see [`Self::exchange`]).
    fn classify(
        &self,
        op: &'static str,
        key: &str,
        reply: Result<Reply, String>,
        accept: &[u16],
    ) -> Result<Reply, Attempt> {
        let Reply {
            status,
            headers,
            body,
        } = reply.map_err(Attempt::Transient)?;
        if (200..300).contains(&status) || accept.contains(&status) {
            return Ok(Reply {
                status,
                headers,
                body,
            });
        }
        let (code, message) = s3_error(&body);
        let text = match (code.is_empty(), message.is_empty()) {
            (true, _) => format!("HTTP {status}"),
            (false, true) => code.clone(),
            (false, false) => format!("{code}: {message}"),
        };
        if status >= 500 || status == 429 || status == 408 || code == "SlowDown" {
            return Err(Attempt::Transient(text));
        }
        if status == 400 && body.is_empty() {
            // Not the service's refusal (S3 explains a 400 in an XML body)
            // but its HTTP layer's: the request arrived garbled (seen once
            // from Garage under load, right after a hedged read); the
            // server closes that connection, and the request is sent again.
            return Err(Attempt::Transient(format!(
                "HTTP {status} without a body (a garbled request)"
            )));
        }
        if status == 404 && code != "NoSuchBucket" && code != "NoSuchUpload" {
            return Err(Attempt::Failed(ObjectError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            }));
        }
        Err(Attempt::Failed(ObjectError::Refused {
            store: self.describe(),
            op,
            key: key.to_string(),
            status,
            message: if code.is_empty() {
                "no error details in the reply".to_string()
            } else {
                text
            },
        }))
    }

    /// A ranged GET with a hedge ("hedged requests", as in Dean and
    /// Barroso's *The Tail at Scale*): the request goes to the current
    /// endpoint, on this thread, given [`HEDGE_AFTER`] (plus
    /// [`HEDGE_PER_MIB`] per MiB asked) to complete; when it has not, it is
    /// abandoned and sent again to every other endpoint at once (on threads
    /// of their own), and the first definitive answer wins while the slower
    /// requests finish unobserved.
    ///
    /// Why: a cold read of a volume recovered from a bucket waits for one
    /// ranged GET, and a distributed store's latency has a long tail that
    /// is not the client's (Garage 2.5 on loopback: p50 4 ms, p90 48 ms,
    /// p99 90 ms — its nodes' RPC sockets stall on delayed
    /// acknowledgements, see `quick_ack`). Stalls of different nodes are
    /// independent, so a second request cuts the tail for a few percent
    /// more GETs. The first attempt stays on the calling thread because a
    /// thread hand-off costs milliseconds on a loaded machine, which would
    /// be paid by every read. With one endpoint, the hedge goes to it again
    /// on another connection.
    ///
    /// `None` when every attempt failed transiently: the caller falls back
    /// to [`Self::call`], which retries with backoff.
    fn get_range_hedged(
        &self,
        key: &str,
        full: &str,
        range: &str,
        len: u64,
    ) -> Option<Result<Reply, ObjectError>> {
        let n = self.targets.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let signed = |which: usize| {
            self.targets[which % n]
                .bucket
                .get_object(Some(&self.credentials), full)
                .sign(SIGN_FOR)
        };
        let budget = HEDGE_AFTER + HEDGE_PER_MIB.mul_f64(len as f64 / f64::from(1u32 << 20));
        let url = signed(first);
        let r = self
            .agent
            .get(url.as_str())
            .header("range", range)
            .config()
            .timeout_global(Some(budget))
            .build()
            .call();
        match self.classify("get", key, read_reply(r), &[416]) {
            Ok(reply) => return Some(Ok(reply)),
            Err(Attempt::Failed(e)) => return Some(Err(e)),
            Err(Attempt::Transient(_)) => {} // late or failed: hedge
        }
        let (tx, rx) = mpsc::channel::<(usize, Result<Reply, String>)>();
        let mut launched = 0;
        for i in 1..n.max(2) {
            let which = (first + i) % n;
            let url = signed(which);
            let agent = self.agent.clone();
            let range = range.to_string();
            let tx = tx.clone();
            let spawned = std::thread::Builder::new()
                .name("s3-get".into())
                .spawn(move || {
                    let r = agent.get(url.as_str()).header("range", &range).call();
                    // The receiver is gone when another answer won.
                    let _ = tx.send((which, read_reply(r)));
                });
            launched += usize::from(spawned.is_ok());
        }
        drop(tx);
        for _ in 0..launched {
            let (which, reply) = rx.recv().ok()?;
            match self.classify("get", key, reply, &[416]) {
                Ok(reply) => {
                    // The next requests start at the endpoint that answered
                    // (a node that stalls once may stall again).
                    self.current.store(which, Ordering::Relaxed);
                    return Some(Ok(reply));
                }
                Err(Attempt::Failed(e)) => return Some(Err(e)),
                Err(Attempt::Transient(_)) => {}
            }
        }
        None
    }

    fn put_bytes(&self, key: &str, full: &str, data: &[u8]) -> Result<(), ObjectError> {
        let md5 = content_md5(data);
        self.call("put", key, |t| {
            let url = t
                .bucket
                .put_object(Some(&self.credentials), full)
                .sign(SIGN_FOR);
            let r = self
                .agent
                .put(url.as_str())
                .header("content-md5", &md5)
                .send(data);
            self.exchange("put", key, r, &[])
        })?;
        Ok(())
    }

    /// A multipart upload of `len` bytes of `src`; the caller aborts it on
    /// error.
    fn put_multipart(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        src: &mut dyn Read,
        len: u64,
    ) -> Result<(), ObjectError> {
        // More than MAX_PARTS parts of part_size: larger parts.
        let part_size = self.part_size.max(len.div_ceil(MAX_PARTS));
        let parts = usize::try_from(len.div_ceil(part_size)).expect("at most 10000 parts");
        // Parts are read here in order and uploaded by PARALLEL_PARTS
        // threads (a single stream rarely fills the link to a distributed
        // store); at most PARALLEL_PARTS + 1 parts are in memory.
        let etags: Mutex<Vec<Option<String>>> = Mutex::new(vec![None; parts]);
        let failure: Mutex<Option<ObjectError>> = Mutex::new(None);
        let failed = AtomicBool::new(false);
        let (queue, jobs) = mpsc::sync_channel::<(u16, Vec<u8>)>(1);
        let jobs = Mutex::new(jobs);
        let read_result = std::thread::scope(|scope| {
            for _ in 0..PARALLEL_PARTS.min(parts) {
                scope.spawn(|| {
                    loop {
                        let job = jobs.lock().expect("part queue").recv();
                        let Ok((number, buf)) = job else { return };
                        if failed.load(Ordering::Relaxed) {
                            continue; // drain: the upload is being abandoned
                        }
                        match self.upload_part(key, full, upload_id, number, &buf) {
                            Ok(etag) => {
                                etags.lock().expect("etags")[usize::from(number) - 1] = Some(etag)
                            }
                            Err(e) => {
                                failed.store(true, Ordering::Relaxed);
                                failure.lock().expect("failure").get_or_insert(e);
                            }
                        }
                    }
                });
            }
            let mut done = 0u64;
            for number in 1..=parts {
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let want = part_size.min(len - done);
                let mut buf = Vec::with_capacity(want as usize);
                let got = (&mut *src)
                    .take(want)
                    .read_to_end(&mut buf)
                    .map_err(|e| self.io("put", key, e))?;
                if (got as u64) < want {
                    return Err(self.io(
                        "put",
                        key,
                        io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("source ended after {} of {len} bytes", done + got as u64),
                        ),
                    ));
                }
                done += want;
                let number = u16::try_from(number).expect("at most 10000 parts");
                if queue.send((number, buf)).is_err() {
                    break;
                }
            }
            drop(queue);
            Ok(())
        });
        // The workers are joined here (end of the scope).
        read_result?;
        if let Some(e) = failure.into_inner().expect("failure") {
            return Err(e);
        }
        let etags: Vec<String> = etags
            .into_inner()
            .expect("etags")
            .into_iter()
            .map(|e| e.expect("every part uploaded when none failed"))
            .collect();
        ensure_source_ended(src).map_err(|e| self.io("put", key, e))?;
        let body = self.targets[0]
            .bucket
            .complete_multipart_upload(
                Some(&self.credentials),
                full,
                upload_id,
                etags.iter().map(String::as_str),
            )
            .body();
        let mut retried = false;
        let reply = self.call("put", key, |t| {
            let url = t
                .bucket
                .complete_multipart_upload(
                    Some(&self.credentials),
                    full,
                    upload_id,
                    std::iter::empty(),
                )
                .sign(SIGN_FOR);
            let r = self.agent.post(url.as_str()).send(body.as_bytes());
            // A completion whose reply was lost completes the upload: its
            // retry finds no upload (404 NoSuchUpload), checked below.
            let accept: &[u16] = if retried { &[404] } else { &[] };
            retried = true;
            self.exchange("put", key, r, accept)
        })?;
        if reply.status == 404 {
            return match self.head(key)? {
                Some(size) if size == len => Ok(()),
                _ => Err(self.protocol(
                    "put",
                    key,
                    "the multipart upload vanished before it was completed",
                )),
            };
        }
        // S3 may answer 200 and still fail the completion (the error is in
        // the body).
        let text = String::from_utf8_lossy(&reply.body);
        if CompleteMultipartUploadResponse::parse(&text).is_err() {
            let (code, message) = s3_error(&reply.body);
            return Err(ObjectError::Refused {
                store: self.describe(),
                op: "put",
                key: key.to_string(),
                status: reply.status,
                message: format!("completing the multipart upload failed: {code}: {message}"),
            });
        }
        Ok(())
    }

    /// Uploads part `number` of an upload; returns its ETag.
    fn upload_part(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        number: u16,
        buf: &[u8],
    ) -> Result<String, ObjectError> {
        let md5 = content_md5(buf);
        let reply = self.call("put", key, |t| {
            let url = t
                .bucket
                .upload_part(Some(&self.credentials), full, number, upload_id)
                .sign(SIGN_FOR);
            let r = self
                .agent
                .put(url.as_str())
                .header("content-md5", &md5)
                .send(buf);
            self.exchange("put", key, r, &[])
        })?;
        reply
            .headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| self.protocol("put", key, "a part upload's reply has no ETag"))
    }

    fn abort_multipart(&self, key: &str, full: &str, upload_id: &str) {
        // Best effort: a failed abort leaves parts that are never visible
        // as an object (and that a bucket lifecycle rule can reclaim).
        let _ = self.call("abort upload", key, |t| {
            let url = t
                .bucket
                .abort_multipart_upload(Some(&self.credentials), full, upload_id)
                .sign(SIGN_FOR);
            let r = self.agent.delete(url.as_str()).call();
            self.exchange("abort upload", key, r, &[404])
        });
    }

    fn io(&self, op: &'static str, key: &str, source: io::Error) -> ObjectError {
        ObjectError::Io {
            store: self.describe(),
            op,
            key: key.to_string(),
            source,
        }
    }

    /// A reply that breaks the S3 protocol: as a refusal (retrying the
    /// same request would get the same reply).
    fn protocol(&self, op: &'static str, key: &str, what: &str) -> ObjectError {
        ObjectError::Refused {
            store: self.describe(),
            op,
            key: key.to_string(),
            status: 200,
            message: format!("unexpected reply: {what}"),
        }
    }

    fn short(&self, key: &str, size: u64, offset: u64, want: u64) -> ObjectError {
        ObjectError::ShortObject {
            store: self.describe(),
            key: key.to_string(),
            size,
            offset,
            want,
        }
    }
}

/// Checks that `src` has nothing left after the bytes announced.
fn ensure_source_ended(src: &mut dyn Read) -> io::Result<()> {
    let mut probe = [0u8; 1];
    loop {
        match src.read(&mut probe) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "source longer than the announced length",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn content_md5(data: &[u8]) -> String {
    use md5::Digest as _;
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(data))
}

/// Reads one HTTP exchange's reply whole; an error (no connection, a
/// connection broken mid-body) in words, worth another try.
/// The largest body buffer sized ahead from a `Content-Length` (a larger
/// body grows as it arrives): a bound on what a wrong header can make us
/// allocate.
const MAX_PRESIZE: usize = 64 << 20;

fn read_reply(
    request: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> Result<Reply, String> {
    let mut response = request.map_err(|e| describe_ureq_error(&e))?;
    let status = response.status().as_u16();
    // Sized once from the length the service announces: grown by doubling,
    // a 1 MiB body was copied about as many times again as it is long.
    let announced = response
        .headers()
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = Vec::with_capacity(announced.min(MAX_PRESIZE));
    response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .reader()
        .read_to_end(&mut body)
        .map_err(|e| format!("{e} ({:?})", e.kind()))?;
    Ok(Reply {
        status,
        headers: response.headers().clone(),
        body,
    })
}

/// A ureq error in words (the cause of a transient failure).
fn describe_ureq_error(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("{io} ({:?})", io.kind()),
        other => other.to_string(),
    }
}

/// The `<Code>` and `<Message>` of an S3 error body (empty when absent).
fn s3_error(body: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(body);
    let field = |name: &str| {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        text.find(&open)
            .and_then(|a| {
                let rest = &text[a + open.len()..];
                rest.find(&close).map(|b| unescape_xml(rest[..b].trim()))
            })
            .unwrap_or_default()
    };
    (field("Code"), field("Message"))
}

/// The text of an XML element with its five predefined entities decoded.
fn unescape_xml(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The total size in a `Content-Range: bytes A-B/SIZE` (or `bytes */SIZE`).
fn content_range_size(headers: &ureq::http::HeaderMap) -> Option<u64> {
    headers
        .get("content-range")?
        .to_str()
        .ok()?
        .rsplit_once('/')?
        .1
        .parse()
        .ok()
}

impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        let location = if self.prefix.is_empty() {
            format!("s3://{}", self.targets[0].bucket.name())
        } else {
            format!("s3://{}/{}", self.targets[0].bucket.name(), self.prefix)
        };
        match self.targets.len() {
            1 => format!("{location} at {}", self.targets[0].endpoint),
            n => format!(
                "{location} at {} (and {} alternate endpoint{})",
                self.targets[0].endpoint,
                n - 1,
                if n == 2 { "" } else { "s" }
            ),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        let full = self.full_key(key)?;
        self.put_bytes(key, &full, data)
    }

    fn put_from(&self, key: &str, src: &mut dyn Read, len: u64) -> Result<(), ObjectError> {
        let full = self.full_key(key)?;
        if len <= self.part_size {
            let mut data = Vec::with_capacity(len as usize);
            src.take(len)
                .read_to_end(&mut data)
                .map_err(|e| self.io("put", key, e))?;
            if data.len() as u64 != len {
                return Err(self.io(
                    "put",
                    key,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("source ended after {} of {len} bytes", data.len()),
                    ),
                ));
            }
            ensure_source_ended(src).map_err(|e| self.io("put", key, e))?;
            return self.put_bytes(key, &full, &data);
        }
        let reply = self.call("put", key, |t| {
            let url = t
                .bucket
                .create_multipart_upload(Some(&self.credentials), &full)
                .sign(SIGN_FOR);
            let r = self.agent.post(url.as_str()).send_empty();
            self.exchange("put", key, r, &[])
        })?;
        let created = CreateMultipartUpload::parse_response(&String::from_utf8_lossy(&reply.body))
            .map_err(|e| {
                self.protocol("put", key, &format!("a multipart upload's creation: {e}"))
            })?;
        let upload_id = created.upload_id().to_string();
        let result = self.put_multipart(key, &full, &upload_id, src, len);
        if result.is_err() {
            self.abort_multipart(key, &full, &upload_id);
        }
        result
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let full = self.full_key(key)?;
        let reply = self.call("get", key, |t| {
            let url = t
                .bucket
                .get_object(Some(&self.credentials), &full)
                .sign(SIGN_FOR);
            let r = self.agent.get(url.as_str()).call();
            self.exchange("get", key, r, &[])
        })?;
        Ok(reply.body)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        let full = self.full_key(key)?;
        let Some(end) = offset.checked_add(len) else {
            let size = self.head(key)?.ok_or_else(|| ObjectError::NotFound {
                store: self.describe(),
                key: key.to_string(),
            })?;
            return Err(self.short(key, size, offset, len));
        };
        if len == 0 {
            // HTTP has no empty range: check the bounds with a HEAD.
            return match self.head(key)? {
                Some(size) if offset <= size => Ok(Vec::new()),
                Some(size) => Err(self.short(key, size, offset, len)),
                None => Err(ObjectError::NotFound {
                    store: self.describe(),
                    key: key.to_string(),
                }),
            };
        }
        let range = format!("bytes={offset}-{}", end - 1);
        let hedged = if len <= HEDGE_MAX_LEN {
            self.get_range_hedged(key, &full, &range, len)
        } else {
            None
        };
        let reply = match hedged {
            Some(reply) => reply?,
            // Every endpoint failed at once: the retrying path decides.
            None => self.call("get", key, |t| {
                let url = t
                    .bucket
                    .get_object(Some(&self.credentials), &full)
                    .sign(SIGN_FOR);
                let r = self.agent.get(url.as_str()).header("range", &range).call();
                self.exchange("get", key, r, &[416])
            })?,
        };
        if reply.status == 416 {
            let size = content_range_size(&reply.headers).unwrap_or(0);
            return Err(self.short(key, size, offset, len));
        }
        if reply.status == 200 {
            // The service ignored the range and sent the whole object.
            let size = reply.body.len() as u64;
            if end > size {
                return Err(self.short(key, size, offset, len));
            }
            return Ok(reply.body[offset as usize..end as usize].to_vec());
        }
        if reply.body.len() as u64 != len {
            // A range running past the end is cut short by the service.
            let size =
                content_range_size(&reply.headers).unwrap_or(offset + reply.body.len() as u64);
            return Err(self.short(key, size, offset, len));
        }
        Ok(reply.body)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let full = self.full_key(key)?;
        let reply = self.call("head", key, |t| {
            let url = t
                .bucket
                .head_object(Some(&self.credentials), &full)
                .sign(SIGN_FOR);
            let r = self.agent.head(url.as_str()).call();
            self.exchange("head", key, r, &[])
        });
        let reply = match reply {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = reply
            .headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| self.protocol("head", key, "no Content-Length"))?;
        Ok(Some(size))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let strip = if self.prefix.is_empty() {
            0
        } else {
            self.prefix.len() + 1
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let reply = self.call("list", prefix, |t| {
                let mut action = t.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(full_prefix.as_str());
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let url = action.sign(SIGN_FOR);
                let r = self.agent.get(url.as_str()).call();
                self.exchange("list", prefix, r, &[])
            })?;
            let page = ListObjectsV2::parse_response(&String::from_utf8_lossy(&reply.body))
                .map_err(|e| self.protocol("list", prefix, &format!("a listing: {e}")))?;
            for item in page.contents {
                let Some(key) = item.key.get(strip..) else {
                    continue;
                };
                // Objects another tool put beside ours (keys outside the
                // rules) are not this store's.
                if check_key(key).is_err() {
                    continue;
                }
                out.push(ObjectInfo {
                    key: key.to_string(),
                    size: item.size.unwrap_or(0),
                });
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        // One listing with a delimiter: S3 answers the names below the
        // prefix as common prefixes, without the keys under them.
        let full_prefix = if self.prefix.is_empty() {
            prefix.to_string()
        } else {
            format!("{}/{prefix}", self.prefix)
        };
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let reply = self.call("list", prefix, |t| {
                let mut action = t.bucket.list_objects_v2(Some(&self.credentials));
                action.with_prefix(full_prefix.as_str());
                action.with_delimiter("/");
                if let Some(t) = &token {
                    action.with_continuation_token(t.as_str());
                }
                let url = action.sign(SIGN_FOR);
                let r = self.agent.get(url.as_str()).call();
                self.exchange("list", prefix, r, &[])
            })?;
            let page = ListObjectsV2::parse_response(&String::from_utf8_lossy(&reply.body))
                .map_err(|e| self.protocol("list", prefix, &format!("a listing: {e}")))?;
            for p in page.common_prefixes {
                let Some(name) = p
                    .prefix
                    .strip_prefix(full_prefix.as_str())
                    .and_then(|n| n.strip_suffix('/'))
                else {
                    continue;
                };
                if check_key(name).is_ok() && !name.contains('/') {
                    out.push(name.to_string());
                }
            }
            match page.next_continuation_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let full = self.full_key(key)?;
        self.call("delete", key, |t| {
            let url = t
                .bucket
                .delete_object(Some(&self.credentials), &full)
                .sign(SIGN_FOR);
            let r = self.agent.delete(url.as_str()).call();
            self.exchange("delete", key, r, &[404])
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers each connection's first request with the next
    /// of `replies` (raw HTTP), then closes it.
    fn scripted_server(replies: Vec<&'static str>) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for (reply, conn) in replies.into_iter().zip(listener.incoming()) {
                let mut conn = conn.unwrap();
                let mut buf = [0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = conn.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                conn.write_all(reply.as_bytes()).unwrap();
            }
        });
        at
    }

    /// A 400 with no body is the server's HTTP layer failing to parse the
    /// request, not S3 refusing it (S3 explains a 400 in XML): the read is
    /// sent again and succeeds. A 400 with an S3 error is final.
    #[test]
    fn a_garbled_request_is_sent_again_and_an_s3_refusal_is_not() {
        let at = scripted_server(vec![
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 206 Partial Content\r\ncontent-length: 4\r\ncontent-range: bytes 0-3/10\r\nconnection: close\r\n\r\nabcd",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 86\r\nconnection: close\r\n\r\n<Error><Code>InvalidRequest</Code><Message>a refusal with its reason</Message></Error>",
        ]);
        let mut config = S3Config::new(at, "garage", "b", "p", "AKID", "secret");
        config.retry_for = Duration::from_secs(20);
        let s = S3Store::new(config).unwrap();
        assert_eq!(s.get_range("k", 0, 4).unwrap(), b"abcd");
        match s.get_range("k", 0, 4) {
            Err(ObjectError::Refused {
                status: 400,
                message,
                ..
            }) => {
                assert!(message.contains("a refusal with its reason"), "{message}")
            }
            other => panic!("expected the refusal, got {other:?}"),
        }
    }

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_environment_fills_what_the_site_leaves_out() {
        let env = env_of(&[
            ("AWS_ENDPOINT_URL", "http://generic:1"),
            ("AWS_ENDPOINT_URL_S3", "http://s3-only:2"),
            ("AWS_DEFAULT_REGION", "eu-west-3"),
            ("AWS_ACCESS_KEY_ID", "AKIDENV"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ]);
        let c = S3Config::resolve("b", "p", &S3Settings::default(), Path::new("/"), &env).unwrap();
        assert_eq!(c.endpoint, "http://s3-only:2");
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.access_key_id, "AKIDENV");
        assert_eq!(c.secret_access_key, "envsecret");
        assert_eq!(c.url_style, S3UrlStyle::Path);
        assert_eq!(c.retry_for, DEFAULT_RETRY_FOR);

        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("s3.secret");
        std::fs::write(&secret, "filesecret\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let site = S3Settings {
            endpoint: Some("http://127.0.0.1:3900".into()),
            alternate_endpoints: vec!["http://127.0.0.1:3910".into()],
            region: Some("garage".into()),
            access_key_id: Some("GKsite".into()),
            secret_access_key_file: Some("s3.secret".into()),
            url_style: Some(S3UrlStyle::VirtualHost),
            retry_secs: Some(5),
        };
        let c = S3Config::resolve("b", "", &site, dir.path(), &env).unwrap();
        assert_eq!(
            (
                c.endpoint.as_str(),
                c.region.as_str(),
                c.access_key_id.as_str()
            ),
            ("http://127.0.0.1:3900", "garage", "GKsite")
        );
        assert_eq!(c.secret_access_key, "filesecret");
        assert_eq!(c.alternate_endpoints, ["http://127.0.0.1:3910"]);
        assert_eq!(c.url_style, S3UrlStyle::VirtualHost);
        assert_eq!(c.retry_for, Duration::from_secs(5));
        assert!(
            !format!("{c:?}").contains("filesecret"),
            "Debug shows no secret"
        );

        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = S3Config::resolve("b", "", &site, dir.path(), &env).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn missing_values_name_the_key_and_the_variable() {
        let e = S3Config::resolve("b", "", &S3Settings::default(), Path::new("/"), env_of(&[]))
            .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("`endpoint`") && text.contains("AWS_ENDPOINT_URL"),
            "{text}"
        );
        let e = S3Config::resolve(
            "b",
            "",
            &S3Settings::default(),
            Path::new("/"),
            env_of(&[
                ("AWS_ENDPOINT_URL", "http://x:1"),
                ("AWS_ACCESS_KEY_ID", "k"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");

        let mut c = S3Config::new("ftp://x", "r", "bucket", "", "k", "s");
        let e = S3Store::new(c.clone()).unwrap_err();
        assert!(e.to_string().contains("http(s)://HOST"), "{e}");
        c.endpoint = "http://127.0.0.1:1/".into();
        let s = S3Store::new(c).unwrap();
        assert_eq!(s.describe(), "s3://bucket at http://127.0.0.1:1");
    }

    #[test]
    fn error_bodies_and_content_ranges_are_read() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>Forbidden: &quot;no&quot; write</Message></Error>";
        assert_eq!(
            s3_error(body),
            (
                "AccessDenied".to_string(),
                "Forbidden: \"no\" write".to_string()
            )
        );
        assert_eq!(s3_error(b""), (String::new(), String::new()));
        let mut h = ureq::http::HeaderMap::new();
        h.insert("content-range", "bytes */1234".parse().unwrap());
        assert_eq!(content_range_size(&h), Some(1234));
        h.insert("content-range", "bytes 0-9/77".parse().unwrap());
        assert_eq!(content_range_size(&h), Some(77));
    }

    #[test]
    fn an_unreachable_service_is_unavailable_after_the_retry_bound() {
        // A port nothing listens on: connections are refused at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut c = S3Config::new(
            format!("http://127.0.0.1:{port}"),
            "garage",
            "bucket",
            "p",
            "k",
            "s",
        );
        c.retry_for = Duration::from_millis(500);
        let s = S3Store::new(c).unwrap();
        let e = s.get("k").unwrap_err();
        assert!(e.is_transient(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("127.0.0.1:{port}")) && text.contains("get k"),
            "{text}"
        );
    }
}
