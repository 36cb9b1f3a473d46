//! [`PitWriter`]: builds one PIT in `staging/` and publishes it atomically.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::backing::{Backing, pit_key};
use crate::chain::{Inner, MANIFEST_FILE, PITS_DIR, Pit, STAGING_DIR, error_chain, pit_dir_name};
use crate::format::{Manifest, encode_manifest};
use crate::segment::{SegSource, Segment, SegmentBuilder};
use crate::{PitId, PitInfo, ReplicaError, fsx, validate_created_at, validate_pit_name};

/// Writes the blocks of one new PIT; nothing is visible before
/// [`PitWriter::commit`] returns. Dropping it without commit aborts.
#[derive(Debug)]
pub struct PitWriter {
    inner: Arc<Inner>,
    id: u64,
    staging: PathBuf,
    builders: Vec<SegmentBuilder>,
    /// The first I/O failure; the writer refuses further work.
    failed: Option<String>,
    /// Staging was consumed (committed) or already cleaned up.
    finished: bool,
}

/// Whether `data` is all zero bytes.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    let mut chunks = data.chunks_exact(16);
    chunks
        .by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
        && chunks.remainder().iter().all(|&b| b == 0)
}

impl PitWriter {
    pub(crate) fn begin(inner: Arc<Inner>) -> Result<PitWriter, ReplicaError> {
        inner.check_poison()?;
        inner.check_undamaged()?;
        if inner
            .writer
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(ReplicaError::Busy);
        }
        let id = inner.lock_ops().next_id;
        let staging = inner.path(STAGING_DIR).join(format!("{id:020}"));
        let mut w = PitWriter {
            inner,
            id,
            staging,
            builders: Vec::new(),
            failed: None,
            finished: false,
        };
        // A leftover from a writer of this process whose cleanup failed.
        fsx::remove_tree(&w.staging)?;
        fsx::create_dir(&w.staging)?;
        for (i, v) in w.inner.vols.iter().enumerate() {
            let path = w.staging.join(format!("{}.seg", v.spec.name));
            w.builders
                .push(SegmentBuilder::create(path, v.spec.block_size, i as u32)?);
        }
        Ok(w)
    }

    /// Writes each segment's pending data out in flushes of `bytes`
    /// instead of the default 4 MiB (before the first block is put).
    pub(crate) fn set_flush_bytes(&mut self, bytes: usize) {
        for b in &mut self.builders {
            b.set_flush_bytes(bytes);
        }
    }

    /// The id this PIT will have.
    pub fn id(&self) -> PitId {
        PitId(self.id)
    }

    fn check(&self, volume: &str, block: u64) -> Result<usize, ReplicaError> {
        let v = self.inner.vol_index(volume)?;
        self.check_at(v, block)?;
        Ok(v)
    }

    /// [`PitWriter::check`] of a volume given by its position (`v` must be
    /// one of the store's).
    fn check_at(&self, v: usize, block: u64) -> Result<(), ReplicaError> {
        if let Some(cause) = &self.failed {
            return Err(ReplicaError::WriterFailed {
                cause: cause.clone(),
            });
        }
        let vol = &self.inner.vols[v];
        if block >= vol.nblocks {
            return Err(ReplicaError::OutOfRange {
                volume: vol.spec.name.clone(),
                what: format!("block {block}"),
                size: vol.spec.size_bytes,
            });
        }
        Ok(())
    }

    fn fail(&mut self, e: ReplicaError) -> ReplicaError {
        if self.failed.is_none() {
            self.failed = Some(error_chain(&e));
        }
        e
    }

    /// Records `data` (exactly one block) as the new content of `block` of
    /// `volume`. All-zero data is stored as a zero entry. Writing a block
    /// again replaces it. Not durable until commit.
    pub fn write_block(
        &mut self,
        volume: &str,
        block: u64,
        data: &[u8],
    ) -> Result<(), ReplicaError> {
        let v = self.check(volume, block)?;
        self.put_block(v, block, data)
    }

    /// [`PitWriter::write_block`] of the volume at position `v` of the
    /// store's (the write log's records name volumes by position: no
    /// lookup by name per block).
    pub(crate) fn write_block_at(
        &mut self,
        v: usize,
        block: u64,
        data: &[u8],
    ) -> Result<(), ReplicaError> {
        self.check_at(v, block)?;
        self.put_block(v, block, data)
    }

    /// [`PitWriter::write_zero_block`] of the volume at position `v`.
    pub(crate) fn write_zero_block_at(&mut self, v: usize, block: u64) -> Result<(), ReplicaError> {
        self.check_at(v, block)?;
        let zh = self.inner.vols[v].zero_hash;
        self.builders[v].put_zero(block, zh);
        Ok(())
    }

    fn put_block(&mut self, v: usize, block: u64, data: &[u8]) -> Result<(), ReplicaError> {
        let vol = &self.inner.vols[v];
        if data.len() != vol.bs() {
            return Err(ReplicaError::invalid(format!(
                "a block of volume {:?} is {} bytes, got {}",
                vol.spec.name,
                vol.bs(),
                data.len()
            )));
        }
        if is_zero(data) {
            let zh = vol.zero_hash;
            self.builders[v].put_zero(block, zh);
            return Ok(());
        }
        // The segment builder hashes the block's final content once (see
        // `SegmentBuilder::put_data`).
        let r = self.builders[v].put_data(block, data, None);
        r.map_err(|e| self.fail(e))
    }

    /// Records `block` of `volume` as all zeroes (stored without data).
    pub fn write_zero_block(&mut self, volume: &str, block: u64) -> Result<(), ReplicaError> {
        let v = self.inner.vol_index(volume)?;
        self.write_zero_block_at(v, block)
    }

    /// Makes the PIT durable and visible, with an optional `name` and its
    /// creation time (RFC 3339).
    ///
    /// Ordering:
    /// 0. fsync the base images if `write_base` left them dirty;
    /// 1. finish every segment (index, trailer, header) and fsync it;
    /// 2. write `manifest.pit`, fsync it, fsync the staging directory;
    /// 3. rename `staging/ID` to `pits/ID-FIRST` — the commit point;
    /// 4. fsync `pits/`; then publish in memory.
    ///
    /// A failure before 3 fails the commit only (staging is deleted; the
    /// PIT must be sent again, as after any error here); a failure from 3
    /// on poisons the store until reopen, which shows the PIT if and only if
    /// the rename reached the disk.
    pub fn commit(
        mut self,
        pit_name: Option<String>,
        created_at: String,
    ) -> Result<PitInfo, ReplicaError> {
        if let Some(n) = &pit_name {
            validate_pit_name(n).map_err(ReplicaError::invalid)?;
        }
        validate_created_at(&created_at).map_err(ReplicaError::invalid)?;
        if let Some(cause) = &self.failed {
            return Err(ReplicaError::WriterFailed {
                cause: cause.clone(),
            });
        }
        let inner = self.inner.clone();
        inner.check_poison()?;
        let mut ops = inner.lock_ops();
        inner.check_poison()?;
        if ops.base_dirty {
            inner.sync_base().map_err(|e| inner.poison(e))?; // 0
            ops.base_dirty = false;
        }
        let tip = inner
            .read_state()
            .chain
            .last()
            .map_or(ops.base_through, |p| p.id)
            .max(ops.base_through);
        debug_assert!(tip < self.id, "next id {} not above tip {tip}", self.id);
        let first = tip + 1;
        let name = pit_dir_name(self.id, first);
        let mut segs = Vec::with_capacity(self.builders.len());
        let mut summaries = Vec::with_capacity(self.builders.len());
        for b in std::mem::take(&mut self.builders) {
            let (seg, summary) = b.finish(&inner.uuid, self.id, &self.staging)?; // 1
            segs.push(seg);
            summaries.push(summary);
        }
        let manifest = Manifest {
            uuid: inner.uuid,
            id: self.id,
            first,
            name: pit_name,
            created_at,
            volumes: summaries,
        };
        let segs = publish(
            &inner,
            &self.staging,
            &name,
            &encode_manifest(&manifest),
            segs,
            &mut self.finished,
        )?; // 2, 3, 4
        let final_dir = pit_location(&inner, &name);
        let pit = Arc::new(Pit {
            id: self.id,
            first,
            name: manifest.name,
            created_at: manifest.created_at,
            dir: final_dir,
            summaries: manifest.volumes,
            segs: segs.into(),
        });
        let info = pit.info(&inner.vols);
        inner.write_state().chain.push(pit);
        ops.next_id = self.id + 1;
        tracing::info!(
            pit = self.id,
            blocks = info.blocks,
            bytes = info.bytes,
            "committed PIT"
        );
        Ok(info)
    }

    /// Discards the PIT (same as dropping the writer).
    pub fn abort(self) {}
}

