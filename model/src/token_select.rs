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
//! A speculative draft is verified row by row as decoding would have run it
//! ([`AttentionBackend::attend_draft`]): each row selects over the prefix and its own path, from
//! the selection state its parent row left, and [`TokenSelectAttention::accept_draft_row`]
//! keeps the state of the row the verification stopped at. So speculation leaves
//! TokenSelect's tokens exactly as they are.
//!
//! [`TokenSelectAttention::drafting`] is the constant-memory drafter of self-speculation: it
//! keeps its selection across passes until the context has grown by a set number of tokens,
//! and reads the retrieved keys from a contiguous copy ([`compact`]) instead of gathering
//! them from the whole cache on every pass.

mod compact;

use std::sync::{Mutex, PoisonError};

use lcserve_kernels::token_select::{LayerSelection, SelectionCache, select_tokens, selected_attention};
use lcserve_kernels::{AttnShape, KernelError, PagedKv, merge_lse, tree_attention, tree_depths};

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
    /// Per layer, the selection each row of the draft being verified left behind, until
    /// [`TokenSelectAttention::accept_draft_row`] keeps one row's.
    draft_rows: Vec<Vec<LayerSelection>>,
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
            state: Mutex::new(State {
                cache,
                attended_keys: 0,
                cached_keys: 0,
                mean_query: Vec::new(),
                draft_rows: vec![Vec::new(); layers],
            }),
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
        let mut state = self.lock();
        state.cache.clear();
        state.draft_rows.iter_mut().for_each(Vec::clear);
        drop(state);
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

    /// After a draft's verification, keeps in every layer the selection that draft row `row`
    /// left behind: the state decoding the accepted path would have reached. Without this
    /// call a verification leaves the selections as they were before it.
    pub fn accept_draft_row(&self, row: usize) {
        let mut state = self.lock();
        let State { cache, draft_rows, .. } = &mut *state;
        for (layer, rows) in draft_rows.iter_mut().enumerate() {
            if row < rows.len() {
                // In range: `draft_rows` has one entry per layer of the cache.
                let _ = cache.set_layer(layer, rows.swap_remove(row));
            }
            rows.clear();
        }
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

    /// Each row as its decode step: dense (the hybrid tree kernel, bitwise equal to dense
    /// decoding) while the context is within the selection, else selecting from its parent's
    /// state over the prefix and its path. A branching draft may be at most the window deep,
    /// so every scored key lies in the prefix.
    fn attend_draft(
        &self,
        layer: usize,
        q: &[f32],
        parents: &[Option<usize>],
        kv: &PagedKv<'_>,
        shape: &AttnShape,
        out: &mut [f32],
    ) -> Result<()> {
        let depths = tree_depths(parents)?;
        let rows = parents.len();
        let width = shape.n_heads * shape.head_dim;
        if kv.len < rows || q.len() != rows * width || out.len() != rows * width {
            return Err(KernelError::InvalidShape {
                op: "token-select draft",
                detail: format!("{rows} rows of {width}, q {} and out {}, {} keys", q.len(), out.len(), kv.len),
            }
            .into());
        }
        let prefix = kv.len - rows;
        let chain = parents.iter().enumerate().all(|(row, &parent)| parent == row.checked_sub(1));
        if !chain && depths.iter().any(|&depth| depth > self.selection.window) {
            return Err(KernelError::InvalidShape {
                op: "token-select draft",
                detail: format!("a branching draft deeper than the window of {}", self.selection.window),
            }
            .into());
        }
        let dense: Vec<bool> = depths.iter().map(|&depth| !self.selects(1, prefix + depth)).collect();
        if dense.contains(&true) {
            let mut tree_out = vec![0f32; out.len()];
            tree_attention(q, parents, kv, shape, logit_scale(shape), &mut tree_out, None)?;
            for row in (0..rows).filter(|&row| dense[row]) {
                out[row * width..][..width].copy_from_slice(&tree_out[row * width..][..width]);
            }
        }
        let before = self.lock().cache.layer(layer)?;
        let mut after: Vec<LayerSelection> = Vec::with_capacity(rows);
        for row in 0..rows {
            let from = parents[row].map_or(&before, |parent| &after[parent]).clone();
            if dense[row] {
                after.push(from);
                continue;
            }
            // The row's decode step would see the prefix then its path (the rows from a root to
            // it): `len` keys. Only keys before the window are scored, and they lie in the
            // prefix (or the draft is a chain, whose rows sit at their own positions), so the
            // cache cut at `len` is that step's view for selecting.
            let mut path = vec![row];
            while let Some(parent) = parents[*path.last().expect("starts with the row")] {
                path.push(parent);
            }
            path.reverse();
            let len = prefix + path.len();
            let (q_row, out_row) = (&q[row * width..][..width], &mut out[row * width..][..width]);
            self.lock().cache.set_layer(layer, from)?;
            let decode_view = PagedKv { len, ..*kv };
            let logical = self.select_keys(layer, q_row, 1, len, || {
                Ok(select_tokens(q_row, 1, &decode_view, shape, &self.selection)?)
            })?;
            after.push(self.lock().cache.layer(layer)?);
            let physical: Vec<u32> = logical
                .iter()
                .map(|&key| match (key as usize).checked_sub(prefix) {
                    Some(depth) => (prefix + path[depth]) as u32,
                    None => key,
                })
                .collect();
            selected_attention(q_row, 1, kv, shape, logit_scale(shape), &physical, out_row, None)?;
        }
        let mut state = self.lock();
        state.cache.set_layer(layer, before)?;
        state.draft_rows[layer] = after;
        Ok(())
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
    use lcserve_kernels::KvBlocks;
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
            let kv =
                PagedKv { k_blocks: KvBlocks::F32(&k), v_blocks: KvBlocks::F32(&v), block_size: bs, len: 300 + step };
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

    /// A cache of random keys and values, `[kv_heads][block_size][head_dim]` per block.
    struct Cache {
        k: Vec<Vec<f32>>,
        v: Vec<Vec<f32>>,
        bs: usize,
        row: usize,
    }

    impl Cache {
        fn random(rng: &mut StdRng, len: usize, bs: usize, shape: &AttnShape) -> Self {
            let block = shape.n_kv_heads * bs * shape.head_dim;
            let mut blocks =
                || (0..len.div_ceil(bs)).map(|_| (0..block).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
            Self { k: blocks(), v: blocks(), bs, row: shape.head_dim }
        }

        /// The keys at `positions`, in that order, as a contiguous cache.
        fn gather(&self, positions: &[usize], shape: &AttnShape) -> Self {
            let mut out = Self {
                k: vec![vec![0.0; self.k[0].len()]; positions.len().div_ceil(self.bs)],
                v: vec![vec![0.0; self.v[0].len()]; positions.len().div_ceil(self.bs)],
                bs: self.bs,
                row: self.row,
            };
            for (to, &from) in positions.iter().enumerate() {
                for head in 0..shape.n_kv_heads {
                    let at = |pos: usize| (head * self.bs + pos % self.bs) * self.row;
                    let (src, dst) = (at(from), at(to));
                    let (fb, tb, d) = (from / self.bs, to / self.bs, self.row);
                    out.k[tb][dst..dst + d].copy_from_slice(&self.k[fb][src..src + d]);
                    out.v[tb][dst..dst + d].copy_from_slice(&self.v[fb][src..src + d]);
                }
            }
            out
        }

        fn with<R>(&self, len: usize, f: impl FnOnce(&PagedKv<'_>) -> R) -> R {
            let k: Vec<&[f32]> = self.k.iter().map(Vec::as_slice).collect();
            let v: Vec<&[f32]> = self.v.iter().map(Vec::as_slice).collect();
            f(&PagedKv { k_blocks: KvBlocks::F32(&k), v_blocks: KvBlocks::F32(&v), block_size: self.bs, len })
        }
    }

    /// Each draft row attends bit for bit as its decode step would after its ancestors' steps
    /// (the same keys selected from the same cached selections), and after
    /// `accept_draft_row` the next step is the one decoding the accepted path would take —
    /// for chains and branching trees, contexts within and beyond the selection, and reuse
    /// thresholds that always, sometimes and never reuse.
    #[test]
    fn draft_rows_attend_as_their_decode_steps() {
        let mut rng = StdRng::seed_from_u64(8);
        let shape = AttnShape { n_heads: 4, n_kv_heads: 2, head_dim: 16 };
        let width = shape.n_heads * shape.head_dim;
        let selection = TokenSelection { budget: 12, sink: 4, window: 8 };
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let base: Vec<f32> = (0..width).map(|_| rng.random_range(-1.0..1.0)).collect();
        for (prefix, threshold, rows) in [(20, 0.9, 7), (23, -1.0, 5), (120, 0.9, 7), (150, -1.0, 6), (90, 1.0, 8)] {
            for branching in [false, true] {
                let parents: Vec<Option<usize>> = (0..rows)
                    .map(|row| match row {
                        0 => None,
                        _ if branching => Some(rng.random_range(0..row)),
                        _ => Some(row - 1),
                    })
                    .collect();
                let cache = Cache::random(&mut rng, prefix + rows + 1, 16, &shape);
                // Queries near `base` reuse a cached selection at θ = 0.9, random ones do not.
                let mut query = || -> Vec<f32> {
                    let near = rng.random_bool(0.5);
                    base.iter()
                        .map(|b| if near { b + rng.random_range(-0.05..0.05) } else { rng.random_range(-1.0..1.0) })
                        .collect()
                };
                let history: Vec<Vec<f32>> = (0..3).map(|_| query()).collect();
                let q: Vec<f32> = (0..rows).flat_map(|_| query()).collect();
                let next = query();
                // A backend that decoded the three steps before the draft.
                let decoded = || {
                    let backend = TokenSelectAttention::new(selection, 1, threshold).expect("valid selection");
                    for (step, q) in history.iter().enumerate() {
                        let mut out = vec![0f32; width];
                        cache
                            .with(prefix - 2 + step, |kv| backend.attend(0, q, 1, kv, &shape, &mut out))
                            .expect("step");
                    }
                    backend
                };
                let verifier = decoded();
                let mut out = vec![f32::NAN; rows * width];
                cache
                    .with(prefix + rows, |kv| verifier.attend_draft(0, &q, &parents, kv, &shape, &mut out))
                    .expect("draft");
                let name = format!("prefix {prefix} threshold {threshold} parents {parents:?}");
                let path_to = |row: usize| {
                    let mut path = vec![row];
                    while let Some(parent) = parents[*path.last().expect("starts with the row")] {
                        path.push(parent);
                    }
                    path.reverse();
                    path
                };
                for row in 0..rows {
                    let path = path_to(row);
                    let mut keys: Vec<usize> = (0..prefix).collect();
                    keys.extend(path.iter().map(|&r| prefix + r));
                    keys.push(prefix + rows);
                    let contiguous = cache.gather(&keys, &shape);
                    let decoder = decoded();
                    let mut want = vec![0f32; width];
                    for (depth, &r) in path.iter().enumerate() {
                        let q_r = &q[r * width..][..width];
                        contiguous
                            .with(prefix + depth + 1, |kv| decoder.attend(0, q_r, 1, kv, &shape, &mut want))
                            .expect("decode");
                    }
                    assert_eq!(bits(&out[row * width..][..width]), bits(&want), "{name}: row {row}");
                    if row == rows - 1 || rng.random_bool(0.3) {
                        // Accepting this row: the next step, over the path and one more key,
                        // is the decoder's.
                        let accepted = decoded();
                        let mut scratch = vec![0f32; rows * width];
                        cache
                            .with(prefix + rows, |kv| accepted.attend_draft(0, &q, &parents, kv, &shape, &mut scratch))
                            .expect("draft");
                        accepted.accept_draft_row(row);
                        let (mut got, mut want) = (vec![0f32; width], vec![0f32; width]);
                        let len = prefix + path.len() + 1;
                        contiguous.with(len, |kv| accepted.attend(0, &next, 1, kv, &shape, &mut got)).expect("next");
                        contiguous.with(len, |kv| decoder.attend(0, &next, 1, kv, &shape, &mut want)).expect("next");
                        assert_eq!(bits(&got), bits(&want), "{name}: after accepting row {row}");
                    }
                }
            }
        }
    }

    #[test]
    fn branching_drafts_deeper_than_the_window_are_refused() {
        let mut rng = StdRng::seed_from_u64(9);
        let shape = AttnShape { n_heads: 2, n_kv_heads: 1, head_dim: 8 };
        let selection = TokenSelection { budget: 4, sink: 1, window: 2 };
        let backend = TokenSelectAttention::new(selection, 1, 0.9).expect("valid selection");
        let cache = Cache::random(&mut rng, 40, 16, &shape);
        let q = vec![0.5f32; 4 * 16];
        let mut out = vec![0f32; q.len()];
        let deep_tree = [None, Some(0), Some(1), Some(0)];
        assert!(cache.with(40, |kv| backend.attend_draft(0, &q, &deep_tree, kv, &shape, &mut out)).is_err());
        // A chain may be as deep as it likes: its rows sit at their own positions.
        let chain = [None, Some(0), Some(1), Some(2)];
        assert!(cache.with(40, |kv| backend.attend_draft(0, &q, &chain, kv, &shape, &mut out)).is_ok());
    }
}
