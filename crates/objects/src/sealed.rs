//! [`Sealed`]: client-side encryption of any [`ObjectStore`], and the
//! group key it uses ([`GroupKey`]).
//!
//! Replica data leaves the protected site encrypted and authenticated: the
//! owner of the bucket (or of the replica directory) sees ciphertext and
//! sizes only, and any change to an object is detected when it is read
//! ([`ObjectError::Tampered`]; wrong bytes are never returned). `Sealed`
//! implements [`ObjectStore`] itself, so the replica store above it is the
//! same with or without encryption.
//!
//! # Sealed object format, version 1
//!
//! An object is a 64-byte header followed by its plaintext cut into chunks
//! of `chunk_size` bytes (65536; the last one shorter, and a single empty
//! chunk for an empty object), each sealed with XChaCha20-Poly1305 and
//! followed by its 16-byte tag. Integers are little-endian.
//!
//! | offset | size | field                                                                 |
//! |--------|------|-----------------------------------------------------------------------|
//! | 0      | 8    | magic `OFSSEAL\0`                                                      |
//! | 8      | 2    | format version (1; 0 is invalid)                                       |
//! | 10     | 1    | cipher (1 = XChaCha20-Poly1305; 0 is invalid)                          |
//! | 11     | 1    | reserved, 0                                                            |
//! | 12     | 4    | chunk size: plaintext bytes per chunk (1 ..= 16 MiB)                   |
//! | 16     | 8    | plaintext length                                                      |
//! | 24     | 16   | key id: the first 16 bytes of BLAKE3 `derive_key("offsite group key id v1", key)` |
//! | 40     | 16   | nonce prefix, random per object                                        |
//! | 56     | 4    | reserved, 0                                                            |
//! | 60     | 4    | CRC32C of bytes 0..60                                                  |
//! | 64     | …    | chunk 0 ciphertext, tag 0, chunk 1 ciphertext, tag 1, …                 |
//!
//! Chunk `i` is sealed with the group key, the nonce `nonce prefix ‖ i`
//! (24 bytes: 16 + `i` as u64) and the associated data
//! `header (64 bytes) ‖ key length (u16) ‖ object key ‖ i (u64) ‖ final (u8: 1 for the last chunk, else 0)`.
//! So a chunk moved to another index or object, an object renamed to
//! another key, a truncated object (the last chunk left is not marked
//! final, or the header's length disagrees) and a changed header all fail
//! authentication. The random prefix makes every write of an object use
//! fresh nonces (2^-64 collision odds per pair of objects under a key at
//! 2^64 objects, far beyond any replica).
//!
//! The stored size is `64 + length + 16 × max(1, ⌈length / chunk_size⌉)`.
//! [`ObjectStore::list`] and [`ObjectStore::head`] report plaintext sizes
//! derived from the stored sizes by inverting that formula with the v1
//! chunk size (no extra request per object); a stored size no v1 object
//! can have is [`ObjectError::Tampered`]. Reads check the header against
//! the stored size, so a derived size is never trusted further than that.
//!
//! # Key
//!
//! A [`GroupKey`] is 32 random bytes. It is kept in a file readable by the
//! site only (`0600`), as one line of text, the same as its export:
//! `offsite-key-1:<43 characters of base64url>:<CRC32C of the key, 8 hex>`.
//! Its [`KeyId`] (16 bytes, shown as 32 hex characters) is stored in every
//! object's header, so an object sealed with another key is reported as
//! [`ObjectError::WrongKey`], not as damage. Without the key the data is
//! unrecoverable: there is no other copy and no back door.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use zeroize::Zeroize as _;

use crate::{ObjectError, ObjectInfo, ObjectStore};

/// The header's first bytes.
pub const MAGIC: [u8; 8] = *b"OFSSEAL\0";
/// The format written.
pub const FORMAT_VERSION: u16 = 1;
/// Cipher tag: XChaCha20-Poly1305.
const CIPHER_XCHACHA20_POLY1305: u8 = 1;
/// Header size.
pub const HEADER_LEN: usize = 64;
/// Tag size per chunk.
pub const TAG_LEN: usize = 16;
/// Plaintext bytes per chunk in objects written by this version: small
/// enough that a ranged read opens little more than it returns, large
/// enough that the tags cost 0.02 %.
pub const CHUNK_SIZE: u32 = 64 << 10;
/// The largest chunk size a reader accepts (bounds its buffers).
const MAX_CHUNK_SIZE: u32 = 16 << 20;
/// Key-id derivation context (BLAKE3 `derive_key`).
const KEY_ID_CONTEXT: &str = "offsite group key id v1";
/// The export line's prefix (its version).
const EXPORT_PREFIX: &str = "offsite-key-1";

