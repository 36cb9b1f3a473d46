//! [`ReplicaStore`]: the in-memory chain of visible PITs, reads, and the
//! small changes (names, base writes, discarding damage).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::CommitFence;
use crate::backing::{Backing, pit_key};
use crate::format::{Manifest, VolSummary, encode_manifest};
use crate::segment::Segment;
use crate::{
    DamagedPit, PitId, PitInfo, PitWriter, ReplicaError, VolumeSpec, fsx, validate_pit_name,
};

/// Name of the metadata file.
pub(crate) const META_FILE: &str = "store.meta";
/// Name of the lock file.
pub(crate) const LOCK_FILE: &str = "store.lock";
/// Name of a PIT's manifest inside its directory.
pub(crate) const MANIFEST_FILE: &str = "manifest.pit";
pub(crate) const BASE_DIR: &str = "base";
pub(crate) const PITS_DIR: &str = "pits";
pub(crate) const STAGING_DIR: &str = "staging";
pub(crate) const MERGING_DIR: &str = "merging";

/// Blocks moved per `pread` when reading or merging.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// Directory name of a PIT: `ID-FIRST`, 20-digit decimals.
pub(crate) fn pit_dir_name(id: u64, first: u64) -> String {
    format!("{id:020}-{first:020}")
}

/// Parses `ID-FIRST`; `None` for anything else.
pub(crate) fn parse_pit_dir_name(name: &str) -> Option<(u64, u64)> {
    let (a, b) = name.split_once('-')?;
    if a.len() != 20 || b.len() != 20 || !a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (id, first) = (a.parse().ok()?, b.parse().ok()?);
    (id != 0 && first != 0 && first <= id).then_some((id, first))
}

/// Alignment of `O_DIRECT` base writes (offset, length and memory): the
/// largest logical block size of common devices.
const DIRECT_ALIGN: u64 = 4096;

/// A volume and its open base image.
#[derive(Debug)]
pub(crate) struct Vol {
    pub(crate) spec: VolumeSpec,
    pub(crate) nblocks: u64,
    pub(crate) zero_hash: [u8; 32],
    /// The base image file (directory stores), or the volume's chunk
    /// prefix (object stores), for messages.
    pub(crate) base_path: PathBuf,
    pub(crate) base: BaseImg,
}

/// Where a volume's base image lives.
#[derive(Debug)]
pub(crate) enum BaseImg {
    /// A raw sparse image file of a directory store; replaced once, when a
    /// seed is adopted ([`ReplicaStore::adopt_base`]).
    File(RwLock<Arc<BaseFiles>>),
    /// Chunk objects of an object store.
    Chunks(crate::backing::ChunkBase),
}

/// The descriptors of a base image.
#[derive(Debug)]
pub(crate) struct BaseFiles {
    pub(crate) file: File,
    /// The base image opened with `O_DIRECT` (see `recover::open_direct`).
    pub(crate) direct: Option<File>,
}

impl Vol {
    pub(crate) fn bs(&self) -> usize {
        self.spec.block_size as usize
    }

    /// Reads `buf.len()` bytes of the base image at `offset`.
    pub(crate) fn read_base(&self, buf: &mut [u8], offset: u64) -> Result<(), ReplicaError> {
        match &self.base {
            BaseImg::File(files) => current(files)
                .file
                .read_exact_at(buf, offset)
                .map_err(|e| ReplicaError::io("read", &self.base_path, e)),
            BaseImg::Chunks(c) => c.read(buf, offset),
        }
    }

    /// The first stretch of the base image that may hold data and ends
    /// after `at`, clipped to `at..end`: `(start, end)`, or `(end, end)`
    /// when only zeroes follow (see [`data_extent`]).
    pub(crate) fn base_extent(&self, at: u64, end: u64) -> Result<(u64, u64), ReplicaError> {
        match &self.base {
            BaseImg::File(files) => data_extent(&current(files).file, at, end)
                .map_err(|e| ReplicaError::io("seek", &self.base_path, e)),
            BaseImg::Chunks(c) => Ok(c.extent(at, end)),
        }
    }

    /// Makes the base image's writes durable.
    pub(crate) fn sync_base(&self) -> Result<(), ReplicaError> {
        match &self.base {
            BaseImg::File(files) => Ok(fsx::sync_data(&current(files).file, &self.base_path)?),
            BaseImg::Chunks(c) => c.sync(),
        }
    }
}

/// The base image's descriptors now.
pub(crate) fn current(files: &RwLock<Arc<BaseFiles>>) -> Arc<BaseFiles> {
    files.read().unwrap_or_else(PoisonError::into_inner).clone()
}

/// A visible PIT in memory.
#[derive(Debug, Clone)]
pub(crate) struct Pit {
    pub(crate) id: u64,
    pub(crate) first: u64,
    pub(crate) name: Option<String>,
    pub(crate) created_at: String,
    /// Its directory under `pits/`.
    pub(crate) dir: PathBuf,
    pub(crate) summaries: Vec<VolSummary>,
    /// One segment per volume, in volume order.
    pub(crate) segs: Arc<[Segment]>,
}

