//! The selection function of §3.2: per-head softmax over the candidates' scores, soft vote
//! summed over every query head of the layer, top-`budget`.
//!
//! Work item = (tile of [`TILE`] candidates, KV head). An item scores its keys with each of
//! the `group` query heads that read that KV head (the tile stays in L2 across those
//! passes, so the keys stream from memory once) and keeps, per head, `exp(s − m_tile)` and
//! the tile's max `m_tile` and sum. Each head's softmax normalizer is then combined from the
//! tiles' (max, sum) pairs as online softmax does, and a second pass over candidate tiles
//! adds every head's normalized probabilities into the vote. Both passes are parallel and
//! their summation order is fixed, so the selection does not depend on the thread count.
//!
//! Cost: `n_heads · candidates · head_dim` multiply-adds — the `q·k` half of dense decode
//! attention — and `n_heads · candidates` f32 of scratch (1 MiB for 32 heads at 8K keys).

use rayon::prelude::*;

use super::TokenSelection;
use crate::attention::{AttnShape, PagedKv, validate};
use crate::error::{KernelError, Result};
use crate::simd;
use crate::sparse::{exp_sub_sum, key_scores, key_scores_three, max, top_k};

/// Candidates per work item: 256 keys of dim 128 are 128 KiB, L2-resident across the
/// group's passes.
const TILE: usize = 256;
/// Below this many multiply-adds the whole selection runs on the calling thread.
const SERIAL_MACS: usize = 1 << 17;

/// Selects the keys one layer attends to at this step (algorithms.md §3.2): the first
/// `cfg.sink` keys, the `cfg.budget` candidates with the largest soft vote, and the last
/// `cfg.window` keys — sorted, unique, shared by all heads. Returns every key
/// (`0..kv.len`) when `sink + budget + window ≥ kv.len`.
///
/// * `q`: `[nq][n_heads][head_dim]`, the step's queries (decode: `nq = 1`). A chunk is
///   represented by its mean query, per head, as the paper does for prefill chunks.
/// * Candidates are the keys `sink .. kv.len − window`; query head `h` scores them against
///   KV head `h / group` (HF layout, §0.1 — not the `h mod n_kv_heads` of the reference
///   code). Scores are raw dot products **without** the `1/√head_dim` logit scale, as the
///   reference code computes them (§9): the scale does not change a head's ranking, but
///   it sets the temperature of each head's softmax and so the weight of its vote; unscaled
///   reproduces the paper.
/// * The vote of candidate `t` is `Σ_h softmax_h(scores_h)[t]` over all query heads, the
///   softmax running over the candidates only; ties go to the lower index.
///
/// Errors on an invalid `cfg`, on the shapes [`crate::attention()`] rejects, when `nq` is 0
/// or larger than `cfg.window` (each query must see its own key), and past `u32::MAX` keys.
pub fn select_tokens(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    cfg: &TokenSelection,
) -> Result<Vec<u32>> {
    const OP: &str = "select_tokens";
    cfg.validate()?;
    validate(OP, q, nq, kv, shape, q.len(), None)?;
    if nq == 0 || nq > cfg.window || kv.len > u32::MAX as usize {
        return Err(KernelError::InvalidShape {
            op: OP,
            detail: format!("{nq} queries must be 1..=window {}, {} keys at most u32::MAX", cfg.window, kv.len),
        });
    }
    let len = kv.len;
    if cfg.selected_len(len) == len {
        return Ok((0..len as u32).collect());
    }
    let candidates = len - cfg.sink - cfg.window;
    let vote = soft_vote(&mean_query(q, nq, shape), kv, shape, cfg.sink, candidates);
    let mut top = top_k(&vote, cfg.budget);
    top.sort_unstable();
    let mut selected = Vec::with_capacity(cfg.selected_len(len));
    selected.extend(0..cfg.sink as u32);
    selected.extend(top.iter().map(|&t| t + cfg.sink as u32));
    selected.extend((len - cfg.window) as u32..len as u32);
    Ok(selected)
}

/// `y += alpha * x`, 8 lanes at a time where AVX2 runs.
fn axpy(use_simd: bool, y: &mut [f32], alpha: f32, x: &[f32]) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if use_simd {
        // SAFETY: `use_simd` comes from `has_avx2_fma()`.
        return unsafe { simd::avx2::axpy(y, alpha, x) };
    }
    simd::scalar::axpy(y, alpha, x);
}

