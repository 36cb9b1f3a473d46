//! Crash safety of data and change tracking: `kill -9` of the daemon (idle
//! and under write load), clean restarts, and lost or corrupt tracking files.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, qemu_io};

const BS: u64 = 4096;
const EXTENT: u64 = 4 << 20;

/// Writes spread over every 4 MiB extent of a 256 MiB volume: `(offset,
/// length, pattern)`, some unaligned, some straddling extent boundaries.
fn spread_writes() -> Vec<(u64, u64, u8)> {
    let mut w = Vec::new();
    for e in 0..64u64 {
        let off = e * EXTENT + ((e * 13) % 1000) * BS + (e % 3) * 100;
        let len = BS * (1 + e % 4) + (e % 2) * 333;
        w.push((off, len, (e + 1) as u8));
    }
    // Across the boundaries between extents 10|11 and 40|41.
    w.push((11 * EXTENT - 6000, 12_000, 0xc1));
    w.push((41 * EXTENT - BS, 2 * BS, 0xc2));
    w
}

fn blocks(writes: &[(u64, u64, u8)]) -> BTreeSet<u64> {
    writes
        .iter()
        .flat_map(|&(o, l, _)| blocks_of(o, l, BS))
        .collect()
}

fn extents(blocks: &BTreeSet<u64>) -> BTreeSet<u64> {
    blocks.iter().map(|b| b * BS / EXTENT).collect()
}

