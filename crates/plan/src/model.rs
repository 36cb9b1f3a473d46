//! Recovery plans and their runs as domain types: the definition a site
//! keeps and sends to the plan's other site (`PLAN_PUT`), the run reports
//! (copied with `PLAN_RUN_RECORD`; their JSON is that wire format), and the
//! requests that change or run a plan. The api crate maps them to and from
//! the REST bodies of `offsite-api-types`.

use serde::{Deserialize, Serialize};

/// A recovery plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanInfo {
    /// Plan name.
    pub name: String,
    /// The site the plan protects.
    pub protected_site: String,
    /// The site it recovers to.
    pub recovery_site: String,
    /// Free text.
    pub description: Option<String>,
    /// Network name handed to hooks in test mode.
    pub test_network: Option<String>,
    /// Protected site's network to the recovery site's, for the libvirt
    /// domains the plan starts there; absent when empty (and from older
    /// sites).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub network_map: std::collections::BTreeMap<String, String>,
    /// VMs of one tier started at once, at most.
    pub parallel: u32,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// Replication groups, in order.
    pub groups: Vec<String>,
    /// VMs by priority tier.
    pub vms: Vec<PlanVm>,
    /// Callout steps, in order.
    pub steps: Vec<PlanStep>,
}

/// A VM of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanVm {
    /// VM name.
    pub vm: String,
    /// Its replication group.
    pub group: String,
    /// Priority tier, 1 (first) to 5.
    pub priority: u8,
    /// `tcp:HOST:PORT` or `cmd:COMMAND`.
    pub wait_for: Option<String>,
    /// Seconds the wait may take.
    pub wait_timeout_secs: u64,
}

/// A callout step of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanStep {
    /// Step name.
    pub name: String,
    /// `command` or `prompt`.
    pub kind: String,
    /// The command (kind `command`).
    pub command: Option<String>,
    /// The message (kind `prompt`).
    pub prompt: Option<String>,
    /// Runs once the VMs of this tier are up (0: before tier 1).
    pub after_tier: u8,
    /// Test runs skip it.
    pub skip_in_test: bool,
    /// Command timeout in seconds.
    pub timeout_secs: u64,
}

/// A group's outcome in a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanRunGroup {
    /// Group name.
    pub group: String,
    /// The PIT the group was recovered (or tested) from.
    pub pit: Option<u64>,
    /// Its name, if named.
    pub pit_name: Option<String>,
    /// RFC 3339 time of its cut.
    pub pit_created_at: Option<String>,
    /// Achieved RPO: the PIT's age when it was used, in seconds.
    pub rpo_seconds: Option<f64>,
    /// The PIT is application-consistent (its VMs were quiesced or
    /// cleanly stopped at its cut); left out when it is crash-consistent,
    /// and absent from runs recorded before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pit_app_consistent: bool,
    /// A streaming group's journal window when the group was recovered
    /// (or tested), at the site that did it: the oldest and newest
    /// reachable checkpoints (RFC 3339, the primary's clock). Absent for
    /// an async group, and from runs recorded before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_oldest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal_newest: Option<String>,
    /// A continuous group's lag then, in seconds (how much of the newest
    /// writes the replica did not have), where that site knew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continuous_lag_seconds: Option<f64>,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanRunStep {
    /// Position in the run.
    pub index: u32,
    /// What the step does.
    pub name: String,
    /// `pre-sync`, `shutdown-vm`, `prepare`, `failover`, `test-failover`,
    /// `start-vm`, `stop-vm`, `stop-test`, `reverse`, `command`, `prompt`.
    pub kind: String,
    /// Group it acts on.
    pub group: Option<String>,
    /// VM it acts on.
    pub vm: Option<String>,
    /// Priority tier of its VM, or the tier a callout follows.
    pub tier: Option<u8>,
    /// Site it acts at.
    pub site: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`, `waiting`.
    pub status: String,
    /// RFC 3339 start (milliseconds).
    pub started_at: Option<String>,
    /// RFC 3339 end (milliseconds).
    pub finished_at: Option<String>,
    /// Wall time.
    pub duration_ms: Option<u64>,
    /// What it printed or did.
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
}

/// A run's report (`plan run`, `plan continue`, `plan report`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanRunReport {
    /// Run id (`SITE-N`, unique across both sites).
    pub id: String,
    /// Plan name.
    pub plan: String,
    /// Run mode.
    pub mode: String,
    /// Site that ran it.
    pub site: String,
    /// `running`, `waiting` (at a prompt), `failed` (stopped; `--resume`),
    /// `succeeded`, `succeeded-with-errors` (disaster, cleanup).
    pub status: String,
    /// Site the VMs were moved (or tested) from.
    pub from_site: String,
    /// Site they run at afterwards (or were tested at).
    pub to_site: String,
    /// RFC 3339 start.
    pub started_at: String,
    /// RFC 3339 end.
    pub finished_at: Option<String>,
    /// Wall time so far.
    pub duration_ms: u64,
    /// Achieved RTO: from the start to the last VM up, in seconds.
    pub rto_seconds: Option<f64>,
    /// Per group: the PIT used and the achieved RPO.
    pub groups: Vec<PlanRunGroup>,
    /// Steps, in order.
    pub steps: Vec<PlanRunStep>,
    /// Every error, with the step and site.
    pub errors: Vec<String>,
    /// The prompt the run waits at.
    pub waiting_for: Option<String>,
    /// Where the site keeps the HTML report.
    pub html_path: Option<String>,
    /// The time every group was recovered to (`plan run --at`): the
    /// newest consistent point at or before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A plan sent to a partner that lacked it (a site rebuilt with a new
/// identity, see `partner replace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPlan {
    /// Plan name.
    pub plan: String,
    /// The partner stores the plan now.
    pub sent: bool,
    /// Reports of its runs copied with it (`plan history` there).
    pub runs_sent: usize,
    /// Why it was not sent (the partner lacks one of its groups until a
    /// `reverse` creates it there), or what was sent.
    pub detail: String,
}

