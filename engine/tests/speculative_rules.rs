//! Exact-distribution tests of the speculative acceptance rules (algorithms §2.0, test 2), no
//! Monte Carlo: on a 4-token vocabulary, with target and drafter tables that depend only on the
//! last token, every draft the drafter can produce is enumerated with its probability, every
//! accept/reject branch with its probability ([`outcomes`]), and the emitted tokens — continued
//! by plain sampling up to `depth + 1` tokens — must be distributed exactly as plain sampling
//! from the target, to 1e-12. Greedy verification must match greedy decoding token for token.

use std::collections::HashMap;

use lcserve_common::TokenId;
use lcserve_engine::speculative::{
    DraftTree, Drafting, InvalidDistribution, TreeError, VerifyError, outcomes, verify, verify_greedy,
};
use lcserve_engine::{Sampler, SamplingParams};
use rand::SeedableRng;
use rand::rngs::StdRng;

const V: usize = 4;
const TOLERANCE: f64 = 1e-12;

/// A toy model: row `t` is the (sparse, unnormalized f32) distribution of the token after `t`.
struct Table(Vec<Vec<(TokenId, f32)>>);

impl Table {
    fn dense(rows: [[f32; V]; V]) -> Self {
        Self(rows.iter().map(|row| (0..).zip(row.iter().copied()).filter(|&(_, p)| p > 0.0).collect()).collect())
    }

    /// Rows as a sampler with `params` processes `logits` (no penalties: they would make the
    /// rows depend on more than the last token).
    fn sampled(logits: [[f32; V]; V], params: SamplingParams) -> Self {
        let mut sampler = Sampler::new(params, V).expect("sampler");
        Self(logits.iter().map(|row| sampler.distribution(row, &[], &[]).expect("distribution")).collect())
    }

    fn row(&self, last: TokenId) -> &[(TokenId, f32)] {
        &self.0[last as usize]
    }

    /// The row normalized in f64, the way the test reads every probability.
    fn probs(&self, last: TokenId) -> Vec<(TokenId, f64)> {
        let row = self.row(last);
        let total: f64 = row.iter().map(|&(_, p)| f64::from(p)).sum();
        row.iter().map(|&(t, p)| (t, f64::from(p) / total)).collect()
    }

    fn prob(&self, last: TokenId, token: TokenId) -> f64 {
        self.probs(last).iter().find(|&&(t, _)| t == token).map_or(0.0, |&(_, p)| p)
    }

    /// Greedy decoding: argmax, ties to the lowest id.
    fn greedy(&self, root: TokenId, len: usize) -> Vec<TokenId> {
        let mut out: Vec<TokenId> = Vec::new();
        for _ in 0..len {
            let probs = self.probs(out.last().copied().unwrap_or(root));
            let best = probs.iter().fold(None, |best: Option<(TokenId, f64)>, &(t, p)| match best {
                Some((bt, bp)) if bp > p || (bp == p && bt < t) => Some((bt, bp)),
                _ => Some((t, p)),
            });
            out.push(best.expect("non-empty row").0);
        }
        out
    }
}

/// Target: non-dyadic, with zeros where the drafter has mass (row 1: token 2; row 3: token 1).
fn target() -> Table {
    Table::dense([[0.4, 0.3, 0.2, 0.1], [0.1, 0.6, 0.0, 0.3], [0.25, 0.25, 0.25, 0.25], [0.7, 0.0, 0.1, 0.2]])
}

/// Drafter: zeros where the target has mass (row 1: tokens 1 and 3; row 3: token 3).
fn drafter() -> Table {
    Table::dense([[0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.5, 0.0], [0.3, 0.3, 0.2, 0.2], [0.6, 0.2, 0.2, 0.0]])
}

const LOGITS: [[f32; V]; V] =
    [[1.0, 2.0, 0.5, -1.0], [0.3, 0.1, 2.2, 1.9], [-0.5, 0.0, 0.7, 0.2], [2.5, -2.0, 1.0, 1.1]];

