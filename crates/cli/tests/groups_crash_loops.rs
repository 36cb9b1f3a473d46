//! Crash loops (issue 4): twenty `kill -9`s of the primary under write
//! load, each followed by restart, sync and a verify that must find no
//! differing block; twenty `kill -9`s of the replica while a PIT is being
//! transferred, committed or merged by retention, each followed by a check
//! that the PIT list only ever gained the PIT in flight and that every
//! listed PIT reads back equal to its recorded checksums (`pit check`).
//! Delays come from a seed printed at the start (`OFFSITE_TEST_SEED`
//! replays a run).

mod common;

use std::time::Duration;

use common::*;
use offsite_testkit::qemu_io;
use serde_json::Value;

const ITERATIONS: u64 = 20;

/// fio (NBD engine) random 4 KiB writes at `url` until killed.
fn spawn_fio(url: &str, out: &std::path::Path) -> KillOnDrop {
    let child = std::process::Command::new("fio")
        .args([
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={url}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=32M",
            "--time_based",
            "--runtime=60",
            &format!("--output={}", out.display()),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn fio");
    KillOnDrop(Some(child))
}

#[test]
fn primary_killed_20_times_under_write_load_verifies_clean() {
    if !have_tools(&["fio", "qemu-io"]) {
        return;
    }
    let (mut a, b) = group_pair();
    a.create_volume("disk0", "32M");
    let url1 = a.create_volume("disk1", "8M");
    qemu_io(&url1, &["write -P 0x11 0 8M"]);
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "disk0", "--volume", "disk1"],
        &["--keep", "4"],
    );
    a.json(&["group", "start", "g"]);
    let mut rng = seed();
    let fio_out = a.scratch().join("fio.json");
    let mut mid_cycle = 0;
    for round in 0..ITERATIONS {
        let fio = spawn_fio(&a.url("disk0"), &fio_out);
        qemu_io(
            &a.url("disk1"),
            &[&format!(
                "write -P {} {}k 64k",
                round + 1,
                (round % 128) * 64
            )],
        );
        std::thread::sleep(Duration::from_millis(200 + next_rand(&mut rng) % 1000));
        // Every other round the kill lands while a cycle cuts and ships.
        if next_rand(&mut rng).is_multiple_of(2) {
            a.json(&["sync", "g", "--no-wait"]);
            std::thread::sleep(Duration::from_millis(next_rand(&mut rng) % 300));
            mid_cycle += 1;
        }
        a.kill9();
        drop(fio);
        a.start();
        let pit = sync_eventually(&a, "g");
        let v = verify_clean(&a, "g");
        assert_eq!(u(&v, "blocks_compared"), 40 * 256, "round {round}: {v}");
        assert_eq!(
            pit_ids(&a, "g"),
            pit_ids(&b, "g"),
            "round {round}: both sites list the same PITs"
        );
        eprintln!("round {round}: PIT {} verified", pit["id"]);
    }
    eprintln!("{ITERATIONS} kills of the primary, {mid_cycle} with a cycle started");
    let st = group_status(&a, "g");
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(pit_ids(&a, "g").len(), 4, "retention keeps 4 PITs");
}

/// `pit check NAME --json` at the replica, which must find every PIT intact;
/// returns the checked ids.
fn pit_check_clean(replica: &offsite_testkit::TestSite, group: &str) -> Vec<u64> {
    let out = replica.run(&["pit", "check", group, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pit check {group} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&stdout).expect("pit check --json");
    assert_eq!(u(&r, "damaged"), 0, "{r}");
    r["pits"]
        .as_array()
        .expect("pits")
        .iter()
        .map(|p| {
            assert_eq!(p["ok"], true, "{p}");
            u(p, "id")
        })
        .collect()
}

#[test]
fn replica_killed_20_times_mid_commit_keeps_a_consistent_pit_list() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, mut b) = group_pair();
    let url = a.create_volume("disk0", "64M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "disk0"],
        // Retention merges on most commits, so kills also land mid-merge.
        &["--compress", "none", "--keep", "3"],
    );
    a.json(&["group", "start", "g"]);
    let mut rng = seed();
    let mut failed_cycles = 0;
    for round in 0..ITERATIONS {
        let errors_before = u(&a.json(&["group", "measure", "g"]), "errors");
        let off = next_rand(&mut rng) % 48;
        qemu_io(&url, &[&format!("write -P {} {off}M 16M", 0x40 + round)]);
        let before = pit_ids(&b, "g");
        a.json(&["sync", "g", "--no-wait"]);
        let delay = Duration::from_millis(next_rand(&mut rng) % 500);
        std::thread::sleep(delay);
        b.kill9();
        b.start();
        // B lists what it listed before, less what retention merged away,
        // plus at most the PIT in flight; never a PIT it was still writing.
        let after = pit_ids(&b, "g");
        let newest_before = before.last().map_or(0, |p| p.0);
        let gained: Vec<_> = after.iter().filter(|p| p.0 > newest_before).collect();
        assert!(
            gained.len() <= 1
                && after
                    .iter()
                    .all(|p| p.0 > newest_before || before.contains(p)),
            "round {round} (kill after {delay:?}): B's PITs before {before:?}, after {after:?}"
        );
        // The primary may commit again meanwhile (its cycle retries), so
        // the check sees B's PITs as of a moment later: never older.
        let checked = pit_check_clean(&b, "g");
        assert!(
            checked.last() >= after.last().map(|p| &p.0),
            "round {round}: pit check covers the listed PITs: checked {checked:?}, listed {after:?}"
        );
        sync_eventually(&a, "g");
        verify_clean(&a, "g");
        assert_eq!(pit_ids(&a, "g"), pit_ids(&b, "g"), "round {round}");
        let errors = u(&a.json(&["group", "measure", "g"]), "errors") - errors_before;
        eprintln!("round {round}: B killed after {delay:?}, {errors} failed cycle(s)");
        failed_cycles += errors;
    }
    eprintln!("{failed_cycles} cycle(s) failed because B was killed");
    assert_eq!(pit_check_clean(&b, "g").len(), 3, "retention keeps 3 PITs");
}
