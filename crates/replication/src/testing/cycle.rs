//! Delta cycles driven through the fake link: what a cycle ships, what a
//! lost link, a refusal or a lost answer leave behind, retention, and a
//! cut taken while writes go on.

use proptest::prelude::*;

use super::*;
use crate::wire::{self, kinds};

/// Blocks of `v` written after its last shipped cut.
fn dirty(v: &Volume) -> Vec<u32> {
    v.tracker().snapshot().iter().collect()
}

#[tokio::test]
async fn a_cycle_ships_exactly_the_changed_blocks_and_commits_one_pit() {
    let p = Pair::new();
    let v = p.volume("v", 64);
    write(&v, 3, 1);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    let frames = p.to_b.frames();
    write(&v, 10, 2);
    write(&v, 11, 3);
    write(&v, 40, 4);
    let pit = p.cycle("g").await.unwrap();
    let after = p.replica_pits("g").await;
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(after.last(), Some(&pit));
    // Two runs (10-11 and 40), read by one task: one batch of two records.
    assert_eq!(p.to_b.frames() - frames, 1);
    let (_, store) = p.b.store("g").await.unwrap();
    let previous = offsite_replica_store::PitId::new(before[before.len() - 1]).unwrap();
    assert_eq!(store.blocks_after(previous, "v").unwrap(), [10, 11, 40]);
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
    assert!(dirty(&v).is_empty());
}

/// A replica built before record batches answers `PIT_BEGIN` with an
/// empty body: it is sent one run per batch, as before, and ends up with
/// the same PIT.
#[tokio::test]
async fn an_older_replica_is_sent_one_run_per_batch() {
    let p = Pair::new();
    let v = p.volume("v", 64);
    write(&v, 3, 1);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    for (b, byte) in [(10, 2), (11, 3), (40, 4), (50, 0)] {
        write(&v, b, byte);
    }
    p.to_b.inject(Fault::OldAnswer(kinds::PIT_BEGIN));
    let frames = p.to_b.frames();
    let pit = p.cycle("g").await.unwrap();
    // Three runs (10-11, 40, and 50 of zeroes): three batch frames.
    assert_eq!(p.to_b.frames() - frames, 3);
    let (_, store) = p.b.store("g").await.unwrap();
    let previous = offsite_replica_store::PitId::new(before[before.len() - 1]).unwrap();
    assert_eq!(store.blocks_after(previous, "v").unwrap(), [10, 11, 40, 50]);
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
    // The next cycle asks again, and gets record batches.
    write(&v, 20, 5);
    write(&v, 30, 6);
    let frames = p.to_b.frames();
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.to_b.frames() - frames, 1);
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

/// A record batch that fails its checksums is refused before any of its
/// blocks lands in the PIT, and the transfer ends.
#[tokio::test]
async fn a_corrupt_record_batch_is_refused() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let row = p.row(&p.b, "g");
    let mut transfer = crate::replica_side::Transfer::Idle;
    let begun =
        p.b.dispatch(
            &row.partner,
            kinds::PIT_BEGIN,
            crate::control::Rpc::encode(&wire::PitBegin::new("g")),
            &mut transfer,
        )
        .await;
    assert!(begun.0);
    assert_eq!(
        <wire::PitBegun as crate::control::Reply>::decode(&begun.1).unwrap(),
        wire::PitBegun {
            record_batches: true
        }
    );
    let data = vec![7u8; BS];
    let mut payload = Vec::new();
    for (seq, first) in [(1, 2u64), (2, 9)] {
        let rec = offsite_replica_store::LogRecord {
            seq,
            volume: 0,
            first,
            count: 1,
            data: Some(&data),
        };
        offsite_replica_store::encode_record(&rec, &mut payload);
    }
    assert!(wire::is_record_batch(&payload));
    p.b.apply_batch(&payload, &mut transfer).unwrap();
    // One bit flipped in the second record's data.
    let at = payload.len() - 100;
    payload[at] ^= 1;
    let e = p.b.apply_batch(&payload, &mut transfer).unwrap_err();
    assert!(e.message.contains("checksum"), "{}", e.message);
    drop(v);
}

#[tokio::test]
async fn a_cycle_speaks_begin_batches_commit_on_one_link() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let (dials, seen) = (p.to_b.dials(), p.to_b.delivered().len());
    write(&v, 0, 9);
    p.cycle("g").await.unwrap();
    assert_eq!(p.to_b.dials() - dials, 1);
    assert_eq!(
        p.to_b.delivered()[seen..],
        [kinds::PIT_BEGIN, kinds::PIT_COMMIT]
    );
}

