//! What replication puts inside `offsite-protocol` frames: the numbered
//! control requests (JSON bodies in [`Message::Request`]; typed, with their
//! replies and the changelog of kinds, in [`crate::control`]) and the
//! binary layout of block batches carried in [`Message::BulkData`]
//! payloads.
//!
//! A block batch payload (the frame already carries a BLAKE3 of its
//! payload, checked before the batch is applied):
//!
//! ```text
//! u8  version (1)      u8  flags (bit 0: the blocks are all zeroes; no data follows)
//! u16 volume index     u32 block count      u64 first block
//! count × block_size bytes of data (absent when flag 0 is set)
//! ```
//! All integers little-endian; version 0 is invalid.
//!
//! [`Message::Request`]: offsite_protocol::Message::Request
//! [`Message::BulkData`]: offsite_protocol::Message::BulkData

use serde::{Deserialize, Serialize};

/// Request kinds (u16 on the wire; never reuse a number).
pub mod kinds {
    pub use crate::kinds::AUTHZ_CHECK;
    /// Primary → replica: create the replica side of a group.
    pub const GROUP_CREATE: u16 = 2;
    /// Primary → replica: block batches that follow go to the base images.
    pub const BASE_BEGIN: u16 = 3;
    /// Primary → replica: make the base images durable (initial replication checkpoint).
    pub const BASE_SYNC: u16 = 4;
    /// Primary → replica: block batches that follow form a new PIT.
    pub const PIT_BEGIN: u16 = 5;
    /// Primary → replica: commit the PIT being received.
    pub const PIT_COMMIT: u16 = 6;
    /// Primary → replica: BLAKE3 of blocks of a PIT (verify).
    pub const HASHES: u16 = 7;
    /// Replica → primary: run a cycle now (a sync asked at the replica).
    pub const SYNC: u16 = 8;
    /// Primary → replica: delete the replica side of a group.
    pub const GROUP_DELETE: u16 = 9;
    /// Primary → replica: forget a PIT's name.
    pub const PIT_RELEASE: u16 = 10;
    /// Primary → replica: load a seed (carried there by hand) into the base images.
    pub const SEED_LOAD: u16 = 11;
    /// Either way: how is the group on your side ([`GroupView`])?
    pub const GROUP_QUERY: u16 = 12;
    /// Primary → replica: the group is prepared for failover ([`GroupPrepared`]).
    pub const GROUP_PREPARED: u16 = 13;
    /// New primary → old primary: become the group's replica
    /// ([`ReverseBegin`] → [`ReverseReady`]).
    pub const REVERSE_BEGIN: u16 = 14;
    /// Replica → primary: the group is torn down ([`GroupForget`]); the
    /// primary forgets it and keeps its volumes.
    pub const GROUP_FORGET: u16 = 15;
    /// Replica → primary: these blocks differ on the replica now; ship
    /// them again ([`MarkDirty`]).
    pub const MARK_DIRTY: u16 = 16;
    /// Primary → replica: block batches that follow are a sync group's
    /// writes in order, for its write log ([`SyncStreamBegin`]); each batch is
    /// acknowledged once durable there. The session ends the stream.
    pub const SYNC_STREAM_BEGIN: u16 = 17;
    /// Primary → replica, on a stream: seal the log as a PIT
    /// ([`SyncSeal`] → [`PitCommitted`]).
    pub const SYNC_SEAL: u16 = 18;
    /// Primary → replica: the group was converted ([`GroupSetMode`]).
    pub const GROUP_SET_MODE: u16 = 19;
    /// Primary → replica, on the partner monitor's schedule: the instants
    /// up to which the replica holds every write of idle groups
    /// ([`Confirmed`]), so lag reads the same at both sites although idle
    /// cycles commit no PIT.
    pub const GROUP_CONFIRMED: u16 = 20;
    /// Either way, when the partner monitor opens its session: where is
    /// your console ([`SiteQuery`] → [`SiteView`])? So that a console can
    /// link an action that runs at the other site to that site's console.
    pub const SITE_QUERY: u16 = 21;
    /// Primary → replica, on a stream only, never answered: a
    /// crash-consistent checkpoint at this point of the group's write
    /// order ([`SyncCheckpoint`]), appended to the replica's journal in
    /// stream order. Sent only to a replica whose answer to
    /// [`SYNC_STREAM_BEGIN`] said it takes them ([`SyncStreamBegun`]).
    pub const SYNC_CHECKPOINT: u16 = 22;
    /// Either way (the replica answers): what the group's journal can
    /// recover to ([`JournalQuery`] → [`JournalView`]), for
    /// `pit list --checkpoints` asked at the primary.
    pub const JOURNAL_QUERY: u16 = 23;
    /// The first kind answered by a service above replication
    /// ([`crate::RequestHandler`]); recovery plans use 40 and up
    /// (`offsite_plan::wire`).
    pub const EXTENSION_FIRST: u16 = 40;
}

