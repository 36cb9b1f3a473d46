//! The two-site flow with site-b's replica store in a real 3-node Garage
//! cluster (issue 21): `authz add --storage-location s3://BUCKET/PREFIX`,
//! initial replication and cycles into the bucket, retention merging into
//! the base, `verify` and `pit check` against the objects, test failover
//! and planned failover from the bucket, reverse and failback (site-b's
//! store in the bucket takes the replica's role back). Without Garage the
//! test prints why and passes, except under CI.

mod common;

use common::s3::*;
use common::*;
use offsite_testkit::garage::GarageCluster;
use offsite_testkit::qemu_io;

#[test]
fn replica_in_garage_replicates_fails_over_reverses_and_fails_back() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let (a, b) = s3_pair(&cluster);
    a.create_volume("d0", "16M");
    a.create_volume("d1", "8M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0", "--volume", "d1"],
        &["--keep", "2"],
    );
    let st = a.json(&["group", "start", "g"]);
    assert_eq!(st["state"], "replicating", "{st}");

    // The store's working directory is in B's data directory, its
    // committed state in the bucket under PREFIX/GROUP/.
    let sb = group_status(&b, "g");
    let store_dir = sb["store_dir"].as_str().unwrap_or_default().to_string();
    assert!(
        store_dir.starts_with(&b.dir().display().to_string()) && store_dir.ends_with("site-a/g"),
        "{sb}"
    );
    let objects = bucket_of(&cluster, "g");
    assert!(objects.head("store.meta").unwrap().is_some());

    // Cycles: 5 PITs with keep 2, so three merge into the base.
    qemu_io(&a.url("d0"), &["write -P 0x11 0 4M"]);
    qemu_io(&a.url("d1"), &["write -P 0x12 0 1M"]);
    sync_pit(&a, "g", &[]);
    for i in 0..4u64 {
        qemu_io(
            &a.url("d0"),
            &[&format!("write -P {} {}M 1M", 0x20 + i, 4 + i)],
        );
        sync_pit(&a, "g", &[]);
    }
    let pits = pit_ids(&b, "g");
    assert_eq!(pits.len(), 2, "keep 2: {pits:?}");
    let keys: Vec<String> = objects
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        keys.iter().any(|k| k.starts_with("base/d0/")),
        "the merges wrote base chunks: {keys:?}"
    );
    assert_eq!(
        keys.iter().filter(|k| k.ends_with("manifest.pit")).count(),
        2,
        "one manifest per PIT kept: {keys:?}"
    );
    assert!(
        !keys.iter().any(|k| k.starts_with("merging/")),
        "no merge left half done: {keys:?}"
    );
    // The group's definition beside its store, for a site recovering from
    // the bucket alone.
    let def: serde_json::Value =
        serde_json::from_slice(&objects.get("group.json").unwrap()).unwrap();
    assert_eq!(
        (def["group"].as_str(), def["primary"].as_str()),
        (Some("g"), Some("site-a")),
        "{def}"
    );
    assert_eq!(def["volumes"].as_array().map(Vec::len), Some(2), "{def}");
    verify_clean(&a, "g");
    // (A timed cycle may have committed since the listing.)
    let checked = pit_check_clean(&b, "g");
    assert!(
        checked.len() == 2 && checked[0] >= pits[0].0,
        "{checked:?} after {pits:?}"
    );

    // Test failover from the bucket, replication going on.
    let r = b.json(&["failover", "run", "g", "--test"]);
    assert_eq!(r["mode"], "test", "{r}");
    let c0 = served_url(&r, "d0");
    qemu_io(
        &c0,
        &[
            "read -P 0x11 0 4M",
            "read -P 0x20 4M 1M",
            "read -P 0x23 7M 1M",
            "read -P 0 8M 8M",
        ],
    );
    qemu_io(&c0, &["write -P 0x77 0 64k"]);
    qemu_io(&a.url("d1"), &["write -P 0x13 2M 64k"]);
    sync_pit(&a, "g", &[]);
    let s = b.json(&["failover", "stop-test", "g"]);
    assert_eq!(s["mode"], "stop-test", "{s}");
    verify_clean(&a, "g");

    // Planned failover A -> B, from the bucket.
    qemu_io(&a.url("d0"), &["write -P 0x31 12M 1M"]);
    let p = a.json(&["failover", "prepare", "g"]);
    assert_eq!(p["mode"], "prepare", "{p}");
    let r = b.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    let b0 = served_url(&r, "d0");
    let b1 = served_url(&r, "d1");
    qemu_io(
        &b0,
        &[
            "read -P 0x11 0 4M",
            "read -P 0x20 4M 1M",
            "read -P 0x21 5M 1M",
            "read -P 0x22 6M 1M",
            "read -P 0x23 7M 1M",
            "read -P 0 8M 4M",
            "read -P 0x31 12M 1M",
            "read -P 0 13M 3M",
        ],
    );
    qemu_io(
        &b1,
        &[
            "read -P 0x12 0 1M",
            "read -P 0x13 2M 64k",
            "read -P 0 3M 5M",
        ],
    );
    assert_eq!(group_status(&b, "g")["state"], "failed-over");

    // The VMs write at B; reverse makes A (a directory store) the replica.
    qemu_io(&b0, &["write -P 0x41 14M 1M"]);
    let rv = b.json(&["reverse", "g"]);
    assert!(u(&rv, "bytes_transferred") > 0, "{rv}");
    let sa = group_status(&a, "g");
    assert_eq!(
        (sa["role"].as_str(), sa["state"].as_str()),
        (Some("replica"), Some("replicating")),
        "{sa}"
    );
    verify_clean(&b, "g");
    qemu_io(&b0, &["write -P 0x42 15M 64k"]);
    sync_pit(&b, "g", &[]);
    verify_clean(&b, "g");

    // Failback: B's store in the bucket takes the replica's role back.
    let p = b.json(&["failover", "prepare", "g"]);
    assert_eq!(p["mode"], "prepare", "{p}");
    let r = a.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    let a0 = served_url(&r, "d0");
    qemu_io(
        &a0,
        &[
            "read -P 0x11 0 4M",
            "read -P 0x23 7M 1M",
            "read -P 0x31 12M 1M",
            "read -P 0x41 14M 1M",
            "read -P 0x42 15M 64k",
        ],
    );
    qemu_io(&a0, &["write -P 0x51 9M 1M"]);
    let rv = a.json(&["reverse", "g"]);
    assert!(u(&rv, "bytes_transferred") > 0, "{rv}");
    let sb = group_status(&b, "g");
    assert_eq!(
        (sb["role"].as_str(), sb["state"].as_str()),
        (Some("replica"), Some("replicating")),
        "{sb}"
    );
    assert_eq!(sb["store_dir"].as_str(), Some(store_dir.as_str()), "{sb}");
    qemu_io(&a.url("d0"), &["write -P 0x52 10M 1M"]);
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");
    pit_check_clean(&b, "g");
    qemu_io(
        &a.url("d0"),
        &[
            "read -P 0x11 0 4M",
            "read -P 0x51 9M 1M",
            "read -P 0x52 10M 1M",
            "read -P 0x41 14M 1M",
        ],
    );
}
