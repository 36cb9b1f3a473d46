//! Frames: encoding a [`Message`] into bytes and decoding bytes back, with
//! no I/O. The layout is documented (byte by byte) in the crate docs.

use std::ops::RangeInclusive;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::{ChecksumKind, ProtocolError};
use crate::message::{
    ErrorCode, Features, MAX_NAME_LEN, MAX_TEXT_LEN, Message, MessageTag, RefuseCode,
};

/// Largest payload (before and after compression).
pub const MAX_PAYLOAD_LEN: usize = 16 << 20;
/// Largest header.
pub const MAX_HEADER_LEN: usize = 64 << 10;
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes between the length prefix and the header: tag, flags, header length.
pub const FIXED_HEADER_LEN: usize = 8;
/// Bytes of the CRC32C trailer.
pub const TRAILER_LEN: usize = 4;
/// Smallest value of the length prefix (no header, no payload).
pub const MIN_FRAME_LEN: u32 = (FIXED_HEADER_LEN + TRAILER_LEN) as u32;
/// Largest value of the length prefix.
pub const MAX_FRAME_LEN: u32 =
    (FIXED_HEADER_LEN + MAX_HEADER_LEN + MAX_PAYLOAD_LEN + TRAILER_LEN) as u32;
/// Bytes of the BLAKE3 hash that starts the header of payload-carrying messages.
pub const PAYLOAD_HASH_LEN: usize = 32;

/// Frame flag bits.
pub mod flags {
    /// The payload is one zstd frame (with its content size) of the real payload.
    pub const PAYLOAD_ZSTD: u16 = 1 << 0;
    /// A `BulkData` header without the BLAKE3 payload hash (only `seq`):
    /// the payload checks itself (feature
    /// [`Features::SELF_CHECKED_BULK`](crate::Features::SELF_CHECKED_BULK);
    /// a decoder refuses it unless told the session negotiated that).
    pub const PAYLOAD_UNHASHED: u16 = 1 << 1;
    /// Every flag this build knows.
    pub const ALL: u16 = PAYLOAD_ZSTD | PAYLOAD_UNHASHED;
}

/// Whether the decoder rejects bad checksums: always, except in fuzzing
/// builds, where random input would almost never get past the CRC.
const VERIFY_CHECKSUMS: bool = !cfg!(fuzzing);

/// Payloads shorter than this are never compressed.
pub const MIN_COMPRESS_LEN: usize = 512;

/// Whether and how to compress payloads when encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Send payloads as they are.
    #[default]
    None,
    /// zstd at this level (1 is fast and usually enough for disk blocks).
    /// A payload is sent compressed only if that saves at least 1/16 of it.
    Zstd {
        /// The zstd level.
        level: i32,
    },
}

/// An encoded frame in three parts, so a large payload is written to the
/// stream without being copied into one buffer (see [`EncodedFrame::into_buf`]).
#[derive(Debug, Clone)]
pub struct EncodedFrame {
    /// Length prefix, tag, flags, header length and header.
    pub head: Bytes,
    /// The payload as sent (compressed or not); empty for most messages.
    pub payload: Bytes,
    /// CRC32C of the fixed fields and header (and a compressed payload), little-endian.
    pub trailer: [u8; TRAILER_LEN],
}

impl EncodedFrame {
    /// Total bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len() + TRAILER_LEN
    }

    /// Never true: a frame has at least its fixed fields.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frame as one [`Buf`] of three chunks (vectored writes use them as
    /// they are).
    pub fn into_buf(self) -> impl Buf + Send + 'static {
        let trailer = Bytes::copy_from_slice(&self.trailer);
        self.head.chain(self.payload).chain(trailer)
    }

    /// Appends the frame to `dst`.
    pub fn write_to(&self, dst: &mut BytesMut) {
        dst.reserve(self.len());
        dst.put_slice(&self.head);
        dst.put_slice(&self.payload);
        dst.put_slice(&self.trailer);
    }
}

