//! Crash-safe file steps shared by the change tracker (`offsite-cbt`), the
//! volume store (`offsite-volume-file`) and the replica store (`offsite-replica-store`),
//! and the little-endian field helpers of their on-disk formats ([`le`]).
//!
//! Every step that changes the file system goes through a function here, so
//! that a test can "crash" any of those crates at any step: the thread-local
//! counted failpoint ([`failpoint`], hidden) fails the N-th create / fsync /
//! rename / remove of this thread and freezes every later step. Errors name
//! the step and the path ([`DurableError`]).
//!
//! # Durable replacement of a small file
//!
//! [`replace_file`] writes `X` so that after a crash at any point it is the
//! old or the new version, never empty or torn:
//! 1. remove a stale `X.partial` (left by an interrupted replacement);
//! 2. create `X.partial` with `create_new` (mode 0600), write all bytes;
//! 3. fsync it (data and size);
//! 4. rename it over `X` (atomic);
//! 5. fsync the directory, making the rename durable.
//!
//! Files and directories are created private to the site's user
//! ([`PRIVATE_FILE_MODE`], [`PRIVATE_DIR_MODE`]): they hold VM disks and
//! other people's data.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[doc(hidden)]
pub mod failpoint;
pub mod le;

use failpoint::step;

/// Mode of every file offsite creates: VM disks, replica stores, the
/// catalog and reports hold other people's data, so only the site's own
/// user may read them. (The daemon also runs with umask 077, which covers
/// files created without an explicit mode; this constant keeps the files
/// created through these helpers private even for other callers.)
pub const PRIVATE_FILE_MODE: u32 = 0o600;
/// Mode of every directory offsite creates (see [`PRIVATE_FILE_MODE`]).
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// The file-system step that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// `mkdir` (one level or recursive).
    CreateDir,
    /// Creating a new file.
    Create,
    /// `pwrite` into a file.
    Write,
    /// `pwrite` through an `O_DSYNC` descriptor.
    WriteDsync,
    /// Setting the length of a file.
    SetLen,
    /// Deallocating a range of a file.
    PunchHole,
    /// `fsync`/`fdatasync` of a file.
    Fsync,
    /// `fsync` of a directory.
    FsyncDir,
    /// Renaming into place.
    Rename,
    /// Removing a file.
    Remove,
    /// Listing a directory.
    ListDir,
    /// Removing a directory.
    RemoveDir,
}

impl Step {
    /// The step in words, as error messages say it ("fsync directory").
    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreateDir => "create directory",
            Step::Create => "create",
            Step::Write => "write",
            Step::WriteDsync => "write (O_DSYNC)",
            Step::SetLen => "set the length of",
            Step::PunchHole => "punch a hole in",
            Step::Fsync => "fsync",
            Step::FsyncDir => "fsync directory",
            Step::Rename => "rename into place",
            Step::Remove => "remove",
            Step::ListDir => "list directory",
            Step::RemoveDir => "remove directory",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file-system step failed.
#[derive(Debug, thiserror::Error)]
#[error("failed to {step} {}", path.display())]
pub struct DurableError {
    /// What was being done.
    pub step: Step,
    /// The file or directory concerned (for a rename: the destination).
    pub path: PathBuf,
    /// The operating-system (or injected) error.
    #[source]
    pub source: io::Error,
}

impl DurableError {
    fn new(step: Step, path: &Path) -> impl FnOnce(io::Error) -> DurableError + '_ {
        move |source| DurableError {
            step,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The underlying `io::Error` (for callers whose API returns `io::Result`
    /// and that name the path themselves).
    pub fn into_io(self) -> io::Error {
        self.source
    }
}

impl From<DurableError> for io::Error {
    fn from(e: DurableError) -> io::Error {
        e.source
    }
}

/// `mkdir` of one directory, private to the site's user. Counted.
pub fn create_dir(path: &Path) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| fs::DirBuilder::new().mode(PRIVATE_DIR_MODE).create(path))
        .map_err(DurableError::new(Step::CreateDir, path))
}

/// `create_dir_all` with [`PRIVATE_DIR_MODE`] for every directory it
/// creates (existing ones are left as they are). One counted step.
pub fn create_private_dir_all(path: &Path) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(PRIVATE_DIR_MODE)
                .create(path)
        })
        .map_err(DurableError::new(Step::CreateDir, path))
}

