//! Unit tests of every `Layered` operation, the map format as documented,
//! refusal of damaged maps, and concurrent writers, readers and flatteners.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use offsite_volume_file::layered::{LayerError, Layered, Lower};
use roaring::RoaringTreemap;

/// A lower image held in memory.
struct MemLower(Vec<u8>);

impl Lower for MemLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

/// A lower that is gone (a flattened layer must not need it).
struct GoneLower;

impl Lower for GoneLower {
    fn read_lower(&self, _: &mut [u8], _: u64) -> io::Result<()> {
        Err(io::Error::other("the lower was released"))
    }
}

/// Deterministic bytes, never zero (so a read of a sparse hole shows).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 255) as u8 + 1
        })
        .collect()
}

const BS: u32 = 4096;
const NBLOCKS: u64 = 64;
const SIZE: u64 = NBLOCKS * BS as u64;

fn lower() -> (Arc<MemLower>, Vec<u8>) {
    let bytes = pattern(42, SIZE as usize);
    (Arc::new(MemLower(bytes.clone())), bytes)
}

fn create(dir: &Path) -> (Layered, Vec<u8>) {
    let (l, bytes) = lower();
    (Layered::create(dir, "v", SIZE, BS, l).unwrap(), bytes)
}

fn reopen(dir: &Path) -> Layered {
    Layered::open(dir, "v", SIZE, BS, lower().0).unwrap()
}

fn read_all(l: &Layered) -> Vec<u8> {
    let mut buf = vec![0u8; l.size() as usize];
    l.read_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn fresh_layer_reads_the_lower() {
    let dir = tempfile::tempdir().unwrap();
    let (l, expect) = create(dir.path());
    assert_eq!(l.size(), SIZE);
    assert_eq!(l.block_size(), BS);
    assert_eq!(l.present_blocks(), 0);
    assert!(!l.is_flat());
    assert_eq!(read_all(&l), expect);
    let mut buf = vec![0u8; 5000];
    l.read_at(&mut buf, 777).unwrap();
    assert_eq!(buf, expect[777..5777]);
    assert!(dir.path().join("v.top").exists());
    assert!(dir.path().join("v.map").exists());
}

#[test]
fn create_refuses_existing_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    drop(l);
    let again = Layered::create(dir.path(), "v", SIZE, BS, lower().0).unwrap_err();
    assert_eq!(
        again.io_error().unwrap().kind(),
        io::ErrorKind::AlreadyExists,
        "{again}"
    );
    // A leftover map alone (crash during create) also blocks a create.
    std::fs::remove_file(dir.path().join("v.top")).unwrap();
    assert!(Layered::create(dir.path(), "v", SIZE, BS, lower().0).is_err());
    assert!(Layered::open(dir.path(), "v", SIZE, BS, lower().0).is_err());
    Layered::remove(dir.path(), "v").unwrap();
    create(dir.path());

    for (size, bs) in [
        (SIZE, 1000),
        (SIZE, 256),
        (SIZE, 2 << 20),
        (0, BS),
        (SIZE + 1, BS),
    ] {
        let e = Layered::create(dir.path(), "w", size, bs, lower().0).unwrap_err();
        assert_eq!(e.io_error().unwrap().kind(), io::ErrorKind::InvalidInput);
    }
    for name in ["", ".hidden", "a/b"] {
        let e = Layered::create(dir.path(), name, SIZE, BS, lower().0).unwrap_err();
        assert_eq!(e.io_error().unwrap().kind(), io::ErrorKind::InvalidInput);
    }
}

#[test]
fn whole_block_writes_go_to_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut expect) = create(dir.path());
    let data = pattern(1, 2 * BS as usize);
    l.write_at(&data, 3 * u64::from(BS), false).unwrap();
    expect[3 * BS as usize..5 * BS as usize].copy_from_slice(&data);
    assert_eq!(read_all(&l), expect);
    assert_eq!(l.present_blocks(), 2);
    assert_eq!(
        l.present(),
        [3u64, 4].into_iter().collect::<RoaringTreemap>()
    );
}

