//! A replica that differs from its primary in blocks the change tracking
//! does not know of (issue 17, data safety): `volume clear-dirty` on a
//! grouped volume is refused (or, with `--force`, marks the group as
//! needing a resync), a verify that finds differences turns health
//! critical and names the command, and `group resync` ships exactly the
//! differing blocks, in async and in sync mode, after which verify finds 0.

mod common;

use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, qemu_io, qemu_io_ro};
use serde_json::Value;

const KIB: u64 = 1024;
const LIMIT: Duration = Duration::from_secs(90);

/// `verify NAME --json` at the primary, which finds differences: it exits
/// 1, prints its result, and names the command that repairs them.
fn verify_differs(a: &TestSite, group: &str) -> Value {
    let out = a.run(&["verify", group, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("offsite group resync {group}")),
        "{err}"
    );
    serde_json::from_slice(&out.stdout).expect("verify --json")
}

/// `group resync NAME --json`.
fn resync(a: &TestSite, group: &str) -> Value {
    let r = a.json(&["group", "resync", group]);
    assert_eq!(r["group"], group, "{r}");
    r
}

fn health(a: &TestSite, group: &str) -> (String, String) {
    let st = group_status(a, group);
    (
        st["health"].as_str().unwrap_or_default().to_string(),
        st["health_reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn clear_dirty_on_a_grouped_volume_is_refused_and_force_needs_a_resync() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    let url = a.create_volume("disk0", "8M");
    qemu_io(&url, &["write -P 0x11 0 1M"]);
    create_group(&a, "g", "site-b", &["--volume", "disk0"], &["--rpo", "24h"]);
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "replicating", LIMIT, |s| {
        s["state"] == "replicating"
    });
    verify_clean(&a, "g");

    // 32 blocks the replica does not have yet.
    qemu_io(&url, &["write -P 0x22 2M 128k"]);
    let dirty = a.dirty_bytes("disk0");
    assert_eq!(dirty, 128 * KIB);
    let err = a.fails(&["volume", "clear-dirty", "disk0"]);
    for word in ["group g", "--force", "group resync g"] {
        assert!(err.contains(word), "the refusal should say {word:?}: {err}");
    }
    assert_eq!(
        a.dirty_bytes("disk0"),
        dirty,
        "a refused clear keeps the tracking"
    );
    assert_eq!(health(&a, "g").0, "normal");

    // Forced: the group is marked at once, and stays critical past the
    // next cycle, which ships nothing of those blocks.
    let v = a.json(&["volume", "clear-dirty", "disk0", "--force"]);
    assert_eq!(v["dirty_bytes"], 0, "{v}");
    let (h, why) = health(&a, "g");
    assert_eq!(h, "critical", "{why}");
    assert!(
        why.contains("clear") && why.contains("offsite group resync g"),
        "{why}"
    );
    let pit = sync_pit(&a, "g", &[]);
    assert_eq!(
        u(&pit, "bytes"),
        0,
        "the forgotten blocks are not shipped: {pit}"
    );
    assert_eq!(health(&a, "g").0, "critical");

    // Verify finds exactly the forgotten blocks, says what to run, and the
    // group's reason is now the verify's finding.
    let v = verify_differs(&a, "g");
    assert_eq!(u(&v, "differing_blocks"), 32, "{v}");
    let (h, why) = health(&a, "g");
    assert_eq!(h, "critical");
    assert!(why.contains("verify found 32 differing blocks"), "{why}");
    let events = events_about(&a, "g");
    assert!(
        events.iter().any(|(kind, _)| kind == "group.needs-resync"),
        "{events:?}"
    );

    // Resync ships the 32 blocks (and only them) as a PIT.
    let r = resync(&a, "g");
    assert_eq!(u(&r, "differing_blocks"), 32, "{r}");
    assert_eq!(u(&r, "blocks_compared"), 2048, "{r}");
    assert_eq!(u(&r, "bytes_sent"), 128 * KIB, "{r}");
    assert!(u(&r, "pit") > u(&r, "compared_pit"), "{r}");
    let (h, why) = health(&a, "g");
    assert_eq!(h, "normal", "{why}");
    assert!(group_status(&a, "g")["needs_resync"].is_null());
    verify_clean(&a, "g");
    // The newest PIT at the replica reads what the primary holds.
    let e = b.json(&["pit", "export", "g", &u(&r, "pit").to_string()]);
    let pit_url = e["volumes"][0]["url"].as_str().expect("url").to_string();
    qemu_io_ro(&pit_url, &["read -P 0x11 0 1M", "read -P 0x22 2M 128k"]);

    // A second resync finds nothing and ships nothing.
    let r = resync(&a, "g");
    assert_eq!(u(&r, "differing_blocks"), 0, "{r}");
    assert_eq!(u(&r, "bytes_sent"), 0, "{r}");
    assert_eq!(r["pit"], r["compared_pit"], "{r}");

    // A volume in no group clears as before.
    a.create_volume("loose", "1M");
    qemu_io(&a.url("loose"), &["write -P 0x33 0 64k"]);
    let v = a.json(&["volume", "clear-dirty", "loose"]);
    assert_eq!(v["dirty_bytes"], 0, "{v}");

    // Resync belongs to the primary.
    let err = b.fails(&["group", "resync", "g"]);
    assert!(err.contains("site-a"), "{err}");
}

#[test]
fn resync_of_a_sync_group_sends_the_differences_down_the_stream() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, _b) = group_pair();
    let url = a.create_volume("d0", "4M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--rpo", "24h", "--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "replicating", LIMIT, |s| {
        s["state"] == "replicating"
    });
    // Forgotten while async; the conversion to sync resynchronizes from
    // the tracker, so the replica keeps lacking these blocks.
    qemu_io(&url, &["write -P 0x44 1M 64k"]);
    a.json(&["volume", "clear-dirty", "d0", "--force"]);
    a.json(&["group", "set", "g", "--mode", "sync"]);
    wait_group(&a, "g", "in sync", LIMIT, |s| {
        s["sync_state"] == "in-sync" && s["state"] == "replicating"
    });
    let v = verify_differs(&a, "g");
    assert_eq!(u(&v, "differing_blocks"), 16, "{v}");
    assert_eq!(health(&a, "g").0, "critical");

    // Writes in sync mode meanwhile, some over the differing blocks: the
    // resync must neither lose nor overtake them.
    qemu_io(&url, &["write -P 0x55 1M 4k", "write -P 0x66 3M 64k"]);
    // The block written again in sync mode reached the replica: 15 differ.
    let r = resync(&a, "g");
    assert_eq!(u(&r, "differing_blocks"), 15, "{r}");
    assert_eq!(u(&r, "bytes_sent"), 60 * KIB, "{r}");
    assert_eq!(health(&a, "g").0, "normal");
    qemu_io(&url, &["write -P 0x77 1M 4k"]);
    let st = group_status(&a, "g");
    assert_eq!(st["sync_state"], "in-sync", "{st}");
    verify_clean(&a, "g");
}
