//! The draft: a tree of proposed tokens rooted at the last committed token.
//!
//! Nodes are stored in topological order (every parent before its children), which is also the
//! order of the target's verification forward: row 0 is the root (the last committed token),
//! row `1 + i` is node `i`. A node at depth `d` sits at RoPE position `root position + d`,
//! whatever its index, and attends to the committed prefix, its ancestors and itself.
//!
//! The tree also records how its siblings were drawn ([`Drafting`]), because the acceptance
//! rule that keeps verification lossless depends on it, and for sampled drafts the proposal
//! distribution `q` each row's children were drawn from.

use lcserve_common::TokenId;
use thiserror::Error;

use super::distribution::{Distribution, InvalidDistribution};

/// How the drafter chose the children of a row; selects the acceptance rule (see `acceptance`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drafting {
    /// Chosen without randomness: n-gram lookup, a greedy drafter, top-k or beam children.
    /// Each child is a point-mass proposal. No proposal distribution is recorded.
    Deterministic,
    /// Each child of a row drawn independently from the row's proposal `q`, so siblings may
    /// repeat. A chain (one child per row) is plain speculative sampling.
    Iid,
    /// The children of a row drawn one after another from the row's proposal `q` with earlier
    /// siblings removed and `q` renormalized, so siblings are distinct.
    WithoutReplacement,
}

/// One drafted token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DraftNode {
    /// The proposed token.
    pub token: TokenId,
    /// The parent node's index; `None` for a child of the root.
    pub parent: Option<usize>,
    /// 1 for a child of the root, parent's depth + 1 below: the offset of the node's position
    /// from the root's.
    pub depth: usize,
}

/// Why a node or a proposal cannot be added to a [`DraftTree`].
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TreeError {
    /// The node named as a parent (or as the row to propose at) does not exist yet; parents
    /// must come before their children.
    #[error("draft tree: no node {node} (the tree has {len}; parents come before their children)")]
    UnknownNode {
        /// The index given.
        node: usize,
        /// Nodes in the tree at the time.
        len: usize,
    },
    /// A sampled draft's child was added before the proposal it was drawn from.
    #[error("draft tree: children of {} need their proposal distribution first", row_name(.at))]
    MissingProposal {
        /// The parent (`None` = the root).
        at: Option<usize>,
    },
    /// A proposal was given for a deterministic draft, which has none.
    #[error("draft tree: deterministic drafts take no proposal distribution")]
    ProposalForDeterministic,
    /// A row's proposal was given twice.
    #[error("draft tree: {} already has a proposal distribution", row_name(.at))]
    ProposalAlreadySet {
        /// The row (`None` = the root).
        at: Option<usize>,
    },
    /// The proposal is not a probability distribution.
    #[error("draft tree: proposal at {}: {source}", row_name(.at))]
    InvalidProposal {
        /// The row (`None` = the root).
        at: Option<usize>,
        /// What is wrong with it.
        #[source]
        source: InvalidDistribution,
    },
    /// A sampled child's token has probability 0 under the proposal it was supposedly drawn from.
    #[error("draft tree: token {token} under {} has probability 0 in its proposal", row_name(.at))]
    OutsideProposal {
        /// The parent (`None` = the root).
        at: Option<usize>,
        /// The child's token.
        token: TokenId,
    },
    /// A token repeated among siblings drawn without replacement.
    #[error("draft tree: token {token} drawn twice under {} without replacement", row_name(.at))]
    RepeatedSibling {
        /// The parent (`None` = the root).
        at: Option<usize>,
        /// The repeated token.
        token: TokenId,
    },
}

fn row_name(at: &Option<usize>) -> String {
    at.map_or_else(|| "the root".to_owned(), |node| format!("node {node}"))
}

/// A token tree rooted at the last committed token, valid by construction: every mutation
/// checks what it adds.
#[derive(Clone, Debug)]
pub struct DraftTree {
    drafting: Drafting,
    nodes: Vec<DraftNode>,
    /// Per row (0 = root, `1 + i` = node `i`): children in the order they were added, which is
    /// the order the verifier tries them.
    children: Vec<Vec<usize>>,
    /// Per row: the proposal its children were drawn from; always `None` for deterministic
    /// drafts, always set on rows with children otherwise.
    proposals: Vec<Option<Distribution>>,
}