/// A key id: names a [`GroupKey`] without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 16]);

impl KeyId {
    /// The 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A group's encryption key: 32 random bytes. Zeroed when dropped;
/// `Debug` shows only its id.
#[derive(Clone)]
pub struct GroupKey([u8; 32]);

impl Drop for GroupKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for GroupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupKey(id {})", self.id())
    }
}

impl PartialEq for GroupKey {
    fn eq(&self, other: &GroupKey) -> bool {
        // Constant time is moot here (both sides are the caller's), but
        // cheap.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Eq for GroupKey {}

/// Why a key could not be read, imported or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupKeyError {
    /// The text is not an exported key.
    #[error(
        "not an offsite group key ({reason}): an exported key is one line `offsite-key-1:<base64url>:<checksum>`; copy it again in full"
    )]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
    /// The checksum does not match (a typo or a truncated copy).
    #[error(
        "the group key's checksum does not match (a typo or an incomplete copy): copy the exported line again"
    )]
    Checksum,
    /// The key file could not be read or written.
    #[error("key file {}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The key file can be read by other users.
    #[error(
        "key file {} can be read by other users (mode {mode:o}): run chmod 600 on it",
        path.display()
    )]
    Mode {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A different key is already saved there.
    #[error(
        "key file {} already holds another key (id {existing}); replacing it would make the data sealed with it unreadable: move it away first if that is really meant",
        path.display()
    )]
    Exists {
        /// The file.
        path: PathBuf,
        /// The id of the key in it.
        existing: KeyId,
    },
}

impl GroupKey {
    /// A new random key (from the operating system's CSPRNG, through
    /// `rand`'s thread generator).
    pub fn generate() -> GroupKey {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        GroupKey(k)
    }

    /// A key from its bytes (tests and fixtures).
    pub fn from_bytes(bytes: [u8; 32]) -> GroupKey {
        GroupKey(bytes)
    }

    /// The key id stored in every sealed object's header.
    pub fn id(&self) -> KeyId {
        let full = blake3::derive_key(KEY_ID_CONTEXT, &self.0);
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        KeyId(id)
    }

