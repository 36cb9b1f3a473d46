//! Where a store's committed state lives: a directory (the layout of the
//! crate docs) or an [`ObjectStore`] (see "Stores in an object store" in
//! the crate docs). The chain logic (tiling, superseded ranges, damage,
//! ordering) is the same for both; this module holds what differs: the
//! object keys, a read cache, and base images kept as chunk objects.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock};
use std::time::Duration;

use offsite_objects::{ObjectError, ObjectStore};

use crate::ReplicaError;

/// Size of a base chunk object (the last chunk of a volume may be
/// shorter): large enough for throughput, small enough that a merge into
/// the base rewrites little more than it changes.
pub(crate) const BASE_CHUNK: u64 = 4 << 20;

/// Bytes of an object fetched and cached at once (aligned windows). A
/// cold 4 KiB read of a volume recovered from a bucket waits for one
/// window: 256 KiB costs little more than 4 KiB to fetch (measured on
/// Garage: 4 KiB p50 3.9 ms, 64 KiB 4.1 ms, 1 MiB 9.6 ms), and a longer
/// read asks for all its missing windows in one request anyway.
const WINDOW: u64 = 256 << 10;

/// Default capacity of the read cache.
pub(crate) const CACHE_BYTES: usize = 64 << 20;

/// Base chunks buffered by `write_base` before the oldest is put even if
/// incomplete (bounds memory for writers that are not sequential).
const MAX_PENDING_CHUNKS: usize = 16;

/// Where the committed state lives.
#[derive(Debug)]
pub(crate) enum Backing {
    /// The store directory itself (`pits/`, `merging/`, `base/`, `store.meta`).
    Dir,
    /// An object store; the local directory keeps only the lock, the
    /// staging area and the journal.
    Objects(Objects),
}

/// An object store with the store's read cache.
#[derive(Debug, Clone)]
pub(crate) struct Objects {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) cache: Arc<Cache>,
    /// Asked before each commit point ([`crate::CommitFence`]); set after
    /// open by the site that writes the store.
    pub(crate) fence: Arc<std::sync::RwLock<Option<Arc<dyn crate::CommitFence>>>>,
}

/// Key of `store.meta`.
pub(crate) const META_KEY: &str = "store.meta";
/// Prefix of the PITs.
pub(crate) const PITS_PREFIX: &str = "pits/";
/// Prefix of the merge-into-base markers.
pub(crate) const MERGING_PREFIX: &str = "merging/";

/// Key prefix of PIT `name` (`ID-FIRST`), with its trailing `/`.
pub(crate) fn pit_prefix(name: &str) -> String {
    format!("{PITS_PREFIX}{name}/")
}

/// Key of a file (`manifest.pit`, `NAME.seg`) of PIT `name`.
pub(crate) fn pit_key(name: &str, file: &str) -> String {
    format!("{PITS_PREFIX}{name}/{file}")
}

/// Key of the merge marker of PIT `name`.
pub(crate) fn merging_key(name: &str) -> String {
    format!("{MERGING_PREFIX}{name}")
}

/// Key of chunk `chunk` of volume `volume`'s base.
pub(crate) fn chunk_key(volume: &str, chunk: u64) -> String {
    format!("base/{volume}/{chunk:020}")
}

/// An object store error as a replica store error.
pub(crate) fn obj_err(op: &'static str, key: &str, source: ObjectError) -> ReplicaError {
    ReplicaError::Object {
        op,
        key: key.to_string(),
        source: Box::new(source),
    }
}

impl Objects {
    /// Asks the fence, if any, whether this store may still write its
    /// prefix ([`crate::CommitFence`]); before each commit point.
    pub(crate) fn check_fence(&self) -> Result<(), ReplicaError> {
        let fence = self.fence.read().unwrap_or_else(|e| e.into_inner()).clone();
        match fence {
            Some(f) => f.check().map_err(|reason| ReplicaError::Fenced { reason }),
            None => Ok(()),
        }
    }

