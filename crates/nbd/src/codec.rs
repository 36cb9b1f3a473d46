//! The NBD wire format: pure functions from byte slices to typed messages and
//! back, with no I/O and no server state.
//!
//! This module owns every constant, magic number and byte layout of the
//! subset of the protocol we speak (fixed-newstyle handshake, simple and
//! structured replies, the `base:allocation` metadata context, 32-bit
//! requests). The server reads exactly-sized frames off the socket and
//! hands them here; everything the client sends passes through
//! [`decode_option_header`], [`decode_option`] and [`decode_request`], which is
//! why those three are fuzzed (`fuzz/fuzz_targets/nbd_decoder.rs`) and
//! property-tested: they must reject any byte string with an error, never panic
//! and never allocate more than the input length.
//!
//! All integers are big-endian ("network byte order") as `doc/proto.md`
//! requires. Layouts, as seen on the wire:
//!
//! ```text
//! greeting (S→C, 18 B)     "NBDMAGIC" | "IHAVEOPT" | handshake flags u16
//! client flags (C→S, 4 B)  u32
//! option (C→S, 16 B + n)   "IHAVEOPT" | option u32 | n u32 | data[n]
//! option reply (S→C)       0x0003e889045565a9 | option u32 | type u32 | n u32 | data[n]
//! request (C→S, 28 B)      0x25609513 | flags u16 | type u16 | handle u64 | offset u64 | length u32
//! simple reply (S→C, 16 B) 0x67446698 | error u32 | handle u64  (+ data for a successful READ)
//! ```
//!
//! Meta-context options (`NBD_OPT_LIST_META_CONTEXT` 9, `NBD_OPT_SET_META_CONTEXT` 10)
//! and their reply:
//!
//! ```text
//! option data              name length u32 | name | query count u32 | (query length u32 | query) × count
//! NBD_REP_META_CONTEXT (4) context id u32 | context name (rest of the reply data)
//! ```
//!
//! Structured replies (after `NBD_OPT_STRUCTURED_REPLY` 8, which carries no
//! data): one or more chunks per request, the last with `NBD_REPLY_FLAG_DONE`.
//!
//! ```text
//! chunk header (S→C, 20 B)  0x668e33ef | flags u16 | type u16 | handle u64 | length u32
//! NONE (0)                  (no payload; always DONE)
//! OFFSET_DATA (1)           offset u64 | data[length - 8]
//! OFFSET_HOLE (2)           offset u64 | hole size u32             (length 12)
//! BLOCK_STATUS (5)          context id u32 | (extent length u32 | status flags u32) × n
//! ERROR (0x8001)            error u32 | message length u16 | message
//! ERROR_OFFSET (0x8002)     error u32 | message length u16 | message | offset u64
//! ```

use std::io;

use thiserror::Error;

#[cfg(test)]
mod tests;

/// `"NBDMAGIC"`, first word of the server greeting.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`, second word of the greeting and first word of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic of every fixed-newstyle option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of every transmission request (`NBD_REQUEST_MAGIC`).
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of every simple reply (`NBD_SIMPLE_REPLY_MAGIC`).
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of every structured reply chunk (`NBD_STRUCTURED_REPLY_MAGIC`).
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Bytes in the server greeting.
pub const GREETING_LEN: usize = 18;
/// Bytes in an option header (before its data).
pub const OPTION_HEADER_LEN: usize = 16;
/// Bytes in an option reply header (before its data).
pub const OPTION_REPLY_HEADER_LEN: usize = 20;
/// Bytes in a transmission request header (before a write payload).
pub const REQUEST_HEADER_LEN: usize = 28;
/// Bytes in a simple reply header (before read data).
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
/// Bytes in a structured reply chunk header (before its payload).
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Bytes of one `NBD_REPLY_TYPE_BLOCK_STATUS` extent descriptor.
pub const BLOCK_STATUS_DESCRIPTOR_LEN: usize = 8;
/// The one metadata context we serve (proto.md "`base:allocation`").
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Longest string (export name, description, message) the protocol allows.
pub const MAX_STRING_LEN: usize = 4096;
/// Zero padding after an `NBD_OPT_EXPORT_NAME` reply unless the client
/// negotiated `NBD_FLAG_C_NO_ZEROES`.
pub const EXPORT_NAME_PADDING: usize = 124;

