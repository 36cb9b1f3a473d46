//! The replica side of a replication group: requests from the primary are
//! answered here, block batches land in the group's replica store (base
//! images during initial replication, a staged PIT during a cycle), and a
//! PIT is committed (durable across all volumes before it is visible) when
//! the primary asks. Retention runs right after each commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use offsite_catalog::{GroupRow, GroupVolumeRow};
use offsite_catalog::{GroupState, Mode, Role};
use offsite_replica_store::{PitWriter, ReplicaStore, VolumeSpec};

use crate::control::{Done, HashList};
use crate::wire::{self, GroupCreate, GroupCreated, Hashes, PitCommit, PitCommitted, PitDesc};
use crate::{RemoteError, Replication};

/// What block batches on a session are for.
/// A block batch the replica could not apply.
#[derive(Debug)]
pub(crate) struct BatchError {
    /// The replica store's file system is full (nothing is lost: the
    /// primary keeps the blocks and retries).
    pub(crate) storage_full: bool,
    /// What failed and what to do.
    pub(crate) message: String,
}

enum BatchFailure {
    Other(String),
    StorageFull {
        store: std::path::PathBuf,
        needed: u64,
    },
}

impl From<String> for BatchFailure {
    fn from(s: String) -> Self {
        BatchFailure::Other(s)
    }
}

impl From<wire::BatchDecodeError> for BatchFailure {
    fn from(e: wire::BatchDecodeError) -> Self {
        BatchFailure::Other(e.to_string())
    }
}

/// "replica store DIR of group G on site S is full: F free, N needed".
fn storage_full_message(site: &str, group: &str, store: &std::path::Path, needed: u64) -> String {
    let free = rustix::fs::statvfs(store)
        .map(|s| s.f_bavail * s.f_frsize)
        .map_or_else(|_| "unknown".to_string(), |b| format!("{b} bytes"));
    format!(
        "no space left for group {group} on site {site}: the file system of its replica store {} has {free} free, and the batch being written needs {needed} bytes more; free space there (or lower the group's --keep, or release named PITs); replication resumes by itself and the PITs kept are intact",
        store.display()
    )
}

pub(crate) enum Transfer {
    /// No transfer: a batch is a protocol error (unless it is a bulk test).
    Idle,
    /// Initial replication into the base images.
    Base {
        group: String,
        store: Arc<ReplicaStore>,
    },
    /// A sync group's stream of writes into its write log.
    Log {
        group: String,
        store: Arc<ReplicaStore>,
        slot: Arc<std::sync::Mutex<Option<offsite_replica_store::WriteLog>>>,
    },
    /// A PIT being received.
    Pit {
        group: String,
        store: Arc<ReplicaStore>,
        writer: Box<PitWriter>,
        blocks: u64,
    },
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transfer::Idle => f.write_str("Idle"),
            Transfer::Base { group, .. } => write!(f, "Base({group})"),
            Transfer::Pit { group, blocks, .. } => write!(f, "Pit({group}, {blocks} blocks)"),
            Transfer::Log { group, .. } => write!(f, "Log({group})"),
        }
    }
}

/// A PIT of a replica store on the wire. The store does not keep the
/// app-consistent mark (the catalogs do; see [`after_commit`]).
pub(crate) fn pit_desc(p: &offsite_replica_store::PitInfo) -> PitDesc {
    PitDesc {
        id: p.id.get(),
        name: p.name.clone(),
        created_at: p.created_at.clone(),
        bytes: p.bytes,
        app_consistent: false,
    }
}

/// How long `PIT_BEGIN` waits for a store's PIT writer held by someone
/// else (see [`Replication::answer_pit_begin`]).
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A replica store's failure with `text`: `storage_full` when its file
/// system is full (the primary keeps the blocks and retries), else a
/// refusal.
pub(crate) fn storage_error(text: String, e: &offsite_replica_store::ReplicaError) -> RemoteError {
    // The sources say why (an object store: unavailable, refused, changed
    // or damaged, another key); `text` holds the error's own message only.
    let mut text = text;
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let why = inner.to_string();
        if !text.contains(&why) {
            text.push_str(": ");
            text.push_str(&why);
        }
        src = inner.source();
    }
    if e.is_storage_full() {
        RemoteError::StorageFull(text)
    } else if matches!(e, offsite_replica_store::ReplicaError::Busy) {
        RemoteError::Busy(text)
    } else {
        RemoteError::Refused(text)
    }
}

/// When `e` says another site took the group's bucket prefix over
/// (`offsite_engine::owner`), the group's `last_error` here says so: this
/// site's copy stops being the replica, and the operator must act.
pub(crate) fn note_fenced(
    site: &offsite_engine::Site,
    group: &str,
    e: &offsite_replica_store::ReplicaError,
) {
    if let offsite_replica_store::ReplicaError::Fenced { reason } = e
        && let Err(err) = site.set_group_error(group, Some(reason))
    {
        tracing::warn!(
            group,
            "recording the lost ownership of the bucket prefix: {err}"
        );
    }
}

