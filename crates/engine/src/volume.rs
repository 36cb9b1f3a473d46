//! A live volume: its data file joined with its change tracker. This is
//! where an NBD write becomes a tracked write: the tracker marks the blocks
//! (durably covering their extent in the activity log) *before* the data
//! reaches the file, so no acknowledged write can escape the dirty set.
//!
//! It is also where a replication cut stays exact while it is shipped:
//! writes pass a barrier that a group cut closes for the instant of the
//! swap, and a write into a not-yet-shipped block of the cut first saves
//! that block's cut-time contents (copy-on-write).
//!
//! A volume's bytes are a plain raw file, or — for a replica promoted by
//! failover — a layered volume ([`offsite_volume_file::Layered`]): a PIT of the
//! replica store as read-only lower layer plus a private top layer, so
//! promotion takes no copy; a background flattener fills the top, and a
//! flat layered volume becomes a plain file at the next start. Either way
//! the change tracker starts with the volume, so after a promotion it
//! holds exactly the blocks written since (what reverse replication
//! sends). A volume can be fenced (writes refused) while a planned
//! failover hands its group to the other site.
//!
//! While its group cannot replicate (a cycle failed, or the daemon started
//! and no cycle has committed yet) a volume is *isolated*: every write is
//! also marked in a second change tracker (`STEM-iso.{cbt,al}`, crash-safe
//! like the first). Those are the writes the replica may never have seen
//! while it possibly took over — the split-brain evidence `reverse`
//! checks. The next committed cycle ends the isolation.
//!
//! A volume of a synchronous group has a [`WriteMirror`]: each write is
//! applied locally and queued for the replica's log in the group's one
//! write order (under the mirror's lock, so the log applies overlapping
//! writes in the order the file saw them), and is acknowledged only when
//! the mirror says the replica holds it — or when the group's link-loss
//! policy decides otherwise. The wait happens after the write barrier is
//! released, so a cut (resynchronization) never waits behind a stalled
//! write, and it is deferred to the NBD connection's completer
//! ([`offsite_nbd::BlockDevice::write_at_deferred`]), so one connection
//! keeps many writes in flight and they share the replica's fsyncs.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use std::sync::Arc;

use offsite_catalog::VolumeRow;
use offsite_cbt::{ChangeTracker, Geometry, OpenReport, RoaringBitmap};
use offsite_replica_store::{CheckpointImage, PitId, ReplicaStore};
use offsite_volume_file::{Layered, Lower, VolumeFile};

use crate::EngineError;
use crate::layout::Layout;

/// Where a volume's bytes live.
#[derive(Debug)]
pub enum VolumeData {
    /// A raw sparse file.
    Plain(VolumeFile),
    /// A promoted replica: a PIT below, the writes (and flattened blocks)
    /// in a private top layer.
    Layered(Box<Layered>),
}

impl VolumeData {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        match self {
            VolumeData::Plain(f) => f.size(),
            VolumeData::Layered(l) => l.size(),
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match self {
            VolumeData::Plain(f) => f.read_at(buf, offset),
            VolumeData::Layered(l) => l.read_at(buf, offset),
        }
    }

    /// Writes all of `buf` at `offset` (durable at [`VolumeData::sync`]).
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        match self {
            VolumeData::Plain(f) => f.write_at(buf, offset),
            VolumeData::Layered(l) => l.write_at(buf, offset, false),
        }
    }

    /// Makes a range read back as zeroes.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        match self {
            VolumeData::Plain(f) => f.punch_hole(offset, len),
            VolumeData::Layered(l) => l.write_zeroes(offset, len, false),
        }
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> io::Result<()> {
        match self {
            VolumeData::Plain(f) => f.sync(),
            VolumeData::Layered(l) => l.flush(),
        }
    }

    /// The first byte at or after `offset` that may hold data (holes of a
    /// plain file are skipped; a layered volume looks at its top where it
    /// holds the blocks and at its PIT elsewhere).
    pub fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match self {
            VolumeData::Plain(f) => f.next_data(offset),
            VolumeData::Layered(l) => l.next_data(offset),
        }
    }

    /// The allocation of `offset..offset + len` for NBD block status: a
    /// plain file's holes exactly (`SEEK_DATA`/`SEEK_HOLE`); a layered
    /// volume's from its [`Layered::next_data`], data runs measured in
    /// whole blocks (a hole shorter than a block is reported as data,
    /// which is correct).
    pub fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<offsite_nbd::Extent>> {
        match self {
            VolumeData::Plain(f) => offsite_nbd::extents_by_seek(
                offset,
                len,
                |at| f.next_data(at),
                |at| f.next_hole(at),
            ),
            VolumeData::Layered(l) => layered_block_status(l, offset, len),
        }
    }

    /// Whether zeroing deallocates (a metadata change) rather than writing
    /// zeroes.
    pub fn can_punch_holes(&self) -> bool {
        match self {
            VolumeData::Plain(f) => f.can_punch_holes(),
            VolumeData::Layered(l) => l.can_punch_holes(),
        }
    }

    /// Bytes on disk (a layered volume counts as fully allocated: its
    /// lower layer is another group's data).
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        match self {
            VolumeData::Plain(f) => f.allocated_bytes(),
            VolumeData::Layered(l) => Ok(l.size()),
        }
    }

    /// Path of a plain volume's data file; `None` for a layered volume,
    /// whose holes are not the volume's (its lower layer fills them).
    pub fn path(&self) -> Option<&Path> {
        match self {
            VolumeData::Plain(f) => Some(f.path()),
            VolumeData::Layered(_) => None,
        }
    }

    /// The layered volume, if this is one.
    pub fn layered(&self) -> Option<&Layered> {
        match self {
            VolumeData::Plain(_) => None,
            VolumeData::Layered(l) => Some(l),
        }
    }
}

