//! PIT operations beyond commit: `pit export` (a PIT served read-only over
//! NBD, for inspection and backup), `pit check` (scrub against the recorded
//! checksums), `pit release` (a named PIT becomes subject to retention
//! again) and `group teardown`.

use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::model::{ExportedVolume, PitCheck, PitCheckEntry, PitExport, RecoveryPoint};
use crate::recovery::Source;
use offsite_replica_store::{PitId, ReplicaStore};

use offsite_catalog::GroupRow;
use offsite_catalog::Role;

use crate::wire;
use crate::{RemoteError, ReplError, Replication, invalid};

/// One volume of a PIT, or of a journal checkpoint's image, as a
/// read-only block device.
struct PitView {
    store: Arc<ReplicaStore>,
    source: Source,
    volume: String,
    size: u64,
}

impl PitView {
    fn read(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        match &self.source {
            Source::Pit(pit) => self.store.read(Some(*pit), &self.volume, offset, buf),
            Source::Checkpoint(image) => image.read(&self.volume, offset, buf),
        }
        .map_err(|e| {
            io::Error::other(format!(
                "reading {} of {}: {e}",
                self.source.describe(),
                self.volume
            ))
        })
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        match &self.source {
            Source::Pit(pit) => self.store.next_data(Some(*pit), &self.volume, offset),
            Source::Checkpoint(image) => image.next_data(&self.volume, offset),
        }
        .map_err(|e| {
            io::Error::other(format!(
                "looking for data in {} of {}: {e}",
                self.source.describe(),
                self.volume
            ))
        })
    }
}

impl offsite_nbd::BlockDevice for PitView {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_only(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.read(buf, offset)
    }

    fn write_at(&self, _: &[u8], _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "PIT exports are read-only",
        ))
    }

    fn write_zeroes(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "PIT exports are read-only",
        ))
    }

    fn trim(&self, _: u64, _: u64, _: bool) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "PIT exports are read-only",
        ))
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    /// Holes from the store's `next_data` (base image holes, zero
    /// segment blocks); a data run is followed block by block, at most
    /// `MAX_PROBES` blocks per call (the client asks again for the rest).
    fn block_status(&self, offset: u64, len: u64) -> io::Result<Vec<offsite_nbd::Extent>> {
        const MAX_PROBES: u64 = 16 << 10;
        let bs = self
            .store
            .volumes()
            .iter()
            .find(|v| v.name == self.volume)
            .map_or(4096, |v| u64::from(v.block_size));
        let next_data = |at: u64| self.next_data(at);
        let end = offset.saturating_add(len);
        offsite_nbd::extents_by_seek(offset, len, next_data, |at| {
            offsite_nbd::probe_data_end(at, end, bs, MAX_PROBES, next_data)
        })
    }
}

/// Resolves a PIT given as an id or a name.
fn resolve(store: &ReplicaStore, group: &str, pit: &str) -> Result<PitId, ReplError> {
    crate::test_failover::resolve(store, group, Some(pit))
}