/// [`kinds::SITE_QUERY`]: no fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteQuery {}

/// Answer to [`kinds::SITE_QUERY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteView {
    /// The answering site's name.
    pub name: String,
    /// Where its web console is served (its API listener's URL), if it
    /// serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_url: Option<String>,
}

/// [`kinds::GROUP_SET_MODE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupSetMode {
    /// Group name.
    pub group: String,
    /// `async` or `sync`.
    pub mode: String,
    /// `group set --rpo`: the replica's copy (absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_secs: Option<u64>,
    /// `group set --keep`: retention runs at the replica (absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<u32>,
    /// `group set --bandwidth`: the replica's copy, used once a reverse
    /// makes it the primary (0: unlimited; absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<u64>,
    /// `group set --compression` (absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<bool>,
    /// `vm set`: new hooks of the replica's copy of a VM of the group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmDesc>,
    /// `group set --app-consistent-every`: the replica's copy, the
    /// group's schedule once a reverse makes it the primary (0: off;
    /// absent: unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistent_every_secs: Option<u64>,
    /// `group set --checkpoint-interval/--journal-history/--journal-max-size`:
    /// the group's whole journal settings after the change (the replica
    /// keeps and prunes the journal by them; absent: unchanged; an older
    /// replica ignores them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalDesc>,
}

/// The journal settings of a streaming group, as sent to the replica
/// ([`GroupCreate::journal`], [`GroupSetMode::journal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalDesc {
    /// Milliseconds between the checkpoints the primary sends.
    pub checkpoint_interval_ms: u64,
    /// Seconds of history the replica keeps before the newest checkpoint.
    pub history_secs: u64,
    /// Most bytes of journal the replica keeps, whatever the history.
    pub max_bytes: u64,
}

impl JournalDesc {
    /// The settings of a catalog row.
    pub fn of(j: &offsite_catalog::JournalSettings) -> JournalDesc {
        JournalDesc {
            checkpoint_interval_ms: j.checkpoint_interval_ms,
            history_secs: j.history_secs,
            max_bytes: j.max_bytes,
        }
    }

    /// As a catalog row's.
    pub fn to_settings(self) -> offsite_catalog::JournalSettings {
        offsite_catalog::JournalSettings {
            checkpoint_interval_ms: self.checkpoint_interval_ms,
            history_secs: self.history_secs,
            max_bytes: self.max_bytes,
        }
    }
}

/// [`kinds::SYNC_CHECKPOINT`]: a checkpoint after every write queued
/// before it on the stream (the stream is the group's write order, so its
/// image is a prefix of it: crash-consistent without a cut).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncCheckpoint {
    /// Group name.
    pub group: String,
    /// The primary's time when it was queued, nanoseconds since the Unix
    /// epoch (the journal keeps times from going back).
    pub time_ns: u64,
    /// Taken with the group's VMs quiesced; left out when false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub app_consistent: bool,
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Answer to [`kinds::SYNC_STREAM_BEGIN`]: what this replica takes on the
/// stream. An older replica answers with an empty body, which decodes as
/// all `false` (so it is sent no checkpoints).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncStreamBegun {
    /// The replica appends [`SyncCheckpoint`]s to its journal.
    #[serde(default)]
    pub checkpoints: bool,
}

