//! The journal of a sync group, in process: checkpoints queued by the
//! primary's mirror in the group's write order with the primary's time,
//! carried to the replica in queue order (what `pump` does on a stream)
//! and appended there; history kept across seals, pruned by time and by
//! size, never past a checkpoint in use, and every listed checkpoint's
//! image exactly the primary's volumes when it was queued.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use offsite_catalog::{FailoverRow, JournalSettings, Mode};
use offsite_engine::{Volume, WriteMirror};
use offsite_nbd::BlockDevice;
use offsite_replica_store::{CheckpointId, Consistency, Listing, ReplicaStore, WriteLog};

use super::{Item, Policy, SyncMirror, apply_payloads};
use crate::testing::{BS, Pair, hash_volume};
use crate::wire;

/// A sync group `g` of volumes `v0` and `v1` replicating from `a` to `b`
/// (first PIT committed), its mirror attached to both volumes, in sync
/// with a replica that takes checkpoints; and the replica's open stream.
struct Streaming {
    p: Pair,
    volumes: Vec<Arc<Volume>>,
    mirror: Arc<SyncMirror>,
    store: Arc<ReplicaStore>,
    slot: Arc<std::sync::Mutex<Option<WriteLog>>>,
    /// Writes waiting for the replica (covered by [`Streaming::deliver`]).
    writers: std::sync::Mutex<Vec<std::thread::JoinHandle<std::io::Result<()>>>>,
}

async fn streaming(keep: u32) -> Streaming {
    let p = Pair::new();
    p.volume("v0", 16);
    p.volume("v1", 16);
    p.replicating("g", &["v0", "v1"], keep).await;
    for r in [&p.a, &p.b] {
        r.site.set_group_mode("g", Mode::Sync).unwrap();
    }
    let volumes: Vec<Arc<Volume>> = ["v0", "v1"]
        .iter()
        .map(|v| p.a.site.volume(v).unwrap())
        .collect();
    let mirror = SyncMirror::new(
        "g",
        Policy::Degrade,
        Duration::from_secs(5),
        Default::default(),
        p.clock.clone(),
    );
    for (i, v) in volumes.iter().enumerate() {
        v.set_mirror(Some((mirror.clone() as Arc<dyn WriteMirror>, i as u16)));
    }
    let (_, store, slot) =
        p.b.begin_stream("a", wire::SyncStreamBegin::new("g"))
            .await
            .unwrap();
    // What `last_cut` does once the stream is open.
    mirror.set_up();
    mirror.accept_checkpoints(true);
    Streaming {
        p,
        volumes,
        mirror,
        store,
        slot,
        writers: Default::default(),
    }
}

impl Streaming {
    /// A write, on a thread of its own: it is applied and queued at once
    /// and waits for the replica, as a VM's write does; returns once it
    /// is queued.
    fn write(&self, volume: usize, block: u64, byte: u8) {
        let before = self.mirror.issued();
        let v = self.volumes[volume].clone();
        let w = std::thread::spawn(move || v.write_at(&[byte; BS], block * BS as u64, false));
        while self.mirror.issued() == before {
            std::thread::yield_now();
        }
        self.writers.lock().unwrap().push(w);
    }

    /// The primary's runner's checkpoint tick (stamped with the fake
    /// clock); `true` if a checkpoint was queued.
    async fn tick(&self) -> bool {
        let before = self.mirror.lock().queue.len();
        self.p.a.queue_checkpoint(&self.mirror).await;
        self.mirror.lock().queue.len() > before
    }

    /// Hands what the mirror queued to the replica in queue order, as the
    /// sending turn puts it on the stream and the replica's stream loop
    /// takes it; returns the checkpoints' times.
    fn deliver(&self) -> Vec<u64> {
        let items: Vec<Item> = self.mirror.lock().queue.drain(..).collect();
        let mut times = Vec::new();
        for item in items {
            match item {
                Item::Batch { frame, last } => {
                    let payload = Bytes::copy_from_slice(frame.payload());
                    self.p
                        .b
                        .append_batches(
                            "g",
                            &self.store,
                            &self.slot,
                            vec![payload],
                            || Ok(()),
                            |applier, batches| apply_payloads(applier, &batches).unwrap(),
                        )
                        .unwrap();
                    self.mirror.cover(last);
                }
                Item::Checkpoint(c) => {
                    times.push(c.time_ns);
                    self.p.b.checkpoint_on_stream("g", &self.slot, c);
                }
                Item::Seal { .. } => unreachable!("the test queues no seal"),
            }
        }
        // Every write is on the replica now: the writers complete.
        for w in self.writers.lock().unwrap().drain(..) {
            w.join().unwrap().unwrap();
        }
        times
    }

    /// A seal on the stream (the RPO timer's): the replica's answer.
    fn seal(&self) -> wire::PitCommitted {
        self.p
            .b
            .seal_stream(
                "g",
                &self.store,
                &self.slot,
                wire::SyncSeal(wire::PitCommit {
                    group: "g".into(),
                    name: None,
                    created_at: self.p.clock.rfc3339_now(),
                    blocks: 0,
                    app_consistent: false,
                }),
            )
            .unwrap()
    }