#[tokio::test]
async fn a_cycle_with_nothing_changed_commits_an_empty_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 1, 1);
    p.replicating("g", &["v"], 10).await;
    let (frames, before) = (p.to_b.frames(), p.replica_pits("g").await);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.to_b.frames(), frames, "no block to ship");
    assert_eq!(p.replica_pits("g").await.len(), before.len() + 1);
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn zeroed_blocks_travel_without_data() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    for b in 0..4 {
        write(&v, b, 7);
    }
    p.replicating("g", &["v"], 10).await;
    v.write_zeroes(0, 4 * BS as u64, false).unwrap();
    let row = p.row(&p.a, "g");
    let (pit, _) = p.a.cycle(&row, None, false).await.unwrap();
    assert_eq!(pit.bytes, 0, "a run of zeroes carries no payload");
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_cycle_of_several_volumes_commits_one_pit_for_all() {
    let p = Pair::new();
    let (v, w) = (p.volume("v", 16), p.volume("w", 32));
    p.replicating("g", &["v", "w"], 10).await;
    let before = p.replica_pits("g").await.len();
    write(&v, 2, 1);
    write(&w, 30, 2);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_pits("g").await.len(), before + 1);
    let image = p.replica_image("g", pit).await;
    assert_eq!(image.len(), 2);
    assert_eq!(image, p.primary_image("g"));
}

#[tokio::test]
async fn a_link_lost_mid_batch_commits_nothing_and_the_next_cycle_resends() {
    let p = Pair::new();
    let v = p.volume("v", 64);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    // Four runs, so four frames to a replica that takes one run per
    // batch: the link goes after the second.
    for b in [1, 5, 9, 13] {
        write(&v, b, b as u8);
    }
    p.to_b.inject(Fault::OldAnswer(kinds::PIT_BEGIN));
    p.to_b.inject(Fault::DropAfterFrames(2));
    let e = p.cycle("g").await.unwrap_err();
    assert!(matches!(e, ReplError::Transport { .. }), "{e}");
    assert_eq!(p.replica_pits("g").await, before, "no PIT from half a cut");
    assert_eq!(dirty(&v), [1, 5, 9, 13], "the tracker keeps every block");
    let row = p.row(&p.a, "g");
    assert!(row.last_error.unwrap().starts_with("cycle failed"));
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
    assert_eq!(p.row(&p.a, "g").last_error, None);
}

#[tokio::test]
async fn a_failed_cycle_isolates_writes_until_the_next_commit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 1, 1);
    p.to_b.inject(Fault::DropBefore(kinds::PIT_BEGIN));
    assert!(p.cycle("g").await.is_err());
    // Written while the replica may be taking over: tracked apart.
    write(&v, 2, 2);
    assert_eq!(v.isolated_blocks().iter().collect::<Vec<_>>(), [2]);
    p.cycle("g").await.unwrap();
    assert!(v.isolated_blocks().is_empty());
}

#[tokio::test]
async fn an_unreachable_partner_fails_the_cycle_and_records_it() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 4, 4);
    p.to_b.inject(Fault::Unreachable);
    let e = p.cycle("g").await.unwrap_err();
    assert!(e.is_unreachable(), "{e}");
    let cycles = p.a.site.groups().cycles("g").unwrap();
    let last = cycles.last().unwrap();
    assert!(last.error.is_some(), "{last:?}");
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_refused_commit_keeps_the_blocks_for_the_next_cycle() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    write(&v, 6, 6);
    p.to_b.inject(Fault::Refuse(
        kinds::PIT_COMMIT,
        RemoteError::Busy("a transfer is already running".into()),
    ));
    let e = p.cycle("g").await.unwrap_err();
    assert_eq!(e.refusal().map(RemoteError::code), Some("busy"));
    assert_eq!(p.replica_pits("g").await, before);
    assert_eq!(dirty(&v), [6]);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_full_replica_store_refuses_with_its_own_code() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 6, 6);
    p.to_b.inject(Fault::Refuse(
        kinds::PIT_COMMIT,
        RemoteError::StorageFull("the replica store is full".into()),
    ));
    let e = p.cycle("g").await.unwrap_err();
    assert_eq!(e.refusal().map(RemoteError::code), Some("storage_full"));
    // A full store is still the replica: no one asked whether it took over.
    assert!(!p.to_b.delivered().contains(&kinds::GROUP_QUERY));
    assert_eq!(p.row(&p.a, "g").state, GroupState::Replicating);
}

#[tokio::test]
async fn a_lost_commit_answer_is_made_good_by_the_next_cycle() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    write(&v, 3, 3);
    p.to_b.inject(Fault::LoseAnswer(kinds::PIT_COMMIT));
    assert!(p.cycle("g").await.is_err());
    // The replica committed; the primary could not know.
    let committed = p.replica_pits("g").await;
    assert_eq!(committed.len(), before.len() + 1);
    assert_eq!(dirty(&v), [3], "the primary ships the blocks again");
    write(&v, 4, 4);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
    // Both catalogs agree on the PITs again.
    let rows: Vec<u64> =
        p.a.site
            .groups()
            .pits("g")
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
    assert_eq!(rows, p.replica_pits("g").await);
}

