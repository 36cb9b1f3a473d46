//! Removing PITs: merging the oldest into the base, or any other into its
//! successor. See the crate docs for the ordering and why it is crash-safe.

use std::sync::Arc;

use crate::backing::{BASE_CHUNK, Backing, ChunkBase, META_KEY, merging_key};
use crate::chain::{
    BaseImg, CHUNK_BYTES, Inner, MERGING_DIR, PITS_DIR, Pit, STAGING_DIR, Vol, pit_dir_name,
};
use crate::format::{Manifest, encode_manifest};
use crate::segment::{Segment, SegmentBuilder};
use crate::writer::{pit_location, publish};
use crate::{PitId, ReplicaError, fsx};

pub(crate) fn remove_pit(inner: &Inner, id: PitId) -> Result<(), ReplicaError> {
    inner.check_poison()?;
    let mut ops = inner.lock_ops();
    inner.check_poison()?;
    let (pit, next) = {
        let st = inner.read_state();
        let pos = st.position(id)?;
        if pos + 1 == st.chain.len() && pos > 0 {
            return Err(ReplicaError::NewestPit { id });
        }
        let next = if pos == 0 {
            None
        } else {
            Some(st.chain[pos + 1].clone())
        };
        (st.chain[pos].clone(), next)
    };
    match next {
        None => {
            // A live checkpoint image reading an older state would see the
            // base change under it.
            inner.check_unpinned_below(pit.id)?;
            merge_into_base(inner, &pit)?;
            ops.base_through = pit.id;
            Ok(())
        }
        Some(next) => merge_into_next(inner, &pit, &next),
    }
}

/// Merges the oldest PIT `k` into the base.
///
/// Ordering:
/// 0. verify `k`'s data (a corrupt block fails here, with nothing changed);
/// 1. rename `pits/k` to `merging/k` — the commit point;
/// 2. fsync `merging/` and `pits/`;
/// 3. write `k`'s blocks into the base images, fsync them;
/// 4. rewrite `store.meta` with `base_through = k`;
/// 5. publish; delete `merging/k`, fsync `merging/`.
///
/// In an object store: 1. put the marker `merging/k` — the commit point
/// (`k`'s objects stay under `pits/`); 3. rewrite the base chunks `k`
/// touches; 4. put `store.meta`; 5. publish; delete `k`'s objects
/// (manifest first), then the marker.
///
/// Open redoes 3–5 for anything in `merging/` (3 is skipped when
/// `store.meta` already covers it).
fn merge_into_base(inner: &Inner, k: &Arc<Pit>) -> Result<(), ReplicaError> {
    for seg in k.segs.iter() {
        seg.verify_data()?; // 0
    }
    let name = pit_dir_name(k.id, k.first);
    match &inner.backing {
        Backing::Dir => {
            let merging = inner.path(MERGING_DIR).join(&name);
            let result = (|| {
                fsx::rename(&k.dir, &merging)?; // 1
                fsx::sync_dir(&inner.path(MERGING_DIR))?; // 2
                fsx::sync_dir(&inner.path(PITS_DIR))?;
                apply_to_base(&inner.vols, &k.segs)?; // 3
                write_meta(inner, k.id) // 4
            })();
            result.map_err(|e| inner.poison(e))?;
            publish_merged(inner, k);
            let r =
                fsx::remove_tree(&merging).and_then(|()| fsx::sync_dir(&inner.path(MERGING_DIR)));
            r.map_err(|e| inner.poison(e))
        }
        Backing::Objects(o) => {
            // Not ours any more: nothing is started (before the poisoning
            // below, which only failures after the marker need).
            o.check_fence()?;
            // The PIT's objects stay under pits/ until the end: the marker
            // names them, and open redoes the merge from them.
            let result = (|| {
                o.put(&merging_key(&name), &[])?; // 1
                apply_to_base(&inner.vols, &k.segs)?; // 3
                write_meta(inner, k.id) // 4
            })();
            result.map_err(|e| inner.poison(e))?;
            publish_merged(inner, k);
            let r = o
                .delete_pit(&name)
                .and_then(|()| o.delete(&merging_key(&name))); // 5
            r.map_err(|e| inner.poison(e))
        }
    }
}

/// Step 5 of [`merge_into_base`], in memory.
fn publish_merged(inner: &Inner, k: &Pit) {
    {
        let mut st = inner.write_state();
        st.chain.remove(0);
        st.base_through = k.id;
    }
    tracing::info!(pit = k.id, "merged PIT into the base");
}

