//! Who may connect: the fingerprint → partner-name pins the caller supplies.

use std::collections::HashMap;
use std::fmt;
use std::sync::{PoisonError, RwLock};

use offsite_protocol::MAX_NAME_LEN;
use thiserror::Error;

use crate::identity::Fingerprint;

/// A partner site's name, as pinned locally and announced in its hello.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerName(String);

/// A name that cannot be a site name on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid site name {0:?}: 1 to 255 bytes, no control characters")]
pub struct InvalidPeerName(pub String);

impl PeerName {
    /// Checks the wire limits (1..=255 bytes, no control characters); the
    /// engine applies its own stricter naming rules before this.
    pub fn new(name: impl Into<String>) -> Result<Self, InvalidPeerName> {
        let name = name.into();
        if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(char::is_control) {
            return Err(InvalidPeerName(name));
        }
        Ok(Self(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// The partners whose certificates this site accepts, by fingerprint.
/// Consulted on every incoming TLS handshake, so a partner added or removed
/// takes effect on the next connection (sessions already up stay up).
///
/// Implemented by [`PeerTable`], by closures, and by the engine over its
/// partner table.
pub trait PinnedPeers: Send + Sync + 'static {
    /// The partner pinned with this certificate fingerprint, if any.
    fn lookup(&self, fingerprint: &Fingerprint) -> Option<PeerName>;
}

impl<F> PinnedPeers for F
where
    F: Fn(&Fingerprint) -> Option<PeerName> + Send + Sync + 'static,
{
    fn lookup(&self, fingerprint: &Fingerprint) -> Option<PeerName> {
        self(fingerprint)
    }
}

/// An in-memory [`PinnedPeers`]: fingerprint → name.
#[derive(Debug, Default)]
pub struct PeerTable {
    pins: RwLock<HashMap<Fingerprint, PeerName>>,
}

impl PeerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Pins `fingerprint` for partner `name` (replacing an older pin of it).
    pub fn pin(&self, name: PeerName, fingerprint: Fingerprint) {
        self.pins
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(fingerprint, name);
    }

    /// Removes every pin of partner `name`; returns how many there were.
    pub fn remove(&self, name: &PeerName) -> usize {
        let mut pins = self.pins.write().unwrap_or_else(PoisonError::into_inner);
        let before = pins.len();
        pins.retain(|_, pinned| pinned != name);
        before - pins.len()
    }
}

impl PinnedPeers for PeerTable {
    fn lookup(&self, fingerprint: &Fingerprint) -> Option<PeerName> {
        self.pins
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(fingerprint)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::fingerprint;

    #[test]
    fn names_are_checked() {
        assert!(PeerName::new("beta.example.com").is_ok());
        for bad in [String::new(), "a\nb".into(), "x".repeat(256)] {
            assert!(PeerName::new(bad).is_err());
        }
    }

    #[test]
    fn table_pins_and_removes() {
        let table = PeerTable::new();
        let (a, b) = (fingerprint(b"a"), fingerprint(b"b"));
        let beta = PeerName::new("beta").unwrap();
        table.pin(beta.clone(), a.clone());
        table.pin(beta.clone(), b.clone());
        assert_eq!(table.lookup(&a), Some(beta.clone()));
        assert_eq!(table.remove(&beta), 2);
        assert_eq!(table.lookup(&b), None);

        let closure = move |fp: &Fingerprint| (fp == &a).then(|| beta.clone());
        assert!(closure.lookup(&fingerprint(b"a")).is_some());
    }
}
