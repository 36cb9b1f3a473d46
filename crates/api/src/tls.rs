//! HTTPS on the API listener (`[api_tls]`): a listener that hands axum
//! connections whose TLS handshake is done.
//!
//! axum serves any [`axum::serve::Listener`], so TLS is a listener rather
//! than a second server loop: `axum::serve` keeps doing what it does over
//! plain TCP — one task per connection (HTTP/1.1 and upgrades through
//! hyper-util's auto builder), the graceful shutdown that stops accepting
//! and lets requests in flight finish, server-sent events streamed as they
//! are produced. Handshakes run in tasks of their own (a [`JoinSet`] owned
//! by the listener, so dropping the listener at shutdown aborts them), with
//! a deadline, so a client that connects and never speaks delays nobody.
//!
//! A plain HTTP request on the TLS port (a script still using `http://`)
//! is answered with a 400 that says to use `https://` instead of a reset
//! connection.
//!
//! The certificate is a [`ServedCertificate`], which the daemon replaces
//! on SIGHUP when the operator's files changed (a renewal): new
//! handshakes get the new one, connections already open keep theirs, and
//! no restart drops the VMs' NBD connections for it.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use offsite_engine::api_tls::ApiCertificate;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// A client has this long to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most; beyond, new connections wait in the
/// kernel's backlog (a flood of silent connections cannot grow memory).
const MAX_HANDSHAKES: usize = 256;
/// The first byte of a TLS record that opens a handshake.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The certificate the API listener serves, replaceable while it runs.
#[derive(Debug)]
pub struct ServedCertificate {
    current: RwLock<ApiCertificate>,
}

impl ServedCertificate {
    /// Serves `certificate`.
    pub fn new(certificate: ApiCertificate) -> ServedCertificate {
        ServedCertificate {
            current: RwLock::new(certificate),
        }
    }

    /// The fingerprint of the certificate served now.
    pub fn fingerprint(&self) -> String {
        self.read().fingerprint().to_string()
    }

    /// Serves `certificate` to new connections from now on; returns the
    /// fingerprint it replaced, or `None` when it is the same certificate
    /// (nothing changes).
    pub fn replace(&self, certificate: ApiCertificate) -> Option<String> {
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if current.fingerprint() == certificate.fingerprint() {
            return None;
        }
        let old = current.fingerprint().to_string();
        *current = certificate;
        Some(old)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ApiCertificate> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl ResolvesServerCert for ServedCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.read().certified_key())
    }
}

/// The rustls configuration of the API listener: `certificate`, no client
/// certificates (clients authenticate with the bearer token or a console
/// session), TLS 1.3 and 1.2 with ring's default suites, HTTP/1.1 by ALPN
/// (the server speaks HTTP/1.1 only).
pub fn server_config(certificate: Arc<ServedCertificate>) -> io::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(offsite_engine::api_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What became of one accepted connection.
enum Handshake {
    /// TLS is up.
    Done(Box<TlsStream<TcpStream>>),
    /// The client spoke plain HTTP; it was told to use HTTPS.
    PlainHttp,
    /// The handshake failed.
    Failed(io::Error),
    /// The client did not finish within [`HANDSHAKE_TIMEOUT`].
    TimedOut,
}

/// The API listener with TLS: accepts TCP connections and yields them once
/// their handshake is done.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    handshakes: JoinSet<(SocketAddr, Handshake)>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("tcp", &self.tcp)
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// TLS with `config` on the bound `tcp`.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Both branches are cancel-safe (axum drops this future at
        // shutdown): an accepted socket is in the set before the next
        // await, and a finished handshake stays in the set until taken.
        loop {
            let room = self.handshakes.len() < MAX_HANDSHAKES;
            tokio::select! {
                accepted = self.tcp.accept(), if room => match accepted {
                    Ok((tcp, peer)) => {
                        let acceptor = self.acceptor.clone();
                        self.handshakes.spawn(async move {
                            let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, tcp))
                                .await
                                .unwrap_or(Handshake::TimedOut);
                            (peer, outcome)
                        });
                    }
                    Err(e) => accept_failed(e).await,
                },
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    match done {
                        Ok((peer, Handshake::Done(stream))) => return (*stream, peer),
                        Ok((peer, Handshake::PlainHttp)) => {
                            tracing::debug!(%peer, "plain HTTP on the HTTPS API listener: told to use https://");
                        }
                        Ok((peer, Handshake::TimedOut)) => {
                            tracing::debug!(%peer, "API client did not finish its TLS handshake within {HANDSHAKE_TIMEOUT:?}");
                        }
                        Ok((peer, Handshake::Failed(e))) => log_failed_handshake(peer, &e),
                        Err(e) => tracing::error!("API TLS handshake task failed: {e}"),
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// One connection's handshake, after a look at its first byte: a plain
/// HTTP request (it starts with a method's letters, never with a TLS
/// record) is answered by [`refuse_plain_http`].
async fn handshake(acceptor: TlsAcceptor, tcp: TcpStream) -> Handshake {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await {
        Ok(0) => return Handshake::Failed(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) if first[0] != TLS_HANDSHAKE_RECORD && first[0].is_ascii_uppercase() => {
            refuse_plain_http(tcp).await;
            return Handshake::PlainHttp;
        }
        Ok(_) => {}
        Err(e) => return Handshake::Failed(e),
    }
    match acceptor.accept(tcp).await {
        Ok(stream) => Handshake::Done(Box::new(stream)),
        Err(e) => Handshake::Failed(e),
    }
}

/// Answers a plain HTTP request with 400 and the `https://` URL to use,
/// in the API's error shape. The request is read first and the socket
/// drained after the answer, so that closing it does not reset the
/// connection before the client has read why.
async fn refuse_plain_http(mut tcp: TcpStream) {
    let url = match tcp.local_addr() {
        Ok(a) => format!("https://{a}"),
        Err(_) => "https://".to_string(),
    };
    let body = serde_json::json!({
        "code": "https_required",
        "message": format!(
            "this site's API serves HTTPS only: use {url} (with --api-fingerprint or --ca-file; \
             `offsite site show` at the site prints the URL and the certificate's fingerprint)"
        ),
    })
    .to_string();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while head.len() < 16 * 1024 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let answer = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n\r\n{body}",
        body.len()
    );
    if tcp.write_all(answer.as_bytes()).await.is_err() || tcp.shutdown().await.is_err() {
        return;
    }
    // Whatever else the client sends (a request body) is read and dropped
    // until it closes; the caller's deadline bounds this.
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// A failed handshake is the client's affair and logged at DEBUG, except
/// when the client says it refused this site's certificate: that is an
/// operator whose browser or CLI does not trust it yet.
fn log_failed_handshake(peer: SocketAddr, e: &io::Error) {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .and_then(|r| match r {
            rustls::Error::AlertReceived(alert) => Some(*alert),
            _ => None,
        });
    match alert {
        Some(alert) => tracing::info!(
            %peer,
            "an API client refused this site's certificate (TLS alert {alert:?}); it must trust it: `offsite site show` prints the fingerprint to pin (--api-fingerprint) or use --ca-file"
        ),
        None => tracing::debug!(%peer, "API TLS handshake failed: {e}"),
    }
}

/// As axum's own TCP listener: a connection that failed before it was
/// accepted is skipped; anything else (out of file descriptors) is logged
/// and retried after a pause rather than spinning.
async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting an API connection: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