/// `[n_heads][head_dim]`: the mean of the `nq` queries, per head.
fn mean_query(q: &[f32], nq: usize, shape: &AttnShape) -> Vec<f32> {
    let row = shape.n_heads * shape.head_dim;
    let mut mean = q[..row].to_vec();
    if nq > 1 {
        for other in q[row..].chunks_exact(row) {
            mean.iter_mut().zip(other).for_each(|(m, x)| *m += x);
        }
        mean.iter_mut().for_each(|m| *m /= nq as f32);
    }
    mean
}

/// One work item's result: for each query head `hh` of the KV head's group,
/// `exp(score − max[hh])` over the tile's candidates (`exp[hh · n ..][..n]`) and their sum.
struct Tile {
    exp: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

/// The soft vote of the candidates `first .. first + count`, given the mean query `qbar`.
fn soft_vote(qbar: &[f32], kv: &PagedKv<'_>, shape: &AttnShape, first: usize, count: usize) -> Vec<f32> {
    let (h_n, n_kv, g, hd) = (shape.n_heads, shape.n_kv_heads, shape.group(), shape.head_dim);
    let use_simd = simd::has_avx2_fma();
    // The heads of a group score the same keys: three at a time load each key once.
    let serial = count * h_n * hd < SERIAL_MACS;
    let items: Vec<(usize, usize)> =
        (0..count.div_ceil(TILE)).flat_map(|t| (0..n_kv).map(move |kvh| (t, kvh))).collect();
    let score = |&(t, kvh): &(usize, usize)| {
        let n = TILE.min(count - t * TILE);
        let mut tile = Tile { exp: vec![0f32; g * n], max: vec![0f32; g], sum: vec![0f32; g] };
        let (tile_first, query) = (first + t * TILE, |hh: usize| &qbar[(kvh * g + hh) * hd..][..hd]);
        let trios = if use_simd { g / 3 } else { 0 };
        let (grouped, single) = tile.exp.split_at_mut(trios * 3 * n);
        for (trio, rows) in grouped.chunks_exact_mut(3 * n).enumerate() {
            let (a, rest) = rows.split_at_mut(n);
            let (b, c) = rest.split_at_mut(n);
            let hh = 3 * trio;
            key_scores_three([query(hh), query(hh + 1), query(hh + 2)], kv, kvh, tile_first, [a, b, c]);
        }
        for (i, row) in single.chunks_exact_mut(n).enumerate() {
            key_scores(use_simd, query(3 * trios + i), kv, kvh, tile_first, row);
        }
        for (hh, row) in tile.exp.chunks_exact_mut(n).enumerate() {
            tile.max[hh] = max(use_simd, row);
            tile.sum[hh] = exp_sub_sum(use_simd, row, tile.max[hh]);
        }
        tile
    };
    let tiles: Vec<Tile> =
        if serial { items.iter().map(score).collect() } else { items.par_iter().map(score).collect() };

    // Per query head: global max M and normalizer L = Σ_tiles sum · e^(max − M).
    let mut head_max = vec![f32::NEG_INFINITY; h_n];
    for (&(_, kvh), tile) in items.iter().zip(&tiles) {
        for (hh, &m) in tile.max.iter().enumerate() {
            head_max[kvh * g + hh] = head_max[kvh * g + hh].max(m);
        }
    }
    let mut head_sum = vec![0f32; h_n];
    for (&(_, kvh), tile) in items.iter().zip(&tiles) {
        for hh in 0..g {
            let h = kvh * g + hh;
            head_sum[h] += tile.sum[hh] * (tile.max[hh] - head_max[h]).exp();
        }
    }

    let mut vote = vec![0f32; count];
    let add = |(t, chunk): (usize, &mut [f32])| {
        let n = chunk.len();
        for (kvh, tile) in tiles[t * n_kv..][..n_kv].iter().enumerate() {
            for hh in 0..g {
                let h = kvh * g + hh;
                let weight = (tile.max[hh] - head_max[h]).exp() / head_sum[h];
                axpy(use_simd, chunk, weight, &tile.exp[hh * n..][..n]);
            }
        }
    };
    if serial {
        vote.chunks_mut(TILE).enumerate().for_each(add);
    } else {
        vote.par_chunks_mut(TILE).enumerate().for_each(add);
    }
    vote
}
