//! Real NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy) against volumes
//! served by a real daemon.

mod common;

use std::process::{Command, Stdio};

use common::*;
use offsite_testkit::{qemu_io, sh};

/// `(offset, length, pattern)` writes used by the pattern tests; unaligned
/// ones included (the export's minimum block size is 1).
const WRITES: &[(u64, u64, u8)] = &[
    (0, 4096, 0x11),
    ((1 << 20) + 512, 3072, 0x22),
    (10 << 20, 1 << 20, 0x33),
    ((20 << 20) - 100, 200, 0x44), // straddles a 4 MiB extent boundary
    ((64 << 20) - 65536, 65536, 0x55), // the last 64 KiB
];

fn write_cmds() -> Vec<String> {
    WRITES
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect()
}

fn verify_cmds() -> Vec<String> {
    let mut v: Vec<String> = WRITES
        .iter()
        .map(|(o, l, p)| format!("read -P {p} {o} {l}"))
        .collect();
    // Untouched ranges read as zeroes.
    v.push("read -P 0 4096 1044480".into()); // 4K .. 1M
    v.push(format!("read -P 0 {} {}", 11 << 20, 4 << 20));
    v
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn qemu_io_patterns_read_back_also_after_restart() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let mut site = site("a");
    let url = site.create_volume("v", "64M");
    let mut cmds = write_cmds();
    cmds.extend(verify_cmds());
    qemu_io(&url, &refs(&cmds));
    // A second connection sees the same data.
    qemu_io(&url, &refs(&verify_cmds()));
    let expected: std::collections::BTreeSet<u64> = WRITES
        .iter()
        .flat_map(|&(o, l, _)| blocks_of(o, l, 4096))
        .collect();
    let dirty = site.dirty_bytes("v");
    assert_eq!(
        dirty,
        expected.len() as u64 * 4096,
        "dirty_bytes should count exactly the written 4K blocks"
    );

    assert_eq!(site.stop(), Some(0), "clean stop:\n{}", site.log());
    site.start();
    let url = site.url("v"); // the NBD port is chosen anew at each start
    qemu_io(&url, &refs(&verify_cmds()));
    assert_eq!(
        site.dirty_bytes("v"),
        dirty,
        "dirty_bytes changed across a clean restart"
    );
}

