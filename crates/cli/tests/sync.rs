//! Synchronous groups (issue 6): every acknowledged write survives the
//! primary's death (kill -9, then `failover run --force` at the replica),
//! and the replica is always a prefix of the write order; link loss with
//! `degrade` and `suspend-writes`; conversion between async and sync on a
//! live group.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::links::{cut_link, heal_link, proxied_pair};
use common::*;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// Blocks of the test volume (4 MiB).
const NBLOCKS: u64 = 1024;

/// Block written by stamp `i` (the same formula as in [`WRITER`]).
fn block_of(i: u64) -> u64 {
    (i.wrapping_mul(2_654_435_761)) % NBLOCKS
}

/// A QD1 writer: stamp i (1, 2, ...) goes to block_of(i) as a block whose
/// first 8 bytes are i; after each acknowledged write it appends i to the
/// acknowledgement file (flushed). It runs until killed or the connection
/// fails.
const WRITER: &str = r#"
import nbd, struct, sys, os
url, acks, nblocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(url)
f = open(acks, "w", buffering=1)
i = 0
try:
    while True:
        i += 1
        b = (i * 2654435761) % nblocks
        h.pwrite(struct.pack("<Q", i) + bytes(4088), b * 4096)
        f.write("%d\n" % i)
except Exception as e:
    sys.stderr.write("writer stopped at %d: %s\n" % (i, e))
"#;

/// Runs a python writer `script` against `url` with `file` (its record
/// or stop file).
fn spawn_writer(
    script: &str,
    url: &str,
    file: &std::path::Path,
    stdout: Stdio,
    stderr: Stdio,
) -> Child {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args([url, &file.display().to_string(), &NBLOCKS.to_string()])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("start the python writer")
}

fn start_writer(url: &str, acks: &std::path::Path) -> Child {
    spawn_writer(WRITER, url, acks, Stdio::null(), Stdio::piped())
}

