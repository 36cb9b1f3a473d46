//! `offsite serve`: composes a site's front ends around its engine.
//!
//! Start-up: take the data directory's lock (one daemon per directory),
//! open the [`Site`] (which recovers change tracking after a crash), load
//! the API's certificate (`[api_tls]`; plain HTTP off loopback is refused
//! unless `allow_plaintext`), bind the NBD and API listeners, publish the
//! bound addresses, the API's scheme and its certificate's fingerprint in
//! `run/daemon.json` (durably, so tests and the CLI find ephemeral ports
//! and local clients pin the certificate), then serve until SIGTERM or
//! SIGINT.
//!
//! Under systemd (`Type=notify`, `NOTIFY_SOCKET` set) the daemon says
//! `READY=1` once it serves, `RELOADING=1`/`READY=1` around a reload,
//! `STOPPING=1` when it begins to shut down, and `WATCHDOG=1` every half
//! `WATCHDOG_USEC` while its runtime and catalog answer.
//!
//! SIGHUP re-reads `config.toml` and puts in force what can change while
//! running (timers, the default bandwidth limit, the log filter), and
//! re-reads the API's certificate files (`[api_tls] mode = "files"`: a
//! renewal needs no restart); it logs what changed and what waits for a
//! restart (name, listener addresses, `[nbd_tls]`, `[api_tls]`).
//!
//! Shutdown, in this order: (1) stop accepting API and NBD connections;
//! (2) let each NBD connection finish the request it is executing and flush
//! its reply; (3) close every volume (data synced, tracking state persisted
//! cleanly so the dirty sets survive exactly); (4) remove `run/daemon.json`;
//! exit 0.

use std::net::TcpListener;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use offsite_api::tls::ServedCertificate;
use offsite_api::{ApiState, MetricsSource};
use offsite_engine::api_tls::ApiCertificate;
use offsite_engine::config::{ApiTlsMode, SiteConfig};
use offsite_engine::{BoundAddresses, Site, config::parse_addr, layout::Layout};
use offsite_nbd::{NbdServer, ServerConfig, ServerStats, TlsAcceptor, TlsMode, TlsPolicy};
use offsite_replication::Replication;
use std::time::Duration;

pub mod log;

/// How `offsite serve` runs (its command-line options).
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Text or JSON log lines.
    pub log_format: log::LogFormat,
}

/// Runs the daemon for the site in `dir` until a termination signal.
pub fn run(dir: &Path, options: &ServeOptions) -> anyhow::Result<()> {
    private_files();
    // A file grown past RLIMIT_FSIZE must fail that one request with EFBIG
    // (the volume store explains the limit), not kill the daemon with
    // SIGXFSZ's default action.
    // SAFETY: signal(2) with a valid signal number and SIG_IGN, before any
    // other thread of ours exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let layout = Layout::new(dir);
    // The log first, with config.toml's filter if the file is readable (if
    // it is not, opening the site below says why, in this log).
    let config_filter = offsite_engine::config::SiteConfig::load(&layout.config())
        .map(|c| c.log.filter)
        .unwrap_or_else(|_| offsite_engine::config::LogConfig::default().filter);
    let logging = Arc::new(log::Logging::install(options.log_format, &config_filter)?);
    // The runtime and the SIGHUP handler before anything slow: SIGHUP's
    // default action ends the process, and `systemctl reload` may come at
    // any time.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("offsite-api")
        .build()
        .context("starting the async runtime")?;
    let hangup = {
        let _entered = runtime.enter();
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?
    };
    let _lock = lock(&layout)?;
    restrict_site_dir(&layout);
    let site = Site::open(dir).with_context(|| format!("opening the site in {}", dir.display()))?;
    let config = site.config();

    let api_certificate = api_certificate(&site, &config)?;
    let (nbd, nbd_bound, nbd_stats) = start_nbd(&site, &config, dir)?;
    let result = runtime.block_on(serve(
        &site,
        &layout,
        logging,
        hangup,
        nbd_bound,
        nbd_stats,
        api_certificate,
    ));

    tracing::info!("shutting down: draining NBD connections");
    if let Some(server) = nbd.lock().unwrap_or_else(|e| e.into_inner()).take() {
        server.shutdown();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    let closed = site.close().context("closing volumes");
    // A stale daemon.json would name a daemon that is gone.
    match std::fs::remove_file(layout.daemon_info()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("removing {}: {e}", layout.daemon_info().display())
        }
        _ => {}
    }
    result?;
    closed?;
    tracing::info!("site stopped cleanly");
    Ok(())
}

