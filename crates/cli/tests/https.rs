//! The API (and web console) over HTTPS (issue 20): real `offsite serve`
//! processes with `[api_tls]`, reached by the CLI (`--url https://...`
//! with `--api-fingerprint` or `--ca-file`, and `--dir`), by `curl` and by
//! `openssl s_client`; the refusal of plain HTTP off loopback at `site
//! init` and at start; plain HTTP on loopback staying the default.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use offsite_testkit::TestSite;

/// `offsite ARGS` without `--dir` (the site is named by `--url`).
fn offsite(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("OFFSITE_DIR")
        .stdin(Stdio::null())
        .output()
        .expect("run offsite")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `offsite ARGS` that must fail with exit 1; returns its error line.
fn refused(args: &[&str]) -> String {
    let out = offsite(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "offsite {args:?} should fail with 1:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    let line = stderr(&out).trim_end().to_string();
    assert!(
        line.starts_with("error: ") && !line.contains('\n'),
        "not one error line: {line:?}"
    );
    line
}

/// `curl ARGS` (silent, errors shown); returns the output.
fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl")
}

/// The fingerprint of the certificate a TLS server at `addr` presents, as
/// OpenSSL sees it, in `site show`'s format (`SHA256:` + lowercase hex).
fn openssl_fingerprint(addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .expect("run openssl");
    let text = stdout(&out);
    let hex = text
        .trim()
        .split_once('=')
        .map(|(_, h)| h.replace(':', "").to_ascii_lowercase())
        .unwrap_or_else(|| {
            panic!(
                "no fingerprint from openssl for {addr}: {text}{}",
                stderr(&out)
            )
        });
    format!("SHA256:{hex}")
}

fn daemon_info(site: &TestSite) -> serde_json::Value {
    let text = std::fs::read_to_string(site.dir().join("run/daemon.json")).expect("daemon.json");
    serde_json::from_str(&text).expect("daemon.json is JSON")
}

fn token_file(site: &TestSite) -> String {
    site.dir().join("api.token").display().to_string()
}

fn token(site: &TestSite) -> String {
    std::fs::read_to_string(site.dir().join("api.token"))
        .expect("api.token")
        .trim()
        .to_string()
}

/// The console's login over curl: returns the `Set-Cookie` header line.
fn console_login_cookie(url: &str, site: &TestSite, extra: &[&str]) -> String {
    let body = format!("{{\"token\": \"{}\"}}", token(site));
    let mut args = vec!["-i", "-X", "POST", "--data", &body];
    args.extend_from_slice(extra);
    let login = format!("{url}/console/login");
    args.push(&login);
    let out = curl(&args);
    let head = stdout(&out);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "console login over {url}: {head}{}",
        stderr(&out)
    );
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no Set-Cookie in the login answer: {head}"))
        .to_string()
}

