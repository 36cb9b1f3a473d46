//! Replication cycles across a faulty link (issue 4): the primary reaches
//! the replica through the test kit's fault proxy, which resets
//! connections, stalls them (shorter and longer than the dead-peer
//! timeout) and flips bits (random positions from a seed, and one chosen
//! byte) while cycles ship. Each round writes a known pattern, then syncs
//! until a PIT is committed; a model image per round records what every
//! PIT of that round must hold. At the end every PIT still on the replica
//! is exported and compared with its round's model byte for byte, checked
//! against its recorded checksums, and the newest one verified against the
//! primary: no PIT is ever committed with wrong data, and replication
//! catches up once the link heals.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use common::*;
use offsite_testkit::proxy::{Direction, FaultProxy};
use offsite_testkit::{TestSite, qemu_io};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const SIZE: u64 = 16 * MIB;

/// What the link does to a round's cycle.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// Every connection aborted with an RST mid-transfer.
    Reset,
    /// Forwarding stops for `ms`, then resumes with nothing lost.
    Stall {
        ms: u64,
    },
    /// Random bit flips (seeded) in every new connection for a while.
    CorruptRandom,
    /// One byte flipped at a chosen offset of the next connection.
    CorruptAt,
}

/// A site with fast replication timers (dead after 2 s) that keeps its
/// replication port across restarts.
fn fast_group_site(name: &str) -> TestSite {
    let s = fast_site(name);
    keep_listen_port(&s);
    s
}

