//! The **journal** of a group: the write log's history, kept instead of
//! discarded at seal, with consistent **checkpoints** in it.
//!
//! The write log ([`crate::WriteLog`], see `log.rs` for appends, group
//! commit and torn tails) writes into `GROUP/journal/NUMBER.jnl`. A seal
//! commits the open PIT and starts the next file; the sealed file stays as
//! history. A checkpoint record marks a consistent cut: every write before
//! it in journal order belongs to it, none after. Since the log's order is
//! the order in which the primary wrote across all the group's volumes,
//! the image at a checkpoint is a prefix of the acknowledged write order,
//! the state the disks would hold after a crash at that instant.
//!
//! The image of every volume at checkpoint *C* in file *F* is the state as
//! of PIT `F.after` (a visible PIT, or the base when the base is through
//! exactly that PIT) plus *F*'s writes before *C*. When that state is gone
//! (retention merged PIT `F.after` into the next one), the file's
//! `continues` field says that PIT `F.after` was sealed from the first
//! `prev_len` bytes of file *F − 1*, so the image is also the state as of
//! `(F−1).after` plus those bytes plus *F*'s writes before *C*, and so on
//! back to a state that exists ([`crate::CheckpointImage`], `history.rs`).
//!
//! # Layout
//!
//! ```text
//! GROUP/journal/
//! ├── 00000000000000000007.jnl   a sealed file (history): its writes are PIT `after + 1`
//! ├── 00000000000000000007.idx   its index (a cache: rebuilt by scanning the file)
//! └── 00000000000000000008.jnl   the open file, appended to by the write log
//! ```
//!
//! In a store in an object store this directory is in the local working
//! directory, and the journal's history is also copied into the objects
//! (`journal/NUMBER.jnl` for a sealed file, `journal/NUMBER.jnl.OFFSET`
//! for the open file's checkpoints so far), off the write path, and
//! restored from them by an open that finds no journal file; see
//! "Stores in an object store" in the crate docs.
//!
//! # Format (version 2)
//!
//! All integers little-endian. A journal file starts with a 128-byte
//! header:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSRPLOG` (as version 1) |
//! | 8 | 4 | version `2` |
//! | 12 | 4 | flags: bit 0 `continues`; other bits zero |
//! | 16 | 16 | store uuid |
//! | 32 | 8 | `after`: the PIT id the file's writes follow (0: the first base) |
//! | 40 | 8 | file number (≥ 1; the name's number) |
//! | 48 | 8 | `prev_len`: with `continues`, PIT `after` holds exactly the first `prev_len` bytes (header included) of file number − 1; else 0 |
//! | 56 | 8 | id of the last checkpoint before this file (0: none) |
//! | 64 | 8 | that checkpoint's time |
//! | 72 | 8 | `bytes_before`: bytes of entries in all the journal's files before this one, since the journal began |
//! | 80 | 44 | zero |
//! | 124 | 4 | crc32c of bytes 0..124 |
//!
//! then entries back to back, then zeroes (see `log.rs`: the zero tail and
//! torn-tail recovery are those of version 1). An entry is a write record
//! (kinds `1` data and `2` zeroes, byte for byte as in version 1 and in
//! the primary's batches, see [`crate::encode_record`]) or a checkpoint
//! record (kind `3`), which has the same framing — 40 bytes, the length
//! at 28 of what follows, a trailing crc32c — so a reader skips or stops
//! at either the same way:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `OLRC` |
//! | 4 | 1 | kind `3` checkpoint |
//! | 5 | 1 | flags: bit 0 application-consistent, bit 1 `through` is present; other bits zero |
//! | 6 | 2 | zero |
//! | 8 | 8 | checkpoint id (≥ 1, growing across the journal) |
//! | 16 | 8 | time: nanoseconds since the Unix epoch, the primary's clock; never less than the previous checkpoint's |
//! | 24 | 4 | zero |
//! | 28 | 4 | name length *n* (0: unnamed; ≤ 255) |
//! | 32 | 8 | `through`: sequence number of the last write before it in this file (0 when absent) |
//! | 40 | *n* | name (UTF-8, no control characters) |
//! | 40 + *n* | 4 | crc32c of the record's preceding bytes |
//!
//! Readers check that checkpoint ids grow (from the header's last id),
//! times do not go back, and `through` is the last write's sequence
//! number: a checkpoint that fails any of it ends the entries like a torn
//! record. Version 1 logs (`GROUP/sync.log`, 64-byte header, no
//! checkpoints) are still read: the write log copies their records into
//! the first journal file (see `log.rs`, "Version 1 logs").
//!
//! ## Index `NUMBER.idx`
//!
//! Written when a file is sealed (and by the write log's open for sealed
//! files without one), so that opening does not read the whole history.
//! It is only a cache: a missing, damaged or mismatching index makes the
//! open scan the file instead.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `OFSRPJIX` |
//! | 8 | 4 | version `1` |
//! | 12 | 4 | checkpoint count *n* |
//! | 16 | 16 | store uuid |
//! | 32 | 8 | file number |
//! | 40 | 8 | `after` (as the file's header) |
//! | 48 | 8 | end of the file's entries (header included) |
//! | 56 | 8 | write records in the file |
//! | 64 | .. | *n* × (`u64` id, `u64` time, `u64` offset of its record, `u64` `through`, `u8` flags as the record's, `u8` zero, `u16` name length, name) |
//! | .. | 4 | crc32c of all preceding bytes |

