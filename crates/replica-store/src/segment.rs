//! Delta segments: the immutable per-PIT, per-volume files (reader
//! [`Segment`]) and the staging-side writer ([`SegmentBuilder`]).
//!
//! A segment is `[header, padded to one block][data slots][index][trailer]`
//! (see the crate docs). In memory a loaded segment keeps only its sorted
//! block numbers (`u64`) and their data slots (`u32`): 12 bytes per changed
//! block. Per-block BLAKE3 hashes stay on disk and are read with the data.
//!
//! # Data slots are written with `O_DIRECT`
//!
//! [`SegmentBuilder`] writes the data slots through a second descriptor of
//! the segment file opened with `O_DIRECT` (`recover::open_direct`), not
//! through the page cache. Why: on a VM with ballooned memory, writing into
//! *new* page-cache pages costs ~9 µs of CPU per 4 KiB (measured: a fresh
//! 512 MiB file costs 9.3 µs per 4 KiB the first time, 0.5 µs when
//! overwriting cached pages), the replica of a synchronous group writes
//! every 4 KiB guest write into a segment, and segment data is rarely read
//! back soon (reads verify it from disk anyway).
//!
//! What goes where:
//! * `O_DIRECT` wants the file offset, the length and the memory of a write
//!   aligned (`DIRECT_ALIGN` = 4 KiB covers every common device). The
//!   write buffer is allocated 4 KiB-aligned once per builder, and the data
//!   of its first slot is placed at the slot's file offset modulo 4 KiB, so
//!   every whole 4 KiB file page of a flush is aligned memory too.
//! * A flush writes its whole 4 KiB file pages with `O_DIRECT` and the
//!   partial pages at either end through the page cache. Slot *i* is at
//!   `bs × (1 + i)`, fixed by the format (readers compute it; the header
//!   cannot be padded to 4 KiB without a format version change), so with
//!   blocks of 4 KiB or more every page is whole and everything goes direct;
//!   with smaller blocks the first file page (shared with the header) and
//!   the page where a flush ends are written buffered.
//! * An in-place rewrite of an already flushed slot is buffered: a sync
//!   group's log rewrites hot blocks many times within one PIT, and a
//!   direct rewrite waits for the disk on the replica's stream thread.
//! * Header, index and trailer ([`SegmentBuilder::finish`]) are written
//!   buffered, as before.
//! * Fallback: where the file system refuses `O_DIRECT` (`open` fails, e.g.
//!   tmpfs on older kernels) everything is written buffered; where it
//!   accepts the descriptor but refuses an aligned write (`EINVAL`), that
//!   write and all later ones of the builder are buffered.
//!
//! Mixing both paths on one file page is safe in this order only: direct
//! first, buffered later (the buffered partial-page write reads the page
//! back from the disk — the direct `pwrite` has completed — and modifies
//! it). The reverse (a buffered write left in the cache, then a direct
//! write of the same page) would rely on the kernel writing back and
//! invalidating the cached page around the direct write; it never happens
//! here: a page written direct is one that no write touched before (the
//! whole pages of a flush hold only slots new in that flush), the pages
//! written buffered by a flush (its partial ends, page 0 with the header,
//! the page where the index starts) are never written direct later, and
//! once a builder falls back to buffered it stays there.
//!
//! Durability ordering is unchanged (data, index + trailer, header, then
//! one `fdatasync`): the `fdatasync` of the buffered descriptor flushes the
//! inode's data whichever descriptor wrote it, including direct writes that
//! still sit in the device's volatile cache (`O_DIRECT` without `O_DSYNC`
//! promises nothing about that cache). Reading segments back stays
//! buffered; a direct write drops the cached pages of its range, so reads
//! see the written data.

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

/// `O_DIRECT` alignment of file offsets, lengths and memory: the largest
/// logical block size of common devices (as `chain::DIRECT_ALIGN`).
const DIRECT_ALIGN: usize = 4096;

/// A zero-filled heap buffer of a fixed length whose first byte is
/// `DIRECT_ALIGN`-aligned: an aligned window of a slightly larger `Vec`
/// that never grows, so the window never moves (no unsafe code).
#[derive(Debug)]
struct AlignedBuf {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> AlignedBuf {
        let mem = vec![0u8; len + DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(start < DIRECT_ALIGN, "cannot align a buffer");
        AlignedBuf { mem, start, len }
    }

