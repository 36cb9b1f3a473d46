//! Recovery to a time (`--at`): test failover, promotion and `pit export`
//! at a journal checkpoint, through the fake links. The fake link carries
//! no sync stream, so the journal is written the way the stream writes
//! it: through the replica's open write log (`Replication.replica.logs`),
//! with the same writes made at the primary, and checkpoints appended
//! between them. Each test checks the bytes served equal the state at
//! the checkpoint, not after it.

use std::sync::Mutex as StdMutex;

use super::*;
use crate::model::{FailoverRun, PointKind, ReverseRequest};
use crate::recovery::ns_rfc3339;
use offsite_replica_store::{
    Consistency, History, LogRecord, WriteLog, decode_records, encode_record,
};

/// The replica's journal of `group`, opened as a sync group's stream
/// opens it, keeping its history (`History::Keep`, as the journal's
/// settings will), and registered where seals find it.
async fn open_journal(p: &Pair, group: &str) -> Arc<StdMutex<Option<WriteLog>>> {
    let (_, store) = p.b.store(group).await.unwrap();
    let mut log = store.open_log().unwrap();
    log.set_history(History::Keep);
    let slot = Arc::new(StdMutex::new(Some(log)));
    p.b.replica
        .logs
        .lock()
        .unwrap()
        .insert(group.to_string(), slot.clone());
    slot
}

/// Writes are numbered as the primary's mirror numbers them.
struct Journal {
    slot: Arc<StdMutex<Option<WriteLog>>>,
    seq: u64,
}

impl Journal {
    /// Block `block` of volume number `volume` (`v` at the primary too)
    /// becomes `byte`s, at the primary and in the replica's journal.
    fn write(&mut self, v: &Volume, volume: u16, block: u64, byte: u8) {
        write(v, block, byte);
        self.seq += 1;
        let data = vec![byte; BS];
        let mut raw = Vec::new();
        encode_record(
            &LogRecord {
                seq: self.seq,
                volume,
                first: block,
                count: 1,
                data: Some(&data),
            },
            &mut raw,
        );
        let records = decode_records(&raw).unwrap();
        let mut guard = self.slot.lock().unwrap();
        guard
            .as_mut()
            .expect("the log")
            .append(&raw, &records)
            .unwrap();
    }

    /// A checkpoint at `time_ns` (the primary's clock); its id.
    fn checkpoint(&self, time_ns: u64, consistency: Consistency) -> u64 {
        let mut guard = self.slot.lock().unwrap();
        let log = guard.as_mut().expect("the log");
        log.checkpoint(time_ns, consistency, None).unwrap().id.get()
    }

