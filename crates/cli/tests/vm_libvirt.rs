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
    let xml = kit.domain_xml(
        &name,
        "a",
        &disks,
        Some(net),
        Some(&console),
        AfterMarkers::Stay,
    );
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

    // `vm create --libvirt`: a file disk is imported into a new volume and
    // the domain redefined on its export; a disk already on this site's
    // export keeps its volume.
    let image = s.scratch().join("file-disk.img");
    write_image(&image, 8 << 20, &[(1 << 20, 4096, 0x5c)]);
    let file_domain = format!("{name}-file");
    let file_xml = xml
        .replacen(&format!("<name>{name}</name>"), &format!("<name>{file_domain}</name>"), 1)
        .replacen(
            &format!(
                "<disk type='network' device='disk'>\n      <driver name='qemu' type='raw' cache='none'/>\n      <source protocol='nbd' name='web0'>\n        <host name='{}' port='{}'/>\n      </source>",
                disks[0].host, disks[0].port
            ),
            &format!(
                "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>",
                image.display()
            ),
            1,
        );
    assert!(file_xml.contains("type='file'"), "{file_xml}");
    lv.define(&file_xml).unwrap();
    let _undefine_file = Undefine(&lv, file_domain.clone());
    let vm = s.json(&["vm", "create", "filevm", "--libvirt", &file_domain]);
    assert_eq!(
        vm["volumes"],
        serde_json::json!(["filevm-vda", "web1"]),
        "{vm}"
    );
    assert_eq!(vm["libvirt_domain"], file_domain.as_str(), "{vm}");
    let redefined = offsite_hypervisor::Domain::parse(&lv.dump_xml(&file_domain).unwrap()).unwrap();
    assert_eq!(
        redefined.disks()[0].source,
        offsite_hypervisor::DiskSource::Nbd(NbdSource {
            export: "filevm-vda".into(),
            ..disks[0].clone()
        })
    );
    wait_until("the import", Duration::from_secs(60), || {
        s.json(&["volume", "show", "filevm-vda"])["state"] == "ready"
    });
    offsite_testkit::qemu_io(&s.url("filevm-vda"), &["read -P 0x5c 1M 4K"]);

    // A disk on another site's export is refused, naming the disk.
    let foreign = format!("{name}-foreign");
    lv.define(
        &file_xml
            .replacen(
                &format!("<name>{file_domain}</name>"),
                &format!("<name>{foreign}</name>"),
                1,
            )
            .replacen(&format!("port='{}'", disks[1].port), "port='1'", 1),
    )
    .unwrap();
    let _undefine_foreign = Undefine(&lv, foreign.clone());
    let e = s.fails(&["vm", "create", "foreign", "--libvirt", &foreign]);
    assert!(
        e.contains("disk vdb") && e.contains("not on this site"),
        "{e}"
    );
}

