//! `offsite serve`: composes a site's front ends around its engine.
//!
//! Start-up: take the data directory's lock (one daemon per directory),
//! open the [`Site`] (which recovers change tracking after a crash), bind
//! the NBD and API listeners, publish the bound addresses in
//! `run/daemon.json` (durably, so tests and the CLI find ephemeral ports),
//! then serve until SIGTERM or SIGINT.
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
use offsite_api::{ApiState, MetricsSource};
use offsite_engine::{BoundAddresses, Site, config::parse_addr, layout::Layout};
use offsite_nbd::{NbdServer, ServerConfig, ServerStats};
use offsite_repl::Replication;
use std::time::Duration;

/// Runs the daemon for the site in `dir` until a termination signal.
pub fn run(dir: &Path) -> anyhow::Result<()> {
    // A file grown past RLIMIT_FSIZE must fail that one request with EFBIG
    // (the volume store explains the limit), not kill the daemon with
    // SIGXFSZ's default action.
    // SAFETY: signal(2) with a valid signal number and SIG_IGN, before any
    // other thread of ours exists.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let layout = Layout::new(dir);
    let _lock = lock(&layout)?;
    let site = Site::open(dir).with_context(|| format!("opening the site in {}", dir.display()))?;
    let config = site.config().clone();

    let nbd_addr = parse_addr(&config.nbd).map_err(anyhow::Error::msg)?;
    let nbd_listener = TcpListener::bind(nbd_addr).with_context(|| {
        format!("binding the NBD listener to {nbd_addr} (config.toml `nbd`); is the port in use?")
    })?;
    let nbd = NbdServer::start(nbd_listener, site.clone(), ServerConfig::default())
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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("offsite-api")
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async {
        let r = &config.replication;
        let mut options = offsite_transport::SessionOptions::default();
        options.connect_timeout = Duration::from_secs_f64(r.connect_timeout_secs);
        options.keepalive_interval = Duration::from_secs_f64(r.keepalive_secs);
        options.dead_after = Duration::from_secs_f64(r.dead_after_secs);
        let repl = Replication::new(site.clone(), options).context("starting the replication service")?;
        // Before the listener runs: the partner's plan requests need it.
        let plans = offsite_plan::Plans::new(site.clone(), repl.clone());
        let listen_addr = parse_addr(&config.listen).map_err(anyhow::Error::msg)?;
        let repl_listener = tokio::net::TcpListener::bind(listen_addr).await.with_context(|| {
            format!("binding the replication listener to {listen_addr} (config.toml `listen`); is the port in use?")
        })?;
        let listen_bound = repl_listener.local_addr()?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        repl.start_runners().await.context("starting replication groups")?;
        site.start_flattener();
        repl.restore_failovers()
            .await
            .context("exporting the clones of running test failovers")?;
        let repl_task = tokio::spawn(repl.clone().serve(repl_listener, stopped(stop_rx.clone())));
        let monitor_task = tokio::spawn(
            repl.clone()
                .monitor(Duration::from_secs_f64(r.probe_secs), stopped(stop_rx.clone())),
        );

        let api_addr = parse_addr(&config.api).map_err(anyhow::Error::msg)?;
        let api_listener = tokio::net::TcpListener::bind(api_addr)
            .await
            .with_context(|| format!("binding the API listener to {api_addr} (config.toml `api`); is the port in use?"))?;
        let api_bound = api_listener.local_addr()?;
        site.set_bound(BoundAddresses {
            listen: Some(listen_bound),
            api: Some(api_bound),
            nbd: Some(nbd_bound),
        });
        let token = std::fs::read_to_string(layout.token())
            .with_context(|| format!("reading the API token {}", layout.token().display()))?;
        let metrics: Vec<Arc<dyn MetricsSource>> = vec![
            Arc::new(NbdMetrics(nbd_stats)),
            Arc::new(ReplMetrics(repl.clone())),
        ];
        let state = ApiState::new(site.clone(), repl.clone(), plans, &token, metrics);

        let info = serde_json::json!({
            "pid": std::process::id(),
            "api": api_bound.to_string(),
            "nbd": nbd_bound.to_string(),
            "listen": site.info().listen,
        });
        offsite_store::write_durably(&layout.daemon_info(), info.to_string().as_bytes(), 0o644)
            .with_context(|| format!("writing {}", layout.daemon_info().display()))?;
        tracing::info!(site = %config.name, api = %api_bound, nbd = %nbd_bound, listen = %listen_bound, "site is serving");

        let served = offsite_api::serve(api_listener, state, shutdown_signal())
            .await
            .context("serving the API");
        let _ = stop_tx.send(true);
        for task in [repl_task] {
            match task.await {
                Ok(Err(e)) => tracing::error!("replication listener: {e}"),
                Err(e) => tracing::error!("replication listener task: {e}"),
                Ok(Ok(())) => {}
            }
        }
        let _ = monitor_task.await;
        served
    });

    tracing::info!("shutting down: draining NBD connections");
    if let Some(server) = nbd.lock().unwrap_or_else(|e| e.into_inner()).take() {
        server.shutdown();
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    let closed = site.close().context("closing volumes");
    let _ = std::fs::remove_file(layout.daemon_info());
    result?;
    closed?;
    tracing::info!("site stopped cleanly");
    Ok(())
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
    std::fs::create_dir_all(layout.run_dir())
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
        self.0.render_metrics(out);
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
            "Bytes read over NBD.",
            &one(s.bytes_read),
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
