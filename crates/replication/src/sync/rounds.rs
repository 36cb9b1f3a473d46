//! Resynchronizing a continuous group in rounds, without a copy-on-write
//! cut per catch-up cycle.
//!
//! **Why.** A continuous group whose replica falls behind spills its queue
//! and must resynchronize while the VM keeps writing. Catch-up cycles did
//! that with ordinary cuts: every cycle's cut set is the whole dirty set
//! (after a spill under random writes, most of the volume), and until a
//! block is shipped every write to it first copies its cut-time content
//! (`Volume::preserve`: a 4 KiB read, an allocation and a map insert under
//! the cut's lock, which the shipping reads take too). Measured on the
//! 2-vCPU bench (`bench/continuous.sh`, docs/benchmarks.md): the primary's
//! CPU per write went from ~9 µs while streaming to 36 µs, and the group
//! reached 0.15–0.26× the IOPS of an unreplicated volume.
//!
//! **How.** The catch-up is one PIT at the replica, filled in *rounds*
//! read straight from the volume file, then closed by one cut:
//!
//! 1. a round moves each volume's dirty set in flight with its writes held
//!    off for that instant ([`Volume::resync_round`]), then reads those
//!    blocks from the file as they are now and sends them. A write is
//!    either wholly applied before the round (the read sees it) or marks
//!    its blocks after it, so they are dirty again; a block read while a
//!    write changes it may be torn, and is always shipped again;
//! 2. rounds repeat while the group writes; each one takes only what was
//!    written during the previous one, so under a write rate the replica
//!    can absorb they shrink;
//! 3. the cut that ends them ([`Site::cut_after_rounds_then`]) takes only
//!    the blocks written since the last round and ships them into the same
//!    PIT, after the rounds' blocks (one ordered link: the replica
//!    overwrites). Only those blocks are copied on write meanwhile. Every
//!    other block the rounds shipped was not written between its round and
//!    the cut, so what was read is its content at the cut. The PIT
//!    committed is therefore exactly the cut's image, like a cycle's.
//!
//! **Recovery points.** Nothing the rounds send is visible at the replica
//! before that commit: the blocks go to an open PIT writer in `staging/`
//! (the stream's log was sealed when the stream ended; no checkpoint is
//! appended while no stream runs), which a failed link, a crash of either
//! site, or an abandoned resynchronization discards. The recovery points
//! meanwhile are the ones from before the spill: the newest PIT and the
//! journal's checkpoints, each a prefix of the acknowledged write order.
//!
//! **Nothing acknowledged is lost.** A round's blocks stay *in flight* in
//! the change tracker (durable as dirty across a crash) until the replica
//! has committed the PIT; only then does the cut's end clear them. A
//! failed or abandoned resynchronization leaves them in flight, and the
//! next one's first round takes them again (`first`: the whole in-flight
//! set, as a cut does).
//!
//! **Pacing.** A round that takes no less than the one before shows
//! writes faster than the replica absorbs: the next round would mostly
//! send again blocks the VM keeps rewriting, and on a host the replica or
//! other work shares it would take the VM's CPU for little. The rounds
//! then rest as long as that round took before the next one (a
//! shrinking round resumes them at once), so re-sending takes at most
//! about half of the time until the cut.
//!
//! **When the rounds end.** As soon as a round took at most
//! [`CATCH_UP_BYTES`] (what a catch-up cycle must ship at most before the
//! stream restarts): that cut is also the *last cut*, during which the
//! mirror starts queueing writes for the stream. When writes outpace the
//! replica the rounds never shrink that far; then, once the group's cycle
//! interval (what an async group's RPO schedule would wait, RPO/2 and at
//! least 15 s) has passed since they began, the cut is taken anyway, so
//! that a group falling behind still gets a consistent recovery point at
//! least as often as an async group would; that cut pays copy-on-write for
//! its (large) set, and a new PIT of rounds starts after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use offsite_catalog::GroupRow;
use offsite_engine::{RoaringBitmap, Site, Volume};

use super::{CATCH_UP_BYTES, SyncMirror};
use crate::primary::{BatchFormat, CycleTrack, PeerLink, Read, Ship, blocking, send_blocks};
use crate::wire::{self, PitCommit, PitDesc};
use crate::{ReplError, Replication, decide};

/// A PIT being filled by rounds (see the module docs).
pub(crate) struct Rounds {
    volumes: Vec<Arc<Volume>>,
    ch: PeerLink,
    /// How the blocks travel (the replica's answer to `PIT_BEGIN`).
    format: BatchFormat,
    cycle_id: i64,
    /// Blocks sent into the PIT so far (a block shipped twice counts
    /// twice, as the replica counts what it receives).
    blocks_sent: u64,
    /// Data bytes sent (zero runs travel as ranges), for traffic.
    bytes: u64,
    /// Rounds done.
    done: u32,
    /// When the first round began (the runner's clock).
    started: Instant,
    track: CycleTrack,
}

