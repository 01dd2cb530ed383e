//! Offline kernel-aware pattern search (algorithms.md §1.4): which pattern each query head of a
//! layer should prefill with, judged on one prompt's q/kv against dense attention.
//!
//! * [`SearchSpace`] — one candidate per pattern split, each budget scaled so the candidate
//!   executes about the same fraction of causal pairs on a one-shot prefill of the calibration
//!   length. "Kernel-aware": the cost is counted on the index the kernel would run
//!   ([`planned_density`] — 64-key tiles for slashes and blocks, one key per row for columns),
//!   not on the conceptual mask, so candidates are compared at equal compute.
//! * [`search_heads`] — runs every candidate for all query heads through the online path (the
//!   index builders, then [`sparse_attention`] — what [`super::sparse_prefill_attention`] does,
//!   with each head's index at hand to measure its executed mask) and scores every head with both
//!   objectives of §1.4: the relative L2 error of its output rows (the paper's objective) and
//!   the dense attention mass its executed mask keeps on sampled rows (the released
//!   `search_pattern`'s). Each head's winner is the best candidate under the chosen
//!   [`Objective`], ties to the earlier candidate; everything is deterministic.
//!
//! A plan is not a measurement: vertical-slash's cost depends on where its lines fall, and a
//! slash far from the diagonal costs a 64-key tile per row, not one key. So the search first
//! measures what every candidate executes on every head (and its recall, from the index alone);
//! a candidate executing more than [`SearchSpace::max_density`] there does not compete on that
//! head (unless every candidate does; then only the cheapest ones compete), so comparisons stay
//! at about equal cost — and the kernel, most of the search's time, runs only for competitors.

use rayon::prelude::*;

use super::index::{HeadIndex, QueryBlocks};
use super::vertical_slash::{FORCED_SLASHES, FORCED_VERTICALS};
use super::{BLOCK, HeadPattern, a_shape_index, key_scores, sparse_attention, vertical_slash_index};
use crate::attention::{AttnShape, PagedKv, validate};
use crate::error::{KernelError, Result};
use crate::simd;

/// Query density a calibration aims at when none is given: 30% of the causal pairs.
pub const DEFAULT_DENSITY: f64 = 0.3;

/// Rows on which attention recall is averaged, spread evenly over the chunk's second half and
/// ending at its last row. Not the last 64 rows alone: vertical-slash fits its lines to exactly
/// those, so recall there flatters it (on a block-sparse head it keeps all their mass and
/// little anywhere else); the released search averages over every row past a threshold.
pub const RECALL_ROWS: usize = 64;

/// How far above the planned density a candidate may execute on a head and still compete:
/// "about equal cost" means within 1.5×.
pub const BUDGET_SLACK: f64 = 1.5;

/// What "best" means for a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Lowest relative L2 error of the head's output rows (paper, `search_pattern_v2`).
    OutputError,
    /// Highest mean dense attention mass kept on [`RECALL_ROWS`] sampled rows (released
    /// `search_pattern`).
    Recall,
}

impl Objective {
    /// The candidate's value under this objective; `None` where it did not compete.
    pub fn value(self, score: &CandidateScore) -> Option<f64> {
        match self {
            Self::OutputError => score.output_error,
            Self::Recall => score.output_error.map(|_| score.recall),
        }
    }

    /// Whether `a` is strictly better than `b`.
    fn better(self, a: f64, b: f64) -> bool {
        match self {
            Self::OutputError => a < b,
            Self::Recall => a > b,
        }
    }
}

/// How one candidate did on one query head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CandidateScore {
    /// `‖O_sparse − O_dense‖_F / ‖O_dense‖_F` over the head's rows (absolute when the dense
    /// output is zero); `None` where the candidate did not compete on the head, being over
    /// budget there — then the kernel was not run for it.
    pub output_error: Option<f64>,
    /// Mean over the [`RECALL_ROWS`] sampled rows of the dense softmax mass inside the executed
    /// mask (1 for an empty chunk).
    pub recall: f64,
    /// Executed density: (query, key) pairs the kernel computed / causal pairs.
    pub density: f64,
}

/// The search's answer for one query head.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadChoice {
    /// Index of the winning candidate.
    pub best: usize,
    /// The winner's value under the objective searched with.
    pub score: f64,
    /// Every candidate's scores, in candidate order.
    pub candidates: Vec<CandidateScore>,
}

