//! Faults with site-b's replica store in a real 3-node Garage cluster
//! (issue 21): a Garage node killed with SIGKILL during a cycle
//! (replication goes on through the other nodes, the site's
//! `alternate_endpoints`), every node killed (the group reports the store
//! as unavailable, and resumes once the nodes are back), and the replica
//! daemon killed mid-upload (after a restart no PIT is broken and the
//! replica equals the primary). `OFFSITE_S3_FAULT_ITERATIONS` rounds of
//! each kill loop (1 by default; the bar is 20). Without Garage the
//! tests print why and pass, except under CI.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::s3::*;
use common::*;
use offsite_testkit::garage::GarageCluster;
use offsite_testkit::{TestSite, qemu_io};

fn iterations() -> u64 {
    std::env::var("OFFSITE_S3_FAULT_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// `offsite sync GROUP --json` at `site`, running in the background.
fn sync_in_background(site: &TestSite, group: &str) -> Child {
    Command::new(bin())
        .args(["sync", group, "--json", "--dir"])
        .arg(site.dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start offsite sync")
}

/// The set-up of every kill loop: Garage, the pair with B's replicas in
/// the bucket, and a group `g` of one 32 MiB volume from A, replicating
/// with a first PIT; `None` when the test skips.
fn replicating_group() -> Option<(GarageCluster, TestSite, TestSite)> {
    let (cluster, a, b) = s3_pair_or_skip(&["qemu-io"])?;
    start_s3_group(&a, "g", &[("d0", "32M")], &["--keep", "2"]);
    qemu_io(&a.url("d0"), &["write -P 0x01 0 8M"]);
    sync_pit(&a, "g", &[]);
    Some((cluster, a, b))
}

/// Writes 4 MiB of round `round`'s pattern somewhere in the volume.
fn write_round(a: &TestSite, round: u64, x: &mut u64) {
    let off = (next_rand(x) % 28) << 20;
    qemu_io(
        &a.url("d0"),
        &[&format!("write -P {} {off} 4M", 0x10 + round % 0xe0)],
    );
}

#[test]
fn a_garage_node_killed_during_cycles_does_not_stop_replication() {
    let Some((mut cluster, a, b)) = replicating_group() else {
        return;
    };
    let mut x = seed() | 1;
    for round in 0..iterations() {
        write_round(&a, round, &mut x);
        let sync = sync_in_background(&a, "g");
        std::thread::sleep(Duration::from_millis(next_rand(&mut x) % 300));
        // Node 0 is the site's `endpoint`: the store goes on through the
        // alternates.
        let node = (next_rand(&mut x) % 3) as usize;
        cluster.kill(node);
        let out = sync.wait_with_output().unwrap();
        if !out.status.success() {
            eprintln!(
                "round {round}: the sync cut by the kill of node {node} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // With one node of three down, cycles complete.
        write_round(&a, round, &mut x);
        sync_eventually(&a, "g");
        cluster.restart(node);
        eprintln!("round {round}: node {node} killed and restarted");
    }
    sync_eventually(&a, "g");
    verify_clean(&a, "g");
    pit_check_clean(&b, "g");
    let st = group_status(&a, "g");
    assert!(st["last_error"].is_null(), "{st}");
}

#[test]
fn all_garage_nodes_down_pause_the_group_with_a_clear_error_until_they_return() {
    let Some((mut cluster, a, b)) = replicating_group() else {
        return;
    };
    let mut x = seed() | 1;
    for round in 0..iterations() {
        write_round(&a, round, &mut x);
        cluster.kill_all();
        let out = a.run(&["sync", "g", "--json"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "a sync with the store down: {text}");
        assert!(
            text.contains("unavailable") || text.contains("did not answer"),
            "the error names the store as unavailable: {text}"
        );
        let st = wait_group(
            &a,
            "g",
            "the store's outage in last_error",
            GROUP_LIMIT,
            |s| s["last_error"].as_str().is_some(),
        );
        eprintln!("round {round}: with every node down: {}", st["last_error"]);
        cluster.restart_all();
        sync_eventually(&a, "g");
        wait_group(&a, "g", "last_error cleared", GROUP_LIMIT, |s| {
            s["last_error"].is_null()
        });
    }
    verify_clean(&a, "g");
    pit_check_clean(&b, "g");
}

#[test]
fn the_replica_daemon_killed_mid_upload_leaves_no_broken_pit() {
    let Some((_cluster, a, mut b)) = replicating_group() else {
        return;
    };
    let mut x = seed() | 1;
    for round in 0..iterations() {
        write_round(&a, round, &mut x);
        write_round(&a, round + 1, &mut x);
        let sync = sync_in_background(&a, "g");
        std::thread::sleep(Duration::from_millis(next_rand(&mut x) % 500));
        b.kill9();
        drop(sync.wait_with_output());
        b.start();
        let pits = pit_check_clean(&b, "g");
        eprintln!("round {round}: replica killed; PITs {pits:?} intact after restart");
        sync_eventually(&a, "g");
        verify_clean(&a, "g");
    }
    pit_check_clean(&b, "g");
}

/// Plan changes while every Garage node is down: the copies beside the
/// group's store cannot be written, the group is marked
/// (`plan-copies.pending` in its working directory), and the replica
/// daemon's next start writes them — a new plan's copy put, a deleted
/// plan's copy removed — and clears the mark.
#[test]
fn plan_changes_while_the_bucket_is_down_reach_it_at_the_next_start() {
    let Some((mut cluster, a, mut b)) = s3_pair_or_skip(&[]) else {
        return;
    };
    start_s3_group(&a, "g", &[("d0", "8M")], &[]);
    let plan = |name: &str| {
        a.json(&[
            "plan",
            "create",
            name,
            "--protected-site",
            "site-a",
            "--recovery-site",
            "site-b",
        ]);
        a.json(&["plan", "add-group", name, "g"]);
    };
    plan("dr");
    let objects = bucket_of(&cluster, "g");
    assert!(objects.head("plans/dr.json").unwrap().is_some());
    let marker = b.dir().join("object-stores/site-a/g/plan-copies.pending");
    assert!(!marker.exists());

    cluster.kill_all();
    a.json(&["plan", "delete", "dr"]);
    plan("dr2");
    assert!(marker.exists(), "the failed copies are marked");
    cluster.restart_all();
    // Nothing retries them before the next start.
    assert!(objects.head("plans/dr.json").unwrap().is_some());
    assert!(objects.head("plans/dr2.json").unwrap().is_none());

    b.stop();
    b.start();
    wait_until("the marked plan copies written again", GROUP_LIMIT, || {
        !marker.exists()
    });
    assert!(objects.head("plans/dr.json").unwrap().is_none());
    assert!(objects.head("plans/dr2.json").unwrap().is_some());
}

/// `qemu-io` at `url` with `cmds`: whether it succeeded, and what it said.
fn try_qemu_io(url: &str, cmds: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.extend(["-c", c]);
    }
    let out = Command::new("qemu-io")
        .args(&args)
        .arg(url)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let ok = out.status.success() && !text.contains("failed") && !text.contains("error");
    (ok, text)
}

/// A site with a test failover whose clone reads its PIT from the bucket
/// starts while every Garage node is down: the group's `last_error` says
/// the clones are not exported and why, and once the nodes are back a
/// background task opens the store and exports them again (what the clone
/// wrote is still there), without a restart.
#[test]
fn a_site_starts_without_its_bucket_and_exports_its_clones_once_it_returns() {
    let Some((mut cluster, a, mut b)) = s3_pair_or_skip(&["qemu-io"]) else {
        return;
    };
    start_s3_group(&a, "g", &[("d0", "8M")], &[]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    let r = b.json(&["failover", "run", "g", "--test"]);
    let clone = served_url(&r, "d0");
    qemu_io(&clone, &["read -P 0x11 0 1M", "write -P 0x22 4M 64k"]);

    b.stop();
    cluster.kill_all();
    b.start();
    let st = wait_group(
        &b,
        "g",
        "the unexported clones in last_error",
        GROUP_LIMIT,
        |s| {
            s["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not exported"))
        },
    );
    let why = st["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("unavailable") && why.contains("retried"),
        "{st}"
    );
    assert_eq!(st["state"], "test-failover", "{st}");
    // The clone's export (by name; the restarted daemon's NBD port is a
    // new one) is not there.
    let export = clone.rsplit('/').next().unwrap_or_default().to_string();
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.dir().join("run/daemon.json")).unwrap()).unwrap();
    let url = format!("nbd://{}/{export}", info["nbd"].as_str().unwrap());
    let (ok, text) = try_qemu_io(&url, &["read -P 0x11 0 1M"]);
    assert!(!ok, "the clone with the bucket down: {text}");

    cluster.restart_all();
    wait_until("the clone exported again", GROUP_LIMIT, || {
        try_qemu_io(&url, &["read -P 0x11 0 1M", "read -P 0x22 4M 64k"]).0
    });
    wait_group(&b, "g", "last_error cleared", GROUP_LIMIT, |s| {
        s["last_error"].is_null()
    });
    b.json(&["failover", "stop-test", "g"]);
}
