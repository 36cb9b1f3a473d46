//! The [`Message`] enum and the small typed values carried in its fields.

use std::fmt;
use std::ops::RangeInclusive;

use bytes::Bytes;

/// Longest site name in a hello, in bytes (UTF-8).
pub const MAX_NAME_LEN: usize = 255;
/// Longest human-readable text (refusal and error messages), in bytes.
pub const MAX_TEXT_LEN: usize = 4096;

/// Every message two sites exchange. The wire number of each variant is its
/// [`MessageTag`]; the byte layout of each header is in the crate docs.
///
/// Extension point for later issues: control operations (authorization
/// checks, replication commands) travel as [`Message::Request`] /
/// [`Message::Response`] with a `kind` number and a JSON body; bulk block
/// data gets its own variants with a binary payload, hashed like
/// [`Message::BulkData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// First message of each side after TLS: what it speaks and who it says
    /// it is. Layout frozen across versions.
    Hello {
        /// Lowest and highest protocol version supported (`min <= max`, `min >= 1`).
        versions: RangeInclusive<u16>,
        /// The sender's site name.
        site_name: String,
        /// Optional features the sender can use.
        features: Features,
    },
    /// The sender accepts the peer's hello. Layout frozen across versions.
    HelloAccept {
        /// The negotiated version (the highest both support).
        version: u16,
        /// The sender's site name, as in its hello.
        site_name: String,
        /// Features in use for the session (both sides offered them).
        features: Features,
    },
    /// The sender refuses the peer's hello and closes. Layout frozen across versions.
    HelloRefuse {
        /// Why.
        code: RefuseCode,
        /// A sentence for the other site's log.
        message: String,
    },
    /// Keepalive probe; the peer answers with a [`Message::Pong`] carrying
    /// the same fields.
    Ping {
        /// Matches the pong to its ping.
        nonce: u64,
        /// The sender's clock (microseconds since its session started).
        sent_at_micros: u64,
    },
    /// Answer to a [`Message::Ping`], echoing its fields.
    Pong {
        /// The ping's nonce.
        nonce: u64,
        /// The ping's `sent_at_micros`.
        sent_at_micros: u64,
    },
    /// A fatal connection-level error; the sender closes after it.
    Error {
        /// What kind of error.
        code: ErrorCode,
        /// A sentence for the other site's log.
        message: String,
    },
    /// Orderly end of the session.
    Bye,
    /// A chunk of the partner throughput test (bulk class: throttled).
    BulkData {
        /// Sequence number within the test.
        seq: u64,
        /// The bytes.
        payload: Bytes,
    },
    /// Acknowledges a [`Message::BulkData`].
    BulkAck {
        /// The acknowledged chunk.
        seq: u64,
        /// Bytes received in the test so far, this chunk included.
        bytes: u64,
    },
    /// A control-plane request; `kind` says what it asks (numbers are
    /// defined by the issue that adds them, `0` is invalid).
    Request {
        /// Chosen by the requester; echoed in the response.
        id: u64,
        /// What is asked.
        kind: u16,
        /// Request parameters, usually JSON.
        body: Bytes,
    },
    /// The answer to the [`Message::Request`] with the same `id`.
    Response {
        /// The request's id.
        id: u64,
        /// Whether the request succeeded.
        ok: bool,
        /// The result (or the error), usually JSON.
        body: Bytes,
    },
}

impl Message {
    /// The wire tag of this message.
    pub fn tag(&self) -> MessageTag {
        match self {
            Self::Hello { .. } => MessageTag::Hello,
            Self::HelloAccept { .. } => MessageTag::HelloAccept,
            Self::HelloRefuse { .. } => MessageTag::HelloRefuse,
            Self::Ping { .. } => MessageTag::Ping,
            Self::Pong { .. } => MessageTag::Pong,
            Self::Error { .. } => MessageTag::Error,
            Self::Bye => MessageTag::Bye,
            Self::BulkData { .. } => MessageTag::BulkData,
            Self::BulkAck { .. } => MessageTag::BulkAck,
            Self::Request { .. } => MessageTag::Request,
            Self::Response { .. } => MessageTag::Response,
        }
    }

    /// The payload carried outside the header, if this kind of message has one.
    pub fn payload(&self) -> Option<&Bytes> {
        match self {
            Self::BulkData { payload, .. } => Some(payload),
            Self::Request { body, .. } | Self::Response { body, .. } => Some(body),
            _ => None,
        }
    }

