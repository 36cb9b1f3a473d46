//! The replication channel under WAN faults: a FaultProxy sits between
//! site A and site B (A's partner address for B is the proxy, the proxy
//! forwards to B's listener), so A's partner monitor and `partner test`
//! cross it. Latency, corruption (fixed offset and seeded random), stalls
//! longer than `dead_after`, resets, a link that refuses new connections,
//! and raw garbage sent to the listener.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use offsite_testkit::proxy::{Direction, FaultProxy};
use offsite_testkit::{TestSite, sh};

/// Liveness bound for the partner monitor (probes every 0.5 s; a stalled
/// reconnect waits for the 15 s handshake timeout).
const MONITOR: Duration = Duration::from_secs(45);

struct Link {
    a: TestSite,
    b: TestSite,
    proxy: FaultProxy,
}

/// Sites A and B with fast timers, paired; A reaches B through a proxy, B
/// reaches A directly. Waits until A's monitor has a session to B.
fn link() -> Link {
    let a = fast_site("site-a");
    let b = fast_site("site-b");
    let listen: SocketAddr = site_addr(&b, "listen").parse().expect("B's listen address");
    let proxy = FaultProxy::start(listen);
    pin_at(&a, &b, &proxy.addr().to_string());
    pin(&b, &a);
    wait_reachable(&a, "site-b", true, MONITOR);
    Link { a, b, proxy }
}

/// Words that say the stream was damaged in transit (TLS's record
/// integrity check or the protocol's frame checksum).
fn says_damaged(text: &str) -> bool {
    let t = text.to_lowercase();
    [
        "checksum",
        "crc",
        "corrupt",
        "badrecordmac",
        "bad_record_mac",
        "bad record mac",
        "decrypt",
        "malformed frame",
    ]
    .iter()
    .any(|w| t.contains(w))
}

#[test]
fn latency_is_carried_and_measured() {
    let l = link();
    let f = l.proxy.faults();
    for dir in Direction::ALL {
        f.set_latency(dir, Duration::from_millis(50));
    }
    let r = partner_test(&l.a, "site-b", "32M", &[]);
    assert_eq!(r["bytes"].as_u64(), Some(32 << 20), "{r}");
    assert!(r["mb_per_s"].as_f64().is_some_and(|v| v > 0.0), "{r}");
    let rtt = r["rtt_ms"].as_f64().expect("rtt_ms");
    assert!(
        rtt >= 100.0,
        "50 ms each way is a round trip of at least 100 ms: {r}"
    );
    let handshake = r["handshake_ms"].as_f64().expect("handshake_ms");
    assert!(handshake >= 100.0, "TCP + TLS + hello cross the link: {r}");
    // The monitor's RTT goes through the proxy too.
    wait_until("the monitor measures the added latency", MONITOR, || {
        partner_entry(&l.a, "site-b")
            .and_then(|p| p["rtt_ms"].as_f64())
            .is_some_and(|v| v >= 100.0)
    });
}

#[test]
fn corruption_at_a_fixed_offset_fails_the_test_and_b_keeps_serving() {
    let l = link();
    let f = l.proxy.faults();
    let before = l.proxy.stats();
    // One flipped bit 8 MiB into the next connection: the middle of a
    // 16 MiB bulk stream.
    f.corrupt_at(Direction::ClientToServer, 8 << 20, 0x10);
    let err = l.a.fails(&["partner", "test", "site-b", "--bytes", "16M"]);
    let stats = l.proxy.stats();
    assert_eq!(
        stats.client_to_server.bytes_corrupted - before.client_to_server.bytes_corrupted,
        1,
        "the proxy flipped one byte: {stats:?}"
    );
    // Under TLS a flipped byte fails the record's integrity check before
    // the frame checksum sees it; either way it must be called damage.
    wait_until(
        &format!("A's error or B's log says the data was damaged (A: {err})"),
        MONITOR,
        || says_damaged(&err) || says_damaged(&l.b.log()),
    );
    eprintln!("corrupt_at: A said: {err}");

    // B keeps serving: through the proxy (corrupt_at was one-shot), and
    // B's own sessions to A.
    let r = partner_test(&l.a, "site-b", "4M", &[]);
    assert_eq!(r["bytes"].as_u64(), Some(4 << 20), "{r}");
    wait_reachable(&l.a, "site-b", true, MONITOR);
    let r = partner_test(&l.b, "site-a", "4M", &[]);
    assert_eq!(r["bytes"].as_u64(), Some(4 << 20), "{r}");
}

