//! The write log of a synchronous group: the replica's **open segment**.
//!
//! In sync mode every write the primary acknowledges must already be
//! durable here. Writes arrive as [log records](encode_record) in batches;
//! [`WriteLog::append`] writes a whole batch to `GROUP/sync.log` with one
//! synchronous write (so concurrent writes at the primary share one
//! replica fsync: group commit) and then applies it to an open
//! [`PitWriter`] in `staging/`. The steps can run on several threads:
//! [`WriteLog::stage`] places batches in the log (the log's owner, in
//! order), [`LogWrite::write`] makes them durable (any thread; several
//! appends may be written at once), [`DurableWrite::commit`] counts them
//! in the log in staging order (the sync stream acknowledges them then),
//! and a [`LogApplier`] copies them into the PIT in the same order while
//! later appends are written; a seal waits until every append in flight
//! is committed and applied. [`WriteLog::append_durable`] does the first
//! three in a row. Sealing ([`WriteLog::seal`]) commits the PIT writer as
//! a PIT — the blocks are already in its segments, so only indexes and
//! the manifest are written — and starts an empty log after it. The log
//! is bounded by how often the primary (or the replica,
//! [`WriteLog::bytes`]) seals; retention then merges the sealed PITs into
//! the base as for async groups.
//!
//! # Format (version 2)
//!
//! All integers little-endian. The file starts with a 64-byte header:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSRPLOG` |
//! | 8 | 4 | version `2` |
//! | 12 | 4 | zero |
//! | 16 | 16 | store uuid |
//! | 32 | 8 | `after`: the PIT id the log's writes follow (0: the base) |
//! | 40 | 20 | zero |
//! | 60 | 4 | crc32c of bytes 0..60 |
//!
//! then a pad record to the end of the first 4 KiB page, then the
//! appends, back to back, then zeroes up to the end of the file (see
//! below). An append is the records of its batches (the same bytes
//! travel in the primary's batches, see [`decode_records`]) and, unless
//! they end exactly at a page boundary, a pad record up to the next one
//! (the one after, when fewer than 44 bytes are left): every append is
//! whole 4 KiB pages. A record:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `OLRC` |
//! | 4 | 1 | kind: `1` data, `2` zeroes (no data), `3` pad |
//! | 5 | 3 | zero |
//! | 8 | 8 | sequence number (strictly growing within a log; zero in a pad) |
//! | 16 | 8 | first block (zero in a pad) |
//! | 24 | 4 | block count (≥ 1; zero in a pad) |
//! | 28 | 4 | data length: count × block size for data, 0 for zeroes, any for a pad |
//! | 32 | 2 | volume number (position in `store.meta`; zero in a pad) |
//! | 34 | 6 | zero |
//! | 40 | .. | data (zeroes in a pad) |
//! | .. | 4 | crc32c of the record's preceding bytes |
//!
//! Pads are the one change from version 1 (no pads, each append right
//! after the last record): a version 1 reader would stop at the first pad
//! and drop acknowledged writes after it, hence the new version.
//! [`ReplicaStore::open_log`] reads both and rewrites a version 1 log as
//! version 2 (a new file with the same records, fsynced and renamed over
//! the old one) before appending to it. Batches from the network never
//! hold pads ([`decode_records`] refuses them).
//!
//! # Durability and recovery
//!
//! An append is acknowledged only once it is durable and every append
//! staged before it is too ([`DurableWrite::commit`]). Appends overwrite
//! file space that is already there: the file is extended in 4 MiB steps
//! (`GROW`) of written zeroes (not holes, not `fallocate`d extents, which
//! would still change metadata on their first write), durably, by the
//! stage that needs the room, before its append is written. Every append
//! then only overwrites zeroes in place, so its synchronous write writes
//! data and no file-system metadata (the file's size and extents do not
//! change). A zero tail ends the records: zeroes have no record magic, so
//! reading stops there as it does at a torn record; the file's length says
//! nothing about where the records end.
//!
//! Where the file system allows it, appends skip the page cache: the log
//! is also opened `O_DIRECT | O_DSYNC`, and an append is one aligned write
//! of its pages, durable when the write returns, with no `fdatasync`.
//! Measured on the development VM: 4 KiB appends p50 ~135 µs against
//! ~165 µs for write + `fdatasync`, and no page-cache pages to fill (which
//! costs ~9 µs of CPU per new 4 KiB page on a ballooned guest). Where
//! `O_DIRECT` is refused (tmpfs) appends are buffered writes and
//! `fdatasync`.
//!
//! **Appends in flight together.** Because appends are whole pages, two
//! of them never write the same page, so several can be written at once
//! in any order (the sync stream writes two; a disk serves two
//! synchronous writes in not much more time than one). What keeps the
//! order is recovery: it reads records from the start and stops at the
//! first one that does not decode, so a later append that reached the
//! disk before an earlier one is cut off with the hole, and it was never
//! acknowledged (commits, hence acknowledgements, follow staging order).
//! An append that fails to write, or is dropped unwritten or uncommitted,
//! fails the log: the next stage or seal waits until no append is in
//! flight (none can then write behind the truncation below) and replays
//! the file.
//!
//! A crash can leave torn appends (followed by zeroes, or by nothing if it
//! hit while the file was being extended); [`ReplicaStore::open_log`]
//! keeps the longest prefix of records that decode and check, truncates
//! the file after it (a torn append was never acknowledged; a zero tail
//! is the log's clean end), pads it to a page boundary if it ends inside
//! one (a buffered write and `fdatasync`), and replays the prefix into a
//! new writer. The next append extends the file with zeroes again, so
//! bytes of a torn append never survive behind a shorter new one, where
//! they could read as records.
//!
//! Which log a PIT holds is decided by `after`:
//!
//! ```text
//! seal:  1 commit the writer as PIT n (its own ordering: fsync, rename)
//!        2 replace sync.log by an empty log with after = n (sync.log.partial,
//!          fsync, rename, fsync directory)
//! open:  after == tip (newest PIT, or base_through)  -> replay the records
//!        after <  tip                                 -> the log is sealed already (crash between 1 and 2): reset
//!        after >  tip                                 -> Corrupt (the PIT it follows is gone)
//! ```
//!
//! While a log exists, its writer is the store's only PIT writer
//! ([`ReplicaError::Busy`] for anyone else), so PIT `after + 1` is always
//! the seal of exactly this log.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::fsx::AlignedBuf;
use crate::store::Inner;
use crate::{PitInfo, PitWriter, ReplicaError, ReplicaStore, fsx};

