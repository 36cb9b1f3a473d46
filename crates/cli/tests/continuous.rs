//! Continuous groups (issue 19): every write is streamed to the replica
//! as it happens and completes without waiting for it; a lost or slow link
//! never blocks the writer (the queue spills to the change tracker), the
//! group resynchronizes and returns to streaming by itself, and `verify`
//! finds the replica equal; `group set --mode` converts a live group
//! between async, continuous and sync.

mod common;

use common::links::{cut_link, heal_link, proxied_pair};
use common::*;
use offsite_testkit::proxy::Direction;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// Waits until the group streams again with every write acknowledged.
fn streaming(site: &TestSite, group: &str) -> Value {
    wait_group(site, group, "streaming, lag 0", GROUP_LIMIT, |s| {
        s["sync_state"] == "streaming" && s["continuous_lag_seconds"].as_f64() == Some(0.0)
    })
}

/// Runs `cmds` through qemu-io on its own thread and waits for it: the
/// writes must all complete (within the liveness bound) whatever the link
/// does — a writer that waited for the replica would hang here.
fn writes_complete(url: &str, cmds: Vec<String>) {
    let url = url.to_string();
    let writer = std::thread::spawn(move || {
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(&url, &cmds);
    });
    wait_until("the writes complete", GROUP_LIMIT, || writer.is_finished());
    writer.join().expect("qemu-io");
}

/// `count` writes of `len` bytes each from `start` onwards, pattern `p`.
fn writes(p: u8, start: u64, len: u64, count: u64) -> Vec<String> {
    (0..count)
        .map(|i| format!("write -P {p:#x} {} {len}", start + i * len))
        .collect()
}

/// The messages of group g's `group.sync` events (streaming, spilled,
/// out of sync).
fn sync_events(a: &TestSite) -> Vec<String> {
    events_about(a, "g")
        .into_iter()
        .filter(|(k, _)| k == "group.sync")
        .map(|(_, m)| m)
        .collect()
}

fn verify_zero(a: &TestSite, group: &str) -> Value {
    verify_clean(a, group)
}