/// Where a write's log records go, as the volume produces them: whole
/// blocks, in the order the file saw them. The sync mirror encodes each
/// record straight into the batch that travels to the replica, so a
/// write's bytes are copied once on their way from the NBD buffer to the
/// wire (no intermediate record list).
pub trait RecordSink {
    /// Blocks `first..first + count` now hold `data` (`count` blocks).
    fn data(&mut self, first: u64, count: u32, data: &[u8]);
    /// Blocks `first..first + count` are all zeroes now.
    fn zeroes(&mut self, first: u64, count: u32);
}

/// Where a synchronous group sends its volumes' writes (implemented by the
/// replication service).
pub trait WriteMirror: Send + Sync + std::fmt::Debug {
    /// Runs `apply` — the local write, which then gives its records to the
    /// sink — in the group's write order and queues the records for the
    /// replica. Returns a ticket for [`WriteMirror::wait`]. When `apply`
    /// fails, whatever it gave the sink is dropped and no ticket is issued.
    ///
    /// `hold`: more writes follow at once (the NBD server has them
    /// already); the mirror may keep this one queued to send with them
    /// rather than sending it alone. Held writes go out with the next
    /// submit without `hold`, or on [`WriteMirror::release`].
    fn submit(
        &self,
        volume: u16,
        hold: bool,
        apply: &mut dyn FnMut(&mut dyn RecordSink) -> io::Result<()>,
    ) -> io::Result<u64>;

    /// Sends the writes that [`submit`](Self::submit) held.
    fn release(&self);

    /// Returns once the write of `ticket` is durable at the replica, or the
    /// group's link-loss policy completes it (`degrade`) or fails it
    /// (`suspend-writes`, after its timeout).
    fn wait(&self, ticket: u64) -> io::Result<()>;

    /// Whether [`wait`](Self::wait) for `ticket` would return at once.
    fn ready(&self, ticket: u64) -> bool;

    /// Whether every write completes as soon as it is submitted (the
    /// mirror never makes one wait: continuous replication). The volume
    /// then answers the write at once, with no pending part: no hand-off
    /// to the NBD server's completer thread, which costs a thread wake-up
    /// per write.
    fn completes_at_once(&self) -> bool {
        false
    }
}

type Mirror = (Arc<dyn WriteMirror>, u16);

/// A mirrored write applied locally, waiting for its replica.
struct MirrorPending {
    mirror: Arc<dyn WriteMirror>,
    ticket: u64,
}

impl offsite_nbd::Pending for MirrorPending {
    fn ready(&self) -> bool {
        self.mirror.ready(self.ticket)
    }

    fn wait(self: Box<Self>) -> io::Result<()> {
        self.mirror.wait(self.ticket)
    }
}

/// PIT `pit` of `volume` in a replica store, as the lower layer of a
/// promoted volume or a test clone.
#[derive(Debug)]
pub struct PitLower {
    /// The store.
    pub store: Arc<ReplicaStore>,
    /// The PIT.
    pub pit: PitId,
    /// The volume's name in the store.
    pub volume: String,
    /// Read-ahead for a store in an object store.
    pub(crate) read_ahead: Arc<ReadAhead>,
}

/// Bytes one read-ahead fetch asks for (one ranged GET when none of it is
/// cached): a base chunk's object whole. Each GET costs the store a lookup
/// of the object's metadata (a quorum read between Garage's nodes), so
/// hydration asks for few large pieces, as a downloading client does.
const READ_AHEAD_PIECE: u64 = 4 << 20;
/// Read-ahead fetches in flight per lower: 8 MiB ahead of the flattener,
/// and four volumes hydrating at once stay well within the store's 64 MiB
/// cache.
const READ_AHEAD_IN_FLIGHT: usize = 2;