/// The running NBD server, shared with the volume-connection counter until
/// shutdown takes it.
type SharedNbd = Arc<Mutex<Option<NbdServer>>>;

/// The API's certificate as `[api_tls]` says, before any listener is
/// bound: none for plain HTTP (refused off loopback unless
/// `allow_plaintext`: the bearer token and console sessions would travel
/// in the clear), the site's own (made at the first start that needs it,
/// then reused), or the operator's files (checked to fit their key).
fn api_certificate(site: &Site, config: &SiteConfig) -> anyhow::Result<Option<ApiCertificate>> {
    let api_addr = parse_addr(&config.api).map_err(anyhow::Error::msg)?;
    if let Some(reason) = config.api_tls.refusal(api_addr) {
        bail!("{reason}");
    }
    if config.api_tls.mode == ApiTlsMode::SelfSigned
        && let Some(fingerprint) =
            offsite_engine::api_tls::ensure_self_signed(site.layout(), &config.name, &config.api)
                .context(
                    "making the API's self-signed certificate ([api_tls] mode = \"self-signed\")",
                )?
    {
        tracing::info!(
            "made the API's self-signed certificate {} (fingerprint {fingerprint}); clients pin it with --api-fingerprint",
            site.layout().api_cert().display()
        );
    }
    offsite_engine::api_tls::load(site.layout(), &config.api_tls)
        .context("loading the API's TLS certificate ([api_tls] in config.toml)")
}

/// The NBD server (every volume an export), before the runtime's work: it
/// runs on threads of its own, with `[nbd_tls]` (credentials relative to
/// `dir`). Refuses plain NBD off loopback unless `allow_plaintext` says
/// so. Returns the server (taken at shutdown), its bound address and its
/// counters.
fn start_nbd(
    site: &Arc<Site>,
    config: &offsite_engine::config::SiteConfig,
    dir: &Path,
) -> anyhow::Result<(SharedNbd, std::net::SocketAddr, Arc<ServerStats>)> {
    let nbd_addr = parse_addr(&config.nbd).map_err(anyhow::Error::msg)?;
    let tls = &config.nbd_tls;
    if let Some(reason) = tls.refusal(nbd_addr) {
        bail!("{reason}");
    }
    let acceptor = match tls.mode {
        TlsMode::Off => None,
        TlsMode::Optional | TlsMode::Required => {
            Some(TlsAcceptor::new(&tls.credentials(dir)).context(
                "loading the NBD TLS credentials ([nbd_tls] x509_dir / psk_file in config.toml)",
            )?)
        }
    };
    let policy = TlsPolicy::new(tls.mode, acceptor).context("configuring NBD TLS ([nbd_tls])")?;
    let nbd_listener = TcpListener::bind(nbd_addr).with_context(|| {
        format!("binding the NBD listener to {nbd_addr} (config.toml `nbd`); is the port in use?")
    })?;
    let nbd =
        NbdServer::start_with_tls(nbd_listener, site.clone(), ServerConfig::default(), policy)
            .context("starting the NBD server")?;
    let nbd_bound = nbd.local_addr();
    let nbd_stats = nbd.stats();
    let nbd = Arc::new(Mutex::new(Some(nbd)));
    site.set_connection_counter({
        let nbd = nbd.clone();
        move |name| {
            nbd.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or(0, |s| s.connections_for(name))
        }
    });
    Ok((nbd, nbd_bound, nbd_stats))
}

