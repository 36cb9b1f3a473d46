//! libvirt for integration tests: `libvirtd` at `qemu:///system`, started
//! here when it is not running (these machines have no systemd). Skipped
//! with a printed reason where libvirt is not installed or the test is not
//! root; under CI that is a failure.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use offsite_hypervisor::libvirt::{DomainState, Libvirt, StopOutcome};

/// The URI the tests use.
pub const URI: &str = "qemu:///system";

fn skip(why: &str) -> Option<Libvirt> {
    assert!(
        std::env::var_os("CI").is_none(),
        "libvirt is required under CI (.ci/run installs it): {why}"
    );
    eprintln!("skipping: {why}");
    None
}

fn quiet(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// libvirt at [`URI`], started if needed: QEMU runs as root (a
/// `libvirt-qemu` system user must exist all the same, and
/// `/etc/libvirt/qemu.conf` gets `user`/`group = "root"` unless it sets
/// them), then `virtlogd -d` and `libvirtd -d`.
pub fn libvirt() -> Option<Libvirt> {
    let lv = Libvirt::new(URI);
    if lv.check().is_ok() {
        return Some(lv);
    }
    for tool in ["virsh", "libvirtd", "virtlogd"] {
        if !quiet("sh", &["-c", &format!("command -v {tool}")]) {
            return skip(&format!(
                "{tool} is not installed (libvirt-clients, libvirt-daemon)"
            ));
        }
    }
    if !rustix::process::geteuid().is_root() {
        return skip("starting libvirtd needs root");
    }
    if !quiet("id", &["libvirt-qemu"]) {
        quiet("useradd", &["-r", "libvirt-qemu"]);
    }
    let conf = std::path::Path::new("/etc/libvirt/qemu.conf");
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    let set = |key: &str| {
        text.lines()
            .any(|l| l.trim_start().starts_with(key) && l.contains('='))
    };
    if !set("user") || !set("group") {
        let mut add = text.clone();
        for key in ["user", "group"] {
            if !set(key) {
                add.push_str(&format!("{key} = \"root\"\n"));
            }
        }
        std::fs::write(conf, add).expect("write /etc/libvirt/qemu.conf");
    }
    for d in [
        "/var/log/libvirt",
        "/var/run/libvirt",
        "/var/lib/libvirt",
        "/var/cache/libvirt",
    ] {
        std::fs::create_dir_all(d).expect("create libvirt's directories");
    }
    if !quiet("pgrep", &["-x", "virtlogd"]) {
        quiet("virtlogd", &["-d"]);
    }
    if !quiet("pgrep", &["-x", "libvirtd"]) {
        quiet("libvirtd", &["-d"]);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match lv.check() {
            Ok(()) => return Some(lv),
            Err(e) if Instant::now() >= deadline => {
                panic!("libvirtd did not answer within 30 s after starting it: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}