/// A pattern family and how it splits a budget of keys per row.
#[derive(Debug, Clone, Copy)]
enum Split {
    /// `init` sink keys out of the budget, the rest local window.
    AShape { init: f64 },
    /// `vertical` key columns out of the budget, the rest slash lines.
    VerticalSlash { vertical: f64 },
    /// The budget is a number of key blocks.
    BlockSparse,
}

/// The candidate splits (§1.4, Table 7 space). A-shape splits like the paper's (1024, 4096);
/// vertical-slash splits like the released `search_pattern`'s (30, 800), (100, 750),
/// (500, 700), (3500, 100) — verticals at 4%, 12%, 42% and 97% of the lines, none next to
/// A-shape's 20%, since on an A-shaped head vertical-slash with A-shape's own split executes
/// the same mask and the two would be indistinguishable. Block-sparse as in the paper.
const SPLITS: [Split; 6] = [
    Split::AShape { init: 1024.0 / 5120.0 },
    Split::VerticalSlash { vertical: 30.0 / 830.0 },
    Split::VerticalSlash { vertical: 100.0 / 850.0 },
    Split::VerticalSlash { vertical: 500.0 / 1200.0 },
    Split::VerticalSlash { vertical: 3500.0 / 3600.0 },
    Split::BlockSparse,
];

impl Split {
    /// The pattern spending `budget` keys per row (key blocks for block-sparse); monotone: a
    /// larger budget never executes fewer pairs. Vertical-slash budgets are raised to the lines
    /// the estimator always keeps, so the pattern states what runs.
    fn pattern(self, budget: usize) -> HeadPattern {
        let part = |share: f64| (budget as f64 * share).round() as usize;
        match self {
            Self::AShape { init } => {
                HeadPattern::AShape { n_init: part(init), n_local: (budget - part(init)).max(1), n_last: 0 }
            }
            Self::VerticalSlash { vertical } => HeadPattern::VerticalSlash {
                vertical: part(vertical).max(FORCED_VERTICALS),
                slash: (budget - part(vertical)).max(FORCED_SLASHES),
            },
            Self::BlockSparse => HeadPattern::BlockSparse { blocks: budget },
        }
    }
}

/// The candidates of a search and the cost they are compared at.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    /// One A-shape, up to four vertical-slash splits, one block-sparse, in that order.
    pub candidates: Vec<HeadPattern>,
    /// Executed density every budget was fitted to, in `(0, 1]`.
    pub density: f64,
}

impl SearchSpace {
    /// The candidates for a prompt of `len` tokens at about `density` of the causal pairs each
    /// (clamped to `(0, 1]`). Each budget is the one whose [`planned_density`] is nearest the
    /// target; where the lines vertical-slash always keeps already exceed it, the smallest
    /// budget is used, and splits that end up equal (short prompts) are kept once.
    /// Cost: `O(log len)` index builds of `len` queries per candidate.
    pub fn new(len: usize, density: f64) -> Self {
        let density = density.clamp(f64::MIN_POSITIVE, 1.0);
        let mut candidates: Vec<HeadPattern> = Vec::with_capacity(SPLITS.len());
        for pattern in SPLITS.iter().map(|&split| fit(split, len.max(1), density)) {
            if !candidates.contains(&pattern) {
                candidates.push(pattern);
            }
        }
        Self { candidates, density }
    }

    /// Most a candidate may execute on a head and still compete there: [`BUDGET_SLACK`] × the
    /// planned density.
    pub fn max_density(&self) -> f64 {
        BUDGET_SLACK * self.density
    }
}

/// The budget of `split` whose planned density is nearest `target`.
fn fit(split: Split, len: usize, target: f64) -> HeadPattern {
    let density = |budget: usize| planned_density(&split.pattern(budget), len);
    // Smallest budget in 1..=len reaching the target (len reaches density 1 for every split).
    let (mut lo, mut hi) = (1, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if density(mid) >= target { hi = mid } else { lo = mid + 1 }
    }
    let below = lo.saturating_sub(1).max(1);
    let best = if (density(below) - target).abs() <= (density(lo) - target).abs() { below } else { lo };
    split.pattern(best)
}

