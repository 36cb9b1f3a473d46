//! Crash-safe changed-block tracking (CBT) for one volume.
//!
//! Every write the NBD server accepts marks its blocks dirty *before* the data
//! write is issued; replication later ships exactly the dirty blocks. The
//! dirty set must survive `kill -9` and power loss without a full resync, and
//! a lost or damaged state file must fall back to "everything changed" (a
//! checksum resync), never to silently missing blocks.
//!
//! # Design: DRBD-style bitmap + activity log
//!
//! * **In memory** the dirty set is a [`RoaringBitmap`] of block indices
//!   (blocks are `block_size` bytes, a power of two ≥ 512; at most
//!   `u32::MAX` blocks). Sparse sets cost a few bytes per dirty block, runs
//!   and full containers are run-length encoded, so an idle daemon with 100
//!   volumes of 100 GiB stays in a few MiB.
//! * Blocks are grouped into **extents** of `extent_blocks` blocks (default:
//!   4 MiB of data, so 1024 blocks of 4 KiB).
//! * The **activity log (AL)** durably lists the *active* extents. Invariant:
//!   *before `mark` returns for a block, either the block is in the durable
//!   bitmap file, or its extent is in the durable AL.* `mark` on an already
//!   active extent only sets bits in memory (a mutex and a roaring insert, no
//!   syscall). Activating a new extent writes a new AL record (pwrite +
//!   fdatasync of one slot) before returning.
//! * The **bitmap file** is the dirty set written at clean points: clean
//!   [`close`](ChangeTracker::close), AL overflow, [`clear`](ChangeTracker::clear),
//!   [`merge`](ChangeTracker::merge), [`checkpoint`](ChangeTracker::checkpoint)
//!   and right after crash recovery. It is replaced durably: `X.partial`
//!   created with `create_new`, written, fsynced, renamed over `X`, directory
//!   fsynced.
//! * **AL overflow.** The AL holds at most `al_capacity` extents (default
//!   1024, a 4 GiB hot set). When a new extent does not fit: (1) the evicted
//!   extents are removed from the in-memory active set, (2) the bitmap is
//!   persisted (it now holds every bit of the evicted extents), (3) an AL
//!   record with only the extents needed now plus the most recently used ones
//!   (half the capacity in total) is written. The next overflow is thus at
//!   least `capacity/2` new extents away, so the bitmap write is amortized.
//!   A single `mark` spanning more than `capacity/2` extents (a huge TRIM or
//!   WRITE_ZEROES) skips the AL: its bits are set and the bitmap is persisted
//!   before it returns.
//! * **After a crash** `dirty = bitmap file ∪ every block of every extent in
//!   the newest valid AL record`. That union is persisted at once (bitmap
//!   first, then an empty AL record), so a second crash does not lose it.
//! * **Clean close** persists the bitmap and then writes an empty AL record:
//!   a clean reopen restores the set *exactly*.
//! * **Missing or corrupt files** (bad CRC, magic or version, wrong length,
//!   geometry mismatch, no valid AL slot) make the whole volume dirty, log a
//!   `tracing::warn!` with the reason, and return [`OpenReport::Reset`].
//!
//! ## Why recovery yields a superset
//!
//! Take any block `b` for which `mark` returned. At that moment `b` was in
//! the in-memory set and (invariant above) either in the durable bitmap or
//! in an extent of the durable AL. Afterwards `b` can leave the durable AL
//! only through an AL record that evicts its extent, and every such record is
//! preceded by a durable bitmap write taken *after* the extent was made
//! inactive in memory. Any later `mark` into that extent has to go through
//! the slow path, which waits for the I/O lock held by the eviction, so no bit
//! of an evicted extent can be set after the snapshot. So the bitmap written
//! before the eviction holds `b`. A later bitmap write holds `b` too, unless
//! `b` was removed by the caller ([`clear`](ChangeTracker::clear) or
//! [`take`](ChangeTracker::take)), which is the caller saying "shipped".
//! AL writes are not atomic, but each goes to the slot *not* holding the
//! newest record; a torn write leaves that slot with a bad CRC, and load
//! falls back to the other slot, which is the record that was durable before
//! the interrupted `mark`, whose data write had not been issued yet. The
//! bitmap file is replaced by rename, so it is old or new, never torn. Hence
//! `bitmap ∪ AL ⊇ {every acknowledged mark not cleared since}`. Media
//! assumption: a sector that was durably written reads back intact or fails
//! its CRC (as for redb and DRBD).
//!
//! ## Durability of [`take`](ChangeTracker::take)
//!
//! `take` swaps the in-memory set for an empty one without I/O. The taken
//! blocks stay in the durable state (bitmap file or AL) only until the next
//! bitmap write (a checkpoint, AL overflow, `clear`, `merge` or `close`). The
//! caller owns the taken set from then on: if shipping fails it must give it
//! back with [`merge`](ChangeTracker::merge) (which persists), and if it must
//! survive a crash while in flight, the caller records it in its own durable
//! cycle state (or `merge`s it back before reporting the cut as shipped).
//!
//! ## Concurrency
//!
//! Two mutexes, always taken in the order `io` → `state`:
//! `state` (dirty bitmap, active extents with an LRU tick, sticky failure)
//! is held only for in-memory work; `io` (the AL file handle and sequence)
//! serializes all file writes. A `mark` on an active extent takes only
//! `state`; marks that need an AL write queue on `io` while marks on active
//! extents proceed. The active set published in memory is always a subset of
//! the durable AL: extents are published after their AL record is durable
//! and unpublished before the record that drops them is written.
//!
//! **Sticky failure.** After any failed write, fsync or rename, every later
//! `mark`, `take`, `merge`, `clear`, `checkpoint` and `close` returns
//! [`CbtError::Poisoned`] until the tracker is reopened (which recovers a
//! superset from the files). Read-only calls keep working.
//!
//! A tracker holds an advisory lock (`flock`) on its AL file; a second
//! tracker on the same files gets [`CbtError::Locked`]. Dropping a tracker
//! without [`close`](ChangeTracker::close) is treated like a crash.
//!
//! # File formats
//!
//! All integers little-endian; `crc32c` is CRC-32C (Castagnoli). Format
//! version `1`; `0` is never valid, so zeroed bytes never decode. Load checks
//! length, CRC, magic, version, geometry, then content, in that order.
//!
//! ## Bitmap file `DIR/STEM.cbt`
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSCBTBM` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | `block_size` in bytes |
//! | 16 | 8 | `nblocks` |
//! | 24 | 8 | `payload_len` |
//! | 32 | `payload_len` | dirty set in the portable Roaring format (RoaringFormatSpec, with run containers) |
//! | 32 + `payload_len` | 4 | crc32c of bytes `0 .. 32 + payload_len` |
//!
//! ## Activity log `DIR/STEM.al`
//!
//! Two slots A (offset 0) and B (offset `slot_size`) of equal size; the file
//! is exactly `2 × slot_size` bytes, `slot_size` =
//! `round_up(40 + 4 × capacity, 4096)` (8192 for capacity 1024). The record
//! with sequence `seq` lives in slot `seq mod 2`; records are written in
//! place with `pwrite` + `fdatasync` and load uses the valid slot with the
//! higher sequence. Each slot:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSCBTAL` |
//! | 8 | 4 | format version (`1`) |
//! | 12 | 4 | `block_size` in bytes |
//! | 16 | 4 | `extent_blocks` (power of two) |
//! | 20 | 4 | `capacity` (max extents per record) |
//! | 24 | 8 | `seq` (≥ 1) |
//! | 32 | 4 | `count` (≤ capacity) |
//! | 36 | 4 × `count` | active extent ids (`u32`, extent `e` = blocks `e × extent_blocks ..`) |
//! | 36 + 4 × `count` | 4 | crc32c of the slot bytes before it |
//! | .. | .. | zero padding to `slot_size` |
//!
//! An AL with a different `extent_blocks` or `capacity` than the current
//! tuning is still read (extents are interpreted with the recorded
//! `extent_blocks`); it is then rewritten in the current shape.

