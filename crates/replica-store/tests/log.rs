//! The write log of a sync group (the open segment, the journal's open
//! file): batches are durable on return, a torn tail is dropped, a
//! reopened log replays into the open PIT, sealing commits exactly what was
//! logged, and a file sealed before a crash is not applied twice. The file
//! runs ahead of the records in zeroes (appends overwrite them); zeroes end
//! the records, and no stale byte behind them is ever read as a record.
//! (Checkpoints and the journal's history: `tests/journal.rs`.)

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use offsite_replica_store::{
    JOURNAL_DIR, JOURNAL_HEADER_LEN, LogRecord, ReplicaStore, VolumeSpec, WriteLog, decode_records,
    encode_record, failpoint,
};
use proptest::prelude::*;

const BS: usize = 4096;
const NB: u64 = 64;
const AT: &str = "2026-12-02T12:00:00Z";
/// The journal file's header.
const HEADER: u64 = JOURNAL_HEADER_LEN as u64;
/// How far the log file grows at a time (`GROW` in `src/log.rs`).
const GROW: u64 = 4 << 20;
/// Bytes of a record of one block of data.
const DATA_REC: u64 = 44 + BS as u64;

fn specs() -> Vec<VolumeSpec> {
    ["a", "b"]
        .iter()
        .map(|n| VolumeSpec {
            name: (*n).into(),
            size_bytes: NB * BS as u64,
            block_size: BS as u32,
        })
        .collect()
}

