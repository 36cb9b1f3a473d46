//! The replication listener, shaped like mini-redis's server: [`run`] takes
//! a bound `TcpListener` and a shutdown future; a semaphore bounds the
//! connections; each connection runs in its own task (TLS, hello, then the
//! caller's handler); shutdown is broadcast to the connection tasks and
//! `run` returns once all of them have finished (drop-sender completion).
//!
//! ```text
//! accept ─► permit (max_connections) ─► TLS 1.3 accept ──refused──► count; log once per IP and reason a minute; linger; close
//!                                           │ok (client certificate pinned)
//!                                           ▼
//!                                     hello exchange ──refused──► HelloRefuse to the peer; count; log; close
//!                                           │ok
//!                                           ▼
//!                                  handler(Session) ◄── shutdown: handler dropped, session closed
//! ```
//!
//! Connections that fail TLS are logged at most once per source IP and
//! [`RefusalReason`] per [`REFUSAL_LOG_WINDOW`] (with the offered
//! fingerprint, when there is one, and how many were not logged since), so
//! a scanner cannot fill the disk, yet a refusal for a new reason (say an
//! unpinned certificate after a client without one) is never hidden behind
//! an earlier one; [`ListenerStats`] counts every one.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use offsite_protocol::FramedReader;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::error::TransportError;
use crate::handshake::{self, Offer};
use crate::identity::{Fingerprint, Identity};
use crate::peers::PinnedPeers;
use crate::session::{Role, SOCKET_READ_BUFFER, Session, SessionInfo, SessionOptions};
use crate::tls::{self, NotPinned};

/// At most one log line per source IP and refusal reason per this window
/// for refused TLS handshakes.
pub const REFUSAL_LOG_WINDOW: Duration = Duration::from_secs(60);
/// Source IPs remembered for rate limiting; beyond that, new IPs are not
/// logged until old entries expire (only counted).
const REFUSAL_LOG_MAX_SOURCES: usize = 1024;
/// How long a refused connection is drained before closing, so the TLS
/// alert reaches the client instead of being lost to a TCP reset.
const LINGER: Duration = Duration::from_secs(1);

/// What the listener needs to know.
#[derive(Clone)]
pub struct ListenerConfig {
    /// Our site name, announced in our hello.
    pub site_name: String,
    /// Our TLS identity.
    pub identity: Identity,
    /// Which client certificates are accepted, and as which partner.
    pub peers: Arc<dyn PinnedPeers>,
    /// Timeouts, keepalive, compression and bandwidth of accepted sessions.
    pub session: SessionOptions,
    /// Connections served at once (handshaking or in session); more wait in
    /// the kernel's accept queue.
    pub max_connections: usize,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("site_name", &self.site_name)
            .field("identity", &self.identity)
            .field("session", &self.session)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl ListenerConfig {
    /// Default session options and a limit of 64 connections.
    pub fn new(
        site_name: impl Into<String>,
        identity: Identity,
        peers: Arc<dyn PinnedPeers>,
    ) -> Self {
        Self {
            site_name: site_name.into(),
            identity,
            peers,
            session: SessionOptions::default(),
            max_connections: 64,
        }
    }
}

/// Counters of a listener, for metrics and tests.
#[derive(Debug, Default)]
pub struct ListenerStats {
    connections: AtomicU64,
    tls_refused: AtomicU64,
    refusals_not_logged: AtomicU64,
    hello_failed: AtomicU64,
    sessions: AtomicU64,
}

impl ListenerStats {
    /// TCP connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
    /// TLS handshakes that failed or were refused (unpinned certificate, garbage, timeout).
    pub fn tls_refused(&self) -> u64 {
        self.tls_refused.load(Ordering::Relaxed)
    }
    /// Refused handshakes not logged because of the rate limit.
    pub fn refusals_not_logged(&self) -> u64 {
        self.refusals_not_logged.load(Ordering::Relaxed)
    }
    /// Hello exchanges that failed (version or name mismatch, bad frames).
    pub fn hello_failed(&self) -> u64 {
        self.hello_failed.load(Ordering::Relaxed)
    }
    /// Sessions handed to the handler.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }
}

/// Why a connection was refused before a session existed. Each reason is
/// rate-limited on its own, so one kind of refusal never hides another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// A client certificate no partner is pinned with (self-signed
    /// certificates of strangers, or a partner's new key).
    NotPinned,
    /// The client presented no certificate.
    NoCertificate,
    /// A certificate or handshake signature that does not verify.
    BadCertificate,
    /// No common protocol version or cipher suite (e.g. a TLS 1.2 client).
    Incompatible,
    /// Bytes that are not a TLS handshake.
    NotTls,
    /// The client closed or reset the connection during the handshake.
    Closed,
    /// The handshake did not complete in time.
    Timeout,
    /// Any other TLS failure.
    Other,
}

