//! Layered volumes: a read-only **lower** image (a point-in-time view of a
//! replica, supplied by the caller as a [`Lower`]) under a private, writable
//! **top** layer. A test-failover clone or a promoted replica is usable as
//! soon as the two (empty) top files exist, whatever the volume's size; the
//! lower can be copied up in the background ([`Layered::flatten_step`]) until
//! the top holds every block and the lower is no longer needed. Copying up
//! keeps the top as thin as the lower: the lower's holes
//! ([`Lower::next_data`]) are not read and its zero blocks are not written,
//! they stay (or become) holes of the top that the map marks present.
//!
//! # What it owns
//!
//! Two files per layer in a directory chosen by the caller:
//!
//! - `NAME.top`: a sparse raw image of the volume's size ([`VolumeFile`]).
//!   Byte `i` of the volume is at byte `i` of the file, but only for blocks
//!   the map marks present; everything else in it is meaningless (it may
//!   hold writes made after the last flush, before a crash).
//! - `NAME.map`: which blocks the top holds, as of the last flush.
//!
//! It does not own the lower (the caller keeps the replica's PIT alive while
//! the layer needs it) nor any change tracking (reverse replication reads
//! [`Layered::present`]).
//!
//! # Map file format (version 1, little-endian)
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSLAYER` |
//! | 8 | 4 | format version, `1` (`0` is never valid) |
//! | 12 | 4 | block size in bytes |
//! | 16 | 8 | volume size in bytes |
//! | 24 | 8 | `L`, length of the bitmap |
//! | 32 | `L` | the present blocks: a portable serialized `RoaringTreemap` of block numbers |
//! | 32 + `L` | 4 | CRC32C of bytes `0 .. 32 + L` |
//!
//! The decoder treats the file as untrusted: it reads at most as many bytes
//! as a map of the requested geometry can take, then checks the length, the
//! CRC, the magic, the version, the geometry (against what the caller asks
//! for: [`LayerError::Mismatch`]), that the header's `L` is the rest of the
//! file and that every block lies inside the volume. Any failure is
//! [`LayerError::Corrupt`]; it never panics.
//!
//! # Durability
//!
//! Writes reach the page cache only. [`Layered::flush`] is the durability
//! point, in this order:
//!
//! 1. snapshot the in-memory map (every block in it had its data written to
//!    the top file *before* it was marked present);
//! 2. `fdatasync` the top file, making the data of every snapshotted block
//!    (and every completed write) durable;
//! 3. write the snapshot as `NAME.map.partial`, fsync it, rename it over
//!    `NAME.map`, fsync the directory ([`write_durably`]).
//!
//! After a crash (or a drop without flush), [`Layered::open`] sees the map of
//! the last completed flush: a block first written after it reads from the
//! lower again, a block overwritten after it reads as either value, as a disk
//! promises for writes not yet flushed (NBD's contract). Dropping a layer
//! does not flush. A failed `fdatasync` is sticky: the layer refuses further
//! writes and flushes until it is reopened (the kernel may have dropped the
//! dirty pages, so a later "successful" flush would lie).
//!
//! # Concurrency
//!
//! A `Layered` is shared by many NBD connection threads. The present set is
//! behind an `RwLock` held only to look up or insert block numbers, never
//! across I/O, so reads never wait for each other. A block is marked present
//! only after its bytes are in the top file, so a read that finds it present
//! finds its data. A write to blocks already present goes straight to the
//! top file without locks (presence only ever grows); a write or copy-up that
//! touches a block not yet present takes the block's lock (striped mutexes,
//! taken in ascending order) and checks again under it, so read-modify-write
//! of a partial block never loses a concurrent write and flattening never
//! overwrites a block a write put in the top.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use offsite_durable::le;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use roaring::RoaringTreemap;

use crate::{StoreError, VolumeFile, sync_dir, write_durably};

/// Source of the blocks not (yet) written in the top layer.
pub trait Lower: Send + Sync {
    /// Fills `buf` with the lower image's bytes at `offset` (within size).
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;

    /// The first byte at or after `offset` that may not be zero, or `None`
    /// when only zeroes follow: every byte before it reads as zero. Lets
    /// flattening skip the lower's holes without reading them. The default
    /// says "data" everywhere, which is correct, only slower.
    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        Ok(Some(offset))
    }

    /// A hint that the `len` bytes at `offset` will be read soon, in
    /// order (flattening copies the volume front to back). A lower whose
    /// reads are slow (objects in a bucket) fetches them ahead in the
    /// background; the default does nothing.
    fn prefetch(&self, offset: u64, len: u64) {
        let _ = (offset, len);
    }

    /// Whether blocks read from this lower should be kept in the top as
    /// they are read (copy-on-read): for a lower whose reads are slow (a
    /// bucket), the volume itself becomes the local cache of what its
    /// reader touched, before flattening gets there. Default: no.
    fn copy_on_read(&self) -> bool {
        false
    }
}

/// First 8 bytes of a map file.
pub const MAP_MAGIC: [u8; 8] = *b"OFSLAYER";
/// Format version of the map file written by this build.
pub const MAP_VERSION: u32 = 1;
/// Smallest block size a layer accepts.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size a layer accepts.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// Map header: magic, version, block_size, size, bitmap length.
const MAP_HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
/// Map trailer: crc32c.
const MAP_TRAILER_LEN: usize = 4;
/// Number of block-lock stripes.
const LOCK_STRIPES: usize = 256;
/// Most bytes one flatten copy moves at a time (and holds locks for).
const FLATTEN_CHUNK_BYTES: u64 = 1 << 20;
/// Bytes past a flattening step announced to the lower as read soon
/// ([`Lower::prefetch`]).
/// 8 MiB: a lower reads ahead with a few fetches in flight, and each
/// volume flattened at once keeps its read-ahead in the lower's cache (a
/// store's 64 MiB) until its step copies it.
const FLATTEN_READ_AHEAD_BYTES: u64 = 8 << 20;
/// No read-ahead for flattening while a reader went to the lower this
/// recently (see [`Layered::lower_read_within`]).
pub const READER_QUIET: std::time::Duration = std::time::Duration::from_millis(200);

/// Errors of creating and opening a layer. Errors of reads, writes and
/// flushes are plain `io::Error`s, whose kinds the NBD server maps.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A system call on one of the layer's files failed (or a file that
    /// `create` would make already exists: `AlreadyExists`; or the geometry
    /// or name asked for is invalid: `InvalidInput`).
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done ("create", "read", "sync", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A layer file does not hold what a layer file must.
    #[error(
        "layer file {} is corrupt ({reason}); its writes cannot be trusted: remove the layer and \
         create it again from the replica",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words.
        reason: String,
    },
    /// The map was written for another geometry than the one asked for.
    #[error(
        "layer map {} records {what} {on_disk} but {expected} was asked for; open it with the \
         geometry it was created with, or remove the layer",
        path.display()
    )]
    Mismatch {
        /// The map file.
        path: PathBuf,
        /// Which field differs (`"size"` or `"block_size"`).
        what: &'static str,
        /// The value in the file.
        on_disk: u64,
        /// The value the caller passed.
        expected: u64,
    },
}

impl LayerError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayerError + 'a {
        move |source| LayerError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The OS error underneath, if any (callers tell ENOSPC from EIO by it).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            LayerError::Io { source, .. } => Some(source),
            LayerError::Corrupt { .. } | LayerError::Mismatch { .. } => None,
        }
    }
}

impl From<StoreError> for LayerError {
    fn from(e: StoreError) -> LayerError {
        match e {
            StoreError::Exists { path } => LayerError::Io {
                op: "create",
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the layer already exists; remove it first or pick another name",
                ),
                path,
            },
            StoreError::Io { op, path, source } => LayerError::Io { op, path, source },
            other @ (StoreError::TooLarge { .. } | StoreError::NotImportable { .. }) => {
                let path = match &other {
                    StoreError::TooLarge { dir, .. } => dir.clone(),
                    StoreError::NotImportable { path, .. } => path.clone(),
                    _ => PathBuf::new(),
                };
                LayerError::Io {
                    op: "create",
                    source: io::Error::new(io::ErrorKind::FileTooLarge, other.to_string()),
                    path,
                }
            }
        }
    }
}

/// The blocks the top holds, and a counter bumped whenever that set grows
/// (so a flush can skip rewriting an unchanged map).
#[derive(Debug)]
struct Present {
    set: RoaringTreemap,
    generation: u64,
}

/// Shared state of flushes (group commit).
#[derive(Debug)]
struct FlushState {
    /// Every flush whose ticket is at most this is covered by a completed one.
    covered: u64,
    /// `Present::generation` of the map on disk.
    map_generation: u64,
}

/// A layered volume: a read-only lower image plus a private writable top.
/// See the module docs for the files, the format and the durability rule.
pub struct Layered {
    top: VolumeFile,
    map_path: PathBuf,
    size: u64,
    block_size: u32,
    /// log2 of `block_size`.
    shift: u32,
    nblocks: u64,
    lower: Arc<dyn Lower>,
    present: RwLock<Present>,
    /// Block `b` is guarded by `stripes[b % LOCK_STRIPES]` while it is not
    /// present (see the module docs).
    stripes: Box<[Mutex<()>]>,
    flush_state: Mutex<FlushState>,
    /// Tickets handed to flush calls as they arrive.
    flush_tickets: AtomicU64,
    /// Set when an `fdatasync` failed (sticky until reopened).
    failed: AtomicBool,
    /// Every block below this is present (a hint for `flatten_step`).
    flatten_from: AtomicU64,
    /// The last answer of [`Lower::next_data`]: the lower's bytes in
    /// `.0 .. .1` are zeroes (`.1` = size: only zeroes follow). The lower
    /// never changes, so it stays true; flattening asks chunk after chunk
    /// across one long hole, and a lower may take time to answer.
    lower_zero: Mutex<(u64, u64)>,
    /// When a read last went to the lower for blocks the top lacks
    /// ([`micros_now`]; 0: never): a reader is waiting on the lower, so
    /// flattening steps back (see [`Layered::lower_read_within`]).
    last_lower_read: AtomicU64,
}

/// Microseconds since the first call in this process, plus one (so that 0
/// can mean "never"): a monotonic time that fits an atomic.
fn micros_now() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
        + 1
}

impl fmt::Debug for Layered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("top", &self.top.path())
            .field("size", &self.size)
            .field("block_size", &self.block_size)
            .field("present_blocks", &self.present_blocks())
            .field("failed", &self.failed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Paths of the top and map files of layer `name` in `dir`.
fn paths(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), LayerError> {
    let top = dir.join(format!("{name}.top"));
    let ok = !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0']);
    if !ok {
        return Err(LayerError::Io {
            op: "use layer name",
            path: top,
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "layer name {name:?} must be non-empty, not start with '.' and hold no '/'"
                ),
            ),
        });
    }
    let map = dir.join(format!("{name}.map"));
    Ok((top, map))
}

/// Checks that `block_size` is a power of two in range and `size` a positive
/// multiple of it.
fn check_geometry(size: u64, block_size: u32, path: &Path) -> Result<(), LayerError> {
    let reason = if !block_size.is_power_of_two()
        || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size)
    {
        format!(
            "block size {block_size} is not a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
        )
    } else if size == 0 || !size.is_multiple_of(u64::from(block_size)) {
        format!("size {size} is not a positive multiple of the block size {block_size}")
    } else {
        return Ok(());
    };
    Err(LayerError::Io {
        op: "check geometry of",
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, reason),
    })
}

impl Layered {
    /// Creates `dir/NAME.top` (sparse, `size` bytes) and `dir/NAME.map` (empty
    /// map), durably (files fsynced, dir fsynced). Refuses if they exist.
    pub fn create(
        dir: &Path,
        name: &str,
        size: u64,
        block_size: u32,
        lower: Arc<dyn Lower>,
    ) -> Result<Layered, LayerError> {
        let (top_path, map_path) = paths(dir, name)?;
        check_geometry(size, block_size, &top_path)?;
        match std::fs::symlink_metadata(&map_path) {
            Ok(_) => {
                return Err(LayerError::Io {
                    op: "create",
                    path: map_path,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "the layer already exists; remove it first or pick another name",
                    ),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(LayerError::io("stat", &map_path)(e)),
        }
        // 1. The top file, created exclusively, sized, fsynced, dir fsynced.
        let top = VolumeFile::create(&top_path, size)?;
        // 2. The empty map (durably). Without it the layer does not open, so
        //    a crash between 1 and 2 leaves a layer to remove, never one
        //    that reads wrong.
        let map = encode_map(&RoaringTreemap::new(), size, block_size);
        if let Err(e) = write_durably(&map_path, &map, crate::PRIVATE_FILE_MODE) {
            drop(top);
            // Left behind, the top would make the next create fail (it is
            // created exclusively).
            if let Err(re) = offsite_durable::remove_file(&top_path) {
                tracing::warn!(path = %top_path.display(), error = %re, "removing the top of a layer whose create failed");
            }
            return Err(LayerError::io("write", &map_path)(e));
        }
        Ok(Layered::assemble(
            top,
            map_path,
            size,
            block_size,
            lower,
            RoaringTreemap::new(),
        ))
    }

    /// Opens an existing layer after a restart or crash: the map as of the
    /// last `flush` (blocks written after it read from the lower again — only
    /// flushed writes are durable, as NBD promises).
    pub fn open(
        dir: &Path,
        name: &str,
        size: u64,
        block_size: u32,
        lower: Arc<dyn Lower>,
    ) -> Result<Layered, LayerError> {
        let (top_path, map_path) = paths(dir, name)?;
        check_geometry(size, block_size, &top_path)?;
        let set = read_map(&map_path, size, block_size)?;
        let top_len = std::fs::metadata(&top_path)
            .map_err(LayerError::io("stat", &top_path))?
            .len();
        if top_len != size {
            return Err(LayerError::Corrupt {
                path: top_path,
                reason: format!("the top file holds {top_len} bytes, the layer {size}"),
            });
        }
        let top = VolumeFile::open(&top_path, size)?;
        Ok(Layered::assemble(
            top, map_path, size, block_size, lower, set,
        ))
    }

    fn assemble(
        top: VolumeFile,
        map_path: PathBuf,
        size: u64,
        block_size: u32,
        lower: Arc<dyn Lower>,
        set: RoaringTreemap,
    ) -> Layered {
        Layered {
            top,
            map_path,
            size,
            block_size,
            shift: block_size.trailing_zeros(),
            nblocks: size / u64::from(block_size),
            lower,
            present: RwLock::new(Present { set, generation: 0 }),
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            flush_state: Mutex::new(FlushState {
                covered: 0,
                map_generation: 0,
            }),
            flush_tickets: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            flatten_from: AtomicU64::new(0),
            lower_zero: Mutex::new((0, 0)),
            last_lower_read: AtomicU64::new(0),
        }
    }

    /// Removes both files (missing is fine) and fsyncs the dir.
    pub fn remove(dir: &Path, name: &str) -> io::Result<()> {
        let (top, map) = paths(dir, name).map_err(|e| match e {
            LayerError::Io { source, .. } => source,
            other => io::Error::other(other),
        })?;
        let partial = offsite_durable::partial_path(&map);
        // The map first: a top without its map does not open.
        for p in [map, partial, top] {
            offsite_durable::remove_file(&p)?;
        }
        sync_dir(dir)
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Block size in bytes (the unit of copy-up and of the map).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Reads `buf.len()` bytes at `offset`: each block from the top if it
    /// holds it, else from the lower.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len() as u64;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let runs = self.runs(offset >> self.shift, (end - 1) >> self.shift);
        for run in runs {
            let lo = (run.start << self.shift).max(offset);
            let hi = (run.end << self.shift).min(end);
            let part = &mut buf[(lo - offset) as usize..(hi - offset) as usize];
            if run.in_top {
                self.top.read_at(part, lo)?;
            } else {
                self.note_lower_read();
                self.lower.read_lower(part, lo)?;
                if self.lower.copy_on_read() && self.check_usable().is_ok() {
                    self.keep_read(part, lo);
                }
            }
        }
        Ok(())
    }

    /// Copy-on-read ([`Lower::copy_on_read`]): writes the whole blocks of
    /// `bytes` (read from the lower at `at`) that the top still lacks into
    /// the top and marks them present, as flattening would. Under the
    /// blocks' locks and checked again there, since a write may have landed
    /// since the lower was read (its data wins). The reader already has its
    /// bytes: a failure here only leaves the blocks to flattening.
    fn keep_read(&self, bytes: &[u8], at: u64) {
        let bs = u64::from(self.block_size);
        let end = at + bytes.len() as u64;
        let (first, stop) = (at.div_ceil(bs), end / bs);
        if first >= stop {
            return; // no whole block
        }
        let _held = self.lock_blocks(first, stop - 1);
        for run in self.runs(first, stop - 1) {
            if run.in_top {
                continue;
            }
            let (lo, hi) = (run.start * bs, run.end * bs);
            let part = &bytes[(lo - at) as usize..(hi - at) as usize];
            if let Err(e) = self.top.write_thin(part, lo, bs) {
                tracing::debug!(error = %e, "keeping blocks read from the lower; flattening copies them later");
                return;
            }
            self.mark(run.start, run.end);
        }
    }

    fn note_lower_read(&self) {
        self.last_lower_read
            .fetch_max(micros_now(), Ordering::Relaxed);
    }

    /// Whether a read (not flattening) went to the lower within `window`:
    /// the flattener then neither reads ahead nor copies at full speed, so
    /// that a volume being recovered from a slow lower (a bucket) serves
    /// its reader's cold reads first.
    pub fn lower_read_within(&self, window: std::time::Duration) -> bool {
        let last = self.last_lower_read.load(Ordering::Relaxed);
        last != 0 && micros_now().saturating_sub(last) <= window.as_micros() as u64
    }

    /// Any offset/length (bounds checked: past the end →
    /// `io::ErrorKind::InvalidInput`). Whole blocks go straight to the top; a
    /// partial block not yet in the top is read from the lower, merged and
    /// written whole (serialized with every other write to that block).
    /// `fua` = durable on return (same as write then flush).
    pub fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.check_usable()?;
        self.check_range(offset, buf.len() as u64)?;
        self.write_inner(buf, offset)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// Makes the range read as zeroes (whole blocks: punch a hole in the top
    /// and mark them present; partial: read-modify-write).
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()> {
        self.check_usable()?;
        self.check_range(offset, len)?;
        let end = offset + len;
        let bs = u64::from(self.block_size);
        // Whole blocks [w0, w1).
        let w0 = offset.div_ceil(bs);
        let w1 = end >> self.shift;
        if w0 >= w1 {
            // No whole block: under two blocks' worth of bytes.
            self.write_zero_bytes(offset, end)?;
        } else {
            let (lo, hi) = (w0 << self.shift, w1 << self.shift);
            self.write_zero_bytes(offset, lo)?;
            if self.all_present(w0, w1 - 1) {
                self.top.punch_hole(lo, hi - lo)?;
            } else {
                let _held = self.lock_blocks(w0, w1 - 1);
                self.top.punch_hole(lo, hi - lo)?;
                self.mark(w0, w1);
            }
            self.write_zero_bytes(hi, end)?;
        }
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    /// `fdatasync`s the top file, then writes the map durably (see the
    /// module docs for the order). Concurrent flushes share work: a flush
    /// that finds a flush started after it arrived completed returns at once.
    pub fn flush(&self) -> io::Result<()> {
        self.check_usable()?;
        let ticket = self.flush_tickets.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self
            .flush_state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.covered >= ticket {
            return Ok(());
        }
        // A flush that failed while we waited.
        self.check_usable()?;
        // Every ticket up to `upto` was taken before the snapshot below, so
        // every write completed before those flush calls is in it.
        let upto = self.flush_tickets.load(Ordering::SeqCst);
        // 1. Snapshot the map (only when it changed since the map on disk).
        let snapshot = {
            let p = self.read_present();
            (p.generation != state.map_generation).then(|| (p.set.clone(), p.generation))
        };
        // 2. The data of every block in the snapshot was written before it
        //    was marked, so before the snapshot: make it durable.
        if let Err(e) = self.top.sync() {
            self.failed.store(true, Ordering::SeqCst);
            tracing::error!(path = %self.top.path().display(), error = %e,
                "fdatasync of a layer's top file failed; the layer refuses writes until reopened");
            return Err(e);
        }
        // 3. Then the map that points at it.
        if let Some((mut set, generation)) = snapshot {
            set.optimize();
            let bytes = encode_map(&set, self.size, self.block_size);
            write_durably(&self.map_path, &bytes, crate::PRIVATE_FILE_MODE)?;
            state.map_generation = generation;
        }
        state.covered = upto;
        Ok(())
    }

    /// Number of blocks held by the top layer.
    pub fn present_blocks(&self) -> u64 {
        self.read_present().set.len()
    }

    /// Whether zeroing whole blocks deallocates them in the top file (see
    /// [`VolumeFile::can_punch_holes`]) rather than writing zeroes; partial
    /// blocks at the ends of a zeroed range are written either way.
    pub fn can_punch_holes(&self) -> bool {
        self.top.can_punch_holes()
    }

    /// Whether the top holds every block (then the lower is no longer needed).
    pub fn is_flat(&self) -> bool {
        self.present_blocks() == self.nblocks
    }

    /// The first byte at or after `offset` that may not be zero (`None`:
    /// only zeroes follow), from the top's `SEEK_DATA` where the top holds
    /// the blocks and the lower's [`Lower::next_data`] elsewhere. Lets a
    /// reader of the volume (a seed export, an initial copy) skip its holes.
    pub fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        /// Blocks examined per look at the present set.
        const WINDOW: u64 = 1 << 16;
        let mut at = offset;
        while at < self.size {
            let first = at >> self.shift;
            let last = (first + WINDOW - 1).min(self.nblocks - 1);
            for run in self.runs(first, last) {
                let lo = (run.start << self.shift).max(at);
                let hi = run.end << self.shift;
                let found = if run.in_top {
                    self.top.next_data(lo)?
                } else {
                    self.lower_next_data(lo)?
                };
                if let Some(x) = found
                    && x < hi
                {
                    return Ok(Some(x.max(lo)));
                }
            }
            at = (last + 1) << self.shift;
        }
        Ok(None)
    }

    /// Copies up to `max_blocks` blocks that are not in the top from the
    /// lower into the top (background flattening), lowest first; never
    /// overwrites a block a concurrent write put in the top. Returns how many
    /// blocks it made present (0 with `max_blocks > 0` = flat). Does not
    /// flush.
    ///
    /// The top stays as thin as the lower: the lower's holes are not read
    /// ([`Lower::next_data`]) and all-zero blocks are not written; either
    /// becomes a hole of the top (punched if the top held bytes there, such
    /// as an unflushed write from before a crash, so it reads zero). A hole
    /// of the lower costs no copy, so it is made present whole, whatever
    /// its length, and does not count against `max_blocks` (which bounds
    /// the blocks read and written per call): a thin volume of any size
    /// flattens in about as many calls as it has data extents.
    pub fn flatten_step(&self, max_blocks: u64) -> io::Result<u64> {
        self.check_usable()?;
        let chunk = (FLATTEN_CHUNK_BYTES >> self.shift).max(1);
        let (mut copied, mut holes) = (0, 0);
        // This step's blocks and the next ones: a remote lower fetches them
        // while this step copies (the lower clips the range to the volume).
        if !self.lower_read_within(READER_QUIET) {
            let from = self.flatten_from.load(Ordering::SeqCst) << self.shift;
            self.lower.prefetch(
                from,
                (max_blocks << self.shift).saturating_add(FLATTEN_READ_AHEAD_BYTES),
            );
        }
        let mut buf = Vec::new();
        while copied < max_blocks {
            let from = self.flatten_from.load(Ordering::SeqCst);
            let Some((g0, g1)) = self.next_gap(from) else {
                self.flatten_from.fetch_max(self.nblocks, Ordering::SeqCst);
                break;
            };
            self.flatten_from.fetch_max(g0, Ordering::SeqCst);
            // Blocks g0..hole_end read zero in the lower without data.
            let hole_end = match self.lower_next_data(g0 << self.shift)? {
                Some(d) => (d >> self.shift).min(g1),
                None => g1,
            };
            let hole = hole_end > g0;
            let end = if hole {
                hole_end
            } else {
                g1.min(g0.saturating_add(chunk))
                    .min(g0.saturating_add(max_blocks - copied))
            };
            // The lower's bytes are read before the blocks are locked (the
            // lower never changes): a slow lower (a bucket) would otherwise
            // hold every write and copy-on-read of these blocks for the
            // length of a request.
            let data = if hole {
                None
            } else {
                buf.resize(((end - g0) << self.shift) as usize, 0);
                self.lower.read_lower(&mut buf, g0 << self.shift)?;
                Some(std::mem::take(&mut buf))
            };
            {
                let _held = self.lock_blocks(g0, end - 1);
                // Again under the locks: a write may have landed meanwhile.
                for run in self.runs(g0, end - 1) {
                    if run.in_top {
                        continue;
                    }
                    let (lo, hi) = (run.start << self.shift, run.end << self.shift);
                    match &data {
                        Some(bytes) => {
                            let at = g0 << self.shift;
                            let part = &bytes[(lo - at) as usize..(hi - at) as usize];
                            self.top.write_thin(part, lo, u64::from(self.block_size))?;
                        }
                        None => self.copy_up_thin(lo, hi, &mut buf)?,
                    }
                    self.mark(run.start, run.end);
                    if hole {
                        holes += run.end - run.start;
                    } else {
                        copied += run.end - run.start;
                    }
                }
            }
            if let Some(bytes) = data {
                buf = bytes; // the allocation, for the next chunk
            }
            self.flatten_from.fetch_max(end, Ordering::SeqCst);
        }
        Ok(copied + holes)
    }

    /// The blocks held by the top (for reverse replication: the blocks
    /// written since promotion, when the layer was not flattened).
    pub fn present(&self) -> RoaringTreemap {
        self.read_present().set.clone()
    }

    // ---- internals ----

    fn read_present(&self) -> RwLockReadGuard<'_, Present> {
        self.present.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range of {len} bytes at {offset} is past the end of the {}-byte volume",
                    self.size
                ),
            )),
        }
    }

    fn check_usable(&self) -> io::Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(io::Error::other(format!(
                "an earlier fdatasync of {} failed, so writes since the last good flush may be \
                 lost; reopen the layer to continue from its last durable state",
                self.top.path().display()
            )));
        }
        Ok(())
    }

    /// Whether every block in `first..=last` is present.
    fn all_present(&self, first: u64, last: u64) -> bool {
        self.read_present().set.contains_range(first..=last)
    }

    /// Marks blocks `start..end` present (their data is in the top file).
    fn mark(&self, start: u64, end: u64) {
        let mut p = self.present.write().unwrap_or_else(PoisonError::into_inner);
        if p.set.insert_range(start..end) > 0 {
            p.generation += 1;
        }
    }

    /// Locks the stripes of blocks `first..=last`, in ascending stripe order.
    fn lock_blocks(&self, first: u64, last: u64) -> Vec<MutexGuard<'_, ()>> {
        let n = LOCK_STRIPES as u64;
        let mut idx: Vec<usize> = if last - first + 1 >= n {
            (0..LOCK_STRIPES).collect()
        } else {
            (first..=last).map(|b| (b % n) as usize).collect()
        };
        idx.sort_unstable();
        idx.into_iter()
            .map(|i| {
                self.stripes[i]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
            })
            .collect()
    }

    /// Splits blocks `first..=last` into maximal runs held by the top or not.
    fn runs(&self, first: u64, last: u64) -> Vec<Run> {
        let p = self.read_present();
        if p.set.contains_range(first..=last) {
            return vec![Run::new(true, first, last + 1)];
        }
        let mut runs: Vec<Run> = Vec::new();
        let mut push = |in_top: bool, start: u64, end: u64| match runs.last_mut() {
            Some(r) if r.in_top == in_top && r.end == start => r.end = end,
            _ => runs.push(Run::new(in_top, start, end)),
        };
        let mut next = first;
        let mut it = p.set.iter();
        it.advance_to(first);
        for b in it.take_while(|&b| b <= last) {
            if b > next {
                push(false, next, b);
            }
            push(true, b, b + 1);
            next = b + 1;
        }
        if next <= last {
            push(false, next, last + 1);
        }
        runs
    }

    /// The first run of blocks not present at or after `from`, if any.
    fn next_gap(&self, from: u64) -> Option<(u64, u64)> {
        if from >= self.nblocks {
            return None;
        }
        let p = self.read_present();
        let last = self.nblocks - 1;
        let start = if !p.set.contains(from) {
            from
        } else if p.set.contains_range(from..=last) {
            return None;
        } else {
            // `from..=lo` is all present, `from..=hi` is not.
            let (mut lo, mut hi) = (from, last);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if p.set.contains_range(from..=mid) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            hi
        };
        let mut it = p.set.iter();
        it.advance_to(start);
        let end = it.next().unwrap_or(self.nblocks).min(self.nblocks);
        Some((start, end))
    }

    /// Writes `buf` at `offset` (range already checked).
    fn write_inner(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64;
        let (first, last) = (offset >> self.shift, (end - 1) >> self.shift);
        if self.all_present(first, last) {
            // Presence never shrinks: no copy-up, no lock.
            return self.top.write_at(buf, offset);
        }
        let _held = self.lock_blocks(first, last);
        let (head_in_top, tail_in_top) = {
            let p = self.read_present();
            (p.set.contains(first), p.set.contains(last))
        };
        let head = first << self.shift;
        let tail = (last + 1) << self.shift;
        if first == last && !head_in_top && (offset > head || end < tail) {
            // One partial block: merge into a copy of the lower's block.
            let mut block = vec![0u8; self.block_size as usize];
            self.lower.read_lower(&mut block, head)?;
            block[(offset - head) as usize..(end - head) as usize].copy_from_slice(buf);
            self.top.write_at(&block, head)?;
        } else {
            if !head_in_top && offset > head {
                self.copy_up(head, offset)?;
            }
            if !tail_in_top && end < tail {
                self.copy_up(end, tail)?;
            }
            self.top.write_at(buf, offset)?;
        }
        self.mark(first, last + 1);
        Ok(())
    }

    /// Copies bytes `lo..hi` (within one block) from the lower to the top.
    fn copy_up(&self, lo: u64, hi: u64) -> io::Result<()> {
        let mut bytes = vec![0u8; (hi - lo) as usize];
        self.lower.read_lower(&mut bytes, lo)?;
        self.top.write_at(&bytes, lo)
    }

    /// [`Lower::next_data`], answered from `lower_zero` when it covers `at`.
    fn lower_next_data(&self, at: u64) -> io::Result<Option<u64>> {
        let known = *self
            .lower_zero
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let next = if (known.0..known.1).contains(&at) {
            known.1
        } else {
            let next = self.lower.next_data(at)?.unwrap_or(self.size).max(at);
            *self
                .lower_zero
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = (at, next);
            next
        };
        Ok((next < self.size).then_some(next))
    }

    /// Copies blocks `lo..hi` (byte offsets, whole blocks) from the lower
    /// into the top, leaving holes for the lower's holes and zero blocks.
    /// The caller holds the blocks' locks.
    fn copy_up_thin(&self, lo: u64, hi: u64, buf: &mut Vec<u8>) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        let data = match self.lower_next_data(lo)? {
            Some(d) => (d / bs * bs).clamp(lo, hi),
            None => hi,
        };
        self.top.zero_range(lo, data - lo)?;
        if data < hi {
            buf.resize((hi - data) as usize, 0);
            self.lower.read_lower(buf, data)?;
            self.top.write_thin(buf, data, bs)?;
        }
        Ok(())
    }

    /// Zeroes `lo..hi`, less than two blocks, by writing zeroes.
    fn write_zero_bytes(&self, lo: u64, hi: u64) -> io::Result<()> {
        if lo < hi {
            self.write_inner(&vec![0u8; (hi - lo) as usize], lo)?;
        }
        Ok(())
    }
}

/// A run of blocks `start..end`, all held by the top or all not.
#[derive(Debug, Clone, Copy)]
struct Run {
    in_top: bool,
    start: u64,
    end: u64,
}

impl Run {
    fn new(in_top: bool, start: u64, end: u64) -> Run {
        Run { in_top, start, end }
    }
}

/// Largest serialized bitmap a volume of `nblocks` blocks can need: per
/// 2^16 blocks a container of at most 8 KiB plus its descriptors, per 2^32
/// a treemap entry, generously rounded up.
fn max_bitmap_len(nblocks: u64) -> u64 {
    let containers = nblocks.div_ceil(1 << 16);
    let high_keys = nblocks.div_ceil(1 << 32);
    64 + high_keys * 64 + containers * (8192 + 16)
}

/// Encodes a map file.
fn encode_map(set: &RoaringTreemap, size: u64, block_size: u32) -> Vec<u8> {
    let len = set.serialized_size();
    let mut out = Vec::with_capacity(MAP_HEADER_LEN + len + MAP_TRAILER_LEN);
    out.extend_from_slice(&MAP_MAGIC);
    out.extend_from_slice(&MAP_VERSION.to_le_bytes());
    out.extend_from_slice(&block_size.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    set.serialize_into(&mut out)
        .expect("serializing into a Vec cannot fail");
    debug_assert_eq!(out.len(), MAP_HEADER_LEN + len);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Why a map did not decode.
#[derive(Debug, PartialEq, Eq)]
enum MapError {
    Corrupt(String),
    Mismatch {
        what: &'static str,
        on_disk: u64,
        expected: u64,
    },
}

/// Decodes a map file's bytes for a layer of `size` bytes in blocks of
/// `block_size`. Never panics.
fn decode_map(bytes: &[u8], size: u64, block_size: u32) -> Result<RoaringTreemap, MapError> {
    let corrupt = |s: String| Err(MapError::Corrupt(s));
    if bytes.len() < MAP_HEADER_LEN + MAP_TRAILER_LEN {
        return corrupt(format!(
            "truncated: {} bytes, a map has at least {}",
            bytes.len(),
            MAP_HEADER_LEN + MAP_TRAILER_LEN
        ));
    }
    let (body, trailer) = bytes.split_at(bytes.len() - MAP_TRAILER_LEN);
    let stored = le::u32_at(trailer, 0);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return corrupt(format!(
            "checksum mismatch: stored {stored:08x}, computed {computed:08x} (torn or damaged)"
        ));
    }
    if body[..8] != MAP_MAGIC {
        return corrupt(format!("not a layer map (magic {:02x?})", &body[..8]));
    }
    let version = le::u32_at(body, 8);
    if version != MAP_VERSION {
        return corrupt(format!(
            "format version {version}; this build reads version {MAP_VERSION} only"
        ));
    }
    let on_disk_bs = le::u32_at(body, 12);
    if on_disk_bs != block_size {
        return Err(MapError::Mismatch {
            what: "block_size",
            on_disk: u64::from(on_disk_bs),
            expected: u64::from(block_size),
        });
    }
    let on_disk_size = le::u64_at(body, 16);
    if on_disk_size != size {
        return Err(MapError::Mismatch {
            what: "size",
            on_disk: on_disk_size,
            expected: size,
        });
    }
    let claimed = le::u64_at(body, 24);
    let held = (body.len() - MAP_HEADER_LEN) as u64;
    if claimed != held {
        return corrupt(format!(
            "header claims {claimed} bitmap bytes, the file holds {held}"
        ));
    }
    let mut rest = &body[MAP_HEADER_LEN..];
    let set = match RoaringTreemap::deserialize_from(&mut rest) {
        Ok(set) => set,
        Err(e) => return corrupt(format!("the bitmap does not decode: {e}")),
    };
    if !rest.is_empty() {
        return corrupt(format!("{} bytes follow the bitmap", rest.len()));
    }
    let nblocks = size / u64::from(block_size);
    if let Some(max) = set.max()
        && max >= nblocks
    {
        return corrupt(format!(
            "block {max} is past the end of the layer ({nblocks} blocks)"
        ));
    }
    Ok(set)
}

/// Reads and decodes the map at `path`, reading no more than a map of this
/// geometry can take.
fn read_map(path: &Path, size: u64, block_size: u32) -> Result<RoaringTreemap, LayerError> {
    let file = File::open(path).map_err(LayerError::io("open", path))?;
    let len = file.metadata().map_err(LayerError::io("stat", path))?.len();
    let nblocks = size / u64::from(block_size);
    let cap = (MAP_HEADER_LEN + MAP_TRAILER_LEN) as u64 + max_bitmap_len(nblocks);
    if len > cap {
        return Err(LayerError::Corrupt {
            path: path.to_path_buf(),
            reason: format!(
                "the map is {len} bytes, more than a map of {nblocks} blocks can take ({cap})"
            ),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(LayerError::io("read", path))?;
    decode_map(&bytes, size, block_size).map_err(|e| match e {
        MapError::Corrupt(reason) => LayerError::Corrupt {
            path: path.to_path_buf(),
            reason,
        },
        MapError::Mismatch {
            what,
            on_disk,
            expected,
        } => LayerError::Mismatch {
            path: path.to_path_buf(),
            what,
            on_disk,
            expected,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIZE: u64 = 1 << 20;
    const BS: u32 = 4096;

    fn sample() -> RoaringTreemap {
        [0u64, 1, 2, 7, 200, 255].into_iter().collect()
    }

    #[test]
    fn map_round_trips() {
        let bytes = encode_map(&sample(), SIZE, BS);
        assert_eq!(&bytes[..8], b"OFSLAYER");
        assert_eq!(decode_map(&bytes, SIZE, BS).unwrap(), sample());
        let empty = encode_map(&RoaringTreemap::new(), SIZE, BS);
        assert!(decode_map(&empty, SIZE, BS).unwrap().is_empty());
    }

    #[test]
    fn map_geometry_mismatch() {
        let bytes = encode_map(&sample(), SIZE, BS);
        assert!(matches!(
            decode_map(&bytes, SIZE, 512),
            Err(MapError::Mismatch {
                what: "block_size",
                on_disk: 4096,
                expected: 512
            })
        ));
        assert!(matches!(
            decode_map(&bytes, 2 * SIZE, BS),
            Err(MapError::Mismatch { what: "size", .. })
        ));
    }

    #[test]
    fn map_block_past_end_is_corrupt() {
        let set: RoaringTreemap = [256u64].into_iter().collect();
        let bytes = encode_map(&set, SIZE, BS);
        assert!(matches!(
            decode_map(&bytes, SIZE, BS),
            Err(MapError::Corrupt(_))
        ));
    }

    #[test]
    fn bitmap_bound_holds_for_dense_and_sparse_sets() {
        for nblocks in [1u64, 1000, 1 << 16, (1 << 18) + 3] {
            let full: RoaringTreemap = (0..nblocks).collect();
            let every_other: RoaringTreemap = (0..nblocks).step_by(2).collect();
            let sparse: RoaringTreemap = (0..nblocks).step_by(17).collect();
            for set in [full, every_other, sparse] {
                assert!(set.serialized_size() as u64 <= max_bitmap_len(nblocks));
            }
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_map(&bytes, SIZE, BS);
        }

        #[test]
        fn damaged_maps_are_refused(at in 0usize..1000, bit in 0u8..8) {
            let bytes = encode_map(&sample(), SIZE, BS);
            let mut bad = bytes.clone();
            let at = at % bad.len();
            bad[at] ^= 1 << bit;
            prop_assert!(matches!(decode_map(&bad, SIZE, BS), Err(MapError::Corrupt(_))));
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                prop_assert!(decode_map(&bytes[..cut], SIZE, BS).is_err());
            }
        }

        #[test]
        fn garbage_with_valid_header_and_crc_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = Vec::new();
            bytes.extend_from_slice(&MAP_MAGIC);
            bytes.extend_from_slice(&MAP_VERSION.to_le_bytes());
            bytes.extend_from_slice(&BS.to_le_bytes());
            bytes.extend_from_slice(&SIZE.to_le_bytes());
            bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&body);
            let crc = crc32c::crc32c(&bytes);
            bytes.extend_from_slice(&crc.to_le_bytes());
            if let Ok(set) = decode_map(&bytes, SIZE, BS) {
                prop_assert!(set.max().is_none_or(|m| m < SIZE / u64::from(BS)));
            }
        }
    }
}
