//! A fault-injecting TCP proxy that stands in for the WAN between two sites.
//!
//! The kernels the tests run on have no `netem`, so replication tests put a
//! [`FaultProxy`] between the two `offsite serve` processes on loopback: the
//! primary dials [`FaultProxy::addr`] instead of the replica's listener, and
//! the test changes the link while traffic flows through the cloneable
//! [`Faults`] handle.
//!
//! # What it simulates
//!
//! Every setting is per [`Direction`] and takes effect at runtime:
//!
//! - **Latency**: a one-way delay line. Each chunk read is timestamped and
//!   written out at `read time + latency`, so a long link still carries a full
//!   window of data (up to 16 MiB queued per connection and direction), not
//!   one chunk per round trip.
//! - **Bandwidth**: a token bucket shared by all connections in a direction,
//!   like one WAN link carrying several sessions.
//! - **Stalls**: forwarding stops, bytes queue up (then TCP backpressure
//!   pushes back on the sender), connections stay open; unstalling delivers
//!   everything intact.
//! - **Resets**: [`Faults::reset_all`] aborts every current connection on
//!   both sides with an RST (`SO_LINGER` 0, then close).
//! - **Link down**: [`Faults::refuse_new`] accepts new connections and closes
//!   them at once.
//! - **Corruption**: flip bits at one byte offset of the next connection
//!   ([`Faults::corrupt_at`]) or at random positions with a seeded RNG
//!   ([`Faults::corrupt_random`]), so a failing run replays with its seed.
//!
//! # What it does not simulate
//!
//! It is a stream proxy: it terminates TCP on both sides, so there is no
//! packet loss, reordering, duplication, MTU or retransmission behaviour, and
//! the two TCP connections have their own windows and buffers. Corruption
//! therefore reaches the application as bytes TCP's checksum did not catch,
//! which is what the protocol's own checksums are there for.
//!
//! # Why hand-written
//!
//! No crate offers a TCP proxy that can stall without closing, corrupt a byte
//! at a chosen stream offset, replay random corruption from a seed, and run
//! embedded in a plain synchronous `#[test]`. Toxiproxy-style tools are
//! external daemons with no offset or seed control.
//!
//! # Threads
//!
//! The proxy runs on its own thread with its own current-thread tokio
//! runtime, so callers need not be async. [`FaultProxy::stop`] (or dropping
//! the proxy) stops accepting, closes every connection and joins the thread.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdTcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

/// Largest chunk read from one side at a time.
const CHUNK: usize = 64 * 1024;
/// Bytes read but not yet written, per connection and direction, before the
/// proxy stops reading (and TCP backpressure reaches the sender).
const QUEUE_LIMIT: usize = 16 * 1024 * 1024;
/// Largest write under a bandwidth cap, so pacing stays smooth.
const MAX_PACED_WRITE: u64 = 16 * 1024;

/// Which way bytes travel through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the side that connected to the proxy towards the target.
    ClientToServer,
    /// From the target back to the side that connected to the proxy.
    ServerToClient,
}

impl Direction {
    /// Both directions, client to server first.
    pub const ALL: [Direction; 2] = [Direction::ClientToServer, Direction::ServerToClient];

    fn index(self) -> usize {
        match self {
            Direction::ClientToServer => 0,
            Direction::ServerToClient => 1,
        }
    }
}

/// Counters for one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Bytes written to the receiving side.
    pub bytes_forwarded: u64,
    /// Bytes whose bits the proxy flipped.
    pub bytes_corrupted: u64,
}

/// A snapshot of the proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted and forwarded (refused ones not included).
    pub connections_accepted: u64,
    /// Connections closed at once because of [`Faults::refuse_new`].
    pub connections_refused: u64,
    /// Connections currently being forwarded.
    pub connections_open: u64,
    /// Connections aborted by [`Faults::reset_all`].
    pub resets: u64,
    /// Counters for [`Direction::ClientToServer`].
    pub client_to_server: DirectionStats,
    /// Counters for [`Direction::ServerToClient`].
    pub server_to_client: DirectionStats,
}

impl ProxyStats {
    /// The counters of one direction.
    pub fn direction(&self, dir: Direction) -> DirectionStats {
        match dir {
            Direction::ClientToServer => self.client_to_server,
            Direction::ServerToClient => self.server_to_client,
        }
    }
}

