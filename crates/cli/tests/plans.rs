//! Recovery plans (issue 7) on two real sites: every run mode with two
//! groups and VMs in three tiers (tier order, parallel starts within a
//! tier, a prompt, a failing callout that stops a planned run and the
//! resume that continues from it), reprotect and failback that leave the
//! plan identical at both sites, disaster recovery with site A killed, and
//! the HTML report rendered by headless Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// A start hook that logs `SITE start VM MODE T` and, a second later,
/// `SITE up VM MODE T` (T: seconds since the epoch, nanoseconds), so tier
/// order and overlap within a tier can be read back; a stop hook that logs
/// `SITE stop VM MODE T`.
fn hooks(log: &Path) -> (String, String) {
    let l = log.display();
    (
        format!(
            "echo \"$OFFSITE_SITE start $OFFSITE_VM $OFFSITE_MODE $(date +%s.%N) net=$OFFSITE_TEST_NETWORK prio=$OFFSITE_PRIORITY\" >> {l}; sleep 1; echo \"$OFFSITE_SITE up $OFFSITE_VM $OFFSITE_MODE $(date +%s.%N)\" >> {l}"
        ),
        format!("echo \"$OFFSITE_SITE stop $OFFSITE_VM $OFFSITE_MODE $(date +%s.%N)\" >> {l}"),
    )
}

/// One hook log line.
#[derive(Debug, Clone)]
struct Event {
    site: String,
    what: String,
    vm: String,
    mode: String,
    at: f64,
}

fn events(log: &Path) -> Vec<Event> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Event {
                site: f[0].into(),
                what: f[1].into(),
                vm: f[2].into(),
                mode: f[3].into(),
                at: f[4].parse().unwrap_or_else(|_| panic!("bad hook line {l}")),
            }
        })
        .collect()
}

fn at(ev: &[Event], site: &str, what: &str, vm: &str, mode: &str) -> Vec<f64> {
    ev.iter()
        .filter(|e| e.site == site && e.what == what && e.vm == vm && e.mode == mode)
        .map(|e| e.at)
        .collect()
}

/// The one time `vm` did `what` at `site` in `mode`.
fn once(ev: &[Event], site: &str, what: &str, vm: &str, mode: &str) -> f64 {
    let t = at(ev, site, what, vm, mode);
    assert_eq!(
        t.len(),
        1,
        "{site} {what} {vm} {mode} should happen once: {ev:#?}"
    );
    t[0]
}

/// Tier 1 (vm1, vm3) all start before tier 2 (vm2) and tier 2 before tier 3
/// (vm4); tier 1's VMs overlap (both start before either is up).
fn assert_tiers(ev: &[Event], site: &str, mode: &str) {
    let s1 = once(ev, site, "start", "vm1", mode);
    let s3 = once(ev, site, "start", "vm3", mode);
    let u1 = once(ev, site, "up", "vm1", mode);
    let u3 = once(ev, site, "up", "vm3", mode);
    let s2 = once(ev, site, "start", "vm2", mode);
    let u2 = once(ev, site, "up", "vm2", mode);
    let s4 = once(ev, site, "start", "vm4", mode);
    assert!(
        s1.max(s3) < s2 && u1.max(u3) <= s2,
        "tier 1 is up before tier 2 starts: {ev:#?}"
    );
    assert!(u2 <= s4, "tier 2 is up before tier 3 starts: {ev:#?}");
    assert!(
        s1.max(s3) < u1.min(u3),
        "the VMs of tier 1 start in parallel: {ev:#?}"
    );
}

/// `plan run ARGS --json`: the report, whatever the exit code (a failed or
/// waiting run still prints it); checks that failures exit 1.
fn plan_run(site: &TestSite, args: &[&str]) -> Value {
    let mut a = vec!["plan", "run"];
    a.extend_from_slice(args);
    a.push("--json");
    report_of(site, &a)
}

fn report_of(site: &TestSite, args: &[&str]) -> Value {
    let out = site.run(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "offsite {args:?} printed no report ({e}): {stdout}{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&site.log(), 30)
        )
    });
    let ok = matches!(r["status"].as_str(), Some("succeeded" | "waiting"));
    assert_eq!(
        out.status.success(),
        ok,
        "exit status {} for a {} run: {}",
        out.status,
        r["status"],
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

fn step<'a>(r: &'a Value, name: &str) -> &'a Value {
    r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {r}"))
}

