//! A real database on a continuous group (issue 19): PostgreSQL on ext4
//! on a volume of the group (nbdfuse + losetup), a client logging each id
//! once its COMMIT returned, `kill -9` of the primary site mid-commit.
//! At the replica a test copy 30 s back holds exactly what was committed
//! by then (±1 s), and `failover run --force --at` the newest checkpoint
//! recovers the database with gap-free ids and at most 2 s of
//! acknowledged commits lost.

mod common;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::ext4::{Ext4, ext4_ready};
use common::pg::{Postgres, pg_ready};
use common::*;
use offsite_testkit::sh;

/// The group's mode.
const MODE: &str = "continuous";

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// `ns` since the epoch as RFC 3339 (UTC, nanoseconds).
fn rfc3339(ns: u64) -> String {
    sh(
        "date",
        &[
            "-u",
            "-d",
            &format!("@{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000),
            "+%Y-%m-%dT%H:%M:%S.%NZ",
        ],
    )
    .trim()
    .to_string()
}

/// The ids in table `t` of the database on the export `url`, recovered
/// by PostgreSQL itself (crash recovery from its WAL).
fn recovered_ids(url: &str, scratch: &Path, port: u16) -> Vec<u64> {
    let mut fs = Ext4::attach(url, scratch);
    fs.mount(&[]);
    let pg = Postgres::recovered(&fs.mnt.join("data"), &scratch.join("sock"), port);
    pg.start();
    let rows = pg.query("SELECT id FROM t ORDER BY id");
    let log = pg.log();
    pg.stop();
    fs.release();
    assert!(
        log.contains("database system was interrupted")
            || log.contains("database system was not properly shut down"),
        "the copy is a crash image, so PostgreSQL replays its WAL:\n{log}"
    );
    rows.lines().map(|l| l.trim().parse().unwrap()).collect()
}

/// `ids` are 1..=n without a gap; returns n.
fn gap_free(ids: &[u64], what: &str) -> u64 {
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*id, i as u64 + 1, "{what}: ids have a gap: {ids:?}");
    }
    ids.len() as u64
}

/// The last id whose commit was acknowledged at or before `at_ns`.
fn committed_by(commits: &[(u64, u64)], at_ns: u64) -> u64 {
    commits
        .iter()
        .take_while(|(_, t)| *t <= at_ns)
        .last()
        .map_or(0, |c| c.0)
}

#[test]
fn postgres_on_a_continuous_group_recovers_to_the_second_after_the_primary_is_killed() {
    let what = "the PostgreSQL kill -9 test";
    if !ext4_ready(what, &[]) || !pg_ready(what) {
        return;
    }
    let (mut a, b) = group_pair();
    let url = a.create_volume("db", "1G");
    create_group(
        &a,
        "pg",
        b.name(),
        &["--volume", "db"],
        &["--mode", MODE, "--compress", "none", "--rpo", "60s"],
    );
    a.json(&["group", "start", "pg"]);
    wait_group(&a, "pg", "streaming", GROUP_LIMIT, |st| {
        st["state"] == "replicating" && st["sync_state"] == "streaming"
    });

    // The test's files live where the postgres user may enter.
    let scratch = a.scratch().join("pg");
    std::fs::create_dir_all(&scratch).unwrap();
    for d in [a.dir().to_path_buf(), a.scratch(), scratch.clone()] {
        sh("chmod", &["755", d.to_str().unwrap()]);
    }
    let mut fs = Ext4::make(&url, &scratch.join("primary"));
    sh("chmod", &["755", fs.mnt.to_str().unwrap()]);
    let pg = Postgres::init(&fs.mnt.join("data"), &scratch.join("sock"), 54_321);
    pg.start();
    let mut client = pg.committer(&scratch.join("commits.log"));

    // 40 s of commits, then the primary site dies mid-commit.
    std::thread::sleep(Duration::from_secs(40));
    let killed_at = now_ns();
    a.kill9();
    client.kill();
    pg.kill9();
    fs.release();
    let commits = client.commits();
    let last_logged = commits.last().expect("commits").0;
    // The client may log a commit or two after `killed_at`: the site
    // dies a moment after the time is read.
    eprintln!(
        "{} commits logged, the last {:+.3} s from the kill",
        commits.len(),
        (commits.last().unwrap().1 as f64 - killed_at as f64) / 1e9
    );

    // A test copy 30 s back: exactly the commits acknowledged by then,
    // give or take the second between checkpoints.
    let back = killed_at - 30_000_000_000;
    let r = b.json(&["failover", "run", "pg", "--test", "--at", &rfc3339(back)]);
    let ids = recovered_ids(&served_url(&r, "db"), &scratch.join("test"), 54_322);
    let n = gap_free(&ids, "the test copy");
    let (low, high) = (
        committed_by(&commits, back - 1_000_000_000),
        // The id after the last one logged may be committed but not yet
        // logged by the client.
        committed_by(&commits, back + 1_000_000_000) + 1,
    );
    assert!(
        (low..=high).contains(&n),
        "the copy at {} holds ids up to {n}; commits acknowledged by then (±1 s): {low}..={high}",
        rfc3339(back)
    );
    eprintln!("the copy 30 s back holds ids 1..={n}; acknowledged by then ±1 s: {low}..={high}");
    b.json(&["failover", "stop-test", "pg"]);

    // Disaster recovery at the newest checkpoint.
    let r = b.json(&["failover", "run", "pg", "--force", "--at", "now"]);
    let ids = recovered_ids(&served_url(&r, "db"), &scratch.join("recovered"), 54_323);
    let n = gap_free(&ids, "the recovered database");
    let must = committed_by(&commits, killed_at - 2_000_000_000);
    assert!(
        n >= must && n <= last_logged + 1,
        "recovered ids 1..={n}; acknowledged more than 2 s before the kill: 1..={must}; logged: 1..={last_logged}"
    );
    eprintln!(
        "recovered {n} of {last_logged} logged commits; loss window {:.2} s",
        commits
            .iter()
            .find(|c| c.0 == n + 1)
            .map_or(0.0, |c| (killed_at.saturating_sub(c.1)) as f64 / 1e9)
    );
}
