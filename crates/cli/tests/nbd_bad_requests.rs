//! Malformed and out-of-range NBD requests: each is refused with the right
//! error (or the connection is closed), and the daemon keeps serving other
//! clients. Requests are sent with libnbd from Python in non-strict mode
//! (libnbd otherwise refuses them client-side) and with raw TCP.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, qemu_io};

/// Runs `CASE` against the URL; prints one JSON object of results, each
/// step `[ok, errno name or null, message]`.
const CASES: &str = r#"
import json, sys, nbd
url, case = sys.argv[1], sys.argv[2]
h = nbd.NBD()
h.set_strict_mode(0)
res = {}
def step(name, f):
    try:
        r = f()
        res[name] = [True, len(r) if r is not None else None, None]
    except nbd.Error as e:
        # libnbd: e.errno is the errno *name* ("EINVAL"), e.errnum the number
        res[name] = [False, e.errno, e.string]
if case == "bad-export":
    step("connect", lambda: h.connect_uri(url.rsplit("/", 1)[0] + "/no-such-volume"))
else:
    h.connect_uri(url)
    size = h.get_size()
    if case == "past-end":
        step("read_past_end", lambda: h.pread(4096, size))
        step("read_straddling_end", lambda: h.pread(8192, size - 4096))
        step("read_offset_overflow", lambda: h.pread(4096, 2**64 - 2048))
        step("write_past_end", lambda: h.pwrite(b"\x01" * 4096, size))
        step("zero_past_end", lambda: h.zero(4096, size))
        step("trim_past_end", lambda: h.trim(4096, size))
        step("still_alive", lambda: h.pread(4096, 0))
    elif case == "zero-length":
        step("read0", lambda: h.pread(0, 0))
        step("read0_at_end", lambda: h.pread(0, size))
        step("write0", lambda: h.pwrite(b"", 4096))
        step("zero0", lambda: h.zero(0, 8192))
        step("trim0", lambda: h.trim(0, 12288))
        step("flush", lambda: h.flush())
        step("still_alive", lambda: h.pread(4096, 0))
    elif case == "oversized-read":
        step("read_33M", lambda: h.pread(33 << 20, 0))
        step("zero_40M", lambda: h.zero(40 << 20, 0))
        step("read_32M", lambda: h.pread(32 << 20, 0))
        step("still_alive", lambda: h.pread(4096, 0))
    elif case == "oversized-write":
        step("write_33M", lambda: h.pwrite(b"\x02" * (33 << 20), 0))
    else:
        raise SystemExit("unknown case " + case)
print(json.dumps(res))
"#;

fn run_case(url: &str, case: &str) -> serde_json::Value {
    python_json(CASES, &[url, case])
}

fn step<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r.get(name)
        .unwrap_or_else(|| panic!("no step {name} in {r}"))
}

fn assert_err(r: &serde_json::Value, name: &str, errno: &str) {
    let s = step(r, name);
    assert_eq!(s[0], false, "{name} should fail with {errno}: {r}");
    assert_eq!(s[1], errno, "{name} should fail with {errno}: {r}");
}

fn assert_ok(r: &serde_json::Value, name: &str) {
    assert_eq!(step(r, name)[0], true, "{name} should succeed: {r}");
}

/// A fresh qemu-io connection still writes and reads the volume.
fn still_serving(site: &TestSite, pattern: u8) {
    let url = site.url("v");
    qemu_io(
        &url,
        &[
            &format!("write -P {pattern} 1M 64k"),
            &format!("read -P {pattern} 1M 64k"),
        ],
    );
}

fn setup() -> Option<(TestSite, String)> {
    if !have_python_nbd() || !have_tools(&["qemu-io"]) {
        return None;
    }
    let site = site("a");
    let url = site.create_volume("v", "64M");
    Some((site, url))
}

#[test]
fn out_of_range_requests_get_errors_and_the_connection_survives() {
    let Some((site, url)) = setup() else { return };
    let r = run_case(&url, "past-end");
    assert_err(&r, "read_past_end", "EINVAL");
    assert_err(&r, "read_straddling_end", "EINVAL");
    assert_err(&r, "read_offset_overflow", "EINVAL");
    assert_err(&r, "write_past_end", "ENOSPC");
    assert_err(&r, "zero_past_end", "ENOSPC");
    assert_err(&r, "trim_past_end", "EINVAL");
    assert_ok(&r, "still_alive");
    assert_eq!(
        site.dirty_bytes("v"),
        0,
        "refused writes must not count dirty"
    );
    still_serving(&site, 0x31);
}

#[test]
fn zero_length_requests_succeed_without_hanging() {
    let Some((site, url)) = setup() else { return };
    let r = run_case(&url, "zero-length");
    for s in [
        "read0",
        "read0_at_end",
        "write0",
        "zero0",
        "trim0",
        "flush",
        "still_alive",
    ] {
        assert_ok(&r, s);
    }
    assert_eq!(
        step(&r, "read0")[1],
        0,
        "a zero-length read returns no data: {r}"
    );
    assert_eq!(
        site.dirty_bytes("v"),
        0,
        "zero-length requests change nothing: {r}"
    );
    still_serving(&site, 0x32);
}