fn statuses(r: &Value) -> Vec<(String, String)> {
    r["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_string(),
                s["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Sites A (primary) and B, paired and authorizing each other; groups g1
/// (vm1, vm2) and g2 (vm3, vm4) from A to B, replicating, each VM with
/// one 4 MiB volume holding pattern 0x10 + n; plan `dr` defined at A with
/// vm1, vm3 in tier 1, vm2 in tier 2, vm4 in tier 3.
fn setup(log: &Path) -> (TestSite, TestSite) {
    let (a, b) = group_pair();
    authorize_primary(&a, "site-b", None);
    let (start, stop) = hooks(log);
    for n in 1..=4 {
        let v = format!("v{n}");
        a.create_volume(&v, "4M");
        a.json(&[
            "vm",
            "create",
            &format!("vm{n}"),
            "--volume",
            &v,
            "--start",
            &start,
            "--stop",
            &stop,
        ]);
        qemu_io(&a.url(&v), &[&format!("write -P {} 0 1M", 0x10 + n)]);
    }
    create_group(&a, "g1", "site-b", &["--vm", "vm1", "--vm", "vm2"], &[]);
    create_group(&a, "g2", "site-b", &["--vm", "vm3", "--vm", "vm4"], &[]);
    for g in ["g1", "g2"] {
        a.json(&["group", "start", g]);
        sync_pit(&a, g, &[]);
    }
    a.json(&[
        "plan",
        "create",
        "dr",
        "--protected-site",
        "site-a",
        "--recovery-site",
        "site-b",
        "--test-network",
        "bubble",
        "--parallel",
        "4",
    ]);
    a.json(&["plan", "add-group", "dr", "g1"]);
    a.json(&["plan", "add-group", "dr", "g2"]);
    for (vm, tier) in [("vm1", "1"), ("vm3", "1"), ("vm2", "2"), ("vm4", "3")] {
        a.json(&["plan", "set-priority", "dr", vm, tier]);
    }
    (a, b)
}

#[test]
fn plan_modes_honor_tiers_prompts_and_resume_and_survive_reprotect_and_failback() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hooks.log");
    let flag = scratch.path().join("app-ok");
    let (a, b) = setup(&log);
    let f = flag.display();
    a.json(&[
        "plan",
        "add-step",
        "dr",
        "approve",
        "--prompt",
        "Is the network team ready?",
        "--after-tier",
        "0",
        "--skip-in-test",
    ]);
    a.json(&[
        "plan",
        "add-step",
        "dr",
        "check-app",
        "--after-tier",
        "1",
        "--command",
        &format!("test -e {f} && echo app ok at $OFFSITE_SITE"),
    ]);
    // The tier-2 VM counts as up once its hook logged it.
    a.json(&[
        "plan",
        "set-priority",
        "dr",
        "vm2",
        "2",
        "--wait-for",
        &format!("cmd:grep -q \"up vm2\" {}", log.display()),
        "--wait-timeout",
        "20s",
    ]);
    let defined = a.json(&["plan", "show", "dr"]);
    assert_eq!(
        b.json(&["plan", "show", "dr"]),
        defined,
        "the plan is kept at B too"
    );
    assert_eq!(defined["vms"].as_array().unwrap().len(), 4, "{defined}");
    // Runs happen at the recovery site; A says where.
    let e = a.fails(&["plan", "run", "dr", "--mode", "test"]);
    assert!(e.contains("at site-b"), "{e}");

    // Test: clones, tiers, callouts; the prompt is skipped in tests.
    std::fs::write(&flag, "").unwrap();
    let r = plan_run(&b, &["dr", "--mode", "test"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(step(&r, "approve")["status"], "skipped", "{r}");
    assert!(
        step(&r, "check-app")["output"]
            .as_str()
            .unwrap()
            .contains("app ok at site-b")
    );
    let ev = events(&log);
    assert_tiers(&ev, "site-b", "test");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("net=bubble prio=1"),
        "hooks get the test network and their tier"
    );
    for g in r["groups"].as_array().unwrap() {
        assert!(
            g["pit"].as_u64().is_some() && g["rpo_seconds"].as_f64().is_some(),
            "{r}"
        );
    }
    assert!(
        r["rto_seconds"].as_f64().unwrap() >= 2.0,
        "three tiers of 1 s hooks: {r}"
    );
    let nbd_b = site_addr(&b, "nbd");
    qemu_io(
        &format!("nbd://{nbd_b}/v1@g1.test"),
        &["read -P 0x11 0 1M", "write -P 0xee 0 64k"],
    );
    assert_eq!(
        group_status(&a, "g1")["state"],
        "replicating",
        "replication untouched"
    );

    // Cleanup: VMs stopped in reverse tiers, clones gone.
    let r = plan_run(&b, &["dr", "--mode", "cleanup"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    let ev = events(&log);
    assert!(
        once(&ev, "site-b", "stop", "vm4", "test") < once(&ev, "site-b", "stop", "vm1", "test")
    );
    for g in ["g1", "g2"] {
        assert_eq!(group_status(&b, g)["state"], "replicating");
    }
    qemu_io(&a.url("v1"), &["read -P 0x11 0 1M"]);

    // Planned: waits at the prompt, then stops at the failing callout.
    std::fs::remove_file(&flag).unwrap();
    qemu_io(&a.url("v2"), &["write -P 0x22 1M 1M"]);
    let r = plan_run(&b, &["dr", "--mode", "planned"]);
    assert_eq!(r["status"], "waiting", "{r}");
    assert_eq!(r["waiting_for"], "Is the network team ready?", "{r}");
    assert!(
        at(&events(&log), "site-b", "start", "vm1", "planned").is_empty(),
        "no VM before the prompt"
    );
    assert!(
        !at(&events(&log), "site-a", "stop", "vm1", "planned").is_empty(),
        "A's VMs were stopped"
    );
    let e = b.fails(&["plan", "run", "dr", "--mode", "test"]);
    assert!(e.contains("plan continue dr"), "{e}");
    let r = report_of(&b, &["plan", "continue", "dr", "--json"]);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(step(&r, "check-app")["status"], "failed", "{r}");
    assert!(
        r["errors"][0].as_str().unwrap().contains("check-app"),
        "{r}"
    );
    assert_eq!(
        step(&r, "start VM vm2 (tier 2)")["status"],
        "pending",
        "{r}"
    );
    let id = r["id"].as_str().unwrap().to_string();
    std::fs::write(&flag, "").unwrap();
    let r = plan_run(&b, &["dr", "--resume"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["id"], id.as_str(), "the resume continues the same run");
    assert!(statuses(&r).iter().all(|(_, s)| s == "succeeded"), "{r}");
    assert!(
        step(&r, "check-app")["output"]
            .as_str()
            .unwrap()
            .contains("earlier attempt failed")
    );
    let ev = events(&log);
    assert_tiers(&ev, "site-b", "planned");
    assert_eq!(r["groups"].as_array().unwrap().len(), 2, "{r}");
    for g in r["groups"].as_array().unwrap() {
        assert_eq!(g["pit_name"], "planned-failover", "{r}");
    }
    qemu_io(&b.url("v2"), &["read -P 0x12 0 1M", "read -P 0x22 1M 1M"]);
    qemu_io(&b.url("v4"), &["read -P 0x14 0 1M"]);
    qemu_io(&b.url("v3"), &["write -P 0x33 2M 1M"]);

    // Reprotect at B, failback at A (through the prompt again).
    let r = plan_run(&b, &["dr", "--mode", "reprotect"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    for g in ["g1", "g2"] {
        assert_eq!(group_status(&b, g)["role"], "primary");
        assert_eq!(group_status(&a, g)["role"], "replica");
    }
    assert_eq!(a.json(&["plan", "show", "dr"]), defined);
    assert_eq!(b.json(&["plan", "show", "dr"]), defined);
    let e = b.fails(&["plan", "run", "dr", "--mode", "failback"]);
    assert!(e.contains("at site-a"), "{e}");
    let r = plan_run(&a, &["dr", "--mode", "failback"]);
    assert_eq!(r["status"], "waiting", "{r}");
    let r = report_of(&a, &["plan", "continue", "dr", "--json"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_tiers(&events(&log), "site-a", "planned");
    for g in ["g1", "g2"] {
        let st = group_status(&a, g);
        assert_eq!(
            (st["role"].as_str(), st["state"].as_str()),
            (Some("primary"), Some("replicating")),
            "{st}"
        );
        verify_clean(&a, g);
    }
    qemu_io(&a.url("v3"), &["read -P 0x13 0 1M", "read -P 0x33 2M 1M"]);

    // The plan is as defined, at both sites; both know every run.
    assert_eq!(a.json(&["plan", "show", "dr"]), defined);
    assert_eq!(b.json(&["plan", "show", "dr"]), defined);
    for s in [&a, &b] {
        let h = s.json(&["plan", "history", "dr"]);
        let modes: Vec<&str> = h
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["mode"].as_str().unwrap())
            .collect();
        assert_eq!(
            modes,
            ["test", "cleanup", "planned", "reprotect", "failback"],
            "{h}"
        );
    }
    let rep = a.json(&["plan", "report", &id]);
    assert_eq!(rep["status"], "succeeded", "{rep}");
    assert!(rep["rto_seconds"].as_f64().is_some(), "{rep}");
}

#[test]
fn disaster_with_site_a_killed_completes_at_b_and_reports_a_errors() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hooks.log");
    let (mut a, b) = setup(&log);
    qemu_io(&a.url("v1"), &["write -P 0x21 1M 1M"]);
    sync_pit(&a, "g1", &[]);
    a.kill9();
    let r = plan_run(&b, &["dr", "--mode", "disaster"]);
    assert_eq!(r["status"], "succeeded-with-errors", "{r}");
    let errors: Vec<&str> = r["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        !errors.is_empty() && errors.iter().all(|e| e.contains("at site-a")),
        "only A's steps fail: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("prepare group g1")),
        "{errors:?}"
    );
    for s in r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"] == "site-b")
    {
        assert_eq!(s["status"], "succeeded", "B's steps complete: {s}");
    }
    assert_tiers(&events(&log), "site-b", "unplanned");
    for g in ["g1", "g2"] {
        assert_eq!(group_status(&b, g)["state"], "failed-over");
    }
    qemu_io(&b.url("v1"), &["read -P 0x11 0 1M", "read -P 0x21 1M 1M"]);
    qemu_io(&b.url("v4"), &["read -P 0x14 0 1M"]);
    let h = b.json(&["plan", "history", "dr"]);
    assert_eq!(h[0]["errors"].as_u64(), Some(errors.len() as u64), "{h}");
}

/// `target/test-artifacts/`.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn html_report_renders_in_headless_chromium_with_every_step() {
    let (a, b) = group_pair();
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("hooks.log");
    let (start, stop) = hooks(&log);
    a.create_volume("d0", "1M");
    a.json(&[
        "vm", "create", "web", "--volume", "d0", "--start", &start, "--stop", &stop,
    ]);
    create_group(&a, "g", "site-b", &["--vm", "web"], &[]);
    a.json(&["group", "start", "g"]);
    sync_pit(&a, "g", &[]);
    a.json(&[
        "plan",
        "create",
        "web-dr",
        "--protected-site",
        "site-a",
        "--recovery-site",
        "site-b",
    ]);
    a.json(&["plan", "add-group", "web-dr", "g"]);
    a.json(&[
        "plan",
        "add-step",
        "web-dr",
        "smoke <test>",
        "--after-tier",
        "3",
        "--command",
        "echo fine",
    ]);
    // Bad definitions are refused with what to do, at either site.
    let e = a.fails(&["plan", "set-priority", "web-dr", "nope", "1"]);
    assert!(e.contains("no VM nope"), "{e}");
    let e = b.fails(&["plan", "add-group", "web-dr", "missing"]);
    assert!(e.contains("no replication group named \"missing\""), "{e}");
    let e = a.fails(&[
        "plan",
        "set-priority",
        "web-dr",
        "web",
        "2",
        "--wait-for",
        "http:x",
    ]);
    assert!(e.contains("tcp:HOST:PORT"), "{e}");
    let (status, doc) = http_get(&site_addr(&a, "api"), "/api/openapi.json");
    assert_eq!(status, 200);
    assert!(doc.contains("/api/v1/plans/{name}/run") && doc.contains("PlanRunReport"));
    let r = plan_run(&b, &["web-dr", "--mode", "test"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    let id = r["id"].as_str().unwrap();

    let html = b.ok(&["plan", "report", id, "--format", "html"]);
    for s in r["steps"].as_array().unwrap() {
        let name = s["name"]
            .as_str()
            .unwrap()
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert!(html.contains(&name), "the report holds step {name}");
    }
    assert!(
        html.contains("<svg") && html.contains("Timeline"),
        "a timeline"
    );
    let kept = r["html_path"].as_str().expect("html_path");
    assert_eq!(
        std::fs::read_to_string(kept).unwrap(),
        html,
        "the site keeps the same page"
    );
    let dir = artifacts();
    let page = dir.join("plan-report.html");
    std::fs::write(&page, &html).unwrap();
    let shot = dir.join("plan-report.png");
    let _ = std::fs::remove_file(&shot);
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| offsite_testkit::have_tool(c))
        .expect("chromium is required for this test (apt-get install chromium)");
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1280,1400")
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium");
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "chromium wrote no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 20_000,
        "a rendered page, not a blank one: {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}

/// A test drill of a sync group in sync reports the RPO it achieved (the
/// recovered point lacks nothing acknowledged): about 0, not the age of
/// the newest seal (issue 17 found "RPO 220.8 s" for an RPO-0 group).
#[test]
fn a_drill_of_a_sync_group_in_sync_reports_an_rpo_near_zero() {
    let (a, b) = group_pair();
    a.create_volume("d0", "4M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--mode", "sync", "--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync" && s["state"] == "replicating"
    });
    let st = group_status(&a, "g");
    assert_eq!(st["rpo_seconds"], 0, "a sync group's RPO: {st}");
    // The newest seal grows old while nothing is written.
    sync_pit(&a, "g", &[]);
    std::thread::sleep(std::time::Duration::from_secs(6));
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
    let r = plan_run(&b, &["dr", "--mode", "test"]);
    assert_eq!(r["status"], "succeeded", "{r}");
    let rpo = r["groups"][0]["rpo_seconds"].as_f64().expect("rpo_seconds");
    assert!(
        rpo < 3.0,
        "a sync group in sync lost nothing, yet RPO {rpo}: {r}"
    );
    plan_run(&b, &["dr", "--mode", "cleanup"]);
}
