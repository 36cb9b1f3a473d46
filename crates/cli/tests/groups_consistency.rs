//! Consistency of replication groups' PITs: write-order consistency across
//! two volumes under concurrent flushed writes, retention with `--keep 3`
//! over ten cycles (each kept PIT reads back its own data), and a seeded
//! initial replication that sends only what changed since the seed.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::stamps::{STAMP_WRITER, stamp_prefix};
use common::*;
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

/// Liveness bound for anything replication does in these tests.
const LIMIT: Duration = Duration::from_secs(120);

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const BS: u64 = 4 * KIB;

/// `group start NAME [extra] --json` (waits for the first PIT).
fn start_group(a: &TestSite, group: &str, extra: &[&str]) -> Value {
    let mut args = vec!["group", "start", group];
    args.extend_from_slice(extra);
    args.push("--json");
    let out = a.run(&args);
    assert!(
        out.status.success(),
        "group start {group} {extra:?}: {}\nprimary log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 40)
    );
    let st: Value = serde_json::from_slice(&out.stdout).expect("group start --json");
    assert_eq!(st["state"], "replicating", "{st}\n{}", tail(&a.log(), 30));
    st
}

/// `pit export GROUP PIT --json` at `replica`: volume name -> NBD URL.
fn export_pit(replica: &TestSite, group: &str, pit: u64) -> Vec<(String, String)> {
    let id = pit.to_string();
    let e = replica.json(&["pit", "export", group, &id]);
    e["volumes"]
        .as_array()
        .unwrap_or_else(|| panic!("pit export --json has volumes: {e}"))
        .iter()
        .map(|v| {
            (
                v["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{e}"))
                    .to_string(),
                v["url"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{e}"))
                    .to_string(),
            )
        })
        .collect()
}

fn url_of<'a>(vols: &'a [(String, String)], name: &str) -> &'a str {
    &vols
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("exported PIT has no volume {name}: {vols:?}"))
        .1
}

/// Reads 4 KiB blocks `blocks` of `url` (read-only, libnbd); for each, the
/// byte it is filled with, or -1 when it is not uniform.
fn uniform_bytes(url: &str, blocks: &[u64]) -> Vec<i64> {
    const SCRIPT: &str = r#"
import json, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
out = []
for b in json.loads(sys.argv[2]):
    d = h.pread(4096, b * 4096)
    out.append(d[0] if d == bytes([d[0]]) * 4096 else -1)
h.shutdown()
print(json.dumps(out))
"#;
    let list = serde_json::to_string(blocks).unwrap();
    python_json(SCRIPT, &[url, &list])
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_i64().expect("int"))
        .collect()
}

// ---- 1. write-order consistency ----

const N: u64 = 400;

