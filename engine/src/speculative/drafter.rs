//! Speculative decoding with deterministic drafts: a drafter proposes a tree of likely
//! continuations (a chain for most drafters), one forward pass runs it after the sequence's
//! pending token, and the target model walks down the tree as long as it agrees and adds one
//! token of its own — so each step emits 1 to depth + 1 tokens at about the cost of one.
//!
//! Lossless for any sampling settings when drafts are deterministic (point masses, as n-gram
//! lookup proposes): at each row the engine draws `t` from the target distribution `p` with
//! its ordinary sampler and moves to the child whose token is `t`, if there is one. Every
//! emitted token is a draw from `p` whatever the tree holds — the deterministic-draft rule of
//! algorithms.md §2.0 (for one child: accept with probability `p(x)`, else a draw from `p`
//! with `x` removed and renormalized). Under greedy settings the output is the plain greedy
//! output.

use std::fmt;
use std::sync::Arc;

use lcserve_common::TokenId;

use super::tree::DraftTree;

/// Draft tokens proposed per step when a request does not say: the depth of a draft.
pub const DEFAULT_DRAFT_TOKENS: usize = 6;

/// Most nodes of a draft tree: each costs a verification row, as a chain token does.
pub const DEFAULT_DRAFT_NODES: usize = 12;

/// Proposes likely continuations of a sequence.
pub trait Drafter: Send + Sync + fmt::Debug {
    /// Up to `max` tokens that may follow `tokens` (prompt and generated so far); empty when
    /// it has no guess.
    fn propose(&self, tokens: &[TokenId], max: usize) -> Vec<TokenId>;

    /// A deterministic draft tree of at most `max_nodes` nodes, none deeper than `max_depth`.
    /// The default is the chain [`Drafter::propose`] gives.
    fn propose_tree(&self, tokens: &[TokenId], max_depth: usize, max_nodes: usize) -> DraftTree {
        DraftTree::chain(&self.propose(tokens, max_depth.min(max_nodes)))
    }
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
///
/// As a tree it proposes what followed each of the `max_branches` latest occurrences of the
/// longest n-gram that occurs, merged where they agree: a phrase that recurs with different
/// continuations (a repeated name, a list's item prefix) drafts each of them.
#[derive(Clone, Copy, Debug)]
pub struct NgramDrafter {
    /// Longest n-gram matched first.
    pub max_ngram: usize,
    /// Most occurrences a tree draws continuations from.
    pub max_branches: usize,
}

impl Default for NgramDrafter {
    fn default() -> Self {
        Self { max_ngram: 3, max_branches: 4 }
    }
}

impl NgramDrafter {
    /// Where the tokens that followed earlier occurrences of the longest matching tail n-gram
    /// start, latest first; empty when not even the last token occurred before.
    fn continuations<'t>(&self, tokens: &'t [TokenId]) -> impl Iterator<Item = usize> + 't {
        let len = tokens.len();
        let n = (1..=self.max_ngram.min(len.saturating_sub(1)))
            .rev()
            .find(|&n| (0..len - n).any(|s| tokens[s..s + n] == tokens[len - n..]))
            .unwrap_or(0);
        (0..len.saturating_sub(n))
            .rev()
            .filter(move |&s| n > 0 && tokens[s..s + n] == tokens[len - n..])
            .map(move |s| s + n)
    }
}

impl Drafter for NgramDrafter {
    fn propose(&self, tokens: &[TokenId], max: usize) -> Vec<TokenId> {
        let len = tokens.len();
        self.continuations(tokens).next().map_or_else(Vec::new, |from| tokens[from..(from + max).min(len)].to_vec())
    }

    fn propose_tree(&self, tokens: &[TokenId], max_depth: usize, max_nodes: usize) -> DraftTree {
        let mut tree = DraftTree::chain(&[]);
        for from in self.continuations(tokens).take(self.max_branches) {
            add_path(&mut tree, &tokens[from..(from + max_depth).min(tokens.len())], max_nodes);
            if tree.len() >= max_nodes {
                break;
            }
        }
        tree
    }
}

/// Adds `path` below the root of a deterministic tree, sharing the nodes of the longest prefix
/// already there, without growing past `max_nodes`.
fn add_path(tree: &mut DraftTree, path: &[TokenId], max_nodes: usize) {
    let mut at = None;
    for &token in path {
        if let Some(&child) = tree.children(at).iter().find(|&&c| tree.nodes()[c].token == token) {
            at = Some(child);
            continue;
        }
        if tree.len() >= max_nodes {
            return;
        }
        match tree.push(at, token) {
            Ok(node) => at = Some(node),
            Err(_) => return, // unreachable: `at` is a node of this deterministic tree
        }
    }
}
