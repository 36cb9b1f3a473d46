//! A store created for a group that already has PITs (a reverse makes the
//! old primary the replica) continues the group's PIT ids instead of
//! starting again at 1, across reopen and retention.

use offsite_replica_store::{PitId, ReplicaStore, VolumeSpec};

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

/// A store kept through a reverse and a failback takes the replica's role
/// again: its next PIT follows the ids the other site's store gave in the
/// meantime, and the older PITs (the named one first) stay readable,
/// across reopen and retention.
#[test]
fn a_store_that_resumes_after_a_gap_keeps_its_pits_and_numbers_after_it() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = ReplicaStore::create(&dir, &spec()).unwrap();
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 0, &[0x01; 512]).unwrap();
    let named = w
        .commit(Some("before-upgrade".into()), "2024-05-01T12:00:00Z".into())
        .unwrap();
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 1, &[0x02; 512]).unwrap();
    let plain = w.commit(None, "2024-05-01T12:01:00Z".into()).unwrap();
    assert_eq!((named.id.get(), plain.id.get()), (1, 2));

    // PITs 3..=9 were taken into the other site's store.
    store.number_after(9);
    store.number_after(4); // never backwards
    let mut w = store.begin_pit().unwrap();
    w.write_block("a", 0, &[0x03; 512]).unwrap();
    let resumed = w.commit(None, "2024-05-02T08:00:00Z".into()).unwrap();
    assert_eq!(resumed.id.get(), 10);
    drop(store);

    let store = ReplicaStore::open(&dir).unwrap();
    assert!(store.damaged().is_empty(), "{:?}", store.damaged());
    let ids: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, vec![1, 2, 10]);
    let mut buf = [0u8; 512];
    store.read(Some(named.id), "a", 0, &mut buf).unwrap();
    assert_eq!(buf, [0x01; 512], "the named PIT reads as it was");
    store.read(Some(resumed.id), "a", 0, &mut buf).unwrap();
    assert_eq!(buf, [0x03; 512]);
    store.read(Some(resumed.id), "a", 512, &mut buf).unwrap();
    assert_eq!(buf, [0x02; 512]);

    // Retention folds the unnamed PIT 2 into its successor 10.
    store.remove_pit(plain.id).unwrap();
    drop(store);
    let store = ReplicaStore::open(&dir).unwrap();
    assert!(store.damaged().is_empty(), "{:?}", store.damaged());
    let ids: Vec<u64> = store.pits().iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, vec![1, 10]);
    store
        .read(Some(PitId::new(10).unwrap()), "a", 512, &mut buf)
        .unwrap();
    assert_eq!(buf, [0x02; 512]);
    let w = store.begin_pit().unwrap();
    assert_eq!(
        w.commit(None, "2024-05-02T08:01:00Z".into())
            .unwrap()
            .id
            .get(),
        11
    );
}
