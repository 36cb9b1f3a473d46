//! Crash loops of a continuous group's journal (issue 19): a stamp writer
//! runs across two volumes (each stamp flushed before the next, so its
//! acknowledgements give the write order) while either site is killed
//! with SIGKILL in every phase of streaming — *queue* (streaming under
//! steady writes), *spill* (a slow link overflows the 1 MiB queue: killed
//! while spilled or resynchronizing), *resync* (killed during catch-up
//! cycles after a lost link), *checkpoint* (checkpoints every 100 ms,
//! killed right after one arrived) and *fold* (seals, `--keep 1` and a
//! 1 MiB journal bound fold history into PITs and prune it) — then
//! restarted. After each restart:
//!
//! - every checkpoint the replica listed before the kill is listed still,
//!   with the same time (outside the fold run, where nothing is pruned);
//! - the newest checkpoint from before the kill, the newest one now and
//!   five more at random read back (`pit export --at` their time) as
//!   exactly a prefix of the write order across both volumes, never
//!   beyond what was written, and later ones never hold fewer stamps;
//! - the group returns to `streaming`.
//!
//! At the end `verify` finds no differing block.
//!
//! Each (phase, side) pair gets `OFFSITE_JOURNAL_CRASH_ITERATIONS` kills
//! (default 1), in an order and with delays drawn from the seed printed
//! at the start (`OFFSITE_TEST_SEED` replays a run);
//! `OFFSITE_JOURNAL_CRASH_PHASES=queue,spill` restricts the run to some
//! phases. The issue's 20 kills per phase and side:
//!
//! ```sh
//! OFFSITE_JOURNAL_CRASH_ITERATIONS=20 \
//!     cargo test -p offsite-cli --test journal_crash_loops -- --nocapture
//! ```

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::links::{cut_link, heal_link, proxied_pair};
use common::*;
use offsite_testkit::TestSite;
use offsite_testkit::proxy::{Direction, FaultProxy};
use serde_json::Value;

/// Kills per phase and side by default (the suite's run).
const DEFAULT_ITERATIONS: u64 = 1;

/// Size of each volume; the stamps go round a ring of both volumes'
/// 4 KiB blocks, so the writer can run for as long as the test does.
const VOLUME_BYTES: u64 = 4 << 20;
const BLOCK: u64 = 4096;
/// Slots of the ring: stamp i goes to slot i % SLOTS, which is block
/// (slot / 2) of volume (slot % 2).
const SLOTS: u64 = 2 * VOLUME_BYTES / BLOCK;

/// When a site is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Streaming under steady writes.
    Queue,
    /// Spilled (or resynchronizing after the spill) behind a slow link.
    Spill,
    /// Catch-up cycles after a lost link.
    Resync,
    /// Right after a checkpoint arrived, at 100 ms intervals.
    Checkpoint,
    /// While seals commit and retention and pruning fold the history.
    Fold,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Queue => "queue",
            Phase::Spill => "spill",
            Phase::Resync => "resync",
            Phase::Checkpoint => "checkpoint",
            Phase::Fold => "fold",
        }
    }
}

/// Which site is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Primary,
    Replica,
}

fn iterations() -> u64 {
    match std::env::var("OFFSITE_JOURNAL_CRASH_ITERATIONS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("OFFSITE_JOURNAL_CRASH_ITERATIONS={v:?} is not a number")),
        Err(_) => DEFAULT_ITERATIONS,
    }
}

/// Whether `OFFSITE_JOURNAL_CRASH_PHASES` (comma-separated names; unset:
/// every phase) selects `phase`.
fn selected(phase: Phase) -> bool {
    std::env::var("OFFSITE_JOURNAL_CRASH_PHASES")
        .map(|v| v.split(',').any(|p| p.trim() == phase.name()))
        .unwrap_or(true)
}

