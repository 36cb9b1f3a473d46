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
    let Some((cluster, a, b)) = s3_pair_or_skip(&["qemu-io"]) else {
        return;
    };
    let st = start_s3_group(&a, "g", &[("d0", "16M"), ("d1", "8M")], &["--keep", "2"]);
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

/// Whether `needle` occurs anywhere in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every object of `group` in the bucket, raw (as the bucket's owner
/// reads them): key and bytes. One deleted between the listing and its
/// read (retention, or a journal part replaced by its whole file) is left
/// out.
fn raw_objects(cluster: &GarageCluster, group: &str) -> Vec<(String, Vec<u8>)> {
    let objects = bucket_of(cluster, group);
    objects
        .list("")
        .unwrap()
        .into_iter()
        .filter_map(|o| match objects.get(&o.key) {
            Err(e) if e.is_not_found() => None,
            body => Some((o.key, body.unwrap())),
        })
        .collect()
}

/// `pit check` output (stdout and stderr), and whether it succeeded.
fn pit_check_text(site: &offsite_testkit::TestSite, group: &str) -> (bool, String) {
    let out = site.run(&["pit", "check", group, "--json"]);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let clean = out.status.success()
        && serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v["damaged"].as_u64() == Some(0));
    (clean, text)
}

#[test]
fn an_encrypted_group_shows_the_bucket_ciphertext_only_and_detects_tampering() {
    let Some((cluster, a, mut b)) = s3_pair_or_skip(&["qemu-io"]) else {
        return;
    };
    // The known 4 KiB pattern, written to a plain and to an encrypted group.
    let pattern = pseudo_random(4096, 21);
    let pattern_file = a.scratch().join("pattern");
    std::fs::write(&pattern_file, &pattern).unwrap();
    let src = pattern_file.display().to_string();
    a.create_volume("p0", "8M");
    a.create_volume("e0", "8M");
    create_group(&a, "p", "site-b", &["--volume", "p0"], &[]);
    create_group(&a, "e", "site-b", &["--volume", "e0"], &["--encrypt"]);
    for g in ["p", "e"] {
        a.json(&["group", "start", g]);
    }
    for v in ["p0", "e0"] {
        qemu_io(
            &a.url(v),
            &[
                &format!("write -s {src} 1M 4k"),
                &format!("write -s {src} 3M 4k"),
                "write -P 0x5c 4M 2M",
            ],
        );
    }
    sync_pit(&a, "p", &[]);
    let tampered_pit = u(&sync_pit(&a, "e", &[]), "id");

    // Both sites say the group is encrypted, with the same key.
    let sa = group_status(&a, "e");
    let sb = group_status(&b, "e");
    assert_eq!(sa["encrypted"], true, "{sa}");
    assert!(sa["key_id"].as_str().is_some_and(|k| k.len() == 32), "{sa}");
    assert_eq!(sa["key_id"], sb["key_id"], "{sa}\n{sb}");
    assert_eq!(group_status(&b, "p")["encrypted"], false);
    assert!(
        a.ok(&["group", "status", "e"]).contains("encrypted"),
        "human status shows it"
    );

    // The bucket holds the pattern in the plain group's objects and in
    // none of the encrypted group's, which are all sealed.
    let plain = raw_objects(&cluster, "p");
    assert!(
        plain.iter().any(|(_, body)| contains(body, &pattern)),
        "control: the plain group's objects hold the pattern"
    );
    let sealed = raw_objects(&cluster, "e");
    assert!(
        sealed.len() >= 3,
        "{:?}",
        sealed.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (key, body) in &sealed {
        assert!(
            !contains(body, &pattern),
            "{key} holds the plaintext pattern"
        );
        assert!(
            !contains(body, &[0x5c; 4096]),
            "{key} holds plaintext blocks"
        );
        assert!(body.starts_with(b"OFSSEAL\0"), "{key} is not sealed");
    }

    // The key: exported at A (a warning on stderr), lost at B, imported
    // again; without it B says what to do.
    let out = a.run(&["group", "key", "export", "e"]);
    assert!(out.status.success());
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(line.starts_with("offsite-key-1:"), "{line}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("secret"));
    let key_file = a.scratch().join("e.key");
    std::fs::write(&key_file, format!("{line}\n")).unwrap();
    b.stop();
    let b_key = b.dir().join("keys/e.key");
    std::fs::rename(&b_key, b.scratch().join("lost.key")).unwrap();
    b.start();
    let (clean, text) = pit_check_text(&b, "e");
    assert!(!clean && text.contains("group key import e"), "{text}");
    let wrong = b.scratch().join("wrong.key");
    std::fs::write(
        &wrong,
        offsite_objects::GroupKey::generate().export() + "\n",
    )
    .unwrap();
    let err = b.fails(&[
        "group",
        "key",
        "import",
        "e",
        "--key-file",
        &wrong.display().to_string(),
    ]);
    assert!(err.contains("encrypted with key"), "{err}");
    let k = b.json(&[
        "group",
        "key",
        "import",
        "e",
        "--key-file",
        &key_file.display().to_string(),
    ]);
    assert_eq!(k["key_id"], sa["key_id"], "{k}");
    assert_eq!(pit_check_clean(&b, "e").last(), Some(&tampered_pit));
    verify_clean(&a, "e");

    // One flipped byte in a segment of the newest PIT: `pit check` and a
    // read at recovery fail, never return other data.
    a.json(&["group", "pause", "e"]);
    let objects = bucket_of(&cluster, "e");
    let seg = sealed
        .iter()
        .filter(|(k, _)| k.ends_with("/e0.seg"))
        .max_by_key(|(k, _)| k.clone())
        .map(|(k, _)| k.clone())
        .expect("a segment of e0");
    let mut body = objects.get(&seg).unwrap();
    let mid = body.len() / 2;
    body[mid] ^= 0x01;
    objects.put(&seg, &body).unwrap();
    // Restarted: nothing of the object is left in the store's read cache.
    b.stop();
    b.start();
    let (clean, text) = pit_check_text(&b, "e");
    assert!(!clean, "{text}");
    assert!(text.contains("failed its integrity check"), "{text}");
    // The PIT whose segment was changed (the newest one holding e0).
    let damaged: u64 = seg
        .strip_prefix("pits/")
        .and_then(|r| r.split(['-', '/']).next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("PIT id in {seg}"));
    let r = b.json(&[
        "failover",
        "run",
        "e",
        "--test",
        "--pit",
        &damaged.to_string(),
    ]);
    let c0 = served_url(&r, "e0");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "read -P 0x5c 4M 2M", &c0])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() || text.contains("failed"),
        "a read of the damaged range fails: {text}"
    );
    assert!(
        !text.contains("Pattern verification failed"),
        "no wrong data is returned: {text}"
    );
    b.json(&["failover", "stop-test", "e"]);
}

