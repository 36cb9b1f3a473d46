//! The site engine: everything a site *is*, independent of how it is
//! reached. It owns the data-directory layout ([`layout`]), site creation
//! ([`init`]), the site configuration file ([`config`]), and the live
//! [`Site`]: the catalog, the volumes and their change trackers.
//!
//! The REST API (`offsite-api`) and the NBD server (`offsite-nbd`) are thin
//! front ends over a [`Site`]; the daemon (`offsite-daemon`) wires them up.

pub mod api_tls;
pub mod authz;
pub mod config;
mod error;
mod group_catalog;
mod groups;
pub mod hooks;
pub mod init;
pub mod layout;
pub mod model;
pub mod names;
pub mod objects;
pub mod owner;
mod partners;
mod plans;
mod promote;
mod site;
mod vms;
mod volume;

pub use error::{EngineError, ErrorKind};
pub use group_catalog::{GroupCatalog, GroupsSnapshot};
pub use model::*;
pub use offsite_cbt::RoaringBitmap;
/// NBD TLS modes, as `volume set --nbd-tls` and `[nbd_tls]` name them.
pub use offsite_nbd::TlsMode;
pub use partners::{MAX_BANDWIDTH, check_bandwidth, normalize_fingerprint};
pub use plans::PlanCatalog;
pub use site::{BoundAddresses, Site};
pub use vms::domain_name;
pub use volume::{
    CheckpointLower, PitLower, RecordSink, Volume, VolumeData, WriteMirror, layered_block_status,
};

/// Default tracking block size: 4 KiB.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Smallest block size accepted.
pub const MIN_BLOCK_SIZE: u32 = 512;
/// Largest block size accepted.
pub const MAX_BLOCK_SIZE: u32 = 1 << 20;
