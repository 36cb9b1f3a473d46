//! offsite's access to the hypervisor.
//!
//! - `libvirt`: libvirt domains and networks through `virsh` (why not the
//!   C binding: the module doc), with typed errors and domain states.
//! - `domain`: a domain's XML, read (name, disks, networks) and rewritten
//!   for a recovery site by splicing edits into the original text.
//! - `guest`: the throwaway Linux guest (host kernel + busybox initramfs)
//!   that the VM tests and `offsite demo` boot to prove a VM's disks
//!   survive a failover, booted directly under QEMU or as a libvirt domain.

pub mod domain;
pub mod guest;
pub mod libvirt;

pub use domain::{DiskSource, Domain, DomainDisk, DomainXmlError, NbdSource, Recovery};
pub use guest::{AfterMarkers, BootReport, GuestDisk, GuestError, GuestKit};
pub use libvirt::{DomainState, Libvirt, LibvirtError, StopOutcome};
