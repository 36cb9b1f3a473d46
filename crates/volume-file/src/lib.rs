//! Volume data files: the bytes a volume holds, kept as one sparse raw file
//! per volume in the site's data directory.
//!
//! The store owns only data placement: reads, writes, holes and durability of
//! the data file. Which blocks changed is the `offsite-cbt` crate's job; the
//! engine joins the two. Later issues add the replica store (base image plus
//! PIT segments) here. [`layered`] stacks a private writable top layer over a
//! read-only lower image (test-failover clones, promoted replicas).
//!
//! Format: a raw image, byte `i` of the volume at byte `i` of the file, holes
//! reading as zeroes. It carries no header so that a volume file is usable by
//! any tool (`qemu-img`, `losetup`) and an imported raw image needs no
//! conversion; the volume's geometry and identity live in the catalog.
//! Durability: `write_at`/`punch_hole` only reach the page cache;
//! [`VolumeFile::sync`] (`fdatasync`) is the durability point. Every
//! crash-relevant step (create, fsync, rename, remove) goes through
//! `offsite-durable`, so tests can crash the store at any of them with the
//! counted failpoint; [`write_durably`], [`sync_dir`] and
//! [`create_private_dir_all`] are its helpers for the other crates.

use std::fs::{File, OpenOptions};

use offsite_durable as durable;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::FallocateFlags;

pub mod layered;

pub use layered::{LayerError, Layered, Lower, READER_QUIET};

/// Largest `pwrite` of a volume write: larger writes go in pieces of this
/// size. On 6.x kernels a buffered write fills the page cache with folios
/// as large as the write allows (up to 2 MiB on ext4), and every later
/// 4 KiB overwrite inside such a folio walks all of its buffer heads
/// (`ext4_block_write_begin`, `mark_buffer_dirty`): after 1 MiB writes a
/// random 4 KiB overwrite cost 27.7 µs of CPU against 2.6 µs after 4 KiB
/// writes, 10.5x (bench/folio-overwrite.py on the development VM,
/// docs/benchmarks.md, issue 19). A volume is written in large requests
/// when an image is imported, seeded or copied in (`qemu-img convert`,
/// large guest I/O over NBD) and then overwritten 4 KiB at a time by its
/// guest. In 16 KiB pieces an overwrite costs 3.0 µs (1.15x), and the
/// large write itself costs less CPU than in one call (404 against 863 µs
/// per MiB); 64 KiB pieces left 1.74x. `posix_fadvise(DONTNEED)` after the
/// write would also work but drops the cache the guest just filled, and
/// `O_DIRECT` makes every large write wait for the disk.
pub const WRITE_PIECE: usize = 16 << 10;

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data file already exists where a new volume would go.
    #[error("volume file {} already exists; remove it or pick another name", path.display())]
    Exists {
        /// Path of the existing file.
        path: PathBuf,
    },
    /// The file system (or the daemon's file-size limit) refuses a data
    /// file this large (`EFBIG`).
    #[error(
        "{} {}",
        match cause {
            TooLargeCause::FileSystem => format!("the file system holding {} refuses files of {}; its limit is {}", dir.display(), human_size(*size), limit_text(*limit)),
            TooLargeCause::ProcessLimit => format!("the site's daemon may not create files of {} in {}: its file-size limit (RLIMIT_FSIZE, `ulimit -f`) is {}", human_size(*size), dir.display(), limit_text(*limit)),
        },
        match cause {
            TooLargeCause::FileSystem => "; create a smaller volume, or keep the site's data directory on a file system that allows larger files (e.g. XFS)",
            TooLargeCause::ProcessLimit => "; create a smaller volume, or raise the limit of the daemon (e.g. LimitFSIZE=infinity in its systemd unit)",
        }
    )]
    TooLarge {
        /// Directory of the refused file.
        dir: PathBuf,
        /// The size asked for.
        size: u64,
        /// The largest size accepted, when it could be found.
        limit: Option<u64>,
        /// Who imposes the limit.
        cause: TooLargeCause,
    },
    /// An import source is neither a regular file nor a block device (a
    /// FIFO would block the reader forever, a directory has no bytes).
    #[error("import source {} is {kind}; give a regular file (a raw image) or a block device", path.display())]
    NotImportable {
        /// The source.
        path: PathBuf,
        /// What it is instead ("a directory", "a FIFO (named pipe)", ...).
        kind: &'static str,
    },
    /// An I/O call on a data file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done ("create", "open", "read", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
        move |source| StoreError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// The OS error underneath, if any (callers tell ENOSPC from EIO by it).
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StoreError::Io { source, .. } => Some(source),
            StoreError::Exists { .. }
            | StoreError::TooLarge { .. }
            | StoreError::NotImportable { .. } => None,
        }
    }
}

