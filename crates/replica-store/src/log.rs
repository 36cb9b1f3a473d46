//! The write log of a synchronous group: the replica's **open segment**,
//! written into the group's [journal](crate::journal).
//!
//! In sync mode every write the primary acknowledges must already be
//! durable here. Writes arrive as [log records](encode_record) in batches;
//! [`WriteLog::append`] writes a whole batch to the journal's open file
//! (`GROUP/journal/NUMBER.jnl`) with one positional `write` and one
//! `fdatasync` (so concurrent writes at the primary share one replica
//! fsync: group commit) and then applies it to an open [`PitWriter`] in
//! `staging/`. The two halves may run on two threads:
//! [`WriteLog::append_durable`] makes batches durable (the sync stream
//! acknowledges them then), a [`LogApplier`] copies them into the PIT in
//! the same order while the next batch is written, and a seal waits until
//! every durable batch is applied. [`WriteLog::checkpoint`] appends a
//! checkpoint record the same way: a consistent cut after everything
//! appended before it. Sealing ([`WriteLog::seal`]) commits that writer as
//! a PIT — the blocks are already in its segments, so only indexes and the
//! manifest are written — and starts the journal's next file after it.
//! With [`History::Keep`] the sealed file stays as history until
//! [`ReplicaStore::prune_journal`] drops it; by default
//! ([`History::Discard`]) the seal removes it, as the log before the
//! journal did. The open file is bounded by
//! how often the primary (or the replica, [`WriteLog::bytes`]) seals;
//! retention then merges the sealed PITs into the base as for async
//! groups, keeping the ones the journal's checkpoints need
//! ([`ReplicaStore::journal_pins`]).
//!
//! # Format
//!
//! The journal file's header and the checkpoint record are in
//! [`crate::journal`] (version 2). Write records are as in version 1, and
//! are exactly what travels in the primary's batches ([`decode_records`],
//! which refuses checkpoint records: only the replica writes those):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `OLRC` |
//! | 4 | 1 | kind: `1` data, `2` zeroes (no data) |
//! | 5 | 3 | zero |
//! | 8 | 8 | sequence number (strictly growing within a journal file) |
//! | 16 | 8 | first block |
//! | 24 | 4 | block count (≥ 1) |
//! | 28 | 4 | data length: count × block size for data, 0 for zeroes |
//! | 32 | 2 | volume number (position in `store.meta`) |
//! | 34 | 6 | zero |
//! | 40 | .. | data |
//! | .. | 4 | crc32c of the record's preceding bytes |
//!
//! ## Version 1 logs
//!
//! Before the journal, a group's log was `GROUP/sync.log`: the same
//! records after a 64-byte header (magic `OFSRPLOG`, version `1`, zero,
//! store uuid at 16, `after` at 32, zeroes, crc32c of bytes 0..60 at 60),
//! deleted at every seal. [`ReplicaStore::open_log`] still reads one: when
//! its `after` is the store's tip, its valid records are copied into the
//! journal's first file (a new file, fsynced, renamed into place, the
//! directory fsynced), and then `sync.log` is removed; when it is older it
//! was sealed already, and is removed. A crash between the two finds a
//! journal file and `sync.log`: the copy was complete, so `sync.log` goes.
//! (Downgrading to a build without the journal is not supported.)
//!
//! # Durability and recovery
//!
//! A batch is acknowledged only after its `fdatasync`. Appends overwrite
//! file space that is already there: the file is extended in 4 MiB steps
//! (`GROW`) of written zeroes (not holes, not `fallocate`d extents, which
//! would still change metadata on their first write), by the append that
//! needs the room, before its records, under its one `fdatasync`. Every
//! other append only overwrites zeroes in place, so its `fdatasync` writes
//! data and no file-system metadata (the file's size and extents do not
//! change). A zero tail ends the entries: zeroes have no record magic, so
//! reading stops there as it does at a torn record; the file's length says
//! nothing about where the entries end.
//!
//! Where the file system allows it, appends skip the page cache: the file
//! is also opened `O_DIRECT | O_DSYNC`, and an append is one aligned write
//! of the 4 KiB blocks it touches (the last block's earlier bytes, kept in
//! memory, then the records, then zero padding), durable when the write
//! returns, with no `fdatasync`. Measured on the development VM: 4 KiB
//! appends p50 ~135 µs against ~165 µs for write + `fdatasync`, and no
//! page-cache pages to fill (which costs ~9 µs of CPU per new 4 KiB page
//! on a ballooned guest). The zero padding is the same zero tail, so the
//! format and recovery are unchanged. Where `O_DIRECT` is refused (tmpfs)
//! appends are buffered writes and `fdatasync`.
//!
//! A crash can leave a torn last append (followed by zeroes, or by nothing
//! if it hit while the file was being extended);
//! [`ReplicaStore::open_log`] keeps the longest prefix of entries that
//! decode and check, truncates the file after it (a torn batch or
//! checkpoint was never acknowledged; a zero tail is the log's clean end),
//! and replays the prefix's writes into a new writer. The next append
//! extends the file with zeroes again, so bytes of a torn batch never
//! survive behind a shorter new batch, where they could read as records.
//!
//! Which file a PIT holds is decided by the file's `after`:
//!
//! ```text
//! seal:  1 commit the writer as PIT n (its own ordering: fsync, rename)
//!        2 cut the sealed file's zero tail (best effort)
//!        3 create the next file, after = n, continues = the sealed file's
//!          length (NUMBER.jnl.partial, fsync, rename, fsync directory)
//!        4 write the sealed file's index (a cache; best effort)
//!        5 History::Discard only: remove every file but the new one
//!          (unlink, fsync directory; best effort, the next seal retries)
//!        6 History::Keep in an object store: wake the upload thread,
//!          which copies the sealed file into the objects (see
//!          "Stores in an object store" in the crate docs)
//! open:  newest file's after == tip -> replay its writes
//!        after <  tip -> sealed already (a crash between 1 and 3, or PITs
//!                        committed while no log was open): it is history;
//!                        a new file after the tip starts (not `continues`:
//!                        nothing says PIT `tip` is exactly that file)
//!        after >  tip -> Corrupt (the PIT it follows is gone)
//! ```
//!
//! While a log exists, its writer is the store's only PIT writer
//! ([`ReplicaError::Busy`] for anyone else), so PIT `after + 1` is always
//! the seal of exactly the open file. A failure after the commit point (2,
//! 3) stops the log ([`ReplicaError::LogFailed`]) until it is reopened:
//! appends would otherwise go to a file that is history already.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use offsite_durable::le;