/// A plan copy found beside a store that `site attach-store` took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedPlan {
    /// Plan name.
    pub plan: String,
    /// Stored here now.
    pub adopted: bool,
    /// Why not, or what was done.
    pub detail: String,
}

/// A run in `plan history`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRunSummary {
    /// Run id.
    pub id: String,
    /// Run mode.
    pub mode: String,
    /// Site that ran it.
    pub site: String,
    /// Status.
    pub status: String,
    /// RFC 3339 start.
    pub started_at: String,
    /// RFC 3339 end.
    pub finished_at: Option<String>,
    /// Achieved RTO in seconds.
    pub rto_seconds: Option<f64>,
    /// Number of errors.
    pub errors: usize,
}

/// `plan create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreatePlan {
    /// Plan name.
    pub name: String,
    /// The site the plan protects (its groups' primary in normal operation).
    pub protected_site: String,
    /// The site it recovers to.
    pub recovery_site: String,
    /// Free text.
    pub description: Option<String>,
    /// Network name handed to hooks in test mode (`OFFSITE_TEST_NETWORK`).
    pub test_network: Option<String>,
    /// VMs of one tier started at once, at most (default 4).
    pub parallel: Option<u32>,
}

/// `plan add-group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanAddGroup {
    /// Replication group; its VMs join the plan at priority 3.
    pub group: String,
}

/// `plan set-network-map`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanSetNetworkMap {
    /// `PROTECTED=RECOVERY` (an empty RECOVERY removes the mapping).
    pub mappings: Vec<String>,
}

/// `plan set-priority`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanSetPriority {
    /// VM of one of the plan's groups.
    pub vm: String,
    /// Tier 1 (first) to 5.
    pub priority: u8,
    /// `tcp:HOST:PORT` or `cmd:COMMAND`: the VM counts as up once it
    /// answers (null: once its start hook returned). Absent: unchanged.
    pub wait_for: Option<String>,
    /// Remove the VM's wait.
    pub no_wait: bool,
    /// How long the wait may take, in seconds (default 300).
    pub wait_timeout_secs: Option<u64>,
}

/// `plan add-step`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanAddStep {
    /// Step name, unique in the plan.
    pub name: String,
    /// A command run at the recovery site (`sh -c`).
    pub command: Option<String>,
    /// A message; the run waits for `plan continue`.
    pub prompt: Option<String>,
    /// Runs once the VMs of this tier are up (0: before tier 1).
    pub after_tier: u8,
    /// Test runs skip it.
    pub skip_in_test: bool,
    /// Command timeout in seconds (default 300).
    pub timeout_secs: Option<u64>,
}

/// `plan run`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanRunRequest {
    /// `test`, `cleanup`, `planned`, `disaster`, `reprotect` or `failback`.
    pub mode: Option<String>,
    /// Continue the plan's stopped run from its failed step instead.
    pub resume: bool,
    /// Test and disaster runs: every group recovers to the newest
    /// consistent point at or before this RFC 3339 time.
    pub at: Option<String>,
}
