//! Creating a store, and opening one with crash recovery (see the crate
//! docs, "Crash safety").

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};

use crate::chain::{
    BASE_DIR, Inner, LOCK_FILE, MANIFEST_FILE, MERGING_DIR, META_FILE, Ops, PITS_DIR, Pit,
    STAGING_DIR, State, Vol, parse_pit_dir_name,
};
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
        _ => false,
    }
}

/// Short description of a damage error for [`DamagedPit::why`].
fn damage_why(e: &ReplicaError) -> String {
    match e {
        ReplicaError::Corrupt { path, why } => format!("{}: {why}", path.display()),
        ReplicaError::Io { path, source, .. } => format!("{}: {source}", path.display()),
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
    let m = decode_manifest(&bytes).map_err(|why| ReplicaError::corrupt(&mpath, why))?;
    if m.uuid != *uuid {
        return Err(ReplicaError::corrupt(
            &mpath,
            "manifest belongs to another replica store",
        ));
    }
    if (m.id, m.first) != (id, first) {
        return Err(ReplicaError::corrupt(
            &mpath,
            format!(
                "manifest is for PITs {}..={}, its directory name says {first}..={id}",
                m.first, m.id
            ),
        ));
    }
    if m.volumes.len() != vols.len() {
        return Err(ReplicaError::corrupt(
            &mpath,
            format!(
                "manifest lists {} volumes, the group has {}",
                m.volumes.len(),
                vols.len()
            ),
        ));
    }
    let mut segs = Vec::with_capacity(vols.len());
    for (v, (vol, summary)) in vols.iter().zip(&m.volumes).enumerate() {
        let path = dir.join(format!("{}.seg", vol.spec.name));
        segs.push(Segment::load(
            &path,
            &Expect {
                uuid,
                pit: id,
                volume: v as u32,
                block_size: vol.spec.block_size,
                nblocks: vol.nblocks,
                summary,
            },
        )?);
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

    let by_name: HashMap<String, usize> = vols
        .iter()
        .enumerate()
        .map(|(i, v)| (v.spec.name.clone(), i))
        .collect();
    let inner = Inner {
        dir: dir.to_path_buf(),
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
        _lock: lock,
    };
    Ok(ReplicaStore {
        inner: Arc::new(inner),
    })
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