/// The log's file name in the store directory.
pub const LOG_FILE: &str = "sync.log";
const LOG_MAGIC: &[u8; 8] = b"OFSRPLOG";
const LOG_VERSION: u32 = 2;
/// The first version, still read (and upgraded on open): no pad records.
const LOG_VERSION_1: u32 = 1;
const HEADER_LEN: usize = 64;
const REC_MAGIC: &[u8; 4] = b"OLRC";
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
const KIND_PAD: u8 = 3;
/// Appends are whole pages of this size: each starts at a page boundary
/// and ends with a pad record up to one, so appends in flight together
/// never share a page (and `O_DIRECT` wants this alignment anyway).
const PAGE: u64 = 4096;
/// The smallest record: a pad without data.
const PAD_MIN: u64 = (RECORD_HEADER_LEN + RECORD_TRAILER_LEN) as u64;
/// How far the file is extended (in written zeroes) when an append needs
/// room past its end. Each extension changes the file's size and extents,
/// so the `fdatasync` of the append that makes it also writes file-system
/// metadata; every append into the zeroes is an overwrite whose
/// `fdatasync` does not. 4 MiB makes that one append in about a thousand
/// of 4 KiB (or one of every few 8 MiB batches, which extend the file by
/// their own size at least), at the cost of writing 4 MiB of zeroes once
/// (milliseconds) and of at most 4 MiB of disk ahead of the records per
/// log. A new log (every seal) starts at its header; its first append
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A record read back from the log: a write, or padding to a page end.
#[derive(Debug)]
enum Decoded<'a> {
    Record(LogRecord<'a>),
    Pad,
}

/// Decodes the record at the start of `buf`: the record and its length,
/// `Ok(None)` if `buf` is too short to hold it, or why it is invalid.
fn decode_one(buf: &[u8]) -> Result<Option<(Decoded<'_>, usize)>, String> {
    if buf.len() < RECORD_HEADER_LEN {
        return Ok(None);
    }
    if &buf[0..4] != REC_MAGIC {
        return Err("log record has a bad magic".into());
    }
    let kind = buf[4];
    if buf[5..8] != [0; 3] || buf[34..40] != [0; 6] {
        return Err("log record has non-zero reserved bytes".into());
    }
    let count = u32_at(buf, 24);
    let dl = u32_at(buf, 28);
    match kind {
        KIND_PAD if buf[8..28] != [0; 20] || buf[32..34] != [0; 2] => {
            return Err("pad record has fields set".into());
        }
        KIND_PAD if dl > MAX_RECORD_DATA => {
            return Err(format!("pad record of {dl} bytes"));
        }
        KIND_PAD => {}
        _ if count == 0 => return Err("log record of zero blocks".into()),
        KIND_DATA if dl == 0 || dl > MAX_RECORD_DATA || !dl.is_multiple_of(count) => {
            return Err(format!("log record carries {dl} bytes for {count} blocks"));
        }
        KIND_DATA => {}
        KIND_ZERO if dl != 0 => return Err("zero-block log record carries data".into()),
        KIND_ZERO => {}
        k => return Err(format!("log record of unknown kind {k}")),
    }
    let total = RECORD_HEADER_LEN + dl as usize + RECORD_TRAILER_LEN;
    if buf.len() < total {
        return Ok(None);
    }
    let crc = u32_at(buf, total - RECORD_TRAILER_LEN);
    if VERIFY_CHECKSUMS && crc32c::crc32c(&buf[..total - RECORD_TRAILER_LEN]) != crc {
        return Err("log record fails its checksum".into());
    }
    if kind == KIND_PAD {
        return Ok(Some((Decoded::Pad, total)));
    }
    let data =
        (kind == KIND_DATA).then(|| &buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + dl as usize]);
    Ok(Some((
        Decoded::Record(LogRecord {
            seq: u64_at(buf, 8),
            volume: u16::from_le_bytes([buf[32], buf[33]]),
            first: u64_at(buf, 16),
            count,
            data,
        }),
        total,
    )))
}

