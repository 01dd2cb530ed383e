//! Attention over a selected key list (§3.5: the paged gather kernel, CPU version).
//!
//! Work item = (KV head, run of the selection). Selected keys are gathered 64 at a time into
//! contiguous buffers and fed to the shared online softmax for all `nq · group` query rows
//! of that KV head at once, so each gathered row is copied once per KV head, not once per
//! query head. Decode has only `n_kv_heads` such items, so when that is fewer than the
//! threads the selection is split into runs whose partial results are merged by log-sum-exp
//! (§0.2), as the dense kernel does with key ranges.
//!
//! [`crate::sparse::sparse_attention`] with a column-only index per head computes the same
//! thing, but its items are (query head, query block): it gathers every key `group` times,
//! cannot split one decode query's keys across threads, and needs `n_heads` copies of the
//! index. This kernel measured faster (see `examples/token_select_bench.rs`).

use rayon::prelude::*;

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use crate::attention::online::Avx2;
use crate::attention::online::{GATHER, OnlineSoftmax, Partial, Scalar, VecOps};
use crate::attention::{AttnShape, PagedKv, merge_lse, validate};
use crate::error::{KernelError, Result};
use crate::simd;

/// Smallest run of selected keys worth a separate task.
const MIN_SPLIT_KEYS: usize = 256;
/// Below this many multiply-adds the whole call runs on the calling thread.
const SERIAL_MACS: usize = 1 << 17;

/// Attention of `nq` queries over the keys listed in `selected`, each query head over the
/// selected keys of its KV head (`h / group`), exact softmax.
///
/// * `q`, `out`: `[nq][n_heads][head_dim]`, query `i` at position `kv.len − nq + i`; it
///   sees the selected keys at or before its position (with `nq = 1`: all of them).
/// * `selected`: key indices, strictly increasing, below `kv.len` — [`super::select_tokens`]
///   output, or any mask.
/// * `scale`: logit scale, usually `1/√head_dim`; `lse`: optional `[nq][n_heads]`
///   natural-log log-sum-exp of the scaled logits, `-inf` (and a zero output) for a query
///   that sees no selected key.
///
/// Positions are the caller's: keys and queries are used as stored (see the module docs on
/// RoPE). Errors on the shapes [`crate::attention()`] rejects and on an unsorted, repeated or
/// out-of-range selection.
#[allow(clippy::too_many_arguments)]
pub fn selected_attention(
    q: &[f32],
    nq: usize,
    kv: &PagedKv<'_>,
    shape: &AttnShape,
    scale: f32,
    selected: &[u32],
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) -> Result<()> {
    const OP: &str = "selected_attention";
    validate(OP, q, nq, kv, shape, out.len(), lse.as_ref().map(|l| l.len()))?;
    if let Some(i) =
        (0..selected.len()).find(|&i| selected[i] as usize >= kv.len || (i > 0 && selected[i] <= selected[i - 1]))
    {
        return Err(KernelError::InvalidShape {
            op: OP,
            detail: format!("selected key {} at {i} is past {} keys, unsorted or repeated", selected[i], kv.len),
        });
    }
    if nq == 0 {
        return Ok(());
    }
    let runs = plan(selected.len(), shape);
    let items: Vec<(usize, (usize, usize))> =
        (0..shape.n_kv_heads).flat_map(|kvh| runs.iter().map(move |&run| (kvh, run))).collect();
    let use_simd = simd::has_avx2_fma();
    let gather = Gather { q, nq, kv, shape, scale };
    let run = |&(kvh, (a, b)): &(usize, (usize, usize))| gather.run(use_simd, kvh, &selected[a..b]);
    let serial = items.len() == 1 || nq * selected.len() * shape.n_heads * shape.head_dim < SERIAL_MACS;
    let parts: Vec<Partial> =
        if serial { items.iter().map(run).collect() } else { items.par_iter().map(run).collect() };

    let (h_n, hd, g) = (shape.n_heads, shape.head_dim, shape.group());
    out.fill(0.0);
    let mut lse_acc = vec![f32::NEG_INFINITY; nq * h_n];
    for (&(kvh, _), part) in items.iter().zip(&parts) {
        for r in 0..nq * g {
            let row = (r / g) * h_n + kvh * g + r % g;
            let o = &mut out[row * hd..][..hd];
            merge_lse(o, std::slice::from_mut(&mut lse_acc[row]), &part.o[r * hd..][..hd], &part.lse[r..=r])?;
        }
    }
    if let Some(l) = lse {
        l.copy_from_slice(&lse_acc);
    }
    Ok(())
}

