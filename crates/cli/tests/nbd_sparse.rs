//! Sparse exports over NBD against a real daemon: block status
//! (`base:allocation`) from the volume's holes, so `nbdinfo --map` and
//! `qemu-img convert` see and skip them; structured replies, fast zero and
//! cache as libnbd negotiates them. Issue 22.

mod common;

use std::collections::BTreeMap;

use common::*;
use offsite_testkit::{qemu_io, sh};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Every extent `nbdinfo --map` printed: `(offset, length, type)`.
type Extents = Vec<(u64, u64, u32)>;

/// `nbdinfo --map URL`: the data extents (type 0) as `offset -> length`,
/// adjacent ones merged, and every extent.
fn data_map(url: &str) -> (BTreeMap<u64, u64>, Extents) {
    let out = sh("nbdinfo", &["--map", url]);
    let mut all = Vec::new();
    let mut data: BTreeMap<u64, u64> = BTreeMap::new();
    let mut last: Option<(u64, u64)> = None;
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        let (off, len, kind): (u64, u64, u32) = (
            w[0].parse()
                .unwrap_or_else(|_| panic!("nbdinfo --map line {line:?}")),
            w[1].parse().unwrap(),
            w[2].parse().unwrap(),
        );
        all.push((off, len, kind));
        if kind != 0 {
            continue;
        }
        match last {
            Some((o, l)) if o + l == off => {
                *data.get_mut(&o).unwrap() += len;
                last = Some((o, l + len));
            }
            _ => {
                data.insert(off, len);
                last = Some((off, len));
            }
        }
    }
    (data, all)
}

/// Writes `(offset, length, pattern)` ranges with qemu-io.
fn write_ranges(url: &str, ranges: &[(u64, u64, u8)]) {
    let cmds: Vec<String> = ranges
        .iter()
        .map(|(o, l, p)| format!("write -P {p} {o} {l}"))
        .collect();
    qemu_io(url, &cmds.iter().map(String::as_str).collect::<Vec<_>>());
}

fn expected_map(ranges: &[(u64, u64, u8)]) -> BTreeMap<u64, u64> {
    ranges.iter().map(|&(o, l, _)| (o, l)).collect()
}

/// Whether `map` covers every range and holds at most `slack` bytes more.
fn covers(map: &BTreeMap<u64, u64>, ranges: &[(u64, u64, u8)], slack: u64) -> bool {
    let inside = |o: u64, l: u64| map.iter().any(|(&mo, &ml)| mo <= o && o + l <= mo + ml);
    let total: u64 = map.values().sum();
    let written: u64 = ranges.iter().map(|r| r.1).sum();
    ranges.iter().all(|&(o, l, _)| inside(o, l)) && total <= written + slack
}

