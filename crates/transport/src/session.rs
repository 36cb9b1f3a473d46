//! [`Session`]: an authenticated, version-agreed connection to a partner
//! site, carrying [`Message`]s with keepalive, RTT measurement, zstd when
//! negotiated, and bandwidth limits on bulk traffic.
//!
//! Each session runs two tasks that own the two halves of the TLS stream:
//!
//! - the **reader** decodes frames, answers `Ping` with `Pong`, records RTT
//!   from `Pong`, and hands every other message to [`Session::recv`]. A frame
//!   that does not decode ends the session: the reader logs it, tells the
//!   peer (`Error`), and `recv` returns the error;
//! - the **writer** sends queued frames, control queue first: keepalives,
//!   acks and requests go out ahead of queued bulk frames. Bulk frames are
//!   throttled *before* they are queued ([`crate::TokenBucket`]), so the
//!   bulk queue never holds more than a few frames and a control message
//!   waits at most for the frame being written. It sends a `Ping` every
//!   keepalive interval.
//!
//! Both halves are wrapped in a stall watchdog: a peer from which nothing
//! arrives (not even a keepalive) for `dead_after`, or which stops taking our
//! bytes for that long, is declared dead, and `recv` returns
//! [`TransportError::PeerDead`].
//!
//! Ordering: messages of one class (control, bulk) arrive in the order they
//! were sent; a control message may overtake bulk messages queued before it.
//! A later protocol step that must follow data (a commit after the blocks)
//! waits for the data's acknowledgements first.
//!
//! ```mermaid
//! stateDiagram-v2
//!     [*] --> Handshaking: TCP connected / accepted
//!     Handshaking --> Refused: TLS refused, version or name mismatch
//!     Refused --> [*]: both sides log the reason
//!     Handshaking --> Open: both HelloAccept
//!     Open --> Open: messages, Ping/Pong every interval
//!     Open --> Closing: close() / drop, or Bye received
//!     Open --> Failed: malformed frame, peer Error, silent for dead_after, I/O error
//!     Closing --> [*]: Bye sent, TLS close_notify
//!     Failed --> [*]: recv() returns the error
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use offsite_protocol::{
    BulkFrame, Compression, EncodedFrame, ErrorCode, Features, FramedReader, Message,
    MessageVersion, PayloadHash, SUPPORTED_VERSIONS, StreamError, encode_frame, write_frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{Instrument, debug, info_span, warn};

use crate::bucket::TokenBucket;
use crate::direct::{DirectParts, DirectStream};
use crate::error::TransportError;
use crate::identity::Fingerprint;
use crate::peers::PeerName;
use crate::stall::Stall;

/// Bytes read from the socket at once. rustls asks for a record (16 KiB)
/// or less per read; a buffer under it turns that into one system call per
/// this many bytes.
pub(crate) const SOCKET_READ_BUFFER: usize = 256 << 10;
/// Frames queued for the writer ahead of bulk data.
const CONTROL_QUEUE: usize = 64;
/// Bulk frames queued for the writer (already paid for in the token bucket).
const BULK_QUEUE: usize = 4;
/// Messages decoded but not yet taken by [`Session::recv`].
const INBOUND_QUEUE: usize = 16;

/// Tunables of sessions, for both connecting and listening sites.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// How long TLS plus the hello exchange may take.
    pub handshake_timeout: Duration,
    /// How often each side sends a `Ping`.
    pub keepalive_interval: Duration,
    /// A peer silent (or not reading) for this long is dead. Keep it several
    /// keepalive intervals long.
    pub dead_after: Duration,
    /// Offer zstd compression of payloads (used if the peer offers it too).
    pub compression: bool,
    /// zstd level when compressing.
    pub zstd_level: i32,
    /// Offer [`Features::SELF_CHECKED_BULK`]: a sync stream's batches
    /// travel without the per-frame BLAKE3 hash when the peer offers it
    /// too (`false` only to test the hashed framing against a new peer).
    pub self_checked_bulk: bool,
    /// The default bandwidth limit of bulk messages sent on the session.
    pub bandwidth: Option<Arc<TokenBucket>>,
    versions: RangeInclusive<u16>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(5),
            dead_after: Duration::from_secs(30),
            compression: true,
            zstd_level: 1,
            self_checked_bulk: true,
            bandwidth: None,
            versions: SUPPORTED_VERSIONS,
        }
    }
}

