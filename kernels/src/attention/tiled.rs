//! Flash-style attention over a paged KV cache.
//!
//! Work item = (KV head, tile of queries, key range). All query heads of a GQA group are
//! processed together, so each key/value vector is loaded once per tile and reused by
//! `tile × group` rows. Keys are visited one cache block at a time; each row keeps the
//! online-softmax state (running max `m`, denominator `l`, unnormalized output) — memory is
//! O(rows · head_dim + block_size), never O(N²).
//!
//! Parallelism: items run on the current rayon pool. A single tile of queries (decode, short
//! verification batches) would leave threads idle, so its key range is split into parts whose
//! partial results are combined with log-sum-exp merging, so decode uses every thread. Tiny
//! problems run inline to avoid task overhead.
//!
//! **Canonical parts.** Every row's keys are absorbed in parts split at fixed multiples of
//! [`part_keys`] — not chosen from the context length, the thread count or the tiling — and
//! each row merges its parts in key order: as separate work items when a single query tile
//! splits its keys across threads, inside each item otherwise. A query row's result then
//! depends only on its own query and keys: it is bitwise the same alone in a decode step,
//! among the rows of a verification batch of any length and GQA group (hybrid tree attention
//! reproduces the same parts, see `tree`), in a prefill chunk of any size, and on any number
//! of threads. Speculative decoding relies on it to stay token-for-token lossless even where
//! a 1-ulp difference would be amplified (8-bit activations round each block of the next
//! product's input).

use half::f16;
use rayon::prelude::*;

use super::merge::merge_row;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::online::Avx2;
use super::online::{Ahead, OnlineSoftmax, Partial, Scalar, VecOps};
use super::{AttnShape, KvBlocks, KvElem, PagedKv, validate};
use crate::error::Result;
use crate::simd;

/// Target rows (queries × heads of a group) per tile. Every tile streams the keys it sees
/// once, and the wide path transposes each block once per tile, so bigger tiles share both
/// among more rows; their queries and accumulators (24 KiB each at 96 rows of 64 dims) stay
/// in L2. A 256-query chunk over 3000 f16 keys (SmolLM2 heads, 2 threads) took 487–558 ms
/// at 32 rows, 431–467 at 96, and about the same at 144 and 192.
const TILE_ROWS: usize = 96;
/// Keys per part when a single query tile is split (rounded up to whole cache blocks).
const PART_KEYS: usize = 256;
/// Below this many multiply-adds the whole call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 17;

/// Computes causal attention of `nq` queries over `kv`.
///
/// * `q`: `[nq][n_heads][head_dim]`, query `i` at position `kv.len - nq + i`.
/// * `scale`: logit scale, usually `1/√head_dim`.
/// * `out`: `[nq][n_heads][head_dim]`.
/// * `lse`: optional `[nq][n_heads]` natural-log log-sum-exp of the scaled logits, for
///   merging with attention over other keys ([`super::merge_lse`]).
///
/// Errors on inconsistent shapes, including `nq > kv.len` and blocks of the wrong length.
pub fn attention(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    validate("attention", q, nq, kv, shape, out.len(), lse.as_ref().map(|l| l.len()))?;
    if nq == 0 {
        return Ok(());
    }
    let items = plan(nq, kv, shape);
    let use_simd = simd::has_avx2_fma();
    let run = |it: &Item| run_item(use_simd, q, nq, kv, shape, scale, it);
    let macs = nq * kv.len * shape.n_heads * shape.head_dim;
    let parts: Vec<Partial> = if items.len() == 1 || macs < SERIAL_MACS {
        items.iter().map(run).collect()
    } else {
        items.par_iter().map(run).collect()
    };

    let (h_n, hd, g) = (shape.n_heads, shape.head_dim, shape.group());
    out.fill(0.0);
    let mut lse_acc = vec![f32::NEG_INFINITY; nq * h_n];
    for (it, p) in items.iter().zip(&parts) {
        for qi in it.q0..it.q1 {
            for hh in 0..g {
                let r = (qi - it.q0) * g + hh;
                let h = it.kvh * g + hh;
                let o = &mut out[(qi * h_n + h) * hd..][..hd];
                merge_row(o, &mut lse_acc[qi * h_n + h], &p.o[r * hd..][..hd], p.lse[r]);
            }
        }
    }
    if let Some(l) = lse {
        l.copy_from_slice(&lse_acc);
    }
    Ok(())
}

