//! Decisions of a group's life as pure functions of what they depend on:
//! which PITs retention removes, how healthy a group is, whether a
//! failover is planned or unplanned (or refused), and what a reverse does
//! about a split brain. The runners and handlers gather the inputs (the
//! catalog, the partner's answer, the clock) and act on the answer; the
//! tests below drive the decisions with synthetic inputs and a fake clock,
//! with no site, socket or disk (crucible drives its Upstairs this way).

use offsite_catalog::{GroupState, Role};

/// The PITs retention removes, oldest first: beyond the newest `keep`
/// unnamed ones, counting the PIT just committed (`newest`), whose own name
/// is `newest_named`. Named PITs stay until released, the newest PIT (the
/// base of the next cycle) always stays, and so do `pinned` ones (a test
/// failover or a promotion reads them). `pits` are the store's PITs as
/// `(id, named)`, in any order.
pub(crate) fn retention(
    pits: &[(u64, bool)],
    newest: u64,
    newest_named: bool,
    pinned: &[u64],
    keep: u32,
) -> Vec<u64> {
    let mut candidates: Vec<u64> = pits
        .iter()
        .filter(|(id, named)| !named && *id != newest && !pinned.contains(id))
        .map(|(id, _)| *id)
        .collect();
    candidates.sort_unstable();
    let kept_anyway = usize::from(!newest_named);
    let excess = (candidates.len() + kept_anyway).saturating_sub(keep as usize);
    candidates.truncate(excess);
    candidates
}

/// Whether a group's schedule of application-consistent PITs (one every
/// `every` seconds; 0: none) calls for one now: its newest app-consistent
/// PIT is `newest_age` seconds old (`None`: it has none), and the runner's
/// last attempt `attempt_age` seconds ago (`None`: none yet). An attempt
/// that failed waits a whole interval too: each one holds the applications.
pub(crate) fn app_consistent_due(
    every: u64,
    newest_age: Option<u64>,
    attempt_age: Option<u64>,
) -> bool {
    every > 0 && newest_age.is_none_or(|a| a >= every) && attempt_age.is_none_or(|a| a >= every)
}

/// The newest app-consistent PIT among `pits` (`(id, app_consistent)`):
/// retention keeps it like a pinned one, so the group always has one once
/// it made one, whatever `--keep` says and however often a quiesce fails
/// since (it costs at most that one PIT's blocks; the next app-consistent
/// PIT releases it).
pub(crate) fn newest_app_consistent(pits: &[(u64, bool)]) -> Option<u64> {
    pits.iter().filter(|(_, ac)| *ac).map(|(id, _)| *id).max()
}

/// A group's health level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    Normal,
    Warning,
    Critical,
}

impl Health {
    /// The word status, the API and metrics show.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Health::Normal => "normal",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

/// What health depends on besides the group's row.
#[derive(Debug, Clone)]
pub(crate) struct HealthInputs<'a> {
    /// The group has a committed PIT.
    pub has_pit: bool,
    /// Seconds of changes the replica may lack (`Replication::lag_seconds`).
    pub lag: u64,
    /// The partner's reachability, when known.
    pub partner: Option<PartnerSeen<'a>>,
}

/// The partner as the monitor last saw it.
#[derive(Debug, Clone)]
pub(crate) struct PartnerSeen<'a> {
    pub name: &'a str,
    pub reachable: bool,
    pub last_error: Option<&'a str>,
    /// Seconds since the last successful handshake (`None`: never).
    pub since_handshake: Option<u64>,
}

/// The group's facts health reads.
#[derive(Debug, Clone)]
pub(crate) struct GroupFacts<'a> {
    pub name: &'a str,
    pub partner: &'a str,
    pub role: Role,
    pub state: GroupState,
    pub rpo_secs: u64,
    pub last_error: Option<&'a str>,
}

