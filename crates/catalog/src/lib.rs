//! The site catalog: every piece of control-plane state (site settings,
//! volumes, events; later partners, groups, PITs, plans) in one SQLite file,
//! `catalog.db`, in the site's data directory.
//!
//! Durability: SQLite in WAL mode with `synchronous=FULL`, so a committed
//! transaction survives power loss. Every state transition is committed
//! before it is reported to a client.
//!
//! Schema versioning: `PRAGMA user_version` holds the schema version; opening
//! applies the missing migrations of `migrations::MIGRATIONS` in one transaction each,
//! and refuses a catalog written by a newer offsite. Migrations are written
//! by hand rather than with a migration crate because the whole mechanism is
//! a dozen lines over `user_version` and keeps us on one rusqlite version.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

mod groups;
mod migrations;
mod plans;
pub mod state;

use migrations::MIGRATIONS;
pub use plans::{PlanRow, PlanStepRow, PlanVmRow, RunRow, RunStepRow};
pub use state::{GroupState, Mode, Role, SyncState, TransitionError, transition};

/// What a group's bytes on the wire were moved for (`group measure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TrafficKind {
    /// Initial replication (full or seeded).
    Initial,
    /// Delta cycles (async groups; a sync group's resynchronization).
    Cycle,
    /// A sync group's write stream.
    Sync,
    /// `group resync`.
    Resync,
    /// The first transfer after `reverse` (and failback).
    Reverse,
}

impl TrafficKind {
    /// Every kind, in display order.
    pub const ALL: [TrafficKind; 5] = [
        TrafficKind::Initial,
        TrafficKind::Cycle,
        TrafficKind::Sync,
        TrafficKind::Resync,
        TrafficKind::Reverse,
    ];

    /// The catalog's (and the API's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficKind::Initial => "initial",
            TrafficKind::Cycle => "cycle",
            TrafficKind::Sync => "sync",
            TrafficKind::Resync => "resync",
            TrafficKind::Reverse => "reverse",
        }
    }
}

/// Schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Catalog errors.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The database could not be opened or a statement failed.
    #[error("catalog {}: {context}", path.display())]
    Sqlite {
        /// The catalog file.
        path: PathBuf,
        /// What was being done.
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The catalog was written by a newer offsite.
    #[error(
        "catalog {} has schema version {found}, newer than this offsite understands ({supported}); run a newer offsite",
        path.display()
    )]
    TooNew {
        /// The catalog file.
        path: PathBuf,
        /// Version found on disk.
        found: u32,
        /// Newest version this build knows.
        supported: u32,
    },
    /// A volume name is taken.
    #[error("a volume named {0:?} already exists; pick another name or delete it first")]
    VolumeExists(String),
    /// No such volume.
    #[error("no volume named {0:?}; `offsite volume list` shows the volumes")]
    NoSuchVolume(String),
    /// A VM name is taken.
    #[error("a VM named {0:?} already exists; pick another name or delete it first")]
    VmExists(String),
    /// No such VM.
    #[error("no VM named {0:?}; `offsite vm list` shows the VMs")]
    NoSuchVm(String),
    /// A group name is taken.
    #[error("a replication group named {0:?} already exists on this site; pick another name")]
    GroupExists(String),
    /// No such group.
    #[error("no replication group named {0:?}; `offsite group list` shows the groups")]
    NoSuchGroup(String),
    /// A failover of that kind already runs for the group.
    #[error("group {0} already has a {1} failover running; stop it first")]
    FailoverExists(String, String),
    /// A partner name or fingerprint is taken.
    #[error("{0}")]
    PartnerExists(String),
    /// No such partner.
    #[error("no partner named {0:?}; `offsite partner list` shows the partners")]
    NoSuchPartner(String),
    /// An authorization entry for this pattern exists.
    #[error(
        "an authorization entry for {0:?} already exists; remove it first with `offsite authz remove {0}`"
    )]
    AuthzExists(String),
    /// No such authorization entry.
    #[error("no authorization entry for {0:?}; `offsite authz list` shows them")]
    NoSuchAuthz(String),
    /// No such recovery plan.
    #[error("no recovery plan named {0:?}; `offsite plan list` shows the plans")]
    NoSuchPlan(String),
    /// No such plan run.
    #[error("no plan run {0:?}; `offsite plan history PLAN` shows the runs")]
    NoSuchRun(String),
    /// A group's state may not change that way ([`state::transition`]), or
    /// is not the one the change starts from.
    #[error("group {group}: {source}")]
    GroupState {
        /// The group.
        group: String,
        /// Why.
        #[source]
        source: TransitionError,
    },
    /// A migration left rows that break a foreign key.
    #[error(
        "catalog {}: migrating to schema version {version} left rows that break a foreign key; the catalog is unchanged",
        path.display()
    )]
    MigrationCheck {
        /// The catalog file.
        path: PathBuf,
        /// The version migrated to.
        version: u32,
    },
}

impl CatalogError {
    /// The state the group was found in, when a change refused it because
    /// it was not one the change starts from (another change came first).
    pub fn unexpected_state(&self) -> Option<GroupState> {
        match self {
            CatalogError::GroupState {
                source: TransitionError::Unexpected { found, .. },
                ..
            } => Some(*found),
            _ => None,
        }
    }
}

/// A VM's catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// VM name.
    pub name: String,
    /// Volume names, in order (disk 0 first).
    pub volumes: Vec<String>,
    /// Hook that starts the VM.
    pub start_cmd: Option<String>,
    /// Hook that stops the VM.
    pub stop_cmd: Option<String>,
    /// Hook that reports whether the VM runs.
    pub status_cmd: Option<String>,
    /// The libvirt domain's XML, verbatim (disks on this site's NBD
    /// exports), when the VM is a libvirt domain; start, stop and status
    /// then go through libvirt instead of the hooks.
    pub libvirt_xml: Option<String>,
    /// Hook that quiesces the VM's applications before a checkpoint's cut
    /// (`fsfreeze -f`, a database's backup mode); set with `thaw_cmd`.
    pub quiesce_cmd: Option<String>,
    /// Hook that undoes `quiesce_cmd` right after the cut.
    pub thaw_cmd: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// A replication group's catalog row (on either site).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRow {
    /// Group name (the same on both sites).
    pub name: String,
    /// Primary or replica here.
    pub role: Role,
    /// The other site.
    pub partner: String,
    /// Async or sync.
    pub mode: Mode,
    /// RPO in seconds.
    pub rpo_secs: u64,
    /// PITs kept.
    pub keep: u32,
    /// Bandwidth limit in bytes/s.
    pub bandwidth: Option<u64>,
    /// zstd on the wire.
    pub compress: bool,
    /// Security tag presented to the replica.
    pub security_tag: Option<String>,
    /// Replication state (docs/design.md §1; [`state`] draws the moves).
    pub state: GroupState,
    /// Replica side: directory of the replica store.
    pub store_dir: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last state change.
    pub state_changed_at: String,
    /// The last error, if the last cycle failed.
    pub last_error: Option<String>,
    /// Sync mode: `degrade` or `suspend-writes`.
    pub on_link_loss: String,
    /// Sync mode, `suspend-writes`: how long a write waits for the partner.
    pub suspend_timeout_secs: u64,
    /// Why the replica may differ from the primary beyond what the change
    /// trackers hold (read-only here: set with
    /// [`Catalog::set_group_needs_resync`]).
    pub needs_resync: Option<String>,
    /// When the last successful test drill ended, RFC 3339 (read-only
    /// here: set with [`Catalog::set_group_last_drill`]).
    pub last_drill_at: Option<String>,
    /// Seconds between application-consistent PITs the runner takes by
    /// itself (0: none; `group set --app-consistent-every`).
    pub app_consistent_every_secs: u64,
    /// Why the last application-consistent checkpoint attempt gave a
    /// crash-consistent PIT, until one succeeds (read-only here: set with
    /// [`Catalog::set_group_quiesce_error`]).
    pub quiesce_error: Option<String>,
    /// The journal a sync or continuous group keeps at its replica.
    pub journal: JournalSettings,
    /// Volumes, in order.
    pub volumes: Vec<GroupVolumeRow>,
    /// VMs whose volumes the group holds, in start order.
    pub vms: Vec<VmRow>,
}

