//! Planned failover, reverse and failback (issue 5), and an unplanned
//! failover after the primary was killed: two real sites, qemu-io data
//! checks at every stage, VM hooks that record their environment, and the
//! bytes reverse replication moves compared with what changed.

mod common;

use std::time::Duration;

use std::path::Path;
use std::process::Command;

use common::*;
use offsite_testkit::{TestSite, qemu_io};

const MIB: u64 = 1024 * 1024;

/// Hooks appending `SITE ACTION MODE VM URL0` lines to `log` (a file
/// outside both sites, as a hypervisor would keep its own state).
fn hooks(log: &Path) -> (String, String) {
    let l = log.display();
    (
        format!("echo $OFFSITE_SITE start $OFFSITE_MODE $OFFSITE_VM $OFFSITE_VOLUME_0_URL >> {l}"),
        format!("echo $OFFSITE_SITE stop $OFFSITE_MODE $OFFSITE_VM $OFFSITE_VOLUME_0_URL >> {l}"),
    )
}

fn hook_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn write_fails(url: &str) -> bool {
    let out = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x99 0 4k", url])
        .output()
        .expect("run qemu-io");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    !out.status.success() || text.contains("failed")
}

fn volume_names(site: &TestSite) -> Vec<String> {
    site.json(&["volume", "list"])
        .as_array()
        .expect("volume list")
        .iter()
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A (primary) and B (replica) authorize each other, so the group can
/// replicate either way.
fn two_way_pair() -> (TestSite, TestSite) {
    let (a, b) = group_pair();
    authorize_primary(&a, "site-b", None);
    (a, b)
}

#[test]
fn planned_failover_reverse_and_failback_lose_nothing_and_move_only_changes() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = two_way_pair();
    let log = a.scratch().join("hooks.log");
    let (start, stop) = hooks(&log);
    a.create_volume("d0", "16M");
    a.create_volume("d1", "8M");
    a.json(&[
        "vm", "create", "vm1", "--volume", "d0", "--volume", "d1", "--start", &start, "--stop",
        &stop,
    ]);
    create_group(&a, "g", "site-b", &["--vm", "vm1"], &["--keep", "3"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 4M"]);
    qemu_io(&a.url("d1"), &["write -P 0x12 0 1M"]);
    sync_pit(&a, "g", &[]);
    // Written after the last sync: the final PIT of prepare must carry it.
    qemu_io(&a.url("d0"), &["write -P 0x13 8M 1M"]);

    // Planned failover A -> B.
    let p = a.json(&["failover", "prepare", "g"]);
    assert_eq!(p["mode"], "prepare", "{p}");
    let final_pit = u(&p, "pit");
    assert_eq!(
        pit_ids(&b, "g").last().cloned(),
        Some((final_pit, Some("planned-failover".to_string())))
    );
    assert!(
        write_fails(&a.url("d0")),
        "a prepared primary refuses writes"
    );
    assert_eq!(group_status(&a, "g")["state"], "prepared-for-failover");
    assert_eq!(group_status(&b, "g")["state"], "prepared-for-failover");
    // A sync from the replica returns at once with the final PIT.
    let s = b.json(&["sync", "g"]);
    assert_eq!(u(&s["pit"], "id"), final_pit, "{s}");
    assert_eq!(
        hook_lines(&log),
        vec![format!("site-a stop planned vm1 {}", a.url("d0"))]
    );

    let r = b.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    assert_eq!(u(&r, "pit"), final_pit, "{r}");
    let b0 = served_url(&r, "d0");
    let b1 = served_url(&r, "d1");
    assert_eq!(b0, b.url("d0"));
    assert_eq!(
        hook_lines(&log).last().cloned(),
        Some(format!("site-b start planned vm1 {b0}"))
    );
    qemu_io(
        &b0,
        &["read -P 0x11 0 4M", "read -P 0 4M 4M", "read -P 0x13 8M 1M"],
    );
    qemu_io(&b1, &["read -P 0x12 0 1M"]);
    assert_eq!(group_status(&b, "g")["state"], "failed-over");
    let vol = b.json(&["volume", "show", "d0"]);
    assert_eq!(vol["role"], "promoted", "{vol}");
    // The VMs write at B.
    qemu_io(&b0, &["write -P 0x21 12M 1M"]);
    qemu_io(&b1, &["write -P 0x22 4M 64k"]);

    // Reverse: A becomes the replica; only B's writes move.
    let rv = b.json(&["reverse", "g"]);
    let moved = u(&rv, "bytes_transferred");
    eprintln!(
        "reverse A<-B moved {moved} bytes for {} changed",
        MIB + 64 * 1024
    );
    assert!(
        (MIB + 64 * 1024..=MIB + 64 * 1024 + 64 * 1024).contains(&moved),
        "reverse moves B's writes only, not the 24 MiB of volumes: {rv}"
    );
    let sa = group_status(&a, "g");
    let sb = group_status(&b, "g");
    assert_eq!(
        (sa["role"].as_str(), sa["state"].as_str()),
        (Some("replica"), Some("replicating")),
        "{sa}"
    );
    assert_eq!(
        (sb["role"].as_str(), sb["state"].as_str()),
        (Some("primary"), Some("replicating")),
        "{sb}"
    );
    assert_eq!(sb["rpo_seconds"], 30, "settings kept: {sb}");
    assert_eq!(sb["keep"], 3, "settings kept: {sb}");
    assert!(
        !volume_names(&a).contains(&"d0".to_string()),
        "A serves no copy of d0 any more"
    );
    assert!(
        b.json(&["vm", "list"]).to_string().contains("vm1"),
        "the VM is defined where it runs"
    );
    verify_clean(&b, "g");

    // Replication B -> A carries on.
    qemu_io(&b0, &["write -P 0x23 0 64k"]);
    sync_pit(&b, "g", &[]);
    verify_clean(&b, "g");

    // Failback: the same three commands from the other side.
    let p = b.json(&["failover", "prepare", "g"]);
    assert_eq!(p["mode"], "prepare", "{p}");
    assert!(write_fails(&b0), "a prepared primary refuses writes");
    let r = a.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    let a0 = served_url(&r, "d0");
    let a1 = served_url(&r, "d1");
    qemu_io(
        &a0,
        &[
            "read -P 0x23 0 64k",
            "read -P 0x11 64k 3968k",
            "read -P 0x13 8M 1M",
            "read -P 0x21 12M 1M",
        ],
    );
    qemu_io(&a1, &["read -P 0x12 0 1M", "read -P 0x22 4M 64k"]);
    let lines = hook_lines(&log);
    assert_eq!(
        lines[lines.len() - 2..],
        [
            format!("site-b stop planned vm1 {b0}"),
            format!("site-a start planned vm1 {a0}"),
        ]
    );
    qemu_io(&a0, &["write -P 0x31 2M 64k"]);
    let rv = a.json(&["reverse", "g"]);
    let moved = u(&rv, "bytes_transferred");
    eprintln!("reverse A->B moved {moved} bytes for 65536 changed");
    assert!(moved <= 128 * 1024, "{rv}");

    // As before the first failover: A primary, B replica, same settings.
    let sa = group_status(&a, "g");
    let sb = group_status(&b, "g");
    assert_eq!(
        (sa["role"].as_str(), sa["state"].as_str()),
        (Some("primary"), Some("replicating")),
        "{sa}"
    );
    assert_eq!(
        (sb["role"].as_str(), sb["state"].as_str()),
        (Some("replica"), Some("replicating")),
        "{sb}"
    );
    assert!(!volume_names(&b).contains(&"d0".to_string()));
    qemu_io(&a.url("d0"), &["write -P 0x41 5M 1M"]);
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");
    qemu_io(
        &a.url("d0"),
        &[
            "read -P 0x31 2M 64k",
            "read -P 0x41 5M 1M",
            "read -P 0x21 12M 1M",
        ],
    );
}

#[test]
fn unplanned_failover_then_reverse_rolls_back_the_lost_primary_s_unreplicated_writes() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (mut a, b) = two_way_pair();
    a.create_volume("d0", "32M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 8M"]);
    let replicated = u(&sync_pit(&a, "g", &[]), "id");

    // While the primary is up and not prepared, failover needs --force.
    let err = b.fails(&["failover", "run", "g"]);
    assert!(
        err.contains("failover prepare") && err.contains("--force"),
        "{err}"
    );

    // Writes that never reach the replica, then the primary dies.
    qemu_io(&a.url("d0"), &["write -P 0x12 16M 4M"]);
    a.kill9();
    let err = b.fails(&["failover", "run", "g"]);
    assert!(
        err.contains("cannot be reached") && err.contains("--force"),
        "{err}"
    );
    let r = b.json(&["failover", "run", "g", "--force"]);
    assert_eq!(r["mode"], "unplanned", "{r}");
    assert_eq!(u(&r, "pit"), replicated, "{r}");
    let b0 = served_url(&r, "d0");
    qemu_io(&b0, &["read -P 0x11 0 8M", "read -P 0 16M 4M"]);
    qemu_io(&b0, &["write -P 0x21 24M 1M"]);

    // The old primary comes back; the replica refuses its cycles.
    a.start();
    let st = wait_group(&a, "g", "A's cycles refused", GROUP_LIMIT, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("failed over"))
    });
    eprintln!("A after restart: {st}");
    // Fenced (it learned of the failover at start-up), yet readable.
    offsite_testkit::qemu_io_ro(&a.url("d0"), &["read -P 0x12 16M 4M"]);

    // Reverse: A's unreplicated 4 MiB are rolled back, B's 1 MiB sent.
    // After kill -9, A's tracked set is a superset (its activity log's
    // extents count dirty): what moves is bounded by that set plus B's
    // writes, never the volume; the rolled-back zeroes travel as ranges.
    let a_pending = u(&st, "pending_bytes");
    let rv = b.json(&["reverse", "g"]);
    let moved = u(&rv, "bytes_transferred");
    let rolled_back = u(&rv, "rolled_back_bytes");
    eprintln!(
        "reverse moved {moved} bytes, rolled back {rolled_back} (A had {a_pending} pending); 5 MiB changed on the two sides, the volume is 32 MiB"
    );
    // Of A's tracked set, only the blocks that really differ from B's copy
    // are rolled back (compared by checksum): the 4 MiB A wrote.
    assert!(a_pending >= 4 * MIB, "{st}");
    assert_eq!(rolled_back, 4 * MIB, "{rv}");
    assert!(moved >= MIB && moved <= a_pending + MIB, "{rv}");
    assert!(moved < 16 * MIB, "{rv}");
    verify_clean(&b, "g");
    let newest = pit_ids(&a, "g").last().expect("a PIT at A").0;
    let e = a.json(&["pit", "export", "g", &newest.to_string()]);
    let pit_url = e["volumes"][0]["url"].as_str().unwrap().to_string();
    offsite_testkit::qemu_io_ro(
        &pit_url,
        &[
            "read -P 0x11 0 8M",
            "read -P 0 16M 4M",
            "read -P 0x21 24M 1M",
        ],
    );
    assert!(!volume_names(&a).contains(&"d0".to_string()));
}

