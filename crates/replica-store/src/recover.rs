//! Creating a store, and opening one with crash recovery (see the crate
//! docs, "Crash safety").

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use crate::backing::{
    BASE_CHUNK, Backing, CACHE_BYTES, Cache, ChunkBase, MERGING_PREFIX, META_KEY, Objects,
    PITS_PREFIX, pit_key,
};
use crate::chain::{
    BASE_DIR, Inner, LOCK_FILE, MANIFEST_FILE, MERGING_DIR, META_FILE, Ops, PITS_DIR, Pit,
    STAGING_DIR, State, Vol, parse_pit_dir_name,
};
use offsite_objects::ObjectError;

use crate::format::{MAX_SMALL_FILE, Meta, decode_manifest, decode_meta, encode_meta};
use crate::merge::apply_to_base;
use crate::segment::{Expect, Segment};
use crate::{DamagedPit, PitId, ReplicaError, ReplicaStore, VolumeSpec, fsx, validate_volumes};

/// Takes the store's flock.
fn take_lock(dir: &Path) -> Result<File, ReplicaError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| ReplicaError::io("open", &path, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(TryLockError::WouldBlock) => Err(ReplicaError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(TryLockError::Error(e)) => Err(ReplicaError::io("lock", &path, e)),
    }
}

/// Durably writes `store.meta`.
pub(crate) fn write_meta_at(
    dir: &Path,
    uuid: [u8; 16],
    volumes: &[VolumeSpec],
    base_through: u64,
) -> Result<(), ReplicaError> {
    let meta = Meta {
        uuid,
        base_through,
        volumes: volumes.to_vec(),
    };
    Ok(fsx::replace_file(
        &dir.join(META_FILE),
        &encode_meta(&meta),
    )?)
}

/// Ordering: 1. subdirectories; 2. base images (sized, fsynced), fsync
/// `base/`; 3. `store.meta` durably (it marks the store as existing).
pub(crate) fn create(
    dir: &Path,
    volumes: &[VolumeSpec],
    uuid: [u8; 16],
    base_through: u64,
) -> Result<ReplicaStore, ReplicaError> {
    validate_volumes(volumes).map_err(|e| ReplicaError::InvalidVolumes {
        reason: e.to_string(),
    })?;
    match fs::read_dir(dir) {
        Ok(mut it) => {
            if it.next().is_some() {
                return Err(ReplicaError::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // Private: the store holds VM disk blocks.
            std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
                .create(dir)
                .map_err(|e| ReplicaError::io("create directory", dir, e))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                fsx::sync_dir(parent)?;
            }
        }
        Err(e) => return Err(ReplicaError::io("list directory", dir, e)),
    }
    let lock = take_lock(dir)?;
    for sub in [BASE_DIR, PITS_DIR, STAGING_DIR, MERGING_DIR] {
        fsx::create_dir(&dir.join(sub))?; // 1
    }
    for v in volumes {
        let path = dir.join(BASE_DIR).join(format!("{}.img", v.name));
        let f = fsx::create_new(&path)?; // 2
        fsx::set_len(&f, &path, v.size_bytes)?;
        fsx::sync_data(&f, &path)?;
    }
    fsx::sync_dir(&dir.join(BASE_DIR))?;
    write_meta_at(dir, uuid, volumes, base_through)?; // 3
    tracing::info!(store = %dir.display(), volumes = volumes.len(), "created replica store");
    open_locked(dir, lock)
}

pub(crate) fn open(dir: &Path) -> Result<ReplicaStore, ReplicaError> {
    match fs::metadata(dir.join(META_FILE)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReplicaError::NotAStore {
                path: dir.to_path_buf(),
            });
        }
        Err(e) => return Err(ReplicaError::io("stat", dir.join(META_FILE), e)),
    }
    let lock = take_lock(dir)?;
    open_locked(dir, lock)
}

