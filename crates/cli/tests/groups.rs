//! Async replication groups between two real sites (issue 4): create
//! (checked by the replica), initial replication, delta cycles into PITs,
//! `sync` from either site, `pit list`, retention, pause/resume, `verify`
//! under concurrent writes, `measure`, and the group's bandwidth limit.
//!
//! Every test runs its own sites `site-a` (primary) and `site-b` (replica);
//! data goes in and out over NBD with qemu-io and fio.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// Liveness bound for anything replication does in these tests.
const LIMIT: Duration = Duration::from_secs(60);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// `group start NAME --json` (waits for the first PIT).
fn start_group(a: &TestSite, group: &str) -> Value {
    let out = a.run(&["group", "start", group, "--json"]);
    assert!(
        out.status.success(),
        "group start {group}: {}\nprimary log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 40)
    );
    let st: Value = serde_json::from_slice(&out.stdout).expect("group start --json");
    assert_eq!(st["state"], "replicating", "{st}\n{}", tail(&a.log(), 30));
    assert!(st["last_pit"]["id"].as_u64().is_some(), "{st}");
    st
}

/// The group's error line must name `rule` (any of the words, case-insensitive).
fn assert_names(err: &str, words: &[&str]) {
    let e = err.to_lowercase();
    assert!(
        words.iter().any(|w| e.contains(&w.to_lowercase())),
        "the error should mention one of {words:?}: {err}"
    );
}

fn group_names(site: &TestSite) -> Vec<String> {
    site.json(&["group", "list"])
        .as_array()
        .expect("group list --json is an array")
        .iter()
        .map(|g| g["name"].as_str().expect("group name").to_string())
        .collect()
}

