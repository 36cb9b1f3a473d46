//! Running a plan: the steps of each mode, their execution in order (the
//! VMs of one priority tier in parallel, up to the plan's limit), prompts
//! that stop the run until `plan continue`, resume from a failed step, and
//! the report kept in the catalog after every step.
//!
//! Every mode runs at the site that holds the plan's groups as replicas
//! (the current recovery site; see the crate doc on roles); the steps that
//! must happen at the other site (stopping its VMs, the final PIT) are
//! requests to it ([`crate::wire`]).
//!
//! | mode | steps |
//! | --- | --- |
//! | `test` | test failover of every group (clones; replication goes on), then tiers 1..5 of VM starts with the callouts after each tier |
//! | `cleanup` | VM stops in tiers 5..1, then stop-test of every group |
//! | `planned` | pre-sync every group, stop the VMs at the other site (tiers 5..1), prepare every group there (fence + final PIT), promote, tiers and callouts; stops at the first error (`--resume`) |
//! | `disaster` | as planned without pre-sync, the other site's steps may fail (reported, not fatal), forced promotion |
//! | `reprotect` | reverse every group: the other site becomes the replica |
//! | `failback` | planned back to the plan's protected site, then reverse (replication in the original direction again) |

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offsite_replication::{FailoverRun, ReverseRequest};

use crate::model::{PlanRunGroup, PlanRunReport, PlanRunRequest, PlanRunStep};
use offsite_catalog::{GroupRow, GroupState, PlanRow, Role, RunRow, RunStepRow};
use offsite_engine::Site;
use offsite_engine::hooks::HookAction;

use crate::wire::{self, SiteOp};
use crate::{PlanError, Plans, blocking, invalid, other_site};

/// The run modes.
pub const MODES: &[&str] = &[
    "test",
    "cleanup",
    "planned",
    "disaster",
    "reprotect",
    "failback",
];

fn now_ms() -> String {
    let t = time::OffsetDateTime::now_utc();
    let t = t
        .replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Milliseconds between two RFC 3339 times (0 if either does not parse).
pub(crate) fn ms_between(from: &str, to: &str) -> u64 {
    let p = |s: &str| {
        time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
    };
    match (p(from), p(to)) {
        (Some(a), Some(b)) => (b - a).whole_milliseconds().max(0) as u64,
        _ => 0,
    }
}

/// Where the HTML report of run `id` is kept.
fn html_path(site: &Site, id: &str) -> PathBuf {
    site.layout()
        .root()
        .join("reports")
        .join(format!("{id}.html"))
}

/// The report of a catalog row.
pub(crate) fn report_of(site: &Site, row: &RunRow) -> PlanRunReport {
    let steps: Vec<PlanRunStep> = row
        .steps
        .iter()
        .map(|s| PlanRunStep {
            index: s.index,
            name: s.name.clone(),
            kind: s.kind.clone(),
            group: s.group.clone(),
            vm: s.vm.clone(),
            tier: s.tier,
            site: s.site.clone(),
            status: s.status.clone(),
            started_at: s.started_at.clone(),
            finished_at: s.finished_at.clone(),
            duration_ms: s.duration_ms,
            output: s.output.clone(),
            error: s.error.clone(),
        })
        .collect();
    let waiting_for = steps
        .iter()
        .find(|s| s.status == "waiting")
        .map(|s| s.output.clone());
    let end = row.finished_at.clone().unwrap_or_else(now_ms);
    let html = html_path(site, &row.id);
    let stored = StoredGroups::parse(&row.groups);
    PlanRunReport {
        id: row.id.clone(),
        plan: row.plan.clone(),
        mode: row.mode.clone(),
        site: row.site.clone(),
        status: row.status.clone(),
        from_site: row.from_site.clone(),
        to_site: row.to_site.clone(),
        started_at: row.started_at.clone(),
        finished_at: row.finished_at.clone(),
        duration_ms: ms_between(&row.started_at, &end),
        rto_seconds: row.rto_ms.map(|m| m as f64 / 1000.0),
        groups: stored.groups,
        steps,
        errors: serde_json::from_str(&row.errors).unwrap_or_default(),
        waiting_for,
        html_path: html.exists().then(|| html.display().to_string()),
        at: stored.at,
    }
}

/// The `groups` column of a run: the groups' outcomes, and with `plan run
/// --at` the time asked for (an object then; a plain array otherwise, as
/// before `--at`, which older rows and older readers keep reading).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct StoredGroups {
    #[serde(default)]
    at: Option<String>,
    #[serde(default)]
    groups: Vec<PlanRunGroup>,
}

impl StoredGroups {
    fn parse(column: &str) -> StoredGroups {
        match serde_json::from_str::<Vec<PlanRunGroup>>(column) {
            Ok(groups) => StoredGroups { at: None, groups },
            Err(_) => serde_json::from_str(column).unwrap_or_default(),
        }
    }

    fn render(r: &PlanRunReport) -> String {
        let out = match &r.at {
            None => serde_json::to_string(&r.groups),
            Some(at) => serde_json::to_string(&StoredGroups {
                at: Some(at.clone()),
                groups: r.groups.clone(),
            }),
        };
        out.unwrap_or_else(|_| "[]".into())
    }
}

fn row_of(r: &PlanRunReport) -> RunRow {
    RunRow {
        id: r.id.clone(),
        plan: r.plan.clone(),
        mode: r.mode.clone(),
        site: r.site.clone(),
        status: r.status.clone(),
        from_site: r.from_site.clone(),
        to_site: r.to_site.clone(),
        started_at: r.started_at.clone(),
        finished_at: r.finished_at.clone(),
        rto_ms: r.rto_seconds.map(|s| (s * 1000.0).round() as u64),
        groups: StoredGroups::render(r),
        errors: serde_json::to_string(&r.errors).unwrap_or_else(|_| "[]".into()),
        steps: r
            .steps
            .iter()
            .map(|s| RunStepRow {
                index: s.index,
                name: s.name.clone(),
                kind: s.kind.clone(),
                group: s.group.clone(),
                vm: s.vm.clone(),
                tier: s.tier,
                site: s.site.clone(),
                status: s.status.clone(),
                started_at: s.started_at.clone(),
                finished_at: s.finished_at.clone(),
                duration_ms: s.duration_ms,
                output: s.output.clone(),
                error: s.error.clone(),
            })
            .collect(),
    }
}

