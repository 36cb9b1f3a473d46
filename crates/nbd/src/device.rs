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

    /// The allocation of `offset..offset + len`, for `NBD_CMD_BLOCK_STATUS`
    /// (`base:allocation`) and for the holes of structured read replies:
    /// consecutive extents starting at `offset`. They may cover less than
    /// `len` (at least one byte; the client asks again for the rest); the
    /// server ignores whatever they say past `len`. The default says
    /// "data" for all of it, which is always correct.
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<Extent>> {
        let _ = offset;
        Ok(vec![Extent::data(len)])
    }

    /// Whether [`BlockDevice::write_zeroes`] of `offset..offset + len`
    /// would now be faster than writing zeroes (punching a hole, changing a
    /// map), which `NBD_CMD_FLAG_FAST_ZERO` asks for; when not, the server
    /// fails such a request with `NBD_ENOTSUP` without calling the device.
    /// The default says no.
    fn can_fast_zero(&self, offset: u64, len: u64) -> bool {
        let _ = (offset, len);
        false
    }

    /// `NBD_CMD_CACHE`: the client will soon access `offset..offset + len`.
    /// A hint only; the default ignores it.
    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let _ = (offset, len);
        Ok(())
    }
}

/// What the bytes of an [`Extent`] are, as `base:allocation` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Allocation {
    /// Allocated, or not known: the bytes must be read (status 0).
    Data,
    /// Not allocated, reads as zeroes (`NBD_STATE_HOLE | NBD_STATE_ZERO`).
    Hole,
    /// Allocated but known to read as zeroes (`NBD_STATE_ZERO`).
    Zero,
}

impl Allocation {
    /// The `base:allocation` status flags.
    pub fn flags(self) -> u32 {
        use crate::codec::allocation_flags as f;
        match self {
            Self::Data => 0,
            Self::Hole => f::HOLE | f::ZERO,
            Self::Zero => f::ZERO,
        }
    }

    /// Whether the bytes read as zeroes.
    pub fn reads_zero(self) -> bool {
        !matches!(self, Self::Data)
    }
}

/// A run of bytes with one [`Allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Extent {
    /// Bytes in the run.
    pub length: u64,
    /// What they are.
    pub allocation: Allocation,
}

impl Extent {
    /// `length` bytes of data.
    pub fn data(length: u64) -> Self {
        Self {
            length,
            allocation: Allocation::Data,
        }
    }

    /// `length` bytes of hole.
    pub fn hole(length: u64) -> Self {
        Self {
            length,
            allocation: Allocation::Hole,
        }
    }
}

/// Most extents [`extents_by_seek`] returns per call; the client asks again
/// for the rest.
pub const MAX_EXTENTS: usize = 4096;

/// Extents of `offset..offset + len` for [`BlockDevice::block_status`] from
/// the two questions `SEEK_DATA`/`SEEK_HOLE` answer:
///
/// * `next_data(at)`: the first byte at or after `at` that may hold data,
///   `None` when only holes follow (everything before it is a hole);
/// * `data_end(at)`, asked only where `at` holds data: the first byte after
///   `at` that starts a hole (or anything past the range). Answers at or
///   before `at` count as "data to the end of the range".
///
/// Adjacent extents of one kind are merged; at most [`MAX_EXTENTS`] are
/// returned.
pub fn extents_by_seek(
    offset: u64,
    len: u64,
    mut next_data: impl FnMut(u64) -> io::Result<Option<u64>>,
    mut data_end: impl FnMut(u64) -> io::Result<u64>,
) -> io::Result<Vec<Extent>> {
    let end = offset.saturating_add(len);
    let mut out: Vec<Extent> = Vec::new();
    let mut at = offset;
    while at < end && out.len() < MAX_EXTENTS {
        let data = next_data(at)?.unwrap_or(end).clamp(at, end);
        let (stop, allocation) = if data > at {
            (data, Allocation::Hole)
        } else {
            let stop = data_end(at)?;
            (
                if stop <= at { end } else { stop.min(end) },
                Allocation::Data,
            )
        };
        match out.last_mut() {
            Some(last) if last.allocation == allocation => last.length += stop - at,
            _ => out.push(Extent {
                length: stop - at,
                allocation,
            }),
        }
        at = stop;
    }
    Ok(out)
}

/// A `data_end` for [`extents_by_seek`] when only `next_data` is known:
/// data starting at `at` is taken to run to the first multiple of
/// `granule` (a power of two or not, at least 1) past `at` where
/// `next_data` finds a hole, or to `end`. Holes smaller than a granule, or
/// not aligned to one, are then reported as data, which is correct. At
/// most `max_probes` granules are looked at; the data found runs to the
/// last one.
pub fn probe_data_end(
    at: u64,
    end: u64,
    granule: u64,
    max_probes: u64,
    mut next_data: impl FnMut(u64) -> io::Result<Option<u64>>,
) -> io::Result<u64> {
    let granule = granule.max(1);
    let mut p = (at / granule).saturating_add(1).saturating_mul(granule);
    let mut probes = 0;
    while p < end {
        if probes == max_probes {
            return Ok(p);
        }
        if next_data(p)? != Some(p) {
            return Ok(p);
        }
        p = p.saturating_add(granule);
        probes += 1;
    }
    Ok(end)
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
    /// TLS this export demands ([`crate::TlsMode`]); `None` takes the
    /// listener's mode.
    pub tls: Option<crate::TlsMode>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export")
            .field("name", &self.name)
            .field("size", &self.device.size())
            .field("read_only", &self.device.read_only())
            .field("tls", &self.tls)
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
