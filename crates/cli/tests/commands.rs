//! Commands that must not leave a site broken (issue 17): a refused
//! `volume create` leaves nothing behind and names the limit, imports of
//! what is not a file or disk are refused before anything reads them, VMs
//! in a group or plan cannot be deleted, settings can be changed in place,
//! and PIT names that would be ambiguous are refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use offsite_testkit::{TestSite, qemu_io, sh};

/// The files in a directory, except ext4's `lost+found`.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    names.sort();
    names
}

/// A loop-mounted ext4 (4 KiB blocks) on a directory, unmounted on drop.
#[derive(Debug)]
struct Ext4Mount(Option<PathBuf>);

impl Drop for Ext4Mount {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
        }
    }
}

/// Makes sure `dir` lives on ext4 with 4 KiB blocks (whose largest file is
/// 16 TiB - 4 KiB): as it is when the temporary directory is on such an
/// ext4, or by mounting a small ext4 image on it (needs root). `None` when
/// neither is possible here (a failure under CI).
fn on_ext4(dir: &Path, scratch: &Path) -> Option<Ext4Mount> {
    let fs = sh("stat", &["-f", "-c", "%T %S", dir.to_str().unwrap()]);
    if fs.trim() == "ext2/ext3 4096" {
        return Some(Ext4Mount(None));
    }
    let ci = std::env::var_os("CI").is_some();
    if sh("id", &["-u"]).trim() != "0" || !have_tools(&["mkfs.ext4", "mount", "umount"]) {
        assert!(!ci, "needs ext4: run as root with mkfs.ext4 and mount");
        eprintln!(
            "skipping: {} is on {fs} and ext4 cannot be mounted here",
            dir.display()
        );
        return None;
    }
    let image = scratch.join("ext4.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    sh(
        "mkfs.ext4",
        &["-q", "-F", "-b", "4096", image.to_str().unwrap()],
    );
    sh(
        "mount",
        &["-o", "loop", image.to_str().unwrap(), dir.to_str().unwrap()],
    );
    Some(Ext4Mount(Some(dir.to_path_buf())))
}

#[test]
fn a_volume_too_large_for_the_file_system_is_refused_and_leaves_nothing() {
    let mut site = TestSite::init(bin(), "a");
    let volumes = site.dir().join("volumes");
    std::fs::create_dir_all(&volumes).unwrap();
    let Some(_mount) = on_ext4(&volumes, &site.scratch()) else {
        return;
    };
    site.start();
    let before = entries(&volumes);

    for _ in 0..2 {
        let err = site.fails(&[
            "volume",
            "create",
            "big",
            "--size",
            "17T",
            "--block-size",
            "64K",
        ]);
        assert!(
            err.contains(&format!(
                "the file system holding {} refuses files of 17 TiB",
                volumes.display()
            )),
            "the error names the directory and the size: {err}"
        );
        // ext4 with 4 KiB blocks: at most 2^32 - 1 blocks per file.
        assert!(
            err.contains("its limit is 17592186040320 bytes (~16.0 TiB)"),
            "the error names the real limit: {err}"
        );
        assert!(err.contains("smaller volume"), "says what to do: {err}");
        assert_eq!(
            entries(&volumes),
            before,
            "a refused create leaves no file behind"
        );
        assert_eq!(
            site.json(&["volume", "list"]),
            serde_json::json!([]),
            "nor a catalog row"
        );
    }

    // The next create works (it used to find the leftover file in its way).
    let v = site.json(&["volume", "create", "small", "--size", "1M"]);
    assert_eq!(v["state"], "ready");
    assert_eq!(v["size_bytes"], 1 << 20);
    assert!(
        entries(&volumes).iter().any(|n| n.ends_with(".img")),
        "the new volume has its data file: {:?}",
        entries(&volumes)
    );
    site.stop();
}