use crate::chain::{Inner, error_chain};
use crate::history::{
    FileMeta, JournalState, LoadMode, ScanFrom, list_files, load_file, scan, start_order,
};
use crate::journal::{
    CheckpointId, CheckpointInfo, CheckpointRecord, Consistency, Header, IndexedCheckpoint,
    JOURNAL_DIR, JOURNAL_HEADER_LEN, JournalEntry, Order, encode_checkpoint, encode_header,
    file_path, valid_name,
};
use crate::{PitInfo, PitWriter, ReplicaError, ReplicaStore, VolumeSpec, fsx};

/// The version 1 log's file name in the store directory (read, then
/// removed, by [`ReplicaStore::open_log`]).
pub const LOG_FILE: &str = "sync.log";
const V1_MAGIC: &[u8; 8] = b"OFSRPLOG";
const V1_VERSION: u32 = 1;
const V1_HEADER_LEN: usize = 64;
pub(crate) const REC_MAGIC: &[u8; 4] = b"OLRC";
/// Bytes of a record before its data.
pub const RECORD_HEADER_LEN: usize = 40;
/// Bytes of a record after its data.
pub const RECORD_TRAILER_LEN: usize = 4;
/// Largest data length of one record.
pub const MAX_RECORD_DATA: u32 = 32 << 20;
/// Whether records with a bad CRC are rejected: always, except in fuzzing
/// builds, where random bytes would never get past it to the parser.
const VERIFY_CHECKSUMS: bool = !cfg!(fuzzing);
const KIND_DATA: u8 = 1;
const KIND_ZERO: u8 = 2;
/// How far the file is extended (in written zeroes) when an append needs
/// room past its end. Each extension changes the file's size and extents,
/// so the `fdatasync` of the append that makes it also writes file-system
/// metadata; every append into the zeroes is an overwrite whose
/// `fdatasync` does not. 4 MiB makes that one append in about a thousand
/// of 4 KiB (or one of every few 8 MiB batches, which extend the file by
/// their own size at least), at the cost of writing 4 MiB of zeroes once
/// (milliseconds) and of at most 4 MiB of disk ahead of the records per
/// log. A new file (every seal) starts at its header; its first append
/// extends it.
const GROW: u64 = 4 << 20;
/// Segment data of the open PIT goes to disk in flushes of this size, not
/// the bulk writers' 4 MiB: a flush is queued at the same disk as the
/// log's small synchronous appends, and an append queued behind it waits
/// for all of it. Measured with `bench/sync.sh` (QD32, five interleaved
/// pairs of runs, docs/benchmarks.md): median 25.6k IOPS and p99 5.7 ms
/// with 512 KiB, against 19.6k and 7.4 ms with 4 MiB.
const APPLY_FLUSH: usize = 512 << 10;
/// Most zeroes written by one `write` when extending the file.
const ZERO_CHUNK: u64 = 1 << 20;

/// One write of a log batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord<'a> {
    /// Sequence number.
    pub seq: u64,
    /// Volume number (position in the store's volumes).
    pub volume: u16,
    /// First block.
    pub first: u64,
    /// Number of blocks.
    pub count: u32,
    /// The blocks' new contents, or `None`: they are zeroes now.
    pub data: Option<&'a [u8]>,
}

/// Appends the encoding of `rec` to `out`.
pub fn encode_record(rec: &LogRecord<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(REC_MAGIC);
    out.push(if rec.data.is_some() {
        KIND_DATA
    } else {
        KIND_ZERO
    });
    out.extend_from_slice(&[0; 3]);
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&rec.first.to_le_bytes());
    out.extend_from_slice(&rec.count.to_le_bytes());
    let dl = rec.data.map_or(0, <[u8]>::len) as u32;
    out.extend_from_slice(&dl.to_le_bytes());
    out.extend_from_slice(&rec.volume.to_le_bytes());
    out.extend_from_slice(&[0; 6]);
    if let Some(d) = rec.data {
        out.extend_from_slice(d);
    }
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Why write-log bytes (a record, a batch from the network, the file's
/// header) are not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogFormatError {
    /// A record does not start with the record magic.
    #[error("log record has a bad magic")]
    RecordMagic,
    /// A record's reserved bytes are not zero.
    #[error("log record has non-zero reserved bytes")]
    Reserved,
    /// A record covers no block.
    #[error("log record of zero blocks")]
    ZeroBlocks,
    /// A data record's length does not fit its block count.
    #[error("log record carries {bytes} bytes for {count} blocks")]
    DataLength {
        /// Data bytes the record carries.
        bytes: u32,
        /// Blocks it covers.
        count: u32,
    },
    /// A zero-block record carries data.
    #[error("zero-block log record carries data")]
    ZeroWithData,
    /// A record of a kind this build does not know.
    #[error("log record of unknown kind {0}")]
    UnknownKind(u8),
    /// A record fails its crc32c.
    #[error("log record fails its checksum")]
    RecordChecksum,
    /// A batch ends in the middle of a record.
    #[error("log batch ends inside a record ({trailing} trailing bytes)")]
    Truncated {
        /// Bytes after the last whole record.
        trailing: usize,
    },
    /// Sequence numbers do not grow.
    #[error("log record {seq} follows record {prev}")]
    OutOfOrder {
        /// The record's sequence number.
        seq: u64,
        /// The one before it.
        prev: u64,
    },
    /// A record names a volume the store does not have.
    #[error("log record for unknown volume #{0}")]
    UnknownVolume(u16),
    /// A record's blocks lie past the end of its volume.
    #[error("log record for blocks {first}+{count} is past the end of volume {volume}")]
    PastEnd {
        /// First block.
        first: u64,
        /// Blocks.
        count: u32,
        /// The volume's name.
        volume: String,
    },
    /// A record's data is not `count` blocks of the volume's block size.
    #[error("log record carries {bytes} bytes for {count} blocks of {block_size}")]
    DataSize {
        /// Data bytes the record carries.
        bytes: usize,
        /// Blocks it covers.
        count: u32,
        /// The volume's block size.
        block_size: u64,
    },
    /// The file's header could not be read.
    #[error("{0}")]
    ReadHeader(std::io::Error),
    /// The header is shorter than its fixed length.
    #[error("log header is truncated ({0} bytes)")]
    HeaderTruncated(usize),
    /// The header fails its crc32c.
    #[error("log header fails its checksum")]
    HeaderChecksum,
    /// The file is not a write log.
    #[error("not a replica write log (bad magic)")]
    HeaderMagic,
    /// The log was written by another format version.
    #[error("write log format version {0} is not supported")]
    Version(u32),
    /// The log is another store's.
    #[error("the write log belongs to another replica store")]
    OtherStore,
    /// A batch from the network carries a checkpoint record.
    #[error("log batch carries a checkpoint record; only the replica writes those")]
    CheckpointInBatch,
    /// A checkpoint record has flags this build does not know.
    #[error("checkpoint record has unknown flags {0:#04x}")]
    CheckpointFlags(u8),
    /// A checkpoint record has id 0.
    #[error("checkpoint record has id 0")]
    CheckpointZero,
    /// A checkpoint's name is too long, not UTF-8 or has control characters.
    #[error("checkpoint record has an invalid name")]
    CheckpointName,
    /// Checkpoint ids do not grow, or a checkpoint's time goes back.
    #[error("checkpoint {id} follows checkpoint {prev} out of order")]
    CheckpointOrder {
        /// The checkpoint's id.
        id: u64,
        /// The one before it.
        prev: u64,
    },
    /// A checkpoint does not name the write before it as its last.
    #[error("checkpoint record does not follow the write it names as its last")]
    CheckpointThrough,
    /// A journal file's header has unknown flags or non-zero reserved bytes.
    #[error("journal header has unknown flags or non-zero reserved bytes")]
    HeaderReserved,
    /// A journal index is shorter than its fixed part.
    #[error("journal index is truncated ({0} bytes)")]
    IndexTruncated(usize),
    /// A journal index fails its crc32c.
    #[error("journal index fails its checksum")]
    IndexChecksum,
    /// The file is not a journal index.
    #[error("not a journal index (bad magic)")]
    IndexMagic,
    /// The index was written by another format version.
    #[error("journal index format version {0} is not supported")]
    IndexVersion(u32),
    /// An index's checkpoints are out of order, out of range or malformed.
    #[error("journal index lists invalid checkpoints")]
    IndexEntries,
}

