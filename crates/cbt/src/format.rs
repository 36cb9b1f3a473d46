//! Byte-level encoding of the two state files (see the crate docs for the
//! layout tables). Decoders never panic on arbitrary input: they return a
//! [`FormatError`] saying what is wrong, which the tracker turns into a
//! [`crate::OpenReport::Reset`].

use offsite_durable::le;
use roaring::RoaringBitmap;

/// Why a state file (or one slot of the activity log) does not decode.
/// `what` names it: "bitmap file", "slot".
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("{what} is truncated ({len} bytes)")]
    Truncated { what: &'static str, len: usize },
    #[error("slot is truncated")]
    SlotTruncated,
    #[error("slot is empty")]
    SlotEmpty,
    #[error("{what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    #[error("{what} has a bad magic number")]
    BadMagic { what: &'static str },
    #[error("{what} has format version {version}, this build reads version {FORMAT_VERSION}")]
    Version { what: &'static str, version: u32 },
    #[error(
        "geometry mismatch: bitmap file tracks {file_nblocks} blocks of {file_block_size} bytes, \
         the volume has {nblocks} blocks of {block_size} bytes"
    )]
    Geometry {
        file_nblocks: u64,
        file_block_size: u32,
        nblocks: u64,
        block_size: u32,
    },
    #[error("bitmap file length mismatch (payload {payload} bytes, file holds {holds})")]
    Length { payload: u64, holds: usize },
    #[error("bitmap file holds an invalid roaring bitmap: {0}")]
    Bitmap(#[source] std::io::Error),
    #[error("bitmap file marks block {block}, past the end of the volume ({nblocks} blocks)")]
    PastEnd { block: u32, nblocks: u64 },
    #[error("slot claims {0} extents, more than it can hold")]
    ExtentCount(usize),
    #[error("slot holds sequence {0} which does not belong in it")]
    Sequence(u64),
    #[error("slot has an invalid extent size of {0} blocks")]
    ExtentSize(u32),
    #[error("slot holds {count} extents, more than its capacity {capacity}")]
    OverCapacity { count: usize, capacity: u32 },
    #[error(
        "activity log is truncated or padded ({0} bytes, expected two {AL_SLOT_ALIGN}-byte aligned slots)"
    )]
    AlLength(usize),
    #[error("activity log has no valid slot (slot A: {a}; slot B: {b})")]
    NoValidSlot {
        a: Box<FormatError>,
        b: Box<FormatError>,
    },
    #[error(
        "activity log is truncated: its {slot_size}-byte slots are too small for capacity {capacity}"
    )]
    SlotsTooSmall { slot_size: usize, capacity: u32 },
    #[error(
        "geometry mismatch: activity log is for {al_block_size}-byte blocks, the volume has {block_size}-byte blocks"
    )]
    AlGeometry { al_block_size: u32, block_size: u32 },
    #[error("activity log names extent {extent}, past the end of the volume ({nblocks} blocks)")]
    AlPastEnd { extent: u32, nblocks: u64 },
}

/// First 8 bytes of a bitmap file.
pub(crate) const BITMAP_MAGIC: [u8; 8] = *b"OFSCBTBM";
/// First 8 bytes of every activity-log slot.
pub(crate) const AL_MAGIC: [u8; 8] = *b"OFSCBTAL";
/// Format version of both files. `0` is never valid.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Bitmap header: magic, version, block_size, nblocks, payload_len.
pub(crate) const BITMAP_HEADER_LEN: usize = 8 + 4 + 4 + 8 + 8;
/// Activity-log slot header: magic, version, block_size, extent_blocks,
/// capacity, sequence, count.
pub(crate) const AL_HEADER_LEN: usize = 8 + 4 + 4 + 4 + 4 + 8 + 4;
/// Slots are padded to a multiple of this.
pub(crate) const AL_SLOT_ALIGN: usize = 4096;
/// Largest activity-log file we are willing to read (2 slots).
pub(crate) const AL_MAX_FILE_LEN: u64 = 64 << 20;

/// Size of one activity-log slot holding up to `capacity` extent ids.
pub(crate) fn al_slot_size(capacity: u32) -> usize {
    let need = AL_HEADER_LEN + 4 * capacity as usize + 4;
    need.div_ceil(AL_SLOT_ALIGN) * AL_SLOT_ALIGN
}