#[test]
fn import_of_a_fifo_or_a_directory_is_refused_before_reading() {
    let site = site("a");
    let scratch = site.scratch();
    let fifo = scratch.join("pipe");
    sh("mkfifo", &[fifo.to_str().unwrap()]);
    let dir = scratch.join("a-directory");
    std::fs::create_dir(&dir).unwrap();

    // A FIFO with no writer: opening it for reading would block forever.
    let out = output_within(
        Command::new(bin())
            .args(["volume", "create", "p", "--import"])
            .arg(&fifo)
            .arg("--dir")
            .arg(site.dir()),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(
        err.contains(&format!(
            "import source {} is a FIFO (named pipe); give a regular file (a raw image) or a block device",
            fifo.display()
        )),
        "{err}"
    );

    let err = site.fails(&["volume", "create", "d", "--import", dir.to_str().unwrap()]);
    assert!(
        err.contains(&format!(
            "import source {} is a directory; give a regular file",
            dir.display()
        )),
        "{err}"
    );
    assert!(!err.contains("9223372036854775807"), "{err}");
    assert_eq!(site.json(&["volume", "list"]), serde_json::json!([]));

    // A regular file still imports.
    let image = scratch.join("disk.raw");
    write_image(&image, 1 << 20, &[(4096, 4096, 7)]);
    let v = site.json(&["volume", "create", "r", "--import", image.to_str().unwrap()]);
    assert_eq!(v["state"], "ready");
    assert_eq!(v["size_bytes"], 1 << 20);
}

/// `group start NAME --json`, which must reach its first PIT.
fn start_group(a: &TestSite, group: &str) -> serde_json::Value {
    let out = a.run(&["group", "start", group, "--json"]);
    assert!(
        out.status.success(),
        "group start {group}: {}\nprimary log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&a.log(), 40)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("group start --json");
    assert_eq!(st["state"], "replicating", "{st}");
    st
}

#[test]
fn pit_names_that_read_as_ids_or_repeat_are_refused() {
    let (a, b) = group_pair();
    a.create_volume("disk0", "4M");
    create_group(&a, "g", "site-b", &["--volume", "disk0"], &[]);
    start_group(&a, "g");

    // From either site (the replica forwards to the primary).
    for site in [&a, &b] {
        let err = site.fails(&["sync", "g", "--pit-name", "12"]);
        assert!(
            err.contains("PIT name \"12\" reads as a PIT id") && err.contains("pit-12"),
            "{}: {err}",
            site.name()
        );
    }
    let first = sync_pit(&a, "g", &["--pit-name", "nightly"]);
    for site in [&a, &b] {
        let err = site.fails(&["sync", "g", "--pit-name", "nightly"]);
        assert!(
            err.contains(&format!(
                "group g already has a PIT named \"nightly\" (PIT {})",
                u(&first, "id")
            )) && err.contains("offsite pit release g nightly"),
            "{}: {err}",
            site.name()
        );
    }
    let named: Vec<_> = pit_ids(&b, "g")
        .into_iter()
        .filter(|(_, n)| n.as_deref() == Some("nightly"))
        .collect();
    assert_eq!(named.len(), 1, "one PIT named nightly: {named:?}");

    // Once released (here from the primary), the name may be given again
    // at once.
    a.ok(&["pit", "release", "g", "nightly"]);
    let second = sync_pit(&a, "g", &["--pit-name", "nightly"]);
    assert!(u(&second, "id") > u(&first, "id"));
    let named: Vec<_> = pit_ids(&b, "g")
        .into_iter()
        .filter(|(_, n)| n.as_deref() == Some("nightly"))
        .collect();
    assert_eq!(named, vec![(u(&second, "id"), Some("nightly".into()))]);

    // Two syncs with one new name at once, from both sites: one wins.
    let racers: Vec<_> = [&a, &b, &a]
        .iter()
        .map(|site| {
            Command::new(bin())
                .args(["sync", "g", "--pit-name", "raced", "--dir"])
                .arg(site.dir())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outcomes: Vec<_> = racers
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let won = outcomes.iter().filter(|o| o.status.success()).count();
    assert_eq!(
        won, 1,
        "exactly one racing sync names the PIT: {outcomes:?}"
    );
    for o in outcomes.iter().filter(|o| !o.status.success()) {
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("PIT named \"raced\""),
            "the others are told why: {err}"
        );
    }
    let raced = pit_ids(&b, "g")
        .into_iter()
        .filter(|(_, n)| n.as_deref() == Some("raced"))
        .count();
    assert_eq!(raced, 1);
}

/// The entries for group `group` in the replica's storage location `dir`
/// (stores live in `DIR/PRIMARY/GROUP`): its store and any copy a
/// teardown kept aside (`GROUP.torn-down-TIME`).
fn stores_of(dir: &Path, group: &str) -> Vec<String> {
    entries(&dir.join("site-a"))
        .into_iter()
        .filter(|n| n == group || n.starts_with(&format!("{group}.")))
        .collect()
}

#[test]
fn vms_in_groups_or_plans_stay_and_change_in_place_and_teardown_deletes_the_replica() {
    let (a, b) = group_pair();
    let storage = b.scratch().join("replicas-of-site-a");
    let hooks = b.scratch().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    a.create_volume("d0", "4M");
    a.create_volume("d1", "4M");
    a.json(&[
        "vm",
        "create",
        "web",
        "--volume",
        "d0",
        "--start",
        &format!("echo old > {}/start-$OFFSITE_MODE", hooks.display()),
    ]);
    create_group(&a, "g", "site-b", &["--vm", "web"], &[]);
    start_group(&a, "g");
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

    // Deleting it would only last until the group brings it back.
    let err = a.fails(&["vm", "delete", "web"]);
    for words in [
        "VM \"web\" is in recovery plan dr and replication group g",
        "`offsite plan remove-group dr g`, then `offsite group teardown g` first",
    ] {
        assert!(err.contains(words), "{err}");
    }
    assert_eq!(a.json(&["vm", "show", "web"])["name"], "web");

    // Its volumes cannot change while the group replicates them...
    let err = a.fails(&["vm", "set", "web", "--volume", "d1"]);
    assert!(
        err.contains("VM \"web\" is in replication group g; its volumes cannot change while the group replicates them"),
        "{err}"
    );
    // ...its hooks can, and the replica's copy follows: a test failover at
    // site-b runs the new start hook.
    let vm = a.json(&[
        "vm",
        "set",
        "web",
        "--start",
        &format!("echo new > {}/start-$OFFSITE_MODE", hooks.display()),
        "--stop",
        "true",
    ]);
    assert!(
        vm["start"].as_str().unwrap().starts_with("echo new"),
        "{vm}"
    );
    assert_eq!(vm["stop"], "true");
    assert_eq!(vm["volumes"], serde_json::json!(["d0"]));
    let r = b.json(&["failover", "run", "g", "--test"]);
    assert_eq!(r["errors"], serde_json::json!([]), "{r}");
    assert_eq!(
        std::fs::read_to_string(hooks.join("start-test")).unwrap(),
        "new\n",
        "site-b ran the hook as changed at site-a"
    );
    b.json(&["failover", "stop-test", "g"]);

    // Plans lose groups and steps at both sites.
    a.json(&["plan", "add-step", "dr", "s1", "--command", "true"]);
    let p = b.json(&["plan", "remove-step", "dr", "s1"]);
    assert_eq!(p["steps"], serde_json::json!([]), "{p}");
    assert_eq!(
        a.json(&["plan", "show", "dr"])["steps"],
        serde_json::json!([])
    );
    let err = b.fails(&["plan", "remove-step", "dr", "s1"]);
    assert!(err.contains("plan dr has no step s1"), "{err}");
    let p = a.json(&["plan", "remove-group", "dr", "g"]);
    assert_eq!(p["groups"], serde_json::json!([]), "{p}");
    assert_eq!(p["vms"], serde_json::json!([]), "{p}");
    let pb = b.json(&["plan", "show", "dr"]);
    assert_eq!(pb["groups"], serde_json::json!([]), "{pb}");
    assert_eq!(pb["vms"], serde_json::json!([]), "{pb}");
    let err = a.fails(&["vm", "delete", "web"]);
    assert!(
        err.contains("VM \"web\" is in replication group g (with site-b)")
            && !err.contains("plan dr"),
        "{err}"
    );

    // Teardown with --delete-replica leaves nothing of the store at site-b.
    assert_eq!(stores_of(&storage, "g").len(), 1, "{:?}", entries(&storage));
    let done = a.json(&["group", "teardown", "g", "--delete-replica"]);
    assert_eq!(done["replica_deleted"], true, "{done}");
    assert_eq!(
        stores_of(&storage, "g"),
        Vec::<String>::new(),
        "no store and no torn-down copy of it"
    );
    assert_eq!(b.json(&["group", "list"]), serde_json::json!([]));

    // No group holds it now: its volumes may change, and it may go.
    let vm = a.json(&["vm", "set", "web", "--volume", "d1", "--volume", "d0"]);
    assert_eq!(vm["volumes"], serde_json::json!(["d1", "d0"]));
    let vm = a.json(&["vm", "set", "web", "--stop", ""]);
    assert_eq!(
        vm["stop"],
        serde_json::Value::Null,
        "'' removes a hook: {vm}"
    );
    a.json(&["vm", "delete", "web"]);
}

#[test]
fn group_set_changes_rpo_keep_bandwidth_and_compression_at_both_sites() {
    let (a, mut b) = group_pair();
    let storage = b.scratch().join("replicas-of-site-a");
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let url = a.create_volume("d0", "4M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--rpo", "1h", "--keep", "5"],
    );
    start_group(&a, "g");
    let st = a.json(&["group", "status", "g"]);
    assert_eq!(st["compress"], true, "{st}");
    assert_eq!(st["bandwidth_bytes_per_sec"], serde_json::Value::Null);
    for _ in 0..3 {
        sync_pit(&a, "g", &[]);
    }
    let newest = pit_ids(&b, "g").last().unwrap().0;
    assert!(pit_ids(&b, "g").len() >= 3, "{:?}", pit_ids(&b, "g"));

    let err = b.fails(&["group", "set", "g", "--keep", "2"]);
    assert!(
        err.contains(
            "group g is a replica here; run `offsite group set` at its primary site site-a"
        ),
        "{err}"
    );

    let st = a.json(&[
        "group",
        "set",
        "g",
        "--rpo",
        "30s",
        "--keep",
        "1",
        "--bandwidth",
        "10M",
        "--compression",
        "none",
    ]);
    assert_eq!(st["rpo_seconds"], 30, "{st}");
    assert_eq!(st["keep"], 1, "{st}");
    assert_eq!(st["bandwidth_bytes_per_sec"], 10 << 20, "{st}");
    assert_eq!(st["compress"], false, "{st}");
    assert_eq!(a.json(&["group", "status", "g"])["rpo_seconds"], 30);
    let sb = b.json(&["group", "status", "g"]);
    assert_eq!(sb["rpo_seconds"], 30, "the replica's copy: {sb}");
    assert_eq!(sb["keep"], 1, "the replica's copy: {sb}");

    // The running runner takes the new RPO: with 1 h it would not cycle
    // for half an hour; now a PIT arrives without any `sync` (a write
    // first: a cycle without changes commits nothing).
    qemu_io(&url, &["write -P 0x42 0 64k"]);
    wait_until("a cycle on the new RPO", Duration::from_secs(120), || {
        pit_ids(&b, "g").last().unwrap().0 > newest
    });
    // Retention at the replica keeps only the newest unnamed PIT now.
    sync_pit(&a, "g", &[]);
    let pits = pit_ids(&b, "g");
    assert_eq!(pits.len(), 1, "keep 1 at the replica: {pits:?}");

    // 0 lifts the limit.
    let st = a.json(&[
        "group",
        "set",
        "g",
        "--bandwidth",
        "0",
        "--compression",
        "zstd",
    ]);
    assert_eq!(
        st["bandwidth_bytes_per_sec"],
        serde_json::Value::Null,
        "{st}"
    );
    assert_eq!(st["compress"], true, "{st}");

    // A replica that cannot be told means nothing changed; settings only
    // the primary keeps change anyway.
    b.stop();
    let err = a.fails(&["group", "set", "g", "--keep", "4"]);
    assert!(
        err.contains("the replica site-b of group g did not take the new settings")
            && err.contains("nothing changed"),
        "{err}"
    );
    assert_eq!(a.json(&["group", "status", "g"])["keep"], 1);
    let st = a.json(&["group", "set", "g", "--bandwidth", "1M"]);
    assert_eq!(st["bandwidth_bytes_per_sec"], 1 << 20, "{st}");
    b.start();

    // Teardown at the replica with --delete-replica removes its store too.
    assert_eq!(stores_of(&storage, "g").len(), 1, "{:?}", entries(&storage));
    b.json(&["group", "teardown", "g", "--delete-replica"]);
    assert_eq!(stores_of(&storage, "g"), Vec::<String>::new());
    assert_eq!(a.json(&["group", "list"]), serde_json::json!([]));
}

/// The newest PIT id of group `g` at `site`.
fn newest_pit(site: &TestSite) -> u64 {
    pit_ids(site, "g").last().map_or(0, |p| p.0)
}

#[test]
fn pit_ids_go_on_through_failover_reverse_and_failback() {
    let (a, b) = group_pair();
    authorize_primary(&a, "site-b", None);
    a.create_volume("d0", "4M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    start_group(&a, "g");
    sync_pit(&a, "g", &[]);
    sync_pit(&a, "g", &[]);
    let mut seen = newest_pit(&b);
    assert!(seen >= 3, "{:?}", pit_ids(&b, "g"));

    // Planned failover to site-b, then site-a becomes its replica.
    a.json(&["failover", "prepare", "g"]);
    b.json(&["failover", "run", "g"]);
    seen = seen.max(newest_pit(&b));
    b.json(&["reverse", "g"]);
    let pit = sync_pit(&b, "g", &[]);
    assert!(
        u(&pit, "id") > seen,
        "the first PIT after reverse ({pit}) must follow PIT {seen}, not start again"
    );
    assert!(
        pit_ids(&a, "g").iter().all(|p| p.0 > seen),
        "{:?}",
        pit_ids(&a, "g")
    );
    seen = newest_pit(&a);

    // Failback: the same from the other side.
    b.json(&["failover", "prepare", "g"]);
    a.json(&["failover", "run", "g"]);
    seen = seen.max(newest_pit(&a));
    a.json(&["reverse", "g"]);
    let pit = sync_pit(&a, "g", &[]);
    assert!(
        u(&pit, "id") > seen,
        "the first PIT after failback ({pit}) must follow PIT {seen}"
    );
    // site-b's store from before the failover holds the group again:
    // its older PITs come back, and the newer ones follow every id given.
    let ids: Vec<u64> = pit_ids(&b, "g").iter().map(|p| p.0).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(ids.last().is_some_and(|&id| id > seen), "{ids:?}");
    assert_eq!(
        pit_ids(&a, "g"),
        pit_ids(&b, "g"),
        "both sites list the same PITs"
    );
}

#[test]
fn group_set_rpo_reaches_a_running_sync_group() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    let url = a.create_volume("d0", "4M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--mode", "sync", "--rpo", "24h"],
    );
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "in sync", GROUP_LIMIT, |s| {
        s["sync_state"] == "in-sync"
    });
    sync_pit(&a, "g", &[]);
    let newest = newest_pit(&b);

    // The stream's seal timer was set for 24 h; after `group set --rpo 30s`
    // the replica's log is sealed as a PIT within about 30 s, no `sync`.
    let st = a.json(&["group", "set", "g", "--rpo", "30s"]);
    // A sync group's RPO is 0; `--rpo` sets how often its log is sealed.
    assert_eq!(st["rpo_seconds"], 0, "{st}");
    assert_eq!(st["seal_interval_seconds"], 30, "{st}");
    assert_eq!(st["mode"], "sync", "{st}");
    assert_eq!(
        b.json(&["group", "status", "g"])["seal_interval_seconds"],
        30
    );
    qemu_io(&url, &["write -P 0x5a 0 64k"]);
    wait_until("a seal on the new RPO", Duration::from_secs(120), || {
        newest_pit(&b) > newest
    });
}

