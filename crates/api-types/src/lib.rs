//! The REST API's request and response bodies, shared by the daemon (which
//! serves them) and the CLI (which reads them). Field names are part of the
//! scripting contract in docs/design.md §4: add fields, never rename them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod plans;
pub mod schema;

pub use plans::{
    CreatePlan, PlanAddGroup, PlanAddStep, PlanInfo, PlanRunGroup, PlanRunReport, PlanRunRequest,
    PlanRunStep, PlanRunSummary, PlanSetNetworkMap, PlanSetPriority, PlanStep, PlanVm,
};

/// Version prefix of every API route.
pub const API_PREFIX: &str = "/api/v1";

/// `GET /api/v1/site`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SiteInfo {
    /// Site name.
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
    /// `SHA256:` + hex of the site certificate's DER encoding.
    #[schema(pattern = "^SHA256:[0-9a-f]{64}$")]
    pub fingerprint: String,
    /// Replication listener address (HOST:PORT).
    pub listen: String,
    /// REST API address as bound (HOST:PORT).
    pub api: String,
    /// The API's (and web console's) URL: `https://HOST:PORT` when the
    /// listener serves TLS, else `http://HOST:PORT`.
    #[serde(default)]
    pub api_url: String,
    /// `[api_tls] mode`: `off`, `self-signed` or `files`.
    #[serde(default)]
    #[schema(schema_with = crate::schema::api_tls)]
    pub api_tls: String,
    /// `SHA256:` + hex of the certificate the API serves; null over plain
    /// HTTP. Pin it with the CLI's `--api-fingerprint`.
    #[serde(default)]
    #[schema(pattern = "^SHA256:[0-9a-f]{64}$")]
    pub api_fingerprint: Option<String>,
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
    #[schema(schema_with = crate::schema::volume_role)]
    pub role: String,
    /// `importing`, `ready` or `failed`.
    #[schema(schema_with = crate::schema::volume_state)]
    pub state: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// NBD URL of the export.
    pub url: String,
    /// NBD TLS mode in force for the export: the volume's own (`volume set
    /// --nbd-tls`) or else the NBD listener's (`[nbd_tls] mode`).
    #[schema(schema_with = crate::schema::nbd_tls)]
    pub nbd_tls: String,
    /// Open NBD connections.
    pub connections: u64,
    /// Import progress while `state` is `importing`.
    pub import: Option<ImportProgress>,
    /// A promoted volume or test clone that still reads blocks from the
    /// PIT below it (in a bucket, each such read is a fetch): how much of
    /// it is held locally. Promoted volumes are completed in the
    /// background; absent once the volume no longer depends on the PIT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hydration: Option<Hydration>,
}

/// How much of a layered volume is held locally ([`VolumeInfo::hydration`]).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Hydration {
    /// Bytes held by the volume itself (copied from the PIT, written, or
    /// known to be zero).
    pub local_bytes: u64,
    /// The volume's size.
    pub total_bytes: u64,
}

/// `POST /api/v1/volumes/{name}/nbd-tls`: a volume's own NBD TLS mode.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SetVolumeNbdTls {
    /// `off`, `optional` or `required`; null (or absent) takes the NBD
    /// listener's mode again.
    #[serde(default)]
    #[schema(schema_with = crate::schema::nbd_tls_opt)]
    pub mode: Option<String>,
}

/// `POST /api/v1/volumes`: either `size_bytes` or `import_path`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateVolume {
    /// Name; letters, digits, `.`, `_` and `-`, at most 64 characters.
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
    /// Size in bytes (a positive multiple of the block size).
    pub size_bytes: Option<u64>,
    /// Block size in bytes (power of two, 512 B to 1 MiB; default 4 KiB).
    #[schema(minimum = 512, maximum = 1048576)]
    pub block_size: Option<u32>,
    /// Raw image or block device on the site's machine to copy in.
    #[schema(pattern = "^/")]
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
    #[schema(pattern = "^SHA256:[0-9a-f]{64}$")]
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
    /// Where the partner's web console is served, as the partner said when
    /// the monitor's session to it opened; only while it is reachable, and
    /// a loopback URL only for a partner on this machine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
}

