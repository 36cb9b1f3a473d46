//! Site-to-site requests of recovery plans, carried as JSON bodies of
//! `offsite-protocol` requests with the kinds below (40 and up: the
//! replication crate hands them to [`Handler`]). Numbers are wire format:
//! never reuse one.
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
use offsite_repl::{ReplError, Replication};
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
    let body = serde_json::to_vec(&PlanPut {
        plan: plan.clone(),
        delete,
    })
    .unwrap_or_default();
    repl.request_partner(partner, kinds::PLAN_PUT, body)
        .await
        .map(drop)
}

/// Asks the other site to do `op`; returns its output.
pub(crate) async fn site_op(
    repl: &Replication,
    partner: &str,
    op: &SiteOp,
) -> Result<String, ReplError> {
    let body = serde_json::to_vec(op).unwrap_or_default();
    let answer = repl
        .request_partner(partner, kinds::PLAN_SITE_OP, body)
        .await?;
    let done: SiteOpDone = serde_json::from_slice(&answer).map_err(|e| ReplError::Protocol {
        partner: partner.to_string(),
        why: e.to_string(),
    })?;
    Ok(done.output)
}

/// Copies a run's report to the other site.
pub(crate) async fn push_record(
    repl: &Replication,
    partner: &str,
    report: &PlanRunReport,
) -> Result<(), ReplError> {
    let body = serde_json::to_vec(&RunRecord {
        report: report.clone(),
    })
    .unwrap_or_default();
    repl.request_partner(partner, kinds::PLAN_RUN_RECORD, body)
        .await
        .map(drop)
}

/// Answers plan requests from partners (installed by [`Plans::new`]).
pub(crate) struct Handler(pub(crate) Weak<Plans>);

impl offsite_repl::RequestHandler for Handler {
    fn answer(
        &self,
        peer: String,
        kind: u16,
        body: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, String>> + Send + '_>>
    {
        Box::pin(async move {
            let plans = self
                .0
                .upgrade()
                .ok_or_else(|| "the site is shutting down".to_string())?;
            match kind {
                kinds::PLAN_PUT => plans.answer_put(&peer, &body).await,
                kinds::PLAN_SITE_OP => plans.answer_site_op(&peer, &body).await,
                kinds::PLAN_RUN_RECORD => plans.answer_record(&peer, &body).await,
                k => Err(format!(
                    "request kind {k} is not supported by site {} (version {}); upgrade it",
                    plans.site.config().name,
                    env!("CARGO_PKG_VERSION")
                )),
            }
        })
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("malformed request: {e}"))
}

impl Plans {
    async fn answer_put(self: &Arc<Self>, peer: &str, body: &[u8]) -> Result<Bytes, String> {
        let req: PlanPut = parse(body)?;
        let row = plan_row(&req.plan);
        let here = self.site.config().name.clone();
        if other_site(&row, &here) != peer
            || (row.protected_site != here && row.recovery_site != here)
        {
            return Err(format!(
                "plan {} is between {} and {}; site {peer} cannot change it at {here}",
                row.name, row.protected_site, row.recovery_site
            ));
        }
        let _busy = self.busy(&row.name).map_err(|e| e.to_string())?;
        let site = self.site.clone();
        crate::blocking(move || {
            if req.delete {
                match site.delete_plan_row(&row.name) {
                    Ok(()) => {}
                    // Already gone here: the delete is done.
                    Err(e) if e.kind() == offsite_engine::ErrorKind::NotFound => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                validate(&site, &row)?;
                site.put_plan_row(&row)?;
            }
            Ok(())
        })
        .await
        .map_err(|e| format!("site {here}: {e}"))?;
        Ok(Bytes::new())
    }

    async fn answer_site_op(self: &Arc<Self>, peer: &str, body: &[u8]) -> Result<Bytes, String> {
        let req: SiteOp = parse(body)?;
        let site = self.site.clone();
        let g = req.group.clone();
        let row = crate::blocking(move || Ok(site.group_row(&g)?))
            .await
            .map_err(|e| e.to_string())?;
        if row.partner != peer {
            return Err(format!(
                "group {} at {} replicates with {}, not {peer}",
                row.name,
                self.site.config().name,
                row.partner
            ));
        }
        let output = match req.op.as_str() {
            "stop-vm" => {
                let name = req.vm.clone().unwrap_or_default();
                let vm = row
                    .vms
                    .iter()
                    .find(|v| v.name == name)
                    .cloned()
                    .ok_or_else(|| format!("group {} has no VM {name}", row.name))?;
                match vm.stop_cmd.clone() {
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
                        .map_err(|e| e.to_string())?;
                        format!(
                            "stop hook exited 0 after {} ms{}",
                            run.duration_ms,
                            crate::exec::quoted(&run.output)
                        )
                    }
                }
            }
            "prepare" => {
                let r = self
                    .repl
                    .failover_prepare_with(&req.group, false)
                    .await
                    .map_err(|e| e.to_string())?;
                format!(
                    "fenced; final PIT {} shipped in {} ms",
                    r.pit, r.duration_ms
                )
            }
            other => return Err(format!("unknown plan operation {other:?}")),
        };
        Ok(Bytes::from(
            serde_json::to_vec(&SiteOpDone { output }).unwrap_or_default(),
        ))
    }

    async fn answer_record(self: &Arc<Self>, peer: &str, body: &[u8]) -> Result<Bytes, String> {
        let req: RunRecord = parse(body)?;
        if req.report.site != peer {
            return Err(format!(
                "run {} was made at {}, not at {peer}",
                req.report.id, req.report.site
            ));
        }
        let site = self.site.clone();
        crate::blocking(move || crate::runner::store_record(&site, &req.report))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Bytes::new())
    }
}