#[tokio::test]
async fn a_duplicated_commit_makes_one_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    write(&v, 8, 8);
    p.to_b.inject(Fault::Duplicate(kinds::PIT_COMMIT));
    // The second copy finds no PIT under way and is refused; the first
    // committed the PIT.
    let e = p.cycle("g").await.unwrap_err();
    assert_eq!(e.refusal().map(RemoteError::code), Some("conflict"));
    let after = p.replica_pits("g").await;
    assert_eq!(after.len(), before.len() + 1);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_pits("g").await.len(), before.len() + 2);
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_duplicated_begin_is_refused_and_the_next_cycle_commits() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let before = p.replica_pits("g").await;
    write(&v, 9, 9);
    p.to_b.inject(Fault::Duplicate(kinds::PIT_BEGIN));
    // One PIT is written at a time: the copy finds the first open.
    let e = p.cycle("g").await.unwrap_err();
    assert!(
        e.to_string().contains("another PIT is being written"),
        "{e}"
    );
    assert_eq!(p.replica_pits("g").await, before);
    // The lost link discarded the open PIT: the next one starts.
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

/// The store's PIT writer held for a moment elsewhere (a stream that just
/// ended, sealing its log on its own connection) delays the next cycle's
/// begin; it does not refuse it.
#[tokio::test]
async fn a_begin_waits_for_a_writer_held_for_a_moment() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 3, 3);
    let (_, store) = p.b.store("g").await.expect("the replica store");
    let held = store.begin_pit().expect("the store's writer");
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        held.abort();
    });
    let pit = p.cycle("g").await.expect("the cycle waits for the writer");
    release.join().unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_slow_partner_only_delays_the_commit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 2, 2);
    p.to_b.inject(Fault::Delay(
        kinds::PIT_COMMIT,
        std::time::Duration::from_millis(20),
    ));
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.to_b.pending(), 0);
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn retention_keeps_the_newest_pits_after_each_commit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 3).await;
    let mut ids = Vec::new();
    for i in 0..5u8 {
        write(&v, u64::from(i), i + 1);
        ids.push(p.cycle("g").await.unwrap());
    }
    let kept = p.replica_pits("g").await;
    assert_eq!(kept, ids[2..], "keep 3: the three newest");
    let rows: Vec<u64> =
        p.a.site
            .groups()
            .pits("g")
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
    assert_eq!(rows, kept, "the primary's catalog follows the replica");
    assert_eq!(p.replica_image("g", ids[4]).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_named_pit_outlives_retention() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 2).await;
    write(&v, 0, 1);
    let row = p.row(&p.a, "g");
    let (named, _) =
        p.a.cycle(&row, Some("before-upgrade".into()), false)
            .await
            .unwrap();
    for i in 1..5u8 {
        write(&v, u64::from(i), i);
        p.cycle("g").await.unwrap();
    }
    assert!(p.replica_pits("g").await.contains(&named.id));
    let rows = p.a.site.groups().pits("g").unwrap();
    let row = rows.iter().find(|r| r.id == named.id).unwrap();
    assert_eq!(row.name.as_deref(), Some("before-upgrade"));
}

#[tokio::test]
async fn a_released_pit_goes_with_the_next_retention() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 2).await;
    write(&v, 0, 1);
    let row = p.row(&p.a, "g");
    let (named, _) =
        p.a.cycle(&row, Some("keep-me".into()), false)
            .await
            .unwrap();
    for i in 1..3u8 {
        write(&v, u64::from(i), i);
        p.cycle("g").await.unwrap();
    }
    assert!(p.replica_pits("g").await.contains(&named.id));
    p.a.pit_release("g", "keep-me").await.unwrap();
    assert!(p.to_b.delivered().contains(&kinds::PIT_RELEASE));
    write(&v, 9, 9);
    p.cycle("g").await.unwrap();
    assert!(!p.replica_pits("g").await.contains(&named.id));
    assert_eq!(p.replica_pits("g").await.len(), 2);
}

#[tokio::test]
async fn a_sync_asked_at_the_replica_is_run_by_the_primary() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 11, 11);
    // b asks a (SYNC), a's runner ships to b: both links in one call.
    let done = p.b.sync_group("g", None, true).await.unwrap();
    assert_eq!(p.to_a.delivered(), [kinds::SYNC]);
    let pit = done.pit.unwrap();
    assert_eq!(p.replica_pits("g").await.last(), Some(&pit.id));
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
}

