//! `scores` and `accumulate` of many query rows over the same keys — a prefill tile, a
//! verification batch, the nodes of a draft tree — where attention is bound by its
//! multiply-adds rather than by loading keys: 16-lane AVX-512 FMAs where [`super::avx2`]
//! has 8, for the same bits.
//!
//! **Bitwise the per-row primitives.** `avx2::scores` gives each key of a full group of eight
//! the sum `((a₀ + a₁) + (a₂ + a₃)) + ((a₄ + a₅) + (a₆ + a₇))`, where `a_l` is the FMA chain
//! over dims `l, l + 8, l + 16, …` in order. Here a block's keys are first transposed
//! ([`transpose_keys`], widening f16 on the way) so that one vector holds one dim of 16
//! keys; each row keeps eight accumulators, one per `l`, runs those same chains 16 keys at a
//! time, and reduces them with the same adds. Keys after the last full group of eight are
//! left to the caller (single dot products, as there). `accumulate` needs no transpose:
//! every output element's FMA chain over the keys is the one `avx2::accumulate` runs, in
//! registers twice as wide. So a row's attention is the same bits whether a kernel folds it
//! here, three rows at a time ([`super::three_rows`]) or alone. The softmax's exponentials
//! ([`exp_sub_sum`]) run 16 lanes wide here too, bitwise the 8-lane ones.
//!
//! **Cost.** Per key and row, 4 FMAs for the scores and 4 for the values against 8 and 8;
//! the transpose (64 shuffles per 16 × 16 tile) is paid once per block for all the rows,
//! which is why callers take this path only for many rows. Every function here requires
//! AVX-512F, AVX2 and FMA; callers check [`super::has_avx512`] first.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::avx2::{axpy, exp_sub_sum_after};
use crate::attention::KvElem;

/// Keys per vector of the transposed layout.
const LANES: usize = 16;

/// Writes the `cnt = k.len() / hd` keys `k` (row-major, stored as `K`) transposed and
/// widened into `kt`: dim `d` of key `t` at `kt[d * stride + t]`, where `stride` (returned)
/// is `cnt` rounded up to 16 and the keys past `cnt` are zeros. `hd` must be a multiple of 16.
#[target_feature(enable = "avx2,fma,avx512f")]
pub(crate) fn transpose_keys<K: KvElem>(k: &[K], hd: usize, kt: &mut Vec<f32>) -> usize {
    assert!(hd.is_multiple_of(LANES), "transpose_keys: head size {hd} is not a multiple of 16");
    let cnt = k.len() / hd;
    let stride = cnt.next_multiple_of(LANES);
    kt.resize(hd * stride, 0.0);
    for t0 in (0..cnt).step_by(LANES) {
        for d0 in (0..hd).step_by(LANES) {
            let mut tile = [_mm512_setzero_ps(); LANES];
            for (j, row) in tile.iter_mut().enumerate().take(cnt - t0) {
                // SAFETY: key `t0 + j < cnt` has `hd ≥ d0 + 16` values in `k`.
                *row = unsafe { load16(k.as_ptr().add((t0 + j) * hd + d0)) };
            }
            for (i, column) in transpose16(tile).into_iter().enumerate() {
                // SAFETY: `(d0 + i) * stride + t0 + 16 <= hd * stride = kt.len()`.
                unsafe { _mm512_storeu_ps(kt.as_mut_ptr().add((d0 + i) * stride + t0), column) };
            }
        }
    }
    stride
}

/// Sixteen values of `K` at `p`, as f32.
///
/// # Safety
/// Sixteen elements must be readable at `p`, and the CPU must have AVX-512F.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load16<K: KvElem>(p: *const K) -> __m512 {
    // SAFETY: the caller's contract; `HALF` is a constant, so one arm compiles.
    unsafe { if K::HALF { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) } else { _mm512_loadu_ps(p.cast()) } }
}

