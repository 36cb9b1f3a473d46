//! A site's TLS identity (key pair + self-signed certificate) and
//! certificate fingerprints, the only thing partners pin.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::tls::provider;

/// `SHA256:` + 64 lowercase hex digits of the SHA-256 of a certificate's DER.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(String);

/// The prefix of every fingerprint.
pub const FINGERPRINT_PREFIX: &str = "SHA256:";

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Self(format!(
            "{FINGERPRINT_PREFIX}{}",
            hex::encode(Sha256::digest(der))
        ))
    }

    /// The text form, `SHA256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `SHA256:<64 lowercase hex>` of a DER-encoded certificate.
pub fn fingerprint(der: &[u8]) -> Fingerprint {
    Fingerprint::of_der(der)
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

/// A string that is not `SHA256:` + 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid fingerprint {0:?}: expected SHA256: followed by 64 hex digits")]
pub struct InvalidFingerprint(pub String);

impl FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    /// Accepts upper- or lowercase hex; stores lowercase.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s
            .strip_prefix(FINGERPRINT_PREFIX)
            .ok_or_else(|| InvalidFingerprint(s.to_string()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(InvalidFingerprint(s.to_string()));
        }
        Ok(Self(format!(
            "{FINGERPRINT_PREFIX}{}",
            hex.to_ascii_lowercase()
        )))
    }
}

/// Loading an identity failed.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file holds no PEM item of the expected kind.
    #[error("{what}: no PEM {expected} found ({detail})")]
    Pem {
        /// The file (or "key"/"certificate" for in-memory PEM).
        what: String,
        /// What was looked for.
        expected: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The key is unusable or does not belong to the certificate.
    #[error("the private key does not fit the certificate: {0}")]
    Key(#[source] rustls::Error),
}

/// A site's TLS identity: its certificate (what partners pin) and private key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

impl Identity {
    /// Loads the PEM files `offsite site init` writes (`DIR/tls/site.key`,
    /// `DIR/tls/site.crt`).
    pub fn load(key_pem_path: &Path, cert_pem_path: &Path) -> Result<Self, IdentityError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| IdentityError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let key = PrivateKeyDer::from_pem_slice(&read(key_pem_path)?).map_err(|e| {
            IdentityError::Pem {
                what: key_pem_path.display().to_string(),
                expected: "private key",
                detail: e.to_string(),
            }
        })?;
        let cert = CertificateDer::from_pem_slice(&read(cert_pem_path)?).map_err(|e| {
            IdentityError::Pem {
                what: cert_pem_path.display().to_string(),
                expected: "certificate",
                detail: e.to_string(),
            }
        })?;
        Self::from_der(cert, key)
    }

    /// An identity from PEM text (key, then certificate).
    pub fn from_pem(key_pem: &str, cert_pem: &str) -> Result<Self, IdentityError> {
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| IdentityError::Pem {
                what: "key".into(),
                expected: "private key",
                detail: e.to_string(),
            })?;
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            IdentityError::Pem {
                what: "certificate".into(),
                expected: "certificate",
                detail: e.to_string(),
            }
        })?;
        Self::from_der(cert, key)
    }

    /// An identity from DER; checks that the key is one TLS can sign with
    /// and that it belongs to the certificate.
    pub fn from_der(
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, IdentityError> {
        CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), provider())
            .map_err(IdentityError::Key)?;
        let fingerprint = Fingerprint::of_der(&cert);
        Ok(Self {
            cert,
            key,
            fingerprint,
        })
    }

    /// The fingerprint partners pin for this site.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_and_print() {
        let fp = fingerprint(b"not really a certificate");
        assert!(fp.as_str().starts_with("SHA256:"));
        assert_eq!(fp.as_str().len(), 7 + 64);
        assert_eq!(fp.as_str().parse::<Fingerprint>(), Ok(fp.clone()));
        let upper = format!("SHA256:{}", fp.as_str()[7..].to_ascii_uppercase());
        assert_eq!(upper.parse::<Fingerprint>(), Ok(fp));
        for bad in [
            "",
            "SHA256:",
            "sha256:00",
            "SHA256:zz",
            &"SHA256:0".repeat(2),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn identity_loads_rcgen_pem_and_rejects_a_foreign_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["alpha".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (key_path, cert_path) = (dir.path().join("site.key"), dir.path().join("site.crt"));
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::write(&cert_path, cert.pem()).unwrap();
        let identity = Identity::load(&key_path, &cert_path).unwrap();
        assert_eq!(identity.fingerprint(), &fingerprint(cert.der()));

        let other = rcgen::KeyPair::generate().unwrap();
        let err = Identity::from_pem(&other.serialize_pem(), &cert.pem()).unwrap_err();
        assert!(matches!(err, IdentityError::Key(_)), "{err}");
        let err = Identity::load(&cert_path, &cert_path).unwrap_err();
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        let err = Identity::load(&dir.path().join("missing"), &cert_path).unwrap_err();
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    }
}