impl SessionOptions {
    /// Test hook: offer `versions` instead of [`SUPPORTED_VERSIONS`] in the
    /// hello, to exercise version negotiation and its errors.
    #[doc(hidden)]
    pub fn offer_versions_for_testing(mut self, versions: RangeInclusive<u16>) -> Self {
        self.versions = versions;
        self
    }

    pub(crate) fn versions(&self) -> RangeInclusive<u16> {
        self.versions.clone()
    }

    pub(crate) fn offered_features(&self) -> Features {
        let zstd = if self.compression {
            Features::ZSTD
        } else {
            Features::NONE
        };
        if self.self_checked_bulk {
            zstd.union(Features::SELF_CHECKED_BULK)
        } else {
            zstd
        }
    }
}

/// Which side of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialed the partner.
    Connector,
    /// The partner dialed our listener.
    Listener,
}

/// What the handshake established about the peer.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The partner's name (pinned for its certificate, and announced by it).
    pub peer_name: PeerName,
    /// The partner's certificate fingerprint.
    pub peer_fingerprint: Fingerprint,
    /// The partner's address.
    pub peer_addr: SocketAddr,
    /// The negotiated protocol version.
    pub version: MessageVersion,
    /// Features in use (both offered).
    pub features: Features,
    /// Our side.
    pub role: Role,
}

impl SessionInfo {
    fn describe(&self) -> String {
        format!("{} ({})", self.peer_name, self.peer_addr)
    }
}

/// How the session is ending, as seen by the two tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Running,
    /// Orderly: flush control frames, send `Bye`, close TLS.
    Close,
    /// After an error: flush control frames (an `Error`), close TLS.
    Abort,
    /// The writer failed; the reader reports it.
    WriterFailed,
    /// Both tasks hand their halves back ([`Session::into_direct`]):
    /// queued control frames are written first, nothing else.
    Handover,
}

struct Shared {
    peer: String,
    epoch: Instant,
    next_nonce: AtomicU64,
    /// Last RTT in microseconds; 0 = none yet.
    last_rtt_micros: AtomicU64,
    waiting_pongs: Mutex<HashMap<u64, oneshot::Sender<Duration>>>,
    stop: watch::Sender<Stop>,
    writer_error: Mutex<Option<TransportError>>,
}

impl Shared {
    fn ping(&self) -> (u64, Message) {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let message = Message::Ping {
            nonce,
            sent_at_micros: self.epoch.elapsed().as_micros() as u64,
        };
        (nonce, message)
    }

    fn record_pong(&self, nonce: u64, sent_at_micros: u64) {
        let now = self.epoch.elapsed().as_micros() as u64;
        let rtt = Duration::from_micros(now.saturating_sub(sent_at_micros));
        self.last_rtt_micros
            .store(rtt.as_micros().max(1) as u64, Ordering::Relaxed);
        let waiter = self
            .waiting_pongs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&nonce);
        if let Some(waiter) = waiter {
            // The pinger may have given up waiting.
            let _ = waiter.send(rtt);
        }
    }

    /// Moves from `Running` to `to`; a session already stopping keeps its reason.
    fn stop(&self, to: Stop) {
        self.stop.send_if_modified(|state| {
            let change = *state == Stop::Running;
            if change {
                *state = to;
            }
            change
        });
    }
}

