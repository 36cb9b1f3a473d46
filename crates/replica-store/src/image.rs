//! [`CheckpointImage`]: the group's volumes as of a checkpoint, read-only.
//!
//! An image is a PIT's state (or the base's) plus an overlay: for every
//! block the journal wrote between that state and the checkpoint, where
//! its newest version lies in a journal file (or that it is zero now), and
//! its BLAKE3. Building one reads the journal entries once, from the state
//! to the checkpoint, checking every record's crc32c and hashing the data
//! (~56 bytes of memory per block written); nothing is copied or written,
//! so it works while the write log holds the store's PIT writer and
//! leaves the chain as it is. Reads check each journal block against its
//! hash, as reads from segments do.
//!
//! Why a view and not "a PIT at the checkpoint": the chain tiles the
//! history (each PIT holds the changes since the one before), so a PIT for
//! a past instant has no place in it, and the write log holds the store's
//! only PIT writer while a stream runs.
//!
//! **What it holds on to.** The image keeps the PITs of its state and the
//! journal files open, so retention merging those PITs into their
//! successors or pruning those files does not disturb it (the open
//! descriptors outlive the names). Merging into the base changes the base
//! in place, so it is refused ([`ReplicaError::InUse`]) for a PIT newer
//! than the state of a live image; [`ReplicaStore::journal_pins`] names
//! the PITs retention must keep for that, and an image that is dropped
//! releases its state.

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::chain::{CHUNK_BYTES, Inner, Pit, hash_blocks, hashes_view, next_data_view, read_view};
use crate::history::{ScanFrom, Views, scan, with_journal};
use crate::journal::{CheckpointId, CheckpointInfo};
use crate::{PitId, RECORD_HEADER_LEN, ReplicaError, ReplicaStore, VolumeSpec};

/// Offset of a block that is zero now (no data in the journal).
const ZERO: u64 = u64::MAX;

/// Where a block's version at the checkpoint lies.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// Index into the image's files.
    file: u32,
    /// Byte offset in that file, or [`ZERO`].
    off: u64,
    hash: [u8; 32],
}

/// The overlay of one volume: blocks ascending, and where each one lies.
#[derive(Debug, Default)]
struct Overlay {
    blocks: Vec<u64>,
    locs: Vec<Loc>,
}

impl Overlay {
    /// Positions of the entries whose block lies in `lo..hi`.
    fn range(&self, lo: u64, hi: u64) -> Range<usize> {
        let a = self.blocks.partition_point(|&b| b < lo);
        let b = a + self.blocks[a..].partition_point(|&b| b < hi);
        a..b
    }
}

/// The group's volumes as of a checkpoint (see the module docs). `Send +
/// Sync`: one image may serve an export's readers and a clone's flattening
/// at once.
#[derive(Debug)]
pub struct CheckpointImage {
    inner: Arc<Inner>,
    info: CheckpointInfo,
    /// The state it starts from: a PIT id, or `base_through`.
    anchor: u64,
    /// The PITs of that state (empty: the base).
    view: Vec<Arc<Pit>>,
    files: Vec<(PathBuf, File)>,
    vols: Vec<Overlay>,
}

/// Releases a state registered for an image, unless the image took it.
struct PinGuard<'a> {
    inner: &'a Inner,
    anchor: Option<u64>,
}

impl Drop for PinGuard<'_> {
    fn drop(&mut self) {
        if let Some(a) = self.anchor {
            self.inner.unpin(a);
        }
    }
}