fn acked(acks: &std::path::Path) -> u64 {
    std::fs::read_to_string(acks)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Reads every block's stamp from `url` (0 for a block never written).
const READER: &str = r#"
import nbd, struct, sys, json
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = int(sys.argv[2])
data = h.pread(n * 4096, 0)
print(json.dumps([struct.unpack_from("<Q", data, b * 4096)[0] for b in range(n)]))
"#;

/// Checks that `stamps` (per block) is the image after exactly the first k
/// writes for some k ≥ `acked`; returns k.
fn check_prefix(stamps: &[u64], acked: u64) -> u64 {
    let k = stamps.iter().copied().max().unwrap_or(0);
    assert!(
        k >= acked,
        "an acknowledged write is missing: the newest stamp on the replica is {k}, {acked} were acknowledged"
    );
    let mut expect = vec![0u64; NBLOCKS as usize];
    for i in 1..=k {
        expect[block_of(i) as usize] = i;
    }
    for (b, (&got, &want)) in stamps.iter().zip(&expect).enumerate() {
        assert_eq!(
            got, want,
            "block {b} holds stamp {got}, but the state after the first {k} writes has {want}: not a prefix of the write order"
        );
    }
    k
}

fn in_sync(site: &TestSite, group: &str) -> Value {
    wait_group(site, group, "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    })
}

/// A sync group of one 4 MiB volume, started and in sync.
fn sync_group(a: &TestSite, group: &str, volume: &str, extra: &[&str]) {
    a.create_volume(volume, "4M");
    let mut flags = vec!["--mode", "sync", "--compress", "none"];
    flags.extend_from_slice(extra);
    create_group(a, group, "site-b", &["--volume", volume], &flags);
    a.json(&["group", "start", group]);
    in_sync(a, group);
}

#[test]
fn every_acknowledged_write_survives_a_killed_primary() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let iterations: u64 = std::env::var("OFFSITE_SYNC_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut a, b) = group_pair();
    keep_listen_port(&a);
    let mut rng = seed();
    for it in 0..iterations {
        let (g, v) = (format!("g{it}"), format!("d{it}"));
        sync_group(&a, &g, &v, &[]);
        let acks = a.scratch().join(format!("acks-{it}"));
        let mut writer = start_writer(&a.url(&v), &acks);
        // Kill at a random moment once some writes were acknowledged.
        let want = 20 + next_rand(&mut rng) % 300;
        wait_until("writes acknowledged", GROUP_LIMIT, || acked(&acks) >= want);
        std::thread::sleep(Duration::from_millis(next_rand(&mut rng) % 50));
        a.kill9();
        let _ = writer.wait();
        let acked = acked(&acks);
        let r = b.json(&["failover", "run", &g, "--force"]);
        let url = r["volumes"][0]["url"].as_str().expect("url").to_string();
        let stamps: Vec<u64> =
            serde_json::from_value(python_json(READER, &[&url, &NBLOCKS.to_string()]))
                .expect("stamps");
        let k = check_prefix(&stamps, acked);
        eprintln!("iteration {it}: {acked} writes acknowledged, the replica holds the first {k}");
        a.start();
        // Tear the failed-over group down (both sides) for the next round.
        b.ok(&["group", "teardown", &g]);
    }
}

/// A QD1 writer of random blocks until `stop` exists; prints the number of
/// writes and the longest time one took (seconds) as JSON.
const TIMED_WRITER: &str = r#"
import nbd, os, sys, time, json, random
url, stop, nblocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(url)
n, worst = 0, 0.0
while not os.path.exists(stop):
    t = time.monotonic()
    h.pwrite(os.urandom(4096), random.randrange(nblocks) * 4096)
    worst = max(worst, time.monotonic() - t)
    n += 1
print(json.dumps({"writes": n, "max_latency": worst}))
"#;

fn start_timed_writer(url: &str, stop: &std::path::Path) -> Child {
    spawn_writer(TIMED_WRITER, url, stop, Stdio::piped(), Stdio::inherit())
}

fn verify_zero(a: &TestSite, group: &str) -> Value {
    let v = a.json(&["verify", group]);
    assert_eq!(v["differing_blocks"], 0, "{v}");
    v
}

#[test]
fn degrade_keeps_writing_through_a_lost_link_then_resynchronizes() {
    if !have_python_nbd() {
        return;
    }
    let (a, _b, proxy) = proxied_pair("sync_ack_timeout_secs = 1.0\n");
    sync_group(&a, "g", "d0", &[]);
    let stop = a.scratch().join("stop");
    let writer = start_timed_writer(&a.url("d0"), &stop);
    std::thread::sleep(Duration::from_secs(1));
    cut_link(&proxy);
    let st = wait_group(&a, "g", "degraded", GROUP_LIMIT, |s| {
        s["sync_state"] == "degraded" || s["sync_state"] == "resynchronizing"
    });
    assert_eq!(st["health"], "critical", "{st}");
    // The link stays down far longer than the detection timeout: a writer
    // that waited for the partner would stall that long.
    std::thread::sleep(Duration::from_secs(8));
    heal_link(&proxy);
    in_sync(&a, "g");
    std::fs::write(&stop, b"").expect("stop the writer");
    let out = writer.wait_with_output().expect("writer");
    let r: Value = serde_json::from_slice(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .as_bytes(),
    )
    .expect("writer JSON");
    eprintln!("writer: {r}");
    let worst = r["max_latency"].as_f64().expect("max_latency");
    // A liveness bound, not a performance figure: the link was down 8 s.
    assert!(
        worst < 6.0,
        "a write stalled {worst:.1}s with on-link-loss degrade (detection timeout 1 s)"
    );
    let events = events_about(&a, "g");
    assert!(
        events
            .iter()
            .any(|(k, m)| k == "group.sync" && m.contains("out of sync")),
        "{events:?}"
    );
    verify_zero(&a, "g");
}

/// A replica that stops answering without closing anything (SIGSTOP: a
/// hung machine) is detected by the acknowledgement deadline, not the
/// session's dead-peer timeout (20 s here): in `degrade` mode the write
/// completes and the status says degraded within the ack timeout (5 s),
/// never `in-sync` meanwhile — also when it stops while the stream opens.
#[test]
fn a_silent_replica_turns_a_degrade_group_degraded_within_the_ack_timeout() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    sync_group(&a, "g", "d0", &[]);
    let d: Value = serde_json::from_str(
        &std::fs::read_to_string(b.dir().join("run/daemon.json")).expect("daemon.json"),
    )
    .expect("daemon.json is JSON");
    let pid = d["pid"].as_u64().expect("pid");
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {pid}");
    };
    signal("-STOP");
    let t0 = std::time::Instant::now();
    qemu_io(&a.url("d0"), &["write -P 0x11 0 64k"]);
    let write = t0.elapsed();
    let st = wait_group(&a, "g", "degraded", Duration::from_secs(15), |s| {
        s["sync_state"] != "in-sync"
    });
    let seen = t0.elapsed();
    signal("-CONT");
    eprintln!(
        "write completed after {write:?}; status {} after {seen:?}",
        st["sync_state"]
    );
    assert_eq!(st["health"], "critical", "{st}");
    // Liveness bounds well under the 20 s dead-peer timeout.
    assert!(
        write < Duration::from_secs(12),
        "the write stalled {write:?}"
    );
    assert!(
        seen < Duration::from_secs(14),
        "status stayed in-sync {seen:?}"
    );
    in_sync(&a, "g");
    verify_zero(&a, "g");
}

