//! Steps 3–5 of the pipeline (top-k, top-p, min-p) as thresholds over the processed row.
//!
//! Each filter keeps "every token at least this likely", so the result is two thresholds, not a
//! list: filtering a 150k-token row never materializes or sorts it. The k-th token of top-k is
//! found with a bounded heap over one pass of the row. So is the last token of a top-p nucleus
//! of at most 64 tokens (a peaked distribution); a wider one (a flat distribution, a high
//! temperature) is found by radix selection over the logits instead, three passes whatever its
//! size, where sorting a 40k-token nucleus took milliseconds per row. Tokens tied with the last
//! one kept are kept too, as Hugging Face and vLLM do for top-k.

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

/// Top-p nuclei up to this many tokens are found with the heap; wider ones by radix selection.
const HEAP_NUCLEUS: usize = 64;

/// Bits of the logits' order keys decided by each radix pass (32 in all).
const RADIX_PASSES: [u32; 3] = [11, 11, 10];

/// Fixed-point scale of the radix selection's masses: weights are at most 1 and a vocabulary
/// under 2^28 tokens wide, so a sum stays below 2^128; weights under 2^-100 (a token 69 nats
/// less likely than the best one) count as 0.
const MASS_SCALE: f64 = (1u128 << 100) as f64;

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
    let members = logits
        .iter()
        .zip(weights)
        .enumerate()
        .filter(|&(_, (&logit, &weight))| support.contains(logit, weight))
        // `i < vocab_size ≤ u32::MAX` (checked by `validate`).
        .map(|(i, (&logit, _))| Ranked { logit, id: i as TokenId });
    top_members(logits, members, m, scratch);
}

/// [`top_tokens`] of a raw row: its `m` most likely tokens with a finite logit.
pub(super) fn top_finite_tokens(logits: &[f32], m: usize, scratch: &mut Scratch) {
    let members = logits
        .iter()
        .enumerate()
        .filter(|&(_, &logit)| logit.is_finite())
        .map(|(i, &logit)| Ranked { logit, id: i as TokenId });
    top_members(logits, members, m, scratch);
}

/// Fills `scratch.tokens` with the `m` most likely of `members`, most likely first.
fn top_members(logits: &[f32], members: impl Iterator<Item = Ranked>, m: usize, scratch: &mut Scratch) {
    let Scratch { heap, tokens } = scratch;
    tokens.clear();
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
        top_tokens(logits, weights, support, HEAP_NUCLEUS.min(count), scratch);
        let mut cumulative = 0.0;
        let last = scratch.tokens.iter().find(|&&t| {
            cumulative += f64::from(weights[t as usize]);
            cumulative >= target
        });
        // If neither finds it, rounding left the whole support just below the target: keep all.
        if let Some(&last) = last {
            support.min_logit = logits[last as usize];
        } else if count > HEAP_NUCLEUS
            && let Some(floor) = nucleus_floor(logits, weights, support, params.top_p)
        {
            support.min_logit = floor;
        }
    }
    if params.min_p > 0.0 {
        // The most likely token has weight 1 and is still in the support, so "probability ≥
        // min_p × the best one's" (after any renormalization) is "weight ≥ min_p".
        support.min_weight = support.min_weight.max(params.min_p);
    }
    support
}

/// The logit of the last token of the top-p nucleus of `support`: the largest logit `L` whose
/// tokens at or above it hold at least `top_p` of the support's weight, or `None` if rounding
/// leaves the whole support below that.
///
/// Radix selection over [`order_key`]s: each pass sums the weights of the tokens that share the
/// key bits decided so far into one bucket per value of the next bits, then walks the buckets
/// from the most likely down to the one where the running mass reaches what is still
/// missing. Masses are summed in fixed point, exact in any order.
fn nucleus_floor(logits: &[f32], weights: &[f32], support: Support, top_p: f32) -> Option<f32> {
    let fixed = |w: f32| (f64::from(w) * MASS_SCALE) as u128;
    let (mut prefix, mut decided) = (0u32, 0u32);
    let mut missing = None;
    for bits in RADIX_PASSES {
        let shift = 32 - decided - bits;
        let mut mass = vec![0u128; 1 << bits];
        for (&logit, &weight) in logits.iter().zip(weights) {
            let key = order_key(logit);
            if support.contains(logit, weight) && (decided == 0 || key >> (32 - decided) == prefix) {
                mass[((key >> shift) & ((1 << bits) - 1)) as usize] += fixed(weight);
            }
        }
        let mut left = *missing.get_or_insert_with(|| {
            let total: u128 = mass.iter().sum();
            (f64::from(top_p) * total as f64) as u128
        });
        let bucket = mass.iter().rposition(|&m| {
            let reached = m > 0 && m >= left;
            if !reached {
                left -= m;
            }
            reached
        })?;
        missing = Some(left);
        prefix = (prefix << bits) | bucket as u32;
        decided += bits;
    }
    Some(from_order_key(prefix))
}

/// `x`'s bits as a `u32` whose order is `f32::total_cmp`'s: larger key, larger logit.
fn order_key(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 { !bits } else { bits | 1 << 31 }
}

/// The inverse of [`order_key`].
fn from_order_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 == 1 { key & !(1 << 31) } else { !key })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_keys_sort_as_total_cmp_and_invert() {
        let xs = [f32::NEG_INFINITY, f32::MIN, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, f32::MAX, f32::INFINITY];
        for pair in xs.windows(2) {
            assert!(order_key(pair[0]) < order_key(pair[1]), "{pair:?}");
        }
        for x in xs {
            assert_eq!(from_order_key(order_key(x)).to_bits(), x.to_bits());
        }
    }
}