/// Writer: from stamp `start` on, forever, stamp i (stored as i+1, so a
/// stamp is never a zero block) goes to slot i % slots, flushed before
/// the next write; prints each stamp once its flush returned.
const STAMP_WRITER: &str = r#"
import struct, sys, time, nbd
hs = []
for url in sys.argv[1:3]:
    h = nbd.NBD()
    h.connect_uri(url)
    hs.append(h)
i = int(sys.argv[3])
slots = int(sys.argv[4])
while True:
    s = i % slots
    h = hs[s % 2]
    h.pwrite(struct.pack('<Q', i + 1) * 512, (s // 2) * 4096)
    h.flush()
    print(i, flush=True)
    i += 1
    time.sleep(0.01)
"#;

/// Reader: every 4 KiB block of both volumes (`size` bytes each), as a
/// JSON list per volume: 0 for a zero block, the 8-byte word repeated
/// over the block, or -1 when the block is not one word repeated.
const STAMP_READER: &str = r#"
import json, struct, sys, nbd
size = int(sys.argv[3])
out = []
for url in sys.argv[1:3]:
    h = nbd.NBD()
    h.connect_uri(url)
    vals = []
    for off in range(0, size, 1 << 20):
        d = h.pread(min(1 << 20, size - off), off)
        for b in range(0, len(d), 4096):
            blk = d[b:b + 4096]
            w = blk[:8]
            if blk == bytes(4096):
                vals.append(0)
            elif blk == w * 512:
                vals.append(struct.unpack('<Q', w)[0])
            else:
                vals.append(-1)
    h.shutdown()
    out.append(vals)
print(json.dumps(out))
"#;

/// The value slot `slot` holds in the image of the first `k` stamps.
fn expected_in_slot(slot: u64, k: u64) -> i64 {
    if k <= slot {
        0
    } else {
        (slot + SLOTS * ((k - 1 - slot) / SLOTS) + 1) as i64
    }
}

/// The number of stamps in the image served at `urls` (vol0, vol1),
/// after checking it is exactly the image of the first k stamps of the
/// write order, with k at most `written` (stamps started so far).
fn prefix_of(urls: [&str; 2], written: u64, what: &str) -> u64 {
    let found = python_json(STAMP_READER, &[urls[0], urls[1], &VOLUME_BYTES.to_string()]);
    let vols: Vec<Vec<i64>> = found
        .as_array()
        .expect("two volumes")
        .iter()
        .map(|v| {
            v.as_array()
                .expect("blocks")
                .iter()
                .map(|x| x.as_i64().expect("a block's value"))
                .collect()
        })
        .collect();
    let value = |slot: u64| vols[(slot % 2) as usize][(slot / 2) as usize];
    // The newest stamp in the image names the prefix it must be.
    let k = (0..SLOTS).map(value).max().unwrap_or(0).max(0) as u64;
    assert!(
        k <= written,
        "{what} holds stamp {} but only {written} were written",
        k.saturating_sub(1)
    );
    let wrong: Vec<(u64, i64, i64)> = (0..SLOTS)
        .filter(|&s| value(s) != expected_in_slot(s, k))
        .map(|s| (s, value(s), expected_in_slot(s, k)))
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "{what} is not a prefix of the write order: its newest stamp is {}, but \
         (slot, value, expected) {wrong:?} (value -1: torn)",
        k.saturating_sub(1)
    );
    k
}

/// The stamp writer, running.
struct Writer {
    child: KillOnDrop,
    /// Stamps acknowledged: 0..acked; stamp `acked` may be in flight.
    acked: Arc<AtomicU64>,
    /// Where its stderr goes (why it stopped, if it did).
    stderr: std::path::PathBuf,
    lines: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn spawn(a: &TestSite, start: u64) -> Writer {
        let stderr = a.scratch().join(format!("writer-{start}.err"));
        let mut child = KillOnDrop(Some(
            Command::new(PYTHON)
                .arg("-c")
                .arg(STAMP_WRITER)
                .args([
                    a.url("vol0"),
                    a.url("vol1"),
                    start.to_string(),
                    SLOTS.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&stderr).expect("the writer's stderr file"))
                .spawn()
                .expect("spawn the stamp writer"),
        ));
        let acked = Arc::new(AtomicU64::new(start));
        let stdout = child.child().stdout.take().expect("writer's stdout");
        let counter = acked.clone();
        let lines = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let stamp: u64 = line.trim().parse().expect("a stamp");
                counter.store(stamp + 1, Ordering::SeqCst);
            }
        });
        Writer {
            child,
            stderr,
            acked,
            lines: Some(lines),
        }
    }

    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    /// Whether the writer still runs (only the primary's death may stop
    /// it: a continuous group's writes never fail for the replica).
    fn running(&mut self) -> bool {
        self.child
            .child()
            .try_wait()
            .expect("wait for the writer")
            .is_none()
    }

    /// Stops the writer (if the primary's death has not already); returns
    /// the stamps acknowledged.
    fn stop(mut self) -> u64 {
        if let Some(mut c) = self.child.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(t) = self.lines.take() {
            t.join().expect("writer's reader thread");
        }
        self.acked()
    }
}