/// After kill -9 of a primary whose every activity-log extent was active,
/// its tracked set is the whole volume; reverse compares those suspect
/// blocks by checksum with the new primary's copy and moves only what was
/// written at the new primary and what really differs (issue 17's target:
/// bytes moved <= 1.1 x (both) + 1 MiB).
#[test]
fn reverse_after_a_crash_moves_only_blocks_that_really_differ() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (mut a, b) = two_way_pair();
    a.create_volume("d0", "64M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 64M"]);
    sync_pit(&a, "g", &[]);

    // Every 4 MiB extent written again (the same bytes: active, suspect,
    // yet equal), and 256 KiB that really differ; then the primary dies.
    let mut cmds: Vec<String> = (0..16)
        .map(|e| format!("write -P 0x11 {}M 4k", e * 4))
        .collect();
    cmds.push("write -P 0x12 10M 256k".into());
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&a.url("d0"), &cmds);
    a.kill9();
    let r = b.json(&["failover", "run", "g", "--force"]);
    let b0 = served_url(&r, "d0");
    // 2 MiB written at the new primary.
    qemu_io(&b0, &["write -P 0x21 40M 2M"]);
    a.start();
    let st = wait_group(&a, "g", "A's cycles refused", GROUP_LIMIT, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("failed over"))
    });
    let suspect = u(&st, "pending_bytes");

    let rv = b.json(&["reverse", "g"]);
    let moved = u(&rv, "bytes_transferred");
    let rolled_back = u(&rv, "rolled_back_bytes");
    let written_at_b = 2 * MIB;
    let really_differ = 256 * 1024;
    let bound = (written_at_b + really_differ) * 11 / 10 + MIB;
    eprintln!(
        "reverse after kill -9: {suspect} suspect bytes at the old primary; moved {moved} bytes, rolled back {rolled_back}; written at the new primary {written_at_b}, really differing {really_differ}; bound {bound}"
    );
    assert!(
        suspect >= 32 * MIB,
        "the crash should leave many suspects: {st}"
    );
    assert_eq!(rolled_back, really_differ, "{rv}");
    assert!(moved <= bound, "moved {moved} > {bound}: {rv}");
    assert!(moved >= written_at_b, "{rv}");
    verify_clean(&b, "g");
    let newest = pit_ids(&a, "g").last().expect("a PIT at A").0;
    read_pit(
        &a,
        "g",
        newest,
        &[
            "read -P 0x11 0 40M",
            "read -P 0x21 40M 2M",
            "read -P 0x11 42M 22M",
        ],
    );
}

