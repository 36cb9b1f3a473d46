//! Initial replication: every block of the group's volumes that holds
//! data copied into the replica's base images (resumable from durable
//! checkpoints), or, against a seed, only the blocks whose BLAKE3 differs.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use offsite_catalog::GroupState;
use offsite_catalog::{GroupRow, TrafficKind};
use offsite_engine::Volume;

use crate::primary::{BASE_CHECKPOINT, MAX_BATCH_BYTES, PeerLink, Progress, blocking};
use crate::wire::{self, Hashes};
use crate::{ReplError, Replication, invalid};

impl Replication {
    /// Copies every non-zero block of every volume into the replica's base
    /// images, resuming where the last attempt's durable checkpoint left off.
    pub(crate) async fn initial_replication(
        &self,
        row: &GroupRow,
        progress: &Progress,
    ) -> Result<(), ReplError> {
        let volumes = self.live_volumes(row).await?;
        let total: u64 = row.volumes.iter().map(|v| v.size_bytes).sum();
        let done: u64 = row.volumes.iter().map(|v| v.initial_done_bytes).sum();
        progress.total.store(total, Ordering::Relaxed);
        progress.done.store(done, Ordering::Relaxed);
        let site = self.site.clone();
        let g = row.name.clone();
        let seed = blocking(move || site.groups().seed(&g)).await?;
        // A seeded start reads and hashes every block; a full copy reads
        // only the data, which the allocation of what remains estimates.
        let (data_total, data_before) = if seed.is_some() {
            (total, done)
        } else {
            volumes
                .iter()
                .zip(&row.volumes)
                .map(|(v, d)| {
                    let allocated = v
                        .file()
                        .allocated_bytes()
                        .unwrap_or(d.size_bytes)
                        .min(d.size_bytes);
                    let before = u128::from(allocated) * u128::from(d.initial_done_bytes)
                        / u128::from(d.size_bytes.max(1));
                    (allocated, before as u64)
                })
                .fold((0, 0), |(t, b), (at, ab)| (t + at, b + ab))
        };
        progress.data_total.store(data_total, Ordering::Relaxed);
        progress.data_done.store(data_before, Ordering::Relaxed);
        progress.data_start.store(data_before, Ordering::Relaxed);
        *progress.started.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), done));
        let mut ch = self.channel(&row.partner, Some(row)).await?;
        ch.call(&wire::BaseBegin::new(&row.name)).await?;
        if let Some(seed) = seed {
            if done == 0 {
                ch.call(&wire::SeedLoad {
                    group: row.name.clone(),
                    path: seed,
                })
                .await?;
            }
            let r = self.seeded_copy(row, &volumes, &mut ch, progress).await;
            self.count_traffic(&row.name, TrafficKind::Initial, ch.sent())
                .await;
            r?;
        } else {
            let r = self.full_copy(row, &volumes, &mut ch, progress).await;
            self.count_traffic(&row.name, TrafficKind::Initial, ch.sent())
                .await;
            r?;
        }
        progress.sent.fetch_add(ch.sent(), Ordering::Relaxed);
        ch.close().await;
        let site = self.site.clone();
        let g = row.name.clone();
        blocking(move || site.set_group_state(&g, GroupState::Replicating, None)).await?;
        *progress.started.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    /// Seeded initial replication: both sides hash their blocks (BLAKE3) and
    /// only the blocks that differ move. Each step of [`BASE_CHECKPOINT`]
    /// bytes is read and hashed here ([`Self::read_and_hash`]) ahead of
    /// time: while the replica hashes its copy of it, and while the step
    /// before is shipped and checkpointed.
    async fn seeded_copy(
        &self,
        row: &GroupRow,
        volumes: &[Arc<Volume>],
        ch: &mut PeerLink,
        progress: &Progress,
    ) -> Result<(), ReplError> {
        // Two step buffers, used in turn: one being shipped, one being read.
        let mut spare = Vec::new();
        for (idx, (vol, desc)) in volumes.iter().zip(&row.volumes).enumerate() {
            let bs = u64::from(desc.block_size);
            let step = (BASE_CHECKPOINT / bs).max(1);
            let nblocks = desc.size_bytes / bs;
            let mut first = desc.initial_done_bytes / bs;
            // A descriptor of the data file of our own, for SEEK_HOLE.
            let file = Arc::new(
                std::fs::File::open(vol.file().path().ok_or_else(|| {
                    invalid(format!(
                        "volume {} is a promoted volume still reading its PIT; seeded replication needs it flattened (wait for the volume.flat event and restart)",
                        desc.volume
                    ))
                })?)
                    .map_err(|e| invalid(format!("opening volume {}: {e}", desc.volume)))?,
            );
            let zero_hash = *blake3::hash(&vec![0u8; bs as usize]).as_bytes();
            let read_ahead = |first: u64, buf: Vec<u8>| {
                let f = file.clone();
                let count = (nblocks - first).min(step);
                tokio::task::spawn_blocking(move || {
                    Self::read_and_hash(&f, buf, first * bs, count * bs, bs, &zero_hash)
                })
            };
            let mut next = (first < nblocks).then(|| read_ahead(first, std::mem::take(&mut spare)));
            while let Some(ours) = next.take() {
                let count = (nblocks - first).min(step);
                let theirs = ch
                    .hashes(&Hashes {
                        group: row.name.clone(),
                        pit: None,
                        volume: idx as u16,
                        first,
                        count,
                        base: true,
                    })
                    .await;
                let (data, hashes) = ours
                    .await
                    .map_err(|e| invalid(e.to_string()))?
                    .map_err(|e| invalid(format!("reading volume {}: {e}", desc.volume)))?;
                let theirs = theirs?;
                if first + count < nblocks {
                    next = Some(read_ahead(first + count, std::mem::take(&mut spare)));
                }
                let mut runs: Vec<(u64, u64)> = Vec::new();
                for (i, (ours, theirs)) in hashes.iter().zip(theirs.chunks(32)).enumerate() {
                    if ours != theirs {
                        let b = i as u64;
                        match runs.last_mut() {
                            Some((s, n)) if *s + *n == b && *n * bs < MAX_BATCH_BYTES => *n += 1,
                            _ => runs.push((b, 1)),
                        }
                    }
                }
                for (s, n) in runs {
                    let chunk = &data[(s * bs) as usize..((s + n) * bs) as usize];
                    let zero = chunk.iter().all(|&x| x == 0);
                    let payload = wire::encode_batch(
                        idx as u16,
                        first + s,
                        n as u32,
                        (!zero).then_some(chunk),
                    );
                    ch.send_batch(payload).await?;
                }
                spare = data;
                first += count;
                progress.done.fetch_add(count * bs, Ordering::Relaxed);
                progress.data_done.fetch_add(count * bs, Ordering::Relaxed);
                ch.call(&wire::BaseSync::new(&row.name)).await?;
                let site = self.site.clone();
                let (g, vname, at) = (row.name.clone(), desc.volume.clone(), first * bs);
                blocking(move || site.groups().set_initial_progress(&g, &vname, at)).await?;
            }
        }
        Ok(())
    }

    /// Reads `len` bytes of `file` at `offset` into `buf` (reused between
    /// steps) and hashes each `bs`-byte block. Holes (`SEEK_DATA` /
    /// `SEEK_HOLE`) are zero-filled in `buf` instead of read; all-zero
    /// blocks take `zero_hash`; the rest are hashed on up to as many
    /// threads as there are CPUs.
    fn read_and_hash(
        file: &std::fs::File,
        mut buf: Vec<u8>,
        offset: u64,
        len: u64,
        bs: u64,
        zero_hash: &[u8; 32],
    ) -> std::io::Result<(Vec<u8>, Vec<[u8; 32]>)> {
        use rustix::fs::{SeekFrom, seek};
        use rustix::io::Errno;
        use std::os::unix::fs::FileExt;
        buf.resize(len as usize, 0);
        let end = offset + len;
        let mut at = offset;
        while at < end {
            // The next data extent, rounded out to whole blocks.
            let data = match seek(file, SeekFrom::Data(at)) {
                Ok(d) => d.clamp(at, end) / bs * bs,
                Err(Errno::NXIO) => end,
                Err(Errno::INVAL) => at,
                Err(e) => return Err(e.into()),
            };
            buf[(at - offset) as usize..(data - offset) as usize].fill(0);
            if data >= end {
                break;
            }
            let hole = match seek(file, SeekFrom::Hole(data)) {
                Ok(h) => h.div_ceil(bs).saturating_mul(bs).clamp(data + bs, end),
                Err(Errno::NXIO | Errno::INVAL) => end,
                Err(e) => return Err(e.into()),
            };
            file.read_exact_at(
                &mut buf[(data - offset) as usize..(hole - offset) as usize],
                data,
            )?;
            at = hole;
        }
        // The zero test ORs 64 bytes at a time, which vectorizes.
        let hash = |b: &[u8]| {
            if b.chunks(64).all(|c| c.iter().fold(0, |a, &x| a | x) == 0) {
                *zero_hash
            } else {
                *blake3::hash(b).as_bytes()
            }
        };
        let bs = bs as usize;
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
        let hashes = if threads < 2 || buf.len() < (2 << 20) {
            buf.chunks(bs).map(hash).collect()
        } else {
            let per = (buf.len() / bs).div_ceil(threads) * bs;
            std::thread::scope(|s| {
                let parts: Vec<_> = buf
                    .chunks(per)
                    .map(|part| s.spawn(move || part.chunks(bs).map(hash).collect::<Vec<_>>()))
                    .collect();
                parts
                    .into_iter()
                    .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                    .collect()
            })
        };
        Ok((buf, hashes))
    }

    /// Initial replication over the network: every non-zero block moves.
    async fn full_copy(
        &self,
        row: &GroupRow,
        volumes: &[Arc<Volume>],
        ch: &mut PeerLink,
        progress: &Progress,
    ) -> Result<(), ReplError> {
        for (idx, (vol, desc)) in volumes.iter().zip(&row.volumes).enumerate() {
            let bs = u64::from(desc.block_size);
            let mut offset = desc.initial_done_bytes;
            while offset < desc.size_bytes {
                let len = (desc.size_bytes - offset).min(MAX_BATCH_BYTES);
                let v = vol.clone();
                let read = tokio::task::spawn_blocking(move || {
                    // Holes of a thin volume are zeroes the replica's sparse
                    // base already reads: jump over them without reading.
                    match v.file().next_data(offset)? {
                        None => return Ok(Err(v.file().size())),
                        Some(at) if at >= offset + len => {
                            return Ok(Err(at - at % MAX_BATCH_BYTES));
                        }
                        Some(_) => {}
                    }
                    let mut buf = vec![0u8; len as usize];
                    v.file().read_at(&mut buf, offset).map(|()| Ok(buf))
                })
                .await
                .map_err(|e| invalid(e.to_string()))?
                .map_err(|e| invalid(format!("reading volume {}: {e}", desc.volume)))?;
                let buf = match read {
                    Ok(buf) => {
                        progress.data_done.fetch_add(len, Ordering::Relaxed);
                        buf
                    }
                    Err(next) => {
                        let next = next.clamp(offset + len, desc.size_bytes);
                        progress.done.fetch_add(next - offset, Ordering::Relaxed);
                        let crossed = next / BASE_CHECKPOINT != offset / BASE_CHECKPOINT;
                        offset = next;
                        if crossed || offset >= desc.size_bytes {
                            ch.call(&wire::BaseSync::new(&row.name)).await?;
                            let site = self.site.clone();
                            let (g, vname) = (row.name.clone(), desc.volume.clone());
                            blocking(move || {
                                site.groups().set_initial_progress(&g, &vname, offset)
                            })
                            .await?;
                        }
                        continue;
                    }
                };
                // Non-zero runs only: the replica's base starts sparse.
                let blocks = buf.chunks(bs as usize);
                let mut run: Option<(u64, usize)> = None;
                let first_block = offset / bs;
                let mut runs = Vec::new();
                for (i, b) in blocks.enumerate() {
                    let zero = b.iter().all(|&x| x == 0);
                    match (&mut run, zero) {
                        (Some((_, n)), false) => *n += 1,
                        (None, false) => run = Some((i as u64, 1)),
                        (Some(_), true) => runs.push(run.take().unwrap_or_default()),
                        (None, true) => {}
                    }
                }
                runs.extend(run);
                for (start, n) in runs {
                    let data = &buf[(start * bs) as usize..((start + n as u64) * bs) as usize];
                    let payload =
                        wire::encode_batch(idx as u16, first_block + start, n as u32, Some(data));
                    ch.send_batch(payload).await?;
                }
                offset += len;
                progress.done.fetch_add(len, Ordering::Relaxed);
                if offset % BASE_CHECKPOINT == 0 || offset >= desc.size_bytes {
                    ch.call(&wire::BaseSync::new(&row.name)).await?;
                    let site = self.site.clone();
                    let (g, vname) = (row.name.clone(), desc.volume.clone());
                    blocking(move || site.groups().set_initial_progress(&g, &vname, offset))
                        .await?;
                }
            }
        }
        Ok(())
    }
}
