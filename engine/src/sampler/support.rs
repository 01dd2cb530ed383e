//! Steps 3–5 of the pipeline (top-k, top-p, min-p) as thresholds over the processed row.
//!
//! Each filter keeps "every token at least this likely", so the result is two thresholds, not a
//! list: filtering a 150k-token row never materializes or sorts it. The k-th token of top-k and
//! the last token of the top-p nucleus are found with a bounded heap over one pass of the row;
//! top-p grows its heap (64, 512, 4096, … tokens) only until the nucleus fits. Tokens tied with
//! the last one kept are kept too, as Hugging Face and vLLM do for top-k.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use lcserve_common::TokenId;

use super::{SamplingParams, row};

/// The tokens that may be drawn: those whose processed logit is ≥ `min_logit` and whose weight
/// (`exp(logit − max)`, 1 for the most likely token) is ≥ `min_weight`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Support {
    pub(super) min_logit: f32,
    pub(super) min_weight: f32,
}

impl Support {
    /// Every token with a nonzero weight: all a sampler could ever draw.
    pub(super) const DRAWABLE: Support = Support { min_logit: f32::NEG_INFINITY, min_weight: f32::MIN_POSITIVE };
    /// Every token with a finite logit, hence a finite logprob (for reporting).
    pub(super) const FINITE: Support = Support { min_logit: f32::MIN, min_weight: 0.0 };

    pub(super) fn contains(&self, logit: f32, weight: f32) -> bool {
        logit >= self.min_logit && weight >= self.min_weight
    }
}

/// Heap selections above this size collect and sort the support instead; as cheap by then.
const HEAP_LIMIT: usize = 4096;

/// First nucleus guess of top-p; grown eightfold until the nucleus fits.
const NUCLEUS_START: usize = 64;

/// A token ranked by likelihood: higher logit first, then lower id. A total order, so every
/// selection is deterministic.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ranked {
    logit: f32,
    id: TokenId,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        self.logit.total_cmp(&other.logit).then(other.id.cmp(&self.id))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// Reusable buffers for the selections.
#[derive(Debug, Default)]
pub(super) struct Scratch {
    /// Min-heap of the best tokens seen so far.
    heap: BinaryHeap<Reverse<Ranked>>,
    /// Selected token ids, most likely first.
    pub(super) tokens: Vec<TokenId>,
}

/// Sorts most likely first (see [`Ranked`]).
pub(super) fn by_likelihood(logits: &[f32], a: TokenId, b: TokenId) -> Ordering {
    logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b))
}

/// Fills `scratch.tokens` with the `m` most likely members of `support`, most likely first.
///
/// O(V) plus O(m log m) for small `m`: a token below the heap's minimum costs one comparison.
pub(super) fn top_tokens(logits: &[f32], weights: &[f32], support: Support, m: usize, scratch: &mut Scratch) {
    let Scratch { heap, tokens } = scratch;
    tokens.clear();
    let members = logits
        .iter()
        .zip(weights)
        .enumerate()
        .filter(|&(_, (&logit, &weight))| support.contains(logit, weight))
        // `i < vocab_size ≤ u32::MAX` (checked by `validate`).
        .map(|(i, (&logit, _))| Ranked { logit, id: i as TokenId });
    if m <= HEAP_LIMIT {
        heap.clear();
        // The heap's least logit once it is full: most tokens fall below it and cost one
        // comparison.
        let mut floor = f32::NEG_INFINITY;
        for token in members {
            if token.logit < floor {
                continue;
            }
            if heap.len() < m {
                heap.push(Reverse(token));
            } else if let Some(mut least) = heap.peek_mut()
                && token > least.0
            {
                *least = Reverse(token);
            }
            if heap.len() == m
                && let Some(least) = heap.peek()
            {
                floor = least.0.logit;
            }
        }
        tokens.extend(heap.drain().map(|Reverse(token)| token.id));
    } else {
        tokens.extend(members.map(|token| token.id));
    }
    tokens.sort_unstable_by(|&a, &b| by_likelihood(logits, a, b));
    tokens.truncate(m);
}

/// Applies top-k, then top-p over what top-k left (renormalized), then min-p.
pub(super) fn filter(params: &SamplingParams, logits: &[f32], weights: &[f32], scratch: &mut Scratch) -> Support {
    let mut support = Support::DRAWABLE;
    if let Some(k) = params.top_k {
        let (_, count) = row::masked_sum(logits, weights, support);
        if k < count {
            top_tokens(logits, weights, support, k, scratch);
            if let Some(&kth) = scratch.tokens.last() {
                support.min_logit = logits[kth as usize];
            }
        }
    }
    if params.top_p < 1.0 {
        let (mass, count) = row::masked_sum(logits, weights, support);
        let target = f64::from(params.top_p) * mass;
        let mut m = NUCLEUS_START;
        loop {
            top_tokens(logits, weights, support, m.min(count), scratch);
            let mut cumulative = 0.0;
            let last = scratch.tokens.iter().find(|&&t| {
                cumulative += f64::from(weights[t as usize]);
                cumulative >= target
            });
            if let Some(&last) = last {
                support.min_logit = logits[last as usize];
                break;
            }
            if m >= count {
                // Rounding kept the whole support just below the target: keep all of it.
                break;
            }
            m = m.saturating_mul(8);
        }
    }
    if params.min_p > 0.0 {
        // The most likely token has weight 1 and is still in the support, so "probability ≥
        // min_p × the best one's" (after any renormalization) is "weight ≥ min_p".
        support.min_weight = support.min_weight.max(params.min_p);
    }
    support
}