/// Whether an error while loading a PIT means "this PIT is damaged" rather
/// than "the storage is failing".
fn is_damage(e: &ReplicaError) -> bool {
    match e {
        ReplicaError::Corrupt { .. } => true,
        ReplicaError::Io { source, .. } => matches!(
            source.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
        ),
        // An object missing, shorter than listed or failing its
        // authentication; an unreachable store is not damage.
        ReplicaError::Object { source, .. } => matches!(
            **source,
            ObjectError::NotFound { .. }
                | ObjectError::ShortObject { .. }
                | ObjectError::Tampered { .. }
        ),
        _ => false,
    }
}

/// Short description of a damage error for [`DamagedPit::why`].
fn damage_why(e: &ReplicaError) -> String {
    match e {
        ReplicaError::Corrupt { path, why } => format!("{}: {why}", path.display()),
        ReplicaError::Io { path, source, .. } => format!("{}: {source}", path.display()),
        ReplicaError::Object { key, source, .. } => format!("{key}: {source}"),
        other => other.to_string(),
    }
}

/// Entries of `dir` named `ID-FIRST`, ascending; others are logged and left.
fn list_pit_dirs(dir: &Path) -> Result<Vec<(u64, u64, PathBuf)>, ReplicaError> {
    let mut out = Vec::new();
    let it = fs::read_dir(dir).map_err(|e| ReplicaError::io("list directory", dir, e))?;
    for entry in it {
        let entry = entry.map_err(|e| ReplicaError::io("list directory", dir, e))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_pit_dir_name) {
            Some((id, first)) => out.push((id, first, entry.path())),
            None => {
                tracing::warn!(path = %entry.path().display(), "ignoring unexpected entry in the replica store")
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads and checks a PIT directory: manifest, then every segment's
/// header and index.
fn load_pit(
    dir: &Path,
    id: u64,
    first: u64,
    uuid: &[u8; 16],
    vols: &[Vol],
) -> Result<Pit, ReplicaError> {
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = read_small(&mpath, MAX_SMALL_FILE)?;
    let m = check_manifest(&bytes, &mpath, id, first, uuid, vols)?;
    let mut segs = Vec::with_capacity(vols.len());
    for (v, (vol, summary)) in vols.iter().zip(&m.volumes).enumerate() {
        let path = dir.join(format!("{}.seg", vol.spec.name));
        segs.push(Segment::load(&path, &expect(uuid, id, v, vol, summary))?);
    }
    Ok(Pit {
        id,
        first,
        name: m.name,
        created_at: m.created_at,
        dir: dir.to_path_buf(),
        summaries: m.volumes,
        segs: segs.into(),
    })
}

/// What segment `v` of PIT `id` must be.
fn expect<'a>(
    uuid: &'a [u8; 16],
    id: u64,
    v: usize,
    vol: &Vol,
    summary: &'a crate::format::VolSummary,
) -> Expect<'a> {
    Expect {
        uuid,
        pit: id,
        volume: v as u32,
        block_size: vol.spec.block_size,
        nblocks: vol.nblocks,
        summary,
    }
}

/// Decodes and checks the manifest of PIT `first..=id` (`mpath`: for
/// messages).
fn check_manifest(
    bytes: &[u8],
    mpath: &Path,
    id: u64,
    first: u64,
    uuid: &[u8; 16],
    vols: &[Vol],
) -> Result<crate::format::Manifest, ReplicaError> {
    let m = decode_manifest(bytes).map_err(|why| ReplicaError::corrupt(mpath, why))?;
    if m.uuid != *uuid {
        return Err(ReplicaError::corrupt(
            mpath,
            "manifest belongs to another replica store",
        ));
    }
    if (m.id, m.first) != (id, first) {
        return Err(ReplicaError::corrupt(
            mpath,
            format!(
                "manifest is for PITs {}..={}, its directory name says {first}..={id}",
                m.first, m.id
            ),
        ));
    }
    if m.volumes.len() != vols.len() {
        return Err(ReplicaError::corrupt(
            mpath,
            format!(
                "manifest lists {} volumes, the group has {}",
                m.volumes.len(),
                vols.len()
            ),
        ));
    }
    Ok(m)
}

fn open_base(dir: &Path, spec: &VolumeSpec) -> Result<Vol, ReplicaError> {
    let path = dir.join(BASE_DIR).join(format!("{}.img", spec.name));
    let base = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ReplicaError::corrupt(&path, "the base image is missing"));
        }
        Err(e) => return Err(ReplicaError::io("open", &path, e)),
    };
    let len = base
        .metadata()
        .map_err(|e| ReplicaError::io("stat", &path, e))?
        .len();
    if len != spec.size_bytes {
        return Err(ReplicaError::corrupt(
            &path,
            format!(
                "the base image is {len} bytes but volume {:?} has {} bytes; a seed image must have exactly the volume's size",
                spec.name, spec.size_bytes
            ),
        ));
    }
    Ok(Vol {
        spec: spec.clone(),
        nblocks: spec.size_bytes / u64::from(spec.block_size),
        zero_hash: *blake3::hash(&vec![0u8; spec.block_size as usize]).as_bytes(),
        base: crate::chain::BaseImg::File(RwLock::new(Arc::new(crate::chain::BaseFiles {
            file: base,
            direct: open_direct(&path),
        }))),
        base_path: path,
    })
}

