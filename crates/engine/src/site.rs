//! The live site: catalog, volumes and imports, shared by the REST API and
//! the NBD server.
//!
//! Locking: the catalog sits behind one mutex (SQLite connections are not
//! `Sync`); the volume map behind an `RwLock` that the NBD data path never
//! takes (a connection holds its `Arc<Volume>` from `OPT_GO` on). Catalog
//! changes are committed before the in-memory map changes, so what a client
//! is told has always been persisted first.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::model::{CreateVolume, Event, Hydration, ImportProgress, SiteInfo, VolumeInfo};
use offsite_catalog::{Catalog, NewVolume, VolumeRow};
use offsite_cbt::OpenReport;

use crate::config::SiteConfig;
use crate::layout::Layout;
use crate::volume::CutKind;
use crate::{DEFAULT_BLOCK_SIZE, EngineError, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, Volume, names};

/// Addresses the daemon actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone, Default)]
pub struct BoundAddresses {
    /// Replication listener.
    pub listen: Option<SocketAddr>,
    /// REST API.
    pub api: Option<SocketAddr>,
    /// NBD.
    pub nbd: Option<SocketAddr>,
    /// The fingerprint of the certificate the API listener serves (`None`:
    /// plain HTTP).
    pub api_fingerprint: Option<String>,
}

type ConnectionCounter = Box<dyn Fn(&str) -> usize + Send + Sync>;

#[derive(Debug, Default)]
struct ImportState {
    copied: AtomicU64,
    total: AtomicU64,
    error: Mutex<Option<String>>,
}

/// A running site.
pub struct Site {
    pub(crate) layout: Layout,
    /// Swapped whole by [`Site::reload_config`] (SIGHUP); readers take a
    /// snapshot, so one operation sees one consistent configuration.
    config: RwLock<Arc<SiteConfig>>,
    pub(crate) fingerprint: String,
    catalog: Mutex<Catalog>,
    /// A second connection to the catalog, for status reads: in WAL mode a
    /// reader sees the last commit without waiting for a writer, so a
    /// status page is not held up behind every group's cycle commits
    /// (with 200 groups, seconds of them).
    reader: Mutex<Catalog>,
    /// [`Catalog::group_changes`], read without the catalog's lock.
    pub(crate) group_changes: Arc<AtomicU64>,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    imports: Mutex<HashMap<String, Arc<ImportState>>>,
    bound: RwLock<BoundAddresses>,
    connections: RwLock<Option<ConnectionCounter>>,
    /// Exports that are not volumes (read-only PIT views), by export name.
    extra_exports: RwLock<BTreeMap<String, offsite_nbd::Export>>,
    /// Open replica stores by directory: one instance per store (it holds
    /// the store's lock), shared by replication and by promoted volumes
    /// reading their PIT.
    pub(crate) stores: Arc<Mutex<crate::promote::Stores>>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("dir", &self.layout.root())
            .field("name", &self.config().name)
            .finish_non_exhaustive()
    }
}

