//! offsite as a service (issue 17): private files, SIGHUP reload, log
//! filters and formats, systemd readiness notifications.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

/// Every file and directory under `root` (and `root` itself) that group or
/// other users can access, with its mode.
fn accessible_to_others(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).expect("stat");
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            found.push((p.clone(), mode));
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).expect("read dir") {
                stack.push(e.expect("dir entry").path());
            }
        }
    }
    found
}

fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            n += 1;
        }
    }
    n
}

/// VM disks, tracking files, the catalog, replica stores and every
/// directory are for the site's user only, whatever umask the test runs
/// with (cargo's is usually 022).
#[test]
fn site_files_are_private_after_replication() {
    let (a, b) = group_pair();
    let store = b.scratch().join("replicas-of-site-a");
    a.create_volume("disk0", "8M");
    if offsite_testkit::have_tool("qemu-io") {
        offsite_testkit::qemu_io(&a.url("disk0"), &["write -P 7 0 1M"]);
    }
    create_group(&a, "g", "site-b", &["--volume", "disk0"], &[]);
    let st = a.json(&["group", "start", "g"]);
    assert_eq!(st["state"], "replicating", "{st}");
    sync_pit(&a, "g", &["--pit-name", "one"]);
    // A second volume created while the daemon runs, after the group.
    a.create_volume("disk1", "4M");

    for root in [a.dir(), b.dir(), store.as_path()] {
        assert!(
            count_files(root) >= 5,
            "{} should hold the site's files",
            root.display()
        );
        let open = accessible_to_others(root);
        assert!(
            open.is_empty(),
            "files group/other users can access (want 0600 files, 0700 directories):\n{}",
            open.iter()
                .map(|(p, m)| format!("{m:o} {}", p.display()))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// `offsite serve` started by the test itself (not by the test kit), with
/// the environment and arguments under test; killed if still running when
/// dropped.
struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    /// Starts `offsite serve --dir SITE extra...` with `env` (and without
    /// `OFFSITE_LOG`/`RUST_LOG` unless `env` sets them); waits until the
    /// site answers.
    fn start(site: &offsite_testkit::TestSite, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = site
            .scratch()
            .join(format!("serve-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        let mut cmd = std::process::Command::new(bin());
        cmd.args(["serve", "--dir"])
            .arg(site.dir())
            .args(extra)
            .env_remove("OFFSITE_LOG")
            .env_remove("RUST_LOG")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create log"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut d = Daemon {
            child: cmd.spawn().expect("spawn offsite serve"),
            log,
        };
        wait_until("the daemon serves", Duration::from_secs(30), || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("offsite serve exited with {status}:\n{}", d.log());
            }
            site.dir().join("run/daemon.json").exists()
                && site.run(&["site", "show"]).status.success()
        });
        d
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// SIGTERM; the exit code.
    fn stop(mut self) -> Option<i32> {
        self.signal(rustix::process::Signal::TERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the daemon did not stop:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rewrites the site's config.toml with `edit`.
fn edit_config(site: &offsite_testkit::TestSite, edit: impl FnOnce(String) -> String) {
    let path = site.dir().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read config.toml");
    let new = edit(text.clone());
    assert_ne!(new, text, "the edit should change config.toml");
    std::fs::write(&path, new).expect("write config.toml");
}

fn bandwidth_of(site: &offsite_testkit::TestSite) -> serde_json::Value {
    site.json(&["site", "set"])["bandwidth_bytes_per_sec"].clone()
}

/// SIGHUP reloads config.toml: timers, the bandwidth limit (visible in
/// `site set`) and the log filter take effect, what needs a restart is
/// named, a broken file changes nothing; the daemon keeps serving through
/// all of it and still stops cleanly.
#[test]
fn sighup_reloads_the_configuration_and_the_daemon_keeps_serving() {
    use rustix::process::Signal;
    let site = offsite_testkit::TestSite::init(bin(), "site-a");
    let mut d = Daemon::start(&site, &[], &[]);
    assert_eq!(bandwidth_of(&site), serde_json::Value::Null);

    edit_config(&site, |t| {
        t.replace("keepalive_secs = 5.0", "keepalive_secs = 2.0")
            .replace(
                "[replication]\n",
                "[replication]\nbandwidth_bytes_per_sec = 1048576\n",
            )
            .replace("filter = \"info\"", "filter = \"debug\"")
            .replace("api = \"127.0.0.1:0\"", "api = \"127.0.0.1:1\"")
    });
    d.signal(Signal::HUP);
    wait_until("the reload is logged", Duration::from_secs(10), || {
        d.log().contains("configuration reloaded:")
    });
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("configuration reloaded:"))
        .unwrap();
    for what in [
        "replication.keepalive_secs: 5 -> 2",
        "replication.bandwidth_bytes_per_sec: (not set) -> 1048576 B/s",
        "log.filter: \"info\" -> \"debug\"",
    ] {
        assert!(line.contains(what), "{what:?} missing from: {line}");
    }
    assert!(
        log.lines()
            .any(|l| l.contains("except api:") && l.contains("next restart")),
        "the API address waits for a restart, and the log says so:\n{log}"
    );
    assert!(d.running(), "SIGHUP must not end the daemon:\n{log}");
    assert!(site.dir().join("run/daemon.json").exists());
    assert_eq!(bandwidth_of(&site), 1048576);

    // A broken file: nothing changes, the error is logged.
    let good = std::fs::read_to_string(site.dir().join("config.toml")).unwrap();
    std::fs::write(site.dir().join("config.toml"), "this is not = = toml").unwrap();
    d.signal(Signal::HUP);
    wait_until(
        "the refused reload is logged",
        Duration::from_secs(10),
        || d.log().contains("not reloaded, the settings in force stay"),
    );
    assert!(d.running());
    assert_eq!(bandwidth_of(&site), 1048576);

    // The filter is really in force: at `warn`, the next reload's INFO
    // line is not written, though the reload happens (the bandwidth moves).
    std::fs::write(
        site.dir().join("config.toml"),
        good.replace("filter = \"debug\"", "filter = \"warn\"")
            .replace(
                "bandwidth_bytes_per_sec = 1048576",
                "bandwidth_bytes_per_sec = 2097152",
            ),
    )
    .unwrap();
    let lines_before = d.log().lines().count();
    d.signal(Signal::HUP);
    wait_until(
        "the bandwidth follows the file",
        Duration::from_secs(10),
        || bandwidth_of(&site) == 2097152,
    );
    std::thread::sleep(Duration::from_millis(300));
    // (The reload's first line, "SIGHUP received", is written while the
    // old filter is still in force.)
    let after: Vec<String> = d
        .log()
        .lines()
        .skip(lines_before)
        .filter(|l| !l.contains("SIGHUP received"))
        .map(String::from)
        .collect();
    assert!(
        after
            .iter()
            .all(|l| !l.contains(" INFO ") && !l.contains(" DEBUG ")),
        "at log.filter = warn no INFO/DEBUG line may follow:\n{}",
        after.join("\n")
    );
    assert!(
        after
            .iter()
            .any(|l| l.contains(" WARN ") && l.contains("except api:")),
        "warnings still are written:\n{}",
        after.join("\n")
    );

    let log_path = d.log.clone();
    assert_eq!(
        d.stop(),
        Some(0),
        "{}",
        std::fs::read_to_string(log_path).unwrap()
    );
    assert!(!site.dir().join("run/daemon.json").exists());
}

/// The usual `RUST_LOG` filter applies; `OFFSITE_LOG` overrides it; an
/// invalid filter stops the start with an error that names the variable.
#[test]
fn rust_log_and_offsite_log_set_the_filter() {
    let site = offsite_testkit::TestSite::init(bin(), "site-a");

    let d = Daemon::start(&site, &[], &[("RUST_LOG", "warn")]);
    let log = d.log();
    assert_eq!(d.stop(), Some(0));
    assert!(
        !log.contains("site is serving") && !log.contains(" INFO "),
        "RUST_LOG=warn: no INFO line expected:\n{log}"
    );

    let d = Daemon::start(&site, &[], &[("RUST_LOG", "warn"), ("OFFSITE_LOG", "info")]);
    let log = d.log();
    assert_eq!(d.stop(), Some(0));
    assert!(
        log.contains("site is serving"),
        "OFFSITE_LOG=info overrides RUST_LOG=warn:\n{log}"
    );

    let out = std::process::Command::new(bin())
        .args(["serve", "--dir"])
        .arg(site.dir())
        .env_remove("OFFSITE_LOG")
        .env("RUST_LOG", "offsite=loud")
        .output()
        .expect("run offsite serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("RUST_LOG") && err.contains("not a valid log filter"),
        "{err}"
    );
}

/// `--log-format json`: every line is one JSON object with a level, a
/// target and a message, the event's fields beside them.
#[test]
fn log_format_json_writes_one_object_per_line() {
    let site = offsite_testkit::TestSite::init(bin(), "site-a");
    let d = Daemon::start(&site, &["--log-format", "json"], &[("OFFSITE_LOG", "info")]);
    let path = d.log.clone();
    assert_eq!(d.stop(), Some(0));
    let log = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{log}");
    let mut serving = None;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for key in ["timestamp", "level", "target", "message"] {
            assert!(v.get(key).is_some(), "{key} missing: {l}");
        }
        if v["message"] == "site is serving" {
            serving = Some(v);
        }
    }
    let serving = serving.unwrap_or_else(|| panic!("no `site is serving` line:\n{log}"));
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["site"], "site-a", "{serving}");
    let out = site.run(&["serve", "--log-format", "xml"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad --log-format is a usage error"
    );
}

/// Under systemd's `Type=notify`: READY=1 once serving, WATCHDOG=1 at half
/// WATCHDOG_USEC, RELOADING=1 then READY=1 around a SIGHUP reload, and
/// STOPPING=1 at SIGTERM, all on the datagram socket of NOTIFY_SOCKET.
#[test]
fn systemd_notifications_ready_watchdog_reload_stopping() {
    use std::os::unix::net::UnixDatagram;
    let site = offsite_testkit::TestSite::init(bin(), "site-a");
    let path = site.scratch().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let reader = {
        let messages = messages.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                if let Ok(n) = sock.recv(&mut buf) {
                    let m = String::from_utf8_lossy(&buf[..n]).to_string();
                    let stop = m.contains("STOPPING=1");
                    messages.lock().unwrap().push(m);
                    if stop {
                        return;
                    }
                }
            }
        })
    };
    let seen = |what: &str| -> usize {
        messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.lines().any(|l| l == what))
            .count()
    };
    let d = Daemon::start(
        &site,
        &[],
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    wait_until("READY=1", Duration::from_secs(10), || seen("READY=1") == 1);
    wait_until(
        "WATCHDOG=1 about every 200 ms",
        Duration::from_secs(5),
        || seen("WATCHDOG=1") >= 3,
    );
    d.signal(rustix::process::Signal::HUP);
    wait_until("RELOADING=1 then READY=1", Duration::from_secs(10), || {
        let m = messages.lock().unwrap();
        let reloading = m.iter().position(|m| m.lines().any(|l| l == "RELOADING=1"));
        reloading.is_some_and(|i| m[i + 1..].iter().any(|m| m.lines().any(|l| l == "READY=1")))
    });
    assert!(
        messages
            .lock()
            .unwrap()
            .iter()
            .any(|m| m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC=")),
        "RELOADING=1 carries MONOTONIC_USEC (Type=notify-reload)"
    );
    assert_eq!(d.stop(), Some(0));
    reader.join().unwrap();
    assert_eq!(seen("STOPPING=1"), 1, "{:?}", messages.lock().unwrap());
}

/// A data directory from before files were private (0755) is closed to
/// other users when the daemon starts, and the log says so.
#[test]
fn serve_closes_an_older_open_data_directory() {
    let site = offsite_testkit::TestSite::init(bin(), "site-a");
    std::fs::set_permissions(site.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = Daemon::start(&site, &[], &[("OFFSITE_LOG", "info")]);
    let mode = std::fs::metadata(site.dir()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", d.log());
    assert!(
        d.log()
            .contains("was accessible to other users (mode 755); it is 700 now"),
        "{}",
        d.log()
    );
    assert_eq!(d.stop(), Some(0));
}
