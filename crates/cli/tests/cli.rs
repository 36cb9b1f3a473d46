//! The `offsite` command line against a real daemon: site and volume
//! commands, their JSON, their errors, the open HTTP endpoints, import,
//! and daemon lifecycle (SIGTERM, second daemon on one directory).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, qemu_io};

#[test]
fn site_init_refuses_an_existing_site_dir() {
    let site = TestSite::init(bin(), "a");
    let err = site.fails(&[
        "site",
        "init",
        "--name",
        "b",
        "--listen",
        "127.0.0.1:0",
        "--api",
        "127.0.0.1:0",
        "--nbd",
        "127.0.0.1:0",
    ]);
    assert!(
        err.contains("already"),
        "re-init should say the dir already holds a site: {err}"
    );
    // The original site is untouched.
    let cfg = std::fs::read_to_string(site.dir().join("config.toml")).expect("config.toml");
    assert!(
        cfg.contains("\"a\""),
        "config.toml was rewritten by the refused init: {cfg}"
    );
}

#[test]
fn site_show_json_has_identity_and_bound_ports() {
    let site = site("a");
    let s = site.json(&["site", "show"]);
    assert_eq!(s["name"], "a", "site show: {s}");
    let fp = s["fingerprint"].as_str().expect("fingerprint");
    assert!(
        fp.starts_with("SHA256:"),
        "fingerprint should start with SHA256: {fp}"
    );
    assert_eq!(
        fp.len(),
        71,
        "fingerprint should be SHA256: + 64 hex digits: {fp}"
    );
    assert!(
        fp[7..].chars().all(|c| c.is_ascii_hexdigit()),
        "fingerprint not hex: {fp}"
    );
    assert!(s["listen"].is_string(), "site show has no listen: {s}");
    for key in ["api", "nbd"] {
        let addr: SocketAddr = s[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key}: {s}"))
            .parse()
            .unwrap_or_else(|e| panic!("{key} is not HOST:PORT ({e}): {s}"));
        assert_ne!(
            addr.port(),
            0,
            "{key} should show the bound port, not 0: {s}"
        );
    }
    // The plain form shows the same fingerprint.
    let text = site.ok(&["site", "show"]);
    assert!(
        text.contains(fp),
        "site show (text) lacks the fingerprint: {text}"
    );
}

#[test]
fn volume_create_list_show_url_delete_round_trip() {
    let site = site("a");
    assert_eq!(
        site.json(&["volume", "list"]),
        serde_json::json!([]),
        "a new site has no volumes"
    );

    let v = site.json(&["volume", "create", "v", "--size", "64M"]);
    let nbd = site_addr(&site, "nbd");
    assert_eq!(v["name"], "v", "{v}");
    assert_eq!(v["size_bytes"], 64 << 20, "{v}");
    assert_eq!(v["block_size"], 4096, "default block size is 4K: {v}");
    assert_eq!(v["dirty_bytes"], 0, "a new volume is clean: {v}");
    assert_eq!(v["role"], "primary", "{v}");
    assert_eq!(v["state"], "ready", "{v}");
    assert_eq!(v["connections"], 0, "{v}");
    assert_eq!(v["url"], format!("nbd://{nbd}/v"), "{v}");
    assert!(
        v["created_at"].as_str().is_some_and(|t| t.contains('T')),
        "created_at not RFC 3339: {v}"
    );

    let w = site.json(&[
        "volume",
        "create",
        "w",
        "--size",
        "1G",
        "--block-size",
        "64K",
    ]);
    assert_eq!(w["block_size"], 65536, "{w}");
    assert_eq!(w["size_bytes"], 1u64 << 30, "{w}");

    let list = site.json(&["volume", "list"]);
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["v", "w"], "volume list: {list}");
    assert_eq!(list[0], v, "list entry differs from create's answer");

    let shown = site.json(&["volume", "show", "v"]);
    assert_eq!(shown, v, "show differs from create's answer");
    assert_eq!(site.url("v"), format!("nbd://{nbd}/v"));
    let u = site.json(&["volume", "url", "v"]);
    assert_eq!(
        u,
        serde_json::json!({"name": "v", "url": format!("nbd://{nbd}/v")})
    );
    let text = site.ok(&["volume", "list"]);
    assert!(
        text.starts_with("NAME") && text.contains("nbd://"),
        "volume list table: {text}"
    );

    let vols = site.dir().join("volumes");
    assert_eq!(
        std::fs::metadata(vols.join("1.img")).map(|m| m.len()).ok(),
        Some(64 << 20),
        "v (the first volume) should live in volumes/1.img"
    );
    let d = site.json(&["volume", "delete", "v"]);
    assert_eq!(
        d,
        serde_json::json!({"name": "v", "deleted": true}),
        "delete --json"
    );
    let err = site.fails(&["volume", "show", "v"]);
    assert!(
        err.contains("no volume named"),
        "deleted volume still shown: {err}"
    );
    let list = site.json(&["volume", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "only w is left: {list}");
    // The name can be reused after delete.
    site.ok(&["volume", "create", "v", "--size", "4M"]);
    assert_eq!(site.json(&["volume", "show", "v"])["size_bytes"], 4 << 20);
}

