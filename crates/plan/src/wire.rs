//! Site-to-site requests of recovery plans, carried as JSON bodies of
//! `offsite-protocol` requests with the kinds below (40 and up: the
//! replication crate hands them to [`Handler`]). Numbers are wire format:
//! never reuse one. Each body implements [`offsite_replication::control::Rpc`]
//! (kind, name, reply), [`PlanRequest`] decodes them, and refusals are
//! [`RemoteError`]s with a stable code; the kinds are listed with
//! replication's in the changelog table of [`offsite_replication::control`], and
//! their JSON is pinned by `tests/fixtures/plan/*.json`.
//!
//! ```mermaid
//! sequenceDiagram
//!     participant H as site where the plan is edited / run
//!     participant P as the plan's other site
//!     H->>P: PLAN_PUT {plan, delete}
//!     P-->>H: ok (validated against P's catalog and stored) | refusal
//!     H->>P: PLAN_SITE_OP {op: stop-vm | prepare, group, vm}
//!     P-->>H: {output}
//!     H->>P: PLAN_RUN_RECORD {report} (when a run ends or stops)
//!     P-->>H: ok
//! ```

use std::sync::{Arc, Weak};

use crate::model::{PlanInfo, PlanRunReport};
use bytes::Bytes;
use offsite_engine::hooks::HookAction;
use offsite_replication::control::{DecodeError, Done, Reply, Rpc};
use offsite_replication::{RemoteError, ReplError, Replication};
use serde::{Deserialize, Serialize};

use crate::{Plans, other_site, plan_row, validate};

/// Request kinds.
pub mod kinds {
    /// A plan's whole definition, to store (or delete) at the other site
    /// ([`super::PlanPut`]).
    pub const PLAN_PUT: u16 = 40;
    /// Work a run needs done at the site the VMs come from
    /// ([`super::SiteOp`] → [`super::SiteOpDone`]).
    pub const PLAN_SITE_OP: u16 = 41;
    /// A run's report, kept at the other site too ([`super::RunRecord`]).
    pub const PLAN_RUN_RECORD: u16 = 42;
}

/// A decoded plan request (kinds 40–42).
#[derive(Debug, Clone)]
pub enum PlanRequest {
    /// [`kinds::PLAN_PUT`].
    Put(PlanPut),
    /// [`kinds::PLAN_SITE_OP`].
    SiteOp(SiteOp),
    /// [`kinds::PLAN_RUN_RECORD`].
    RunRecord(RunRecord),
}

impl PlanRequest {
    /// The request of `kind` carrying `body`.
    pub fn decode(kind: u16, body: &[u8]) -> Result<Self, DecodeError> {
        match kind {
            kinds::PLAN_PUT => Ok(PlanRequest::Put(PlanPut::decode(body)?)),
            kinds::PLAN_SITE_OP => Ok(PlanRequest::SiteOp(SiteOp::decode(body)?)),
            kinds::PLAN_RUN_RECORD => Ok(PlanRequest::RunRecord(RunRecord::decode(body)?)),
            k => Err(DecodeError::UnknownKind(k)),
        }
    }

    /// Kind and body, as carried in a request.
    pub fn encode(&self) -> (u16, Bytes) {
        match self {
            PlanRequest::Put(r) => (PlanPut::KIND, r.encode()),
            PlanRequest::SiteOp(r) => (SiteOp::KIND, r.encode()),
            PlanRequest::RunRecord(r) => (RunRecord::KIND, r.encode()),
        }
    }
}

impl Rpc for PlanPut {
    const KIND: u16 = kinds::PLAN_PUT;
    const NAME: &'static str = "PLAN_PUT";
    type Reply = Done;
}

impl Rpc for SiteOp {
    const KIND: u16 = kinds::PLAN_SITE_OP;
    const NAME: &'static str = "PLAN_SITE_OP";
    type Reply = SiteOpDone;
}

impl Rpc for RunRecord {
    const KIND: u16 = kinds::PLAN_RUN_RECORD;
    const NAME: &'static str = "PLAN_RUN_RECORD";
    type Reply = Done;
}

impl Reply for SiteOpDone {
    fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
    fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(body).map_err(|source| DecodeError::Malformed {
            kind: kinds::PLAN_SITE_OP,
            name: "SiteOpDone",
            source,
        })
    }
}