/// Health per docs/design.md §1: `critical` for an old primary whose group
/// was failed over elsewhere; for a replicating group `critical` at twice
/// the RPO or when the partner has been unreachable for longer than the
/// RPO (or was never reached), `warning` when it just became unreachable,
/// the newest PIT is older than the RPO, or the last cycle failed; with the
/// reason.
pub(crate) fn health(g: &GroupFacts<'_>, i: &HealthInputs<'_>) -> (Health, Option<String>) {
    if g.role == Role::Primary && g.state == GroupState::FailedOverElsewhere {
        let why = g
            .last_error
            .map(str::to_string)
            .unwrap_or_else(|| format!("group {} was failed over to site {}", g.name, g.partner));
        return (Health::Critical, Some(why));
    }
    if !matches!(
        g.state,
        GroupState::Replicating | GroupState::InitialReplication
    ) {
        return (Health::Normal, None);
    }
    let lag = i.lag;
    if i.has_pit && lag > 2 * g.rpo_secs {
        return (
            Health::Critical,
            Some(format!(
                "newest PIT is {lag}s old, over twice the RPO of {}s",
                g.rpo_secs
            )),
        );
    }
    if let Some(p) = &i.partner
        && !p.reachable
        && let Some(error) = p.last_error
    {
        // Unreachable for longer than the RPO (or never reached): the
        // replica is falling behind for sure.
        let level = if p.since_handshake.is_none_or(|d| d > g.rpo_secs) {
            Health::Critical
        } else {
            Health::Warning
        };
        return (
            level,
            Some(format!("partner {} unreachable: {error}", p.name)),
        );
    }
    if i.has_pit && lag > g.rpo_secs {
        return (
            Health::Warning,
            Some(format!(
                "newest PIT is {lag}s old, over the RPO of {}s",
                g.rpo_secs
            )),
        );
    }
    if let Some(e) = g.last_error {
        return (Health::Warning, Some(e.to_string()));
    }
    (Health::Normal, None)
}

/// How a `failover run` (not a test) goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailoverMode {
    /// The primary prepared it: its final PIT holds every write.
    Planned,
    /// From the newest (or a chosen) PIT; the primary's later writes are
    /// lost to this site.
    Unplanned,
}

impl FailoverMode {
    /// The word results, hooks (`OFFSITE_MODE`) and reports show.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            FailoverMode::Planned => "planned",
            FailoverMode::Unplanned => "unplanned",
        }
    }
}

/// What the replica knows of the primary when a failover is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PrimarySeen {
    /// It answered, with the group's state there.
    Answered(GroupState),
    /// It could not be asked.
    Unreachable,
}

/// Why a failover is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailoverRefusal {
    /// The primary is up and did not prepare: a planned failover needs
    /// `failover prepare` there, an unplanned one `--force`.
    PrimaryUp(GroupState),
    /// The primary cannot be reached and `--force` was not given.
    PrimaryDown,
}

/// Planned when the primary prepared the group; unplanned when a promotion
/// is replaced (`failover run` again before commit) or forced; refused
/// otherwise, so that no failover happens by surprise while the primary
/// may still be writing.
pub(crate) fn failover_mode(
    primary: PrimarySeen,
    replacing: bool,
    force: bool,
) -> Result<FailoverMode, FailoverRefusal> {
    match primary {
        PrimarySeen::Answered(GroupState::PreparedForFailover) => Ok(FailoverMode::Planned),
        _ if replacing || force => Ok(FailoverMode::Unplanned),
        PrimarySeen::Answered(state) => Err(FailoverRefusal::PrimaryUp(state)),
        PrimarySeen::Unreachable => Err(FailoverRefusal::PrimaryDown),
    }
}

/// What `reverse` does about the old primary's writes made while it could
/// not replicate (a split brain when there are any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReverseChoice {
    /// `--dry-run`: report both sides' writes, change nothing.
    DryRun,
    /// `--discard-changes-on` names a site that is neither of the group's.
    UnknownSite(String),
    /// The old primary wrote while isolated and no side was chosen.
    SplitBrain,
    /// Keep the old primary's data: this site's promoted state is kept as
    /// a named PIT and the old primary re-sends what differs.
    DiscardHere,
    /// Make the old primary the replica; `discard_isolated`: its isolated
    /// writes are rolled back (kept there as a named PIT).
    Proceed { discard_isolated: bool },
}

/// The reverse decision at the site the group failed over to (`here`),
/// given the old primary (`partner`), the bytes it wrote while isolated,
/// and the operator's flags.
pub(crate) fn reverse_choice(
    here: &str,
    partner: &str,
    isolated_bytes: u64,
    discard_changes_on: Option<&str>,
    dry_run: bool,
) -> ReverseChoice {
    if let Some(loser) = discard_changes_on
        && loser != here
        && loser != partner
    {
        return ReverseChoice::UnknownSite(loser.to_string());
    }
    if dry_run {
        return ReverseChoice::DryRun;
    }
    match discard_changes_on {
        None if isolated_bytes > 0 => ReverseChoice::SplitBrain,
        Some(loser) if loser == here => ReverseChoice::DiscardHere,
        Some(_) => ReverseChoice::Proceed {
            discard_isolated: true,
        },
        None => ReverseChoice::Proceed {
            discard_isolated: false,
        },
    }
}

