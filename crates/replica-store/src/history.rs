//! The journal's history in memory: its files and checkpoints (loaded from
//! the indexes, or by scanning the files), which checkpoints can still be
//! materialized, listing them, the PITs retention must keep for them, and
//! dropping history from the front ([`ReplicaStore::prune_journal`]).
//!
//! **Reachability.** A checkpoint in file *F* is reachable when some state
//! exists to replay from: walking back from *F*, the first file whose
//! `after` state exists (a visible PIT, or the base when the base is
//! through exactly that PIT), through files that each continue the one
//! before (`continues`: the next file's `after` PIT was sealed from exactly
//! the bytes the header names). A checkpoint whose walk ends at a missing
//! state has been folded into a PIT or the base and is not listed.
//!
//! **What retention must keep** ([`ReplicaStore::journal_pins`]): for each
//! chain of continuing files, the *oldest* existing state along it. Every
//! checkpoint of the chain replays from there whatever happens to the PITs
//! in between, so those may merge as usual (a merge into the next PIT keeps
//! every other PIT's state). When that oldest state is the base, the PIT
//! to keep is the oldest one, which would otherwise fold into the base and
//! move it past the chain's start. Along the chain, one more state is kept
//! every `anchor_every` (or `anchor_bytes`): without them, dropping the
//! oldest file would make every later checkpoint up to the next surviving
//! PIT unreachable, so the front could never move while those are inside
//! the window; with them it moves in steps of `anchor_every`, and an image
//! replays at most about that much journal. The states that live
//! [`crate::CheckpointImage`]s read from are added.
//!
//! **Pruning** drops whole files from the front, never the newest (it may
//! be the open one). The oldest file goes when everything its removal makes
//! unreachable is older than the history window (measured back from the
//! newest checkpoint, on the primary's clock: a replica whose primary is
//! gone keeps its history), or while the journal is over its size; never
//! when that would drop a checkpoint the caller keeps. Removal is one
//! `unlink` per file and an fsync of the directory: after a crash, any
//! subset of the doomed files is gone, each of them whole, and the
//! remaining checkpoints are reachable or not by the rule above, which
//! never depends on a removed file's neighbours being there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use offsite_durable::le;

use crate::chain::Inner;
use crate::journal::{
    CheckpointId, CheckpointInfo, Consistency, Header, IndexedCheckpoint, JOURNAL_DIR,
    JOURNAL_HEADER_LEN, JournalEntry, JournalIndex, Order, decode_entry, decode_header,
    decode_journal_index, encode_journal_index, index_path, parse_file_name,
};
use crate::log::check_record;
use crate::{
    LogRecord, MAX_RECORD_DATA, PitId, RECORD_HEADER_LEN, RECORD_TRAILER_LEN, ReplicaError,
    ReplicaStore, VolumeSpec, fsx,
};

/// Largest index file read (a day of checkpoints a second is ~4 MiB).
const MAX_INDEX: u64 = 256 << 20;

/// One journal file in memory.
#[derive(Debug, Clone)]
pub(crate) struct FileMeta {
    pub(crate) number: u64,
    pub(crate) path: PathBuf,
    pub(crate) after: u64,
    pub(crate) continues: Option<u64>,
    /// The order its entries start from (the last checkpoint before it).
    pub(crate) start: Order,
    /// End of its valid entries (header included).
    pub(crate) len: u64,
    /// Bytes on disk (entries and zero tail).
    pub(crate) disk: u64,
    /// Entries' bytes in the journal before it (its header's).
    pub(crate) bytes_before: u64,
    pub(crate) records: u64,
    pub(crate) checkpoints: Vec<IndexedCheckpoint>,
    /// Why its header cannot be read: nothing in it is reachable.
    pub(crate) damaged: Option<String>,
}

impl FileMeta {
    /// A new file of `header` holding nothing yet.
    pub(crate) fn empty(h: &Header, path: PathBuf) -> FileMeta {
        FileMeta {
            number: h.number,
            path,
            after: h.after,
            continues: h.continues,
            start: start_order(h),
            len: JOURNAL_HEADER_LEN as u64,
            disk: JOURNAL_HEADER_LEN as u64,
            bytes_before: h.bytes_before,
            records: 0,
            checkpoints: Vec::new(),
            damaged: None,
        }
    }

