//! Consistent cuts: what is shipped is exactly the image at the cut, even
//! when the volumes are written while the cut is shipped.

use std::collections::HashMap;
use std::sync::Arc;

use offsite_engine::CreateVolume;
use offsite_engine::init::{InitOptions, init_site};
use offsite_engine::{Site, Volume};
use offsite_nbd::BlockDevice;
use proptest::prelude::*;

const BS: usize = 4096;

fn site(dir: &std::path::Path) -> Arc<Site> {
    init_site(
        dir,
        &InitOptions {
            name: "a".into(),
            listen: "127.0.0.1:0".into(),
            api: "127.0.0.1:0".into(),
            nbd: "127.0.0.1:0".into(),
            api_tls: Default::default(),
        },
    )
    .unwrap();
    Site::open(dir).unwrap()
}

fn volume(site: &Arc<Site>, name: &str, blocks: u64) -> Arc<Volume> {
    site.create_volume(&CreateVolume {
        name: name.into(),
        size_bytes: Some(blocks * BS as u64),
        block_size: None,
        import_path: None,
    })
    .unwrap();
    site.volume(name).unwrap()
}

fn block(v: u8) -> Vec<u8> {
    vec![v; BS]
}

#[test]
fn cut_ships_cut_time_data_and_keeps_later_writes_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(&tmp.path().join("s"));
    let a = volume(&site, "a", 64);
    let b = volume(&site, "b", 64);
    a.write_at(&block(1), 0, false).unwrap();
    b.write_at(&block(2), 5 * BS as u64, false).unwrap();

    let sets = Site::cut(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(sets[0].iter().collect::<Vec<_>>(), [0]);
    assert_eq!(sets[1].iter().collect::<Vec<_>>(), [5]);

    // Overwrite both cut blocks before they are shipped, and a new block.
    a.write_at(&block(9), 0, false).unwrap();
    b.write_zeroes(5 * BS as u64, BS as u64, false).unwrap();
    a.write_at(&block(7), 3 * BS as u64, false).unwrap();

    let mut buf = vec![0u8; BS];
    a.read_cut_block(0, &mut buf).unwrap();
    assert_eq!(
        buf,
        block(1),
        "shipped data must be the cut's, not the overwrite"
    );
    b.read_cut_block(5, &mut buf).unwrap();
    assert_eq!(buf, block(2));
    // After shipping, a write no longer needs preserving and the live data is new.
    a.write_at(&block(8), 0, false).unwrap();
    a.read_at(&mut buf, 0).unwrap();
    assert_eq!(buf, block(8));

    a.end_cut(true);
    b.end_cut(true);
    // Blocks written after the cut stay dirty; the shipped-only ones are clean.
    assert_eq!(a.tracker().snapshot().iter().collect::<Vec<_>>(), [0, 3]);
    assert_eq!(b.tracker().snapshot().iter().collect::<Vec<_>>(), [5]);
}

#[test]
fn failed_cut_keeps_its_blocks_dirty() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(&tmp.path().join("s"));
    let a = volume(&site, "a", 16);
    a.write_at(&block(1), 0, false).unwrap();
    Site::cut(std::slice::from_ref(&a)).unwrap();
    a.end_cut(false);
    let next = Site::cut(std::slice::from_ref(&a)).unwrap();
    assert!(
        next[0].contains(0),
        "an unshipped cut is shipped by the next one"
    );
    a.end_cut(true);
    assert_eq!(a.tracker().dirty_blocks(), 0);
}

#[derive(Debug, Clone)]
enum Op {
    Write { vol: usize, block: u32, value: u8 },
    Ship { vol: usize, pick: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..2usize, 0..32u32, 1..255u8).prop_map(|(vol, block, value)| Op::Write {
            vol,
            block,
            value
        }),
        (0..2usize, any::<u32>()).prop_map(|(vol, pick)| Op::Ship { vol, pick }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    /// Writes before a cut, a cut, then writes interleaved with shipping:
    /// every shipped block equals the image at the cut.
    #[test]
    fn shipped_blocks_equal_the_image_at_the_cut(
        before in prop::collection::vec((0..2usize, 0..32u32, 1..255u8), 1..40),
        during in prop::collection::vec(op(), 0..80),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let site = site(&tmp.path().join("s"));
        let vols = [volume(&site, "a", 32), volume(&site, "b", 32)];
        let mut image: [HashMap<u32, u8>; 2] = [HashMap::new(), HashMap::new()];
        for (vol, b, v) in before {
            vols[vol].write_at(&block(v), u64::from(b) * BS as u64, false).unwrap();
            image[vol].insert(b, v);
        }
        let sets = Site::cut(&vols).unwrap();
        let mut pending: [Vec<u32>; 2] = [sets[0].iter().collect(), sets[1].iter().collect()];
        let mut buf = vec![0u8; BS];
        let check = |vol: usize, b: u32, buf: &mut Vec<u8>| {
            vols[vol].read_cut_block(b, buf).unwrap();
            let want = image[vol].get(&b).copied().unwrap_or(0);
            assert!(buf.iter().all(|&x| x == want), "vol {vol} block {b}: want {want}, got {}", buf[0]);
        };
        for op in during {
            match op {
                Op::Write { vol, block: b, value } => {
                    vols[vol].write_at(&block(value), u64::from(b) * BS as u64, false).unwrap();
                }
                Op::Ship { vol, pick } => {
                    if !pending[vol].is_empty() {
                        let i = pick as usize % pending[vol].len();
                        let b = pending[vol].swap_remove(i);
                        check(vol, b, &mut buf);
                    }
                }
            }
        }
        for vol in 0..2 {
            for b in std::mem::take(&mut pending[vol]) {
                check(vol, b, &mut buf);
            }
            vols[vol].end_cut(true);
        }
    }
}

#[test]
fn full_cut_reads_the_whole_image_at_the_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let site = site(&tmp.path().join("s"));
    let a = volume(&site, "a", 16);
    a.write_at(&block(1), 0, false).unwrap();
    a.write_at(&block(2), BS as u64, false).unwrap();
    a.end_cut(true);
    let sets = Site::cut(std::slice::from_ref(&a)).unwrap();
    a.end_cut(true);
    assert_eq!(sets[0].len(), 2);
    a.write_at(&block(3), 2 * BS as u64, false).unwrap();
    let sets = Site::cut_full(std::slice::from_ref(&a)).unwrap();
    assert_eq!(sets[0].iter().collect::<Vec<_>>(), [2]);
    let mut buf = vec![0u8; BS];
    // Ship block 2, then overwrite it and a block outside the cut's set.
    a.read_cut_block(2, &mut buf).unwrap();
    a.write_at(&block(9), 2 * BS as u64, false).unwrap();
    a.write_at(&block(9), 0, false).unwrap();
    for (b, want) in [(0u32, 1u8), (1, 2), (2, 3), (3, 0)] {
        a.read_cut_block(b, &mut buf).unwrap();
        assert!(buf.iter().all(|&x| x == want), "block {b}");
    }
    a.end_cut(true);
}