#[test]
fn happy_path_two_volumes_replicate_sync_from_both_sites_and_verify() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    let u1 = a.create_volume("disk0", "16M");
    let u2 = a.create_volume("disk1", "8M");
    qemu_io(
        &u1,
        &[
            "write -P 0x11 0 64k",
            "write -P 0x22 1M 4k",
            "write -P 0x33 7M 256k",
            "write -P 0x44 16380k 4k",
        ],
    );
    qemu_io(
        &u2,
        &[
            "write -P 0x55 4k 8k",
            "write -P 0x66 5M 1M",
            // Written, then zeroed: an all-zero region that was dirty.
            "write -z 5M 64k",
        ],
    );
    a.ok(&[
        "vm", "create", "vm1", "--volume", "disk0", "--volume", "disk1",
    ]);

    let created = create_group(&a, "g1", "site-b", &["--vm", "vm1"], &[]);
    assert_eq!(created["name"], "g1", "{created}");
    assert_eq!(created["role"], "primary", "{created}");
    assert_eq!(created["mode"], "async", "{created}");
    assert_eq!(created["partner"], "site-b", "{created}");
    assert_eq!(
        created["state"], "ready-for-initial-replication",
        "{created}"
    );
    assert!(created["last_pit"].is_null(), "{created}");
    let rb = group_status(&b, "g1");
    assert_eq!(rb["role"], "replica", "{rb}");
    assert_eq!(rb["partner"], "site-a", "{rb}");
    assert_eq!(rb["state"], "ready-for-initial-replication", "{rb}");
    assert_eq!(group_names(&a), vec!["g1".to_string()]);
    assert_eq!(group_names(&b), vec!["g1".to_string()]);

    let st = start_group(&a, "g1");
    let first = st["last_pit"]["id"].as_u64().unwrap();
    let rb = wait_group(
        &b,
        "g1",
        "replica replicating with the first PIT",
        LIMIT,
        |s| s["state"] == "replicating" && s["last_pit"]["id"].as_u64() == Some(first),
    );
    assert_eq!(rb["role"], "replica", "{rb}");

    let total_blocks = (16 * MIB + 8 * MIB) / (4 * KIB);
    let v = verify_clean(&a, "g1");
    assert_eq!(u(&v, "blocks_compared"), total_blocks, "{v}");
    let vols = v["volumes"].as_array().expect("verify volumes");
    assert_eq!(vols.len(), 2, "{v}");

    // More writes, then a named PIT.
    qemu_io(&u1, &["write -P 0x77 2M 128k", "write -z 0 4k"]);
    qemu_io(&u2, &["write -P 0x88 7M 1M"]);
    let named = sync_pit(&a, "g1", &["--pit-name", "before-upgrade"]);
    assert_eq!(named["name"], "before-upgrade", "{named}");
    assert!(u(&named, "id") > first, "{named}");
    assert!(u(&named, "bytes") > 0, "{named}");

    // A sync asked of the replica is forwarded to the primary.
    qemu_io(&u2, &["write -P 0x99 0 4k"]);
    let forwarded = sync_pit(&b, "g1", &[]);
    assert!(u(&forwarded, "id") > u(&named, "id"), "{forwarded}");
    assert!(forwarded["name"].is_null(), "{forwarded}");

    let pa = pit_ids(&a, "g1");
    let pb = pit_ids(&b, "g1");
    assert_eq!(pa, pb, "pit list should be the same on both sites");
    assert!(
        pa.iter()
            .any(|(id, n)| *id == u(&named, "id") && n.as_deref() == Some("before-upgrade")),
        "{pa:?}"
    );
    assert!(
        pa.iter().any(|(id, _)| *id == u(&forwarded, "id")),
        "{pa:?}"
    );
    assert!(
        pa.windows(2).all(|w| w[0].0 < w[1].0),
        "oldest first: {pa:?}"
    );
    for p in pit_list(&b, "g1") {
        assert!(
            p["created_at"].as_str().is_some_and(|t| t.contains('T')),
            "{p}"
        );
        assert!(p["bytes"].as_u64().is_some(), "{p}");
    }

    let v = verify_clean(&a, "g1");
    assert_eq!(u(&v, "blocks_compared"), total_blocks, "{v}");

    let m = a.json(&["group", "measure", "g1"]);
    assert!(u(&m, "cycles") >= 3, "{m}");
    assert!(u(&m, "bytes_total") > 0, "{m}");
    assert_eq!(u(&m, "errors"), 0, "{m}");
    assert_eq!(u(&m, "rpo_seconds"), 30, "{m}");
    assert!(u(&m, "max_cycle_bytes") >= u(&m, "avg_cycle_bytes"), "{m}");
    assert!(m["rpo_compliance_percent"].as_f64().is_some(), "{m}");

    // Write, sync, no write in between: nothing is pending any more.
    qemu_io(&u1, &["write -P 0xaa 9M 64k"]);
    assert!(a.dirty_bytes("disk0") >= 64 * KIB);
    assert!(u(&group_status(&a, "g1"), "pending_bytes") >= 64 * KIB);
    sync_pit(&a, "g1", &[]);
    assert_eq!(a.dirty_bytes("disk0"), 0);
    assert_eq!(a.dirty_bytes("disk1"), 0);
    let st = group_status(&a, "g1");
    assert_eq!(u(&st, "pending_bytes"), 0, "{st}");
    assert_eq!(st["state"], "replicating", "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(st["health"], "normal", "{st}");
}

