//! TokenSelect (algorithms.md §3): dynamic token-level KV selection for decode.
//!
//! One decode step of one layer, in the order the engine uses the parts:
//!
//! * [`select_tokens`] — scores every candidate key with every query head, turns each head's
//!   scores into a softmax, sums those probabilities over all query heads of the layer (the
//!   *soft vote*) and keeps the `budget` best candidates plus the first `sink` and the last
//!   `window` keys: one sorted index list per layer, shared by all heads.
//! * [`SelectionCache`] (§3.4) — skips that scoring pass while the new query stays within
//!   a cosine threshold of the query that produced the cached selection.
//! * [`selected_attention`] — exact softmax attention of each query head over the selected
//!   keys of its KV head, gathered from the paged cache; O(selected) work instead of O(len).
//!
//! RoPE is the caller's: the kernels compare queries and keys as stored, so post-RoPE keys
//! with post-RoPE queries give "original positions" and pre-RoPE keys with queries rotated
//! as §3.3 describes give the paper's position-neutral retrieval. The full KV stays in the
//! cache; only the compute is sparse.

mod attend;
mod cache;
mod select;

pub use attend::selected_attention;
pub use cache::{DEFAULT_THRESHOLD, LayerSelection, SelectionCache};
pub use select::select_tokens;

use crate::error::{KernelError, Result};

/// How many keys one layer keeps per decode step: `sink + budget + window` at most.
///
/// The defaults are the paper's (`config/*-token-retrieval.yaml`: `n_init = 128`,
/// `k = 2048`, `n_local = 512`, ≈ 2.7K attended keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenSelection {
    /// Keys chosen by the soft vote (`k`). At least 1: with no budget this is a static
    /// sink + window pattern and needs no selection.
    pub budget: usize,
    /// Leading keys always kept (`n_init`): attention sinks.
    pub sink: usize,
    /// Trailing keys always kept (`n_local`). At least 1, and at least the number of queries,
    /// so every query sees its own key.
    pub window: usize,
}

impl Default for TokenSelection {
    fn default() -> Self {
        Self { budget: 2048, sink: 128, window: 512 }
    }
}

impl TokenSelection {
    /// Errors unless `budget` and `window` are non-zero and `sink + budget + window` fits
    /// in `usize`.
    pub fn validate(&self) -> Result<()> {
        let Self { budget, sink, window } = *self;
        if budget == 0 || window == 0 || self.kept().is_none() {
            return Err(KernelError::InvalidShape {
                op: "token selection",
                detail: format!(
                    "budget {budget} and window {window} must be non-zero and sink {sink} + budget + window fit in usize"
                ),
            });
        }
        Ok(())
    }

    /// Number of keys selected from a cache of `len` keys: all of them while
    /// `sink + budget + window ≥ len` (the dense fallback of §3.2), else exactly that sum.
    pub fn selected_len(&self, len: usize) -> usize {
        self.kept().map_or(len, |kept| kept.min(len))
    }

    fn kept(&self) -> Option<usize> {
        self.sink.checked_add(self.budget)?.checked_add(self.window)
    }
}
