//! The online-softmax inner loop shared by the dense and the sparse attention kernels.
//!
//! [`OnlineSoftmax`] holds, for each query row of a work item, the running max `m`, the
//! denominator `l` and the unnormalized output; [`OnlineSoftmax::absorb`] folds in a run of
//! contiguous keys, and [`OnlineSoftmax::absorb_rows`] the same keys into several rows (the
//! query heads of a GQA group), three at a time sharing every key and value load but bitwise
//! as row-by-row. Kernels are generic over [`VecOps`] so the whole inner loop is compiled
//! once with AVX2 enabled (inlined into a `#[target_feature]` entry) and once portable.

use std::ops::Range;

use super::{KvElem, PagedKv};
use crate::simd;

/// Scattered keys gathered per batch by [`OnlineSoftmax::absorb_gathered`].
pub(crate) const GATHER: usize = 64;

/// Vector primitives of the inner loop.
pub(crate) trait VecOps {
    fn scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]);
    fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize);
    fn scale(y: &mut [f32], alpha: f32);
    fn exp_sub_sum(x: &mut [f32], m: f32) -> f32;
    /// The largest element, ignoring NaNs; `-inf` for none. Exact, so any order gives it.
    fn max(x: &[f32]) -> f32;

    /// [`Self::scores`] of three rows over the same keys (widened from `K`), bitwise as
    /// three calls; may prefetch `ahead` (laid out as `k`).
    #[inline(always)]
    fn scores3<K: KvElem>(q: [&[f32]; 3], k: &[K], hd: usize, out: [&mut [f32]; 3], _ahead: &[K]) {
        scores_each::<Self>(q, K::as_f32(k, &mut Vec::new()), hd, out)
    }

    /// [`Self::accumulate`] of three rows over the same values (widened from `K`), bitwise
    /// as three calls; may prefetch `ahead` (laid out as `v`).
    #[inline(always)]
    fn accumulate3<K: KvElem>(acc: [&mut [f32]; 3], p: [&[f32]; 3], v: &[K], hd: usize, _ahead: &[K]) {
        accumulate_each::<Self>(acc, p, K::as_f32(v, &mut Vec::new()), hd)
    }
}

/// [`VecOps::scores3`] as three single-row calls.
#[inline(always)]
fn scores_each<O: VecOps + ?Sized>(q: [&[f32]; 3], k: &[f32], hd: usize, out: [&mut [f32]; 3]) {
    for (q, out) in q.into_iter().zip(out) {
        O::scores(q, k, hd, out);
    }
}

/// [`VecOps::accumulate3`] as three single-row calls.
#[inline(always)]
fn accumulate_each<O: VecOps + ?Sized>(acc: [&mut [f32]; 3], p: [&[f32]; 3], v: &[f32], hd: usize) {
    for (acc, p) in acc.into_iter().zip(p) {
        O::accumulate(acc, p, v, hd);
    }
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
    #[inline(always)]
    fn max(x: &[f32]) -> f32 {
        simd::scalar::max(x)
    }
}

/// AVX2 + FMA primitives. Only instantiated inside `#[target_feature(enable = "avx2,fma")]`
/// functions that are entered after [`simd::has_avx2_fma`] returned true.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) struct Avx2;

// SAFETY (all methods): `Avx2` is only used from functions reached after `has_avx2_fma()`
// returned true, so the AVX2/FMA instructions exist on this CPU; the three-row versions run
// only after `has_avx512vl()` said AVX-512VL exists too.
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
    #[inline(always)]
    fn max(x: &[f32]) -> f32 {
        // SAFETY: see impl comment.
        unsafe { simd::avx2::max(x) }
    }
    #[inline(always)]
    fn scores3<K: KvElem>(q: [&[f32]; 3], k: &[K], hd: usize, out: [&mut [f32]; 3], ahead: &[K]) {
        if simd::has_avx512vl() {
            // SAFETY: see impl comment.
            unsafe { simd::three_rows::scores(q, k, hd, out, ahead) }
        } else {
            scores_each::<Self>(q, K::as_f32(k, &mut Vec::new()), hd, out)
        }
    }
    #[inline(always)]
    fn accumulate3<K: KvElem>(acc: [&mut [f32]; 3], p: [&[f32]; 3], v: &[K], hd: usize, ahead: &[K]) {
        if simd::has_avx512vl() {
            // SAFETY: see impl comment.
            unsafe { simd::three_rows::accumulate(acc, p, v, hd, ahead) }
        } else {
            accumulate_each::<Self>(acc, p, K::as_f32(v, &mut Vec::new()), hd)
        }
    }
}

/// The keys and values a kernel will absorb next (the same span of the next cache block),
/// prefetched while the current ones are computed; empty for none.
#[derive(Clone, Copy)]
pub(crate) struct Ahead<'a, K> {
    pub keys: &'a [K],
    pub values: &'a [K],
}

