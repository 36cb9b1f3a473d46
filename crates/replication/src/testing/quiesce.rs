//! Application-consistent checkpoints through the fake link: VM quiesce
//! and thaw hooks (`sh -c` commands that write marker files here) around
//! the cut, a quiesce that fails, the mark on both sites' catalogs through
//! retention and a release, the schedule, and `failover prepare`'s final
//! PIT.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::*;
use crate::model::SetGroup;
use crate::primary::Progress;
use crate::quiesce::{CycleFreeze, plan_quiesce};
use offsite_engine::{CreateVm, SetVm};

/// Hooks that append `quiesce VM` / `thaw VM` to `log`.
fn logging_hooks(log: &Path) -> (String, String) {
    let l = log.display();
    (
        format!("echo quiesce $OFFSITE_VM $OFFSITE_MODE >> {l}"),
        format!("echo thaw $OFFSITE_VM >> {l}"),
    )
}

/// VM `name` at site `a` on volume `volume` (created, `blocks` blocks)
/// with these hooks.
fn vm(p: &Pair, name: &str, volume: &str, quiesce: Option<String>, thaw: Option<String>) {
    vm_with_stop(p, name, volume, quiesce, thaw, None);
}

fn vm_with_stop(
    p: &Pair,
    name: &str,
    volume: &str,
    quiesce: Option<String>,
    thaw: Option<String>,
    stop: Option<String>,
) {
    p.volume(volume, 16);
    p.a.site
        .create_vm(&CreateVm {
            name: name.into(),
            volumes: vec![volume.into()],
            start: None,
            stop,
            status: None,
            libvirt: None,
            quiesce,
            thaw,
        })
        .expect("creating a test VM");
}

