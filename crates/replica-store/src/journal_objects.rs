//! The journal of a store in an object store: its history copied into the
//! bucket, so that a replica site that is lost (or whose disk is
//! replaced) loses at most a few seconds of the recovery-to-any-checkpoint
//! history, not all of it.
//!
//! The write log keeps appending to the local working directory exactly
//! as for a directory store (`log.rs`: group commit, `O_DIRECT`, torn
//! tails): the bucket is never on a write's acknowledgement path. Copies
//! are made by an **upload pass** ([`ReplicaStore::upload_journal`]),
//! which a background thread of the write log runs while it keeps history
//! ([`crate::History::Keep`]): right after every seal, and every
//! [`UPLOAD_INTERVAL`] in between.
//!
//! # Objects
//!
//! ```text
//! journal/NUMBER.jnl          a sealed file, whole: its header and entries (the zero tail cut)
//! journal/NUMBER.jnl.OFFSET   a "tail part" of the open file: its bytes OFFSET..END,
//!                             END the end of its newest checkpoint when uploaded
//! ```
//!
//! `NUMBER` and `OFFSET` are 20-digit zero-padded decimals, as the local
//! names. The objects go through the store's [`offsite_objects::ObjectStore`],
//! so an encrypted group's journal is sealed like its PITs.
//!
//! # An upload pass
//!
//! 1. Every sealed file (every file but the newest) whose whole object is
//!    missing or of another size is put whole (one `put_from` of its
//!    entries: visible only once complete), then its tail parts are
//!    deleted (the whole object replaces them).
//! 2. The newest file (the open one): if it holds checkpoints past what
//!    its tail parts cover (contiguously from offset 0), the bytes from
//!    there to the end of its newest checkpoint are put as one more part.
//!    Parts end at checkpoints, so they never hold a torn entry; writes
//!    after the newest checkpoint are not uploaded (no checkpoint could
//!    recover to them).
//! 3. Objects of files older than the oldest local file are orphans of a
//!    prune (or of a pass that raced with one): they are deleted.
//!
//! Every step is idempotent and judged from the local files and one
//! listing (kept in memory between passes, re-read after any error), so a
//! crash anywhere leaves at worst a missing object (the next pass puts
//! it), a whole object beside its parts (the next pass deletes the parts)
//! or an orphan (the next pass or prune deletes it). A pass after any
//! reopen of the log redoes what a crash interrupted.
//!
//! # How much history a lost site loses
//!
//! A part is put at most every [`UPLOAD_INTERVAL`] (5 s) while checkpoints
//! arrive, so the bucket's journal ends at most about the checkpoint
//! interval plus 5 s (plus the PUT's own time) before the replica's:
//! a lost replica site loses that much of its recovery points, never the
//! PITs (committed in the bucket) and never more. 5 s is a trade-off: a
//! group streaming all day costs at most 17 280 small PUTs a day (about
//! 0.09 USD at common S3 prices) and as many objects live at once as
//! parts since the last seal; a shorter interval would cost proportionally
//! more requests for seconds that rarely matter next to the checkpoint
//! interval itself (1 minute by default).
//!
//! # Restoring
//!
//! [`ReplicaStore::open_in`] of a working directory without journal files
//! (a new site after `site attach-store`, a replaced disk) downloads them
//! before anything reads the journal: each file from its whole object, or
//! from its tail parts concatenated while they are contiguous from offset
//! 0. Each file's header is checked as the local reader does (magic,
//! version, crc, store identity, number; a file that fails is skipped with
//! a warning) and its entries are scanned: whatever follows the last valid
//! entry is cut, as a torn local tail is. The files are written into
//! `journal.download/` and that directory is renamed to `journal/` only
//! once complete, so a crash or an unreachable bucket leaves no partial
//! journal (the next open starts the download again).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::backing::{Backing, Objects};
use crate::chain::Inner;
use crate::history::{ScanFrom, list_files, scan, start_order, with_journal};
use crate::journal::{JOURNAL_DIR, JOURNAL_HEADER_LEN, decode_header, file_path};
use crate::{RECORD_HEADER_LEN, RECORD_TRAILER_LEN, ReplicaError, ReplicaStore, VolumeSpec, fsx};

/// Key prefix of the journal's objects.
pub(crate) const JOURNAL_PREFIX: &str = "journal/";

