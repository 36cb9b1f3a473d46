//! PostgreSQL (Debian's 15) on a mounted file system, as a VM's database
//! would run, and a client that logs each id once its COMMIT returned:
//! the record of what the database acknowledged, to hold a recovered copy
//! against. Runs as the `postgres` user (the server refuses root).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{have_tools, wait_until};

/// Debian's PostgreSQL 15 programs.
const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Whether this environment can run a PostgreSQL test (`what` names it);
/// under CI it must.
pub fn pg_ready(what: &str) -> bool {
    let ci = std::env::var_os("CI").is_some();
    let skip = |why: &str| {
        assert!(!ci, "{what} cannot run under CI: {why}");
        eprintln!("skipping {what}: {why}");
        false
    };
    for p in ["initdb", "pg_ctl", "postgres", "psql"] {
        let path = Path::new(BIN).join(p);
        if !path.exists() && p != "psql" {
            return skip(&format!(
                "{} is absent (apt install postgresql)",
                path.display()
            ));
        }
    }
    let psycopg = Command::new("/usr/bin/python3")
        .args(["-c", "import psycopg2"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !psycopg {
        return skip("python3-psycopg2 is absent");
    }
    if Command::new("id")
        .arg("postgres")
        .stdout(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        return skip("there is no postgres user");
    }
    have_tools(&["su", "psql"])
}

/// Runs `cmd` (a shell command line) as the `postgres` user; panics with
/// its output when it fails.
fn as_postgres(cmd: &str) -> String {
    let out = Command::new("su")
        .args(["postgres", "-s", "/bin/sh", "-c", cmd])
        .stdin(Stdio::null())
        .output()
        .expect("run su");
    assert!(
        out.status.success(),
        "as postgres: {cmd}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A database cluster in `data`, served on a Unix socket in `sock`.
#[derive(Debug)]
pub struct Postgres {
    /// The cluster's data directory.
    pub data: PathBuf,
    sock: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Postgres {
    /// A new cluster in `data` (created; its parent must exist), served
    /// from a socket in `sock` (a directory any user may enter).
    pub fn init(data: &Path, sock: &Path, port: u16) -> Postgres {
        std::fs::create_dir_all(data).unwrap();
        sh_ok("chown", &["postgres:postgres", data.to_str().unwrap()]);
        sh_ok("chmod", &["700", data.to_str().unwrap()]);
        let pg = Postgres::at(data, sock, port);
        as_postgres(&format!(
            "{BIN}/initdb -A trust -U postgres -D '{}' >/dev/null",
            data.display()
        ));
        pg
    }

    /// The cluster already in `data`.
    pub fn at(data: &Path, sock: &Path, port: u16) -> Postgres {
        std::fs::create_dir_all(sock).unwrap();
        sh_ok("chmod", &["1777", sock.to_str().unwrap()]);
        Postgres {
            data: data.to_path_buf(),
            sock: sock.to_path_buf(),
            port,
            log: sock.join(format!("postgres-{port}.log")),
        }
    }

    /// The crashed cluster in `data`, copied to this machine (recovered):
    /// its lock file names a postmaster of the machine it ran on (here the
    /// same one, whose pid may have been reused), so it goes, as an
    /// operator starting a recovered VM's database would find it gone.
    pub fn recovered(data: &Path, sock: &Path, port: u16) -> Postgres {
        let _ = std::fs::remove_file(data.join("postmaster.pid"));
        Postgres::at(data, sock, port)
    }

    /// Starts the server and waits until it accepts connections (after
    /// crash recovery, for a copy taken from a running one).
    pub fn start(&self) {
        let out = Command::new("su")
            .args([
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                &format!(
                    "{BIN}/pg_ctl -D '{}' -l '{}' -w -t 120 -o \"-k '{}' -p {} -c listen_addresses=''\" start",
                    self.data.display(),
                    self.log.display(),
                    self.sock.display(),
                    self.port
                ),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run su");
        assert!(
            out.status.success(),
            "PostgreSQL in {} did not start ({}): {}\nits log:\n{}",
            self.data.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops it at once (`immediate`: no shutdown checkpoint, as a crash
    /// would), if it runs.
    pub fn stop(&self) {
        let _ = Command::new("su")
            .args([
                "postgres",
                "-s",
                "/bin/sh",
                "-c",
                &format!(
                    "{BIN}/pg_ctl -D '{}' -m immediate -w -t 30 stop",
                    self.data.display()
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// SIGKILL to the postmaster and every backend (the file system under
    /// them may be gone: nothing may wait for it).
    pub fn kill9(&self) {
        let _ = Command::new("pkill")
            .args([
                "-9",
                "-u",
                "postgres",
                "-f",
                &self.data.display().to_string(),
            ])
            .status();
        let _ = Command::new("pkill")
            .args(["-9", "-u", "postgres", "postgres"])
            .status();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `psql -At -c SQL`: the rows, one per line.
    pub fn query(&self, sql: &str) -> String {
        as_postgres(&format!(
            "psql -X -At -h '{}' -p {} -d postgres -c \"{sql}\"",
            self.sock.display(),
            self.port
        ))
    }

    /// Starts a client that inserts ids 1, 2, ... into `t` (created), one
    /// transaction each, and writes `ID TIME_NS` to `log` once each COMMIT
    /// has returned.
    pub fn committer(&self, log: &Path) -> Committer {
        self.query("CREATE TABLE t (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now(), pad text)");
        let script = r#"
import os, sys, time, psycopg2
sock, port, path = sys.argv[1], sys.argv[2], sys.argv[3]
c = psycopg2.connect(host=sock, port=port, dbname="postgres", user="postgres")
cur = c.cursor()
out = open(path, "w", buffering=1)
i = 0
while True:
    i += 1
    cur.execute("INSERT INTO t (id, pad) VALUES (%s, repeat('x', 200))", (i,))
    c.commit()
    out.write("%d %d\n" % (i, time.time_ns()))
"#;
        let child = Command::new("/usr/bin/python3")
            .args([
                "-c",
                script,
                self.sock.to_str().unwrap(),
                &self.port.to_string(),
                log.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the committing client");
        let c = Committer {
            child: Some(child),
            log: log.to_path_buf(),
        };
        wait_until("the first commit", Duration::from_secs(30), || {
            !c.commits().is_empty()
        });
        c
    }
}

/// The committing client; killed when dropped.
#[derive(Debug)]
pub struct Committer {
    child: Option<Child>,
    log: PathBuf,
}

impl Committer {
    /// `(id, time_ns)` of every commit acknowledged so far, in order.
    pub fn commits(&self) -> Vec<(u64, u64)> {
        let Ok(f) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            // A line being written may be incomplete.
            .filter_map(|l| {
                let (id, at) = l.split_once(' ')?;
                Some((id.parse().ok()?, at.parse().ok()?))
            })
            .collect()
    }

    /// Kills the client (its database may be gone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn sh_ok(program: &str, args: &[&str]) {
    let st = Command::new(program).args(args).status().expect(program);
    assert!(st.success(), "{program} {args:?}: {st}");
}
