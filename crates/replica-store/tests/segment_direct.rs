//! Segment data written with `O_DIRECT` (see `segment.rs`) reads back
//! exactly: several 4 MiB write-buffer flushes per segment, in-place
//! rewrites of flushed and still-buffered slots, zeroed and re-written
//! blocks, block sizes whose slots are 4 KiB-aligned in the file (4096,
//! 8192) and one whose slots are not (512), a merge (which builds a segment
//! too), and a reopen.
//!
//! Runs in `$TMPDIR` (a disk file system, so `O_DIRECT` is real), not on
//! tmpfs like most tests; set `OFFSITE_TEST_DIR` to test another one.

mod common;

use std::time::Instant;

use common::{Oracle, Write, commit, pit};
use offsite_replica_store::{ReplicaStore, VolumeSpec};

fn test_dir(var: &str) -> tempfile::TempDir {
    match std::env::var_os(var) {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

/// xorshift64: deterministic, no seed file.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const MIB: u64 = 1 << 20;

/// 12 to 16 MiB per volume: a first PIT writing ~10 MiB of data per
/// volume is two or three 4 MiB flushes.
fn specs() -> Vec<VolumeSpec> {
    vec![
        VolumeSpec {
            name: "a4k".into(),
            size_bytes: 16 * MIB,
            block_size: 4096,
        },
        VolumeSpec {
            name: "b512".into(),
            size_bytes: 12 * MIB,
            block_size: 512,
        },
        VolumeSpec {
            name: "c8k".into(),
            size_bytes: 16 * MIB,
            block_size: 8192,
        },
    ]
}

/// Writes for one PIT: `fresh` new blocks of every volume in a shuffled
/// order, interleaved with rewrites of blocks written long ago (their slot
/// is flushed) and just before (their slot is still buffered), zeroes, and
/// data again over some of those zeroes.
fn pit_writes(rng: &mut Rng, specs: &[VolumeSpec], fresh_bytes: u64, seed0: u64) -> Vec<Write> {
    let mut out = Vec::new();
    let mut seed = seed0;
    for (v, spec) in specs.iter().enumerate() {
        let nblocks = spec.size_bytes / u64::from(spec.block_size);
        let fresh = (fresh_bytes / u64::from(spec.block_size)).min(nblocks);
        // A random permutation of the volume, of which the first `fresh`.
        let mut order: Vec<u64> = (0..nblocks).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut written: Vec<u64> = Vec::new();
        for &b in &order[..fresh as usize] {
            seed += 1;
            out.push((v, b, Some(seed)));
            written.push(b);
            let r = rng.below(100);
            if r < 6 && written.len() > 1 {
                // Rewrite one of the latest few (still in the buffer).
                let back = rng.below(written.len().min(8) as u64) as usize;
                seed += 1;
                out.push((v, written[written.len() - 1 - back], Some(seed)));
            } else if r < 12 {
                // Rewrite any earlier one (mostly flushed already).
                let at = written[rng.below(written.len() as u64) as usize];
                seed += 1;
                out.push((v, at, Some(seed)));
            } else if r < 14 {
                let at = written[rng.below(written.len() as u64) as usize];
                out.push((v, at, None));
                if rng.below(2) == 0 {
                    seed += 1;
                    out.push((v, at, Some(seed)));
                }
            }
        }
        // The very first slots (in the file page that also holds the
        // header when blocks are small) and the last ones, once more.
        for &b in order[..4]
            .iter()
            .chain(&order[fresh as usize - 4..fresh as usize])
        {
            seed += 1;
            out.push((v, b, Some(seed)));
        }
    }
    out
}

#[test]
fn segments_written_with_o_direct_read_back_exactly() {
    let dir = test_dir("OFFSITE_TEST_DIR");
    let specs = specs();
    let store = ReplicaStore::create(dir.path(), &specs).unwrap();
    let mut oracle = Oracle::new(&specs);
    let mut rng = Rng(0x5EED_0FD1_2EC7);

    // PIT 1: ~10 MiB per volume (two full flushes and a partial one).
    let w1 = pit_writes(&mut rng, &specs, 10 * MIB, 1_000_000);
    let p1 = commit(&store, &mut oracle, &w1, Some("one"));
    oracle.check(&store);
    store.verify_pit(pit(p1)).unwrap();

    // PIT 2 and 3 smaller (one flush, and none), then merge 2 into 3: the
    // merged segment is built by the same code.
    let w2 = pit_writes(&mut rng, &specs, 5 * MIB, 2_000_000);
    commit(&store, &mut oracle, &w2, None);
    let w3 = pit_writes(&mut rng, &specs, MIB, 3_000_000);
    let p3 = commit(&store, &mut oracle, &w3, None);
    oracle.check(&store);
    store.remove_pit(pit(2)).unwrap();
    oracle.remove(2).unwrap();
    oracle.check(&store);
    store.verify_pit(pit(p3)).unwrap();

    // Reopen: fresh descriptors, nothing from this process's page cache
    // assumptions.
    drop(store);
    let store = ReplicaStore::open(dir.path()).unwrap();
    oracle.check(&store);
    for p in store.pits() {
        store.verify_pit(p.id).unwrap();
    }
}

/// Thread CPU time (ns) from `/proc/thread-self/schedstat`.
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    s.split_whitespace().next().unwrap().parse().unwrap()
}

/// The machine's CPU time in ns by kind, from `/proc/stat`: user + nice,
/// system, irq + softirq, steal (the kernel's writeback threads included).
fn machine_cpu_ns() -> [u64; 4] {
    let s = std::fs::read_to_string("/proc/stat").unwrap();
    let t: Vec<u64> = s
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<u64>().unwrap() * 10_000_000) // USER_HZ = 100
        .collect();
    // user nice system idle iowait irq softirq steal ...
    [t[0] + t[1], t[2], t[5] + t[6], t[7]]
}

