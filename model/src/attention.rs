//! The seam between the forward pass and attention kernels.
//!
//! The forward pass computes q/k/v, writes k/v into the paged arena, and hands each sequence's
//! queries and its view of the cache to that sequence's [`AttentionBackend`]. Dense tiled
//! attention is the default; [`SparseAttention`] runs a prefill chunk with the MInference
//! patterns of [`HeadPatterns`]; a sequence's `TokenSelectAttention` (`token_select`) selects
//! the keys its decode steps attend to.

use std::sync::{Mutex, PoisonError};

use lcserve_kernels::sparse::{HeadPattern, QueryBlocks, SparseStats, sparse_prefill_attention};
use lcserve_kernels::{AttnShape, PagedKv, tree_attention};

use crate::error::Result;
use crate::patterns::HeadPatterns;
use crate::token_select::TokenSelectAttention;

/// Computes causal attention of `nq` new queries (bottom-right aligned) against a paged cache.
pub trait AttentionBackend: Send + Sync + std::fmt::Debug {
    /// `q`: `[nq][n_heads][head_dim]`; `out`: same shape.
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> Result<()>;

    /// Attention of the rows of a speculative draft tree: `parents` as
    /// [`crate::SequenceInput::draft_tree`] gives them, the cache holding the prefix then one
    /// key per row (`kv.len` = prefix + rows). Each row attends as its own decode step would
    /// once its ancestors were accepted: to the prefix and its path. The default is hybrid tree
    /// attention over every such key, bitwise equal to dense decoding.
    fn attend_draft(
        &self,
        _layer: usize,
        q: &[f32],
        parents: &[Option<usize>],
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> Result<()> {
        tree_attention(q, parents, kv, shape, logit_scale(shape), out, None)?;
        Ok(())
    }

    /// Whether this is exact attention over every cached key.
    fn is_dense(&self) -> bool {
        false
    }

    /// The TokenSelect backend this is, if it is one: the GPU forward (`DeviceModel`, feature
    /// `cuda`) runs its selection on the device's kernels with this backend's settings, cache
    /// and statistics.
    fn token_select(&self) -> Option<&TokenSelectAttention> {
        None
    }

    /// The sparse-prefill backend this is, if it is one: the GPU forward builds its indices
    /// and runs its kernel on the device, with this backend's patterns and statistics.
    fn sparse_prefill(&self) -> Option<&SparseAttention<'_>> {
        None
    }
}

/// Exact attention: tiled, online softmax, O(N) memory.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenseAttention;

impl AttentionBackend for DenseAttention {
    fn attend(
        &self,
        _layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> Result<()> {
        lcserve_kernels::attention(q, nq, kv, shape, logit_scale(shape), out, None)?;
        Ok(())
    }

    fn is_dense(&self) -> bool {
        true
    }
}

/// Sparse prefill (MInference): each query head of a prefill chunk attends with its pattern
/// from [`HeadPatterns`]; chunks of fewer than [`SparseAttention::MIN_QUERIES`] queries
/// (decode, short tails) are dense. Accumulates what it computed in [`SparseStats`].
#[derive(Debug)]
pub struct SparseAttention<'a> {
    patterns: &'a HeadPatterns,
    stats: Mutex<SparseStats>,
}

impl<'a> SparseAttention<'a> {
    /// Below this many queries a chunk is attended densely: one query block is all the
    /// estimate would see, and decoding stays dense (§1.5).
    pub const MIN_QUERIES: usize = 64;

    pub fn new(patterns: &'a HeadPatterns) -> Self {
        Self { patterns, stats: Mutex::new(SparseStats::default()) }
    }

    /// What the calls so far computed, summed over layers and heads.
    pub fn stats(&self) -> SparseStats {
        *self.stats.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The head patterns `layer`'s chunk of `nq` queries over `len` keys is attended with, or
    /// `None` when it is attended densely (fewer than [`Self::MIN_QUERIES`] queries, or a layer
    /// without patterns) — counted in the statistics here, as dense.
    pub(crate) fn chunk_patterns(&self, layer: usize, nq: usize, len: usize, n_heads: usize) -> Option<&[HeadPattern]> {
        if nq >= Self::MIN_QUERIES && layer < self.patterns.num_layers() {
            return Some(self.patterns.layer(layer));
        }
        let pairs = QueryBlocks::new(nq, len).causal_pairs() * n_heads as u64;
        self.record(&SparseStats { computed_pairs: pairs, causal_pairs: pairs, ..SparseStats::default() });
        None
    }

    /// Adds a sparse chunk's figures to the statistics.
    pub(crate) fn record(&self, stats: &SparseStats) {
        self.stats.lock().unwrap_or_else(PoisonError::into_inner).add(stats);
    }
}

impl AttentionBackend for SparseAttention<'_> {
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> Result<()> {
        let Some(patterns) = self.chunk_patterns(layer, nq, kv.len, shape.n_heads) else {
            return DenseAttention.attend(layer, q, nq, kv, shape, out);
        };
        let stats = sparse_prefill_attention(q, nq, kv, shape, logit_scale(shape), patterns, out, None)?;
        self.record(&stats);
        Ok(())
    }

    fn sparse_prefill(&self) -> Option<&SparseAttention<'_>> {
        Some(self)
    }
}

/// `1/√head_dim`.
pub(crate) fn logit_scale(shape: &AttnShape) -> f32 {
    1.0 / (shape.head_dim as f32).sqrt()
}