/// Encodes `message` into a frame. Fails if a field breaks its limit
/// (name, text, version range, zero `kind`) or the payload is too large.
pub fn encode_frame(
    message: &Message,
    compression: Compression,
) -> Result<EncodedFrame, ProtocolError> {
    let tag = message.tag();
    let mut header = BytesMut::with_capacity(64);
    let raw_payload = message.payload().cloned().unwrap_or_default();
    if raw_payload.len() > MAX_PAYLOAD_LEN {
        return Err(ProtocolError::PayloadTooLarge {
            len: raw_payload.len() as u64,
            max: MAX_PAYLOAD_LEN,
        });
    }
    if tag.has_payload() {
        header.put_slice(blake3::hash(&raw_payload).as_bytes());
    }
    put_fields(message, &mut header)?;
    if header.len() > MAX_HEADER_LEN {
        return Err(ProtocolError::HeaderTooLarge {
            len: header.len() as u64,
            max: MAX_HEADER_LEN as u64,
        });
    }

    let mut frame_flags = 0;
    let payload = match compression {
        Compression::Zstd { level } if raw_payload.len() >= MIN_COMPRESS_LEN => {
            let packed = zstd::bulk::compress(&raw_payload, level).map_err(ProtocolError::Zstd)?;
            if packed.len() <= raw_payload.len() - raw_payload.len() / 16 {
                frame_flags |= flags::PAYLOAD_ZSTD;
                Bytes::from(packed)
            } else {
                raw_payload
            }
        }
        _ => raw_payload,
    };

    let len = FIXED_HEADER_LEN + header.len() + payload.len() + TRAILER_LEN;
    // Bounded above by the checks on header and payload.
    let len = u32::try_from(len).expect("bounded frame length");
    let mut head = BytesMut::with_capacity(LENGTH_PREFIX_LEN + FIXED_HEADER_LEN + header.len());
    head.put_u32_le(len);
    head.put_u16_le(tag.as_u16());
    head.put_u16_le(frame_flags);
    head.put_u32_le(header.len() as u32);
    head.put_slice(&header);
    let crc = frame_crc(&head[LENGTH_PREFIX_LEN..], &payload, frame_flags);
    Ok(EncodedFrame {
        head: head.freeze(),
        payload,
        trailer: crc.to_le_bytes(),
    })
}

/// The CRC32C trailer: over tag, flags, header length and header, plus the
/// payload if it is compressed. An uncompressed payload is covered by the
/// BLAKE3 hash in the header instead, so bulk data is not checksummed twice;
/// everything the decoder parses or decompresses is CRC-checked first.
fn frame_crc(fixed_and_header: &[u8], payload: &[u8], frame_flags: u16) -> u32 {
    let crc = crc32c::crc32c(fixed_and_header);
    if frame_flags & flags::PAYLOAD_ZSTD != 0 {
        crc32c::crc32c_append(crc, payload)
    } else {
        crc
    }
}

/// Encodes `message` and appends the frame to `dst`.
pub fn encode(
    message: &Message,
    compression: Compression,
    dst: &mut BytesMut,
) -> Result<(), ProtocolError> {
    encode_frame(message, compression)?.write_to(dst);
    Ok(())
}

/// Bytes a [`BulkFrame`] keeps in front of its payload for the frame's
/// head: length prefix, fixed fields and the largest `BulkData` header
/// (hash and `seq`).
pub const BULK_HEAD_ROOM: usize =
    LENGTH_PREFIX_LEN + FIXED_HEADER_LEN + PAYLOAD_HASH_LEN + BULK_SEQ_LEN;
/// Bytes of `BulkData`'s `seq` field.
const BULK_SEQ_LEN: usize = 8;

/// Whether a [`BulkFrame`] carries the BLAKE3 hash of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadHash {
    /// The hash in the header, as every `BulkData` frame had before
    /// [`Features::SELF_CHECKED_BULK`](crate::Features::SELF_CHECKED_BULK).
    Blake3,
    /// No hash ([`flags::PAYLOAD_UNHASHED`]): only for a session that
    /// negotiated that feature, and only for a payload whose own checksums
    /// the receiver checks before it uses it.
    Omitted,
}

