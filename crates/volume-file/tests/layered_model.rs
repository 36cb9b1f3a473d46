//! `Layered` against an in-memory model: random sequences of aligned and
//! unaligned writes and zeroes, flushes, flatten steps, clean reopens (flush,
//! drop, open: exact equality) and crashes (drop without flush, the top
//! file's unflushed state scrambled the ways a power cut may leave it, open:
//! every block holds its value at the last flush or a later one).

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use offsite_volume_file::layered::{Layered, Lower};
use proptest::prelude::*;
use roaring::RoaringTreemap;

const BS: u32 = 512;
const BSU: usize = BS as usize;
const NBLOCKS: u64 = 40;
const SIZE: u64 = NBLOCKS * BS as u64;

struct MemLower(Vec<u8>);

impl Lower for MemLower {
    fn read_lower(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let at = usize::try_from(offset).unwrap();
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
}

/// Deterministic pseudo-random bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        off: u64,
        len: u64,
        seed: u64,
        fua: bool,
    },
    Zeroes {
        off: u64,
        len: u64,
        fua: bool,
    },
    Read {
        off: u64,
        len: u64,
    },
    Flush,
    Flatten {
        max: u64,
    },
    Reopen,
    Crash {
        seed: u64,
    },
}

/// An offset and length inside the volume, block-aligned or not.
fn range(max_len: u64) -> impl Strategy<Value = (u64, u64)> {
    (any::<bool>(), 0..SIZE, 1..=max_len).prop_map(|(aligned, off, len)| {
        let bs = u64::from(BS);
        let (off, len) = if aligned {
            (off / bs * bs, len.div_ceil(bs) * bs)
        } else {
            (off, len)
        };
        (off, len.min(SIZE - off))
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(3 * u64::from(BS)), any::<u64>(), prop::bool::weighted(0.1))
            .prop_map(|((off, len), seed, fua)| Op::Write { off, len, seed, fua }),
        2 => (range(6 * u64::from(BS)), prop::bool::weighted(0.1))
            .prop_map(|((off, len), fua)| Op::Zeroes { off, len, fua }),
        2 => range(8 * u64::from(BS)).prop_map(|(off, len)| Op::Read { off, len }),
        2 => Just(Op::Flush),
        2 => (0..8u64).prop_map(|max| Op::Flatten { max }),
        1 => Just(Op::Reopen),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
    ]
}

/// What the volume should hold.
struct Model {
    /// Current contents.
    cur: Vec<u8>,
    /// Contents as of the last flush.
    flushed: Vec<u8>,
    /// Per block, every value it took since the last flush.
    later: Vec<Vec<Vec<u8>>>,
    /// Blocks the top holds.
    present: BTreeSet<u64>,
    /// Blocks the top held at the last flush (the map on disk).
    flushed_present: BTreeSet<u64>,
}

impl Model {
    fn block(v: &[u8], b: u64) -> &[u8] {
        let at = usize::try_from(b).unwrap() * BSU;
        &v[at..at + BSU]
    }

    /// Records bytes `off..off+len` of `cur` as changed.
    fn changed(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        let bs = u64::from(BS);
        for b in off / bs..=(off + len - 1) / bs {
            let value = Model::block(&self.cur, b).to_vec();
            self.later[usize::try_from(b).unwrap()].push(value);
            self.present.insert(b);
        }
    }

    fn flushed(&mut self) {
        self.flushed.clone_from(&self.cur);
        self.later.iter_mut().for_each(Vec::clear);
        self.flushed_present.clone_from(&self.present);
    }
}

fn set(s: &BTreeSet<u64>) -> RoaringTreemap {
    s.iter().copied().collect()
}

fn open(dir: &Path, lower: &Arc<MemLower>) -> Layered {
    Layered::open(dir, "m", SIZE, BS, lower.clone()).unwrap()
}

fn read_all(l: &Layered) -> Vec<u8> {
    let mut buf = vec![0u8; usize::try_from(SIZE).unwrap()];
    l.read_at(&mut buf, 0).unwrap();
    buf
}

