//! Ranged-GET latency of an S3 service as offsite's client sees it: the
//! floor under a cold read of a volume recovered from a bucket
//! (bench/s3.sh runs it against its Garage cluster).
//!
//!     AWS_ENDPOINT_URL=http://127.0.0.1:3900 AWS_REGION=garage \
//!     AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... \
//!     PROBE_ALTERNATES="http://127.0.0.1:3910 http://127.0.0.1:3920" \
//!     cargo run --release -p offsite-objects --example get-latency -- BUCKET [READS]
//!
//! Writes OBJECTS objects of 4 MiB of random bytes, raw and sealed (the
//! size of a replica's base chunks: one `PUT` each, as a multipart object
//! reads slower from Garage), waits
//! PROBE_SETTLE seconds (default 20: the service finishes its own work on
//! the new objects, such as their third copy), then times READS ranged
//! reads at random offsets of each kind: 4 KiB and
//! 256 KiB of the raw object (one GET each, hedged as the store hedges),
//! and 256 KiB of the sealed object through a fresh [`Sealed`] each time
//! (a cold read: the header and the chunks, asked for at once). Prints one
//! JSON line per kind with p50/p90/p99/max in milliseconds, then deletes
//! both objects.

use std::sync::Arc;
use std::time::Instant;

use offsite_objects::{GroupKey, ObjectStore, S3Config, S3Store, Sealed};
use rand::{Rng, RngCore};

/// One object's size: a base chunk's (`offsite_replica_store`'s
/// `BASE_CHUNK`).
const OBJECT: u64 = 4 << 20;
/// Objects of each kind; each read picks one at random.
const OBJECTS: usize = 16;

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
    let key = GroupKey::generate();
    let mut data = vec![0u8; OBJECT as usize];
    for i in 0..OBJECTS {
        rand::rng().fill_bytes(&mut data);
        raw.put(&format!("raw/{i}"), &data).expect("put raw");
        Sealed::new(raw.clone(), &key)
            .put(&format!("sealed/{i}"), &data)
            .expect("put sealed");
    }
    let settle: u64 =
        std::env::var("PROBE_SETTLE").map_or(20, |s| s.parse().expect("PROBE_SETTLE"));
    std::thread::sleep(std::time::Duration::from_secs(settle));

    let mut rng = rand::rng();
    let mut probe = |name: &str, len: u64, read: &dyn Fn(&str, u64, u64)| {
        let mut ms: Vec<f64> = (0..reads)
            .map(|_| {
                let at = rng.random_range(0..(OBJECT - len) / 4096) * 4096;
                let which = rng.random_range(0..OBJECTS).to_string();
                let t = Instant::now();
                read(&which, at, len);
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
    probe("raw 4 KiB", 4096, &|i, at, len| {
        raw.get_range(&format!("raw/{i}"), at, len)
            .expect("ranged get");
    });
    probe("raw 256 KiB", 256 << 10, &|i, at, len| {
        raw.get_range(&format!("raw/{i}"), at, len)
            .expect("ranged get");
    });
    probe("sealed 256 KiB, cold", 256 << 10, &|i, at, len| {
        Sealed::new(raw.clone(), &key)
            .get_range(&format!("sealed/{i}"), at, len)
            .expect("sealed ranged get");
    });
    for i in 0..OBJECTS {
        raw.delete(&format!("raw/{i}")).expect("delete");
        raw.delete(&format!("sealed/{i}")).expect("delete");
    }
}
