//! The old primary's side of a reverse: answering
//! [`crate::wire::kinds::REVERSE_BEGIN`] by becoming the group's replica. Its
//! runner stops, its volumes are fenced and retired, and their data files
//! become the base images of a new replica store (hard links: no copy) —
//! or a dormant store from before takes the replica's role back (see
//! [`crate::dormant`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offsite_catalog::{GroupRow, GroupState, Role};
use offsite_engine::authz::Grant;
use offsite_engine::{Site, Volume};
use offsite_replica_store::{ReplicaStore, VolumeSpec};

use super::{now_rfc3339, split_brain_name};
use crate::dormant::{dormant_store, resume_dormant};
use crate::replica_side::storage_error;

use crate::wire::{ReverseBegin, ReverseReady};
use crate::{RemoteError, Replication};

impl Replication {
    /// Answers [`crate::wire::kinds::REVERSE_BEGIN`] at the old primary: become
    /// the group's replica, keeping the volumes' data as the new store's
    /// base.
    pub(crate) async fn answer_reverse(
        &self,
        peer: &str,
        req: ReverseBegin,
    ) -> Result<ReverseReady, RemoteError> {
        let row = self.primary_row_for(peer, &req.group).await?;
        let isolated = self.isolated_or_refuse(&row, &req).await?;
        let grant = self.grant_for_reverse(peer, &row)?;
        let live = self.stop_and_fence(&row, &req.group).await?;
        let site = self.site.clone();
        let target = StoreTarget::of(&self.site, &grant, peer, &req.group)?;
        let r = row.clone();
        let (last_pit, promoted_pit) = (req.last_pit, req.pit);
        let ready = tokio::task::spawn_blocking(move || -> Result<ReverseReady, RemoteError> {
            // Number this site's PITs after every id either site gave.
            let after = site
                .groups()
                .pits(&r.name)?
                .iter()
                .map(|p| p.id)
                .max()
                .unwrap_or(0)
                .max(last_pit)
                .max(promoted_pit);
            if let Some(store) = dormant_store(&site, &r) {
                return resume_dormant(&site, &r, &store, live, after, isolated > 0);
            }
            become_replica(&site, &r, &target, live, after, isolated > 0)
        })
        .await??;
        tracing::info!(group = %req.group, primary = %peer, "reversed: this site is the replica now");
        Ok(ready)
    }

    /// The bytes the group's volumes wrote while they could not replicate;
    /// a split brain unless the reverse was told to discard them.
    async fn isolated_or_refuse(
        &self,
        row: &GroupRow,
        req: &ReverseBegin,
    ) -> Result<u64, RemoteError> {
        let live = self.live_volumes(row).await?;
        let isolated: u64 = live
            .iter()
            .map(|v| v.isolated_blocks().len() * u64::from(v.row().block_size))
            .sum();
        if isolated > 0 && !req.discard_isolated {
            return Err(RemoteError::SplitBrain(format!(
                "split brain: site {} wrote {isolated} bytes of group {} while it could not replicate; reverse with --discard-changes-on to choose",
                self.site.config().name,
                req.group
            )));
        }
        Ok(isolated)
    }

    /// Where this site may keep `peer`'s replica of the group: a reverse
    /// makes it `peer`'s replica, which needs the operator's grant.
    fn grant_for_reverse(&self, peer: &str, row: &GroupRow) -> Result<Grant, RemoteError> {
        let site_name = self.site.config().name.clone();
        self.site
            .authorize_primary(peer, row.security_tag.as_deref())
            .map_err(|e| {
                RemoteError::Unauthorized(format!(
                    "{e}; reverse makes {site_name} the replica of {peer}: run `offsite authz add --allowed-primary {peer} --storage-location DIR` at {site_name}"
                ))
            })
    }

    /// Stops the group's runner — its loop ends once the role changes, and
    /// a cycle in flight fails at the replica, which refuses it — and
    /// fences the volumes (writes refused); returns them.
    async fn stop_and_fence(
        &self,
        row: &GroupRow,
        group: &str,
    ) -> Result<Vec<Arc<Volume>>, RemoteError> {
        self.runners.remove(group);
        let live = self.live_volumes(row).await?;
        for v in &live {
            v.set_fenced(true);
        }
        Ok(live)
    }
}

/// Where a reverse puts the new store: `LOCATION/PEER/GROUP` for a
/// directory location; for `s3://BUCKET/PREFIX`, a working directory under
/// the data directory and the objects under `PREFIX/GROUP/`.
#[derive(Debug)]
struct StoreTarget {
    /// The store's directory (its working directory for an objects store).
    dir: PathBuf,
    /// The group's objects, when the location is a bucket.
    objects: Option<offsite_objects::StorageLocation>,
}

