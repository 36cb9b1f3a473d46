//! A replica store whose file system fills up (issue 17, truthful status):
//! replication stops safely (the primary keeps serving, the PITs kept stay
//! intact), both sites name the cause — which store, how much is free and
//! needed — the replica's health is critical, and replication resumes by
//! itself once space is freed.
//!
//! The store lives on a small tmpfs the test mounts (root only; skipped
//! with a message elsewhere, never under CI).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use offsite_testkit::{qemu_io, qemu_io_ro};

const MIB: u64 = 1 << 20;

/// Mounts a tmpfs of `size` at `dir`; false when this process may not.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).expect("mount point");
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[test]
fn a_full_replica_store_is_named_at_both_sites_and_replication_resumes() {
    if !have_tools(&["qemu-io", "mount"]) {
        return;
    }
    let (a, b) = group_pair();
    let small = b.scratch().join("small-store");
    if !mount_tmpfs(&small, "12M") {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root and must be able to mount a tmpfs"
        );
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return;
    }
    let _unmount = Unmount(&small);
    // The store goes where the authorization says: on the small tmpfs.
    b.ok(&["authz", "remove", "site-a"]);
    let loc = small.display().to_string();
    b.json(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        &loc,
    ]);

    let url = a.create_volume("d0", "64M");
    qemu_io(&url, &["write -P 0x11 0 4M"]);
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--compress", "none"],
    );
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "replicating", GROUP_LIMIT, |s| {
        s["state"] == "replicating" && s["last_pit"].is_object()
    });
    let kept = pit_ids(&b, "g");

    // 16 MiB more than the tmpfs holds.
    qemu_io(&url, &["write -P 0x22 8M 16M"]);
    let err = a.fails(&["sync", "g"]);
    for word in ["no space left", "site-b", &loc, "free", "needs"] {
        assert!(
            err.contains(word),
            "the primary's error should say {word:?}: {err}"
        );
    }
    let st = group_status(&a, "g");
    let last = st["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("no space left"), "{st}");
    assert!(
        u(&st, "pending_bytes") >= 16 * MIB,
        "the blocks stay pending: {st}"
    );
    // The replica says so too, critical.
    let rs = group_status(&b, "g");
    assert_eq!(rs["health"], "critical", "{rs}");
    let why = rs["health_reason"].as_str().unwrap_or_default();
    assert!(why.contains("no space left") && why.contains(&loc), "{rs}");
    // The primary serves on, and the PITs kept are intact.
    qemu_io(&url, &["write -P 0x33 60M 64k"]);
    assert_eq!(pit_ids(&b, "g"), kept);
    let e = b.json(&[
        "pit",
        "export",
        "g",
        &kept.last().expect("a PIT").0.to_string(),
    ]);
    let pit_url = e["volumes"][0]["url"].as_str().expect("url").to_string();
    qemu_io_ro(&pit_url, &["read -P 0x11 0 4M"]);

    // Space is freed: replication resumes by itself (the next scheduled or
    // asked cycle) and both sites are normal again.
    let ok = Command::new("mount")
        .args(["-o", "remount,size=96M"])
        .arg(&small)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "remount the tmpfs larger");
    let deadline = std::time::Instant::now() + GROUP_LIMIT;
    loop {
        let out = a.run(&["sync", "g", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sync never resumed: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(group_status(&b, "g")["health"], "normal");
    assert_eq!(group_status(&a, "g")["health"], "normal");
    verify_clean(&a, "g");
}
