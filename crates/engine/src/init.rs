//! `offsite site init`: creates a data directory.
//!
//! Order matters for a crash in the middle: everything is written first and
//! `config.toml` last, so a directory without `config.toml` is never taken
//! for a site, and `init` can be re-run on it once the user removes it.

use std::path::Path;

use rand::RngCore;
use sha2::Digest;

use crate::config::{ApiTlsConfig, CONFIG_FORMAT_VERSION, SiteConfig};
use crate::layout::Layout;
use crate::{EngineError, names};

/// What `site init` needs.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Site name.
    pub name: String,
    /// Replication listener.
    pub listen: String,
    /// REST API listener.
    pub api: String,
    /// NBD listener.
    pub nbd: String,
    /// TLS of the API listener (`--api-tls`, `--insecure-api`).
    pub api_tls: ApiTlsConfig,
}

/// What `site init` created.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The configuration written.
    pub config: SiteConfig,
    /// `SHA256:` + hex of the certificate.
    pub fingerprint: String,
    /// `SHA256:` + hex of the API's certificate, when the API serves HTTPS
    /// (made now, or the operator's).
    pub api_fingerprint: Option<String>,
}

/// `SHA256:` + lowercase hex of DER bytes.
pub fn fingerprint_of_der(der: &[u8]) -> String {
    format!("SHA256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// Creates a site in `dir` (which may exist but must be empty).
pub fn init_site(dir: &Path, opts: &InitOptions) -> Result<InitReport, EngineError> {
    names::validate("site", &opts.name)?;
    for (what, addr) in [
        ("--listen", &opts.listen),
        ("--api", &opts.api),
        ("--nbd", &opts.nbd),
    ] {
        crate::config::parse_addr(addr)
            .map_err(|reason| EngineError::Invalid(format!("{what}: {reason}")))?;
    }
    check_api_tls(&opts.api, &opts.api_tls)?;
    let layout = Layout::new(dir);
    // The operator's files are read before anything is created: a wrong
    // path or key leaves no half-made site behind.
    let operator_cert = match opts.api_tls.files(dir) {
        Some((cert, key)) => Some(crate::api_tls::ApiCertificate::from_files(&cert, &key)?),
        None => None,
    };
    prepare_dir(dir, &layout)?;
    let fingerprint = write_identity(&layout, &opts.name)?;
    let api_fingerprint = match opts.api_tls.mode {
        crate::config::ApiTlsMode::Off => None,
        crate::config::ApiTlsMode::SelfSigned => {
            crate::api_tls::ensure_self_signed(&layout, &opts.name, &opts.api)?
        }
        crate::config::ApiTlsMode::Files => operator_cert.map(|c| c.fingerprint().to_string()),
    };
    use std::os::unix::fs::PermissionsExt;
    let catalog = offsite_catalog::Catalog::create(&layout.catalog())?;
    // SQLite creates the database 0644 (less the umask); its -wal and -shm
    // files copy the database's mode, so setting it once covers them.
    std::fs::set_permissions(
        layout.catalog(),
        std::fs::Permissions::from_mode(offsite_volume_file::PRIVATE_FILE_MODE),
    )
    .map_err(|e| EngineError::io("restrict the permissions of", &layout.catalog(), e))?;
    catalog.set_setting("name", &opts.name)?;
    catalog.set_setting("fingerprint", &fingerprint)?;
    catalog.add_event(
        "site.created",
        Some(&opts.name),
        &format!("site {} created with certificate {fingerprint}", opts.name),
    )?;
    drop(catalog);

    let config = SiteConfig {
        format_version: CONFIG_FORMAT_VERSION,
        name: opts.name.clone(),
        listen: opts.listen.clone(),
        api: opts.api.clone(),
        nbd: opts.nbd.clone(),
        replication: Default::default(),
        failover: Default::default(),
        log: Default::default(),
        nbd_tls: Default::default(),
        libvirt: Default::default(),
        api_tls: opts.api_tls.clone(),
        object_store: Default::default(),
    };
    config.save(&layout.config())?;
    Ok(InitReport {
        config,
        fingerprint,
        api_fingerprint,
    })
}

/// Refuses an API configuration `offsite serve` would refuse, before the
/// site exists: plain HTTP off loopback without `--insecure-api`, and
/// `[api_tls]` settings that do not go together.
fn check_api_tls(api: &str, tls: &ApiTlsConfig) -> Result<(), EngineError> {
    if let Some(reason) = tls.check() {
        return Err(EngineError::Invalid(reason));
    }
    let addr = crate::config::parse_addr(api)
        .map_err(|reason| EngineError::Invalid(format!("--api: {reason}")))?;
    if tls.plaintext_refused(addr) {
        return Err(EngineError::Invalid(format!(
            "--api {api} is not a loopback address, and the API would serve plain HTTP: \
             the API token and console sessions would cross the network in the clear. \
             Add --api-tls self-signed (the site makes its own certificate; clients pin \
             the fingerprint `site show` prints), or --api-tls-cert PEM --api-tls-key PEM \
             (a certificate of yours), or --insecure-api to serve plain HTTP on a trusted \
             network anyway"
        )));
    }
    Ok(())
}

/// Makes `dir` the site's data directory: created if missing, refused
/// unless empty, and it and its subdirectories for the site's user only.
fn prepare_dir(dir: &Path, layout: &Layout) -> Result<(), EngineError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if layout.config().exists() {
                return Err(EngineError::DirNotEmpty {
                    dir: dir.to_path_buf(),
                    what: "a site (config.toml)".into(),
                });
            }
            if let Some(Ok(entry)) = entries.next() {
                return Err(EngineError::DirNotEmpty {
                    dir: dir.to_path_buf(),
                    what: format!("other files ({:?})", entry.file_name()),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            offsite_volume_file::create_private_dir_all(dir)
                .map_err(|e| EngineError::io("create", dir, e))?;
        }
        Err(e) => return Err(EngineError::io("read", dir, e)),
    }
    // Every mode is explicit here, not left to the caller's umask: the data
    // directory holds VM disks and the site's secrets, so it and everything
    // in it is for the site's user only, even when `site init` runs from a
    // shell with umask 022 (the daemon sets umask 077 itself for what it
    // creates later; an existing empty directory is tightened too).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir,
        std::fs::Permissions::from_mode(offsite_volume_file::PRIVATE_DIR_MODE),
    )
    .map_err(|e| EngineError::io("restrict the permissions of", dir, e))?;
    for d in [layout.tls_dir(), layout.volumes_dir(), layout.run_dir()] {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(offsite_volume_file::PRIVATE_DIR_MODE)
            .create(&d)
            .map_err(|e| EngineError::io("create", &d, e))?;
    }
    Ok(())
}

/// Writes the site's identity — a new TLS key and self-signed certificate
/// for `name`, and the API token — and returns the certificate's
/// fingerprint.
fn write_identity(layout: &Layout, name: &str) -> Result<String, EngineError> {
    let key = rcgen::KeyPair::generate().map_err(|e| EngineError::Tls(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])
        .map_err(|e| EngineError::Tls(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "offsite site");
    let cert = params
        .self_signed(&key)
        .map_err(|e| EngineError::Tls(e.to_string()))?;
    let fingerprint = fingerprint_of_der(cert.der());
    write(&layout.key(), key.serialize_pem().as_bytes(), 0o600)?;
    write(
        &layout.cert(),
        cert.pem().as_bytes(),
        offsite_volume_file::PRIVATE_FILE_MODE,
    )?;

    let mut token = [0u8; 32];
    rand::rng().fill_bytes(&mut token);
    write(
        &layout.token(),
        format!("{}\n", hex::encode(token)).as_bytes(),
        0o600,
    )?;
    Ok(fingerprint)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EngineError> {
    offsite_volume_file::write_durably(path, bytes, mode)
        .map_err(|e| EngineError::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn opts() -> InitOptions {
        InitOptions {
            name: "site-a".into(),
            listen: "127.0.0.1:0".into(),
            api: "127.0.0.1:0".into(),
            nbd: "127.0.0.1:0".into(),
            api_tls: Default::default(),
        }
    }

    #[test]
    fn init_creates_everything_and_refuses_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a");
        let report = init_site(&dir, &opts()).unwrap();
        assert!(report.fingerprint.starts_with("SHA256:"));
        assert_eq!(report.fingerprint.len(), 7 + 64);
        let layout = Layout::new(&dir);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&layout.token()), 0o600);
        assert_eq!(mode(&layout.key()), 0o600);
        // Whatever the umask of the test process: nothing for group/other.
        for p in [layout.cert(), layout.catalog(), layout.config()] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
        for d in [
            dir.clone(),
            layout.tls_dir(),
            layout.volumes_dir(),
            layout.run_dir(),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(SiteConfig::load(&layout.config()).unwrap(), report.config);
        let err = init_site(&dir, &opts()).unwrap_err();
        assert!(err.to_string().contains("already holds a site"), "{err}");
    }

    #[test]
    fn init_refuses_non_empty_dir_and_bad_names() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("x"), b"").unwrap();
        assert!(matches!(
            init_site(tmp.path(), &opts()),
            Err(EngineError::DirNotEmpty { .. })
        ));
        let mut o = opts();
        o.name = "bad name".into();
        assert!(matches!(
            init_site(&tmp.path().join("b"), &o),
            Err(EngineError::Invalid(_))
        ));
        let mut o = opts();
        o.api = "nowhere".into();
        assert!(matches!(
            init_site(&tmp.path().join("c"), &o),
            Err(EngineError::Invalid(_))
        ));
    }

    #[test]
    fn init_refuses_plain_http_off_loopback_unless_insecure_or_tls() {
        let tmp = tempfile::tempdir().unwrap();
        let mut o = opts();
        o.api = "0.0.0.0:7801".into();
        let err = init_site(&tmp.path().join("a"), &o).unwrap_err();
        assert!(matches!(err, EngineError::Invalid(_)), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("--api-tls self-signed") && text.contains("--insecure-api"),
            "{text}"
        );
        assert!(
            !tmp.path().join("a").exists(),
            "a refused init left a directory"
        );

        o.api_tls.allow_plaintext = true;
        let report = init_site(&tmp.path().join("b"), &o).unwrap();
        assert!(report.config.api_tls.allow_plaintext);
        assert_eq!(report.api_fingerprint, None);
        let saved = std::fs::read_to_string(Layout::new(tmp.path().join("b")).config()).unwrap();
        assert!(saved.contains("allow_plaintext = true"), "{saved}");

        o.api_tls = ApiTlsConfig {
            mode: crate::config::ApiTlsMode::SelfSigned,
            ..Default::default()
        };
        let dir = tmp.path().join("c");
        let report = init_site(&dir, &o).unwrap();
        let layout = Layout::new(&dir);
        let served = crate::api_tls::load(&layout, &report.config.api_tls)
            .unwrap()
            .unwrap();
        assert_eq!(
            report.api_fingerprint.as_deref(),
            Some(served.fingerprint())
        );
        assert_ne!(served.fingerprint(), report.fingerprint);
    }

    #[test]
    fn init_with_operator_files_checks_them_before_creating_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["api.example.org".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (tmp.path().join("api.pem"), tmp.path().join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
        let mut o = opts();
        o.api = "0.0.0.0:0".into();
        o.api_tls = ApiTlsConfig {
            mode: crate::config::ApiTlsMode::Files,
            cert: Some(c.clone()),
            key: Some(k.clone()),
            allow_plaintext: false,
        };
        let err = init_site(&tmp.path().join("a"), &o).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Invalid, "{err}");
        assert!(err.to_string().contains("does not belong"), "{err}");
        assert!(!tmp.path().join("a").exists());

        std::fs::write(&k, key.serialize_pem()).unwrap();
        let report = init_site(&tmp.path().join("a"), &o).unwrap();
        assert_eq!(report.api_fingerprint, Some(fingerprint_of_der(cert.der())));
        // The operator's files are referenced, not copied.
        assert!(!Layout::new(tmp.path().join("a")).api_cert().exists());
    }
}
