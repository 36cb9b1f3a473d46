//! HTTPS to a site's API: how the certificate is trusted ([`Trust`]) and
//! the ureq connector that does the TLS.
//!
//! Why a connector of our own: ureq 3's `TlsConfig` chooses root
//! certificates but has no hook for a certificate verifier, and a pinned
//! fingerprint needs one (the site's self-signed certificate has no chain
//! to check; its SHA-256 is the trust decision, as between partners). So
//! HTTPS agents are built with `Agent::with_parts` from ureq's own TCP and
//! CONNECT-proxy connectors plus [`TlsConnector`], which runs rustls with
//! our [`rustls::ClientConfig`] — the same shape as ureq's
//! `RustlsConnector`, through its `unversioned::transport` API (outside
//! ureq's semver promise: Cargo.lock pins the version, and an upgrade that
//! changes it fails to compile here rather than misbehaving). Every trust
//! mode goes through it, so every refusal is one of ours ([`TlsRefusal`]),
//! with the certificate's fingerprint and what to do.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, OtherError,
    RootCertStore, SignatureScheme, StreamOwned,
};
use sha2::Digest;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, LazyBuffers, NextTimeout, Transport,
    TransportAdapter,
};

/// `SHA256:` + 64 lowercase hex digits: the SHA-256 of a certificate's DER,
/// as `site show` prints it (for the API's certificate and the site's own).
#[derive(Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Fingerprint {
        Fingerprint(format!("SHA256:{}", hex::encode(sha2::Sha256::digest(der))))
    }

    /// `SHA256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Text that is not `SHA256:` + 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a certificate fingerprint: expected SHA256: followed by 64 hex digits, as `offsite site show` prints it (api fingerprint)"
)]
pub struct InvalidFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    /// Upper- or lowercase hex; kept lowercase.
    fn from_str(s: &str) -> Result<Fingerprint, InvalidFingerprint> {
        let hex = s
            .trim()
            .strip_prefix("SHA256:")
            .ok_or_else(|| InvalidFingerprint(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidFingerprint(s.to_string()));
        }
        Ok(Fingerprint(format!("SHA256:{}", hex.to_ascii_lowercase())))
    }
}

/// How an HTTPS site's certificate is trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// A chain to one of the public certificate authorities (Mozilla's
    /// list, built into the CLI: `webpki-roots`), naming the URL's host.
    #[default]
    PublicRoots,
    /// A chain to a CA in this PEM file (`--ca-file`), naming the URL's
    /// host.
    CaFile(PathBuf),
    /// Exactly the certificate with this fingerprint (`--api-fingerprint`);
    /// neither its chain, its names nor its dates are looked at, as with
    /// the pins between partner sites.
    Fingerprint(Fingerprint),
}

/// Why the TLS connection to a site was refused or failed; each message
/// says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsRefusal {
    /// The certificate is not the pinned one.
    #[error(
        "the site's certificate fingerprint is {offered}, expected {expected}; check `offsite site show` at that site (api fingerprint) and pin what it prints with --api-fingerprint"
    )]
    FingerprintMismatch {
        /// What the server presented.
        offered: Fingerprint,
        /// What was pinned.
        expected: Fingerprint,
    },
    /// The certificate did not pass the CA check.
    #[error(
        "the site's certificate ({offered}) is not trusted: {why}; pass --ca-file PEM with the CA that issued it, or pin it with --api-fingerprint after checking that `offsite site show` at that site prints the same fingerprint"
    )]
    NotTrusted {
        /// What the server presented.
        offered: Fingerprint,
        /// What the check found.
        why: String,
    },
    /// The server did not answer with TLS.
    #[error(
        "the site did not answer with TLS ({0}); if its API serves plain HTTP, use an http:// URL"
    )]
    NotTls(String),
    /// Anything else in the handshake.
    #[error("the TLS handshake with the site failed: {0}")]
    Handshake(String),
}

