//! Scalar reference decoders of the K-quant super-blocks (`Q4_K`, `Q6_K`), transcribed from
//! ggml's `dequantize_row_q4_K` / `dequantize_row_q6_K`. The SIMD dot products in
//! `dot_avx2` must agree with these.

use super::legacy::f16_at;
use super::types::QK_K;

/// Unpacks the 6-bit (scale, min) pair `j` (0..8) of a `Q4_K` block from its 12 packed bytes
/// (ggml `get_scale_min_k4`): pairs 0..4 sit in the low 6 bits of bytes 0..8, pairs 4..8 are
/// split between the nibbles of bytes 8..12 and the top 2 bits of bytes 0..8.
#[inline]
pub(crate) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Byte offsets inside a 144-byte `Q4_K` block.
pub(crate) mod q4k {
    pub const D: usize = 0;
    pub const DMIN: usize = 2;
    pub const SCALES: usize = 4;
    pub const QS: usize = 16;
}

/// Byte offsets inside a 210-byte `Q6_K` block.
pub(crate) mod q6k {
    pub const QL: usize = 0;
    pub const QH: usize = 128;
    pub const SCALES: usize = 192;
    pub const D: usize = 208;
}

/// Each 64-element group uses 32 bytes of `qs`: low nibbles are elements 0..32 of the group
/// (sub-block scale `2g`), high nibbles elements 32..64 (scale `2g + 1`); `x = d*sc*q - dmin*m`.
pub(crate) fn dequant_q4k(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(144).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, q4k::D);
        let dmin = f16_at(b, q4k::DMIN);
        let scales = &b[q4k::SCALES..q4k::SCALES + 12];
        for g in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * g, scales);
            let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
            let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
            let q = &b[q4k::QS + 32 * g..q4k::QS + 32 * g + 32];
            let y = &mut o[64 * g..64 * g + 64];
            for l in 0..32 {
                y[l] = d1 * (q[l] & 0xF) as f32 - m1;
                y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

/// Two halves of 128 elements; in each, element `l + 32k` (k = 0..4) takes 4 low bits from
/// `ql` (nibble `k / 2` of byte `l + 32 (k % 2)`) and 2 high bits from `qh[l]` (bits `2k..2k+2`),
/// minus 32, times `d * scales[8 half + l/16 + 2k]`.
pub(crate) fn dequant_q6k(bytes: &[u8], out: &mut [f32]) {
    for (b, o) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(QK_K)) {
        let d = f16_at(b, q6k::D);
        for half in 0..2 {
            let ql = &b[q6k::QL + 64 * half..q6k::QL + 64 * half + 64];
            let qh = &b[q6k::QH + 32 * half..q6k::QH + 32 * half + 32];
            let sc = &b[q6k::SCALES + 8 * half..q6k::SCALES + 8 * half + 8];
            let y = &mut o[128 * half..128 * half + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