/// What a [`PitLower`] has asked to be fetched ahead (see
/// [`Lower::prefetch`]): the flattener reads a volume front to back, one
/// 1 MiB step at a time, and in a bucket each step would wait for its own
/// GET; fetched ahead by a few threads, the steps find their bytes in the
/// store's cache and the copy runs at the bucket's throughput.
#[derive(Debug, Default)]
pub(crate) struct ReadAhead {
    /// Pieces below this one have been fetched or are being fetched.
    next: std::sync::atomic::AtomicU64,
    in_flight: std::sync::atomic::AtomicUsize,
}

impl PitLower {
    /// PIT `pit` of `volume` in `store`.
    pub fn new(store: Arc<ReplicaStore>, pit: PitId, volume: String) -> PitLower {
        PitLower {
            store,
            pit,
            volume,
            read_ahead: Arc::default(),
        }
    }
}

impl Lower for PitLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.store
            .read(Some(self.pit), &self.volume, offset, buf)
            .map_err(|e| {
                io::Error::other(format!("reading PIT {} of {}: {e}", self.pit, self.volume))
            })
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.store
            .next_data(Some(self.pit), &self.volume, offset)
            .map_err(|e| {
                io::Error::other(format!(
                    "looking for data in PIT {} of {}: {e}",
                    self.pit, self.volume
                ))
            })
    }

    fn copy_on_read(&self) -> bool {
        // A bucket: what the VM reads is kept in the volume (its local
        // cache) rather than fetched again after the store's cache let it go.
        self.store.object_store().is_some()
    }

    fn prefetch(&self, offset: u64, len: u64) {
        use std::sync::atomic::Ordering;
        if self.store.object_store().is_none() {
            return; // a directory store: the page cache reads ahead
        }
        let Some(size) = self
            .store
            .volumes()
            .iter()
            .find(|v| v.name == self.volume)
            .map(|v| v.size_bytes)
        else {
            return;
        };
        let ra = &self.read_ahead;
        let first = (offset / READ_AHEAD_PIECE).max(ra.next.load(Ordering::SeqCst));
        let end = offset
            .saturating_add(len)
            .min(size)
            .div_ceil(READ_AHEAD_PIECE);
        for piece in first..end {
            if ra.in_flight.load(Ordering::SeqCst) >= READ_AHEAD_IN_FLIGHT {
                return; // the next step asks again
            }
            if ra.next.fetch_max(piece + 1, Ordering::SeqCst) > piece {
                continue; // asked already
            }
            ra.in_flight.fetch_add(1, Ordering::SeqCst);
            let (store, pit, volume, done) = (
                self.store.clone(),
                self.pit,
                self.volume.clone(),
                self.read_ahead.clone(),
            );
            let at = piece * READ_AHEAD_PIECE;
            let spawned = std::thread::Builder::new()
                .name("read-ahead".into())
                .spawn(move || {
                    let mut buf = vec![0u8; READ_AHEAD_PIECE.min(size - at) as usize];
                    // Only the store's cache keeps the bytes; a failure
                    // shows when the flattener reads them itself.
                    let _ = store.read(Some(pit), &volume, at, &mut buf);
                    done.in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            if spawned.is_err() {
                ra.in_flight.fetch_sub(1, Ordering::SeqCst);
                return;
            }
        }
    }
}

/// Volume `volume` of a journal checkpoint's image (a PIT's state plus
/// the journal's blocks up to the checkpoint), as the lower layer of a
/// promoted volume or a test clone. The image keeps the PIT it starts
/// from and the journal files it reads open (see
/// `offsite_replica_store::CheckpointImage`).
#[derive(Debug)]
pub struct CheckpointLower {
    /// The image, shared by every volume of the group.
    pub image: Arc<CheckpointImage>,
    /// The volume's name in the store.
    pub volume: String,
}

impl Lower for CheckpointLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.image.read(&self.volume, offset, buf).map_err(|e| {
            io::Error::other(format!(
                "reading checkpoint {} of {}: {e}",
                self.image.info().id,
                self.volume
            ))
        })
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.image.next_data(&self.volume, offset).map_err(|e| {
            io::Error::other(format!(
                "looking for data in checkpoint {} of {}: {e}",
                self.image.info().id,
                self.volume
            ))
        })
    }
}

