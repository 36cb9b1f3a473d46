//! A store that hands every ranged read of another store to a function
//! first: tests count, slow down, overlap or fail reads with it (how many
//! requests a cold read of a sealed object makes, whether a cache fetches
//! a window once), without a store of their own that forwards every call.

use std::fmt;
use std::io::Read;

use crate::{ObjectError, ObjectInfo, ObjectStore};

/// What [`Intercepted`] calls for a ranged read: the key, offset and
/// length, and the read itself, to run (or not) when it decides.
pub type RangedReadHook = dyn Fn(&str, u64, u64, &dyn Fn() -> Result<Vec<u8>, ObjectError>) -> Result<Vec<u8>, ObjectError>
    + Send
    + Sync;

/// `inner` with its ranged reads passed through a hook; every other call
/// goes straight to `inner`.
pub struct Intercepted<S> {
    inner: S,
    hook: Box<RangedReadHook>,
}

impl<S: ObjectStore> Intercepted<S> {
    /// `inner` whose [`ObjectStore::get_range`] calls go through `hook`.
    pub fn new(inner: S, hook: Box<RangedReadHook>) -> Intercepted<S> {
        Intercepted { inner, hook }
    }
}

impl<S: fmt::Debug> fmt::Debug for Intercepted<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Intercepted")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S: ObjectStore> ObjectStore for Intercepted<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        self.inner.put(key, data)
    }

    fn put_from(&self, key: &str, src: &mut dyn Read, len: u64) -> Result<(), ObjectError> {
        self.inner.put_from(key, src, len)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        self.inner.get(key)
    }

    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        (self.hook)(key, offset, len, &|| self.inner.get_range(key, offset, len))
    }

    fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        self.inner.head(key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        self.inner.list(prefix)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.inner.delete(key)
    }

    fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        self.inner.list_prefixes(prefix)
    }
}