/// Stores a run's report and renders its HTML page (a run of this site or
/// one received from the partner).
pub(crate) fn store_record(site: &Site, r: &PlanRunReport) -> Result<(), PlanError> {
    let row = row_of(r);
    site.plans().put_run(&row)?;
    let path = html_path(site, &r.id);
    if let Some(dir) = path.parent() {
        offsite_volume_file::create_private_dir_all(dir)
            .map_err(|e| invalid(format!("creating {}: {e}", dir.display())))?;
    }
    // The page shows what `plan report` shows: derived from the stored row.
    let mut page = report_of(site, &row);
    page.html_path = Some(path.display().to_string());
    offsite_volume_file::write_durably(
        &path,
        crate::report::html(&page).as_bytes(),
        offsite_volume_file::PRIVATE_FILE_MODE,
    )
    .map_err(|e| invalid(format!("writing the report {}: {e}", path.display())))?;
    Ok(())
}

/// What a run does with a step that failed.
fn stops_at_errors(mode: &str) -> bool {
    !matches!(mode, "disaster" | "cleanup")
}

/// The `OFFSITE_MODE` VM hooks see (as with `failover run`).
fn hook_mode(mode: &str) -> &'static str {
    match mode {
        "test" | "cleanup" => "test",
        "disaster" => "unplanned",
        _ => "planned",
    }
}

struct StepBuilder {
    steps: Vec<PlanRunStep>,
}

impl StepBuilder {
    fn push(
        &mut self,
        kind: &str,
        name: String,
        group: Option<&str>,
        vm: Option<&str>,
        tier: Option<u8>,
        site: &str,
    ) -> &mut PlanRunStep {
        let index = self.steps.len() as u32;
        self.steps.push(PlanRunStep {
            index,
            name,
            kind: kind.into(),
            group: group.map(str::to_string),
            vm: vm.map(str::to_string),
            tier,
            site: site.into(),
            status: "pending".into(),
            started_at: None,
            finished_at: None,
            duration_ms: None,
            output: String::new(),
            error: None,
        });
        let last = self.steps.len() - 1;
        &mut self.steps[last]
    }

    /// Callouts placed after tier `tier` (0: before tier 1).
    fn callouts(&mut self, plan: &PlanRow, tier: u8, test: bool, here: &str) {
        for s in plan.steps.iter().filter(|s| s.after_tier == tier) {
            let step = self.push(&s.kind, s.name.clone(), None, None, Some(tier), here);
            if s.kind == "prompt" {
                step.output = s.body.clone();
            }
            if test && s.skip_in_test {
                step.status = "skipped".into();
                step.output = "skipped in test mode (--skip-in-test)".into();
            }
        }
    }

    /// VM starts by tier with the callouts between the tiers.
    fn recovery(&mut self, plan: &PlanRow, test: bool, here: &str) {
        self.callouts(plan, 0, test, here);
        for tier in 1..=5u8 {
            for v in plan.vms.iter().filter(|v| v.priority == tier) {
                self.push(
                    "start-vm",
                    format!("start VM {} (tier {tier})", v.vm),
                    Some(&v.group),
                    Some(&v.vm),
                    Some(tier),
                    here,
                );
            }
            self.callouts(plan, tier, test, here);
        }
    }

    /// VM stops in tiers 5..1 at `site`.
    fn shutdown(&mut self, plan: &PlanRow, kind: &str, site: &str) {
        for tier in (1..=5u8).rev() {
            for v in plan.vms.iter().filter(|v| v.priority == tier) {
                self.push(
                    kind,
                    format!("stop VM {} at {site} (tier {tier})", v.vm),
                    Some(&v.group),
                    Some(&v.vm),
                    Some(tier),
                    site,
                );
            }
        }
    }
}

/// Whether `plan run --at` fits `mode`: test and disaster runs recover
/// to a point; planned and failback runs ship a final PIT (recovering to
/// an earlier time would drop writes the primary made on purpose), and
/// cleanup and reprotect recover nothing.
fn check_at(plan: &str, mode: &str, at: &str) -> Result<(), PlanError> {
    match mode {
        "test" | "disaster" => {}
        "planned" | "failback" => {
            return Err(invalid(format!(
                "a {mode} run of plan {plan} ships a final PIT with every write and recovers to it; --at is for test and disaster runs (leave out --at {at}, or run --mode disaster --at {at})"
            )));
        }
        _ => {
            return Err(invalid(format!(
                "a {mode} run of plan {plan} recovers no group; --at is for test and disaster runs"
            )));
        }
    }
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).map_err(
        |_| {
            invalid(format!(
                "--at {at:?} is not an RFC 3339 time: give e.g. 2026-12-07T08:15:30Z (or, on the command line, a relative time such as `10m ago`)"
            ))
        },
    )?;
    Ok(())
}

