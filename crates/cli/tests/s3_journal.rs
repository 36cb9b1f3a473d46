//! The journal of a continuous group whose replica is in a real 3-node
//! Garage cluster (issue 21): site-a writes stamps across two volumes
//! with a checkpoint a second, site-b keeps the journal in its working
//! directory and copies it into the bucket (sealed with the group's key).
//! Both sites are then lost with their data directories; a brand-new
//! site-b attaches the bucket with the escrowed key and recovers, with
//! `pit export --at`, a checkpoint that only the journal holds (no PIT is
//! at it): exactly the same prefix of the write order as the lost site-b
//! exported there, and `failover run --at` promotes the volumes at it.
//! Without Garage the test prints why and passes, except
//! under CI.

mod common;

use std::path::{Path, PathBuf};

use common::s3::*;
use common::stamps::{STAMP_WRITER, stamp_prefix};
use common::*;
use offsite_testkit::garage::GarageCluster;

/// Stamps written across both volumes.
const STAMPS: u64 = 400;

/// The journal directory of group `group` in `site`'s working directory
/// of a bucket store (`DATA/object-stores/PARTNER/GROUP/journal`).
fn journal_dir(site: &Path, group: &str) -> PathBuf {
    let stores = site.join("object-stores");
    std::fs::read_dir(&stores)
        .unwrap_or_else(|e| panic!("{}: {e}", stores.display()))
        .map(|e| e.unwrap().path().join(group).join("journal"))
        .find(|p| p.is_dir())
        .unwrap_or_else(|| panic!("no journal of {group} under {}", stores.display()))
}

/// Numbers of the sealed journal files in `dir` (all but the newest).
fn sealed_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.ends_with(".jnl").then_some(name)
        })
        .collect();
    names.sort();
    names.pop();
    names
}

