//! `site attach-store LOCATION`: a site that never saw a group — a new
//! site after the recovery site itself was lost, or any site given the
//! bucket — takes over the replica stores kept at an object-store
//! location, from the bucket alone.
//!
//! Every group under the location (`LOCATION/GROUP/`, found with one
//! delimited listing) carries its definition beside its store
//! (`group.json`, see [`crate::bucket`]); an encrypted group's objects,
//! definition included, open only with its key, which the operator brings
//! (`--key-file`, the line `group key export` printed at a site that had
//! it). For each group the site gets a working directory describing the
//! objects (`objects.toml`), the key in `keys/`, and a catalog row: the
//! group as a replica of its primary, its PITs as the store lists them.
//! The group is then like any replica group here: `pit list`, `failover
//! run [--test]`, a plan's disaster run; `reverse` to a rebuilt primary
//! sends it a full copy (`switch::rebuilt`). The copies of the plans found
//! beside the stores are returned for the plan service to adopt.
//!
//! The one object attaching writes is the group's owner record
//! (`owner.json`, [`offsite_engine::owner`]): this site takes the prefix
//! over at the next epoch, so the site that wrote the store until now
//! stops at its next commit (with an error naming this site) instead of
//! writing into the chain this site now reads. Nothing else is written:
//! a mistaken attach is undone by `group teardown --force` here (the
//! objects stay: the old site is not their owner any more, see
//! `Site::delete_store_objects`) and `site attach-store` at the old site.

use std::sync::Arc;

use offsite_catalog::{GroupRow, GroupState, GroupVolumeRow, Mode, PitRow, Role};
use offsite_engine::objects::{self as engine_objects, StoreDescriptor};
use offsite_objects::{GroupKey, ObjectStore, Sealed, StorageLocation};
use serde::{Deserialize, Serialize};

use crate::bucket::{self, GroupManifest};
use crate::{ReplError, Replication, invalid, run_blocking as blocking};

/// What happened to one group found at the location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachAction {
    /// Now a replica group of this site.
    Attached,
    /// A group of that name exists here already: left alone.
    Exists,
    /// Encrypted with a key that was not given.
    NeedsKey,
    /// Not usable (no definition, a damaged or unreadable store).
    Failed,
}

/// One group in the answer to `site attach-store`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachedGroup {
    /// Group name (its prefix under the location).
    pub group: String,
    /// What happened.
    pub action: AttachAction,
    /// Its primary site, when its definition could be read.
    pub primary: Option<String>,
    /// PITs found (attached groups).
    pub pits: usize,
    /// Whether its objects are encrypted.
    pub encrypted: bool,
    /// In words, with what to do next.
    pub detail: String,
}

/// The answer to `site attach-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Every group found.
    pub groups: Vec<AttachedGroup>,
    /// The plan copies found beside the attached groups' stores: (plan
    /// name, the `PLAN_PUT` JSON that was written), once per plan.
    pub plans: Vec<(String, Vec<u8>)>,
}

/// A group found at the location: the store to open it with (sealed when
/// encrypted), its key, and its definition.
struct Found {
    objects: Arc<dyn ObjectStore>,
    key: Option<GroupKey>,
    manifest: GroupManifest,
}

/// The group's definition through `raw` as it is, or sealed with one of
/// `keys`.
fn definition(raw: &Arc<dyn ObjectStore>, keys: &[GroupKey]) -> Result<Found, String> {
    match bucket::read_group(raw.as_ref()) {
        Ok(manifest) => {
            return Ok(Found {
                objects: raw.clone(),
                key: None,
                manifest,
            });
        }
        Err(bucket::ReadError::Object(e)) if e.is_not_found() => {
            return Err(format!(
                "no {} beside the store (written by a replica site since this version of offsite; attach it from a site running such a version, or let its replica site commit a PIT first)",
                bucket::GROUP_MANIFEST
            ));
        }
        // Sealed, or damaged: the keys decide.
        Err(_) => {}
    }
    let mut last = None;
    for key in keys {
        let sealed: Arc<dyn ObjectStore> = Arc::new(Sealed::new(raw.clone(), key));
        match bucket::read_group(sealed.as_ref()) {
            Ok(manifest) => {
                return Ok(Found {
                    objects: sealed,
                    key: Some(key.clone()),
                    manifest,
                });
            }
            Err(e) => last = Some(e.to_string()),
        }
    }
    Err(match last {
        None => "its objects are encrypted: pass the group's key with --key-file (the line `offsite group key export GROUP` printed at a site that has it)".to_string(),
        Some(e) => format!("none of the keys given opens it ({e}); pass the group's own key with --key-file"),
    })
}