#[test]
fn create_time_refusals_name_their_rule() {
    let (a, b) = group_pair();
    for (v, size) in [("v1", "4M"), ("v2", "4M"), ("v3", "4M"), ("v4", "4M")] {
        a.create_volume(v, size);
    }
    a.ok(&["vm", "create", "vm1", "--volume", "v1"]);
    let create = |name: &str, partner: &str, members: &[&str], extra: &[&str]| -> String {
        let mut args = vec!["group", "create", name, "--partner", partner];
        args.extend_from_slice(members);
        args.extend_from_slice(extra);
        args.extend(group_defaults(extra));
        a.fails(&args)
    };

    // Local rules, checked before B is asked.
    // A mode outside async|sync is a malformed command line (exit 2,
    // README), and clap names the values it accepts.
    let out = a.run(&[
        "group",
        "create",
        "g",
        "--partner",
        "site-b",
        "--volume",
        "v1",
        "--mode",
        "semi",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_names(&err, &["semi", "async", "sync"]);
    let err = create(
        "g",
        "site-b",
        &["--volume", "v1"],
        &["--mode", "sync", "--suspend-timeout", "2h"],
    );
    assert_names(&err, &["suspend-timeout", "1h"]);
    let err = create("g", "site-b", &["--volume", "v1"], &["--rpo", "5s"]);
    assert_names(&err, &["rpo", "30s"]);
    let err = create("g", "site-x", &["--volume", "v1"], &[]);
    assert_names(&err, &["site-x"]);
    assert_names(&err, &["partner"]);
    let err = create("g", "site-b", &["--volume", "nosuch"], &[]);
    assert_names(&err, &["nosuch"]);
    let err = create("g", "site-b", &["--vm", "novm"], &[]);
    assert_names(&err, &["novm"]);
    let err = create("g", "site-b", &[], &[]);
    assert_names(&err, &["--vm", "--volume"]);

    // B's rules. No authorization entry for A on B:
    b.ok(&["authz", "remove", "site-a"]);
    let err = create("g", "site-b", &["--volume", "v1"], &[]);
    assert_names(&err, &["authorization", "authz"]);
    assert_names(&err, &["site-b"]);
    // An entry that requires a security tag: none presented, then a wrong one.
    authorize_primary(&b, "site-a", Some("gold"));
    let err = create("g", "site-b", &["--volume", "v1"], &[]);
    assert_names(&err, &["security tag"]);
    let err = create(
        "g",
        "site-b",
        &["--volume", "v1"],
        &["--security-tag", "silver"],
    );
    assert_names(&err, &["security tag"]);
    assert_names(&err, &["gold"]);
    // The right tag passes.
    let g = create_group(
        &a,
        "tagged",
        "site-b",
        &["--vm", "vm1"],
        &["--security-tag", "gold"],
    );
    assert_eq!(g["state"], "ready-for-initial-replication", "{g}");

    // A volume is in at most one group (directly or through its VM).
    let err = create(
        "g",
        "site-b",
        &["--volume", "v1"],
        &["--security-tag", "gold"],
    );
    assert_names(&err, &["tagged"]);
    assert_names(&err, &["v1"]);
    // Same name twice at the primary.
    let err = create(
        "tagged",
        "site-b",
        &["--volume", "v2"],
        &["--security-tag", "gold"],
    );
    assert_names(&err, &["already"]);

    // A group name already used on B by another primary (site C).
    let c = group_site("site-c");
    pair(&c, &b);
    authorize_primary(&b, "site-c", None);
    c.create_volume("cv", "4M");
    create_group(&c, "shared", "site-b", &["--volume", "cv"], &[]);
    let err = create(
        "shared",
        "site-b",
        &["--volume", "v2"],
        &["--security-tag", "gold"],
    );
    assert_names(&err, &["shared"]);
    assert_names(&err, &["site-b"]);
    assert_names(&err, &["already"]);
    let st = group_status(&b, "shared");
    assert_eq!(st["partner"], "site-c", "B's group is still C's: {st}");

    // The storage location must be writable: replace the directory of
    // the entry with a file.
    b.ok(&["authz", "remove", "site-a"]);
    let loc = authorize_primary(&b, "site-a", None);
    std::fs::remove_dir_all(&loc).unwrap();
    std::fs::write(&loc, b"x").unwrap();
    let err = create("g", "site-b", &["--volume", "v2"], &[]);
    assert_names(&err, &["storage location", "cannot create"]);
    std::fs::remove_file(&loc).unwrap();
    std::fs::create_dir(&loc).unwrap();
    // Free space counts the data a thin volume holds, not its size: B's
    // storage location becomes a 4 MiB filesystem and A's volume holds
    // 8 MiB of data.
    a.create_volume("full", "64M");
    qemu_io(&a.url("full"), &["write -P 7 0 8M"]);
    let mounted = offsite_testkit::have_tool("mount")
        && Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&loc)
            .status()
            .is_ok_and(|s| s.success());
    if mounted {
        let err = create("g", "site-b", &["--volume", "full"], &[]);
        let _ = Command::new("umount").arg(&loc).status();
        assert_names(&err, &["free", "bytes of data"]);
    } else {
        eprintln!("free-space refusal not checked: mounting a tmpfs needs root");
    }
    a.ok(&["volume", "delete", "full"]);
    // Nothing refused left a group behind on either site.
    assert_eq!(group_names(&a), vec!["tagged".to_string()]);
    let mut on_b = group_names(&b);
    on_b.sort();
    assert_eq!(on_b, vec!["shared".to_string(), "tagged".to_string()]);

    // Grouped volumes and the group's partner cannot be removed.
    let err = a.fails(&["volume", "delete", "v1"]);
    assert_names(&err, &["tagged"]);
    let err = a.fails(&["partner", "remove", "site-b"]);
    assert_names(&err, &["tagged"]);
    // A volume in no group still can be.
    a.ok(&["volume", "delete", "v4"]);
}

/// Sites A and B with group `g` of one volume `disk0` (`size`) replicating;
/// returns the sites and the volume's NBD URL.
fn replicating_group(size: &str, extra: &[&str]) -> (TestSite, TestSite, String) {
    let (a, b) = group_pair();
    let url = a.create_volume("disk0", size);
    create_group(&a, "g", "site-b", &["--volume", "disk0"], extra);
    start_group(&a, "g");
    (a, b, url)
}

#[test]
fn retention_keeps_the_newest_unnamed_pits_and_every_named_one() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b, url) = replicating_group("8M", &["--keep", "2"]);
    let mut named = Vec::new();
    // Every unnamed PIT made, the initial one first.
    let mut unnamed = vec![pit_ids(&a, "g")[0].0];
    for i in 0..7u64 {
        qemu_io(&url, &[&format!("write -P {} {}k 4k", 0x10 + i, i * 64)]);
        let label = match i {
            1 => Some("weekly-1"),
            4 => Some("weekly-2"),
            _ => None,
        };
        let pit = match label {
            Some(l) => sync_pit(&a, "g", &["--pit-name", l]),
            None => sync_pit(&a, "g", &[]),
        };
        match label {
            Some(l) => named.push((u(&pit, "id"), l.to_string())),
            None => unnamed.push(u(&pit, "id")),
        }
    }
    let check = |site: &TestSite, unnamed: &[u64]| {
        let pits = pit_ids(site, "g");
        let kept: Vec<u64> = pits
            .iter()
            .filter(|(_, n)| n.is_none())
            .map(|(id, _)| *id)
            .collect();
        // The newest two unnamed PITs (counting any automatic cycle's).
        let mut all: Vec<u64> = unnamed.iter().chain(&kept).copied().collect();
        all.sort_unstable();
        all.dedup();
        let newest = all[all.len().saturating_sub(2)..].to_vec();
        assert_eq!(
            kept,
            newest,
            "{}: retention keeps the newest 2 unnamed PITs: {pits:?}",
            site.name()
        );
        for (id, l) in &named {
            assert!(
                pits.iter()
                    .any(|(i, n)| i == id && n.as_deref() == Some(l.as_str())),
                "{}: named PIT {id} ({l}) must stay: {pits:?}",
                site.name()
            );
        }
        assert!(pits.windows(2).all(|w| w[0].0 < w[1].0), "{pits:?}");
        pits
    };
    let pa = check(&a, &unnamed);
    assert_eq!(
        pa,
        check(&b, &unnamed),
        "pit list should be the same on both sites"
    );
    assert_eq!(pa.len(), 4, "{pa:?}");
    qemu_io(&url, &["read -P 0x16 384k 4k", "read -P 0x10 0 4k"]);
    let v = verify_clean(&a, "g");
    unnamed.push(u(&v, "pit"));
    let pa = check(&a, &unnamed);
    assert_eq!(pa, check(&b, &unnamed));
}

