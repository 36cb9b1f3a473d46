//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Rendered by hand: the families are few gauges and counters read from
//! atomics at scrape time, which the format makes a `format!` per line;
//! a metrics registry crate would add global state for no gain.

use std::fmt::Write;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use offsite_replication::{GroupMetrics, SyncMetrics};

use crate::ApiState;

/// Something that adds metric families to `/metrics`.
pub trait MetricsSource: Send + Sync + 'static {
    /// Appends complete families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render(&self, out: &mut String);
}

/// Writes one family with samples `(labels, value)`.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    // Writing to a `String` cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// Appends the per-group families of the replication service's snapshot
/// ([`offsite_replication::Replication::group_metrics`]).
pub fn group_families(out: &mut String, groups: &[GroupMetrics]) {
    let per = |f: &dyn Fn(&GroupMetrics) -> u64| -> Vec<(String, u64)> {
        groups
            .iter()
            .map(|g| (format!("group=\"{}\",role=\"{}\"", g.group, g.role), f(g)))
            .collect()
    };
    let per_sync = |f: &dyn Fn(&SyncMetrics) -> u64| -> Vec<(String, u64)> {
        groups
            .iter()
            .filter_map(|g| Some((format!("group=\"{}\"", g.group), f(g.sync.as_ref()?))))
            .collect()
    };
    family(
        out,
        "offsite_group_lag_seconds",
        "gauge",
        "Age of the group's newest PIT.",
        &per(&|g| g.lag_seconds),
    );
    family(
        out,
        "offsite_group_pending_bytes",
        "gauge",
        "Changed bytes not yet in a PIT (primary).",
        &per(&|g| g.pending_bytes),
    );
    family(
        out,
        "offsite_group_pits",
        "gauge",
        "PITs held.",
        &per(&|g| g.pits),
    );
    family(
        out,
        "offsite_group_cycles_total",
        "counter",
        "Replication cycles attempted.",
        &per(&|g| g.cycles),
    );
    family(
        out,
        "offsite_group_cycle_errors_total",
        "counter",
        "Replication cycles that failed.",
        &per(&|g| g.cycle_errors),
    );
    family(
        out,
        "offsite_group_last_cycle_bytes",
        "gauge",
        "Data bytes shipped by the last successful cycle.",
        &per(&|g| g.last_cycle_bytes),
    );
    family(
        out,
        "offsite_group_last_cycle_duration_ms",
        "gauge",
        "Duration of the last successful cycle (second resolution).",
        &per(&|g| g.last_cycle_duration_ms),
    );
    family(
        out,
        "offsite_group_sent_bytes_total",
        "counter",
        "Data bytes sent by cycles and this daemon's initial replication.",
        &per(&|g| g.sent_bytes),
    );
    family(
        out,
        "offsite_group_sync_in_sync",
        "gauge",
        "Sync group: 1 while every write reaches the replica's log before it is acknowledged.",
        &per_sync(&|s| u64::from(s.in_sync)),
    );
    family(
        out,
        "offsite_group_sync_batches_total",
        "counter",
        "Sync group: batches the replica acknowledged (one replica fsync each).",
        &per_sync(&|s| s.batches),
    );
    family(
        out,
        "offsite_group_sync_writes_total",
        "counter",
        "Sync group: writes acknowledged by the replica (writes / batches = group commit).",
        &per_sync(&|s| s.writes),
    );
    family(
        out,
        "offsite_group_sync_link_losses_total",
        "counter",
        "Sync group: times the partner was lost (the on-link-loss policy applied).",
        &per_sync(&|s| s.link_losses),
    );
    family(
        out,
        "offsite_group_sync_failed_writes_total",
        "counter",
        "Sync group: writes failed by suspend-writes after their timeout.",
        &per_sync(&|s| s.failed_writes),
    );
    family(
        out,
        "offsite_group_continuous_spills_total",
        "counter",
        "Continuous group: write queues dropped for outgrowing replication.continuous_queue_bytes (each resynchronized from the tracker).",
        &per_sync(&|s| s.spills),
    );
    // Seconds with a fraction: the one family whose values are not whole.
    let name = "offsite_group_continuous_lag_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Continuous group: seconds of writes the replica does not have yet (0 when it acknowledged every write)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for g in groups {
        if let Some(ms) = g.continuous_lag_ms {
            let _ = writeln!(
                out,
                "{name}{{group=\"{}\"}} {}.{:03}",
                g.group,
                ms / 1000,
                ms % 1000
            );
        }
    }
}

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) async fn render(State(s): State<ApiState>) -> Response {
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let volumes = s.site.list_volumes().unwrap_or_default();
        let per = |f: &dyn Fn(&offsite_engine::VolumeInfo) -> u64| -> Vec<(String, u64)> {
            volumes
                .iter()
                .map(|v| (format!("volume=\"{}\"", label(&v.name)), f(v)))
                .collect()
        };
        family(
            &mut out,
            "offsite_volumes",
            "gauge",
            "Volumes on this site.",
            &[(String::new(), volumes.len() as u64)],
        );
        family(
            &mut out,
            "offsite_volume_size_bytes",
            "gauge",
            "Volume size in bytes.",
            &per(&|v| v.size_bytes),
        );
        family(
            &mut out,
            "offsite_volume_dirty_bytes",
            "gauge",
            "Changed bytes not yet replicated.",
            &per(&|v| v.dirty_bytes),
        );
        family(
            &mut out,
            "offsite_volume_nbd_connections",
            "gauge",
            "Open NBD connections per volume.",
            &per(&|v| v.connections),
        );
        for source in s.metrics.iter() {
            source.render(&mut out);
        }
        out
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

#[cfg(test)]
mod tests {
    use offsite_catalog::Role;

    use super::*;

    fn group(name: &str, role: Role, n: u64, sync: Option<SyncMetrics>) -> GroupMetrics {
        GroupMetrics {
            group: name.into(),
            role,
            lag_seconds: n,
            continuous_lag_ms: (n == 40).then_some(1250),
            pending_bytes: n + 1,
            pits: n + 2,
            cycles: n + 3,
            cycle_errors: n + 4,
            last_cycle_bytes: n + 5,
            last_cycle_duration_ms: (n + 6) * 1000,
            sent_bytes: n + 7,
            sync,
        }
    }

    /// The group families as the daemon rendered them before the snapshot
    /// moved out of `offsite-replication`: names, HELP/TYPE text, labels and values.
    #[test]
    fn group_families_render_the_snapshot() {
        let sync = SyncMetrics {
            in_sync: true,
            spills: 44,
            batches: 40,
            writes: 41,
            link_losses: 42,
            failed_writes: 43,
        };
        let groups = [
            group("g1", Role::Primary, 10, None),
            group("g2", Role::Replica, 20, None),
            group("s1", Role::Primary, 30, Some(sync)),
        ];
        let mut out = String::new();
        group_families(&mut out, &groups);
        let expected = r#"# HELP offsite_group_lag_seconds Age of the group's newest PIT.
# TYPE offsite_group_lag_seconds gauge
offsite_group_lag_seconds{group="g1",role="primary"} 10
offsite_group_lag_seconds{group="g2",role="replica"} 20
offsite_group_lag_seconds{group="s1",role="primary"} 30
# HELP offsite_group_pending_bytes Changed bytes not yet in a PIT (primary).
# TYPE offsite_group_pending_bytes gauge
offsite_group_pending_bytes{group="g1",role="primary"} 11
offsite_group_pending_bytes{group="g2",role="replica"} 21
offsite_group_pending_bytes{group="s1",role="primary"} 31
# HELP offsite_group_pits PITs held.
# TYPE offsite_group_pits gauge
offsite_group_pits{group="g1",role="primary"} 12
offsite_group_pits{group="g2",role="replica"} 22
offsite_group_pits{group="s1",role="primary"} 32
# HELP offsite_group_cycles_total Replication cycles attempted.
# TYPE offsite_group_cycles_total counter
offsite_group_cycles_total{group="g1",role="primary"} 13
offsite_group_cycles_total{group="g2",role="replica"} 23
offsite_group_cycles_total{group="s1",role="primary"} 33
# HELP offsite_group_cycle_errors_total Replication cycles that failed.
# TYPE offsite_group_cycle_errors_total counter
offsite_group_cycle_errors_total{group="g1",role="primary"} 14
offsite_group_cycle_errors_total{group="g2",role="replica"} 24
offsite_group_cycle_errors_total{group="s1",role="primary"} 34
# HELP offsite_group_last_cycle_bytes Data bytes shipped by the last successful cycle.
# TYPE offsite_group_last_cycle_bytes gauge
offsite_group_last_cycle_bytes{group="g1",role="primary"} 15
offsite_group_last_cycle_bytes{group="g2",role="replica"} 25
offsite_group_last_cycle_bytes{group="s1",role="primary"} 35
# HELP offsite_group_last_cycle_duration_ms Duration of the last successful cycle (second resolution).
# TYPE offsite_group_last_cycle_duration_ms gauge
offsite_group_last_cycle_duration_ms{group="g1",role="primary"} 16000
offsite_group_last_cycle_duration_ms{group="g2",role="replica"} 26000
offsite_group_last_cycle_duration_ms{group="s1",role="primary"} 36000
# HELP offsite_group_sent_bytes_total Data bytes sent by cycles and this daemon's initial replication.
# TYPE offsite_group_sent_bytes_total counter
offsite_group_sent_bytes_total{group="g1",role="primary"} 17
offsite_group_sent_bytes_total{group="g2",role="replica"} 27
offsite_group_sent_bytes_total{group="s1",role="primary"} 37
# HELP offsite_group_sync_in_sync Sync group: 1 while every write reaches the replica's log before it is acknowledged.
# TYPE offsite_group_sync_in_sync gauge
offsite_group_sync_in_sync{group="s1"} 1
# HELP offsite_group_sync_batches_total Sync group: batches the replica acknowledged (one replica fsync each).
# TYPE offsite_group_sync_batches_total counter
offsite_group_sync_batches_total{group="s1"} 40
# HELP offsite_group_sync_writes_total Sync group: writes acknowledged by the replica (writes / batches = group commit).
# TYPE offsite_group_sync_writes_total counter
offsite_group_sync_writes_total{group="s1"} 41
# HELP offsite_group_sync_link_losses_total Sync group: times the partner was lost (the on-link-loss policy applied).
# TYPE offsite_group_sync_link_losses_total counter
offsite_group_sync_link_losses_total{group="s1"} 42
# HELP offsite_group_sync_failed_writes_total Sync group: writes failed by suspend-writes after their timeout.
# TYPE offsite_group_sync_failed_writes_total counter
offsite_group_sync_failed_writes_total{group="s1"} 43
# HELP offsite_group_continuous_spills_total Continuous group: write queues dropped for outgrowing replication.continuous_queue_bytes (each resynchronized from the tracker).
# TYPE offsite_group_continuous_spills_total counter
offsite_group_continuous_spills_total{group="s1"} 44
# HELP offsite_group_continuous_lag_seconds Continuous group: seconds of writes the replica does not have yet (0 when it acknowledged every write).
# TYPE offsite_group_continuous_lag_seconds gauge
"#;
        assert_eq!(out, expected);
    }

    /// A continuous group's lag is rendered in seconds with its
    /// milliseconds (the other families are whole numbers).
    #[test]
    fn a_continuous_group_renders_its_lag_with_a_fraction() {
        let mut out = String::new();
        group_families(
            &mut out,
            &[group("c1", Role::Primary, 40, Some(SyncMetrics::default()))],
        );
        assert!(
            out.contains("\noffsite_group_continuous_lag_seconds{group=\"c1\"} 1.250\n"),
            "{out}"
        );
        assert!(out.contains("\noffsite_group_continuous_spills_total{group=\"c1\"} 0\n"));
    }

    #[test]
    fn no_groups_still_declares_the_families() {
        let mut out = String::new();
        group_families(&mut out, &[]);
        assert_eq!(out.lines().count(), 15 * 2);
        assert!(out.starts_with("# HELP offsite_group_lag_seconds "));
    }

    #[test]
    fn family_without_labels() {
        let mut out = String::new();
        family(&mut out, "x_total", "counter", "X.", &[(String::new(), 3)]);
        assert_eq!(
            out,
            "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n"
        );
    }
}
