//! The primary side's group runners: one task per group this site is the
//! primary of, found by group name, with what the runners share about
//! groups in flight — which ones a reverse is moving, and the PIT names of
//! the named syncs under way. [`Replication`](crate::Replication) holds one
//! `Runners`; the runner's loop itself is `primary::run_group`.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::primary::{Command, Runner};

/// The registry of a site's group runners.
#[derive(Debug, Default)]
pub(crate) struct Runners {
    /// The runner of each group this site is the primary of.
    by_group: Mutex<HashMap<String, Runner>>,
    /// Groups a `reverse` is moving: their cycles count as reverse traffic.
    reversing: Mutex<HashSet<String>>,
    /// `(group, PIT name)` of the named syncs under way: a second sync
    /// with the same name is refused before the first has committed.
    pending_pit_names: Mutex<HashSet<(String, String)>>,
    /// The journal window each streaming group's replica reported at its
    /// last seal, for `group status` at the primary (no network call).
    journal_windows: Mutex<HashMap<String, crate::wire::JournalWindow>>,
}

impl Runners {
    /// The runner of `group`, if one runs.
    pub(crate) fn get(&self, group: &str) -> Option<Runner> {
        lock(&self.by_group).get(group).cloned()
    }

    /// The runner of `group`; if none runs, a new one, handed with its
    /// command queue to `start` (which spawns its loop) before any other
    /// caller can see it.
    pub(crate) fn ensure(
        &self,
        group: &str,
        start: impl FnOnce(&Runner, mpsc::Receiver<Command>),
    ) -> Runner {
        let mut runners = lock(&self.by_group);
        if let Some(r) = runners.get(group) {
            return r.clone();
        }
        let (runner, rx) = Runner::new();
        runners.insert(group.to_string(), runner.clone());
        start(&runner, rx);
        runner
    }

    /// Forgets `group`'s runner: its loop ends once its queue is closed
    /// (the last handle dropped) or its group's role changes.
    pub(crate) fn remove(&self, group: &str) {
        lock(&self.by_group).remove(group);
    }

    /// Records the journal window `group`'s replica reported.
    pub(crate) fn set_journal_window(&self, group: &str, w: crate::wire::JournalWindow) {
        lock(&self.journal_windows).insert(group.to_string(), w);
    }

    /// The journal window `group`'s replica last reported, if any.
    pub(crate) fn journal_window(&self, group: &str) -> Option<crate::wire::JournalWindow> {
        lock(&self.journal_windows).get(group).copied()
    }

    /// Marks (or unmarks) `group` as being moved by a reverse.
    pub(crate) fn set_reversing(&self, group: &str, on: bool) {
        let mut set = lock(&self.reversing);
        if on {
            set.insert(group.to_string());
        } else {
            set.remove(group);
        }
    }

    /// Whether a reverse is moving `group` now.
    pub(crate) fn is_reversing(&self, group: &str) -> bool {
        lock(&self.reversing).contains(group)
    }

    /// Claims PIT name `name` for a sync of `group` until the returned
    /// guard is dropped; `None` while another sync of the group is making
    /// a PIT of that name.
    pub(crate) fn claim_pit_name(&self, group: &str, name: &str) -> Option<PitNameClaim<'_>> {
        let key = (group.to_string(), name.to_string());
        // Built only once claimed: a refused claim, dropped, would release
        // the name the other sync holds.
        let claimed = lock(&self.pending_pit_names).insert(key.clone());
        claimed.then(|| PitNameClaim { runners: self, key })
    }
}

/// A PIT name claimed by a sync under way; released when dropped, whatever
/// the sync's outcome (a later sync then finds the committed name in the
/// catalog).
pub(crate) struct PitNameClaim<'a> {
    runners: &'a Runners,
    key: (String, String),
}

impl Drop for PitNameClaim<'_> {
    fn drop(&mut self) {
        lock(&self.runners.pending_pit_names).remove(&self.key);
    }
}

/// A poisoned lock still guards consistent data here (every update is a
/// single insert or remove).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn ensure_starts_one_runner_per_group() {
        let runners = Runners::default();
        let mut started = 0;
        let a = runners.ensure("g", |_, _| started += 1);
        let b = runners.ensure("g", |_, _| started += 1);
        assert_eq!(started, 1);
        assert!(Arc::ptr_eq(&a.progress, &b.progress));
        assert!(runners.get("g").is_some());
        runners.remove("g");
        assert!(runners.get("g").is_none());
    }

    #[test]
    fn the_queue_closes_when_the_runner_is_forgotten() {
        let runners = Runners::default();
        let mut queue = None;
        let r = runners.ensure("g", |_, rx| queue = Some(rx));
        let mut rx = queue.expect("start was called");
        drop(r);
        runners.remove("g");
        assert!(rx.try_recv().is_err());
        assert!(rx.is_closed());
    }

    #[test]
    fn a_pit_name_is_claimed_once_until_released() {
        let runners = Runners::default();
        let first = runners.claim_pit_name("g", "before-upgrade");
        assert!(first.is_some());
        assert!(runners.claim_pit_name("g", "before-upgrade").is_none());
        assert!(runners.claim_pit_name("h", "before-upgrade").is_some());
        drop(first);
        assert!(runners.claim_pit_name("g", "before-upgrade").is_some());
    }

    #[test]
    fn reversing_is_marked_per_group() {
        let runners = Runners::default();
        runners.set_reversing("g", true);
        assert!(runners.is_reversing("g"));
        assert!(!runners.is_reversing("h"));
        runners.set_reversing("g", false);
        assert!(!runners.is_reversing("g"));
    }
}