    /// Ends the log, sealing what it holds into a PIT cut at `at` (RFC
    /// 3339), as a stream's end does; cycles may commit again.
    fn seal(&self, at: String) {
        if let Some(log) = self.slot.lock().unwrap().take() {
            log.finish(at).unwrap();
        }
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

const SEC: u64 = 1_000_000_000;

fn at(p: Option<&str>, at: u64, test: bool, force: bool) -> FailoverRun {
    FailoverRun {
        pit: p.map(str::to_string),
        at: Some(ns_rfc3339(at)),
        test,
        force,
        skip_vm_hooks: true,
    }
}

/// BLAKE3 of every block of what site `b` serves as `export`.
fn served(p: &Pair, export: &str) -> Option<Vec<[u8; 32]>> {
    use offsite_nbd::ExportRegistry;
    let device = p.b.site.lookup(export)?.device;
    let mut buf = vec![0u8; BS];
    Some(
        (0..device.size() / BS as u64)
            .map(|b| {
                device.read_at(&mut buf, b * BS as u64).unwrap();
                *blake3::hash(&buf).as_bytes()
            })
            .collect(),
    )
}

/// A replicating group `g` of volumes `v` and `w` whose replica holds a
/// journal: writes, checkpoint 1 at `t1`, more writes, checkpoint 2 at
/// `t1 + 100 s`, one more write, and the log sealed into a PIT cut at
/// `t1 + 1000 s` (times along the write order, as the primary's clock
/// stamps them). Returns the primary's images at both checkpoints and the
/// newest PIT before the journal.
struct Scenario {
    v: Arc<Volume>,
    w: Arc<Volume>,
    t1: u64,
    at_c1: Vec<Vec<[u8; 32]>>,
    at_c2: Vec<Vec<[u8; 32]>>,
    before: u64,
}

async fn scenario(p: &Pair, keep: u32) -> Scenario {
    let v = p.volume("v", 16);
    let w = p.volume("w", 16);
    write(&v, 0, 1);
    write(&w, 0, 1);
    p.replicating("g", &["v", "w"], keep).await;
    let before = *p.replica_pits("g").await.last().unwrap();
    let mut journal = Journal {
        slot: open_journal(p, "g").await,
        seq: 0,
    };
    // Ahead of every PIT the test commits (their times are the clock's
    // now), so a time between the checkpoints chooses one of them.
    let t1 = now_ns() + 1000 * SEC;
    journal.write(&v, 0, 1, 0x11);
    journal.write(&w, 1, 2, 0x21);
    journal.write(&v, 0, 0, 0x12);
    journal.checkpoint(t1, Consistency::Crash);
    let at_c1 = p.primary_image("g");
    journal.write(&v, 0, 1, 0x13);
    journal.write(&w, 1, 3, 0x22);
    journal.checkpoint(t1 + 100 * SEC, Consistency::Application);
    let at_c2 = p.primary_image("g");
    journal.write(&w, 1, 2, 0x23);
    journal.seal(ns_rfc3339(t1 + 1000 * SEC));
    assert_ne!(at_c1, at_c2);
    assert_ne!(at_c2, p.primary_image("g"));
    Scenario {
        v,
        w,
        t1,
        at_c1,
        at_c2,
        before,
    }
}

#[tokio::test]
async fn a_test_failover_at_a_time_clones_the_checkpoint_before_it() {
    let p = Pair::new();
    let s = scenario(&p, 2).await;
    let r =
        p.b.failover_run("g", &at(None, s.t1 + 50 * SEC, true, false))
            .await
            .unwrap();
    let point = r.point.clone().expect("the point chosen");
    assert_eq!(point.kind, PointKind::Checkpoint);
    assert_eq!(point.id, 1);
    assert!(!point.app_consistent);
    assert_eq!(point.before_requested_ms, 50_000);
    assert_eq!(point.time, ns_rfc3339(s.t1));
    assert_eq!(r.pit, s.before, "the image starts from the PIT before it");
    assert_eq!(point.pit, s.before);
    let clones: Vec<_> = r.volumes.iter().map(|e| served(&p, &e.export)).collect();
    assert_eq!(
        clones,
        s.at_c1.iter().cloned().map(Some).collect::<Vec<_>>(),
        "the clones hold the state at checkpoint 1, not after"
    );
    let row = p.b.site.groups().failovers().unwrap();
    let test = row.iter().find(|f| f.kind == "test").unwrap();
    assert_eq!((test.pit_id, test.checkpoint), (s.before, Some(1)));
    // Cycles go on and retention keeps the PIT the clones start from.
    for b in 5..9 {
        write(&s.v, b, b as u8);
        p.cycle("g").await.unwrap();
    }
    assert!(p.replica_pits("g").await.contains(&s.before));
    let clones: Vec<_> = r.volumes.iter().map(|e| served(&p, &e.export)).collect();
    assert_eq!(
        clones,
        s.at_c1.iter().cloned().map(Some).collect::<Vec<_>>()
    );
    // A test's write goes to its clone only.
    {
        use offsite_nbd::ExportRegistry;
        let clone = p.b.site.lookup(&r.volumes[0].export).unwrap().device;
        clone.write_at(&[0xEE; BS], 0, false).unwrap();
        clone.flush().unwrap();
    }
    // As after a restart: the clones go (and the image with them), and
    // start-up exports them again over the image built anew from the
    // journal, with the test's flushed write.
    for e in &r.volumes {
        p.b.site.remove_export(&e.export);
    }
    p.b.restore_failovers().await.unwrap();
    let mut want = s.at_c1.clone();
    want[0][0] = *blake3::hash(&[0xEE; BS]).as_bytes();
    let clones: Vec<_> = r.volumes.iter().map(|e| served(&p, &e.export)).collect();
    assert_eq!(clones, want.into_iter().map(Some).collect::<Vec<_>>());
    p.b.stop_test("g").await.unwrap();
    assert_eq!(served(&p, &r.volumes[0].export), None);
    assert!(p.b.site.groups().failovers().unwrap().is_empty());
    write(&s.v, 9, 9);
    let pit = p.cycle("g").await.unwrap();
    assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn a_time_resolves_to_the_newest_point_at_or_before_it() {
    let p = Pair::new();
    let s = scenario(&p, 10).await;
    // Exactly at checkpoint 2, and just before the seal.
    for (t, id, ms, image) in [
        (s.t1 + 100 * SEC, 2, 0, &s.at_c2),
        (s.t1 + 1000 * SEC - 1, 2, 899_999, &s.at_c2),
        (s.t1 + 99 * SEC, 1, 99_000, &s.at_c1),
    ] {
        let e = p.b.pit_export_at("g", &ns_rfc3339(t)).await.unwrap();
        let point = e.point.clone().unwrap();
        assert_eq!((point.kind, point.id), (PointKind::Checkpoint, id));
        assert_eq!(point.before_requested_ms, ms);
        assert_eq!(point.app_consistent, id == 2);
        assert_eq!(e.volumes[0].export, format!("v@g.cp{id}"));
        let images: Vec<_> = e.volumes.iter().map(|x| served(&p, &x.export)).collect();
        assert_eq!(images, image.iter().cloned().map(Some).collect::<Vec<_>>());
    }
    // Long after the newest point: the seal's PIT, with every write.
    let e =
        p.b.pit_export_at("g", &ns_rfc3339(s.t1 + 5000 * SEC))
            .await
            .unwrap();
    let point = e.point.clone().unwrap();
    assert_eq!(point.kind, PointKind::Pit);
    assert_eq!(point.before_requested_ms, 4_000_000);
    let images: Vec<_> = e.volumes.iter().map(|x| served(&p, &x.export)).collect();
    assert_eq!(
        images,
        p.primary_image("g")
            .into_iter()
            .map(Some)
            .collect::<Vec<_>>()
    );
    // Before the first checkpoint: the newest PIT before it.
    let e =
        p.b.pit_export_at("g", &ns_rfc3339(s.t1 - SEC))
            .await
            .unwrap();
    let point = e.point.unwrap();
    assert_eq!(point.kind, PointKind::Pit);
    assert_eq!(point.id, s.before);
    assert_eq!(e.volumes[0].export, format!("v@g.pit{}", s.before));
    // Before everything: refused, naming the oldest point.
    let first = p.replica_pits("g").await[0];
    let err =
        p.b.pit_export_at("g", "2000-01-01T00:00:00Z")
            .await
            .unwrap_err()
            .to_string();
    assert!(
        err.contains(&format!("oldest point it can recover to is pit {first}")),
        "{err}"
    );
    let err =
        p.b.pit_export_at("g", "yesterday")
            .await
            .unwrap_err()
            .to_string();
    assert!(err.contains("RFC 3339"), "{err}");
}

#[tokio::test]
async fn retention_skips_a_merge_under_a_live_export_and_commits() {
    let p = Pair::new();
    let s = scenario(&p, 1).await;
    let e = p.b.pit_export_at("g", &ns_rfc3339(s.t1)).await.unwrap();
    // keep 1: every cycle would merge the older PITs, down to the one
    // the export's image reads, into the base.
    for b in 5..10 {
        write(&s.v, b, b as u8 + 0x40);
        let pit = p.cycle("g").await.expect("the commit stands");
        assert_eq!(p.replica_image("g", pit).await, p.primary_image("g"));
    }
    let images: Vec<_> = e.volumes.iter().map(|x| served(&p, &x.export)).collect();
    assert_eq!(
        images,
        s.at_c1.iter().cloned().map(Some).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_failover_at_a_time_promotes_the_checkpoint_then_reverts_or_replaces() {
    let p = Pair::new();
    let s = scenario(&p, 10).await;
    p.to_a.set_down(true);
    let r =
        p.b.failover_run("g", &at(None, s.t1 + SEC, false, true))
            .await
            .unwrap();
    assert_eq!(r.mode, "unplanned");
    assert_eq!(r.point.as_ref().map(|x| x.id), Some(1));
    let promoted = vec![
        hash_volume(&p.b.site.volume("v").unwrap()),
        hash_volume(&p.b.site.volume("w").unwrap()),
    ];
    assert_eq!(promoted, s.at_c1);
    let lower = p.b.site.volume("v").unwrap().row().lower.clone().unwrap();
    assert_eq!((lower.pit, lower.checkpoint), (s.before, Some(1)));
    // Another point before commit replaces it: checkpoint 2, then a PIT.
    p.b.failover_run("g", &at(None, s.t1 + 100 * SEC, false, true))
        .await
        .unwrap();
    assert_eq!(hash_volume(&p.b.site.volume("w").unwrap()), s.at_c2[1]);
    let newest = *p.replica_pits("g").await.last().unwrap();
    let r =
        p.b.failover_run(
            "g",
            &FailoverRun {
                pit: Some(newest.to_string()),
                force: true,
                skip_vm_hooks: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((r.pit, r.point), (newest, None));
    assert_eq!(
        vec![
            hash_volume(&p.b.site.volume("v").unwrap()),
            hash_volume(&p.b.site.volume("w").unwrap())
        ],
        p.primary_image("g"),
        "the seal put every write of the journal in the newest PIT"
    );
    // A time before every point is refused before anything changes.
    let e =
        p.b.failover_run("g", &at(None, SEC, false, true))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("oldest point"), "{e}");
    assert_eq!(p.row(&p.b, "g").state, GroupState::FailedOver);
    assert!(p.b.site.volume("v").is_ok(), "the promotion stays");
    // Both --pit and --at: refused.
    let e =
        p.b.failover_run("g", &at(Some("1"), s.t1, false, true))
            .await
            .unwrap_err();
    assert!(e.to_string().contains("not both"), "{e}");
    // Back to checkpoint 1, then reverted: the replica again.
    p.b.failover_run("g", &at(None, s.t1, false, true))
        .await
        .unwrap();
    p.b.failover_revert("g").await.unwrap();
    assert!(p.b.site.volume("v").is_err());
    assert_eq!(p.row(&p.b, "g").state, GroupState::Replicating);
    assert!(p.b.site.groups().failovers().unwrap().is_empty());
}

#[tokio::test]
async fn a_promoted_checkpoint_flattens_and_reverses() {
    let p = Pair::new();
    let s = scenario(&p, 10).await;
    p.to_a.set_down(true);
    p.b.failover_run("g", &at(None, s.t1 + 10 * SEC, false, true))
        .await
        .unwrap();
    // Background flattening copies the image's blocks into the top.
    for name in ["v", "w"] {
        let vol = p.b.site.volume(name).unwrap();
        let layer = vol.file().layered().unwrap();
        while layer.flatten_step(1 << 20).unwrap() > 0 {}
        assert!(layer.is_flat());
    }
    let promoted = p.b.site.volume("v").unwrap();
    assert_eq!(
        vec![
            hash_volume(&promoted),
            hash_volume(&p.b.site.volume("w").unwrap())
        ],
        s.at_c1
    );
    write(&promoted, 9, 0x99);
    p.b.failover_commit("g").await.unwrap();
    // The old primary comes back holding writes after checkpoint 1 (and
    // one after checkpoint 2) that the failover rolled back: reverse
    // compares the suspects (its own unreplicated writes and every block
    // of the PITs after the image's start PIT) and ships what differs.
    p.to_a.set_down(false);
    let r = p.b.reverse("g", &ReverseRequest::default()).await.unwrap();
    let (_, store) = p.a.store("g").await.unwrap();
    let newest = store.newest().unwrap().id;
    assert_eq!(newest.get(), r.pit);
    for (name, volume) in [("v", &promoted), ("w", &p.b.site.volume("w").unwrap())] {
        assert_eq!(
            store.block_hashes(Some(newest), name, 0..16).unwrap(),
            hash_volume(volume),
            "the new replica holds the promoted checkpoint and its writes"
        );
    }
    drop(s.v);
    drop(s.w);
}