#[test]
fn suspend_writes_fail_after_the_timeout_and_lose_nothing_acknowledged() {
    if !have_python_nbd() {
        return;
    }
    let (mut a, b, proxy) = proxied_pair("sync_ack_timeout_secs = 1.0\n");
    sync_group(
        &a,
        "g",
        "d0",
        &[
            "--on-link-loss",
            "suspend-writes",
            "--suspend-timeout",
            "2s",
        ],
    );
    let acks = a.scratch().join("acks");
    let mut writer = start_writer(&a.url("d0"), &acks);
    wait_until("writes acknowledged", GROUP_LIMIT, || acked(&acks) >= 50);
    cut_link(&proxy);
    // The writer's next write waits, then fails: it stops by itself.
    wait_until("the writer fails its write", GROUP_LIMIT, || {
        writer.try_wait().ok().flatten().is_some()
    });
    let out = writer.wait_with_output().expect("writer");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("writer stopped"), "{err}");
    let st = group_status(&a, "g");
    assert_eq!(st["sync_state"], "suspended", "{st}");
    let acked = acked(&acks);
    // The primary dies while the link is down: the replica has every
    // acknowledged write.
    a.kill9();
    let r = b.json(&["failover", "run", "g", "--force"]);
    let url = r["volumes"][0]["url"].as_str().expect("url").to_string();
    let stamps: Vec<u64> =
        serde_json::from_value(python_json(READER, &[&url, &NBLOCKS.to_string()])).expect("stamps");
    let k = check_prefix(&stamps, acked);
    eprintln!("{acked} writes acknowledged before the link was cut; the replica holds {k}");
    heal_link(&proxy);
}

#[test]
fn a_live_group_converts_async_to_sync_and_back_with_verify_zero() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    a.create_volume("d0", "8M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &["--rpo", "24h"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    verify_zero(&a, "g");

    let st = a.json(&["group", "set", "g", "--mode", "sync"]);
    assert_eq!(st["mode"], "sync", "{st}");
    in_sync(&a, "g");
    assert_eq!(group_status(&b, "g")["mode"], "sync");
    qemu_io(&a.url("d0"), &["write -P 0x22 1M 1M"]);
    // A named PIT in sync mode seals the replica's log: no data moves.
    let pit = sync_pit(&a, "g", &["--pit-name", "sealed"]);
    assert_eq!(pit["name"], "sealed", "{pit}");
    let pits = b.json(&["pit", "list", "g"]);
    assert!(
        pits.as_array()
            .expect("pits")
            .iter()
            .any(|p| p["name"] == "sealed"),
        "{pits}"
    );
    verify_zero(&a, "g");

    a.json(&["group", "set", "g", "--mode", "async"]);
    let st = group_status(&a, "g");
    assert_eq!(st["mode"], "async", "{st}");
    assert!(st["sync_state"].is_null(), "{st}");
    qemu_io(&a.url("d0"), &["write -P 0x33 2M 1M"]);
    sync_pit(&a, "g", &[]);
    verify_zero(&a, "g");
    // The PIT sealed in sync mode reads back what was written before it.
    let e = b.json(&["pit", "export", "g", "sealed"]);
    let url = e["volumes"][0]["url"].as_str().expect("url").to_string();
    offsite_testkit::qemu_io_ro(
        &url,
        &["read -P 0x11 0 1M", "read -P 0x22 1M 1M", "read -P 0 2M 1M"],
    );
}

