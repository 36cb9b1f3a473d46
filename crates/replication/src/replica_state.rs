//! What the replica side of a site keeps in memory about the groups it
//! holds, apart from the catalog and the stores: the open write logs of
//! sync groups, the primaries' confirmations (for lag), and which stores
//! are full (for health). [`Replication`](crate::Replication) holds one
//! `ReplicaState`; the replica's requests are answered in `replica_side`.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::sync;

/// The replica side's in-memory state.
#[derive(Default)]
pub(crate) struct ReplicaState {
    /// The open write logs of sync groups.
    pub(crate) logs: sync::Logs,
    /// Per group, the last instant the primary confirmed the replica holds
    /// every write ([`crate::wire::kinds::GROUP_CONFIRMED`]).
    confirmed: Mutex<HashMap<String, String>>,
    /// Groups whose last transfer failed because the replica store's file
    /// system is full, with the message (health critical).
    store_full: Mutex<HashMap<String, String>>,
}

impl ReplicaState {
    /// Records the primary's confirmation that the replica held every
    /// write of `group` at `at`.
    pub(crate) fn confirm(&self, group: String, at: String) {
        lock(&self.confirmed).insert(group, at);
    }

    /// The instant up to which the replica holds every write of `group`,
    /// as last confirmed by its primary.
    pub(crate) fn confirmed_at(&self, group: &str) -> Option<String> {
        lock(&self.confirmed).get(group).cloned()
    }

    /// Marks `group`'s store full, saying why; `true` if it was not
    /// already (the caller reports it once).
    pub(crate) fn mark_store_full(&self, group: &str, message: &str) -> bool {
        lock(&self.store_full)
            .insert(group.to_string(), message.to_string())
            .is_none()
    }

    /// Clears `group`'s full mark; `true` if it had one.
    pub(crate) fn clear_store_full(&self, group: &str) -> bool {
        lock(&self.store_full).remove(group).is_some()
    }

    /// Why `group`'s replica store cannot take data, if it is full.
    pub(crate) fn store_full_reason(&self, group: &str) -> Option<String> {
        lock(&self.store_full).get(group).cloned()
    }

    /// Forgets `group`'s open write log (its writer aborts), with the group.
    pub(crate) fn forget_log(&self, group: &str) {
        lock(&self.logs).remove(group);
    }
}

/// A poisoned lock still guards consistent data here (every update is a
/// single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_store_is_reported_once_until_cleared() {
        let state = ReplicaState::default();
        assert!(state.mark_store_full("g", "no space left"));
        assert!(!state.mark_store_full("g", "no space left"));
        assert_eq!(
            state.store_full_reason("g").as_deref(),
            Some("no space left")
        );
        assert_eq!(state.store_full_reason("h"), None);
        assert!(state.clear_store_full("g"));
        assert!(!state.clear_store_full("g"));
        assert_eq!(state.store_full_reason("g"), None);
    }

    #[test]
    fn the_newest_confirmation_wins() {
        let state = ReplicaState::default();
        assert_eq!(state.confirmed_at("g"), None);
        state.confirm("g".into(), "2026-12-07T01:00:00Z".into());
        state.confirm("g".into(), "2026-12-07T01:05:00Z".into());
        assert_eq!(
            state.confirmed_at("g").as_deref(),
            Some("2026-12-07T01:05:00Z")
        );
    }
}