/// The site's services on the async runtime: replication (listener,
/// monitor, group runners), SIGHUP reloads, the systemd watchdog and the
/// REST API, until a termination signal; then stops them in order.
async fn serve(
    site: &Arc<Site>,
    layout: &Layout,
    logging: Arc<log::Logging>,
    hangup: tokio::signal::unix::Signal,
    nbd_bound: std::net::SocketAddr,
    nbd_stats: Arc<ServerStats>,
    api_certificate: Option<ApiCertificate>,
) -> anyhow::Result<()> {
    let config = site.config();
    let api_certificate = api_certificate.map(|c| Arc::new(ServedCertificate::new(c)));
    let (repl, plans, repl_listener) = start_replication(site).await?;
    let listen_bound = repl_listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // Fails only when the sender is gone, which also means stop.
        let _ = rx.wait_for(|v| *v).await;
    };
    let repl_task = tokio::spawn(repl.clone().serve(repl_listener, stopped(stop_rx.clone())));
    let monitor_task = tokio::spawn(repl.clone().monitor(stopped(stop_rx.clone())));
    let reload_task = tokio::spawn(reload_on_hangup(
        hangup,
        Reloadable {
            site: site.clone(),
            repl: repl.clone(),
            logging: logging.clone(),
            api_certificate: api_certificate.clone(),
        },
        stopped(stop_rx.clone()),
    ));

    let api_addr = parse_addr(&config.api).map_err(anyhow::Error::msg)?;
    let api_listener = tokio::net::TcpListener::bind(api_addr)
        .await
        .with_context(|| {
            format!(
                "binding the API listener to {api_addr} (config.toml `api`); is the port in use?"
            )
        })?;
    let api_bound = api_listener.local_addr()?;
    let api_fingerprint = api_certificate.as_ref().map(|c| c.fingerprint());
    site.set_bound(BoundAddresses {
        listen: Some(listen_bound),
        api: Some(api_bound),
        nbd: Some(nbd_bound),
        api_fingerprint: api_fingerprint.clone(),
    });
    let token = std::fs::read_to_string(layout.token())
        .with_context(|| format!("reading the API token {}", layout.token().display()))?;
    let metrics: Vec<Arc<dyn MetricsSource>> = vec![
        Arc::new(NbdMetrics(nbd_stats)),
        Arc::new(ReplMetrics(repl.clone())),
    ];
    let state = ApiState::new(site.clone(), repl.clone(), plans, &token, metrics);
    // Partners' consoles link here (the API listener's URL, https when
    // it serves TLS, the host name for a wildcard address).
    repl.set_console_url(&format!("{}/", site.info().api_url));

    write_daemon_info(site)?;
    tracing::info!(site = %config.name, api = %site.info().api_url, nbd = %nbd_bound, listen = %listen_bound, "site is serving");
    if let Some(fingerprint) = &api_fingerprint {
        tracing::info!("the API serves HTTPS with certificate {fingerprint}");
    }
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status("serving"),
    ]);
    let watchdog_task = sd_notify::watchdog_enabled()
        .map(|every| tokio::spawn(watchdog(site.clone(), every, stopped(stop_rx.clone()))));

    let served = match api_certificate {
        Some(certificate) => {
            offsite_api::serve_tls(api_listener, certificate, state, shutdown_signal()).await
        }
        None => offsite_api::serve(api_listener, state, shutdown_signal()).await,
    }
    .context("serving the API");
    // Fails only when every task already ended: nothing left to stop.
    let _ = stop_tx.send(true);
    join_services(repl_task, monitor_task, reload_task, watchdog_task).await;
    served
}

