//! A model of a sync group's journal for the tests: every acknowledged
//! write in order, every acknowledged checkpoint as a prefix of that
//! order, and the check that an image is exactly the prefix's image.

use std::collections::BTreeMap;

use offsite_replica_store::{
    CheckpointId, Consistency, LogRecord, ReplicaError, ReplicaStore, VolumeSpec, WriteLog,
    decode_records, encode_record,
};

/// Two volumes with different block sizes.
pub fn jspecs() -> Vec<VolumeSpec> {
    vec![
        VolumeSpec {
            name: "sys".into(),
            size_bytes: 16 * 512,
            block_size: 512,
        },
        VolumeSpec {
            name: "data".into(),
            size_bytes: 8 * 4096,
            block_size: 4096,
        },
    ]
}

/// One write: `(volume, first block, block count, fill)`; fill 0 = zeroes.
pub type JWrite = (usize, u64, u32, u8);

/// The bytes of block `b` of a write with `fill` (0: zeroes).
pub fn block_bytes(bs: usize, b: u64, fill: u8) -> Vec<u8> {
    if fill == 0 {
        return vec![0; bs];
    }
    (0..bs)
        .map(|i| ((fill as usize * 31 + b as usize * 7 + i) % 251 + 1) as u8)
        .collect()
}

/// Time of checkpoint `n` in the model: one a second.
pub fn time_of(n: u64) -> u64 {
    1_760_000_000_000_000_000 + n * 1_000_000_000
}

pub const CREATED: &str = "2026-01-02T03:04:05Z";

/// The expected history.
#[derive(Debug, Clone)]
pub struct Model {
    pub specs: Vec<VolumeSpec>,
    pub base: Vec<Vec<u8>>,
    /// Acknowledged writes, in order.
    pub writes: Vec<JWrite>,
    /// Acknowledged checkpoints: id → (writes before it, time).
    pub checkpoints: BTreeMap<u64, (usize, u64)>,
    pub seq: u64,
}

impl Model {
    pub fn new(specs: &[VolumeSpec]) -> Model {
        Model {
            specs: specs.to_vec(),
            base: specs
                .iter()
                .map(|s| vec![0u8; s.size_bytes as usize])
                .collect(),
            writes: Vec::new(),
            checkpoints: BTreeMap::new(),
            seq: 1,
        }
    }

    /// A store in `dir` with a patterned base (so zero writes show).
    pub fn create_store(&mut self, dir: &std::path::Path) -> ReplicaStore {
        self.create_store_on(super::Backend::Dir, dir)
    }

    /// [`Model::create_store`] with `backend`'s committed state.
    pub fn create_store_on(
        &mut self,
        backend: super::Backend,
        dir: &std::path::Path,
    ) -> ReplicaStore {
        let store = backend
            .create_with_uuid(dir, &self.specs, *b"journal-tests-01")
            .unwrap();
        for (v, s) in self.specs.iter().enumerate() {
            let bs = s.block_size as usize;
            let nb = s.size_bytes / u64::from(s.block_size);
            for b in (0..nb).step_by(3) {
                let data = block_bytes(bs, b, 200 + v as u8);
                store.write_base(&s.name, b * bs as u64, &data).unwrap();
                self.base[v][b as usize * bs..(b as usize + 1) * bs].copy_from_slice(&data);
            }
        }
        store.sync_base().unwrap();
        store
    }