/// One unit of work: queries `q0..q1` × the group of KV head `kvh` × keys `k0..k1`.
#[derive(Debug, Clone, Copy)]
struct Item {
    kvh: usize,
    q0: usize,
    q1: usize,
    k0: usize,
    k1: usize,
}

fn plan(nq: usize, kv: &PagedKv<'_>, shape: &AttnShape) -> Vec<Item> {
    let g = shape.group();
    let tq = (TILE_ROWS / g).max(1);
    let tiles = nq.div_ceil(tq);
    // Parts become items only for a single query tile (decode, short verify batches): with
    // many tiles there is already enough parallelism, and each item walks its parts itself.
    let part = if tiles == 1 { part_keys(kv.block_size) } else { kv.len };
    let mut items = Vec::with_capacity(tiles * shape.n_kv_heads * kv.len.div_ceil(part));
    for kvh in 0..shape.n_kv_heads {
        for t in 0..tiles {
            let (q0, q1) = (t * tq, nq.min((t + 1) * tq));
            let mut k0 = 0;
            while k0 < kv.len {
                let k1 = kv.len.min(k0 + part);
                items.push(Item { kvh, q0, q1, k0, k1 });
                k0 = k1;
            }
        }
    }
    items
}

/// Keys per part of a split key range: [`PART_KEYS`] rounded up to whole cache blocks. Parts
/// start at multiples of it, so a part never splits a block.
pub(crate) fn part_keys(block_size: usize) -> usize {
    PART_KEYS.div_ceil(block_size) * block_size
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn item_avx2(q: &[f32], nq: usize, kv: &PagedKv<'_>, shape: &AttnShape, scale: f32, it: &Item) -> Partial {
    item_generic::<Avx2>(q, nq, kv, shape, scale, it)
}

fn run_item(
    use_simd: bool,
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    it: &Item,
) -> Partial {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if use_simd {
        // SAFETY: `use_simd` comes from `has_avx2_fma()`.
        return unsafe { item_avx2(q, nq, kv, shape, scale, it) };
    }
    let _ = use_simd;
    item_generic::<Scalar>(q, nq, kv, shape, scale, it)
}

#[inline(always)]
fn item_generic<O: VecOps>(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    it: &Item,
) -> Partial {
    let (h_n, hd, g, bs) = (shape.n_heads, shape.head_dim, shape.group(), kv.block_size);
    let rows = (it.q1 - it.q0) * g;
    let first_pos = kv.len - nq; // position of query 0
    let mut qs = vec![0f32; rows * hd];
    for (r, dst) in qs.chunks_exact_mut(hd).enumerate() {
        let (qi, hh) = (it.q0 + r / g, r % g);
        for (d, s) in dst.iter_mut().zip(&q[(qi * h_n + it.kvh * g + hh) * hd..][..hd]) {
            *d = s * scale;
        }
    }
    let kend = it.k1.min(first_pos + it.q1); // last query sees keys < first_pos + q1
    let part = part_keys(bs);
    // Merging into an empty accumulator is a copy, so the first part is the accumulator.
    let mut merged: Option<Partial> = None;
    let mut part_start = it.k0;
    while part_start < kend {
        let part_end = kend.min((part_start / part + 1) * part);
        let keys = part_start..part_end;
        let p = match (kv.k_blocks, kv.v_blocks) {
            (KvBlocks::F16(k), KvBlocks::F16(v)) => {
                part_generic::<O, f16>((k, v), kv.block_size, &qs, rows, g, it, first_pos, keys, kend)
            }
            (KvBlocks::F32(k), KvBlocks::F32(v)) => {
                part_generic::<O, f32>((k, v), kv.block_size, &qs, rows, g, it, first_pos, keys, kend)
            }
            _ => unreachable!("`validate` refuses keys and values of different element types"),
        };
        match &mut merged {
            None => merged = Some(p),
            Some(m) => {
                for (r, (o, lse)) in m.o.chunks_exact_mut(hd).zip(&mut m.lse).enumerate() {
                    merge_row(o, lse, &p.o[r * hd..][..hd], p.lse[r]);
                }
            }
        }
        part_start = part_end;
    }
    merged.unwrap_or_else(|| Partial { o: vec![0.0; rows * hd], lse: vec![f32::NEG_INFINITY; rows] })
}

/// The online softmax of item `it`'s `rows` (scaled queries `qs`) over the keys `keys` of one
/// canonical part, block by block; each row takes the keys its query sees. The item reads
/// keys up to `item_end`, which the last block prefetches from the next part.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn part_generic<O: VecOps, K: KvElem>(
    (k_blocks, v_blocks): (&[&[K]], &[&[K]]),
    bs: usize,
    qs: &[f32],
    rows: usize,
    g: usize,
    it: &Item,
    first_pos: usize,
    keys: std::ops::Range<usize>,
    item_end: usize,
) -> Partial {
    let hd = qs.len() / rows;
    let mut state = OnlineSoftmax::new(rows, hd);
    let (mut ks, kend) = (keys.start, keys.end);
    while ks < kend {
        let b = ks / bs;
        let ke = kend.min((b + 1) * bs);
        // This block's keys `ks..ke` of the item's KV head.
        let span = (it.kvh * bs + ks - b * bs) * hd..(it.kvh * bs + ke - b * bs) * hd;
        let (kblk, vblk) = (&k_blocks[b][span.clone()], &v_blocks[b][span]);
        // The keys this item reads from the next block, streamed in while this one computes.
        let ahead = if ke < item_end {
            let next = it.kvh * bs * hd..(it.kvh * bs + (item_end - ke).min(bs)) * hd;
            Ahead { keys: &k_blocks[b + 1][next.clone()], values: &v_blocks[b + 1][next] }
        } else {
            Ahead::NONE
        };
        // Row `r` sees the block's keys up to here.
        let visible_end = |r: usize| ke.min(first_pos + it.q0 + r / g + 1);
        absorb_block::<O, K>(&mut state, qs, (kblk, vblk), ahead, ks, visible_end);
        ks = ke;
    }
    state.finish::<O>()
}