/// What a primary's group runner does next, from its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// The group is not this site's to run any more (reversed, or a
    /// replica): the runner ends.
    Stop,
    /// A sync group streams (and resynchronizes) until it leaves sync mode.
    Stream,
    /// Copy the volumes, then run the first cycle.
    Initial,
    /// Cycle when due, or when a command asks.
    Scheduled,
    /// Paused or not started: only commands move it, and they are refused
    /// with [`refused_while`].
    Waiting(GroupState),
}

/// The runner's next turn for a group with this role, mode and state.
pub(crate) fn turn(role: Role, mode: offsite_catalog::Mode, state: GroupState) -> Turn {
    if role != Role::Primary {
        return Turn::Stop;
    }
    match state {
        GroupState::Replicating | GroupState::Resynchronizing if mode.streams() => Turn::Stream,
        GroupState::InitialReplication => Turn::Initial,
        GroupState::Replicating => Turn::Scheduled,
        other => Turn::Waiting(other),
    }
}

/// Time between an async group's scheduled cycles: half its RPO (so that a
/// failed cycle still leaves time for the next before the RPO is missed),
/// at least 15 s; `configured` (`replication.cycle_secs`) overrides it.
pub(crate) fn cycle_interval(rpo_secs: u64, configured: Option<f64>) -> std::time::Duration {
    match configured.and_then(|s| std::time::Duration::try_from_secs_f64(s).ok()) {
        Some(d) => d,
        None => std::time::Duration::from_secs((rpo_secs / 2).max(15)),
    }
}

/// The first wait after a failed initial replication.
pub(crate) const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_secs(2);
/// The longest wait between retries.
pub(crate) const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(60);

/// The wait after one more failure: doubled, at most [`MAX_BACKOFF`].
pub(crate) fn next_backoff(after: std::time::Duration) -> std::time::Duration {
    (after * 2).min(MAX_BACKOFF)
}

/// A command a group's runner carries out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asked {
    Sync,
    Verify,
    Resync,
}

/// Why the runner of group `name`, in `state`, refuses `asked` (the group
/// does not replicate yet, or is paused).
pub(crate) fn refused_while(name: &str, state: GroupState, asked: Asked) -> String {
    match (state, asked) {
        (GroupState::InitialReplication, Asked::Resync) => {
            format!("group {name} is still in initial replication; resync once it is replicating")
        }
        (GroupState::InitialReplication, _) => {
            format!("group {name} is still in initial replication")
        }
        (_, Asked::Resync) => {
            format!("group {name} is {state}; resync needs a replicating group")
        }
        _ => format!("group {name} is {state}"),
    }
}

/// A consistent point a recovery to a time may use: a PIT or a journal
/// checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) kind: crate::model::PointKind,
    pub(crate) id: u64,
    /// Its time (nanoseconds since the epoch) as recorded.
    pub(crate) time_ns: u64,
    /// From when it certainly lies at or before a time asked for: its
    /// time, or for a time recorded in whole seconds (a PIT's
    /// `created_at`), the end of that second, since the cut may have
    /// come up to a second later.
    pub(crate) certain_ns: u64,
    /// The PIT it is (a PIT) or the PIT its journal file follows (a
    /// checkpoint; 0 for the first base): where it lies in the write
    /// order.
    pub(crate) after_pit: u64,
}

impl Candidate {
    /// Its place in the write order: a PIT comes before the checkpoints
    /// of the journal file that follows it, and those before the next
    /// PIT; checkpoint ids grow along the journal.
    fn order(&self) -> (u64, bool, u64) {
        (
            self.after_pit,
            self.kind == crate::model::PointKind::Checkpoint,
            self.id,
        )
    }
}

/// Why no point answers a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PointRefusal {
    /// The group has no PIT and no reachable checkpoint.
    Nothing,
    /// The time lies before the oldest reachable point, which is this one.
    TooEarly(Candidate),
}

/// The point `--at` a time chooses: of `candidates` (PITs and reachable
/// checkpoints, in any order) that certainly lie at or before
/// `requested_ns`, the newest in the write order, so it holds no write
/// made after the time and every write the others hold. A time after the
/// newest takes the newest (the answer says how far it is); a time before
/// every point is refused, naming the oldest. Checkpoint times are the
/// primary's clock, PIT times the cut's (the primary's for a cycle, the
/// replica's for a sync group's seal): sites are expected to keep time
/// within a fraction of a second, the resolution an operator asks for.
pub(crate) fn recovery_point(
    requested_ns: u64,
    candidates: &[Candidate],
) -> Result<Candidate, PointRefusal> {
    match candidates
        .iter()
        .filter(|c| c.certain_ns <= requested_ns)
        .max_by_key(|c| c.order())
    {
        Some(c) => Ok(*c),
        None => candidates
            .iter()
            .min_by_key(|c| (c.time_ns, c.order()))
            .map_or(Err(PointRefusal::Nothing), |c| {
                Err(PointRefusal::TooEarly(*c))
            }),
    }
}

