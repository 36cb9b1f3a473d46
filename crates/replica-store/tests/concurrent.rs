//! Reads run concurrently with commits and removals: readers pick a
//! visible PIT and read it while the writer commits new PITs and merges old
//! ones into the base or into their successors. Every read that succeeds
//! returns exactly the PIT's content; the only allowed failure is
//! `NoSuchPit` for a PIT removed in between.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{fast_tmpdir, kind, pattern};
use offsite_replica_store::{PitId, ReplicaStore, VolumeSpec};
use rand::{Rng, SeedableRng};

const BS: usize = 512;
const NBLOCKS: u64 = 32;

fn writes_of(id: u64) -> Vec<(u64, Option<u64>)> {
    (0..4 + id % 5)
        .map(|i| {
            (
                (id * 7 + i * 13) % NBLOCKS,
                (!(id + i).is_multiple_of(6)).then_some(id * 100 + i),
            )
        })
        .collect()
}

fn view_of(id: u64) -> Vec<u8> {
    let mut img = vec![0u8; NBLOCKS as usize * BS];
    for k in 1..=id {
        for (b, c) in writes_of(k) {
            let data = c.map_or_else(|| vec![0u8; BS], |s| pattern(BS, s));
            img[b as usize * BS..(b as usize + 1) * BS].copy_from_slice(&data);
        }
    }
    img
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<ReplicaStore>();
    fn send<T: Send>() {}
    send::<offsite_replica_store::PitWriter>();
}

#[test]
fn reads_during_commits_and_merges_return_committed_data() {
    for backend in common::BACKENDS {
        reads_during_commits_and_merges_on(backend);
    }
}

fn reads_during_commits_and_merges_on(backend: common::Backend) {
    let d = fast_tmpdir();
    let spec = VolumeSpec {
        name: "v".into(),
        size_bytes: NBLOCKS * BS as u64,
        block_size: BS as u32,
    };
    let store = Arc::new(backend.create(d.path(), &[spec]).unwrap());
    let views: Arc<Mutex<HashMap<u64, Arc<Vec<u8>>>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // Reads done so far (the readers get up to a minute for 100 of them).
    let done_reads = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..2u64 {
        let (store, views, stop) = (store.clone(), views.clone(), stop.clone());
        let done_reads = done_reads.clone();
        readers.push(std::thread::spawn(move || {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pits = store.pits();
                if pits.is_empty() {
                    continue;
                }
                let id = pits[rng.random_range(0..pits.len())].id;
                let want = views
                    .lock()
                    .unwrap()
                    .entry(id.get())
                    .or_insert_with(|| Arc::new(view_of(id.get())))
                    .clone();
                let off = rng.random_range(0..want.len() as u64 - 1);
                let len = rng.random_range(1..=(want.len() as u64 - off).min(4000)) as usize;
                let mut buf = vec![0u8; len];
                match store.read(Some(id), "v", off, &mut buf) {
                    Ok(()) => {
                        assert!(
                            buf[..] == want[off as usize..off as usize + len],
                            "PIT {id} at {off}+{len}"
                        );
                        reads += 1;
                        done_reads.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => assert_eq!(kind(&e), "NoSuchPit", "{e}"),
                }
            }
            reads
        }));
    }
    for _ in 0..150 {
        // Readers interleave with every commit and merge even on a loaded
        // machine (the expected views cost more as ids grow, so the number
        // of rounds stays fixed).
        std::thread::sleep(std::time::Duration::from_millis(1));
        let mut w = store.begin_pit().unwrap();
        let id = w.id().get();
        for (b, c) in writes_of(id) {
            match c {
                Some(s) => w.write_block("v", b, &pattern(BS, s)).unwrap(),
                None => w.write_zero_block("v", b).unwrap(),
            }
        }
        w.commit(None, common::CREATED.into()).unwrap();
        let pits = store.pits();
        if pits.len() > 5 {
            let victim: PitId = pits[(id % 4) as usize].id;
            store.remove_pit(victim).unwrap();
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while done_reads.load(Ordering::Relaxed) <= 100 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 100, "only {reads} reads");
    let newest = store.newest().unwrap().id;
    let mut all = vec![0u8; NBLOCKS as usize * BS];
    store.read(Some(newest), "v", 0, &mut all).unwrap();
    assert!(all == view_of(newest.get()));
    assert!(store.pits()[0].id.get() > 1, "retention ran");
}