impl Replication {
    async fn replica_store(&self, group: &str) -> Result<Arc<ReplicaStore>, ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        let row = tokio::task::spawn_blocking(move || site.groups().get(&g))
            .await
            .map_err(|e| invalid(e.to_string()))??;
        if row.role != Role::Replica {
            return Err(invalid(format!(
                "group {group}'s PITs live on its replica site {}; run this there",
                row.partner
            )));
        }
        self.local_store(group).await.map(|(_, s)| s)
    }

    /// `pit export`: serves every volume of PIT `pit` (id or name) of
    /// `group` read-only over NBD on this (replica) site.
    pub async fn pit_export(&self, group: &str, pit: &str) -> Result<PitExport, ReplError> {
        let store = self.replica_store(group).await?;
        let id = resolve(&store, group, pit)?;
        Ok(self.export_source(group, &store, Source::Pit(id), None))
    }

    /// `pit export GROUP --at TIME`: serves the newest consistent point
    /// at or before `at` (RFC 3339), a journal checkpoint or a PIT,
    /// read-only over NBD. A checkpoint's exports hold its image (and so
    /// the PIT it starts from and its journal files) while the daemon
    /// runs.
    pub async fn pit_export_at(&self, group: &str, at: &str) -> Result<PitExport, ReplError> {
        crate::recovery::parse_at(at)?;
        let store = self.replica_store(group).await?;
        let site = self.site.clone();
        let g = group.to_string();
        let row = crate::run_blocking(move || Ok(site.groups().get(&g)?)).await?;
        let (source, point) = self.resolve_at(&row, &store, at).await?;
        Ok(self.export_source(group, &store, source, Some(point)))
    }

    fn export_source(
        &self,
        group: &str,
        store: &Arc<ReplicaStore>,
        source: Source,
        point: Option<RecoveryPoint>,
    ) -> PitExport {
        // A checkpoint's exports are named after it: they are not PIT
        // `pit`'s, and two checkpoints over one PIT are exported side by side.
        let suffix = match &source {
            Source::Pit(id) => format!("pit{id}"),
            Source::Checkpoint(image) => format!("cp{}", image.info().id),
        };
        let mut volumes = Vec::new();
        for spec in store.volumes() {
            let export = format!("{}@{group}.{suffix}", spec.name);
            let device = Arc::new(PitView {
                store: store.clone(),
                source: source.clone(),
                volume: spec.name.clone(),
                size: spec.size_bytes,
            });
            let url = self.site.add_export(offsite_nbd::Export {
                name: export.clone(),
                description: format!(
                    "{} of group {group}, volume {} (read-only)",
                    source.describe(),
                    spec.name
                ),
                device,
                tls: None,
            });
            volumes.push(ExportedVolume {
                name: spec.name.clone(),
                export,
                url,
            });
        }
        tracing::info!(group, from = %source.describe(), "exported read-only over NBD");
        PitExport {
            group: group.to_string(),
            pit: source.pit(),
            volumes,
            point,
        }
    }

    /// `pit check`: reads every block of every PIT's own segments on this
    /// (replica) site and compares it with the hash recorded at commit (a
    /// scrub: it finds bit rot and damage, never changes anything).
    pub async fn pit_check(&self, group: &str) -> Result<PitCheck, ReplError> {
        let store = self.replica_store(group).await?;
        let group = group.to_string();
        tokio::task::spawn_blocking(move || {
            let pits: Vec<PitCheckEntry> = store
                .pits()
                .into_iter()
                .map(|p| {
                    let r = store.verify_pit(p.id);
                    PitCheckEntry {
                        id: p.id.get(),
                        name: p.name,
                        ok: r.is_ok(),
                        // With its sources: an object store's error says
                        // why (unavailable, changed or damaged, wrong key).
                        error: r.err().map(|e| error_chain(&e)),
                    }
                })
                .collect();
            let damaged = pits.iter().filter(|p| !p.ok).count() as u64;
            if damaged > 0 {
                tracing::error!(group, damaged, "PITs fail their checksums");
            }
            PitCheck {
                group,
                pits,
                damaged,
            }
        })
        .await
        .map_err(|e| invalid(e.to_string()))
    }

    /// `pit release`: forgets a PIT's name so retention may remove it.
    pub async fn pit_release(&self, group: &str, pit: &str) -> Result<(), ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        let row = tokio::task::spawn_blocking(move || site.groups().get(&g))
            .await
            .map_err(|e| invalid(e.to_string()))??;
        if row.role == Role::Primary {
            // A PIT the primary has never heard of is unknown (404) here,
            // not a refusal of the partner's (403). The primary's list
            // knows every committed PIT by id and name.
            let known = self.pit_list(group).await?.iter().any(|p| {
                p.name.as_deref() == Some(pit) || pit.parse::<u64>().is_ok_and(|id| id == p.id)
            });
            if !known {
                return Err(ReplError::Engine(offsite_engine::EngineError::NotFound(
                    format!(
                        "group {group} has no PIT {pit:?}; `offsite pit list {group}` shows them"
                    ),
                )));
            }
            let mut ch = self.channel(&row.partner, None).await?;
            let r = ch
                .call(&wire::PitRelease {
                    group: group.to_string(),
                    pit: pit.to_string(),
                })
                .await;
            ch.close().await;
            r?;
            // The replica's list reaches the primary with the next commit;
            // forget the name here now, so it can be given again at once.
            let site = self.site.clone();
            let (g, p) = (group.to_string(), pit.to_string());
            return tokio::task::spawn_blocking(move || {
                let mut rows = site.groups().pits(&g)?;
                let by_id = p.parse::<u64>().ok();
                if let Some(row) = rows.iter_mut().rev().find(|r| {
                    Some(r.id) == by_id
                        || (by_id.is_none() && r.name.as_deref() == Some(p.as_str()))
                }) {
                    row.name = None;
                }
                site.groups().replace_pits(&g, &rows)
            })
            .await
            .map_err(|e| invalid(e.to_string()))?
            .map_err(ReplError::Engine);
        }
        // The user's mistakes (a group that is not a replica here, an
        // unknown PIT) keep their class; only what fails beyond them is
        // the refusal `release_local` reports.
        let store = self.replica_store(group).await?;
        resolve(&store, group, pit)?;
        self.release_local(group, pit)
            .await
            .map_err(ReplError::Refused)
    }

    pub(crate) async fn release_local(&self, group: &str, pit: &str) -> Result<(), RemoteError> {
        let store = self.replica_store(group).await?;
        let id = resolve(&store, group, pit)?;
        let site = self.site.clone();
        let g = group.to_string();
        tokio::task::spawn_blocking(move || {
            store
                .set_pit_name(id, None)
                .map_err(|e| crate::replica_side::storage_error(e.to_string(), &e))?;
            let pits = pit_rows(&store);
            Ok::<(), RemoteError>(site.groups().replace_pits(&g, &pits)?)
        })
        .await??;
        Ok(())
    }

    /// `group teardown [--force]` on either site: both sides forget the
    /// group (only this one with `force` when the partner cannot be
    /// reached). Volumes stay; a replica's PITs are kept on disk (moved
    /// aside, see [`Replication::retire_store`]) unless `delete_replica`
    /// asks to delete them.
    pub async fn teardown(
        &self,
        group: &str,
        force: bool,
        delete_replica: bool,
    ) -> Result<(), ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        let row = tokio::task::spawn_blocking(move || site.groups().get(&g))
            .await
            .map_err(|e| invalid(e.to_string()))??;
        if delete_replica {
            self.check_store_deletable(&row)
                .await
                .map_err(ReplError::Refused)?;
        }
        let told = async {
            let mut ch = self.channel(&row.partner, None).await?;
            let group = group.to_string();
            let r = if row.role == Role::Primary {
                ch.call(&wire::GroupDelete {
                    group,
                    delete_replica,
                })
                .await
            } else {
                ch.call(&wire::GroupForget {
                    group,
                    delete_replica,
                })
                .await
            };
            ch.close().await;
            r.map(drop)
        }
        .await;
        if let Err(e) = told {
            if !force {
                return Err(invalid(format!(
                    "the partner {} did not tear down its side of group {group} ({e}); retry when it is reachable, or add --force to tear down this side only",
                    row.partner
                )));
            }
            tracing::warn!(group, partner = %row.partner, "tearing down this side only: {e}");
        }
        self.forget_group(&row, delete_replica)
            .await
            .map_err(ReplError::Refused)
    }

    /// Refuses `--delete-replica` while promoted volumes of this site
    /// still read the group's replica store.
    async fn check_store_deletable(&self, row: &GroupRow) -> Result<(), RemoteError> {
        let (true, Some(dir)) = (row.role == Role::Replica, row.store_dir.clone()) else {
            return Ok(());
        };
        let site = self.site.clone();
        let d = dir.clone();
        let readers = tokio::task::spawn_blocking(move || store_readers(&site, &d)).await??;
        if readers.is_empty() {
            return Ok(());
        }
        Err(RemoteError::Conflict(format!(
            "the replica store {dir} of group {} cannot be deleted: the promoted volume(s) {} of site {} still read it (they copy it in the background and stop reading it at the next start of the site once complete); nothing changed: tear down without --delete-replica to keep the store, or retry after that",
            row.name,
            readers.join(", "),
            self.site.config().name
        )))
    }

    /// Removes the group from this site: runner, failovers, row; a
    /// replica's store is retired (kept aside, or deleted with
    /// `delete_store`).
    pub(crate) async fn forget_group(
        &self,
        row: &GroupRow,
        delete_store: bool,
    ) -> Result<(), RemoteError> {
        if delete_store {
            // Checked before anything is forgotten: a refusal changes nothing.
            self.check_store_deletable(row).await?;
        }
        self.runners.remove(&row.name);
        // A sync stream's log goes with the store (its writer aborts).
        self.replica.forget_log(&row.name);
        if row.role == Role::Replica {
            self.retire_store(row, delete_store).await?;
        }
        let site = self.site.clone();
        let g = row.name.clone();
        tokio::task::spawn_blocking(move || site.delete_group_row(&g))
            .await?
            .map_err(RemoteError::from)
    }

    /// A torn-down replica's store: removed when it holds no PIT (nothing
    /// was replicated yet), left in place while promoted volumes read it,
    /// else renamed to `DIR.torn-down-TIME` so its PITs stay readable by
    /// hand and the name is free for a new group; with `delete`
    /// (`teardown --delete-replica`) removed with its PITs.
    async fn retire_store(&self, row: &GroupRow, delete: bool) -> Result<(), RemoteError> {
        let Some(dir) = row.store_dir.clone() else {
            return Ok(());
        };
        let site = self.site.clone();
        let group = row.name.clone();
        tokio::task::spawn_blocking(move || {
            let path = Path::new(&dir);
            if !path.exists() {
                return Ok(());
            }
            let used = !store_readers(&site, &dir)?.is_empty();
            if used {
                site.note(
                    "group.store-kept",
                    &group,
                    &format!("replica store {dir} stays: promoted volumes still read it"),
                );
                return Ok(());
            }
            let empty = site
                .replica_store(path)
                .map(|s| s.pits().is_empty())
                .unwrap_or(false);
            site.forget_replica_store(path);
            if empty || delete {
                // An objects store's objects first: its working directory
                // says where they are.
                site.delete_store_objects(path)?;
                std::fs::remove_dir_all(path).map_err(|e| {
                    RemoteError::Internal(format!("removing {dir}: {e}; remove it by hand"))
                })?;
                if delete && !empty {
                    site.note(
                        "group.store-deleted",
                        &group,
                        &format!("the replica store {dir} of group {group} and its PITs were deleted"),
                    );
                }
                return Ok(());
            }
            let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
            let aside = (0..)
                .map(|n| match n {
                    0 => format!("{dir}.torn-down-{stamp}"),
                    n => format!("{dir}.torn-down-{stamp}-{n}"),
                })
                .find(|p| !Path::new(p).exists())
                .unwrap_or_default();
            std::fs::rename(path, &aside)
                .map_err(|e| RemoteError::Internal(format!("moving {dir} aside: {e}")))?;
            site.note(
                "group.store-kept",
                &group,
                &format!("the replica's PITs of group {group} are kept in {aside}; delete it when no longer needed"),
            );
            Ok(())
        })
        .await?
    }
}

