//! Micro benchmark of the NBD hot path (`mark` on an active extent). Run:
//! `cargo test -p offsite-cbt --release --test bench -- --ignored --nocapture`

use std::sync::Arc;
use std::time::Instant;

use offsite_cbt::{ChangeTracker, Geometry};

mod common;

use common::Rng;

const N: u64 = 2_000_000;

fn per_mark(t: &ChangeTracker, hot_bytes: u64, seed: u64) -> f64 {
    let mut rng = Rng::new(seed);
    let offsets: Vec<u64> = (0..N).map(|_| rng.below(hot_bytes / 4096) * 4096).collect();
    let start = Instant::now();
    for &off in &offsets {
        t.mark(off, 4096).unwrap();
    }
    start.elapsed().as_nanos() as f64 / N as f64
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn mark_cost_on_active_extents() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::for_volume(100 << 30, 4096).unwrap();
    let t = Arc::new(ChangeTracker::create(dir.path(), "bench", g).unwrap());

    // One hot extent (4 MiB).
    t.mark(0, 4096).unwrap();
    let one = per_mark(&t, 4 << 20, 1);

    // The whole AL hot set: 1024 extents = 4 GiB, activated first.
    let start = Instant::now();
    for e in 0..1024u64 {
        t.mark(e << 22, 4096).unwrap();
    }
    let activate = start.elapsed().as_micros() as f64 / 1024.0;
    let hot = per_mark(&t, 4 << 30, 2);

    // Four threads on the same hot set (mutex contention).
    let start = Instant::now();
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let t = Arc::clone(&t);
            std::thread::spawn(move || per_mark(&t, 4 << 30, 10 + i))
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let wall4 = start.elapsed().as_nanos() as f64 / (4 * N) as f64;

    println!("mark() on one active extent:        {one:7.1} ns/mark");
    println!("mark() over 1024 active extents:    {hot:7.1} ns/mark");
    println!("mark() 4 threads, 1024 extents:     {wall4:7.1} ns/mark (wall / total marks)");
    println!("activating an extent (AL write):    {activate:7.1} us/extent");
    println!("dirty blocks after run:             {}", t.dirty_blocks());
    Arc::try_unwrap(t).unwrap().close().unwrap();
}
