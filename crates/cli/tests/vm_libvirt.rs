//! libvirt domains on offsite volumes: the test guest defined as a libvirt
//! domain (TCG, two disks on a site's NBD exports, one interface on an
//! isolated network), started, stopped (graceful, then forced) and
//! undefined through `offsite_hypervisor::Libvirt`; its markers read back
//! from the exports. Skipped (reason printed) without libvirt and the
//! guest's packages; a failure under CI.

mod common;

use std::time::{Duration, Instant};

use common::*;
use offsite_hypervisor::{AfterMarkers, BootReport, GuestDisk, GuestKit, NbdSource};
use offsite_testkit::guest::{BOOT_TIMEOUT, guest_kit};
use offsite_testkit::libvirt::{DomainState, Libvirt, StopOutcome, libvirt};

/// `nbd://HOST:PORT/EXPORT` as a libvirt disk source.
fn nbd_source(url: &str) -> NbdSource {
    let rest = url.strip_prefix("nbd://").expect("an nbd:// URL");
    let (addr, export) = rest.split_once('/').expect("an export name");
    let (host, port) = addr.rsplit_once(':').expect("a port");
    NbdSource {
        export: export.to_string(),
        host: host.to_string(),
        port: port.parse().expect("a port number"),
    }
}

/// Destroys and undefines the domain however the test ends.
struct Undefine<'a>(&'a Libvirt, String);

impl Drop for Undefine<'_> {
    fn drop(&mut self) {
        let _ = self.0.stop(&self.1, Duration::ZERO);
        let _ = self.0.undefine(&self.1);
    }
}

/// Waits for the guest's report on its console.
fn wait_report(console: &std::path::Path) -> BootReport {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    loop {
        let log = std::fs::read_to_string(console).unwrap_or_default();
        match BootReport::parse(&log) {
            Ok(Some(r)) => return r,
            Err(e) => panic!("the guest failed: {e}\n{log}"),
            Ok(None) if Instant::now() >= deadline => panic!("no report from the guest:\n{log}"),
            Ok(None) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

#[test]
fn a_libvirt_domain_on_offsite_volumes_starts_stops_and_keeps_its_markers() {
    let s = site("lv-a");
    let Some(kit) = guest_kit(&s.scratch()) else {
        return;
    };
    let Some(lv) = libvirt() else {
        return;
    };
    let urls = [
        s.create_volume("web0", "64M"),
        s.create_volume("web1", "32M"),
    ];
    let net = "offsite-t-isolated";
    lv.ensure_isolated_network(net)
        .expect("an isolated network");
    let name = format!("offsite-t-web-{}", std::process::id());
    let console = s.scratch().join("console.log");
    let disks: Vec<NbdSource> = urls.iter().map(|u| nbd_source(u)).collect();
    let xml = kit.domain_xml(&name, "a", &disks, Some(net), &console, AfterMarkers::Stay);
    lv.define(&xml).expect("define");
    let _undefine = Undefine(&lv, name.clone());
    assert_eq!(lv.state(&name).unwrap(), DomainState::ShutOff);

    lv.start(&name).expect("start");
    let report = wait_report(&console);
    assert_eq!(report.disk("vda"), ["001-a"]);
    assert_eq!(report.disk("vdb"), ["001-a"]);
    assert_eq!(lv.state(&name).unwrap(), DomainState::Running);
    // The guest ignores the ACPI request: the stop ends with destroy.
    assert_eq!(
        lv.stop(&name, Duration::from_secs(2)).unwrap(),
        StopOutcome::Forced
    );
    assert_eq!(lv.state(&name).unwrap(), DomainState::ShutOff);
    assert_eq!(
        lv.stop(&name, Duration::from_secs(2)).unwrap(),
        StopOutcome::WasStopped
    );
    for u in &urls {
        let markers = GuestKit::read_markers(&GuestDisk::Nbd(u.clone()), &s.scratch()).unwrap();
        assert_eq!(markers, ["001-a"], "{u}");
    }

    // The definition read back and defined again is the same text.
    let dumped = lv.dump_xml(&name).unwrap();
    lv.undefine(&name).unwrap();
    assert!(!lv.exists(&name).unwrap());
    lv.define(&dumped).unwrap();
    assert_eq!(lv.dump_xml(&name).unwrap(), dumped);
    let e = lv.dump_xml("offsite-t-no-such-domain").unwrap_err();
    assert!(e.to_string().contains("no libvirt domain named"), "{e}");
}