    /// Puts `key`. The cache forgets it after the put (a read that raced
    /// with it and fetched the old bytes is then not cached, see
    /// [`Cache::insert`]), and before, so no reader is served the old
    /// bytes once the put returned.
    pub(crate) fn put(&self, key: &str, data: &[u8]) -> Result<(), ReplicaError> {
        self.cache.invalidate(key);
        let r = self.store.put(key, data);
        self.cache.invalidate(key);
        r.map_err(|e| obj_err("put", key, e))
    }

    /// [`Objects::put`] from `len` bytes of `src`.
    pub(crate) fn put_from(
        &self,
        key: &str,
        src: &mut dyn std::io::Read,
        len: u64,
    ) -> Result<(), ReplicaError> {
        self.cache.invalidate(key);
        let r = self.store.put_from(key, src, len);
        self.cache.invalidate(key);
        r.map_err(|e| obj_err("put", key, e))
    }

    /// Deletes `key` (cache as for [`Objects::put`]).
    pub(crate) fn delete(&self, key: &str) -> Result<(), ReplicaError> {
        self.cache.invalidate(key);
        let r = self.store.delete(key);
        self.cache.invalidate(key);
        r.map_err(|e| obj_err("delete", key, e))
    }

    pub(crate) fn get(&self, key: &str) -> Result<Vec<u8>, ReplicaError> {
        self.store.get(key).map_err(|e| obj_err("get", key, e))
    }

    pub(crate) fn list(
        &self,
        prefix: &str,
    ) -> Result<Vec<offsite_objects::ObjectInfo>, ReplicaError> {
        self.store
            .list(prefix)
            .map_err(|e| obj_err("list", prefix, e))
    }

    /// Reads `buf.len()` bytes at `offset` of `key` (`size` bytes long)
    /// through the cache.
    pub(crate) fn read(
        &self,
        key: &str,
        size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ReplicaError> {
        self.cache
            .read(&*self.store, key, size, offset, buf)
            .map_err(|e| obj_err("get", key, e))
    }

    /// Deletes every object of PIT `name`, its manifest first: from the
    /// first deletion on, the PIT is no longer committed, so a crash
    /// leaves leftovers that open deletes, never a PIT with a missing
    /// segment.
    pub(crate) fn delete_pit(&self, name: &str) -> Result<(), ReplicaError> {
        let manifest = pit_key(name, crate::chain::MANIFEST_FILE);
        self.delete(&manifest)?;
        for o in self.list(&pit_prefix(name))? {
            self.delete(&o.key)?;
        }
        Ok(())
    }
}

/// A bounded cache of object bytes in aligned windows of [`WINDOW`],
/// least recently used evicted first: the engine's small reads of
/// segments and base chunks do not each become a request. A window being
/// fetched is fetched once: a second reader waits for it (read-ahead
/// threads and the flattener behind them ask for the same windows, and
/// without this each window of a hydration was fetched twice).
#[derive(Debug)]
pub(crate) struct Cache {
    capacity: usize,
    inner: Mutex<CacheInner>,
    /// Notified whenever a fetch ends (see [`CacheInner::fetching`]).
    fetched: Condvar,
}

/// The longest a reader waits for another reader's fetch of a window
/// before it fetches the window itself (a fetch that hangs is the store's
/// failure to report, once, by whoever asked first).
const FETCH_WAIT: Duration = Duration::from_secs(60);

/// A cached window: its bytes and when it was last used. The windows of
/// one fetch share its buffer (slices of it, not copies: hydration copied
/// every byte once more here). A fetch's buffer lives until its last
/// window is evicted; they are fetched, used and so evicted together, and
/// a fetch is at most one read's span (the flattener's 1 MiB).
type Window = (bytes::Bytes, u64);

#[derive(Debug, Default)]
struct CacheInner {
    /// (key, window number) → window.
    map: HashMap<(String, u64), Window>,
    tick: u64,
    bytes: usize,
    /// Bumped by every invalidation: a window fetched before one (maybe
    /// the object's old bytes) is not cached.
    epoch: u64,
    /// Windows some reader is fetching now.
    fetching: HashSet<(String, u64)>,
}

/// Windows a reader is fetching, marked in the cache until dropped (the
/// fetch ended, in success or failure).
struct Fetching<'a> {
    cache: &'a Cache,
    key: &'a str,
    windows: std::ops::Range<u64>,
}

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        let mut c = self.cache.lock();
        for w in self.windows.clone() {
            c.fetching.remove(&(self.key.to_string(), w));
        }
        drop(c);
        self.cache.fetched.notify_all();
    }
}