impl StoreTarget {
    fn of(site: &Site, grant: &Grant, peer: &str, group: &str) -> Result<StoreTarget, RemoteError> {
        let location = offsite_objects::StorageLocation::parse(&grant.storage_location)
            .map_err(|e| format!("{e}; fix the storage location of {}", grant.rule))?;
        Ok(match location {
            offsite_objects::StorageLocation::Directory(d) => StoreTarget {
                dir: d.join(peer).join(group),
                objects: None,
            },
            s3 => StoreTarget {
                dir: offsite_engine::objects::work_dir_for(site.layout(), peer, group),
                objects: Some(offsite_engine::objects::sub_location(&s3, group)),
            },
        })
    }
}

/// Makes this site the group's replica with a new store at `target` whose
/// base images are the volumes' data files, numbering its PITs after
/// `after`; `isolated` keeps the discarded divergent writes as a named PIT.
fn become_replica(
    site: &Site,
    r: &GroupRow,
    target: &StoreTarget,
    live: Vec<Arc<Volume>>,
    after: u64,
    isolated: bool,
) -> Result<ReverseReady, RemoteError> {
    let dir = target.dir.as_path();
    let (unreplicated, images) = complete_volumes(site, &live)?;
    // Link the images aside first: the old store (from the other
    // direction) may live at the very directory the new one takes.
    let staging = dir.with_extension("reverse-staging");
    stage_images(&live, &images, &staging)?;
    drop(live);
    install_store(site, r, target, &staging, after)?;
    let store_dir = dir.display().to_string();
    let kept_as_pit = if isolated {
        Some(keep_divergent_as_pit(site, r, dir)?)
    } else {
        None
    };
    site.set_group_role(
        &r.name,
        Role::Replica,
        Some(&store_dir),
        GroupState::Replicating,
    )?;
    if kept_as_pit.is_none() {
        site.groups().replace_pits(&r.name, &[])?;
    }
    Ok(ReverseReady {
        unreplicated,
        store_dir,
        kept_as_pit,
        resumed: false,
        pits: Vec::new(),
        bandwidth: Some(r.bandwidth.unwrap_or(0)),
        compress: Some(r.compress),
    })
}

/// Each volume's blocks that never reached a committed PIT (its tracker)
/// and its data file, complete and synced: a promoted volume still
/// reading its PIT is completed first, since its top layer must hold the
/// whole image to become a base.
fn complete_volumes(
    site: &Site,
    live: &[Arc<Volume>],
) -> Result<(Vec<Vec<u32>>, Vec<PathBuf>), RemoteError> {
    let mut unreplicated = Vec::new();
    let mut images = Vec::new();
    for v in live {
        unreplicated.push(v.tracker().snapshot().iter().collect::<Vec<u32>>());
        if let Some(layer) = v.file().layered() {
            while layer.flatten_step(4096).map_err(|e| {
                RemoteError::Internal(format!("completing volume {}: {e}", v.name()))
            })? > 0
            {}
        }
        v.file()
            .sync()
            .map_err(|e| RemoteError::Internal(format!("syncing volume {}: {e}", v.name())))?;
        images.push(site.volume_image_path(v.name())?);
    }
    Ok((unreplicated, images))
}

/// Hard-links the volumes' data files into `staging` (durably).
fn stage_images(
    live: &[Arc<Volume>],
    images: &[PathBuf],
    staging: &Path,
) -> Result<(), RemoteError> {
    // Left by an interrupted reverse, if at all; creating it again below
    // fails if it could not be removed.
    drop(std::fs::remove_dir_all(staging));
    offsite_volume_file::create_private_dir_all(staging)
        .map_err(|e| RemoteError::Internal(format!("creating {}: {e}", staging.display())))?;
    for (v, img) in live.iter().zip(images) {
        std::fs::hard_link(img, staging.join(v.name())).map_err(|e| {
            RemoteError::Internal(format!(
                "linking {} into {} (the storage location must be on the data directory's filesystem): {e}",
                img.display(),
                staging.display()
            ))
        })?;
    }
    offsite_volume_file::sync_dir(staging)
        .map_err(|e| RemoteError::Internal(format!("syncing {}: {e}", staging.display())))
}