/// Handshake flags (server → client, 16 bits).
pub mod handshake_flags {
    /// `NBD_FLAG_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// `NBD_FLAG_NO_ZEROES`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (client → server, 32 bits).
pub mod client_flags {
    /// `NBD_FLAG_C_FIXED_NEWSTYLE`.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// `NBD_FLAG_C_NO_ZEROES`.
    pub const NO_ZEROES: u32 = 1 << 1;
    /// Every client flag the protocol defines.
    pub const ALL: u32 = FIXED_NEWSTYLE | NO_ZEROES;
}

/// Transmission flags (per export, 16 bits).
pub mod transmission_flags {
    /// `NBD_FLAG_HAS_FLAGS`; always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// `NBD_FLAG_READ_ONLY`.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_FLAG_SEND_FLUSH`.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_FLAG_SEND_FUA`.
    pub const SEND_FUA: u16 = 1 << 3;
    /// `NBD_FLAG_ROTATIONAL`.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_FLAG_SEND_TRIM`.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_FLAG_SEND_WRITE_ZEROES`.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_FLAG_SEND_DF` (needs structured replies; we never set it).
    pub const SEND_DF: u16 = 1 << 7;
    /// `NBD_FLAG_CAN_MULTI_CONN`.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_FLAG_SEND_CACHE`.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_FLAG_SEND_FAST_ZERO`.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command flags (per request, 16 bits).
pub mod command_flags {
    /// `NBD_CMD_FLAG_FUA`: valid on every command once `SEND_FUA` is advertised.
    pub const FUA: u16 = 1 << 0;
    /// `NBD_CMD_FLAG_NO_HOLE`: valid on `NBD_CMD_WRITE_ZEROES`.
    pub const NO_HOLE: u16 = 1 << 1;
    /// `NBD_CMD_FLAG_DF`: valid on `NBD_CMD_READ` with structured replies.
    pub const DF: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_REQ_ONE`: valid on `NBD_CMD_BLOCK_STATUS`.
    pub const REQ_ONE: u16 = 1 << 3;
    /// `NBD_CMD_FLAG_FAST_ZERO`: valid on `NBD_CMD_WRITE_ZEROES` with `SEND_FAST_ZERO`.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Option codes (`NBD_OPT_*`).
pub mod option_codes {
    /// `NBD_OPT_EXPORT_NAME`.
    pub const EXPORT_NAME: u32 = 1;
    /// `NBD_OPT_ABORT`.
    pub const ABORT: u32 = 2;
    /// `NBD_OPT_LIST`.
    pub const LIST: u32 = 3;
    /// `NBD_OPT_STARTTLS`.
    pub const STARTTLS: u32 = 5;
    /// `NBD_OPT_INFO`.
    pub const INFO: u32 = 6;
    /// `NBD_OPT_GO`.
    pub const GO: u32 = 7;
    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// `NBD_OPT_LIST_META_CONTEXT`.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// `NBD_OPT_SET_META_CONTEXT`.
    pub const SET_META_CONTEXT: u32 = 10;
    /// `NBD_OPT_EXTENDED_HEADERS`.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod reply_types {
    /// `NBD_REP_ACK`.
    pub const ACK: u32 = 1;
    /// `NBD_REP_SERVER`.
    pub const SERVER: u32 = 2;
    /// `NBD_REP_INFO`.
    pub const INFO: u32 = 3;
    /// `NBD_REP_META_CONTEXT`.
    pub const META_CONTEXT: u32 = 4;
    /// Bit set in every error reply type.
    pub const ERROR_BIT: u32 = 1 << 31;
}

/// Information types inside `NBD_REP_INFO` (`NBD_INFO_*`).
pub mod info_types {
    /// `NBD_INFO_EXPORT`: size and transmission flags.
    pub const EXPORT: u16 = 0;
    /// `NBD_INFO_NAME`: canonical export name.
    pub const NAME: u16 = 1;
    /// `NBD_INFO_DESCRIPTION`: human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// `NBD_INFO_BLOCK_SIZE`: minimum, preferred and maximum block size.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Structured reply chunk flags (`NBD_REPLY_FLAG_*`, 16 bits).
pub mod reply_flags {
    /// `NBD_REPLY_FLAG_DONE`: the last chunk of a reply.
    pub const DONE: u16 = 1 << 0;
}

/// Structured reply chunk types (`NBD_REPLY_TYPE_*`); error chunks have bit 15 set.
pub mod chunk_types {
    /// `NBD_REPLY_TYPE_NONE`.
    pub const NONE: u16 = 0;
    /// `NBD_REPLY_TYPE_OFFSET_DATA`.
    pub const OFFSET_DATA: u16 = 1;
    /// `NBD_REPLY_TYPE_OFFSET_HOLE`.
    pub const OFFSET_HOLE: u16 = 2;
    /// `NBD_REPLY_TYPE_BLOCK_STATUS`.
    pub const BLOCK_STATUS: u16 = 5;
    /// `NBD_REPLY_TYPE_ERROR`.
    pub const ERROR: u16 = (1 << 15) + 1;
    /// `NBD_REPLY_TYPE_ERROR_OFFSET`.
    pub const ERROR_OFFSET: u16 = (1 << 15) + 2;
    /// Bit set in every error chunk type.
    pub const ERROR_BIT: u16 = 1 << 15;
}

/// Status flags of the `base:allocation` context (`NBD_STATE_*`).
pub mod allocation_flags {
    /// `NBD_STATE_HOLE`: not allocated in the backing storage.
    pub const HOLE: u32 = 1 << 0;
    /// `NBD_STATE_ZERO`: reads as zeroes.
    pub const ZERO: u32 = 1 << 1;
}

/// Why a byte string is not a valid frame. Frames with these errors cannot be
/// answered in-protocol, so the server closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed-size frame needs.
    #[error("frame truncated: need {needed} bytes, got {got}")]
    Truncated {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// The frame does not start with the magic its position requires.
    #[error("bad magic {found:#x} (expected {expected:#x})")]
    BadMagic {
        /// The magic the protocol requires here.
        expected: u64,
        /// What the peer sent.
        found: u64,
    },
    /// A structured reply payload whose length does not fit its type.
    #[error("structured reply chunk of type {chunk_type} has a bad length {length}")]
    BadChunkLength {
        /// Chunk type.
        chunk_type: u16,
        /// Payload length.
        length: usize,
    },
}

/// Why an option's data is malformed. Each maps to `NBD_REP_ERR_INVALID`
/// (or, for `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error, to
/// closing the connection).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OptionError {
    /// The option must carry no data but did (`NBD_OPT_LIST`).
    #[error("option takes no data but {len} bytes were sent")]
    UnexpectedData {
        /// Bytes of data sent.
        len: usize,
    },
    /// The data ends before a field it declares.
    #[error("option data truncated")]
    Truncated,
    /// Bytes remain after the last declared field.
    #[error("{extra} unexpected bytes after option data")]
    TrailingData {
        /// How many bytes are left over.
        extra: usize,
    },
    /// A string is longer than the protocol's 4096-byte limit.
    #[error("string of {len} bytes exceeds the {MAX_STRING_LEN}-byte limit")]
    StringTooLong {
        /// Declared length.
        len: usize,
    },
    /// A string is not UTF-8 or contains NUL.
    #[error("string is not NUL-free UTF-8")]
    InvalidString,
}

/// A fixed-newstyle option header: which option and how much data follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    /// Option code (`NBD_OPT_*`, see [`option_codes`]).
    pub option: u32,
    /// Bytes of option data that follow the header.
    pub length: u32,
}

/// The export and information items named by `NBD_OPT_INFO`/`NBD_OPT_GO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    /// Export name; empty means the default export.
    pub name: String,
    /// Requested `NBD_INFO_*` items, in the order sent (duplicates kept).
    pub requests: Vec<u16>,
}