#[test]
fn pause_keeps_tracking_and_resume_catches_up() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b, url) = replicating_group("8M", &[]);
    let before = pit_ids(&a, "g");
    let st = a.json(&["group", "pause", "g"]);
    assert_eq!(st["state"], "paused", "{st}");
    assert_eq!(group_status(&a, "g")["state"], "paused");
    // Pausing twice is harmless.
    a.json(&["group", "pause", "g"]);

    qemu_io(&url, &["write -P 0x5a 1M 256k"]);
    let st = group_status(&a, "g");
    assert!(
        u(&st, "pending_bytes") >= 256 * KIB,
        "writes while paused are tracked: {st}"
    );
    assert!(a.dirty_bytes("disk0") >= 256 * KIB);

    let err = a.fails(&["sync", "g"]);
    assert_names(&err, &["resume"]);
    // Asked at the replica, the primary refuses the same way.
    let err = b.fails(&["sync", "g"]);
    assert_names(&err, &["resume", "paused"]);
    // Pause and resume are the primary's.
    let err = b.fails(&["group", "pause", "g"]);
    assert_names(&err, &["site-a", "primary"]);
    let err = b.fails(&["group", "start", "g"]);
    assert_names(&err, &["site-a", "primary"]);
    let err = b.fails(&["verify", "g"]);
    assert_names(&err, &["primary"]);
    assert_eq!(pit_ids(&a, "g"), before, "no PIT while paused");

    let st = a.json(&["group", "resume", "g"]);
    assert_eq!(st["state"], "replicating", "{st}");
    let pit = sync_pit(&a, "g", &[]);
    assert!(u(&pit, "bytes") >= 256 * KIB, "{pit}");
    let st = group_status(&a, "g");
    assert_eq!(u(&st, "pending_bytes"), 0, "{st}");
    assert_eq!(st["last_pit"]["id"], pit["id"], "{st}");
    verify_clean(&a, "g");
    assert_eq!(pit_ids(&a, "g"), pit_ids(&b, "g"));
}

