//! `offsite demo`: the README's main job. On one machine, with nothing but
//! this binary and qemu-utils, two sites on loopback (this binary run as
//! `serve` twice, ephemeral ports), paired over mutual TLS; a VM with two
//! volumes whose hooks are harmless scripts; data written over NBD with
//! `qemu-io`, replicated; then one recovery plan run as a test drill,
//! cleanup, a planned migration, reprotect and failback, with the data
//! checked at every step and each run's report summary printed. Any failed
//! check ends the demo with an error (exit 1). The sites are stopped and
//! removed unless `--keep`; the HTML reports are kept either way.
//!
//! Every action goes through the CLI (this binary as a subprocess), as an
//! administrator would type it, so the demo exercises the real contract.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

const SITES: [&str; 2] = ["site-a", "site-b"];

/// The running demo: its directory and the daemons it started.
struct Demo {
    bin: PathBuf,
    dir: PathBuf,
    daemons: Vec<Child>,
    keep: bool,
    started: Instant,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for child in &mut self.daemons {
            // Fails only for a daemon that already exited.
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        for child in &mut self.daemons {
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // As above: a daemon that is gone needs neither.
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.keep {
            println!("\nsites kept (stopped) in {}", self.dir.display());
        } else {
            for d in SITES
                .iter()
                .chain(&["replicas-of-site-a", "replicas-of-site-b", "hooks"])
            {
                let path = self.dir.join(d);
                if let Err(e) = std::fs::remove_dir_all(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    eprintln!(
                        "warning: removing {}: {e}; remove it by hand",
                        path.display()
                    );
                }
            }
        }
    }
}

fn step(title: &str) {
    println!("\n== {title}");
}

fn check(ok: bool, what: &str) -> anyhow::Result<()> {
    if ok {
        println!("   ok: {what}");
        Ok(())
    } else {
        bail!("check failed: {what}")
    }
}

impl Demo {
    fn site_dir(&self, site: &str) -> PathBuf {
        self.dir.join(site)
    }

