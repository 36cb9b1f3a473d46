//! The write log of a sync group (the open segment): batches are durable
//! on return, a torn tail is dropped, a reopened log replays into the open
//! PIT, sealing commits exactly what was logged, and a log sealed before a
//! crash is not applied twice.

use std::fs::OpenOptions;
use std::io::Write;

use offsite_replica::{
    LOG_FILE, LogRecord, ReplicaStore, VolumeSpec, decode_records, encode_record,
};
use proptest::prelude::*;

const BS: usize = 4096;
const NB: u64 = 64;
const AT: &str = "2026-12-02T12:00:00Z";

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
    drop(log);
    // Half of a second batch reached the file.
    let torn = batch(2, &[(0, 2, 6)]);
    let mut f = OpenOptions::new()
        .append(true)
        .open(dir.path().join("g").join(LOG_FILE))
        .unwrap();
    f.write_all(&torn[..torn.len() / 2]).unwrap();
    drop(f);
    let mut log = store.open_log().unwrap();
    assert_eq!(log.records(), 1);
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
    // Keep the pre-seal log file, as if the crash hit between the commit
    // and the log's reset.
    let path = dir.path().join("g").join(LOG_FILE);
    let before = std::fs::read(&path).unwrap();
    log.seal(None, AT.into()).unwrap();
    drop(log);
    std::fs::write(&path, &before).unwrap();
    assert!(store.seal_leftover_log(AT.into()).unwrap().is_none());
    assert_eq!(store.pits().len(), 1);
}

#[test]
fn the_log_holds_the_store_s_only_writer() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &specs()).unwrap();
    let log = store.open_log().unwrap();
    assert!(matches!(
        store.begin_pit(),
        Err(offsite_replica::ReplicaError::Busy)
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
        drop(log);
        let path = dir.path().join("g").join(LOG_FILE);
        let full = std::fs::read(&path).unwrap();
        let cut = 64 + ((full.len() - 64) as f64 * cut_frac) as usize;
        std::fs::write(&path, &full[..cut]).unwrap();
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