/// Writes `run/daemon.json` (durably) from what the site bound. Its
/// `api_scheme` and `api_fingerprint` let a local CLI (`--dir`) speak HTTPS
/// to this daemon and pin exactly the certificate it serves.
fn write_daemon_info(site: &Site) -> anyhow::Result<()> {
    let bound = site.bound();
    let show = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string());
    let info = serde_json::json!({
        "pid": std::process::id(),
        "api": show(bound.api),
        "api_scheme": if bound.api_fingerprint.is_some() { "https" } else { "http" },
        "api_fingerprint": bound.api_fingerprint,
        "nbd": show(bound.nbd),
        "listen": show(bound.listen),
    });
    let path = site.layout().daemon_info();
    offsite_volume_file::write_durably(
        &path,
        info.to_string().as_bytes(),
        offsite_volume_file::PRIVATE_FILE_MODE,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// The replication service and the plans, started: session options from
/// `config.toml`, the listener bound, the configured bandwidth applied, the
/// group runners and the flattener running, running test failovers'
/// clones exported again.
async fn start_replication(
    site: &Arc<Site>,
) -> anyhow::Result<(
    Arc<Replication>,
    Arc<offsite_plan::Plans>,
    tokio::net::TcpListener,
)> {
    let config = site.config();
    let r = &config.replication;
    let mut options = offsite_transport::SessionOptions::default();
    options.connect_timeout = Duration::from_secs_f64(r.connect_timeout_secs);
    options.keepalive_interval = Duration::from_secs_f64(r.keepalive_secs);
    options.dead_after = Duration::from_secs_f64(r.dead_after_secs);
    let repl =
        Replication::new(site.clone(), options).context("starting the replication service")?;
    // Before the listener runs: the partner's plan requests need it.
    let plans = offsite_plan::Plans::new(site.clone(), repl.clone());
    // Plan copies beside stores in object storage that could not be
    // written at the plan's last change (the store was unreachable): only
    // the groups marked then are opened.
    tokio::task::spawn_blocking({
        let plans = plans.clone();
        move || plans.retry_failed_copies()
    });
    let listen_addr = parse_addr(&config.listen).map_err(anyhow::Error::msg)?;
    let repl_listener = tokio::net::TcpListener::bind(listen_addr).await.with_context(|| {
        format!("binding the replication listener to {listen_addr} (config.toml `listen`); is the port in use?")
    })?;
    {
        let site = site.clone();
        let bandwidth = tokio::task::spawn_blocking(move || apply_config_bandwidth(&site))
            .await
            .context("applying config.toml's bandwidth")??;
        repl.reload(bandwidth);
    }
    repl.start_runners()
        .await
        .context("starting replication groups")?;
    site.start_flattener();
    repl.restore_failovers()
        .await
        .context("exporting the clones of running test failovers")?;
    Ok((repl, plans, repl_listener))
}

/// Waits for the services `serve` started to end (after the stop signal),
/// logging any that failed.
async fn join_services(
    repl_task: tokio::task::JoinHandle<Result<(), offsite_replication::ReplError>>,
    monitor_task: tokio::task::JoinHandle<()>,
    reload_task: tokio::task::JoinHandle<()>,
    watchdog_task: Option<tokio::task::JoinHandle<()>>,
) {
    for task in [repl_task] {
        match task.await {
            Ok(Err(e)) => tracing::error!("replication listener: {e}"),
            Err(e) => tracing::error!("replication listener task: {e}"),
            Ok(Ok(())) => {}
        }
    }
    // They return nothing; a panic in one is a bug worth the log.
    if let Err(e) = monitor_task.await {
        tracing::error!("partner monitor task: {e}");
    }
    if let Err(e) = reload_task.await {
        tracing::error!("configuration reload task: {e}");
    }
    if let Some(task) = watchdog_task
        && let Err(e) = task.await
    {
        tracing::error!("watchdog task: {e}");
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping: draining connections"),
    ]);
}

/// Tells systemd about a state change, when it runs us with `Type=notify`
/// (`NOTIFY_SOCKET` set; without it this does nothing). The `sd-notify`
/// crate is small, dependency-free (libc), kept up to date and written for
/// exactly this; a failure to notify is logged, never fatal. The variable
/// stays in the environment (hooks inherit it, but systemd's default
/// `NotifyAccess=main` ignores any process but this one).
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify the service manager (NOTIFY_SOCKET): {e}");
    }
}

