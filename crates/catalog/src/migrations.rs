//! The catalog's schema, as the migrations that build it: `PRAGMA
//! user_version` counts the ones applied, and opening a catalog applies the
//! rest (see the crate docs).

/// Schema migrations, in order; entry `i` moves the schema from version `i`
/// to `i + 1`. Never edit a released entry: append a new one.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: site settings, volumes, events.
    "CREATE TABLE site (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );
     CREATE TABLE volumes (
         id            INTEGER PRIMARY KEY,
         name          TEXT NOT NULL UNIQUE,
         size_bytes    INTEGER NOT NULL CHECK (size_bytes > 0),
         block_size    INTEGER NOT NULL CHECK (block_size > 0),
         role          TEXT NOT NULL,
         state         TEXT NOT NULL,
         created_at    TEXT NOT NULL,
         import_source TEXT
     );
     CREATE TABLE events (
         id      INTEGER PRIMARY KEY,
         at      TEXT NOT NULL,
         kind    TEXT NOT NULL,
         subject TEXT,
         message TEXT NOT NULL
     );",
    // v2: partners (pinned peers) and authorization entries.
    "CREATE TABLE partners (
         name              TEXT PRIMARY KEY,
         address           TEXT NOT NULL,
         fingerprint       TEXT NOT NULL UNIQUE,
         created_at        TEXT NOT NULL,
         last_handshake_at TEXT,
         last_rtt_micros   INTEGER,
         last_error        TEXT
     );
     CREATE TABLE authz_entries (
         pattern          TEXT PRIMARY KEY,
         storage_location TEXT NOT NULL,
         security_tag     TEXT,
         created_at       TEXT NOT NULL
     );",
    // v3: virtual machines (ordered volumes + hooks).
    "CREATE TABLE vms (
         name       TEXT PRIMARY KEY,
         start_cmd  TEXT,
         stop_cmd   TEXT,
         status_cmd TEXT,
         created_at TEXT NOT NULL
     );
     CREATE TABLE vm_volumes (
         vm       TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
         position INTEGER NOT NULL,
         volume   TEXT NOT NULL,
         PRIMARY KEY (vm, position)
     );",
    // v4: replication groups, their volumes, PITs and cycles.
    "CREATE TABLE groups (
         name             TEXT PRIMARY KEY,
         role             TEXT NOT NULL,
         partner          TEXT NOT NULL,
         mode             TEXT NOT NULL,
         rpo_secs         INTEGER NOT NULL,
         keep             INTEGER NOT NULL,
         bandwidth        INTEGER,
         compress         INTEGER NOT NULL,
         security_tag     TEXT,
         state            TEXT NOT NULL,
         store_dir        TEXT,
         created_at       TEXT NOT NULL,
         state_changed_at TEXT NOT NULL,
         last_error       TEXT
     );
     CREATE TABLE group_volumes (
         group_name         TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         position           INTEGER NOT NULL,
         volume             TEXT NOT NULL,
         size_bytes         INTEGER NOT NULL,
         block_size         INTEGER NOT NULL,
         initial_done_bytes INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (group_name, position)
     );
     CREATE TABLE pits (
         group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         id         INTEGER NOT NULL,
         name       TEXT,
         created_at TEXT NOT NULL,
         bytes      INTEGER NOT NULL,
         PRIMARY KEY (group_name, id)
     );
     CREATE TABLE cycles (
         id          INTEGER PRIMARY KEY,
         group_name  TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         started_at  TEXT NOT NULL,
         finished_at TEXT,
         bytes       INTEGER NOT NULL DEFAULT 0,
         pit         INTEGER,
         error       TEXT
     );",
    // v5: the VMs of a group (both sites keep them, so the replica can start
    // them at failover) and running failovers (tests and promotions, which
    // pin their PIT against retention).
    "CREATE TABLE group_vms (
         group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         position   INTEGER NOT NULL,
         name       TEXT NOT NULL,
         volumes    TEXT NOT NULL,
         start_cmd  TEXT,
         stop_cmd   TEXT,
         status_cmd TEXT,
         PRIMARY KEY (group_name, position)
     );
     CREATE TABLE failovers (
         group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         kind       TEXT NOT NULL CHECK (kind IN ('test', 'promoted')),
         pit_id     INTEGER NOT NULL,
         started_at TEXT NOT NULL,
         PRIMARY KEY (group_name, kind)
     );",
    // v6: a promoted volume reads the blocks it has not written (or copied
    // yet) from a PIT of a replica store: its lower layer.
    "ALTER TABLE volumes ADD COLUMN lower_store TEXT;
     ALTER TABLE volumes ADD COLUMN lower_volume TEXT;
     ALTER TABLE volumes ADD COLUMN lower_pit INTEGER;",
    // v7: a committed failover can no longer be reverted or moved to
    // another PIT.
    "ALTER TABLE failovers ADD COLUMN committed INTEGER NOT NULL DEFAULT 0;",
    // v8: synchronous groups: what happens to writes when the partner is
    // lost (`degrade`: keep serving, track, resynchronize; `suspend-writes`:
    // wait up to the timeout, then fail).
    "ALTER TABLE groups ADD COLUMN on_link_loss TEXT NOT NULL DEFAULT 'degrade';
     ALTER TABLE groups ADD COLUMN suspend_timeout_secs INTEGER NOT NULL DEFAULT 30;",
    // v9: recovery plans (groups, VM priorities, callout steps) and their
    // runs with every step (the run reports). See `plans.rs`.
    "CREATE TABLE plans (
         name           TEXT PRIMARY KEY,
         protected_site TEXT NOT NULL,
         recovery_site  TEXT NOT NULL,
         description    TEXT,
         test_network   TEXT,
         parallel       INTEGER NOT NULL CHECK (parallel > 0),
         created_at     TEXT NOT NULL
     );
     CREATE TABLE plan_groups (
         plan       TEXT NOT NULL REFERENCES plans(name) ON DELETE CASCADE,
         position   INTEGER NOT NULL,
         group_name TEXT NOT NULL,
         PRIMARY KEY (plan, position)
     );
     CREATE TABLE plan_vms (
         plan              TEXT NOT NULL REFERENCES plans(name) ON DELETE CASCADE,
         vm                TEXT NOT NULL,
         group_name        TEXT NOT NULL,
         priority          INTEGER NOT NULL CHECK (priority BETWEEN 1 AND 5),
         wait_for          TEXT,
         wait_timeout_secs INTEGER NOT NULL,
         PRIMARY KEY (plan, vm)
     );
     CREATE TABLE plan_steps (
         plan         TEXT NOT NULL REFERENCES plans(name) ON DELETE CASCADE,
         position     INTEGER NOT NULL,
         name         TEXT NOT NULL,
         kind         TEXT NOT NULL CHECK (kind IN ('command', 'prompt')),
         body         TEXT NOT NULL,
         after_tier   INTEGER NOT NULL CHECK (after_tier BETWEEN 0 AND 5),
         skip_in_test INTEGER NOT NULL,
         timeout_secs INTEGER NOT NULL,
         PRIMARY KEY (plan, position)
     );
     CREATE TABLE plan_runs (
         id          TEXT PRIMARY KEY,
         plan        TEXT NOT NULL,
         mode        TEXT NOT NULL,
         site        TEXT NOT NULL,
         status      TEXT NOT NULL,
         from_site   TEXT NOT NULL,
         to_site     TEXT NOT NULL,
         started_at  TEXT NOT NULL,
         finished_at TEXT,
         rto_ms      INTEGER,
         groups      TEXT NOT NULL,
         errors      TEXT NOT NULL
     );
     CREATE INDEX plan_runs_by_plan ON plan_runs (plan, started_at);
     CREATE TABLE plan_run_steps (
         run_id      TEXT NOT NULL REFERENCES plan_runs(id) ON DELETE CASCADE,
         idx         INTEGER NOT NULL,
         name        TEXT NOT NULL,
         kind        TEXT NOT NULL,
         group_name  TEXT,
         vm          TEXT,
         tier        INTEGER,
         site        TEXT NOT NULL,
         status      TEXT NOT NULL,
         started_at  TEXT,
         finished_at TEXT,
         duration_ms INTEGER,
         output      TEXT NOT NULL,
         error       TEXT,
         PRIMARY KEY (run_id, idx)
     );",
    // v10: the replica may differ from the primary in ways the change
    // tracker does not know (`volume clear-dirty --force`, a verify that
    // found differences): why, until `group resync` or a clean verify.
    "ALTER TABLE groups ADD COLUMN needs_resync TEXT;
     CREATE TABLE group_traffic (
         group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
         kind       TEXT NOT NULL
                    CHECK (kind IN ('initial', 'cycle', 'sync', 'resync', 'reverse')),
         bytes      INTEGER NOT NULL,
         PRIMARY KEY (group_name, kind)
     );",
    // v11: a group's role, mode and state are one of their values
    // (`state.rs`); SQLite adds a CHECK only by rebuilding the table (its
    // documented procedure: `open` runs migrations with foreign keys off,
    // so dropping the old table cascades nowhere, and checks them before
    // each commit).
    "CREATE TABLE groups_v11 (
         name                 TEXT PRIMARY KEY,
         role                 TEXT NOT NULL CHECK (role IN ('primary', 'replica')),
         partner              TEXT NOT NULL,
         mode                 TEXT NOT NULL CHECK (mode IN ('async', 'sync')),
         rpo_secs             INTEGER NOT NULL,
         keep                 INTEGER NOT NULL,
         bandwidth            INTEGER,
         compress             INTEGER NOT NULL,
         security_tag         TEXT,
         state                TEXT NOT NULL CHECK (state IN (
                                  'ready-for-initial-replication', 'initial-replication',
                                  'replicating', 'resynchronizing', 'paused',
                                  'prepared-for-failover', 'test-failover', 'failed-over',
                                  'failed-over-elsewhere')),
         store_dir            TEXT,
         created_at           TEXT NOT NULL,
         state_changed_at     TEXT NOT NULL,
         last_error           TEXT,
         on_link_loss         TEXT NOT NULL DEFAULT 'degrade',
         suspend_timeout_secs INTEGER NOT NULL DEFAULT 30,
         needs_resync         TEXT
     );
     INSERT INTO groups_v11 (name, role, partner, mode, rpo_secs, keep, bandwidth, compress,
                             security_tag, state, store_dir, created_at, state_changed_at,
                             last_error, on_link_loss, suspend_timeout_secs, needs_resync)
     SELECT name, role, partner, mode, rpo_secs, keep, bandwidth, compress,
            security_tag, state, store_dir, created_at, state_changed_at,
            last_error, on_link_loss, suspend_timeout_secs, needs_resync
     FROM groups;
     DROP TABLE groups;
     ALTER TABLE groups_v11 RENAME TO groups;",
    // v12: a volume's NBD TLS mode of its own (`volume set --nbd-tls`);
    // NULL takes the NBD listener's (`[nbd_tls] mode`).
    "ALTER TABLE volumes ADD COLUMN nbd_tls TEXT
         CHECK (nbd_tls IN ('off', 'optional', 'required'));",
    // v13: a VM may be a libvirt domain: its definition (the domain XML,
    // verbatim, with its disks on this site's NBD exports) is kept with the
    // VM and with the group's copy of it on both sites, so a recovery site
    // can define the domain and the home site restore it. A plan maps the
    // protected site's networks to the recovery site's (`PROTECTED=RECOVERY`
    // lines) for the domains it starts there.
    "ALTER TABLE vms ADD COLUMN libvirt_xml TEXT;
     ALTER TABLE group_vms ADD COLUMN libvirt_xml TEXT;
     ALTER TABLE plans ADD COLUMN network_map TEXT;",
    // v14: when the group's last successful test drill ended (a test
    // failover started and stopped cleanly, by hand or by a plan's test
    // run). The replica records it; the primary keeps the copy each PIT
    // commit's answer brings, so both sites' overviews show its age.
    "ALTER TABLE groups ADD COLUMN last_drill_at TEXT;",
    // v15: application-consistent checkpoints. A VM's `--quiesce` and
    // `--thaw` hooks (kept with the VM and with the group's copy of it on
    // both sites, so a reverse keeps them); a PIT cut while every VM of its
    // group was quiesced (or cleanly stopped) is marked app-consistent on
    // both sites; a group may take such a PIT on a schedule (0: never), and
    // remembers why its last attempt was not app-consistent until one is.
    "ALTER TABLE vms ADD COLUMN quiesce_cmd TEXT;
     ALTER TABLE vms ADD COLUMN thaw_cmd TEXT;
     ALTER TABLE group_vms ADD COLUMN quiesce_cmd TEXT;
     ALTER TABLE group_vms ADD COLUMN thaw_cmd TEXT;
     ALTER TABLE pits ADD COLUMN app_consistent INTEGER NOT NULL DEFAULT 0
         CHECK (app_consistent IN (0, 1));
     ALTER TABLE groups ADD COLUMN app_consistent_every_secs INTEGER NOT NULL DEFAULT 0
         CHECK (app_consistent_every_secs >= 0);
     ALTER TABLE groups ADD COLUMN quiesce_error TEXT;",
    // v16: continuous replication with a journal (issue 19). A group's
    // mode may be `continuous` (writes streamed without waiting for the
    // replica), a CHECK that SQLite changes only by rebuilding the table
    // (as v11 did); every sync or continuous group keeps a journal at its
    // replica with a checkpoint every `checkpoint_interval_ms`, kept for
    // `journal_history_secs` within `journal_max_bytes`. A test failover
    // or a promotion may start from a journal checkpoint rather than a PIT
    // (`failovers.checkpoint`, and a promoted volume's lower layer,
    // `volumes.lower_checkpoint`); `pit_id` is then the PIT the
    // checkpoint's image starts from.
    "CREATE TABLE groups_v16 (
         name                      TEXT PRIMARY KEY,
         role                      TEXT NOT NULL CHECK (role IN ('primary', 'replica')),
         partner                   TEXT NOT NULL,
         mode                      TEXT NOT NULL CHECK (mode IN ('async', 'sync', 'continuous')),
         rpo_secs                  INTEGER NOT NULL,
         keep                      INTEGER NOT NULL,
         bandwidth                 INTEGER,
         compress                  INTEGER NOT NULL,
         security_tag              TEXT,
         state                     TEXT NOT NULL CHECK (state IN (
                                       'ready-for-initial-replication', 'initial-replication',
                                       'replicating', 'resynchronizing', 'paused',
                                       'prepared-for-failover', 'test-failover', 'failed-over',
                                       'failed-over-elsewhere')),
         store_dir                 TEXT,
         created_at                TEXT NOT NULL,
         state_changed_at          TEXT NOT NULL,
         last_error                TEXT,
         on_link_loss              TEXT NOT NULL DEFAULT 'degrade',
         suspend_timeout_secs      INTEGER NOT NULL DEFAULT 30,
         needs_resync              TEXT,
         last_drill_at             TEXT,
         app_consistent_every_secs INTEGER NOT NULL DEFAULT 0
                                   CHECK (app_consistent_every_secs >= 0),
         quiesce_error             TEXT,
         checkpoint_interval_ms    INTEGER NOT NULL DEFAULT 1000
                                   CHECK (checkpoint_interval_ms > 0),
         journal_history_secs      INTEGER NOT NULL DEFAULT 86400
                                   CHECK (journal_history_secs >= 0),
         journal_max_bytes         INTEGER NOT NULL DEFAULT 10737418240
                                   CHECK (journal_max_bytes > 0)
     );
     INSERT INTO groups_v16 (name, role, partner, mode, rpo_secs, keep, bandwidth, compress,
                             security_tag, state, store_dir, created_at, state_changed_at,
                             last_error, on_link_loss, suspend_timeout_secs, needs_resync,
                             last_drill_at, app_consistent_every_secs, quiesce_error)
     SELECT name, role, partner, mode, rpo_secs, keep, bandwidth, compress,
            security_tag, state, store_dir, created_at, state_changed_at,
            last_error, on_link_loss, suspend_timeout_secs, needs_resync,
            last_drill_at, app_consistent_every_secs, quiesce_error
     FROM groups;
     DROP TABLE groups;
     ALTER TABLE groups_v16 RENAME TO groups;
     ALTER TABLE failovers ADD COLUMN checkpoint INTEGER;
     ALTER TABLE volumes ADD COLUMN lower_checkpoint INTEGER;",
];
