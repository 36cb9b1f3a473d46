//! The REST API's request and response bodies, shared by the daemon (which
//! serves them) and the CLI (which reads them). Field names are part of the
//! scripting contract in DESIGN.md §4: add fields, never rename them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Version prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";

/// `GET /api/v1/site`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SiteInfo {
    /// Site name.
    pub name: String,
    /// `SHA256:` + hex of the site certificate's DER encoding.
    pub fingerprint: String,
    /// Replication listener address (HOST:PORT).
    pub listen: String,
    /// REST API address as bound (HOST:PORT).
    pub api: String,
    /// NBD listener address as bound (HOST:PORT).
    pub nbd: String,
    /// offsite version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
}

/// Import progress of a volume being created from an image.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ImportProgress {
    /// Bytes read from the source so far.
    pub copied_bytes: u64,
    /// Source size.
    pub total_bytes: u64,
    /// Set when the import failed; the volume is then unusable and should be deleted.
    pub error: Option<String>,
}

/// A volume as reported by `volume show/list`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name (and NBD export name).
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Tracking block size in bytes.
    pub block_size: u32,
    /// Changed bytes not yet on a replica (for a volume in no group: since
    /// creation or the last `volume clear-dirty`).
    pub dirty_bytes: u64,
    /// `primary`, `replica`, `test-clone` or `promoted`.
    pub role: String,
    /// `importing`, `ready` or `failed`.
    pub state: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// NBD URL of the export.
    pub url: String,
    /// Open NBD connections.
    pub connections: u64,
    /// Import progress while `state` is `importing`.
    pub import: Option<ImportProgress>,
}

/// `POST /api/v1/volumes`: either `size_bytes` or `import_path`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateVolume {
    /// Name; letters, digits, `.`, `_` and `-`, at most 64 characters.
    pub name: String,
    /// Size in bytes (a positive multiple of the block size).
    pub size_bytes: Option<u64>,
    /// Block size in bytes (power of two, 512 B to 1 MiB; default 4 KiB).
    pub block_size: Option<u32>,
    /// Raw image or block device on the site's machine to copy in.
    pub import_path: Option<String>,
}

/// `GET /api/v1/volumes/{name}/url`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VolumeUrl {
    /// Volume name.
    pub name: String,
    /// `nbd://HOST:PORT/NAME`.
    pub url: String,
}

/// One entry of the site's event log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// RFC 3339 time.
    pub at: String,
    /// Machine-readable kind.
    pub kind: String,
    /// What it is about.
    pub subject: Option<String>,
    /// Text.
    pub message: String,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ApiError {
    /// Machine-readable code: `not_found`, `conflict`, `invalid`, `unauthorized`, `busy`, `internal`.
    pub code: String,
    /// One line saying what failed and what to do.
    pub message: String,
}

/// A paired site, as `partner list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PartnerInfo {
    /// The partner's site name.
    pub name: String,
    /// HOST:PORT of its replication listener.
    pub address: String,
    /// Pinned certificate fingerprint (`SHA256:` + hex).
    pub fingerprint: String,
    /// RFC 3339 time of pairing.
    pub created_at: String,
    /// RFC 3339 time of the last successful handshake, if any.
    pub last_handshake_at: Option<String>,
    /// Round-trip time of the last handshake or keepalive, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// The last connection error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Whether the last contact succeeded.
    pub reachable: bool,
}

/// `POST /api/v1/partners`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AddPartner {
    /// The partner's site name (as shown by `site show` there).
    pub name: String,
    /// HOST:PORT of its replication listener.
    pub address: String,
    /// Its certificate fingerprint (as shown by `site show` there).
    pub fingerprint: String,
}

/// An authorization entry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuthzEntry {
    /// Exact site name, `*.suffix` or `*`.
    pub allowed_primary: String,
    /// Where replicas of matching primaries are stored.
    pub storage_location: String,
    /// Tag a primary's group must present, if any.
    pub security_tag: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// `POST /api/v1/authz`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AddAuthz {
    /// Exact site name, `*.suffix` or `*`.
    pub allowed_primary: String,
    /// Directory for the replicas (absolute; created if missing).
    pub storage_location: String,
    /// Required security tag.
    pub security_tag: Option<String>,
}

/// Site-wide replication settings.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SiteSettings {
    /// Accept replicas from any paired site that matches no entry.
    pub allow_any_partner: bool,
    /// Storage location used under `allow_any_partner`.
    pub default_storage_location: String,
    /// Default bandwidth limit for bulk replication traffic, bytes/s (none: unlimited).
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// `PATCH /api/v1/site/settings`: the fields to change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct UpdateSiteSettings {
    /// New value of `allow_any_partner`.
    pub allow_any_partner: Option<bool>,
    /// New default storage location.
    pub default_storage_location: Option<String>,
    /// New default bandwidth limit in bytes/s; 0 removes the limit.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// Result of `partner test`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PartnerTestResult {
    /// Partner name.
    pub partner: String,
    /// Protocol version negotiated.
    pub protocol_version: u16,
    /// Whether zstd compression was on for the test.
    pub compression: bool,
    /// Handshake (TCP + TLS + hello) time in milliseconds.
    pub handshake_ms: f64,
    /// Round-trip time of a ping in milliseconds.
    pub rtt_ms: f64,
    /// Bytes sent in the bulk test.
    pub bytes: u64,
    /// Duration of the bulk test in seconds.
    pub seconds: f64,
    /// Throughput in MB/s (10^6 bytes per second).
    pub mb_per_s: f64,
}

/// `POST /api/v1/partners/{name}/test`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PartnerTestRequest {
    /// Bytes to send (default 256 MiB).
    pub bytes: Option<u64>,
    /// Compress the bulk data with zstd.
    pub compress: bool,
}

/// `POST /api/v1/partners/{name}/authz-check`: would the partner accept
/// replicas from this site with this tag?
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuthzCheckRequest {
    /// Security tag the group would present.
    pub security_tag: Option<String>,
}

/// The partner's answer to an authorization check.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AuthzCheckResult {
    /// Partner asked.
    pub partner: String,
    /// Storage location the partner would use.
    pub storage_location: String,
    /// The rule that matched on the partner.
    pub rule: String,
}

/// A VM: ordered volumes plus power hooks.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VmInfo {
    /// VM name.
    pub name: String,
    /// Volume names, disk 0 first.
    pub volumes: Vec<String>,
    /// Command that starts the VM (run by failover with the volumes' NBD URLs in its environment).
    pub start: Option<String>,
    /// Command that stops the VM.
    pub stop: Option<String>,
    /// Command that exits 0 while the VM runs.
    pub status: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// `POST /api/v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateVm {
    /// VM name.
    pub name: String,
    /// Existing volume names, disk 0 first.
    pub volumes: Vec<String>,
    /// Start hook.
    pub start: Option<String>,
    /// Stop hook.
    pub stop: Option<String>,
    /// Status hook.
    pub status: Option<String>,
}
