//! Lag and health over fake time: the clock both sites share moves by
//! hand, so "two RPOs without a PIT" is a step, not a wait.

use std::time::Duration;

use super::*;

/// `group status g` at `site`.
async fn status(site: &Replication) -> crate::model::GroupStatus {
    site.group_status("g").await.expect("the group's status")
}

#[tokio::test]
async fn lag_follows_the_clock_from_the_newest_pit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    assert_eq!(status(&p.a).await.lag_seconds, 0);
    p.clock.advance(Duration::from_secs(45));
    assert_eq!(status(&p.a).await.lag_seconds, 45);
    write(&v, 1, 1);
    p.cycle("g").await.unwrap();
    assert_eq!(status(&p.a).await.lag_seconds, 0, "a commit resets it");
}

#[tokio::test]
async fn health_goes_warning_past_the_rpo_and_critical_past_twice_it() {
    let p = Pair::new();
    p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    // RPO 60 s.
    let s = status(&p.a).await;
    assert_eq!((s.health.as_str(), s.health_reason), ("normal", None));
    p.clock.advance(Duration::from_secs(61));
    let s = status(&p.a).await;
    assert_eq!(s.health, "warning");
    assert!(s.health_reason.unwrap().contains("over the RPO"));
    p.clock.advance(Duration::from_secs(60));
    let s = status(&p.a).await;
    assert_eq!(s.health, "critical");
    assert!(s.health_reason.unwrap().contains("over twice the RPO"));
    p.cycle("g").await.unwrap();
    assert_eq!(status(&p.a).await.health, "normal");
}

#[tokio::test]
async fn a_failed_cycle_warns_until_one_succeeds() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 2, 2);
    p.to_b.inject(Fault::Unreachable);
    assert!(p.cycle("g").await.is_err());
    let s = status(&p.a).await;
    assert_eq!(s.health, "warning");
    assert!(s.health_reason.unwrap().starts_with("cycle failed"));
    assert!(s.last_error.is_some());
    p.cycle("g").await.unwrap();
    let s = status(&p.a).await;
    assert_eq!((s.health.as_str(), s.last_error), ("normal", None));
}

#[tokio::test]
async fn before_its_first_pit_a_groups_lag_is_its_age() {
    let p = Pair::new();
    p.volume("v", 16);
    p.group("g", &["v"], 10).await;
    p.clock.advance(Duration::from_secs(30));
    let lag = status(&p.a).await.lag_seconds;
    // Created on the catalog's own clock (the system's), read on the fake
    // one that started at the same second: 30 s, give or take the second
    // the creation took.
    assert!((29..=31).contains(&lag), "{lag}");
}

#[tokio::test]
async fn the_replica_sees_the_same_lag_from_its_pits() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    p.clock.advance(Duration::from_secs(200));
    let s = status(&p.b).await;
    assert_eq!(s.lag_seconds, 200);
    assert_eq!(s.health, "critical");
    write(&v, 3, 3);
    p.cycle("g").await.unwrap();
    let s = status(&p.b).await;
    assert_eq!((s.lag_seconds, s.health.as_str()), (0, "normal"));
}

#[tokio::test]
async fn group_list_reports_each_group_as_group_status_does() {
    // `group list` reads every group from one catalog trip; it must say
    // exactly what `group status` says of each, PIT or none.
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.volume("w", 16);
    p.replicating("g", &["v"], 10).await;
    write(&v, 2, 7);
    p.cycle("g").await.unwrap();
    p.group("idle", &["w"], 4).await;
    p.clock.advance(Duration::from_secs(61));
    for site in [&p.a, &p.b] {
        let listed = serde_json::to_value(site.group_list().await.unwrap()).unwrap();
        let one_by_one = serde_json::to_value(vec![
            site.group_status("g").await.unwrap(),
            site.group_status("idle").await.unwrap(),
        ])
        .unwrap();
        assert_eq!(listed, one_by_one);
    }
}