/// Decodes the record at the start of `buf`: the record and its length,
/// `Ok(None)` if `buf` is too short to hold it, or why it is invalid.
pub(crate) fn decode_one(buf: &[u8]) -> Result<Option<(LogRecord<'_>, usize)>, LogFormatError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Ok(None);
    }
    if &buf[0..4] != REC_MAGIC {
        return Err(LogFormatError::RecordMagic);
    }
    let kind = buf[4];
    if kind == crate::journal::KIND_CHECKPOINT {
        return Err(LogFormatError::CheckpointInBatch);
    }
    if buf[5..8] != [0; 3] || buf[34..40] != [0; 6] {
        return Err(LogFormatError::Reserved);
    }
    let count = le::u32_at(buf, 24);
    let dl = le::u32_at(buf, 28);
    if count == 0 {
        return Err(LogFormatError::ZeroBlocks);
    }
    match kind {
        KIND_DATA if dl == 0 || dl > MAX_RECORD_DATA || !dl.is_multiple_of(count) => {
            return Err(LogFormatError::DataLength { bytes: dl, count });
        }
        KIND_DATA => {}
        KIND_ZERO if dl != 0 => return Err(LogFormatError::ZeroWithData),
        KIND_ZERO => {}
        k => return Err(LogFormatError::UnknownKind(k)),
    }
    let total = RECORD_HEADER_LEN + dl as usize + RECORD_TRAILER_LEN;
    if buf.len() < total {
        return Ok(None);
    }
    let crc = le::u32_at(buf, total - RECORD_TRAILER_LEN);
    if VERIFY_CHECKSUMS && crc32c::crc32c(&buf[..total - RECORD_TRAILER_LEN]) != crc {
        return Err(LogFormatError::RecordChecksum);
    }
    let data =
        (kind == KIND_DATA).then(|| &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + dl as usize]);
    Ok(Some((
        LogRecord {
            seq: le::u64_at(buf, 8),
            volume: le::u16_at(buf, 32),
            first: le::u64_at(buf, 16),
            count,
            data,
        },
        total,
    )))
}

/// Decodes a whole batch (untrusted bytes from the network): every byte
/// must belong to a valid write record (no checkpoint: those are the
/// replica's), and sequence numbers must grow.
pub fn decode_records(buf: &[u8]) -> Result<Vec<LogRecord<'_>>, LogFormatError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Some((rec, len)) = decode_one(&buf[at..])? else {
            return Err(LogFormatError::Truncated {
                trailing: buf.len() - at,
            });
        };
        if let Some(prev) = out.last().map(|r: &LogRecord<'_>| r.seq)
            && rec.seq <= prev
        {
            return Err(LogFormatError::OutOfOrder { seq: rec.seq, prev });
        }
        out.push(rec);
        at += len;
    }
    Ok(out)
}

/// `after` from a version 1 log's header, or why it is not one of this
/// store's.
fn decode_v1_header(h: &[u8], uuid: &[u8; 16]) -> Result<u64, LogFormatError> {
    if h.len() < V1_HEADER_LEN {
        return Err(LogFormatError::HeaderTruncated(h.len()));
    }
    if crc32c::crc32c(&h[..60]) != le::u32_at(h, 60) {
        return Err(LogFormatError::HeaderChecksum);
    }
    if &h[0..8] != V1_MAGIC {
        return Err(LogFormatError::HeaderMagic);
    }
    let v = le::u32_at(h, 8);
    if v != V1_VERSION {
        return Err(LogFormatError::Version(v));
    }
    if &h[16..32] != uuid {
        return Err(LogFormatError::OtherStore);
    }
    Ok(le::u64_at(h, 32))
}

/// Whether `rec` fits the store's volumes: volume, range, data length.
pub(crate) fn check_record(
    specs: &[VolumeSpec],
    rec: &LogRecord<'_>,
) -> Result<(), LogFormatError> {
    let spec = specs
        .get(usize::from(rec.volume))
        .ok_or(LogFormatError::UnknownVolume(rec.volume))?;
    let bs = u64::from(spec.block_size);
    rec.first
        .checked_add(u64::from(rec.count))
        .filter(|&e| e <= spec.size_bytes / bs)
        .ok_or_else(|| LogFormatError::PastEnd {
            first: rec.first,
            count: rec.count,
            volume: spec.name.clone(),
        })?;
    if let Some(d) = rec.data
        && d.len() as u64 != u64::from(rec.count) * bs
    {
        return Err(LogFormatError::DataSize {
            bytes: d.len(),
            count: rec.count,
            block_size: bs,
        });
    }
    Ok(())
}

