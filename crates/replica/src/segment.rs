//! Delta segments: the immutable per-PIT, per-volume files (reader
//! [`Segment`]) and the staging-side writer ([`SegmentBuilder`]).
//!
//! A segment is `[header, padded to one block][data slots][index][trailer]`
//! (see the crate docs). In memory a loaded segment keeps only its sorted
//! block numbers (`u64`) and their data slots (`u32`): 12 bytes per changed
//! block. Per-block BLAKE3 hashes stay on disk and are read with the data.

use std::collections::HashMap;
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::format::{
    ENTRY_LEN, Entry, SEG_HEADER_LEN, SegHeader, TRAILER_LEN, VolSummary, ZERO_SLOT, decode_entry,
    decode_seg_header, encode_entry, encode_seg_header, entry_hash,
};
use crate::{ReplicaError, fsx};

/// Pending data is written out once this many bytes are buffered.
const WRITE_BUFFER: usize = 4 << 20;

/// Hasher for block numbers (a multiplicative mix; SipHash is needlessly
/// slow for a map keyed by trusted `u64`s).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BlockHasher(u64);

impl Hasher for BlockHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type BlockMap<V> = HashMap<u64, V, BuildHasherDefault<BlockHasher>>;

/// What a segment must be to belong where it was found.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Expect<'a> {
    pub(crate) uuid: &'a [u8; 16],
    pub(crate) pit: u64,
    pub(crate) volume: u32,
    pub(crate) block_size: u32,
    pub(crate) nblocks: u64,
    pub(crate) summary: &'a VolSummary,
}

/// A committed, immutable segment, open for reading.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
    block_size: u32,
    /// Changed blocks, strictly ascending.
    blocks: Vec<u64>,
    /// Data slot of each entry of `blocks` (`ZERO_SLOT`: a zero block).
    slots: Vec<u32>,
    /// Byte offset of the index.
    index_off: u64,
    data_blocks: u64,
}

/// A run of consecutive entries of one segment with the same storage: zero
/// blocks with consecutive block numbers (one hole), or data in consecutive
/// slots (one `pread`; the block numbers may have gaps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Run {
    pub(crate) pos: usize,
    pub(crate) len: usize,
    pub(crate) zero: bool,
}