/// Answer to [`kinds::PIT_BEGIN`]: how this replica takes the PIT's
/// block batches. An older replica answers with an empty body ([`Done`]
/// then), which decodes as all `false` (so it is sent one run per batch,
/// [`encode_batch`]).
///
/// [`Done`]: crate::control::Done
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitBegun {
    /// The replica takes *record batches*: many runs in one batch, each a
    /// write-log record with its own CRC32C
    /// (`offsite_replica_store::encode_record`), which it checks before it
    /// uses a byte, so the frame may go without its BLAKE3 hash where the
    /// session negotiated `SELF_CHECKED_BULK`.
    #[serde(default)]
    pub record_batches: bool,
}

/// [`kinds::JOURNAL_QUERY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalQuery {
    /// Group name.
    pub group: String,
    /// List every reachable checkpoint, not only the summary.
    #[serde(default, skip_serializing_if = "is_false")]
    pub every: bool,
}

/// A journal checkpoint on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointDesc {
    /// Its id in the group's journal.
    pub id: u64,
    /// The primary's time, nanoseconds since the Unix epoch.
    pub time_ns: u64,
    /// `crash` or `application`.
    pub consistency: String,
    /// Optional name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The PIT its image replays the journal from (absent: the base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<u64>,
}

impl CheckpointDesc {
    /// The description of a checkpoint of the store.
    pub fn of(c: &offsite_replica_store::CheckpointInfo) -> CheckpointDesc {
        CheckpointDesc {
            id: c.id.get(),
            time_ns: c.time_ns,
            consistency: match c.consistency {
                offsite_replica_store::Consistency::Crash => "crash",
                offsite_replica_store::Consistency::Application => "application",
            }
            .into(),
            name: c.name.clone(),
            follows: c.follows.map(|p| p.get()),
        }
    }
}

/// Answer to [`kinds::JOURNAL_QUERY`]: what the group's journal at the
/// replica can recover to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalView {
    /// Reachable checkpoints.
    pub count: u64,
    /// Of them, application-consistent ones.
    pub application_consistent: u64,
    /// The oldest reachable one.
    pub oldest: Option<CheckpointDesc>,
    /// The newest one.
    pub newest: Option<CheckpointDesc>,
    /// Journal files.
    pub files: u64,
    /// Their bytes on disk.
    pub bytes: u64,
    /// Every reachable checkpoint, oldest first (asked with `every`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<CheckpointDesc>,
}

impl JournalView {
    /// The view of a store's listing.
    pub fn of(list: &offsite_replica_store::CheckpointList) -> JournalView {
        let s = &list.summary;
        JournalView {
            count: s.count,
            application_consistent: s.application_consistent,
            oldest: s.oldest.as_ref().map(CheckpointDesc::of),
            newest: s.newest.as_ref().map(CheckpointDesc::of),
            files: s.files,
            bytes: s.bytes,
            checkpoints: list.checkpoints.iter().map(CheckpointDesc::of).collect(),
        }
    }

    /// The window a seal's answer carries ([`PitCommitted::journal`]).
    pub fn window(&self) -> Option<JournalWindow> {
        Some(JournalWindow {
            oldest_ns: self.oldest.as_ref()?.time_ns,
            newest_ns: self.newest.as_ref()?.time_ns,
            count: self.count,
        })
    }
}

/// The journal window of a group: the oldest and newest reachable
/// checkpoint times (the primary's clock, nanoseconds since the Unix
/// epoch) and how many checkpoints lie between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalWindow {
    /// The oldest reachable checkpoint's time.
    pub oldest_ns: u64,
    /// The newest one's.
    pub newest_ns: u64,
    /// Reachable checkpoints.
    pub count: u64,
}

/// [`kinds::MARK_DIRTY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MarkDirty {
    /// Group name.
    pub group: String,
    /// Per volume, in group order.
    pub blocks: Vec<Vec<u32>>,
}