/// The open write log of a store (see the module docs). Dropping it leaves
/// the file as it is: the next [`ReplicaStore::open_log`] replays it.
#[derive(Debug)]
pub struct WriteLog {
    /// The journal's open file.
    path: PathBuf,
    /// The journal's directory.
    dir: PathBuf,
    uuid: [u8; 16],
    file: File,
    /// The open file's header.
    header: Header,
    /// End of the valid entries (header included): where the next append
    /// goes.
    len: u64,
    /// Bytes from here to `capacity` are zeroes written by this log (at
    /// least `len`; more only after an append failed part-way, which may
    /// have left bytes there that the next append must zero again).
    zero_from: u64,
    /// File length: `len..capacity` is room for appends that overwrite
    /// without extending the file.
    capacity: u64,
    /// The last write's sequence number, checkpoint id and time.
    order: Order,
    /// Records made durable in the file (since its last seal).
    records: u64,
    /// The file opened `O_DIRECT | O_DSYNC`, where the file system allows
    /// it: appends are then aligned synchronous writes (see the module
    /// docs); else buffered writes and `fdatasync`.
    direct: Option<File>,
    /// The log's bytes in the 4 KiB block holding `len` (up to `len`): an
    /// aligned append rewrites them in front of its records. `None`: read
    /// them from the file first.
    tail: Option<Vec<u8>>,
    /// Reused aligned memory for `O_DIRECT` writes.
    scratch: Vec<u8>,
    /// The open PIT, shared with [`LogApplier`]s.
    open: Arc<OpenPit>,
    store: Arc<Inner>,
    /// A step after a seal's commit point failed: the file is history, so
    /// nothing may be appended to it (see the module docs).
    failed: Option<String>,
    /// What a seal does with the file it seals.
    history: History,
    /// With history in an object store: the thread copying it there
    /// (`journal_objects`), off the appends' path.
    uploader: Option<crate::journal_objects::Uploader>,
}

/// What a seal does with the journal file it seals (the PIT holds its
/// writes either way).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum History {
    /// The sealed file is removed after the next one is created, with any
    /// older one: the log as it was before the journal, for groups that
    /// do not recover to checkpoints (the default, so that no history
    /// grows where nothing prunes it).
    #[default]
    Discard,
    /// Sealed files stay as history until [`ReplicaStore::prune_journal`]
    /// drops them (retention must then keep [`ReplicaStore::journal_pins`]).
    Keep,
}