mod error;
mod format;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use roaring::RoaringBitmap;

pub use crate::error::CbtError;
use crate::format::{AlRecord, al_slot_index, al_slot_size};
use offsite_durable as durable;

/// The largest number of blocks a volume may have (block indices are `u32`).
pub const MAX_BLOCKS: u64 = u32::MAX as u64;
/// The smallest supported block size.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Default extent size in bytes (the unit the activity log tracks).
pub const DEFAULT_EXTENT_BYTES: u64 = 4 << 20;
/// Default number of extents the activity log holds.
pub const DEFAULT_AL_CAPACITY: u32 = 1024;
/// Largest accepted activity-log capacity.
const MAX_AL_CAPACITY: u32 = 1 << 20;

/// The shape of a tracked volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Block size in bytes: a power of two, at least [`MIN_BLOCK_SIZE`].
    pub block_size: u32,
    /// Number of blocks: 1 ..= [`MAX_BLOCKS`].
    pub nblocks: u64,
}

impl Geometry {
    /// The geometry of a volume of `size_bytes` (a multiple of `block_size`).
    pub fn for_volume(size_bytes: u64, block_size: u32) -> Result<Geometry, CbtError> {
        if block_size == 0 || !size_bytes.is_multiple_of(u64::from(block_size)) {
            return Err(CbtError::InvalidGeometry {
                reason: format!(
                    "volume size {size_bytes} is not a multiple of the block size {block_size}"
                ),
            });
        }
        let g = Geometry {
            block_size,
            nblocks: size_bytes / u64::from(block_size),
        };
        g.validate()?;
        Ok(g)
    }

    /// Volume size in bytes.
    pub fn volume_bytes(&self) -> u64 {
        self.nblocks * u64::from(self.block_size)
    }

    fn validate(&self) -> Result<(), CbtError> {
        if self.block_size < MIN_BLOCK_SIZE || !self.block_size.is_power_of_two() {
            return Err(CbtError::InvalidGeometry {
                reason: format!(
                    "block size {} is not a power of two of at least {MIN_BLOCK_SIZE} bytes",
                    self.block_size
                ),
            });
        }
        if self.nblocks == 0 {
            return Err(CbtError::InvalidGeometry {
                reason: "volume has no blocks".to_string(),
            });
        }
        if self.nblocks > MAX_BLOCKS {
            return Err(CbtError::TooManyBlocks {
                nblocks: self.nblocks,
                max: MAX_BLOCKS,
            });
        }
        Ok(())
    }
}