use std::path::{Path, PathBuf};

use offsite_durable::le;
use serde::{Deserialize, Serialize};

use crate::log::{REC_MAGIC, decode_one};
use crate::{LogFormatError, LogRecord, PitId, RECORD_HEADER_LEN, RECORD_TRAILER_LEN};

/// The journal's directory in the store directory.
pub const JOURNAL_DIR: &str = "journal";
/// Bytes of a journal file's header.
pub const JOURNAL_HEADER_LEN: usize = 128;
/// Longest checkpoint name, in bytes.
pub const MAX_CHECKPOINT_NAME: usize = 255;
pub(crate) const JOURNAL_MAGIC: &[u8; 8] = b"OFSRPLOG";
pub(crate) const JOURNAL_VERSION: u32 = 2;
const FLAG_CONTINUES: u32 = 1;
pub(crate) const KIND_CHECKPOINT: u8 = 3;
const CK_APPLICATION: u8 = 1;
const CK_THROUGH: u8 = 2;
const INDEX_MAGIC: &[u8; 8] = b"OFSRPJIX";
const INDEX_VERSION: u32 = 1;
const INDEX_HEADER_LEN: usize = 64;
/// Fixed bytes of one checkpoint in an index, before its name.
const INDEX_ENTRY_LEN: usize = 36;
/// Whether checksums are verified: always, except in fuzzing builds.
const VERIFY_CHECKSUMS: bool = !cfg!(fuzzing);

/// Identifier of a checkpoint: positive, growing with every checkpoint of
/// a group's journal. Displays and serializes as a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct CheckpointId(pub(crate) u64);

impl CheckpointId {
    /// `None` for 0, which is never a valid id.
    pub fn new(id: u64) -> Option<CheckpointId> {
        (id != 0).then_some(CheckpointId(id))
    }

    /// The numeric id.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl TryFrom<u64> for CheckpointId {
    type Error = crate::PitIdError;
    fn try_from(id: u64) -> Result<CheckpointId, crate::PitIdError> {
        CheckpointId::new(id).ok_or(crate::PitIdError::Zero)
    }
}

impl From<CheckpointId> for u64 {
    fn from(id: CheckpointId) -> u64 {
        id.0
    }
}