    /// Entries' bytes in the journal up to its end.
    pub(crate) fn bytes_through(&self) -> u64 {
        self.bytes_before + self.len.saturating_sub(JOURNAL_HEADER_LEN as u64)
    }

    /// The last checkpoint at its end: `(id, time)`.
    pub(crate) fn last_checkpoint(&self) -> (u64, u64) {
        self.checkpoints
            .last()
            .map_or((self.start.last_checkpoint, self.start.last_time), |c| {
                (c.id, c.time_ns)
            })
    }

    pub(crate) fn index(&self, uuid: [u8; 16]) -> JournalIndex {
        JournalIndex {
            uuid,
            number: self.number,
            after: self.after,
            len: self.len,
            records: self.records,
            checkpoints: self.checkpoints.clone(),
        }
    }
}

/// The order a file's entries start from.
pub(crate) fn start_order(h: &Header) -> Order {
    Order {
        last_seq: None,
        last_checkpoint: h.last_checkpoint,
        last_time: h.last_time,
    }
}

/// The journal's files, ascending by number.
#[derive(Debug, Default)]
pub(crate) struct JournalState {
    pub(crate) files: Vec<FileMeta>,
}

/// The states a checkpoint's image can start from: the base (as of
/// `base_through`) and the visible PITs.
#[derive(Debug, Clone)]
pub(crate) struct Views {
    pub(crate) base_through: u64,
    pub(crate) pits: Vec<u64>,
}

impl Views {
    /// The chain as published now (its read lock only, briefly).
    pub(crate) fn snapshot(inner: &Inner) -> Views {
        let st = inner.read_state();
        Views {
            base_through: st.base_through,
            pits: st.chain.iter().map(|p| p.id).collect(),
        }
    }

    pub(crate) fn has(&self, id: u64) -> bool {
        id == self.base_through || self.pits.binary_search(&id).is_ok()
    }

    /// The PIT retention must keep so that state `id` stays: `id` itself,
    /// or, for the base, the oldest PIT (the next to fold into it).
    fn pin(&self, id: u64) -> Option<PitId> {
        if id == self.base_through {
            self.pits.first().copied().and_then(PitId::new)
        } else {
            PitId::new(id)
        }
    }
}

/// Whether file `j` of `files` continues file `j - 1`: PIT
/// `files[j].after` was sealed from that file's first `continues` bytes,
/// and they are there.
fn chains(files: &[FileMeta], j: usize) -> bool {
    let Some(prev) = j.checked_sub(1).map(|p| &files[p]) else {
        return false;
    };
    let f = &files[j];
    f.damaged.is_none()
        && prev.damaged.is_none()
        && prev.number + 1 == f.number
        && f.continues.is_some_and(|l| l <= prev.len)
}

/// The file to replay from for the checkpoints of file `i`: the nearest
/// one back along its chain whose `after` state exists.
fn nearest(files: &[FileMeta], i: usize, views: &Views) -> Option<usize> {
    let mut j = i;
    loop {
        let f = &files[j];
        if f.damaged.is_some() {
            return None;
        }
        if views.has(f.after) {
            return Some(j);
        }
        if !chains(files, j) {
            return None;
        }
        j -= 1;
    }
}

/// Per file, the oldest file back along its chain whose `after` state
/// exists (`None`: its checkpoints are unreachable).
fn oldest_anchors(files: &[FileMeta], views: &Views) -> Vec<Option<usize>> {
    let mut out: Vec<Option<usize>> = Vec::with_capacity(files.len());
    for (j, f) in files.iter().enumerate() {
        let inherited = if chains(files, j) { out[j - 1] } else { None };
        let own = (f.damaged.is_none() && views.has(f.after)).then_some(j);
        out.push(inherited.or(own));
    }
    out
}

