//! Real `kill -9`: the test binary re-executes itself as a child (switched
//! by an environment variable) that commits PITs in a loop, with retention
//! removing the oldest or the second-oldest PIT, and prints each committed
//! id after `commit` returns. The parent kills it at random (seeded)
//! moments, reopens the store and checks: every printed PIT not being
//! removed is visible, nothing else but possibly the one PIT whose commit
//! returned just before the kill, and every visible PIT reads back the
//! content derived from the ids up to it.

mod common;

use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use offsite_replica_store::{PitId, ReplicaStore, VolumeSpec};
use rand::{Rng, SeedableRng};

const CHILD_ENV: &str = "OFFSITE_REPLICA_SIGKILL_CHILD";
const BS: usize = 4096;
const NBLOCKS: u64 = 64;

fn specs() -> Vec<VolumeSpec> {
    ["a", "b"]
        .iter()
        .map(|n| VolumeSpec {
            name: (*n).into(),
            size_bytes: NBLOCKS * BS as u64,
            block_size: BS as u32,
        })
        .collect()
}

/// The writes of PIT `id`: `(volume, block, content seed or zero)`.
fn writes_of(id: u64) -> Vec<(usize, u64, Option<u64>)> {
    (0..(3 + id % 6))
        .map(|i| {
            let h = (id * 0x9E37_79B9 + i * 0x85EB_CA6B) ^ (id << 7);
            let v = (h % 2) as usize;
            let b = (h >> 3) % NBLOCKS;
            (v, b, (!h.is_multiple_of(11)).then_some(id * 1000 + i))
        })
        .collect()
}

/// The full expected image of every volume as of PIT `id`.
fn view_of(id: u64) -> Vec<Vec<u8>> {
    let mut img = vec![vec![0u8; NBLOCKS as usize * BS]; 2];
    for k in 1..=id {
        for (v, b, c) in writes_of(k) {
            let data = c.map_or_else(|| vec![0u8; BS], |s| common::pattern(BS, s));
            img[v][b as usize * BS..(b as usize + 1) * BS].copy_from_slice(&data);
        }
    }
    img
}

/// The child: commit forever (until killed), with retention.
fn child(dir: &Path) {
    let store = ReplicaStore::open(dir).expect("child opens the store");
    let mut out = std::io::stdout().lock();
    loop {
        let mut w = store.begin_pit().unwrap();
        let id = w.id().get();
        for (v, b, c) in writes_of(id) {
            let name = ["a", "b"][v];
            match c {
                Some(s) => w.write_block(name, b, &common::pattern(BS, s)).unwrap(),
                None => w.write_zero_block(name, b).unwrap(),
            }
        }
        let info = w.commit(None, common::CREATED.into()).unwrap();
        writeln!(out, "@@C {}", info.id).unwrap();
        out.flush().unwrap();
        let pits = store.pits();
        if pits.len() > 4 {
            let victim = if id.is_multiple_of(3) {
                pits[1].id
            } else {
                pits[0].id
            };
            writeln!(out, "@@R {victim}").unwrap();
            out.flush().unwrap();
            store.remove_pit(victim).unwrap();
            writeln!(out, "@@D {victim}").unwrap();
            out.flush().unwrap();
        }
        if id > 100_000 {
            return;
        }
    }
}

#[test]
fn sigkill_child_entry() {
    // Only does something when re-executed by `kill_9_at_random_moments`.
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
}

#[test]
fn kill_9_at_random_moments() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap(); // a real disk, not tmpfs
    drop(ReplicaStore::create(dir.path(), &specs()).unwrap());
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x005E_ED0F_0FF5);
    let (mut committed, mut removing, mut removed) = (Vec::new(), Vec::new(), Vec::new());
    let mut total_commits = 0;
    for round in 0..6 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sigkill_child_entry",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        // Let the child get going (first commit printed), then kill it at a
        // random moment: mid-write, mid-fsync, mid-merge or between PITs.
        let started = Instant::now();
        while !lines.lock().unwrap().iter().any(|l| l.contains("@@C"))
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        for line in lines.lock().unwrap().iter() {
            // The harness may print on the same line before the first tag.
            let Some((_, tagged)) = line.split_once("@@") else {
                continue;
            };
            let Some((tag, id)) = tagged.split_once(' ') else {
                continue;
            };
            let Ok(id) = id.parse::<u64>() else { continue };
            match tag {
                "C" => {
                    committed.push(id);
                    total_commits += 1;
                }
                "R" => removing.push(id),
                "D" => removed.push(id),
                _ => {}
            }
        }

        let store = ReplicaStore::open(dir.path()).unwrap();
        assert!(store.damaged().is_empty(), "{:?}", store.damaged());
        let visible: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
        let max_printed = committed.iter().copied().max().unwrap_or(0);
        for &id in &committed {
            if !removing.contains(&id) {
                assert!(
                    visible.contains(&id),
                    "round {round}: committed PIT {id} lost; visible {visible:?}"
                );
            }
        }
        for &id in &removed {
            assert!(
                !visible.contains(&id),
                "round {round}: removed PIT {id} is back"
            );
        }
        for &id in &visible {
            assert!(
                committed.contains(&id) || id == max_printed + 1,
                "round {round}: PIT {id} visible but never committed (committed {committed:?}, removing {removing:?})"
            );
            let want = view_of(id);
            for (v, name) in ["a", "b"].iter().enumerate() {
                let mut buf = vec![0u8; NBLOCKS as usize * BS];
                store.read(PitId::new(id), name, 0, &mut buf).unwrap();
                assert!(
                    buf == want[v],
                    "round {round}: PIT {id} volume {name} differs"
                );
            }
            store.verify_pit(PitId::new(id).unwrap()).unwrap();
        }
        // A PIT whose "C" line was lost to the kill counts as committed.
        if let Some(&last) = visible.last()
            && last == max_printed + 1
        {
            committed.push(last);
        }
        eprintln!("round {round}: visible {visible:?}");
    }
    assert!(
        total_commits >= 5,
        "the child committed only {total_commits} PITs"
    );
}