#[test]
fn partial_writes_merge_with_the_lower() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut expect) = create(dir.path());
    // Inside one block, spanning a block boundary, and head + middle + tail.
    for (i, (off, len)) in [
        (100usize, 10usize),
        (4090, 20),
        (3 * 4096 + 5, 2 * 4096 + 100),
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(10 + i as u64, len);
        l.write_at(&data, off as u64, false).unwrap();
        expect[off..off + len].copy_from_slice(&data);
        assert_eq!(read_all(&l), expect);
    }
    assert_eq!(
        l.present(),
        [0u64, 1, 3, 4, 5].into_iter().collect::<RoaringTreemap>()
    );
    // A partial write into a block already in the top keeps its other bytes.
    let data = pattern(99, 7);
    l.write_at(&data, 4096 + 50, false).unwrap();
    expect[4096 + 50..4096 + 57].copy_from_slice(&data);
    assert_eq!(read_all(&l), expect);
    l.flush().unwrap();
    drop(l);
    assert_eq!(read_all(&reopen(dir.path())), expect);
}

#[test]
fn write_zeroes_whole_and_partial() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut expect) = create(dir.path());
    // Whole blocks 2..6 plus partial edges in blocks 1 and 6.
    let (off, len) = (4096 + 1000, 5 * 4096);
    l.write_zeroes(off as u64, len as u64, false).unwrap();
    expect[off..off + len].fill(0);
    assert_eq!(read_all(&l), expect);
    assert_eq!(
        l.present(),
        (1u64..=6).collect::<RoaringTreemap>(),
        "zeroed blocks are in the top"
    );
    // Zeroes over written data, and a tiny unaligned range.
    l.write_at(&pattern(5, 8192), 20 * 4096, false).unwrap();
    expect[20 * 4096..22 * 4096].copy_from_slice(&pattern(5, 8192));
    l.write_zeroes(20 * 4096, 4096, false).unwrap();
    expect[20 * 4096..21 * 4096].fill(0);
    l.write_zeroes(30 * 4096 + 7, 3, true).unwrap();
    expect[30 * 4096 + 7..30 * 4096 + 10].fill(0);
    assert_eq!(read_all(&l), expect);
    drop(l);
    // The FUA made everything before it durable.
    assert_eq!(read_all(&reopen(dir.path())), expect);
}

#[test]
fn out_of_bounds_is_invalid_input() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    let mut buf = vec![0u8; 10];
    let kind = |r: io::Result<()>| r.unwrap_err().kind();
    assert_eq!(
        kind(l.read_at(&mut buf, SIZE - 5)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(l.read_at(&mut buf, u64::MAX)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(l.write_at(&buf, SIZE - 9, false)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(l.write_at(&buf, u64::MAX - 2, false)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(l.write_zeroes(SIZE, 1, false)),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(
        kind(l.write_zeroes(1, u64::MAX, false)),
        io::ErrorKind::InvalidInput
    );
    // Empty ranges up to the end are fine.
    l.read_at(&mut [], SIZE).unwrap();
    l.write_at(&[], SIZE, false).unwrap();
    l.write_zeroes(SIZE, 0, false).unwrap();
    l.read_at(&mut buf, SIZE - 10).unwrap();
    assert_eq!(l.present_blocks(), 0);
}

#[test]
fn only_flushed_writes_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (l, lower_bytes) = create(dir.path());
    let mut expect = lower_bytes.clone();
    let a = pattern(7, 4096);
    l.write_at(&a, 0, false).unwrap();
    expect[..4096].copy_from_slice(&a);
    l.flush().unwrap();
    // After the flush: a new block and a partial one, never flushed.
    l.write_at(&pattern(8, 4096), 8 * 4096, false).unwrap();
    l.write_at(&pattern(9, 10), 9 * 4096 + 3, false).unwrap();
    drop(l);
    let l = reopen(dir.path());
    assert_eq!(read_all(&l), expect, "unflushed blocks read from the lower");
    assert_eq!(l.present(), [0u64].into_iter().collect::<RoaringTreemap>());
    // A partial write to a block whose stale bytes sit in the top copies
    // the lower up again.
    let b = pattern(10, 10);
    l.write_at(&b, 9 * 4096 + 100, true).unwrap();
    expect[9 * 4096 + 100..9 * 4096 + 110].copy_from_slice(&b);
    assert_eq!(read_all(&l), expect);
    drop(l);
    assert_eq!(read_all(&reopen(dir.path())), expect);
}

#[test]
fn fua_write_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut expect) = create(dir.path());
    let a = pattern(3, 300);
    l.write_at(&a, 5000, true).unwrap();
    expect[5000..5300].copy_from_slice(&a);
    drop(l);
    assert_eq!(read_all(&reopen(dir.path())), expect);
}

#[test]
fn flatten_copies_the_lower_and_keeps_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (l, mut expect) = create(dir.path());
    let a = pattern(11, 100);
    l.write_at(&a, 10 * 4096 + 1, false).unwrap();
    expect[10 * 4096 + 1..10 * 4096 + 101].copy_from_slice(&a);
    assert_eq!(l.flatten_step(0).unwrap(), 0);
    assert_eq!(l.flatten_step(5).unwrap(), 5);
    assert_eq!(l.present_blocks(), 6);
    assert_eq!(l.present(), [0u64, 1, 2, 3, 4, 10].into_iter().collect());
    let mut total = 6;
    loop {
        let n = l.flatten_step(7).unwrap();
        if n == 0 {
            break;
        }
        assert!(n <= 7);
        total += n;
        // Writes between steps are kept.
        let b = pattern(total, 3);
        l.write_at(&b, 63 * 4096, false).unwrap();
        expect[63 * 4096..63 * 4096 + 3].copy_from_slice(&b);
    }
    assert!(l.is_flat());
    assert_eq!(l.present_blocks(), NBLOCKS);
    assert_eq!(l.flatten_step(100).unwrap(), 0);
    assert_eq!(read_all(&l), expect);
    l.flush().unwrap();
    drop(l);
    // Flat: the lower is no longer needed.
    let l = Layered::open(dir.path(), "v", SIZE, BS, Arc::new(GoneLower)).unwrap();
    assert!(l.is_flat());
    assert_eq!(read_all(&l), expect);
    l.write_at(&pattern(1, 10), 5, false).unwrap();
}