/// A `BulkData` frame built in place: the payload is appended straight
/// into the frame's buffer (after room left for the head), and
/// [`BulkFrame::finish`] writes the head in front of it and the CRC behind
/// it. The payload is never copied into a frame afterwards, and the frame
/// is one contiguous buffer (one write, one TLS record per 16 KiB).
/// Uncompressed; a session that compresses sends
/// [`BulkFrame::into_payload`] as an ordinary [`Message::BulkData`].
#[derive(Debug, Clone)]
pub struct BulkFrame {
    buf: Vec<u8>,
}

impl Default for BulkFrame {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl BulkFrame {
    /// An empty frame with room for `payload` bytes of payload.
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(BULK_HEAD_ROOM + payload + TRAILER_LEN);
        buf.resize(BULK_HEAD_ROOM, 0);
        Self { buf }
    }

    /// Bytes of payload so far.
    pub fn payload_len(&self) -> usize {
        self.buf.len() - BULK_HEAD_ROOM
    }

    /// The payload so far.
    pub fn payload(&self) -> &[u8] {
        &self.buf[BULK_HEAD_ROOM..]
    }

    /// The buffer the payload is appended to. Only append to it (or
    /// [`truncate_payload`](Self::truncate_payload)): the bytes before
    /// the payload are the head's room.
    pub fn payload_buf(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Drops the payload after its first `len` bytes (a producer that
    /// failed half-way takes back what it appended).
    pub fn truncate_payload(&mut self, len: usize) {
        self.buf.truncate(BULK_HEAD_ROOM + len);
    }

    /// The payload alone (no copy), to send as an ordinary message.
    pub fn into_payload(self) -> Bytes {
        Bytes::from(self.buf).slice(BULK_HEAD_ROOM..)
    }

    /// The whole frame, `BulkData { seq, payload }`, with or without the
    /// payload's hash. Fails if the payload is larger than
    /// [`MAX_PAYLOAD_LEN`].
    pub fn finish(mut self, seq: u64, hash: PayloadHash) -> Result<Bytes, ProtocolError> {
        let start = self.finish_head(seq, hash)?;
        Ok(Bytes::from(self.buf).slice(start..))
    }

    /// [`finish`](Self::finish) as an [`EncodedFrame`] (the head and the
    /// payload in one buffer, no copy), for a sender that queues encoded
    /// frames.
    pub fn into_encoded(self, seq: u64, hash: PayloadHash) -> Result<EncodedFrame, ProtocolError> {
        let whole = self.finish(seq, hash)?;
        let body = whole.len() - TRAILER_LEN;
        let mut trailer = [0u8; TRAILER_LEN];
        trailer.copy_from_slice(&whole[body..]);
        Ok(EncodedFrame {
            head: whole.slice(..body),
            payload: Bytes::new(),
            trailer,
        })
    }

    /// [`finish`](Self::finish) in place: the frame's bytes, borrowed; the
    /// buffer stays this frame's, to be [`reset`](Self::reset) and filled
    /// again (a sender that reuses its buffers touches no fresh memory per
    /// batch: page faults and zeroing cost more than the copy of the
    /// payload into it).
    pub fn finish_in_place(&mut self, seq: u64, hash: PayloadHash) -> Result<&[u8], ProtocolError> {
        let start = self.finish_head(seq, hash)?;
        Ok(&self.buf[start..])
    }

    /// Empties the frame (its payload, and the head and trailer a finish
    /// wrote), keeping its buffer.
    pub fn reset(&mut self) {
        self.buf.truncate(BULK_HEAD_ROOM);
    }

    /// The buffer's capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Writes the head in front of the payload and the CRC behind it;
    /// returns where the frame starts in the buffer.
    fn finish_head(&mut self, seq: u64, hash: PayloadHash) -> Result<usize, ProtocolError> {
        let payload_len = self.payload_len();
        if payload_len > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::PayloadTooLarge {
                len: payload_len as u64,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let (header_len, frame_flags) = match hash {
            PayloadHash::Blake3 => (PAYLOAD_HASH_LEN + BULK_SEQ_LEN, 0),
            PayloadHash::Omitted => (BULK_SEQ_LEN, flags::PAYLOAD_UNHASHED),
        };
        let start = BULK_HEAD_ROOM - LENGTH_PREFIX_LEN - FIXED_HEADER_LEN - header_len;
        let len = FIXED_HEADER_LEN + header_len + payload_len + TRAILER_LEN;
        // Bounded by MAX_PAYLOAD_LEN above.
        let len = u32::try_from(len).expect("bounded frame length");
        let mut head = Vec::with_capacity(BULK_HEAD_ROOM - start);
        head.put_u32_le(len);
        head.put_u16_le(MessageTag::BulkData.as_u16());
        head.put_u16_le(frame_flags);
        head.put_u32_le(header_len as u32);
        if hash == PayloadHash::Blake3 {
            head.put_slice(blake3::hash(self.payload()).as_bytes());
        }
        head.put_u64_le(seq);
        self.buf[start..BULK_HEAD_ROOM].copy_from_slice(&head);
        let crc = frame_crc(&self.buf[start + LENGTH_PREFIX_LEN..BULK_HEAD_ROOM], &[], 0);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        Ok(start)
    }
}

fn put_fields(message: &Message, h: &mut BytesMut) -> Result<(), ProtocolError> {
    let tag = message.tag();
    match message {
        Message::Hello {
            versions,
            site_name,
            features,
        } => {
            check_versions(tag, versions)?;
            h.put_u16_le(*versions.start());
            h.put_u16_le(*versions.end());
            h.put_u32_le(features.bits());
            put_str(h, tag, "site_name", site_name, MAX_NAME_LEN)?;
        }
        Message::HelloAccept {
            version,
            site_name,
            features,
        } => {
            if *version == 0 {
                return Err(malformed(tag, "version 0"));
            }
            h.put_u16_le(*version);
            h.put_u32_le(features.bits());
            put_str(h, tag, "site_name", site_name, MAX_NAME_LEN)?;
        }
        Message::HelloRefuse { code, message } => {
            h.put_u16_le(nonzero_code(tag, code.to_u16())?);
            put_str(h, tag, "message", message, MAX_TEXT_LEN)?;
        }
        Message::Ping {
            nonce,
            sent_at_micros,
        }
        | Message::Pong {
            nonce,
            sent_at_micros,
        } => {
            h.put_u64_le(*nonce);
            h.put_u64_le(*sent_at_micros);
        }
        Message::Error { code, message } => {
            h.put_u16_le(nonzero_code(tag, code.to_u16())?);
            put_str(h, tag, "message", message, MAX_TEXT_LEN)?;
        }
        Message::Bye => {}
        Message::BulkData { seq, payload: _ } => h.put_u64_le(*seq),
        Message::BulkAck { seq, bytes } => {
            h.put_u64_le(*seq);
            h.put_u64_le(*bytes);
        }
        Message::Request { id, kind, body: _ } => {
            h.put_u64_le(*id);
            h.put_u16_le(nonzero_code(tag, *kind)?);
        }
        Message::Response { id, ok, body: _ } => {
            h.put_u64_le(*id);
            h.put_u8(if *ok { RESPONSE_OK } else { RESPONSE_FAILED });
        }
    }
    Ok(())
}

/// `Response.ok` on the wire (`0` is invalid).
const RESPONSE_OK: u8 = 1;
const RESPONSE_FAILED: u8 = 2;

fn malformed(message: MessageTag, detail: &'static str) -> ProtocolError {
    ProtocolError::Malformed { message, detail }
}

fn check_versions(tag: MessageTag, versions: &RangeInclusive<u16>) -> Result<(), ProtocolError> {
    if *versions.start() == 0 || versions.start() > versions.end() {
        return Err(malformed(
            tag,
            "version range must be min..=max with 1 <= min <= max",
        ));
    }
    Ok(())
}

fn nonzero_code(tag: MessageTag, v: u16) -> Result<u16, ProtocolError> {
    if v == 0 {
        Err(malformed(tag, "code or kind 0 is invalid"))
    } else {
        Ok(v)
    }
}

fn put_str(
    h: &mut BytesMut,
    message: MessageTag,
    field: &'static str,
    s: &str,
    max: usize,
) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(ProtocolError::FieldTooLong {
            message,
            field,
            len: s.len(),
            max,
        });
    }
    h.put_u16_le(s.len() as u16);
    h.put_slice(s.as_bytes());
    Ok(())
}

/// How many bytes the frame at the start of `src` needs in total, once its
/// length prefix is there and valid. Readers use it to size their buffer.
pub fn frame_len_hint(src: &[u8]) -> Option<usize> {
    let prefix: [u8; 4] = src.get(..LENGTH_PREFIX_LEN)?.try_into().ok()?;
    let len = u32::from_le_bytes(prefix);
    (MIN_FRAME_LEN..=MAX_FRAME_LEN)
        .contains(&len)
        .then(|| LENGTH_PREFIX_LEN + len as usize)
}

/// The total size of the frame at the start of `src` (prefix included),
/// `None` until the 4-byte prefix is there; an out-of-bounds prefix fails.
fn frame_total(src: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = src.first_chunk::<LENGTH_PREFIX_LEN>() else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(*prefix);
    if len > MAX_FRAME_LEN {
        return Err(ProtocolError::FrameTooLarge {
            len: len.into(),
            max: MAX_FRAME_LEN,
        });
    }
    if len < MIN_FRAME_LEN {
        return Err(ProtocolError::FrameTooShort {
            len,
            min: MIN_FRAME_LEN,
        });
    }
    Ok(Some(LENGTH_PREFIX_LEN + len as usize))
}

/// Decodes frames from a growing buffer. Keeps a zstd context between
/// frames; otherwise stateless, so one bad frame does not poison it (the
/// caller closes the connection anyway).
pub struct FrameDecoder {
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// `BulkData` frames without a payload hash are accepted (the session
    /// negotiated [`Features::SELF_CHECKED_BULK`](crate::Features::SELF_CHECKED_BULK)).
    unhashed_bulk: bool,
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameDecoder").finish_non_exhaustive()
    }
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with no zstd context yet (created on the first compressed frame).
    pub fn new() -> Self {
        Self {
            decompressor: None,
            unhashed_bulk: false,
        }
    }