/// Tuning knobs, for tests and benchmarks. Production code uses the defaults
/// through [`ChangeTracker::create`] and [`ChangeTracker::open`].
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Blocks per extent (power of two).
    pub extent_blocks: u32,
    /// Extents in the activity log (≥ 2).
    pub al_capacity: u32,
}

impl Tuning {
    /// The defaults for a block size: 4 MiB extents, 1024 AL entries.
    pub fn for_block_size(block_size: u32) -> Tuning {
        let blocks = (DEFAULT_EXTENT_BYTES / u64::from(block_size.max(1))).max(1);
        Tuning {
            extent_blocks: u32::try_from(blocks).unwrap_or(1 << 31),
            al_capacity: DEFAULT_AL_CAPACITY,
        }
    }

    fn validate(&self) -> Result<(), CbtError> {
        if self.extent_blocks == 0 || !self.extent_blocks.is_power_of_two() {
            return Err(CbtError::InvalidTuning {
                reason: format!(
                    "extent of {} blocks is not a power of two",
                    self.extent_blocks
                ),
            });
        }
        if !(2..=MAX_AL_CAPACITY).contains(&self.al_capacity) {
            return Err(CbtError::InvalidTuning {
                reason: format!(
                    "activity-log capacity {} is outside 2..={MAX_AL_CAPACITY}",
                    self.al_capacity
                ),
            });
        }
        Ok(())
    }
}

/// What [`ChangeTracker::open`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenReport {
    /// The tracker was closed cleanly; the dirty set is exactly as it was.
    Clean,
    /// The tracker was not closed cleanly; the dirty set is the persisted
    /// bitmap plus every block of the `active_extents` extents that were in
    /// the activity log (a superset of what changed). Already persisted.
    RecoveredAfterCrash {
        /// Extents taken from the activity log.
        active_extents: usize,
    },
    /// The state could not be trusted (missing, corrupt, or for another
    /// geometry): every block is dirty, so the next replication must compare
    /// the whole volume. Already persisted.
    Reset {
        /// Why, for the operator.
        reason: String,
    },
}

/// Changed-block tracker of one volume. See the [crate docs](crate).
pub struct ChangeTracker {
    geometry: Geometry,
    block_shift: u32,
    extent_shift: u32,
    extent_blocks: u32,
    al_capacity: u32,
    bitmap_path: PathBuf,
    al_path: PathBuf,
    /// Serializes every file write. Lock order: `io`, then `state`.
    io: Mutex<Io>,
    /// In-memory state; never held across a syscall.
    state: Mutex<State>,
}

struct Io {
    al: File,
    slot_size: usize,
    /// Sequence of the newest durable AL record.
    seq: u64,
}

type ExtentMap = HashMap<u32, u64, BuildHasherDefault<ExtentHasher>>;

struct State {
    dirty: RoaringBitmap,
    /// Blocks of a replication cut not yet committed by the replica
    /// ([`ChangeTracker::begin_cut`]). Persisted with `dirty` (as their
    /// union) so that they survive a crash until [`ChangeTracker::finish_cut`].
    inflight: RoaringBitmap,
    /// Active extents (a subset of the durable AL) → last-use tick.
    active: ExtentMap,
    tick: u64,
    /// The sticky failure: rendered error and its `io::ErrorKind`.
    failed: Option<(String, Option<io::ErrorKind>)>,
}

/// Multiplicative hash for `u32` extent ids: a few cycles, well spread.
#[derive(Default)]
struct ExtentHasher(u64);

impl Hasher for ExtentHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.0 = (self.0 ^ u64::from(n)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Outcome of reading one state file.
enum Loaded<T> {
    Ok(T),
    Missing,
    Invalid(String),
}

impl fmt::Debug for ChangeTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangeTracker")
            .field("geometry", &self.geometry)
            .field("extent_blocks", &self.extent_blocks)
            .field("al_capacity", &self.al_capacity)
            .field("bitmap_path", &self.bitmap_path)
            .field("al_path", &self.al_path)
            .finish_non_exhaustive()
    }
}

fn file_paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{stem}.cbt")),
        dir.join(format!("{stem}.al")),
    )
}

