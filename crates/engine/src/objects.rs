//! Replica stores whose committed state is in an object store: a bucket
//! (`authz add --storage-location s3://BUCKET/PREFIX`), or a directory of
//! objects for an encrypted group whose authorized location is a directory.
//!
//! Such a store has a local **working directory** (the lock, the PIT being
//! built, a sync group's journal) and that is what the catalog's
//! `store_dir` names, so everything that opens a store by path keeps
//! working. The working directory describes itself: `objects.toml` says
//! where the objects are and whether they are sealed with the group's key,
//! so [`Site::replica_store`] builds the right [`ObjectStore`] and opens the
//! store with [`ReplicaStore::open_in`]. A working directory without
//! `objects.toml` is a plain directory store.
//!
//! | what | where |
//! | --- | --- |
//! | working directory of an S3 store | `DATA/object-stores/PARTNER/GROUP/` ([`Layout::object_work_dir`]) |
//! | its objects | `s3://BUCKET/PREFIX/GROUP/…` |
//! | working directory of an encrypted directory store | `LOCATION/PARTNER/GROUP/` (as a plain one) |
//! | its objects | `LOCATION/PARTNER/GROUP/objects/…` |
//! | the group's key | `DATA/keys/GROUP.key` (0600; [`Layout::group_key`]) |
//!
//! The descriptor is written (durably) before the store is created in the
//! objects, so a working directory that holds a store's lock always says
//! where its objects are.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use offsite_objects::{
    DirStore, GroupKey, ObjectError, ObjectStore, S3Config, S3Settings, S3Store, Sealed,
    StorageLocation,
};
use offsite_replica_store::{ReplicaError, ReplicaStore, VolumeSpec};
use serde::{Deserialize, Serialize};

use crate::EngineError;
use crate::layout::Layout;
use crate::owner::{OwnerFence, SiteIdentity, Taken};
use offsite_replica_store::CommitFence;

/// The descriptor file in a working directory of an objects store.
pub const DESCRIPTOR_FILE: &str = "objects.toml";
/// Current `format_version` of `objects.toml`.
pub const DESCRIPTOR_VERSION: u32 = 1;
/// The sub-directory of an encrypted directory store's working directory
/// that holds its (sealed) objects.
pub const DIR_OBJECTS: &str = "objects";
/// Rounds of listing and deleting [`delete_objects`] runs before it gives up.
const DELETE_ROUNDS: u32 = 5;
/// The object the storage-location probe writes, reads and deletes.
const PROBE_KEY: &str = "offsite-write-test";

/// `objects.toml`: where a store's objects are and how they are sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreDescriptor {
    /// Format version of this file.
    pub format_version: u32,
    /// The group the store replicates (names its key file).
    pub group: String,
    /// The store's objects: `s3://BUCKET/PREFIX/GROUP` or an absolute
    /// directory.
    pub location: String,
    /// Whether every object is sealed with the group's key.
    pub encrypted: bool,
    /// The id of that key (hex), checked when the store is opened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl StoreDescriptor {
    /// The descriptor of the working directory `work_dir`, or `None` when
    /// it is a plain directory store.
    pub fn read(work_dir: &Path) -> Result<Option<StoreDescriptor>, EngineError> {
        let path = work_dir.join(DESCRIPTOR_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::io("read", &path, e)),
        };
        let d: StoreDescriptor = toml::from_str(&text).map_err(|e| EngineError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if d.format_version != DESCRIPTOR_VERSION {
            return Err(EngineError::BadConfig {
                path,
                reason: format!(
                    "format_version {} is not known to this offsite (it knows {DESCRIPTOR_VERSION}); upgrade offsite",
                    d.format_version
                ),
            });
        }
        Ok(Some(d))
    }

    /// Writes the descriptor into `work_dir`, durably.
    pub fn write(&self, work_dir: &Path) -> Result<(), EngineError> {
        let path = work_dir.join(DESCRIPTOR_FILE);
        let text = toml::to_string(self).map_err(|e| EngineError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        offsite_volume_file::write_durably(&path, text.as_bytes(), 0o600)
            .map_err(|e| EngineError::io("write", &path, e))
    }
}

