//! The Selection Cache of §3.4: consecutive decode queries are often nearly parallel, and
//! then their selections agree, so a layer reuses its last selection while the new query's
//! cosine similarity to the query that produced it stays at or above a threshold θ.
//!
//! The cache keeps the *retrieved* part of a selection (sinks and voted keys, everything
//! before that step's window) and rebuilds the window from the current length on every
//! hit, so the newest keys are always attended. It is plain data: the caller passes the
//! function that selects on a miss (normally [`super::select_tokens`]).

use crate::error::{KernelError, Result};

/// The paper's threshold (InfiniteBench / LongBench runs).
pub const DEFAULT_THRESHOLD: f32 = 0.9;

/// Per-layer cached selection with hit/miss counters. One per sequence; [`Self::clear`]
/// it (or make a new one) when the sequence is replaced.
#[derive(Debug, Clone)]
pub struct SelectionCache {
    /// Reuse while `cos(query, cached query) ≥ threshold`; in `[-1, 1]`. 1 reuses only for
    /// a query parallel to the cached one, −1 always reuses after the first selection.
    threshold: f32,
    /// Reselect once the cache has grown by this many keys since the selection was made,
    /// whatever the query: keys that entered the window after it and left it since were
    /// never voted on. `None` (the paper's cache) reuses for as long as the query allows.
    refresh_after: Option<usize>,
    /// Indexed by layer; `None` until the layer's first selection.
    layers: Vec<Option<Entry>>,
    hits: u64,
    misses: u64,
}

/// One layer's cached selection, taken out by [`SelectionCache::layer`] and put back by
/// [`SelectionCache::set_layer`]: a speculative verification explores several continuations
/// from the same state and keeps the accepted one's.
#[derive(Debug, Clone, Default)]
pub struct LayerSelection(Option<Entry>);

/// One layer's cached selection.
#[derive(Debug, Clone)]
struct Entry {
    /// The query that produced the selection — not updated on hits, so a slowly drifting
    /// query eventually misses (as in the paper).
    query: Vec<f32>,
    /// The selection's keys before its window, sorted.
    retrieved: Vec<u32>,
    /// Cache length when selected; a shorter cache later means the sequence was rolled
    /// back or replaced, and the entry may name keys that no longer exist.
    len: usize,
}

impl SelectionCache {
    /// An empty cache for `layers` layers. Errors unless `threshold` is in `[-1, 1]`.
    pub fn new(layers: usize, threshold: f32) -> Result<Self> {
        if !(-1.0..=1.0).contains(&threshold) {
            return Err(KernelError::InvalidShape {
                op: "selection cache",
                detail: format!("cosine threshold {threshold} is outside [-1, 1]"),
            });
        }
        Ok(Self { threshold, refresh_after: None, layers: vec![None; layers], hits: 0, misses: 0 })
    }

    /// The same cache, reselecting a layer once `tokens` keys were appended since its
    /// selection (`tokens` at most the window keeps every key voted on or attended).
    pub fn refreshing_after(self, tokens: usize) -> Self {
        Self { refresh_after: Some(tokens), ..self }
    }

    /// The selection of `layer` for a cache of `len` keys whose last `window` keys are
    /// always kept: the cached one, with the window moved to `len`, when `query` is within
    /// the threshold of the cached query and the cache has not shrunk; otherwise `select()`,
    /// whose result (sorted key indices) is cached with `query`.
    ///
    /// `query` is the layer's step query flattened to `n_heads · head_dim` (a chunk's mean
    /// query); a zero vector has cosine 0 with everything. Errors on a layer out of range, a
    /// query of a different length than the cached one, or when `select` errs (with its
    /// error: a device's selection fails with the device's error type).
    pub fn get_or_select<E: From<KernelError>>(
        &mut self,
        layer: usize,
        query: &[f32],
        len: usize,
        window: usize,
        select: impl FnOnce() -> std::result::Result<Vec<u32>, E>,
    ) -> std::result::Result<Vec<u32>, E> {
        const OP: &str = "selection cache";
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| out_of_range(layer, layers))?;
        let keep_before = len.saturating_sub(window);
        if let Some(entry) = slot {
            if entry.query.len() != query.len() {
                return Err(KernelError::LengthMismatch {
                    op: OP,
                    what: "query",
                    got: query.len(),
                    expected: entry.query.len(),
                }
                .into());
            }
            let fresh = len >= entry.len && self.refresh_after.is_none_or(|tokens| len - entry.len < tokens);
            if fresh && cosine(query, &entry.query) >= f64::from(self.threshold) {
                self.hits += 1;
                let kept = entry.retrieved.partition_point(|&j| (j as usize) < keep_before);
                let mut selected = Vec::with_capacity(kept + len - keep_before);
                selected.extend_from_slice(&entry.retrieved[..kept]);
                selected.extend(keep_before as u32..len as u32);
                return Ok(selected);
            }
        }
        self.misses += 1;
        let selected = select()?;
        let retrieved = selected[..selected.partition_point(|&j| (j as usize) < keep_before)].to_vec();
        *slot = Some(Entry { query: query.to_vec(), retrieved, len });
        Ok(selected)
    }

    /// A copy of `layer`'s cached selection. Errors on a layer out of range.
    pub fn layer(&self, layer: usize) -> Result<LayerSelection> {
        Ok(LayerSelection(self.slot(layer)?.clone()))
    }

    /// Replaces `layer`'s cached selection with `saved` (from [`Self::layer`]); the counters
    /// stay. Errors on a layer out of range.
    pub fn set_layer(&mut self, layer: usize, saved: LayerSelection) -> Result<()> {
        let layers = self.layers.len();
        let slot = self.layers.get_mut(layer).ok_or_else(|| out_of_range(layer, layers))?;
        *slot = saved.0;
        Ok(())
    }

    fn slot(&self, layer: usize) -> Result<&Option<Entry>> {
        self.layers.get(layer).ok_or_else(|| out_of_range(layer, self.layers.len()))
    }

    /// Steps that reused a cached selection.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Steps that selected afresh (including each layer's first).
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Forgets every layer's selection (a new sequence); the counters keep running.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|entry| *entry = None);
    }
}

fn out_of_range(layer: usize, layers: usize) -> KernelError {
    KernelError::InvalidShape { op: "selection cache", detail: format!("layer {layer} of {layers}") }
}

/// Cosine similarity in f64; 0 when either vector is zero. Exactly 1 for identical vectors
/// (a correctly rounded `√(s·s)` is `s`), so a threshold of 1 reuses a repeated query.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let (mut ab, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 { 0.0 } else { ab / (aa * bb).sqrt() }
}
