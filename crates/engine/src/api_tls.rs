//! The API listener's certificate (`[api_tls]`): the site's own,
//! self-signed and made once, or the operator's files; loaded with its key
//! for rustls, with the SHA-256 fingerprint clients pin (`site show`, the
//! CLI's `--api-fingerprint`, `run/daemon.json` for local use).
//!
//! The self-signed certificate has a key of its own (`tls/api.key`), not
//! the replication identity's (`tls/site.key`): the API certificate is
//! shown to browsers and may be replaced by deleting it, while partners pin
//! the identity for as long as they are paired; one key compromised does
//! not give away the other. It is written once, durably (temporary file,
//! fsync, rename, fsync of the directory), and reused at every start, so
//! its fingerprint stays what operators pinned.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ApiTlsConfig, ApiTlsMode};
use crate::init::fingerprint_of_der;
use crate::layout::Layout;

/// How long the self-signed certificate is valid. Clients of offsite pin
/// its fingerprint and do not read its dates; browsers show an exception
/// for it either way. Ten years, so it outlives the site's hardware rather
/// than expiring under an operator on the day of a disaster.
const SELF_SIGNED_VALIDITY: time::Duration = time::Duration::days(3650);

/// Loading or making the API certificate failed; each message names the
/// file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    /// A certificate or key file could not be read.
    #[error(
        "cannot read the API TLS {what} {}: {source}; check the path ([api_tls] {what_key} in config.toml, `site init --api-tls-{what_key}`) and that the site's user can read it",
        path.display()
    )]
    Read {
        /// `certificate` or `key`.
        what: &'static str,
        /// Its `[api_tls]` key: `cert` or `key`.
        what_key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error(
        "{} holds no PEM certificate ({detail}); [api_tls] cert must be the certificate chain in PEM (-----BEGIN CERTIFICATE-----), leaf first",
        path.display()
    )]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The key file holds no usable private key.
    #[error(
        "{} holds no usable private key ({detail}); [api_tls] key must be the certificate's private key in PEM (PKCS#8, PKCS#1 or SEC1), not encrypted",
        path.display()
    )]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the parser or the crypto library said.
        detail: String,
    },
    /// The key is not the key of the chain's first certificate.
    #[error(
        "the private key {} does not belong to the certificate {} ({source}); point [api_tls] key at the key the certificate was issued for, and start the chain with that (leaf) certificate",
        key.display(),
        cert.display()
    )]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' finding.
        #[source]
        source: rustls::Error,
    },
    /// Making the self-signed certificate failed.
    #[error("making the API's self-signed certificate: {0}")]
    Generate(String),
    /// Writing the self-signed certificate or its key failed.
    #[error("writing {}: {source}; check that the data directory is writable", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The crypto provider of the API listener and of its certificate's key:
/// ring with its default suites (TLS 1.3 and 1.2: browsers and `curl` of
/// every age an operator may have at hand speak one of them).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The certificate chain and key the API listener serves, checked to fit
/// together.
#[derive(Clone)]
pub struct ApiCertificate {
    key: Arc<CertifiedKey>,
    fingerprint: String,
}

impl std::fmt::Debug for ApiCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiCertificate")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl ApiCertificate {
    /// The chain and its signing key, for a rustls server.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.key.clone()
    }

    /// `SHA256:` + hex of the leaf certificate's DER (the format of the
    /// sites' own fingerprints).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Reads a PEM chain (leaf first) and its PEM private key, and checks
    /// that the key is the leaf's.
    pub fn from_files(cert: &Path, key: &Path) -> Result<ApiCertificate, ApiTlsError> {
        let read = |what, what_key, path: &Path| {
            std::fs::read(path).map_err(|source| ApiTlsError::Read {
                what,
                what_key,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("certificate", "cert", cert)?;
        let key_pem = read("key", "key", key)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiTlsError::NoCertificate {
                path: cert.to_path_buf(),
                detail: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(ApiTlsError::NoCertificate {
                path: cert.to_path_buf(),
                detail: "no CERTIFICATE section".into(),
            });
        }
        let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| ApiTlsError::NoKey {
            path: key.to_path_buf(),
            detail: e.to_string(),
        })?;
        let fingerprint = fingerprint_of_der(&chain[0]);
        let certified =
            CertifiedKey::from_der(chain, private, &provider()).map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => ApiTlsError::Mismatch {
                    cert: cert.to_path_buf(),
                    key: key.to_path_buf(),
                    source: e,
                },
                other => ApiTlsError::NoKey {
                    path: key.to_path_buf(),
                    detail: other.to_string(),
                },
            })?;
        Ok(ApiCertificate {
            key: Arc::new(certified),
            fingerprint,
        })
    }
}