/// A fault-injecting TCP proxy from a loopback port to `target`.
///
/// Stops on [`FaultProxy::stop`] or drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    faults: Faults,
    stop_tx: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Binds `127.0.0.1:0` and forwards every connection to `target`, with no
    /// faults until told otherwise. Panics if the port or runtime cannot be
    /// set up.
    pub fn start(target: SocketAddr) -> FaultProxy {
        let std_listener =
            StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind fault proxy listener");
        std_listener
            .set_nonblocking(true)
            .expect("make fault proxy listener non-blocking");
        let addr = std_listener.local_addr().expect("fault proxy local addr");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build fault proxy runtime");
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(std_listener).expect("register fault proxy listener")
        };
        let faults = Faults {
            shared: Arc::new(Shared::new()),
        };
        let shared = Arc::clone(&faults.shared);
        let (stop_tx, stop_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, target, shared, stop_rx));
                // Dropping the runtime drops every connection task, which
                // closes its sockets.
                drop(runtime);
            })
            .expect("spawn fault proxy thread");
        FaultProxy {
            addr,
            target,
            faults,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// The address clients connect to instead of the target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address every connection is forwarded to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// A handle to change faults at runtime; clones share the same proxy.
    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    /// The current counters.
    pub fn stats(&self) -> ProxyStats {
        self.faults.stats()
    }

    /// Stops accepting, closes all connections and joins the proxy thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop_tx) = self.stop_tx.take() {
            // The receiver is gone only if the accept loop already ended.
            let _ = stop_tx.send(());
        }
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
            && !std::thread::panicking()
        {
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Cloneable handle that changes a [`FaultProxy`]'s faults while it runs.
#[derive(Debug, Clone)]
pub struct Faults {
    shared: Arc<Shared>,
}

impl Faults {
    /// Adds `latency` of one-way delay to every chunk in `dir`
    /// (`Duration::ZERO` removes it). Applies to chunks read from now on.
    pub fn set_latency(&self, dir: Direction, latency: Duration) {
        self.lane(dir)
            .settings
            .send_modify(|settings| settings.latency = latency);
    }

    /// Caps `dir` at `bytes_per_sec` across all its connections, or removes
    /// the cap with `None`. Panics on `Some(0)`; use [`Faults::stall`].
    pub fn set_bandwidth(&self, dir: Direction, bytes_per_sec: Option<u64>) {
        assert_ne!(bytes_per_sec, Some(0), "a zero bandwidth is a stall");
        *lock(&self.lane(dir).bucket) = TokenBucket::new(bytes_per_sec);
    }

    /// Stops forwarding in `dir`; bytes queue up and connections stay open.
    pub fn stall(&self, dir: Direction) {
        self.lane(dir)
            .settings
            .send_modify(|settings| settings.stalled = true);
    }

    /// Resumes forwarding in `dir`, delivering the queued bytes in order.
    pub fn unstall(&self, dir: Direction) {
        self.lane(dir)
            .settings
            .send_modify(|settings| settings.stalled = false);
    }

    /// Aborts every connection accepted so far with an RST to both sides.
    /// Returns at once; the resets happen on the proxy thread right after.
    pub fn reset_all(&self) {
        self.shared
            .reset_epoch
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// While `refuse` is true, new connections are accepted and closed at
    /// once (link down). Open connections are not touched.
    pub fn refuse_new(&self, refuse: bool) {
        self.shared.refuse_new.store(refuse, Ordering::SeqCst);
    }

    /// XORs `xor_mask` into the byte at `offset` (counted from the start of
    /// the connection) in `dir` of the next connection accepted. One-shot:
    /// later connections are not corrupted. Panics on a zero mask.
    pub fn corrupt_at(&self, dir: Direction, offset: u64, xor_mask: u8) {
        assert_ne!(xor_mask, 0, "a zero XOR mask corrupts nothing");
        *lock(&self.lane(dir).corrupt_at) = Some((offset, xor_mask));
    }

    /// Corrupts each byte in `dir` with `probability` (a random non-zero XOR
    /// mask), in every connection accepted from now on. The k-th such
    /// connection (k from 0) draws from an RNG seeded by `seed` and k, so
    /// calling this again with the same seed and sending the same bytes
    /// corrupts the same positions. Connections already open are not
    /// affected; use [`Faults::reset_all`] to make clients reconnect.
    pub fn corrupt_random(&self, dir: Direction, probability: f64, seed: u64) {
        assert!(
            (0.0..=1.0).contains(&probability),
            "corruption probability {probability} is not within 0..=1"
        );
        *lock(&self.lane(dir).corrupt_random) = Some(RandomCorruption {
            probability,
            seed,
            next_connection: 0,
        });
    }

    /// Cancels pending [`Faults::corrupt_at`] and [`Faults::corrupt_random`]
    /// in `dir` for connections accepted from now on.
    pub fn clear_corruption(&self, dir: Direction) {
        let lane = self.lane(dir);
        *lock(&lane.corrupt_at) = None;
        *lock(&lane.corrupt_random) = None;
    }

    /// The current counters.
    pub fn stats(&self) -> ProxyStats {
        let shared = &self.shared;
        let direction = |dir: Direction| {
            let lane = &shared.lanes[dir.index()];
            DirectionStats {
                bytes_forwarded: lane.bytes_forwarded.load(Ordering::SeqCst),
                bytes_corrupted: lane.bytes_corrupted.load(Ordering::SeqCst),
            }
        };
        ProxyStats {
            connections_accepted: shared.accepted.load(Ordering::SeqCst),
            connections_refused: shared.refused.load(Ordering::SeqCst),
            connections_open: shared.open.load(Ordering::SeqCst),
            resets: shared.resets.load(Ordering::SeqCst),
            client_to_server: direction(Direction::ClientToServer),
            server_to_client: direction(Direction::ServerToClient),
        }
    }

    fn lane(&self, dir: Direction) -> &Lane {
        &self.shared.lanes[dir.index()]
    }
}

/// State shared by the handles and the proxy thread.
#[derive(Debug)]
struct Shared {
    lanes: [Lane; 2],
    refuse_new: AtomicBool,
    /// Bumped by `reset_all`; each connection watches it from its accept on.
    reset_epoch: watch::Sender<u64>,
    accepted: AtomicU64,
    refused: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            lanes: [Lane::new(), Lane::new()],
            refuse_new: AtomicBool::new(false),
            reset_epoch: watch::Sender::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            open: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        }
    }
}

