//! What a replica store in an object store holds besides the data: the
//! group's definition (`group.json`) and the recovery plans it belongs to
//! (`plans/NAME.json`), so that a site that never saw the group — a new
//! site after the recovery site itself was lost — can attach the bucket
//! and recover from it with nothing re-entered by hand.
//!
//! Both are written by the replica site under the group's prefix, beside
//! the store's own keys (which the store never lists: it reads `store.meta`,
//! `pits/`, `base/` and `merging/` only), through the group's object store,
//! so an encrypted group's definition (its VMs' hook commands, libvirt XML)
//! is as unreadable to the bucket's owner as its data. `group.json` is
//! written whenever the definition changed since it was last written here,
//! checked after every commit; a plan's copy whenever the plan changes.
//!
//! `group.json` (JSON, version 1):
//!
//! | field | meaning |
//! | --- | --- |
//! | `format` | `1` |
//! | `group` | the group's name |
//! | `primary`, `replica` | the site whose volumes are replicated, the site that wrote the store |
//! | `mode`, `rpo_secs`, `keep`, `security_tag`, `on_link_loss`, `suspend_timeout_secs`, `bandwidth`, `compress`, `app_consistent_every_secs`, `journal` | the group's settings, as in `GROUP_CREATE` |
//! | `volumes` | name, size and block size of each volume, in order |
//! | `vms` | the group's VMs with their hooks, as in `GROUP_CREATE` |
//! | `app_consistent_pits` | ids of the PITs cut with the VMs quiesced |
//! | `written_at` | RFC 3339 |
//!
//! The group's encryption key is never written: a site attaching an
//! encrypted group brings the key (`group key export` at a site that has
//! it).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use offsite_catalog::GroupRow;
use offsite_objects::{ObjectError, ObjectStore};
use offsite_replica_store::ReplicaStore;
use serde::{Deserialize, Serialize};

use crate::wire::{JournalDesc, VmDesc};

/// The key of a group's definition under its prefix.
pub const GROUP_MANIFEST: &str = "group.json";
/// The prefix of the copies of its plans.
pub const PLANS_PREFIX: &str = "plans/";
/// The format written.
pub const FORMAT: u32 = 1;

/// A volume of the group, as `group.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestVolume {
    /// Volume name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
}

/// `group.json`: a group's definition as its replica site knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupManifest {
    /// [`FORMAT`].
    pub format: u32,
    /// Group name.
    pub group: String,
    /// The site whose volumes are replicated.
    pub primary: String,
    /// The site that wrote the store.
    pub replica: String,
    /// `async`, `sync` or `continuous`.
    pub mode: String,
    /// RPO in seconds.
    pub rpo_secs: u64,
    /// PITs kept.
    pub keep: u32,
    /// Security tag the group presents.
    pub security_tag: Option<String>,
    /// Sync mode's link-loss policy.
    pub on_link_loss: String,
    /// Sync mode, `suspend-writes`: seconds a write waits.
    pub suspend_timeout_secs: u64,
    /// Bandwidth limit in bytes per second.
    pub bandwidth: Option<u64>,
    /// Whether batches are compressed.
    pub compress: bool,
    /// Seconds between scheduled application-consistent PITs (0: off).
    pub app_consistent_every_secs: u64,
    /// The journal's settings.
    pub journal: JournalDesc,
    /// Volumes in order.
    pub volumes: Vec<ManifestVolume>,
    /// VMs in start order, with their hooks.
    pub vms: Vec<VmDesc>,
    /// The PITs cut with the group's VMs quiesced (the store itself does
    /// not record the mark).
    #[serde(default)]
    pub app_consistent_pits: Vec<u64>,
    /// RFC 3339 time it was written.
    pub written_at: String,
}

/// Why a `group.json` was not usable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not the JSON of a manifest.
    #[error("{key} is not a group definition offsite wrote: {source}")]
    Malformed {
        /// The object's key.
        key: String,
        /// What the decoder said.
        #[source]
        source: serde_json::Error,
    },
    /// A format this build does not read.
    #[error(
        "{key} has format {found}; this offsite reads format {FORMAT}: upgrade offsite to attach it"
    )]
    Format {
        /// The object's key.
        key: String,
        /// The format found.
        found: u32,
    },
}

