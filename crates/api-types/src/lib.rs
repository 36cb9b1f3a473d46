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