/// Transposes a 16 × 16 tile: lane `i` of output `j` is lane `j` of input `i`.
#[inline]
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved: t[2k] holds columns 4L, 4L+1 of rows 2k, 2k+1 in 128-bit
    // lane L, t[2k+1] columns 4L+2, 4L+3.
    let mut t = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    // u[4m + c]: column 4L + c of rows 4m..4m + 4 in lane L.
    let mut u = [_mm512_setzero_ps(); 16];
    for m in 0..4 {
        let (a, b) = (t[4 * m], t[4 * m + 2]);
        let (c, d) = (t[4 * m + 1], t[4 * m + 3]);
        u[4 * m] = _mm512_shuffle_ps::<0x44>(a, b);
        u[4 * m + 1] = _mm512_shuffle_ps::<0xEE>(a, b);
        u[4 * m + 2] = _mm512_shuffle_ps::<0x44>(c, d);
        u[4 * m + 3] = _mm512_shuffle_ps::<0xEE>(c, d);
    }
    // Column 4L + c gathers lane L of u[c], u[4 + c], u[8 + c], u[12 + c]: a 4 × 4 transpose
    // of 128-bit lanes.
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[c], u[4 + c]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + c], u[12 + c]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[4 + c] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[8 + c] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}

/// `out[r][t] = q[r] · key t` for `R` rows and the keys `t0..t0 + 16` that lie in full groups
/// of eight (below `out[r].len() / 8 * 8`), each bitwise `avx2::scores(q[r], k, hd, out[r])`
/// over the keys `k` that [`transpose_keys`] left in `kt` with its `stride`. `t0` is a
/// multiple of 16 and `hd` of 16. Each row keeps eight accumulators live, so `R` = 3 fills
/// the 32 vector registers. The keys after the last full group of eight are the caller's
/// (`avx2::scores` gives each a single dot product).
#[target_feature(enable = "avx2,fma,avx512f")]
#[allow(clippy::needless_range_loop)] // `r` and `l` index several arrays at once
pub(crate) fn scores<const R: usize>(
    q: [&[f32]; R],
    kt: &[f32],
    stride: usize,
    t0: usize,
    hd: usize,
    mut out: [&mut [f32]; R],
) {
    let cnt = out[0].len();
    let grouped = cnt / 8 * 8;
    assert!(
        hd.is_multiple_of(LANES)
            && t0.is_multiple_of(LANES)
            && q.iter().all(|q| q.len() >= hd)
            && out.iter().all(|o| o.len() == cnt)
            && stride >= cnt
            && stride.is_multiple_of(LANES)
            && kt.len() >= hd * stride,
        "scores: short q or kt, or rows of different lengths"
    );
    if t0 >= grouped {
        return;
    }
    let mut acc = [[_mm512_setzero_ps(); 8]; R];
    for c in (0..hd).step_by(8) {
        for l in 0..8 {
            // SAFETY: `(c + l) * stride + t0 + 16 <= hd * stride` as `t0 < stride`.
            let keys = unsafe { _mm512_loadu_ps(kt.as_ptr().add((c + l) * stride + t0)) };
            for r in 0..R {
                // SAFETY: `c + l < hd <= q[r].len()`.
                let query = _mm512_set1_ps(unsafe { *q[r].get_unchecked(c + l) });
                acc[r][l] = _mm512_fmadd_ps(query, keys, acc[r][l]);
            }
        }
    }
    let lanes = (grouped - t0).min(LANES);
    let mask = ((1u32 << lanes) - 1) as __mmask16;
    for (row, a) in out.iter_mut().zip(&acc) {
        let low = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
        let high = _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7]));
        // SAFETY: lanes `t0..t0 + lanes` lie below `grouped <= cnt = row.len()`.
        unsafe { _mm512_mask_storeu_ps(row.as_mut_ptr().add(t0), mask, _mm512_add_ps(low, high)) };
    }
}

