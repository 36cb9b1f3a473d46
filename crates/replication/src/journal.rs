//! The journal of a streaming (sync or continuous) group: its settings
//! checked, the history its replica keeps and prunes after every commit,
//! and what it can recover to (`pit list --checkpoints`, the window in
//! `group status`).
//!
//! **Checkpoints.** While in sync, the primary's runner queues a
//! checkpoint marker in the mirror's queue every `checkpoint_interval`
//! (`SyncMirror::queue_checkpoint`): the queue is the group's write order,
//! so the marker needs no cut, and the replica appends it to its journal
//! in stream order (`WriteLog::checkpoint`). No marker is queued when no
//! write came since the last one: its image would be the same, and
//! recovery to a later instant picks the newest checkpoint at or before
//! it, which is exactly the state then. So the window's newest second is
//! that of the newest checkpoint, which an idle group leaves behind; the
//! group's lag (zero while in sync) says the replica holds everything up
//! to now.
//!
//! **History** ([`History::Keep`] for streaming groups): sealed journal
//! files stay. After every commit the replica prunes the journal by the
//! group's [`JournalPolicy`] (never a checkpoint a test failover or a
//! promoted volume reads), then adds [`ReplicaStore::journal_pins`] to
//! the PITs retention keeps; `--keep N` still applies to all the others.

use std::ops::RangeInclusive;
use std::time::Duration;

use offsite_catalog::{GroupRow, JournalSettings};
use offsite_replica_store::{CheckpointId, History, JournalPolicy, Listing, ReplicaStore};

use crate::control::RemoteError;
use crate::replica_side::storage_error;
use crate::wire::{self, JournalView, JournalWindow};
use crate::{ReplError, Replication, invalid};

/// `--checkpoint-interval`: 100 ms to 1 h.
pub(crate) const CHECKPOINT_INTERVAL_MS: RangeInclusive<u64> = 100..=3_600_000;
/// `--journal-history`: 1 min to 366 days.
pub(crate) const HISTORY_SECS: RangeInclusive<u64> = 60..=366 * 86_400;
/// `--journal-max-size`: at least 1 MiB (the open file alone is never
/// dropped, whatever the size).
pub(crate) const MIN_MAX_BYTES: u64 = 1 << 20;

/// `base` with the options given, checked; the error names the option.
pub(crate) fn checked(
    base: JournalSettings,
    checkpoint_interval_ms: Option<u64>,
    history_secs: Option<u64>,
    max_bytes: Option<u64>,
) -> Result<JournalSettings, ReplError> {
    let j = JournalSettings {
        checkpoint_interval_ms: checkpoint_interval_ms.unwrap_or(base.checkpoint_interval_ms),
        history_secs: history_secs.unwrap_or(base.history_secs),
        max_bytes: max_bytes.unwrap_or(base.max_bytes),
    };
    check(&j).map_err(invalid)?;
    Ok(j)
}

/// Whether `j` is in range; the error says which option is not and what
/// is allowed.
pub(crate) fn check(j: &JournalSettings) -> Result<(), String> {
    if !CHECKPOINT_INTERVAL_MS.contains(&j.checkpoint_interval_ms) {
        return Err(format!(
            "--checkpoint-interval {}ms is outside 100ms..1h; use e.g. --checkpoint-interval 1s",
            j.checkpoint_interval_ms
        ));
    }
    if !HISTORY_SECS.contains(&j.history_secs) {
        return Err(format!(
            "--journal-history {}s is outside 1m..366d; use e.g. --journal-history 24h",
            j.history_secs
        ));
    }
    if j.max_bytes < MIN_MAX_BYTES {
        return Err(format!(
            "--journal-max-size {} bytes is below 1M; use e.g. --journal-max-size 10G",
            j.max_bytes
        ));
    }
    Ok(())
}

/// What a seal does with the journal file it seals: streaming groups keep
/// history; the others discard it (nothing would prune it by time).
pub(crate) fn history_of(row: &GroupRow) -> History {
    if row.mode.streams() {
        History::Keep
    } else {
        History::Discard
    }
}

/// The group's pruning policy.
pub(crate) fn policy_of(row: &GroupRow) -> JournalPolicy {
    JournalPolicy::new(
        Duration::from_secs(row.journal.history_secs),
        row.journal.max_bytes,
    )
}

/// Whether the store has a journal at all (async groups that never
/// streamed have none, and need no pruning).
fn has_journal(store: &ReplicaStore) -> bool {
    store
        .dir()
        .join(offsite_replica_store::JOURNAL_DIR)
        .is_dir()
}

