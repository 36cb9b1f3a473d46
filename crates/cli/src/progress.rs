//! Progress of long-running commands on a terminal: initial replication,
//! imports, resync and reverse draw bytes, rate and ETA from the site's
//! status while the call runs; without a terminal (or with `--json`) they
//! wait quietly.

use std::io::IsTerminal;
use std::time::Duration;

use offsite_api_types::VolumeInfo;
use offsite_client::Client;

use crate::output::Printer;
use crate::{args, client, units};

/// Polls initial replication until it ends, with a progress bar on a terminal.
pub(crate) fn wait_initial(
    c: &Client,
    mut st: offsite_api_types::GroupStatus,
    p: &Printer,
) -> anyhow::Result<offsite_api_types::GroupStatus> {
    // In bytes of data, with the daemon's rate and ETA (as `volume create
    // --import` shows its copy): holes are skipped, so a percentage of the
    // volumes' size would race to the end and then stall.
    let bar = (!p.json() && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "initial replication {prefix} [{bar:40}] {bytes}/{total_bytes} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(st.name.clone());
        bar
    });
    use offsite_catalog::GroupState;
    while st.state == GroupState::InitialReplication.as_str()
        || (st.state == GroupState::Replicating.as_str() && st.last_pit.is_none())
    {
        std::thread::sleep(Duration::from_millis(250));
        st = c.group(&st.name)?;
        if let (Some(bar), Some(t)) = (&bar, &st.transfer) {
            bar.set_length(t.bytes_total);
            bar.set_position(t.bytes_done);
            bar.set_message(format!(
                "{}/s, eta {}",
                units::human(t.bytes_per_second),
                t.eta_seconds
                    .map_or_else(|| "-".to_string(), |e| format!("{e}s"))
            ));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(st)
}

/// Runs `job` (a request that moves data) on a thread while this one shows
/// the group's `transfer` from `group status` on a terminal: bytes, rate
/// and ETA.
pub(crate) fn with_transfer_bar<T: Send>(
    global: &args::Global,
    group: &str,
    what: &str,
    p: &Printer,
    job: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let template = format!("{what} {group} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{msg}}");
    with_status_bar(global, group, &template, p, job, |st, bar| {
        if let Some(t) = &st.transfer {
            bar.set_length(t.bytes_total);
            bar.set_position(t.bytes_done);
            bar.set_message(format!(
                "{}/s, eta {}",
                units::human(t.bytes_per_second),
                t.eta_seconds
                    .map_or_else(|| "-".to_string(), |e| format!("{e}s"))
            ));
        }
    })
}

/// `group resync`: the request runs on a thread while this one shows the
/// comparison's progress (blocks compared of all, differing, bytes sent)
/// from `group status` on a terminal.
pub(crate) fn resync(
    c: &Client,
    global: &args::Global,
    name: &str,
    p: &Printer,
) -> anyhow::Result<offsite_api_types::ResyncResult> {
    let template =
        format!("resync {name} [{{bar:40}}] {{pos}}/{{len}} blocks compared, {{msg}} eta {{eta}}");
    with_status_bar(
        global,
        name,
        &template,
        p,
        || Ok(c.resync(name)?),
        |st, bar| {
            if let Some(r) = &st.resync {
                bar.set_length(r.blocks_total);
                bar.set_position(r.blocks_compared);
                bar.set_message(format!(
                    "{} differ, {} sent",
                    r.differing_blocks,
                    units::human(r.bytes_sent)
                ));
            }
        },
    )
}

/// Runs `job` on a thread; meanwhile, on a terminal, polls `group status`
/// of `group` and lets `update` draw it on a progress bar of `template`.
/// With --json or without a terminal, just runs `job`.
pub(crate) fn with_status_bar<T: Send>(
    global: &args::Global,
    group: &str,
    template: &str,
    p: &Printer,
    job: impl FnOnce() -> anyhow::Result<T> + Send,
    update: impl Fn(&offsite_api_types::GroupStatus, &indicatif::ProgressBar),
) -> anyhow::Result<T> {
    if p.json() || !std::io::stderr().is_terminal() {
        return job();
    }
    let poller = client(global)?;
    std::thread::scope(|s| {
        let job = s.spawn(job);
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(template)
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        while !job.is_finished() {
            if let Ok(st) = poller.group(group) {
                update(&st, &bar);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bar.finish_and_clear();
        job.join()
            .map_err(|_| anyhow::anyhow!("the request's thread panicked"))?
    })
}

/// Polls an import until it ends, with a progress bar on a terminal.
pub(crate) fn wait_import(
    c: &Client,
    mut v: VolumeInfo,
    p: &Printer,
) -> anyhow::Result<VolumeInfo> {
    let bar = (!p.json() && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(v.size_bytes);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "importing {msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(v.name.clone());
        bar
    });
    while v.state == "importing" {
        std::thread::sleep(Duration::from_millis(200));
        v = c.volume(&v.name)?;
        if let (Some(bar), Some(imp)) = (&bar, &v.import) {
            bar.set_position(imp.copied_bytes);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if v.state != "ready" {
        let why = v
            .import
            .as_ref()
            .and_then(|i| i.error.clone())
            .unwrap_or_else(|| format!("volume is {}", v.state));
        anyhow::bail!("{why}");
    }
    Ok(v)
}
