//! Test kit: real `offsite serve` processes in temporary directories on
//! loopback ports, driven through the real CLI, plus helpers for the
//! external NBD clients the tests use as peers.
//!
//! Sites are created with every port set to 0; the daemon publishes the
//! ports it bound in `run/daemon.json`, so any number of sites run at once.

pub mod garage;
pub mod guest;
pub mod libvirt;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A site under test: its data directory and, while running, its daemon.
#[derive(Debug)]
pub struct TestSite {
    bin: PathBuf,
    root: tempfile::TempDir,
    dir: PathBuf,
    name: String,
    child: Option<Child>,
}

impl TestSite {
    /// `offsite site init` in a fresh temporary directory with ephemeral ports.
    pub fn init(bin: &Path, name: &str) -> TestSite {
        TestSite::init_with(bin, name, &[])
    }

    /// `offsite site init` with `extra` flags (`--api-tls self-signed`,
    /// ...); the listeners are on loopback with ephemeral ports unless
    /// `extra` sets `--listen`, `--api` or `--nbd` itself.
    pub fn init_with(bin: &Path, name: &str, extra: &[&str]) -> TestSite {
        let root = tempfile::Builder::new()
            .prefix(&format!("offsite-{name}-"))
            .tempdir()
            .expect("create temp dir");
        let dir = root.path().join("site");
        let site = TestSite {
            bin: bin.to_path_buf(),
            root,
            dir,
            name: name.to_string(),
            child: None,
        };
        let mut args = vec!["site", "init", "--name", name];
        for flag in ["--listen", "--api", "--nbd"] {
            if !extra.contains(&flag) {
                args.extend([flag, "127.0.0.1:0"]);
            }
        }
        args.extend_from_slice(extra);
        let out = site.run(&args);
        assert!(
            out.status.success(),
            "site init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        site
    }

    /// `init` and `start`.
    pub fn started(bin: &Path, name: &str) -> TestSite {
        let mut s = TestSite::init(bin, name);
        s.start();
        s
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A scratch directory beside the site, removed with it.
    pub fn scratch(&self) -> PathBuf {
        let p = self.root.path().join("scratch");
        std::fs::create_dir_all(&p).expect("create scratch dir");
        p
    }

    /// Site name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Path of the daemon's log (stderr).
    pub fn log_path(&self) -> PathBuf {
        self.root.path().join("daemon.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts `offsite serve` and waits until its API answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "site {} already running", self.name);
        let info = self.dir.join("run").join("daemon.json");
        let _ = std::fs::remove_file(&info);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon log");
        let child = Command::new(&self.bin)
            .args(["serve", "--dir"])
            .arg(&self.dir)
            .env("OFFSITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn offsite serve");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "offsite serve exited with {status} at start:\n{}",
                    self.log()
                );
            }
            if info.exists() && self.run(&["site", "show"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "site {} did not start:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for daemon") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "site {} did not stop within 30 s of SIGTERM:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (a crash) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the daemon is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Runs `offsite ARGS --dir DIR` and returns its output.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run offsite")
    }

    /// Runs a command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "offsite {args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command with `--json` that must succeed; returns its JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.ok(&a);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("offsite {args:?}: bad JSON ({e}): {text}"))
    }

    /// Runs a command that must fail with exit code 1 and a one-line error;
    /// returns that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "offsite {args:?} should fail with 1: {stderr}"
        );
        let line = stderr.trim_end();
        assert!(line.starts_with("error: "), "not an error line: {line:?}");
        assert!(!line.contains('\n'), "error is not one line: {line:?}");
        line.to_string()
    }

    /// `volume create NAME --size SIZE`; returns the NBD URL.
    pub fn create_volume(&self, name: &str, size: &str) -> String {
        self.ok(&["volume", "create", name, "--size", size]);
        self.url(name)
    }

    /// The volume's NBD URL.
    pub fn url(&self, name: &str) -> String {
        self.ok(&["volume", "url", name]).trim().to_string()
    }

    /// `dirty_bytes` of a volume.
    pub fn dirty_bytes(&self, name: &str) -> u64 {
        self.json(&["volume", "show", name])["dirty_bytes"]
            .as_u64()
            .expect("dirty_bytes")
    }
}

impl Drop for TestSite {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether an external tool is installed. Under CI (`CI` set) a missing
/// tool is a failure, elsewhere the caller skips with a printed reason.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required under CI; .ci/run installs it"
        );
        eprintln!("skipping: {tool} is not installed");
    }
    found
}

/// Runs an external command that must succeed; returns stdout.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `qemu-io` commands against an NBD URL (raw format); panics on failure or
/// a pattern mismatch (qemu-io prints "Pattern verification failed").
pub fn qemu_io(url: &str, cmds: &[&str]) -> String {
    qemu_io_args(&["-f", "raw"], url, cmds)
}

/// [`qemu_io`] opening the export read-only (`-r`), as read-only exports
/// (PIT exports) require.
pub fn qemu_io_ro(url: &str, cmds: &[&str]) -> String {
    qemu_io_args(&["-r", "-f", "raw"], url, cmds)
}

fn qemu_io_args(base: &[&str], url: &str, cmds: &[&str]) -> String {
    let mut args = base.to_vec();
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(url);
    let out = sh("qemu-io", &args);
    assert!(
        !out.contains("Pattern verification failed"),
        "qemu-io {cmds:?}: {out}"
    );
    assert!(!out.contains("failed"), "qemu-io {cmds:?}: {out}");
    out
}