    /// The key as one line of text, `offsite-key-1:<base64url>:<crc32c hex>`
    /// (what `key export` prints and the key file holds). Anyone holding
    /// it can read the group's replicas.
    pub fn export(&self) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0);
        format!("{EXPORT_PREFIX}:{b64}:{:08x}", crc32c::crc32c(&self.0))
    }

    /// Reads an exported key (surrounding whitespace ignored).
    pub fn import(text: &str) -> Result<GroupKey, GroupKeyError> {
        let malformed = |reason| GroupKeyError::Malformed { reason };
        let mut parts = text.trim().split(':');
        let (Some(prefix), Some(b64), Some(crc), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("it has not three ':'-separated fields"));
        };
        if prefix != EXPORT_PREFIX {
            return Err(malformed("it does not start with offsite-key-1"));
        }
        let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| malformed("the key is not base64url"))?;
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(malformed("the key is not 32 bytes"));
        }
        let mut k = [0u8; 32];
        k.copy_from_slice(&bytes);
        bytes.zeroize();
        let key = GroupKey(k);
        let want = u32::from_str_radix(crc, 16)
            .ok()
            .filter(|_| crc.len() == 8)
            .ok_or(malformed("the checksum is not 8 hex digits"))?;
        if crc32c::crc32c(&key.0) != want {
            return Err(GroupKeyError::Checksum);
        }
        Ok(key)
    }

    /// Reads the key file at `path` (refused if other users may read it).
    pub fn load(path: &Path) -> Result<GroupKey, GroupKeyError> {
        use std::os::unix::fs::PermissionsExt;
        let file_err = |source| GroupKeyError::File {
            path: path.to_path_buf(),
            source,
        };
        let mode = std::fs::metadata(path)
            .map_err(file_err)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(GroupKeyError::Mode {
                path: path.to_path_buf(),
                mode: mode & 0o777,
            });
        }
        let mut text = std::fs::read_to_string(path).map_err(file_err)?;
        let key = GroupKey::import(&text);
        text.zeroize();
        key
    }

    /// Saves the key to `path`, durably and readable by the site only
    /// (0600). Saving the same key again is a no-op; a file holding another
    /// key is not replaced ([`GroupKeyError::Exists`]).
    pub fn save(&self, path: &Path) -> Result<(), GroupKeyError> {
        match GroupKey::load(path) {
            Ok(existing) if existing == *self => return Ok(()),
            Ok(existing) => {
                return Err(GroupKeyError::Exists {
                    path: path.to_path_buf(),
                    existing: existing.id(),
                });
            }
            Err(GroupKeyError::File { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            }
            Err(e) => return Err(e),
        }
        let mut line = self.export();
        line.push('\n');
        let written = offsite_durable::replace_file_mode(path, line.as_bytes(), 0o600);
        line.zeroize();
        written.map_err(|e| GroupKeyError::File {
            path: path.to_path_buf(),
            source: e.into_io(),
        })
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// The fields of a sealed object's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// Plaintext length.
    pub plaintext_len: u64,
    /// The id of the key the object was sealed with.
    pub key_id: KeyId,
    /// The object's random nonce prefix.
    pub nonce_prefix: [u8; 16],
}

/// Why bytes are not a well-formed sealed object (before any decryption).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    /// Fewer bytes than a header.
    #[error("{0} bytes, shorter than a sealed object's header")]
    Short(u64),
    /// Not our magic.
    #[error("not a sealed object (no offsite header): written without encryption, or damaged")]
    Magic,
    /// The header's checksum is wrong.
    #[error("the header's checksum does not match")]
    Checksum,
    /// A version this build does not read.
    #[error(
        "sealed-object format version {0} is not known to this offsite (it reads 1): upgrade offsite"
    )]
    Version(u16),
    /// A cipher this build does not know.
    #[error("cipher {0} is not known to this offsite")]
    Cipher(u8),
    /// A field out of range.
    #[error("header field out of range: {0}")]
    Field(&'static str),
    /// The stored size does not fit the header's length.
    #[error("{stored} bytes stored where the header announces {want}")]
    Size {
        /// Bytes stored.
        stored: u64,
        /// Bytes the header implies.
        want: u64,
    },
}

/// Chunks of a plaintext of `len` bytes (one, empty, for `len == 0`).
fn chunk_count(len: u64, chunk_size: u32) -> u64 {
    len.div_ceil(u64::from(chunk_size)).max(1)
}

/// The stored size of a sealed object of `len` plaintext bytes, or `None`
/// past `u64`.
pub fn sealed_len(len: u64, chunk_size: u32) -> Option<u64> {
    chunk_count(len, chunk_size)
        .checked_mul(TAG_LEN as u64)?
        .checked_add(len)?
        .checked_add(HEADER_LEN as u64)
}

/// The plaintext length of a v1 object of `stored` bytes (chunk size
/// [`CHUNK_SIZE`]), or `None` when no object has that size.
pub fn plaintext_len(stored: u64) -> Option<u64> {
    let body = stored.checked_sub(HEADER_LEN as u64)?;
    let sealed_chunk = u64::from(CHUNK_SIZE) + TAG_LEN as u64;
    let (full, rest) = (body / sealed_chunk, body % sealed_chunk);
    let len = match rest {
        0 if full > 0 => full * u64::from(CHUNK_SIZE),
        r if r >= TAG_LEN as u64 => full * u64::from(CHUNK_SIZE) + r - TAG_LEN as u64,
        _ => return None,
    };
    // An empty last chunk exists only in an empty object.
    if rest == TAG_LEN as u64 && full > 0 {
        return None;
    }
    Some(len)
}