/// Settings and counters of one direction.
#[derive(Debug)]
struct Lane {
    /// Watched by writers so an unstall wakes them.
    settings: watch::Sender<LaneSettings>,
    bucket: Mutex<TokenBucket>,
    corrupt_at: Mutex<Option<(u64, u8)>>,
    corrupt_random: Mutex<Option<RandomCorruption>>,
    bytes_forwarded: AtomicU64,
    bytes_corrupted: AtomicU64,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            settings: watch::Sender::new(LaneSettings::default()),
            bucket: Mutex::new(TokenBucket::new(None)),
            corrupt_at: Mutex::new(None),
            corrupt_random: Mutex::new(None),
            bytes_forwarded: AtomicU64::new(0),
            bytes_corrupted: AtomicU64::new(0),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct LaneSettings {
    latency: Duration,
    stalled: bool,
}

#[derive(Debug)]
struct RandomCorruption {
    probability: f64,
    seed: u64,
    /// Index of the next connection to draw an RNG for.
    next_connection: u64,
}

/// Token bucket in "debt" form: a writer takes what it needs, and if that
/// leaves the bucket negative it sleeps until the debt is paid back.
#[derive(Debug)]
struct TokenBucket {
    rate: Option<u64>,
    tokens: f64,
    last: std::time::Instant,
}

impl TokenBucket {
    fn new(rate: Option<u64>) -> TokenBucket {
        let mut bucket = TokenBucket {
            rate,
            tokens: 0.0,
            last: std::time::Instant::now(),
        };
        if let Some(rate) = rate {
            bucket.tokens = Self::burst(rate);
        }
        bucket
    }

    /// 50 ms worth of bytes.
    fn burst(rate: u64) -> f64 {
        rate as f64 / 20.0
    }