/// Group `g` of `vms`, replicating with its first PIT, keeping `keep`.
async fn group_of(p: &Pair, vms: &[&str], keep: u32) -> GroupRow {
    p.a.create_group(CreateGroup {
        name: "g".into(),
        partner: "b".into(),
        vms: vms.iter().map(|v| v.to_string()).collect(),
        volumes: Vec::new(),
        mode: "async".into(),
        rpo_secs: 60,
        keep,
        bandwidth_bytes_per_sec: None,
        compress: Some(false),
        security_tag: None,
        on_link_loss: None,
        suspend_timeout_secs: None,
        app_consistent_every_secs: None,
        checkpoint_interval_ms: None,
        journal_history_secs: None,
        journal_max_bytes: None,
        encrypt: false,
    })
    .await
    .expect("creating the test group");
    p.begin_initial("g").await.expect("initial replication");
    p.cycle("g").await.expect("the first cycle");
    p.row(&p.a, "g")
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// `(id, app_consistent)` of every PIT of `g` in `site`'s catalog.
fn marks(site: &Replication) -> Vec<(u64, bool)> {
    site.site
        .groups()
        .pits("g")
        .expect("the catalog's PITs")
        .iter()
        .map(|p| (p.id, p.app_consistent))
        .collect()
}

/// The first 8 bytes of block `block` of PIT `pit` of volume `volume` at
/// the replica, as a number.
async fn replica_counter(p: &Pair, pit: u64, volume: &str, block: u64) -> u64 {
    let (_, store) = p.b.store("g").await.expect("the replica store");
    let mut buf = vec![0u8; BS];
    store
        .read(
            offsite_replica_store::PitId::new(pit),
            volume,
            block * BS as u64,
            &mut buf,
        )
        .expect("reading the replica");
    u64::from_le_bytes(buf[..8].try_into().unwrap())
}

fn counter_block(n: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    b[..8].copy_from_slice(&n.to_le_bytes());
    b
}

/// An application on volume `v`: it writes a counter to block 0 as fast
/// as it can; while the file `frozen` exists it writes what it holds to
/// block 1 once ("flushed"), says so in `ack` (with the counter), and
/// writes nothing more until `frozen` is gone.
struct App {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl App {
    fn start(v: Arc<Volume>, dir: &Path) -> App {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, frozen, ack) = (stop.clone(), dir.join("frozen"), dir.join("ack"));
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !s.load(Ordering::Relaxed) {
                if frozen.exists() {
                    if !ack.exists() {
                        v.write_at(&counter_block(n), BS as u64, false)
                            .expect("flushing");
                        std::fs::write(&ack, n.to_string()).expect("acknowledging the freeze");
                    }
                } else {
                    n += 1;
                    v.write_at(&counter_block(n), 0, false).expect("writing");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            n
        });
        App {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops it; the last counter it wrote.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// The hooks of [`App`]: quiesce asks it to flush and waits for the
/// acknowledgement (as `fsfreeze -f` returns once the file system is
/// flushed and frozen), thaw lets it go on; both log to `log`.
fn app_hooks(dir: &Path, log: &Path) -> (String, String) {
    let (d, l) = (dir.display(), log.display());
    (
        format!(
            "touch {d}/frozen && while [ ! -e {d}/ack ]; do sleep 0.01; done; echo quiesce $OFFSITE_VM at $(cat {d}/ack) >> {l}"
        ),
        format!("echo thaw $OFFSITE_VM >> {l}; rm -f {d}/frozen {d}/ack"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vms_are_quiesced_in_order_the_cut_is_taken_while_frozen_and_they_thaw_in_reverse() {
    let p = Pair::new();
    let log = p.dir().join("hooks.log");
    let app_dir = p.dir().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    let (q, t) = app_hooks(&app_dir, &log);
    vm(&p, "db", "d0", Some(q), Some(t));
    let (q, t) = logging_hooks(&log);
    vm(&p, "web", "w0", Some(q), Some(t));
    let row = group_of(&p, &["db", "web"], 10).await;
    let app = App::start(p.a.site.volume("d0").unwrap(), &app_dir);
    // The application is busy before the checkpoint.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let freeze = CycleFreeze::Quiesce(plan_quiesce(&row).unwrap());
    let done = p.a.checkpoint(&row, None, &freeze).await.unwrap();
    // It goes on after the thaw.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let last = app.stop();
    let log = lines(&log);
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log[0].starts_with("quiesce db at "), "{log:?}");
    assert_eq!(
        log[1..],
        ["quiesce web checkpoint", "thaw web", "thaw db"],
        "quiesced in the group's order, thawed in reverse"
    );
    let at_freeze: u64 = log[0].rsplit(' ').next().unwrap().parse().unwrap();
    let outcome = done.freeze.expect("the hooks' outcome");
    assert!(outcome.app_consistent && outcome.errors().is_empty());
    assert_eq!(
        outcome
            .hooks
            .iter()
            .map(|h| format!("{} {}", h.action, h.vm))
            .collect::<Vec<_>>(),
        ["quiesce db", "quiesce web", "thaw web", "thaw db"]
    );
    assert!(done.pit.app_consistent);
    // The cut was taken while the application was frozen: the PIT holds
    // the counter it had when it flushed, both on block 0 and in its
    // flush (block 1), though it went on counting after the thaw.
    assert_eq!(replica_counter(&p, done.pit.id, "d0", 0).await, at_freeze);
    assert_eq!(replica_counter(&p, done.pit.id, "d0", 1).await, at_freeze);
    assert!(last > at_freeze, "the application wrote after the thaw");
    // Both catalogs mark it.
    assert!(marks(&p.a).contains(&(done.pit.id, true)));
    assert!(marks(&p.b).contains(&(done.pit.id, true)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_quiesce_still_commits_a_crash_consistent_pit_and_thaws_what_it_quiesced() {
    let p = Pair::new();
    let log = p.dir().join("hooks.log");
    let (q, t) = logging_hooks(&log);
    vm(&p, "db", "d0", Some(q.clone()), Some(t.clone()));
    let l = log.display();
    vm(
        &p,
        "web",
        "w0",
        Some(format!(
            "echo quiesce web >> {l}; echo cannot freeze; exit 3"
        )),
        Some(t.clone()),
    );
    vm(&p, "cache", "c0", Some(q), Some(t));
    group_of(&p, &["db", "web", "cache"], 10).await;
    write(&p.a.site.volume("d0").unwrap(), 5, 5);
    let r = p.a.sync_checkpoint("g", None, true, true).await.unwrap();
    let pit = r.pit.clone().expect("the PIT is committed all the same");
    assert!(!pit.app_consistent, "{r:?}");
    // Quiescing stopped at the failure (cache was never held); every VM
    // whose quiesce ran, the failed one too, was thawed, in reverse.
    assert_eq!(
        lines(&log),
        [
            "quiesce db checkpoint",
            "quiesce web",
            "thaw web",
            "thaw db"
        ]
    );
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(
        r.errors[0].contains("quiesce hook of VM web exited with 3")
            && r.errors[0].contains("cannot freeze"),
        "{r:?}"
    );
    assert_eq!(r.hooks.len(), 4);
    assert_eq!(r.hooks[1].exit_code, Some(3));
    // Replication goes on: the PIT holds the write, the replica has it.
    assert_eq!(p.replica_image("g", pit.id).await, p.primary_image("g"));
    assert!(marks(&p.a).contains(&(pit.id, false)));
    assert!(marks(&p.b).contains(&(pit.id, false)));
    // Reported: events, and a warning in the status until a checkpoint
    // succeeds.
    let events = p.a.site.events(50).unwrap();
    assert!(events.iter().any(|e| e.kind == "vm.hook.failed"));
    assert!(events.iter().any(
        |e| e.kind == "group.quiesce.failed" && e.message.contains(&format!("PIT {}", pit.id))
    ));
    let st = p.a.group_status("g").await.unwrap();
    assert_eq!(st.health, "warning", "{st:?}");
    assert!(
        st.health_reason
            .as_deref()
            .is_some_and(|r| r.contains("VM web") && r.contains("--quiesce")),
        "{st:?}"
    );
    assert!(st.quiesce_error.is_some() && st.last_app_consistent_pit.is_none());
    // Fixed, the next one is app-consistent and the warning goes.
    p.a.set_vm(
        "web",
        &SetVm {
            quiesce: Some(format!("echo quiesce fixed >> {l}")),
            ..SetVm::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        p.row(&p.b, "g").vms[1].quiesce_cmd.as_deref(),
        Some(format!("echo quiesce fixed >> {l}").as_str()),
        "the replica's copy of the hooks follows"
    );
    let r = p.a.sync_checkpoint("g", None, true, true).await.unwrap();
    let good = r.pit.clone().unwrap();
    assert!(good.app_consistent && r.errors.is_empty(), "{r:?}");
    let st = p.a.group_status("g").await.unwrap();
    assert_eq!((st.health.as_str(), st.quiesce_error), ("normal", None));
    assert_eq!(st.last_app_consistent_pit.map(|p| p.id), Some(good.id));
    assert_eq!(st.app_consistent_age_seconds, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_thaw_keeps_the_pit_app_consistent_and_warns_that_the_vm_may_be_held() {
    let p = Pair::new();
    vm(
        &p,
        "db",
        "d0",
        Some("true".into()),
        Some("echo still frozen; exit 2".into()),
    );
    group_of(&p, &["db"], 10).await;
    let r = p.a.sync_checkpoint("g", None, true, true).await.unwrap();
    assert!(r.pit.as_ref().unwrap().app_consistent, "{r:?}");
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(
        r.errors[0].contains("thaw hook of VM db exited with 2")
            && r.errors[0].contains("may still be quiesced"),
        "{r:?}"
    );
    let st = p.a.group_status("g").await.unwrap();
    assert_eq!(st.health, "warning", "{st:?}");
    assert!(
        st.quiesce_error
            .is_some_and(|e| e.contains("may still be quiesced"))
    );
    let events = p.a.site.events(50).unwrap();
    assert!(events.iter().any(|e| e.kind == "group.thaw.failed"));
    assert!(!events.iter().any(|e| e.kind == "group.quiesce.failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiesce_needs_something_to_quiesce() {
    let p = Pair::new();
    vm(&p, "plain", "d0", None, None);
    group_of(&p, &["plain"], 10).await;
    let pits = marks(&p.a).len();
    let e =
        p.a.sync_checkpoint("g", None, true, true)
            .await
            .unwrap_err();
    assert!(
        e.to_string()
            .contains("no VM of group g has a quiesce hook"),
        "{e}"
    );
    // Refused before anything happened: no PIT, no warning.
    assert_eq!(marks(&p.a).len(), pits);
    assert_eq!(p.a.group_status("g").await.unwrap().quiesce_error, None);
    // Nor can such a group have a schedule; nor can any group have one
    // more often than once a minute.
    for (every, why) in [(3600, "quiesce hook"), (30, "outside 1m..30d")] {
        let e =
            p.a.set_group(
                "g",
                &SetGroup {
                    app_consistent_every_secs: Some(every),
                    ..SetGroup::default()
                },
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains(why), "{e}");
    }
    assert_eq!(p.row(&p.a, "g").app_consistent_every_secs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_without_a_quiesce_hook_leaves_the_pit_crash_consistent_and_says_why() {
    let p = Pair::new();
    let log = p.dir().join("hooks.log");
    let (q, t) = logging_hooks(&log);
    vm(&p, "db", "d0", Some(q), Some(t));
    vm(&p, "plain", "d1", None, None);
    group_of(&p, &["db", "plain"], 10).await;
    let r = p.a.sync_checkpoint("g", None, true, true).await.unwrap();
    assert!(!r.pit.as_ref().unwrap().app_consistent, "{r:?}");
    assert_eq!(lines(&log), ["quiesce db checkpoint", "thaw db"]);
    assert_eq!(r.errors.len(), 1, "{r:?}");
    assert!(
        r.errors[0].contains("VM plain has no quiesce hook"),
        "{r:?}"
    );
    assert!(
        p.row(&p.a, "g")
            .quiesce_error
            .is_some_and(|e| e.contains("VM plain"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mark_survives_retention_and_a_release_on_both_sites() {
    let p = Pair::new();
    let log = p.dir().join("hooks.log");
    let (q, t) = logging_hooks(&log);
    vm(&p, "db", "d0", Some(q), Some(t));
    group_of(&p, &["db"], 2).await;
    let v = p.a.site.volume("d0").unwrap();
    write(&v, 1, 1);
    let r =
        p.a.sync_checkpoint("g", Some("before-upgrade".into()), true, true)
            .await
            .unwrap();
    let named = r.pit.unwrap();
    assert!(named.app_consistent);
    write(&v, 2, 2);
    let plain = p.a.sync_checkpoint("g", None, true, true).await.unwrap();
    let kept = plain.pit.unwrap();
    assert!(kept.app_consistent);
    // Crash-consistent cycles, more than `--keep 2`.
    for i in 0..4u8 {
        write(&v, 3 + u64::from(i), i + 3);
        p.cycle("g").await.unwrap();
    }
    let held = p.replica_pits("g").await;
    assert!(held.contains(&named.id), "named: kept until released");
    assert!(
        held.contains(&kept.id),
        "the newest app-consistent PIT outlives --keep: {held:?}"
    );
    assert_eq!(
        held.len(),
        4,
        "named, newest app-consistent, 2 kept: {held:?}"
    );
    for site in [&p.a, &p.b] {
        let m = marks(site);
        assert!(
            m.contains(&(named.id, true)) && m.contains(&(kept.id, true)),
            "{m:?}"
        );
        assert_eq!(m.iter().filter(|(_, ac)| *ac).count(), 2, "{m:?}");
    }
    // A release rebuilds the replica's list from its store, which does not
    // keep the mark: the catalogs do.
    p.a.pit_release("g", "before-upgrade").await.unwrap();
    assert!(marks(&p.b).contains(&(named.id, true)));
    assert!(marks(&p.a).contains(&(named.id, true)));
    let listed = p.b.pit_list("g").await.unwrap();
    assert!(listed.iter().any(|e| e.id == kept.id && e.app_consistent));
    // The next app-consistent PIT releases the older one to retention.
    write(&v, 9, 9);
    let newer =
        p.a.sync_checkpoint("g", None, true, true)
            .await
            .unwrap()
            .pit
            .unwrap();
    write(&v, 10, 10);
    p.cycle("g").await.unwrap();
    let held = p.replica_pits("g").await;
    assert!(
        held.contains(&newer.id) && !held.contains(&kept.id),
        "{held:?}"
    );
    assert!(!held.contains(&named.id), "released, it aged out: {held:?}");
    for site in [&p.a, &p.b] {
        assert!(marks(site).contains(&(newer.id, true)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedule_takes_an_app_consistent_pit_once_per_interval() {
    let p = Pair::new();
    let log = p.dir().join("hooks.log");
    let (q, t) = logging_hooks(&log);
    vm(&p, "db", "d0", Some(q), Some(t));
    group_of(&p, &["db"], 10).await;
    p.a.set_group(
        "g",
        &SetGroup {
            app_consistent_every_secs: Some(3600),
            ..SetGroup::default()
        },
    )
    .await
    .unwrap();
    // The replica keeps a copy (the schedule of a reversed group).
    assert_eq!(p.row(&p.b, "g").app_consistent_every_secs, 3600);
    let st = p.a.group_status("g").await.unwrap();
    assert_eq!(st.app_consistent_every_seconds, Some(3600));
    let progress = Progress::default();
    let mut schedule = None;
    let app_consistent = |s: &Replication| marks(s).iter().filter(|(_, ac)| *ac).count();
    // None yet: the next scheduled turn is a quiesced one.
    p.a.scheduled_cycle(&p.row(&p.a, "g"), &progress, &mut schedule)
        .await;
    assert_eq!((app_consistent(&p.a), app_consistent(&p.b)), (1, 1));
    assert_eq!(lines(&log).len(), 2, "quiesced and thawed once");
    // Within the interval: ordinary cycles.
    write(&p.a.site.volume("d0").unwrap(), 1, 1);
    p.clock.advance(Duration::from_secs(1800));
    p.a.scheduled_cycle(&p.row(&p.a, "g"), &progress, &mut schedule)
        .await;
    assert_eq!(app_consistent(&p.a), 1);
    assert_eq!(lines(&log).len(), 2);
    // An interval after the last one: quiesced again.
    p.clock.advance(Duration::from_secs(1800));
    p.a.scheduled_cycle(&p.row(&p.a, "g"), &progress, &mut schedule)
        .await;
    assert_eq!(app_consistent(&p.a), 2);
    assert_eq!(lines(&log).len(), 4);
    // A failing hook: crash-consistent, warned, and not retried at every
    // cycle (each attempt holds the application) but an interval later.
    let st = p.a.group_status("g").await.unwrap();
    assert_eq!(st.app_consistent_age_seconds, Some(0));
    p.a.set_vm(
        "db",
        &SetVm {
            quiesce: Some("exit 1".into()),
            ..SetVm::default()
        },
    )
    .await
    .unwrap();
    p.clock.advance(Duration::from_secs(3600));
    p.a.scheduled_cycle(&p.row(&p.a, "g"), &progress, &mut schedule)
        .await;
    assert_eq!(app_consistent(&p.a), 2);
    assert!(p.row(&p.a, "g").quiesce_error.is_some());
    let thaws = lines(&log).len();
    p.clock.advance(Duration::from_secs(60));
    p.a.scheduled_cycle(&p.row(&p.a, "g"), &progress, &mut schedule)
        .await;
    assert_eq!(
        lines(&log).len(),
        thaws,
        "no second attempt within the interval"
    );
    let st = p.a.group_status("g").await.unwrap();
    assert_eq!(st.health, "warning", "{st:?}");
    assert_eq!(st.app_consistent_age_seconds, Some(3660));
}

/// `failover prepare` at `a` with `vms` built by `setup`; the final PIT.
async fn prepared(p: &Pair, vms: &[&str]) -> (crate::model::FailoverResult, bool) {
    group_of(p, vms, 10).await;
    let r = p.a.failover_prepare("g").await.unwrap();
    let pit =
        p.a.site
            .groups()
            .pits("g")
            .unwrap()
            .into_iter()
            .find(|x| x.id == r.pit)
            .expect("the final PIT");
    assert_eq!(pit.name.as_deref(), Some("planned-failover"));
    let at_b = marks(&p.b).contains(&(r.pit, pit.app_consistent));
    assert!(at_b, "both sites agree");
    (r, pit.app_consistent)
}

#[tokio::test]
async fn prepare_marks_its_final_pit_when_every_vm_stopped_cleanly_or_was_quiesced() {
    let p = Pair::new();
    let log = p.dir().join("hooks.log");
    let l = log.display();
    let (q, t) = logging_hooks(&log);
    // Stopped by its stop hook (exit 0): consistent on its volume.
    vm_with_stop(
        &p,
        "db",
        "d0",
        None,
        None,
        Some(format!("echo stop db >> {l}")),
    );
    // No stop hook: it keeps running, so it is quiesced for the final PIT.
    vm(&p, "cache", "c0", Some(q), Some(t));
    let (r, app_consistent) = prepared(&p, &["db", "cache"]).await;
    assert!(app_consistent, "{r:?}");
    assert_eq!(
        lines(&log),
        ["stop db", "quiesce cache checkpoint", "thaw cache"]
    );
    let actions: Vec<String> = r
        .vms
        .iter()
        .map(|h| format!("{} {}", h.action, h.vm))
        .collect();
    assert_eq!(actions, ["stop db", "quiesce cache", "thaw cache"]);
    assert!(r.errors.is_empty(), "{r:?}");
}

#[tokio::test]
async fn prepare_leaves_its_final_pit_crash_consistent_when_a_vm_runs_unquiesced() {
    let p = Pair::new();
    vm(&p, "db", "d0", None, None);
    let (r, app_consistent) = prepared(&p, &["db"]).await;
    assert!(!app_consistent);
    // Nothing was tried: no error, no warning.
    assert!(r.errors.is_empty(), "{r:?}");
    assert_eq!(p.row(&p.a, "g").quiesce_error, None);
}
