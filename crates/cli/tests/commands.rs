//! Commands that must not leave a site broken (issue 17): a refused
//! `volume create` leaves nothing behind and names the limit, imports of
//! what is not a file or disk are refused before anything reads them, VMs
//! in a group or plan cannot be deleted, settings can be changed in place,
//! and PIT names that would be ambiguous are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, sh};

/// The files in a directory, except ext4's `lost+found`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    names.sort();
    names
}

/// A loop-mounted ext4 (4 KiB blocks) on a directory, unmounted on drop.
#[derive(Debug)]
struct Ext4Mount(Option<PathBuf>);

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
    }
}

/// Makes sure `dir` lives on ext4 with 4 KiB blocks (whose largest file is
/// 16 TiB - 4 KiB): as it is when the temporary directory is on such an
/// ext4, or by mounting a small ext4 image on it (needs root). `None` when
/// neither is possible here (a failure under CI).
fn on_ext4(dir: &Path, scratch: &Path) -> Option<Ext4Mount> {
    let fs = sh("stat", &["-f", "-c", "%T %S", dir.to_str().unwrap()]);
    if fs.trim() == "ext2/ext3 4096" {
        return Some(Ext4Mount(None));
    }
    let ci = std::env::var_os("CI").is_some();
    if sh("id", &["-u"]).trim() != "0" || !have_tools(&["mkfs.ext4", "mount", "umount"]) {
        assert!(!ci, "needs ext4: run as root with mkfs.ext4 and mount");
        eprintln!(
            "skipping: {} is on {fs} and ext4 cannot be mounted here",
            dir.display()
        );
        return None;
    }
    let image = scratch.join("ext4.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    sh(
        "mkfs.ext4",
        &["-q", "-F", "-b", "4096", image.to_str().unwrap()],
    );
    sh(
        "mount",
        &["-o", "loop", image.to_str().unwrap(), dir.to_str().unwrap()],
    );
    Some(Ext4Mount(Some(dir.to_path_buf())))
}

#[test]
fn a_volume_too_large_for_the_file_system_is_refused_and_leaves_nothing() {
    let mut site = TestSite::init(bin(), "a");
    let volumes = site.dir().join("volumes");
    std::fs::create_dir_all(&volumes).unwrap();
    let Some(_mount) = on_ext4(&volumes, &site.scratch()) else {
        return;
    };
    site.start();
    let before = entries(&volumes);

    for _ in 0..2 {
        let err = site.fails(&[
            "volume",
            "create",
            "big",
            "--size",
            "17T",
            "--block-size",
            "64K",
        ]);
        assert!(
            err.contains(&format!(
                "the file system holding {} refuses files of 17 TiB",
                volumes.display()
            )),
            "the error names the directory and the size: {err}"
        );
        // ext4 with 4 KiB blocks: at most 2^32 - 1 blocks per file.
        assert!(
            err.contains("its limit is 17592186040320 bytes (~16.0 TiB)"),
            "the error names the real limit: {err}"
        );
        assert!(err.contains("smaller volume"), "says what to do: {err}");
        assert_eq!(
            entries(&volumes),
            before,
            "a refused create leaves no file behind"
        );
        assert_eq!(
            site.json(&["volume", "list"]),
            serde_json::json!([]),
            "nor a catalog row"
        );
    }

    // The next create works (it used to find the leftover file in its way).
    let v = site.json(&["volume", "create", "small", "--size", "1M"]);
    assert_eq!(v["state"], "ready");
    assert_eq!(v["size_bytes"], 1 << 20);
    assert!(
        entries(&volumes).iter().any(|n| n.ends_with(".img")),
        "the new volume has its data file: {:?}",
        entries(&volumes)
    );
    site.stop();
}

#[test]
fn import_of_a_fifo_or_a_directory_is_refused_before_reading() {
    let site = site("a");
    let scratch = site.scratch();
    let fifo = scratch.join("pipe");
    sh("mkfifo", &[fifo.to_str().unwrap()]);
    let dir = scratch.join("a-directory");
    std::fs::create_dir(&dir).unwrap();

    // A FIFO with no writer: opening it for reading would block forever.
    let out = output_within(
        Command::new(bin())
            .args(["volume", "create", "p", "--import"])
            .arg(&fifo)
            .arg("--dir")
            .arg(site.dir()),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(
        err.contains(&format!(
            "import source {} is a FIFO (named pipe); give a regular file (a raw image) or a block device",
            fifo.display()
        )),
        "{err}"
    );

    let err = site.fails(&["volume", "create", "d", "--import", dir.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "import source {} is a directory; give a regular file",
            dir.display()
        )),
        "{err}"
    );
    assert!(!err.contains("9223372036854775807"), "{err}");
    assert_eq!(site.json(&["volume", "list"]), serde_json::json!([]));

    // A regular file still imports.
    let image = scratch.join("disk.raw");
    write_image(&image, 1 << 20, &[(4096, 4096, 7)]);
    let v = site.json(&["volume", "create", "r", "--import", image.to_str().unwrap()]);
    assert_eq!(v["state"], "ready");
    assert_eq!(v["size_bytes"], 1 << 20);
}

/// `group start NAME --json`, which must reach its first PIT.
fn start_group(a: &TestSite, group: &str) -> serde_json::Value {
    let out = a.run(&["group", "start", group, "--json"]);
    assert!(
        out.status.success(),
        "group start {group}: {}\nprimary log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 40)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("group start --json");
    assert_eq!(st["state"], "replicating", "{st}");
    st
}

#[test]
fn pit_names_that_read_as_ids_or_repeat_are_refused() {
    let (a, b) = group_pair();
    a.create_volume("disk0", "4M");
    create_group(&a, "g", "site-b", &["--volume", "disk0"], &[]);
    start_group(&a, "g");

    // From either site (the replica forwards to the primary).
    for site in [&a, &b] {
        let err = site.fails(&["sync", "g", "--pit-name", "12"]);
        assert!(
            err.contains("PIT name \"12\" reads as a PIT id") && err.contains("pit-12"),
            "{}: {err}",
            site.name()
        );
    }
    let first = sync_pit(&a, "g", &["--pit-name", "nightly"]);
    for site in [&a, &b] {
        let err = site.fails(&["sync", "g", "--pit-name", "nightly"]);
        assert!(
            err.contains(&format!(
                "group g already has a PIT named \"nightly\" (PIT {})",
                u(&first, "id")
            )) && err.contains("offsite pit release g nightly"),
            "{}: {err}",
            site.name()
        );
    }
    let named: Vec<_> = pit_ids(&b, "g")
        .into_iter()
        .filter(|(_, n)| n.as_deref() == Some("nightly"))
        .collect();
    assert_eq!(named.len(), 1, "one PIT named nightly: {named:?}");

    // Once released (here from the primary), the name may be given again
    // at once.
    a.ok(&["pit", "release", "g", "nightly"]);
    let second = sync_pit(&a, "g", &["--pit-name", "nightly"]);
    assert!(u(&second, "id") > u(&first, "id"));
    let named: Vec<_> = pit_ids(&b, "g")
        .into_iter()
        .filter(|(_, n)| n.as_deref() == Some("nightly"))
        .collect();
    assert_eq!(named, vec![(u(&second, "id"), Some("nightly".into()))]);
}
