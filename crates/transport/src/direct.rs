//! [`DirectStream`]: a session's TLS connection taken over by blocking
//! threads, for the synchronous replication stream.
//!
//! A [`Session`](crate::Session) moves every message through two tasks
//! (reader, writer) and queues; that costs a handful of thread wake-ups per
//! message, which is nothing for bulk cycles and most of the latency of a
//! synchronous write (the primary acknowledges a write only once the
//! replica has it durable: every wake-up on that path is paid by the
//! application). [`Session::into_direct`](crate::Session::into_direct)
//! stops both tasks at a quiet point of the protocol (after a request was
//! answered, before anything else is sent) and hands over the socket, the
//! rustls connection and every byte already read, so the threads that
//! produce and wait for the messages read and write the socket themselves:
//!
//! - [`DirectStream::send`] encrypts and writes a frame on the caller's
//!   thread (frames are atomic: the rustls state is locked while one is
//!   written);
//! - [`DirectStream::recv`] reads the socket on the caller's thread; the
//!   rustls state is locked only while bytes are decrypted, never while the
//!   thread blocks, so one thread may wait for messages while another
//!   sends.
//!
//! The wire format is unchanged (the same frames, checksums and
//! compression as the session). There are no keepalive tasks: the owner
//! sends `Ping`s ([`DirectStream::recv`] answers the peer's) and passes
//! timeouts to `recv`. The owner's nonces start at
//! [`DirectStream::FIRST_NONCE`]: a `Pong` below it answers a ping the
//! session sent before the handover, may arrive after it, and is dropped. Bulk frames are not rate-limited here: a
//! synchronous write cannot wait for a token bucket.
//!
//! Written by hand because it is the session's own framing over rustls's
//! blocking API (`rustls::Connection` + `std::net::TcpStream`); no crate
//! shares one TLS connection between a reading and a writing thread.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, BufRead, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use offsite_protocol::{
    BulkFrame, Compression, Features, FrameDecoder, Message, PayloadHash, encode_frame,
};

use crate::error::TransportError;
use crate::session::SessionInfo;

/// How [`DirectStream::next`] may wait for the socket.
#[derive(Clone, Copy)]
enum Wait {
    /// Not at all; `fresh: false` also skips the system call while the
    /// last read drained the socket.
    Try { fresh: bool },
    /// Up to this long (`None`: for ever).
    Block(Option<Duration>),
}

/// Bytes read from the socket at once.
const READ_CHUNK: usize = 256 << 10;

/// What a session hands over (see the module docs).
pub(crate) struct DirectParts {
    pub(crate) socket: TcpStream,
    /// Ciphertext read from the socket but not yet given to rustls.
    pub(crate) cipher_ahead: Vec<u8>,
    pub(crate) tls: rustls::Connection,
    /// Plaintext read from rustls but not yet decoded into frames.
    pub(crate) plain_ahead: BytesMut,
    /// Messages decoded but not yet taken by the session's owner.
    pub(crate) pending: VecDeque<Message>,
}

struct Rx {
    plain: BytesMut,
    decoder: FrameDecoder,
    pending: VecDeque<Message>,
    raw: Vec<u8>,
    /// The socket's current receive timeout (set only when it changes).
    timeout: Option<Duration>,
    /// The last read took less than `raw` holds: the socket was drained.
    drained: bool,
}

/// A session's connection driven by the caller's threads (module docs).
pub struct DirectStream {
    info: SessionInfo,
    peer: String,
    socket: TcpStream,
    tls: Mutex<rustls::Connection>,
    rx: Mutex<Rx>,
    compression: Compression,
}