#[test]
fn unknown_volume_errors_say_what_to_do() {
    let site = site("a");
    for cmd in ["show", "delete", "url", "clear-dirty"] {
        let err = site.fails(&["volume", cmd, "nope"]);
        assert!(
            err.contains("\"nope\""),
            "volume {cmd} nope: error should name the volume: {err}"
        );
        assert!(
            err.contains("volume list"),
            "volume {cmd} nope: error should point to `volume list`: {err}"
        );
    }
}

#[test]
fn duplicate_volume_name_is_refused() {
    let site = site("a");
    site.create_volume("v", "4M");
    let err = site.fails(&["volume", "create", "v", "--size", "8M"]);
    assert!(err.contains("already exists"), "duplicate create: {err}");
    assert_eq!(
        site.json(&["volume", "show", "v"])["size_bytes"],
        4 << 20,
        "original volume changed"
    );
}

#[test]
fn bad_sizes_are_refused() {
    let site = site("a");
    let err = site.fails(&["volume", "create", "v", "--size", "1000"]);
    assert!(
        err.contains("multiple of the block size"),
        "--size 1000: {err}"
    );
    let err = site.fails(&["volume", "create", "v", "--size", "0"]);
    assert!(err.contains("greater than 0"), "--size 0: {err}");
    let err = site.fails(&[
        "volume",
        "create",
        "v",
        "--size",
        "8M",
        "--block-size",
        "3000",
    ]);
    assert!(err.contains("power of two"), "--block-size 3000: {err}");

    let out = site.run(&["volume", "create", "v", "--size", "12Q"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed size is a usage error (exit 2): {stderr}"
    );
    assert!(stderr.contains("not a size"), "bad size string: {stderr}");

    assert_eq!(
        site.json(&["volume", "list"]),
        serde_json::json!([]),
        "a refused create left a volume"
    );
}

#[test]
fn commands_without_a_running_site_say_to_start_it() {
    let site = TestSite::init(bin(), "a");
    for args in [
        &["site", "show"][..],
        &["volume", "list"],
        &["volume", "create", "v", "--size", "4M"],
    ] {
        let err = site.fails(args);
        assert!(
            err.contains("offsite serve"),
            "{args:?} without a daemon should say how to start it: {err}"
        );
    }
}

#[test]
fn wrong_api_token_is_refused() {
    let site = site("a");
    let api = format!("http://{}", site_addr(&site, "api"));
    let bad = scratch_file(&site, "bad.token");
    std::fs::write(&bad, "0123456789abcdef\n").unwrap();
    let err = site.fails(&[
        "site",
        "show",
        "--url",
        &api,
        "--token-file",
        bad.to_str().unwrap(),
    ]);
    assert!(
        err.contains("token"),
        "a wrong token should be reported as such: {err}"
    );

    // The right token through --url works (positive control).
    let good = site.dir().join("api.token");
    let s: serde_json::Value = serde_json::from_str(&site.ok(&[
        "site",
        "show",
        "--json",
        "--url",
        &api,
        "--token-file",
        good.to_str().unwrap(),
    ]))
    .unwrap();
    assert_eq!(s["name"], "a");

    // No token at all on the raw API: 401.
    let (status, body) = http_get(&site_addr(&site, "api"), "/api/v1/volumes");
    assert_eq!(status, 401, "GET /api/v1/volumes without a token: {body}");
}

#[test]
fn openapi_document_is_served() {
    let site = site("a");
    let (status, body) = http_get(&site_addr(&site, "api"), "/api/openapi.json");
    assert_eq!(status, 200, "/api/openapi.json: {body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("openapi.json is JSON");
    assert!(
        doc["paths"].get("/api/v1/volumes").is_some(),
        "openapi lacks /api/v1/volumes: {body}"
    );
    assert!(
        body.contains("/api/v1/volumes/{name}/clear-dirty"),
        "openapi lacks clear-dirty"
    );
}

#[test]
fn metrics_show_volume_dirty_bytes_and_nbd_counters() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "16M");
    qemu_io(&url, &["write -P 0x5a 0 8k", "write -P 0x5a 1M 4k"]);
    let body = metrics(&site);
    assert_eq!(
        metric(&body, "offsite_volume_dirty_bytes{volume=\"v\"}"),
        Some(3 * 4096),
        "dirty bytes gauge after 12 KiB of writes:\n{body}"
    );
    assert_eq!(
        metric(&body, "offsite_volume_size_bytes{volume=\"v\"}"),
        Some(16 << 20),
        "{body}"
    );
    let writes = metric(&body, "offsite_nbd_writes_total").expect("offsite_nbd_writes_total");
    assert!(
        writes >= 2,
        "two writes were sent, counter says {writes}:\n{body}"
    );
    assert!(
        body.contains("# TYPE offsite_nbd_writes_total counter"),
        "{body}"
    );
}