/// The export and queries of `NBD_OPT_LIST_META_CONTEXT`/`NBD_OPT_SET_META_CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name; empty means the default export.
    pub name: String,
    /// Queries (`namespace:leaf`), in the order sent.
    pub queries: Vec<String>,
}

/// A decoded client option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// `NBD_OPT_EXPORT_NAME`: enter transmission with this export (old style).
    ExportName(String),
    /// `NBD_OPT_ABORT`: end the session (any data is ignored, as proto.md asks).
    Abort,
    /// `NBD_OPT_LIST`: list exports.
    List,
    /// `NBD_OPT_INFO`: describe an export without entering transmission.
    Info(InfoRequest),
    /// `NBD_OPT_GO`: describe an export and enter transmission.
    Go(InfoRequest),
    /// `NBD_OPT_STRUCTURED_REPLY`: use structured replies in transmission.
    StructuredReply,
    /// `NBD_OPT_STARTTLS`: upgrade the connection to TLS.
    StartTls,
    /// `NBD_OPT_LIST_META_CONTEXT`: which metadata contexts match the queries.
    ListMetaContext(MetaContextRequest),
    /// `NBD_OPT_SET_META_CONTEXT`: select metadata contexts for block status.
    SetMetaContext(MetaContextRequest),
    /// Any other option, known or not; we answer `NBD_REP_ERR_UNSUP`. Its data
    /// is not inspected.
    Unsupported(u32),
}

/// `NBD_REP_ERR_*` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepError {
    /// `NBD_REP_ERR_UNSUP`: option not supported by this server.
    Unsup,
    /// `NBD_REP_ERR_POLICY`: forbidden by server policy.
    Policy,
    /// `NBD_REP_ERR_INVALID`: syntactically or semantically invalid option.
    Invalid,
    /// `NBD_REP_ERR_PLATFORM`: unsupported on this platform.
    Platform,
    /// `NBD_REP_ERR_TLS_REQD`: TLS required first.
    TlsReqd,
    /// `NBD_REP_ERR_UNKNOWN`: export not available.
    Unknown,
    /// `NBD_REP_ERR_SHUTDOWN`: server shutting down.
    Shutdown,
    /// `NBD_REP_ERR_BLOCK_SIZE_REQD`: client must request block sizes.
    BlockSizeReqd,
    /// `NBD_REP_ERR_TOO_BIG`: request or reply too large.
    TooBig,
}

impl RepError {
    /// The reply type on the wire (bit 31 set).
    pub fn code(self) -> u32 {
        reply_types::ERROR_BIT
            | match self {
                Self::Unsup => 1,
                Self::Policy => 2,
                Self::Invalid => 3,
                Self::Platform => 4,
                Self::TlsReqd => 5,
                Self::Unknown => 6,
                Self::Shutdown => 7,
                Self::BlockSizeReqd => 8,
                Self::TooBig => 9,
            }
    }
}