    /// The batch of `writes`, numbered from the model's next sequence
    /// number (not taken until [`Model::acked`]).
    pub fn batch(&self, writes: &[JWrite]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &(v, first, count, fill)) in writes.iter().enumerate() {
            let bs = self.specs[v].block_size as usize;
            let data: Vec<u8> = (0..u64::from(count))
                .flat_map(|k| block_bytes(bs, first + k, fill))
                .collect();
            encode_record(
                &LogRecord {
                    seq: self.seq + i as u64,
                    volume: v as u16,
                    first,
                    count,
                    data: (fill != 0).then_some(&data[..]),
                },
                &mut out,
            );
        }
        out
    }

    /// Takes `writes` as acknowledged.
    pub fn acked(&mut self, writes: &[JWrite]) {
        self.seq += writes.len() as u64;
        self.writes.extend_from_slice(writes);
    }

    /// Appends `writes` to `log` as one batch and takes them.
    pub fn append(&mut self, log: &mut WriteLog, writes: &[JWrite]) -> Result<(), ReplicaError> {
        let raw = self.batch(writes);
        log.append(&raw, &decode_records(&raw).unwrap())?;
        self.acked(writes);
        Ok(())
    }

    /// Appends a checkpoint (its time from its id) and takes it.
    pub fn checkpoint(
        &mut self,
        log: &mut WriteLog,
        consistency: Consistency,
        name: Option<&str>,
    ) -> Result<u64, ReplicaError> {
        let next = log.last_checkpoint().map_or(1, |c| c.get() + 1);
        let info = log.checkpoint(time_of(next), consistency, name.map(String::from))?;
        assert_eq!(info.id.get(), next);
        self.checkpoints
            .insert(next, (self.writes.len(), info.time_ns));
        Ok(next)
    }

    /// The image of every volume after the first `n` writes.
    pub fn image(&self, n: usize) -> Vec<Vec<u8>> {
        let mut img = self.base.clone();
        for &(v, first, count, fill) in &self.writes[..n] {
            let bs = self.specs[v].block_size as usize;
            for k in 0..u64::from(count) {
                let b = (first + k) as usize;
                img[v][b * bs..(b + 1) * bs].copy_from_slice(&block_bytes(bs, first + k, fill));
            }
        }
        img
    }

    /// Asserts that checkpoint `id`'s image is exactly the model's prefix:
    /// whole volumes, an unaligned read, block hashes, and `next_data`
    /// never past real data.
    pub fn check_image(&self, store: &ReplicaStore, id: u64) {
        let (n, _) = self.checkpoints[&id];
        let want = self.image(n);
        let img = store
            .checkpoint_image(CheckpointId::new(id).unwrap())
            .unwrap_or_else(|e| panic!("image of checkpoint {id}: {e}"));
        for (v, s) in self.specs.iter().enumerate() {
            let mut buf = vec![0u8; s.size_bytes as usize];
            img.read(&s.name, 0, &mut buf).unwrap();
            assert!(
                buf == want[v],
                "checkpoint {id} (after {n} writes), volume {}, differs from the write order's prefix",
                s.name
            );
            let bs = s.block_size as usize;
            let (off, len) = (bs / 2 + 3, bs * 3);
            let mut part = vec![0u8; len];
            img.read(&s.name, off as u64, &mut part).unwrap();
            assert_eq!(part[..], want[v][off..off + len]);
            let nb = s.size_bytes / u64::from(s.block_size);
            let hashes = img.block_hashes(&s.name, 0..nb).unwrap();
            for (b, h) in hashes.iter().enumerate() {
                assert_eq!(
                    h,
                    blake3::hash(&want[v][b * bs..(b + 1) * bs]).as_bytes(),
                    "hash of block {b} of {} at checkpoint {id}",
                    s.name
                );
            }
            let first_data = want[v].iter().position(|&x| x != 0).map(|p| p as u64);
            let said = img.next_data(&s.name, 0).unwrap();
            match first_data {
                Some(d) => assert!(said.is_some_and(|x| x <= d), "next_data {said:?} past {d}"),
                None => assert!(said.is_none_or(|x| x < s.size_bytes)),
            }
        }
    }
}

/// The store's write log, keeping sealed files as history.
pub fn open_keep(store: &ReplicaStore) -> WriteLog {
    let mut log = store.open_log().unwrap();
    log.set_history(offsite_replica_store::History::Keep);
    log
}

/// The ids of the checkpoints `store` lists.
pub fn listed(store: &ReplicaStore) -> Vec<u64> {
    store
        .list_checkpoints(offsite_replica_store::Listing::Every)
        .unwrap()
        .checkpoints
        .iter()
        .map(|c| c.id.get())
        .collect()
}
