//! VMs: a named, ordered set of volumes plus the hook commands failover
//! runs to stop and start it, or a libvirt domain (`vm create --libvirt`)
//! whose definition offsite keeps and which it starts, stops and asks
//! through libvirt. offsite never needs a hypervisor to replicate; hooks
//! and libvirt are how it powers VMs during failover and tests.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::model::{CreateVm, CreateVolume, SetVm, VmInfo};
use offsite_catalog::{GroupRow, VmRow};
use offsite_hypervisor::{DiskSource, Domain, DomainState, Libvirt, NbdSource, StopOutcome};

use crate::{EngineError, Site, names};

/// A file disk to import: its target (`vda`), the new volume and the file.
type DiskImport = (String, String, String);

/// The domain name in a VM's libvirt XML (the XML was parsed when it was
/// stored, so a parse failure here means a damaged catalog row).
pub fn domain_name(xml: &str) -> Option<String> {
    Domain::parse(xml).ok().map(|d| d.name().to_string())
}

fn vm_info(r: VmRow) -> VmInfo {
    VmInfo {
        name: r.name,
        volumes: r.volumes,
        start: r.start_cmd,
        stop: r.stop_cmd,
        status: r.status_cmd,
        libvirt_domain: r.libvirt_xml.as_deref().and_then(domain_name),
        libvirt_xml: r.libvirt_xml,
        libvirt_state: None,
        quiesce: r.quiesce_cmd,
        thaw: r.thaw_cmd,
        created_at: r.created_at,
    }
}

/// A VM's quiesce and thaw hooks: both or neither (a quiesced VM that
/// nothing thaws would stay frozen), and neither empty.
fn check_quiesce(quiesce: &Option<String>, thaw: &Option<String>) -> Result<(), EngineError> {
    for (what, hook) in [("--quiesce", quiesce), ("--thaw", thaw)] {
        if hook.as_deref().is_some_and(|h| h.trim().is_empty()) {
            return Err(EngineError::Invalid(format!(
                "{what} is empty; give a command or leave it out"
            )));
        }
    }
    match (quiesce, thaw) {
        (Some(_), None) => Err(EngineError::Invalid(
            "--quiesce needs --thaw: the thaw hook undoes the quiesce right after the checkpoint's cut (e.g. --quiesce 'fsfreeze -f /srv' --thaw 'fsfreeze -u /srv')".into(),
        )),
        (None, Some(_)) => Err(EngineError::Invalid(
            "--thaw needs --quiesce: a thaw hook runs only after a quiesce hook".into(),
        )),
        _ => Ok(()),
    }
}

