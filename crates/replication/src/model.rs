//! What the replication service reports and is asked, as domain types:
//! the api crate maps them to and from the REST bodies of
//! `offsite-api-types`, so this crate does not depend on the HTTP contract.

use offsite_catalog::{GroupState, Mode, Role, SyncState};
use serde::{Deserialize, Serialize};

/// Most unnamed PITs a group keeps (`--keep`): far beyond any retention an
/// RPO of 30 s to 24 h calls for (the API document states the same bound).
pub const MAX_KEEP: u32 = 100_000;

/// One group's figures for `/metrics` ([`crate::Replication::group_metrics`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMetrics {
    /// Group name.
    pub group: String,
    /// This site's role in the group.
    pub role: Role,
    /// Seconds since the replica last held every acknowledged write (0 for
    /// a sync group in sync).
    pub lag_seconds: u64,
    /// Continuous group at its primary: how long the replica has been
    /// missing writes, in milliseconds (see `GroupStatus::continuous_lag_seconds`).
    pub continuous_lag_ms: Option<u64>,
    /// Changed bytes not yet in a PIT (primary; 0 on the replica and for a
    /// sync group in sync).
    pub pending_bytes: u64,
    /// PITs held.
    pub pits: u64,
    /// Replication cycles attempted.
    pub cycles: u64,
    /// Replication cycles that failed.
    pub cycle_errors: u64,
    /// Data bytes shipped by the last successful cycle.
    pub last_cycle_bytes: u64,
    /// Duration of the last successful cycle in milliseconds (second
    /// resolution).
    pub last_cycle_duration_ms: u64,
    /// Data bytes the group moved to its replica, every kind together.
    pub sent_bytes: u64,
    /// The write stream's counters: a sync group at its primary while its
    /// runner runs.
    pub sync: Option<SyncMetrics>,
}

/// The counters of a sync group's write stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncMetrics {
    /// Every write reaches the replica's log before it is acknowledged.
    pub in_sync: bool,
    /// Continuous group: queues dropped for outgrowing
    /// `replication.continuous_queue_bytes` (each then resynchronized).
    pub spills: u64,
    /// Batches the replica acknowledged.
    pub batches: u64,
    /// Writes the replica acknowledged.
    pub writes: u64,
    /// Times the partner was lost.
    pub link_losses: u64,
    /// Writes failed by `suspend-writes` after their timeout.
    pub failed_writes: u64,
}

/// `group status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// `async` or `sync`.
    pub mode: Mode,
    /// `primary` or `replica` (this site's role).
    pub role: Role,
    /// Replication state.
    pub state: GroupState,
    /// `normal`, `warning` or `critical`.
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
    /// lost; writes are tracked) or `suspended` (writes wait); null for
    /// async groups and at the replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<SyncState>,
    /// Sync mode: what happens to writes when the partner is lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// When the group's last successful test drill ended (RFC 3339); the
    /// replica records it, the primary learns it with each PIT commit.
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
    /// replica does not have yet (ms resolution): 0 when it acknowledged
    /// every write, else the age of the oldest write it has not; while
    /// spilled or resynchronizing, the age of the newest PIT.
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
    /// by itself (`--app-consistent-every`); null when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_consistent_every_seconds: Option<u64>,
    /// Primary: why the last application-consistent checkpoint came out
    /// crash-consistent (a quiesce hook failed, a VM has none, ...) or
    /// left a VM possibly quiesced (its thaw hook failed),
    /// until one succeeds; health is at least `warning` meanwhile.
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JournalStatus {
    /// Milliseconds between checkpoints (`--checkpoint-interval`).
    pub checkpoint_interval_ms: u64,
    /// Seconds of history kept (`--journal-history`).
    pub history_seconds: u64,
    /// Most bytes of journal kept (`--journal-max-size`).
    pub max_bytes: u64,
    /// The oldest reachable checkpoint's time (RFC 3339, the primary's
    /// clock): at the replica from its store, at the primary as the
    /// replica last reported it (at its last seal); null when unknown.
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

impl JournalStatus {
    /// The status of a row's settings and a window, if known.
    pub(crate) fn of(
        j: &offsite_catalog::JournalSettings,
        window: Option<crate::wire::JournalWindow>,
    ) -> JournalStatus {
        JournalStatus {
            checkpoint_interval_ms: j.checkpoint_interval_ms,
            history_seconds: j.history_secs,
            max_bytes: j.max_bytes,
            oldest_checkpoint_at: window.map(|w| rfc3339_ns(w.oldest_ns)),
            newest_checkpoint_at: window.map(|w| rfc3339_ns(w.newest_ns)),
            checkpoints: window.map(|w| w.count),
        }
    }
}

/// Nanoseconds since the Unix epoch as RFC 3339 (UTC, with the fraction).
pub(crate) fn rfc3339_ns(ns: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// `pit list GROUP --checkpoints`: what the group's journal can recover to.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    /// Every reachable checkpoint, oldest first (asked with `--all`).
    #[serde(default)]
    pub checkpoints: Vec<CheckpointEntry>,
}

impl JournalListing {
    pub(crate) fn of(
        row: &offsite_catalog::GroupRow,
        site: &str,
        v: crate::wire::JournalView,
    ) -> JournalListing {
        JournalListing {
            group: row.name.clone(),
            site: site.to_string(),
            count: v.count,
            application_consistent: v.application_consistent,
            oldest: v.oldest.as_ref().map(CheckpointEntry::of),
            newest: v.newest.as_ref().map(CheckpointEntry::of),
            files: v.files,
            bytes: v.bytes,
            checkpoints: v.checkpoints.iter().map(CheckpointEntry::of).collect(),
        }
    }
}

/// One journal checkpoint as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

impl CheckpointEntry {
    fn of(c: &crate::wire::CheckpointDesc) -> CheckpointEntry {
        CheckpointEntry {
            id: c.id,
            time: rfc3339_ns(c.time_ns),
            time_ns: c.time_ns,
            consistency: c.consistency.clone(),
            name: c.name.clone(),
        }
    }
}

/// A PIT reference in `group status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

/// Progress of a running transfer, in bytes of data.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

/// Result of `verify`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyVolume {
    /// Volume name.
    pub name: String,
    /// Blocks compared.
    pub blocks_compared: u64,
    /// Blocks that differ.
    pub differing_blocks: u64,
}

