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
    let (h_n, hd, len) = (shape.n_heads, shape.head_dim, kv.len);
    let kvh = h / shape.group();
    let blocks = QueryBlocks::new(nq, len);
    let key_blocks = len.div_ceil(BLOCK);
    let mut pooled_k = vec![0f32; key_blocks * hd];
    for (c, dst) in pooled_k.chunks_exact_mut(hd).enumerate() {
        let keys = c * BLOCK..((c + 1) * BLOCK).min(len);
        let inv = 1.0 / keys.len() as f32;
        for j in keys {
            for (d, x) in dst.iter_mut().zip(kv.key(kvh, j, hd)) {
                *d += x * inv;
            }
        }
    }

    let mut index = HeadIndex::with_capacity(blocks.count());
    let mut pooled_q = vec![0f32; hd];
    let mut scores = Vec::with_capacity(key_blocks);
    let mut ranges = Vec::new();
    for t in 0..blocks.count() {
        let p = blocks.positions(t);
        pooled_q.fill(0.0);
        let inv = 1.0 / p.len() as f32;
        for pos in p.clone() {
            let i = pos - blocks.first_pos;
            for (d, x) in pooled_q.iter_mut().zip(&q[(i * h_n + h) * hd..][..hd]) {
                *d += x * inv;
            }
        }
        let diagonal = (p.end - 1) / BLOCK;
        scores.clear();
        scores.extend(
            pooled_k[..(diagonal + 1) * hd]
                .chunks_exact(hd)
                .map(|kc| kc.iter().zip(&pooled_q).map(|(a, b)| a * b).sum::<f32>()),
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