/// The steps of a `mode` run of `plan` at `here`, the other site `there`.
fn build_steps(plan: &PlanRow, mode: &str, here: &str, there: &str) -> Vec<PlanRunStep> {
    let mut b = StepBuilder { steps: Vec::new() };
    let groups = &plan.groups;
    match mode {
        "test" => {
            for g in groups {
                b.push(
                    "test-failover",
                    format!("test failover of group {g} (writable clones of its newest PIT)"),
                    Some(g),
                    None,
                    None,
                    here,
                );
            }
            b.recovery(plan, true, here);
        }
        "cleanup" => {
            b.shutdown(plan, "stop-vm", here);
            for g in groups {
                b.push(
                    "stop-test",
                    format!("discard the test clones of group {g}"),
                    Some(g),
                    None,
                    None,
                    here,
                );
            }
        }
        "planned" | "failback" | "disaster" => {
            if mode != "disaster" {
                for g in groups {
                    b.push(
                        "pre-sync",
                        format!("synchronize group {g} while its VMs still run"),
                        Some(g),
                        None,
                        None,
                        here,
                    );
                }
            }
            b.shutdown(plan, "shutdown-vm", there);
            for g in groups {
                b.push(
                    "prepare",
                    format!("prepare group {g} at {there} (fence, final PIT)"),
                    Some(g),
                    None,
                    None,
                    there,
                );
            }
            for g in groups {
                b.push(
                    "failover",
                    format!(
                        "{} group {g} at {here}",
                        if mode == "disaster" {
                            "recover (forced)"
                        } else {
                            "recover"
                        }
                    ),
                    Some(g),
                    None,
                    None,
                    here,
                );
            }
            b.recovery(plan, false, here);
            if mode == "failback" {
                for g in groups {
                    b.push(
                        "reverse",
                        format!("reprotect group {g}: {there} becomes its replica again"),
                        Some(g),
                        None,
                        None,
                        here,
                    );
                }
            }
        }
        "reprotect" => {
            for g in groups {
                b.push(
                    "reverse",
                    format!("reprotect group {g}: {there} becomes its replica"),
                    Some(g),
                    None,
                    None,
                    here,
                );
            }
        }
        _ => {}
    }
    b.steps
}