#[test]
fn metro_latency_keeps_sync_correct() {
    if !have_python_nbd() {
        return;
    }
    use offsite_testkit::proxy::Direction;
    let (a, _b, proxy) = proxied_pair("sync_ack_timeout_secs = 1.0\n");
    sync_group(&a, "g", "d0", &[]);
    // The same writer through the same proxy without, then with, 2 ms each
    // way (a metro distance): a sync write should pay one round trip more,
    // not two (the figures go to docs/benchmarks.md; no timing assertion).
    for ms in [0, 2] {
        for dir in [Direction::ClientToServer, Direction::ServerToClient] {
            proxy.faults().set_latency(dir, Duration::from_millis(ms));
        }
        let stop = a.scratch().join(format!("stop-{ms}ms"));
        let writer = start_timed_writer(&a.url("d0"), &stop);
        std::thread::sleep(Duration::from_secs(3));
        std::fs::write(&stop, b"").expect("stop the writer");
        let out = writer.wait_with_output().expect("writer");
        let r: Value = serde_json::from_slice(&out.stdout).expect("writer's report");
        let writes = r["writes"].as_f64().unwrap_or(0.0);
        eprintln!(
            "QD1 writes over a {ms} ms (each way) link for 3 s: {writes} ({:.0} IOPS, {:.2} ms each, worst {:.1} ms)",
            writes / 3.0,
            3000.0 / writes.max(1.0),
            r["max_latency"].as_f64().unwrap_or(0.0) * 1000.0,
        );
        assert!(writes > 0.0, "no write completed over a {ms} ms link: {r}");
    }
    assert_eq!(group_status(&a, "g")["sync_state"], "in-sync");
    verify_zero(&a, "g");
}

#[test]
fn a_sync_group_fails_over_reverses_and_fails_back_unchanged() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    authorize_primary(&a, "site-b", None);
    sync_group(&a, "g", "d0", &[]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);

    // A test failover sees the newest acknowledged writes (the replica's
    // log is sealed into a PIT) while the stream goes on.
    let t = b.json(&["failover", "run", "g", "--test"]);
    let clone = t["volumes"][0]["url"].as_str().expect("url").to_string();
    offsite_testkit::qemu_io_ro(&clone, &["read -P 0x11 0 1M"]);
    b.json(&["failover", "stop-test", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x12 1M 1M"]);
    assert_eq!(group_status(&a, "g")["sync_state"], "in-sync");

    // Planned failover to B, writes at B, reverse: B is the sync primary.
    a.json(&["failover", "prepare", "g"]);
    let r = b.json(&["failover", "run", "g"]);
    let b0 = r["volumes"][0]["url"].as_str().expect("url").to_string();
    qemu_io(
        &b0,
        &[
            "read -P 0x11 0 1M",
            "read -P 0x12 1M 1M",
            "write -P 0x21 2M 1M",
        ],
    );
    b.json(&["reverse", "g"]);
    let st = in_sync(&b, "g");
    assert_eq!(st["mode"], "sync", "{st}");
    assert_eq!(st["role"], "primary", "{st}");
    qemu_io(&b0, &["write -P 0x22 3M 1M"]);
    verify_zero(&b, "g");

    // Failback: the same three commands from B's side.
    b.json(&["failover", "prepare", "g"]);
    let r = a.json(&["failover", "run", "g"]);
    let a0 = r["volumes"][0]["url"].as_str().expect("url").to_string();
    qemu_io(
        &a0,
        &[
            "read -P 0x11 0 1M",
            "read -P 0x12 1M 1M",
            "read -P 0x21 2M 1M",
            "read -P 0x22 3M 1M",
        ],
    );
    a.json(&["reverse", "g"]);
    let st = in_sync(&a, "g");
    assert_eq!(
        (st["role"].as_str(), st["mode"].as_str()),
        (Some("primary"), Some("sync"))
    );
    qemu_io(&a0, &["write -P 0x31 0 4k"]);
    verify_zero(&a, "g");
}

#[test]
fn the_replica_seals_its_log_at_its_bound_without_the_primary() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let body = format!("{FAST_REPLICATION}sync_log_max_bytes = 1048576\n");
    let mut a = TestSite::init(bin(), "site-a");
    set_replication_config(&a, &body);
    a.start();
    let mut b = TestSite::init(bin(), "site-b");
    set_replication_config(&b, &body);
    b.start();
    pair(&a, &b);
    authorize_primary(&b, "site-a", None);
    // RPO 24h: the primary never seals on its own during the test.
    sync_group(&a, "g", "d0", &["--rpo", "24h"]);
    let newest = |s: &TestSite| {
        s.json(&["pit", "list", "g"])
            .as_array()
            .expect("pits")
            .iter()
            .filter_map(|p| p["id"].as_u64())
            .max()
            .unwrap_or(0)
    };
    let before = newest(&b);
    // 3 MiB in 64 KiB writes: the 1 MiB log fills about three times.
    let cmds: Vec<String> = (0..48)
        .map(|i| format!("write -P {} {}k 64k", 0x40 + i % 16, i * 64))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&a.url("d0"), &cmds);
    let after = newest(&b);
    assert!(
        after >= before + 2,
        "the replica should have sealed its 1 MiB log at least twice (newest PIT {before} -> {after})"
    );
    verify_zero(&a, "g");
}