/// `acc[r] += Σ_t p[r][t] · v[t*hd..(t+1)*hd]` for `R` rows, each bitwise
/// `avx2::accumulate(acc[r], p[r], v, hd)`.
#[target_feature(enable = "avx2,fma,avx512f")]
#[allow(clippy::needless_range_loop)] // `r` and `i` index several arrays at once
pub(crate) fn accumulate<const R: usize>(acc: [&mut [f32]; R], p: [&[f32]; R], v: &[f32], hd: usize) {
    let cnt = p[0].len();
    assert!(
        acc.iter().all(|a| a.len() >= hd) && p.iter().all(|p| p.len() == cnt) && v.len() >= cnt * hd,
        "accumulate: short acc or v, or rows of different lengths"
    );
    let mut c0 = 0;
    while c0 + 64 <= hd {
        let mut reg = [[_mm512_setzero_ps(); 4]; R];
        for r in 0..R {
            for i in 0..4 {
                // SAFETY: `c0 + 64 <= hd ≤ acc[r].len()`.
                reg[r][i] = unsafe { _mm512_loadu_ps(acc[r].as_ptr().add(c0 + LANES * i)) };
            }
        }
        for t in 0..cnt {
            // SAFETY: `t * hd + c0 + 64 <= (t + 1) * hd <= v.len()`.
            let values: [__m512; 4] =
                std::array::from_fn(|i| unsafe { _mm512_loadu_ps(v.as_ptr().add(t * hd + c0 + LANES * i)) });
            for r in 0..R {
                // SAFETY: `t < cnt = p[r].len()`.
                let weight = _mm512_set1_ps(unsafe { *p[r].get_unchecked(t) });
                for i in 0..4 {
                    reg[r][i] = _mm512_fmadd_ps(weight, values[i], reg[r][i]);
                }
            }
        }
        for r in 0..R {
            for i in 0..4 {
                // SAFETY: as for the loads above.
                unsafe { _mm512_storeu_ps(acc[r].as_mut_ptr().add(c0 + LANES * i), reg[r][i]) };
            }
        }
        c0 += 64;
    }
    if c0 < hd {
        for (a, p) in acc.into_iter().zip(p) {
            for (t, &pt) in p.iter().enumerate() {
                axpy(&mut a[c0..hd], pt, &v[t * hd + c0..(t + 1) * hd]);
            }
        }
    }
}

/// `avx2::exp_sub_sum` bit for bit: `x[i] = exp(x[i] - m)` with the same polynomial per
/// lane, 16 lanes at a time, and the same 8-lane running sum (each vector's low half added
/// before its high half); returns the sum. Every attention path's softmax runs it where
/// AVX-512F exists (a 256-query chunk over 3000 f16 keys: 420–437 → 389–424 ms).
#[target_feature(enable = "avx2,fma,avx512f")]
pub(crate) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
    let n = x.len();
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i + LANES <= n {
        // SAFETY: `i + 16 <= n` bounds the access.
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), _mm512_set1_ps(m)));
            _mm512_storeu_ps(p, e);
            acc = _mm256_add_ps(acc, _mm512_castps512_ps256(e));
            acc = _mm256_add_ps(acc, _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(e))));
        }
        i += LANES;
    }
    exp_sub_sum_after(&mut x[i..], m, acc)
}