impl Header {
    /// The header's 64 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[10] = CIPHER_XCHACHA20_POLY1305;
        h[12..16].copy_from_slice(&self.chunk_size.to_le_bytes());
        h[16..24].copy_from_slice(&self.plaintext_len.to_le_bytes());
        h[24..40].copy_from_slice(&self.key_id.0);
        h[40..56].copy_from_slice(&self.nonce_prefix);
        let crc = crc32c::crc32c(&h[..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses and checks a header (its first [`HEADER_LEN`] bytes of `b`).
    pub fn decode(b: &[u8]) -> Result<Header, FormatError> {
        let h = b
            .get(..HEADER_LEN)
            .ok_or(FormatError::Short(b.len() as u64))?;
        if h[0..8] != MAGIC {
            return Err(FormatError::Magic);
        }
        let crc = u32::from_le_bytes(h[60..64].try_into().expect("4 bytes"));
        if crc32c::crc32c(&h[..60]) != crc && !cfg!(fuzzing) {
            return Err(FormatError::Checksum);
        }
        let version = u16::from_le_bytes([h[8], h[9]]);
        if version != FORMAT_VERSION {
            return Err(FormatError::Version(version));
        }
        if h[10] != CIPHER_XCHACHA20_POLY1305 {
            return Err(FormatError::Cipher(h[10]));
        }
        if h[11] != 0 || h[56..60] != [0; 4] {
            return Err(FormatError::Field("reserved bytes are not zero"));
        }
        let chunk_size = u32::from_le_bytes(h[12..16].try_into().expect("4 bytes"));
        if chunk_size == 0 || chunk_size > MAX_CHUNK_SIZE {
            return Err(FormatError::Field("chunk size"));
        }
        let plaintext_len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        if sealed_len(plaintext_len, chunk_size).is_none() {
            return Err(FormatError::Field("plaintext length"));
        }
        let mut key_id = [0u8; 16];
        key_id.copy_from_slice(&h[24..40]);
        let mut nonce_prefix = [0u8; 16];
        nonce_prefix.copy_from_slice(&h[40..56]);
        Ok(Header {
            chunk_size,
            plaintext_len,
            key_id: KeyId(key_id),
            nonce_prefix,
        })
    }

    fn chunks(&self) -> u64 {
        chunk_count(self.plaintext_len, self.chunk_size)
    }

    fn stored_len(&self) -> u64 {
        sealed_len(self.plaintext_len, self.chunk_size).expect("checked by decode")
    }

    /// Offset of sealed chunk `i` in the object.
    fn chunk_offset(&self, i: u64) -> u64 {
        HEADER_LEN as u64 + i * (u64::from(self.chunk_size) + TAG_LEN as u64)
    }

    /// Plaintext bytes in chunk `i`.
    fn chunk_plain_len(&self, i: u64) -> usize {
        let start = i * u64::from(self.chunk_size);
        (self.plaintext_len - start).min(u64::from(self.chunk_size)) as usize
    }
}

fn nonce(prefix: &[u8; 16], index: u64) -> XNonce {
    let mut n = [0u8; 24];
    n[..16].copy_from_slice(prefix);
    n[16..].copy_from_slice(&index.to_le_bytes());
    n.into()
}

fn associated_data(header: &[u8; HEADER_LEN], key: &str, index: u64, last: bool) -> Vec<u8> {
    let mut ad = Vec::with_capacity(HEADER_LEN + 2 + key.len() + 9);
    ad.extend_from_slice(header);
    ad.extend_from_slice(&(key.len() as u16).to_le_bytes());
    ad.extend_from_slice(key.as_bytes());
    ad.extend_from_slice(&index.to_le_bytes());
    ad.push(u8::from(last));
    ad
}

/// Why a sealed object did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Malformed before decryption.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Sealed with another key.
    #[error("sealed with key {found}, not {expected}")]
    WrongKey {
        /// The object's key id.
        found: KeyId,
        /// The key id of the key given.
        expected: KeyId,
    },
    /// A chunk failed authentication.
    #[error("chunk {index} of {chunks} failed authentication")]
    Chunk {
        /// The chunk.
        index: u64,
        /// Chunks in the object.
        chunks: u64,
    },
}

/// Seals `plaintext` as object `key` with a given nonce prefix (the golden
/// fixtures pin the bytes this way; [`Sealed`] draws a random prefix).
pub fn seal_with_nonce(
    group_key: &GroupKey,
    key: &str,
    plaintext: &[u8],
    nonce_prefix: [u8; 16],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut sealer = Sealer::new(
        group_key,
        key,
        plaintext.len() as u64,
        CHUNK_SIZE,
        nonce_prefix,
    );
    out.extend_from_slice(&sealer.header);
    for chunk in chunks_of(plaintext, CHUNK_SIZE) {
        sealer.seal_chunk(chunk, &mut out);
    }
    out
}

/// `plaintext` cut into chunks (one empty chunk for an empty plaintext).
fn chunks_of(plaintext: &[u8], chunk_size: u32) -> impl Iterator<Item = &[u8]> {
    let empty: &[u8] = &[];
    let n = chunk_size as usize;
    (plaintext.is_empty())
        .then_some(empty)
        .into_iter()
        .chain(plaintext.chunks(n))
}

/// Opens a whole sealed object `key` (`stored` = all its bytes).
pub fn open(group_key: &GroupKey, key: &str, stored: &[u8]) -> Result<Vec<u8>, OpenError> {
    let header = check_header(group_key, stored)?;
    let want = header.stored_len();
    if stored.len() as u64 != want {
        return Err(FormatError::Size {
            stored: stored.len() as u64,
            want,
        }
        .into());
    }
    let opener = Opener::new(group_key, key, &header, stored);
    let mut out = Vec::with_capacity(header.plaintext_len as usize);
    for i in 0..header.chunks() {
        let at = header.chunk_offset(i) as usize;
        let len = header.chunk_plain_len(i) + TAG_LEN;
        opener.open_chunk(i, &stored[at..at + len], &mut out)?;
    }
    Ok(out)
}

fn check_header(group_key: &GroupKey, stored: &[u8]) -> Result<Header, OpenError> {
    let header = Header::decode(stored)?;
    let expected = group_key.id();
    if header.key_id != expected && !cfg!(fuzzing) {
        return Err(OpenError::WrongKey {
            found: header.key_id,
            expected,
        });
    }
    Ok(header)
}

/// Seals chunks in order.
struct Sealer<'a> {
    cipher: XChaCha20Poly1305,
    header: [u8; HEADER_LEN],
    parsed: Header,
    key: &'a str,
    next: u64,
}