/// The reachable checkpoints of `files`, in order, with the `after` of
/// their file.
fn reachable<'a>(files: &'a [FileMeta], views: &Views) -> Vec<(u64, &'a IndexedCheckpoint)> {
    let anchors = oldest_anchors(files, views);
    files
        .iter()
        .zip(&anchors)
        .filter(|(_, a)| a.is_some())
        .flat_map(|(f, _)| f.checkpoints.iter().map(move |c| (f.after, c)))
        .collect()
}

/// The states (PIT ids, or the base's) retention must keep along the
/// journal: the oldest one each chain of continuing files replays from,
/// and the `after` state of each file that starts a new step of
/// `policy.anchor_every` of checkpoint time (its first checkpoint is in a
/// later step than the last checkpoint before the file, which its header
/// names) or follows a file that crossed a multiple of
/// `policy.anchor_bytes` of journal. The first keeps every checkpoint
/// reachable while the PITs in between merge; the others let pruning move
/// the front of the history forward (dropping the files before a kept
/// state loses only their own checkpoints) and bound how much journal an
/// image replays. Each file is judged by its own header only, so which
/// states are kept does not change as the front moves: a state kept once
/// is kept until its files are pruned.
fn spaced_anchors(files: &[FileMeta], views: &Views, policy: &JournalPolicy) -> BTreeSet<u64> {
    let anchors = oldest_anchors(files, views);
    let every = u64::try_from(policy.anchor_every.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let bytes = policy.anchor_bytes.max(1);
    let mut out = BTreeSet::new();
    for (j, f) in files.iter().enumerate() {
        let (Some(a), Some(first)) = (anchors[j], f.checkpoints.first()) else {
            continue;
        };
        out.insert(files[a].after);
        let new_step =
            f.start.last_checkpoint == 0 || first.time_ns / every > f.start.last_time / every;
        let crossed = f.continues.is_some_and(|prev_len| {
            let prev_entries = prev_len.saturating_sub(JOURNAL_HEADER_LEN as u64);
            f.bytes_before / bytes > f.bytes_before.saturating_sub(prev_entries) / bytes
        });
        if (new_step || crossed) && views.has(f.after) {
            out.insert(f.after);
        }
    }
    out
}

impl JournalState {
    fn reachable(&self, views: &Views) -> Vec<(u64, &IndexedCheckpoint)> {
        reachable(&self.files, views)
    }

    fn find(&self, id: u64) -> Option<(usize, &IndexedCheckpoint)> {
        self.files.iter().enumerate().find_map(|(i, f)| {
            let pos = f.checkpoints.binary_search_by_key(&id, |c| c.id).ok()?;
            Some((i, &f.checkpoints[pos]))
        })
    }

    pub(crate) fn file_mut(&mut self, number: u64) -> Option<&mut FileMeta> {
        self.files.iter_mut().find(|f| f.number == number)
    }

    /// Where the image of checkpoint `id` comes from: the state to start
    /// from, then each file's entries up to where they count.
    pub(crate) fn plan(&self, id: CheckpointId, views: &Views) -> Result<Plan, ReplicaError> {
        let (i, c) = self
            .find(id.get())
            .ok_or(ReplicaError::NoSuchCheckpoint { id })?;
        let f = &self.files[i];
        let start =
            nearest(&self.files, i, views).ok_or_else(|| ReplicaError::CheckpointUnreachable {
                id,
                why: format!(
                    "it follows PIT {}, which was merged away with the journal before it",
                    f.after
                ),
            })?;
        let parts = (start..=i)
            .map(|k| {
                let g = &self.files[k];
                let limit = if k == i {
                    c.at
                } else {
                    self.files[k + 1].continues.unwrap_or(g.len)
                };
                Part {
                    path: g.path.clone(),
                    start: g.start,
                    limit,
                }
            })
            .collect();
        Ok(Plan {
            info: CheckpointInfo::new(c, f.after),
            anchor: self.files[start].after,
            parts,
        })
    }
}

/// How to build a checkpoint's image.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) info: CheckpointInfo,
    /// The state it starts from (base or PIT id).
    pub(crate) anchor: u64,
    pub(crate) parts: Vec<Part>,
}