/// What a checkpoint's image is consistent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// A cut of the write order: what the disks would hold after a crash
    /// at that instant (every checkpoint is at least this).
    Crash,
    /// Taken while the applications had flushed and paused their writes
    /// (the primary says so when it asks for the checkpoint).
    Application,
}

/// A checkpoint record (kind 3) of a journal file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRecord<'a> {
    /// Its id.
    pub id: u64,
    /// Nanoseconds since the Unix epoch, on the primary's clock.
    pub time_ns: u64,
    /// What its image is consistent with.
    pub consistency: Consistency,
    /// Sequence number of the last write before it in its file.
    pub through: Option<u64>,
    /// Optional name.
    pub name: Option<&'a str>,
}

/// One entry of a journal file: a write or a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalEntry<'a> {
    /// A write record (kinds 1 and 2).
    Write(LogRecord<'a>),
    /// A checkpoint record (kind 3).
    Checkpoint(CheckpointRecord<'a>),
}

/// Appends the encoding of a checkpoint record to `out`.
pub fn encode_checkpoint(rec: &CheckpointRecord<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    let name = rec.name.unwrap_or_default().as_bytes();
    let mut flags = 0;
    if rec.consistency == Consistency::Application {
        flags |= CK_APPLICATION;
    }
    if rec.through.is_some() {
        flags |= CK_THROUGH;
    }
    out.extend_from_slice(REC_MAGIC);
    out.push(KIND_CHECKPOINT);
    out.push(flags);
    out.extend_from_slice(&[0; 2]);
    out.extend_from_slice(&rec.id.to_le_bytes());
    out.extend_from_slice(&rec.time_ns.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(name.len() as u32).to_le_bytes());
    out.extend_from_slice(&rec.through.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(name);
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Appends the encoding of `entry` to `out`.
pub fn encode_journal_entry(entry: &JournalEntry<'_>, out: &mut Vec<u8>) {
    match entry {
        JournalEntry::Write(r) => crate::encode_record(r, out),
        JournalEntry::Checkpoint(c) => encode_checkpoint(c, out),
    }
}

/// Whether `name` is an acceptable checkpoint name: 1..=255 bytes of
/// UTF-8 without control characters.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_CHECKPOINT_NAME && !name.chars().any(char::is_control)
}

/// Decodes the checkpoint record at the start of `buf` (its kind byte is
/// 3): the record and its length, `Ok(None)` if `buf` is too short.
fn decode_checkpoint(buf: &[u8]) -> Result<Option<(CheckpointRecord<'_>, usize)>, LogFormatError> {
    let flags = buf[5];
    if flags & !(CK_APPLICATION | CK_THROUGH) != 0 {
        return Err(LogFormatError::CheckpointFlags(flags));
    }
    if buf[6..8] != [0; 2] || buf[24..28] != [0; 4] {
        return Err(LogFormatError::Reserved);
    }
    let n = le::u32_at(buf, 28) as usize;
    if n > MAX_CHECKPOINT_NAME {
        return Err(LogFormatError::CheckpointName);
    }
    let total = RECORD_HEADER_LEN + n + RECORD_TRAILER_LEN;
    if buf.len() < total {
        return Ok(None);
    }
    let crc = le::u32_at(buf, total - RECORD_TRAILER_LEN);
    if VERIFY_CHECKSUMS && crc32c::crc32c(&buf[..total - RECORD_TRAILER_LEN]) != crc {
        return Err(LogFormatError::RecordChecksum);
    }
    let id = le::u64_at(buf, 8);
    if id == 0 {
        return Err(LogFormatError::CheckpointZero);
    }
    let through = le::u64_at(buf, 32);
    if flags & CK_THROUGH == 0 && through != 0 {
        return Err(LogFormatError::Reserved);
    }
    let name = match n {
        0 => None,
        _ => Some(
            std::str::from_utf8(&buf[RECORD_HEADER_LEN..RECORD_HEADER_LEN + n])
                .ok()
                .filter(|s| valid_name(s))
                .ok_or(LogFormatError::CheckpointName)?,
        ),
    };
    let consistency = if flags & CK_APPLICATION != 0 {
        Consistency::Application
    } else {
        Consistency::Crash
    };
    Ok(Some((
        CheckpointRecord {
            id,
            time_ns: le::u64_at(buf, 16),
            consistency,
            through: (flags & CK_THROUGH != 0).then_some(through),
            name,
        },
        total,
    )))
}

/// Decodes the journal entry at the start of `buf`: the entry and its
/// length, `Ok(None)` if `buf` is too short to hold it, or why it is
/// invalid.
pub(crate) fn decode_entry(
    buf: &[u8],
) -> Result<Option<(JournalEntry<'_>, usize)>, LogFormatError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Ok(None);
    }
    if &buf[0..4] == REC_MAGIC && buf[4] == KIND_CHECKPOINT {
        return Ok(decode_checkpoint(buf)?.map(|(c, n)| (JournalEntry::Checkpoint(c), n)));
    }
    Ok(decode_one(buf)?.map(|(r, n)| (JournalEntry::Write(r), n)))
}

/// The order rules of a journal file's entries, checked as they are read:
/// write sequence numbers grow, checkpoint ids grow, times do not go back,
/// a checkpoint's `through` is the last write's sequence number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Order {
    pub(crate) last_seq: Option<u64>,
    pub(crate) last_checkpoint: u64,
    pub(crate) last_time: u64,
}

