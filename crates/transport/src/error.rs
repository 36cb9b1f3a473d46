//! [`TransportError`]: what can go wrong between two sites, phrased so the
//! operator knows what to check.

use std::io;
use std::time::Duration;

use offsite_protocol::{ErrorCode, MessageTag, ProtocolError, RefuseCode, VersionMismatch};
use thiserror::Error;

use crate::identity::Fingerprint;

/// Connecting to, accepting from, or talking with a partner site failed.
#[derive(Debug, Error)]
pub enum TransportError {
    /// No TCP connection could be made (name resolution, refused, unreachable).
    #[error("cannot reach {address}: {source}")]
    Unreachable {
        /// The address tried.
        address: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The TCP connection did not complete in time.
    #[error("cannot reach {address}: no answer within {after:?}")]
    ConnectTimeout {
        /// The address tried.
        address: String,
        /// The connect timeout.
        after: Duration,
    },
    /// TLS and hello did not complete in time.
    #[error("handshake with {address} did not complete within {after:?}")]
    HandshakeTimeout {
        /// The peer.
        address: String,
        /// The handshake timeout.
        after: Duration,
    },
    /// The partner refused our certificate during the TLS handshake: it has
    /// not pinned our fingerprint (not paired, or paired with an old key).
    #[error(
        "{address} refused this site's certificate {our_fingerprint} ({alert}); on that site, pair with this one: `offsite partner add {our_name} --address ... --fingerprint {our_fingerprint}`"
    )]
    TlsRefused {
        /// The partner's address.
        address: String,
        /// The name we announced.
        our_name: String,
        /// The fingerprint we offered.
        our_fingerprint: Fingerprint,
        /// The TLS alert received.
        alert: String,
    },
    /// The partner presented a certificate other than the pinned one.
    #[error(
        "{address} presented certificate {offered}, but {expected} is pinned for this partner; if the partner site was re-created, remove and re-add it with `offsite partner add` and the new fingerprint (`offsite site show` on that site)"
    )]
    FingerprintMismatch {
        /// The partner's address.
        address: String,
        /// The pinned fingerprint.
        expected: Fingerprint,
        /// What the peer presented.
        offered: Fingerprint,
    },
    /// Some other TLS failure.
    #[error("TLS with {address} failed: {source}")]
    Tls {
        /// The peer.
        address: String,
        /// The TLS error.
        #[source]
        source: rustls::Error,
    },
    /// The two sites share no protocol version.
    #[error(transparent)]
    VersionMismatch(#[from] VersionMismatch),
    /// The peer calls itself by another name than the one pinned for it.
    #[error(
        "certificate {fingerprint} is pinned for partner '{pinned_as}', but the peer calls itself '{announced}'; check the partner's name with `offsite partner list` here and `offsite site show` there"
    )]
    NameMismatch {
        /// The peer's certificate.
        fingerprint: Fingerprint,
        /// The partner name pinned for it.
        pinned_as: String,
        /// The name in its hello.
        announced: String,
    },
    /// The peer refused our hello.
    #[error("{peer} refused the session ({code:?}): {message}")]
    RefusedByPeer {
        /// The peer.
        peer: String,
        /// Its reason.
        code: RefuseCode,
        /// Its explanation.
        message: String,
    },
    /// The peer's `HelloAccept` contradicts what both hellos imply (a bug on one side).
    #[error("{peer} accepted different terms: {detail}")]
    Disagreement {
        /// The peer.
        peer: String,
        /// Both sides' terms.
        detail: String,
    },
    /// Nothing was received from the peer (not even a keepalive) for the
    /// `dead_after` timeout, or it stopped taking our bytes for that long.
    #[error("peer {peer} is dead: silent for {silent_for:?}")]
    PeerDead {
        /// The peer.
        peer: String,
        /// The timeout that expired.
        silent_for: Duration,
    },
    /// The peer sent bytes that are not a valid frame; the session is closed.
    #[error("malformed frame from {peer}: {source}")]
    Protocol {
        /// The peer.
        peer: String,
        /// What was wrong.
        #[source]
        source: ProtocolError,
    },
    /// A valid message that makes no sense at this point of the session.
    #[error("unexpected {got} from {peer} (expected {expected})")]
    UnexpectedMessage {
        /// The peer.
        peer: String,
        /// What we waited for.
        expected: &'static str,
        /// What came.
        got: MessageTag,
    },
    /// The peer reported a fatal error and closed.
    #[error("{peer} reported an error ({code:?}): {message}")]
    PeerError {
        /// The peer.
        peer: String,
        /// Its error code.
        code: ErrorCode,
        /// Its explanation.
        message: String,
    },
    /// A message we tried to send is invalid (a field too long, a payload too large).
    #[error("cannot encode message: {0}")]
    Encode(#[source] ProtocolError),
    /// The connection failed.
    #[error("connection with {peer} failed: {source}")]
    Io {
        /// The peer.
        peer: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The session is closed (by us, by the peer's `Bye`, or after an error).
    #[error("session closed")]
    Closed,
    /// TLS configuration from the local identity failed.
    #[error("cannot configure TLS: {0}")]
    Config(#[source] rustls::Error),
}
