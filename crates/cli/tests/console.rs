//! The web console in a real browser (issue 20): two real sites, Chromium
//! driven over WebDriver by `tests/console/drive.py` (python3-selenium,
//! chromium-driver): log in, a group turning healthy, a test failover and
//! its clone's export, a plan's test run answered at its prompt, a planned
//! failover and reverse from the UI, every page checked for JavaScript
//! errors, failed requests and accessibility (axe-core, vendored), log out.
//! Site-a serves its console over plain HTTP (loopback, the default),
//! site-b over HTTPS with its self-signed certificate (`--api-tls
//! self-signed`), which Chromium is told to trust by its key's SPKI hash,
//! as an operator's browser would after accepting it once: the live
//! stream, actions and the session cookie (`Secure` there) over TLS.
//! Screenshots land in `target/test-artifacts/console/`.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

fn have_browser() -> bool {
    let selenium = Command::new("/usr/bin/python3")
        .args(["-c", "import selenium"])
        .output()
        .is_ok_and(|o| o.status.success());
    let ok = selenium && have_tools(&["chromium", "chromedriver", "nbdinfo", "openssl"]);
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the console test: install chromium, chromium-driver, python3-selenium, libnbd-bin and openssl (.ci/run does)"
        );
        eprintln!(
            "skipped: needs chromium, chromium-driver, python3-selenium, nbdinfo and openssl"
        );
    }
    ok
}

/// [`group_site`] whose API serves HTTPS with its own certificate.
fn https_group_site(name: &str) -> offsite_testkit::TestSite {
    let mut s = offsite_testkit::TestSite::init_with(bin(), name, &["--api-tls", "self-signed"]);
    set_replication_config(&s, GROUP_REPLICATION);
    s.start();
    keep_listen_port(&s);
    s
}

/// Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo: what
/// Chromium's `--ignore-certificate-errors-spki-list` takes.
fn spki_sha256_base64(cert: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{}' -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | openssl base64 -A",
            cert.display()
        ))
        .output()
        .expect("run openssl");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && hash.len() == 44,
        "SPKI hash of {}: {hash:?} {}",
        cert.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    hash
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts/console");
    std::fs::create_dir_all(&dir).expect("create the artifacts directory");
    dir
}

#[test]
fn an_operator_protects_tests_fails_over_and_reverses_from_the_console() {
    if !have_browser() {
        return;
    }
    let a = group_site("site-a");
    let b = https_group_site("site-b");
    pair(&a, &b);
    authorize_primary(&b, a.name(), None);
    let b_url = b.json(&["site", "show"])["api_url"]
        .as_str()
        .expect("api_url")
        .to_string();
    assert!(b_url.starts_with("https://"), "{b_url}");
    // Reverse makes site-a the replica of site-b.
    authorize_primary(&a, b.name(), None);
    a.create_volume("v1", "16M");
    a.ok(&[
        "vm",
        "create",
        "vm1",
        "--volume",
        "v1",
        "--quiesce",
        "true",
        "--thaw",
        "true",
    ]);
    create_group(&a, "g1", b.name(), &["--vm", "vm1"], &[]);
    a.ok(&["group", "start", "g1"]);
    wait_group(&a, "g1", "first PIT", GROUP_LIMIT, |st| {
        st["state"] == "replicating" && st["last_pit"].is_object()
    });
    a.json(&[
        "plan",
        "create",
        "p1",
        "--protected-site",
        a.name(),
        "--recovery-site",
        b.name(),
    ]);
    a.json(&["plan", "add-group", "p1", "g1"]);
    a.json(&[
        "plan",
        "add-step",
        "p1",
        "approve",
        "--prompt",
        "Is the network team ready?",
        "--after-tier",
        "0",
    ]);

    let token = |s: &offsite_testkit::TestSite| {
        std::fs::read_to_string(s.dir().join("api.token"))
            .expect("read api.token")
            .trim()
            .to_string()
    };
    let (ta, tb) = (token(&a), token(&b));
    let cfg = serde_json::json!({
        "a": {"name": a.name(), "url": format!("http://{}", site_addr(&a, "api")), "token": ta},
        "b": {"name": b.name(), "url": b_url, "token": tb},
        "spki": [spki_sha256_base64(&b.dir().join("tls/api.crt"))],
        "group": "g1",
        "plan": "p1",
        "artifacts": artifacts(),
    });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/drive.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(&script).arg(cfg.to_string());
    let out = output_within(&mut cmd, Duration::from_secs(900));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the console test failed:\n{stderr}\nsite-a log:\n{}\nsite-b log:\n{}",
        tail(&a.log(), 40),
        tail(&b.log(), 40)
    );
    let summary: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no summary from drive.py ({e}): {stdout}"));
    eprintln!("{}", serde_json::to_string_pretty(&summary).unwrap());
    assert!(summary["pages"].as_array().is_some_and(|p| p.len() >= 12));

    // What the clicks did, as the CLI sees it: the group now replicates
    // from site-b, and no test clone is left.
    let st = group_status(&b, "g1");
    assert_eq!(st["role"], "primary", "{st}");
    assert!(st["test_failover_pit"].is_null(), "{st}");
    let history = b.json(&["plan", "history", "p1"]);
    let modes: Vec<&str> = history
        .as_array()
        .expect("plan history is an array")
        .iter()
        .filter_map(|r| r["mode"].as_str())
        .collect();
    assert!(
        modes.contains(&"test") && modes.contains(&"cleanup"),
        "{history}"
    );

    // The token never reached a log.
    for (site, t) in [(&a, &ta), (&b, &tb)] {
        assert!(
            !site.log().contains(t.as_str()),
            "{}'s log holds its API token",
            site.name()
        );
    }
}