impl Order {
    /// Checks `entry` against the entries before it and takes it in.
    pub(crate) fn take(&mut self, entry: &JournalEntry<'_>) -> Result<(), LogFormatError> {
        match entry {
            JournalEntry::Write(r) => {
                if let Some(prev) = self.last_seq
                    && r.seq <= prev
                {
                    return Err(LogFormatError::OutOfOrder { seq: r.seq, prev });
                }
                self.last_seq = Some(r.seq);
            }
            JournalEntry::Checkpoint(c) => {
                if c.id <= self.last_checkpoint || c.time_ns < self.last_time {
                    return Err(LogFormatError::CheckpointOrder {
                        id: c.id,
                        prev: self.last_checkpoint,
                    });
                }
                if c.through != self.last_seq {
                    return Err(LogFormatError::CheckpointThrough);
                }
                self.last_checkpoint = c.id;
                self.last_time = c.time_ns;
            }
        }
        Ok(())
    }
}

/// Decodes the entries of a journal file after its header (untrusted
/// bytes: tools, the fuzzer): every byte must belong to a valid entry, in
/// order (write sequence numbers and checkpoint ids grow, times do not go
/// back, each checkpoint names the last write before it).
pub fn decode_journal_entries(buf: &[u8]) -> Result<Vec<JournalEntry<'_>>, LogFormatError> {
    let mut out = Vec::new();
    let mut order = Order::default();
    let mut at = 0;
    while at < buf.len() {
        let Some((entry, len)) = decode_entry(&buf[at..])? else {
            return Err(LogFormatError::Truncated {
                trailing: buf.len() - at,
            });
        };
        order.take(&entry)?;
        out.push(entry);
        at += len;
    }
    Ok(out)
}

/// The header of a journal file (version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) number: u64,
    pub(crate) after: u64,
    /// `Some(prev_len)`: PIT `after` holds exactly the first `prev_len`
    /// bytes of file `number - 1`.
    pub(crate) continues: Option<u64>,
    pub(crate) last_checkpoint: u64,
    pub(crate) last_time: u64,
    /// Entries' bytes in the journal before this file (its position on
    /// an absolute byte scale; see `history::spaced_anchors`).
    pub(crate) bytes_before: u64,
}