/// A target as the real sampler processes it: temperature, top-k 3 and top-p leave zeros.
fn sampler_target() -> Table {
    let params = SamplingParams { temperature: 0.7, top_k: Some(3), top_p: 0.9, ..SamplingParams::default() };
    Table::sampled(LOGITS, params)
}

/// A drafter that is a hotter, unfiltered view of the same logits.
fn sampler_drafter() -> Table {
    Table::sampled(LOGITS, SamplingParams { temperature: 1.4, ..SamplingParams::default() })
}

/// Parent of each node for a tree whose every row at depth `d` has `shape[d]` children, in
/// breadth-first (topological) order.
fn shape_parents(shape: &[usize]) -> Vec<Option<usize>> {
    let mut parents = Vec::new();
    let mut level = vec![None];
    for &k in shape {
        let mut next = Vec::new();
        for &parent in &level {
            for _ in 0..k {
                next.push(Some(parents.len()));
                parents.push(parent);
            }
        }
        level = next;
    }
    parents
}

/// Every assignment of tokens to `n` nodes.
fn assignments(n: usize) -> impl Iterator<Item = Vec<TokenId>> {
    (0..V.pow(n as u32)).map(move |mut code| {
        (0..n)
            .map(|_| {
                let token = (code % V) as TokenId;
                code /= V;
                token
            })
            .collect()
    })
}

/// Every draft of `shape` a sampling drafter can produce from `root`, with its probability.
fn sampled_drafts(drafting: Drafting, q: &Table, root: TokenId, shape: &[usize]) -> Vec<(f64, DraftTree)> {
    let parents = shape_parents(shape);
    let mut drafts = Vec::new();
    for tokens in assignments(parents.len()) {
        let parent_token = |i: usize| parents[i].map_or(root, |p| tokens[p]);
        // Per row: the proposal mass already drawn (without replacement) and the tokens drawn.
        let mut drawn: HashMap<Option<usize>, (f64, Vec<TokenId>)> = HashMap::new();
        let mut prob = 1.0;
        for (i, &token) in tokens.iter().enumerate() {
            let (used, siblings) = drawn.entry(parents[i]).or_default();
            let qx = q.prob(parent_token(i), token);
            prob *= match drafting {
                Drafting::Iid => qx,
                _ if qx == 0.0 || siblings.contains(&token) => 0.0,
                _ => qx / (1.0 - *used),
            };
            *used += qx;
            siblings.push(token);
        }
        if prob == 0.0 {
            continue;
        }
        let mut tree = DraftTree::new(drafting);
        for (i, &token) in tokens.iter().enumerate() {
            if tree.proposal(parents[i]).is_none() {
                tree.propose(parents[i], q.row(parent_token(i))).expect("propose");
            }
            tree.push(parents[i], token).expect("push");
        }
        drafts.push((prob, tree));
    }
    let total: f64 = drafts.iter().map(|(p, _)| p).sum();
    assert!((total - 1.0).abs() < TOLERANCE, "draft probabilities sum to {total}");
    drafts
}

/// Every deterministic tree of `shape` (each one must be exact on its own).
fn deterministic_drafts(shape: &[usize]) -> impl Iterator<Item = DraftTree> {
    let parents = shape_parents(shape);
    assignments(parents.len()).map(move |tokens| {
        let nodes: Vec<_> = parents.iter().copied().zip(tokens).collect();
        DraftTree::from_parents(&nodes).expect("tree")
    })
}

/// The target rows of the verification forward over `[root, nodes…]`.
fn target_rows<'a>(tree: &DraftTree, p: &'a Table, root: TokenId) -> Vec<&'a [(TokenId, f32)]> {
    std::iter::once(root).chain(tree.nodes().iter().map(|n| n.token)).map(|t| p.row(t)).collect()
}