/// Executed density of `pattern` on a one-shot prefill of `len` tokens, counted on the index
/// the kernel would run with the placement that is exact or typical for each pattern:
/// A-shape and block-sparse cost the same wherever their keys are; vertical-slash is planned
/// with its verticals at the start (always visible, as sinks are — the costliest placement) and
/// its slashes next to the diagonal (merged into one band, as local lines are — the cheapest).
/// What a head really executes is measured by [`search_heads`].
pub fn planned_density(pattern: &HeadPattern, len: usize) -> f64 {
    let blocks = QueryBlocks::new(len, len);
    let index = match *pattern {
        HeadPattern::Dense => HeadIndex::dense(&blocks),
        HeadPattern::AShape { n_init, n_local, n_last } => a_shape_index(&blocks, n_init, n_local, n_last),
        HeadPattern::VerticalSlash { vertical, slash } => {
            let verticals: Vec<u32> = (0..vertical.max(FORCED_VERTICALS).min(len) as u32).collect();
            let offsets: Vec<u32> = (0..slash.max(FORCED_SLASHES).min(len) as u32).collect();
            vertical_slash_index(&blocks, &verticals, &offsets)
        }
        HeadPattern::BlockSparse { blocks: k } => {
            let mut index = HeadIndex::with_capacity(blocks.count());
            for t in 0..blocks.count() {
                let end = blocks.positions(t).end;
                let diagonal = (end - 1) / BLOCK;
                let first = diagonal + 1 - k.max(1).min(diagonal + 1);
                index.push_block(&[((first * BLOCK) as u32, end as u32)], &[]);
            }
            index
        }
    };
    density_of(&index, &blocks)
}

/// Computed / causal pairs (1 for an empty chunk).
fn density_of(index: &HeadIndex, blocks: &QueryBlocks) -> f64 {
    match blocks.causal_pairs() {
        0 => 1.0,
        causal => index.computed_pairs(blocks) as f64 / causal as f64,
    }
}

/// Evaluates every candidate of `space` on every query head of one layer and picks each head's
/// best under `objective` among those within budget (see the module docs).
///
/// `q`, `kv`, `shape` and `scale` are what the layer's attention receives (same layout contract
/// as [`crate::attention`]); `dense` is that call's output, the reference. Returns one
/// [`HeadChoice`] per query head. Cost per candidate: two index builds and the sparse kernel
/// over the heads it competes on (about its density × their share of a dense attention), plus
/// `O(RECALL_ROWS · len · head_dim)` once per head for the recall reference; memory
/// `O(n_heads · RECALL_ROWS · len)`.
#[allow(clippy::too_many_arguments)]
pub fn search_heads(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    dense: &[f32],
    space: &SearchSpace,
    objective: Objective,
) -> Result<Vec<HeadChoice>> {
    validate("search_heads", q, nq, kv, shape, dense.len(), None)?;
    let candidates = &space.candidates;
    if candidates.is_empty() {
        return Err(KernelError::InvalidShape { op: "search_heads", detail: "no candidate patterns".into() });
    }
    let blocks = QueryBlocks::new(nq, kv.len);
    let rows = recall_rows(nq);
    let weights: Vec<Vec<f32>> =
        (0..shape.n_heads).into_par_iter().map(|h| row_weights(q, nq, kv, shape, h, scale, &rows)).collect();
    let mut scores: Vec<Vec<CandidateScore>> = vec![Vec::with_capacity(candidates.len()); shape.n_heads];
    for pattern in candidates {
        let measured: Vec<CandidateScore> = (0..shape.n_heads)
            .into_par_iter()
            .map(|h| {
                let index = pattern.build_index(q, nq, kv, shape, h, scale);
                let recall = kept_mass(&index, &blocks, &rows, &weights[h]);
                CandidateScore { output_error: None, recall, density: density_of(&index, &blocks) }
            })
            .collect();
        for (head, score) in scores.iter_mut().zip(measured) {
            head.push(score);
        }
    }
    let competing: Vec<Vec<bool>> = scores.iter().map(|head| competitors(head, space.max_density())).collect();

    let mut out = vec![0f32; dense.len()];
    for (c, pattern) in candidates.iter().enumerate() {
        if !competing.iter().any(|head| head[c]) {
            continue;
        }
        let heads: Vec<HeadIndex> = (0..shape.n_heads)
            .into_par_iter()
            .map(|h| if competing[h][c] { pattern.build_index(q, nq, kv, shape, h, scale) } else { nothing(&blocks) })
            .collect();
        sparse_attention(q, nq, kv, shape, scale, &heads, &mut out, None)?;
        let errors: Vec<Option<f64>> = (0..shape.n_heads)
            .into_par_iter()
            .map(|h| competing[h][c].then(|| head_error(&out, dense, shape, h)))
            .collect();
        for (head, error) in scores.iter_mut().zip(errors) {
            head[c].output_error = error;
        }
    }
    Ok(scores.into_iter().map(|candidates| choose(candidates, objective)).collect())
}

