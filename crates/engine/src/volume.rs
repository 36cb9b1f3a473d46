//! A live volume: its data file joined with its change tracker. This is
//! where an NBD write becomes a tracked write: the tracker marks the blocks
//! (durably covering their extent in the activity log) *before* the data
//! reaches the file, so no acknowledged write can escape the dirty set.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use offsite_catalog::VolumeRow;
use offsite_cbt::{ChangeTracker, Geometry, OpenReport};
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
        self.mark(offset, buf.len() as u64)?;
        self.file.write_at(buf, offset)?;
        if fua {
            self.file.sync()?;
        }
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.mark(offset, len)?;
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
