//! Protocol versions and their negotiation.

use std::fmt;
use std::ops::RangeInclusive;

use thiserror::Error;

/// Every version of the site-to-site protocol, oldest first. This enum is the
/// changelog: a new message, field or meaning gets a new version and a doc
/// line here, and the golden-bytes fixtures of the old version stay.
///
/// What never changes across versions: the frame layout (length prefix, tag,
/// flags, header length, trailing CRC32C) and the `Hello`, `HelloAccept` and
/// `HelloRefuse` headers, because two sites have to read each other's hello
/// before they know which version they share.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageVersion {
    /// Issue 3: hello/accept/refuse, ping/pong, error, bye, bulk data and
    /// acks (the partner throughput test), and generic `Request`/`Response`
    /// messages whose `kind` numbers later versions define. Replication
    /// and recovery plans defined kinds 1–20 and 40–42 with JSON bodies and
    /// free-text refusals (`{"error": TEXT}`) within v1.
    V1 = 1,
    /// Issue 18: the control plane is typed (`offsite_replication::control`, whose
    /// changelog table lists every request kind with its body and reply);
    /// a refused request's body carries a stable code besides its text,
    /// `{"error": TEXT, "code": CODE}`. Frames, bodies and replies are
    /// otherwise those of v1, so a v1 peer (which ignores `code`) is served
    /// and asked unchanged, and a v1 refusal without `code` reads as the
    /// generic code `refused`. Added within v2 as optional kinds (an older
    /// v2 peer refuses them as unsupported, or is never sent them):
    /// `SITE_QUERY` (21); issue 19's journal, `SYNC_CHECKPOINT` (22, on a
    /// sync stream, sent only to a replica whose answer to
    /// `SYNC_STREAM_BEGIN` says it takes checkpoints) and `JOURNAL_QUERY`
    /// (23).
    V2 = 2,
}

impl MessageVersion {
    /// The newest version this build speaks.
    pub const CURRENT: Self = Self::V2;

    /// The number sent on the wire.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The version numbered `v`, if this build knows it.
    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            _ => None,
        }
    }
}

impl fmt::Display for MessageVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.as_u16())
    }
}

/// The versions this build speaks, offered in every `Hello`. When a version
/// is added, keep the previous one here for at least one release so that
/// sites can be upgraded one at a time.
pub const SUPPORTED_VERSIONS: RangeInclusive<u16> = 1..=2;

/// Two sites have no protocol version in common.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error(
    "no common protocol version: this site speaks {}..={}, the peer speaks {}..={}; upgrade the older site",
    ours.start(), ours.end(), theirs.start(), theirs.end()
)]
pub struct VersionMismatch {
    /// The range we offered.
    pub ours: RangeInclusive<u16>,
    /// The range the peer offered.
    pub theirs: RangeInclusive<u16>,
}

/// Picks the highest version both ranges contain. Both sides of a connection
/// run this on the same two ranges, so they agree without another round trip.
pub fn negotiate(
    ours: RangeInclusive<u16>,
    theirs: RangeInclusive<u16>,
) -> Result<u16, VersionMismatch> {
    let low = (*ours.start()).max(*theirs.start());
    let high = (*ours.end()).min(*theirs.end());
    if low <= high && low > 0 {
        Ok(high)
    } else {
        Err(VersionMismatch { ours, theirs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_highest_common_version() {
        assert_eq!(negotiate(1..=3, 2..=5), Ok(3));
        assert_eq!(negotiate(2..=5, 1..=3), Ok(3));
        assert_eq!(negotiate(1..=1, 1..=1), Ok(1));
        assert_eq!(negotiate(1..=9, 4..=4), Ok(4));
    }

    #[test]
    fn disjoint_or_empty_ranges_do_not_negotiate() {
        let err = negotiate(1..=1, 2..=3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no common protocol version: this site speaks 1..=1, the peer speaks 2..=3; \
             upgrade the older site"
        );
        assert!(negotiate(RangeInclusive::new(3, 1), 1..=3).is_err());
        assert!(negotiate(0..=0, 0..=0).is_err());
    }

    #[test]
    fn supported_versions_are_known() {
        for v in SUPPORTED_VERSIONS {
            assert_eq!(
                MessageVersion::from_u16(v).map(MessageVersion::as_u16),
                Some(v)
            );
        }
        assert_eq!(MessageVersion::CURRENT.as_u16(), *SUPPORTED_VERSIONS.end());
        assert_eq!(MessageVersion::from_u16(0), None);
    }
}