/// When rounds end (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoundsLimits {
    /// A round that took at most this much ends the rounds with the last
    /// cut ([`CATCH_UP_BYTES`]).
    pub(crate) caught_up_bytes: u64,
    /// Rounds that have gone on this long end with a cut anyway (the
    /// group's cycle interval).
    pub(crate) cut_after: Duration,
    /// After a round that took no less than the one before (not
    /// shrinking: the writes outpace the replica), wait as long as it
    /// took before the next one.
    pub(crate) pace: bool,
}

impl RoundsLimits {
    /// The limits of `row` under this site's `[replication] cycle_secs`.
    pub(crate) fn of(row: &GroupRow, cycle_secs: Option<f64>) -> RoundsLimits {
        RoundsLimits {
            caught_up_bytes: CATCH_UP_BYTES,
            cut_after: decide::cycle_interval(row.rpo_secs, cycle_secs),
            pace: true,
        }
    }
}

/// How [`Replication::resync_in_rounds`] ended.
#[derive(Debug)]
pub(crate) enum RoundsEnd {
    /// The PIT was committed; `caught_up` when its cut was the last cut
    /// (the mirror queues writes for the stream from it on).
    Committed { caught_up: bool },
    /// The group left continuous replication between rounds (paused,
    /// converted, failed over): the PIT was abandoned, its blocks stay in
    /// flight for whatever ships next.
    Left,
}

impl Rounds {
    /// The volumes' blocks taken by a round, in bytes.
    fn bytes_of(&self, sets: &[RoaringBitmap]) -> u64 {
        self.volumes
            .iter()
            .zip(sets)
            .map(|(v, s)| s.len() * u64::from(v.row().block_size))
            .sum()
    }
}

