//! Recovery to a time (`--at TIME` of `failover run`, `failover run
//! --test`, `pit export` and `plan run`): the newest consistent point at or
//! before the time, among the group's PITs and its journal's reachable
//! checkpoints (a sync or continuous group's; an async group has PITs
//! only), chosen by [`crate::decide::recovery_point`]. A checkpoint is read
//! through its [`CheckpointImage`] (the PIT it starts from plus the
//! journal's blocks up to it), shared with the clones or promoted volumes
//! made over it through the site's image cache.

use std::path::Path;
use std::sync::Arc;

use offsite_catalog::GroupRow;
use offsite_replica_store::{CheckpointImage, Consistency, PitId, ReplicaStore};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::decide::{Candidate, PointRefusal};
use crate::model::{PointKind, RecoveryPoint};
use crate::{ReplError, Replication, invalid};

/// What a recovery reads: a PIT, or a checkpoint's image.
#[derive(Clone)]
pub(crate) enum Source {
    /// A PIT of the store.
    Pit(PitId),
    /// A checkpoint's image (holds the PIT it starts from).
    Checkpoint(Arc<CheckpointImage>),
}

impl Source {
    /// The PIT a failover row pins: the PIT itself, or the PIT the image
    /// starts from (retention must keep it; the store refuses to merge it
    /// into the base while the image lives anyway).
    pub(crate) fn pit(&self) -> u64 {
        match self {
            Source::Pit(id) => id.get(),
            Source::Checkpoint(image) => image.starts_from().map_or(0, PitId::get),
        }
    }

    /// The checkpoint, when it is one.
    pub(crate) fn checkpoint(&self) -> Option<u64> {
        match self {
            Source::Pit(_) => None,
            Source::Checkpoint(image) => Some(image.info().id.get()),
        }
    }

    /// `PIT 7` or `checkpoint 42 (over PIT 7)`, for messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Source::Pit(id) => format!("PIT {id}"),
            Source::Checkpoint(image) => {
                format!("checkpoint {} (over PIT {})", image.info().id, self.pit())
            }
        }
    }
}

/// Nanoseconds since the epoch of an RFC 3339 time (0 before the epoch).
fn rfc3339_ns(t: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(t, &Rfc3339).ok()?;
    Some(u64::try_from(t.unix_timestamp_nanos()).unwrap_or(0))
}

/// The unit of the last digit of an RFC 3339 time's seconds: a PIT's
/// `created_at` in whole seconds may stand for any instant of its second.
fn precision_ns(t: &str) -> u64 {
    let digits = t
        .split_once('.')
        .map_or(0, |(_, f)| f.bytes().take_while(u8::is_ascii_digit).count());
    10u64.pow(9u32.saturating_sub(digits as u32))
}

/// RFC 3339 of nanoseconds since the epoch.
pub(crate) fn ns_rfc3339(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| ns.to_string())
}

/// The time of `--at`, checked: the command line turns relative forms
/// into RFC 3339 before it asks.
pub(crate) fn parse_at(at: &str) -> Result<u64, ReplError> {
    rfc3339_ns(at).ok_or_else(|| {
        invalid(format!(
            "--at {at:?} is not an RFC 3339 time: give e.g. 2026-12-07T08:15:30Z (or, on the command line, a relative time such as `10m ago`)"
        ))
    })
}

