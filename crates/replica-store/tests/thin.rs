//! The replica store keeps base images as thin as their data (issue 17):
//! base writes of zero blocks allocate nothing and zero old data, merging
//! PITs into the base punches their zero blocks, and `next_data` finds a
//! PIT's data without reading its holes.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use offsite_replica_store::{PitId, ReplicaStore, VolumeSpec};

const BS: u64 = 4096;
const SIZE: u64 = 64 << 20;

fn spec() -> Vec<VolumeSpec> {
    vec![VolumeSpec {
        name: "v".into(),
        size_bytes: SIZE,
        block_size: BS as u32,
    }]
}

fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

fn read(store: &ReplicaStore, pit: Option<PitId>, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xAAu8; len];
    store.read(pit, "v", offset, &mut buf).unwrap();
    buf
}

#[test]
fn base_writes_of_zero_blocks_allocate_nothing_and_zero_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &spec()).unwrap();
    let base = store.base_path("v");
    // A seeded base may hold data where the primary has zeroes.
    store.write_base("v", 8 << 20, &vec![7u8; 1 << 20]).unwrap();
    store.sync_base().unwrap();
    assert!(allocated(&base) >= 1 << 20);
    // 16 MiB at once, one block of data in it: the rest stays or becomes
    // a hole (the batches of an initial copy and of a seeded sync).
    let mut chunk = vec![0u8; 16 << 20];
    chunk[(3 << 20)..(3 << 20) + 4096].fill(9);
    store.write_base("v", 0, &chunk).unwrap();
    // Unaligned and partial blocks are written as given.
    store.write_base("v", (40 << 20) + 100, &[5u8; 10]).unwrap();
    store.write_base("v", (40 << 20) + 100, &[0u8; 3]).unwrap();
    store.sync_base().unwrap();
    assert!(
        read(&store, None, 0, 16 << 20) == chunk,
        "the base reads the chunk"
    );
    let tail = read(&store, None, (40 << 20) + 100, 10);
    assert_eq!(tail, [0, 0, 0, 5, 5, 5, 5, 5, 5, 5]);
    let a = allocated(&base);
    assert!(a <= 64 << 10, "the base of 2 data blocks takes {a} bytes");
}

#[test]
fn merging_zero_blocks_into_the_base_punches_them_and_next_data_skips_holes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ReplicaStore::create(dir.path().join("g"), &spec()).unwrap();
    let base = store.base_path("v");
    assert_eq!(store.next_data(None, "v", 0).unwrap(), None);
    store
        .write_base("v", 10 << 20, &vec![1u8; 1 << 20])
        .unwrap();
    store.sync_base().unwrap();
    assert_eq!(store.next_data(None, "v", 0).unwrap(), Some(10 << 20));
    assert_eq!(store.next_data(None, "v", 11 << 20).unwrap(), None);

    // PIT 1: zeroes over half of the base's data, data at block 5000.
    let mut w = store.begin_pit().unwrap();
    for b in 0..128 {
        w.write_block("v", (10 << 20) / BS + b, &[0u8; BS as usize])
            .unwrap();
    }
    w.write_block("v", 5000, &[3u8; BS as usize]).unwrap();
    let p1 = w.commit(None, "2026-12-06T12:00:00Z".into()).unwrap().id;
    // PIT 2: data at block 100.
    let mut w = store.begin_pit().unwrap();
    w.write_block("v", 100, &[4u8; BS as usize]).unwrap();
    let p2 = w.commit(None, "2026-12-06T12:01:00Z".into()).unwrap().id;

    // Data as of each PIT: the nearer of base data and segment data.
    assert_eq!(store.next_data(Some(p1), "v", 0).unwrap(), Some(10 << 20));
    assert_eq!(store.next_data(Some(p2), "v", 0).unwrap(), Some(100 * BS));
    assert_eq!(
        store.next_data(Some(p2), "v", 100 * BS + 7).unwrap(),
        Some(100 * BS + 7)
    );
    assert_eq!(
        store.next_data(Some(p1), "v", 11 << 20).unwrap(),
        Some(5000 * BS)
    );
    assert_eq!(store.next_data(Some(p2), "v", 5001 * BS).unwrap(), None);
    // Whatever it says, nothing before it is anything but zeroes.
    for pit in [None, Some(p1), Some(p2)] {
        let mut at = 0;
        while let Some(d) = store.next_data(pit, "v", at).unwrap() {
            assert!(
                read(&store, pit, at, (d - at) as usize)
                    .iter()
                    .all(|&b| b == 0)
            );
            at = (d / BS + 1) * BS;
        }
        assert!(
            read(&store, pit, at, (SIZE - at) as usize)
                .iter()
                .all(|&b| b == 0)
        );
    }

    // Retention merges PIT 1 into the base: its zero blocks become holes.
    let before = allocated(&base);
    store.remove_pit(p1).unwrap();
    let after = allocated(&base);
    assert!(
        after + (512 << 10) <= before + BS,
        "merging 512 KiB of zeroes freed {before} -> {after} bytes"
    );
    assert!(
        read(&store, Some(p2), 10 << 20, 512 << 10)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(
        read(&store, Some(p2), (10 << 20) + (512 << 10), 512 << 10)
            .iter()
            .all(|&b| b == 1)
    );
    assert!(
        read(&store, Some(p2), 5000 * BS, BS as usize)
            .iter()
            .all(|&b| b == 3)
    );
}