/// How often the background thread uploads the open file's new
/// checkpoints (see the module docs for the bound this gives).
pub const UPLOAD_INTERVAL: Duration = Duration::from_secs(5);

/// The local directory a download is assembled in before it becomes
/// `journal/`.
const DOWNLOAD_DIR: &str = "journal.download";

/// Bytes read from an object at once when downloading.
const DOWNLOAD_CHUNK: u64 = 8 << 20;

/// Key of sealed journal file `number`.
fn whole_key(number: u64) -> String {
    format!("{JOURNAL_PREFIX}{number:020}.jnl")
}

/// Key of the tail part of journal file `number` starting at `offset`.
fn part_key(number: u64, offset: u64) -> String {
    format!("{JOURNAL_PREFIX}{number:020}.jnl.{offset:020}")
}

/// What a journal key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JournalKey {
    Whole(u64),
    Part(u64, u64),
}

fn parse_key(key: &str) -> Option<JournalKey> {
    let rest = key.strip_prefix(JOURNAL_PREFIX)?;
    let (file, offset) = match rest.split_once(".jnl.") {
        Some((file, offset)) => (format!("{file}.jnl"), Some(offset)),
        None => (rest.to_string(), None),
    };
    let number = crate::journal::parse_file_name(&file)?;
    match offset {
        None => Some(JournalKey::Whole(number)),
        Some(o) if o.len() == 20 && o.bytes().all(|c| c.is_ascii_digit()) => {
            Some(JournalKey::Part(number, o.parse().ok()?))
        }
        Some(_) => None,
    }
}

/// One journal file's objects in the bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Remote {
    /// The whole object's size.
    whole: Option<u64>,
    /// Tail parts: offset → size.
    parts: BTreeMap<u64, u64>,
}

impl Remote {
    /// End of the bytes the parts hold contiguously from offset 0.
    fn through(&self) -> u64 {
        let mut end = 0;
        for (&off, &size) in &self.parts {
            if off != end {
                break;
            }
            end += size;
        }
        end
    }
}

/// The journal's objects by file number.
type Listing = BTreeMap<u64, Remote>;

fn list_remote(objects: &Objects) -> Result<Listing, ReplicaError> {
    let mut out = Listing::new();
    for o in objects.list(JOURNAL_PREFIX)? {
        match parse_key(&o.key) {
            Some(JournalKey::Whole(n)) => out.entry(n).or_default().whole = Some(o.size),
            Some(JournalKey::Part(n, off)) => {
                out.entry(n).or_default().parts.insert(off, o.size);
            }
            None => tracing::warn!(key = %o.key, "ignoring unexpected object in the journal"),
        }
    }
    Ok(out)
}

/// What the store knows of its journal's objects between passes (`None`:
/// list them first). Held for a whole pass, so passes do not overlap.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    remote: Option<Listing>,
}

/// What an upload pass did ([`ReplicaStore::upload_journal`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalUpload {
    /// Sealed files put whole.
    pub files: u64,
    /// Tail parts of the open file put.
    pub parts: u64,
    /// Bytes put.
    pub bytes: u64,
    /// Objects deleted (parts replaced by a whole file, orphans of pruned
    /// files).
    pub deleted: u64,
}

/// A local journal file as a pass sees it.
#[derive(Debug, Clone)]
struct LocalFile {
    number: u64,
    path: std::path::PathBuf,
    /// End of its valid entries.
    len: u64,
    /// End of its newest checkpoint's record (0: none).
    checkpointed: u64,
    usable: bool,
}

fn lock_uploads(inner: &Inner) -> MutexGuard<'_, Uploads> {
    inner.uploads.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One upload pass (module docs). No-op for a directory store.
pub(crate) fn upload_pass(inner: &Inner) -> Result<JournalUpload, ReplicaError> {
    let Backing::Objects(objects) = &inner.backing else {
        return Ok(JournalUpload::default());
    };
    let mut up = lock_uploads(inner);
    let r = pass(inner, objects, &mut up);
    if r.is_err() {
        // What the bucket holds is not known any more: list it again.
        up.remote = None;
    }
    r
}