/// Why a step failed; the text goes to the run report.
#[derive(Debug, thiserror::Error)]
enum StepError {
    /// The step's site was found unreachable at an earlier step.
    #[error("not attempted: {0}")]
    NotAttempted(String),
    /// The step's site could not be reached: the steps after it there
    /// are not attempted.
    #[error("unreachable: {0}")]
    Unreachable(Box<offsite_replication::ReplError>),
    /// Replication refused or failed.
    #[error(transparent)]
    Repl(Box<offsite_replication::ReplError>),
    /// The site engine failed (a hook, the catalog).
    #[error(transparent)]
    Engine(#[from] offsite_engine::EngineError),
    /// A callout command or a VM's wait failed.
    #[error(transparent)]
    Command(#[from] crate::exec::CommandError),
    /// A failover promoted, but with errors.
    #[error("{}", .0.join("; "))]
    Failover(Vec<String>),
    /// The plan was edited and no longer has the step.
    #[error("the plan no longer has this step; `offsite plan show {0}`")]
    StepGone(String),
    /// The step's VM is not one of its group's at this site.
    #[error("group {group} has no VM {vm} at this site")]
    NoSuchVm { group: String, vm: String },
    /// A step kind this build does not know.
    #[error("unknown step kind {0}")]
    UnknownKind(String),
    /// The step's blocking task panicked or was cancelled.
    #[error("{0}")]
    Join(#[from] tokio::task::JoinError),
}

impl From<offsite_replication::ReplError> for StepError {
    fn from(e: offsite_replication::ReplError) -> Self {
        StepError::Repl(Box::new(e))
    }
}

/// What one step produced.
struct Outcome {
    result: Result<String, StepError>,
    group: Option<PlanRunGroup>,
}

impl Plans {
    /// `plan run NAME --mode M` or `plan run NAME --resume`.
    pub async fn run(
        self: &Arc<Self>,
        name: &str,
        req: &PlanRunRequest,
    ) -> Result<PlanRunReport, PlanError> {
        let _busy = self.busy(name)?;
        let plan = self.load(name).await?;
        let site = self.site.clone();
        let n = name.to_string();
        let last = blocking(move || {
            let rows = site.plans().runs(&n)?;
            rows.into_iter()
                .rev()
                .find(|r| r.site == site.config().name)
                .map(|r| site.plans().run(&r.id))
                .transpose()
                .map_err(PlanError::from)
        })
        .await?;
        if req.resume {
            let Some(row) = last else {
                return Err(invalid(format!(
                    "plan {name} has no run at this site to resume; start one with `offsite plan run {name} --mode MODE`"
                )));
            };
            if !matches!(row.status.as_str(), "failed" | "running") {
                return Err(PlanError::Conflict(format!(
                    "the last run of plan {name} ({}, {}) is {}; only a stopped run resumes{}",
                    row.id,
                    row.mode,
                    row.status,
                    if row.status == "waiting" {
                        format!(" (it waits at a prompt: `offsite plan continue {name}`)")
                    } else {
                        String::new()
                    }
                )));
            }
            if let Some(m) = &req.mode
                && m != &row.mode
            {
                return Err(invalid(format!(
                    "--resume continues the last run ({} mode {}), not a {m} run; leave out --mode",
                    row.id, row.mode
                )));
            }
            let mut report = report_of(&self.site, &row);
            if let Some(at) = &req.at
                && report.at.as_ref() != Some(at)
            {
                return Err(invalid(format!(
                    "--resume continues the last run ({}) {}; leave out --at {at}",
                    row.id,
                    match &report.at {
                        Some(was) => format!("at the time it was given, {was}"),
                        None => "at the newest points, as it started".to_string(),
                    }
                )));
            }
            for s in report.steps.iter_mut() {
                if s.status == "failed" || s.status == "running" {
                    let before = s.error.take().unwrap_or_else(|| "interrupted".into());
                    s.output = format!("earlier attempt failed: {before}\n");
                    s.status = "pending".into();
                }
            }
            report.errors.clear();
            report.status = "running".into();
            report.finished_at = None;
            self.note(&report, &format!("resumed run {}", report.id));
            return self.execute(&plan, report).await;
        }
        let mode = req.mode.clone().ok_or_else(|| {
            invalid(format!(
                "which mode? `offsite plan run {name} --mode test|cleanup|planned|disaster|reprotect|failback`"
            ))
        })?;
        if !MODES.contains(&mode.as_str()) {
            return Err(invalid(format!(
                "unknown mode {mode:?}; use one of {}",
                MODES.join(", ")
            )));
        }
        if let Some(at) = &req.at {
            check_at(name, &mode, at)?;
        }
        if let Some(row) = &last
            && row.status == "waiting"
        {
            return Err(PlanError::Conflict(format!(
                "run {} of plan {name} waits at a prompt; `offsite plan continue {name}` first",
                row.id
            )));
        }
        let here = self.site.config().name.clone();
        let there = other_site(&plan, &here).to_string();
        self.check_site(&plan, &mode, &here, &there).await?;
        let site = self.site.clone();
        let id = {
            let _ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            site.plans().next_run_id()?
        };
        let (from_site, to_site) = if mode == "reprotect" {
            (here.clone(), there.clone())
        } else {
            (there.clone(), here.clone())
        };
        let mut steps = build_steps(&plan, &mode, &here, &there);
        if let Some(at) = &req.at {
            for s in steps
                .iter_mut()
                .filter(|s| matches!(s.kind.as_str(), "failover" | "test-failover"))
            {
                s.name = format!(
                    "{} (the newest point at or before {at})",
                    s.name
                        .trim_end_matches(" (writable clones of its newest PIT)")
                );
            }
        }
        let report = PlanRunReport {
            id,
            plan: name.to_string(),
            mode: mode.clone(),
            site: here.clone(),
            status: "running".into(),
            from_site,
            to_site,
            started_at: now_ms(),
            finished_at: None,
            duration_ms: 0,
            rto_seconds: None,
            groups: Vec::new(),
            steps,
            errors: Vec::new(),
            waiting_for: None,
            html_path: None,
            at: req.at.clone(),
        };
        self.note(&report, &format!("run {} ({mode}) started", report.id));
        self.execute(&plan, report).await
    }

    /// `plan continue NAME`: the run waiting at a prompt goes on.
    pub async fn continue_run(self: &Arc<Self>, name: &str) -> Result<PlanRunReport, PlanError> {
        let _busy = self.busy(name)?;
        let plan = self.load(name).await?;
        let site = self.site.clone();
        let n = name.to_string();
        let row = blocking(move || {
            let rows = site.plans().runs(&n)?;
            rows.into_iter()
                .rev()
                .find(|r| r.status == "waiting" && r.site == site.config().name)
                .map(|r| site.plans().run(&r.id))
                .transpose()
                .map_err(PlanError::from)
        })
        .await?
        .ok_or_else(|| {
            PlanError::Conflict(format!(
                "no run of plan {name} waits at a prompt at this site; `offsite plan history {name}` shows the runs"
            ))
        })?;
        let mut report = report_of(&self.site, &row);
        let now = now_ms();
        for s in report.steps.iter_mut().filter(|s| s.status == "waiting") {
            s.status = "succeeded".into();
            s.duration_ms = s.started_at.as_deref().map(|t| ms_between(t, &now));
            s.finished_at = Some(now.clone());
            s.output.push_str("\ncontinued by the operator");
        }
        report.status = "running".into();
        self.execute(&plan, report).await
    }

    fn note(&self, r: &PlanRunReport, msg: &str) {
        self.site
            .note("plan.run", &r.plan, &format!("plan {}: {msg}", r.plan));
    }

    /// Refuses a run at the wrong site, saying where to run it.
    async fn check_site(
        &self,
        plan: &PlanRow,
        mode: &str,
        here: &str,
        there: &str,
    ) -> Result<(), PlanError> {
        let site = self.site.clone();
        let groups = plan.groups.clone();
        let rows: Vec<GroupRow> = blocking(move || {
            groups
                .iter()
                .map(|g| site.groups().get(g).map_err(PlanError::from))
                .collect()
        })
        .await?;
        if rows.is_empty() {
            return Err(invalid(format!(
                "plan {} has no groups; add one with `offsite plan add-group {} GROUP`",
                plan.name, plan.name
            )));
        }
        if let Some(g) = rows.iter().find(|r| r.role == Role::Primary) {
            return Err(invalid(format!(
                "site {here} is the primary of group {} now, so plan {} recovers to {there}: run `offsite plan run {} --mode {mode}` at {there}",
                g.name, plan.name, plan.name
            )));
        }
        if mode == "failback" && plan.protected_site != here {
            return Err(invalid(format!(
                "failback brings plan {}'s VMs home to its protected site {}, but they replicate to {here} now; run a planned migration here (`--mode planned`), or reprotect first",
                plan.name, plan.protected_site
            )));
        }
        if mode == "reprotect"
            && let Some(g) = rows.iter().find(|r| r.state != GroupState::FailedOver)
        {
            return Err(invalid(format!(
                "group {} is {} at {here}; reprotect follows a planned or disaster run of plan {}",
                g.name, g.state, plan.name
            )));
        }
        Ok(())
    }

    /// Stores the report, renders its HTML page.
    async fn persist(&self, r: &PlanRunReport) -> Result<(), PlanError> {
        let site = self.site.clone();
        let r = r.clone();
        blocking(move || store_record(&site, &r)).await
    }

    /// Runs the pending steps of `report` in order until it ends, fails
    /// (unless the mode goes on past errors) or waits at a prompt.
    async fn execute(
        self: &Arc<Self>,
        plan: &PlanRow,
        mut report: PlanRunReport,
    ) -> Result<PlanRunReport, PlanError> {
        self.persist(&report).await?;
        let started = report.started_at.clone();
        let stop_at_error = stops_at_errors(&report.mode);
        let here = self.site.config().name.clone();
        let there = other_site(plan, &here).to_string();
        // A site found lost: its later steps fail at once, not after
        // another connect timeout each.
        let mut lost: Option<String> = None;
        let mut i = 0;
        while i < report.steps.len() {
            if report.steps[i].status != "pending" {
                i += 1;
                continue;
            }
            let kind = report.steps[i].kind.clone();
            if kind == "prompt" {
                let s = &mut report.steps[i];
                s.status = "waiting".into();
                s.started_at = Some(now_ms());
                report.status = "waiting".into();
                self.persist(&report).await?;
                self.note(&report, &format!("run {} waits at a prompt", report.id));
                self.push_record(&report, &there).await;
                return Ok(report_of_report(&self.site, report));
            }
            // The VMs of one tier (consecutive steps of one kind and tier)
            // go together.
            let mut end = i + 1;
            if matches!(kind.as_str(), "start-vm" | "stop-vm" | "shutdown-vm") {
                while end < report.steps.len()
                    && report.steps[end].kind == kind
                    && report.steps[end].tier == report.steps[i].tier
                    && report.steps[end].status == "pending"
                {
                    end += 1;
                }
            }
            let batch: Vec<usize> = (i..end).collect();
            for &k in &batch {
                report.steps[k].status = "running".into();
                report.steps[k].started_at = Some(now_ms());
            }
            self.persist(&report).await?;
            let failed = self.run_batch(plan, &mut report, &batch, &mut lost).await?;
            if report.steps.iter().any(|s| s.kind == "start-vm") {
                let last_up = report
                    .steps
                    .iter()
                    .filter(|s| s.kind == "start-vm" && s.status == "succeeded")
                    .filter_map(|s| s.finished_at.as_deref())
                    .map(|t| ms_between(&started, t))
                    .max();
                report.rto_seconds = last_up.map(|m| m as f64 / 1000.0);
            }
            if failed && stop_at_error {
                report.status = "failed".into();
                report.finished_at = Some(now_ms());
                self.persist(&report).await?;
                self.note(
                    &report,
                    &format!(
                        "run {} stopped at an error; fix it and `offsite plan run {} --resume`",
                        report.id, report.plan
                    ),
                );
                self.push_record(&report, &there).await;
                return Ok(report_of_report(&self.site, report));
            }
            self.persist(&report).await?;
            i = end;
        }
        report.status = if report.errors.is_empty() {
            "succeeded".into()
        } else {
            "succeeded-with-errors".into()
        };
        report.finished_at = Some(now_ms());
        self.persist(&report).await?;
        self.note(&report, &format!("run {} {}", report.id, report.status));
        self.push_record(&report, &there).await;
        Ok(report_of_report(&self.site, report))
    }

    /// Runs the steps `batch` of `report` together (at most the plan's
    /// `parallel` at a time) and records their outcomes; whether one
    /// failed. A step that finds the other site unreachable sets `lost`.
    async fn run_batch(
        self: &Arc<Self>,
        plan: &PlanRow,
        report: &mut PlanRunReport,
        batch: &[usize],
        lost: &mut Option<String>,
    ) -> Result<bool, PlanError> {
        let limit = Arc::new(tokio::sync::Semaphore::new(plan.parallel.max(1) as usize));
        let mut tasks = tokio::task::JoinSet::new();
        for &k in batch {
            let step = report.steps[k].clone();
            let me = self.clone();
            let plan = plan.clone();
            let mode = report.mode.clone();
            let run_id = report.id.clone();
            let at = report.at.clone();
            let limit = limit.clone();
            let lost = lost.clone();
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let t0 = now_ms();
                let out = me
                    .do_step(&plan, &mode, &run_id, &step, lost.as_deref(), at.as_deref())
                    .await;
                (k, t0, now_ms(), out)
            });
        }
        let here = self.site.config().name.clone();
        let mut failed = false;
        while let Some(joined) = tasks.join_next().await {
            let (k, t0, t1, out) = match joined {
                Ok(v) => v,
                Err(e) => return Err(invalid(format!("a plan step task failed: {e}"))),
            };
            let s = &mut report.steps[k];
            s.started_at = Some(t0.clone());
            s.duration_ms = Some(ms_between(&t0, &t1));
            s.finished_at = Some(t1);
            if let Some(g) = out.group {
                report.groups.retain(|x| x.group != g.group);
                report.groups.push(g);
            }
            match out.result {
                Ok(o) => {
                    s.status = "succeeded".into();
                    s.output.push_str(&o);
                }
                Err(e) => {
                    s.status = "failed".into();
                    report
                        .errors
                        .push(format!("step {} ({}) at {}: {e}", s.index, s.name, s.site));
                    if s.site != here && lost.is_none() && matches!(e, StepError::Unreachable(_)) {
                        *lost = Some(format!(
                            "site {} could not be reached at step {} ({e})",
                            s.site, s.index
                        ));
                    }
                    s.error = Some(e.to_string());
                    failed = true;
                }
            }
        }
        Ok(failed)
    }

    /// Copies the report to the other site; a lost site only costs a warning.
    async fn push_record(&self, r: &PlanRunReport, there: &str) {
        if let Err(e) = wire::push_record(&self.repl, there, r).await {
            tracing::warn!(plan = %r.plan, run = %r.id, "the report could not be copied to {there}: {e}");
        }
    }

    /// Does one step; `lost` says the other site was found unreachable.
    async fn do_step(
        self: &Arc<Self>,
        plan: &PlanRow,
        mode: &str,
        run_id: &str,
        step: &PlanRunStep,
        lost: Option<&str>,
        at: Option<&str>,
    ) -> Outcome {
        let here = self.site.config().name.clone();
        let group = step.group.clone().unwrap_or_default();
        let plain = |result| Outcome {
            result,
            group: None,
        };
        if step.site != here
            && let Some(why) = lost
        {
            return plain(Err(StepError::NotAttempted(why.to_string())));
        }
        match step.kind.as_str() {
            "pre-sync" => plain(
                self.repl
                    .sync_group(&group, None, true)
                    .await
                    .map(|r| {
                        r.pit.map_or("no new PIT".to_string(), |p| {
                            format!("PIT {} ({} bytes)", p.id, p.bytes)
                        })
                    })
                    .map_err(StepError::from),
            ),
            "shutdown-vm" | "prepare" => {
                let op = SiteOp {
                    op: if step.kind == "prepare" {
                        "prepare".into()
                    } else {
                        "stop-vm".into()
                    },
                    plan: plan.name.clone(),
                    group,
                    vm: step.vm.clone(),
                };
                plain(
                    wire::site_op(&self.repl, &step.site, &op)
                        .await
                        .map_err(|e| {
                            if e.is_unreachable() {
                                StepError::Unreachable(Box::new(e))
                            } else {
                                StepError::from(e)
                            }
                        }),
                )
            }
            "failover" | "test-failover" => {
                self.failover_step(mode, &group, step.kind == "test-failover", at)
                    .await
            }
            "stop-test" => plain(
                self.repl
                    .stop_test_with(&group, false)
                    .await
                    .map(|r| format!("clones of PIT {} discarded", r.pit))
                    .map_err(StepError::from),
            ),
            "reverse" => {
                let reversed = self
                    .repl
                    .reverse(&group, &ReverseRequest::default())
                    .await
                    .map_err(StepError::from);
                // A rebuilt partner got the group again with a full copy:
                // the plans it lacks follow (this one once its last group
                // is there).
                if let Ok(r) = &reversed
                    && r.full_copy
                {
                    let there = other_site(plan, &here);
                    if let Err(e) = self.share_with(there).await {
                        tracing::warn!(plan = %plan.name, "sending the plans to {there}: {e}");
                    }
                }
                plain(reversed.map(|r| {
                    format!(
                        "replicating from {here} now; first PIT {} moved {} bytes{}",
                        r.pit,
                        r.bytes_transferred,
                        if r.full_copy {
                            " (a full copy: the other site was rebuilt)"
                        } else {
                            ""
                        }
                    )
                }))
            }
            "start-vm" | "stop-vm" => plain(self.vm_hook(plan, mode, step).await),
            "command" => plain(self.command_step(plan, mode, run_id, step).await),
            other => plain(Err(StepError::UnknownKind(other.to_string()))),
        }
    }

    /// A failover or test-failover step at this site (the recovery site):
    /// the group's PIT promoted or cloned, and what the group lost.
    async fn failover_step(
        &self,
        mode: &str,
        group: &str,
        test: bool,
        at: Option<&str>,
    ) -> Outcome {
        let req = FailoverRun {
            pit: None,
            at: at.map(str::to_string),
            test,
            force: mode == "disaster",
            skip_vm_hooks: true,
        };
        match self.repl.failover_run(group, &req).await {
            Ok(r) => {
                let mut g = self.group_result(group, r.pit).await;
                if let Some(p) = &r.point {
                    // Recovered to a chosen time: the point's own time,
                    // mark and age, not those of the PIT it starts from.
                    g.pit_name = match p.kind {
                        offsite_replication::PointKind::Checkpoint => Some(match &p.name {
                            Some(n) => format!("checkpoint {} {n}", p.id),
                            None => format!("checkpoint {}", p.id),
                        }),
                        offsite_replication::PointKind::Pit => p.name.clone(),
                    };
                    g.pit_app_consistent = p.app_consistent;
                    g.rpo_seconds = Some(ms_between(&p.time, &now_ms()) as f64 / 1000.0);
                    g.pit_created_at = Some(p.time.clone());
                }
                let what = match &r.point {
                    Some(p) if p.kind == offsite_replication::PointKind::Checkpoint => format!(
                        "checkpoint {} of {}{} (over PIT {}, {} s before {})",
                        p.id,
                        p.time,
                        if p.app_consistent {
                            ", app-consistent"
                        } else {
                            ""
                        },
                        p.pit,
                        p.before_requested_ms / 1000,
                        p.requested
                    ),
                    Some(p) => format!(
                        "PIT {} of {} ({} s before {})",
                        p.id,
                        p.time,
                        p.before_requested_ms / 1000,
                        p.requested
                    ),
                    None => format!("PIT {}", r.pit),
                };
                let mut out = format!(
                    "{what} {} in {} ms ({} failover); volumes: {}",
                    if test { "cloned" } else { "promoted" },
                    r.duration_ms,
                    r.mode,
                    r.volumes
                        .iter()
                        .map(|v| v.url.as_str())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                if let Some(rpo) = g.rpo_seconds {
                    out.push_str(&format!("; RPO {rpo:.0} s"));
                }
                Outcome {
                    result: if r.errors.is_empty() {
                        Ok(out)
                    } else {
                        Err(StepError::Failover(r.errors))
                    },
                    group: Some(g),
                }
            }
            Err(e) => Outcome {
                result: Err(e.into()),
                group: None,
            },
        }
    }

    /// A command step: the plan's callout, with the run's environment.
    async fn command_step(
        &self,
        plan: &PlanRow,
        mode: &str,
        run_id: &str,
        step: &PlanRunStep,
    ) -> Result<String, StepError> {
        let Some(def) = plan.steps.iter().find(|s| s.name == step.name) else {
            return Err(StepError::StepGone(plan.name.clone()));
        };
        let mut env = vec![
            ("OFFSITE_PLAN".to_string(), plan.name.clone()),
            ("OFFSITE_RUN".to_string(), run_id.to_string()),
            ("OFFSITE_RUN_MODE".to_string(), mode.to_string()),
            ("OFFSITE_MODE".to_string(), hook_mode(mode).to_string()),
            ("OFFSITE_SITE".to_string(), self.site.config().name.clone()),
        ];
        if mode == "test"
            && let Some(n) = &plan.test_network
        {
            env.push(("OFFSITE_TEST_NETWORK".to_string(), n.clone()));
        }
        let cmd = def.body.clone();
        let timeout = Duration::from_secs(def.timeout_secs);
        Ok(tokio::task::spawn_blocking(move || crate::exec::run(&cmd, &env, timeout)).await??)
    }

    /// The PIT a group was recovered from, and the data it lacks: its age
    /// now, or, when it is the newest PIT and the primary confirmed since
    /// that it had nothing more (an idle async group, a sync group in
    /// sync), the group's lag — one definition with `group status`.
    async fn group_result(&self, group: &str, pit: u64) -> PlanRunGroup {
        let pits = self.repl.pit_list(group).await.unwrap_or_default();
        let newest = pits.last().is_some_and(|p| p.id == pit);
        let p = pits.into_iter().find(|p| p.id == pit);
        let age = p
            .as_ref()
            .map(|p| ms_between(&p.created_at, &now_ms()) as f64 / 1000.0);
        let status = self.repl.group_status(group).await.ok();
        let lag = match &status {
            Some(st) if newest => Some(st.lag_seconds as f64),
            _ => None,
        };
        let journal = status.as_ref().and_then(|st| st.journal.clone());
        let rpo = match (age, lag) {
            (Some(a), Some(l)) => Some(a.min(l)),
            (a, _) => a,
        };
        PlanRunGroup {
            group: group.to_string(),
            pit: Some(pit),
            pit_name: p.as_ref().and_then(|p| p.name.clone()),
            pit_app_consistent: p.as_ref().is_some_and(|p| p.app_consistent),
            pit_created_at: p.map(|p| p.created_at),
            rpo_seconds: rpo,
            journal_oldest: journal
                .as_ref()
                .and_then(|j| j.oldest_checkpoint_at.clone()),
            journal_newest: journal.and_then(|j| j.newest_checkpoint_at),
            continuous_lag_seconds: status.and_then(|st| st.continuous_lag_seconds),
        }
    }

    /// A VM's start (and wait) or stop hook at this site.
    async fn vm_hook(
        &self,
        plan: &PlanRow,
        mode: &str,
        step: &PlanRunStep,
    ) -> Result<String, StepError> {
        let group = step.group.clone().unwrap_or_default();
        let name = step.vm.clone().unwrap_or_default();
        let site = self.site.clone();
        let g = group.clone();
        let row = tokio::task::spawn_blocking(move || site.groups().get(&g)).await??;
        let vm = row
            .vms
            .iter()
            .find(|v| v.name == name)
            .cloned()
            .ok_or_else(|| StepError::NoSuchVm {
                group: group.clone(),
                vm: name.clone(),
            })?;
        let pv = plan.vms.iter().find(|v| v.vm == name).cloned();
        let test = mode == "test" || mode == "cleanup";
        let mut env = vec![
            ("OFFSITE_MODE".to_string(), hook_mode(mode).to_string()),
            ("OFFSITE_PLAN".to_string(), plan.name.clone()),
            (
                "OFFSITE_PRIORITY".to_string(),
                step.tier.unwrap_or(0).to_string(),
            ),
        ];
        if test && let Some(n) = &plan.test_network {
            env.push(("OFFSITE_TEST_NETWORK".to_string(), n.clone()));
        }
        for (n, v) in vm.volumes.iter().enumerate() {
            let export = if test {
                format!("{v}@{group}.test")
            } else {
                v.clone()
            };
            env.push((
                format!("OFFSITE_VOLUME_{n}_URL"),
                self.site.volume_url(&export),
            ));
        }
        let (action, cmd) = if step.kind == "start-vm" {
            (HookAction::Start, vm.start_cmd.clone())
        } else {
            (HookAction::Stop, vm.stop_cmd.clone())
        };
        let site = self.site.clone();
        let timeout = Duration::from_secs_f64(site.config().failover.hook_timeout_secs);
        let env2 = env.clone();
        let wait = if step.kind == "start-vm" {
            pv.and_then(|v| v.wait_for.map(|w| (w, v.wait_timeout_secs)))
        } else {
            None
        };
        // A libvirt domain is defined on this site's exports and started,
        // or stopped and undefined (see `Site::start_vm_domain`); a test
        // copy goes on the plan's test network, isolated unless the
        // operator named an existing network.
        let test_network = plan
            .test_network
            .clone()
            .unwrap_or_else(|| format!("offsite-test-{}", plan.name));
        let exports: Vec<(String, String)> = vm
            .volumes
            .iter()
            .enumerate()
            .filter_map(|(n, v)| {
                let key = format!("OFFSITE_VOLUME_{n}_URL");
                env.iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, url)| (v.clone(), url.clone()))
            })
            .collect();
        // The map moves the protected site's networks to the recovery
        // site's; at the protected site (failback) the VM is home and its
        // own definition names its own networks.
        let network_map = if self.site.config().name == plan.recovery_site {
            plan.network_map.clone()
        } else {
            Default::default()
        };
        tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut out = match cmd {
                None if vm.libvirt_xml.is_some() && action == HookAction::Start => {
                    let domain = site.start_vm_domain(
                        &vm,
                        &exports,
                        test.then_some(test_network.as_str()),
                        &network_map,
                    )?;
                    format!("libvirt domain {domain} defined and started")
                }
                None if vm.libvirt_xml.is_some() => site.stop_vm_domain(&vm, test)?,
                None => format!("VM {name} has no {} hook", action.as_str()),
                Some(cmd) => {
                    let run = site.run_hook(&group, &name, action, &cmd, &env2, timeout)?;
                    format!(
                        "{} hook exited 0 after {} ms{}",
                        action.as_str(),
                        run.duration_ms,
                        crate::exec::quoted(&run.output)
                    )
                }
            };
            if let Some((spec, secs)) = wait {
                let w = crate::exec::wait_for(&spec, &env, Duration::from_secs(secs))?;
                out.push_str(&format!(
                    "; {w}; up after {} ms",
                    started.elapsed().as_millis()
                ));
            }
            Ok::<_, StepError>(out)
        })
        .await?
    }
}

