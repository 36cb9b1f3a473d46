//! Test failover (issue 5): writable clones of a PIT at the replica, VMs
//! started on them through their hooks with `OFFSITE_MODE=test`, while
//! replication keeps committing PITs; the tested PIT never changes and is
//! kept by retention until `failover stop-test` discards the clones. Two
//! groups test at once; a failing start hook undoes the test; clones
//! survive a `kill -9` of the replica with their flushed writes.

mod common;

use std::path::Path;

use common::*;
use offsite_testkit::{TestSite, qemu_io, qemu_io_ro};

/// Hooks that record their environment in `dir/HOOK-VM.env`; the start
/// hook fails with exit 7 while `dir/fail` exists.
fn hook_cmds(dir: &Path) -> (String, String) {
    let d = dir.display();
    (
        format!(
            "if [ -e {d}/fail ]; then echo boom; exit 7; fi; env | grep ^OFFSITE_ | sort > {d}/start-$OFFSITE_VM.env; echo started $OFFSITE_VM"
        ),
        format!("env | grep ^OFFSITE_ | sort > {d}/stop-$OFFSITE_VM.env"),
    )
}

fn env_file(dir: &Path, name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn env_get<'a>(env: &'a [(String, String)], key: &str) -> &'a str {
    env.iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("{key} not in {env:?}"))
}

fn group_with_vm(a: &TestSite, group: &str, vm: &str, volumes: &[(&str, &str)], hooks: &Path) {
    let (start, stop) = hook_cmds(hooks);
    let mut args = vec!["vm", "create", vm];
    for (v, size) in volumes {
        a.create_volume(v, size);
        args.extend(["--volume", v]);
    }
    args.extend(["--start", &start, "--stop", &stop]);
    a.json(&args);
    create_group(a, group, "site-b", &["--vm", vm], &["--keep", "3"]);
    let st = a.json(&["group", "start", group]);
    assert_eq!(st["state"], "replicating", "{st}");
}

