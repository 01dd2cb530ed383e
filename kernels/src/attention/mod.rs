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

use crate::error::{KernelError, Result, check_len};

/// One layer's keys and values of one sequence, in fixed-size blocks.
///
/// Each block slice is laid out `[kv_heads][block_size][head_dim]` (f32). Key `j` lives in
/// block `j / block_size` at slot `j % block_size`; only the first `len` keys are valid, the
/// tail of the last block is ignored.
#[derive(Debug, Clone, Copy)]
pub struct PagedKv<'a> {
    /// Key blocks, at least `ceil(len / block_size)` of them.
    pub k_blocks: &'a [&'a [f32]],
    /// Value blocks, same count and layout as `k_blocks`.
    pub v_blocks: &'a [&'a [f32]],
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
    /// The `head_dim` values of key `j` of KV head `kvh` (caller guarantees `j < len`).
    #[inline]
    pub(crate) fn key(&self, kvh: usize, j: usize, hd: usize) -> &[f32] {
        let (b, s) = (j / self.block_size, j % self.block_size);
        let at = (kvh * self.block_size + s) * hd;
        &self.k_blocks[b][at..at + hd]
    }

    /// The value vector of key `j` of KV head `kvh`.
    #[inline]
    pub(crate) fn value(&self, kvh: usize, j: usize, hd: usize) -> &[f32] {
        let (b, s) = (j / self.block_size, j % self.block_size);
        let at = (kvh * self.block_size + s) * hd;
        &self.v_blocks[b][at..at + hd]
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
        check_len(op, "k block", kv.k_blocks[b].len(), block_len)?;
        check_len(op, "v block", kv.v_blocks[b].len(), block_len)?;
    }
    Ok(())
}
