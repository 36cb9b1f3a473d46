//! NBD over TLS: the modes (`NBD_OPT_STARTTLS`, proto.md "TLS support"),
//! the server's credentials, and a TLS session shared by a connection's two
//! threads.
//!
//! **Library.** OpenSSL (the system `libssl`, through the `openssl`
//! crate) for both x509 and PSK, although the rest of the workspace speaks
//! rustls: QEMU's `tls-creds-psk` (and libnbd's `tls-psk-file`) is TLS-PSK
//! (RFC 4279 / RFC 8446 external PSK), which rustls does not implement, so
//! OpenSSL is in the process anyway once PSK is offered. Using it for x509
//! too gives one handshake path, one way of sharing a session between
//! threads (below) and one set of tests, and it accepts the certificates
//! and keys that GnuTLS (`certtool`, QEMU's documented recipe) produces,
//! which operators reuse.
//!
//! **Credentials** follow QEMU's layout, so a `tls-creds-x509` directory or a
//! `tls-creds-psk` key file works unchanged: the x509 directory holds
//! `ca-cert.pem`, `server-cert.pem` and `server-key.pem` (clients are
//! verified against `ca-cert.pem` when `verify_peer` is on, QEMU's default);
//! the PSK file holds `identity:hexkey` lines (`psktool`'s `keys.psk`). Both
//! may be configured at once: a client then authenticates with either.
//!
//! **Threads.** A connection reads requests on its own thread while its
//! completer thread may write replies ([`crate::server`]); plain TCP lets
//! each thread use its own handle to the socket. One OpenSSL session cannot
//! be read and written by two threads at once, and a blocking read would
//! hold it. So the session runs over an in-memory pipe ([`Pipe`]) instead
//! of the socket: the reader reads ciphertext from the socket without any
//! lock and feeds it in; encrypting and decrypting happen under a mutex
//! held only for the cryptography. Ciphertext leaves in the order it was
//! produced because every sender takes the `send` lock before the session
//! lock and writes what it took before releasing `send`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};

use openssl::error::ErrorStack;
use openssl::ssl::{
    ErrorCode, Ssl, SslContext, SslContextBuilder, SslFiletype, SslMethod, SslOptions, SslStream,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509Name;
use thiserror::Error;

/// What TLS a listener offers, or an export demands.
///
/// For a listener (proto.md's server modes): `Off` is NOTLS
/// (`NBD_OPT_STARTTLS` gets `NBD_REP_ERR_POLICY`), `Optional` is
/// SELECTIVETLS (a client may upgrade; exports that require TLS refuse
/// plain clients with `NBD_REP_ERR_TLS_REQD`) and `Required` is FORCEDTLS
/// (every option but `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`
/// until the client upgrades).
///
/// For an export: `Required` serves it only over TLS, `Optional` either
/// way, `Off` only without TLS (a client that upgraded gets
/// `NBD_REP_ERR_POLICY`). An export without a mode of its own takes the
/// listener's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// No TLS.
    Off,
    /// TLS at the client's choice.
    Optional,
    /// TLS or nothing.
    Required,
}

impl TlsMode {
    /// The mode's name in `config.toml`, the catalog and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Off => "off",
            TlsMode::Optional => "optional",
            TlsMode::Required => "required",
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A TLS mode name that is none of `off`, `optional`, `required`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not a TLS mode: use off, optional or required")]
pub struct UnknownTlsMode(pub String);

impl FromStr for TlsMode {
    type Err = UnknownTlsMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(TlsMode::Off),
            "optional" => Ok(TlsMode::Optional),
            "required" => Ok(TlsMode::Required),
            other => Err(UnknownTlsMode(other.to_string())),
        }
    }
}

/// Where a server's TLS credentials are (QEMU's layout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsCredentials {
    /// Directory with `ca-cert.pem`, `server-cert.pem`, `server-key.pem`.
    pub x509_dir: Option<PathBuf>,
    /// `identity:hexkey` lines (QEMU's `keys.psk`).
    pub psk_file: Option<PathBuf>,
    /// Require a client certificate signed by `ca-cert.pem` (x509 only; a
    /// PSK client is authenticated by its key).
    pub verify_peer: bool,
}

