//! Test sites over real TLS on 127.0.0.1: identities generated with rcgen
//! (ECDSA P-256, as `offsite site init` makes them), a listener task, a
//! hand-driven "raw" peer that speaks the protocol frame by frame, and a
//! log capture.

#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use offsite_protocol::{
    Compression, Features, FramedReader, Message, SUPPORTED_VERSIONS, write_message,
};
use offsite_transport::{
    Identity, Listener, ListenerConfig, ListenerStats, Partner, PeerName, PeerTable, Session,
    SessionOptions, tls,
};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A site: name and TLS identity.
#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub identity: Identity,
}

impl Site {
    /// A new site with a fresh key pair.
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Self {
            name: name.to_string(),
            identity: Identity::from_pem(&key.serialize_pem(), &cert.pem()).unwrap(),
        }
    }

    pub fn peer_name(&self) -> PeerName {
        PeerName::new(self.name.clone()).unwrap()
    }

    /// This site as a partner to dial at `address`.
    pub fn partner_at(&self, address: SocketAddr) -> Partner {
        Partner {
            name: self.peer_name(),
            address: address.to_string(),
            fingerprint: self.identity.fingerprint().clone(),
        }
    }
}

/// Options with short keepalive and dead-peer timeouts for tests.
pub fn fast_options() -> SessionOptions {
    let mut options = SessionOptions::default();
    options.keepalive_interval = Duration::from_millis(100);
    options.dead_after = Duration::from_millis(1500);
    options.handshake_timeout = Duration::from_secs(5);
    options.connect_timeout = Duration::from_secs(5);
    options
}

/// A running listener.
pub struct Server {
    pub addr: SocketAddr,
    pub site: Site,
    pub peers: Arc<PeerTable>,
    pub stats: Arc<ListenerStats>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Starts `site`'s listener on an ephemeral port, pinning `partners`.
    pub async fn start<H, F>(
        site: &Site,
        partners: &[&Site],
        options: SessionOptions,
        handler: H,
    ) -> Self
    where
        H: Fn(Session) -> F + Send + Sync + 'static,
        F: Future + Send + 'static,
    {
        let peers = Arc::new(PeerTable::new());
        for partner in partners {
            peers.pin(partner.peer_name(), partner.identity.fingerprint().clone());
        }
        let mut config =
            ListenerConfig::new(site.name.clone(), site.identity.clone(), peers.clone());
        config.session = options;
        let listener = Listener::new(config).unwrap();
        let stats = listener.stats();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(listener.run(tcp, handler, async move {
            let _ = shutdown_rx.await;
        }));
        Self {
            addr,
            site: site.clone(),
            peers,
            stats,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// This server's site as a partner to dial.
    pub fn partner(&self) -> Partner {
        self.site.partner_at(self.addr)
    }

    /// Shuts the listener down and waits for its connections to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("listener shuts down")
            .unwrap();
    }
}

pub type RawTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A peer driven by hand: TLS as `site`, then the hello exchange frame by
/// frame. Returns the stream right after both `HelloAccept`s.
pub async fn raw_client(site: &Site, server: &Server) -> FramedReader<RawTls> {
    let config = tls::client_config(&site.identity, server.site.identity.fingerprint()).unwrap();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(server.addr.ip().into()), tcp)
        .await
        .unwrap();
    let mut framed = FramedReader::new(tls);
    hello_by_hand(&mut framed, &site.name).await;
    framed
}

/// Sends our `Hello`, reads theirs, sends `HelloAccept`, reads theirs.
pub async fn hello_by_hand<S>(framed: &mut FramedReader<S>, our_name: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let hello = Message::Hello {
        versions: SUPPORTED_VERSIONS,
        site_name: our_name.to_string(),
        features: Features::NONE,
    };
    write_message(framed.get_mut(), &hello, Compression::None)
        .await
        .unwrap();
    let Some(Message::Hello { .. }) = framed.read_message().await.unwrap() else {
        panic!("expected the peer's Hello");
    };
    // Both offer SUPPORTED_VERSIONS: the newest is agreed.
    let version = *SUPPORTED_VERSIONS.end();
    let accept = Message::HelloAccept {
        version,
        site_name: our_name.to_string(),
        features: Features::NONE,
    };
    write_message(framed.get_mut(), &accept, Compression::None)
        .await
        .unwrap();
    let Some(Message::HelloAccept { version: v, .. }) = framed.read_message().await.unwrap() else {
        panic!("expected the peer's HelloAccept");
    };
    assert_eq!(v, version, "the peer's HelloAccept names another version");
}

/// Log lines written on this thread while the guard lives. One global
/// subscriber writes each event into the capture buffer of the thread that
/// logged it, so use a current-thread runtime (the `#[tokio::test]` default)
/// for tests that read logs.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURE: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> =
        const { std::cell::RefCell::new(None) };
}

struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURE.with(|capture| {
            if let Some(sink) = &*capture.borrow() {
                sink.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops capturing when dropped.
pub struct CaptureGuard;

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        CAPTURE.with(|capture| capture.borrow_mut().take());
    }
}

impl Logs {
    pub fn capture() -> (Self, CaptureGuard) {
        static INIT: std::sync::Once = std::sync::Once::new();
        INIT.call_once(|| {
            tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .with_max_level(tracing::Level::INFO)
                .init();
        });
        let logs = Self::default();
        CAPTURE.with(|capture| *capture.borrow_mut() = Some(logs.0.clone()));
        (logs, CaptureGuard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines containing `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    }
}

/// Waits (polling) until `condition` holds, at most 10 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
