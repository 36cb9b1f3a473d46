//! Recovery plans (docs/design.md §1): many replication groups and their VMs
//! turned into one rehearsed, reported procedure, as SRM administrators
//! know it.
//!
//! This crate owns the plan model and its validation ([`Plans`]' definition
//! commands, this file), the runner (`runner`: test, cleanup, planned
//! migration, disaster recovery, reprotect, failback), callout commands and
//! VM waits (`exec`), the reports (`report`: text summary and a
//! self-contained HTML page with a timeline), and the site-to-site requests
//! that keep a plan on both of its sites (`wire`, kinds 40 and up).
//!
//! **Both sites, one plan.** Every change to a definition is first sent to
//! the plan's other site, which validates it against its own catalog and
//! stores it; only then is it stored here. A change the partner cannot take
//! changes nothing. Runs' reports are copied to the partner when a run ends
//! or stops, so `plan history` shows every run at either site.
//!
//! **Roles swap, nothing is re-entered.** A plan records the site it
//! protects and the site it recovers to as defined; a run interprets them
//! from its groups' *current* direction: the site that holds the groups as
//! replicas is where test, cleanup, planned, disaster, reprotect and
//! failback run, and the other site is the one the VMs come from. After
//! `reprotect` the groups replicate back, so the next planned run moves the
//! VMs home; `failback` is exactly that planned run followed by a reprotect
//! to the original direction, after which the plan (never modified by any
//! run) is again as it was defined.

mod exec;
pub mod model;
pub mod report;
mod runner;
pub mod wire;

pub use model::*;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use offsite_catalog::{PlanRow, PlanStepRow, PlanVmRow};
use offsite_engine::{EngineError, ErrorKind, Site};
use offsite_replication::{ReplError, Replication};

/// Tier a VM gets when its group joins a plan (SRM's default, the middle).
pub const DEFAULT_PRIORITY: u8 = 3;
/// VMs of one tier started at once unless the plan says otherwise.
pub const DEFAULT_PARALLEL: u32 = 4;
/// Seconds a VM's wait or a callout command may take unless set.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// Errors of the plan service; each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A definition or request the user must fix.
    #[error("{0}")]
    Invalid(String),
    /// The plan or run is in a state that does not allow this now.
    #[error("{0}")]
    Conflict(String),
    /// The partner site could not take a definition change.
    #[error(
        "plan {plan} lives on both sites and {partner} could not take the change ({source}); nothing was changed: check `offsite partner test {partner}` and retry"
    )]
    Partner {
        /// Plan name.
        plan: String,
        /// The other site.
        partner: String,
        /// What happened.
        #[source]
        source: Box<ReplError>,
    },
    /// The site engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// Replication failed.
    #[error(transparent)]
    Repl(Box<ReplError>),
}

impl From<ReplError> for PlanError {
    fn from(e: ReplError) -> PlanError {
        PlanError::Repl(Box::new(e))
    }
}

impl PlanError {
    /// The class of this error, for the API's status codes.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PlanError::Invalid(_) => ErrorKind::Invalid,
            PlanError::Conflict(_) => ErrorKind::Conflict,
            PlanError::Partner { .. } => ErrorKind::Conflict,
            PlanError::Engine(e) => e.kind(),
            PlanError::Repl(e) => match e.as_ref() {
                ReplError::Engine(e) => e.kind(),
                _ => ErrorKind::Internal,
            },
        }
    }
}

fn invalid(msg: impl Into<String>) -> PlanError {
    PlanError::Invalid(msg.into())
}

/// Runs catalog work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PlanError> + Send + 'static,
) -> Result<T, PlanError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| invalid(format!("internal error: {e}")))?
}

/// The recovery-plan service of a site.
pub struct Plans {
    site: Arc<Site>,
    repl: Arc<Replication>,
    /// Plans with a request in progress (a run, a continue, an edit): one
    /// at a time per plan.
    busy: Mutex<HashSet<String>>,
    /// Serializes run id allocation.
    ids: Mutex<()>,
}