/// One option reply the server can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptionReply<'a> {
    /// `NBD_REP_ACK`.
    Ack,
    /// `NBD_REP_SERVER`: one export in an `NBD_OPT_LIST` answer.
    Server {
        /// Export name.
        name: &'a str,
        /// Free text shown after the name.
        description: &'a str,
    },
    /// `NBD_REP_INFO` / `NBD_INFO_EXPORT`.
    InfoExport {
        /// Export size in bytes.
        size: u64,
        /// Transmission flags.
        flags: u16,
    },
    /// `NBD_REP_INFO` / `NBD_INFO_NAME`.
    InfoName(&'a str),
    /// `NBD_REP_INFO` / `NBD_INFO_DESCRIPTION`.
    InfoDescription(&'a str),
    /// `NBD_REP_INFO` / `NBD_INFO_BLOCK_SIZE`.
    InfoBlockSize {
        /// Minimum block size.
        minimum: u32,
        /// Preferred block size.
        preferred: u32,
        /// Maximum request length.
        maximum: u32,
    },
    /// `NBD_REP_META_CONTEXT`: one metadata context (id 0 when listing).
    MetaContext {
        /// Context id used in `NBD_REPLY_TYPE_BLOCK_STATUS` chunks.
        id: u32,
        /// Context name.
        name: &'a str,
    },
    /// An `NBD_REP_ERR_*` reply with a message for humans.
    Error(RepError, &'a str),
}

/// A decoded option reply header (used by clients and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionReplyHeader {
    /// The option this answers.
    pub option: u32,
    /// `NBD_REP_*` type.
    pub reply_type: u32,
    /// Bytes of reply data that follow.
    pub length: u32,
}

/// Transmission command (`NBD_CMD_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// `NBD_CMD_READ` (0).
    Read,
    /// `NBD_CMD_WRITE` (1).
    Write,
    /// `NBD_CMD_DISC` (2).
    Disc,
    /// `NBD_CMD_FLUSH` (3).
    Flush,
    /// `NBD_CMD_TRIM` (4).
    Trim,
    /// `NBD_CMD_CACHE` (5).
    Cache,
    /// `NBD_CMD_WRITE_ZEROES` (6).
    WriteZeroes,
    /// `NBD_CMD_BLOCK_STATUS` (7).
    BlockStatus,
    /// `NBD_CMD_RESIZE` (8).
    Resize,
    /// Any other value. [`Command::from_wire`] only produces this for values
    /// not listed above, which keeps encode/decode a bijection.
    Other(u16),
}

impl Command {
    /// Decodes a 16-bit command type.
    pub fn from_wire(value: u16) -> Self {
        match value {
            0 => Self::Read,
            1 => Self::Write,
            2 => Self::Disc,
            3 => Self::Flush,
            4 => Self::Trim,
            5 => Self::Cache,
            6 => Self::WriteZeroes,
            7 => Self::BlockStatus,
            8 => Self::Resize,
            other => Self::Other(other),
        }
    }

    /// The 16-bit command type on the wire.
    pub fn to_wire(self) -> u16 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Disc => 2,
            Self::Flush => 3,
            Self::Trim => 4,
            Self::Cache => 5,
            Self::WriteZeroes => 6,
            Self::BlockStatus => 7,
            Self::Resize => 8,
            Self::Other(other) => other,
        }
    }
}

/// A transmission request header. For `NBD_CMD_WRITE`, `length` bytes of
/// payload follow it on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags (see [`command_flags`]).
    pub flags: u16,
    /// Command type.
    pub command: Command,
    /// Opaque cookie echoed in the reply.
    pub handle: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length of the operation.
    pub length: u32,
}

impl Request {
    /// Encodes the 28-byte request header.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_wire().to_be_bytes());
        out[8..16].copy_from_slice(&self.handle.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// A decoded structured reply chunk header (used by clients and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// `NBD_REPLY_FLAG_*` (see [`reply_flags`]).
    pub flags: u16,
    /// `NBD_REPLY_TYPE_*` (see [`chunk_types`]).
    pub chunk_type: u16,
    /// Handle of the request this answers.
    pub handle: u64,
    /// Bytes of payload that follow.
    pub length: u32,
}

/// One extent of an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockStatusDescriptor {
    /// Extent length in bytes (non-zero).
    pub length: u32,
    /// Status flags of the context (for `base:allocation`, [`allocation_flags`]).
    pub flags: u32,
}

/// A decoded simple reply header (used by clients and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimpleReply {
    /// `NBD_E*` error value; zero on success.
    pub error: u32,
    /// Handle of the request this answers.
    pub handle: u64,
}

/// NBD error values carried in a simple reply. These are fixed protocol
/// values, not the host's errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NbdErrno {
    /// `NBD_EPERM` (1).
    Perm,
    /// `NBD_EIO` (5).
    Io,
    /// `NBD_ENOMEM` (12).
    NoMem,
    /// `NBD_EINVAL` (22).
    Inval,
    /// `NBD_ENOSPC` (28).
    NoSpc,
    /// `NBD_EOVERFLOW` (75).
    Overflow,
    /// `NBD_ENOTSUP` (95).
    NotSup,
    /// `NBD_ESHUTDOWN` (108).
    Shutdown,
}

