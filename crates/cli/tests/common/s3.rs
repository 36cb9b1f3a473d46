//! Sites whose replica stores live in the test kit's Garage cluster.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use offsite_objects::{ObjectStore, S3Config, S3Store};
use offsite_testkit::TestSite;
use offsite_testkit::garage::GarageCluster;

use super::*;

/// The bucket prefix of every test's replicas.
pub const PREFIX: &str = "replicas";

/// `[object_store]` for `cluster`: node 0, the others as alternates, the
/// secret in `s3.secret` (0600) in the site's directory; short retries so
/// that an outage shows within seconds.
pub fn configure_object_store(site: &TestSite, cluster: &GarageCluster) {
    let secret = site.dir().join("s3.secret");
    std::fs::write(&secret, format!("{}\n", cluster.secret_access_key)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let alternates: Vec<String> = (1..cluster.len())
        .map(|i| format!("{:?}", cluster.endpoint_of(i)))
        .collect();
    let section = format!(
        "\n[object_store]\nendpoint = {:?}\nalternate_endpoints = [{}]\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key_file = \"s3.secret\"\nretry_secs = 5\n",
        cluster.endpoint(),
        alternates.join(", "),
        cluster.region,
        cluster.access_key_id,
    );
    let path = site.dir().join("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&section);
    std::fs::write(&path, text).unwrap();
}

/// A started [`group_site`]-like site with `cluster` as its object store.
pub fn s3_site(name: &str, cluster: &GarageCluster) -> TestSite {
    let mut s = TestSite::init(bin(), name);
    set_replication_config(&s, GROUP_REPLICATION);
    configure_object_store(&s, cluster);
    s.start();
    keep_listen_port(&s);
    s
}

/// site-a (primary, a directory store for reverse) and site-b, whose
/// replicas of site-a go to `s3://BUCKET/replicas`.
pub fn s3_pair(cluster: &GarageCluster) -> (TestSite, TestSite) {
    let a = group_site("site-a");
    let b = s3_site("site-b", cluster);
    pair(&a, &b);
    let location = format!("s3://{}/{PREFIX}", cluster.bucket);
    b.json(&[
        "authz",
        "add",
        "--allowed-primary",
        "site-a",
        "--storage-location",
        &location,
    ]);
    authorize_primary(&a, "site-b", None);
    (a, b)
}

/// The raw objects of group `group` in the bucket (as the bucket's owner
/// sees them), through every node; `""`: the whole test prefix.
pub fn bucket_of(cluster: &GarageCluster, group: &str) -> Arc<dyn ObjectStore> {
    let mut config = S3Config::new(
        cluster.endpoint(),
        cluster.region.clone(),
        cluster.bucket.clone(),
        if group.is_empty() {
            PREFIX.to_string()
        } else {
            format!("{PREFIX}/{group}")
        },
        cluster.access_key_id.clone(),
        cluster.secret_access_key.clone(),
    );
    config.alternate_endpoints = (1..cluster.len()).map(|i| cluster.endpoint_of(i)).collect();
    Arc::new(S3Store::new(config).unwrap())
}

/// `pit check NAME --json` at the replica, which must find every PIT
/// intact; returns the checked ids.
pub fn pit_check_clean(replica: &TestSite, group: &str) -> Vec<u64> {
    let out = replica.run(&["pit", "check", group, "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pit check {group} failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("pit check --json");
    assert_eq!(u(&r, "damaged"), 0, "{r}");
    r["pits"]
        .as_array()
        .expect("pits")
        .iter()
        .map(|p| {
            assert_eq!(p["ok"], true, "{p}");
            u(p, "id")
        })
        .collect()
}

/// A Garage cluster and [`s3_pair`]'s sites, when `tools` and Garage are
/// installed (`None`, having said why, when a test must skip; a failure
/// under CI). Bind as `let Some((cluster, a, b)) = ...` so that the sites
/// stop before the cluster.
pub fn s3_pair_or_skip(tools: &[&str]) -> Option<(GarageCluster, TestSite, TestSite)> {
    if !have_tools(tools) {
        return None;
    }
    let cluster = GarageCluster::start_or_skip()?;
    let (a, b) = s3_pair(&cluster);
    Some((cluster, a, b))
}

/// Creates `volumes` (name, size) at `a` and group `group` of them to
/// site-b with `options`, and starts it (initial replication done);
/// returns `group start`'s answer.
pub fn start_s3_group(
    a: &TestSite,
    group: &str,
    volumes: &[(&str, &str)],
    options: &[&str],
) -> serde_json::Value {
    let mut args = Vec::new();
    for (name, size) in volumes {
        a.create_volume(name, size);
        args.extend(["--volume", *name]);
    }
    create_group(a, group, "site-b", &args, options);
    a.json(&["group", "start", group])
}