impl std::fmt::Debug for Plans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plans")
            .field("site", &self.site)
            .finish_non_exhaustive()
    }
}

/// Marks a plan busy until dropped.
struct Busy<'a> {
    plans: &'a Plans,
    name: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.plans
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
    }
}

/// The API shape of a plan.
pub fn plan_info(p: &PlanRow) -> PlanInfo {
    PlanInfo {
        name: p.name.clone(),
        protected_site: p.protected_site.clone(),
        recovery_site: p.recovery_site.clone(),
        description: p.description.clone(),
        test_network: p.test_network.clone(),
        network_map: p.network_map.clone(),
        parallel: p.parallel,
        created_at: p.created_at.clone(),
        groups: p.groups.clone(),
        vms: p
            .vms
            .iter()
            .map(|v| PlanVm {
                vm: v.vm.clone(),
                group: v.group.clone(),
                priority: v.priority,
                wait_for: v.wait_for.clone(),
                wait_timeout_secs: v.wait_timeout_secs,
            })
            .collect(),
        steps: p
            .steps
            .iter()
            .map(|s| PlanStep {
                name: s.name.clone(),
                kind: s.kind.clone(),
                command: (s.kind == "command").then(|| s.body.clone()),
                prompt: (s.kind == "prompt").then(|| s.body.clone()),
                after_tier: s.after_tier,
                skip_in_test: s.skip_in_test,
                timeout_secs: s.timeout_secs,
            })
            .collect(),
    }
}

/// The catalog shape of a plan received from the partner.
pub(crate) fn plan_row(p: &PlanInfo) -> PlanRow {
    PlanRow {
        name: p.name.clone(),
        protected_site: p.protected_site.clone(),
        recovery_site: p.recovery_site.clone(),
        description: p.description.clone(),
        test_network: p.test_network.clone(),
        network_map: p.network_map.clone(),
        parallel: p.parallel,
        created_at: p.created_at.clone(),
        groups: p.groups.clone(),
        vms: p
            .vms
            .iter()
            .map(|v| PlanVmRow {
                vm: v.vm.clone(),
                group: v.group.clone(),
                priority: v.priority,
                wait_for: v.wait_for.clone(),
                wait_timeout_secs: v.wait_timeout_secs,
            })
            .collect(),
        steps: p
            .steps
            .iter()
            .map(|s| PlanStepRow {
                name: s.name.clone(),
                kind: s.kind.clone(),
                body: s
                    .command
                    .clone()
                    .or_else(|| s.prompt.clone())
                    .unwrap_or_default(),
                after_tier: s.after_tier,
                skip_in_test: s.skip_in_test,
                timeout_secs: s.timeout_secs,
            })
            .collect(),
    }
}

/// The site of the plan that is not `here`.
pub(crate) fn other_site<'a>(plan: &'a PlanRow, here: &str) -> &'a str {
    if plan.protected_site == here {
        &plan.recovery_site
    } else {
        &plan.protected_site
    }
}

/// Checks a `wait_for` spec: `tcp:HOST:PORT` or `cmd:COMMAND`.
fn check_wait_for(spec: &str) -> Result<(), PlanError> {
    if let Some(addr) = spec.strip_prefix("tcp:") {
        let ok = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
        if !ok {
            return Err(invalid(format!(
                "--wait-for {spec:?}: expected tcp:HOST:PORT, e.g. tcp:10.0.0.5:22"
            )));
        }
        Ok(())
    } else if let Some(cmd) = spec.strip_prefix("cmd:") {
        if cmd.trim().is_empty() {
            return Err(invalid("--wait-for cmd: needs a command after `cmd:`"));
        }
        Ok(())
    } else {
        Err(invalid(format!(
            "--wait-for {spec:?}: expected tcp:HOST:PORT or cmd:COMMAND"
        )))
    }
}