#[test]
fn a_daemon_under_a_file_size_limit_refuses_larger_volumes_and_lives_on() {
    if !have_tools(&["prlimit"]) {
        return;
    }
    let site = TestSite::init(bin(), "a");
    let log = std::fs::File::create(site.scratch().join("daemon.log")).unwrap();
    // 1 GiB: RLIMIT_FSIZE as `ulimit -f` or systemd's LimitFSIZE= set it.
    let mut daemon = KillOnDrop(Some(
        Command::new("prlimit")
            .arg(format!("--fsize={}", 1u64 << 30))
            .arg("--")
            .arg(bin())
            .args(["serve", "--dir"])
            .arg(site.dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prlimit offsite serve"),
    ));
    wait_until("the daemon to answer", Duration::from_secs(30), || {
        assert!(
            daemon.child().try_wait().unwrap().is_none(),
            "the daemon exited at start"
        );
        site.run(&["site", "show"]).status.success()
    });

    let err = site.fails(&["volume", "create", "big", "--size", "2G"]);
    assert!(
        err.contains("may not create files of 2 GiB")
            && err.contains("its file-size limit (RLIMIT_FSIZE, `ulimit -f`) is 1 GiB"),
        "{err}"
    );
    // SIGXFSZ did not kill it, and nothing was left behind.
    assert!(
        daemon.child().try_wait().unwrap().is_none(),
        "the daemon died of the refused file"
    );
    assert_eq!(site.json(&["volume", "list"]), serde_json::json!([]));
    assert_eq!(entries(&site.dir().join("volumes")), Vec::<String>::new());
    let v = site.json(&["volume", "create", "small", "--size", "512M"]);
    assert_eq!(v["state"], "ready");
}

#[test]
fn delete_replica_is_refused_while_promoted_volumes_read_the_store() {
    let (a, b) = group_pair();
    let storage = b.scratch().join("replicas-of-site-a");
    a.create_volume("d0", "4M");
    create_group(&a, "g", "site-b", &["--volume", "d0"], &[]);
    start_group(&a, "g");
    a.json(&["failover", "prepare", "g"]);
    b.json(&["failover", "run", "g"]);

    for site in [&b, &a] {
        let err = site.fails(&["group", "teardown", "g", "--delete-replica"]);
        assert!(
            err.contains(
                "cannot be deleted: the promoted volume(s) d0 of site site-b still read it"
            ) && err.contains("nothing changed"),
            "{}: {err}",
            site.name()
        );
    }
    // Nothing changed: both sites still have the group, site-b its store.
    assert_eq!(a.json(&["group", "list"])[0]["name"], "g");
    assert_eq!(b.json(&["group", "list"])[0]["name"], "g");
    assert_eq!(stores_of(&storage, "g"), vec!["g".to_string()]);
}

#[test]
fn named_pits_and_settings_outlive_failover_reverse_and_failback() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    authorize_primary(&a, "site-b", None);
    let url = a.create_volume("d0", "4M");
    create_group(
        &a,
        "g",
        "site-b",
        &["--volume", "d0"],
        &["--bandwidth", "20M", "--compress", "none"],
    );
    start_group(&a, "g");
    let settings = |site: &TestSite| {
        let st = site.json(&["group", "status", "g"]);
        (
            st["bandwidth_bytes_per_sec"].clone(),
            st["compress"].clone(),
        )
    };
    let expected = (serde_json::json!(20 << 20), serde_json::json!(false));
    assert_eq!(settings(&b), expected, "the replica keeps the settings");

    qemu_io(&url, &["write -P 0x11 0 64k"]);
    let named = u(&sync_pit(&a, "g", &["--pit-name", "before-upgrade"]), "id");
    qemu_io(&url, &["write -P 0x22 0 64k", "write -P 0x23 1M 64k"]);
    sync_pit(&a, "g", &[]);

    // Failover and reverse: site-b replicates to site-a.
    a.json(&["failover", "prepare", "g"]);
    b.json(&["failover", "run", "g"]);
    b.json(&["reverse", "g"]);
    assert_eq!(
        settings(&b),
        expected,
        "the new primary replicates as before"
    );
    let kept = b.json(&["events", "--limit", "50"]);
    assert!(
        kept.to_string().contains("named PITs before-upgrade (PIT"),
        "the reverse says where the named PIT stays: {kept}"
    );
    qemu_io(&b.url("d0"), &["write -P 0x33 0 32k", "write -P 0 1M 64k"]);
    sync_pit(&b, "g", &[]);

    // Failback: site-b's store from before the failover is the replica
    // again, with the named PIT; ids go on.
    b.json(&["failover", "prepare", "g"]);
    a.json(&["failover", "run", "g"]);
    let r = a.json(&["reverse", "g"]);
    assert_eq!(settings(&a), expected);
    let after_failback = u(&r, "pit");
    let ids_a = pit_ids(&a, "g");
    let ids_b = pit_ids(&b, "g");
    assert_eq!(ids_a, ids_b, "both sites list the same PITs");
    assert!(
        ids_b.contains(&(named, Some("before-upgrade".into()))),
        "the named PIT is back: {ids_b:?}"
    );
    assert_eq!(ids_b.last().map(|p| p.0), Some(after_failback), "{ids_b:?}");
    let mut sorted = ids_b.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids_b, "ids only grow: {ids_b:?}");

    // The newest PIT holds every write of both directions; the named one
    // still reads as it was.
    let r = b.json(&["failover", "run", "g", "--test"]);
    qemu_io(
        &served_url(&r, "d0"),
        &[
            "read -P 0x33 0 32k",
            "read -P 0x22 32k 32k",
            "read -P 0 1M 64k",
        ],
    );
    b.json(&["failover", "stop-test", "g"]);
    let r = b.json(&["failover", "run", "g", "--test", "--pit", "before-upgrade"]);
    assert_eq!(u(&r, "pit"), named, "{r}");
    qemu_io(
        &served_url(&r, "d0"),
        &["read -P 0x11 0 64k", "read -P 0 1M 64k"],
    );
    b.json(&["failover", "stop-test", "g"]);

    // Replication goes on over the resumed store, and the named PIT stays
    // until released.
    qemu_io(&a.url("d0"), &["write -P 0x44 2M 64k"]);
    let next = u(&sync_pit(&a, "g", &[]), "id");
    assert!(next > after_failback);
    a.json(&["verify", "g"]);
    a.json(&["pit", "release", "g", "before-upgrade"]);
    let left = pit_ids(&b, "g");
    assert!(
        left.iter()
            .all(|p| p.1.as_deref() != Some("before-upgrade")),
        "{left:?}"
    );
}
