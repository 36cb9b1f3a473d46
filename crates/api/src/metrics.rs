//! `/metrics` in the Prometheus text exposition format (version 0.0.4).
//!
//! Rendered by hand: the families are few gauges and counters read from
//! atomics at scrape time, which the format makes a `format!` per line;
//! a metrics registry crate would add global state for no gain.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::ApiState;

/// Something that adds metric families to `/metrics`.
pub trait MetricsSource: Send + Sync + 'static {
    /// Appends complete families (`# HELP`, `# TYPE`, samples) to `out`.
    fn render(&self, out: &mut String);
}

pub use offsite_api_types::metrics::family;

fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(crate) async fn render(State(s): State<ApiState>) -> Response {
    let body = tokio::task::spawn_blocking(move || {
        let mut out = String::new();
        let volumes = s.site.list_volumes().unwrap_or_default();
        let per = |f: &dyn Fn(&offsite_api_types::VolumeInfo) -> u64| -> Vec<(String, u64)> {
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
