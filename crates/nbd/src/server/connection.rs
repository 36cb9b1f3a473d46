//! One client connection from socket setup to close: wires the handshake to
//! the transmission loop, owns the tracing span (peer, export) and decides how
//! loudly each way of ending is logged.

use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, info, info_span, warn};

use super::handshake::{ClientFlags, Negotiated, Negotiator};
use super::transmission::Transmission;
use super::{ConnectionSlot, Shared};
use crate::codec::{DecodeError, OptionError};
use crate::tls::{self, HandshakeError};

/// Read buffer size: large enough to hold many pipelined request headers
/// (and small writes) per `read()` syscall.
const READ_BUFFER: usize = 64 << 10;
/// Reply buffer size: replies accumulate here until the reader runs dry.
const WRITE_BUFFER: usize = 128 << 10;

/// Why a connection ended other than by the client's choice.
#[derive(Debug, Error)]
pub(crate) enum ConnectionError {
    /// Reading from or writing to the socket failed.
    #[error("socket I/O failed")]
    Io(#[from] io::Error),
    /// The client sent a frame with a bad magic number.
    #[error("malformed frame from client")]
    Frame(#[from] DecodeError),
    /// The client set flags we did not advertise (proto.md: MUST drop).
    #[error("client sent unsupported handshake flags {0:#x}")]
    ClientFlags(u32),
    /// An option declared more data than we are willing to buffer.
    #[error("option {option} declares {length} bytes of data (limit {limit})")]
    OptionTooLong {
        /// Option code.
        option: u32,
        /// Declared data length.
        length: u32,
        /// Our bound.
        limit: u32,
    },
    /// Negotiation did not finish in time.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// `NBD_OPT_EXPORT_NAME` cannot report errors, so proto.md requires
    /// closing the connection on an unknown name.
    #[error("NBD_OPT_EXPORT_NAME asked for unknown export {0:?}")]
    UnknownExport(String),
    /// `NBD_OPT_EXPORT_NAME` before TLS on a listener that requires it
    /// (proto.md FORCEDTLS: this option cannot fail, so close).
    #[error("NBD_OPT_EXPORT_NAME without TLS on a listener that requires TLS")]
    TlsRequired,
    /// `NBD_OPT_EXPORT_NAME` named an export this session may not use for
    /// its TLS mode.
    #[error("NBD_OPT_EXPORT_NAME refused: {0}")]
    ExportTls(String),
    /// The TLS handshake after `NBD_OPT_STARTTLS` failed.
    #[error("TLS handshake failed")]
    Tls(#[from] HandshakeError),
    /// `NBD_OPT_EXPORT_NAME` data was not a valid name.
    #[error("NBD_OPT_EXPORT_NAME carried an invalid name")]
    BadExportName(#[source] OptionError),
    /// A write's payload is too large to read or skip safely.
    #[error("write of {length} bytes exceeds the {limit}-byte payload limit")]
    OversizedWrite {
        /// Declared payload length.
        length: u32,
        /// Largest payload we read or skip.
        limit: u32,
    },
}

impl ConnectionError {
    /// Protocol violations are worth a warning; a socket going away is not.
    fn is_protocol_violation(&self) -> bool {
        !matches!(self, Self::Io(_))
    }
}

/// Serves one accepted connection until it ends. Never panics on client
/// input; every failure is logged once, here.
pub(super) fn run(stream: TcpStream, peer: SocketAddr, shared: &Arc<Shared>, slot: ConnectionSlot) {
    let span = info_span!("nbd_conn", %peer, id = slot.id, export = tracing::field::Empty);
    let _entered = span.enter();
    debug!("NBD connection accepted");
    let result = serve(stream, shared, &slot, &span);
    match result {
        Ok(()) => debug!("NBD connection closed"),
        Err(ConnectionError::Tls(err)) => {
            warn!(%peer, error = %chain(&err), "NBD client failed the TLS handshake; closing");
        }
        Err(err) if err.is_protocol_violation() => {
            warn!(%peer, error = %chain(&err), "closing NBD connection after protocol violation");
        }
        Err(ConnectionError::Io(err)) if is_disconnect(&err) => {
            debug!(error = %err, "NBD client went away");
        }
        Err(err) => {
            info!(%peer, error = %chain(&err), "NBD connection ended");
        }
    }
    drop(slot);
}

fn serve(
    stream: TcpStream,
    shared: &Arc<Shared>,
    slot: &ConnectionSlot,
    span: &tracing::Span,
) -> Result<(), ConnectionError> {
    let config = &shared.config;
    // proto.md asks both sides to disable Nagle: replies are small and a
    // delayed ACK would otherwise add up to 40 ms per request.
    stream.set_nodelay(true)?;
    stream.set_write_timeout(config.write_timeout)?;
    stream.set_read_timeout(Some(config.handshake_timeout))?;
    // Kept for the socket options and the upgrade to TLS.
    let socket = stream.try_clone()?;
    let mut reader = BufReader::with_capacity(READ_BUFFER, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, stream);

    let mut negotiator = Negotiator {
        registry: shared.registry.as_ref(),
        config,
        shutting_down: &shared.shutting_down,
        deadline: Instant::now() + config.handshake_timeout,
        on_bind: &|name| shared.bind_export(slot.id, name),
        tls: shared.tls.mode(),
        tls_active: false,
    };
    let timeout = config.handshake_timeout;
    let flags = in_handshake(negotiator.greet(&mut reader, &mut writer), timeout)?;
    match in_handshake(negotiator.haggle(&mut reader, &mut writer, flags), timeout)? {
        Negotiated::Transmission(bound) => {
            transmit(reader, writer, &socket, &bound, shared, span)?;
            Ok(())
        }
        Negotiated::Aborted => Ok(()),
        Negotiated::StartTls => {
            // The handshake reads whatever the client sent after its
            // STARTTLS that is already in our buffer.
            let early = reader.buffer().to_vec();
            let Some(acceptor) = shared.tls.acceptor() else {
                // STARTTLS is acknowledged only when the mode is not off,
                // and a policy with a mode always has credentials.
                return Err(ConnectionError::TlsRequired);
            };
            let handshake = tls::accept(acceptor, socket.try_clone()?, &early, negotiator.deadline);
            let (tls_reader, tls_writer) = match handshake {
                Err(HandshakeError::Io(err)) => {
                    return in_handshake(Err(ConnectionError::Io(err)), timeout);
                }
                other => other?,
            };
            debug!("NBD connection upgraded to TLS");
            negotiator.tls_active = true;
            serve_tls(
                negotiator, flags, tls_reader, tls_writer, &socket, shared, span,
            )
        }
    }
}

/// Option haggling again inside TLS, then transmission; closes the TLS
/// session (close_notify) when the client ends it cleanly.
fn serve_tls(
    negotiator: Negotiator<'_>,
    flags: ClientFlags,
    reader: tls::TlsReader,
    writer: tls::TlsWriter,
    socket: &TcpStream,
    shared: &Arc<Shared>,
    span: &tracing::Span,
) -> Result<(), ConnectionError> {
    let timeout = negotiator.config.handshake_timeout;
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
    let writer = match in_handshake(negotiator.haggle(&mut reader, &mut writer, flags), timeout)? {
        Negotiated::Transmission(bound) => transmit(reader, writer, socket, &bound, shared, span)?,
        Negotiated::Aborted => writer,
        // The negotiator refuses a second STARTTLS (ERR_INVALID) and
        // haggles on.
        Negotiated::StartTls => return Err(ConnectionError::TlsRequired),
    };
    let writer = writer.into_inner().map_err(|e| e.into_error())?;
    // Best effort: the client may already be gone.
    if let Err(err) = writer.close() {
        debug!(error = %err, "could not send TLS close_notify");
    }
    Ok(())
}

/// Maps a read timeout during negotiation to [`ConnectionError::HandshakeTimeout`].
fn in_handshake<T>(
    result: Result<T, ConnectionError>,
    timeout: Duration,
) -> Result<T, ConnectionError> {
    match result {
        Err(ConnectionError::Io(err))
            if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Err(ConnectionError::HandshakeTimeout(timeout))
        }
        other => other,
    }
}

/// The transmission phase on an export, over plain TCP or TLS; returns
/// the writer with every reply flushed.
fn transmit<R: Read, W: Write + Send>(
    mut reader: BufReader<R>,
    writer: BufWriter<W>,
    socket: &TcpStream,
    bound: &super::handshake::Bound,
    shared: &Arc<Shared>,
    span: &tracing::Span,
) -> Result<BufWriter<W>, ConnectionError> {
    // Transmission clients may legitimately sit idle for hours.
    socket.set_read_timeout(None)?;
    span.record("export", bound.export.name.as_str());
    info!(
        size = bound.size,
        read_only = bound.read_only,
        "NBD client entered transmission"
    );

    let mut transmission = Transmission::new(bound, shared);
    let writer = std::sync::Mutex::new(writer);
    let result = transmission.serve(&mut reader, &writer);
    // Whatever ended the loop, try to deliver replies already produced; if
    // the loop failed on the socket this fails too and changes nothing.
    let mut writer = writer.into_inner().unwrap_or_else(|e| e.into_inner());
    let flushed = writer.flush();
    result?;
    flushed?;
    Ok(writer)
}

fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected
    )
}

/// `err` and its sources joined with `: `, for one-line logs.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