/// The entries of one journal file that an image replays.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) path: PathBuf,
    pub(crate) start: Order,
    /// End (exclusive) of the entries that count.
    pub(crate) limit: u64,
}

/// What a scan of a journal file found: where the valid entries end, and
/// what they hold.
#[derive(Debug)]
pub(crate) struct Scanned {
    pub(crate) len: u64,
    pub(crate) records: u64,
    pub(crate) order: Order,
    pub(crate) checkpoints: Vec<IndexedCheckpoint>,
}

/// Where a [`scan`] starts and what it accepts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanFrom {
    /// Offset of the first entry.
    pub(crate) start: u64,
    /// The order the entries continue.
    pub(crate) order: Order,
    /// Whether checkpoint records are valid (not in version 1 logs).
    pub(crate) checkpoints: bool,
    /// End (exclusive) of the entries to read; `None`: to the end.
    pub(crate) limit: Option<u64>,
}

impl ScanFrom {
    /// A whole journal file's entries after its header, in `order`.
    pub(crate) fn journal(order: Order) -> ScanFrom {
        ScanFrom {
            start: JOURNAL_HEADER_LEN as u64,
            order,
            checkpoints: true,
            limit: None,
        }
    }
}

/// Reads the entries of a journal (or version 1 log) file as `from` says,
/// in order, until its limit, the end of the file, or the first entry that
/// does not decode or check (against the store's volumes, and [`Order`]):
/// that is where the valid entries end. Each write record goes to
/// `on_write` with its offset.
pub(crate) fn scan(
    specs: &[VolumeSpec],
    file: &File,
    path: &Path,
    from: ScanFrom,
    on_write: &mut dyn FnMut(&LogRecord<'_>, u64) -> Result<(), ReplicaError>,
) -> Result<Scanned, ReplicaError> {
    let ScanFrom {
        start,
        mut order,
        checkpoints,
        limit,
    } = from;
    let mut r = BufReader::with_capacity(1 << 20, file);
    r.seek(SeekFrom::Start(start))
        .map_err(|e| ReplicaError::io("seek", path, e))?;
    let mut out = Scanned {
        len: start,
        records: 0,
        order,
        checkpoints: Vec::new(),
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        buf.resize(RECORD_HEADER_LEN, 0);
        if r.read_exact(&mut buf).is_err() {
            break;
        }
        let dl = le::u32_at(&buf, 28).min(MAX_RECORD_DATA) as usize;
        let total = RECORD_HEADER_LEN + dl + RECORD_TRAILER_LEN;
        if limit.is_some_and(|l| out.len + total as u64 > l) {
            break;
        }
        buf.resize(total, 0);
        if r.read_exact(&mut buf[RECORD_HEADER_LEN..]).is_err() {
            break;
        }
        let entry = match decode_entry(&buf) {
            Ok(Some((e, _))) => e,
            _ => break,
        };
        let fits = match &entry {
            JournalEntry::Write(rec) => check_record(specs, rec).is_ok(),
            JournalEntry::Checkpoint(_) => checkpoints,
        };
        if !fits || order.take(&entry).is_err() {
            break;
        }
        match entry {
            JournalEntry::Write(rec) => {
                on_write(&rec, out.len)?;
                out.records += 1;
            }
            JournalEntry::Checkpoint(c) => out.checkpoints.push(IndexedCheckpoint {
                id: c.id,
                time_ns: c.time_ns,
                at: out.len,
                through: c.through,
                consistency: c.consistency,
                name: c.name.map(str::to_string),
            }),
        }
        out.len += total as u64;
    }
    out.order = order;
    Ok(out)
}

/// The journal files in `dir`, ascending: `(number, path)`. With `clean`,
/// leftovers of interrupted replacements (`*.partial`) and indexes
/// without their file are removed first.
pub(crate) fn list_files(dir: &Path, clean: bool) -> Result<Vec<(u64, PathBuf)>, ReplicaError> {
    let it = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ReplicaError::io("list directory", dir, e)),
    };
    let mut files = Vec::new();
    let mut other = Vec::new();
    for entry in it {
        let entry = entry.map_err(|e| ReplicaError::io("list directory", dir, e))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_file_name) {
            Some(n) => files.push((n, entry.path())),
            None => other.push(entry.path()),
        }
    }
    files.sort();
    if clean {
        let mut removed = false;
        for path in other {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let orphan_index = name
                .strip_suffix(".idx")
                .and_then(|n| parse_file_name(&format!("{n}.jnl")))
                .is_some_and(|n| files.binary_search_by_key(&n, |f| f.0).is_err());
            if name.ends_with(".partial") || orphan_index {
                tracing::info!(path = %path.display(), "journal: removing a leftover");
                fsx::remove_file(&path)?;
                removed = true;
            }
        }
        if removed {
            fsx::sync_dir(dir)?;
        }
    }
    Ok(files)
}