#[test]
fn unflattened_layer_needs_its_lower() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    l.write_at(&pattern(1, 4096), 0, true).unwrap();
    drop(l);
    let l = Layered::open(dir.path(), "v", SIZE, BS, Arc::new(GoneLower)).unwrap();
    let mut buf = vec![0u8; 4096];
    l.read_at(&mut buf, 0).unwrap();
    assert!(l.read_at(&mut buf, 4096).is_err());
    assert!(
        l.write_at(&[1], 4096, false).is_err(),
        "copy-up needs the lower"
    );
    assert_eq!(l.present_blocks(), 1, "a failed copy-up marks nothing");
}

#[test]
fn remove_deletes_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    l.write_at(&[1; 10], 0, true).unwrap();
    drop(l);
    Layered::remove(dir.path(), "v").unwrap();
    assert!(!dir.path().join("v.top").exists());
    assert!(!dir.path().join("v.map").exists());
    Layered::remove(dir.path(), "v").unwrap();
    assert!(matches!(
        Layered::open(dir.path(), "v", SIZE, BS, lower().0),
        Err(LayerError::Io { .. })
    ));
    let (l, expect) = create(dir.path());
    assert_eq!(read_all(&l), expect);
}

// ---- the map file ----

/// The map as the module docs specify it, built independently.
fn map_bytes(version: u32, bs: u32, size: u64, set: &RoaringTreemap) -> Vec<u8> {
    let mut bitmap = Vec::new();
    set.serialize_into(&mut bitmap).unwrap();
    let mut out = b"OFSLAYER".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&bs.to_le_bytes());
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&(bitmap.len() as u64).to_le_bytes());
    out.extend_from_slice(&bitmap);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[test]
fn map_format_is_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    let empty = std::fs::read(dir.path().join("v.map")).unwrap();
    assert_eq!(empty, map_bytes(1, BS, SIZE, &RoaringTreemap::new()));
    l.write_at(&[1; 4096], 3 * 4096, false).unwrap();
    l.write_at(&[1; 1], 40 * 4096, false).unwrap();
    l.flush().unwrap();
    let set: RoaringTreemap = [3u64, 40].into_iter().collect();
    assert_eq!(
        std::fs::read(dir.path().join("v.map")).unwrap(),
        map_bytes(1, BS, SIZE, &set)
    );
    assert!(!dir.path().join("v.map.partial").exists());
    drop(l);
    // A hand-built map opens.
    let set: RoaringTreemap = [0u64, 63].into_iter().collect();
    std::fs::write(dir.path().join("v.map"), map_bytes(1, BS, SIZE, &set)).unwrap();
    assert_eq!(reopen(dir.path()).present(), set);
}

