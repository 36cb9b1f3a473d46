//! The error type of the replica store.
//!
//! I/O failures keep their [`std::io::Error`] as `#[source]` (never a string),
//! so a caller can tell a full disk from a dying one; see
//! [`ReplicaError::io_error`] and [`ReplicaError::is_storage_full`].

use std::io;
use std::path::PathBuf;

use crate::{CheckpointId, PitId};

/// Everything that can go wrong in a replica store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// `create` was given an unusable volume list.
    #[error("invalid volume list: {reason}")]
    InvalidVolumes {
        /// What is wrong, in words.
        reason: String,
    },

    /// A PIT name, timestamp, block or buffer is not acceptable.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong, in words.
        reason: String,
    },

    /// `create` was pointed at a directory that already holds files.
    #[error(
        "directory {} is not empty; a new replica store needs an empty directory (use open if it already is a store)",
        path.display()
    )]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },

    /// `open` found no `store.meta`.
    #[error(
        "{} is not a replica store (it has no store.meta); create one there, or delete the directory if a create was interrupted",
        path.display()
    )]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },

    /// Another `ReplicaStore` (in this or another process) has the store open.
    #[error(
        "replica store {} is open elsewhere (its store.lock is held); close that first",
        path.display()
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },

    /// Reading, writing, syncing, renaming or removing a file failed.
    #[error("failed to {op} {}", path.display())]
    Io {
        /// What was being done ("write", "fsync", "rename", ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating-system error.
        #[source]
        source: io::Error,
    },

    /// A file fails its checks (length, CRC, magic, version, identity,
    /// BLAKE3). The store never returns data from such a file.
    #[error(
        "replica store file {} is corrupt: {why}; resynchronize the affected PITs from the primary",
        path.display()
    )]
    Corrupt {
        /// The damaged file or directory.
        path: PathBuf,
        /// What failed, in words.
        why: String,
    },

    /// No visible PIT has this id.
    /// A request to the object store holding the replica store failed
    /// (the source says whether it is worth retrying).
    #[error("failed to {op} object {key} of the replica store")]
    Object {
        /// The operation (`put`, `get`, `list`, `delete`).
        op: &'static str,
        /// The object's key (or the prefix of a listing).
        key: String,
        /// What the object store said (boxed: it is large, and rare).
        #[source]
        source: Box<offsite_objects::ObjectError>,
    },

    /// `create_in` found objects already there.
    #[error(
        "{store} already holds objects; a new replica store needs an empty bucket prefix (use open_in if it already is a replica store)"
    )]
    ObjectsNotEmpty {
        /// The object store, as it describes itself.
        store: String,
    },

    /// `open_in` found no `store.meta` object.
    #[error(
        "{store} holds no replica store (it has no store.meta object); check the bucket and prefix, or create a store there"
    )]
    NotAStoreInObjects {
        /// The object store, as it describes itself.
        store: String,
    },

    #[error("no PIT {id} in this replica store; list the PITs to see which exist")]
    NoSuchPit {
        /// The id asked for.
        id: PitId,
    },

    /// The group has no volume of that name.
    #[error("no volume named {name:?} in this replication group")]
    NoSuchVolume {
        /// The name asked for.
        name: String,
    },

    /// A byte range or block lies outside the volume.
    #[error("{what} lies outside volume {volume:?} ({size} bytes)")]
    OutOfRange {
        /// The volume.
        volume: String,
        /// The offending range, in words ("bytes 4096+512", "block 12").
        what: String,
        /// Size of the volume in bytes.
        size: u64,
    },

    /// A second PIT writer was requested while one is open.
    #[error("another PIT is being written to this replica store; commit or abort it first")]
    Busy,

    /// Removing the newest PIT would change the state the next delta applies to.
    #[error(
        "PIT {id} is the newest PIT and the base of the next delta; commit a newer PIT before removing it"
    )]
    NewestPit {
        /// The PIT that was to be removed.
        id: PitId,
    },

    /// `write_base` was called although a PIT exists.
    #[error(
        "the base images can be written only before the first PIT, and PIT {newest} exists; ship changes as a PIT instead"
    )]
    BaseSealed {
        /// The newest visible PIT.
        newest: PitId,
    },

    /// The PIT (or one it depends on) failed its checks at open.
    #[error("PIT {id} is damaged ({why}); call discard_damaged and resynchronize from the primary")]
    Damaged {
        /// The damaged PIT (the oldest one, when several are).
        id: PitId,
        /// What is wrong with it.
        why: String,
    },

    /// The PIT writer hit an I/O error earlier and cannot continue.
    #[error(
        "this PIT writer stopped after an earlier failure ({cause}); abort it and begin a new PIT"
    )]
    WriterFailed {
        /// The first failure, rendered with its cause.
        cause: String,
    },

    /// No checkpoint of the journal has this id.
    #[error("no checkpoint {id} in this group's journal; list the checkpoints to see which exist")]
    NoSuchCheckpoint {
        /// The id asked for.
        id: CheckpointId,
    },

    /// The checkpoint's history was folded into a PIT or the base: its
    /// image can no longer be made.
    #[error(
        "checkpoint {id} can no longer be recovered to: {why}; list the checkpoints to see which can"
    )]
    CheckpointUnreachable {
        /// The checkpoint.
        id: CheckpointId,
        /// Why, in words.
        why: String,
    },

    /// Merging into the base (or writing it) would change the state a live
    /// checkpoint image reads.
    #[error(
        "a checkpoint image (an export or a clone) reads the group's state as of PIT {anchor}, which this would change; release the image first (retention keeps the PITs journal_pins names)"
    )]
    InUse {
        /// The state the image reads (a PIT id, or the base's).
        anchor: u64,
    },

    /// The write log stopped after a failure past a seal's commit point.
    #[error(
        "the write log stopped after an earlier failure ({cause}); reopen it (opening recovers a consistent log)"
    )]
    LogFailed {
        /// The failure, rendered with its cause.
        cause: String,
    },

    /// The store's prefix is no longer this writer's: its
    /// [`crate::CommitFence`] refused a commit point, and nothing was
    /// written. `reason` says who owns it since when, and what to do.
    #[error("{reason}")]
    Fenced {
        /// The fence's refusal, in words.
        reason: String,
    },

    /// An I/O error during commit, merge or a base write left the on-disk
    /// state unknown to this handle; it refuses changes until reopened
    /// (sticky failure). Reads keep working.
    #[error(
        "replica store {} stopped after an earlier I/O failure ({cause}); fix the storage and reopen the store (open recovers a consistent state)",
        path.display()
    )]
    Poisoned {
        /// The store directory.
        path: PathBuf,
        /// The first failure, rendered with its cause.
        cause: String,
        /// The `io::ErrorKind` of the first failure, when it was an I/O error.
        kind: Option<io::ErrorKind>,
    },
}

impl ReplicaError {
    /// The underlying operating-system error, if this is an I/O failure.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            ReplicaError::Io { source, .. } => Some(source),
            _ => None,
        }
    }

    /// Whether this is (or was caused by) a full file system.
    pub fn is_storage_full(&self) -> bool {
        match self {
            ReplicaError::Io { source, .. } => source.kind() == io::ErrorKind::StorageFull,
            ReplicaError::Poisoned { kind, .. } => *kind == Some(io::ErrorKind::StorageFull),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        ReplicaError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, why: impl std::fmt::Display) -> Self {
        ReplicaError::Corrupt {
            path: path.into(),
            why: why.to_string(),
        }
    }

    pub(crate) fn invalid(reason: impl std::fmt::Display) -> Self {
        ReplicaError::InvalidArgument {
            reason: reason.to_string(),
        }
    }
}

impl From<offsite_durable::DurableError> for ReplicaError {
    fn from(e: offsite_durable::DurableError) -> Self {
        ReplicaError::Io {
            op: e.step.as_str(),
            path: e.path,
            source: e.source,
        }
    }
}