/// Encodes a bitmap file for a volume of `nblocks` blocks of `block_size`.
pub(crate) fn encode_bitmap(bitmap: &RoaringBitmap, block_size: u32, nblocks: u64) -> Vec<u8> {
    let payload_len = bitmap.serialized_size();
    let mut out = Vec::with_capacity(BITMAP_HEADER_LEN + payload_len + 4);
    out.extend_from_slice(&BITMAP_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&block_size.to_le_bytes());
    out.extend_from_slice(&nblocks.to_le_bytes());
    out.extend_from_slice(&(payload_len as u64).to_le_bytes());
    bitmap
        .serialize_into(&mut out)
        .expect("serializing into a Vec cannot fail");
    debug_assert_eq!(out.len(), BITMAP_HEADER_LEN + payload_len);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes a bitmap file, checking CRC, magic, version, geometry and that
/// every block lies inside the volume.
pub(crate) fn decode_bitmap(
    bytes: &[u8],
    block_size: u32,
    nblocks: u64,
) -> Result<RoaringBitmap, FormatError> {
    if bytes.len() < BITMAP_HEADER_LEN + 4 {
        return Err(FormatError::Truncated {
            what: "bitmap file",
            len: bytes.len(),
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(FormatError::Checksum {
            what: "bitmap file",
            stored,
            computed: actual,
        });
    }
    if body[0..8] != BITMAP_MAGIC {
        return Err(FormatError::BadMagic {
            what: "bitmap file",
        });
    }
    let version = le::u32_at(body, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            what: "bitmap file",
            version,
        });
    }
    let file_block_size = le::u32_at(body, 12);
    let file_nblocks = le::u64_at(body, 16);
    if file_block_size != block_size || file_nblocks != nblocks {
        return Err(FormatError::Geometry {
            file_nblocks,
            file_block_size,
            nblocks,
            block_size,
        });
    }
    let payload_len = le::u64_at(body, 24);
    if payload_len != (body.len() - BITMAP_HEADER_LEN) as u64 {
        return Err(FormatError::Length {
            payload: payload_len,
            holds: body.len() - BITMAP_HEADER_LEN,
        });
    }
    let bitmap =
        RoaringBitmap::deserialize_from(&body[BITMAP_HEADER_LEN..]).map_err(FormatError::Bitmap)?;
    if let Some(max) = bitmap.max()
        && u64::from(max) >= nblocks
    {
        return Err(FormatError::PastEnd {
            block: max,
            nblocks,
        });
    }
    Ok(bitmap)
}

/// One decoded activity-log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AlRecord {
    pub(crate) block_size: u32,
    pub(crate) extent_blocks: u32,
    pub(crate) capacity: u32,
    pub(crate) seq: u64,
    pub(crate) extents: Vec<u32>,
}

/// Which slot a record with sequence `seq` lives in.
pub(crate) fn al_slot_index(seq: u64) -> usize {
    (seq & 1) as usize
}

/// Encodes one activity-log slot of `slot_size` bytes (zero-padded).
pub(crate) fn encode_al_slot(rec: &AlRecord, slot_size: usize) -> Vec<u8> {
    assert!(rec.extents.len() <= rec.capacity as usize);
    assert!(al_slot_size(rec.capacity) <= slot_size);
    let mut out = Vec::with_capacity(slot_size);
    out.extend_from_slice(&AL_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&rec.block_size.to_le_bytes());
    out.extend_from_slice(&rec.extent_blocks.to_le_bytes());
    out.extend_from_slice(&rec.capacity.to_le_bytes());
    out.extend_from_slice(&rec.seq.to_le_bytes());
    out.extend_from_slice(&(rec.extents.len() as u32).to_le_bytes());
    for e in &rec.extents {
        out.extend_from_slice(&e.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.resize(slot_size, 0);
    out
}

/// Decodes the slot at `index` (0 = A, 1 = B).
pub(crate) fn decode_al_slot(buf: &[u8], index: usize) -> Result<AlRecord, FormatError> {
    if buf.len() < AL_HEADER_LEN + 4 {
        return Err(FormatError::SlotTruncated);
    }
    if buf[0..8].iter().all(|&b| b == 0) {
        return Err(FormatError::SlotEmpty);
    }
    let count = le::u32_at(buf, 32) as usize;
    let end = AL_HEADER_LEN
        .checked_add(count.saturating_mul(4))
        .filter(|&end| end + 4 <= buf.len())
        .ok_or(FormatError::ExtentCount(count))?;
    let stored = le::u32_at(buf, end);
    let actual = crc32c::crc32c(&buf[..end]);
    if stored != actual {
        return Err(FormatError::Checksum {
            what: "slot",
            stored,
            computed: actual,
        });
    }
    if buf[0..8] != AL_MAGIC {
        return Err(FormatError::BadMagic { what: "slot" });
    }
    let version = le::u32_at(buf, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version {
            what: "slot",
            version,
        });
    }
    let rec = AlRecord {
        block_size: le::u32_at(buf, 12),
        extent_blocks: le::u32_at(buf, 16),
        capacity: le::u32_at(buf, 20),
        seq: le::u64_at(buf, 24),
        extents: (0..count)
            .map(|i| le::u32_at(buf, AL_HEADER_LEN + 4 * i))
            .collect(),
    };
    if rec.seq == 0 || al_slot_index(rec.seq) != index {
        return Err(FormatError::Sequence(rec.seq));
    }
    if rec.extent_blocks == 0 || !rec.extent_blocks.is_power_of_two() {
        return Err(FormatError::ExtentSize(rec.extent_blocks));
    }
    if count > rec.capacity as usize {
        return Err(FormatError::OverCapacity {
            count,
            capacity: rec.capacity,
        });
    }
    Ok(rec)
}

/// Decodes a whole activity-log file (two equal slots) and returns the valid
/// record with the highest sequence number, plus the slot size.
pub(crate) fn decode_al_file(bytes: &[u8]) -> Result<(AlRecord, usize), FormatError> {
    let len = bytes.len();
    if len == 0 || !len.is_multiple_of(2 * AL_SLOT_ALIGN) {
        return Err(FormatError::AlLength(len));
    }
    let slot_size = len / 2;
    let a = decode_al_slot(&bytes[..slot_size], 0);
    let b = decode_al_slot(&bytes[slot_size..], 1);
    let rec = match (a, b) {
        (Ok(a), Ok(b)) => {
            if a.seq > b.seq {
                a
            } else {
                b
            }
        }
        (Ok(a), Err(_)) => a,
        (Err(_), Ok(b)) => b,
        (Err(ea), Err(eb)) => {
            return Err(FormatError::NoValidSlot {
                a: Box::new(ea),
                b: Box::new(eb),
            });
        }
    };
    if al_slot_size(rec.capacity) > slot_size {
        return Err(FormatError::SlotsTooSmall {
            slot_size,
            capacity: rec.capacity,
        });
    }
    Ok((rec, slot_size))
}