/// The sending side of a [`Session`]; cheap to clone, usable from several
/// tasks. Fails with [`TransportError::Closed`] once the session is gone.
#[derive(Clone)]
pub struct SessionSender {
    control: mpsc::Sender<EncodedFrame>,
    bulk: mpsc::Sender<EncodedFrame>,
    compression: Compression,
    limit: Option<Arc<TokenBucket>>,
    /// Both sides offered [`Features::SELF_CHECKED_BULK`].
    self_checked: bool,
    shared: Arc<Shared>,
    dead_after: Duration,
}

impl fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSender")
            .field("compression", &self.compression)
            .field("limited", &self.limit.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionSender {
    /// Queues `message`; bulk messages first wait for the session's default
    /// bandwidth limit, if any. Encoding (hashing, compression) happens here,
    /// on the caller's task.
    pub async fn send(&self, message: Message) -> Result<(), TransportError> {
        self.send_limited(message, self.limit.as_deref()).await
    }

    /// Queues `message`; bulk messages first wait for `limit` (a group's
    /// bucket) instead of the session default. Control messages never wait
    /// for a bucket.
    pub async fn send_limited(
        &self,
        message: Message,
        limit: Option<&TokenBucket>,
    ) -> Result<(), TransportError> {
        let frame = encode_frame(&message, self.compression).map_err(TransportError::Encode)?;
        let queue = if message.is_bulk() {
            if let Some(bucket) = limit {
                bucket.acquire(frame.len() as u64).await;
            }
            &self.bulk
        } else {
            &self.control
        };
        queue.send(frame).await.map_err(|_| TransportError::Closed)
    }

    /// Queues a `BulkData` frame built in place ([`BulkFrame`]) with
    /// sequence number `seq`, after waiting for `limit` like
    /// [`send_limited`](Self::send_limited). `self_checked`: the payload
    /// carries checksums of its own that the peer checks before it uses a
    /// byte (write-log records, each with its CRC32C); the frame then goes
    /// without its BLAKE3 hash where the session negotiated
    /// [`Features::SELF_CHECKED_BULK`]. A compressing session sends the
    /// payload as an ordinary message (compressed, hashed).
    pub async fn send_bulk_frame(
        &self,
        frame: BulkFrame,
        seq: u64,
        self_checked: bool,
        limit: Option<&TokenBucket>,
    ) -> Result<(), TransportError> {
        if self.compression != Compression::None {
            let payload = frame.into_payload();
            return self
                .send_limited(Message::BulkData { seq, payload }, limit)
                .await;
        }
        let hash = if self_checked && self.self_checked {
            PayloadHash::Omitted
        } else {
            PayloadHash::Blake3
        };
        let frame = frame
            .into_encoded(seq, hash)
            .map_err(TransportError::Encode)?;
        if let Some(bucket) = limit {
            bucket.acquire(frame.len() as u64).await;
        }
        self.bulk
            .send(frame)
            .await
            .map_err(|_| TransportError::Closed)
    }

    /// Sends a `Ping` now and waits for its `Pong` (at most `dead_after`).
    /// The reader handles the `Pong` in order with other messages, so while
    /// the peer sends messages, someone must take them from
    /// [`Session::recv`] for this to complete.
    pub async fn measure_rtt(&self) -> Result<Duration, TransportError> {
        let (nonce, ping) = self.shared.ping();
        let (tx, rx) = oneshot::channel();
        self.shared
            .waiting_pongs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(nonce, tx);
        let result = async {
            self.send(ping).await?;
            match tokio::time::timeout(self.dead_after, rx).await {
                Ok(Ok(rtt)) => Ok(rtt),
                Ok(Err(_)) => Err(TransportError::Closed),
                Err(_) => Err(TransportError::PeerDead {
                    peer: self.shared.peer.clone(),
                    silent_for: self.dead_after,
                }),
            }
        }
        .await;
        self.shared
            .waiting_pongs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&nonce);
        result
    }
}

/// An open session with a partner site. Dropping it closes the connection
/// (with a `Bye`, in the background); [`Session::close`] does the same and
/// waits for it.
pub struct Session {
    info: SessionInfo,
    sender: SessionSender,
    inbound: mpsc::Receiver<Result<Message, TransportError>>,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
    /// Collects the halves the tasks hand back and makes them one
    /// blocking connection (typed in [`Session::start`]).
    reunite: Mutex<Option<Reunite>>,
    send_timeout: Duration,
}