/// Durably rewrites `store.meta` with a new `base_through`.
pub(crate) fn write_meta(inner: &Inner, base_through: u64) -> Result<(), ReplicaError> {
    match &inner.backing {
        Backing::Dir => {
            crate::recover::write_meta_at(&inner.dir, inner.uuid, &inner.specs, base_through)
        }
        Backing::Objects(o) => {
            let meta = crate::format::Meta {
                uuid: inner.uuid,
                base_through,
                volumes: inner.specs.clone(),
            };
            o.put(META_KEY, &crate::format::encode_meta(&meta))
        }
    }
}

/// Writes every block of `segs` (one per volume) into the base images and
/// fsyncs them. Idempotent. Data is checked against its BLAKE3 first.
pub(crate) fn apply_to_base(vols: &[Vol], segs: &[Segment]) -> Result<(), ReplicaError> {
    for (vol, seg) in vols.iter().zip(segs) {
        let files = match &vol.base {
            BaseImg::File(files) => files,
            BaseImg::Chunks(chunks) => {
                apply_to_chunks(vol, chunks, seg)?;
                continue;
            }
        };
        let base = crate::chain::current(files);
        let bs = vol.bs();
        let chunk = (CHUNK_BYTES / bs).max(1);
        let mut buf = vec![0u8; chunk * bs];
        for run in seg.runs(0..seg.len(), chunk) {
            let first = seg.block(run.pos);
            if run.zero {
                let (off, len) = (first * bs as u64, run.len as u64 * bs as u64);
                fsx::punch_hole(&base.file, &vol.base_path, off, len)?;
                continue;
            }
            let data = &mut buf[..run.len * bs];
            seg.read_run(run, data)?;
            // Write maximal stretches of consecutive blocks at once.
            let mut i = 0;
            while i < run.len {
                let mut j = i + 1;
                while j < run.len
                    && seg.block(run.pos + j) == seg.block(run.pos + i) + (j - i) as u64
                {
                    j += 1;
                }
                let off = seg.block(run.pos + i) * bs as u64;
                fsx::write_at(&base.file, &vol.base_path, &data[i * bs..j * bs], off)?;
                i = j;
            }
        }
        fsx::sync_data(&base.file, &vol.base_path)?;
    }
    Ok(())
}

/// [`apply_to_base`] of one volume whose base is chunk objects: each
/// chunk `seg` touches is rewritten once, whole.
fn apply_to_chunks(vol: &Vol, chunks: &ChunkBase, seg: &Segment) -> Result<(), ReplicaError> {
    let bs = vol.bs();
    let per = BASE_CHUNK / bs as u64;
    let max = (CHUNK_BYTES / bs).max(1);
    let mut buf = vec![0u8; max * bs];
    let mut pos = 0;
    while pos < seg.len() {
        let c = seg.block(pos) / per;
        let positions = seg.range(c * per, (c + 1) * per);
        let at = |block: u64| ((block - c * per) as usize) * bs;
        chunks.rewrite(c, |data| {
            for run in seg.runs(positions.clone(), max) {
                if run.zero {
                    for p in run.pos..run.pos + run.len {
                        let a = at(seg.block(p));
                        data[a..a + bs].fill(0);
                    }
                    continue;
                }
                let got = &mut buf[..run.len * bs];
                seg.read_run(run, got)?;
                for x in 0..run.len {
                    let a = at(seg.block(run.pos + x));
                    data[a..a + bs].copy_from_slice(&got[x * bs..(x + 1) * bs]);
                }
            }
            Ok(())
        })?;
        pos = positions.end;
    }
    Ok(())
}