/// Adds `prob` × plain sampling's continuation of `seq` to `len` tokens (or its first `len`).
fn continue_plain(mut seq: Vec<TokenId>, prob: f64, p: &Table, root: TokenId, len: usize, out: &mut Strings) {
    if seq.len() >= len {
        seq.truncate(len);
        *out.entry(seq).or_default() += prob;
        return;
    }
    for (token, pt) in p.probs(seq.last().copied().unwrap_or(root)) {
        let mut next = seq.clone();
        next.push(token);
        continue_plain(next, prob * pt, p, root, len, out);
    }
}

type Strings = HashMap<Vec<TokenId>, f64>;

/// The distribution of the first `len` tokens when each draft is verified against `p`.
fn speculative(drafts: &[(f64, DraftTree)], p: &Table, root: TokenId, len: usize) -> Strings {
    let mut out = Strings::new();
    for (draft_prob, tree) in drafts {
        let verdicts = outcomes(tree, &target_rows(tree, p, root)).expect("outcomes");
        let total: f64 = verdicts.iter().map(|(_, prob)| prob).sum();
        assert!((total - 1.0).abs() < TOLERANCE, "outcome probabilities sum to {total} for {tree:?}");
        for (verdict, prob) in verdicts {
            assert_eq!(verdict.proposed(), tree.len());
            assert_eq!(verdict.tokens().len(), verdict.accepted().len() + 1);
            continue_plain(verdict.tokens().to_vec(), draft_prob * prob, p, root, len, &mut out);
        }
    }
    out
}

fn plain(p: &Table, root: TokenId, len: usize) -> Strings {
    let mut out = Strings::new();
    continue_plain(Vec::new(), 1.0, p, root, len, &mut out);
    out
}

fn assert_exact(got: &Strings, want: &Strings, what: &str) {
    for key in got.keys().chain(want.keys()) {
        let (g, w) = (got.get(key).copied().unwrap_or(0.0), want.get(key).copied().unwrap_or(0.0));
        assert!((g - w).abs() <= TOLERANCE, "{what}: P({key:?}) = {g}, plain sampling gives {w}");
    }
}

/// Sampled drafts of every shape from every root, verified against `p`, emit exactly `p`.
fn check_sampled(drafting: Drafting, p: &Table, q: &Table, shapes: &[&[usize]], roots: &[TokenId]) {
    for &shape in shapes {
        for &root in roots {
            let drafts = sampled_drafts(drafting, q, root, shape);
            let len = shape.len() + 1;
            assert_exact(
                &speculative(&drafts, p, root, len),
                &plain(p, root, len),
                &format!("{drafting:?} {shape:?} root {root}"),
            );
        }
    }
}

const ROOTS: [TokenId; V] = [0, 1, 2, 3];

#[test]
fn chain_speculative_sampling_is_exact() {
    check_sampled(Drafting::Iid, &target(), &drafter(), &[&[1], &[1, 1], &[1, 1, 1]], &ROOTS);
}

#[test]
fn iid_tree_is_exact() {
    check_sampled(Drafting::Iid, &target(), &drafter(), &[&[2], &[3], &[2, 2], &[3, 1]], &ROOTS);
}

#[test]
fn without_replacement_tree_is_exact() {
    check_sampled(Drafting::WithoutReplacement, &target(), &drafter(), &[&[2], &[2, 2], &[2, 1, 1]], &ROOTS);
    // Three distinct children need three tokens in the root's proposal (row 1 has two).
    check_sampled(Drafting::WithoutReplacement, &target(), &drafter(), &[&[3], &[3, 1]], &[0, 2]);
}

#[test]
fn deterministic_drafts_are_exact_one_tree_at_a_time() {
    let p = target();
    for shape in [&[1, 1][..], &[3], &[4], &[2, 1], &[2, 2]] {
        for tree in deterministic_drafts(shape) {
            for root in ROOTS {
                let len = shape.len() + 1;
                let got = speculative(&[(1.0, tree.clone())], &p, root, len);
                assert_exact(&got, &plain(&p, root, len), &format!("{tree:?} root {root}"));
            }
        }
    }
}

