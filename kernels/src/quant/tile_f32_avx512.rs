//! AVX-512 register tiles: `R` repacked weight rows (see `packed`) times `K` **f32**
//! activation rows, the exact product `Σ w·x` — the small-batch kernel of decode steps,
//! speculative verification and short prefill tails on AVX-512 CPUs.
//!
//! The AVX2 kernels (`dot_f32_avx2`) take one weight row at a time and stream every
//! activation row past it, so at a few rows per step the activations are re-read from L2 for
//! every weight row and the FMAs wait on loads. Here an `R × K` tile of outputs lives in
//! registers: each 16-column slice of the `K` activation rows is loaded once and meets `R`
//! weight rows, and each 16-weight vector is dequantized once (`w = q·d + m`, one FMA; `q·d`
//! for `Q8_0`) and meets `K` activation rows.
//!
//! **Row invariance.** Every output has its own accumulator, fed the same FMAs
//! (`acc += w[c..c+16] · x[c..c+16]`, columns in the same order) and reduced by the same tree
//! whatever `R` and `K` are and wherever the row sits in its batch: a sequence's product is
//! bitwise the same computed alone or in a step with fifteen others. Speculative
//! verification and continuous batching rely on it to leave greedy outputs unchanged.
//!
//! Every function here requires AVX-512F and F16C; callers check with
//! [`crate::simd::has_avx512`] first. Loops, not closures, build the register arrays: a
//! closure does not inherit `target_feature`, so intrinsics inside it would become calls.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The f32 values of eight f16 scales at `p`, in memory so the block loops broadcast them
/// with a load.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn scales8(p: *const u8, times: f32) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: the caller guarantees 16 readable bytes at `p`; `out` holds 8 floats.
    unsafe {
        let v = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)), _mm256_set1_ps(times));
        _mm256_storeu_ps(out.as_mut_ptr(), v);
    }
    out
}

/// Prefetches byte `offset` of every row; past a row's end that is a later tile's row.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn prefetch<const R: usize>(w: &[&[u8]; R], offset: usize) {
    // A prefetch never faults, and `wrapping_add` forms any address without UB.
    for row in w {
        _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(offset) as *const i8);
    }
}

/// Horizontal sums of the tile's accumulators, in one fixed order for every shape.
#[inline]
#[target_feature(enable = "avx512f,f16c")]
fn reduce<const R: usize, const K: usize>(acc: &[[__m512; R]; K]) -> [[f32; R]; K] {
    let mut out = [[0f32; R]; K];
    for k in 0..K {
        for r in 0..R {
            out[k][r] = _mm512_reduce_add_ps(acc[k][r]);
        }
    }
    out
}