fn lock_file(f: &File, path: &Path) -> Result<(), CbtError> {
    match f.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(CbtError::Locked {
            path: path.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(CbtError::io("lock", path, e)),
    }
}

/// Removes a leftover `X.partial` from an interrupted replacement.
fn remove_stale_partial(path: &Path) -> Result<(), CbtError> {
    let tmp = durable::partial_path(path);
    if durable::remove_file(&tmp)? {
        tracing::debug!(path = %tmp.display(), "removed leftover temporary file");
    }
    Ok(())
}

fn open_al(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

/// A fresh AL file holding one record (with `rec.seq`) and an empty slot.
fn fresh_al_bytes(rec: &AlRecord, slot_size: usize) -> Vec<u8> {
    let mut out = vec![0u8; 2 * slot_size];
    let at = al_slot_index(rec.seq) * slot_size;
    out[at..at + slot_size].copy_from_slice(&format::encode_al_slot(rec, slot_size));
    out
}

fn read_bitmap_file(path: &Path, g: Geometry) -> Loaded<RoaringBitmap> {
    match fs::read(path) {
        Ok(bytes) => match format::decode_bitmap(&bytes, g.block_size, g.nblocks) {
            Ok(bm) => Loaded::Ok(bm),
            Err(reason) => Loaded::Invalid(format!("{}: {reason}", path.display())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Loaded::Missing,
        Err(e) => Loaded::Invalid(format!("{}: cannot be read: {e}", path.display())),
    }
}

fn read_al_file(f: &File, path: &Path) -> Loaded<(AlRecord, usize)> {
    let mut bytes = Vec::new();
    let read = f
        .metadata()
        .and_then(|m| {
            if m.len() > format::AL_MAX_FILE_LEN {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file is {} bytes, larger than any activity log", m.len()),
                ))
            } else {
                Ok(())
            }
        })
        .and_then(|()| (&*f).read_to_end(&mut bytes));
    match read {
        Ok(_) => match format::decode_al_file(&bytes) {
            Ok(v) => Loaded::Ok(v),
            Err(reason) => Loaded::Invalid(format!("{}: {reason}", path.display())),
        },
        Err(e) => Loaded::Invalid(format!("{}: cannot be read: {e}", path.display())),
    }
}

fn all_blocks(nblocks: u64) -> RoaringBitmap {
    let mut bm = RoaringBitmap::new();
    bm.insert_range(0..=(nblocks - 1) as u32);
    bm.optimize();
    bm
}

impl ChangeTracker {
    /// Creates the state files `dir/{stem}.cbt` and `dir/{stem}.al` for a
    /// fresh volume (all blocks clean), durably. Refuses existing files.
    pub fn create(dir: &Path, stem: &str, geometry: Geometry) -> Result<ChangeTracker, CbtError> {
        Self::create_tuned(
            dir,
            stem,
            geometry,
            Tuning::for_block_size(geometry.block_size),
        )
    }

    /// [`create`](Self::create) with explicit tuning (tests, benchmarks).
    #[doc(hidden)]
    pub fn create_tuned(
        dir: &Path,
        stem: &str,
        geometry: Geometry,
        tuning: Tuning,
    ) -> Result<ChangeTracker, CbtError> {
        geometry.validate()?;
        tuning.validate()?;
        let (bitmap_path, al_path) = file_paths(dir, stem);
        for p in [&bitmap_path, &al_path] {
            match fs::symlink_metadata(p) {
                Ok(_) => return Err(CbtError::AlreadyExists { path: p.clone() }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CbtError::io("inspect", p, e)),
            }
        }
        let empty = RoaringBitmap::new();
        // 1. bitmap (empty), durable.
        durable::replace_file(
            &bitmap_path,
            &format::encode_bitmap(&empty, geometry.block_size, geometry.nblocks),
        )?;
        // 2. activity log (one empty record), durable.
        let slot_size = al_slot_size(tuning.al_capacity);
        let rec = AlRecord {
            block_size: geometry.block_size,
            extent_blocks: tuning.extent_blocks,
            capacity: tuning.al_capacity,
            seq: 1,
            extents: Vec::new(),
        };
        durable::replace_file(&al_path, &fresh_al_bytes(&rec, slot_size))?;
        let al = open_al(&al_path).map_err(|e| CbtError::io("open", &al_path, e))?;
        lock_file(&al, &al_path)?;
        tracing::debug!(path = %al_path.display(), ?geometry, "created change tracker");
        Ok(Self::assemble(
            bitmap_path,
            al_path,
            geometry,
            tuning,
            al,
            slot_size,
            1,
            empty,
        ))
    }

    /// Opens the tracker of an existing volume and recovers its dirty set.
    ///
    /// Missing or corrupt files are not an error: the whole volume becomes
    /// dirty and the report says why ([`OpenReport::Reset`]). Errors are
    /// returned only when the recovered state cannot be made durable, or the
    /// files are locked by another tracker.
    pub fn open(
        dir: &Path,
        stem: &str,
        geometry: Geometry,
    ) -> Result<(ChangeTracker, OpenReport), CbtError> {
        Self::open_tuned(
            dir,
            stem,
            geometry,
            Tuning::for_block_size(geometry.block_size),
        )
    }

    /// [`open`](Self::open) with explicit tuning (tests, benchmarks).
    #[doc(hidden)]
    pub fn open_tuned(
        dir: &Path,
        stem: &str,
        geometry: Geometry,
        tuning: Tuning,
    ) -> Result<(ChangeTracker, OpenReport), CbtError> {
        geometry.validate()?;
        tuning.validate()?;
        let (bitmap_path, al_path) = file_paths(dir, stem);
        remove_stale_partial(&bitmap_path)?;
        remove_stale_partial(&al_path)?;

        // The AL is opened and locked first, so a second tracker on the same
        // files fails before it reads (or rewrites) anything.
        let (al_file, al) = match open_al(&al_path) {
            Ok(f) => {
                lock_file(&f, &al_path)?;
                let loaded = read_al_file(&f, &al_path);
                (Some(f), loaded)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, Loaded::Missing),
            Err(e) => (
                None,
                Loaded::Invalid(format!("{}: cannot be opened: {e}", al_path.display())),
            ),
        };
        let bitmap = read_bitmap_file(&bitmap_path, geometry);

        let nblocks = geometry.nblocks;
        let (dirty, report, reusable_al) = match (bitmap, al) {
            (Loaded::Ok(mut dirty), Loaded::Ok((rec, slot_size))) => {
                match recover_extents(&mut dirty, &rec, geometry) {
                    Ok(()) => {
                        let report = if rec.extents.is_empty() {
                            OpenReport::Clean
                        } else {
                            OpenReport::RecoveredAfterCrash {
                                active_extents: rec.extents.len(),
                            }
                        };
                        let reusable =
                            (slot_size == al_slot_size(tuning.al_capacity)).then_some(rec.seq);
                        (dirty, report, reusable)
                    }
                    Err(e) => (
                        all_blocks(nblocks),
                        OpenReport::Reset {
                            reason: format!("{}: {e}", al_path.display()),
                        },
                        None,
                    ),
                }
            }
            (Loaded::Missing, Loaded::Missing) => (
                all_blocks(nblocks),
                OpenReport::Reset {
                    reason: format!(
                        "no change-tracking state in {} for {stem} (first open, or the files were deleted)",
                        dir.display()
                    ),
                },
                None,
            ),
            (b, a) => {
                let mut reasons = Vec::new();
                let mut reusable = None;
                match b {
                    Loaded::Ok(_) => {}
                    Loaded::Missing => {
                        reasons.push(format!("{} is missing", bitmap_path.display()))
                    }
                    Loaded::Invalid(r) => reasons.push(r),
                }
                match a {
                    Loaded::Ok((rec, slot_size)) => {
                        if slot_size == al_slot_size(tuning.al_capacity) {
                            reusable = Some(rec.seq);
                        }
                    }
                    Loaded::Missing => reasons.push(format!("{} is missing", al_path.display())),
                    Loaded::Invalid(r) => reasons.push(r),
                }
                (
                    all_blocks(nblocks),
                    OpenReport::Reset {
                        reason: reasons.join("; "),
                    },
                    reusable,
                )
            }
        };

        match &report {
            OpenReport::Clean => {
                tracing::debug!(path = %al_path.display(), dirty_blocks = dirty.len(), "change tracker opened after a clean close");
            }
            OpenReport::RecoveredAfterCrash { active_extents } => {
                tracing::info!(
                    path = %al_path.display(),
                    active_extents,
                    dirty_blocks = dirty.len(),
                    "change tracker was not closed cleanly; recovered the dirty set from the bitmap and activity log"
                );
            }
            OpenReport::Reset { reason } => {
                tracing::warn!(
                    path = %al_path.display(),
                    %reason,
                    "change-tracking state lost; treating the whole volume as changed (the next replication compares every block)"
                );
            }
        }

        let slot_size = al_slot_size(tuning.al_capacity);
        let fresh_record = |seq| AlRecord {
            block_size: geometry.block_size,
            extent_blocks: tuning.extent_blocks,
            capacity: tuning.al_capacity,
            seq,
            extents: Vec::new(),
        };
        let (al, seq) = match (report == OpenReport::Clean, al_file, reusable_al) {
            // Clean and the AL has the right shape: nothing to write.
            (true, Some(f), Some(seq)) => (f, seq),
            (clean, al_file, reusable) => {
                // 1. Persist the recovered set, so the AL can be emptied.
                if !clean {
                    durable::replace_file(
                        &bitmap_path,
                        &format::encode_bitmap(&dirty, geometry.block_size, nblocks),
                    )?;
                }
                // 2. Empty the AL: in place when its shape fits, else replace it.
                match (al_file, reusable) {
                    (Some(f), Some(seq)) => {
                        let rec = fresh_record(seq + 1);
                        let off = (al_slot_index(rec.seq) * slot_size) as u64;
                        let slot = format::encode_al_slot(&rec, slot_size);
                        durable::write_record_at(&f, &al_path, &slot, off)?;
                        durable::sync_data(&f, &al_path)?;
                        (f, rec.seq)
                    }
                    (old, _) => {
                        let rec = fresh_record(1);
                        durable::replace_file(&al_path, &fresh_al_bytes(&rec, slot_size))?;
                        let f = open_al(&al_path).map_err(|e| CbtError::io("open", &al_path, e))?;
                        lock_file(&f, &al_path)?;
                        drop(old);
                        (f, rec.seq)
                    }
                }
            }
        };
        let tracker = Self::assemble(
            bitmap_path,
            al_path,
            geometry,
            tuning,
            al,
            slot_size,
            seq,
            dirty,
        );
        Ok((tracker, report))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        bitmap_path: PathBuf,
        al_path: PathBuf,
        geometry: Geometry,
        tuning: Tuning,
        al: File,
        slot_size: usize,
        seq: u64,
        dirty: RoaringBitmap,
    ) -> ChangeTracker {
        ChangeTracker {
            geometry,
            block_shift: geometry.block_size.trailing_zeros(),
            extent_shift: tuning.extent_blocks.trailing_zeros(),
            extent_blocks: tuning.extent_blocks,
            al_capacity: tuning.al_capacity,
            bitmap_path,
            al_path,
            io: Mutex::new(Io { al, slot_size, seq }),
            state: Mutex::new(State {
                dirty,
                inflight: RoaringBitmap::new(),
                active: ExtentMap::default(),
                tick: 0,
                failed: None,
            }),
        }
    }

    /// Marks the blocks covering bytes `offset .. offset + len` dirty.
    ///
    /// Call it *before* issuing the data write; when it returns, the blocks
    /// are recorded durably (their extents are in the durable activity log,
    /// or they are in the durable bitmap). On an active extent this costs a
    /// mutex and a bitmap insert, no syscall. An error means the write must
    /// not be issued; after an I/O error the tracker is poisoned.
    pub fn mark(&self, offset: u64, len: u64) -> Result<(), CbtError> {
        let size = self.geometry.volume_bytes();
        let end = offset
            .checked_add(len)
            .filter(|&end| end <= size)
            .ok_or(CbtError::OutOfRange { offset, len, size })?;
        if len == 0 {
            return self.check(&self.lock_state());
        }
        // Fit in u32: end <= nblocks * block_size and nblocks <= u32::MAX.
        let first = (offset >> self.block_shift) as u32;
        let last = ((end - 1) >> self.block_shift) as u32;
        let (e0, e1) = (first >> self.extent_shift, last >> self.extent_shift);
        {
            let mut st = self.lock_state();
            self.check(&st)?;
            if st.touch_all(e0, e1) {
                st.dirty.insert_range(first..=last);
                return Ok(());
            }
        }
        self.mark_slow(first, last, e0, e1)
    }

    /// `mark` for blocks whose extents are not all active.
    fn mark_slow(&self, first: u32, last: u32, e0: u32, e1: u32) -> Result<(), CbtError> {
        let mut io = self.lock_io();
        let mut st = self.lock_state();
        self.check(&st)?;
        // Another marker may have activated the extents meanwhile.
        if st.touch_all(e0, e1) {
            st.dirty.insert_range(first..=last);
            return Ok(());
        }
        let needed = u64::from(e1 - e0) + 1;
        let half = u64::from(self.al_capacity / 2);
        if needed > half {
            // Too many extents for the AL: make the bits themselves durable.
            st.dirty.insert_range(first..=last);
            let bytes = self.encode_dirty(&mut st);
            drop(st);
            return self.guard(self.persist_bitmap(&mut io, &bytes));
        }
        let missing: Vec<u32> = (e0..=e1).filter(|e| !st.active.contains_key(e)).collect();
        let record: Vec<u32> = if st.active.len() + missing.len() <= self.al_capacity as usize {
            // 1. The new AL record = active ∪ missing (a superset of the
            //    published set throughout).
            let mut record: Vec<u32> = st.active.keys().copied().chain(missing).collect();
            drop(st);
            record.sort_unstable();
            record
        } else {
            // AL overflow.
            // 1. Keep the needed extents plus the most recently used others,
            //    half the capacity in all; unpublish the rest, so that no bit
            //    of theirs is set after the snapshot below.
            let mut others: Vec<(u64, u32)> = st
                .active
                .iter()
                .filter(|&(&e, _)| !(e0..=e1).contains(&e))
                .map(|(&e, &t)| (t, e))
                .collect();
            others.sort_unstable_by(|a, b| b.cmp(a));
            others.truncate((half - needed) as usize);
            let mut record: Vec<u32> = others.iter().map(|&(_, e)| e).collect();
            let before = st.active.len();
            st.active
                .retain(|e, _| record.contains(e) || (e0..=e1).contains(e));
            tracing::debug!(
                path = %self.al_path.display(),
                evicted = before - st.active.len(),
                "activity log full; persisting the bitmap and evicting least recently used extents"
            );
            // 2. Snapshot the bitmap: it holds every bit of the evicted extents.
            let bytes = self.encode_dirty(&mut st);
            drop(st);
            // 3. Make it durable before the AL forgets those extents.
            self.guard(self.persist_bitmap(&mut io, &bytes))?;
            record.extend(e0..=e1);
            record.sort_unstable();
            record
        };
        // 4. Write the AL record (pwrite + fdatasync).
        self.guard(self.write_al(&mut io, record))?;
        // 5. Publish the extents and set the bits; `io` is still held, so no
        //    eviction can interleave.
        let mut st = self.lock_state();
        st.tick += 1;
        let tick = st.tick;
        for e in e0..=e1 {
            st.active.insert(e, tick);
        }
        st.dirty.insert_range(first..=last);
        Ok(())
    }

    /// Number of dirty blocks (including those of an unfinished cut).
    pub fn dirty_blocks(&self) -> u64 {
        let st = self.lock_state();
        if st.inflight.is_empty() {
            st.dirty.len()
        } else {
            st.dirty.union_len(&st.inflight)
        }
    }

    /// Number of dirty bytes (`dirty_blocks × block_size`).
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_blocks() * u64::from(self.geometry.block_size)
    }

    /// A copy of the dirty set (block indices, including an unfinished cut).
    pub fn snapshot(&self) -> RoaringBitmap {
        let st = self.lock_state();
        &st.dirty | &st.inflight
    }

    /// Starts a replication cut: every dirty block moves to the in-flight
    /// set, which is returned (with the blocks of an earlier cut that never
    /// finished), and new writes start a fresh dirty set. No I/O.
    ///
    /// Durability: in-flight blocks are written with the dirty ones at
    /// every bitmap write and stay covered by the activity log, so after a
    /// crash they are dirty again (shipped again: a superset, never a loss)
    /// until [`finish_cut`](Self::finish_cut).
    pub fn begin_cut(&self) -> Result<RoaringBitmap, CbtError> {
        let mut st = self.lock_state();
        self.check(&st)?;
        let dirty = std::mem::take(&mut st.dirty);
        st.inflight |= dirty;
        Ok(st.inflight.clone())
    }

    /// Moves the dirty set in flight, as [`begin_cut`](Self::begin_cut)
    /// does, but returns only the blocks moved now, not those an earlier
    /// call left in flight: a resynchronization that ships in rounds
    /// straight from the volume (no cut, no copy-on-write) takes each round
    /// what was written since its previous one. No I/O.
    ///
    /// Durability as for [`begin_cut`](Self::begin_cut): the in-flight set
    /// is dirty again after a crash until
    /// [`finish_cut`](Self::finish_cut), so a round's blocks are never
    /// clean before the replica has committed them.
    pub fn take_into_flight(&self) -> Result<RoaringBitmap, CbtError> {
        let mut st = self.lock_state();
        self.check(&st)?;
        let dirty = std::mem::take(&mut st.dirty);
        st.inflight |= &dirty;
        Ok(dirty)
    }

    /// The replica committed the cut: its blocks are clean (unless written
    /// again since the cut). No I/O: the next bitmap write drops them; a
    /// crash before that only reships them.
    pub fn finish_cut(&self) {
        self.lock_state().inflight.clear();
    }

    /// Marks every block clean, durably (empty bitmap, then empty AL).
    pub fn clear(&self) -> Result<(), CbtError> {
        let mut io = self.lock_io();
        let bytes = {
            let mut st = self.lock_state();
            self.check(&st)?;
            st.dirty.clear();
            st.inflight.clear();
            // Unpublish all extents: marks after this re-activate durably.
            st.active.clear();
            self.encode_dirty(&mut st)
        };
        // 1. Empty bitmap. 2. Empty AL (a crash between the two merely
        //    recovers the old active extents as dirty).
        self.guard(self.persist_bitmap(&mut io, &bytes))?;
        self.guard(self.write_al(&mut io, Vec::new()))
    }

    /// Atomically swaps the dirty set for an empty one and returns it (for a
    /// replication cut). No I/O.
    ///
    /// Durability: the taken blocks remain in the durable state only until
    /// the next bitmap write (checkpoint, AL overflow, `clear`, `merge`,
    /// `close`). If shipping them fails, give them back with
    /// [`merge`](Self::merge); if they must survive a crash while in flight,
    /// the caller records them durably itself.
    pub fn take(&self) -> Result<RoaringBitmap, CbtError> {
        let mut st = self.lock_state();
        self.check(&st)?;
        Ok(std::mem::take(&mut st.dirty))
    }

    /// Adds `set` to the dirty set and persists the bitmap (durable when it
    /// returns). Used to give back a [`take`](Self::take)n set whose
    /// shipping failed.
    pub fn merge(&self, set: &RoaringBitmap) -> Result<(), CbtError> {
        if let Some(max) = set.max()
            && u64::from(max) >= self.geometry.nblocks
        {
            return Err(CbtError::BlockOutOfRange {
                block: max,
                nblocks: self.geometry.nblocks,
            });
        }
        let mut io = self.lock_io();
        let bytes = {
            let mut st = self.lock_state();
            self.check(&st)?;
            if set.is_empty() {
                return Ok(());
            }
            st.dirty |= set;
            self.encode_dirty(&mut st)
        };
        self.guard(self.persist_bitmap(&mut io, &bytes))
    }

    /// Persists the bitmap now (a clean point); the activity log is kept.
    /// After it, a crash recovers at most the active extents as extra.
    pub fn checkpoint(&self) -> Result<(), CbtError> {
        let mut io = self.lock_io();
        let bytes = {
            let mut st = self.lock_state();
            self.check(&st)?;
            self.encode_dirty(&mut st)
        };
        self.guard(self.persist_bitmap(&mut io, &bytes))
    }

    /// Clean shutdown: persists the bitmap, then empties the activity log, so
    /// the next [`open`](Self::open) restores the set exactly. A poisoned
    /// tracker returns the error and leaves the files for crash recovery.
    pub fn close(self) -> Result<(), CbtError> {
        let mut io = self.lock_io();
        let bytes = {
            let mut st = self.lock_state();
            self.check(&st)?;
            st.active.clear();
            self.encode_dirty(&mut st)
        };
        // 1. Bitmap holds everything. 2. AL emptied.
        self.guard(self.persist_bitmap(&mut io, &bytes))?;
        self.guard(self.write_al(&mut io, Vec::new()))?;
        tracing::debug!(path = %self.al_path.display(), "change tracker closed cleanly");
        Ok(())
    }

    /// Drops the tracker without persisting anything, as a crash would
    /// (the file lock is released). For tests.
    #[doc(hidden)]
    pub fn crash(self) {
        drop(self);
    }

    /// Removes the state files of `stem` (and leftover temporaries); missing
    /// files are fine. The directory is fsynced.
    pub fn remove_files(dir: &Path, stem: &str) -> io::Result<()> {
        let (bitmap_path, al_path) = file_paths(dir, stem);
        for p in [
            durable::partial_path(&bitmap_path),
            durable::partial_path(&al_path),
            bitmap_path,
            al_path,
        ] {
            durable::remove_file(&p)?;
        }
        Ok(durable::sync_dir(dir)?)
    }

    /// The volume geometry.
    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    /// Blocks per activity-log extent.
    pub fn extent_blocks(&self) -> u32 {
        self.extent_blocks
    }

    /// Extents currently active (for metrics).
    pub fn active_extents(&self) -> usize {
        self.lock_state().active.len()
    }

    /// Whether an earlier I/O failure has poisoned the tracker.
    pub fn is_failed(&self) -> bool {
        self.lock_state().failed.is_some()
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut st = poisoned.into_inner();
            st.failed.get_or_insert_with(|| {
                (
                    "a thread panicked while updating the change tracker".to_string(),
                    None,
                )
            });
            st
        })
    }

    fn lock_io(&self) -> MutexGuard<'_, Io> {
        self.io.lock().unwrap_or_else(|poisoned| {
            // A panic in the middle of a write sequence: the files are still
            // safe (each step is), but stop, as for an I/O error.
            self.lock_state().failed.get_or_insert_with(|| {
                (
                    "a thread panicked while writing change-tracking files".to_string(),
                    None,
                )
            });
            poisoned.into_inner()
        })
    }

    fn check(&self, st: &State) -> Result<(), CbtError> {
        match &st.failed {
            None => Ok(()),
            Some((cause, kind)) => Err(CbtError::Poisoned {
                path: self.al_path.clone(),
                cause: cause.clone(),
                kind: *kind,
            }),
        }
    }

    /// Poisons the tracker if `r` is an error. Must not be called with
    /// `state` locked.
    fn guard<T>(&self, r: Result<T, CbtError>) -> Result<T, CbtError> {
        if let Err(e) = &r {
            let mut cause = e.to_string();
            if let Some(src) = e.io_error() {
                cause = format!("{cause}: {src}");
            }
            tracing::error!(path = %self.al_path.display(), error = %cause, "change tracking failed; refusing further writes until reopened");
            let kind = e.io_error().map(io::Error::kind);
            self.lock_state().failed.get_or_insert((cause, kind));
        }
        r
    }

    fn encode_dirty(&self, st: &mut State) -> Vec<u8> {
        st.dirty.optimize();
        if st.inflight.is_empty() {
            format::encode_bitmap(&st.dirty, self.geometry.block_size, self.geometry.nblocks)
        } else {
            let mut both = &st.dirty | &st.inflight;
            both.optimize();
            format::encode_bitmap(&both, self.geometry.block_size, self.geometry.nblocks)
        }
    }

    /// Replaces the bitmap file. Takes the I/O lock (`io`) to show that the
    /// caller serializes file writes.
    fn persist_bitmap(&self, _io: &mut Io, bytes: &[u8]) -> Result<(), CbtError> {
        Ok(durable::replace_file(&self.bitmap_path, bytes)?)
    }

    fn write_al(&self, io: &mut Io, extents: Vec<u32>) -> Result<(), CbtError> {
        let rec = AlRecord {
            block_size: self.geometry.block_size,
            extent_blocks: self.extent_blocks,
            capacity: self.al_capacity,
            seq: io.seq + 1,
            extents,
        };
        let buf = format::encode_al_slot(&rec, io.slot_size);
        let off = (al_slot_index(rec.seq) * io.slot_size) as u64;
        durable::write_record_at(&io.al, &self.al_path, &buf, off)?;
        durable::sync_data(&io.al, &self.al_path)?;
        io.seq = rec.seq;
        Ok(())
    }
}

impl State {
    /// Whether extents `e0..=e1` are all active; refreshes their LRU tick.
    #[inline]
    fn touch_all(&mut self, e0: u32, e1: u32) -> bool {
        self.tick += 1;
        let tick = self.tick;
        for e in e0..=e1 {
            match self.active.get_mut(&e) {
                Some(t) => *t = tick,
                None => return false,
            }
        }
        true
    }
}

/// Adds every block of every AL extent to `dirty`, interpreting extents with
/// the extent size recorded in the AL.
fn recover_extents(
    dirty: &mut RoaringBitmap,
    rec: &AlRecord,
    g: Geometry,
) -> Result<(), format::FormatError> {
    if rec.block_size != g.block_size {
        return Err(format::FormatError::AlGeometry {
            al_block_size: rec.block_size,
            block_size: g.block_size,
        });
    }
    let eb = u64::from(rec.extent_blocks);
    for &e in &rec.extents {
        let start = u64::from(e) * eb;
        if start >= g.nblocks {
            return Err(format::FormatError::AlPastEnd {
                extent: e,
                nblocks: g.nblocks,
            });
        }
        let end = (start + eb).min(g.nblocks) - 1;
        dirty.insert_range(start as u32..=end as u32);
    }
    Ok(())
}