/// Answer to [`kinds::GROUP_QUERY`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupView {
    /// `primary` or `replica`.
    pub role: String,
    /// Replication state.
    pub state: String,
    /// The partner this site replicates the group with.
    pub partner: String,
    /// Primary: bytes written that no committed PIT holds.
    #[serde(default)]
    pub unreplicated_bytes: u64,
    /// Primary: bytes written while the group could not replicate (the
    /// split-brain evidence).
    #[serde(default)]
    pub isolated_bytes: u64,
    /// The newest PIT this site knows committed.
    #[serde(default)]
    pub newest_pit: Option<u64>,
}

/// [`kinds::GROUP_PREPARED`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupPrepared {
    /// Group name.
    pub group: String,
    /// The final PIT (`planned-failover`); 0 when the primary cancelled
    /// the preparation (`failover revert`).
    pub pit: u64,
}

/// [`kinds::REVERSE_BEGIN`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReverseBegin {
    /// Group name.
    pub group: String,
    /// The PIT the new primary was promoted from.
    pub pit: u64,
    /// The operator chose to discard the old primary's isolated writes
    /// (`reverse --discard-changes-on OLD-PRIMARY`); they are kept there
    /// as a named PIT.
    #[serde(default)]
    pub discard_isolated: bool,
    /// The newest PIT id of the group the new primary knows (its store
    /// held it as the replica): the old primary's new store numbers its
    /// PITs after it, so ids never restart within a group's life (absent
    /// from older sites: 0).
    #[serde(default)]
    pub last_pit: u64,
}

/// Answer to [`kinds::REVERSE_BEGIN`]: the old primary is the replica now.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReverseReady {
    /// Per volume (group order): the blocks the old primary changed that
    /// never reached a committed PIT, which the new primary must overwrite.
    pub unreplicated: Vec<Vec<u32>>,
    /// Where the old primary keeps the replica store now.
    pub store_dir: String,
    /// The PIT there that keeps its discarded divergent state, if any.
    #[serde(default)]
    pub kept_as_pit: Option<String>,
    /// The old primary's own replica store from before the failover took
    /// the replica's role back, with its history: its newest PIT (not its
    /// base) holds the old primary's data (absent from older sites: false).
    #[serde(default)]
    pub resumed: bool,
    /// Every PIT the replica holds now, oldest first (absent from older
    /// sites, whose new store holds none yet).
    #[serde(default)]
    pub pits: Vec<PitDesc>,
    /// The old primary's bandwidth limit of the group (0: unlimited): the
    /// new primary replicates under it (absent from older sites: the new
    /// primary keeps its own copy).
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// The old primary's compression setting, likewise.
    #[serde(default)]
    pub compress: Option<bool>,
}

/// [`kinds::SEED_LOAD`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedLoad {
    /// Group name.
    pub group: String,
    /// Seed directory on the replica (written by `group export-seed`).
    pub path: String,
}

/// `seed.json`, written by `group export-seed` beside the volume images.
///
/// Format version 1. The images are raw and sparse; the replica checks
/// names and geometry against the group, and the seeded initial
/// replication compares every block by BLAKE3 anyway, so a stale or damaged
/// seed costs transfer, never correctness.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedManifest {
    /// Format version (1).
    pub format_version: u32,
    /// Group name.
    pub group: String,
    /// Primary site.
    pub primary: String,
    /// RFC 3339 time of the export.
    pub created_at: String,
    /// Volumes with their image file names (relative to the manifest).
    pub volumes: Vec<SeedVolume>,
}

/// A volume of a seed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedVolume {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Image file name.
    pub file: String,
}

/// [`kinds::PIT_RELEASE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PitRelease {
    /// Group name.
    pub group: String,
    /// PIT id or name.
    pub pit: String,
}

/// Volume of a group as the replica records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeDesc {
    /// Name at the primary.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Bytes the primary's data file occupies (a thin volume's footprint);
    /// absent from older primaries, which means "the whole size".
    #[serde(default)]
    pub allocated_bytes: Option<u64>,
}