pub(crate) fn encode_header(uuid: &[u8; 16], h: &Header) -> [u8; JOURNAL_HEADER_LEN] {
    let mut b = [0u8; JOURNAL_HEADER_LEN];
    b[0..8].copy_from_slice(JOURNAL_MAGIC);
    b[8..12].copy_from_slice(&JOURNAL_VERSION.to_le_bytes());
    let flags = if h.continues.is_some() {
        FLAG_CONTINUES
    } else {
        0
    };
    b[12..16].copy_from_slice(&flags.to_le_bytes());
    b[16..32].copy_from_slice(uuid);
    b[32..40].copy_from_slice(&h.after.to_le_bytes());
    b[40..48].copy_from_slice(&h.number.to_le_bytes());
    b[48..56].copy_from_slice(&h.continues.unwrap_or(0).to_le_bytes());
    b[56..64].copy_from_slice(&h.last_checkpoint.to_le_bytes());
    b[64..72].copy_from_slice(&h.last_time.to_le_bytes());
    b[72..80].copy_from_slice(&h.bytes_before.to_le_bytes());
    let crc = crc32c::crc32c(&b[..124]);
    b[124..128].copy_from_slice(&crc.to_le_bytes());
    b
}

/// A journal file's header, or why it is not one of this store's.
pub(crate) fn decode_header(b: &[u8], uuid: &[u8; 16]) -> Result<Header, LogFormatError> {
    if b.len() < JOURNAL_HEADER_LEN {
        return Err(LogFormatError::HeaderTruncated(b.len()));
    }
    if VERIFY_CHECKSUMS && crc32c::crc32c(&b[..124]) != le::u32_at(b, 124) {
        return Err(LogFormatError::HeaderChecksum);
    }
    if &b[0..8] != JOURNAL_MAGIC {
        return Err(LogFormatError::HeaderMagic);
    }
    let v = le::u32_at(b, 8);
    if v != JOURNAL_VERSION {
        return Err(LogFormatError::Version(v));
    }
    let flags = le::u32_at(b, 12);
    let prev_len = le::u64_at(b, 48);
    let number = le::u64_at(b, 40);
    let continues = flags & FLAG_CONTINUES != 0;
    if flags & !FLAG_CONTINUES != 0
        || b[80..124].iter().any(|&x| x != 0)
        || number == 0
        || (!continues && prev_len != 0)
        || (continues && prev_len < JOURNAL_HEADER_LEN as u64)
    {
        return Err(LogFormatError::HeaderReserved);
    }
    if &b[16..32] != uuid {
        return Err(LogFormatError::OtherStore);
    }
    Ok(Header {
        number,
        after: le::u64_at(b, 32),
        continues: continues.then_some(prev_len),
        last_checkpoint: le::u64_at(b, 56),
        last_time: le::u64_at(b, 64),
        bytes_before: le::u64_at(b, 72),
    })
}

/// A checkpoint as the journal's index keeps it.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedCheckpoint {
    /// Its id.
    pub id: u64,
    /// Its time (ns since the epoch, the primary's clock).
    pub time_ns: u64,
    /// Offset of its record in its file: its image holds the writes
    /// before it.
    pub at: u64,
    /// Sequence number of the last write before it in its file.
    pub through: Option<u64>,
    /// What it is consistent with.
    pub consistency: Consistency,
    /// Optional name.
    pub name: Option<String>,
}

/// The index of one sealed journal file (`NUMBER.idx`).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalIndex {
    /// Store uuid.
    pub uuid: [u8; 16],
    /// File number.
    pub number: u64,
    /// The PIT the file's writes follow.
    pub after: u64,
    /// End of the file's entries (header included).
    pub len: u64,
    /// Write records in the file.
    pub records: u64,
    /// Its checkpoints, in order.
    pub checkpoints: Vec<IndexedCheckpoint>,
}