impl Drop for PitWriter {
    fn drop(&mut self) {
        if !self.finished {
            self.builders.clear();
            if let Err(e) = fsx::remove_tree(&self.staging) {
                tracing::debug!("leaving staging for the next open: {e}");
            }
        }
        self.inner.writer.store(false, Ordering::Release);
    }
}

/// Where PIT `name` (`ID-FIRST`) lives: its directory, or the key prefix
/// `pits/ID-FIRST` in an object store.
pub(crate) fn pit_location(inner: &Inner, name: &str) -> PathBuf {
    match &inner.backing {
        Backing::Dir => inner.path(PITS_DIR).join(name),
        Backing::Objects(_) => PathBuf::from(PITS_DIR).join(name),
    }
}

/// Commits the PIT `name` staged in the local directory `staging` (its
/// segments `segs` finished and fsynced there) with `manifest`; returns
/// the segments, read from where they now live. `consumed` is set once
/// `staging` must no longer be deleted by the caller.
///
/// Directory: 2. write the manifest, fsync it and `staging`; 3. rename
/// `staging` to `pits/NAME` — the commit point; 4. fsync `pits/`.
///
/// Object store: 2. upload every segment to `pits/NAME/VOLUME.seg`; 3. put
/// `pits/NAME/manifest.pit` — the commit point (segments without a
/// manifest are leftovers that open deletes); 4. delete `staging`.
///
/// A failure before 3 fails the operation only; from 3 on it poisons the
/// store (whether the commit point was reached is then unknown until
/// reopen).
pub(crate) fn publish(
    inner: &Inner,
    staging: &Path,
    name: &str,
    manifest: &[u8],
    segs: Vec<Segment>,
    consumed: &mut bool,
) -> Result<Vec<Segment>, ReplicaError> {
    match &inner.backing {
        Backing::Dir => {
            let final_dir = inner.path(PITS_DIR).join(name);
            fsx::write_new_file(&staging.join(MANIFEST_FILE), manifest)?; // 2
            fsx::sync_dir(staging)?;
            *consumed = true;
            fsx::rename(staging, &final_dir).map_err(|e| inner.poison(e))?; // 3
            fsx::sync_dir(&inner.path(PITS_DIR)).map_err(|e| inner.poison(e))?; // 4
            // The open descriptors followed the rename.
            Ok(segs.into_iter().map(|s| s.moved_to(&final_dir)).collect())
        }
        Backing::Objects(o) => {
            let uploaded = (|| {
                // Before anything of the PIT is written: another site that
                // took the prefix over numbers its own PITs (see
                // `CommitFence`).
                o.check_fence()?;
                for (seg, vol) in segs.iter().zip(&inner.vols) {
                    let file = format!("{}.seg", vol.spec.name);
                    let key = pit_key(name, &file);
                    let path = staging.join(&file);
                    let mut f =
                        File::open(&path).map_err(|e| ReplicaError::io("open", &path, e))?;
                    o.put_from(&key, &mut f, seg.byte_len())?; // 2
                }
                Ok::<(), ReplicaError>(())
            })();
            if let Err(e) = uploaded {
                // Best effort: open deletes manifest-less objects anyway.
                let _ = o.delete_pit(name);
                return Err(e);
            }
            // And again right before the commit point, for a takeover
            // during the upload.
            if let Err(e) = o.check_fence() {
                let _ = o.delete_pit(name);
                return Err(e);
            }
            o.put(&pit_key(name, MANIFEST_FILE), manifest)
                .map_err(|e| inner.poison(e))?; // 3
            *consumed = true;
            fsx::remove_tree(staging).map_err(|e| inner.poison(e))?; // 4
            Ok(segs
                .into_iter()
                .zip(&inner.vols)
                .map(|(s, vol)| {
                    let key = pit_key(name, &format!("{}.seg", vol.spec.name));
                    let src = SegSource::Object {
                        objects: o.clone(),
                        key: key.clone(),
                        size: s.byte_len(),
                    };
                    s.with_source(src, PathBuf::from(key))
                })
                .collect())
        }
    }
}