impl Replication {
    /// `group export-seed`: writes each volume's current image (sparse) and
    /// `seed.json` into `to`, for initial replication from media. The copy
    /// need not be consistent: the seeded start compares every block.
    pub async fn export_seed(
        &self,
        group: &str,
        to: &str,
    ) -> Result<crate::model::SeedExport, ReplError> {
        let site = self.site.clone();
        let g = group.to_string();
        let to = std::path::PathBuf::from(to);
        tokio::task::spawn_blocking(move || {
            let row = site.groups().get(&g)?;
            if row.role != Role::Primary {
                return Err(invalid(format!(
                    "export the seed at the primary site {} of group {g}",
                    row.partner
                )));
            }
            if !to.is_absolute() {
                return Err(invalid(format!(
                    "seed directory {} is relative; give an absolute path on the primary's machine",
                    to.display()
                )));
            }
            offsite_volume_file::create_private_dir_all(&to)
                .map_err(|e| invalid(format!("cannot create {}: {e}", to.display())))?;
            let mut volumes = Vec::new();
            let mut bytes = 0u64;
            for v in &row.volumes {
                let vol = site.volume(&v.volume)?;
                let file = format!("{}.img", v.volume);
                let path = to.join(&file);
                bytes += write_seed_image(&vol, v, &path)?;
                volumes.push(wire::SeedVolume {
                    name: v.volume.clone(),
                    size_bytes: v.size_bytes,
                    block_size: v.block_size,
                    file,
                });
            }
            let manifest = wire::SeedManifest {
                format_version: 1,
                group: g.clone(),
                primary: site.config().name.clone(),
                created_at: offsite_catalog::now_rfc3339(),
                volumes,
            };
            let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            offsite_volume_file::write_durably(
                &to.join("seed.json"),
                &text,
                offsite_volume_file::PRIVATE_FILE_MODE,
            )
            .map_err(|e| invalid(format!("writing {}: {e}", to.join("seed.json").display())))?;
            Ok(crate::model::SeedExport {
                group: g,
                dir: to.display().to_string(),
                bytes,
                files: manifest.volumes.iter().map(|v| v.file.clone()).collect(),
            })
        })
        .await
        .map_err(|e| invalid(e.to_string()))?
    }
}

