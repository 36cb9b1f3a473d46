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

/// Micro-benchmark (ignored by default): a checkpoint 1 GiB of journal
/// writes after a PIT (4 KiB records, every block of a 1 GiB volume
/// once, in 256 KiB group-commit batches): append throughput with and
/// without a checkpoint after every batch, the time to materialize the
/// checkpoint's image (one pass over the journal: crc32c and BLAKE3 of
/// every record), and reading the whole image back.
///
/// `cargo test -p offsite-replica-store --release --test bench -- --ignored --nocapture journal`
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn journal_checkpoint_materialize() {
    use offsite_replica_store::{Consistency, LogRecord, decode_records, encode_record};
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
    let mut log = store.open_log().unwrap();
    // A PIT first, so the checkpoint's image starts from one.
    let mut raw = Vec::new();
    encode_record(
        &LogRecord {
            seq: 1,
            volume: 0,
            first: 0,
            count: 1,
            data: Some(&[7u8; BS]),
        },
        &mut raw,
    );
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    log.seal(None, "2024-05-01T12:00:00Z".into()).unwrap();
    let nblocks = GIB / BS as u64;
    let per_batch = 64u64;
    let mut block: Vec<u8> = (0..BS).map(|i| (i * 31 % 251) as u8 | 1).collect();
    let mut seq = 2;
    let mut append = |log: &mut offsite_replica_store::WriteLog,
                      range: std::ops::Range<u64>,
                      checkpoints: bool| {
        let t = Instant::now();
        for b0 in range.clone().step_by(per_batch as usize) {
            let mut raw = Vec::with_capacity((per_batch as usize) * (BS + 44));
            for b in b0..(b0 + per_batch).min(range.end) {
                block[..8].copy_from_slice(&b.to_le_bytes());
                encode_record(
                    &LogRecord {
                        seq,
                        volume: 0,
                        first: b,
                        count: 1,
                        data: Some(&block),
                    },
                    &mut raw,
                );
                seq += 1;
            }
            log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
            if checkpoints {
                log.checkpoint(seq, Consistency::Crash, None).unwrap();
            }
        }
        let bytes = (range.end - range.start) * BS as u64;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "journal append, 256 KiB batches{}: {} ({:.0} batches/s)",
            if checkpoints {
                " + a checkpoint each"
            } else {
                ""
            },
            mbps(bytes, secs),
            (bytes / (per_batch * BS as u64)) as f64 / secs
        );
    };
    append(&mut log, 0..nblocks / 2, false);
    append(&mut log, nblocks / 2..nblocks, true);
    let last = log.last_checkpoint().unwrap();

    let t = Instant::now();
    let img = store.checkpoint_image(last).unwrap();
    let built = t.elapsed().as_secs_f64();
    println!(
        "materialize a checkpoint 1 GiB after a PIT ({} journal blocks): {:.2} s ({})",
        img.journal_blocks(),
        built,
        mbps(GIB, built)
    );
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    for off in (0..GIB).step_by(buf.len()) {
        img.read("v", off, &mut buf).unwrap();
    }
    println!(
        "read the checkpoint's image (1 MiB reads, BLAKE3-checked): {}",
        mbps(GIB, t.elapsed().as_secs_f64())
    );
    drop(img);
    // The first checkpoint follows the second half's first batch.
    let t = Instant::now();
    let img = store
        .checkpoint_image(offsite_replica_store::CheckpointId::new(1).unwrap())
        .unwrap();
    println!(
        "materialize the first checkpoint (512 MiB + 256 KiB after the PIT): {:.2} s",
        t.elapsed().as_secs_f64()
    );
    drop(img);
}