/// A checkpoint as listed: (id, time_ns).
type Cp = (u64, u64);

fn checkpoints(b: &TestSite) -> Vec<Cp> {
    b.json(&["pit", "list", "g", "--checkpoints", "--all"])["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|c| (u(c, "id"), u(c, "time_ns")))
        .collect()
}

/// The running test: both sites, the proxy, the writer and the seed.
struct Rig {
    a: TestSite,
    b: TestSite,
    proxy: FaultProxy,
    writer: Option<Writer>,
    rng: u64,
    /// Whether history may be pruned (the fold run).
    pruning: bool,
}

impl Rig {
    fn new(group_flags: &[&str], pruning: bool) -> Rig {
        // A 1 MiB queue: a slow link spills within seconds of the writer's
        // ~400 KiB/s; a lost link is declared after 5 s without an
        // acknowledgement.
        let (a, b, proxy) = proxied_pair(&format!(
            "sync_ack_timeout_secs = 5.0\ncontinuous_queue_bytes = {}\n",
            1 << 20
        ));
        a.create_volume("vol0", &VOLUME_BYTES.to_string());
        a.create_volume("vol1", &VOLUME_BYTES.to_string());
        let mut flags = vec!["--mode", "continuous", "--compress", "none"];
        flags.extend_from_slice(group_flags);
        create_group(
            &a,
            "g",
            "site-b",
            &["--volume", "vol0", "--volume", "vol1"],
            &flags,
        );
        a.json(&["group", "start", "g"]);
        wait_streaming(&a);
        let writer = Some(Writer::spawn(&a, 0));
        wait_until("the first checkpoint", GROUP_LIMIT, || {
            newest_id(&b).is_some()
        });
        Rig {
            a,
            b,
            proxy,
            writer,
            rng: seed(),
            pruning,
        }
    }

    fn rand(&mut self, below: u64) -> u64 {
        next_rand(&mut self.rng) % below
    }

    fn sleep_upto(&mut self, ms: u64) -> Duration {
        let d = Duration::from_millis(self.rand(ms + 1));
        std::thread::sleep(d);
        d
    }

    fn acked(&self) -> u64 {
        self.writer.as_ref().expect("writer running").acked()
    }

    /// Waits for `n` more acknowledged stamps (the writer is making
    /// progress: the group's writes never wait for the replica).
    fn writes_go_on(&self, n: u64, what: &str) {
        let from = self.acked();
        wait_until(what, GROUP_LIMIT, || self.acked() >= from + n);
    }

    /// Brings the group into `phase`; returns what was seen, the
    /// replica's checkpoints if listing them was how the phase was
    /// noticed, and the bound of the random delay before the kill.
    fn enter(&mut self, phase: Phase) -> (String, Option<Vec<Cp>>, u64) {
        match phase {
            Phase::Queue => {
                self.writes_go_on(20, "writes while streaming");
                ("streaming".into(), None, 1500)
            }
            Phase::Spill => {
                self.proxy
                    .faults()
                    .set_bandwidth(Direction::ClientToServer, Some(64 << 10));
                // A spill, or a lost link when a keepalive queued behind
                // the throttled bytes timed out first: the stream stopped.
                let st = wait_group(&self.a, "g", "spilled", GROUP_LIMIT, |s| {
                    s["sync_state"] != "streaming"
                });
                (st["sync_state"].to_string(), None, 1500)
            }
            Phase::Resync => {
                cut_link(&self.proxy);
                wait_group(&self.a, "g", "the lost link noticed", GROUP_LIMIT, |s| {
                    s["sync_state"] != "streaming"
                });
                self.writes_go_on(50, "writes while the link is down");
                heal_link(&self.proxy);
                // Slow enough that catch-up cycles last (the writer outruns
                // the link), so the kill lands in one.
                self.proxy
                    .faults()
                    .set_bandwidth(Direction::ClientToServer, Some(256 << 10));
                let st = wait_group(&self.a, "g", "resynchronizing", GROUP_LIMIT, |s| {
                    s["sync_state"] == "resynchronizing" || s["sync_state"] == "streaming"
                });
                (st["sync_state"].to_string(), None, 1500)
            }
            Phase::Checkpoint => {
                // The listing that first shows a new checkpoint is the
                // acknowledged set; the kill follows within an interval.
                let newest = newest_id(&self.b);
                let mut listed = Vec::new();
                wait_until("a new checkpoint", GROUP_LIMIT, || {
                    listed = checkpoints(&self.b);
                    listed.last().map(|c| c.0) > newest
                });
                ("a new checkpoint".into(), Some(listed), 100)
            }
            Phase::Fold => {
                let n = 1 + self.rand(3);
                for _ in 0..n {
                    self.a.json(&["sync", "g", "--no-wait"]);
                    std::thread::sleep(Duration::from_millis(50));
                }
                (format!("{n} seal(s)"), None, 700)
            }
        }
    }

    /// One iteration: `side` killed in `phase`, restarted, checked.
    fn crash(&mut self, round: u64, phase: Phase, side: Side) {
        if phase == Phase::Checkpoint {
            self.a
                .json(&["group", "set", "g", "--checkpoint-interval", "100ms"]);
        }
        let (seen, listed, delay_ms) = self.enter(phase);
        // What the replica lists right before the kill: acknowledged.
        let before = listed.unwrap_or_else(|| checkpoints(&self.b));
        let moment = format!("{seen} + {:?}", self.sleep_upto(delay_ms));
        match side {
            Side::Primary => {
                self.a.kill9();
                let acked = self.writer.take().expect("writer").stop();
                heal_link(&self.proxy);
                self.a.start();
                // The stamp in flight at the kill is written again, with
                // the same value at the same place.
                self.writer = Some(Writer::spawn(&self.a, acked));
            }
            Side::Replica => {
                self.b.kill9();
                heal_link(&self.proxy);
                self.b.start();
            }
        }
        let what = format!(
            "round {round} ({} killed in {}, {moment})",
            side_name(side),
            phase.name()
        );
        let st = wait_streaming(&self.a);
        // Streaming again, checkpoints resume (none are taken out of
        // sync): the check covers one taken after the crash too.
        let newest_before = before.last().map(|c| c.0);
        wait_until("a checkpoint after the restart", GROUP_LIMIT, || {
            newest_id(&self.b) > newest_before
        });
        if self.pruning {
            // Pruning may have left only that one: a few more to read.
            let first = newest_id(&self.b);
            wait_until("checkpoints after the restart", GROUP_LIMIT, || {
                newest_id(&self.b) >= first.map(|id| id + 3)
            });
        }
        let (listed, sampled, k) = self.check(&before, &what);
        if phase == Phase::Checkpoint {
            self.a
                .json(&["group", "set", "g", "--checkpoint-interval", "1s"]);
        }
        let writer = self.writer.as_mut().expect("writer");
        if !writer.running() {
            let err = std::fs::read_to_string(&writer.stderr).unwrap_or_default();
            panic!("{what}: the stamp writer stopped: {err}");
        }
        eprintln!(
            "{what}: {listed} checkpoints listed ({} before), {sampled} read back as prefixes \
             (the newest holds {k} of {} stamps); back to streaming, lag {}",
            before.len(),
            self.acked(),
            st["continuous_lag_seconds"]
        );
    }

    /// The checks after a restart: returns (checkpoints listed, read
    /// back, stamps in the newest).
    fn check(&mut self, before: &[Cp], what: &str) -> (usize, usize, u64) {
        let after = checkpoints(&self.b);
        if !self.pruning {
            let lost: Vec<&Cp> = before.iter().filter(|c| !after.contains(c)).collect();
            assert!(
                lost.is_empty(),
                "{what}: acknowledged checkpoints (id, time_ns) {lost:?} are no longer listed; \
                 listed now: {} from {:?} to {:?}",
                after.len(),
                after.first(),
                after.last()
            );
        } else {
            // Pruned ones are gone; a kept one keeps its time.
            for c in &after {
                if let Some(old) = before.iter().find(|o| o.0 == c.0) {
                    assert_eq!(old, c, "{what}: a checkpoint changed its time");
                }
            }
        }
        assert!(!after.is_empty(), "{what}: no checkpoint listed");
        // The newest before the kill, the newest now, five at random.
        let mut sample: Vec<Cp> = vec![*after.last().unwrap()];
        if let Some(c) = before.last().filter(|c| after.contains(c)) {
            sample.push(*c);
        }
        for _ in 0..5 {
            let i = self.rand(after.len() as u64) as usize;
            sample.push(after[i]);
        }
        sample.sort_unstable_by_key(|c| c.1);
        sample.dedup();
        let mut last = 0;
        let mut newest = 0;
        for (id, time_ns) in &sample {
            let when = rfc3339_ns(*time_ns);
            let written = self.acked() + 1;
            let out = self.b.run(&["pit", "export", "g", "--at", &when, "--json"]);
            if !out.status.success() && self.pruning {
                // Pruned since it was listed (seals go on).
                let now = checkpoints(&self.b);
                assert!(
                    !now.iter().any(|c| c.0 == *id),
                    "{what}: pit export --at {when} failed for listed checkpoint {id}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                continue;
            }
            assert!(
                out.status.success(),
                "{what}: pit export --at {when} (checkpoint {id}) failed: {}\nreplica log:\n{}",
                String::from_utf8_lossy(&out.stderr),
                tail(&self.b.log(), 30)
            );
            let e: Value = serde_json::from_slice(&out.stdout).expect("pit export --json");
            let point = &e["point"];
            // The newest point at or before the time: this checkpoint, or
            // a PIT sealed after it (later in the write order).
            if point["kind"] == "checkpoint" && !self.pruning {
                assert_eq!(u(point, "id"), *id, "{what}: the checkpoint at {when}: {e}");
            }
            let k = prefix_of(
                [&served_url(&e, "vol0"), &served_url(&e, "vol1")],
                written,
                &format!("{what}: {} {} (at {when})", point["kind"], point["id"]),
            );
            assert!(
                k >= last,
                "{what}: {} {} at {when} holds {k} stamps, an earlier point {last}",
                point["kind"],
                point["id"]
            );
            last = k;
            newest = k;
        }
        (after.len(), sample.len(), newest)
    }

    /// The end: the writer stopped, the group streams with nothing
    /// outstanding, and the replica is equal.
    fn finish(mut self) {
        let acked = self.writer.take().expect("writer").stop();
        wait_group(&self.a, "g", "streaming, lag 0", GROUP_LIMIT, |s| {
            s["sync_state"] == "streaming" && s["continuous_lag_seconds"].as_f64() == Some(0.0)
        });
        let v = verify_clean(&self.a, "g");
        eprintln!("{acked} stamps written; verify: {v}");
        drop(self.proxy);
    }
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Primary => "primary",
        Side::Replica => "replica",
    }
}

/// The id of the newest checkpoint the replica lists, if any.
fn newest_id(b: &TestSite) -> Option<u64> {
    b.json(&["pit", "list", "g", "--checkpoints"])["newest"]["id"].as_u64()
}

fn wait_streaming(a: &TestSite) -> Value {
    wait_group(a, "g", "streaming", GROUP_LIMIT, |s| {
        s["sync_state"] == "streaming"
    })
}

/// Every (phase, side) pair `iterations()` times, in an order drawn from
/// the rig's seed.
fn schedule(rig: &mut Rig, phases: &[Phase]) -> Vec<(Phase, Side)> {
    let mut runs = Vec::new();
    for &p in phases.iter().filter(|p| selected(**p)) {
        for _ in 0..iterations() {
            runs.push((p, Side::Primary));
            runs.push((p, Side::Replica));
        }
    }
    for i in (1..runs.len()).rev() {
        let j = rig.rand(i as u64 + 1) as usize;
        runs.swap(i, j);
    }
    runs
}

#[test]
fn either_site_killed_in_every_streaming_phase_keeps_every_acknowledged_checkpoint_a_prefix() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let phases = [Phase::Queue, Phase::Spill, Phase::Resync, Phase::Checkpoint];
    if !phases.iter().any(|p| selected(*p)) {
        return;
    }
    // Nothing is pruned: a day of history, 10 GiB, and retention far
    // above the PITs the run's seals and resynchronizations make.
    let mut rig = Rig::new(
        &[
            "--checkpoint-interval",
            "1s",
            "--rpo",
            "30s",
            "--keep",
            "10000",
            "--journal-history",
            "24h",
            "--journal-max-size",
            "10G",
        ],
        false,
    );
    let started = Instant::now();
    for (round, (phase, side)) in schedule(&mut rig, &phases).into_iter().enumerate() {
        rig.crash(round as u64, phase, side);
    }
    eprintln!("kills done in {:?}", started.elapsed());
    rig.finish();
}