impl<'a> Sealer<'a> {
    fn new(
        group_key: &GroupKey,
        key: &'a str,
        len: u64,
        chunk_size: u32,
        nonce_prefix: [u8; 16],
    ) -> Sealer<'a> {
        let parsed = Header {
            chunk_size,
            plaintext_len: len,
            key_id: group_key.id(),
            nonce_prefix,
        };
        Sealer {
            cipher: group_key.cipher(),
            header: parsed.encode(),
            parsed,
            key,
            next: 0,
        }
    }

    /// Seals the next chunk onto `out`.
    fn seal_chunk(&mut self, plain: &[u8], out: &mut Vec<u8>) {
        let i = self.next;
        self.next += 1;
        let last = i + 1 == self.parsed.chunks();
        let ad = associated_data(&self.header, self.key, i, last);
        let at = out.len();
        out.extend_from_slice(plain);
        let tag = self
            .cipher
            .encrypt_inout_detached(
                &nonce(&self.parsed.nonce_prefix, i),
                &ad,
                (&mut out[at..]).into(),
            )
            .expect("a chunk is far below XChaCha20's length limit");
        out.extend_from_slice(&tag);
    }
}

/// Opens chunks of one object.
struct Opener<'a> {
    cipher: XChaCha20Poly1305,
    header_bytes: [u8; HEADER_LEN],
    header: Header,
    key: &'a str,
}