#[tokio::test]
async fn writes_after_the_cut_go_to_the_next_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 1, 1);
    write(&v, 2, 1);
    let at_cut = p.primary_image("g");
    let gate = Arc::new(Gate::default());
    p.to_b.inject(Fault::Hold(kinds::PIT_BEGIN, gate.clone()));
    let row = p.row(&p.a, "g");
    let a = p.a.clone();
    let cycle = tokio::spawn(async move { a.cycle(&row, None, false).await });
    // The cut is taken: overwrite a shipped block and write a new one.
    gate.reached().await;
    write(&v, 1, 2);
    write(&v, 5, 2);
    gate.open();
    let (first, _) = cycle.await.unwrap().unwrap();
    assert_eq!(p.replica_image("g", first.id).await, at_cut);
    assert_eq!(dirty(&v), [1, 5]);
    let second = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", second).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_sync_through_the_runner_commits_the_primary_image() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 12, 12);
    let done = p.a.sync_group("g", None, true).await.unwrap();
    let pit = done.pit.unwrap();
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
}

#[tokio::test]
async fn pause_refuses_a_sync_and_resume_allows_it_again() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    let status = p.a.pause_group("g", true).await.unwrap();
    assert_eq!(status.state, GroupState::Paused);
    write(&v, 3, 3);
    let dials = p.to_b.dials();
    let e = p.a.sync_group("g", None, true).await.unwrap_err();
    assert!(e.to_string().contains("group resume"), "{e}");
    assert_eq!(p.to_b.dials(), dials, "no link while paused");
    let before = p.replica_pits("g").await;
    let status = p.a.pause_group("g", false).await.unwrap();
    assert_eq!(status.state, GroupState::Replicating);
    let pit = p.a.sync_group("g", None, true).await.unwrap().pit.unwrap();
    assert_eq!(p.replica_pits("g").await.len(), before.len() + 1);
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
}

/// One step of a random history of a group.
#[derive(Debug, Clone)]
enum Step {
    Write {
        block: u64,
        byte: u8,
    },
    Cycle,
    /// A cycle whose link goes after this many batch frames.
    CycleDropped(u64),
    /// A cycle whose commit is answered but the answer lost.
    CycleAnswerLost,
    CycleRefused,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0u64..24, 1u8..=255).prop_map(|(block, byte)| Step::Write { block, byte }),
        2 => Just(Step::Cycle),
        1 => (0u64..3).prop_map(Step::CycleDropped),
        1 => Just(Step::CycleAnswerLost),
        1 => Just(Step::CycleRefused),
    ]
}

/// Whatever the order of writes, cycles, lost links, lost answers and
/// refusals: every committed PIT is the primary's image at its cut, every
/// PIT in the store reads back whole, and a last clean cycle brings the
/// replica level with the primary. (One pair of sites for every case, a
/// group of its own per case: the sites' set-up is most of a case's time.)
#[test]
fn every_committed_pit_is_the_image_at_its_cut() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = Pair::new();
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        ..ProptestConfig::default()
    });
    let history = proptest::collection::vec(step(), 1..14);
    let result = runner.run(&history, |steps| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (g, vname) = (format!("g{n}"), format!("v{n}"));
        rt.block_on(async {
            let v = p.volume(&vname, 24);
            p.replicating(&g, &[vname.as_str()], 50).await;
            for s in steps {
                let image = p.primary_image(&g);
                let fault = match s {
                    Step::Write { block, byte } => {
                        write(&v, block, byte);
                        continue;
                    }
                    Step::Cycle => None,
                    Step::CycleDropped(n) => Some(Fault::DropAfterFrames(n)),
                    Step::CycleAnswerLost => Some(Fault::LoseAnswer(kinds::PIT_COMMIT)),
                    Step::CycleRefused => Some(Fault::Refuse(
                        kinds::PIT_COMMIT,
                        RemoteError::Busy("busy".into()),
                    )),
                };
                if let Some(f) = fault.clone() {
                    p.to_b.inject(f);
                }
                let r = p.cycle(&g).await;
                // A drop scripted past the cut's last frame never fires.
                if p.to_b.pending() > 0 {
                    prop_assert!(r.is_ok());
                    let _ = p.to_b.take(|_| true);
                }
                if let Ok(pit) = r {
                    prop_assert_eq!(p.replica_image(&g, pit).await, image);
                } else if matches!(fault, Some(Fault::LoseAnswer(_))) {
                    // Committed at the replica all the same.
                    let newest = *p.replica_pits(&g).await.last().unwrap();
                    prop_assert_eq!(p.replica_image(&g, newest).await, image);
                }
            }
            let (_, store) = p.b.store(&g).await.unwrap();
            for pit in store.pits() {
                prop_assert!(
                    store.verify_pit(pit.id).is_ok(),
                    "PIT {} reads back",
                    pit.id.get()
                );
            }
            let last = p.cycle(&g).await.unwrap();
            prop_assert_eq!(p.replica_image(&g, last).await, p.primary_image(&g));
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