impl DraftTree {
    /// An empty tree (just the root) whose siblings will be drawn as `drafting` says.
    pub fn new(drafting: Drafting) -> Self {
        Self { drafting, nodes: Vec::new(), children: vec![Vec::new()], proposals: vec![None] }
    }

    /// A deterministic chain: `tokens[0]` follows the root, each next token the one before.
    pub fn chain(tokens: &[TokenId]) -> Self {
        let mut tree = Self::new(Drafting::Deterministic);
        for (i, &token) in tokens.iter().enumerate() {
            let depth = i + 1;
            tree.nodes.push(DraftNode { token, parent: i.checked_sub(1), depth });
            tree.children[i].push(i);
            tree.children.push(Vec::new());
            tree.proposals.push(None);
        }
        tree
    }

    /// A sampled chain for speculative sampling: each step is a drafted token and the proposal
    /// row it was drawn from (the drafter's processed distribution at the position before it).
    pub fn sampled_chain<Q: AsRef<[(TokenId, f32)]>>(steps: &[(TokenId, Q)]) -> Result<Self, TreeError> {
        let mut tree = Self::new(Drafting::Iid);
        let mut at = None;
        for (token, q) in steps {
            tree.propose(at, q.as_ref())?;
            at = Some(tree.push(at, *token)?);
        }
        Ok(tree)
    }

    /// A deterministic tree from `(parent, token)` pairs in topological order (`parent` indexes
    /// the same list and must be smaller than the node's own index; `None` = child of the root).
    pub fn from_parents(nodes: &[(Option<usize>, TokenId)]) -> Result<Self, TreeError> {
        let mut tree = Self::new(Drafting::Deterministic);
        for &(parent, token) in nodes {
            tree.push(parent, token)?;
        }
        Ok(tree)
    }

    /// Records the proposal `q` (a sparse row, as in [`Distribution::new`]) the children of
    /// `at` (`None` = the root) are drawn from. Sampled drafts only; once per row, before its
    /// children.
    pub fn propose(&mut self, at: Option<usize>, q: &[(TokenId, f32)]) -> Result<(), TreeError> {
        if self.drafting == Drafting::Deterministic {
            return Err(TreeError::ProposalForDeterministic);
        }
        let row = self.row(at)?;
        if self.proposals[row].is_some() {
            return Err(TreeError::ProposalAlreadySet { at });
        }
        let q = Distribution::new(q).map_err(|source| TreeError::InvalidProposal { at, source })?;
        self.proposals[row] = Some(q);
        Ok(())
    }

    /// Adds `token` as the next child of `parent` (`None` = the root) and returns its index.
    /// For sampled drafts the parent's proposal must be set and give the token positive
    /// probability; drawn without replacement, siblings must differ.
    pub fn push(&mut self, parent: Option<usize>, token: TokenId) -> Result<usize, TreeError> {
        let row = self.row(parent)?;
        if self.drafting != Drafting::Deterministic {
            let q = self.proposals[row].as_ref().ok_or(TreeError::MissingProposal { at: parent })?;
            if q.probability(token) == 0.0 {
                return Err(TreeError::OutsideProposal { at: parent, token });
            }
            let repeated = self.children[row].iter().any(|&sibling| self.nodes[sibling].token == token);
            if self.drafting == Drafting::WithoutReplacement && repeated {
                return Err(TreeError::RepeatedSibling { at: parent, token });
            }
        }
        let node = self.nodes.len();
        let depth = parent.map_or(1, |p| self.nodes[p].depth + 1);
        self.nodes.push(DraftNode { token, parent, depth });
        self.children[row].push(node);
        self.children.push(Vec::new());
        self.proposals.push(None);
        Ok(node)
    }