/// The journal of a streaming (sync or continuous) group: checkpoints on
/// the stream and how much history its replica keeps (schema v16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalSettings {
    /// Milliseconds between crash-consistent checkpoints on the stream.
    pub checkpoint_interval_ms: u64,
    /// Seconds of history kept (before the newest checkpoint).
    pub history_secs: u64,
    /// Most bytes of journal kept, whatever the history.
    pub max_bytes: u64,
}

impl Default for JournalSettings {
    /// One checkpoint a second, a day of history, at most 10 GiB.
    fn default() -> JournalSettings {
        JournalSettings {
            checkpoint_interval_ms: 1000,
            history_secs: 86_400,
            max_bytes: 10 << 30,
        }
    }
}

/// A failover in progress on the replica: a test (clones of a PIT) or a
/// promotion. Its PIT is pinned: retention keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverRow {
    /// Group name.
    pub group: String,
    /// `test` or `promoted`.
    pub kind: String,
    /// The PIT the volumes were made from (for a checkpoint: the PIT its
    /// image starts from, kept by retention as long as the failover runs).
    pub pit_id: u64,
    /// The journal checkpoint the volumes were made from, if not a PIT.
    pub checkpoint: Option<u64>,
    /// RFC 3339 start time.
    pub started_at: String,
    /// `failover commit` ran (no revert, no other PIT).
    pub committed: bool,
}

/// One volume of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupVolumeRow {
    /// Volume name (at the primary).
    pub volume: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Bytes of the initial replication already durable on the replica.
    pub initial_done_bytes: u64,
}

/// A PIT as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PitRow {
    /// PIT id (increasing per group).
    pub id: u64,
    /// Name, if the PIT was named.
    pub name: Option<String>,
    /// RFC 3339 time of the cut.
    pub created_at: String,
    /// Bytes shipped for it.
    pub bytes: u64,
    /// Cut while every VM of the group was quiesced or cleanly stopped:
    /// its volumes hold what the applications flushed, not a crash image.
    pub app_consistent: bool,
}

/// One replication cycle (for `group measure`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleRow {
    /// RFC 3339 start.
    pub started_at: String,
    /// RFC 3339 end, if it ended.
    pub finished_at: Option<String>,
    /// Bytes shipped.
    pub bytes: u64,
    /// PIT committed, if it succeeded.
    pub pit: Option<u64>,
    /// Error, if it failed.
    pub error: Option<String>,
}

/// A partner's catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerRow {
    /// The partner site's name (as it presents itself in the hello).
    pub name: String,
    /// HOST:PORT of its replication listener.
    pub address: String,
    /// Pinned `SHA256:` certificate fingerprint.
    pub fingerprint: String,
    /// RFC 3339 time of pairing.
    pub created_at: String,
    /// RFC 3339 time of the last successful handshake.
    pub last_handshake_at: Option<String>,
    /// Round-trip time measured then, in microseconds.
    pub last_rtt_micros: Option<u64>,
    /// The last connection error, cleared by a successful handshake.
    pub last_error: Option<String>,
}

/// An authorization entry's catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzRow {
    /// Exact site name or `*.suffix` wildcard (or `*`).
    pub pattern: String,
    /// Directory where replicas of matching primaries are stored.
    pub storage_location: String,
    /// Tag the primary's group must present, if any.
    pub security_tag: Option<String>,
    /// RFC 3339 creation time.
    pub created_at: String,
}

/// A volume's catalog row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRow {
    /// Stable id; names the volume's files.
    pub id: i64,
    /// Unique name, also the NBD export name.
    pub name: String,
    /// Size in bytes, a multiple of `block_size`.
    pub size_bytes: u64,
    /// Tracking granularity in bytes.
    pub block_size: u32,
    /// `primary`, `replica`, `test-clone` or `promoted`.
    pub role: String,
    /// `importing` while an import copies data in, then `ready`.
    pub state: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Path the volume was imported from, if it was.
    pub import_source: Option<String>,
    /// A promoted volume's lower layer, until it is flattened.
    pub lower: Option<LowerRef>,
    /// The volume's own NBD TLS mode (`off`, `optional`, `required`);
    /// `None` takes the NBD listener's.
    pub nbd_tls: Option<String>,
}

/// Where a layered volume reads the blocks its top layer lacks: PIT `pit`
/// of volume `volume` of the replica store in `store_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerRef {
    /// Directory of the replica store.
    pub store_dir: String,
    /// The volume's name in the store.
    pub volume: String,
    /// PIT id (for a checkpoint: the PIT its image starts from).
    pub pit: u64,
    /// The journal checkpoint, when the lower layer is one (read through
    /// the store's journal over PIT `pit`).
    pub checkpoint: Option<u64>,
}

/// A new volume, before it has an id.
#[derive(Debug, Clone)]
pub struct NewVolume<'a> {
    /// Unique name.
    pub name: &'a str,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u32,
    /// Role.
    pub role: &'a str,
    /// Initial state.
    pub state: &'a str,
    /// Import source, if any.
    pub import_source: Option<&'a str>,
    /// Lower layer (promoted volumes).
    pub lower: Option<&'a LowerRef>,
}

/// One event of the site's event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    /// Sequence number.
    pub id: i64,
    /// RFC 3339 time.
    pub at: String,
    /// Machine-readable kind (`volume.created`, ...).
    pub kind: String,
    /// What it is about (a volume name, ...).
    pub subject: Option<String>,
    /// Human-readable text.
    pub message: String,
}

