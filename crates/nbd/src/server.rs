//! The NBD listener: accepting connections, enforcing the connection limit,
//! running one thread per connection, counting, and shutting down.
//!
//! Threading model: one accept thread plus one OS thread per connection, all
//! doing blocking `std::net` I/O. Our devices are page-cache backed, so a
//! request usually completes in microseconds and a thread per connection
//! beats an async runtime on both latency and simplicity; the connection
//! limit ([`ServerConfig::max_connections`]) bounds the thread count.
//! Requests on one connection run strictly in order (clients get
//! parallelism by opening several connections, which
//! `NBD_FLAG_CAN_MULTI_CONN` allows). Replies go through a `BufWriter` that
//! is flushed whenever no complete request is left in the read buffer, so a
//! pipelining client (QD32) gets its replies in batches, not one syscall
//! each.
//!
//! Connection lifecycle:
//!
//! ```text
//! accept ─► over limit? ─yes─► close (rate-limited log, refused_connections += 1)
//!              │no
//!              ▼
//!        register stream ─► handshake (handshake.rs) ─► transmission (transmission.rs)
//!                                 │ABORT / error              │DISC / EOF / error / shutdown
//!                                 ▼                           ▼
//!                             deregister ◄────────────────────┘
//! ```
//!
//! Graceful shutdown ([`NbdServer::shutdown`]): set the shutdown flag, wake
//! `accept()` by shutting the listening socket down, then `shutdown(Read)`
//! every registered connection. A connection idle in `read()` sees EOF at
//! once; one executing a request finishes it, sends and flushes the reply,
//! and does not start another. Finally every thread is joined. A client that
//! stops reading replies cannot wedge this forever because sockets carry a
//! write timeout ([`ServerConfig::write_timeout`]).

mod connection;
mod handshake;
mod transmission;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, error, info, warn};

use crate::device::ExportRegistry;
use crate::tls::TlsPolicy;

/// Tunables of an [`NbdServer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Largest `READ`/`WRITE`/`WRITE_ZEROES` length accepted, advertised as
    /// the maximum block size in `NBD_INFO_BLOCK_SIZE`. Default 32 MiB, the
    /// largest length proto.md says clients may assume works anywhere.
    pub max_request_bytes: u32,
    /// Connections served at once; further ones are accepted and closed at
    /// once. Default 1024.
    pub max_connections: usize,
    /// Preferred block size advertised in `NBD_INFO_BLOCK_SIZE` (a power of
    /// two, at least 512). Default 4096.
    pub preferred_block_size: u32,
    /// Longest a client may take to finish negotiation before it is
    /// disconnected, so half-open connections cannot hold slots. Default 30 s.
    pub handshake_timeout: Duration,
    /// Longest a single socket write may block before the connection is
    /// dropped, so a client that stops reading replies cannot pin a thread
    /// (or stall shutdown) forever. `None` disables it. Default 60 s.
    pub write_timeout: Option<Duration>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: 32 << 20,
            max_connections: 1024,
            preferred_block_size: 4096,
            handshake_timeout: Duration::from_secs(30),
            write_timeout: Some(Duration::from_secs(60)),
        }
    }
}

/// Why a [`ServerConfig`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// proto.md: the preferred block size must be a power of two ≥ 512.
    #[error("preferred block size {0} is not a power of two of at least 512")]
    PreferredBlockSize(u32),
    /// proto.md: the maximum block size must be at least the preferred one.
    #[error("max request size {max} is smaller than the preferred block size {preferred}")]
    MaxRequestTooSmall {
        /// Configured maximum request length.
        max: u32,
        /// Configured preferred block size.
        preferred: u32,
    },
    /// A server that refuses every connection is a configuration mistake.
    #[error("max_connections must be at least 1")]
    NoConnections,
    /// A zero timeout would make every socket read or write fail at once.
    #[error("timeouts must be non-zero")]
    ZeroTimeout,
}