/// How [`load_file`] may change the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LoadMode {
    /// Read only (listing without the write log).
    ReadOnly,
    /// The write log's open: an index is written for a file scanned
    /// without one.
    Recover,
    /// As `Recover`, and the file was the newest: a torn tail after its
    /// entries is cut (it was never acknowledged), as the write log does.
    RecoverNewest,
}

/// Loads a journal file that is not appended to: from its index when that
/// matches, else by scanning it.
pub(crate) fn load_file(
    inner: &Inner,
    path: &Path,
    number: u64,
    mode: LoadMode,
) -> Result<FileMeta, ReplicaError> {
    let damaged = |why: String| {
        tracing::warn!(path = %path.display(), "journal file is damaged: {why}");
        FileMeta {
            number,
            path: path.to_path_buf(),
            after: 0,
            continues: None,
            start: Order::default(),
            len: 0,
            disk: fs::metadata(path).map_or(0, |m| m.len()),
            bytes_before: 0,
            records: 0,
            checkpoints: Vec::new(),
            damaged: Some(why),
        }
    };
    let file = File::open(path).map_err(|e| ReplicaError::io("open", path, e))?;
    let disk = file
        .metadata()
        .map_err(|e| ReplicaError::io("stat", path, e))?
        .len();
    let mut hb = [0u8; JOURNAL_HEADER_LEN];
    if let Err(e) = std::os::unix::fs::FileExt::read_exact_at(&file, &mut hb, 0) {
        return Ok(damaged(format!("its header cannot be read: {e}")));
    }
    let h = match decode_header(&hb, &inner.uuid) {
        Ok(h) if h.number == number => h,
        Ok(h) => return Ok(damaged(format!("its header says file {}", h.number))),
        Err(e) => return Ok(damaged(e.to_string())),
    };
    let mut meta = FileMeta::empty(&h, path.to_path_buf());
    meta.disk = disk;
    if let Some(ix) = read_index(inner, &h, disk) {
        meta.len = ix.len;
        meta.records = ix.records;
        meta.checkpoints = ix.checkpoints;
        return Ok(meta);
    }
    let s = scan(
        &inner.specs,
        &file,
        path,
        ScanFrom::journal(meta.start),
        &mut |_, _| Ok(()),
    )?;
    meta.len = s.len;
    meta.records = s.records;
    meta.checkpoints = s.checkpoints;
    if mode == LoadMode::RecoverNewest && disk > s.len {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| ReplicaError::io("open", path, e))?;
        fsx::set_len(&f, path, s.len)?;
        fsx::sync_data(&f, path)?;
        meta.disk = s.len;
    }
    if mode != LoadMode::ReadOnly {
        write_index(inner, &meta);
    }
    Ok(meta)
}

/// The index of the file of header `h` (`disk` bytes long), if it is
/// there and matches.
fn read_index(inner: &Inner, h: &Header, disk: u64) -> Option<JournalIndex> {
    let path = index_path(&inner.path(JOURNAL_DIR), h.number);
    let bytes = match crate::recover::read_small(&path, MAX_INDEX) {
        Ok(b) => b,
        Err(ReplicaError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return None;
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "journal index unreadable ({e}); scanning the file");
            return None;
        }
    };
    match decode_journal_index(&bytes) {
        Ok(ix)
            if ix.uuid == inner.uuid
                && ix.number == h.number
                && ix.after == h.after
                && ix.len <= disk
                && ix
                    .checkpoints
                    .first()
                    .is_none_or(|c| c.id > h.last_checkpoint && c.time_ns >= h.last_time) =>
        {
            Some(ix)
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "journal index does not match its file; scanning the file");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), "journal index is damaged ({e}); scanning the file");
            None
        }
    }
}