/// Makes a seed's images the base images: moved into the store when they
/// are on its file system, else copied (data only: holes are skipped and
/// `write_base` leaves zero blocks as holes; the block comparison that
/// follows corrects anything else).
fn load_seed(site: &str, req: &wire::SeedLoad, store: &ReplicaStore) -> Result<(), RemoteError> {
    let dir = Path::new(&req.path);
    let manifest = read_seed_manifest(site, req)?;
    for spec in store.volumes() {
        let Some(v) = manifest.volumes.iter().find(|v| v.name == spec.name) else {
            return Err(RemoteError::NotFound(format!(
                "the seed at {} has no volume {}",
                dir.display(),
                spec.name
            )));
        };
        if v.size_bytes != spec.size_bytes || v.block_size != spec.block_size {
            return Err(RemoteError::Conflict(format!(
                "seed volume {} is {} bytes in blocks of {}, the group's is {} in blocks of {}",
                v.name, v.size_bytes, v.block_size, spec.size_bytes, spec.block_size
            )));
        }
        let file_path = dir.join(&v.file);
        // On the store's file system the image simply becomes the base (a
        // rename: no copy). A marker written first makes a retry after the
        // image was moved skip it instead of failing.
        let marker = dir.join(format!(".adopted-by-offsite.{}", spec.name));
        if !file_path.exists() && marker.exists() {
            continue;
        }
        match std::fs::write(&marker, b"moved into the replica store\n")
            .map_err(|e| e.to_string())
            .and_then(|()| {
                store
                    .adopt_base(&spec.name, &file_path)
                    .map_err(|e| e.to_string())
            }) {
            Ok(()) => {
                tracing::info!(volume = %spec.name, seed = %file_path.display(), "seed image adopted as the base (renamed, not copied)");
                continue;
            }
            Err(e) => {
                // The marker only speeds up a retry after a move; without
                // it a retry copies again, so a failed removal is harmless.
                drop(std::fs::remove_file(&marker));
                tracing::info!(volume = %spec.name, "copying the seed image into the base ({e})");
            }
        }
        copy_seed_image(site, spec, &file_path, store)?;
    }
    store
        .sync_base()
        .map_err(|e| storage_error(format!("making the seeded base durable: {e}"), &e))
}

/// The seed's manifest (`seed.json`), if it is one this site reads and of
/// the group being seeded.
fn read_seed_manifest(site: &str, req: &wire::SeedLoad) -> Result<wire::SeedManifest, RemoteError> {
    let dir = Path::new(&req.path);
    let manifest_path = dir.join("seed.json");
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| {
        RemoteError::NotFound(format!(
            "site {site} cannot read the seed manifest {}: {e}; copy the output of `offsite group export-seed` there",
            manifest_path.display()
        ))
    })?;
    let manifest: wire::SeedManifest = serde_json::from_str(&text).map_err(|e| {
        RemoteError::BadRequest(format!(
            "seed manifest {} is malformed: {e}",
            manifest_path.display()
        ))
    })?;
    if manifest.format_version != 1 {
        return Err(RemoteError::Unsupported(format!(
            "seed format {} is not supported",
            manifest.format_version
        )));
    }
    if manifest.group != req.group {
        return Err(RemoteError::Conflict(format!(
            "the seed at {} is of group {}, not {}",
            dir.display(),
            manifest.group,
            req.group
        )));
    }
    Ok(manifest)
}

/// Copies a seed image's data into volume `spec`'s base (when it could
/// not be moved there).
fn copy_seed_image(
    site: &str,
    spec: &offsite_replica_store::VolumeSpec,
    file_path: &Path,
    store: &ReplicaStore,
) -> Result<(), RemoteError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(file_path).map_err(|e| {
        RemoteError::NotFound(format!(
            "site {site} cannot open seed image {}: {e}",
            file_path.display()
        ))
    })?;
    const CHUNK: u64 = 1 << 20;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    while offset < spec.size_bytes {
        // The seed's holes are zeroes the sparse base reads already:
        // jump over them without reading (SEEK_DATA; a file system
        // without it says "data" and the chunk is read).
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(offset)) {
            Ok(at) => at,
            Err(rustix::io::Errno::NXIO) => break,
            Err(_) => offset,
        };
        if data >= offset + CHUNK {
            offset = data / CHUNK * CHUNK;
            continue;
        }
        let n = (spec.size_bytes - offset).min(CHUNK) as usize;
        file.read_exact_at(&mut buf[..n], offset).map_err(|e| {
            RemoteError::Internal(format!("reading seed image {}: {e}", file_path.display()))
        })?;
        if buf[..n].iter().any(|&b| b != 0) {
            store
                .write_base(&spec.name, offset, &buf[..n])
                .map_err(|e| {
                    storage_error(format!("writing the base of {}: {e}", spec.name), &e)
                })?;
        }
        offset += n as u64;
    }
    Ok(())
}