#[test]
fn cycles_over_a_faulty_link_never_commit_wrong_data_and_catch_up() {
    if !have_tools(&["qemu-io", "qemu-img"]) {
        return;
    }
    let a = fast_group_site("site-a");
    let b = fast_group_site("site-b");
    let listen: SocketAddr = site_addr(&b, "listen").parse().expect("B's listen address");
    let proxy = FaultProxy::start(listen);
    let faults = proxy.faults();
    pin_at(&a, &b, &proxy.addr().to_string());
    pin(&b, &a);
    authorize_primary(&b, "site-a", None);
    let url = a.create_volume("disk0", "16M");
    // Only `sync` makes cycles (RPO 24 h), so every PIT of a round holds
    // exactly that round's image.
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "disk0"],
        &["--compress", "none", "--rpo", "24h", "--keep", "50"],
    );
    a.json(&["group", "start", "g"]);
    // Slow enough that faults land while a cycle's blocks are in flight.
    faults.set_bandwidth(Direction::ClientToServer, Some(8 * MIB));

    let mut rng = seed();
    let mut model = vec![0u8; SIZE as usize];
    let mut round_of_pit: Vec<(u64, u64)> = Vec::new();
    let mut newest = pit_ids(&b, "g").last().map_or(0, |p| p.0);
    for (id, _) in pit_ids(&b, "g") {
        round_of_pit.push((id, 0));
    }
    let model_path = |round: u64| a.scratch().join(format!("model-{round}.img"));
    std::fs::write(model_path(0), &model).expect("write model 0");

    let plan = [
        Fault::Reset,
        Fault::Stall { ms: 1000 },
        Fault::CorruptRandom,
        Fault::Stall { ms: 4000 },
        Fault::CorruptAt,
        Fault::None,
    ];
    for round in 1..=12u64 {
        let fault = plan[(round as usize - 1) % plan.len()];
        let off = next_rand(&mut rng) % 12 * MIB;
        // Stalls get the longest transfer (0.5 s at 8 MiB/s) so they land
        // while blocks are in flight.
        let len = match fault {
            Fault::Stall { .. } => 4 * MIB,
            _ => (1 + next_rand(&mut rng) % 4) * MIB,
        };
        let byte = round as u8 + 0x20;
        qemu_io(&url, &[&format!("write -P {byte} {off} {len}")]);
        model[off as usize..(off + len) as usize].fill(byte);
        let f = std::fs::File::create(model_path(round)).expect("create model");
        f.write_all_at(&model, 0).expect("write model");

        let delay = Duration::from_millis(50 + next_rand(&mut rng) % 250);
        match fault {
            Fault::None => {}
            Fault::Reset => {
                a.json(&["sync", "g", "--no-wait"]);
                std::thread::sleep(delay);
                faults.reset_all();
            }
            Fault::Stall { ms } => {
                a.json(&["sync", "g", "--no-wait"]);
                std::thread::sleep(delay);
                for d in Direction::ALL {
                    faults.stall(d);
                }
                std::thread::sleep(Duration::from_millis(ms));
                for d in Direction::ALL {
                    faults.unstall(d);
                }
            }
            Fault::CorruptRandom => {
                faults.corrupt_random(Direction::ClientToServer, 2e-6, next_rand(&mut rng));
                faults.corrupt_random(Direction::ServerToClient, 2e-6, next_rand(&mut rng));
                faults.reset_all();
                a.run(&["sync", "g", "--no-wait"]);
                std::thread::sleep(Duration::from_secs(2));
                for d in Direction::ALL {
                    faults.clear_corruption(d);
                }
            }
            Fault::CorruptAt => {
                // Well into the block data of the next session's cycle.
                let at = 64 * 1024 + next_rand(&mut rng) % (len / 2);
                faults.corrupt_at(Direction::ClientToServer, at, 0x10);
                faults.reset_all();
                a.run(&["sync", "g", "--no-wait"]);
                std::thread::sleep(Duration::from_secs(1));
                faults.clear_corruption(Direction::ClientToServer);
            }
        }
        let pit = sync_eventually(&a, "g");
        // Every PIT committed since the last round (the sync's own, and
        // any from an attempt whose answer the fault swallowed) holds this
        // round's image.
        let ids = pit_ids(&b, "g");
        for (id, _) in ids.iter().filter(|p| p.0 > newest) {
            round_of_pit.push((*id, round));
        }
        newest = ids.last().map_or(newest, |p| p.0);
        assert_eq!(pit["id"].as_u64(), Some(newest), "round {round}: {pit}");
        eprintln!(
            "round {round}: {fault:?} after {delay:?}, {len} bytes at {off}: PIT {newest}, {} failed cycle(s) so far",
            a.json(&["group", "measure", "g"])["errors"]
        );
    }

    let stats = proxy.stats();
    eprintln!("proxy: {stats:?}");
    assert!(stats.resets > 0, "{stats:?}");
    assert!(
        stats.client_to_server.bytes_corrupted + stats.server_to_client.bytes_corrupted > 0,
        "{stats:?}"
    );
    let m = a.json(&["group", "measure", "g"]);
    assert!(
        m["errors"].as_u64().unwrap_or(0) >= 3,
        "faults failed cycles: {m}"
    );

    // The link healed: nothing pending, no error, both sites agree.
    let st = group_status(&a, "g");
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(st["pending_bytes"], 0, "{st}");
    verify_clean(&a, "g");
    assert_eq!(pit_ids(&a, "g"), pit_ids(&b, "g"));
    // Verify's cut commits a PIT too, of the last round's image.
    for (id, _) in pit_ids(&b, "g").iter().filter(|p| p.0 > newest) {
        round_of_pit.push((*id, 12));
    }
    let check = b.json(&["pit", "check", "g"]);
    assert_eq!(check["damaged"], 0, "{check}");

    // Every PIT holds exactly its round's image.
    for (id, _) in pit_ids(&b, "g") {
        let round = round_of_pit
            .iter()
            .find(|p| p.0 == id)
            .map(|p| p.1)
            .unwrap_or_else(|| panic!("PIT {id} appeared outside any round"));
        let e: Value = b.json(&["pit", "export", "g", &id.to_string()]);
        let pit_url = e["volumes"][0]["url"].as_str().expect("export url");
        let (code, out) = qemu_img_compare(&model_path(round).display().to_string(), pit_url);
        assert_eq!(
            code, 0,
            "PIT {id} (round {round}) differs from its model: {out}"
        );
    }
}