/// Who refuses a file as too large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooLargeCause {
    /// The file system's maximum file size (e.g. 16 TiB on ext4 with 4 KiB
    /// blocks).
    FileSystem,
    /// The process's `RLIMIT_FSIZE`.
    ProcessLimit,
}

/// `17 TiB` for exact multiples of a binary unit, else the bytes with an
/// approximation (`17592186040320 bytes (~16.0 TiB)`): a limit such as
/// 16 TiB - 4 KiB must not read as 16 TiB.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = None;
    for (i, name) in UNITS.iter().enumerate().rev() {
        let scale = 1u64 << (10 * (i + 1));
        if bytes >= scale {
            unit = Some((scale, *name));
            break;
        }
    }
    match unit {
        None => format!("{bytes} bytes"),
        Some((scale, name)) if bytes.is_multiple_of(scale) => format!("{} {name}", bytes / scale),
        Some((scale, name)) => {
            format!("{bytes} bytes (~{:.1} {name})", bytes as f64 / scale as f64)
        }
    }
}

fn limit_text(limit: Option<u64>) -> String {
    match limit {
        Some(l) => human_size(l),
        None => "the file system's maximum file size".into(),
    }
}

fn is_efbig(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::FBIG.raw_os_error())
}

/// The largest length `file` may be given, found by bisecting between 0
/// (accepted) and `refused` with `ftruncate` (cheap: the file is sparse and
/// empty). `None` when the probe itself fails otherwise.
fn probe_max_len(file: &File, refused: u64) -> Option<u64> {
    let (mut ok, mut bad) = (0u64, refused);
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        match file.set_len(mid) {
            Ok(()) => ok = mid,
            Err(e) if is_efbig(&e) => bad = mid,
            Err(_) => return None,
        }
    }
    // The caller removes the file next; an unshrunk sparse file costs nothing.
    let _ = file.set_len(0);
    (ok > 0).then_some(ok)
}

/// Why `size` was refused with `EFBIG` in `dir`, and up to which size it
/// would be accepted.
fn too_large(file: &File, dir: &Path, size: u64) -> StoreError {
    let rlimit = rustix::process::getrlimit(rustix::process::Resource::Fsize).current;
    let (cause, limit) = match rlimit {
        Some(l) if l < size => (TooLargeCause::ProcessLimit, Some(l)),
        _ => (TooLargeCause::FileSystem, probe_max_len(file, size)),
    };
    StoreError::TooLarge {
        dir: dir.to_path_buf(),
        size,
        limit,
        cause,
    }
}

/// One volume's data file.
#[derive(Debug)]
pub struct VolumeFile {
    file: File,
    path: PathBuf,
    size: u64,
    /// Whether the filesystem punches holes, found out once
    /// ([`VolumeFile::can_punch_holes`]).
    punches: std::sync::OnceLock<bool>,
}