impl Cache {
    pub(crate) fn new(capacity: usize) -> Cache {
        Cache {
            capacity,
            inner: Mutex::new(CacheInner::default()),
            fetched: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets every window of `key` (it is being rewritten or deleted).
    pub(crate) fn invalidate(&self, key: &str) {
        let mut c = self.lock();
        c.epoch += 1;
        let mut freed = 0;
        c.map.retain(|(k, _), (data, _)| {
            let keep = k != key;
            if !keep {
                freed += data.len();
            }
            keep
        });
        c.bytes -= freed;
    }

    fn lookup(&self, key: &str, w: u64) -> Option<bytes::Bytes> {
        let mut c = self.lock();
        c.tick += 1;
        let tick = c.tick;
        let e = c.map.get_mut(&(key.to_string(), w))?;
        e.1 = tick;
        Some(e.0.clone())
    }

    /// Caches window `w` of `key`, fetched when the epoch was `epoch`;
    /// dropped if an invalidation came since (the fetch may have raced
    /// with a rewrite of the object).
    fn insert(&self, key: &str, w: u64, data: bytes::Bytes, epoch: u64) {
        let mut c = self.lock();
        if c.epoch != epoch {
            return;
        }
        c.tick += 1;
        let tick = c.tick;
        c.bytes += data.len();
        if let Some((old, _)) = c.map.insert((key.to_string(), w), (data, tick)) {
            c.bytes -= old.len();
        }
        // A scan per eviction: the map holds at most capacity / WINDOW
        // (256) entries.
        while c.bytes > self.capacity {
            let Some(victim) = c
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((d, _)) = c.map.remove(&victim) {
                c.bytes -= d.len();
            }
        }
    }

    /// Reads `buf.len()` bytes at `offset` of `key` (`size` bytes long):
    /// cached windows are copied, each stretch of missing ones is fetched
    /// with one ranged read and cached.
    fn read(
        &self,
        store: &dyn ObjectStore,
        key: &str,
        size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ObjectError> {
        let end = offset + buf.len() as u64;
        if end > size {
            return Err(ObjectError::ShortObject {
                store: store.describe(),
                key: key.to_string(),
                size,
                offset,
                want: buf.len() as u64,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let copy = |buf: &mut [u8], w: u64, data: &[u8]| {
            let ws = w * WINDOW;
            let lo = ws.max(offset);
            let hi = (ws + data.len() as u64).min(end);
            buf[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&data[(lo - ws) as usize..(hi - ws) as usize]);
        };
        let (w0, w1) = (offset / WINDOW, end.div_ceil(WINDOW));
        let mut w = w0;
        while w < w1 {
            if let Some(data) = self.lookup(key, w) {
                copy(buf, w, &data);
                w += 1;
                continue;
            }
            // Missing: wait while another reader fetches it, else fetch it
            // and the missing windows after it that no one fetches.
            let (m, epoch) = {
                let mut c = self.lock();
                let id = (key.to_string(), w);
                if c.fetching.contains(&id) {
                    let deadline = std::time::Instant::now() + FETCH_WAIT;
                    while c.fetching.contains(&id) {
                        let left = deadline.saturating_duration_since(std::time::Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        c = self
                            .fetched
                            .wait_timeout(c, left)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                    if c.map.contains_key(&id) {
                        continue; // fetched: copied by the lookup above
                    }
                    // The fetch failed, was invalidated, or hangs: this
                    // reader fetches the window itself.
                }
                let mut m = w + 1;
                while m < w1 {
                    let next = (key.to_string(), m);
                    if c.map.contains_key(&next) || c.fetching.contains(&next) {
                        break;
                    }
                    m += 1;
                }
                for i in w..m {
                    c.fetching.insert((key.to_string(), i));
                }
                (m, c.epoch)
            };
            let _marked = Fetching {
                cache: self,
                key,
                windows: w..m,
            };
            let from = w * WINDOW;
            let to = (m * WINDOW).min(size);
            let fetched = bytes::Bytes::from(store.get_range(key, from, to - from)?);
            for (i, at) in (0..fetched.len()).step_by(WINDOW as usize).enumerate() {
                let data = fetched.slice(at..(at + WINDOW as usize).min(fetched.len()));
                copy(buf, w + i as u64, &data);
                self.insert(key, w + i as u64, data, epoch);
            }
            w = m;
        }
        Ok(())
    }
}

/// A volume's base image as chunk objects `base/NAME/CHUNKNO`
/// ([`BASE_CHUNK`] bytes); a missing chunk reads as zeroes, so a sparse
/// volume costs nothing, and an all-zero chunk is deleted rather than
/// written. A chunk is rewritten whole.
#[derive(Debug)]
pub(crate) struct ChunkBase {
    objects: Objects,
    volume: String,
    size: u64,
    bs: u64,
    /// Chunks that exist as objects.
    present: RwLock<BTreeSet<u64>>,
    /// Chunks written by `write_base` and not put yet.
    pending: Mutex<BTreeMap<u64, Pending>>,
}

/// A chunk being filled by `write_base`.
#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    /// Per block: written.
    written: Vec<bool>,
    count: usize,
}

impl ChunkBase {
    /// The base of `volume` (`size` bytes, blocks of `bs`), whose chunks
    /// are listed from the object store.
    pub(crate) fn open(
        objects: Objects,
        volume: &str,
        size: u64,
        bs: u64,
    ) -> Result<ChunkBase, ReplicaError> {
        let prefix = format!("base/{volume}/");
        let nchunks = size.div_ceil(BASE_CHUNK);
        let mut present = BTreeSet::new();
        for o in objects.list(&prefix)? {
            let name = &o.key[prefix.len()..];
            let chunk = (name.len() == 20)
                .then(|| name.parse::<u64>().ok())
                .flatten()
                .filter(|&c| c < nchunks);
            match chunk {
                Some(c) if o.size == chunk_len(size, c) => {
                    present.insert(c);
                }
                Some(_) => {
                    return Err(ReplicaError::corrupt(
                        PathBuf::from(&o.key),
                        format!(
                            "base chunk has {} bytes, expected {}",
                            o.size,
                            chunk_len(size, chunk.unwrap_or(0))
                        ),
                    ));
                }
                None => {
                    tracing::warn!(key = %o.key, "ignoring unexpected object in the replica store's base")
                }
            }
        }
        Ok(ChunkBase {
            objects,
            volume: volume.to_string(),
            size,
            bs,
            present: RwLock::new(present),
            pending: Mutex::new(BTreeMap::new()),
        })
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_present(&self, c: u64) -> bool {
        self.present
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&c)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub(crate) fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), ReplicaError> {
        let end = offset + buf.len() as u64;
        let mut at = offset;
        while at < end {
            let c = at / BASE_CHUNK;
            let cs = c * BASE_CHUNK;
            let hi = ((c + 1) * BASE_CHUNK).min(end);
            let dst = &mut buf[(at - offset) as usize..(hi - offset) as usize];
            let from_pending = {
                let p = self.lock_pending();
                match p.get(&c) {
                    Some(pc) => {
                        dst.copy_from_slice(&pc.data[(at - cs) as usize..(hi - cs) as usize]);
                        true
                    }
                    None => false,
                }
            };
            if !from_pending {
                if self.is_present(c) {
                    let key = chunk_key(&self.volume, c);
                    self.objects
                        .read(&key, chunk_len(self.size, c), at - cs, dst)?;
                } else {
                    dst.fill(0);
                }
            }
            at = hi;
        }
        Ok(())
    }

    /// The first stretch of chunks at or after `at` that exist (or are
    /// being written), clipped to `at..end`; `(end, end)`: none.
    pub(crate) fn extent(&self, at: u64, end: u64) -> (u64, u64) {
        let present = self.present.read().unwrap_or_else(PoisonError::into_inner);
        let pending = self.lock_pending();
        let has = |c: u64| present.contains(&c) || pending.contains_key(&c);
        let first = present
            .range(at / BASE_CHUNK..)
            .next()
            .copied()
            .into_iter()
            .chain(pending.range(at / BASE_CHUNK..).next().map(|(c, _)| *c))
            .min();
        let Some(c) = first else {
            return (end, end);
        };
        let start = (c * BASE_CHUNK).max(at);
        if start >= end {
            return (end, end);
        }
        let mut last = c;
        while has(last + 1) && (last + 1) * BASE_CHUNK < end {
            last += 1;
        }
        (start, ((last + 1) * BASE_CHUNK).min(end))
    }

    /// The current bytes of chunk `c` (pending writes not included).
    fn load(&self, c: u64) -> Result<Vec<u8>, ReplicaError> {
        let len = chunk_len(self.size, c) as usize;
        if !self.is_present(c) {
            return Ok(vec![0u8; len]);
        }
        let key = chunk_key(&self.volume, c);
        let data = self.objects.get(&key)?;
        if data.len() != len {
            return Err(ReplicaError::corrupt(
                PathBuf::from(&key),
                format!("base chunk has {} bytes, expected {len}", data.len()),
            ));
        }
        Ok(data)
    }

    /// Makes chunk `c` hold `data`: put, or deleted when all zero.
    fn store(&self, c: u64, data: &[u8]) -> Result<(), ReplicaError> {
        let key = chunk_key(&self.volume, c);
        if crate::writer::is_zero(data) {
            // Forgotten before it is deleted, so a concurrent read never
            // asks for a missing object (it reads zeroes: the new content).
            let was = self
                .present
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&c);
            if was && let Err(e) = self.objects.delete(&key) {
                // The chunk may still exist: keep reading it.
                self.present
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(c);
                return Err(e);
            }
        } else {
            self.objects.put(&key, data)?;
            self.present
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(c);
        }
        Ok(())
    }

    /// Buffers `data` at `offset` (block-aligned or not); a chunk is put
    /// once all its blocks were written, the oldest pending one when too
    /// many are pending, the others by [`ChunkBase::sync`]. A chunk that
    /// exists is read first (read-modify-write of a partial chunk).
    pub(crate) fn write(&self, data: &[u8], offset: u64) -> Result<(), ReplicaError> {
        let end = offset + data.len() as u64;
        let mut pending = self.lock_pending();
        let mut at = offset;
        while at < end {
            let c = at / BASE_CHUNK;
            let cs = c * BASE_CHUNK;
            let hi = ((c + 1) * BASE_CHUNK).min(end);
            let pc = match pending.entry(c) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let bytes = self.load(c)?;
                    let blocks = bytes.len().div_ceil(self.bs as usize);
                    e.insert(Pending {
                        data: bytes,
                        written: vec![false; blocks],
                        count: 0,
                    })
                }
            };
            pc.data[(at - cs) as usize..(hi - cs) as usize]
                .copy_from_slice(&data[(at - offset) as usize..(hi - offset) as usize]);
            // Only whole blocks count as written; a partial one waits
            // for sync.
            let (b0, b1) = ((at - cs).div_ceil(self.bs), (hi - cs) / self.bs);
            for b in b0..b1 {
                if !pc.written[b as usize] {
                    pc.written[b as usize] = true;
                    pc.count += 1;
                }
            }
            if pc.count == pc.written.len() {
                let pc = pending.remove(&c).expect("present");
                self.store(c, &pc.data)?;
            }
            at = hi;
        }
        while pending.len() > MAX_PENDING_CHUNKS {
            let (c, pc) = pending.pop_first().expect("not empty");
            self.store(c, &pc.data)?;
        }
        Ok(())
    }

    /// Puts every pending chunk.
    pub(crate) fn sync(&self) -> Result<(), ReplicaError> {
        let mut pending = self.lock_pending();
        while let Some((c, pc)) = pending.pop_first() {
            if let Err(e) = self.store(c, &pc.data) {
                pending.insert(c, pc);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Rewrites chunk `c` with `edit` applied to its current bytes.
    pub(crate) fn rewrite(
        &self,
        c: u64,
        edit: impl FnOnce(&mut [u8]) -> Result<(), ReplicaError>,
    ) -> Result<(), ReplicaError> {
        let mut data = self.load(c)?;
        edit(&mut data)?;
        self.store(c, &data)
    }

    /// Replaces the whole base with `image` (the volume's size), chunk by
    /// chunk.
    pub(crate) fn adopt(
        &self,
        image: &std::fs::File,
        path: &std::path::Path,
    ) -> Result<(), ReplicaError> {
        use std::os::unix::fs::FileExt;
        self.lock_pending().clear();
        let mut buf = Vec::new();
        for c in 0..self.size.div_ceil(BASE_CHUNK) {
            let len = chunk_len(self.size, c);
            buf.resize(len as usize, 0);
            let at = c * BASE_CHUNK;
            // A chunk that is a hole of a sparse seed is not read.
            let (data, _) = crate::chain::data_extent(image, at, at + len)
                .map_err(|e| ReplicaError::io("seek", path, e))?;
            if data >= at + len {
                buf.fill(0);
            } else {
                image
                    .read_exact_at(&mut buf, at)
                    .map_err(|e| ReplicaError::io("read", path, e))?;
            }
            self.store(c, &buf)?;
        }
        Ok(())
    }
}

impl Drop for ChunkBase {
    /// Puts the chunks `write_base` left pending: as with a directory
    /// store, whose unsynced base writes outlive the handle in the page
    /// cache, what was written stays written after a clean close (only
    /// [`ChunkBase::sync`] promises durability).
    fn drop(&mut self) {
        if let Err(e) = self.sync() {
            tracing::warn!(volume = %self.volume, "base chunks written without sync_base are lost: {e}");
        }
    }
}

/// Length of chunk `c` of a volume of `size` bytes.
pub(crate) fn chunk_len(size: u64, c: u64) -> u64 {
    (size - c * BASE_CHUNK).min(BASE_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Readers of the same windows at the same time (read-ahead threads
    /// and the flattener behind them) fetch each window once, and each gets
    /// the right bytes; a reader of a longer range fetches only the
    /// windows nobody is fetching.
    #[test]
    fn a_window_being_fetched_is_waited_for_not_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        // Slow ranged reads, counted.
        let ranged = Arc::new(AtomicUsize::new(0));
        let counted = ranged.clone();
        let store = offsite_objects::Intercepted::new(
            offsite_objects::DirStore::open(dir.path().join("o")).unwrap(),
            Box::new(move |_, _, _, read| {
                counted.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(300));
                read()
            }),
        );
        let data: Vec<u8> = (0..4 * WINDOW).map(|i| (i % 251) as u8).collect();
        store.put("k", &data).unwrap();
        let cache = Cache::new(CACHE_BYTES);
        let size = data.len() as u64;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let mut buf = vec![0u8; WINDOW as usize];
                    cache.read(&store, "k", size, 0, &mut buf).unwrap();
                    assert_eq!(buf, data[..WINDOW as usize]);
                });
            }
            s.spawn(|| {
                // Started while the first window is being fetched: waits
                // for it, fetches the other three in one request.
                std::thread::sleep(Duration::from_millis(100));
                let mut buf = vec![0u8; 4 * WINDOW as usize];
                cache.read(&store, "k", size, 0, &mut buf).unwrap();
                assert_eq!(buf, data);
            });
        });
        assert_eq!(ranged.load(Ordering::SeqCst), 2);
    }
}