/// Merges PIT `k` into its successor `n`: `n' = k ∪ n`, `n`'s blocks win;
/// `n'` keeps `n`'s id, name and creation time, and `first(k)`.
///
/// Ordering:
/// 1. build `staging/n-FIRST(k)` (segments re-verified while copying,
///    fsynced; manifest fsynced; directory fsynced);
/// 2. rename it to `pits/n-FIRST(k)` — the commit point: it supersedes
///    `pits/k-…` and `pits/n-…`;
/// 3. fsync `pits/`; publish;
/// 4. delete the two superseded directories, fsync `pits/`.
///
/// In an object store, 1 builds the segments locally, 2 uploads them to
/// `pits/n-FIRST(k)/` and then puts its manifest — the commit point — and
/// 4 deletes the superseded PITs' objects, manifest first.
fn merge_into_next(inner: &Inner, k: &Arc<Pit>, n: &Arc<Pit>) -> Result<(), ReplicaError> {
    let name = pit_dir_name(n.id, k.first);
    let staging = inner.path(STAGING_DIR).join(&name);
    let built = build_merged(inner, k, n, &staging);
    let (segs, manifest) = match built {
        Ok(x) => x,
        Err(e) => {
            // Open empties `staging/` anyway (recover, step 2).
            let _ = fsx::remove_tree(&staging);
            return Err(e);
        }
    };
    let mut consumed = false;
    let published = publish(
        inner,
        &staging,
        &name,
        &encode_manifest(&manifest),
        segs,
        &mut consumed,
    ); // 2, 3
    let segs = match published {
        Ok(segs) => segs,
        Err(e) => {
            if !consumed {
                let _ = fsx::remove_tree(&staging);
            }
            return Err(e);
        }
    };
    let merged = Arc::new(Pit {
        id: n.id,
        first: k.first,
        name: manifest.name,
        created_at: manifest.created_at,
        dir: pit_location(inner, &name),
        summaries: manifest.volumes,
        segs: segs.into(),
    });
    {
        let mut st = inner.write_state();
        st.chain.retain(|p| p.id != k.id);
        let pos = st.position(PitId(n.id))?;
        st.chain[pos] = merged;
    }
    tracing::info!(pit = k.id, into = n.id, "merged PIT into its successor");
    let r = match &inner.backing {
        Backing::Dir => fsx::remove_tree(&k.dir)
            .and_then(|()| fsx::remove_tree(&n.dir))
            .and_then(|()| fsx::sync_dir(&inner.path(PITS_DIR)))
            .map_err(ReplicaError::from),
        Backing::Objects(o) => o
            .delete_pit(&pit_dir_name(k.id, k.first))
            .and_then(|()| o.delete_pit(&pit_dir_name(n.id, n.first))),
    }; // 4
    r.map_err(|e| inner.poison(e))
}

/// Step 1 of [`merge_into_next`].
fn build_merged(
    inner: &Inner,
    k: &Pit,
    n: &Pit,
    staging: &std::path::Path,
) -> Result<(Vec<Segment>, Manifest), ReplicaError> {
    fsx::remove_tree(staging)?;
    fsx::create_dir(staging)?;
    let mut segs = Vec::with_capacity(inner.vols.len());
    let mut summaries = Vec::with_capacity(inner.vols.len());
    for (v, vol) in inner.vols.iter().enumerate() {
        let path = staging.join(format!("{}.seg", vol.spec.name));
        let mut b = SegmentBuilder::create(path, vol.spec.block_size, v as u32)?;
        let (ks, ns) = (&k.segs[v], &n.segs[v]);
        // Plan: (source, position) in block order; `n` wins on ties.
        let mut plan: Vec<(bool, usize)> = Vec::with_capacity(ks.len() + ns.len());
        let (mut i, mut j) = (0, 0);
        while i < ks.len() || j < ns.len() {
            let take_n = j < ns.len() && (i >= ks.len() || ns.block(j) <= ks.block(i));
            if take_n {
                if i < ks.len() && ks.block(i) == ns.block(j) {
                    i += 1;
                }
                plan.push((true, j));
                j += 1;
            } else {
                plan.push((false, i));
                i += 1;
            }
        }
        copy_plan(&mut b, vol, ks, ns, &plan)?;
        let (seg, summary) = b.finish(&inner.uuid, n.id, staging)?;
        segs.push(seg);
        summaries.push(summary);
    }
    let manifest = Manifest {
        uuid: inner.uuid,
        id: n.id,
        first: k.first,
        name: n.name.clone(),
        created_at: n.created_at.clone(),
        volumes: summaries,
    };
    Ok((segs, manifest))
}

/// Copies the planned entries into `b`, reading data in runs.
fn copy_plan(
    b: &mut SegmentBuilder,
    vol: &Vol,
    ks: &Segment,
    ns: &Segment,
    plan: &[(bool, usize)],
) -> Result<(), ReplicaError> {
    let bs = vol.bs();
    let chunk = (CHUNK_BYTES / bs).max(1);
    let mut buf = vec![0u8; chunk * bs];
    let mut i = 0;
    while i < plan.len() {
        // A stretch of consecutive positions of one source.
        let (from_n, pos) = plan[i];
        let mut j = i + 1;
        while j < plan.len() && j - i < chunk && plan[j] == (from_n, pos + (j - i)) {
            j += 1;
        }
        let seg = if from_n { ns } else { ks };
        for run in seg.runs(pos..pos + (j - i), chunk) {
            if run.zero {
                for p in run.pos..run.pos + run.len {
                    b.put_zero(seg.block(p), vol.zero_hash);
                }
                continue;
            }
            let data = &mut buf[..run.len * bs];
            let hashes = seg.read_run(run, data)?;
            for (x, h) in hashes.iter().enumerate() {
                b.put_data(
                    seg.block(run.pos + x),
                    &data[x * bs..(x + 1) * bs],
                    Some(*h),
                )?;
            }
        }
        i = j;
    }
    Ok(())
}