/// `POST /api/v1/partners`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AddPartner {
    /// The partner's site name (as shown by `site show` there).
    #[schema(schema_with = crate::schema::name)]
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
    #[schema(pattern = "^/")]
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
    #[schema(pattern = "^/")]
    pub default_storage_location: Option<String>,
    /// New default bandwidth limit in bytes/s; 0 removes the limit.
    #[schema(maximum = 9223372036854775807_i64)]
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
    /// Round-trip time of a ping in milliseconds (the median of several,
    /// sent one after another before the bulk test).
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
    #[schema(minimum = 1, maximum = 68719476736_i64)]
    pub bytes: Option<u64>,
    /// Compress the bulk data with zstd.
    #[serde(default)]
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
    /// The libvirt domain the VM is (`vm create --libvirt`); start, stop
    /// and status then go through libvirt. Absent for hook VMs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_domain: Option<String>,
    /// That domain's state at this site, from libvirt (`vm show` only):
    /// `running`, `paused`, `shutting-down`, `shut-off`, `crashed`,
    /// `suspended`, `no-state`, `undefined` (not defined here) or
    /// `unreachable` (libvirt did not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_state: Option<String>,
    /// Command that quiesces the VM's applications before an
    /// application-consistent checkpoint's cut (`fsfreeze -f MOUNT`, a
    /// database's backup mode); null when none.
    #[serde(default)]
    pub quiesce: Option<String>,
    /// Command that undoes the quiesce right after the cut.
    #[serde(default)]
    pub thaw: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// `POST /api/v1/vms`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateVm {
    /// VM name.
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
    /// Existing volume names, disk 0 first.
    #[schema(schema_with = crate::schema::names)]
    pub volumes: Vec<String>,
    /// Start hook.
    pub start: Option<String>,
    /// Stop hook.
    pub stop: Option<String>,
    /// Status hook.
    pub status: Option<String>,
    /// A libvirt domain to protect as this VM: its disks become the VM's
    /// volumes (file disks imported into new volumes `NAME-TARGET`) and
    /// `volumes` and the start, stop and status hooks must be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt: Option<String>,
    /// Quiesce hook, run before an application-consistent checkpoint's
    /// cut (with `thaw`, or neither; allowed with `libvirt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<String>,
    /// Thaw hook, run right after that cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thaw: Option<String>,
}

/// `POST /api/v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CreateGroup {
    /// Group name (the same on both sites).
    #[schema(schema_with = crate::schema::name)]
    pub name: String,
    /// Replica site (a partner).
    #[schema(schema_with = crate::schema::name)]
    pub partner: String,
    /// VMs whose volumes form the group (in order).
    #[serde(default)]
    #[schema(schema_with = crate::schema::names)]
    pub vms: Vec<String>,
    /// Volumes of the group (after the VMs' volumes).
    #[serde(default)]
    #[schema(schema_with = crate::schema::names)]
    pub volumes: Vec<String>,
    /// `async` or `sync`.
    #[schema(schema_with = crate::schema::mode)]
    pub mode: String,
    /// RPO in seconds (30 s to 24 h).
    #[schema(minimum = 30, maximum = 86400)]
    pub rpo_secs: u64,
    /// PITs to keep (besides named ones).
    #[schema(minimum = 1, maximum = 100000)]
    pub keep: u32,
    /// Bandwidth limit of the group's bulk traffic, bytes/s.
    #[schema(maximum = 9223372036854775807_i64)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// zstd on the wire (default true).
    pub compress: Option<bool>,
    /// Security tag presented to the replica's authorization entry.
    pub security_tag: Option<String>,
    /// Sync mode: `degrade` (default) or `suspend-writes`.
    #[serde(default)]
    #[schema(schema_with = crate::schema::link_loss_opt)]
    pub on_link_loss: Option<String>,
    /// Sync mode, `suspend-writes`: seconds a write waits for the partner
    /// before it fails (default 30).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 3600)]
    pub suspend_timeout_secs: Option<u64>,
    /// Seconds between the application-consistent PITs the primary takes
    /// by itself (0 or absent: none; else 60 s to 30 days). The group's
    /// VMs need quiesce hooks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 2592000)]
    pub app_consistent_every_secs: Option<u64>,
    /// Streaming groups: milliseconds between journal checkpoints
    /// (100 ms to 1 h; default 1 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 100, maximum = 3600000)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Seconds of journal history the replica keeps (1 min to 366 days;
    /// default 24 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 31622400)]
    pub journal_history_secs: Option<u64>,
    /// Most bytes of journal the replica keeps (at least 1 MiB; default
    /// 10 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1048576)]
    pub journal_max_bytes: Option<u64>,
    /// Encrypt the group's replicas at rest (XChaCha20-Poly1305) with a key
    /// made for the group here, kept at both sites (`group key export`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypt: bool,
}

