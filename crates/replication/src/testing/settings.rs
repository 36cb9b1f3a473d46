//! Changes of a group that both sites must agree on, through the fake
//! link: settings changed at the replica first, and teardown.

use super::*;
use crate::model::SetGroup;
use crate::wire::kinds;

#[tokio::test]
async fn a_new_retention_reaches_the_replica_first_and_applies_at_the_next_commit() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    for i in 0..4u8 {
        write(&v, u64::from(i), i + 1);
        p.cycle("g").await.unwrap();
    }
    assert_eq!(p.replica_pits("g").await.len(), 5);
    let req = SetGroup {
        keep: Some(2),
        ..SetGroup::default()
    };
    p.a.set_group("g", &req).await.unwrap();
    assert!(p.to_b.delivered().contains(&kinds::GROUP_SET_MODE));
    assert_eq!((p.row(&p.a, "g").keep, p.row(&p.b, "g").keep), (2, 2));
    write(&v, 9, 9);
    p.cycle("g").await.unwrap();
    assert_eq!(p.replica_pits("g").await.len(), 2);
}

#[tokio::test]
async fn a_change_the_replica_refuses_changes_neither_site() {
    let p = Pair::new();
    p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    p.to_b.inject(Fault::Refuse(
        kinds::GROUP_SET_MODE,
        RemoteError::Conflict("group g is failing over".into()),
    ));
    let req = SetGroup {
        keep: Some(2),
        rpo_secs: Some(120),
        ..SetGroup::default()
    };
    assert!(p.a.set_group("g", &req).await.is_err());
    let (a, b) = (p.row(&p.a, "g"), p.row(&p.b, "g"));
    assert_eq!((a.keep, a.rpo_secs), (10, 60));
    assert_eq!((b.keep, b.rpo_secs), (10, 60));
}

#[tokio::test]
async fn teardown_at_the_primary_removes_the_group_on_both_sites() {
    let p = Pair::new();
    p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    p.a.teardown("g", false, false).await.unwrap();
    assert!(p.to_b.delivered().contains(&kinds::GROUP_DELETE));
    assert!(p.a.site.groups().get("g").is_err());
    assert!(p.b.site.groups().get("g").is_err());
    // The volume stays, free for another group.
    assert!(p.a.site.groups().of_volume("v").unwrap().is_none());
}

#[tokio::test]
async fn teardown_with_the_partner_down_needs_force_and_then_forgets_here_only() {
    let p = Pair::new();
    p.volume("v", 16);
    p.replicating("g", &["v"], 10).await;
    p.to_b.set_down(true);
    assert!(p.a.teardown("g", false, false).await.is_err());
    assert!(p.a.site.groups().get("g").is_ok(), "nothing forgotten");
    p.a.teardown("g", true, false).await.unwrap();
    assert!(p.a.site.groups().get("g").is_err());
    assert!(p.b.site.groups().get("g").is_ok(), "b never heard of it");
}
