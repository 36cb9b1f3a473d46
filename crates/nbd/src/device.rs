//! What the NBD server serves: a [`BlockDevice`] per export, found by name in
//! an [`ExportRegistry`]. The server checks bounds before it calls a device,
//! so implementations may assume `offset + len <= size()` and `len > 0`
//! (zero-length requests are answered without calling the device).

use std::io;
use std::sync::Arc;

/// A fixed-size block device behind an NBD export.
///
/// Errors map onto NBD error codes by [`io::ErrorKind`]:
/// `PermissionDenied`/`ReadOnlyFilesystem` → `NBD_EPERM`,
/// `StorageFull`/`QuotaExceeded`/`FileTooLarge` → `NBD_ENOSPC`, `InvalidInput` →
/// `NBD_EINVAL`, anything else → `NBD_EIO`.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes; constant for the life of a connection.
    fn size(&self) -> u64;
    /// Whether writes, trims and write-zeroes must be refused (`NBD_EPERM`).
    fn read_only(&self) -> bool;
    /// Fills `buf` from `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`; with `fua` the data is durable on return.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()>;
    /// Makes `len` bytes at `offset` read back as zeroes.
    fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Discards `len` bytes at `offset`; they read back as zeroes afterwards.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> io::Result<()>;
    /// Makes every write completed before the call durable (on any connection).
    fn flush(&self) -> io::Result<()>;

    /// A write whose reply may have to wait (a synchronously replicated
    /// volume waits for its replica): the data is applied before this
    /// returns — later reads see it — and `Some(pending)` says the reply
    /// must wait for [`Pending::wait`]. The server then goes on with the
    /// connection's next requests meanwhile, so a client's queue depth
    /// reaches the device. The default completes inline.
    ///
    /// `more_writes`: the next request, already received, is a write too.
    /// The device may then hold this one back to send it on with the next
    /// (a replicated volume's batch); it must send what it holds on the
    /// next call without the hint or on [`BlockDevice::release_writes`].
    fn write_at_deferred(
        &self,
        buf: &[u8],
        offset: u64,
        fua: bool,
        more_writes: bool,
    ) -> io::Result<Option<Box<dyn Pending>>> {
        let _ = more_writes;
        self.write_at(buf, offset, fua).map(|()| None)
    }

    /// Sends on the writes held back by
    /// [`write_at_deferred`](BlockDevice::write_at_deferred)'s
    /// `more_writes`. The server calls it whenever it has no complete
    /// request left to read, before it could block.
    fn release_writes(&self) {}

    /// [`BlockDevice::write_zeroes`] (and trim) with a deferred reply, as
    /// [`BlockDevice::write_at_deferred`].
    fn write_zeroes_deferred(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> io::Result<Option<Box<dyn Pending>>> {
        self.write_zeroes(offset, len, fua).map(|()| None)
    }
}

/// The rest of a deferred write: returns when the write may be
/// acknowledged, or why it failed.
pub trait Pending: Send {
    /// Whether [`wait`](Self::wait) would return at once. The server
    /// sends the replies it has before it waits for one that is not ready.
    fn ready(&self) -> bool;

    /// Waits for the write's completion.
    fn wait(self: Box<Self>) -> io::Result<()>;
}

/// One export as the server sees it during negotiation.
#[derive(Clone)]
pub struct Export {
    /// Export name the client asked for.
    pub name: String,
    /// Free-text description (`NBD_INFO_DESCRIPTION`).
    pub description: String,
    /// The device serving the data.
    pub device: Arc<dyn BlockDevice>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.device.size())
            .field("read_only", &self.device.read_only())
            .finish()
    }
}

/// Resolves export names; consulted at every `NBD_OPT_GO`/`NBD_OPT_INFO`/`NBD_OPT_LIST`
/// so that volumes created after the server started are visible at once.
pub trait ExportRegistry: Send + Sync + 'static {
    /// The export called `name`, if any.
    fn lookup(&self, name: &str) -> Option<Export>;
    /// Names (and descriptions) of every export, for `NBD_OPT_LIST`.
    fn list(&self) -> Vec<(String, String)>;
}
