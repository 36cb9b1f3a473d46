//! `group resync`: brings a replica that may differ from its primary in
//! blocks the change trackers do not know of (`volume clear-dirty --force`,
//! a `verify` that found differences, a replica store repaired by hand)
//! back in line, moving only the blocks that really differ.
//!
//! It runs in the group's runner, like a cycle, so that no other cut of the
//! same volumes overlaps it:
//!
//! 1. a fresh full cut is taken and shipped as an ordinary PIT (async), or
//!    sealed in write order (sync), and stays open: every block of every
//!    volume reads as it was at that instant;
//! 2. every block at the cut is compared with that PIT at the replica by
//!    BLAKE3 (the same comparison as `verify`), collecting the differing
//!    blocks;
//! 3. the differing blocks move: an async group ships them, read at the
//!    cut, as a second PIT of the same instant; a sync group sends their
//!    current contents down its stream in write order (so no later write
//!    can be overtaken) and seals a PIT after them.
//!
//! Afterwards `verify` finds no difference, and the group's `needs_resync`
//! mark is cleared.

use std::sync::Arc;
use std::time::Instant;

use crate::model::{ResyncProgress, ResyncResult, VerifyResult, VerifyVolume};
use std::sync::atomic::Ordering;

use offsite_catalog::Role;
use offsite_catalog::{GroupRow, TrafficKind};
use offsite_engine::{RoaringBitmap, Volume, WriteMirror};
use tokio::sync::oneshot;

use crate::primary::{Command, Progress};
use crate::sync::SyncMirror;
use crate::{ReplError, Replication, invalid, run_blocking};

/// Blocks per run a sync resync sends through the stream at most (1 MiB of
/// 4 KiB blocks), like a cycle's batches.
const MAX_RUN_BYTES: u64 = 1 << 20;