/// [`kinds::GROUP_CREATE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupCreate {
    /// Group name.
    pub group: String,
    /// `async` or `sync`.
    pub mode: String,
    /// RPO in seconds.
    pub rpo_secs: u64,
    /// PITs kept.
    pub keep: u32,
    /// Security tag the group presents.
    pub security_tag: Option<String>,
    /// Sync mode: what happens to writes when the link is lost (kept on
    /// both sites, so a reverse keeps it).
    #[serde(default = "default_on_link_loss")]
    pub on_link_loss: String,
    /// Sync mode, `suspend-writes`: seconds a write waits.
    #[serde(default = "default_suspend_timeout")]
    pub suspend_timeout_secs: u64,
    /// Volumes in order.
    pub volumes: Vec<VolumeDesc>,
    /// VMs of the group, in start order (hooks run at failover on the
    /// replica); absent from older primaries.
    #[serde(default)]
    pub vms: Vec<VmDesc>,
    /// Bandwidth limit in bytes per second (`None`: unlimited), kept by
    /// the replica so that a reverse replicates under the same limit;
    /// absent from older primaries.
    #[serde(default)]
    pub bandwidth: Option<u64>,
    /// Whether batches are compressed (kept for a reverse as well); older
    /// primaries omit it and compressed by default.
    #[serde(default = "default_compress")]
    pub compress: bool,
    /// Seconds between the application-consistent PITs the primary takes
    /// by itself (kept for a reverse as well); 0 (off) is left out, and
    /// older primaries omit it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub app_consistent_every_secs: u64,
    /// The journal a streaming group keeps at the replica (absent: the
    /// defaults; older primaries omit it, older replicas ignore it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalDesc>,
    /// The group's PITs so far end at this id (a group re-created at a
    /// rebuilt partner): the new store numbers its PITs after it, so a
    /// group's PIT ids never start again at 1. 0 (left out): a new group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pits_after: u64,
    /// The group's key (its export line, `offsite-key-1:…`) when its
    /// replicas are encrypted: the replica keeps it and seals every object
    /// of the store with it. Left out for a plain group; an older replica
    /// ignores it, so the primary requires [`GroupCreated::encrypted`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<KeyLine>,
}

/// A group key's export line on the wire (a secret): serialized as the
/// plain string, left out of `Debug` so that no log shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyLine(pub String);

impl std::fmt::Debug for KeyLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyLine(<redacted>)")
    }
}

fn default_compress() -> bool {
    true
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn default_on_link_loss() -> String {
    "degrade".into()
}

fn default_suspend_timeout() -> u64 {
    30
}

/// A VM of a group: its volumes (names at the primary, disk 0 first) and
/// hook commands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmDesc {
    /// VM name.
    pub name: String,
    /// Volume names, disk 0 first.
    pub volumes: Vec<String>,
    /// Start hook.
    pub start: Option<String>,
    /// Stop hook.
    pub stop: Option<String>,
    /// Status hook.
    pub status: Option<String>,
    /// The libvirt domain's XML as its home site keeps it (the recovery
    /// site defines the domain from it); absent for hook VMs and from
    /// older sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub libvirt_xml: Option<String>,
    /// Quiesce hook (run before an application-consistent checkpoint's
    /// cut), so that the site that becomes the primary has it; absent
    /// when there is none and from older sites.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiesce: Option<String>,
    /// Thaw hook (run right after that cut); as `quiesce`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thaw: Option<String>,
}

impl VmDesc {
    /// The catalog row kept with the group on either site.
    pub fn to_row(&self) -> offsite_catalog::VmRow {
        offsite_catalog::VmRow {
            name: self.name.clone(),
            volumes: self.volumes.clone(),
            start_cmd: self.start.clone(),
            stop_cmd: self.stop.clone(),
            status_cmd: self.status.clone(),
            libvirt_xml: self.libvirt_xml.clone(),
            quiesce_cmd: self.quiesce.clone(),
            thaw_cmd: self.thaw.clone(),
            created_at: String::new(),
        }
    }

