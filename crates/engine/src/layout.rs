//! Where things live in a site's data directory:
//!
//! ```text
//! DIR/config.toml        site configuration (name, listener addresses)
//! DIR/catalog.db         SQLite catalog (+ -wal, -shm)
//! DIR/api.token          bearer token for the REST API (mode 0600)
//! DIR/tls/site.key       the site's private key, PEM (mode 0600)
//! DIR/tls/site.crt       the site's self-signed certificate, PEM
//! DIR/tls/api.key        the API listener's own key, PEM ([api_tls] self-signed)
//! DIR/tls/api.crt        the API listener's self-signed certificate, PEM
//! DIR/volumes/ID.img     volume data, raw and sparse
//! DIR/volumes/ID.cbt     changed-block bitmap   (offsite-cbt)
//! DIR/volumes/ID.al      changed-block activity log (offsite-cbt)
//! DIR/run/daemon.json    addresses actually bound by the running daemon, its pid
//! DIR/run/lock           flock held by the running daemon
//! DIR/keys/GROUP.key     the key of a group whose replicas are encrypted (mode 0600)
//! DIR/object-stores/PARTNER/GROUP/
//!                        working directory of a replica store kept in a bucket
//!                        (objects.toml says where; see `crate::objects`)
//! ```

use std::path::{Path, PathBuf};

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of the data directory `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }
    /// The data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// `catalog.db`.
    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog.db")
    }
    /// `api.token`.
    pub fn token(&self) -> PathBuf {
        self.root.join("api.token")
    }
    /// `tls/`.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    /// `tls/site.key`.
    pub fn key(&self) -> PathBuf {
        self.tls_dir().join("site.key")
    }
    /// `tls/site.crt`.
    pub fn cert(&self) -> PathBuf {
        self.tls_dir().join("site.crt")
    }
    /// `tls/api.key`: the key of the API's self-signed certificate.
    pub fn api_key(&self) -> PathBuf {
        self.tls_dir().join("api.key")
    }
    /// `tls/api.crt`: the API's self-signed certificate.
    pub fn api_cert(&self) -> PathBuf {
        self.tls_dir().join("api.crt")
    }
    /// `volumes/`.
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }
    /// Data file of volume `id`.
    pub fn volume_data(&self, id: i64) -> PathBuf {
        self.volumes_dir().join(format!("{id}.img"))
    }
    /// File stem of the tracking files of volume `id` (inside `volumes/`).
    pub fn volume_stem(id: i64) -> String {
        id.to_string()
    }
    /// `run/`.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }
    /// `run/daemon.json`.
    pub fn daemon_info(&self) -> PathBuf {
        self.run_dir().join("daemon.json")
    }
    /// `run/lock`.
    pub fn lock(&self) -> PathBuf {
        self.run_dir().join("lock")
    }
    /// `keys/`: the keys of the groups whose replicas are encrypted.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }
    /// `keys/GROUP.key`: group `group`'s key (mode 0600).
    pub fn group_key(&self, group: &str) -> PathBuf {
        self.keys_dir().join(format!("{group}.key"))
    }
    /// `object-stores/PARTNER/GROUP/`: the local working directory of a
    /// replica store whose committed state is in a bucket (see
    /// `crate::objects`).
    pub fn object_work_dir(&self, partner: &str, group: &str) -> PathBuf {
        self.root.join("object-stores").join(partner).join(group)
    }
}