impl VolumeFile {
    /// Creates a sparse file of `size` bytes and makes its existence durable.
    pub fn create(path: &Path, size: u64) -> Result<VolumeFile, StoreError> {
        let file = durable::create_new_mode(path, PRIVATE_FILE_MODE).map_err(|e| {
            if e.source.kind() == io::ErrorKind::AlreadyExists {
                StoreError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                StoreError::Io {
                    op: "create",
                    path: path.to_path_buf(),
                    source: e.source,
                }
            }
        })?;
        // A file that cannot be sized is removed again: left behind, it
        // would hold the name of the next volume's file.
        let sized =
            match durable::set_len(&file, path, size).map_err(durable::DurableError::into_io) {
                Ok(()) => durable::sync_all(&file, path)
                    .map_err(|e| StoreError::io("sync", path)(e.into_io())),
                Err(e) if is_efbig(&e) => Err(too_large(
                    &file,
                    path.parent().unwrap_or(Path::new(".")),
                    size,
                )),
                Err(e) => Err(StoreError::Io {
                    op: "size",
                    path: path.to_path_buf(),
                    source: e,
                }),
            };
        if let Err(e) = sized {
            drop(file);
            // Left behind, it would make the next create of this volume fail.
            if let Err(re) = VolumeFile::remove(path) {
                tracing::warn!(path = %path.display(), error = %re, "removing a volume file whose create failed");
            }
            return Err(e);
        }
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(StoreError::io("sync directory of", path))?;
        }
        Ok(VolumeFile {
            file,
            path: path.to_path_buf(),
            size,
            punches: std::sync::OnceLock::new(),
        })
    }

    /// Opens an existing data file; its length must be `size`.
    pub fn open(path: &Path, size: u64) -> Result<VolumeFile, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        let len = file.metadata().map_err(StoreError::io("stat", path))?.len();
        if len != size {
            return Err(StoreError::Io {
                op: "check size of",
                path: path.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("file holds {len} bytes but the catalog says {size}"),
                ),
            });
        }
        Ok(VolumeFile {
            file,
            path: path.to_path_buf(),
            size,
            punches: std::sync::OnceLock::new(),
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Path of the data file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `buf` at `offset` (page cache; see [`VolumeFile::sync`]),
    /// in `pwrite`s of at most [`WRITE_PIECE`] bytes.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if buf.len() <= WRITE_PIECE {
            return self.file.write_all_at(buf, offset);
        }
        // In pieces aligned to WRITE_PIECE (see there): the first up to
        // the next boundary, then whole pieces.
        let mut at = 0;
        while at < buf.len() {
            let pos = offset + at as u64;
            let room = WRITE_PIECE - (pos % WRITE_PIECE as u64) as usize;
            let end = (at + room).min(buf.len());
            self.file.write_all_at(&buf[at..end], pos)?;
            at = end;
        }
        Ok(())
    }

    /// Deallocates a range so it reads back as zeroes.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let r = rustix::fs::fallocate(
            &self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len,
        );
        match r {
            Ok(()) => Ok(()),
            // Filesystems without hole punching (tmpfs on old kernels, some FUSE):
            // write zeroes instead, the observable result is the same.
            Err(rustix::io::Errno::OPNOTSUPP) => self.write_zeroes_slow(offset, len),
            Err(e) => Err(e.into()),
        }
    }

    fn write_zeroes_slow(&self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let zeroes = vec![0u8; CHUNK];
        let end = offset + len;
        while offset < end {
            let n = (end - offset).min(CHUNK as u64) as usize;
            self.file.write_all_at(&zeroes[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    /// Makes `offset..offset + len` read as zeroes without allocating
    /// anything: a range where the file holds no data (`SEEK_DATA`) is left
    /// alone — punching it would cost a journal transaction for nothing —
    /// anything else is punched.
    pub fn zero_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.next_data(offset)? {
            Some(at) if at < offset + len => self.punch_hole(offset, len),
            _ => Ok(()),
        }
    }

    /// Writes `buf` at `offset` keeping the file thin: every `unit`-byte
    /// block (aligned to the file) of `buf` that is all zeroes is not
    /// written but made a hole ([`VolumeFile::zero_range`]: punched where
    /// the file held data, so the bytes read zero either way). For whole
    /// images copied into a sparse file (flattening, seeds), whose zero
    /// blocks would otherwise all be allocated.
    pub fn write_thin(&self, buf: &[u8], offset: u64, unit: u64) -> io::Result<()> {
        for (at, len, zero) in zero_runs(buf, offset, unit) {
            let part = &buf[(at - offset) as usize..(at - offset + len) as usize];
            if zero {
                self.zero_range(at, len)?;
            } else {
                self.write_at(part, at)?;
            }
        }
        Ok(())
    }

    /// Start of the first byte at or after `offset` that the file has
    /// allocated (`SEEK_DATA`), or `None` when only holes follow. Lets a
    /// reader of a thin volume skip its holes instead of reading zeroes.
    /// Filesystems without hole reporting say "data" everywhere, which is
    /// correct, only slower.
    pub fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        if offset >= self.size {
            return Ok(None);
        }
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => Ok((at < self.size).then_some(at)),
            Err(rustix::io::Errno::NXIO) => Ok(None),
            Err(rustix::io::Errno::INVAL) => Ok(Some(offset)),
            Err(e) => Err(e.into()),
        }
    }

    /// Start of the first hole at or after `offset` (`SEEK_HOLE`; the end
    /// of the file counts as one), so `offset..next_hole(offset)` is data
    /// when `offset` is. Filesystems without hole reporting say "data" up
    /// to the end.
    pub fn next_hole(&self, offset: u64) -> io::Result<u64> {
        if offset >= self.size {
            return Ok(self.size);
        }
        match rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Hole(offset)) {
            Ok(at) => Ok(at.min(self.size)),
            Err(rustix::io::Errno::NXIO | rustix::io::Errno::INVAL) => Ok(self.size),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether [`VolumeFile::punch_hole`] deallocates (a metadata change)
    /// rather than falling back to writing zeroes. Asked of the filesystem
    /// once, by punching past the end of the file, which changes nothing.
    pub fn can_punch_holes(&self) -> bool {
        *self.punches.get_or_init(|| {
            rustix::fs::fallocate(
                &self.file,
                FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
                self.size,
                1,
            )
            .is_ok()
        })
    }

    /// Tells the kernel `offset..offset + len` will be read soon
    /// (`POSIX_FADV_WILLNEED`: it starts reading it into the page cache).
    pub fn will_need(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = std::num::NonZeroU64::new(len);
        rustix::fs::fadvise(&self.file, offset, len, rustix::fs::Advice::WillNeed)?;
        Ok(())
    }

    /// Bytes the file occupies on disk (a thin volume's real footprint).
    pub fn allocated_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }

    /// Makes every completed write durable (`fdatasync`).
    pub fn sync(&self) -> io::Result<()> {
        Ok(durable::sync_data(&self.file, &self.path)?)
    }

    /// Removes a data file (missing is fine) and syncs its directory.
    pub fn remove(path: &Path) -> io::Result<()> {
        durable::remove_file(path)?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Whether every byte of `buf` is zero (ORs 64 bytes at a time, which
/// vectorizes).
pub fn is_zero(buf: &[u8]) -> bool {
    buf.chunks(64).all(|c| c.iter().fold(0, |a, &x| a | x) == 0)
}

/// Splits `buf`, the bytes at `offset` of an image, at every multiple of
/// `unit` (a power of two or not, at least 1) into maximal runs of all-zero
/// or not-all-zero blocks: `(offset, len, zero)` in order, covering `buf`.
/// Blocks cut by the ends of `buf` count by their part inside it.
pub fn zero_runs(buf: &[u8], offset: u64, unit: u64) -> Vec<(u64, u64, bool)> {
    let unit = unit.max(1);
    let end = offset + buf.len() as u64;
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    let mut at = offset;
    while at < end {
        let next = ((at / unit + 1) * unit).min(end);
        let zero = is_zero(&buf[(at - offset) as usize..(next - offset) as usize]);
        match runs.last_mut() {
            Some((_, len, z)) if *z == zero => *len += next - at,
            _ => runs.push((at, next - at, zero)),
        }
        at = next;
    }
    runs
}

pub use offsite_durable::{PRIVATE_DIR_MODE, PRIVATE_FILE_MODE};

/// `create_dir_all` with [`PRIVATE_DIR_MODE`] for every directory it
/// creates (existing ones are left as they are). See
/// [`offsite_durable::create_private_dir_all`]; this returns its
/// `io::Error` (callers name the path).
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    Ok(durable::create_private_dir_all(path)?)
}

/// fsyncs a directory so that entries created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    Ok(durable::sync_dir(dir)?)
}

/// Writes `bytes` to `path` durably: a `*.partial` sibling is written and
/// fsynced, renamed over `path`, and the directory fsynced
/// ([`offsite_durable::replace_file_mode`]); returns its `io::Error`.
pub fn write_durably(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    Ok(durable::replace_file_mode(path, bytes, mode)?)
}

/// What a file type is called in an error, for types that cannot be imported.
fn unimportable_kind(ft: &std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_file() || ft.is_block_device() {
        None
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    }
}

/// Opens an import source for reading and returns it with its size: only a
/// regular file or a block device. The type is checked before the open
/// (opening a FIFO for reading blocks until a writer appears) and again on
/// the opened file (the path may have been replaced in between; the open is
/// non-blocking for that reason).
pub fn open_source(path: &Path) -> Result<(File, u64), StoreError> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    let refuse = |kind| StoreError::NotImportable {
        path: path.to_path_buf(),
        kind,
    };
    let meta = std::fs::metadata(path).map_err(StoreError::io("stat", path))?;
    if let Some(kind) = unimportable_kind(&meta.file_type()) {
        return Err(refuse(kind));
    }
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(StoreError::io("open", path))?;
    let meta = f.metadata().map_err(StoreError::io("stat", path))?;
    if let Some(kind) = unimportable_kind(&meta.file_type()) {
        return Err(refuse(kind));
    }
    // Back to blocking reads (the flag means nothing for files and disks,
    // but the copy should not depend on that).
    rustix::fs::fcntl_setfl(&f, rustix::fs::OFlags::empty())
        .map_err(|e| StoreError::io("open", path)(e.into()))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(StoreError::io("size", path))?;
    Ok((f, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_write_read_punch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("v.img");
        let v = VolumeFile::create(&p, 1 << 20).unwrap();
        v.write_at(&[7u8; 8192], 4096).unwrap();
        let mut buf = [0u8; 8192];
        v.read_at(&mut buf, 4096).unwrap();
        assert!(buf.iter().all(|&b| b == 7));
        v.punch_hole(4096, 4096).unwrap();
        v.read_at(&mut buf, 4096).unwrap();
        assert!(buf[..4096].iter().all(|&b| b == 0));
        assert!(buf[4096..].iter().all(|&b| b == 7));
        v.sync().unwrap();
        assert!(matches!(
            VolumeFile::create(&p, 1 << 20),
            Err(StoreError::Exists { .. })
        ));
        drop(v);
        assert!(VolumeFile::open(&p, 1 << 20).is_ok());
        assert!(VolumeFile::open(&p, 2 << 20).is_err());
    }

    /// Large writes go in pieces (WRITE_PIECE); the bytes land exactly,
    /// whatever the alignment of the write.
    #[test]
    fn large_writes_land_whole_at_any_alignment() {
        let dir = tempfile::tempdir().unwrap();
        let v = VolumeFile::create(&dir.path().join("v.img"), 8 << 20).unwrap();
        let data: Vec<u8> = (0..(3 * WRITE_PIECE + 4321))
            .map(|i| (i % 251) as u8)
            .collect();
        for offset in [0u64, 5000, WRITE_PIECE as u64, (1 << 20) - 1] {
            v.write_at(
                &vec![0xee; 5 * WRITE_PIECE],
                offset.saturating_sub(WRITE_PIECE as u64),
            )
            .unwrap();
            v.write_at(&data, offset).unwrap();
            let mut back = vec![0u8; data.len() + 2];
            v.read_at(&mut back, offset.max(1) - 1).unwrap();
            let skip = usize::from(offset > 0);
            assert!(back[skip..skip + data.len()] == data[..], "at {offset}");
        }
    }

    #[test]
    fn next_data_skips_holes() {
        let dir = tempfile::tempdir().unwrap();
        let v = VolumeFile::create(&dir.path().join("v.img"), 64 << 20).unwrap();
        assert_eq!(v.next_data(0).unwrap(), None);
        assert_eq!(v.allocated_bytes().unwrap(), 0);
        v.write_at(&[1u8; 4096], 40 << 20).unwrap();
        // Filesystems report data at their own granularity: never after the
        // written byte, never before the previous hole ends.
        let at = v.next_data(0).unwrap().unwrap();
        assert!(at <= 40 << 20, "{at}");
        assert!(v.next_data(at).unwrap().is_some());
        assert_eq!(v.next_data((40 << 20) + (1 << 20)).unwrap(), None);
        assert_eq!(v.next_data(64 << 20).unwrap(), None);
        assert!(v.allocated_bytes().unwrap() >= 4096);
    }

    #[test]
    fn next_hole_ends_data_and_punching_is_probed_harmlessly() {
        let dir = tempfile::tempdir().unwrap();
        let v = VolumeFile::create(&dir.path().join("v.img"), 64 << 20).unwrap();
        // All hole: the hole is where we are.
        assert_eq!(v.next_hole(0).unwrap(), 0);
        v.write_at(&[1u8; 1 << 20], 8 << 20).unwrap();
        let data = v.next_data(0).unwrap().unwrap();
        let hole = v.next_hole(data).unwrap();
        // Never inside the written range; within a filesystem block of it.
        assert!(((9 << 20)..(10 << 20)).contains(&hole), "{hole}");
        assert_eq!(v.next_hole(64 << 20).unwrap(), 64 << 20);
        assert_eq!(v.next_hole(u64::MAX).unwrap(), 64 << 20);
        // The probe punches past the end: size and data stay.
        let punches = v.can_punch_holes();
        assert_eq!(v.can_punch_holes(), punches);
        assert_eq!(std::fs::metadata(v.path()).unwrap().len(), 64 << 20);
        let mut buf = [0u8; 16];
        v.read_at(&mut buf, 8 << 20).unwrap();
        assert_eq!(buf, [1u8; 16]);
        v.will_need(8 << 20, 1 << 20).unwrap();
    }

    #[test]
    fn zero_runs_split_at_block_boundaries() {
        let mut buf = vec![0u8; 5 * 4096];
        buf[4096 + 7] = 1;
        buf[3 * 4096] = 2;
        assert_eq!(
            zero_runs(&buf, 0, 4096),
            vec![
                (0, 4096, true),
                (4096, 4096, false),
                (8192, 4096, true),
                (12288, 4096, false),
                (16384, 4096, true)
            ]
        );
        // Unaligned: the partial blocks at both ends count by their part.
        assert_eq!(
            zero_runs(&buf[100..4096 + 8], 100, 4096),
            vec![(100, 3996, true), (4096, 8, false)]
        );
        assert!(zero_runs(&[], 0, 4096).is_empty());
        assert!(is_zero(&[0; 100]) && !is_zero(&[0, 0, 3]));
    }

    #[test]
    fn write_thin_allocates_only_data_and_zeroes_old_data() {
        let dir = tempfile::tempdir().unwrap();
        let v = VolumeFile::create(&dir.path().join("v.img"), 64 << 20).unwrap();
        // Old data where zeroes will land.
        v.write_at(&vec![9u8; 1 << 20], 8 << 20).unwrap();
        v.sync().unwrap();
        // 16 MiB of an image holding one 4 KiB block of data.
        let mut image = vec![0u8; 16 << 20];
        image[(12 << 20)..(12 << 20) + 4096].fill(5);
        v.write_thin(&image, 0, 4096).unwrap();
        v.sync().unwrap();
        let mut back = vec![1u8; 16 << 20];
        v.read_at(&mut back, 0).unwrap();
        assert!(back == image, "the file reads back the image");
        // Only the data block (and a file system block or two of rounding)
        // is allocated: neither the 16 MiB of zeroes nor the old data.
        let allocated = v.allocated_bytes().unwrap();
        assert!(allocated <= 64 << 10, "{allocated} bytes allocated");
    }

    #[test]
    fn durable_write_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        write_durably(&p, b"one", 0o600).unwrap();
        write_durably(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert!(!dir.path().join("x.partial").exists());
    }
}