/// CPU per 4 KiB block of building one 256 MiB segment: staging (hash +
/// `write_block`) and commit (finish + fsync), on this thread and on the
/// whole machine (writeback threads included; noisy if anything else runs);
/// and the cost of rewriting a block whose slot was flushed.
///
/// `cargo test -p offsite-replica-store --release --test segment_direct -- --ignored --nocapture`
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn segment_build_cpu_per_block() {
    const BS: usize = 4096;
    const SIZE: u64 = 256 * MIB;
    const REWRITES: u64 = 4096;
    let nblocks = SIZE / BS as u64;
    let mut block: Vec<u8> = (0..BS).map(|i| (i * 31 % 251) as u8 | 1).collect();
    let c0 = thread_cpu_ns();
    for b in 0..nblocks {
        block[..8].copy_from_slice(&b.to_le_bytes());
        std::hint::black_box(blake3::hash(&block));
    }
    println!(
        "BLAKE3 alone (part of staging): {:.2} µs/4 KiB",
        (thread_cpu_ns() - c0) as f64 / 1e3 / nblocks as f64
    );
    let rounds = std::env::var("OFFSITE_BENCH_ROUNDS").map_or(3, |r| r.parse().unwrap());
    for round in 0..rounds {
        let dir = test_dir("OFFSITE_BENCH_DIR");
        let spec = VolumeSpec {
            name: "v".into(),
            size_bytes: SIZE,
            block_size: BS as u32,
        };
        let store = ReplicaStore::create(dir.path(), std::slice::from_ref(&spec)).unwrap();
        let (c0, m0, t0) = (thread_cpu_ns(), machine_cpu_ns(), Instant::now());
        let mut w = store.begin_pit().unwrap();
        for b in 0..nblocks {
            block[..8].copy_from_slice(&(b + round).to_le_bytes());
            w.write_block("v", b, &block).unwrap();
        }
        let (c1, m1, t1) = (thread_cpu_ns(), machine_cpu_ns(), t0.elapsed());
        // Rewrites of blocks whose slots were flushed long ago (not part
        // of the per-block figures below).
        let mut x = 0x9E37_79B9_7F4A_7C15u64 + round;
        let t = Instant::now();
        for _ in 0..REWRITES {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let b = x % (nblocks / 2);
            block[..8].copy_from_slice(&(!b).to_le_bytes());
            w.write_block("v", b, &block).unwrap();
        }
        let (rw_cpu, rw_wall) = (thread_cpu_ns() - c1, t.elapsed());
        let (c1b, m1b, t1b) = (thread_cpu_ns(), machine_cpu_ns(), t0.elapsed());
        w.commit(None, common::CREATED.into()).unwrap();
        let (c2, m2, t2) = (thread_cpu_ns(), machine_cpu_ns(), t0.elapsed());
        let (c2, t2) = (c2 - (c1b - c1), t2 - (t1b - t1));
        let per = |ns: u64| ns as f64 / 1e3 / nblocks as f64;
        let m: Vec<f64> = (0..4)
            .map(|i| per(m2[i] - m1b[i] + m1[i] - m0[i]))
            .collect();
        println!(
            "round {round}: rewrite of a flushed 4 KiB block: {:.2} µs CPU, {:.1} µs wall",
            rw_cpu as f64 / 1e3 / REWRITES as f64,
            rw_wall.as_secs_f64() * 1e6 / REWRITES as f64
        );
        println!(
            "round {round}: thread CPU µs/4 KiB: staging {:.2}, commit {:.2}, total {:.2}; \
             machine µs/4 KiB: user {:.2}, system {:.2}, irq {:.2}, steal {:.2}; \
             wall staging {:.2} s, total {:.2} s",
            per(c1 - c0),
            per(c2 - c1),
            per(c2 - c0),
            m[0],
            m[1],
            m[2],
            m[3],
            t1.as_secs_f64(),
            t2.as_secs_f64(),
        );
    }
}
