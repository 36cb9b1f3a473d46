//! A real 3-node [Garage](https://garagehq.deuxfleurs.fr) cluster on
//! loopback, for the tests that claim S3 behaviour (no mock S3 stands in
//! for it).
//!
//! [`GarageCluster::start`] writes one configuration per node in a
//! temporary directory (its own metadata and data directories, loopback
//! ports for RPC, the S3 API and the admin API, `replication_factor = 3`,
//! `consistency_mode = "consistent"`, SQLite metadata, a random
//! `rpc_secret`), starts the three `garage server` processes, connects
//! them, assigns a layout with one node in each of three zones
//! (`dc1`..`dc3`, 1 GB each) and applies it, then creates a bucket and an
//! access key allowed to read and write it. Every step goes through
//! Garage's own CLI (`garage -c NODE.toml ...`), which talks to the node
//! over RPC.
//!
//! Faults: [`GarageCluster::kill`] sends SIGKILL to one node,
//! [`GarageCluster::restart`] starts it again on the same directories and
//! ports (it rejoins the cluster from its stored peer list). Dropping the
//! cluster kills every node and removes the directories.
//!
//! The version is pinned ([`GARAGE_VERSION`]): the binary is `garage` on
//! `PATH` or in `~/.cargo/bin`, or `$OFFSITE_GARAGE`; a missing binary is
//! [`GarageUnavailable::Missing`] (the tests skip with that reason unless
//! `CI` is set: see [`GarageCluster::start_or_skip`]), another version a
//! failure naming the install command.

use std::fmt;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore as _;

/// The Garage version the tests are written against.
pub const GARAGE_VERSION: &str = "2.5.0";
/// How to install it.
pub const GARAGE_INSTALL: &str = "cargo install --locked garage --version 2.5.0";
/// The region of the S3 API (`[s3_api] s3_region`).
pub const GARAGE_REGION: &str = "garage";
/// The bucket the cluster is created with.
pub const GARAGE_BUCKET: &str = "offsite-test";
/// How long the cluster may take to come up (each step polls).
const SETUP_TIMEOUT: Duration = Duration::from_secs(120);

/// Why no cluster can be started.
#[derive(Debug)]
pub enum GarageUnavailable {
    /// No `garage` binary was found.
    Missing,
    /// The binary is another version.
    WrongVersion {
        /// The binary.
        path: PathBuf,
        /// What `garage --version` printed.
        printed: String,
    },
}

impl fmt::Display for GarageUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GarageUnavailable::Missing => write!(
                f,
                "Garage {GARAGE_VERSION} is not installed (no `garage` on PATH, in ~/.cargo/bin or in $OFFSITE_GARAGE); install it with `{GARAGE_INSTALL}`"
            ),
            GarageUnavailable::WrongVersion { path, printed } => write!(
                f,
                "{} is not Garage {GARAGE_VERSION} (`garage --version` printed {printed:?}); install the pinned version with `{GARAGE_INSTALL}` or point $OFFSITE_GARAGE at it",
                path.display()
            ),
        }
    }
}

/// Finds the pinned Garage binary.
pub fn garage_binary() -> Result<PathBuf, GarageUnavailable> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("OFFSITE_GARAGE") {
        candidates.push(PathBuf::from(p));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("garage")));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/garage"));
    }
    let path = candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(GarageUnavailable::Missing)?;
    let out = Command::new(&path).arg("--version").output().map_err(|e| {
        GarageUnavailable::WrongVersion {
            path: path.clone(),
            printed: format!("(could not run it: {e})"),
        }
    })?;
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // `garage v2.5.0 [features: ...]` or `garage cargo:2.5.0 ...`.
    let pinned = printed
        .split(|c: char| c.is_whitespace() || c == ':')
        .any(|t| t.trim_start_matches('v') == GARAGE_VERSION);
    if !pinned {
        return Err(GarageUnavailable::WrongVersion { path, printed });
    }
    Ok(path)
}