impl Pit {
    pub(crate) fn info(&self, vols: &[Vol]) -> PitInfo {
        PitInfo {
            id: PitId(self.id),
            name: self.name.clone(),
            created_at: self.created_at.clone(),
            bytes: self
                .segs
                .iter()
                .zip(vols)
                .map(|(s, v)| s.data_blocks() * u64::from(v.spec.block_size))
                .sum(),
            blocks: self.segs.iter().map(|s| s.len() as u64).sum(),
        }
    }

    pub(crate) fn manifest(&self, uuid: [u8; 16]) -> Manifest {
        Manifest {
            uuid,
            id: self.id,
            first: self.first,
            name: self.name.clone(),
            created_at: self.created_at.clone(),
            volumes: self.summaries.clone(),
        }
    }
}

/// What readers see.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Visible PITs, ascending id; they tile the history after the base.
    pub(crate) chain: Vec<Arc<Pit>>,
    /// PITs found damaged at open (ascending id).
    pub(crate) damaged: Vec<DamagedPit>,
    /// `Ops::base_through`, published with the chain, so readers (the
    /// journal's listing) see the two consistent without the change lock,
    /// which a merge into the base holds for long.
    pub(crate) base_through: u64,
}

impl State {
    pub(crate) fn position(&self, id: PitId) -> Result<usize, ReplicaError> {
        self.chain
            .binary_search_by_key(&id.0, |p| p.id)
            .map_err(|_| match self.damaged.iter().find(|d| d.id == id) {
                Some(d) => ReplicaError::Damaged {
                    id,
                    why: d.why.clone(),
                },
                None => ReplicaError::NoSuchPit { id },
            })
    }
}

/// State owned by the change path (under `Inner::ops`).
#[derive(Debug)]
pub(crate) struct Ops {
    /// Newest PIT id merged into the base.
    pub(crate) base_through: u64,
    /// Id of the next commit.
    pub(crate) next_id: u64,
    /// Base images were written since their last fsync.
    pub(crate) base_dirty: bool,
}

#[derive(Debug)]
pub(crate) struct Inner {
    /// The store directory (directory stores), or the local working
    /// directory (object stores: lock, staging, journal).
    pub(crate) dir: PathBuf,
    /// Where the committed state lives.
    pub(crate) backing: crate::backing::Backing,
    pub(crate) uuid: [u8; 16],
    pub(crate) specs: Vec<VolumeSpec>,
    pub(crate) vols: Vec<Vol>,
    pub(crate) by_name: HashMap<String, usize>,
    pub(crate) state: RwLock<State>,
    /// Serializes every change; lock order: `ops`, then `state`.
    pub(crate) ops: Mutex<Ops>,
    /// A `PitWriter` exists.
    pub(crate) writer: AtomicBool,
    /// Sticky failure: the first error at or after a commit point.
    pub(crate) poison: Mutex<Option<(String, Option<io::ErrorKind>)>>,
    /// The journal's files and checkpoints (`None`: not loaded yet; the
    /// write log's open reloads it). Lock order: `ops`, then `journal`,
    /// then `state`.
    pub(crate) journal: Mutex<Option<crate::history::JournalState>>,
    /// The states live checkpoint images read from (PIT id or
    /// `base_through` → number of images): no PIT newer than one of them
    /// may be merged into the base.
    pub(crate) pins: Mutex<std::collections::BTreeMap<u64, usize>>,
    /// What an object store holds of the journal (`journal_objects`);
    /// lock order: `uploads`, then `journal`.
    pub(crate) uploads: Mutex<crate::journal_objects::Uploads>,
    /// The journal is not copied into the object store
    /// ([`ReplicaStore::keep_journal_local`]).
    pub(crate) journal_local: AtomicBool,
    /// Held for the flock.
    pub(crate) _lock: File,
}

impl Inner {
    pub(crate) fn path(&self, sub: &str) -> PathBuf {
        self.dir.join(sub)
    }