    /// Whether this message belongs to the bulk class, which bandwidth
    /// limits throttle. Everything else is control traffic and is never
    /// queued behind bulk data.
    pub fn is_bulk(&self) -> bool {
        self.tag().is_bulk()
    }

    /// An [`Message::Error`], its text cut to [`MAX_TEXT_LEN`].
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error {
            code,
            message: truncate_text(message.into()),
        }
    }

    /// A [`Message::HelloRefuse`], its text cut to [`MAX_TEXT_LEN`].
    pub fn refuse(code: RefuseCode, message: impl Into<String>) -> Self {
        Self::HelloRefuse {
            code,
            message: truncate_text(message.into()),
        }
    }
}

fn truncate_text(mut text: String) -> String {
    if text.len() > MAX_TEXT_LEN {
        let mut end = MAX_TEXT_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The wire number of each [`Message`] variant. Numbers are explicit and
/// never reused; `0` is invalid so that zeroed bytes never decode.
#[repr(u16)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageTag {
    /// [`Message::Hello`].
    Hello = 1,
    /// [`Message::HelloAccept`].
    HelloAccept = 2,
    /// [`Message::HelloRefuse`].
    HelloRefuse = 3,
    /// [`Message::Ping`].
    Ping = 4,
    /// [`Message::Pong`].
    Pong = 5,
    /// [`Message::Error`].
    Error = 6,
    /// [`Message::Bye`].
    Bye = 7,
    /// [`Message::BulkData`].
    BulkData = 8,
    /// [`Message::BulkAck`].
    BulkAck = 9,
    /// [`Message::Request`].
    Request = 10,
    /// [`Message::Response`].
    Response = 11,
}

impl MessageTag {
    /// Every tag, in wire order.
    pub const ALL: [Self; 11] = [
        Self::Hello,
        Self::HelloAccept,
        Self::HelloRefuse,
        Self::Ping,
        Self::Pong,
        Self::Error,
        Self::Bye,
        Self::BulkData,
        Self::BulkAck,
        Self::Request,
        Self::Response,
    ];

    /// The number on the wire.
    pub const fn as_u16(self) -> u16 {
        self as u16
    }

    /// The tag numbered `v` (`None` for `0` and unknown numbers).
    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Hello,
            2 => Self::HelloAccept,
            3 => Self::HelloRefuse,
            4 => Self::Ping,
            5 => Self::Pong,
            6 => Self::Error,
            7 => Self::Bye,
            8 => Self::BulkData,
            9 => Self::BulkAck,
            10 => Self::Request,
            11 => Self::Response,
            _ => return None,
        })
    }

    /// Whether messages of this kind carry a payload after the header
    /// (and so a BLAKE3 hash of it as the first header field).
    pub const fn has_payload(self) -> bool {
        matches!(self, Self::BulkData | Self::Request | Self::Response)
    }

    /// Whether this is bulk-class traffic (see [`Message::is_bulk`]).
    pub const fn is_bulk(self) -> bool {
        matches!(self, Self::BulkData)
    }
}

impl fmt::Display for MessageTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} (tag {})", self.as_u16())
    }
}

/// Optional protocol features, a bitset. A session uses the features both
/// sides offer; bits this build does not know are kept but never used.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Features(u32);

impl Features {
    /// No optional feature.
    pub const NONE: Self = Self(0);
    /// Payloads may be zstd-compressed (frame flag bit 0).
    pub const ZSTD: Self = Self(1 << 0);
    /// `BulkData` frames may omit the BLAKE3 payload hash (frame flag bit
    /// 1, [`crate::flags::PAYLOAD_UNHASHED`]) when their payload carries
    /// checksums of its own that the receiver checks before it uses a
    /// byte: a sync stream's write-log records, each with its CRC32C.
    /// Sessions run inside TLS 1.3, whose AEAD already authenticates every
    /// byte on the wire, so the hash only proved again what TLS and the
    /// records' checksums prove; it cost ~1 µs of CPU per 4 KiB on each
    /// side of a synchronous write. A peer without it gets hashed frames.
    pub const SELF_CHECKED_BULK: Self = Self(1 << 1);
    /// Every feature this build implements.
    pub const ALL_KNOWN: Self = Self(Self::ZSTD.0 | Self::SELF_CHECKED_BULK.0);