/// The certificate `[api_tls]` asks for, with relative paths taken from
/// the site directory: `None` when the API serves plain HTTP. A
/// self-signed certificate must exist ([`ensure_self_signed`]).
pub fn load(layout: &Layout, tls: &ApiTlsConfig) -> Result<Option<ApiCertificate>, ApiTlsError> {
    match tls.mode {
        ApiTlsMode::Off => Ok(None),
        ApiTlsMode::SelfSigned => {
            ApiCertificate::from_files(&layout.api_cert(), &layout.api_key()).map(Some)
        }
        ApiTlsMode::Files => {
            // `SiteConfig::load` checked that both are set; an unchecked
            // configuration reads as if the files were missing.
            let (cert, key) = tls.files(layout.root()).unwrap_or_default();
            ApiCertificate::from_files(&cert, &key).map(Some)
        }
    }
}

/// Makes the site's self-signed API certificate and its key unless both
/// exist (a crash between the two files, or one deleted by hand, makes a
/// new pair). `name` is the site's, `api` its configured `api` address,
/// named by the certificate beside `localhost`, `127.0.0.1`, `::1` and the
/// host name. Returns the new certificate's fingerprint when it made one.
pub fn ensure_self_signed(
    layout: &Layout,
    name: &str,
    api: &str,
) -> Result<Option<String>, ApiTlsError> {
    if layout.api_cert().exists() && layout.api_key().exists() {
        return Ok(None);
    }
    let generate = |e: rcgen::Error| ApiTlsError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate().map_err(generate)?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = subject_alt_names(api, hostname().as_deref());
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("offsite API of {name}"));
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "offsite site");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let now = time::OffsetDateTime::now_utc();
    // A day back: a client whose clock is a little behind still accepts it.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + SELF_SIGNED_VALIDITY;
    let cert = params.self_signed(&key).map_err(generate)?;
    let write = |path: PathBuf, bytes: &[u8]| {
        offsite_volume_file::write_durably(&path, bytes, offsite_volume_file::PRIVATE_FILE_MODE)
            .map_err(|source| ApiTlsError::Write { path, source })
    };
    // The key first: a certificate is never left without its key.
    write(layout.api_key(), key.serialize_pem().as_bytes())?;
    write(layout.api_cert(), cert.pem().as_bytes())?;
    Ok(Some(fingerprint_of_der(cert.der())))
}

/// The names of the self-signed certificate: the configured API host (an
/// IP literal other than the unspecified address, or a DNS name),
/// `localhost`, the loopback addresses and the host name. Browsers and
/// certificate-checking clients compare the address they were given with
/// these; pinning clients ignore them.
fn subject_alt_names(api: &str, hostname: Option<&str>) -> Vec<rcgen::SanType> {
    use rcgen::SanType;
    let dns = |name: &str| {
        rcgen::string::Ia5String::try_from(name.to_ascii_lowercase())
            .ok()
            .map(SanType::DnsName)
    };
    let mut names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ];
    names.extend(dns("localhost"));
    match api.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() => {}
        Ok(addr) => names.push(SanType::IpAddress(addr.ip().to_canonical())),
        Err(_) => {
            if let Some((host, _port)) = api.rsplit_once(':') {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if !host.is_empty() {
                    names.extend(dns(host));
                }
            }
        }
    }
    if let Some(h) = hostname.filter(|h| !h.is_empty()) {
        names.extend(dns(h));
    }
    let mut unique = Vec::with_capacity(names.len());
    for n in names {
        if !unique.contains(&n) {
            unique.push(n);
        }
    }
    unique
}