/// Free bytes for an unprivileged writer on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Replication {
    /// Opens (once) the replica store of `group`.
    pub(crate) async fn store(
        &self,
        group: &str,
    ) -> Result<(GroupRow, Arc<ReplicaStore>), RemoteError> {
        let site = self.site.clone();
        let g = group.to_string();
        let row = tokio::task::spawn_blocking(move || site.groups().get(&g)).await??;
        if row.role != Role::Replica {
            return Err(RemoteError::Conflict(format!(
                "group {group} is a {} group on site {}, not a replica",
                row.role,
                self.site.config().name
            )));
        }
        let dir = PathBuf::from(row.store_dir.clone().unwrap_or_default());
        let site = self.site.clone();
        let store = tokio::task::spawn_blocking(move || site.replica_store(&dir))
            .await?
            .map_err(|e| RemoteError::from(e).map_message(|m| format!("group {group}: {m}")))?;
        Ok((row, store))
    }

    /// [`Self::store`] for an operator's request at this site: an unknown
    /// group is the engine's "no such group" (404 at the API), not a
    /// refusal; a group that is not a replica here is refused.
    pub(crate) async fn local_store(
        &self,
        group: &str,
    ) -> Result<(GroupRow, Arc<ReplicaStore>), crate::ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        crate::run_blocking(move || Ok(site.groups().get(&g)?)).await?;
        self.store(group).await.map_err(crate::ReplError::Refused)
    }

    /// Answers [`wire::kinds::GROUP_CREATE`].
    pub(crate) async fn answer_group_create(
        &self,
        peer: &str,
        req: GroupCreate,
    ) -> Result<GroupCreated, RemoteError> {
        self.create_replica_group(peer, req).await
    }

    /// Answers [`wire::kinds::BASE_BEGIN`]: block batches that follow go
    /// to the base images.
    pub(crate) async fn answer_base_begin(
        &self,
        peer: &str,
        req: wire::BaseBegin,
        transfer: &mut Transfer,
    ) -> Result<Done, RemoteError> {
        let (row, store) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        self.check_accepting(&row)?;
        if store.newest().is_some() {
            return Err(RemoteError::Conflict(format!(
                "group {} already has PITs on site {}; initial replication is over",
                req.group,
                self.site.config().name
            )));
        }
        self.set_state(&req.group, &[], GroupState::InitialReplication)
            .await;
        *transfer = Transfer::Base {
            group: req.group,
            store,
        };
        Ok(Done)
    }

    /// Answers [`wire::kinds::BASE_SYNC`]: the base images so far are
    /// made durable.
    pub(crate) async fn answer_base_sync(
        &self,
        transfer: &mut Transfer,
    ) -> Result<Done, RemoteError> {
        let Transfer::Base { store, .. } = transfer else {
            return Err(RemoteError::Conflict(
                "BASE_SYNC outside an initial replication".into(),
            ));
        };
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.sync_base())
            .await?
            .map_err(|e| storage_error(format!("making the base durable: {e}"), &e))?;
        Ok(Done)
    }

    /// Answers [`wire::kinds::SYNC_STREAM_BEGIN`]: the session becomes the
    /// group's stream of writes once this answer is sent.
    pub(crate) async fn answer_stream_begin(
        &self,
        peer: &str,
        req: wire::SyncStreamBegin,
        transfer: &mut Transfer,
    ) -> Result<wire::SyncStreamBegun, RemoteError> {
        if !matches!(transfer, Transfer::Idle) {
            return Err(RemoteError::Conflict(
                "a transfer is already running on this session".into(),
            ));
        }
        let (group, store, slot) = self.begin_stream(peer, req).await?;
        *transfer = Transfer::Log { group, store, slot };
        // This replica appends the primary's checkpoints to its journal.
        Ok(wire::SyncStreamBegun { checkpoints: true })
    }

    /// Answers [`wire::kinds::PIT_BEGIN`]: block batches that follow form
    /// a new PIT.
    pub(crate) async fn answer_pit_begin(
        &self,
        peer: &str,
        req: wire::PitBegin,
        transfer: &mut Transfer,
    ) -> Result<wire::PitBegun, RemoteError> {
        // The store's one PIT writer may still be held by a stream that
        // just ended on another connection (its log being sealed): the
        // primary begins its next PIT within milliseconds of ending a
        // stream, so a busy store is waited for a little, not refused.
        // (Not when this session holds it: a duplicated begin.)
        let wait = if matches!(transfer, Transfer::Idle) {
            BUSY_WAIT
        } else {
            std::time::Duration::ZERO
        };
        let deadline = tokio::time::Instant::now() + wait;
        let (store, writer) = loop {
            match self.try_pit_begin(peer, &req).await {
                Err(RemoteError::Busy(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other?,
            }
        };
        *transfer = Transfer::Pit {
            group: req.group,
            store,
            writer: Box::new(writer),
            blocks: 0,
        };
        // This replica takes many runs per batch, as write-log records.
        Ok(wire::PitBegun {
            record_batches: true,
        })
    }

    /// Seals a log left over and opens the group's PIT writer
    /// ([`RemoteError::Busy`] while another one is open).
    async fn try_pit_begin(
        &self,
        peer: &str,
        req: &wire::PitBegin,
    ) -> Result<(Arc<ReplicaStore>, PitWriter), RemoteError> {
        // A sync group's log left by a stream that could not seal it
        // holds acknowledged writes: they become a PIT first.
        self.seal_log(&req.group).await?;
        let (row, store) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        self.check_accepting(&row)?;
        let writer = store.begin_pit().map_err(|e| {
            storage_error(format!("starting a PIT of group {}: {e}", req.group), &e)
        })?;
        Ok((store, writer))
    }

    /// Answers [`wire::kinds::PIT_COMMIT`]: the PIT received is made
    /// durable and visible.
    pub(crate) async fn answer_pit_commit(
        &self,
        req: PitCommit,
        transfer: &mut Transfer,
    ) -> Result<PitCommitted, RemoteError> {
        let Transfer::Pit {
            group,
            store,
            writer,
            blocks,
        } = std::mem::replace(transfer, Transfer::Idle)
        else {
            return Err(RemoteError::Conflict("PIT_COMMIT without PIT_BEGIN".into()));
        };
        if group != req.group || blocks != req.blocks {
            writer.abort();
            return Err(RemoteError::Conflict(format!(
                "PIT of group {group} incomplete: received {blocks} blocks, the primary sent {}; it was discarded and the next cycle resends them",
                req.blocks
            )));
        }
        self.commit_pit(&group, store, *writer, req).await
    }

    /// Answers [`wire::kinds::HASHES`].
    pub(crate) async fn answer_hashes(
        &self,
        peer: &str,
        req: Hashes,
    ) -> Result<HashList, RemoteError> {
        let (row, store) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        let volume = row
            .volumes
            .get(usize::from(req.volume))
            .ok_or_else(|| {
                RemoteError::NotFound(format!("group {} has no volume #{}", req.group, req.volume))
            })?
            .volume
            .clone();
        let pit = match (req.base, req.pit) {
            (true, _) => None,
            (false, Some(p)) => Some(
                offsite_replica_store::PitId::new(p)
                    .ok_or_else(|| RemoteError::BadRequest(format!("PIT {p} is not a valid id")))?,
            ),
            (false, None) => Some(
                store
                    .newest()
                    .ok_or_else(|| {
                        RemoteError::NotFound(format!("group {} has no PIT yet", req.group))
                    })?
                    .id,
            ),
        };
        let hashes = tokio::task::spawn_blocking(move || {
            store.block_hashes(pit, &volume, req.first..req.first + req.count)
        })
        .await?
        .map_err(|e| format!("hashing the replica's blocks: {e}"))?;
        Ok(HashList(Bytes::from(hashes.concat())))
    }

    /// Answers [`wire::kinds::SEED_LOAD`].
    pub(crate) async fn answer_seed_load(
        &self,
        peer: &str,
        req: wire::SeedLoad,
    ) -> Result<Done, RemoteError> {
        let (row, store) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        self.check_accepting(&row)?;
        if store.newest().is_some() {
            return Err(RemoteError::Conflict(format!(
                "group {} already has PITs; a seed only starts a new replica",
                req.group
            )));
        }
        let site_name = self.site.config().name.clone();
        tokio::task::spawn_blocking(move || load_seed(&site_name, &req, &store)).await??;
        Ok(Done)
    }

    /// Answers [`wire::kinds::GROUP_PREPARED`].
    pub(crate) async fn answer_prepared(
        &self,
        peer: &str,
        req: wire::GroupPrepared,
    ) -> Result<Done, RemoteError> {
        let (row, _) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        // PIT 0: the primary cancelled the preparation.
        if req.pit == 0 {
            self.set_state(
                &req.group,
                &[GroupState::PreparedForFailover],
                GroupState::Replicating,
            )
            .await;
        } else {
            self.set_state(
                &req.group,
                &[
                    GroupState::Replicating,
                    GroupState::Paused,
                    GroupState::TestFailover,
                ],
                GroupState::PreparedForFailover,
            )
            .await;
        }
        Ok(Done)
    }

    /// Answers [`wire::kinds::PIT_RELEASE`].
    pub(crate) async fn answer_pit_release(
        &self,
        peer: &str,
        req: wire::PitRelease,
    ) -> Result<Done, RemoteError> {
        let (row, _) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        self.release_local(&req.group, &req.pit).await?;
        Ok(Done)
    }

    /// Answers [`wire::kinds::GROUP_DELETE`].
    pub(crate) async fn answer_group_delete(
        &self,
        peer: &str,
        req: wire::GroupDelete,
    ) -> Result<Done, RemoteError> {
        let (row, _) = self.store(&req.group).await?;
        self.check_peer(&row, peer)?;
        self.forget_group(&row, req.delete_replica).await?;
        Ok(Done)
    }

    /// New data may not enter a replica whose PIT was promoted: the
    /// promoted volumes read the store.
    fn check_accepting(&self, row: &GroupRow) -> Result<(), RemoteError> {
        if row.state == GroupState::FailedOver {
            return Err(RemoteError::Conflict(format!(
                "group {} was failed over to site {}; run `offsite reverse {}` there to replicate the other way, or `offsite failover revert {}` there",
                row.name,
                self.site.config().name,
                row.name,
                row.name
            )));
        }
        Ok(())
    }

    pub(crate) fn check_peer(&self, row: &GroupRow, peer: &str) -> Result<(), RemoteError> {
        if row.partner != peer {
            return Err(RemoteError::Unauthorized(format!(
                "group {} on site {} replicates from {}, not from {peer}",
                row.name,
                self.site.config().name,
                row.partner
            )));
        }
        Ok(())
    }

    /// Moves the group to `state` if it is in one of `from` (any state
    /// when empty), in one catalog transaction; a group found in another
    /// state (a change came first) stays as it is.
    async fn set_state(&self, group: &str, from: &[GroupState], state: GroupState) {
        let site = self.site.clone();
        let (g, from) = (group.to_string(), from.to_vec());
        match tokio::task::spawn_blocking(move || site.move_group_state(&g, &from, state, None))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(offsite_engine::EngineError::Catalog(e))) if e.unexpected_state().is_some() => {}
            Ok(Err(e)) => tracing::warn!(group, %state, "recording the group's state: {e}"),
            Err(e) => tracing::warn!(group, %state, "recording the group's state: {e}"),
        }
    }

    /// Records that `group`'s replica store is full (health critical here,
    /// an event, the group's last error) until a PIT commits again.
    fn note_store_full(&self, group: &str, message: &str) {
        if self.replica.mark_store_full(group, message) && !group.is_empty() {
            crate::warn_if_failed(
                "recording the full store",
                self.site.set_group_error(group, Some(message)),
            );
            self.site.note("group.store-full", group, message);
        }
    }

    /// Space was found again: a PIT committed.
    pub(crate) fn clear_store_full(&self, group: &str) {
        if self.replica.clear_store_full(group) {
            crate::warn_if_failed(
                "clearing the full store's error",
                self.site.set_group_error(group, None),
            );
            self.site.note(
                "group.store-full",
                group,
                "space found again: a PIT committed",
            );
        }
    }

    /// Applies one block batch of the current transfer.
    pub(crate) fn apply_batch(
        &self,
        payload: &[u8],
        transfer: &mut Transfer,
    ) -> Result<(), BatchError> {
        let group = match transfer {
            Transfer::Base { group, .. } | Transfer::Pit { group, .. } => group.clone(),
            _ => String::new(),
        };
        self.apply_batch_inner(payload, transfer)
            .map_err(|e| match e {
                BatchFailure::Other(message) => BatchError {
                    storage_full: false,
                    message,
                },
                BatchFailure::StorageFull { store, needed } => {
                    let message =
                        storage_full_message(&self.site.config().name, &group, &store, needed);
                    self.note_store_full(&group, &message);
                    BatchError {
                        storage_full: true,
                        message,
                    }
                }
            })
    }

    fn apply_batch_inner(
        &self,
        payload: &[u8],
        transfer: &mut Transfer,
    ) -> Result<(), BatchFailure> {
        // A record batch (many runs, each a write-log record whose CRC32C
        // is checked here before a byte is used: its frame may come without
        // a BLAKE3 hash) or one run ([`wire::decode_batch`]).
        let runs: Vec<wire::Batch<'_>> = if wire::is_record_batch(payload) {
            offsite_replica_store::decode_records(payload)
                .map_err(|e| format!("a record batch does not decode: {e}"))?
                .into_iter()
                .map(|r| wire::Batch {
                    volume: r.volume,
                    first: r.first,
                    count: r.count,
                    data: r.data,
                })
                .collect()
        } else {
            vec![wire::decode_batch(payload)?]
        };
        let (store, mut writer, mut blocks) = match transfer {
            Transfer::Idle | Transfer::Log { .. } => {
                return Err("block batch outside a transfer".to_string().into());
            }
            Transfer::Base { store, .. } => (store.clone(), None, None),
            Transfer::Pit {
                store,
                writer,
                blocks,
                ..
            } => (store.clone(), Some(writer), Some(blocks)),
        };
        let full = |e: &offsite_replica_store::ReplicaError| {
            e.is_storage_full().then(|| BatchFailure::StorageFull {
                store: store.dir().to_path_buf(),
                needed: payload.len() as u64,
            })
        };
        let mut zero = Vec::new();
        for batch in runs {
            let spec = store
                .volumes()
                .get(usize::from(batch.volume))
                .ok_or_else(|| format!("block batch for unknown volume #{}", batch.volume))?;
            let bs = u64::from(spec.block_size);
            let end = batch.first + u64::from(batch.count);
            if end * bs > spec.size_bytes {
                return Err(format!(
                    "block batch {}..{end} is past the end of volume {}",
                    batch.first, spec.name
                )
                .into());
            }
            if let Some(d) = batch.data
                && d.len() as u64 != u64::from(batch.count) * bs
            {
                return Err(format!(
                    "block batch carries {} bytes for {} blocks of {bs}",
                    d.len(),
                    batch.count
                )
                .into());
            }
            zero.resize(bs as usize, 0);
            match writer.as_mut() {
                None => {
                    let data = batch
                        .data
                        .map(<[u8]>::to_vec)
                        .unwrap_or_else(|| vec![0u8; (u64::from(batch.count) * bs) as usize]);
                    store
                        .write_base(&spec.name, batch.first * bs, &data)
                        .map_err(|e| {
                            full(&e).unwrap_or_else(|| {
                                format!("writing the base of {}: {e}", spec.name).into()
                            })
                        })?;
                }
                Some(writer) => {
                    for i in 0..u64::from(batch.count) {
                        let block = match batch.data {
                            Some(d) => &d[(i * bs) as usize..((i + 1) * bs) as usize],
                            None => &zero[..bs as usize],
                        };
                        writer
                            .write_block(&spec.name, batch.first + i, block)
                            .map_err(|e| {
                                full(&e).unwrap_or_else(|| {
                                    format!("staging block of {}: {e}", spec.name).into()
                                })
                            })?;
                    }
                    if let Some(b) = blocks.as_mut() {
                        **b += u64::from(batch.count);
                    }
                }
            }
        }
        Ok(())
    }

    async fn create_replica_group(
        &self,
        peer: &str,
        req: GroupCreate,
    ) -> Result<GroupCreated, RemoteError> {
        let site = self.site.clone();
        let peer = peer.to_string();
        let site_name = self.site.config().name.clone();
        let mode: Mode = req
            .mode
            .parse()
            .map_err(|e| RemoteError::BadRequest(format!("site {site_name}: {e}")))?;
        tokio::task::spawn_blocking(move || {
            if let Ok(existing) = site.groups().get(&req.group) {
                return Err(RemoteError::Conflict(format!(
                    "site {site_name} already has a replication group named {:?} ({} of {}); pick another group name",
                    req.group, existing.role, existing.partner
                )));
            }
            let grant = site
                .authorize_primary(&peer, req.security_tag.as_deref())?;
            let specs: Vec<VolumeSpec> = req
                .volumes
                .iter()
                .map(|v| VolumeSpec {
                    name: v.name.clone(),
                    size_bytes: v.size_bytes,
                    block_size: v.block_size,
                })
                .collect();
            // The group's key, kept here before the store is sealed with it.
            let key = match &req.key {
                Some(line) => {
                    let key = offsite_objects::GroupKey::import(&line.0).map_err(|e| {
                        RemoteError::BadRequest(format!("site {site_name}: the key of group {}: {e}", req.group))
                    })?;
                    offsite_engine::objects::save_group_key(site.layout(), &req.group, &key)?;
                    Some(key)
                }
                None => None,
            };
            let dir = create_replica_store(&site, &site_name, &peer, &req, &grant, &specs, key.as_ref())
                .inspect_err(|_| {
                    if key.is_some() {
                        drop(std::fs::remove_file(site.layout().group_key(&req.group)));
                    }
                })?;
            site.insert_group_row(&GroupRow {
                name: req.group.clone(),
                role: Role::Replica,
                partner: peer.clone(),
                mode,
                rpo_secs: req.rpo_secs,
                keep: req.keep,
                bandwidth: req.bandwidth,
                compress: req.compress,
                security_tag: req.security_tag.clone(),
                state: GroupState::ReadyForInitialReplication,
                store_dir: Some(dir.display().to_string()),
                created_at: String::new(),
                state_changed_at: String::new(),
                last_error: None,
                on_link_loss: req.on_link_loss.clone(),
                suspend_timeout_secs: req.suspend_timeout_secs,
                needs_resync: None,
                last_drill_at: None,
                app_consistent_every_secs: req.app_consistent_every_secs,
                quiesce_error: None,
                // An older primary sends none: the defaults.
                journal: req
                    .journal
                    .map(wire::JournalDesc::to_settings)
                    .filter(|j| crate::journal::check(j).is_ok())
                    .unwrap_or_default(),
                volumes: req
                    .volumes
                    .iter()
                    .map(|v| GroupVolumeRow {
                        volume: v.name.clone(),
                        size_bytes: v.size_bytes,
                        block_size: v.block_size,
                        initial_done_bytes: 0,
                    })
                    .collect(),
                vms: req.vms.iter().map(wire::VmDesc::to_row).collect(),
            })?;
            Ok(GroupCreated {
                store_dir: dir.display().to_string(),
                rule: grant.rule,
                encrypted: key.is_some(),
            })
        })
        .await?
    }

    async fn commit_pit(
        &self,
        group: &str,
        store: Arc<ReplicaStore>,
        writer: PitWriter,
        req: PitCommit,
    ) -> Result<PitCommitted, RemoteError> {
        let site = self.site.clone();
        let g = group.to_string();
        let committed = tokio::task::spawn_blocking(move || {
            let info = writer
                .commit(req.name.clone(), req.created_at.clone())
                .map_err(|e| {
                    note_fenced(&site, &g, &e);
                    storage_error(format!("committing the PIT of group {g}: {e}"), &e)
                })?;
            after_commit(&site, &store, &g, &info, req.app_consistent)
        })
        .await??;
        self.clear_store_full(group);
        Ok(committed)
    }
}