impl Replication {
    /// The source `--at` (an RFC 3339 time) names in `group`'s store, and
    /// what was chosen. The store's PITs count with their catalog marks
    /// (app-consistent); the journal's checkpoints count when reachable.
    pub(crate) async fn resolve_at(
        &self,
        row: &GroupRow,
        store: &Arc<ReplicaStore>,
        at: &str,
    ) -> Result<(Source, RecoveryPoint), ReplError> {
        let requested_ns = parse_at(at)?;
        let site = self.site.clone();
        let store = store.clone();
        let row = row.clone();
        let at = at.to_string();
        crate::run_blocking(move || {
            let group = row.name.as_str();
            let marks = site.groups().pits(group)?;
            let pits = store.pits();
            let mut candidates: Vec<Candidate> = pits
                .iter()
                .filter_map(|p| {
                    let time_ns = rfc3339_ns(&p.created_at)?;
                    Some(Candidate {
                        kind: PointKind::Pit,
                        id: p.id.get(),
                        time_ns,
                        certain_ns: time_ns + precision_ns(&p.created_at) - 1,
                        after_pit: p.id.get(),
                    })
                })
                .collect();
            let storage = |e: offsite_replica_store::ReplicaError| {
                invalid(format!("reading the journal of group {group}: {e}"))
            };
            let summary = store
                .list_checkpoints(offsite_replica_store::Listing::Summary)
                .map_err(storage)?
                .summary;
            let best = store
                .checkpoint_at_or_before(requested_ns)
                .map_err(storage)?;
            // The best one answers the time; the oldest one names the
            // earliest reachable time when nothing does.
            for c in best.iter().chain(summary.oldest.iter()) {
                candidates.push(Candidate {
                    kind: PointKind::Checkpoint,
                    id: c.id.get(),
                    time_ns: c.time_ns,
                    certain_ns: c.time_ns,
                    after_pit: c.follows.map_or(0, PitId::get),
                });
            }
            let chosen = match crate::decide::recovery_point(requested_ns, &candidates) {
                Ok(c) => c,
                Err(PointRefusal::Nothing) => {
                    return Err(invalid(format!(
                        "group {group} has no PIT and no journal checkpoint yet; wait for its first PIT (`offsite pit list {group}`)"
                    )));
                }
                Err(PointRefusal::TooEarly(oldest)) => {
                    return Err(invalid(format!(
                        "group {group} cannot go back to {at}: the oldest point it can recover to is {} {} at {}; give {} or later (`offsite pit list {group}` lists the PITs)",
                        oldest.kind.as_str(),
                        oldest.id,
                        ns_rfc3339(oldest.time_ns),
                        // A time in whole seconds counts from its end.
                        ns_rfc3339(oldest.certain_ns)
                    )));
                }
            };
            let (source, name, app_consistent) = match chosen.kind {
                PointKind::Pit => {
                    let id = PitId::new(chosen.id).expect("PIT ids are not 0");
                    let p = pits.iter().find(|p| p.id == id).expect("a listed PIT");
                    let app = marks.iter().any(|m| m.id == chosen.id && m.app_consistent);
                    (Source::Pit(id), p.name.clone(), app)
                }
                PointKind::Checkpoint => {
                    let dir = row.store_dir.clone().unwrap_or_default();
                    let image = site.checkpoint_image(Path::new(&dir), chosen.id)?;
                    if image.starts_from().is_none() {
                        // Only the group's very first state has no PIT,
                        // and a replica holds one from its first cycle on.
                        return Err(invalid(format!(
                            "checkpoint {} of group {group} starts from the store's first base, which no PIT pins; choose a later time",
                            chosen.id
                        )));
                    }
                    let info = image.info().clone();
                    let app = info.consistency == Consistency::Application;
                    (Source::Checkpoint(image), info.name, app)
                }
            };
            let point = RecoveryPoint {
                kind: chosen.kind,
                id: chosen.id,
                name,
                time: ns_rfc3339(chosen.time_ns),
                app_consistent,
                pit: source.pit(),
                requested: ns_rfc3339(requested_ns),
                before_requested_ms: (requested_ns - chosen.time_ns) / 1_000_000,
            };
            tracing::info!(
                group,
                requested = %point.requested,
                chosen = %source.describe(),
                time = %point.time,
                "recovery point chosen"
            );
            Ok((source, point))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_through_nanoseconds() {
        let ns = rfc3339_ns("2026-12-07T08:15:30.25+01:00").unwrap();
        assert_eq!(ns_rfc3339(ns), "2026-12-07T07:15:30.25Z");
        assert!(parse_at("10m ago").is_err());
        assert_eq!(precision_ns("2026-12-07T08:15:30Z"), 1_000_000_000);
        assert_eq!(precision_ns("2026-12-07T08:15:30.25Z"), 10_000_000);
        assert_eq!(precision_ns("2026-12-07T08:15:30.123456789+01:00"), 1);
        assert!(parse_at("2026-12-07 08:15").is_err());
    }
}
