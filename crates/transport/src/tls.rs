//! rustls configuration: TLS 1.3 only, mutual authentication, and trust by
//! pinned fingerprint instead of by certificate authority.
//!
//! Sites use self-signed certificates, so there is no chain to validate:
//! the listener accepts a client certificate only if [`PinnedPeers`] knows
//! its fingerprint, and a connecting site accepts exactly the fingerprint it
//! pinned for the partner it dials. Both still check the handshake signature
//! (`verify_tls13_signature` with ring's algorithms), which proves the peer
//! holds the key of the certificate it presented. Validity dates are not
//! checked: a pin, not a date, is the trust decision, and it is revoked by
//! removing the partner.

use std::error::Error as StdError;
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    ServerConfig, SignatureScheme,
};
use thiserror::Error;

use crate::identity::{Fingerprint, Identity};
use crate::peers::PinnedPeers;

/// The crypto provider of every offsite TLS connection: ring, TLS 1.3
/// suites only, AES-128-GCM first (the fastest with AES-NI, and as strong as
/// the sites' P-256 keys).
pub fn provider() -> &'static Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER.get_or_init(|| {
        let mut provider = rustls::crypto::ring::default_provider();
        provider.cipher_suites = vec![
            rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
        ];
        Arc::new(provider)
    })
}

/// A client certificate whose fingerprint no partner is pinned with. The
/// listener finds it inside the handshake error to log who knocked.
#[derive(Debug, Error)]
#[error("certificate {offered} is not pinned for any partner")]
pub struct NotPinned {
    /// The fingerprint the client offered.
    pub offered: Fingerprint,
}

/// A server certificate other than the pinned one.
#[derive(Debug, Error)]
#[error("certificate {offered} presented, {expected} pinned")]
pub struct UnexpectedCertificate {
    /// The pinned fingerprint.
    pub expected: Fingerprint,
    /// What the server presented.
    pub offered: Fingerprint,
}

/// The `T` carried in a rustls certificate error inside an I/O error, as
/// tokio-rustls reports a failed handshake.
pub(crate) fn certificate_error<T: StdError + 'static>(err: &std::io::Error) -> Option<&T> {
    match err.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            let inner: &(dyn StdError + 'static) = inner.as_ref();
            inner.downcast_ref::<T>()
        }
        _ => None,
    }
}

/// The rustls error inside an I/O error, if any.
pub(crate) fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

/// The listener's TLS configuration: our certificate, and client
/// certificates required and accepted only when pinned in `peers`.
pub fn server_config(
    identity: &Identity,
    peers: Arc<dyn PinnedPeers>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let verifier = PinnedClientVerifier {
        peers,
        algorithms: provider().signature_verification_algorithms,
    };
    let config = ServerConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(vec![identity.certificate().clone()], identity.key())?;
    Ok(Arc::new(config))
}

/// A connecting site's TLS configuration: our certificate as client
/// certificate, and exactly `expected` accepted from the server.
pub fn client_config(
    identity: &Identity,
    expected: &Fingerprint,
) -> Result<Arc<ClientConfig>, rustls::Error> {
    let verifier = PinnedServerVerifier {
        expected: expected.clone(),
        algorithms: provider().signature_verification_algorithms,
    };
    let config = ClientConfig::builder_with_provider(provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![identity.certificate().clone()], identity.key())?;
    Ok(Arc::new(config))
}

/// Never called: both configurations allow TLS 1.3 only.
fn tls12_unsupported() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not supported".into())
}

fn refuse(error: impl StdError + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error))))
}

struct PinnedClientVerifier {
    peers: Arc<dyn PinnedPeers>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for PinnedClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedClientVerifier")
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let offered = Fingerprint::of_der(end_entity);
        match self.peers.lookup(&offered) {
            Some(_) => Ok(ClientCertVerified::assertion()),
            None => Err(refuse(NotPinned { offered })),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_unsupported())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[derive(Debug)]
struct PinnedServerVerifier {
    expected: Fingerprint,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedServerVerifier {
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
            Err(refuse(UnexpectedCertificate {
                expected: self.expected.clone(),
                offered,
            }))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_unsupported())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
