//! Causal attention of a chunk of queries over one layer of a paged KV cache.
//!
//! * [`tiled`]: the production kernel, flash-style — tiles of (query rows × one KV block),
//!   online softmax, O(rows · head_dim) state, never an N×N score matrix.
//! * [`naive`]: the oracle — materializes scores in f64; tests only compare against it.
//! * [`merge`]: log-sum-exp merging of partial results (algorithms.md §0.2), used by the
//!   tiled kernel to split long key ranges across threads, and by callers that combine
//!   attention over disjoint key sets.
//! * [`tree`]: hybrid tree attention for speculative verification — dense over the committed
//!   prefix, ancestor-masked over the draft tree, merged by log-sum-exp.
//!
//! Positions are bottom-right aligned: query `i` of `nq` sits at position `len - nq + i`
//! and sees keys `0..=len - nq + i`.

mod merge;
mod naive;
pub(crate) mod online;
mod tiled;
mod tree;

pub use merge::merge_lse;
pub use naive::attention_naive;
pub use tiled::attention;
pub use tree::{tree_attention, tree_depths};

use std::ops::Range;

use half::f16;

use crate::error::{KernelError, Result, check_len};
use crate::simd::widen_f16;

/// An element type the KV cache may store: f32, or f16 widened exactly as it is read.
pub(crate) trait KvElem: Copy + Send + Sync + 'static {
    /// Stored as f16: hot loops widen 8 values per load with F16C instead of loading f32.
    const HALF: bool;

    /// `src` as f32: `src` itself, or widened into `scratch`.
    fn as_f32<'s>(src: &'s [Self], scratch: &'s mut Vec<f32>) -> &'s [f32];
}

impl KvElem for f32 {
    const HALF: bool = false;

    #[inline(always)]
    fn as_f32<'s>(src: &'s [f32], _scratch: &'s mut Vec<f32>) -> &'s [f32] {
        src
    }
}

impl KvElem for f16 {
    const HALF: bool = true;

    #[inline]
    fn as_f32<'s>(src: &'s [f16], scratch: &'s mut Vec<f32>) -> &'s [f32] {
        scratch.resize(src.len(), 0.0);
        widen_f16(src, scratch);
        scratch
    }
}

/// One side (keys or values) of a layer's cache blocks, in the element type the cache stores.
///
/// f16 storage halves the bytes a decode step streams from memory; kernels widen each run of
/// it to f32 as they read it. Widening is exact, so a kernel's result over f16 blocks is
/// bitwise its result over the same values stored as f32.
#[derive(Debug, Clone, Copy)]
pub enum KvBlocks<'a> {
    F32(&'a [&'a [f32]]),
    F16(&'a [&'a [f16]]),
}

impl<'a> KvBlocks<'a> {
    /// Number of blocks.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(blocks) => blocks.len(),
            Self::F16(blocks) => blocks.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements in block `b`.
    fn block_len(&self, b: usize) -> usize {
        match self {
            Self::F32(blocks) => blocks[b].len(),
            Self::F16(blocks) => blocks[b].len(),
        }
    }

    /// Elements `range` of block `b` as f32: the stored slice itself, or widened into
    /// `scratch` when stored as f16.
    #[inline]
    pub(crate) fn run<'s>(&self, b: usize, range: Range<usize>, scratch: &'s mut Vec<f32>) -> &'s [f32]
    where
        'a: 's,
    {
        match *self {
            Self::F32(blocks) => &blocks[b][range],
            Self::F16(blocks) => f16::as_f32(&blocks[b][range], scratch),
        }
    }

    /// Elements `range` of block `b`, widened to f32, into `dst` (of the range's length).
    #[inline]
    pub(crate) fn copy_into(&self, b: usize, range: Range<usize>, dst: &mut [f32]) {
        match *self {
            Self::F32(blocks) => dst.copy_from_slice(&blocks[b][range]),
            Self::F16(blocks) => widen_f16(&blocks[b][range], dst),
        }
    }
}