fn open_err(dir: &Path) -> LayerError {
    Layered::open(dir, "v", SIZE, BS, lower().0).unwrap_err()
}

#[test]
fn damaged_maps_are_refused_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    for b in [1u64, 5, 17, 40] {
        l.write_at(&[9; 4096], b * 4096, false).unwrap();
    }
    l.flush().unwrap();
    drop(l);
    let map = dir.path().join("v.map");
    let good = std::fs::read(&map).unwrap();
    let corrupt = |bytes: &[u8], what: &str| {
        std::fs::write(&map, bytes).unwrap();
        let e = open_err(dir.path());
        assert!(matches!(e, LayerError::Corrupt { .. }), "{what}: {e}");
        assert!(e.to_string().contains("remove the layer"), "{e}");
    };
    for cut in 0..good.len() {
        corrupt(&good[..cut], &format!("truncated to {cut}"));
    }
    for at in 0..good.len() {
        let mut bad = good.clone();
        bad[at] ^= 0x10;
        corrupt(&bad, &format!("flipped byte {at}"));
    }
    let mut longer = good.clone();
    longer.extend_from_slice(&[0; 8]);
    corrupt(&longer, "trailing bytes");
    corrupt(&vec![0u8; 10 << 20], "far larger than any map of the layer");
    let set: RoaringTreemap = [1u64].into_iter().collect();
    corrupt(&map_bytes(2, BS, SIZE, &set), "newer version");
    corrupt(&map_bytes(0, BS, SIZE, &set), "version 0");
    let past_end: RoaringTreemap = [NBLOCKS].into_iter().collect();
    corrupt(&map_bytes(1, BS, SIZE, &past_end), "block past the end");
    // Valid checksum over a lying length field.
    let mut lying = map_bytes(1, BS, SIZE, &set);
    lying.truncate(lying.len() - 4);
    lying[24] += 1;
    let crc = crc32c::crc32c(&lying);
    lying.extend_from_slice(&crc.to_le_bytes());
    corrupt(&lying, "length field");
    // Valid checksum over a bitmap that does not decode.
    let mut garbage = b"OFSLAYER".to_vec();
    garbage.extend_from_slice(&1u32.to_le_bytes());
    garbage.extend_from_slice(&BS.to_le_bytes());
    garbage.extend_from_slice(&SIZE.to_le_bytes());
    garbage.extend_from_slice(&12u64.to_le_bytes());
    garbage.extend_from_slice(&[0xff; 12]);
    let crc = crc32c::crc32c(&garbage);
    garbage.extend_from_slice(&crc.to_le_bytes());
    corrupt(&garbage, "bitmap");

    // The good map still opens.
    std::fs::write(&map, &good).unwrap();
    assert_eq!(reopen(dir.path()).present_blocks(), 4);
    // A top file of the wrong size.
    let top = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("v.top"))
        .unwrap();
    top.set_len(SIZE - 4096).unwrap();
    assert!(matches!(open_err(dir.path()), LayerError::Corrupt { .. }));
}

#[test]
fn geometry_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    drop(l);
    let e = Layered::open(dir.path(), "v", SIZE, 512, lower().0).unwrap_err();
    assert!(
        matches!(
            e,
            LayerError::Mismatch {
                what: "block_size",
                on_disk: 4096,
                expected: 512,
                ..
            }
        ),
        "{e}"
    );
    let e = Layered::open(dir.path(), "v", 2 * SIZE, BS, lower().0).unwrap_err();
    assert!(
        matches!(e, LayerError::Mismatch { what: "size", .. }),
        "{e}"
    );
    assert!(e.to_string().contains("geometry"), "{e}");
}

// ---- concurrency ----