    fn get(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    fn get_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + self.len]
    }
}

/// Writes `data` (aligned: offset, length and memory) at `offset` through
/// `direct`, or through `file` when there is no direct descriptor. Where
/// the file system refuses the aligned direct write (`EINVAL`), writes it
/// through `file` and drops `direct` for good (see the module docs: after
/// a direct write, buffered writes of the same pages are safe). Returns
/// whether the write went direct.
fn write_maybe_direct(
    direct: &mut Option<File>,
    file: &File,
    path: &Path,
    data: &[u8],
    offset: u64,
) -> Result<bool, ReplicaError> {
    debug_assert!(offset.is_multiple_of(DIRECT_ALIGN as u64));
    debug_assert!(data.len().is_multiple_of(DIRECT_ALIGN));
    debug_assert!(data.as_ptr().addr().is_multiple_of(DIRECT_ALIGN));
    if let Some(d) = direct {
        match fsx::write_at(d, path, data, offset) {
            Ok(()) => return Ok(true),
            Err(e) if e.source.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                tracing::warn!(
                    "{}: the file system refuses aligned O_DIRECT writes ({e}); writing through the page cache",
                    path.display()
                );
                *direct = None;
            }
            Err(e) => return Err(e.into()),
        }
    }
    fsx::write_at(file, path, data, offset)?;
    Ok(false)
}

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

/// Where a loaded segment's bytes are read from.
#[derive(Debug)]
pub(crate) enum SegSource {
    /// A file of a directory store (or of the local staging area).
    File(File),
    /// An object of `size` bytes, read through the store's cache.
    Object {
        objects: crate::backing::Objects,
        key: String,
        size: u64,
    },
}

impl SegSource {
    /// Reads exactly `buf.len()` bytes at `offset` (`path`: for messages).
    pub(crate) fn read_at(
        &self,
        path: &Path,
        buf: &mut [u8],
        offset: u64,
    ) -> Result<(), ReplicaError> {
        match self {
            SegSource::File(f) => f
                .read_exact_at(buf, offset)
                .map_err(|e| ReplicaError::io("read", path, e)),
            SegSource::Object { objects, key, size } => objects.read(key, *size, offset, buf),
        }
    }

    /// [`SegSource::read_at`] of bytes read once (the header and index at
    /// load): one ranged read of exactly them, bypassing the cache.
    fn read_once(&self, path: &Path, buf: &mut [u8], offset: u64) -> Result<(), ReplicaError> {
        match self {
            SegSource::File(_) => self.read_at(path, buf, offset),
            SegSource::Object { objects, key, .. } => {
                let got = objects
                    .store
                    .get_range(key, offset, buf.len() as u64)
                    .map_err(|e| crate::backing::obj_err("get", key, e))?;
                if got.len() != buf.len() {
                    return Err(ReplicaError::corrupt(
                        path,
                        format!("a read of {} bytes returned {}", buf.len(), got.len()),
                    ));
                }
                buf.copy_from_slice(&got);
                Ok(())
            }
        }
    }
}

/// A committed, immutable segment, open for reading.
#[derive(Debug)]
pub(crate) struct Segment {
    /// The file, or the object's key (in messages).
    path: PathBuf,
    src: SegSource,
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
        let file = File::open(path).map_err(|e| ReplicaError::io("open", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| ReplicaError::io("stat", path, e))?
            .len();
        Segment::load_from(SegSource::File(file), path, len, ex)
    }