/// Which of a head's candidates compete: those executing at most `max_density`, or, if none
/// does, the cheapest.
fn competitors(scores: &[CandidateScore], max_density: f64) -> Vec<bool> {
    let cheapest = scores.iter().map(|s| s.density).fold(f64::INFINITY, f64::min);
    scores.iter().map(|s| s.density <= max_density.max(cheapest)).collect()
}

/// An index that computes nothing: for the heads a candidate does not compete on.
fn nothing(blocks: &QueryBlocks) -> HeadIndex {
    let mut index = HeadIndex::with_capacity(blocks.count());
    for _ in 0..blocks.count() {
        index.push_block(&[], &[]);
    }
    index
}

/// The best competing candidate under `objective`, the earliest among equals.
fn choose(candidates: Vec<CandidateScore>, objective: Objective) -> HeadChoice {
    let mut best: Option<(usize, f64)> = None;
    for (c, value) in candidates.iter().enumerate().filter_map(|(c, s)| Some((c, objective.value(s)?))) {
        if best.is_none_or(|(_, b)| objective.better(value, b)) {
            best = Some((c, value));
        }
    }
    // Some candidate always competes (see `competitors`), so `best` is set.
    let (best, score) = best.unwrap_or((0, f64::NAN));
    HeadChoice { best, score, candidates }
}

/// The [`RECALL_ROWS`] rows of a chunk of `nq` queries that recall is measured on: evenly
/// spread over its second half (all rows when there are fewer), ascending, the last included.
fn recall_rows(nq: usize) -> Vec<usize> {
    let rows = RECALL_ROWS.min(nq);
    let span = (nq / 2).max(rows);
    (1..=rows).map(|r| nq - span + r * span / rows - 1).collect()
}

/// Relative L2 error of query head `h`'s rows of `got` against `want` (`[nq][n_heads][hd]`).
fn head_error(got: &[f32], want: &[f32], shape: &AttnShape, h: usize) -> f64 {
    let (row, hd) = (shape.n_heads * shape.head_dim, shape.head_dim);
    let (mut diff, mut norm) = (0f64, 0f64);
    for (g, w) in got.chunks_exact(row).zip(want.chunks_exact(row)) {
        for (a, b) in g[h * hd..][..hd].iter().zip(&w[h * hd..][..hd]) {
            diff += (f64::from(*a) - f64::from(*b)).powi(2);
            norm += f64::from(*b).powi(2);
        }
    }
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

/// Dense softmax weights of query head `h` at the chunk's `rows`, `[row][len]` (zero past each
/// row's position).
fn row_weights(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    h: usize,
    scale: f32,
    rows: &[usize],
) -> Vec<f32> {
    let (hd, len) = (shape.head_dim, kv.len);
    let use_simd = simd::has_avx2_fma();
    let mut weights = vec![0f32; rows.len() * len];
    let mut qs = vec![0f32; hd];
    for (&i, row) in rows.iter().zip(weights.chunks_exact_mut(len.max(1))) {
        for (d, s) in qs.iter_mut().zip(&q[(i * shape.n_heads + h) * hd..][..hd]) {
            *d = s * scale;
        }
        let row = &mut row[..=len - nq + i];
        key_scores(use_simd, &qs, kv, h / shape.group(), 0, row);
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let sum: f64 = row
            .iter_mut()
            .map(|s| {
                *s = (*s - m).exp();
                f64::from(*s)
            })
            .sum();
        let inv = (1.0 / sum) as f32;
        row.iter_mut().for_each(|w| *w *= inv);
    }
    weights
}

/// Mean over the chunk's `rows` (their dense `weights`) of the weight `index` executes.
fn kept_mass(index: &HeadIndex, blocks: &QueryBlocks, rows: &[usize], weights: &[f32]) -> f64 {
    if rows.is_empty() {
        return 1.0;
    }
    let mut total = 0f64;
    for (&i, row) in rows.iter().zip(weights.chunks_exact(blocks.len)) {
        let pos = blocks.first_pos + i;
        let (ranges, columns) = index.block(pos / BLOCK - blocks.first_pos / BLOCK);
        for &(a, b) in ranges {
            let visible = a as usize..(b as usize).min(pos + 1);
            total += row.get(visible).map_or(0.0, |keys| keys.iter().map(|&w| f64::from(w)).sum::<f64>());
        }
        total += columns.iter().filter(|&&c| c as usize <= pos).map(|&c| f64::from(row[c as usize])).sum::<f64>();
    }
    total / rows.len() as f64
}
