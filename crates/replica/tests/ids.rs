//! A store created for a group that already has PITs (a reverse makes the
//! old primary the replica) continues the group's PIT ids instead of
//! starting again at 1, across reopen and retention.

use offsite_replica::{ReplicaStore, VolumeSpec};

fn spec() -> Vec<VolumeSpec> {
    vec![VolumeSpec {
        name: "a".into(),
        size_bytes: 8 * 512,
        block_size: 512,
    }]
}

#[test]
fn a_store_created_after_pit_41_commits_42_and_on() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = ReplicaStore::create_after(&dir, &spec(), 41).unwrap();
    assert!(store.pits().is_empty());
    store.write_base("a", 0, &[0xAB; 512]).unwrap();
    store.sync_base().unwrap();
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 1, &[0x11; 512]).unwrap();
    let first = w
        .commit(Some("kept".into()), "2024-05-01T12:00:00Z".into())
        .unwrap();
    assert_eq!(first.id.get(), 42);
    drop(store);

    // Reopened, the chain starts after the base's PIT 41.
    let store = ReplicaStore::open(&dir).unwrap();
    assert!(store.damaged().is_empty(), "{:?}", store.damaged());
    let ids: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, vec![42]);
    let w = store.begin_pit().unwrap();
    let second = w.commit(None, "2024-05-01T12:01:00Z".into()).unwrap();
    assert_eq!(second.id.get(), 43);
    let mut buf = [0u8; 512];
    store.read(Some(second.id), "a", 512, &mut buf).unwrap();
    assert_eq!(buf, [0x11; 512]);
    store.read(Some(second.id), "a", 0, &mut buf).unwrap();
    assert_eq!(buf, [0xAB; 512]);

    // Retention merges 42 into the base; ids still go on.
    store.set_pit_name(first.id, None).unwrap();
    store.remove_pit(first.id).unwrap();
    drop(store);
    let store = ReplicaStore::open(&dir).unwrap();
    let ids: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, vec![43]);
    let w = store.begin_pit().unwrap();
    assert_eq!(
        w.commit(None, "2024-05-01T12:02:00Z".into())
            .unwrap()
            .id
            .get(),
        44
    );
}
