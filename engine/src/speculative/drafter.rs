//! Speculative decoding with chain drafts: a drafter proposes the next few tokens, one forward
//! pass runs them after the sequence's pending token, and the target model keeps the longest
//! prefix it agrees with plus one token of its own — so each step emits 1 to k + 1 tokens at
//! about the cost of one.
//!
//! Lossless for any sampling settings when drafts are deterministic (a point mass, as n-gram
//! lookup proposes): verifying draft `x` by drawing `t` from the target distribution `p` and
//! accepting iff `t == x` accepts with probability `p(x)` and otherwise emits a draw from `p`
//! with `x` removed and renormalized — the deterministic-draft rule of algorithms.md §2.0, so
//! every emitted token is distributed exactly as plain decoding's. Under greedy settings the
//! output is token-identical to plain greedy decoding.

use std::fmt;
use std::sync::Arc;

use lcserve_common::TokenId;

/// Draft tokens proposed per step when a request does not say.
pub const DEFAULT_DRAFT_TOKENS: usize = 6;

/// Proposes likely continuations of a sequence.
pub trait Drafter: Send + Sync + fmt::Debug {
    /// Up to `max` tokens that may follow `tokens` (prompt and generated so far); empty when
    /// it has no guess.
    fn propose(&self, tokens: &[TokenId], max: usize) -> Vec<TokenId>;
}

/// Whether and how a request speculates.
#[derive(Clone, Debug, Default)]
pub enum Speculation {
    /// Plain decoding, one token per step.
    #[default]
    Off,
    /// Prompt lookup ([`NgramDrafter`]): copies what followed the latest earlier occurrence of
    /// the sequence's last n-gram.
    Ngram,
    /// Prompt lookup with each step's draft length chosen from the acceptance observed so far
    /// and the measured cost of verifying extra rows; plain decoding where drafting would lose
    /// (see `auto`).
    Auto,
    /// The engine's draft model ([`crate::EngineConfig::draft_model`], a
    /// [`super::DraftModelDrafter`]): its greedy continuation of the recent tokens.
    Draft,
    /// The target model itself as its own drafter, greedy, attending to a constant budget of
    /// its cached keys (sink + recent window + the best-voted ones, TokenSelect) — cheaper
    /// than a full step where attention over a long context dominates.
    SelfDraft,
    /// A caller-supplied drafter.
    Drafter(Arc<dyn Drafter>),
}

impl Speculation {
    /// The drafter this setting uses, if any; `Draft` is the engine's to supply.
    pub(crate) fn drafter(&self) -> Option<Arc<dyn Drafter>> {
        match self {
            Self::Off | Self::Draft | Self::SelfDraft => None,
            Self::Ngram | Self::Auto => Some(Arc::new(NgramDrafter::default())),
            Self::Drafter(drafter) => Some(Arc::clone(drafter)),
        }
    }
}

/// Prompt lookup decoding: match the last `n` tokens (n from `max_ngram` down to 1) at their
/// most recent earlier occurrence in prompt + output, and propose the tokens that followed it.
/// Strong on inputs the answer copies from (documents, code edits, quotes); silent otherwise.
#[derive(Clone, Copy, Debug)]
pub struct NgramDrafter {
    /// Longest n-gram matched first.
    pub max_ngram: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        Self { max_ngram: 3 }
    }
}

impl Drafter for NgramDrafter {
    fn propose(&self, tokens: &[TokenId], max: usize) -> Vec<TokenId> {
        let len = tokens.len();
        for n in (1..=self.max_ngram.min(len.saturating_sub(1))).rev() {
            let tail = &tokens[len - n..];
            // Latest start `s < len - n` with tokens[s..s + n] == tail.
            if let Some(s) = (0..len - n).rev().find(|&s| &tokens[s..s + n] == tail) {
                let from = s + n;
                return tokens[from..(from + max).min(len)].to_vec();
            }
        }
        Vec::new()
    }
}