impl Segment {
    /// Opens and checks a segment: header CRC and identity, exact length,
    /// index CRC, BLAKE3 digest of header + index against the manifest, and
    /// the index entries themselves (sorted, in range). Block data is
    /// checked on every read and by [`Segment::verify_data`].
    pub(crate) fn load(path: &Path, ex: &Expect<'_>) -> Result<Segment, ReplicaError> {
        let corrupt = |why: String| ReplicaError::corrupt(path, why);
        let file = File::open(path).map_err(|e| ReplicaError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ReplicaError::io("stat", path, e))?
            .len();
        if len < SEG_HEADER_LEN as u64 {
            return Err(corrupt(format!("segment is truncated ({len} bytes)")));
        }
        let mut hb = [0u8; SEG_HEADER_LEN];
        file.read_exact_at(&mut hb, 0)
            .map_err(|e| ReplicaError::io("read", path, e))?;
        let h = decode_seg_header(&hb).map_err(corrupt)?;
        if h.uuid != *ex.uuid {
            return Err(corrupt("segment belongs to another replica store".into()));
        }
        if h.pit != ex.pit || h.volume != ex.volume || h.block_size != ex.block_size {
            return Err(corrupt(format!(
                "segment is for PIT {} volume #{} with {}-byte blocks, expected PIT {} volume #{} with {}-byte blocks",
                h.pit, h.volume, h.block_size, ex.pit, ex.volume, ex.block_size
            )));
        }
        if h.entries != ex.summary.entries {
            return Err(corrupt(format!(
                "segment has {} entries, its manifest says {}",
                h.entries, ex.summary.entries
            )));
        }
        let bs = u64::from(h.block_size);
        let index_off = bs * (1 + u64::from(h.slots));
        let index_len = h
            .entries
            .checked_mul(ENTRY_LEN as u64)
            .filter(|&l| l <= ex.nblocks.saturating_mul(ENTRY_LEN as u64))
            .ok_or_else(|| corrupt(format!("segment claims {} entries", h.entries)))?;
        let want = index_off + index_len + TRAILER_LEN as u64;
        if len != want {
            return Err(corrupt(format!(
                "segment is {len} bytes, expected {want} (truncated or torn)"
            )));
        }
        let mut index = vec![0u8; index_len as usize + TRAILER_LEN];
        file.read_exact_at(&mut index, index_off)
            .map_err(|e| ReplicaError::io("read", path, e))?;
        let (index, trailer) = index.split_at(index_len as usize);
        let stored = u32::from_le_bytes(trailer.try_into().expect("4 bytes"));
        let actual = crc32c::crc32c(index);
        if stored != actual {
            return Err(corrupt(format!(
                "segment index checksum mismatch (stored {stored:#010x}, computed {actual:#010x})"
            )));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update(&hb);
        hasher.update(index);
        if *hasher.finalize().as_bytes() != ex.summary.digest {
            return Err(corrupt(
                "segment header and index do not match the digest in the manifest".into(),
            ));
        }
        let n = h.entries as usize;
        let mut blocks = Vec::with_capacity(n);
        let mut slots = Vec::with_capacity(n);
        let mut data_blocks = 0u64;
        for chunk in index.chunks_exact(ENTRY_LEN) {
            let e = decode_entry(chunk).map_err(&corrupt)?;
            if e.block >= ex.nblocks {
                return Err(corrupt(format!(
                    "index names block {}, past the end of the volume ({} blocks)",
                    e.block, ex.nblocks
                )));
            }
            if blocks.last().is_some_and(|&last| last >= e.block) {
                return Err(corrupt(format!(
                    "index is not strictly ascending at block {}",
                    e.block
                )));
            }
            if !e.is_zero() {
                if e.slot >= h.slots {
                    return Err(corrupt(format!(
                        "index entry for block {} points past the data ({} slots)",
                        e.block, h.slots
                    )));
                }
                data_blocks += 1;
            }
            blocks.push(e.block);
            slots.push(e.slot);
        }
        if data_blocks != ex.summary.data_blocks {
            return Err(corrupt(format!(
                "segment has {data_blocks} data blocks, its manifest says {}",
                ex.summary.data_blocks
            )));
        }
        Ok(Segment {
            path: path.to_path_buf(),
            file,
            block_size: h.block_size,
            blocks,
            slots,
            index_off,
            data_blocks,
        })
    }

    /// Number of entries (changed blocks).
    pub(crate) fn len(&self) -> usize {
        self.blocks.len()
    }

    pub(crate) fn data_blocks(&self) -> u64 {
        self.data_blocks
    }

    /// Block number of entry `pos`.
    pub(crate) fn block(&self, pos: usize) -> u64 {
        self.blocks[pos]
    }

    /// Whether entry `pos` is a zero block.
    pub(crate) fn is_zero(&self, pos: usize) -> bool {
        self.slots[pos] == ZERO_SLOT
    }

    /// Positions of the entries whose block lies in `lo..hi`.
    pub(crate) fn range(&self, lo: u64, hi: u64) -> Range<usize> {
        let a = self.blocks.partition_point(|&b| b < lo);
        let b = a + self.blocks[a..].partition_point(|&b| b < hi);
        a..b
    }

    /// Splits `positions` into runs of equal storage (see [`Run`]), each
    /// at most `max` entries long.
    pub(crate) fn runs(&self, positions: Range<usize>, max: usize) -> Vec<Run> {
        let mut out: Vec<Run> = Vec::new();
        for pos in positions {
            let zero = self.is_zero(pos);
            if let Some(r) = out.last_mut() {
                let prev = r.pos + r.len - 1;
                let joins = r.len < max
                    && r.zero == zero
                    && if zero {
                        self.blocks[pos] == self.blocks[prev] + 1
                    } else {
                        self.slots[pos] == self.slots[prev].wrapping_add(1)
                    };
                if joins {
                    r.len += 1;
                    continue;
                }
            }
            out.push(Run { pos, len: 1, zero });
        }
        out
    }

    /// The stored BLAKE3 hashes of entries `pos..pos + n`.
    pub(crate) fn hashes(&self, pos: usize, n: usize) -> Result<Vec<[u8; 32]>, ReplicaError> {
        let mut buf = vec![0u8; n * ENTRY_LEN];
        self.file
            .read_exact_at(&mut buf, self.index_off + (pos * ENTRY_LEN) as u64)
            .map_err(|e| ReplicaError::io("read", &self.path, e))?;
        Ok(buf.chunks_exact(ENTRY_LEN).map(entry_hash).collect())
    }

    /// Reads a data run (consecutive slots) into `out` (`run.len` blocks)
    /// and checks every block against its BLAKE3 hash. Returns the hashes.
    pub(crate) fn read_run(&self, run: Run, out: &mut [u8]) -> Result<Vec<[u8; 32]>, ReplicaError> {
        debug_assert!(!run.zero);
        let bs = self.block_size as usize;
        debug_assert_eq!(out.len(), run.len * bs);
        let off = u64::from(self.block_size) * (1 + u64::from(self.slots[run.pos]));
        self.file
            .read_exact_at(out, off)
            .map_err(|e| ReplicaError::io("read", &self.path, e))?;
        let hashes = self.hashes(run.pos, run.len)?;
        for (i, (data, want)) in out.chunks_exact(bs).zip(&hashes).enumerate() {
            if blake3::hash(data).as_bytes() != want {
                return Err(ReplicaError::corrupt(
                    &self.path,
                    format!(
                        "data of block {} fails its BLAKE3 check",
                        self.blocks[run.pos + i]
                    ),
                ));
            }
        }
        Ok(hashes)
    }

    /// Reads and checks every data block (full BLAKE3 verification).
    pub(crate) fn verify_data(&self) -> Result<(), ReplicaError> {
        let bs = self.block_size as usize;
        let max = (WRITE_BUFFER / bs).max(1);
        let mut buf = vec![0u8; max * bs];
        for run in self.runs(0..self.len(), max) {
            if !run.zero {
                self.read_run(run, &mut buf[..run.len * bs])?;
            }
        }
        Ok(())
    }
}

/// Writes one segment in the staging area. Data is appended in arrival
/// order into slots; rewriting a block reuses its slot. Nothing is durable
/// until [`SegmentBuilder::finish`].
#[derive(Debug)]
pub(crate) struct SegmentBuilder {
    path: PathBuf,
    file: File,
    block_size: u32,
    volume: u32,
    /// Block → (slot or `ZERO_SLOT`, hash).
    map: BlockMap<(u32, [u8; 32])>,
    next_slot: u32,
    /// Data of slots `buf_slot..next_slot`, not yet written.
    buf: Vec<u8>,
    buf_slot: u32,
}

impl SegmentBuilder {
    /// Creates the segment file (`create_new`).
    pub(crate) fn create(
        path: PathBuf,
        block_size: u32,
        volume: u32,
    ) -> Result<Self, ReplicaError> {
        let file = fsx::create_new(&path)?;
        Ok(SegmentBuilder {
            path,
            file,
            block_size,
            volume,
            map: BlockMap::default(),
            next_slot: 0,
            buf: Vec::new(),
            buf_slot: 0,
        })
    }