/// One node: its configuration, ports and process.
#[derive(Debug)]
struct Node {
    config: PathBuf,
    log: PathBuf,
    s3_port: u16,
    rpc_port: u16,
    child: Option<Child>,
}

/// A running 3-node Garage cluster with a bucket and a key.
#[derive(Debug)]
pub struct GarageCluster {
    bin: PathBuf,
    root: tempfile::TempDir,
    nodes: Vec<Node>,
    /// `ID@127.0.0.1:PORT` of each node.
    node_ids: Vec<String>,
    /// The bucket (`offsite-test`).
    pub bucket: String,
    /// The region to sign for (`garage`).
    pub region: String,
    /// The access key id (read and write on the bucket).
    pub access_key_id: String,
    /// Its secret.
    pub secret_access_key: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl GarageCluster {
    /// Starts a cluster, or `None` with the reason printed when Garage is
    /// not installed and `CI` is not set (under `CI` a missing Garage
    /// fails the test, as does a wrong version anywhere).
    pub fn start_or_skip() -> Option<GarageCluster> {
        match garage_binary() {
            Ok(bin) => Some(GarageCluster::start_with(&bin)),
            Err(GarageUnavailable::Missing) if std::env::var_os("CI").is_none() => {
                eprintln!("skipped: {}", GarageUnavailable::Missing);
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Starts a cluster with the pinned binary; panics with the reason if
    /// there is none.
    pub fn start() -> GarageCluster {
        let bin = garage_binary().unwrap_or_else(|e| panic!("{e}"));
        GarageCluster::start_with(&bin)
    }

    /// Starts a cluster with `bin`. Each node's ports are picked free and
    /// released before Garage binds them, so a test running beside it can
    /// take one first and the node never listens: a cluster that does not
    /// come up is stopped (its nodes killed, its directory deleted) and
    /// started again on new ports, three times at most.
    pub fn start_with(bin: &Path) -> GarageCluster {
        for attempt in 1.. {
            let started =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::start_once(bin)));
            match started {
                Ok(cluster) => return cluster,
                Err(e) if attempt >= 3 => std::panic::resume_unwind(e),
                Err(_) => eprintln!(
                    "Garage test cluster: attempt {attempt} did not come up; again on new ports"
                ),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn start_once(bin: &Path) -> GarageCluster {
        let root = tempfile::Builder::new()
            .prefix("offsite-garage-")
            .tempdir()
            .expect("create temp dir");
        let rpc_secret = random_hex(32);
        let mut nodes = Vec::new();
        for i in 0..3 {
            let dir = root.path().join(format!("node{}", i + 1));
            fs::create_dir_all(&dir).expect("create node dir");
            let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
            let config = dir.join("garage.toml");
            let text = format!(
                r#"# Node {n} of offsite's test cluster (crates/testkit/src/garage.rs).
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = 3
consistency_mode = "consistent"

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{GARAGE_REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin_port}"
admin_token = "{admin_token}"
"#,
                n = i + 1,
                dir = dir.display(),
                admin_token = random_hex(16),
            );
            write_private(&config, &text);
            nodes.push(Node {
                config,
                log: dir.join("garage.log"),
                s3_port,
                rpc_port,
                child: None,
            });
        }
        let mut cluster = GarageCluster {
            bin: bin.to_path_buf(),
            root,
            nodes,
            node_ids: Vec::new(),
            bucket: GARAGE_BUCKET.to_string(),
            region: GARAGE_REGION.to_string(),
            access_key_id: format!("GK{}", random_hex(12)),
            secret_access_key: random_hex(32),
        };
        for i in 0..3 {
            cluster.spawn(i);
        }
        cluster.setup();
        cluster
    }

    fn setup(&mut self) {
        // The node key is written by the server at start.
        for i in 0..3 {
            let out = self.retry_cli(i, &["node", "id", "-q"], "read the node id");
            let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
            self.node_ids.push(id);
        }
        // Every pair, not only a star around node 1: the others would learn
        // of each other through peer exchange only later, and a node that
        // knows a single peer loses its quorum when that peer is killed.
        for i in 0..3 {
            for j in i + 1..3 {
                let peer = self.node_ids[j].clone();
                self.retry_cli(i, &["node", "connect", &peer], "connect the nodes");
            }
        }
        for (i, id) in self.node_ids.clone().iter().enumerate() {
            let hex = id.split('@').next().unwrap_or(id);
            let zone = format!("dc{}", i + 1);
            self.retry_cli(
                0,
                &["layout", "assign", "-z", &zone, "-c", "1G", hex],
                "assign the layout",
            );
        }
        self.retry_cli(
            0,
            &["layout", "apply", "--version", "1"],
            "apply the layout",
        );
        let (id, secret) = (self.access_key_id.clone(), self.secret_access_key.clone());
        self.retry_cli(
            0,
            &["key", "import", "--yes", "-n", "offsite-test", &id, &secret],
            "import the key",
        );
        self.retry_cli(0, &["bucket", "create", GARAGE_BUCKET], "create the bucket");
        self.retry_cli(
            0,
            &[
                "bucket",
                "allow",
                "--read",
                "--write",
                "--owner",
                GARAGE_BUCKET,
                "--key",
                &id,
            ],
            "allow the key on the bucket",
        );
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "garage node {} already runs", i + 1);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open the node's log");
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        node.child = Some(child);
    }

    /// Runs `garage -c NODE.toml ARGS`.
    pub fn cli(&self, node: usize, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .arg("-c")
            .arg(&self.nodes[node].config)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.bin.display()))
    }

    /// Runs a CLI command until it succeeds (a node still starting, a
    /// layout still propagating), failing after [`SETUP_TIMEOUT`] with its
    /// output and the node's log.
    fn retry_cli(&self, node: usize, args: &[&str], what: &str) -> Output {
        let start = Instant::now();
        loop {
            let out = self.cli(node, args);
            if out.status.success() {
                return out;
            }
            if start.elapsed() > SETUP_TIMEOUT {
                panic!(
                    "Garage test cluster: could not {what} (garage {}): {}{}\nnode log:\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The S3 endpoint of `node` (0, 1 or 2): `http://127.0.0.1:PORT`.
    pub fn endpoint_of(&self, node: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[node].s3_port)
    }

    /// The S3 endpoint of the first node.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    /// The RPC address of `node`.
    pub fn rpc_addr(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[node].rpc_port)
    }

    /// The number of nodes (3).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false (a cluster has three nodes).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `node` runs (as far as this kit knows: started and not
    /// killed).
    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].child.is_some()
    }

    /// SIGKILL to `node`, and waits for it to be gone.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills every node.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Starts a killed `node` again on its directories and ports, and waits
    /// until it answers its CLI (it rejoins the others by itself).
    pub fn restart(&mut self, node: usize) {
        self.spawn(node);
        self.reconnect(&[node]);
    }

    /// Connects each of `restarted` to every running node. A node finds
    /// its peers again from its stored peer list by itself, but with a
    /// backoff that can outlast a test's patience when every node was
    /// down at once; an explicit connect makes the mesh whole now.
    fn reconnect(&self, restarted: &[usize]) {
        for &i in restarted {
            self.retry_cli(i, &["status"], "reach the restarted node");
            for j in 0..self.nodes.len() {
                if j != i && self.is_running(j) {
                    let peer = self.node_ids[j].clone();
                    self.retry_cli(i, &["node", "connect", &peer], "reconnect the nodes");
                }
            }
        }
    }

    /// Starts every killed node again.
    pub fn restart_all(&mut self) {
        let stopped: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.is_running(i))
            .collect();
        for &i in &stopped {
            self.spawn(i);
        }
        self.reconnect(&stopped);
    }

    /// The node's log (for failure messages).
    pub fn log(&self, node: usize) -> String {
        fs::read_to_string(&self.nodes[node].log).unwrap_or_default()
    }

    /// The temporary directory holding every node's files.
    pub fn dir(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for GarageCluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Writes `text` to a new file readable by its owner only (the
/// configuration holds the RPC secret and the admin token).
fn write_private(path: &Path, text: &str) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}