/// A volume with its data and tracking state.
#[derive(Debug)]
pub struct Volume {
    row: VolumeRow,
    file: VolumeData,
    /// Writes are refused (a planned failover is handing the group over).
    fenced: AtomicBool,
    /// Why writes are refused, when not for a planned failover.
    fence_reason: Mutex<Option<String>>,
    tracker: ChangeTracker,
    /// Writes made while the group could not replicate (see module docs).
    iso: RwLock<Option<ChangeTracker>>,
    /// Served over NBD only once its content is complete (not while importing).
    ready: AtomicBool,
    /// Writes hold it shared; a replication cut holds it exclusively for
    /// the instant it swaps the dirty set, so no write straddles the cut.
    barrier: RwLock<()>,
    /// Set while a cut is being shipped: writes then preserve the cut's
    /// blocks they overwrite (copy-on-write) before changing them.
    cut_active: AtomicBool,
    cut: Mutex<Option<Cut>>,
    /// A sync group's mirror and this volume's number in the group.
    mirror: RwLock<Option<Mirror>>,
}

/// The state of a replication cut of one volume while it is shipped.
///
/// Invariant: for every block `b` of `blocks`, the image at the cut is
/// `saved[b]` if present, else the data file's block as long as `b` is
/// neither shipped nor overwritten since; a writer saves `b` (under the
/// `cut` lock) before overwriting it unless it was already shipped.
/// What a cut takes from the change tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CutKind {
    /// The changed blocks: dirty and in flight (an ordinary cycle).
    Changed,
    /// The changed blocks, with the whole image kept readable (verify).
    Full,
    /// Only the blocks written since the last [`Volume::resync_round`]:
    /// the cut that ends a resynchronization's rounds, into the same PIT.
    SinceRounds,
}

#[derive(Debug, Default)]
struct Cut {
    /// Preserve every block, shipped or not, so the whole image at the cut
    /// can be read back (verification).
    all: bool,
    blocks: RoaringBitmap,
    shipped: RoaringBitmap,
    /// Cut-time contents of blocks overwritten before they were shipped.
    /// Kept in memory: bounded by the cut's overwritten-before-shipped
    /// blocks (a spill file is future work for very write-heavy cycles).
    saved: HashMap<u32, Box<[u8]>>,
}

impl Volume {
    fn geometry(row: &VolumeRow) -> Geometry {
        Geometry {
            block_size: row.block_size,
            nblocks: row.size_bytes / u64::from(row.block_size),
        }
    }

    /// Creates the files of a new volume described by `row`.
    pub(crate) fn create(layout: &Layout, row: VolumeRow) -> Result<Volume, EngineError> {
        let data = layout.volume_data(row.id);
        let file = VolumeData::Plain(VolumeFile::create(&data, row.size_bytes)?);
        Self::with_new_tracker(layout, row, file, &data)
    }

    /// Creates a layered volume over `lower` (a promotion): no data is
    /// copied; the tracker starts empty.
    pub(crate) fn create_layered(
        layout: &Layout,
        row: VolumeRow,
        lower: Arc<dyn Lower>,
    ) -> Result<Volume, EngineError> {
        let dir = layout.volumes_dir();
        let stem = Layout::volume_stem(row.id);
        let layer = Layered::create(&dir, &stem, row.size_bytes, row.block_size, lower)
            .map_err(|e| EngineError::Invalid(format!("creating volume {}: {e}", row.name)))?;
        let top = dir.join(format!("{stem}.top"));
        Self::with_new_tracker(layout, row, VolumeData::Layered(Box::new(layer)), &top)
    }

    fn with_new_tracker(
        layout: &Layout,
        row: VolumeRow,
        file: VolumeData,
        data: &Path,
    ) -> Result<Volume, EngineError> {
        let tracker = match ChangeTracker::create(
            &layout.volumes_dir(),
            &Layout::volume_stem(row.id),
            Self::geometry(&row),
        ) {
            Ok(t) => t,
            Err(e) => {
                // Left behind, they would block the next volume given
                // this id: say so.
                if let Err(re) = VolumeFile::remove(data) {
                    tracing::warn!(volume = %row.name, error = %re, "removing the data file of a failed create");
                }
                if let Err(re) =
                    Layered::remove(&layout.volumes_dir(), &Layout::volume_stem(row.id))
                {
                    tracing::warn!(volume = %row.name, error = %re, "removing the layer files of a failed create");
                }
                return Err(e.into());
            }
        };
        let ready = AtomicBool::new(row.state == "ready");
        Ok(Volume {
            row,
            file,
            fenced: AtomicBool::new(false),
            fence_reason: Mutex::new(None),
            iso: RwLock::new(None),
            tracker,
            ready,
            barrier: RwLock::new(()),
            cut_active: AtomicBool::new(false),
            cut: Mutex::new(None),
            mirror: RwLock::new(None),
        })
    }

