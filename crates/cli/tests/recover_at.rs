//! Recovery to a point in time (`--at TIME`, issue 19) through real
//! `offsite serve` sites: the command line's TIME reaches the replica as
//! RFC 3339, which resolves it to the newest consistent point at or before
//! it. An async group's points are its PITs; a sync group's journal adds a
//! checkpoint every second, and an image at any of them is exactly a
//! prefix of the acknowledged write order across both volumes (the stamp
//! writer of `groups_consistency.rs`, exported at 20 random times).

mod common;

use common::stamps::{STAMP_WRITER, stamp_prefix};
use common::*;
use offsite_testkit::{qemu_io, qemu_io_ro};

#[test]
fn an_async_group_recovers_to_the_newest_pit_at_or_before_a_time() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    a.create_volume("d0", "8M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &["--keep", "10"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    let first = sync_pit(&a, "g", &[]);
    // The next PIT must carry a later time than the first (created_at
    // has whole seconds): it is cut in the next second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    qemu_io(&a.url("d0"), &["write -P 0x22 0 1M"]);
    let second = sync_pit(&a, "g", &[]);
    assert_ne!(second["created_at"], first["created_at"]);
    let t1 = first["created_at"].as_str().unwrap().to_string();
    // A PIT's time is whole seconds: it is certainly at or before a time
    // only from the end of its second (its cut may come up to a second
    // after), so at its second's start the PIT before it answers.
    let out = b.run(&["pit", "export", "g", "--at", &t1, "--json"]);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        if out.status.success() {
            !answer.contains(&format!("\"id\":{}", u(&first, "id")))
        } else {
            answer.contains("oldest point")
        },
        "{answer}"
    );
    let t1 = t1.replace('Z', ".999999999Z");

    // At the end of the first PIT's second: that PIT, 999 ms before.
    let e = b.json(&["pit", "export", "g", "--at", &t1]);
    assert_eq!(e["point"]["kind"], "pit", "{e}");
    assert_eq!(e["point"]["id"], first["id"], "{e}");
    assert_eq!(e["point"]["before_requested_ms"], 999, "{e}");
    assert_eq!(e["pit"], first["id"], "{e}");
    qemu_io_ro(&served_url(&e, "d0"), &["read -P 0x11 0 1M"]);
    // The end of the newest PIT's second: that PIT (a PIT's time counts
    // from the end of its second).
    let later = second["created_at"]
        .as_str()
        .unwrap()
        .replace('Z', ".999999999Z");
    let e = b.json(&["pit", "export", "g", "--at", &later]);
    assert_eq!(e["point"]["id"], second["id"], "{e}");
    let text = b.ok(&["pit", "export", "g", "--at", &later]);
    assert!(
        text.starts_with(&format!("PIT {} of ", u(&second, "id")))
            && text.contains("0.999 s before "),
        "{text}"
    );
    // Relative times reach the replica as RFC 3339: `now` answers with
    // a PIT no newer than the second one.
    let e = b.json(&["pit", "export", "g", "--at", "now"]);
    assert_eq!(e["point"]["kind"], "pit", "{e}");
    assert!(u(&e["point"], "id") <= u(&second, "id"), "{e}");
    assert!(
        e["point"]["requested"].as_str().unwrap().ends_with('Z'),
        "{e}"
    );
    // Before every PIT: refused, naming the oldest point and its time.
    let oldest = pit_list(&b, "g")[0].clone();
    let err = b.fails(&["pit", "export", "g", "--at", "2000-01-01T00:00:00Z"]);
    assert!(
        err.contains(&format!(
            "oldest point it can recover to is pit {}",
            u(&oldest, "id")
        )),
        "{err}"
    );

    // A test failover at the first PIT's time clones it.
    let r = b.json(&["failover", "run", "g", "--test", "--at", &t1]);
    assert_eq!(r["pit"], first["id"], "{r}");
    assert_eq!(r["point"]["kind"], "pit", "{r}");
    qemu_io(&served_url(&r, "d0"), &["read -P 0x11 0 1M"]);
    b.json(&["failover", "stop-test", "g"]);

    // A plan's drill at that time: every group's test failover at it.
    a.json(&[
        "plan",
        "create",
        "dr",
        "--protected-site",
        "site-a",
        "--recovery-site",
        "site-b",
    ]);
    a.json(&["plan", "add-group", "dr", "g"]);
    let r = b.json(&["plan", "run", "dr", "--mode", "test", "--at", &t1]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["at"], t1.as_str(), "{r}");
    assert_eq!(r["groups"][0]["pit"], first["id"], "{r}");
    assert_eq!(r["groups"][0]["pit_created_at"], first["created_at"], "{r}");
    let step = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "test-failover")
        .expect("the test failover step");
    assert!(
        step["name"].as_str().unwrap().contains(&t1)
            && step["output"].as_str().unwrap().starts_with(&format!(
                "PIT {} of {}",
                u(&first, "id"),
                first["created_at"].as_str().unwrap()
            )),
        "{step}"
    );
    b.json(&["plan", "run", "dr", "--mode", "cleanup"]);
    // A planned run ships a final PIT: no --at.
    let err = b.fails(&["plan", "run", "dr", "--mode", "planned", "--at", &t1]);
    assert!(err.contains("final PIT"), "{err}");

    // The REST API takes RFC 3339 only (the command line converts).
    let (status, body) = api_request(
        &b,
        "POST",
        "/groups/g/pits/export",
        Some(r#"{"at": "10m ago"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("RFC 3339"), "{body}");
}

// ---- a sync group's journal: any checkpoint is a prefix ----

/// Stamps written across both volumes.
const STAMPS: u64 = 600;

/// The number of stamps in the image served at `urls` (vol0, vol1),
/// after checking it is exactly the first k stamps of the write order.
fn prefix_of(urls: [&str; 2], what: &str) -> u64 {
    stamp_prefix(urls, STAMPS, what)
}

#[test]
fn every_checkpoint_of_a_sync_group_is_a_prefix_of_the_write_order() {
    every_checkpoint_is_a_prefix_of_the_write_order("sync", "in-sync");
}

#[test]
fn every_checkpoint_of_a_continuous_group_is_a_prefix_of_the_write_order() {
    every_checkpoint_is_a_prefix_of_the_write_order("continuous", "streaming");
}

/// The stamp writer across two volumes of a `mode` group; 20 random
/// times between its oldest and newest checkpoint exported, each exactly
/// a prefix of the acknowledged write order; a test failover and a forced
/// failover at a checkpoint clone the same image.
fn every_checkpoint_is_a_prefix_of_the_write_order(mode: &str, streaming: &str) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let (a, b) = group_pair();
    let u0 = a.create_volume("vol0", "8M");
    let u1 = a.create_volume("vol1", "8M");
    create_group(
        &a,
        "j",
        "site-b",
        &["--volume", "vol0", "--volume", "vol1"],
        &[
            "--mode",
            mode,
            "--compress",
            "none",
            "--checkpoint-interval",
            "1s",
            "--keep",
            "2",
        ],
    );
    a.json(&["group", "start", "j"]);
    wait_group(&a, "j", streaming, GROUP_LIMIT, |s| {
        s["sync_state"] == streaming
    });
    let mut writer = KillOnDrop(Some(
        Command::new(PYTHON)
            .arg("-c")
            .arg(STAMP_WRITER)
            .args([&u0, &u1, &STAMPS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn writer"),
    ));
    let stdout = writer.child().stdout.take().unwrap();
    let acked = BufReader::new(stdout).lines().count() as u64;
    let out = writer.take().wait_with_output().expect("writer");
    assert!(
        out.status.success() && acked == STAMPS,
        "writer: {acked} stamps; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The end: a seal, whose PIT holds every acknowledged stamp.
    let sealed = a.json(&["sync", "j"]);
    let sealed_at = sealed["pit"]["created_at"]
        .as_str()
        .expect("the seal's PIT")
        .replace('Z', ".999999999Z");

    let list = b.json(&["pit", "list", "j", "--checkpoints", "--all"]);
    let cps: Vec<(u64, u64)> = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|c| (u(c, "id"), u(c, "time_ns")))
        .collect();
    let times: Vec<u64> = cps.iter().map(|c| c.1).collect();
    assert!(times.len() >= 3, "a few seconds of writes: {list}");
    let (oldest, newest) = (times[0], *times.last().unwrap());
    let mut rng = seed();
    let mut at: Vec<u64> = (0..20)
        .map(|_| oldest + next_rand(&mut rng) % (newest - oldest + 1))
        .collect();
    at.sort_unstable();
    let mut last = 0;
    for t in at {
        let when = rfc3339_ns(t);
        let e = b.json(&["pit", "export", "j", "--at", &when]);
        let point = &e["point"];
        let id = u(point, "id");
        // A PIT the RPO timer sealed meanwhile may be newer in write
        // order; a checkpoint chosen is the newest one at or before t.
        if point["kind"] == "checkpoint" {
            let want = cps.iter().filter(|c| c.1 <= t).max_by_key(|c| c.1).unwrap();
            assert_eq!(id, want.0, "the newest checkpoint at or before {when}: {e}");
        }
        let k = prefix_of(
            [&served_url(&e, "vol0"), &served_url(&e, "vol1")],
            &format!("{} {id} (at {when})", point["kind"]),
        );
        assert!(
            k >= last,
            "a later checkpoint holds fewer stamps: {k} < {last}"
        );
        eprintln!("{when}: {} {id} holds the first {k} stamps", point["kind"]);
        last = k;
    }
    // The seal's point holds every acknowledged stamp.
    let e = b.json(&["pit", "export", "j", "--at", &sealed_at]);
    let k = prefix_of(
        [&served_url(&e, "vol0"), &served_url(&e, "vol1")],
        "the seal",
    );
    assert_eq!(k, STAMPS, "{e}");
    // A test failover at the middle checkpoint clones exactly its image.
    let mid = times[times.len() / 2];
    let e = b.json(&["pit", "export", "j", "--at", &rfc3339_ns(mid)]);
    let exported = prefix_of([&served_url(&e, "vol0"), &served_url(&e, "vol1")], "mid");
    let r = b.json(&["failover", "run", "j", "--test", "--at", &rfc3339_ns(mid)]);
    assert_eq!(r["point"]["id"], e["point"]["id"], "{r}");
    let cloned = prefix_of(
        [&served_url(&r, "vol0"), &served_url(&r, "vol1")],
        "test clone",
    );
    assert_eq!(cloned, exported);
    b.json(&["failover", "stop-test", "j"]);

    // The primary dies: promoted at the middle checkpoint, the volumes
    // hold its image; promoted again at the seal (before commit), every
    // acknowledged stamp.
    let mut a = a;
    a.kill9();
    let r = b.json(&["failover", "run", "j", "--force", "--at", &rfc3339_ns(mid)]);
    assert_eq!(r["mode"], "unplanned", "{r}");
    assert_eq!(r["point"]["id"], e["point"]["id"], "{r}");
    let promoted = prefix_of(
        [&served_url(&r, "vol0"), &served_url(&r, "vol1")],
        "promoted",
    );
    assert_eq!(promoted, exported);
    let r = b.json(&["failover", "run", "j", "--force", "--at", &sealed_at]);
    let k = prefix_of(
        [&served_url(&r, "vol0"), &served_url(&r, "vol1")],
        "promoted again",
    );
    assert_eq!(k, STAMPS, "{r}");
    b.json(&["failover", "revert", "j"]);
}

/// RFC 3339 (UTC, nanoseconds) of nanoseconds since the epoch.
fn rfc3339_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .expect("date");
    format!(
        "{}.{:09}Z",
        String::from_utf8_lossy(&out.stdout).trim(),
        ns % 1_000_000_000
    )
}