impl Site {
    /// Opens the site in `dir`: configuration, catalog (migrated), and every
    /// volume with its change tracker (recovering tracking state after a crash).
    pub fn open(dir: &Path) -> Result<Arc<Site>, EngineError> {
        // Absolute, so that paths reported to clients mean the same to them.
        let dir = std::path::absolute(dir).map_err(|e| EngineError::io("resolve", dir, e))?;
        let layout = Layout::new(&dir);
        let config = SiteConfig::load(&layout.config())?;
        let catalog = Catalog::open(&layout.catalog())?;
        let fingerprint = catalog.setting("fingerprint")?.unwrap_or_default();
        let mut volumes = BTreeMap::new();
        let stores = Arc::new(Mutex::new(crate::promote::Stores::new(
            layout.clone(),
            config.object_store.clone(),
            crate::owner::SiteIdentity {
                name: config.name.clone(),
                fingerprint: fingerprint.clone(),
            },
        )));
        for row in catalog.volumes()? {
            if row.state == "importing" {
                // The copy thread died with the previous daemon; its volume
                // holds a partial image. Say so rather than serve it.
                catalog.set_volume_state(&row.name, "failed")?;
                catalog.add_event(
                    "volume.import-failed",
                    Some(&row.name),
                    "import interrupted by a daemon stop; delete the volume and import again",
                )?;
                tracing::warn!(volume = %row.name, "import was interrupted by a daemon stop; volume marked failed");
            }
            let name = row.name.clone();
            let (volume, report) = crate::promote::open_volume(&layout, &catalog, &stores, row)?;
            match report {
                OpenReport::Clean => {}
                OpenReport::RecoveredAfterCrash { active_extents } => {
                    let msg = format!(
                        "daemon stopped uncleanly; {active_extents} active extent(s) of the activity log counted dirty"
                    );
                    tracing::warn!(volume = %name, "{msg}");
                    catalog.add_event("volume.cbt-recovered", Some(&name), &msg)?;
                }
                OpenReport::Reset { reason } => {
                    let msg = format!(
                        "change tracking state lost ({reason}); whole volume counted dirty"
                    );
                    tracing::warn!(volume = %name, "{msg}");
                    catalog.add_event("volume.cbt-reset", Some(&name), &msg)?;
                }
            }
            volumes.insert(name, Arc::new(volume));
        }
        let mut failed_imports = HashMap::new();
        for v in catalog.volumes()? {
            if v.state == "failed" {
                let st = ImportState::default();
                *st.error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some("import interrupted by a daemon stop".into());
                failed_imports.insert(v.name, Arc::new(st));
            }
        }
        let reader = Catalog::open(&layout.catalog())?;
        Ok(Arc::new(Site {
            reader: Mutex::new(reader),
            layout,
            config: RwLock::new(Arc::new(config)),
            fingerprint,
            group_changes: catalog.group_changes(),
            catalog: Mutex::new(catalog),
            volumes: RwLock::new(volumes),
            imports: Mutex::new(failed_imports),
            bound: RwLock::new(BoundAddresses::default()),
            connections: RwLock::new(None),
            extra_exports: RwLock::new(BTreeMap::new()),
            stores,
        }))
    }

