//! The online-softmax inner loop shared by the dense and the sparse attention kernels.
//!
//! [`OnlineSoftmax`] holds, for each query row of a work item, the running max `m`, the
//! denominator `l` and the unnormalized output; [`OnlineSoftmax::absorb`] folds in a run of
//! contiguous keys, and [`OnlineSoftmax::absorb_rows`] the same keys into several rows (the
//! query heads of a GQA group), three at a time sharing every key and value load but bitwise
//! as row-by-row — or, for many rows, over the keys transposed once with 16-lane FMAs
//! (`simd::wide_rows`), bitwise as row-by-row too. Kernels are generic over [`VecOps`] so the
//! whole inner loop is compiled once with AVX2 enabled (inlined into a `#[target_feature]`
//! entry) and once portable.

use std::ops::Range;

use super::{KvElem, PagedKv};
use crate::simd;

/// Scattered keys gathered per batch by [`OnlineSoftmax::absorb_gathered`].
pub(crate) const GATHER: usize = 64;

/// Rows from which [`OnlineSoftmax::absorb_rows`] takes the wide path where there is one:
/// below it, transposing the block costs more than the wider FMAs save (a two-query causal
/// chunk of SmolLM2's 3-head groups, 6 rows, measured slower wide than three at a time).
const WIDE_ROWS: usize = 9;

/// Keys per column of the wide path's transposed block: one 16-lane vector.
const WIDE_KEYS: usize = 16;

/// Rows per call of the wide primitives: `simd::wide_rows` keeps three rows' 24 score
/// accumulators in the 32 vector registers.
const WIDE_GROUP: usize = 3;

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

    /// Whether this CPU runs the wide primitives below for head size `hd`; they are called
    /// only where it said so.
    #[inline(always)]
    fn wide(_hd: usize) -> bool {
        false
    }

    /// Writes keys (stored as `K`) transposed and widened for [`Self::scores_wide`] into
    /// `kt`; returns its stride (see `simd::wide_rows::transpose_keys`).
    #[inline(always)]
    fn transpose_keys<K: KvElem>(_k: &[K], _hd: usize, _kt: &mut Vec<f32>) -> usize {
        unreachable!("no wide primitives")
    }

    /// [`Self::scores`] of `R` rows over the keys `t0..t0 + 16` in full groups of eight,
    /// from the keys as [`Self::transpose_keys`] left them (with its stride), bitwise as
    /// `R` calls (see `simd::wide_rows::scores`).
    #[inline(always)]
    fn scores_wide<const R: usize>(
        _q: [&[f32]; R],
        _keys: (&[f32], usize),
        _t0: usize,
        _hd: usize,
        _out: [&mut [f32]; R],
    ) {
        unreachable!("no wide primitives")
    }

    /// [`Self::accumulate`] of `R` rows over the same values, bitwise as `R` calls.
    #[inline(always)]
    fn accumulate_wide<const R: usize>(_acc: [&mut [f32]; R], _p: [&[f32]; R], _v: &[f32], _hd: usize) {
        unreachable!("no wide primitives")
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
// returned true, so the AVX2/FMA instructions exist on this CPU; the three-row versions take
// their AVX-512VL form only after `has_avx512vl()` said AVX-512VL exists too, and the wide
// ones run only after `wide()` found AVX-512F.
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
        // SAFETY: see impl comment; the 16-lane version runs only where AVX-512F exists.
        unsafe { if simd::has_avx512() { simd::wide_rows::exp_sub_sum(x, m) } else { simd::avx2::exp_sub_sum(x, m) } }
    }
    #[inline(always)]
    fn max(x: &[f32]) -> f32 {
        // SAFETY: see impl comment.
        unsafe { simd::avx2::max(x) }
    }
    #[inline(always)]
    fn scores3<K: KvElem>(q: [&[f32]; 3], k: &[K], hd: usize, out: [&mut [f32]; 3], ahead: &[K]) {
        // SAFETY: see impl comment.
        unsafe {
            if simd::has_avx512vl() {
                simd::three_rows::scores(q, k, hd, out, ahead)
            } else {
                simd::three_rows::scores_avx2(q, k, hd, out, ahead)
            }
        }
    }
    #[inline(always)]
    fn accumulate3<K: KvElem>(acc: [&mut [f32]; 3], p: [&[f32]; 3], v: &[K], hd: usize, ahead: &[K]) {
        // SAFETY: see impl comment.
        unsafe {
            if simd::has_avx512vl() {
                simd::three_rows::accumulate(acc, p, v, hd, ahead)
            } else {
                simd::three_rows::accumulate_avx2(acc, p, v, hd, ahead)
            }
        }
    }
    #[inline(always)]
    fn wide(hd: usize) -> bool {
        hd.is_multiple_of(16) && simd::has_avx512()
    }
    #[inline(always)]
    fn transpose_keys<K: KvElem>(k: &[K], hd: usize, kt: &mut Vec<f32>) -> usize {
        // SAFETY: see impl comment.
        unsafe { simd::wide_rows::transpose_keys(k, hd, kt) }
    }
    #[inline(always)]
    fn scores_wide<const R: usize>(
        q: [&[f32]; R],
        (kt, stride): (&[f32], usize),
        t0: usize,
        hd: usize,
        out: [&mut [f32]; R],
    ) {
        // SAFETY: see impl comment.
        unsafe { simd::wide_rows::scores(q, kt, stride, t0, hd, out) }
    }
    #[inline(always)]
    fn accumulate_wide<const R: usize>(acc: [&mut [f32]; R], p: [&[f32]; R], v: &[f32], hd: usize) {
        // SAFETY: see impl comment.
        unsafe { simd::wide_rows::accumulate(acc, p, v, hd) }
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
    /// Keys and values widened to f32 for the paths that read them so.
    widened: (Vec<f32>, Vec<f32>),
    /// A block's keys transposed for the wide path.
    keys_t: Vec<f32>,
}