    /// The description of a VM's catalog row.
    pub fn of_row(vm: &offsite_catalog::VmRow) -> VmDesc {
        VmDesc {
            name: vm.name.clone(),
            volumes: vm.volumes.clone(),
            start: vm.start_cmd.clone(),
            stop: vm.stop_cmd.clone(),
            status: vm.status_cmd.clone(),
            libvirt_xml: vm.libvirt_xml.clone(),
            quiesce: vm.quiesce_cmd.clone(),
            thaw: vm.thaw_cmd.clone(),
        }
    }
}

/// Answer to [`kinds::GROUP_CREATE`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupCreated {
    /// Where the replica keeps the group.
    pub store_dir: String,
    /// The authorization rule that admitted it.
    pub rule: String,
    /// The replica keeps the group's key and its store is encrypted
    /// (answers [`GroupCreate::key`]; an older replica leaves it out, and
    /// the primary then undoes the group rather than replicate in the
    /// clear).
    #[serde(default, skip_serializing_if = "is_false")]
    pub encrypted: bool,
}

/// [`kinds::GROUP_DELETE`]: the group's name, and whether the replica
/// deletes its store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupDelete {
    /// Group name.
    pub group: String,
    /// `group teardown --delete-replica`: the replica deletes its store
    /// and PITs instead of keeping them aside (absent: keep them).
    #[serde(default)]
    pub delete_replica: bool,
}

/// A body naming a group; each kind that only names one has its own type
/// with this JSON (`{"group": NAME}`), so that its [`crate::control::Rpc`]
/// says its kind and reply.
macro_rules! group_bodies {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        pub struct $name {
            /// Group name.
            pub group: String,
        }

        impl $name {
            /// The body naming `group`.
            pub fn new(group: impl Into<String>) -> Self {
                Self { group: group.into() }
            }
        }
    )*};
}

group_bodies! {
    /// [`kinds::BASE_BEGIN`].
    BaseBegin;
    /// [`kinds::BASE_SYNC`].
    BaseSync;
    /// [`kinds::PIT_BEGIN`].
    PitBegin;
    /// [`kinds::GROUP_QUERY`].
    GroupQuery;
    /// [`kinds::SYNC_STREAM_BEGIN`].
    SyncStreamBegin;
}

/// [`kinds::GROUP_FORGET`]: the replica tore the group down (the same
/// JSON as [`GroupDelete`]; the primary has no replica store to delete, so
/// it reads `group` only).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupForget {
    /// Group name.
    pub group: String,
    /// As in [`GroupDelete`] (sent, not used by the primary).
    #[serde(default)]
    pub delete_replica: bool,
}

/// [`kinds::SYNC_SEAL`]: a [`PitCommit`] (with no block count) on a
/// sync stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SyncSeal(pub PitCommit);

/// Answer to [`crate::kinds::AUTHZ_CHECK`]: the replica would accept the
/// group (the JSON of the REST `AuthzCheckResult`, which is built from it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthzGrant {
    /// The site that answered.
    pub partner: String,
    /// Where it would keep the replica.
    pub storage_location: String,
    /// The authorization rule that admits the primary.
    pub rule: String,
}

/// [`kinds::GROUP_CONFIRMED`]: per group, the RFC 3339 instant up to which
/// the replica holds every write (its newest PIT plus no change since).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirmed {
    /// `(group, instant)` pairs.
    pub groups: Vec<(String, String)>,
}

/// [`kinds::PIT_COMMIT`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PitCommit {
    /// Group name.
    pub group: String,
    /// Name of the PIT, if named (`sync --pit-name`).
    pub name: Option<String>,
    /// RFC 3339 time of the cut.
    pub created_at: String,
    /// Blocks the primary sent (the replica checks it received them all).
    pub blocks: u64,
    /// The cut was taken while every VM of the group was quiesced or
    /// cleanly stopped: the replica marks the PIT app-consistent. Left
    /// out when false; an older replica ignores it (the primary marks
    /// the PIT in its own catalog anyway).
    #[serde(default, skip_serializing_if = "is_false")]
    pub app_consistent: bool,
}

