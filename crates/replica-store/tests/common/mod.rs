//! Shared helpers of the integration tests: temp dirs, a small group, and
//! an oracle holding the full expected image of every visible PIT.

#![allow(dead_code)]

pub mod journal;

use std::path::Path;
use std::sync::Arc;

use offsite_replica_store::{PitId, ReplicaError, ReplicaStore, VolumeSpec};
use tempfile::TempDir;

/// A temp dir, on tmpfs when available (fsync there is cheap; these tests
/// are about ordering, not media).
pub fn fast_tmpdir() -> TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(d) = tempfile::Builder::new()
            .prefix("offsite-replica-")
            .tempdir_in(shm)
    {
        return d;
    }
    tempfile::tempdir().expect("create temp dir")
}

/// Where a test store keeps its committed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A directory store (`ReplicaStore::create`/`open`).
    Dir,
    /// An object store: a `DirStore` in `DIR/objects`, the working
    /// directory in `DIR/work` (`create_in`/`open_in`). Its steps go
    /// through `offsite-durable`, so the failpoint reaches them.
    Objects,
}

/// Every backend, for tests run against each.
pub const BACKENDS: [Backend; 2] = [Backend::Dir, Backend::Objects];

impl Backend {
    fn objects(dir: &Path) -> Result<Arc<dyn offsite_objects::ObjectStore>, ReplicaError> {
        offsite_objects::DirStore::open(dir.join("objects"))
            .map(|s| Arc::new(s) as Arc<dyn offsite_objects::ObjectStore>)
            .map_err(|e| ReplicaError::InvalidArgument {
                reason: format!("opening the test object store: {e}"),
            })
    }

    /// Creates a store with `specs` in `dir`.
    pub fn create(self, dir: &Path, specs: &[VolumeSpec]) -> Result<ReplicaStore, ReplicaError> {
        match self {
            Backend::Dir => ReplicaStore::create(dir, specs),
            Backend::Objects => {
                ReplicaStore::create_in(Self::objects(dir)?, dir.join("work"), specs, None, 0)
            }
        }
    }

    /// [`Backend::create`] with a given store identity.
    pub fn create_with_uuid(
        self,
        dir: &Path,
        specs: &[VolumeSpec],
        uuid: [u8; 16],
    ) -> Result<ReplicaStore, ReplicaError> {
        match self {
            Backend::Dir => ReplicaStore::create_with_uuid(dir, specs, uuid),
            Backend::Objects => {
                ReplicaStore::create_in(Self::objects(dir)?, dir.join("work"), specs, Some(uuid), 0)
            }
        }
    }

    /// Opens the store in `dir`.
    pub fn open(self, dir: &Path) -> Result<ReplicaStore, ReplicaError> {
        match self {
            Backend::Dir => ReplicaStore::open(dir),
            Backend::Objects => ReplicaStore::open_in(Self::objects(dir)?, dir.join("work")),
        }
    }
}

/// Two volumes with different block sizes.
pub fn specs() -> Vec<VolumeSpec> {
    vec![
        VolumeSpec {
            name: "sys".into(),
            size_bytes: 24 * 512,
            block_size: 512,
        },
        VolumeSpec {
            name: "data-1".into(),
            size_bytes: 12 * 4096,
            block_size: 4096,
        },
    ]
}

/// Deterministic non-zero content of one block.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

pub const CREATED: &str = "2024-05-01T12:00:00Z";

/// One write of a test PIT: `(volume index, block, content)`; `None` =
/// zero block.
pub type Write = (usize, u64, Option<u64>);

/// The expected state of a store.
#[derive(Debug, Clone)]
pub struct Oracle {
    pub specs: Vec<VolumeSpec>,
    /// The base images.
    pub base: Vec<Vec<u8>>,
    /// Visible PITs: id, name, full image per volume.
    pub pits: Vec<(u64, Option<String>, Vec<Vec<u8>>)>,
    /// Id of the next commit.
    pub next_id: u64,
}

impl Oracle {
    pub fn new(specs: &[VolumeSpec]) -> Oracle {
        Oracle {
            specs: specs.to_vec(),
            base: specs
                .iter()
                .map(|s| vec![0u8; s.size_bytes as usize])
                .collect(),
            pits: Vec::new(),
            next_id: 1,
        }
    }

    fn newest_images(&self) -> Vec<Vec<u8>> {
        self.pits
            .last()
            .map_or_else(|| self.base.clone(), |p| p.2.clone())
    }

    /// Applies `writes` (in order) to the store's writer, without commit.
    pub fn stage(&self, w: &mut offsite_replica_store::PitWriter, writes: &[Write]) {
        for &(v, block, content) in writes {
            let spec = &self.specs[v];
            match content {
                Some(seed) => w
                    .write_block(&spec.name, block, &pattern(spec.block_size as usize, seed))
                    .unwrap(),
                None if block % 2 == 0 => w.write_zero_block(&spec.name, block).unwrap(),
                None => w
                    .write_block(&spec.name, block, &vec![0u8; spec.block_size as usize])
                    .unwrap(),
            }
        }
    }

