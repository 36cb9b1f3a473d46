//! Run reports for people: a short text summary (the CLI and `offsite demo`
//! print it) and a self-contained HTML page (inline CSS, an inline SVG
//! timeline, no scripts, no external resources) that reads on its own,
//! e.g. attached to an audit ticket.

// Every `write!` here goes to a `String`, which cannot fail: the
// `let _ =` discards an always-`Ok` result.
use std::fmt::Write;

use crate::model::{PlanRunGroup, PlanRunReport};

use crate::runner::ms_between;

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// How consistent the PIT a group was recovered to is, in words (a run
/// without a PIT says nothing of it).
fn consistency(g: &PlanRunGroup) -> &'static str {
    match (g.pit, g.pit_app_consistent) {
        (None, _) => "-",
        (Some(_), true) => "app-consistent",
        (Some(_), false) => "crash-consistent",
    }
}

/// A streaming group's journal window and continuous lag, as the run
/// saw them: what it could have been recovered to instead.
fn journal_window(g: &PlanRunGroup) -> Option<String> {
    let window = match (&g.journal_oldest, &g.journal_newest) {
        (Some(o), Some(n)) => Some(format!("reachable from {o} to {n}")),
        _ => None,
    };
    let lag = g
        .continuous_lag_seconds
        .map(|l| format!("continuous lag {l:.1} s"));
    match (window, lag) {
        (Some(w), Some(l)) => Some(format!("{w}, {l}")),
        (w, l) => w.or(l),
    }
}

fn opt_secs(s: Option<f64>) -> String {
    s.map_or("-".to_string(), |s| format!("{s:.1} s"))
}

/// A few lines: the outcome, RPO per group, RTO, errors.
pub fn summary(r: &PlanRunReport) -> String {
    let mut out = String::new();
    let done = r.steps.iter().filter(|s| s.status == "succeeded").count();
    let _ = writeln!(
        out,
        "plan {} run {} ({} {} -> {} at {}): {} in {}, {done}/{} steps succeeded",
        r.plan,
        r.id,
        r.mode,
        r.from_site,
        r.to_site,
        r.site,
        r.status,
        secs(r.duration_ms),
        r.steps.len()
    );
    if let Some(at) = &r.at {
        let _ = writeln!(out, "  recovered to the newest points at or before {at}");
    }
    for g in &r.groups {
        let _ = writeln!(
            out,
            "  group {}: PIT {}{} of {}, {}, RPO {}",
            g.group,
            g.pit.map_or("-".into(), |p| p.to_string()),
            g.pit_name
                .as_deref()
                .map_or(String::new(), |n| format!(" ({n})")),
            g.pit_created_at.as_deref().unwrap_or("-"),
            consistency(g),
            opt_secs(g.rpo_seconds)
        );
        if let Some(w) = journal_window(g) {
            let _ = writeln!(out, "    journal: {w}");
        }
    }
    if r.rto_seconds.is_some() {
        let _ = writeln!(
            out,
            "  RTO (start to the last VM up): {}",
            opt_secs(r.rto_seconds)
        );
    }
    if let Some(p) = &r.waiting_for {
        let _ = writeln!(
            out,
            "  waiting at a prompt: {p}\n  go on with `offsite plan continue {}`",
            r.plan
        );
    }
    for e in &r.errors {
        let _ = writeln!(out, "  error: {e}");
    }
    if r.status == "failed" {
        let _ = writeln!(
            out,
            "  fix the cause, then `offsite plan run {} --resume` continues from the failed step",
            r.plan
        );
    }
    if let Some(p) = &r.html_path {
        let _ = writeln!(out, "  HTML report: {p}");
    }
    out
}

fn status_color(status: &str) -> &'static str {
    match status {
        "succeeded" => "#2e7d32",
        "failed" => "#c62828",
        "skipped" => "#9e9e9e",
        "waiting" => "#ef6c00",
        "running" => "#1565c0",
        "succeeded-with-errors" => "#ef6c00",
        _ => "#616161",
    }
}

