//! A real filesystem on a volume: nbdfuse exposes the export as a file,
//! losetup turns it into a block device, and ext4 is made, mounted,
//! written, checked with e2fsck and read back. Needs root and /dev/fuse.

mod common;

use std::process::Command;

use common::ext4::{Ext4, ext4_ready};
use common::*;
use offsite_testkit::sh;

#[test]
fn ext4_on_a_volume_via_nbdfuse_and_loop() {
    if !ext4_ready("the ext4 test", &["e2fsck", "blockdev"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("fs", "64M");
    // Declared after `site`, so it is dropped (and cleans up) first.
    let mut fs = Ext4::make(&url, &site.scratch());
    assert_eq!(
        std::fs::metadata(&fs.image).unwrap().len(),
        64 << 20,
        "the FUSE file has the volume's size"
    );
    let (mnt, dev) = (fs.mnt.clone(), fs.dev.clone());

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
    fs.umount();

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
    fs.mount(&["-o", "ro"]);
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
    fs.release();

    let dirty = site.dirty_bytes("fs");
    assert!(
        dirty >= 5 << 20,
        "the filesystem's writes should be tracked: dirty_bytes {dirty}"
    );
    assert_eq!(site.json(&["volume", "show", "fs"])["state"], "ready");
}
