//! Recovery plans and their runs in the catalog (schema v8).
//!
//! A plan's definition is written whole ([`Catalog::put_plan`]: delete and
//! insert in one transaction) because it is also received whole from the
//! partner site, which keeps the same plan. A run is written whole on every
//! step change ([`Catalog::put_run`]), so what a client is told about a run
//! has been persisted first, and an interrupted run can be resumed from the
//! catalog alone.

use rusqlite::{OptionalExtension, params};

use crate::{Catalog, CatalogError, now_rfc3339};

/// A recovery plan's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanRow {
    /// Plan name (the same on both sites).
    pub name: String,
    /// The site the plan protects (its groups' primary in normal operation).
    pub protected_site: String,
    /// The site the plan recovers to.
    pub recovery_site: String,
    /// Free text.
    pub description: Option<String>,
    /// Network name handed to hooks in test mode.
    pub test_network: Option<String>,
    /// Protected site's network to the recovery site's, for the libvirt
    /// domains the plan starts there (`plan set-network-map`).
    pub network_map: std::collections::BTreeMap<String, String>,
    /// VMs of one tier started at once, at most.
    pub parallel: u32,
    /// RFC 3339 creation time (kept as received from the partner).
    pub created_at: String,
    /// Replication groups, in order.
    pub groups: Vec<String>,
    /// VMs with their priority tier.
    pub vms: Vec<PlanVmRow>,
    /// Callout steps, in order.
    pub steps: Vec<PlanStepRow>,
}

/// A VM of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanVmRow {
    /// VM name.
    pub vm: String,
    /// Its replication group.
    pub group: String,
    /// Priority tier, 1 (first) to 5.
    pub priority: u8,
    /// `tcp:HOST:PORT` or `cmd:COMMAND`, checked after the start hook.
    pub wait_for: Option<String>,
    /// How long the wait may take.
    pub wait_timeout_secs: u64,
}

/// A callout step of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanStepRow {
    /// Step name, unique in the plan.
    pub name: String,
    /// `command` or `prompt`.
    pub kind: String,
    /// The command, or the prompt's text.
    pub body: String,
    /// Runs after the VMs of this tier are up (0: before tier 1).
    pub after_tier: u8,
    /// Skipped by test runs.
    pub skip_in_test: bool,
    /// Command timeout.
    pub timeout_secs: u64,
}

/// A run of a plan (its report, without the steps' details).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRow {
    /// Run id, unique across both sites (`SITE-N`).
    pub id: String,
    /// Plan name.
    pub plan: String,
    /// Run mode.
    pub mode: String,
    /// Site that ran it.
    pub site: String,
    /// `running`, `waiting`, `failed`, `succeeded`, `succeeded-with-errors`.
    pub status: String,
    /// Site the VMs were moved from (or tested from).
    pub from_site: String,
    /// Site the VMs run at afterwards (or were tested at).
    pub to_site: String,
    /// RFC 3339 start.
    pub started_at: String,
    /// RFC 3339 end.
    pub finished_at: Option<String>,
    /// Time from the start to the last VM up.
    pub rto_ms: Option<u64>,
    /// Per-group results (JSON, owned by the plan runner).
    pub groups: String,
    /// Errors (JSON array of strings).
    pub errors: String,
    /// Steps, in order.
    pub steps: Vec<RunStepRow>,
}

/// A step of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunStepRow {
    /// Position in the run.
    pub index: u32,
    /// What the step does, for people.
    pub name: String,
    /// Machine-readable kind.
    pub kind: String,
    /// Group it acts on.
    pub group: Option<String>,
    /// VM it acts on.
    pub vm: Option<String>,
    /// Priority tier.
    pub tier: Option<u8>,
    /// Site it acts at.
    pub site: String,
    /// `pending`, `running`, `succeeded`, `failed`, `skipped`, `waiting`.
    pub status: String,
    /// RFC 3339 start.
    pub started_at: Option<String>,
    /// RFC 3339 end.
    pub finished_at: Option<String>,
    /// Wall time.
    pub duration_ms: Option<u64>,
    /// What it printed or did.
    pub output: String,
    /// Why it failed.
    pub error: Option<String>,
}

