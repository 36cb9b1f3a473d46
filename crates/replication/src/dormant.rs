//! A site's replica store outlives its time as the primary, so that named
//! PITs outlive role changes.
//!
//! After a failover and a reverse, the site that failed over (the new
//! primary) still holds the replica store it was promoted from: the group's
//! PIT history up to the failover, named PITs included. It sits there
//! unused ("dormant") while the other site's store takes the new PITs.
//! When a failback's reverse makes this site the replica again, the
//! dormant store takes the replica's role back instead of being replaced
//! by a store built from the volumes: one PIT on top of its history holds
//! every block where the volumes differ from the store's newest state, the
//! PIT ids go on after every id the other site's store gave, and the named
//! PITs are there again, at both sites, until released.
//!
//! A dormant store without a named PIT is not worth the comparison (the
//! volumes' data ranges are read once); it is replaced as before.

use std::path::Path;
use std::sync::Arc;

use offsite_catalog::now_rfc3339;
use offsite_catalog::{GroupRow, GroupState, Role};
use offsite_engine::Volume;
use offsite_replica_store::{PitInfo, ReplicaStore};

use crate::RemoteError;
use crate::replica_side::storage_error;
use crate::run_blocking as blocking;
use crate::switch::split_brain_name;
use crate::wire::{self, ReverseReady};

/// Blocks compared per read.
const CHUNK_BLOCKS: u64 = 256;

/// Why a dormant replica store cannot take the replica's role back (it is
/// replaced by a new one built from the volumes).
#[derive(Debug, thiserror::Error)]
pub(crate) enum NotResumable {
    /// The store's volumes are not the group's.
    #[error("its volumes differ from the group's")]
    VolumesDiffer,
    /// A PIT of the store failed its checks.
    #[error("PIT {id} is damaged ({why})")]
    Damaged {
        /// The (oldest) damaged PIT.
        id: offsite_replica_store::PitId,
        /// What is wrong with it.
        why: String,
    },
    /// Nothing in the store is worth keeping.
    #[error("it holds no named PIT")]
    NoNamedPit,
}

/// Whether `store` can take the replica's role back for `row`: same
/// volumes, no damaged PIT, and a named PIT to keep. The reason when not.
pub(crate) fn resumable(store: &ReplicaStore, row: &GroupRow) -> Result<(), NotResumable> {
    let specs = store.volumes();
    let same = specs.len() == row.volumes.len()
        && specs.iter().zip(&row.volumes).all(|(s, v)| {
            s.name == v.volume && s.size_bytes == v.size_bytes && s.block_size == v.block_size
        });
    if !same {
        return Err(NotResumable::VolumesDiffer);
    }
    if let Some(d) = store.damaged().first() {
        return Err(NotResumable::Damaged {
            id: d.id,
            why: d.why.clone(),
        });
    }
    if !store.pits().iter().any(|p| p.name.is_some()) {
        return Err(NotResumable::NoNamedPit);
    }
    Ok(())
}

/// Commits to `store` one PIT (numbered after `after`) holding every block
/// where `live` (the group's volumes, in group order) differs from the
/// store's newest state; named `name` when given. Only data ranges of
/// either side are read. `None` when nothing differs and no name is asked
/// for: the newest PIT already is the volumes' state.
pub(crate) fn resume(
    store: &ReplicaStore,
    live: &[Arc<Volume>],
    after: u64,
    name: Option<String>,
    created_at: String,
) -> Result<Option<PitInfo>, RemoteError> {
    store.number_after(after);
    let newest = store.newest().map(|p| p.id);
    let mut writer = store
        .begin_pit()
        .map_err(|e| storage_error(format!("resuming the replica store: {e}"), &e))?;
    let mut changed = 0u64;
    for v in live {
        let row = v.row();
        let (size, bs) = (row.size_bytes, u64::from(row.block_size));
        let name = v.name();
        let mut ours = vec![0u8; (CHUNK_BLOCKS * bs) as usize];
        let mut theirs = vec![0u8; ours.len()];
        let mut offset = 0u64;
        while offset < size {
            let a = v.file().next_data(offset).map_err(|e| {
                RemoteError::Internal(format!("looking for data in volume {name}: {e}"))
            })?;
            let b = store.next_data(newest, name, offset).map_err(|e| {
                storage_error(format!("looking for data in the replica store: {e}"), &e)
            })?;
            let Some(at) = [a, b].into_iter().flatten().min() else {
                break;
            };
            let start = at / bs * bs;
            let len = (CHUNK_BLOCKS * bs).min(size - start);
            let (ours, theirs) = (&mut ours[..len as usize], &mut theirs[..len as usize]);
            v.file()
                .read_at(ours, start)
                .map_err(|e| RemoteError::Internal(format!("reading volume {name}: {e}")))?;
            store.read(newest, name, start, theirs).map_err(|e| {
                storage_error(
                    format!("reading the replica store's copy of {name}: {e}"),
                    &e,
                )
            })?;
            for (i, (o, t)) in ours
                .chunks(bs as usize)
                .zip(theirs.chunks(bs as usize))
                .enumerate()
            {
                if o == t {
                    continue;
                }
                let block = start / bs + i as u64;
                let r = if o.iter().all(|&x| x == 0) {
                    writer.write_zero_block(name, block)
                } else {
                    writer.write_block(name, block, o)
                };
                r.map_err(|e| storage_error(format!("resuming the replica store: {e}"), &e))?;
                changed += 1;
            }
            offset = start + len;
        }
    }
    if changed == 0 && name.is_none() {
        writer.abort();
        return Ok(None);
    }
    let info = writer
        .commit(name, created_at)
        .map_err(|e| storage_error(format!("resuming the replica store: {e}"), &e))?;
    tracing::info!(store = %store.dir().display(), pit = %info.id, blocks = changed, "the dormant replica store takes the replica's role again");
    Ok(Some(info))
}