/// A libvirt failure as an engine error: what failed, for which VM.
fn libvirt_error(vm: &str, e: offsite_hypervisor::LibvirtError) -> EngineError {
    match e {
        e @ offsite_hypervisor::LibvirtError::NoSuchDomain { .. } => {
            EngineError::NotFound(format!("VM {vm}: {e}"))
        }
        e => EngineError::Conflict(format!("VM {vm}: {e}")),
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
    /// The libvirt of this site (`[libvirt] uri` in `config.toml`).
    pub fn libvirt(&self) -> Libvirt {
        Libvirt::new(&self.config().libvirt.uri)
    }

    /// `vm create`.
    pub fn create_vm(self: &Arc<Self>, req: &CreateVm) -> Result<VmInfo, EngineError> {
        names::validate("VM", &req.name)?;
        check_quiesce(&req.quiesce, &req.thaw)?;
        if let Some(domain) = &req.libvirt {
            return self.create_libvirt_vm(req, domain);
        }
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
            libvirt_xml: None,
            quiesce_cmd: req.quiesce.clone(),
            thaw_cmd: req.thaw.clone(),
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

    /// `vm create NAME --libvirt DOMAIN`: reads the domain's definition,
    /// maps each disk to a volume — a disk already on one of this site's
    /// exports keeps its volume, a file or block-device disk is imported
    /// into a new volume `NAME-TARGET` and the domain redefined with that
    /// disk on the volume's export — and keeps the definition with the VM.
    fn create_libvirt_vm(
        self: &Arc<Self>,
        req: &CreateVm,
        domain: &str,
    ) -> Result<VmInfo, EngineError> {
        if !req.volumes.is_empty()
            || req.start.is_some()
            || req.stop.is_some()
            || req.status.is_some()
        {
            return Err(EngineError::Invalid(
                "--libvirt takes the volumes from the domain's disks and starts and stops it through libvirt: leave out --volume, --start, --stop and --status (--quiesce and --thaw are allowed)".into(),
            ));
        }
        let lv = self.libvirt();
        let vm = &req.name;
        let parsed = lv
            .dump_xml(domain)
            .map_err(|e| libvirt_error(vm, e))
            .and_then(|xml| {
                Domain::parse(&xml)
                    .map_err(|e| EngineError::Invalid(format!("domain {domain}: {e}")))
            })?;
        if parsed.disks().is_empty() {
            return Err(EngineError::Invalid(format!(
                "domain {domain} has no disk (device='disk') to protect; add its disks first"
            )));
        }
        let (volumes, imports) = self.map_domain_disks(vm, domain, &parsed)?;
        check_volumes(&volumes)?;
        let xml = if imports.is_empty() {
            parsed.xml().to_string()
        } else {
            self.import_domain_disks(&lv, vm, domain, &parsed, &imports)?
        };
        let row = self.catalog().insert_vm(&VmRow {
            name: vm.clone(),
            volumes: volumes.clone(),
            start_cmd: None,
            stop_cmd: None,
            status_cmd: None,
            libvirt_xml: Some(xml),
            quiesce_cmd: req.quiesce.clone(),
            thaw_cmd: req.thaw.clone(),
            created_at: String::new(),
        })?;
        self.event(
            "vm.created",
            Some(vm),
            &format!(
                "VM {vm}: libvirt domain {domain} with volumes {}{}",
                volumes.join(", "),
                if imports.is_empty() {
                    String::new()
                } else {
                    format!(
                        " ({} imported; the domain now uses their NBD exports)",
                        imports
                            .iter()
                            .map(|(_, v, p)| format!("{p} into {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            ),
        );
        Ok(vm_info(row))
    }

    /// Each disk of `domain` as a volume of this site: a disk on one of
    /// this site's exports keeps its volume; a file or block-device disk is
    /// to be imported into a new volume `VM-TARGET` (returned as
    /// `(target, volume, path)`); anything else is refused.
    fn map_domain_disks(
        &self,
        vm: &str,
        domain: &str,
        parsed: &Domain,
    ) -> Result<(Vec<String>, Vec<DiskImport>), EngineError> {
        let here = self.volume_url("");
        let here = here.trim_start_matches("nbd://").trim_end_matches('/');
        let mut volumes = Vec::new();
        let mut imports = Vec::new();
        for d in parsed.disks() {
            match &d.source {
                DiskSource::Nbd(n) => {
                    let local = matches!(n.host.as_str(), "127.0.0.1" | "localhost" | "::1")
                        || here.starts_with(&format!("{}:", n.host));
                    if !local || !here.ends_with(&format!(":{}", n.port)) {
                        return Err(EngineError::Invalid(format!(
                            "disk {} of domain {domain} is NBD export {} at {}:{}, not on this site ({here}); import its data into a volume here first",
                            d.target, n.export, n.host, n.port
                        )));
                    }
                    self.catalog().volume(&n.export)?;
                    volumes.push(n.export.clone());
                }
                DiskSource::File(path) | DiskSource::Block(path) => {
                    let volume = format!("{vm}-{}", d.target);
                    names::validate("volume", &volume)?;
                    imports.push((d.target.clone(), volume.clone(), path.clone()));
                    volumes.push(volume);
                }
                DiskSource::Other(what) => {
                    return Err(EngineError::Invalid(format!(
                        "disk {} of domain {domain} ({what}) is neither a file, a block device nor an NBD export; offsite cannot replicate it",
                        d.target
                    )));
                }
            }
        }
        Ok((volumes, imports))
    }

    /// Copies the file disks of a shut-off `domain` into their new volumes
    /// and redefines the domain with those disks on the volumes' exports;
    /// returns the definition as libvirt now has it.
    fn import_domain_disks(
        self: &Arc<Self>,
        lv: &Libvirt,
        vm: &str,
        domain: &str,
        parsed: &Domain,
        imports: &[DiskImport],
    ) -> Result<String, EngineError> {
        let state = lv.state(domain).map_err(|e| libvirt_error(vm, e))?;
        if state.is_active() {
            return Err(EngineError::Conflict(format!(
                "domain {domain} is {}: its file disks are copied into offsite volumes, which needs it shut off; `virsh shutdown {domain}`, then run this again",
                state.as_str()
            )));
        }
        let mut disks = BTreeMap::new();
        for d in parsed.disks() {
            if let DiskSource::Nbd(n) = &d.source {
                disks.insert(d.target.clone(), n.clone());
            }
        }
        for (target, volume, path) in imports {
            self.create_volume(&CreateVolume {
                name: volume.clone(),
                size_bytes: None,
                block_size: None,
                import_path: Some(path.clone()),
            })?;
            let url = self.volume_url(volume);
            disks.insert(target.clone(), nbd_source(&url, volume));
        }
        let converted = parsed
            .with_nbd_disks(&disks)
            .map_err(|e| EngineError::Invalid(format!("domain {domain}: {e}")))?;
        lv.define(&converted).map_err(|e| libvirt_error(vm, e))?;
        lv.dump_xml(domain).map_err(|e| libvirt_error(vm, e))
    }

    /// Starts the libvirt domain `domain` of VM `vm` (defined already).
    pub fn start_domain(&self, vm: &str, domain: &str) -> Result<(), EngineError> {
        self.libvirt()
            .start(domain)
            .map_err(|e| libvirt_error(vm, e))?;
        self.event(
            "vm.started",
            Some(vm),
            &format!("libvirt domain {domain} started"),
        );
        Ok(())
    }

    /// Stops the libvirt domain `domain` of VM `vm`: an ACPI shutdown,
    /// then destroy after `[libvirt] stop_timeout_secs`.
    pub fn stop_domain(&self, vm: &str, domain: &str) -> Result<StopOutcome, EngineError> {
        let grace = Duration::from_secs_f64(self.config().libvirt.stop_timeout_secs.max(0.0));
        let outcome = self
            .libvirt()
            .stop(domain, grace)
            .map_err(|e| libvirt_error(vm, e))?;
        let how = match outcome {
            StopOutcome::WasStopped => "was not running",
            StopOutcome::Graceful => "shut down",
            StopOutcome::Forced => "did not shut down in time and was destroyed",
        };
        self.event(
            "vm.stopped",
            Some(vm),
            &format!("libvirt domain {domain} {how}"),
        );
        Ok(outcome)
    }

    /// The state of the libvirt domain `domain` of VM `vm`.
    pub fn domain_state(&self, vm: &str, domain: &str) -> Result<DomainState, EngineError> {
        self.libvirt()
            .state(domain)
            .map_err(|e| libvirt_error(vm, e))
    }

    /// Defines VM `vm`'s libvirt domain at this site on `exports` (per
    /// volume of the VM, the URL of its export here) and starts it.
    ///
    /// At the VM's home (its definition's disks are these exports) a
    /// failover back restores the original definition verbatim. Elsewhere
    /// the domain is the home's definition with each disk on its export
    /// here and its networks mapped by `networks`; a test copy (`test_network` given) is
    /// named `DOMAIN-test`, loses the UUID (libvirt makes one, so it can
    /// run beside the original) and has every interface on the test
    /// network, created isolated if missing.
    pub fn start_vm_domain(
        &self,
        vm: &VmRow,
        exports: &[(String, String)],
        test_network: Option<&str>,
        networks: &BTreeMap<String, String>,
    ) -> Result<String, EngineError> {
        let Some(xml) = &vm.libvirt_xml else {
            return Err(EngineError::Invalid(format!(
                "VM {} is no libvirt domain",
                vm.name
            )));
        };
        let bad = |e: offsite_hypervisor::DomainXmlError| {
            EngineError::Invalid(format!("VM {}: {e}", vm.name))
        };
        let domain = Domain::parse(xml).map_err(bad)?;
        let lv = self.libvirt();
        let mut disks = BTreeMap::new();
        for (d, volume) in domain.disks().iter().zip(&vm.volumes) {
            let url = exports
                .iter()
                .find(|(v, _)| v == volume)
                .map(|(_, u)| u)
                .ok_or_else(|| {
                    EngineError::Invalid(format!(
                        "VM {}: volume {volume} (disk {}) is not served at this site",
                        vm.name, d.target
                    ))
                })?;
            let export = url.rsplit('/').next().unwrap_or(volume);
            disks.insert(d.target.clone(), nbd_source(url, export));
        }
        // The definition already names these exports (the VM is back at
        // its home site, or both sites serve it at the same address) and
        // no network moves: it is restored verbatim.
        let as_is = test_network.is_none()
            && domain.disks().iter().all(
                |d| matches!(&d.source, DiskSource::Nbd(n) if disks.get(&d.target) == Some(n)),
            )
            && !domain.networks().iter().any(|n| networks.contains_key(n));
        let (name, definition) = if as_is {
            (domain.name().to_string(), xml.clone())
        } else {
            if let Some(net) = test_network {
                lv.ensure_isolated_network(net)
                    .map_err(|e| libvirt_error(&vm.name, e))?;
            }
            let name = match test_network {
                Some(_) => format!("{}-test", domain.name()),
                None => domain.name().to_string(),
            };
            let xml = domain
                .for_recovery(&offsite_hypervisor::Recovery {
                    name: name.clone(),
                    keep_uuid: test_network.is_none(),
                    disks,
                    networks: networks.clone(),
                    all_networks: test_network.map(str::to_string),
                })
                .map_err(bad)?;
            (name, xml)
        };
        lv.define(&definition)
            .map_err(|e| libvirt_error(&vm.name, e))?;
        self.start_domain(&vm.name, &name)?;
        Ok(name)
    }

    /// Stops VM `vm`'s libvirt domain at this site (its test copy with
    /// `test`) and undefines it: the definition lives on in the catalog,
    /// and the site the VM moves to (or returns to) defines it there.
    pub fn stop_vm_domain(&self, vm: &VmRow, test: bool) -> Result<String, EngineError> {
        self.stop_vm_domain_graceful(vm, test).map(|(_, what)| what)
    }

    /// [`Site::stop_vm_domain`], also saying whether the domain shut down
    /// in answer to the ACPI request (an orderly shutdown: its disks are
    /// consistent), rather than being destroyed after the grace period or
    /// found stopped already (how it stopped is not known).
    pub fn stop_vm_domain_graceful(
        &self,
        vm: &VmRow,
        test: bool,
    ) -> Result<(bool, String), EngineError> {
        let Some(name) = vm.libvirt_xml.as_deref().and_then(domain_name) else {
            return Err(EngineError::Invalid(format!(
                "VM {} is no libvirt domain",
                vm.name
            )));
        };
        let name = if test { format!("{name}-test") } else { name };
        let lv = self.libvirt();
        if !lv.exists(&name).map_err(|e| libvirt_error(&vm.name, e))? {
            return Ok((false, format!("libvirt domain {name} is not defined here")));
        }
        let outcome = self.stop_domain(&vm.name, &name)?;
        let how = match outcome {
            StopOutcome::WasStopped => "was not running",
            StopOutcome::Graceful => "shut down",
            StopOutcome::Forced => "was destroyed after the shutdown timeout",
        };
        lv.undefine(&name).map_err(|e| libvirt_error(&vm.name, e))?;
        self.event(
            "vm.undefined",
            Some(&vm.name),
            &format!("libvirt domain {name} {how} and was undefined"),
        );
        Ok((
            outcome == StopOutcome::Graceful,
            format!("libvirt domain {name} {how}, undefined"),
        ))
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
        row.quiesce_cmd = hook(&req.quiesce, row.quiesce_cmd);
        row.thaw_cmd = hook(&req.thaw, row.thaw_cmd);
        check_quiesce(&row.quiesce_cmd, &row.thaw_cmd)?;
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
                "volumes {}; start {}; stop {}; status {}; quiesce {}; thaw {}",
                row.volumes.join(", "),
                hook(&row.start_cmd),
                hook(&row.stop_cmd),
                hook(&row.status_cmd),
                hook(&row.quiesce_cmd),
                hook(&row.thaw_cmd)
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

    /// `vm show` with the state of a libvirt VM's domain asked from
    /// libvirt (its status goes through libvirt, not a hook).
    pub fn vm_with_state(&self, name: &str) -> Result<VmInfo, EngineError> {
        let mut vm = self.vm(name)?;
        if let Some(domain) = &vm.libvirt_domain {
            vm.libvirt_state = Some(match self.libvirt().state(domain) {
                Ok(s) => crate::model::LibvirtState::Defined(s),
                Err(offsite_hypervisor::LibvirtError::NoSuchDomain { .. }) => {
                    crate::model::LibvirtState::Undefined
                }
                Err(_) => crate::model::LibvirtState::Unreachable,
            });
        }
        Ok(vm)
    }

    /// The groups that hold VM `name` (either role) and the plans it is in.
    pub fn vm_users(&self, name: &str) -> Result<(Vec<GroupRow>, Vec<String>), EngineError> {
        let groups: Vec<GroupRow> = self
            .groups()
            .all()?
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

/// The libvirt source of a volume's export `url` (`nbd://HOST:PORT/NAME`).
pub fn nbd_source(url: &str, export: &str) -> NbdSource {
    let addr = url
        .trim_start_matches("nbd://")
        .split('/')
        .next()
        .unwrap_or("");
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "10809"));
    NbdSource {
        export: export.to_string(),
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: port.parse().unwrap_or(10809),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site() -> (tempfile::TempDir, Arc<Site>) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        crate::init::init_site(
            &d,
            &crate::init::InitOptions {
                name: "vmsite".into(),
                listen: "127.0.0.1:0".into(),
                api: "127.0.0.1:0".into(),
                nbd: "127.0.0.1:0".into(),
                api_tls: Default::default(),
            },
        )
        .unwrap();
        let site = Site::open(&d).unwrap();
        site.create_volume(&CreateVolume {
            name: "d0".into(),
            size_bytes: Some(1 << 20),
            block_size: None,
            import_path: None,
        })
        .unwrap();
        (dir, site)
    }

    fn create(quiesce: Option<&str>, thaw: Option<&str>) -> CreateVm {
        CreateVm {
            name: "db".into(),
            volumes: vec!["d0".into()],
            start: None,
            stop: None,
            status: None,
            libvirt: None,
            quiesce: quiesce.map(str::to_string),
            thaw: thaw.map(str::to_string),
        }
    }

    #[test]
    fn quiesce_and_thaw_hooks_come_together() {
        let (_d, site) = site();
        let e = site
            .create_vm(&create(Some("fsfreeze -f /srv"), None))
            .unwrap_err();
        assert!(e.to_string().contains("--quiesce needs --thaw"), "{e}");
        let e = site.create_vm(&create(None, Some("true"))).unwrap_err();
        assert!(e.to_string().contains("--thaw needs --quiesce"), "{e}");
        let e = site
            .create_vm(&create(Some(" "), Some("true")))
            .unwrap_err();
        assert!(e.to_string().contains("--quiesce is empty"), "{e}");
        let vm = site
            .create_vm(&create(Some("fsfreeze -f /srv"), Some("fsfreeze -u /srv")))
            .unwrap();
        assert_eq!(vm.quiesce.as_deref(), Some("fsfreeze -f /srv"));
        assert_eq!(
            site.vm("db").unwrap().thaw.as_deref(),
            Some("fsfreeze -u /srv")
        );
        // Removing one of the pair alone would leave a VM frozen for good
        // (or a thaw with nothing to undo): refused; both together go.
        let e = site
            .vm_change(
                "db",
                &SetVm {
                    thaw: Some(String::new()),
                    ..SetVm::default()
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("--quiesce needs --thaw"), "{e}");
        let (row, groups) = site
            .vm_change(
                "db",
                &SetVm {
                    quiesce: Some(String::new()),
                    thaw: Some(String::new()),
                    ..SetVm::default()
                },
            )
            .unwrap();
        assert!(groups.is_empty());
        let vm = site.store_vm(&row, &[]).unwrap();
        assert_eq!((vm.quiesce, vm.thaw), (None, None));
    }
}
