//! Ranged-GET latency of an S3 service as offsite's client sees it: the
//! floor under a cold read of a volume recovered from a bucket
//! (bench/s3.sh runs it against its Garage cluster).
//!
//!     AWS_ENDPOINT_URL=http://127.0.0.1:3900 AWS_REGION=garage \
//!     AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
//!     PROBE_ALTERNATES="http://127.0.0.1:3910 http://127.0.0.1:3920" \
//!     cargo run --release -p offsite-objects --example get-latency -- BUCKET [READS]
//!
//! Writes one 64 MiB object of random bytes (raw) and one sealed, then
//! times READS ranged reads at random offsets of each kind: 4 KiB and
//! 256 KiB of the raw object (one GET each, hedged as the store hedges),
//! and 256 KiB of the sealed object through a fresh [`Sealed`] each time
//! (a cold read: the header and the chunks, asked for at once). Prints one
//! JSON line per kind with p50/p90/p99/max in milliseconds, then deletes
//! both objects.

use std::sync::Arc;
use std::time::Instant;

use offsite_objects::{GroupKey, ObjectStore, S3Config, S3Store, Sealed};
use rand::{Rng, RngCore};

const OBJECT: u64 = 64 << 20;

fn main() {
    let mut args = std::env::args().skip(1);
    let bucket = args.next().expect("usage: get-latency BUCKET [READS]");
    let reads: usize = args.next().map_or(200, |n| n.parse().expect("READS"));
    let mut config =
        S3Config::from_env(&bucket, "probe").expect("S3 settings from the environment");
    if let Ok(alternates) = std::env::var("PROBE_ALTERNATES") {
        config.alternate_endpoints = alternates.split_whitespace().map(str::to_string).collect();
    }
    let raw: Arc<dyn ObjectStore> = Arc::new(S3Store::new(config).expect("an S3 store"));
    let mut data = vec![0u8; OBJECT as usize];
    rand::rng().fill_bytes(&mut data);
    raw.put("raw", &data).expect("put raw");
    let key = GroupKey::generate();
    Sealed::new(raw.clone(), &key)
        .put("sealed", &data)
        .expect("put sealed");

    let mut rng = rand::rng();
    let mut probe = |name: &str, len: u64, read: &dyn Fn(u64, u64)| {
        let mut ms: Vec<f64> = (0..reads)
            .map(|_| {
                let at = rng.random_range(0..(OBJECT - len) / 4096) * 4096;
                let t = Instant::now();
                read(at, len);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let q = |p: usize| ms[(reads * p / 100).min(reads - 1)];
        println!(
            "{{\"kind\": \"{name}\", \"reads\": {reads}, \"p50_ms\": {:.2}, \"p90_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
            q(50),
            q(90),
            q(99),
            ms[reads - 1]
        );
    };
    probe("raw 4 KiB", 4096, &|at, len| {
        raw.get_range("raw", at, len).expect("ranged get");
    });
    probe("raw 256 KiB", 256 << 10, &|at, len| {
        raw.get_range("raw", at, len).expect("ranged get");
    });
    probe("sealed 256 KiB, cold", 256 << 10, &|at, len| {
        Sealed::new(raw.clone(), &key)
            .get_range("sealed", at, len)
            .expect("sealed ranged get");
    });
    raw.delete("raw").expect("delete");
    raw.delete("sealed").expect("delete");
}
