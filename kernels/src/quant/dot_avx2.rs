//! AVX2 + FMA + F16C integer dot products: one quantized weight row (repacked for the
//! 32-block types, GGUF layout for K-quants) against `K` (1..=4) 8-bit activation rows at
//! once, so each weight block is loaded and unpacked once per `K` activation rows (the reuse
//! that makes small-batch decode and verification cheap).
//!
//! Core step (as in llama.cpp): `_mm256_maddubs_epi16(u8 weights, i8 activations)` gives 16
//! pairwise i16 sums (no saturation: |pair| ≤ 2·63·127 for 6-bit, 2·128·127 for 8-bit
//! weights), `_mm256_madd_epi16` widens to i32 (multiplying by ones or by K-quant sub-block
//! scales), then one FMA per block applies the float scales.
//!
//! Every function here requires AVX2, FMA and F16C; callers check with
//! [`crate::simd::has_avx2_fma`] first.

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::activation::Q8KAct;
use super::kquants::{q4k, q6k};
use crate::simd::avx2::hsum;

/// f16 bits at `p` → f32 via F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_load(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees `p..p+2` is readable; unaligned read of a u16.
    let bits = unsafe { (p as *const u16).read_unaligned() };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32(p: *const i8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`.
    unsafe { _mm256_loadu_si256(p as *const __m256i) }
}

/// One activation row in the packed layout: block scales `d`, `d Σq` sums `s`, quants `q`.
pub(crate) type ActRow<'a> = (&'a [f32], &'a [f32], &'a [i8]);

/// Packed `Q4_0` / `Q4_1` row (see `packed`) · `K` activation rows:
/// `Σ_b d_b d_a,b Σ nib·q + m_b s_a,b` with `m = -8 d` for `Q4_0`.
/// Per group of 8 blocks the scale products are one vector multiply; per block the scale is
/// broadcast from that vector with a lane permute.
///
/// # Safety
/// AVX2/FMA/F16C must be available; `w` is a packed row of `nb` blocks (`nb8` scale slots,
/// minimums iff `has_m`), each activation row holds `nb8` scales and `nb` rounded up to even
/// blocks of quants.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_packed_q4<const K: usize>(
    w: &[u8],
    nb: usize,
    nb8: usize,
    has_m: bool,
    a: [ActRow<'_>; K],
) -> [f32; K] {
    let mut acc = [[_mm256_setzero_ps(); K]; 2];
    let mut accm = [_mm256_setzero_ps(); K];
    let m4 = _mm256_set1_epi8(0xF);
    let ones = _mm256_set1_epi16(1);
    let dptr = w.as_ptr();
    // SAFETY: the scale arrays and pair quants lie inside the packed row (caller contract);
    // every activation read below stays within the padded activation row.
    unsafe {
        let mptr = dptr.add(2 * nb8);
        let qs = dptr.add(2 * nb8 * (1 + has_m as usize));
        let mut g = 0;
        while g < nb {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(dptr.add(2 * g) as *const __m128i));
            let mw = if has_m {
                _mm256_cvtph_ps(_mm_loadu_si128(mptr.add(2 * g) as *const __m128i))
            } else {
                _mm256_mul_ps(dw, _mm256_set1_ps(-8.0))
            };
            let mut sc = [_mm256_setzero_ps(); K];
            for k in 0..K {
                sc[k] = _mm256_mul_ps(dw, _mm256_loadu_ps(a[k].0.as_ptr().add(g)));
                accm[k] = _mm256_fmadd_ps(mw, _mm256_loadu_ps(a[k].1.as_ptr().add(g)), accm[k]);
            }
            let pairs = 4.min((nb - g).div_ceil(2));
            for p in 0..pairs {
                let v = _mm256_loadu_si256(qs.add(16 * (g + 2 * p)) as *const __m256i);
                let lo = _mm256_and_si256(v, m4);
                let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
                let i0 = _mm256_set1_epi32(2 * p as i32);
                let i1 = _mm256_set1_epi32(2 * p as i32 + 1);
                for k in 0..K {
                    let q = a[k].2.as_ptr().add(32 * (g + 2 * p));
                    let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32(q)), ones);
                    let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32(q.add(32))), ones);
                    let s0 = _mm256_permutevar8x32_ps(sc[k], i0);
                    let s1 = _mm256_permutevar8x32_ps(sc[k], i1);
                    acc[0][k] = _mm256_fmadd_ps(s0, _mm256_cvtepi32_ps(p0), acc[0][k]);
                    acc[1][k] = _mm256_fmadd_ps(s1, _mm256_cvtepi32_ps(p1), acc[1][k]);
                }
            }
            g += 8;
        }
    }
    let mut out = [0f32; K];
    for k in 0..K {
        out[k] = hsum(_mm256_add_ps(acc[0][k], acc[1][k])) + hsum(accm[k]);
    }
    out
}

/// Packed `Q8_0` row · `K` activation rows. Signed×signed via the sign trick
/// `maddubs(|w|, sign(a, w))`; activations never hold -128 (see `activation`).
///
/// # Safety
/// As [`dot_packed_q4`] (no minimums; quants are 32 bytes per block).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_packed_q8<const K: usize>(w: &[u8], nb: usize, nb8: usize, a: [ActRow<'_>; K]) -> [f32; K] {
    let mut acc = [[_mm256_setzero_ps(); K]; 2];
    let ones = _mm256_set1_epi16(1);
    let dptr = w.as_ptr();
    // SAFETY: as in `dot_packed_q4`.
    unsafe {
        let qs = dptr.add(2 * nb8) as *const i8;
        let mut g = 0;
        while g < nb {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(dptr.add(2 * g) as *const __m128i));
            let mut sc = [_mm256_setzero_ps(); K];
            for k in 0..K {
                sc[k] = _mm256_mul_ps(dw, _mm256_loadu_ps(a[k].0.as_ptr().add(g)));
            }
            for j in 0..8.min(nb - g) {
                let wq = load32(qs.add(32 * (g + j)));
                let aw = _mm256_sign_epi8(wq, wq);
                let idx = _mm256_set1_epi32(j as i32);
                for k in 0..K {
                    let sy = _mm256_sign_epi8(load32(a[k].2.as_ptr().add(32 * (g + j))), wq);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, sy), ones);
                    let s = _mm256_permutevar8x32_ps(sc[k], idx);
                    acc[j & 1][k] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(p), acc[j & 1][k]);
                }
            }
            g += 8;
        }
    }
    let mut out = [0f32; K];
    for k in 0..K {
        out[k] = hsum(_mm256_add_ps(acc[0][k], acc[1][k]));
    }
    out
}

/// Unpacks the 12 packed scale bytes of a `Q4_K` block into (8 scales, 8 mins) bytes
/// (ggml's `utmp` trick; equivalent to `scale_min_k4` for j = 0..8).
#[inline]
fn unpack_q4k_scales(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    const KM1: u32 = 0x3f3f_3f3f;
    const KM2: u32 = 0x0f0f_0f0f;
    const KM3: u32 = 0x0303_0303;
    let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
    let (u0, u1, u2) = (u(0), u(1), u(2));
    let sc = [u0 & KM1, (u2 & KM2) | (((u0 >> 6) & KM3) << 4)];
    let mn = [u1 & KM1, ((u2 >> 4) & KM2) | (((u1 >> 6) & KM3) << 4)];
    let bytes = |w: [u32; 2]| {
        let (a, b) = (w[0].to_le_bytes(), w[1].to_le_bytes());
        [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
    };
    (bytes(sc), bytes(mn))
}

/// `Q4_K` row · `K` activation rows. Sub-block scales are applied in the integer domain
/// (`madd` by the 6-bit scale), so one float FMA per super-block per row suffices.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q4k<const K: usize>(w: &[u8], a: [&[Q8KAct]; K]) -> [f32; K] {
    let nb = w.len() / 144;
    let mut acc = [_mm256_setzero_ps(); K];
    let mut accm = [_mm_setzero_ps(); K];
    let m4 = _mm256_set1_epi8(0xF);
    for i in 0..nb {
        let blk = &w[144 * i..144 * i + 144];
        let (sc, mn) = unpack_q4k_scales(&blk[q4k::SCALES..q4k::SCALES + 12]);
        // SAFETY: `blk` is a whole 144-byte block; activation rows hold `nb` super-blocks.
        unsafe {
            let d = f16_load(blk.as_ptr().add(q4k::D));
            let dmin = f16_load(blk.as_ptr().add(q4k::DMIN));
            let mins = _mm_cvtepu8_epi16(_mm_loadl_epi64(mn.as_ptr() as *const __m128i));
            let mut ql = [_mm256_setzero_si256(); 4];
            let mut qh = [_mm256_setzero_si256(); 4];
            for g in 0..4 {
                let bits = _mm256_loadu_si256(blk.as_ptr().add(q4k::QS + 32 * g) as *const __m256i);
                ql[g] = _mm256_and_si256(bits, m4);
                qh[g] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            }
            for k in 0..K {
                let x = a[k].get_unchecked(i);
                let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
                let bs32 = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1));
                let prod = _mm_cvtepi32_ps(_mm_madd_epi16(mins, bs32));
                accm[k] = _mm_fmadd_ps(_mm_set1_ps(dmin * x.d), prod, accm[k]);
                let mut sumi = _mm256_setzero_si256();
                for g in 0..4 {
                    let q8l = load32(x.qs.as_ptr().add(64 * g));
                    let q8h = load32(x.qs.as_ptr().add(64 * g + 32));
                    let pl = _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * g] as i16), _mm256_maddubs_epi16(ql[g], q8l));
                    let ph =
                        _mm256_madd_epi16(_mm256_set1_epi16(sc[2 * g + 1] as i16), _mm256_maddubs_epi16(qh[g], q8h));
                    sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
                }
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[k]);
            }
        }
    }
    let mut out = [0f32; K];
    for k in 0..K {
        let m = accm[k];
        let m = _mm_add_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_add_ss(m, _mm_movehdup_ps(m));
        out[k] = hsum(acc[k]) - _mm_cvtss_f32(m);
    }
    out
}

/// `Q6_K` row · `K` activation rows: unsigned 6-bit values times activations, the `-32`
/// offset applied once per super-block through the activation group sums.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_q6k<const K: usize>(w: &[u8], a: [&[Q8KAct]; K]) -> [f32; K] {
    let nb = w.len() / 210;
    let mut acc = [_mm256_setzero_ps(); K];
    let m4 = _mm256_set1_epi8(0xF);
    let m2 = _mm256_set1_epi8(3);
    for i in 0..nb {
        let blk = &w[210 * i..210 * i + 210];
        let scb = &blk[q6k::SCALES..q6k::SCALES + 16];
        // SAFETY: `blk` is a whole 210-byte block; activation rows hold `nb` super-blocks.
        unsafe {
            let d = f16_load(blk.as_ptr().add(q6k::D));
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(scb.as_ptr() as *const __m128i));
            let mut q = [_mm256_setzero_si256(); 8];
            let mut sv = [_mm256_setzero_si256(); 8];
            for half in 0..2 {
                let p = blk.as_ptr();
                let b1 = _mm256_loadu_si256(p.add(q6k::QL + 64 * half) as *const __m256i);
                let b2 = _mm256_loadu_si256(p.add(q6k::QL + 64 * half + 32) as *const __m256i);
                let bh = _mm256_loadu_si256(p.add(q6k::QH + 32 * half) as *const __m256i);
                let h = |s: i32| {
                    let v = match s {
                        0 => bh,
                        2 => _mm256_srli_epi16(bh, 2),
                        4 => _mm256_srli_epi16(bh, 4),
                        _ => _mm256_srli_epi16(bh, 6),
                    };
                    _mm256_slli_epi16(_mm256_and_si256(v, m2), 4)
                };
                q[4 * half] = _mm256_or_si256(_mm256_and_si256(b1, m4), h(0));
                q[4 * half + 1] = _mm256_or_si256(_mm256_and_si256(b2, m4), h(2));
                q[4 * half + 2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b1, 4), m4), h(4));
                q[4 * half + 3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b2, 4), m4), h(6));
                for k in 0..4 {
                    let s0 = scb[8 * half + 2 * k] as i8 as i16;
                    let s1 = scb[8 * half + 2 * k + 1] as i8 as i16;
                    sv[4 * half + k] = _mm256_set_m128i(_mm_set1_epi16(s1), _mm_set1_epi16(s0));
                }
            }
            for k in 0..K {
                let x = a[k].get_unchecked(i);
                let bs = _mm256_loadu_si256(x.bsums.as_ptr() as *const __m256i);
                let off = _mm256_slli_epi32(_mm256_madd_epi16(scales16, bs), 5);
                let mut sumi = _mm256_sub_epi32(_mm256_setzero_si256(), off);
                for g in 0..8 {
                    let q8 = load32(x.qs.as_ptr().add(32 * g));
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q[g], q8), sv[g]);
                    sumi = _mm256_add_epi32(sumi, p);
                }
                acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * x.d), _mm256_cvtepi32_ps(sumi), acc[k]);
            }
        }
    }
    let mut out = [0f32; K];
    for k in 0..K {
        out[k] = hsum(acc[k]);
    }
    out
}
