//! Wire compatibility with an un-upgraded partner (issue 18): a site of
//! this build and a site of the previous release's binary pair, create and
//! start a group, run cycles (asked at either site), and fail over
//! (prepare, run) and reverse — once with the new site as the primary and
//! once as the replica. The hello negotiates protocol v1 between them, and
//! the typed control plane (`offsite_replication::control`) must read and write
//! exactly the v1 bodies. A sync group streams its writes both ways too
//! (issue 19): the previous build offers no `SELF_CHECKED_BULK`, so its
//! batches and the new build's travel with their BLAKE3 hash.
//!
//! The previous binary is not built by `cargo test`: these tests are
//! ignored unless asked for, and need `OFFSITE_PREV_BIN` (default
//! `/tmp/offsite-prev/target/debug/offsite`):
//!
//! ```sh
//! git worktree add /tmp/offsite-prev <previous commit>
//! (cd /tmp/offsite-prev && cargo build -p offsite-cli)
//! OFFSITE_PREV_BIN=/tmp/offsite-prev/target/debug/offsite \
//!     cargo test -p offsite-cli --test compat -- --ignored
//! ```

mod common;

use std::path::{Path, PathBuf};

use common::*;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// The previous release's `offsite`.
fn prev_bin() -> PathBuf {
    let p = std::env::var_os("OFFSITE_PREV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/offsite-prev/target/debug/offsite"));
    assert!(
        p.is_file(),
        "{} is missing: build the previous commit's binary (see this test's doc) and set OFFSITE_PREV_BIN",
        p.display()
    );
    p
}

/// [`group_site`] of binary `bin`.
fn site_of(bin: &Path, name: &str) -> TestSite {
    let mut s = TestSite::init(bin, name);
    set_replication_config(&s, GROUP_REPLICATION);
    s.start();
    keep_listen_port(&s);
    s
}

fn url_of(r: &Value, volume: &str) -> String {
    r["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["url"].as_str())
        .unwrap_or_else(|| panic!("no volume {volume}: {r}"))
        .to_string()
}

/// Pairing, a group's life up to a failover and a reverse, between a
/// primary of `primary_bin` and a replica of `replica_bin`.
fn group_life(primary_bin: &Path, replica_bin: &Path) {
    let a = site_of(primary_bin, "site-a");
    let b = site_of(replica_bin, "site-b");
    pair(&a, &b);
    wait_reachable(&a, "site-b", true, GROUP_LIMIT);
    wait_reachable(&b, "site-a", true, GROUP_LIMIT);
    authorize_primary(&b, "site-a", None);
    authorize_primary(&a, "site-b", None);
    // The two agree on one version, the older binary's (v1 before the
    // typed refusals, v2 since), whichever side asks.
    let t = a.json(&["partner", "test", "site-b", "--bytes", "1M"]);
    let back = b.json(&["partner", "test", "site-a", "--bytes", "1M"]);
    assert!(
        t["protocol_version"].as_u64().is_some_and(|v| v >= 1),
        "{t}"
    );
    assert_eq!(
        t["protocol_version"], back["protocol_version"],
        "{t} {back}"
    );

    a.create_volume("d0", "16M");
    a.json(&["vm", "create", "vm1", "--volume", "d0"]);
    create_group(&a, "g", "site-b", &["--vm", "vm1"], &["--keep", "3"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 4M"]);
    // A cycle asked at the primary, then one asked at the replica (which
    // forwards it to the primary).
    let first = sync_pit(&a, "g", &["--pit-name", "first"]);
    qemu_io(&a.url("d0"), &["write -P 0x12 4M 1M"]);
    let second = sync_pit(&b, "g", &[]);
    assert!(u(&second, "id") > u(&first, "id"), "{first} {second}");
    assert_eq!(pit_ids(&b, "g").last().map(|p| p.0), Some(u(&second, "id")));
    assert_eq!(group_status(&b, "g")["state"], "replicating");
    verify_clean(&a, "g");
    // Releasing a PIT's name at the primary releases it at the replica.
    a.ok(&["pit", "release", "g", "first"]);
    assert!(
        pit_ids(&b, "g")
            .iter()
            .all(|p| p.1.as_deref() != Some("first")),
        "{:?}",
        pit_ids(&b, "g")
    );

    // Planned failover A -> B.
    qemu_io(&a.url("d0"), &["write -P 0x13 8M 1M"]);
    let p = a.json(&["failover", "prepare", "g"]);
    let final_pit = u(&p, "pit");
    assert_eq!(group_status(&b, "g")["state"], "prepared-for-failover");
    let r = b.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    let url = url_of(&r, "d0");
    qemu_io(
        &url,
        &[
            "read -P 0x11 0 4M",
            "read -P 0x12 4M 1M",
            "read -P 0x13 8M 1M",
        ],
    );
    assert!(
        pit_ids(&b, "g").iter().any(|p| p.0 == final_pit),
        "the final PIT {final_pit} is at the replica"
    );

    // Reverse: B replicates to A now.
    qemu_io(&url, &["write -P 0x14 12M 1M"]);
    let rv = b.json(&["reverse", "g"]);
    assert!(rv["volumes"].is_array(), "{rv}");
    let back = sync_pit(&b, "g", &[]);
    assert!(u(&back, "id") > final_pit, "{back}");
    assert_eq!(group_status(&a, "g")["role"], "replica");
    verify_clean(&b, "g");
}

#[test]
#[ignore = "needs the previous release's binary in OFFSITE_PREV_BIN; see the module doc"]
fn a_new_primary_replicates_to_a_previous_replica() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    group_life(bin(), &prev_bin());
}

#[test]
#[ignore = "needs the previous release's binary in OFFSITE_PREV_BIN; see the module doc"]
fn a_previous_primary_replicates_to_a_new_replica() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    group_life(&prev_bin(), bin());
}

/// A sync group between `primary_bin` and `replica_bin`: in sync, writes
/// acknowledged through the stream, sealed into a PIT, verified.
fn sync_stream(primary_bin: &Path, replica_bin: &Path) {
    let a = site_of(primary_bin, "site-a");
    let b = site_of(replica_bin, "site-b");
    pair(&a, &b);
    wait_reachable(&a, "site-b", true, GROUP_LIMIT);
    authorize_primary(&b, "site-a", None);
    a.create_volume("d0", "16M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--mode", "sync", "--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    });
    // 4 KiB writes (one record each) and a 1 MiB one, through the stream.
    qemu_io(
        &a.url("d0"),
        &[
            "write -P 0x21 0 4k",
            "write -P 0x22 64k 4k",
            "write -P 0x23 2M 1M",
        ],
    );
    assert_eq!(group_status(&a, "g")["sync_state"], "in-sync");
    // The writes went down the stream, acknowledged by the replica's log.
    let streamed = metric(&metrics(&a), "offsite_group_sync_writes_total{group=\"g\"}");
    assert!(streamed.is_some_and(|w| w >= 3), "{streamed:?}");
    let pit = sync_pit(&a, "g", &[]);
    assert!(u(&pit, "id") > 0, "{pit}");
    verify_clean(&a, "g");
}

#[test]
#[ignore = "needs the previous release's binary in OFFSITE_PREV_BIN; see the module doc"]
fn a_new_sync_primary_streams_to_a_previous_replica() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    sync_stream(bin(), &prev_bin());
}

#[test]
#[ignore = "needs the previous release's binary in OFFSITE_PREV_BIN; see the module doc"]
fn a_previous_sync_primary_streams_to_a_new_replica() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    sync_stream(&prev_bin(), bin());
}
