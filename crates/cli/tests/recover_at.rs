//! Recovery to a point in time (`--at TIME`, issue 19) through real
//! `offsite serve` sites: the command line's TIME reaches the replica as
//! RFC 3339, which resolves it to the newest consistent point at or before
//! it. An async group has no journal, so its PITs are the points; the
//! journal's checkpoints are covered in-process
//! (`crates/replication/src/testing/recover_at.rs`) until the stream sends
//! them.

mod common;

use common::*;
use offsite_testkit::{qemu_io, qemu_io_ro};

#[test]
fn an_async_group_recovers_to_the_newest_pit_at_or_before_a_time() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    a.create_volume("d0", "8M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &["--keep", "10"]);
    a.json(&["group", "start", "g"]);
    qemu_io(&a.url("d0"), &["write -P 0x11 0 1M"]);
    let first = sync_pit(&a, "g", &[]);
    // The next PIT must carry a later time than the first (created_at
    // has whole seconds): it is cut in the next second.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    qemu_io(&a.url("d0"), &["write -P 0x22 0 1M"]);
    let second = sync_pit(&a, "g", &[]);
    assert_ne!(second["created_at"], first["created_at"]);
    let t1 = first["created_at"].as_str().unwrap().to_string();
    // A PIT's time is whole seconds: it is certainly at or before a time
    // only from the end of its second (its cut may come up to a second
    // after), so at its second's start the PIT before it answers.
    let out = b.run(&["pit", "export", "g", "--at", &t1, "--json"]);
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(
        if out.status.success() {
            !answer.contains(&format!("\"id\":{}", u(&first, "id")))
        } else {
            answer.contains("oldest point")
        },
        "{answer}"
    );
    let t1 = t1.replace('Z', ".999999999Z");

    // At the end of the first PIT's second: that PIT, 999 ms before.
    let e = b.json(&["pit", "export", "g", "--at", &t1]);
    assert_eq!(e["point"]["kind"], "pit", "{e}");
    assert_eq!(e["point"]["id"], first["id"], "{e}");
    assert_eq!(e["point"]["before_requested_ms"], 999, "{e}");
    assert_eq!(e["pit"], first["id"], "{e}");
    qemu_io_ro(&served_url(&e, "d0"), &["read -P 0x11 0 1M"]);
    // The end of the newest PIT's second: that PIT (a PIT's time counts
    // from the end of its second).
    let later = second["created_at"]
        .as_str()
        .unwrap()
        .replace('Z', ".999999999Z");
    let e = b.json(&["pit", "export", "g", "--at", &later]);
    assert_eq!(e["point"]["id"], second["id"], "{e}");
    let text = b.ok(&["pit", "export", "g", "--at", &later]);
    assert!(
        text.starts_with(&format!("PIT {} of ", u(&second, "id")))
            && text.contains("0.999 s before "),
        "{text}"
    );
    // Relative times reach the replica as RFC 3339: `now` answers with
    // a PIT no newer than the second one.
    let e = b.json(&["pit", "export", "g", "--at", "now"]);
    assert_eq!(e["point"]["kind"], "pit", "{e}");
    assert!(u(&e["point"], "id") <= u(&second, "id"), "{e}");
    assert!(
        e["point"]["requested"].as_str().unwrap().ends_with('Z'),
        "{e}"
    );
    // Before every PIT: refused, naming the oldest point and its time.
    let oldest = pit_list(&b, "g")[0].clone();
    let err = b.fails(&["pit", "export", "g", "--at", "2000-01-01T00:00:00Z"]);
    assert!(
        err.contains(&format!(
            "oldest point it can recover to is pit {}",
            u(&oldest, "id")
        )),
        "{err}"
    );

    // A test failover at the first PIT's time clones it.
    let r = b.json(&["failover", "run", "g", "--test", "--at", &t1]);
    assert_eq!(r["pit"], first["id"], "{r}");
    assert_eq!(r["point"]["kind"], "pit", "{r}");
    qemu_io(&served_url(&r, "d0"), &["read -P 0x11 0 1M"]);
    b.json(&["failover", "stop-test", "g"]);

    // A plan's drill at that time: every group's test failover at it.
    a.json(&[
        "plan",
        "create",
        "dr",
        "--protected-site",
        "site-a",
        "--recovery-site",
        "site-b",
    ]);
    a.json(&["plan", "add-group", "dr", "g"]);
    let r = b.json(&["plan", "run", "dr", "--mode", "test", "--at", &t1]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["at"], t1.as_str(), "{r}");
    assert_eq!(r["groups"][0]["pit"], first["id"], "{r}");
    assert_eq!(r["groups"][0]["pit_created_at"], first["created_at"], "{r}");
    let step = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "test-failover")
        .expect("the test failover step");
    assert!(
        step["name"].as_str().unwrap().contains(&t1)
            && step["output"].as_str().unwrap().starts_with(&format!(
                "PIT {} of {}",
                u(&first, "id"),
                first["created_at"].as_str().unwrap()
            )),
        "{step}"
    );
    b.json(&["plan", "run", "dr", "--mode", "cleanup"]);
    // A planned run ships a final PIT: no --at.
    let err = b.fails(&["plan", "run", "dr", "--mode", "planned", "--at", &t1]);
    assert!(err.contains("final PIT"), "{err}");

    // The REST API takes RFC 3339 only (the command line converts).
    let (status, body) = api_request(
        &b,
        "POST",
        "/groups/g/pits/export",
        Some(r#"{"at": "10m ago"}"#),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("RFC 3339"), "{body}");
}