/// `group measure` (Measure-VMReplication's figures).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// A PIT in `pit list` (oldest first).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitEntry {
    /// PIT id.
    pub id: u64,
    /// Name, if named.
    pub name: Option<String>,
    /// RFC 3339 time of the cut.
    pub created_at: String,
    /// Bytes shipped for it.
    pub bytes: u64,
    /// Cut while every VM of the group was quiesced or cleanly stopped
    /// (mounts without journal replay); otherwise crash-consistent.
    #[serde(default)]
    pub app_consistent: bool,
}

/// Result of `sync`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncResult {
    /// Group name.
    pub group: String,
    /// The PIT committed (null with --no-wait).
    pub pit: Option<PitEntry>,
    /// With `--quiesce`: the quiesce and thaw hooks run, in order (at the
    /// primary; empty when the replica forwarded the sync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookReport>,
    /// With `--quiesce`: what failed — why the PIT is crash-consistent, or
    /// a thaw hook that failed (its VM may still be quiesced). The PIT is
    /// committed either way; the CLI exits 1 when this is not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

/// One volume of a PIT served over NBD.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExportedVolume {
    /// The volume's name at the primary.
    pub name: String,
    /// NBD export name.
    pub export: String,
    /// NBD URL to use now.
    pub url: String,
}

/// One hook run during a failover.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
    /// With `--at TIME`: the consistent point chosen (a journal checkpoint
    /// or a PIT); `pit` is then the PIT its image starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<RecoveryPoint>,
}

/// What kind of consistent point a recovery to a time used.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    /// A PIT of the replica store.
    Pit,
    /// A checkpoint of the group's journal (a sync or continuous group).
    Checkpoint,
}

impl PointKind {
    /// `pit` or `checkpoint`.
    pub fn as_str(self) -> &'static str {
        match self {
            PointKind::Pit => "pit",
            PointKind::Checkpoint => "checkpoint",
        }
    }
}

/// The consistent point a recovery to `--at TIME` chose: the newest PIT
/// or journal checkpoint at or before that time.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// PIT or checkpoint.
    pub kind: PointKind,
    /// Its id (PIT id or checkpoint id).
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
    /// How long before the time asked for the point lies (0: exactly then).
    pub before_requested_ms: u64,
}

/// What each site of a group wrote since they diverged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitBrain {
    /// One entry per site.
    pub sites: Vec<SplitBrainSide>,
    /// The site whose changes are (or would be) discarded, if chosen.
    pub discarded_on: Option<String>,
    /// The named PIT that keeps the loser's state, once resolved.
    pub kept_as_pit: Option<String>,
}

/// One site of a [`SplitBrain`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SplitBrainSide {
    /// Site name.
    pub site: String,
    /// Its data generation: the PIT its data descends from, and how.
    pub generation: String,
    /// Bytes it wrote since the divergence; what choosing it as the loser
    /// throws away (kept as a named PIT on it).
    pub written_bytes: u64,
}

/// Result of `reverse`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitExport {
    /// Group name.
    pub group: String,
    /// PIT id (exported at a checkpoint: the PIT its image starts from).
    pub pit: u64,
    /// The PIT's volumes, read-only.
    pub volumes: Vec<ExportedVolume>,
    /// With `--at TIME`: the consistent point exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<RecoveryPoint>,
}

