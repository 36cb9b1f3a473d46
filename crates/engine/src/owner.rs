//! Which site writes a group's prefix in a bucket: the **owner record**
//! `s3://BUCKET/PREFIX/GROUP/owner.json`, so that two sites never both
//! write PITs, manifests or merges into one prefix (the old replica site
//! coming back after `site attach-store` moved the group to another site,
//! or a second site configured with the same location).
//!
//! The writing site claims the prefix when it creates the store there (or,
//! for a store from before this record, at its first commit) and
//! `site attach-store` takes it over with the next epoch. Every store in a
//! bucket carries an [`OwnerFence`] ([`offsite_replica_store::CommitFence`])
//! that reads the record before each commit point (one small GET): a
//! record naming another site refuses the commit, with who took the prefix
//! over, when, and what to do, before anything is written. The site keeps
//! its own copy of the record it wrote in the store's working directory
//! (`owner.json`): a record whose epoch is newer than that copy was
//! written by a later takeover.
//!
//! `owner.json` (JSON, format 1; through the group's object store, so an
//! encrypted group's record is sealed like its data):
//!
//! | field | meaning |
//! | --- | --- |
//! | `format` | `1` |
//! | `group` | the group's name |
//! | `site`, `fingerprint` | the writing site's name and certificate fingerprint (the identity compared) |
//! | `epoch` | 1 at creation, +1 at each takeover |
//! | `since` | RFC 3339 time the site took the prefix |
//! | `how` | `created` (the store was created there), `claimed` (a store older than the record, claimed at a commit), `attached` (`site attach-store`) |
//! | `crc32c` | CRC-32C of the record's JSON without this field (a damaged record is refused, not trusted) |
//!
//! **The remaining window.** S3's conditional writes (`If-None-Match: *`,
//! `If-Match`) would make the check and the write one step; Garage 2.5.0
//! (the pinned test store) honours them on `GET`/`HEAD` and copies but not
//! on `PutObject`, so the record is read, then written. A writer that read
//! the record just before a takeover wrote it can still finish the one
//! commit point under way (a manifest put, or a merge's marker), within
//! milliseconds of the check; its next commit stops. A takeover is an
//! operator's act (`site attach-store`) after the old site is gone or
//! isolated, which is when this matters.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use offsite_objects::{ObjectError, ObjectStore};
use serde::{Deserialize, Serialize};

/// The record's key under the group's prefix.
pub const OWNER_KEY: &str = "owner.json";
/// This site's copy of the record it wrote, in the store's working
/// directory.
pub const LOCAL_FILE: &str = "owner.json";
/// The format written.
pub const FORMAT: u32 = 1;

/// How a site came to own the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Taken {
    /// It created the store there.
    Created,
    /// A store from before the record: claimed at its first commit.
    Claimed,
    /// `site attach-store` took it over.
    Attached,
}

impl std::fmt::Display for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Taken::Created => "by creating the store there",
            Taken::Claimed => "by claiming a store from before owner records",
            Taken::Attached => "with `offsite site attach-store`",
        })
    }
}

/// A site's identity as the record names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteIdentity {
    /// The site's name.
    pub name: String,
    /// Its certificate fingerprint (what is compared).
    pub fingerprint: String,
}

/// The owner record (without its checksum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerRecord {
    /// [`FORMAT`].
    pub format: u32,
    /// The group's name.
    pub group: String,
    /// The writing site's name.
    pub site: String,
    /// The writing site's certificate fingerprint.
    pub fingerprint: String,
    /// 1 at creation, +1 at each takeover.
    pub epoch: u64,
    /// RFC 3339 time the site took the prefix.
    pub since: String,
    /// How.
    pub how: Taken,
}

/// The record as stored: the fields and their CRC-32C.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    record: OwnerRecord,
    crc32c: u32,
}