/// A second descriptor of a base image with `O_DIRECT`, for the bulk
/// writes of initial replication and seeding: they go to disk without
/// filling the page cache (which costs more than the copy on machines whose
/// memory is ballooned, and evicts the primary's working set on shared
/// hosts). `None` where the file system refuses `O_DIRECT` (tmpfs).
pub(crate) fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

/// Recovery, in order:
/// 1. remove a stale `store.meta.partial`, read `store.meta`, open the bases;
/// 2. delete everything in `staging/`, fsync it;
/// 3. finish merges found in `merging/` (apply unless `base_through`
///    covers them, rewrite `store.meta`, delete), fsync it;
/// 4. load every `pits/` directory; delete superseded ones — inside another
///    valid directory's range, or not newer than the base (fsync `pits/`
///    first, so the superseding rename is durable, and after);
/// 5. build the chain from `base_through + 1`; the rest is damaged.
fn open_locked(dir: &Path, lock: File) -> Result<ReplicaStore, ReplicaError> {
    let meta_path = dir.join(META_FILE);
    let partial = fsx::partial_path(&meta_path);
    if partial.exists() {
        fsx::remove_file(&partial)?; // 1
    }
    let meta = decode_meta(&read_small(&meta_path, MAX_SMALL_FILE)?)
        .map_err(|why| ReplicaError::corrupt(&meta_path, why))?;
    let vols = meta
        .volumes
        .iter()
        .map(|spec| open_base(dir, spec))
        .collect::<Result<Vec<_>, _>>()?;
    clear_staging(dir)?; // 2
    let (base_through, merged_max) = finish_merges(dir, &meta, &vols)?; // 3
    let (valid, invalid, pits_max) = load_pit_dirs(dir, &meta, &vols, base_through)?; // 4
    let max_id = base_through.max(merged_max).max(pits_max);
    let (chain, damaged) = build_chain(valid, invalid, base_through); // 5
    let loaded = Loaded {
        meta,
        vols,
        base_through,
        max_id,
        chain,
        damaged,
    };
    Ok(assemble(dir, Backing::Dir, loaded, lock))
}

/// What open found, ready to serve.
struct Loaded {
    meta: Meta,
    vols: Vec<Vol>,
    base_through: u64,
    max_id: u64,
    chain: Vec<Arc<Pit>>,
    damaged: Vec<DamagedPit>,
}

/// The store handle over what open found.
fn assemble(dir: &Path, backing: Backing, loaded: Loaded, lock: File) -> ReplicaStore {
    let Loaded {
        meta,
        vols,
        base_through,
        max_id,
        chain,
        damaged,
    } = loaded;
    let by_name: HashMap<String, usize> = vols
        .iter()
        .enumerate()
        .map(|(i, v)| (v.spec.name.clone(), i))
        .collect();
    let inner = Inner {
        dir: dir.to_path_buf(),
        backing,
        uuid: meta.uuid,
        specs: meta.volumes.clone(),
        vols,
        by_name,
        state: RwLock::new(State {
            chain,
            damaged,
            base_through,
        }),
        ops: Mutex::new(Ops {
            base_through,
            next_id: max_id + 1,
            base_dirty: false,
        }),
        writer: AtomicBool::new(false),
        poison: Mutex::new(None),
        journal: Mutex::new(None),
        pins: Mutex::new(std::collections::BTreeMap::new()),
        uploads: Mutex::default(),
        journal_local: AtomicBool::new(false),
        _lock: lock,
    };
    ReplicaStore {
        inner: Arc::new(inner),
    }
}

