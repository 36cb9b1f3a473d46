//! The Debian package (issue 17): built by `scripts/build-deb.sh` from the
//! binary this test suite built, installed with `dpkg -i` on this machine
//! (CI runs as root), then checked as an operator would: the binary runs,
//! `man` finds the pages, the completions are in place, and
//! `systemd-analyze verify` accepts the unit. The package is purged at the
//! end.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Purges the package when the test ends, passed or not.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "offsite"]).output();
    }
}

/// `dpkg` with retries while another dpkg/apt holds the lock (CI machines
/// are shared; an `apt-get install` may be running).
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = Command::new("dpkg").args(args).output().expect("run dpkg");
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success() || !err.contains("lock") || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn debian_package_installs_binary_unit_man_pages_and_completions() {
    for tool in ["cargo-deb", "dpkg", "dpkg-deb", "man", "systemd-analyze"] {
        if !offsite_testkit::have_tool(tool) {
            eprintln!("skipped: {tool} is not installed (.ci/run installs it)");
            return;
        }
    }
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the package test installs with dpkg -i and needs root"
        );
        eprintln!("skipped: installing a package needs root");
        return;
    }
    if Path::new("/usr/bin/offsite").exists()
        && Command::new("dpkg")
            .args(["-s", "offsite"])
            .output()
            .is_ok_and(|o| !o.status.success())
    {
        panic!(
            "/usr/bin/offsite exists but does not belong to the offsite package; refusing to overwrite it"
        );
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out_dir = tempfile::tempdir().expect("temp dir");

    let built = run(Command::new(workspace.join("scripts/build-deb.sh"))
        .arg("--binary")
        .arg(bin())
        .args(["--", "--fast", "-o"])
        .arg(out_dir.path()));
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "one .deb expected: {debs:?}\n{}",
        text(&built)
    );
    let deb = debs[0].to_str().unwrap();

    let contents = text(&run(Command::new("dpkg-deb").args(["--contents", deb])));
    for path in [
        "./usr/bin/offsite",
        "./usr/lib/systemd/system/offsite.service",
        "./usr/share/man/man1/offsite.1",
        "./usr/share/man/man1/offsite-serve.1",
        "./usr/share/man/man1/offsite-volume-create.1",
        "./usr/share/bash-completion/completions/offsite",
        "./usr/share/zsh/vendor-completions/_offsite",
        "./usr/share/fish/vendor_completions.d/offsite.fish",
    ] {
        assert!(
            contents
                .lines()
                .any(|l| l.ends_with(path) || l.contains(&format!("{path}.gz"))),
            "{path} missing from the package:\n{contents}"
        );
    }
    assert!(
        !contents.contains("generate-assets"),
        "the hidden command gets no man page:\n{contents}"
    );

    let _installed = Installed;
    let out = dpkg(&["-i", deb]);
    assert!(
        out.status.success(),
        "dpkg -i {deb}:\n{}\n{}",
        text(&out),
        String::from_utf8_lossy(&out.stderr)
    );

    let version = text(&run(Command::new("/usr/bin/offsite").arg("--version")));
    assert_eq!(
        version.trim(),
        format!("offsite {}", env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    for page in ["offsite", "offsite-serve", "offsite-group-start"] {
        let path = text(&run(Command::new("man").args(["-w", page])));
        assert!(
            path.trim().starts_with("/usr/share/man/man1/"),
            "man -w {page}: {path}"
        );
    }
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/offsite").unwrap();
    assert!(
        bash.contains("complete") && bash.contains("offsite"),
        "{bash}"
    );

    // The unit as installed: its ExecStart binary and Documentation man
    // pages exist now, so verify checks everything.
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/usr/lib/systemd/system/offsite.service"])
        .output()
        .expect("run systemd-analyze");
    let err = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && !err.contains("offsite.service"),
        "systemd-analyze verify ({}):\n{err}",
        verify.status
    );
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/offsite.service").unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/offsite",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "UMask=0077",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "{line} missing:\n{unit}"
        );
    }
}
