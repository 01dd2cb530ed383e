//! Per-head patterns and the one-call sparse prefill: build every head's index, run the
//! kernel, report what was computed.

use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::index::{HeadIndex, QueryBlocks};
use super::{a_shape_index, block_sparse_index, estimate_vertical_slash, sparse_attention, vertical_slash_index};
use crate::attention::{AttnShape, PagedKv};
use crate::error::Result;

/// What one query head computes during prefill, with its budget (§1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadPattern {
    /// Every causal key.
    Dense,
    /// The first `n_init` keys and a window of `n_local` keys; with `n_last > 0`, Tri-shape
    /// (the chunk's last `n_last` queries attend densely).
    AShape { n_init: usize, n_local: usize, n_last: usize },
    /// `vertical` key columns and `slash` diagonals, estimated from the last 64 queries.
    VerticalSlash { vertical: usize, slash: usize },
    /// `blocks` key blocks of 64 per query block, by pooled score.
    BlockSparse { blocks: usize },
}

impl HeadPattern {
    /// Builds query head `h`'s index for the chunk of `nq` queries ending `kv`.
    pub fn build_index(
        &self,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        h: usize,
        scale: f32,
    ) -> HeadIndex {
        let blocks = QueryBlocks::new(nq, kv.len);
        match *self {
            Self::Dense => HeadIndex::dense(&blocks),
            Self::AShape { n_init, n_local, n_last } => a_shape_index(&blocks, n_init, n_local, n_last),
            Self::VerticalSlash { vertical, slash } => {
                let (v, s) = estimate_vertical_slash(q, nq, kv, shape, h, scale, vertical, slash);
                vertical_slash_index(&blocks, &v, &s)
            }
            Self::BlockSparse { blocks: k } => block_sparse_index(q, nq, kv, shape, h, k),
        }
    }
}

/// What a sparse prefill call computed and where its time went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SparseStats {
    /// (query, key) pairs whose logits were computed, summed over heads.
    pub computed_pairs: u64,
    /// Causal pairs a dense kernel would compute, summed over heads.
    pub causal_pairs: u64,
    /// Time spent estimating and building indices.
    pub index_time: Duration,
    /// Time spent in the sparse kernel.
    pub kernel_time: Duration,
}

impl SparseStats {
    /// Executed density: computed / causal pairs (1 when nothing was computed).
    pub fn density(&self) -> f64 {
        if self.causal_pairs == 0 { 1.0 } else { self.computed_pairs as f64 / self.causal_pairs as f64 }
    }

    /// Adds another call's figures.
    pub fn add(&mut self, other: &SparseStats) {
        self.computed_pairs += other.computed_pairs;
        self.causal_pairs += other.causal_pairs;
        self.index_time += other.index_time;
        self.kernel_time += other.kernel_time;
    }
}

/// Sparse attention of a prefill chunk with one pattern per query head: builds the indices
/// (in parallel over heads), then runs [`sparse_attention`]. Same layout contract as
/// [`crate::attention`].
#[allow(clippy::too_many_arguments)]
pub fn sparse_prefill_attention(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    patterns: &[HeadPattern],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<SparseStats> {
    crate::attention::validate("sparse_prefill_attention", q, nq, kv, shape, out.len(), lse.as_ref().map(|l| l.len()))?;
    if patterns.len() != shape.n_heads {
        return Err(crate::KernelError::InvalidShape {
            op: "sparse_prefill_attention",
            detail: format!("{} head patterns for {} query heads", patterns.len(), shape.n_heads),
        });
    }
    let started = Instant::now();
    let heads: Vec<HeadIndex> =
        patterns.par_iter().enumerate().map(|(h, p)| p.build_index(q, nq, kv, shape, h, scale)).collect();
    let index_time = started.elapsed();
    let started = Instant::now();
    sparse_attention(q, nq, kv, shape, scale, &heads, out, lse)?;
    let kernel_time = started.elapsed();
    let blocks = QueryBlocks::new(nq, kv.len);
    Ok(SparseStats {
        computed_pairs: heads.iter().map(|i| i.computed_pairs(&blocks)).sum(),
        causal_pairs: blocks.causal_pairs() * shape.n_heads as u64,
        index_time,
        kernel_time,
    })
}
