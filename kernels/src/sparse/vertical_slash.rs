//! Vertical-slash: online estimation of the vertical (key column) and slash (diagonal
//! offset) lines from the chunk's last queries, and their conversion to key ranges + columns.

use super::index::{HeadIndex, QueryBlocks, columns_outside, merge_sorted_ranges};
use super::{BLOCK, exp_sub_sum, key_scores, top_k};
use crate::attention::{AttnShape, PagedKv};
use crate::simd;

/// Queries used to estimate the lines (`last_q` of §1.2).
pub const ESTIMATE_QUERIES: usize = 64;
/// Leading keys always kept as verticals (attention sinks).
pub const FORCED_VERTICALS: usize = 30;
/// Nearest diagonals always kept as slashes (offsets `0..100`).
pub const FORCED_SLASHES: usize = 100;

/// Estimates the vertical and slash lines of query head `h` (§1.2, Algorithm 2).
///
/// The last `L = min(64, nq)` queries of the chunk attend (exact softmax, causal) to every
/// key; column sums rank the verticals and sums along each diagonal offset `pos - key` rank
/// the slashes. Keys `0..30` and offsets `0..100` are always kept; the budgets become
/// `min(len, max(vertical, 30))` and `min(len, max(slash, 100))` — the forced sets always
/// fit whole (the reference code's minimum of 50 slashes would cut its own forced 100).
/// Returns `(verticals, offsets)`, unsorted. Cost: `O(L · len · head_dim)`.
#[allow(clippy::too_many_arguments)]
pub fn estimate_vertical_slash(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    h: usize,
    scale: f32,
    vertical: usize,
    slash: usize,
) -> (Vec<u32>, Vec<u32>) {
    let (vert, diag) = vertical_slash_sums(q, nq, kv, shape, h, scale);
    select_lines(vert, diag, vertical, slash)
}

/// The statistics [`estimate_vertical_slash`] ranks lines by, for query head `h`: the column
/// sums `vert[j]` and the diagonal sums `diag[pos - j]` of the last `min(64, nq)` queries'
/// causal softmax over all `kv.len` keys (the GPU computes the same, `cuda::vertical_slash_sums`).
pub fn vertical_slash_sums(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    h: usize,
    scale: f32,
) -> (Vec<f32>, Vec<f32>) {
    let (h_n, hd, len) = (shape.n_heads, shape.head_dim, kv.len);
    let kvh = h / shape.group();
    let last = ESTIMATE_QUERIES.min(nq);
    let use_simd = simd::has_avx2_fma();
    let mut vert = vec![0f32; len];
    let mut diag = vec![0f32; len];
    let mut scores = vec![0f32; len];
    let mut qs = vec![0f32; hd];
    for i in nq - last..nq {
        let pos = len - nq + i;
        for (d, s) in qs.iter_mut().zip(&q[(i * h_n + h) * hd..][..hd]) {
            *d = s * scale;
        }
        let row = &mut scores[..=pos];
        key_scores(use_simd, &qs, kv, kvh, 0, row);
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let inv = 1.0 / exp_sub_sum(use_simd, row, m);
        for (v, &p) in vert.iter_mut().zip(row.iter()) {
            *v += p * inv;
        }
        // Key j lies on diagonal offset pos - j: walk the row backwards.
        for (d, &p) in diag.iter_mut().zip(row.iter().rev()) {
            *d += p * inv;
        }
    }
    (vert, diag)
}

/// The lines of a head from its [`vertical_slash_sums`]: keys `0..30` and offsets `0..100`
/// forced, then the best by sum up to `min(len, max(vertical, 30))` verticals and
/// `min(len, max(slash, 100))` offsets (`len = vert.len()`). Unsorted.
pub fn select_lines(mut vert: Vec<f32>, mut diag: Vec<f32>, vertical: usize, slash: usize) -> (Vec<u32>, Vec<u32>) {
    let len = vert.len();
    vert[..FORCED_VERTICALS.min(len)].fill(f32::INFINITY);
    diag[..FORCED_SLASHES.min(len)].fill(f32::INFINITY);
    let verticals = top_k(&vert, vertical.max(FORCED_VERTICALS).min(len));
    let offsets = top_k(&diag, slash.max(FORCED_SLASHES).min(len));
    (verticals, offsets)
}

/// Converts vertical lines (key indices) and slash lines (offsets `pos - key`) into a
/// [`HeadIndex`] (§1.3). Inputs may be unsorted, repeated or out of range.
///
/// Per query block `[start, end)`, slash offset `o` becomes the key tile
/// `[end - o - 64, end - o)` (clamped to `[0, 64)` near the start, clipped to `end`), which
/// covers the diagonal segment of every row of the block; tiles are merged into disjoint
/// ranges (their exact union — the reference kernel extends ranges in steps of 64 instead).
/// Verticals before `end` that no range covers become columns. Offsets `≥ end` are skipped.
/// Deliberate difference from the reference converter: verticals after the last range are
/// kept as columns (masked causally by the kernel) instead of dropped, so the executed mask
/// contains the conceptual one even when offset 0 is not selected.
pub fn vertical_slash_index(blocks: &QueryBlocks, verticals: &[u32], offsets: &[u32]) -> HeadIndex {
    let mut verticals: Vec<u32> = verticals.iter().copied().filter(|&v| (v as usize) < blocks.len).collect();
    verticals.sort_unstable();
    verticals.dedup();
    let mut offsets = offsets.to_vec();
    offsets.sort_unstable_by(|a, b| b.cmp(a));
    offsets.dedup();

    let mut index = HeadIndex::with_capacity(blocks.count());
    let (mut ranges, mut columns) = (Vec::new(), Vec::new());
    for t in 0..blocks.count() {
        let end = blocks.positions(t).end;
        ranges.clear();
        for &o in offsets.iter().skip_while(|&&o| o as usize >= end) {
            let e = (end - o as usize).max(BLOCK);
            ranges.push(((e - BLOCK) as u32, e.min(end) as u32));
        }
        merge_sorted_ranges(&mut ranges);
        columns_outside(&verticals, &ranges, end as u32, &mut columns);
        index.push_block(&ranges, &columns);
    }
    index
}