type Reunite = Box<
    dyn FnOnce() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<DirectParts, TransportError>> + Send>,
        > + Send,
>;

/// A session's stream that can become a [`DirectStream`]: TLS over a TCP
/// socket read through a buffer.
pub(crate) trait IntoDirect: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The socket (still non-blocking), ciphertext buffered ahead of rustls,
    /// and the TLS state.
    fn into_direct(self) -> std::io::Result<(std::net::TcpStream, Vec<u8>, rustls::Connection)>;
}

fn unbuffer(
    socket: tokio::io::BufReader<tokio::net::TcpStream>,
) -> std::io::Result<(std::net::TcpStream, Vec<u8>)> {
    let ahead = socket.buffer().to_vec();
    Ok((socket.into_inner().into_std()?, ahead))
}

impl IntoDirect for tokio_rustls::client::TlsStream<tokio::io::BufReader<tokio::net::TcpStream>> {
    fn into_direct(self) -> std::io::Result<(std::net::TcpStream, Vec<u8>, rustls::Connection)> {
        let (io, tls) = self.into_inner();
        let (socket, ahead) = unbuffer(io)?;
        Ok((socket, ahead, tls.into()))
    }
}

impl IntoDirect for tokio_rustls::server::TlsStream<tokio::io::BufReader<tokio::net::TcpStream>> {
    fn into_direct(self) -> std::io::Result<(std::net::TcpStream, Vec<u8>, rustls::Connection)> {
        let (io, tls) = self.into_inner();
        let (socket, ahead) = unbuffer(io)?;
        Ok((socket, ahead, tls.into()))
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts the reader and writer tasks on an established stream.
    /// `read_ahead` holds bytes the handshake read past the hello.
    pub(crate) fn start<S>(
        stream: S,
        read_ahead: BytesMut,
        info: SessionInfo,
        options: &SessionOptions,
    ) -> Self
    where
        S: IntoDirect,
    {
        let (read_half, write_half) = tokio::io::split(stream);
        let mut reader =
            FramedReader::with_buffer(Stall::new(read_half, options.dead_after), read_ahead);
        // A sync stream's first batches may arrive before its session hands
        // the connection over, so the session's reader accepts them too.
        reader.accept_unhashed_bulk(info.features.contains(Features::SELF_CHECKED_BULK));
        let writer = Stall::new(write_half, options.dead_after);
        let (control_tx, control_rx) = mpsc::channel(CONTROL_QUEUE);
        let (bulk_tx, bulk_rx) = mpsc::channel(BULK_QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let compression = if info.features.contains(Features::ZSTD) {
            Compression::Zstd {
                level: options.zstd_level,
            }
        } else {
            Compression::None
        };
        let shared = Arc::new(Shared {
            peer: info.describe(),
            epoch: Instant::now(),
            next_nonce: AtomicU64::new(1),
            last_rtt_micros: AtomicU64::new(0),
            waiting_pongs: Mutex::new(HashMap::new()),
            stop: watch::Sender::new(Stop::Running),
            writer_error: Mutex::new(None),
        });
        let span = info_span!("session", peer = %shared.peer, role = ?info.role);
        let (read_back, read_returned) = oneshot::channel();
        let (write_back, write_returned) = oneshot::channel();
        let reader = tokio::spawn(
            read_loop(
                reader,
                inbound_tx,
                control_tx.clone(),
                shared.clone(),
                options.dead_after,
                read_back,
            )
            .instrument(span.clone()),
        );
        let writer = tokio::spawn(
            write_loop(
                writer,
                control_rx,
                bulk_rx,
                shared.clone(),
                options.keepalive_interval,
                options.dead_after,
                write_back,
            )
            .instrument(span),
        );
        let peer = shared.peer.clone();
        let reunite: Reunite = Box::new(move || {
            Box::pin(async move {
                let (Ok(reader), Ok(writer)) = (read_returned.await, write_returned.await) else {
                    return Err(TransportError::Closed);
                };
                let (read_half, plain_ahead) = reader.into_parts();
                let stream = read_half.into_inner().unsplit(writer.into_inner());
                let (socket, cipher_ahead, tls) = stream
                    .into_direct()
                    .map_err(|source| TransportError::Io { peer, source })?;
                Ok(DirectParts {
                    socket,
                    cipher_ahead,
                    tls,
                    plain_ahead,
                    pending: Default::default(),
                })
            })
        });
        let self_checked = info.features.contains(Features::SELF_CHECKED_BULK);
        Self {
            info,
            sender: SessionSender {
                control: control_tx,
                bulk: bulk_tx,
                compression,
                limit: options.bandwidth.clone(),
                self_checked,
                shared: shared.clone(),
                dead_after: options.dead_after,
            },
            inbound: inbound_rx,
            shared,
            reader,
            writer: Some(writer),
            reunite: Mutex::new(Some(reunite)),
            send_timeout: options.dead_after,
        }
    }

    /// Stops the session's tasks and hands its connection to the calling
    /// threads (see [`DirectStream`]). Call it at a quiet point of the
    /// protocol: after an answered request, before either side sends
    /// anything else (keepalives in flight are fine). Control messages
    /// already queued here are written first.
    ///
    /// The peer may already have ended the session (it sent what it had and
    /// said `Bye` before this side got here): the stream then returns those
    /// messages and then the end, and sends fail.
    pub async fn into_direct(mut self) -> Result<DirectStream, TransportError> {
        self.shared.stop(Stop::Handover);
        let peer_ended = *self.shared.stop.borrow() == Stop::Close;
        let reunite = self
            .reunite
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or(TransportError::Closed)?;
        // The reader may be waiting for room in the inbound queue (the peer
        // sent more than it holds before this side got here): it gets the
        // room, or it would never see the handover.
        let mut received = Vec::new();
        let mut reunite = reunite();
        let reunited = loop {
            tokio::select! {
                reunited = &mut reunite => break reunited,
                Some(m) = self.inbound.recv() => received.push(m),
            }
        };
        while let Ok(m) = self.inbound.try_recv() {
            received.push(m);
        }
        // After a failure the reader's error, not just "closed".
        let pending = received.into_iter().collect::<Result<VecDeque<_>, _>>()?;
        let mut parts = reunited?;
        parts.pending = pending;
        if peer_ended {
            // Nothing after the peer's end counts (its TLS close at most),
            // and a socket the peer closed may fail to take rustls's answer.
            parts.cipher_ahead.clear();
            parts.plain_ahead.clear();
            parts.pending.push_back(Message::Bye);
        }
        let compression = self.sender.compression;
        let parts = tokio::task::spawn_blocking({
            let info = self.info.clone();
            let timeout = self.send_timeout;
            move || DirectStream::new(parts, info, compression, timeout)
        })
        .await
        .map_err(|_| TransportError::Closed)??;
        Ok(parts)
    }

    /// Who the peer is and what was agreed.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// A sending handle, e.g. for a task that sends while this one receives.
    pub fn sender(&self) -> SessionSender {
        self.sender.clone()
    }

    /// Sends `message` (see [`SessionSender::send`]).
    pub async fn send(&self, message: Message) -> Result<(), TransportError> {
        self.sender.send(message).await
    }

    /// The next message from the peer. `Ok(None)`: the peer ended the
    /// session (`Bye`) or it was closed. Keepalives never show up here.
    /// After an error, the session is over.
    pub async fn recv(&mut self) -> Result<Option<Message>, TransportError> {
        self.inbound.recv().await.transpose()
    }

    /// The next message if one has already arrived (never waits); `None`
    /// also when the session ended (the next [`Session::recv`] says how).
    pub fn try_recv(&mut self) -> Option<Result<Message, TransportError>> {
        self.inbound.try_recv().ok()
    }

    /// Whether the session is over: the peer closed it, a frame failed, or
    /// it was silent for `dead_after` (the keepalive's verdict). Never
    /// waits; [`Session::recv`] then says how it ended.
    pub fn is_finished(&self) -> bool {
        self.reader.is_finished() || self.inbound.is_closed()
    }

    /// The round-trip time of the last answered keepalive, if any.
    pub fn rtt(&self) -> Option<Duration> {
        match self.shared.last_rtt_micros.load(Ordering::Relaxed) {
            0 => None,
            micros => Some(Duration::from_micros(micros)),
        }
    }

    /// Sends a `Ping` now and waits for its `Pong` (see [`SessionSender::measure_rtt`]).
    pub async fn measure_rtt(&self) -> Result<Duration, TransportError> {
        self.sender.measure_rtt().await
    }

    /// Ends the session: queued control messages and a `Bye` are sent, TLS
    /// is closed; waits for that (bounded by `dead_after`).
    pub async fn close(mut self) {
        self.shared.stop(Stop::Close);
        if let Some(writer) = self.writer.take() {
            // The writer records its own failure; only its end matters here.
            let _ = writer.await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.stop(Stop::Close);
        self.reader.abort();
    }
}

/// Returns once the session is stopping (or its state is gone).
async fn stopped(stop: &mut watch::Receiver<Stop>) {
    // An error means the state is gone: stopped as well.
    let _ = stop.wait_for(|s| *s != Stop::Running).await;
}

/// A short description of a stream error for the peer and the log.
fn reader_error(shared: &Shared, err: StreamError, dead_after: Duration) -> TransportError {
    let peer = shared.peer.clone();
    match err {
        StreamError::Protocol(source) => TransportError::Protocol { peer, source },
        StreamError::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            TransportError::PeerDead {
                peer,
                silent_for: dead_after,
            }
        }
        StreamError::Io(source) => TransportError::Io { peer, source },
    }
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut reader: FramedReader<Stall<ReadHalf<R>>>,
    inbound: mpsc::Sender<Result<Message, TransportError>>,
    control: mpsc::Sender<EncodedFrame>,
    shared: Arc<Shared>,
    dead_after: Duration,
    hand_back: oneshot::Sender<FramedReader<Stall<ReadHalf<R>>>>,
) {
    let mut stop = shared.stop.subscribe();
    loop {
        let read = tokio::select! {
            // Small frames read cancel-safely: a handover keeps their bytes.
            read = reader.read_message() => read,
            () = stopped(&mut stop) => {
                if *stop.borrow() == Stop::Handover {
                    // The taker may have given up; the reader is dropped then.
                    let _ = hand_back.send(reader);
                    return;
                }
                let failed = shared.writer_error.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(err) = failed {
                    warn!("closing session: {err}");
                    // The session's owner may be gone; the error is logged.
                    let _ = inbound.send(Err(err)).await;
                }
                return;
            }
        };
        let (err, reply) = match read {
            Ok(Some(Message::Ping {
                nonce,
                sent_at_micros,
            })) => {
                let pong = Message::Pong {
                    nonce,
                    sent_at_micros,
                };
                if let Ok(frame) = encode_frame(&pong, Compression::None) {
                    // Fails only when the writer stopped: the session is ending.
                    let _ = control.send(frame).await;
                }
                continue;
            }
            Ok(Some(Message::Pong {
                nonce,
                sent_at_micros,
            })) => {
                shared.record_pong(nonce, sent_at_micros);
                continue;
            }
            Ok(Some(Message::Bye)) | Ok(None) => {
                debug!("peer ended the session");
                shared.stop(Stop::Close);
                if *stop.borrow() == Stop::Handover {
                    // The owner is handing over (the stop above changed
                    // nothing): the end goes to it after the messages
                    // before it, which `into_direct` is taking.
                    let _ = inbound.send(Ok(Message::Bye)).await;
                }
                // The owner may be about to hand over (it has not seen the
                // messages before this end yet): it still gets the reader
                // (see `Session::into_direct`).
                let _ = hand_back.send(reader);
                return;
            }
            Ok(Some(Message::Error { code, message })) => (
                TransportError::PeerError {
                    peer: shared.peer.clone(),
                    code,
                    message,
                },
                None,
            ),
            Ok(Some(
                m @ (Message::Hello { .. }
                | Message::HelloAccept { .. }
                | Message::HelloRefuse { .. }),
            )) => {
                let got = m.tag();
                (
                    TransportError::UnexpectedMessage {
                        peer: shared.peer.clone(),
                        expected: "no hello after the handshake",
                        got,
                    },
                    Some(Message::error(
                        ErrorCode::UnexpectedMessage,
                        format!("unexpected {got} after the handshake"),
                    )),
                )
            }
            Ok(Some(message)) => {
                if inbound.send(Ok(message)).await.is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                let err = reader_error(&shared, e, dead_after);
                let reply = matches!(err, TransportError::Protocol { .. })
                    .then(|| Message::error(ErrorCode::Protocol, err.to_string()));
                (err, reply)
            }
        };
        warn!("closing session: {err}");
        // The reply is a courtesy to a peer we are leaving; the owner may
        // be gone already; the error is logged above.
        if let Some(frame) = reply.and_then(|m| encode_frame(&m, Compression::None).ok()) {
            let _ = control.try_send(frame);
        }
        shared.stop(Stop::Abort);
        let _ = inbound.send(Err(err)).await;
        return;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: Stall<WriteHalf<W>>,
    mut control: mpsc::Receiver<EncodedFrame>,
    mut bulk: mpsc::Receiver<EncodedFrame>,
    shared: Arc<Shared>,
    keepalive: Duration,
    dead_after: Duration,
    hand_back: oneshot::Sender<Stall<WriteHalf<W>>>,
) {
    let mut stop = shared.stop.subscribe();
    let mut ticker = tokio::time::interval(keepalive);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let result: std::io::Result<()> = async {
        loop {
            let frame = tokio::select! {
                biased;
                Some(frame) = control.recv() => frame,
                () = stopped(&mut stop) => break,
                Some(frame) = bulk.recv() => frame,
                _ = ticker.tick() => {
                    let (_, ping) = shared.ping();
                    encode_frame(&ping, Compression::None).expect("a ping encodes")
                }
            };
            write_frame(&mut writer, frame).await?;
            if control.is_empty() && bulk.is_empty() {
                writer.flush().await?;
            }
        }
        let how = *stop.borrow();
        if how == Stop::WriterFailed {
            return Ok(());
        }
        while let Ok(frame) = control.try_recv() {
            write_frame(&mut writer, frame).await?;
        }
        if how == Stop::Handover {
            return writer.flush().await;
        }
        if how == Stop::Close {
            let bye = encode_frame(&Message::Bye, Compression::None).expect("bye encodes");
            write_frame(&mut writer, bye).await?;
        }
        writer.flush().await?;
        writer.shutdown().await
    }
    .await;
    let how = *stop.borrow();
    if (result.is_ok() && how == Stop::Handover) || how == Stop::Close {
        // The taker may have given up; the writer is dropped then. After
        // `Close` the peer may have ended the session just before its owner
        // handed over (see `Session::into_direct`): the half goes back shut,
        // whether or not the `Bye` got out.
        let _ = hand_back.send(writer);
        if result.is_ok() {
            return;
        }
    }
    if let Err(e) = result {
        if *stop.borrow() != Stop::Running {
            debug!("closing after the session ended: {e}");
            return;
        }
        let peer = shared.peer.clone();
        let err = if e.kind() == std::io::ErrorKind::TimedOut {
            TransportError::PeerDead {
                peer,
                silent_for: dead_after,
            }
        } else {
            TransportError::Io { peer, source: e }
        };
        *shared
            .writer_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(err);
        shared.stop(Stop::WriterFailed);
    }
}
