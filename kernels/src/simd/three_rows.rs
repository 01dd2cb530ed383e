//! `scores` and `accumulate` of three query rows over the same keys, each key and value
//! loaded once for all three — the query heads of a GQA group attend to one KV head, and a
//! decode row's attention is bound by these loads, not by its FMAs.
//!
//! **Bitwise the per-row primitives.** Every row gets exactly the FMAs, in the same order,
//! and the same reductions as [`super::avx2::scores`] / [`super::avx2::accumulate`] give
//! it alone; only the loads are shared. A row's attention is therefore the same bits
//! whether it was folded alone or in a group, and kernels may group rows or not.
//!
//! **Prefetch.** Both take `ahead`, the same span of the next cache block (empty for none),
//! and ask for its lines while they compute: a long-context decode step streams its keys
//! and values from DRAM, and without the hint each block's first loads wait on memory with
//! no other work in flight. Prefetches change no result.
//!
//! **Registers.** Eight keys (or 64 value columns) of three rows keep 24 accumulators
//! live: [`scores`] and [`accumulate`] use the 32 `ymm` registers of AVX-512VL (callers
//! check [`super::has_avx512vl`] first). AVX2's 16 registers take half of that per pass:
//! [`scores_avx2`] and [`accumulate_avx2`] run each 8-key group as two passes of 4 keys and
//! each 64-column slice as two passes of 32, with the same per-key and per-column FMA
//! chains and the same reduction tree, so they give the same bits (callers check
//! [`super::has_avx2_fma`]).

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx2::{dot, reduce4, reduce8};
use crate::attention::KvElem;

/// Eight values of `K` at `p`, as f32.
///
/// # Safety
/// Eight elements must be readable at `p`, and the CPU must have F16C (callers run with it).
#[inline(always)]
unsafe fn load8<K: KvElem>(p: *const K) -> __m256 {
    // SAFETY: the caller's contract; `HALF` is a constant, so one arm compiles.
    unsafe { if K::HALF { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) } else { _mm256_loadu_ps(p.cast()) } }
}

/// `out[r][t] = q[r] · k[t*hd..(t+1)*hd]` for the three rows, each bitwise
/// `avx2::scores(q[r], k as f32, hd, out[r])`; prefetches `ahead` (laid out as `k`) on the way.
/// Keys stored as f16 are widened in registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
pub(crate) fn scores<K: KvElem>(q: [&[f32]; 3], k: &[K], hd: usize, out: [&mut [f32]; 3], ahead: &[K]) {
    // SAFETY: AVX2, FMA and F16C are enabled here.
    unsafe { scores_in_passes::<K, 8>(q, k, hd, out, ahead) }
}

/// [`scores`] within AVX2's 16 registers: four keys per pass.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn scores_avx2<K: KvElem>(q: [&[f32]; 3], k: &[K], hd: usize, out: [&mut [f32]; 3], ahead: &[K]) {
    // SAFETY: AVX2, FMA and F16C are enabled here.
    unsafe { scores_in_passes::<K, 4>(q, k, hd, out, ahead) }
}