/// `R` packed `Q4_0` / `Q4_1` rows · `K` activation rows: `out[k][r] = Σ_c w_r[c] x_k[c]`
/// with `w = nibble·d + m` (`m = -8d` for `Q4_0`). Each row's quants `prefetch_ahead` bytes
/// further on (a later tile's rows) are prefetched as it goes; prefetches never fault.
///
/// # Safety
/// AVX-512F/F16C must be available; every `w[r]` is a packed row of `nb` blocks (`nb8` scale
/// slots, minimums iff `has_m`); every `x[k]` holds `nb` rounded up to even blocks of values.
#[target_feature(enable = "avx512f,f16c")]
pub(crate) unsafe fn tile_q4<const R: usize, const K: usize>(
    w: [&[u8]; R],
    nb: usize,
    nb8: usize,
    has_m: bool,
    x: [&[f32]; K],
    prefetch_ahead: usize,
) -> [[f32; R]; K] {
    let mut acc = [[_mm512_setzero_ps(); R]; K];
    let m4 = _mm512_set1_epi32(0xF);
    let qs_at = 2 * nb8 * (1 + has_m as usize);
    let mut g = 0;
    // SAFETY: scale and minimum slots `g..g + 8` lie inside each packed row (`nb8` slots),
    // quants of the pairs of blocks `g..g + 8` too, and activation reads stay inside the
    // even-padded rows (caller contract).
    unsafe {
        while g < nb {
            let mut d = [[0f32; 8]; R];
            let mut m = [[0f32; 8]; R];
            for r in 0..R {
                let row = w[r].as_ptr();
                d[r] = scales8(row.add(2 * g), 1.0);
                m[r] = if has_m { scales8(row.add(2 * nb8 + 2 * g), 1.0) } else { scales8(row.add(2 * g), -8.0) };
            }
            for p in 0..4.min((nb - g).div_ceil(2)) {
                let b = g + 2 * p;
                if p % 2 == 0 {
                    prefetch(&w, qs_at + 16 * b + prefetch_ahead);
                }
                // A pair's byte i holds element i of block b (low nibble) and of b + 1 (high).
                for half in 0..2 {
                    let col = 32 * b + 16 * half;
                    let (mut xlo, mut xhi) = ([_mm512_setzero_ps(); K], [_mm512_setzero_ps(); K]);
                    for k in 0..K {
                        xlo[k] = _mm512_loadu_ps(x[k].as_ptr().add(col));
                        xhi[k] = _mm512_loadu_ps(x[k].as_ptr().add(col + 32));
                    }
                    for r in 0..R {
                        let pair = w[r].as_ptr().add(qs_at + 16 * b + 16 * half);
                        let q = _mm512_cvtepu8_epi32(_mm_loadu_si128(pair as *const __m128i));
                        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, m4));
                        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(q));
                        let wlo = _mm512_fmadd_ps(lo, _mm512_set1_ps(d[r][2 * p]), _mm512_set1_ps(m[r][2 * p]));
                        let whi = _mm512_fmadd_ps(hi, _mm512_set1_ps(d[r][2 * p + 1]), _mm512_set1_ps(m[r][2 * p + 1]));
                        for k in 0..K {
                            acc[k][r] = _mm512_fmadd_ps(wlo, xlo[k], acc[k][r]);
                            acc[k][r] = _mm512_fmadd_ps(whi, xhi[k], acc[k][r]);
                        }
                    }
                }
            }
            g += 8;
        }
    }
    reduce(&acc)
}

/// `R` packed `Q8_0` rows · `K` activation rows: `out[k][r] = Σ_c w_r[c] x_k[c]`, `w = q·d`.
///
/// # Safety
/// As [`tile_q4`] (no minimums; quants are 32 bytes per block and activation rows hold `nb`
/// blocks of values).
#[target_feature(enable = "avx512f,f16c")]
#[allow(clippy::needless_range_loop)] // `j` numbers both the scale slot and the block
pub(crate) unsafe fn tile_q8<const R: usize, const K: usize>(
    w: [&[u8]; R],
    nb: usize,
    nb8: usize,
    x: [&[f32]; K],
    prefetch_ahead: usize,
) -> [[f32; R]; K] {
    let mut acc = [[_mm512_setzero_ps(); R]; K];
    let mut g = 0;
    // SAFETY: as in `tile_q4`.
    unsafe {
        while g < nb {
            let mut d = [[0f32; 8]; R];
            for r in 0..R {
                d[r] = scales8(w[r].as_ptr().add(2 * g), 1.0);
            }
            for j in 0..8.min(nb - g) {
                let b = g + j;
                if j % 2 == 0 {
                    prefetch(&w, 2 * nb8 + 32 * b + prefetch_ahead);
                }
                for half in 0..2 {
                    let col = 32 * b + 16 * half;
                    let mut xv = [_mm512_setzero_ps(); K];
                    for k in 0..K {
                        xv[k] = _mm512_loadu_ps(x[k].as_ptr().add(col));
                    }
                    for r in 0..R {
                        let q =
                            _mm512_cvtepi8_epi32(_mm_loadu_si128(w[r].as_ptr().add(2 * nb8 + col) as *const __m128i));
                        let wv = _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(d[r][j]));
                        for k in 0..K {
                            acc[k][r] = _mm512_fmadd_ps(wv, xv[k], acc[k][r]);
                        }
                    }
                }
            }
            g += 8;
        }
    }
    reduce(&acc)
}