impl Replication {
    /// `group resync NAME`, at the primary: handed to the group's runner,
    /// which runs it between cycles; returns once the differing blocks are
    /// on the replica.
    pub async fn resync_group(self: &Arc<Self>, name: &str) -> Result<ResyncResult, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let row = run_blocking(move || Ok(site.groups().get(&n)?)).await?;
        if row.role != Role::Primary {
            return Err(invalid(format!(
                "group resync runs at the primary of the group; group {name} is a replica here: run it at site {}",
                row.partner
            )));
        }
        crate::primary::must_be_replicating(&row, "resync")?;
        let runner = self.ensure_runner(name);
        let (reply, rx) = oneshot::channel();
        runner
            .tx()
            .send(Command::Resync { reply })
            .await
            .map_err(|_| invalid(format!("group {name}'s runner stopped; see the daemon log")))?;
        rx.await
            .map_err(|_| invalid(format!("group {name}'s runner stopped; see the daemon log")))?
            .map_err(ReplError::Refused)
    }

    /// A verify's outcome is the group's health: differences mean the
    /// replica cannot be trusted until a resync; none mean it can again.
    pub(crate) async fn record_verify(&self, result: &VerifyResult) -> Result<(), ReplError> {
        let site = self.site.clone();
        let group = result.group.clone();
        let why = (result.differing_blocks > 0).then(|| {
            format!(
                "verify found {} differing blocks at PIT {} ({})",
                result.differing_blocks,
                result.pit,
                differing_volumes(&result.volumes)
            )
        });
        run_blocking(move || Ok(site.set_group_needs_resync(&group, why.as_deref())?)).await
    }

    /// Resync of an async group; only its runner calls it.
    pub(crate) async fn resync_now(
        &self,
        row: &GroupRow,
        progress: &Progress,
    ) -> Result<ResyncResult, ReplError> {
        start_progress(row, progress);
        let r = self.resync_async(row, progress).await;
        *progress.resync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.finish_resync(row, r).await
    }

    async fn resync_async(
        &self,
        row: &GroupRow,
        progress: &Progress,
    ) -> Result<ResyncResult, ReplError> {
        let (pit, volumes) = self.cycle(row, None, true).await?;
        let r = async {
            let per = self
                .compare_sets(row, pit.id, &volumes, Some(progress))
                .await?;
            let differing: u64 = per.iter().map(|(v, _)| v.differing_blocks).sum();
            let (shipped_pit, bytes) = if differing == 0 {
                (pit.id, 0)
            } else {
                // Read at the same cut: the second PIT is the same instant
                // as the first, corrected.
                let sets: Vec<RoaringBitmap> = per.iter().map(|(_, s)| s.clone()).collect();
                self.ship_recorded(row, &volumes, &sets, pit.created_at.clone())
                    .await?
            };
            set_sent(progress, bytes);
            Ok(result(row, pit.id, shipped_pit, bytes, per))
        }
        .await;
        // The cut's own blocks went out with the first PIT, which committed.
        for v in &volumes {
            v.end_cut(true);
        }
        r
    }

    /// Ships `sets` (read at the volumes' open cut) as one PIT and records
    /// it like a cycle's; returns the PIT's id and the payload bytes sent.
    async fn ship_recorded(
        &self,
        row: &GroupRow,
        volumes: &[Arc<Volume>],
        sets: &[RoaringBitmap],
        created_at: String,
    ) -> Result<(u64, u64), ReplError> {
        let site = self.site.clone();
        let g = row.name.clone();
        let cycle_id = run_blocking(move || Ok(site.groups().begin_cycle(&g)?)).await?;
        let mut bytes = 0u64;
        let shipped = self
            .ship(row, volumes, sets, None, created_at, false, &mut bytes)
            .await;
        let site = self.site.clone();
        let g = row.name.clone();
        self.count_traffic(&row.name, TrafficKind::Resync, bytes)
            .await;
        match shipped {
            Ok(committed) => {
                let id = committed.pit.id;
                run_blocking(move || {
                    committed.record(&site, &g)?;
                    Ok(site.groups().end_cycle(cycle_id, bytes, Some(id), None)?)
                })
                .await?;
                Ok((id, bytes))
            }
            Err(e) => {
                let m = format!("resync: {e}");
                crate::warn_if_failed(
                    "recording the failed resync",
                    run_blocking(move || {
                        Ok(site.groups().end_cycle(cycle_id, bytes, None, Some(&m))?)
                    })
                    .await,
                );
                Err(e)
            }
        }
    }

    /// Resync of a sync group that is in sync; only its runner calls it.
    pub(crate) async fn resync_sync(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        progress: &Progress,
    ) -> Result<ResyncResult, ReplError> {
        start_progress(row, progress);
        let r = self.resync_stream(row, mirror, volumes, progress).await;
        *progress.resync.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.finish_resync(row, r).await
    }

    async fn resync_stream(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        volumes: &[Arc<Volume>],
        progress: &Progress,
    ) -> Result<ResyncResult, ReplError> {
        let pit = self.seal(row, mirror, volumes, None, true).await?;
        let per = self
            .compare_sets(row, pit.id, volumes, Some(progress))
            .await;
        for v in volumes {
            v.end_cut(true);
        }
        let per = per?;
        let differing: u64 = per.iter().map(|(v, _)| v.differing_blocks).sum();
        if differing == 0 {
            return Ok(result(row, pit.id, pit.id, 0, per));
        }
        // The blocks' current contents go down the stream as if written
        // again now: in the group's write order, so a write that came
        // after the cut is neither overtaken nor lost. The tracker marks
        // them first, so a link lost meanwhile resynchronizes them too.
        let mut bytes = 0u64;
        for (idx, ((_, set), vol)) in per.iter().zip(volumes).enumerate() {
            let bs = u64::from(vol.row().block_size);
            for (start, n) in runs(set, (MAX_RUN_BYTES / bs).max(1) as u32) {
                let (v, m) = (vol.clone(), mirror.clone());
                let sent = run_blocking(move || resend(&v, &m, idx as u16, start, n)).await?;
                mirror.stats.resync_bytes.fetch_add(sent, Ordering::Relaxed);
                self.count_traffic(&row.name, TrafficKind::Resync, sent)
                    .await;
                bytes += sent;
                set_sent(progress, bytes);
            }
        }
        let sealed = self.seal(row, mirror, volumes, None, false).await?;
        Ok(result(row, pit.id, sealed.id, bytes, per))
    }

    /// Clears the group's `needs_resync` after a resync that succeeded
    /// and records what it did.
    async fn finish_resync(
        &self,
        row: &GroupRow,
        r: Result<ResyncResult, ReplError>,
    ) -> Result<ResyncResult, ReplError> {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                self.record_error(&row.name, &format!("resync failed: {e}"))
                    .await;
                return Err(e);
            }
        };
        let site = self.site.clone();
        let g = row.name.clone();
        let note = format!(
            "resync compared {} blocks at PIT {}: {} differed, {} bytes shipped (PIT {})",
            r.blocks_compared, r.compared_pit, r.differing_blocks, r.bytes_sent, r.pit
        );
        tracing::info!(group = %row.name, "{note}");
        run_blocking(move || {
            site.set_group_needs_resync(&g, None)?;
            site.note("group.resync", &g, &note);
            Ok(())
        })
        .await?;
        Ok(r)
    }
}