/// Sends `WATCHDOG=1` every half `every` (systemd's `WatchdogSec`) while
/// the daemon works: the runtime schedules this task, and the catalog
/// answers a read from a blocking thread within the period. A daemon whose
/// runtime or catalog is stuck stops sending, and systemd restarts it.
async fn watchdog(site: Arc<Site>, every: Duration, shutdown: impl std::future::Future) {
    let period = every / 2;
    tracing::info!("systemd watchdog enabled: WATCHDOG=1 every {period:?} (WatchdogSec {every:?})");
    tokio::pin!(shutdown);
    loop {
        let site = site.clone();
        let probe = tokio::task::spawn_blocking(move || site.settings().is_ok());
        match tokio::time::timeout(period, probe).await {
            Ok(Ok(true)) => notify(&[sd_notify::NotifyState::Watchdog]),
            Ok(_) => tracing::error!(
                "watchdog: the catalog cannot be read; not telling systemd we are alive"
            ),
            Err(_) => tracing::error!(
                "watchdog: the catalog did not answer within {period:?}; not telling systemd we are alive"
            ),
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

/// What a reload changes.
struct Reloadable {
    site: Arc<Site>,
    repl: Arc<Replication>,
    logging: Arc<log::Logging>,
    /// The API's certificate, when it serves HTTPS.
    api_certificate: Option<Arc<ServedCertificate>>,
}

/// Serves SIGHUP until `shutdown`: each one reloads `config.toml`
/// ([`reload`]), framed by `RELOADING=1` and `READY=1` for systemd.
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    what: Reloadable,
    shutdown: impl std::future::Future,
) {
    let what = Arc::new(what);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        // `Type=notify-reload` wants the time of the reload with it.
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        notify(&reloading);
        let w = what.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || reload(&w)).await {
            tracing::error!("reloading config.toml failed: {e}");
        }
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status("serving"),
        ]);
    }
}

/// Re-reads `config.toml` and puts in force what can change while the
/// daemon runs; logs what changed, and what did not and why.
fn reload(what: &Reloadable) {
    let path = what.site.layout().config();
    tracing::info!("SIGHUP received: reloading {}", path.display());
    let report = match what.site.reload_config() {
        Ok(report) => report,
        Err(e) => {
            tracing::error!(
                "{} not reloaded, the settings in force stay: {e}; fix the file and send SIGHUP again",
                path.display()
            );
            return;
        }
    };
    let config = what.site.config();
    // The log filter's change is reported by the log itself (it may be
    // overridden by the environment).
    let mut changed: Vec<String> = report
        .changed
        .into_iter()
        .filter(|c| !c.starts_with("log.filter"))
        .collect();
    let mut not_reloaded: Vec<String> = report
        .need_restart
        .into_iter()
        .map(|r| format!("{r} (takes effect at the next restart)"))
        .collect();
    match what.logging.reload(&config.log.filter) {
        Ok(log::FilterReload::Unchanged) => {}
        Ok(log::FilterReload::Changed(old, new)) => {
            changed.push(format!("log.filter: {old:?} -> {new:?}"))
        }
        Ok(log::FilterReload::SetByEnvironment(var, filter)) => {
            if !config.log.filter.is_empty() && config.log.filter != filter {
                not_reloaded.push(format!(
                    "log.filter {:?} (the daemon's environment sets {var}={filter:?}, which takes precedence; remove it from the environment to use config.toml's filter)",
                    config.log.filter
                ));
            }
        }
        Err(e) => not_reloaded.push(format!("{e:#} (the filter in force stays)")),
    }
    match apply_config_bandwidth(&what.site) {
        Ok(bandwidth) => what.repl.reload(bandwidth),
        Err(e) => not_reloaded.push(format!("replication.bandwidth_bytes_per_sec: {e:#}")),
    }
    if let Some(served) = &what.api_certificate {
        match reload_api_certificate(&what.site, served) {
            Ok(Some(change)) => changed.push(change),
            Ok(None) => {}
            Err(e) => not_reloaded.push(format!(
                "the API certificate: {e:#} (the one in force stays)"
            )),
        }
    }
    if changed.is_empty() {
        tracing::info!("configuration reloaded: nothing changed");
    } else {
        tracing::info!("configuration reloaded: {}", changed.join(", "));
    }
    for n in not_reloaded {
        tracing::warn!("configuration reloaded, except {n}");
    }
}

