//! Memory footprint: an idle daemon holds 100 volumes of 100 GiB with
//! sparse dirty sets in well under 64 MiB. Its own test binary (one test),
//! so no other test disturbs the RSS reading.

mod common;

use offsite_cbt::{ChangeTracker, Geometry, RoaringBitmap};

use common::Rng;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn hundred_idle_volumes_of_100_gib_fit_in_64_mib() {
    let dir = tempfile::tempdir().unwrap();
    let g = Geometry::for_volume(100 << 30, 4096).unwrap();
    let before = rss_bytes();
    let mut rng = Rng::new(99);
    let mut trackers = Vec::new();
    for v in 0..100 {
        let t = ChangeTracker::create(dir.path(), &format!("vol{v}"), g).unwrap();
        // 10,000 scattered dirty blocks plus a 1 GiB sequential run.
        let mut set: RoaringBitmap = (0..10_000).map(|_| rng.below(g.nblocks) as u32).collect();
        let start = rng.below(g.nblocks - 262_144) as u32;
        set.insert_range(start..start + 262_144);
        t.merge(&set).unwrap();
        for _ in 0..20 {
            t.mark(rng.below(g.volume_bytes() - 65536), 65536).unwrap();
        }
        trackers.push(t);
    }
    let grown = rss_bytes().saturating_sub(before);
    eprintln!(
        "100 trackers of 100 GiB: RSS grew by {:.1} MiB",
        grown as f64 / (1 << 20) as f64
    );
    assert!(grown < 64 << 20, "RSS grew by {grown} bytes");
    for t in trackers {
        t.close().unwrap();
    }
}