/// [`kinds::PLAN_PUT`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanPut {
    /// The definition.
    pub plan: PlanInfo,
    /// Delete the plan instead of storing it.
    #[serde(default)]
    pub delete: bool,
}

/// [`kinds::PLAN_SITE_OP`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteOp {
    /// `stop-vm` (run the VM's stop hook) or `prepare` (fence the group
    /// and ship its final PIT; the VMs were stopped by `stop-vm` already).
    pub op: String,
    /// Plan the run belongs to.
    pub plan: String,
    /// Group.
    pub group: String,
    /// VM (`stop-vm`).
    #[serde(default)]
    pub vm: Option<String>,
}

/// Answer to [`kinds::PLAN_SITE_OP`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteOpDone {
    /// What was done, for the report.
    pub output: String,
}

/// [`kinds::PLAN_RUN_RECORD`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The run's report.
    pub report: PlanRunReport,
}

/// Sends a definition (or its deletion) to the plan's other site.
pub(crate) async fn push_plan(
    repl: &Replication,
    partner: &str,
    plan: &PlanInfo,
    delete: bool,
) -> Result<(), ReplError> {
    repl.call_partner(
        partner,
        &PlanPut {
            plan: plan.clone(),
            delete,
        },
    )
    .await
    .map(drop)
}

/// Asks the other site to do `op`; returns its output.
pub(crate) async fn site_op(
    repl: &Replication,
    partner: &str,
    op: &SiteOp,
) -> Result<String, ReplError> {
    Ok(repl.call_partner(partner, op).await?.output)
}

/// Copies a run's report to the other site.
pub(crate) async fn push_record(
    repl: &Replication,
    partner: &str,
    report: &PlanRunReport,
) -> Result<(), ReplError> {
    repl.call_partner(
        partner,
        &RunRecord {
            report: report.clone(),
        },
    )
    .await
    .map(drop)
}

/// Answers plan requests from partners (installed by [`Plans::new`]).
pub(crate) struct Handler(pub(crate) Weak<Plans>);

