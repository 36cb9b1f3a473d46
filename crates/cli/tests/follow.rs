//! `events --follow` and `group status --watch` (issue 17, truthful status):
//! long-running views that print what changes as it happens, one JSON
//! object per line with --json, until interrupted.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use offsite_testkit::TestSite;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

/// Spawns `offsite ARGS --json --dir SITE` and returns it with a channel
/// of its stdout lines parsed as JSON.
fn spawn_json_lines(site: &TestSite, args: &[&str]) -> (KillOnDrop, mpsc::Receiver<Value>) {
    let mut child: Child = Command::new(bin())
        .args(args)
        .arg("--json")
        .arg("--dir")
        .arg(site.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn offsite");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    (KillOnDrop(Some(child)), rx)
}

/// The first line `cond` accepts, within [`LIMIT`].
fn next_matching(rx: &mpsc::Receiver<Value>, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if cond(&v) => return v,
            Ok(_) => {}
            Err(e) => panic!("no line with {what} ({e})"),
        }
    }
}

#[test]
fn events_follow_prints_new_events_as_they_happen() {
    let site = site("site-a");
    site.create_volume("before", "1M");
    let (_follow, rx) = spawn_json_lines(&site, &["events", "--follow", "--limit", "5"]);
    // The newest events first, then the new ones as they come.
    next_matching(&rx, "the earlier volume", |e| e["subject"] == "before");
    site.create_volume("after", "1M");
    let e = next_matching(&rx, "the new volume", |e| e["subject"] == "after");
    assert!(
        e["kind"].as_str().is_some_and(|k| k.starts_with("volume.")),
        "{e}"
    );
}

#[test]
fn group_status_watch_shows_each_change() {
    let (a, _b) = group_pair();
    a.create_volume("d0", "1M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    let (_watch, rx) = spawn_json_lines(
        &a,
        &["group", "status", "g", "--watch", "--interval", "0.2"],
    );
    let first = next_matching(&rx, "the group", |s| s["name"] == "g");
    assert_eq!(first["state"], "ready-for-initial-replication", "{first}");
    a.json(&["group", "start", "g"]);
    next_matching(&rx, "replicating", |s| s["state"] == "replicating");
    a.json(&["group", "pause", "g"]);
    next_matching(&rx, "paused", |s| s["state"] == "paused");
}
