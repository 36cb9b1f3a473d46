//! Failover and reverse through the fake links (both ways): test failover
//! beside running cycles, planned failover after the final PIT, unplanned
//! failover from the newest PIT, and reverse with and without writes the
//! old primary made while isolated (split brain).

use super::*;
use crate::model::{FailoverRun, ReverseRequest};
use crate::wire::kinds;
use offsite_catalog::Role;

fn run(test: bool, pit: Option<u64>, force: bool) -> FailoverRun {
    FailoverRun {
        pit: pit.map(|p| p.to_string()),
        at: None,
        test,
        force,
        skip_vm_hooks: true,
    }
}

/// BLAKE3 of every block of volume `name` at site `b`.
fn image_at_b(p: &Pair, name: &str) -> Vec<[u8; 32]> {
    hash_volume(&p.b.site.volume(name).expect("the volume at b"))
}

/// BLAKE3 of every block of what site `b` serves over NBD as `export`.
fn served_at_b(p: &Pair, export: &str) -> Option<Vec<[u8; 32]>> {
    use offsite_nbd::ExportRegistry;
    let device = p.b.site.lookup(export)?.device;
    let mut buf = vec![0u8; BS];
    Some(
        (0..device.size() / BS as u64)
            .map(|b| {
                device
                    .read_at(&mut buf, b * BS as u64)
                    .expect("reading the export");
                *blake3::hash(&buf).as_bytes()
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_test_failover_reads_the_chosen_pit_while_cycles_go_on() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 0, 1);
    p.replicating("g", &["v"], 10).await;
    let first = *p.replica_pits("g").await.last().unwrap();
    write(&v, 0, 2);
    write(&v, 5, 2);
    p.cycle("g").await.unwrap();
    let r =
        p.b.failover_run("g", &run(true, Some(first), false))
            .await
            .unwrap();
    assert_eq!(r.pit, first);
    assert_eq!(r.volumes.len(), 1);
    let chosen = p.replica_image("g", first).await;
    let export = &r.volumes[0].export;
    assert_eq!(served_at_b(&p, export).unwrap(), chosen[0]);
    // Replication goes on beside the test.
    write(&v, 7, 3);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
    assert_eq!(
        served_at_b(&p, export).unwrap(),
        chosen[0],
        "the test's copy stays"
    );
    assert_eq!(p.row(&p.b, "g").last_drill_at, None, "not drilled yet");
    p.b.stop_test("g").await.unwrap();
    assert_eq!(served_at_b(&p, export), None, "the clone is gone");
    // The drill is recorded where it ran, and the primary learns it with
    // the next commit's answer, so both overviews show its age.
    let drilled = p.row(&p.b, "g").last_drill_at.expect("drill recorded");
    assert_eq!(p.row(&p.a, "g").last_drill_at, None);
    write(&v, 9, 4);
    p.cycle("g").await.unwrap();
    assert_eq!(p.row(&p.a, "g").last_drill_at, Some(drilled.clone()));
    let listed = p.a.group_list().await.unwrap();
    assert_eq!(listed[0].last_drill_at, Some(drilled));
}

#[tokio::test]
async fn a_planned_failover_promotes_the_final_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 4, 4);
    let prepared = p.a.failover_prepare("g").await.unwrap();
    assert_eq!(p.row(&p.a, "g").state, GroupState::PreparedForFailover);
    let newest = *p.replica_pits("g").await.last().unwrap();
    assert_eq!(prepared.pit, newest);
    assert_eq!(p.replica_image("g", newest).await, p.primary_image("g"));
    let r =
        p.b.failover_run("g", &run(false, None, false))
            .await
            .unwrap();
    assert_eq!(r.mode, "planned");
    assert_eq!(r.pit, newest);
    assert_eq!(vec![image_at_b(&p, "v")], p.primary_image("g"));
    assert_eq!(p.row(&p.b, "g").state, GroupState::FailedOver);
}

#[tokio::test]
async fn a_reverted_preparation_lets_writes_and_cycles_go_on() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    p.a.failover_prepare("g").await.unwrap();
    assert!(
        v.write_at(&[1; BS], 0, false).is_err(),
        "a prepared primary takes no writes"
    );
    p.a.failover_revert("g").await.unwrap();
    assert_eq!(p.row(&p.a, "g").state, GroupState::Replicating);
    assert!(p.to_b.delivered().contains(&kinds::GROUP_PREPARED));
    assert_eq!(p.row(&p.b, "g").state, GroupState::Replicating);
    write(&v, 0, 2);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn no_planned_failover_before_the_last_pit_is_shipped() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 4, 4);
    p.to_b.inject(Fault::DropAfterFrames(0));
    assert!(p.a.failover_prepare("g").await.is_err());
    assert_ne!(p.row(&p.a, "g").state, GroupState::PreparedForFailover);
    // The replica still sees a running primary: no failover without force.
    let e =
        p.b.failover_run("g", &run(false, None, false))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(p.row(&p.b, "g").state, GroupState::Replicating);
}