/// A PIT on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitDesc {
    /// Id.
    pub id: u64,
    /// Name.
    pub name: Option<String>,
    /// RFC 3339 time of the cut.
    pub created_at: String,
    /// Bytes of data in its segments.
    pub bytes: u64,
    /// Application-consistent (see [`PitCommit::app_consistent`]), so
    /// that both sites' catalogs agree; left out when false and by older
    /// sites.
    #[serde(default, skip_serializing_if = "is_false")]
    pub app_consistent: bool,
}

impl PitDesc {
    /// The catalog's row of this PIT.
    pub fn to_row(&self) -> offsite_catalog::PitRow {
        offsite_catalog::PitRow {
            id: self.id,
            name: self.name.clone(),
            created_at: self.created_at.clone(),
            bytes: self.bytes,
            app_consistent: self.app_consistent,
        }
    }

    /// The wire form of a catalog row.
    pub fn of_row(p: &offsite_catalog::PitRow) -> PitDesc {
        PitDesc {
            id: p.id,
            name: p.name.clone(),
            created_at: p.created_at.clone(),
            bytes: p.bytes,
            app_consistent: p.app_consistent,
        }
    }
}

/// Answer to [`kinds::PIT_COMMIT`]: the new PIT and every PIT the replica
/// now holds (after retention), oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PitCommitted {
    /// The PIT just committed.
    pub pit: PitDesc,
    /// All PITs held.
    pub pits: Vec<PitDesc>,
    /// When the group's last successful test drill at the replica ended
    /// (RFC 3339), so the primary's status shows it too. Absent from
    /// older replicas' answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill_at: Option<String>,
    /// The group's journal window after this commit (streaming groups
    /// with history), so the primary's status shows it without asking.
    /// Absent from older replicas' answers and where there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalWindow>,
}

impl PitCommitted {
    /// Marks the PIT just committed app-consistent, as the primary knows
    /// it is (an older replica's answer does not carry the mark).
    pub(crate) fn mark_app_consistent(&mut self) {
        self.pit.app_consistent = true;
        for p in self.pits.iter_mut().filter(|p| p.id == self.pit.id) {
            p.app_consistent = true;
        }
    }

    /// Primary: records what the replica answered — the PITs it holds
    /// now and its last drill. Blocking: writes the catalog.
    pub(crate) fn record(
        &self,
        site: &offsite_engine::Site,
        group: &str,
    ) -> Result<(), offsite_engine::EngineError> {
        let pits: Vec<offsite_catalog::PitRow> = self.pits.iter().map(PitDesc::to_row).collect();
        site.groups().replace_pits(group, &pits)?;
        if let Some(at) = &self.last_drill_at {
            site.groups().set_last_drill(group, at)?;
        }
        Ok(())
    }
}

/// [`kinds::HASHES`]: answer is `count` × 32 raw bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hashes {
    /// Group name.
    pub group: String,
    /// PIT to hash (`None`: newest).
    pub pit: Option<u64>,
    /// Volume index.
    pub volume: u16,
    /// First block.
    pub first: u64,
    /// Number of blocks.
    pub count: u64,
    /// Hash the base images instead of a PIT (seeded initial replication).
    #[serde(default)]
    pub base: bool,
}

/// [`kinds::SYNC`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncRequest {
    /// Group name.
    pub group: String,
    /// PIT name.
    pub pit_name: Option<String>,
    /// Wait for the PIT (else answer once the cycle started).
    pub wait: bool,
    /// `sync --quiesce`: quiesce the group's VMs around the cut (left out
    /// when false; an older primary ignores it and its PIT is not marked).
    #[serde(default, skip_serializing_if = "is_false")]
    pub quiesce: bool,
}

/// Answer to [`kinds::SYNC`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncDone {
    /// The PIT committed, if waited for.
    pub pit: Option<PitDesc>,
    /// With `quiesce`: what failed (the PIT is then crash-consistent, or a
    /// VM may still be quiesced); left out when nothing did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// A decoded block batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch<'a> {
    /// Volume index in the group.
    pub volume: u16,
    /// First block.
    pub first: u64,
    /// Number of blocks.
    pub count: u32,
    /// Data (`None`: all zero).
    pub data: Option<&'a [u8]>,
}