/// `group set`: changes of a group's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct SetGroup {
    /// Convert to `async` or `sync` (no new initial replication).
    #[serde(default)]
    #[schema(schema_with = crate::schema::mode_opt)]
    pub mode: Option<String>,
    /// New RPO in seconds (30 s to 24 h); the replica keeps a copy.
    #[serde(default)]
    #[schema(minimum = 30, maximum = 86400)]
    pub rpo_secs: Option<u64>,
    /// New number of unnamed PITs kept (retention runs at the replica).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub keep: Option<u32>,
    /// New bandwidth limit in bytes per second (0: unlimited).
    #[serde(default)]
    #[schema(maximum = 9223372036854775807_i64)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// zstd on the wire (`true`) or no compression.
    #[serde(default)]
    pub compress: Option<bool>,
    /// Seconds between the application-consistent PITs the primary takes
    /// by itself (0: none; else 60 s to 30 days); the replica keeps a copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 2592000)]
    pub app_consistent_every_secs: Option<u64>,
    /// Streaming groups: milliseconds between journal checkpoints
    /// (100 ms to 1 h); the replica keeps and prunes by these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 100, maximum = 3600000)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Seconds of journal history the replica keeps (1 min to 366 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 60, maximum = 31622400)]
    pub journal_history_secs: Option<u64>,
    /// Most bytes of journal the replica keeps (at least 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1048576)]
    pub journal_max_bytes: Option<u64>,
}

/// `PATCH /api/v1/vms/{name}` (`vm set`): absent fields stay as they are.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SetVm {
    /// New start hook; an empty string removes it.
    #[serde(default)]
    pub start: Option<String>,
    /// New stop hook; an empty string removes it.
    #[serde(default)]
    pub stop: Option<String>,
    /// New status hook; an empty string removes it.
    #[serde(default)]
    pub status: Option<String>,
    /// New volumes, disk 0 first (refused while the VM is in a group).
    #[serde(default)]
    pub volumes: Option<Vec<String>>,
    /// New quiesce hook; an empty string removes it (the VM keeps both a
    /// quiesce and a thaw hook, or neither).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<String>,
    /// New thaw hook; an empty string removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thaw: Option<String>,
}

/// A PIT reference in `group status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PitRef {
    /// PIT id.
    pub id: u64,
    /// Name, if named.
    pub name: Option<String>,
    /// RFC 3339 time of the cut.
    pub created_at: String,
    /// Cut while every VM of the group was quiesced or cleanly stopped.
    #[serde(default)]
    pub app_consistent: bool,
}

/// A PIT in `pit list` (oldest first).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PitEntry {
    /// PIT id.
    pub id: u64,
    /// Name, if named.
    pub name: Option<String>,
    /// RFC 3339 time of the cut.
    pub created_at: String,
    /// Bytes shipped for it.
    pub bytes: u64,
    /// Cut while every VM of the group was quiesced (its quiesce hook
    /// succeeded) or cleanly stopped: its file systems mount without
    /// journal replay. Otherwise crash-consistent.
    #[serde(default)]
    pub app_consistent: bool,
}

