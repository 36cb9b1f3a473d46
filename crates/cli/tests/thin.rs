//! Thin volumes stay thin (issue 17): a 1 GiB volume holding about 1 MiB
//! goes through failover → reverse → failback → reverse between two real
//! sites, and afterwards no copy of it at either site (volume data file,
//! promoted `*.top`, replica base, PIT segments) occupies more than the
//! data written plus 10 % plus a fixed metadata allowance. Before the fix
//! the promoted top files and the replica base built from them were fully
//! allocated (1 GiB each).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, qemu_io};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Metadata a copy may occupy beyond its data: the 4 KiB header block and
/// the index (48 B per changed block) of each PIT segment a store keeps
/// (`--keep 3`, a few hundred changed blocks: under 64 KiB in all), and
/// the file system's extent-tree blocks of files with a few dozen extents.
const METADATA_ALLOWANCE: u64 = 256 * KIB;

/// One file of a copy: its path and allocated bytes (`st_blocks * 512`).
#[derive(Debug)]
struct FileUse {
    path: PathBuf,
    allocated: u64,
}

/// Whether `path` holds volume data: a volume's data file or promoted top
/// (`volumes/*.img`, `volumes/*.top`), a replica base (`base/*.img`), or a
/// PIT segment (`*.seg`).
fn is_data_file(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    match ext {
        "seg" => true,
        "img" => parent == "volumes" || parent == "base",
        "top" => parent == "volumes",
        _ => false,
    }
}

/// Every data file under `root`, grouped into copies: a store directory
/// (base and segments) is one copy, each volume file another. A file
/// reached twice by hard links counts once.
fn copies_under(root: &Path, seen: &mut HashSet<(u64, u64)>) -> BTreeMap<String, Vec<FileUse>> {
    let mut out: BTreeMap<String, Vec<FileUse>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(md) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if md.is_dir() {
                stack.push(path);
                continue;
            }
            if !md.is_file() || !is_data_file(&path) || !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            let key = if let Some(store) = store_of(&path) {
                store.display().to_string()
            } else {
                path.display().to_string()
            };
            out.entry(key).or_default().push(FileUse {
                allocated: md.blocks() * 512,
                path,
            });
        }
    }
    out
}

/// The replica store directory holding `path` (a base image or segment).
fn store_of(path: &Path) -> Option<PathBuf> {
    path.ancestors()
        .find(|p| p.join("store.meta").exists())
        .map(Path::to_path_buf)
}

/// Allocated bytes of every copy at `site` (its data directory and the
/// replica storage in its scratch directory), printed.
fn site_copies(site: &TestSite) -> Vec<(String, u64)> {
    let mut seen = HashSet::new();
    let mut copies = copies_under(site.dir(), &mut seen);
    copies.append(&mut copies_under(&site.scratch(), &mut seen));
    copies
        .into_iter()
        .map(|(copy, files)| {
            let total = files.iter().map(|f| f.allocated).sum();
            for f in &files {
                eprintln!(
                    "  {}: {} KiB allocated in {}",
                    site.name(),
                    f.allocated / KIB,
                    f.path.display()
                );
            }
            (copy, total)
        })
        .collect()
}

fn wait_flat(site: &TestSite, volume: &str) {
    wait_until(
        &format!("{volume} flattened at {}", site.name()),
        Duration::from_secs(600),
        || {
            events_about(site, volume)
                .iter()
                .any(|(kind, _)| kind == "volume.flat")
        },
    );
}

