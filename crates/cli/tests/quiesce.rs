//! Application-consistent checkpoints with real sites (issue 19): VM
//! `--quiesce`/`--thaw` hooks run around the cut of `sync --quiesce` (an
//! async group's cycle, a sync group's seal), on the group's schedule
//! (`--app-consistent-every`), and the PIT is marked `app_consistent` at
//! both sites; a failing quiesce leaves a crash-consistent PIT, exit 1 and
//! a warning. The ext4 test freezes a mounted file system (`fsfreeze`)
//! and shows that the app-consistent PIT mounts without journal replay
//! while a crash-consistent one of the same writes needs it.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::ext4::{Ext4, ext4_ready};
use common::*;
use offsite_testkit::{TestSite, qemu_io, qemu_io_ro, sh};
use serde_json::Value;

/// A hook that writes 4 KiB of `pattern` at offset 0 of the VM's disk, as
/// an application writing its state out (quiesce) or going on (thaw).
fn write_hook(pattern: &str) -> String {
    format!("qemu-io -f raw -c 'write -P {pattern} 0 4k' \"$OFFSITE_VOLUME_0_URL\" >/dev/null")
}

/// The PIT `id` of `group` in `pit list --json` at `site`.
fn listed(site: &TestSite, group: &str, id: u64) -> Value {
    pit_list(site, group)
        .into_iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{}: no PIT {id} of {group}", site.name()))
}

/// `pit export` of PIT `id` at `replica`: the URL of its (first) volume.
fn exported(replica: &TestSite, group: &str, id: u64) -> String {
    let e = replica.json(&["pit", "export", group, &id.to_string()]);
    e["volumes"][0]["url"]
        .as_str()
        .unwrap_or_else(|| panic!("pit export --json has a URL: {e}"))
        .to_string()
}