#[test]
fn a_new_site_recovers_a_checkpoint_only_the_journal_in_the_bucket_holds() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    if !have_tools(&["qemu-io"]) || !have_python_nbd() {
        return;
    }
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let (a, b) = s3_pair(&cluster);
    let u0 = a.create_volume("vol0", "8M");
    let u1 = a.create_volume("vol1", "8M");
    create_group(
        &a,
        "j",
        "site-b",
        &["--volume", "vol0", "--volume", "vol1"],
        &[
            "--mode",
            "continuous",
            "--compress",
            "none",
            "--checkpoint-interval",
            "1s",
            "--keep",
            "2",
            "--encrypt",
        ],
    );
    a.json(&["group", "start", "j"]);
    wait_group(&a, "j", "streaming", GROUP_LIMIT, |s| {
        s["sync_state"] == "streaming"
    });
    let mut writer = KillOnDrop(Some(
        Command::new(PYTHON)
            .arg("-c")
            .arg(STAMP_WRITER)
            .args([&u0, &u1, &STAMPS.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn writer"),
    ));
    let stdout = writer.child().stdout.take().unwrap();
    let acked = BufReader::new(stdout).lines().count() as u64;
    let out = writer.take().wait_with_output().expect("writer");
    assert!(
        out.status.success() && acked == STAMPS,
        "writer: {acked} stamps; {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A seal: the file holding the stamps' checkpoints becomes history.
    a.json(&["sync", "j"]);

    // A checkpoint in the middle of the writes, as the replica site
    // exports it: a journal image, not a PIT.
    let list = b.json(&["pit", "list", "j", "--checkpoints", "--all"]);
    let cps: Vec<(u64, u64)> = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|c| (u(c, "id"), u(c, "time_ns")))
        .collect();
    assert!(cps.len() >= 3, "a few seconds of writes: {list}");
    let (mid_id, mid_time) = cps[cps.len() / 2];
    let at = rfc3339_ns(mid_time);
    let e = b.json(&["pit", "export", "j", "--at", &at]);
    assert_eq!(e["point"]["kind"], "checkpoint", "{e}");
    assert_eq!(u(&e["point"], "id"), mid_id, "{e}");
    let before = stamp_prefix(
        [&served_url(&e, "vol0"), &served_url(&e, "vol1")],
        STAMPS,
        "the checkpoint at the lost site",
    );
    assert!(
        0 < before && before < STAMPS,
        "a middle checkpoint: {before}"
    );

    // The sealed journal files reach the bucket (the seal started their
    // upload; the key names are the files').
    let dir = journal_dir(b.dir(), "j");
    let objects = bucket_of(&cluster, "j");
    wait_until(
        "the sealed journal files are in the bucket",
        GROUP_LIMIT,
        || {
            let keys: Vec<String> = objects
                .list("journal/")
                .unwrap()
                .into_iter()
                .map(|o| o.key)
                .collect();
            sealed_files(&dir)
                .iter()
                .all(|f| keys.contains(&format!("journal/{f}")))
        },
    );
    // Sealed with the group's key: no journal header in the clear. An
    // upload pass may replace a tail part by its file's whole object
    // between the listing and the read (the part is deleted then); the
    // sealed files' whole objects stay, so some are always read.
    let mut read = 0;
    for o in objects.list("journal/").unwrap() {
        let raw = match objects.get(&o.key) {
            Err(e) if e.is_not_found() => continue,
            other => other.unwrap(),
        };
        assert!(!raw.windows(8).any(|w| w == b"OFSRPLOG"), "{}", o.key);
        read += 1;
    }
    assert!(read > 0, "no journal object read");
    let out = a.run(&["group", "key", "export", "j"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let escrow = tempfile::tempdir().unwrap();
    let key_file = escrow.path().join("j.key");
    std::fs::write(&key_file, &out.stdout).unwrap();

    // Both sites are lost with everything on their disks.
    for mut site in [a, b] {
        let dir = site.dir().to_path_buf();
        site.kill9();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // A new site-b attaches the bucket: the journal comes back with the
    // PITs, and the same checkpoint is exactly the same image.
    let b = s3_site("site-b", &cluster);
    let location = format!("s3://{}/{PREFIX}", cluster.bucket);
    let key_arg = key_file.display().to_string();
    let attached = b.json(&["site", "attach-store", &location, "--key-file", &key_arg]);
    assert_eq!(attached["groups"][0]["action"], "attached", "{attached}");
    let list = b.json(&["pit", "list", "j", "--checkpoints", "--all"]);
    let ids: Vec<u64> = list["checkpoints"]
        .as_array()
        .expect("checkpoints")
        .iter()
        .map(|c| u(c, "id"))
        .collect();
    assert!(
        ids.contains(&mid_id),
        "checkpoint {mid_id} at the new site: {list}"
    );
    let e = b.json(&["pit", "export", "j", "--at", &at]);
    assert_eq!(e["point"]["kind"], "checkpoint", "{e}");
    assert_eq!(u(&e["point"], "id"), mid_id, "{e}");
    let after = stamp_prefix(
        [&served_url(&e, "vol0"), &served_url(&e, "vol1")],
        STAMPS,
        "the checkpoint at the new site",
    );
    assert_eq!(after, before, "checkpoint {mid_id} after the site was lost");
    // And the VM's disks are promoted at it: the same image.
    let r = b.json(&["failover", "run", "j", "--force", "--at", &at]);
    assert_eq!(r["point"]["kind"], "checkpoint", "{r}");
    assert_eq!(u(&r["point"], "id"), mid_id, "{r}");
    let promoted = stamp_prefix(
        [&served_url(&r, "vol0"), &served_url(&r, "vol1")],
        STAMPS,
        "the volumes promoted at the new site",
    );
    assert_eq!(promoted, before, "promoted at checkpoint {mid_id}");
}

/// RFC 3339 (UTC, nanoseconds) of nanoseconds since the epoch.
fn rfc3339_ns(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .expect("date");
    format!(
        "{}.{:09}Z",
        String::from_utf8_lossy(&out.stdout).trim(),
        ns % 1_000_000_000
    )
}