/// This site's own replica store of `row` left from before it became the
/// primary, when it can take the replica's role back (see [`crate::dormant`]).
pub(crate) fn dormant_store(
    site: &offsite_engine::Site,
    row: &GroupRow,
) -> Option<Arc<ReplicaStore>> {
    let dir = row.store_dir.as_deref()?;
    let dir_path = Path::new(dir);
    // A directory store's metadata, or an objects store's descriptor.
    if !dir_path.join("store.meta").exists()
        && !dir_path
            .join(offsite_engine::objects::DESCRIPTOR_FILE)
            .exists()
    {
        return None;
    }
    let store = match site.replica_store(Path::new(dir)) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(group = %row.name, store = dir, "the replica store left from before the failover cannot be opened ({e}); a new one is built from the volumes");
            return None;
        }
    };
    match crate::dormant::resumable(&store, row) {
        Ok(()) => Some(store),
        Err(why) => {
            tracing::info!(group = %row.name, store = dir, "the replica store left from before the failover is replaced: {why}");
            None
        }
    }
}

/// [`Replication::answer_reverse`] with a dormant store: the store takes
/// the replica's role back with one PIT holding the volumes' state, and
/// keeps its history; the volumes are retired.
pub(crate) fn resume_dormant(
    site: &offsite_engine::Site,
    r: &GroupRow,
    store: &ReplicaStore,
    live: Vec<Arc<offsite_engine::Volume>>,
    after: u64,
    isolated: bool,
) -> Result<ReverseReady, RemoteError> {
    let unreplicated = live
        .iter()
        .map(|v| v.tracker().snapshot().iter().collect::<Vec<u32>>())
        .collect();
    // Discarded divergent writes stay readable here, as a named PIT.
    let name = isolated.then(split_brain_name);
    let pit = crate::dormant::resume(store, &live, after, name.clone(), now_rfc3339())?;
    drop(live);
    for v in &r.volumes {
        site.retire_volume(&v.volume)?;
    }
    let store_dir = store.dir().display().to_string();
    let rows = crate::pits::pit_rows(store);
    site.set_group_role(
        &r.name,
        Role::Replica,
        Some(&store_dir),
        GroupState::Replicating,
    )?;
    site.groups().replace_pits(&r.name, &rows)?;
    // With the marks this catalog kept for the PITs that have one.
    let rows = site.groups().pits(&r.name)?;
    tracing::info!(group = %r.name, pit = ?pit.map(|p| p.id), store = %store_dir, "reversed: this site's replica store from before the failover holds the group again, with its history");
    Ok(ReverseReady {
        unreplicated,
        store_dir,
        kept_as_pit: name,
        resumed: true,
        bandwidth: Some(r.bandwidth.unwrap_or(0)),
        compress: Some(r.compress),
        pits: rows.iter().map(wire::PitDesc::of_row).collect(),
    })
}

impl crate::Replication {
    /// Records in the group's events which named PITs stay in this site's
    /// replica store from before the failover (listed again once a
    /// failback makes this site the replica; see [`crate::dormant`]).
    pub(crate) async fn note_dormant_named_pits(&self, row: &GroupRow) {
        let Some(dir) = row.store_dir.clone() else {
            return;
        };
        let site = self.site.clone();
        let g = row.name.clone();
        let noted = blocking(move || {
            let store = site.replica_store(Path::new(&dir))?;
            let names: Vec<String> = store
                .pits()
                .into_iter()
                .filter_map(|p| p.name.map(|n| format!("{n} (PIT {})", p.id)))
                .collect();
            if !names.is_empty() {
                site.note(
                    "group.pits-kept",
                    &g,
                    &format!(
                        "named PITs {} stay in this site's replica store from before the failover; a failback (`offsite reverse {g}` at the other site after a failover back) makes them the replica's again",
                        names.join(", ")
                    ),
                );
            }
            Ok(())
        })
        .await;
        if let Err(e) = noted {
            tracing::warn!(group = %row.name, "listing the named PITs kept here: {e}");
        }
    }
}
