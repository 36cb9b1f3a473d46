//! Promoted volumes: a replica's PIT turned into a writable volume of this
//! site in well under a second, whatever its size. The volume is layered
//! (the PIT as lower layer, writes in a private top layer, see
//! `offsite_volume_file::layered`), tracked by its own change tracker from the
//! first write on, and flattened in the background: a thread copies the
//! PIT's blocks into the top until it holds everything; the next start
//! then renames the top into a plain data file and forgets the lower.
//!
//! This module also owns the site's open replica stores (one instance per
//! store directory, as a store holds its directory's lock), since promoted
//! volumes read from them as replication does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use offsite_catalog::{Catalog, LowerRef, NewVolume, VolumeRow};
use offsite_cbt::OpenReport;
use offsite_replica_store::{CheckpointId, CheckpointImage, PitId, ReplicaStore};
use offsite_volume_file::{Layered, Lower};

use crate::layout::Layout;
use crate::volume::{CheckpointLower, PitLower};
use crate::{EngineError, Site, Volume, names};

/// Blocks the flattener copies between pauses.
const FLATTEN_STEP_BLOCKS: u64 = 256;

/// The site's open replica stores (one instance per store directory, as
/// a store holds its directory's lock) and the checkpoint images promoted
/// volumes and test clones read, shared while any of them lives (building
/// one reads the journal from its PIT to the checkpoint: once for all the
/// group's volumes, not once per volume).
pub(crate) struct Stores {
    by_dir: HashMap<PathBuf, Arc<ReplicaStore>>,
    images: HashMap<(PathBuf, u64), Weak<CheckpointImage>>,
    /// The site's layout (its group keys) and `[object_store]` settings,
    /// for stores whose committed state is in an object store
    /// (`crate::objects`); the settings follow config reloads.
    layout: Layout,
    pub(crate) object_store: offsite_objects::S3Settings,
    /// This site, as the owner records of its stores in buckets name it
    /// (`crate::owner`).
    identity: crate::owner::SiteIdentity,
}

impl Stores {
    pub(crate) fn new(
        layout: Layout,
        object_store: offsite_objects::S3Settings,
        identity: crate::owner::SiteIdentity,
    ) -> Stores {
        Stores {
            by_dir: HashMap::new(),
            images: HashMap::new(),
            layout,
            object_store,
            identity,
        }
    }

    fn open(&mut self, dir: &Path) -> Result<Arc<ReplicaStore>, EngineError> {
        if let Some(s) = self.by_dir.get(dir) {
            return Ok(s.clone());
        }
        let store = Arc::new(crate::objects::open_store(
            dir,
            &self.object_store,
            &self.layout,
            Some(&self.identity),
        )?);
        self.by_dir.insert(dir.to_path_buf(), store.clone());
        Ok(store)
    }

    /// The image of checkpoint `id` of the store in `dir`, built once and
    /// shared while it is used.
    fn image(&mut self, dir: &Path, id: u64) -> Result<Arc<CheckpointImage>, EngineError> {
        self.images.retain(|_, w| w.strong_count() > 0);
        let key = (dir.to_path_buf(), id);
        if let Some(image) = self.images.get(&key).and_then(Weak::upgrade) {
            return Ok(image);
        }
        let store = self.open(dir)?;
        let cid = CheckpointId::new(id).ok_or_else(|| {
            EngineError::Invalid(format!(
                "checkpoint 0 of the replica store {}",
                dir.display()
            ))
        })?;
        let image = Arc::new(store.checkpoint_image(cid).map_err(|e| {
            EngineError::Invalid(format!(
                "reading checkpoint {id} of the replica store {}: {e}",
                dir.display()
            ))
        })?);
        self.images.insert(key, Arc::downgrade(&image));
        Ok(image)
    }

    fn forget(&mut self, dir: &Path) {
        self.by_dir.remove(dir);
        self.images.retain(|(d, _), _| d != dir);
    }
}