/// `group status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// `async` or `sync`.
    #[schema(schema_with = crate::schema::mode)]
    pub mode: String,
    /// `primary` or `replica` (this site's role).
    #[schema(schema_with = crate::schema::group_role)]
    pub role: String,
    /// Replication state.
    #[schema(schema_with = crate::schema::group_state)]
    pub state: String,
    /// `normal`, `warning` or `critical`.
    #[schema(schema_with = crate::schema::health)]
    pub health: String,
    /// Why the health is not normal.
    pub health_reason: Option<String>,
    /// The other site.
    pub partner: String,
    /// The newest PIT, or null.
    pub last_pit: Option<PitRef>,
    /// Age of the newest PIT in seconds (since group creation if none).
    pub lag_seconds: u64,
    /// Changed bytes not yet on the replica (primary; 0 on the replica).
    pub pending_bytes: u64,
    /// RPO in seconds.
    pub rpo_seconds: u64,
    /// PITs kept.
    pub keep: u32,
    /// Volumes, in order.
    pub volumes: Vec<String>,
    /// Initial replication progress, 0–100, while it runs.
    pub initial_progress_percent: Option<f64>,
    /// Block data bytes sent by initial replication since the daemon started.
    pub initial_bytes_sent: u64,
    /// Bytes of the volumes durable on the replica while initial replication
    /// runs: where it resumes after a crash or a dropped link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_durable_bytes: Option<u64>,
    /// Primary: bytes written since replication last failed (or the daemon
    /// started) and no cycle has committed since: writes the replica may
    /// never see if it takes over. 0 while replication works.
    #[serde(default)]
    pub isolated_bytes: u64,
    /// Replica: the PIT a running test failover was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_failover_pit: Option<u64>,
    /// Sync mode: `in-sync` (every write is in the replica's log before
    /// it is acknowledged), `resynchronizing`, `degraded` (the partner is
    /// lost; writes are tracked) or `suspended` (writes wait); continuous
    /// mode: `streaming` (every write is queued to the replica as it
    /// happens), `spilled` (the queue outgrew its bound; writes are
    /// tracked), `resynchronizing` or `degraded`; null for async groups
    /// and at the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::sync_state_opt)]
    pub sync_state: Option<String>,
    /// Sync mode: what happens to writes when the partner is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(schema_with = crate::schema::link_loss_opt)]
    pub on_link_loss: Option<String>,
    /// Estimated seconds to finish the running transfer, if known.
    pub eta_seconds: Option<u64>,
    /// The last error, if the last attempt failed.
    pub last_error: Option<String>,
    /// Replica side: where the replica store lives.
    pub store_dir: Option<String>,
    /// Primary: why the replica may differ from the primary in blocks the
    /// change tracking does not know of (`volume clear-dirty --force`, a
    /// verify that found differences); health is critical until `group
    /// resync` (or a verify that finds none) clears it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs_resync: Option<String>,
    /// When the group's last successful test drill ended (RFC 3339): a
    /// test failover started and stopped cleanly, by hand or by a plan's
    /// test run. The replica records it; the primary learns it with each
    /// PIT commit. Null if the group was never drilled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_at: Option<String>,
    /// Primary: the last instant (RFC 3339) at which the replica was known
    /// to hold every write: the cut of the newest PIT, or a later scheduled
    /// cycle that found no changed block and so committed nothing. `lag_seconds`
    /// counts from here. Null until this daemon's first commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<String>,
    /// Sync and continuous groups: seconds between two seals of the
    /// replica's log into a PIT (set with `--rpo`; a sync group's RPO
    /// itself is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_interval_seconds: Option<u64>,
    /// Continuous group at its primary: how many seconds of writes the
    /// replica does not have yet (millisecond resolution): 0 when it has
    /// acknowledged every write, else the age of the oldest write it has
    /// not; while spilled or resynchronizing, the age of the newest PIT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_lag_seconds: Option<f64>,
    /// Primary: the running transfer's progress in bytes of data: the
    /// initial replication (holes are skipped without reading, so they do
    /// not count), a reverse's first cycle, or any cycle while it ships.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferProgress>,
    /// Primary: progress of a running `group resync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resync: Option<ResyncProgress>,
    /// Primary: bandwidth limit of the group's transfers in bytes per
    /// second (null: the site's limit, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// Primary: zstd on the wire.
    #[serde(default)]
    pub compress: bool,
    /// The newest application-consistent PIT, if the group has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_app_consistent_pit: Option<PitRef>,
    /// Its age in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistent_age_seconds: Option<u64>,
    /// Seconds between the application-consistent PITs the primary takes
    /// by itself (`--app-consistent-every`); absent when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistent_every_seconds: Option<u64>,
    /// Primary: why the last application-consistent checkpoint came out
    /// crash-consistent (a quiesce hook failed, a VM has none, ...) or
    /// left a VM possibly quiesced (its thaw hook failed), until
    /// one succeeds; health is at least `warning` meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce_error: Option<String>,
    /// Streaming (sync, continuous) groups: the journal's settings and
    /// window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalStatus>,
    /// The group's replicas are encrypted at rest (this site holds its key).
    #[serde(default)]
    pub encrypted: bool,
    /// The id of the group's key (a hash of it, not the key), when
    /// encrypted: both sites show the same id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// The journal of a streaming group in `group status`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct JournalStatus {
    /// Milliseconds between checkpoints (`--checkpoint-interval`).
    pub checkpoint_interval_ms: u64,
    /// Seconds of history kept (`--journal-history`).
    pub history_seconds: u64,
    /// Most bytes of journal kept (`--journal-max-size`).
    pub max_bytes: u64,
    /// The oldest reachable checkpoint's time (RFC 3339, the primary's
    /// clock): at the replica from its store, at the primary as the
    /// replica last reported it (at its last seal); absent when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_checkpoint_at: Option<String>,
    /// The newest one's (an idle group takes no checkpoint: the newest
    /// one is then the state up to now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest_checkpoint_at: Option<String>,
    /// Reachable checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<u64>,
}