/// Validates a whole definition against this site's catalog: it must name
/// this site and a partner, and its groups (replicated with that partner),
/// VMs and steps must make sense. Run on both sites for every change.
pub(crate) fn validate(site: &Site, p: &PlanRow) -> Result<(), PlanError> {
    validate_with(site, p, true)
}

/// [`validate`]; `need_partner: false` accepts a plan whose other site is
/// not paired here (a plan adopted from a bucket after that site was lost:
/// its disaster run needs no partner, and pairing a rebuilt site comes
/// later).
pub(crate) fn validate_with(site: &Site, p: &PlanRow, need_partner: bool) -> Result<(), PlanError> {
    offsite_engine::names::validate("plan", &p.name)?;
    let here = &site.config().name;
    if p.protected_site == p.recovery_site {
        return Err(invalid(format!(
            "plan {}: the protected and the recovery site are both {}; name two sites",
            p.name, p.protected_site
        )));
    }
    if &p.protected_site != here && &p.recovery_site != here {
        return Err(invalid(format!(
            "plan {} is between {} and {}, and this site is {here}; create it at one of them",
            p.name, p.protected_site, p.recovery_site
        )));
    }
    let other = other_site(p, here);
    if need_partner && site.partner(other).is_err() {
        return Err(invalid(format!(
            "site {here} is not paired with {other}; pair them first (`offsite partner add {other} ...`)"
        )));
    }
    if p.parallel == 0 {
        return Err(invalid("--parallel must be at least 1"));
    }
    let rows = site.groups().all()?;
    for (i, g) in p.groups.iter().enumerate() {
        if p.groups[..i].contains(g) {
            return Err(invalid(format!("group {g} is in plan {} already", p.name)));
        }
        let row = rows.iter().find(|r| &r.name == g).ok_or_else(|| {
            invalid(format!(
                "site {here} has no replication group {g}; `offsite group list` shows them"
            ))
        })?;
        if row.partner != other {
            return Err(invalid(format!(
                "group {g} replicates with {}, but plan {} is between {here} and {other}",
                row.partner, p.name
            )));
        }
    }
    for (i, v) in p.vms.iter().enumerate() {
        if p.vms[..i].iter().any(|x| x.vm == v.vm) {
            return Err(invalid(format!(
                "VM {} is in plan {} twice (in groups {} and {}); a VM belongs to one group",
                v.vm,
                p.name,
                p.vms[..i]
                    .iter()
                    .find(|x| x.vm == v.vm)
                    .map_or("", |x| &x.group),
                v.group
            )));
        }
        if !(1..=5).contains(&v.priority) {
            return Err(invalid(format!(
                "priority {} of VM {}: tiers are 1 (first) to 5",
                v.priority, v.vm
            )));
        }
        if let Some(w) = &v.wait_for {
            check_wait_for(w)?;
        }
        let row = rows.iter().find(|r| r.name == v.group).ok_or_else(|| {
            invalid(format!(
                "VM {} names group {}, which is not in the plan",
                v.vm, v.group
            ))
        })?;
        if !row.vms.iter().any(|x| x.name == v.vm) {
            return Err(invalid(format!(
                "group {} at {here} has no VM {}",
                v.group, v.vm
            )));
        }
    }
    for (i, s) in p.steps.iter().enumerate() {
        if s.name.trim().is_empty() {
            return Err(invalid("a step needs a name"));
        }
        if p.steps[..i].iter().any(|x| x.name == s.name) {
            return Err(invalid(format!(
                "plan {} has a step named {:?} already; pick another name",
                p.name, s.name
            )));
        }
        if s.kind != "command" && s.kind != "prompt" {
            return Err(invalid(format!(
                "step {}: kind {:?} is neither command nor prompt",
                s.name, s.kind
            )));
        }
        if s.body.trim().is_empty() {
            return Err(invalid(format!(
                "step {}: give a command (--command) or a message (--prompt)",
                s.name
            )));
        }
        if s.after_tier > 5 {
            return Err(invalid(format!(
                "step {}: --after-tier is 0 (before tier 1) to 5",
                s.name
            )));
        }
    }
    Ok(())
}

