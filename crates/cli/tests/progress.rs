//! Initial replication reports its progress in bytes of data, with a rate
//! and an ETA (issue 17: `group start` jumped from 0 % to 91 % with an ETA
//! of 0 s on a thin volume, because its holes pass in an instant).

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsite_testkit::qemu_io;

const MIB: u64 = 1 << 20;

#[test]
fn initial_replication_of_a_thin_volume_counts_data_not_holes() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, _b) = group_pair();
    let url = a.create_volume("d0", "1G");
    // 8 MiB at each end of a 1 GiB volume: the rest is holes.
    qemu_io(&url, &["write -P 0x11 0 8M", "write -P 0x22 1016M 8M"]);
    // 4 MiB/s: the 16 MiB of data take about 4 s.
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--bandwidth", "4M", "--compress", "none"],
    );
    a.json(&["group", "start", "g", "--no-wait"]);
    let deadline = Instant::now() + GROUP_LIMIT;
    let mut seen = Vec::new();
    loop {
        let st = group_status(&a, "g");
        if st["state"] == "replicating" && st["last_pit"].is_object() {
            assert!(st["transfer"].is_null(), "no transfer once done: {st}");
            break;
        }
        // The first cycle after the copy has a transfer of its own (kind
        // `cycle`, no percent): only the copy's progress is checked here.
        if let Some(t) = st["transfer"]
            .as_object()
            .filter(|t| t["kind"] == "initial")
        {
            let done = t["bytes_done"].as_u64().expect("bytes_done");
            let total = t["bytes_total"].as_u64().expect("bytes_total");
            let pct = st["initial_progress_percent"].as_f64().expect("percent");
            assert!(
                (16 * MIB..=18 * MIB).contains(&total),
                "the total is the data (16 MiB), not the volume: {st}"
            );
            assert!(done <= total, "{st}");
            let expected = done as f64 * 100.0 / total as f64;
            assert!((pct - expected).abs() < 0.01, "percent of the data: {st}");
            if done > 0 && done < total {
                seen.push((
                    pct,
                    t["eta_seconds"].as_u64(),
                    t["bytes_per_second"].as_u64(),
                ));
            }
        }
        assert!(
            Instant::now() < deadline,
            "initial replication never ended: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("progress seen (percent, eta, rate): {seen:?}");
    assert!(!seen.is_empty(), "no progress seen while the data moved");
    // Somewhere in the middle, with a rate and an ETA of a few seconds
    // (not 0 s at 91 %).
    assert!(
        seen.iter().any(|(p, eta, rate)| *p < 90.0
            && eta.is_some_and(|e| e >= 1)
            && rate.is_some_and(|r| r > 0)),
        "{seen:?}"
    );
    verify_clean(&a, "g");
}