impl Replication {
    /// `site attach-store LOCATION`: takes over every group's replica store
    /// under `location` that this site does not have yet (see the module
    /// doc). `keys` are the export lines of the encrypted groups' keys.
    pub async fn attach_store(
        self: &Arc<Self>,
        location: &str,
        keys: &[String],
    ) -> Result<Attached, ReplError> {
        let location = StorageLocation::parse(location).map_err(|e| invalid(e.to_string()))?;
        let keys: Vec<GroupKey> = keys
            .iter()
            .map(|k| {
                GroupKey::import(k).map_err(|e| {
                    invalid(format!(
                        "a --key-file is not a group key export ({e}); give the file holding the line `offsite group key export GROUP` printed"
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let site = self.site.clone();
        blocking(move || {
            let settings = site.config().object_store.clone();
            let root = engine_objects::object_store_at(&location, &settings, site.layout().root())?;
            let names = root.list_prefixes("").map_err(|e| {
                offsite_engine::EngineError::Invalid(format!(
                    "listing the groups at {location}: {e}"
                ))
            })?;
            let mut groups = Vec::new();
            let mut plans: Vec<(String, Vec<u8>)> = Vec::new();
            for name in names {
                let found = attach_one(&site, &location, &name, &keys, &mut plans);
                groups.push(found);
            }
            Ok(Attached { groups, plans })
        })
        .await
    }
}

/// Attaches the group under `location/name`, adding its plan copies to
/// `plans`.
fn attach_one(
    site: &offsite_engine::Site,
    location: &StorageLocation,
    name: &str,
    keys: &[GroupKey],
    plans: &mut Vec<(String, Vec<u8>)>,
) -> AttachedGroup {
    let mut out = AttachedGroup {
        group: name.to_string(),
        action: AttachAction::Failed,
        primary: None,
        pits: 0,
        encrypted: false,
        detail: String::new(),
    };
    if offsite_engine::names::validate("group", name).is_err() {
        out.detail = "not a group's prefix (not a group name)".into();
        return out;
    }
    let settings = site.config().object_store.clone();
    let group_location = engine_objects::sub_location(location, name);
    let raw =
        match engine_objects::object_store_at(&group_location, &settings, site.layout().root()) {
            Ok(r) => r,
            Err(e) => {
                out.detail = e.to_string();
                return out;
            }
        };
    let Found {
        objects,
        key,
        manifest,
    } = match definition(&raw, keys) {
        Ok(d) => d,
        Err(why) => {
            out.encrypted = why.contains("encrypted") || why.contains("keys given");
            out.action = if out.encrypted {
                AttachAction::NeedsKey
            } else {
                AttachAction::Failed
            };
            out.detail = why;
            return out;
        }
    };
    out.encrypted = key.is_some();
    out.primary = Some(manifest.primary.clone());
    if manifest.group != name {
        out.detail = format!(
            "its definition names group {}, not {name}: not attached",
            manifest.group
        );
        return out;
    }
    if let Ok(g) = site.groups().get(name) {
        out.action = AttachAction::Exists;
        out.detail = format!(
            "a group named {name} exists here ({} with {}): left alone",
            g.role, g.partner
        );
        return out;
    }
    // The plan copies beside the store, read through the handle the
    // definition came from, before the store is opened (once, to check
    // it): nothing else here needs the store open again.
    let copies = match bucket::read_plans(objects.as_ref()) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(
                group = name,
                "reading the plan copies beside the store: {e}"
            );
            Vec::new()
        }
    };
    match attach_group(site, &group_location, objects, key.as_ref(), &manifest) {
        Ok(pits) => {
            out.action = AttachAction::Attached;
            out.pits = pits;
            out.detail = format!(
                "a replica of {}'s group with {pits} PITs: `offsite pit list {name}`, `offsite failover run {name} [--test]`",
                manifest.primary
            );
            for (plan, bytes) in copies {
                if !plans.iter().any(|(p, _)| *p == plan) {
                    plans.push((plan, bytes));
                }
            }
        }
        Err(e) => out.detail = e,
    }
    out
}

/// The working directory, key and catalog row of an attached group; its
/// number of PITs.
fn attach_group(
    site: &offsite_engine::Site,
    group_location: &StorageLocation,
    objects: Arc<dyn ObjectStore>,
    key: Option<&GroupKey>,
    m: &GroupManifest,
) -> Result<usize, String> {
    let mode: Mode = m
        .mode
        .parse()
        .map_err(|e| format!("its definition's mode: {e}"))?;
    let work_dir = engine_objects::work_dir_for(site.layout(), &m.primary, &m.group);
    if work_dir.exists() {
        return Err(format!(
            "{} exists (a store this site had): remove it or `offsite group delete {}` first",
            work_dir.display(),
            m.group
        ));
    }
    offsite_volume_file::create_private_dir_all(&work_dir)
        .map_err(|e| format!("creating {}: {e}", work_dir.display()))?;
    let undo = || drop(std::fs::remove_dir_all(&work_dir));
    if let Some(k) = key {
        engine_objects::save_group_key(site.layout(), &m.group, k).map_err(|e| {
            undo();
            e.to_string()
        })?;
    }
    let described = StoreDescriptor {
        format_version: engine_objects::DESCRIPTOR_VERSION,
        group: m.group.clone(),
        location: group_location.to_string(),
        encrypted: key.is_some(),
        key_id: key.map(|k| k.id().to_string()),
    }
    .write(&work_dir);
    if let Err(e) = described {
        undo();
        return Err(e.to_string());
    }
    // Opened once here to check it and list its PITs (the plan copies
    // were read before); the site's cache opens it when the group is used.
    let store = match offsite_replica_store::ReplicaStore::open_in(objects, &work_dir) {
        Ok(s) => s,
        Err(e) => {
            undo();
            return Err(format!("the store does not open: {e}"));
        }
    };
    // Taken over before the catalog row exists: from here on the site
    // that wrote the store stops at its next commit.
    let objects = store
        .object_store()
        .cloned()
        .ok_or_else(|| "the attached store is not in an object store".to_string());
    let taken = objects.and_then(|o| {
        offsite_engine::owner::take_over(o.as_ref(), &work_dir, &m.group, &site.identity())
            .map_err(|e| format!("taking the prefix over (its owner record): {e}"))
    });
    let taken = match taken {
        Ok(t) => t,
        Err(e) => {
            drop(store);
            undo();
            return Err(e);
        }
    };
    if !store.damaged().is_empty() {
        tracing::warn!(group = %m.group, damaged = store.damaged().len(), "an attached store has damaged PITs; the older ones are usable");
    }
    let pits: Vec<PitRow> = store
        .pits()
        .into_iter()
        .map(|p| PitRow {
            id: p.id.get(),
            app_consistent: m.app_consistent_pits.contains(&p.id.get()),
            name: p.name,
            created_at: p.created_at,
            bytes: p.bytes,
        })
        .collect();
    drop(store);
    let row = GroupRow {
        name: m.group.clone(),
        role: Role::Replica,
        partner: m.primary.clone(),
        mode,
        rpo_secs: m.rpo_secs,
        keep: m.keep,
        bandwidth: m.bandwidth,
        compress: m.compress,
        security_tag: m.security_tag.clone(),
        state: GroupState::Replicating,
        store_dir: Some(work_dir.display().to_string()),
        created_at: String::new(),
        state_changed_at: String::new(),
        last_error: None,
        on_link_loss: m.on_link_loss.clone(),
        suspend_timeout_secs: m.suspend_timeout_secs,
        needs_resync: None,
        last_drill_at: None,
        app_consistent_every_secs: m.app_consistent_every_secs,
        quiesce_error: None,
        journal: m.journal.to_settings(),
        volumes: m
            .volumes
            .iter()
            .map(|v| GroupVolumeRow {
                volume: v.name.clone(),
                size_bytes: v.size_bytes,
                block_size: v.block_size,
                initial_done_bytes: v.size_bytes,
            })
            .collect(),
        vms: m.vms.iter().map(crate::wire::VmDesc::to_row).collect(),
    };
    let n = pits.len();
    site.insert_group_row(&row)
        .and_then(|_| site.groups().replace_pits(&m.group, &pits))
        .map_err(|e| {
            drop(site.delete_group_row(&m.group));
            undo();
            e.to_string()
        })?;
    site.note(
        "group.attached",
        &m.group,
        &format!(
            "group {} attached from {group_location}: a replica of {}'s group with {n} PITs; this site owns the prefix now (owner epoch {})",
            m.group, m.primary, taken.epoch
        ),
    );
    Ok(n)
}