    pub(crate) fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_ops(&self) -> MutexGuard<'_, Ops> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_journal(&self) -> MutexGuard<'_, Option<crate::history::JournalState>> {
        self.journal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lock_pins(&self) -> MutexGuard<'_, std::collections::BTreeMap<u64, usize>> {
        self.pins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a live image reading state `anchor`.
    pub(crate) fn pin(&self, anchor: u64) {
        *self.lock_pins().entry(anchor).or_default() += 1;
    }

    /// Releases one registration of `anchor`.
    pub(crate) fn unpin(&self, anchor: u64) {
        let mut pins = self.lock_pins();
        if let Some(n) = pins.get_mut(&anchor) {
            *n -= 1;
            if *n == 0 {
                pins.remove(&anchor);
            }
        }
    }

    /// Fails with `InUse` when a live image reads a state older than
    /// `id`, which merging `id` into the base would change under it.
    pub(crate) fn check_unpinned_below(&self, id: u64) -> Result<(), ReplicaError> {
        match self.lock_pins().keys().next() {
            Some(&anchor) if anchor < id => Err(ReplicaError::InUse { anchor }),
            _ => Ok(()),
        }
    }

    /// The newest state of the chain: the newest PIT, or the base.
    pub(crate) fn tip(&self) -> u64 {
        let ops = self.lock_ops();
        self.read_state()
            .chain
            .last()
            .map_or(ops.base_through, |p| p.id)
            .max(ops.base_through)
    }

    pub(crate) fn vol_index(&self, name: &str) -> Result<usize, ReplicaError> {
        self.by_name
            .get(name)
            .copied()
            .ok_or_else(|| ReplicaError::NoSuchVolume {
                name: name.to_string(),
            })
    }

    /// Fails with `Poisoned` after an earlier sticky failure.
    pub(crate) fn check_poison(&self) -> Result<(), ReplicaError> {
        let p = self.poison.lock().unwrap_or_else(PoisonError::into_inner);
        match &*p {
            None => Ok(()),
            Some((cause, kind)) => Err(ReplicaError::Poisoned {
                path: self.dir.clone(),
                cause: cause.clone(),
                kind: *kind,
            }),
        }
    }

    /// Records `e` as the sticky failure (if it is the first) and returns it.
    pub(crate) fn poison(&self, e: impl Into<ReplicaError>) -> ReplicaError {
        let e = e.into();
        let mut p = self.poison.lock().unwrap_or_else(PoisonError::into_inner);
        if p.is_none() {
            let kind = e.io_error().map(io::Error::kind);
            let cause = error_chain(&e);
            tracing::error!(store = %self.dir.display(), "replica store stops accepting changes: {cause}");
            *p = Some((cause, kind));
        }
        e
    }

    /// Refuses changes that need an undamaged chain.
    pub(crate) fn check_undamaged(&self) -> Result<(), ReplicaError> {
        match self.read_state().damaged.first() {
            None => Ok(()),
            Some(d) => Err(ReplicaError::Damaged {
                id: d.id,
                why: d.why.clone(),
            }),
        }
    }

    /// Fsyncs every base image.
    pub(crate) fn sync_base(&self) -> Result<(), ReplicaError> {
        for v in &self.vols {
            v.sync_base()?;
        }
        Ok(())
    }
}

/// `e` with its sources, `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Where each block of a read comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    Base,
    /// Segment of the `usize`-th PIT of the view, entry `pos`.
    Seg(usize, usize),
}

/// The replica store of one replication group. See the crate docs.
#[derive(Debug)]
pub struct ReplicaStore {
    pub(crate) inner: Arc<Inner>,
}

impl ReplicaStore {
    /// Creates a store in `dir` (created if missing, refused if not empty)
    /// with one zero-filled sparse base image per volume.
    pub fn create(
        dir: impl AsRef<Path>,
        volumes: &[VolumeSpec],
    ) -> Result<ReplicaStore, ReplicaError> {
        crate::recover::create(dir.as_ref(), volumes, rand::random(), 0)
    }

    /// [`ReplicaStore::create`] for a group that already has a history of
    /// PITs (a reverse makes the old primary the replica): the base stands
    /// for the group as of PIT `after`, so the first PIT committed here is
    /// `after + 1` and a group's PIT ids never start again at 1.
    pub fn create_after(
        dir: impl AsRef<Path>,
        volumes: &[VolumeSpec],
        after: u64,
    ) -> Result<ReplicaStore, ReplicaError> {
        crate::recover::create(dir.as_ref(), volumes, rand::random(), after)
    }

    /// [`ReplicaStore::create`] with a given identity instead of a random
    /// one (e.g. the replication group's id, or a fixed one in tests).
    pub fn create_with_uuid(
        dir: impl AsRef<Path>,
        volumes: &[VolumeSpec],
        uuid: [u8; 16],
    ) -> Result<ReplicaStore, ReplicaError> {
        crate::recover::create(dir.as_ref(), volumes, uuid, 0)
    }

    /// Opens a store and recovers from any interrupted operation: deletes
    /// staging, finishes merges, deletes superseded directories, checks
    /// every manifest and segment index (damaged PITs are reported by
    /// [`ReplicaStore::damaged`]).
    pub fn open(dir: impl AsRef<Path>) -> Result<ReplicaStore, ReplicaError> {
        crate::recover::open(dir.as_ref())
    }

    /// Creates a store whose committed state — `store.meta`, base images
    /// as chunk objects, PIT segments and manifests — lives in `objects`
    /// (which must hold no object yet), with the local `work_dir` (created
    /// if missing) for what is not committed: the lock, the PIT being
    /// written, and the journal of sync and continuous groups. See the
    /// crate docs, "Stores in an object store". `uuid`: the store's
    /// identity (`None`: random); `after`: as [`ReplicaStore::create_after`]
    /// (0: a new group).
    pub fn create_in(
        objects: Arc<dyn offsite_objects::ObjectStore>,
        work_dir: impl AsRef<Path>,
        volumes: &[VolumeSpec],
        uuid: Option<[u8; 16]>,
        after: u64,
    ) -> Result<ReplicaStore, ReplicaError> {
        crate::recover::create_objects(
            objects,
            work_dir.as_ref(),
            volumes,
            uuid.unwrap_or_else(rand::random),
            after,
        )
    }

    /// Opens a store created by [`ReplicaStore::create_in`], recovering
    /// from any interrupted operation as [`ReplicaStore::open`] does.
    /// `work_dir` is created if missing (a site attaching an existing
    /// store); it must not be shared with another store.
    pub fn open_in(
        objects: Arc<dyn offsite_objects::ObjectStore>,
        work_dir: impl AsRef<Path>,
    ) -> Result<ReplicaStore, ReplicaError> {
        crate::recover::open_objects(objects, work_dir.as_ref())
    }