/// [`scores`] taking each group of eight keys `KEYS` (8 or 4) at a time. A key's FMA chain
/// does not depend on the other keys of its pass, and [`reduce8`]'s tree sums keys 0–3 and
/// 4–7 of a group separately ([`reduce4`] is its half), so both widths give the same bits.
///
/// # Safety
/// AVX2, FMA and F16C must be available (and the caller must enable them, so that this
/// inlines into code that uses them).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `j` numbers both the key and its accumulator
unsafe fn scores_in_passes<K: KvElem, const KEYS: usize>(
    q: [&[f32]; 3],
    k: &[K],
    hd: usize,
    mut out: [&mut [f32]; 3],
    ahead: &[K],
) {
    let cnt = out[0].len();
    assert!(
        q.iter().all(|q| q.len() >= hd) && out.iter().all(|o| o.len() == cnt) && k.len() >= cnt * hd,
        "scores: short q or k, or rows of different lengths"
    );
    // SAFETY: the caller guarantees AVX2, FMA and F16C, as for every intrinsic below.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut t = 0;
    if hd.is_multiple_of(8) {
        while t + 8 <= cnt {
            for first in (t..t + 8).step_by(KEYS) {
                let mut acc = [[zero; KEYS]; 3];
                let mut c = 0;
                while c < hd {
                    // SAFETY: `c + 8 <= hd ≤ q[r].len()` and `(first + j) * hd + c + 8 <= cnt * hd`.
                    unsafe {
                        let mut qc = [zero; 3];
                        for (qr, row) in qc.iter_mut().zip(q) {
                            *qr = _mm256_loadu_ps(row.as_ptr().add(c));
                        }
                        // The 8 keys' `8 · hd` values of `ahead`: 64 per step of `c`.
                        if first == t && !ahead.is_empty() {
                            for line in 0..size_of::<K>() {
                                prefetch(ahead, t * hd + 8 * c + line * (64 / size_of::<K>()));
                            }
                        }
                        for j in 0..KEYS {
                            let kv = load8(k.as_ptr().add((first + j) * hd + c));
                            for r in 0..3 {
                                acc[r][j] = _mm256_fmadd_ps(qc[r], kv, acc[r][j]);
                            }
                        }
                    }
                    c += 8;
                }
                for (row, a) in out.iter_mut().zip(acc) {
                    let mut eight = [zero; 8];
                    eight[..KEYS].copy_from_slice(&a);
                    // SAFETY: `first + KEYS <= t + 8 <= cnt = row.len()`.
                    unsafe {
                        if KEYS == 8 {
                            _mm256_storeu_ps(row.as_mut_ptr().add(first), reduce8(eight));
                        } else {
                            _mm_storeu_ps(
                                row.as_mut_ptr().add(first),
                                reduce4([eight[0], eight[1], eight[2], eight[3]]),
                            );
                        }
                    }
                }
            }
            t += 8;
        }
    }
    let mut widened = Vec::new();
    for (qr, row) in q.iter().zip(out) {
        for (tt, o) in row.iter_mut().enumerate().skip(t) {
            // SAFETY: the caller guarantees AVX2 and FMA.
            *o = unsafe { dot(&qr[..hd], K::as_f32(&k[tt * hd..(tt + 1) * hd], &mut widened)) };
        }
    }
}

/// `acc[r] += Σ_t p[r][t] · v[t*hd..(t+1)*hd]` for the three rows, each bitwise
/// `avx2::accumulate(acc[r], p[r], v as f32, hd)`; prefetches `ahead` (laid out as `v`) on
/// the way. Values stored as f16 are widened in registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl")]
pub(crate) fn accumulate<K: KvElem>(acc: [&mut [f32]; 3], p: [&[f32]; 3], v: &[K], hd: usize, ahead: &[K]) {
    // SAFETY: AVX2, FMA and F16C are enabled here.
    unsafe { accumulate_in_passes::<K, 8>(acc, p, v, hd, ahead) }
}

/// [`accumulate`] within AVX2's 16 registers: 32 columns per pass.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) fn accumulate_avx2<K: KvElem>(acc: [&mut [f32]; 3], p: [&[f32]; 3], v: &[K], hd: usize, ahead: &[K]) {
    // SAFETY: AVX2, FMA and F16C are enabled here.
    unsafe { accumulate_in_passes::<K, 4>(acc, p, v, hd, ahead) }
}