/// Splits `count` selected keys into runs (multiples of [`GATHER`]) so that
/// `n_kv_heads × runs` items feed about four tasks per thread.
fn plan(count: usize, shape: &AttnShape) -> Vec<(usize, usize)> {
    let threads = rayon::current_num_threads().max(1);
    let splits = (4 * threads).div_ceil(shape.n_kv_heads).min(count / MIN_SPLIT_KEYS).max(1);
    let part = count.div_ceil(splits).div_ceil(GATHER) * GATHER;
    let mut runs = Vec::with_capacity(splits);
    let mut a = 0;
    loop {
        let b = count.min(a + part);
        runs.push((a, b));
        if b == count {
            return runs;
        }
        a = b;
    }
}

/// The call's inputs, shared by its work items.
struct Gather<'a> {
    q: &'a [f32],
    nq: usize,
    kv: &'a PagedKv<'a>,
    shape: &'a AttnShape,
    scale: f32,
}

impl Gather<'_> {
    fn run(&self, use_simd: bool, kvh: usize, keys: &[u32]) -> Partial {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if use_simd {
            // SAFETY: `use_simd` comes from `has_avx2_fma()`.
            return unsafe { self.item_avx2(kvh, keys) };
        }
        let _ = use_simd;
        self.item::<Scalar>(kvh, keys)
    }

    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    #[target_feature(enable = "avx2,fma")]
    fn item_avx2(&self, kvh: usize, keys: &[u32]) -> Partial {
        self.item::<Avx2>(kvh, keys)
    }

    /// Rows `i · group + hh` (query `i`, query head `hh` of the group of `kvh`) over `keys`.
    #[inline(always)]
    fn item<O: VecOps>(&self, kvh: usize, keys: &[u32]) -> Partial {
        let (h_n, hd, g) = (self.shape.n_heads, self.shape.head_dim, self.shape.group());
        let rows = self.nq * g;
        let first_pos = self.kv.len - self.nq;
        let mut qs = vec![0f32; rows * hd];
        for (r, dst) in qs.chunks_exact_mut(hd).enumerate() {
            let src = &self.q[((r / g) * h_n + kvh * g + r % g) * hd..][..hd];
            dst.iter_mut().zip(src).for_each(|(d, s)| *d = s * self.scale);
        }
        let mut state = OnlineSoftmax::new(rows, hd);
        state.absorb_gathered::<O>(&qs, self.kv, kvh, keys, |r| first_pos + r / g + 1);
        state.finish::<O>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::KvBlocks;

    /// The portable path is what non-x86 targets run; pin it against the SIMD one here.
    #[test]
    fn scalar_and_simd_items_agree() {
        let shape = AttnShape { n_heads: 6, n_kv_heads: 2, head_dim: 80 };
        let (bs, len, nq): (usize, usize, usize) = (16, 150, 3);
        let blocks: Vec<Vec<f32>> = (0..len.div_ceil(bs))
            .map(|b| (0..2 * bs * 80).map(|i| (((b * 31 + i * 7) % 17) as f32 - 8.0) / 9.0).collect())
            .collect();
        let refs: Vec<&[f32]> = blocks.iter().map(|b| b.as_slice()).collect();
        let kv = PagedKv { k_blocks: KvBlocks::F32(&refs), v_blocks: KvBlocks::F32(&refs), block_size: bs, len };
        let q: Vec<f32> = (0..nq * 6 * 80).map(|i| ((i % 23) as f32 - 11.0) / 13.0).collect();
        let keys: Vec<u32> = (0..len as u32).filter(|j| j % 3 != 1 || *j >= 147).collect();
        let gather = Gather { q: &q, nq, kv: &kv, shape: &shape, scale: 0.1 };
        for kvh in 0..2 {
            let (a, b) = (gather.run(false, kvh, &keys), gather.run(simd::has_avx2_fma(), kvh, &keys));
            for (x, y) in a.o.iter().zip(&b.o).chain(a.lse.iter().zip(&b.lse)) {
                assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }
}