/// The marker, in an object-store group's working directory, of a plan
/// copy beside its store that could not be written or deleted: the
/// daemon's next start writes that group's copies again
/// ([`Plans::retry_failed_copies`]). Without it nothing is redone, so a
/// start opens no store for the plans' sake.
pub const COPIES_PENDING: &str = "plan-copies.pending";

/// The plan's copy (the `PLAN_PUT` JSON) as written beside the stores.
fn copy_of(row: &PlanRow) -> Option<Vec<u8>> {
    serde_json::to_vec_pretty(&wire::PlanPut {
        plan: plan_info(row),
        delete: false,
    })
    .ok()
}

/// The working directory of group `g` when this site holds its replica
/// store in object storage (`None`: a primary, or a directory store, which
/// carries no plan copies).
fn object_store_dir(site: &Site, g: &str) -> Option<std::path::PathBuf> {
    let group = site.groups().get(g).ok()?;
    let (offsite_catalog::Role::Replica, Some(dir)) = (group.role, group.store_dir.as_deref())
    else {
        return None;
    };
    let dir = std::path::PathBuf::from(dir);
    dir.join(offsite_engine::objects::DESCRIPTOR_FILE)
        .exists()
        .then_some(dir)
}

/// Marks group `g`'s plan copies as to be written again; says so when
/// even that fails (then the copy waits for the plan's next change).
fn mark_pending(plan: &str, g: &str, dir: &std::path::Path, why: &str) {
    tracing::warn!(plan, group = %g, "copying the plan beside the group's store: {why}; retried at the daemon's next start");
    if let Err(e) =
        offsite_volume_file::write_durably(&dir.join(COPIES_PENDING), why.as_bytes(), 0o600)
    {
        tracing::warn!(plan, group = %g, "recording the failed plan copy in {}: {e}; the copy is written at the plan's next change", dir.display());
    }
}

/// Writes (or, with `delete`, removes) the copy of plan `row` beside the
/// replica store of each of its groups that this site holds in an object
/// store (`offsite_replication::bucket`), so that a site recovering from
/// the bucket alone finds the plan. Best effort: a group whose store
/// cannot be written now is marked ([`COPIES_PENDING`]) and its copies are
/// written at the daemon's next start, or at the plan's next change.
pub(crate) fn publish_copies(site: &Site, row: &PlanRow, delete: bool) {
    let definition = copy_of(row);
    for g in &row.groups {
        let Some(dir) = object_store_dir(site, g) else {
            continue;
        };
        let store = match site.replica_store(&dir) {
            Ok(s) => s,
            Err(e) => {
                mark_pending(&row.name, g, &dir, &format!("opening the store: {e}"));
                continue;
            }
        };
        let Some(objects) = store.object_store() else {
            continue;
        };
        let bytes = if delete { None } else { definition.as_deref() };
        if let Err(e) =
            offsite_replication::bucket::publish_plan(objects.as_ref(), &row.name, bytes)
        {
            mark_pending(&row.name, g, &dir, &e.to_string());
        }
    }
}

/// Makes the plan copies beside group `g`'s store in `dir` what the
/// catalog says: every plan naming the group written, any other copy
/// deleted (a plan deleted, or no longer naming the group, while the store
/// was unreachable); then removes the marker.
fn rewrite_copies(
    site: &Site,
    g: &str,
    dir: &std::path::Path,
    plans: &[PlanRow],
) -> Result<(), String> {
    let store = site
        .replica_store(dir)
        .map_err(|e| format!("opening the store: {e}"))?;
    let Some(objects) = store.object_store() else {
        return Ok(());
    };
    let mine: Vec<&PlanRow> = plans
        .iter()
        .filter(|p| p.groups.iter().any(|x| x == g))
        .collect();
    let present =
        offsite_replication::bucket::read_plans(objects.as_ref()).map_err(|e| e.to_string())?;
    for (name, _) in &present {
        if !mine.iter().any(|p| p.name == *name) {
            offsite_replication::bucket::publish_plan(objects.as_ref(), name, None)
                .map_err(|e| e.to_string())?;
        }
    }
    for p in mine {
        offsite_replication::bucket::publish_plan(objects.as_ref(), &p.name, copy_of(p).as_deref())
            .map_err(|e| e.to_string())?;
    }
    std::fs::remove_file(dir.join(COPIES_PENDING))
        .or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        })
        .map_err(|e| format!("removing {}: {e}", dir.join(COPIES_PENDING).display()))
}