/// `pit list GROUP --checkpoints` (`GET /api/v1/groups/{name}/checkpoints`):
/// what the group's journal at its replica can recover to.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct JournalListing {
    /// Group name.
    pub group: String,
    /// The site whose journal this is (the group's replica).
    pub site: String,
    /// Reachable checkpoints.
    pub count: u64,
    /// Of them, application-consistent ones.
    pub application_consistent: u64,
    /// The oldest reachable checkpoint.
    pub oldest: Option<CheckpointEntry>,
    /// The newest one.
    pub newest: Option<CheckpointEntry>,
    /// Journal files at the replica.
    pub files: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Every reachable checkpoint, oldest first (asked with `all=true`).
    #[serde(default)]
    pub checkpoints: Vec<CheckpointEntry>,
}

/// One journal checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CheckpointEntry {
    /// Its id in the group's journal.
    pub id: u64,
    /// The primary's time (RFC 3339, UTC, with nanoseconds).
    pub time: String,
    /// The same, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// `crash` or `application`.
    pub consistency: String,
    /// Optional name.
    pub name: Option<String>,
}

/// Progress of a running transfer, in bytes of data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct TransferProgress {
    /// `initial` (initial replication), `reverse` (what a reverse or a
    /// failback moves) or `cycle` (an ordinary cycle while it ships).
    pub kind: String,
    /// Bytes of data copied (before a resumed attempt's checkpoint:
    /// estimated from the allocation).
    pub bytes_done: u64,
    /// Bytes of data to copy in all (estimated from the volumes'
    /// allocation; a seeded start reads every block).
    pub bytes_total: u64,
    /// Average rate of this attempt so far.
    pub bytes_per_second: u64,
    /// Seconds left at that rate (null until it is known).
    pub eta_seconds: Option<u64>,
}

/// Progress of a running `group resync`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ResyncProgress {
    /// Blocks of the group's volumes compared with the replica so far.
    pub blocks_compared: u64,
    /// Blocks of the group's volumes in all.
    pub blocks_total: u64,
    /// Blocks found to differ so far.
    pub differing_blocks: u64,
    /// Payload bytes of differing blocks sent so far.
    pub bytes_sent: u64,
    /// Seconds since the resync started.
    pub elapsed_seconds: u64,
}

/// Result of `group resync`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ResyncResult {
    /// Group name.
    pub group: String,
    /// The PIT of the fresh cut the comparison ran against.
    pub compared_pit: u64,
    /// The PIT that carried the differing blocks (the same as
    /// `compared_pit` when nothing differed).
    pub pit: u64,
    /// Blocks compared.
    pub blocks_compared: u64,
    /// Blocks whose BLAKE3 differed and were shipped.
    pub differing_blocks: u64,
    /// Payload bytes of the differing blocks shipped.
    pub bytes_sent: u64,
    /// Per volume: name, blocks compared and blocks that differed.
    pub volumes: Vec<VerifyVolume>,
}

/// `group start`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StartGroup {
    /// Seed image directory on the replica (initial replication from a seed).
    pub seed: Option<String>,
}

/// `sync`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SyncGroup {
    /// Name the PIT (kept until `pit release`).
    #[schema(schema_with = crate::schema::name_opt)]
    pub pit_name: Option<String>,
    /// Return once the cycle started instead of waiting for the PIT.
    #[serde(default)]
    pub no_wait: bool,
    /// An application-consistent checkpoint: quiesce the group's VMs
    /// (their quiesce hooks, in order), cut, thaw them, then ship. A hook
    /// that fails leaves the PIT crash-consistent and is reported in the
    /// result's `errors`; replication is never blocked.
    #[serde(default)]
    pub quiesce: bool,
}

