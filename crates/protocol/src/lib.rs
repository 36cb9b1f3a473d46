//! The site-to-site wire format of offsite: one [`Message`] enum, its frame
//! encoding, version negotiation, and thin async helpers to read and write
//! frames on a tokio stream. No sockets, TLS, timeouts or retries: those are
//! `offsite-transport`'s.
//!
//! # A session
//!
//! ```mermaid
//! sequenceDiagram
//!     participant C as connecting site (alpha)
//!     participant L as listening site (beta)
//!     C->>L: TCP connect, TLS 1.3, both certificates pinned by fingerprint
//!     par both sides send at once
//!         C->>L: Hello { versions 1..=1, "alpha", ZSTD }
//!     and
//!         L->>C: Hello { versions 1..=2, "beta", ZSTD }
//!     end
//!     Note over C,L: each side: v = negotiate(ours, theirs) = 1,<br/>peer name == partner pinned for its certificate?
//!     C->>L: HelloAccept { 1, "alpha", ZSTD } (or HelloRefuse { code, message }, close)
//!     L->>C: HelloAccept { 1, "beta", ZSTD } (or HelloRefuse { code, message }, close)
//!     loop every keepalive interval, both ways
//!         C->>L: Ping { nonce, sent_at_micros }
//!         L->>C: Pong { nonce, sent_at_micros }
//!     end
//!     C->>L: BulkData { seq 0, payload } ... BulkData { seq n }
//!     L->>C: BulkAck { seq 0, bytes } ... BulkAck { seq n, bytes }
//!     C->>L: Request { id, kind, JSON body }
//!     L->>C: Response { id, ok, JSON body }
//!     C->>L: Bye
//! ```
//!
//! Both hellos cross on the wire, so the handshake costs one round trip
//! after TLS, and both sides know both version ranges: on a mismatch each
//! side can log the full picture, even when the peer is an older build.
//!
//! # Frame
//!
//! All integers little-endian.
//!
//! ```text
//! offset  size  field
//! 0       4     len      u32, bytes after this field: 8 + H + P + 4, in 12..=MAX_FRAME_LEN
//! 4       2     tag      u16, MessageTag (0 is invalid)
//! 6       2     flags    u16, bit 0 = payload is zstd-compressed; bit 1 = BulkData header
//!                        without the payload hash (feature SELF_CHECKED_BULK); other bits must be 0
//! 8       4     hlen     u32, header length H (at most MAX_HEADER_LEN = 64 KiB)
//! 12      H     header   the message's fields (below)
//! 12+H    P     payload  opaque bytes (data, JSON body), only for tags that have one;
//!                        at most MAX_PAYLOAD_LEN = 16 MiB, before and after compression
//! 12+H+P  4     crc      u32, CRC32C of bytes 4..12+H (tag to end of header),
//!                        continued over the payload if it is compressed
//! ```
//!
//! Messages with a payload (`BulkData`, `Request`, `Response`) start their
//! header with the 32-byte BLAKE3 hash of the *uncompressed* payload, which
//! the decoder checks after decompression. So every byte is checked before
//! it is used, and corruption anywhere is a [`ProtocolError::Checksum`]:
//! the CRC covers everything the decoder parses or decompresses, the BLAKE3
//! hash covers the data end to end (it is computed where the data is read
//! and checked after decompression, and later issues store it with the
//! block). An uncompressed payload is not also CRC'd: hashing bulk data
//! twice cost ~7% of loopback throughput for no added protection. The one
//! field checked before the CRC is the header length, which says where the
//! CRC's range ends (out of range: [`ProtocolError::HeaderTooLarge`]).
//!
//! **Self-checked bulk data** (feature [`Features::SELF_CHECKED_BULK`],
//! negotiated in the hellos like zstd): on a session where both sides
//! offered it, a `BulkData` frame may carry flag bit 1 and a header of
//! `seq u64` alone, without the hash. Senders set it only for payloads
//! that carry checksums of their own which the receiver checks before it
//! uses a byte (write-log records, each with a CRC32C: a sync stream's
//! batches, and a PIT's record batches where the replica offered them), and
//! only inside TLS, whose AEAD authenticates every byte on the wire. A
//! decoder refuses the flag unless told the session negotiated it
//! ([`FrameDecoder::accept_unhashed_bulk`]), and on any other tag
//! ([`ProtocolError::UnhashedPayload`]); a peer that does not offer the
//! feature never receives it (older builds refuse the unknown flag).
//! [`BulkFrame`] builds such a frame (or a hashed one) in place around a
//! payload appended straight into its buffer.
//!
//! The payload is kept outside the header so that a block is written to the
//! socket straight from its buffer ([`EncodedFrame`]) and read into a slice
//! of the receive buffer.
//!
//! Headers (`str` = u16 byte length + UTF-8 bytes; `hash` = 32 bytes):
//!
//! ```text
//! tag  message      header                                                  payload
//! 1    Hello        min_version u16 | max_version u16 | features u32 | site_name str (<= 255)
//! 2    HelloAccept  version u16 | features u32 | site_name str (<= 255)
//! 3    HelloRefuse  code u16 (RefuseCode, 0 invalid) | message str (<= 4096)
//! 4    Ping         nonce u64 | sent_at_micros u64
//! 5    Pong         nonce u64 | sent_at_micros u64
//! 6    Error        code u16 (ErrorCode, 0 invalid) | message str (<= 4096)
//! 7    Bye          (empty)
//! 8    BulkData     hash | seq u64 (flag bit 1: seq u64 only)                 data
//! 9    BulkAck      seq u64 | bytes u64
//! 10   Request      hash | id u64 | kind u16 (0 invalid)                      body
//! 11   Response     hash | id u64 | status u8 (1 ok, 2 failed, 0 invalid)     body
//! ```
//!
//! A header must be consumed exactly (trailing bytes are an error), so every
//! valid frame has one meaning. The frame layout and the three hello headers
//! are frozen across [`MessageVersion`]s; golden-bytes fixtures in
//! `tests/fixtures/` pin them.
//!
//! The decoder ([`FrameDecoder`]) is a pure function of a byte buffer; it
//! returns `Ok(None)` when more bytes are needed, rejects an oversized length
//! prefix as soon as its 4 bytes arrive, and never panics on any input
//! (property-tested and fuzzed: `fuzz/fuzz_targets/frame_decoder.rs`).

mod error;
mod frame;
mod io;
mod message;
mod version;

#[cfg(test)]
mod tests;

/// The `bytes` crate, re-exported: payloads are [`bytes::Bytes`].
pub use bytes;
pub use error::{ChecksumKind, ProtocolError, StreamError};
pub use frame::{
    BULK_HEAD_ROOM, BulkFrame, Compression, EncodedFrame, FIXED_HEADER_LEN, FrameDecoder,
    LENGTH_PREFIX_LEN, MAX_FRAME_LEN, MAX_HEADER_LEN, MAX_PAYLOAD_LEN, MIN_COMPRESS_LEN,
    MIN_FRAME_LEN, PAYLOAD_HASH_LEN, PayloadHash, TRAILER_LEN, encode, encode_frame, flags,
    frame_len_hint,
};
pub use io::{FramedReader, write_frame, write_message};
pub use message::{
    ErrorCode, Features, MAX_NAME_LEN, MAX_TEXT_LEN, Message, MessageTag, RefuseCode,
};
pub use version::{MessageVersion, SUPPORTED_VERSIONS, VersionMismatch, negotiate};