impl ReplicaStore {
    /// The image of every volume at checkpoint `id` (see
    /// [`ReplicaStore::list_checkpoints`] for the ones that exist):
    /// [`ReplicaError::NoSuchCheckpoint`], or
    /// [`ReplicaError::CheckpointUnreachable`] when its history was folded
    /// into a PIT or the base; [`ReplicaError::Corrupt`] when a journal
    /// record on the way fails its checks.
    pub fn checkpoint_image(&self, id: CheckpointId) -> Result<CheckpointImage, ReplicaError> {
        let inner = self.inner.clone();
        // Loaded before the change lock is taken: a first load scans files.
        with_journal(&inner, |_| ())?;
        let (plan, view) = {
            // Under the change lock: no merge into the base comes between
            // choosing the state and registering it.
            let ops = inner.lock_ops();
            let views = Views::snapshot(&inner);
            let plan = with_journal(&inner, |j| j.plan(id, &views))??;
            let view = if plan.anchor == ops.base_through {
                Vec::new()
            } else {
                let st = inner.read_state();
                st.chain[..=st.position(PitId(plan.anchor))?].to_vec()
            };
            inner.pin(plan.anchor);
            (plan, view)
        };
        let mut guard = PinGuard {
            inner: &inner,
            anchor: Some(plan.anchor),
        };
        let mut files = Vec::with_capacity(plan.parts.len());
        let mut maps: Vec<HashMap<u64, Loc>> = vec![HashMap::new(); inner.vols.len()];
        let mut hashes = Vec::new();
        for (k, part) in plan.parts.iter().enumerate() {
            let file =
                File::open(&part.path).map_err(|e| ReplicaError::io("open", &part.path, e))?;
            let s = scan(
                &inner.specs,
                &file,
                &part.path,
                ScanFrom {
                    limit: Some(part.limit),
                    ..ScanFrom::journal(part.start)
                },
                &mut |rec, at| {
                    let v = usize::from(rec.volume);
                    let vol = &inner.vols[v];
                    let bs = vol.bs();
                    hashes.clear();
                    match rec.data {
                        Some(d) => hash_blocks(d, bs, &vol.zero_hash, &mut hashes),
                        None => hashes.resize(rec.count as usize, vol.zero_hash),
                    }
                    for (i, h) in hashes.iter().enumerate() {
                        let off = if rec.data.is_none() || *h == vol.zero_hash {
                            ZERO
                        } else {
                            at + (RECORD_HEADER_LEN + i * bs) as u64
                        };
                        let loc = Loc {
                            file: k as u32,
                            off,
                            hash: *h,
                        };
                        maps[v].insert(rec.first + i as u64, loc);
                    }
                    Ok(())
                },
            )?;
            if s.len != part.limit {
                return Err(ReplicaError::corrupt(
                    &part.path,
                    format!(
                        "its entries end at byte {}, before byte {} where checkpoint {id} needs them",
                        s.len, part.limit
                    ),
                ));
            }
            files.push((part.path.clone(), file));
        }
        let vols = maps
            .into_iter()
            .map(|m| {
                let mut e: Vec<(u64, Loc)> = m.into_iter().collect();
                e.sort_unstable_by_key(|x| x.0);
                Overlay {
                    blocks: e.iter().map(|x| x.0).collect(),
                    locs: e.into_iter().map(|x| x.1).collect(),
                }
            })
            .collect();
        guard.anchor = None;
        Ok(CheckpointImage {
            inner: inner.clone(),
            info: plan.info,
            anchor: plan.anchor,
            view,
            files,
            vols,
        })
    }
}

impl CheckpointImage {
    /// The checkpoint.
    pub fn info(&self) -> &CheckpointInfo {
        &self.info
    }

    /// The PIT whose state the image starts from (`None`: the first
    /// base); it may be older than [`CheckpointInfo::follows`] when that
    /// PIT was merged away.
    pub fn starts_from(&self) -> Option<PitId> {
        PitId::new(self.anchor)
    }

    /// Blocks the image takes from the journal (all volumes).
    pub fn journal_blocks(&self) -> u64 {
        self.vols.iter().map(|o| o.blocks.len() as u64).sum()
    }

    /// The group's volumes, in order.
    pub fn volumes(&self) -> &[VolumeSpec] {
        &self.inner.specs
    }