#[tokio::test]
async fn a_failover_is_refused_while_the_primary_is_down_unless_forced() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 1, 1);
    p.cycle("g").await.unwrap();
    p.to_a.set_down(true);
    let e =
        p.b.failover_run("g", &run(false, None, false))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    assert_eq!(p.row(&p.b, "g").state, GroupState::Replicating);
}

#[tokio::test]
async fn an_unplanned_failover_promotes_the_newest_committed_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 1, 1);
    p.cycle("g").await.unwrap();
    write(&v, 2, 2);
    let newest = p.cycle("g").await.unwrap();
    let at_newest = p.primary_image("g");
    // Written, then lost with the link before its commit.
    write(&v, 3, 3);
    p.to_b.inject(Fault::DropBefore(kinds::PIT_COMMIT));
    assert!(p.cycle("g").await.is_err());
    p.to_a.set_down(true);
    let r =
        p.b.failover_run("g", &run(false, None, true))
            .await
            .unwrap();
    assert_eq!(r.mode, "unplanned");
    assert_eq!(r.pit, newest);
    assert_eq!(vec![image_at_b(&p, "v")], at_newest);
}

#[tokio::test]
async fn reverse_after_a_planned_failover_replicates_back() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 4, 4);
    p.a.failover_prepare("g").await.unwrap();
    p.b.failover_run("g", &run(false, None, false))
        .await
        .unwrap();
    let promoted = p.b.site.volume("v").unwrap();
    write(&promoted, 9, 9);
    let r = p.b.reverse("g", &ReverseRequest::default()).await.unwrap();
    assert_eq!(
        r.split_brain.as_ref().and_then(|s| s.discarded_on.clone()),
        None
    );
    assert_eq!(p.row(&p.b, "g").role, Role::Primary);
    assert_eq!(p.row(&p.a, "g").role, Role::Replica);
    // a now keeps b's PITs: its newest is b's volume.
    let (_, store) = p.a.store("g").await.unwrap();
    let newest = store.newest().unwrap().id;
    assert_eq!(newest.get(), r.pit);
    let theirs = store.block_hashes(Some(newest), "v", 0..16).unwrap();
    assert_eq!(theirs, hash_volume(&promoted));
}

/// A group failed over unplanned while `a` wrote isolated from `b`.
async fn split_brain(p: &Pair) -> Arc<Volume> {
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 1, 1);
    p.to_b.inject(Fault::DropBefore(kinds::PIT_BEGIN));
    assert!(p.cycle("g").await.is_err());
    write(&v, 2, 2);
    assert!(!v.isolated_blocks().is_empty());
    p.to_a.set_down(true);
    p.b.failover_run("g", &run(false, None, true))
        .await
        .unwrap();
    let promoted = p.b.site.volume("v").unwrap();
    write(&promoted, 7, 7);
    p.to_a.set_down(false);
    promoted
}

#[tokio::test]
async fn reverse_refuses_a_split_brain_until_a_side_is_chosen() {
    let p = Pair::new();
    split_brain(&p).await;
    let e =
        p.b.reverse("g", &ReverseRequest::default())
            .await
            .unwrap_err();
    assert!(e.to_string().contains("split brain"), "{e}");
    assert_eq!(p.row(&p.b, "g").state, GroupState::FailedOver);
    assert_eq!(p.row(&p.a, "g").role, Role::Primary);
}

#[tokio::test]
async fn a_dry_run_reverse_shows_both_sides_and_changes_nothing() {
    let p = Pair::new();
    split_brain(&p).await;
    let r =
        p.b.reverse(
            "g",
            &ReverseRequest {
                discard_changes_on: None,
                dry_run: true,
            },
        )
        .await
        .unwrap();
    let split = r.split_brain.unwrap();
    assert_eq!(split.sites.len(), 2);
    assert!(split.sites.iter().all(|s| s.written_bytes > 0), "{split:?}");
    assert_eq!(p.row(&p.b, "g").state, GroupState::FailedOver);
}

#[tokio::test]
async fn reverse_discarding_the_old_primarys_writes_keeps_the_promoted_data() {
    let p = Pair::new();
    let promoted = split_brain(&p).await;
    let r =
        p.b.reverse(
            "g",
            &ReverseRequest {
                discard_changes_on: Some("a".into()),
                dry_run: false,
            },
        )
        .await
        .unwrap();
    assert!(r.rolled_back_bytes > 0, "a's isolated write is rolled back");
    assert_eq!(p.row(&p.a, "g").role, Role::Replica);
    let (_, store) = p.a.store("g").await.unwrap();
    let newest = store.newest().unwrap().id;
    let theirs = store.block_hashes(Some(newest), "v", 0..16).unwrap();
    assert_eq!(theirs, hash_volume(&promoted));
}
