//! A group's runner (the task a daemon runs per primary group) driven
//! through the fake link: `group start` to the first PIT, a retry after a
//! lost link, and named syncs.

use std::time::Duration;

use super::*;
use crate::wire::kinds;

/// Waits until `done` holds of `a`'s row of group `g`, checking every
/// 10 ms (the runner works on its own task); fails after 30 s.
async fn until(p: &Pair, what: &str, done: impl Fn(&GroupRow) -> bool) {
    for _ in 0..3000 {
        if done(&p.row(&p.a, "g")) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("group g never got {what}: {:?}", p.row(&p.a, "g"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_group_reaches_its_first_pit_through_its_runner() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 2, 2);
    p.group("g", &["v"], 10).await;
    p.a.start_group("g", None).await.unwrap();
    until(&p, "replicating", |r| r.state == GroupState::Replicating).await;
    // The runner's first cycle follows initial replication at once.
    let pit = p.a.sync_group("g", None, true).await.unwrap().pit.unwrap();
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
    assert!(p.to_b.delivered().contains(&kinds::BASE_BEGIN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_retries_initial_replication_after_a_lost_link() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 2, 2);
    p.group("g", &["v"], 10).await;
    p.to_b.inject(Fault::DropBefore(kinds::BASE_BEGIN));
    let dials = p.to_b.dials();
    p.a.start_group("g", None).await.unwrap();
    while p.to_b.pending() > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A command ends the runner's back-off wait, if it is in one: it
    // retries now (`start` queued one too, so it may have already).
    p.a.wake_runner("g").await;
    until(&p, "replicating", |r| r.state == GroupState::Replicating).await;
    assert!(
        p.to_b.dials() >= dials + 2,
        "dialled again after the lost link"
    );
    let pit = p.a.sync_group("g", None, true).await.unwrap().pit.unwrap();
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
    assert_eq!(p.row(&p.a, "g").last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_sync_makes_a_named_pit_and_the_name_is_taken_after() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 3, 3);
    let pit =
        p.a.sync_named("g", Some("before-upgrade".into()), true)
            .await
            .unwrap()
            .pit
            .unwrap();
    assert_eq!(pit.name.as_deref(), Some("before-upgrade"));
    let (_, store) = p.b.store("g").await.unwrap();
    let named = store
        .pits()
        .into_iter()
        .find(|p| p.id.get() == pit.id)
        .unwrap();
    assert_eq!(named.name.as_deref(), Some("before-upgrade"));
    let e =
        p.a.sync_named("g", Some("before-upgrade".into()), true)
            .await
            .unwrap_err();
    assert!(e.to_string().contains("already has a PIT named"), "{e}");
}
