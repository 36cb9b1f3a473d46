//! What the replication service reports and is asked, as domain types:
//! the api crate maps them to and from the REST bodies of
//! `offsite-api-types`, so this crate does not depend on the HTTP contract.

use offsite_catalog::Role;

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
    /// Batches the replica acknowledged.
    pub batches: u64,
    /// Writes the replica acknowledged.
    pub writes: u64,
    /// Times the partner was lost.
    pub link_losses: u64,
    /// Writes failed by `suspend-writes` after their timeout.
    pub failed_writes: u64,
}
