//! Initial replication through the fake link: the full copy, its resume
//! after a lost link, a seeded start, and writes made while it runs.

use proptest::prelude::*;

use super::*;
use crate::wire::kinds;

#[tokio::test]
async fn initial_replication_copies_the_data_and_the_first_pit_matches() {
    let p = Pair::new();
    let v = p.volume("v", 32);
    for b in [0, 1, 2, 20] {
        write(&v, b, b as u8 + 1);
    }
    p.group("g", &["v"], 10).await;
    p.begin_initial("g").await.unwrap();
    let row = p.row(&p.a, "g");
    assert_eq!(row.state, GroupState::Replicating);
    assert_eq!(row.volumes[0].initial_done_bytes, 32 * BS as u64);
    // Only the data travels: runs 0-2 and 20.
    assert_eq!(p.to_b.frames(), 2);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn initial_replication_resumes_after_a_lost_link() {
    let p = Pair::new();
    let (v, w) = (p.volume("v", 16), p.volume("w", 16));
    write(&v, 1, 1);
    write(&w, 2, 2);
    p.group("g", &["v", "w"], 10).await;
    // v's batch arrives and v is checkpointed; w's batch is lost.
    p.to_b.inject(Fault::DropAfterFrames(1));
    let e = p.begin_initial("g").await.unwrap_err();
    assert!(matches!(e, ReplError::Transport { .. }), "{e}");
    let row = p.row(&p.a, "g");
    assert_eq!(row.state, GroupState::InitialReplication);
    assert_eq!(row.volumes[0].initial_done_bytes, 16 * BS as u64);
    assert_eq!(row.volumes[1].initial_done_bytes, 0);
    let frames = p.to_b.frames();
    p.begin_initial("g").await.unwrap();
    assert_eq!(p.to_b.frames() - frames, 1, "only w is copied again");
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_refused_start_leaves_the_group_to_retry() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 0, 1);
    p.group("g", &["v"], 10).await;
    p.to_b.inject(Fault::Refuse(
        kinds::BASE_BEGIN,
        RemoteError::Conflict("a transfer of group g is already running".into()),
    ));
    let e = p.begin_initial("g").await.unwrap_err();
    assert_eq!(e.refusal().map(RemoteError::code), Some("conflict"));
    assert_eq!(p.row(&p.a, "g").state, GroupState::InitialReplication);
    p.begin_initial("g").await.unwrap();
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_seeded_start_ships_only_the_blocks_that_differ() {
    let p = Pair::new();
    let v = p.volume("v", 32);
    for b in 0..32 {
        write(&v, b, 5);
    }
    p.group("g", &["v"], 10).await;
    let seed = p.dir().join("seed");
    p.a.export_seed("g", &seed.to_string_lossy()).await.unwrap();
    // The seed travels by courier; meanwhile two blocks change.
    write(&v, 3, 6);
    write(&v, 17, 7);
    p.begin_initial_from("g", Some(seed.to_string_lossy().into_owned()))
        .await
        .unwrap();
    assert!(p.to_b.delivered().contains(&kinds::SEED_LOAD));
    assert!(p.to_b.delivered().contains(&kinds::HASHES));
    assert_eq!(p.to_b.frames(), 2, "blocks 3 and 17 only");
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn writes_during_initial_replication_reach_the_first_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 0, 1);
    p.group("g", &["v"], 10).await;
    let gate = Arc::new(Gate::default());
    p.to_b.inject(Fault::Hold(kinds::BASE_SYNC, gate.clone()));
    let pair = &p;
    let copy = async move { pair.begin_initial("g").await };
    let write_meanwhile = async {
        gate.reached().await;
        write(&v, 0, 2);
        write(&v, 9, 3);
        gate.open();
    };
    let (copied, ()) = tokio::join!(copy, write_meanwhile);
    copied.unwrap();
    assert_eq!(
        v.tracker().snapshot().iter().collect::<Vec<_>>(),
        [0, 9],
        "tracked for the first cycle"
    );
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_group_is_created_on_both_sites_through_the_link() {
    let p = Pair::new();
    p.volume("v", 16);
    let row = p.group("g", &["v"], 7).await;
    assert_eq!(row.state, GroupState::ReadyForInitialReplication);
    assert_eq!(p.to_b.delivered(), [kinds::GROUP_CREATE]);
    let replica = p.row(&p.b, "g");
    assert_eq!(replica.role, offsite_catalog::Role::Replica);
    assert_eq!(replica.partner, "a");
    assert_eq!(replica.keep, 7);
}

#[tokio::test]
async fn a_group_the_replica_refuses_is_not_recorded() {
    let p = Pair::new();
    p.volume("v", 16);
    p.to_b.inject(Fault::Refuse(
        kinds::GROUP_CREATE,
        RemoteError::Unauthorized("site b accepts no replicas from a".into()),
    ));
    let e =
        p.a.create_group(CreateGroup {
            name: "g".into(),
            partner: "b".into(),
            vms: Vec::new(),
            volumes: vec!["v".into()],
            mode: "async".into(),
            rpo_secs: 60,
            keep: 3,
            bandwidth_bytes_per_sec: None,
            compress: None,
            security_tag: None,
            on_link_loss: None,
            suspend_timeout_secs: None,
            app_consistent_every_secs: None,
            checkpoint_interval_ms: None,
            journal_history_secs: None,
            journal_max_bytes: None,
            encrypt: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.refusal().map(RemoteError::code), Some("unauthorized"));
    assert!(p.a.site.groups().get("g").is_err());
}

#[tokio::test]
async fn the_authorization_check_is_answered_by_the_replica() {
    let p = Pair::new();
    let grant = p.a.authz_check("b", None).await.unwrap();
    assert_eq!(grant.partner, "b");
    assert!(grant.storage_location.ends_with("b-replicas"), "{grant:?}");
    p.to_b.inject(Fault::Refuse(
        kinds::AUTHZ_CHECK,
        RemoteError::Unauthorized("no entry admits a".into()),
    ));
    let e = p.a.authz_check("b", None).await.unwrap_err();
    assert_eq!(e.refusal().map(RemoteError::code), Some("unauthorized"));
}

/// However often the link goes during initial replication (after any
/// number of batches, or before or after any checkpoint), attempts resume
/// from the checkpoints and the first PIT is the primary's image. (One
/// pair of sites for every case, a group of its own per case.)
#[test]
fn initial_replication_survives_any_losses() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = Pair::new();
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 6,
        ..ProptestConfig::default()
    });
    let drops = proptest::collection::vec(
        prop_oneof![
            (0u64..4).prop_map(Fault::DropAfterFrames),
            Just(Fault::DropBefore(kinds::BASE_SYNC)),
            Just(Fault::LoseAnswer(kinds::BASE_SYNC)),
            Just(Fault::DropBefore(kinds::BASE_BEGIN)),
        ],
        0..4,
    );
    let blocks = proptest::collection::vec((0usize..3, 0u64..16), 1..10);
    let result = runner.run(&(drops, blocks), |(drops, blocks)| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let g = format!("g{n}");
        let names = [0, 1, 2].map(|i| format!("v{n}-{i}"));
        rt.block_on(async {
            let vols = names.each_ref().map(|name| p.volume(name, 16));
            for (i, (vol, block)) in blocks.iter().enumerate() {
                write(&vols[*vol], *block, i as u8 + 1);
            }
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            p.group(&g, &names, 10).await;
            for d in drops {
                p.to_b.inject(d);
            }
            // A lost link fails one attempt; the script runs out.
            let mut attempts = 0;
            while let Err(e) = p.begin_initial(&g).await {
                attempts += 1;
                prop_assert!(attempts <= 4, "still failing: {}", e);
            }
            // A drop scripted past the last batch never fired.
            while p.to_b.take(|_| true).is_some() {}
            prop_assert_eq!(p.row(&p.a, &g).state, GroupState::Replicating);
            let pit = p.cycle(&g).await.unwrap();
            prop_assert_eq!(p.replica_image(&g, pit).await, p.primary_image(&g));
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