/// The object store at `location` (a bucket prefix, or a directory),
/// with the connection settings of the site in `site_dir`.
pub fn object_store_at(
    location: &StorageLocation,
    settings: &S3Settings,
    site_dir: &Path,
) -> Result<Arc<dyn ObjectStore>, EngineError> {
    match location {
        StorageLocation::S3 { bucket, prefix } => {
            let config = S3Config::from_settings(bucket, prefix, settings, site_dir)
                .map_err(|e| EngineError::Invalid(format!("storage location {location}: {e}")))?;
            let store = S3Store::new(config)
                .map_err(|e| EngineError::Invalid(format!("storage location {location}: {e}")))?;
            Ok(Arc::new(store))
        }
        StorageLocation::Directory(dir) => {
            offsite_volume_file::create_private_dir_all(dir)
                .map_err(|e| EngineError::io("create", dir, e))?;
            let store = DirStore::open(dir).map_err(|e| {
                EngineError::Invalid(format!("opening the objects in {}: {e}", dir.display()))
            })?;
            Ok(Arc::new(store))
        }
    }
}

/// `location` with `/SUB` appended (the group's own prefix or directory).
pub fn sub_location(location: &StorageLocation, sub: &str) -> StorageLocation {
    match location {
        StorageLocation::S3 { bucket, prefix } if prefix.is_empty() => StorageLocation::S3 {
            bucket: bucket.clone(),
            prefix: sub.to_string(),
        },
        StorageLocation::S3 { bucket, prefix } => StorageLocation::S3 {
            bucket: bucket.clone(),
            prefix: format!("{prefix}/{sub}"),
        },
        StorageLocation::Directory(d) => StorageLocation::Directory(d.join(sub)),
    }
}

/// Checks that the site can write, read back and delete an object under
/// the S3 location `location` (what `authz add` runs before accepting
/// it); the error says what to fix.
pub fn probe(
    location: &StorageLocation,
    settings: &S3Settings,
    site_dir: &Path,
) -> Result<(), EngineError> {
    let store = object_store_at(location, settings, site_dir)?;
    let fail = |what: &str, e: ObjectError| {
        let hint = if e.is_transient() {
            "check that the service is up and `endpoint` in the site's [object_store] configuration"
        } else {
            "check the bucket's name, the key's permissions (read, write, delete, list) and the region"
        };
        EngineError::Invalid(format!(
            "storage location {location}: the site cannot {what} a test object: {e}; {hint}"
        ))
    };
    let body = b"offsite storage location probe";
    store.put(PROBE_KEY, body).map_err(|e| fail("write", e))?;
    let back = store.get(PROBE_KEY).map_err(|e| fail("read", e))?;
    if back != body {
        return Err(EngineError::Invalid(format!(
            "storage location {location}: a test object read back differs from what was written; the service does not keep objects as written"
        )));
    }
    store.delete(PROBE_KEY).map_err(|e| fail("delete", e))
}

/// What [`create_store`] needs.
#[derive(Debug)]
pub struct NewObjectsStore<'a> {
    /// The group's objects (already the group's own prefix or directory).
    pub location: StorageLocation,
    /// The local working directory (must not exist or be empty).
    pub work_dir: &'a Path,
    /// The group.
    pub group: &'a str,
    /// Its volumes.
    pub volumes: &'a [VolumeSpec],
    /// As [`ReplicaStore::create_in`].
    pub after: u64,
    /// The group's key when its replicas are encrypted.
    pub key: Option<&'a GroupKey>,
}

