//! A site that is gone (issue 21): site A, the protected site, is killed
//! and its data directory deleted. Site B recovers with the plan's disaster
//! run. A is rebuilt from scratch — a new identity, an empty data directory,
//! the same name — and B re-pins it with `partner replace`: the group B is
//! the primary of is created at the new A again and copied in full, the
//! plan's reprotect reverses the failed-over group to the new A with a full
//! copy, the plan follows, and the same plan fails back home unchanged.
//! Nothing is re-entered by hand at the new A but its pairing and its
//! authorization of B, as on any new site.

mod common;

use common::*;
use offsite_testkit::qemu_io;

#[test]
fn a_lost_site_is_rebuilt_re_paired_and_failed_back_to_with_nothing_re_entered() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    authorize_primary(&a, "site-b", None);

    // At A: a VM on one volume, in group g1 (A → B) and plan dr.
    a.create_volume("v1", "4M");
    a.json(&[
        "vm", "create", "vm1", "--volume", "v1", "--start", "true", "--stop", "true",
    ]);
    qemu_io(&a.url("v1"), &["write -P 0x11 0 1M"]);
    create_group(&a, "g1", "site-b", &["--vm", "vm1"], &[]);
    a.json(&["group", "start", "g1"]);
    sync_pit(&a, "g1", &[]);
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
    let plan_before = plan_definition(&a, "dr");
    let vm_before = vm_definition(&a, "vm1");
    // At B: a volume B protects at A (group g2, B → A).
    b.create_volume("w1", "4M");
    qemu_io(&b.url("w1"), &["write -P 0x22 0 2M"]);
    create_group(&b, "g2", "site-a", &["--volume", "w1"], &[]);
    b.json(&["group", "start", "g2"]);
    sync_pit(&b, "g2", &[]);

    // The disaster: A and everything in its data directory are gone.
    let old_fingerprint = fingerprint_of(&a);
    let a_dir = a.dir().to_path_buf();
    let mut a = a;
    a.kill9();
    std::fs::remove_dir_all(&a_dir).unwrap();
    drop(a);
    let r = plan_report(&b, "dr", "disaster");
    assert_eq!(r["status"], "succeeded-with-errors", "{r}");
    assert_eq!(group_status(&b, "g1")["state"], "failed-over");
    qemu_io(&b.url("v1"), &["read -P 0x11 0 1M", "write -P 0x33 1M 1M"]);
    qemu_io(&b.url("w1"), &["write -P 0x44 2M 1M"]);

    // A is rebuilt: a new identity under the same name, paired with B and
    // authorizing it, as on any new site.
    let a = group_site("site-a");
    let new_fingerprint = fingerprint_of(&a);
    assert_ne!(new_fingerprint, old_fingerprint);
    pin(&a, &b);
    authorize_primary(&a, "site-b", None);

    // Before the re-pin, B cannot talk to the new A (a different
    // certificate): the pin is what `partner replace` changes.
    let replaced = b.json(&[
        "partner",
        "replace",
        "site-a",
        "--fingerprint",
        &new_fingerprint,
        "--address",
        &site_addr(&a, "listen"),
    ]);
    assert_eq!(
        replaced["partner"]["fingerprint"],
        new_fingerprint.as_str(),
        "{replaced}"
    );
    let action = |g: &str| {
        replaced["groups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["group"] == g)
            .unwrap_or_else(|| panic!("no {g} in {replaced}"))["action"]
            .clone()
    };
    assert_eq!(action("g1"), "reverse-next", "{replaced}");
    assert_eq!(action("g2"), "full-copy", "{replaced}");
    let dr = &replaced["plans"][0];
    assert_eq!(dr["plan"], "dr", "{replaced}");
    assert_eq!(
        dr["sent"], false,
        "dr waits for g1 at the new A: {replaced}"
    );

    // g2 is copied to the new A in full and replicates again.
    wait_group(&b, "g2", "replicating again", GROUP_LIMIT, |st| {
        st["state"] == "replicating" && !st["last_pit"].is_null()
    });
    sync_pit(&b, "g2", &[]);
    verify_clean(&b, "g2");
    assert_eq!(group_status(&a, "g2")["role"], "replica");

    // The plan's reprotect reverses g1 to the new A (a full copy), and the
    // plan follows.
    let r = plan_report(&b, "dr", "reprotect");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(group_status(&b, "g1")["role"], "primary");
    verify_clean(&b, "g1");
    assert_eq!(
        plan_definition(&a, "dr"),
        plan_before,
        "the plan at the new A"
    );
    let history = a.json(&["plan", "history", "dr"]);
    assert!(
        history
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["mode"] == "disaster"),
        "the disaster run's report reached the new A: {history}"
    );

    // The same plan fails back home.
    let r = plan_report(&a, "dr", "failback");
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(group_status(&a, "g1")["role"], "primary");
    qemu_io(&a.url("v1"), &["read -P 0x11 0 1M", "read -P 0x33 1M 1M"]);
    assert_eq!(vm_definition(&a, "vm1"), vm_before, "vm1 at the new A");
    sync_pit(&a, "g1", &[]);
    verify_clean(&a, "g1");
}
