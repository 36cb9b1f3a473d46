//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;

use offsite_cbt::RoaringBitmap;

/// Blocks covering the byte range `offset .. offset + len`.
pub fn blocks_of(offset: u64, len: u64, block_size: u32) -> std::ops::RangeInclusive<u32> {
    assert!(len > 0);
    let bs = u64::from(block_size);
    (offset / bs) as u32..=((offset + len - 1) / bs) as u32
}

/// Every block of every extent touched by `set`.
pub fn extent_closure(set: &BTreeSet<u32>, extent_blocks: u32, nblocks: u64) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let exts: BTreeSet<u32> = set.iter().map(|b| b / extent_blocks).collect();
    for e in exts {
        let start = u64::from(e) * u64::from(extent_blocks);
        let end = (start + u64::from(extent_blocks)).min(nblocks);
        out.extend(start as u32..end as u32);
    }
    out
}

pub fn to_set(bm: &RoaringBitmap) -> BTreeSet<u32> {
    bm.iter().collect()
}

/// Small deterministic PRNG (xorshift64*), so failures replay from a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