/// The open PIT a log's durable batches are applied to. It has its own
/// lock so that a [`LogApplier`] on another thread copies one batch into
/// the PIT while the log's owner writes the next one to disk (the copy
/// includes the PIT's own segment writes, which otherwise wait for the disk
/// on the acknowledgement path of the next batch).
#[derive(Debug, Default)]
struct OpenPit {
    state: Mutex<Applied>,
    /// Signalled whenever a batch was applied (or failed to).
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Applied {
    writer: Option<PitWriter>,
    /// Batches made durable and not applied yet, in log order.
    pending: u64,
    /// An apply failed (or an applier was dropped): the PIT misses records
    /// the log has, so the next append or seal replays the log's file
    /// instead ([`WriteLog::recover`]).
    failed: bool,
}

impl OpenPit {
    fn lock(&self) -> MutexGuard<'_, Applied> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies one append's durable batches to its log's open PIT, from any
/// thread: [`WriteLog::append_durable`] returns it, and
/// [`LogApplier::apply`] takes it back with the same batches. Appliers must
/// be applied in the order their appends were made. One dropped without
/// applying fails the open PIT: the next append or seal replays the log
/// from its file into a new one instead of waiting for it forever.
#[derive(Debug)]
#[must_use = "durable batches belong in the open PIT: apply them"]
pub struct LogApplier {
    open: Arc<OpenPit>,
    store: Arc<Inner>,
    done: bool,
}

impl LogApplier {
    /// Applies the batches of the append that returned this applier.
    pub fn apply(mut self, batches: &[(&[u8], &[LogRecord<'_>])]) -> Result<(), ReplicaError> {
        self.done = true;
        let mut st = self.open.lock();
        let r = if st.failed {
            Err(ReplicaError::invalid(
                "an earlier batch of the write log failed to apply; the next seal replays the log from its file",
            ))
        } else {
            match st.writer.as_mut() {
                Some(w) => batches
                    .iter()
                    .flat_map(|(_, r)| r.iter())
                    .try_for_each(|rec| apply_record(&self.store, w, rec)),
                None => Err(ReplicaError::invalid(
                    "the open PIT was abandoned; the log is replayed from its file",
                )),
            }
        };
        match r {
            Ok(()) => st.pending = st.pending.saturating_sub(1),
            Err(_) => st.failed = true,
        }
        self.open.changed.notify_all();
        r
    }
}

impl Drop for LogApplier {
    fn drop(&mut self) {
        if !self.done {
            self.open.lock().failed = true;
            self.open.changed.notify_all();
        }
    }
}

/// Copies one record's blocks into the open PIT.
fn apply_record(store: &Inner, w: &mut PitWriter, rec: &LogRecord<'_>) -> Result<(), ReplicaError> {
    // `check_record` placed the record in the store's volumes before the
    // log took it; records name volumes by position.
    let v = usize::from(rec.volume);
    let bs = store.specs[v].block_size as usize;
    for i in 0..rec.count {
        let b = rec.first + u64::from(i);
        match rec.data {
            Some(d) => {
                let at = i as usize * bs;
                w.write_block_at(v, b, &d[at..at + bs])?;
            }
            None => w.write_zero_block_at(v, b)?,
        }
    }
    Ok(())
}

/// Alignment of `O_DIRECT` log writes: offset, length and memory.
const DIRECT_ALIGN: u64 = 4096;

/// The log file opened for aligned synchronous writes that skip the page
/// cache; `None` where the file system refuses `O_DIRECT` (tmpfs).
fn open_direct(path: &std::path::Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags((rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::DSYNC).bits() as i32)
        .open(path)
        .ok()
}

/// `len` bytes of `buf` starting at a `DIRECT_ALIGN`-aligned address
/// (grown as needed; its contents are not kept).
fn aligned(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    let a = DIRECT_ALIGN as usize;
    if buf.len() < len + a {
        *buf = vec![0; len + a];
    }
    let off = buf.as_ptr().align_offset(a);
    &mut buf[off..off + len]
}

impl ReplicaStore {
    /// Opens the group's write log in the journal: recovers the open file
    /// (torn tail truncated, writes replayed into the open PIT), or starts
    /// a new file after the newest PIT; reads a version 1 `sync.log` (see
    /// the module docs); loads the journal's history. Fails with
    /// [`ReplicaError::Busy`] while another PIT writer exists.
    pub fn open_log(&self) -> Result<WriteLog, ReplicaError> {
        let inner = self.inner.clone();
        // The writer first: while a log exists it is the store's only PIT
        // writer, and nothing below may change files while another one
        // could commit. Also taken before the journal's lock (lock order).
        let mut writer = PitWriter::begin(inner.clone())?;
        writer.set_flush_bytes(APPLY_FLUSH);
        let tip = inner.tip();
        let dir = inner.path(JOURNAL_DIR);
        let mut journal = inner.lock_journal();
        // Reloaded below; an error leaves it to be loaded again.
        *journal = None;
        if !dir.is_dir() {
            fsx::create_dir(&dir)?;
            fsx::sync_dir(&inner.dir)?;
        }
        let mut files = list_files(&dir, true)?;
        if migrate_v1(&inner, &dir, tip, !files.is_empty())? {
            files = list_files(&dir, false)?;
        }
        let newest = files.pop();
        let mut metas = files
            .iter()
            .map(|(n, path)| load_file(&inner, path, *n, LoadMode::Recover))
            .collect::<Result<Vec<_>, _>>()?;
        let (log, meta) = match newest {
            None => WriteLog::start(&inner, &dir, 1, tip, &metas)?,
            Some((n, path)) => WriteLog::recover_newest(&inner, &dir, n, path, tip, &mut metas)?,
        };
        log.open.lock().writer = Some(writer);
        let log = match meta {
            Some(m) => {
                metas.push(m);
                log
            }
            None => {
                // The newest file is the open one: replay it into the PIT.
                let (log, m) = log.replay()?;
                metas.push(m);
                log
            }
        };
        *journal = Some(JournalState { files: metas });
        Ok(log)
    }

    /// Seals a write log left by an earlier run (a daemon restart, a
    /// failover while the primary is gone) into a PIT, so nothing it
    /// acknowledged is lost; `None` when there is no log or it is empty.
    /// Keeps no history ([`History::Discard`]): for a group whose journal
    /// is history, [`ReplicaStore::seal_leftover_log_with`] `Keep`.
    pub fn seal_leftover_log(&self, created_at: String) -> Result<Option<PitInfo>, ReplicaError> {
        self.seal_leftover_log_with(created_at, History::Discard)
    }

    /// [`ReplicaStore::seal_leftover_log`] with the group's [`History`]
    /// mode: the seal removes the sealed files only with `Discard`.
    pub fn seal_leftover_log_with(
        &self,
        created_at: String,
        history: History,
    ) -> Result<Option<PitInfo>, ReplicaError> {
        if !self.inner.dir.join(LOG_FILE).exists() && !self.inner.path(JOURNAL_DIR).is_dir() {
            return Ok(None);
        }
        let mut log = self.open_log()?;
        log.set_history(history);
        log.finish(created_at)
    }
}

/// Reads a version 1 log, if there is one (see the module docs): copies
/// its records into the journal's first file when they follow the tip,
/// then removes it. Returns whether it made that file.
fn migrate_v1(inner: &Inner, dir: &Path, tip: u64, has_files: bool) -> Result<bool, ReplicaError> {
    let path = inner.dir.join(LOG_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ReplicaError::io("open", &path, e)),
    };
    let disk = file
        .metadata()
        .map_err(|e| ReplicaError::io("stat", &path, e))?
        .len();
    let remove = |why: &str| -> Result<bool, ReplicaError> {
        tracing::info!(log = %path.display(), "version 1 write log {why}; removing it");
        fsx::remove_file(&path)?;
        fsx::sync_dir(&inner.dir)?;
        Ok(false)
    };
    if has_files {
        return remove("was copied into the journal before");
    }
    let mut h = [0u8; V1_HEADER_LEN];
    let header = file
        .read_exact_at(&mut h, 0)
        .map_err(LogFormatError::ReadHeader)
        .and_then(|()| decode_v1_header(&h, &inner.uuid));
    let after = match header {
        // Created but never made durable past its header.
        Err(_) if disk < V1_HEADER_LEN as u64 => return remove("is empty"),
        Err(why) => return Err(ReplicaError::corrupt(&path, why)),
        Ok(after) if after < tip => return remove("was sealed already"),
        Ok(after) if after > tip => {
            return Err(ReplicaError::corrupt(
                &path,
                format!("the write log follows PIT {after}, but the store ends at {tip}"),
            ));
        }
        Ok(after) => after,
    };
    let s = scan(
        &inner.specs,
        &file,
        &path,
        ScanFrom {
            start: V1_HEADER_LEN as u64,
            order: Order::default(),
            checkpoints: false,
            limit: None,
        },
        &mut |_, _| Ok(()),
    )?;
    let header = Header {
        number: 1,
        after,
        continues: None,
        last_checkpoint: 0,
        last_time: 0,
        bytes_before: 0,
    };
    let to = file_path(dir, 1);
    let tmp = fsx::partial_path(&to);
    fsx::remove_file(&tmp)?;
    let out = fsx::create_new(&tmp)?;
    fsx::write_at(&out, &tmp, &encode_header(&inner.uuid, &header), 0)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut at = V1_HEADER_LEN as u64;
    while at < s.len {
        let n = (s.len - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)
            .map_err(|e| ReplicaError::io("read", &path, e))?;
        let to_at = at - V1_HEADER_LEN as u64 + JOURNAL_HEADER_LEN as u64;
        fsx::write_at(&out, &tmp, &buf[..n], to_at)?;
        at += n as u64;
    }
    fsx::sync_data(&out, &tmp)?;
    fsx::rename(&tmp, &to)?;
    fsx::sync_dir(dir)?;
    tracing::info!(
        records = s.records,
        after,
        "copied a version 1 write log into the journal"
    );
    remove("was copied into the journal")?;
    Ok(true)
}

impl WriteLog {
    /// Creates journal file `number` after PIT `after`, durably, as the
    /// open file (checkpoint ids go on from those of `prev`, the files
    /// before it).
    fn start(
        inner: &Arc<Inner>,
        dir: &Path,
        number: u64,
        after: u64,
        prev: &[FileMeta],
    ) -> Result<(WriteLog, Option<FileMeta>), ReplicaError> {
        // Ids and times go on from the newest checkpoint of any file (a
        // damaged one says nothing).
        let (last_checkpoint, last_time) = prev
            .iter()
            .map(|f| f.last_checkpoint())
            .max()
            .unwrap_or((0, 0));
        let h = Header {
            number,
            after,
            continues: None,
            last_checkpoint,
            last_time,
            bytes_before: prev.iter().map(FileMeta::bytes_through).max().unwrap_or(0),
        };
        let path = file_path(dir, number);
        fsx::replace_file(&path, &encode_header(&inner.uuid, &h))?;
        let meta = FileMeta::empty(&h, path.clone());
        let log = WriteLog::open_file(inner.clone(), path, dir.to_path_buf(), &h)?;
        Ok((log, Some(meta)))
    }

    /// The newest journal file at open: the open file when it follows the
    /// tip (returned without a meta: the caller replays it), else history,
    /// with a new file after the tip.
    fn recover_newest(
        inner: &Arc<Inner>,
        dir: &Path,
        number: u64,
        path: PathBuf,
        tip: u64,
        metas: &mut Vec<FileMeta>,
    ) -> Result<(WriteLog, Option<FileMeta>), ReplicaError> {
        let len = std::fs::metadata(&path)
            .map_err(|e| ReplicaError::io("stat", &path, e))?
            .len();
        let mut h = [0u8; JOURNAL_HEADER_LEN];
        let header = File::open(&path)
            .and_then(|f| f.read_exact_at(&mut h, 0))
            .map_err(LogFormatError::ReadHeader)
            .and_then(|()| crate::journal::decode_header(&h, &inner.uuid));
        match header {
            // A file created but never made durable past its header (the
            // rename of a replacement is atomic, so only by other means).
            Err(_) if len < JOURNAL_HEADER_LEN as u64 => {
                fsx::remove_file(&path)?;
                fsx::sync_dir(dir)?;
                WriteLog::start(inner, dir, number, tip, metas)
            }
            Err(why) => Err(ReplicaError::corrupt(&path, why)),
            Ok(h) if h.number != number => Err(ReplicaError::corrupt(
                &path,
                format!("its header says journal file {}", h.number),
            )),
            Ok(h) if h.after == tip => {
                let log = WriteLog::open_file(inner.clone(), path, dir.to_path_buf(), &h)?;
                Ok((log, None))
            }
            Ok(h) if h.after < tip => {
                tracing::info!(
                    after = h.after,
                    tip,
                    "journal file already sealed; starting the next"
                );
                metas.push(load_file(inner, &path, number, LoadMode::RecoverNewest)?);
                WriteLog::start(inner, dir, number + 1, tip, metas)
            }
            Ok(h) => Err(ReplicaError::corrupt(
                &path,
                format!(
                    "the write log follows PIT {}, but the store ends at {tip}",
                    h.after
                ),
            )),
        }
    }

    /// The journal file at `path` (header `h` already checked), positioned
    /// after its header, with nothing applied yet. Its capacity is the
    /// file's length: [`WriteLog::replay`] truncates anything after the
    /// entries it keeps.
    fn open_file(
        store: Arc<Inner>,
        path: PathBuf,
        dir: PathBuf,
        h: &Header,
    ) -> Result<WriteLog, ReplicaError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| ReplicaError::io("open", &path, e))?;
        let capacity = file
            .metadata()
            .map_err(|e| ReplicaError::io("stat", &path, e))?
            .len();
        let direct = open_direct(&path);
        Ok(WriteLog {
            path,
            dir,
            uuid: store.uuid,
            file,
            header: *h,
            len: JOURNAL_HEADER_LEN as u64,
            zero_from: JOURNAL_HEADER_LEN as u64,
            capacity,
            order: start_order(h),
            records: 0,
            direct,
            tail: None,
            scratch: Vec::new(),
            open: Arc::default(),
            store,
            failed: None,
            history: History::Discard,
            uploader: None,
        })
    }