/// Writes a pad record that fills all of `out` (at least `PAD_MIN`
/// bytes): it ends an append at a page boundary.
fn encode_pad(out: &mut [u8]) {
    let len = out.len();
    debug_assert!(len as u64 >= PAD_MIN);
    out.fill(0);
    out[0..4].copy_from_slice(REC_MAGIC);
    out[4] = KIND_PAD;
    let dl = (len - RECORD_HEADER_LEN - RECORD_TRAILER_LEN) as u32;
    out[28..32].copy_from_slice(&dl.to_le_bytes());
    let crc = crc32c::crc32c(&out[..len - RECORD_TRAILER_LEN]);
    out[len - RECORD_TRAILER_LEN..].copy_from_slice(&crc.to_le_bytes());
}

/// Where an append whose records end at `end` ends: the next page
/// boundary with room for a pad record before it (`end` itself when it is
/// one).
fn padded_end(end: u64) -> u64 {
    if end.is_multiple_of(PAGE) {
        return end;
    }
    let to = end.div_ceil(PAGE) * PAGE;
    if to - end < PAD_MIN { to + PAGE } else { to }
}

/// Decodes a whole batch (untrusted bytes from the network): every byte
/// must belong to a valid record, and sequence numbers must grow.
pub fn decode_records(buf: &[u8]) -> Result<Vec<LogRecord<'_>>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rec = match decode_one(&buf[at..])? {
            Some((Decoded::Record(rec), len)) => {
                at += len;
                rec
            }
            Some((Decoded::Pad, _)) => {
                return Err(
                    "a batch of writes holds a pad record (pads belong in the log file only)"
                        .into(),
                );
            }
            None => {
                return Err(format!(
                    "log batch ends inside a record ({} trailing bytes)",
                    buf.len() - at
                ));
            }
        };
        if let Some(prev) = out.last().map(|r: &LogRecord<'_>| r.seq)
            && rec.seq <= prev
        {
            return Err(format!("log record {} follows record {prev}", rec.seq));
        }
        out.push(rec);
    }
    Ok(out)
}

