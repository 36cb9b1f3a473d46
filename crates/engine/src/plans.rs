//! Recovery plans in the site's catalog: the definitions and the run
//! reports, as the plan service (`offsite-plan`) reads and writes them.
//! Validation and running live there; this is only the catalog access,
//! behind its own handle ([`Site::plans`]) rather than on `Site` itself.

use offsite_catalog::{PlanRow, RunRow};

use crate::{EngineError, Site};

impl Site {
    /// The site's recovery plans and their runs.
    pub fn plans(&self) -> PlanCatalog<'_> {
        PlanCatalog { site: self }
    }
}

/// The recovery plans and runs in a site's catalog (see [`Site::plans`]).
#[derive(Debug, Clone, Copy)]
pub struct PlanCatalog<'a> {
    site: &'a Site,
}

impl PlanCatalog<'_> {
    /// Every plan.
    pub fn all(&self) -> Result<Vec<PlanRow>, EngineError> {
        Ok(self.site.catalog().plans()?)
    }

    /// The plan called `name`.
    pub fn get(&self, name: &str) -> Result<PlanRow, EngineError> {
        Ok(self.site.catalog().plan(name)?)
    }

    /// Writes a plan's definition whole.
    pub fn put(&self, plan: &PlanRow) -> Result<(), EngineError> {
        Ok(self.site.catalog().put_plan(plan)?)
    }

    /// Deletes a plan's definition.
    pub fn delete(&self, name: &str) -> Result<(), EngineError> {
        Ok(self.site.catalog().delete_plan(name)?)
    }

    /// Writes a run with its steps.
    pub fn put_run(&self, run: &RunRow) -> Result<(), EngineError> {
        Ok(self.site.catalog().put_run(run)?)
    }

    /// The run `id` with its steps.
    pub fn run(&self, id: &str) -> Result<RunRow, EngineError> {
        Ok(self.site.catalog().run(id)?)
    }

    /// The runs of a plan, oldest first (without steps).
    pub fn runs(&self, plan: &str) -> Result<Vec<RunRow>, EngineError> {
        Ok(self.site.catalog().runs(plan)?)
    }

    /// A new run id, unique across both sites: `SITE-N`.
    pub fn next_run_id(&self) -> Result<String, EngineError> {
        let name = &self.site.config().name;
        let n = self.site.catalog().run_count(name)? + 1;
        Ok(format!("{name}-{n}"))
    }
}
