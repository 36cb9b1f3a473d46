//! `S3Store` (and `Sealed` over it) against a real 3-node Garage cluster
//! on loopback (crates/testkit/src/garage.rs): the `ObjectStore` contract,
//! multipart uploads, client-side encryption as the bucket sees it, and
//! node faults (one node down, all down and back, 20 kills mid-upload). Without Garage installed these tests print why and pass,
//! unless `CI` is set, where they fail.

use std::sync::Arc;
use std::time::{Duration, Instant};

use offsite_objects::{GroupKey, ObjectError, ObjectStore, S3Config, S3Store, Sealed};
use offsite_testkit::garage::GarageCluster;

fn store_at(c: &GarageCluster, node: usize, prefix: &str, retry_for: Duration) -> S3Store {
    let mut config = S3Config::new(
        c.endpoint_of(node),
        c.region.clone(),
        c.bucket.clone(),
        prefix,
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
    );
    config.retry_for = retry_for;
    S3Store::new(config).unwrap()
}

/// A store that knows every node: the first one, then the others as
/// alternates (what a site without a load balancer configures).
fn store_on_all(c: &GarageCluster, prefix: &str, retry_for: Duration) -> S3Store {
    let mut config = S3Config::new(
        c.endpoint_of(0),
        c.region.clone(),
        c.bucket.clone(),
        prefix,
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
    );
    config.alternate_endpoints = (1..c.len()).map(|i| c.endpoint_of(i)).collect();
    config.retry_for = retry_for;
    S3Store::new(config).unwrap()
}

fn keys(s: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    s.list(prefix).unwrap().into_iter().map(|o| o.key).collect()
}

/// Deterministic bytes that differ at every offset within a period of 251.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i % 251) as u8).wrapping_add(seed))
        .collect()
}

#[test]
fn the_object_store_contract_holds_on_garage() {
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let s = store_at(&cluster, 0, "contract/g1", Duration::from_secs(30));

    s.put("pits/2-1/manifest.pit", b"manifest").unwrap();
    let big = pattern(3_000_000, 7);
    s.put_from("pits/2-1/v.seg", &mut &big[..], big.len() as u64)
        .unwrap();
    s.put("base/v/0", b"chunk").unwrap();
    s.put("empty", b"").unwrap();

    assert_eq!(s.get("pits/2-1/manifest.pit").unwrap(), b"manifest");
    assert_eq!(s.get("empty").unwrap(), b"");
    assert_eq!(
        s.get_range("pits/2-1/v.seg", 1_000_003, 10).unwrap(),
        &big[1_000_003..1_000_013]
    );
    assert_eq!(s.get_range("base/v/0", 5, 0).unwrap(), b"");
    assert_eq!(s.head("pits/2-1/v.seg").unwrap(), Some(big.len() as u64));
    assert_eq!(s.head("pits/2-1/none").unwrap(), None);
    assert!(s.get("nope").unwrap_err().is_not_found());
    assert!(s.get_range("nope", 0, 1).unwrap_err().is_not_found());
    for (offset, len) in [(3, 3), (5, 1), (9, 1)] {
        let e = s.get_range("base/v/0", offset, len).unwrap_err();
        assert!(
            matches!(e, ObjectError::ShortObject { size: 5, .. }),
            "{offset}+{len}: {e}"
        );
    }

    assert_eq!(
        keys(&s, ""),
        [
            "base/v/0",
            "empty",
            "pits/2-1/manifest.pit",
            "pits/2-1/v.seg"
        ]
    );
    assert_eq!(
        keys(&s, "pits/"),
        ["pits/2-1/manifest.pit", "pits/2-1/v.seg"]
    );
    assert_eq!(keys(&s, "pi"), ["pits/2-1/manifest.pit", "pits/2-1/v.seg"]);
    assert!(keys(&s, "missing/").is_empty());
    let sizes: Vec<u64> = s.list("pits/").unwrap().iter().map(|o| o.size).collect();
    assert_eq!(sizes, [8, big.len() as u64]);

    // The store's prefix isolates it: another prefix sees nothing of it.
    let other = store_at(&cluster, 1, "contract/g2", Duration::from_secs(30));
    assert!(keys(&other, "").is_empty());

    // Names one level down, from one delimited listing: the groups of a
    // location, the directories of a store.
    other.put("x/y", b"1").unwrap();
    let root = store_at(&cluster, 2, "contract", Duration::from_secs(30));
    assert_eq!(root.list_prefixes("").unwrap(), ["g1", "g2"]);
    assert_eq!(s.list_prefixes("").unwrap(), ["base", "pits"]);
    assert_eq!(s.list_prefixes("pits/").unwrap(), ["2-1"]);
    assert!(s.list_prefixes("missing/").unwrap().is_empty());
    other.delete("x/y").unwrap();

    s.put("base/v/0", b"replaced").unwrap();
    assert_eq!(s.get("base/v/0").unwrap(), b"replaced");
    s.delete("base/v/0").unwrap();
    s.delete("base/v/0").unwrap(); // idempotent
    s.delete("never-was").unwrap();
    assert!(keys(&s, "base").is_empty());

    // More keys than one listing page (1000): continuation tokens.
    let s = Arc::new(s);
    let n = 1100usize;
    std::thread::scope(|scope| {
        for t in 0..4 {
            let s = Arc::clone(&s);
            scope.spawn(move || {
                for i in (t..n).step_by(4) {
                    s.put(&format!("many/{i:05}"), i.to_string().as_bytes())
                        .unwrap();
                }
            });
        }
    });
    let listed = s.list("many/").unwrap();
    let want: Vec<String> = (0..n).map(|i| format!("many/{i:05}")).collect();
    assert_eq!(
        listed.iter().map(|o| o.key.clone()).collect::<Vec<_>>(),
        want
    );
    assert_eq!(listed[1042].size, 4);
}

