//! Crash tests with the counted failpoint of `offsite-durable`: fail the
//! N-th crash-relevant step (create, fsync, rename, remove) of a store
//! operation, freeze the "disk" after it, drop everything without cleanup,
//! reopen, and check that the result is the state before or the state after
//! the operation, never a torn mix; then the operation completes on retry.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use offsite_durable::failpoint;
use offsite_volume_file::layered::{Layered, Lower};
use offsite_volume_file::{VolumeFile, write_durably};

/// Counts the steps of `op` run undisturbed.
fn count_steps(op: impl FnOnce()) -> u64 {
    failpoint::disarm();
    op();
    let n = failpoint::steps();
    assert!(n >= 3, "only {n} counted steps");
    n
}

#[test]
fn crash_during_a_durable_replacement_leaves_old_or_new() {
    const OLD: &[u8] = b"old settings, a little longer than the new ones";
    const NEW: &[u8] = b"new settings";
    let total = count_steps(|| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        write_durably(&p, NEW, 0o600).unwrap();
    });
    let (mut old_seen, mut new_seen) = (0, 0);
    for i in 1..=total {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        write_durably(&p, OLD, 0o600).unwrap();
        failpoint::arm(i);
        let r = write_durably(&p, NEW, 0o600);
        let fired = failpoint::fired();
        failpoint::disarm();
        assert!(fired, "step {i} of {total} did not fire");
        assert!(
            r.is_err(),
            "step {i}: an injected failure must fail the write"
        );
        match std::fs::read(&p).unwrap().as_slice() {
            OLD => old_seen += 1,
            NEW => new_seen += 1,
            torn => panic!("step {i}: torn content {torn:?}"),
        }
        // A retry (the next start) completes and leaves no temporary.
        write_durably(&p, NEW, 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), NEW);
        assert!(!d.path().join("config.toml.partial").exists(), "step {i}");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "step {i}");
    }
    assert!(
        old_seen > 0 && new_seen > 0,
        "old {old_seen}, new {new_seen}"
    );
}

#[test]
fn crash_while_creating_a_volume_file_leaves_none_or_a_whole_one() {
    const SIZE: u64 = 1 << 20;
    let total = count_steps(|| {
        let d = tempfile::tempdir().unwrap();
        VolumeFile::create(&d.path().join("v.img"), SIZE).unwrap();
    });
    for i in 1..=total {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.img");
        failpoint::arm(i);
        let r = VolumeFile::create(&p, SIZE);
        failpoint::disarm();
        assert!(r.is_err(), "step {i} of {total}");
        drop(r);
        // Whatever is left is a whole-size file (an unsized one would hold
        // the name with the wrong size); removing it makes room again.
        if let Ok(m) = std::fs::metadata(&p) {
            assert_eq!(m.len(), SIZE, "step {i}");
        }
        VolumeFile::remove(&p).unwrap();
        VolumeFile::create(&p, SIZE).unwrap();
    }
}

/// A lower image held in memory.
struct MemLower(Vec<u8>);

impl Lower for MemLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = offset as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

const BS: u32 = 4096;
const NBLOCKS: u64 = 32;
const SIZE: u64 = NBLOCKS * BS as u64;

fn lower_bytes() -> Vec<u8> {
    (0..SIZE).map(|i| (i % 251) as u8 + 1).collect()
}

fn open_layer(dir: &Path) -> Layered {
    Layered::open(dir, "v", SIZE, BS, Arc::new(MemLower(lower_bytes()))).unwrap()
}

fn read_all(l: &Layered) -> Vec<u8> {
    let mut buf = vec![0u8; SIZE as usize];
    l.read_at(&mut buf, 0).unwrap();
    buf
}

/// A layer flushed once with blocks 1 and 2 written, then written again
/// (block 2 overwritten, blocks 5 and 9 new) and not yet flushed. Returns
/// the layer and the images its map before and after the next flush shows:
/// a block reads from the top when the map has it, else from the lower
/// (the top file itself keeps the latest bytes, as the page cache does).
fn layer_before_second_flush(dir: &Path) -> (Layered, Vec<u8>, Vec<u8>) {
    let lower = lower_bytes();
    let l = Layered::create(dir, "v", SIZE, BS, Arc::new(MemLower(lower.clone()))).unwrap();
    let block = |b: u64, v: u8| (vec![v; BS as usize], b * u64::from(BS));
    let mut latest = lower.clone();
    let mut put = |l: &Layered, b: u64, v: u8| {
        let (data, off) = block(b, v);
        l.write_at(&data, off, false).unwrap();
        latest[off as usize..off as usize + data.len()].copy_from_slice(&data);
    };
    put(&l, 1, 0xA1);
    put(&l, 2, 0xA2);
    l.flush().unwrap();
    put(&l, 2, 0xB2);
    put(&l, 5, 0xB5);
    put(&l, 9, 0xB9);
    let view = |present: &[u64]| {
        let mut img = lower.clone();
        for &b in present {
            let r = (b * u64::from(BS)) as usize..((b + 1) * u64::from(BS)) as usize;
            img[r.clone()].copy_from_slice(&latest[r]);
        }
        img
    };
    let before = view(&[1, 2]);
    let after = view(&[1, 2, 5, 9]);
    assert_eq!(read_all(&l), after);
    (l, before, after)
}

#[test]
fn crash_during_a_layer_flush_reopens_with_the_old_or_the_new_map() {
    let total = count_steps(|| {
        let d = tempfile::tempdir().unwrap();
        let (l, ..) = layer_before_second_flush(d.path());
        failpoint::disarm();
        l.flush().unwrap();
    });
    let (mut old_seen, mut new_seen) = (0, 0);
    for i in 1..=total {
        let d = tempfile::tempdir().unwrap();
        let (l, before, after) = layer_before_second_flush(d.path());
        failpoint::arm(i);
        let r = l.flush();
        let fired = failpoint::fired();
        failpoint::disarm();
        assert!(fired, "step {i} of {total} did not fire");
        assert!(
            r.is_err(),
            "step {i}: an injected failure must fail the flush"
        );
        drop(l); // the crash: nothing more reaches the disk

        let l = open_layer(d.path());
        let img = read_all(&l);
        if img == before {
            assert_eq!(l.present_blocks(), 2, "step {i}");
            old_seen += 1;
        } else if img == after {
            assert_eq!(l.present_blocks(), 4, "step {i}");
            new_seen += 1;
        } else {
            panic!("step {i}: the reopened layer is neither the old nor the new image");
        }
        // The layer works on: write, flush, reopen.
        l.write_at(&[0xC7; BS as usize], 7 * u64::from(BS), false)
            .unwrap();
        l.flush().unwrap();
        drop(l);
        let l = open_layer(d.path());
        let mut buf = vec![0u8; BS as usize];
        l.read_at(&mut buf, 7 * u64::from(BS)).unwrap();
        assert_eq!(buf, vec![0xC7; BS as usize], "step {i}");
        assert!(!d.path().join("v.map.partial").exists(), "step {i}");
    }
    assert!(
        old_seen > 0 && new_seen > 0,
        "old {old_seen}, new {new_seen}"
    );
}