/// A PIT directory that cannot be read: its id, the first PIT it holds
/// the changes since, its path and why.
type UnreadablePit = (u64, u64, PathBuf, String);

/// Recovery step 2: whatever is in `staging/` is a PIT or merge that never
/// finished; it is deleted (and the deletion made durable).
fn clear_staging(dir: &Path) -> Result<(), ReplicaError> {
    let staging = dir.join(STAGING_DIR);
    let mut removed = false;
    for entry in
        fs::read_dir(&staging).map_err(|e| ReplicaError::io("list directory", &staging, e))?
    {
        let entry = entry.map_err(|e| ReplicaError::io("list directory", &staging, e))?;
        tracing::info!(path = %entry.path().display(), "deleting an unfinished PIT or merge");
        fsx::remove_tree(&entry.path())?;
        removed = true;
    }
    if removed {
        fsx::sync_dir(&staging)?;
    }
    Ok(())
}

/// Recovery step 3: finishes the merges found in `merging/` — applied to
/// the base unless `base_through` already covers them, `store.meta`
/// rewritten, the directory deleted. Returns the base's new last PIT and
/// the highest PIT id seen there.
fn finish_merges(dir: &Path, meta: &Meta, vols: &[Vol]) -> Result<(u64, u64), ReplicaError> {
    let mut base_through = meta.base_through;
    let mut max_id = base_through;
    let merging_dir = dir.join(MERGING_DIR);
    let merging = list_pit_dirs(&merging_dir)?;
    for (id, first, path) in &merging {
        max_id = max_id.max(*id);
        if *id > base_through {
            let explain = |e: ReplicaError| match e {
                ReplicaError::Corrupt { path, why } => ReplicaError::Corrupt {
                    path,
                    why: format!(
                        "the interrupted merge of PIT {id} into the base cannot be finished ({why}); the base images are partly updated, so a full resynchronization of the group is needed"
                    ),
                },
                other => other,
            };
            if *first != base_through + 1 {
                return Err(explain(ReplicaError::corrupt(
                    path,
                    format!("it holds PITs {first}..={id} but the base ends at PIT {base_through}"),
                )));
            }
            let pit = load_pit(path, *id, *first, &meta.uuid, vols).map_err(explain)?;
            tracing::info!(pit = id, "finishing an interrupted merge into the base");
            apply_to_base(vols, &pit.segs).map_err(explain)?;
            write_meta_at(dir, meta.uuid, &meta.volumes, *id)?;
            base_through = *id;
        }
        fsx::remove_tree(path)?;
    }
    if !merging.is_empty() {
        fsx::sync_dir(&merging_dir)?;
    }
    Ok((base_through, max_id))
}

/// Recovery step 4: loads every `pits/` directory and deletes the
/// superseded ones — inside another valid directory's range, or not newer
/// than the base (`pits/` is fsynced first, so the superseding rename is
/// durable, and after). Returns the readable PITs, the unreadable ones
/// and the highest PIT id seen.
fn load_pit_dirs(
    dir: &Path,
    meta: &Meta,
    vols: &[Vol],
    base_through: u64,
) -> Result<(Vec<Pit>, Vec<UnreadablePit>, u64), ReplicaError> {
    let pits_dir = dir.join(PITS_DIR);
    let mut max_id = 0;
    let mut valid: Vec<Pit> = Vec::new();
    let mut invalid: Vec<UnreadablePit> = Vec::new();
    let mut doomed: Vec<PathBuf> = Vec::new();
    for (id, first, path) in list_pit_dirs(&pits_dir)? {
        max_id = max_id.max(id);
        if id <= base_through {
            // Already in the base (a rename into merging/ whose removal from
            // pits/ did not reach the disk): redundant.
            doomed.push(path);
            continue;
        }
        let partial = fsx::partial_path(&path.join(MANIFEST_FILE));
        if partial.exists() {
            fsx::remove_file(&partial)?;
        }
        match load_pit(&path, id, first, &meta.uuid, vols) {
            Ok(p) => valid.push(p),
            Err(e) if is_damage(&e) => invalid.push((id, first, path, damage_why(&e))),
            Err(e) => return Err(e),
        }
    }
    let (valid, invalid, superseded) = drop_superseded(valid, invalid);
    doomed.extend(superseded);
    if !doomed.is_empty() {
        fsx::sync_dir(&pits_dir)?;
        for path in &doomed {
            tracing::info!(path = %path.display(), "deleting a PIT directory superseded by a finished merge or the base");
            fsx::remove_tree(path)?;
        }
        fsx::sync_dir(&pits_dir)?;
    }
    Ok((valid, invalid, max_id))
}

