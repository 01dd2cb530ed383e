//! f16 → f32 widening of KV runs stored as f16: exact, 32 values per step with F16C.
//!
//! `half`'s slice conversion calls an out-of-line function per 8 values, which cost a quarter
//! of a long-context decode step; this loop keeps the conversions in registers.

use half::f16;

/// Writes `src` widened to f32 into `dst` (same length).
///
/// # Panics
/// If the lengths differ.
#[inline]
pub(crate) fn widen_f16(src: &[f16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_f16: source and destination lengths differ");
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if super::has_avx2_fma() {
        // SAFETY: `has_avx2_fma()` checked AVX2 and F16C.
        unsafe { widen_f16c(src, dst) };
        return;
    }
    for (d, s) in dst.iter_mut().zip(src) {
        *d = s.to_f32();
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,f16c")]
fn widen_f16c(src: &[f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    let n = src.len();
    let (s, d) = (src.as_ptr().cast::<__m128i>(), dst.as_mut_ptr());
    let mut i = 0;
    // SAFETY (both loops): `i + 8 <= n` for every 8 values read from `src` (8 × 2 bytes =
    // one `__m128i`) and written to `dst`, both of length `n`.
    while i + 32 <= n {
        unsafe {
            for j in 0..4 {
                let x = _mm256_cvtph_ps(_mm_loadu_si128(s.byte_add(2 * (i + 8 * j))));
                _mm256_storeu_ps(d.add(i + 8 * j), x);
            }
        }
        i += 32;
    }
    while i + 8 <= n {
        unsafe { _mm256_storeu_ps(d.add(i), _mm256_cvtph_ps(_mm_loadu_si128(s.byte_add(2 * i)))) };
        i += 8;
    }
    for (d, s) in dst[i..].iter_mut().zip(&src[i..]) {
        *d = s.to_f32();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the 8- and 32-wide steps, and special values (subnormals,
    /// infinities, NaN, signed zero), widen as `f16::to_f32` does.
    #[test]
    fn widening_matches_the_scalar_conversion() {
        let specials = [0.0, -0.0, 1e-7, -6.1e-5, 65504.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, 0.333];
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 1000] {
            let src: Vec<f16> = (0..n)
                .map(|i| if i % 5 == 0 { specials[i / 5 % specials.len()] } else { (i as f32 - 300.0) / 7.0 })
                .map(f16::from_f32)
                .collect();
            let mut got = vec![1f32; n];
            widen_f16(&src, &mut got);
            let want: Vec<u32> = src.iter().map(|x| x.to_f32().to_bits()).collect();
            assert_eq!(got.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), want, "length {n}");
        }
    }
}
