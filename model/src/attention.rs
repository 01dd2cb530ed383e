//! The seam between the forward pass and attention kernels.
//!
//! The forward pass computes q/k/v, writes k/v into the paged arena, and hands each sequence's
//! queries and its view of the cache to an [`AttentionBackend`]. Dense tiled attention is the
//! default; sparse prefill and token selection plug in here without touching the model.

use lcserve_kernels::{AttnShape, PagedKv};

use crate::error::Result;

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
        let scale = 1.0 / (shape.head_dim as f32).sqrt();
        lcserve_kernels::attention(q, nq, kv, shape, scale, out, None)?;
        Ok(())
    }
}