    /// Opens an existing volume (a layered one over `lower`); says how its
    /// tracking state was recovered.
    pub(crate) fn open(
        layout: &Layout,
        row: VolumeRow,
        lower: Option<Arc<dyn Lower>>,
    ) -> Result<(Volume, OpenReport), EngineError> {
        let file = match lower {
            None => VolumeData::Plain(VolumeFile::open(
                &layout.volume_data(row.id),
                row.size_bytes,
            )?),
            Some(lower) => VolumeData::Layered(Box::new(
                Layered::open(
                    &layout.volumes_dir(),
                    &Layout::volume_stem(row.id),
                    row.size_bytes,
                    row.block_size,
                    lower,
                )
                .map_err(|e| EngineError::Invalid(format!("opening volume {}: {e}", row.name)))?,
            )),
        };
        let (tracker, report) = ChangeTracker::open(
            &layout.volumes_dir(),
            &Layout::volume_stem(row.id),
            Self::geometry(&row),
        )?;
        let iso_stem = Self::iso_stem(row.id);
        let iso = if layout
            .volumes_dir()
            .join(format!("{iso_stem}.cbt"))
            .exists()
            || layout.volumes_dir().join(format!("{iso_stem}.al")).exists()
        {
            Some(ChangeTracker::open(&layout.volumes_dir(), &iso_stem, Self::geometry(&row))?.0)
        } else {
            None
        };
        let ready = AtomicBool::new(row.state == "ready");
        Ok((
            Volume {
                row,
                file,
                fenced: AtomicBool::new(false),
                fence_reason: Mutex::new(None),
                iso: RwLock::new(iso),
                tracker,
                ready,
                barrier: RwLock::new(()),
                cut_active: AtomicBool::new(false),
                cut: Mutex::new(None),
                mirror: RwLock::new(None),
            },
            report,
        ))
    }

    /// Deletes the files of volume `id`.
    pub(crate) fn remove_files(layout: &Layout, id: i64) -> Result<(), EngineError> {
        let data = layout.volume_data(id);
        VolumeFile::remove(&data).map_err(|e| EngineError::io("remove", &data, e))?;
        let dir = layout.volumes_dir();
        Layered::remove(&dir, &Layout::volume_stem(id))
            .map_err(|e| EngineError::io("remove layer files in", &dir, e))?;
        ChangeTracker::remove_files(&dir, &Self::iso_stem(id))
            .map_err(|e| EngineError::io("remove tracking files in", &dir, e))?;
        ChangeTracker::remove_files(&dir, &Layout::volume_stem(id))
            .map_err(|e| EngineError::io("remove tracking files in", &dir, e))
    }

    fn iso_stem(id: i64) -> String {
        format!("{}-iso", Layout::volume_stem(id))
    }

    /// Starts tracking writes as isolated (idempotent; durable on return).
    pub fn begin_isolation(&self, layout: &Layout) -> Result<(), EngineError> {
        let mut iso = self.iso.write().unwrap_or_else(|e| e.into_inner());
        if iso.is_none() {
            *iso = Some(ChangeTracker::create(
                &layout.volumes_dir(),
                &Self::iso_stem(self.row.id),
                Self::geometry(&self.row),
            )?);
        }
        Ok(())
    }

    /// The group replicates again: forget the isolated writes.
    pub fn end_isolation(&self, layout: &Layout) -> Result<(), EngineError> {
        let mut iso = self.iso.write().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = iso.take() {
            t.crash();
            let dir = layout.volumes_dir();
            ChangeTracker::remove_files(&dir, &Self::iso_stem(self.row.id))
                .map_err(|e| EngineError::io("remove tracking files in", &dir, e))?;
        }
        Ok(())
    }

    /// Blocks written while isolated (empty when not isolated).
    pub fn isolated_blocks(&self) -> RoaringBitmap {
        self.iso
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(ChangeTracker::snapshot)
            .unwrap_or_default()
    }

    /// Catalog row as of opening.
    pub fn row(&self) -> &VolumeRow {
        &self.row
    }

    /// Whether the volume's content is complete and may be served.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Name.
    pub fn name(&self) -> &str {
        &self.row.name
    }

    /// The change tracker.
    pub fn tracker(&self) -> &ChangeTracker {
        &self.tracker
    }

    /// The volume's bytes.
    pub fn file(&self) -> &VolumeData {
        &self.file
    }

