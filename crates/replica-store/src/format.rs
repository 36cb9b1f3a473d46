//! Byte-level encoding of `store.meta`, `manifest.pit` and the segment
//! header and index entries (layout tables in the crate docs). Decoders
//! never panic on arbitrary input: they return a [`FormatError`] saying
//! what is wrong (the store reports it as [`crate::ReplicaError::Corrupt`]).

use offsite_durable::le;

use crate::VolumeSpec;

/// First 8 bytes of `store.meta`.
pub(crate) const META_MAGIC: [u8; 8] = *b"OFSRPMET";
/// First 8 bytes of `manifest.pit`.
pub(crate) const MANIFEST_MAGIC: [u8; 8] = *b"OFSRPMAN";
/// First 8 bytes of a segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"OFSRPSEG";
/// Format version of all three files. `0` is never valid.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// Largest `store.meta` / `manifest.pit` we are willing to read.
pub(crate) const MAX_SMALL_FILE: u64 = 1 << 20;
/// Most volumes a group may have.
pub(crate) const MAX_VOLUMES: usize = 1024;
/// Longest volume name, in bytes.
pub(crate) const MAX_VOLUME_NAME: usize = 64;
/// Longest PIT name, in bytes.
pub(crate) const MAX_PIT_NAME: usize = 255;
/// Longest `created_at`, in bytes.
pub(crate) const MAX_CREATED_AT: usize = 64;

/// Segment header length (padded with zeroes to one block on disk).
pub(crate) const SEG_HEADER_LEN: usize = 64;
/// Length of one index entry.
pub(crate) const ENTRY_LEN: usize = 48;
/// Length of the trailer (crc32c of the index).
pub(crate) const TRAILER_LEN: usize = 4;
/// Index entry kind: the block's bytes are in data slot `slot`.
pub(crate) const KIND_DATA: u32 = 1;
/// Index entry kind: the block is all zeroes and has no data slot.
pub(crate) const KIND_ZERO: u32 = 2;
/// `slot` of a zero entry.
pub(crate) const ZERO_SLOT: u32 = u32::MAX;

/// Name tag in a manifest: the PIT has no name.
const NAME_ABSENT: u8 = 1;
/// Name tag in a manifest: a name follows.
const NAME_PRESENT: u8 = 2;

/// Contents of `store.meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) uuid: [u8; 16],
    /// The newest PIT id merged into the base (0: none).
    pub(crate) base_through: u64,
    pub(crate) volumes: Vec<VolumeSpec>,
}

/// Per-volume summary of a PIT's segment, in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VolSummary {
    /// Index entries (changed blocks, data and zero).
    pub(crate) entries: u64,
    /// Entries with a data slot.
    pub(crate) data_blocks: u64,
    /// BLAKE3 of the segment's 64-byte header followed by its index.
    pub(crate) digest: [u8; 32],
}

/// Contents of `manifest.pit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub(crate) uuid: [u8; 16],
    pub(crate) id: u64,
    /// Oldest committed PIT id whose changes this PIT's segments hold.
    pub(crate) first: u64,
    pub(crate) name: Option<String>,
    pub(crate) created_at: String,
    pub(crate) volumes: Vec<VolSummary>,
}

/// The fixed header of a segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegHeader {
    pub(crate) block_size: u32,
    pub(crate) uuid: [u8; 16],
    pub(crate) pit: u64,
    pub(crate) volume: u32,
    pub(crate) slots: u32,
    pub(crate) entries: u64,
}

/// One index entry of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) block: u64,
    /// `ZERO_SLOT` for a zero block.
    pub(crate) slot: u32,
    pub(crate) hash: [u8; 32],
}

impl Entry {
    pub(crate) fn is_zero(&self) -> bool {
        self.slot == ZERO_SLOT
    }
}