/// Waits until every disk in `urls` holds exactly the markers `want`,
/// read from outside the guest (the domains of both sites run on this
/// host's one libvirt, which refuses them a shared console file). A read
/// while the guest writes may fail or see the old list: it is retried.
fn wait_markers(site: &offsite_testkit::TestSite, urls: &[String], want: &[&str]) {
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let scratch = site.scratch().join("markers");
    for u in urls {
        loop {
            let got = GuestKit::read_markers(&GuestDisk::Nbd(u.clone()), &scratch);
            if got
                .as_ref()
                .is_ok_and(|m| m.iter().map(String::as_str).eq(want.iter().copied()))
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{u}: markers {got:?}, expected {want:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A started site with the group tests' timers whose libvirt gives a
/// domain 3 s to shut down (the guest ignores ACPI: every stop is forced).
fn libvirt_site(name: &str) -> offsite_testkit::TestSite {
    let mut s = offsite_testkit::TestSite::init(bin(), name);
    set_replication_config(
        &s,
        &format!("{GROUP_REPLICATION}\n[libvirt]\nstop_timeout_secs = 3.0\n"),
    );
    s.start();
    keep_listen_port(&s);
    s
}

/// The plan run's report (`plan run ... --json`), which must succeed.
fn plan_run(site: &offsite_testkit::TestSite, plan: &str, mode: &str) -> serde_json::Value {
    let r = site.json(&["plan", "run", plan, "--mode", mode]);
    assert_eq!(r["status"], "succeeded", "{mode}: {r}");
    r
}

#[test]
fn a_protected_domain_is_drilled_migrated_and_failed_back_with_every_marker() {
    let a = libvirt_site("site-a");
    let Some(kit) = guest_kit(&a.scratch()) else {
        return;
    };
    let Some(lv) = libvirt() else {
        return;
    };
    let b = libvirt_site("site-b");
    pair(&a, &b);
    authorize_primary(&b, a.name(), None);
    authorize_primary(&a, b.name(), None);

    // The domain at A: two disks on A's exports, one interface on the
    // protected network; it keeps running after writing its markers.
    let urls = [
        a.create_volume("web0", "64M"),
        a.create_volume("web1", "32M"),
    ];
    let prod = "offsite-t-prod";
    lv.ensure_isolated_network(prod)
        .expect("the protected network");
    let domain = format!("offsite-t-dr-{}", std::process::id());
    let test_domain = format!("{domain}-test");
    let disks: Vec<NbdSource> = urls.iter().map(|u| nbd_source(u)).collect();
    let xml = kit.domain_xml(&domain, "web", &disks, Some(prod), None, AfterMarkers::Stay);
    lv.define(&xml).expect("define");
    let _undefine = Undefine(&lv, domain.clone());
    let _undefine_test = Undefine(&lv, test_domain.clone());
    let original = lv.dump_xml(&domain).unwrap();

    let vm = a.json(&["vm", "create", "web", "--libvirt", &domain]);
    assert_eq!(vm["volumes"], serde_json::json!(["web0", "web1"]), "{vm}");
    assert_eq!(vm["libvirt_domain"], domain.as_str(), "{vm}");
    lv.start(&domain).unwrap();
    wait_markers(&a, &urls, &["001-web"]);
    assert_eq!(a.json(&["vm", "show", "web"])["libvirt_state"], "running");

    create_group(&a, "g", "site-b", &["--vm", "web"], &[]);
    a.json(&["group", "start", "g"]);
    sync_pit(&a, "g", &[]);
    a.json(&[
        "plan",
        "create",
        "dr",
        "--protected-site",
        "site-a",
        "--recovery-site",
        "site-b",
    ]);
    a.json(&["plan", "add-group", "dr", "g"]);
    let recovery_net = "offsite-t-dr-net";
    lv.ensure_isolated_network(recovery_net)
        .expect("the recovery network");
    let plan = a.json(&[
        "plan",
        "set-network-map",
        "dr",
        &format!("{prod}={recovery_net}"),
    ]);
    assert_eq!(plan["network_map"][prod], recovery_net, "{plan}");
    assert_eq!(
        b.json(&["plan", "show", "dr"]),
        plan,
        "B keeps the same plan"
    );

    // A group's own test failover defines NAME-test on the group's
    // isolated test network; stop-test stops and undefines it.
    b.json(&["failover", "run", "g", "--test"]);
    let own = offsite_hypervisor::Domain::parse(&lv.dump_xml(&test_domain).unwrap()).unwrap();
    assert_eq!(own.networks(), ["offsite-test-g"]);
    assert_eq!(lv.state(&test_domain).unwrap(), DomainState::Running);
    b.json(&["failover", "stop-test", "g"]);
    assert!(
        !lv.exists(&test_domain).unwrap(),
        "stop-test undefines the test copy"
    );

    // Drill at B: NAME-test on the test clones, on the plan's isolated
    // test network, while A's copy keeps running.
    plan_run(&b, "dr", "test");
    let b_nbd = site_addr(&b, "nbd");
    let b_port = nbd_source(&format!("nbd://{b_nbd}/x")).port;
    let clones = ["web0", "web1"].map(|v| format!("nbd://{b_nbd}/{v}@g.test"));
    wait_markers(&b, &clones, &["001-web", "002-web"]);
    assert_eq!(lv.state(&domain).unwrap(), DomainState::Running);
    let test_xml = offsite_hypervisor::Domain::parse(&lv.dump_xml(&test_domain).unwrap()).unwrap();
    assert_eq!(test_xml.networks(), ["offsite-test-dr"]);
    for d in test_xml.disks() {
        let offsite_hypervisor::DiskSource::Nbd(n) = &d.source else {
            panic!("{d:?} is not on an NBD export");
        };
        assert!(n.export.ends_with("@g.test"), "{n:?}");
    }
    plan_run(&b, "dr", "cleanup");
    assert!(
        !lv.exists(&test_domain).unwrap(),
        "cleanup undefines the test copy"
    );
    assert_eq!(lv.state(&domain).unwrap(), DomainState::Running);

    // Planned migration: A's domain stopped and undefined, defined at B on
    // B's exports (the same UUID) and the mapped network, and booted: the drill's marker is gone
    // with its clones, A's first one is there.
    plan_run(&b, "dr", "planned");
    let at_b = ["web0", "web1"].map(|v| b.url(v));
    wait_markers(&b, &at_b, &["001-web", "002-web"]);
    let at_b = offsite_hypervisor::Domain::parse(&lv.dump_xml(&domain).unwrap()).unwrap();
    assert_eq!(at_b.networks(), [recovery_net], "the network map applies");
    assert!(
        at_b.disks().iter().all(
            |d| matches!(&d.source, offsite_hypervisor::DiskSource::Nbd(n) if n.port == b_port)
        ),
        "{at_b:?}"
    );

    // Reprotect from B, then failback: B's domain stopped and undefined,
    // the original definition restored at A and booted with every marker.
    plan_run(&b, "dr", "reprotect");
    plan_run(&a, "dr", "failback");
    wait_markers(&a, &urls, &["001-web", "002-web", "003-web"]);
    assert_eq!(
        lv.dump_xml(&domain).unwrap(),
        original,
        "the home definition is restored"
    );
}