impl Replication {
    /// Resynchronizes `row` (a continuous group) with one PIT of rounds
    /// closed by a cut (see the module docs); at that cut `mirror` notes
    /// the write order's position and, when caught up, starts queueing for
    /// the stream. `still_streams` is asked between rounds whether the
    /// group is still the runner's to resynchronize.
    pub(crate) async fn resync_in_rounds<F, Fut>(
        &self,
        row: &GroupRow,
        mirror: &Arc<SyncMirror>,
        limits: RoundsLimits,
        still_streams: F,
    ) -> Result<RoundsEnd, ReplError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut r = self.begin_rounds(row).await?;
        let mut last_taken = u64::MAX;
        let caught_up = loop {
            let began = Instant::now();
            let taken = match self.round(row, &mut r).await {
                Ok(taken) => taken,
                Err(e) => return Err(self.rounds_failed(row, r, false, e).await),
            };
            if taken <= limits.caught_up_bytes {
                break true;
            }
            let elapsed = self.clock.now().saturating_duration_since(r.started);
            if elapsed >= limits.cut_after {
                tracing::info!(
                    group = %row.name,
                    rounds = r.done,
                    "resynchronization rounds do not catch up with the writes; \
                     a cut makes a consistent PIT now"
                );
                break false;
            }
            if limits.pace && taken >= last_taken {
                // The writes outpace the replica: the next round would
                // mostly send again blocks the VM keeps rewriting, taking
                // the CPU and the link from it for nothing until the cut.
                // Rest as long as the round took (at most until the cut).
                let rest = began
                    .elapsed()
                    .min(limits.cut_after.saturating_sub(elapsed));
                tokio::time::sleep(rest).await;
            }
            last_taken = taken;
            if !still_streams().await {
                self.abandon_rounds(row, r).await;
                return Ok(RoundsEnd::Left);
            }
        };
        let at = AtomicU64::new(0);
        if caught_up {
            mirror.set_queue_bytes(self.site.config().replication.continuous_queue_bytes);
        }
        self.end_rounds(row, r, || {
            at.store(mirror.issued(), Ordering::Relaxed);
            if caught_up {
                mirror.set_up();
            }
        })
        .await?;
        mirror.cover(at.load(Ordering::Relaxed));
        Ok(RoundsEnd::Committed { caught_up })
    }

    /// Opens the PIT the rounds fill (recorded as a cycle).
    pub(crate) async fn begin_rounds(&self, row: &GroupRow) -> Result<Rounds, ReplError> {
        let volumes = self.live_volumes(row).await?;
        let site = self.site.clone();
        let g = row.name.clone();
        let cycle_id = blocking(move || site.groups().begin_cycle(&g)).await?;
        let progress = self.runners.get(&row.name).map(|r| r.progress);
        let opened = async {
            let mut ch = self.channel(&row.partner, Some(row)).await?;
            let begun = ch.call(&wire::PitBegin::new(&row.name)).await?;
            Ok::<_, ReplError>((ch, BatchFormat::of(begun)))
        }
        .await;
        match opened {
            Ok((ch, format)) => Ok(Rounds {
                volumes,
                ch,
                format,
                cycle_id,
                blocks_sent: 0,
                bytes: 0,
                done: 0,
                started: self.clock.now(),
                // The total grows with each round (what status shows as
                // the transfer is the rounds' sum so far).
                track: CycleTrack::start(progress, 0),
            }),
            Err(e) => {
                self.record_failed(row, &volumes, cycle_id, 0, &e).await;
                Err(e)
            }
        }
    }

    /// One round: each volume's dirty set (the first round: everything in
    /// flight too) moved in flight and sent as the file holds it now.
    /// Returns the bytes of blocks it took.
    pub(crate) async fn round(&self, row: &GroupRow, r: &mut Rounds) -> Result<u64, ReplError> {
        let first = r.done == 0;
        let mut sets = Vec::with_capacity(r.volumes.len());
        for v in &r.volumes {
            let v = v.clone();
            sets.push(blocking(move || v.resync_round(first)).await?);
        }
        let taken = r.bytes_of(&sets);
        r.track.grow(taken);
        for (idx, (vol, set)) in r.volumes.iter().zip(&sets).enumerate() {
            let ship = Ship {
                idx,
                read: Read::Now,
                format: r.format,
            };
            r.blocks_sent += send_blocks(&mut r.ch, ship, vol, set, &mut r.bytes, &r.track).await?;
        }
        r.done += 1;
        tracing::debug!(group = %row.name, round = r.done, taken, "resynchronization round sent");
        Ok(taken)
    }

    /// The cut that ends the rounds (`during` runs in it with every write
    /// held off), its blocks sent, the PIT committed and recorded.
    pub(crate) async fn end_rounds(
        &self,
        row: &GroupRow,
        mut r: Rounds,
        during: impl FnOnce(),
    ) -> Result<PitDesc, ReplError> {
        let sets = match Site::cut_after_rounds_then(&r.volumes, during) {
            Ok(sets) => sets,
            Err(e) => return Err(self.rounds_failed(row, r, false, e.into()).await),
        };
        let created_at = self.clock.rfc3339();
        r.track.grow(r.bytes_of(&sets));
        let mut sent = Ok(());
        for (idx, (vol, set)) in r.volumes.iter().zip(&sets).enumerate() {
            let ship = Ship {
                idx,
                read: Read::AtCut,
                format: r.format,
            };
            match send_blocks(&mut r.ch, ship, vol, set, &mut r.bytes, &r.track).await {
                Ok(n) => r.blocks_sent += n,
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            }
        }
        let committed = match sent {
            Ok(()) => {
                r.ch.call(&PitCommit {
                    group: row.name.clone(),
                    name: None,
                    created_at,
                    blocks: r.blocks_sent,
                    app_consistent: false,
                })
                .await
            }
            Err(e) => Err(e),
        };
        let committed = match committed {
            Ok(c) => c,
            Err(e) => return Err(self.rounds_failed(row, r, true, e).await),
        };
        let Rounds {
            volumes,
            ch,
            cycle_id,
            bytes,
            done,
            ..
        } = r;
        ch.close().await;
        self.count_cycle_traffic(&row.name, bytes).await;
        // The replica has every block shipped, in a durable PIT: the
        // rounds' blocks and the cut's are clean (unless written since).
        for v in &volumes {
            v.end_cut(true);
        }
        let pit = self
            .record_committed(row, &volumes, cycle_id, bytes, committed)
            .await?;
        tracing::info!(group = %row.name, pit = pit.id, rounds = done, "resynchronized in rounds");
        Ok(pit)
    }

    /// The rounds failed (`cut`: after the cut that ends them began): the
    /// cut ends uncommitted, every block stays in flight, the failure is
    /// recorded as a cycle's. Returns `e`.
    async fn rounds_failed(&self, row: &GroupRow, r: Rounds, cut: bool, e: ReplError) -> ReplError {
        if cut {
            for v in &r.volumes {
                v.end_cut(false);
            }
        }
        self.count_cycle_traffic(&row.name, r.bytes).await;
        self.record_failed(row, &r.volumes, r.cycle_id, r.bytes, &e)
            .await;
        // Dropping the link without a commit discards the replica's
        // staging PIT.
        r.ch.close().await;
        e
    }

    /// The group left its mode between rounds: the PIT is dropped
    /// uncommitted (its blocks stay in flight; whatever runs next ships
    /// them), the cycle recorded as abandoned, not as a failure.
    pub(crate) async fn abandon_rounds(&self, row: &GroupRow, r: Rounds) {
        let Rounds {
            ch,
            cycle_id,
            bytes,
            ..
        } = r;
        ch.close().await;
        self.count_cycle_traffic(&row.name, bytes).await;
        let site = self.site.clone();
        crate::warn_if_failed(
            "recording the abandoned resynchronization",
            blocking(move || {
                site.groups().end_cycle(
                    cycle_id,
                    bytes,
                    None,
                    Some("resynchronization abandoned: the group left continuous replication"),
                )?;
                Ok(())
            })
            .await,
        );
    }
}