/// Result of `sync`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SyncResult {
    /// Group name.
    pub group: String,
    /// The PIT committed (null with --no-wait).
    pub pit: Option<PitEntry>,
    /// With `quiesce`: the quiesce and thaw hooks run, in order (at the
    /// primary; empty when the replica forwarded the sync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookReport>,
    /// With `quiesce`: what failed — why the PIT is crash-consistent, or a
    /// thaw hook that failed (its VM may still be quiesced). The PIT is
    /// committed either way; the CLI exits 1 when this is not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// Result of `verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VerifyResult {
    /// Group name.
    pub group: String,
    /// PIT compared (taken for the verification).
    pub pit: u64,
    /// Blocks compared.
    pub blocks_compared: u64,
    /// Blocks whose BLAKE3 differs (0 expected).
    pub differing_blocks: u64,
    /// Per volume: name and differing blocks.
    pub volumes: Vec<VerifyVolume>,
}

/// One volume of a `verify`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct VerifyVolume {
    /// Volume name.
    pub name: String,
    /// Blocks compared.
    pub blocks_compared: u64,
    /// Blocks that differ.
    pub differing_blocks: u64,
}

/// `group measure` (Measure-VMReplication's figures).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct GroupMeasure {
    /// Group name.
    pub name: String,
    /// Cycles attempted.
    pub cycles: u64,
    /// Bytes of the last successful cycle.
    pub last_cycle_bytes: u64,
    /// Average bytes per successful cycle.
    pub avg_cycle_bytes: u64,
    /// Largest successful cycle.
    pub max_cycle_bytes: u64,
    /// RPO in seconds.
    pub rpo_seconds: u64,
    /// Share of successful cycles that started within the RPO of the previous PIT.
    pub rpo_compliance_percent: f64,
    /// Bytes the group moved to its replica, every kind together (the
    /// sum of `bytes_by_kind`).
    pub bytes_total: u64,
    /// Bytes moved per kind: `initial` (initial replication), `cycle`
    /// (delta cycles, a sync group's resynchronization), `sync` (a sync
    /// group's write stream), `resync` (`group resync`), `reverse` (what
    /// reverse and failback moved).
    #[serde(default)]
    pub bytes_by_kind: std::collections::BTreeMap<String, u64>,
    /// Failed cycles.
    pub errors: u64,
    /// Age of the newest PIT in seconds.
    pub lag_seconds: u64,
    /// Changed bytes not yet on the replica.
    pub pending_bytes: u64,
}

/// One volume of a PIT served over NBD.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ExportedVolume {
    /// The volume's name at the primary.
    pub name: String,
    /// NBD export name.
    pub export: String,
    /// NBD URL to use now.
    pub url: String,
}

/// `failover run` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FailoverRun {
    /// PIT id or name (default: the newest).
    #[serde(default)]
    pub pit: Option<String>,
    /// Recover to the newest consistent point (journal checkpoint or PIT)
    /// at or before this RFC 3339 time instead (not with `pit`).
    #[serde(default)]
    pub at: Option<String>,
    /// Test failover: writable clones, replication untouched.
    #[serde(default)]
    pub test: bool,
    /// Fail over although the primary is reachable and not prepared.
    #[serde(default)]
    pub force: bool,
    /// Leave the VMs' start hooks to the caller (a recovery plan starts
    /// them in priority tiers).
    #[serde(default)]
    pub skip_vm_hooks: bool,
}

/// One hook run during a failover.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct HookReport {
    /// VM name.
    pub vm: String,
    /// `start`, `stop` or `status`.
    pub action: String,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// Result of `failover run` and `failover stop-test`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FailoverResult {
    /// Group name.
    pub group: String,
    /// `test`, `stop-test`, `planned` or `unplanned`.
    pub mode: String,
    /// The PIT the volumes were made from.
    pub pit: u64,
    /// The volumes as served now (clones in test mode).
    pub volumes: Vec<ExportedVolume>,
    /// Hooks run, in order.
    pub vms: Vec<HookReport>,
    /// Wall time of the operation in milliseconds.
    pub duration_ms: u64,
    /// What failed without stopping the operation (a VM hook after the
    /// volumes were promoted, say); the CLI exits non-zero when not empty.
    #[serde(default)]
    pub errors: Vec<String>,
    /// With `at`: the consistent point chosen (`pit` is then the PIT a
    /// checkpoint's image starts from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<RecoveryPoint>,
}