fn write_all(url: &str, writes: &[(u64, u64, u8)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect();
    qemu_io(url, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
}

fn verify_all(url: &str, writes: &[(u64, u64, u8)]) {
    let cmds: Vec<String> = writes
        .iter()
        .map(|(o, l, p)| format!("read -P {p} {o} {l}"))
        .collect();
    qemu_io(url, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
}

fn event_kinds(site: &TestSite, subject: &str) -> Vec<String> {
    events_about(site, subject)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn kill9_keeps_acknowledged_writes_and_their_dirty_blocks() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let mut site = site("a");
    let url = site.create_volume("v", "256M");
    let writes = spread_writes();
    write_all(&url, &writes);
    let written = blocks(&writes);
    let touched = extents(&written);
    assert_eq!(touched.len(), 64, "the writes should touch every extent");
    assert_eq!(
        site.dirty_bytes("v"),
        written.len() as u64 * BS,
        "dirty before the crash is exact"
    );

    site.kill9();
    site.start();
    let dirty = site.dirty_bytes("v");
    assert!(
        dirty >= written.len() as u64 * BS,
        "after kill -9, dirty_bytes {dirty} < {} bytes of written blocks: acknowledged writes were lost from tracking",
        written.len() as u64 * BS
    );
    assert!(
        dirty <= touched.len() as u64 * EXTENT,
        "after kill -9, dirty_bytes {dirty} exceeds the {} touched extents: recovery should not dirty the whole volume",
        touched.len()
    );
    verify_all(&site.url("v"), &writes);
    assert!(
        event_kinds(&site, "v").contains(&"volume.cbt-recovered".to_string()),
        "no volume.cbt-recovered event: {:?}",
        events_about(&site, "v")
    );
    assert!(
        site.log().contains("stopped uncleanly"),
        "the log should report the recovery:\n{}",
        site.log()
    );

    // A second crash right after recovery loses nothing: recovery made its
    // result durable, so the next open is exact.
    site.kill9();
    site.start();
    assert_eq!(
        site.dirty_bytes("v"),
        dirty,
        "dirty_bytes changed across a second kill -9 after recovery"
    );
    verify_all(&site.url("v"), &writes);
}

#[test]
fn clean_stop_preserves_dirty_bytes_exactly() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let mut site = site("a");
    let url = site.create_volume("v", "256M");
    let writes = spread_writes();
    write_all(&url, &writes);
    let before = site.dirty_bytes("v");
    assert_eq!(before, blocks(&writes).len() as u64 * BS);

    assert_eq!(site.stop(), Some(0), "clean stop:\n{}", site.log());
    site.start();
    assert_eq!(
        site.dirty_bytes("v"),
        before,
        "a clean restart must preserve dirty_bytes exactly"
    );
    let kinds = event_kinds(&site, "v");
    assert!(
        !kinds
            .iter()
            .any(|k| k == "volume.cbt-recovered" || k == "volume.cbt-reset"),
        "a clean restart reported a recovery: {kinds:?}"
    );
    verify_all(&site.url("v"), &writes);

    // Again after clear-dirty: an empty set stays empty.
    site.ok(&["volume", "clear-dirty", "v"]);
    assert_eq!(site.stop(), Some(0));
    site.start();
    assert_eq!(
        site.dirty_bytes("v"),
        0,
        "clear-dirty did not survive a clean restart"
    );
}

/// Holds an NBD connection (after one write) until stdin closes.
const HOLD_CONNECTION: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x5c" * 8192, 40 << 20)
print("connected", flush=True)
sys.stdin.read()
"#;

#[test]
fn sigterm_with_a_connected_client_still_preserves_dirty_bytes_exactly() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let mut site = site("a");
    let url = site.create_volume("v", "64M");
    qemu_io(&url, &["write -P 0x12 0 64k", "write -P 0x13 20M 4k"]);
    let mut holder = KillOnDrop(Some(
        Command::new(PYTHON)
            .args(["-c", HOLD_CONNECTION, &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python"),
    ));
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.child().stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "connected",
        "the python NBD client did not connect"
    );
    let before = site.dirty_bytes("v");
    assert_eq!(before, 65536 + 4096 + 8192);

    assert_eq!(
        site.stop(),
        Some(0),
        "SIGTERM with a connected client should still exit 0:\n{}",
        site.log()
    );
    drop(holder);
    site.start();
    assert_eq!(
        site.dirty_bytes("v"),
        before,
        "dirty_bytes changed across a clean stop with a connected client"
    );
    let kinds = event_kinds(&site, "v");
    assert!(
        !kinds
            .iter()
            .any(|k| k == "volume.cbt-recovered" || k == "volume.cbt-reset"),
        "a clean stop with a connected client was treated as a crash: {kinds:?}"
    );
    qemu_io(
        &site.url("v"),
        &[
            "read -P 0x12 0 64k",
            "read -P 0x13 20M 4k",
            "read -P 0x5c 40M 8k",
        ],
    );
}

/// Writes block after block, each with a value naming its pass and
/// index, and appends "pass index" to the ack file only after the server
/// acknowledged the write; loops over the volume until the first error
/// (the daemon was killed).
const ACKED_WRITER: &str = r#"
import itertools, nbd, struct, sys
url, ackfile = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(url)
nblocks = h.get_size() // 4096
with open(ackfile, "w") as acks:
    for gen in itertools.count(1):
        for i in range(nblocks):
            off = (i * 7919 % nblocks) * 4096
            try:
                h.pwrite(struct.pack("<QQ", gen, i) * 256, off)
            except nbd.Error as e:
                print("stopped:", e.string, flush=True)
                sys.exit(0)
            acks.write(f"{gen} {i}\n")
            acks.flush()
"#;

/// Checks every block against the ack file: an acknowledged block holds
/// its last acknowledged value; only the one write in flight at the crash
/// (the next in sequence) may hold either value. Prints JSON.
const ACKED_VERIFIER: &str = r#"
import json, nbd, struct, sys
url, ackfile = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.connect_uri(url)
nblocks = h.get_size() // 4096
last = {}
gen = i = 0
for line in open(ackfile):
    if line.strip():
        gen, i = map(int, line.split())
        last[i] = gen
inflight = (gen, i + 1) if i + 1 < nblocks else (gen + 1, 0)
if not last:
    inflight = (1, 0)
bad = []
for j in range(nblocks):
    data = bytes(h.pread(4096, (j * 7919 % nblocks) * 4096))
    want = [struct.pack("<QQ", last[j], j) * 256] if j in last else [bytes(4096)]
    if j == inflight[1]:
        want.append(struct.pack("<QQ", inflight[0], j) * 256)
    if data not in want:
        bad.append(j)
print(json.dumps({"acked_blocks": len(last), "bad": bad[:20], "nbad": len(bad)}))
"#;

fn count_lines(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn kill9_during_write_load_recovers() {
    if !have_tools(&["fio", "qemu-io"]) || !have_python_nbd() {
        return;
    }
    let mut site = site("a");
    let load_url = site.create_volume("load", "64M");
    let acked_url = site.create_volume("acked", "16M");
    let fio_out = scratch_file(&site, "fio.out");
    let ackfile = scratch_file(&site, "acks");

    let mut fio = KillOnDrop(Some(
        Command::new("fio")
            .args([
                "--name=load",
                "--ioengine=nbd",
                &format!("--uri={load_url}"),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=8",
                "--size=64M",
                "--time_based",
                "--runtime=30",
                &format!("--output={}", fio_out.display()),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fio"),
    ));
    let mut writer = KillOnDrop(Some(
        Command::new(PYTHON)
            .args(["-c", ACKED_WRITER, &acked_url, ackfile.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn python writer"),
    ));
    // Kill once both clients are demonstrably writing.
    wait_until(
        "fio to write and the acked writer to ack 200 writes",
        Duration::from_secs(30),
        || count_lines(&ackfile) >= 200 && site.dirty_bytes("load") >= 1 << 20,
    );
    site.kill9();

    // Both clients end on the lost connection (fio is stopped here if it
    // keeps waiting for its runtime; its exit status is not the subject).
    let w = writer.take().wait_with_output().unwrap();
    let w_out = format!(
        "{}{}",
        String::from_utf8_lossy(&w.stdout),
        String::from_utf8_lossy(&w.stderr)
    );
    assert!(
        w.status.success() && w_out.contains("stopped:"),
        "the acked writer should stop on the lost connection: {w_out}"
    );
    let fio_child = fio.child();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while fio_child.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(fio);

    site.start();
    let load = site.json(&["volume", "show", "load"]);
    assert_eq!(
        load["state"], "ready",
        "volume show after the crash: {load}"
    );
    assert!(
        load["dirty_bytes"].as_u64().unwrap() > 0,
        "the written volume lost its dirty set: {load}"
    );
    assert!(
        site.log().contains("stopped uncleanly"),
        "the log should report the recovery:\n{}",
        site.log()
    );
    assert!(
        event_kinds(&site, "load").contains(&"volume.cbt-recovered".to_string()),
        "no recovery event for load: {:?}",
        events_about(&site, "load")
    );

    let r = python_json(
        ACKED_VERIFIER,
        &[&site.url("acked"), ackfile.to_str().unwrap()],
    );
    let acked = r["acked_blocks"].as_u64().unwrap();
    let dirty = site.dirty_bytes("acked");
    eprintln!(
        "kill -9 under load: {acked} acknowledged blocks, acked volume dirty {dirty}, load volume {load}"
    );
    assert!(
        dirty >= acked * BS,
        "{acked} acknowledged 4K blocks but only {dirty} dirty bytes after kill -9"
    );
    assert!(acked >= 200, "{r}");
    assert_eq!(
        r["bad"],
        serde_json::json!([]),
        "acknowledged writes lost or torn by kill -9: {r}"
    );

    // The restarted daemon serves both volumes normally.
    qemu_io(
        &site.url("load"),
        &["write -P 0x77 0 64k", "read -P 0x77 0 64k"],
    );
}

/// Creates v (16M, id 1) and w (8M, id 2), writes to both, stops cleanly,
/// applies `damage` to the volumes directory and restarts: v must be wholly
/// dirty (with a log line and an event), w untouched.
fn lost_tracking_state(damage: impl FnOnce(&std::path::Path)) {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let mut site = site("a");
    let v = site.create_volume("v", "16M");
    let w = site.create_volume("w", "8M");
    qemu_io(&v, &["write -P 0x61 0 64k", "write -P 0x62 9M 4k"]);
    qemu_io(&w, &["write -P 0x63 1M 8k"]);
    let w_dirty = site.dirty_bytes("w");
    assert_eq!(w_dirty, 8192);
    assert_eq!(site.stop(), Some(0));

    let vols = site.dir().join("volumes");
    let size = |p: &str| {
        std::fs::metadata(vols.join(p))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    assert_eq!(
        size("1.img"),
        16 << 20,
        "expected v's data file at volumes/1.img"
    );
    assert_eq!(
        size("2.img"),
        8 << 20,
        "expected w's data file at volumes/2.img"
    );
    assert!(
        vols.join("1.cbt").exists() && vols.join("1.al").exists(),
        "v's tracking files are missing before the damage"
    );
    damage(&vols);

    site.start();
    let sv = site.json(&["volume", "show", "v"]);
    assert_eq!(
        sv["dirty_bytes"], sv["size_bytes"],
        "lost tracking state must make the whole volume dirty: {sv}"
    );
    assert_eq!(
        site.dirty_bytes("w"),
        w_dirty,
        "the undamaged volume's dirty set changed"
    );
    let ev = events_about(&site, "v");
    assert!(
        ev.iter()
            .any(|(k, m)| k == "volume.cbt-reset" && m.contains("whole volume")),
        "events should say v's tracking state was lost: {ev:?}"
    );
    assert!(
        site.log().contains("whole volume"),
        "the log should say v is wholly dirty:\n{}",
        site.log()
    );
    // Data is unaffected and the volume keeps working.
    qemu_io(
        &site.url("v"),
        &[
            "read -P 0x61 0 64k",
            "read -P 0x62 9M 4k",
            "write -P 0x64 12M 4k",
        ],
    );
    assert_eq!(site.dirty_bytes("v"), 16 << 20);

    // The reset is durable: a clean restart keeps the whole volume dirty.
    assert_eq!(site.stop(), Some(0));
    site.start();
    assert_eq!(
        site.dirty_bytes("v"),
        16 << 20,
        "the whole-volume reset did not survive a clean restart"
    );
}

#[test]
fn missing_bitmap_file_makes_whole_volume_dirty() {
    lost_tracking_state(|vols| std::fs::remove_file(vols.join("1.cbt")).unwrap());
}

#[test]
fn corrupt_bitmap_file_makes_whole_volume_dirty() {
    lost_tracking_state(|vols| {
        let p = vols.join("1.cbt");
        let mut b = std::fs::read(&p).unwrap();
        let mid = b.len() / 2;
        b[mid] ^= 0xff;
        std::fs::write(&p, b).unwrap();
    });
}

#[test]
fn missing_activity_log_makes_whole_volume_dirty() {
    lost_tracking_state(|vols| std::fs::remove_file(vols.join("1.al")).unwrap());
}

#[test]
fn truncated_activity_log_makes_whole_volume_dirty() {
    lost_tracking_state(|vols| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(vols.join("1.al"))
            .unwrap();
        f.set_len(100).unwrap();
    });
}

#[test]
fn missing_both_tracking_files_makes_whole_volume_dirty() {
    lost_tracking_state(|vols| {
        std::fs::remove_file(vols.join("1.cbt")).unwrap();
        std::fs::remove_file(vols.join("1.al")).unwrap();
    });
}