/// Creates the replica store of the group `req` asks for, where `grant`
/// says, and returns its directory (the catalog's `store_dir`): for an
/// `s3://` location, a working directory under the site's data directory
/// with the objects under `PREFIX/GROUP/` of the bucket
/// (`offsite_engine::objects`); for a directory, `LOCATION/PEER/GROUP`.
/// With `key` every object is sealed with it: a directory location then
/// keeps its objects in `objects/` of that directory.
fn create_replica_store(
    site: &offsite_engine::Site,
    site_name: &str,
    peer: &str,
    req: &GroupCreate,
    grant: &offsite_engine::authz::Grant,
    specs: &[VolumeSpec],
    key: Option<&offsite_objects::GroupKey>,
) -> Result<PathBuf, RemoteError> {
    use offsite_engine::objects;
    let location =
        offsite_objects::StorageLocation::parse(&grant.storage_location).map_err(|e| {
            format!(
                "site {site_name}: {e}; fix the storage location of {}",
                grant.rule
            )
        })?;
    if let offsite_objects::StorageLocation::S3 { .. } = location {
        let dir = objects::work_dir_for(site.layout(), peer, &req.group);
        if dir.exists() {
            return Err(RemoteError::Conflict(format!(
                "site {site_name} already has a working directory {} for group {} of {peer}; remove it or pick another group name",
                dir.display(),
                req.group
            )));
        }
        site.create_objects_store(objects::NewObjectsStore {
            location: objects::sub_location(&location, &req.group),
            work_dir: &dir,
            group: &req.group,
            volumes: specs,
            after: req.pits_after,
            key,
        })
        .map_err(|e| format!("site {site_name} cannot create the replica store: {e}"))?;
        return Ok(dir);
    }
    let dir = Path::new(&grant.storage_location)
        .join(peer)
        .join(&req.group);
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(RemoteError::Conflict(format!(
            "storage location {} on site {site_name} already holds data; remove it or pick another group name",
            dir.display()
        )));
    }
    offsite_volume_file::create_private_dir_all(&dir).map_err(|e| {
        format!(
            "site {site_name} cannot create {}: {e}; check the storage location of {}",
            dir.display(),
            grant.rule
        )
    })?;
    // Replicas are as thin as their primaries: the base receives the
    // allocated blocks only, so that is what must fit now. Growth
    // later is watched by the storage-full events of the cycles.
    let needed: u64 = req
        .volumes
        .iter()
        .map(|v| v.allocated_bytes.unwrap_or(v.size_bytes))
        .sum();
    if let Some(free) = free_bytes(&dir)
        && free < needed
    {
        // Just created and empty: a leftover is harmless and
        // taken again by the retry.
        drop(std::fs::remove_dir(&dir));
        return Err(RemoteError::StorageFull(format!(
            "site {site_name} has {free} bytes free at {} but the group's volumes hold {needed} bytes of data; free space or use another storage location",
            dir.display()
        )));
    }
    if let Some(key) = key {
        site.create_objects_store(offsite_engine::objects::NewObjectsStore {
            location: offsite_objects::StorageLocation::Directory(
                dir.join(offsite_engine::objects::DIR_OBJECTS),
            ),
            work_dir: &dir,
            group: &req.group,
            volumes: specs,
            after: req.pits_after,
            key: Some(key),
        })
        .map_err(|e| format!("site {site_name} cannot create the replica store: {e}"))?;
        return Ok(dir);
    }
    ReplicaStore::create_after(&dir, specs, req.pits_after)
        .map_err(|e| format!("site {site_name} cannot create the replica store: {e}"))?;
    Ok(dir)
}

