//! NBD over TLS on a real `offsite serve` (`[nbd_tls]` in config.toml),
//! driven by real clients: `qemu-io` and `qemu-img` with QEMU's
//! `tls-creds-x509`/`tls-creds-psk` objects, and `nbdinfo` with `nbds://`
//! URIs. The protocol's corners are tested in crates/nbd/tests/tls.rs.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

use common::*;
use offsite_testkit::TestSite;

/// A PSK for identity `alice` (hex, as psktool writes it).
const ALICE_KEY: &str = "00112233445566778899aabbccddeeff0123456789abcdeffedcba9876543210";

/// Certificates in QEMU's layout (crates/nbd/tests/pki.sh) and PSK files,
/// in the site's scratch directory.
struct Pki {
    server: PathBuf,
    client: PathBuf,
    /// The directory of the client's keys.psk.
    psk_client: PathBuf,
    /// The server's keys.psk.
    psk: PathBuf,
}

fn pki(site: &TestSite) -> Pki {
    let root = site.scratch();
    let out = output_within(
        Command::new("sh")
            .arg("-c")
            .arg(include_str!("../../nbd/tests/pki.sh"))
            .current_dir(&root),
        std::time::Duration::from_secs(60),
    );
    assert!(out.status.success(), "pki.sh: {}", text(&out));
    let psk = root.join("psk/keys.psk");
    std::fs::write(&psk, format!("alice:{ALICE_KEY}\n")).unwrap();
    std::fs::write(
        root.join("psk-client/keys.psk"),
        format!("alice:{ALICE_KEY}\n"),
    )
    .unwrap();
    Pki {
        server: root.join("server"),
        client: root.join("client"),
        psk_client: root.join("psk-client"),
        psk,
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn append_config(site: &TestSite, section: &str) {
    let path = site.dir().join("config.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str(section);
    std::fs::write(&path, config).unwrap();
}

/// `host`, `port` and `export` of an `nbd://` or `nbds://` URL.
fn parts(url: &str) -> (String, String, String) {
    let rest = url.split_once("://").unwrap().1;
    let (authority, export) = rest.split_once('/').unwrap();
    let (host, port) = authority.rsplit_once(':').unwrap();
    (host.to_string(), port.to_string(), export.to_string())
}

fn qemu_image_opts(url: &str) -> String {
    let (host, port, export) = parts(url);
    format!("driver=nbd,host={host},port={port},export={export},tls-creds=tls0")
}

fn run(cmd: &mut Command) -> Output {
    output_within(cmd, std::time::Duration::from_secs(60))
}

#[test]
fn x509_and_psk_clients_reach_a_volume_and_plain_clients_do_not() {
    if !have_tools(&["openssl", "qemu-io", "qemu-img", "nbdinfo"]) {
        return;
    }
    let mut site = TestSite::init(bin(), "a");
    let pki = pki(&site);
    append_config(
        &site,
        &format!(
            "\n[nbd_tls]\nmode = \"required\"\nx509_dir = {:?}\npsk_file = {:?}\n",
            pki.server, pki.psk
        ),
    );
    site.start();
    let url = site.create_volume("v", "16M");
    assert!(url.starts_with("nbds://"), "{url}");
    let (_, _, export) = parts(&url);
    assert_eq!(export, "v");

    let x509 = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        pki.client.display()
    );
    let out = run(Command::new("qemu-io")
        .args(["--object", &x509, "--image-opts", &qemu_image_opts(&url)])
        .args(["-c", "write -P 0x3c 1M 64k"])
        .args(["-c", "read -P 0x3c 1M 64k"])
        .args(["-c", "flush"]));
    assert!(out.status.success(), "qemu-io (x509): {}", text(&out));
    assert!(
        !text(&out).contains("Pattern verification failed"),
        "{}",
        text(&out)
    );

    let psk = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        pki.psk_client.display()
    );
    let out = run(Command::new("qemu-img").args([
        "info",
        "--object",
        &psk,
        "--image-opts",
        &qemu_image_opts(&url),
    ]));
    assert!(out.status.success(), "qemu-img info (PSK): {}", text(&out));
    assert!(text(&out).contains("16 MiB"), "{}", text(&out));
    let out = run(Command::new("qemu-io")
        .args(["--object", &psk, "--image-opts", &qemu_image_opts(&url)])
        .args(["-c", "read -P 0x3c 1M 64k"]));
    assert!(out.status.success(), "qemu-io (PSK): {}", text(&out));
    assert!(
        !text(&out).contains("Pattern verification failed"),
        "{}",
        text(&out)
    );

    let out = run(
        Command::new("nbdinfo").arg(format!("{url}?tls-certificates={}", pki.client.display()))
    );
    assert!(out.status.success(), "nbdinfo (x509): {}", text(&out));
    assert!(text(&out).contains("with TLS"), "{}", text(&out));

    // Without credentials: refused, and the daemon says why.
    let plain = url.replacen("nbds://", "nbd://", 1);
    let out = run(Command::new("nbdinfo").arg(&plain));
    assert!(!out.status.success(), "{}", text(&out));
    let out = run(Command::new("qemu-img").args(["info", "-f", "raw", &plain]));
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("TLS"), "{}", text(&out));
    assert!(site.log().contains("tls=required"), "{}", site.log());
}

