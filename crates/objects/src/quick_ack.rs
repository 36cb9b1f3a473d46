//! A TCP transport for ureq that acknowledges every response segment at
//! once (`TCP_QUICKACK` before each read).
//!
//! Why: an S3 server that does not set `TCP_NODELAY` on its sockets (Garage
//! 2.5 does not, on its API or its RPC sockets) sends a response as two
//! writes — the headers, then the body — and Nagle's algorithm holds a
//! small body until the headers are acknowledged. Linux delays that
//! acknowledgement (up to 40 ms, expecting to piggyback it on data the
//! client never sends), so a small ranged GET took 40–90 ms on loopback
//! where the server needed 2 ms (measured against a 3-node Garage cluster:
//! 4 KiB ranged GETs p50 47.7 ms → 2.4 ms with quick acknowledgements,
//! docs/benchmarks.md). That latency is what a volume being recovered from
//! a bucket sees on every cold read.
//!
//! Linux leaves quick-ack mode again by itself (it is not a sticky socket
//! option), so it is set before every read, one `setsockopt` per read.
//! Everything else is what ureq's own `TcpConnector` does: connect to the
//! resolved addresses in turn within the connect timeout, `TCP_NODELAY`,
//! per-read and per-write timeouts, a shutdown handle. ureq does not expose
//! its TCP stream to a wrapping transport, hence this one (about a hundred
//! lines) rather than a wrapper. TLS chains on top unchanged.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::Error;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, ShutdownHandle,
    Transport,
};

/// Opens plain TCP connections whose reads acknowledge at once.
#[derive(Debug, Default)]
pub(crate) struct QuickAckConnector;

impl<In: Transport> Connector<In> for QuickAckConnector {
    type Out = Either<In, QuickAckTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if chained.is_some() {
            // An earlier connector (a proxy) already made the connection.
            return Ok(chained.map(Either::A));
        }
        let timeout = details.timeout.not_zero().map(|t| *t);
        let mut last = None;
        for addr in details.addrs.iter() {
            let attempt = match timeout {
                Some(t) => TcpStream::connect_timeout(addr, t),
                None => TcpStream::connect(addr),
            };
            match attempt {
                Ok(stream) => {
                    if details.config.no_delay() {
                        stream.set_nodelay(true)?;
                    }
                    let transport = QuickAckTransport {
                        stream: Arc::new(Socket(stream)),
                        buffers: LazyBuffers::new(
                            details.config.input_buffer_size(),
                            details.config.output_buffer_size(),
                        ),
                        read_timeout: None,
                        write_timeout: None,
                    };
                    (details.register_shutdown)(
                        Arc::downgrade(&transport.stream) as Weak<dyn ShutdownHandle>
                    )?;
                    return Ok(Some(Either::B(transport)));
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    last = Some(Error::Timeout(ureq::Timeout::Connect));
                }
                Err(e) => last = Some(Error::Io(e)),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::Io(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "no address to connect to",
            ))
        }))
    }
}

/// A connected socket (see the module docs).
pub(crate) struct QuickAckTransport {
    /// Shared (weakly) with the agent's shutdown handle.
    stream: Arc<Socket>,
    buffers: LazyBuffers,
    /// The timeouts last set on the socket (a syscall only on change).
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

/// The socket, a type of this crate so that it can be the agent's
/// shutdown handle (the orphan rule).
struct Socket(TcpStream);

impl ShutdownHandle for Socket {
    fn shutdown(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

impl std::fmt::Debug for QuickAckTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickAckTransport")
            .field("peer", &self.stream.0.peer_addr().ok())
            .finish()
    }
}

/// Asks the kernel to acknowledge the next segments at once. A failure is
/// harmless (the read is only slower), so it is ignored.
fn quick_ack(stream: &TcpStream) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket descriptor, a pointer to an int and its size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The timeout for one read or write, or the error when it has run out.
fn next(timeout: NextTimeout) -> Result<Option<Duration>, Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    Ok(timeout.not_zero().map(|t| *t))
}

fn timed_out(e: io::Error, timeout: NextTimeout) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(timeout.reason),
        _ => Error::Io(e),
    }
}

impl Transport for QuickAckTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        let limit = next(timeout)?;
        if limit != self.write_timeout {
            self.stream.0.set_write_timeout(limit)?;
            self.write_timeout = limit;
        }
        let output = &self.buffers.output()[..amount];
        (&self.stream.0)
            .write_all(output)
            .map_err(|e| timed_out(e, timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let timeout = timeout.for_read();
        let limit = next(timeout)?;
        if limit != self.read_timeout {
            self.stream.0.set_read_timeout(limit)?;
            self.read_timeout = limit;
        }
        quick_ack(&self.stream.0);
        let input = self.buffers.input_append_buf();
        let amount = loop {
            match (&self.stream.0).read(input) {
                // A signal: the socket timeout restarts, which can only
                // lengthen the wait by what passed before the signal.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                result => break result.map_err(|e| timed_out(e, timeout))?,
            }
        };
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        // A pooled connection is reusable when nothing is waiting on it
        // (the server closed it or sent bytes nobody asked for otherwise).
        let probe = || -> io::Result<bool> {
            self.stream.0.set_nonblocking(true)?;
            let mut byte = [0u8];
            let open = matches!(
                (&self.stream.0).read(&mut byte),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            );
            self.stream.0.set_nonblocking(false)?;
            Ok(open)
        };
        probe().unwrap_or(false)
    }
}