#[cfg(test)]
mod tests {
    mod recovery_point {
        use super::super::{Candidate, PointRefusal, recovery_point};
        use crate::model::PointKind::{Checkpoint, Pit};

        const S: u64 = 1_000_000_000;

        /// PIT `id` cut at `s` seconds, recorded in whole seconds.
        fn pit(id: u64, s: u64) -> Candidate {
            Candidate {
                kind: Pit,
                id,
                time_ns: s * S,
                certain_ns: s * S + S - 1,
                after_pit: id,
            }
        }

        /// Checkpoint `id` at `ms` milliseconds, in the file after `pit`.
        fn cp(id: u64, ms: u64, pit: u64) -> Candidate {
            Candidate {
                kind: Checkpoint,
                id,
                time_ns: ms * 1_000_000,
                certain_ns: ms * 1_000_000,
                after_pit: pit,
            }
        }

        #[test]
        fn the_newest_point_at_or_before_the_time_wins() {
            let all = [
                pit(1, 100),
                cp(1, 101_000, 1),
                cp(2, 102_000, 1),
                pit(2, 105),
                cp(3, 106_000, 2),
            ];
            assert_eq!(recovery_point(102 * S, &all), Ok(all[2]));
            assert_eq!(
                recovery_point(105 * S, &all),
                Ok(all[2]),
                "PIT 2 may be cut later in its second"
            );
            assert_eq!(recovery_point(106 * S - 1, &all), Ok(all[3]));
            assert_eq!(recovery_point(106 * S, &all), Ok(all[4]));
            assert_eq!(recovery_point(101 * S - 1, &all), Ok(all[0]));
        }

        #[test]
        fn a_time_after_the_newest_takes_the_newest_in_write_order() {
            // A seal's PIT recorded in whole seconds after a checkpoint of
            // the same second holds every write of that checkpoint and more.
            let all = [pit(1, 100), cp(7, 110_900, 1), pit(2, 110)];
            assert_eq!(recovery_point(u64::MAX, &all), Ok(all[2]));
            assert_eq!(recovery_point(110 * S + S / 2, &all), Ok(all[0]));
            assert_eq!(recovery_point(110 * S + 950_000_000, &all), Ok(all[1]));
        }

        #[test]
        fn a_time_before_the_oldest_is_refused_naming_the_oldest() {
            let all = [cp(4, 103_000, 3), pit(2, 100), pit(3, 101)];
            assert_eq!(
                recovery_point(99 * S, &all),
                Err(PointRefusal::TooEarly(all[1]))
            );
            // Inside the oldest PIT's second: it may have been cut after.
            assert_eq!(
                recovery_point(100 * S + 5, &all),
                Err(PointRefusal::TooEarly(all[1]))
            );
            assert_eq!(recovery_point(5, &[]), Err(PointRefusal::Nothing));
        }

        #[test]
        fn a_pit_with_a_precise_time_counts_from_that_time() {
            let exact = Candidate {
                certain_ns: 100 * S,
                ..pit(2, 100)
            };
            let all = [pit(1, 90), exact, cp(9, 100_000, 1)];
            assert_eq!(recovery_point(100 * S, &all), Ok(all[1]));
        }
    }

    use super::*;
    use proptest::prelude::*;

    // ---- retention ----

    #[test]
    fn retention_keeps_the_newest_unnamed_pits() {
        let pits: Vec<(u64, bool)> = (1..=5).map(|id| (id, false)).collect();
        // keep 3 counts the newest: 3 and 4 stay with 5.
        assert_eq!(retention(&pits, 5, false, &[], 3), vec![1, 2]);
    }

    #[test]
    fn retention_never_removes_named_pits() {
        let pits = [(1, true), (2, false), (3, true), (4, false), (5, false)];
        assert_eq!(retention(&pits, 5, false, &[], 1), vec![2, 4]);
    }

    #[test]
    fn retention_keeps_pinned_pits() {
        let pits: Vec<(u64, bool)> = (1..=4).map(|id| (id, false)).collect();
        assert_eq!(retention(&pits, 4, false, &[1], 1), vec![2, 3]);
    }

