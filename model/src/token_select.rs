//! TokenSelect decode attention (algorithms.md §3) as an [`AttentionBackend`]: one per
//! sequence, because it carries that sequence's selection cache from step to step.
//!
//! A decode step of a layer scores the cached keys with the step's queries, keeps the sink, the
//! local window and the `budget` keys with the largest soft vote, and attends to those only
//! ([`lcserve_kernels::token_select`]). While a layer's query stays within the cosine threshold
//! of the query that made its cached selection, the scoring pass is skipped and the cached
//! selection is extended with the keys that entered the window since. Steps where everything
//! would be kept (a short context) and chunks of more queries than the window (prefill) are
//! attended densely, so a budget that covers the context reproduces dense decoding exactly.
//!
//! [`TokenSelectAttention::drafting`] is the constant-memory drafter of self-speculation: it
//! keeps its selection across passes until the context has grown by a set number of tokens,
//! and reads the retrieved keys from a contiguous copy ([`compact`]) instead of gathering
//! them from the whole cache on every pass.

mod compact;

use std::sync::{Mutex, PoisonError};

use lcserve_kernels::token_select::{SelectionCache, select_tokens, selected_attention};
use lcserve_kernels::{AttnShape, PagedKv, merge_lse};

pub use lcserve_kernels::token_select::{DEFAULT_THRESHOLD as DEFAULT_REUSE_THRESHOLD, TokenSelection};

use crate::attention::{AttentionBackend, DenseAttention, logit_scale};
use crate::error::Result;
use compact::CompactLayer;

/// What a [`TokenSelectAttention`] has done so far, summed over layers and steps.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SelectionStats {
    /// Keys attended to (per layer and query, over all steps).
    pub attended_keys: u64,
    /// Keys in the cache at those steps: what dense attention would have read.
    pub cached_keys: u64,
    /// Layer steps that reused the cached selection.
    pub cache_hits: u64,
    /// Layer steps that scored the keys afresh.
    pub cache_misses: u64,
}

impl SelectionStats {
    /// Fraction of the cached keys that attention read: 1 for dense, 0 before any step.
    pub fn density(&self) -> f64 {
        if self.cached_keys == 0 { 0.0 } else { self.attended_keys as f64 / self.cached_keys as f64 }
    }

    /// Fraction of the selecting layer steps that reused the cached selection.
    pub fn reuse(&self) -> f64 {
        let steps = self.cache_hits + self.cache_misses;
        if steps == 0 { 0.0 } else { self.cache_hits as f64 / steps as f64 }
    }
}

/// Token-level KV selection for one sequence's decode steps.
#[derive(Debug)]
pub struct TokenSelectAttention {
    selection: TokenSelection,
    state: Mutex<State>,
    /// Per layer, the copy of the retrieved keys a drafting backend reads single-query steps
    /// from; `None` for plain TokenSelect decoding.
    compact: Option<Mutex<Vec<CompactLayer>>>,
}

#[derive(Debug)]
struct State {
    cache: SelectionCache,
    attended_keys: u64,
    cached_keys: u64,
    /// Scratch for the step's mean query (the cache's similarity key).
    mean_query: Vec<f32>,
}

impl TokenSelectAttention {
    /// A backend for a model of `layers` layers that reuses a layer's selection while
    /// `cos(query, cached query) ≥ reuse_threshold`. Errors on an invalid `selection` or a
    /// threshold outside `[-1, 1]`.
    pub fn new(selection: TokenSelection, layers: usize, reuse_threshold: f32) -> Result<Self> {
        selection.validate()?;
        let cache = SelectionCache::new(layers, reuse_threshold)?;
        Ok(Self {
            selection,
            state: Mutex::new(State { cache, attended_keys: 0, cached_keys: 0, mean_query: Vec::new() }),
            compact: None,
        })
    }

    /// The attention of a self-drafting pass: whatever its query, a layer reuses its
    /// selection until the context has grown by `refresh_after` tokens (at most the window,
    /// so every key is voted on or attended), and single-query steps read the retrieved keys
    /// from a contiguous copy made once per selection. Costs `sink + budget` keys and values
    /// per layer of extra memory. Errors on an invalid `selection`.
    pub fn drafting(selection: TokenSelection, layers: usize, refresh_after: usize) -> Result<Self> {
        let mut drafter = Self::new(selection, layers, -1.0)?;
        let state = drafter.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        state.cache = SelectionCache::new(layers, -1.0)?.refreshing_after(refresh_after.clamp(1, selection.window));
        drafter.compact = Some(Mutex::new((0..layers).map(|_| CompactLayer::default()).collect()));
        Ok(drafter)
    }

    pub fn selection(&self) -> TokenSelection {
        self.selection
    }

    pub fn stats(&self) -> SelectionStats {
        let state = self.lock();
        SelectionStats {
            attended_keys: state.attended_keys,
            cached_keys: state.cached_keys,
            cache_hits: state.cache.hits(),
            cache_misses: state.cache.misses(),
        }
    }

    /// Forgets the cached selections (the sequence's KV was dropped and will be recomputed);
    /// the statistics keep running.
    pub fn reset(&self) {
        self.lock().cache.clear();
        if let Some(compact) = &self.compact {
            compact.lock().unwrap_or_else(PoisonError::into_inner).iter_mut().for_each(CompactLayer::clear);
        }
    }

    /// Whether a layer's step of `nq` queries over `len` keys selects keys. It attends densely
    /// instead when it is a chunk wider than the window (prefill) or the selection would keep
    /// every key (a short context); such a step is counted in the statistics here.
    pub(crate) fn selects(&self, nq: usize, len: usize) -> bool {
        if nq > self.selection.window || self.selection.selected_len(len) >= len {
            let mut state = self.lock();
            state.cached_keys += (nq * len) as u64;
            state.attended_keys += (nq * len) as u64;
            return false;
        }
        true
    }