    /// Accepts `BulkData` frames without a payload hash
    /// ([`flags::PAYLOAD_UNHASHED`]) from now on, or refuses them again
    /// (the default). Only for a session that negotiated
    /// [`Features::SELF_CHECKED_BULK`](crate::Features::SELF_CHECKED_BULK),
    /// whose owner checks such payloads itself.
    pub fn accept_unhashed_bulk(&mut self, accept: bool) {
        self.unhashed_bulk = accept;
    }

    /// Takes one frame off the front of `src` and decodes it. `Ok(None)`:
    /// `src` holds less than a frame, read more. An oversized or undersized
    /// length prefix fails as soon as its 4 bytes are there.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        let Some(total) = frame_total(src)? else {
            return Ok(None);
        };
        if src.len() < total {
            return Ok(None);
        }
        let frame = src.split_to(total).freeze();
        self.decode_checked_frame(frame).map(Some)
    }

    /// Like [`FrameDecoder::decode`] at the end of the stream: leftover
    /// bytes that do not make a frame are [`ProtocolError::Truncated`].
    pub fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Message>, ProtocolError> {
        match self.decode(src)? {
            Some(message) => Ok(Some(message)),
            None if src.is_empty() => Ok(None),
            None => Err(ProtocolError::Truncated {
                have: src.len(),
                need: frame_len_hint(src).unwrap_or(LENGTH_PREFIX_LEN),
            }),
        }
    }

    /// Decodes one whole frame, length prefix included (for readers that
    /// frame the bytes themselves, e.g. into a buffer of their own). The
    /// length prefix must match `frame.len()`.
    pub fn decode_frame(&mut self, frame: Bytes) -> Result<Message, ProtocolError> {
        match frame_total(&frame)? {
            Some(total) if total == frame.len() => self.decode_checked_frame(frame),
            Some(total) => Err(ProtocolError::LengthMismatch {
                len: frame.len(),
                prefix_says: total,
            }),
            None => Err(ProtocolError::Truncated {
                have: frame.len(),
                need: LENGTH_PREFIX_LEN,
            }),
        }
    }

    /// Decodes one whole frame (length prefix included, length already checked).
    fn decode_checked_frame(&mut self, frame: Bytes) -> Result<Message, ProtocolError> {
        let crc_at = frame.len() - TRAILER_LEN;
        let stored = u32::from_le_bytes(frame[crc_at..].try_into().expect("4 bytes"));
        let mut fixed = &frame[LENGTH_PREFIX_LEN..LENGTH_PREFIX_LEN + FIXED_HEADER_LEN];
        let raw_tag = fixed.get_u16_le();
        let frame_flags = fixed.get_u16_le();
        let header_len = fixed.get_u32_le();
        // The header length locates what the CRC covers, so it is
        // range-checked before the CRC can be.
        let header_at = LENGTH_PREFIX_LEN + FIXED_HEADER_LEN;
        let room = crc_at - header_at;
        if header_len as usize > room.min(MAX_HEADER_LEN) {
            return Err(ProtocolError::HeaderTooLarge {
                len: header_len.into(),
                max: room.min(MAX_HEADER_LEN) as u64,
            });
        }
        let payload_at = header_at + header_len as usize;
        let computed = frame_crc(
            &frame[LENGTH_PREFIX_LEN..payload_at],
            &frame[payload_at..crc_at],
            frame_flags,
        );
        if computed != stored && VERIFY_CHECKSUMS {
            return Err(ProtocolError::Checksum(ChecksumKind::FrameCrc32c));
        }
        let tag = MessageTag::from_u16(raw_tag).ok_or(ProtocolError::UnknownTag(raw_tag))?;
        if frame_flags & !flags::ALL != 0 {
            return Err(ProtocolError::UnknownFlags(frame_flags & !flags::ALL));
        }
        let header = &frame[header_at..payload_at];
        let wire_payload = frame.slice(payload_at..crc_at);
        let compressed = frame_flags & flags::PAYLOAD_ZSTD != 0;
        if !tag.has_payload() && (compressed || !wire_payload.is_empty()) {
            return Err(ProtocolError::UnexpectedPayload(tag));
        }
        if wire_payload.len() > MAX_PAYLOAD_LEN {
            return Err(ProtocolError::PayloadTooLarge {
                len: wire_payload.len() as u64,
                max: MAX_PAYLOAD_LEN,
            });
        }

        let unhashed = frame_flags & flags::PAYLOAD_UNHASHED != 0;
        if unhashed && (tag != MessageTag::BulkData || !self.unhashed_bulk) {
            return Err(ProtocolError::UnhashedPayload(tag));
        }
        let mut r = FieldReader { buf: header, tag };
        let message = if tag.has_payload() {
            let hash: Option<[u8; PAYLOAD_HASH_LEN]> =
                if unhashed { None } else { Some(r.array()?) };
            let payload = if compressed {
                self.decompress(&wire_payload)?
            } else {
                wire_payload
            };
            // Constant-time comparison is not needed: the hash is not a secret.
            if let Some(hash) = hash
                && blake3::hash(&payload).as_bytes() != &hash
                && VERIFY_CHECKSUMS
            {
                return Err(ProtocolError::Checksum(ChecksumKind::PayloadBlake3));
            }
            read_payload_message(&mut r, payload)?
        } else {
            read_control_message(&mut r)?
        };
        r.finish()?;
        Ok(message)
    }

    fn decompress(&mut self, packed: &[u8]) -> Result<Bytes, ProtocolError> {
        let size = match zstd::zstd_safe::get_frame_content_size(packed) {
            Ok(Some(size)) => size,
            Ok(None) | Err(_) => {
                return Err(ProtocolError::Zstd(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "compressed payload does not state its size",
                )));
            }
        };
        if size > MAX_PAYLOAD_LEN as u64 {
            return Err(ProtocolError::PayloadTooLarge {
                len: size,
                max: MAX_PAYLOAD_LEN,
            });
        }
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            slot => slot.insert(zstd::bulk::Decompressor::new().map_err(ProtocolError::Zstd)?),
        };
        let out = decompressor
            .decompress(packed, size as usize)
            .map_err(ProtocolError::Zstd)?;
        if out.len() as u64 != size {
            return Err(ProtocolError::Zstd(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "decompressed size differs from the stated size",
            )));
        }
        Ok(Bytes::from(out))
    }
}