fn pass(inner: &Inner, objects: &Objects, up: &mut Uploads) -> Result<JournalUpload, ReplicaError> {
    let local: Vec<LocalFile> = with_journal(inner, |j| {
        j.files
            .iter()
            .map(|f| LocalFile {
                number: f.number,
                path: f.path.clone(),
                len: f.len,
                checkpointed: f.checkpoints.last().map_or(0, |c| {
                    c.at + (RECORD_HEADER_LEN
                        + c.name.as_ref().map_or(0, String::len)
                        + RECORD_TRAILER_LEN) as u64
                }),
                usable: f.damaged.is_none() && f.len >= JOURNAL_HEADER_LEN as u64,
            })
            .collect()
    })?;
    if up.remote.is_none() {
        up.remote = Some(list_remote(objects)?);
    }
    let remote = up.remote.as_mut().expect("listed");
    let mut report = JournalUpload::default();
    let Some((open, sealed)) = local.split_last() else {
        return Ok(report);
    };
    for f in sealed.iter().filter(|f| f.usable) {
        let r = remote.entry(f.number).or_default();
        if r.whole != Some(f.len) {
            if !put_file_range(objects, &whole_key(f.number), &f.path, 0, f.len)? {
                continue; // pruned meanwhile
            }
            r.whole = Some(f.len);
            report.files += 1;
            report.bytes += f.len;
        }
        for off in std::mem::take(&mut r.parts).into_keys() {
            objects.delete(&part_key(f.number, off))?;
            report.deleted += 1;
        }
    }
    if open.usable {
        let r = remote.entry(open.number).or_default();
        let through = r.through();
        // Up to the newest checkpoint: what comes after it recovers to no
        // checkpoint yet (and may still be torn).
        let end = open.checkpointed;
        if r.whole.is_none() && end > through {
            let key = part_key(open.number, through);
            if put_file_range(objects, &key, &open.path, through, end - through)? {
                r.parts.insert(through, end - through);
                report.parts += 1;
                report.bytes += end - through;
            }
        }
    }
    report.deleted += sweep_before(objects, remote, local[0].number)?;
    Ok(report)
}

/// Puts `len` bytes of the local file at `path` from `offset` as `key`;
/// `false` when the file is gone (pruned while the pass ran).
fn put_file_range(
    objects: &Objects,
    key: &str,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<bool, ReplicaError> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(ReplicaError::io("open", path, e)),
    };
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset))
        .map_err(|e| ReplicaError::io("seek", path, e))?;
    objects.put_from(key, &mut f.take(len), len)?;
    tracing::debug!(key, len, "journal: uploaded");
    Ok(true)
}

/// Deletes the objects of every file numbered below `oldest` (the oldest
/// local file): orphans of a prune. Parts first, the whole object last.
fn sweep_before(objects: &Objects, remote: &mut Listing, oldest: u64) -> Result<u64, ReplicaError> {
    let mut deleted = 0;
    while let Some(entry) = remote.first_entry() {
        if *entry.key() >= oldest {
            break;
        }
        let number = *entry.key();
        let r = entry.get().clone();
        for &off in r.parts.keys() {
            objects.delete(&part_key(number, off))?;
            deleted += 1;
        }
        if r.whole.is_some() {
            objects.delete(&whole_key(number))?;
            deleted += 1;
        }
        tracing::info!(
            file = number,
            "journal: deleted the objects of a pruned file"
        );
        remote.remove(&number);
    }
    Ok(deleted)
}

/// After a prune left `oldest` as the oldest local file: deletes the
/// objects of the pruned files. Skipped while a pass runs (it sweeps
/// too); a failure is logged (the next pass or prune sweeps again).
pub(crate) fn sweep_after_prune(inner: &Inner, oldest: u64) {
    let Backing::Objects(objects) = &inner.backing else {
        return;
    };
    let Ok(mut up) = inner.uploads.try_lock() else {
        return;
    };
    let r = (|| {
        if up.remote.is_none() {
            up.remote = Some(list_remote(objects)?);
        }
        sweep_before(objects, up.remote.as_mut().expect("listed"), oldest)
    })();
    if let Err(e) = r {
        up.remote = None;
        tracing::warn!("deleting the objects of pruned journal files: {e}; the next pass retries");
    }
}

