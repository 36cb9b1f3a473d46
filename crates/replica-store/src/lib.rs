//! The replica store of one replication group on the replica site.
//!
//! A replication group is N volumes replicated together; every point in
//! time (PIT) is crash-consistent across all of them. Per volume the store
//! keeps a **base image** plus **immutable delta segments, one per PIT**.
//! Reading PIT *k* of a volume = base + the segments of PITs ≤ *k*, newest
//! wins. A PIT becomes visible only once its segments for **every** volume
//! and its manifest are durable. Removing a PIT (retention) merges its
//! segment into the base (the oldest PIT) or into the next PIT's segment
//! (any other PIT; the next PIT's blocks win), so named PITs can be kept
//! anywhere in the chain. Every operation is crash-safe and idempotent:
//! after a crash at any point, [`ReplicaStore::open`] yields the set of
//! visible PITs from before or after the interrupted operation, never a
//! partial PIT, and every visible PIT reads back exactly what was committed.
//!
//! # Layout
//!
//! ```text
//! GROUP/
//! ├── store.lock                       flock: one ReplicaStore per directory
//! ├── store.meta                       magic|version|uuid|base_through|volumes|crc  (durable rewrite)
//! ├── base/NAME.img                    raw sparse base image per volume (size = volume size)
//! ├── pits/ID-FIRST/                   one directory per visible PIT
//! │   ├── manifest.pit                 magic|version|uuid|id|first|name|created_at|per-volume summary|crc
//! │   └── NAME.seg                     one segment per volume (possibly empty)
//! ├── staging/…                        PIT or merge being built; deleted at open
//! ├── merging/ID-FIRST/                oldest PIT being merged into the base; redone at open
//! └── journal/NUMBER.{jnl,idx}         a sync group's write log and its history (`journal`)
//! ```
//!
//! `ID` and `FIRST` are 20-digit zero-padded decimals. `ID` is the PIT id
//! (ids only grow). `FIRST` is the oldest committed PIT whose changes the
//! directory holds: a fresh commit has `FIRST` = previous newest id + 1, and
//! merging PIT *k* into its successor *n* produces `n-FIRST(k)`. So the
//! visible chain **tiles** the history: `base_through` (the newest id merged
//! into the base, in `store.meta`) is followed by a PIT with `FIRST =
//! base_through + 1`, then one with `FIRST` = that id + 1, and so on. Open
//! checks this tiling; a directory whose range `FIRST..=ID` is strictly
//! inside another valid directory's range is *superseded* (left over from a
//! finished merge) and is deleted.
//!
//! ```mermaid
//! flowchart LR
//!   base["base (through PIT 3)"] --> p5["pits/5-4"] --> p6["pits/6-6"] --> p9["pits/9-7"]
//!   p9 -. "remove 6: build staging/9-6, rename to pits/9-6, delete 6-6 and 9-7" .-> m["pits/9-6"]
//! ```
//!
//! # File formats
//!
//! All integers little-endian; `crc32c` is CRC-32C (Castagnoli); every file
//! starts with an 8-byte magic and a `u32` format version (`1`; `0` is never
//! valid), and every tag has `0` = invalid, so zeroed or truncated bytes
//! never decode. Small files are read only up to 1 MiB and checked in the
//! order length, CRC, magic, version, content, identity (store uuid, id).
//!
//! ## `store.meta`
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSRPMET` |
//! | 8 | 4 | version `1` |
//! | 12 | 4 | volume count *n* (1..=1024) |
//! | 16 | 16 | store uuid (random at create) |
//! | 32 | 8 | `base_through`: newest PIT id merged into the base (0: none) |
//! | 40 | .. | *n* × (`u16` name length, name (UTF-8, `[A-Za-z0-9._-]`, ≤ 64), `u64` size in bytes, `u32` block size) |
//! | .. | 4 | crc32c of all preceding bytes |
//!
//! ## `manifest.pit`
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSRPMAN` |
//! | 8 | 4 | version `1` |
//! | 12 | 4 | volume count *n* (= store.meta) |
//! | 16 | 16 | store uuid |
//! | 32 | 8 | PIT id (≥ 1) |
//! | 40 | 8 | `first` (1 ≤ `first` ≤ id) |
//! | 48 | 1 | name tag: `1` no name, `2` named |
//! | 49 | 1 | zero |
//! | 50 | 2 | name length (0 when unnamed, ≤ 255) |
//! | 52 | .. | name (UTF-8) |
//! | .. | 2 + .. | `created_at` length and text (RFC 3339, ≤ 64 bytes) |
//! | .. | *n* × 48 | per volume in store.meta order: `u64` entries, `u64` data blocks, BLAKE3 of the segment's header + index (32) |
//! | .. | 4 | crc32c of all preceding bytes |
//!
//! ## Segment `NAME.seg`
//!
//! `[header, zero-padded to one block][data slots][index][trailer]`, so data
//! blocks are block-aligned in the file. Header (64 bytes):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSRPSEG` |
//! | 8 | 4 | version `1` |
//! | 12 | 4 | block size *bs* |
//! | 16 | 16 | store uuid |
//! | 32 | 8 | PIT id |
//! | 40 | 4 | volume number (position in store.meta) |
//! | 44 | 4 | data slots *s* |
//! | 48 | 8 | index entries *e* |
//! | 56 | 4 | reserved, zero |
//! | 60 | 4 | crc32c of bytes 0..60 |
//!
//! Data slot *i* is at byte `bs × (1 + i)`. The index at `bs × (1 + s)` has
//! *e* entries of 48 bytes, strictly ascending by block: `u64` block,
//! `u32` kind (`1` data, `2` zero: no slot), `u32` slot (`0xFFFF_FFFF` for
//! zero), BLAKE3 of the block's bytes (32). The trailer is the crc32c of
//! the index (4 bytes); the file length must be exactly
//! `bs × (1 + s) + 48 × e + 4`.
//!
//! **Checks.** Open reads every manifest and every segment's header and
//! index: CRCs, identity (uuid, PIT, volume, block size), exact length,
//! BLAKE3 of header + index against the manifest, entries sorted and in
//! range. Block data is checked against its BLAKE3 on **every read** from a
//! segment, when merging, and for the whole PIT by
//! [`ReplicaStore::verify_pit`]. Base images carry no checksums (they are
//! raw images an operator may seed).
//!
//! # Crash safety
//!
//! Each operation has a single atomic **commit point** (a directory
//! rename); everything before it is invisible, everything after it is
//! redone by open. Ordering (numbered like the code):
//!
//! ```text
//! commit:       1 write segments, fsync each   2 write manifest, fsync, fsync staging/X
//!               3 RENAME staging/X -> pits/ID-FIRST  (commit point)   4 fsync pits/
//! remove oldest 0 verify k's data               1 RENAME pits/k -> merging/k (commit point)
//!   (-> base):  2 fsync merging/, pits/   3 apply k to base, fsync base   4 store.meta base_through=k
//!               5 delete merging/k, fsync merging/
//! remove middle 1 build staging/n-FIRST(k) = k ∪ n (n wins), data re-verified, fsync all
//!   (-> next):  2 RENAME -> pits/n-FIRST(k) (commit point; supersedes pits/k-.. and pits/n-..)
//!               3 fsync pits/   4 delete the superseded directories, fsync pits/
//! set name:     manifest.pit.partial, fsync, RENAME over manifest.pit, fsync dir
//! open:         delete staging/*; finish merging/* (skip apply if id <= base_through);
//!               delete superseded pits/ directories (inside another valid
//!               directory's range, or id <= base_through); check the tiling
//! ```
//!
//! Why this is enough: a PIT directory appears in `pits/` only by a rename
//! of a fully fsynced directory, so a visible PIT is always complete, and
//! the rename is atomic, so a crash leaves the before- or the after-set.
//! A merge into the base writes only *k*'s own blocks; while it runs, *k*
//! stays in the in-memory chain, so reads of those blocks come from *k*'s
//! segment and every other base block is untouched. The segment stays in
//! `merging/` until `store.meta` says `base_through ≥ k`, so open can redo
//! the merge (idempotent: it writes the same bytes again) before serving
//! any read. A merge into the next PIT writes a new directory and never
//! modifies the old ones; before its rename open sees the old pair, after
//! it the superset wins. Removing the newest PIT is refused unless it is
//! the only one, so removal never changes the newest view, which is the
//! state the next delta is computed against. Media assumption: a durably
//! written sector reads back intact or fails its checksum.
//!
//! **Damage.** A PIT whose manifest or segments fail the checks at open,
//! and every newer PIT (they depend on its changes), are not listed by
//! [`ReplicaStore::pits`]; they are reported by [`ReplicaStore::damaged`],
//! reading them returns [`ReplicaError::Damaged`], and new PITs are refused
//! until [`ReplicaStore::discard_damaged`] deletes them (the engine then
//! resynchronizes from the newest good PIT with a checksum sync). Older PITs
//! stay readable. A damaged segment in `merging/` (the base is half
//! updated) makes open fail with [`ReplicaError::Corrupt`].
//!
//! **Sticky failure.** An I/O error at or after a commit point, or while
//! writing the base, poisons the handle: every later change returns
//! [`ReplicaError::Poisoned`] until the store is reopened; reads keep
//! working on the last published state. Errors before a commit point (a full
//! disk while staging) only fail that operation.
//!
//! # Stores in an object store
//!
//! [`ReplicaStore::create_in`] / [`ReplicaStore::open_in`] keep the
//! committed state in an [`offsite_objects::ObjectStore`] (an S3 bucket
//! prefix, an encrypting wrapper of one, or a `DirStore`) and what is not
//! committed in a local **working directory** of the replica site. The
//! chain logic (tiling, superseded ranges, damage, sticky failure) and the
//! file formats are those above; only the commit points differ, because an
//! object store has no rename: an object is visible once complete, and a
//! PIT is visible iff its manifest object exists and checks out.
//!
//! ```text
//! OBJECTS (bucket prefix)
//! ├── store.meta                       same format; rewritten by a put (atomic replace)
//! ├── base/NAME/CHUNKNO                base image in 4 MiB chunks (20-digit chunk number);
//! │                                    a missing chunk reads as zeroes, an all-zero one is deleted
//! ├── pits/ID-FIRST/NAME.seg           one segment per volume (same format)
//! ├── pits/ID-FIRST/manifest.pit       written LAST: the commit point of the PIT
//! ├── merging/ID-FIRST                 empty marker: PIT ID-FIRST is being merged into the base
//! ├── journal/NUMBER.jnl               a sealed journal file, whole (a copy of the local one)
//! └── journal/NUMBER.jnl.OFFSET        a tail part of the open file: its bytes from OFFSET
//!                                      to the end of a checkpoint (replaced at its seal)
//! WORK DIR (local disk)
//! ├── store.lock                       flock: one ReplicaStore per working directory
//! ├── staging/…                        PIT or merge being built (SegmentBuilder); deleted at open
//! ├── journal/NUMBER.{jnl,idx}         a sync or continuous group's journal: the write log
//! │                                    appends here, exactly as in a directory store
//! └── journal.download/                the journal being restored from the objects; deleted at open
//! ```
//!
//! The journal is written locally (a sync write's acknowledgement never
//! waits for the bucket) and copied into the objects by a background
//! thread of a write log that keeps history: each sealed file whole right
//! after its seal, and the open file's new checkpoints as tail parts every
//! [`UPLOAD_INTERVAL`] (5 s). A replica site that is lost loses at most
//! the checkpoints of about the last checkpoint interval plus 5 s; a
//! working directory without journal files gets the journal back at
//! [`ReplicaStore::open_in`]. See the module `journal_objects` for the
//! bound's trade-off and the details.
//!
//! | operation | ordering (commit point in bold) | open after a crash |
//! | --- | --- | --- |
//! | create | lock the working directory; refuse a non-empty object store; **put `store.meta`** | no `store.meta`: not a store |
//! | commit | 1 build and fsync the segments in `staging/ID`; 2 `put_from` each to `pits/ID-FIRST/NAME.seg`; 3 **put `manifest.pit`**; 4 delete `staging/ID`, publish | segments without a manifest are deleted (their id is not used) |
//! | remove middle (→ next) | 1 build `staging/n-FIRST(k)` = k ∪ n, re-verified; 2 upload its segments; 3 **put its manifest** (supersedes k and n); 4 delete k's and n's objects, manifest first | the superset wins; superseded PITs' objects are deleted |
//! | remove oldest (→ base) | 0 verify k; 1 **put `merging/k`**; 2 rewrite every base chunk k touches (read, apply k's blocks, put or delete); 3 put `store.meta` with `base_through = k`; 4 delete k's objects (manifest first), then the marker | a marker newer than `base_through` is redone from k's objects, still under `pits/` (idempotent: the same chunks again); then deleted |
//! | set name | **put `manifest.pit`** over the old one | old or new name |
//! | journal upload (after a seal; every 5 s) | 1 **put** each sealed file missing in the bucket whole (`put_from`); 2 delete its tail parts; 3 **put** the open file's bytes since its last part, up to its newest checkpoint, as `journal/NUMBER.jnl.OFFSET`; 4 delete the objects of files older than the oldest local one | a missing object is put by the next pass; parts beside a whole file are deleted; orphans are deleted by the next pass or prune |
//! | journal prune | remove the local files (as for a directory); then delete their objects, parts first | orphan objects: deleted by the next prune or pass |
//! | restore the journal (open, no local journal file) | 1 delete a leftover `journal.download/`; 2 write every file there from its whole object or its contiguous parts, header checked, entries scanned, a torn end cut; 3 fsync; 4 **rename to `journal/`** | no `journal/`: the download starts again |
//! | discard damaged | delete each PIT's objects, manifest first | a PIT without manifest is a leftover |
//! | write base | buffer per chunk; put a chunk once all its blocks are written, at `sync_base`, at the first commit, when 16 chunks are pending, or on close; a partial chunk that exists is read first | before the first PIT the base is only an initial state (as for directories) |
//! | adopt base | put (or delete, when all zero) every chunk of the seed image; the image file is left in place | as write base |
//!
//! Why this is enough: segments are complete objects before the manifest
//! that names them is put, so a visible manifest never names a missing or
//! partial segment; deleting a PIT deletes its manifest first, so a crash
//! mid-deletion leaves manifest-less leftovers (deleted at open), never a
//! visible PIT with a missing segment. A merge into the base never changes
//! `k`'s objects until `store.meta` says `base_through ≥ k`, so open can
//! redo it. Every read of segment data is still checked against its
//! BLAKE3, so a changed or truncated object is reported as damage, as in a
//! directory; an unreachable store fails the operation (or open) instead.
//!
//! Reads of segments and base chunks go through a read cache (64 MiB, LRU
//! of 256 KiB windows of objects; a run of missing windows is one ranged
//! read), so the engine's small reads do not each become a request.
//! Segment headers and indexes are read at open, one ranged read each,
//! using the sizes from the listing. One store per working directory is
//! enforced by the flock; two sites opening the same bucket prefix at once
//! are not detected (the lead's wiring must give a prefix to one site).
//! [`ReplicaStore::base_path`] has no meaning there (no image file).
//!
//! # Concurrency and memory
//!
//! `ReplicaStore` is `Send + Sync`. Reads hold a read lock on the in-memory
//! chain for their duration; changes (commit, remove, rename, base writes)
//! are serialized by one mutex and publish under a short write lock.
//! [`ReplicaStore::begin_pit`] allows one [`PitWriter`] at a time
//! ([`ReplicaError::Busy`]); retention may run while a PIT is being
//! written. The base may change under [`ReplicaStore::read`] with `None`
//! while the oldest PIT is merged into it (base-only reads are meant for the
//! time before the first PIT).
//!
//! Each loaded segment keeps its sorted block numbers (`u64`) and data slots
//! (`u32`): **12 bytes per changed block per PIT**, nothing per clean block.
//! A 100 GiB volume with 4 KiB blocks where 1 % changes per PIT costs
//! 262 144 × 12 B = 3 MiB per PIT. Reading block *b* of PIT *k* looks up
//! *b* in each segment ≤ *k* by binary search (tens of PITs). A
//! [`PitWriter`] keeps a hash map entry (about 60–100 bytes) per written
//! block until commit, plus a 4 MiB write buffer per volume at most.
//!
//! # Testing
//!
//! The crash tests and the oracle property test run against both a
//! directory store and a store in a `DirStore` object store (whose steps
//! also go through `offsite-durable`). Every file-system mutation goes
//! through one module with a
//! thread-local failpoint ([`failpoint`], hidden): tests fail the N-th
//! create/fsync/rename/remove of an operation, freeze all later mutations
//! (the "crash"), reopen, and check the before/after sets against an
//! oracle, also crashing the recovering open at each of its steps. This
//! does not drop un-fsynced page-cache data as a power cut would; the
//! ordering argument above covers that, and a separate test SIGKILLs a real
//! child process mid-commit and mid-merge.