    /// Attaches (or with `None` detaches) a sync group's write mirror;
    /// `index` is the volume's position in the group. Takes effect for the
    /// next write; [`crate::Site::cut_then`] attaches at an exact cut.
    pub fn set_mirror(&self, mirror: Option<(Arc<dyn WriteMirror>, u16)>) {
        *self.mirror.write().unwrap_or_else(|e| e.into_inner()) = mirror;
    }

    /// Whether writes are mirrored.
    pub fn is_mirrored(&self) -> bool {
        self.mirror
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Ends a seal cut ([`crate::Site::seal_cut`]): with `committed` the
    /// blocks are clean (the replica sealed them into a PIT).
    pub fn end_seal(&self, committed: bool) {
        if committed {
            self.tracker.finish_cut();
        }
    }

    /// Gives `sink` the whole blocks a write of `len` bytes at `offset`
    /// changed, as the log records them: `data` itself when
    /// block-aligned, zero records for whole zeroed blocks, else the
    /// blocks read back from the file (called right after the local write,
    /// in write order).
    fn mirror_records(
        &self,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        sink: &mut dyn RecordSink,
    ) -> io::Result<()> {
        let bs = self.block_size();
        if len == 0 {
            return Ok(());
        }
        let first = offset / bs;
        let end = (offset + len).div_ceil(bs);
        // Rare (unaligned writes, the partial ends of a zeroed range): the
        // blocks are read into a buffer of their own first.
        let read_back = |first: u64, count: u64, sink: &mut dyn RecordSink| -> io::Result<()> {
            let mut buf = vec![0u8; (count * bs) as usize];
            self.file.read_at(&mut buf, first * bs)?;
            sink.data(first, count as u32, &buf);
            Ok(())
        };
        let aligned = offset.is_multiple_of(bs) && len.is_multiple_of(bs);
        match data {
            Some(d) if aligned => {
                sink.data(first, (end - first) as u32, d);
                Ok(())
            }
            Some(_) => read_back(first, end - first, sink),
            None => {
                // Partial head and tail blocks carry data; whole blocks
                // between are a zero record (a trim of terabytes stays small).
                let whole_first = offset.div_ceil(bs);
                let whole_end = (offset + len) / bs;
                if whole_first >= whole_end {
                    return read_back(first, end - first, sink);
                }
                if first < whole_first {
                    read_back(first, 1, sink)?;
                }
                let mut b = whole_first;
                while b < whole_end {
                    let n = (whole_end - b).min(u64::from(u32::MAX));
                    sink.zeroes(b, n as u32);
                    b += n;
                }
                if whole_end < end {
                    read_back(whole_end, 1, sink)?;
                }
                Ok(())
            }
        }
    }

    /// A write (`data`) or write-zeroes (`None`) of `len` bytes at
    /// `offset`: tracked, copy-on-write for a running cut, applied, and for
    /// a sync group queued for the replica in write order; the returned
    /// pending part waits for the replica.
    fn change(
        &self,
        offset: u64,
        len: u64,
        data: Option<&[u8]>,
        fua: bool,
        hold: bool,
    ) -> io::Result<Option<Box<dyn offsite_nbd::Pending>>> {
        let apply = || match data {
            Some(buf) => self.file.write_at(buf, offset),
            None => self.file.punch_hole(offset, len),
        };
        let pending = {
            let _barrier = self.barrier.read().unwrap_or_else(|e| e.into_inner());
            self.check_fence()?;
            self.mark(offset, len)?;
            self.preserve(offset, len)?;
            match self.mirror() {
                None => {
                    apply()?;
                    None
                }
                Some((mirror, idx)) => {
                    let ticket = mirror.submit(idx, hold, &mut |sink| {
                        apply()?;
                        self.mirror_records(offset, len, data, sink)
                    })?;
                    (!mirror.completes_at_once()).then(|| {
                        Box::new(MirrorPending { mirror, ticket }) as Box<dyn offsite_nbd::Pending>
                    })
                }
            }
        };
        if fua {
            self.file.sync()?;
        }
        Ok(pending)
    }

    fn mirror(&self) -> Option<Mirror> {
        self.mirror
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Refuses (`true`) or allows writes.
    pub fn set_fenced(&self, fenced: bool) {
        *self.fence_reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.fenced.store(fenced, Ordering::Release);
    }

    /// Refuses writes, saying `why` (what happened and what to do) to the
    /// writer; [`Volume::set_fenced`]`(false)` lifts it.
    pub fn fence_because(&self, why: String) {
        *self.fence_reason.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.fenced.store(true, Ordering::Release);
    }

    /// Whether writes are refused.
    pub fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::Acquire)
    }