    /// Records a committed PIT.
    pub fn commit(&mut self, writes: &[Write], name: Option<String>) -> u64 {
        let mut img = self.newest_images();
        for &(v, block, content) in writes {
            let bs = self.specs[v].block_size as usize;
            let at = block as usize * bs;
            let data = content.map_or_else(|| vec![0u8; bs], |seed| pattern(bs, seed));
            img[v][at..at + bs].copy_from_slice(&data);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.pits.push((id, name, img));
        id
    }

    /// The outcome `remove_pit(id)` must have.
    pub fn remove(&mut self, id: u64) -> Result<(), &'static str> {
        let Some(pos) = self.pits.iter().position(|p| p.0 == id) else {
            return Err("NoSuchPit");
        };
        if pos + 1 == self.pits.len() && pos > 0 {
            return Err("NewestPit");
        }
        let (_, _, img) = self.pits.remove(pos);
        if pos == 0 {
            self.base = img;
        }
        Ok(())
    }

    pub fn set_name(&mut self, id: u64, name: Option<String>) -> bool {
        match self.pits.iter_mut().find(|p| p.0 == id) {
            Some(p) => {
                p.1 = name;
                true
            }
            None => false,
        }
    }

    /// Asserts that `store` shows exactly this state; every visible PIT
    /// and the base read back byte for byte, and block hashes agree.
    pub fn check(&self, store: &ReplicaStore) {
        let ids: Vec<(u64, Option<String>)> = store
            .pits()
            .iter()
            .map(|p| (p.id.get(), p.name.clone()))
            .collect();
        let want: Vec<(u64, Option<String>)> =
            self.pits.iter().map(|p| (p.0, p.1.clone())).collect();
        assert_eq!(ids, want, "visible PITs");
        assert!(store.damaged().is_empty(), "damaged: {:?}", store.damaged());
        let views = std::iter::once((None, &self.base))
            .chain(self.pits.iter().map(|p| (PitId::new(p.0), &p.2)));
        for (pit, imgs) in views {
            for (v, spec) in self.specs.iter().enumerate() {
                let mut buf = vec![0u8; spec.size_bytes as usize];
                store.read(pit, &spec.name, 0, &mut buf).unwrap();
                assert!(
                    buf == imgs[v],
                    "PIT {pit:?} volume {} differs from the oracle",
                    spec.name
                );
                // An unaligned read across block boundaries.
                let off = spec.block_size as u64 / 2 + 3;
                let len = (spec.block_size as usize * 3).min(buf.len() - off as usize);
                let mut part = vec![0u8; len];
                store.read(pit, &spec.name, off, &mut part).unwrap();
                assert_eq!(part[..], imgs[v][off as usize..off as usize + len]);
                let nblocks = spec.size_bytes / spec.block_size as u64;
                let hashes = store.block_hashes(pit, &spec.name, 0..nblocks).unwrap();
                for (b, h) in hashes.iter().enumerate() {
                    let bs = spec.block_size as usize;
                    assert_eq!(
                        h,
                        blake3::hash(&imgs[v][b * bs..(b + 1) * bs]).as_bytes(),
                        "hash of block {b} of {} in PIT {pit:?}",
                        spec.name
                    );
                }
            }
        }
    }

    /// Whether `store` lists this state's PIT ids and names.
    pub fn same_list(&self, store: &ReplicaStore) -> bool {
        let ids: Vec<(u64, Option<String>)> = store
            .pits()
            .iter()
            .map(|p| (p.id.get(), p.name.clone()))
            .collect();
        ids == self
            .pits
            .iter()
            .map(|p| (p.0, p.1.clone()))
            .collect::<Vec<_>>()
    }
}

/// Commits `writes` to both the store and the oracle.
pub fn commit(
    store: &ReplicaStore,
    oracle: &mut Oracle,
    writes: &[Write],
    name: Option<&str>,
) -> u64 {
    let mut w = store.begin_pit().unwrap();
    oracle.stage(&mut w, writes);
    let info = w.commit(name.map(String::from), CREATED.into()).unwrap();
    let id = oracle.commit(writes, name.map(String::from));
    assert_eq!(info.id.get(), id);
    id
}

pub fn pit(id: u64) -> PitId {
    PitId::new(id).unwrap()
}

/// Name of a `ReplicaError` variant, for comparing with the oracle.
pub fn kind(e: &ReplicaError) -> &'static str {
    match e {
        ReplicaError::NoSuchPit { .. } => "NoSuchPit",
        ReplicaError::NewestPit { .. } => "NewestPit",
        ReplicaError::BaseSealed { .. } => "BaseSealed",
        ReplicaError::Busy => "Busy",
        ReplicaError::Poisoned { .. } => "Poisoned",
        ReplicaError::Damaged { .. } => "Damaged",
        ReplicaError::Corrupt { .. } => "Corrupt",
        ReplicaError::Io { .. } => "Io",
        _ => "other",
    }
}

/// Copies a directory tree (files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dst = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dst);
        } else {
            std::fs::copy(entry.path(), &dst).unwrap();
        }
    }
}