    /// How many of `want` bytes to write next and how long to wait first.
    fn take(&mut self, want: usize) -> (usize, Duration) {
        let Some(rate) = self.rate else {
            return (want, Duration::ZERO);
        };
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * rate as f64;
        self.tokens = (self.tokens + refill).min(Self::burst(rate));
        self.last = now;
        let piece = (rate / 20).clamp(1, MAX_PACED_WRITE);
        let n = want.min(usize::try_from(piece).unwrap_or(usize::MAX));
        self.tokens -= n as f64;
        let wait = if self.tokens < 0.0 {
            Duration::from_secs_f64(-self.tokens / rate as f64)
        } else {
            Duration::ZERO
        };
        (n, wait)
    }
}

/// The corruption one direction of one connection applies, in stream order.
#[derive(Debug)]
struct Corrupter {
    /// Stream offset of the next byte read.
    pos: u64,
    at: Option<(u64, u8)>,
    random: Option<RandomStream>,
}

impl Corrupter {
    /// Takes the pending one-shot corruption and draws the random stream for
    /// a connection being accepted now.
    fn for_new_connection(lane: &Lane) -> Corrupter {
        let at = lock(&lane.corrupt_at).take();
        let random = lock(&lane.corrupt_random).as_mut().map(|config| {
            let k = config.next_connection;
            config.next_connection += 1;
            RandomStream::new(config.probability, connection_seed(config.seed, k))
        });
        Corrupter { pos: 0, at, random }
    }

