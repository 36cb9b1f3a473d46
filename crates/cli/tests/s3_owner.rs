//! Two sites over one bucket prefix (issue 21): the group's owner record
//! (`GROUP/owner.json`) names the site that writes the prefix. After
//! `site attach-store` at a third site took the prefix over, the old
//! replica site's next cycle fails with an error naming the new owner and
//! what to do, its group's `last_error` says so, and nothing of the chain
//! in the bucket changes: the new site's PITs stay intact. Without Garage
//! the test prints why and passes, except under CI.

mod common;

use common::s3::*;
use common::*;
use offsite_testkit::qemu_io;

/// The owner record in the bucket: (site, epoch, how).
fn owner(objects: &dyn offsite_objects::ObjectStore) -> (String, u64, String) {
    let r: serde_json::Value = serde_json::from_slice(&objects.get("owner.json").unwrap()).unwrap();
    (
        r["site"].as_str().unwrap_or_default().to_string(),
        u(&r, "epoch"),
        r["how"].as_str().unwrap_or_default().to_string(),
    )
}

/// The keys of the store's chain (PITs, merge markers, base, store.meta):
/// what a second writer would change.
fn chain_keys(objects: &dyn offsite_objects::ObjectStore) -> Vec<(String, u64)> {
    let mut keys: Vec<(String, u64)> = objects
        .list("")
        .unwrap()
        .into_iter()
        .filter(|o| {
            ["pits/", "merging/", "base/", "store.meta"]
                .iter()
                .any(|p| o.key.starts_with(p))
        })
        .map(|o| (o.key, o.size))
        .collect();
    keys.sort();
    keys
}

#[test]
fn the_old_replica_site_stops_writing_once_another_site_attached_the_prefix() {
    let Some((cluster, a, b)) = s3_pair_or_skip(&["qemu-io"]) else {
        return;
    };
    start_s3_group(&a, "g", &[("d0", "16M")], &["--keep", "3"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    sync_pit(&a, "g", &[]);
    qemu_io(&a.url("d0"), &["write -P 0x12 1M 1M"]);
    sync_pit(&a, "g", &[]);
    let objects = bucket_of(&cluster, "g");
    // The store's creator owns the prefix.
    assert_eq!(
        owner(objects.as_ref()),
        ("site-b".into(), 1, "created".into())
    );

    // A third site attaches the bucket: it takes the prefix over.
    let c = s3_site("site-c", &cluster);
    let location = format!("s3://{}/{PREFIX}", cluster.bucket);
    let attached = c.json(&["site", "attach-store", &location]);
    assert_eq!(attached["groups"][0]["action"], "attached", "{attached}");
    assert_eq!(
        owner(objects.as_ref()),
        ("site-c".into(), 2, "attached".into())
    );
    let c_pits = pit_ids(&c, "g");
    assert!(c_pits.len() >= 2, "{c_pits:?}");
    let chain = chain_keys(objects.as_ref());

    // site-b's next commit is refused, naming site-c and what to do.
    qemu_io(&a.url("d0"), &["write -P 0x13 2M 1M"]);
    let out = a.run(&["sync", "g", "--json"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a cycle into a prefix taken over: {text}"
    );
    assert!(
        text.contains("site site-c")
            && text.contains("took it over")
            && text.contains("group teardown g --force"),
        "{text}"
    );
    let sb = group_status(&b, "g");
    assert!(
        sb["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("site-c") && e.contains("took it over")),
        "{sb}"
    );
    // Again (the refusal is sticky), and after a restart of site-b.
    let mut b = b;
    b.stop();
    b.start();
    let out = a.run(&["sync", "g", "--json"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("site-c"), "{text}");

    // Nothing of the chain changed; site-c's PITs are intact and the
    // record is still site-c's.
    assert_eq!(chain_keys(objects.as_ref()), chain);
    assert_eq!(owner(objects.as_ref()).0, "site-c");
    let checked = pit_check_clean(&c, "g");
    assert_eq!(checked, c_pits.iter().map(|p| p.0).collect::<Vec<_>>());
    let r = c.json(&["failover", "run", "g", "--test"]);
    qemu_io(
        &served_url(&r, "d0"),
        &["read -P 0x11 0 1M", "read -P 0x12 1M 1M", "read -P 0 2M 1M"],
    );
    c.json(&["failover", "stop-test", "g"]);

    // Retiring the old copy, even asking for its replica to be deleted,
    // leaves site-c's objects alone.
    b.json(&["group", "teardown", "g", "--force", "--delete-replica"]);
    assert!(b.fails(&["group", "status", "g"]).contains('g'));
    assert_eq!(chain_keys(objects.as_ref()), chain);
    assert_eq!(pit_check_clean(&c, "g"), checked);
}
