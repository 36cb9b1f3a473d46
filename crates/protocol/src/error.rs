//! Errors of encoding and decoding frames, and of reading them from a stream.

use std::fmt;
use std::io;

use thiserror::Error;

use crate::message::MessageTag;

/// Which checksum failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumKind {
    /// The CRC32C trailer over the whole frame.
    FrameCrc32c,
    /// The BLAKE3 hash of the uncompressed payload, from the header.
    PayloadBlake3,
}

impl fmt::Display for ChecksumKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FrameCrc32c => "frame CRC32C",
            Self::PayloadBlake3 => "payload BLAKE3",
        })
    }
}

/// A frame that cannot be encoded or decoded. Decoding never panics and
/// never allocates more than the frame's bounded length (plus, for a
/// compressed payload, at most [`crate::MAX_PAYLOAD_LEN`]).
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// The length prefix exceeds [`crate::MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge {
        /// The announced (or, on encode, computed) length.
        len: u64,
        /// The maximum.
        max: u32,
    },
    /// The length prefix is smaller than the fixed part of a frame.
    #[error("frame length {len} is shorter than the {min}-byte minimum")]
    FrameTooShort {
        /// The announced length.
        len: u32,
        /// The minimum.
        min: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame: have {have} of {need} bytes")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the frame needs (4 if even its length prefix is missing).
        need: usize,
    },
    /// A buffer given as one frame is not as long as its length prefix says.
    #[error("frame buffer of {len} bytes, but its length prefix says {prefix_says}")]
    LengthMismatch {
        /// The buffer's length.
        len: usize,
        /// The length the prefix implies.
        prefix_says: usize,
    },
    /// A checksum does not match: the bytes were corrupted somewhere.
    #[error("{0} mismatch")]
    Checksum(ChecksumKind),
    /// The tag is `0` or a number this build does not know.
    #[error("unknown message tag {0} (0 is never valid)")]
    UnknownTag(u16),
    /// Flag bits this build does not know are set.
    #[error("unknown frame flags {0:#06x}")]
    UnknownFlags(u16),
    /// The header is larger than [`crate::MAX_HEADER_LEN`] or than the frame.
    #[error("header of {len} bytes does not fit (at most {max})")]
    HeaderTooLarge {
        /// The header length.
        len: u64,
        /// What fits.
        max: u64,
    },
    /// The payload is larger than [`crate::MAX_PAYLOAD_LEN`] (raw or decompressed).
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// The payload length.
        len: u64,
        /// The maximum.
        max: usize,
    },
    /// A message that has no payload slot came with payload bytes or the
    /// compression flag.
    #[error("{0} carries no payload, but the frame has one")]
    UnexpectedPayload(MessageTag),
    /// A frame without its payload hash where none may come: not a
    /// `BulkData`, or the session did not negotiate
    /// [`Features::SELF_CHECKED_BULK`](crate::Features::SELF_CHECKED_BULK).
    #[error("{0} without its payload hash, which this session did not agree to")]
    UnhashedPayload(MessageTag),
    /// A header field is missing, out of range or not valid UTF-8.
    #[error("malformed {message} header: {detail}")]
    Malformed {
        /// The message whose header is wrong.
        message: MessageTag,
        /// What is wrong.
        detail: &'static str,
    },
    /// A variable-length field is longer than its limit.
    #[error("{message} field {field} is {len} bytes, more than the {max} allowed")]
    FieldTooLong {
        /// The message.
        message: MessageTag,
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The compressed payload could not be decompressed (or compressed).
    #[error("zstd failed: {0}")]
    Zstd(#[source] io::Error),
}

impl ProtocolError {
    /// The short wire-facing kind of this error, for `Error` messages and metrics.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::FrameTooLarge { .. } => "frame-too-large",
            Self::FrameTooShort { .. } => "frame-too-short",
            Self::Truncated { .. } => "truncated",
            Self::LengthMismatch { .. } => "length-mismatch",
            Self::Checksum(_) => "checksum",
            Self::UnknownTag(_) => "unknown-tag",
            Self::UnknownFlags(_) => "unknown-flags",
            Self::HeaderTooLarge { .. } => "header-too-large",
            Self::PayloadTooLarge { .. } => "payload-too-large",
            Self::UnexpectedPayload(_) => "unexpected-payload",
            Self::UnhashedPayload(_) => "unhashed-payload",
            Self::Malformed { .. } => "malformed",
            Self::FieldTooLong { .. } => "field-too-long",
            Self::Zstd(_) => "zstd",
        }
    }
}

/// Reading or writing frames on a byte stream failed.
#[derive(Debug, Error)]
pub enum StreamError {
    /// The stream failed.
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The bytes were not a valid frame.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}