#[test]
fn write_order_consistency() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let (a, b) = group_pair();
    let u0 = a.create_volume("vol0", "64M");
    let u1 = a.create_volume("vol1", "64M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "vol0", "--volume", "vol1"],
        // No automatic cycle: every PIT comes from a `sync` below.
        &["--rpo", "24h", "--keep", "100"],
    );
    start_group(&a, "g", &[]);

    let mut writer = KillOnDrop(Some(
        Command::new(PYTHON)
            .arg("-c")
            .arg(STAMP_WRITER)
            .args([&u0, &u1, &N.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn writer"),
    ));
    let printed: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stdout = writer.child().stdout.take().unwrap();
    let reader = {
        let printed = printed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let line = line.expect("writer stdout");
                printed
                    .lock()
                    .unwrap()
                    .push(line.trim().parse().expect("stamp"));
            }
        })
    };

    // (PIT id, number of stamps whose flush had returned before the sync
    // was asked for): the PIT must hold at least those.
    let mut syncs: Vec<(u64, u64)> = Vec::new();
    let mut during = 0;
    loop {
        let done = writer.child().try_wait().expect("wait writer").is_some();
        let flushed = printed.lock().unwrap().len() as u64;
        let pit = sync_pit(&a, "g", &[]);
        syncs.push((u(&pit, "id"), flushed));
        if done {
            break;
        }
        if flushed > 0 && flushed < N {
            during += 1;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    let out = writer.take().wait_with_output().expect("writer");
    reader.join().unwrap();
    assert!(
        out.status.success(),
        "writer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(printed.lock().unwrap().len() as u64, N);
    assert!(
        during >= 2,
        "at least two syncs should have overlapped the writes: {syncs:?}"
    );

    let pits = pit_ids(&b, "g");
    assert!(pits.len() >= 3, "{pits:?}");
    for (id, _) in &pits {
        let vols = export_pit(&b, "g", *id);
        let (e0, e1) = (url_of(&vols, "vol0"), url_of(&vols, "vol1"));
        let k = stamp_prefix([e0, e1], N, &format!("PIT {id}"));
        eprintln!("PIT {id}: {k} stamps");
        if let Some((_, flushed)) = syncs.iter().find(|(p, _)| p == id) {
            assert!(
                k >= *flushed,
                "PIT {id} holds {k} stamps but {flushed} were flushed before its sync"
            );
        }
    }
    let (last, _) = *pits.last().unwrap();
    assert_eq!(Some(&last), syncs.last().map(|(p, _)| p));
    verify_clean(&a, "g");
}

// ---- 2. retention ----

#[test]
fn retention_keep3_after_10_cycles() {
    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let (a, b) = group_pair();
    let url = a.create_volume("disk0", "8M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "disk0"],
        &["--keep", "3", "--rpo", "24h"],
    );
    start_group(&a, "g", &[]);

    // Before sync i: block i gets 0x10+i, block 100 is overwritten with
    // 0x80+i, block 200 is zeroed at odd i and rewritten at even i.
    let expected = |i: u64| -> Vec<(u64, i64)> {
        let mut e: Vec<(u64, i64)> = (0..10)
            .map(|b| (b, if b <= i { 0x10 + b as i64 } else { 0 }))
            .collect();
        e.push((100, 0x80 + i as i64));
        e.push((200, if i % 2 == 1 { 0 } else { 0x40 + i as i64 }));
        e
    };
    let mut made: Vec<(u64, u64, Option<&str>)> = Vec::new(); // (pit, i, name)
    for i in 0..10u64 {
        let mut cmds = vec![
            format!("write -P {} {} 4k", 0x10 + i, i * BS),
            format!("write -P {} {} 4k", 0x80 + i, 100 * BS),
        ];
        if i % 2 == 1 {
            cmds.push(format!("write -z {} 4k", 200 * BS));
        } else {
            cmds.push(format!("write -P {} {} 4k", 0x40 + i, 200 * BS));
        }
        let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
        qemu_io(&url, &cmds);
        let name = match i {
            2 => Some("named-2"),
            6 => Some("named-6"),
            _ => None,
        };
        let pit = match name {
            Some(n) => sync_pit(&a, "g", &["--pit-name", n]),
            None => sync_pit(&a, "g", &[]),
        };
        assert_eq!(pit["name"].as_str(), name, "{pit}");
        made.push((u(&pit, "id"), i, name));
    }

    let pits = pit_ids(&b, "g");
    assert_eq!(pits, pit_ids(&a, "g"), "pit list is the same on both sites");
    let unnamed: Vec<u64> = pits.iter().filter(|p| p.1.is_none()).map(|p| p.0).collect();
    let newest: Vec<u64> = made
        .iter()
        .filter(|m| m.2.is_none())
        .map(|m| m.0)
        .collect::<Vec<_>>()[5..]
        .to_vec();
    assert_eq!(unnamed, newest, "the 3 newest unnamed PITs stay: {pits:?}");
    let mut named: Vec<(u64, String)> = pits
        .iter()
        .filter_map(|(id, n)| n.clone().map(|n| (*id, n)))
        .collect();
    named.sort();
    let want: Vec<(u64, String)> = made
        .iter()
        .filter_map(|m| m.2.map(|n| (m.0, n.to_string())))
        .collect();
    assert_eq!(named, want, "both named PITs stay: {pits:?}");
    assert_eq!(pits.len(), 5, "{pits:?}");

    for (id, _) in &pits {
        let i = made.iter().find(|m| m.0 == *id).unwrap().1;
        let vols = export_pit(&b, "g", *id);
        let exp = expected(i);
        let blocks: Vec<u64> = exp.iter().map(|e| e.0).collect();
        let got = uniform_bytes(url_of(&vols, "disk0"), &blocks);
        let want: Vec<i64> = exp.iter().map(|e| e.1).collect();
        assert_eq!(
            got, want,
            "PIT {id} (sync {i}) blocks {blocks:?} read back wrong"
        );
    }
    verify_clean(&a, "g");
}

// ---- 3. seeded initial replication ----

#[test]
fn seeded_start_sends_about_1_percent() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, _b) = group_pair();
    let url = a.create_volume("disk0", "64M");
    let fill: Vec<String> = (0..64)
        .map(|m| format!("write -P 0x5a {}M 1M", m))
        .collect();
    let fill: Vec<&str> = fill.iter().map(String::as_str).collect();
    qemu_io(&url, &fill);
    // No compression: the bytes sent are the block data itself.
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "disk0"],
        &["--compress", "none", "--rpo", "24h"],
    );
    let seed = a.scratch().join("seed");
    let seed_s = seed.display().to_string();
    let e = a.json(&["group", "export-seed", "g", "--to", &seed_s]);
    assert!(seed.join("disk0.img").is_file(), "{e}");
    assert!(seed.join("seed.json").is_file(), "{e}");
    assert_eq!(u(&e, "bytes"), 64 * MIB, "{e}");

    // ~1 % of the 16384 blocks change after the seed was taken.
    let changed: Vec<u64> = (0..164u64).map(|k| k * 99 + 7).collect();
    let cmds: Vec<String> = changed
        .iter()
        .map(|b| format!("write -P 0xa5 {} 4k", b * BS))
        .collect();
    let cmds: Vec<&str> = cmds.iter().map(String::as_str).collect();
    qemu_io(&url, &cmds);
    let changed_bytes = changed.len() as u64 * BS;

    start_group(&a, "g", &["--seed", &seed_s]);
    let st = wait_group(&a, "g", "replicating", LIMIT, |s| {
        s["state"] == "replicating"
    });
    let sent = u(&st, "initial_bytes_sent");
    eprintln!("seeded start sent {sent} bytes ({changed_bytes} changed)");
    assert!(
        sent <= 64 * MIB * 3 / 100,
        "a seeded start sent {sent} bytes, more than 3 % of 64 MiB: {st}"
    );
    assert!(
        sent >= changed_bytes,
        "a seeded start sent {sent} bytes, less than the {changed_bytes} changed: {st}"
    );
    // On the replica store's file system the seed image became the base
    // by a rename (no copy): it is gone from the seed directory.
    assert!(
        !seed.join("disk0.img").exists(),
        "the seed image should have been moved into the replica store"
    );
    verify_clean(&a, "g");
}