/// Replica, after a commit and before retention: prunes the journal by
/// the group's policy (keeping the checkpoints this site reads) and
/// returns the PITs retention must keep for the rest of it. Blocking.
pub(crate) fn prune_and_pin(
    site: &offsite_engine::Site,
    store: &ReplicaStore,
    row: &GroupRow,
) -> Result<Vec<u64>, RemoteError> {
    if !has_journal(store) {
        return Ok(Vec::new());
    }
    let policy = policy_of(row);
    let dir = store.dir().display().to_string();
    let keep: Vec<CheckpointId> = site
        .groups()
        .checkpoints_in_use(&row.name, &dir)?
        .into_iter()
        .filter_map(CheckpointId::new)
        .collect();
    let pruned = store.prune_journal(&policy, &keep).map_err(|e| {
        storage_error(
            format!("pruning the journal of group {}: {e}", row.name),
            &e,
        )
    })?;
    if pruned.files > 0 {
        tracing::info!(
            group = %row.name,
            files = pruned.files,
            bytes = pruned.bytes,
            checkpoints = pruned.checkpoints,
            remaining = pruned.remaining_bytes,
            "journal history pruned"
        );
    }
    let pins = store.journal_pins(&policy).map_err(|e| {
        storage_error(
            format!("reading the journal of group {}: {e}", row.name),
            &e,
        )
    })?;
    Ok(pins.into_iter().map(|p| p.get()).collect())
}

/// The group's journal window (oldest and newest reachable checkpoint),
/// if its store has any checkpoint. Blocking (reads the journal's
/// indexes once; then memory).
pub(crate) fn window(store: &ReplicaStore) -> Option<JournalWindow> {
    if !has_journal(store) {
        return None;
    }
    match store.list_checkpoints(Listing::Summary) {
        Ok(list) => JournalView::of(&list).window(),
        Err(e) => {
            tracing::warn!(store = %store.dir().display(), "listing the journal's checkpoints: {e}");
            None
        }
    }
}

impl Replication {
    /// `pit list GROUP --checkpoints`: at the replica from its store, at
    /// the primary by asking the replica ([`wire::kinds::JOURNAL_QUERY`]).
    pub async fn list_checkpoints(
        &self,
        group: &str,
        every: bool,
    ) -> Result<crate::model::JournalListing, ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        let row = crate::run_blocking(move || Ok(site.groups().get(&g)?)).await?;
        let (view, at) = match row.role {
            offsite_catalog::Role::Replica => {
                let (_, store) = self.local_store(group).await?;
                let view = crate::run_blocking(move || {
                    let listing = if every {
                        Listing::Every
                    } else {
                        Listing::Summary
                    };
                    store.list_checkpoints(listing).map_err(|e| {
                        crate::ReplError::Refused(storage_error(
                            format!("listing the journal: {e}"),
                            &e,
                        ))
                    })
                })
                .await?;
                (JournalView::of(&view), self.site.config().name.clone())
            }
            offsite_catalog::Role::Primary => {
                let mut ch = self.channel(&row.partner, None).await.map_err(|e| {
                    invalid(format!(
                        "group {group}'s journal is kept by its replica site {}, which cannot be reached: {e}",
                        row.partner
                    ))
                })?;
                let asked = ch
                    .call(&wire::JournalQuery {
                        group: group.to_string(),
                        every,
                    })
                    .await;
                ch.close().await;
                let view = asked.map_err(|e| match e {
                    ReplError::Refused(RemoteError::Unsupported(m)) => invalid(format!(
                        "the replica site {} keeps no journal this site can list (it runs an older version: {m}); upgrade it",
                        row.partner
                    )),
                    e => e,
                })?;
                (view, row.partner.clone())
            }
        };
        Ok(crate::model::JournalListing::of(&row, &at, view))
    }

    /// Answers [`wire::kinds::JOURNAL_QUERY`] from the group's store.
    pub(crate) async fn answer_journal_query(
        &self,
        peer: &str,
        req: wire::JournalQuery,
    ) -> Result<JournalView, RemoteError> {
        let (row, store) = self.store(&req.group).await?;
        if row.partner != peer {
            return Err(RemoteError::Unauthorized(format!(
                "group {} replicates with {}, not {peer}",
                row.name, row.partner
            )));
        }
        let list = tokio::task::spawn_blocking(move || {
            let listing = if req.every {
                Listing::Every
            } else {
                Listing::Summary
            };
            store.list_checkpoints(listing)
        })
        .await?
        .map_err(|e| {
            storage_error(
                format!("listing the journal of group {}: {e}", row.name),
                &e,
            )
        })?;
        Ok(JournalView::of(&list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_per_option() {
        let d = JournalSettings::default();
        assert_eq!(checked(d, None, None, None).unwrap(), d);
        let j = checked(d, Some(250), Some(3600), Some(64 << 20)).unwrap();
        assert_eq!(
            (j.checkpoint_interval_ms, j.history_secs, j.max_bytes),
            (250, 3600, 64 << 20)
        );
        for (ms, h, b, option) in [
            (Some(99), None, None, "--checkpoint-interval"),
            (Some(3_600_001), None, None, "--checkpoint-interval"),
            (None, Some(59), None, "--journal-history"),
            (None, None, Some(1000), "--journal-max-size"),
        ] {
            let e = checked(d, ms, h, b).unwrap_err().to_string();
            assert!(e.contains(option), "{e}");
        }
        assert!(checked(d, Some(100), None, None).is_ok());
        assert!(checked(d, Some(3_600_000), None, None).is_ok());
    }
}