/// An unplanned failover from the bucket leaves no named PIT in B's
/// store, so the failback's reverse does not resume it: B's new replica
/// store is built in the bucket from its volumes (the old objects deleted,
/// the volumes uploaded as the base), and replication A -> B goes on.
#[test]
fn failback_after_an_unplanned_failover_rebuilds_the_store_in_the_bucket() {
    let Some((cluster, mut a, b)) = s3_pair_or_skip(&["qemu-io"]) else {
        return;
    };
    start_s3_group(&a, "g", &[("d0", "16M")], &[]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 4M"]);
    let replicated = u(&sync_pit(&a, "g", &[]), "id");

    a.kill9();
    let r = b.json(&["failover", "run", "g", "--force"]);
    assert_eq!(r["mode"], "unplanned", "{r}");
    assert_eq!(u(&r, "pit"), replicated, "{r}");
    let b0 = served_url(&r, "d0");
    qemu_io(&b0, &["read -P 0x11 0 4M", "write -P 0x21 8M 1M"]);
    a.start();
    wait_group(&a, "g", "A's cycles refused", GROUP_LIMIT, |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("failed over"))
    });
    b.json(&["reverse", "g"]);
    verify_clean(&b, "g");

    // Failback: B becomes the replica again, with a store rebuilt in the
    // bucket under the same prefix.
    b.json(&["failover", "prepare", "g"]);
    let r = a.json(&["failover", "run", "g"]);
    let a0 = served_url(&r, "d0");
    qemu_io(&a0, &["read -P 0x11 0 4M", "read -P 0x21 8M 1M"]);
    qemu_io(&a0, &["write -P 0x31 12M 1M"]);
    a.json(&["reverse", "g"]);
    let sb = group_status(&b, "g");
    assert_eq!(
        (sb["role"].as_str(), sb["state"].as_str()),
        (Some("replica"), Some("replicating")),
        "{sb}"
    );
    assert!(
        b.log().contains("is replaced: it holds no named PIT"),
        "the dormant store was not resumed:\n{}",
        tail(&b.log(), 30)
    );
    let objects = bucket_of(&cluster, "g");
    let keys: Vec<String> = objects
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        keys.iter().any(|k| k.starts_with("base/d0/")),
        "the volume was uploaded as the base: {keys:?}"
    );
    assert!(
        !keys
            .iter()
            .any(|k| k.contains(&format!("pits/{replicated:020}-"))),
        "the old store's PITs are gone: {keys:?}"
    );
    assert!(
        !b.dir()
            .join("object-stores/site-a/g.reverse-staging")
            .exists(),
        "the staged images were removed"
    );
    qemu_io(&a.url("d0"), &["write -P 0x41 2M 64k"]);
    sync_pit(&a, "g", &[]);
    verify_clean(&a, "g");
    pit_check_clean(&b, "g");

    // Teardown with --delete-replica deletes the group's objects too.
    a.json(&["group", "teardown", "g", "--delete-replica"]);
    assert_eq!(objects.list("").unwrap(), Vec::new());
    assert!(!b.dir().join("object-stores/site-a/g").exists());
}