/// The timeline: one bar per step that ran, at its start offset.
fn timeline(r: &PlanRunReport) -> String {
    let rows: Vec<_> = r.steps.iter().filter(|s| s.started_at.is_some()).collect();
    let total = r.duration_ms.max(
        rows.iter()
            .filter_map(|s| {
                s.finished_at
                    .as_deref()
                    .map(|t| ms_between(&r.started_at, t))
            })
            .max()
            .unwrap_or(0),
    );
    let total = total.max(1);
    let label_w = 330.0;
    let bar_w = 620.0;
    let row_h = 22.0;
    let height = row_h * rows.len() as f64 + 40.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" role=\"img\" aria-label=\"timeline\">",
        w = label_w + bar_w + 90.0
    );
    // Axis with five ticks.
    for i in 0..=4 {
        let x = label_w + bar_w * f64::from(i) / 4.0;
        let t = total as f64 * f64::from(i) / 4.0 / 1000.0;
        let _ = write!(
            svg,
            "<line x1=\"{x}\" y1=\"0\" x2=\"{x}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{x}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"middle\" fill=\"#555\">{t:.1} s</text>",
            y = height - 25.0,
            ty = height - 10.0
        );
    }
    for (n, s) in rows.iter().enumerate() {
        let y = n as f64 * row_h + 4.0;
        let start = s
            .started_at
            .as_deref()
            .map_or(0, |t| ms_between(&r.started_at, t));
        let len = s.duration_ms.unwrap_or(0);
        let x = label_w + bar_w * start as f64 / total as f64;
        let w = (bar_w * len as f64 / total as f64).max(2.0);
        let mut label = format!("{}. {}", s.index, s.name);
        if label.chars().count() > 48 {
            label = label.chars().take(47).collect::<String>() + "…";
        }
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{ty}\" font-size=\"12\" fill=\"#222\">{}</text><rect x=\"{x:.1}\" y=\"{y}\" width=\"{w:.1}\" height=\"{h}\" rx=\"3\" fill=\"{}\"><title>{} {} ms</title></rect><text x=\"{tx:.1}\" y=\"{ty}\" font-size=\"11\" fill=\"#555\">{}</text>",
            esc(&label),
            status_color(&s.status),
            esc(&s.name),
            len,
            secs(len),
            ty = y + 13.0,
            h = row_h - 6.0,
            tx = x + w + 4.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The whole report as one HTML page.
pub fn html(r: &PlanRunReport) -> String {
    let mut h = String::new();
    let title = format!("Recovery plan {} — {} run {}", r.plan, r.mode, r.id);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}}\