impl<'a> Opener<'a> {
    fn new(group_key: &GroupKey, key: &'a str, header: &Header, raw: &[u8]) -> Opener<'a> {
        let mut header_bytes = [0u8; HEADER_LEN];
        header_bytes.copy_from_slice(&raw[..HEADER_LEN]);
        Opener {
            cipher: group_key.cipher(),
            header_bytes,
            header: *header,
            key,
        }
    }

    /// Opens sealed chunk `i` (ciphertext and tag) onto `out`.
    fn open_chunk(&self, i: u64, sealed: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        let chunks = self.header.chunks();
        let fail = OpenError::Chunk { index: i, chunks };
        if sealed.len() != self.header.chunk_plain_len(i) + TAG_LEN {
            return Err(fail);
        }
        let (ct, tag) = sealed.split_at(sealed.len() - TAG_LEN);
        let tag = Tag::try_from(tag).map_err(|_| fail.clone())?;
        let last = i + 1 == chunks;
        let ad = associated_data(&self.header_bytes, self.key, i, last);
        let at = out.len();
        out.extend_from_slice(ct);
        let opened = self.cipher.decrypt_inout_detached(
            &nonce(&self.header.nonce_prefix, i),
            &ad,
            (&mut out[at..]).into(),
            &tag,
        );
        if opened.is_err() {
            // Never leave unauthenticated bytes in the output.
            out.truncate(at);
            return Err(fail);
        }
        Ok(())
    }
}

/// An [`ObjectStore`] that encrypts and authenticates every object it
/// writes to `inner`, and opens (or refuses) every object it reads.
pub struct Sealed {
    inner: Arc<dyn ObjectStore>,
    key: GroupKey,
    /// Raw headers of objects read lately (see [`Sealed::get_range`]).
    headers: std::sync::Mutex<std::collections::HashMap<String, Arc<[u8]>>>,
}

/// An object's raw header, and maybe the sealed chunks of a range
/// ([`Sealed::header_and_chunks`]).
type HeaderAndChunks = (Arc<[u8]>, Option<Vec<u8>>);

/// Headers [`Sealed`] remembers at most (about 100 bytes each); past it
/// the memory is cleared and refilled by the next reads.
const HEADER_CACHE: usize = 16_384;

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("inner", &self.inner)
            .field("key", &self.key)
            .finish()
    }
}

impl Sealed {
    /// Seals `inner`'s objects with `key`.
    pub fn new(inner: Arc<dyn ObjectStore>, key: &GroupKey) -> Sealed {
        Sealed {
            inner,
            key: key.clone(),
            headers: Default::default(),
        }
    }