/// [`accumulate`] taking each 64-column slice `8 · REGS` columns (64 or 32) at a time: a
/// column's FMA chain runs over the keys in order either way, so both give the same bits.
///
/// # Safety
/// As [`scores_in_passes`].
#[inline(always)]
#[allow(clippy::needless_range_loop)] // `i` numbers both a column slice and its register
unsafe fn accumulate_in_passes<K: KvElem, const REGS: usize>(
    acc: [&mut [f32]; 3],
    p: [&[f32]; 3],
    v: &[K],
    hd: usize,
    ahead: &[K],
) {
    let cnt = p[0].len();
    assert!(
        acc.iter().all(|a| a.len() >= hd) && p.iter().all(|p| p.len() == cnt) && v.len() >= cnt * hd,
        "accumulate: short acc or v, or rows of different lengths"
    );
    // SAFETY: the caller guarantees AVX2, FMA and F16C, as for every intrinsic below.
    let zero = unsafe { _mm256_setzero_ps() };
    let mut c0 = 0;
    while c0 + 64 <= hd {
        for c in (c0..c0 + 64).step_by(8 * REGS) {
            let mut reg = [[zero; REGS]; 3];
            for r in 0..3 {
                for i in 0..REGS {
                    // SAFETY: `c + 8 * REGS <= c0 + 64 <= hd ≤ acc[r].len()`.
                    reg[r][i] = unsafe { _mm256_loadu_ps(acc[r].as_ptr().add(c + 8 * i)) };
                }
            }
            for t in 0..cnt {
                if c == 0 && !ahead.is_empty() {
                    let per_line = 64 / size_of::<K>();
                    for line in 0..hd.div_ceil(per_line) {
                        prefetch(ahead, t * hd + per_line * line);
                    }
                }
                // SAFETY: `t * hd + c + 8i + 8 <= (t + 1) * hd <= v.len()`.
                unsafe {
                    // A loop, not `map`: a closure does not inherit the target features.
                    let mut pv = [zero; 3];
                    for (pr, row) in pv.iter_mut().zip(p) {
                        *pr = _mm256_set1_ps(row[t]);
                    }
                    for i in 0..REGS {
                        let vv = load8(v.as_ptr().add(t * hd + c + 8 * i));
                        for r in 0..3 {
                            reg[r][i] = _mm256_fmadd_ps(pv[r], vv, reg[r][i]);
                        }
                    }
                }
            }
            for r in 0..3 {
                for i in 0..REGS {
                    // SAFETY: as for the loads above.
                    unsafe { _mm256_storeu_ps(acc[r].as_mut_ptr().add(c + 8 * i), reg[r][i]) };
                }
            }
        }
        c0 += 64;
    }
    if c0 < hd {
        let mut widened = Vec::new();
        for (a, p) in acc.into_iter().zip(p) {
            for (t, &pt) in p.iter().enumerate() {
                // SAFETY: the caller guarantees AVX2 and FMA.
                unsafe {
                    super::avx2::axpy(&mut a[c0..hd], pt, K::as_f32(&v[t * hd + c0..(t + 1) * hd], &mut widened))
                };
            }
        }
    }
}

/// Asks for the cache line holding `ahead[i]`, if `ahead` has one.
#[inline(always)]
fn prefetch<K>(ahead: &[K], i: usize) {
    if i < ahead.len() {
        // SAFETY: `i` is in bounds; a prefetch reads nothing architecturally.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(ahead.as_ptr().add(i).cast()) };
    }
}

#[cfg(test)]
mod tests {
    use super::super::{avx2, has_avx2_fma, has_avx512vl};
    use super::*;

    /// The implementations this CPU runs: AVX2's (`false`) and AVX-512VL's (`true`).
    fn widths() -> Vec<bool> {
        [false, true].into_iter().filter(|&vl| if vl { has_avx512vl() } else { has_avx2_fma() }).collect()
    }

    /// [`scores`] or [`scores_avx2`].
    ///
    /// # Safety
    /// `vl` is one of [`widths`].
    unsafe fn scores_with<K: KvElem>(vl: bool, q: [&[f32]; 3], k: &[K], hd: usize, out: [&mut [f32]; 3], ahead: &[K]) {
        // SAFETY: the caller's contract.
        unsafe { if vl { scores(q, k, hd, out, ahead) } else { scores_avx2(q, k, hd, out, ahead) } }
    }

    /// [`accumulate`] or [`accumulate_avx2`].
    ///
    /// # Safety
    /// `vl` is one of [`widths`].
    unsafe fn accumulate_with<K: KvElem>(
        vl: bool,
        acc: [&mut [f32]; 3],
        p: [&[f32]; 3],
        v: &[K],
        hd: usize,
        ahead: &[K],
    ) {
        // SAFETY: the caller's contract.
        unsafe { if vl { accumulate(acc, p, v, hd, ahead) } else { accumulate_avx2(acc, p, v, hd, ahead) } }
    }

