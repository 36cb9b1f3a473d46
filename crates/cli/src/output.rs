//! What the CLI prints: aligned tables for people, JSON for scripts
//! (`--json`; field names per docs/design.md §4 are stable).

use std::io::Write;
use std::path::Path;

use offsite_api_types::{
    AuthzEntry, Event, PartnerInfo, SiteInfo, SiteSettings, VolumeInfo, VolumeUrl,
};
use serde::Serialize;

use crate::units::human;

/// Prints results in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    json: bool,
}

/// Whether an error is a write to a closed pipe (`offsite ... | head`).
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout as is.
pub fn emit_text(text: &str) -> anyhow::Result<()> {
    emit(text)
}

/// Whether anything was written to stdout (a command that fails after
/// printing its result must not print a second JSON document).
static PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the command has printed its result.
pub fn printed() -> bool {
    PRINTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Prints a failed command's error as JSON on stdout (`--json`):
/// `{"error": {"code": ..., "message": ..., "status": ...}}`, the code
/// being the API's when the site answered with an error (`status` is then
/// its HTTP status), `usage` for a malformed command line.
pub fn emit_error(code: &str, message: &str, status: Option<u16>) -> anyhow::Result<()> {
    let mut error = serde_json::json!({ "code": code, "message": message });
    if let Some(s) = status {
        error["status"] = s.into();
    }
    emit(&format!(
        "{}\n",
        serde_json::to_string_pretty(&serde_json::json!({ "error": error }))?
    ))
}

fn emit(text: &str) -> anyhow::Result<()> {
    PRINTED.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// A PIT's consistency, as `pit list` prints it.
fn consistency(app_consistent: bool) -> &'static str {
    if app_consistent {
        "app-consistent"
    } else {
        "crash-consistent"
    }
}

/// Left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{c:<w$}", w = widths[i]));
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

fn fields(pairs: &[(&str, String)]) -> String {
    let w = pairs.iter().map(|(k, _)| k.len() + 1).max().unwrap_or(0);
    pairs
        .iter()
        .map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:")))
        .collect()
}

impl Printer {
    pub fn new(json: bool) -> Printer {
        Printer { json }
    }

    pub fn json(&self) -> bool {
        self.json
    }

    fn print_json<T: Serialize + ?Sized>(&self, v: &T) -> anyhow::Result<()> {
        emit(&format!("{}\n", serde_json::to_string_pretty(v)?))
    }

    pub fn done(&self, text: &str, json: serde_json::Value) -> anyhow::Result<()> {
        if self.json {
            self.print_json(&json)
        } else {
            emit(&format!("{text}\n"))
        }
    }

    pub fn site_init(
        &self,
        dir: &Path,
        r: &offsite_engine::init::InitReport,
    ) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(&serde_json::json!({
                "name": r.config.name,
                "fingerprint": r.fingerprint,
                "dir": dir.display().to_string(),
                "listen": r.config.listen,
                "api": r.config.api,
                "api_tls": r.config.api_tls.mode.as_str(),
                "api_fingerprint": r.api_fingerprint,
                "nbd": r.config.nbd,
            }));
        }
        let mut f = vec![
            ("fingerprint", r.fingerprint.clone()),
            ("listen", r.config.listen.clone()),
            ("api", r.config.api.clone()),
            ("api tls", r.config.api_tls.mode.to_string()),
        ];
        if let Some(fp) = &r.api_fingerprint {
            f.push(("api fingerprint", fp.clone()));
        }
        f.push(("nbd", r.config.nbd.clone()));
        emit(&format!(
            "created site {} in {}\n{}start it with: offsite serve --dir {}\n",
            r.config.name,
            dir.display(),
            fields(&f),
            dir.display()
        ))
    }

    pub fn site(&self, s: &SiteInfo) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(s);
        }
        let mut f = vec![
            ("name", s.name.clone()),
            ("fingerprint", s.fingerprint.clone()),
            ("listen", s.listen.clone()),
            ("api", s.api.clone()),
            ("api url", s.api_url.clone()),
            ("api tls", s.api_tls.clone()),
        ];
        if let Some(fp) = &s.api_fingerprint {
            f.push(("api fingerprint", fp.clone()));
        }
        f.extend([
            ("nbd", s.nbd.clone()),
            ("version", s.version.clone()),
            ("data dir", s.data_dir.clone()),
        ]);
        emit(&fields(&f))
    }

    pub fn volume(&self, v: &VolumeInfo) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(v);
        }
        let mut f = vec![
            ("name", v.name.clone()),
            (
                "size",
                format!("{} ({} bytes)", human(v.size_bytes), v.size_bytes),
            ),
            ("block size", human(u64::from(v.block_size))),
            (
                "dirty",
                format!("{} ({} bytes)", human(v.dirty_bytes), v.dirty_bytes),
            ),
            ("role", v.role.clone()),
            ("state", v.state.clone()),
            ("created", v.created_at.clone()),
            ("connections", v.connections.to_string()),
            ("url", v.url.clone()),
            ("nbd tls", v.nbd_tls.clone()),
        ];
        if let Some(imp) = &v.import {
            f.push((
                "import",
                format!("{} of {}", human(imp.copied_bytes), human(imp.total_bytes)),
            ));
            if let Some(e) = &imp.error {
                f.push(("import error", e.clone()));
            }
        }
        if let Some(h) = &v.hydration {
            f.push((
                "local",
                format!(
                    "{} of {} ({:.1} %; the rest is read from its PIT)",
                    human(h.local_bytes),
                    human(h.total_bytes),
                    h.local_bytes as f64 * 100.0 / h.total_bytes.max(1) as f64
                ),
            ));
        }
        emit(&fields(&f))
    }

    pub fn volumes(&self, vs: &[VolumeInfo]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(vs);
        }
        if vs.is_empty() {
            return emit("no volumes; create one with `offsite volume create NAME --size 10G`\n");
        }
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    human(v.size_bytes),
                    human(v.dirty_bytes),
                    v.role.clone(),
                    v.state.clone(),
                    v.connections.to_string(),
                    v.url.clone(),
                ]
            })
            .collect();
        emit(&table(
            &["NAME", "SIZE", "DIRTY", "ROLE", "STATE", "CONN", "URL"],
            &rows,
        ))
    }

    pub fn url(&self, u: &VolumeUrl) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(u);
        }
        emit(&format!("{}\n", u.url))
    }

    pub fn settings(&self, s: &SiteSettings) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(s);
        }
        emit(&fields(&[
            ("allow any partner", s.allow_any_partner.to_string()),
            (
                "default storage location",
                s.default_storage_location.clone(),
            ),
            (
                "bandwidth",
                s.bandwidth_bytes_per_sec
                    .map_or("unlimited".into(), |b| format!("{}/s", human(b))),
            ),
        ]))
    }

    pub fn partner(&self, pi: &PartnerInfo) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(pi);
        }
        emit(&format!(
            "partner {} pinned at {} ({}); run `offsite partner add` on {} too, naming this site\n",
            pi.name, pi.address, pi.fingerprint, pi.name
        ))
    }

    pub fn partners(&self, ps: &[PartnerInfo]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(ps);
        }
        if ps.is_empty() {
            return emit(
                "no partners; pair with `offsite partner add NAME --address HOST:PORT --fingerprint FP`\n",
            );
        }
        let rows: Vec<Vec<String>> = ps
            .iter()
            .map(|pi| {
                vec![
                    pi.name.clone(),
                    pi.address.clone(),
                    if pi.reachable {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    pi.last_handshake_at
                        .clone()
                        .unwrap_or_else(|| "never".into()),
                    pi.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms")),
                    pi.last_error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        emit(&table(
            &[
                "NAME",
                "ADDRESS",
                "REACHABLE",
                "LAST HANDSHAKE",
                "RTT",
                "LAST ERROR",
            ],
            &rows,
        ))
    }

    pub fn group(&self, g: &offsite_api_types::GroupStatus) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(g);
        }
        let mut f = vec![
            ("name", g.name.clone()),
            ("role", format!("{} (partner {})", g.role, g.partner)),
            (
                "mode",
                match (g.mode.as_str(), g.seal_interval_seconds) {
                    ("continuous", Some(seal)) => format!(
                        "continuous (writes streamed as they happen; sealed every {seal}s), keep {}",
                        g.keep
                    ),
                    (_, Some(seal)) => {
                        format!("{}, RPO 0 (sealed every {seal}s), keep {}", g.mode, g.keep)
                    }
                    (_, None) => format!("{}, RPO {}s, keep {}", g.mode, g.rpo_seconds, g.keep),
                },
            ),
            (
                "state",
                match &g.sync_state {
                    Some(s) if g.mode == "continuous" => format!("{} (stream: {s})", g.state),
                    Some(s) => format!(
                        "{} (sync: {s}; on link loss: {})",
                        g.state,
                        g.on_link_loss.as_deref().unwrap_or("degrade")
                    ),
                    None => g.state.clone(),
                },
            ),
            (
                "health",
                match &g.health_reason {
                    Some(r) => format!("{} ({r})", g.health),
                    None => g.health.clone(),
                },
            ),
            ("volumes", g.volumes.join(", ")),
            (
                "last PIT",
                g.last_pit.as_ref().map_or("none".into(), |p| {
                    format!(
                        "{}{} at {}",
                        p.id,
                        p.name.as_ref().map_or(String::new(), |n| format!(" ({n})")),
                        p.created_at
                    )
                }),
            ),
            (
                "lag",
                match g.continuous_lag_seconds {
                    // Continuous: the seconds of writes the replica lacks.
                    Some(l) => format!("{l:.1}s of writes not yet on the replica"),
                    None => format!("{}s", g.lag_seconds),
                },
            ),
            ("pending", human(g.pending_bytes)),
        ];
        if let Some(at) = &g.confirmed_at {
            f.push(("confirmed in sync", at.clone()));
        }
        if let Some(why) = &g.needs_resync {
            f.push(("needs resync", why.clone()));
        }
        f.push((
            "last test drill",
            g.last_drill_at.clone().unwrap_or_else(|| {
                "never (run `offsite failover run --test` at the replica's site)".into()
            }),
        ));
        // Only for groups that take application-consistent PITs.
        let every = g
            .app_consistent_every_seconds
            .map_or(String::new(), |e| format!("; one every {e}s"));
        match (&g.last_app_consistent_pit, g.app_consistent_age_seconds) {
            (Some(p), age) => f.push((
                "app-consistent",
                format!(
                    "PIT {}{} at {}{}{every}",
                    p.id,
                    p.name.as_ref().map_or(String::new(), |n| format!(" ({n})")),
                    p.created_at,
                    age.map_or(String::new(), |a| format!(", {a}s ago"))
                ),
            )),
            (None, _) if !every.is_empty() || g.quiesce_error.is_some() => f.push((
                "app-consistent",
                format!(
                    "none yet (`offsite sync {} --quiesce` takes one){every}",
                    g.name
                ),
            )),
            (None, _) => {}
        }
        if let Some(why) = &g.quiesce_error {
            f.push(("quiesce failed", why.clone()));
        }
        if let Some(j) = &g.journal {
            f.push((
                "journal",
                format!(
                    "a checkpoint every {}, {} of history, at most {}",
                    millis(j.checkpoint_interval_ms),
                    seconds(j.history_seconds),
                    human(j.max_bytes)
                ),
            ));
            f.push((
                "journal window",
                match (&j.oldest_checkpoint_at, &j.newest_checkpoint_at) {
                    (Some(o), Some(n)) => format!(
                        "{o} .. {n} ({} checkpoints)",
                        j.checkpoints.unwrap_or_default()
                    ),
                    _ if g.role == offsite_catalog::Role::Primary.as_str() => {
                        "not reported yet (the replica reports it at each seal; `offsite pit list NAME --checkpoints` asks it)".into()
                    }
                    _ => "no checkpoint yet".into(),
                },
            ));
        }
        if let Some(r) = &g.resync {
            f.push((
                "resync",
                format!(
                    "{} of {} blocks compared, {} differ, {} sent",
                    r.blocks_compared,
                    r.blocks_total,
                    r.differing_blocks,
                    human(r.bytes_sent)
                ),
            ));
        }
        if g.role == offsite_catalog::Role::Primary.as_str() {
            // The replica sends nothing in bulk: these are the primary's.
            f.insert(
                6,
                (
                    "transfer",
                    format!(
                        "{}, {}",
                        if g.compress { "zstd" } else { "uncompressed" },
                        g.bandwidth_bytes_per_sec.map_or(
                            "no group bandwidth limit".into(),
                            |b| format!("at most {}/s", human(b))
                        )
                    ),
                ),
            );
        }
        if let Some(pct) = g.initial_progress_percent {
            f.push((
                "initial replication",
                format!(
                    "{pct:.1}%{}{}{}",
                    g.transfer.as_ref().map_or(String::new(), |t| format!(
                        " ({} of {} of data, {}/s)",
                        human(t.bytes_done),
                        human(t.bytes_total),
                        human(t.bytes_per_second)
                    )),
                    g.initial_durable_bytes
                        .map_or(String::new(), |d| format!(", {} durable", human(d))),
                    g.eta_seconds
                        .map_or(String::new(), |e| format!(", eta {e}s"))
                ),
            ));
        }
        if let Some(e) = &g.last_error {
            f.push(("last error", e.clone()));
        }
        if let Some(d) = &g.store_dir {
            f.push(("replica store", d.clone()));
        }
        f.push((
            "encrypted",
            match &g.key_id {
                Some(id) if g.encrypted => format!("true (key {id})"),
                _ => "false".to_string(),
            },
        ));
        emit(&fields(&f))
    }

    pub fn groups(&self, gs: &[offsite_api_types::GroupStatus]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(gs);
        }
        if gs.is_empty() {
            return emit(
                "no replication groups; create one with `offsite group create NAME --partner SITE --vm VM`\n",
            );
        }
        let rows: Vec<Vec<String>> = gs
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    g.role.clone(),
                    g.partner.clone(),
                    g.mode.clone(),
                    g.state.clone(),
                    g.health.clone(),
                    g.last_pit.as_ref().map_or("-".into(), |p| p.id.to_string()),
                    format!("{}s", g.lag_seconds),
                ]
            })
            .collect();
        emit(&table(
            &[
                "NAME", "ROLE", "PARTNER", "MODE", "STATE", "HEALTH", "LAST PIT", "LAG",
            ],
            &rows,
        ))
    }

    pub fn measure(&self, m: &offsite_api_types::GroupMeasure) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(m);
        }
        emit(&fields(&[
            ("name", m.name.clone()),
            ("cycles", format!("{} ({} failed)", m.cycles, m.errors)),
            ("last cycle", human(m.last_cycle_bytes)),
            ("average cycle", human(m.avg_cycle_bytes)),
            ("largest cycle", human(m.max_cycle_bytes)),
            (
                "moved",
                format!(
                    "{} ({})",
                    human(m.bytes_total),
                    m.bytes_by_kind
                        .iter()
                        .filter(|(_, b)| **b > 0)
                        .map(|(k, b)| format!("{k} {}", human(*b)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            (
                "RPO",
                format!(
                    "{}s, {:.1}% compliant",
                    m.rpo_seconds, m.rpo_compliance_percent
                ),
            ),
            ("lag", format!("{}s", m.lag_seconds)),
            ("pending", human(m.pending_bytes)),
        ]))
    }

    pub fn pits(&self, ps: &[offsite_api_types::PitEntry]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(ps);
        }
        if ps.is_empty() {
            return emit("no PITs yet\n");
        }
        let rows: Vec<Vec<String>> = ps
            .iter()
            .map(|p| {
                vec![
                    p.id.to_string(),
                    p.name.clone().unwrap_or_else(|| "-".into()),
                    p.created_at.clone(),
                    human(p.bytes),
                    consistency(p.app_consistent).into(),
                ]
            })
            .collect();
        // The new column goes last: scripts that read the text by column
        // position keep working.
        emit(&table(
            &["ID", "NAME", "CREATED", "BYTES", "CONSISTENCY"],
            &rows,
        ))
    }

    pub fn checkpoints(&self, l: &offsite_api_types::JournalListing) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(l);
        }
        let at = |c: &Option<offsite_api_types::CheckpointEntry>| {
            c.as_ref()
                .map_or_else(|| "-".to_string(), |c| format!("{} (id {})", c.time, c.id))
        };
        let mut out = format!(
            "journal of group {} at site {}:\n  checkpoints: {} ({} app-consistent)\n  oldest:      {}\n  newest:      {}\n  journal:     {} in {} files\n",
            l.group,
            l.site,
            l.count,
            l.application_consistent,
            at(&l.oldest),
            at(&l.newest),
            human(l.bytes),
            l.files
        );
        if !l.checkpoints.is_empty() {
            let rows: Vec<Vec<String>> = l
                .checkpoints
                .iter()
                .map(|c| {
                    vec![
                        c.id.to_string(),
                        c.time.clone(),
                        c.consistency.clone(),
                        c.name.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            out.push_str(&table(&["ID", "TIME", "CONSISTENCY", "NAME"], &rows));
        }
        emit(&out)
    }

    pub fn pit_export(&self, e: &offsite_api_types::PitExport) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(e);
        }
        let rows: Vec<Vec<String>> = e
            .volumes
            .iter()
            .map(|v| vec![v.name.clone(), v.url.clone()])
            .collect();
        let what = match &e.point {
            Some(point) => point_text(point),
            None => format!("PIT {}", e.pit),
        };
        emit(&format!(
            "{what} of group {} exported read-only:\n{}",
            e.group,
            table(&["VOLUME", "URL"], &rows)
        ))
    }

    pub fn failover(&self, r: &offsite_api_types::FailoverResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = match r.mode.as_str() {
            "prepare" => format!(
                "group {}: prepared for failover, final PIT {} ({} ms); run `offsite failover run {}` at the replica\n",
                r.group, r.pit, r.duration_ms, r.group
            ),
            "commit" => format!("group {}: failover from PIT {} committed\n", r.group, r.pit),
            "revert" => format!(
                "group {}: failover reverted ({} ms)\n",
                r.group, r.duration_ms
            ),
            "stop-test" => format!(
                "group {}: test failover of PIT {} stopped, clones discarded ({} ms)\n",
                r.group, r.pit, r.duration_ms
            ),
            m => match &r.point {
                Some(point) => format!(
                    "group {}: {m} failover from {} ({} ms)\n",
                    r.group,
                    point_text(point),
                    r.duration_ms
                ),
                None => format!(
                    "group {}: {m} failover from PIT {} ({} ms)\n",
                    r.group, r.pit, r.duration_ms
                ),
            },
        };
        if !matches!(r.mode.as_str(), "stop-test" | "commit" | "revert") {
            let rows: Vec<Vec<String>> = r
                .volumes
                .iter()
                .map(|v| vec![v.name.clone(), v.url.clone()])
                .collect();
            out.push_str(&table(&["VOLUME", "URL"], &rows));
        }
        for h in &r.vms {
            out.push_str(&format!(
                "VM {}: {} hook exited {} in {} ms\n",
                h.vm,
                h.action,
                h.exit_code.map_or("?".into(), |c| c.to_string()),
                h.duration_ms
            ));
        }
        emit(&format!("{}\n", out.trim_end()))
    }

    pub fn store_attached(&self, r: &offsite_api_types::StoreAttached) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = String::new();
        if r.groups.is_empty() {
            out.push_str("no group's store was found at that location\n");
        } else {
            let rows: Vec<Vec<String>> = r
                .groups
                .iter()
                .map(|g| {
                    vec![
                        g.group.clone(),
                        kebab(&g.action),
                        g.primary.clone().unwrap_or_default(),
                        g.pits.to_string(),
                        g.detail.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(
                &["GROUP", "ACTION", "PRIMARY", "PITS", "DETAIL"],
                &rows,
            ));
        }
        if !r.plans.is_empty() {
            let rows: Vec<Vec<String>> = r
                .plans
                .iter()
                .map(|p| {
                    vec![
                        p.plan.clone(),
                        if p.adopted { "adopted" } else { "not adopted" }.to_string(),
                        p.detail.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["PLAN", "STATE", "DETAIL"], &rows));
        }
        emit(&out)
    }

    pub fn partner_replaced(&self, r: &offsite_api_types::PartnerReplaced) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = format!(
            "partner {} pinned to {} at {}\n",
            r.partner.name, r.partner.fingerprint, r.partner.address
        );
        if r.groups.is_empty() {
            out.push_str("no group is shared with it\n");
        } else {
            let rows: Vec<Vec<String>> = r
                .groups
                .iter()
                .map(|g| vec![g.group.clone(), kebab(&g.action), g.detail.clone()])
                .collect();
            out.push_str(&table(&["GROUP", "ACTION", "DETAIL"], &rows));
        }
        if !r.plans.is_empty() {
            let rows: Vec<Vec<String>> = r
                .plans
                .iter()
                .map(|p| {
                    vec![
                        p.plan.clone(),
                        if p.sent { "sent" } else { "waiting" }.to_string(),
                        p.detail.clone(),
                    ]
                })
                .collect();
            out.push_str(&table(&["PLAN", "STATE", "DETAIL"], &rows));
        }
        emit(&out)
    }

    pub fn reverse(&self, r: &offsite_api_types::ReverseResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        if let Some(sb) = &r.split_brain {
            let rows: Vec<Vec<String>> = sb
                .sites
                .iter()
                .map(|s| vec![s.site.clone(), s.generation.clone(), human(s.written_bytes)])
                .collect();
            let mut out = format!(
                "group {}: changes since the sites diverged\n{}",
                r.group,
                table(
                    &["SITE", "GENERATION", "WRITTEN (DISCARDED IF LOSER)"],
                    &rows
                )
            );
            if let Some(pit) = &sb.kept_as_pit {
                out.push_str(&format!(
                    "{}'s changes were discarded; its state is kept there as PIT {pit}\n",
                    sb.discarded_on.as_deref().unwrap_or("?")
                ));
            }
            if r.pit == 0 {
                return emit(&out);
            }
            emit(&out)?;
        }
        let rows: Vec<Vec<String>> = r
            .volumes
            .iter()
            .map(|v| vec![v.name.clone(), v.url.clone()])
            .collect();
        if r.full_copy && r.pit == 0 {
            return emit(&format!(
                "group {}: the other site does not have it (a rebuilt site); a reverse creates it there again and sends it a full copy\n",
                r.group
            ));
        }
        if r.full_copy {
            return emit(&format!(
                "group {} replicates from this site now: the other site did not have it (a rebuilt site), so it was created there again and sent a full copy: PIT {}, {} in {} ms\n{}",
                r.group,
                r.pit,
                human(r.bytes_transferred),
                r.duration_ms,
                table(&["VOLUME", "URL"], &rows)
            ));
        }
        emit(&format!(
            "group {} replicates from this site now: PIT {} sent {} ({} of the other site's unreplicated changes rolled back) in {} ms\n{}",
            r.group,
            r.pit,
            human(r.bytes_transferred),
            human(r.rolled_back_bytes),
            r.duration_ms,
            table(&["VOLUME", "URL"], &rows)
        ))
    }

    pub fn pit_check(&self, r: &offsite_api_types::PitCheck) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let rows: Vec<Vec<String>> = r
            .pits
            .iter()
            .map(|p| {
                vec![
                    p.id.to_string(),
                    p.name.clone().unwrap_or_default(),
                    p.error.clone().unwrap_or_else(|| "ok".into()),
                ]
            })
            .collect();
        emit(&format!(
            "group {}: {} PIT(s) checked, {} damaged\n{}",
            r.group,
            r.pits.len(),
            r.damaged,
            table(&["ID", "NAME", "CHECK"], &rows)
        ))
    }

    pub fn sync(&self, r: &offsite_api_types::SyncResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = match &r.pit {
            Some(p) => format!(
                "group {}: PIT {}{} committed ({} shipped{})\n",
                r.group,
                p.id,
                p.name.as_ref().map_or(String::new(), |n| format!(" ({n})")),
                human(p.bytes),
                if p.app_consistent {
                    ", app-consistent"
                } else {
                    ""
                }
            ),
            None => format!("group {}: cycle started\n", r.group),
        };
        for h in &r.hooks {
            out.push_str(&format!(
                "VM {}: {} hook exited {} in {} ms\n",
                h.vm,
                h.action,
                h.exit_code.map_or("?".into(), |c| c.to_string()),
                h.duration_ms
            ));
        }
        emit(&out)
    }

    pub fn verify(&self, r: &offsite_api_types::VerifyResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = format!(
            "group {}: PIT {}: {} blocks compared, {} differ\n",
            r.group, r.pit, r.blocks_compared, r.differing_blocks
        );
        for v in &r.volumes {
            out.push_str(&format!(
                "  {}: {} of {} differ\n",
                v.name, v.differing_blocks, v.blocks_compared
            ));
        }
        emit(&out)
    }

    pub fn resync(&self, r: &offsite_api_types::ResyncResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = format!(
            "group {}: {} blocks compared at PIT {}, {} differed; {} shipped{}\n",
            r.group,
            r.blocks_compared,
            r.compared_pit,
            r.differing_blocks,
            crate::units::human(r.bytes_sent),
            if r.pit == r.compared_pit {
                String::new()
            } else {
                format!(" in PIT {}", r.pit)
            }
        );
        for v in r.volumes.iter().filter(|v| v.differing_blocks > 0) {
            out.push_str(&format!(
                "  {}: {} of {} differed\n",
                v.name, v.differing_blocks, v.blocks_compared
            ));
        }
        emit(&out)
    }

    pub fn plan(&self, plan: &offsite_api_types::PlanInfo) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(plan);
        }
        let none = || "-".to_string();
        let mut out = fields(&[
            ("name", plan.name.clone()),
            ("protected site", plan.protected_site.clone()),
            ("recovery site", plan.recovery_site.clone()),
            ("description", plan.description.clone().unwrap_or_else(none)),
            (
                "test network",
                plan.test_network.clone().unwrap_or_else(none),
            ),
            (
                "network map",
                if plan.network_map.is_empty() {
                    none()
                } else {
                    plan.network_map
                        .iter()
                        .map(|(from, to)| format!("{from}={to}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            ),
            ("parallel starts", plan.parallel.to_string()),
            ("groups", plan.groups.join(", ")),
        ]);
        if !plan.vms.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = plan
                .vms
                .iter()
                .map(|v| {
                    vec![
                        v.priority.to_string(),
                        v.vm.clone(),
                        v.group.clone(),
                        v.wait_for
                            .clone()
                            .map_or("-".into(), |w| format!("{w} ({} s)", v.wait_timeout_secs)),
                    ]
                })
                .collect();
            out.push_str(&table(&["TIER", "VM", "GROUP", "WAIT FOR"], &rows));
        }
        if !plan.steps.is_empty() {
            out.push('\n');
            let rows: Vec<Vec<String>> = plan
                .steps
                .iter()
                .map(|s| {
                    vec![
                        s.after_tier.to_string(),
                        s.name.clone(),
                        s.kind.clone(),
                        s.command
                            .clone()
                            .or_else(|| s.prompt.clone())
                            .unwrap_or_default(),
                        if s.skip_in_test {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                })
                .collect();
            out.push_str(&table(
                &[
                    "AFTER TIER",
                    "STEP",
                    "KIND",
                    "COMMAND / PROMPT",
                    "SKIP IN TEST",
                ],
                &rows,
            ));
        }
        emit(&out)
    }

    pub fn plans(&self, plans: &[offsite_api_types::PlanInfo]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(plans);
        }
        if plans.is_empty() {
            return emit(
                "no recovery plans; create one with `offsite plan create NAME --protected-site A --recovery-site B`\n",
            );
        }
        let rows: Vec<Vec<String>> = plans
            .iter()
            .map(|p| {
                vec![
                    p.name.clone(),
                    format!("{} -> {}", p.protected_site, p.recovery_site),
                    p.groups.join(","),
                    p.vms.len().to_string(),
                    p.steps.len().to_string(),
                ]
            })
            .collect();
        emit(&table(&["NAME", "SITES", "GROUPS", "VMS", "STEPS"], &rows))
    }

    pub fn plan_run(&self, r: &offsite_api_types::PlanRunReport) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        let mut out = offsite_plan::report::summary(&offsite_api::plan_run_report(r.clone()));
        out.push('\n');
        let rows: Vec<Vec<String>> = r
            .steps
            .iter()
            .map(|s| {
                vec![
                    s.index.to_string(),
                    s.status.clone(),
                    s.duration_ms
                        .map_or("-".into(), |d| format!("{:.1}s", d as f64 / 1000.0)),
                    s.site.clone(),
                    s.name.clone(),
                ]
            })
            .collect();
        out.push_str(&table(&["#", "STATUS", "TIME", "SITE", "STEP"], &rows));
        emit(&out)
    }

    pub fn plan_history(&self, runs: &[offsite_api_types::PlanRunSummary]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(runs);
        }
        if runs.is_empty() {
            return emit("no runs yet; `offsite plan run PLAN --mode test` rehearses the plan\n");
        }
        let rows: Vec<Vec<String>> = runs
            .iter()
            .map(|r| {
                vec![
                    r.id.clone(),
                    r.mode.clone(),
                    r.site.clone(),
                    r.status.clone(),
                    r.started_at.clone(),
                    r.rto_seconds.map_or("-".into(), |s| format!("{s:.1}s")),
                    r.errors.to_string(),
                ]
            })
            .collect();
        emit(&table(
            &["RUN", "MODE", "SITE", "STATUS", "STARTED", "RTO", "ERRORS"],
            &rows,
        ))
    }

    pub fn vm(&self, v: &offsite_api_types::VmInfo) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(v);
        }
        let none = || "-".to_string();
        emit(&fields(&[
            ("name", v.name.clone()),
            ("volumes", v.volumes.join(", ")),
            ("start", v.start.clone().unwrap_or_else(none)),
            ("stop", v.stop.clone().unwrap_or_else(none)),
            ("status", v.status.clone().unwrap_or_else(none)),
            ("quiesce", v.quiesce.clone().unwrap_or_else(none)),
            ("thaw", v.thaw.clone().unwrap_or_else(none)),
            (
                "libvirt domain",
                v.libvirt_domain.clone().unwrap_or_else(none),
            ),
            (
                "libvirt state",
                v.libvirt_state.clone().unwrap_or_else(none),
            ),
            ("created", v.created_at.clone()),
        ]))
    }

    pub fn vms(&self, vs: &[offsite_api_types::VmInfo]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(vs);
        }
        if vs.is_empty() {
            return emit("no VMs; define one with `offsite vm create NAME --volume V`\n");
        }
        let rows: Vec<Vec<String>> = vs
            .iter()
            .map(|v| {
                vec![
                    v.name.clone(),
                    v.volumes.join(","),
                    if v.start.is_some() {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                    if v.quiesce.is_some() {
                        "yes".into()
                    } else {
                        "no".into()
                    },
                ]
            })
            .collect();
        emit(&table(&["NAME", "VOLUMES", "HOOKS", "QUIESCE"], &rows))
    }

    pub fn partner_test(&self, r: &offsite_api_types::PartnerTestResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        emit(&fields(&[
            ("partner", r.partner.clone()),
            ("protocol", format!("v{}", r.protocol_version)),
            (
                "compression",
                if r.compression {
                    "zstd".into()
                } else {
                    "off".into()
                },
            ),
            ("handshake", format!("{:.2} ms", r.handshake_ms)),
            ("rtt", format!("{:.3} ms", r.rtt_ms)),
            ("sent", format!("{} in {:.2} s", human(r.bytes), r.seconds)),
            ("throughput", format!("{:.1} MB/s", r.mb_per_s)),
        ]))
    }

    pub fn authz_check(&self, r: &offsite_api_types::AuthzCheckResult) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(r);
        }
        emit(&format!(
            "{} accepts replicas from this site: {} stores them in {}\n",
            r.partner, r.rule, r.storage_location
        ))
    }

    pub fn authz(&self, es: &[AuthzEntry], single: bool) -> anyhow::Result<()> {
        if self.json {
            return if single {
                self.print_json(&es[0])
            } else {
                self.print_json(es)
            };
        }
        if es.is_empty() {
            return emit(
                "no authorization entries; add one with `offsite authz add --allowed-primary NAME --storage-location DIR`\n",
            );
        }
        let rows: Vec<Vec<String>> = es
            .iter()
            .map(|e| {
                vec![
                    e.allowed_primary.clone(),
                    e.storage_location.clone(),
                    e.security_tag.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        emit(&table(
            &["ALLOWED PRIMARY", "STORAGE LOCATION", "SECURITY TAG"],
            &rows,
        ))
    }

    /// Events one per line, for `events --follow`: tab-separated fields,
    /// or one compact JSON object per line with --json.
    pub fn event_lines(&self, es: &[Event]) -> anyhow::Result<()> {
        let mut out = String::new();
        for e in es {
            if self.json {
                out.push_str(&serde_json::to_string(e)?);
            } else {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}",
                    e.at,
                    e.kind,
                    e.subject.as_deref().unwrap_or("-"),
                    e.message
                ));
            }
            out.push('\n');
        }
        emit(&out)
    }

    /// A group's status for `group status --watch`: the usual fields, or
    /// one compact JSON object per line with --json.
    pub fn group_line(&self, g: &offsite_api_types::GroupStatus) -> anyhow::Result<()> {
        if self.json {
            return emit(&format!("{}\n", serde_json::to_string(g)?));
        }
        self.group(g)?;
        emit("\n")
    }

    pub fn events(&self, es: &[Event]) -> anyhow::Result<()> {
        if self.json {
            return self.print_json(es);
        }
        let rows: Vec<Vec<String>> = es
            .iter()
            .map(|e| {
                vec![
                    e.at.clone(),
                    e.kind.clone(),
                    e.subject.clone().unwrap_or_default(),
                    e.message.clone(),
                ]
            })
            .collect();
        emit(&table(&["TIME", "KIND", "SUBJECT", "MESSAGE"], &rows))
    }
}