impl NbdErrno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Perm => 1,
            Self::Io => 5,
            Self::NoMem => 12,
            Self::Inval => 22,
            Self::NoSpc => 28,
            Self::Overflow => 75,
            Self::NotSup => 95,
            Self::Shutdown => 108,
        }
    }

    /// Maps a device error as documented on [`crate::BlockDevice`]: the kind
    /// decides, never the message. `FileTooLarge` joins the `ENOSPC` group
    /// because proto.md asks servers to map `EFBIG` (and `EDQUOT`) there.
    pub fn from_io_error(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Self::Perm,
            io::ErrorKind::StorageFull
            | io::ErrorKind::QuotaExceeded
            | io::ErrorKind::FileTooLarge => Self::NoSpc,
            io::ErrorKind::InvalidInput => Self::Inval,
            _ => Self::Io,
        }
    }
}

/// The 18-byte fixed-newstyle greeting, advertising `FIXED_NEWSTYLE` and
/// `NO_ZEROES`.
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    let flags = handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES;
    out[16..18].copy_from_slice(&flags.to_be_bytes());
    out
}

/// Decodes the client's 32-bit flags word (validity is the server's call).
pub fn decode_client_flags(buf: &[u8]) -> Result<u32, DecodeError> {
    Ok(u32::from_be_bytes(fixed::<4>(buf)?))
}

/// Decodes an option header, checking the `IHAVEOPT` magic. Only the first
/// [`OPTION_HEADER_LEN`] bytes are read.
pub fn decode_option_header(buf: &[u8]) -> Result<OptionHeader, DecodeError> {
    let raw = fixed::<OPTION_HEADER_LEN>(buf)?;
    let magic = be_u64(&raw, 0);
    if magic != IHAVEOPT {
        return Err(DecodeError::BadMagic {
            expected: IHAVEOPT,
            found: magic,
        });
    }
    Ok(OptionHeader {
        option: be_u32(&raw, 8),
        length: be_u32(&raw, 12),
    })
}

/// Encodes an option header followed by its data (used by clients and tests).
///
/// # Panics
/// If `data` is longer than `u32::MAX` bytes — a caller bug, not wire input.
pub fn encode_option(out: &mut Vec<u8>, option: u32, data: &[u8]) {
    let len = u32::try_from(data.len()).expect("option data longer than u32::MAX");
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(data);
}