impl<K: 'static> Ahead<'_, K> {
    pub(crate) const NONE: Ahead<'static, K> = Ahead { keys: &[], values: &[] };
}

/// Online-softmax state of `rows` query rows of dimension `hd`.
pub(crate) struct OnlineSoftmax {
    hd: usize,
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
    scores: Vec<f32>,
    /// Keys and values widened for the rows that are not absorbed three at a time.
    widened: (Vec<f32>, Vec<f32>),
}

/// Turns one row's raw scores `sc` into softmax weights against its running max `m`
/// (rescaling its output `acc` and denominator `l` when the max grows) and adds them to `l`.
#[inline(always)]
fn weigh<O: VecOps>(m: &mut f32, l: &mut f32, acc: &mut [f32], sc: &mut [f32]) {
    let mx = O::max(sc);
    if mx > *m {
        if *l > 0.0 {
            let alpha = (*m - mx).exp();
            O::scale(acc, alpha);
            *l *= alpha;
        }
        *m = mx;
    }
    *l += O::exp_sub_sum(sc, *m);
}

/// Normalized output (`rows × hd`) and natural-log log-sum-exp per row (`-inf` for a row that
/// saw no key).
pub(crate) struct Partial {
    pub o: Vec<f32>,
    pub lse: Vec<f32>,
}

impl OnlineSoftmax {
    pub(crate) fn new(rows: usize, hd: usize) -> Self {
        Self {
            hd,
            m: vec![f32::NEG_INFINITY; rows],
            l: vec![0.0; rows],
            acc: vec![0.0; rows * hd],
            scores: Vec::new(),
            widened: Default::default(),
        }
    }

    /// Number of query rows.
    pub(crate) fn rows(&self) -> usize {
        self.m.len()
    }

    pub(crate) fn head_dim(&self) -> usize {
        self.hd
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
        let acc = &mut self.acc[r * hd..][..hd];
        weigh::<O>(&mut self.m[r], &mut self.l[r], acc, sc);
        O::accumulate(acc, sc, values, hd);
    }

    /// [`Self::absorb`] of the same keys (stored as `K`) into each row of `rows` (row `r`'s
    /// query at `qs[r * hd..]`), bitwise as one call per row on the keys widened to f32;
    /// three rows at a time read each key and value once, the first three prefetching `ahead`.
    #[inline(always)]
    pub(crate) fn absorb_rows<O: VecOps, K: KvElem>(
        &mut self,
        rows: Range<usize>,
        qs: &[f32],
        keys: &[K],
        values: &[K],
        ahead: Ahead<'_, K>,
    ) {
        let hd = self.hd;
        let q = |r: usize| &qs[r * hd..][..hd];
        let mut r = rows.start;
        let mut ahead = ahead;
        while r + 3 <= rows.end {
            self.absorb3::<O, K>(r, [q(r), q(r + 1), q(r + 2)], keys, values, ahead);
            ahead = Ahead::NONE;
            r += 3;
        }
        if r < rows.end {
            let (mut wide_k, mut wide_v) = std::mem::take(&mut self.widened);
            let (keys, values) = (K::as_f32(keys, &mut wide_k), K::as_f32(values, &mut wide_v));
            for r in r..rows.end {
                self.absorb::<O>(r, q(r), keys, values);
            }
            self.widened = (wide_k, wide_v);
        }
    }

    /// [`Self::absorb`] for rows `r0..r0 + 3` (queries `q`) over the same keys, bitwise as
    /// three calls; each key and value is read once for the three rows.
    #[inline(always)]
    fn absorb3<O: VecOps, K: KvElem>(
        &mut self,
        r0: usize,
        q: [&[f32]; 3],
        keys: &[K],
        values: &[K],
        ahead: Ahead<'_, K>,
    ) {
        let hd = self.hd;
        let cnt = keys.len() / hd;
        if cnt == 0 {
            return;
        }
        if self.scores.len() < 3 * cnt {
            self.scores.resize(3 * cnt, 0.0);
        }
        let (s0, rest) = self.scores[..3 * cnt].split_at_mut(cnt);
        let (s1, s2) = rest.split_at_mut(cnt);
        O::scores3(q, keys, hd, [&mut *s0, &mut *s1, &mut *s2], ahead.keys);
        let (a0, rest) = self.acc[r0 * hd..(r0 + 3) * hd].split_at_mut(hd);
        let (a1, a2) = rest.split_at_mut(hd);
        for (i, (acc, sc)) in [(&mut *a0, &mut *s0), (&mut *a1, &mut *s1), (&mut *a2, &mut *s2)].into_iter().enumerate()
        {
            weigh::<O>(&mut self.m[r0 + i], &mut self.l[r0 + i], acc, sc);
        }
        O::accumulate3([a0, a1, a2], [s0, s1, s2], values, hd, ahead.values);
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
                kv.key_into(kvh, j as usize, &mut k_buf[slot * hd..][..hd]);
                kv.value_into(kvh, j as usize, &mut v_buf[slot * hd..][..hd]);
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