#[test]
fn qemu_img_convert_then_compare_identical() {
    if !have_tools(&["qemu-img", "qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "16M");
    let img = scratch_file(&site, "image.raw");
    let data = pseudo_random(3 << 20, 7);
    write_image(
        &img,
        16 << 20,
        &[(1 << 20, 8192, 0xee), (12 << 20, 4096, 0x01)],
    );
    {
        use std::os::unix::fs::FileExt;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&img)
            .unwrap()
            .write_all_at(&data, 4 << 20)
            .unwrap();
    }
    let img_s = img.to_str().unwrap();
    sh(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", img_s, &url],
    );
    let (code, out) = qemu_img_compare(img_s, &url);
    assert_eq!(
        code, 0,
        "volume differs from the image after qemu-img convert: {out}"
    );
    assert!(out.contains("identical"), "{out}");

    // Control: compare does notice a one-byte change made over NBD.
    qemu_io(&url, &["write -P 0x99 15000000 1"]);
    let (code, out) = qemu_img_compare(img_s, &url);
    assert_eq!(code, 1, "compare should report a difference: {out}");
    assert!(out.contains("mismatch"), "{out}");
}

#[test]
fn nbdinfo_reports_export_name_and_size() {
    if !have_tools(&["nbdinfo"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "24M");
    site.create_volume("w", "4M");
    let info: serde_json::Value =
        serde_json::from_str(&sh("nbdinfo", &["--json", &url])).expect("nbdinfo JSON");
    let exports = info["exports"].as_array().expect("exports");
    assert_eq!(exports.len(), 1, "{info}");
    let e = &exports[0];
    assert_eq!(e["export-name"], "v", "{info}");
    assert_eq!(e["export-size"], 24 << 20, "{info}");
    assert_eq!(e["is_read_only"], false, "{info}");
    assert_eq!(e["can_flush"], true, "{info}");

    let base = url.trim_end_matches("/v");
    let list: serde_json::Value = serde_json::from_str(&sh("nbdinfo", &["--list", "--json", base]))
        .expect("nbdinfo --list JSON");
    let mut names: Vec<&str> = list["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["v", "w"], "export list: {list}");
}

#[test]
fn nbdcopy_round_trip() {
    if !have_tools(&["nbdcopy"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "8M");
    let img = scratch_file(&site, "in.raw");
    let data = pseudo_random(8 << 20, 42);
    std::fs::write(&img, &data).unwrap();
    sh("nbdcopy", &[img.to_str().unwrap(), &url]);
    let out = scratch_file(&site, "out.raw");
    sh("nbdcopy", &[&url, out.to_str().unwrap()]);
    let back = std::fs::read(&out).unwrap();
    assert_eq!(back.len(), data.len(), "copied-out size");
    let first_diff = back.iter().zip(&data).position(|(a, b)| a != b);
    assert_eq!(first_diff, None, "data differs after nbdcopy in and out");
    assert_eq!(site.dirty_bytes("v"), 8 << 20, "every block was written");
}

#[test]
fn concurrent_qemu_io_clients_write_disjoint_ranges() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "32M");
    // Four clients, each 64 writes of 64 KiB into its own 4 MiB range,
    // interleaved so that they run concurrently on the server.
    let clients: Vec<(u64, u8)> = (0..4u64).map(|i| (i * (8 << 20), 0xa0 + i as u8)).collect();
    let mut children = Vec::new();
    for &(base, pat) in &clients {
        let mut cmd = Command::new("qemu-io");
        cmd.args(["-f", "raw"]);
        for k in 0..64u64 {
            cmd.arg("-c")
                .arg(format!("write -P {pat} {} 64k", base + k * 65536));
        }
        cmd.arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push(KillOnDrop(Some(cmd.spawn().expect("spawn qemu-io"))));
    }
    for mut c in children {
        let out = c.take().wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("failed"),
            "concurrent qemu-io failed: {text}"
        );
    }
    for &(base, pat) in &clients {
        qemu_io(
            &url,
            &[
                &format!("read -P {pat} {base} 4M"),
                &format!("read -P 0 {} 4M", base + (4 << 20)),
            ],
        );
    }
    assert_eq!(site.dirty_bytes("v"), 16 << 20, "4 × 4 MiB written");
}

#[test]
fn write_zeroes_and_discard_read_back_zero_and_count_dirty() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "8M");
    qemu_io(&url, &["write -P 0xff 0 4M"]);
    site.ok(&["volume", "clear-dirty", "v"]);
    let before = metrics(&site);
    qemu_io(
        &url,
        &["write -z 0 1M", "discard 2M 64k", "write -z 3000000 5000"],
    );
    qemu_io(
        &url,
        &[
            "read -P 0 0 1M",
            "read -P 0xff 1M 1M",
            "read -P 0 2M 64k",
            "read -P 0xff 2162688 837312", // 2M+64k .. 3000000
            "read -P 0 3000000 5000",
            "read -P 0xff 3005000 1189304", // .. 4M
        ],
    );
    let zeroed: std::collections::BTreeSet<u64> =
        [(0u64, 1u64 << 20), (2 << 20, 65536), (3_000_000, 5000)]
            .iter()
            .flat_map(|&(o, l)| blocks_of(o, l, 4096))
            .collect();
    assert_eq!(
        site.dirty_bytes("v"),
        zeroed.len() as u64 * 4096,
        "write-zeroes and discard must count their blocks dirty"
    );
    // The requests really went out as WRITE_ZEROES and TRIM, not as writes.
    let after = metrics(&site);
    let delta = |name: &str| metric(&after, name).unwrap_or(0) - metric(&before, name).unwrap_or(0);
    assert!(
        delta("offsite_nbd_write_zeroes_total") >= 2,
        "no NBD_CMD_WRITE_ZEROES seen:\n{after}"
    );
    assert!(
        delta("offsite_nbd_trims_total") >= 1,
        "no NBD_CMD_TRIM seen:\n{after}"
    );
}

#[test]
fn fua_write_and_flush_succeed() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "8M");
    let before = metrics(&site);
    qemu_io(
        &url,
        &[
            "write -f -P 0x21 0 4k",
            "write -P 0x22 4k 4k",
            "flush",
            "read -P 0x21 0 4k",
            "read -P 0x22 4k 4k",
        ],
    );
    let after = metrics(&site);
    let flushes = metric(&after, "offsite_nbd_flushes_total").unwrap_or(0)
        - metric(&before, "offsite_nbd_flushes_total").unwrap_or(0);
    assert!(flushes >= 1, "the flush did not reach the server:\n{after}");
    assert_eq!(
        metric(&after, "offsite_nbd_errors_total"),
        Some(0),
        "NBD errors:\n{after}"
    );
    assert_eq!(site.dirty_bytes("v"), 8192);
}