#[test]
fn a_self_signed_site_serves_https_that_clients_pin() {
    if !have_tools(&["curl", "openssl"]) {
        return;
    }
    let mut site = TestSite::init_with(bin(), "a", &["--api-tls", "self-signed"]);
    site.start();
    let show = site.json(&["site", "show"]);
    let api = show["api"].as_str().expect("api").to_string();
    let url = format!("https://{api}");
    assert_eq!(show["api_url"], url.as_str(), "{show}");
    assert_eq!(show["api_tls"], "self-signed", "{show}");
    let fp = show["api_fingerprint"]
        .as_str()
        .expect("api_fingerprint")
        .to_string();
    assert!(
        fp.starts_with("SHA256:") && fp.len() == 71,
        "api fingerprint: {fp}"
    );
    assert_ne!(
        fp, show["fingerprint"],
        "the API certificate has its own key, not the replication identity's"
    );
    let text = site.ok(&["site", "show"]);
    assert!(
        text.contains(&format!("api url:          {url}")) && text.contains(&fp),
        "site show (text): {text}"
    );

    // What a client sees is what `site show` says.
    assert_eq!(openssl_fingerprint(&api), fp);
    let info = daemon_info(&site);
    assert_eq!(info["api_scheme"], "https", "{info}");
    assert_eq!(info["api_fingerprint"], fp.as_str(), "{info}");

    // The CLI with the fingerprint pinned.
    let tf = token_file(&site);
    let pinned = ["--url", &url, "--token-file", &tf, "--api-fingerprint", &fp];
    let out = offsite(
        &[
            &pinned[..],
            &["volume", "create", "v", "--size", "1M", "--json"],
        ]
        .concat(),
    );
    assert!(out.status.success(), "pinned CLI: {}", stderr(&out));
    let listed: serde_json::Value = serde_json::from_slice(
        &offsite(&[&pinned[..], &["volume", "list", "--json"]].concat()).stdout,
    )
    .expect("volume list JSON");
    assert_eq!(listed[0]["name"], "v", "{listed}");

    // A wrong pin is refused, naming both fingerprints and `site show`.
    let wrong = format!("SHA256:{}", "ab".repeat(32));
    let err = refused(&[
        "--url",
        &url,
        "--token-file",
        &tf,
        "--api-fingerprint",
        &wrong,
        "volume",
        "list",
    ]);
    assert!(
        err.contains(&format!("fingerprint is {fp}, expected {wrong}"))
            && err.contains("site show"),
        "{err}"
    );
    let out = offsite(&[
        "--url",
        &url,
        "--token-file",
        &tf,
        "--api-fingerprint",
        &wrong,
        "volume",
        "list",
        "--json",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(doc["error"]["code"], "tls", "{doc}");
    // A malformed pin is a usage error.
    let out = offsite(&[
        "--url",
        &url,
        "--token-file",
        &tf,
        "--api-fingerprint",
        "ab:cd",
        "site",
        "show",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));

    // No trust at all: the self-signed certificate is refused, and the
    // refusal says how to trust it.
    let err = refused(&["--url", &url, "--token-file", &tf, "volume", "list"]);
    assert!(
        err.contains("not trusted") && err.contains(&fp) && err.contains("--ca-file"),
        "{err}"
    );
    // curl agrees: not without -k or the certificate.
    let out = curl(&[&format!("{url}/api/openapi.json"), "-o", "/dev/null"]);
    assert!(
        !out.status.success(),
        "curl trusted a self-signed certificate"
    );
    // With the certificate as its CA, curl checks it, names included (it
    // lists 127.0.0.1).
    let cert = site.dir().join("tls/api.crt").display().to_string();
    let auth = format!("Authorization: Bearer {}", token(&site));
    let out = curl(&[
        "--cacert",
        &cert,
        "-H",
        &auth,
        &format!("{url}/api/v1/site"),
    ]);
    let body: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("curl --cacert: {e}: {}{}", stdout(&out), stderr(&out)));
    assert_eq!(body["api_fingerprint"], fp.as_str(), "{body}");

    // Plain HTTP on the HTTPS port is told where to go.
    let err = refused(&[
        "--url",
        &format!("http://{api}"),
        "--token-file",
        &tf,
        "volume",
        "list",
    ]);
    assert!(err.contains(&format!("use https://{api}")), "{err}");
    let (status, body) = http_get(&api, "/api/v1/site");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("https_required"), "{body}");
    // A pin with a plain HTTP URL makes no sense, and says so.
    let err = refused(&[
        "--url",
        &format!("http://{api}"),
        "--token-file",
        &tf,
        "--api-fingerprint",
        &fp,
        "site",
        "show",
    ]);
    assert!(err.contains("plain HTTP"), "{err}");
    // Through --dir the CLI pins daemon.json's fingerprint by itself, and
    // takes no pin of the user's.
    let err = site.fails(&["--api-fingerprint", &fp, "volume", "list"]);
    assert!(err.contains("--url"), "{err}");

    // The console over HTTPS: its cookie is Secure (and still HttpOnly,
    // SameSite=Strict), and works for the API.
    let cookie = console_login_cookie(&url, &site, &["--cacert", &cert]);
    for attr in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attr), "cookie lacks {attr}: {cookie}");
    }
    let pair = cookie
        .split_once(':')
        .and_then(|(_, v)| v.trim().split(';').next())
        .expect("cookie value")
        .to_string();
    let out = curl(&[
        "--cacert",
        &cert,
        "-b",
        &pair,
        &format!("{url}/api/v1/site"),
    ]);
    assert!(
        stdout(&out).contains("\"name\":\"a\""),
        "the session cookie over HTTPS: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // The page itself.
    let out = curl(&["--cacert", &cert, &format!("{url}/")]);
    assert!(stdout(&out).contains("<html"), "{}", stdout(&out));

    // Server-sent events stream over TLS.
    let out = curl(&[
        "--cacert",
        &cert,
        "-N",
        "--max-time",
        "3",
        "-H",
        &auth,
        &format!("{url}/api/v1/stream"),
    ]);
    assert!(
        stdout(&out).contains("event: overview"),
        "no overview event over HTTPS: {}{}",
        stdout(&out),
        stderr(&out)
    );

    // SIGHUP with [api_tls] changed: nothing changes until a restart, and
    // the log says so.
    let config = site.dir().join("config.toml");
    let original = std::fs::read_to_string(&config).expect("config.toml");
    std::fs::write(
        &config,
        original.replace("mode = \"self-signed\"", "mode = \"off\""),
    )
    .expect("write config.toml");
    let pid = rustix::process::Pid::from_raw(info["pid"].as_i64().expect("pid") as i32)
        .expect("a daemon pid");
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP the daemon");
    wait_until("the reload's log line", Duration::from_secs(20), || {
        site.log()
            .contains("api_tls: changed in the file (takes effect at the next restart)")
    });
    assert_eq!(site.json(&["site", "show"])["api_fingerprint"], fp.as_str());
    std::fs::write(&config, &original).expect("restore config.toml");

    // A console's live stream open does not hold the shutdown, and a
    // restart serves the same certificate.
    let mut stream = KillOnDrop(Some(
        Command::new("curl")
            .args([
                "-sN",
                "--cacert",
                &cert,
                "-H",
                &auth,
                &format!("{url}/api/v1/stream"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn curl"),
    ));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(site.stop(), Some(0), "{}", tail(&site.log(), 20));
    // The stream ended with the daemon (curl exits when it is closed).
    wait_until("curl's stream to end", Duration::from_secs(20), || {
        stream.child().try_wait().expect("try_wait curl").is_some()
    });
    site.start();
    assert_eq!(site.json(&["site", "show"])["api_fingerprint"], fp.as_str());
    assert_eq!(openssl_fingerprint(&site_addr(&site, "api")), fp);
}

/// A test CA: its certificate's parameters, key and PEM.
struct TestCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    pem: String,
}

fn test_ca() -> TestCa {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "offsite test CA");
    let pem = params.self_signed(&key).expect("CA certificate").pem();
    TestCa { params, key, pem }
}

/// A leaf `ca` issued for `names`: (CA PEM, chain PEM — leaf, then CA —,
/// leaf key PEM, leaf fingerprint).
fn issue_by(ca: &TestCa, names: &[&str]) -> (String, String, String, String) {
    let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf = rcgen::CertificateParams::new(names).expect("leaf params");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "offsite test site");
    let leaf_cert = leaf
        .signed_by(&leaf_key, &issuer)
        .expect("leaf certificate");
    let fp = offsite_client::Fingerprint::of_der(leaf_cert.der()).to_string();
    (
        ca.pem.clone(),
        format!("{}{}", leaf_cert.pem(), ca.pem),
        leaf_key.serialize_pem(),
        fp,
    )
}