#[test]
fn a_multipart_upload_reads_back_exactly_and_a_failed_one_leaves_nothing() {
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let s = store_at(&cluster, 0, "multipart", Duration::from_secs(30));
    // 50 MiB and a bit: four parts of 16 MiB, the last one short.
    let len = (50 << 20) + 12_345;
    let data = pattern(len, 3);
    s.put_from("pits/1-1/big.seg", &mut &data[..], len as u64)
        .unwrap();
    assert_eq!(s.head("pits/1-1/big.seg").unwrap(), Some(len as u64));
    let back = s.get("pits/1-1/big.seg").unwrap();
    assert!(back == data, "the object read back differs");
    let at = (16 << 20) - 5; // across the first part boundary
    assert_eq!(
        s.get_range("pits/1-1/big.seg", at as u64, 10).unwrap(),
        &data[at..at + 10]
    );

    // A source that ends early: the upload is aborted and no object is
    // visible.
    let short = pattern(20 << 20, 1);
    let e = s
        .put_from("pits/1-1/short.seg", &mut &short[..], 40 << 20)
        .unwrap_err();
    assert!(e.to_string().contains("put pits/1-1/short.seg"), "{e}");
    assert_eq!(s.head("pits/1-1/short.seg").unwrap(), None);
    assert_eq!(keys(&s, ""), ["pits/1-1/big.seg"]);
}