    /// Replays the open file's writes into the open PIT (its writer is in
    /// place) and cuts whatever follows its valid entries.
    fn replay(mut self) -> Result<(WriteLog, FileMeta), ReplicaError> {
        let s = {
            let mut st = self.open.lock();
            let w = st.writer.as_mut().expect("writer in place");
            let store = &self.store;
            scan(
                &store.specs,
                &self.file,
                &self.path,
                ScanFrom::journal(self.order),
                &mut |rec, _| apply_record(store, w, rec),
            )?
        };
        self.len = s.len;
        self.records = s.records;
        self.order = s.order;
        if self.capacity > self.len {
            // Zeroes (the log's clean end) or a torn append (never
            // acknowledged, so never needed), then perhaps zeroes. Either
            // way the file ends at the entries: the next append writes new
            // zeroes after them, so no byte of a torn batch can outlive a
            // shorter batch written over it.
            let dropped = self.capacity - self.len;
            if self.only_zeroes_from(self.len)? {
                tracing::debug!(
                    kept = self.len,
                    dropped,
                    "write log: dropping its zero tail"
                );
            } else {
                tracing::info!(
                    kept = self.len,
                    dropped,
                    "write log: truncating an incomplete last append"
                );
            }
            fsx::set_len(&self.file, &self.path, self.len)?;
            fsx::sync_data(&self.file, &self.path)?;
            self.capacity = self.len;
        }
        self.zero_from = self.len;
        tracing::info!(
            records = self.records,
            after = self.header.after,
            "write log replayed"
        );
        let mut meta = FileMeta::empty(&self.header, self.path.clone());
        meta.len = self.len;
        meta.disk = self.capacity;
        meta.records = self.records;
        meta.checkpoints = s.checkpoints;
        Ok((self, meta))
    }

    /// Whether the file holds only zeroes from `at` to its capacity.
    fn only_zeroes_from(&self, mut at: u64) -> Result<bool, ReplicaError> {
        let mut buf = vec![0u8; 1 << 16];
        while at < self.capacity {
            let n = (self.capacity - at).min(buf.len() as u64) as usize;
            self.file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| ReplicaError::io("read", &self.path, e))?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
    }
    /// The `O_DIRECT | O_DSYNC` append: one aligned write of the 4 KiB
    /// blocks from the one holding `len` to the one holding the appended
    /// bytes' end (the tail's bytes, the entries, zero padding), durable
    /// when it returns; then, when the file must grow, zeroes after it,
    /// and zeroes over what a failed append may have left beyond it.
    fn write_direct(&mut self, raws: &[&[u8]]) -> Result<(), ReplicaError> {
        let a = DIRECT_ALIGN;
        let total: u64 = raws.iter().map(|raw| raw.len() as u64).sum();
        let start = self.len / a * a;
        let end = self.len + total;
        let wend = end.div_ceil(a) * a;
        if self.tail.is_none() {
            let mut t = vec![0u8; (self.len - start) as usize];
            self.file
                .read_exact_at(&mut t, start)
                .map_err(|e| ReplicaError::io("read", &self.path, e))?;
            self.tail = Some(t);
        }
        let tail = self.tail.as_deref().unwrap_or_default();
        let mut scratch = std::mem::take(&mut self.scratch);
        let buf = aligned(&mut scratch, (wend - start) as usize);
        buf[..tail.len()].copy_from_slice(tail);
        let mut at = tail.len();
        for raw in raws {
            buf[at..at + raw.len()].copy_from_slice(raw);
            at += raw.len();
        }
        buf[at..].fill(0);
        let direct = self.direct.as_ref().expect("direct descriptor");
        // From here on a failure may leave bytes up to `wend`.
        let stale_to = self.zero_from.max(wend);
        self.zero_from = stale_to;
        let written = fsx::write_durable_at(direct, &self.path, buf, start);
        let new_tail = buf[(end / a * a - start) as usize..(end - start) as usize].to_vec();
        self.scratch = scratch;
        written?;
        self.len = end;
        self.tail = Some(new_tail);
        // Room for the next appends, and stale bytes of a failed one.
        let grow_to = if wend > self.capacity {
            (self.capacity / a * a + GROW).max(wend).div_ceil(a) * a
        } else {
            wend
        };
        let zero_to = grow_to.max(stale_to.div_ceil(a) * a);
        if zero_to > wend {
            self.write_zeroes_direct(wend, zero_to)?;
        }
        self.capacity = self.capacity.max(grow_to);
        self.zero_from = end;
        Ok(())
    }

