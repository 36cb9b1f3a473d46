//! `offsite-nbd`: the NBD server through which hosts read and write offsite
//! volumes.
//!
//! This crate owns the network side of the data path: the NBD wire format
//! ([`codec`]), the listener and per-connection protocol handling
//! ([`server`]), and the [`BlockDevice`]/[`ExportRegistry`] traits the engine
//! implements to put volumes behind it ([`device`]). It knows nothing about
//! replication, change tracking or storage layout; those live behind
//! [`BlockDevice`].
//!
//! We implement the protocol by hand (following the NBD project's
//! `doc/proto.md`) because no well-kept Rust crate provides an NBD *server*
//! with what we need: fixed-newstyle negotiation with `NBD_OPT_GO`/
//! `NBD_OPT_INFO` (so clients get real errors instead of a dropped socket),
//! block-size advertisement, and `NBD_FLAG_CAN_MULTI_CONN` over a shared
//! device. The existing crates are client-side, kernel-`ioctl` glue, or
//! oldstyle-only demos. The subset we speak is small (simple and structured
//! replies, the `base:allocation` metadata context with
//! `NBD_CMD_BLOCK_STATUS`, `NBD_CMD_CACHE`, `NBD_CMD_FLAG_FAST_ZERO`,
//! 32-bit requests, TLS through `NBD_OPT_STARTTLS` with x509 or PSK
//! credentials ([`tls`])), and owning it lets us fuzz the decoder and test
//! the error mapping against `qemu-io` and `nbdinfo`.
//!
//! What is deliberately not supported: extended headers (an experimental
//! extension of proto.md; the libnbd here, 1.14, cannot speak it). It is
//! refused during negotiation with `NBD_REP_ERR_UNSUP`, which every client
//! handles.

pub mod codec;
pub mod device;
pub mod server;
pub mod tls;

pub use device::{
    Allocation, BlockDevice, Export, ExportRegistry, Extent, MAX_EXTENTS, Pending, extents_by_seek,
    probe_data_end,
};
pub use server::{ConfigError, NbdServer, ServerConfig, ServerStats, StatsSnapshot};
pub use tls::{TlsAcceptor, TlsCredentials, TlsError, TlsMode, TlsPolicy};