fn read_control_message(r: &mut FieldReader<'_>) -> Result<Message, ProtocolError> {
    let tag = r.tag;
    Ok(match tag {
        MessageTag::Hello => {
            let versions = r.u16()?..=r.u16()?;
            check_versions(tag, &versions)?;
            Message::Hello {
                versions,
                features: Features::from_bits(r.u32()?),
                site_name: r.string("site_name", MAX_NAME_LEN)?,
            }
        }
        MessageTag::HelloAccept => {
            let version = r.u16()?;
            if version == 0 {
                return Err(malformed(tag, "version 0"));
            }
            Message::HelloAccept {
                version,
                features: Features::from_bits(r.u32()?),
                site_name: r.string("site_name", MAX_NAME_LEN)?,
            }
        }
        MessageTag::HelloRefuse => Message::HelloRefuse {
            code: RefuseCode::from_u16(r.u16()?).ok_or(malformed(tag, "refuse code 0"))?,
            message: r.string("message", MAX_TEXT_LEN)?,
        },
        MessageTag::Ping => Message::Ping {
            nonce: r.u64()?,
            sent_at_micros: r.u64()?,
        },
        MessageTag::Pong => Message::Pong {
            nonce: r.u64()?,
            sent_at_micros: r.u64()?,
        },
        MessageTag::Error => Message::Error {
            code: ErrorCode::from_u16(r.u16()?).ok_or(malformed(tag, "error code 0"))?,
            message: r.string("message", MAX_TEXT_LEN)?,
        },
        MessageTag::Bye => Message::Bye,
        MessageTag::BulkAck => Message::BulkAck {
            seq: r.u64()?,
            bytes: r.u64()?,
        },
        MessageTag::BulkData | MessageTag::Request | MessageTag::Response => {
            unreachable!("payload messages are read by read_payload_message")
        }
    })
}