    /// The data directory layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The configuration in force: as loaded at start, with the reloadable
    /// settings of the last [`Site::reload_config`].
    pub fn config(&self) -> Arc<SiteConfig> {
        self.config
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads `config.toml` and puts its reloadable settings in force
    /// (see [`SiteConfig::reload`]); the rest waits for a restart. On error
    /// nothing changes.
    pub fn reload_config(&self) -> Result<crate::config::Reload, EngineError> {
        let new = SiteConfig::load(&self.layout.config())?;
        let mut current = self
            .config
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (merged, reload) = current.reload(&new);
        self.stores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .object_store = merged.object_store.clone();
        *current = Arc::new(merged);
        Ok(reload)
    }

    /// Records the addresses the daemon bound.
    pub fn set_bound(&self, bound: BoundAddresses) {
        *self.bound.write().unwrap_or_else(|e| e.into_inner()) = bound;
    }

    /// The addresses the daemon bound (and the API's certificate).
    pub fn bound(&self) -> BoundAddresses {
        self.bound.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs the function that counts open NBD connections of an export.
    pub fn set_connection_counter(&self, f: impl Fn(&str) -> usize + Send + Sync + 'static) {
        *self.connections.write().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    pub(crate) fn catalog(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.catalog.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The catalog's read connection: for reads that must not wait behind
    /// writers (it sees the last committed state). Never write through it.
    pub(crate) fn catalog_reader(&self) -> std::sync::MutexGuard<'_, Catalog> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `site show`.
    pub fn info(&self) -> SiteInfo {
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner()).clone();
        let show = |b: Option<SocketAddr>, configured: &str| {
            b.map(|a| a.to_string())
                .unwrap_or_else(|| configured.to_string())
        };
        let config = self.config();
        SiteInfo {
            name: config.name.clone(),
            fingerprint: self.fingerprint.clone(),
            listen: show(bound.listen, &config.listen),
            api: show(bound.api, &config.api),
            api_url: api_url(
                bound
                    .api
                    .or_else(|| crate::config::parse_addr(&config.api).ok()),
                config.api_tls.mode,
            ),
            api_tls: config.api_tls.mode,
            api_fingerprint: bound.api_fingerprint.clone(),
            nbd: show(bound.nbd, &config.nbd),
            version: env!("CARGO_PKG_VERSION").to_string(),
            data_dir: self.layout.root().display().to_string(),
        }
    }

    /// `nbd://HOST:PORT/NAME` for a volume or export; `nbds://` (libnbd's
    /// scheme for TLS) when it requires TLS (its own mode, else the
    /// listener's).
    pub fn volume_url(&self, name: &str) -> String {
        let own = self.catalog().volume(name).ok().and_then(|r| own_tls(&r));
        self.url_for(name, own.unwrap_or(self.config().nbd_tls.mode))
    }

    fn url_for(&self, name: &str, tls: offsite_nbd::TlsMode) -> String {
        let bound = self.bound.read().unwrap_or_else(|e| e.into_inner()).nbd;
        let addr = bound
            .or_else(|| crate::config::parse_addr(&self.config().nbd).ok())
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10809)));
        let host = match addr.ip() {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let scheme = match tls {
            offsite_nbd::TlsMode::Required => "nbds",
            offsite_nbd::TlsMode::Off | offsite_nbd::TlsMode::Optional => "nbd",
        };
        format!("{scheme}://{host}:{}/{name}", addr.port())
    }

    fn connection_count(&self, name: &str) -> u64 {
        self.connections
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map_or(0, |f| f(name) as u64)
    }

    fn describe(&self, row: &VolumeRow, volume: Option<&Volume>) -> VolumeInfo {
        let nbd_tls = own_tls(row).unwrap_or(self.config().nbd_tls.mode);
        let import = self
            .imports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&row.name)
            .map(|s| ImportProgress {
                copied_bytes: s.copied.load(Ordering::Relaxed),
                total_bytes: s.total.load(Ordering::Relaxed),
                error: s.error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            });
        VolumeInfo {
            name: row.name.clone(),
            size_bytes: row.size_bytes,
            block_size: row.block_size,
            dirty_bytes: volume.map_or(0, |v| v.tracker().dirty_bytes()),
            role: row.role.clone(),
            state: row.state.clone(),
            created_at: row.created_at.clone(),
            url: self.url_for(&row.name, nbd_tls),
            nbd_tls,
            connections: self.connection_count(&row.name),
            import,
            hydration: volume
                .and_then(|v| v.file().layered())
                .filter(|l| !l.is_flat())
                .map(|l| Hydration {
                    local_bytes: (l.present_blocks() * u64::from(l.block_size())).min(l.size()),
                    total_bytes: l.size(),
                }),
        }
    }

    pub(crate) fn live(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// `volume show`.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo, EngineError> {
        let row = self.catalog().volume(name)?;
        Ok(self.describe(&row, self.live(name).as_deref()))
    }

    /// `volume list`.
    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>, EngineError> {
        let rows = self.catalog().volumes()?;
        Ok(rows
            .iter()
            .map(|r| self.describe(r, self.live(&r.name).as_deref()))
            .collect())
    }

    /// The live volume called `name`.
    pub fn volume(&self, name: &str) -> Result<Arc<Volume>, EngineError> {
        self.live(name)
            .ok_or_else(|| EngineError::NoSuchVolume(name.to_string()))
    }