/// One layer's keys and values of one sequence, in fixed-size blocks.
///
/// Each block slice is laid out `[kv_heads][block_size][head_dim]`. Key `j` lives in block
/// `j / block_size` at slot `j % block_size`; only the first `len` keys are valid, the tail of
/// the last block is ignored.
#[derive(Debug, Clone, Copy)]
pub struct PagedKv<'a> {
    /// Key blocks, at least `ceil(len / block_size)` of them.
    pub k_blocks: KvBlocks<'a>,
    /// Value blocks, same count and layout as `k_blocks`.
    pub v_blocks: KvBlocks<'a>,
    /// Tokens per block.
    pub block_size: usize,
    /// Number of valid keys.
    pub len: usize,
}

/// Head geometry. Grouped-query attention: query head `h` reads KV head
/// `h / (n_heads / n_kv_heads)` (HF Llama layout, algorithms.md §0.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; divides `n_heads`.
    pub n_kv_heads: usize,
    /// Dimension of each head.
    pub head_dim: usize,
}

impl AttnShape {
    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

impl PagedKv<'_> {
    /// Where key `j` of KV head `kvh` lies: its block and the range of its `hd` elements.
    #[inline]
    fn locate(&self, kvh: usize, j: usize, hd: usize) -> (usize, Range<usize>) {
        let (b, s) = (j / self.block_size, j % self.block_size);
        let at = (kvh * self.block_size + s) * hd;
        (b, at..at + hd)
    }

    /// Copies the `head_dim` values of key `j` of KV head `kvh` into `dst` (caller
    /// guarantees `j < len`).
    #[inline]
    pub fn key_into(&self, kvh: usize, j: usize, dst: &mut [f32]) {
        let (b, range) = self.locate(kvh, j, dst.len());
        self.k_blocks.copy_into(b, range, dst);
    }

    /// Copies the value vector of key `j` of KV head `kvh` into `dst`.
    #[inline]
    pub fn value_into(&self, kvh: usize, j: usize, dst: &mut [f32]) {
        let (b, range) = self.locate(kvh, j, dst.len());
        self.v_blocks.copy_into(b, range, dst);
    }
}

/// Shape checks shared by the tiled and naive kernels.
pub(crate) fn validate(
    op: &'static str,
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    out_len: usize,
    lse_len: Option<usize>,
) -> Result<()> {
    let bad = |detail: String| Err(KernelError::InvalidShape { op, detail });
    let AttnShape { n_heads, n_kv_heads, head_dim } = *shape;
    if n_heads == 0 || n_kv_heads == 0 || head_dim == 0 || n_heads % n_kv_heads != 0 {
        return bad(format!(
            "n_heads {n_heads} must be a non-zero multiple of n_kv_heads {n_kv_heads}, head_dim {head_dim} non-zero"
        ));
    }
    if kv.block_size == 0 {
        return bad("block_size is 0".into());
    }
    if std::mem::discriminant(&kv.k_blocks) != std::mem::discriminant(&kv.v_blocks) {
        return bad("keys and values are stored as different element types".into());
    }
    if nq > kv.len {
        return bad(format!("{nq} queries but only {} keys (queries are the last positions)", kv.len));
    }
    let row = n_heads * head_dim;
    check_len(op, "q", q.len(), nq * row)?;
    check_len(op, "out", out_len, nq * row)?;
    if let Some(l) = lse_len {
        check_len(op, "lse", l, nq * n_heads)?;
    }
    let blocks = kv.len.div_ceil(kv.block_size);
    if kv.k_blocks.len() < blocks || kv.v_blocks.len() < blocks {
        return bad(format!(
            "{} keys need {blocks} blocks of {}, got {} key and {} value blocks",
            kv.len,
            kv.block_size,
            kv.k_blocks.len(),
            kv.v_blocks.len()
        ));
    }
    let block_len = n_kv_heads * kv.block_size * head_dim;
    for b in 0..blocks {
        check_len(op, "k block", kv.k_blocks.block_len(b), block_len)?;
        check_len(op, "v block", kv.v_blocks.block_len(b), block_len)?;
    }
    Ok(())
}