/// Why TLS credentials could not be loaded.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Neither an x509 directory nor a PSK file was given.
    #[error("no TLS credentials: set an x509 directory or a PSK file")]
    NoCredentials,
    /// A credential file could not be read or parsed by OpenSSL.
    #[error("cannot load {what} from {}", path.display())]
    Load {
        /// What the file should hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// OpenSSL's reasons.
        #[source]
        source: ErrorStack,
    },
    /// The PSK file could not be read.
    #[error("cannot read the PSK file {}", path.display())]
    ReadPsk {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A line of the PSK file is not `identity:hexkey`.
    #[error("{}:{line}: {reason} (lines are IDENTITY:HEXKEY, as psktool writes them)", path.display())]
    BadPsk {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The PSK file holds no key.
    #[error("the PSK file {} holds no key", path.display())]
    EmptyPsk {
        /// The file.
        path: PathBuf,
    },
    /// Setting up the OpenSSL context failed.
    #[error("cannot set up TLS")]
    Setup(#[source] ErrorStack),
}

/// Longest PSK we accept (OpenSSL's `PSK_MAX_PSK_LEN` is 512 bytes).
const MAX_PSK_BYTES: usize = 256;
/// Longest PSK identity (RFC 4279: up to 2^16 - 1 bytes; GnuTLS and
/// OpenSSL use far less).
const MAX_IDENTITY_BYTES: usize = 128;

/// A server's loaded credentials: an OpenSSL context every connection's
/// session is created from.
#[derive(Clone)]
pub struct TlsAcceptor {
    context: SslContext,
    x509: bool,
    psk: bool,
}

impl fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("x509", &self.x509)
            .field("psk", &self.psk)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Loads `credentials`. TLS 1.2 is the oldest version offered
    /// (proto.md: MUST support 1.2, older ones SHOULD NOT be on by
    /// default); session tickets and renegotiation are off (a connection
    /// lives for one NBD session, and renegotiation would need writes from
    /// the reading thread).
    pub fn new(credentials: &TlsCredentials) -> Result<Self, TlsError> {
        if credentials.x509_dir.is_none() && credentials.psk_file.is_none() {
            return Err(TlsError::NoCredentials);
        }
        let mut builder = SslContext::builder(SslMethod::tls_server()).map_err(TlsError::Setup)?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(TlsError::Setup)?;
        builder.set_options(
            SslOptions::NO_RENEGOTIATION
                | SslOptions::NO_TICKET
                | SslOptions::NO_COMPRESSION
                | SslOptions::CIPHER_SERVER_PREFERENCE,
        );
        builder.set_num_tickets(0).map_err(TlsError::Setup)?;
        // SHA-256 suites first: a TLS 1.3 PSK from the legacy callback
        // below is bound to SHA-256, and OpenSSL ignores it (falling back
        // to a certificate the PSK client cannot check) when the handshake
        // picked a SHA-384 suite. AES-128-GCM is also the cheapest.
        builder
            .set_ciphersuites(
                "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384",
            )
            .map_err(TlsError::Setup)?;
        if let Some(dir) = &credentials.x509_dir {
            load_x509(&mut builder, dir, credentials.verify_peer)?;
        }
        if let Some(path) = &credentials.psk_file {
            let keys = read_psk_file(path)?;
            // OpenSSL's default cipher list leaves the TLS 1.2 PSK suites
            // out; GnuTLS clients (QEMU, libnbd) offer ECDHE-PSK and PSK.
            // TLS 1.3 needs no suite of its own for PSK.
            let ciphers = if credentials.x509_dir.is_some() {
                "DEFAULT:ECDHE-PSK:DHE-PSK:PSK:!aNULL:!eNULL"
            } else {
                "ECDHE-PSK:DHE-PSK:PSK:!aNULL:!eNULL"
            };
            builder.set_cipher_list(ciphers).map_err(TlsError::Setup)?;
            builder.set_psk_server_callback(move |ssl, identity, out| {
                // An unknown identity ends the handshake (0 = no key).
                let key = identity.and_then(|id| keys.get(id));
                Ok(match key {
                    Some(key) if key.len() <= out.len() => {
                        out[..key.len()].copy_from_slice(key);
                        // The key authenticates the client: a certificate
                        // required of x509 clients is not asked of it
                        // (TLS 1.3 would otherwise fail the handshake for
                        // the missing certificate).
                        ssl.set_verify(SslVerifyMode::NONE);
                        key.len()
                    }
                    _ => 0,
                })
            });
        }
        Ok(TlsAcceptor {
            context: builder.build(),
            x509: credentials.x509_dir.is_some(),
            psk: credentials.psk_file.is_some(),
        })
    }

    /// Whether clients can authenticate with certificates.
    pub fn has_x509(&self) -> bool {
        self.x509
    }

    /// Whether clients can authenticate with a pre-shared key.
    pub fn has_psk(&self) -> bool {
        self.psk
    }
}

fn load_x509(
    builder: &mut SslContextBuilder,
    dir: &Path,
    verify_peer: bool,
) -> Result<(), TlsError> {
    let load =
        |what: &'static str, path: PathBuf| move |source| TlsError::Load { what, path, source };
    let cert = dir.join("server-cert.pem");
    let key = dir.join("server-key.pem");
    let ca = dir.join("ca-cert.pem");
    builder
        .set_certificate_chain_file(&cert)
        .map_err(load("the server certificate", cert.clone()))?;
    builder
        .set_private_key_file(&key, SslFiletype::PEM)
        .map_err(load("the server key", key.clone()))?;
    builder
        .check_private_key()
        .map_err(load("a key matching server-cert.pem", key))?;
    if verify_peer {
        builder
            .set_ca_file(&ca)
            .map_err(load("the CA certificate", ca.clone()))?;
        // Tells clients which CA to pick a certificate for.
        let names = X509Name::load_client_ca_file(&ca).map_err(load("the CA's name", ca))?;
        builder.set_client_ca_list(names);
        builder.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(())
}

/// Reads a QEMU/psktool key file: `identity:hexkey` per line, blank lines
/// ignored. The key is hex as in psktool's output.
fn read_psk_file(path: &Path) -> Result<HashMap<Vec<u8>, Vec<u8>>, TlsError> {
    let text = std::fs::read_to_string(path).map_err(|source| TlsError::ReadPsk {
        path: path.to_path_buf(),
        source,
    })?;
    let keys = parse_psk(&text).map_err(|(line, reason)| TlsError::BadPsk {
        path: path.to_path_buf(),
        line,
        reason,
    })?;
    if keys.is_empty() {
        return Err(TlsError::EmptyPsk {
            path: path.to_path_buf(),
        });
    }
    Ok(keys)
}

/// Parses key-file text; an error is `(line, reason)`.
fn parse_psk(text: &str) -> Result<HashMap<Vec<u8>, Vec<u8>>, (usize, String)> {
    let mut keys = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        // The identity may not hold a colon; the key never does.
        let Some((identity, hex)) = line.rsplit_once(':') else {
            return Err((number, "no ':' between identity and key".into()));
        };
        if identity.is_empty() || identity.len() > MAX_IDENTITY_BYTES {
            return Err((
                number,
                format!("the identity must be 1 to {MAX_IDENTITY_BYTES} bytes"),
            ));
        }
        let key = decode_hex(hex.trim()).ok_or((number, "the key is not hexadecimal".into()))?;
        if key.is_empty() || key.len() > MAX_PSK_BYTES {
            return Err((
                number,
                format!("the key must be 1 to {MAX_PSK_BYTES} bytes"),
            ));
        }
        if keys.insert(identity.as_bytes().to_vec(), key).is_some() {
            return Err((number, format!("identity {identity:?} appears twice")));
        }
    }
    Ok(keys)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A listener's TLS: its mode and, unless it is off, its credentials.
#[derive(Debug, Clone)]
pub struct TlsPolicy {
    mode: TlsMode,
    acceptor: Option<TlsAcceptor>,
}

/// A TLS mode other than `off` without credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("NBD TLS mode {0} needs credentials (an x509 directory or a PSK file)")]
pub struct MissingCredentials(pub TlsMode);

impl TlsPolicy {
    /// No TLS (`NBD_OPT_STARTTLS` refused).
    pub fn off() -> Self {
        TlsPolicy {
            mode: TlsMode::Off,
            acceptor: None,
        }
    }

    /// `mode` with `acceptor`'s credentials; `Off` ignores them.
    pub fn new(mode: TlsMode, acceptor: Option<TlsAcceptor>) -> Result<Self, MissingCredentials> {
        match (mode, acceptor) {
            (TlsMode::Off, _) => Ok(Self::off()),
            (mode, None) => Err(MissingCredentials(mode)),
            (mode, Some(acceptor)) => Ok(TlsPolicy {
                mode,
                acceptor: Some(acceptor),
            }),
        }
    }

    /// The listener's mode.
    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    pub(crate) fn acceptor(&self) -> Option<&TlsAcceptor> {
        self.acceptor.as_ref()
    }
}

/// Why a TLS handshake failed (the client's credentials, usually).
#[derive(Debug, Error)]
pub(crate) enum HandshakeError {
    /// The socket failed or closed during the handshake.
    #[error("socket I/O failed during the TLS handshake")]
    Io(#[from] io::Error),
    /// OpenSSL refused the handshake: untrusted or missing client
    /// certificate, unknown PSK identity or wrong key, no common cipher.
    #[error("TLS handshake refused: {0}")]
    Refused(String),
}

/// The in-memory transport under a connection's OpenSSL session:
/// ciphertext received and not yet consumed, and ciphertext produced and
/// not yet sent.
#[derive(Debug, Default)]
struct Pipe {
    incoming: Vec<u8>,
    consumed: usize,
    outgoing: Vec<u8>,
}

impl Pipe {
    fn feed(&mut self, bytes: &[u8]) {
        if self.consumed == self.incoming.len() {
            self.incoming.clear();
            self.consumed = 0;
        }
        self.incoming.extend_from_slice(bytes);
    }
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = &self.incoming[self.consumed..];
        if available.is_empty() {
            // OpenSSL turns this into WANT_READ: the caller reads the socket.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consumed += n;
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.outgoing.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection's TLS session, shared by its reader and writers.
struct Session {
    /// The socket's sending side; held from taking ciphertext out of the
    /// session until it is written, so records leave in order.
    send: Mutex<TcpStream>,
    /// Taken after `send` when both are needed.
    ssl: Mutex<SslStream<Pipe>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding either lock leaves at worst a broken TLS
    // stream, which the peer detects; the connection ends either way.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    /// Sends whatever ciphertext the session has produced.
    fn send_pending(&self) -> io::Result<()> {
        let mut socket = lock(&self.send);
        let out = std::mem::take(&mut lock(&self.ssl).get_mut().outgoing);
        if out.is_empty() {
            return Ok(());
        }
        socket.write_all(&out)
    }
}

/// Runs the server side of a TLS handshake on `socket` right after the
/// `NBD_REP_ACK` to `NBD_OPT_STARTTLS`. `early` is whatever the client sent
/// after its `STARTTLS` that was already buffered (the start of its
/// ClientHello, if it did not wait for the acknowledgement). The socket's
/// read timeout bounds each wait, and `deadline` the whole handshake (a
/// client trickling bytes cannot hold the connection past negotiation's
/// deadline).
pub(crate) fn accept(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
    early: &[u8],
    deadline: std::time::Instant,
) -> Result<(TlsReader, TlsWriter), HandshakeError> {
    let refused = |e: ErrorStack| HandshakeError::Refused(e.to_string());
    let ssl = Ssl::new(&acceptor.context).map_err(refused)?;
    let mut pipe = Pipe::default();
    pipe.feed(early);
    let mut stream = SslStream::new(ssl, pipe).map_err(refused)?;
    let mut reading = socket.try_clone()?;
    let mut sending = socket;
    let mut raw = vec![0u8; 16 << 10];
    loop {
        let result = stream.accept();
        let out = std::mem::take(&mut stream.get_mut().outgoing);
        // The alert of a failed handshake is worth sending too, so the
        // client reports why; if that write fails the result says enough.
        let sent = sending.write_all(&out);
        match result {
            Ok(()) => {
                sent?;
                break;
            }
            Err(e) if e.code() == ErrorCode::WANT_READ => {
                sent?;
                if std::time::Instant::now() >= deadline {
                    return Err(io::Error::from(io::ErrorKind::TimedOut).into());
                }
                let n = reading.read(&mut raw)?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                stream.get_mut().feed(&raw[..n]);
            }
            Err(e) => {
                let reason = match (e.ssl_error(), stream.ssl().verify_result()) {
                    (_, verify) if verify.as_raw() != 0 => {
                        format!("client certificate: {}", verify.error_string())
                    }
                    (Some(stack), _) => stack.to_string(),
                    (None, _) => e.to_string(),
                };
                return Err(HandshakeError::Refused(reason));
            }
        }
    }
    let session = Arc::new(Session {
        send: Mutex::new(sending),
        ssl: Mutex::new(stream),
    });
    Ok((
        TlsReader {
            session: Arc::clone(&session),
            socket: reading,
            raw,
        },
        TlsWriter { session },
    ))
}

/// The plaintext reading side of a TLS connection.
pub(crate) struct TlsReader {
    session: Arc<Session>,
    /// The socket's receiving side, read without any lock held.
    socket: TcpStream,
    raw: Vec<u8>,
}

impl TlsReader {
    /// Decrypts as much as is buffered into `buf`: `Ok(None)` if nothing
    /// is, `Ok(Some(0))` at the peer's close_notify. Also says whether
    /// reading produced records to send (a TLS 1.3 KeyUpdate answer, an
    /// alert).
    fn decrypt(&self, buf: &mut [u8]) -> (io::Result<Option<usize>>, bool) {
        let mut ssl = lock(&self.session.ssl);
        let result = Self::decrypt_locked(&mut ssl, buf);
        (result, !ssl.get_ref().outgoing.is_empty())
    }

    fn decrypt_locked(ssl: &mut SslStream<Pipe>, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let mut filled = 0;
        // Several records may be buffered: take all that fit, so a
        // pipelining client's requests reach the server's read buffer
        // together (it flushes replies only once that buffer runs dry).
        while filled < buf.len() {
            match ssl.ssl_read(&mut buf[filled..]) {
                Ok(n) => filled += n,
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::ZERO_RETURN => return Ok(Some(filled)),
                Err(e) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
        }
        Ok((filled > 0).then_some(filled))
    }
}

impl Read for TlsReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (decrypted, to_send) = self.decrypt(buf);
            if to_send {
                self.session.send_pending()?;
            }
            if let Some(n) = decrypted? {
                return Ok(n);
            }
            let n = self.socket.read(&mut self.raw)?;
            if n == 0 {
                // EOF without close_notify: NBD frames its messages, so a
                // truncation shows as a short read to the caller anyway.
                return Ok(0);
            }
            lock(&self.session.ssl).get_mut().feed(&self.raw[..n]);
        }
    }
}

/// The plaintext writing side of a TLS connection.
pub(crate) struct TlsWriter {
    session: Arc<Session>,
}

impl TlsWriter {
    /// Sends close_notify (proto.md: the server closes the TLS session
    /// before the TCP connection). Best effort: the peer may be gone.
    pub(crate) fn close(&self) -> io::Result<()> {
        {
            let mut socket = lock(&self.session.send);
            let mut ssl = lock(&self.session.ssl);
            // Ok(Sent) or an error: either way nothing more to wait for.
            let _ = ssl.shutdown();
            let out = std::mem::take(&mut ssl.get_mut().outgoing);
            drop(ssl);
            socket.write_all(&out)?;
        }
        Ok(())
    }
}

impl Write for TlsWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut socket = lock(&self.session.send);
        let out = {
            let mut ssl = lock(&self.session.ssl);
            let mut written = 0;
            while written < buf.len() {
                written += ssl
                    .ssl_write(&buf[written..])
                    .map_err(|e| io::Error::other(e.to_string()))?;
            }
            std::mem::take(&mut ssl.get_mut().outgoing)
        };
        socket.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_file_lines_parse_like_qemu() {
        let keys = parse_psk("alice:0123abcd\n\nbob:ff00\r\n").unwrap();
        assert_eq!(keys[b"alice".as_slice()], vec![0x01, 0x23, 0xab, 0xcd]);
        assert_eq!(keys[b"bob".as_slice()], vec![0xff, 0x00]);
        assert_eq!(parse_psk("alice0123").unwrap_err().0, 1);
        assert_eq!(parse_psk("a:00\nb:0g").unwrap_err().0, 2);
        assert_eq!(parse_psk("a:000").unwrap_err().0, 1);
        assert_eq!(parse_psk(":00").unwrap_err().0, 1);
        assert_eq!(parse_psk("a:00\na:11").unwrap_err().0, 2);
    }

    #[test]
    fn modes_round_trip_through_their_names() {
        for mode in [TlsMode::Off, TlsMode::Optional, TlsMode::Required] {
            assert_eq!(mode.as_str().parse::<TlsMode>(), Ok(mode));
        }
        assert!("yes".parse::<TlsMode>().is_err());
    }

    #[test]
    fn a_mode_other_than_off_needs_credentials() {
        assert_eq!(
            TlsPolicy::new(TlsMode::Required, None).unwrap_err(),
            MissingCredentials(TlsMode::Required)
        );
        assert_eq!(
            TlsPolicy::new(TlsMode::Off, None).unwrap().mode(),
            TlsMode::Off
        );
        assert!(matches!(
            TlsAcceptor::new(&TlsCredentials::default()),
            Err(TlsError::NoCredentials)
        ));
    }
}