/// Splits off the PITs whose range lies inside another valid PIT's range
/// (left over from a finished merge into the next PIT); returns the rest
/// and the locations of those.
fn drop_superseded(
    mut valid: Vec<Pit>,
    mut invalid: Vec<UnreadablePit>,
) -> (Vec<Pit>, Vec<UnreadablePit>, Vec<PathBuf>) {
    let mut doomed = Vec::new();
    let ranges: Vec<(u64, u64)> = valid.iter().map(|p| (p.first, p.id)).collect();
    let superseded = |first: u64, id: u64| {
        ranges
            .iter()
            .any(|&(f, i)| f <= first && id <= i && (f, i) != (first, id))
    };
    valid.retain(|p| {
        let s = superseded(p.first, p.id);
        if s {
            doomed.push(p.dir.clone());
        }
        !s
    });
    invalid.retain(|(id, first, path, _)| {
        let s = superseded(*first, *id);
        if s {
            doomed.push(path.clone());
        }
        !s
    });
    (valid, invalid, doomed)
}

/// Recovery step 5: the chain of PITs from `base_through + 1`, each
/// holding the changes since the one before; the rest (unreadable, or
/// cut off from the chain) is reported damaged.
fn build_chain(
    mut valid: Vec<Pit>,
    invalid: Vec<UnreadablePit>,
    base_through: u64,
) -> (Vec<Arc<Pit>>, Vec<DamagedPit>) {
    valid.sort_by_key(|p| p.first);
    let mut chain: Vec<Arc<Pit>> = Vec::new();
    let mut expected = base_through + 1;
    while let Some(i) = valid.iter().position(|p| p.first == expected) {
        let p = valid.remove(i);
        expected = p.id + 1;
        chain.push(Arc::new(p));
    }
    let mut damaged: Vec<DamagedPit> = invalid
        .into_iter()
        .map(|(id, _, path, why)| DamagedPit {
            id: PitId(id),
            path,
            why,
        })
        .collect();
    for p in valid {
        damaged.push(DamagedPit {
            id: PitId(p.id),
            path: p.dir.clone(),
            why: format!(
                "it holds the changes since PIT {}, but the readable chain ends at PIT {}; the PITs in between are missing or damaged",
                p.first,
                expected - 1
            ),
        });
    }
    damaged.sort_by_key(|d| d.id);
    for d in &damaged {
        tracing::warn!(pit = %d.id, "damaged PIT: {}", d.why);
    }
    (chain, damaged)
}

/// Reads a small whole file, refusing anything longer than `cap` bytes.
pub(crate) fn read_small(path: &Path, cap: u64) -> Result<Vec<u8>, ReplicaError> {
    let f = std::fs::File::open(path).map_err(|e| ReplicaError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| ReplicaError::io("stat", path, e))?
        .len();
    if len > cap {
        return Err(ReplicaError::corrupt(
            path,
            format!("file is {len} bytes, more than the {cap} bytes such a file can have"),
        ));
    }
    let mut buf = vec![0u8; len as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0)
        .map_err(|e| ReplicaError::io("read", path, e))?;
    Ok(buf)
}