/// fio (NBD engine) random 4 KiB writes at `url` for `secs` seconds.
fn spawn_fio(url: &str, out: &std::path::Path, secs: u32) -> KillOnDrop {
    let child = Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=16M",
            "--time_based",
            &format!("--runtime={secs}"),
            &format!("--output={}", out.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fio");
    KillOnDrop(Some(child))
}

fn finish_fio(mut fio: KillOnDrop, out: &std::path::Path) {
    let child = fio.take();
    let o = child.wait_with_output().expect("wait for fio");
    assert!(
        o.status.success(),
        "fio failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        std::fs::read_to_string(out).unwrap_or_default()
    );
}

#[test]
fn verify_under_concurrent_writes_compares_one_cut() {
    if !have_tools(&["fio", "qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    let url = a.create_volume("disk0", "16M");
    let url1 = a.create_volume("disk1", "4M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "disk0", "--volume", "disk1"],
        &[],
    );
    start_group(&a, "g");
    let out = scratch_file(&a, "fio.out");
    let fio = spawn_fio(&url, &out, 8);
    let started = Instant::now();
    let mut round = 0u64;
    while started.elapsed() < Duration::from_secs(7) || round < 3 {
        qemu_io(
            &url1,
            &[&format!(
                "write -P {} {}k 64k",
                0x20 + round,
                (round % 16) * 64
            )],
        );
        let p1 = sync_pit(&a, "g", &[]);
        let v = verify_clean(&a, "g");
        assert!(u(&v, "pit") > u(&p1, "id"), "verify takes its own PIT: {v}");
        assert_eq!(
            u(&v, "blocks_compared"),
            (16 * MIB + 4 * MIB) / (4 * KIB),
            "{v}"
        );
        round += 1;
    }
    finish_fio(fio, &out);
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(text.contains("write:"), "fio wrote: {text}");
    verify_clean(&a, "g");
    sync_pit(&b, "g", &[]);
    verify_clean(&a, "g");
    let m = a.json(&["group", "measure", "g"]);
    assert_eq!(u(&m, "errors"), 0, "{m}");
}

#[test]
fn bandwidth_limit_paces_a_cycle() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, _b, url) = replicating_group("16M", &["--bandwidth", "2M", "--compress", "none"]);
    qemu_io(&url, &["write -P 0x3c 0 8M"]);
    let t = Instant::now();
    let pit = sync_pit(&a, "g", &[]);
    let took = t.elapsed();
    assert!(u(&pit, "bytes") >= 8 * MIB, "{pit}");
    assert!(
        took >= Duration::from_millis(3000),
        "8 MiB at 2 MiB/s should take about 4 s, took {took:?}"
    );
    verify_clean(&a, "g");
}

#[test]
fn verify_while_a_cycle_is_shipping() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    // A throttled group, so that a cycle is still shipping when verify
    // takes its own cut.
    let (a, b, url) = replicating_group("16M", &["--bandwidth", "4M", "--compress", "none"]);
    for round in 0..3u64 {
        qemu_io(&url, &[&format!("write -P {} 0 4M", 0x41 + round)]);
        let r = a.json(&["sync", "g", "--no-wait"]);
        assert!(r["pit"].is_null(), "{r}");
        std::thread::sleep(Duration::from_millis(300));
        // Writes after the cycle's cut, before and during verify's.
        qemu_io(&url, &[&format!("write -P {} 8M 1M", 0x61 + round)]);
        let out = a.run(&["verify", "g", "--json"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success() && v["differing_blocks"].as_u64() == Some(0),
            "round {round}: verify during a cycle: {}{v}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Whatever overlapped, the next cycles converge on the primary's data.
    wait_group(&a, "g", "no error", LIMIT, |s| s["last_error"].is_null());
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");
    assert_eq!(pit_ids(&a, "g"), pit_ids(&b, "g"));
}

#[test]
fn a_cycle_started_during_verify_loses_no_write() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    // A volume large enough that verify's block-by-block comparison lasts
    // a while, and a throttled group, so that a cycle started meanwhile is
    // still shipping when verify ends.
    let (a, b, url) = replicating_group("256M", &["--bandwidth", "1M", "--compress", "none"]);
    qemu_io(&url, &["write -P 0x11 0 1M", "write -P 0x12 200M 1M"]);
    sync_pit(&a, "g", &[]);
    let mut verify = KillOnDrop(Some(
        Command::new(bin())
            .args(["verify", "g", "--json", "--dir"])
            .arg(a.dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn verify"),
    ));
    std::thread::sleep(Duration::from_millis(400));
    // Written while verify compares, then a cycle that must ship it.
    qemu_io(&url, &["write -P 0x5d 100M 4M"]);
    let r = a.json(&["sync", "g", "--no-wait"]);
    assert!(r["pit"].is_null(), "{r}");
    let out = verify.take().wait_with_output().expect("wait for verify");
    let overlapping: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let overlapping_ok =
        out.status.success() && overlapping["differing_blocks"].as_u64() == Some(0);
    let overlapping_err = String::from_utf8_lossy(&out.stderr).into_owned();
    // Whatever the overlapping verify and cycle said, the write is either
    // still pending or on the replica: after one more cycle, verify finds
    // no difference.
    wait_until("the sync --no-wait cycle ends", LIMIT, || {
        let m = a.json(&["group", "measure", "g"]);
        u(&m, "cycles") >= 4
    });
    std::thread::sleep(Duration::from_millis(500));
    sync_pit(&a, "g", &[]);
    let out = a.run(&["verify", "g", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success() && v["differing_blocks"].as_u64() == Some(0),
        "a write made during verify was lost for replication: {}{v}\nprimary log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 30)
    );
    assert_eq!(pit_ids(&a, "g"), pit_ids(&b, "g"));
    // And verify itself compared one cut with the PIT of that cut.
    assert!(
        overlapping_ok,
        "verify with a cycle started during it: {overlapping_err}{overlapping}"
    );
}

#[test]
fn racing_creates_put_a_volume_in_one_group_only() {
    let (a, b) = group_pair();
    a.create_volume("v1", "4M");
    let creates: Vec<KillOnDrop> = (0..4)
        .map(|i| {
            let name = format!("g{i}");
            let mut args = vec![
                "group",
                "create",
                &name,
                "--partner",
                "site-b",
                "--volume",
                "v1",
            ];
            args.extend(group_defaults(&[]));
            KillOnDrop(Some(
                Command::new(bin())
                    .args(&args)
                    .arg("--dir")
                    .arg(a.dir())
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn group create"),
            ))
        })
        .collect();
    let mut ok = 0;
    for mut c in creates {
        let o = c.take().wait_with_output().expect("wait for group create");
        if o.status.success() {
            ok += 1;
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert_names(&err, &["already belongs"]);
        }
    }
    assert_eq!(
        ok,
        1,
        "exactly one of 4 racing creates may take v1: A has {:?}",
        group_names(&a)
    );
    assert_eq!(group_names(&a).len(), 1, "{:?}", group_names(&a));
    assert_eq!(
        group_names(&b),
        group_names(&a),
        "no orphan group on the replica"
    );
}