    /// The keys (sorted) that layer `layer`'s selecting step of `nq` queries `q` attends to
    /// over `len` keys: the layer's cached selection while the step's mean query stays within
    /// the reuse threshold of the one that made it, else `select()`'s, cached. Counts the step
    /// in the statistics. Where the selection runs is the caller's: the CPU kernels or the
    /// GPU's.
    pub(crate) fn select_keys(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        len: usize,
        select: impl FnOnce() -> Result<Vec<u32>>,
    ) -> Result<Vec<u32>> {
        let mut state = self.lock();
        let State { cache, mean_query, .. } = &mut *state;
        mean_of_rows(q, nq, mean_query);
        let selected = cache.get_or_select(layer, mean_query, len, self.selection.window, select)?;
        state.cached_keys += (nq * len) as u64;
        // Query `i` sees the selected keys up to its own position.
        state.attended_keys +=
            (0..nq).map(|i| selected.partition_point(|&key| (key as usize) < len - nq + i + 1) as u64).sum::<u64>();
        Ok(selected)
    }

    /// One query over `selected`: its retrieved keys (those before the window) from `copy`,
    /// refreshed if the selection changed, the window from the cache, merged by log-sum-exp.
    fn attend_compact(
        &self,
        copy: &mut CompactLayer,
        q: &[f32],
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        selected: &[u32],
        out: &mut [f32],
    ) -> Result<()> {
        let keep_before = kv.len.saturating_sub(self.selection.window);
        let (retrieved, window) = selected.split_at(selected.partition_point(|&key| (key as usize) < keep_before));
        copy.refresh(retrieved, kv, shape);
        let scale = logit_scale(shape);
        let mut lse = vec![f32::NEG_INFINITY; shape.n_heads];
        copy.attend(q, shape, scale, out, &mut lse)?;
        let (mut recent, mut recent_lse) = (vec![0f32; out.len()], vec![f32::NEG_INFINITY; shape.n_heads]);
        selected_attention(q, 1, kv, shape, scale, window, &mut recent, Some(&mut recent_lse))?;
        merge_lse(out, &mut lse, &recent, &recent_lse)?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl AttentionBackend for TokenSelectAttention {
    fn attend(
        &self,
        layer: usize,
        q: &[f32],
        nq: usize,
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> Result<()> {
        if !self.selects(nq, kv.len) {
            return DenseAttention.attend(layer, q, nq, kv, shape, out);
        }
        let selected =
            self.select_keys(layer, q, nq, kv.len, || Ok(select_tokens(q, nq, kv, shape, &self.selection)?))?;
        match &self.compact {
            Some(compact) if nq == 1 => {
                let mut layers = compact.lock().unwrap_or_else(PoisonError::into_inner);
                self.attend_compact(&mut layers[layer], q, kv, shape, &selected, out)
            }
            _ => Ok(selected_attention(q, nq, kv, shape, logit_scale(shape), &selected, out, None)?),
        }
    }

    fn token_select(&self) -> Option<&TokenSelectAttention> {
        Some(self)
    }
}

/// `out` = the mean of the `nq` rows of `q` (the query itself when `nq == 1`).
fn mean_of_rows(q: &[f32], nq: usize, out: &mut Vec<f32>) {
    let width = q.len() / nq;
    out.clear();
    out.extend_from_slice(&q[..width]);
    if nq > 1 {
        for row in q.chunks_exact(width).skip(1) {
            out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
        }
        let inv = 1.0 / nq as f32;
        out.iter_mut().for_each(|o| *o *= inv);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The drafter reads its retrieved keys from a copy and its window from the cache, and
    /// must attend exactly what plain TokenSelect attends to with the same selection; it
    /// selects again once the cache has grown by `refresh_after` keys.
    #[test]
    fn drafting_attends_as_token_select_and_refreshes_after_growth() {
        let mut rng = StdRng::seed_from_u64(7);
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 16 };
        let (bs, max_len): (usize, usize) = (16, 320);
        let block = shape.n_kv_heads * bs * shape.head_dim;
        let blocks: Vec<Vec<f32>> =
            (0..2 * max_len.div_ceil(bs)).map(|_| (0..block).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let (k, v): (Vec<&[f32]>, Vec<&[f32]>) = blocks.chunks(2).map(|p| (p[0].as_slice(), p[1].as_slice())).unzip();
        let selection = TokenSelection { budget: 40, sink: 4, window: 32 };
        let drafter = TokenSelectAttention::drafting(selection, 1, 8).expect("valid selection");
        let mut plain = TokenSelectAttention::new(selection, 1, -1.0).expect("valid selection");
        let width = shape.n_heads * shape.head_dim;
        for step in 0..12 {
            let kv = PagedKv { k_blocks: &k, v_blocks: &v, block_size: bs, len: 300 + step };
            let q: Vec<f32> = (0..width).map(|_| rng.random_range(-1.0..1.0)).collect();
            if step == 8 {
                // The drafter selects afresh here, as a new plain backend does.
                plain = TokenSelectAttention::new(selection, 1, -1.0).expect("valid selection");
            }
            let (mut got, mut want) = (vec![0f32; width], vec![0f32; width]);
            drafter.attend(0, &q, 1, &kv, &shape, &mut got).expect("shapes match");
            plain.attend(0, &q, 1, &kv, &shape, &mut want).expect("shapes match");
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "step {step}: {g} vs {w}");
            }
        }
        let stats = drafter.stats();
        assert_eq!((stats.cache_misses, stats.cache_hits), (2, 10));
    }
}