/// Why an owner record was not usable.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Not the JSON of a record, or its checksum does not match.
    #[error(
        "{key} is not an owner record offsite wrote intact ({why}); delete it only if no other site writes this prefix, then the next commit claims it again"
    )]
    Damaged {
        /// Where it was read.
        key: String,
        /// What was wrong.
        why: String,
    },
    /// A format this build does not read.
    #[error("{key} has format {found}; this offsite reads format {FORMAT}: upgrade offsite")]
    Format {
        /// Where it was read.
        key: String,
        /// The format found.
        found: u32,
    },
    /// The object store failed.
    #[error("reading or writing the owner record {key}: {source}")]
    Object {
        /// The key.
        key: String,
        /// The store's error.
        #[source]
        source: Box<ObjectError>,
    },
    /// The local copy could not be read or written.
    #[error("{op} {}: {source}", path.display())]
    Local {
        /// What was done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl OwnerRecord {
    /// A record of `me` owning `group` at `epoch`, since now.
    pub fn new(group: &str, me: &SiteIdentity, epoch: u64, how: Taken) -> OwnerRecord {
        OwnerRecord {
            format: FORMAT,
            group: group.to_string(),
            site: me.name.clone(),
            fingerprint: me.fingerprint.clone(),
            epoch,
            since: offsite_catalog::now_rfc3339(),
            how,
        }
    }

    fn crc(&self) -> u32 {
        crc32c::crc32c(&serde_json::to_vec(self).unwrap_or_default())
    }

    /// The JSON stored.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(&Stored {
            record: self.clone(),
            crc32c: self.crc(),
        })
        .unwrap_or_default()
    }

    /// Reads a record (`key` names it in errors).
    pub fn decode(key: &str, bytes: &[u8]) -> Result<OwnerRecord, OwnerError> {
        let damaged = |why: String| OwnerError::Damaged {
            key: key.to_string(),
            why,
        };
        // The format first, so that a newer record says so.
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
        if head.format != FORMAT {
            return Err(OwnerError::Format {
                key: key.to_string(),
                found: head.format,
            });
        }
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| damaged(e.to_string()))?;
        if stored.record.crc() != stored.crc32c {
            return Err(damaged("its checksum does not match its fields".into()));
        }
        Ok(stored.record)
    }
}

/// What a writer does, given the record in the bucket and its own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The prefix is this site's, as it last wrote: commit.
    Mine,
    /// No record in the bucket (a new store, a store from before records,
    /// or a record deleted): write one at this epoch, then commit.
    Claim(u64),
    /// The record is this site's at another epoch (attached again here,
    /// or the local copy was lost): keep it as the local copy, commit.
    Adopt,
    /// Another site owns the prefix: do not write.
    TakenOver,
}

/// The decision before a commit point (pure; see the module doc).
pub fn decide(
    me: &SiteIdentity,
    local: Option<&OwnerRecord>,
    remote: Option<&OwnerRecord>,
) -> Verdict {
    match (remote, local) {
        (None, None) => Verdict::Claim(1),
        (None, Some(l)) => Verdict::Claim(l.epoch),
        (Some(r), _) if r.fingerprint != me.fingerprint => Verdict::TakenOver,
        (Some(r), Some(l)) if r.epoch == l.epoch => Verdict::Mine,
        (Some(_), _) => Verdict::Adopt,
    }
}

/// The record in the bucket, if any.
pub fn read_remote(objects: &dyn ObjectStore) -> Result<Option<OwnerRecord>, OwnerError> {
    match objects.get(OWNER_KEY) {
        Ok(bytes) => OwnerRecord::decode(OWNER_KEY, &bytes).map(Some),
        Err(e) if e.is_not_found() => Ok(None),
        Err(source) => Err(OwnerError::Object {
            key: OWNER_KEY.to_string(),
            source: Box::new(source),
        }),
    }
}

/// This site's copy in `work_dir`, if any (a damaged copy counts as none:
/// the bucket's record decides).
pub fn read_local(work_dir: &Path) -> Option<OwnerRecord> {
    let bytes = std::fs::read(work_dir.join(LOCAL_FILE)).ok()?;
    OwnerRecord::decode(LOCAL_FILE, &bytes).ok()
}

fn write_local(work_dir: &Path, record: &OwnerRecord) -> Result<(), OwnerError> {
    let path = work_dir.join(LOCAL_FILE);
    offsite_volume_file::write_durably(&path, &record.encode(), 0o600).map_err(|source| {
        OwnerError::Local {
            op: "writing",
            path,
            source,
        }
    })
}

/// Writes `record` to the bucket, then as the local copy.
fn write_both(
    objects: &dyn ObjectStore,
    work_dir: &Path,
    record: &OwnerRecord,
) -> Result<(), OwnerError> {
    objects
        .put(OWNER_KEY, &record.encode())
        .map_err(|source| OwnerError::Object {
            key: OWNER_KEY.to_string(),
            source: Box::new(source),
        })?;
    write_local(work_dir, record)
}