    /// `volume create`: an empty volume of `size_bytes`, or a copy of the
    /// raw image or block device at `import_path` (copied in the background;
    /// `state` is `importing` until it is done).
    pub fn create_volume(self: &Arc<Self>, req: &CreateVolume) -> Result<VolumeInfo, EngineError> {
        let (block_size, size_bytes, import) = volume_shape(req)?;
        let import_source = import.as_ref().map(|(p, _)| p.display().to_string());
        let row = self.catalog().insert_volume(&NewVolume {
            name: &req.name,
            size_bytes,
            block_size,
            role: "primary",
            state: if import.is_some() {
                "importing"
            } else {
                "ready"
            },
            import_source: import_source.as_deref(),
            lower: None,
        })?;
        let volume = match Volume::create(&self.layout, row.clone()) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                // Nothing of a failed create may stay: a leftover file
                // would block the next volume given the same id.
                if let Err(re) = Volume::remove_files(&self.layout, row.id) {
                    tracing::warn!(volume = %row.name, error = %re, "removing the files of a failed create");
                }
                if let Err(de) = self.catalog().delete_volume(&row.name) {
                    tracing::warn!(volume = %row.name, error = %de, "removing the catalog row of a failed create; `offsite volume delete` removes it");
                }
                return Err(e);
            }
        };
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(row.name.clone(), volume.clone());
        let msg = match &import {
            Some((p, _)) => format!(
                "volume created ({size_bytes} bytes), importing {}",
                p.display()
            ),
            None => format!("volume created ({size_bytes} bytes, block size {block_size})"),
        };
        self.event("volume.created", Some(&row.name), &msg);
        if let Some((path, src)) = import {
            self.start_import(&row.name, size_bytes, path, src, volume)?;
        }
        self.volume_info(&row.name)
    }

    /// Copies the import source `src` into the new volume `name` on a
    /// thread of its own; its progress is tracked until it is done.
    fn start_import(
        self: &Arc<Self>,
        name: &str,
        size_bytes: u64,
        path: PathBuf,
        src: std::fs::File,
        volume: Arc<Volume>,
    ) -> Result<(), EngineError> {
        let state = Arc::new(ImportState::default());
        state.total.store(size_bytes, Ordering::Relaxed);
        self.imports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), state.clone());
        let site = self.clone();
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("import-{name}"))
            .spawn(move || site.run_import(&name, &path, src, &volume, &state))
            .map_err(|e| EngineError::io("start import of", self.layout.root(), e))?;
        Ok(())
    }

    fn run_import(
        &self,
        name: &str,
        path: &Path,
        src: std::fs::File,
        volume: &Volume,
        state: &ImportState,
    ) {
        let result = copy_image(&src, volume, &state.copied);
        let (new_state, kind, msg) = match result {
            Ok(()) => (
                "ready",
                "volume.imported",
                format!("import of {} complete", path.display()),
            ),
            Err(e) => {
                let msg = format!(
                    "import of {} failed: {e}; delete the volume and try again",
                    path.display()
                );
                *state.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
                ("failed", "volume.import-failed", msg)
            }
        };
        let catalog = self.catalog();
        if let Err(e) = catalog.set_volume_state(name, new_state) {
            tracing::error!(volume = name, error = %e, "recording the end of an import");
        }
        drop(catalog);
        self.event(kind, Some(name), &msg);
        if new_state == "ready" {
            volume.set_ready();
            self.imports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(name);
        }
    }

    /// `volume delete`: refused while NBD clients are connected.
    pub fn delete_volume(&self, name: &str) -> Result<(), EngineError> {
        let row = self.catalog().volume(name)?;
        if let Some(group) = self.groups().of_volume(name)? {
            return Err(EngineError::Busy {
                name: name.to_string(),
                why: format!("it is replicated by group {group}"),
                what_to_do: "tear the group down first",
            });
        }
        let users = self.vms_using(name)?;
        if !users.is_empty() {
            return Err(EngineError::Busy {
                name: name.to_string(),
                why: format!("it is a disk of VM {}", users.join(", ")),
                what_to_do: "delete the VM first with `offsite vm delete`",
            });
        }
        if self
            .imports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|s| s.error.lock().unwrap_or_else(|e| e.into_inner()).is_none())
        {
            return Err(EngineError::Busy {
                name: name.to_string(),
                why: "an import is still copying".into(),
                what_to_do: "wait for it to finish, then delete",
            });
        }
        let removed = self
            .volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if let Some(volume) = removed {
            // Only the map held it if no NBD connection has it open.
            match Arc::try_unwrap(volume) {
                Ok(v) => drop(v),
                Err(shared) => {
                    let n = Arc::strong_count(&shared) - 1;
                    self.volumes
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.to_string(), shared);
                    return Err(EngineError::Busy {
                        name: name.to_string(),
                        why: format!("{n} open NBD connection(s)"),
                        what_to_do: "disconnect its clients (stop the VM) first",
                    });
                }
            }
        }
        self.catalog().delete_volume(name)?;
        self.imports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Volume::remove_files(&self.layout, row.id)?;
        self.event("volume.deleted", Some(name), "volume deleted");
        Ok(())
    }

    /// Takes one consistent cut across `volumes` (a replication group):
    /// every volume's write barrier is held at once, so no write is in
    /// flight anywhere in the group while the dirty sets are swapped, and
    /// write order across the group is preserved in the cut. Writes stall
    /// only for the swap, not for the shipping. Returns each volume's
    /// blocks to ship, in `volumes` order.
    pub fn cut(volumes: &[Arc<Volume>]) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        Self::cut_inner(volumes, CutKind::Changed)
    }

    /// A cut whose whole image stays readable until it ends (every block
    /// overwritten meanwhile is preserved), for verification against the
    /// replica. Costs memory for what is overwritten while it lasts.
    pub fn cut_full(
        volumes: &[Arc<Volume>],
    ) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        Self::cut_inner(volumes, CutKind::Full)
    }

    /// A cut (as [`Site::cut`]) during which `during` runs with every write
    /// of the group held off, so what it changes — attaching a sync group's
    /// write mirror — applies exactly to the writes after the cut.
    pub fn cut_then(
        volumes: &[Arc<Volume>],
        during: impl FnOnce(),
    ) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        let guards: Vec<_> = volumes.iter().map(|v| v.barrier()).collect();
        let sets = Self::cut_locked(volumes, CutKind::Changed)?;
        during();
        drop(guards);
        Ok(sets)
    }

    /// A full cut ([`Site::cut_full`]) during which `during` runs with every
    /// write held off (a sync group's verify queues a seal there, so the
    /// sealed PIT is exactly the cut's image).
    pub fn cut_full_then(
        volumes: &[Arc<Volume>],
        during: impl FnOnce(),
    ) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        let guards: Vec<_> = volumes.iter().map(|v| v.barrier()).collect();
        let sets = Self::cut_locked(volumes, CutKind::Full)?;
        during();
        drop(guards);
        Ok(sets)
    }

    /// The seal point of a synchronous group: with every write held off,
    /// each volume's dirty set moves in flight (no copy-on-write: the
    /// replica's log already has the blocks) and `during` runs (it queues
    /// the seal behind exactly the writes before this point). End with
    /// [`Volume::end_seal`].
    pub fn seal_cut(volumes: &[Arc<Volume>], during: impl FnOnce()) -> Result<(), EngineError> {
        let guards: Vec<_> = volumes.iter().map(|v| v.barrier()).collect();
        for v in volumes {
            v.tracker().begin_cut()?;
        }
        during();
        drop(guards);
        Ok(())
    }

    /// The cut that ends a resynchronization's rounds
    /// ([`Volume::resync_round`]), during which `during` runs with every
    /// write of the group held off: each volume's set is only what was
    /// written since its last round (what the rounds shipped and was not
    /// written again is already the cut's image), and only those blocks
    /// are copied on write while the cut ships, into the rounds' PIT.
    pub fn cut_after_rounds_then(
        volumes: &[Arc<Volume>],
        during: impl FnOnce(),
    ) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        let guards: Vec<_> = volumes.iter().map(|v| v.barrier()).collect();
        let sets = Self::cut_locked(volumes, CutKind::SinceRounds)?;
        during();
        drop(guards);
        Ok(sets)
    }

    fn cut_inner(
        volumes: &[Arc<Volume>],
        kind: CutKind,
    ) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        let guards: Vec<_> = volumes.iter().map(|v| v.barrier()).collect();
        let sets = Self::cut_locked(volumes, kind)?;
        drop(guards);
        Ok(sets)
    }

    fn cut_locked(
        volumes: &[Arc<Volume>],
        kind: CutKind,
    ) -> Result<Vec<offsite_cbt::RoaringBitmap>, EngineError> {
        let mut sets = Vec::with_capacity(volumes.len());
        for (i, v) in volumes.iter().enumerate() {
            match v.begin_cut_locked(kind) {
                Ok(s) => sets.push(s),
                Err(e) => {
                    // Undo only the cuts this call began: another cut of a
                    // volume must not be ended by our failure.
                    for v in &volumes[..i] {
                        v.end_cut(false);
                    }
                    return Err(e);
                }
            }
        }
        Ok(sets)
    }

    /// `volume set --nbd-tls`: the volume's own NBD TLS mode (`None`: the
    /// listener's). Applies to connections negotiated from now on; open
    /// ones keep what they negotiated.
    pub fn set_volume_nbd_tls(
        &self,
        name: &str,
        mode: Option<offsite_nbd::TlsMode>,
    ) -> Result<VolumeInfo, EngineError> {
        // A listener without TLS cannot serve a volume that asks for it:
        // no client could reach the volume, which the operator would only
        // learn from their clients' errors.
        let listener = self.config().nbd_tls.mode;
        if listener == offsite_nbd::TlsMode::Off
            && let Some(m @ (offsite_nbd::TlsMode::Optional | offsite_nbd::TlsMode::Required)) =
                mode
        {
            self.volume(name)?;
            return Err(EngineError::Invalid(format!(
                "volume {name} cannot take NBD TLS mode {m}: the NBD listener serves no TLS ([nbd_tls] mode = \"off\" in config.toml), so no client could reach it; set [nbd_tls] mode and its credentials (x509_dir or psk_file), restart the daemon, then run this again"
            )));
        }
        self.catalog()
            .set_volume_nbd_tls(name, mode.map(offsite_nbd::TlsMode::as_str))?;
        let shown = mode.map_or_else(
            || format!("the listener's ({})", self.config().nbd_tls.mode),
            |m| m.to_string(),
        );
        self.event(
            "volume.nbd-tls",
            Some(name),
            &format!("NBD TLS mode: {shown}"),
        );
        self.volume_info(name)
    }

    /// `volume clear-dirty`: forgets the changes tracked so far.
    ///
    /// On a volume of a replication group the tracked changes are exactly
    /// what the replica lacks: forgetting them would let the replica
    /// diverge with nothing to show for it. So it is refused there unless
    /// `force`, and then the group is marked as needing `group resync`
    /// (health critical until a resync or a clean verify).
    pub fn clear_dirty(&self, name: &str, force: bool) -> Result<VolumeInfo, EngineError> {
        let volume = self.volume(name)?;
        let group = self.groups().of_volume(name)?;
        if let Some(group) = &group
            && !force
        {
            return Err(EngineError::Refused(format!(
                "volume {name} is in replication group {group}: its tracked changes are what the replica still lacks, and clearing them would let the replica differ silently; to clear them anyway add --force, then run `offsite group resync {group}`"
            )));
        }
        let before = volume.tracker().dirty_bytes();
        volume.tracker().clear()?;
        self.event(
            "volume.dirty-cleared",
            Some(name),
            &format!("{before} dirty bytes cleared"),
        );
        if let Some(group) = &group {
            let why = format!(
                "the change tracking of volume {name} was cleared with --force ({before} dirty bytes forgotten)"
            );
            self.set_group_needs_resync(group, Some(&why))?;
        }
        self.volume_info(name)
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: u32) -> Result<Vec<Event>, EngineError> {
        // The console's live stream reads them every tick: not behind writers.
        Ok(self
            .catalog_reader()
            .events(limit)?
            .into_iter()
            .map(|e| Event {
                id: e.id,
                at: e.at,
                kind: e.kind,
                subject: e.subject,
                message: e.message,
            })
            .collect())
    }

    /// Removes a volume from the live map (NBD stops serving it to new
    /// connections); returns it.
    pub(crate) fn forget_live(&self, name: &str) -> Option<Arc<Volume>> {
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Inserts a volume opened or created elsewhere in the engine.
    pub(crate) fn insert_live(&self, volume: Arc<Volume>) {
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(volume.name().to_string(), volume);
    }

    /// The live volumes.
    pub(crate) fn live_volumes(&self) -> Vec<Arc<Volume>> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn event(&self, kind: &str, subject: Option<&str>, message: &str) {
        tracing::info!(kind, subject, "{message}");
        if let Err(e) = self.catalog().add_event(kind, subject, message) {
            tracing::error!(error = %e, "could not record event {kind}");
        }
    }

    /// Clean shutdown: every volume's data synced and its tracker closed, so
    /// the next start preserves dirty sets exactly. Call after the NBD server
    /// has stopped; a volume still referenced elsewhere is only checkpointed
    /// (its next open then counts its active extents dirty: safe, not exact).
    pub fn close(&self) -> Result<(), EngineError> {
        let volumes = std::mem::take(&mut *self.volumes.write().unwrap_or_else(|e| e.into_inner()));
        let mut first_error = None;
        // Extra exports with writable layers (test clones) keep their
        // writes across a clean restart, as a client's FLUSH would.
        let extras: Vec<offsite_nbd::Export> = std::mem::take(
            &mut *self
                .extra_exports
                .write()
                .unwrap_or_else(|e| e.into_inner()),
        )
        .into_values()
        .collect();
        for export in extras {
            if let Err(e) = export.device.flush() {
                tracing::error!(export = %export.name, error = %e, "flushing export");
            }
        }
        for (name, volume) in volumes {
            let r = match Arc::try_unwrap(volume) {
                Ok(v) => v.close(),
                Err(shared) => {
                    tracing::warn!(volume = %name, "volume still in use at shutdown; checkpointing only");
                    shared.tracker().checkpoint().map_err(EngineError::from)
                }
            };
            if let Err(e) = r {
                tracing::error!(volume = %name, error = %e, "closing volume");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Copies a raw image into a volume, skipping all-zero blocks so that the
/// volume stays sparse and they are not counted as changed.
fn copy_image(src: &std::fs::File, volume: &Volume, copied: &AtomicU64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let size = volume.row().size_bytes;
    let block = volume.row().block_size as usize;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(CHUNK as u64) as usize;
        src.read_exact_at(&mut buf[..n], offset)?;
        for (i, chunk) in buf[..n].chunks(block).enumerate() {
            if chunk.iter().all(|&b| b == 0) {
                continue;
            }
            let at = offset + (i * block) as u64;
            volume
                .tracker()
                .mark(at, chunk.len() as u64)
                .map_err(std::io::Error::other)?;
            volume.file().write_at(chunk, at)?;
        }
        offset += n as u64;
        copied.store(offset, Ordering::Relaxed);
    }
    volume.file().sync()?;
    volume
        .tracker()
        .checkpoint()
        .map_err(std::io::Error::other)?;
    Ok(())
}

impl Site {
    /// Serves `export` over NBD under its name until the daemon stops (or
    /// [`Site::remove_export`]); returns its NBD URL.
    pub fn add_export(&self, export: offsite_nbd::Export) -> String {
        let url = self.volume_url(&export.name);
        self.extra_exports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(export.name.clone(), export);
        url
    }

    /// Stops serving an extra export to new connections.
    pub fn remove_export(&self, name: &str) -> bool {
        self.extra_exports
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some()
    }

    /// Names of the extra exports.
    pub fn extra_export_names(&self) -> Vec<String> {
        self.extra_exports
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

/// Export lookup for the NBD server: ready volumes, by name, then the
/// extra exports (PIT views).
impl offsite_nbd::ExportRegistry for Site {
    fn lookup(&self, name: &str) -> Option<offsite_nbd::Export> {
        let Some(volume) = self.live(name) else {
            return self
                .extra_exports
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
                .cloned();
        };
        if !volume.is_ready() {
            return None;
        }
        // Read per negotiation, so `volume set --nbd-tls` applies to the
        // next client at once. Unreadable, the export is not offered
        // rather than offered with a weaker mode.
        let tls = match self.catalog().volume(name) {
            Ok(row) => own_tls(&row),
            Err(err) => {
                tracing::warn!(volume = name, error = %err, "cannot read the volume's NBD TLS mode; not exporting it to this client");
                return None;
            }
        };
        Some(offsite_nbd::Export {
            name: name.to_string(),
            description: format!("offsite volume {name} ({} bytes)", volume.row().size_bytes),
            device: volume,
            tls,
        })
    }

    fn list(&self) -> Vec<(String, String)> {
        let mut names: Vec<String> = self
            .volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect();
        names.extend(self.extra_export_names());
        names
            .into_iter()
            .filter_map(|n| self.lookup(&n).map(|e| (e.name, e.description)))
            .collect()
    }
}

/// The URL of the API (and console) at `addr`: `https://` when it serves
/// TLS. A listener on every interface (`0.0.0.0`, `::`) is named by the
/// host name, which a workstation can use and the self-signed certificate
/// names.
fn api_url(addr: Option<SocketAddr>, tls: crate::config::ApiTlsMode) -> String {
    let scheme = match tls {
        crate::config::ApiTlsMode::Off => "http",
        crate::config::ApiTlsMode::SelfSigned | crate::config::ApiTlsMode::Files => "https",
    };
    let Some(addr) = addr else {
        return String::new();
    };
    let host = match addr.ip() {
        ip if ip.is_unspecified() => {
            crate::api_tls::hostname().unwrap_or_else(|| "127.0.0.1".to_string())
        }
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// A volume's own NBD TLS mode. The catalog's CHECK admits only the three
/// names; anything else would be a damaged catalog, and requiring TLS is
/// the safe reading of it.
fn own_tls(row: &VolumeRow) -> Option<offsite_nbd::TlsMode> {
    row.nbd_tls
        .as_deref()
        .map(|m| m.parse().unwrap_or(offsite_nbd::TlsMode::Required))
}

/// An image to import: its path and the file opened for reading.
type ImportSource = (PathBuf, std::fs::File);

/// A new volume's block size, size and import source (opened), checked:
/// a valid name, a power-of-two block size, either a size or an absolute
/// import path, and a size that is a whole number of at most 2^32 blocks.
fn volume_shape(req: &CreateVolume) -> Result<(u32, u64, Option<ImportSource>), EngineError> {
    names::validate("volume", &req.name)?;
    let block_size = req.block_size.unwrap_or(DEFAULT_BLOCK_SIZE);
    if !block_size.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&block_size) {
        return Err(EngineError::Invalid(format!(
            "block size {block_size} is not a power of two between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE} bytes; use e.g. --block-size 4K"
        )));
    }
    let (size_bytes, import) = match (&req.size_bytes, &req.import_path) {
        (Some(_), Some(_)) => {
            return Err(EngineError::Invalid(
                "give either --size or --import, not both".into(),
            ));
        }
        (None, None) => {
            return Err(EngineError::Invalid(
                "give --size SIZE for an empty volume or --import PATH to copy an image".into(),
            ));
        }
        (Some(size), None) => (*size, None),
        (None, Some(path)) => {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(EngineError::Invalid(format!(
                    "import path {} is relative; the site resolves it on its own machine, so give an absolute path",
                    path.display()
                )));
            }
            let (file, size) = offsite_volume_file::open_source(&path).map_err(|e| match e {
                e @ offsite_volume_file::StoreError::NotImportable { .. } => {
                    EngineError::Invalid(e.to_string())
                }
                e => EngineError::Invalid(format!(
                    "cannot read import source: {e}; check the path and permissions of the site's user"
                )),
            })?;
            (size, Some((path, file)))
        }
    };
    if size_bytes == 0 {
        return Err(EngineError::Invalid(match &import {
            Some((p, _)) => {
                format!("import source {} is empty; nothing to import", p.display())
            }
            None => "size must be greater than 0; use e.g. --size 10G".into(),
        }));
    }
    if size_bytes % u64::from(block_size) != 0 {
        return Err(EngineError::Invalid(format!(
            "size {size_bytes} is not a multiple of the block size {block_size}; round it to a multiple{}",
            if import.is_some() {
                " or pass a smaller --block-size (e.g. 512)"
            } else {
                ""
            }
        )));
    }
    if size_bytes / u64::from(block_size) > u64::from(u32::MAX) {
        return Err(EngineError::Invalid(format!(
            "size {size_bytes} is more than 2^32 blocks of {block_size} bytes; use a larger --block-size"
        )));
    }
    Ok((block_size, size_bytes, import))
}
