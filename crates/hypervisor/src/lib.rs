//! offsite's access to the hypervisor.
//!
//! - `guest`: the throwaway Linux guest (host kernel + busybox initramfs)
//!   that the VM tests and `offsite demo` boot to prove a VM's disks
//!   survive a failover, booted directly under QEMU or as a libvirt domain.

pub mod guest;

pub use guest::{BootReport, GuestDisk, GuestError, GuestKit};
