//! `garage-cluster`: starts the test kit's 3-node Garage cluster on
//! loopback (three zones, a bucket and a key with read and write on it),
//! prints how to reach it as one JSON line on stdout, and keeps it running
//! until stdin closes (or the process is killed). For the benchmarks in
//! `bench/` that measure offsite against other S3 clients on the same
//! cluster; the tests use `offsite_testkit::garage::GarageCluster` directly.
//!
//! ```sh
//! coproc GARAGE { cargo run -q -p offsite-testkit --bin garage-cluster; }
//! read -r line <&"${GARAGE[0]}"   # {"endpoints":[...],"bucket":...}
//! ```

use std::io::Read;

use offsite_testkit::garage::GarageCluster;

fn main() {
    let cluster = GarageCluster::start();
    let endpoints: Vec<String> = (0..cluster.len()).map(|i| cluster.endpoint_of(i)).collect();
    let info = serde_json::json!({
        "endpoints": endpoints,
        "region": cluster.region,
        "bucket": cluster.bucket,
        "access_key_id": cluster.access_key_id,
        "secret_access_key": cluster.secret_access_key,
        "dir": cluster.dir().display().to_string(),
    });
    println!("{info}");
    // Until whoever started us closes our stdin: the cluster goes with us.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(cluster);
}