/// Writes volume `v`'s current image to `path`, as thin as the volume:
/// its holes are not read (SEEK_DATA) and its zero blocks not written (the
/// file was just truncated, so they read zero), since the seed may become
/// the replica's base as it is. Returns the bytes written.
fn write_seed_image(
    vol: &offsite_engine::Volume,
    v: &offsite_catalog::GroupVolumeRow,
    path: &std::path::Path,
) -> Result<u64, ReplError> {
    use std::os::unix::fs::FileExt;
    let out = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true),
        offsite_volume_file::PRIVATE_FILE_MODE,
    )
    .open(path)
    .and_then(|f| f.set_len(v.size_bytes).map(|()| f))
    .map_err(|e| invalid(format!("cannot write {}: {e}", path.display())))?;
    const CHUNK: u64 = 1 << 20;
    let read_err = |e| invalid(format!("reading volume {}: {e}", v.volume));
    let mut buf = vec![0u8; CHUNK as usize];
    let mut offset = 0;
    let mut bytes = 0u64;
    while offset < v.size_bytes {
        match vol.file().next_data(offset).map_err(read_err)? {
            None => break,
            Some(at) if at >= offset + CHUNK => {
                offset = at / CHUNK * CHUNK;
                continue;
            }
            Some(_) => {}
        }
        let n = (v.size_bytes - offset).min(CHUNK) as usize;
        vol.file()
            .read_at(&mut buf[..n], offset)
            .map_err(read_err)?;
        let runs = offsite_volume_file::zero_runs(&buf[..n], offset, u64::from(v.block_size));
        for (at, len, zero) in runs {
            if zero {
                continue;
            }
            let part = &buf[(at - offset) as usize..(at - offset + len) as usize];
            out.write_all_at(part, at)
                .map_err(|e| invalid(format!("writing {}: {e}", path.display())))?;
            bytes += len;
        }
        offset += n as u64;
    }
    out.sync_all()
        .map_err(|e| invalid(format!("syncing {}: {e}", path.display())))?;
    Ok(bytes)
}

/// The volumes of this site whose lower layer is the replica store `dir`
/// (promoted volumes not yet complete).
fn store_readers(
    site: &offsite_engine::Site,
    dir: &str,
) -> Result<Vec<String>, offsite_engine::EngineError> {
    Ok(site
        .volume_rows()?
        .into_iter()
        .filter(|v| v.lower.as_ref().is_some_and(|l| l.store_dir == dir))
        .map(|v| v.name)
        .collect())
}

/// The catalog rows of every PIT of `store`, oldest first.
pub(crate) fn pit_rows(store: &ReplicaStore) -> Vec<offsite_catalog::PitRow> {
    store
        .pits()
        .into_iter()
        .map(|p| offsite_catalog::PitRow {
            id: p.id.get(),
            name: p.name,
            created_at: p.created_at,
            bytes: p.bytes,
            // The store does not keep the mark: the catalog's list does,
            // and `replace_pits` keeps it on the PITs that have it.
            app_consistent: false,
        })
        .collect()
}

/// `e` with its sources, `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
