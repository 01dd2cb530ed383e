//! Sparse prefill attention (MInference, algorithms.md §1): per-head sparse patterns whose
//! indices are estimated online from the prompt itself, executed by one block-sparse kernel.
//!
//! Map of the module, in the order a prefill chunk uses it:
//!
//! * [`HeadPattern`] — what one query head computes: dense, A-shape / Tri-shape (static),
//!   vertical-slash or block-sparse (dynamic), with their budgets.
//! * Index builders, one per pattern, each producing a [`HeadIndex`]:
//!   [`a_shape_index`], [`estimate_vertical_slash`] + [`vertical_slash_index`] (the §1.3
//!   conversion to key ranges + columns), [`block_sparse_index`]. The dynamic ones split into
//!   the statistics that read q and k ([`vertical_slash_sums`]; [`pool_queries`],
//!   [`pool_keys`]) and their conversion on the host ([`select_lines`];
//!   [`block_sparse_index_from_pooled`]), so a GPU computes the first and shares the second.
//! * [`sparse_attention`] — the kernel: for every (query head, 64-query block) an exact
//!   online softmax over the block's key ranges and individual key columns, causal mask
//!   applied, no N×N matrix. [`sparse_prefill_attention`] chains index building and the
//!   kernel for all heads and reports [`SparseStats`].
//! * [`reference`] — the oracles tests compare against: the mask emulator
//!   ([`reference::coverage`]) that replays an index into a coverage matrix, and
//!   [`reference::attention_masked`].
//! * [`search_heads`] — the offline pattern search (§1.4): every [`SearchSpace`] candidate,
//!   budgets at equal executed density, run through the kernel and scored against dense.
//!
//! Geometry: a chunk of `nq` queries sits at positions `len - nq .. len` (bottom-right
//! aligned, as in [`crate::attention`]); queries are grouped into [`QueryBlocks`] of
//! [`BLOCK`] positions aligned to absolute positions, so chunked prefill and prefill on top of
//! a cached prefix see the same blocks a one-shot prefill would.

mod a_shape;
mod block_sparse;
mod index;
mod kernel;
mod pattern;
pub mod reference;
mod search;
mod vertical_slash;

pub use a_shape::a_shape_index;
pub use block_sparse::{block_sparse_index, block_sparse_index_from_pooled, pool_keys, pool_queries};
pub use index::{HeadIndex, QueryBlocks};
pub use kernel::sparse_attention;
pub use pattern::{HeadPattern, SparseStats, sparse_prefill_attention};
pub use search::{
    BUDGET_SLACK, CandidateScore, DEFAULT_DENSITY, HeadChoice, Objective, RECALL_ROWS, SearchSpace, planned_density,
    search_heads,
};
pub use vertical_slash::{
    ESTIMATE_QUERIES, estimate_vertical_slash, select_lines, vertical_slash_index, vertical_slash_sums,
};

/// Query rows per block, and the key tile size of slash lines and pooled blocks (§1.3).
pub const BLOCK: usize = 64;

use crate::attention::{KvBlocks, KvElem, PagedKv};
use crate::simd;

/// `out[t] = q · key(first + t)` for the keys `first .. first + out.len()` of KV head `kvh`,
/// walking the cache page by page.
pub(crate) fn key_scores(use_simd: bool, q: &[f32], kv: &PagedKv<'_>, kvh: usize, first: usize, out: &mut [f32]) {
    let hd = q.len();
    let bs = kv.block_size;
    let mut j = first;
    let end = first + out.len();
    let mut widened = Vec::new();
    while j < end {
        let (b, s) = (j / bs, j % bs);
        let n = (bs - s).min(end - j);
        let at = (kvh * bs + s) * hd;
        let keys = kv.k_blocks.run(b, at..at + n * hd, &mut widened);
        let dst = &mut out[j - first..j - first + n];
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if use_simd {
            // SAFETY: `use_simd` comes from `has_avx2_fma()`.
            unsafe { simd::avx2::scores(q, keys, hd, dst) };
            j += n;
            continue;
        }
        let _ = use_simd;
        simd::scalar::scores(q, keys, hd, dst);
        j += n;
    }
}

/// [`key_scores`] of three query rows over the same keys, each key loaded once for the three
/// and the next page's keys prefetched; bitwise the three single-row calls. On x86 it needs
/// [`simd::has_avx2_fma`] (the caller checks); elsewhere it scores the rows one by one.
pub(crate) fn key_scores_three(q: [&[f32]; 3], kv: &PagedKv<'_>, kvh: usize, first: usize, out: [&mut [f32]; 3]) {
    match kv.k_blocks {
        KvBlocks::F32(blocks) => key_scores_three_in(q, blocks, kv.block_size, kvh, first, out),
        KvBlocks::F16(blocks) => key_scores_three_in(q, blocks, kv.block_size, kvh, first, out),
    }
}

/// [`key_scores_three`] over key blocks of `bs` keys stored as `K`.
fn key_scores_three_in<K: KvElem>(
    q: [&[f32]; 3],
    blocks: &[&[K]],
    bs: usize,
    kvh: usize,
    first: usize,
    mut out: [&mut [f32]; 3],
) {
    let hd = q[0].len();
    let end = first + out[0].len();
    let page = |j: usize, n: usize| &blocks[j / bs][(kvh * bs + j % bs) * hd..][..n * hd];
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    let vl = simd::has_avx512vl();
    let mut j = first;
    while j < end {
        let n = (bs - j % bs).min(end - j);
        let ahead = if j + n < end { page(j + n, bs.min(end - j - n)) } else { &[] };
        let keys = page(j, n);
        let at = j - first;
        let rows = out.each_mut().map(|row| &mut row[at..at + n]);
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        // SAFETY: the caller checked `has_avx2_fma()`, and `vl` AVX-512VL.
        unsafe {
            if vl {
                simd::three_rows::scores(q, keys, hd, rows, ahead)
            } else {
                simd::three_rows::scores_avx2(q, keys, hd, rows, ahead)
            }
        };
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        for (q, row) in q.iter().zip(rows) {
            let _ = ahead;
            simd::scalar::scores(q, K::as_f32(keys, &mut Vec::new()), hd, row);
        }
        j += n;
    }
}

/// The largest element of `x`, ignoring NaNs; `-inf` for none (exact in any order).
pub(crate) fn max(use_simd: bool, x: &[f32]) -> f32 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if use_simd {
        // SAFETY: `use_simd` comes from `has_avx2_fma()`.
        return unsafe { simd::avx2::max(x) };
    }
    let _ = use_simd;
    simd::scalar::max(x)
}

/// `x[i] = exp(x[i] - m)`; returns the sum.
pub(crate) fn exp_sub_sum(use_simd: bool, x: &mut [f32], m: f32) -> f32 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if use_simd {
        // SAFETY: `use_simd` comes from `has_avx2_fma()`.
        return unsafe { simd::avx2::exp_sub_sum(x, m) };
    }
    let _ = use_simd;
    simd::scalar::exp_sub_sum(x, m)
}

/// Indices of the `k` largest values (ties broken by lower index), in no particular order.
pub(crate) fn top_k(values: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..values.len() as u32).collect();
    let k = k.min(idx.len());
    if k == 0 {
        return Vec::new();
    }
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, |&a, &b| values[b as usize].total_cmp(&values[a as usize]).then(a.cmp(&b)));
        idx.truncate(k);
    }
    idx
}