/// `[api_tls] mode = "files"`: re-reads the operator's certificate and key
/// (renewed in place, as ACME clients and CAs' tools do) and serves them
/// to new connections if they changed, with `site show` and
/// `run/daemon.json` following; returns what changed. The self-signed
/// certificate is the site's own and changes only when deleted, at a
/// start.
fn reload_api_certificate(
    site: &Site,
    served: &ServedCertificate,
) -> anyhow::Result<Option<String>> {
    let config = site.config();
    if config.api_tls.mode != ApiTlsMode::Files {
        return Ok(None);
    }
    let Some(certificate) = offsite_engine::api_tls::load(site.layout(), &config.api_tls)? else {
        return Ok(None);
    };
    let new = certificate.fingerprint().to_string();
    let Some(old) = served.replace(certificate) else {
        return Ok(None);
    };
    let mut bound = site.bound();
    bound.api_fingerprint = Some(new.clone());
    let listening = bound.api.is_some();
    site.set_bound(bound);
    // Before the listener is bound, `serve` writes the file itself.
    if listening {
        write_daemon_info(site)?;
    }
    Ok(Some(format!("API certificate: {old} -> {new}")))
}

/// Puts `replication.bandwidth_bytes_per_sec` of the configuration in force
/// (if set) as the site's default limit, as `site set --bandwidth` would
/// (stored in the catalog, so `site set` shows it); returns the limit in
/// force (`None`: unlimited).
fn apply_config_bandwidth(site: &Site) -> anyhow::Result<Option<u64>> {
    let settings = site.settings().context("reading the site settings")?;
    if let Some(want) = site.config().replication.bandwidth_bytes_per_sec
        && settings.bandwidth_bytes_per_sec != Some(want).filter(|b| *b > 0)
    {
        let update = offsite_engine::UpdateSiteSettings {
            bandwidth_bytes_per_sec: Some(want),
            ..Default::default()
        };
        let s = site
            .update_settings(&update)
            .context("storing the bandwidth limit")?;
        return Ok(s.bandwidth_bytes_per_sec);
    }
    Ok(settings.bandwidth_bytes_per_sec)
}

/// umask 077 for the daemon's lifetime: every file and directory it
/// creates (VM disk images, change-tracking files, replica stores and their
/// segments, the catalog's WAL, reports, seeds) is for the site's user only,
/// wherever in the code it is created and whatever umask the daemon was
/// started with (a shell's 022 would make VM disks world-readable). One
/// process-wide setting is the only way to cover files created by SQLite
/// and by every crate without threading a mode through each of them; the
/// helpers that create files also set 0600/0700 explicitly, for callers
/// other than the daemon. VM hooks inherit it (the unit sets the same).
fn private_files() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
}

/// Sites created before files were private have a 0755 data directory:
/// taking group and other access away from it protects everything below
/// at once (existing files keep their modes, but nobody else can reach
/// them).
fn restrict_site_dir(layout: &Layout) {
    use std::os::unix::fs::PermissionsExt;
    let root = layout.root();
    let Ok(meta) = std::fs::metadata(root) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        match std::fs::set_permissions(
            root,
            std::fs::Permissions::from_mode(offsite_volume_file::PRIVATE_DIR_MODE),
        ) {
            Ok(()) => tracing::warn!(
                "the data directory {} was accessible to other users (mode {mode:o}); it is 700 now",
                root.display()
            ),
            Err(e) => tracing::warn!(
                "the data directory {} is accessible to other users (mode {mode:o}) and cannot be restricted: {e}; run `chmod 700 {}`",
                root.display(),
                root.display()
            ),
        }
    }
}