/// The lower layer `lower` names: PIT `lower.pit`, or the image of
/// checkpoint `lower.checkpoint` (which starts from that PIT).
fn lower_of(stores: &mut Stores, lower: &LowerRef) -> Result<Arc<dyn Lower>, EngineError> {
    let dir = Path::new(&lower.store_dir);
    if let Some(id) = lower.checkpoint {
        return Ok(Arc::new(CheckpointLower {
            image: stores.image(dir, id)?,
            volume: lower.volume.clone(),
        }));
    }
    let pit = PitId::new(lower.pit)
        .ok_or_else(|| EngineError::Invalid(format!("PIT 0 of {}", lower.store_dir)))?;
    Ok(Arc::new(PitLower::new(
        stores.open(dir)?,
        pit,
        lower.volume.clone(),
    )))
}

/// How long a lower layer that did not open waits before the next try.
const DEFERRED_RETRY: Duration = Duration::from_secs(5);

/// The lower layer of a volume whose replica store is in an object store
/// that did not answer when the daemon started: the site starts anyway
/// and serves the volume; what its top layer holds reads and writes as
/// usual, what comes from the lower fails with an error saying the store
/// is unavailable. The store is opened again on a read, at most every
/// [`DEFERRED_RETRY`] — the background flattener reads every second, so
/// that is the background retry — and once it opens, the volume is whole
/// again without a restart.
struct DeferredLower {
    stores: Arc<Mutex<Stores>>,
    lower: LowerRef,
    volume: String,
    state: Mutex<Deferred>,
}

struct Deferred {
    opened: Option<Arc<dyn Lower>>,
    last_error: String,
    next_try: Instant,
}

impl DeferredLower {
    fn get(&self) -> std::io::Result<Arc<dyn Lower>> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = &st.opened {
            return Ok(l.clone());
        }
        if Instant::now() >= st.next_try {
            let opened = lower_of(
                &mut self.stores.lock().unwrap_or_else(|e| e.into_inner()),
                &self.lower,
            );
            match opened {
                Ok(l) => {
                    tracing::info!(volume = %self.volume, store = %self.lower.store_dir, "the replica store under the volume opened again; its lower layer reads");
                    st.opened = Some(l.clone());
                    return Ok(l);
                }
                Err(e) => {
                    st.last_error = e.to_string();
                    st.next_try = Instant::now() + DEFERRED_RETRY;
                }
            }
        }
        Err(std::io::Error::other(format!(
            "volume {}'s lower layer (PIT {} of the replica store {}) is unavailable: {}; retried in the background every {} s",
            self.volume,
            self.lower.pit,
            self.lower.store_dir,
            st.last_error,
            DEFERRED_RETRY.as_secs()
        )))
    }
}

impl Lower for DeferredLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.get()?.read_lower(buf, offset)
    }

    fn next_data(&self, offset: u64) -> std::io::Result<Option<u64>> {
        self.get()?.next_data(offset)
    }

    fn copy_on_read(&self) -> bool {
        self.get().is_ok_and(|lower| lower.copy_on_read())
    }

    fn prefetch(&self, offset: u64, len: u64) {
        // Unavailable: the step's own read reports it.
        if let Ok(lower) = self.get() {
            lower.prefetch(offset, len);
        }
    }
}

