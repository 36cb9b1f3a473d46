//! [`DirStore`]: an object store in a local directory.
//!
//! Key `a/b/c` is the file `ROOT/a/b/c`. A put writes a new file under
//! `ROOT/.partial/`, fsyncs it, renames it into place and fsyncs the
//! directory, so an object is visible only once complete and durable when
//! the put returns, as in a bucket. Partial files left by a crash are
//! removed when the store is opened. Every step goes through
//! `offsite-durable`, so the replica store's crash tests can fail any of
//! them.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{ObjectError, ObjectInfo, ObjectStore, check_key};

/// Where partial objects are written before they are renamed into place
/// (keys never start with '.', so this never collides with one).
const PARTIAL: &str = ".partial";

/// Bytes copied per read/write while writing an object from a reader.
const COPY_CHUNK: usize = 1 << 20;

/// An object store in a local directory.
#[derive(Debug)]
pub struct DirStore {
    root: PathBuf,
    /// Names partial files uniquely among this process's concurrent puts.
    next_partial: AtomicU64,
}

impl DirStore {
    /// Opens (creating it if needed) the store at `root`, removing partial
    /// objects an interrupted put left.
    pub fn open(root: impl Into<PathBuf>) -> Result<DirStore, ObjectError> {
        let root = root.into();
        let store = DirStore {
            root,
            next_partial: AtomicU64::new(0),
        };
        let partial = store.root.join(PARTIAL);
        offsite_durable::remove_tree(&partial).map_err(|e| store.io("open", PARTIAL, e))?;
        offsite_durable::create_private_dir_all(&partial)
            .map_err(|e| store.io("open", PARTIAL, e))?;
        Ok(store)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(&self, op: &'static str, key: &str, e: impl Into<io::Error>) -> ObjectError {
        ObjectError::Io {
            store: self.describe(),
            op,
            key: key.to_string(),
            source: e.into(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn not_found(&self, key: &str) -> ObjectError {
        ObjectError::NotFound {
            store: self.describe(),
            key: key.to_string(),
        }
    }

    /// Writes a partial file with `fill`, then makes it `key`.
    fn put_with(
        &self,
        key: &str,
        fill: impl FnOnce(&File, &Path) -> Result<(), ObjectError>,
    ) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        let n = self.next_partial.fetch_add(1, Ordering::Relaxed);
        let partial = self
            .root
            .join(PARTIAL)
            .join(format!("{}-{n}", std::process::id()));
        let file = offsite_durable::create_new(&partial).map_err(|e| self.io("put", key, e))?;
        let filled = fill(&file, &partial).and_then(|()| {
            offsite_durable::sync_data(&file, &partial).map_err(|e| self.io("put", key, e))
        });
        drop(file);
        if let Err(e) = filled {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
        let parent = offsite_durable::parent_dir(&path);
        // A concurrent delete may remove an emptied parent between the
        // mkdir and the rename; make it again once.
        let mut attempt = 0;
        loop {
            offsite_durable::create_private_dir_all(parent).map_err(|e| self.io("put", key, e))?;
            match offsite_durable::rename(&partial, &path) {
                Ok(()) => break,
                Err(e) if e.source.kind() == io::ErrorKind::NotFound && attempt == 0 => {
                    attempt += 1;
                }
                Err(e) => {
                    let _ = fs::remove_file(&partial);
                    return Err(self.io("put", key, e));
                }
            }
        }
        offsite_durable::sync_dir(parent).map_err(|e| self.io("put", key, e))
    }

    fn open_existing(&self, key: &str, op: &'static str) -> Result<File, ObjectError> {
        let path = self.path(key)?;
        match File::open(&path) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(self.not_found(key)),
            Err(e) => Err(self.io(op, key, e)),
        }
    }

    fn walk(&self, dir: &Path, rel: &str, out: &mut Vec<ObjectInfo>) -> Result<(), ObjectError> {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.io("list", rel, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| self.io("list", rel, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue; // not a key this store wrote
            };
            if name.starts_with('.') {
                continue;
            }
            let key = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let meta = entry.metadata().map_err(|e| self.io("list", &key, e))?;
            if meta.is_dir() {
                self.walk(&entry.path(), &key, out)?;
            } else if meta.is_file() {
                out.push(ObjectInfo {
                    key,
                    size: meta.len(),
                });
            }
        }
        Ok(())
    }
}

impl ObjectStore for DirStore {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        self.put_with(key, |file, partial| {
            offsite_durable::write_at(file, partial, data, 0).map_err(|e| self.io("put", key, e))
        })
    }

    fn put_from(&self, key: &str, src: &mut dyn Read, len: u64) -> Result<(), ObjectError> {
        self.put_with(key, |file, partial| {
            let mut buf = vec![0u8; COPY_CHUNK];
            let mut at = 0u64;
            loop {
                let n = src.read(&mut buf).map_err(|e| self.io("put", key, e))?;
                if n == 0 {
                    break;
                }
                if at + n as u64 > len {
                    return Err(self.io(
                        "put",
                        key,
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("source longer than {len} bytes"),
                        ),
                    ));
                }
                offsite_durable::write_at(file, partial, &buf[..n], at)
                    .map_err(|e| self.io("put", key, e))?;
                at += n as u64;
            }
            if at != len {
                return Err(self.io(
                    "put",
                    key,
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("source ended after {at} of {len} bytes"),
                    ),
                ));
            }
            Ok(())
        })
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let mut file = self.open_existing(key, "get")?;
        let mut out = Vec::new();
        file.read_to_end(&mut out)
            .map_err(|e| self.io("get", key, e))?;
        Ok(out)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        let file = self.open_existing(key, "get")?;
        let size = file.metadata().map_err(|e| self.io("get", key, e))?.len();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ObjectError::ShortObject {
                store: self.describe(),
                key: key.to_string(),
                size,
                offset,
                want: len,
            });
        }
        let mut out = vec![0u8; len as usize];
        file.read_exact_at(&mut out, offset)
            .map_err(|e| self.io("get", key, e))?;
        Ok(out)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("head", key, e)),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        // Walk only the deepest directory the prefix names in full.
        let dir_rel = prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        if !dir_rel.is_empty() {
            check_key(dir_rel)?;
        }
        let mut out = Vec::new();
        self.walk(&self.root.join(dir_rel), dir_rel, &mut out)?;
        out.retain(|o| o.key.starts_with(prefix));
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let dir = match prefix.strip_suffix('/') {
            Some(p) => self.path(p)?,
            None if prefix.is_empty() => self.root.clone(),
            None => {
                return Err(crate::KeyError {
                    key: prefix.to_string(),
                    reason: "a prefix of names is empty or ends with '/'",
                }
                .into());
            }
        };
        let mut out = Vec::new();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.io("list", prefix, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| self.io("list", prefix, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            // A directory emptied by deletes may linger a moment: a name
            // holds objects only if something is under it.
            let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
            if !name.starts_with('.')
                && is_dir
                && !self.list(&format!("{prefix}{name}/"))?.is_empty()
            {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        if !offsite_durable::remove_file(&path).map_err(|e| self.io("delete", key, e))? {
            return Ok(());
        }
        let parent = offsite_durable::parent_dir(&path);
        offsite_durable::sync_dir(parent).map_err(|e| self.io("delete", key, e))?;
        // Empty directories left behind are removed (best effort: a
        // concurrent put may be filling one again, and put copes with a
        // directory removed under it).
        let mut dir = offsite_durable::parent_dir(&path).to_path_buf();
        while dir != self.root && dir.starts_with(&self.root) {
            if fs::remove_dir(&dir).is_err() {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p.to_path_buf(),
                None => break,
            }
        }
        Ok(())
    }
}