    fn primary_image(&self) -> Vec<Vec<[u8; 32]>> {
        self.volumes.iter().map(|v| hash_volume(v)).collect()
    }

    /// Every block's hash of each volume in the image of checkpoint `id`.
    fn checkpoint_image(&self, id: u64) -> Vec<Vec<[u8; 32]>> {
        let image = self
            .store
            .checkpoint_image(CheckpointId::new(id).unwrap())
            .unwrap();
        ["v0", "v1"]
            .iter()
            .map(|v| image.block_hashes(v, 0..16).unwrap())
            .collect()
    }

    fn set_replica_journal(&self, j: JournalSettings) {
        // The replica's catalog as `group set` leaves it (GROUP_SET_MODE);
        // set directly to reach sizes below the option's floor.
        self.p.b.site.set_group_journal("g", &j).unwrap();
    }
}

impl crate::clock::FakeClock {
    fn rfc3339_now(&self) -> String {
        crate::clock::Clock::rfc3339(self)
    }
}

fn now_ns(p: &Pair) -> u64 {
    u64::try_from(crate::clock::Clock::wall(&*p.clock).unix_timestamp_nanos()).unwrap()
}

#[tokio::test]
async fn checkpoints_arrive_in_write_order_with_the_primarys_time() {
    let s = streaming(3).await;
    // Nothing written since the stream started after the last PIT: a
    // checkpoint would be that PIT's image.
    assert!(!s.tick().await);
    s.write(0, 1, 0x11);
    let t1 = now_ns(&s.p);
    assert!(s.tick().await);
    let first = s.primary_image();
    s.p.clock.advance(Duration::from_secs(1));
    s.write(1, 2, 0x22);
    s.write(0, 3, 0x33);
    let t2 = now_ns(&s.p);
    assert!(s.tick().await);
    let second = s.primary_image();
    s.p.clock.advance(Duration::from_secs(1));
    assert!(!s.tick().await, "no write since the last checkpoint");
    // A quiesced or named seal's checkpoint is queued all the same.
    let t3 = now_ns(&s.p);
    assert!(
        s.mirror
            .queue_checkpoint(t3, true, Some("before-upgrade".into()))
    );
    // Queued between the writes, in their order.
    let kinds: Vec<&str> = s
        .mirror
        .lock()
        .queue
        .iter()
        .map(|i| match i {
            Item::Batch { .. } => "writes",
            Item::Checkpoint(_) => "checkpoint",
            Item::Seal { .. } => "seal",
        })
        .collect();
    assert_eq!(
        kinds,
        ["writes", "checkpoint", "writes", "checkpoint", "checkpoint"]
    );
    assert_eq!(s.deliver(), [t1, t2, t3]);

    let list = s.store.list_checkpoints(Listing::Every).unwrap();
    let got: Vec<(u64, u64)> = list
        .checkpoints
        .iter()
        .map(|c| (c.id.get(), c.time_ns))
        .collect();
    assert_eq!(got, [(1, t1), (2, t2), (3, t3)]);
    let third = &list.checkpoints[2];
    assert_eq!(third.consistency, Consistency::Application);
    assert_eq!(third.name.as_deref(), Some("before-upgrade"));
    assert_eq!(list.summary.application_consistent, 1);
    // Each is exactly the primary's volumes when it was queued (across
    // both volumes: the first holds none of the later writes).
    assert_eq!(s.checkpoint_image(1), first);
    assert_eq!(s.checkpoint_image(2), second);
    assert_eq!(s.checkpoint_image(3), second);

    // A seal keeps the sealed file as history and reports the window.
    let committed = s.seal();
    let window = committed.journal.expect("a window");
    assert_eq!(
        (window.oldest_ns, window.newest_ns, window.count),
        (t1, t3, 3)
    );
    let after = s.store.list_checkpoints(Listing::Summary).unwrap();
    assert_eq!(after.summary.count, 3);
    assert_eq!(after.summary.files, 2, "the sealed file and the open one");
    assert_eq!(s.checkpoint_image(1), first);
}