mod backing;
mod chain;
mod error;
mod format;
mod history;
mod image;
pub mod journal;
mod journal_objects;
mod log;
mod merge;
mod recover;
mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Every file-system mutation of the store goes through `offsite-durable`,
/// so that a test can "crash" the store at any step ([`failpoint`]).
use offsite_durable as fsx;

pub use crate::chain::ReplicaStore;

/// Whether a store in an object store may still write its prefix: asked
/// before each commit point (a PIT's first upload and its manifest put, a
/// merge's marker, a name's rewrite, a base's adoption), so that a writer
/// whose prefix another site took over stops before it changes anything
/// there. The store knows nothing of sites: the implementation (the site's
/// owner record, `offsite_engine::owner`) decides and words the refusal.
pub trait CommitFence: Send + Sync + std::fmt::Debug {
    /// `Err(why)`: another writer owns the prefix; `why` names it, since
    /// when, and what to do. Also an error when the check could not be
    /// made (the commit would not have reached the store either).
    fn check(&self) -> Result<(), String>;
}
pub use crate::error::ReplicaError;
pub use crate::history::{CheckpointList, CheckpointSummary, JournalPolicy, Listing, PruneReport};
pub use crate::image::CheckpointImage;
pub use crate::journal::{
    CheckpointId, CheckpointInfo, CheckpointRecord, Consistency, JOURNAL_DIR, JOURNAL_HEADER_LEN,
    JournalEntry, MAX_CHECKPOINT_NAME, decode_journal_entries, encode_checkpoint,
    encode_journal_entry,
};
pub use crate::journal_objects::{JournalUpload, UPLOAD_INTERVAL};
pub use crate::log::{
    History, LOG_FILE, LogApplier, LogFormatError, LogRecord, MAX_RECORD_DATA, RECORD_HEADER_LEN,
    RECORD_TRAILER_LEN, WriteLog, decode_records, encode_record,
};
pub use crate::writer::PitWriter;