impl fmt::Debug for DirectStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectStream")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DirectStream {
    /// The first keepalive nonce an owner may use: above any the session
    /// used before the handover (it counts up from 1).
    pub const FIRST_NONCE: u64 = 1 << 32;

    pub(crate) fn new(
        parts: DirectParts,
        info: SessionInfo,
        compression: Compression,
        send_timeout: Duration,
    ) -> Result<Self, TransportError> {
        let peer = format!("{} ({})", info.peer_name, info.peer_addr);
        let io_err = |source| TransportError::Io {
            peer: peer.clone(),
            source,
        };
        let DirectParts {
            socket,
            cipher_ahead,
            mut tls,
            plain_ahead,
            pending,
        } = parts;
        socket.set_nonblocking(false).map_err(io_err)?;
        socket
            .set_write_timeout(Some(send_timeout))
            .map_err(io_err)?;
        // A frame is written whole under the lock; rustls must take all of it.
        tls.set_buffer_limit(None);
        let mut decoder = FrameDecoder::new();
        decoder.accept_unhashed_bulk(info.features.contains(Features::SELF_CHECKED_BULK));
        let stream = Self {
            info,
            peer: peer.clone(),
            socket,
            tls: Mutex::new(tls),
            rx: Mutex::new(Rx {
                plain: plain_ahead,
                decoder,
                pending,
                raw: vec![0; READ_CHUNK],
                timeout: None,
                drained: false,
            }),
            compression,
        };
        if !cipher_ahead.is_empty() {
            let mut rx = lock(&stream.rx);
            stream.absorb(&mut rx, &cipher_ahead)?;
        }
        Ok(stream)
    }

    /// Who the peer is and what was agreed.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    fn io(&self, source: io::Error) -> TransportError {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            return TransportError::PeerDead {
                peer: self.peer.clone(),
                silent_for: self
                    .socket
                    .write_timeout()
                    .ok()
                    .flatten()
                    .unwrap_or_default(),
            };
        }
        TransportError::Io {
            peer: self.peer.clone(),
            source,
        }
    }

    /// Encrypts and writes `message` on this thread; returns once the
    /// socket took it. A peer that takes nothing for the send timeout is
    /// dead.
    pub fn send(&self, message: &Message) -> Result<(), TransportError> {
        let frame = encode_frame(message, self.compression).map_err(TransportError::Encode)?;
        self.write_frame(&[&frame.head, &frame.payload, &frame.trailer])
    }

    /// Sends a `BulkData` frame built in place ([`BulkFrame`]) with
    /// sequence number `seq`, like [`send`](Self::send). `self_checked`:
    /// the payload carries checksums of its own that the peer checks
    /// before using it (write-log records); the frame then goes without
    /// its BLAKE3 hash if the session negotiated
    /// [`Features::SELF_CHECKED_BULK`]. A compressing session sends the
    /// payload as an ordinary message (compressed, hashed).
    pub fn send_bulk(
        &self,
        frame: BulkFrame,
        seq: u64,
        self_checked: bool,
    ) -> Result<(), TransportError> {
        if self.compression != Compression::None {
            let payload = frame.into_payload();
            return self.send(&Message::BulkData { seq, payload });
        }
        let hash = if self_checked && self.info.features.contains(Features::SELF_CHECKED_BULK) {
            PayloadHash::Omitted
        } else {
            PayloadHash::Blake3
        };
        let frame = frame.finish(seq, hash).map_err(TransportError::Encode)?;
        self.write_frame(&[&frame])
    }

    /// [`send_bulk`](Self::send_bulk) of a frame the caller keeps: its
    /// buffer is written in place and left to be
    /// [`reset`](BulkFrame::reset) and reused (a compressing session sends
    /// a copy of the payload as an ordinary message).
    pub fn send_bulk_reusing(
        &self,
        frame: &mut BulkFrame,
        seq: u64,
        self_checked: bool,
    ) -> Result<(), TransportError> {
        if self.compression != Compression::None {
            let payload = Bytes::copy_from_slice(frame.payload());
            return self.send(&Message::BulkData { seq, payload });
        }
        let hash = if self_checked && self.info.features.contains(Features::SELF_CHECKED_BULK) {
            PayloadHash::Omitted
        } else {
            PayloadHash::Blake3
        };
        let frame = frame
            .finish_in_place(seq, hash)
            .map_err(TransportError::Encode)?;
        self.write_frame(&[frame])
    }

    /// Encrypts `parts` (one frame) and writes them to the socket. They go
    /// to rustls as one vectored write, so a small frame is one TLS record
    /// (one AEAD seal, one record header) rather than one per part.
    fn write_frame(&self, parts: &[&[u8]]) -> Result<(), TransportError> {
        let mut slices: Vec<IoSlice<'_>> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p))
            .collect();
        let mut left = &mut slices[..];
        let mut tls = lock(&self.tls);
        while !left.is_empty() {
            // rustls takes everything (no buffer limit), so this loops once.
            let n = tls.writer().write_vectored(left).map_err(|e| self.io(e))?;
            if n == 0 {
                return Err(self.io(io::ErrorKind::WriteZero.into()));
            }
            IoSlice::advance_slices(&mut left, n);
        }
        self.flush_tls(&mut tls)
    }

    fn flush_tls(&self, tls: &mut rustls::Connection) -> Result<(), TransportError> {
        while tls.wants_write() {
            tls.write_tls(&mut &self.socket).map_err(|e| self.io(e))?;
        }
        Ok(())
    }

    /// Gives ciphertext to rustls and moves the plaintext into `rx`.
    fn absorb(&self, rx: &mut Rx, mut cipher: &[u8]) -> Result<(), TransportError> {
        let mut tls = lock(&self.tls);
        while !cipher.is_empty() {
            tls.read_tls(&mut cipher).map_err(|e| self.io(e))?;
            let state = tls
                .process_new_packets()
                .map_err(|source| TransportError::Tls {
                    address: self.peer.clone(),
                    source,
                });
            // Alerts, key updates: whatever rustls has to say goes now.
            self.flush_tls(&mut tls)?;
            let mut plain = state?.plaintext_bytes_to_read();
            // Copied chunk by chunk out of rustls's buffers (one copy; a
            // `read` into the buffer would first zero the room for it).
            rx.plain.reserve(plain);
            let mut reader = tls.reader();
            while plain > 0 {
                let chunk = reader.fill_buf().map_err(|e| self.io(e))?;
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len().min(plain);
                rx.plain.extend_from_slice(&chunk[..n]);
                reader.consume(n);
                plain -= n;
            }
        }
        Ok(())
    }

    /// The next message, waiting at most `timeout` (`None`: for ever).
    /// `Ok(None)`: the peer ended the stream (`Bye`, or closed). Silence for
    /// `timeout` is [`TransportError::PeerDead`]. The peer's `Ping`s are
    /// answered here and not returned; `Pong`s to the owner's pings are
    /// returned (the owner measures liveness with them).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Option<Message>, TransportError> {
        self.next(Wait::Block(timeout))
    }

    /// The next message if one can be had without waiting: decoded from
    /// bytes already read, or read from the socket without blocking while
    /// the last read filled its buffer (else the socket was drained a
    /// moment ago and a system call would most likely find nothing).
    pub fn try_recv(&self) -> Result<Option<Message>, TransportError> {
        match self.next(Wait::Try { fresh: false }) {
            Err(TransportError::PeerDead { .. }) => Ok(None),
            other => other,
        }
    }

    /// The next message if one has arrived by now, without waiting: like
    /// [`try_recv`](Self::try_recv), but asks the socket even when the last
    /// read drained it (for a caller that did something slow since).
    pub fn recv_now(&self) -> Result<Option<Message>, TransportError> {
        match self.next(Wait::Try { fresh: true }) {
            Err(TransportError::PeerDead { .. }) => Ok(None),
            other => other,
        }
    }

    fn next(&self, wait: Wait) -> Result<Option<Message>, TransportError> {
        let mut rx = lock(&self.rx);
        loop {
            if let Some(m) = rx.pending.pop_front() {
                match self.filter(m)? {
                    Some(Message::Bye) => return Ok(None),
                    Some(m) => return Ok(Some(m)),
                    None => continue,
                }
            }
            let decoded = {
                let Rx { decoder, plain, .. } = &mut *rx;
                decoder.decode(plain)
            };
            match decoded {
                Ok(Some(m)) => {
                    rx.pending.push_back(m);
                    continue;
                }
                Ok(None) => {}
                Err(source) => {
                    return Err(TransportError::Protocol {
                        peer: self.peer.clone(),
                        source,
                    });
                }
            }
            let n = match wait {
                Wait::Try { fresh: false } if rx.drained => {
                    return Err(TransportError::PeerDead {
                        peer: self.peer.clone(),
                        silent_for: Duration::ZERO,
                    });
                }
                Wait::Try { .. } => {
                    match rustix::net::recv(
                        &self.socket,
                        &mut rx.raw,
                        rustix::net::RecvFlags::DONTWAIT,
                    ) {
                        Ok((n, _)) => n,
                        Err(e) if e == rustix::io::Errno::AGAIN => {
                            return Err(TransportError::PeerDead {
                                peer: self.peer.clone(),
                                silent_for: Duration::ZERO,
                            });
                        }
                        Err(e) => return Err(self.io(e.into())),
                    }
                }
                Wait::Block(timeout) => {
                    // A zero timeout means "for ever" to the socket.
                    let timeout = timeout.map(|t| t.max(Duration::from_millis(1)));
                    if rx.timeout != timeout {
                        self.socket
                            .set_read_timeout(timeout)
                            .map_err(|e| self.io(e))?;
                        rx.timeout = timeout;
                    }
                    match (&self.socket).read(&mut rx.raw) {
                        Ok(n) => n,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            return Err(TransportError::PeerDead {
                                peer: self.peer.clone(),
                                silent_for: timeout.unwrap_or_default(),
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(self.io(e)),
                    }
                }
            };
            if n == 0 {
                return Ok(None);
            }
            rx.drained = n < rx.raw.len();
            let raw = std::mem::take(&mut rx.raw);
            let absorbed = self.absorb(&mut rx, &raw[..n]);
            rx.raw = raw;
            absorbed?;
        }
    }

    /// Answers pings, drops the session's late pongs; the peer's `Error`
    /// becomes an error.
    fn filter(&self, message: Message) -> Result<Option<Message>, TransportError> {
        match message {
            Message::Pong { nonce, .. } if nonce < Self::FIRST_NONCE => Ok(None),
            Message::Ping {
                nonce,
                sent_at_micros,
            } => {
                self.send(&Message::Pong {
                    nonce,
                    sent_at_micros,
                })?;
                Ok(None)
            }
            Message::Error { code, message } => Err(TransportError::PeerError {
                peer: self.peer.clone(),
                code,
                message,
            }),
            m => Ok(Some(m)),
        }
    }

    /// Ends the stream in order: `Bye`, TLS close, then the write side.
    pub fn close(&self) {
        // Best effort: a peer that is gone learns nothing, and the stream
        // ends either way.
        let _ = self.send(&Message::Bye);
        let mut tls = lock(&self.tls);
        tls.send_close_notify();
        let _ = self.flush_tls(&mut tls);
        let _ = self.socket.shutdown(Shutdown::Write);
    }

    /// Fails every blocked and later read or write at once (another thread
    /// gave up on the peer).
    pub fn shutdown(&self) {
        // Fails only on a socket that is already shut down.
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}
