//! Oracles for the sparse kernels (algorithms.md §0.3): the mask emulator and masked
//! attention computed from the definition. Quadratic in the chunk length — for tests and
//! offline pattern search, never for serving.

use super::index::{HeadIndex, QueryBlocks};
use crate::attention::{AttnShape, PagedKv};

/// Replays `index` into a coverage-count matrix `[nq][len]`: entry `(i, j)` counts how many
/// times the kernel folds key `j` into query `i` (ranges and columns, causal mask applied).
/// A correct index yields only 0 and 1, nothing above the diagonal.
pub fn coverage(index: &HeadIndex, blocks: &QueryBlocks) -> Vec<u8> {
    let (nq, len) = (blocks.queries(), blocks.len);
    let mut counts = vec![0u8; nq * len];
    for t in 0..index.blocks().min(blocks.count()) {
        let (ranges, columns) = index.block(t);
        for pos in blocks.positions(t) {
            let row = &mut counts[(pos - blocks.first_pos) * len..][..len];
            for &(a, b) in ranges {
                for c in &mut row[a as usize..(b as usize).min(pos + 1)] {
                    *c = c.saturating_add(1);
                }
            }
            for &j in columns.iter().filter(|&&j| j as usize <= pos) {
                row[j as usize] = row[j as usize].saturating_add(1);
            }
        }
    }
    counts
}

/// Attention of query head `h` with an explicit mask `[nq][len]` (non-zero = allowed), in
/// f64: `out` is `[nq][head_dim]`. Rows with no allowed key get zeros.
pub fn attention_masked(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    h: usize,
    scale: f32,
    mask: &[u8],
) -> Vec<f32> {
    let (h_n, hd, len) = (shape.n_heads, shape.head_dim, kv.len);
    let kvh = h / shape.group();
    let mut out = vec![0f32; nq * hd];
    let (mut k, mut v) = (vec![0f32; hd], vec![0f32; hd]);
    for i in 0..nq {
        let qv = &q[(i * h_n + h) * hd..][..hd];
        let allowed: Vec<usize> = (0..len).filter(|&j| mask[i * len + j] != 0).collect();
        let logits: Vec<f64> = allowed
            .iter()
            .map(|&j| {
                kv.key_into(kvh, j, &mut k);
                scale as f64 * qv.iter().zip(&k).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>()
            })
            .collect();
        let m = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut acc = vec![0f64; hd];
        let mut sum = 0f64;
        for (&j, z) in allowed.iter().zip(&logits) {
            let p = (z - m).exp();
            sum += p;
            kv.value_into(kvh, j, &mut v);
            for (a, v) in acc.iter_mut().zip(&v) {
                *a += p * *v as f64;
            }
        }
        if sum > 0.0 {
            for (o, a) in out[i * hd..][..hd].iter_mut().zip(&acc) {
                *o = (a / sum) as f32;
            }
        }
    }
    out
}