/// A new test CA and a leaf it issued for `names` (see [`issue_by`]).
fn issue(names: &[&str]) -> (String, String, String, String) {
    issue_by(&test_ca(), names)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write test file");
    path.display().to_string()
}

#[test]
fn an_operator_certificate_is_served_and_checked_against_its_ca() {
    let files = tempfile::tempdir().expect("temp dir");
    let ca_pair = test_ca();
    let (ca, chain, key, leaf_fp) = issue_by(&ca_pair, &["localhost", "127.0.0.1"]);
    let ca_file = write(files.path(), "ca.pem", &ca);
    let chain_file = write(files.path(), "chain.pem", &chain);
    let key_file = write(files.path(), "leaf.key", &key);
    let (other_ca, _, other_key, _) = issue(&["localhost"]);
    let other_ca_file = write(files.path(), "other-ca.pem", &other_ca);
    let other_key_file = write(files.path(), "other.key", &other_key);

    // A key that is not the certificate's: refused at init, nothing made.
    let target = files.path().join("refused-site");
    let err = refused(&[
        "site",
        "init",
        "--dir",
        &target.display().to_string(),
        "--name",
        "x",
        "--api-tls-cert",
        &chain_file,
        "--api-tls-key",
        &other_key_file,
    ]);
    assert!(
        err.contains("does not belong") && err.contains("other.key"),
        "{err}"
    );
    assert!(!target.exists(), "a refused init left {}", target.display());

    // Off loopback with the operator's certificate (the flags imply
    // `--api-tls files`): accepted at init and at start.
    let mut site = TestSite::init_with(
        bin(),
        "b",
        &[
            "--api",
            "0.0.0.0:0",
            "--api-tls-cert",
            &chain_file,
            "--api-tls-key",
            &key_file,
        ],
    );
    let config = std::fs::read_to_string(site.dir().join("config.toml")).expect("config.toml");
    assert!(
        config.contains("mode = \"files\"") && config.contains(&chain_file),
        "{config}"
    );
    site.start();
    let show = site.json(&["site", "show"]);
    assert_eq!(show["api_tls"], "files", "{show}");
    assert_eq!(show["api_fingerprint"], leaf_fp.as_str(), "{show}");
    let port = show["api"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, p)| p.to_string())
        .expect("api port");
    assert!(
        show["api_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("https://")),
        "{show}"
    );

    let tf = token_file(&site);
    let at = |host: &str| format!("https://{host}:{port}");
    // The CA checks it, for each name the certificate lists.
    for host in ["127.0.0.1", "localhost"] {
        let out = offsite(&[
            "--url",
            &at(host),
            "--token-file",
            &tf,
            "--ca-file",
            &ca_file,
            "site",
            "show",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "--ca-file at {host}: {}",
            stderr(&out)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(doc["name"], "b");
    }
    // An address the certificate does not name is refused (127.0.0.2 is
    // loopback too, and the listener is on every address).
    let err = refused(&[
        "--url",
        &at("127.0.0.2"),
        "--token-file",
        &tf,
        "--ca-file",
        &ca_file,
        "site",
        "show",
    ]);
    assert!(err.contains("does not name 127.0.0.2"), "{err}");
    // ... unless the certificate is pinned, which checks no name.
    let out = offsite(&[
        "--url",
        &at("127.0.0.2"),
        "--token-file",
        &tf,
        "--api-fingerprint",
        &leaf_fp,
        "site",
        "show",
    ]);
    assert!(
        out.status.success(),
        "pinned at 127.0.0.2: {}",
        stderr(&out)
    );
    // Another CA does not vouch for it.
    let err = refused(&[
        "--url",
        &at("127.0.0.1"),
        "--token-file",
        &tf,
        "--ca-file",
        &other_ca_file,
        "site",
        "show",
    ]);
    assert!(
        err.contains("not trusted") && err.contains(&leaf_fp),
        "{err}"
    );
    // A CA file that holds no certificate says so.
    let err = refused(&[
        "--url",
        &at("127.0.0.1"),
        "--token-file",
        &tf,
        "--ca-file",
        &key_file,
        "site",
        "show",
    ]);
    assert!(
        err.contains("leaf.key") && err.contains("CA certificate"),
        "{err}"
    );
    // --ca-file and --api-fingerprint are two answers to one question.
    let out = offsite(&[
        "--url",
        &at("127.0.0.1"),
        "--token-file",
        &tf,
        "--ca-file",
        &ca_file,
        "--api-fingerprint",
        &leaf_fp,
        "site",
        "show",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // The local CLI pins the operator's certificate through daemon.json.
    site.ok(&["volume", "list"]);
    // curl, with the CA, sees the served chain.
    let out = curl(&[
        "--cacert",
        &ca_file,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/api/openapi.json", at("localhost")),
    ]);
    assert_eq!(stdout(&out), "200", "{}", stderr(&out));

    // A renewal in place: SIGHUP serves the new certificate to new
    // connections without a restart; site show and the local CLI follow.
    let (_, renewed_chain, renewed_key, renewed_fp) =
        issue_by(&ca_pair, &["localhost", "127.0.0.1"]);
    std::fs::write(&key_file, renewed_key).expect("renew the key");
    std::fs::write(&chain_file, renewed_chain).expect("renew the chain");
    let hup = || {
        let pid =
            rustix::process::Pid::from_raw(daemon_info(&site)["pid"].as_i64().expect("pid") as i32)
                .expect("a daemon pid");
        rustix::process::kill_process(pid, rustix::process::Signal::HUP)
            .expect("SIGHUP the daemon");
    };
    hup();
    let line = format!("API certificate: {leaf_fp} -> {renewed_fp}");
    wait_until(
        "the renewed certificate's reload",
        Duration::from_secs(20),
        || site.log().contains(&line),
    );
    assert_eq!(
        openssl_fingerprint(&format!("127.0.0.1:{port}")),
        renewed_fp
    );
    assert_eq!(
        site.json(&["site", "show"])["api_fingerprint"],
        renewed_fp.as_str()
    );
    assert_eq!(daemon_info(&site)["api_fingerprint"], renewed_fp.as_str());
    let out = offsite(&[
        "--url",
        &at("localhost"),
        "--token-file",
        &tf,
        "--ca-file",
        &ca_file,
        "site",
        "show",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A broken renewal changes nothing, and the log says why.
    std::fs::write(&key_file, "not a key").expect("break the key");
    hup();
    wait_until("the refused reload", Duration::from_secs(20), || {
        site.log().contains("except the API certificate") && site.log().contains("leaf.key")
    });
    assert_eq!(
        openssl_fingerprint(&format!("127.0.0.1:{port}")),
        renewed_fp
    );
    site.ok(&["volume", "list"]);
}

#[test]
fn plain_http_off_loopback_is_refused_at_init_and_at_start() {
    let scratch = tempfile::tempdir().expect("temp dir");
    let dir = |name: &str| scratch.path().join(name).display().to_string();
    let init = |name: &str, extra: &[&str]| {
        let d = dir(name);
        let mut args = vec![
            "site",
            "init",
            "--dir",
            &d,
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--nbd",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        offsite(&args)
    };

    // 0.0.0.0 counts as off loopback.
    for api in ["0.0.0.0:0", "[::]:0", "192.0.2.1:7801"] {
        let out = init("a", &["--api", api]);
        assert_eq!(out.status.code(), Some(1), "{api}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("not a loopback address")
                && err.contains("--api-tls self-signed")
                && err.contains("--insecure-api"),
            "{api}: {err}"
        );
        assert!(
            !scratch.path().join("a").exists(),
            "{api}: a refused init left its directory"
        );
    }
    let out = init("a", &["--api", "0.0.0.0:0", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON error");
    assert_eq!(doc["error"]["code"], "invalid", "{doc}");

    // Contradictory flags are usage errors.
    for extra in [
        &["--api-tls", "self-signed", "--insecure-api"][..],
        &[
            "--api-tls",
            "self-signed",
            "--api-tls-cert",
            "c.pem",
            "--api-tls-key",
            "k.pem",
        ][..],
        &["--api-tls-cert", "c.pem"][..],
        &["--api-tls", "sometimes"][..],
    ] {
        let out = init("u", extra);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {}", stderr(&out));
    }
    // `files` without the files is refused, saying what is missing.
    let out = init("f", &["--api-tls", "files"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("cert or key"), "{}", stderr(&out));

    // --insecure-api: recorded, and the daemon serves plain HTTP there.
    let mut site = TestSite::init_with(bin(), "c", &["--api", "0.0.0.0:0", "--insecure-api"]);
    let config = std::fs::read_to_string(site.dir().join("config.toml")).expect("config.toml");
    assert!(config.contains("allow_plaintext = true"), "{config}");
    site.start();
    let show = site.json(&["site", "show"]);
    assert_eq!(show["api_tls"], "off", "{show}");
    assert!(show["api_fingerprint"].is_null(), "{show}");
    assert!(
        show["api_url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://")),
        "{show}"
    );
    site.stop();

    // A config edited to a non-loopback address with TLS off: `serve`
    // refuses to start, says why and what to do, and binds nothing.
    let site = TestSite::init(bin(), "d");
    let path = site.dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("config.toml");
    std::fs::write(
        &path,
        text.replace("api = \"127.0.0.1:0\"", "api = \"0.0.0.0:0\""),
    )
    .expect("write config.toml");
    let out = output_within(
        Command::new(bin()).args(["serve", "--dir"]).arg(site.dir()),
        Duration::from_secs(60),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "serve should refuse: {}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("0.0.0.0:0")
            && err.contains("not a loopback address")
            && err.contains("[api_tls] mode = \"self-signed\"")
            && err.contains("allow_plaintext"),
        "{err}"
    );
    assert!(!site.dir().join("run/daemon.json").exists());
    // `[api_tls]` that does not hold together is refused at start too.
    std::fs::write(&path, format!("{text}\n[api_tls]\nmode = \"files\"\n"))
        .expect("write config.toml");
    let out = output_within(
        Command::new(bin()).args(["serve", "--dir"]).arg(site.dir()),
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cert or key is not set"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn http_on_loopback_stays_the_default() {
    if !have_tools(&["curl"]) {
        return;
    }
    let site = site("a");
    let config = std::fs::read_to_string(site.dir().join("config.toml")).expect("config.toml");
    assert!(
        !config.contains("api_tls"),
        "a default site's config names api_tls: {config}"
    );
    let show = site.json(&["site", "show"]);
    let api = show["api"].as_str().expect("api").to_string();
    assert_eq!(show["api_url"], format!("http://{api}").as_str(), "{show}");
    assert_eq!(show["api_tls"], "off", "{show}");
    assert!(show["api_fingerprint"].is_null(), "{show}");
    assert_eq!(daemon_info(&site)["api_scheme"], "http");
    let text = site.ok(&["site", "show"]);
    assert!(!text.contains("api fingerprint"), "{text}");

    let url = format!("http://{api}");
    let tf = token_file(&site);
    let out = offsite(&["--url", &url, "--token-file", &tf, "site", "show", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // An https:// URL to a plain listener says it is not TLS.
    let err = refused(&[
        "--url",
        &format!("https://{api}"),
        "--token-file",
        &tf,
        "--api-fingerprint",
        &format!("SHA256:{}", "00".repeat(32)),
        "site",
        "show",
    ]);
    assert!(
        err.contains("did not answer with TLS") && err.contains("http://"),
        "{err}"
    );
    // The console's cookie over HTTP is not Secure (the browser would
    // never send it back), and is still HttpOnly and SameSite=Strict.
    let cookie = console_login_cookie(&url, &site, &[]);
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "{cookie}");
}
