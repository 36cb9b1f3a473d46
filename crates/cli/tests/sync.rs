//! Synchronous groups (issue 6): every acknowledged write survives the
//! primary's death (kill -9, then `failover run --force` at the replica),
//! and the replica is always a prefix of the write order; link loss with
//! `degrade` and `suspend-writes`; conversion between async and sync on a
//! live group.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use offsite_testkit::TestSite;
use serde_json::Value;

/// Blocks of the test volume (4 MiB).
const NBLOCKS: u64 = 1024;

/// Block written by stamp `i` (the same formula as in [`WRITER`]).
fn block_of(i: u64) -> u64 {
    (i.wrapping_mul(2_654_435_761)) % NBLOCKS
}

/// A QD1 writer: stamp i (1, 2, ...) goes to block_of(i) as a block whose
/// first 8 bytes are i; after each acknowledged write it appends i to the
/// acknowledgement file (flushed). It runs until killed or the connection
/// fails.
const WRITER: &str = r#"
import nbd, struct, sys, os
url, acks, nblocks = sys.argv[1], sys.argv[2], int(sys.argv[3])
h = nbd.NBD()
h.connect_uri(url)
f = open(acks, "w", buffering=1)
i = 0
try:
    while True:
        i += 1
        b = (i * 2654435761) % nblocks
        h.pwrite(struct.pack("<Q", i) + bytes(4088), b * 4096)
        f.write("%d\n" % i)
except Exception as e:
    sys.stderr.write("writer stopped at %d: %s\n" % (i, e))
"#;

fn start_writer(url: &str, acks: &std::path::Path) -> Child {
    Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(WRITER)
        .args([url, &acks.display().to_string(), &NBLOCKS.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the python writer")
}

fn acked(acks: &std::path::Path) -> u64 {
    std::fs::read_to_string(acks)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0)
}

/// Reads every block's stamp from `url` (0 for a block never written).
const READER: &str = r#"
import nbd, struct, sys, json
h = nbd.NBD()
h.connect_uri(sys.argv[1])
n = int(sys.argv[2])
data = h.pread(n * 4096, 0)
print(json.dumps([struct.unpack_from("<Q", data, b * 4096)[0] for b in range(n)]))
"#;

/// Checks that `stamps` (per block) is the image after exactly the first k
/// writes for some k ≥ `acked`; returns k.
fn check_prefix(stamps: &[u64], acked: u64) -> u64 {
    let k = stamps.iter().copied().max().unwrap_or(0);
    assert!(
        k >= acked,
        "an acknowledged write is missing: the newest stamp on the replica is {k}, {acked} were acknowledged"
    );
    let mut expect = vec![0u64; NBLOCKS as usize];
    for i in 1..=k {
        expect[block_of(i) as usize] = i;
    }
    for (b, (&got, &want)) in stamps.iter().zip(&expect).enumerate() {
        assert_eq!(
            got, want,
            "block {b} holds stamp {got}, but the state after the first {k} writes has {want}: not a prefix of the write order"
        );
    }
    k
}

fn in_sync(site: &TestSite, group: &str) -> Value {
    wait_group(site, group, "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    })
}

/// A sync group of one 4 MiB volume, started and in sync.
fn sync_group(a: &TestSite, group: &str, volume: &str, extra: &[&str]) {
    a.create_volume(volume, "4M");
    let mut flags = vec!["--mode", "sync", "--compress", "none"];
    flags.extend_from_slice(extra);
    create_group(a, group, "site-b", &["--volume", volume], &flags);
    a.json(&["group", "start", group]);
    in_sync(a, group);
}

#[test]
fn every_acknowledged_write_survives_a_killed_primary() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let iterations: u64 = std::env::var("OFFSITE_SYNC_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut a, b) = group_pair();
    keep_listen_port(&a);
    let mut rng = seed();
    for it in 0..iterations {
        let (g, v) = (format!("g{it}"), format!("d{it}"));
        sync_group(&a, &g, &v, &[]);
        let acks = a.scratch().join(format!("acks-{it}"));
        let mut writer = start_writer(&a.url(&v), &acks);
        // Kill at a random moment once some writes were acknowledged.
        let want = 20 + next_rand(&mut rng) % 300;
        wait_until("writes acknowledged", GROUP_LIMIT, || acked(&acks) >= want);
        std::thread::sleep(Duration::from_millis(next_rand(&mut rng) % 50));
        a.kill9();
        let _ = writer.wait();
        let acked = acked(&acks);
        let r = b.json(&["failover", "run", &g, "--force"]);
        let url = r["volumes"][0]["url"].as_str().expect("url").to_string();
        let stamps: Vec<u64> =
            serde_json::from_value(python_json(READER, &[&url, &NBLOCKS.to_string()]))
                .expect("stamps");
        let k = check_prefix(&stamps, acked);
        eprintln!("iteration {it}: {acked} writes acknowledged, the replica holds the first {k}");
        a.start();
        // Tear the failed-over group down (both sides) for the next round.
        b.ok(&["group", "teardown", &g]);
    }
}