#[test]
fn test_failover_clones_a_pit_while_replication_continues() {
    if !have_tools(&["qemu-io", "qemu-img"]) {
        return;
    }
    let (a, mut b) = group_pair();
    let hooks = b.scratch().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    group_with_vm(&a, "g", "vm1", &[("d0", "16M"), ("d1", "8M")], &hooks);
    group_with_vm(&a, "g2", "vm2", &[("e0", "8M")], &hooks);

    qemu_io(&a.url("d0"), &["write -P 0x11 0 4M"]);
    qemu_io(&a.url("d1"), &["write -P 0x12 0 1M"]);
    let tested = u(&sync_pit(&a, "g", &[]), "id");
    qemu_io(&a.url("d0"), &["write -P 0x22 0 1M"]);
    sync_pit(&a, "g", &[]);

    // Test failover from the older, unnamed PIT.
    let r = b.json(&[
        "failover",
        "run",
        "g",
        "--test",
        "--pit",
        &tested.to_string(),
    ]);
    assert_eq!(r["mode"], "test", "{r}");
    assert_eq!(u(&r, "pit"), tested, "{r}");
    let c0 = served_url(&r, "d0");
    let c1 = served_url(&r, "d1");
    assert!(c0.contains("d0@g.test"), "{c0}");
    assert_eq!(r["vms"][0]["vm"], "vm1", "{r}");
    assert_eq!(r["vms"][0]["exit_code"], 0, "{r}");
    let env = env_file(&hooks, "start-vm1.env");
    assert_eq!(env_get(&env, "OFFSITE_MODE"), "test");
    assert_eq!(env_get(&env, "OFFSITE_SITE"), "site-b");
    assert_eq!(env_get(&env, "OFFSITE_GROUP"), "g");
    assert_eq!(env_get(&env, "OFFSITE_VOLUME_0_URL"), c0);
    assert_eq!(env_get(&env, "OFFSITE_VOLUME_1_URL"), c1);
    let events = events_about(&b, "g");
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "vm.hook" && m.contains("started vm1")),
        "the hook's output is in the group's event log: {events:?}"
    );

    // The clone holds the PIT (not the newer write) and takes writes.
    qemu_io(&c0, &["read -P 0x11 0 4M", "read -P 0 4M 12M"]);
    qemu_io(&c1, &["read -P 0x12 0 1M"]);
    qemu_io(
        &c0,
        &["write -P 0x33 0 64k", "write -P 0x34 100000 5000", "flush"],
    );
    qemu_io(
        &c0,
        &[
            "read -P 0x33 0 64k",
            "read -P 0x34 100000 5000",
            "read -P 0x11 106000 1M",
        ],
    );

    // A second test on the same group is refused; another group's runs.
    let err = b.fails(&["failover", "run", "g", "--test"]);
    assert!(err.contains("already"), "{err}");
    let r2 = b.json(&["failover", "run", "g2", "--test"]);
    assert_eq!(r2["vms"][0]["vm"], "vm2", "{r2}");
    qemu_io(&served_url(&r2, "e0"), &["write -P 0x55 0 4k"]);

    // Replication goes on; retention (keep 3) keeps the tested PIT.
    let st = group_status(&b, "g");
    assert_eq!(st["state"], "test-failover", "{st}");
    assert_eq!(u(&st, "test_failover_pit"), tested, "{st}");
    for i in 0..5u64 {
        qemu_io(&a.url("d0"), &[&format!("write -P {} 8M 1M", 0x60 + i)]);
        sync_pit(&a, "g", &[]);
    }
    let ids: Vec<u64> = pit_ids(&b, "g").iter().map(|p| p.0).collect();
    assert!(ids.contains(&tested), "the tested PIT is kept: {ids:?}");
    assert_eq!(ids.len(), 4, "3 by retention + the tested one: {ids:?}");
    verify_clean(&a, "g");
    // The PIT itself never changed.
    let e = b.json(&["pit", "export", "g", &tested.to_string()]);
    let pit_url = e["volumes"][0]["url"].as_str().unwrap().to_string();
    qemu_io_ro(&pit_url, &["read -P 0x11 0 4M"]);

    // The clones survive a crash of the replica with their flushed writes.
    b.kill9();
    b.start();
    let c0 = format!("nbd://{}/d0@g.test", site_addr(&b, "nbd"));
    qemu_io(&c0, &["read -P 0x33 0 64k", "read -P 0x34 100000 5000"]);
    sync_eventually(&a, "g");

    // Stop the test: stop hook, clones gone, the PIT released.
    let s = b.json(&["failover", "stop-test", "g"]);
    assert_eq!(s["mode"], "stop-test", "{s}");
    let env = env_file(&hooks, "stop-vm1.env");
    assert_eq!(env_get(&env, "OFFSITE_MODE"), "test");
    assert_eq!(env_get(&env, "OFFSITE_VOLUME_0_URL"), c0);
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read 0 4k", &c0])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the clone is no longer served");
    let st = group_status(&b, "g");
    assert_eq!(st["state"], "replicating", "{st}");
    assert!(st["test_failover_pit"].is_null(), "{st}");
    sync_pit(&a, "g", &[]);
    let ids: Vec<u64> = pit_ids(&b, "g").iter().map(|p| p.0).collect();
    assert!(!ids.contains(&tested), "released to retention: {ids:?}");
    assert!(!b.fails(&["failover", "stop-test", "g"]).is_empty());

    // A failing start hook undoes the test and says why.
    b.json(&["failover", "stop-test", "g2"]);
    std::fs::write(hooks.join("fail"), b"").unwrap();
    let err = b.fails(&["failover", "run", "g2", "--test"]);
    assert!(
        err.contains("exited with 7") && err.contains("boom"),
        "{err}"
    );
    let st = group_status(&b, "g2");
    assert_eq!(st["state"], "replicating", "{st}");
    assert!(st["test_failover_pit"].is_null(), "{st}");
    std::fs::remove_file(hooks.join("fail")).unwrap();
    let r = b.json(&["failover", "run", "g2", "--test"]);
    qemu_io(&served_url(&r, "e0"), &["read -P 0 0 4k"]);
    b.json(&["failover", "stop-test", "g2"]);
}
