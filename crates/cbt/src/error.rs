//! The error type of the change tracker.
//!
//! I/O failures keep their [`std::io::Error`] as `#[source]` (never a string),
//! so a caller can tell a full disk (`ErrorKind::StorageFull`) from a dying
//! one; see [`CbtError::io_error`].

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while tracking changed blocks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CbtError {
    /// The block size or block count cannot be tracked.
    #[error("invalid volume geometry: {reason}")]
    InvalidGeometry {
        /// What is wrong, in words.
        reason: String,
    },

    /// The volume has more blocks than a 32-bit block index can address.
    #[error(
        "volume has {nblocks} blocks but change tracking addresses at most {max}; use a larger block size"
    )]
    TooManyBlocks {
        /// Blocks the caller asked for.
        nblocks: u64,
        /// The largest supported block count.
        max: u64,
    },

    /// A tuning knob (extent size, activity-log capacity) is out of range.
    #[error("invalid change-tracking tuning: {reason}")]
    InvalidTuning {
        /// What is wrong, in words.
        reason: String,
    },

    /// `mark` was given a byte range that does not lie inside the volume.
    #[error("byte range {offset}+{len} lies outside the volume ({size} bytes)")]
    OutOfRange {
        /// Start of the range in bytes.
        offset: u64,
        /// Length of the range in bytes.
        len: u64,
        /// Size of the volume in bytes.
        size: u64,
    },

    /// `merge` was given a block index past the end of the volume.
    #[error("block {block} to merge lies past the end of the volume ({nblocks} blocks)")]
    BlockOutOfRange {
        /// The offending block index.
        block: u32,
        /// Blocks in the volume.
        nblocks: u64,
    },

    /// `create` found state files of a previous tracker.
    #[error("change-tracking file {} already exists; open it instead, or remove it first", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// Another tracker (in this or another process) holds the activity log.
    #[error("change-tracking file {} is locked by another tracker; stop that one first", path.display())]
    Locked {
        /// The activity-log file.
        path: PathBuf,
    },

    /// Reading, writing or syncing a state file failed.
    #[error("failed to {op} change-tracking file {}", path.display())]
    Io {
        /// What was being done ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The file (or directory) concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },

    /// An earlier write or fsync failed, so the durable state may lag the
    /// in-memory state; the tracker refuses further work (sticky failure).
    #[error(
        "change tracker {} stopped after an earlier I/O failure ({cause}); fix the storage and reopen it (the dirty set is recovered as a superset)",
        path.display()
    )]
    Poisoned {
        /// The activity-log file of the failed tracker.
        path: PathBuf,
        /// The first failure, rendered with its cause.
        cause: String,
        /// The `io::ErrorKind` of the first failure, when it was an I/O error.
        kind: Option<io::ErrorKind>,
    },
}

impl From<offsite_durable::DurableError> for CbtError {
    fn from(e: offsite_durable::DurableError) -> Self {
        CbtError::Io {
            op: e.step.as_str(),
            path: e.path,
            source: e.source,
        }
    }
}

impl CbtError {
    /// The underlying operating-system error, if this is an I/O failure.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            CbtError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether this is (or was caused by) a full file system.
    pub fn is_storage_full(&self) -> bool {
        match self {
            CbtError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            CbtError::Poisoned { kind, .. } => *kind == Some(io::ErrorKind::StorageFull),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CbtError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