/// Many threads write disjoint slices of the same blocks (none in the top
/// yet) while others read and flatten: every slice survives, in memory
/// and after flush + reopen.
#[test]
fn concurrent_partial_writes_to_one_block_all_survive() {
    const THREADS: usize = 8;
    const SLICE: usize = BS as usize / THREADS;
    for round in 0..20u64 {
        let dir = tempfile::tempdir().unwrap();
        // Half the rounds with copy-on-read: the reader below then writes
        // lower blocks into the top, racing the partial writers.
        let (l, lower_bytes) = if round % 4 >= 2 {
            let (_, bytes) = lower();
            let cor = Arc::new(SlowLower {
                bytes: bytes.clone(),
                reads: Default::default(),
            });
            (
                Layered::create(dir.path(), "v", SIZE, BS, cor).unwrap(),
                bytes,
            )
        } else {
            create(dir.path())
        };
        let l = Arc::new(l);
        let stop = Arc::new(AtomicBool::new(false));
        let mut expect = lower_bytes.clone();
        for b in 0..NBLOCKS as usize {
            for t in 0..THREADS {
                if (b + t) % 5 == 0 {
                    continue; // Leave some slices to the lower.
                }
                let at = b * BS as usize + t * SLICE;
                expect[at..at + SLICE]
                    .copy_from_slice(&pattern((round << 32) | (b * 100 + t) as u64, SLICE));
            }
        }
        let expect = Arc::new(expect);
        std::thread::scope(|s| {
            // Even rounds: all writers hit the same block at once (a barrier
            // per block); odd rounds: each visits the blocks in its own order.
            let barrier = Arc::new(std::sync::Barrier::new(THREADS));
            let writers: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (l, expect, barrier) = (l.clone(), expect.clone(), barrier.clone());
                    s.spawn(move || {
                        let mut order: Vec<usize> = (0..NBLOCKS as usize).collect();
                        if round % 2 == 1 {
                            order.rotate_left(t * 7 % NBLOCKS as usize);
                            if t % 2 == 1 {
                                order.reverse();
                            }
                        }
                        for b in order {
                            if round % 2 == 0 {
                                barrier.wait();
                            }
                            if (b + t) % 5 == 0 {
                                continue;
                            }
                            let at = b * BS as usize + t * SLICE;
                            l.write_at(&expect[at..at + SLICE], at as u64, false)
                                .unwrap();
                        }
                    })
                })
                .collect();
            let (l2, stop2) = (l.clone(), stop.clone());
            s.spawn(move || {
                while !stop2.load(Ordering::Relaxed) {
                    if l2.flatten_step(1).unwrap() == 0 {
                        break;
                    }
                }
            });
            let (l3, stop3) = (l.clone(), stop.clone());
            s.spawn(move || {
                let mut buf = vec![0u8; 3 * BS as usize + 17];
                while !stop3.load(Ordering::Relaxed) {
                    for at in (0..SIZE - buf.len() as u64).step_by(5 * 4096 + 3) {
                        l3.read_at(&mut buf, at).unwrap();
                        assert!(!buf.contains(&0), "a read saw a block before its data");
                    }
                    l3.flush().unwrap();
                }
            });
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(read_all(&l), *expect, "round {round}");
        l.flush().unwrap();
        drop(l);
        assert_eq!(
            read_all(&reopen(dir.path())),
            *expect,
            "round {round} after reopen"
        );
    }
}

/// Readers racing whole-block and partial writers and a flattener never see
/// the sparse top's zeroes (a block present before its data), and flushes
/// from many threads at once all succeed.
#[test]
fn reads_never_see_a_block_before_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let (l, _) = create(dir.path());
    let l = Arc::new(l);
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let l = l.clone();
            s.spawn(move || {
                for i in 0..NBLOCKS {
                    let b = (i * 13 + t * 5) % (NBLOCKS - 1);
                    let at = b * u64::from(BS);
                    match (i + t) % 3 {
                        0 => l.write_at(&pattern(i, BS as usize), at, false).unwrap(),
                        1 => l.write_at(&pattern(i, 100), at + 1000, false).unwrap(),
                        _ => l
                            .write_at(&pattern(i, 5000), at + 3000, i % 4 == 0)
                            .unwrap(),
                    }
                    if i % 8 == 0 {
                        l.flush().unwrap();
                    }
                }
            });
        }
        {
            let l = l.clone();
            s.spawn(move || while l.flatten_step(3).unwrap() > 0 {});
        }
        for r in 0..2u64 {
            let (l, done) = (l.clone(), done.clone());
            s.spawn(move || {
                let mut buf = vec![0u8; 2 * BS as usize];
                let mut at = r * 999;
                while !done.load(Ordering::Relaxed) {
                    at = (at + 4096 * 3 + 511) % (SIZE - buf.len() as u64);
                    l.read_at(&mut buf, at).unwrap();
                    assert!(
                        !buf.contains(&0),
                        "zeroes at {at}: read a block before its data"
                    );
                }
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
        done.store(true, Ordering::Relaxed);
    });
    assert!(l.is_flat());
    let before = read_all(&l);
    l.flush().unwrap();
    drop(l);
    assert_eq!(read_all(&reopen(dir.path())), before);
}