#[test]
fn nbdinfo_map_reports_the_holes_of_a_volume_and_of_its_pit() {
    if !have_tools(&["qemu-io", "nbdinfo"]) {
        return;
    }
    let (a, b) = group_pair();
    let url = a.create_volume("v", "64M");
    let ranges = [
        (MIB, 64 * KIB, 0x11),
        (10 * MIB, MIB, 0x22),
        (40 * MIB, 4 * KIB, 0x33),
        (64 * MIB - 64 * KIB, 64 * KIB, 0x44),
    ];
    write_ranges(&url, &ranges);
    let (map, all) = data_map(&url);
    assert_eq!(map, expected_map(&ranges), "nbdinfo --map: {all:?}");
    // Everything else is a hole that reads as zero (type 3).
    assert!(all.iter().all(|&(_, _, k)| k == 0 || k == 3), "{all:?}");
    let m = metrics(&a);
    assert!(
        metric(&m, "offsite_nbd_block_status_total").unwrap_or(0) >= 1,
        "{m}"
    );

    // The same volume replicated: its PIT at the replica, exported.
    create_group(&a, "g", b.name(), &["--volume", "v"], &[]);
    a.json(&["group", "start", "g"]);
    let pit = pit_ids(&b, "g").last().expect("a PIT at the replica").0;
    let e = b.json(&["pit", "export", "g", &pit.to_string()]);
    let pit_url = e["volumes"][0]["url"]
        .as_str()
        .expect("PIT URL")
        .to_string();
    let (pit_map, pit_all) = data_map(&pit_url);
    // The replica's base is as thin as the volume, block for block.
    assert!(
        covers(&pit_map, &ranges, 0),
        "PIT map {pit_all:?} vs written {ranges:?}"
    );
    // And its data reads back.
    let reads: Vec<String> = ranges
        .iter()
        .map(|(o, l, p)| format!("read -P {p} {o} {l}"))
        .chain(["read -P 0 2M 8M".to_string()])
        .collect();
    offsite_testkit::qemu_io_ro(
        &pit_url,
        &reads.iter().map(String::as_str).collect::<Vec<_>>(),
    );

    // A test failover's clone (a layered volume over the PIT) maps the
    // same holes, and a write to it shows up as data.
    let t = b.json(&["failover", "run", "g", "--test"]);
    let clone = served_url(&t, "v");
    let (clone_map, clone_all) = data_map(&clone);
    assert!(
        covers(&clone_map, &ranges, 0),
        "clone map {clone_all:?} vs written {ranges:?}"
    );
    let more = [(20 * MIB, 64 * KIB, 0x55)];
    write_ranges(&clone, &more);
    let (clone_map, clone_all) = data_map(&clone);
    let all_written: Vec<_> = ranges.iter().chain(&more).copied().collect();
    assert!(
        covers(&clone_map, &all_written, 0),
        "clone map after a write {clone_all:?} vs written {all_written:?}"
    );
    b.json(&["failover", "stop-test", "g"]);
}

#[test]
fn qemu_img_convert_of_a_sparse_10g_volume_reads_about_its_data_only() {
    if !have_tools(&["qemu-io", "qemu-img"]) {
        return;
    }
    let site = site("a");
    let url = site.create_volume("big", "10G");
    // 100 MiB in ten 10 MiB runs spread over the 10 GiB.
    let ranges: Vec<(u64, u64, u8)> = (0..10u64)
        .map(|i| (i * GIB + 123 * MIB, 10 * MIB, 0x30 + i as u8))
        .collect();
    write_ranges(&url, &ranges);
    let written: u64 = ranges.iter().map(|r| r.1).sum();

    let before = metrics(&site);
    let read_before = metric(&before, "offsite_nbd_read_bytes_total").unwrap_or(0);
    let out = scratch_file(&site, "copy.raw");
    let out_s = out.to_str().unwrap();
    sh(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &url, out_s],
    );
    let after = metrics(&site);
    let served = metric(&after, "offsite_nbd_read_bytes_total").unwrap_or(0) - read_before;
    eprintln!("qemu-img convert of a 10 GiB volume holding {written} bytes: {served} bytes served");
    assert!(
        served >= written && served <= written + 4 * MIB,
        "served {served} bytes for {written} bytes of data"
    );
    assert!(
        metric(&after, "offsite_nbd_block_status_total").unwrap_or(0) >= 1,
        "{after}"
    );
    // The copy is the volume: equal checksums of every written run (and
    // of a run between them), and qemu-img compare finds them identical.
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 10 * GIB);
    let sums = |target: &str| -> Vec<String> {
        let mut spans: Vec<(u64, u64)> = ranges.iter().map(|&(o, l, _)| (o, l)).collect();
        spans.push((5 * GIB, 4 * MIB));
        let spans: Vec<String> = spans.iter().map(|(o, l)| format!("{o}:{l}")).collect();
        let mut args = vec![target];
        args.extend(spans.iter().map(String::as_str));
        python(CHECKSUMS, &args)
            .lines()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(sums(&url), sums(out_s), "checksums of the runs differ");
    let (code, msg) = qemu_img_compare(out_s, &url);
    assert_eq!(code, 0, "copy differs: {msg}");
}