#[test]
fn sampler_processed_distributions_are_exact() {
    let (p, q) = (sampler_target(), sampler_drafter());
    assert!(p.0.iter().any(|row| row.len() < V), "the filters should leave zeros where q has mass");
    for drafting in [Drafting::Iid, Drafting::WithoutReplacement] {
        check_sampled(drafting, &p, &q, &[&[1, 1], &[2, 2]], &ROOTS);
    }
    for tree in deterministic_drafts(&[2, 1]) {
        assert_exact(&speculative(&[(1.0, tree.clone())], &p, 0, 3), &plain(&p, 0, 3), &format!("{tree:?}"));
    }
}

#[test]
fn zero_mass_edges() {
    let (p, q) = (target(), drafter());
    // After token 1 the drafter proposes 0 or 2; the target gives 2 no mass and 1 (which the
    // drafter never proposes) 0.6.
    let drafts = sampled_drafts(Drafting::Iid, &q, 1, &[1]);
    for (_, tree) in &drafts {
        for (verdict, prob) in outcomes(tree, &target_rows(tree, &p, 1)).expect("outcomes") {
            if tree.nodes()[0].token == 2 {
                assert!(verdict.accepted().is_empty(), "a token the target excludes is never accepted");
            }
            assert!(prob == 0.0 || verdict.tokens()[0] != 2, "the target never emits 2 after 1");
        }
    }
    let first = speculative(&drafts, &p, 1, 1);
    assert!((first[&vec![1]] - p.prob(1, 1)).abs() <= TOLERANCE, "token 1 comes only from the residual: {first:?}");
    assert_exact(&first, &plain(&p, 1, 1), "first token after 1");
}

#[test]
fn identical_target_and_drafter_accept_everything() {
    let p = target();
    for (drafting, shape) in
        [(Drafting::Iid, &[1, 1, 1][..]), (Drafting::Iid, &[2, 2]), (Drafting::WithoutReplacement, &[2, 2])]
    {
        for root in ROOTS {
            for (_, tree) in sampled_drafts(drafting, &p, root, shape) {
                let verdicts = outcomes(&tree, &target_rows(&tree, &p, root)).expect("outcomes");
                let full: f64 =
                    verdicts.iter().filter(|(v, _)| v.accepted().len() == shape.len()).map(|(_, pr)| pr).sum();
                assert!((full - 1.0).abs() <= TOLERANCE, "{drafting:?} {shape:?}: full acceptance {full}");
                // The first child of each row is the one accepted.
                assert!(
                    verdicts
                        .iter()
                        .all(|(v, _)| v.accepted().iter().all(|&n| tree.children(tree.nodes()[n].parent)[0] == n))
                );
            }
        }
    }
}

#[test]
fn greedy_is_the_longest_match_plus_the_bonus() {
    let p = target();
    let greedy_target = Table(ROOTS.iter().map(|&t| vec![(p.greedy(t, 1)[0], 1.0)]).collect::<Vec<_>>());
    for shape in [&[1, 1, 1][..], &[2, 2], &[4, 1]] {
        for tree in deterministic_drafts(shape) {
            for root in ROOTS {
                let verdict = verify_greedy(&tree, &target_rows(&tree, &p, root)).expect("greedy");
                let n = verdict.accepted().len();
                assert_eq!(verdict.tokens(), &p.greedy(root, n + 1)[..], "{tree:?} root {root}");
                let last = verdict.accepted().last().copied();
                assert!(
                    tree.children(last).iter().all(|&c| tree.nodes()[c].token != verdict.extra()),
                    "not the longest match"
                );
                // The sampler's greedy rows are point masses; every sampled rule then agrees.
                let point_masses = target_rows(&tree, &greedy_target, root);
                assert_eq!(verify_greedy(&tree, &point_masses).expect("greedy"), verdict);
                let all = outcomes(&tree, &point_masses).expect("outcomes");
                assert_eq!(all.len(), 1);
                assert_eq!(all[0], (verdict.clone(), 1.0));
                assert_eq!(verify(&tree, &point_masses, &mut StdRng::seed_from_u64(7)).expect("verify"), verdict);
            }
        }
    }
    // A sampled draft verified greedily, against a full drafter row.
    let q = drafter();
    for (_, tree) in sampled_drafts(Drafting::Iid, &q, 0, &[2, 1]) {
        let verdict = verify_greedy(&tree, &target_rows(&tree, &p, 0)).expect("greedy");
        assert_eq!(verdict.tokens(), &p.greedy(0, verdict.tokens().len())[..]);
    }
}

