//! Sparse token distributions in f64: the form in which the acceptance rules read the target's
//! and the drafter's probabilities.

use lcserve_common::TokenId;
use rand::Rng;
use thiserror::Error;

/// A probability distribution over tokens: the tokens with positive probability, sorted by id,
/// normalized in f64.
///
/// Built from the sparse rows [`crate::Sampler::distribution`] returns (`(token, probability)`
/// pairs in any order; tokens not listed have probability 0). The row is renormalized on entry,
/// so the f32 rounding of its entries leaves no mass missing or extra, and every rule below then
/// works in f64. Lookups are binary searches: O(log n) for n tokens with positive probability.
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    /// Never empty; probabilities positive and summing to 1 (up to f64 rounding).
    entries: Vec<(TokenId, f64)>,
}

/// Why a row is not a probability distribution.
#[derive(Debug, Error, Clone, Copy, PartialEq)]
pub enum InvalidDistribution {
    /// A probability is NaN, infinite or negative.
    #[error("token {token} has probability {probability}, expected a finite value >= 0")]
    Probability {
        /// The offending entry's token.
        token: TokenId,
        /// Its probability as given.
        probability: f32,
    },
    /// A token is listed twice.
    #[error("token {token} is listed twice")]
    DuplicateToken {
        /// The repeated token.
        token: TokenId,
    },
    /// No token has positive probability (the row is empty or all zeros).
    #[error("no token has positive probability")]
    NoMass,
}

impl Distribution {
    /// Validates and normalizes a sparse row. Zero entries are dropped.
    pub fn new(row: &[(TokenId, f32)]) -> Result<Self, InvalidDistribution> {
        let mut entries = Vec::with_capacity(row.len());
        for &(token, probability) in row {
            if !probability.is_finite() || probability < 0.0 {
                return Err(InvalidDistribution::Probability { token, probability });
            }
            entries.push((token, f64::from(probability)));
        }
        entries.sort_unstable_by_key(|&(token, _)| token);
        if let Some(pair) = entries.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(InvalidDistribution::DuplicateToken { token: pair[0].0 });
        }
        Self::normalized(entries).ok_or(InvalidDistribution::NoMass)
    }

    /// The probability of `token` (0 for tokens outside the support).
    pub fn probability(&self, token: TokenId) -> f64 {
        self.entries.binary_search_by_key(&token, |&(t, _)| t).map_or(0.0, |i| self.entries[i].1)
    }

    /// The tokens with positive probability and their probabilities, by increasing token id.
    pub fn entries(&self) -> &[(TokenId, f64)] {
        &self.entries
    }

    /// The most likely token; ties go to the lowest id, as in greedy sampling.
    pub fn argmax(&self) -> TokenId {
        // `max_by` keeps the last of equal maxima, so walk from the highest id down.
        self.entries.iter().rev().max_by(|a, b| a.1.total_cmp(&b.1)).map_or(0, |&(token, _)| token)
    }

    /// `normalize(max(0, self − q))`: what speculative sampling emits after rejecting a draft
    /// drawn from `q`. `None` when `self ≤ q` everywhere, which (both being normalized) means
    /// they are equal and a rejection had probability 0.
    pub(crate) fn residual(&self, q: &Distribution) -> Option<Self> {
        let entries = self.entries.iter().map(|&(token, p)| (token, p - q.probability(token)));
        Self::normalized(entries.filter(|&(_, excess)| excess > 0.0).collect())
    }

    /// `self` with `token` removed and the rest renormalized; `None` if nothing else is left.
    pub(crate) fn without(&self, token: TokenId) -> Option<Self> {
        Self::normalized(self.entries.iter().copied().filter(|&(t, _)| t != token).collect())
    }

    /// Draws one token.
    pub(crate) fn sample(&self, rng: &mut impl Rng) -> TokenId {
        let target = rng.random::<f64>();
        let mut cumulative = 0.0;
        // Overwritten on the first iteration: `entries` is never empty. The last token stands in
        // if rounding leaves `target` unreached.
        let mut chosen = TokenId::default();
        for &(token, p) in &self.entries {
            chosen = token;
            cumulative += p;
            if cumulative > target {
                break;
            }
        }
        chosen
    }

    /// Divides positive, id-sorted weights by their sum; `None` if there is no positive weight.
    fn normalized(mut entries: Vec<(TokenId, f64)>) -> Option<Self> {
        entries.retain(|&(_, w)| w > 0.0);
        let total: f64 = entries.iter().map(|&(_, w)| w).sum();
        if entries.is_empty() {
            return None;
        }
        entries.iter_mut().for_each(|(_, w)| *w /= total);
        Some(Self { entries })
    }
}