#[test]
fn quiesce_hooks_run_around_the_cut_of_async_and_sync_groups_and_a_failure_is_reported() {
    if !have_tools(&["qemu-io"]) {
        return;
    }
    let (a, b) = group_pair();
    // Both hooks must be given (or neither): a malformed command line.
    let out = a.run(&["vm", "create", "x", "--volume", "v", "--quiesce", "true"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    for mode in ["async", "sync"] {
        let (g, vm, v) = (
            format!("g-{mode}"),
            format!("app-{mode}"),
            format!("d-{mode}"),
        );
        let url = a.create_volume(&v, "4M");
        let (quiesce, thaw) = (write_hook("0x51"), write_hook("0x7a"));
        a.json(&[
            "vm",
            "create",
            &vm,
            "--volume",
            &v,
            "--quiesce",
            &quiesce,
            "--thaw",
            &thaw,
        ]);
        let shown = a.json(&["vm", "show", &vm]);
        assert_eq!(shown["quiesce"], quiesce.as_str(), "{shown}");
        assert_eq!(shown["thaw"], thaw.as_str(), "{shown}");
        let listed_vm = a.json(&["vm", "list"]);
        assert!(
            listed_vm
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["name"] == vm.as_str() && x["quiesce"] == quiesce.as_str()),
            "{listed_vm}"
        );
        create_group(
            &a,
            &g,
            b.name(),
            &["--vm", &vm],
            &["--mode", mode, "--compress", "none"],
        );
        a.json(&["group", "start", &g]);
        wait_group(&a, &g, "replicating", GROUP_LIMIT, |st| {
            st["state"] == "replicating"
                && st["last_pit"].is_object()
                && (mode == "async" || st["sync_state"] == "in-sync")
        });

        // The quiesce hook's write is in the PIT, the thaw hook's is not:
        // the cut (the seal) came between them.
        let r = a.json(&["sync", &g, "--quiesce"]);
        let pit = &r["pit"];
        let id = u(pit, "id");
        assert_eq!(pit["app_consistent"], true, "{mode}: {r}");
        let actions: Vec<&str> = r["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["action"].as_str().unwrap())
            .collect();
        assert_eq!(actions, ["quiesce", "thaw"], "{r}");
        assert!(r.get("errors").is_none(), "{r}");
        qemu_io_ro(&exported(&b, &g, id), &["read -P 0x51 0 4k"]);
        qemu_io(&url, &["read -P 0x7a 0 4k"]);
        // Both sites mark it; the replica's status names it.
        for site in [&a, &b] {
            assert_eq!(listed(site, &g, id)["app_consistent"], true, "{mode}");
            let st = group_status(site, &g);
            assert_eq!(st["last_app_consistent_pit"]["id"], id, "{st}");
        }
        let text = b.ok(&["pit", "list", &g]);
        assert!(
            text.lines().next().unwrap().ends_with("CONSISTENCY")
                && text
                    .lines()
                    .any(|l| l.starts_with(&format!("{id} ")) && l.ends_with("app-consistent")),
            "{text}"
        );

        // A quiesce hook that fails: the PIT is still made (crash-
        // consistent), the thaw hook still runs, the command exits 1 after
        // printing its result, and the group warns until a quiesce works.
        a.json(&[
            "vm",
            "set",
            &vm,
            "--quiesce",
            "echo the database refuses; exit 7",
        ]);
        qemu_io(&url, &["write -P 0x00 0 4k"]);
        let out = a.run(&["sync", &g, "--quiesce", "--json"]);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let r: Value = serde_json::from_slice(&out.stdout).expect("the result, printed");
        let crash = u(&r["pit"], "id");
        assert!(crash > id && r["pit"]["app_consistent"] == false, "{r}");
        assert!(
            r["errors"][0]
                .as_str()
                .is_some_and(|e| e.contains("exited with 7") && e.contains("the database refuses")),
            "{r}"
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("crash-consistent"), "{stderr}");
        qemu_io(&url, &["read -P 0x7a 0 4k"]);
        assert_eq!(listed(&b, &g, crash)["app_consistent"], false);
        let st = group_status(&a, &g);
        assert_eq!(st["health"], "warning", "{st}");
        assert!(
            st["quiesce_error"]
                .as_str()
                .is_some_and(|e| e.contains("exited with 7")),
            "{st}"
        );
        let events = events_about(&a, &g);
        assert!(
            events.iter().any(|(k, _)| k == "vm.hook.failed")
                && events.iter().any(|(k, _)| k == "group.quiesce.failed"),
            "{events:?}"
        );
        // Fixed: app-consistent again, the warning gone.
        a.json(&["vm", "set", &vm, "--quiesce", &quiesce]);
        let r = a.json(&["sync", &g, "--quiesce"]);
        assert_eq!(r["pit"]["app_consistent"], true, "{r}");
        let st = group_status(&a, &g);
        assert!(st.get("quiesce_error").is_none(), "{st}");
        assert_eq!(st["health"], "normal", "{st}");
    }
}

#[test]
fn async_and_sync_groups_take_app_consistent_pits_on_their_schedule() {
    let (a, b) = group_pair();
    // Less than a minute apart is refused (each one holds the application).
    a.create_volume("d-x", "4M");
    a.json(&[
        "vm",
        "create",
        "app-x",
        "--volume",
        "d-x",
        "--quiesce",
        "true",
        "--thaw",
        "true",
    ]);
    let out = a.run(&[
        "group",
        "create",
        "g-x",
        "--partner",
        "site-b",
        "--vm",
        "app-x",
        "--app-consistent-every",
        "30s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let modes = ["async", "sync"];
    for mode in modes {
        let (g, vm, v) = (
            format!("g-{mode}"),
            format!("app-{mode}"),
            format!("d-{mode}"),
        );
        a.create_volume(&v, "4M");
        let marker = a.scratch().join(format!("quiesced-{mode}"));
        a.json(&[
            "vm",
            "create",
            &vm,
            "--volume",
            &v,
            "--quiesce",
            &format!("echo $OFFSITE_MODE >> {}", marker.display()),
            "--thaw",
            "true",
        ]);
        create_group(
            &a,
            &g,
            b.name(),
            &["--vm", &vm],
            &[
                "--mode",
                mode,
                "--compress",
                "none",
                "--app-consistent-every",
                "1h",
            ],
        );
        for site in [&a, &b] {
            assert_eq!(group_status(site, &g)["app_consistent_every_seconds"], 3600);
        }
        a.json(&["group", "start", &g]);
    }
    for mode in modes {
        let g = format!("g-{mode}");
        // No app-consistent PIT yet: a scheduled cycle (every 15 s at RPO
        // 30 s) or seal (every 30 s) takes one without being asked.
        let st = wait_group(
            &a,
            &g,
            "a scheduled app-consistent PIT",
            GROUP_LIMIT,
            |st| st["last_app_consistent_pit"].is_object(),
        );
        let id = u(&st["last_app_consistent_pit"], "id");
        let marker = a.scratch().join(format!("quiesced-{mode}"));
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            "checkpoint\n",
            "{mode}"
        );
        wait_group(&b, &g, "the mark at the replica", GROUP_LIMIT, |st| {
            st["last_app_consistent_pit"]["id"] == id
        });
        let text = a.ok(&["group", "status", &g]);
        assert!(
            text.contains(&format!("PIT {id}")) && text.contains("one every 3600s"),
            "{text}"
        );
        // Off: the replica's copy follows.
        a.json(&["group", "set", &g, "--app-consistent-every", "off"]);
        for site in [&a, &b] {
            let st = group_status(site, &g);
            assert!(st.get("app_consistent_every_seconds").is_none(), "{st}");
        }
    }
}

// ---- ext4 frozen with fsfreeze ----

/// An application appending to files on `mnt` until stopped (its writes
/// block while the file system is frozen).
struct Writer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(mnt: &Path) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, dir) = (stop.clone(), mnt.to_path_buf());
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                let path = dir.join(format!("log-{}", n % 8));
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("open a log file");
                f.write_all(&pseudo_random(4096, n + 1))
                    .expect("append to a log file");
                if n.is_multiple_of(16) {
                    f.sync_data().expect("sync a log file");
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        });
        Writer {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the writer")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// PIT `id` of group `g` copied out of the replica into a file.
fn copy_pit(b: &TestSite, g: &str, id: u64, to: &Path) {
    let url = exported(b, g, id);
    sh("nbdcopy", &[&url, to.to_str().unwrap()]);
}

/// The features line of the ext4 superblock in `image`.
fn features(image: &Path) -> String {
    sh("dumpe2fs", &["-h", image.to_str().unwrap()])
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_else(|| panic!("dumpe2fs -h {} printed no features", image.display()))
        .to_string()
}

#[test]
fn fsfreeze_hooks_give_a_pit_that_mounts_without_journal_replay() {
    if !ext4_ready(
        "the fsfreeze test",
        &["nbdcopy", "e2fsck", "dumpe2fs", "fsfreeze"],
    ) {
        return;
    }
    let (a, b) = group_pair();
    let url = a.create_volume("fs", "64M");
    let scratch = a.scratch();
    // Declared after the sites: dropped (unfrozen, unmounted) first.
    let mounted = Ext4::make(&url, &scratch);
    let mnt = mounted.mnt.clone();
    let m = mnt.to_str().unwrap();
    a.json(&[
        "vm",
        "create",
        "app",
        "--volume",
        "fs",
        "--quiesce",
        &format!("fsfreeze -f {m}"),
        "--thaw",
        &format!("fsfreeze -u {m}"),
    ]);
    create_group(&a, "g", b.name(), &["--vm", "app"], &[]);
    a.json(&["group", "start", "g"]);
    wait_group(&a, "g", "the first PIT", GROUP_LIMIT, |st| {
        st["state"] == "replicating" && st["last_pit"].is_object()
    });
    let writer = Writer::start(&mnt);
    std::thread::sleep(Duration::from_millis(500));
    let frozen = a.json(&["sync", "g", "--quiesce"]);
    assert_eq!(frozen["pit"]["app_consistent"], true, "{frozen}");
    std::thread::sleep(Duration::from_millis(500));
    // The same writes, without the freeze: a crash-consistent PIT.
    let crash = a.json(&["sync", "g"]);
    assert_eq!(crash["pit"]["app_consistent"], false, "{crash}");
    let appended = writer.stop();
    assert!(appended > 10, "the writer kept writing: {appended} appends");
    let (frozen, crash) = (u(&frozen["pit"], "id"), u(&crash["pit"], "id"));
    for site in [&a, &b] {
        assert_eq!(listed(site, "g", frozen)["app_consistent"], true);
        assert_eq!(listed(site, "g", crash)["app_consistent"], false);
    }

    let dir = b.scratch();
    let (app_img, crash_img) = (dir.join("frozen.img"), dir.join("crash.img"));
    copy_pit(&b, "g", frozen, &app_img);
    copy_pit(&b, "g", crash, &crash_img);
    // Frozen, ext4 had checkpointed its journal and cleared the flag that
    // asks for a replay: the PIT mounts as it is, and is clean.
    let f = features(&app_img);
    eprintln!("PIT {frozen} (app-consistent): {f}");
    assert!(f.contains("has_journal"), "{f}");
    assert!(!f.contains("needs_recovery"), "app-consistent PIT: {f}");
    let out = Command::new("e2fsck")
        .args(["-fn", app_img.to_str().unwrap()])
        .output()
        .expect("run e2fsck");
    assert_eq!(
        out.status.code(),
        Some(0),
        "e2fsck of the app-consistent PIT:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Mounted and written, not frozen: the crash image needs the replay
    // (so the check above tells the two apart).
    let f = features(&crash_img);
    eprintln!("PIT {crash} (crash-consistent): {f}");
    assert!(f.contains("needs_recovery"), "crash-consistent PIT: {f}");
    drop(mounted);
}
