//! The test guest ([`offsite_hypervisor::guest`]) for integration tests:
//! built once per test in a scratch directory, skipped with a printed
//! reason where the host lacks its packages (a failure under CI, which
//! installs them).

use std::path::Path;
use std::time::Duration;

pub use offsite_hypervisor::guest::{BootReport, GuestDisk, GuestKit};

/// How long one boot may take: about 4 to 6 s under TCG on an idle
/// machine; the suite shares two cores with many other tests.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The guest built in `dir`, or `None` (after printing why) when this
/// host cannot boot it. Under CI a missing package is a failure.
pub fn guest_kit(dir: &Path) -> Option<GuestKit> {
    if let Err(e) = GuestKit::available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the test guest must boot under CI (.ci/run installs its packages): {e}"
        );
        eprintln!("skipping: {e}");
        return None;
    }
    Some(GuestKit::build(dir).expect("build the test guest"))
}

/// Boots the guest on NBD exports `urls` (vda, vdb, ...), writing one
/// marker labelled `label` to each disk; panics with the console log if
/// the guest does not finish.
pub fn boot_nbd(kit: &GuestKit, urls: &[String], label: &str, console: &Path) -> BootReport {
    let disks: Vec<GuestDisk> = urls.iter().map(|u| GuestDisk::Nbd(u.clone())).collect();
    kit.boot(&disks, label, console, BOOT_TIMEOUT)
        .unwrap_or_else(|e| {
            panic!(
                "booting the guest on {urls:?}: {e}\n{}",
                std::fs::read_to_string(console).unwrap_or_default()
            )
        })
}