/// Downloads the journal into `work/journal/` when the working directory
/// has no journal file and the bucket has some (module docs,
/// "Restoring"). Returns the number of files restored.
pub(crate) fn restore(
    objects: &Objects,
    work: &Path,
    uuid: &[u8; 16],
    specs: &[VolumeSpec],
) -> Result<u64, ReplicaError> {
    let tmp = work.join(DOWNLOAD_DIR);
    if tmp.exists() {
        fsx::remove_tree(&tmp)?;
        fsx::sync_dir(work)?;
    }
    let dir = work.join(JOURNAL_DIR);
    if !list_files(&dir, false)?.is_empty() {
        return Ok(0);
    }
    let remote = list_remote(objects)?;
    if remote.is_empty() {
        return Ok(0);
    }
    fsx::create_dir(&tmp)?;
    let mut restored = 0;
    for (&number, r) in &remote {
        let pieces: Vec<(String, u64)> = match r.whole {
            Some(size) => vec![(whole_key(number), size)],
            None => {
                let mut end = 0;
                let mut v = Vec::new();
                for (&off, &size) in &r.parts {
                    if off != end {
                        tracing::warn!(
                            file = number,
                            offset = off,
                            "journal: a tail part does not follow the previous one; restoring up to it"
                        );
                        break;
                    }
                    v.push((part_key(number, off), size));
                    end += size;
                }
                v
            }
        };
        if restore_file(objects, &tmp, number, &pieces, uuid, specs)? {
            restored += 1;
        }
    }
    fsx::sync_dir(&tmp)?;
    if dir.exists() {
        // An empty journal directory (the files were lost, not it).
        fsx::remove_tree(&dir)?;
    }
    fsx::rename(&tmp, &dir)?;
    fsx::sync_dir(work)?;
    tracing::info!(
        files = restored,
        work = %work.display(),
        "journal restored from the object store"
    );
    Ok(restored)
}

/// Writes journal file `number` from `pieces` (keys and sizes, in order)
/// into `dir`, checked as the local reader checks it; `false` (and no
/// file) when its header is not one of this store's.
fn restore_file(
    objects: &Objects,
    dir: &Path,
    number: u64,
    pieces: &[(String, u64)],
    uuid: &[u8; 16],
    specs: &[VolumeSpec],
) -> Result<bool, ReplicaError> {
    let path = file_path(dir, number);
    let total: u64 = pieces.iter().map(|p| p.1).sum();
    let skip = |why: String| {
        tracing::warn!(
            file = number,
            "journal: not restoring a file from the object store: {why}"
        );
        Ok(false)
    };
    if total < JOURNAL_HEADER_LEN as u64 {
        return skip(format!("it has {total} bytes, less than a header"));
    }
    let file = fsx::create_new(&path)?;
    let mut at = 0;
    for (key, size) in pieces {
        let mut off = 0;
        while off < *size {
            let n = (*size - off).min(DOWNLOAD_CHUNK);
            let bytes = objects
                .store
                .get_range(key, off, n)
                .map_err(|e| crate::backing::obj_err("get", key, e))?;
            fsx::write_at(&file, &path, &bytes, at)?;
            off += n;
            at += n;
        }
    }
    let mut hb = [0u8; JOURNAL_HEADER_LEN];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut hb, 0)
        .map_err(|e| ReplicaError::io("read", &path, e))?;
    let h = match decode_header(&hb, uuid) {
        Ok(h) if h.number == number => h,
        Ok(h) => {
            fsx::remove_file(&path)?;
            return skip(format!("its header says file {}", h.number));
        }
        Err(e) => {
            fsx::remove_file(&path)?;
            return skip(e.to_string());
        }
    };
    let s = scan(
        specs,
        &file,
        &path,
        ScanFrom::journal(start_order(&h)),
        &mut |_, _| Ok(()),
    )?;
    if s.len < total {
        tracing::warn!(
            file = number,
            kept = s.len,
            dropped = total - s.len,
            "journal: cutting what follows the valid entries of a restored file"
        );
        fsx::set_len(&file, &path, s.len)?;
    }
    fsx::sync_data(&file, &path)?;
    Ok(true)
}

