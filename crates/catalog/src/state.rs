//! The typed model of a replication group's life: its [`GroupState`], its
//! [`Role`] on a site, its [`Mode`], the [`SyncState`] of a synchronous
//! group's stream, and [`transition`], the one table of the legal moves
//! between states.
//!
//! Every value keeps the kebab-case string it always had: that string is
//! what the catalog stores (with a CHECK constraint since schema v11), what
//! the REST API and `--json` print, and what the wire between two sites
//! carries. [`as_str`](GroupState::as_str), [`FromStr`],
//! [`Display`](std::fmt::Display) and serde all use it.
//!
//! Both sites keep a row for the group; the primary and the replica each
//! walk a part of the diagram below (a replica never pauses or is fenced;
//! only a replica tests, fails over or is failed over), and the table is
//! the union of both. Staying in the same state (recording an error, a
//! retried step) is always legal and not drawn. A reverse turns the group
//! around ([`Catalog::set_group_role`](crate::Catalog::set_group_role)): both
//! sites then replicate again, through the edges into `replicating`.
//!
//! The diagram is checked against [`GroupState::ALL`] and [`transition`]
//! by a unit test: change them together.
#![doc = "```mermaid"]
#![doc = include_str!("state_diagram.mmd")]
#![doc = "```"]

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// The diagram of the module doc (mermaid `stateDiagram-v2`): one `state
/// "NAME" as ID` line per state, one `FROM --> TO : why` line per edge.
pub const DIAGRAM: &str = include_str!("state_diagram.mmd");

/// A value that is not one of a type's strings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a {what} (one of: {expected})")]
pub struct ParseError {
    /// What was parsed: `group state`, `role`, `mode`, `sync state`.
    pub what: &'static str,
    /// The refused value.
    pub value: String,
    /// The accepted values, comma-separated.
    pub expected: &'static str,
}

/// Declares a string-valued enum with `ALL`, `as_str`, `FromStr`,
/// `Display`, serde and SQLite conversions over the same strings.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal, $expected:literal {
            $($(#[$vmeta:meta])* $variant:ident = $s:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in documentation order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The value's string (catalog, API, wire).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s,)+
                }
            }
        }

        impl FromStr for $name {
            type Err = ParseError;

            fn from_str(s: &str) -> Result<Self, ParseError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(ParseError {
                        what: $what,
                        value: s.to_string(),
                        expected: $expected,
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: ParseError| FromSqlError::Other(Box::new(e)))
            }
        }
    };
}

string_enum! {
    /// Where a group is in its life (the module doc draws the moves).
    GroupState, "group state",
    "ready-for-initial-replication, initial-replication, replicating, resynchronizing, paused, prepared-for-failover, test-failover, failed-over, failed-over-elsewhere" {
        /// Created; `group start` begins the initial copy.
        ReadyForInitialReplication = "ready-for-initial-replication",
        /// The initial copy (full or seeded) runs.
        InitialReplication = "initial-replication",
        /// Cycles (async) or the write stream (sync) run.
        Replicating = "replicating",
        /// A sync group catches up after its link was lost.
        Resynchronizing = "resynchronizing",
        /// `group pause` at the primary: no cycles.
        Paused = "paused",
        /// `failover prepare`: the primary is fenced after a final cycle,
        /// and the replica knows it.
        PreparedForFailover = "prepared-for-failover",
        /// The replica exposes clones of a PIT (`failover test`).
        TestFailover = "test-failover",
        /// The replica promoted a PIT (`failover run`).
        FailedOver = "failed-over",
        /// An old primary that learnt its group was failed over elsewhere
        /// (fenced until `group unfence` or `reverse`).
        FailedOverElsewhere = "failed-over-elsewhere",
    }
}

string_enum! {
    /// A group's role on a site.
    Role, "role", "primary, replica" {
        /// The site whose volumes are replicated.
        Primary = "primary",
        /// The site that keeps the replica store.
        Replica = "replica",
    }
}

string_enum! {
    /// How a group replicates.
    Mode, "mode", "async, sync, continuous" {
        /// Cycles every RPO.
        Async = "async",
        /// Every write is mirrored before it is acknowledged.
        Sync = "sync",
        /// Every write is streamed to the replica's journal as it happens,
        /// acknowledged locally without waiting for the replica.
        Continuous = "continuous",
    }
}