/// The CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// Unreadable.
    #[error("cannot read the CA file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No usable CA certificate in it.
    #[error(
        "{} holds no usable CA certificate ({detail}); --ca-file must be the PEM certificate (-----BEGIN CERTIFICATE-----) of the CA that issued the site's certificate",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The rustls configuration for `trust`: TLS 1.3 and 1.2, HTTP/1.1.
pub(crate) fn client_config(trust: &Trust) -> Result<Arc<ClientConfig>, CaFileError> {
    let provider = provider();
    let verifier: Arc<dyn ServerCertVerifier> = match trust {
        Trust::PublicRoots => Arc::new(CaVerifier::new(
            RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            },
            &provider,
        )),
        Trust::CaFile(path) => Arc::new(CaVerifier::new(ca_roots(path)?, &provider)),
        Trust::Fingerprint(expected) => Arc::new(PinnedVerifier {
            expected: expected.clone(),
            provider: provider.clone(),
        }),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the safe default versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn ca_roots(path: &Path) -> Result<RootCertStore, CaFileError> {
    let pem = std::fs::read(path).map_err(|source| CaFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let no_cert = |detail: String| CaFileError::NoCertificate {
        path: path.to_path_buf(),
        detail,
    };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_cert(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(no_cert("no CERTIFICATE section rustls can use".into()));
    }
    Ok(roots)
}

fn refuse(refusal: TlsRefusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(refusal))))
}