/// A lower that makes up its bytes (any size, no memory).
struct SyntheticLower;

impl Lower for SyntheticLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = ((offset + i as u64) % 251) as u8 + 1;
        }
        Ok(())
    }
}

/// Creating, writing, flushing and reopening an 8 TiB layer takes no time
/// proportional to its size.
#[test]
fn huge_layer_is_usable_at_once() {
    const HUGE: u64 = 8 << 40;
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let l = Layered::create(dir.path(), "big", HUGE, BS, Arc::new(SyntheticLower)).unwrap();
    l.write_at(&[7; 100], HUGE - 50 - 4096, false).unwrap();
    l.write_zeroes(HUGE / 2, 1 << 30, false).unwrap();
    l.flatten_step(256).unwrap();
    l.flush().unwrap();
    drop(l);
    let l = Layered::open(dir.path(), "big", HUGE, BS, Arc::new(SyntheticLower)).unwrap();
    let mut buf = vec![0u8; 8192];
    l.read_at(&mut buf, HUGE - 8192).unwrap();
    let at = 8192 - 4096 - 50;
    assert_eq!(buf[at..at + 100], [7; 100]);
    assert_eq!(
        buf[at + 100],
        ((HUGE - 8192 + at as u64 + 100) % 251) as u8 + 1
    );
    assert_eq!(l.present_blocks(), 2 + (1 << 30) / 4096 + 256);
    let elapsed = started.elapsed();
    assert!(elapsed < std::time::Duration::from_secs(2), "{elapsed:?}");
}

/// A sparse lower: mostly zeroes, with data in a few blocks; reports its
/// holes (`next_data`) when `holes` is set, and counts the bytes read.
struct SparseLower {
    bytes: Vec<u8>,
    holes: bool,
    read: std::sync::atomic::AtomicU64,
    asked: std::sync::atomic::AtomicU64,
}