/// `python3 CHECKSUMS TARGET OFF:LEN...`: the SHA-256 of each span of
/// TARGET (an NBD URI read with libnbd, or a file), one per line.
const CHECKSUMS: &str = r#"
import hashlib, sys
target, spans = sys.argv[1], [tuple(map(int, s.split(":"))) for s in sys.argv[2:]]
if target.startswith("nbd://"):
    import nbd
    h = nbd.NBD()
    h.connect_uri(target)
    read = lambda o, l: h.pread(l, o)
else:
    f = open(target, "rb")
    def read(o, l):
        f.seek(o)
        return f.read(l)
for o, l in spans:
    d = hashlib.sha256()
    at = o
    while at < o + l:
        n = min(4 << 20, o + l - at)
        d.update(read(at, n))
        at += n
    print(d.hexdigest())
"#;

#[test]
fn libnbd_gets_structured_reads_with_holes_fast_zero_and_cache() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let site = site("a");
    let url = site.create_volume("v", "16M");
    write_ranges(&url, &[(MIB, 64 * KIB, 0xab), (4 * MIB, 4 * MIB, 0xcd)]);
    const SCRIPT: &str = r#"
import json, sys, nbd
h = nbd.NBD()
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(sys.argv[1])
out = {
    "structured": h.get_structured_replies_negotiated(),
    "allocation": h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION),
    "fast_zero": h.can_fast_zero(),
    "cache": h.can_cache(),
}
def read_chunks(length, offset):
    chunks = []
    def chunk(buf, off, status, err):
        kind = {nbd.READ_DATA: "data", nbd.READ_HOLE: "hole"}.get(status, str(status))
        chunks.append([kind, off, len(buf), sorted(set(bytes(buf)))])
        return 0
    h.pread_structured(length, offset, chunk)
    return sorted(chunks, key=lambda c: c[1])
def extents(length, offset):
    got = []
    def cb(ctx, off, entries, err):
        got.extend([entries[i], entries[i + 1]] for i in range(0, len(entries), 2))
        return 0
    h.block_status(length, offset, cb)
    return got
out["read"] = read_chunks(2 << 20, 0)
h.cache(8 << 20, 0)
# 4 MiB of data zeroed fast: punched, so it reads (and maps) as a hole.
h.zero(2 << 20, 4 << 20, nbd.CMD_FLAG_FAST_ZERO)
out["after_zero"] = read_chunks(4 << 20, 4 << 20)
out["extents"] = extents(16 << 20, 0)
print(json.dumps(out))
"#;
    let r = python_json(SCRIPT, &[&url]);
    for flag in ["structured", "allocation", "fast_zero", "cache"] {
        assert_eq!(r[flag], true, "{flag}: {r}");
    }
    let m = (MIB) as i64;
    let k = 1024i64;
    // 0..1M hole, 1M..1M+64K data (0xab), the rest a hole.
    assert_eq!(
        r["read"],
        serde_json::json!([
            ["hole", 0, m, [0]],
            ["data", m, 64 * k, [0xab]],
            ["hole", m + 64 * k, m - 64 * k, [0]],
        ]),
        "{r}"
    );
    // After the fast zero: 4M..6M hole, 6M..8M still 0xcd.
    assert_eq!(
        r["after_zero"],
        serde_json::json!([["hole", 4 * m, 2 * m, [0]], ["data", 6 * m, 2 * m, [0xcd]]]),
        "{r}"
    );
    assert_eq!(
        r["extents"],
        serde_json::json!([
            [m, 3],
            [64 * k, 0],
            [5 * m - 64 * k, 3],
            [2 * m, 0],
            [8 * m, 3],
        ]),
        "{r}"
    );
    let after = metrics(&site);
    assert_eq!(
        metric(&after, "offsite_nbd_errors_total"),
        Some(0),
        "{after}"
    );
    assert_eq!(
        metric(&after, "offsite_nbd_cache_total"),
        Some(1),
        "{after}"
    );
}