fn encode_header(uuid: &[u8; 16], after: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(LOG_MAGIC);
    h[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
    h[16..32].copy_from_slice(uuid);
    h[32..40].copy_from_slice(&after.to_le_bytes());
    let crc = crc32c::crc32c(&h[..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `after` and the format version from a header, or why it is not one of
/// this store's.
fn decode_header(h: &[u8], uuid: &[u8; 16]) -> Result<(u64, u32), String> {
    if h.len() < HEADER_LEN {
        return Err(format!("log header is truncated ({} bytes)", h.len()));
    }
    if crc32c::crc32c(&h[..60]) != u32_at(h, 60) {
        return Err("log header fails its checksum".into());
    }
    if &h[0..8] != LOG_MAGIC {
        return Err("not a replica write log (bad magic)".into());
    }
    let v = u32_at(h, 8);
    if v != LOG_VERSION && v != LOG_VERSION_1 {
        return Err(format!(
            "write log format version {v} is not supported (this offsite reads 1 and 2); run the offsite that wrote it"
        ));
    }
    if &h[16..32] != uuid {
        return Err("the write log belongs to another replica store".into());
    }
    Ok((u64_at(h, 32), v))
}

/// The open write log of a store (see the module docs). Dropping it leaves
/// the file as it is: the next [`ReplicaStore::open_log`] replays it.
#[derive(Debug)]
pub struct WriteLog {
    dir: PathBuf,
    uuid: [u8; 16],
    out: Arc<LogFile>,
    /// End of the records staged so far (header included): where the next
    /// append goes. Always a page boundary once the log is open.
    len: u64,
    /// File length: `len..capacity` is zeroes, room for appends that
    /// overwrite without extending the file.
    capacity: u64,
    after: u64,
    /// The sequence number of the last record staged.
    last_seq: Option<u64>,
    /// The ticket of the next append staged (they commit in this order).
    next_ticket: u64,
    /// The open PIT, shared with [`LogWrite`]s and [`LogApplier`]s.
    open: Arc<OpenPit>,
    store: Arc<Inner>,
}

/// The log's file, shared with the appends in flight.
#[derive(Debug)]
struct LogFile {
    path: PathBuf,
    file: File,
    /// The file opened `O_DIRECT | O_DSYNC`, where the file system allows
    /// it: appends are then aligned synchronous writes (see the module
    /// docs); else buffered writes and `fdatasync`.
    direct: Option<File>,
}

impl LogFile {
    fn open(path: PathBuf) -> Result<LogFile, ReplicaError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| ReplicaError::io("open", &path, e))?;
        let direct = open_direct(&path);
        Ok(LogFile { path, file, direct })
    }

    /// Writes whole pages at a page boundary, durable on return.
    fn write_durable(&self, pages: &[u8], at: u64) -> Result<(), ReplicaError> {
        debug_assert!(at.is_multiple_of(PAGE) && (pages.len() as u64).is_multiple_of(PAGE));
        if pages.is_empty() {
            return Ok(());
        }
        match &self.direct {
            Some(d) => fsx::write_durable_at(d, &self.path, pages, at),
            None => {
                fsx::write_at(&self.file, &self.path, pages, at)?;
                fsx::sync_data(&self.file, &self.path)
            }
        }
    }

    /// Writes zeroes over `from..to` (page boundaries), durable on return.
    fn zero_durable(&self, mut from: u64, to: u64) -> Result<(), ReplicaError> {
        let mut zeroes = AlignedBuf::new((to - from).min(ZERO_CHUNK) as usize, PAGE as usize);
        while from < to {
            let n = (to - from).min(ZERO_CHUNK) as usize;
            let chunk = &zeroes.get_mut()[..n];
            match &self.direct {
                Some(d) => fsx::write_durable_at(d, &self.path, chunk, from)?,
                None => fsx::write_at(&self.file, &self.path, chunk, from)?,
            }
            from += n as u64;
        }
        if self.direct.is_none() {
            fsx::sync_data(&self.file, &self.path)?;
        }
        Ok(())
    }
}

/// The open PIT a log's durable appends are applied to, and the appends in
/// flight. It has its own lock, apart from the log's owner, so that a
/// [`LogWrite`] is written and committed and a [`LogApplier`] copies one
/// batch into the PIT on other threads while the log's owner stages the
/// next append (the copy includes the PIT's own segment writes, which
/// otherwise wait for the disk on the acknowledgement path).
#[derive(Debug, Default)]
struct OpenPit {
    state: Mutex<Applied>,
    /// Signalled whenever an append committed or failed, or a batch was
    /// applied (or failed to).
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Applied {
    writer: Option<PitWriter>,
    /// Appends staged and neither committed nor abandoned yet.
    in_flight: u64,
    /// Appends committed: the ticket of the next one to commit.
    committed: u64,
    /// Records in committed appends.
    records: u64,
    /// Appends committed and not applied yet, in log order.
    pending: u64,
    /// An append failed or was abandoned, or an apply failed (or an
    /// applier was dropped): the PIT may miss records the file has, so
    /// the next append or seal replays the log's file instead
    /// ([`WriteLog::recover`]), once nothing is in flight.
    failed: bool,
}

impl OpenPit {
    fn lock(&self) -> MutexGuard<'_, Applied> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, Applied>) -> MutexGuard<'a, Applied> {
        self.changed
            .wait(st)
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// An append ends without committing: the log must be replayed.
    fn abandon(&self) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.failed = true;
        self.changed.notify_all();
    }
}

/// An append staged by [`WriteLog::stage`]: its bytes have their place in
/// the log (whole pages no other append touches) and wait to be written.
/// [`LogWrite::write`] may run on any thread, concurrently with other
/// appends' writes and with the log's owner staging more; the durable
/// appends then [commit](DurableWrite::commit) in the order they were
/// staged. One dropped unwritten fails the log: the next append or seal
/// replays it from its file.
#[derive(Debug)]
#[must_use = "a staged append must be written and committed"]
pub struct LogWrite {
    open: Arc<OpenPit>,
    store: Arc<Inner>,
    out: Arc<LogFile>,
    pages: AlignedBuf,
    at: u64,
    ticket: u64,
    records: u64,
    done: bool,
}

impl LogWrite {
    /// Writes the append to the log's file; it is on stable storage when
    /// this returns `Ok`. Blocking.
    pub fn write(mut self) -> Result<DurableWrite, ReplicaError> {
        self.out.write_durable(self.pages.get(), self.at)?;
        self.done = true;
        Ok(DurableWrite {
            open: self.open.clone(),
            store: self.store.clone(),
            ticket: self.ticket,
            records: self.records,
            done: false,
        })
    }

    /// Bytes the append writes (its records and pad).
    pub fn bytes(&self) -> usize {
        self.pages.get().len()
    }
}

impl Drop for LogWrite {
    fn drop(&mut self) {
        if !self.done {
            self.open.abandon();
        }
    }
}

/// An append on stable storage, not yet counted in the log: commit it
/// (in staging order) before acknowledging it.
#[derive(Debug)]
#[must_use = "a durable append must be committed"]
pub struct DurableWrite {
    open: Arc<OpenPit>,
    store: Arc<Inner>,
    ticket: u64,
    records: u64,
    done: bool,
}

impl DurableWrite {
    /// Counts the append in the log, after every append staged before it:
    /// it may be acknowledged now, and its batches belong in the open PIT
    /// (apply them with the returned applier). Fails, and acknowledges
    /// nothing, when an earlier append failed or was abandoned, or when
    /// appends are committed out of their staging order.
    pub fn commit(mut self) -> Result<LogApplier, ReplicaError> {
        self.done = true;
        let mut st = self.open.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        let r = if st.failed {
            Err(ReplicaError::invalid(
                "an earlier append to the write log failed; the log is replayed from its file",
            ))
        } else if st.committed != self.ticket {
            st.failed = true;
            Err(ReplicaError::invalid(format!(
                "write log append {} committed before append {} (they commit in staging order)",
                self.ticket, st.committed
            )))
        } else {
            st.committed += 1;
            st.records += self.records;
            st.pending += 1;
            Ok(LogApplier {
                open: self.open.clone(),
                store: self.store.clone(),
                done: false,
            })
        };
        self.open.changed.notify_all();
        r
    }
}

impl Drop for DurableWrite {
    fn drop(&mut self) {
        if !self.done {
            self.open.abandon();
        }
    }
}

/// Applies one append's durable batches to its log's open PIT, from any
/// thread: [`DurableWrite::commit`] (or [`WriteLog::append_durable`])
/// returns it, and [`LogApplier::apply`] takes it back with the same
/// batches. Appliers must be applied in the order their appends were
/// committed. One dropped without applying fails the open PIT: the next
/// append or seal replays the log from its file into a new one instead of
/// waiting for it forever.
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
                "an earlier batch of the write log failed; the next seal replays the log from its file",
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
    let spec = &store.specs[usize::from(rec.volume)];
    let bs = spec.block_size as usize;
    for i in 0..rec.count {
        let b = rec.first + u64::from(i);
        match rec.data {
            Some(d) => {
                let at = i as usize * bs;
                w.write_block(&spec.name, b, &d[at..at + bs])?;
            }
            None => w.write_zero_block(&spec.name, b)?,
        }
    }
    Ok(())
}

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

/// The first page of a new log: its header, then a pad record.
fn first_page(uuid: &[u8; 16], after: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE as usize];
    page[..HEADER_LEN].copy_from_slice(&encode_header(uuid, after));
    encode_pad(&mut page[HEADER_LEN..]);
    page
}

impl ReplicaStore {
    /// Opens the group's write log, creating an empty one after the newest
    /// PIT, or recovering an existing one (torn tail truncated, records
    /// replayed into the open PIT; a version 1 log is rewritten as version
    /// 2). Fails with [`ReplicaError::Busy`] while another PIT writer
    /// exists.
    pub fn open_log(&self) -> Result<WriteLog, ReplicaError> {
        let inner = self.inner.clone();
        let dir = inner.dir.clone();
        let path = dir.join(LOG_FILE);
        let tip = {
            let ops = inner.lock_ops();
            inner
                .read_state()
                .chain
                .last()
                .map_or(ops.base_through, |p| p.id)
                .max(ops.base_through)
        };
        let mut log = match File::open(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                WriteLog::reset(inner, path, dir, tip)?
            }
            Err(e) => return Err(ReplicaError::io("open", &path, e)),
            Ok(f) => {
                let mut r = BufReader::with_capacity(1 << 20, f);
                let mut h = [0u8; HEADER_LEN];
                let header = r
                    .read_exact(&mut h)
                    .map_err(|e| e.to_string())
                    .and_then(|()| decode_header(&h, &inner.uuid));
                match header {
                    // A log created but never made durable past its header.
                    Err(_)
                        if std::fs::metadata(&path).map_or(0, |m| m.len()) < HEADER_LEN as u64 =>
                    {
                        WriteLog::reset(inner, path, dir, tip)?
                    }
                    Err(why) => return Err(ReplicaError::corrupt(&path, why)),
                    Ok((after, _)) if after < tip => {
                        tracing::info!(
                            after,
                            tip,
                            "write log already sealed; starting an empty one"
                        );
                        WriteLog::reset(inner, path, dir, tip)?
                    }
                    Ok((after, _)) if after > tip => {
                        return Err(ReplicaError::corrupt(
                            &path,
                            format!(
                                "the write log follows PIT {after}, but the store ends at {tip}"
                            ),
                        ));
                    }
                    Ok((after, version)) => WriteLog::replay(inner, path, dir, after, version, r)?,
                }
            }
        };
        log.ensure_writer()?;
        Ok(log)
    }

    /// Seals a write log left by an earlier run (a daemon restart, a
    /// failover while the primary is gone) into a PIT, so nothing it
    /// acknowledged is lost; `None` when there is no log or it is empty.
    pub fn seal_leftover_log(&self, created_at: String) -> Result<Option<PitInfo>, ReplicaError> {
        if !self.inner.dir.join(LOG_FILE).exists() {
            return Ok(None);
        }
        self.open_log()?.finish(created_at)
    }
}