h1{{font-size:22px;margin:0 0 4px}} h2{{font-size:17px;margin:24px 0 8px}}\
table{{border-collapse:collapse;width:100%;font-size:13px}}\
th,td{{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}}\
th{{background:#f4f4f4}} .status{{font-weight:bold;color:#fff;padding:2px 8px;border-radius:3px}}\
pre{{margin:0;white-space:pre-wrap;font-size:12px;max-width:600px}} .err{{color:#c62828}}\
.facts td:first-child{{width:220px;font-weight:bold}}\
</style></head><body>",
        esc(&title)
    );
    let _ = write!(
        h,
        "<h1>{}</h1><p><span class=\"status\" style=\"background:{}\">{}</span></p>",
        esc(&title),
        status_color(&r.status),
        esc(&r.status)
    );
    let facts = [
        ("Plan", r.plan.clone()),
        ("Mode", r.mode.clone()),
        ("Run at site", r.site.clone()),
        ("Direction", format!("{} → {}", r.from_site, r.to_site)),
        (
            "Recovered to",
            r.at.as_ref().map_or("the newest points".to_string(), |at| {
                format!("the newest points at or before {at}")
            }),
        ),
        ("Started", r.started_at.clone()),
        (
            "Finished",
            r.finished_at.clone().unwrap_or_else(|| "-".into()),
        ),
        ("Duration", secs(r.duration_ms)),
        ("Achieved RTO (to the last VM up)", opt_secs(r.rto_seconds)),
        ("Errors", r.errors.len().to_string()),
    ];
    h.push_str("<table class=\"facts\">");
    for (k, v) in facts {
        let _ = write!(h, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
    }
    h.push_str("</table>");
    if let Some(p) = &r.waiting_for {
        let _ = write!(
            h,
            "<p><b>Waiting at a prompt:</b> {} — continue with <code>offsite plan continue {}</code></p>",
            esc(p),
            esc(&r.plan)
        );
    }
    h.push_str("<h2>Groups: recovery points and achieved RPO</h2><table><tr><th>Group</th><th>PIT</th><th>PIT name</th><th>PIT time</th><th>Consistency</th><th>RPO (PIT age when used)</th><th>Journal</th></tr>");
    if r.groups.is_empty() {
        h.push_str("<tr><td colspan=\"7\">no PIT used by this run</td></tr>");
    }
    for g in &r.groups {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&g.group),
            g.pit.map_or("-".into(), |p| p.to_string()),
            esc(g.pit_name.as_deref().unwrap_or("-")),
            esc(g.pit_created_at.as_deref().unwrap_or("-")),
            consistency(g),
            opt_secs(g.rpo_seconds),
            esc(&journal_window(g).unwrap_or_else(|| "-".into()))
        );
    }
    h.push_str("</table><h2>Timeline</h2>");
    h.push_str(&timeline(r));
    h.push_str("<h2>Steps</h2><table><tr><th>#</th><th>Step</th><th>Kind</th><th>Site</th><th>Tier</th><th>Status</th><th>Start</th><th>Duration</th><th>Output / error</th></tr>");
    for s in &r.steps {
        let mut detail = format!("<pre>{}</pre>", esc(s.output.trim_end()));
        if let Some(e) = &s.error {
            let _ = write!(detail, "<pre class=\"err\">{}</pre>", esc(e));
        }
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><span class=\"status\" style=\"background:{}\">{}</span></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            s.index,
            esc(&s.name),
            esc(&s.kind),
            esc(&s.site),
            s.tier.map_or("-".into(), |t| t.to_string()),
            status_color(&s.status),
            esc(&s.status),
            esc(s.started_at.as_deref().unwrap_or("-")),
            s.duration_ms.map_or("-".into(), secs),
            detail
        );
    }
    h.push_str("</table>");
    if !r.errors.is_empty() {
        h.push_str("<h2>Errors</h2><ul>");
        for e in &r.errors {
            let _ = write!(h, "<li class=\"err\">{}</li>", esc(e));
        }
        h.push_str("</ul>");
    }
    let _ = writeln!(
        h,
        "<p style=\"color:#777;font-size:11px\">offsite {} — report {}</p></body></html>",
        env!("CARGO_PKG_VERSION"),
        esc(&r.id)
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PlanRunStep;

    #[test]
    fn html_escapes_and_holds_every_step() {
        let step = |i: u32, name: &str, status: &str| PlanRunStep {
            index: i,
            name: name.into(),
            kind: "command".into(),
            group: None,
            vm: None,
            tier: Some(1),
            site: "b".into(),
            status: status.into(),
            started_at: Some("2025-01-01T00:00:01.000Z".into()),
            finished_at: Some("2025-01-01T00:00:02.500Z".into()),
            duration_ms: Some(1500),
            output: "<ok>".into(),
            error: (status == "failed").then(|| "boom & bust".into()),
        };
        let r = PlanRunReport {
            id: "b-1".into(),
            plan: "dr".into(),
            mode: "test".into(),
            site: "b".into(),
            status: "failed".into(),
            from_site: "a".into(),
            to_site: "b".into(),
            started_at: "2025-01-01T00:00:00.000Z".into(),
            finished_at: Some("2025-01-01T00:00:03.000Z".into()),
            duration_ms: 3000,
            rto_seconds: Some(2.5),
            groups: vec![PlanRunGroup {
                group: "g1".into(),
                pit: Some(4),
                pit_name: None,
                pit_created_at: Some("2024-12-31T23:59:50Z".into()),
                rpo_seconds: Some(10.0),
                pit_app_consistent: true,
                journal_oldest: None,
                journal_newest: None,
                continuous_lag_seconds: None,
            }],
            steps: vec![
                step(0, "check <db>", "succeeded"),
                step(1, "smoke", "failed"),
            ],
            errors: vec!["step 1 (smoke) at b: boom & bust".into()],
            waiting_for: None,
            html_path: None,
            at: Some("2026-12-07T08:00:00Z".into()),
        };
        let page = html(&r);
        assert!(
            page.contains("2026-12-07T08:00:00Z"),
            "the time recovered to"
        );
        assert!(
            summary(&r)
                .contains("recovered to the newest points at or before 2026-12-07T08:00:00Z")
        );
        assert!(page.contains("check &lt;db&gt;") && page.contains("smoke"));
        assert!(page.contains("boom &amp; bust"));
        assert!(page.contains("<svg") && page.contains("10.0 s") && page.contains("2.5 s"));
        assert!(!page.contains("<script"));
        assert!(page.contains("<td>app-consistent</td>"), "{page}");
        let text = summary(&r);
        assert!(
            text.contains("--resume") && text.contains("RPO 10.0 s"),
            "{text}"
        );
        assert!(text.contains("app-consistent, RPO"), "{text}");
        let crash = PlanRunReport {
            groups: vec![PlanRunGroup {
                pit_app_consistent: false,
                journal_oldest: None,
                journal_newest: None,
                continuous_lag_seconds: None,
                ..r.groups[0].clone()
            }],
            ..r.clone()
        };
        assert!(summary(&crash).contains("crash-consistent, RPO"));
        // A streaming group: its journal window and lag, in both.
        let journaled = PlanRunReport {
            groups: vec![PlanRunGroup {
                journal_oldest: Some("2026-12-06T08:00:00Z".into()),
                journal_newest: Some("2026-12-07T07:59:59Z".into()),
                continuous_lag_seconds: Some(0.4),
                ..r.groups[0].clone()
            }],
            ..r.clone()
        };
        let window =
            "reachable from 2026-12-06T08:00:00Z to 2026-12-07T07:59:59Z, continuous lag 0.4 s";
        assert!(
            summary(&journaled).contains(&format!("journal: {window}")),
            "{}",
            summary(&journaled)
        );
        assert!(html(&journaled).contains(&format!("<td>{window}</td>")));
        assert!(page.contains("<td>-</td></tr>"), "no journal: a dash");
    }
}