/// The background thread of a write log that keeps history in an object
/// store: a pass when kicked (a seal) and every [`UPLOAD_INTERVAL`]; one
/// last pass when stopped. Dropping it stops and joins the thread.
#[derive(Debug)]
pub(crate) struct Uploader {
    shared: Arc<Signal>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Signal {
    state: Mutex<Flags>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Flags {
    kick: bool,
    stop: bool,
    /// Stop without the last pass (tests that drive passes themselves).
    quiet: bool,
}

impl Uploader {
    /// The uploader of `inner`'s journal; `None` for a directory store.
    pub(crate) fn start(inner: &Arc<Inner>) -> Option<Uploader> {
        if !matches!(inner.backing, Backing::Objects(_))
            || inner
                .journal_local
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        let shared = Arc::new(Signal::default());
        let (sig, inner) = (shared.clone(), inner.clone());
        let spawned = std::thread::Builder::new()
            .name("journal-upload".into())
            .spawn(move || run(&inner, &sig));
        match spawned {
            Ok(thread) => Some(Uploader {
                shared,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(
                    "starting the journal's upload thread: {e}; the journal reaches the object store at the next open"
                );
                None
            }
        }
    }

    /// Stops the thread without its last pass.
    pub(crate) fn abandon(self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .quiet = true;
        drop(self);
    }

    /// Asks for a pass now (a file was sealed).
    pub(crate) fn kick(&self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .kick = true;
        self.shared.changed.notify_one();
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stop = true;
        self.shared.changed.notify_one();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::warn!("the journal's upload thread panicked");
        }
    }
}

fn run(inner: &Inner, sig: &Signal) {
    let mut failing = false;
    loop {
        let stop = {
            let g = sig.state.lock().unwrap_or_else(PoisonError::into_inner);
            let (mut g, _) = sig
                .changed
                .wait_timeout_while(g, UPLOAD_INTERVAL, |f| !f.kick && !f.stop)
                .unwrap_or_else(PoisonError::into_inner);
            g.kick = false;
            if g.stop && g.quiet {
                return;
            }
            g.stop
        };
        match upload_pass(inner) {
            Ok(r) => {
                if failing {
                    tracing::info!("the journal reaches the object store again");
                }
                failing = false;
                if r != JournalUpload::default() {
                    tracing::debug!(?r, "journal upload pass");
                }
            }
            // Once per outage, not every few seconds.
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(
                    "uploading the journal to the object store: {e}; retrying every {}s (the history stays local meanwhile)",
                    UPLOAD_INTERVAL.as_secs()
                );
            }
            Err(_) => {}
        }
        if stop {
            return;
        }
    }
}

impl ReplicaStore {
    /// Keeps the journal's history out of the object store: write logs
    /// opened after this start no upload thread. For an object store on
    /// the replica site's own disk (an encrypted directory group's
    /// `objects/`), where a copy would double the journal's space and
    /// writes and survive nothing the working directory does not. Objects
    /// of pruned files are still deleted, and an open without a local
    /// journal still restores one.
    pub fn keep_journal_local(&self) {
        self.inner
            .journal_local
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Copies the journal's history into the object store now (see
    /// "Stores in an object store" in the crate docs and the module
    /// `journal_objects`): sealed files whole, the open file's checkpoints
    /// as a tail part, and deletes the objects of pruned files. A write
    /// log keeping history does this on its own thread after every seal
    /// and every [`UPLOAD_INTERVAL`]; this is for tests and for callers
    /// that want the bucket current at a given moment. Nothing to do for
    /// a directory store.
    pub fn upload_journal(&self) -> Result<JournalUpload, ReplicaError> {
        upload_pass(&self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keys_round_trip() {
        assert_eq!(parse_key(&whole_key(7)), Some(JournalKey::Whole(7)));
        assert_eq!(
            parse_key(&part_key(7, 4096)),
            Some(JournalKey::Part(7, 4096))
        );
        for bad in [
            "journal/7.jnl",
            "journal/00000000000000000007.idx",
            "journal/00000000000000000007.jnl.12",
            "pits/00000000000000000007.jnl",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        offsite_objects::check_key(&part_key(u64::MAX, u64::MAX)).unwrap();
    }

    #[test]
    fn parts_count_while_contiguous_from_zero() {
        let mut r = Remote::default();
        assert_eq!(r.through(), 0);
        r.parts.insert(0, 200);
        r.parts.insert(200, 50);
        r.parts.insert(300, 10);
        assert_eq!(r.through(), 250);
        r.parts.remove(&0);
        assert_eq!(r.through(), 0);
    }
}