/// Encodes a journal file's index.
#[doc(hidden)]
pub fn encode_journal_index(ix: &JournalIndex) -> Vec<u8> {
    let mut b = Vec::with_capacity(INDEX_HEADER_LEN + ix.checkpoints.len() * 48 + 4);
    b.extend_from_slice(INDEX_MAGIC);
    b.extend_from_slice(&INDEX_VERSION.to_le_bytes());
    b.extend_from_slice(&(ix.checkpoints.len() as u32).to_le_bytes());
    b.extend_from_slice(&ix.uuid);
    for v in [ix.number, ix.after, ix.len, ix.records] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    for c in &ix.checkpoints {
        let name = c.name.as_deref().unwrap_or_default().as_bytes();
        for v in [c.id, c.time_ns, c.at, c.through.unwrap_or(0)] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let mut flags = 0;
        if c.consistency == Consistency::Application {
            flags |= CK_APPLICATION;
        }
        if c.through.is_some() {
            flags |= CK_THROUGH;
        }
        b.push(flags);
        b.push(0);
        b.extend_from_slice(&(name.len() as u16).to_le_bytes());
        b.extend_from_slice(name);
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a journal file's index (checked in the order length, CRC,
/// magic, version, content). Identity (uuid, number) is the caller's.
#[doc(hidden)]
pub fn decode_journal_index(b: &[u8]) -> Result<JournalIndex, LogFormatError> {
    if b.len() < INDEX_HEADER_LEN + 4 {
        return Err(LogFormatError::IndexTruncated(b.len()));
    }
    let body = b.len() - 4;
    if VERIFY_CHECKSUMS && crc32c::crc32c(&b[..body]) != le::u32_at(b, body) {
        return Err(LogFormatError::IndexChecksum);
    }
    if &b[0..8] != INDEX_MAGIC {
        return Err(LogFormatError::IndexMagic);
    }
    let v = le::u32_at(b, 8);
    if v != INDEX_VERSION {
        return Err(LogFormatError::IndexVersion(v));
    }
    let n = le::u32_at(b, 12) as usize;
    if n > (body - INDEX_HEADER_LEN) / INDEX_ENTRY_LEN {
        return Err(LogFormatError::IndexEntries);
    }
    let mut ix = JournalIndex {
        uuid: b[16..32].try_into().expect("16 bytes"),
        number: le::u64_at(b, 32),
        after: le::u64_at(b, 40),
        len: le::u64_at(b, 48),
        records: le::u64_at(b, 56),
        checkpoints: Vec::with_capacity(n),
    };
    if ix.number == 0 || ix.len < JOURNAL_HEADER_LEN as u64 {
        return Err(LogFormatError::IndexEntries);
    }
    let mut at = INDEX_HEADER_LEN;
    for _ in 0..n {
        let c = decode_index_entry(&b[..body], &mut at)?;
        if let Some(p) = ix.checkpoints.last()
            && (c.id <= p.id || c.time_ns < p.time_ns || c.at <= p.at)
        {
            return Err(LogFormatError::IndexEntries);
        }
        let record =
            RECORD_HEADER_LEN + c.name.as_ref().map_or(0, String::len) + RECORD_TRAILER_LEN;
        // Offsets are untrusted: an overflow is just another bad entry.
        let fits =
            c.at.checked_add(record as u64)
                .is_some_and(|end| end <= ix.len);
        if c.at < JOURNAL_HEADER_LEN as u64 || !fits {
            return Err(LogFormatError::IndexEntries);
        }
        ix.checkpoints.push(c);
    }
    if at != body {
        return Err(LogFormatError::IndexEntries);
    }
    Ok(ix)
}

/// One checkpoint of an index at `*at` (advanced past it).
fn decode_index_entry(b: &[u8], at: &mut usize) -> Result<IndexedCheckpoint, LogFormatError> {
    let a = *at;
    if b.len() < a + INDEX_ENTRY_LEN {
        return Err(LogFormatError::IndexEntries);
    }
    let flags = b[a + 32];
    let n = usize::from(le::u16_at(b, a + 34));
    if flags & !(CK_APPLICATION | CK_THROUGH) != 0
        || b[a + 33] != 0
        || n > MAX_CHECKPOINT_NAME
        || b.len() < a + INDEX_ENTRY_LEN + n
    {
        return Err(LogFormatError::IndexEntries);
    }
    let through = le::u64_at(b, a + 24);
    if flags & CK_THROUGH == 0 && through != 0 {
        return Err(LogFormatError::IndexEntries);
    }
    let name = match n {
        0 => None,
        _ => Some(
            std::str::from_utf8(&b[a + INDEX_ENTRY_LEN..a + INDEX_ENTRY_LEN + n])
                .ok()
                .filter(|s| valid_name(s))
                .ok_or(LogFormatError::IndexEntries)?
                .to_string(),
        ),
    };
    let id = le::u64_at(b, a);
    if id == 0 {
        return Err(LogFormatError::IndexEntries);
    }
    *at = a + INDEX_ENTRY_LEN + n;
    Ok(IndexedCheckpoint {
        id,
        time_ns: le::u64_at(b, a + 8),
        at: le::u64_at(b, a + 16),
        through: (flags & CK_THROUGH != 0).then_some(through),
        consistency: if flags & CK_APPLICATION != 0 {
            Consistency::Application
        } else {
            Consistency::Crash
        },
        name,
    })
}

/// The path of journal file `number` in `dir`.
pub(crate) fn file_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.jnl"))
}

/// The path of the index of journal file `number` in `dir`.
pub(crate) fn index_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}.idx"))
}

