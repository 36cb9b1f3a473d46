//! VMs: a named, ordered set of volumes plus the hook commands failover
//! runs to stop and start it. offsite never needs a hypervisor to
//! replicate; the hooks are how it powers VMs during failover and tests.

use offsite_api_types::{CreateVm, VmInfo};
use offsite_catalog::VmRow;

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

impl Site {
    /// `vm create`.
    pub fn create_vm(&self, req: &CreateVm) -> Result<VmInfo, EngineError> {
        names::validate("VM", &req.name)?;
        if req.volumes.is_empty() {
            return Err(EngineError::Invalid(
                "a VM needs at least one volume: pass --volume NAME (repeat it for more disks, disk 0 first)".into(),
            ));
        }
        for (i, v) in req.volumes.iter().enumerate() {
            if req.volumes[..i].contains(v) {
                return Err(EngineError::Invalid(format!(
                    "volume {v:?} is listed twice; each disk of a VM is a different volume"
                )));
            }
        }
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

    /// `vm list`.
    pub fn vms(&self) -> Result<Vec<VmInfo>, EngineError> {
        Ok(self.catalog().vms()?.into_iter().map(vm_info).collect())
    }

    /// `vm show`.
    pub fn vm(&self, name: &str) -> Result<VmInfo, EngineError> {
        Ok(vm_info(self.catalog().vm(name)?))
    }

    /// `vm delete`: the VM's volumes are kept.
    pub fn delete_vm(&self, name: &str) -> Result<VmInfo, EngineError> {
        let vm = self.vm(name)?;
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