/// `site attach-store`: `me` takes group `group`'s prefix over, at the
/// epoch after the record's (1 without one); returns the record written.
pub fn take_over(
    objects: &dyn ObjectStore,
    work_dir: &Path,
    group: &str,
    me: &SiteIdentity,
) -> Result<OwnerRecord, OwnerError> {
    let epoch = read_remote(objects)?.map_or(1, |r| r.epoch + 1);
    let record = OwnerRecord::new(group, me, epoch, Taken::Attached);
    write_both(objects, work_dir, &record)?;
    Ok(record)
}

/// The refusal of a writer whose prefix `owner` took over.
pub fn taken_over_message(group: &str, me: &SiteIdentity, owner: &OwnerRecord) -> String {
    format!(
        "the bucket prefix of group {group} is no longer written by this site ({}): site {} (fingerprint {}) took it over at {} {} (owner epoch {}); nothing was written. If {} is the group's replica site now, retire this copy with `offsite group teardown {group} --force` here (the objects stay: they are {}'s store) and point the primary at {}; if it took the prefix by mistake, tear the group down there and here, then `offsite site attach-store` here takes the prefix back (docs/operations.md, \"One writer per prefix\")",
        me.name,
        owner.site,
        owner.fingerprint,
        owner.since,
        owner.how,
        owner.epoch,
        owner.site,
        owner.site,
        owner.site,
    )
}

/// The fence of one store in a bucket (see the module doc).
#[derive(Debug)]
pub struct OwnerFence {
    objects: Arc<dyn ObjectStore>,
    work_dir: PathBuf,
    group: String,
    me: SiteIdentity,
    /// How a store without a record came to this site (a new store:
    /// created; an older one: claimed).
    claim_as: Taken,
    /// Once refused, refused without asking again (the record does not
    /// return to this site by itself).
    refused: Mutex<Option<String>>,
}

impl OwnerFence {
    /// The fence of `group`'s store whose objects are `objects` and whose
    /// working directory is `work_dir`, written by `me`.
    pub fn new(
        objects: Arc<dyn ObjectStore>,
        work_dir: &Path,
        group: &str,
        me: SiteIdentity,
        claim_as: Taken,
    ) -> OwnerFence {
        OwnerFence {
            objects,
            work_dir: work_dir.to_path_buf(),
            group: group.to_string(),
            me,
            claim_as,
            refused: Mutex::new(None),
        }
    }

    fn check_once(&self) -> Result<(), String> {
        let remote = read_remote(self.objects.as_ref()).map_err(|e| {
            format!(
                "checking that this site still owns group {}'s bucket prefix: {e}",
                self.group
            )
        })?;
        let local = read_local(&self.work_dir);
        let failed = |e: OwnerError| format!("claiming group {}'s bucket prefix: {e}", self.group);
        match decide(&self.me, local.as_ref(), remote.as_ref()) {
            Verdict::Mine => Ok(()),
            Verdict::Claim(epoch) => {
                let record = OwnerRecord::new(&self.group, &self.me, epoch, self.claim_as);
                write_both(self.objects.as_ref(), &self.work_dir, &record).map_err(failed)?;
                tracing::info!(group = %self.group, epoch, "this site's ownership of the group's bucket prefix recorded");
                Ok(())
            }
            Verdict::Adopt => {
                let r = remote.expect("adopt has a record");
                write_local(&self.work_dir, &r).map_err(failed)
            }
            Verdict::TakenOver => {
                let r = remote.expect("taken over has a record");
                let why = taken_over_message(&self.group, &self.me, &r);
                tracing::error!(group = %self.group, owner = %r.site, epoch = r.epoch, "{why}");
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = Some(why.clone());
                Err(why)
            }
        }
    }
}

