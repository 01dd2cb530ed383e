//! Runtime CPU feature detection and the f32 vector primitives shared by attention and the
//! small ops (dot, axpy, scale, exp). Each primitive has a portable scalar version and, on
//! x86, an AVX2 + FMA version; callers detect once per kernel call and pick a side.
//! [`three_rows`] runs attention's `scores` and `accumulate` for three query rows at once,
//! bitwise as the AVX2 versions row by row, and [`wide_rows`] the same for many rows with
//! 16-lane AVX-512 FMAs over keys transposed once, plus the softmax's exponentials in 16
//! lanes, bitwise the 8-lane ones.

/// True when the AVX2 + FMA + F16C kernels may run on this CPU. Detection is cached by std,
/// so calling this costs a few atomic loads; kernels call it once per invocation.
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// True when the AVX-512 register-tiled matmul kernels may run: AVX-512F plus everything
/// [`has_avx2_fma`] needs (the packed weight layout is built only where that holds).
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        has_avx2_fma() && std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// True when the AVX-512 VNNI integer tiles of 8-bit-activation matmuls may run: everything
/// [`has_avx512`] needs plus AVX-512BW (byte masks) and VNNI (`vpdpbusd`).
#[inline]
pub fn has_avx512_vnni() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        has_avx512() && std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod three_rows;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod wide_rows;
mod widen;

pub(crate) use widen::widen_f16;

/// Asks for every cache line of `data` (a hint: it changes no result).
#[inline]
pub(crate) fn prefetch_lines<T>(data: &[T]) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        #[cfg(target_arch = "x86")]
        use std::arch::x86::{_MM_HINT_T0, _mm_prefetch};
        #[cfg(target_arch = "x86_64")]
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let bytes = data.as_ptr().cast::<i8>();
        for offset in (0..size_of_val(data)).step_by(64) {
            // SAFETY: `offset` lies inside `data`; a prefetch reads nothing architecturally.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(bytes.add(offset)) };
        }
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    let _ = data;
}

/// True when [`three_rows`]'s AVX-512VL forms may run: AVX2 + FMA plus AVX-512VL's 32 vector
/// registers (its AVX2 forms need only [`has_avx2_fma`]).
#[inline]
pub(crate) fn has_avx512vl() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        has_avx512() && std::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
    {
        false
    }
}