/// Encodes the data of an `NBD_OPT_INFO`/`NBD_OPT_GO` request (used by
/// clients and tests).
///
/// # Panics
/// If `name` or `requests` exceed the sizes their length fields can express.
pub fn encode_info_request(name: &str, requests: &[u16]) -> Vec<u8> {
    let name_len = u32::try_from(name.len()).expect("export name longer than u32::MAX");
    let count = u16::try_from(requests.len()).expect("more than u16::MAX info requests");
    let mut out = Vec::with_capacity(6 + name.len() + 2 * requests.len());
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    for r in requests {
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

/// Decodes the data of option `option`. Options we do not implement decode to
/// [`ClientOption::Unsupported`] without looking at their data.
pub fn decode_option(option: u32, data: &[u8]) -> Result<ClientOption, OptionError> {
    match option {
        option_codes::EXPORT_NAME => Ok(ClientOption::ExportName(decode_string(data)?)),
        // proto.md: the server SHOULD ignore data sent with NBD_OPT_ABORT.
        option_codes::ABORT => Ok(ClientOption::Abort),
        option_codes::LIST if data.is_empty() => Ok(ClientOption::List),
        option_codes::LIST => Err(OptionError::UnexpectedData { len: data.len() }),
        option_codes::INFO => Ok(ClientOption::Info(decode_info_request(data)?)),
        option_codes::GO => Ok(ClientOption::Go(decode_info_request(data)?)),
        option_codes::STRUCTURED_REPLY if data.is_empty() => Ok(ClientOption::StructuredReply),
        option_codes::STRUCTURED_REPLY => Err(OptionError::UnexpectedData { len: data.len() }),
        option_codes::STARTTLS if data.is_empty() => Ok(ClientOption::StartTls),
        option_codes::STARTTLS => Err(OptionError::UnexpectedData { len: data.len() }),
        option_codes::LIST_META_CONTEXT => Ok(ClientOption::ListMetaContext(
            decode_meta_context_request(data)?,
        )),
        option_codes::SET_META_CONTEXT => Ok(ClientOption::SetMetaContext(
            decode_meta_context_request(data)?,
        )),
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// Encodes the data of an `NBD_OPT_LIST_META_CONTEXT`/`NBD_OPT_SET_META_CONTEXT`
/// request (used by clients and tests).
///
/// # Panics
/// If a string or the query count exceeds what its length field can express.
pub fn encode_meta_context_request(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    let name_len = u32::try_from(name.len()).expect("export name longer than u32::MAX");
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    let count = u32::try_from(queries.len()).expect("more than u32::MAX queries");
    out.extend_from_slice(&count.to_be_bytes());
    for q in queries {
        let len = u32::try_from(q.len()).expect("query longer than u32::MAX");
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(q.as_bytes());
    }
    out
}

fn decode_meta_context_request(data: &[u8]) -> Result<MetaContextRequest, OptionError> {
    let mut cursor = Cursor { data };
    let name = cursor.string()?;
    let count = cursor.u32()?;
    // Every query takes at least its 4-byte length, so a count the data
    // cannot hold is refused before the loop (and nothing is reserved).
    if u64::from(count) * 4 > cursor.data.len() as u64 {
        return Err(OptionError::Truncated);
    }
    let queries = (0..count)
        .map(|_| cursor.string())
        .collect::<Result<Vec<_>, _>>()?;
    if !cursor.data.is_empty() {
        return Err(OptionError::TrailingData {
            extra: cursor.data.len(),
        });
    }
    Ok(MetaContextRequest { name, queries })
}

fn decode_info_request(data: &[u8]) -> Result<InfoRequest, OptionError> {
    let mut cursor = Cursor { data };
    let name_len = cursor.u32()?;
    // Check against the limit before converting or slicing so a huge
    // declared length can neither overflow nor allocate.
    if name_len as u64 > MAX_STRING_LEN as u64 {
        return Err(OptionError::StringTooLong {
            len: usize::try_from(name_len).unwrap_or(usize::MAX),
        });
    }
    let name = decode_string(cursor.take(name_len as usize)?)?;
    let count = cursor.u16()?;
    let requests = (0..count)
        .map(|_| cursor.u16())
        .collect::<Result<Vec<_>, _>>()?;
    if !cursor.data.is_empty() {
        return Err(OptionError::TrailingData {
            extra: cursor.data.len(),
        });
    }
    Ok(InfoRequest { name, requests })
}

fn decode_string(bytes: &[u8]) -> Result<String, OptionError> {
    if bytes.len() > MAX_STRING_LEN {
        return Err(OptionError::StringTooLong { len: bytes.len() });
    }
    let s = std::str::from_utf8(bytes).map_err(|_| OptionError::InvalidString)?;
    if s.contains('\0') {
        return Err(OptionError::InvalidString);
    }
    Ok(s.to_owned())
}

/// Appends one option reply (header and data) to `out`.
///
/// Strings longer than [`MAX_STRING_LEN`] are cut at a character boundary:
/// proto.md forbids longer ones, and it keeps every length field in range.
pub fn encode_option_reply(out: &mut Vec<u8>, option: u32, reply: &OptionReply<'_>) {
    let mut data = Vec::new();
    let reply_type = match *reply {
        OptionReply::Ack => reply_types::ACK,
        OptionReply::Server { name, description } => {
            let name = clamp_str(name);
            data.extend_from_slice(&len_u32(name).to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(clamp_str(description).as_bytes());
            reply_types::SERVER
        }
        OptionReply::InfoExport { size, flags } => {
            data.extend_from_slice(&info_types::EXPORT.to_be_bytes());
            data.extend_from_slice(&size.to_be_bytes());
            data.extend_from_slice(&flags.to_be_bytes());
            reply_types::INFO
        }
        OptionReply::InfoName(name) => {
            data.extend_from_slice(&info_types::NAME.to_be_bytes());
            data.extend_from_slice(clamp_str(name).as_bytes());
            reply_types::INFO
        }
        OptionReply::InfoDescription(description) => {
            data.extend_from_slice(&info_types::DESCRIPTION.to_be_bytes());
            data.extend_from_slice(clamp_str(description).as_bytes());
            reply_types::INFO
        }
        OptionReply::InfoBlockSize {
            minimum,
            preferred,
            maximum,
        } => {
            data.extend_from_slice(&info_types::BLOCK_SIZE.to_be_bytes());
            data.extend_from_slice(&minimum.to_be_bytes());
            data.extend_from_slice(&preferred.to_be_bytes());
            data.extend_from_slice(&maximum.to_be_bytes());
            reply_types::INFO
        }
        OptionReply::MetaContext { id, name } => {
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(clamp_str(name).as_bytes());
            reply_types::META_CONTEXT
        }
        OptionReply::Error(err, message) => {
            data.extend_from_slice(clamp_str(message).as_bytes());
            err.code()
        }
    };
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // At most 4 + 2 * MAX_STRING_LEN bytes, so the cast cannot truncate.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&data);
}

/// Decodes an option reply header, checking its magic (used by clients and
/// tests).
pub fn decode_option_reply_header(buf: &[u8]) -> Result<OptionReplyHeader, DecodeError> {
    let raw = fixed::<OPTION_REPLY_HEADER_LEN>(buf)?;
    let magic = be_u64(&raw, 0);
    if magic != OPTION_REPLY_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: OPTION_REPLY_MAGIC,
            found: magic,
        });
    }
    Ok(OptionReplyHeader {
        option: be_u32(&raw, 8),
        reply_type: be_u32(&raw, 12),
        length: be_u32(&raw, 16),
    })
}

/// Appends the reply that ends a successful `NBD_OPT_EXPORT_NAME`: size,
/// transmission flags and, unless the client negotiated `NO_ZEROES`, 124
/// bytes of zero padding.
pub fn encode_export_name_reply(out: &mut Vec<u8>, size: u64, flags: u16, no_zeroes: bool) {
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING]);
    }
}

/// Decodes a request header, checking `NBD_REQUEST_MAGIC`. Only the first
/// [`REQUEST_HEADER_LEN`] bytes are read.
pub fn decode_request(buf: &[u8]) -> Result<Request, DecodeError> {
    let raw = fixed::<REQUEST_HEADER_LEN>(buf)?;
    let magic = be_u32(&raw, 0);
    if magic != REQUEST_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: u64::from(REQUEST_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(Request {
        flags: be_u16(&raw, 4),
        command: Command::from_wire(be_u16(&raw, 6)),
        handle: be_u64(&raw, 8),
        offset: be_u64(&raw, 16),
        length: be_u32(&raw, 24),
    })
}

/// Encodes a simple reply header; a successful read's data follows it.
pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_HEADER_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out
}