#[test]
fn a_thin_volume_stays_thin_through_failover_reverse_failback_reverse() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (mut a, b) = group_pair();
    authorize_primary(&a, "site-b", None);
    // 1 GiB unless `OFFSITE_THIN_VOLUME` names another size (at least
    // 1G: the checks below read up to 1016 MiB), for measuring larger
    // volumes.
    let size = std::env::var("OFFSITE_THIN_VOLUME").unwrap_or_else(|_| "1G".into());
    a.create_volume("d0", &size);
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    // About 1 MiB at A, spread over the volume: 16 × 64 KiB, one every 64 MiB.
    let mut written = 0;
    let mut at_a = Vec::new();
    for k in 0..16u64 {
        let off = k * 64 * MIB + MIB;
        at_a.push(format!("write -P 0x{:02x} {off} 64k", 0x40 + k));
        written += 64 * KIB;
    }
    let cmds: Vec<&str> = at_a.iter().map(String::as_str).collect();
    qemu_io(&a.url("d0"), &cmds);
    a.json(&["group", "start", "g"]);
    sync_pit(&a, "g", &[]);

    // Planned failover A -> B; B writes 4 × 64 KiB and zeroes one of A's.
    a.json(&["failover", "prepare", "g"]);
    let r = b.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    let b0 = b.url("d0");
    let mut at_b = Vec::new();
    for k in 0..4u64 {
        let off = k * 256 * MIB + 3 * MIB;
        at_b.push(format!("write -P 0x{:02x} {off} 64k", 0x60 + k));
        written += 64 * KIB;
    }
    at_b.push(format!("write -z {} 64k", MIB));
    let cmds: Vec<&str> = at_b.iter().map(String::as_str).collect();
    qemu_io(&b0, &cmds);
    // The promoted volume is copied into its top in the background.
    wait_flat(&b, "d0");
    b.json(&["reverse", "g"]);

    // Failback: B prepares, A promotes its replica, A writes and trims.
    b.json(&["failover", "prepare", "g"]);
    let r = a.json(&["failover", "run", "g"]);
    assert_eq!(r["mode"], "planned", "{r}");
    let a0 = a.url("d0");
    qemu_io(
        &a0,
        &[
            "write -P 0x71 520M 64k",
            "write -P 0x72 900M 64k",
            // TRIM of one of A's first writes.
            "discard 65M 64k",
        ],
    );
    written += 128 * KIB;
    wait_flat(&a, "d0");
    a.json(&["reverse", "g"]);
    sync_pit(&a, "g", &[]);

    // The data is what was written, everywhere it should be.
    let mut reads = vec![
        "read -P 0 0 1M".to_string(),
        format!("read -P 0 {} 64k", MIB),
        format!("read -P 0 {} 64k", 65 * MIB),
        "read -P 0x71 520M 64k".to_string(),
        "read -P 0x72 900M 64k".to_string(),
        "read -P 0 1000M 16M".to_string(),
    ];
    for k in 2..16u64 {
        reads.push(format!(
            "read -P 0x{:02x} {} 64k",
            0x40 + k,
            k * 64 * MIB + MIB
        ));
    }
    for k in 0..4u64 {
        reads.push(format!(
            "read -P 0x{:02x} {} 64k",
            0x60 + k,
            k * 256 * MIB + 3 * MIB
        ));
    }
    let cmds: Vec<&str> = reads.iter().map(String::as_str).collect();
    qemu_io(&a0, &cmds);

    // A flat promoted volume becomes a plain file at the next start.
    a.stop();
    a.start();
    qemu_io(&a.url("d0"), &cmds);

    let bound = written + written / 10 + METADATA_ALLOWANCE;
    eprintln!(
        "data written {} KiB; bound per copy {} KiB (+10 % + {} KiB metadata)",
        written / KIB,
        bound / KIB,
        METADATA_ALLOWANCE / KIB
    );
    let mut over = Vec::new();
    for site in [&a, &b] {
        let copies = site_copies(site);
        let total: u64 = copies.iter().map(|c| c.1).sum();
        eprintln!(
            "{}: {} copies, {} KiB allocated in all",
            site.name(),
            copies.len(),
            total / KIB
        );
        // A serves the volume and keeps the store it was promoted from; B
        // holds the replica store.
        let want = if site.name() == "site-a" { 2 } else { 1 };
        assert!(
            copies.len() >= want,
            "{}: expected {want} copies: {copies:?}",
            site.name()
        );
        for (copy, allocated) in copies {
            eprintln!("{}: copy {copy}: {} KiB", site.name(), allocated / KIB);
            if allocated > bound {
                over.push(format!("{}: {copy}: {allocated} bytes", site.name()));
            }
        }
    }
    assert!(
        over.is_empty(),
        "copies allocated more than {bound} bytes (data written {written} + 10 % + {METADATA_ALLOWANCE}): {over:#?}"
    );
}

/// Allocated bytes of the file at `path`.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .blocks()
        * 512
}

/// A seed exported from a thin volume is as thin (holes not read, zero
/// blocks not written), and the seeded start that makes it the replica's
/// base (by a rename) leaves a block zeroed at the primary since as a hole
/// of the base.
#[test]
fn an_exported_seed_and_the_seeded_base_stay_thin() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    seeded_start_stays_thin(None);
}