/// Holds `run/lock` for the daemon's lifetime: a second daemon on the same
/// directory would corrupt tracking state.
fn lock(layout: &Layout) -> anyhow::Result<std::fs::File> {
    use rustix::fs::{FlockOperation, flock};
    if !layout.config().exists() {
        bail!(
            "{} is not an offsite data directory; create one with `offsite site init --dir {} --name NAME`",
            layout.root().display(),
            layout.root().display()
        );
    }
    offsite_volume_file::create_private_dir_all(&layout.run_dir())
        .with_context(|| format!("creating {}", layout.run_dir().display()))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(layout.lock())
        .with_context(|| format!("opening {}", layout.lock().display()))?;
    if flock(file.as_fd(), FlockOperation::NonBlockingLockExclusive).is_err() {
        bail!(
            "another `offsite serve` is already running on {}; stop it first",
            layout.root().display()
        );
    }
    Ok(file)
}

struct ReplMetrics(Arc<Replication>);

impl MetricsSource for ReplMetrics {
    fn render(&self, out: &mut String) {
        let Some(s) = self.0.listener_stats() else {
            return;
        };
        let one = |v: u64| [(String::new(), v)];
        use offsite_api::metrics_family as f;
        f(
            out,
            "offsite_repl_connections_total",
            "counter",
            "Connections accepted by the replication listener.",
            &one(s.connections()),
        );
        f(
            out,
            "offsite_repl_tls_refused_total",
            "counter",
            "Replication connections refused during TLS (certificate not pinned).",
            &one(s.tls_refused()),
        );
        f(
            out,
            "offsite_repl_hello_failed_total",
            "counter",
            "Replication connections refused at the hello (version or name).",
            &one(s.hello_failed()),
        );
        f(
            out,
            "offsite_repl_sessions_total",
            "counter",
            "Replication sessions established.",
            &one(s.sessions()),
        );
        offsite_api::group_families(out, &self.0.group_metrics());
    }
}

struct NbdMetrics(Arc<ServerStats>);

impl MetricsSource for NbdMetrics {
    fn render(&self, out: &mut String) {
        let s = self.0.snapshot();
        let one = |v: u64| [(String::new(), v)];
        use offsite_api::metrics_family as f;
        f(
            out,
            "offsite_nbd_connections_active",
            "gauge",
            "Open NBD connections.",
            &one(s.connections_active),
        );
        f(
            out,
            "offsite_nbd_connections_total",
            "counter",
            "NBD connections accepted.",
            &one(s.connections_total),
        );
        f(
            out,
            "offsite_nbd_connections_refused_total",
            "counter",
            "NBD connections refused over the limit.",
            &one(s.refused_connections),
        );
        f(
            out,
            "offsite_nbd_reads_total",
            "counter",
            "NBD read requests.",
            &one(s.reads),
        );
        f(
            out,
            "offsite_nbd_writes_total",
            "counter",
            "NBD write requests.",
            &one(s.writes),
        );
        f(
            out,
            "offsite_nbd_flushes_total",
            "counter",
            "NBD flush requests.",
            &one(s.flushes),
        );
        f(
            out,
            "offsite_nbd_trims_total",
            "counter",
            "NBD trim requests.",
            &one(s.trims),
        );
        f(
            out,
            "offsite_nbd_write_zeroes_total",
            "counter",
            "NBD write-zeroes requests.",
            &one(s.write_zeroes),
        );
        f(
            out,
            "offsite_nbd_read_bytes_total",
            "counter",
            "Bytes read over NBD (data sent; holes in structured replies are not).",
            &one(s.bytes_read),
        );
        f(
            out,
            "offsite_nbd_hole_bytes_total",
            "counter",
            "Bytes of NBD reads answered as holes, neither read nor sent.",
            &one(s.hole_bytes),
        );
        f(
            out,
            "offsite_nbd_block_status_total",
            "counter",
            "NBD block-status requests.",
            &one(s.block_status),
        );
        f(
            out,
            "offsite_nbd_cache_total",
            "counter",
            "NBD cache requests.",
            &one(s.caches),
        );
        f(
            out,
            "offsite_nbd_written_bytes_total",
            "counter",
            "Bytes written over NBD.",
            &one(s.bytes_written),
        );
        f(
            out,
            "offsite_nbd_errors_total",
            "counter",
            "NBD requests answered with an error.",
            &one(s.errors),
        );
    }
}