/// Portable versions; also the reference the AVX2 versions are tested against.
pub(crate) mod scalar {
    #[inline]
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// `y += alpha * x`.
    #[inline]
    pub(crate) fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
    }

    /// `y *= alpha`.
    #[inline]
    pub(crate) fn scale(y: &mut [f32], alpha: f32) {
        for y in y {
            *y *= alpha;
        }
    }

    /// `out[t] = q · k[t*hd..(t+1)*hd]` for each of `out.len()` consecutive keys.
    #[inline]
    pub(crate) fn scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        for (t, o) in out.iter_mut().enumerate() {
            *o = dot(q, &k[t * hd..(t + 1) * hd]);
        }
    }

    /// `acc += Σ_t p[t] · v[t*hd..(t+1)*hd]`.
    #[inline]
    pub(crate) fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
        for (t, &pt) in p.iter().enumerate() {
            axpy(acc, pt, &v[t * hd..(t + 1) * hd]);
        }
    }

    /// The largest element, ignoring NaNs; `-inf` for none.
    #[inline]
    pub(crate) fn max(x: &[f32]) -> f32 {
        x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    /// `x[i] = exp(x[i] - m)`, returns the sum.
    #[inline]
    pub(crate) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        let mut s = 0f32;
        for v in x {
            *v = (*v - m).exp();
            s += *v;
        }
        s
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod avx2 {
    #[cfg(target_arch = "x86")]
    use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    use std::arch::x86_64::*;

    /// Horizontal sum of 8 lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// `exp(x)` per lane (Cephes polynomial, ~2 ulp; inputs clamped to ±87.3 so the result
    /// stays a normal float: `exp(-inf)` gives ~1e-38, never NaN).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3)), _mm256_set1_ps(87.3));
        let n = _mm256_round_ps(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [1.398_2e-3f32, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
        let pow2n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(p, _mm256_castsi256_ps(pow2n))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut i = 0;
        // SAFETY (all loads below): `i + 8 <= n` or `i + 16 <= n` bounds every 8-lane read.
        while i + 16 <= n {
            unsafe {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
                s1 =
                    _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i + 8)), _mm256_loadu_ps(b.as_ptr().add(i + 8)), s1);
            }
            i += 16;
        }
        if i + 8 <= n {
            // SAFETY: see above.
            unsafe {
                s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(i)), _mm256_loadu_ps(b.as_ptr().add(i)), s0);
            }
            i += 8;
        }
        let mut s = hsum(_mm256_add_ps(s0, s1));
        for j in i..n {
            s += a[j] * b[j];
        }
        s
    }

    /// [`reduce8`] of four vectors: lane `j` is `a[j]`'s horizontal sum by the same tree
    /// (`reduce8`'s lanes 0–3 come from its first four vectors alone).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn reduce4(a: [__m256; 4]) -> __m128 {
        let u = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
        _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps(u, 1))
    }

    /// Sums each of 8 vectors: lane `j` of the result is the horizontal sum of `a[j]`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn reduce8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
    }

    /// `out[t] = q · k[t*hd..(t+1)*hd]`: 8 keys at a time with 8 independent FMA chains and
    /// one transpose-reduction, instead of a horizontal sum per key.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn scores(q: &[f32], k: &[f32], hd: usize, out: &mut [f32]) {
        let cnt = out.len();
        assert!(q.len() >= hd && k.len() >= cnt * hd, "scores: short q or k");
        let mut t = 0;
        if hd.is_multiple_of(8) {
            while t + 8 <= cnt {
                let mut acc = [_mm256_setzero_ps(); 8];
                let mut c = 0;
                while c < hd {
                    // SAFETY: `c + 8 <= hd ≤ q.len()` and `(t + j) * hd + c + 8 <= cnt * hd`.
                    unsafe {
                        let qc = _mm256_loadu_ps(q.as_ptr().add(c));
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(qc, _mm256_loadu_ps(k.as_ptr().add((t + j) * hd + c)), *a);
                        }
                    }
                    c += 8;
                }
                // SAFETY: `t + 8 <= cnt = out.len()`.
                unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(t), reduce8(acc)) };
                t += 8;
            }
        }
        for (tt, o) in out.iter_mut().enumerate().skip(t) {
            *o = dot(&q[..hd], &k[tt * hd..(tt + 1) * hd]);
        }
    }

    /// `acc += Σ_t p[t] · v[t*hd..(t+1)*hd]`. Each 64-wide slice of `acc` stays in 8
    /// registers across all keys (8 independent FMA chains, no load/store per key); the
    /// remainder of an odd head size uses `axpy`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn accumulate(acc: &mut [f32], p: &[f32], v: &[f32], hd: usize) {
        assert!(acc.len() >= hd && v.len() >= p.len() * hd, "accumulate: short acc or v");
        let mut c0 = 0;
        while c0 + 64 <= hd {
            // SAFETY: `c0 + 64 <= hd ≤ acc.len()` bounds the 8 loads/stores of `acc`.
            let mut r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(acc.as_ptr().add(c0 + 8 * i)) });
            for (t, &pt) in p.iter().enumerate() {
                let pv = _mm256_set1_ps(pt);
                for (i, ri) in r.iter_mut().enumerate() {
                    // SAFETY: `t * hd + c0 + 8i + 8 <= (t + 1) * hd <= v.len()`.
                    *ri = _mm256_fmadd_ps(pv, unsafe { _mm256_loadu_ps(v.as_ptr().add(t * hd + c0 + 8 * i)) }, *ri);
                }
            }
            for (i, ri) in r.iter().enumerate() {
                // SAFETY: as for the loads above.
                unsafe { _mm256_storeu_ps(acc.as_mut_ptr().add(c0 + 8 * i), *ri) };
            }
            c0 += 64;
        }
        if c0 < hd {
            for (t, &pt) in p.iter().enumerate() {
                axpy(&mut acc[c0..hd], pt, &v[t * hd + c0..(t + 1) * hd]);
            }
        }
    }

    /// `y += alpha * x`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let a = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` bounds both 8-lane accesses.
            unsafe {
                let py = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(py, _mm256_fmadd_ps(a, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(py)));
            }
            i += 8;
        }
        for j in i..n {
            y[j] += alpha * x[j];
        }
    }

    /// `y *= alpha`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn scale(y: &mut [f32], alpha: f32) {
        let a = _mm256_set1_ps(alpha);
        let n = y.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` bounds the access.
            unsafe {
                let p = y.as_mut_ptr().add(i);
                _mm256_storeu_ps(p, _mm256_mul_ps(a, _mm256_loadu_ps(p)));
            }
            i += 8;
        }
        for v in &mut y[i..] {
            *v *= alpha;
        }
    }

    /// The largest element, ignoring NaNs; `-inf` for none: [`super::scalar::max`] with 8
    /// lanes, so the dependency chain is an eighth as long (a max is exact in any order).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn max(x: &[f32]) -> f32 {
        let n = x.len();
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` bounds the access. `max_ps` returns its second operand when
            // either is NaN, so a NaN element leaves `acc` as it was.
            acc = _mm256_max_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) }, acc);
            i += 8;
        }
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes.iter().chain(&x[i..]).fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    /// `x[i] = exp(x[i] - m)`, returns the sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp_sub_sum(x: &mut [f32], m: f32) -> f32 {
        exp_sub_sum_after(x, m, _mm256_setzero_ps())
    }

    /// [`exp_sub_sum`] of values that follow others already done: `acc` holds those
    /// exponentials' 8-lane running sum (lane `l` of value `8i + l`), which this continues.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn exp_sub_sum_after(x: &mut [f32], m: f32, mut acc: __m256) -> f32 {
        let mv = _mm256_set1_ps(m);
        let n = x.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: `i + 8 <= n` bounds the access.
            unsafe {
                let p = x.as_mut_ptr().add(i);
                let e = exp(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
                _mm256_storeu_ps(p, e);
                acc = _mm256_add_ps(acc, e);
            }
            i += 8;
        }
        let mut s = hsum(acc);
        if i < n {
            let mut tail = [f32::NEG_INFINITY; 8];
            tail[..n - i].copy_from_slice(&x[i..]);
            // SAFETY: `tail` holds 8 floats.
            let e = exp(_mm256_sub_ps(unsafe { _mm256_loadu_ps(tail.as_ptr()) }, mv));
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(tail.as_mut_ptr(), e) };
            x[i..].copy_from_slice(&tail[..n - i]);
            s += tail[..n - i].iter().sum::<f32>();
        }
        s
    }
}