impl WriteLog {
    /// Replaces the file by an empty log after PIT `after`, durably.
    fn reset(
        store: Arc<Inner>,
        path: PathBuf,
        dir: PathBuf,
        after: u64,
    ) -> Result<WriteLog, ReplicaError> {
        fsx::replace_file(&dir, &path, &first_page(&store.uuid, after))?;
        let mut log = WriteLog::open_file(store, path, dir, after)?;
        log.len = PAGE;
        Ok(log)
    }

    /// The log at `path` (header already checked), positioned after its
    /// header, with nothing applied yet. Its capacity is the file's length:
    /// [`WriteLog::replay`] truncates anything after the records it keeps.
    fn open_file(
        store: Arc<Inner>,
        path: PathBuf,
        dir: PathBuf,
        after: u64,
    ) -> Result<WriteLog, ReplicaError> {
        let out = LogFile::open(path)?;
        let capacity = out
            .file
            .metadata()
            .map_err(|e| ReplicaError::io("stat", &out.path, e))?
            .len();
        Ok(WriteLog {
            dir,
            uuid: store.uuid,
            out: Arc::new(out),
            len: HEADER_LEN as u64,
            capacity,
            after,
            last_seq: None,
            next_ticket: 0,
            open: Arc::default(),
            store,
        })
    }