#[test]
fn verify_draws_a_possible_outcome_reproducibly() {
    let (p, q) = (target(), drafter());
    let trees = [
        sampled_drafts(Drafting::Iid, &q, 0, &[2, 2]).swap_remove(100).1,
        sampled_drafts(Drafting::WithoutReplacement, &q, 0, &[3, 1]).swap_remove(20).1,
        DraftTree::from_parents(&[(None, 0), (None, 1), (Some(0), 0), (Some(1), 1)]).expect("tree"),
        DraftTree::chain(&[1, 1, 3]),
    ];
    for tree in trees {
        let rows = target_rows(&tree, &p, 0);
        let possible = outcomes(&tree, &rows).expect("outcomes");
        for seed in 0..200 {
            let verdict = verify(&tree, &rows, &mut StdRng::seed_from_u64(seed)).expect("verify");
            assert!(possible.iter().any(|(v, prob)| *v == verdict && *prob > 0.0), "{verdict:?}");
            assert_eq!(verify(&tree, &rows, &mut StdRng::seed_from_u64(seed)).expect("verify"), verdict);
        }
    }
}

#[test]
fn tree_helpers() {
    let tree =
        DraftTree::from_parents(&[(None, 5), (None, 6), (Some(0), 7), (Some(2), 8), (Some(1), 9)]).expect("tree");
    assert_eq!(tree.len(), 5);
    assert_eq!(tree.depth(), 3);
    assert_eq!(tree.nodes().iter().map(|n| n.depth).collect::<Vec<_>>(), [1, 1, 2, 3, 2]);
    assert_eq!(tree.children(None), [0, 1]);
    assert_eq!(tree.children(Some(0)), [2]);
    assert!(tree.children(Some(3)).is_empty() && tree.children(Some(99)).is_empty());
    assert_eq!(tree.path(3), [0, 2, 3]);
    assert_eq!(tree.path(4), [1, 4]);
    assert!(tree.path(99).is_empty());
    assert!(tree.is_ancestor(0, 3) && tree.is_ancestor(2, 3) && tree.is_ancestor(1, 4));
    assert!(!tree.is_ancestor(3, 3) && !tree.is_ancestor(1, 3) && !tree.is_ancestor(3, 0) && !tree.is_ancestor(0, 99));
    let shallow = tree.truncated(2);
    assert_eq!(
        shallow.nodes().iter().map(|n| (n.parent, n.token)).collect::<Vec<_>>(),
        [(None, 5), (None, 6), (Some(0), 7), (Some(1), 9)]
    );
    assert_eq!(tree.truncated(1).len(), 2);
    assert_eq!(tree.truncated(3).nodes(), tree.nodes());
    let chain = DraftTree::chain(&[3, 2, 1]);
    assert_eq!(
        chain.nodes().iter().map(|n| (n.parent, n.depth)).collect::<Vec<_>>(),
        [(None, 1), (Some(0), 2), (Some(1), 3)]
    );
    assert_eq!(chain.drafting(), Drafting::Deterministic);
    assert!(DraftTree::new(Drafting::Iid).is_empty());
    let q = [(1, 0.5), (2, 0.5)];
    let sampled = DraftTree::sampled_chain(&[(1, &q[..]), (2, &q[..])]).expect("chain");
    assert_eq!(sampled.drafting(), Drafting::Iid);
    assert_eq!(sampled.proposal(Some(0)).map(|d| d.probability(2)), Some(0.5));
    // Truncated, the last kept node is a leaf without a proposal.
    let short = sampled.truncated(1);
    assert_eq!((short.len(), short.drafting()), (1, Drafting::Iid));
    assert!(short.proposal(None).is_some() && short.proposal(Some(0)).is_none());
}