    /// Installs the check asked before each commit point of a store in an
    /// object store (a PIT's first upload and its manifest, a merge's
    /// start, a name's change, a base's adoption): see [`CommitFence`].
    /// Ignored for a directory store.
    pub fn set_commit_fence(&self, fence: Arc<dyn CommitFence>) {
        if let Backing::Objects(o) = &self.inner.backing {
            *o.fence.write().unwrap_or_else(|e| e.into_inner()) = Some(fence);
        }
    }

    /// The object store holding the committed state (`None`: a directory
    /// store).
    pub fn object_store(&self) -> Option<&Arc<dyn offsite_objects::ObjectStore>> {
        match &self.inner.backing {
            Backing::Dir => None,
            Backing::Objects(o) => Some(&o.store),
        }
    }

    /// Numbers the next commit after `after` at the earliest, when the
    /// group's history went on elsewhere (a reverse made another site's
    /// store the replica for a while): a group's PIT ids never restart.
    /// The gap needs no record: the next PIT's directory names its id, and
    /// its range starts right after this store's tip, so the chain still
    /// tiles.
    pub fn number_after(&self, after: u64) {
        let mut ops = self.inner.lock_ops();
        ops.next_id = ops.next_id.max(after.saturating_add(1));
    }

    /// The store directory (for a store in an object store: the local
    /// working directory).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The store's random identity (in every manifest and segment).
    pub fn store_uuid(&self) -> [u8; 16] {
        self.inner.uuid
    }

    /// The group's volumes, in order.
    pub fn volumes(&self) -> &[VolumeSpec] {
        &self.inner.specs
    }

    /// Visible PITs, oldest first.
    pub fn pits(&self) -> Vec<PitInfo> {
        let st = self.inner.read_state();
        st.chain.iter().map(|p| p.info(&self.inner.vols)).collect()
    }

    /// The newest visible PIT.
    pub fn newest(&self) -> Option<PitInfo> {
        let st = self.inner.read_state();
        st.chain.last().map(|p| p.info(&self.inner.vols))
    }

    /// PITs found damaged at open, and the newer ones depending on them.
    pub fn damaged(&self) -> Vec<DamagedPit> {
        self.inner.read_state().damaged.clone()
    }

    /// The base image of `volume` (it need not exist as a volume of the
    /// group) of a directory store (a store in an object store keeps its
    /// base as chunk objects; use [`ReplicaStore::adopt_base`] there). A seed image may be put there (same size, raw) **while the
    /// store is closed** and before the first PIT; an open store keeps its
    /// base images open.
    pub fn base_path(&self, volume: &str) -> PathBuf {
        self.inner
            .path(crate::chain::BASE_DIR)
            .join(format!("{volume}.img"))
    }

    /// Starts a new PIT. One writer at a time ([`ReplicaError::Busy`]).
    pub fn begin_pit(&self) -> Result<PitWriter, ReplicaError> {
        PitWriter::begin(self.inner.clone())
    }