/// An old primary that comes back after an unplanned failover learns it
/// at start-up: its group turns failed-over-elsewhere (health critical)
/// and its volumes refuse writes at once, until the operator resolves it:
/// `group unfence` once the failover was reverted, or `reverse`.
#[test]
fn a_restarted_old_primary_is_fenced_at_once_until_resolved() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (mut a, b) = two_way_pair();
    a.create_volume("d0", "8M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    a.kill9();
    b.json(&["failover", "run", "g", "--force"]);

    a.start();
    // Long before the first scheduled cycle (15 s): start-up asks site-b.
    let st = wait_group(&a, "g", "fenced", Duration::from_secs(10), |s| {
        s["state"] == "failed-over-elsewhere"
    });
    assert_eq!(st["health"], "critical", "{st}");
    let why = st["health_reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("site-b") && why.contains("offsite reverse g"),
        "{st}"
    );
    assert!(
        write_fails(&a.url("d0")),
        "the old primary still takes writes"
    );
    let err = a.fails(&["sync", "g"]);
    assert!(err.contains("failed-over-elsewhere"), "{err}");
    // Unfence is refused while site-b holds the group failed over.
    let err = a.fails(&["group", "unfence", "g"]);
    assert!(err.contains("site-b") && err.contains("--force"), "{err}");
    // The state survives a restart.
    a.stop();
    a.start();
    assert_eq!(group_status(&a, "g")["state"], "failed-over-elsewhere");
    assert!(write_fails(&a.url("d0")));

    // The failover is reverted at site-b: unfence, and replication goes on.
    b.json(&["failover", "revert", "g"]);
    let st = a.json(&["group", "unfence", "g"]);
    assert_eq!(st["state"], "replicating", "{st}");
    qemu_io(&a.url("d0"), &["write -P 0x22 1M 1M"]);
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");
    assert_eq!(group_status(&a, "g")["health"], "normal");
}