#[test]
fn the_bucket_sees_only_ciphertext_and_tampering_is_detected() {
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let raw: Arc<dyn ObjectStore> =
        Arc::new(store_at(&cluster, 0, "sealed/g1", Duration::from_secs(30)));
    let key = GroupKey::generate();
    let sealed = Sealed::new(Arc::clone(&raw), &key);

    // A volume-like object made of one known 4 KiB block repeated among
    // other data.
    let block: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut volume = pattern(3 << 20, 9);
    for at in [0usize, 4096 * 5, 1 << 20, (3 << 20) - 4096] {
        volume[at..at + 4096].copy_from_slice(&block);
    }
    sealed
        .put_from("base/vol/0", &mut &volume[..], volume.len() as u64)
        .unwrap();
    sealed.put("manifest.pit", &block).unwrap();

    assert_eq!(sealed.get("base/vol/0").unwrap(), volume);
    assert_eq!(
        sealed.get_range("base/vol/0", 1 << 20, 4096).unwrap(),
        block
    );
    assert_eq!(
        sealed.head("base/vol/0").unwrap(),
        Some(volume.len() as u64)
    );
    let listed = sealed.list("").unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].size, volume.len() as u64);

    // A sealed object larger than a part goes up as a multipart upload of
    // sealed chunks.
    let large = pattern((17 << 20) + 333, 4);
    sealed
        .put_from("base/vol/1", &mut &large[..], large.len() as u64)
        .unwrap();
    assert!(sealed.get("base/vol/1").unwrap() == large);
    let at = (16 << 20) - 100;
    assert_eq!(
        sealed.get_range("base/vol/1", at as u64, 300).unwrap(),
        &large[at..at + 300]
    );
    sealed.delete("base/vol/1").unwrap();

    // What the bucket holds: none of the pattern, not even a 64-byte piece.
    for info in raw.list("").unwrap() {
        let bytes = raw.get(&info.key).unwrap();
        for piece in block.chunks(64) {
            assert!(
                !bytes.windows(piece.len()).any(|w| w == piece),
                "{} holds plaintext",
                info.key
            );
        }
    }

    // One flipped byte in the bucket: reads fail as Tampered, never with
    // other bytes.
    let mut bytes = raw.get("base/vol/0").unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    raw.put("base/vol/0", &bytes).unwrap();
    let e = sealed.get("base/vol/0").unwrap_err();
    assert!(matches!(e, ObjectError::Tampered { .. }), "{e}");
    let chunk_of_flip = ((at - 64) / (64 * 1024 + 16)) as u64;
    let e = sealed
        .get_range("base/vol/0", chunk_of_flip * 64 * 1024 + 1, 10)
        .unwrap_err();
    assert!(matches!(e, ObjectError::Tampered { .. }), "{e}");
    assert!(e.to_string().contains("base/vol/0"), "{e}");
    // An object renamed in the bucket does not open under its new key.
    let manifest = raw.get("manifest.pit").unwrap();
    raw.put("other.pit", &manifest).unwrap();
    let e = sealed.get("other.pit").unwrap_err();
    assert!(matches!(e, ObjectError::Tampered { .. }), "{e}");

    // Another key: a clear error, not garbage.
    let wrong = Sealed::new(Arc::clone(&raw), &GroupKey::generate());
    let e = wrong.get("manifest.pit").unwrap_err();
    assert!(matches!(e, ObjectError::WrongKey { .. }), "{e}");
    assert!(e.to_string().contains("import the group's key"), "{e}");
}