/// Writes the index of a file that is not appended to any more. Only a
/// cache, so a failure is logged, not returned.
pub(crate) fn write_index(inner: &Inner, meta: &FileMeta) {
    let path = index_path(&inner.path(JOURNAL_DIR), meta.number);
    if let Err(e) = fsx::replace_file(&path, &encode_journal_index(&meta.index(inner.uuid))) {
        tracing::warn!(path = %path.display(), "writing a journal index: {e}");
    }
}

/// Loads the journal for reading, without changing any file (listing
/// while no write log is open).
fn load_read_only(inner: &Inner) -> Result<JournalState, ReplicaError> {
    let dir = inner.path(JOURNAL_DIR);
    let files = list_files(&dir, false)?
        .into_iter()
        .map(|(n, path)| load_file(inner, &path, n, LoadMode::ReadOnly))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(JournalState { files })
}

/// Runs `f` on the journal's state, loading it first if needed.
pub(crate) fn with_journal<R>(
    inner: &Inner,
    f: impl FnOnce(&mut JournalState) -> R,
) -> Result<R, ReplicaError> {
    let mut g = inner.lock_journal();
    if g.is_none() {
        *g = Some(load_read_only(inner)?);
    }
    Ok(f(g.as_mut().expect("loaded")))
}

/// How much of the journal [`ReplicaStore::list_checkpoints`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// The summary only.
    Summary,
    /// The summary and every reachable checkpoint.
    Every,
}

/// What the journal can recover to.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointSummary {
    /// Reachable checkpoints.
    pub count: u64,
    /// Of them, application-consistent ones.
    pub application_consistent: u64,
    /// The oldest reachable checkpoint.
    pub oldest: Option<CheckpointInfo>,
    /// The newest one.
    pub newest: Option<CheckpointInfo>,
    /// Checkpoints still on disk whose history was folded into a PIT or
    /// the base (no longer reachable; the next prune drops them).
    pub unreachable: u64,
    /// Journal files.
    pub files: u64,
    /// Their bytes on disk.
    pub bytes: u64,
}

/// [`ReplicaStore::list_checkpoints`]'s answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointList {
    /// The summary.
    pub summary: CheckpointSummary,
    /// Every reachable checkpoint, oldest first ([`Listing::Every`]).
    pub checkpoints: Vec<CheckpointInfo>,
}

/// How much history the journal keeps ([`ReplicaStore::prune_journal`])
/// and which PITs retention keeps for it ([`ReplicaStore::journal_pins`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalPolicy {
    /// Checkpoints this much older than the newest one may go
    /// (`--journal-history`, 24 h by default).
    pub history: Duration,
    /// Above this many bytes on disk, the oldest files go whatever their
    /// age (`--journal-max-size`).
    pub max_bytes: u64,
    /// Keep a PIT along the journal at least this often (checkpoint time):
    /// the history's front moves in steps of about this much, so the
    /// journal holds at most `history` plus one step.
    pub anchor_every: Duration,
    /// ... or after this many bytes of journal: an image replays at most
    /// about this much journal after the PIT it starts from.
    pub anchor_bytes: u64,
}

/// Journal bytes after which a PIT is kept along it (see
/// [`JournalPolicy::new`]).
const ANCHOR_BYTES: u64 = 512 << 20;