impl Plans {
    /// The service for `site`; installs the handler of plan requests from
    /// the partner in `offsite-replication`.
    pub fn new(site: Arc<Site>, repl: Arc<Replication>) -> Arc<Plans> {
        let plans = Arc::new(Plans {
            site,
            repl: repl.clone(),
            busy: Mutex::new(HashSet::new()),
            ids: Mutex::new(()),
        });
        repl.set_extension(Arc::new(wire::Handler(Arc::downgrade(&plans))));
        plans
    }

    /// Writes again the plan copies of the groups whose copy failed at a
    /// plan's change (marked with [`COPIES_PENDING`]); blocking. Opens
    /// only those groups' stores: a start with nothing marked opens none.
    /// A group still unreachable keeps its mark for the next start.
    pub fn retry_failed_copies(&self) {
        let groups = match self.site.groups().all() {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("listing the groups to retry their plan copies: {e}");
                return;
            }
        };
        let marked: Vec<(String, std::path::PathBuf)> = groups
            .into_iter()
            .filter_map(|g| {
                let dir = object_store_dir(&self.site, &g.name)?;
                dir.join(COPIES_PENDING).exists().then_some((g.name, dir))
            })
            .collect();
        if marked.is_empty() {
            return;
        }
        let plans = match self.site.plans().all() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!("listing the plans to copy them beside the replica stores: {e}");
                return;
            }
        };
        for (g, dir) in marked {
            match rewrite_copies(&self.site, &g, &dir, &plans) {
                Ok(()) => {
                    tracing::info!(group = %g, "plan copies beside the group's store written again")
                }
                Err(e) => {
                    tracing::warn!(group = %g, "writing the plan copies beside the group's store again: {e}; retried at the daemon's next start")
                }
            }
        }
    }

    fn busy(&self, name: &str) -> Result<Busy<'_>, PlanError> {
        let mut set = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if !set.insert(name.to_string()) {
            return Err(PlanError::Conflict(format!(
                "plan {name} is busy with another request (a run, continue or change); wait for it to finish"
            )));
        }
        Ok(Busy {
            plans: self,
            name: name.to_string(),
        })
    }

    /// Validates `new` here, has the partner store it, then stores it here.
    async fn change(&self, new: PlanRow) -> Result<PlanInfo, PlanError> {
        let site = self.site.clone();
        let p = new.clone();
        blocking(move || validate(&site, &p)).await?;
        let partner = other_site(&new, &self.site.config().name).to_string();
        let info = plan_info(&new);
        wire::push_plan(&self.repl, &partner, &info, false)
            .await
            .map_err(|source| PlanError::Partner {
                plan: new.name.clone(),
                partner: partner.clone(),
                source: Box::new(source),
            })?;
        let site = self.site.clone();
        let name = new.name.clone();
        blocking(move || {
            site.plans().put(&new)?;
            publish_copies(&site, &new, false);
            Ok(())
        })
        .await?;
        self.site.note(
            "plan.changed",
            &name,
            &format!("plan {name} changed here and at {partner}"),
        );
        Ok(info)
    }

    async fn load(&self, name: &str) -> Result<PlanRow, PlanError> {
        let site = self.site.clone();
        let n = name.to_string();
        blocking(move || Ok(site.plans().get(&n)?)).await
    }

    /// `plan create`.
    pub async fn create(&self, req: &CreatePlan) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(&req.name)?;
        if self.load(&req.name).await.is_ok() {
            return Err(PlanError::Conflict(format!(
                "a plan named {} exists already; pick another name or `offsite plan delete {}`",
                req.name, req.name
            )));
        }
        let row = PlanRow {
            name: req.name.clone(),
            protected_site: req.protected_site.clone(),
            recovery_site: req.recovery_site.clone(),
            description: req.description.clone(),
            test_network: req.test_network.clone(),
            network_map: Default::default(),
            parallel: req.parallel.unwrap_or(DEFAULT_PARALLEL),
            created_at: offsite_catalog::now_rfc3339(),
            groups: Vec::new(),
            vms: Vec::new(),
            steps: Vec::new(),
        };
        self.change(row).await
    }

    /// `plan add-group`: the group's VMs join at [`DEFAULT_PRIORITY`].
    pub async fn add_group(&self, plan: &str, req: &PlanAddGroup) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let mut row = self.load(plan).await?;
        if row.groups.contains(&req.group) {
            return Err(invalid(format!(
                "group {} is in plan {plan} already",
                req.group
            )));
        }
        let site = self.site.clone();
        let g = req.group.clone();
        let group = blocking(move || Ok(site.groups().get(&g)?)).await?;
        row.groups.push(req.group.clone());
        for vm in &group.vms {
            if let Some(other) = row.vms.iter().find(|v| v.vm == vm.name) {
                return Err(invalid(format!(
                    "VM {} of group {} is in plan {plan} already, with group {}",
                    vm.name, req.group, other.group
                )));
            }
            row.vms.push(PlanVmRow {
                vm: vm.name.clone(),
                group: req.group.clone(),
                priority: DEFAULT_PRIORITY,
                wait_for: None,
                wait_timeout_secs: DEFAULT_TIMEOUT_SECS,
            });
        }
        self.change(row).await
    }

    /// `plan set-priority`.
    pub async fn set_priority(
        &self,
        plan: &str,
        req: &PlanSetPriority,
    ) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let mut row = self.load(plan).await?;
        let vm = row.vms.iter_mut().find(|v| v.vm == req.vm).ok_or_else(|| {
            invalid(format!(
                "plan {plan} has no VM {}; add its group with `offsite plan add-group {plan} GROUP`",
                req.vm
            ))
        })?;
        vm.priority = req.priority;
        if req.no_wait {
            vm.wait_for = None;
        } else if let Some(w) = &req.wait_for {
            vm.wait_for = Some(w.clone());
        }
        if let Some(t) = req.wait_timeout_secs {
            vm.wait_timeout_secs = t.max(1);
        }
        self.change(row).await
    }

    /// `plan set-network-map PLAN PROTECTED=RECOVERY...`: the libvirt
    /// domains the plan starts at the recovery site have their interfaces
    /// on PROTECTED moved to RECOVERY (drills use the test network
    /// instead). `PROTECTED=` removes a mapping.
    pub async fn set_network_map(
        &self,
        plan: &str,
        req: &PlanSetNetworkMap,
    ) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let mut row = self.load(plan).await?;
        for m in &req.mappings {
            let Some((from, to)) = m.split_once('=') else {
                return Err(invalid(format!(
                    "{m:?} is not PROTECTED=RECOVERY; e.g. `offsite plan set-network-map {plan} prod=dr-prod`"
                )));
            };
            if from.is_empty() || from.contains('\n') || to.contains('\n') {
                return Err(invalid(format!(
                    "{m:?}: name the protected site's network before '=' (no newlines), e.g. prod=dr-prod"
                )));
            }
            if to.is_empty() {
                row.network_map.remove(from);
            } else {
                row.network_map.insert(from.to_string(), to.to_string());
            }
        }
        self.change(row).await
    }

    /// `plan add-step`.
    pub async fn add_step(&self, plan: &str, req: &PlanAddStep) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let mut row = self.load(plan).await?;
        let (kind, body) = match (&req.command, &req.prompt) {
            (Some(c), None) => ("command", c.clone()),
            (None, Some(p)) => ("prompt", p.clone()),
            _ => {
                return Err(invalid(format!(
                    "step {}: give either --command CMD or --prompt TEXT",
                    req.name
                )));
            }
        };
        row.steps.push(PlanStepRow {
            name: req.name.clone(),
            kind: kind.into(),
            body,
            after_tier: req.after_tier,
            skip_in_test: req.skip_in_test,
            timeout_secs: req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS).max(1),
        });
        self.change(row).await
    }

    /// `plan remove-group`: the group and its VMs leave the plan, at both
    /// sites.
    pub async fn remove_group(&self, plan: &str, group: &str) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let mut row = self.load(plan).await?;
        if !row.groups.iter().any(|g| g == group) {
            return Err(invalid(format!(
                "plan {plan} has no group {group}; `offsite plan show {plan}` lists its groups"
            )));
        }
        row.groups.retain(|g| g != group);
        row.vms.retain(|v| v.group != group);
        self.change(row).await
    }

    /// `plan remove-step`: the callout leaves the plan, at both sites.
    pub async fn remove_step(&self, plan: &str, step: &str) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let mut row = self.load(plan).await?;
        if !row.steps.iter().any(|s| s.name == step) {
            return Err(invalid(format!(
                "plan {plan} has no step {step}; `offsite plan show {plan}` lists its steps"
            )));
        }
        row.steps.retain(|s| s.name != step);
        self.change(row).await
    }

    /// `plan show`.
    pub async fn show(&self, plan: &str) -> Result<PlanInfo, PlanError> {
        Ok(plan_info(&self.load(plan).await?))
    }

    /// `plan list`.
    pub async fn list(&self) -> Result<Vec<PlanInfo>, PlanError> {
        let site = self.site.clone();
        let rows = blocking(move || Ok(site.plans().all()?)).await?;
        Ok(rows.iter().map(plan_info).collect())
    }

    /// `plan delete`: on both sites (the partner first); run reports stay.
    pub async fn delete(&self, plan: &str) -> Result<PlanInfo, PlanError> {
        let _busy = self.busy(plan)?;
        let row = self.load(plan).await?;
        let partner = other_site(&row, &self.site.config().name).to_string();
        let info = plan_info(&row);
        wire::push_plan(&self.repl, &partner, &info, true)
            .await
            .map_err(|source| PlanError::Partner {
                plan: plan.to_string(),
                partner,
                source: Box::new(source),
            })?;
        let site = self.site.clone();
        let n = plan.to_string();
        blocking(move || {
            site.plans().delete(&n)?;
            publish_copies(&site, &row, true);
            Ok(())
        })
        .await?;
        Ok(info)
    }

    /// `plan history`: every run of the plan known here (run at either
    /// site), oldest first.
    pub async fn history(&self, plan: &str) -> Result<Vec<PlanRunSummary>, PlanError> {
        let site = self.site.clone();
        let n = plan.to_string();
        let rows = blocking(move || Ok(site.plans().runs(&n)?)).await?;
        if rows.is_empty() {
            // An unknown plan is an error; a plan never run is an empty list.
            self.load(plan).await?;
        }
        Ok(rows
            .into_iter()
            .map(|r| {
                let errors: Vec<String> = serde_json::from_str(&r.errors).unwrap_or_default();
                PlanRunSummary {
                    id: r.id,
                    mode: r.mode,
                    site: r.site,
                    status: r.status,
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                    rto_seconds: r.rto_ms.map(|m| m as f64 / 1000.0),
                    errors: errors.len(),
                }
            })
            .collect())
    }

    /// Sends every plan shared with `partner` to it, with the reports of
    /// its runs: after `partner replace`, and after a reverse that created
    /// a group again at a rebuilt partner. A plan whose groups the partner
    /// does not hold yet is refused there (it validates the definition
    /// against its own catalog) and reported as waiting; the reverse of
    /// its last group sends it.
    pub async fn share_with(&self, partner: &str) -> Result<Vec<SharedPlan>, PlanError> {
        let here = self.site.config().name.clone();
        let site = self.site.clone();
        let rows = blocking(move || Ok(site.plans().all()?)).await?;
        let mut out = Vec::new();
        for row in rows.iter().filter(|p| other_site(p, &here) == partner) {
            let info = plan_info(row);
            if let Err(e) = wire::push_plan(&self.repl, partner, &info, false).await {
                out.push(SharedPlan {
                    plan: row.name.clone(),
                    sent: false,
                    runs_sent: 0,
                    detail: format!("not sent yet: {e}"),
                });
                continue;
            }
            let site = self.site.clone();
            let n = row.name.clone();
            let runs = blocking(move || {
                let rows = site.plans().runs(&n)?;
                Ok(rows
                    .iter()
                    .map(|r| runner::report_of(&site, r))
                    .collect::<Vec<_>>())
            })
            .await?;
            let mut runs_sent = 0;
            for report in &runs {
                match wire::push_record(&self.repl, partner, report).await {
                    Ok(()) => runs_sent += 1,
                    Err(e) => {
                        tracing::warn!(plan = %row.name, run = %report.id, "copying a run's report to {partner}: {e}")
                    }
                }
            }
            self.site.note(
                "plan.shared",
                &row.name,
                &format!(
                    "plan {} sent to {partner} with {runs_sent} run reports",
                    row.name
                ),
            );
            out.push(SharedPlan {
                plan: row.name.clone(),
                sent: true,
                runs_sent,
                detail: format!("sent with {runs_sent} of {} run reports", runs.len()),
            });
        }
        Ok(out)
    }

    /// Stores the plan copies found beside the stores a `site attach-store`
    /// took over (`PLAN_PUT` JSON, as `offsite_replication::bucket` keeps
    /// them): each plan whose groups are all here now, and that this site
    /// does not have yet. The plan's other site need not be paired (it may
    /// be the site that was lost).
    pub async fn adopt(
        &self,
        copies: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<AdoptedPlan>, PlanError> {
        let site = self.site.clone();
        blocking(move || {
            let mut out = Vec::new();
            for (name, bytes) in copies {
                let adopted = match serde_json::from_slice::<wire::PlanPut>(&bytes) {
                    Err(e) => Err(format!("its copy is not a plan definition: {e}")),
                    Ok(put) if put.plan.name != name => Err(format!(
                        "its copy defines plan {}, not {name}",
                        put.plan.name
                    )),
                    Ok(_) if site.plans().get(&name).is_ok() => {
                        Err("a plan of that name exists here: left alone".to_string())
                    }
                    Ok(put) => {
                        let row = plan_row(&put.plan);
                        validate_with(&site, &row, false)
                            .map_err(|e| e.to_string())
                            .and_then(|()| site.plans().put(&row).map_err(|e| e.to_string()))
                    }
                };
                out.push(match adopted {
                    Ok(()) => {
                        site.note(
                            "plan.adopted",
                            &name,
                            &format!("plan {name} adopted from a bucket"),
                        );
                        AdoptedPlan {
                            plan: name,
                            adopted: true,
                            detail: "stored here".into(),
                        }
                    }
                    Err(detail) => AdoptedPlan {
                        plan: name,
                        adopted: false,
                        detail,
                    },
                });
            }
            Ok(out)
        })
        .await
    }

    /// `plan report RUN-ID`.
    pub async fn report(&self, id: &str) -> Result<PlanRunReport, PlanError> {
        let site = self.site.clone();
        let i = id.to_string();
        let row = blocking(move || Ok(site.plans().run(&i)?)).await?;
        Ok(runner::report_of(&self.site, &row))
    }
}