/// Leaves the top file as a power cut after the last flush may have: blocks
/// outside the durable map hold garbage, blocks inside it hold their value
/// at the last flush or any later one. Returns the contents the layer must
/// show after reopening.
fn scramble_top(dir: &Path, m: &Model, seed: u64) -> Vec<u8> {
    let top = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("m.top"))
        .unwrap();
    let noise = bytes(seed, usize::try_from(SIZE).unwrap());
    let mut expect = m.flushed.clone();
    for b in 0..NBLOCKS {
        let at = usize::try_from(b).unwrap() * BSU;
        let later = &m.later[usize::try_from(b).unwrap()];
        if !m.flushed_present.contains(&b) {
            // Unflushed writes of blocks the map does not hold: meaningless.
            if noise[at].is_multiple_of(2) {
                top.write_all_at(&noise[at..at + BSU], at as u64).unwrap();
            }
            continue;
        }
        // Pick the flushed value or one of the later ones.
        let pick = usize::from(noise[at]) % (later.len() + 1);
        let value = if pick == 0 {
            Model::block(&m.flushed, b)
        } else {
            &later[pick - 1][..]
        };
        top.write_all_at(value, at as u64).unwrap();
        expect[at..at + BSU].copy_from_slice(value);
    }
    expect
}

fn run(ops: Vec<Op>, lower_seed: u64) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let lower_bytes = bytes(lower_seed, usize::try_from(SIZE).unwrap());
    let lower = Arc::new(MemLower(lower_bytes.clone()));
    let mut l = Layered::create(dir.path(), "m", SIZE, BS, lower.clone()).unwrap();
    let mut m = Model {
        cur: lower_bytes.clone(),
        flushed: lower_bytes,
        later: vec![Vec::new(); usize::try_from(NBLOCKS).unwrap()],
        present: BTreeSet::new(),
        flushed_present: BTreeSet::new(),
    };
    for (i, op) in ops.into_iter().enumerate() {
        match op {
            Op::Write {
                off,
                len,
                seed,
                fua,
            } => {
                let data = bytes(seed, usize::try_from(len).unwrap());
                l.write_at(&data, off, fua).unwrap();
                let at = usize::try_from(off).unwrap();
                m.cur[at..at + data.len()].copy_from_slice(&data);
                m.changed(off, len);
                if fua {
                    m.flushed();
                }
            }
            Op::Zeroes { off, len, fua } => {
                l.write_zeroes(off, len, fua).unwrap();
                let at = usize::try_from(off).unwrap();
                m.cur[at..at + usize::try_from(len).unwrap()].fill(0);
                m.changed(off, len);
                if fua {
                    m.flushed();
                }
            }
            Op::Read { off, len } => {
                let mut buf = vec![0u8; usize::try_from(len).unwrap()];
                l.read_at(&mut buf, off).unwrap();
                let at = usize::try_from(off).unwrap();
                prop_assert_eq!(&buf[..], &m.cur[at..at + buf.len()], "op {}", i);
            }
            Op::Flush => {
                l.flush().unwrap();
                m.flushed();
            }
            Op::Flatten { max } => {
                let missing: Vec<u64> = (0..NBLOCKS).filter(|b| !m.present.contains(b)).collect();
                let n = l.flatten_step(max).unwrap();
                prop_assert_eq!(n, max.min(missing.len() as u64), "op {}", i);
                // Lowest first; the contents do not change.
                m.present.extend(&missing[..usize::try_from(n).unwrap()]);
            }
            Op::Reopen => {
                l.flush().unwrap();
                m.flushed();
                drop(l);
                l = open(dir.path(), &lower);
            }
            Op::Crash { seed } => {
                drop(l);
                let expect = scramble_top(dir.path(), &m, seed);
                l = open(dir.path(), &lower);
                let got = read_all(&l);
                for b in 0..NBLOCKS {
                    let got = Model::block(&got, b);
                    let ok = got == Model::block(&m.flushed, b)
                        || m.later[usize::try_from(b).unwrap()]
                            .iter()
                            .any(|v| v == got);
                    prop_assert!(
                        ok,
                        "op {}: block {} holds neither its flushed nor a later value",
                        i,
                        b
                    );
                }
                prop_assert_eq!(&got, &expect, "op {}", i);
                m.cur = got;
                m.present.clone_from(&m.flushed_present);
                m.flushed();
            }
        }
        prop_assert_eq!(l.present(), set(&m.present), "op {}: present", i);
        prop_assert_eq!(l.present_blocks(), m.present.len() as u64);
        prop_assert_eq!(l.is_flat(), m.present.len() as u64 == NBLOCKS);
        prop_assert_eq!(read_all(&l), m.cur.clone(), "op {}: contents", i);
    }
    // Finally a clean reopen must show exactly the model.
    l.flush().unwrap();
    drop(l);
    let l = open(dir.path(), &lower);
    prop_assert_eq!(read_all(&l), m.cur);
    prop_assert_eq!(l.present(), set(&m.present));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn layered_matches_model(ops in proptest::collection::vec(op(), 1..60), lower_seed in any::<u64>()) {
        run(ops, lower_seed)?;
    }
}