/// Opens volume `row` at start-up: a layered one over its PIT, converted
/// to a plain file first if it was flattened. A lower layer in an object
/// store that does not open now is deferred ([`DeferredLower`]), said in
/// an event: the site starts without its bucket.
pub(crate) fn open_volume(
    layout: &Layout,
    catalog: &Catalog,
    stores: &Arc<Mutex<Stores>>,
    row: VolumeRow,
) -> Result<(Volume, OpenReport), EngineError> {
    let Some(lower) = row.lower.clone() else {
        return Volume::open(layout, row, None);
    };
    let opened = lower_of(
        &mut stores.lock().unwrap_or_else(|e| e.into_inner()),
        &lower,
    );
    let lower_layer: Arc<dyn Lower> = match opened {
        Ok(l) => l,
        Err(e)
            if Path::new(&lower.store_dir)
                .join(crate::objects::DESCRIPTOR_FILE)
                .exists() =>
        {
            let msg = format!(
                "the replica store {} under volume {} did not open ({e}); the volume is served, and reads of blocks it has not copied yet fail until the store opens (retried in the background)",
                lower.store_dir, row.name
            );
            tracing::warn!(volume = %row.name, "{msg}");
            catalog.add_event("volume.lower-unavailable", Some(&row.name), &msg)?;
            Arc::new(DeferredLower {
                stores: stores.clone(),
                lower: lower.clone(),
                volume: row.name.clone(),
                state: Mutex::new(Deferred {
                    opened: None,
                    last_error: e.to_string(),
                    next_try: Instant::now() + DEFERRED_RETRY,
                }),
            })
        }
        Err(e) => return Err(e),
    };
    let opened = Volume::open(layout, row.clone(), Some(lower_layer))?;
    let flat = opened.0.file().layered().is_some_and(Layered::is_flat);
    if !flat {
        return Ok(opened);
    }
    // Every block is in the top: it is the whole image. Make it the data
    // file (rename is atomic; the catalog forgets the lower only after).
    let (volume, _) = opened;
    volume
        .file()
        .sync()
        .map_err(|e| EngineError::Invalid(format!("syncing flattened volume {}: {e}", row.name)))?;
    volume.close()?;
    let dir = layout.volumes_dir();
    let stem = Layout::volume_stem(row.id);
    let top = dir.join(format!("{stem}.top"));
    let data = layout.volume_data(row.id);
    std::fs::rename(&top, &data).map_err(|e| EngineError::io("rename", &top, e))?;
    offsite_volume_file::sync_dir(&dir).map_err(|e| EngineError::io("sync", &dir, e))?;
    catalog.set_volume_layering(&row.name, "primary", None)?;
    Layered::remove(&dir, &stem).map_err(|e| EngineError::io("remove layer map in", &dir, e))?;
    catalog.add_event(
        "volume.flattened",
        Some(&row.name),
        &match lower.checkpoint {
            Some(c) => format!(
                "volume {} no longer reads checkpoint {c} (over PIT {}) of {}: it is a plain volume",
                row.name, lower.pit, lower.store_dir
            ),
            None => format!(
                "volume {} no longer reads PIT {} of {}: it is a plain volume",
                row.name, lower.pit, lower.store_dir
            ),
        },
    )?;
    let mut row = row;
    row.lower = None;
    row.role = "primary".into();
    Volume::open(layout, row, None)
}

impl Site {
    /// The replica store in `dir`, opened once per site.
    pub fn replica_store(&self, dir: &Path) -> Result<Arc<ReplicaStore>, EngineError> {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .open(dir)
    }

    /// The image of checkpoint `id` of the replica store in `dir`, shared
    /// with the promoted volumes and test clones that read it.
    pub fn checkpoint_image(
        &self,
        dir: &Path,
        id: u64,
    ) -> Result<Arc<CheckpointImage>, EngineError> {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .image(dir, id)
    }

    /// Closes the store in `dir` (teardown deletes it); promoted volumes
    /// reading it keep their own reference.
    pub fn forget_replica_store(&self, dir: &Path) {
        self.stores
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .forget(dir);
    }