/// Sends blocks `start..start + n` of volume `idx` as they are now through
/// the sync mirror and waits until the replica holds them; returns the
/// payload bytes sent.
fn resend(
    vol: &Volume,
    mirror: &SyncMirror,
    idx: u16,
    start: u32,
    n: u32,
) -> Result<u64, ReplError> {
    let bs = u64::from(vol.row().block_size);
    let (offset, len) = (u64::from(start) * bs, u64::from(n) * bs);
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        invalid(format!(
            "resync of volume {} at {offset}+{len}: {what}: {e}",
            vol.name()
        ))
    };
    vol.tracker()
        .mark(offset, len)
        .map_err(|e| failed("marking the blocks", &e))?;
    let mut sent = 0u64;
    let ticket = mirror
        .submit(idx, false, &mut |sink| {
            let mut buf = vec![0u8; len as usize];
            vol.file().read_at(&mut buf, offset)?;
            let zero = buf.iter().all(|&b| b == 0);
            sent = if zero { 0 } else { len };
            if zero {
                sink.zeroes(u64::from(start), n);
            } else {
                sink.data(u64::from(start), n, &buf);
            }
            Ok(())
        })
        .map_err(|e| failed("reading them", &e))?;
    mirror
        .wait(ticket)
        .map_err(|e| failed("sending them to the replica", &e))?;
    Ok(sent)
}

/// Runs of consecutive blocks of `set`, at most `max` blocks each.
fn runs(set: &RoaringBitmap, max: u32) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for b in set.iter() {
        match out.last_mut() {
            Some((start, n)) if *start + *n == b && *n < max => *n += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

fn start_progress(row: &GroupRow, progress: &Progress) {
    let total = row
        .volumes
        .iter()
        .map(|v| v.size_bytes / u64::from(v.block_size))
        .sum();
    *progress.resync.lock().unwrap_or_else(|e| e.into_inner()) = Some((
        Instant::now(),
        ResyncProgress {
            blocks_total: total,
            ..ResyncProgress::default()
        },
    ));
}

fn set_sent(progress: &Progress, bytes: u64) {
    if let Some((_, p)) = progress
        .resync
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_mut()
    {
        p.bytes_sent = bytes;
    }
}

fn result(
    row: &GroupRow,
    compared_pit: u64,
    pit: u64,
    bytes_sent: u64,
    per: Vec<(VerifyVolume, RoaringBitmap)>,
) -> ResyncResult {
    let volumes: Vec<VerifyVolume> = per.into_iter().map(|(v, _)| v).collect();
    ResyncResult {
        group: row.name.clone(),
        compared_pit,
        pit,
        blocks_compared: volumes.iter().map(|v| v.blocks_compared).sum(),
        differing_blocks: volumes.iter().map(|v| v.differing_blocks).sum(),
        bytes_sent,
        volumes,
    }
}

/// "disk0: 3, disk1: 29" for the volumes that differ.
fn differing_volumes(volumes: &[VerifyVolume]) -> String {
    volumes
        .iter()
        .filter(|v| v.differing_blocks > 0)
        .map(|v| format!("{}: {}", v.name, v.differing_blocks))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_split_at_gaps_and_at_the_maximum() {
        let set: RoaringBitmap = [1u32, 2, 3, 4, 5, 9, 10, 20].into_iter().collect();
        assert_eq!(runs(&set, 3), vec![(1, 3), (4, 2), (9, 2), (20, 1)]);
        assert_eq!(runs(&RoaringBitmap::new(), 3), vec![]);
    }

    #[test]
    fn differing_volumes_names_only_those_that_differ() {
        let v = |name: &str, d| VerifyVolume {
            name: name.into(),
            blocks_compared: 10,
            differing_blocks: d,
        };
        assert_eq!(
            differing_volumes(&[v("a", 0), v("b", 3), v("c", 1)]),
            "b: 3, c: 1"
        );
    }
}