    /// Corrupts `data`, the next bytes of the stream; returns how many bytes
    /// were hit.
    fn apply(&mut self, data: &mut [u8]) -> u64 {
        let start = self.pos;
        let end = start + data.len() as u64;
        let mut hits = 0;
        if let Some((offset, mask)) = self.at
            && (start..end).contains(&offset)
        {
            data[index(offset - start)] ^= mask;
            hits += 1;
            self.at = None;
        }
        if let Some(random) = &mut self.random {
            while let Some(next) = random.next
                && next < end
            {
                data[index(next - start)] ^= random.rng.random_range(1..=u8::MAX);
                hits += 1;
                random.next = random
                    .gap()
                    .and_then(|gap| gap.checked_add(1))
                    .and_then(|step| next.checked_add(step));
            }
        }
        self.pos = end;
        hits
    }
}

fn index(offset_in_chunk: u64) -> usize {
    usize::try_from(offset_in_chunk).expect("offset within a chunk fits usize")
}

/// Mixes the user's seed with the connection index.
fn connection_seed(seed: u64, connection: u64) -> u64 {
    seed ^ connection.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Positions to corrupt, drawn as geometric gaps so the positions depend
/// only on the seed, not on how the stream is chunked.
#[derive(Debug)]
struct RandomStream {
    rng: StdRng,
    probability: f64,
    /// Stream offset of the next byte to corrupt; `None` for never.
    next: Option<u64>,
}

impl RandomStream {
    fn new(probability: f64, seed: u64) -> RandomStream {
        let mut stream = RandomStream {
            rng: StdRng::seed_from_u64(seed),
            probability,
            next: None,
        };
        stream.next = stream.gap();
        stream
    }

    /// Bytes to skip before the next corrupted one, or `None` for never.
    fn gap(&mut self) -> Option<u64> {
        if self.probability <= 0.0 {
            return None;
        }
        if self.probability >= 1.0 {
            return Some(0);
        }
        let u: f64 = self.rng.random();
        // Inverse CDF of the geometric distribution; `as` saturates.
        Some(((-u).ln_1p() / (-self.probability).ln_1p()).floor() as u64)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keeps `connections_open` right however a connection task ends, including
/// being dropped with the runtime.
#[derive(Debug)]
struct OpenGuard(Arc<Shared>);

impl OpenGuard {
    fn new(shared: &Arc<Shared>) -> OpenGuard {
        shared.open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(Arc::clone(shared))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => accepted,
        };
        let client = match accepted {
            Ok((client, _peer)) => client,
            Err(_) => {
                // Out of descriptors or an aborted handshake: back off
                // instead of spinning.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.refuse_new.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        // Everything a connection depends on is fixed here, at accept, so a
        // fault set before a connection is accepted applies to it.
        let corrupters =
            Direction::ALL.map(|dir| Corrupter::for_new_connection(&shared.lanes[dir.index()]));
        let reset = shared.reset_epoch.subscribe();
        let open = OpenGuard::new(&shared);
        tokio::spawn(run_connection(
            client,
            target,
            Arc::clone(&shared),
            corrupters,
            reset,
            open,
        ));
    }
}

/// How a forwarded connection ended.
enum End {
    /// Both directions reached EOF and were shut down in order.
    Closed,
    /// A read or write failed; the other side gets an RST too.
    Failed,
    /// `reset_all` was called.
    Reset,
}

async fn run_connection(
    mut client: TcpStream,
    target: SocketAddr,
    shared: Arc<Shared>,
    corrupters: [Corrupter; 2],
    mut reset: watch::Receiver<u64>,
    _open: OpenGuard,
) {
    let _ = client.set_nodelay(true);
    let connected = tokio::select! {
        biased;
        _ = reset.changed() => {
            shared.resets.fetch_add(1, Ordering::SeqCst);
            abort(client);
            return;
        }
        connected = TcpStream::connect(target) => connected,
    };
    let Ok(mut upstream) = connected else {
        // The target is down: the client sees a reset, as it would dialing
        // the target directly.
        abort(client);
        return;
    };
    let _ = upstream.set_nodelay(true);
    match forward(&mut client, &mut upstream, &shared, corrupters, &mut reset).await {
        End::Closed => {}
        End::Failed => {
            abort(client);
            abort(upstream);
        }
        End::Reset => {
            shared.resets.fetch_add(1, Ordering::SeqCst);
            abort(client);
            abort(upstream);
        }
    }
}

/// Closes `stream` with an RST instead of a FIN.
fn abort(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn forward(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    shared: &Shared,
    [c2s_corrupter, s2c_corrupter]: [Corrupter; 2],
    reset: &mut watch::Receiver<u64>,
) -> End {
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let [c2s, s2c] = &shared.lanes;
    let c2s_budget = Semaphore::new(QUEUE_LIMIT);
    let s2c_budget = Semaphore::new(QUEUE_LIMIT);
    let (c2s_tx, c2s_rx) = mpsc::unbounded_channel();
    let (s2c_tx, s2c_rx) = mpsc::unbounded_channel();
    let pumps = async {
        tokio::try_join!(
            read_lane(&mut client_read, c2s_tx, &c2s_budget, c2s, c2s_corrupter),
            write_lane(&mut upstream_write, c2s_rx, &c2s_budget, c2s),
            read_lane(&mut upstream_read, s2c_tx, &s2c_budget, s2c, s2c_corrupter),
            write_lane(&mut client_write, s2c_rx, &s2c_budget, s2c),
        )
    };
    tokio::select! {
        biased;
        _ = reset.changed() => End::Reset,
        pumped = pumps => match pumped {
            Ok(_) => End::Closed,
            Err(_) => End::Failed,
        },
    }
}

/// Bytes read from one side, due to be written to the other at `due`.
struct Chunk {
    due: Instant,
    data: Vec<u8>,
}

/// Reads one direction into the delay line until EOF.
async fn read_lane(
    src: &mut ReadHalf<'_>,
    tx: mpsc::UnboundedSender<Chunk>,
    budget: &Semaphore,
    lane: &Lane,
    mut corrupter: Corrupter,
) -> io::Result<()> {
    let mut buf = vec![0; CHUNK];
    loop {
        let n = src.read(&mut buf).await?;
        if n == 0 {
            // Dropping `tx` tells the writer to shut its side down once the
            // queue drains.
            return Ok(());
        }
        let due = Instant::now() + lane.settings.borrow().latency;
        let mut data = buf[..n].to_vec();
        let hits = corrupter.apply(&mut data);
        lane.bytes_corrupted.fetch_add(hits, Ordering::SeqCst);
        let permits = u32::try_from(n).expect("chunk size fits u32");
        budget
            .acquire_many(permits)
            .await
            .expect("queue budget is never closed")
            .forget();
        if tx.send(Chunk { due, data }).is_err() {
            // The writer failed; its error ends the connection.
            return Ok(());
        }
    }
}

/// Writes one direction out of the delay line, honouring stalls and the
/// bandwidth cap, then shuts the write side down.
async fn write_lane(
    dst: &mut WriteHalf<'_>,
    mut rx: mpsc::UnboundedReceiver<Chunk>,
    budget: &Semaphore,
    lane: &Lane,
) -> io::Result<()> {
    let mut settings = lane.settings.subscribe();
    while let Some(chunk) = rx.recv().await {
        tokio::time::sleep_until(chunk.due).await;
        let mut rest = &chunk.data[..];
        while !rest.is_empty() {
            settings
                .wait_for(|settings| !settings.stalled)
                .await
                .map(drop)
                .expect("lane settings outlive connections");
            let (n, wait) = lock(&lane.bucket).take(rest.len());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            dst.write_all(&rest[..n]).await?;
            lane.bytes_forwarded.fetch_add(n as u64, Ordering::SeqCst);
            budget.add_permits(n);
            rest = &rest[n..];
        }
    }
    dst.shutdown().await
}