/// Creates a store whose committed state is in `new.location`: the
/// descriptor first, then the store. On failure the working directory is
/// removed again (a retry starts clean); objects already written stay (an
/// object store refuses a second store over them, and says so).
///
/// With `me`, a store in a bucket records `me` as the prefix's owner
/// ([`crate::owner`]) and is fenced by that record from then on.
pub fn create_store(
    new: NewObjectsStore<'_>,
    settings: &S3Settings,
    site_dir: &Path,
    me: Option<&SiteIdentity>,
) -> Result<ReplicaStore, EngineError> {
    let objects = object_store_at(&new.location, settings, site_dir)?;
    let objects = match new.key {
        Some(key) => Arc::new(Sealed::new(objects, key)) as Arc<dyn ObjectStore>,
        None => objects,
    };
    let work_dir = new.work_dir;
    offsite_volume_file::create_private_dir_all(work_dir)
        .map_err(|e| EngineError::io("create", work_dir, e))?;
    let created = StoreDescriptor {
        format_version: DESCRIPTOR_VERSION,
        group: new.group.to_string(),
        location: new.location.to_string(),
        encrypted: new.key.is_some(),
        key_id: new.key.map(|k| k.id().to_string()),
    }
    .write(work_dir)
    .and_then(|()| {
        ReplicaStore::create_in(objects.clone(), work_dir, new.volumes, None, new.after).map_err(|e| {
            let hint = match &e {
                ReplicaError::ObjectsNotEmpty { .. } => {
                    "; the group's prefix already holds objects: remove them or pick another group name"
                }
                _ => "",
            };
            EngineError::Invalid(format!(
                "creating the replica store of group {} in {}: {e}{hint}",
                new.group, new.location
            ))
        })
    });
    if created.is_err() {
        drop(std::fs::remove_dir_all(work_dir));
    }
    let store = created?;
    if let (Some(me), StorageLocation::S3 { .. }) = (me, &new.location) {
        let fence = OwnerFence::new(objects, work_dir, new.group, me.clone(), Taken::Created);
        // Recorded now, so that a takeover later has a record to follow;
        // if the bucket fails right now the first commit records it.
        if let Err(e) = fence.check() {
            tracing::warn!(
                group = new.group,
                "recording this site as the owner of the group's bucket prefix: {e}; the first commit records it"
            );
        }
        store.set_commit_fence(Arc::new(fence));
    }
    Ok(store)
}

/// Opens the store whose working directory is `work_dir`: an objects store
/// when it holds `objects.toml`, else a directory store.
///
/// With `me`, a store in a bucket is fenced by its owner record
/// ([`crate::owner`]): it commits only while the record names `me`.
pub fn open_store(
    work_dir: &Path,
    settings: &S3Settings,
    layout: &Layout,
    me: Option<&SiteIdentity>,
) -> Result<ReplicaStore, EngineError> {
    let opening = |e: &dyn std::error::Error| {
        // With its causes: "failed to get object …" says what, the object
        // store's error why (unavailable, refused, another key).
        let mut text = e.to_string();
        let mut src = e.source();
        while let Some(cause) = src {
            let why = cause.to_string();
            if !text.contains(&why) {
                text.push_str(": ");
                text.push_str(&why);
            }
            src = cause.source();
        }
        EngineError::Invalid(format!(
            "opening the replica store {}: {text}",
            work_dir.display()
        ))
    };
    let Some(d) = StoreDescriptor::read(work_dir)? else {
        return ReplicaStore::open(work_dir).map_err(|e| opening(&e));
    };
    let location = StorageLocation::parse(&d.location).map_err(|e| opening(&e))?;
    let objects = object_store_at(&location, settings, layout.root())?;
    let objects = if d.encrypted {
        let key = load_group_key(layout, &d.group)?;
        if let Some(want) = &d.key_id
            && key.id().to_string() != *want
        {
            return Err(EngineError::Invalid(format!(
                "the replica store {} is encrypted with group key {want}, and {} holds key {}: import the group's key with `offsite group key import {} --key-file FILE`",
                work_dir.display(),
                layout.group_key(&d.group).display(),
                key.id(),
                d.group
            )));
        }
        Arc::new(Sealed::new(objects, &key)) as Arc<dyn ObjectStore>
    } else {
        objects
    };
    let store = ReplicaStore::open_in(objects.clone(), work_dir).map_err(|e| opening(&e))?;
    if matches!(location, StorageLocation::Directory(_)) {
        // An encrypted directory group: its objects are on this site's own
        // disk, beside the working directory, so a copy of the journal
        // there would only double it.
        store.keep_journal_local();
    }
    if let (Some(me), StorageLocation::S3 { .. }) = (me, &location) {
        // A store without a record yet is one from before records: the
        // first commit claims it.
        store.set_commit_fence(Arc::new(OwnerFence::new(
            objects,
            work_dir,
            &d.group,
            me.clone(),
            Taken::Claimed,
        )));
    }
    Ok(store)
}