    /// Runs `offsite ARGS --dir SITE`; the output, or an error with stderr.
    fn cli(&self, site: &str, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--dir")
            .arg(self.site_dir(site))
            .env_remove("OFFSITE_DIR")
            .output()
            .with_context(|| format!("running {} {}", self.bin.display(), args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "`offsite {}` at {site} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `offsite ARGS --json` at `site`.
    fn json(&self, site: &str, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.push("--json");
        let text = self.cli(site, &a)?;
        serde_json::from_str(&text)
            .with_context(|| format!("`offsite {}` printed no JSON: {text}", args.join(" ")))
    }

    fn start_site(&mut self, site: &str) -> anyhow::Result<()> {
        let dir = self.site_dir(site);
        self.cli_init(site, &dir)?;
        let log = std::fs::File::create(self.dir.join(format!("{site}.log")))
            .context("creating the daemon log")?;
        let child = Command::new(&self.bin)
            .arg("serve")
            .arg("--dir")
            .arg(&dir)
            .env_remove("OFFSITE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting `offsite serve`")?;
        self.daemons.push(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.cli(site, &["site", "show"]).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "site {site} did not start; see {}",
                    self.dir.join(format!("{site}.log")).display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn cli_init(&self, site: &str, dir: &Path) -> anyhow::Result<()> {
        let out = Command::new(&self.bin)
            .args(["site", "init", "--name", site])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--nbd",
                "127.0.0.1:0",
            ])
            .arg("--dir")
            .arg(dir)
            .output()
            .context("running `offsite site init`")?;
        if !out.status.success() {
            bail!(
                "site init {site}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn plan_run(&self, site: &str, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = vec!["plan", "run", "dr"];
        a.extend_from_slice(args);
        let r = self.json(site, &a)?;
        print!(
            "{}",
            indent(&self.cli(site, &["plan", "report", str_of(&r, "id")?])?)
        );
        check(
            r["status"] == "succeeded",
            &format!(
                "{} run {} succeeded",
                str_of(&r, "mode")?,
                str_of(&r, "id")?
            ),
        )?;
        Ok(r)
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}

fn str_of<'a>(v: &'a Value, key: &str) -> anyhow::Result<&'a str> {
    v[key]
        .as_str()
        .with_context(|| format!("{key} missing in {v}"))
}

/// `qemu-io -f raw -c CMD... URL`; every command must succeed.
fn qemu_io(url: &str, cmds: &[&str]) -> anyhow::Result<()> {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let out = c
        .arg(url)
        .output()
        .context("running qemu-io (install qemu-utils)")?;
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        || text.contains("Pattern verification failed")
        || text.contains("failed")
    {
        bail!("qemu-io {} on {url}: {}", cmds.join("; "), text.trim());
    }
    Ok(())
}

fn check_data(url: &str, cmds: &[&str], what: &str) -> anyhow::Result<()> {
    qemu_io(url, cmds).with_context(|| format!("check failed: {what}"))?;
    println!("   ok: {what}");
    Ok(())
}

/// The demo directory: `--dir DIR` (new or empty) or a new temporary one.
fn demo_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match dir {
        Some(d) => {
            if d.join("config.toml").exists() || SITES.iter().any(|s| d.join(s).exists()) {
                bail!(
                    "{} holds a site already; give the demo a new or empty directory",
                    d.display()
                );
            }
            d.to_path_buf()
        }
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            std::env::temp_dir().join(format!("offsite-demo-{}-{stamp}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::path::absolute(&dir).context("resolving the demo directory")
}

/// `offsite demo [--dir DIR] [--keep]`.
pub fn run(dir: Option<&Path>, keep: bool) -> anyhow::Result<()> {
    if Command::new("qemu-io").arg("--version").output().is_err() {
        bail!(
            "the demo writes and checks data with qemu-io: install qemu-utils (apt-get install qemu-utils)"
        );
    }
    let bin = std::env::current_exe().context("finding this offsite binary")?;
    let dir = demo_dir(dir)?;
    let mut d = Demo {
        bin,
        dir: dir.clone(),
        daemons: Vec::new(),
        keep,
        started: Instant::now(),
    };
    let result = scenario(&mut d);
    let reports = dir.join("reports");
    // A failure shows in the copies below.
    let _ = std::fs::create_dir_all(&reports);
    for s in SITES {
        if let Ok(entries) = std::fs::read_dir(d.site_dir(s).join("reports")) {
            for e in entries.flatten() {
                if let Err(err) = std::fs::copy(e.path(), reports.join(e.file_name())) {
                    eprintln!("warning: copying report {}: {err}", e.path().display());
                }
            }
        }
    }
    let elapsed = d.started.elapsed();
    drop(d);
    println!(
        "\nHTML reports (one per run, each readable on its own): {}",
        reports.display()
    );
    match result {
        Ok(()) => {
            println!(
                "demo finished in {:.0} s: every check passed",
                elapsed.as_secs_f64()
            );
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "the demo failed; the daemons' logs are in {} (run with --keep to keep the sites)",
            dir.display()
        ))),
    }
}

fn scenario(d: &mut Demo) -> anyhow::Result<()> {
    let (a, b) = (SITES[0], SITES[1]);
    step(&format!(
        "two sites in {}, on loopback with ephemeral ports",
        d.dir.display()
    ));
    for s in SITES {
        d.start_site(s)?;
    }
    let ia = d.json(a, &["site", "show"])?;
    let ib = d.json(b, &["site", "show"])?;
    for i in [&ia, &ib] {
        println!(
            "   {}: replication {}, API {}, NBD {}",
            str_of(i, "name")?,
            str_of(i, "listen")?,
            str_of(i, "api")?,
            str_of(i, "nbd")?
        );
    }

    pair(d, &ia, &ib)?;
    let web = protect_web(d)?;
    let defined = define_plan(d, &web)?;
    drill_and_migrate(d, &ib, &web)?;
    fail_back(d, &web, &defined)
}

/// Where the demo VM's volumes are served at site-a, and its hooks' log.
struct Web {
    boot_a: String,
    data_a: String,
    log: PathBuf,
}

/// Pairs the sites (each pins the other's fingerprint) and authorizes each
/// as the other's replica.
fn pair(d: &mut Demo, ia: &serde_json::Value, ib: &serde_json::Value) -> anyhow::Result<()> {
    let (a, b) = (SITES[0], SITES[1]);
    step(
        "pair them (pinned certificate fingerprints, mutual TLS) and authorize each as the other's replica",
    );
    d.json(
        a,
        &[
            "partner",
            "add",
            b,
            "--address",
            str_of(ib, "listen")?,
            "--fingerprint",
            str_of(ib, "fingerprint")?,
        ],
    )?;
    d.json(
        b,
        &[
            "partner",
            "add",
            a,
            "--address",
            str_of(ia, "listen")?,
            "--fingerprint",
            str_of(ia, "fingerprint")?,
        ],
    )?;
    let ra = d.dir.join("replicas-of-site-a").display().to_string();
    let rb = d.dir.join("replicas-of-site-b").display().to_string();
    d.json(
        b,
        &[
            "authz",
            "add",
            "--allowed-primary",
            a,
            "--storage-location",
            &ra,
        ],
    )?;
    d.json(
        a,
        &[
            "authz",
            "add",
            "--allowed-primary",
            b,
            "--storage-location",
            &rb,
        ],
    )?;

    Ok(())
}

/// The VM `web` at site-a with data on both volumes, protected by group
/// `web` with a named PIT; verified.
fn protect_web(d: &mut Demo) -> anyhow::Result<Web> {
    let (a, b) = (SITES[0], SITES[1]);
    step(
        "a VM `web` with two volumes at site-a; its hooks are harmless scripts that log what they would do",
    );
    let hooks = d.dir.join("hooks");
    std::fs::create_dir_all(&hooks).context("creating the hooks directory")?;
    let log = hooks.join("hooks.log");
    let l = log.display();
    let start = format!(
        "echo \"$OFFSITE_SITE start $OFFSITE_VM mode=$OFFSITE_MODE net=${{OFFSITE_TEST_NETWORK:-production}} disk0=$OFFSITE_VOLUME_0_URL\" >> {l}"
    );
    let stop = format!("echo \"$OFFSITE_SITE stop $OFFSITE_VM mode=$OFFSITE_MODE\" >> {l}");
    d.json(a, &["volume", "create", "web-boot", "--size", "64M"])?;
    d.json(a, &["volume", "create", "web-data", "--size", "32M"])?;
    d.json(
        a,
        &[
            "vm", "create", "web", "--volume", "web-boot", "--volume", "web-data", "--start",
            &start, "--stop", &stop,
        ],
    )?;
    let boot_a = str_of(&d.json(a, &["volume", "url", "web-boot"])?, "url")?.to_string();
    let data_a = str_of(&d.json(a, &["volume", "url", "web-data"])?, "url")?.to_string();
    qemu_io(&boot_a, &["write -P 0x5a 0 8M"])?;
    qemu_io(&data_a, &["write -P 0x33 1M 4M"])?;
    println!("   wrote 8 MiB to web-boot and 4 MiB to web-data over NBD ({boot_a})");

    step("replication group `web` site-a -> site-b: initial replication, a delta, verify");
    d.json(
        a,
        &[
            "group",
            "create",
            "web",
            "--partner",
            b,
            "--vm",
            "web",
            "--mode",
            "async",
            "--rpo",
            "5m",
            "--keep",
            "4",
        ],
    )?;
    d.json(a, &["group", "start", "web"])?;
    qemu_io(&boot_a, &["write -P 0x77 32M 2M"])?;
    d.json(b, &["sync", "web", "--pit-name", "before-drill"])?;
    let v = d.json(a, &["verify", "web"])?;
    check(
        v["differing_blocks"] == 0,
        "the replica's newest PIT equals site-a block for block",
    )?;

    Ok(Web {
        boot_a,
        data_a,
        log,
    })
}

/// The recovery plan `dr`, defined at site-a and held at both sites; its
/// definition as `plan show --json` prints it.
fn define_plan(d: &mut Demo, web: &Web) -> anyhow::Result<serde_json::Value> {
    let (a, b) = (SITES[0], SITES[1]);
    let l = web.log.display();
    step(
        "recovery plan `dr` (defined at site-a, kept at both sites): the VM in tier 1, waits until its hook ran, a smoke-test callout",
    );
    d.json(
        a,
        &[
            "plan",
            "create",
            "dr",
            "--protected-site",
            a,
            "--recovery-site",
            b,
            "--test-network",
            "drill-net",
            "--description",
            "web tier",
        ],
    )?;
    d.json(a, &["plan", "add-group", "dr", "web"])?;
    let wait = format!("cmd:grep -q \"$OFFSITE_SITE start web\" {l}");
    d.json(
        a,
        &[
            "plan",
            "set-priority",
            "dr",
            "web",
            "1",
            "--wait-for",
            &wait,
            "--wait-timeout",
            "30s",
        ],
    )?;
    d.json(
        a,
        &[
            "plan",
            "add-step",
            "dr",
            "smoke-test",
            "--after-tier",
            "1",
            "--command",
            "echo smoke test of $OFFSITE_PLAN at $OFFSITE_SITE, mode $OFFSITE_RUN_MODE",
        ],
    )?;
    let defined = d.json(a, &["plan", "show", "dr"])?;
    print!("{}", indent(&d.cli(a, &["plan", "show", "dr"])?));
    check(
        d.json(b, &["plan", "show", "dr"])? == defined,
        "site-b holds the same plan",
    )?;

    Ok(defined)
}

/// Test drill and cleanup at site-b, then the planned migration there and
/// reprotect (site-a becomes the replica).
fn drill_and_migrate(d: &mut Demo, ib: &serde_json::Value, web: &Web) -> anyhow::Result<()> {
    let b = SITES[1];
    let boot_a = &web.boot_a;
    let nbd_b = str_of(ib, "nbd")?.to_string();
    step(
        "test drill at site-b: clones of the newest PIT, the VM started on them, replication untouched",
    );
    d.plan_run(b, &["--mode", "test"])?;
    let clone = format!("nbd://{nbd_b}/web-boot@web.test");
    check_data(
        &clone,
        &["read -P 0x5a 0 8M", "read -P 0x77 32M 2M"],
        "the test clone holds site-a's data",
    )?;
    qemu_io(&clone, &["write -P 0xee 0 1M"])?;
    check(
        d.json(b, &["group", "status", "web"])?["state"]
            == offsite_catalog::GroupState::TestFailover.as_str(),
        "group web is in test failover at site-b",
    )?;

    step("cleanup at site-b: the VM stopped, the clones and their writes discarded");
    d.plan_run(b, &["--mode", "cleanup"])?;
    check_data(
        boot_a,
        &["read -P 0x5a 0 8M"],
        "site-a's volume never saw the test's writes",
    )?;
    qemu_io(boot_a, &["write -P 0x44 40M 1M"])?;
    println!("   site-a wrote 1 MiB more after the last PIT (the planned migration must carry it)");

    step(
        "planned migration to site-b: pre-sync, VM stopped at site-a, fenced, final PIT, promoted, VM started at site-b",
    );
    d.plan_run(b, &["--mode", "planned"])?;
    let boot_b = format!("nbd://{nbd_b}/web-boot");
    let data_b = format!("nbd://{nbd_b}/web-data");
    check_data(
        &boot_b,
        &[
            "read -P 0x5a 0 8M",
            "read -P 0x77 32M 2M",
            "read -P 0x44 40M 1M",
        ],
        "site-b serves web-boot with every write of site-a",
    )?;
    check_data(&data_b, &["read -P 0x33 1M 4M"], "site-b serves web-data")?;
    qemu_io(&boot_b, &["write -P 0xb0 48M 1M"])?;
    println!("   the VM writes 1 MiB at site-b");

    step("reprotect at site-b: site-a becomes the replica; only changed blocks move");
    d.plan_run(b, &["--mode", "reprotect"])?;
    let v = d.json(b, &["verify", "web"])?;
    check(
        v["differing_blocks"] == 0,
        "site-a's new replica equals site-b block for block",
    )?;

    Ok(())
}

/// Failback home, the original direction again, and what the plan and the
/// hooks recorded.
fn fail_back(d: &mut Demo, web: &Web, defined: &serde_json::Value) -> anyhow::Result<()> {
    let (a, b) = (SITES[0], SITES[1]);
    let (boot_a, data_a, log) = (&web.boot_a, &web.data_a, &web.log);
    step("failback at site-a: planned migration home, then reprotect to the original direction");
    d.plan_run(a, &["--mode", "failback"])?;
    check_data(
        boot_a,
        &[
            "read -P 0x5a 0 8M",
            "read -P 0x44 40M 1M",
            "read -P 0xb0 48M 1M",
        ],
        "site-a serves web-boot with site-b's writes",
    )?;
    check_data(data_a, &["read -P 0x33 1M 4M"], "site-a serves web-data")?;
    let st = d.json(a, &["group", "status", "web"])?;
    check(
        st["role"] == offsite_catalog::Role::Primary.as_str()
            && st["state"] == offsite_catalog::GroupState::Replicating.as_str(),
        "group web replicates site-a -> site-b again",
    )?;
    let v = d.json(a, &["verify", "web"])?;
    check(
        v["differing_blocks"] == 0,
        "site-b's replica equals site-a block for block",
    )?;
    check(
        d.json(a, &["plan", "show", "dr"])? == *defined
            && d.json(b, &["plan", "show", "dr"])? == *defined,
        "plan dr is unchanged at both sites after reprotect and failback",
    )?;
    let pits = d.json(a, &["pit", "list", "web"])?;
    check(
        pits.as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["name"] == "before-drill")),
        "the PIT named before-drill outlived the migration and the failback",
    )?;

    step("the plan's history (either site shows every run) and the VM hooks' log");
    print!("{}", indent(&d.cli(a, &["plan", "history", "dr"])?));
    let hist = d.json(a, &["plan", "history", "dr"])?;
    check(
        hist.as_array().map_or(0, Vec::len) == 5,
        "site-a lists the five runs",
    )?;
    print!(
        "{}",
        indent(&std::fs::read_to_string(log).unwrap_or_default())
    );
    Ok(())
}