    /// Zeroes `from..to` (both aligned) through the direct descriptor.
    fn write_zeroes_direct(&mut self, mut from: u64, to: u64) -> Result<(), ReplicaError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let n = (to - from).min(ZERO_CHUNK) as usize;
        let zeroes = aligned(&mut scratch, n);
        zeroes.fill(0);
        let direct = self.direct.as_ref().expect("direct descriptor");
        let mut r = Ok(());
        while from < to && r.is_ok() {
            let n = ((to - from).min(ZERO_CHUNK)) as usize;
            r = fsx::write_durable_at(direct, &self.path, &zeroes[..n], from)
                .map_err(ReplicaError::from);
            from += n as u64;
        }
        self.scratch = scratch;
        r
    }

    /// Writes zeroes from `from` to `to` (in the file's page cache; the
    /// caller's `fdatasync` makes them durable).
    fn write_zeroes(&self, mut from: u64, to: u64) -> Result<(), ReplicaError> {
        if from >= to {
            return Ok(());
        }
        let zeroes = vec![0u8; (to - from).min(ZERO_CHUNK) as usize];
        while from < to {
            let n = (to - from).min(ZERO_CHUNK) as usize;
            fsx::write_at(&self.file, &self.path, &zeroes[..n], from)?;
            from += n as u64;
        }
        Ok(())
    }

    /// Appends `raws` (whole entries) after the valid entries, durably:
    /// one aligned `O_DSYNC` write, or one write and one `fdatasync`
    /// (extending the file with zeroes first when they do not fit).
    fn write_raw(&mut self, raws: &[&[u8]]) -> Result<(), ReplicaError> {
        if self.direct.is_some() {
            return self.write_direct(raws);
        }
        let total: usize = raws.iter().map(|raw| raw.len()).sum();
        let end = self.len + total as u64;
        if end > self.capacity {
            // Extend the file with zeroes before writing into it. Zeroes in
            // capacity..end would be overwritten by the records at once, so
            // they are skipped: the file ends up the same.
            let grown = end.max(self.capacity + GROW);
            self.write_zeroes(self.capacity.max(end), grown)?;
            self.capacity = grown;
        }
        // From here on a failure may leave bytes in len..end.
        let stale_to = self.zero_from.max(end);
        self.zero_from = stale_to;
        if raws.len() == 1 {
            fsx::write_at(&self.file, &self.path, raws[0], self.len)?;
        } else {
            let mut all = Vec::with_capacity(total);
            for raw in raws {
                all.extend_from_slice(raw);
            }
            fsx::write_at(&self.file, &self.path, &all, self.len)?;
        }
        // Bytes an earlier, failed append left after this append's end.
        self.write_zeroes(end, stale_to)?;
        fsx::sync_data(&self.file, &self.path)?;
        self.len = end;
        self.zero_from = end;
        Ok(())
    }

    fn ensure_writer(&mut self) -> Result<(), ReplicaError> {
        let mut st = self.open.lock();
        if st.writer.is_none() {
            let mut w = PitWriter::begin(self.store.clone())?;
            w.set_flush_bytes(APPLY_FLUSH);
            st.writer = Some(w);
        }
        Ok(())
    }