impl Mode {
    /// Writes travel on the stream into the replica's journal (sync and
    /// continuous groups), not in cycles alone.
    pub fn streams(self) -> bool {
        matches!(self, Mode::Sync | Mode::Continuous)
    }
}

string_enum! {
    /// The stream of a synchronous group, as its primary sees it.
    SyncState, "sync state", "in-sync, resynchronizing, degraded, suspended, streaming, spilled" {
        /// Every acknowledged write is on the replica.
        InSync = "in-sync",
        /// Catching up after a loss of the link.
        Resynchronizing = "resynchronizing",
        /// The link is lost; writes go on and are tracked.
        Degraded = "degraded",
        /// The link is lost; writes wait, then fail.
        Suspended = "suspended",
        /// Continuous mode: every write is queued to the replica as it
        /// happens (the lag says how far behind it is).
        Streaming = "streaming",
        /// Continuous mode: the queue outgrew its bound and was dropped;
        /// writes are tracked and the group resynchronizes from the tracker.
        Spilled = "spilled",
    }
}

/// A refused change of state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// No edge of the diagram goes from `from` to `to`.
    #[error("a group cannot move from {from} to {to}")]
    Illegal {
        /// The state the group is in.
        from: GroupState,
        /// The state asked for.
        to: GroupState,
    },
    /// The group is not in one of the states the change starts from
    /// (another change came first).
    #[error("the group is {found}, not {}", list(expected))]
    Unexpected {
        /// The state the group is in.
        found: GroupState,
        /// The states the change starts from.
        expected: Vec<GroupState>,
    },
}

