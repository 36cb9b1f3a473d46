//! `verify`: a full cut shipped as a PIT, then every block of every volume
//! at that cut compared by BLAKE3 with the replica's copy (also the
//! comparison `group resync` and a reverse's suspects use).

use std::sync::Arc;

use offsite_catalog::{GroupRow, GroupState, Role};
use offsite_engine::{RoaringBitmap, Volume};
use tokio::sync::oneshot;

use crate::model::{VerifyResult, VerifyVolume};
use crate::primary::{Command, Progress, blocking};
use crate::wire::Hashes;
use crate::{ReplError, Replication, invalid};

impl Replication {
    /// `verify`: a full cut, shipped as a PIT, then every block of every
    /// volume at that cut compared by BLAKE3 with the replica's PIT.
    pub async fn verify_group(self: &Arc<Self>, name: &str) -> Result<VerifyResult, ReplError> {
        let site = self.site.clone();
        let n = name.to_string();
        let row = blocking(move || site.groups().get(&n)).await?;
        if row.role != Role::Primary || row.state != GroupState::Replicating {
            return Err(invalid(format!(
                "verify runs at the primary of a replicating group; group {name} is {} here ({})",
                row.role, row.state
            )));
        }
        // The group's runner does it, between its cycles: a cut of the same
        // volumes must never overlap another.
        let runner = self.ensure_runner(name);
        let (reply, rx) = oneshot::channel();
        runner
            .tx()
            .send(Command::Verify { reply })
            .await
            .map_err(|_| invalid(format!("group {name}'s runner stopped; see the daemon log")))?;
        rx.await
            .map_err(|_| invalid(format!("group {name}'s runner stopped; see the daemon log")))?
            .map_err(ReplError::Refused)
    }

    /// Verification proper; only the group's runner calls it.
    pub(crate) async fn verify_now(&self, row: &GroupRow) -> Result<VerifyResult, ReplError> {
        let name = &row.name;
        let (pit, volumes) = self.cycle(row, None, true).await?;
        let result = self.compare(row, pit.id, &volumes).await;
        for v in &volumes {
            v.end_cut(true);
        }
        let per = result?;
        let result = VerifyResult {
            group: name.to_string(),
            pit: pit.id,
            blocks_compared: per.iter().map(|v| v.blocks_compared).sum(),
            differing_blocks: per.iter().map(|v| v.differing_blocks).sum(),
            volumes: per,
        };
        self.record_verify(&result).await?;
        Ok(result)
    }

    pub(crate) async fn compare(
        &self,
        row: &GroupRow,
        pit: u64,
        volumes: &[Arc<Volume>],
    ) -> Result<Vec<VerifyVolume>, ReplError> {
        Ok(self
            .compare_sets(row, pit, volumes, None)
            .await?
            .into_iter()
            .map(|(v, _)| v)
            .collect())
    }

