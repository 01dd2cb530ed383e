//! The block-sparse attention kernel: exact softmax over each query block's indexed keys.
//!
//! Work item = (query head, query block). Key ranges are walked page by page (contiguous
//! keys, causal mask per row); columns are gathered 64 at a time into contiguous buffers —
//! the "permutation-invariant" trick of §1.3 — and masked the same way. Every item keeps an
//! online-softmax state per row, so memory is O(64 · head_dim) per item.

use rayon::prelude::*;

use super::index::{HeadIndex, QueryBlocks};
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use crate::attention::online::Avx2;
use crate::attention::online::{OnlineSoftmax, Partial, Scalar, VecOps};
use crate::attention::{AttnShape, PagedKv, validate};
use crate::error::{KernelError, Result};
use crate::simd;

/// Sparse causal attention of `nq` queries over `kv`, query head `h` attending to the keys
/// of `heads[h]` (which must index the chunk's [`QueryBlocks`]) at or before its position.
///
/// Same layout contract as [`crate::attention`]: `q` and `out` are `[nq][n_heads][head_dim]`;
/// `lse`, when given, receives `[nq][n_heads]` natural-log log-sum-exp values (`-inf` for a
/// row whose index selects no visible key; its output is zero).
#[allow(clippy::too_many_arguments)]
pub fn sparse_attention(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    heads: &[HeadIndex],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    validate("sparse_attention", q, nq, kv, shape, out.len(), lse.as_ref().map(|l| l.len()))?;
    if heads.len() != shape.n_heads {
        return Err(KernelError::InvalidShape {
            op: "sparse_attention",
            detail: format!("{} head indices for {} query heads", heads.len(), shape.n_heads),
        });
    }
    let blocks = QueryBlocks::new(nq, kv.len);
    for index in heads {
        index.validate(&blocks)?;
    }
    let items: Vec<(usize, usize)> =
        (0..shape.n_heads).flat_map(|h| (0..blocks.count()).map(move |t| (h, t))).collect();
    let use_simd = simd::has_avx2_fma();
    let parts: Vec<Partial> =
        items.par_iter().map(|&(h, t)| run_item(use_simd, q, kv, shape, scale, &blocks, &heads[h], h, t)).collect();

    let (h_n, hd) = (shape.n_heads, shape.head_dim);
    let mut lse = lse;
    for (&(h, t), part) in items.iter().zip(&parts) {
        for (r, pos) in blocks.positions(t).enumerate() {
            let i = pos - blocks.first_pos;
            out[(i * h_n + h) * hd..][..hd].copy_from_slice(&part.o[r * hd..][..hd]);
            if let Some(l) = lse.as_deref_mut() {
                l[i * h_n + h] = part.lse[r];
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_item(
    use_simd: bool,
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    blocks: &QueryBlocks,
    index: &HeadIndex,
    h: usize,
    t: usize,
) -> Partial {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if use_simd {
        // SAFETY: `use_simd` comes from `has_avx2_fma()`.
        return unsafe { item_avx2(q, kv, shape, scale, blocks, index, h, t) };
    }
    let _ = use_simd;
    item_generic::<Scalar>(q, kv, shape, scale, blocks, index, h, t)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
fn item_avx2(
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    blocks: &QueryBlocks,
    index: &HeadIndex,
    h: usize,
    t: usize,
) -> Partial {
    item_generic::<Avx2>(q, kv, shape, scale, blocks, index, h, t)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn item_generic<O: VecOps>(
    q: &[f32],
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    blocks: &QueryBlocks,
    index: &HeadIndex,
    h: usize,
    t: usize,
) -> Partial {
    let (h_n, hd, bs) = (shape.n_heads, shape.head_dim, kv.block_size);
    let kvh = h / shape.group();
    let positions = blocks.positions(t);
    let rows = positions.len();
    let mut qs = vec![0f32; rows * hd];
    for (r, dst) in qs.chunks_exact_mut(hd).enumerate() {
        let i = positions.start + r - blocks.first_pos;
        for (d, s) in dst.iter_mut().zip(&q[(i * h_n + h) * hd..][..hd]) {
            *d = s * scale;
        }
    }
    let mut state = OnlineSoftmax::new(rows, hd);
    let (ranges, columns) = index.block(t);
    let (mut widened_k, mut widened_v) = (Vec::new(), Vec::new());

    for &(a, b) in ranges {
        let mut ks = a as usize;
        let kend = (b as usize).min(positions.end);
        while ks < kend {
            let page = ks / bs;
            let ke = kend.min((page + 1) * bs);
            let span = (kvh * bs + ks - page * bs) * hd..(kvh * bs + ke - page * bs) * hd;
            let kblk = kv.k_blocks.run(page, span.clone(), &mut widened_k);
            let vblk = kv.v_blocks.run(page, span, &mut widened_v);
            for r in 0..rows {
                let visible_end = ke.min(positions.start + r + 1);
                if visible_end <= ks {
                    continue;
                }
                let keys = 0..(visible_end - ks) * hd;
                state.absorb::<O>(r, &qs[r * hd..][..hd], &kblk[keys.clone()], &vblk[keys]);
            }
            ks = ke;
        }
    }

    state.absorb_gathered::<O>(&qs, kv, kvh, columns, |r| positions.start + r + 1);
    state.finish::<O>()
}