#[test]
fn continuous_writes_never_wait_for_a_lost_or_slow_link_and_the_group_catches_up() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    // A lost link is declared after 5 s without an acknowledgement; a
    // 4 MiB queue makes a slow link spill (the writes fill it well within
    // that deadline, even on a loaded machine) rather than count as lost.
    let (a, b, proxy) = proxied_pair(&format!(
        "sync_ack_timeout_secs = 5.0\ncontinuous_queue_bytes = {}\n",
        4 << 20
    ));
    a.create_volume("d0", "16M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--mode", "continuous", "--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    let st = streaming(&a, "g");
    assert_eq!(st["health"], "normal", "{st}");
    assert_eq!(group_status(&b, "g")["mode"], "continuous");
    writes_complete(&a.url("d0"), writes(0x11, 0, 64 << 10, 16));
    streaming(&a, "g");

    // The link is cut: the writes complete all the same.
    cut_link(&proxy);
    writes_complete(&a.url("d0"), writes(0x22, 1 << 20, 64 << 10, 32));
    let st = wait_group(&a, "g", "the lost link noticed", GROUP_LIMIT, |s| {
        s["sync_state"] != "streaming"
    });
    eprintln!("link cut: {st}");
    // More writes while it is known to be down.
    writes_complete(&a.url("d0"), writes(0x23, 3 << 20, 64 << 10, 16));
    heal_link(&proxy);
    streaming(&a, "g");
    verify_zero(&a, "g");

    // A slow link: 12 MiB of writes against a 4 MiB queue and 256 KiB/s.
    let before = sync_events(&a)
        .iter()
        .filter(|m| m.starts_with("spilled:") || m.starts_with("out of sync:"))
        .count();
    proxy
        .faults()
        .set_bandwidth(Direction::ClientToServer, Some(256 << 10));
    writes_complete(&a.url("d0"), writes(0x33, 4 << 20, 64 << 10, 192));
    // The queue spills, unless a keepalive stuck behind the queued bytes
    // on the throttled link timed out first (a slow link and a dead one
    // look alike then): either way the stream stops and the group
    // resynchronizes from the tracker. (Spills themselves are pinned by
    // the in-process tests of `sync::continuous`.)
    let stopped = |m: &String| m.starts_with("spilled:") || m.starts_with("out of sync:");
    let deadline = std::time::Instant::now() + GROUP_LIMIT;
    while sync_events(&a).iter().filter(|m| stopped(m)).count() <= before {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow link never stopped the stream; events {:?}; status {}\nprimary log:\n{}",
            sync_events(&a),
            group_status(&a, "g"),
            tail(&a.log(), 60)
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let spilled = sync_events(&a).iter().any(|m| m.starts_with("spilled:"));
    eprintln!("slow link: spilled {spilled}; events {:?}", sync_events(&a));
    if spilled {
        assert!(
            sync_events(&a)
                .iter()
                .any(|m| m.starts_with("spilled: the replica fell behind: ")),
            "{:?}",
            sync_events(&a)
        );
        let spills = metric(
            &metrics(&a),
            "offsite_group_continuous_spills_total{group=\"g\"}",
        );
        assert!(spills.is_some_and(|n| n >= 1), "spills: {spills:?}");
    }
    proxy
        .faults()
        .set_bandwidth(Direction::ClientToServer, None);
    let st = streaming(&a, "g");
    eprintln!("back to streaming: {st}");
    verify_zero(&a, "g");
}

#[test]
fn a_live_group_converts_async_continuous_sync_async_with_verify_zero() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    a.create_volume("d0", "8M");
    a.create_volume("d1", "1M");
    // Continuous writes never wait, so they cannot be suspended.
    let e = a.fails(&[
        "group",
        "create",
        "x",
        "--partner",
        "site-b",
        "--volume",
        "d1",
        "--mode",
        "continuous",
        "--on-link-loss",
        "suspend-writes",
    ]);
    assert!(e.contains("cannot suspend writes"), "{e}");
    create_group(
        &a,
        "s",
        "site-b",
        &["--volume", "d1"],
        &["--mode", "sync", "--on-link-loss", "suspend-writes"],
    );
    let e = a.fails(&["group", "set", "s", "--mode", "continuous"]);
    assert!(e.contains("cannot suspend writes"), "{e}");

    create_group(&a, "g", "site-b", &["--volume", "d0"], &["--rpo", "24h"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    verify_zero(&a, "g");

    let st = a.json(&["group", "set", "g", "--mode", "continuous"]);
    assert_eq!(st["mode"], "continuous", "{st}");
    streaming(&a, "g");
    assert_eq!(group_status(&b, "g")["mode"], "continuous");
    qemu_io(&a.url("d0"), &["write -P 0x22 1M 1M"]);
    streaming(&a, "g");
    // A named PIT seals the replica's log, as in sync mode.
    let pit = sync_pit(&a, "g", &["--pit-name", "continuous"]);
    assert_eq!(pit["name"], "continuous", "{pit}");
    verify_zero(&a, "g");

    a.json(&["group", "set", "g", "--mode", "sync"]);
    wait_group(&a, "g", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    });
    assert_eq!(group_status(&b, "g")["mode"], "sync");
    qemu_io(&a.url("d0"), &["write -P 0x33 2M 1M"]);
    verify_zero(&a, "g");

    a.json(&["group", "set", "g", "--mode", "async"]);
    let st = group_status(&a, "g");
    assert_eq!(st["mode"], "async", "{st}");
    assert!(st["sync_state"].is_null(), "{st}");
    assert!(st["continuous_lag_seconds"].is_null(), "{st}");
    qemu_io(&a.url("d0"), &["write -P 0x44 3M 1M"]);
    sync_pit(&a, "g", &[]);
    verify_zero(&a, "g");
    // The PIT sealed in continuous mode reads back what was written
    // before it.
    let e = b.json(&["pit", "export", "g", "continuous"]);
    let url = e["volumes"][0]["url"].as_str().expect("url").to_string();
    offsite_testkit::qemu_io_ro(
        &url,
        &["read -P 0x11 0 1M", "read -P 0x22 1M 1M", "read -P 0 2M 1M"],
    );
}