    /// Compares every block of `volumes` at their open full cut with PIT
    /// `pit` of the replica by BLAKE3; returns per volume the counts and
    /// the set of differing blocks. `progress` (a resync's) is updated
    /// after every step.
    pub(crate) async fn compare_sets(
        &self,
        row: &GroupRow,
        pit: u64,
        volumes: &[Arc<Volume>],
        progress: Option<&Progress>,
    ) -> Result<Vec<(VerifyVolume, offsite_engine::RoaringBitmap)>, ReplError> {
        const STEP: u64 = 16_384;
        let mut ch = self.channel(&row.partner, None).await?;
        let mut out = Vec::new();
        for (idx, v) in volumes.iter().enumerate() {
            let bs = u64::from(v.row().block_size);
            let nblocks = v.row().size_bytes / bs;
            let mut differing = 0u64;
            let mut set = offsite_engine::RoaringBitmap::new();
            let mut first = 0u64;
            while first < nblocks {
                let count = (nblocks - first).min(STEP);
                let theirs = ch
                    .hashes(&Hashes {
                        group: row.name.clone(),
                        pit: Some(pit),
                        volume: idx as u16,
                        first,
                        count,
                        base: false,
                    })
                    .await?;
                let vol = v.clone();
                let ours = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; bs as usize];
                    let mut hashes = Vec::with_capacity((count * 32) as usize);
                    for b in first..first + count {
                        vol.read_cut_block(b as u32, &mut buf)?;
                        hashes.extend_from_slice(blake3::hash(&buf).as_bytes());
                    }
                    Ok::<_, std::io::Error>(hashes)
                })
                .await
                .map_err(|e| invalid(e.to_string()))?
                .map_err(|e| invalid(format!("reading volume {} at the cut: {e}", v.name())))?;
                let before = differing;
                for (i, (a, b)) in ours.chunks(32).zip(theirs.chunks(32)).enumerate() {
                    if a != b {
                        differing += 1;
                        set.insert((first + i as u64) as u32);
                    }
                }
                if let Some(p) = progress
                    && let Some((_, r)) =
                        p.resync.lock().unwrap_or_else(|e| e.into_inner()).as_mut()
                {
                    r.blocks_compared += count;
                    r.differing_blocks += differing - before;
                }
                first += count;
            }
            out.push((
                VerifyVolume {
                    name: v.name().to_string(),
                    blocks_compared: nblocks,
                    differing_blocks: differing,
                },
                set,
            ));
        }
        ch.close().await;
        Ok(out)
    }

    /// Of each volume's `suspects`, the blocks whose BLAKE3 differs
    /// between our copy and the new replica's data as the old primary left
    /// it (its base, or its newest PIT when `base` is false: a resumed
    /// store); also the bytes compared. Runs of suspects (gaps
    /// of a few blocks bridged) are hashed by the replica a range at a
    /// time, ours block by block.
    pub(crate) async fn differing_suspects(
        &self,
        row: &GroupRow,
        suspects: &[RoaringBitmap],
        base: bool,
    ) -> Result<(Vec<RoaringBitmap>, u64), ReplError> {
        /// Blocks hashed per request at most.
        const STEP: u32 = 16_384;
        /// Suspects this close are hashed as one range.
        const BRIDGE: u32 = 64;
        let mut out = Vec::with_capacity(suspects.len());
        let mut compared = 0u64;
        if suspects.iter().all(RoaringBitmap::is_empty) {
            return Ok((suspects.to_vec(), 0));
        }
        let mut ch = self.channel(&row.partner, None).await?;
        for (idx, (v, set)) in row.volumes.iter().zip(suspects).enumerate() {
            let bs = u64::from(v.block_size);
            let mut ranges: Vec<(u32, u32)> = Vec::new();
            for b in set.iter() {
                match ranges.last_mut() {
                    Some((first, n)) if b < *first + *n + BRIDGE && b - *first < STEP => {
                        *n = b - *first + 1;
                    }
                    _ => ranges.push((b, 1)),
                }
            }
            let mut differ = RoaringBitmap::new();
            for (first, count) in ranges {
                let theirs = ch
                    .hashes(&Hashes {
                        group: row.name.clone(),
                        pit: None,
                        volume: idx as u16,
                        first: u64::from(first),
                        count: u64::from(count),
                        base,
                    })
                    .await?;
                let site = self.site.clone();
                let name = v.volume.clone();
                let wanted: Vec<u32> = set.range(first..first + count).collect();
                compared += wanted.len() as u64 * bs;
                let found = crate::run_blocking(move || {
                    let vol = site.volume(&name)?;
                    let mut buf = vec![0u8; bs as usize];
                    let mut found = Vec::new();
                    for b in wanted {
                        vol.file()
                            .read_at(&mut buf, u64::from(b) * bs)
                            .map_err(|e| invalid(format!("reading volume {name}: {e}")))?;
                        let at = ((b - first) as usize) * 32;
                        if theirs.get(at..at + 32) != Some(blake3::hash(&buf).as_bytes().as_slice())
                        {
                            found.push(b);
                        }
                    }
                    Ok(found)
                })
                .await?;
                differ.extend(found);
            }
            out.push(differ);
        }
        ch.close().await;
        Ok((out, compared))
    }
}
