//! Every file-system mutation of the store goes through here, so that a test
//! can "crash" the store at any step (see [`crate::failpoint`]).
//!
//! *Counted* steps are the ones whose order matters for crash safety:
//! creating a file or directory, fsync of a file or directory, rename,
//! remove, and writes of small metadata files. Bulk data writes are not
//! counted (crashing between two data writes of a staging file is no
//! different from crashing before its fsync), but they do fail once the
//! failpoint has fired: after the injected failure the "disk" is frozen and
//! nothing the process does reaches it any more, like after a real crash.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::ReplicaError;

#[derive(Clone, Copy, Default)]
struct Fp {
    /// Counted steps since the last `reset`.
    steps: u64,
    /// Fail the step with this 1-based number (0 = disarmed).
    fail_at: u64,
    /// The failure was injected: every later step fails too.
    fired: bool,
}

thread_local! {
    static FP: Cell<Fp> = const { Cell::new(Fp { steps: 0, fail_at: 0, fired: false }) };
}

/// Resets the step counter and disarms (this thread only).
pub(crate) fn fp_reset() {
    FP.with(|c| c.set(Fp::default()));
}

/// Arms a failure at the `n`-th counted step from now (1-based).
pub(crate) fn fp_arm(n: u64) {
    FP.with(|c| {
        c.set(Fp {
            steps: 0,
            fail_at: n,
            fired: false,
        })
    });
}

/// Counted steps since the last reset or arm.
pub(crate) fn fp_steps() -> u64 {
    FP.with(|c| c.get().steps)
}

/// Whether the armed failure was injected.
pub(crate) fn fp_fired() -> bool {
    FP.with(|c| c.get().fired)
}

fn injected() -> io::Error {
    io::Error::other("injected failure (test failpoint)")
}

/// The failpoint check before a mutation; `counted` steps advance the count.
fn step(counted: bool) -> io::Result<()> {
    FP.with(|c| {
        let mut s = c.get();
        if s.fired {
            return Err(injected());
        }
        if counted {
            s.steps += 1;
            if s.fail_at != 0 && s.steps >= s.fail_at {
                s.fired = true;
                c.set(s);
                return Err(injected());
            }
            c.set(s);
        }
        Ok(())
    })
}

/// `mkdir`, private to the site's user (replica stores hold VM disks).
pub(crate) fn create_dir(path: &Path) -> Result<(), ReplicaError> {
    use std::os::unix::fs::DirBuilderExt;
    step(true)
        .and_then(|()| fs::DirBuilder::new().mode(0o700).create(path))
        .map_err(|e| ReplicaError::io("create directory", path, e))
}

/// Creates a new file (fails if it exists), open for reading and writing,
/// readable by the site's user only (it holds VM disk blocks).
pub(crate) fn create_new(path: &Path) -> Result<File, ReplicaError> {
    use std::os::unix::fs::OpenOptionsExt;
    step(true)
        .and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        })
        .map_err(|e| ReplicaError::io("create", path, e))
}

/// `pwrite` of all of `buf` (not a counted step; fails once frozen).
pub(crate) fn write_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    offset: u64,
) -> Result<(), ReplicaError> {
    step(false)
        .and_then(|()| file.write_all_at(buf, offset))
        .map_err(|e| ReplicaError::io("write", path, e))
}

/// `pwrite` of all of `buf` through a descriptor opened with `O_DSYNC`:
/// durable when it returns, so a counted step like an fsync.
pub(crate) fn write_durable_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    offset: u64,
) -> Result<(), ReplicaError> {
    step(true)
        .and_then(|()| file.write_all_at(buf, offset))
        .map_err(|e| ReplicaError::io("write (O_DSYNC)", path, e))
}

/// Sets the length of a file (not a counted step; fails once frozen).
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> Result<(), ReplicaError> {
    step(false)
        .and_then(|()| file.set_len(len))
        .map_err(|e| ReplicaError::io("set the length of", path, e))
}