/// The same with the seed on another file system (tmpfs), which the
/// replica copies into its base instead of renaming it.
#[test]
fn a_seed_copied_from_another_file_system_makes_a_thin_base() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let shm = Path::new("/dev/shm");
    let other_fs = |p: &Path| {
        std::fs::metadata(p).map(|m| m.dev()).ok()
            != std::fs::metadata(std::env::temp_dir())
                .map(|m| m.dev())
                .ok()
    };
    if !shm.is_dir() || !other_fs(shm) {
        eprintln!("skipping: /dev/shm is missing or on the temp dir's file system");
        return;
    }
    let dir = tempfile::tempdir_in(shm).expect("temp dir in /dev/shm");
    seeded_start_stays_thin(Some(dir.path()));
}

/// Exports a seed of a thin 256 MiB volume (into `seed_parent`, or the
/// site's scratch directory), starts the group from it and checks the
/// seed and the replica's base.
fn seeded_start_stays_thin(seed_parent: Option<&Path>) {
    let (a, b) = group_pair();
    let url = a.create_volume("d0", "256M");
    // 64 × 4 KiB, one every 4 MiB: 256 KiB of data in 256 MiB.
    let writes: Vec<String> = (0..64u64)
        .map(|k| format!("write -P 0x{:02x} {} 4k", 0x10 + k, k * 4 * MIB))
        .collect();
    let cmds: Vec<&str> = writes.iter().map(String::as_str).collect();
    qemu_io(&url, &cmds);
    let written = 64 * 4 * KIB;
    create_group(&a, "g", "site-b", &["--volume", "d0"], &["--rpo", "24h"]);
    let seed = seed_parent
        .map_or_else(|| a.scratch(), Path::to_path_buf)
        .join("seed");
    let seed_s = seed.display().to_string();
    let e = a.json(&["group", "export-seed", "g", "--to", &seed_s]);
    assert_eq!(u(&e, "bytes"), written, "{e}");
    let seed_alloc = allocated(&seed.join("d0.img"));
    eprintln!(
        "seed of {} KiB of data: {} KiB allocated",
        written / KIB,
        seed_alloc / KIB
    );
    let bound = written + written / 10 + METADATA_ALLOWANCE;
    assert!(
        seed_alloc <= bound,
        "the seed of {written} bytes of data takes {seed_alloc} bytes"
    );

    // After the export the primary zeroes one block (as data, the way a
    // guest zeroing a block does) and writes another.
    qemu_io(&url, &["write -P 0 0 4k", "write -P 0x77 100M 4k"]);
    a.json(&["group", "start", "g", "--seed", &seed_s]);
    wait_group(&a, "g", "replicating", GROUP_LIMIT, |s| {
        s["state"] == "replicating"
    });
    verify_clean(&a, "g");
    // On the store's file system the seed was moved into the store; from
    // another one it was copied.
    assert_eq!(
        seed.join("d0.img").exists(),
        seed_parent.is_some(),
        "seed image left behind?"
    );
    let base = b
        .scratch()
        .join("replicas-of-site-a")
        .join("site-a")
        .join("g")
        .join("base")
        .join("d0.img");
    let base_alloc = allocated(&base);
    eprintln!("seeded base: {} KiB allocated", base_alloc / KIB);
    assert!(
        base_alloc <= bound,
        "the seeded base of {written} bytes of data takes {base_alloc} bytes"
    );
    // Block 0 was data in the seed and is a hole of the base now: the
    // base holds 63 + 1 data blocks, not 65.
    let base_file = std::fs::File::open(&base).unwrap();
    let mut block = vec![1u8; 4096];
    std::os::unix::fs::FileExt::read_exact_at(&base_file, &mut block, 0).unwrap();
    assert!(
        block.iter().all(|&x| x == 0),
        "block 0 reads zero in the base"
    );
    assert!(
        !seed_has_data_at_zero(&base),
        "block 0 of the base should be a hole, not written zeroes"
    );
}

/// Whether the file has data (not a hole) in its first 4 KiB (`SEEK_DATA`).
fn seed_has_data_at_zero(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    match rustix::fs::seek(&f, rustix::fs::SeekFrom::Data(0)) {
        Ok(d) => d < 4096,
        Err(rustix::io::Errno::NXIO) => false,
        Err(e) => panic!("SEEK_DATA on {}: {e}", path.display()),
    }
}
