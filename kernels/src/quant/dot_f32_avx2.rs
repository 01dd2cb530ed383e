//! AVX2 + FMA + F16C dot products of `R` repacked weight rows (see `packed`) with `K`
//! (1..=4) **f32** activation rows: the exact product `Σ w·x`, no activation rounding.
//! Batches take one weight row per call; a single activation row (decode of one sequence)
//! takes four, which shares the call and the final sums among them and prefetches the rows
//! a few calls ahead: `examples/matmul_bench.rs 1 small`, `f32` at one row, 1536×576
//! `Q4_1` 74.0–74.6 → 59.8–60.7 µs.
//!
//! Decode is bound by streaming the weights from memory, so the weights are unpacked to f32
//! in registers on the fly rather than decoded to a buffer: per 8 quants one widening load
//! (`vpmovzxbd` / `vpmovsxbd`), for 4-bit types one mask or shift (a packed byte holds the
//! same element of two paired blocks), one int→float conversion, and then one FMA per
//! activation row, so the unpacking is shared by the `K` rows. Per block the FMAs collect
//! `Σ q·x` in a vector and the block scale is applied with one more FMA
//! (`acc += d · Σ q·x`); the `Q4_1` minimum / `Q4_0` offset uses the activation block sums
//! `Σx` (`acc += m · Σx`, with `m = -8d` for `Q4_0`), eight blocks per FMA. One horizontal
//! sum per output at the end. An output's arithmetic does not depend on `R` or `K`.
//!
//! Every function here requires AVX2, FMA and F16C; callers check with
//! [`crate::simd::has_avx2_fma`] first.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::simd::avx2::hsum;

/// One f32 activation row in the packed layout: block sums `Σx` (`nb8` slots, zero-padded)
/// and the values (zero-padded to an even block count).
pub(crate) type F32Row<'a> = (&'a [f32], &'a [f32]);

/// Calls between a group of `R > 1` rows and the rows it prefetches. Rows read together are
/// interleaved streams the hardware prefetcher does not follow: without the hint, 4-row
/// groups made a 1-stream decode step from DRAM no faster than single rows
/// (`examples/matmul_bench.rs 1 dram`, one thread, 13.2–14.6 ms against 12.8–13.8).
const PREFETCH_CALLS: usize = 8;

/// Prefetches `lines` cache lines from `at`, moved `PREFETCH_CALLS` calls of `R` rows of
/// `row_bytes` further on; a prefetch never faults, and `wrapping_add` forms any address.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn prefetch_ahead<const R: usize>(at: *const u8, row_bytes: usize, lines: usize) {
    let ahead = at.wrapping_add(PREFETCH_CALLS * R * row_bytes);
    for line in 0..lines {
        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64 * line) as *const i8);
    }
}

/// 8 consecutive bytes at `p` zero-extended to i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_u8(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
}

/// 8 consecutive bytes at `p` sign-extended to i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load8_i8(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    unsafe { _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
}

