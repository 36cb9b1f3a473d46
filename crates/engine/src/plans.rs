//! Recovery plans in the site's catalog: the definitions and the run
//! reports, as the plan service (`offsite-plan`) reads and writes them.
//! Validation and running live there; this is only the catalog access.

use offsite_catalog::{PlanRow, RunRow};

use crate::{EngineError, Site};

impl Site {
    /// Every plan.
    pub fn plan_rows(&self) -> Result<Vec<PlanRow>, EngineError> {
        Ok(self.catalog().plans()?)
    }

    /// The plan called `name`.
    pub fn plan_row(&self, name: &str) -> Result<PlanRow, EngineError> {
        Ok(self.catalog().plan(name)?)
    }

    /// Writes a plan's definition whole.
    pub fn put_plan_row(&self, plan: &PlanRow) -> Result<(), EngineError> {
        Ok(self.catalog().put_plan(plan)?)
    }

    /// Deletes a plan's definition.
    pub fn delete_plan_row(&self, name: &str) -> Result<(), EngineError> {
        Ok(self.catalog().delete_plan(name)?)
    }

    /// Writes a run with its steps.
    pub fn put_run_row(&self, run: &RunRow) -> Result<(), EngineError> {
        Ok(self.catalog().put_run(run)?)
    }

    /// The run `id` with its steps.
    pub fn run_row(&self, id: &str) -> Result<RunRow, EngineError> {
        Ok(self.catalog().run(id)?)
    }

    /// The runs of a plan, oldest first (without steps).
    pub fn run_rows(&self, plan: &str) -> Result<Vec<RunRow>, EngineError> {
        Ok(self.catalog().runs(plan)?)
    }

    /// A new run id, unique across both sites: `SITE-N`.
    pub fn next_run_id(&self) -> Result<String, EngineError> {
        let name = &self.config().name;
        let n = self.catalog().run_count(name)? + 1;
        Ok(format!("{name}-{n}"))
    }
}