/// Creates a new file (fails if it exists), open for reading and writing,
/// readable by the site's user only. Counted.
pub fn create_new(path: &Path) -> Result<File, DurableError> {
    create_new_mode(path, PRIVATE_FILE_MODE)
}

/// [`create_new`] with an explicit mode. Counted.
pub fn create_new_mode(path: &Path, mode: u32) -> Result<File, DurableError> {
    step(true)
        .and_then(|()| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(path)
        })
        .map_err(DurableError::new(Step::Create, path))
}

/// `pwrite` of all of `buf` (not a counted step; fails once frozen).
pub fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<(), DurableError> {
    step(false)
        .and_then(|()| file.write_all_at(buf, offset))
        .map_err(DurableError::new(Step::Write, path))
}

/// `pwrite` of a record of a small metadata file that is updated in place
/// (an activity-log slot), made durable by the caller's next fsync.
/// Counted, unlike bulk data writes.
pub fn write_record_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    offset: u64,
) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| file.write_all_at(buf, offset))
        .map_err(DurableError::new(Step::Write, path))
}

/// `pwrite` of all of `buf` through a descriptor opened with `O_DSYNC`:
/// durable when it returns, so a counted step like an fsync.
pub fn write_durable_at(
    file: &File,
    path: &Path,
    buf: &[u8],
    offset: u64,
) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| file.write_all_at(buf, offset))
        .map_err(DurableError::new(Step::WriteDsync, path))
}

/// Sets the length of a file (not a counted step; fails once frozen).
pub fn set_len(file: &File, path: &Path, len: u64) -> Result<(), DurableError> {
    step(false)
        .and_then(|()| file.set_len(len))
        .map_err(DurableError::new(Step::SetLen, path))
}

/// Deallocates `len` bytes at `offset` so they read back as zeroes; writes
/// zeroes where the file system cannot punch holes. Not a counted step.
pub fn punch_hole(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), DurableError> {
    step(false).map_err(DurableError::new(Step::PunchHole, path))?;
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
        Err(e) => Err(DurableError::new(Step::PunchHole, path)(e.into())),
    }
}

/// `fdatasync` (data and the size needed to read it back). Counted.
pub fn sync_data(file: &File, path: &Path) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| file.sync_data())
        .map_err(DurableError::new(Step::Fsync, path))
}

/// `fsync` (data and all metadata). Counted.
pub fn sync_all(file: &File, path: &Path) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| file.sync_all())
        .map_err(DurableError::new(Step::Fsync, path))
}

/// Fsyncs a directory so that creations, renames and removals in it are
/// durable. Counted.
pub fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| File::open(dir)?.sync_all())
        .map_err(DurableError::new(Step::FsyncDir, dir))
}

/// Atomic rename (files or directories, same file system). Counted.
pub fn rename(from: &Path, to: &Path) -> Result<(), DurableError> {
    step(true)
        .and_then(|()| fs::rename(from, to))
        .map_err(DurableError::new(Step::Rename, to))
}

