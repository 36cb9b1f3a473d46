//! The command line, as clap parses it. Value parsing (sizes) is done here,
//! without I/O; `main` resolves the site and does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::units::{At, Every, Millis, Secs, Size};

/// Disaster-recovery replication for virtual-machine disks.
#[derive(Debug, Parser)]
#[command(name = "offsite", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The site's data directory (its running daemon is reached through it).
    #[arg(long, global = true, env = "OFFSITE_DIR")]
    pub dir: Option<PathBuf>,
    /// API URL of a site (instead of --dir), e.g. http://127.0.0.1:7801 or
    /// https://site-a.example.org:7801 (`site show` prints it as api url).
    #[arg(long, global = true)]
    pub url: Option<String>,
    /// File holding the API token (with --url).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// With an https:// --url: trust the site's certificate if it is issued
    /// by a CA in this PEM file (instead of the public CAs built in); the
    /// URL's host must be named by the certificate.
    #[arg(
        long,
        global = true,
        value_name = "PEM",
        conflicts_with = "api_fingerprint"
    )]
    pub ca_file: Option<PathBuf>,
    /// With an https:// --url: trust exactly the certificate with this
    /// fingerprint (SHA256:..., the api fingerprint `site show` prints at
    /// the site), self-signed or not; its issuer, names and dates are not
    /// checked.
    #[arg(long, global = true, value_name = "SHA256:HEX")]
    pub api_fingerprint: Option<offsite_client::Fingerprint>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `offsite serve` options.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Log line format on stderr: text, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, message, fields).
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the site daemon (REST API, NBD, replication) until SIGTERM/SIGINT.
    ///
    /// SIGHUP reloads config.toml (timers, bandwidth, log filter). The log
    /// filter comes from OFFSITE_LOG, else RUST_LOG, else config.toml's
    /// log.filter (default info).
    Serve(ServeArgs),
    /// Write the man pages and shell completions (bash, zsh, fish) into a
    /// directory; used to build the Debian package.
    #[command(hide = true)]
    GenerateAssets {
        /// Output directory (created): man/*.1, completions/offsite.{bash,zsh,fish}.
        #[arg(long)]
        out: PathBuf,
    },
    /// Create or show the site.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// VMs: ordered volumes plus start/stop/status hooks.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Pair with other sites (pinned certificate fingerprints).
    #[command(subcommand)]
    Partner(PartnerCommand),
    /// Authorization entries: which primaries may replicate to this site.
    #[command(subcommand)]
    Authz(AuthzCommand),
    /// Replication groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Run a replication cycle now (at the primary, or forwarded by the replica).
    Sync {
        group: String,
        /// Name the PIT; named PITs are kept until released.
        #[arg(long)]
        pit_name: Option<String>,
        /// Return once the cycle started.
        #[arg(long)]
        no_wait: bool,
        /// An application-consistent PIT: run the quiesce hook of every VM
        /// of the group (in order), cut, run their thaw hooks, then ship.
        /// If a hook fails the PIT is still made, crash-consistent, and the
        /// command exits 1 saying why.
        #[arg(long)]
        quiesce: bool,
    },
    /// Points-in-time of a group.
    #[command(subcommand)]
    Pit(PitCommand),
    /// Compare the primary's volumes at a fresh cut with the replica, block by block.
    Verify { group: String },
    /// Failover: prepare (primary), run / test (replica), stop-test.
    #[command(subcommand)]
    Failover(FailoverCommand),
    /// After a failover, at the new primary: replicate back to the old one,
    /// sending only what changed (reprotect).
    Reverse {
        group: String,
        /// Split brain: the site whose changes are discarded (kept there as
        /// a PIT named split-brain-TIME).
        #[arg(long, value_name = "SITE")]
        discard_changes_on: Option<String>,
        /// Only show what each site wrote since the divergence.
        #[arg(long)]
        dry_run: bool,
    },
    /// Recovery plans: groups and VMs in priority tiers with callouts,
    /// run as test, cleanup, planned, disaster, reprotect or failback.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// The two-site disaster-recovery demonstration on loopback: two sites,
    /// a VM with two volumes, a recovery plan run as a test, a planned
    /// migration, reprotect and failback, with data checks at every step.
    /// `--dir DIR` puts the sites in DIR (default: a new temporary directory).
    Demo(DemoArgs),
    /// Show the site's event log.
    Events {
        /// How many of the newest events (1 to 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Keep printing new events as they happen (one line each; with
        /// --json one JSON object per line) until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SiteCommand {
    /// Create a site's data directory (catalog, TLS identity, API token, config).
    Init(InitArgs),
    /// Show the running site: name, certificate fingerprint, addresses, version.
    Show,
    /// Change site-wide replication settings (no flag: show them).
    Set(SetArgs),
    /// Take over the replica stores kept at an object-store location (a
    /// bucket whose replica site was lost): every group found there becomes
    /// a replica group of this site, with its PITs, VMs and plans.
    AttachStore {
        /// `s3://BUCKET/PREFIX` as the lost site's `authz add` gave it.
        location: String,
        /// A file holding an encrypted group's key (the line `offsite group
        /// key export GROUP` printed); once per encrypted group.
        #[arg(long = "key-file")]
        key_files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// Accept replicas from any paired site that matches no authorization entry.
    #[arg(long)]
    pub allow_any_partner: Option<bool>,
    /// Storage location used for such replicas.
    #[arg(long)]
    pub default_storage_location: Option<PathBuf>,
    /// Default bandwidth limit for bulk replication traffic per second, e.g. 100M (0: unlimited).
    #[arg(long)]
    pub bandwidth: Option<Size>,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a replication group (checked by the replica at once).
    Create(GroupCreateArgs),
    /// Start initial replication.
    Start {
        name: String,
        /// Seed image directory on the replica.
        #[arg(long)]
        seed: Option<String>,
        /// Return at once instead of showing progress.
        #[arg(long)]
        no_wait: bool,
    },
    /// List groups.
    List,
    /// State, health, last PIT, lag.
    Status {
        name: String,
        /// Print the status again every --interval until interrupted (on a
        /// terminal the screen is redrawn; with --json one JSON object per
        /// line).
        #[arg(long, short = 'w')]
        watch: bool,
        /// Seconds between two looks with --watch.
        #[arg(long, default_value_t = 2.0, requires = "watch")]
        interval: f64,
    },
    /// Cycle statistics (Measure-VMReplication).
    Measure { name: String },
    /// Stop cycles (writes keep being tracked).
    Pause { name: String },
    /// Resume cycles.
    Resume { name: String },
    /// Change a group's settings at its primary (no flag: show them);
    /// `--mode async|sync|continuous` converts it without a new initial
    /// replication.
    /// The running group takes the change at once; the replica's copy of
    /// the RPO and retention follows (nothing changes if it cannot be told).
    Set {
        name: String,
        /// async, sync or continuous.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Recovery point objective: 30s to 24h.
        #[arg(long)]
        rpo: Option<Secs>,
        /// Unnamed PITs kept at the replica (named ones stay until released).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=offsite_api_types::schema::MAX_KEEP as i64))]
        keep: Option<u32>,
        /// Bandwidth limit of the group's transfers per second, e.g. 100M (0: unlimited).
        #[arg(long)]
        bandwidth: Option<Size>,
        /// Compression on the wire: zstd or none.
        #[arg(long, alias = "compress", value_enum)]
        compression: Option<Compress>,
        /// Take an application-consistent PIT (VMs quiesced) whenever the
        /// newest is older than this, e.g. 1h (1m to 30d; 0 or off: never).
        #[arg(long, value_name = "DURATION")]
        app_consistent_every: Option<Every>,
        /// Streaming groups: a crash-consistent journal checkpoint this
        /// often, e.g. 1s or 500ms (100ms to 1h).
        #[arg(long, value_name = "DURATION")]
        checkpoint_interval: Option<Millis>,
        /// Journal history the replica keeps, e.g. 24h (1m to 366d).
        #[arg(long, value_name = "DURATION")]
        journal_history: Option<Secs>,
        /// Most journal the replica keeps, e.g. 10G (at least 1M); the
        /// oldest history goes first.
        #[arg(long, value_name = "SIZE")]
        journal_max_size: Option<Size>,
    },
    /// Compare every block of the primary, at a fresh cut, with the replica
    /// by BLAKE3 and ship only the blocks that differ (at the primary).
    ///
    /// For a replica that may differ in ways the change tracking does not
    /// know: after `volume clear-dirty --force`, after a `verify` that found
    /// differences (health critical says so), or after a replica store was
    /// repaired by hand. Afterwards `verify` finds 0.
    Resync { name: String },
    /// Accept writes again at a primary whose group was failed over
    /// elsewhere (state failed-over-elsewhere), once that failover was
    /// reverted at the partner (otherwise: `offsite reverse` there).
    Unfence {
        name: String,
        /// Even though the partner still holds the group failed over or
        /// cannot be asked (writes here then make a split brain).
        #[arg(long)]
        force: bool,
    },
    /// Write a seed of the group's volumes for initial replication from media.
    ExportSeed {
        name: String,
        /// Directory on the primary's machine.
        #[arg(long)]
        to: std::path::PathBuf,
    },
    /// Delete the group on both sites (volumes stay). The replica keeps
    /// its store with the PITs aside (`STORE.torn-down-TIME`) unless
    /// `--delete-replica`.
    Teardown {
        name: String,
        /// Tear down this side although the partner cannot be reached.
        #[arg(long)]
        force: bool,
        /// Delete the replica's store and every PIT in it (kept aside otherwise).
        #[arg(long)]
        delete_replica: bool,
    },
    /// The key of an encrypted group: export it (keep a copy offline),
    /// import it at a site that lost it.
    #[command(subcommand)]
    Key(GroupKeyCommand),
}

/// `group key`.
#[derive(Debug, Subcommand)]
pub enum GroupKeyCommand {
    /// Print the group's key (one line; a secret: whoever holds it can
    /// read the group's replicas).
    Export { name: String },
    /// Keep the key in FILE (a line `group key export` printed) as the
    /// group's key at this site.
    Import {
        name: String,
        /// The file holding the key's line.
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct GroupCreateArgs {
    pub name: String,
    /// The replica site (a partner).
    #[arg(long)]
    pub partner: String,
    /// A VM whose volumes join the group (repeat).
    #[arg(long = "vm")]
    pub vms: Vec<String>,
    /// A volume of the group (repeat).
    #[arg(long = "volume")]
    pub volumes: Vec<String>,
    /// async (delta cycles on the RPO), sync (every write on the replica
    /// before it is acknowledged) or continuous (every write streamed to
    /// the replica as it happens, acknowledged without waiting for it).
    #[arg(long, value_enum, default_value_t = Mode::Async)]
    pub mode: Mode,
    /// Recovery point objective: 30s to 24h.
    #[arg(long, default_value = "5m")]
    pub rpo: Secs,
    /// PITs kept (besides named ones), at least 1.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=offsite_api_types::schema::MAX_KEEP as i64))]
    pub keep: u32,
    /// Bandwidth limit of the group's transfers per second, e.g. 100M.
    #[arg(long)]
    pub bandwidth: Option<Size>,
    /// Compression on the wire: zstd or none.
    #[arg(long, value_enum, default_value_t = Compress::Zstd)]
    pub compress: Compress,
    /// Security tag the replica's authorization entry requires.
    #[arg(long)]
    pub security_tag: Option<String>,
    /// Sync mode: when the partner is lost, `degrade` (keep serving writes,
    /// resynchronize later) or `suspend-writes` (writes wait, then fail).
    /// Continuous groups always degrade (their writes never wait).
    #[arg(long, value_enum)]
    pub on_link_loss: Option<LinkLoss>,
    /// Sync mode with suspend-writes: how long a write waits for the
    /// partner before it fails with EIO (default 30s).
    #[arg(long)]
    pub suspend_timeout: Option<Secs>,
    /// Take an application-consistent PIT (VMs quiesced) whenever the
    /// newest is older than this, e.g. 1h (1m to 30d; 0 or off: never,
    /// the default). The group's VMs need quiesce hooks.
    #[arg(long, value_name = "DURATION")]
    pub app_consistent_every: Option<Every>,
    /// Sync groups: a crash-consistent journal checkpoint this often at
    /// the replica, e.g. 1s or 500ms (100ms to 1h; default 1s).
    #[arg(long, value_name = "DURATION")]
    pub checkpoint_interval: Option<Millis>,
    /// Journal history the replica keeps, e.g. 24h (1m to 366d; default 24h).
    #[arg(long, value_name = "DURATION")]
    pub journal_history: Option<Secs>,
    /// Most journal the replica keeps, e.g. 10G (at least 1M; default
    /// 10G); the oldest history goes first.
    #[arg(long, value_name = "SIZE")]
    pub journal_max_size: Option<Size>,
    /// Encrypt the group's replicas at rest with a key made for it here
    /// and kept at both sites; export it with `group key export` and keep a
    /// copy offline: without it the replicas cannot be read.
    #[arg(long)]
    pub encrypt: bool,
}

#[derive(Debug, Subcommand)]
pub enum FailoverCommand {
    /// Planned failover, at the primary: stop the VMs, refuse writes, ship
    /// a final PIT named planned-failover.
    Prepare { group: String },
    /// Bring the group's volumes up at this (replica) site from a PIT.
    Run {
        group: String,
        /// PIT id or name (default: the newest).
        #[arg(long)]
        pit: Option<String>,
        /// Recover to the newest consistent point (journal checkpoint or
        /// PIT) at or before TIME: RFC 3339 (2026-12-07T08:15:30Z) or
        /// relative (now, 90s ago, 10m ago, 2h ago, 1d ago).
        #[arg(long, value_name = "TIME", conflicts_with = "pit")]
        at: Option<At>,
        /// Test failover: writable clones under distinct names, VMs started
        /// with OFFSITE_MODE=test, replication keeps running.
        #[arg(long)]
        test: bool,
        /// Fail over although the primary is not prepared or unreachable
        /// (unplanned: disaster recovery).
        #[arg(long, conflicts_with = "test")]
        force: bool,
    },
    /// Stop a test failover: stop its VMs, discard the clones and their writes.
    StopTest { group: String },
    /// Keep the failover: no revert or other PIT afterwards (reverse commits too).
    Commit { group: String },
    /// Undo `failover prepare` (at the primary) or an uncommitted
    /// `failover run` (at the replica: the promoted volumes and their
    /// writes are discarded, replication resumes).
    Revert { group: String },
}

#[derive(Debug, Subcommand)]
pub enum PitCommand {
    /// PITs of a group, oldest first; with --checkpoints, what its journal
    /// can recover to (asked of the replica from either site).
    List {
        group: String,
        /// The journal's checkpoints instead of the PITs: how many, the
        /// oldest and newest, app-consistent ones, journal bytes and files.
        #[arg(long)]
        checkpoints: bool,
        /// With --checkpoints: list every checkpoint (id, time,
        /// consistency, name).
        #[arg(long, requires = "checkpoints")]
        all: bool,
    },
    /// Serve a PIT's volumes read-only over NBD (at the replica).
    Export {
        group: String,
        /// PIT id or name.
        #[arg(required_unless_present = "at")]
        pit: Option<String>,
        /// Export the newest consistent point (journal checkpoint or PIT)
        /// at or before TIME instead: RFC 3339 (2026-12-07T08:15:30Z) or
        /// relative (now, 90s ago, 10m ago, 2h ago, 1d ago).
        #[arg(long, value_name = "TIME", conflicts_with = "pit")]
        at: Option<At>,
    },
    /// Read every PIT back and compare it with its recorded checksums (at the replica).
    Check { group: String },
    /// Forget a PIT's name so retention may remove it.
    Release {
        group: String,
        /// PIT id or name.
        pit: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM from existing volumes, or protect a libvirt domain
    /// (--libvirt).
    Create {
        name: String,
        /// A volume of the VM; repeat for more disks, disk 0 first.
        #[arg(long = "volume", required_unless_present = "libvirt")]
        volumes: Vec<String>,
        /// Protect this libvirt domain: its disks become the VM's volumes
        /// (file disks are imported into new volumes NAME-TARGET and the
        /// domain redefined on their NBD exports; it must be shut off for
        /// that), its definition goes to the partner with the group, and
        /// failover starts and stops it through libvirt.
        #[arg(long, conflicts_with_all = ["volumes", "start", "stop", "status"])]
        libvirt: Option<String>,
        /// Command that starts the VM (failover runs it with OFFSITE_VOLUME_<n>_URL set).
        #[arg(long)]
        start: Option<String>,
        /// Command that stops the VM.
        #[arg(long)]
        stop: Option<String>,
        /// Command that exits 0 while the VM runs.
        #[arg(long)]
        status: Option<String>,
        /// Command that quiesces the VM's applications before an
        /// application-consistent PIT's cut, e.g. 'fsfreeze -f /srv' (with
        /// --thaw; run with OFFSITE_MODE=checkpoint, within [failover]
        /// quiesce_timeout_secs).
        #[arg(long, requires = "thaw")]
        quiesce: Option<String>,
        /// Command that undoes --quiesce right after the cut, e.g.
        /// 'fsfreeze -u /srv'.
        #[arg(long, requires = "quiesce")]
        thaw: Option<String>,
    },
    /// List VMs.
    List,
    /// Show one VM.
    Show { name: String },
    /// Change a VM's hooks, or its volumes while no group holds it; a
    /// group's copy of the hooks (at both sites) follows.
    Set {
        name: String,
        /// Command that starts the VM ('' removes it).
        #[arg(long)]
        start: Option<String>,
        /// Command that stops the VM ('' removes it).
        #[arg(long)]
        stop: Option<String>,
        /// Command that exits 0 while the VM runs ('' removes it).
        #[arg(long)]
        status: Option<String>,
        /// The VM's volumes, all of them, disk 0 first (repeat); refused
        /// while the VM is in a group.
        #[arg(long = "volume")]
        volumes: Vec<String>,
        /// Command that quiesces the VM's applications before an
        /// application-consistent PIT's cut ('' removes it, with --thaw '').
        #[arg(long)]
        quiesce: Option<String>,
        /// Command that undoes --quiesce right after the cut ('' removes it).
        #[arg(long)]
        thaw: Option<String>,
    },
    /// Delete a VM definition (its volumes are kept); refused while a group
    /// or a recovery plan holds it.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PartnerCommand {
    /// Pin a partner site: run on both sites, each naming the other.
    Add {
        /// The partner's site name (its `site show` name).
        name: String,
        /// HOST:PORT of the partner's replication listener.
        #[arg(long)]
        address: String,
        /// The partner's certificate fingerprint (its `site show` fingerprint).
        #[arg(long)]
        fingerprint: String,
    },
    /// List partners with their reachability.
    List,
    /// Change a partner's address (its pinned identity stays).
    Set {
        name: String,
        /// New HOST:PORT of the partner's replication listener.
        #[arg(long)]
        address: String,
    },
    /// A partner site was rebuilt with a new identity (lost with its data,
    /// set up again under the same name): pin its new certificate and bring
    /// back every group and plan shared with it. Groups this site is the
    /// primary of are created there again with a full copy; groups failed
    /// over here go with the next `reverse`; plans follow their groups.
    Replace {
        name: String,
        /// The rebuilt site's new certificate fingerprint (its `site show`).
        #[arg(long)]
        fingerprint: String,
        /// HOST:PORT of its replication listener.
        #[arg(long)]
        address: String,
    },
    /// Unpin a partner: its next connection is refused.
    Remove { name: String },
    /// Handshake with a partner and measure RTT and bulk throughput.
    Test {
        name: String,
        /// Bytes to send, e.g. 1G.
        #[arg(long, default_value = "256M")]
        bytes: Size,
        /// Compress the bulk data with zstd (default: off, to measure the link).
        #[arg(long)]
        compress: bool,
    },
    /// Ask a partner whether it would accept replicas from this site (the
    /// check `group create` makes); a refusal names the partner's rule.
    Check {
        name: String,
        /// Security tag the replication group would present.
        #[arg(long)]
        security_tag: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthzCommand {
    /// Allow primaries matching a pattern to replicate here.
    Add {
        /// Exact site name, `*.suffix` (e.g. *.example.com) or `*`.
        #[arg(long)]
        allowed_primary: String,
        /// Where their replicas go: an absolute directory of this site, or
        /// `s3://BUCKET/PREFIX` (the service from the site's [object_store]
        /// configuration).
        #[arg(long)]
        storage_location: String,
        /// Tag the primary's replication group must present.
        #[arg(long)]
        security_tag: Option<String>,
    },
    /// List authorization entries.
    List,
    /// Remove the entry for a pattern.
    Remove { pattern: String },
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Site name (letters, digits, '.', '_', '-').
    #[arg(long)]
    pub name: String,
    /// Replication listener, HOST:PORT (port 0: chosen at start).
    #[arg(long, default_value = offsite_engine::config::DEFAULT_LISTEN)]
    pub listen: String,
    /// REST API listener (and web console), HOST:PORT. Off loopback it
    /// needs --api-tls (or --insecure-api).
    #[arg(long, default_value = offsite_engine::config::DEFAULT_API)]
    pub api: String,
    /// NBD listener, HOST:PORT.
    #[arg(long, default_value = offsite_engine::config::DEFAULT_NBD)]
    pub nbd: String,
    /// HTTPS on the API listener: off (plain HTTP, the default),
    /// self-signed (the site makes its own certificate; clients pin its
    /// fingerprint) or files (--api-tls-cert and --api-tls-key).
    #[arg(long, value_enum, value_name = "MODE")]
    pub api_tls: Option<ApiTlsArg>,
    /// HTTPS with this certificate chain (PEM, leaf first); implies
    /// --api-tls files.
    #[arg(long, value_name = "PEM", requires = "api_tls_key")]
    pub api_tls_cert: Option<PathBuf>,
    /// The private key of --api-tls-cert (PEM).
    #[arg(long, value_name = "PEM", requires = "api_tls_cert")]
    pub api_tls_key: Option<PathBuf>,
    /// Serve the API over plain HTTP even off loopback (a trusted network
    /// only: the token and console sessions travel in the clear); recorded
    /// as [api_tls] allow_plaintext = true.
    #[arg(long, conflicts_with_all = ["api_tls", "api_tls_cert"])]
    pub insecure_api: bool,
}

/// `site init --api-tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApiTlsArg {
    /// Plain HTTP (loopback only, unless --insecure-api).
    Off,
    /// HTTPS with a certificate the site makes for itself.
    SelfSigned,
    /// HTTPS with --api-tls-cert and --api-tls-key.
    Files,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume (--size) or copy a raw image or block device in (--import).
    Create(CreateArgs),
    /// List volumes.
    List,
    /// Show one volume.
    Show { name: String },
    /// Delete a volume and its data (refused while NBD clients are connected).
    Delete { name: String },
    /// Print the volume's NBD URL.
    Url { name: String },
    /// Change a volume's settings.
    Set {
        name: String,
        /// NBD TLS for this export: off (plain clients only), optional,
        /// required (TLS clients only), or default (the NBD listener's
        /// `[nbd_tls] mode`). New connections only.
        #[arg(long, value_enum)]
        nbd_tls: NbdTlsArg,
    },
    /// Forget the changes tracked so far (dirty_bytes becomes 0).
    ///
    /// Refused on a volume of a replication group: its tracked changes are
    /// what the replica lacks. With --force it is done anyway and the group
    /// is marked as needing `offsite group resync GROUP`.
    ClearDirty {
        name: String,
        /// Clear a grouped volume anyway (the group then needs `group resync`).
        #[arg(long)]
        force: bool,
    },
}

/// `volume set --nbd-tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NbdTlsArg {
    /// Served only without TLS.
    Off,
    /// Served with or without TLS.
    Optional,
    /// Served only over TLS.
    Required,
    /// The NBD listener's mode.
    Default,
}

impl NbdTlsArg {
    /// The mode's name on the wire; `None` for the listener's.
    pub fn mode(self) -> Option<&'static str> {
        match self {
            NbdTlsArg::Off => Some("off"),
            NbdTlsArg::Optional => Some("optional"),
            NbdTlsArg::Required => Some("required"),
            NbdTlsArg::Default => None,
        }
    }
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Volume name; also its NBD export name.
    pub name: String,
    /// Size, e.g. 10G (K/M/G/T suffixes are powers of 1024).
    #[arg(long, conflicts_with = "import", required_unless_present = "import")]
    pub size: Option<Size>,
    /// Tracking block size, a power of two from 512 to 1M.
    #[arg(long)]
    pub block_size: Option<Size>,
    /// Raw image or block device to copy in (read by the site's daemon).
    #[arg(long)]
    pub import: Option<PathBuf>,
    /// Return at once instead of waiting for an import to finish.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Leave the sites (stopped) and their reports in place.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Create a recovery plan; it is stored at both sites.
    Create {
        name: String,
        /// The site whose VMs the plan protects.
        #[arg(long)]
        protected_site: String,
        /// The site it recovers them to.
        #[arg(long)]
        recovery_site: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Network name given to VM hooks and callouts in test mode (OFFSITE_TEST_NETWORK).
        #[arg(long)]
        test_network: Option<String>,
        /// VMs of one priority tier started at once, at most (at least 1).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        parallel: Option<u32>,
    },
    /// Add a replication group; its VMs join at priority 3.
    AddGroup { plan: String, group: String },
    /// Put a VM in priority tier 1 (first) to 5; optionally wait until it answers.
    SetPriority {
        plan: String,
        vm: String,
        #[arg(value_parser = clap::value_parser!(u8).range(1..=5))]
        priority: u8,
        /// tcp:HOST:PORT or cmd:COMMAND: the VM is up once this succeeds.
        #[arg(long, value_name = "tcp:HOST:PORT|cmd:CMD")]
        wait_for: Option<String>,
        /// Remove the VM's wait.
        #[arg(long, conflicts_with = "wait_for")]
        no_wait: bool,
        /// How long the wait may take, e.g. 2m.
        #[arg(long)]
        wait_timeout: Option<Secs>,
    },
    /// Map a protected-site network to a recovery-site network for the
    /// plan's libvirt domains (PROTECTED= removes a mapping; drills use
    /// the test network instead).
    SetNetworkMap {
        plan: String,
        /// PROTECTED=RECOVERY, one or more.
        #[arg(required = true, value_name = "PROTECTED=RECOVERY")]
        mappings: Vec<String>,
    },
    /// Add a callout: a command run at the recovery site, or a prompt the
    /// run waits at until `plan continue`.
    AddStep {
        plan: String,
        /// Step name, unique in the plan.
        name: String,
        /// Command (sh -c) run at the recovery site.
        #[arg(long, group = "what")]
        command: Option<String>,
        /// Message shown while the run waits for `plan continue`.
        #[arg(long, group = "what")]
        prompt: Option<String>,
        /// Run once the VMs of this tier are up (0: before tier 1).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=5))]
        after_tier: u8,
        /// Test runs skip this step.
        #[arg(long)]
        skip_in_test: bool,
        /// Command timeout, e.g. 5m.
        #[arg(long)]
        timeout: Option<Secs>,
    },
    /// Remove a replication group and its VMs from a plan (at both sites).
    RemoveGroup { plan: String, group: String },
    /// Remove a callout step from a plan (at both sites).
    RemoveStep { plan: String, step: String },
    /// Show a plan.
    Show { plan: String },
    /// List the plans.
    List,
    /// Delete a plan at both sites (run reports are kept).
    Delete { plan: String },
    /// Run a plan at its current recovery site.
    Run {
        plan: String,
        /// test | cleanup | planned | disaster | reprotect | failback
        #[arg(long, value_enum, required_unless_present = "resume")]
        mode: Option<RunMode>,
        /// Continue the plan's stopped run from its failed step.
        #[arg(long)]
        resume: bool,
        /// Test and disaster runs: recover every group to the newest
        /// consistent point (journal checkpoint or PIT) at or before TIME:
        /// RFC 3339 or relative (10m ago).
        #[arg(long, value_name = "TIME")]
        at: Option<At>,
    },
    /// Go on with the run waiting at a prompt.
    Continue { plan: String },
    /// The plan's runs (made at either site).
    History { plan: String },
    /// A run's report.
    Report {
        run_id: String,
        /// text (default), json, or html (a self-contained page on stdout;
        /// contradicts --json).
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
    },
}

// Options with a fixed set of values are parsed by clap, so a bad value is
// a malformed command line (exit 2, with the accepted values listed) and
// never reaches the site. The spellings are the command-line contract.

/// A replication group's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Delta cycles on the RPO.
    Async,
    /// Every write in the replica's log before it is acknowledged.
    Sync,
    /// Every write streamed to the replica's journal as it happens,
    /// acknowledged without waiting for the replica.
    Continuous,
}

/// Compression of a group's transfers on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compress {
    /// zstd.
    Zstd,
    /// No compression.
    None,
}

/// What a sync group does when its partner is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LinkLoss {
    /// Keep serving writes, resynchronize later.
    Degrade,
    /// Writes wait for the partner, then fail.
    SuspendWrites,
}