    fn check_fence(&self) -> io::Result<()> {
        if self.is_fenced() {
            let why = self
                .fence_reason
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
                .unwrap_or_else(|| "its group is prepared for failover".into());
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("volume {} refuses writes: {why}", self.row.name),
            ));
        }
        Ok(())
    }

    /// Makes data and tracking state durable and closes the tracker cleanly,
    /// so that the next open preserves the dirty set exactly.
    pub(crate) fn close(self) -> Result<(), EngineError> {
        self.file
            .sync()
            .map_err(|e| EngineError::Invalid(format!("syncing volume {}: {e}", self.row.name)))?;
        self.tracker.close()?;
        if let Some(iso) = self.iso.into_inner().unwrap_or_else(|e| e.into_inner()) {
            iso.close()?;
        }
        Ok(())
    }

    fn block_size(&self) -> u64 {
        u64::from(self.row.block_size)
    }

    /// Saves the cut-time contents of the blocks of `offset..offset+len`
    /// that belong to the cut being shipped and are about to be overwritten.
    fn preserve(&self, offset: u64, len: u64) -> io::Result<()> {
        if !self.cut_active.load(Ordering::Acquire) || len == 0 {
            return Ok(());
        }
        let mut guard = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cut) = guard.as_mut() else {
            return Ok(());
        };
        let bs = self.block_size();
        let first = (offset / bs) as u32;
        let last = ((offset + len - 1) / bs) as u32;
        for b in first..=last {
            let needed = if cut.all {
                true
            } else {
                cut.blocks.contains(b) && !cut.shipped.contains(b)
            };
            if needed && !cut.saved.contains_key(&b) {
                let mut data = vec![0u8; bs as usize].into_boxed_slice();
                self.file.read_at(&mut data, u64::from(b) * bs)?;
                cut.saved.insert(b, data);
            }
        }
        Ok(())
    }

    /// Whether [`Volume::preserve`] would now have to save any block of
    /// `offset..offset+len`.
    fn preserve_needed(&self, offset: u64, len: u64) -> bool {
        if !self.cut_active.load(Ordering::Acquire) || len == 0 {
            return false;
        }
        let guard = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cut) = guard.as_ref() else {
            return false;
        };
        let bs = self.block_size();
        let first = (offset / bs) as u32;
        let last = ((offset + len - 1) / bs) as u32;
        (first..=last).any(|b| {
            (cut.all || (cut.blocks.contains(b) && !cut.shipped.contains(b)))
                && !cut.saved.contains_key(&b)
        })
    }

    /// Takes a cut of this volume alone (see [`crate::Site::cut`] for a
    /// group): returns the blocks to ship.
    pub(crate) fn begin_cut_locked(&self, kind: CutKind) -> Result<RoaringBitmap, EngineError> {
        self.check_no_cut()?;
        let blocks = match kind {
            CutKind::Changed | CutKind::Full => self.tracker.begin_cut()?,
            CutKind::SinceRounds => self.tracker.take_into_flight()?,
        };
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cut {
            all: kind == CutKind::Full,
            blocks: blocks.clone(),
            ..Cut::default()
        });
        self.cut_active.store(true, Ordering::Release);
        Ok(blocks)
    }

    fn check_no_cut(&self) -> Result<(), EngineError> {
        if self.cut_active.load(Ordering::Acquire) {
            return Err(EngineError::Busy {
                name: self.row.name.clone(),
                why: "a replication cut of it is already being shipped".into(),
                what_to_do: "wait for the running cycle to end and retry",
            });
        }
        Ok(())
    }

    /// One round of a resynchronization without a cut: with this volume's
    /// writes held off for the instant it takes, moves its dirty set in
    /// flight and returns it (with `first`, every block in flight, as a
    /// cut would: those an interrupted cycle or seal left there too).
    ///
    /// The caller then reads the blocks straight from the file, with no
    /// copy-on-write. That is sound because of the barrier: a write holds
    /// it (shared) from its tracker mark to the end of its file write, so
    /// a write is either wholly applied before the round (the read sees
    /// it) or marks its blocks after it (they are dirty again and shipped
    /// by a later round or by the cut that ends the rounds, which then
    /// overwrites whatever the round read). The blocks stay in flight, so
    /// dirty across a crash, until [`Volume::end_cut`] after the commit.
    pub fn resync_round(&self, first: bool) -> Result<RoaringBitmap, EngineError> {
        let _barrier = self.barrier();
        self.check_no_cut()?;
        Ok(if first {
            self.tracker.begin_cut()?
        } else {
            self.tracker.take_into_flight()?
        })
    }

    /// Holds off writes while a group cut is taken.
    pub(crate) fn barrier(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.barrier.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads block `b` as it was at the cut into `buf` (one block long): a
    /// block of the cut's set, or any block of a full cut
    /// ([`crate::Site::cut_full`]).
    pub fn read_cut_block(&self, b: u32, buf: &mut [u8]) -> io::Result<()> {
        let mut guard = self.cut.lock().unwrap_or_else(|e| e.into_inner());
        let Some(cut) = guard.as_mut() else {
            return Err(io::Error::other(
                "no replication cut is in progress on this volume",
            ));
        };
        if cut.all {
            if let Some(saved) = cut.saved.get(&b) {
                buf.copy_from_slice(saved);
            } else {
                self.file.read_at(buf, u64::from(b) * self.block_size())?;
            }
        } else if let Some(saved) = cut.saved.remove(&b) {
            buf.copy_from_slice(&saved);
        } else {
            // Under the lock, so no writer can overwrite the block between
            // this read and its being marked shipped.
            self.file.read_at(buf, u64::from(b) * self.block_size())?;
        }
        cut.shipped.insert(b);
        Ok(())
    }

    /// Ends the cut: with `committed` its blocks are clean (the replica has
    /// them in a durable PIT); otherwise they stay dirty for the next cycle.
    pub fn end_cut(&self, committed: bool) {
        self.cut_active.store(false, Ordering::Release);
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if committed {
            self.tracker.finish_cut();
        }
    }

    fn mark(&self, offset: u64, len: u64) -> io::Result<()> {
        self.tracker.mark(offset, len).map_err(|e| {
            tracing::error!(volume = %self.row.name, error = %e, "changed-block tracking failed; refusing the write");
            io::Error::other(e)
        })?;
        if let Some(iso) = self.iso.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            iso.mark(offset, len).map_err(|e| {
                tracing::error!(volume = %self.row.name, error = %e, "isolation tracking failed; refusing the write");
                io::Error::other(e)
            })?;
        }
        Ok(())
    }
}