#[tokio::test]
async fn history_is_kept_across_retention_and_pruned_by_time_and_size() {
    // Keep one unnamed PIT: retention merges every PIT the journal does
    // not pin.
    let s = streaming(1).await;
    s.set_replica_journal(JournalSettings {
        checkpoint_interval_ms: 1000,
        history_secs: 60,
        max_bytes: 10 << 30,
    });
    let mut images = Vec::new();
    for round in 0..4u8 {
        for k in 0..3u8 {
            s.write(
                usize::from(k % 2),
                u64::from(round * 3 + k) % 16,
                round * 16 + k,
            );
            assert!(s.tick().await);
            images.push(s.primary_image());
            s.p.clock.advance(Duration::from_secs(1));
        }
        s.deliver();
        s.seal();
    }
    // Within 60 s: all twelve checkpoints are kept, and each still reads
    // back as the primary's image, although retention ran at every seal.
    let list = s.store.list_checkpoints(Listing::Every).unwrap();
    assert_eq!(list.summary.count, 12);
    for (i, c) in list.checkpoints.iter().enumerate() {
        assert_eq!(
            s.checkpoint_image(c.id.get()),
            images[i],
            "checkpoint {}",
            c.id
        );
    }
    assert!(
        s.store.pits().len() > 1,
        "the journal pins the PIT its history replays from"
    );

    // Two minutes later: the earlier rounds are older than the history.
    s.p.clock.advance(Duration::from_secs(120));
    s.write(0, 0, 0xee);
    assert!(s.tick().await);
    let newest_image = s.primary_image();
    s.deliver();
    let committed = s.seal();
    let list = s.store.list_checkpoints(Listing::Every).unwrap();
    assert_eq!(list.summary.count, 1, "{:?}", list.summary);
    let newest = list.checkpoints[0].id.get();
    assert_eq!(committed.journal.map(|w| w.count), Some(1));
    assert_eq!(s.checkpoint_image(newest), newest_image);

    // A test failover reads the newest checkpoint: a size bound prunes
    // every file before it, but not it.
    s.p.b
        .site
        .catalog_insert_failover(&FailoverRow {
            group: "g".into(),
            kind: "test".into(),
            pit_id: list.checkpoints[0].follows.unwrap().get(),
            started_at: String::new(),
            checkpoint: Some(newest),
            committed: false,
        })
        .unwrap();
    s.set_replica_journal(JournalSettings {
        checkpoint_interval_ms: 1000,
        history_secs: 86_400,
        max_bytes: 1,
    });
    s.write(1, 5, 0x55);
    assert!(s.tick().await);
    s.deliver();
    s.seal();
    let list = s.store.list_checkpoints(Listing::Every).unwrap();
    let ids: Vec<u64> = list.checkpoints.iter().map(|c| c.id.get()).collect();
    // Files go from the front only: the file of the one in use stays,
    // and what follows it.
    assert_eq!(
        ids,
        [newest, newest + 1],
        "over its size, the journal keeps only what is in use and after it"
    );
    assert_eq!(s.checkpoint_image(newest), newest_image);
}

/// A resynchronization in rounds (after a spill or a lost link) offers no
/// recovery point until the cut that ends it is committed: while its
/// rounds send blocks read as the VM writes them (no consistent image),
/// the replica's PITs and checkpoints stay those from before, each still
/// exactly the primary's volumes when it was taken; then one PIT, the
/// cut's image.
#[tokio::test]
async fn no_recovery_point_appears_while_rounds_resynchronize() {
    let s = streaming(8).await;
    let mut images = Vec::new();
    for (k, byte) in [0x71u8, 0x72].into_iter().enumerate() {
        s.write(k, 3, byte);
        assert!(s.tick().await);
        images.push(s.primary_image());
        s.p.clock.advance(Duration::from_secs(1));
    }
    s.deliver();
    // The stream is lost; the VM goes on writing (tracked only).
    s.mirror.lose("the replica fell behind (test)".into());
    for b in 0..16u64 {
        s.volumes[0]
            .write_at(&[0x73; BS], b * BS as u64, false)
            .unwrap();
    }
    let row = s.p.row(&s.p.a, "g");
    // Opening the rounds' PIT seals the stream's log first (a PIT of what
    // the replica acknowledged).
    let mut r = s.p.a.begin_rounds(&row).await.unwrap();
    let checkpoints = |s: &Streaming| -> Vec<u64> {
        let list = s.store.list_checkpoints(Listing::Every).unwrap();
        list.checkpoints.iter().map(|c| c.id.get()).collect()
    };
    let (pits, ids) = (s.store.pits(), checkpoints(&s));
    assert_eq!(ids, [1, 2]);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, vols) = (stop.clone(), s.volumes.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 32 {
                let v = &vols[(n % 2) as usize];
                v.write_at(&[n as u8; BS], (n * 5 % 16) * BS as u64, false)
                    .unwrap();
                n += 1;
            }
        })
    };
    for round in 0..4 {
        s.p.a.round(&row, &mut r).await.unwrap();
        assert_eq!(
            s.store.pits().len(),
            pits.len(),
            "round {round}: no PIT while the rounds send"
        );
        assert_eq!(checkpoints(&s), ids, "round {round}: no new checkpoint");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(s.checkpoint_image(*id), images[i], "round {round}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    s.p.a.end_rounds(&row, r, || {}).await.unwrap();
    assert_eq!(s.store.pits().len(), pits.len() + 1);
    let newest = s.store.pits().last().unwrap().id.get();
    assert_eq!(s.p.replica_image("g", newest).await, s.primary_image());
    assert_eq!(checkpoints(&s), ids, "the checkpoints from before stay");
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(s.checkpoint_image(*id), images[i]);
    }
}