impl Lower for SparseLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        self.read.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn next_data(&self, offset: u64) -> io::Result<Option<u64>> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if !self.holes {
            return Ok(Some(offset));
        }
        Ok(self.bytes[offset as usize..]
            .iter()
            .position(|&b| b != 0)
            .map(|i| offset + i as u64))
    }
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// Flattening a thin lower leaves the top as thin: zero blocks are holes
/// (whether the lower reports its holes or only reads zeroes there), holes
/// are not read, a block the top held unflushed bytes in before a crash
/// reads the lower's zeroes, and the volume reads exactly the lower plus
/// the writes.
#[test]
fn flattening_a_thin_lower_keeps_the_top_thin() {
    const BIG: u64 = 64 << 20;
    for holes in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = vec![0u8; BIG as usize];
        // 5 data blocks spread over 64 MiB.
        for b in [3u64, 1000, 5000, 9000, 16383] {
            let at = (b * 4096) as usize;
            bytes[at..at + 4096].copy_from_slice(&pattern(b, 4096));
        }
        let lower = Arc::new(SparseLower {
            bytes: bytes.clone(),
            holes,
            read: Default::default(),
            asked: Default::default(),
        });
        let l = Layered::create(dir.path(), "v", BIG, BS, lower.clone()).unwrap();
        let mut expect = bytes;
        // One write of data, flushed.
        let w = pattern(7, 4096);
        l.write_at(&w, 200 * 4096, true).unwrap();
        expect[200 * 4096..201 * 4096].copy_from_slice(&w);
        drop(l);
        // Bytes in the top that the map does not claim (an unflushed write
        // before a crash) must not show through once flattened.
        {
            use std::os::unix::fs::FileExt;
            let top = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("v.top"))
                .unwrap();
            top.write_all_at(&[0xEE; 8192], 300 * 4096).unwrap();
        }
        let l = Layered::open(dir.path(), "v", BIG, BS, lower.clone()).unwrap();
        // As the site's flattener calls it: 256 blocks (1 MiB) at a time.
        let mut calls = 0;
        while l.flatten_step(256).unwrap() > 0 {
            calls += 1;
        }
        if holes {
            // The lower's holes are made present whole: about one call per
            // data extent, not one per 1 MiB of the 64 MiB.
            assert!(calls <= 12, "{calls} calls of flatten_step(256)");
        }
        assert!(l.is_flat());
        l.flush().unwrap();
        assert!(read_all(&l) == expect, "holes={holes}: the image differs");
        let top = allocated(&dir.path().join("v.top"));
        assert!(
            top <= 6 * 4096 + (64 << 10),
            "holes={holes}: the top of a lower holding 20 KiB takes {top} bytes"
        );
        let read = lower.read.load(Ordering::Relaxed);
        if holes {
            assert!(
                read <= 5 * (1 << 20),
                "holes={holes}: {read} bytes of the lower were read for 5 data blocks"
            );
            // Each long hole is asked about once, not once per 1 MiB chunk
            // of it (64 chunks).
            let asked = lower.asked.load(Ordering::Relaxed);
            assert!(asked <= 20, "the lower was asked for data {asked} times");
        }
        // Its holes are reported too.
        assert_eq!(l.next_data(0).unwrap(), Some(3 * 4096));
        assert_eq!(
            l.next_data(16383 * 4096 + 1).unwrap(),
            Some(16383 * 4096 + 1)
        );
        let tail = l.next_data(16384 * 4096).unwrap();
        assert!(tail.is_none_or(|t| t >= BIG), "{tail:?}");
    }
}

/// An unflattened layer finds data in the top where the top holds blocks
/// and in the lower elsewhere.
#[test]
fn next_data_of_a_layer_looks_at_both_layers() {
    let dir = tempfile::tempdir().unwrap();
    const BIG: u64 = 16 << 20;
    let mut bytes = vec![0u8; BIG as usize];
    bytes[(2000 * 4096)..(2000 * 4096) + 10].fill(1);
    let lower = Arc::new(SparseLower {
        bytes,
        holes: true,
        read: Default::default(),
        asked: Default::default(),
    });
    let l = Layered::create(dir.path(), "v", BIG, BS, lower).unwrap();
    assert_eq!(l.next_data(0).unwrap(), Some(2000 * 4096));
    // Zeroes over the lower's data: a present hole.
    l.write_zeroes(1990 * 4096, 20 * 4096, false).unwrap();
    let after = l.next_data(0).unwrap();
    assert!(after.is_none_or(|x| x >= BIG), "{after:?}");
    l.write_at(&[5; 4096], 100 * 4096, false).unwrap();
    assert_eq!(l.next_data(0).unwrap(), Some(100 * 4096));
    assert_eq!(
        l.next_data(100 * 4096 + 4095).unwrap(),
        Some(100 * 4096 + 4095)
    );
}

/// A lower that records the read-ahead it is asked for.
struct HintedLower {
    bytes: Vec<u8>,
    hints: std::sync::Mutex<Vec<(u64, u64)>>,
}

impl Lower for HintedLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    fn prefetch(&self, offset: u64, len: u64) {
        self.hints.lock().unwrap().push((offset, len));
    }
}