    /// The volume's index, after checking `range` (bytes) lies inside it.
    fn volume(&self, volume: &str, offset: u64, len: u64) -> Result<usize, ReplicaError> {
        let v = self.inner.vol_index(volume)?;
        let size = self.inner.vols[v].spec.size_bytes;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(ReplicaError::OutOfRange {
                volume: volume.to_string(),
                what: format!("bytes {offset}+{len}"),
                size,
            });
        }
        Ok(v)
    }

    /// Reads `buf.len()` bytes at `offset` of `volume` as of the
    /// checkpoint. Any offset and length inside the volume.
    pub fn read(&self, volume: &str, offset: u64, buf: &mut [u8]) -> Result<(), ReplicaError> {
        let v = self.volume(volume, offset, buf.len() as u64)?;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.inner.vols[v].bs() as u64;
        let end = offset + buf.len() as u64;
        let (b0, b1) = (offset / bs, end.div_ceil(bs));
        let ov = &self.vols[v];
        let r = ov.range(b0, b1);
        let (mut b, mut p) = (b0, r.start);
        let mut scratch = Vec::new();
        while b < b1 {
            let (lo, hi, from_journal) = if p < r.end && ov.blocks[p] == b {
                // Entries for consecutive blocks, at most a chunk of them.
                let max = (CHUNK_BYTES as u64 / bs).max(1) as usize;
                let mut q = p + 1;
                while q < r.end && q - p < max && ov.blocks[q] == ov.blocks[q - 1] + 1 {
                    q += 1;
                }
                (b, b + (q - p) as u64, Some(p..q))
            } else {
                (b, if p < r.end { ov.blocks[p] } else { b1 }, None)
            };
            // The request's bytes in blocks lo..hi.
            let (s, e) = ((lo * bs).max(offset), (hi * bs).min(end));
            let dst = &mut buf[(s - offset) as usize..(e - offset) as usize];
            match from_journal {
                None => read_view(&self.inner, &self.view, v, s, dst)?,
                Some(pos) => {
                    scratch.resize(((hi - lo) * bs) as usize, 0);
                    self.fill(v, pos.clone(), &mut scratch)?;
                    let at = (s - lo * bs) as usize;
                    dst.copy_from_slice(&scratch[at..at + dst.len()]);
                    p = pos.end;
                }
            }
            b = hi;
        }
        Ok(())
    }

    /// Reads the overlay entries `pos` (consecutive blocks) into `out`,
    /// one `pread` per stretch of consecutive offsets in one file, and
    /// checks every block against its hash.
    fn fill(&self, v: usize, pos: Range<usize>, out: &mut [u8]) -> Result<(), ReplicaError> {
        let ov = &self.vols[v];
        let bs = self.inner.vols[v].bs();
        let mut i = pos.start;
        while i < pos.end {
            let at = (i - pos.start) * bs;
            let loc = ov.locs[i];
            if loc.off == ZERO {
                out[at..at + bs].fill(0);
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < pos.end
                && ov.locs[j].file == loc.file
                && ov.locs[j].off == loc.off + ((j - i) * bs) as u64
            {
                j += 1;
            }
            let (path, file) = &self.files[loc.file as usize];
            let dst = &mut out[at..at + (j - i) * bs];
            file.read_exact_at(dst, loc.off)
                .map_err(|e| ReplicaError::io("read", path, e))?;
            for (k, block) in dst.chunks_exact(bs).enumerate() {
                if blake3::hash(block).as_bytes() != &ov.locs[i + k].hash {
                    return Err(ReplicaError::corrupt(
                        path,
                        format!(
                            "journal data of block {} of volume {} fails its BLAKE3 check",
                            ov.blocks[i + k],
                            self.inner.vols[v].spec.name
                        ),
                    ));
                }
            }
            i = j;
        }
        Ok(())
    }

    /// The first byte at or after `offset` of `volume` that may not be
    /// zero, or `None` when only zeroes follow (as
    /// [`ReplicaStore::next_data`]: it may say "data" early, never late).
    pub fn next_data(&self, volume: &str, offset: u64) -> Result<Option<u64>, ReplicaError> {
        let v = self.inner.vol_index(volume)?;
        let vol = &self.inner.vols[v];
        if offset >= vol.spec.size_bytes {
            return Ok(None);
        }
        let bs = vol.bs() as u64;
        let below = next_data_view(&self.inner, &self.view, v, offset)?;
        let ov = &self.vols[v];
        let journal = ov
            .range(offset / bs, vol.nblocks)
            .find(|&p| ov.locs[p].off != ZERO)
            .map(|p| (ov.blocks[p] * bs).max(offset));
        Ok(match (below, journal) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// BLAKE3 of each block in `blocks` of `volume` as of the checkpoint.
    pub fn block_hashes(
        &self,
        volume: &str,
        blocks: Range<u64>,
    ) -> Result<Vec<[u8; 32]>, ReplicaError> {
        let v = self.inner.vol_index(volume)?;
        let vol = &self.inner.vols[v];
        if blocks.start > blocks.end || blocks.end > vol.nblocks {
            return Err(ReplicaError::OutOfRange {
                volume: volume.to_string(),
                what: format!("blocks {}..{}", blocks.start, blocks.end),
                size: vol.spec.size_bytes,
            });
        }
        let ov = &self.vols[v];
        let r = ov.range(blocks.start, blocks.end);
        let mut out = Vec::with_capacity((blocks.end - blocks.start) as usize);
        let mut b = blocks.start;
        for p in r {
            if ov.blocks[p] > b {
                out.extend(hashes_view(&self.inner, &self.view, v, b..ov.blocks[p])?);
            }
            out.push(ov.locs[p].hash);
            b = ov.blocks[p] + 1;
        }
        if b < blocks.end {
            out.extend(hashes_view(&self.inner, &self.view, v, b..blocks.end)?);
        }
        Ok(out)
    }
}

impl Drop for CheckpointImage {
    fn drop(&mut self) {
        self.inner.unpin(self.anchor);
    }
}