    fn replay(
        store: Arc<Inner>,
        path: PathBuf,
        dir: PathBuf,
        after: u64,
        version: u32,
        mut r: BufReader<File>,
    ) -> Result<WriteLog, ReplicaError> {
        let mut log = WriteLog::open_file(store, path, dir, after)?;
        log.ensure_writer()?;
        let mut buf = Vec::new();
        let mut records = 0;
        loop {
            buf.clear();
            buf.resize(RECORD_HEADER_LEN, 0);
            if r.read_exact(&mut buf).is_err() {
                break;
            }
            let dl = u32_at(&buf, 28).min(MAX_RECORD_DATA) as usize;
            buf.resize(RECORD_HEADER_LEN + dl + RECORD_TRAILER_LEN, 0);
            if r.read_exact(&mut buf[RECORD_HEADER_LEN..]).is_err() {
                break;
            }
            match decode_one(&buf) {
                Ok(Some((Decoded::Record(rec), _))) => {
                    if log.check(&rec).is_err() {
                        break;
                    }
                    let mut st = log.open.lock();
                    let w = st.writer.as_mut().expect("writer exists");
                    apply_record(&log.store, w, &rec)?;
                    drop(st);
                    log.last_seq = Some(rec.seq);
                    records += 1;
                }
                // Pads appear only in version 2, and only up to a page end.
                Ok(Some((Decoded::Pad, len)))
                    if version != LOG_VERSION_1 && (log.len + len as u64).is_multiple_of(PAGE) => {}
                _ => break,
            }
            log.len += buf.len() as u64;
        }
        log.open.lock().records = records;
        let out = log.out.clone();
        if log.capacity > log.len {
            // Zeroes (the log's clean end) or a torn append (never
            // acknowledged, so never needed), then perhaps zeroes. Either
            // way the file ends at the records: the next append writes new
            // zeroes after them, so no byte of a torn append can outlive a
            // shorter append written over it.
            let dropped = log.capacity - log.len;
            if log.only_zeroes_from(log.len)? {
                tracing::debug!(kept = log.len, dropped, "write log: dropping its zero tail");
            } else {
                tracing::info!(
                    kept = log.len,
                    dropped,
                    "write log: truncating an incomplete last append"
                );
            }
            fsx::set_len(&out.file, &out.path, log.len)?;
            fsx::sync_data(&out.file, &out.path)?;
            log.capacity = log.len;
        }
        if version == LOG_VERSION_1 {
            log.upgrade()?;
        } else if !log.len.is_multiple_of(PAGE) {
            // The records end inside a page (a torn append kept its
            // prefix): a pad brings the next append to a page boundary.
            // Buffered: the page's first bytes are records already.
            let end = padded_end(log.len);
            let mut pad = vec![0u8; (end - log.len) as usize];
            encode_pad(&mut pad);
            fsx::write_at(&out.file, &out.path, &pad, log.len)?;
            fsx::sync_data(&out.file, &out.path)?;
            log.len = end;
            log.capacity = end;
        }
        tracing::info!(records, after, version, "write log replayed");
        Ok(log)
    }

