//! offsite as a service (issue 17): private files, SIGHUP reload, log
//! filters and formats, systemd readiness notifications.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