/// Retires the volumes and any old store of the group, creates the new
/// store at `target` and installs the staged images as its base: renamed
/// into a directory store, uploaded into an objects store (then removed).
fn install_store(
    site: &Site,
    r: &GroupRow,
    target: &StoreTarget,
    staging: &Path,
    after: u64,
) -> Result<(), RemoteError> {
    let dir = target.dir.as_path();
    for v in &r.volumes {
        site.retire_volume(&v.volume)?;
    }
    for old in r.store_dir.iter().map(Path::new).chain([dir]) {
        site.forget_replica_store(old);
        if !old.exists() {
            continue;
        }
        // An old objects store's objects go first (the new store needs an
        // empty prefix, and they would be orphans): its working directory
        // says where they are.
        site.delete_store_objects(old).map_err(|e| {
            RemoteError::Internal(format!(
                "removing the old replica store {}: {e}",
                old.display()
            ))
        })?;
        if old == dir {
            std::fs::remove_dir_all(dir)
                .map_err(|e| RemoteError::Internal(format!("clearing {}: {e}", dir.display())))?;
        } else {
            crate::warn_if_failed(
                &format!("removing the old replica store {}", old.display()),
                std::fs::remove_dir_all(old),
            );
        }
    }
    let specs: Vec<VolumeSpec> = r
        .volumes
        .iter()
        .map(|v| VolumeSpec {
            name: v.volume.clone(),
            size_bytes: v.size_bytes,
            block_size: v.block_size,
        })
        .collect();
    // An encrypted group (this site holds its key) gets a sealed store,
    // in the bucket or in `objects/` of a directory location.
    let key = if site.layout().group_key(&r.name).exists() {
        Some(offsite_engine::objects::load_group_key(
            site.layout(),
            &r.name,
        )?)
    } else {
        None
    };
    let objects = target.objects.clone().or_else(|| {
        key.as_ref().map(|_| {
            offsite_objects::StorageLocation::Directory(
                dir.join(offsite_engine::objects::DIR_OBJECTS),
            )
        })
    });
    if let Some(location) = objects {
        let store = site.create_objects_store(offsite_engine::objects::NewObjectsStore {
            location,
            work_dir: dir,
            group: &r.name,
            volumes: &specs,
            after,
            key: key.as_ref(),
        })?;
        for v in &r.volumes {
            let image = staging.join(&v.volume);
            store.adopt_base(&v.volume, &image).map_err(|e| {
                storage_error(format!("uploading the base image of {}: {e}", v.volume), &e)
            })?;
            crate::warn_if_failed(
                &format!("removing the uploaded image {}", image.display()),
                std::fs::remove_file(&image),
            );
        }
        drop(std::fs::remove_dir(staging));
        return Ok(());
    }
    offsite_volume_file::create_private_dir_all(dir)
        .map_err(|e| RemoteError::Internal(format!("creating {}: {e}", dir.display())))?;
    drop(
        ReplicaStore::create_after(dir, &specs, after)
            .map_err(|e| storage_error(format!("creating the replica store: {e}"), &e))?,
    );
    let base = dir.join("base");
    for v in &r.volumes {
        let target = base.join(format!("{}.img", v.volume));
        std::fs::rename(staging.join(&v.volume), &target).map_err(|e| {
            RemoteError::Internal(format!("installing the base image of {}: {e}", v.volume))
        })?;
    }
    offsite_volume_file::sync_dir(&base)
        .map_err(|e| RemoteError::Internal(format!("syncing {}: {e}", base.display())))?;
    // Empty by now; a leftover empty directory is removed by the next reverse.
    drop(std::fs::remove_dir(staging));
    Ok(())
}

/// Discarded divergent writes stay readable here: an empty PIT over the
/// base (this site's data as it was) with a name, which retention keeps
/// until `pit release`. Returns the name.
fn keep_divergent_as_pit(site: &Site, r: &GroupRow, dir: &Path) -> Result<String, RemoteError> {
    let name = split_brain_name();
    let store = site.replica_store(dir)?;
    let w = store
        .begin_pit()
        .map_err(|e| storage_error(format!("keeping the divergent state as a PIT: {e}"), &e))?;
    let info = w
        .commit(Some(name.clone()), now_rfc3339())
        .map_err(|e| storage_error(format!("keeping the divergent state as a PIT: {e}"), &e))?;
    site.groups().replace_pits(
        &r.name,
        &[offsite_catalog::PitRow {
            id: info.id.get(),
            name: info.name.clone(),
            created_at: info.created_at.clone(),
            bytes: info.bytes,
            app_consistent: false,
        }],
    )?;
    Ok(name)
}