    /// Rewrites a version 1 log (replayed: `len` ends its records) as
    /// version 2, durably: a new file (`sync.log.partial`) with the first
    /// page of a new log, the same records and a pad to a page end,
    /// fsynced, renamed over the log, the directory fsynced. A crash
    /// before the rename leaves the version 1 log, which the next open
    /// upgrades again.
    fn upgrade(&mut self) -> Result<(), ReplicaError> {
        let path = self.out.path.clone();
        let tmp = fsx::partial_path(&path);
        fsx::remove_file(&tmp)?;
        let f = fsx::create_new(&tmp)?;
        fsx::write_at(&f, &tmp, &first_page(&self.uuid, self.after), 0)?;
        let mut buf = vec![0u8; ZERO_CHUNK as usize];
        let (mut from, mut to) = (HEADER_LEN as u64, PAGE);
        while from < self.len {
            let n = (self.len - from).min(ZERO_CHUNK) as usize;
            self.out
                .file
                .read_exact_at(&mut buf[..n], from)
                .map_err(|e| ReplicaError::io("read", &path, e))?;
            fsx::write_at(&f, &tmp, &buf[..n], to)?;
            from += n as u64;
            to += n as u64;
        }
        let end = padded_end(to);
        if end > to {
            let mut pad = vec![0u8; (end - to) as usize];
            encode_pad(&mut pad);
            fsx::write_at(&f, &tmp, &pad, to)?;
        }
        fsx::sync_data(&f, &tmp)?;
        drop(f);
        fsx::rename(&tmp, &path)?;
        fsx::sync_dir(&self.dir)?;
        self.out = Arc::new(LogFile::open(path)?);
        self.len = end;
        self.capacity = end;
        tracing::info!(bytes = end, "write log rewritten in format version 2");
        Ok(())
    }