impl GroupManifest {
    /// The manifest of group `row` as replicated from `primary` to
    /// `replica`, with its application-consistent PITs.
    pub fn of(
        row: &GroupRow,
        primary: &str,
        replica: &str,
        app_consistent_pits: &[u64],
    ) -> GroupManifest {
        GroupManifest {
            format: FORMAT,
            group: row.name.clone(),
            primary: primary.to_string(),
            replica: replica.to_string(),
            mode: row.mode.to_string(),
            rpo_secs: row.rpo_secs,
            keep: row.keep,
            security_tag: row.security_tag.clone(),
            on_link_loss: row.on_link_loss.clone(),
            suspend_timeout_secs: row.suspend_timeout_secs,
            bandwidth: row.bandwidth,
            compress: row.compress,
            app_consistent_every_secs: row.app_consistent_every_secs,
            journal: JournalDesc::of(&row.journal),
            volumes: row
                .volumes
                .iter()
                .map(|v| ManifestVolume {
                    name: v.volume.clone(),
                    size_bytes: v.size_bytes,
                    block_size: v.block_size,
                })
                .collect(),
            vms: row.vms.iter().map(VmDesc::of_row).collect(),
            app_consistent_pits: app_consistent_pits.to_vec(),
            written_at: offsite_catalog::now_rfc3339(),
        }
    }

    /// The JSON written.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a `group.json` (`key` names it in errors).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<GroupManifest, ManifestError> {
        // The format first, so that a newer manifest says so rather than
        // failing on a field this build does not know.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
                key: key.to_string(),
                source,
            })?;
        if head.format != FORMAT {
            return Err(ManifestError::Format {
                key: key.to_string(),
                found: head.format,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Malformed {
            key: key.to_string(),
            source,
        })
    }

    /// The definition without the time it was written: what decides
    /// whether it changed.
    fn digest(&self) -> [u8; 32] {
        let mut m = self.clone();
        m.written_at.clear();
        *blake3::hash(&m.encode()).as_bytes()
    }
}

/// The digest of the definition last written per store (by the store's
/// description: one per group prefix), so that an unchanged definition is
/// not written again after every commit.
fn written() -> &'static Mutex<HashMap<String, [u8; 32]>> {
    static WRITTEN: OnceLock<Mutex<HashMap<String, [u8; 32]>>> = OnceLock::new();
    WRITTEN.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Writes `group.json` for the replica group `row` into its store when the
/// store is in an object store and the definition changed since this
/// process last wrote it. A directory store has none (its site's catalog
/// is the definition).
pub(crate) fn publish_group(
    store: &ReplicaStore,
    row: &GroupRow,
    replica: &str,
    app_consistent_pits: &[u64],
) -> Result<(), ObjectError> {
    let Some(objects) = store.object_store() else {
        return Ok(());
    };
    let manifest = GroupManifest::of(row, &row.partner, replica, app_consistent_pits);
    let digest = manifest.digest();
    let id = objects.describe();
    if written().lock().unwrap_or_else(|e| e.into_inner()).get(&id) == Some(&digest) {
        return Ok(());
    }
    objects.put(GROUP_MANIFEST, &manifest.encode())?;
    written()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, digest);
    Ok(())
}

/// Writes (or, with `None`, deletes) the copy of plan `name` in a group's
/// object store: `plans/NAME.json`, the plan's definition as JSON.
pub fn publish_plan(
    objects: &dyn ObjectStore,
    name: &str,
    definition: Option<&[u8]>,
) -> Result<(), ObjectError> {
    let key = format!("{PLANS_PREFIX}{name}.json");
    match definition {
        Some(bytes) => objects.put(&key, bytes),
        None => objects.delete(&key),
    }
}

/// Reads the group's definition from its object store.
pub fn read_group(objects: &dyn ObjectStore) -> Result<GroupManifest, ReadError> {
    let bytes = objects.get(GROUP_MANIFEST)?;
    Ok(GroupManifest::decode(GROUP_MANIFEST, &bytes)?)
}

/// The copies of plans in a group's object store: (plan name, definition).
pub fn read_plans(objects: &dyn ObjectStore) -> Result<Vec<(String, Vec<u8>)>, ObjectError> {
    let mut out = Vec::new();
    for o in objects.list(PLANS_PREFIX)? {
        if let Some(name) = o
            .key
            .strip_prefix(PLANS_PREFIX)
            .and_then(|k| k.strip_suffix(".json"))
        {
            out.push((name.to_string(), objects.get(&o.key)?));
        }
    }
    Ok(out)
}

