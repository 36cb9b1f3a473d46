//! Micro-benchmark (ignored by default): commit 1 GiB of 4 KiB blocks,
//! read it back, hash it, merge it into the base.
//!
//! `cargo test -p offsite-replica-store --release --test bench -- --ignored --nocapture`
//! (set `OFFSITE_BENCH_DIR` to measure another file system than `$TMPDIR`).

use std::time::Instant;

use offsite_replica_store::{PitId, ReplicaStore, VolumeSpec};

const GIB: u64 = 1 << 30;
const BS: usize = 4096;

fn mbps(bytes: u64, secs: f64) -> String {
    format!("{:8.1} MB/s", bytes as f64 / 1e6 / secs)
}

#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn commit_and_read_throughput() {
    let dir = match std::env::var_os("OFFSITE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let spec = VolumeSpec {
        name: "v".into(),
        size_bytes: GIB,
        block_size: BS as u32,
    };
    let store = ReplicaStore::create(dir.path(), std::slice::from_ref(&spec)).unwrap();
    let nblocks = GIB / BS as u64;
    let mut block: Vec<u8> = (0..BS).map(|i| (i * 31 % 251) as u8 | 1).collect();

    let t = Instant::now();
    let mut w = store.begin_pit().unwrap();
    for b in 0..nblocks {
        block[..8].copy_from_slice(&b.to_le_bytes());
        w.write_block("v", b, &block).unwrap();
    }
    let staged = t.elapsed().as_secs_f64();
    let info = w.commit(None, "2024-05-01T12:00:00Z".into()).unwrap();
    let committed = t.elapsed().as_secs_f64();
    println!(
        "commit 1 GiB of 4 KiB blocks: {} (staging {}, commit incl. fsync {:.2} s)",
        mbps(GIB, committed),
        mbps(GIB, staged),
        committed - staged
    );

    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for off in (0..GIB).step_by(buf.len()) {
        store.read(Some(info.id), "v", off, &mut buf).unwrap();
    }
    println!(
        "read PIT (1 MiB reads, BLAKE3-checked):  {}",
        mbps(GIB, t.elapsed().as_secs_f64())
    );

    let t = Instant::now();
    let hashes = store.block_hashes(Some(info.id), "v", 0..nblocks).unwrap();
    assert_eq!(hashes.len() as u64, nblocks);
    println!(
        "block_hashes of the PIT (stored hashes): {}",
        mbps(GIB, t.elapsed().as_secs_f64())
    );

    let t = Instant::now();
    store.verify_pit(info.id).unwrap();
    println!(
        "verify_pit:                              {}",
        mbps(GIB, t.elapsed().as_secs_f64())
    );

    // A second PIT changing every 10th block, then read the mixed view.
    let mut w = store.begin_pit().unwrap();
    for b in (0..nblocks).step_by(10) {
        block[..8].copy_from_slice(&(!b).to_le_bytes());
        w.write_block("v", b, &block).unwrap();
    }
    let p2 = w.commit(None, "2024-05-01T12:05:00Z".into()).unwrap();
    let t = Instant::now();
    for off in (0..GIB).step_by(buf.len()) {
        store.read(Some(p2.id), "v", off, &mut buf).unwrap();
    }
    println!(
        "read 2-PIT view (10 % from the newer):   {}",
        mbps(GIB, t.elapsed().as_secs_f64())
    );

    let t = Instant::now();
    store.remove_pit(PitId::new(1).unwrap()).unwrap();
    println!(
        "merge PIT 1 into the base (remove_pit):  {}",
        mbps(GIB, t.elapsed().as_secs_f64())
    );
}