impl offsite_replication::RequestHandler for Handler {
    fn answer(
        &self,
        peer: String,
        kind: u16,
        body: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, RemoteError>> + Send + '_>>
    {
        Box::pin(async move {
            let plans = self
                .0
                .upgrade()
                .ok_or_else(|| RemoteError::Busy("the site is shutting down".into()))?;
            let request = PlanRequest::decode(kind, &body).map_err(|e| match e {
                DecodeError::UnknownKind(k) => RemoteError::Unsupported(format!(
                    "request kind {k} is not supported by site {} (version {}); upgrade it",
                    plans.site.config().name,
                    env!("CARGO_PKG_VERSION")
                )),
                e => RemoteError::from(e),
            })?;
            // The plans' dispatch table.
            match request {
                PlanRequest::Put(r) => plans.answer_put(&peer, r).await.map(|d| d.encode()),
                PlanRequest::SiteOp(r) => plans.answer_site_op(&peer, r).await.map(|d| d.encode()),
                PlanRequest::RunRecord(r) => {
                    plans.answer_record(&peer, r).await.map(|d| d.encode())
                }
            }
        })
    }
}

/// A plan error as the refusal the other site receives (its class kept).
fn remote(e: crate::PlanError) -> RemoteError {
    use offsite_engine::ErrorKind;
    let text = e.to_string();
    match e.kind() {
        ErrorKind::NotFound => RemoteError::NotFound(text),
        ErrorKind::Conflict => RemoteError::Conflict(text),
        ErrorKind::Invalid => RemoteError::BadRequest(text),
        ErrorKind::Busy => RemoteError::Busy(text),
        ErrorKind::Internal => RemoteError::Refused(text),
    }
}

impl Plans {
    async fn answer_put(self: &Arc<Self>, peer: &str, req: PlanPut) -> Result<Done, RemoteError> {
        let row = plan_row(&req.plan);
        let here = self.site.config().name.clone();
        if other_site(&row, &here) != peer
            || (row.protected_site != here && row.recovery_site != here)
        {
            return Err(RemoteError::Unauthorized(format!(
                "plan {} is between {} and {}; site {peer} cannot change it at {here}",
                row.name, row.protected_site, row.recovery_site
            )));
        }
        let _busy = self.busy(&row.name).map_err(remote)?;
        let site = self.site.clone();
        crate::blocking(move || {
            if req.delete {
                match site.plans().delete(&row.name) {
                    Ok(()) => crate::publish_copies(&site, &row, true),
                    // Already gone here: the delete is done.
                    Err(e) if e.kind() == offsite_engine::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                validate(&site, &row)?;
                site.plans().put(&row)?;
                crate::publish_copies(&site, &row, false);
            }
            Ok(())
        })
        .await
        .map_err(|e| remote(e).map_message(|m| format!("site {here}: {m}")))?;
        Ok(Done)
    }

    async fn answer_site_op(
        self: &Arc<Self>,
        peer: &str,
        req: SiteOp,
    ) -> Result<SiteOpDone, RemoteError> {
        let site = self.site.clone();
        let g = req.group.clone();
        let row = crate::blocking(move || Ok(site.groups().get(&g)?))
            .await
            .map_err(remote)?;
        if row.partner != peer {
            return Err(RemoteError::Unauthorized(format!(
                "group {} at {} replicates with {}, not {peer}",
                row.name,
                self.site.config().name,
                row.partner
            )));
        }
        let output = match req.op.as_str() {
            "stop-vm" => {
                let name = req.vm.clone().unwrap_or_default();
                let vm = row
                    .vms
                    .iter()
                    .find(|v| v.name == name)
                    .cloned()
                    .ok_or_else(|| {
                        RemoteError::NotFound(format!("group {} has no VM {name}", row.name))
                    })?;
                match vm.stop_cmd.clone() {
                    // A libvirt domain is stopped (ACPI, then destroy)
                    // and undefined; the partner defines it.
                    None if vm.libvirt_xml.is_some() => {
                        let site = self.site.clone();
                        crate::blocking(move || Ok(site.stop_vm_domain(&vm, false)?))
                            .await
                            .map_err(|e| RemoteError::Refused(e.to_string()))?
                    }
                    None => format!("VM {name} has no stop hook"),
                    Some(cmd) => {
                        let mut env = vec![
                            ("OFFSITE_MODE".to_string(), "planned".to_string()),
                            ("OFFSITE_PLAN".to_string(), req.plan.clone()),
                        ];
                        for (n, v) in vm.volumes.iter().enumerate() {
                            env.push((format!("OFFSITE_VOLUME_{n}_URL"), self.site.volume_url(v)));
                        }
                        let site = self.site.clone();
                        let group = row.name.clone();
                        let timeout = std::time::Duration::from_secs_f64(
                            site.config().failover.hook_timeout_secs,
                        );
                        let run = crate::blocking(move || {
                            Ok(site.run_hook(
                                &group,
                                &name,
                                HookAction::Stop,
                                &cmd,
                                &env,
                                timeout,
                            )?)
                        })
                        .await
                        .map_err(|e| RemoteError::Refused(e.to_string()))?;
                        format!(
                            "stop hook exited 0 after {} ms{}",
                            run.duration_ms,
                            crate::exec::quoted(&run.output)
                        )
                    }
                }
            }
            "prepare" => {
                let r = self.repl.failover_prepare_with(&req.group, false).await?;
                format!(
                    "fenced; final PIT {} shipped in {} ms",
                    r.pit, r.duration_ms
                )
            }
            other => {
                return Err(RemoteError::BadRequest(format!(
                    "unknown plan operation {other:?}"
                )));
            }
        };
        Ok(SiteOpDone { output })
    }

    async fn answer_record(
        self: &Arc<Self>,
        peer: &str,
        req: RunRecord,
    ) -> Result<Done, RemoteError> {
        if req.report.site != peer {
            return Err(RemoteError::Unauthorized(format!(
                "run {} was made at {}, not at {peer}",
                req.report.id, req.report.site
            )));
        }
        let site = self.site.clone();
        crate::blocking(move || crate::runner::store_record(&site, &req.report))
            .await
            .map_err(|e| RemoteError::Refused(e.to_string()))?;
        Ok(Done)
    }
}