/// An open catalog.
#[derive(Debug)]
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
    /// Rows of the group tables changed since open (see
    /// [`Catalog::group_changes`]).
    group_changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Whether an insert failed on a UNIQUE or PRIMARY KEY constraint (a name
/// already taken).
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Current time in RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Catalog {
    /// Creates a new catalog file (refuses an existing one) at the newest schema.
    pub fn create(path: &Path) -> Result<Catalog, CatalogError> {
        if path.exists() {
            return Err(CatalogError::Sqlite {
                path: path.to_path_buf(),
                context: "create",
                source: rusqlite::Error::InvalidPath(path.to_path_buf()),
            });
        }
        Self::open(path)
    }

    /// Opens a catalog, applying pending migrations.
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let err = |context: &'static str| {
            move |source| CatalogError::Sqlite {
                path: path.to_path_buf(),
                context,
                source,
            }
        };
        let mut conn = Connection::open(path).map_err(err("open"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err("configure"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err("configure"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err("configure"))?;
        let found: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err("read schema version"))?;
        if found > SCHEMA_VERSION {
            return Err(CatalogError::TooNew {
                path: path.to_path_buf(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        // Foreign keys are off while migrating (a table rebuilt to change
        // its constraints is dropped, and must not cascade) and checked
        // before each commit.
        conn.pragma_update(None, "foreign_keys", "OFF")
            .map_err(err("configure"))?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let version = (i + 1) as u32;
            let tx = conn.transaction().map_err(err("migrate"))?;
            tx.execute_batch(sql).map_err(err("migrate"))?;
            let broken = tx
                .prepare("PRAGMA foreign_key_check")
                .and_then(|mut s| s.query([])?.next().map(|r| r.is_some()))
                .map_err(err("migrate"))?;
            if broken {
                return Err(CatalogError::MigrationCheck {
                    path: path.to_path_buf(),
                    version,
                });
            }
            tx.pragma_update(None, "user_version", version)
                .map_err(err("migrate"))?;
            tx.commit().map_err(err("migrate"))?;
            tracing::info!(catalog = %path.display(), version, "catalog schema migrated");
        }
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err("configure"))?;
        let group_changes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = group_changes.clone();
        conn.update_hook(Some(
            move |_: rusqlite::hooks::Action, _: &str, table: &str, _: i64| {
                if matches!(table, "groups" | "group_volumes" | "group_vms") {
                    counter.fetch_add(1, std::sync::atomic::Ordering::Release);
                }
            },
        ));
        Ok(Catalog {
            conn,
            path: path.to_path_buf(),
            group_changes,
        })
    }

    fn err(&self, context: &'static str) -> impl FnOnce(rusqlite::Error) -> CatalogError + '_ {
        move |source| CatalogError::Sqlite {
            path: self.path.clone(),
            context,
            source,
        }
    }

    /// Runs an UPDATE or DELETE that must touch the named row; `missing`
    /// is the error when no row matched.
    fn change_row(
        &self,
        context: &'static str,
        missing: impl FnOnce() -> CatalogError,
        run: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
    ) -> Result<(), CatalogError> {
        match run(&self.conn).map_err(self.err(context))? {
            0 => Err(missing()),
            _ => Ok(()),
        }
    }

    /// Schema version on disk.
    pub fn schema_version(&self) -> Result<u32, CatalogError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.err("read schema version"))
    }

    /// Reads a site setting.
    pub fn setting(&self, key: &str) -> Result<Option<String>, CatalogError> {
        self.conn
            .query_row("SELECT value FROM site WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(self.err("read setting"))
    }

    /// Writes a site setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO site (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(drop)
            .map_err(self.err("write setting"))
    }

    /// Inserts a volume; a duplicate name is [`CatalogError::VolumeExists`].
    pub fn insert_volume(&self, v: &NewVolume<'_>) -> Result<VolumeRow, CatalogError> {
        let created_at = now_rfc3339();
        let r = self.conn.execute(
            "INSERT INTO volumes (name, size_bytes, block_size, role, state, created_at, import_source,
                                  lower_store, lower_volume, lower_pit, lower_checkpoint)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                v.name,
                v.size_bytes as i64,
                v.block_size,
                v.role,
                v.state,
                created_at,
                v.import_source,
                v.lower.map(|l| l.store_dir.as_str()),
                v.lower.map(|l| l.volume.as_str()),
                v.lower.map(|l| l.pit as i64),
                v.lower.and_then(|l| l.checkpoint).map(|c| c as i64)
            ],
        );
        if let Err(e) = r {
            return Err(if is_unique_violation(&e) {
                CatalogError::VolumeExists(v.name.to_string())
            } else {
                self.err("insert volume")(e)
            });
        }
        self.volume(v.name)
    }

    fn row_to_volume(r: &rusqlite::Row<'_>) -> rusqlite::Result<VolumeRow> {
        Ok(VolumeRow {
            id: r.get(0)?,
            name: r.get(1)?,
            size_bytes: r.get::<_, i64>(2)? as u64,
            block_size: r.get(3)?,
            role: r.get(4)?,
            state: r.get(5)?,
            created_at: r.get(6)?,
            import_source: r.get(7)?,
            lower: match (
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
                r.get::<_, Option<i64>>(10)?,
            ) {
                (Some(store_dir), Some(volume), Some(pit)) => Some(LowerRef {
                    store_dir,
                    volume,
                    pit: pit as u64,
                    checkpoint: r.get::<_, Option<i64>>(12)?.map(|c| c as u64),
                }),
                _ => None,
            },
            nbd_tls: r.get(11)?,
        })
    }

    /// The volume called `name`.
    pub fn volume(&self, name: &str) -> Result<VolumeRow, CatalogError> {
        self.conn
            .query_row(
                "SELECT id, name, size_bytes, block_size, role, state, created_at, import_source,
                        lower_store, lower_volume, lower_pit, nbd_tls, lower_checkpoint
                 FROM volumes WHERE name = ?1",
                [name],
                Self::row_to_volume,
            )
            .optional()
            .map_err(self.err("read volume"))?
            .ok_or_else(|| CatalogError::NoSuchVolume(name.to_string()))
    }

    /// Every volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, size_bytes, block_size, role, state, created_at, import_source,
                        lower_store, lower_volume, lower_pit, nbd_tls, lower_checkpoint
                 FROM volumes ORDER BY name",
            )
            .map_err(self.err("list volumes"))?;
        let rows = stmt
            .query_map([], Self::row_to_volume)
            .map_err(self.err("list volumes"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list volumes"))
    }

    /// Sets a volume's role and lower layer (promotion, flattening done).
    pub fn set_volume_layering(
        &self,
        name: &str,
        role: &str,
        lower: Option<&LowerRef>,
    ) -> Result<(), CatalogError> {
        self.change_row(
            "update volume",
            || CatalogError::NoSuchVolume(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE volumes SET role = ?2, lower_store = ?3, lower_volume = ?4, lower_pit = ?5,
                                        lower_checkpoint = ?6
                     WHERE name = ?1",
                    params![
                        name,
                        role,
                        lower.map(|l| l.store_dir.as_str()),
                        lower.map(|l| l.volume.as_str()),
                        lower.map(|l| l.pit as i64),
                        lower.and_then(|l| l.checkpoint).map(|c| c as i64)
                    ],
                )
            },
        )
    }

    /// Sets a volume's own NBD TLS mode (`off`, `optional`, `required`;
    /// `None`: the listener's). Any other value is refused by the schema.
    pub fn set_volume_nbd_tls(&self, name: &str, mode: Option<&str>) -> Result<(), CatalogError> {
        self.change_row(
            "update volume",
            || CatalogError::NoSuchVolume(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE volumes SET nbd_tls = ?2 WHERE name = ?1",
                    params![name, mode],
                )
            },
        )
    }

    /// Sets a volume's state.
    pub fn set_volume_state(&self, name: &str, state: &str) -> Result<(), CatalogError> {
        self.change_row(
            "update volume",
            || CatalogError::NoSuchVolume(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE volumes SET state = ?2 WHERE name = ?1",
                    params![name, state],
                )
            },
        )
    }

    /// Deletes a volume row.
    pub fn delete_volume(&self, name: &str) -> Result<(), CatalogError> {
        self.change_row(
            "delete volume",
            || CatalogError::NoSuchVolume(name.to_string()),
            |c| c.execute("DELETE FROM volumes WHERE name = ?1", [name]),
        )
    }

    /// Pins a partner; name and fingerprint must both be new.
    pub fn insert_partner(
        &self,
        name: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<PartnerRow, CatalogError> {
        if let Some(other) = self
            .partners()?
            .into_iter()
            .find(|p| p.name == name || p.fingerprint == fingerprint)
        {
            return Err(CatalogError::PartnerExists(if other.name == name {
                format!(
                    "a partner named {name:?} already exists; remove it first with `offsite partner remove {name}`"
                )
            } else {
                format!(
                    "fingerprint {fingerprint} is already pinned for partner {:?}; one certificate identifies one site",
                    other.name
                )
            }));
        }
        self.conn
            .execute(
                "INSERT INTO partners (name, address, fingerprint, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![name, address, fingerprint, now_rfc3339()],
            )
            .map_err(self.err("insert partner"))?;
        self.partner(name)
    }

    fn row_to_partner(r: &rusqlite::Row<'_>) -> rusqlite::Result<PartnerRow> {
        Ok(PartnerRow {
            name: r.get(0)?,
            address: r.get(1)?,
            fingerprint: r.get(2)?,
            created_at: r.get(3)?,
            last_handshake_at: r.get(4)?,
            last_rtt_micros: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
            last_error: r.get(6)?,
        })
    }

    /// The partner called `name`.
    pub fn partner(&self, name: &str) -> Result<PartnerRow, CatalogError> {
        self.conn
            .query_row(
                "SELECT name, address, fingerprint, created_at, last_handshake_at, last_rtt_micros, last_error
                 FROM partners WHERE name = ?1",
                [name],
                Self::row_to_partner,
            )
            .optional()
            .map_err(self.err("read partner"))?
            .ok_or_else(|| CatalogError::NoSuchPartner(name.to_string()))
    }

    /// Every partner, by name.
    pub fn partners(&self) -> Result<Vec<PartnerRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, address, fingerprint, created_at, last_handshake_at, last_rtt_micros, last_error
                 FROM partners ORDER BY name",
            )
            .map_err(self.err("list partners"))?;
        let rows = stmt
            .query_map([], Self::row_to_partner)
            .map_err(self.err("list partners"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list partners"))
    }

    /// Records the outcome of a connection attempt to a partner.
    pub fn record_partner_contact(
        &self,
        name: &str,
        result: Result<u64, &str>,
    ) -> Result<(), CatalogError> {
        match result {
            Ok(rtt_micros) => self.conn.execute(
                "UPDATE partners SET last_handshake_at = ?2, last_rtt_micros = ?3, last_error = NULL WHERE name = ?1",
                params![name, now_rfc3339(), rtt_micros as i64],
            ),
            Err(e) => self.conn.execute(
                "UPDATE partners SET last_error = ?2 WHERE name = ?1",
                params![name, e],
            ),
        }
        .map(drop)
        .map_err(self.err("update partner"))
    }

    /// Changes a partner's address.
    pub fn set_partner_address(&self, name: &str, address: &str) -> Result<(), CatalogError> {
        self.change_row(
            "update partner",
            || CatalogError::NoSuchPartner(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE partners SET address = ?2 WHERE name = ?1",
                    params![name, address],
                )
            },
        )
    }

    /// Pins a new identity for partner `name` (a site rebuilt with a new
    /// certificate): its fingerprint and address change, and what was
    /// learnt from the old identity (last handshake, round trip, error)
    /// is forgotten. The name, and so every group and plan naming it, stays.
    pub fn replace_partner(
        &self,
        name: &str,
        address: &str,
        fingerprint: &str,
    ) -> Result<PartnerRow, CatalogError> {
        if let Some(other) = self
            .partners()?
            .into_iter()
            .find(|p| p.name != name && p.fingerprint == fingerprint)
        {
            return Err(CatalogError::PartnerExists(format!(
                "fingerprint {fingerprint} is already pinned for partner {:?}; one certificate identifies one site",
                other.name
            )));
        }
        self.change_row(
            "replace partner",
            || CatalogError::NoSuchPartner(name.to_string()),
            |c| {
                c.execute(
                    "UPDATE partners SET address = ?2, fingerprint = ?3, last_handshake_at = NULL, \
                     last_rtt_micros = NULL, last_error = NULL WHERE name = ?1",
                    params![name, address, fingerprint],
                )
            },
        )?;
        self.partner(name)
    }

    /// Unpins a partner.
    pub fn delete_partner(&self, name: &str) -> Result<(), CatalogError> {
        self.change_row(
            "delete partner",
            || CatalogError::NoSuchPartner(name.to_string()),
            |c| c.execute("DELETE FROM partners WHERE name = ?1", [name]),
        )
    }

    /// Adds an authorization entry.
    pub fn insert_authz(
        &self,
        pattern: &str,
        storage_location: &str,
        security_tag: Option<&str>,
    ) -> Result<AuthzRow, CatalogError> {
        let r = self.conn.execute(
            "INSERT INTO authz_entries (pattern, storage_location, security_tag, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![pattern, storage_location, security_tag, now_rfc3339()],
        );
        if let Err(e) = r {
            return Err(if is_unique_violation(&e) {
                CatalogError::AuthzExists(pattern.to_string())
            } else {
                self.err("insert authorization entry")(e)
            });
        }
        self.authz_entries()?
            .into_iter()
            .find(|a| a.pattern == pattern)
            .ok_or_else(|| CatalogError::NoSuchAuthz(pattern.to_string()))
    }

    /// Every authorization entry, by pattern.
    pub fn authz_entries(&self) -> Result<Vec<AuthzRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT pattern, storage_location, security_tag, created_at FROM authz_entries ORDER BY pattern",
            )
            .map_err(self.err("list authorization entries"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(AuthzRow {
                    pattern: r.get(0)?,
                    storage_location: r.get(1)?,
                    security_tag: r.get(2)?,
                    created_at: r.get(3)?,
                })
            })
            .map_err(self.err("list authorization entries"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list authorization entries"))
    }

    /// Removes an authorization entry.
    pub fn delete_authz(&self, pattern: &str) -> Result<(), CatalogError> {
        self.change_row(
            "delete authorization entry",
            || CatalogError::NoSuchAuthz(pattern.to_string()),
            |c| c.execute("DELETE FROM authz_entries WHERE pattern = ?1", [pattern]),
        )
    }

    /// Inserts a VM with its ordered volumes, in one transaction.
    pub fn insert_vm(&mut self, vm: &VmRow) -> Result<VmRow, CatalogError> {
        let path = self.path.clone();
        let err = |context: &'static str| {
            let path = path.clone();
            move |source| CatalogError::Sqlite {
                path,
                context,
                source,
            }
        };
        let tx = self.conn.transaction().map_err(err("insert VM"))?;
        let r = tx.execute(
            "INSERT INTO vms (name, start_cmd, stop_cmd, status_cmd, created_at, libvirt_xml, quiesce_cmd, thaw_cmd)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![vm.name, vm.start_cmd, vm.stop_cmd, vm.status_cmd, now_rfc3339(), vm.libvirt_xml, vm.quiesce_cmd, vm.thaw_cmd],
        );
        if let Err(e) = r {
            return Err(if is_unique_violation(&e) {
                CatalogError::VmExists(vm.name.clone())
            } else {
                err("insert VM")(e)
            });
        }
        for (i, v) in vm.volumes.iter().enumerate() {
            tx.execute(
                "INSERT INTO vm_volumes (vm, position, volume) VALUES (?1, ?2, ?3)",
                params![vm.name, i as i64, v],
            )
            .map_err(err("insert VM"))?;
        }
        tx.commit().map_err(err("insert VM"))?;
        self.vm(&vm.name)
    }

    /// The VM called `name`.
    pub fn vm(&self, name: &str) -> Result<VmRow, CatalogError> {
        self.vms()?
            .into_iter()
            .find(|v| v.name == name)
            .ok_or_else(|| CatalogError::NoSuchVm(name.to_string()))
    }

    /// Every VM, by name.
    pub fn vms(&self) -> Result<Vec<VmRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, start_cmd, stop_cmd, status_cmd, created_at, libvirt_xml, quiesce_cmd, thaw_cmd
                 FROM vms ORDER BY name",
            )
            .map_err(self.err("list VMs"))?;
        let mut vms = stmt
            .query_map([], |r| {
                Ok(VmRow {
                    name: r.get(0)?,
                    volumes: Vec::new(),
                    start_cmd: r.get(1)?,
                    stop_cmd: r.get(2)?,
                    status_cmd: r.get(3)?,
                    created_at: r.get(4)?,
                    libvirt_xml: r.get(5)?,
                    quiesce_cmd: r.get(6)?,
                    thaw_cmd: r.get(7)?,
                })
            })
            .map_err(self.err("list VMs"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list VMs"))?;
        let mut stmt = self
            .conn
            .prepare("SELECT vm, volume FROM vm_volumes ORDER BY vm, position")
            .map_err(self.err("list VMs"))?;
        let pairs = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err("list VMs"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list VMs"))?;
        for (vm, volume) in pairs {
            if let Some(v) = vms.iter_mut().find(|v| v.name == vm) {
                v.volumes.push(volume);
            }
        }
        Ok(vms)
    }

    /// Rewrites a VM's hooks and volumes (`vm set`), in one transaction.
    pub fn update_vm(&mut self, vm: &VmRow) -> Result<VmRow, CatalogError> {
        let path = self.path.clone();
        let err = |context: &'static str| {
            let path = path.clone();
            move |source| CatalogError::Sqlite {
                path,
                context,
                source,
            }
        };
        let tx = self.conn.transaction().map_err(err("update VM"))?;
        let n = tx
            .execute(
                "UPDATE vms SET start_cmd = ?2, stop_cmd = ?3, status_cmd = ?4, libvirt_xml = ?5,
                                quiesce_cmd = ?6, thaw_cmd = ?7
                 WHERE name = ?1",
                params![
                    vm.name,
                    vm.start_cmd,
                    vm.stop_cmd,
                    vm.status_cmd,
                    vm.libvirt_xml,
                    vm.quiesce_cmd,
                    vm.thaw_cmd
                ],
            )
            .map_err(err("update VM"))?;
        if n == 0 {
            return Err(CatalogError::NoSuchVm(vm.name.clone()));
        }
        tx.execute("DELETE FROM vm_volumes WHERE vm = ?1", [&vm.name])
            .map_err(err("update VM"))?;
        for (i, v) in vm.volumes.iter().enumerate() {
            tx.execute(
                "INSERT INTO vm_volumes (vm, position, volume) VALUES (?1, ?2, ?3)",
                params![vm.name, i as i64, v],
            )
            .map_err(err("update VM"))?;
        }
        tx.commit().map_err(err("update VM"))?;
        self.vm(&vm.name)
    }

    /// Deletes a VM (its volumes stay).
    pub fn delete_vm(&self, name: &str) -> Result<(), CatalogError> {
        self.change_row(
            "delete VM",
            || CatalogError::NoSuchVm(name.to_string()),
            |c| c.execute("DELETE FROM vms WHERE name = ?1", [name]),
        )
    }

    /// Records a failover in progress (one of each kind per group).
    pub fn insert_failover(&self, f: &FailoverRow) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO failovers (group_name, kind, pit_id, started_at, checkpoint)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    f.group,
                    f.kind,
                    f.pit_id as i64,
                    f.started_at,
                    f.checkpoint.map(|c| c as i64)
                ],
            )
            .map(drop)
            .map_err(|e| {
                if is_unique_violation(&e) {
                    CatalogError::FailoverExists(f.group.clone(), f.kind.clone())
                } else {
                    self.err("record failover")(e)
                }
            })
    }

    /// Marks a failover committed.
    pub fn commit_failover(&self, group: &str, kind: &str) -> Result<(), CatalogError> {
        self.change_row(
            "commit failover",
            || CatalogError::NoSuchGroup(group.to_string()),
            |c| {
                c.execute(
                    "UPDATE failovers SET committed = 1 WHERE group_name = ?1 AND kind = ?2",
                    params![group, kind],
                )
            },
        )
    }

    /// Forgets a failover (stopped, committed or reverted).
    pub fn delete_failover(&self, group: &str, kind: &str) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "DELETE FROM failovers WHERE group_name = ?1 AND kind = ?2",
                params![group, kind],
            )
            .map(drop)
            .map_err(self.err("delete failover"))
    }

    /// Failovers in progress, of every group.
    pub fn failovers(&self) -> Result<Vec<FailoverRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT group_name, kind, pit_id, started_at, committed, checkpoint
                 FROM failovers ORDER BY group_name, kind",
            )
            .map_err(self.err("list failovers"))?;
        stmt.query_map([], |r| {
            Ok(FailoverRow {
                group: r.get(0)?,
                kind: r.get(1)?,
                pit_id: r.get::<_, i64>(2)? as u64,
                started_at: r.get(3)?,
                committed: r.get(4)?,
                checkpoint: r.get::<_, Option<i64>>(5)?.map(|c| c as u64),
            })
        })
        .map_err(self.err("list failovers"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(self.err("list failovers"))
    }

    /// Records a committed PIT (both sites keep the list). A PIT already
    /// recorded takes the new name, time and size but stays app-consistent
    /// once it was: PIT ids are never reused within a group, and lists
    /// rebuilt from a replica store (which does not keep the mark) or sent
    /// by an older partner (which does not know it) must not clear it.
    pub fn insert_pit(&self, group: &str, pit: &PitRow) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO pits (group_name, id, name, created_at, bytes, app_consistent)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (group_name, id) DO UPDATE SET
                     name = excluded.name, created_at = excluded.created_at,
                     bytes = excluded.bytes,
                     app_consistent = MAX(app_consistent, excluded.app_consistent)",
                params![
                    group,
                    pit.id as i64,
                    pit.name,
                    pit.created_at,
                    pit.bytes as i64,
                    pit.app_consistent
                ],
            )
            .map(drop)
            .map_err(self.err("record PIT"))
    }

    /// Forgets a PIT (removed by retention or released).
    pub fn delete_pit(&self, group: &str, id: u64) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "DELETE FROM pits WHERE group_name = ?1 AND id = ?2",
                params![group, id as i64],
            )
            .map(drop)
            .map_err(self.err("delete PIT"))
    }

    /// A group's PITs, oldest first.
    pub fn pits(&self, group: &str) -> Result<Vec<PitRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, name, created_at, bytes, app_consistent FROM pits
                 WHERE group_name = ?1 ORDER BY id",
            )
            .map_err(self.err("list PITs"))?;
        let rows = stmt
            .query_map([group], |r| {
                Ok(PitRow {
                    id: r.get::<_, i64>(0)? as u64,
                    name: r.get(1)?,
                    created_at: r.get(2)?,
                    bytes: r.get::<_, i64>(3)? as u64,
                    app_consistent: r.get(4)?,
                })
            })
            .map_err(self.err("list PITs"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list PITs"))
    }

    /// Records the start of a cycle; returns its id.
    pub fn begin_cycle(&self, group: &str) -> Result<i64, CatalogError> {
        self.conn
            .execute(
                "INSERT INTO cycles (group_name, started_at) VALUES (?1, ?2)",
                params![group, now_rfc3339()],
            )
            .map_err(self.err("record cycle"))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Records the end of a cycle.
    pub fn end_cycle(
        &self,
        id: i64,
        bytes: u64,
        pit: Option<u64>,
        error: Option<&str>,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "UPDATE cycles SET finished_at = ?2, bytes = ?3, pit = ?4, error = ?5 WHERE id = ?1",
                params![id, now_rfc3339(), bytes as i64, pit.map(|p| p as i64), error],
            )
            .map(drop)
            .map_err(self.err("record cycle"))
    }

    /// A group's cycles, oldest first.
    pub fn cycles(&self, group: &str) -> Result<Vec<CycleRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT started_at, finished_at, bytes, pit, error FROM cycles WHERE group_name = ?1 ORDER BY id",
            )
            .map_err(self.err("list cycles"))?;
        let rows = stmt
            .query_map([group], |r| {
                Ok(CycleRow {
                    started_at: r.get(0)?,
                    finished_at: r.get(1)?,
                    bytes: r.get::<_, i64>(2)? as u64,
                    pit: r.get::<_, Option<i64>>(3)?.map(|p| p as u64),
                    error: r.get(4)?,
                })
            })
            .map_err(self.err("list cycles"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list cycles"))
    }

    /// Appends an event.
    pub fn add_event(
        &self,
        kind: &str,
        subject: Option<&str>,
        message: &str,
    ) -> Result<(), CatalogError> {
        self.conn
            .execute(
                "INSERT INTO events (at, kind, subject, message) VALUES (?1, ?2, ?3, ?4)",
                params![now_rfc3339(), kind, subject, message],
            )
            .map(drop)
            .map_err(self.err("append event"))
    }

    /// The newest `limit` events, oldest first.
    pub fn events(&self, limit: u32) -> Result<Vec<EventRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at, kind, subject, message FROM
                   (SELECT * FROM events ORDER BY id DESC LIMIT ?1) ORDER BY id",
            )
            .map_err(self.err("read events"))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(EventRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    subject: r.get(3)?,
                    message: r.get(4)?,
                })
            })
            .map_err(self.err("read events"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(self.err("read events"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_volume(name: &str) -> NewVolume<'_> {
        NewVolume {
            name,
            size_bytes: 1 << 20,
            block_size: 4096,
            role: "primary",
            state: "ready",
            import_source: None,
            lower: None,
        }
    }

    #[test]
    fn volumes_round_trip_and_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let c = Catalog::create(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), SCHEMA_VERSION);
        let v = c.insert_volume(&new_volume("a")).unwrap();
        assert_eq!(v.name, "a");
        assert_eq!(v.size_bytes, 1 << 20);
        assert!(matches!(
            c.insert_volume(&new_volume("a")),
            Err(CatalogError::VolumeExists(_))
        ));
        c.insert_volume(&new_volume("b")).unwrap();
        drop(c);
        let c = Catalog::open(&path).unwrap();
        let names: Vec<_> = c.volumes().unwrap().into_iter().map(|v| v.name).collect();
        assert_eq!(names, ["a", "b"]);
        c.delete_volume("a").unwrap();
        assert!(matches!(c.volume("a"), Err(CatalogError::NoSuchVolume(_))));
        assert!(matches!(
            c.delete_volume("a"),
            Err(CatalogError::NoSuchVolume(_))
        ));
    }

    #[test]
    fn a_volume_keeps_its_own_nbd_tls_mode_and_the_schema_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::create(&dir.path().join("catalog.db")).unwrap();
        let v = c.insert_volume(&new_volume("a")).unwrap();
        assert_eq!(v.nbd_tls, None);
        c.set_volume_nbd_tls("a", Some("required")).unwrap();
        assert_eq!(c.volume("a").unwrap().nbd_tls.as_deref(), Some("required"));
        assert!(c.set_volume_nbd_tls("a", Some("sometimes")).is_err());
        c.set_volume_nbd_tls("a", None).unwrap();
        assert_eq!(c.volume("a").unwrap().nbd_tls, None);
        assert!(matches!(
            c.set_volume_nbd_tls("b", None),
            Err(CatalogError::NoSuchVolume(_))
        ));
    }

    #[test]
    fn refuses_newer_schema_and_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        let c = Catalog::create(&path).unwrap();
        c.conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(c);
        assert!(matches!(
            Catalog::open(&path),
            Err(CatalogError::TooNew { .. })
        ));
        assert!(Catalog::create(&path).is_err());
    }

    #[test]
    fn partners_and_authz() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::create(&dir.path().join("c.db")).unwrap();
        c.insert_partner("b", "127.0.0.1:1", "SHA256:aa").unwrap();
        let e = c
            .insert_partner("b", "127.0.0.1:2", "SHA256:bb")
            .unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let e = c
            .insert_partner("c", "127.0.0.1:2", "SHA256:aa")
            .unwrap_err();
        assert!(e.to_string().contains("already pinned"), "{e}");
        c.record_partner_contact("b", Ok(250)).unwrap();
        let p = c.partner("b").unwrap();
        assert_eq!(p.last_rtt_micros, Some(250));
        assert!(p.last_handshake_at.is_some());
        c.record_partner_contact("b", Err("refused")).unwrap();
        assert_eq!(
            c.partner("b").unwrap().last_error.as_deref(),
            Some("refused")
        );
        // A rebuilt site: a new pin under the same name, nothing learnt
        // from the old identity kept; another partner's pin is refused.
        c.insert_partner("d", "127.0.0.1:4", "SHA256:dd").unwrap();
        let e = c
            .replace_partner("b", "127.0.0.1:3", "SHA256:dd")
            .unwrap_err();
        assert!(
            e.to_string().contains("already pinned for partner \"d\""),
            "{e}"
        );
        let p = c.replace_partner("b", "127.0.0.1:3", "SHA256:cc").unwrap();
        assert_eq!(
            (p.address.as_str(), p.fingerprint.as_str()),
            ("127.0.0.1:3", "SHA256:cc")
        );
        assert_eq!(
            (p.last_handshake_at, p.last_rtt_micros, p.last_error),
            (None, None, None)
        );
        assert!(matches!(
            c.replace_partner("nope", "127.0.0.1:3", "SHA256:ee"),
            Err(CatalogError::NoSuchPartner(_))
        ));
        c.delete_partner("d").unwrap();
        c.delete_partner("b").unwrap();
        assert!(matches!(
            c.partner("b"),
            Err(CatalogError::NoSuchPartner(_))
        ));

        c.insert_authz("*.example.com", "/srv/r", Some("gold"))
            .unwrap();
        assert!(matches!(
            c.insert_authz("*.example.com", "/x", None),
            Err(CatalogError::AuthzExists(_))
        ));
        assert_eq!(c.authz_entries().unwrap().len(), 1);
        c.delete_authz("*.example.com").unwrap();
        assert!(matches!(
            c.delete_authz("*.example.com"),
            Err(CatalogError::NoSuchAuthz(_))
        ));
    }

    #[test]
    fn vms_keep_volume_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::create(&dir.path().join("c.db")).unwrap();
        let vm = VmRow {
            name: "web".into(),
            volumes: vec!["z-boot".into(), "a-data".into()],
            start_cmd: Some("true".into()),
            stop_cmd: None,
            status_cmd: None,
            libvirt_xml: None,
            quiesce_cmd: Some("fsfreeze -f /srv".into()),
            thaw_cmd: Some("fsfreeze -u /srv".into()),
            created_at: String::new(),
        };
        let got = c.insert_vm(&vm).unwrap();
        assert_eq!(got.volumes, ["z-boot", "a-data"]);
        assert_eq!(got.libvirt_xml, None);
        assert_eq!(
            (got.quiesce_cmd.as_deref(), got.thaw_cmd.as_deref()),
            (Some("fsfreeze -f /srv"), Some("fsfreeze -u /srv"))
        );
        let unquiesced = VmRow {
            quiesce_cmd: None,
            thaw_cmd: None,
            ..got.clone()
        };
        assert_eq!(c.update_vm(&unquiesced).unwrap().quiesce_cmd, None);
        let domain = VmRow {
            libvirt_xml: Some("<domain type='qemu'><name>web</name></domain>".into()),
            ..got.clone()
        };
        assert_eq!(
            c.update_vm(&domain).unwrap().libvirt_xml,
            domain.libvirt_xml
        );
        assert!(matches!(c.insert_vm(&vm), Err(CatalogError::VmExists(_))));
        c.delete_vm("web").unwrap();
        assert!(matches!(c.vm("web"), Err(CatalogError::NoSuchVm(_))));
        assert!(c.vms().unwrap().is_empty());
    }

    #[test]
    fn groups_pits_and_cycles() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::create(&dir.path().join("c.db")).unwrap();
        let g = GroupRow {
            name: "g".into(),
            role: Role::Primary,
            partner: "b".into(),
            mode: Mode::Async,
            rpo_secs: 300,
            keep: 24,
            bandwidth: None,
            compress: true,
            security_tag: Some("t".into()),
            on_link_loss: "degrade".into(),
            suspend_timeout_secs: 30,
            state: GroupState::ReadyForInitialReplication,
            store_dir: None,
            created_at: String::new(),
            state_changed_at: String::new(),
            last_error: None,
            needs_resync: None,
            last_drill_at: None,
            app_consistent_every_secs: 3600,
            quiesce_error: None,
            journal: JournalSettings {
                checkpoint_interval_ms: 500,
                history_secs: 3600,
                max_bytes: 1 << 30,
            },
            volumes: vec![GroupVolumeRow {
                volume: "v".into(),
                size_bytes: 4096,
                block_size: 4096,
                initial_done_bytes: 0,
            }],
            vms: vec![VmRow {
                name: "vm1".into(),
                volumes: vec!["v".into(), "w".into()],
                start_cmd: Some("start it".into()),
                stop_cmd: None,
                status_cmd: None,
                libvirt_xml: Some("<domain><name>vm1</name></domain>".into()),
                quiesce_cmd: Some("freeze".into()),
                thaw_cmd: Some("thaw".into()),
                created_at: String::new(),
            }],
        };
        let got = c.insert_group(&g).unwrap();
        assert_eq!(got.volumes, g.volumes);
        assert_eq!(got.vms, g.vms);
        assert_eq!(got.app_consistent_every_secs, 3600);
        assert_eq!(got.journal, g.journal);
        let journal = JournalSettings {
            checkpoint_interval_ms: 2000,
            ..JournalSettings::default()
        };
        c.set_group_journal("g", &journal).unwrap();
        assert_eq!(c.group("g").unwrap().journal, journal);
        c.set_group_mode("g", Mode::Continuous).unwrap();
        assert_eq!(c.group("g").unwrap().mode, Mode::Continuous);
        c.set_group_mode("g", Mode::Async).unwrap();
        // `vm set` rewrites the group's copy of the hooks.
        let mut vm = g.vms[0].clone();
        vm.quiesce_cmd = Some("freeze harder".into());
        c.set_group_vm_hooks("g", &vm).unwrap();
        assert_eq!(
            c.group("g").unwrap().vms[0].quiesce_cmd.as_deref(),
            Some("freeze harder")
        );
        c.set_group_app_consistent_every("g", 0).unwrap();
        c.set_group_quiesce_error("g", Some("VM vm1: quiesce hook exited with 1"))
            .unwrap();
        let got = c.group("g").unwrap();
        assert_eq!(got.app_consistent_every_secs, 0);
        assert!(got.quiesce_error.is_some());
        c.set_group_quiesce_error("g", None).unwrap();
        assert_eq!(c.group("g").unwrap().quiesce_error, None);
        let f = FailoverRow {
            group: "g".into(),
            kind: "test".into(),
            pit_id: 7,
            checkpoint: Some(41),
            started_at: "t".into(),
            committed: false,
        };
        c.insert_failover(&f).unwrap();
        assert!(matches!(
            c.insert_failover(&f),
            Err(CatalogError::FailoverExists(..))
        ));
        assert_eq!(c.failovers().unwrap(), vec![f.clone()]);
        c.commit_failover("g", "test").unwrap();
        assert!(c.failovers().unwrap()[0].committed);
        c.delete_failover("g", "test").unwrap();
        assert!(c.failovers().unwrap().is_empty());
        assert!(matches!(
            c.insert_group(&g),
            Err(CatalogError::GroupExists(_))
        ));
        // The group change counter moves with the group tables only.
        let changes = c.group_changes();
        let seen = changes.load(std::sync::atomic::Ordering::Acquire);
        assert!(
            seen >= 3,
            "inserting a group with a volume and a VM: {seen}"
        );
        c.insert_failover(&f).unwrap();
        c.delete_failover("g", "test").unwrap();
        assert_eq!(changes.load(std::sync::atomic::Ordering::Acquire), seen);
        // Not a legal move, nor the expected state: refused, unchanged.
        let e = c
            .move_group_state("g", &[], GroupState::FailedOver, None)
            .unwrap_err();
        assert!(e.to_string().contains("cannot move"), "{e}");
        let e = c
            .move_group_state("g", &[GroupState::Paused], GroupState::Replicating, None)
            .unwrap_err();
        assert_eq!(
            e.unexpected_state(),
            Some(GroupState::ReadyForInitialReplication)
        );
        assert_eq!(changes.load(std::sync::atomic::Ordering::Acquire), seen);
        let before = c
            .move_group_state(
                "g",
                &[GroupState::ReadyForInitialReplication],
                GroupState::InitialReplication,
                None,
            )
            .unwrap();
        assert_eq!(before, GroupState::ReadyForInitialReplication);
        c.move_group_state("g", &[], GroupState::Replicating, Some("x"))
            .unwrap();
        c.set_group_error("g", None).unwrap();
        assert_eq!(c.set_group_mode("g", Mode::Sync).unwrap(), Mode::Async);
        assert_eq!(c.group("g").unwrap().mode, Mode::Sync);
        let after_state = changes.load(std::sync::atomic::Ordering::Acquire);
        assert!(after_state > seen);
        c.set_initial_progress("g", "v", 4096).unwrap();
        assert!(changes.load(std::sync::atomic::Ordering::Acquire) > after_state);
        let got = c.group("g").unwrap();
        assert_eq!(got.state, GroupState::Replicating);
        assert_eq!(got.last_error, None);
        assert_eq!(got.volumes[0].initial_done_bytes, 4096);
        c.insert_pit(
            "g",
            &PitRow {
                id: 1,
                name: None,
                created_at: "t".into(),
                bytes: 1,
                app_consistent: true,
            },
        )
        .unwrap();
        let two = PitRow {
            id: 2,
            name: Some("x".into()),
            created_at: "t".into(),
            bytes: 2,
            app_consistent: false,
        };
        c.insert_pit("g", &two).unwrap();
        assert_eq!(c.newest_pits().unwrap()["g"].id, 2);
        assert_eq!(c.newest_app_consistent_pits().unwrap()["g"].id, 1);
        // A list rebuilt without the mark (a replica store's, an older
        // partner's) keeps it on the PITs that have it.
        c.insert_pit(
            "g",
            &PitRow {
                id: 1,
                name: Some("renamed".into()),
                created_at: "t".into(),
                bytes: 1,
                app_consistent: false,
            },
        )
        .unwrap();
        let pits = c.pits("g").unwrap();
        assert!(pits[0].app_consistent && pits[0].name.as_deref() == Some("renamed"));
        assert!(!pits[1].app_consistent);
        c.delete_pit("g", 1).unwrap();
        assert_eq!(c.pits("g").unwrap(), vec![two]);
        assert!(c.newest_app_consistent_pits().unwrap().is_empty());
        let id = c.begin_cycle("g").unwrap();
        c.end_cycle(id, 10, Some(2), None).unwrap();
        assert_eq!(c.cycles("g").unwrap()[0].bytes, 10);
        c.delete_group("g").unwrap();
        assert!(c.pits("g").unwrap().is_empty());
        assert!(matches!(c.group("g"), Err(CatalogError::NoSuchGroup(_))));
    }

    #[test]
    fn v11_checks_group_values_and_keeps_every_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        // A v10 catalog with a group, its volume, VM, PIT, cycle, failover
        // and traffic, written as v10 did.
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            for sql in &MIGRATIONS[..10] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 10).unwrap();
            conn.execute_batch(
                "INSERT INTO groups (name, role, partner, mode, rpo_secs, keep, bandwidth, compress,
                                     security_tag, state, store_dir, created_at, state_changed_at,
                                     last_error, on_link_loss, suspend_timeout_secs, needs_resync)
                 VALUES ('g', 'replica', 'a', 'sync', 60, 5, 1000, 1, 'tag', 'failed-over',
                         '/srv/g', 't0', 't1', 'boom', 'suspend-writes', 7, 'verify'),
                        ('h', 'primary', 'b', 'async', 300, 24, NULL, 0, NULL,
                         'failed-over-elsewhere', NULL, 't2', 't3', NULL, 'degrade', 30, NULL);
                 INSERT INTO group_volumes (group_name, position, volume, size_bytes, block_size,
                                            initial_done_bytes)
                 VALUES ('g', 0, 'v', 8192, 4096, 4096);
                 INSERT INTO group_vms (group_name, position, name, volumes)
                 VALUES ('g', 0, 'vm', 'v');
                 INSERT INTO pits (group_name, id, name, created_at, bytes)
                 VALUES ('g', 3, 'p', 't', 9);
                 INSERT INTO cycles (group_name, started_at, bytes) VALUES ('g', 't', 9);
                 INSERT INTO failovers (group_name, kind, pit_id, started_at)
                 VALUES ('g', 'promoted', 3, 't');
                 INSERT INTO group_traffic (group_name, kind, bytes) VALUES ('g', 'sync', 9);",
            )
            .unwrap();
        }
        let c = Catalog::open(&path).unwrap();
        // Every later migration runs too (v12: a volume's NBD TLS mode; v13:
        // the VMs' libvirt XML).
        assert_eq!(c.schema_version().unwrap(), SCHEMA_VERSION);
        let g = c.group("g").unwrap();
        assert_eq!(g.vms[0].libvirt_xml, None);
        assert_eq!(
            (g.role, g.mode, g.state),
            (Role::Replica, Mode::Sync, GroupState::FailedOver)
        );
        assert_eq!(
            (g.rpo_secs, g.keep, g.bandwidth, g.compress),
            (60, 5, Some(1000), true)
        );
        assert_eq!(g.security_tag.as_deref(), Some("tag"));
        assert_eq!(g.store_dir.as_deref(), Some("/srv/g"));
        assert_eq!(
            (g.created_at.as_str(), g.state_changed_at.as_str()),
            ("t0", "t1")
        );
        assert_eq!(g.last_error.as_deref(), Some("boom"));
        assert_eq!(
            (g.on_link_loss.as_str(), g.suspend_timeout_secs),
            ("suspend-writes", 7)
        );
        assert_eq!(
            c.group_needs_resync("g").unwrap().as_deref(),
            Some("verify")
        );
        assert_eq!(g.volumes[0].initial_done_bytes, 4096);
        assert_eq!(g.vms[0].volumes, ["v"]);
        assert_eq!(c.pits("g").unwrap()[0].id, 3);
        assert_eq!(c.cycles("g").unwrap().len(), 1);
        assert_eq!(c.failovers().unwrap().len(), 1);
        assert!(
            c.group_traffic("g")
                .unwrap()
                .contains(&(TrafficKind::Sync, 9))
        );
        let h = c.group("h").unwrap();
        assert_eq!(
            (h.role, h.mode, h.state),
            (Role::Primary, Mode::Async, GroupState::FailedOverElsewhere)
        );
        // The CHECK constraints refuse what the enums do not know ...
        let insert = |role: &str, mode: &str, state: &str| {
            c.conn.execute(
                "INSERT INTO groups (name, role, partner, mode, rpo_secs, keep, compress, state,
                                     created_at, state_changed_at)
                 VALUES ('x', ?1, 'a', ?2, 60, 5, 0, ?3, 't', 't')",
                params![role, mode, state],
            )
        };
        for (role, mode, state) in [
            ("primary", "async", "running"),
            ("leader", "async", "replicating"),
            ("primary", "semi", "replicating"),
        ] {
            let e = insert(role, mode, state).unwrap_err();
            assert!(e.to_string().contains("CHECK"), "{e}");
        }
        // ... and accept every value they know.
        for s in GroupState::ALL {
            for r in Role::ALL {
                for m in Mode::ALL {
                    insert(r.as_str(), m.as_str(), s.as_str()).unwrap();
                    c.conn
                        .execute("DELETE FROM groups WHERE name = 'x'", [])
                        .unwrap();
                }
            }
        }
        // The foreign keys still cascade from the rebuilt table.
        c.delete_group("g").unwrap();
        assert!(c.pits("g").unwrap().is_empty());
        assert!(c.failovers().unwrap().is_empty());
        let left: i64 = c
            .conn
            .query_row("SELECT count(*) FROM group_volumes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn v15_adds_quiesce_hooks_and_app_consistent_pits_to_existing_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        // A v14 catalog with a VM, a group with a copy of it and a PIT.
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            for sql in &MIGRATIONS[..14] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 14).unwrap();
            conn.execute_batch(
                "INSERT INTO vms (name, start_cmd, created_at) VALUES ('vm', 'start', 't');
                 INSERT INTO vm_volumes (vm, position, volume) VALUES ('vm', 0, 'v');
                 INSERT INTO groups (name, role, partner, mode, rpo_secs, keep, compress, state,
                                     created_at, state_changed_at, last_drill_at)
                 VALUES ('g', 'primary', 'b', 'async', 60, 5, 1, 'replicating', 't', 't', 'd');
                 INSERT INTO group_vms (group_name, position, name, volumes, start_cmd)
                 VALUES ('g', 0, 'vm', 'v', 'start');
                 INSERT INTO pits (group_name, id, name, created_at, bytes)
                 VALUES ('g', 3, NULL, 't', 9);",
            )
            .unwrap();
        }
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), SCHEMA_VERSION);
        let vm = c.vm("vm").unwrap();
        assert_eq!((vm.quiesce_cmd, vm.thaw_cmd), (None, None));
        let g = c.group("g").unwrap();
        assert_eq!(g.last_drill_at.as_deref(), Some("d"));
        assert_eq!((g.app_consistent_every_secs, g.quiesce_error), (0, None));
        assert_eq!(g.vms[0].start_cmd.as_deref(), Some("start"));
        assert_eq!(g.vms[0].quiesce_cmd, None);
        let pit = &c.pits("g").unwrap()[0];
        assert_eq!((pit.id, pit.app_consistent), (3, false));
        // The mark is a boolean and the schedule never negative.
        let e = c
            .conn
            .execute("UPDATE pits SET app_consistent = 2", [])
            .unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
        let e = c
            .conn
            .execute("UPDATE groups SET app_consistent_every_secs = -1", [])
            .unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
    }

    #[test]
    fn v16_keeps_every_group_column_and_adds_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.db");
        // A v15 catalog with a sync group, its PIT, a running test
        // failover and a promoted volume.
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            for sql in &MIGRATIONS[..15] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 15).unwrap();
            conn.execute_batch(
                "INSERT INTO groups (name, role, partner, mode, rpo_secs, keep, bandwidth, compress,
                                     security_tag, state, store_dir, created_at, state_changed_at,
                                     last_error, on_link_loss, suspend_timeout_secs, needs_resync,
                                     last_drill_at, app_consistent_every_secs, quiesce_error)
                 VALUES ('g', 'replica', 'a', 'sync', 60, 5, 1000, 1, 'tag', 'test-failover',
                         '/srv/g', 't0', 't1', 'e', 'suspend-writes', 9, 'r', 'd', 3600, 'q');
                 INSERT INTO pits (group_name, id, name, created_at, bytes, app_consistent)
                 VALUES ('g', 3, 'p', 't', 9, 1);
                 INSERT INTO failovers (group_name, kind, pit_id, started_at)
                 VALUES ('g', 'test', 3, 't');
                 INSERT INTO volumes (name, size_bytes, block_size, role, state, created_at,
                                      lower_store, lower_volume, lower_pit)
                 VALUES ('v', 4096, 4096, 'promoted', 'ready', 't', '/srv/g', 'v', 3);",
            )
            .unwrap();
        }
        let c = Catalog::open(&path).unwrap();
        assert_eq!(c.schema_version().unwrap(), SCHEMA_VERSION);
        let g = c.group("g").unwrap();
        assert_eq!(
            (g.role, g.mode, g.state),
            (Role::Replica, Mode::Sync, GroupState::TestFailover)
        );
        assert_eq!(
            (g.rpo_secs, g.keep, g.bandwidth, g.compress),
            (60, 5, Some(1000), true)
        );
        assert_eq!(
            (
                g.security_tag.as_deref(),
                g.store_dir.as_deref(),
                g.last_error.as_deref(),
                g.needs_resync.as_deref(),
                g.last_drill_at.as_deref(),
                g.quiesce_error.as_deref()
            ),
            (
                Some("tag"),
                Some("/srv/g"),
                Some("e"),
                Some("r"),
                Some("d"),
                Some("q")
            )
        );
        assert_eq!(
            (g.on_link_loss.as_str(), g.suspend_timeout_secs),
            ("suspend-writes", 9)
        );
        assert_eq!(g.app_consistent_every_secs, 3600);
        assert_eq!(g.journal, JournalSettings::default());
        assert!(c.pits("g").unwrap()[0].app_consistent);
        let f = &c.failovers().unwrap()[0];
        assert_eq!((f.pit_id, f.checkpoint), (3, None));
        let lower = c.volume("v").unwrap().lower.unwrap();
        assert_eq!((lower.pit, lower.checkpoint), (3, None));
        // A group may now be continuous; an interval of 0 is refused.
        c.set_group_mode("g", Mode::Continuous).unwrap();
        let e = c
            .conn
            .execute("UPDATE groups SET checkpoint_interval_ms = 0", [])
            .unwrap_err();
        assert!(e.to_string().contains("CHECK"), "{e}");
        // The foreign keys still cascade from the rebuilt table.
        c.delete_group("g").unwrap();
        assert!(c.failovers().unwrap().is_empty());
    }

    #[test]
    fn settings_and_events() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::create(&dir.path().join("c.db")).unwrap();
        assert_eq!(c.setting("x").unwrap(), None);
        c.set_setting("x", "1").unwrap();
        c.set_setting("x", "2").unwrap();
        assert_eq!(c.setting("x").unwrap().as_deref(), Some("2"));
        for i in 0..5 {
            c.add_event("k", Some("s"), &format!("m{i}")).unwrap();
        }
        let ev = c.events(2).unwrap();
        assert_eq!(
            ev.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["m3", "m4"]
        );
    }
}