    /// The tree without its nodes deeper than `max_depth`. A row's children share a depth, so
    /// a row keeps all of them or becomes a leaf (dropping its proposal), and every acceptance
    /// rule stays exact.
    pub fn truncated(&self, max_depth: usize) -> Self {
        let mut tree = Self::new(self.drafting);
        // Per old row (0 = root): its row in `tree`, if kept.
        let mut rows: Vec<Option<usize>> = vec![Some(0)];
        for node in &self.nodes {
            let kept_parent = rows[node.parent.map_or(0, |p| p + 1)];
            let row = kept_parent.filter(|_| node.depth <= max_depth).map(|parent_row| {
                tree.nodes.push(DraftNode { parent: parent_row.checked_sub(1), ..*node });
                tree.children[parent_row].push(tree.nodes.len() - 1);
                tree.children.push(Vec::new());
                tree.proposals.push(None);
                tree.nodes.len()
            });
            rows.push(row);
        }
        for (old, new) in rows.iter().enumerate() {
            if let Some(new) = *new
                && !tree.children[new].is_empty()
            {
                tree.proposals[new] = self.proposals[old].clone();
            }
        }
        tree
    }

    /// How the siblings were drawn.
    pub fn drafting(&self) -> Drafting {
        self.drafting
    }

    /// The drafted nodes in topological order.
    pub fn nodes(&self) -> &[DraftNode] {
        &self.nodes
    }

    /// Number of drafted nodes (the root not counted).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether nothing was drafted.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the draft is a chain: node `i` follows node `i - 1` (or the root, for `i = 0`).
    pub fn is_chain(&self) -> bool {
        self.nodes.iter().enumerate().all(|(i, node)| node.parent == i.checked_sub(1))
    }

    /// The parent row of each verification row — the root first, then the nodes — as the
    /// model's `SequenceInput::draft_tree` takes them: `None` for the root, `Some(0)` for its
    /// children.
    pub fn row_parents(&self) -> Vec<Option<usize>> {
        std::iter::once(None).chain(self.nodes.iter().map(|node| Some(node.parent.map_or(0, |p| p + 1)))).collect()
    }

    /// The depth of the deepest node (0 for an empty tree): the most draft tokens one
    /// verification can accept.
    pub fn depth(&self) -> usize {
        self.nodes.iter().map(|n| n.depth).max().unwrap_or(0)
    }

    /// The children of `at` (`None` = the root) in the order they are tried; empty for a leaf
    /// or an unknown node.
    pub fn children(&self, at: Option<usize>) -> &[usize] {
        self.row(at).map_or(&[], |row| &self.children[row])
    }

    /// The proposal the children of `at` were drawn from; `None` for deterministic drafts, for
    /// rows not expanded yet and for unknown nodes.
    pub fn proposal(&self, at: Option<usize>) -> Option<&Distribution> {
        self.row(at).ok().and_then(|row| self.proposals[row].as_ref())
    }

    /// The nodes from the root's child down to `node`, inclusive; empty for an unknown node.
    /// O(depth).
    pub fn path(&self, node: usize) -> Vec<usize> {
        let mut path: Vec<usize> = self.ancestry(Some(node)).collect();
        path.reverse();
        path
    }

    /// Whether `a` is a strict ancestor of `b` (the tree attention mask lets `b` see `a` iff
    /// this holds or `a == b`); false for unknown nodes. O(depth of `b`).
    pub fn is_ancestor(&self, a: usize, b: usize) -> bool {
        a < b && self.ancestry(Some(b)).skip(1).any(|n| n == a)
    }

    /// `node`, its parent, and so on up to a child of the root.
    fn ancestry(&self, node: Option<usize>) -> impl Iterator<Item = usize> + '_ {
        let start = node.filter(|&n| n < self.nodes.len());
        std::iter::successors(start, |&n| self.nodes[n].parent)
    }

    /// The row of `at` (0 = root), checked to exist.
    fn row(&self, at: Option<usize>) -> Result<usize, TreeError> {
        match at {
            None => Ok(0),
            Some(node) if node < self.nodes.len() => Ok(node + 1),
            Some(node) => Err(TreeError::UnknownNode { node, len: self.nodes.len() }),
        }
    }
}