#[test]
fn either_site_killed_while_history_folds_into_pits_keeps_every_listed_checkpoint_a_prefix() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() || !selected(Phase::Fold) {
        return;
    }
    // Seals on demand (several a round) and on the RPO, one unnamed PIT kept and
    // 1 MiB of journal: each commit merges and prunes.
    let mut rig = Rig::new(
        &[
            "--checkpoint-interval",
            "200ms",
            "--rpo",
            "30s",
            "--keep",
            "1",
            "--journal-max-size",
            "1M",
        ],
        true,
    );
    for (round, (phase, side)) in schedule(&mut rig, &[Phase::Fold]).into_iter().enumerate() {
        rig.crash(round as u64, phase, side);
        // The exports just read pin their PITs against merges until the
        // daemon stops: a clean restart lets the next round fold again.
        rig.b.stop();
        rig.b.start();
    }
    let pits = pit_list(&rig.b, "g").len();
    let journal = rig.b.json(&["pit", "list", "g", "--checkpoints"]);
    eprintln!(
        "at the end: {pits} PITs, journal {} files, {} bytes, {} checkpoints",
        journal["files"], journal["bytes"], journal["count"]
    );
    rig.finish();
}

/// RFC 3339 (UTC, nanoseconds) of nanoseconds since the epoch.
fn rfc3339_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let out = Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .expect("date");
    format!(
        "{}.{:09}Z",
        String::from_utf8_lossy(&out.stdout).trim(),
        ns % 1_000_000_000
    )
}