#[test]
fn random_corruption_never_passes_as_success() {
    let l = link();
    let f = l.proxy.faults();
    // Server-to-client traffic of a test is small (TLS handshake, acks), so
    // it gets a higher probability to be hit at all.
    for (dir, probability, seed) in [
        (Direction::ClientToServer, 2e-6, 0x5eed_0001_u64),
        (Direction::ServerToClient, 1e-3, 0x5eed_0002_u64),
    ] {
        let before = l.proxy.stats().direction(dir).bytes_corrupted;
        let b_log = l.b.log().len();
        f.corrupt_random(dir, probability, seed);
        let out =
            l.a.run(&["partner", "test", "site-b", "--bytes", "8M", "--json"]);
        f.clear_corruption(dir);
        let hit = l.proxy.stats().direction(dir).bytes_corrupted - before;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        eprintln!(
            "{dir:?} p={probability} seed {seed:#x}: {hit} bytes corrupted; {}; {stderr}",
            out.status
        );
        if out.status.success() {
            let r: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("partner test --json");
            assert_eq!(r["bytes"].as_u64(), Some(8 << 20), "{r}");
            continue;
        }
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
            "one-line error: {stderr:?}"
        );
        assert!(hit > 0, "the test failed without any corruption: {stderr}");
        let a_log = l.a.log();
        wait_until(
            &format!("A's error or a site's log names the damage (A: {stderr})"),
            MONITOR,
            || {
                says_damaged(&stderr)
                    || says_damaged(&l.b.log()[b_log..])
                    || says_damaged(&a_log)
                    || says_damaged(&l.a.log())
            },
        );
    }
    // Connections accepted while corruption was on (the monitor's
    // reconnects) failed; drop them and check that everything recovers.
    f.reset_all();
    let r = partner_test(&l.a, "site-b", "4M", &[]);
    assert_eq!(r["bytes"].as_u64(), Some(4 << 20), "{r}");
    wait_until("A's monitor recovers", MONITOR, || {
        partner_entry(&l.a, "site-b")
            .is_some_and(|p| p["reachable"] == true && p["last_error"].is_null())
    });
}

#[test]
fn stall_longer_than_dead_after_marks_b_unreachable_until_unstalled() {
    let l = link();
    let f = l.proxy.faults();
    for dir in Direction::ALL {
        f.stall(dir);
    }
    let p = wait_reachable(&l.a, "site-b", false, MONITOR);
    let err = p["last_error"].as_str().unwrap_or_default().to_lowercase();
    assert!(
        err.contains("dead")
            || err.contains("silent")
            || err.contains("timeout")
            || err.contains("within"),
        "the error should say B went silent: {p}"
    );
    eprintln!("stalled: {p}");
    for dir in Direction::ALL {
        f.unstall(dir);
    }
    wait_until("A's monitor reconnects after the stall", MONITOR, || {
        partner_entry(&l.a, "site-b")
            .is_some_and(|p| p["reachable"] == true && p["last_error"].is_null())
    });
    partner_test(&l.a, "site-b", "4M", &[]);
}

#[test]
fn reset_connections_are_noticed_and_reestablished() {
    let l = link();
    let f = l.proxy.faults();
    let accepted = l.proxy.stats().connections_accepted;
    assert!(
        l.proxy.stats().connections_open >= 1,
        "the monitor holds a session"
    );
    f.reset_all();
    wait_until("the proxy resets the monitor's session", MONITOR, || {
        l.proxy.stats().resets >= 1
    });
    wait_until("A's monitor reconnects", MONITOR, || {
        l.proxy.stats().connections_accepted > accepted
            && partner_entry(&l.a, "site-b")
                .is_some_and(|p| p["reachable"] == true && p["last_error"].is_null())
    });

    // A reset in the middle of a transfer fails the test with an error
    // (it neither hangs nor reports success).
    f.set_bandwidth(Direction::ClientToServer, Some(8 << 20));
    let bin = bin().to_path_buf();
    let dir = l.a.dir().to_path_buf();
    let test = std::thread::spawn(move || {
        Command::new(bin)
            .args(["partner", "test", "site-b", "--bytes", "64M", "--dir"])
            .arg(dir)
            .output()
            .expect("run partner test")
    });
    let open_before = l.proxy.stats().connections_accepted;
    wait_until("the transfer is under way", MONITOR, || {
        l.proxy.stats().connections_accepted > open_before
            && l.proxy.stats().client_to_server.bytes_forwarded > (4 << 20)
    });
    f.reset_all();
    let out = test.join().expect("partner test thread");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a reset transfer must fail: {stderr}"
    );
    assert!(stderr.contains("site-b"), "{stderr}");
    eprintln!("reset mid-transfer: {stderr}");
    f.set_bandwidth(Direction::ClientToServer, None);
    partner_test(&l.a, "site-b", "4M", &[]);
}

#[test]
fn link_refusing_new_connections_fails_fast_then_recovers() {
    let l = link();
    let f = l.proxy.faults();
    f.refuse_new(true);
    let started = Instant::now();
    let err = l.a.fails(&["partner", "test", "site-b", "--bytes", "1M"]);
    eprintln!("refused link ({:?}): {err}", started.elapsed());
    assert!(
        err.contains("site-b") && err.contains("connection"),
        "the error should say the connection to site-b failed: {err}"
    );
    assert!(l.proxy.stats().connections_refused >= 1);
    // Cut the monitor's session too: B becomes unreachable.
    f.reset_all();
    let p = wait_reachable(&l.a, "site-b", false, MONITOR);
    assert!(p["last_error"].is_string(), "{p}");
    f.refuse_new(false);
    partner_test(&l.a, "site-b", "1M", &[]);
    wait_until("A's monitor reconnects", MONITOR, || {
        partner_entry(&l.a, "site-b")
            .is_some_and(|p| p["reachable"] == true && p["last_error"].is_null())
    });
}

