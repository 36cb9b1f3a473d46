//! A live volume: its data file joined with its change tracker. This is
//! where an NBD write becomes a tracked write: the tracker marks the blocks
//! (durably covering their extent in the activity log) *before* the data
//! reaches the file, so no acknowledged write can escape the dirty set.
//!
//! It is also where a replication cut stays exact while it is shipped:
//! writes pass a barrier that a group cut closes for the instant of the
//! swap, and a write into a not-yet-shipped block of the cut first saves
//! that block's cut-time contents (copy-on-write).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};

use offsite_catalog::VolumeRow;
use offsite_cbt::{ChangeTracker, Geometry, OpenReport, RoaringBitmap};
use offsite_store::VolumeFile;

use crate::EngineError;
use crate::layout::Layout;

/// A volume with its data and tracking state.
#[derive(Debug)]
pub struct Volume {
    row: VolumeRow,
    file: VolumeFile,
    tracker: ChangeTracker,
    /// Served over NBD only once its content is complete (not while importing).
    ready: AtomicBool,
    /// Writes hold it shared; a replication cut holds it exclusively for
    /// the instant it swaps the dirty set, so no write straddles the cut.
    barrier: RwLock<()>,
    /// Set while a cut is being shipped: writes then preserve the cut's
    /// blocks they overwrite (copy-on-write) before changing them.
    cut_active: AtomicBool,
    cut: Mutex<Option<Cut>>,
}

/// The state of a replication cut of one volume while it is shipped.
///
/// Invariant: for every block `b` of `blocks`, the image at the cut is
/// `saved[b]` if present, else the data file's block as long as `b` is
/// neither shipped nor overwritten since; a writer saves `b` (under the
/// `cut` lock) before overwriting it unless it was already shipped.
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
        let file = VolumeFile::create(&data, row.size_bytes)?;
        let tracker = match ChangeTracker::create(
            &layout.volumes_dir(),
            &Layout::volume_stem(row.id),
            Self::geometry(&row),
        ) {
            Ok(t) => t,
            Err(e) => {
                let _ = VolumeFile::remove(&data);
                return Err(e.into());
            }
        };
        let ready = AtomicBool::new(row.state == "ready");
        Ok(Volume {
            row,
            file,
            tracker,
            ready,
            barrier: RwLock::new(()),
            cut_active: AtomicBool::new(false),
            cut: Mutex::new(None),
        })
    }

    /// Opens an existing volume; says how its tracking state was recovered.
    pub(crate) fn open(
        layout: &Layout,
        row: VolumeRow,
    ) -> Result<(Volume, OpenReport), EngineError> {
        let file = VolumeFile::open(&layout.volume_data(row.id), row.size_bytes)?;
        let (tracker, report) = ChangeTracker::open(
            &layout.volumes_dir(),
            &Layout::volume_stem(row.id),
            Self::geometry(&row),
        )?;
        let ready = AtomicBool::new(row.state == "ready");
        Ok((
            Volume {
                row,
                file,
                tracker,
                ready,
                barrier: RwLock::new(()),
                cut_active: AtomicBool::new(false),
                cut: Mutex::new(None),
            },
            report,
        ))
    }

    /// Deletes the files of volume `id`.
    pub(crate) fn remove_files(layout: &Layout, id: i64) -> Result<(), EngineError> {
        let data = layout.volume_data(id);
        VolumeFile::remove(&data).map_err(|e| EngineError::io("remove", &data, e))?;
        let dir = layout.volumes_dir();
        ChangeTracker::remove_files(&dir, &Layout::volume_stem(id))
            .map_err(|e| EngineError::io("remove tracking files in", &dir, e))
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

    /// The data file.
    pub fn file(&self) -> &VolumeFile {
        &self.file
    }

    /// Path of the data file.
    pub fn data_path(&self) -> &Path {
        self.file.path()
    }

    /// Makes data and tracking state durable and closes the tracker cleanly,
    /// so that the next open preserves the dirty set exactly.
    pub(crate) fn close(self) -> Result<(), EngineError> {
        self.file
            .sync()
            .map_err(|e| EngineError::io("sync", self.file.path(), e))?;
        self.tracker.close()?;
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

    /// Takes a cut of this volume alone (see [`crate::Site::cut`] for a
    /// group): returns the blocks to ship.
    pub(crate) fn begin_cut_locked(&self, all: bool) -> Result<RoaringBitmap, EngineError> {
        if self.cut_active.load(Ordering::Acquire) {
            return Err(EngineError::Busy {
                name: self.row.name.clone(),
                why: "a replication cut of it is already being shipped".into(),
                what_to_do: "wait for the running cycle to end and retry",
            });
        }
        let blocks = self.tracker.begin_cut()?;
        *self.cut.lock().unwrap_or_else(|e| e.into_inner()) = Some(Cut {
            all,
            blocks: blocks.clone(),
            ..Cut::default()
        });
        self.cut_active.store(true, Ordering::Release);
        Ok(blocks)
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
        })
    }
}

impl offsite_nbd::BlockDevice for Volume {
    fn size(&self) -> u64 {
        self.row.size_bytes
    }

    fn read_only(&self) -> bool {
        false
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        let _barrier = self.barrier.read().unwrap_or_else(|e| e.into_inner());
        self.mark(offset, buf.len() as u64)?;
        self.preserve(offset, buf.len() as u64)?;
        self.file.write_at(buf, offset)?;
        if fua {
            self.file.sync()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        let _barrier = self.barrier.read().unwrap_or_else(|e| e.into_inner());
        self.mark(offset, len)?;
        self.preserve(offset, len)?;
        self.file.punch_hole(offset, len)?;
        if fua {
            self.file.sync()?;
        }
        Ok(())
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
}