/// The report as a client sees it (derived fields filled in).
fn report_of_report(site: &Site, r: PlanRunReport) -> PlanRunReport {
    report_of(site, &row_of(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use offsite_catalog::{PlanStepRow, PlanVmRow};

    #[test]
    fn at_is_for_test_and_disaster_runs() {
        let t = "2026-12-07T08:15:30Z";
        assert!(check_at("p", "test", t).is_ok());
        assert!(check_at("p", "disaster", t).is_ok());
        for mode in ["planned", "failback"] {
            let e = check_at("p", mode, t).unwrap_err().to_string();
            assert!(
                e.contains("final PIT") && e.contains("--mode disaster"),
                "{e}"
            );
        }
        for mode in ["cleanup", "reprotect"] {
            assert!(check_at("p", mode, t).is_err());
        }
        let e = check_at("p", "test", "10m ago").unwrap_err().to_string();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn the_time_of_a_run_is_kept_beside_its_groups() {
        let group = PlanRunGroup {
            group: "g".into(),
            pit: Some(3),
            pit_name: Some("checkpoint 9".into()),
            pit_created_at: Some("2026-12-07T08:15:30Z".into()),
            rpo_seconds: Some(2.0),
            pit_app_consistent: false,
            journal_oldest: None,
            journal_newest: None,
            continuous_lag_seconds: None,
        };
        let mut r = PlanRunReport {
            id: "a-1".into(),
            plan: "p".into(),
            mode: "disaster".into(),
            site: "b".into(),
            status: "running".into(),
            from_site: "a".into(),
            to_site: "b".into(),
            started_at: "2026-12-07T08:16:00Z".into(),
            finished_at: None,
            duration_ms: 0,
            rto_seconds: None,
            groups: vec![group],
            steps: Vec::new(),
            errors: Vec::new(),
            waiting_for: None,
            html_path: None,
            at: Some("2026-12-07T08:15:31Z".into()),
        };
        let stored = StoredGroups::parse(&StoredGroups::render(&r));
        assert_eq!((stored.at, stored.groups), (r.at.clone(), r.groups.clone()));
        // Without --at the column stays the plain array older rows hold.
        r.at = None;
        let column = StoredGroups::render(&r);
        assert!(column.starts_with('['), "{column}");
        let stored = StoredGroups::parse(&column);
        assert_eq!((stored.at, stored.groups), (None, r.groups.clone()));
    }

    fn plan() -> PlanRow {
        let vm = |n: &str, g: &str, p: u8| PlanVmRow {
            vm: n.into(),
            group: g.into(),
            priority: p,
            wait_for: None,
            wait_timeout_secs: 10,
        };
        PlanRow {
            name: "dr".into(),
            protected_site: "a".into(),
            recovery_site: "b".into(),
            description: None,
            test_network: None,
            network_map: Default::default(),
            parallel: 2,
            created_at: String::new(),
            groups: vec!["g1".into(), "g2".into()],
            vms: vec![vm("db", "g1", 1), vm("web", "g2", 2), vm("cache", "g2", 1)],
            steps: vec![
                PlanStepRow {
                    name: "approve".into(),
                    kind: "prompt".into(),
                    body: "go?".into(),
                    after_tier: 0,
                    skip_in_test: true,
                    timeout_secs: 10,
                },
                PlanStepRow {
                    name: "check".into(),
                    kind: "command".into(),
                    body: "true".into(),
                    after_tier: 1,
                    skip_in_test: false,
                    timeout_secs: 10,
                },
            ],
        }
    }

    fn kinds(steps: &[PlanRunStep]) -> Vec<String> {
        steps
            .iter()
            .map(|s| {
                format!(
                    "{}:{}",
                    s.kind,
                    s.vm.as_deref().or(s.group.as_deref()).unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn test_mode_orders_tiers_and_skips_marked_callouts() {
        let steps = build_steps(&plan(), "test", "b", "a");
        assert_eq!(
            kinds(&steps),
            [
                "test-failover:g1",
                "test-failover:g2",
                "prompt:",
                "start-vm:db",
                "start-vm:cache",
                "command:",
                "start-vm:web"
            ]
        );
        assert_eq!(steps[2].status, "skipped");
        assert!(steps.iter().all(|s| s.site == "b"));
    }

    #[test]
    fn planned_and_failback_stop_at_the_other_site_first() {
        let steps = build_steps(&plan(), "failback", "a", "b");
        let k = kinds(&steps);
        assert_eq!(
            k[..7],
            [
                "pre-sync:g1",
                "pre-sync:g2",
                "shutdown-vm:web",
                "shutdown-vm:db",
                "shutdown-vm:cache",
                "prepare:g1",
                "prepare:g2"
            ]
        );
        assert_eq!(steps[2].site, "b");
        assert_eq!(k[k.len() - 2..], ["reverse:g1", "reverse:g2"]);
        assert_eq!(
            steps.iter().find(|s| s.kind == "prompt").unwrap().status,
            "pending"
        );
        let d = kinds(&build_steps(&plan(), "disaster", "b", "a"));
        assert!(!d.iter().any(|s| s.starts_with("pre-sync")));
        assert_eq!(
            kinds(&build_steps(&plan(), "cleanup", "b", "a")),
            [
                "stop-vm:web",
                "stop-vm:db",
                "stop-vm:cache",
                "stop-test:g1",
                "stop-test:g2"
            ]
        );
    }
}