    #[test]
    fn a_named_newest_pit_does_not_count_against_keep() {
        let pits = [(1, false), (2, false), (3, true)];
        assert_eq!(retention(&pits, 3, true, &[], 2), Vec::<u64>::new());
        assert_eq!(retention(&pits, 3, true, &[], 1), vec![1]);
    }

    #[test]
    fn retention_never_removes_the_newest_pit() {
        assert_eq!(
            retention(&[(7, false)], 7, false, &[], 1),
            Vec::<u64>::new()
        );
        // keep 1 with only the newest: nothing to do.
        assert_eq!(
            retention(&[(6, false), (7, false)], 7, false, &[], 1),
            vec![6]
        );
    }

    #[test]
    fn retention_with_nothing_to_remove() {
        let pits = [(1, false), (2, false)];
        assert!(retention(&pits, 2, false, &[], 24).is_empty());
        assert!(retention(&[], 1, false, &[], 1).is_empty());
    }

    #[test]
    fn retention_takes_the_oldest_whatever_the_input_order() {
        let pits = [(9, false), (3, false), (6, false), (12, false)];
        assert_eq!(retention(&pits, 12, false, &[], 2), vec![3, 6]);
    }

    proptest! {
        /// Whatever the history: removed PITs are unnamed, unpinned, not
        /// the newest, the oldest such; and afterwards the unnamed PITs
        /// kept number `keep` (or every one that may be removed is gone).
        #[test]
        fn retention_invariants(
            named in prop::collection::vec(any::<bool>(), 1..40),
            pinned in prop::collection::vec(0u64..45, 0..4),
            keep in 1u32..10,
        ) {
            let pits: Vec<(u64, bool)> = named.iter().enumerate().map(|(i, n)| (i as u64 + 1, *n)).collect();
            let newest = pits.len() as u64;
            let newest_named = named[named.len() - 1];
            let gone = retention(&pits, newest, newest_named, &pinned, keep);
            for id in &gone {
                let (_, n) = pits[*id as usize - 1];
                prop_assert!(!n && *id != newest && !pinned.contains(id));
            }
            prop_assert!(gone.windows(2).all(|w| w[0] < w[1]));
            let removable: Vec<u64> = pits.iter()
                .filter(|(id, n)| !n && *id != newest && !pinned.contains(id))
                .map(|(id, _)| *id).collect();
            let left = removable.len() - gone.len() + usize::from(!newest_named);
            prop_assert!(left <= keep as usize || gone.len() == removable.len());
            prop_assert_eq!(&removable[..gone.len()], &gone[..], "the oldest go first");
            if gone.is_empty() { prop_assert!(removable.len() + usize::from(!newest_named) <= keep as usize); }
        }
    }

    #[test]
    fn the_newest_app_consistent_pit_is_the_one_retention_keeps() {
        assert_eq!(
            newest_app_consistent(&[(1, true), (2, false), (3, true), (4, false)]),
            Some(3)
        );
        assert_eq!(newest_app_consistent(&[(1, false)]), None);
        // Pinned, it outlives `keep`.
        let pits = [(1, false), (2, true), (3, false), (4, false), (5, false)];
        let pinned = [newest_app_consistent(&pits).unwrap()];
        assert_eq!(retention(&pits, 5, false, &pinned, 2), vec![1, 3]);
    }

    #[test]
    fn app_consistent_checkpoints_fall_due_once_per_interval() {
        // Off, whatever the ages.
        assert!(!app_consistent_due(0, None, None));
        // None yet: at once.
        assert!(app_consistent_due(3600, None, None));
        // The newest is recent: not yet; old enough: due.
        assert!(!app_consistent_due(3600, Some(60), None));
        assert!(app_consistent_due(3600, Some(3600), None));
        // An attempt that failed waits a whole interval.
        assert!(!app_consistent_due(3600, None, Some(10)));
        assert!(app_consistent_due(3600, Some(7200), Some(3600)));
    }

    // ---- health ----