#[test]
fn a_plain_nbd_listener_off_loopback_is_refused_at_start_unless_allowed() {
    let mut site = TestSite::init(bin(), "a");
    let path = site.dir().join("config.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains("nbd = \"127.0.0.1:0\""), "{config}");
    std::fs::write(
        &path,
        config.replace("nbd = \"127.0.0.1:0\"", "nbd = \"0.0.0.0:0\""),
    )
    .unwrap();

    let out = run(Command::new(bin())
        .arg("serve")
        .arg("--dir")
        .arg(site.dir()));
    assert!(!out.status.success(), "{}", text(&out));
    let err = text(&out);
    for needed in [
        "0.0.0.0:0",
        "not a loopback address",
        "[nbd_tls] mode",
        "allow_plaintext",
    ] {
        assert!(err.contains(needed), "missing {needed:?} in {err}");
    }

    append_config(&site, "\n[nbd_tls]\nallow_plaintext = true\n");
    site.start();
    let url = site.create_volume("v", "1M");
    assert!(url.starts_with("nbd://"), "{url}");
}

#[test]
fn tls_without_credentials_is_a_config_error_that_names_the_keys() {
    let site = TestSite::init(bin(), "a");
    append_config(&site, "\n[nbd_tls]\nmode = \"optional\"\n");
    let out = run(Command::new(bin())
        .arg("serve")
        .arg("--dir")
        .arg(site.dir()));
    assert!(!out.status.success(), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("x509_dir") && err.contains("psk_file"),
        "{err}"
    );
}

#[test]
fn a_volume_cannot_ask_for_tls_on_a_listener_without_it() {
    let site = TestSite::started(bin(), "a");
    site.create_volume("v", "1M");
    for mode in ["required", "optional"] {
        let err = site.fails(&["volume", "set", "v", "--nbd-tls", mode]);
        assert!(
            err.contains("[nbd_tls]") && err.contains("restart"),
            "{err}"
        );
    }
    // Nothing changed; refusing TLS or taking the listener's mode is fine.
    assert_eq!(site.json(&["volume", "show", "v"])["nbd_tls"], "off");
    let v = site.json(&["volume", "set", "v", "--nbd-tls", "off"]);
    assert!(v["url"].as_str().unwrap().starts_with("nbd://"), "{v}");
    site.json(&["volume", "set", "v", "--nbd-tls", "default"]);
    let err = site.fails(&["volume", "set", "nope", "--nbd-tls", "required"]);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn a_volume_can_require_tls_or_refuse_it_on_an_optional_listener() {
    if !have_tools(&["openssl", "nbdinfo"]) {
        return;
    }
    let mut site = TestSite::init(bin(), "a");
    let pki = pki(&site);
    append_config(
        &site,
        &format!(
            "\n[nbd_tls]\nmode = \"optional\"\nx509_dir = {:?}\n",
            pki.server
        ),
    );
    site.start();
    let plain = site.create_volume("v", "1M");
    assert!(plain.starts_with("nbd://"), "{plain}");
    // Both URLs of the volume (the port changes at a restart).
    let urls = |site: &TestSite| {
        let url = site.json(&["volume", "show", "v"])["url"]
            .as_str()
            .unwrap()
            .to_string();
        let (host, port, export) = parts(&url);
        let plain = format!("nbd://{host}:{port}/{export}");
        let tls = format!(
            "nbds://{host}:{port}/{export}?tls-certificates={}",
            pki.client.display()
        );
        (plain, tls)
    };
    let (plain, tls) = urls(&site);
    let works = |uri: &str| run(Command::new("nbdinfo").arg(uri)).status.success();
    assert!(works(&plain) && works(&tls));

    let v = site.json(&["volume", "set", "v", "--nbd-tls", "required"]);
    assert_eq!(v["nbd_tls"], "required", "{v}");
    assert!(v["url"].as_str().unwrap().starts_with("nbds://"), "{v}");
    assert!(
        !works(&plain),
        "a plain client reached a volume that requires TLS"
    );
    assert!(works(&tls));

    // Kept in the catalog across a restart.
    site.stop();
    site.start();
    assert_eq!(site.json(&["volume", "show", "v"])["nbd_tls"], "required");
    let (plain, tls) = urls(&site);
    assert!(!works(&plain));
    assert!(works(&tls));

    let v = site.json(&["volume", "set", "v", "--nbd-tls", "off"]);
    assert_eq!(v["nbd_tls"], "off", "{v}");
    assert!(works(&plain));
    assert!(!works(&tls), "a TLS client reached a volume with TLS off");

    let v = site.json(&["volume", "set", "v", "--nbd-tls", "default"]);
    assert_eq!(v["nbd_tls"], "optional", "{v}");
    assert!(works(&plain) && works(&tls));
    let err = site.fails(&["volume", "set", "nope", "--nbd-tls", "required"]);
    assert!(err.contains("nope"), "{err}");
}
