//! Scalar reference codecs of the legacy 32-element blocks (`Q4_0`, `Q4_1`, `Q8_0`) and the
//! float element types. Formulas are ggml's `dequantize_row_*` / `quantize_row_*_ref`, so
//! blocks written here are byte-identical to ggml's and decode to the same floats.

use half::{bf16, f16};

use super::types::QK;

/// Reads a little-endian f16 at `b[0..2]` as f32.
#[inline]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Writes `v` rounded to f16 (round-to-nearest-even, like ggml) at `b[at..at + 2]`.
#[inline]
fn put_f16(b: &mut [u8], at: usize, v: f32) {
    b[at..at + 2].copy_from_slice(&f16::from_f32(v).to_bits().to_le_bytes());
}

pub(crate) fn dequant_f32(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

pub(crate) fn dequant_f16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

pub(crate) fn dequant_bf16(bytes: &[u8], out: &mut [f32]) {
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32();
    }
}

/// `x = (nibble - 8) * d`; element `j` is the low nibble of `qs[j]`, element `j + 16` the high.
pub(crate) fn dequant_q4_0(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(18).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..16 {
            o[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
            o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// `x = nibble * d + m`.
pub(crate) fn dequant_q4_1(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        let m = f16_at(b, 2);
        for j in 0..16 {
            o[j] = (b[4 + j] & 0xF) as f32 * d + m;
            o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
        }
    }
}

/// The `nibble * d` part of `Q4_1` without the minimum, which the GEMM path adds separately.
pub(crate) fn dequant_q4_1_scaled(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(20).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..16 {
            o[j] = (b[4 + j] & 0xF) as f32 * d;
            o[j + 16] = (b[4 + j] >> 4) as f32 * d;
        }
    }
}

/// `x = q * d`.
pub(crate) fn dequant_q8_0(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(34).zip(out.chunks_exact_mut(QK)) {
        let d = f16_at(b, 0);
        for j in 0..QK {
            o[j] = b[2 + j] as i8 as f32 * d;
        }
    }
}

/// ggml `quantize_row_q8_0_ref`: `d = amax / 127`, `q = round(x / d)`.
pub(crate) fn quant_q8_0(x: &[f32], out: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(34)) {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for j in 0..QK {
            b[2 + j] = (xb[j] * id).round() as i8 as u8;
        }
    }
}

/// ggml `quantize_row_q4_0_ref`: the value of largest magnitude maps to nibble 0 (`d = max/-8`).
pub(crate) fn quant_q4_0(x: &[f32], out: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(18)) {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        for j in 0..16 {
            // `as i8` truncates toward zero like C's `(int8_t)` cast; the operands are ≥ 0.
            let lo = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let hi = ((xb[j + 16] * id + 8.5) as i8).min(15) as u8;
            b[2 + j] = lo | (hi << 4);
        }
    }
}

/// ggml `quantize_row_q4_1_ref`: `d = (max - min) / 15`, `m = min`.
pub(crate) fn quant_q4_1(x: &[f32], out: &mut [u8]) {
    for (xb, b) in x.chunks_exact(QK).zip(out.chunks_exact_mut(20)) {
        let min = xb.iter().fold(f32::MAX, |a, &v| a.min(v));
        let max = xb.iter().fold(-f32::MAX, |a, &v| a.max(v));
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        put_f16(b, 0, d);
        put_f16(b, 2, min);
        for j in 0..16 {
            let lo = (((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let hi = (((xb[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
            b[4 + j] = lo | (hi << 4);
        }
    }
}