#[cfg(all(test, any(target_arch = "x86", target_arch = "x86_64")))]
mod tests {
    use super::*;

    #[test]
    fn avx2_primitives_match_scalar() {
        if !has_avx2_fma() {
            return;
        }
        let x: Vec<f32> = (0..203).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let y: Vec<f32> = (0..203).map(|i| ((i * 11 % 53) as f32 - 26.0) / 5.0).collect();
        // SAFETY: AVX2/FMA checked above.
        unsafe {
            let (a, b) = (avx2::dot(&x, &y), scalar::dot(&x, &y));
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0));
            for hd in [64usize, 80, 128, 12] {
                let keys = 203 / hd;
                let (mut sa, mut sb) = (vec![0f32; keys], vec![0f32; keys]);
                avx2::scores(&x[..hd], &y, hd, &mut sa);
                scalar::scores(&x[..hd], &y, hd, &mut sb);
                for (a, b) in sa.iter().zip(&sb) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "scores hd {hd}");
                }
                let p: Vec<f32> = (0..keys).map(|t| t as f32 * 0.3 - 0.2).collect();
                let (mut aa, mut ab) = (x[..hd].to_vec(), x[..hd].to_vec());
                avx2::accumulate(&mut aa, &p, &y, hd);
                scalar::accumulate(&mut ab, &p, &y, hd);
                for (a, b) in aa.iter().zip(&ab) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "accumulate hd {hd}");
                }
            }
            let (mut ea, mut eb) = (x.clone(), x.clone());
            let (sa, sb) = (avx2::exp_sub_sum(&mut ea, 3.0), scalar::exp_sub_sum(&mut eb, 3.0));
            assert!((sa - sb).abs() <= 1e-6 * sb);
            for (a, b) in ea.iter().zip(&eb) {
                assert!((a - b).abs() <= 3e-7 * b.max(1e-30), "exp {a} vs {b}");
            }
        }
    }

    /// The vector max is the scalar fold exactly, NaNs ignored, at every length around the
    /// 8-lane groups, wherever the largest element sits.
    #[test]
    fn avx2_max_is_the_scalar_max() {
        if !has_avx2_fma() {
            return;
        }
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000] {
            let mut x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
            for at in [0, n / 2, n.saturating_sub(1)].into_iter().filter(|&at| at < n) {
                x[at] = 99.5;
                if n > 2 {
                    x[(at + 1) % n] = f32::NAN;
                }
                // SAFETY: AVX2/FMA checked above.
                let got = unsafe { avx2::max(&x) };
                assert_eq!(got.to_bits(), scalar::max(&x).to_bits(), "n {n}, max at {at}");
                assert_eq!(got, 99.5);
                x[at] = 0.0;
            }
            let none = vec![f32::NAN; n];
            // SAFETY: as above.
            assert_eq!(unsafe { avx2::max(&none) }, f32::NEG_INFINITY);
        }
    }
}
