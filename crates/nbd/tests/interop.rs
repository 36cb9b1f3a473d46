//! Interoperability with real NBD clients: libnbd's `nbdinfo` and QEMU's
//! `qemu-io`. Each test skips (with a printed reason) when its tool is not
//! installed, except under CI (`CI` set), where a missing tool is a failure:
//! CI must prove interop, not silently skip it.

mod common;

use std::process::Command;

use common::{VOL_SIZE, assert_success, require, run, start_server};
use offsite_nbd::ServerConfig;

#[test]
fn nbdinfo_describes_the_export() {
    let Some(()) = require("nbdinfo") else {
        return;
    };
    let f = start_server(ServerConfig::default());
    let uri = format!("nbd://{}/vol", f.server.local_addr());
    let output = run(Command::new("nbdinfo").arg("--json").arg(&uri));
    assert_success("nbdinfo", &output);
    let json = String::from_utf8_lossy(&output.stdout);
    // Plain substring checks keep serde out of this crate's dev-deps.
    let compact: String = json.split_whitespace().collect();
    for expected in [
        format!("\"export-size\":{VOL_SIZE}"),
        "\"export-name\":\"vol\"".to_owned(),
        "\"description\":\"testvolume\"".to_owned(),
        "\"can_multi_conn\":true".to_owned(),
        "\"can_flush\":true".to_owned(),
        "\"can_fua\":true".to_owned(),
        "\"can_trim\":true".to_owned(),
        "\"can_zero\":true".to_owned(),
        "\"is_read_only\":false".to_owned(),
        "\"block_size_maximum\":33554432".to_owned(),
    ] {
        assert!(compact.contains(&expected), "missing {expected} in {json}");
    }

    let output = run(Command::new("nbdinfo")
        .arg("--list")
        .arg("--json")
        .arg(format!("nbd://{}", f.server.local_addr())));
    assert_success("nbdinfo --list", &output);
    let json = String::from_utf8_lossy(&output.stdout);
    assert!(
        json.contains("\"vol\"") && json.contains("\"ro\""),
        "{json}"
    );
}

#[test]
fn qemu_io_writes_and_reads_back() {
    let Some(()) = require("qemu-io") else {
        return;
    };
    let f = start_server(ServerConfig::default());
    let uri = format!("nbd://{}/vol", f.server.local_addr());
    let output = run(Command::new("qemu-io")
        .args(["-f", "raw"])
        .args(["-c", "write -P 0xab 0 64k"])
        .args(["-c", "read -P 0xab 0 64k"])
        .args(["-c", "write -z 64k 64k"])
        .args(["-c", "read -P 0 64k 64k"])
        .args(["-c", "discard 128k 4k"])
        .args(["-c", "flush"])
        .arg(&uri));
    assert_success("qemu-io", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // qemu-io reports pattern mismatches on stdout but still exits 0.
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
    assert!(
        f.vol.data.lock().unwrap()[..64 << 10]
            .iter()
            .all(|&b| b == 0xab)
    );
    let stats = f.server.stats().snapshot();
    assert!(stats.writes >= 1 && stats.reads >= 2, "{stats:?}");
    assert_eq!(stats.errors, 0, "{stats:?}");
}

#[test]
fn qemu_io_sees_read_only_export() {
    let Some(()) = require("qemu-io") else {
        return;
    };
    let f = start_server(ServerConfig::default());
    let uri = format!("nbd://{}/ro", f.server.local_addr());
    let output = run(Command::new("qemu-io")
        .args(["-f", "raw", "-r"])
        .args(["-c", "read -P 0 0 64k"])
        .arg(&uri));
    assert_success("qemu-io -r", &output);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("Pattern verification failed"), "{stdout}");
}

#[test]
fn nbdinfo_map_reports_holes_and_data() {
    let Some(()) = require("nbdinfo") else {
        return;
    };
    let f = start_server(ServerConfig::default());
    {
        let mut data = f.vol.data.lock().unwrap();
        data[64 << 10..128 << 10].fill(0x5a);
        data[(512 << 10) + 1] = 1;
    }
    let uri = format!("nbd://{}/vol", f.server.local_addr());
    let output = run(Command::new("nbdinfo").arg("--map").arg(&uri));
    assert_success("nbdinfo --map", &output);
    // "offset length type-number description" per extent.
    let map: Vec<(u64, u64, u32)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (
                w[0].parse().unwrap(),
                w[1].parse().unwrap(),
                w[2].parse().unwrap(),
            )
        })
        .collect();
    let k = 1024;
    assert_eq!(
        map,
        [
            (0, 64 * k, 3),
            (64 * k, 64 * k, 0),
            (128 * k, 384 * k, 3),
            (512 * k, 4 * k, 0),
            (516 * k, VOL_SIZE as u64 - 516 * k, 3),
        ],
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(f.server.stats().snapshot().block_status >= 1);
}