    /// Reads `buf.len()` bytes at `offset` of `volume` as of PIT `pit`
    /// (`None`: the base alone). Any offset and length inside the volume.
    pub fn read(
        &self,
        pit: Option<PitId>,
        volume: &str,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ReplicaError> {
        let inner = &*self.inner;
        let v = inner.vol_index(volume)?;
        let vol = &inner.vols[v];
        let len = buf.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > vol.spec.size_bytes)
        {
            return Err(ReplicaError::OutOfRange {
                volume: volume.to_string(),
                what: format!("bytes {offset}+{len}"),
                size: vol.spec.size_bytes,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let st = inner.read_state();
        read_view(inner, view(&st, pit)?, v, offset, buf)
    }

    /// The first byte at or after `offset` of `volume` as of `pit` (`None`:
    /// the base alone) that may not be zero, or `None` when only zeroes
    /// follow: the nearer of the base image's next data (`SEEK_DATA`) and
    /// the first data entry at or after it in the view's segments. Zero
    /// entries over base data only make it say "data" early, never late.
    /// Lets a promoted volume be flattened without reading the holes.
    pub fn next_data(
        &self,
        pit: Option<PitId>,
        volume: &str,
        offset: u64,
    ) -> Result<Option<u64>, ReplicaError> {
        let inner = &*self.inner;
        let v = inner.vol_index(volume)?;
        let vol = &inner.vols[v];
        let size = vol.spec.size_bytes;
        if offset >= size {
            return Ok(None);
        }
        let st = inner.read_state();
        next_data_view(inner, view(&st, pit)?, v, offset)
    }

    /// BLAKE3 of each block in `blocks` of `volume` as of `pit` (`None`:
    /// the base). Segment blocks use their stored hashes (checked against
    /// the data by reads and [`ReplicaStore::verify_pit`]); base blocks are
    /// read and hashed, except the base image's holes, which are zeroes
    /// without being read ([`base_hashes`]).
    pub fn block_hashes(
        &self,
        pit: Option<PitId>,
        volume: &str,
        blocks: Range<u64>,
    ) -> Result<Vec<[u8; 32]>, ReplicaError> {
        let inner = &*self.inner;
        let v = inner.vol_index(volume)?;
        let vol = &inner.vols[v];
        if blocks.start > blocks.end || blocks.end > vol.nblocks {
            return Err(ReplicaError::OutOfRange {
                volume: volume.to_string(),
                what: format!("blocks {}..{}", blocks.start, blocks.end),
                size: vol.spec.size_bytes,
            });
        }
        let st = inner.read_state();
        hashes_view(inner, view(&st, pit)?, v, blocks)
    }

    /// Removes PIT `id`: the oldest is merged into the base, any other into
    /// the next PIT (whose blocks win). The newest PIT can be removed only
    /// when it is the only one ([`ReplicaError::NewestPit`]). Crash-safe;
    /// after a crash, open finishes or forgets the removal, and calling it
    /// again completes it.
    pub fn remove_pit(&self, id: PitId) -> Result<(), ReplicaError> {
        crate::merge::remove_pit(&self.inner, id)
    }

    /// Blocks of `volume` that PITs newer than `pit` changed: where the
    /// newest PIT differs from PIT `pit` (the blocks a promotion of `pit`
    /// rolls back, which reverse replication must send to the old primary).
    pub fn blocks_after(&self, pit: PitId, volume: &str) -> Result<Vec<u64>, ReplicaError> {
        let inner = &*self.inner;
        let v = inner.vol_index(volume)?;
        let st = inner.read_state();
        let pos = st.position(pit)?;
        let mut out = Vec::new();
        for p in &st.chain[pos + 1..] {
            let seg = &p.segs[v];
            out.extend((0..seg.len()).map(|i| seg.block(i)));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Sets or clears the name of PIT `id` (durable manifest rewrite).
    pub fn set_pit_name(&self, id: PitId, name: Option<String>) -> Result<(), ReplicaError> {
        let inner = &*self.inner;
        if let Some(n) = &name {
            validate_pit_name(n).map_err(ReplicaError::invalid)?;
        }
        inner.check_poison()?;
        let _ops = inner.lock_ops();
        inner.check_poison()?;
        let pit = {
            let st = inner.read_state();
            st.chain[st.position(id)?].clone()
        };
        if let Backing::Objects(o) = &inner.backing {
            o.check_fence()?;
        }
        let mut new = (*pit).clone();
        new.name = name;
        let bytes = encode_manifest(&new.manifest(inner.uuid));
        let r = match &inner.backing {
            Backing::Dir => {
                fsx::replace_file(&pit.dir.join(MANIFEST_FILE), &bytes).map_err(Into::into)
            }
            // A put replaces an object atomically.
            Backing::Objects(o) => o.put(
                &pit_key(&pit_dir_name(pit.id, pit.first), MANIFEST_FILE),
                &bytes,
            ),
        };
        r.map_err(|e| inner.poison(e))?;
        let mut st = inner.write_state();
        let pos = st.position(id)?;
        st.chain[pos] = Arc::new(new);
        Ok(())
    }

    /// Checks every data block of PIT `id`'s own segments against its
    /// BLAKE3 hash (the cheap checks ran at open).
    pub fn verify_pit(&self, id: PitId) -> Result<(), ReplicaError> {
        let segs = {
            let st = self.inner.read_state();
            st.chain[st.position(id)?].segs.clone()
        };
        for seg in segs.iter() {
            seg.verify_data()?;
        }
        Ok(())
    }

    /// Writes `data` at `offset` of `volume`'s base image, for the initial
    /// copy; allowed only while no PIT exists. All-zero blocks become holes
    /// instead of being written. Not durable until
    /// [`ReplicaStore::sync_base`] (or the first commit, which syncs it).
    pub fn write_base(&self, volume: &str, offset: u64, data: &[u8]) -> Result<(), ReplicaError> {
        let inner = &*self.inner;
        let v = inner.vol_index(volume)?;
        let vol = &inner.vols[v];
        let len = data.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > vol.spec.size_bytes)
        {
            return Err(ReplicaError::OutOfRange {
                volume: volume.to_string(),
                what: format!("bytes {offset}+{len}"),
                size: vol.spec.size_bytes,
            });
        }
        inner.check_poison()?;
        inner.check_undamaged()?;
        let mut ops = inner.lock_ops();
        inner.check_poison()?;
        if let Some(p) = inner.read_state().chain.last() {
            return Err(ReplicaError::BaseSealed {
                newest: PitId(p.id),
            });
        }
        // A checkpoint image reading the base would see it change.
        inner.check_unpinned_below(u64::MAX)?;
        ops.base_dirty = true;
        let files = match &vol.base {
            BaseImg::File(files) => current(files),
            BaseImg::Chunks(c) => return c.write(data, offset).map_err(|e| inner.poison(e)),
        };
        // The base stays as thin as the data: all-zero blocks are not
        // written but made holes (punched where the base held data, as a
        // seeded base may), so a full copy or a seed with zero blocks does
        // not allocate them.
        let bs = vol.bs() as u64;
        let mut at = offset;
        for (zero, run) in thin_runs(data, offset, bs) {
            let r = if zero {
                zero_base(&files.file, &vol.base_path, at, run.len() as u64)
            } else {
                write_base_run(&files, &vol.base_path, run, at)
            };
            r.map_err(|e| inner.poison(e))?;
            at += run.len() as u64;
        }
        Ok(())
    }

    /// Makes every [`ReplicaStore::write_base`] so far durable.
    pub fn sync_base(&self) -> Result<(), ReplicaError> {
        let inner = &*self.inner;
        inner.check_poison()?;
        let mut ops = inner.lock_ops();
        inner.check_poison()?;
        inner.sync_base().map_err(|e| inner.poison(e))?;
        ops.base_dirty = false;
        Ok(())
    }

    /// Makes the raw image at `image` the base image of `volume` by renaming
    /// it into the store — a seed carried to this site then costs no copy.
    /// Only before the first PIT (the base is then nothing but an initial
    /// state that a seeded comparison corrects), and only for an image of
    /// exactly the volume's size on the store's file system (else
    /// [`ReplicaError::Io`] with `CrossesDevices`, and the caller copies).
    ///
    /// In an object store, the image is uploaded chunk by chunk instead
    /// (all-zero chunks are not stored) and left where it is: the caller
    /// deletes it once this returns.
    ///
    /// Ordering: 1. rename `image` over `base/NAME.img` (atomic: a crash
    /// leaves the old or the new base, both valid before the first PIT);
    /// 2. fsync `base/` and the image's old directory; 3. switch the open
    /// descriptors.
    pub fn adopt_base(&self, volume: &str, image: &Path) -> Result<(), ReplicaError> {
        let inner = &*self.inner;
        let v = inner.vol_index(volume)?;
        let vol = &inner.vols[v];
        inner.check_poison()?;
        let _ops = inner.lock_ops();
        if let Some(p) = inner.read_state().chain.last() {
            return Err(ReplicaError::BaseSealed {
                newest: PitId(p.id),
            });
        }
        inner.check_unpinned_below(u64::MAX)?;
        if let Backing::Objects(o) = &inner.backing {
            o.check_fence()?;
        }
        let len = std::fs::metadata(image)
            .map_err(|e| ReplicaError::io("stat", image, e))?
            .len();
        if len != vol.spec.size_bytes {
            return Err(ReplicaError::invalid(format!(
                "seed image {} is {len} bytes; volume {volume:?} has {}",
                image.display(),
                vol.spec.size_bytes
            )));
        }
        let slot = match &vol.base {
            BaseImg::File(files) => files,
            BaseImg::Chunks(c) => {
                let f = File::open(image).map_err(|e| ReplicaError::io("open", image, e))?;
                return c.adopt(&f, image).map_err(|e| inner.poison(e));
            }
        };
        let base_dir = vol
            .base_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        // Same file system, or the rename fails with EXDEV and nothing changed.
        fsx::rename(image, &vol.base_path)?; // 1
        fsx::sync_dir(&base_dir).map_err(|e| inner.poison(e))?; // 2
        // The image's new name is durable (2); its old one lingering after
        // a crash is harmless (a seed's marker says it was moved).
        if let Some(from) = image.parent() {
            let _ = fsx::sync_dir(from);
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&vol.base_path)
            .map_err(|e| inner.poison(ReplicaError::io("open", &vol.base_path, e)))?;
        let files = Arc::new(BaseFiles {
            file,
            direct: crate::recover::open_direct(&vol.base_path),
        });
        *slot.write().unwrap_or_else(PoisonError::into_inner) = files; // 3
        Ok(())
    }

    /// Deletes the damaged PITs reported by [`ReplicaStore::damaged`]
    /// (newest first) and returns their ids. Afterwards the newest good PIT
    /// is the state the next delta must be computed against.
    pub fn discard_damaged(&self) -> Result<Vec<PitId>, ReplicaError> {
        let inner = &*self.inner;
        inner.check_poison()?;
        let _ops = inner.lock_ops();
        inner.check_poison()?;
        let damaged = inner.read_state().damaged.clone();
        if damaged.is_empty() {
            return Ok(Vec::new());
        }
        let result = (|| {
            for d in damaged.iter().rev() {
                tracing::warn!(pit = %d.id, path = %d.path.display(), "discarding damaged PIT: {}", d.why);
                match &inner.backing {
                    Backing::Dir => fsx::remove_tree(&d.path)?,
                    Backing::Objects(o) => {
                        let name = d
                            .path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .unwrap_or_default();
                        o.delete_pit(name)?;
                    }
                }
            }
            match &inner.backing {
                Backing::Dir => Ok(fsx::sync_dir(&inner.path(PITS_DIR))?),
                Backing::Objects(_) => Ok::<(), ReplicaError>(()),
            }
        })();
        result.map_err(|e| inner.poison(e))?;
        inner.write_state().damaged.clear();
        Ok(damaged.into_iter().map(|d| d.id).collect())
    }
}

/// Splits `data`, the bytes at `offset` of a volume, at every multiple of
/// `bs` into maximal runs of all-zero and of other blocks, in order.
fn thin_runs(data: &[u8], offset: u64, bs: u64) -> Vec<(bool, &[u8])> {
    // (zero, start, end) in `data`.
    let mut runs: Vec<(bool, usize, usize)> = Vec::new();
    let mut i = 0usize;
    while i < data.len() {
        let at = offset + i as u64;
        let next = (((at / bs + 1) * bs - offset) as usize).min(data.len());
        let zero = crate::writer::is_zero(&data[i..next]);
        match runs.last_mut() {
            Some((z, _, end)) if *z == zero => *end = next,
            _ => runs.push((zero, i, next)),
        }
        i = next;
    }
    runs.into_iter()
        .map(|(zero, a, b)| (zero, &data[a..b]))
        .collect()
}

/// Makes `len` bytes at `offset` of a base image read as zeroes: left alone
/// where the image holds no data already, punched elsewhere.
fn zero_base(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), ReplicaError> {
    let (data, _) =
        data_extent(file, offset, offset + len).map_err(|e| ReplicaError::io("seek", path, e))?;
    if data < offset + len {
        fsx::punch_hole(file, path, offset, len)?;
    }
    Ok(())
}

/// Writes `data` at `offset` of a base image, through its `O_DIRECT`
/// descriptor when the range is aligned for it.
fn write_base_run(
    files: &BaseFiles,
    path: &Path,
    data: &[u8],
    offset: u64,
) -> Result<(), ReplicaError> {
    match &files.direct {
        Some(direct)
            if offset.is_multiple_of(DIRECT_ALIGN)
                && (data.len() as u64).is_multiple_of(DIRECT_ALIGN) =>
        {
            // O_DIRECT wants the memory aligned too: copy into an
            // aligned window of a slightly larger buffer.
            let mut scratch = vec![0u8; data.len() + DIRECT_ALIGN as usize];
            let start = scratch.as_ptr().align_offset(DIRECT_ALIGN as usize);
            let window = &mut scratch[start..start + data.len()];
            window.copy_from_slice(data);
            Ok(fsx::write_at(direct, path, window, offset)?)
        }
        _ => Ok(fsx::write_at(&files.file, path, data, offset)?),
    }
}

/// Reads `buf.len()` bytes at `offset` of volume `v` as of `view` (the
/// PITs of a state, oldest first; empty: the base); the range is checked.
pub(crate) fn read_view(
    inner: &Inner,
    view: &[Arc<Pit>],
    v: usize,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), ReplicaError> {
    let vol = &inner.vols[v];
    let len = buf.len() as u64;
    let bs = vol.bs() as u64;
    let (b0, b1) = (offset / bs, (offset + len).div_ceil(bs));
    let src = resolve(view, v, b0, b1);
    let chunk = (CHUNK_BYTES / vol.bs()).max(1);
    // Whole blocks are read straight into `buf`; a partial block at
    // either end goes through a scratch buffer (flattening, read-ahead and
    // NBD reads of whole blocks copy nothing more than the read itself).
    let aligned = offset.is_multiple_of(bs) && len.is_multiple_of(bs);
    let mut scratch = if aligned {
        Vec::new()
    } else {
        vec![0u8; src.len().min(chunk) * vol.bs()]
    };
    let mut i = 0;
    while i < src.len() {
        let j = group_end(&src, i, chunk);
        let n = j - i;
        let out = if aligned {
            &mut buf[i * vol.bs()..j * vol.bs()]
        } else {
            &mut scratch[..n * vol.bs()]
        };
        match src[i] {
            Src::Base => vol.read_base(out, (b0 + i as u64) * bs)?,
            Src::Seg(p, pos) => {
                let seg = &view[p].segs[v];
                for run in seg.runs(pos..pos + n, chunk) {
                    let at = (run.pos - pos) * vol.bs();
                    let dst = &mut out[at..at + run.len * vol.bs()];
                    if run.zero {
                        dst.fill(0);
                    } else {
                        seg.read_run(run, dst)?;
                    }
                }
            }
        }
        if !aligned {
            // Copy the overlap of blocks b0+i..b0+j with the request.
            let start = (b0 + i as u64) * bs;
            let lo = start.max(offset);
            let hi = (start + n as u64 * bs).min(offset + len);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&scratch[(lo - start) as usize..(hi - start) as usize]);
        }
        i = j;
    }
    Ok(())
}

/// [`ReplicaStore::next_data`] of volume `v` as of `view`.
pub(crate) fn next_data_view(
    inner: &Inner,
    view: &[Arc<Pit>],
    v: usize,
    offset: u64,
) -> Result<Option<u64>, ReplicaError> {
    let vol = &inner.vols[v];
    let size = vol.spec.size_bytes;
    let bs = vol.bs() as u64;
    let (base, _) = vol.base_extent(offset, size)?;
    // The nearest so far (`size`: none); a segment's scan stops there,
    // so runs of zero entries past it are not walked.
    let mut next = base;
    let first = offset / bs;
    for p in view {
        let seg = &p.segs[v];
        for pos in seg.range(first, vol.nblocks) {
            let at = (seg.block(pos) * bs).max(offset);
            if at >= next {
                break;
            }
            if !seg.is_zero(pos) {
                next = at;
                break;
            }
        }
    }
    Ok((next < size).then_some(next))
}

/// [`ReplicaStore::block_hashes`] of volume `v` as of `view`; the range
/// is checked.
pub(crate) fn hashes_view(
    inner: &Inner,
    view: &[Arc<Pit>],
    v: usize,
    blocks: Range<u64>,
) -> Result<Vec<[u8; 32]>, ReplicaError> {
    let vol = &inner.vols[v];
    let src = resolve(view, v, blocks.start, blocks.end);
    let mut out = Vec::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        let j = group_end(&src, i, src.len());
        match src[i] {
            Src::Base => base_hashes(vol, blocks.start + i as u64, (j - i) as u64, &mut out)?,
            Src::Seg(p, pos) => out.extend(view[p].segs[v].hashes(pos, j - i)?),
        }
        i = j;
    }
    Ok(out)
}

/// The PITs whose segments make up the view of `pit` (oldest first).
fn view(st: &State, pit: Option<PitId>) -> Result<&[Arc<Pit>], ReplicaError> {
    match pit {
        None => Ok(&[]),
        Some(id) => Ok(&st.chain[..=st.position(id)?]),
    }
}

/// The source of each block in `b0..b1` of volume `v`: newest segment wins.
fn resolve(view: &[Arc<Pit>], v: usize, b0: u64, b1: u64) -> Vec<Src> {
    let mut src = vec![Src::Base; (b1 - b0) as usize];
    for (p, pit) in view.iter().enumerate() {
        let seg = &pit.segs[v];
        for pos in seg.range(b0, b1) {
            src[(seg.block(pos) - b0) as usize] = Src::Seg(p, pos);
        }
    }
    src
}

/// Bytes of the base read per `pread` when hashing.
const HASH_READ_BYTES: u64 = 8 << 20;

/// Appends the BLAKE3 of `n` blocks of `vol`'s base image from block
/// `first` to `out`. The image's holes (`SEEK_DATA`/`SEEK_HOLE`) take the
/// volume's precomputed zero-block hash without being read; its data is
/// read [`HASH_READ_BYTES`] at a time and hashed by [`hash_blocks`].
fn base_hashes(vol: &Vol, first: u64, n: u64, out: &mut Vec<[u8; 32]>) -> Result<(), ReplicaError> {
    let bs = vol.bs() as u64;
    let end = (first + n) * bs;
    let mut at = first * bs;
    let mut buf = Vec::new();
    while at < end {
        let (data, data_end) = vol.base_extent(at, end)?;
        // Blocks before the extent are a hole; a block the extent only
        // starts or ends in is read.
        let data = data / bs * bs;
        out.extend(std::iter::repeat_n(
            vol.zero_hash,
            ((data - at) / bs) as usize,
        ));
        at = data;
        let data_end = data_end.div_ceil(bs).saturating_mul(bs).min(end);
        while at < data_end {
            let len = (data_end - at).min(HASH_READ_BYTES.max(bs) / bs * bs);
            buf.resize(len as usize, 0);
            vol.read_base(&mut buf, at)?;
            hash_blocks(&buf, vol.bs(), &vol.zero_hash, out);
            at += len;
        }
    }
    Ok(())
}

/// The first data extent of `file` that ends after `at`, clipped to
/// `at..end`: `(start, end)`, or `(end, end)` when only holes follow.
/// Filesystems without hole reporting say "data" everywhere.
pub(crate) fn data_extent(file: &File, at: u64, end: u64) -> io::Result<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    use rustix::io::Errno;
    let data = match seek(file, SeekFrom::Data(at)) {
        Ok(d) => d.clamp(at, end),
        Err(Errno::NXIO) => return Ok((end, end)),
        Err(Errno::INVAL) => return Ok((at, end)),
        Err(e) => return Err(e.into()),
    };
    if data >= end {
        return Ok((end, end));
    }
    match seek(file, SeekFrom::Hole(data)) {
        Ok(h) => Ok((data, h.clamp(data, end).max(data + 1))),
        Err(Errno::NXIO | Errno::INVAL) => Ok((data, end)),
        Err(e) => Err(e.into()),
    }
}

/// Appends the BLAKE3 of each `bs`-byte block of `data` to `out`
/// (`zero_hash` for all-zero blocks, without hashing them), on up to as
/// many threads as there are CPUs when `data` is large.
pub(crate) fn hash_blocks(data: &[u8], bs: usize, zero_hash: &[u8; 32], out: &mut Vec<[u8; 32]>) {
    // The zero test ORs 64 bytes at a time, which vectorizes.
    let hash = |b: &[u8]| {
        if b.chunks(64).all(|c| c.iter().fold(0, |a, &x| a | x) == 0) {
            *zero_hash
        } else {
            *blake3::hash(b).as_bytes()
        }
    };
    let blocks = data.len() / bs;
    // Small inputs first: asking for the parallelism reads cgroup and proc
    // files (tens of µs), which a journal image's per-record calls would
    // pay hundreds of thousands of times.
    if data.len() < (2 << 20) {
        out.extend(data.chunks(bs).map(hash));
        return;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    if threads < 2 {
        out.extend(data.chunks(bs).map(hash));
        return;
    }
    let per = blocks.div_ceil(threads) * bs;
    let parts: Vec<Vec<[u8; 32]>> = std::thread::scope(|s| {
        let handles: Vec<_> = data
            .chunks(per)
            .map(|part| s.spawn(move || part.chunks(bs).map(hash).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    for p in parts {
        out.extend(p);
    }
}

/// End of the group starting at `i`: consecutive blocks from the base, or
/// from one segment with consecutive entries; at most `max` blocks.
fn group_end(src: &[Src], i: usize, max: usize) -> usize {
    let mut j = i + 1;
    while j < src.len() && j - i < max {
        let same = match (src[i], src[j]) {
            (Src::Base, Src::Base) => true,
            (Src::Seg(p, pos), Src::Seg(q, qos)) => p == q && qos == pos + (j - i),
            _ => false,
        };
        if !same {
            break;
        }
        j += 1;
    }
    j
}