/// Deallocates `len` bytes at `offset` so they read back as zeroes; writes
/// zeroes where the file system cannot punch holes. Not a counted step.
pub(crate) fn punch_hole(
    file: &File,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<(), ReplicaError> {
    step(false).map_err(|e| ReplicaError::io("punch a hole in", path, e))?;
    if len == 0 {
        return Ok(());
    }
    let r = rustix::fs::fallocate(
        file,
        rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
        offset,
        len,
    );
    match r {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            const CHUNK: u64 = 1 << 20;
            let zeroes = vec![0u8; CHUNK.min(len) as usize];
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(CHUNK) as usize;
                write_at(file, path, &zeroes[..n], at)?;
                at += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(ReplicaError::io("punch a hole in", path, e.into())),
    }
}

/// `fdatasync` (data and the size needed to read it back).
pub(crate) fn sync_data(file: &File, path: &Path) -> Result<(), ReplicaError> {
    step(true)
        .and_then(|()| file.sync_data())
        .map_err(|e| ReplicaError::io("fsync", path, e))
}

/// Fsyncs a directory so that creations, renames and removals in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), ReplicaError> {
    step(true)
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(|e| ReplicaError::io("fsync directory", dir, e))
}

/// Atomic rename (files or directories, same file system).
pub(crate) fn rename(from: &Path, to: &Path) -> Result<(), ReplicaError> {
    step(true)
        .and_then(|()| fs::rename(from, to))
        .map_err(|e| ReplicaError::io("rename into place", to, e))
}

/// Removes a file; a missing file is not an error.
pub(crate) fn remove_file(path: &Path) -> Result<(), ReplicaError> {
    step(true)
        .and_then(|()| match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        })
        .map_err(|e| ReplicaError::io("remove", path, e))
}

/// Removes a directory of plain files: every file, then the directory. A
/// missing directory is not an error. Not durable until the parent is synced.
pub(crate) fn remove_tree(dir: &Path) -> Result<(), ReplicaError> {
    let entries = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ReplicaError::io("list directory", dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ReplicaError::io("list directory", dir, e))?;
        names.push(entry.path());
    }
    names.sort();
    for path in names {
        remove_file(&path)?;
    }
    step(true)
        .and_then(|()| match fs::remove_dir(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        })
        .map_err(|e| ReplicaError::io("remove directory", dir, e))
}

/// The temporary name used while replacing `path`.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".partial");
    PathBuf::from(s)
}

/// Replaces `path` (inside `dir`) with `bytes`, durably.
///
/// Ordering:
/// 1. remove a stale `path.partial`;
/// 2. create `path.partial` with `create_new`, write all bytes;
/// 3. fsync it;
/// 4. rename it over `path` (atomic);
/// 5. fsync `dir`, making the rename durable.
///
/// After a crash at any point `path` is the old or the new version.
pub(crate) fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ReplicaError> {
    let tmp = partial_path(path);
    remove_file(&tmp)?; // 1
    let f = create_new(&tmp)?; // 2
    write_at(&f, &tmp, bytes, 0)?;
    sync_data(&f, &tmp)?; // 3
    drop(f);
    rename(&tmp, path)?; // 4
    sync_dir(dir) // 5
}

/// Writes a new file `path` (which must not exist) with `bytes` and fsyncs
/// it; the caller syncs the directory.
pub(crate) fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), ReplicaError> {
    let f = create_new(path)?;
    write_at(&f, path, bytes, 0)?;
    sync_data(&f, path)
}

/// Reads a small whole file, refusing anything longer than `cap` bytes.
pub(crate) fn read_small(path: &Path, cap: u64) -> Result<Vec<u8>, ReplicaError> {
    let f = File::open(path).map_err(|e| ReplicaError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| ReplicaError::io("stat", path, e))?
        .len();
    if len > cap {
        return Err(ReplicaError::corrupt(
            path,
            format!("file is {len} bytes, more than the {cap} bytes such a file can have"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0)
        .map_err(|e| ReplicaError::io("read", path, e))?;
    Ok(buf)
}