    /// The bits on the wire.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Features from wire bits, unknown bits kept.
    pub const fn from_bits(bits: u32) -> Self {
        Self(bits)
    }

    /// Whether every feature of `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Features in both sets.
    pub const fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    /// Features in either set.
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

impl fmt::Debug for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if self.contains(Self::ZSTD) {
            parts.push("ZSTD".to_string());
        }
        if self.contains(Self::SELF_CHECKED_BULK) {
            parts.push("SELF_CHECKED_BULK".to_string());
        }
        let unknown = self.0 & !Self::ALL_KNOWN.0;
        if unknown != 0 {
            parts.push(format!("{unknown:#x}"));
        }
        if parts.is_empty() {
            parts.push("NONE".to_string());
        }
        write!(f, "Features({})", parts.join(" | "))
    }
}

macro_rules! wire_code {
    (
        $(#[$meta:meta])*
        $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $value:literal, )* }
    ) => {
        $(#[$meta])*
        ///
        /// Numbers are explicit; `0` is invalid; numbers a newer peer sends
        /// that this build does not know decode as `Other(n)`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
            /// A code this build does not know (never `0`, never a known number).
            Other(u16),
        }

        impl $name {
            /// The number on the wire.
            pub const fn to_u16(self) -> u16 {
                match self {
                    $( Self::$variant => $value, )*
                    Self::Other(v) => v,
                }
            }

            /// The code numbered `v`; `None` for the invalid `0`.
            pub const fn from_u16(v: u16) -> Option<Self> {
                match v {
                    0 => None,
                    $( $value => Some(Self::$variant), )*
                    other => Some(Self::Other(other)),
                }
            }
        }
    };
}

wire_code! {
    /// Why a hello was refused.
    RefuseCode {
        /// No protocol version in common.
        VersionMismatch = 1,
        /// The peer's certificate is pinned for a partner of another name.
        NameMismatch = 2,
        /// The peer's name is not a partner of this site.
        UnknownSite = 3,
        /// The peer is known but not allowed to do this.
        NotAuthorized = 4,
        /// The site is shutting down; try again later.
        ShuttingDown = 5,
    }
}

wire_code! {
    /// Kind of a connection-level [`Message::Error`].
    ErrorCode {
        /// A frame could not be decoded (bad length, checksum, tag, field).
        Protocol = 1,
        /// A well-formed message that is not valid at this point of the session.
        UnexpectedMessage = 2,
        /// The sender failed internally.
        Internal = 3,
        /// The sender is shutting down.
        ShuttingDown = 4,
        /// The receiver's storage is full: nothing was lost, the transfer
        /// can be retried once space is freed (the message says where).
        StorageFull = 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_and_zero_is_invalid() {
        for tag in MessageTag::ALL {
            assert_eq!(MessageTag::from_u16(tag.as_u16()), Some(tag));
        }
        assert_eq!(MessageTag::from_u16(0), None);
        assert_eq!(MessageTag::from_u16(12), None);
    }

    #[test]
    fn codes_keep_unknown_numbers_and_reject_zero() {
        assert_eq!(RefuseCode::from_u16(0), None);
        assert_eq!(RefuseCode::from_u16(2), Some(RefuseCode::NameMismatch));
        assert_eq!(RefuseCode::from_u16(900), Some(RefuseCode::Other(900)));
        assert_eq!(RefuseCode::Other(900).to_u16(), 900);
        assert_eq!(ErrorCode::from_u16(1), Some(ErrorCode::Protocol));
        assert_eq!(ErrorCode::ShuttingDown.to_u16(), 4);
    }

    #[test]
    fn long_texts_are_cut_on_a_char_boundary() {
        let Message::Error { message, .. } = Message::error(ErrorCode::Internal, "é".repeat(3000))
        else {
            unreachable!()
        };
        assert_eq!(message.len(), MAX_TEXT_LEN);
    }

    #[test]
    fn features_debug_names_bits() {
        assert_eq!(format!("{:?}", Features::ZSTD), "Features(ZSTD)");
        assert_eq!(format!("{:?}", Features::NONE), "Features(NONE)");
        assert_eq!(
            format!("{:?}", Features::from_bits(0x11)),
            "Features(ZSTD | 0x10)"
        );
    }
}