#[test]
fn flattening_announces_its_next_bytes_unless_a_reader_waits_on_the_lower() {
    let dir = tempfile::tempdir().unwrap();
    let lower = Arc::new(HintedLower {
        bytes: pattern(5, SIZE as usize),
        hints: Default::default(),
    });
    let l = Layered::create(dir.path(), "v", SIZE, BS, lower.clone()).unwrap();
    assert!(!l.lower_read_within(std::time::Duration::from_secs(3600)));

    // Each step announces where it starts, covering itself and beyond.
    l.flatten_step(4).unwrap();
    l.flatten_step(4).unwrap();
    let hints = std::mem::take(&mut *lower.hints.lock().unwrap());
    assert_eq!(hints.len(), 2);
    assert_eq!(hints[0].0, 0);
    assert_eq!(hints[1].0, 4 * BS as u64);
    assert!(hints.iter().all(|&(_, len)| len > 4 * BS as u64));
    // Flattening's own reads are not a reader's.
    assert!(!l.lower_read_within(std::time::Duration::from_secs(3600)));

    // A read of blocks the top lacks goes to the lower: a reader waits on
    // it, so the next step copies without announcing more.
    let mut buf = vec![0u8; BS as usize];
    l.read_at(&mut buf, 40 * BS as u64).unwrap();
    assert_eq!(buf, lower.bytes[40 * BS as usize..41 * BS as usize]);
    assert!(l.lower_read_within(std::time::Duration::from_secs(3600)));
    assert_eq!(l.flatten_step(4).unwrap(), 4);
    assert!(lower.hints.lock().unwrap().is_empty());

    // A read of blocks the top holds does not count.
    let dir2 = tempfile::tempdir().unwrap();
    let l2 = Layered::create(dir2.path(), "v", SIZE, BS, lower.clone()).unwrap();
    l2.flatten_step(2).unwrap();
    l2.read_at(&mut buf, 0).unwrap();
    assert!(!l2.lower_read_within(std::time::Duration::from_secs(3600)));
}

/// A lower that asks to be copied on read, counting its reads.
struct SlowLower {
    bytes: Vec<u8>,
    reads: std::sync::atomic::AtomicUsize,
}

impl Lower for SlowLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let at = offset as usize;
        buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
        Ok(())
    }

    fn copy_on_read(&self) -> bool {
        true
    }
}

#[test]
fn a_slow_lower_is_copied_on_read_and_read_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = pattern(8, SIZE as usize);
    // Block 20 is zero in the lower: kept as a hole, still present.
    bytes[20 * BS as usize..21 * BS as usize].fill(0);
    let lower = Arc::new(SlowLower {
        bytes: bytes.clone(),
        reads: Default::default(),
    });
    let l = Layered::create(dir.path(), "v", SIZE, BS, lower.clone()).unwrap();
    let bs = BS as u64;

    // Blocks 10..13 read whole (and a partial block 13): 10, 11, 12 kept.
    let mut buf = vec![0u8; 3 * BS as usize + 100];
    l.read_at(&mut buf, 10 * bs).unwrap();
    assert_eq!(buf, bytes[10 * BS as usize..13 * BS as usize + 100]);
    assert_eq!(l.present(), [10u64, 11, 12].into_iter().collect());
    let reads = lower.reads.load(Ordering::SeqCst);
    l.read_at(&mut buf, 10 * bs).unwrap();
    assert_eq!(buf, bytes[10 * BS as usize..13 * BS as usize + 100]);
    // Only the partial block went to the lower again.
    assert_eq!(lower.reads.load(Ordering::SeqCst), reads + 1);

    // A write after the read wins over the kept copy; a zero block is kept
    // as zero.
    let w = pattern(99, BS as usize);
    l.write_at(&w, 11 * bs, false).unwrap();
    let mut one = vec![0u8; BS as usize];
    l.read_at(&mut one, 20 * bs).unwrap();
    assert!(one.iter().all(|&b| b == 0));
    assert!(l.present().contains(20));

    // What was kept survives a flush and a reopen without the lower's help
    // for those blocks.
    l.flush().unwrap();
    drop(l);
    let l = Layered::open(dir.path(), "v", SIZE, BS, lower.clone()).unwrap();
    let before = lower.reads.load(Ordering::SeqCst);
    for (block, want) in [
        (10u64, &bytes[10 * BS as usize..11 * BS as usize]),
        (11, &w[..]),
        (12, &bytes[12 * BS as usize..13 * BS as usize]),
        (20, &bytes[20 * BS as usize..21 * BS as usize]),
    ] {
        l.read_at(&mut one, block * bs).unwrap();
        assert_eq!(one, want, "block {block}");
    }
    assert_eq!(lower.reads.load(Ordering::SeqCst), before);
    // The rest still reads through, and flattening completes the volume.
    while l.flatten_step(16).unwrap() > 0 {}
    assert!(l.is_flat());
    let mut expect = bytes.clone();
    expect[11 * BS as usize..12 * BS as usize].copy_from_slice(&w);
    assert_eq!(read_all(&l), expect);
}