/// `R` packed `Q4_0` / `Q4_1` rows · `K` f32 activation rows:
/// `out[r][k] = Σ_b d_b Σ nib·x + m_b Σx_b` with `m = -8 d` for `Q4_0`. Each output's
/// arithmetic is the same whatever `R` and `K` are (the rows only share the loop and the
/// activation loads), so grouping rows changes no result.
///
/// # Safety
/// AVX2/FMA/F16C must be available; every `w[r]` is a packed row of `nb` blocks (`nb8` scale
/// slots, minimums iff `has_m`); each activation row holds `nb8` block sums and `nb` rounded up
/// to even blocks of values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_packed_q4<const R: usize, const K: usize>(
    w: [&[u8]; R],
    nb: usize,
    nb8: usize,
    has_m: bool,
    a: [F32Row<'_>; K],
) -> [[f32; K]; R] {
    // Separate accumulators for the two blocks of a pair and the minimum term, so the
    // per-block FMAs do not form one serial dependency chain (latency-bound at n = 1).
    let mut acc = [[[_mm256_setzero_ps(); K]; 2]; R];
    let mut accm = [[_mm256_setzero_ps(); K]; R];
    let m4 = _mm256_set1_epi32(0xF);
    // SAFETY: the scale arrays and pair quants lie inside each packed row (caller contract);
    // every activation read below stays within the padded activation row.
    unsafe {
        let mut g = 0;
        while g < nb {
            for r in 0..R {
                let dptr = w[r].as_ptr();
                let mptr = dptr.add(2 * nb8);
                let qs = dptr.add(2 * nb8 * (1 + has_m as usize));
                if R > 1 {
                    // These 8 blocks' quants, two lines, of the row `PREFETCH_CALLS` calls on.
                    prefetch_ahead::<R>(qs.wrapping_add(16 * g), w[r].len(), 2);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(dptr.add(2 * g) as *const __m128i));
                let mw = if has_m {
                    _mm256_cvtph_ps(_mm_loadu_si128(mptr.add(2 * g) as *const __m128i))
                } else {
                    _mm256_mul_ps(dw, _mm256_set1_ps(-8.0))
                };
                for k in 0..K {
                    accm[r][k] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(a[k].0.as_ptr().add(g)), accm[r][k]);
                }
                let pairs = 4.min((nb - g).div_ceil(2));
                for p in 0..pairs {
                    let b = g + 2 * p;
                    let q = qs.add(16 * b);
                    let mut s0 = [_mm256_setzero_ps(); K];
                    let mut s1 = [_mm256_setzero_ps(); K];
                    for c in 0..4 {
                        let v = load8_u8(q.add(8 * c));
                        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, m4));
                        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
                        for k in 0..K {
                            let x = a[k].1.as_ptr().add(32 * b + 8 * c);
                            s0[k] = _mm256_fmadd_ps(lo, _mm256_loadu_ps(x), s0[k]);
                            s1[k] = _mm256_fmadd_ps(hi, _mm256_loadu_ps(x.add(32)), s1[k]);
                        }
                    }
                    let d0 = _mm256_permutevar8x32_ps(dw, _mm256_set1_epi32(2 * p as i32));
                    let d1 = _mm256_permutevar8x32_ps(dw, _mm256_set1_epi32(2 * p as i32 + 1));
                    for k in 0..K {
                        acc[r][0][k] = _mm256_fmadd_ps(d0, s0[k], acc[r][0][k]);
                        acc[r][1][k] = _mm256_fmadd_ps(d1, s1[k], acc[r][1][k]);
                    }
                }
            }
            g += 8;
        }
    }
    let mut out = [[0f32; K]; R];
    for r in 0..R {
        for k in 0..K {
            out[r][k] = hsum(_mm256_add_ps(_mm256_add_ps(acc[r][0][k], acc[r][1][k]), accm[r][k]));
        }
    }
    out
}

/// `R` packed `Q8_0` rows · `K` f32 activation rows: `out[r][k] = Σ_b d_b Σ q·x`, each
/// output's arithmetic independent of `R` and `K`, as in [`dot_packed_q4`].
///
/// # Safety
/// As [`dot_packed_q4`] (no minimums, no block sums read; quants are 32 bytes per block and
/// activation rows hold `nb` blocks of values).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_packed_q8<const R: usize, const K: usize>(
    w: [&[u8]; R],
    nb: usize,
    nb8: usize,
    a: [F32Row<'_>; K],
) -> [[f32; K]; R] {
    // Even and odd blocks accumulate separately (shorter dependency chains, as above).
    let mut acc = [[[_mm256_setzero_ps(); K]; 2]; R];
    // SAFETY: as in `dot_packed_q4`.
    unsafe {
        let mut g = 0;
        while g < nb {
            for r in 0..R {
                let dptr = w[r].as_ptr();
                let qs = dptr.add(2 * nb8);
                if R > 1 {
                    // These 8 blocks' quants, four lines, of the row `PREFETCH_CALLS` calls on.
                    prefetch_ahead::<R>(qs.wrapping_add(32 * g), w[r].len(), 4);
                }
                let dw = _mm256_cvtph_ps(_mm_loadu_si128(dptr.add(2 * g) as *const __m128i));
                for j in 0..8.min(nb - g) {
                    let b = g + j;
                    let q = qs.add(32 * b);
                    let mut s = [_mm256_setzero_ps(); K];
                    for c in 0..4 {
                        let v = _mm256_cvtepi32_ps(load8_i8(q.add(8 * c)));
                        for k in 0..K {
                            let x = a[k].1.as_ptr().add(32 * b + 8 * c);
                            s[k] = _mm256_fmadd_ps(v, _mm256_loadu_ps(x), s[k]);
                        }
                    }
                    let dj = _mm256_permutevar8x32_ps(dw, _mm256_set1_epi32(j as i32));
                    for k in 0..K {
                        acc[r][j & 1][k] = _mm256_fmadd_ps(dj, s[k], acc[r][j & 1][k]);
                    }
                }
            }
            g += 8;
        }
    }
    let mut out = [[0f32; K]; R];
    for r in 0..R {
        for k in 0..K {
            out[r][k] = hsum(_mm256_add_ps(acc[r][0][k], acc[r][1][k]));
        }
    }
    out
}
