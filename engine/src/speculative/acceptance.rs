//! Lossless verification of a draft tree against the target's distributions (algorithms §2.0).
//!
//! The target's verification forward over `[root, node 0, node 1, …]` gives one processed
//! distribution per row (`targets[0]` after the root, `targets[1 + i]` after node `i`), each a
//! sparse row as [`crate::Sampler::distribution`] returns it: temperature, filters and
//! penalties already applied, exactly what plain decoding would sample from. The walk starts at
//! the root; at each row it tries the row's children in order, moves to the first one accepted
//! and starts over there with that node's fresh target `p`; when no child is accepted it emits
//! one token from what is left of `p` — the bonus token after a fully accepted path, otherwise
//! the correction. So a verification emits the accepted path's tokens plus exactly one more.
//!
//! # The rules at one row
//!
//! Let `p` be the target at the row and `x_1, x_2, …` its children's tokens.
//!
//! * **Greedy** ([`verify_greedy`]): move to the first child whose token is `argmax p`, else
//!   emit `argmax p`. Token-identical to greedy decoding.
//! * **Sampled, i.i.d. children** (each `x_i ~ q`; one child is Leviathan/Chen speculative
//!   sampling, several is SpecInfer's multi-draft rule): accept `x_i` with probability
//!   `min(1, p(x_i)/q(x_i))`; on rejection `p ← normalize(max(0, p − q))` before the next child;
//!   emit from the final `p`. Why exact: one step emits `x` through acceptance with probability
//!   `min(p, q)(x)` and rejects with probability `β = Σ max(0, p − q)`, so if whatever follows a
//!   rejection emits the residual `r = max(0, p − q)/β`, the total is `min(p, q) + max(0, p − q)
//!   = p`. The next child is a fresh draw from `q`, so the same step applied to `(r, q)`
//!   emits `r`; induction on the number of children, with the final sample from `p` as the base.
//! * **Sampled, without replacement** (`x_i` drawn from `q` renormalized without `x_1 … x_{i−1}`;
//!   the recursive rejection sampling of SpecTr / Jeon et al.): as above, and after rejecting
//!   `x_i` also `q ← normalize(q without x_i)`. The same step argument holds with the next child
//!   drawn from the renormalized `q`; the only new fact needed is that the residual gives the
//!   removed token no mass, which holds because a rejected `x` had `p(x) < q(x)` (otherwise it
//!   is accepted with probability 1), so `max(0, p(x) − q(x)) = 0`.
//! * **Deterministic** children (a point-mass proposal `q = δ_x`): accept `x_i` with probability
//!   `p(x_i)`; on rejection `p ← normalize(p without x_i)`; emit from the final `p`. This is
//!   sequential sampling from `p` by elimination, so exact for any sibling list fixed before
//!   verification. With a greedy target (a point mass, as the sampler gives at temperature 0)
//!   every sampled rule reduces to the greedy one.
//!
//! A rejection whose probability is exactly 0 in real arithmetic (e.g. `p = q`) can still be
//! drawn after f64 rounding; the residual is then empty and `p` is kept as it is.

use std::borrow::Cow;

use lcserve_common::TokenId;
use rand::Rng;
use thiserror::Error;

use super::distribution::{Distribution, InvalidDistribution};
use super::tree::{DraftTree, Drafting};

/// The result of verifying one draft tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    accepted: Vec<usize>,
    tokens: Vec<TokenId>,
    extra: TokenId,
    proposed: usize,
}

impl Verdict {
    fn new(tree: &DraftTree, accepted: Vec<usize>, extra: TokenId) -> Self {
        let nodes = tree.nodes();
        let tokens = accepted.iter().map(|&i| nodes[i].token).chain([extra]).collect();
        Self { accepted, tokens, extra, proposed: tree.len() }
    }

    /// The accepted nodes, a path from a child of the root downwards (possibly empty). Their KV
    /// is the part of the tree's KV to keep.
    pub fn accepted(&self) -> &[usize] {
        &self.accepted
    }

    /// Every token this verification emits: the accepted nodes' tokens, then [`extra`](Self::extra).
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }

    /// The one token the target adds after the accepted path: the bonus if no child of the last
    /// accepted row matched, the correction after a rejection.
    pub fn extra(&self) -> TokenId {
        self.extra
    }

    /// How many draft nodes were verified (the tree's size), for acceptance-rate metrics.
    pub fn proposed(&self) -> usize {
        self.proposed
    }
}

/// Why a draft could not be verified.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum VerifyError {
    /// The number of target rows does not match the tree.
    #[error("verify: {got} target rows for a tree of {nodes} nodes, expected one for the root plus one per node")]
    TargetRows {
        /// Nodes in the tree.
        nodes: usize,
        /// Target rows given.
        got: usize,
    },
    /// A target row the walk reached is not a probability distribution.
    #[error("verify: target row {row}: {source}")]
    InvalidTarget {
        /// The row (0 = root, `1 + i` = node `i`).
        row: usize,
        /// What is wrong with it.
        #[source]
        source: InvalidDistribution,
    },
}

/// Greedy verification: the longest path whose every token is the target's argmax, plus the
/// argmax after it. Ignores how the draft was drawn; consumes no randomness. Rows are checked as
/// the walk reaches them.
pub fn verify_greedy<T: AsRef<[(TokenId, f32)]>>(tree: &DraftTree, targets: &[T]) -> Result<Verdict, VerifyError> {
    let targets = Targets::new(tree, targets)?;
    let mut accepted = Vec::new();
    let mut at = None;
    loop {
        let argmax = targets.row(at)?.argmax();
        match tree.children(at).iter().find(|&&child| tree.nodes()[child].token == argmax) {
            Some(&child) => {
                accepted.push(child);
                at = Some(child);
            }
            None => return Ok(Verdict::new(tree, accepted, argmax)),
        }
    }
}