/// Smallest supported block size.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest supported block size.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;

/// One volume of the group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// Name, unique in the group: 1..=64 bytes of `[A-Za-z0-9._-]`, not
    /// starting with `.` (it names files).
    pub name: String,
    /// Size in bytes, a non-zero multiple of `block_size`.
    pub size_bytes: u64,
    /// Block size in bytes: a power of two, 512 ..= 1 MiB.
    pub block_size: u32,
}

/// Identifier of a PIT: positive, growing with every commit of a store.
/// Displays and serializes as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct PitId(u64);

impl PitId {
    /// `None` for 0, which is never a valid id.
    pub fn new(id: u64) -> Option<PitId> {
        (id != 0).then_some(PitId(id))
    }

    /// The numeric id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for PitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A number or text that is not a PIT id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PitIdError {
    /// 0 is never a PIT id.
    #[error("PIT id 0 is not valid")]
    Zero,
    /// The text is not a number.
    #[error("{0:?} is not a PIT id (a positive number)")]
    NotANumber(String),
}

impl TryFrom<u64> for PitId {
    type Error = PitIdError;
    fn try_from(id: u64) -> Result<PitId, PitIdError> {
        PitId::new(id).ok_or(PitIdError::Zero)
    }
}

impl From<PitId> for u64 {
    fn from(id: PitId) -> u64 {
        id.0
    }
}