/// What follows every commit of a PIT at the replica (a cycle's, or a seal
/// of a sync group's log): retention, the catalog's PIT list, the state.
/// `app_consistent`: the primary cut the PIT while the group's VMs were
/// quiesced (see `crate::quiesce`); the mark is kept in the catalog.
pub(crate) fn after_commit(
    site: &offsite_engine::Site,
    store: &ReplicaStore,
    group: &str,
    info: &offsite_replica_store::PitInfo,
    app_consistent: bool,
) -> Result<PitCommitted, RemoteError> {
    let row = site.groups().get(group)?;
    // The store does not keep the app-consistent mark: the catalog's list
    // does, and the new PIT takes it from the primary.
    let mut marked: Vec<u64> = site
        .groups()
        .pits(group)?
        .into_iter()
        .filter(|p| p.app_consistent)
        .map(|p| p.id)
        .collect();
    if app_consistent {
        marked.push(info.id.get());
    }
    // A store in an object store carries the group's definition, for a
    // site that must recover from the bucket alone. Never in the way of
    // the commit: the next one writes it again.
    if let Err(e) = crate::bucket::publish_group(store, &row, &site.config().name, &marked) {
        tracing::warn!(
            group,
            "writing the group's definition beside its store: {e}"
        );
    }
    // Retention: keep the newest `keep` unnamed PITs; named ones stay
    // until released; the newest PIT (the common base) always stays;
    // so do PITs a test or a promotion is made from, and the newest
    // app-consistent one (`decide::newest_app_consistent` says why).
    let mut pinned: Vec<u64> = site
        .groups()
        .failovers()?
        .into_iter()
        .filter(|f| f.group == group)
        .map(|f| f.pit_id)
        .collect();
    // The journal's history: pruned by the group's settings first, then
    // the PITs its checkpoints replay from are kept. A failure leaves the
    // history as it is and skips retention this once (merging a PIT the
    // journal needs would lose checkpoints; keeping PITs loses nothing).
    let journal_pins = crate::journal::prune_and_pin(site, store, &row);
    let skip_retention = match journal_pins {
        Ok(pins) => {
            pinned.extend(pins);
            false
        }
        Err(e) => {
            tracing::warn!(
                group,
                "journal history: {e}; retention waits for the next commit"
            );
            true
        }
    };
    let held: Vec<(u64, bool)> = store
        .pits()
        .iter()
        .map(|p| (p.id.get(), marked.contains(&p.id.get())))
        .collect();
    pinned.extend(crate::decide::newest_app_consistent(&held));
    let history: Vec<(u64, bool)> = store
        .pits()
        .iter()
        .map(|p| (p.id.get(), p.name.is_some()))
        .collect();
    let doomed = if skip_retention {
        Vec::new()
    } else {
        crate::decide::retention(
            &history,
            info.id.get(),
            info.name.is_some(),
            &pinned,
            row.keep,
        )
    };
    for id in doomed {
        let Some(id) = offsite_replica_store::PitId::new(id) else {
            continue;
        };
        match store.remove_pit(id) {
            Ok(()) => {}
            // A checkpoint image (an export or clone at `--at TIME`) reads
            // a state this merge would change: the merge waits for a
            // later commit, after the image is gone; the commit stands.
            Err(e @ offsite_replica_store::ReplicaError::InUse { .. }) => {
                tracing::debug!(group, pit = %id, "retention skips a merge: {e}");
            }
            Err(e) => {
                return Err(storage_error(
                    format!("retention of group {group}: {e}"),
                    &e,
                ));
            }
        }
    }
    let pits = store.pits();
    let descs: Vec<PitDesc> = pits
        .iter()
        .map(|p| PitDesc {
            app_consistent: marked.contains(&p.id.get()),
            ..pit_desc(p)
        })
        .collect();
    site.groups().replace_pits(
        group,
        &descs.iter().map(PitDesc::to_row).collect::<Vec<_>>(),
    )?;
    // A committed PIT ends the initial replication (or a catch-up); the
    // states that hold a PIT stay.
    match site.move_group_state(
        group,
        &[
            GroupState::ReadyForInitialReplication,
            GroupState::InitialReplication,
            GroupState::Resynchronizing,
            GroupState::FailedOverElsewhere,
        ],
        GroupState::Replicating,
        None,
    ) {
        Ok(_) => {}
        Err(offsite_engine::EngineError::Catalog(e)) if e.unexpected_state().is_some() => {}
        Err(e) => tracing::warn!(group, "recording the group as replicating: {e}"),
    }
    Ok(PitCommitted {
        pit: PitDesc {
            app_consistent,
            ..pit_desc(info)
        },
        pits: descs,
        last_drill_at: row.last_drill_at,
        journal: crate::journal::window(store),
    })
}