impl offsite_replica_store::CommitFence for OwnerFence {
    fn check(&self) -> Result<(), String> {
        if let Some(why) = &*self.refused.lock().unwrap_or_else(|e| e.into_inner()) {
            return Err(why.clone());
        }
        self.check_once()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_replica_store::CommitFence;

    fn me(name: &str) -> SiteIdentity {
        SiteIdentity {
            name: name.into(),
            fingerprint: format!("fp-{name}"),
        }
    }

    fn record(site: &str, epoch: u64) -> OwnerRecord {
        OwnerRecord {
            format: FORMAT,
            group: "g1".into(),
            site: site.into(),
            fingerprint: format!("fp-{site}"),
            epoch,
            since: "2026-12-07T14:00:00Z".into(),
            how: Taken::Attached,
        }
    }

    /// The format is pinned: a site reading a bucket written by another
    /// version must find these exact fields.
    #[test]
    fn owner_json_matches_its_fixture_and_reads_back() {
        let r = record("site-c", 2);
        let bytes = r.encode();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bucket/owner-v1.json"
        );
        if std::env::var_os("OFFSITE_BLESS").is_some() && !Path::new(path).exists() {
            std::fs::create_dir_all(Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &bytes).unwrap();
        }
        let golden = std::fs::read(path).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&golden)
        );
        assert_eq!(OwnerRecord::decode(OWNER_KEY, &golden).unwrap(), r);
    }

    #[test]
    fn a_changed_record_a_newer_format_or_garbage_is_refused() {
        let text = String::from_utf8(record("site-c", 2).encode()).unwrap();
        let changed = text.replace("\"epoch\": 2", "\"epoch\": 3");
        assert_ne!(changed, text);
        let e = OwnerRecord::decode(OWNER_KEY, changed.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        let newer = text.replace("\"format\": 1", "\"format\": 2");
        let e = OwnerRecord::decode(OWNER_KEY, newer.as_bytes()).unwrap_err();
        assert!(
            e.to_string().contains("format 2") && e.to_string().contains("upgrade"),
            "{e}"
        );
        let e = OwnerRecord::decode(OWNER_KEY, b"\x00").unwrap_err();
        assert!(e.to_string().contains(OWNER_KEY), "{e}");
    }

    #[test]
    fn the_decision_before_a_commit() {
        let b = me("site-b");
        let mine1 = record("site-b", 1);
        let mine3 = record("site-b", 3);
        let theirs = record("site-c", 2);
        assert_eq!(decide(&b, None, None), Verdict::Claim(1));
        assert_eq!(decide(&b, Some(&mine3), None), Verdict::Claim(3));
        assert_eq!(decide(&b, Some(&mine1), Some(&mine1)), Verdict::Mine);
        assert_eq!(decide(&b, None, Some(&mine1)), Verdict::Adopt);
        assert_eq!(decide(&b, Some(&mine1), Some(&mine3)), Verdict::Adopt);
        // Another site's record, whatever this site's copy says.
        assert_eq!(decide(&b, Some(&mine1), Some(&theirs)), Verdict::TakenOver);
        assert_eq!(decide(&b, None, Some(&theirs)), Verdict::TakenOver);
        assert_eq!(decide(&b, Some(&mine3), Some(&theirs)), Verdict::TakenOver);
    }

    /// Two sites over one prefix: the writer claims it, a takeover by
    /// another site stops it with who and when, and nothing it does puts
    /// the record back.
    #[test]
    fn a_takeover_stops_the_old_writer() {
        let dir = tempfile::tempdir().unwrap();
        let objects: Arc<dyn ObjectStore> =
            Arc::new(offsite_objects::DirStore::open(dir.path().join("o")).unwrap());
        let (work_b, work_c) = (dir.path().join("b"), dir.path().join("c"));
        std::fs::create_dir_all(&work_b).unwrap();
        std::fs::create_dir_all(&work_c).unwrap();
        let fence = OwnerFence::new(objects.clone(), &work_b, "g1", me("site-b"), Taken::Created);
        fence.check().unwrap();
        let r = read_remote(objects.as_ref()).unwrap().unwrap();
        assert_eq!(
            (r.site.as_str(), r.epoch, r.how),
            ("site-b", 1, Taken::Created)
        );
        assert_eq!(read_local(&work_b), Some(r.clone()));
        fence.check().unwrap();

        let taken = take_over(objects.as_ref(), &work_c, "g1", &me("site-c")).unwrap();
        assert_eq!(taken.epoch, 2);
        let e = fence.check().unwrap_err();
        assert!(
            e.contains("site site-c")
                && e.contains(&taken.since)
                && e.contains("group teardown g1 --force"),
            "{e}"
        );
        // Sticky, and the record stays the new owner's.
        objects.delete(OWNER_KEY).unwrap();
        assert_eq!(fence.check().unwrap_err(), e);
        assert!(read_remote(objects.as_ref()).unwrap().is_none());
        // The new owner's fence restores its own record.
        let c = OwnerFence::new(objects.clone(), &work_c, "g1", me("site-c"), Taken::Claimed);
        c.check().unwrap();
        assert_eq!(read_remote(objects.as_ref()).unwrap().unwrap().epoch, 2);
        // A fresh fence at the old site (a restart) is refused too.
        let again = OwnerFence::new(objects, &work_b, "g1", me("site-b"), Taken::Created);
        assert!(again.check().unwrap_err().contains("site-c"));
    }
}