    /// Whether the file holds only zeroes from `at` to its capacity.
    fn only_zeroes_from(&self, mut at: u64) -> Result<bool, ReplicaError> {
        let mut buf = vec![0u8; 1 << 16];
        while at < self.capacity {
            let n = (self.capacity - at).min(buf.len() as u64) as usize;
            self.out
                .file
                .read_exact_at(&mut buf[..n], at)
                .map_err(|e| ReplicaError::io("read", &self.out.path, e))?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            at += n as u64;
        }
        Ok(true)
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

    /// Whether `rec` fits the store (volume, range, data length) and follows
    /// the log's last record.
    fn check(&self, rec: &LogRecord<'_>) -> Result<(), String> {
        let spec = self
            .store
            .specs
            .get(usize::from(rec.volume))
            .ok_or_else(|| format!("log record for unknown volume #{}", rec.volume))?;
        let bs = u64::from(spec.block_size);
        rec.first
            .checked_add(u64::from(rec.count))
            .filter(|&e| e <= spec.size_bytes / bs)
            .ok_or_else(|| {
                format!(
                    "log record for blocks {}+{} is past the end of volume {}",
                    rec.first, rec.count, spec.name
                )
            })?;
        if let Some(d) = rec.data
            && d.len() as u64 != u64::from(rec.count) * bs
        {
            return Err(format!(
                "log record carries {} bytes for {} blocks of {bs}",
                d.len(),
                rec.count
            ));
        }
        if let Some(prev) = self.last_seq
            && rec.seq <= prev
        {
            return Err(format!("log record {} follows record {prev}", rec.seq));
        }
        Ok(())
    }

    /// Makes a batch durable and applies it: `raw` is the batch as
    /// received, `records` its decoding ([`decode_records`]). Returns once
    /// the batch is on stable storage and in the open PIT.
    pub fn append(&mut self, raw: &[u8], records: &[LogRecord<'_>]) -> Result<(), ReplicaError> {
        self.append_many(&[(raw, records)])
    }

    /// [`WriteLog::append`] of several batches that arrived together: one
    /// synchronous write for all of them.
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
    /// ([`ReplicaStore::open_log`] replays it). Appends staged and not yet
    /// committed must commit before this one can.
    pub fn append_durable(
        &mut self,
        batches: &[(&[u8], &[LogRecord<'_>])],
    ) -> Result<LogApplier, ReplicaError> {
        self.stage(batches)?.write()?.commit()
    }

    /// Places batches in the log without writing them: the returned
    /// [`LogWrite`] writes them (on any thread) and then commits in the
    /// order appends were staged, so several appends can be on their way
    /// to the disk at once (see the module docs). Records are checked
    /// here; the file is extended first when the append does not fit in
    /// its zeroes (by at least 4 MiB, durably, before this returns).
    pub fn stage(
        &mut self,
        batches: &[(&[u8], &[LogRecord<'_>])],
    ) -> Result<LogWrite, ReplicaError> {
        if self.open.lock().failed {
            self.recover()?;
        }
        let mut last = self.last_seq;
        let mut records = 0u64;
        for rec in batches.iter().flat_map(|(_, r)| r.iter()) {
            self.check(rec).map_err(ReplicaError::invalid)?;
            if let Some(prev) = last
                && rec.seq <= prev
            {
                return Err(ReplicaError::invalid(format!(
                    "log record {} follows record {prev}",
                    rec.seq
                )));
            }
            last = Some(rec.seq);
            records += 1;
        }
        self.ensure_writer()?;
        debug_assert!(self.len.is_multiple_of(PAGE));
        let total: usize = batches.iter().map(|(raw, _)| raw.len()).sum();
        let end = padded_end(self.len + total as u64);
        self.reserve(end)?;
        let mut pages = AlignedBuf::new((end - self.len) as usize, PAGE as usize);
        let buf = pages.get_mut();
        let mut at = 0;
        for (raw, _) in batches {
            buf[at..at + raw.len()].copy_from_slice(raw);
            at += raw.len();
        }
        if at < buf.len() {
            encode_pad(&mut buf[at..]);
        }
        let write = LogWrite {
            open: self.open.clone(),
            store: self.store.clone(),
            out: self.out.clone(),
            pages,
            at: self.len,
            ticket: self.next_ticket,
            records,
            done: false,
        };
        self.open.lock().in_flight += 1;
        self.next_ticket += 1;
        self.len = end;
        self.last_seq = last;
        Ok(write)
    }

    /// Makes the file at least `end` long, extending it in steps of
    /// `GROW` written zeroes (durable before this returns; appends in
    /// flight below the old end are unaffected).
    fn reserve(&mut self, end: u64) -> Result<(), ReplicaError> {
        if end <= self.capacity {
            return Ok(());
        }
        let from = self.capacity.div_ceil(PAGE) * PAGE;
        let to = (from + GROW).max(end).div_ceil(PAGE) * PAGE;
        self.out.zero_durable(from, to)?;
        self.capacity = to;
        Ok(())
    }

    /// After an append or an apply failed (or was abandoned), the open PIT
    /// may miss records the file has: once no append is in flight (none
    /// can write into the file behind the replay's truncation), abandons
    /// the PIT and replays the file into a new one, as after a restart.
    fn recover(&mut self) -> Result<(), ReplicaError> {
        {
            let mut st = self.open.lock();
            while st.in_flight > 0 {
                st = self.open.wait(st);
            }
            // Appliers still queued find no writer and fail harmlessly.
            drop(st.writer.take());
        }
        tracing::warn!(
            log = %self.out.path.display(),
            "an append to the write log failed or was not applied to the open PIT: replaying the log"
        );
        *self = ReplicaStore {
            inner: self.store.clone(),
        }
        .open_log()?;
        Ok(())
    }

    /// Records in the log (since its last seal), counting committed
    /// appends only.
    pub fn records(&self) -> u64 {
        self.open.lock().records
    }

    /// Bytes of the log: its header and the appends staged (records and
    /// pads). The file is usually longer, by the zeroes that later appends
    /// overwrite (see the module docs).
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// The sequence number of the last record staged, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// Commits everything logged so far as a PIT (`name` optional) and
    /// continues with an empty log after it. Waits for the appends in
    /// flight to commit (or fail) and for the committed ones to be applied.
    pub fn seal(
        &mut self,
        name: Option<String>,
        created_at: String,
    ) -> Result<PitInfo, ReplicaError> {
        self.ensure_writer()?;
        let w = {
            let mut st = self.open.lock();
            // Appends still being written or applied elsewhere belong in
            // this PIT.
            while (st.in_flight > 0 || st.pending > 0) && !st.failed {
                st = self.open.wait(st);
            }
            if st.failed {
                drop(st);
                self.recover()?;
                return self.seal(name, created_at);
            }
            st.writer.take().expect("writer exists")
        };
        let info = w.commit(name, created_at)?;
        let fresh = WriteLog::reset(
            self.store.clone(),
            self.out.path.clone(),
            self.dir.clone(),
            info.id.get(),
        )?;
        *self = fresh;
        self.ensure_writer()?;
        Ok(info)
    }

    /// Ends the log: seals it as an unnamed PIT if it holds anything (else
    /// the empty log stays, after the newest PIT) and releases the store's
    /// PIT writer.
    pub fn finish(mut self, created_at: String) -> Result<Option<PitInfo>, ReplicaError> {
        let failed = {
            let mut st = self.open.lock();
            while st.in_flight > 0 {
                st = self.open.wait(st);
            }
            st.failed
        };
        if failed {
            self.recover()?;
        }
        if self.records() == 0 {
            return Ok(None);
        }
        let info = self.seal(None, created_at)?;
        Ok(Some(info))
    }

    /// The PIT the log's writes follow.
    pub fn after(&self) -> u64 {
        self.after
    }

    /// The store uuid the log belongs to.
    pub fn store_uuid(&self) -> [u8; 16] {
        self.uuid
    }
}