/// The same learned at first contact: the old primary was up all along but
/// cut off; the replica's refusal of its next cycle fences it.
#[test]
fn an_old_primary_is_fenced_when_the_partner_refuses_its_cycle() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = two_way_pair();
    a.create_volume("d0", "8M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    a.json(&["group", "start", "g"]);
    sync_pit(&a, "g", &[]);
    b.json(&["failover", "run", "g", "--force"]);
    qemu_io(&a.url("d0"), &["write -P 0x33 0 64k"]);
    let err = a.fails(&["sync", "g"]);
    assert!(err.contains("failed over"), "{err}");
    let st = group_status(&a, "g");
    assert_eq!(st["state"], "failed-over-elsewhere", "{st}");
    assert!(write_fails(&a.url("d0")));
    // Reverse at site-b resolves it: the write made before A learned is a
    // split brain to discard, and A becomes the replica.
    let r = b.json(&["reverse", "g", "--discard-changes-on", "site-a"]);
    assert!(u(&r, "pit") > 0, "{r}");
    assert_eq!(group_status(&a, "g")["role"], "replica");
}

/// Every byte a group moves is counted, by kind, in `group measure` (and
/// its total in the metrics): initial replication, cycles, `group resync`,
/// a sync group's stream, and what a reverse moved — which `reverse --json`
/// reports too, also for a sync group (it used to say 0).
#[test]
fn measure_counts_every_byte_the_group_moves_by_kind() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = two_way_pair();
    a.create_volume("d0", "16M");
    qemu_io(&a.url("d0"), &["write -P 0x11 0 4M"]);
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    let kind =
        |site: &TestSite, k: &str| u(&site.json(&["group", "measure", "g"])["bytes_by_kind"], k);
    assert!(
        kind(&a, "initial") >= 4 * MIB,
        "{}",
        a.json(&["group", "measure", "g"])
    );

    qemu_io(&a.url("d0"), &["write -P 0x12 4M 1M"]);
    sync_pit(&a, "g", &[]);
    assert_eq!(kind(&a, "cycle"), MIB);

    qemu_io(&a.url("d0"), &["write -P 0x13 5M 256k"]);
    a.json(&["volume", "clear-dirty", "d0", "--force"]);
    a.json(&["group", "resync", "g"]);
    assert_eq!(kind(&a, "resync"), 256 * 1024);

    a.json(&["group", "set", "g", "--mode", "sync"]);
    wait_group(&a, "g", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync" && s["state"] == "replicating"
    });
    qemu_io(&a.url("d0"), &["write -P 0x14 6M 1M"]);
    sync_pit(&a, "g", &[]);
    assert!(
        kind(&a, "sync") >= MIB,
        "{}",
        a.json(&["group", "measure", "g"])
    );
    let m = a.json(&["group", "measure", "g"]);
    let sum: u64 = m["bytes_by_kind"]
        .as_object()
        .expect("bytes_by_kind")
        .values()
        .map(|v| v.as_u64().unwrap_or(0))
        .sum();
    assert_eq!(u(&m, "bytes_total"), sum, "{m}");

    // A planned failover of the sync group, 2 MiB written at site-b, and
    // reverse: what moved is reported and counted.
    a.json(&["failover", "prepare", "g"]);
    let r = b.json(&["failover", "run", "g"]);
    qemu_io(&served_url(&r, "d0"), &["write -P 0x21 8M 2M"]);
    let rv = b.json(&["reverse", "g"]);
    let moved = u(&rv, "bytes_transferred");
    assert!(
        moved >= 2 * MIB,
        "reverse of a sync group moved {moved}: {rv}"
    );
    assert_eq!(
        kind(&b, "reverse"),
        moved,
        "{}",
        b.json(&["group", "measure", "g"])
    );
    verify_clean(&b, "g");
}

