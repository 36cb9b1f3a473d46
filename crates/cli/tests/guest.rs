//! A real VM's disks on offsite volumes: the test guest boots under QEMU
//! from two of a site's NBD exports, formats them and writes a marker on
//! each; a second boot finds the first's markers. Skipped (reason printed)
//! without qemu-system-x86, a cloud kernel and busybox-static.

mod common;

use common::*;
use offsite_testkit::guest::{boot_nbd, guest_kit};

#[test]
fn guest_boots_from_offsite_volumes_and_keeps_its_markers() {
    let s = site("guest-a");
    let Some(kit) = guest_kit(&s.scratch()) else {
        return;
    };
    let urls = [
        s.create_volume("web0", "64M"),
        s.create_volume("web1", "32M"),
    ];
    let console = s.scratch().join("console.log");
    let first = boot_nbd(&kit, &urls, "first", &console);
    assert_eq!(first.disk("vda"), ["001-first"]);
    assert_eq!(first.disk("vdb"), ["001-first"]);
    let second = boot_nbd(&kit, &urls, "second", &console);
    assert_eq!(second.disk("vda"), ["001-first", "002-second"]);
    assert_eq!(second.disk("vdb"), ["001-first", "002-second"]);
}