/// The number in a journal file's name, `None` for anything else.
pub(crate) fn parse_file_name(name: &str) -> Option<u64> {
    let n = name.strip_suffix(".jnl")?;
    (n.len() == 20 && n.bytes().all(|c| c.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
        .filter(|&n| n != 0)
}

/// A checkpoint as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Its id.
    pub id: CheckpointId,
    /// Nanoseconds since the Unix epoch, on the primary's clock.
    pub time_ns: u64,
    /// What its image is consistent with.
    pub consistency: Consistency,
    /// Optional name.
    pub name: Option<String>,
    /// The PIT whose state the journal's writes up to it follow (`None`:
    /// the group's first base).
    pub follows: Option<PitId>,
    /// Sequence number of the last write in it (in its journal file).
    pub through_seq: Option<u64>,
}

impl CheckpointInfo {
    pub(crate) fn new(c: &IndexedCheckpoint, after: u64) -> CheckpointInfo {
        CheckpointInfo {
            id: CheckpointId(c.id),
            time_ns: c.time_ns,
            consistency: c.consistency,
            name: c.name.clone(),
            follows: PitId::new(after),
            through_seq: c.through,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck(id: u64, name: Option<&str>) -> CheckpointRecord<'_> {
        CheckpointRecord {
            id,
            time_ns: 1_700_000_000_000_000_000 + id,
            consistency: Consistency::Application,
            through: Some(41),
            name,
        }
    }

    #[test]
    fn a_checkpoint_record_round_trips_and_is_framed_like_a_write() {
        let mut b = Vec::new();
        encode_checkpoint(&ck(3, Some("before-upgrade")), &mut b);
        assert_eq!(b.len(), 40 + 14 + 4);
        assert_eq!(le::u32_at(&b, 28), 14, "the framing's length field");
        let (e, n) = decode_entry(&b).unwrap().unwrap();
        assert_eq!(n, b.len());
        assert_eq!(e, JournalEntry::Checkpoint(ck(3, Some("before-upgrade"))));
        assert!(decode_entry(&b[..b.len() - 1]).unwrap().is_none());
        let mut bad = b.clone();
        bad[45] ^= 1;
        assert!(matches!(
            decode_entry(&bad),
            Err(LogFormatError::RecordChecksum)
        ));
    }

    #[test]
    fn a_batch_from_the_network_may_not_carry_a_checkpoint() {
        let mut b = Vec::new();
        encode_checkpoint(&ck(1, None), &mut b);
        assert!(matches!(
            crate::decode_records(&b),
            Err(LogFormatError::CheckpointInBatch)
        ));
    }

    #[test]
    fn entries_must_keep_their_order() {
        let mut b = Vec::new();
        let data = [7u8; 512];
        let w = |seq| {
            JournalEntry::Write(LogRecord {
                seq,
                volume: 0,
                first: 1,
                count: 1,
                data: Some(&data),
            })
        };
        encode_journal_entry(&w(41), &mut b);
        encode_journal_entry(&JournalEntry::Checkpoint(ck(3, None)), &mut b);
        assert_eq!(decode_journal_entries(&b).unwrap().len(), 2);
        // A checkpoint that names another last write.
        let mut c = Vec::new();
        encode_journal_entry(&w(40), &mut c);
        encode_journal_entry(&JournalEntry::Checkpoint(ck(3, None)), &mut c);
        assert!(matches!(
            decode_journal_entries(&c),
            Err(LogFormatError::CheckpointThrough)
        ));
        // Ids must grow.
        encode_journal_entry(&JournalEntry::Checkpoint(ck(3, None)), &mut b);
        assert!(matches!(
            decode_journal_entries(&b),
            Err(LogFormatError::CheckpointOrder { id: 3, prev: 3 })
        ));
    }

    #[test]
    fn the_header_and_the_index_round_trip() {
        let uuid = *b"0123456789abcdef";
        let h = Header {
            number: 9,
            after: 4,
            continues: Some(4096),
            last_checkpoint: 77,
            last_time: 123,
            bytes_before: 1 << 40,
        };
        assert_eq!(decode_header(&encode_header(&uuid, &h), &uuid).unwrap(), h);
        assert!(matches!(
            decode_header(&encode_header(&uuid, &h), b"fedcba9876543210"),
            Err(LogFormatError::OtherStore)
        ));
        let ix = JournalIndex {
            uuid,
            number: 9,
            after: 4,
            len: 10_000,
            records: 12,
            checkpoints: vec![
                IndexedCheckpoint {
                    id: 78,
                    time_ns: 200,
                    at: 128,
                    through: None,
                    consistency: Consistency::Crash,
                    name: None,
                },
                IndexedCheckpoint {
                    id: 79,
                    time_ns: 200,
                    at: 5000,
                    through: Some(3),
                    consistency: Consistency::Application,
                    name: Some("x".into()),
                },
            ],
        };
        let b = encode_journal_index(&ix);
        assert_eq!(decode_journal_index(&b).unwrap(), ix);
        for cut in 0..b.len() {
            assert!(decode_journal_index(&b[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Found by the fuzzer: a checkpoint at an offset near `u64::MAX`
    /// overflowed the end check.
    #[test]
    fn an_index_entry_at_the_end_of_the_address_space_is_refused() {
        let mut ix = JournalIndex {
            uuid: [7; 16],
            number: 1,
            after: 0,
            len: u64::MAX,
            records: 0,
            checkpoints: vec![IndexedCheckpoint {
                id: 1,
                time_ns: 0,
                at: u64::MAX - 3,
                through: None,
                consistency: Consistency::Crash,
                name: None,
            }],
        };
        assert!(matches!(
            decode_journal_index(&encode_journal_index(&ix)),
            Err(LogFormatError::IndexEntries)
        ));
        ix.checkpoints[0].at = u64::MAX - 44;
        assert!(decode_journal_index(&encode_journal_index(&ix)).is_ok());
    }

    #[test]
    fn journal_file_names() {
        assert_eq!(parse_file_name("00000000000000000012.jnl"), Some(12));
        for bad in [
            "00000000000000000000.jnl",
            "12.jnl",
            "00000000000000000012.idx",
            "0000000000000000001x.jnl",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
        assert_eq!(
            file_path(Path::new("j"), 12),
            Path::new("j/00000000000000000012.jnl")
        );
    }
}
