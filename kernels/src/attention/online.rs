//! The online-softmax inner loop shared by the dense and the sparse attention kernels.
//!
//! [`OnlineSoftmax`] holds, for each query row of a work item, the running max `m`, the
//! denominator `l` and the unnormalized output; [`OnlineSoftmax::absorb`] folds in a run of
//! contiguous keys. Kernels are generic over [`VecOps`] so the whole inner loop is compiled
//! once with AVX2 enabled (inlined into a `#[target_feature]` entry) and once portable.

use super::PagedKv;
use crate::simd;

/// Scattered keys gathered per batch by [`OnlineSoftmax::absorb_gathered`].
pub(crate) const GATHER: usize = 64;

/// Vector primitives of the inner loop.
pub(crate) trait VecOps {
    fn scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]);
    fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize);
    fn scale(y: &mut [f32], alpha: f32);
    fn exp_sub_sum(x: &mut [f32], m: f32) -> f32;
}

/// Portable primitives.
pub(crate) struct Scalar;

impl VecOps for Scalar {
    #[inline(always)]
    fn scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        simd::scalar::scores(q, k, hd, out)
    }
    #[inline(always)]
    fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
        simd::scalar::accumulate(acc, p, v, hd)
    }
    #[inline(always)]
    fn scale(y: &mut [f32], alpha: f32) {
        simd::scalar::scale(y, alpha)
    }
    #[inline(always)]
    fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        simd::scalar::exp_sub_sum(x, m)
    }
}

/// AVX2 + FMA primitives. Only instantiated inside `#[target_feature(enable = "avx2,fma")]`
/// functions that are entered after [`simd::has_avx2_fma`] returned true.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) struct Avx2;

// SAFETY (all four methods): `Avx2` is only used from functions reached after
// `has_avx2_fma()` returned true, so the AVX2/FMA instructions exist on this CPU.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
impl VecOps for Avx2 {
    #[inline(always)]
    fn scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        // SAFETY: see impl comment.
        unsafe { simd::avx2::scores(q, k, hd, out) }
    }
    #[inline(always)]
    fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
        // SAFETY: see impl comment.
        unsafe { simd::avx2::accumulate(acc, p, v, hd) }
    }
    #[inline(always)]
    fn scale(y: &mut [f32], alpha: f32) {
        // SAFETY: see impl comment.
        unsafe { simd::avx2::scale(y, alpha) }
    }
    #[inline(always)]
    fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        // SAFETY: see impl comment.
        unsafe { simd::avx2::exp_sub_sum(x, m) }
    }
}

/// Online-softmax state of `rows` query rows of dimension `hd`.
pub(crate) struct OnlineSoftmax {
    hd: usize,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    scores: Vec<f32>,
}

/// Normalized output (`rows × hd`) and natural-log log-sum-exp per row (`-inf` for a row that
/// saw no key).
pub(crate) struct Partial {
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
}

impl OnlineSoftmax {
    pub(crate) fn new(rows: usize, hd: usize) -> Self {
        Self { hd, m: vec![f32::NEG_INFINITY; rows], l: vec![0.0; rows], acc: vec![0.0; rows * hd], scores: Vec::new() }
    }

    /// Folds `keys.len() / hd` contiguous keys and their values into row `r`, whose query
    /// `q` is already multiplied by the logit scale.
    #[inline(always)]
    pub(crate) fn absorb<O: VecOps>(&mut self, r: usize, q: &[f32], keys: &[f32], values: &[f32]) {
        let hd = self.hd;
        let cnt = keys.len() / hd;
        if cnt == 0 {
            return;
        }
        if self.scores.len() < cnt {
            self.scores.resize(cnt, 0.0);
        }
        let sc = &mut self.scores[..cnt];
        O::scores(q, keys, hd, sc);
        let mx = sc.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let acc = &mut self.acc[r * hd..][..hd];
        if mx > self.m[r] {
            if self.l[r] > 0.0 {
                let alpha = (self.m[r] - mx).exp();
                O::scale(acc, alpha);
                self.l[r] *= alpha;
            }
            self.m[r] = mx;
        }
        self.l[r] += O::exp_sub_sum(sc, self.m[r]);
        O::accumulate(acc, sc, values, hd);
    }

    /// Folds scattered keys into every row: `keys` (sorted indices into KV head `kvh` of
    /// `kv`) are gathered [`GATHER`] at a time into contiguous buffers — the
    /// "permutation-invariant" trick of algorithms.md §1.3 — and row `r` (query `qs[r]`,
    /// already scaled) takes those below `horizon(r)`.
    #[inline(always)]
    pub(crate) fn absorb_gathered<O: VecOps>(
        &mut self,
        qs: &[f32],
        kv: &PagedKv<'_>,
        kvh: usize,
        keys: &[u32],
        horizon: impl Fn(usize) -> usize,
    ) {
        let hd = self.hd;
        let (mut k_buf, mut v_buf) = (vec![0f32; GATHER * hd], vec![0f32; GATHER * hd]);
        for chunk in keys.chunks(GATHER) {
            for (slot, &j) in chunk.iter().enumerate() {
                k_buf[slot * hd..][..hd].copy_from_slice(kv.key(kvh, j as usize, hd));
                v_buf[slot * hd..][..hd].copy_from_slice(kv.value(kvh, j as usize, hd));
            }
            for r in 0..self.m.len() {
                let visible = chunk.partition_point(|&j| (j as usize) < horizon(r));
                if visible > 0 {
                    self.absorb::<O>(r, &qs[r * hd..][..hd], &k_buf[..visible * hd], &v_buf[..visible * hd]);
                }
            }
        }
    }

    /// Normalizes every row.
    #[inline(always)]
    pub(crate) fn finish<O: VecOps>(mut self) -> Partial {
        let hd = self.hd;
        let mut lse = vec![f32::NEG_INFINITY; self.m.len()];
        for (r, out) in lse.iter_mut().enumerate() {
            if self.l[r] > 0.0 {
                O::scale(&mut self.acc[r * hd..][..hd], 1.0 / self.l[r]);
                *out = self.m[r] + self.l[r].ln();
            }
        }
        Partial { o: self.acc, lse }
    }
}
