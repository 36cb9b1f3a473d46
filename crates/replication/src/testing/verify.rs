//! Verify and resync through the fake link: a level replica compares
//! equal, a block corrupted in the replica store is found and repaired.

use super::*;
use crate::wire::kinds;

/// Rots block `block` of volume `volume` in `b`'s base image of group
/// `g` behind the store's back (the base is sealed under the PITs, which
/// read every block they do not hold themselves from it).
async fn corrupt_replica(p: &Pair, volume: &str, block: u64) {
    use std::os::unix::fs::FileExt;
    let (_, store) = p.b.store("g").await.unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(store.base_path(volume))
        .unwrap()
        .write_all_at(&[0xEE; BS], block * BS as u64)
        .unwrap();
}

#[tokio::test]
async fn verify_of_a_level_replica_finds_no_difference() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 5, 5);
    let row = p.replicating("g", &["v"], 10).await;
    write(&v, 6, 6);
    let r = p.a.verify_now(&row).await.unwrap();
    assert_eq!((r.blocks_compared, r.differing_blocks), (16, 0));
    // Verify ships its cut as a PIT first.
    assert_eq!(p.replica_pits("g").await.last(), Some(&r.pit));
    assert_eq!(p.replica_image("g", r.pit).await, p.primary_image("g"));
}

#[tokio::test]
async fn verify_finds_a_corrupted_replica_block() {
    let p = Pair::new();
    let (v, w) = (p.volume("v", 16), p.volume("w", 16));
    write(&v, 5, 5);
    write(&w, 1, 1);
    let row = p.replicating("g", &["v", "w"], 10).await;
    corrupt_replica(&p, "w", 9).await;
    let r = p.a.verify_now(&row).await.unwrap();
    assert_eq!((r.blocks_compared, r.differing_blocks), (32, 1));
    assert_eq!(r.volumes[0].differing_blocks, 0);
    assert_eq!(
        (r.volumes[1].name.as_str(), r.volumes[1].differing_blocks),
        ("w", 1)
    );
}

#[tokio::test]
async fn resync_repairs_what_verify_found() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 5, 5);
    let row = p.replicating("g", &["v"], 10).await;
    corrupt_replica(&p, "v", 5).await;
    corrupt_replica(&p, "v", 12).await;
    let r = p.a.resync_now(&row, &Progress::default()).await.unwrap();
    assert_eq!(r.differing_blocks, 2);
    assert_eq!(p.replica_image("g", r.pit).await, p.primary_image("g"));
    let again = p.a.verify_now(&p.row(&p.a, "g")).await.unwrap();
    assert_eq!(again.differing_blocks, 0);
}

#[tokio::test]
async fn a_link_lost_during_the_compare_fails_verify_and_the_next_one_runs() {
    let p = Pair::new();
    let v = p.volume("v", 16);
    write(&v, 5, 5);
    let row = p.replicating("g", &["v"], 10).await;
    p.to_b.inject(Fault::DropBefore(kinds::HASHES));
    let e = p.a.verify_now(&row).await.unwrap_err();
    assert!(matches!(e, ReplError::Transport { .. }), "{e}");
    // The cut was let go: writes and cycles go on.
    write(&v, 7, 7);
    p.cycle("g").await.unwrap();
    let r = p.a.verify_now(&p.row(&p.a, "g")).await.unwrap();
    assert_eq!(r.differing_blocks, 0);
}
