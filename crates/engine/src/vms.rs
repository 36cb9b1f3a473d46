//! VMs: a named, ordered set of volumes plus the hook commands failover
//! runs to stop and start it. offsite never needs a hypervisor to
//! replicate; the hooks are how it powers VMs during failover and tests.

use crate::model::{CreateVm, SetVm, VmInfo};
use offsite_catalog::{GroupRow, VmRow};

use crate::{EngineError, Site, names};

fn vm_info(r: VmRow) -> VmInfo {
    VmInfo {
        name: r.name,
        volumes: r.volumes,
        start: r.start_cmd,
        stop: r.stop_cmd,
        status: r.status_cmd,
        created_at: r.created_at,
    }
}

/// A VM's volume list: at least one, none twice.
fn check_volumes(volumes: &[String]) -> Result<(), EngineError> {
    if volumes.is_empty() {
        return Err(EngineError::Invalid(
            "a VM needs at least one volume: pass --volume NAME (repeat it for more disks, disk 0 first)".into(),
        ));
    }
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].contains(v) {
            return Err(EngineError::Invalid(format!(
                "volume {v:?} is listed twice; each disk of a VM is a different volume"
            )));
        }
    }
    Ok(())
}

impl Site {
    /// `vm create`.
    pub fn create_vm(&self, req: &CreateVm) -> Result<VmInfo, EngineError> {
        names::validate("VM", &req.name)?;
        check_volumes(&req.volumes)?;
        for (what, hook) in [
            ("--start", &req.start),
            ("--stop", &req.stop),
            ("--status", &req.status),
        ] {
            if hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
                return Err(EngineError::Invalid(format!(
                    "{what} is empty; give a command or leave it out"
                )));
            }
        }
        let mut catalog = self.catalog();
        for v in &req.volumes {
            catalog.volume(v)?;
        }
        let row = catalog.insert_vm(&VmRow {
            name: req.name.clone(),
            volumes: req.volumes.clone(),
            start_cmd: req.start.clone(),
            stop_cmd: req.stop.clone(),
            status_cmd: req.status.clone(),
            created_at: String::new(),
        })?;
        drop(catalog);
        self.event(
            "vm.created",
            Some(&req.name),
            &format!("VM {} with volumes {}", req.name, req.volumes.join(", ")),
        );
        Ok(vm_info(row))
    }

    /// `vm set`, checked: the VM as it would be after `req`, and the groups
    /// (this site their primary) whose copy of it must follow. Nothing is
    /// written; [`Site::store_vm`] does that once the partners agreed.
    pub fn vm_change(
        &self,
        name: &str,
        req: &SetVm,
    ) -> Result<(VmRow, Vec<GroupRow>), EngineError> {
        let mut row = self.catalog().vm(name)?;
        let (groups, _) = self.vm_users(name)?;
        if let Some(volumes) = &req.volumes {
            if let Some(g) = groups.first() {
                return Err(EngineError::VmInUse {
                    name: name.to_string(),
                    why: format!("replication group {}", g.name),
                    what_to_do: format!(
                        "its volumes cannot change while the group replicates them: tear the group down first (`offsite group teardown {}`), or leave out --volume",
                        g.name
                    ),
                });
            }
            check_volumes(volumes)?;
            let catalog = self.catalog();
            for v in volumes {
                catalog.volume(v)?;
            }
            row.volumes = volumes.clone();
        }
        // An empty hook removes it.
        let hook = |new: &Option<String>, old: Option<String>| match new {
            Some(h) if h.trim().is_empty() => None,
            Some(h) => Some(h.clone()),
            None => old,
        };
        row.start_cmd = hook(&req.start, row.start_cmd);
        row.stop_cmd = hook(&req.stop, row.stop_cmd);
        row.status_cmd = hook(&req.status, row.status_cmd);
        let groups = groups
            .into_iter()
            .filter(|g| g.role == offsite_catalog::Role::Primary)
            .collect();
        Ok((row, groups))
    }

    /// Stores a VM changed by `vm set` (see [`Site::vm_change`]), with this
    /// site's copy in its groups.
    pub fn store_vm(&self, row: &VmRow, groups: &[String]) -> Result<VmInfo, EngineError> {
        let mut catalog = self.catalog();
        let stored = catalog.update_vm(row)?;
        for g in groups {
            catalog.set_group_vm_hooks(g, row)?;
        }
        drop(catalog);
        let hook = |h: &Option<String>| h.as_deref().unwrap_or("none").to_string();
        self.event(
            "vm.changed",
            Some(&row.name),
            &format!(
                "volumes {}; start {}; stop {}; status {}",
                row.volumes.join(", "),
                hook(&row.start_cmd),
                hook(&row.stop_cmd),
                hook(&row.status_cmd)
            ),
        );
        Ok(vm_info(stored))
    }

    /// `vm list`.
    pub fn vms(&self) -> Result<Vec<VmInfo>, EngineError> {
        Ok(self.catalog().vms()?.into_iter().map(vm_info).collect())
    }

    /// `vm show`.
    pub fn vm(&self, name: &str) -> Result<VmInfo, EngineError> {
        Ok(vm_info(self.catalog().vm(name)?))
    }

    /// The groups that hold VM `name` (either role) and the plans it is in.
    pub fn vm_users(&self, name: &str) -> Result<(Vec<GroupRow>, Vec<String>), EngineError> {
        let groups: Vec<GroupRow> = self
            .group_rows()?
            .into_iter()
            .filter(|g| g.vms.iter().any(|v| v.name == name))
            .collect();
        let plans = self
            .plans()
            .all()?
            .into_iter()
            .filter(|p| {
                p.vms.iter().any(|v| v.vm == name)
                    || groups.iter().any(|g| p.groups.contains(&g.name))
            })
            .map(|p| p.name)
            .collect();
        Ok((groups, plans))
    }

    /// `vm delete`: the VM's volumes are kept. Refused while a group or a
    /// recovery plan holds the VM: the group keeps a copy of it on both
    /// sites and brings it back at the next failover or failback.
    pub fn delete_vm(&self, name: &str) -> Result<VmInfo, EngineError> {
        let vm = self.vm(name)?;
        let (groups, plans) = self.vm_users(name)?;
        if !groups.is_empty() || !plans.is_empty() {
            let mut held = Vec::new();
            let mut todo = Vec::new();
            for p in &plans {
                held.push(format!("recovery plan {p}"));
                let plan = self.plans().get(p)?;
                for g in groups.iter().filter(|g| plan.groups.contains(&g.name)) {
                    todo.push(format!("`offsite plan remove-group {p} {}`", g.name));
                }
            }
            for g in &groups {
                held.push(format!("replication group {} (with {})", g.name, g.partner));
                todo.push(format!("`offsite group teardown {}`", g.name));
            }
            return Err(EngineError::VmInUse {
                name: name.to_string(),
                why: held.join(" and "),
                what_to_do: format!(
                    "{} first (the group would bring the VM back at the next failover or failback)",
                    todo.join(", then ")
                ),
            });
        }
        self.catalog().delete_vm(name)?;
        self.event(
            "vm.deleted",
            Some(name),
            "VM deleted (its volumes are kept)",
        );
        Ok(vm)
    }

    /// The VMs using volume `name`.
    pub fn vms_using(&self, volume: &str) -> Result<Vec<String>, EngineError> {
        Ok(self
            .vms()?
            .into_iter()
            .filter(|v| v.volumes.iter().any(|x| x == volume))
            .map(|v| v.name)
            .collect())
    }
}