/// The point a recovery to a time chose, for people: `checkpoint 42 of
/// 2026-12-07T08:15:30Z (app-consistent, over PIT 7), 1.250 s before
/// 2026-12-07T08:15:31.25Z`.
fn point_text(p: &offsite_api_types::RecoveryPoint) -> String {
    let mut notes = Vec::new();
    if p.app_consistent {
        notes.push("app-consistent".to_string());
    }
    if let Some(n) = &p.name {
        notes.push(format!("named {n}"));
    }
    if p.kind == "checkpoint" {
        notes.push(format!("over PIT {}", p.pit));
    }
    let notes = if notes.is_empty() {
        String::new()
    } else {
        format!(" ({})", notes.join(", "))
    };
    let distance = if p.before_requested_ms == 0 {
        format!("exactly at {}", p.requested)
    } else {
        format!(
            "{}.{:03} s before {}",
            p.before_requested_ms / 1000,
            p.before_requested_ms % 1000,
            p.requested
        )
    };
    let kind = if p.kind == "pit" { "PIT" } else { "checkpoint" };
    format!("{kind} {} of {}{notes}, {distance}", p.id, p.time)
}

/// Milliseconds for people: `500ms`, `1s`, `1.5s`.
fn millis(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else if ms > 1000 {
        format!("{}s", ms as f64 / 1000.0)
    } else {
        format!("{ms}ms")
    }
}

/// Seconds for people, in the largest whole unit: `24h`, `90m`, `45s`.
fn seconds(s: u64) -> String {
    match s {
        0 => "0s".into(),
        s if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        s if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A unit enum as its JSON string (`full-copy`, `needs-key`).
fn kebab<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