/// While reverse moves data, the new primary's status shows it as a
/// `reverse` transfer with bytes, rate and ETA (what `offsite reverse`
/// draws on a terminal).
#[test]
fn reverse_shows_its_progress_in_status() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = two_way_pair();
    a.create_volume("d0", "512M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    a.json(&["failover", "prepare", "g"]);
    let r = b.json(&["failover", "run", "g"]);
    // Enough for the reverse to take a while (a settings' bandwidth limit
    // does not survive the change of sides: the new primary has none).
    qemu_io(&served_url(&r, "d0"), &["write -P 0x21 0 256M"]);
    let dir = b.dir().to_path_buf();
    let reverse = std::thread::spawn(move || {
        Command::new(bin())
            .args(["reverse", "g", "--json", "--dir"])
            .arg(&dir)
            .output()
            .expect("run reverse")
    });
    let mut seen = Vec::new();
    while !reverse.is_finished() {
        let st = group_status(&b, "g");
        if let Some(t) = st["transfer"].as_object() {
            seen.push((
                t["kind"].as_str().unwrap_or_default().to_string(),
                t["bytes_done"].as_u64().unwrap_or(0),
                t["bytes_total"].as_u64().unwrap_or(0),
                t["eta_seconds"].as_u64(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = reverse.join().expect("reverse thread");
    assert!(out.status.success(), "{out:?}");
    eprintln!("reverse progress: {seen:?}");
    assert!(
        seen.iter().any(|(kind, done, total, eta)| kind == "reverse"
            && *total >= 256 * MIB
            && *done < *total
            && eta.is_some()),
        "{seen:?}"
    );
    assert!(group_status(&b, "g")["transfer"].is_null());
}

#[test]
fn revert_and_other_pits_until_commit() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = two_way_pair();
    a.create_volume("d0", "16M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &["--keep", "5"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &["--pit-name", "one"]);
    qemu_io(&a.url("d0"), &["write -P 0x12 0 1M"]);
    sync_pit(&a, "g", &[]);

    // A prepared primary can change its mind.
    a.json(&["failover", "prepare", "g"]);
    let r = a.json(&["failover", "revert", "g"]);
    assert_eq!(r["mode"], "revert", "{r}");
    assert_eq!(group_status(&a, "g")["state"], "replicating");
    assert_eq!(group_status(&b, "g")["state"], "replicating");
    qemu_io(&a.url("d0"), &["write -P 0x13 1M 1M"]);
    sync_pit(&a, "g", &[]);

    a.json(&["failover", "prepare", "g"]);
    let r = b.json(&["failover", "run", "g"]);
    let b0 = served_url(&r, "d0");
    qemu_io(&b0, &["read -P 0x12 0 1M", "read -P 0x13 1M 1M"]);
    qemu_io(&b0, &["write -P 0x21 4M 64k"]);
    // Another PIT replaces the promoted volume (and its writes).
    let r = b.json(&["failover", "run", "g", "--pit", "one"]);
    let one = pit_ids(&b, "g")
        .into_iter()
        .find(|p| p.1.as_deref() == Some("one"))
        .expect("PIT one")
        .0;
    assert_eq!(u(&r, "pit"), one, "{r}");
    qemu_io(
        &served_url(&r, "d0"),
        &["read -P 0x11 0 1M", "read -P 0 1M 1M", "read -P 0 4M 64k"],
    );
    // Revert: B is the replica again, A still prepared until it reverts too.
    b.json(&["failover", "revert", "g"]);
    assert!(!volume_names(&b).contains(&"d0".to_string()));
    assert_eq!(group_status(&b, "g")["state"], "prepared-for-failover");
    a.json(&["failover", "revert", "g"]);
    assert_eq!(group_status(&b, "g")["state"], "replicating");
    qemu_io(&a.url("d0"), &["write -P 0x14 2M 64k"]);
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");

    // After commit, neither revert nor another PIT.
    a.json(&["failover", "prepare", "g"]);
    b.json(&["failover", "run", "g"]);
    b.json(&["failover", "commit", "g"]);
    let err = b.fails(&["failover", "revert", "g"]);
    assert!(err.contains("committed"), "{err}");
    let err = b.fails(&["failover", "run", "g", "--pit", "one"]);
    assert!(err.contains("committed"), "{err}");
    qemu_io(&b.url("d0"), &["read -P 0x14 2M 64k"]);
}

fn group_names(site: &TestSite) -> Vec<String> {
    site.json(&["group", "list"])
        .as_array()
        .expect("group list")
        .iter()
        .map(|g| g["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn teardown_from_either_site_keeps_the_data() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, mut b) = two_way_pair();
    a.create_volume("d0", "8M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    let store = group_status(&b, "g")["store_dir"]
        .as_str()
        .expect("store_dir")
        .to_string();

    // From the replica: both sides forget; A keeps its volume, B its PITs.
    b.json(&["group", "teardown", "g"]);
    assert!(group_names(&a).is_empty() && group_names(&b).is_empty());
    qemu_io(&a.url("d0"), &["read -P 0x11 0 1M"]);
    let parent = Path::new(&store).parent().unwrap();
    let kept: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("g.torn-down-"))
        .collect();
    assert_eq!(kept.len(), 1, "the replica's PITs are kept aside: {kept:?}");
    assert!(
        events_about(&b, "g")
            .iter()
            .any(|(k, m)| k == "group.store-kept" && m.contains("torn-down")),
        "{:?}",
        events_about(&b, "g")
    );

    // The name is free again; with the partner down, only --force helps.
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    a.json(&["group", "start", "g"]);
    b.stop();
    let err = a.fails(&["group", "teardown", "g"]);
    assert!(err.contains("--force"), "{err}");
    a.json(&["group", "teardown", "g", "--force"]);
    assert!(group_names(&a).is_empty());
    b.start();
    let err = b.fails(&["group", "teardown", "g"]);
    assert!(err.contains("--force"), "{err}");
    b.json(&["group", "teardown", "g", "--force"]);
    assert!(group_names(&b).is_empty());
}

/// A forced failover while the old primary keeps running and writing: A
/// loses its link to B (its partner address is made unreachable), its
/// cycles fail and it goes on writing; B fails over with --force and
/// writes too; then the link heals.
fn split_brain() -> (TestSite, TestSite) {
    let (a, b) = two_way_pair();
    a.create_volume("d0", "16M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    let b_listen = site_addr(&b, "listen");
    a.ok(&["partner", "set", "site-b", "--address", "127.0.0.1:9"]);
    assert!(!a.fails(&["sync", "g"]).is_empty());
    qemu_io(&a.url("d0"), &["write -P 0x55 4M 1M"]);
    let st = group_status(&a, "g");
    assert_eq!(u(&st, "isolated_bytes"), MIB, "{st}");
    let r = b.json(&["failover", "run", "g", "--force"]);
    assert_eq!(r["mode"], "unplanned", "{r}");
    qemu_io(&served_url(&r, "d0"), &["write -P 0x66 8M 64k"]);
    a.ok(&["partner", "set", "site-b", "--address", &b_listen]);
    (a, b)
}

fn pit_named_like(site: &TestSite, group: &str, prefix: &str) -> (u64, String) {
    pit_ids(site, group)
        .into_iter()
        .find_map(|(id, n)| n.filter(|n| n.starts_with(prefix)).map(|n| (id, n)))
        .unwrap_or_else(|| panic!("no PIT named {prefix}* on {}", site.name()))
}

fn read_pit(site: &TestSite, group: &str, id: u64, cmds: &[&str]) {
    let e = site.json(&["pit", "export", group, &id.to_string()]);
    let url = e["volumes"][0]["url"].as_str().unwrap().to_string();
    offsite_testkit::qemu_io_ro(&url, cmds);
}

#[test]
fn split_brain_is_refused_until_the_operator_discards_the_old_primary_s_changes() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = split_brain();
    let err = b.fails(&["reverse", "g"]);
    assert!(
        err.contains("split brain")
            && err.contains("site-a wrote 1048576 bytes")
            && err.contains("site-b wrote 65536 bytes")
            && err.contains("--discard-changes-on"),
        "{err}"
    );
    assert_eq!(group_status(&a, "g")["role"], "primary", "nothing changed");
    let dry = b.json(&["reverse", "g", "--dry-run"]);
    let sides = dry["split_brain"]["sites"].as_array().unwrap().clone();
    assert_eq!(sides[0]["site"], "site-a", "{dry}");
    assert_eq!(sides[0]["written_bytes"], MIB, "{dry}");
    assert_eq!(sides[1]["written_bytes"], 64 * 1024, "{dry}");
    assert_eq!(
        group_status(&b, "g")["state"],
        "failed-over",
        "dry run changes nothing"
    );

    let r = b.json(&["reverse", "g", "--discard-changes-on", "site-a"]);
    assert_eq!(r["split_brain"]["discarded_on"], "site-a", "{r}");
    let kept = r["split_brain"]["kept_as_pit"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(kept.starts_with("split-brain-"), "{r}");
    verify_clean(&b, "g");
    // A is the replica; its divergent state stays readable as that PIT.
    let (id, name) = pit_named_like(&a, "g", "split-brain-");
    assert_eq!(name, kept);
    read_pit(&a, "g", id, &["read -P 0x55 4M 1M", "read -P 0 8M 64k"]);
    let newest = pit_ids(&a, "g").last().unwrap().0;
    read_pit(&a, "g", newest, &["read -P 0 4M 1M", "read -P 0x66 8M 64k"]);
    // Kept until released, through retention.
    for i in 0..4u64 {
        qemu_io(&b.url("d0"), &[&format!("write -P {} 12M 4k", 0x70 + i)]);
        sync_pit(&b, "g", &[]);
    }
    assert_eq!(pit_named_like(&a, "g", "split-brain-").0, id);
}

#[test]
fn split_brain_resolved_in_favour_of_the_old_primary() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = split_brain();
    let r = b.json(&["reverse", "g", "--discard-changes-on", "site-b"]);
    assert_eq!(r["split_brain"]["discarded_on"], "site-b", "{r}");
    // B is the replica again; its state kept as a PIT there.
    assert!(!volume_names(&b).contains(&"d0".to_string()));
    let (id, _) = pit_named_like(&b, "g", "split-brain-");
    read_pit(
        &b,
        "g",
        id,
        &[
            "read -P 0x66 8M 64k",
            "read -P 0 4M 1M",
            "read -P 0x11 0 1M",
        ],
    );
    // A carries on as the primary; its next cycle makes B equal to it.
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");
    let newest = pit_ids(&b, "g").last().unwrap().0;
    read_pit(&b, "g", newest, &["read -P 0x55 4M 1M", "read -P 0 8M 64k"]);
    let st = group_status(&a, "g");
    assert_eq!(u(&st, "isolated_bytes"), 0, "replicating again: {st}");
}