impl RefusalReason {
    /// Classifies a failed TLS accept.
    fn of(err: &std::io::Error) -> RefusalReason {
        use rustls::{CertificateError, Error as E};
        match tls::rustls_error(err) {
            Some(E::InvalidCertificate(CertificateError::Other(_)))
                if tls::certificate_error::<NotPinned>(err).is_some() =>
            {
                RefusalReason::NotPinned
            }
            Some(E::NoCertificatesPresented) => RefusalReason::NoCertificate,
            Some(E::InvalidCertificate(_)) => RefusalReason::BadCertificate,
            Some(E::PeerIncompatible(_)) => RefusalReason::Incompatible,
            Some(E::InvalidMessage(_) | E::InappropriateHandshakeMessage { .. }) => {
                RefusalReason::NotTls
            }
            Some(_) => RefusalReason::Other,
            None => match err.kind() {
                std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe => RefusalReason::Closed,
                std::io::ErrorKind::InvalidData => RefusalReason::NotTls,
                _ => RefusalReason::Other,
            },
        }
    }
}

/// The rate limiter of refusal log lines: one per source IP and reason per
/// window.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    window: Duration,
    max_sources: usize,
    /// Per IP and reason: when its last line was logged, refusals since not
    /// logged.
    sources: HashMap<(IpAddr, RefusalReason), (Instant, u64)>,
}

impl RefusalLog {
    pub(crate) fn new(window: Duration, max_sources: usize) -> Self {
        Self {
            window,
            max_sources,
            sources: HashMap::new(),
        }
    }

    /// `Some(n)`: log this refusal, mentioning `n` earlier ones from the same
    /// IP for the same reason that were not logged. `None`: only count it.
    pub(crate) fn admit(&mut self, ip: IpAddr, reason: RefusalReason, now: Instant) -> Option<u64> {
        let key = (ip, reason);
        if let Some((logged_at, skipped)) = self.sources.get_mut(&key) {
            if now.saturating_duration_since(*logged_at) < self.window {
                *skipped += 1;
                return None;
            }
            let skipped = std::mem::take(skipped);
            *logged_at = now;
            return Some(skipped);
        }
        if self.sources.len() >= self.max_sources {
            let window = self.window;
            self.sources
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < window);
            if self.sources.len() >= self.max_sources {
                return None;
            }
        }
        self.sources.insert(key, (now, 0));
        Some(0)
    }
}

/// The session options of a listener's future sessions, changeable while
/// it runs (a daemon's reload of its timers); sessions already open keep
/// the options they started with.
#[derive(Debug, Clone)]
pub struct SessionOptionsHandle(Arc<std::sync::RwLock<SessionOptions>>);

impl SessionOptionsHandle {
    /// Options for connections accepted from now on.
    pub fn set(&self, options: SessionOptions) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = options;
    }

    fn get(&self) -> SessionOptions {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

struct Inner {
    site_name: String,
    peers: Arc<dyn PinnedPeers>,
    options: SessionOptionsHandle,
    acceptor: TlsAcceptor,
    stats: Arc<ListenerStats>,
    refusals: Mutex<RefusalLog>,
}

/// A configured listener; [`Listener::run`] serves it.
pub struct Listener {
    inner: Arc<Inner>,
    max_connections: usize,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("site_name", &self.inner.site_name)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Builds the TLS configuration from `config`.
    pub fn new(config: ListenerConfig) -> Result<Self, TransportError> {
        let server = tls::server_config(&config.identity, config.peers.clone())
            .map_err(TransportError::Config)?;
        Ok(Self {
            inner: Arc::new(Inner {
                site_name: config.site_name,
                peers: config.peers,
                options: SessionOptionsHandle(Arc::new(std::sync::RwLock::new(config.session))),
                acceptor: TlsAcceptor::from(server),
                stats: Arc::default(),
                refusals: Mutex::new(RefusalLog::new(REFUSAL_LOG_WINDOW, REFUSAL_LOG_MAX_SOURCES)),
            }),
            max_connections: config.max_connections.max(1),
        })
    }

    /// Changes the options of sessions accepted from now on.
    pub fn session_options(&self) -> SessionOptionsHandle {
        self.inner.options.clone()
    }

    /// The listener's counters (live).
    pub fn stats(&self) -> Arc<ListenerStats> {
        self.inner.stats.clone()
    }

    /// Accepts connections on `listener` and hands each established session
    /// to `handler` (whose output is ignored), until `shutdown` completes; then stops accepting, drops
    /// every handler (closing its session) and returns when all connection
    /// tasks are done.
    pub async fn run<H, F>(self, listener: TcpListener, handler: H, shutdown: impl Future)
    where
        H: Fn(Session) -> F + Send + Sync + 'static,
        F: Future + Send + 'static,
    {
        let (notify_shutdown, _) = broadcast::channel::<()>(1);
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let handler = Arc::new(handler);
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, site = %self.inner.site_name, "replication listener serving");
        }
        let accept_loop = async {
            loop {
                let permit = limit
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                let (socket, addr) = match accept(&listener).await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        error!("replication listener stopped accepting: {e}");
                        return;
                    }
                };
                let inner = self.inner.clone();
                let handler = handler.clone();
                let mut shutdown_rx = notify_shutdown.subscribe();
                let done = done_tx.clone();
                let span = info_span!("replication connection", peer = %addr);
                tokio::spawn(
                    async move {
                        tokio::select! {
                            () = inner.serve(socket, addr, handler) => {}
                            _ = shutdown_rx.recv() => debug!("closing at shutdown"),
                        }
                        drop(permit);
                        drop(done);
                    }
                    .instrument(span),
                );
            }
        };
        tokio::select! {
            () = accept_loop => {}
            _ = shutdown => info!("replication listener shutting down"),
        }
        drop(notify_shutdown);
        drop(done_tx);
        // Returns `None` once every connection task has dropped its sender:
        // that is the wait.
        let _ = done_rx.recv().await;
    }
}

