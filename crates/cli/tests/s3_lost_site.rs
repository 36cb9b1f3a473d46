//! Both sites lost, the bucket left (issue 21): site-a protects a VM into
//! site-b's replica store in a real 3-node Garage cluster, with a plan.
//! Then site-a and site-b are killed and their data directories deleted.
//! A brand-new site-b (a new identity, an empty data directory) attaches
//! the bucket with the group's key (`site attach-store --key-file`; the
//! group is encrypted): the group, its PITs, its VM and the plan come from
//! the bucket alone; the plan's disaster run recovers the
//! VM's data exactly. A rebuilt site-a (a new identity) is paired, the
//! plan's reprotect sends it a full copy and the plan, and the same plan
//! fails back home: the plan and the VM's definition at the new site-a
//! equal the originals. Nothing is re-entered by hand but the new sites'
//! pairing and authorization. Without Garage the test prints why and
//! passes, except under CI.

mod common;

use common::s3::*;
use common::*;
use offsite_testkit::garage::GarageCluster;
use offsite_testkit::qemu_io;
use serde_json::Value;

/// The reads that check v1's whole image: two written megabytes, zeros
/// around them.
const V1_IMAGE: [&str; 4] = [
    "read -P 0x11 0 1M",
    "read -P 0 1M 1M",
    "read -P 0x12 2M 1M",
    "read -P 0 3M 1M",
];

#[test]
fn a_new_site_rises_from_the_bucket_and_the_plan_fails_back_unchanged() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let (a, b) = s3_pair(&cluster);
    a.create_volume("v1", "4M");
    a.json(&[
        "vm", "create", "vm1", "--volume", "v1", "--start", "true", "--stop", "true",
    ]);
    qemu_io(&a.url("v1"), &["write -P 0x11 0 1M", "write -P 0x12 2M 1M"]);
    create_group(&a, "g1", "site-b", &["--vm", "vm1"], &["--encrypt"]);
    a.json(&["group", "start", "g1"]);
    a.json(&[
        "plan",
        "create",
        "dr",
        "--protected-site",
        "site-a",
        "--recovery-site",
        "site-b",
    ]);
    a.json(&["plan", "add-group", "dr", "g1"]);
    a.json(&["plan", "set-priority", "dr", "vm1", "2"]);
    sync_pit(&a, "g1", &[]);
    let plan_before = plan_definition(&a, "dr");
    let vm_before = vm_definition(&a, "vm1");
    let objects = bucket_of(&cluster, "g1");
    assert!(objects.head("group.json").unwrap().is_some());
    assert!(objects.head("plans/dr.json").unwrap().is_some());

    // The group's key, kept away from both sites (a password manager).
    let out = a.run(&["group", "key", "export", "g1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let escrow = tempfile::tempdir().unwrap();
    let key_file = escrow.path().join("g1.key");
    std::fs::write(&key_file, &out.stdout).unwrap();

    // Both sites are lost with everything on their disks.
    for mut site in [a, b] {
        let dir = site.dir().to_path_buf();
        site.kill9();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // A new site-b attaches the bucket (and authorizes site-a into it, as
    // the lost one did, for the failback later).
    let b = s3_site("site-b", &cluster);
    let location = format!("s3://{}/{PREFIX}", cluster.bucket);
    b.json(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        &location,
    ]);
    // Without the key the group's objects (its definition included) do not
    // open: nothing is attached, and the answer says what is missing.
    let keyless = b.json(&["site", "attach-store", &location]);
    assert_eq!(keyless["groups"][0]["action"], "needs-key", "{keyless}");
    assert!(b.fails(&["group", "status", "g1"]).contains("g1"));
    let key_arg = key_file.display().to_string();
    let attached = b.json(&["site", "attach-store", &location, "--key-file", &key_arg]);
    let g = &attached["groups"][0];
    assert_eq!(g["encrypted"], true, "{attached}");
    assert_eq!(
        (
            g["group"].as_str(),
            g["action"].as_str(),
            g["primary"].as_str()
        ),
        (Some("g1"), Some("attached"), Some("site-a")),
        "{attached}"
    );
    assert!(u(g, "pits") >= 1, "{attached}");
    assert_eq!(attached["plans"][0]["plan"], "dr", "{attached}");
    assert_eq!(attached["plans"][0]["adopted"], true, "{attached}");
    assert_eq!(plan_definition(&b, "dr"), plan_before);
    // Attaching again changes nothing.
    let again = b.json(&["site", "attach-store", &location, "--key-file", &key_arg]);
    assert_eq!(again["groups"][0]["action"], "exists", "{again}");

    // The plan's disaster run recovers the VM's data exactly.
    let r = plan_report(&b, "dr", "disaster");
    assert!(
        matches!(
            r["status"].as_str(),
            Some("succeeded" | "succeeded-with-errors")
        ),
        "{r}"
    );
    assert_eq!(group_status(&b, "g1")["state"], "failed-over");
    qemu_io(&b.url("v1"), &V1_IMAGE);
    assert_eq!(vm_definition(&b, "vm1"), vm_before, "vm1 at the new site-b");
    // The promoted volume is completed from the bucket in the background
    // (`hydration` shows how far) until it no longer depends on it.
    wait_until("v1 no longer reads from the bucket", GROUP_LIMIT, || {
        let v = b.json(&["volume", "show", "v1"]);
        match v.get("hydration") {
            None | Some(Value::Null) => true,
            Some(h) => {
                assert!(u(h, "local_bytes") <= u(h, "total_bytes"), "{v}");
                false
            }
        }
    });
    qemu_io(&b.url("v1"), &V1_IMAGE);

    // site-a is rebuilt, paired and authorizes site-b, as any new site.
    let a = group_site("site-a");
    pair(&a, &b);
    authorize_primary(&a, "site-b", None);
    let r = plan_report(&b, "dr", "reprotect");
    assert_eq!(r["status"], "succeeded", "{r}");
    verify_clean(&b, "g1");
    assert_eq!(plan_definition(&a, "dr"), plan_before);

    // The same plan fails back home.
    let r = plan_report(&a, "dr", "failback");
    assert_eq!(r["status"], "succeeded", "{r}");
    qemu_io(&a.url("v1"), &V1_IMAGE);
    assert_eq!(vm_definition(&a, "vm1"), vm_before, "vm1 at the new site-a");
    sync_pit(&a, "g1", &[]);
    verify_clean(&a, "g1");
}
