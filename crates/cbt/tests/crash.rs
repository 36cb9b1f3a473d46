//! Real crash test: a child process (this test binary, re-executed with an
//! environment variable) marks random ranges from several threads and prints
//! each range once `mark` has returned; the parent SIGKILLs it mid-way,
//! reopens the tracker and checks that every printed range is dirty.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use offsite_cbt::{ChangeTracker, Geometry, OpenReport, Tuning};

use common::{Rng, blocks_of, extent_closure, to_set};

const CHILD_DIR_ENV: &str = "OFFSITE_CBT_CRASH_CHILD_DIR";
const CHILD_SEED_ENV: &str = "OFFSITE_CBT_CRASH_CHILD_SEED";

const G: Geometry = Geometry {
    block_size: 4096,
    nblocks: 1 << 16, // 256 MiB
};

fn tuning(round: u64) -> Tuning {
    // Small activity logs so the child overflows it (bitmap persist + AL
    // eviction) all the time, and gets killed in the middle of that too.
    Tuning {
        extent_blocks: 16,
        al_capacity: [4, 8, 64][(round % 3) as usize],
    }
}

/// The child: does nothing unless started by `killed_tracker_keeps_every_acknowledged_mark`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR_ENV) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let (t, _) = ChangeTracker::open_tuned(Path::new(&dir), "vol", G, tuning(seed)).unwrap();
    let t = Arc::new(t);
    let deadline = Instant::now() + Duration::from_secs(600);
    let threads: Vec<_> = (0..3)
        .map(|i| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed * 10 + i);
                while Instant::now() < deadline {
                    let size = G.volume_bytes();
                    let len = match rng.below(100) {
                        0 => 1 + rng.below(64 << 20), // huge: bitmap path
                        1..=20 => 1 + rng.below(1 << 20),
                        _ => 1 + rng.below(64 << 10),
                    };
                    let offset = rng.below(size - len + 1);
                    t.mark(offset, len).unwrap();
                    if rng.below(200) == 0 {
                        t.checkpoint().unwrap();
                    }
                    // Acknowledged: the parent may now rely on it.
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {offset} {len}").unwrap();
                    out.flush().unwrap();
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
}

#[test]
fn killed_tracker_keeps_every_acknowledged_mark() {
    let dir = tempfile::tempdir().unwrap();
    ChangeTracker::create_tuned(dir.path(), "vol", G, tuning(0))
        .unwrap()
        .close()
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    // Everything acknowledged in any round (nothing is ever cleared).
    let mut acked: BTreeSet<u32> = BTreeSet::new();
    let mut rng = Rng::new(1234);
    let mut recovered_rounds = 0;
    for round in 0..9u64 {
        let mut child = Command::new(&exe)
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, dir.path())
            .env(CHILD_SEED_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let kill_after = 50 + rng.below(1500);
        let mut seen = 0u64;
        let mut line = String::new();
        let mut killed = false;
        loop {
            line.clear();
            let n = out.read_line(&mut line).unwrap();
            if n == 0 {
                break; // EOF: the child is dead and its pipe drained.
            }
            // Only complete lines count as acknowledged. (libtest may print
            // "test crash_child ... " in front of the first one.)
            if let Some(at) = line.find("ACK ")
                && let Some(rest) = line[at + 4..].strip_suffix('\n')
            {
                let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
                let (offset, len) = (it.next().unwrap(), it.next().unwrap());
                acked.extend(blocks_of(offset, len, G.block_size));
                seen += 1;
            }
            if !killed && seen >= kill_after {
                child.kill().unwrap(); // SIGKILL
                killed = true;
            }
        }
        let status = child.wait().unwrap();
        assert!(
            killed,
            "child exited by itself ({status}) after {seen} marks"
        );
        assert!(!status.success());

        let (t, report) = ChangeTracker::open_tuned(dir.path(), "vol", G, tuning(round)).unwrap();
        match &report {
            OpenReport::RecoveredAfterCrash { .. } => recovered_rounds += 1,
            OpenReport::Clean => {}
            OpenReport::Reset { reason } => panic!("round {round}: state reset: {reason}"),
        }
        let snap = to_set(&t.snapshot());
        let lost: Vec<u32> = acked.difference(&snap).copied().collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged blocks lost after SIGKILL, first {:?}",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        // Not a trivial superset: whatever came back lies in extents of
        // ranges that were being marked (acknowledged ones, plus at most the
        // few in flight at the kill, which can add whole extents).
        assert!(snap.len() < G.nblocks as usize || acked.len() == G.nblocks as usize);
        let closure = extent_closure(&acked, 16, G.nblocks);
        let stray = snap.difference(&closure).count();
        assert!(
            stray <= 3 * (64 << 20) / 4096 + 3 * 16 * 2,
            "round {round}: {stray} blocks dirty outside any acknowledged extent"
        );
        acked = snap;
        t.close().unwrap();
        eprintln!("round {round}: killed after {seen} acknowledged marks, recovered {report:?}");
    }
    assert!(
        recovered_rounds >= 5,
        "only {recovered_rounds} crash recoveries"
    );
}