/// Folds one block's keys, the first at position `ks`, into every row that sees them
/// (`visible_end(r)` bounds row `r`'s keys). Runs of rows that see the same keys (a query's
/// heads; every row when decoding) are absorbed together, sharing their loads; the first
/// run prefetches `ahead`.
#[inline(always)]
fn absorb_block<O: VecOps, K: KvElem>(
    state: &mut OnlineSoftmax,
    qs: &[f32],
    (kblk, vblk): (&[K], &[K]),
    mut ahead: Ahead<'_, K>,
    ks: usize,
    visible_end: impl Fn(usize) -> usize,
) {
    let (rows, hd) = (state.rows(), state.head_dim());
    let mut r = 0;
    while r < rows {
        let end = visible_end(r);
        let run_end = (r + 1..rows).find(|&next| visible_end(next) != end).unwrap_or(rows);
        if end > ks {
            let keys = 0..(end - ks) * hd;
            state.absorb_rows::<O, K>(r..run_end, qs, &kblk[keys.clone()], &vblk[keys], ahead);
            ahead = Ahead::NONE;
        }
        r = run_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The portable kernel is what non-x86 targets run; pin it against the SIMD one here.
    #[test]
    fn scalar_and_simd_items_agree() {
        let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 80 };
        let (bs, len, nq): (usize, usize, usize) = (16, 150, 9);
        let blocks: Vec<Vec<f32>> = (0..len.div_ceil(bs))
            .map(|b| (0..2 * bs * 80).map(|i| (((b * 31 + i * 7) % 17) as f32 - 8.0) / 9.0).collect())
            .collect();
        let refs: Vec<&[f32]> = blocks.iter().map(|b| b.as_slice()).collect();
        let kv = PagedKv { k_blocks: KvBlocks::F32(&refs), v_blocks: KvBlocks::F32(&refs), block_size: bs, len };
        let q: Vec<f32> = (0..nq * 6 * 80).map(|i| ((i % 23) as f32 - 11.0) / 13.0).collect();
        for it in plan(nq, &kv, &shape) {
            let a = run_item(false, &q, nq, &kv, &shape, 0.1, &it);
            let b = run_item(simd::has_avx2_fma(), &q, nq, &kv, &shape, 0.1, &it);
            for (x, y) in a.o.iter().zip(&b.o).chain(a.lse.iter().zip(&b.lse)) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}
