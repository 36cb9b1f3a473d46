//! Two sites in two network namespaces joined by a veth pair shaped with
//! `tc tbf` to 50 Mbit/s: pairing and `partner test` over a real (if
//! virtual) link with a real bottleneck, where the FaultProxy of the other
//! tests is not in the path.
//!
//! Needs root (`ip netns add`); skips with a printed reason otherwise,
//! except under CI (`CI` set), where that is a failure. Addresses are from
//! TEST-NET-1 (192.0.2.0/24) and exist only on our own veth interfaces
//! inside our own namespaces; each namespace's API and NBD listeners are on
//! its own loopback.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use offsite_testkit::TestSite;

/// Deletes the namespaces (and with them the veth pair) on drop, and the
/// veth pair itself should it still be in the root namespace.
struct Namespaces {
    names: Vec<String>,
    links: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        for ns in &self.names {
            quiet(&["netns", "del", ns]);
        }
        for link in &self.links {
            quiet(&["link", "del", link]);
        }
    }
}

fn ip(args: &[&str]) -> Output {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e}"))
}

fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One site's daemon inside a namespace, driven by the CLI run in the same
/// namespace.
struct NsSite {
    ns: String,
    site: TestSite,
    daemon: KillOnDrop,
}

impl NsSite {
    /// `site init` (no network needed) with the replication listener on
    /// `listen_ip`, then `offsite serve` inside `ns`.
    fn start(ns: &str, name: &str, listen_ip: &str) -> NsSite {
        let site = TestSite::init(bin(), name);
        let cfg_path = site.dir().join("config.toml");
        let cfg = std::fs::read_to_string(&cfg_path).expect("read config.toml");
        let cfg = cfg.replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{listen_ip}:0\""),
            1,
        );
        assert!(cfg.contains(listen_ip), "listen not set in {cfg}");
        std::fs::write(&cfg_path, cfg).expect("write config.toml");
        let log = std::fs::File::create(site.log_path()).expect("create daemon log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin())
            .args(["serve", "--dir"])
            .arg(site.dir())
            .env("OFFSITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn offsite serve in the namespace");
        let mut s = NsSite {
            ns: ns.to_string(),
            site,
            daemon: KillOnDrop(Some(child)),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = s.daemon.child().try_wait().expect("wait") {
                panic!(
                    "offsite serve in {ns} exited with {status}:\n{}",
                    s.site.log()
                );
            }
            if s.site.dir().join("run/daemon.json").exists()
                && s.run(&["site", "show"]).status.success()
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "site {name} in {ns} did not start:\n{}",
                s.site.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(bin())
            .args(args)
            .arg("--dir")
            .arg(self.site.dir());
        output_within(&mut cmd, Duration::from_secs(120))
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.run(&a);
        assert!(
            out.status.success(),
            "offsite {a:?} in {} failed: {}\nlog:\n{}",
            self.ns,
            String::from_utf8_lossy(&out.stderr),
            tail(&self.site.log(), 20)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("offsite {a:?}: bad JSON ({e})"))
    }
}

/// Creates the two namespaces and the shaped veth pair; `None` (skip) when
/// namespaces cannot be created outside CI.
fn shaped_link(tag: &str) -> Option<(Namespaces, [String; 2])> {
    let pid = std::process::id();
    let ns = [
        format!("offsite-{pid}-{tag}a"),
        format!("offsite-{pid}-{tag}b"),
    ];
    let first = if offsite_testkit::have_tool("ip") {
        ip(&["netns", "add", &ns[0]])
    } else {
        return None;
    };
    if !first.status.success() {
        let why = String::from_utf8_lossy(&first.stderr).trim().to_string();
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot create a network namespace under CI (tests run as root there): {why}"
        );
        eprintln!("skipping: cannot create a network namespace (not root?): {why}");
        return None;
    }
    let mut guard = Namespaces {
        names: vec![ns[0].clone()],
        links: Vec::new(),
    };
    ip_ok(&["netns", "add", &ns[1]]);
    guard.names.push(ns[1].clone());
    // Interface names are at most 15 bytes.
    let veth = [format!("ofs{pid}{tag}x"), format!("ofs{pid}{tag}y")];
    guard.links.push(veth[0].clone());
    ip_ok(&[
        "link", "add", &veth[0], "type", "veth", "peer", "name", &veth[1],
    ]);
    let addrs = ["192.0.2.1", "192.0.2.2"];
    for i in 0..2 {
        // Moving the interface into the namespace ties its life to it.
        ip_ok(&["link", "set", &veth[i], "netns", &ns[i]]);
        ip_ok(&[
            "-n",
            &ns[i],
            "addr",
            "add",
            &format!("{}/24", addrs[i]),
            "dev",
            &veth[i],
        ]);
        ip_ok(&["-n", &ns[i], "link", "set", &veth[i], "up"]);
        ip_ok(&["-n", &ns[i], "link", "set", "lo", "up"]);
        ip_ok(&[
            "netns", "exec", &ns[i], "tc", "qdisc", "add", "dev", &veth[i], "root", "tbf", "rate",
            "50mbit", "burst", "32kbit", "latency", "50ms",
        ]);
    }
    Some((guard, [addrs[0].to_string(), addrs[1].to_string()]))
}

#[test]
fn partner_test_across_namespaces_sees_the_shaped_bandwidth() {
    let Some((_namespaces, addrs)) = shaped_link("p") else {
        return;
    };
    let ns = _namespaces.names.clone();
    let a = NsSite::start(&ns[0], "site-a", &addrs[0]);
    let b = NsSite::start(&ns[1], "site-b", &addrs[1]);
    let show_a = a.json(&["site", "show"]);
    let show_b = b.json(&["site", "show"]);
    let listen_a = show_a["listen"].as_str().expect("listen").to_string();
    let listen_b = show_b["listen"].as_str().expect("listen").to_string();
    assert!(listen_a.starts_with(&format!("{}:", addrs[0])), "{show_a}");
    assert!(listen_b.starts_with(&format!("{}:", addrs[1])), "{show_b}");
    for (site, other, show, listen) in [
        (&a, "site-b", &show_b, &listen_b),
        (&b, "site-a", &show_a, &listen_a),
    ] {
        site.json(&[
            "partner",
            "add",
            other,
            "--address",
            listen,
            "--fingerprint",
            show["fingerprint"].as_str().expect("fingerprint"),
        ]);
    }
    let r = a.json(&["partner", "test", "site-b", "--bytes", "16M"]);
    eprintln!("across the shaped veth: {r}");
    assert_eq!(r["bytes"].as_u64(), Some(16 << 20), "{r}");
    assert_eq!(r["protocol_version"], 2, "{r}");
    let mbps = r["mb_per_s"].as_f64().expect("mb_per_s");
    assert!(mbps > 0.0, "{r}");
    // 50 Mbit/s is 6.25 MB/s: a shaping check, not a timing assertion.
    assert!(
        mbps < 10.0,
        "the 50 Mbit/s bottleneck should cap the test: {r}"
    );
    assert!(r["rtt_ms"].as_f64().is_some_and(|v| v > 0.0), "{r}");

    // The other direction is shaped too.
    let r = b.json(&["partner", "test", "site-a", "--bytes", "4M"]);
    assert!(
        r["mb_per_s"].as_f64().is_some_and(|v| v > 0.0 && v < 10.0),
        "{r}"
    );
}