    /// Fails once a step after a seal's commit point failed.
    fn check_failed(&self) -> Result<(), ReplicaError> {
        match &self.failed {
            Some(cause) => Err(ReplicaError::LogFailed {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Makes a batch durable and applies it: `raw` is the batch as
    /// received, `records` its decoding ([`decode_records`]). Returns once
    /// the batch is on stable storage (one write, one `fdatasync`; when the
    /// batch does not fit in the zeroes at the end of the file, the file is
    /// first extended by at least 4 MiB of zeroes, made durable by the same
    /// `fdatasync`: see the module docs).
    pub fn append(&mut self, raw: &[u8], records: &[LogRecord<'_>]) -> Result<(), ReplicaError> {
        self.append_many(&[(raw, records)])
    }

    /// [`WriteLog::append`] of several batches that arrived together: one
    /// write and one `fdatasync` for all of them.
    pub fn append_many(
        &mut self,
        batches: &[(&[u8], &[LogRecord<'_>])],
    ) -> Result<(), ReplicaError> {
        self.append_durable(batches)?.apply(batches)
    }

    /// The first half of [`WriteLog::append_many`]: the batches are durable
    /// when it returns, so the caller may acknowledge them before the
    /// returned [`LogApplier`] (on this thread or another, with the same
    /// batches) applies them to the open PIT: the copy into the PIT stays
    /// off the acknowledgement's path. A seal waits until it did; a log
    /// whose apply failed is sealed from its file instead
    /// ([`ReplicaStore::open_log`] replays it).
    pub fn append_durable(
        &mut self,
        batches: &[(&[u8], &[LogRecord<'_>])],
    ) -> Result<LogApplier, ReplicaError> {
        self.check_failed()?;
        if self.open.lock().failed {
            self.recover()?;
        }
        let mut order = self.order;
        for rec in batches.iter().flat_map(|(_, r)| r.iter()) {
            check_record(&self.store.specs, rec).map_err(ReplicaError::invalid)?;
            order
                .take(&JournalEntry::Write(*rec))
                .map_err(ReplicaError::invalid)?;
        }
        self.ensure_writer()?;
        let records = batches.iter().map(|(_, r)| r.len() as u64).sum::<u64>();
        let raws: Vec<&[u8]> = batches.iter().map(|(raw, _)| *raw).collect();
        self.write_raw(&raws)?;
        self.order = order;
        Ok(self.appended(records))
    }

    /// Appends a checkpoint after everything appended so far, durably (one
    /// small append, as a batch's): its image is every write before it.
    /// `time_ns` is the primary's time of the cut (nanoseconds since the
    /// epoch); a time before the previous checkpoint's is raised to it, so
    /// a primary clock that steps back never reorders the journal's times.
    /// Returns once the checkpoint is durable.
    pub fn checkpoint(
        &mut self,
        time_ns: u64,
        consistency: Consistency,
        name: Option<String>,
    ) -> Result<CheckpointInfo, ReplicaError> {
        self.check_failed()?;
        if let Some(n) = &name
            && !valid_name(n)
        {
            return Err(ReplicaError::invalid(format!(
                "checkpoint name {n:?} must be 1 to {} bytes without control characters",
                crate::MAX_CHECKPOINT_NAME
            )));
        }
        let rec = CheckpointRecord {
            id: self.order.last_checkpoint + 1,
            time_ns: time_ns.max(self.order.last_time),
            consistency,
            through: self.order.last_seq,
            name: name.as_deref(),
        };
        let mut raw = Vec::with_capacity(64);
        encode_checkpoint(&rec, &mut raw);
        let at = self.len;
        self.write_raw(&[&raw])?;
        self.order
            .take(&JournalEntry::Checkpoint(rec))
            .expect("the next checkpoint is in order");
        let ix = IndexedCheckpoint {
            id: rec.id,
            time_ns: rec.time_ns,
            at,
            through: rec.through,
            consistency,
            name,
        };
        let info = CheckpointInfo::new(&ix, self.header.after);
        if let Some(j) = self.store.lock_journal().as_mut()
            && let Some(f) = j.file_mut(self.header.number)
        {
            f.checkpoints.push(ix);
            f.len = self.len;
            f.disk = self.capacity;
            f.records = self.records;
        }
        Ok(info)
    }

    /// After a batch failed to apply (or its applier was dropped), the
    /// open PIT misses records the file has: abandons it and replays the
    /// file into a new one, as after a restart.
    fn recover(&mut self) -> Result<(), ReplicaError> {
        // Appliers still queued find no writer and fail harmlessly.
        drop(self.open.lock().writer.take());
        tracing::warn!(
            log = %self.path.display(),
            "a batch of the write log was not applied to the open PIT: replaying the log"
        );
        let history = self.history;
        let uploader = self.uploader.take();
        *self = ReplicaStore {
            inner: self.store.clone(),
        }
        .open_log()?;
        self.history = history;
        self.uploader = uploader;
        Ok(())
    }

    /// Counts an append made durable: its batches wait to be applied by
    /// the returned applier.
    fn appended(&mut self, records: u64) -> LogApplier {
        self.records += records;
        self.open.lock().pending += 1;
        LogApplier {
            open: self.open.clone(),
            store: self.store.clone(),
            done: false,
        }
    }

    /// Records in the open file (since the last seal).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Bytes of the open file: its header and entries. The file is usually
    /// longer, by the zeroes that later appends overwrite (see the module
    /// docs).
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// The sequence number of the last record in the open file, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.order.last_seq
    }

    /// The newest checkpoint of the journal, if any.
    pub fn last_checkpoint(&self) -> Option<CheckpointId> {
        CheckpointId::new(self.order.last_checkpoint)
    }

    /// Commits everything logged so far as a PIT (`name` optional) and
    /// continues in the journal's next file, after it; the sealed file
    /// stays as history.
    pub fn seal(
        &mut self,
        name: Option<String>,
        created_at: String,
    ) -> Result<PitInfo, ReplicaError> {
        self.check_failed()?;
        self.ensure_writer()?;
        let w = {
            let mut st = self.open.lock();
            // Batches still being applied elsewhere belong in this PIT.
            while st.pending > 0 && !st.failed {
                st = self
                    .open
                    .changed
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if st.failed {
                drop(st);
                self.recover()?;
                return self.seal(name, created_at);
            }
            st.writer.take().expect("writer exists")
        };
        let info = match w.commit(name, created_at) {
            Ok(info) => info,
            Err(e) => {
                // The writer is gone with the file's writes in it: the next
                // append or seal replays the file into a new one.
                self.open.lock().failed = true;
                return Err(e);
            }
        };
        match self.next_file(info.id.get()) {
            Ok(next) => {
                let history = self.history;
                let uploader = self.uploader.take();
                *self = next;
                self.history = history;
                self.uploader = uploader;
            }
            Err(e) => {
                self.failed = Some(error_chain(&e));
                return Err(e);
            }
        }
        if self.history == History::Discard {
            // After the next file exists: a crash before this leaves the
            // sealed file as history, which the next seal removes.
            crate::history::drop_all_but_newest(&self.store);
        }
        if let Some(u) = &self.uploader {
            // The sealed file is history now: to the object store.
            u.kick();
        }
        self.ensure_writer()?;
        Ok(info)
    }

    /// Whether seals keep the sealed files as history (see [`History`];
    /// [`History::Discard`] until set). With [`History::Keep`] in an object
    /// store, a background thread copies the history into it after every
    /// seal and every [`crate::UPLOAD_INTERVAL`] (see "Stores in an object
    /// store" in the crate docs); dropping the log stops it after one last
    /// pass.
    pub fn set_history(&mut self, history: History) {
        self.history = history;
        match history {
            History::Keep if self.uploader.is_none() => {
                self.uploader = crate::journal_objects::Uploader::start(&self.store);
            }
            History::Keep => {}
            History::Discard => self.uploader = None,
        }
    }

    /// Tests: stops the background uploads of [`WriteLog::set_history`]
    /// (without their last pass), so that a test runs each pass itself
    /// with [`ReplicaStore::upload_journal`], on its own thread (where the
    /// [`crate::failpoint`] reaches it). Not part of the API.
    #[doc(hidden)]
    pub fn stop_background_uploads(&mut self) {
        if let Some(u) = self.uploader.take() {
            u.abandon();
        }
    }

    /// What seals do with the sealed files.
    pub fn history(&self) -> History {
        self.history
    }

    /// After the open file was sealed into PIT `sealed`: steps 2–4 of the
    /// seal (module docs). Returns the log on the next file.
    fn next_file(&mut self, sealed: u64) -> Result<WriteLog, ReplicaError> {
        if self.capacity > self.len {
            // History keeps its entries only; zeroes left behind would
            // just take room (reading stops at them).
            let cut = fsx::set_len(&self.file, &self.path, self.len)
                .and_then(|()| fsx::sync_data(&self.file, &self.path));
            match cut {
                Ok(()) => self.capacity = self.len,
                Err(e) => tracing::warn!("cutting the sealed journal file's zero tail: {e}"),
            }
        }
        let h = Header {
            number: self.header.number + 1,
            after: sealed,
            continues: Some(self.len),
            last_checkpoint: self.order.last_checkpoint,
            last_time: self.order.last_time,
            bytes_before: self.header.bytes_before + self.len - JOURNAL_HEADER_LEN as u64,
        };
        let path = file_path(&self.dir, h.number);
        fsx::replace_file(&path, &encode_header(&self.uuid, &h))?;
        let mut journal = self.store.lock_journal();
        if let Some(j) = journal.as_mut() {
            if let Some(f) = j.file_mut(self.header.number) {
                f.len = self.len;
                f.disk = self.capacity;
                f.records = self.records;
                crate::history::write_index(&self.store, f);
            }
            j.files.push(FileMeta::empty(&h, path.clone()));
        }
        drop(journal);
        WriteLog::open_file(self.store.clone(), path, self.dir.clone(), &h)
    }

    /// Ends the log: seals it as an unnamed PIT if it holds anything (else
    /// the empty file stays, after the newest PIT) and releases the store's
    /// PIT writer.
    pub fn finish(mut self, created_at: String) -> Result<Option<PitInfo>, ReplicaError> {
        if self.records == 0 {
            return Ok(None);
        }
        let info = self.seal(None, created_at)?;
        Ok(Some(info))
    }

    /// The PIT the open file's writes follow.
    pub fn after(&self) -> u64 {
        self.header.after
    }

    /// The store uuid the log belongs to.
    pub fn store_uuid(&self) -> [u8; 16] {
        self.uuid
    }

    /// The journal's open file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