/// Writes of (volume, block, fill byte or 0 for zeroes).
fn batch(seq0: u64, writes: &[(u16, u64, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &(v, b, fill)) in writes.iter().enumerate() {
        let data = vec![fill; BS];
        encode_record(
            &LogRecord {
                seq: seq0 + i as u64,
                volume: v,
                first: b,
                count: 1,
                data: (fill != 0).then_some(&data[..]),
            },
            &mut out,
        );
    }
    out
}

/// A store in `dir` and its open log holding one record (block 1 of the
/// first volume = 5); also the log file and its length in bytes.
fn log_with_one_record(dir: &tempfile::TempDir) -> (ReplicaStore, PathBuf, WriteLog, u64) {
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let path = log_path(dir);
    let mut log = store.open_log().unwrap();
    let raw = batch(1, &[(0, 1, 5)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    let prefix = log.bytes();
    (store, path, log, prefix)
}

/// The journal's first file: the open one until the first seal.
fn log_path(dir: &tempfile::TempDir) -> PathBuf {
    journal_file(dir, 1)
}

/// Journal file `n` of the store in `dir`.
fn journal_file(dir: &tempfile::TempDir, n: u64) -> PathBuf {
    dir.path()
        .join("g")
        .join(JOURNAL_DIR)
        .join(format!("{n:020}.jnl"))
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Whether the file holds only zeroes from `at` on.
fn zeroes_from(path: &Path, at: u64) -> bool {
    std::fs::read(path).unwrap()[at as usize..]
        .iter()
        .all(|&b| b == 0)
}

/// Writes `bytes` at `at` into the log file, as a crash would leave them.
fn scribble(path: &Path, bytes: &[u8], at: u64) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, at).unwrap();
}

fn read_block(store: &ReplicaStore, vol: &str, b: u64) -> u8 {
    let pit = store.newest().map(|p| p.id);
    let mut buf = vec![0u8; BS];
    store.read(pit, vol, b * BS as u64, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&x| x == buf[0]),
        "block {vol}/{b} is not uniform"
    );
    buf[0]
}

#[test]
fn sealed_log_reads_back_and_reopen_replays_unsealed_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let raw = batch(1, &[(0, 3, 7), (1, 5, 9), (0, 3, 8)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    let pit = log.seal(Some("first".into()), AT.into()).unwrap();
    assert_eq!(pit.name.as_deref(), Some("first"));
    assert_eq!(read_block(&store, "a", 3), 8, "the later write wins");
    assert_eq!(read_block(&store, "b", 5), 9);
    // More writes, then the process "crashes" (the log is dropped unsealed).
    let raw = batch(4, &[(0, 3, 0), (1, 6, 4)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    drop(log);
    drop(store);
    let store = ReplicaStore::open(dir.path().join("g")).unwrap();
    assert_eq!(store.pits().len(), 1);
    let sealed = store
        .seal_leftover_log(AT.into())
        .unwrap()
        .expect("records to seal");
    assert_eq!(sealed.id.get(), pit.id.get() + 1);
    assert_eq!(read_block(&store, "a", 3), 0, "zero record applied");
    assert_eq!(read_block(&store, "b", 6), 4);
    assert_eq!(
        read_block(&store, "b", 5),
        9,
        "older PIT's block still there"
    );
    // Nothing left to seal: the log is empty after its PIT.
    assert!(store.seal_leftover_log(AT.into()).unwrap().is_none());
    assert_eq!(store.pits().len(), 2);
}

#[test]
fn a_torn_last_batch_is_dropped_and_earlier_batches_survive() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let raw = batch(1, &[(0, 1, 5)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    let end = log.bytes();
    drop(log);
    // Half of a second batch reached the file (over its zero tail).
    let torn = batch(2, &[(0, 2, 6)]);
    scribble(&log_path(&dir), &torn[..torn.len() / 2], end);
    let mut log = store.open_log().unwrap();
    assert_eq!(log.records(), 1);
    assert_eq!(log.bytes(), end);
    let raw = batch(2, &[(0, 2, 6)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    log.seal(None, AT.into()).unwrap();
    assert_eq!(read_block(&store, "a", 1), 5);
    assert_eq!(read_block(&store, "a", 2), 6);
}

#[test]
fn a_log_sealed_before_a_crash_is_not_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let raw = batch(1, &[(1, 1, 3)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    // Keep the pre-seal file, as if the crash hit between the commit and
    // the next file's creation (so the sealed file was not removed yet).
    let before = std::fs::read(log_path(&dir)).unwrap();
    log.seal(None, AT.into()).unwrap();
    drop(log);
    assert!(!log_path(&dir).exists(), "no history kept by default");
    std::fs::remove_file(journal_file(&dir, 2)).unwrap();
    std::fs::write(log_path(&dir), &before).unwrap();
    assert!(store.seal_leftover_log(AT.into()).unwrap().is_none());
    assert_eq!(store.pits().len(), 1);
    assert!(
        journal_file(&dir, 2).exists(),
        "a new open file after the seal's PIT"
    );
    assert_eq!(read_block(&store, "b", 1), 3);
}

#[test]
fn the_log_holds_the_store_s_only_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let log = store.open_log().unwrap();
    assert!(matches!(
        store.begin_pit(),
        Err(offsite_replica_store::ReplicaError::Busy)
    ));
    drop(log);
    store.begin_pit().unwrap();
}

#[test]
fn batches_that_do_not_fit_the_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    for raw in [batch(1, &[(2, 0, 1)]), batch(1, &[(0, NB, 1)])] {
        let recs = decode_records(&raw).unwrap();
        assert!(log.append(&raw, &recs).is_err());
    }
    assert_eq!(log.records(), 0);
    assert!(decode_records(&batch(1, &[(0, 0, 1), (0, 0, 1)])[..100]).is_err());
}

#[test]
fn appends_overwrite_zeroes_and_reopen_replays_exactly_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let path = log_path(&dir);
    let mut log = store.open_log().unwrap();
    assert_eq!(file_len(&path), HEADER, "a new log is its header");
    // Batches of 64 records of one block each: 16 of them pass one step.
    let mut seq = 1;
    let mut lens = Vec::new();
    for i in 0..20u64 {
        let writes: Vec<_> = (0..NB)
            .map(|b| ((i % 2) as u16, b, (i + 1) as u8))
            .collect();
        let raw = batch(seq, &writes);
        seq += NB;
        log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
        assert_eq!(log.bytes(), HEADER + (i + 1) * NB * DATA_REC);
        let len = file_len(&path);
        assert!(
            len > log.bytes(),
            "{len} bytes for {} of records",
            log.bytes()
        );
        // Steps of GROW from the header (buffered appends) or from a 4 KiB
        // boundary (aligned O_DIRECT appends).
        assert!(
            (len - HEADER).is_multiple_of(GROW) || len.is_multiple_of(GROW),
            "{len} bytes"
        );
        assert!(zeroes_from(&path, log.bytes()), "the tail is zeroes");
        lens.push(len);
    }
    assert!(lens[0] >= GROW, "the first append extends by a step");
    assert_eq!(lens[14], lens[0], "appends that fit overwrite");
    assert_eq!(lens[19], lens[0] + GROW, "then one more step");
    let (records, bytes, last) = (log.records(), log.bytes(), log.last_seq());
    assert_eq!(records, 20 * NB);
    drop(log);

    // Reopening replays exactly the records and drops the zeroes.
    let mut log = store.open_log().unwrap();
    assert_eq!(
        (log.records(), log.bytes(), log.last_seq()),
        (records, bytes, last)
    );
    assert_eq!(file_len(&path), bytes);
    // The next append extends the file with zeroes again.
    let raw = batch(seq, &[(0, 7, 99)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    let len = file_len(&path);
    assert!(len > log.bytes() && len <= bytes + GROW + 4096, "{len}");
    assert!(zeroes_from(&path, log.bytes()));
    drop(log);
    let log = store.open_log().unwrap();
    assert_eq!(log.records(), records + 1);
    assert_eq!(log.bytes(), bytes + DATA_REC);
    drop(log);
    store.seal_leftover_log(AT.into()).unwrap().unwrap();
    assert_eq!(read_block(&store, "a", 7), 99);
    assert_eq!(read_block(&store, "a", 8), 19);
    assert_eq!(read_block(&store, "b", 8), 20);
    assert!(
        !path.exists(),
        "the sealed file goes: no history kept by default"
    );
    assert_eq!(
        file_len(&journal_file(&dir, 2)),
        HEADER,
        "the sealed file's successor"
    );
}

#[test]
fn a_torn_batch_before_zeroes_recovers_its_prefix_and_nothing_stale_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path, log, prefix) = log_with_one_record(&dir);
    drop(log);
    // A batch of two records reached the file but for one page of the
    // first one's data: the second one is whole, and valid on its own.
    let mut torn = batch(2, &[(0, 2, 6), (1, 3, 9)]);
    torn[1000..2000].fill(0);
    scribble(&path, &torn, prefix);
    assert!(file_len(&path) > prefix + torn.len() as u64);

    let mut log = store.open_log().unwrap();
    assert_eq!((log.records(), log.bytes()), (1, prefix));
    assert_eq!(file_len(&path), prefix, "truncated to the valid prefix");
    // A new batch exactly as long as the torn record: had the torn bytes
    // stayed, the torn batch's second record would follow it.
    let raw = batch(2, &[(0, 2, 7)]);
    assert_eq!(raw.len() as u64, DATA_REC);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    assert!(zeroes_from(&path, log.bytes()));
    drop(log);

    let log = store.open_log().unwrap();
    assert_eq!(log.records(), 2, "the prefix and the new record only");
    assert_eq!(log.last_seq(), Some(2));
    assert_eq!(log.bytes(), prefix + DATA_REC);
    drop(log);
    store.seal_leftover_log(AT.into()).unwrap().unwrap();
    assert_eq!(read_block(&store, "a", 1), 5);
    assert_eq!(read_block(&store, "a", 2), 7);
    assert_eq!(read_block(&store, "b", 3), 0, "the stale record stays dead");
}

#[test]
fn an_append_after_a_failed_one_zeroes_what_the_failed_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let (store, path, mut log, prefix) = log_with_one_record(&dir);
    // Two records written, then the fdatasync fails: not appended.
    let raw = batch(2, &[(0, 2, 6), (1, 3, 9)]);
    failpoint::arm(1);
    let r = log.append(&raw, &decode_records(&raw).unwrap());
    failpoint::disarm();
    assert!(r.is_err());
    assert_eq!((log.records(), log.bytes()), (1, prefix));
    // A shorter batch in its place: the failed one's second record must
    // not survive behind it.
    let raw = batch(2, &[(0, 2, 7)]);
    log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    assert!(zeroes_from(&path, log.bytes()));
    drop(log);
    let log = store.open_log().unwrap();
    assert_eq!(log.records(), 2);
    assert_eq!(log.last_seq(), Some(2));
    drop(log);
    store.seal_leftover_log(AT.into()).unwrap().unwrap();
    assert_eq!(read_block(&store, "a", 2), 7);
    assert_eq!(read_block(&store, "b", 3), 0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Any sequence of batches, cut at any byte by a crash, recovers to
    /// exactly the records wholly on disk: every acknowledged (whole)
    /// batch, and a prefix of a torn one, which is still a prefix of the
    /// write order, so still crash-consistent.
    #[test]
    fn recovery_keeps_exactly_the_whole_batches(
        batches in prop::collection::vec(prop::collection::vec((0u16..2, 0u64..NB, 0u8..4), 1..6), 1..6),
        cut_frac in 0.0f64..1.0,
        zero_tail in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
        let mut log = store.open_log().unwrap();
        let mut seq = 1;
        // End offset in the file of every record, in order.
        let mut ends = Vec::new();
        for b in &batches {
            let raw = batch(seq, b);
            seq += b.len() as u64;
            let mut at = log.bytes();
            for &(_, _, fill) in b {
                at += 44 + if fill == 0 { 0 } else { BS as u64 };
                ends.push(at);
            }
            log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
            prop_assert_eq!(log.bytes(), at);
        }
        let end = log.bytes() as usize;
        drop(log);
        let path = log_path(&dir);
        let mut full = std::fs::read(&path).unwrap();
        prop_assert!(full.len() > end);
        // The crash cuts the records at any byte; after the cut come the
        // file's zeroes (an append into them) or nothing (an append that
        // was extending the file).
        let cut = HEADER as usize + ((end - HEADER as usize) as f64 * cut_frac) as usize;
        if zero_tail {
            full[cut..].fill(0);
        } else {
            full.truncate(cut);
        }
        std::fs::write(&path, &full).unwrap();
        let whole = ends.iter().filter(|&&e| e as usize <= cut).count();
        let mut oracle = std::collections::HashMap::new();
        for &(v, blk, fill) in batches.iter().flatten().take(whole) {
            oracle.insert((v, blk), fill);
        }
        let sealed = store.seal_leftover_log(AT.into()).unwrap();
        prop_assert_eq!(sealed.is_some(), whole > 0);
        for v in 0..2u16 {
            for blk in 0..NB {
                let want = oracle.get(&(v, blk)).copied().unwrap_or(0);
                let name = if v == 0 { "a" } else { "b" };
                if store.newest().is_some() {
                    prop_assert_eq!(read_block(&store, name, blk), want);
                }
            }
        }
    }
}

/// Micro-benchmark (ignored by default): latency of one 4 KiB record
/// appended with `append_many` (write + `fdatasync`).
///
/// `cargo test -p offsite-replica-store --release --test log -- --ignored --nocapture`
/// (set `OFFSITE_BENCH_DIR` to measure another file system than `$TMPDIR`).
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn append_latency() {
    let dir = match std::env::var_os("OFFSITE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let n = 3000u64;
    let mut took = Vec::with_capacity(n as usize);
    for seq in 1..=n {
        let raw = batch(seq, &[(0, seq % NB, (seq % 255) as u8 | 1)]);
        let recs = decode_records(&raw).unwrap();
        let t = std::time::Instant::now();
        log.append_many(&[(&raw, &recs)]).unwrap();
        took.push(t.elapsed());
    }
    took.sort();
    let pct = |p: usize| took[took.len() * p / 100].as_micros();
    println!(
        "append_many(1 record of 4 KiB), {n} appends: p50 {} µs, p90 {} µs, p99 {} µs, max {} µs",
        pct(50),
        pct(90),
        pct(99),
        took[took.len() - 1].as_micros()
    );
}

/// The first byte of block `b` of volume `vol` in PIT `pit`.
fn first_byte(store: &ReplicaStore, pit: offsite_replica_store::PitId, vol: &str, b: u64) -> u8 {
    let mut buf = vec![0u8; BS];
    store.read(Some(pit), vol, b * BS as u64, &mut buf).unwrap();
    buf[0]
}

/// Batches made durable on one thread and applied on another (the sync
/// stream's applier): a seal waits for every durable batch to be applied,
/// so the PIT holds exactly the appended writes, and the next log's
/// batches go to the next PIT.
#[test]
fn a_seal_waits_for_batches_applied_on_another_thread() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(offsite_replica_store::LogApplier, Vec<u8>)>();
    let applier = std::thread::spawn(move || {
        for (applier, raw) in rx {
            // Slower than the appends: the seal below finds work pending.
            std::thread::sleep(std::time::Duration::from_millis(2));
            let records = decode_records(&raw).unwrap();
            applier.apply(&[(&raw, &records)]).unwrap();
        }
    });
    let mut seq = 1;
    let mut append = |log: &mut WriteLog, writes: &[(u16, u64, u8)]| {
        let raw = batch(seq, writes);
        seq += writes.len() as u64;
        let applier = log
            .append_durable(&[(&raw, &decode_records(&raw).unwrap())])
            .unwrap();
        tx.send((applier, raw)).unwrap();
    };
    for b in 0..20u64 {
        append(&mut log, &[(0, b, 1 + b as u8), (1, b, 0x80)]);
    }
    let first = log.seal(None, AT.into()).unwrap();
    append(&mut log, &[(0, 0, 0x55)]);
    let second = log.seal(None, AT.into()).unwrap();
    drop(tx);
    applier.join().unwrap();
    assert_eq!(second.id.get(), first.id.get() + 1);
    let read = |pit, vol: &str, b: u64| first_byte(&store, pit, vol, b);
    for b in 0..20u64 {
        assert_eq!(read(first.id, "a", b), 1 + b as u8, "block a/{b}");
        assert_eq!(read(first.id, "b", b), 0x80, "block b/{b}");
    }
    assert_eq!(read(second.id, "a", 0), 0x55);
    assert_eq!(read(second.id, "a", 1), 2);
}

/// An applier dropped without applying (its thread died, or the stream
/// gave up between the append and the hand-over) does not leave a seal
/// waiting forever: the seal replays the log's file, so the PIT still
/// holds every durable batch, and appends go on after it.
#[test]
fn a_dropped_applier_makes_the_seal_replay_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let first = batch(1, &[(0, 0, 0x11)]);
    log.append_durable(&[(&first, &decode_records(&first).unwrap())])
        .unwrap()
        .apply(&[(&first, &decode_records(&first).unwrap())])
        .unwrap();
    let lost = batch(2, &[(0, 1, 0x22), (1, 3, 0x33)]);
    drop(
        log.append_durable(&[(&lost, &decode_records(&lost).unwrap())])
            .unwrap(),
    );
    let pit = log.seal(None, AT.into()).unwrap();
    let next = batch(4, &[(0, 0, 0x44)]);
    log.append_many(&[(&next, &decode_records(&next).unwrap())])
        .unwrap();
    let after = log.seal(None, AT.into()).unwrap();
    let read = |pit, vol: &str, b: u64| first_byte(&store, pit, vol, b);
    assert_eq!(read(pit.id, "a", 0), 0x11);
    assert_eq!(read(pit.id, "a", 1), 0x22);
    assert_eq!(read(pit.id, "b", 3), 0x33);
    assert_eq!(read(after.id, "a", 0), 0x44);
    assert_eq!(read(after.id, "a", 1), 0x22);
}

/// Micro-benchmark (ignored by default): throughput of appending 256 MiB
/// in batches of 64 records of 4 KiB (256 KiB per `append_many`, as a
/// busy sync stream's group commit makes them), sealed at the end.
///
/// `cargo test -p offsite-replica-store --release --test log -- --ignored --nocapture`
/// (set `OFFSITE_BENCH_DIR` to measure another file system than `$TMPDIR`).
#[test]
#[ignore = "benchmark; run with --release -- --ignored --nocapture"]
fn append_throughput() {
    let dir = match std::env::var_os("OFFSITE_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let mut log = store.open_log().unwrap();
    let total: u64 = 256 << 20;
    let per_batch = 64u64;
    let batches = total / (per_batch * BS as u64);
    let mut seq = 1;
    let t = std::time::Instant::now();
    for i in 0..batches {
        let writes: Vec<_> = (0..per_batch)
            .map(|j| {
                (
                    (j % 2) as u16,
                    (i * per_batch + j) % NB,
                    (j % 250) as u8 + 1,
                )
            })
            .collect();
        let raw = batch(seq, &writes);
        seq += per_batch;
        log.append_many(&[(&raw, &decode_records(&raw).unwrap())])
            .unwrap();
    }
    let appended = t.elapsed().as_secs_f64();
    log.seal(None, AT.into()).unwrap();
    println!(
        "append_many of 256 KiB batches, 256 MiB: {:.1} MB/s ({:.0} batches/s), seal {:.2} s",
        total as f64 / 1e6 / appended,
        batches as f64 / appended,
        t.elapsed().as_secs_f64() - appended
    );
}
