//! The journal of a sync group (issue 19) between two real `offsite
//! serve` sites: writes from qemu-io across two volumes for a few seconds
//! leave checkpoints about a second apart in `pit list --checkpoints`
//! (asked at the replica, and at the primary through it), the history
//! outlives a seal, and `group set --journal-max-size` prunes it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// Writes 256 KiB to `d0` and `d1` in turn for `secs` seconds of wall
/// clock (each qemu-io run opens its own NBD connection); returns how
/// many writes were made.
fn write_for(a: &TestSite, secs: u64, round: u8) -> u64 {
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n = 0u64;
    while Instant::now() < end {
        let volume = if n.is_multiple_of(2) { "d0" } else { "d1" };
        let offset = (n % 16) * 256 * 1024;
        let pattern = (u64::from(round) * 37 + n) % 250 + 1;
        qemu_io(
            &a.url(volume),
            &[&format!("write -P {pattern} {offset} 256k")],
        );
        n += 1;
    }
    n
}

/// `pit list GROUP --checkpoints --all --json` at `site`.
fn checkpoints(site: &TestSite, group: &str) -> Value {
    site.json(&["pit", "list", group, "--checkpoints", "--all"])
}

fn times(list: &Value) -> Vec<u64> {
    list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|c| c["time_ns"].as_u64().expect("time_ns"))
        .collect()
}

#[test]
fn a_sync_group_keeps_checkpoints_a_second_apart_and_prunes_them() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    a.create_volume("d0", "4M");
    a.create_volume("d1", "4M");
    create_group(
        &a,
        "j",
        "site-b",
        &["--volume", "d0", "--volume", "d1"],
        &[
            "--mode",
            "sync",
            "--compress",
            "none",
            "--checkpoint-interval",
            "1s",
        ],
    );
    a.json(&["group", "start", "j"]);
    wait_group(&a, "j", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    });

    // A few seconds of writes across both volumes, a seal, a few more.
    let writes = write_for(&a, 3, 1);
    a.json(&["sync", "j"]);
    let writes = writes + write_for(&a, 3, 2);
    let at_b = checkpoints(&b, "j");
    let t = times(&at_b);
    eprintln!("{writes} writes; checkpoints at the replica: {at_b}");
    assert!(
        t.len() >= 3,
        "six seconds of writes leave a checkpoint about every second: {at_b}"
    );
    assert_eq!(at_b["count"].as_u64(), Some(t.len() as u64));
    assert_eq!(at_b["site"], "site-b");
    // The interval's timer never fires early: consecutive checkpoints are
    // about a second apart (a late tick only makes a gap longer; half a
    // second covers a tick that fired late followed by one on time).
    for w in t.windows(2) {
        assert!(
            w[1] - w[0] >= 500_000_000,
            "checkpoints {} ns apart: {at_b}",
            w[1] - w[0]
        );
    }
    for c in at_b["checkpoints"].as_array().unwrap() {
        assert_eq!(c["consistency"], "crash");
    }
    // The seal kept the sealed journal file as history.
    assert!(at_b["files"].as_u64().unwrap() >= 2, "{at_b}");

    // The primary asks the replica: the same journal.
    let at_a = checkpoints(&a, "j");
    assert_eq!(at_a["site"], "site-b");
    assert!(times(&at_a).starts_with(&t), "{at_a} vs {at_b}");
    // The summary alone leaves the list out.
    let summary = b.json(&["pit", "list", "j", "--checkpoints"]);
    assert!(summary["checkpoints"].as_array().unwrap().is_empty());
    assert_eq!(summary["oldest"]["time_ns"].as_u64(), Some(t[0]));
    // And so does the REST API.
    let (code, body) = api_request(&b, "GET", "/groups/j/checkpoints?all=true", None);
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert!(times(&api).starts_with(&t));

    // Status: the settings, and the window (the replica's from its store;
    // the primary's as reported at the seal).
    let st = group_status(&b, "j");
    assert_eq!(st["journal"]["checkpoint_interval_ms"], 1000);
    assert_eq!(st["journal"]["history_seconds"], 86400);
    assert!(st["journal"]["oldest_checkpoint_at"].is_string(), "{st}");
    let st = group_status(&a, "j");
    assert!(st["journal"]["newest_checkpoint_at"].is_string(), "{st}");

    // A size bound below what the journal holds: the next commit drops
    // history from the front.
    a.json(&["group", "set", "j", "--journal-max-size", "1M"]);
    assert_eq!(group_status(&b, "j")["journal"]["max_bytes"], 1 << 20);
    let before = checkpoints(&b, "j");
    a.json(&["sync", "j"]);
    let after = checkpoints(&b, "j");
    eprintln!("after --journal-max-size 1M and a seal: {after}");
    assert!(
        after["count"].as_u64() < before["count"].as_u64(),
        "{before} -> {after}"
    );
    // The seal started a file; pruning removed at least the oldest.
    assert!(
        after["files"].as_u64() <= before["files"].as_u64(),
        "{before} -> {after}"
    );
    if let Some(oldest) = after["oldest"]["time_ns"].as_u64() {
        assert!(oldest > t[0], "{after}");
    }
    // Nothing acknowledged was lost: the replica still verifies.
    let v = a.json(&["verify", "j"]);
    assert_eq!(v["differing_blocks"], 0, "{v}");
    let _ = writes;
}