    /// Each row of the three-row primitives is the single-row AVX2 primitive's result bit
    /// for bit, in both widths: head sizes with and without 8- and 64-wide remainders, key
    /// counts around the 8-key groups.
    #[test]
    fn rows_match_the_single_row_primitives_bitwise() {
        let val = |i: usize, salt: usize| ((i * 37 + salt * 11) % 101) as f32 / 13.0 - 3.7;
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for vl in widths() {
            for hd in [8usize, 12, 16, 64, 80, 96, 128] {
                for cnt in [1usize, 7, 8, 9, 12, 63, 64, 65] {
                    let q: Vec<Vec<f32>> = (0..3).map(|r| (0..hd).map(|i| val(i, r)).collect()).collect();
                    let k: Vec<f32> = (0..cnt * hd).map(|i| val(i, 5)).collect();
                    let v: Vec<f32> = (0..cnt * hd).map(|i| val(i, 7)).collect();
                    let (mut got, mut want) = (vec![vec![0f32; cnt]; 3], vec![vec![0f32; cnt]; 3]);
                    let [g0, g1, g2] = &mut got[..] else { unreachable!() };
                    // SAFETY: `vl` is one this CPU runs.
                    unsafe { scores_with(vl, [&q[0], &q[1], &q[2]], &k, hd, [g0, g1, g2], &v) };
                    for r in 0..3 {
                        // SAFETY: as above (either width implies AVX2/FMA).
                        unsafe { avx2::scores(&q[r], &k, hd, &mut want[r]) };
                        assert_eq!(bits(&got[r]), bits(&want[r]), "vl {vl} scores hd {hd} keys {cnt} row {r}");
                    }
                    let p: Vec<Vec<f32>> = (0..3).map(|r| (0..cnt).map(|t| val(t, r + 9) / 7.0).collect()).collect();
                    let mut acc: Vec<Vec<f32>> = (0..3).map(|r| (0..hd).map(|i| val(i, r + 3)).collect()).collect();
                    let mut want = acc.clone();
                    let [a0, a1, a2] = &mut acc[..] else { unreachable!() };
                    // SAFETY: as above.
                    unsafe { accumulate_with(vl, [a0, a1, a2], [&p[0], &p[1], &p[2]], &v, hd, &k) };
                    for r in 0..3 {
                        // SAFETY: as above.
                        unsafe { avx2::accumulate(&mut want[r], &p[r], &v, hd) };
                        assert_eq!(bits(&acc[r]), bits(&want[r]), "vl {vl} accumulate hd {hd} keys {cnt} row {r}");
                    }
                }
            }
        }
    }

    /// Keys and values stored as f16 give bitwise the single-row AVX2 primitives' results on
    /// the widened values, in both widths: widening is exact, and the FMAs are the same.
    #[test]
    fn f16_rows_match_the_f32_primitives_on_widened_values() {
        let val = |i: usize, salt: usize| ((i * 37 + salt * 11) % 101) as f32 / 13.0 - 3.7;
        let bits = |x: &[f32]| x.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for vl in widths() {
            for hd in [8usize, 12, 64, 80] {
                for cnt in [1usize, 7, 8, 9, 64, 65] {
                    let q: Vec<Vec<f32>> = (0..3).map(|r| (0..hd).map(|i| val(i, r)).collect()).collect();
                    let k: Vec<half::f16> = (0..cnt * hd).map(|i| half::f16::from_f32(val(i, 5))).collect();
                    let v: Vec<half::f16> = (0..cnt * hd).map(|i| half::f16::from_f32(val(i, 7))).collect();
                    let (k32, v32): (Vec<f32>, Vec<f32>) =
                        (k.iter().map(|x| x.to_f32()).collect(), v.iter().map(|x| x.to_f32()).collect());
                    let mut got = vec![vec![0f32; cnt]; 3];
                    let [g0, g1, g2] = &mut got[..] else { unreachable!() };
                    // SAFETY: `vl` is one this CPU runs.
                    unsafe { scores_with(vl, [&q[0], &q[1], &q[2]], &k, hd, [g0, g1, g2], &v) };
                    let p: Vec<Vec<f32>> = (0..3).map(|r| (0..cnt).map(|t| val(t, r + 9) / 7.0).collect()).collect();
                    let mut acc: Vec<Vec<f32>> = (0..3).map(|r| (0..hd).map(|i| val(i, r + 3)).collect()).collect();
                    let mut want_acc = acc.clone();
                    let [a0, a1, a2] = &mut acc[..] else { unreachable!() };
                    // SAFETY: as above.
                    unsafe { accumulate_with(vl, [a0, a1, a2], [&p[0], &p[1], &p[2]], &v, hd, &k) };
                    for r in 0..3 {
                        let mut want = vec![0f32; cnt];
                        // SAFETY: as above (either width implies AVX2/FMA/F16C).
                        unsafe { avx2::scores(&q[r], &k32, hd, &mut want) };
                        assert_eq!(bits(&got[r]), bits(&want), "vl {vl} scores hd {hd} keys {cnt} row {r}");
                        // SAFETY: as above.
                        unsafe { avx2::accumulate(&mut want_acc[r], &p[r], &v32, hd) };
                        assert_eq!(bits(&acc[r]), bits(&want_acc[r]), "vl {vl} accumulate hd {hd} keys {cnt} row {r}");
                    }
                }
            }
        }
    }
}
