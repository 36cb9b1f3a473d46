//! Dialing a partner: [`connect`] (TCP, TLS 1.3 with the partner's pinned
//! fingerprint, hello) and [`connect_with_backoff`] for reconnecting.

use std::io;
use std::time::Duration;

use offsite_protocol::FramedReader;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rustls::AlertDescription;
use rustls::pki_types::ServerName;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::warn;

use crate::error::TransportError;
use crate::handshake::{self, Offer};
use crate::identity::{Fingerprint, Identity};
use crate::peers::PeerName;
use crate::session::{Role, SOCKET_READ_BUFFER, Session, SessionInfo, SessionOptions};
use crate::tls::{self, UnexpectedCertificate};

/// A partner to dial: what `offsite partner add` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partner {
    /// Its site name (must match the name in its hello).
    pub name: PeerName,
    /// `HOST:PORT` of its replication listener.
    pub address: String,
    /// Its pinned certificate fingerprint.
    pub fingerprint: Fingerprint,
}

/// Connects to `partner` as site `our_name` and completes TLS and the hello.
///
/// Errors say what failed: [`TransportError::Unreachable`] /
/// [`TransportError::ConnectTimeout`] (network), [`TransportError::TlsRefused`]
/// (the partner does not know our certificate),
/// [`TransportError::FingerprintMismatch`] (it is not the partner we pinned),
/// [`TransportError::VersionMismatch`], [`TransportError::NameMismatch`], or
/// [`TransportError::RefusedByPeer`] with the partner's reason.
pub async fn connect(
    partner: &Partner,
    identity: &Identity,
    our_name: &str,
    options: &SessionOptions,
) -> Result<Session, TransportError> {
    let result = connect_inner(partner, identity, our_name, options).await;
    if let Err(e) = &result {
        warn!(partner = %partner.name, "cannot open a replication session: {e}");
    }
    result
}

async fn connect_inner(
    partner: &Partner,
    identity: &Identity,
    our_name: &str,
    options: &SessionOptions,
) -> Result<Session, TransportError> {
    let address = partner.address.as_str();
    let socket = match tokio::time::timeout(options.connect_timeout, dial(address)).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(TransportError::ConnectTimeout {
                address: address.to_string(),
                after: options.connect_timeout,
            });
        }
    };
    // Latency only: a socket without it still works.
    let _ = socket.set_nodelay(true);
    let peer_addr = socket
        .peer_addr()
        .map_err(|source| TransportError::Unreachable {
            address: address.to_string(),
            source,
        })?;
    let config =
        tls::client_config(identity, &partner.fingerprint).map_err(TransportError::Config)?;
    let io_error = |e: io::Error| classify(e, partner, identity, our_name);
    let handshake = async {
        // The verifier ignores the name; an IP server name sends no SNI.
        let server_name = ServerName::IpAddress(peer_addr.ip().into());
        let socket = BufReader::with_capacity(SOCKET_READ_BUFFER, socket);
        let tls = TlsConnector::from(config)
            .connect(server_name, socket)
            .await
            .map_err(io_error)?;
        let mut framed = FramedReader::new(tls);
        let offer = Offer {
            our_name,
            versions: options.versions(),
            features: options.offered_features(),
        };
        let check_name = |announced: &str| {
            if announced == partner.name.as_str() {
                Ok(())
            } else {
                Err(TransportError::NameMismatch {
                    fingerprint: partner.fingerprint.clone(),
                    pinned_as: partner.name.to_string(),
                    announced: announced.to_string(),
                })
            }
        };
        let peer = format!("{} ({address})", partner.name);
        let agreed = handshake::exchange(&mut framed, &offer, &peer, check_name, io_error).await?;
        Ok::<_, TransportError>((framed, agreed))
    };
    let (framed, agreed) = tokio::time::timeout(options.handshake_timeout, handshake)
        .await
        .map_err(|_| TransportError::HandshakeTimeout {
            address: address.to_string(),
            after: options.handshake_timeout,
        })??;
    let (stream, read_ahead) = framed.into_parts();
    let info = SessionInfo {
        peer_name: partner.name.clone(),
        peer_fingerprint: partner.fingerprint.clone(),
        peer_addr,
        version: agreed.version,
        features: agreed.features,
        role: Role::Connector,
    };
    Ok(Session::start(stream, read_ahead, info, options))
}