/// Group `group`'s key from `DATA/keys/GROUP.key`.
pub fn load_group_key(layout: &Layout, group: &str) -> Result<GroupKey, EngineError> {
    let path = layout.group_key(group);
    GroupKey::load(&path).map_err(|e| {
        EngineError::Invalid(format!(
            "group {group}'s replicas are encrypted and its key cannot be read: {e}; import it with `offsite group key import {group} --key-file FILE`"
        ))
    })
}

/// Saves group `group`'s key to `DATA/keys/GROUP.key` (0600, durable); the
/// same key again is a no-op, another key is refused.
pub fn save_group_key(layout: &Layout, group: &str, key: &GroupKey) -> Result<(), EngineError> {
    let dir = layout.keys_dir();
    offsite_volume_file::create_private_dir_all(&dir)
        .map_err(|e| EngineError::io("create", &dir, e))?;
    key.save(&layout.group_key(group)).map_err(|e| {
        EngineError::Conflict(format!(
            "saving group {group}'s key: {e}; a site keeps one key per group name"
        ))
    })
}

/// Deletes every object of the store whose working directory is
/// `work_dir` when it is an objects store (a group's teardown with
/// `--delete`, or a reverse replacing the store); `false` for a directory
/// store (its files go with the directory). The working directory itself
/// is left to the caller.
pub fn delete_objects(
    work_dir: &Path,
    settings: &S3Settings,
    layout: &Layout,
) -> Result<bool, EngineError> {
    let Some(d) = StoreDescriptor::read(work_dir)? else {
        return Ok(false);
    };
    let location = StorageLocation::parse(&d.location)
        .map_err(|e| EngineError::Invalid(format!("{}: {e}", work_dir.display())))?;
    // Deleting needs no key: the raw objects go, sealed or not.
    let objects = object_store_at(&location, settings, layout.root())?;
    let failed = |e: ObjectError| {
        EngineError::Invalid(format!(
            "deleting the objects of the replica store in {location}: {e}; run the command again once the store answers"
        ))
    };
    // A few rounds: an object put by a handle of the old store that was
    // still closing (its pending base chunks), or a listing that lags a
    // deletion on another node, shows in the next round.
    for round in 0..DELETE_ROUNDS {
        let mut listed = objects.list("").map_err(failed)?;
        if listed.is_empty() {
            return Ok(true);
        }
        if round > 0 {
            tracing::warn!(store = %location, left = listed.len(), round, "objects of a deleted replica store were still listed; deleting them again");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        // The store's metadata last: until it goes, what is left is still
        // recognizably a store (and a leftover, not a fresh prefix).
        listed.sort_by_key(|o| o.key == "store.meta");
        for o in listed {
            objects.delete(&o.key).map_err(failed)?;
        }
    }
    let left = objects.list("").map_err(failed)?;
    if !left.is_empty() {
        return Err(EngineError::Invalid(format!(
            "deleting the objects of the replica store in {location}: {} object(s) are still listed after {DELETE_ROUNDS} rounds (for example {}); delete them with an S3 client, then run the command again",
            left.len(),
            left[0].key
        )));
    }
    Ok(true)
}

impl crate::Site {
    /// `group key export`: group `group`'s key as its export line.
    pub fn export_group_key(&self, group: &str) -> Result<crate::GroupKeyExport, EngineError> {
        crate::names::validate("group", group)?;
        if !self.layout.group_key(group).exists() {
            return Err(EngineError::NotFound(format!(
                "site {} holds no key for group {group}: its replicas are not encrypted, or the key was lost here (import it with `offsite group key import {group} --key-file FILE`)",
                self.config().name
            )));
        }
        let key = load_group_key(&self.layout, group)?;
        self.event(
            "group.key-exported",
            Some(group),
            &format!("the key {} of group {group} was exported", key.id()),
        );
        Ok(crate::GroupKeyExport {
            group: group.to_string(),
            key_id: key.id().to_string(),
            key: key.export(),
        })
    }

    /// `group key import`: keeps `line` (an export line) as group
    /// `group`'s key. Refused when this site holds another key for the
    /// group, or when the group's replica store here is sealed with
    /// another key.
    pub fn import_group_key(
        &self,
        group: &str,
        line: &str,
    ) -> Result<crate::GroupKeyInfo, EngineError> {
        crate::names::validate("group", group)?;
        let key = GroupKey::import(line.trim()).map_err(|e| {
            EngineError::Invalid(format!(
                "the key for group {group} is not usable: {e}; copy the whole line `offsite group key export {group}` printed"
            ))
        })?;
        let id = key.id().to_string();
        let store_dir = self
            .catalog()
            .group(group)
            .ok()
            .and_then(|row| row.store_dir);
        if let Some(dir) = store_dir
            && let Some(d) = StoreDescriptor::read(Path::new(&dir))?
            && let Some(want) = d.key_id.filter(|_| d.encrypted)
            && want != id
        {
            return Err(EngineError::Invalid(format!(
                "the replica store {dir} of group {group} is encrypted with key {want}, and this key is {id}: import the group's own key"
            )));
        }
        save_group_key(&self.layout, group, &key)?;
        self.event(
            "group.key-imported",
            Some(group),
            &format!("key {id} of group {group} imported"),
        );
        Ok(crate::GroupKeyInfo {
            group: group.to_string(),
            key_id: id,
        })
    }

    /// [`create_store`] with this site's settings.
    pub fn create_objects_store(
        &self,
        new: NewObjectsStore<'_>,
    ) -> Result<ReplicaStore, EngineError> {
        create_store(
            new,
            &self.config().object_store,
            self.layout.root(),
            Some(&self.identity()),
        )
    }

    /// This site as owner records name it ([`crate::owner`]).
    pub fn identity(&self) -> SiteIdentity {
        SiteIdentity {
            name: self.config().name.clone(),
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// [`delete_objects`] with this site's settings, unless another site
    /// owns the store's bucket prefix ([`crate::owner`]): then its objects
    /// are that site's store and stay (said in an event), and only this
    /// site's working directory is for the caller to remove.
    pub fn delete_store_objects(&self, work_dir: &Path) -> Result<bool, EngineError> {
        if let Some(owner) = self.other_owner(work_dir) {
            let d = StoreDescriptor::read(work_dir)?;
            let group = d.as_ref().map_or("?", |d| d.group.as_str());
            self.event(
                "group.store-kept",
                Some(group),
                &format!(
                    "the objects of {} stay: site {} owns that bucket prefix since {} (owner epoch {}); this site removes only its working directory",
                    d.as_ref().map_or(String::new(), |d| d.location.clone()),
                    owner.site,
                    owner.since,
                    owner.epoch
                ),
            );
            return Ok(true);
        }
        delete_objects(work_dir, &self.config().object_store, &self.layout)
    }

    /// The owner record of the bucket prefix of the store in `work_dir`
    /// when it names another site (`None`: this site's, no record, not in
    /// a bucket, or the record cannot be read now — the deletion then
    /// goes ahead as before records existed).
    fn other_owner(&self, work_dir: &Path) -> Option<crate::owner::OwnerRecord> {
        let d = StoreDescriptor::read(work_dir).ok()??;
        let location = StorageLocation::parse(&d.location).ok()?;
        if !matches!(location, StorageLocation::S3 { .. }) {
            return None;
        }
        let objects =
            object_store_at(&location, &self.config().object_store, self.layout.root()).ok()?;
        let objects = if d.encrypted {
            let key = load_group_key(&self.layout, &d.group).ok()?;
            Arc::new(Sealed::new(objects, &key)) as Arc<dyn ObjectStore>
        } else {
            objects
        };
        let record = crate::owner::read_remote(objects.as_ref()).ok()??;
        (record.fingerprint != self.fingerprint).then_some(record)
    }
}

/// Where the working directory of partner `partner`'s group `group` goes
/// when its objects are in a bucket.
pub fn work_dir_for(layout: &Layout, partner: &str, group: &str) -> PathBuf {
    layout.object_work_dir(partner, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_round_trips_and_refuses_unknown_versions() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(StoreDescriptor::read(dir.path()).unwrap(), None);
        let d = StoreDescriptor {
            format_version: DESCRIPTOR_VERSION,
            group: "g1".into(),
            location: "s3://bucket/replicas/g1".into(),
            encrypted: true,
            key_id: Some("00112233445566778899aabbccddeeff".into()),
        };
        d.write(dir.path()).unwrap();
        assert_eq!(StoreDescriptor::read(dir.path()).unwrap(), Some(d.clone()));
        let text = std::fs::read_to_string(dir.path().join(DESCRIPTOR_FILE)).unwrap();
        std::fs::write(
            dir.path().join(DESCRIPTOR_FILE),
            text.replace("format_version = 1", "format_version = 9"),
        )
        .unwrap();
        let err = StoreDescriptor::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format_version 9"), "{err}");
    }

    #[test]
    fn sub_locations_append_the_group() {
        let s3 = StorageLocation::parse("s3://bucket/pre/fix").unwrap();
        assert_eq!(
            sub_location(&s3, "g1").to_string(),
            "s3://bucket/pre/fix/g1"
        );
        let bare = StorageLocation::parse("s3://bucket").unwrap();
        assert_eq!(sub_location(&bare, "g1").to_string(), "s3://bucket/g1");
        let dir = StorageLocation::parse("/srv/r").unwrap();
        assert_eq!(sub_location(&dir, "objects").to_string(), "/srv/r/objects");
    }

    #[test]
    fn an_encrypted_directory_store_opens_with_its_key_only() {
        let site = tempfile::tempdir().unwrap();
        let layout = Layout::new(site.path());
        let work = site.path().join("r/p/g1");
        let key = GroupKey::generate();
        save_group_key(&layout, "g1", &key).unwrap();
        let spec = VolumeSpec {
            name: "v".into(),
            size_bytes: 1 << 20,
            block_size: 4096,
        };
        let settings = S3Settings::default();
        create_store(
            NewObjectsStore {
                location: StorageLocation::Directory(work.join(DIR_OBJECTS)),
                work_dir: &work,
                group: "g1",
                volumes: std::slice::from_ref(&spec),
                after: 0,
                key: Some(&key),
            },
            &settings,
            site.path(),
            None,
        )
        .unwrap();
        let store = open_store(&work, &settings, &layout, None).unwrap();
        assert!(store.object_store().is_some());
        drop(store);
        // Another key under the group's name: refused, naming the import.
        std::fs::remove_file(layout.group_key("g1")).unwrap();
        save_group_key(&layout, "g1", &GroupKey::generate()).unwrap();
        let err = open_store(&work, &settings, &layout, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("group key import g1"), "{err}");
    }
}