/// Reading a group's definition failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The object store failed (missing object, unreachable store, a
    /// changed object, the wrong key).
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// The object is not a usable definition.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> GroupManifest {
        GroupManifest {
            format: FORMAT,
            group: "g1".into(),
            primary: "site-a".into(),
            replica: "site-b".into(),
            mode: "async".into(),
            rpo_secs: 300,
            keep: 24,
            security_tag: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            bandwidth: None,
            compress: true,
            app_consistent_every_secs: 0,
            journal: JournalDesc {
                checkpoint_interval_ms: 1000,
                history_secs: 86_400,
                max_bytes: 10 << 30,
            },
            volumes: vec![ManifestVolume {
                name: "v1".into(),
                size_bytes: 4 << 20,
                block_size: 4096,
            }],
            vms: vec![VmDesc {
                name: "vm1".into(),
                volumes: vec!["v1".into()],
                start: Some("virsh start vm1".into()),
                stop: Some("virsh shutdown vm1".into()),
                status: None,
                libvirt_xml: None,
                quiesce: None,
                thaw: None,
            }],
            app_consistent_pits: vec![3],
            written_at: "2026-12-07T11:20:00Z".into(),
        }
    }

    /// The format is pinned: a site reading a bucket written by another
    /// version must find these exact fields.
    #[test]
    fn group_json_matches_its_fixture_and_reads_back() {
        let m = manifest();
        let bytes = m.encode();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bucket/group-v1.json"
        );
        if std::env::var_os("OFFSITE_BLESS").is_some() && !std::path::Path::new(path).exists() {
            std::fs::write(path, &bytes).unwrap();
        }
        let golden = std::fs::read(path).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&golden)
        );
        assert_eq!(GroupManifest::decode("g1/group.json", &golden).unwrap(), m);
    }

    #[test]
    fn a_newer_format_or_garbage_is_refused_by_name() {
        let mut v: serde_json::Value = serde_json::to_value(manifest()).unwrap();
        v["format"] = 2.into();
        v["new_field"] = "x".into();
        let e = GroupManifest::decode("g1/group.json", v.to_string().as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("format 2") && e.to_string().contains("upgrade"),
            "{e}"
        );
        let e = GroupManifest::decode("g1/group.json", b"\x00garbage").unwrap_err();
        assert!(e.to_string().contains("g1/group.json"), "{e}");
    }

    #[test]
    fn the_definition_is_written_once_until_it_changes_and_plans_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let objects: std::sync::Arc<dyn ObjectStore> =
            std::sync::Arc::new(offsite_objects::DirStore::open(dir.path().join("o")).unwrap());
        let volumes = [offsite_replica_store::VolumeSpec {
            name: "v1".into(),
            size_bytes: 4 << 20,
            block_size: 4096,
        }];
        let store =
            ReplicaStore::create_in(objects.clone(), dir.path().join("work"), &volumes, None, 0)
                .unwrap();
        let mut row = GroupRow {
            name: "g1".into(),
            role: offsite_catalog::Role::Replica,
            partner: "site-a".into(),
            mode: offsite_catalog::Mode::Async,
            rpo_secs: 300,
            keep: 3,
            bandwidth: None,
            compress: true,
            security_tag: None,
            state: offsite_catalog::GroupState::Replicating,
            store_dir: None,
            created_at: String::new(),
            state_changed_at: String::new(),
            last_error: None,
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            needs_resync: None,
            last_drill_at: None,
            app_consistent_every_secs: 0,
            quiesce_error: None,
            journal: offsite_catalog::JournalSettings::default(),
            volumes: vec![offsite_catalog::GroupVolumeRow {
                volume: "v1".into(),
                size_bytes: 4 << 20,
                block_size: 4096,
                initial_done_bytes: 0,
            }],
            vms: Vec::new(),
        };
        publish_group(&store, &row, "site-b", &[]).unwrap();
        let first = objects.get(GROUP_MANIFEST).unwrap();
        let read = read_group(objects.as_ref()).unwrap();
        assert_eq!(
            (
                read.group.as_str(),
                read.primary.as_str(),
                read.replica.as_str()
            ),
            ("g1", "site-a", "site-b")
        );
        assert_eq!(read.volumes.len(), 1);
        // Unchanged: not written again (the object, with its time, stays).
        objects.delete(GROUP_MANIFEST).unwrap();
        publish_group(&store, &row, "site-b", &[]).unwrap();
        assert!(objects.get(GROUP_MANIFEST).unwrap_err().is_not_found());
        // Changed: written.
        row.keep += 1;
        publish_group(&store, &row, "site-b", &[]).unwrap();
        assert_eq!(read_group(objects.as_ref()).unwrap().keep, row.keep);
        assert_ne!(objects.get(GROUP_MANIFEST).unwrap(), first);
        // The store itself still opens: it never lists these keys.
        drop(store);
        publish_plan(objects.as_ref(), "dr", Some(b"{\"name\":\"dr\"}")).unwrap();
        ReplicaStore::open_in(objects.clone(), dir.path().join("work")).unwrap();
        assert_eq!(
            read_plans(objects.as_ref()).unwrap(),
            [("dr".to_string(), b"{\"name\":\"dr\"}".to_vec())]
        );
        publish_plan(objects.as_ref(), "dr", None).unwrap();
        assert!(read_plans(objects.as_ref()).unwrap().is_empty());
    }
}