// ---------------------------------------------------------------------
// Stores in an object store (see the crate docs, "Stores in an object
// store"): the same recovery, with a manifest object as the commit point.

/// Creates the local working directory if missing (private: it stages VM
/// disk blocks) and its `staging/`.
fn prepare_work_dir(work: &Path) -> Result<(), ReplicaError> {
    if !work.is_dir() {
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(work)
            .map_err(|e| ReplicaError::io("create directory", work, e))?;
        if let Some(parent) = work.parent().filter(|p| !p.as_os_str().is_empty()) {
            fsx::sync_dir(parent)?;
        }
    }
    let staging = work.join(STAGING_DIR);
    if !staging.is_dir() {
        fsx::create_dir(&staging)?;
    }
    Ok(())
}

/// Ordering: 1. the local working directory and its lock; 2. refuse a
/// non-empty object store; 3. `store.meta` (it marks the store as
/// existing; the base has no chunks: all zeroes).
pub(crate) fn create_objects(
    store: Arc<dyn offsite_objects::ObjectStore>,
    work: &Path,
    volumes: &[VolumeSpec],
    uuid: [u8; 16],
    base_through: u64,
) -> Result<ReplicaStore, ReplicaError> {
    validate_volumes(volumes).map_err(|e| ReplicaError::InvalidVolumes {
        reason: e.to_string(),
    })?;
    if work.join(META_FILE).exists() {
        return Err(ReplicaError::NotEmpty {
            path: work.to_path_buf(),
        });
    }
    prepare_work_dir(work)?; // 1
    let lock = take_lock(work)?;
    let objects = Objects {
        store,
        cache: Arc::new(Cache::new(CACHE_BYTES)),
        fence: Arc::default(),
    };
    if !objects.list("")?.is_empty() {
        return Err(ReplicaError::ObjectsNotEmpty {
            store: objects.store.describe(),
        }); // 2
    }
    let meta = Meta {
        uuid,
        base_through,
        volumes: volumes.to_vec(),
    };
    objects.put(META_KEY, &encode_meta(&meta))?; // 3
    tracing::info!(store = %objects.store.describe(), volumes = volumes.len(), "created replica store");
    open_objects_locked(work, objects, lock)
}

pub(crate) fn open_objects(
    store: Arc<dyn offsite_objects::ObjectStore>,
    work: &Path,
) -> Result<ReplicaStore, ReplicaError> {
    prepare_work_dir(work)?;
    let lock = take_lock(work)?;
    let objects = Objects {
        store,
        cache: Arc::new(Cache::new(CACHE_BYTES)),
        fence: Arc::default(),
    };
    open_objects_locked(work, objects, lock)
}

/// The objects of each `pits/ID-FIRST/`: file name → size.
type PitListing = std::collections::BTreeMap<String, HashMap<String, u64>>;