/// Result of `pit check`: every PIT's own blocks read back and compared
/// with the BLAKE3 hashes recorded when it was committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PitCheck {
    /// Group name.
    pub group: String,
    /// One entry per PIT, oldest first.
    pub pits: Vec<PitCheckEntry>,
    /// PITs whose data does not match their checksums.
    pub damaged: u64,
}

/// One PIT of a [`PitCheck`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

/// Result of `group export-seed`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
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

/// The partner's answer to an authorization check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuthzCheckResult {
    /// Partner asked.
    pub partner: String,
    /// Storage location the partner would use.
    pub storage_location: String,
    /// The rule that matched on the partner.
    pub rule: String,
}

/// Result of `partner test`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
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

/// `group create`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateGroup {
    /// Group name (the same on both sites).
    pub name: String,
    /// Replica site (a partner).
    pub partner: String,
    /// VMs whose volumes form the group (in order).
    #[serde(default)]
    pub vms: Vec<String>,
    /// Volumes of the group (after the VMs' volumes).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// `async` or `sync`, as asked: [`crate::Replication::create_group`]
    /// checks it in its order of checks.
    pub mode: String,
    /// RPO in seconds (30 s to 24 h).
    pub rpo_secs: u64,
    /// PITs to keep (besides named ones).
    pub keep: u32,
    /// Bandwidth limit of the group's bulk traffic, bytes/s.
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// zstd on the wire (default true).
    pub compress: Option<bool>,
    /// Security tag presented to the replica's authorization entry.
    pub security_tag: Option<String>,
    /// Sync mode: `degrade` (default) or `suspend-writes`.
    #[serde(default)]
    pub on_link_loss: Option<String>,
    /// Sync mode, `suspend-writes`: seconds a write waits for the partner
    /// before it fails (default 30).
    #[serde(default)]
    pub suspend_timeout_secs: Option<u64>,
    /// Seconds between application-consistent PITs the runner takes by
    /// itself (0 or absent: none; 1 min to 30 days).
    #[serde(default)]
    pub app_consistent_every_secs: Option<u64>,
    /// Streaming groups: milliseconds between journal checkpoints
    /// (100 ms to 1 h; default 1 s).
    #[serde(default)]
    pub checkpoint_interval_ms: Option<u64>,
    /// Seconds of journal history the replica keeps (default 24 h).
    #[serde(default)]
    pub journal_history_secs: Option<u64>,
    /// Most bytes of journal the replica keeps (default 10 GiB).
    #[serde(default)]
    pub journal_max_bytes: Option<u64>,
    /// Encrypt the group's replicas at rest with a key made for it here
    /// (kept at this site and the replica, see `offsite_engine::objects`).
    #[serde(default)]
    pub encrypt: bool,
}

/// `group set`: changes of a group's settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetGroup {
    /// Convert to `async` or `sync` (no new initial replication), as asked:
    /// [`crate::Replication::set_group`] checks it in its order of checks.
    #[serde(default)]
    pub mode: Option<String>,
    /// New RPO in seconds (30 s to 24 h); the replica keeps a copy.
    #[serde(default)]
    pub rpo_secs: Option<u64>,
    /// New number of unnamed PITs kept (retention runs at the replica).
    #[serde(default)]
    pub keep: Option<u32>,
    /// New bandwidth limit in bytes per second (0: unlimited).
    #[serde(default)]
    pub bandwidth_bytes_per_sec: Option<u64>,
    /// zstd on the wire (`true`) or no compression.
    #[serde(default)]
    pub compress: Option<bool>,
    /// Seconds between application-consistent PITs the runner takes by
    /// itself (0: none; 1 min to 30 days); the replica keeps a copy.
    #[serde(default)]
    pub app_consistent_every_secs: Option<u64>,
    /// New milliseconds between journal checkpoints.
    #[serde(default)]
    pub checkpoint_interval_ms: Option<u64>,
    /// New seconds of journal history kept at the replica.
    #[serde(default)]
    pub journal_history_secs: Option<u64>,
    /// New most bytes of journal kept at the replica.
    #[serde(default)]
    pub journal_max_bytes: Option<u64>,
}

/// `failover run` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
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

/// `reverse` options.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReverseRequest {
    /// Resolve a split brain: the site whose changes are discarded.
    #[serde(default)]
    pub discard_changes_on: Option<String>,
    /// Only report what each choice would discard.
    #[serde(default)]
    pub dry_run: bool,
}

/// `partner test`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PartnerTestRequest {
    /// Bytes to send (default 256 MiB).
    pub bytes: Option<u64>,
    /// Compress the bulk data with zstd.
    #[serde(default)]
    pub compress: bool,
}