/// Sampled verification with the rule for the tree's [`Drafting`] (module docs): the
/// emitted tokens are distributed exactly as plain sampling from the targets. Reproducible for a
/// seeded `rng`. Rows are checked as the walk reaches them.
pub fn verify<T: AsRef<[(TokenId, f32)]>>(
    tree: &DraftTree,
    targets: &[T],
    rng: &mut impl Rng,
) -> Result<Verdict, VerifyError> {
    let targets = Targets::new(tree, targets)?;
    let mut accepted = Vec::new();
    let mut at = None;
    'rows: loop {
        let mut trial = Trial::new(tree, at, targets.row(at)?);
        for &child in tree.children(at) {
            let token = tree.nodes()[child].token;
            if rng.random::<f64>() < trial.acceptance(token) {
                accepted.push(child);
                at = Some(child);
                continue 'rows;
            }
            trial.reject(token);
        }
        let extra = trial.target.sample(rng);
        return Ok(Verdict::new(tree, accepted, extra));
    }
}

/// Every verdict [`verify`] can return for this draft, with its exact probability (the
/// probabilities sum to 1). Built on the same per-row acceptance steps as `verify`, so exact
/// tests of these probabilities check the rules themselves. Cost: one entry per (path, extra
/// token), so meant for small vocabularies — tests and analysis.
pub fn outcomes<T: AsRef<[(TokenId, f32)]>>(
    tree: &DraftTree,
    targets: &[T],
) -> Result<Vec<(Verdict, f64)>, VerifyError> {
    let targets = Targets::new(tree, targets)?;
    let mut out = Vec::new();
    explore(tree, &targets, None, &mut Vec::new(), 1.0, &mut out)?;
    Ok(out)
}

/// Adds the outcomes of the walk from `at`, reached along `path` with probability `reach`.
fn explore<T: AsRef<[(TokenId, f32)]>>(
    tree: &DraftTree,
    targets: &Targets<'_, T>,
    at: Option<usize>,
    path: &mut Vec<usize>,
    mut reach: f64,
    out: &mut Vec<(Verdict, f64)>,
) -> Result<(), VerifyError> {
    let mut trial = Trial::new(tree, at, targets.row(at)?);
    for &child in tree.children(at) {
        let token = tree.nodes()[child].token;
        let accept = trial.acceptance(token);
        if accept > 0.0 {
            path.push(child);
            explore(tree, targets, Some(child), path, reach * accept, out)?;
            path.pop();
        }
        reach *= 1.0 - accept;
        if reach == 0.0 {
            return Ok(());
        }
        trial.reject(token);
    }
    let emitted = trial.target.entries().iter().map(|&(token, p)| (Verdict::new(tree, path.clone(), token), reach * p));
    out.extend(emitted);
    Ok(())
}

/// The target rows, checked against the tree's size.
struct Targets<'a, T> {
    rows: &'a [T],
}

impl<'a, T: AsRef<[(TokenId, f32)]>> Targets<'a, T> {
    fn new(tree: &DraftTree, rows: &'a [T]) -> Result<Self, VerifyError> {
        if rows.len() != tree.len() + 1 {
            return Err(VerifyError::TargetRows { nodes: tree.len(), got: rows.len() });
        }
        Ok(Self { rows })
    }

    /// The target after `at` (`None` = the root); `at` is a node of the tree.
    fn row(&self, at: Option<usize>) -> Result<Distribution, VerifyError> {
        let row = at.map_or(0, |node| node + 1);
        Distribution::new(self.rows[row].as_ref()).map_err(|source| VerifyError::InvalidTarget { row, source })
    }
}

/// The acceptance test at one row while its children are tried in order.
struct Trial<'a> {
    /// What is left of the target after the rejections so far: the distribution the extra
    /// token is drawn from if no further child is accepted.
    target: Distribution,
    /// The proposal the remaining children are drawn from; `None` for deterministic drafts
    /// (point masses).
    proposal: Option<Cow<'a, Distribution>>,
    /// Whether a rejected token leaves the proposal (drawn without replacement).
    without_replacement: bool,
}

impl<'a> Trial<'a> {
    fn new(tree: &'a DraftTree, at: Option<usize>, target: Distribution) -> Self {
        let without_replacement = tree.drafting() == Drafting::WithoutReplacement;
        Self { target, proposal: tree.proposal(at).map(Cow::Borrowed), without_replacement }
    }

    /// The probability of accepting the next child, `token`, given the earlier ones were rejected.
    fn acceptance(&self, token: TokenId) -> f64 {
        let p = self.target.probability(token);
        match &self.proposal {
            None => p,
            Some(q) => {
                let q = q.probability(token);
                // `q > 0` for every drafted child (the tree checks it); 0 keeps the test total.
                if q > 0.0 { (p / q).min(1.0) } else { 0.0 }
            }
        }
    }

    /// Moves past a rejected child `token`. An update that would leave no mass cannot follow a
    /// rejection of positive probability, so it is skipped (module docs).
    fn reject(&mut self, token: TokenId) {
        let next = match &self.proposal {
            None => self.target.without(token),
            Some(q) => self.target.residual(q),
        };
        if let Some(next) = next {
            self.target = next;
        }
        if self.without_replacement
            && let Some(q) = self.proposal.as_ref().and_then(|q| q.without(token))
        {
            self.proposal = Some(Cow::Owned(q));
        }
    }
}
