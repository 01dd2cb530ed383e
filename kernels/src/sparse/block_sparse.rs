//! Block-sparse: mean-pooled 64-token blocks, top-k key blocks per query block.

use super::index::{HeadIndex, QueryBlocks, merge_sorted_ranges};
use super::{BLOCK, top_k};
use crate::attention::{AttnShape, PagedKv};

/// Block-sparse index of query head `h` (§1.2): query block `b` attends to the `k` key blocks
/// with the largest pooled score `mean(Q_b) · mean(K_c)` among the causal ones (`c ≤ b`),
/// plus always its own diagonal block (the robustness tweak of §1.2: local context is never
/// dropped). Pooled means cover the present rows of each block. The ranking is that of the
/// paper's `softmax(Q̂K̂ᵀ/√d)` per row, so no scale or softmax is applied.
pub fn block_sparse_index(q: &[f32], nq: usize, kv: &PagedKv<'_>, shape: &AttnShape, h: usize, k: usize) -> HeadIndex {
    let blocks = QueryBlocks::new(nq, kv.len);
    let pooled_q = pool_queries(q, &blocks, shape, h);
    let pooled_k = pool_keys(kv, h / shape.group(), shape.head_dim);
    block_sparse_index_from_pooled(&blocks, &pooled_q, &pooled_k, shape.head_dim, k)
}

/// Mean key of each 64-key block of KV head `kvh` (the present keys of the last one):
/// `[ceil(len / 64)][head_dim]`.
pub fn pool_keys(kv: &PagedKv<'_>, kvh: usize, hd: usize) -> Vec<f32> {
    let len = kv.len;
    let mut pooled_k = vec![0f32; len.div_ceil(BLOCK) * hd];
    let mut key = vec![0f32; hd];
    for (c, dst) in pooled_k.chunks_exact_mut(hd).enumerate() {
        let keys = c * BLOCK..((c + 1) * BLOCK).min(len);
        let inv = 1.0 / keys.len() as f32;
        for j in keys {
            kv.key_into(kvh, j, &mut key);
            for (d, x) in dst.iter_mut().zip(&key) {
                *d += x * inv;
            }
        }
    }
    pooled_k
}

/// Mean query of query head `h` over each of the chunk's [`QueryBlocks`]: `[count][head_dim]`.
/// `q` is the chunk's `[nq][n_heads][head_dim]`.
pub fn pool_queries(q: &[f32], blocks: &QueryBlocks, shape: &AttnShape, h: usize) -> Vec<f32> {
    let (h_n, hd) = (shape.n_heads, shape.head_dim);
    let mut pooled_q = vec![0f32; blocks.count() * hd];
    for (t, dst) in pooled_q.chunks_exact_mut(hd).enumerate() {
        let p = blocks.positions(t);
        let inv = 1.0 / p.len() as f32;
        for pos in p {
            let i = pos - blocks.first_pos;
            for (d, x) in dst.iter_mut().zip(&q[(i * h_n + h) * hd..][..hd]) {
                *d += x * inv;
            }
        }
    }
    pooled_q
}

/// The block-sparse index from a head's pooled queries ([`pool_queries`]) and its KV head's
/// pooled keys ([`pool_keys`], at least up to the chunk's last block).
pub fn block_sparse_index_from_pooled(
    blocks: &QueryBlocks,
    pooled_q: &[f32],
    pooled_k: &[f32],
    hd: usize,
    k: usize,
) -> HeadIndex {
    let mut index = HeadIndex::with_capacity(blocks.count());
    let mut scores = Vec::with_capacity(pooled_k.len() / hd);
    let mut ranges = Vec::new();
    for (t, pooled_q) in pooled_q.chunks_exact(hd).enumerate() {
        let p = blocks.positions(t);
        let diagonal = (p.end - 1) / BLOCK;
        scores.clear();
        scores.extend(
            pooled_k[..(diagonal + 1) * hd]
                .chunks_exact(hd)
                .map(|kc| kc.iter().zip(pooled_q).map(|(a, b)| a * b).sum::<f32>()),
        );
        scores[diagonal] = f32::INFINITY;
        let mut chosen = top_k(&scores, k.max(1));
        chosen.sort_unstable();
        ranges.clear();
        ranges.extend(chosen.iter().map(|&c| {
            let c = c as usize;
            ((c * BLOCK) as u32, ((c + 1) * BLOCK).min(p.end) as u32)
        }));
        merge_sorted_ranges(&mut ranges);
        index.push_block(&ranges, &[]);
    }
    index
}