    fn headers(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<[u8]>>> {
        self.headers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the header of `key` (the object is being rewritten or
    /// deleted through this store).
    fn forget_header(&self, key: &str) {
        self.headers().remove(key);
    }

    /// `len` plaintext bytes at `offset` of `key`, whose stored header is
    /// `raw_header`. `fetched`: the sealed bytes of the chunks the range
    /// covers, when they were read already (see [`Sealed::get_range`]);
    /// used only if they are exactly what this header says the range needs.
    fn read_range(
        &self,
        key: &str,
        raw_header: &[u8],
        offset: u64,
        len: u64,
        fetched: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, ObjectError> {
        let header = check_header(&self.key, raw_header).map_err(|e| self.refused(key, e))?;
        let size = header.plaintext_len;
        let Some(end) = offset.checked_add(len).filter(|&end| end <= size) else {
            return Err(ObjectError::ShortObject {
                store: self.describe(),
                key: key.to_string(),
                size,
                offset,
                want: len,
            });
        };
        if len == 0 {
            return Ok(Vec::new());
        }
        let cs = u64::from(header.chunk_size);
        let (first, last) = (offset / cs, (end - 1) / cs);
        let from = header.chunk_offset(first);
        let to = header.chunk_offset(last) + header.chunk_plain_len(last) as u64 + TAG_LEN as u64;
        let sealed = match fetched {
            Some(bytes) if header.chunk_size == CHUNK_SIZE && bytes.len() as u64 == to - from => {
                bytes
            }
            _ => self
                .inner
                .get_range(key, from, to - from)
                .map_err(|e| self.inner_err(key, e))?,
        };
        let opener = Opener::new(&self.key, key, &header, raw_header);
        let mut plain = Vec::with_capacity(((last - first + 1) * cs) as usize);
        let mut at = 0usize;
        for i in first..=last {
            let n = header.chunk_plain_len(i) + TAG_LEN;
            opener
                .open_chunk(i, &sealed[at..at + n], &mut plain)
                .map_err(|e| self.refused(key, e))?;
            at += n;
        }
        let skip = (offset - first * cs) as usize;
        plain.drain(..skip);
        plain.truncate(len as usize);
        Ok(plain)
    }

    /// The header of `key` and, read at the same time, the sealed chunks
    /// covering `offset..offset + len` as they are laid out when the
    /// object has this format's chunk size and the range ends before its
    /// last chunk (`None` otherwise: [`Sealed::read_range`] then reads
    /// them once it knows the header). Format 1 places chunk `i` at a
    /// fixed offset, so neither request waits for the other: a cold read
    /// of an object costs one round trip to the store, not two.
    fn header_and_chunks(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<HeaderAndChunks, ObjectError> {
        let header = || -> Result<Arc<[u8]>, ObjectError> {
            Ok(self
                .inner
                .get_range(key, 0, HEADER_LEN as u64)
                .map_err(|e| self.inner_err(key, e))?
                .into())
        };
        let cs = u64::from(CHUNK_SIZE);
        let sealed_chunk = cs + TAG_LEN as u64;
        let span = offset
            .checked_add(len)
            .filter(|_| len > 0)
            .map(|end| (offset / cs, (end - 1) / cs));
        let Some((first, last)) = span else {
            return Ok((header()?, None));
        };
        let from = HEADER_LEN as u64 + first * sealed_chunk;
        let want = (last - first + 1) * sealed_chunk;
        std::thread::scope(|scope| {
            // The header on a thread of its own; the chunks, the larger
            // answer, on this one. A failed spawn reads them in turn.
            let on_thread = std::thread::Builder::new()
                .name("sealed-header".into())
                .spawn_scoped(scope, header);
            // Any failure here (the range runs past the object's end, the
            // store is down) is decided by the read that follows with
            // the header, which reports it with its real bounds.
            let chunks = self.inner.get_range(key, from, want).ok();
            let header = match on_thread {
                Ok(thread) => thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(_) => header(),
            }?;
            Ok((header, chunks))
        })
    }
    /// The store underneath (raw, sealed bytes).
    pub fn inner(&self) -> &Arc<dyn ObjectStore> {
        &self.inner
    }

    /// The id of the key.
    pub fn key_id(&self) -> KeyId {
        self.key.id()
    }

    fn refused(&self, key: &str, e: OpenError) -> ObjectError {
        match e {
            OpenError::WrongKey { found, expected } => ObjectError::WrongKey {
                store: self.describe(),
                key: key.to_string(),
                found: found.to_string(),
                expected: expected.to_string(),
            },
            other => ObjectError::Tampered {
                store: self.describe(),
                key: key.to_string(),
                reason: other.to_string(),
            },
        }
    }

    fn tampered(&self, key: &str, reason: String) -> ObjectError {
        ObjectError::Tampered {
            store: self.describe(),
            key: key.to_string(),
            reason,
        }
    }

    /// The inner store's errors, with a short object (the header or a
    /// chunk the header promises is missing) as tampering.
    fn inner_err(&self, key: &str, e: ObjectError) -> ObjectError {
        match e {
            ObjectError::ShortObject { size, .. } => self.tampered(
                key,
                format!("{size} bytes stored, fewer than its header or format needs"),
            ),
            other => other,
        }
    }

    fn plain_size(&self, key: &str, stored: u64) -> Result<u64, ObjectError> {
        plaintext_len(stored).ok_or_else(|| {
            self.tampered(
                key,
                format!("{stored} bytes stored, a size no sealed object has"),
            )
        })
    }
}

/// Reads a plaintext source and yields the sealed object: header, then
/// sealed chunks; fails if the source yields more or fewer bytes than
/// announced.
struct SealingReader<'a> {
    sealer: Sealer<'a>,
    src: &'a mut dyn Read,
    remaining: u64,
    out: Vec<u8>,
    pos: usize,
    chunk: Vec<u8>,
    finished: bool,
}

impl Read for SealingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.out.len() {
            if self.finished {
                return Ok(0);
            }
            self.out.clear();
            self.pos = 0;
            let want = self.remaining.min(u64::from(self.sealer.parsed.chunk_size)) as usize;
            self.chunk.clear();
            let got = (&mut *self.src)
                .take(want as u64)
                .read_to_end(&mut self.chunk)?;
            if got < want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "source ended after {} of {} bytes",
                        self.sealer.parsed.plaintext_len - self.remaining + got as u64,
                        self.sealer.parsed.plaintext_len
                    ),
                ));
            }
            self.remaining -= want as u64;
            let chunk = std::mem::take(&mut self.chunk);
            self.sealer.seal_chunk(&chunk, &mut self.out);
            self.chunk = chunk;
            if self.sealer.next == self.sealer.parsed.chunks() {
                self.finished = true;
                let mut probe = [0u8; 1];
                if self.src.read(&mut probe)? != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "source longer than {} bytes",
                            self.sealer.parsed.plaintext_len
                        ),
                    ));
                }
            }
        }
        let n = buf.len().min(self.out.len() - self.pos);
        buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl ObjectStore for Sealed {
    fn describe(&self) -> String {
        format!(
            "{} (encrypted, key {})",
            self.inner.describe(),
            self.key.id()
        )
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<(), ObjectError> {
        crate::check_key(key)?;
        self.forget_header(key);
        let mut prefix = [0u8; 16];
        rand::rng().fill_bytes(&mut prefix);
        let sealed = seal_with_nonce(&self.key, key, data, prefix);
        self.inner.put(key, &sealed)
    }

    fn put_from(&self, key: &str, src: &mut dyn Read, len: u64) -> Result<(), ObjectError> {
        crate::check_key(key)?;
        self.forget_header(key);
        let stored = sealed_len(len, CHUNK_SIZE).ok_or_else(|| ObjectError::Io {
            store: self.describe(),
            op: "put",
            key: key.to_string(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "object too large"),
        })?;
        let mut prefix = [0u8; 16];
        rand::rng().fill_bytes(&mut prefix);
        let sealer = Sealer::new(&self.key, key, len, CHUNK_SIZE, prefix);
        let mut reader = SealingReader {
            out: sealer.header.to_vec(),
            sealer,
            src,
            remaining: len,
            pos: 0,
            chunk: Vec::new(),
            finished: false,
        };
        self.inner.put_from(key, &mut reader, stored)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>, ObjectError> {
        let stored = self.inner.get(key)?;
        open(&self.key, key, &stored).map_err(|e| self.refused(key, e))
    }

    /// A ranged read opens only the chunks it covers, with the object's
    /// header. The header of an object read before is remembered, so a
    /// read is one request instead of two (a cold read of a volume in a
    /// bucket waits for each). A remembered header can be stale only when
    /// the object was rewritten elsewhere (a merge rewrites base chunks,
    /// through this store, which forgets it): the chunks then fail to open
    /// or the range falls outside, and the read is tried once more with
    /// the header read anew, so a stale header never fails a read and a
    /// damaged object still fails.
    fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ObjectError> {
        crate::check_key(key)?;
        let remembered = self.headers().get(key).cloned();
        if let Some(raw_header) = remembered {
            match self.read_range(key, &raw_header, offset, len, None) {
                Ok(plain) => return Ok(plain),
                Err(
                    ObjectError::Tampered { .. }
                    | ObjectError::ShortObject { .. }
                    | ObjectError::WrongKey { .. },
                ) => self.forget_header(key),
                Err(e) => return Err(e),
            }
        }
        let (raw_header, chunks) = self.header_and_chunks(key, offset, len)?;
        let plain = self.read_range(key, &raw_header, offset, len, chunks)?;
        let mut headers = self.headers();
        if headers.len() >= HEADER_CACHE {
            headers.clear();
        }
        headers.insert(key.to_string(), raw_header);
        Ok(plain)
    }

    fn head(&self, key: &str) -> Result<Option<u64>, ObjectError> {
        match self.inner.head(key)? {
            Some(stored) => self.plain_size(key, stored).map(Some),
            None => Ok(None),
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        self.inner
            .list(prefix)?
            .into_iter()
            .map(|o| {
                let size = self.plain_size(&o.key, o.size)?;
                Ok(ObjectInfo { key: o.key, size })
            })
            .collect()
    }

    fn list_prefixes(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        // Keys are not encrypted: the inner store's listing is the answer.
        self.inner.list_prefixes(prefix)
    }

    fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.forget_header(key);
        self.inner.delete(key)
    }
}