impl JournalPolicy {
    /// `history` and `max_bytes` as given; a kept PIT every 1/24 of the
    /// history (an hour of 24 h) or every 512 MiB of journal.
    ///
    /// The byte bound is what makes recovery to any checkpoint fast: an
    /// image reads (and checks) the journal from its PIT to the
    /// checkpoint, and this machine class reads about 400 MiB of it a
    /// second (bench/journal.sh: 480 MiB behind a PIT in at most 1.35 s),
    /// so 512 MiB keeps `failover run --test --at` near a second wherever
    /// the point. A kept PIT costs only its segments, whose blocks the
    /// journal holds anyway (a 10 GiB journal keeps about 20 of them).
    pub fn new(history: Duration, max_bytes: u64) -> JournalPolicy {
        JournalPolicy {
            history,
            max_bytes,
            anchor_every: history / 24,
            anchor_bytes: ANCHOR_BYTES,
        }
    }
}

/// What [`ReplicaStore::prune_journal`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Journal files removed.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Reachable checkpoints that went with them.
    pub checkpoints: u64,
    /// Bytes on disk afterwards.
    pub remaining_bytes: u64,
}

impl ReplicaStore {
    /// What the journal can recover to: a summary, and with
    /// [`Listing::Every`] every reachable checkpoint, oldest first.
    pub fn list_checkpoints(&self, listing: Listing) -> Result<CheckpointList, ReplicaError> {
        let views = Views::snapshot(&self.inner);
        with_journal(&self.inner, |j| {
            let reachable = j.reachable(&views);
            let info = |(after, c): &(u64, &IndexedCheckpoint)| CheckpointInfo::new(c, *after);
            let all: u64 = j.files.iter().map(|f| f.checkpoints.len() as u64).sum();
            CheckpointList {
                summary: CheckpointSummary {
                    count: reachable.len() as u64,
                    application_consistent: reachable
                        .iter()
                        .filter(|(_, c)| c.consistency == Consistency::Application)
                        .count() as u64,
                    oldest: reachable.first().map(info),
                    newest: reachable.last().map(info),
                    unreachable: all - reachable.len() as u64,
                    files: j.files.len() as u64,
                    bytes: j.files.iter().map(|f| f.disk).sum(),
                },
                checkpoints: match listing {
                    Listing::Summary => Vec::new(),
                    Listing::Every => reachable.iter().map(info).collect(),
                },
            }
        })
    }

    /// The newest reachable checkpoint taken at or before `time_ns`
    /// (nanoseconds since the epoch, the primary's clock), if any.
    pub fn checkpoint_at_or_before(
        &self,
        time_ns: u64,
    ) -> Result<Option<CheckpointInfo>, ReplicaError> {
        let views = Views::snapshot(&self.inner);
        with_journal(&self.inner, |j| {
            let r = j.reachable(&views);
            // Times never go back along the journal.
            let n = r.partition_point(|(_, c)| c.time_ns <= time_ns);
            n.checked_sub(1)
                .map(|i| CheckpointInfo::new(r[i].1, r[i].0))
        })
    }

    /// The PITs that retention must keep (pass them to the retention
    /// decision as pinned; merging any other PIT is safe): for every
    /// listed checkpoint to stay reachable, for the front of the history
    /// to move on as it ages (see the module docs), and for every live
    /// [`crate::CheckpointImage`] to stay readable.
    pub fn journal_pins(&self, policy: &JournalPolicy) -> Result<Vec<PitId>, ReplicaError> {
        let views = Views::snapshot(&self.inner);
        let states = with_journal(&self.inner, |j| spaced_anchors(&j.files, &views, policy))?;
        let images = self.inner.lock_pins().keys().copied().collect::<Vec<_>>();
        let pins: BTreeSet<PitId> = states
            .into_iter()
            .chain(images)
            .filter_map(|a| views.pin(a))
            .collect();
        Ok(pins.into_iter().collect())
    }