    /// Makes volume `name` of this site from PIT `lower.pit` of volume
    /// `lower.volume` of the replica store at `lower.store_dir`: writable
    /// at once, no data copied, changes tracked from now on.
    pub fn promote_volume(
        &self,
        name: &str,
        size_bytes: u64,
        block_size: u32,
        lower: &LowerRef,
    ) -> Result<Arc<Volume>, EngineError> {
        names::validate("volume", name)?;
        let lower_layer = lower_of(
            &mut self.stores.lock().unwrap_or_else(|e| e.into_inner()),
            lower,
        )?;
        let row = self.catalog().insert_volume(&NewVolume {
            name,
            size_bytes,
            block_size,
            role: "promoted",
            state: "ready",
            import_source: None,
            lower: Some(lower),
        })?;
        let volume = match Volume::create_layered(&self.layout, row.clone(), lower_layer) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                if let Err(de) = self.catalog().delete_volume(&row.name) {
                    tracing::warn!(volume = %row.name, error = %de, "removing the catalog row of a failed promotion; `offsite volume delete` removes it");
                }
                return Err(e);
            }
        };
        self.insert_live(volume.clone());
        self.event(
            "volume.promoted",
            Some(name),
            &match lower.checkpoint {
                Some(c) => format!(
                    "volume {name} promoted from checkpoint {c} (over PIT {}) of the replica in {}",
                    lower.pit, lower.store_dir
                ),
                None => format!(
                    "volume {name} promoted from PIT {} of the replica in {}",
                    lower.pit, lower.store_dir
                ),
            },
        );
        Ok(volume)
    }

    /// Starts the background flattener of layered volumes (one thread for
    /// the site; it idles when nothing is layered).
    pub fn start_flattener(self: &Arc<Self>) {
        let site = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("flatten".into())
            .spawn(move || {
                while let Some(site) = site.upgrade() {
                    let (worked, readers) = site.flatten_once();
                    drop(site);
                    std::thread::sleep(match (worked, readers) {
                        // A reader waits on a lower: one step (of one
                        // volume) per 100 ms, 10 MiB/s, leaves the bucket to
                        // its cold reads and still gets the volume off it.
                        (true, true) => Duration::from_millis(100),
                        (true, false) => Duration::from_millis(1),
                        (false, _) => Duration::from_secs(1),
                    });
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the flattener; promoted volumes stay layered");
        }
    }

    /// One step of flattening over every layered volume — or over the
    /// first one only while a reader goes to a lower (see
    /// [`Layered::lower_read_within`]); whether it copied, and whether a
    /// reader went to a lower lately.
    fn flatten_once(&self) -> (bool, bool) {
        let layers: Vec<Arc<Volume>> = self
            .live_volumes()
            .into_iter()
            .filter(|v| v.file().layered().is_some_and(|l| !l.is_flat()))
            .collect();
        let readers = layers.iter().any(|v| {
            v.file()
                .layered()
                .is_some_and(|l| l.lower_read_within(offsite_volume_file::READER_QUIET))
        });
        let stepping: Vec<&Arc<Volume>> = layers
            .iter()
            .take(if readers { 1 } else { usize::MAX })
            .collect();
        // The volumes step at the same time, one thread each: a step
        // mostly waits for its bytes from a bucket (the flattener used
        // 39 % of a CPU while hydrating four volumes one after another),
        // and the waits of different volumes overlap.
        let worked = match stepping.as_slice() {
            [] => false,
            [one] => self.flatten_volume(one),
            many => std::thread::scope(|scope| {
                let steps: Vec<_> = many
                    .iter()
                    .map(|v| scope.spawn(|| self.flatten_volume(v)))
                    .collect();
                // A step that panicked copied nothing; the next round
                // tries it again.
                steps
                    .into_iter()
                    .map(|s| s.join().unwrap_or(false))
                    .fold(false, |any, w| any | w)
            }),
        };
        (worked, readers)
    }

    /// One flattening step of `volume`; whether it copied.
    fn flatten_volume(&self, volume: &Volume) -> bool {
        let Some(layer) = volume.file().layered() else {
            return false;
        };
        match layer.flatten_step(FLATTEN_STEP_BLOCKS) {
            Ok(0) => false,
            Ok(_) => {
                if layer.is_flat() {
                    match layer.flush() {
                        Ok(()) => self.event(
                            "volume.flat",
                            Some(volume.name()),
                            "every block copied from the PIT; the volume becomes a plain file at the next start",
                        ),
                        Err(e) => {
                            tracing::error!(volume = %volume.name(), error = %e, "flushing a flattened volume")
                        }
                    }
                }
                true
            }
            Err(e) => {
                tracing::warn!(volume = %volume.name(), error = %e, "flattening step failed; retrying later");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{InitOptions, init_site};
    use offsite_nbd::BlockDevice;
    use offsite_replica_store::{
        Consistency, History, LogRecord, VolumeSpec, decode_records, encode_record,
    };

    const BS: usize = 4096;

    fn append(log: &mut offsite_replica_store::WriteLog, seq: u64, block: u64, byte: u8) {
        let data = vec![byte; BS];
        let mut raw = Vec::new();
        encode_record(
            &LogRecord {
                seq,
                volume: 0,
                first: block,
                count: 1,
                data: Some(&data),
            },
            &mut raw,
        );
        log.append(&raw, &decode_records(&raw).unwrap()).unwrap();
    }

    fn blocks(v: &Volume) -> Vec<u8> {
        let mut buf = vec![0u8; BS];
        (0..8)
            .map(|b| {
                v.read_at(&mut buf, b * BS as u64).unwrap();
                assert!(buf.iter().all(|&x| x == buf[0]), "block {b} is torn");
                buf[0]
            })
            .collect()
    }

    /// A volume promoted from a journal checkpoint reads the checkpoint's
    /// image (not the writes after it), reads it again after a restart
    /// (the catalog's lower layer names the checkpoint), flattens over it,
    /// and becomes a plain volume at the next start.
    #[test]
    fn a_volume_promoted_from_a_checkpoint_survives_restarts_and_flattens() {
        let tmp = tempfile::tempdir().unwrap();
        let (site_dir, store_dir) = (tmp.path().join("site"), tmp.path().join("store"));
        init_site(
            &site_dir,
            &InitOptions {
                name: "b".into(),
                listen: "127.0.0.1:0".into(),
                api: "127.0.0.1:0".into(),
                nbd: "127.0.0.1:0".into(),
                api_tls: Default::default(),
            },
        )
        .unwrap();
        let spec = VolumeSpec {
            name: "v".into(),
            size_bytes: 8 * BS as u64,
            block_size: BS as u32,
        };
        {
            let store = ReplicaStore::create(&store_dir, std::slice::from_ref(&spec)).unwrap();
            store.write_base("v", 0, &[1; BS]).unwrap();
            store.sync_base().unwrap();
            let mut log = store.open_log().unwrap();
            log.set_history(History::Keep);
            append(&mut log, 1, 1, 0x11);
            append(&mut log, 2, 0, 0x12);
            log.checkpoint(1_000, Consistency::Crash, None).unwrap();
            append(&mut log, 3, 1, 0x13);
            append(&mut log, 4, 5, 0x14);
            log.finish("2026-12-07T08:00:00Z".into()).unwrap();
        }
        let at_checkpoint = vec![0x12, 0x11, 0, 0, 0, 0, 0, 0];
        let lower = LowerRef {
            store_dir: store_dir.display().to_string(),
            volume: "v".into(),
            pit: 0,
            checkpoint: Some(1),
        };
        {
            let site = Site::open(&site_dir).unwrap();
            let v = site
                .promote_volume("v", spec.size_bytes, BS as u32, &lower)
                .unwrap();
            assert_eq!(blocks(&v), at_checkpoint);
            v.write_at(&[0x99; BS], 7 * BS as u64, false).unwrap();
            v.file().sync().unwrap();
        }
        let mut want = at_checkpoint.clone();
        want[7] = 0x99;
        {
            let site = Site::open(&site_dir).unwrap();
            let v = site.volume("v").unwrap();
            assert_eq!(v.row().lower.as_ref(), Some(&lower));
            assert_eq!(blocks(&v), want, "the same image after a restart");
            let layer = v.file().layered().unwrap();
            while layer.flatten_step(FLATTEN_STEP_BLOCKS).unwrap() > 0 {}
            assert!(layer.is_flat());
            layer.flush().unwrap();
            assert_eq!(blocks(&v), want);
        }
        let site = Site::open(&site_dir).unwrap();
        let v = site.volume("v").unwrap();
        assert!(v.file().layered().is_none(), "a plain volume once flat");
        assert_eq!(v.row().lower, None);
        assert_eq!(blocks(&v), want);
    }

    /// A promoted volume whose store is in an object store that does not
    /// open at start: the site opens anyway, the volume's own blocks read,
    /// its lower's fail naming the store, and once the objects are back a
    /// later read opens the store and returns the PIT's data.
    #[test]
    fn a_promoted_volume_over_an_unopenable_object_store_is_served_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let (site_dir, work) = (tmp.path().join("site"), tmp.path().join("store"));
        init_site(
            &site_dir,
            &InitOptions {
                name: "b".into(),
                listen: "127.0.0.1:0".into(),
                api: "127.0.0.1:0".into(),
                nbd: "127.0.0.1:0".into(),
                api_tls: Default::default(),
            },
        )
        .unwrap();
        let spec = VolumeSpec {
            name: "v".into(),
            size_bytes: 8 * BS as u64,
            block_size: BS as u32,
        };
        let key = offsite_objects::GroupKey::generate();
        crate::objects::save_group_key(&Layout::new(&site_dir), "g1", &key).unwrap();
        let objects = work.join(crate::objects::DIR_OBJECTS);
        {
            let store = crate::objects::create_store(
                crate::objects::NewObjectsStore {
                    location: offsite_objects::StorageLocation::Directory(objects.clone()),
                    work_dir: &work,
                    group: "g1",
                    volumes: std::slice::from_ref(&spec),
                    after: 0,
                    key: Some(&key),
                },
                &Default::default(),
                &site_dir,
                None,
            )
            .unwrap();
            let mut w = store.begin_pit().unwrap();
            w.write_block("v", 0, &[0x21; BS]).unwrap();
            w.commit(None, "2026-12-07T08:00:00Z".into()).unwrap();
        }
        let lower = LowerRef {
            store_dir: work.display().to_string(),
            volume: "v".into(),
            pit: 1,
            checkpoint: None,
        };
        {
            let site = Site::open(&site_dir).unwrap();
            let v = site
                .promote_volume("v", spec.size_bytes, BS as u32, &lower)
                .unwrap();
            v.write_at(&[0x99; BS], 7 * BS as u64, false).unwrap();
            v.file().sync().unwrap();
        }
        // The objects are gone (an unreachable bucket, for the store).
        let aside = tmp.path().join("aside");
        std::fs::rename(&objects, &aside).unwrap();
        let site = Site::open(&site_dir).unwrap();
        let v = site.volume("v").unwrap();
        let mut buf = vec![0u8; BS];
        v.read_at(&mut buf, 7 * BS as u64).unwrap();
        assert_eq!(buf, vec![0x99; BS], "the volume's own block");
        let e = v.read_at(&mut buf, 0).unwrap_err().to_string();
        assert!(
            e.contains("unavailable") && e.contains(&lower.store_dir),
            "{e}"
        );
        // Back: a read after the retry interval opens the store.
        drop(std::fs::remove_dir_all(&objects));
        std::fs::rename(&aside, &objects).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while v.read_at(&mut buf, 0).is_err() {
            assert!(Instant::now() < deadline, "the store never opened again");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(blocks(&v), vec![0x21, 0, 0, 0, 0, 0, 0, 0x99]);
    }
}