impl ServerConfig {
    /// Checks the values against proto.md's block-size rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.preferred_block_size.is_power_of_two() || self.preferred_block_size < 512 {
            return Err(ConfigError::PreferredBlockSize(self.preferred_block_size));
        }
        if self.max_request_bytes < self.preferred_block_size {
            return Err(ConfigError::MaxRequestTooSmall {
                max: self.max_request_bytes,
                preferred: self.preferred_block_size,
            });
        }
        if self.max_connections == 0 {
            return Err(ConfigError::NoConnections);
        }
        if self.handshake_timeout.is_zero() || self.write_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

/// Live counters of a server, updated with relaxed atomics (they are
/// monitoring data, not synchronisation).
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections currently open (handshake or transmission).
    pub connections_active: AtomicU64,
    /// Connections accepted and served since start.
    pub connections_total: AtomicU64,
    /// Connections closed at once because `max_connections` was reached.
    pub refused_connections: AtomicU64,
    /// `NBD_CMD_READ` requests answered successfully.
    pub reads: AtomicU64,
    /// `NBD_CMD_WRITE` requests answered successfully.
    pub writes: AtomicU64,
    /// `NBD_CMD_FLUSH` requests answered successfully.
    pub flushes: AtomicU64,
    /// `NBD_CMD_TRIM` requests answered successfully.
    pub trims: AtomicU64,
    /// `NBD_CMD_WRITE_ZEROES` requests answered successfully.
    pub write_zeroes: AtomicU64,
    /// `NBD_CMD_CACHE` requests answered successfully.
    pub caches: AtomicU64,
    /// `NBD_CMD_BLOCK_STATUS` requests answered successfully.
    pub block_status: AtomicU64,
    /// Payload bytes sent for reads (data read from the device).
    pub bytes_read: AtomicU64,
    /// Bytes of reads answered as holes (structured replies): neither read
    /// from the device nor sent.
    pub hole_bytes: AtomicU64,
    /// Payload bytes received and written.
    pub bytes_written: AtomicU64,
    /// Requests answered with a non-zero NBD error.
    pub errors: AtomicU64,
}

/// A plain copy of [`ServerStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`ServerStats::connections_active`].
    pub connections_active: u64,
    /// See [`ServerStats::connections_total`].
    pub connections_total: u64,
    /// See [`ServerStats::refused_connections`].
    pub refused_connections: u64,
    /// See [`ServerStats::reads`].
    pub reads: u64,
    /// See [`ServerStats::writes`].
    pub writes: u64,
    /// See [`ServerStats::flushes`].
    pub flushes: u64,
    /// See [`ServerStats::trims`].
    pub trims: u64,
    /// See [`ServerStats::write_zeroes`].
    pub write_zeroes: u64,
    /// See [`ServerStats::caches`].
    pub caches: u64,
    /// See [`ServerStats::block_status`].
    pub block_status: u64,
    /// See [`ServerStats::bytes_read`].
    pub bytes_read: u64,
    /// See [`ServerStats::hole_bytes`].
    pub hole_bytes: u64,
    /// See [`ServerStats::bytes_written`].
    pub bytes_written: u64,
    /// See [`ServerStats::errors`].
    pub errors: u64,
}

impl ServerStats {
    /// Reads every counter (each individually; the set is not atomic).
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_active: get(&self.connections_active),
            connections_total: get(&self.connections_total),
            refused_connections: get(&self.refused_connections),
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            trims: get(&self.trims),
            write_zeroes: get(&self.write_zeroes),
            caches: get(&self.caches),
            block_status: get(&self.block_status),
            bytes_read: get(&self.bytes_read),
            hole_bytes: get(&self.hole_bytes),
            bytes_written: get(&self.bytes_written),
            errors: get(&self.errors),
        }
    }

    fn bump(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }
}