/// Why a file's bytes do not decode. `what` names the file or structure
/// ("store.meta", "manifest", "segment header").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FormatError {
    /// Shorter than its fixed part.
    #[error("{what} is truncated ({len} bytes)")]
    Truncated { what: &'static str, len: usize },
    /// The stored crc32c is not that of the bytes.
    #[error("{what} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        what: &'static str,
        stored: u32,
        computed: u32,
    },
    /// Not one of our files.
    #[error("{what} has a bad magic number")]
    BadMagic { what: &'static str },
    /// Written by another format version.
    #[error("{what} has format version {version}, this build reads version {FORMAT_VERSION}")]
    Version { what: &'static str, version: u32 },
    /// A volume count outside 1..=MAX_VOLUMES.
    #[error("{what} lists {count} volumes")]
    VolumeCount { what: &'static str, count: usize },
    /// Bytes after the last field.
    #[error("{what} has {count} unexpected trailing bytes")]
    TrailingBytes { what: &'static str, count: usize },
    /// A field decodes but fails validation.
    #[error("{what}: {source}")]
    Invalid {
        what: &'static str,
        #[source]
        source: crate::InvalidInput,
    },
    /// A manifest's PIT range is empty or starts at 0.
    #[error("manifest has an invalid PIT range {first}..={id}")]
    PitRange { first: u64, id: u64 },
    /// A manifest's name tag is neither absent nor present.
    #[error("manifest has an invalid name tag {tag}")]
    NameTag { tag: u8 },
    /// A manifest's creation time is longer than MAX_CREATED_AT.
    #[error("manifest has a {len}-byte creation time")]
    CreatedAtLength { len: usize },
    /// A manifest's volume summary has more data blocks than entries.
    #[error("manifest claims {data_blocks} data blocks out of {entries} entries")]
    DataBlocks { data_blocks: u64, entries: u64 },
    /// A segment header's reserved bytes are not zero.
    #[error("segment header has non-zero reserved bytes")]
    Reserved,
    /// An index entry whose kind and slot disagree.
    #[error("index entry for block {block} has kind {kind} and slot {slot:#x}")]
    Entry { block: u64, kind: u32, slot: u32 },
    /// A length-prefixed field runs past the end.
    #[error("file ends in the middle of a field")]
    ShortField,
    /// A text field is not UTF-8.
    #[error("a text field is not UTF-8")]
    NotUtf8,
}

/// Appends `bytes`' crc32c.
fn seal(mut out: Vec<u8>) -> Vec<u8> {
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Checks and strips the trailing crc32c.
fn unseal<'a>(bytes: &'a [u8], what: &'static str, min: usize) -> Result<&'a [u8], FormatError> {
    if bytes.len() < min + 4 {
        return Err(FormatError::Truncated {
            what,
            len: bytes.len(),
        });
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    let actual = crc32c::crc32c(body);
    if stored != actual {
        return Err(FormatError::Checksum {
            what,
            stored,
            computed: actual,
        });
    }
    Ok(body)
}

fn check_magic_version(
    body: &[u8],
    magic: &[u8; 8],
    what: &'static str,
) -> Result<(), FormatError> {
    if body[0..8] != *magic {
        return Err(FormatError::BadMagic { what });
    }
    let version = le::u32_at(body, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::Version { what, version });
    }
    Ok(())
}

/// Encodes `store.meta`.
pub(crate) fn encode_meta(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + meta.volumes.len() * 32);
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(meta.volumes.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta.uuid);
    out.extend_from_slice(&meta.base_through.to_le_bytes());
    for v in &meta.volumes {
        out.extend_from_slice(&(v.name.len() as u16).to_le_bytes());
        out.extend_from_slice(v.name.as_bytes());
        out.extend_from_slice(&v.size_bytes.to_le_bytes());
        out.extend_from_slice(&v.block_size.to_le_bytes());
    }
    seal(out)
}

/// Decodes and validates `store.meta`.
pub(crate) fn decode_meta(bytes: &[u8]) -> Result<Meta, FormatError> {
    let body = unseal(bytes, "store.meta", 40)?;
    check_magic_version(body, &META_MAGIC, "store.meta")?;
    let count = le::u32_at(body, 12) as usize;
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&body[16..32]);
    let base_through = le::u64_at(body, 32);
    let mut r = Reader { b: body, at: 40 };
    if count == 0 || count > MAX_VOLUMES {
        return Err(FormatError::VolumeCount {
            what: "store.meta",
            count,
        });
    }
    let mut volumes = Vec::with_capacity(count);
    for _ in 0..count {
        let len = r.u16()? as usize;
        let name = r.string(len)?;
        let size_bytes = r.u64()?;
        let block_size = r.u32()?;
        volumes.push(VolumeSpec {
            name,
            size_bytes,
            block_size,
        });
    }
    if r.at != body.len() {
        return Err(FormatError::TrailingBytes {
            what: "store.meta",
            count: body.len() - r.at,
        });
    }
    crate::validate_volumes(&volumes).map_err(|source| FormatError::Invalid {
        what: "store.meta",
        source,
    })?;
    Ok(Meta {
        uuid,
        base_through,
        volumes,
    })
}

/// Encodes `manifest.pit`.
pub(crate) fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + m.volumes.len() * 48);
    out.extend_from_slice(&MANIFEST_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(m.volumes.len() as u32).to_le_bytes());
    out.extend_from_slice(&m.uuid);
    out.extend_from_slice(&m.id.to_le_bytes());
    out.extend_from_slice(&m.first.to_le_bytes());
    match &m.name {
        None => {
            out.extend_from_slice(&[NAME_ABSENT, 0]);
            out.extend_from_slice(&0u16.to_le_bytes());
        }
        Some(name) => {
            out.extend_from_slice(&[NAME_PRESENT, 0]);
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&(m.created_at.len() as u16).to_le_bytes());
    out.extend_from_slice(m.created_at.as_bytes());
    for v in &m.volumes {
        out.extend_from_slice(&v.entries.to_le_bytes());
        out.extend_from_slice(&v.data_blocks.to_le_bytes());
        out.extend_from_slice(&v.digest);
    }
    seal(out)
}

/// Decodes and validates `manifest.pit` (identity checks are the caller's).
pub(crate) fn decode_manifest(bytes: &[u8]) -> Result<Manifest, FormatError> {
    let body = unseal(bytes, "manifest", 52)?;
    check_magic_version(body, &MANIFEST_MAGIC, "manifest")?;
    let count = le::u32_at(body, 12) as usize;
    if count == 0 || count > MAX_VOLUMES {
        return Err(FormatError::VolumeCount {
            what: "manifest",
            count,
        });
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&body[16..32]);
    let id = le::u64_at(body, 32);
    let first = le::u64_at(body, 40);
    if id == 0 || first == 0 || first > id {
        return Err(FormatError::PitRange { first, id });
    }
    let tag = body[48];
    let name_len = le::u16_at(body, 50) as usize;
    let mut r = Reader { b: body, at: 52 };
    let name = match tag {
        NAME_ABSENT if name_len == 0 && body[49] == 0 => None,
        NAME_PRESENT if body[49] == 0 => {
            let name = r.string(name_len)?;
            crate::validate_pit_name(&name).map_err(|source| FormatError::Invalid {
                what: "manifest",
                source,
            })?;
            Some(name)
        }
        _ => return Err(FormatError::NameTag { tag }),
    };
    let created_len = r.u16()? as usize;
    if created_len > MAX_CREATED_AT {
        return Err(FormatError::CreatedAtLength { len: created_len });
    }
    let created_at = r.string(created_len)?;
    let mut volumes = Vec::with_capacity(count);
    for _ in 0..count {
        let entries = r.u64()?;
        let data_blocks = r.u64()?;
        let digest: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
        if data_blocks > entries {
            return Err(FormatError::DataBlocks {
                data_blocks,
                entries,
            });
        }
        volumes.push(VolSummary {
            entries,
            data_blocks,
            digest,
        });
    }
    if r.at != body.len() {
        return Err(FormatError::TrailingBytes {
            what: "manifest",
            count: body.len() - r.at,
        });
    }
    Ok(Manifest {
        uuid,
        id,
        first,
        name,
        created_at,
        volumes,
    })
}

/// Encodes the 64-byte segment header.
pub(crate) fn encode_seg_header(h: &SegHeader) -> [u8; SEG_HEADER_LEN] {
    let mut out = [0u8; SEG_HEADER_LEN];
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&h.block_size.to_le_bytes());
    out[16..32].copy_from_slice(&h.uuid);
    out[32..40].copy_from_slice(&h.pit.to_le_bytes());
    out[40..44].copy_from_slice(&h.volume.to_le_bytes());
    out[44..48].copy_from_slice(&h.slots.to_le_bytes());
    out[48..56].copy_from_slice(&h.entries.to_le_bytes());
    // 56..60 reserved, zero.
    let crc = crc32c::crc32c(&out[..60]);
    out[60..64].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the 64-byte segment header.
pub(crate) fn decode_seg_header(b: &[u8]) -> Result<SegHeader, FormatError> {
    if b.len() < SEG_HEADER_LEN {
        return Err(FormatError::Truncated {
            what: "segment header",
            len: b.len(),
        });
    }
    let stored = le::u32_at(b, 60);
    let actual = crc32c::crc32c(&b[..60]);
    if stored != actual {
        return Err(FormatError::Checksum {
            what: "segment header",
            stored,
            computed: actual,
        });
    }
    check_magic_version(b, &SEGMENT_MAGIC, "segment")?;
    if le::u32_at(b, 56) != 0 {
        return Err(FormatError::Reserved);
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[16..32]);
    Ok(SegHeader {
        block_size: le::u32_at(b, 12),
        uuid,
        pit: le::u64_at(b, 32),
        volume: le::u32_at(b, 40),
        slots: le::u32_at(b, 44),
        entries: le::u64_at(b, 48),
    })
}

/// Appends one 48-byte index entry.
pub(crate) fn encode_entry(e: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(&e.block.to_le_bytes());
    let kind = if e.is_zero() { KIND_ZERO } else { KIND_DATA };
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&e.slot.to_le_bytes());
    out.extend_from_slice(&e.hash);
}

/// Decodes one 48-byte index entry (kind/slot consistency only).
pub(crate) fn decode_entry(b: &[u8]) -> Result<Entry, FormatError> {
    let block = le::u64_at(b, 0);
    let kind = le::u32_at(b, 8);
    let slot = le::u32_at(b, 12);
    match kind {
        KIND_DATA if slot != ZERO_SLOT => {}
        KIND_ZERO if slot == ZERO_SLOT => {}
        _ => {
            return Err(FormatError::Entry { block, kind, slot });
        }
    }
    Ok(Entry {
        block,
        slot,
        hash: b[16..48].try_into().expect("32 bytes"),
    })
}

/// The hash stored in an encoded entry.
pub(crate) fn entry_hash(b: &[u8]) -> [u8; 32] {
    b[16..48].try_into().expect("32 bytes")
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or(FormatError::ShortField)?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, FormatError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn string(&mut self, n: usize) -> Result<String, FormatError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| FormatError::NotUtf8)
    }
}