    fn slot_offset(&self, slot: u32) -> u64 {
        u64::from(self.block_size) * (1 + u64::from(slot))
    }

    /// Records `block` as `data` (exactly one block) with BLAKE3 `hash`.
    pub(crate) fn put_data(
        &mut self,
        block: u64,
        data: &[u8],
        hash: [u8; 32],
    ) -> Result<(), ReplicaError> {
        debug_assert_eq!(data.len(), self.block_size as usize);
        let bs = self.block_size as usize;
        if let Some(&(slot, _)) = self.map.get(&block)
            && slot != ZERO_SLOT
        {
            if slot >= self.buf_slot {
                let at = (slot - self.buf_slot) as usize * bs;
                self.buf[at..at + bs].copy_from_slice(data);
            } else {
                fsx::write_at(&self.file, &self.path, data, self.slot_offset(slot))?;
            }
            self.map.insert(block, (slot, hash));
            return Ok(());
        }
        if self.next_slot == ZERO_SLOT {
            return Err(ReplicaError::invalid(
                "a PIT can hold at most 4294967294 data blocks per volume",
            ));
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        self.buf.extend_from_slice(data);
        self.map.insert(block, (slot, hash));
        if self.buf.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    /// Records `block` as all zeroes (no data slot).
    pub(crate) fn put_zero(&mut self, block: u64, zero_hash: [u8; 32]) {
        self.map.insert(block, (ZERO_SLOT, zero_hash));
    }

    fn flush(&mut self) -> Result<(), ReplicaError> {
        if !self.buf.is_empty() {
            let off = self.slot_offset(self.buf_slot);
            fsx::write_at(&self.file, &self.path, &self.buf, off)?;
            self.buf.clear();
        }
        self.buf_slot = self.next_slot;
        Ok(())
    }

    /// Writes index, trailer and header, fsyncs the file, and returns the
    /// open segment (known under `final_dir`, where its directory will be
    /// renamed) with its manifest summary.
    ///
    /// Ordering: 1. data, 2. index + trailer, 3. header, 4. fsync.
    pub(crate) fn finish(
        mut self,
        uuid: &[u8; 16],
        pit: u64,
        final_dir: &Path,
    ) -> Result<(Segment, VolSummary), ReplicaError> {
        self.flush()?; // 1
        let mut entries: Vec<Entry> = self
            .map
            .drain()
            .map(|(block, (slot, hash))| Entry { block, slot, hash })
            .collect();
        entries.sort_unstable_by_key(|e| e.block);
        let mut index = Vec::with_capacity(entries.len() * ENTRY_LEN + TRAILER_LEN);
        for e in &entries {
            encode_entry(e, &mut index);
        }
        let crc = crc32c::crc32c(&index);
        let index_off = self.slot_offset(self.next_slot);
        let header = encode_seg_header(&SegHeader {
            block_size: self.block_size,
            uuid: *uuid,
            pit,
            volume: self.volume,
            slots: self.next_slot,
            entries: entries.len() as u64,
        });
        let mut hasher = blake3::Hasher::new();
        hasher.update(&header);
        hasher.update(&index);
        let digest = *hasher.finalize().as_bytes();
        index.extend_from_slice(&crc.to_le_bytes());
        fsx::write_at(&self.file, &self.path, &index, index_off)?; // 2
        let mut head = vec![0u8; self.block_size as usize];
        head[..SEG_HEADER_LEN].copy_from_slice(&header);
        fsx::write_at(&self.file, &self.path, &head, 0)?; // 3
        fsx::sync_data(&self.file, &self.path)?; // 4
        let data_blocks = entries.iter().filter(|e| !e.is_zero()).count() as u64;
        let summary = VolSummary {
            entries: entries.len() as u64,
            data_blocks,
            digest,
        };
        let path = match self.path.file_name() {
            Some(name) => final_dir.join(name),
            None => self.path.clone(),
        };
        let seg = Segment {
            path,
            file: self.file,
            block_size: self.block_size,
            blocks: entries.iter().map(|e| e.block).collect(),
            slots: entries.iter().map(|e| e.slot).collect(),
            index_off,
            data_blocks,
        };
        Ok((seg, summary))
    }
}