impl FromStr for PitId {
    type Err = PitIdError;
    fn from_str(s: &str) -> Result<PitId, PitIdError> {
        let n: u64 = s
            .parse()
            .map_err(|_| PitIdError::NotANumber(s.to_string()))?;
        PitId::try_from(n)
    }
}

/// A visible PIT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PitInfo {
    /// Its id.
    pub id: PitId,
    /// Optional operator-given name (named PITs are kept by retention).
    pub name: Option<String>,
    /// Creation time as given at commit (RFC 3339).
    pub created_at: String,
    /// Data bytes stored in its segments (zero blocks take none).
    pub bytes: u64,
    /// Changed blocks recorded in its segments (data and zero).
    pub blocks: u64,
}

/// A PIT directory that failed its checks at open, or depends on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedPit {
    /// Its id (from the directory name).
    pub id: PitId,
    /// The directory, or in an object store the key prefix
    /// `pits/ID-FIRST` of its objects.
    pub path: std::path::PathBuf,
    /// What is wrong.
    pub why: String,
}

/// A volume list, PIT name or creation time that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidInput {
    #[error("a group needs 1 to {max} volumes, got {count}", max = format::MAX_VOLUMES)]
    VolumeCount { count: usize },
    #[error(
        "volume name {name:?} must be 1 to {max} characters of A-Z a-z 0-9 . _ - and not start with '.'",
        max = format::MAX_VOLUME_NAME
    )]
    VolumeName { name: String },
    #[error("volume name {name:?} appears twice")]
    DuplicateVolume { name: String },
    #[error(
        "volume {name:?} has block size {block_size}; use a power of two from {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}"
    )]
    BlockSize { name: String, block_size: u32 },
    #[error(
        "volume {name:?} has size {size_bytes} bytes, which is not a positive multiple of its block size {block_size}"
    )]
    VolumeSize {
        name: String,
        size_bytes: u64,
        block_size: u32,
    },
    #[error(
        "PIT name {name:?} must be 1 to {max} bytes without control characters",
        max = format::MAX_PIT_NAME
    )]
    PitName { name: String },
    #[error("creation time {value:?} is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z")]
    CreatedAt { value: String },
}