/// How a recovery plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunMode {
    /// Test failover of every group (clones).
    Test,
    /// Stop the test VMs and discard the clones.
    Cleanup,
    /// Planned migration.
    Planned,
    /// Forced recovery: the protected site is lost.
    Disaster,
    /// Reverse every group.
    Reprotect,
    /// Planned migration home, then reprotect.
    Failback,
}

/// How `plan report` prints a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Text summary.
    Text,
    /// JSON (as --json).
    Json,
    /// A self-contained HTML page.
    Html,
}

/// The spelling of a value on the command line, which is also its
/// spelling in the API.
pub fn spelling<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;

    /// The CLI's modes and the OpenAPI document's value sets are the
    /// strings of the catalog's types (`offsite_catalog::state`).
    #[test]
    fn value_sets_are_the_catalog_types() {
        use offsite_api_types::schema;
        fn strings<T: Copy + std::fmt::Display>(all: &[T]) -> Vec<String> {
            all.iter().map(T::to_string).collect()
        }
        assert_eq!(
            Mode::value_variants()
                .iter()
                .map(spelling)
                .collect::<Vec<_>>(),
            strings(offsite_catalog::Mode::ALL)
        );
        assert_eq!(schema::MODES, strings(offsite_catalog::Mode::ALL));
        assert_eq!(schema::GROUP_ROLES, strings(offsite_catalog::Role::ALL));
        assert_eq!(
            schema::GROUP_STATES,
            strings(offsite_catalog::GroupState::ALL)
        );
        assert_eq!(
            schema::SYNC_STATES,
            strings(offsite_catalog::SyncState::ALL)
        );
    }

    /// The values each fixed-choice option accepts, as spelled on the
    /// command line and sent to the site: the contract, unchanged.
    #[test]
    fn fixed_choice_spellings() {
        fn all<T: ValueEnum>() -> Vec<String> {
            T::value_variants().iter().map(spelling).collect()
        }
        assert_eq!(all::<Mode>(), ["async", "sync", "continuous"]);
        assert_eq!(all::<Compress>(), ["zstd", "none"]);
        assert_eq!(all::<LinkLoss>(), ["degrade", "suspend-writes"]);
        assert_eq!(
            all::<RunMode>(),
            [
                "test",
                "cleanup",
                "planned",
                "disaster",
                "reprotect",
                "failback"
            ]
        );
        assert_eq!(all::<ReportFormat>(), ["text", "json", "html"]);
        // The API's document declares the same sets.
        assert_eq!(all::<Mode>(), offsite_api_types::schema::MODES);
        assert_eq!(all::<LinkLoss>(), offsite_api_types::schema::LINK_LOSS);
        assert_eq!(all::<RunMode>(), offsite_api_types::schema::RUN_MODES);
    }
}