/// The consistent point a recovery to a time (`at`) chose: the newest PIT
/// or journal checkpoint at or before that time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// `pit` or `checkpoint`.
    #[schema(schema_with = crate::schema::point_kind)]
    pub kind: String,
    /// The PIT's or the checkpoint's id.
    pub id: u64,
    /// Its name, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// RFC 3339 time of the point (a checkpoint's: the primary's clock).
    pub time: String,
    /// Taken while the group's VMs were quiesced.
    pub app_consistent: bool,
    /// The PIT its image starts from (a PIT: itself).
    pub pit: u64,
    /// The time asked for (RFC 3339).
    pub requested: String,
    /// How long before the time asked for the point lies, in milliseconds.
    pub before_requested_ms: u64,
}

/// `GET /groups/{name}/key` (`group key export`): the group's key. A
/// secret: whoever holds `key` can read the group's replicas.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GroupKeyExport {
    /// The group.
    pub group: String,
    /// The key's id (a hash of it, not the key).
    pub key_id: String,
    /// The export line (`offsite-key-1:…`).
    pub key: String,
}

/// `POST /groups/{name}/key` (`group key import`): an export line.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ImportGroupKey {
    /// The export line `group key export` printed.
    pub key: String,
}

/// The key a site holds for a group.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GroupKeyInfo {
    /// The group.
    pub group: String,
    /// The key's id.
    pub key_id: String,
}

/// `pit export GROUP --at TIME`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PitExportAt {
    /// RFC 3339 time: the newest consistent point at or before it is
    /// exported.
    pub at: String,
}

/// What each site of a group wrote since they diverged.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SplitBrain {
    /// One entry per site.
    pub sites: Vec<SplitBrainSide>,
    /// The site whose changes are (or would be) discarded, if chosen.
    pub discarded_on: Option<String>,
    /// The named PIT that keeps the loser's state, once resolved.
    pub kept_as_pit: Option<String>,
}

/// One site of a [`SplitBrain`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SplitBrainSide {
    /// Site name.
    pub site: String,
    /// Its data generation: the PIT its data descends from, and how.
    pub generation: String,
    /// Bytes it wrote since the divergence; what choosing it as the loser
    /// throws away (kept as a named PIT on it).
    pub written_bytes: u64,
}

/// `reverse` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReverseRequest {
    /// Resolve a split brain: the site whose changes are discarded.
    #[serde(default)]
    pub discard_changes_on: Option<String>,
    /// Only report what each choice would discard.
    #[serde(default)]
    pub dry_run: bool,
}

/// Result of `reverse`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReverseResult {
    /// Group name.
    pub group: String,
    /// The first PIT committed in the new direction.
    pub pit: u64,
    /// The group's volumes as served here, the new primary.
    pub volumes: Vec<ExportedVolume>,
    /// Block bytes sent to the new replica to make it equal (all-zero
    /// blocks travel as ranges and are not counted).
    pub bytes_transferred: u64,
    /// Bytes the old primary had changed that never reached a committed
    /// PIT, now overwritten with this site's data (after a crash of the old
    /// primary, its activity log makes this a superset).
    pub rolled_back_bytes: u64,
    /// Both sites' changes since they diverged (always with `--dry-run`;
    /// after a split-brain resolution, what was chosen).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_brain: Option<SplitBrain>,
    /// The other site did not know the group (it was rebuilt, see
    /// `partner replace`): the group was created there again and it
    /// received a full copy (initial replication) instead of the
    /// differences.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full_copy: bool,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
}

/// Result of `pit export`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PitExport {
    /// Group name.
    pub group: String,
    /// PIT id (exported at a checkpoint: the PIT its image starts from).
    pub pit: u64,
    /// The PIT's volumes, read-only.
    pub volumes: Vec<ExportedVolume>,
    /// With `at`: the consistent point exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<RecoveryPoint>,
}

/// Result of `pit check`: every PIT's own blocks read back and compared
/// with the BLAKE3 hashes recorded when it was committed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PitCheck {
    /// Group name.
    pub group: String,
    /// One entry per PIT, oldest first.
    pub pits: Vec<PitCheckEntry>,
    /// PITs whose data does not match their checksums.
    pub damaged: u64,
}

/// One PIT of a [`PitCheck`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct PitCheckEntry {
    /// PIT id.
    pub id: u64,
    /// PIT name, if named.
    pub name: Option<String>,
    /// The PIT's blocks match their recorded checksums.
    pub ok: bool,
    /// What did not match, when not ok.
    pub error: Option<String>,
}

/// `group export-seed` request.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ExportSeed {
    /// Directory on the primary's machine to write the seed into.
    pub to: String,
}