/// Checks a volume list: 1..=1024 volumes, valid unique names, geometry.
pub(crate) fn validate_volumes(volumes: &[VolumeSpec]) -> Result<(), InvalidInput> {
    if volumes.is_empty() || volumes.len() > format::MAX_VOLUMES {
        return Err(InvalidInput::VolumeCount {
            count: volumes.len(),
        });
    }
    let mut seen = std::collections::HashSet::new();
    for v in volumes {
        let n = &v.name;
        let ok_chars = n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if n.is_empty() || n.len() > format::MAX_VOLUME_NAME || !ok_chars || n.starts_with('.') {
            return Err(InvalidInput::VolumeName { name: n.clone() });
        }
        if !seen.insert(n.as_str()) {
            return Err(InvalidInput::DuplicateVolume { name: n.clone() });
        }
        if !v.block_size.is_power_of_two()
            || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&v.block_size)
        {
            return Err(InvalidInput::BlockSize {
                name: n.clone(),
                block_size: v.block_size,
            });
        }
        if v.size_bytes == 0 || !v.size_bytes.is_multiple_of(u64::from(v.block_size)) {
            return Err(InvalidInput::VolumeSize {
                name: n.clone(),
                size_bytes: v.size_bytes,
                block_size: v.block_size,
            });
        }
    }
    Ok(())
}

/// Checks a PIT name: 1..=255 bytes, no control characters.
pub(crate) fn validate_pit_name(name: &str) -> Result<(), InvalidInput> {
    if name.is_empty() || name.len() > format::MAX_PIT_NAME || name.chars().any(char::is_control) {
        return Err(InvalidInput::PitName {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks a creation time: RFC 3339, at most 64 bytes.
pub(crate) fn validate_created_at(s: &str) -> Result<(), InvalidInput> {
    let ok = s.len() <= format::MAX_CREATED_AT
        && time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).is_ok();
    if ok {
        Ok(())
    } else {
        Err(InvalidInput::CreatedAt {
            value: s.to_string(),
        })
    }
}

/// Test hook: make the N-th crash-relevant file-system step of this thread
/// fail, and every step after it ("the disk froze"), to simulate a crash
/// at that point. Counted steps: creating files and directories, fsync of
/// files and directories, renames, removals. Shared with every crate that
/// writes through `offsite-durable`. Not part of the API.
#[doc(hidden)]
pub use offsite_durable::failpoint;