#[test]
fn tree_errors() {
    use TreeError::*;
    assert_eq!(DraftTree::from_parents(&[(Some(0), 1)]).err(), Some(UnknownNode { node: 0, len: 0 }));
    assert_eq!(DraftTree::from_parents(&[(None, 1), (Some(5), 2)]).err(), Some(UnknownNode { node: 5, len: 1 }));
    let mut tree = DraftTree::from_parents(&[(None, 1)]).expect("tree");
    assert_eq!(tree.propose(None, &[(1, 1.0)]), Err(ProposalForDeterministic));

    let q = [(1, 0.25), (2, 0.75)];
    let mut tree = DraftTree::new(Drafting::WithoutReplacement);
    assert_eq!(tree.push(None, 1), Err(MissingProposal { at: None }));
    assert_eq!(tree.propose(Some(0), &q), Err(UnknownNode { node: 0, len: 0 }));
    tree.propose(None, &q).expect("propose");
    assert_eq!(tree.propose(None, &q), Err(ProposalAlreadySet { at: None }));
    assert_eq!(tree.push(None, 3), Err(OutsideProposal { at: None, token: 3 }));
    assert_eq!(tree.push(None, 1), Ok(0));
    assert_eq!(tree.push(None, 1), Err(RepeatedSibling { at: None, token: 1 }));
    assert_eq!(tree.push(Some(0), 2), Err(MissingProposal { at: Some(0) }));
    assert_eq!(tree.propose(Some(0), &[]), Err(InvalidProposal { at: Some(0), source: InvalidDistribution::NoMass }));
    assert_eq!(
        tree.propose(Some(0), &[(2, 0.5), (2, 0.5)]),
        Err(InvalidProposal { at: Some(0), source: InvalidDistribution::DuplicateToken { token: 2 } })
    );
    let nan = tree.propose(Some(0), &[(2, f32::NAN)]);
    assert!(matches!(nan, Err(InvalidProposal { source: InvalidDistribution::Probability { token: 2, .. }, .. })));
    assert!(matches!(
        tree.propose(Some(0), &[(2, -0.5)]),
        Err(InvalidProposal { source: InvalidDistribution::Probability { token: 2, .. }, .. })
    ));

    // I.i.d. siblings may repeat.
    let mut iid = DraftTree::new(Drafting::Iid);
    iid.propose(None, &q).expect("propose");
    assert_eq!((iid.push(None, 2), iid.push(None, 2)), (Ok(0), Ok(1)));
}

#[test]
fn verify_errors() {
    let tree = DraftTree::chain(&[1, 2]);
    let row: &[(TokenId, f32)] = &[(1, 1.0)];
    let mut rng = StdRng::seed_from_u64(0);
    let short = [row, row];
    assert_eq!(verify(&tree, &short, &mut rng), Err(VerifyError::TargetRows { nodes: 2, got: 2 }));
    assert_eq!(verify_greedy(&tree, &short), Err(VerifyError::TargetRows { nodes: 2, got: 2 }));
    assert_eq!(outcomes(&tree, &short).err(), Some(VerifyError::TargetRows { nodes: 2, got: 2 }));
    // Row 1 (after node 0) is reached only once node 0 is accepted.
    let empty = [row, &[], row];
    let invalid = Err(VerifyError::InvalidTarget { row: 1, source: InvalidDistribution::NoMass });
    assert_eq!(verify(&tree, &empty, &mut rng), invalid);
    assert_eq!(verify_greedy(&tree, &empty), invalid);
    assert_eq!(outcomes(&tree, &empty).err(), invalid.err());
    let negative: [&[(TokenId, f32)]; 3] = [&[(1, -1.0)], row, row];
    assert!(matches!(verify(&tree, &negative, &mut rng), Err(VerifyError::InvalidTarget { row: 0, .. })));
}