    /// Drops history from the front of the journal (see the module docs):
    /// whole files, oldest first, while what they take along is older than
    /// `policy.history` before the newest checkpoint, or while the journal
    /// is over `policy.max_bytes`; never a checkpoint in `keep` (a test
    /// failover's or an export's), never the newest file. Crash-safe; after
    /// a crash, calling it again finishes it.
    pub fn prune_journal(
        &self,
        policy: &JournalPolicy,
        keep: &[CheckpointId],
    ) -> Result<PruneReport, ReplicaError> {
        let inner = &*self.inner;
        inner.check_poison()?;
        let views = Views::snapshot(inner);
        let keep: BTreeSet<u64> = keep.iter().map(|c| c.get()).collect();
        let dir = inner.path(JOURNAL_DIR);
        let mut g = inner.lock_journal();
        if g.is_none() {
            *g = Some(load_read_only(inner)?);
        }
        let j = g.as_mut().expect("loaded");
        for f in &mut j.files {
            // The open file grows; the others may have lost their tail.
            f.disk = fs::metadata(&f.path).map_or(f.disk, |m| m.len());
        }
        let newest = j
            .files
            .iter()
            .filter_map(|f| f.checkpoints.last())
            .map(|c| c.time_ns)
            .max()
            .unwrap_or(0);
        let history = u64::try_from(policy.history.as_nanos()).unwrap_or(u64::MAX);
        let cutoff = newest.saturating_sub(history);
        let mut report = PruneReport::default();
        while j.files.len() > 1 {
            let over = j.files.iter().map(|f| f.disk).sum::<u64>() > policy.max_bytes;
            let before = reachable_times(j, &views, 0);
            let after = reachable_times(j, &views, 1);
            let lost: Vec<(u64, u64)> = before
                .iter()
                .filter(|(id, _)| !after.contains_key(id))
                .map(|(&id, &t)| (id, t))
                .collect();
            if lost.iter().any(|(id, _)| keep.contains(id)) {
                break;
            }
            if !over && lost.iter().any(|&(_, t)| t >= cutoff) {
                break;
            }
            let f = j.files.remove(0);
            tracing::info!(
                file = f.number,
                checkpoints = lost.len(),
                over_size = over,
                "journal: dropping history"
            );
            report.files += 1;
            report.bytes += f.disk;
            report.checkpoints += lost.len() as u64;
            let removed = fsx::remove_file(&f.path)
                .and_then(|_| fsx::remove_file(&index_path(&dir, f.number)));
            if let Err(e) = removed {
                // Not gone, or gone without its index: the next load sees
                // which.
                *g = None;
                return Err(e.into());
            }
        }
        if report.files > 0 {
            fsx::sync_dir(&dir)?;
        }
        report.remaining_bytes = j.files.iter().map(|f| f.disk).sum();
        let oldest = j.files.first().map(|f| f.number);
        drop(g);
        if let Some(oldest) = oldest {
            // Local files first, their objects after: a crash between
            // leaves orphan objects, which this sweep (or the next upload
            // pass) deletes, never an object-less hole in local history.
            crate::journal_objects::sweep_after_prune(inner, oldest);
        }
        Ok(report)
    }
}

/// Removes every journal file but the newest (the open one), for a log
/// that keeps no history ([`crate::History::Discard`]). A failure is
/// logged: the files stay until the next seal tries again.
pub(crate) fn drop_all_but_newest(inner: &Inner) {
    let dir = inner.path(JOURNAL_DIR);
    let mut g = inner.lock_journal();
    let Some(j) = g.as_mut() else {
        return;
    };
    let mut removed = false;
    while j.files.len() > 1 {
        let f = j.files.remove(0);
        let r =
            fsx::remove_file(&f.path).and_then(|_| fsx::remove_file(&index_path(&dir, f.number)));
        removed = true;
        if let Err(e) = r {
            tracing::warn!("removing a sealed journal file: {e}");
            // Not gone, or gone without its index: the next load sees which.
            *g = None;
            return;
        }
    }
    if removed && let Err(e) = fsx::sync_dir(&dir) {
        tracing::warn!("removing sealed journal files: {e}");
    }
}

/// Id → time of the checkpoints reachable from the files after the first
/// `skip` ones.
fn reachable_times(j: &JournalState, views: &Views, skip: usize) -> BTreeMap<u64, u64> {
    reachable(&j.files[skip.min(j.files.len())..], views)
        .into_iter()
        .map(|(_, c)| (c.id, c.time_ns))
        .collect()
}