#[test]
fn clear_dirty_resets_dirty_bytes() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "16M");
    qemu_io(&url, &["write -P 0x11 0 64k"]);
    assert_eq!(site.dirty_bytes("v"), 65536);
    let v = site.json(&["volume", "clear-dirty", "v"]);
    assert_eq!(v["dirty_bytes"], 0, "clear-dirty answer: {v}");
    assert_eq!(site.dirty_bytes("v"), 0, "dirty_bytes after clear-dirty");
    // Data is untouched; new writes are tracked again.
    qemu_io(&url, &["read -P 0x11 0 64k", "write -P 0x22 8M 4k"]);
    assert_eq!(
        site.dirty_bytes("v"),
        4096,
        "writes after clear-dirty are tracked"
    );
    let ev = events_about(&site, "v");
    assert!(
        ev.iter().any(|(k, _)| k == "volume.dirty-cleared"),
        "no dirty-cleared event: {ev:?}"
    );
}

#[test]
fn import_raw_image_copies_data_and_counts_nonzero_blocks() {
    if !have_tools(&["qemu-img"]) {
        return;
    }
    let site = site("a");
    let img = scratch_file(&site, "image.raw");
    const BS: u64 = 4096;
    // Nonzero blocks: whole blocks, a single byte at a block's end, and a
    // run across a 1 MiB import-chunk boundary. Everything else is zero.
    let fills = [
        (0, 4096, 0xaa),
        (5 * BS + 4095, 1, 0x01),
        ((1 << 20) - 2 * BS, 4 * 4096, 0x7f), // blocks 254..258
        (3 << 20, 10_000, 0x33),              // 3 blocks
        ((8 << 20) - BS, 4096, 0xff),         // last block
    ];
    write_image(&img, 8 << 20, &fills);
    let nonzero: std::collections::BTreeSet<u64> = fills
        .iter()
        .flat_map(|&(o, l, _)| blocks_of(o, l as u64, BS))
        .collect();
    assert_eq!(nonzero.len(), 1 + 1 + 4 + 3 + 1);

    let v = site.json(&["volume", "create", "img", "--import", img.to_str().unwrap()]);
    assert_eq!(
        v["state"], "ready",
        "import should finish before create returns: {v}"
    );
    assert_eq!(v["size_bytes"], 8 << 20, "{v}");
    assert_eq!(
        site.dirty_bytes("img"),
        nonzero.len() as u64 * BS,
        "an import counts exactly its nonzero blocks dirty"
    );
    let url = site.url("img");
    let (code, out) = qemu_img_compare(img.to_str().unwrap(), &url);
    assert_eq!(code, 0, "imported volume differs from the image: {out}");
    assert!(out.contains("identical"), "{out}");
    let ev = events_about(&site, "img");
    assert!(
        ev.iter().any(|(k, _)| k == "volume.imported"),
        "no import event: {ev:?}"
    );
}

