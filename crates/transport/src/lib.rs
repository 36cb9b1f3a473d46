//! The secure replication channel between sites: TLS 1.3 with mutual
//! authentication by pinned certificate fingerprints, the hello exchange
//! (version negotiation, site names), and [`Session`]s that carry
//! `offsite-protocol` messages with keepalive, RTT, zstd and bandwidth
//! limits.
//!
//! - [`Identity`] / [`fingerprint`]: a site's key pair and what partners pin.
//! - [`PinnedPeers`]: which certificates the listener accepts, as which partner.
//! - [`Listener`] / [`run()`]: the replication listener (mini-redis shape).
//! - [`connect()`] / [`connect_with_backoff`]: dial a [`Partner`].
//! - [`Session`]: send and receive messages; [`TokenBucket`] limits bulk.
//! - [`throughput_test`] / [`serve_throughput_test`]: `offsite partner test`.
//!
//! The message flow is drawn in `offsite-protocol`'s docs, the session
//! states in [`session`](Session).

mod bucket;
mod connect;
mod direct;
mod error;
mod handshake;
mod identity;
mod listener;
mod peers;
mod session;
mod stall;
mod throughput;
pub mod tls;

pub use bucket::TokenBucket;
pub use connect::{Backoff, Partner, connect, connect_with_backoff};
pub use direct::DirectStream;
pub use error::TransportError;
pub use identity::{
    FINGERPRINT_PREFIX, Fingerprint, Identity, IdentityError, InvalidFingerprint, fingerprint,
};
pub use listener::{
    Listener, ListenerConfig, ListenerStats, REFUSAL_LOG_WINDOW, RefusalReason,
    SessionOptionsHandle, run,
};
pub use peers::{InvalidPeerName, PeerName, PeerTable, PinnedPeers};
pub use session::{Role, Session, SessionInfo, SessionOptions, SessionSender};
pub use throughput::{ThroughputReport, serve_throughput_test, throughput_test};