    fn facts(state: GroupState) -> GroupFacts<'static> {
        GroupFacts {
            name: "g",
            partner: "site-b",
            role: Role::Primary,
            state,
            rpo_secs: 60,
            last_error: None,
        }
    }

    fn inputs(lag: u64) -> HealthInputs<'static> {
        HealthInputs {
            has_pit: true,
            lag,
            partner: None,
        }
    }

    fn down(since: Option<u64>) -> PartnerSeen<'static> {
        PartnerSeen {
            name: "site-b",
            reachable: false,
            last_error: Some("connection refused"),
            since_handshake: since,
        }
    }

    #[test]
    fn a_fresh_group_is_normal() {
        assert_eq!(
            health(&facts(GroupState::Replicating), &inputs(10)),
            (Health::Normal, None)
        );
    }

    #[test]
    fn lag_over_the_rpo_warns_and_over_twice_is_critical() {
        let g = facts(GroupState::Replicating);
        assert_eq!(health(&g, &inputs(60)).0, Health::Normal);
        let (h, why) = health(&g, &inputs(61));
        assert_eq!(h, Health::Warning);
        assert_eq!(
            why.as_deref(),
            Some("newest PIT is 61s old, over the RPO of 60s")
        );
        assert_eq!(health(&g, &inputs(120)).0, Health::Warning);
        let (h, why) = health(&g, &inputs(121));
        assert_eq!(h, Health::Critical);
        assert!(why.unwrap().contains("over twice the RPO"));
    }

    #[test]
    fn without_a_pit_lag_does_not_count() {
        let i = HealthInputs {
            has_pit: false,
            lag: 10_000,
            partner: None,
        };
        assert_eq!(
            health(&facts(GroupState::InitialReplication), &i).0,
            Health::Normal
        );
    }

    #[test]
    fn a_partner_just_lost_warns_then_turns_critical_after_the_rpo() {
        let g = facts(GroupState::Replicating);
        let mut i = inputs(5);
        i.partner = Some(down(Some(30)));
        let (h, why) = health(&g, &i);
        assert_eq!(h, Health::Warning);
        assert_eq!(
            why.as_deref(),
            Some("partner site-b unreachable: connection refused")
        );
        i.partner = Some(down(Some(61)));
        assert_eq!(health(&g, &i).0, Health::Critical);
    }

    #[test]
    fn a_partner_never_reached_is_critical() {
        let mut i = inputs(0);
        i.partner = Some(down(None));
        assert_eq!(
            health(&facts(GroupState::Replicating), &i).0,
            Health::Critical
        );
    }

    #[test]
    fn an_unreachable_partner_without_an_error_is_not_reported() {
        // The monitor has not tried yet: no error, no verdict.
        let mut i = inputs(0);
        i.partner = Some(PartnerSeen {
            last_error: None,
            ..down(None)
        });
        assert_eq!(
            health(&facts(GroupState::Replicating), &i).0,
            Health::Normal
        );
    }

    #[test]
    fn a_failed_cycle_warns_with_its_error() {
        let g = GroupFacts {
            last_error: Some("cycle failed: partner b: session closed"),
            ..facts(GroupState::Replicating)
        };
        assert_eq!(
            health(&g, &inputs(1)),
            (
                Health::Warning,
                Some("cycle failed: partner b: session closed".into())
            )
        );
    }

    #[test]
    fn twice_the_rpo_outranks_a_lost_partner() {
        let mut i = inputs(500);
        i.partner = Some(down(Some(1)));
        let (h, why) = health(&facts(GroupState::Replicating), &i);
        assert_eq!(h, Health::Critical);
        assert!(why.unwrap().starts_with("newest PIT"));
    }

    #[test]
    fn an_old_primary_failed_over_elsewhere_is_critical() {
        let g = GroupFacts {
            state: GroupState::FailedOverElsewhere,
            ..facts(GroupState::Replicating)
        };
        let (h, why) = health(&g, &inputs(0));
        assert_eq!(h, Health::Critical);
        assert_eq!(
            why.as_deref(),
            Some("group g was failed over to site site-b")
        );
    }

    #[test]
    fn states_that_do_not_replicate_are_normal() {
        for s in [
            GroupState::Paused,
            GroupState::ReadyForInitialReplication,
            GroupState::PreparedForFailover,
            GroupState::FailedOver,
            GroupState::TestFailover,
        ] {
            let mut i = inputs(100_000);
            i.partner = Some(down(None));
            assert_eq!(health(&facts(s), &i), (Health::Normal, None), "{s}");
        }
    }

    #[test]
    fn health_words() {
        assert_eq!(Health::Normal.as_str(), "normal");
        assert_eq!(Health::Warning.as_str(), "warning");
        assert_eq!(Health::Critical.as_str(), "critical");
    }

    // ---- failover mode ----

    #[test]
    fn a_prepared_primary_makes_a_planned_failover() {
        for force in [false, true] {
            assert_eq!(
                failover_mode(
                    PrimarySeen::Answered(GroupState::PreparedForFailover),
                    false,
                    force
                ),
                Ok(FailoverMode::Planned)
            );
        }
    }

    #[test]
    fn a_running_primary_refuses_without_force() {
        assert_eq!(
            failover_mode(PrimarySeen::Answered(GroupState::Replicating), false, false),
            Err(FailoverRefusal::PrimaryUp(GroupState::Replicating))
        );
        assert_eq!(
            failover_mode(PrimarySeen::Answered(GroupState::Replicating), false, true),
            Ok(FailoverMode::Unplanned)
        );
    }

    #[test]
    fn a_lost_primary_needs_force() {
        assert_eq!(
            failover_mode(PrimarySeen::Unreachable, false, false),
            Err(FailoverRefusal::PrimaryDown)
        );
        assert_eq!(
            failover_mode(PrimarySeen::Unreachable, false, true),
            Ok(FailoverMode::Unplanned)
        );
    }

    #[test]
    fn replacing_a_promotion_is_unplanned_without_force() {
        assert_eq!(
            failover_mode(PrimarySeen::Unreachable, true, false),
            Ok(FailoverMode::Unplanned)
        );
        assert_eq!(
            failover_mode(
                PrimarySeen::Answered(GroupState::FailedOverElsewhere),
                true,
                false
            ),
            Ok(FailoverMode::Unplanned)
        );
    }

    #[test]
    fn failover_mode_words() {
        assert_eq!(FailoverMode::Planned.as_str(), "planned");
        assert_eq!(FailoverMode::Unplanned.as_str(), "unplanned");
    }

    proptest! {
        /// A failover is never unplanned by surprise: without --force, an
        /// unplanned one only replaces an earlier promotion.
        #[test]
        fn no_unplanned_failover_without_force_or_replacement(
            state in prop::sample::select(GroupState::ALL.to_vec()),
            reachable in any::<bool>(),
            replacing in any::<bool>(),
            force in any::<bool>(),
        ) {
            let seen = if reachable { PrimarySeen::Answered(state) } else { PrimarySeen::Unreachable };
            match failover_mode(seen, replacing, force) {
                Ok(FailoverMode::Unplanned) => prop_assert!(force || replacing),
                Ok(FailoverMode::Planned) => prop_assert_eq!(seen, PrimarySeen::Answered(GroupState::PreparedForFailover)),
                Err(_) => prop_assert!(!force && !replacing),
            }
        }
    }

    // ---- reverse ----

    #[test]
    fn a_clean_reverse_proceeds() {
        assert_eq!(
            reverse_choice("site-b", "site-a", 0, None, false),
            ReverseChoice::Proceed {
                discard_isolated: false
            }
        );
    }

    #[test]
    fn isolated_writes_are_a_split_brain_until_a_side_is_chosen() {
        assert_eq!(
            reverse_choice("site-b", "site-a", 4096, None, false),
            ReverseChoice::SplitBrain
        );
        assert_eq!(
            reverse_choice("site-b", "site-a", 4096, Some("site-a"), false),
            ReverseChoice::Proceed {
                discard_isolated: true
            }
        );
        assert_eq!(
            reverse_choice("site-b", "site-a", 4096, Some("site-b"), false),
            ReverseChoice::DiscardHere
        );
    }

    #[test]
    fn dry_run_changes_nothing_even_in_a_split_brain() {
        assert_eq!(
            reverse_choice("site-b", "site-a", 4096, None, true),
            ReverseChoice::DryRun
        );
        assert_eq!(
            reverse_choice("site-b", "site-a", 0, Some("site-b"), true),
            ReverseChoice::DryRun
        );
    }

    #[test]
    fn a_third_site_is_refused_before_anything_else() {
        for dry_run in [false, true] {
            assert_eq!(
                reverse_choice("site-b", "site-a", 4096, Some("site-c"), dry_run),
                ReverseChoice::UnknownSite("site-c".into())
            );
        }
    }

    proptest! {
        /// The old primary's isolated writes are never rolled back without
        /// the operator naming it, and nothing changes on a dry run.
        #[test]
        fn isolated_writes_need_an_explicit_choice(
            isolated in 0u64..10,
            choice in prop::sample::select(vec![None, Some("site-a"), Some("site-b"), Some("site-c")]),
            dry_run in any::<bool>(),
        ) {
            let r = reverse_choice("site-b", "site-a", isolated, choice, dry_run);
            if isolated > 0 && choice.is_none() {
                prop_assert!(matches!(r, ReverseChoice::SplitBrain | ReverseChoice::DryRun));
            }
            if let ReverseChoice::Proceed { discard_isolated: true } = r {
                prop_assert_eq!(choice, Some("site-a"));
            }
            if dry_run && choice != Some("site-c") {
                prop_assert_eq!(r, ReverseChoice::DryRun);
            }
        }
    }

    // ---- the runner's turns and timers ----

    use offsite_catalog::Mode;
    use std::time::Duration;

    #[test]
    fn a_replica_or_reversed_group_stops_its_runner() {
        for state in GroupState::ALL {
            for mode in Mode::ALL.iter().copied() {
                assert_eq!(turn(Role::Replica, mode, *state), Turn::Stop);
            }
        }
    }

    #[test]
    fn a_replicating_sync_or_continuous_group_streams_even_while_resynchronizing() {
        for mode in [Mode::Sync, Mode::Continuous] {
            assert_eq!(
                turn(Role::Primary, mode, GroupState::Replicating),
                Turn::Stream
            );
            assert_eq!(
                turn(Role::Primary, mode, GroupState::Resynchronizing),
                Turn::Stream
            );
        }
    }

    #[test]
    fn an_async_group_cycles_on_schedule_once_replicating() {
        assert_eq!(
            turn(Role::Primary, Mode::Async, GroupState::Replicating),
            Turn::Scheduled
        );
        for mode in Mode::ALL.iter().copied() {
            assert_eq!(
                turn(Role::Primary, mode, GroupState::InitialReplication),
                Turn::Initial
            );
        }
    }

    #[test]
    fn paused_and_unstarted_groups_wait_for_commands() {
        for state in [
            GroupState::Paused,
            GroupState::ReadyForInitialReplication,
            GroupState::PreparedForFailover,
            GroupState::FailedOverElsewhere,
        ] {
            assert_eq!(
                turn(Role::Primary, Mode::Async, state),
                Turn::Waiting(state)
            );
        }
    }

    #[test]
    fn cycles_come_every_half_rpo_but_not_more_often_than_15s() {
        assert_eq!(cycle_interval(300, None), Duration::from_secs(150));
        assert_eq!(cycle_interval(30, None), Duration::from_secs(15));
        assert_eq!(cycle_interval(86_400, None), Duration::from_secs(43_200));
    }

    #[test]
    fn a_configured_cycle_time_overrides_the_rpo() {
        assert_eq!(cycle_interval(300, Some(0.5)), Duration::from_millis(500));
        // Nonsense in the config falls back to the RPO's rule.
        assert_eq!(cycle_interval(300, Some(-1.0)), Duration::from_secs(150));
        assert_eq!(
            cycle_interval(300, Some(f64::NAN)),
            Duration::from_secs(150)
        );
    }

    #[test]
    fn retries_back_off_to_a_minute() {
        let mut d = FIRST_BACKOFF;
        let mut seen = vec![d.as_secs()];
        for _ in 0..8 {
            d = next_backoff(d);
            seen.push(d.as_secs());
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn refusals_say_what_the_group_waits_for() {
        assert_eq!(
            refused_while("g", GroupState::InitialReplication, Asked::Sync),
            "group g is still in initial replication"
        );
        assert_eq!(
            refused_while("g", GroupState::InitialReplication, Asked::Resync),
            "group g is still in initial replication; resync once it is replicating"
        );
        assert_eq!(
            refused_while("g", GroupState::Paused, Asked::Verify),
            "group g is paused"
        );
        assert_eq!(
            refused_while("g", GroupState::Paused, Asked::Resync),
            "group g is paused; resync needs a replicating group"
        );
    }

    proptest! {
        /// Every (role, mode, state) has exactly one turn, and only a
        /// primary runs anything.
        #[test]
        fn turns_are_total_and_only_primaries_run(
            state in prop::sample::select(GroupState::ALL.to_vec()),
            primary in any::<bool>(),
            mode in prop::sample::select(Mode::ALL.to_vec()),
        ) {
            let role = if primary { Role::Primary } else { Role::Replica };
            let t = turn(role, mode, state);
            prop_assert_eq!(t == Turn::Stop, !primary);
            if t == Turn::Stream { prop_assert!(mode.streams()); }
        }

        /// Backoff never shrinks and never passes a minute.
        #[test]
        fn backoff_is_monotone_and_capped(ms in 1u64..200_000) {
            let d = Duration::from_millis(ms);
            let n = next_backoff(d);
            prop_assert!(n >= d.min(MAX_BACKOFF));
            prop_assert!(n <= MAX_BACKOFF);
        }
    }
}