/// rustls' certificate check against CAs, with its refusals turned into
/// ours (naming the certificate's fingerprint, which an operator can
/// compare with `site show`).
#[derive(Debug)]
struct CaVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl CaVerifier {
    fn new(roots: RootCertStore, provider: &Arc<CryptoProvider>) -> CaVerifier {
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .expect("a non-empty root store and ring's algorithms build a verifier");
        CaVerifier { inner }
    }
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map_err(|e| {
                let why = match &e {
                    rustls::Error::InvalidCertificate(c) => describe(c, server_name),
                    other => other.to_string(),
                };
                refuse(TlsRefusal::NotTrusted {
                    offered: Fingerprint::of_der(end_entity),
                    why,
                })
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What a failed CA check means, in words.
fn describe(e: &CertificateError, server_name: &ServerName<'_>) -> String {
    match e {
        CertificateError::UnknownIssuer => {
            "it is not issued by a trusted CA (self-signed, or a private CA)".into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "it does not name {} (connect with a name or address the certificate lists)",
                server_name.to_str()
            )
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "it has expired".into()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "it is not valid yet (check the clocks)".into()
        }
        CertificateError::Revoked => "it is revoked".into(),
        other => format!("{other:?}"),
    }
}

/// Accepts exactly the pinned certificate; still checks the handshake
/// signature, which proves the server holds that certificate's key.
#[derive(Debug)]
struct PinnedVerifier {
    expected: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let offered = Fingerprint::of_der(end_entity);
        if offered == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(refuse(TlsRefusal::FingerprintMismatch {
                offered,
                expected: self.expected.clone(),
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Wraps the connection in TLS for `https` URLs (ureq's connector chain;
/// see the module's doc).
pub(crate) struct TlsConnector {
    config: Arc<ClientConfig>,
}

impl TlsConnector {
    pub(crate) fn new(config: Arc<ClientConfig>) -> TlsConnector {
        TlsConnector { config }
    }
}

impl fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl<In: Transport> Connector<In> for TlsConnector {
    type Out = Either<In, TlsTransport>;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let Some(transport) = chained else {
            return Ok(None);
        };
        if !details.needs_tls() || transport.is_tls() {
            return Ok(Some(Either::A(transport)));
        }
        let host = details
            .uri
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = ServerName::try_from(host)
            .map_err(|e| other(TlsRefusal::Handshake(format!("{host:?}: {e}"))))?
            .to_owned();
        let mut conn = ClientConnection::new(self.config.clone(), name)
            .map_err(|e| other(TlsRefusal::Handshake(e.to_string())))?;
        let mut sock = TransportAdapter::new(transport.boxed(), details.current_time.clone());
        sock.set_timeout(details.timeout);
        if let Err(e) = conn.complete_io(&mut sock) {
            return Err(handshake_failed(e));
        }
        let buffers = LazyBuffers::new(
            details.config.input_buffer_size(),
            details.config.output_buffer_size(),
        );
        Ok(Some(Either::B(TlsTransport {
            buffers,
            stream: StreamOwned { conn, sock },
        })))
    }
}

fn other(refusal: TlsRefusal) -> ureq::Error {
    ureq::Error::Other(Box::new(refusal))
}

/// A failed handshake as a [`TlsRefusal`] when TLS refused it; an I/O
/// failure (timeout, reset) stays ureq's, so it reads as unreachable.
fn handshake_failed(e: std::io::Error) -> ureq::Error {
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return ureq::Error::from(e);
    };
    let refusal = match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<TlsRefusal>() {
                Some(r) => r.clone(),
                None => TlsRefusal::Handshake(tls.to_string()),
            }
        }
        rustls::Error::InvalidMessage(_) => TlsRefusal::NotTls(tls.to_string()),
        other => TlsRefusal::Handshake(other.to_string()),
    };
    self::other(refusal)
}

/// An established TLS connection, as ureq's transport.
pub(crate) struct TlsTransport {
    buffers: LazyBuffers,
    stream: StreamOwned<ClientConnection, TransportAdapter>,
}

impl fmt::Debug for TlsTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsTransport").finish_non_exhaustive()
    }
}

impl Transport for TlsTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let output = &self.buffers.output()[..amount];
        self.stream.write_all(output)?;
        Ok(())
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        self.stream.get_mut().set_timeout(timeout);
        let input = self.buffers.input_append_buf();
        let amount = self.stream.read(input)?;
        self.buffers.input_appended(amount);
        Ok(amount > 0)
    }

    fn is_open(&mut self) -> bool {
        self.stream.get_mut().get_mut().is_open()
    }

    fn is_tls(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_site_shows_format_only() {
        let hex = "AB".repeat(32);
        let fp: Fingerprint = format!("SHA256:{hex}").parse().unwrap();
        assert_eq!(fp.as_str(), format!("SHA256:{}", "ab".repeat(32)));
        for bad in [
            "",
            "SHA256:",
            &hex,
            &format!("sha256:{hex}"),
            &format!("SHA256:{hex}0"),
        ] {
            let err = bad.parse::<Fingerprint>().unwrap_err();
            assert!(err.to_string().contains("site show"), "{err}");
        }
        assert_eq!(Fingerprint::of_der(b"x").as_str().len(), 71);
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(&Trust::CaFile(path.clone())).unwrap_err();
        assert!(matches!(err, CaFileError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        let err = client_config(&Trust::CaFile(dir.path().join("missing.pem"))).unwrap_err();
        assert!(matches!(err, CaFileError::Read { .. }), "{err}");
        assert!(client_config(&Trust::PublicRoots).is_ok());
    }

    #[test]
    fn the_pinned_verifier_takes_exactly_its_certificate() {
        let cert = CertificateDer::from(b"some certificate".to_vec());
        let pinned = PinnedVerifier {
            expected: Fingerprint::of_der(&cert),
            provider: provider(),
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let now = UnixTime::now();
        assert!(
            pinned
                .verify_server_cert(&cert, &[], &name, &[], now)
                .is_ok()
        );
        let other = CertificateDer::from(b"another certificate".to_vec());
        let err = pinned
            .verify_server_cert(&other, &[], &name, &[], now)
            .unwrap_err();
        let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) = err
        else {
            panic!("not our refusal: {err:?}");
        };
        let refusal = inner.downcast_ref::<TlsRefusal>().expect("a TlsRefusal");
        let text = refusal.to_string();
        assert!(
            text.contains(Fingerprint::of_der(&other).as_str()),
            "{text}"
        );
        assert!(text.contains("expected"), "{text}");
        assert!(text.contains("site show"), "{text}");
    }
}