/// Removes a file; a missing file is not an error. Returns whether there
/// was one. Counted.
pub fn remove_file(path: &Path) -> Result<bool, DurableError> {
    step(true)
        .and_then(|()| match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .map_err(DurableError::new(Step::Remove, path))
}

/// Removes a directory of plain files: every file (in name order), then the
/// directory. A missing directory is not an error. Not durable until the
/// parent is synced. One counted step per removal.
pub fn remove_tree(dir: &Path) -> Result<(), DurableError> {
    let entries = match fs::read_dir(dir) {
        Ok(it) => it,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(DurableError::new(Step::ListDir, dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(DurableError::new(Step::ListDir, dir))?;
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
        .map_err(DurableError::new(Step::RemoveDir, dir))
}

/// The temporary name used while replacing `path`: `path.partial`.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".partial");
    PathBuf::from(s)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes`, durably (see the [crate docs](crate)); the
/// file is private to the site's user. After a crash at any point `path` is
/// the old or the new version. Five counted steps.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    replace_file_mode(path, bytes, PRIVATE_FILE_MODE)
}

/// [`replace_file`] creating the file with `mode`.
pub fn replace_file_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DurableError> {
    let tmp = partial_path(path);
    remove_file(&tmp)?; // 1
    let written = (|| {
        let f = create_new_mode(&tmp, mode)?; // 2
        write_at(&f, &tmp, bytes, 0)?;
        sync_all(&f, &tmp) // 3
    })();
    if written.is_err() {
        // Best effort, and never on a frozen "disk" (failpoint): a leftover
        // is removed by the next replacement or open anyway.
        if step(false).is_ok() {
            let _ = fs::remove_file(&tmp);
        }
    }
    written?;
    rename(&tmp, path)?; // 4
    sync_dir(parent_dir(path)) // 5
}

/// Writes a new file `path` (which must not exist) with `bytes` and fsyncs
/// it; the caller syncs the directory. Two counted steps.
pub fn write_new_file(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    let f = create_new(path)?;
    write_at(&f, path, bytes, 0)?;
    sync_data(&f, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replace_writes_privately_and_leaves_no_partial() {
        failpoint::disarm();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        replace_file(&p, b"one").unwrap();
        assert_eq!(failpoint::steps(), 5);
        replace_file_mode(&p, b"two", 0o640).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!partial_path(&p).exists());
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o640, 0, "{mode:o}");
        // A stale partial is replaced.
        fs::write(partial_path(&p), b"stale").unwrap();
        replace_file(&p, b"three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        assert!(!partial_path(&p).exists());
    }

    /// A crash at any step leaves the old or the new content; the next
    /// replacement (or a retry) completes.
    #[test]
    fn crash_at_every_step_of_a_replacement() {
        for n in 1..=5 {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x");
            failpoint::disarm();
            replace_file(&p, b"old contents").unwrap();
            failpoint::arm(n);
            let e = replace_file(&p, b"new contents, longer").unwrap_err();
            assert!(failpoint::fired());
            failpoint::disarm();
            assert!(
                e.to_string().contains(&dir.path().display().to_string()),
                "{e}"
            );
            let got = fs::read(&p).unwrap();
            assert!(
                got == b"old contents" || got == b"new contents, longer",
                "step {n}: torn {got:?}"
            );
            assert_eq!(got == b"old contents", n <= 4, "step {n}");
            replace_file(&p, b"again").unwrap();
            assert_eq!(fs::read(&p).unwrap(), b"again");
        }
    }

    #[test]
    fn errors_name_step_and_path() {
        failpoint::disarm();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/dir/x");
        let e = replace_file(&missing, b"x").unwrap_err();
        assert_eq!(e.step, Step::Create);
        assert_eq!(e.path, partial_path(&missing));
        assert_eq!(e.source.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            format!("failed to create {}", partial_path(&missing).display())
        );
    }

    #[test]
    fn dirs_and_trees() {
        failpoint::disarm();
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a/b/c");
        create_private_dir_all(&a).unwrap();
        let mode = fs::metadata(&a).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        create_dir(&a.join("d")).unwrap();
        assert!(create_dir(&a.join("d")).is_err());
        write_new_file(&a.join("d/f1"), b"1").unwrap();
        write_new_file(&a.join("d/f2"), b"2").unwrap();
        assert!(write_new_file(&a.join("d/f2"), b"2").is_err());
        remove_tree(&a.join("d")).unwrap();
        assert!(!a.join("d").exists());
        remove_tree(&a.join("d")).unwrap();
        sync_dir(&a).unwrap();
        assert!(!remove_file(&a.join("nothing")).unwrap());
        assert_eq!(parent_dir(Path::new("x")), Path::new("."));
    }
}