/// Recovery, in order (as for directories):
/// 1. read `store.meta`, list the base chunks;
/// 2. delete the local `staging/`;
/// 3. finish merges into the base found in `merging/` (apply unless
///    `base_through` covers them, rewrite `store.meta`, delete the PIT's
///    objects and the marker);
/// 4. load every PIT with a manifest; delete PIT objects without one
///    (an upload that never committed), superseded ones and those not
///    newer than the base (manifest first);
/// 5. build the chain from `base_through + 1`; the rest is damaged.
fn open_objects_locked(
    work: &Path,
    objects: Objects,
    lock: File,
) -> Result<ReplicaStore, ReplicaError> {
    let meta_bytes = match objects.store.get(META_KEY) {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            return Err(ReplicaError::NotAStoreInObjects {
                store: objects.store.describe(),
            });
        }
        Err(e) => return Err(crate::backing::obj_err("get", META_KEY, e)),
    };
    let meta = decode_meta(&meta_bytes).map_err(|why| ReplicaError::corrupt(META_KEY, why))?;
    let mut vols = Vec::with_capacity(meta.volumes.len());
    for spec in &meta.volumes {
        let bs = u64::from(spec.block_size);
        debug_assert!(BASE_CHUNK.is_multiple_of(bs));
        let base = ChunkBase::open(objects.clone(), &spec.name, spec.size_bytes, bs)?; // 1
        vols.push(Vol {
            spec: spec.clone(),
            nblocks: spec.size_bytes / bs,
            zero_hash: *blake3::hash(&vec![0u8; spec.block_size as usize]).as_bytes(),
            base_path: PathBuf::from(format!("base/{}", spec.name)),
            base: crate::chain::BaseImg::Chunks(base),
        });
    }
    clear_staging(work)?; // 2
    // The journal's history, when this working directory has none (a new
    // site, a replaced disk): before anything reads the journal.
    crate::journal_objects::restore(&objects, work, &meta.uuid, &meta.volumes)?;
    let mut listing: PitListing = PitListing::new();
    for o in objects.list(PITS_PREFIX)? {
        match o.key[PITS_PREFIX.len()..].split_once('/') {
            Some((name, file)) if !file.contains('/') => {
                listing
                    .entry(name.to_string())
                    .or_default()
                    .insert(file.to_string(), o.size);
            }
            _ => tracing::warn!(key = %o.key, "ignoring unexpected object in the replica store"),
        }
    }
    let (base_through, merged_max) = finish_merges_objects(&objects, &meta, &vols, &listing)?; // 3
    let (valid, invalid, pits_max) =
        load_pits_objects(&objects, &meta, &vols, base_through, &listing)?; // 4
    let max_id = base_through.max(merged_max).max(pits_max);
    let (chain, damaged) = build_chain(valid, invalid, base_through); // 5
    let loaded = Loaded {
        meta,
        vols,
        base_through,
        max_id,
        chain,
        damaged,
    };
    Ok(assemble(work, Backing::Objects(objects), loaded, lock))
}

/// Loads and checks PIT `name` from its objects (`files`: their sizes
/// from the listing): the manifest, then every segment's header and index
/// (one ranged read each, through the cache).
fn load_pit_objects(
    objects: &Objects,
    name: &str,
    files: &HashMap<String, u64>,
    (id, first): (u64, u64),
    uuid: &[u8; 16],
    vols: &[Vol],
) -> Result<Pit, ReplicaError> {
    let mkey = pit_key(name, MANIFEST_FILE);
    let mpath = PathBuf::from(&mkey);
    match files.get(MANIFEST_FILE) {
        None => return Err(ReplicaError::corrupt(&mpath, "the manifest is missing")),
        Some(&size) if size > MAX_SMALL_FILE => {
            return Err(ReplicaError::corrupt(
                &mpath,
                format!(
                    "manifest is {size} bytes, more than the {MAX_SMALL_FILE} bytes it can have"
                ),
            ));
        }
        Some(_) => {}
    }
    let bytes = objects.get(&mkey)?;
    let m = check_manifest(&bytes, &mpath, id, first, uuid, vols)?;
    let mut segs = Vec::with_capacity(vols.len());
    for (v, (vol, summary)) in vols.iter().zip(&m.volumes).enumerate() {
        let file = format!("{}.seg", vol.spec.name);
        let key = pit_key(name, &file);
        let path = PathBuf::from(&key);
        let Some(&size) = files.get(&file) else {
            return Err(ReplicaError::corrupt(&path, "the segment is missing"));
        };
        let src = crate::segment::SegSource::Object {
            objects: objects.clone(),
            key,
            size,
        };
        segs.push(Segment::load_from(
            src,
            &path,
            size,
            &expect(uuid, id, v, vol, summary),
        )?);
    }
    Ok(Pit {
        id,
        first,
        name: m.name,
        created_at: m.created_at,
        dir: PathBuf::from(PITS_DIR).join(name),
        summaries: m.volumes,
        segs: segs.into(),
    })
}

