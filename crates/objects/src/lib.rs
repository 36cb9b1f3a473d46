//! Object stores for replica data.
//!
//! A replica store keeps a group's base images, PIT segments, manifests and
//! journal either in a directory of the replica site or in a bucket of an
//! S3-compatible object store. Both are reached through one small API,
//! [`ObjectStore`], shaped after what S3 guarantees and nothing more:
//!
//! - an object is written whole ([`ObjectStore::put`], [`ObjectStore::put_from`])
//!   and becomes visible only once complete; a reader sees the old object,
//!   the new one or none, never a part (S3 PUT and multipart completion; a
//!   directory's write, fsync, rename and directory fsync);
//! - objects are read whole or by byte range ([`ObjectStore::get_range`]);
//! - keys are listed by prefix in key order ([`ObjectStore::list`]);
//! - there is no rename and no append: a store built on this API makes
//!   things visible by writing a small object last (a manifest) and replaces
//!   an object by writing a new key, then deleting the old one.
//!
//! Keys are relative, `/`-separated, made of `[A-Za-z0-9._-]` segments
//! ([`check_key`]); the store adds its own prefix.
//!
//! Implementations: [`DirStore`] (a local directory; durable means written,
//! fsynced, renamed, directory fsynced) and [`S3Store`] (a bucket of an
//! S3-compatible service: Garage, AWS S3, MinIO, Ceph RGW); [`Sealed`]
//! wraps either with client-side encryption ([`sealed`] documents the
//! format and the key).

use std::fmt;
use std::io::{self, Read};

mod dir;
mod intercept;
mod quick_ack;
mod s3;
pub mod sealed;

pub use crate::dir::DirStore;
pub use crate::intercept::{Intercepted, RangedReadHook};
pub use crate::s3::{
    DEFAULT_PART_SIZE, DEFAULT_RETRY_FOR, S3Config, S3ConfigError, S3Settings, S3Store, S3UrlStyle,
};
pub use crate::sealed::{GroupKey, GroupKeyError, KeyId, Sealed};

/// One object in a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key, relative to the store (as given to [`ObjectStore::put`]).
    pub key: String,
    /// Size in bytes as stored.
    pub size: u64,
}

/// Where replica data lives, as an operator writes it
/// (`authz add --storage-location`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    /// A directory of the replica site (an absolute path).
    Directory(std::path::PathBuf),
    /// `s3://BUCKET/PREFIX`: a bucket of an S3-compatible store; the
    /// endpoint, region and credentials come from the site's configuration.
    S3 {
        /// The bucket's name.
        bucket: String,
        /// The key prefix inside the bucket, without leading or trailing
        /// `/` (may be empty).
        prefix: String,
    },
}

/// Why a storage location was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid storage location {location:?}: {reason}")]
pub struct LocationError {
    /// What the operator gave.
    pub location: String,
    /// What is wrong with it and what to write instead.
    pub reason: &'static str,
}

impl StorageLocation {
    /// Parses an absolute directory path or `s3://BUCKET[/PREFIX]`.
    pub fn parse(text: &str) -> Result<StorageLocation, LocationError> {
        let err = |reason| LocationError {
            location: text.to_string(),
            reason,
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            // S3's bucket naming rules (the common subset every service
            // accepts): 3..=63 of lowercase letters, digits, '-' and '.'.
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                })
                && !bucket.starts_with(['-', '.'])
                && !bucket.ends_with(['-', '.']);
            if !bucket_ok {
                return Err(err(
                    "the bucket name must be 3 to 63 lowercase letters, digits, '-' or '.' (s3://BUCKET/PREFIX)",
                ));
            }
            let prefix = prefix.trim_end_matches('/');
            if !prefix.is_empty() && check_key(prefix).is_err() {
                return Err(err(
                    "the prefix must be '/'-separated segments of letters, digits, '.', '_' or '-'",
                ));
            }
            return Ok(StorageLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.to_string(),
            });
        }
        if text.contains("://") {
            return Err(err(
                "only s3:// URLs and absolute directory paths are storage locations",
            ));
        }
        let path = std::path::Path::new(text);
        if !path.is_absolute() {
            return Err(err("a directory storage location must be an absolute path"));
        }
        Ok(StorageLocation::Directory(path.to_path_buf()))
    }
}