impl Catalog {
    /// Writes a plan's whole definition (replacing any with that name).
    pub fn put_plan(&mut self, p: &PlanRow) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = move |source| CatalogError::Sqlite {
            path: path.clone(),
            context: "write plan",
            source,
        };
        let tx = self.conn.transaction().map_err(err.clone())?;
        tx.execute("DELETE FROM plans WHERE name = ?1", [&p.name])
            .map_err(err.clone())?;
        let created = if p.created_at.is_empty() {
            now_rfc3339()
        } else {
            p.created_at.clone()
        };
        tx.execute(
            "INSERT INTO plans (name, protected_site, recovery_site, description, test_network, parallel, created_at, network_map)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                p.name,
                p.protected_site,
                p.recovery_site,
                p.description,
                p.test_network,
                p.parallel,
                created,
                (!p.network_map.is_empty()).then(|| {
                    p.network_map
                        .iter()
                        .map(|(from, to)| format!("{from}={to}\n"))
                        .collect::<String>()
                })
            ],
        )
        .map_err(err.clone())?;
        for (i, g) in p.groups.iter().enumerate() {
            tx.execute(
                "INSERT INTO plan_groups (plan, position, group_name) VALUES (?1, ?2, ?3)",
                params![p.name, i as i64, g],
            )
            .map_err(err.clone())?;
        }
        for v in &p.vms {
            tx.execute(
                "INSERT INTO plan_vms (plan, vm, group_name, priority, wait_for, wait_timeout_secs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    p.name,
                    v.vm,
                    v.group,
                    v.priority,
                    v.wait_for,
                    v.wait_timeout_secs as i64
                ],
            )
            .map_err(err.clone())?;
        }
        for (i, s) in p.steps.iter().enumerate() {
            tx.execute(
                "INSERT INTO plan_steps (plan, position, name, kind, body, after_tier, skip_in_test, timeout_secs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    p.name,
                    i as i64,
                    s.name,
                    s.kind,
                    s.body,
                    s.after_tier,
                    s.skip_in_test,
                    s.timeout_secs as i64
                ],
            )
            .map_err(err.clone())?;
        }
        tx.commit().map_err(err)
    }

    /// The plan called `name`.
    pub fn plan(&self, name: &str) -> Result<PlanRow, CatalogError> {
        self.plans()?
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| CatalogError::NoSuchPlan(name.to_string()))
    }

    /// Every plan, by name.
    pub fn plans(&self) -> Result<Vec<PlanRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, protected_site, recovery_site, description, test_network, parallel, created_at, network_map
                 FROM plans ORDER BY name",
            )
            .map_err(self.err("list plans"))?;
        let mut plans = stmt
            .query_map([], |r| {
                Ok(PlanRow {
                    name: r.get(0)?,
                    protected_site: r.get(1)?,
                    recovery_site: r.get(2)?,
                    description: r.get(3)?,
                    test_network: r.get(4)?,
                    // `plan set-network-map` refuses '=' and newlines in
                    // the protected network's name.
                    network_map: r
                        .get::<_, Option<String>>(7)?
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.split_once('='))
                        .map(|(from, to)| (from.to_string(), to.to_string()))
                        .collect(),
                    parallel: r.get(5)?,
                    created_at: r.get(6)?,
                    groups: Vec::new(),
                    vms: Vec::new(),
                    steps: Vec::new(),
                })
            })
            .map_err(self.err("list plans"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list plans"))?;
        let mut stmt = self
            .conn
            .prepare("SELECT plan, group_name FROM plan_groups ORDER BY plan, position")
            .map_err(self.err("list plans"))?;
        let groups = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(self.err("list plans"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list plans"))?;
        for (plan, g) in groups {
            if let Some(p) = plans.iter_mut().find(|p| p.name == plan) {
                p.groups.push(g);
            }
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT plan, vm, group_name, priority, wait_for, wait_timeout_secs
                 FROM plan_vms ORDER BY plan, priority, vm",
            )
            .map_err(self.err("list plans"))?;
        let vms = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PlanVmRow {
                        vm: r.get(1)?,
                        group: r.get(2)?,
                        priority: r.get(3)?,
                        wait_for: r.get(4)?,
                        wait_timeout_secs: r.get::<_, i64>(5)? as u64,
                    },
                ))
            })
            .map_err(self.err("list plans"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list plans"))?;
        for (plan, v) in vms {
            if let Some(p) = plans.iter_mut().find(|p| p.name == plan) {
                p.vms.push(v);
            }
        }
        let mut stmt = self
            .conn
            .prepare(
                "SELECT plan, name, kind, body, after_tier, skip_in_test, timeout_secs
                 FROM plan_steps ORDER BY plan, position",
            )
            .map_err(self.err("list plans"))?;
        let steps = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PlanStepRow {
                        name: r.get(1)?,
                        kind: r.get(2)?,
                        body: r.get(3)?,
                        after_tier: r.get(4)?,
                        skip_in_test: r.get(5)?,
                        timeout_secs: r.get::<_, i64>(6)? as u64,
                    },
                ))
            })
            .map_err(self.err("list plans"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list plans"))?;
        for (plan, s) in steps {
            if let Some(p) = plans.iter_mut().find(|p| p.name == plan) {
                p.steps.push(s);
            }
        }
        Ok(plans)
    }

    /// Deletes a plan's definition (its runs' reports are kept).
    pub fn delete_plan(&self, name: &str) -> Result<(), CatalogError> {
        self.change_row(
            "delete plan",
            || CatalogError::NoSuchPlan(name.to_string()),
            |c| c.execute("DELETE FROM plans WHERE name = ?1", [name]),
        )
    }

    /// Writes a run with all its steps (replacing the previous state).
    pub fn put_run(&mut self, run: &RunRow) -> Result<(), CatalogError> {
        let path = self.path.clone();
        let err = move |source| CatalogError::Sqlite {
            path: path.clone(),
            context: "write plan run",
            source,
        };
        let tx = self.conn.transaction().map_err(err.clone())?;
        tx.execute(
            "INSERT INTO plan_runs (id, plan, mode, site, status, from_site, to_site, started_at,
                                    finished_at, rto_ms, groups, errors)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT(id) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at,
                 rto_ms = excluded.rto_ms, groups = excluded.groups, errors = excluded.errors",
            params![
                run.id,
                run.plan,
                run.mode,
                run.site,
                run.status,
                run.from_site,
                run.to_site,
                run.started_at,
                run.finished_at,
                run.rto_ms.map(|v| v as i64),
                run.groups,
                run.errors
            ],
        )
        .map_err(err.clone())?;
        tx.execute("DELETE FROM plan_run_steps WHERE run_id = ?1", [&run.id])
            .map_err(err.clone())?;
        for s in &run.steps {
            tx.execute(
                "INSERT INTO plan_run_steps (run_id, idx, name, kind, group_name, vm, tier, site, status,
                                             started_at, finished_at, duration_ms, output, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    run.id,
                    s.index,
                    s.name,
                    s.kind,
                    s.group,
                    s.vm,
                    s.tier,
                    s.site,
                    s.status,
                    s.started_at,
                    s.finished_at,
                    s.duration_ms.map(|v| v as i64),
                    s.output,
                    s.error
                ],
            )
            .map_err(err.clone())?;
        }
        tx.commit().map_err(err)
    }

    /// The run `id` with its steps.
    pub fn run(&self, id: &str) -> Result<RunRow, CatalogError> {
        let mut run = self
            .conn
            .query_row(
                "SELECT id, plan, mode, site, status, from_site, to_site, started_at, finished_at,
                        rto_ms, groups, errors
                 FROM plan_runs WHERE id = ?1",
                [id],
                run_row,
            )
            .optional()
            .map_err(self.err("read plan run"))?
            .ok_or_else(|| CatalogError::NoSuchRun(id.to_string()))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, name, kind, group_name, vm, tier, site, status, started_at, finished_at,
                        duration_ms, output, error
                 FROM plan_run_steps WHERE run_id = ?1 ORDER BY idx",
            )
            .map_err(self.err("read plan run"))?;
        run.steps = stmt
            .query_map([id], |r| {
                Ok(RunStepRow {
                    index: r.get(0)?,
                    name: r.get(1)?,
                    kind: r.get(2)?,
                    group: r.get(3)?,
                    vm: r.get(4)?,
                    tier: r.get(5)?,
                    site: r.get(6)?,
                    status: r.get(7)?,
                    started_at: r.get(8)?,
                    finished_at: r.get(9)?,
                    duration_ms: r.get::<_, Option<i64>>(10)?.map(|v| v as u64),
                    output: r.get(11)?,
                    error: r.get(12)?,
                })
            })
            .map_err(self.err("read plan run"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("read plan run"))?;
        Ok(run)
    }

    /// The runs of `plan` without their steps, oldest first.
    pub fn runs(&self, plan: &str) -> Result<Vec<RunRow>, CatalogError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, plan, mode, site, status, from_site, to_site, started_at, finished_at,
                        rto_ms, groups, errors
                 FROM plan_runs WHERE plan = ?1 ORDER BY started_at, rowid",
            )
            .map_err(self.err("list plan runs"))?;
        stmt.query_map([plan], run_row)
            .map_err(self.err("list plan runs"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err("list plan runs"))
    }

    /// How many runs this catalog holds that `site` ran (the next run id).
    pub fn run_count(&self, site: &str) -> Result<u64, CatalogError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM plan_runs WHERE site = ?1",
                [site],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(self.err("count plan runs"))
    }
}

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        plan: r.get(1)?,
        mode: r.get(2)?,
        site: r.get(3)?,
        status: r.get(4)?,
        from_site: r.get(5)?,
        to_site: r.get(6)?,
        started_at: r.get(7)?,
        finished_at: r.get(8)?,
        rto_ms: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
        groups: r.get(10)?,
        errors: r.get(11)?,
        steps: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> PlanRow {
        PlanRow {
            name: "dr".into(),
            protected_site: "a".into(),
            recovery_site: "b".into(),
            description: None,
            test_network: Some("isolated".into()),
            network_map: [("prod".to_string(), "dr-prod".to_string())].into(),
            parallel: 4,
            created_at: String::new(),
            groups: vec!["g1".into(), "g2".into()],
            vms: vec![PlanVmRow {
                vm: "vm1".into(),
                group: "g1".into(),
                priority: 1,
                wait_for: Some("tcp:127.0.0.1:22".into()),
                wait_timeout_secs: 30,
            }],
            steps: vec![PlanStepRow {
                name: "check".into(),
                kind: "command".into(),
                body: "true".into(),
                after_tier: 1,
                skip_in_test: false,
                timeout_secs: 60,
            }],
        }
    }

    #[test]
    fn plans_and_runs_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::create(&dir.path().join("c.db")).unwrap();
        let p = plan();
        c.put_plan(&p).unwrap();
        let got = c.plan("dr").unwrap();
        assert_eq!(got.groups, p.groups);
        assert_eq!(got.vms, p.vms);
        assert_eq!(got.steps, p.steps);
        assert!(!got.created_at.is_empty());
        // Rewriting keeps the creation time given.
        c.put_plan(&got).unwrap();
        assert_eq!(c.plan("dr").unwrap(), got);
        let mut run = RunRow {
            id: "a-1".into(),
            plan: "dr".into(),
            mode: "test".into(),
            site: "b".into(),
            status: "running".into(),
            from_site: "a".into(),
            to_site: "b".into(),
            started_at: now_rfc3339(),
            finished_at: None,
            rto_ms: None,
            groups: "[]".into(),
            errors: "[]".into(),
            steps: vec![RunStepRow {
                index: 0,
                name: "test failover of g1".into(),
                kind: "test-failover".into(),
                group: Some("g1".into()),
                vm: None,
                tier: None,
                site: "b".into(),
                status: "pending".into(),
                started_at: None,
                finished_at: None,
                duration_ms: None,
                output: String::new(),
                error: None,
            }],
        };
        c.put_run(&run).unwrap();
        run.status = "succeeded".into();
        run.steps[0].status = "succeeded".into();
        run.rto_ms = Some(1200);
        c.put_run(&run).unwrap();
        assert_eq!(c.run("a-1").unwrap(), run);
        assert_eq!(c.runs("dr").unwrap().len(), 1);
        assert_eq!(c.run_count("b").unwrap(), 1);
        c.delete_plan("dr").unwrap();
        assert!(matches!(c.plan("dr"), Err(CatalogError::NoSuchPlan(_))));
        assert!(c.run("a-1").is_ok(), "reports outlive the plan");
        assert!(matches!(c.run("zz"), Err(CatalogError::NoSuchRun(_))));
    }
}
