//! `offsite demo` (the README's main job) runs to the end with every check
//! passing: two sites, a recovery plan run as test, cleanup, planned,
//! reprotect and failback, data checked at each step.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn offsite_demo_passes_every_check() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("demo");
    let out = output_within(
        Command::new(bin())
            .arg("demo")
            .arg("--dir")
            .arg(&demo)
            .env_remove("OFFSITE_DIR"),
        Duration::from_secs(120),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "offsite demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every check passed"), "{stdout}");
    // The real guest VM boots where the host can boot it, and the demo
    // says which it did.
    if offsite_hypervisor::GuestKit::available().is_ok() {
        for boot in [
            "ok: app booted at site-b on its test clone",
            "ok: app booted at site-b on its promoted disk",
            "ok: app booted at home with every earlier marker",
        ] {
            assert!(stdout.contains(boot), "{boot}: {stdout}");
        }
    } else {
        assert!(stdout.contains("no real VM in this demo"), "{stdout}");
    }
    for mode in ["test", "cleanup", "planned", "reprotect", "failback"] {
        assert!(
            stdout.contains(&format!("ok: {mode} run")),
            "the {mode} run is reported: {stdout}"
        );
    }
    let reports: Vec<_> = std::fs::read_dir(demo.join("reports"))
        .expect("the HTML reports are kept")
        .flatten()
        .collect();
    assert_eq!(reports.len(), 5, "one HTML report per run");
    assert!(
        !demo.join("site-a").exists(),
        "the sites are removed without --keep"
    );
    // A directory holding a site is refused.
    std::fs::create_dir_all(demo.join("site-a")).unwrap();
    let again = Command::new(bin())
        .args(["demo", "--dir"])
        .arg(&demo)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("holds a site already"));
}
