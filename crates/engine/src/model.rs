//! What a site reports and is asked, as domain types: the site, its
//! volumes, VMs, partners, authorization entries and settings. The api
//! crate maps them to and from the REST bodies of `offsite-api-types`, so
//! the engine does not depend on the HTTP contract.

/// The site as `site show` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteInfo {
    /// Site name.
    pub name: String,
    /// `SHA256:` + hex of the site certificate's DER encoding.
    pub fingerprint: String,
    /// Replication listener address (HOST:PORT).
    pub listen: String,
    /// REST API address as bound (HOST:PORT).
    pub api: String,
    /// The API's (and console's) URL: `https://HOST:PORT` when it serves
    /// TLS, else `http://`.
    pub api_url: String,
    /// `[api_tls] mode`.
    pub api_tls: crate::config::ApiTlsMode,
    /// `SHA256:` + hex of the certificate the API serves (`None`: plain
    /// HTTP, or the daemon has not bound the listener).
    pub api_fingerprint: Option<String>,
    /// NBD listener address as bound (HOST:PORT).
    pub nbd: String,
    /// offsite version.
    pub version: String,
    /// Data directory.
    pub data_dir: String,
}

/// Import progress of a volume being created from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportProgress {
    /// Bytes read from the source so far.
    pub copied_bytes: u64,
    /// Source size.
    pub total_bytes: u64,
    /// Set when the import failed; the volume is then unusable and should be deleted.
    pub error: Option<String>,
}

/// A volume as reported by `volume show/list`.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The NBD TLS mode in force for the export: the volume's own
    /// (`volume set --nbd-tls`) or else the listener's.
    pub nbd_tls: offsite_nbd::TlsMode,
    /// Open NBD connections.
    pub connections: u64,
    /// Import progress while `state` is `importing`.
    pub import: Option<ImportProgress>,
    /// A promoted volume or test clone that still reads blocks from the
    /// PIT below it (in a bucket, each such read is a fetch): how much of
    /// it is held locally. Promoted volumes are completed in the
    /// background; absent once the volume no longer depends on the PIT.
    pub hydration: Option<Hydration>,
}

/// How much of a layered volume is held locally ([`VolumeInfo::hydration`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hydration {
    /// Bytes held by the volume itself (copied from the PIT, written, or
    /// known to be zero).
    pub local_bytes: u64,
    /// The volume's size.
    pub total_bytes: u64,
}

/// `volume create`: either `size_bytes` or `import_path`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// One entry of the site's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A paired site, as `partner list` shows it.
#[derive(Debug, Clone, PartialEq)]
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

/// `partner add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddPartner {
    /// The partner's site name (as shown by `site show` there).
    pub name: String,
    /// HOST:PORT of its replication listener.
    pub address: String,
    /// Its certificate fingerprint (as shown by `site show` there).
    pub fingerprint: String,
}

/// An authorization entry.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// `authz add`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddAuthz {
    /// Exact site name, `*.suffix` or `*`.
    pub allowed_primary: String,
    /// Directory for the replicas (absolute; created if missing).
    pub storage_location: String,
    /// Required security tag.
    pub security_tag: Option<String>,
}

/// Site-wide replication settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    /// Accept replicas from any paired site that matches no entry.
    pub allow_any_partner: bool,
    /// Storage location used under `allow_any_partner`.
    pub default_storage_location: String,
    /// Default bandwidth limit for bulk replication traffic, bytes/s (none: unlimited).
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// `site set`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpdateSiteSettings {
    /// New value of `allow_any_partner`.
    pub allow_any_partner: Option<bool>,
    /// New default storage location.
    pub default_storage_location: Option<String>,
    /// New default bandwidth limit in bytes/s; 0 removes the limit.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// A VM: ordered volumes plus power hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// The libvirt domain it is, if any (start, stop and status then go
    /// through libvirt).
    pub libvirt_domain: Option<String>,
    /// That domain's XML, verbatim, as this site keeps it.
    pub libvirt_xml: Option<String>,
    /// The domain's state at this site as libvirt reports it (`vm show`
    /// only; `None` for hook VMs and in lists).
    pub libvirt_state: Option<LibvirtState>,
    /// Command that quiesces the VM's applications before an
    /// application-consistent checkpoint's cut (`fsfreeze -f MOUNT`).
    pub quiesce: Option<String>,
    /// Command that undoes `quiesce` right after the cut.
    pub thaw: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// `vm create`.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A libvirt domain to protect as this VM (`--libvirt DOMAIN`): its
    /// disks become the VM's volumes (file disks imported into new volumes
    /// `VM-TARGET`, disks already on this site's exports kept) and its
    /// definition is kept; `volumes` and the power hooks must then be
    /// empty (quiesce and thaw hooks are allowed).
    pub libvirt: Option<String>,
    /// Quiesce hook (given with `thaw`, or neither).
    pub quiesce: Option<String>,
    /// Thaw hook (given with `quiesce`, or neither).
    pub thaw: Option<String>,
}

/// `vm set`: absent fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetVm {
    /// New start hook; an empty string removes it.
    pub start: Option<String>,
    /// New stop hook; an empty string removes it.
    pub stop: Option<String>,
    /// New status hook; an empty string removes it.
    pub status: Option<String>,
    /// New volumes, disk 0 first (refused while the VM is in a group).
    pub volumes: Option<Vec<String>>,
    /// New quiesce hook; an empty string removes it (and the VM must then
    /// be left with neither a quiesce nor a thaw hook, or both).
    pub quiesce: Option<String>,
    /// New thaw hook; an empty string removes it.
    pub thaw: Option<String>,
}

/// A libvirt VM's domain as this site's libvirt sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibvirtState {
    /// Defined here, in this state.
    Defined(offsite_hypervisor::DomainState),
    /// Not defined at this site (the VM runs at the partner, or was never
    /// started here).
    Undefined,
    /// libvirt did not answer.
    Unreachable,
}

impl LibvirtState {
    /// The word `vm show` prints and the API returns.
    pub fn as_str(self) -> &'static str {
        match self {
            LibvirtState::Defined(s) => s.as_str(),
            LibvirtState::Undefined => "undefined",
            LibvirtState::Unreachable => "unreachable",
        }
    }
}

/// `group key export`: a group's key, as one line of text (a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeyExport {
    /// The group.
    pub group: String,
    /// The key's id (a hash of it, not the key).
    pub key_id: String,
    /// The key's export line (`offsite-key-1:…`): whoever holds it can
    /// read the group's replicas.
    pub key: String,
}

/// `group key import`: the key this site now holds for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupKeyInfo {
    /// The group.
    pub group: String,
    /// The key's id.
    pub key_id: String,
}