impl offsite_nbd::BlockDevice for Volume {
    fn size(&self) -> u64 {
        self.row.size_bytes
    }

    fn read_only(&self) -> bool {
        self.is_fenced()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        match self.write_at_deferred(buf, offset, fua, false)? {
            Some(pending) => pending.wait(),
            None => Ok(()),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        match self.write_zeroes_deferred(offset, len, fua)? {
            Some(pending) => pending.wait(),
            None => Ok(()),
        }
    }

    fn write_at_deferred(
        &self,
        buf: &[u8],
        offset: u64,
        fua: bool,
        more_writes: bool,
    ) -> io::Result<Option<Box<dyn offsite_nbd::Pending>>> {
        self.change(offset, buf.len() as u64, Some(buf), fua, more_writes)
    }

    fn release_writes(&self) {
        if let Some((mirror, _)) = self.mirror() {
            mirror.release();
        }
    }

    fn write_zeroes_deferred(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> io::Result<Option<Box<dyn offsite_nbd::Pending>>> {
        self.change(offset, len, None, fua, false)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        // A trimmed range reads back as zeroes here, so it changed the image
        // exactly as write-zeroes does and must be replicated likewise.
        self.write_zeroes(offset, len, fua)
    }

    fn flush(&self) -> io::Result<()> {
        // The activity log is made durable before each write enters a new
        // extent, so flushing the data file is all FLUSH needs.
        self.file.sync()
    }

    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<offsite_nbd::Extent>> {
        self.file.block_status(offset, len)
    }

    /// Zeroing punches holes (tracking and a mirror record only note the
    /// range), so it is fast unless the filesystem cannot punch, or a cut
    /// being shipped must first save the blocks' old contents (a read of
    /// each block).
    fn can_fast_zero(&self, offset: u64, len: u64) -> bool {
        self.file.can_punch_holes() && !self.preserve_needed(offset, len)
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        match &self.file {
            VolumeData::Plain(f) => f.will_need(offset, len),
            // The top and the PIT below are read as needed.
            VolumeData::Layered(_) => Ok(()),
        }
    }
}

/// `NBD_CMD_BLOCK_STATUS` of a layered volume (a promoted volume, or a test
/// failover's clone): holes where neither the top nor the PIT below holds
/// data; a data run is followed block by block, at most `MAX_PROBES`
/// blocks per call (the client asks again for the rest).
pub fn layered_block_status(
    l: &Layered,
    offset: u64,
    len: u64,
) -> io::Result<Vec<offsite_nbd::Extent>> {
    const MAX_PROBES: u64 = 16 << 10;
    let end = offset.saturating_add(len);
    let bs = u64::from(l.block_size());
    offsite_nbd::extents_by_seek(
        offset,
        len,
        |at| l.next_data(at),
        |at| offsite_nbd::probe_data_end(at, end, bs, MAX_PROBES, |p| l.next_data(p)),
    )
}