    /// [`Segment::load`] of a segment of `len` bytes read through `src`
    /// (`path`: the file or the object's key, for messages).
    pub(crate) fn load_from(
        src: SegSource,
        path: &Path,
        len: u64,
        ex: &Expect<'_>,
    ) -> Result<Segment, ReplicaError> {
        let corrupt = |why: String| ReplicaError::corrupt(path, why);
        if len < SEG_HEADER_LEN as u64 {
            return Err(corrupt(format!("segment is truncated ({len} bytes)")));
        }
        let mut hb = [0u8; SEG_HEADER_LEN];
        src.read_once(path, &mut hb, 0)?;
        let h = decode_seg_header(&hb).map_err(|e| corrupt(e.to_string()))?;
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
        src.read_once(path, &mut index, index_off)?;
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
            let e = decode_entry(chunk).map_err(|e| corrupt(e.to_string()))?;
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
            src,
            block_size: h.block_size,
            blocks,
            slots,
            index_off,
            data_blocks,
        })
    }

    /// The segment's length in bytes (exact, checked at load).
    pub(crate) fn byte_len(&self) -> u64 {
        self.index_off + (self.blocks.len() * ENTRY_LEN + TRAILER_LEN) as u64
    }

    /// The same segment, read from `src` from now on (`path`: for
    /// messages), once its bytes were copied there.
    pub(crate) fn with_source(self, src: SegSource, path: PathBuf) -> Segment {
        Segment { src, path, ..self }
    }

    /// The same segment, its file now in directory `dir` (renamed with
    /// its directory; the descriptor stays valid).
    pub(crate) fn moved_to(self, dir: &Path) -> Segment {
        let path = match self.path.file_name() {
            Some(name) => dir.join(name),
            None => self.path.clone(),
        };
        Segment { path, ..self }
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
        self.src.read_at(
            &self.path,
            &mut buf,
            self.index_off + (pos * ENTRY_LEN) as u64,
        )?;
        Ok(buf.chunks_exact(ENTRY_LEN).map(entry_hash).collect())
    }

    /// Reads a data run (consecutive slots) into `out` (`run.len` blocks)
    /// and checks every block against its BLAKE3 hash. Returns the hashes.
    pub(crate) fn read_run(&self, run: Run, out: &mut [u8]) -> Result<Vec<[u8; 32]>, ReplicaError> {
        debug_assert!(!run.zero);
        let bs = self.block_size as usize;
        debug_assert_eq!(out.len(), run.len * bs);
        let off = u64::from(self.block_size) * (1 + u64::from(self.slots[run.pos]));
        self.src.read_at(&self.path, out, off)?;
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
/// until [`SegmentBuilder::finish`]. Data slots are written with `O_DIRECT`
/// where possible (see the module docs).
#[derive(Debug)]
pub(crate) struct SegmentBuilder {
    path: PathBuf,
    file: File,
    /// The same file opened with `O_DIRECT` (`None`: the file system
    /// refuses it; everything goes through `file`).
    direct: Option<File>,
    block_size: u32,
    volume: u32,
    /// Block → data slot or `ZERO_SLOT`. Hashes are kept by slot
    /// (`hashes`), so an entry is 16 bytes instead of 48: the map of a
    /// sync or continuous group's open PIT takes one insert per written
    /// block, and its growth copies every entry.
    map: BlockMap<u32>,
    /// BLAKE3 of each data slot's final content, by slot. The entries of
    /// slots still in the write buffer whose `unhashed` flag is set are
    /// not computed yet (see [`SegmentBuilder::put_data`]).
    hashes: Vec<[u8; 32]>,
    /// For each slot of the write buffer (`buf_slot + i`): its hash is
    /// computed when the buffer is flushed, from the buffered bytes.
    unhashed: Vec<bool>,
    /// The hash of an all-zero block (given by `put_zero`).
    zero_hash: [u8; 32],
    next_slot: u32,
    /// Pending data is written out once this many bytes are buffered
    /// (`WRITE_BUFFER` unless [`SegmentBuilder::set_flush_bytes`]).
    flush_at: usize,
    /// Write buffer (`flush_at` bytes of slots after a lead of less than
    /// one page, allocated with the first data block):
    /// data of slots `buf_slot..next_slot`, not yet written, at
    /// `buf_lead..buf_lead + buf_len`. Byte `i` of the buffer belongs at
    /// file offset `slot_offset(buf_slot) - buf_lead + i`: memory and file
    /// offsets agree modulo `DIRECT_ALIGN`.
    buf: Option<AlignedBuf>,
    /// `slot_offset(buf_slot) % DIRECT_ALIGN` (non-zero only for blocks
    /// smaller than `DIRECT_ALIGN`).
    buf_lead: usize,
    buf_len: usize,
    buf_slot: u32,
    /// Bytes written through `direct`.
    direct_bytes: u64,
}

impl SegmentBuilder {
    /// Creates the segment file (`create_new`).
    pub(crate) fn create(
        path: PathBuf,
        block_size: u32,
        volume: u32,
    ) -> Result<Self, ReplicaError> {
        let file = fsx::create_new(&path)?;
        let direct = crate::recover::open_direct(&path);
        let mut b = SegmentBuilder {
            path,
            file,
            direct,
            block_size,
            volume,
            map: BlockMap::default(),
            hashes: Vec::new(),
            unhashed: Vec::new(),
            zero_hash: [0; 32],
            next_slot: 0,
            buf: None,
            buf_lead: 0,
            buf_len: 0,
            buf_slot: 0,
            direct_bytes: 0,
            flush_at: WRITE_BUFFER,
        };
        b.buf_lead = b.lead_of(0);
        Ok(b)
    }

    /// Writes pending data out once `bytes` (at least one block) are
    /// buffered instead of `WRITE_BUFFER`. Only before the first block.
    pub(crate) fn set_flush_bytes(&mut self, bytes: usize) {
        debug_assert!(self.buf.is_none(), "set before the first block");
        self.flush_at = bytes.max(self.block_size as usize);
    }

    /// File offset of `slot` modulo `DIRECT_ALIGN`.
    fn lead_of(&self, slot: u32) -> usize {
        (self.slot_offset(slot) % DIRECT_ALIGN as u64) as usize
    }

    /// The write buffer, allocated on first use.
    fn buf_mut(&mut self) -> &mut [u8] {
        self.buf
            .get_or_insert_with(|| AlignedBuf::new(self.flush_at + DIRECT_ALIGN))
            .get_mut()
    }

    fn slot_offset(&self, slot: u32) -> u64 {
        u64::from(self.block_size) * (1 + u64::from(slot))
    }

    /// Records `block` as `data` (exactly one block) with its BLAKE3
    /// `hash`, or `None`: the builder computes it, once, from the final
    /// content of the slot. While the slot is in the write buffer that is
    /// deferred to the flush, so a block rewritten while buffered (a hot
    /// block of a sync or continuous group's log) is hashed once, not once
    /// per write; a rewrite of a flushed slot is hashed at once, from
    /// `data`. Either way the hash is of the bytes this call was given
    /// last (the buffer holds them unchanged until the flush).
    pub(crate) fn put_data(
        &mut self,
        block: u64,
        data: &[u8],
        hash: Option<[u8; 32]>,
    ) -> Result<(), ReplicaError> {
        debug_assert_eq!(data.len(), self.block_size as usize);
        let bs = self.block_size as usize;
        if let Some(&slot) = self.map.get(&block)
            && slot != ZERO_SLOT
        {
            if slot >= self.buf_slot {
                let i = (slot - self.buf_slot) as usize;
                let at = self.buf_lead + i * bs;
                self.buf_mut()[at..at + bs].copy_from_slice(data);
                match hash {
                    Some(h) => {
                        self.hashes[slot as usize] = h;
                        self.unhashed[i] = false;
                    }
                    None => self.unhashed[i] = true,
                }
            } else {
                self.rewrite_flushed(slot, data)?;
                self.hashes[slot as usize] = hash.unwrap_or_else(|| *blake3::hash(data).as_bytes());
            }
            return Ok(());
        }
        if self.next_slot == ZERO_SLOT {
            return Err(ReplicaError::invalid(
                "a PIT can hold at most 4294967294 data blocks per volume",
            ));
        }
        let slot = self.next_slot;
        self.next_slot += 1;
        let at = self.buf_lead + self.buf_len;
        self.buf_mut()[at..at + bs].copy_from_slice(data);
        self.buf_len += bs;
        self.hashes.push(hash.unwrap_or_default());
        self.unhashed.push(hash.is_none());
        self.map.insert(block, slot);
        if self.buf_len >= self.flush_at {
            self.flush()?;
        }
        Ok(())
    }

    /// Records `block` as all zeroes (no data slot).
    pub(crate) fn put_zero(&mut self, block: u64, zero_hash: [u8; 32]) {
        self.zero_hash = zero_hash;
        self.map.insert(block, ZERO_SLOT);
    }

    /// Computes the hashes the write buffer's slots still lack, from the
    /// buffered bytes (before they are written out).
    fn hash_buffered(&mut self) {
        let bs = self.block_size as usize;
        if let Some(buf) = &self.buf {
            let buf = buf.get();
            for (i, _) in self.unhashed.iter().enumerate().filter(|(_, u)| **u) {
                let at = self.buf_lead + i * bs;
                self.hashes[self.buf_slot as usize + i] =
                    *blake3::hash(&buf[at..at + bs]).as_bytes();
            }
        }
        self.unhashed.clear();
    }

    /// Rewrites the data of `slot`, already written to the file, through
    /// the page cache: a sync group's log rewrites hot blocks over and over
    /// within one PIT, and a direct write would make each such rewrite wait
    /// for the disk (64–74 µs measured, against ~1 µs into a cached page)
    /// on the replica's one stream thread. Buffered after direct is the
    /// allowed order (see the module docs), and a rewritten slot's page is
    /// never written direct again: flushes only cover new slots.
    fn rewrite_flushed(&mut self, slot: u32, data: &[u8]) -> Result<(), ReplicaError> {
        Ok(fsx::write_at(
            &self.file,
            &self.path,
            data,
            self.slot_offset(slot),
        )?)
    }

    /// Writes out the buffered slots: the whole 4 KiB file pages among them
    /// through `direct` (aligned memory, see `buf`), the partial pages at
    /// either end (blocks smaller than 4 KiB only) through the page cache.
    fn flush(&mut self) -> Result<(), ReplicaError> {
        self.hash_buffered();
        if self.buf_len > 0 {
            let (lead, end) = (self.buf_lead, self.buf_lead + self.buf_len);
            // File offset of byte 0 of the buffer (a page boundary).
            let base = self.slot_offset(self.buf_slot) - lead as u64;
            let buf = self.buf.as_ref().expect("holds data").get();
            // Whole pages: `lo..hi`; none without a direct descriptor.
            let (mut lo, mut hi) = (
                lead.next_multiple_of(DIRECT_ALIGN),
                end / DIRECT_ALIGN * DIRECT_ALIGN,
            );
            if self.direct.is_none() || lo >= hi {
                (lo, hi) = (end, end);
            }
            if lead < lo {
                fsx::write_at(&self.file, &self.path, &buf[lead..lo], base + lead as u64)?;
            }
            if lo < hi {
                let data = &buf[lo..hi];
                if write_maybe_direct(
                    &mut self.direct,
                    &self.file,
                    &self.path,
                    data,
                    base + lo as u64,
                )? {
                    self.direct_bytes += data.len() as u64;
                }
            }
            if hi < end {
                fsx::write_at(&self.file, &self.path, &buf[hi..end], base + hi as u64)?;
            }
            self.buf_len = 0;
        }
        self.buf_slot = self.next_slot;
        self.buf_lead = self.lead_of(self.next_slot);
        Ok(())
    }

    /// Writes index, trailer and header, fsyncs the file, and returns the
    /// open segment (known under `final_dir`, where its directory will be
    /// renamed) with its manifest summary.
    ///
    /// Ordering: 1. data, 2. index + trailer, 3. header, 4. fsync.
    ///
    /// Steps 2 and 3 write through the page cache; no page they touch was
    /// or will be written direct (the header's page and the index's first
    /// page, when shared with data, were written buffered by `flush`). The
    /// `fdatasync` of step 4, on the buffered descriptor, also flushes what
    /// the direct descriptor wrote (same inode) from the device's cache.
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
            .map(|(block, slot)| Entry {
                block,
                slot,
                hash: if slot == ZERO_SLOT {
                    self.zero_hash
                } else {
                    self.hashes[slot as usize]
                },
            })
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
        tracing::debug!(
            "{}: {} of {} data bytes written with O_DIRECT",
            self.path.display(),
            self.direct_bytes,
            u64::from(self.next_slot) * u64::from(self.block_size)
        );
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
            src: SegSource::File(self.file),
            block_size: self.block_size,
            blocks: entries.iter().map(|e| e.block).collect(),
            slots: entries.iter().map(|e| e.slot).collect(),
            index_off,
            data_blocks,
        };
        Ok((seg, summary))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn content(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Builds a segment of three and a half write buffers (of `flush`
    /// bytes) with rewrites of flushed and buffered slots, in `$TMPDIR` (a
    /// disk file system, where `O_DIRECT` is real), checks that every block
    /// reads back, also after a fresh load, and returns whether a direct
    /// descriptor was open, the number of slots and the bytes written
    /// direct.
    fn build_and_read_back(bs: u32, use_direct: bool, flush: usize) -> (bool, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.seg");
        let mut b = SegmentBuilder::create(path.clone(), bs, 3).unwrap();
        if flush != WRITE_BUFFER {
            b.set_flush_bytes(flush);
        }
        if !use_direct {
            b.direct = None;
        }
        let bsz = bs as usize;
        let n = (flush.max(bsz) / bsz * 7 / 2) as u64;
        let nblocks = 4 * n;
        let mut want: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut seed = 0;
        let mut put = |b: &mut SegmentBuilder, block: u64| {
            seed += 1;
            let data = content(bsz, seed);
            b.put_data(block, &data, None).unwrap();
            want.insert(block, data);
        };
        for i in 0..n {
            // Scattered block numbers, arrival order = slot order.
            put(&mut b, (i * 7919) % nblocks);
            match i % 13 {
                3 if i > 2 => put(&mut b, ((i - 2) * 7919) % nblocks), // buffered
                7 => put(&mut b, ((i / 3) * 7919) % nblocks),          // mostly flushed
                11 => put(&mut b, 0),                                  // slot 0: the header's page
                _ => {}
            }
        }
        let zh = *blake3::hash(&vec![0u8; bsz]).as_bytes();
        for i in (0..n).step_by(101) {
            let block = (i * 7919) % nblocks;
            b.put_zero(block, zh);
            want.insert(block, vec![0u8; bsz]);
        }
        b.flush().unwrap(); // what `finish` does first, to see the count
        let (direct, direct_bytes) = (b.direct.is_some(), b.direct_bytes);
        let slots = u64::from(b.next_slot);
        let uuid = [7u8; 16];
        let (seg, summary) = b.finish(&uuid, 9, dir.path()).unwrap();
        let check = |seg: &Segment| {
            assert_eq!(seg.len(), want.len());
            let mut out = vec![0u8; 64 * bsz];
            for run in seg.runs(0..seg.len(), 64) {
                for p in run.pos..run.pos + run.len {
                    let w = &want[&seg.block(p)];
                    assert_eq!(seg.is_zero(p), w.iter().all(|&x| x == 0));
                }
                if run.zero {
                    continue;
                }
                let out = &mut out[..run.len * bsz];
                seg.read_run(run, out).unwrap();
                for (k, data) in out.chunks_exact(bsz).enumerate() {
                    let block = seg.block(run.pos + k);
                    assert!(data == &want[&block][..], "block {block} (bs {bs})");
                }
            }
            seg.verify_data().unwrap();
        };
        check(&seg);
        drop(seg);
        let seg = Segment::load(
            &path,
            &Expect {
                uuid: &uuid,
                pit: 9,
                volume: 3,
                block_size: bs,
                nblocks,
                summary: &summary,
            },
        )
        .unwrap();
        check(&seg);
        (direct, slots, direct_bytes)
    }

    /// Data goes direct (all of it with blocks of 4 KiB or more; all but
    /// the partial pages at the ends of each flush with smaller ones) and
    /// reads back exactly.
    #[test]
    fn data_slots_are_written_direct_and_read_back() {
        for bs in [512, 1024, 4096, 8192, 1 << 20] {
            let (direct, slots, direct_bytes) = build_and_read_back(bs, true, WRITE_BUFFER);
            let data = slots * u64::from(bs);
            eprintln!("bs {bs}: O_DIRECT {direct}, {direct_bytes} of {data} data bytes direct");
            if direct {
                let flushes = data.div_ceil(WRITE_BUFFER as u64);
                let partial = if bs < 4096 { flushes * 2 * 4096 } else { 0 };
                assert!(direct_bytes + partial >= data, "bs {bs}");
            } else {
                eprintln!("the file system of $TMPDIR refuses O_DIRECT: tested buffered only");
            }
        }
    }

    /// Smaller flushes (the open PIT of a sync group's log) read back the
    /// same, including blocks larger than the flush size.
    #[test]
    fn small_flushes_read_back() {
        for (bs, flush) in [(512, 64 << 10), (4096, 512 << 10), (1 << 20, 512 << 10)] {
            let (direct, slots, direct_bytes) = build_and_read_back(bs, true, flush);
            if direct && bs >= 4096 {
                assert_eq!(direct_bytes, slots * u64::from(bs), "bs {bs}");
            }
        }
    }

    /// Without a direct descriptor everything goes through the page cache.
    #[test]
    fn without_o_direct_everything_is_buffered() {
        for bs in [512, 4096] {
            let (direct, _, direct_bytes) = build_and_read_back(bs, false, WRITE_BUFFER);
            assert!(!direct);
            assert_eq!(direct_bytes, 0);
        }
    }
}