/// Sends `bytes` to `addr` and reads until the listener closes the
/// connection; panics if it stays open for 30 s.
fn send_and_expect_close(addr: &str, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).expect("connect to the listener");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The listener may close before taking everything: ignore write errors.
    let _ = s.write_all(bytes);
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the listener kept a connection open after {} junk bytes",
                    bytes.len()
                )
            }
            Err(_) => return, // reset: closed too
        }
    }
}

#[test]
fn garbage_on_the_listener_is_dropped_and_b_keeps_serving() {
    let a = fast_site("site-a");
    let b = fast_site("site-b");
    // B pins A first, so that B never refuses A's monitor: B's refusal
    // lines are all about the connections below.
    pair(&b, &a);
    let listen = site_addr(&b, "listen");
    let mut refusals = 0;

    // A TLS 1.3 client with a certificate B has not pinned.
    let have_openssl = offsite_testkit::have_tool("openssl");
    if have_openssl {
        let scratch = b.scratch();
        let key = scratch.join("k.pem");
        let crt = scratch.join("c.pem");
        let (key, crt) = (key.to_str().unwrap(), crt.to_str().unwrap());
        sh(
            "openssl",
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                key,
                "-out",
                crt,
                "-days",
                "1",
                "-subj",
                "/CN=intruder",
            ],
        );
        let fp = sh(
            "openssl",
            &["x509", "-in", crt, "-noout", "-fingerprint", "-sha256"],
        );
        let hex: String = fp
            .trim()
            .rsplit('=')
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_lowercase();
        let s_client = |extra: &[&str]| {
            let mut cmd = Command::new("openssl");
            cmd.args(["s_client", "-connect", &listen, "-brief"])
                .args(extra);
            output_within(&mut cmd, Duration::from_secs(30))
        };
        s_client(&["-tls1_3", "-cert", crt, "-key", key]);
        wait_until("B logs the intruder's fingerprint", MONITOR, || {
            b.log().lines().any(|l| {
                l.contains("refused replication connection") && l.contains(&format!("SHA256:{hex}"))
            })
        });
        // TLS 1.3 without a client certificate; TLS 1.2 (B speaks 1.3 only).
        s_client(&["-tls1_3"]);
        let out = s_client(&["-tls1_2"]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("Protocol version: TLSv1.2"),
            "B must not speak TLS 1.2:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        refusals += 3;
    }

    let junk: Vec<Vec<u8>> = vec![
        b"hello, this is not TLS\r\n".repeat(10),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A TLS handshake record header claiming an oversized record.
        [&[0x16u8, 0x03, 0x01, 0xff, 0xff][..], &[0u8; 64][..]].concat(),
        // A well-framed handshake record whose body is not a ClientHello.
        [
            &[0x16u8, 0x03, 0x01, 0x00, 0x20][..],
            &pseudo_random(32, 7)[..],
        ]
        .concat(),
        // An application-data record before any handshake.
        [&[0x17u8, 0x03, 0x03, 0x00, 0x10][..], &[0xaa; 16][..]].concat(),
        pseudo_random(1 << 20, 42),
    ];
    for bytes in &junk {
        send_and_expect_close(&listen, bytes);
    }
    refusals += junk.len() as u64;
    // Connect and close at once.
    drop(TcpStream::connect(&listen).expect("connect"));
    refusals += 1;
    wait_until("B counts the failed handshakes", MONITOR, || {
        repl_metric(&b, "offsite_repl_tls_refused_total") >= refusals
    });
    // One line per reason and address per window: the intruder's
    // certificate, no certificate, TLS 1.2, junk and the early close each
    // have their own line, so there are far fewer lines than refusals but
    // no reason goes unlogged.
    let log = b.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refused replication connection"))
        .collect();
    assert!(
        !lines.is_empty() && (lines.len() as u64) < refusals,
        "refusals from one address are logged once per reason and window:\n{}",
        tail(&log, 30)
    );
    if have_openssl {
        assert!(
            lines.iter().any(|l| l.contains("presented no certificate")),
            "the certificate-less client is logged too:\n{}",
            lines.join("\n")
        );
    }
    let r = partner_test(&a, "site-b", "4M", &[]);
    assert_eq!(r["bytes"].as_u64(), Some(4 << 20), "{r}");
    wait_reachable(&a, "site-b", true, MONITOR);
    assert!(repl_metric(&b, "offsite_repl_sessions_total") >= 1);
}