/// Recovery step 3 of an object store: a marker `merging/ID-FIRST` says
/// PIT `ID-FIRST` (still under `pits/`) is being merged into the base.
fn finish_merges_objects(
    objects: &Objects,
    meta: &Meta,
    vols: &[Vol],
    listing: &PitListing,
) -> Result<(u64, u64), ReplicaError> {
    let mut base_through = meta.base_through;
    let mut max_id = base_through;
    for marker in objects.list(MERGING_PREFIX)? {
        let name = &marker.key[MERGING_PREFIX.len()..];
        let Some((id, first)) = parse_pit_dir_name(name) else {
            tracing::warn!(key = %marker.key, "ignoring unexpected object in the replica store");
            continue;
        };
        max_id = max_id.max(id);
        if id > base_through {
            let explain = |e: ReplicaError| match e {
                ReplicaError::Corrupt { path, why } => ReplicaError::Corrupt {
                    path,
                    why: format!(
                        "the interrupted merge of PIT {id} into the base cannot be finished ({why}); the base is partly updated, so a full resynchronization of the group is needed"
                    ),
                },
                other => other,
            };
            if first != base_through + 1 {
                return Err(explain(ReplicaError::corrupt(
                    &marker.key,
                    format!("it holds PITs {first}..={id} but the base ends at PIT {base_through}"),
                )));
            }
            let empty = HashMap::new();
            let files = listing.get(name).unwrap_or(&empty);
            let pit = load_pit_objects(objects, name, files, (id, first), &meta.uuid, vols)
                .map_err(explain)?;
            tracing::info!(pit = id, "finishing an interrupted merge into the base");
            apply_to_base(vols, &pit.segs).map_err(explain)?;
            let m = Meta {
                uuid: meta.uuid,
                base_through: id,
                volumes: meta.volumes.clone(),
            };
            objects.put(META_KEY, &encode_meta(&m))?;
            base_through = id;
        }
        objects.delete_pit(name)?;
        objects.delete(&marker.key)?;
    }
    Ok((base_through, max_id))
}

/// Recovery step 4 of an object store.
fn load_pits_objects(
    objects: &Objects,
    meta: &Meta,
    vols: &[Vol],
    base_through: u64,
    listing: &PitListing,
) -> Result<(Vec<Pit>, Vec<UnreadablePit>, u64), ReplicaError> {
    let mut max_id = 0;
    let mut valid: Vec<Pit> = Vec::new();
    let mut invalid: Vec<UnreadablePit> = Vec::new();
    let mut doomed: Vec<String> = Vec::new();
    let mut candidates = Vec::new();
    for (name, files) in listing {
        let Some((id, first)) = parse_pit_dir_name(name) else {
            tracing::warn!(prefix = %name, "ignoring unexpected objects in the replica store");
            continue;
        };
        if !files.contains_key(MANIFEST_FILE) {
            // Segments of a commit or merge whose manifest was never
            // written: not a PIT, and its id was never used.
            tracing::info!(pit = %name, "deleting the objects of an unfinished PIT or merge");
            doomed.push(name.clone());
            continue;
        }
        max_id = max_id.max(id);
        if id <= base_through {
            doomed.push(name.clone());
            continue;
        }
        candidates.push((name, files, id, first));
    }
    // A manifest and two ranged reads per segment, each a round trip to
    // the store: several PITs at once, so opening many PITs takes seconds
    // rather than minutes.
    let loaded = parallel_map(&candidates, |(name, files, id, first)| {
        load_pit_objects(objects, name, files, (*id, *first), &meta.uuid, vols)
    });
    for ((name, _, id, first), r) in candidates.iter().zip(loaded) {
        match r {
            Ok(p) => valid.push(p),
            Err(e) if is_damage(&e) => {
                invalid.push((
                    *id,
                    *first,
                    PathBuf::from(PITS_DIR).join(name),
                    damage_why(&e),
                ));
            }
            Err(e) => return Err(e),
        }
    }
    let (valid, invalid, superseded) = drop_superseded(valid, invalid);
    doomed.extend(
        superseded
            .iter()
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from)),
    );
    for name in &doomed {
        tracing::info!(pit = %name, "deleting PIT objects superseded by a finished merge or the base");
        objects.delete_pit(name)?;
    }
    Ok((valid, invalid, max_id))
}

/// Threads loading PITs from an object store at open.
const OPEN_THREADS: usize = 8;

/// `items.iter().map(f)` on up to [`OPEN_THREADS`] threads, in order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..OPEN_THREADS.min(items.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *slots[i]
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .expect("every item was mapped")
        })
        .collect()
}