/// Decodes a simple reply header, checking its magic (used by clients and
/// tests).
pub fn decode_simple_reply(buf: &[u8]) -> Result<SimpleReply, DecodeError> {
    let raw = fixed::<SIMPLE_REPLY_HEADER_LEN>(buf)?;
    let magic = be_u32(&raw, 0);
    if magic != SIMPLE_REPLY_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: u64::from(SIMPLE_REPLY_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(SimpleReply {
        error: be_u32(&raw, 4),
        handle: be_u64(&raw, 8),
    })
}

/// Encodes a structured reply chunk header; `length` payload bytes follow.
pub fn encode_chunk_header(
    flags: u16,
    chunk_type: u16,
    handle: u64,
    length: u32,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
    let mut out = [0u8; STRUCTURED_REPLY_HEADER_LEN];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&handle.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// The `NBD_REPLY_TYPE_NONE` chunk that ends a reply with no other payload.
pub fn encode_none_chunk(handle: u64) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
    encode_chunk_header(reply_flags::DONE, chunk_types::NONE, handle, 0)
}

/// Encodes the header and offset of an `NBD_REPLY_TYPE_OFFSET_DATA` chunk;
/// `data_len` bytes of data follow.
///
/// # Panics
/// If `data_len` exceeds `u32::MAX - 8` (the chunk length would overflow):
/// callers split reads into smaller chunks.
pub fn encode_offset_data_header(
    flags: u16,
    handle: u64,
    offset: u64,
    data_len: u32,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN + 8] {
    let length = data_len
        .checked_add(8)
        .expect("OFFSET_DATA chunk longer than u32::MAX");
    let mut out = [0u8; STRUCTURED_REPLY_HEADER_LEN + 8];
    out[..STRUCTURED_REPLY_HEADER_LEN].copy_from_slice(&encode_chunk_header(
        flags,
        chunk_types::OFFSET_DATA,
        handle,
        length,
    ));
    out[STRUCTURED_REPLY_HEADER_LEN..].copy_from_slice(&offset.to_be_bytes());
    out
}

/// Encodes an `NBD_REPLY_TYPE_OFFSET_HOLE` chunk: `len` (non-zero) bytes at
/// `offset` read as zeroes.
pub fn encode_offset_hole(
    flags: u16,
    handle: u64,
    offset: u64,
    len: u32,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN + 12] {
    let mut out = [0u8; STRUCTURED_REPLY_HEADER_LEN + 12];
    out[..STRUCTURED_REPLY_HEADER_LEN].copy_from_slice(&encode_chunk_header(
        flags,
        chunk_types::OFFSET_HOLE,
        handle,
        12,
    ));
    out[20..28].copy_from_slice(&offset.to_be_bytes());
    out[28..32].copy_from_slice(&len.to_be_bytes());
    out
}

/// Most descriptors one block status chunk carries (proto.md: servers
/// SHOULD NOT send more than 2^20).
pub const MAX_BLOCK_STATUS_DESCRIPTORS: usize = 1 << 20;

/// Appends an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for context `context_id`.
///
/// # Panics
/// If `extents` is empty or longer than [`MAX_BLOCK_STATUS_DESCRIPTORS`]
/// (proto.md requires at least one; the server caps the count).
pub fn encode_block_status(
    out: &mut Vec<u8>,
    flags: u16,
    handle: u64,
    context_id: u32,
    extents: &[BlockStatusDescriptor],
) {
    assert!(
        !extents.is_empty() && extents.len() <= MAX_BLOCK_STATUS_DESCRIPTORS,
        "block status chunk with {} descriptors",
        extents.len()
    );
    // At most 4 + 8 * 2^20 bytes, so the cast cannot truncate.
    let length = (4 + BLOCK_STATUS_DESCRIPTOR_LEN * extents.len()) as u32;
    out.extend_from_slice(&encode_chunk_header(
        flags,
        chunk_types::BLOCK_STATUS,
        handle,
        length,
    ));
    out.extend_from_slice(&context_id.to_be_bytes());
    for e in extents {
        out.extend_from_slice(&e.length.to_be_bytes());
        out.extend_from_slice(&e.flags.to_be_bytes());
    }
}

/// Appends an error chunk: `NBD_REPLY_TYPE_ERROR`, or with `offset`
/// `NBD_REPLY_TYPE_ERROR_OFFSET`. The message is cut to
/// [`MAX_STRING_LEN`] bytes like every other string.
pub fn encode_error_chunk(
    out: &mut Vec<u8>,
    flags: u16,
    handle: u64,
    error: NbdErrno,
    message: &str,
    offset: Option<u64>,
) {
    let message = clamp_str(message);
    let (chunk_type, extra) = match offset {
        Some(_) => (chunk_types::ERROR_OFFSET, 8),
        None => (chunk_types::ERROR, 0),
    };
    // 6 + at most 4096 + 8 bytes: both casts are lossless.
    let length = (6 + message.len() + extra) as u32;
    out.extend_from_slice(&encode_chunk_header(flags, chunk_type, handle, length));
    out.extend_from_slice(&error.code().to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message.as_bytes());
    if let Some(offset) = offset {
        out.extend_from_slice(&offset.to_be_bytes());
    }
}

/// Decodes a structured reply chunk header, checking its magic (used by
/// clients and tests).
pub fn decode_chunk_header(buf: &[u8]) -> Result<ChunkHeader, DecodeError> {
    let raw = fixed::<STRUCTURED_REPLY_HEADER_LEN>(buf)?;
    let magic = be_u32(&raw, 0);
    if magic != STRUCTURED_REPLY_MAGIC {
        return Err(DecodeError::BadMagic {
            expected: u64::from(STRUCTURED_REPLY_MAGIC),
            found: u64::from(magic),
        });
    }
    Ok(ChunkHeader {
        flags: be_u16(&raw, 4),
        chunk_type: be_u16(&raw, 6),
        handle: be_u64(&raw, 8),
        length: be_u32(&raw, 16),
    })
}

/// Decodes the payload of an `NBD_REPLY_TYPE_BLOCK_STATUS` chunk: the
/// context id and the descriptors (used by clients and tests).
pub fn decode_block_status(
    payload: &[u8],
) -> Result<(u32, Vec<BlockStatusDescriptor>), DecodeError> {
    let bad = DecodeError::BadChunkLength {
        chunk_type: chunk_types::BLOCK_STATUS,
        length: payload.len(),
    };
    let Some((id, rest)) = payload.split_first_chunk::<4>() else {
        return Err(bad);
    };
    if rest.is_empty() || !rest.len().is_multiple_of(BLOCK_STATUS_DESCRIPTOR_LEN) {
        return Err(bad);
    }
    let extents = rest
        .chunks_exact(BLOCK_STATUS_DESCRIPTOR_LEN)
        .map(|d| BlockStatusDescriptor {
            length: u32::from_be_bytes([d[0], d[1], d[2], d[3]]),
            flags: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
        })
        .collect();
    Ok((u32::from_be_bytes(*id), extents))
}

/// Decodes the payload of an error chunk: the error value, the message,
/// and for `NBD_REPLY_TYPE_ERROR_OFFSET` the offset (used by clients and
/// tests).
pub fn decode_error_chunk(
    chunk_type: u16,
    payload: &[u8],
) -> Result<(u32, String, Option<u64>), DecodeError> {
    let bad = DecodeError::BadChunkLength {
        chunk_type,
        length: payload.len(),
    };
    let Some((head, rest)) = payload.split_first_chunk::<6>() else {
        return Err(bad);
    };
    let error = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let len = usize::from(u16::from_be_bytes([head[4], head[5]]));
    let Some((message, rest)) = rest.split_at_checked(len) else {
        return Err(bad);
    };
    let message = String::from_utf8_lossy(message).into_owned();
    match (chunk_type, rest.len()) {
        (chunk_types::ERROR_OFFSET, 8) => {
            let mut b = [0u8; 8];
            b.copy_from_slice(rest);
            Ok((error, message, Some(u64::from_be_bytes(b))))
        }
        (chunk_types::ERROR_OFFSET, _) => Err(bad),
        _ => Ok((error, message, None)),
    }
}

/// The first `N` bytes of `buf` as an array.
fn fixed<const N: usize>(buf: &[u8]) -> Result<[u8; N], DecodeError> {
    buf.get(..N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::Truncated {
            needed: N,
            got: buf.len(),
        })
}

// The readers below index fixed-size arrays at constant offsets chosen by
// the callers above, so they cannot go out of bounds.
fn be_u16<const N: usize>(raw: &[u8; N], at: usize) -> u16 {
    u16::from_be_bytes([raw[at], raw[at + 1]])
}

fn be_u32<const N: usize>(raw: &[u8; N], at: usize) -> u32 {
    u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]])
}

fn be_u64<const N: usize>(raw: &[u8; N], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&raw[at..at + 8]);
    u64::from_be_bytes(b)
}

/// A bounds-checked reader over variable-length option data.
struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], OptionError> {
        if n > self.data.len() {
            return Err(OptionError::Truncated);
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, OptionError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, OptionError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A string with a 32-bit length prefix, checked against the limit
    /// before anything is sliced.
    fn string(&mut self) -> Result<String, OptionError> {
        let len = self.u32()?;
        if len as u64 > MAX_STRING_LEN as u64 {
            return Err(OptionError::StringTooLong {
                len: usize::try_from(len).unwrap_or(usize::MAX),
            });
        }
        decode_string(self.take(len as usize)?)
    }
}

/// `s` cut to at most [`MAX_STRING_LEN`] bytes at a character boundary.
fn clamp_str(s: &str) -> &str {
    if s.len() <= MAX_STRING_LEN {
        return s;
    }
    let mut end = MAX_STRING_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Length of an already clamped string as a wire `u32`.
fn len_u32(s: &str) -> u32 {
    // clamp_str bounds every string to MAX_STRING_LEN, far below u32::MAX.
    s.len() as u32
}
