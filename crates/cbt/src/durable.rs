//! Durable whole-file replacement: `X.partial` created with `create_new`,
//! written, fsynced, renamed over `X`, then the directory fsynced. After a
//! crash at any point the file is either the old or the new version, never
//! empty or torn.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::CbtError;

/// The temporary name used while replacing `path`.
pub(crate) fn partial_path(path: &Path) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(".partial");
    PathBuf::from(s)
}

/// Removes a leftover `X.partial` from an interrupted replacement.
pub(crate) fn remove_stale_partial(path: &Path) -> Result<(), CbtError> {
    let tmp = partial_path(path);
    match fs::remove_file(&tmp) {
        Ok(()) => {
            tracing::debug!(path = %tmp.display(), "removed leftover temporary file");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CbtError::io("remove leftover temporary", tmp, e)),
    }
}

/// Fsyncs a directory so that renames and creations inside it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), CbtError> {
    let d = File::open(dir).map_err(|e| CbtError::io("open directory of", dir, e))?;
    d.sync_all()
        .map_err(|e| CbtError::io("fsync directory of", dir, e))
}

/// Replaces `path` (inside `dir`) with `bytes`, durably.
///
/// Ordering:
/// 1. remove a stale `path.partial`;
/// 2. create `path.partial` with `create_new`, write all bytes;
/// 3. fsync it (data and size);
/// 4. rename it over `path` (atomic);
/// 5. fsync `dir`, making the rename durable.
pub(crate) fn replace_file(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), CbtError> {
    let tmp = partial_path(path);
    remove_stale_partial(path)?; // 1
    let result = (|| {
        // Private to the site's user, like every file of a site.
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            OpenOptions::new().write(true).create_new(true),
            0o600,
        )
        .open(&tmp)
        .map_err(|e| CbtError::io("create", &tmp, e))?; // 2
        f.write_all(bytes)
            .map_err(|e| CbtError::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| CbtError::io("fsync", &tmp, e))?; // 3
        drop(f);
        fs::rename(&tmp, path).map_err(|e| CbtError::io("rename into place", path, e)) // 4
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(dir) // 5
}