/// Resolves `address` and connects to the first address that answers.
async fn dial(address: &str) -> Result<TcpStream, TransportError> {
    let unreachable = |source| TransportError::Unreachable {
        address: address.to_string(),
        source,
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name resolves to no address");
    for addr in tokio::net::lookup_host(address)
        .await
        .map_err(unreachable)?
    {
        match TcpStream::connect(addr).await {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(unreachable(last))
}

/// Turns a TLS-stream error of a connecting site into the error that names
/// the cause: our certificate refused, theirs not the pinned one, or I/O.
fn classify(
    err: io::Error,
    partner: &Partner,
    identity: &Identity,
    our_name: &str,
) -> TransportError {
    let address = partner.address.clone();
    if let Some(mismatch) = tls::certificate_error::<UnexpectedCertificate>(&err) {
        return TransportError::FingerprintMismatch {
            address,
            expected: mismatch.expected.clone(),
            offered: mismatch.offered.clone(),
        };
    }
    match tls::rustls_error(&err) {
        Some(rustls::Error::AlertReceived(
            alert @ (AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRequired
            | AlertDescription::UnsupportedCertificate),
        )) => TransportError::TlsRefused {
            address,
            our_name: our_name.to_string(),
            our_fingerprint: identity.fingerprint().clone(),
            alert: format!("TLS alert {alert:?}"),
        },
        Some(other) => TransportError::Tls {
            address,
            source: other.clone(),
        },
        None => TransportError::Io {
            peer: format!("{} ({address})", partner.name),
            source: err,
        },
    }
}

/// Exponential backoff with a cap and jitter, from a seeded RNG so that
/// tests (and incident replays) see the same delays.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    rng: StdRng,
}

impl Backoff {
    /// Delays start at `initial`, double per failure up to `max`; each is
    /// drawn uniformly from its upper half ("equal jitter"), so partners
    /// that lost each other at the same time do not retry in lockstep.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        let initial = initial.max(Duration::from_millis(1));
        Self {
            initial,
            max: max.max(initial),
            next: initial,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// [`Backoff::new`] with a random seed.
    pub fn with_random_seed(initial: Duration, max: Duration) -> Self {
        Self::new(initial, max, rand::random())
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(self.rng.random::<f64>())
    }

    /// Back to `initial`, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Connects to `partner`, retrying with `backoff` after each failure (each
/// one logged) until it succeeds or `max_attempts` (if any) have failed;
/// then returns the last error. Cancel it by dropping the future.
pub async fn connect_with_backoff(
    partner: &Partner,
    identity: &Identity,
    our_name: &str,
    options: &SessionOptions,
    backoff: &mut Backoff,
    max_attempts: Option<u32>,
) -> Result<Session, TransportError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match connect(partner, identity, our_name, options).await {
            Ok(session) => {
                backoff.reset();
                return Ok(session);
            }
            Err(e) if max_attempts.is_some_and(|max| attempt >= max) => return Err(e),
            Err(_) => {
                let delay = backoff.next_delay();
                warn!(partner = %partner.name, attempt, "retrying in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 7);
        let delays: Vec<_> = (0..8).map(|_| backoff.next_delay()).collect();
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                *delay >= ceiling / 2 && *delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
        }
        // Seeded: the same seed gives the same delays.
        let mut again = Backoff::new(Duration::from_millis(100), Duration::from_secs(2), 7);
        assert_eq!(
            (0..8).map(|_| again.next_delay()).collect::<Vec<_>>(),
            delays
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }
}