#[test]
fn one_node_down_is_survived_and_all_down_is_a_clear_error_then_recovered() {
    let Some(mut cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let s = store_on_all(&cluster, "faults", Duration::from_secs(30));
    let direct = store_at(&cluster, 1, "faults", Duration::from_secs(30));
    s.put("before", b"written with three nodes").unwrap();

    // One node killed (the one the store tries first): reads and writes go
    // on through the others (two replicas of three are a quorum), through
    // the store's alternate endpoints and through a node's own endpoint.
    cluster.kill(0);
    let data = pattern(20 << 20, 5); // a multipart upload too
    s.put_from("during/seg", &mut &data[..], data.len() as u64)
        .unwrap();
    s.put("during/manifest", b"m").unwrap();
    direct.put("during/direct", b"d").unwrap();
    assert_eq!(s.get("before").unwrap(), b"written with three nodes");
    assert!(s.get("during/seg").unwrap() == data);
    assert_eq!(
        keys(&s, "during/"),
        ["during/direct", "during/manifest", "during/seg"]
    );
    s.delete("during/manifest").unwrap();
    direct.delete("during/direct").unwrap();
    cluster.restart(0);

    // Every node killed: the call fails within the retry bound with
    // Unavailable, naming the endpoint.
    cluster.kill_all();
    let bound = Duration::from_secs(3);
    let quick = store_on_all(&cluster, "faults", bound);
    let start = Instant::now();
    let e = quick.put("after", b"x").unwrap_err();
    let took = start.elapsed();
    assert!(e.is_transient(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&cluster.endpoint_of(0)) && text.contains("unavailable"),
        "{text}"
    );
    // Not a speed check: the bound is generous (a refused connection
    // fails at once); it proves the call gives up instead of hanging on.
    assert!(
        took < bound + Duration::from_secs(30),
        "gave up after {took:?}"
    );

    // Restarted: the same store works again and the data is all there.
    cluster.restart_all();
    s.put("after", b"written after the restart").unwrap();
    assert_eq!(s.get("before").unwrap(), b"written with three nodes");
    assert!(s.get("during/seg").unwrap() == data);
    assert_eq!(keys(&s, ""), ["after", "before", "during/seg"]);
}

#[test]
fn uploads_survive_twenty_kills_of_a_node_mid_upload() {
    let Some(mut cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let mut config = S3Config::new(
        cluster.endpoint_of(0),
        cluster.region.clone(),
        cluster.bucket.clone(),
        "kill-loop",
        cluster.access_key_id.clone(),
        cluster.secret_access_key.clone(),
    );
    config.alternate_endpoints = (1..cluster.len()).map(|i| cluster.endpoint_of(i)).collect();
    // Small parts, so each object is a multipart upload of three parts and
    // a kill lands inside one.
    config.part_size = 5 << 20;
    let s = Arc::new(S3Store::new(config).unwrap());
    let len = (12 << 20) + 77;

    for round in 0..20u8 {
        let data = Arc::new(pattern(len, round));
        let (started, upload_started) = std::sync::mpsc::channel();
        let uploader = {
            let (s, data) = (Arc::clone(&s), Arc::clone(&data));
            std::thread::spawn(move || {
                let key = format!("seg-{round:02}");
                // Tells when the second part is being read: the upload
                // exists and its first part is stored.
                let mut src = Signalling {
                    data: &data[..],
                    at: 0,
                    signal_at: (5 << 20) + 1,
                    started: Some(started),
                };
                s.put_from(&key, &mut src, data.len() as u64).map(|()| key)
            })
        };
        // Each node in turn, with the upload under way.
        let victim = usize::from(round) % cluster.len();
        upload_started.recv().unwrap();
        cluster.kill(victim);
        let key = uploader
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}, node {victim} killed: {e}"));
        cluster.restart(victim);
        assert!(
            s.get(&key).unwrap() == *data,
            "round {round}: {key} differs"
        );
    }
    let listed = s.list("").unwrap();
    assert_eq!(listed.len(), 20);
    assert!(listed.iter().all(|o| o.size == len as u64));
}

/// A source that sends one message once `signal_at` bytes were read.
struct Signalling<'a> {
    data: &'a [u8],
    at: usize,
    signal_at: usize,
    started: Option<std::sync::mpsc::Sender<()>>,
}

impl std::io::Read for Signalling<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        if self.at >= self.signal_at
            && let Some(tx) = self.started.take()
        {
            let _ = tx.send(());
        }
        Ok(n)
    }
}

/// A node that accepts connections and reads requests but never answers
/// (a hung process, a stalled disk): a ranged read must not wait for it.
#[test]
fn a_ranged_read_does_not_wait_for_a_stalled_node() {
    let Some(cluster) = GarageCluster::start_or_skip() else {
        return;
    };
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_at = format!("http://{}", stalled.local_addr().unwrap());
    let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for conn in stalled.incoming() {
                let Ok(mut conn) = conn else { return };
                let requests = requests.clone();
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut buf = [0u8; 4096];
                    if matches!(conn.read(&mut buf), Ok(n) if n > 0) {
                        requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // Hold the connection without answering.
                    while matches!(conn.read(&mut buf), Ok(n) if n > 0) {}
                });
            }
        });
    }
    let data = pattern(3 << 20, 9);
    store_at(&cluster, 0, "hedge", Duration::from_secs(30))
        .put("obj", &data)
        .unwrap();

    // The stalled node first, the cluster's nodes as alternates.
    let mut config = S3Config::new(
        stalled_at,
        cluster.region.clone(),
        cluster.bucket.clone(),
        "hedge",
        cluster.access_key_id.clone(),
        cluster.secret_access_key.clone(),
    );
    config.alternate_endpoints = (0..cluster.len()).map(|i| cluster.endpoint_of(i)).collect();
    let s = S3Store::new(config).unwrap();
    let started = Instant::now();
    for (offset, len) in [(0u64, 4096u64), (1 << 20, 65536), ((3 << 20) - 100, 100)] {
        let got = s.get_range("obj", offset, len).unwrap();
        assert_eq!(got, data[offset as usize..(offset + len) as usize]);
    }
    assert!(
        requests.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the stalled node was asked first"
    );
    // Not a performance figure: without the hedge each read would wait
    // for the 30 s I/O timeout before trying another node.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the reads waited for the stalled node: {:?}",
        started.elapsed()
    );
}