/// A running NBD server. Dropping it shuts it down like [`NbdServer::shutdown`].
pub struct NbdServer {
    shared: Arc<Shared>,
    listener: Arc<TcpListener>,
    local_addr: SocketAddr,
    accept_thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for NbdServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NbdServer")
            .field("local_addr", &self.local_addr)
            .field("config", &self.shared.config)
            .field("stats", &self.shared.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl NbdServer {
    /// Starts serving `registry`'s exports on `listener` (already bound, so
    /// the caller picks the address and can use port 0 in tests).
    ///
    /// Fails if `config` is invalid (`InvalidInput`), or if the listener's
    /// address cannot be read or the accept thread cannot be spawned.
    pub fn start(
        listener: TcpListener,
        registry: Arc<dyn ExportRegistry>,
        config: ServerConfig,
    ) -> io::Result<NbdServer> {
        Self::start_with_tls(listener, registry, config, TlsPolicy::off())
    }

    /// Like [`NbdServer::start`], with `tls` offered to clients
    /// (`NBD_OPT_STARTTLS`) as its mode says.
    pub fn start_with_tls(
        listener: TcpListener,
        registry: Arc<dyn ExportRegistry>,
        config: ServerConfig,
        tls: TlsPolicy,
    ) -> io::Result<NbdServer> {
        config
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let local_addr = listener.local_addr()?;
        // The listener may have been set non-blocking by its creator; the
        // accept loop relies on blocking accept().
        listener.set_nonblocking(false)?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            registry,
            config,
            tls,
            stats: Arc::new(ServerStats::default()),
            shutting_down: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
        });
        let accept_thread = thread::Builder::new().name("nbd-accept".into()).spawn({
            let listener = Arc::clone(&listener);
            let shared = Arc::clone(&shared);
            move || accept_loop(&listener, &shared)
        })?;
        info!(%local_addr, tls = %shared.tls.mode(), "NBD server listening");
        Ok(NbdServer {
            shared,
            listener,
            local_addr,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server's live counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        Arc::clone(&self.shared.stats)
    }

    /// How many open connections have entered transmission on `export`.
    pub fn connections_for(&self, export: &str) -> usize {
        self.shared
            .lock_connections()
            .values()
            .filter(|c| c.export.as_deref() == Some(export))
            .count()
    }

    /// Stops accepting, lets each connection finish the request it is
    /// executing (starting no new one), flushes replies, closes every
    /// connection and joins all threads.
    pub fn shutdown(mut self) {
        self.shutdown_inner();
    }

    fn shutdown_inner(&mut self) {
        let Some(accept_thread) = self.accept_thread.take() else {
            return;
        };
        info!(local_addr = %self.local_addr, "NBD server shutting down");
        // Ordering: (1) the flag first, so anything woken below sees it;
        // (2) wake accept(); (3) wake every connection blocked in read().
        // Registration checks the flag under the same lock step 3 takes, so
        // a connection accepted concurrently is either woken here or refused.
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        self.wake_accept();
        for conn in self.shared.lock_connections().values() {
            // Read side only: an in-flight request can still send its reply.
            // ENOTCONN (peer already gone) is fine to ignore.
            let _ = conn.stream.shutdown(Shutdown::Read);
        }
        if accept_thread.join().is_err() {
            error!("NBD accept thread panicked");
        }
        info!(local_addr = %self.local_addr, "NBD server stopped");
    }

    /// Makes the accept thread's blocking `accept()` return.
    fn wake_accept(&self) {
        // On Linux, shutdown(2) on a listening socket makes a blocked
        // accept() fail with EINVAL at once. Elsewhere (or if that fails) a
        // throwaway connection to ourselves does the same job.
        if rustix::net::shutdown(&*self.listener, rustix::net::Shutdown::Both).is_ok() {
            return;
        }
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        if let Err(err) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            warn!(%addr, %err, "could not wake the NBD accept thread; shutdown may wait for the next connection");
        }
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        self.shutdown_inner();
    }
}

/// State shared by the accept thread and every connection thread.
struct Shared {
    registry: Arc<dyn ExportRegistry>,
    config: ServerConfig,
    tls: TlsPolicy,
    stats: Arc<ServerStats>,
    shutting_down: AtomicBool,
    /// Open connections by id: a handle to wake each at shutdown, and the
    /// export it is bound to for [`NbdServer::connections_for`].
    connections: Mutex<HashMap<u64, ConnectionEntry>>,
}

struct ConnectionEntry {
    /// A clone of the connection's socket, used only for `shutdown(Read)`.
    stream: TcpStream,
    /// Export name, once the connection has entered transmission.
    export: Option<String>,
}

impl Shared {
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The connection table. A panic elsewhere while holding the lock leaves
    /// the map itself consistent (every update is a single insert/remove or
    /// field store), so poisoning is ignored rather than propagated.
    fn lock_connections(&self) -> MutexGuard<'_, HashMap<u64, ConnectionEntry>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn bind_export(&self, id: u64, export: &str) {
        if let Some(entry) = self.lock_connections().get_mut(&id) {
            entry.export = Some(export.to_owned());
        }
    }
}