/// `authz add` accepts an `s3://` location only once the site could put,
/// get and delete an object there, and says what to fix otherwise.
#[test]
fn authz_add_probes_the_bucket_and_says_what_to_fix() {
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let unconfigured = group_site("site-c");
    let err = unconfigured.fails(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        &format!("s3://{}/replicas", cluster.bucket),
    ]);
    assert!(
        err.contains("[object_store]") && err.contains("AWS_ENDPOINT_URL"),
        "{err}"
    );
    let b = s3_site("site-b", &cluster);
    let err = b.fails(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        "s3://no-such-bucket-here/replicas",
    ]);
    assert!(
        err.contains("cannot write a test object") && err.contains("check the bucket's name"),
        "{err}"
    );
    let err = b.fails(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        "s3://Bad_Bucket/replicas",
    ]);
    assert!(err.contains("bucket name"), "{err}");
    let ok = b.json(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        &format!("s3://{}/replicas", cluster.bucket),
    ]);
    assert_eq!(
        ok[0]["storage_location"]
            .as_str()
            .or(ok["storage_location"].as_str()),
        Some(format!("s3://{}/replicas", cluster.bucket).as_str()),
        "{ok}"
    );
    // The probe leaves nothing behind.
    let prefix = bucket_of(&cluster, "");
    assert!(prefix.head("offsite-write-test").unwrap().is_none());
}

/// A synchronous group's store in the bucket: its journal is written in
/// the store's working directory and copied into the bucket, its seals
/// become PITs in the bucket.
#[test]
fn a_sync_group_seals_its_pits_into_the_bucket() {
    let Some((cluster, a, b)) = s3_pair_or_skip(&["qemu-io"]) else {
        return;
    };
    start_s3_group(&a, "s", &[("s0", "16M")], &["--mode", "sync"]);
    wait_group(&a, "s", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    });
    qemu_io(&a.url("s0"), &["write -P 0x61 0 2M", "write -P 0x62 8M 1M"]);
    let pit = u(&sync_pit(&a, "s", &[]), "id");
    let keys: Vec<String> = bucket_of(&cluster, "s")
        .list("")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("pits/{pit:020}-")) && k.ends_with("manifest.pit")),
        "PIT {pit} committed in the bucket: {keys:?}"
    );
    // The journal file the seal closed follows it into the bucket.
    wait_until(
        "the sealed journal file is in the bucket",
        GROUP_LIMIT,
        || {
            bucket_of(&cluster, "s")
                .list("journal/")
                .unwrap()
                .iter()
                .any(|o| o.key.ends_with(".jnl"))
        },
    );
    verify_clean(&a, "s");
    pit_check_clean(&b, "s");
}
