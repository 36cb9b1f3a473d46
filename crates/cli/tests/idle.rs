//! Idle groups cost nothing (issue 17): a scheduled cycle that finds no
//! changed block commits no PIT (no empty PITs, no retention churn), the
//! group is shown as confirmed in sync with a small lag at both sites and in
//! the metrics, and a write is shipped by the next scheduled cycle as before.
//!
//! The sites run cycles every second (`replication.cycle_secs`) so that a
//! few seconds cover several scheduled cycles.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsite_testkit::{TestSite, qemu_io};

const LIMIT: Duration = Duration::from_secs(60);

/// A group site whose async groups cycle every second.
fn quick_site(name: &str) -> TestSite {
    let mut s = TestSite::init(bin(), name);
    set_replication_config(&s, &format!("{GROUP_REPLICATION}cycle_secs = 1.0\n"));
    s.start();
    keep_listen_port(&s);
    s
}

fn cycles(site: &TestSite, group: &str) -> u64 {
    u(&site.json(&["group", "measure", group]), "cycles")
}

#[test]
fn an_idle_group_commits_no_pit_and_stays_in_sync_at_both_sites() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let a = quick_site("site-a");
    let b = quick_site("site-b");
    pair(&a, &b);
    authorize_primary(&b, a.name(), None);
    let url = a.create_volume("disk0", "4M");
    create_group(&a, "g", "site-b", &["--volume", "disk0"], &["--keep", "3"]);
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "replicating", LIMIT, |s| {
        s["state"] == "replicating"
    });

    // A write goes out with the next scheduled cycle, no `sync` needed.
    let newest = |site: &TestSite| pit_ids(site, "g").last().map(|p| p.0);
    let before = newest(&a);
    qemu_io(&url, &["write -P 0x5a 0 64k"]);
    wait_group(&a, "g", "a scheduled PIT with the write", LIMIT, |s| {
        s["pending_bytes"] == 0 && s["last_pit"]["id"].as_u64() != before
    });
    let pits = pit_ids(&a, "g");
    let cycles_before = cycles(&a, "g");
    let confirmed_before = group_status(&a, "g")["confirmed_at"]
        .as_str()
        .expect("confirmed_at after a commit")
        .to_string();

    // Idle: several scheduled cycles, none of which commits anything.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(pit_ids(&a, "g"), pits, "an idle cycle committed a PIT");
    assert_eq!(pit_ids(&b, "g"), pits, "the replica got a PIT while idle");
    assert_eq!(cycles(&a, "g"), cycles_before, "idle cycles are not cycles");
    let st = group_status(&a, "g");
    assert_eq!(st["health"], "normal", "{st}");
    assert!(u(&st, "lag_seconds") <= 2, "lag of an idle group: {st}");
    let confirmed = st["confirmed_at"].as_str().expect("confirmed_at");
    assert!(
        confirmed > confirmed_before.as_str(),
        "{confirmed} vs {confirmed_before}"
    );
    let m = metrics(&a);
    let lag = metric(
        &m,
        "offsite_group_lag_seconds{group=\"g\",role=\"primary\"}",
    )
    .expect("lag metric");
    assert!(lag <= 2, "metric lag {lag}");

    // The replica learns it from the partner monitor: the same lag there.
    let deadline = Instant::now() + LIMIT;
    loop {
        let st = group_status(&b, "g");
        if st["confirmed_at"].is_string() && u(&st, "lag_seconds") <= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "replica lag stays high: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(4));
    let st = group_status(&b, "g");
    assert!(
        u(&st, "lag_seconds") <= 3,
        "replica lag of an idle group: {st}"
    );
    assert_eq!(st["health"], "normal", "{st}");

    // And writes still flow: the next scheduled cycle ships them.
    qemu_io(&url, &["write -P 0x6b 1M 64k"]);
    let idle = newest(&a);
    wait_group(&a, "g", "a scheduled PIT after idling", LIMIT, |s| {
        s["pending_bytes"] == 0 && s["last_pit"]["id"].as_u64() != idle
    });
    verify_clean(&a, "g");
}