/// The first `R` rows of `rows`.
#[inline(always)]
fn first_rows<'a, const R: usize>(mut rows: std::slice::ChunksExactMut<'a, f32>) -> [&'a mut [f32]; R] {
    std::array::from_fn(|_| rows.next().expect("at least R rows"))
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
            keys_t: Vec::new(),
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
    /// query at `qs[r * hd..]`), bitwise as one call per row on the keys widened to f32.
    /// From [`WIDE_ROWS`] rows, where `O` has wide primitives, the keys are transposed once
    /// and the rows take 16-lane FMAs; otherwise three rows at a time read each key and value
    /// once (over keys widened once for all the groups when there are several and they are
    /// stored as f16). The next block's `ahead` is prefetched along the way, except on that
    /// widened path, which reads the block through its own copy.
    #[inline(always)]
    pub(crate) fn absorb_rows<O: VecOps, K: KvElem>(
        &mut self,
        rows: Range<usize>,
        qs: &[f32],
        keys: &[K],
        values: &[K],
        ahead: Ahead<'_, K>,
    ) {
        if rows.len() >= WIDE_ROWS && O::wide(self.hd) {
            self.absorb_wide::<O, K>(rows, qs, keys, values, ahead);
        } else if K::HALF && rows.len() > 3 {
            let (mut wide_k, mut wide_v) = std::mem::take(&mut self.widened);
            let (keys, values) = (K::as_f32(keys, &mut wide_k), K::as_f32(values, &mut wide_v));
            self.absorb_in_threes::<O, f32>(rows, qs, keys, values, Ahead::NONE);
            self.widened = (wide_k, wide_v);
        } else {
            self.absorb_in_threes::<O, K>(rows, qs, keys, values, ahead);
        }
    }

    /// [`Self::absorb_rows`] three rows at a time, the first three prefetching `ahead`; a
    /// remainder row by row over widened keys.
    #[inline(always)]
    fn absorb_in_threes<O: VecOps, K: KvElem>(
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

    /// The wide path of [`Self::absorb_rows`]: the keys transposed once (widened on the way)
    /// and the values widened once; then every row's scores, one 16-key column of the
    /// transposed keys at a time so that it stays in L1 for all the rows, and the rows'
    /// softmax and values [`WIDE_GROUP`] at a time, each group asking for its share of
    /// `ahead` so the hints spread over the block's work.
    #[inline(always)]
    fn absorb_wide<O: VecOps, K: KvElem>(
        &mut self,
        rows: Range<usize>,
        qs: &[f32],
        keys: &[K],
        values: &[K],
        ahead: Ahead<'_, K>,
    ) {
        let hd = self.hd;
        let cnt = keys.len() / hd;
        if cnt == 0 {
            return;
        }
        let (mut wide_k, mut wide_v) = std::mem::take(&mut self.widened);
        let mut kt = std::mem::take(&mut self.keys_t);
        let stride = O::transpose_keys(keys, hd, &mut kt);
        let values = K::as_f32(values, &mut wide_v);
        let n = rows.len();
        if self.scores.len() < n * cnt {
            self.scores.resize(n * cnt, 0.0);
        }
        let scores = &mut self.scores[..n * cnt];
        let q = |i: usize| &qs[(rows.start + i) * hd..][..hd];
        for t0 in (0..cnt).step_by(WIDE_KEYS) {
            let mut i = 0;
            while i < n {
                let rows = scores[i * cnt..].chunks_exact_mut(cnt);
                match n - i {
                    1 => O::scores_wide::<1>([q(i)], (&kt, stride), t0, hd, first_rows(rows)),
                    2 => O::scores_wide::<2>([q(i), q(i + 1)], (&kt, stride), t0, hd, first_rows(rows)),
                    _ => O::scores_wide::<3>([q(i), q(i + 1), q(i + 2)], (&kt, stride), t0, hd, first_rows(rows)),
                }
                i += WIDE_GROUP;
            }
        }
        // The keys after the last group of eight get single dot products, as in `O::scores`.
        let grouped = cnt / 8 * 8;
        if grouped < cnt {
            let tail = K::as_f32(&keys[grouped * hd..], &mut wide_k);
            for (i, row) in scores.chunks_exact_mut(cnt).enumerate() {
                O::scores(q(i), tail, hd, &mut row[grouped..]);
            }
        }
        let groups = n.div_ceil(WIDE_GROUP);
        let mut ahead_keys = ahead.keys.chunks(ahead.keys.len().div_ceil(groups).max(1));
        let mut ahead_values = ahead.values.chunks(ahead.values.len().div_ceil(groups).max(1));
        let mut r = rows.start;
        while r < rows.end {
            simd::prefetch_lines(ahead_keys.next().unwrap_or_default());
            simd::prefetch_lines(ahead_values.next().unwrap_or_default());
            match rows.end - r {
                1 => self.weigh_and_accumulate::<O, 1>(r, r - rows.start, cnt, values),
                2 => self.weigh_and_accumulate::<O, 2>(r, r - rows.start, cnt, values),
                _ => self.weigh_and_accumulate::<O, WIDE_GROUP>(r, r - rows.start, cnt, values),
            }
            r += WIDE_GROUP;
        }
        self.widened = (wide_k, wide_v);
        self.keys_t = kt;
    }

    /// Rows `r0..r0 + R`, whose raw scores over `cnt` keys are rows `s0..s0 + R` of the
    /// scores buffer: softmax weights, then their values (f32) folded in, bitwise as `R`
    /// calls of [`Self::absorb`]'s second half.
    #[inline(always)]
    fn weigh_and_accumulate<O: VecOps, const R: usize>(&mut self, r0: usize, s0: usize, cnt: usize, values: &[f32]) {
        let hd = self.hd;
        let sc: [&mut [f32]; R] = first_rows(self.scores[s0 * cnt..].chunks_exact_mut(cnt));
        let acc: [&mut [f32]; R] = first_rows(self.acc[r0 * hd..].chunks_exact_mut(hd));
        for i in 0..R {
            weigh::<O>(&mut self.m[r0 + i], &mut self.l[r0 + i], &mut *acc[i], &mut *sc[i]);
        }
        O::accumulate_wide(acc, sc.each_ref().map(|s| &**s), values, hd);
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
