//! Pairing sites over mutual TLS 1.3 with pinned certificate fingerprints:
//! `partner add/list/remove/test`, refusals of unpinned certificates (and
//! their rate-limited log lines), impostors with the right name but another
//! key, revocation, and the validation of `partner add`.

mod common;

use std::time::Duration;

use common::*;
use offsite_testkit::TestSite;

/// Generous liveness bound for the partner monitor (probes every 0.5 s).
const MONITOR: Duration = Duration::from_secs(30);

fn is_fingerprint(fp: &str) -> bool {
    fp.len() == 71 && fp.starts_with("SHA256:") && fp[7..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn assert_test_result(r: &serde_json::Value, partner: &str, bytes: u64, compression: bool) {
    assert_eq!(r["partner"], partner, "{r}");
    assert_eq!(r["protocol_version"], 2, "{r}");
    assert_eq!(r["compression"], compression, "{r}");
    assert_eq!(r["bytes"].as_u64(), Some(bytes), "{r}");
    for key in ["mb_per_s", "rtt_ms", "handshake_ms", "seconds"] {
        let v = r[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing: {r}"));
        assert!(v > 0.0, "{key} should be > 0: {r}");
    }
}

#[test]
fn paired_sites_test_the_link_and_monitor_each_other() {
    let a = fast_site("site-a");
    let b = fast_site("site-b");
    for s in [&a, &b] {
        let show = s.json(&["site", "show"]);
        assert!(
            is_fingerprint(show["fingerprint"].as_str().unwrap_or_default()),
            "{show}"
        );
        let listen = show["listen"].as_str().expect("listen");
        assert!(
            listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| a.port() != 0),
            "listen should be the bound HOST:PORT: {show}"
        );
    }
    assert_ne!(fingerprint_of(&a), fingerprint_of(&b));
    // B pins A first, so A's monitor is never refused by B (B's metrics are
    // checked below); B's monitor may be refused by A until A pins B.
    pair(&b, &a);

    let r = partner_test(&a, "site-b", "8M", &[]);
    assert_test_result(&r, "site-b", 8 << 20, false);
    let r = partner_test(&a, "site-b", "8M", &["--compress"]);
    assert_test_result(&r, "site-b", 8 << 20, true);
    // And the other way round.
    let r = partner_test(&b, "site-a", "4M", &[]);
    assert_test_result(&r, "site-a", 4 << 20, false);

    for (site, other) in [(&a, &b), (&b, &a)] {
        let p = wait_reachable(site, other.name(), true, MONITOR);
        assert!(p["last_handshake_at"].is_string(), "{p}");
        assert!(p["created_at"].is_string(), "{p}");
        assert!(p["last_error"].is_null(), "{p}");
        assert!(p["rtt_ms"].as_f64().is_some_and(|v| v > 0.0), "{p}");
        assert_eq!(
            p["fingerprint"].as_str(),
            Some(fingerprint_of(other).as_str())
        );
        assert_eq!(
            p["address"].as_str(),
            Some(site_addr(other, "listen").as_str())
        );
    }
    assert!(repl_metric(&b, "offsite_repl_sessions_total") >= 2);
    assert_eq!(repl_metric(&b, "offsite_repl_tls_refused_total"), 0);
    assert_eq!(repl_metric(&b, "offsite_repl_hello_failed_total"), 0);

    // SIGTERM with sessions open in both directions is a clean exit, and A
    // notices that B went away.
    let mut b = b;
    assert_eq!(b.stop(), Some(0), "B's log:\n{}", tail(&b.log(), 20));
    let p = wait_reachable(&a, "site-b", false, MONITOR);
    assert!(p["last_error"].is_string(), "{p}");
    let mut a = a;
    assert_eq!(a.stop(), Some(0), "A's log:\n{}", tail(&a.log(), 20));
}

#[test]
fn unpinned_site_is_refused_during_tls_and_logged_once() {
    let a = site("site-a");
    // C pins A; A does not pin C.
    let c = site("site-c");
    pin(&c, &a);
    let c_fp = fingerprint_of(&c);
    for attempt in 0..4 {
        let err = c.fails(&["partner", "test", "site-a", "--bytes", "1M"]);
        assert!(
            err.contains("refused this site's certificate") && err.contains(&c_fp),
            "attempt {attempt}: the error should say A refused C's certificate {c_fp}: {err}"
        );
        assert!(
            err.contains("partner add"),
            "the error should say how to pair: {err}"
        );
    }
    let err = c.fails(&["partner", "check", "site-a"]);
    assert!(err.contains("certificate"), "{err}");

    wait_until("A counts the refusals", MONITOR, || {
        repl_metric(&a, "offsite_repl_tls_refused_total") >= 5
    });
    assert_eq!(repl_metric(&a, "offsite_repl_sessions_total"), 0);
    let log = a.log();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused replication connection"))
        .collect();
    assert_eq!(
        refused.len(),
        1,
        "refusals from one address are logged once per window:\n{}",
        refused.join("\n")
    );
    assert!(
        refused[0].contains(&c_fp),
        "the refusal line should show the offered fingerprint {c_fp}: {}",
        refused[0]
    );
    // C is not a partner of A, and A's table is untouched.
    assert!(partner_entry(&a, "site-c").is_none());
}

#[test]
fn right_name_with_another_key_is_refused_both_ways() {
    let a = site("site-a");
    let b1 = site("site-b");
    let b2 = site("site-b"); // same name, fresh key
    let b1_fp = fingerprint_of(&b1);
    let b2_fp = fingerprint_of(&b2);
    assert_ne!(b1_fp, b2_fp, "every site has its own key");
    pair(&a, &b1);
    partner_test(&a, "site-b", "1M", &[]);

    // The impostor dials A: A pins site-b to b1's key, so the TLS handshake
    // fails and A logs b2's fingerprint.
    pin(&b2, &a);
    let err = b2.fails(&["partner", "test", "site-a", "--bytes", "1M"]);
    assert!(
        err.contains("refused this site's certificate") && err.contains(&b2_fp),
        "{err}"
    );
    wait_until("A logs the impostor's fingerprint", MONITOR, || {
        a.log()
            .lines()
            .any(|l| l.contains("refused replication connection") && l.contains(&b2_fp))
    });
    assert!(repl_metric(&a, "offsite_repl_tls_refused_total") >= 1);

    // A dials the impostor's address still pinning b1's key: A refuses the
    // server certificate and names both fingerprints.
    a.ok(&["partner", "remove", "site-b"]);
    a.ok(&[
        "partner",
        "add",
        "site-b",
        "--address",
        &site_addr(&b2, "listen"),
        "--fingerprint",
        &b1_fp,
    ]);
    let err = a.fails(&["partner", "test", "site-b", "--bytes", "1M"]);
    assert!(
        err.contains(&b1_fp) && err.contains(&b2_fp) && err.contains("pinned"),
        "the error should name the pinned and the presented fingerprint: {err}"
    );
    // The real site-b still works with A.
    a.ok(&["partner", "remove", "site-b"]);
    pin(&a, &b1);
    partner_test(&a, "site-b", "1M", &[]);
}

#[test]
fn names_must_match_the_pinned_partner() {
    let a = site("site-a");
    let b = site("site-b");
    // A pins B's key under another name: B announces "site-b".
    pin(&b, &a);
    a.ok(&[
        "partner",
        "add",
        "not-b",
        "--address",
        &site_addr(&b, "listen"),
        "--fingerprint",
        &fingerprint_of(&b),
    ]);
    let err = a.fails(&["partner", "test", "not-b", "--bytes", "1M"]);
    assert!(
        err.contains("'not-b'") && err.contains("calls itself 'site-b'"),
        "the error should name the pinned and the announced name: {err}"
    );

    // B pins A's key under another name: B refuses A at the hello.
    let a2 = site("site-a2");
    let b2 = site("site-b2");
    pin(&a2, &b2);
    b2.ok(&[
        "partner",
        "add",
        "not-a2",
        "--address",
        &site_addr(&a2, "listen"),
        "--fingerprint",
        &fingerprint_of(&a2),
    ]);
    let err = a2.fails(&["partner", "test", "site-b2", "--bytes", "1M"]);
    assert!(
        err.contains("refused the session")
            && err.contains("'not-a2'")
            && err.contains("calls itself 'site-a2'"),
        "the refusal should name both names: {err}"
    );
    wait_until("B counts the failed hello", MONITOR, || {
        repl_metric(&b2, "offsite_repl_hello_failed_total") >= 1
    });
}

#[test]
fn removed_partner_is_refused_and_its_sessions_close() {
    let a = fast_site("site-a");
    let b = fast_site("site-b");
    pair(&a, &b);
    wait_reachable(&a, "site-b", true, MONITOR);
    wait_reachable(&b, "site-a", true, MONITOR);
    partner_test(&a, "site-b", "1M", &[]);

    let out = b.ok(&["partner", "remove", "site-a"]);
    assert!(out.contains("removed"), "{out}");
    assert!(partner_entry(&b, "site-a").is_none());
    assert_eq!(b.json(&["partner", "list"]), serde_json::json!([]));

    let err = a.fails(&["partner", "test", "site-b", "--bytes", "1M"]);
    assert!(
        err.contains("refused this site's certificate"),
        "A's next connection is refused during TLS: {err}"
    );
    // A's monitor session (established before the removal) is closed by B,
    // and its reconnects are refused: A sees B unreachable with an error.
    let p = wait_reachable(&a, "site-b", false, MONITOR);
    let last_error = p["last_error"].as_str().unwrap_or_default();
    assert!(!last_error.is_empty(), "{p}");
    assert!(
        p["last_handshake_at"].is_string(),
        "the last successful handshake is kept: {p}"
    );
    wait_until(
        "B logs closing the removed partner's session",
        MONITOR,
        || b.log().contains("partner was removed"),
    );

    // Pairing again restores the link.
    pin(&b, &a);
    partner_test(&a, "site-b", "1M", &[]);
    wait_reachable(&a, "site-b", true, MONITOR);
}

#[test]
fn partner_add_and_remove_validate_input() {
    let a = site("site-a");
    let b = site("site-b");
    let b_fp = fingerprint_of(&b);
    let b_listen = site_addr(&b, "listen");
    let add = |name: &str, address: &str, fp: &str| {
        a.fails(&[
            "partner",
            "add",
            name,
            "--address",
            address,
            "--fingerprint",
            fp,
        ])
    };

    for bad in [
        "SHA256:abc",
        "nonsense",
        &format!("SHA256:{}", "zz".repeat(32)),
        "",
    ] {
        let err = add("site-b", &b_listen, bad);
        assert!(err.contains("fingerprint"), "{bad:?}: {err}");
    }
    let err = add("site-b", &b_listen, &fingerprint_of(&a));
    assert!(err.contains("own"), "own fingerprint: {err}");
    let err = add("site-a", &b_listen, &b_fp);
    assert!(err.contains("own name"), "own name: {err}");
    for bad in [
        "nohost",
        "127.0.0.1",
        ":7800",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "h:x",
    ] {
        let err = add("site-b", bad, &b_fp);
        assert!(err.contains("address"), "{bad:?}: {err}");
    }
    let err = add("bad name", &b_listen, &b_fp);
    assert!(err.contains("name"), "{err}");
    assert_eq!(a.json(&["partner", "list"]), serde_json::json!([]));

    // Fingerprints are accepted as users paste them (any case, colons).
    let hex = b_fp.trim_start_matches("SHA256:").to_uppercase();
    let colons: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    let p = a.json(&[
        "partner",
        "add",
        "site-b",
        "--address",
        &b_listen,
        "--fingerprint",
        &colons.join(":"),
    ]);
    assert_eq!(p["fingerprint"].as_str(), Some(b_fp.as_str()), "{p}");
    assert_eq!(p["reachable"], false, "{p}");
    assert!(p["last_handshake_at"].is_null(), "{p}");

    let err = add("site-b", &b_listen, &"ab".repeat(32));
    assert!(err.contains("already exists"), "duplicate name: {err}");
    let err = add("site-b2", &b_listen, &b_fp);
    assert!(
        err.contains("already pinned"),
        "duplicate fingerprint: {err}"
    );

    let err = a.fails(&["partner", "remove", "no-such-site"]);
    assert!(err.contains("no-such-site"), "{err}");
    let err = a.fails(&["partner", "test", "no-such-site", "--bytes", "1M"]);
    assert!(err.contains("no-such-site"), "{err}");
    a.ok(&["partner", "remove", "site-b"]);
    a.fails(&["partner", "remove", "site-b"]);
    assert_eq!(a.json(&["partner", "list"]), serde_json::json!([]));
    // Unused site, kept alive so its fingerprint stays meaningful.
    drop::<TestSite>(b);
}

#[test]
fn site_bandwidth_limit_caps_partner_test() {
    let a = site("site-a");
    let b = site("site-b");
    pair(&a, &b);
    let s = a.json(&["site", "set", "--bandwidth", "4M"]);
    assert_eq!(s["bandwidth_bytes_per_sec"].as_u64(), Some(4 << 20), "{s}");
    let r = partner_test(&a, "site-b", "16M", &[]);
    let mbps = r["mb_per_s"].as_f64().expect("mb_per_s");
    eprintln!("at 4 MiB/s: {r}");
    // 4 MiB/s = 4.19 MB/s; the burst allowance adds a little. A cap check,
    // not a timing assertion: a slow machine only makes it lower.
    assert!(
        mbps > 0.0 && mbps < 5.5,
        "the site bandwidth limit should cap the test: {r}"
    );
    let s = a.json(&["site", "set", "--bandwidth", "0"]);
    assert!(
        s["bandwidth_bytes_per_sec"].is_null(),
        "0 means unlimited: {s}"
    );
    let text = a.ok(&["site", "set"]);
    assert!(text.contains("unlimited"), "{text}");
}

#[test]
fn partner_address_can_be_changed_without_repairing() {
    let a = site("site-a");
    let b = site("site-b");
    pair(&a, &b);
    let real = site_addr(&b, "listen");
    // A wrong address: the partner is unreachable, its identity still pinned.
    a.ok(&["partner", "set", "site-b", "--address", "127.0.0.1:9"]);
    assert_eq!(
        partner_entry(&a, "site-b").expect("partner")["address"],
        "127.0.0.1:9"
    );
    let err = a.fails(&["partner", "test", "site-b", "--bytes", "1M"]);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    // Back to the real address: works again without a new `partner add`.
    a.ok(&["partner", "set", "site-b", "--address", &real]);
    partner_test(&a, "site-b", "1M", &[]);
    let err = a.fails(&["partner", "set", "site-b", "--address", "nowhere"]);
    assert!(err.contains("HOST:PORT"), "{err}");
    let err = a.fails(&["partner", "set", "site-x", "--address", &real]);
    assert!(err.contains("no partner named"), "{err}");
}

/// Reachability follows the monitoring session's keepalive, not the probe
/// schedule (issue 17: `partner list` said reachable for ~30 s after the
/// partner died): with probes every 60 s, a killed partner is unreachable
/// within a second or two, and a frozen one (SIGSTOP: nothing closes) once
/// the keepalive finds it silent for `dead_after` (3 s here).
#[test]
fn reachability_follows_the_keepalive_not_the_probe_schedule() {
    const SLOW_PROBES: &str = "keepalive_secs = 0.5\ndead_after_secs = 3.0\nprobe_secs = 60.0\nconnect_timeout_secs = 2.0\n";
    let start = |name: &str| {
        let mut s = offsite_testkit::TestSite::init(bin(), name);
        set_replication_config(&s, SLOW_PROBES);
        s.start();
        keep_listen_port(&s);
        s
    };
    let a = start("site-a");
    let mut b = start("site-b");
    pair(&a, &b);
    // The first probe (at start-up or right after pairing) opens the session.
    a.ok(&["partner", "test", "site-b", "--bytes", "1M"]);
    wait_reachable(&a, "site-b", true, Duration::from_secs(70));

    // Killed: its sockets close, A's session ends at once.
    let t0 = std::time::Instant::now();
    b.kill9();
    let p = wait_reachable(&a, "site-b", false, Duration::from_secs(20));
    eprintln!("killed partner unreachable after {:?}: {p}", t0.elapsed());
    assert!(p["last_error"].is_string(), "{p}");

    // Back, then frozen: nothing closes; the keepalive declares it dead.
    b.start();
    // Reached again (a contact, not a probe): A opens its monitoring session.
    a.ok(&["partner", "test", "site-b", "--bytes", "1M"]);
    wait_reachable(&a, "site-b", true, Duration::from_secs(70));
    std::thread::sleep(Duration::from_secs(2));
    let d: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(b.dir().join("run/daemon.json")).expect("daemon.json"),
    )
    .expect("daemon.json");
    let pid = d["pid"].as_u64().expect("pid").to_string();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, pid.as_str()])
            .status()
            .expect("kill")
    };
    signal("-STOP");
    let t0 = std::time::Instant::now();
    let p = wait_reachable(&a, "site-b", false, Duration::from_secs(20));
    eprintln!("frozen partner unreachable after {:?}: {p}", t0.elapsed());
    signal("-CONT");
}