/// Accepts with a short pause on transient errors (out of file descriptors),
/// as mini-redis does; gives up after a few seconds of failures.
async fn accept(listener: &TcpListener) -> std::io::Result<(TcpStream, SocketAddr)> {
    let mut pause = Duration::from_millis(50);
    loop {
        match listener.accept().await {
            Ok(accepted) => return Ok(accepted),
            Err(e) if pause > Duration::from_secs(4) => return Err(e),
            Err(e) => {
                warn!("accept failed, retrying in {pause:?}: {e}");
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
        }
    }
}

/// Serves the listener on `listener` with `config` (see [`Listener::run`]).
pub async fn run<H, F>(
    listener: TcpListener,
    config: ListenerConfig,
    handler: H,
    shutdown: impl Future,
) -> Result<(), TransportError>
where
    H: Fn(Session) -> F + Send + Sync + 'static,
    F: Future + Send + 'static,
{
    Listener::new(config)?
        .run(listener, handler, shutdown)
        .await;
    Ok(())
}

impl Inner {
    async fn serve<H, F>(self: Arc<Self>, socket: TcpStream, addr: SocketAddr, handler: Arc<H>)
    where
        H: Fn(Session) -> F,
        F: Future,
    {
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        // Latency only: a socket without it still works.
        let _ = socket.set_nodelay(true);
        let options = self.options.get();
        let limit = options.handshake_timeout;
        let session =
            match tokio::time::timeout(limit, self.establish(socket, addr, &options)).await {
                Ok(Some(session)) => session,
                Ok(None) => return,
                Err(_) => {
                    self.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
                    self.log_refusal(
                        addr,
                        RefusalReason::Timeout,
                        None,
                        &format!("handshake not completed within {limit:?}"),
                    );
                    return;
                }
            };
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        info!(
            partner = %session.info().peer_name,
            version = %session.info().version,
            features = ?session.info().features,
            "replication session established"
        );
        // The handler's result is its own business (sessions log their errors).
        let _ = handler(session).await;
    }

    /// TLS, then hello. `None` if refused (already counted and logged).
    async fn establish(
        &self,
        socket: TcpStream,
        addr: SocketAddr,
        options: &SessionOptions,
    ) -> Option<Session> {
        let socket = BufReader::with_capacity(SOCKET_READ_BUFFER, socket);
        let tls = match self.acceptor.accept(socket).into_fallible().await {
            Ok(tls) => tls,
            Err((e, socket)) => {
                self.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
                let offered = tls::certificate_error::<NotPinned>(&e).map(|n| n.offered.clone());
                self.log_refusal(
                    addr,
                    RefusalReason::of(&e),
                    offered.as_ref(),
                    &e.to_string(),
                );
                linger(socket.into_inner()).await;
                return None;
            }
        };
        let Some(fingerprint) = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .map(|cert| Fingerprint::of_der(cert))
        else {
            // Unreachable: the verifier requires a certificate.
            self.stats.tls_refused.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let peer = format!("{addr} ({fingerprint})");
        let mut framed = FramedReader::new(tls);
        let pinned = self.peers.lookup(&fingerprint);
        let offer = Offer {
            our_name: &self.site_name,
            versions: options.versions(),
            features: options.offered_features(),
        };
        let check_name = |announced: &str| match &pinned {
            Some(name) if name.as_str() == announced => Ok(()),
            Some(name) => Err(TransportError::NameMismatch {
                fingerprint: fingerprint.clone(),
                pinned_as: name.to_string(),
                announced: announced.to_string(),
            }),
            // Unpinned between the TLS handshake and now.
            None => Err(TransportError::NameMismatch {
                fingerprint: fingerprint.clone(),
                pinned_as: "(no partner any more)".into(),
                announced: announced.to_string(),
            }),
        };
        let io_error = |source| TransportError::Io {
            peer: peer.clone(),
            source,
        };
        let agreed = handshake::exchange(&mut framed, &offer, &peer, check_name, io_error).await;
        let (agreed, peer_name) = match (agreed, pinned) {
            (Ok(agreed), Some(name)) => (agreed, name),
            (Ok(_), None) => return None,
            (Err(e), _) => {
                self.stats.hello_failed.fetch_add(1, Ordering::Relaxed);
                warn!(%fingerprint, "refused replication session from {addr}: {e}");
                return None;
            }
        };
        let (stream, read_ahead) = framed.into_parts();
        let info = SessionInfo {
            peer_name,
            peer_fingerprint: fingerprint,
            peer_addr: addr,
            version: agreed.version,
            features: agreed.features,
            role: Role::Listener,
        };
        Some(Session::start(stream, read_ahead, info, options))
    }

    fn log_refusal(
        &self,
        addr: SocketAddr,
        kind: RefusalReason,
        offered: Option<&Fingerprint>,
        reason: &str,
    ) {
        let admitted = self
            .refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(addr.ip(), kind, Instant::now());
        let Some(skipped) = admitted else {
            self.stats
                .refusals_not_logged
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let since = if skipped > 0 {
            format!(" ({skipped} more from this address for this reason not logged)")
        } else {
            String::new()
        };
        match offered {
            Some(fingerprint) => warn!(
                %fingerprint,
                "refused replication connection from {addr}: certificate {fingerprint} is not pinned for any partner; if {addr} is a partner site, pair it here with `offsite partner add NAME --address HOST:PORT --fingerprint {fingerprint}`{since}"
            ),
            None if kind == RefusalReason::NoCertificate => warn!(
                "refused replication connection from {addr}: the client presented no certificate (offsite sites always do; something else is connecting to the replication port){since}"
            ),
            None => warn!(
                ?kind,
                "refused replication connection from {addr}: {reason}{since}"
            ),
        }
    }
}

/// Closes a refused connection gently: our alert is already written; stop
/// writing, read what the client still sends (briefly), then close. Closing
/// with unread bytes would reset the connection and could destroy the alert
/// before the client reads it.
async fn linger(mut socket: TcpStream) {
    // Best effort throughout: the connection is being dropped anyway.
    let _ = socket.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut total = 0usize;
        while total < (64 << 10) {
            match socket.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_once_per_ip_and_reason_per_window() {
        use RefusalReason::{NoCertificate as NoCert, NotPinned};
        let mut log = RefusalLog::new(Duration::from_secs(60), 4);
        let t0 = Instant::now();
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        assert_eq!(log.admit(ip(1), NoCert, t0), Some(0));
        for s in 1..=10 {
            assert_eq!(log.admit(ip(1), NoCert, t0 + Duration::from_secs(s)), None);
        }
        // Another reason from the same address is logged on its own.
        assert_eq!(
            log.admit(ip(1), NotPinned, t0 + Duration::from_secs(5)),
            Some(0)
        );
        assert_eq!(
            log.admit(ip(1), NotPinned, t0 + Duration::from_secs(6)),
            None
        );
        assert_eq!(log.admit(ip(2), NoCert, t0), Some(0));
        assert_eq!(
            log.admit(ip(1), NoCert, t0 + Duration::from_secs(61)),
            Some(10)
        );
        assert_eq!(log.admit(ip(1), NoCert, t0 + Duration::from_secs(62)), None);
        // The table is bounded: a fourth entry fits, a fifth is only counted
        // until old entries expire.
        assert_eq!(
            log.admit(ip(3), NoCert, t0 + Duration::from_secs(30)),
            Some(0)
        );
        assert_eq!(log.admit(ip(4), NoCert, t0 + Duration::from_secs(30)), None);
        assert_eq!(
            log.admit(ip(4), NoCert, t0 + Duration::from_secs(100)),
            Some(0)
        );
    }
}