const BATCH_VERSION: u8 = 1;
/// Bytes of a block batch's header, before its data.
pub const BATCH_HEADER: usize = 16;
const HEADER: usize = BATCH_HEADER;

/// Encodes a batch header followed by `data` (empty for a zero batch).
pub fn encode_batch(volume: u16, first: u64, count: u32, data: Option<&[u8]>) -> Vec<u8> {
    let mut out = vec![0u8; HEADER];
    write_batch_header(&mut out, volume, first, count, data.is_none());
    if let Some(d) = data {
        out.extend_from_slice(d);
    }
    out
}

/// Writes a batch header into the first [`BATCH_HEADER`] bytes of `out`
/// (a data batch whose blocks were read straight into the bytes after it:
/// no copy of the data to encode it).
pub fn write_batch_header(out: &mut [u8], volume: u16, first: u64, count: u32, zero: bool) {
    out[0] = BATCH_VERSION;
    out[1] = u8::from(zero);
    out[2..4].copy_from_slice(&volume.to_le_bytes());
    out[4..8].copy_from_slice(&count.to_le_bytes());
    out[8..16].copy_from_slice(&first.to_le_bytes());
}

/// Why a block batch does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchDecodeError {
    /// Fewer bytes than the header.
    #[error("block batch of {0} bytes is shorter than its header")]
    Short(usize),
    /// A batch version this build does not read.
    #[error("block batch version {0} is not supported")]
    Version(u8),
    /// Flags this build does not know.
    #[error("block batch has unknown flags {0:#x}")]
    Flags(u8),
    /// A batch of no blocks.
    #[error("block batch with no blocks")]
    Empty,
    /// A zero batch followed by data.
    #[error("zero block batch carries data")]
    ZeroWithData,
}

/// Whether `payload` is a *record batch* ([`PitBegun::record_batches`]):
/// write-log records (`offsite_replica_store::decode_records`), which
/// start with their magic `OLRC`, where a batch of one run starts with its
/// version byte, 1.
pub fn is_record_batch(payload: &[u8]) -> bool {
    payload.starts_with(b"OLRC")
}

/// Decodes a batch; `block_size` of the volume is checked by the caller
/// through [`Batch::data`]'s length.
pub fn decode_batch(payload: &[u8]) -> Result<Batch<'_>, BatchDecodeError> {
    if payload.len() < HEADER {
        return Err(BatchDecodeError::Short(payload.len()));
    }
    if payload[0] != BATCH_VERSION {
        return Err(BatchDecodeError::Version(payload[0]));
    }
    let flags = payload[1];
    if flags & !1 != 0 {
        return Err(BatchDecodeError::Flags(flags));
    }
    let volume = u16::from_le_bytes([payload[2], payload[3]]);
    let count = u32::from_le_bytes(payload[4..8].try_into().unwrap_or_default());
    let first = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
    if count == 0 {
        return Err(BatchDecodeError::Empty);
    }
    let rest = &payload[HEADER..];
    let data = if flags & 1 == 1 {
        if !rest.is_empty() {
            return Err(BatchDecodeError::ZeroWithData);
        }
        None
    } else {
        Some(rest)
    };
    Ok(Batch {
        volume,
        first,
        count,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn golden_header() {
        let b = encode_batch(2, 0x0102, 3, None);
        assert_eq!(b, [1, 1, 2, 0, 3, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn round_trip(volume: u16, first: u64, count in 1u32..64, data in prop::option::of(prop::collection::vec(any::<u8>(), 0..256))) {
            let bytes = encode_batch(volume, first, count, data.as_deref());
            let b = decode_batch(&bytes).unwrap();
            prop_assert_eq!(b, Batch { volume, first, count, data: data.as_deref() });
        }

        #[test]
        fn never_panics(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_batch(&bytes);
        }
    }
}
