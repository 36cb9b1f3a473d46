//! A real filesystem on a volume: nbdfuse exposes the export as a file,
//! losetup turns it into a block device, and ext4 is made, mounted,
//! written, checked with e2fsck and read back. Needs root and /dev/fuse.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use offsite_testkit::sh;

/// Undoes whatever was set up, in reverse order, even when the test panics.
#[derive(Debug, Default)]
struct Cleanup {
    mounted: Option<PathBuf>,
    loop_dev: Option<String>,
    fuse_mount: Option<PathBuf>,
    nbdfuse: Option<std::process::Child>,
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

impl Cleanup {
    fn umount_fs(&mut self) {
        if let Some(m) = self.mounted.take() {
            let m = m.to_str().unwrap();
            if !quiet("umount", &[m]) {
                quiet("umount", &["-l", m]);
            }
        }
    }

    fn detach_loop(&mut self) {
        if let Some(dev) = self.loop_dev.take() {
            quiet("losetup", &["-d", &dev]);
        }
    }

    fn unmount_fuse(&mut self) {
        if let Some(m) = self.fuse_mount.take() {
            let m = m.to_str().unwrap();
            if !quiet("fusermount3", &["-u", m]) {
                quiet("umount", &["-l", m]);
            }
        }
        if let Some(mut c) = self.nbdfuse.take() {
            // nbdfuse exits once unmounted; kill it if it does not.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.umount_fs();
        self.detach_loop();
        self.unmount_fuse();
    }
}

/// Whether this environment can run the test; under CI it must.
fn environment_ready() -> bool {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "ext4 test cannot run under CI: {why}");
        eprintln!("skipping: {why}");
        false
    };
    if !Path::new("/dev/fuse").exists() {
        return skip("/dev/fuse is absent");
    }
    if sh("id", &["-u"]).trim() != "0" {
        return skip("losetup and mount need root");
    }
    have_tools(&[
        "nbdfuse",
        "fusermount3",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "mount",
        "umount",
        "blockdev",
    ])
}

#[test]
fn ext4_on_a_volume_via_nbdfuse_and_loop() {
    if !environment_ready() {
        return;
    }
    let site = site("a");
    let url = site.create_volume("fs", "64M");
    let scratch = site.scratch();
    let fuse_dir = scratch.join("fuse");
    let mnt = scratch.join("mnt");
    std::fs::create_dir_all(&fuse_dir).unwrap();
    std::fs::create_dir_all(&mnt).unwrap();
    let pidfile = scratch.join("nbdfuse.pid");

    // Declared after `site`, so it is dropped (and cleans up) first.
    let mut cleanup = Cleanup::default();
    cleanup.nbdfuse = Some(
        Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(&fuse_dir)
            .arg(&url)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn nbdfuse"),
    );
    cleanup.fuse_mount = Some(fuse_dir.clone());
    // nbdfuse writes the pid file once the mount is ready.
    let image = fuse_dir.join("nbd");
    wait_until(
        "nbdfuse to mount the export",
        Duration::from_secs(30),
        || {
            if let Some(status) = cleanup.nbdfuse.as_mut().unwrap().try_wait().unwrap() {
                panic!("nbdfuse exited early: {status}");
            }
            pidfile.exists() && image.exists()
        },
    );
    assert_eq!(
        std::fs::metadata(&image).unwrap().len(),
        64 << 20,
        "the FUSE file has the volume's size"
    );

    let dev = sh("losetup", &["-f", "--show", image.to_str().unwrap()])
        .trim()
        .to_string();
    assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
    cleanup.loop_dev = Some(dev.clone());

    sh("mkfs.ext4", &["-q", &dev]);
    sh("mount", &[&dev, mnt.to_str().unwrap()]);
    cleanup.mounted = Some(mnt.clone());

    let big = pseudo_random(5 << 20, 99);
    std::fs::write(mnt.join("hello.txt"), "hello from offsite\n").unwrap();
    std::fs::create_dir(mnt.join("dir")).unwrap();
    for i in 0..20 {
        std::fs::write(
            mnt.join("dir").join(format!("f{i}")),
            format!("file {i}\n").repeat(100 * i + 1),
        )
        .unwrap();
    }
    std::fs::write(mnt.join("big.bin"), &big).unwrap();
    sh("sync", &[]);
    cleanup.umount_fs();

    let out = Command::new("e2fsck")
        .args(["-fn", &dev])
        .output()
        .expect("run e2fsck");
    assert_eq!(
        out.status.code(),
        Some(0),
        "e2fsck found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Mount again and read everything back through loop → FUSE → NBD.
    // Drop the loop device's page cache first so reads reach the daemon.
    sh("blockdev", &["--flushbufs", &dev]);
    sh("mount", &["-o", "ro", &dev, mnt.to_str().unwrap()]);
    cleanup.mounted = Some(mnt.clone());
    assert_eq!(
        std::fs::read_to_string(mnt.join("hello.txt")).unwrap(),
        "hello from offsite\n"
    );
    for i in 0..20 {
        let got = std::fs::read_to_string(mnt.join("dir").join(format!("f{i}"))).unwrap();
        assert_eq!(
            got,
            format!("file {i}\n").repeat(100 * i + 1),
            "dir/f{i} differs"
        );
    }
    assert!(
        std::fs::read(mnt.join("big.bin")).unwrap() == big,
        "big.bin differs after remount"
    );
    cleanup.umount_fs();
    cleanup.detach_loop();
    cleanup.unmount_fuse();

    let dirty = site.dirty_bytes("fs");
    assert!(
        dirty >= 5 << 20,
        "the filesystem's writes should be tracked: dirty_bytes {dirty}"
    );
    assert_eq!(site.json(&["volume", "show", "fs"])["state"], "ready");
}