/// This machine's host name (Linux: `/proc/sys/kernel/hostname`), if it
/// has one.
pub(crate) fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty() && name != "(none)").then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::SanType;

    fn layout() -> (tempfile::TempDir, Layout) {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(tmp.path());
        std::fs::create_dir(layout.tls_dir()).unwrap();
        (tmp, layout)
    }

    #[test]
    fn the_self_signed_certificate_is_made_once_and_names_the_api_address() {
        let (_tmp, layout) = layout();
        let made = ensure_self_signed(&layout, "a", "192.0.2.7:7801")
            .unwrap()
            .expect("made");
        assert_eq!(
            ensure_self_signed(&layout, "a", "192.0.2.7:7801").unwrap(),
            None
        );
        let tls = ApiTlsConfig {
            mode: ApiTlsMode::SelfSigned,
            ..Default::default()
        };
        let cert = load(&layout, &tls).unwrap().expect("a certificate");
        assert_eq!(cert.fingerprint(), made);
        assert_eq!(cert.certified_key().cert.len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&layout.api_key()), 0o600);
        // Its key is not the replication identity's (there is none here,
        // and `init` writes that one elsewhere).
        assert_ne!(layout.api_key(), layout.key());
        // A lost certificate means a new pair, and a new fingerprint.
        std::fs::remove_file(layout.api_cert()).unwrap();
        let again = ensure_self_signed(&layout, "a", "192.0.2.7:7801")
            .unwrap()
            .expect("made again");
        assert_ne!(again, made);
    }

    #[test]
    fn names_cover_the_configured_host_loopback_and_the_host_name() {
        let ip = |s: &str| SanType::IpAddress(s.parse().unwrap());
        let dns = |s: &str| SanType::DnsName(s.try_into().unwrap());
        let names = subject_alt_names("192.0.2.7:7801", Some("Host-1"));
        for want in [
            ip("192.0.2.7"),
            ip("127.0.0.1"),
            ip("::1"),
            dns("localhost"),
            dns("host-1"),
        ] {
            assert!(names.contains(&want), "{want:?} missing from {names:?}");
        }
        // The unspecified address names nothing; duplicates are dropped.
        let names = subject_alt_names("0.0.0.0:7801", Some("localhost"));
        assert_eq!(names.len(), 3, "{names:?}");
        let names = subject_alt_names("[::]:7801", None);
        assert_eq!(names.len(), 3, "{names:?}");
        let names = subject_alt_names("console.example.org:443", None);
        assert!(names.contains(&dns("console.example.org")), "{names:?}");
        let names = subject_alt_names("[2001:db8::1]:443", None);
        assert!(names.contains(&ip("2001:db8::1")), "{names:?}");
    }

    #[test]
    fn operator_files_load_and_bad_ones_say_what_is_wrong() {
        let (tmp, layout) = layout();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["api.example.org".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (tmp.path().join("api.pem"), tmp.path().join("api-key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        let tls = ApiTlsConfig {
            mode: ApiTlsMode::Files,
            cert: Some("api.pem".into()),
            key: Some("api-key.pem".into()),
            allow_plaintext: false,
        };
        let loaded = load(&layout, &tls).unwrap().unwrap();
        assert_eq!(loaded.fingerprint(), fingerprint_of_der(cert.der()));

        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&k, other.serialize_pem()).unwrap();
        let err = load(&layout, &tls).unwrap_err();
        assert!(matches!(err, ApiTlsError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");

        std::fs::write(&k, cert.pem()).unwrap();
        let err = load(&layout, &tls).unwrap_err();
        assert!(matches!(err, ApiTlsError::NoKey { .. }), "{err}");

        std::fs::write(&c, key.serialize_pem()).unwrap();
        let err = load(&layout, &tls).unwrap_err();
        assert!(matches!(err, ApiTlsError::NoCertificate { .. }), "{err}");

        std::fs::remove_file(&c).unwrap();
        let err = load(&layout, &tls).unwrap_err();
        assert!(
            matches!(
                err,
                ApiTlsError::Read {
                    what_key: "cert",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("api.pem"), "{err}");

        assert!(load(&layout, &ApiTlsConfig::default()).unwrap().is_none());
    }
}