impl fmt::Display for StorageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageLocation::Directory(p) => write!(f, "{}", p.display()),
            StorageLocation::S3 { bucket, prefix } if prefix.is_empty() => {
                write!(f, "s3://{bucket}")
            }
            StorageLocation::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// What went wrong with an object store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ObjectError {
    /// The object does not exist.
    #[error("object {key} does not exist in {store}")]
    NotFound {
        /// The store, as [`ObjectStore::describe`] names it.
        store: String,
        /// The object's key.
        key: String,
    },
    /// The store could not be reached or failed on its side (connection
    /// refused, timeout, HTTP 5xx) after the client's retries: worth
    /// retrying later.
    #[error(
        "{store} is unavailable ({op} {key}): {reason}; check that the object store is running and reachable from this site, then retry"
    )]
    Unavailable {
        /// The store.
        store: String,
        /// The operation (`put`, `get`, `list`, `delete`, …).
        op: &'static str,
        /// The object's key (or prefix for a listing).
        key: String,
        /// What the last attempt got.
        reason: String,
    },
    /// The store refused the request (HTTP 4xx other than not found):
    /// credentials, permissions, a missing bucket. Retrying will not help.
    #[error(
        "{store} refused {op} {key} (HTTP {status}: {message}); check the site's object-store credentials, that the bucket exists and that the key may write to it"
    )]
    Refused {
        /// The store.
        store: String,
        /// The operation.
        op: &'static str,
        /// The object's key.
        key: String,
        /// The HTTP status.
        status: u16,
        /// The store's error code and message.
        message: String,
    },
    /// An object's bytes failed their integrity or authenticity check: it
    /// was changed, truncated or damaged. Its contents are never returned.
    #[error(
        "object {key} in {store} failed its integrity check ({reason}): it was changed or damaged, and is not used; restore it or recover from another point"
    )]
    Tampered {
        /// The store.
        store: String,
        /// The object's key.
        key: String,
        /// What did not match.
        reason: String,
    },
    /// An encrypted object was sealed with another group key than the
    /// one this site holds (the object may be intact: the key is wrong).
    #[error(
        "object {key} in {store} was encrypted with group key {found}, and this site holds key {expected}: import the group's key on this site (`offsite group key import GROUP --key-file FILE`, the line `offsite group key export GROUP` printed where the key is)"
    )]
    WrongKey {
        /// The store.
        store: String,
        /// The object's key.
        key: String,
        /// The key id in the object's header.
        found: String,
        /// The key id of the key this site used.
        expected: String,
    },
    /// A read asked for bytes beyond the object's end.
    #[error("object {key} in {store} has {size} bytes; {want} bytes at {offset} were asked for")]
    ShortObject {
        /// The store.
        store: String,
        /// The object's key.
        key: String,
        /// The object's size.
        size: u64,
        /// The offset asked for.
        offset: u64,
        /// The length asked for.
        want: u64,
    },
    /// A local file-system step failed (a directory store, or a file being
    /// uploaded).
    #[error("{store}: {op} {key}")]
    Io {
        /// The store.
        store: String,
        /// The operation.
        op: &'static str,
        /// The object's key.
        key: String,
        /// The file-system error.
        #[source]
        source: io::Error,
    },
    /// A key outside the rules of [`check_key`] (a bug in the caller).
    #[error(transparent)]
    InvalidKey(#[from] KeyError),
}

impl ObjectError {
    /// Whether this is [`ObjectError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, ObjectError::NotFound { .. })
    }

    /// Whether a later retry may succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Unavailable { .. })
    }
}

/// A key outside the rules.
#[derive(Debug, thiserror::Error)]
#[error("invalid object key {key:?}: {reason}")]
pub struct KeyError {
    /// The key.
    pub key: String,
    /// Which rule it breaks.
    pub reason: &'static str,
}

/// Checks an object key: 1..=1024 bytes of `/`-separated segments, each
/// non-empty, made of `[A-Za-z0-9._-]`, not starting with `.`. The same
/// rules hold for every implementation, so a key valid in a directory is
/// valid in a bucket and needs no escaping in either.
pub fn check_key(key: &str) -> Result<(), KeyError> {
    let err = |reason| {
        Err(KeyError {
            key: key.to_string(),
            reason,
        })
    };
    if key.is_empty() || key.len() > 1024 {
        return err("a key has 1 to 1024 bytes");
    }
    for seg in key.split('/') {
        if seg.is_empty() {
            return err("empty segment (leading, trailing or doubled '/')");
        }
        if seg.starts_with('.') {
            // Also keeps "." and ".." out, and leaves names starting with
            // '.' to the implementations (a directory store's partial files).
            return err("a segment does not start with '.'");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return err("segments are made of letters, digits, '.', '_' and '-'");
        }
    }
    Ok(())
}

/// An object store: whole-object writes, ranged reads, listing by prefix.
///
/// Every method blocks (the replica store runs on its own threads) and is
/// safe to call from several threads at once. Implementations retry
/// transient failures themselves; an error returned is final for that call.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// The store in words for messages (`s3://bucket/prefix at
    /// http://127.0.0.1:3900`, `directory /srv/replicas/g1`).
    fn describe(&self) -> String;

    /// Writes `key` whole, replacing any object of that key. Visible to
    /// readers only once complete, and durable when this returns.
    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError>;

    /// Writes `key` whole from `len` bytes of `src` (large objects: a
    /// multipart upload where the store has one). Same visibility and
    /// durability as [`ObjectStore::put`]; `src` must yield exactly `len`
    /// bytes.
    fn put_from(&self, key: &str, src: &mut dyn Read, len: u64) -> Result<(), ObjectError>;

    /// Reads all of `key`.
    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError>;

    /// Reads exactly `len` bytes of `key` at `offset`
    /// ([`ObjectError::ShortObject`] past the end).
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError>;

    /// The size of `key`, or `None` when it does not exist.
    fn head(&self, key: &str) -> Result<Option<u64>, ObjectError>;

    /// Every object whose key starts with `prefix` (a plain string prefix,
    /// not only whole segments; empty: all), in key order.
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError>;

    /// Deletes `key`; deleting a missing object is not an error (retention
    /// and crash recovery redo deletions).
    fn delete(&self, key: &str) -> Result<(), ObjectError>;

    /// The names one level below `prefix` (empty, or ending with `/`) that
    /// hold objects, in order: `list_prefixes("")` over `g1/store.meta`,
    /// `g1/pits/…` and `g2/store.meta` is `["g1", "g2"]`; objects directly
    /// at that level are not names. Finding a location's groups this way
    /// reads one short listing, not every key of every store. The default
    /// derives it from [`ObjectStore::list`] (correct, but reads every key).
    fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let mut out: Vec<String> = Vec::new();
        for o in self.list(prefix)? {
            let rest = &o.key[prefix.len()..];
            if let Some((name, _)) = rest.split_once('/')
                && out.last().map(String::as_str) != Some(name)
            {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