/// Holds one connection slot: counted in `connections_active` and listed in
/// the connection table until dropped, even if the connection thread panics.
struct ConnectionSlot {
    shared: Arc<Shared>,
    id: u64,
}

impl ConnectionSlot {
    /// Claims a slot for `stream`, or returns `None` if the server is
    /// shutting down.
    fn register(shared: &Arc<Shared>, id: u64, stream: &TcpStream) -> io::Result<Option<Self>> {
        let handle = stream.try_clone()?;
        let mut conns = shared.lock_connections();
        if shared.is_shutting_down() {
            return Ok(None);
        }
        conns.insert(
            id,
            ConnectionEntry {
                stream: handle,
                export: None,
            },
        );
        ServerStats::bump(&shared.stats.connections_active, 1);
        ServerStats::bump(&shared.stats.connections_total, 1);
        Ok(Some(Self {
            shared: Arc::clone(shared),
            id,
        }))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.lock_connections().remove(&self.id);
        self.shared
            .stats
            .connections_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Emits at most one log line per interval and counts what it suppressed,
/// so a connection flood or a persistent accept error cannot flood the log.
struct RateLimitedLog {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimitedLog {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// Returns `Some(suppressed_since_last)` if a line may be logged now.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    let mut refused_log = RateLimitedLog::new(Duration::from_secs(1));
    let mut error_log = RateLimitedLog::new(Duration::from_secs(1));
    loop {
        let accepted = listener.accept();
        if shared.is_shutting_down() {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                match err.kind() {
                    // The peer gave up between SYN and accept(); nothing to do.
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted => {}
                    _ => {
                        if let Some(suppressed) = error_log.allow() {
                            warn!(%err, suppressed, "NBD accept failed");
                        }
                        // EMFILE/ENFILE/ENOMEM persist until something
                        // closes; back off instead of spinning on them.
                        thread::sleep(Duration::from_millis(50));
                    }
                }
                continue;
            }
        };
        reap_finished(&mut workers);

        let active = shared.stats.connections_active.load(Ordering::Relaxed);
        if active >= shared.config.max_connections as u64 {
            ServerStats::bump(&shared.stats.refused_connections, 1);
            if let Some(suppressed) = refused_log.allow() {
                warn!(%peer, active, limit = shared.config.max_connections, suppressed,
                      "NBD connection limit reached; closing new connection");
            }
            drop(stream);
            continue;
        }

        let id = next_id;
        next_id += 1;
        let slot = match ConnectionSlot::register(shared, id, &stream) {
            Ok(Some(slot)) => slot,
            // Shutdown began after accept() returned.
            Ok(None) => break,
            Err(err) => {
                warn!(%peer, %err, "could not register NBD connection; closing it");
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn({
                let shared = Arc::clone(shared);
                move || connection::run(stream, peer, &shared, slot)
            });
        match spawned {
            Ok(handle) => workers.push(handle),
            // The closure (and with it the stream and slot) was dropped, so
            // the connection is closed and its slot released.
            Err(err) => warn!(%peer, %err, "could not spawn NBD connection thread"),
        }
    }
    debug!(
        connections = workers.len(),
        "NBD accept loop stopped; joining connections"
    );
    for handle in workers {
        if handle.join().is_err() {
            error!("NBD connection thread panicked");
        }
    }
}

/// Joins connection threads that have already ended, so the handle list
/// tracks live connections rather than growing forever.
fn reap_finished(workers: &mut Vec<JoinHandle<()>>) {
    let (done, live): (Vec<_>, Vec<_>) = workers.drain(..).partition(|h| h.is_finished());
    *workers = live;
    for handle in done {
        if handle.join().is_err() {
            error!("NBD connection thread panicked");
        }
    }
}