#[test]
fn requests_over_the_32mib_limit_are_refused() {
    let Some((site, url)) = setup() else { return };
    let r = run_case(&url, "oversized-read");
    assert_err(&r, "read_33M", "EINVAL");
    assert_err(&r, "zero_40M", "EINVAL");
    assert_ok(&r, "read_32M");
    assert_eq!(step(&r, "read_32M")[1], 32 << 20, "{r}");
    assert_ok(&r, "still_alive");
    assert_eq!(
        site.dirty_bytes("v"),
        0,
        "refused write-zeroes must not count dirty"
    );
    still_serving(&site, 0x33);
}

#[test]
fn oversized_write_fails_and_the_daemon_keeps_serving() {
    let Some((site, url)) = setup() else { return };
    let r = run_case(&url, "oversized-write");
    // The server answers EINVAL and drops the connection (it will not skip
    // that much untrusted payload); libnbd may report either.
    assert_eq!(
        step(&r, "write_33M")[0],
        false,
        "a 33 MiB write should fail: {r}"
    );
    assert_eq!(
        site.dirty_bytes("v"),
        0,
        "the refused write must not count dirty"
    );
    qemu_io(&site.url("v"), &["read -P 0 0 4M"]);
    still_serving(&site, 0x34);
}

#[test]
fn unknown_export_name_fails_to_connect() {
    let Some((site, url)) = setup() else { return };
    let r = run_case(&url, "bad-export");
    assert_eq!(
        step(&r, "connect")[0],
        false,
        "connecting to an unknown export should fail: {r}"
    );
    assert_eq!(step(&r, "connect")[1], "ENOENT", "{r}");
    still_serving(&site, 0x35);
}

// ---- raw TCP ----

/// Reads until the server closes the connection; panics if it does not
/// within a generous bound (liveness, not timing). Returns what was read.
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                return got;
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!(
                    "the server did not close a connection that sent garbage (read {} bytes)",
                    got.len()
                )
            }
            Err(e) => panic!("reading from the NBD server: {e}"),
        }
    }
}

fn connect_greeted(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to NBD {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).expect("read NBD greeting");
    assert_eq!(&greeting[..8], b"NBDMAGIC", "greeting: {greeting:?}");
    assert_eq!(
        &greeting[8..16],
        b"IHAVEOPT",
        "fixed newstyle greeting: {greeting:?}"
    );
    s
}

fn garbage(len: usize) -> Vec<u8> {
    pseudo_random(len, 0xdead_beef)
}

fn wait_no_connections(site: &TestSite) {
    wait_until(
        "offsite_nbd_connections_active to drop to 0",
        Duration::from_secs(20),
        || metric(&metrics(site), "offsite_nbd_connections_active") == Some(0),
    );
}

#[test]
fn garbage_in_the_handshake_closes_only_that_connection() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    site.create_volume("v", "8M");
    let addr = site_addr(&site, "nbd");

    // Garbage instead of the client flags.
    let mut s = connect_greeted(&addr);
    let _ = s.write_all(&garbage(256));
    read_until_closed(&mut s);

    // Valid flags (FIXED_NEWSTYLE | NO_ZEROES), then an option with a bad magic.
    let mut s = connect_greeted(&addr);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let _ = s.write_all(&garbage(64));
    read_until_closed(&mut s);

    // Garbage sent before even reading the greeting.
    let mut s = TcpStream::connect(&addr).unwrap();
    let _ = s.write_all(&garbage(1000));
    read_until_closed(&mut s);

    still_serving(&site, 0x41);
    wait_no_connections(&site);
    assert!(
        site.log().contains("protocol violation"),
        "the daemon should log the violation:\n{}",
        site.log()
    );
}

#[test]
fn garbage_request_in_transmission_closes_only_that_connection() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    site.create_volume("v", "8M");
    let addr = site_addr(&site, "nbd");

    // Handshake with NBD_OPT_EXPORT_NAME ("v"), keeping a second client
    // connected alongside to show it is unaffected.
    let mut s = connect_greeted(&addr);
    s.write_all(&3u32.to_be_bytes()).unwrap(); // FIXED_NEWSTYLE | NO_ZEROES
    let mut opt = Vec::new();
    opt.extend_from_slice(b"IHAVEOPT");
    opt.extend_from_slice(&1u32.to_be_bytes()); // NBD_OPT_EXPORT_NAME
    opt.extend_from_slice(&1u32.to_be_bytes());
    opt.extend_from_slice(b"v");
    s.write_all(&opt).unwrap();
    let mut export = [0u8; 10]; // size u64 + transmission flags u16 (NO_ZEROES: no padding)
    s.read_exact(&mut export).expect("EXPORT_NAME reply");
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap()),
        8 << 20,
        "export size"
    );
    assert_eq!(
        site.json(&["volume", "show", "v"])["connections"],
        1,
        "the raw client is in transmission"
    );

    // A request header with a bad magic.
    let _ = s.write_all(&garbage(28));
    read_until_closed(&mut s);

    still_serving(&site, 0x42);
    wait_no_connections(&site);
    assert_eq!(site.json(&["volume", "show", "v"])["connections"], 0);
}