/// Result of `group export-seed`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SeedExport {
    /// Group name.
    pub group: String,
    /// Where the seed was written.
    pub dir: String,
    /// Non-zero bytes written.
    pub bytes: u64,
    /// Image files (plus `seed.json`).
    pub files: Vec<String>,
}

/// `PATCH /api/v1/partners/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct UpdatePartner {
    /// New HOST:PORT of the partner's replication listener.
    pub address: String,
}

/// `POST /api/v1/partners/{name}/replace`: the partner was rebuilt with a
/// new identity under the same name.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReplacePartner {
    /// HOST:PORT of the rebuilt site's replication listener.
    pub address: String,
    /// Its new certificate fingerprint (`site show` there).
    pub fingerprint: String,
}

/// What `partner replace` did with a group shared with the partner.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ReplacedAction {
    /// Created again at the partner; initial replication sends a full copy.
    FullCopy,
    /// The partner still holds the group.
    Unchanged,
    /// Failed over here: `reverse` makes the partner its replica (full copy).
    ReverseNext,
    /// The partner was the primary: fail over here first, then reverse.
    FailOverFirst,
    /// Not done yet (the partner could not be asked or refused): run
    /// `partner replace` again.
    Pending,
}

/// One group in [`PartnerReplaced`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct ReplacedGroup {
    /// Group name.
    pub group: String,
    /// What was done or is next.
    pub action: ReplacedAction,
    /// The same in words, with the command to run next if any.
    pub detail: String,
}

/// One plan in [`PartnerReplaced`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct SharedPlan {
    /// Plan name.
    pub plan: String,
    /// The partner stores the plan now.
    pub sent: bool,
    /// Run reports copied with it.
    pub runs_sent: usize,
    /// What was sent, or why not yet (a group the partner lacks until a
    /// `reverse` creates it there).
    pub detail: String,
}

/// Result of `partner replace`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct PartnerReplaced {
    /// The partner with its new pin.
    pub partner: PartnerInfo,
    /// Every group shared with it.
    pub groups: Vec<ReplacedGroup>,
    /// Every plan shared with it.
    pub plans: Vec<SharedPlan>,
}

/// `POST /api/v1/site/attach-store`: take over the replica stores kept at
/// an object-store location.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AttachStore {
    /// `s3://BUCKET/PREFIX` (the site's `[object_store]` settings reach
    /// it), or an absolute directory holding stores in object form.
    pub location: String,
    /// The keys of the encrypted groups: each the line `group key export`
    /// printed.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// What `site attach-store` did with a group found at the location.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AttachAction {
    /// Now a replica group of this site.
    Attached,
    /// A group of that name exists here already: left alone.
    Exists,
    /// Encrypted with a key that was not given.
    NeedsKey,
    /// Not usable (no definition, an unreadable store).
    Failed,
}

/// One group in [`StoreAttached`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AttachedGroup {
    /// Group name.
    pub group: String,
    /// What happened.
    pub action: AttachAction,
    /// Its primary site, when its definition could be read.
    pub primary: Option<String>,
    /// PITs found.
    pub pits: usize,
    /// Whether its objects are encrypted.
    pub encrypted: bool,
    /// In words, with what to do next.
    pub detail: String,
}

/// One plan in [`StoreAttached`].
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct AdoptedPlan {
    /// Plan name.
    pub plan: String,
    /// Stored here now.
    pub adopted: bool,
    /// Why not, or what was done.
    pub detail: String,
}

/// Result of `site attach-store`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StoreAttached {
    /// Every group found at the location.
    pub groups: Vec<AttachedGroup>,
    /// Every plan copy found beside the attached groups.
    pub plans: Vec<AdoptedPlan>,
}

/// `GET /api/v1/overview` and the `overview` events of `/api/v1/stream`:
/// everything the console's overview shows, in one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Overview {
    /// This site.
    pub site: SiteInfo,
    /// Its partners with their reachability.
    pub partners: Vec<PartnerInfo>,
    /// Every group at this site.
    pub groups: Vec<GroupStatus>,
}

/// `GET /api/v1/groups/{name}/cycles`: one replication cycle of a group at
/// its primary (the replica records none).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CycleEntry {
    /// RFC 3339 time the cycle started (its cut).
    pub started_at: String,
    /// RFC 3339 time it ended; null while it runs.
    pub finished_at: Option<String>,
    /// Block data bytes it shipped.
    pub bytes: u64,
    /// The PIT it committed, if any (an idle cycle commits none).
    pub pit: Option<u64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
}
