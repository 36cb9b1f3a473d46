//! Helpers shared by the CLI integration tests (each test binary includes
//! this module with `mod common;` and uses what it needs).
#![allow(dead_code)]

pub mod ext4;
pub mod links;
pub mod pg;
pub mod s3;
pub mod stamps;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use offsite_testkit::TestSite;

/// The Python interpreter with the distribution's `nbd` module
/// (python3-libnbd); a pyenv `python3` on PATH would not have it.
pub const PYTHON: &str = "/usr/bin/python3";

/// The `offsite` binary under test.
pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_offsite"))
}

/// A started site named `name`.
pub fn site(name: &str) -> TestSite {
    TestSite::started(bin(), name)
}

/// Whether every tool is installed (fails under CI when one is missing).
pub fn have_tools(tools: &[&str]) -> bool {
    tools.iter().all(|t| offsite_testkit::have_tool(t))
}

/// Whether `/usr/bin/python3` can `import nbd`. Under CI a missing module
/// is a failure, elsewhere the caller skips.
pub fn have_python_nbd() -> bool {
    let ok = Command::new(PYTHON)
        .args(["-c", "import nbd"])
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{PYTHON} with the nbd module (python3-libnbd) is required under CI"
        );
        eprintln!("skipping: {PYTHON} cannot import nbd (install python3-libnbd)");
    }
    ok
}

/// Runs a Python script (`python3 -c SCRIPT ARGS...`) that must succeed;
/// returns its stdout.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new(PYTHON)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python script failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a Python script whose last stdout line is JSON; returns it.
pub fn python_json(script: &str, args: &[&str]) -> serde_json::Value {
    let out = python(script, args);
    let last = out.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("python output is not JSON ({e}): {out}"))
}

/// Runs a command, killing it if it has not exited within `limit` (a
/// liveness bound against hangs, not a timing assertion).
pub fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!(
                "{cmd:?} did not exit within {limit:?}:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after
/// `limit` (a liveness bound, not a timing assertion).
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (and reaped) when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child still owned")
    }

    /// Takes the child out (it is then no longer killed on drop).
    pub fn take(&mut self) -> Child {
        self.0.take().expect("child still owned")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `site show --json` field `key` (e.g. "api", "nbd").
pub fn site_addr(site: &TestSite, key: &str) -> String {
    site.json(&["site", "show"])[key]
        .as_str()
        .unwrap_or_else(|| panic!("site show has no {key}"))
        .to_string()
}

/// A plain HTTP/1.0 GET to `addr` (HOST:PORT); returns status and body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to API {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read HTTP answer to GET {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP answer to GET {path}: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in HTTP answer to GET {path}: {head:?}"));
    (status, body.to_string())
}

/// Writes a raw image of `size` bytes: zeroes except `fills`, each
/// `(offset, len, byte)`.
pub fn write_image(path: &Path, size: u64, fills: &[(u64, usize, u8)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).expect("create image");
    f.set_len(size).expect("size image");
    for &(off, len, byte) in fills {
        f.write_all_at(&vec![byte; len], off).expect("write image");
    }
    f.sync_all().expect("sync image");
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `qemu-img compare -f raw -F raw A B`; returns (exit code, stdout+stderr).
pub fn qemu_img_compare(a: &str, b: &str) -> (i32, String) {
    let out = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "raw", a, b])
        .stdin(Stdio::null())
        .output()
        .expect("run qemu-img compare");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The value of one sample line (`NAME{LABELS} VALUE` or `NAME VALUE`).