/// `avx2::exp` in 16 lanes: the same operations lane by lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3)), _mm512_set1_ps(87.3));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3f32, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0)));
    let pow2n = _mm512_slli_epi32::<23>(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)));
    _mm512_mul_ps(p, _mm512_castsi512_ps(pow2n))
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::super::{avx2, has_avx512};
    use super::*;

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|f| f.to_bits()).collect()
    }

    #[test]
    fn transpose_keys_matches_a_scalar_transpose() {
        if !has_avx512() {
            return;
        }
        for hd in [16usize, 64, 80] {
            for cnt in [1usize, 15, 16, 17, 63, 64] {
                let k: Vec<f32> = (0..cnt * hd).map(|i| i as f32).collect();
                let halves: Vec<f16> = k.iter().map(|&x| f16::from_f32(x / 64.0)).collect();
                let (mut kt, mut kt_half) = (vec![f32::NAN; 7], Vec::new());
                // SAFETY: AVX-512F (and AVX2/FMA) checked above.
                let stride = unsafe { transpose_keys(&k, hd, &mut kt) };
                // SAFETY: as above.
                assert_eq!(unsafe { transpose_keys(&halves, hd, &mut kt_half) }, stride);
                assert_eq!(stride, cnt.next_multiple_of(16));
                for d in 0..hd {
                    for t in 0..stride {
                        let (want, want_half) =
                            if t < cnt { (k[t * hd + d], halves[t * hd + d].to_f32()) } else { (0.0, 0.0) };
                        assert_eq!(kt[d * stride + t].to_bits(), want.to_bits(), "hd {hd} keys {cnt} d {d} t {t}");
                        assert_eq!(kt_half[d * stride + t].to_bits(), want_half.to_bits(), "f16, d {d} t {t}");
                    }
                }
            }
        }
    }

    /// The 16-lane softmax exponentials are the 8-lane ones bit for bit: lengths around the
    /// vectors, scores far below and above the max, and infinities.
    #[test]
    fn exp_sub_sum_matches_the_avx2_one_bitwise() {
        if !has_avx512() {
            return;
        }
        let val = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 3.0;
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 24, 31, 33, 64, 65, 200] {
            for m in [0.0f32, 12.5, -40.0, 200.0] {
                let mut x: Vec<f32> = (0..n).map(val).collect();
                if n > 3 {
                    x[3] = f32::NEG_INFINITY;
                    x[n - 1] = 1e30;
                }
                let mut want = x.clone();
                // SAFETY: AVX-512F (and AVX2/FMA) checked above.
                let (got_sum, want_sum) = unsafe { (exp_sub_sum(&mut x, m), avx2::exp_sub_sum(&mut want, m)) };
                assert_eq!(bits(&x), bits(&want), "n {n} m {m}");
                assert_eq!(got_sum.to_bits(), want_sum.to_bits(), "sum, n {n} m {m}");
            }
        }
    }

    /// Each row is the single-row AVX2 primitive's result bit for bit: head sizes with and
    /// without a 64-wide remainder, key counts around the groups of 8 and the 16 lanes.
    #[test]
    fn rows_match_the_single_row_primitives_bitwise() {
        if !has_avx512() {
            return;
        }
        let val = |i: usize, salt: usize| ((i * 37 + salt * 11) % 101) as f32 / 13.0 - 3.7;
        for hd in [16usize, 64, 80, 128] {
            for cnt in [1usize, 7, 8, 9, 15, 16, 17, 24, 63, 64, 65] {
                let q: Vec<Vec<f32>> = (0..3).map(|r| (0..hd).map(|i| val(i, r)).collect()).collect();
                let k: Vec<f32> = (0..cnt * hd).map(|i| val(i, 5)).collect();
                let v: Vec<f32> = (0..cnt * hd).map(|i| val(i, 7)).collect();
                let mut kt = Vec::new();
                // SAFETY: AVX-512F (and AVX2/FMA) checked above.
                let stride = unsafe { transpose_keys(&k, hd, &mut kt) };
                let mut got = vec![vec![f32::NAN; cnt]; 3];
                let [g0, g1, g2] = &mut got[..] else { unreachable!() };
                let grouped = cnt / 8 * 8;
                for t0 in (0..cnt).step_by(16) {
                    let out = [&mut g0[..], &mut g1[..], &mut g2[..]];
                    // SAFETY: as above.
                    unsafe { scores([&q[0], &q[1], &q[2]], &kt, stride, t0, hd, out) };
                }
                for (row, q) in [&mut *g0, &mut *g1, &mut *g2].into_iter().zip(&q) {
                    // SAFETY: as above; fewer than eight keys get single dot products.
                    unsafe { avx2::scores(q, &k[grouped * hd..], hd, &mut row[grouped..]) };
                }
                let p: Vec<Vec<f32>> = (0..3).map(|r| (0..cnt).map(|t| val(t, r + 9) / 7.0).collect()).collect();
                let mut acc: Vec<Vec<f32>> = (0..3).map(|r| (0..hd).map(|i| val(i, r + 3)).collect()).collect();
                let mut want_acc = acc.clone();
                let [a0, a1, a2] = &mut acc[..] else { unreachable!() };
                // SAFETY: as above.
                unsafe { accumulate([a0, a1, a2], [&p[0], &p[1], &p[2]], &v, hd) };
                for r in 0..3 {
                    let mut want = vec![0f32; cnt];
                    // SAFETY: as above.
                    unsafe { avx2::scores(&q[r], &k, hd, &mut want) };
                    assert_eq!(bits(&got[r]), bits(&want), "scores hd {hd} keys {cnt} row {r}");
                    // SAFETY: as above.
                    unsafe { avx2::accumulate(&mut want_acc[r], &p[r], &v, hd) };
                    assert_eq!(bits(&acc[r]), bits(&want_acc[r]), "accumulate hd {hd} keys {cnt} row {r}");
                }
                // One row alone, as the callers run a remainder.
                let mut alone = got[1].clone();
                alone[..grouped].fill(f32::NAN);
                for t0 in (0..cnt).step_by(16) {
                    // SAFETY: as above.
                    unsafe { scores([&q[1]], &kt, stride, t0, hd, [&mut alone]) };
                }
                assert_eq!(bits(&alone), bits(&got[1]), "one row, hd {hd} keys {cnt}");
            }
        }
    }
}