fn list(states: &[GroupState]) -> String {
    states
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

use GroupState::*;

/// The legal moves between two different states (both roles), with what
/// makes them; the module doc's diagram draws the same edges.
pub const EDGES: &[(GroupState, GroupState)] = &[
    // `group start` at the primary; BASE_BEGIN at the replica.
    (ReadyForInitialReplication, InitialReplication),
    // Replica: its first PIT committed (a seeded start).
    (ReadyForInitialReplication, Replicating),
    // The initial copy is done (primary) or its PIT committed (replica).
    (InitialReplication, Replicating),
    // `group pause` / `group resume` at the primary.
    (Replicating, Paused),
    (Paused, Replicating),
    // A sync group lost its link, then caught up.
    (Replicating, Resynchronizing),
    (Resynchronizing, Replicating),
    // `failover prepare` at the primary; GROUP_PREPARED at the replica.
    (Replicating, PreparedForFailover),
    (Paused, PreparedForFailover),
    (TestFailover, PreparedForFailover),
    // `failover revert` at the primary; a cancelled preparation at the
    // replica.
    (PreparedForFailover, Replicating),
    // `failover test` / `failover stop-test` at the replica.
    (Replicating, TestFailover),
    (Paused, TestFailover),
    (TestFailover, Replicating),
    // `failover run` at the replica.
    (Replicating, FailedOver),
    (Paused, FailedOver),
    (PreparedForFailover, FailedOver),
    // `failover revert` at the replica (back to the partner's state),
    // `reverse` (now the primary), a split brain resolved for the other
    // site.
    (FailedOver, Replicating),
    (FailedOver, PreparedForFailover),
    // The partner took the group over: the old primary is fenced.
    (InitialReplication, FailedOverElsewhere),
    (Replicating, FailedOverElsewhere),
    (Resynchronizing, FailedOverElsewhere),
    (Paused, FailedOverElsewhere),
    // `group unfence`, or `reverse` from the partner (now the replica).
    (FailedOverElsewhere, Replicating),
    // The partner was rebuilt and lost its copy (`partner replace`): the
    // primary sends it everything again; `reverse` to a rebuilt site.
    (Replicating, InitialReplication),
    (Paused, InitialReplication),
    (Resynchronizing, InitialReplication),
    (FailedOver, InitialReplication),
];

/// Whether a group in state `from` may move to `to`: `Ok(to)` when an edge
/// of [`EDGES`] joins them or when they are the same state.
pub fn transition(from: GroupState, to: GroupState) -> Result<GroupState, TransitionError> {
    if from == to || EDGES.contains(&(from, to)) {
        Ok(to)
    } else {
        Err(TransitionError::Illegal { from, to })
    }
}

impl GroupState {
    /// Whether a group in this state may move to `to` ([`transition`]).
    pub fn can_move_to(self, to: GroupState) -> bool {
        transition(self, to).is_ok()
    }

    /// The states of a primary that a failover elsewhere supersedes (a
    /// prepared group is already fenced and expects it).
    pub const SUPERSEDABLE: &'static [GroupState] =
        &[Replicating, InitialReplication, Paused, Resynchronizing];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    /// The states and edges the diagram draws.
    fn parse_diagram() -> (BTreeSet<GroupState>, BTreeSet<(GroupState, GroupState)>) {
        let mut ids = BTreeMap::new();
        let mut edges = BTreeSet::new();
        let lines: Vec<&str> = DIAGRAM.lines().map(str::trim).collect();
        for line in &lines {
            if let Some(rest) = line.strip_prefix("state \"") {
                let (name, id) = rest.split_once("\" as ").expect("state \"NAME\" as ID");
                let state: GroupState = name.parse().expect("a GroupState");
                assert!(ids.insert(id.trim(), state).is_none(), "id {id} twice");
            }
        }
        for line in &lines {
            if let Some((from, rest)) = line.split_once("-->") {
                let to = rest.split(':').next().unwrap_or("").trim();
                let from = from.trim();
                if from == "[*]" || to == "[*]" {
                    continue;
                }
                let from = ids.get(from).unwrap_or_else(|| panic!("no state {from}"));
                let to = ids.get(to).unwrap_or_else(|| panic!("no state {to}"));
                assert!(edges.insert((*from, *to)), "edge {from} -> {to} twice");
            }
        }
        (ids.into_values().collect(), edges)
    }

    #[test]
    fn the_diagram_matches_the_enum_and_the_transition_table() {
        let (states, edges) = parse_diagram();
        assert_eq!(states, GroupState::ALL.iter().copied().collect());
        let table: BTreeSet<_> = EDGES.iter().copied().collect();
        assert_eq!(table.len(), EDGES.len(), "an edge twice in EDGES");
        assert_eq!(edges, table);
        for &from in GroupState::ALL {
            for &to in GroupState::ALL {
                assert_eq!(
                    transition(from, to).is_ok(),
                    from == to || edges.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn every_state_reaches_replicating() {
        // A reverse turns a group of any state into a replicating one.
        for &s in GroupState::ALL {
            assert!(s.can_move_to(Replicating), "{s}");
        }
    }

    #[test]
    fn strings_round_trip_through_fromstr_display_and_serde() {
        fn check<T>(all: &[T])
        where
            T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr<Err = ParseError>,
            T: serde::Serialize + serde::de::DeserializeOwned,
        {
            for &v in all {
                let s = v.to_string();
                assert_eq!(s.parse::<T>().unwrap(), v);
                let json = serde_json::to_string(&v).unwrap();
                assert_eq!(json, format!("\"{s}\""));
                assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
            }
            let e = "nope".parse::<T>().unwrap_err();
            assert!(e.to_string().contains("\"nope\""), "{e}");
            assert!(serde_json::from_str::<T>("\"nope\"").is_err());
        }
        check(GroupState::ALL);
        check(Role::ALL);
        check(Mode::ALL);
        check(SyncState::ALL);
        assert_eq!(
            GroupState::ReadyForInitialReplication.as_str(),
            "ready-for-initial-replication"
        );
        assert_eq!(
            GroupState::FailedOverElsewhere.as_str(),
            "failed-over-elsewhere"
        );
        assert_eq!(SyncState::InSync.as_str(), "in-sync");
    }

    #[test]
    fn illegal_moves_are_refused() {
        assert_eq!(
            transition(ReadyForInitialReplication, FailedOver),
            Err(TransitionError::Illegal {
                from: ReadyForInitialReplication,
                to: FailedOver
            })
        );
        assert!(transition(Paused, Resynchronizing).is_err());
        assert!(transition(FailedOverElsewhere, FailedOver).is_err());
        assert_eq!(transition(Paused, Paused), Ok(Paused));
    }
}