pub fn metric(body: &str, sample: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(sample)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// `/metrics` of a running site.
pub fn metrics(site: &TestSite) -> String {
    let (status, body) = http_get(&site_addr(site, "api"), "/metrics");
    assert_eq!(status, 200, "/metrics answered {status}: {body}");
    body
}

/// `offsite events --json` kinds and messages for subject `subject`.
pub fn events_about(site: &TestSite, subject: &str) -> Vec<(String, String)> {
    let ev = site.json(&["events", "--limit", "1000"]);
    ev.as_array()
        .expect("events --json is an array")
        .iter()
        .filter(|e| e["subject"].as_str() == Some(subject))
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// A path in the site's scratch directory.
pub fn scratch_file(site: &TestSite, name: &str) -> PathBuf {
    site.scratch().join(name)
}

/// The set of `bs`-byte blocks touched by byte range `[off, off+len)`.
pub fn blocks_of(off: u64, len: u64, bs: u64) -> std::ops::Range<u64> {
    off / bs..(off + len).div_ceil(bs)
}

// ---- Replication (pairing, authorization, channel faults) ----

/// Fast replication timers for tests: keepalive 0.5 s, dead after 2 s,
/// probe every 0.5 s, connect timeout 2 s.
pub const FAST_REPLICATION: &str =
    "keepalive_secs = 0.5\ndead_after_secs = 2.0\nprobe_secs = 0.5\nconnect_timeout_secs = 2.0\n";

/// Replaces the `[replication]` section of a (stopped) site's config.toml
/// with `body` (`site init` writes one with the defaults; TOML refuses a
/// second); the sections after it (`[api_tls]`, ...) are kept, but for
/// those `body` brings itself.
pub fn set_replication_config(site: &TestSite, body: &str) {
    let path = site.dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config.toml");
    let (head, rest) = match text.find("[replication]") {
        Some(i) => (&text[..i], &text[i + "[replication]".len()..]),
        None => (&text[..], ""),
    };
    // The next section header after [replication], if any.
    let tail = rest
        .match_indices("\n[")
        .map(|(i, _)| &rest[i + 1..])
        .find(|t| !t.starts_with("[replication."))
        .unwrap_or("");
    // A section `body` brings (`[libvirt]` after the replication keys)
    // replaces the one site init wrote: TOML refuses a second.
    let brought: Vec<&str> = body
        .lines()
        .filter(|l| l.trim_start().starts_with('['))
        .map(str::trim)
        .collect();
    let mut kept = String::new();
    let mut keep = true;
    for line in tail.lines() {
        if line.trim_start().starts_with('[') {
            keep = !brought.contains(&line.trim());
        }
        if keep {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let mut new = head.trim_end().to_string();
    new.push_str("\n\n[replication]\n");
    new.push_str(body);
    if !kept.is_empty() {
        new.push('\n');
        new.push_str(&kept);
    }
    std::fs::write(&path, new).expect("write config.toml");
}

/// A started site with [`FAST_REPLICATION`] timers.
pub fn fast_site(name: &str) -> TestSite {
    let mut s = TestSite::init(bin(), name);
    set_replication_config(&s, FAST_REPLICATION);
    s.start();
    s
}

/// The site's certificate fingerprint (`site show`).
pub fn fingerprint_of(site: &TestSite) -> String {
    site_addr(site, "fingerprint")
}

/// `partner add` on `site` for `other`, dialled at `address`.
pub fn pin_at(site: &TestSite, other: &TestSite, address: &str) {
    let fp = fingerprint_of(other);
    site.ok(&[
        "partner",
        "add",
        other.name(),
        "--address",
        address,
        "--fingerprint",
        &fp,
    ]);
}

/// `partner add` on `site` for `other` at its replication listener.
pub fn pin(site: &TestSite, other: &TestSite) {
    pin_at(site, other, &site_addr(other, "listen"));
}

/// Pairs two sites both ways at their listeners.
pub fn pair(a: &TestSite, b: &TestSite) {
    pin(a, b);
    pin(b, a);
}

/// `partner list --json` entry for `name`, if any.
pub fn partner_entry(site: &TestSite, name: &str) -> Option<serde_json::Value> {
    site.json(&["partner", "list"])
        .as_array()
        .expect("partner list --json is an array")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .cloned()
}

/// Waits until `site`'s partner list shows `name` with `reachable ==
/// want`; returns the entry.
pub fn wait_reachable(
    site: &TestSite,
    name: &str,
    want: bool,
    limit: Duration,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = partner_entry(site, name) {
            if p["reachable"].as_bool() == Some(want) {
                return p;
            }
            last = p;
        }
        assert!(
            Instant::now() < deadline,
            "{}: partner {name} not reachable={want} within {limit:?}; last entry: {last}\nlog:\n{}",
            site.name(),
            tail(&site.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `partner test NAME --bytes BYTES [extra] --json`, which must succeed.
pub fn partner_test(site: &TestSite, name: &str, bytes: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["partner", "test", name, "--bytes", bytes];
    args.extend_from_slice(extra);
    site.json(&args)
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A replication listener metric of a running site (0 when absent).
pub fn repl_metric(site: &TestSite, name: &str) -> u64 {
    metric(&metrics(site), name).unwrap_or(0)
}

/// An authenticated HTTP/1.0 request to a running site's API (`/api/v1`
/// + `path`) with an optional JSON body; returns status and body.
pub fn api_request(site: &TestSite, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let addr = site_addr(site, "api");
    let token = std::fs::read_to_string(site.dir().join("api.token")).expect("read api.token");
    let mut s = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect to API {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} /api/v1{path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read HTTP answer to {method} {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP answer to {method} {path}: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in HTTP answer to {method} {path}: {head:?}"));
    (status, body.to_string())
}

// ---- Replication groups (issue 4) ----

/// Replication timers for group tests: fast reconnects, but sessions that
/// tolerate a throttled link (a ping may queue behind seconds of bulk data).
pub const GROUP_REPLICATION: &str =
    "keepalive_secs = 1.0\ndead_after_secs = 20.0\nprobe_secs = 1.0\nconnect_timeout_secs = 3.0\n";

/// A started site with [`GROUP_REPLICATION`] timers whose replication
/// listener keeps its port across restarts (so partners need no update).
pub fn group_site(name: &str) -> TestSite {
    let mut s = TestSite::init(bin(), name);
    set_replication_config(&s, GROUP_REPLICATION);
    s.start();
    keep_listen_port(&s);
    s
}

/// Rewrites config.toml's `listen` to the port the running site bound, so
/// that a restart (after `kill9` or `stop`) listens at the same address.
pub fn keep_listen_port(site: &TestSite) {
    let listen = site_addr(site, "listen");
    let path = site.dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config.toml");
    let new: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("listen = ") {
                format!("listen = \"{listen}\"")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&path, new.join("\n") + "\n").expect("write config.toml");
}

/// `authz add --allowed-primary PRIMARY --storage-location DIR [--security-tag T]`
/// on `replica`; returns DIR (in the replica's scratch directory).
pub fn authorize_primary(replica: &TestSite, primary: &str, tag: Option<&str>) -> PathBuf {
    let dir = replica.scratch().join(format!("replicas-of-{primary}"));
    let d = dir.display().to_string();
    let mut args = vec![
        "authz",
        "add",
        "--allowed-primary",
        primary,
        "--storage-location",
        &d,
    ];
    if let Some(t) = tag {
        args.extend(["--security-tag", t]);
    }
    replica.json(&args);
    dir
}

/// Sites `site-a` (primary) and `site-b` (replica) from [`group_site`],
/// paired both ways; B authorizes A (no security tag).
pub fn group_pair() -> (TestSite, TestSite) {
    let a = group_site("site-a");
    let b = group_site("site-b");
    pair(&a, &b);
    authorize_primary(&b, a.name(), None);
    (a, b)
}

/// `group create NAME --partner PARTNER` with `members` (`--vm`/`--volume`
/// flags), `extra` flags, and `--mode async --rpo 30s --keep 3` for those
/// of the three that `extra` does not set.
pub fn create_group(
    primary: &TestSite,
    name: &str,
    partner: &str,
    members: &[&str],
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec!["group", "create", name, "--partner", partner];
    args.extend_from_slice(members);
    args.extend_from_slice(extra);
    args.extend(group_defaults(extra));
    primary.json(&args)
}

/// `--mode async --rpo 30s --keep 3`, less the flags `extra` sets.
pub fn group_defaults(extra: &[&str]) -> Vec<&'static str> {
    [("--mode", "async"), ("--rpo", "30s"), ("--keep", "3")]
        .into_iter()
        .filter(|(flag, _)| !extra.contains(flag))
        .flat_map(|(flag, value)| [flag, value])
        .collect()
}

/// `group status NAME --json`.
pub fn group_status(site: &TestSite, name: &str) -> serde_json::Value {
    site.json(&["group", "status", name])
}

/// Polls `group status` until `cond` holds; returns that status.
pub fn wait_group(
    site: &TestSite,
    name: &str,
    what: &str,
    limit: Duration,
    mut cond: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let st = group_status(site, name);
        if cond(&st) {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "{}: group {name}: timed out after {limit:?} waiting for: {what}; last status: {st}\nlog:\n{}",
            site.name(),
            tail(&site.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `pit list NAME --json`.
pub fn pit_list(site: &TestSite, group: &str) -> Vec<serde_json::Value> {
    site.json(&["pit", "list", group])
        .as_array()
        .expect("pit list --json is an array")
        .clone()
}

/// `(id, name)` of every PIT of `group` on `site`, oldest first.
pub fn pit_ids(site: &TestSite, group: &str) -> Vec<(u64, Option<String>)> {
    pit_list(site, group)
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap_or_else(|| panic!("PIT id: {p}")),
                p["name"].as_str().map(str::to_string),
            )
        })
        .collect()
}

/// `sync NAME [extra] --json` on `site`, which must succeed; returns the PIT.
pub fn sync_pit(site: &TestSite, group: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["sync", group];
    args.extend_from_slice(extra);
    let r = site.json(&args);
    assert_eq!(r["group"].as_str(), Some(group), "{r}");
    let pit = r["pit"].clone();
    assert!(
        pit["id"].as_u64().is_some(),
        "sync should return its PIT: {r}"
    );
    pit
}

/// `verify NAME --json` at the primary, which must find no difference;
/// returns its JSON.
pub fn verify_clean(primary: &TestSite, group: &str) -> serde_json::Value {
    let out = primary.run(&["verify", group, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify {group} failed ({}): {}{stdout}\nprimary log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&primary.log(), 30)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify --json is not JSON ({e}): {stdout}"));
    assert_eq!(v["differing_blocks"].as_u64(), Some(0), "{v}");
    v
}

/// Liveness bound for anything replication does in the group tests.
pub const GROUP_LIMIT: Duration = Duration::from_secs(90);

/// A seed from the clock, printed so that a failing run can be replayed
/// with `OFFSITE_TEST_SEED`.
pub fn seed() -> u64 {
    let s = std::env::var("OFFSITE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("OFFSITE_TEST_SEED={s}");
    s
}

/// `sync NAME --json` at `site`, retried while a just-restarted partner
/// comes back; returns the PIT.
pub fn sync_eventually(site: &TestSite, group: &str) -> serde_json::Value {
    let deadline = Instant::now() + GROUP_LIMIT;
    loop {
        let out = site.run(&["sync", group, "--json"]);
        if out.status.success() {
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sync --json");
            assert!(r["pit"]["id"].as_u64().is_some(), "{r}");
            return r["pit"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "sync {group} kept failing: {}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&site.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Next value of a xorshift64 sequence (tests draw delays and faults from
/// [`seed`] so a failing run replays).
pub fn next_rand(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `v[key]` as an unsigned integer, or a panic that shows `v`.
pub fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} should be an unsigned integer: {v}"))
}

/// The NBD URL a failover, test failover or PIT export answer (`--json`)
/// gives for `volume`.
pub fn served_url(r: &serde_json::Value, volume: &str) -> String {
    r["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == volume)
        .and_then(|v| v["url"].as_str())
        .unwrap_or_else(|| panic!("no volume {volume} served: {r}"))
        .to_string()
}

/// `plan run PLAN --mode MODE --json` at `site`: its report, whatever the
/// run's status (the caller checks it; a disaster run at a lost site
/// ends with errors).
pub fn plan_report(site: &TestSite, plan: &str, mode: &str) -> serde_json::Value {
    let out = site.run(&["plan", "run", plan, "--mode", mode, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "plan run {plan} --mode {mode} printed no report ({e}): {stdout}{}\nlog:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&site.log(), 40)
        )
    })
}

/// A VM's definition as `vm show --json` gives it, less what a site sets
/// by itself when the VM is defined there: what must be equal at two
/// sites.
pub fn vm_definition(site: &TestSite, vm: &str) -> serde_json::Value {
    let mut v = site.json(&["vm", "show", vm]);
    if let Some(o) = v.as_object_mut() {
        for local in ["created_at", "state", "running", "domain_state"] {
            o.remove(local);
        }
    }
    v
}

/// `plan show PLAN --json` at `site` less its last run (which differs
/// between sites): what must be equal at two sites.
pub fn plan_definition(site: &TestSite, plan: &str) -> serde_json::Value {
    let mut p = site.json(&["plan", "show", plan]);
    if let Some(o) = p.as_object_mut() {
        o.remove("last_run");
    }
    p
}
