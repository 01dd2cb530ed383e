//! Test helpers shared by the attention test files: an owned paged cache with garbage past
//! its end, and a tolerance check.

#![allow(dead_code, clippy::unwrap_used)]

use half::f16;
use lcserve_kernels::{AttnShape, KvBlocks, PagedKv};
use rand::Rng;
use rand::rngs::StdRng;

/// Owned paged cache: `blocks` key and value blocks of `[kv_heads][bs][hd]`, with garbage
/// (large values) in the unused tail so reads past `len` would show up as errors.
pub struct Cache {
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    pub bs: usize,
    pub len: usize,
}

impl Cache {
    pub fn random(rng: &mut StdRng, len: usize, bs: usize, shape: &AttnShape) -> Self {
        let blocks = len.div_ceil(bs);
        let n = shape.n_kv_heads * bs * shape.head_dim;
        let mut mk = || -> Vec<Vec<f32>> {
            (0..blocks)
                .map(|b| {
                    let mut blk: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                    for kvh in 0..shape.n_kv_heads {
                        for s in 0..bs {
                            if b * bs + s >= len {
                                let at = (kvh * bs + s) * shape.head_dim;
                                blk[at..at + shape.head_dim].fill(1e4);
                            }
                        }
                    }
                    blk
                })
                .collect()
        };
        let (k, v) = (mk(), mk());
        Self { k, v, bs, len }
    }

    pub fn with<R>(&self, f: impl FnOnce(&PagedKv<'_>) -> R) -> R {
        let k: Vec<&[f32]> = self.k.iter().map(|b| b.as_slice()).collect();
        let v: Vec<&[f32]> = self.v.iter().map(|b| b.as_slice()).collect();
        f(&PagedKv { k_blocks: KvBlocks::F32(&k), v_blocks: KvBlocks::F32(&v), block_size: self.bs, len: self.len })
    }

    /// The same cache stored as f16: `(f16 blocks, their values widened back to f32)`.
    pub fn to_f16(&self) -> (HalfCache, Cache) {
        let narrow = |blocks: &[Vec<f32>]| -> Vec<Vec<f16>> {
            blocks.iter().map(|b| b.iter().map(|&x| f16::from_f32(x)).collect()).collect()
        };
        let half = HalfCache { k: narrow(&self.k), v: narrow(&self.v), bs: self.bs, len: self.len };
        let widen = |blocks: &[Vec<f16>]| -> Vec<Vec<f32>> {
            blocks.iter().map(|b| b.iter().map(|x| x.to_f32()).collect()).collect()
        };
        let widened = Cache { k: widen(&half.k), v: widen(&half.v), bs: self.bs, len: self.len };
        (half, widened)
    }

    /// The cache restricted to the keys in `keep` (in order), re-packed into blocks.
    pub fn subset(&self, keep: &[usize], shape: &AttnShape) -> Self {
        let hd = shape.head_dim;
        let blocks = keep.len().div_ceil(self.bs).max(1);
        let n = shape.n_kv_heads * self.bs * hd;
        let mut k = vec![vec![0f32; n]; blocks];
        let mut v = vec![vec![0f32; n]; blocks];
        for (new, &old) in keep.iter().enumerate() {
            for kvh in 0..shape.n_kv_heads {
                let src = (kvh * self.bs + old % self.bs) * hd;
                let dst = (kvh * self.bs + new % self.bs) * hd;
                k[new / self.bs][dst..dst + hd].copy_from_slice(&self.k[old / self.bs][src..src + hd]);
                v[new / self.bs][dst..dst + hd].copy_from_slice(&self.v[old / self.bs][src..src + hd]);
            }
        }
        Self { k, v, bs: self.bs, len: keep.len() }
    }
}

/// A [`Cache`] stored as f16.
pub struct HalfCache {
    pub k: Vec<Vec<f16>>,
    pub v: Vec<Vec<f16>>,
    pub bs: usize,
    pub len: usize,
}

impl HalfCache {
    pub fn with<R>(&self, f: impl FnOnce(&PagedKv<'_>) -> R) -> R {
        let k: Vec<&[f16]> = self.k.iter().map(|b| b.as_slice()).collect();
        let v: Vec<&[f16]> = self.v.iter().map(|b| b.as_slice()).collect();
        f(&PagedKv { k_blocks: KvBlocks::F16(&k), v_blocks: KvBlocks::F16(&v), block_size: self.bs, len: self.len })
    }
}

pub fn assert_close(name: &str, got: &[f32], want: &[f32], rel: f32) {
    let norm = want.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6) / (want.len() as f32).sqrt();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= rel * (w.abs() + norm), "{name}: [{i}] {g} vs {w}");
    }
}
