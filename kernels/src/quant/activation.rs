//! 8-bit quantization of activations (the right-hand side of a quantized matmul), as
//! llama.cpp does before its integer dot products.
//!
//! Weights in 32-element blocks (`Q4_0`, `Q4_1`, `Q8_0`) pair with [`Q8Act`] (ggml's `q8_1`:
//! a `q8_0` block plus `d * Σq`, which folds the `Q4_1` minimum and the `Q4_0` offset of 8
//! into one multiply). K-quants pair with [`Q8KAct`] (ggml's `q8_K`: 256 elements, sums per
//! 16 for the K-quant minimums).
//!
//! The 32-element quantizer reproduces ggml's `quantize_row_q8_1` value for value: the scale is
//! rounded to f16 as ggml stores it, values round half away from zero (`roundf`). Models with
//! large activation outliers (SmolLM2 among them) move their logits visibly under any other
//! rounding, and agreeing with llama.cpp-family engines on the same file is worth more than the
//! extra bits. The block sum `s` that multiplies a `Q4_1` minimum is rounded to f16 as ggml's
//! `q8_1` stores it ([`SumRounding::F16`]); the `Q4_0` offset uses the exact `d · Σq`
//! ([`SumRounding::Exact`]), as ggml's `q4_0 × q8_0` dot does. The GEMM path multiplies
//! [`dequantize_q8_into`]'s values and adds the same rounded minimum term, so both paths agree
//! to f32 rounding and a row's result does not depend on the batch it was computed in.
//!
//! Quantized values are symmetric in `[-127, 127]`: the AVX2 `Q8_0` kernel negates them with
//! `_mm256_sign_epi8`, which would overflow on -128.

use super::types::{QK, QK_K};

/// One 32-element activation block: `x ≈ d * qs`, `s = d * Σ qs`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8Act {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

/// One 256-element activation super-block: `x ≈ d * qs`, `bsums[i] = Σ qs[16i..16i+16]`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Q8KAct {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; QK_K / 16],
}

/// Rounds half to even without a libm call (exact for |v| < 2^22, which holds for |v| ≤ 127);
/// ggml's `nearest_int`, used by its `q8_K` quantizer.
#[inline(always)]
fn round_i8(v: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
    ((v + MAGIC) - MAGIC) as i8
}

/// Rounds half away from zero, as C's `roundf` in ggml's `q8_0`/`q8_1` quantizers. The
/// conversion truncates toward zero like `trunc` (exact for the |v| ≤ 127.5 seen here, 0 for
/// NaN), without the libm call `trunc` is on baseline x86-64.
#[inline(always)]
fn round_away_i8(v: f32) -> i8 {
    let t = v as i32;
    let r = if (v - t as f32).abs() >= 0.5 { t + v.signum() as i32 } else { t };
    r as i8
}

/// How a block's `d · Σq` is kept: it multiplies the `Q4_1` minimum (rounded to f16, as
/// ggml's `q8_1` block stores it) or the `Q4_0` offset of 8 (exact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SumRounding {
    Exact,
    F16,
}

impl SumRounding {
    /// The rounding the integer kernels for `ty` expect.
    pub(crate) fn for_weights(ty: super::types::QuantType) -> Self {
        if ty == super::types::QuantType::Q4_1 { Self::F16 } else { Self::Exact }
    }
}

/// Quantizes `x` (a whole number of 32-blocks) into `out`.
pub(crate) fn quantize_q8(x: &[f32], out: &mut [Q8Act], sum: SumRounding) {
    for (xb, b) in x.chunks_exact(QK).zip(out.iter_mut()) {
        (b.d, b.s) = quantize_block(xb, &mut b.qs, sum);
    }
}

/// Quantizes one 32-element block into `q`; returns `(d, d Σq)`.
#[inline]
pub(crate) fn quantize_block(xb: &[f32], q: &mut [i8], rounding: SumRounding) -> (f32, f32) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(xb) {
        *q = round_away_i8(v * id);
        sum += *q as i32;
    }
    let d16 = half::f16::from_f32(d);
    (d16.to_f32(), block_sum(d16, sum, rounding))
}

/// A block's `d · Σq` from its f16 scale and integer sum, rounded as `rounding` says.
#[inline]
pub(crate) fn block_sum(d16: half::f16, sum: i32, rounding: SumRounding) -> f32 {
    match rounding {
        SumRounding::Exact => d16.to_f32() * sum as f32,
        SumRounding::F16 => (half::f16::from_f32(sum as f32) * d16).to_f32(),
    }
}

/// `x` replaced by its 8-bit activation approximation (`d · q` per block), the values the
/// integer kernels multiply: the GEMM path uses them so both paths compute the same product.
/// `k_quants` selects the 256-element `q8_K` blocks instead of the 32-element ones. With
/// `sums`, the f16-rounded block sums of the `Q4_1` minimum term are written there too.
pub(crate) fn dequantize_q8_into(x: &[f32], k_quants: bool, out: &mut [f32], mut sums: Option<&mut [f32]>) {
    if k_quants {
        let mut act = Q8KAct::ZERO;
        for (xb, ob) in x.chunks_exact(QK_K).zip(out.chunks_exact_mut(QK_K)) {
            quantize_q8k(xb, std::slice::from_mut(&mut act));
            ob.iter_mut().zip(&act.qs).for_each(|(o, &q)| *o = act.d * q as f32);
        }
    } else {
        let mut q = [0i8; QK];
        for (b, (xb, ob)) in x.chunks_exact(QK).zip(out.chunks_exact_mut(QK)).enumerate() {
            let (d, s) = quantize_block(xb, &mut q, SumRounding::F16);
            ob.iter_mut().zip(&q).for_each(|(o, &q)| *o = d * q as f32);
            if let Some(sums) = sums.as_deref_mut() {
                sums[b] = s;
            }
        }
    }
}

/// Quantizes `x` (a whole number of 256-blocks) into `out`.
pub(crate) fn quantize_q8k(x: &[f32], out: &mut [Q8KAct]) {
    for (xb, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (q, &v) in b.qs.iter_mut().zip(xb) {
            *q = round_i8(v * id);
        }
        for (s, g) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = g.iter().map(|&q| q as i16).sum();
        }
        b.d = d;
    }
}

impl Q8Act {
    pub(crate) const ZERO: Self = Self { d: 0.0, s: 0.0, qs: [0; QK] };
}

impl Q8KAct {
    pub(crate) const ZERO: Self = Self { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
}

/// Blocks that test a vector quantizer against [`quantize_block`]: random values over ten
/// magnitudes, zeros, signed zeros, and blocks whose scaled values are exact halves (the
/// rounding ties).
#[cfg(test)]
pub(crate) fn quantizer_test_blocks() -> Vec<[f32; QK]> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let mut rng = StdRng::seed_from_u64(5);
    let mut blocks: Vec<[f32; QK]> = (0..3000)
        .map(|i| {
            let scale = 10f32.powi(i % 10 - 6);
            std::array::from_fn(|_| rng.random_range(-1.0f32..1.0) * scale)
        })
        .collect();
    blocks.push([0.0; QK]);
    blocks.push(std::array::from_fn(|j| if j % 2 == 0 { 0.0 } else { -0.0 }));
    // amax 127 makes d = 1, so each value is its own scaled value: ties at ±k.5.
    blocks.push(std::array::from_fn(|j| if j == 0 { 127.0 } else { (j as f32 - 16.0) * 7.0 + 0.5 }));
    blocks.push(std::array::from_fn(|j| if j == 31 { -127.0 } else { -(j as f32) - 0.5 }));
    blocks
}