#[test]
fn import_resolves_a_relative_path_against_the_cli_cwd() {
    let site = site("a");
    let scratch = site.scratch();
    write_image(&scratch.join("rel.raw"), 1 << 20, &[(4096, 4096, 0x10)]);
    let out = Command::new(bin())
        .current_dir(&scratch)
        .args([
            "volume", "create", "rel", "--import", "rel.raw", "--json", "--dir",
        ])
        .arg(site.dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "relative --import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = site.json(&["volume", "show", "rel"]);
    assert_eq!(
        (v["state"].as_str(), v["dirty_bytes"].as_u64()),
        (Some("ready"), Some(4096)),
        "{v}"
    );
}

#[test]
fn import_errors_say_what_to_do() {
    let site = site("a");
    let odd = scratch_file(&site, "odd.raw");
    write_image(&odd, 3 * 4096 + 100, &[]);
    let err = site.fails(&["volume", "create", "odd", "--import", odd.to_str().unwrap()]);
    assert!(
        err.contains("--block-size"),
        "import of a non-multiple size should suggest --block-size: {err}"
    );
    let missing = scratch_file(&site, "missing.raw");
    let err = site.fails(&[
        "volume",
        "create",
        "m",
        "--import",
        missing.to_str().unwrap(),
    ]);
    assert!(
        err.contains("missing.raw"),
        "import of a missing file should name it: {err}"
    );
    assert_eq!(
        site.json(&["volume", "list"]),
        serde_json::json!([]),
        "a refused import left a volume"
    );
}

/// Opens an NBD connection to `url` in a Python child (libnbd) and keeps
/// it until its stdin closes.
const HOLD_CONNECTION: &str = r#"
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
h.pwrite(b"\x42" * 4096, 0)
print("connected", flush=True)
sys.stdin.read()
h.shutdown()
print("closed", flush=True)
"#;

#[test]
fn delete_is_refused_while_a_client_is_connected() {
    if !have_python_nbd() || !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "16M");
    let mut holder = KillOnDrop(Some(
        Command::new(PYTHON)
            .args(["-c", HOLD_CONNECTION, &url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn python"),
    ));
    let mut lines = BufReader::new(holder.child().stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(
        first.as_deref(),
        Some("connected"),
        "the python NBD client did not connect"
    );

    assert_eq!(
        site.json(&["volume", "show", "v"])["connections"],
        1,
        "one client is connected"
    );
    let err = site.fails(&["volume", "delete", "v"]);
    assert!(
        err.contains("in use") && err.contains("connection"),
        "delete while connected: {err}"
    );
    assert_eq!(
        site.json(&["volume", "show", "v"])["state"],
        "ready",
        "refused delete broke the volume"
    );
    // Another client still reads what the held one wrote.
    qemu_io(&url, &["read -P 0x42 0 4k"]);

    let mut child = holder.take();
    drop(child.stdin.take());
    assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("closed"));
    assert!(child.wait().unwrap().success(), "python NBD client failed");
    wait_until(
        "the server to notice the disconnect",
        Duration::from_secs(20),
        || site.json(&["volume", "show", "v"])["connections"] == 0,
    );
    site.ok(&["volume", "delete", "v"]);
    assert!(
        site.fails(&["volume", "show", "v"])
            .contains("no volume named")
    );
}

#[test]
fn sigterm_exits_zero_and_removes_daemon_json() {
    let mut site = site("a");
    site.create_volume("v", "4M");
    let info = site.dir().join("run").join("daemon.json");
    assert!(info.exists(), "run/daemon.json missing while running");
    assert_eq!(
        site.stop(),
        Some(0),
        "SIGTERM should exit 0:\n{}",
        site.log()
    );
    assert!(
        !info.exists(),
        "run/daemon.json left behind after a clean stop"
    );
    assert!(
        site.log().contains("site stopped cleanly"),
        "log:\n{}",
        site.log()
    );
    let err = site.fails(&["volume", "list"]);
    assert!(err.contains("offsite serve"), "after stop: {err}");
}

#[test]
fn second_serve_on_the_same_dir_is_refused() {
    let site = site("a");
    site.create_volume("v", "4M");
    let info = site.dir().join("run").join("daemon.json");
    let before = std::fs::read_to_string(&info).unwrap();
    let out = output_within(
        Command::new(bin()).args(["serve", "--dir"]).arg(site.dir()),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "second serve should fail with 1: {stderr}"
    );
    assert!(stderr.contains("already running"), "second serve: {stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: "),
        "second serve should end with an error line: {stderr}"
    );
    // The first daemon is unaffected.
    assert_eq!(
        std::fs::read_to_string(&info).unwrap(),
        before,
        "second serve touched daemon.json"
    );
    assert_eq!(site.json(&["volume", "show", "v"])["state"], "ready");
}

#[test]
fn missing_dir_and_not_a_site_errors() {
    let out = Command::new(bin())
        .args(["volume", "list"])
        .env_remove("OFFSITE_DIR")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--dir"), "no --dir: {stderr}");
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["volume", "list", "--dir"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("site init"), "not a site: {stderr}");
}