fn read_payload_message(r: &mut FieldReader<'_>, payload: Bytes) -> Result<Message, ProtocolError> {
    let tag = r.tag;
    Ok(match tag {
        MessageTag::BulkData => Message::BulkData {
            seq: r.u64()?,
            payload,
        },
        MessageTag::Request => {
            let id = r.u64()?;
            let kind = r.u16()?;
            if kind == 0 {
                return Err(malformed(tag, "request kind 0"));
            }
            Message::Request {
                id,
                kind,
                body: payload,
            }
        }
        MessageTag::Response => Message::Response {
            id: r.u64()?,
            ok: match r.u8()? {
                RESPONSE_OK => true,
                RESPONSE_FAILED => false,
                _ => {
                    return Err(malformed(
                        tag,
                        "response status must be 1 (ok) or 2 (failed)",
                    ));
                }
            },
            body: payload,
        },
        _ => unreachable!("control messages are read by read_control_message"),
    })
}

/// Reads little-endian header fields; every short read is a
/// [`ProtocolError::Malformed`] naming the message.
struct FieldReader<'a> {
    buf: &'a [u8],
    tag: MessageTag,
}

impl FieldReader<'_> {
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let (head, rest) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(malformed(self.tag, "header ends early"))?;
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        self.array().map(u64::from_le_bytes)
    }

    fn string(&mut self, field: &'static str, max: usize) -> Result<String, ProtocolError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(ProtocolError::FieldTooLong {
                message: self.tag,
                field,
                len,
                max,
            });
        }
        let bytes = self
            .buf
            .get(..len)
            .ok_or(malformed(self.tag, "header ends early"))?;
        self.buf = &self.buf[len..];
        String::from_utf8(bytes.to_vec()).map_err(|_| malformed(self.tag, "text is not UTF-8"))
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed(self.tag, "trailing bytes after the last field"))
        }
    }
}
