//! The stamp writer and reader of the write-order tests: stamps written
//! across two volumes, one at a time, and read back to check that an
//! image is exactly a prefix of the acknowledged write order.

use super::python_json;

/// Writer (python3 with libnbd; arguments: URL0 URL1 N): stamp i (stored
/// as i+1, so that stamp 0 is not a zero block) goes to volume i%2 at
/// block i//2, flushed before the next write; prints each stamp after its
/// flush returned.
pub const STAMP_WRITER: &str = r#"
import struct, sys, time, nbd
hs = []
for url in sys.argv[1:3]:
    h = nbd.NBD()
    h.connect_uri(url)
    hs.append(h)
n = int(sys.argv[3])
for i in range(n):
    h = hs[i % 2]
    h.pwrite(struct.pack('<Q', i + 1) * 512, (i // 2) * 4096)
    h.flush()
    print(i, flush=True)
    time.sleep(0.01)
for h in hs:
    h.shutdown()
"#;

/// Reader (arguments: URL0 URL1 N): blocks 0..N/2 of both volumes; prints
/// a JSON list of `[vol, block, value]` for every non-zero block (value
/// -1: the block is not one 8-byte word repeated).
const STAMP_READER: &str = r#"
import json, struct, sys, nbd
n = int(sys.argv[3])
out = []
for vol, url in enumerate(sys.argv[1:3]):
    h = nbd.NBD()
    h.connect_uri(url)
    for b in range(n // 2):
        d = h.pread(4096, b * 4096)
        if d == bytes(4096):
            continue
        w = d[:8]
        v = struct.unpack('<Q', w)[0] if d == w * 512 else -1
        out.append([vol, b, v])
    h.shutdown()
print(json.dumps(out))
"#;

/// The number of stamps in the image served at `urls` (vol0, vol1) of a
/// run of `n` stamps, after checking it is exactly the first k stamps of
/// the write order (`what` names the image in a failure).
pub fn stamp_prefix(urls: [&str; 2], n: u64, what: &str) -> u64 {
    let found = python_json(STAMP_READER, &[urls[0], urls[1], &n.to_string()]);
    let mut stamps = Vec::new();
    for e in found.as_array().expect("array") {
        let (vol, blk, val) = (
            e[0].as_u64().unwrap(),
            e[1].as_u64().unwrap(),
            e[2].as_i64().unwrap(),
        );
        assert!(val > 0, "{what}: vol{vol} block {blk} is torn: {found}");
        let stamp = val as u64 - 1;
        assert!(
            stamp < n && stamp % 2 == vol && stamp / 2 == blk,
            "{what}: vol{vol} block {blk} holds stamp {stamp}, written elsewhere"
        );
        stamps.push(stamp);
    }
    stamps.sort_unstable();
    let k = stamps.len() as u64;
    let missing: Vec<u64> = (0..k)
        .filter(|s| stamps.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "{what} is not a prefix of the write order: {k} stamps, up to {:?}, missing {missing:?}",
        stamps.last()
    );
    k
}
