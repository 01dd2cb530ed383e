//! Portable integer dot products of one quantized weight row with one 8-bit activation row.
//! They compute the same integer sums and the same float combination per block as the AVX2
//! kernels, so the two agree to f32 rounding; they are also the fallback on other targets.

use super::activation::{Q8Act, Q8KAct};
use super::kquants::{q4k, q6k, scale_min_k4};
use super::legacy::f16_at;

/// `Σ_blocks d_w * (d_a Σ nib*q) - 8 d_w * s_a`  (the `-8` offset folded through `s = d_a Σq`).
pub(crate) fn dot_q4_0(w: &[u8], a: &[Q8Act]) -> f32 {
    let mut acc = 0f32;
    for (b, x) in w.chunks_exact(18).zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (b[2 + j] & 0xF) as i32 * x.qs[j] as i32;
            sumi += (b[2 + j] >> 4) as i32 * x.qs[j + 16] as i32;
        }
        let d = f16_at(b, 0);
        acc += d * (x.d * sumi as f32) - 8.0 * d * x.s;
    }
    acc
}

/// `Σ_blocks d_w d_a Σ nib*q + m_w s_a`.
pub(crate) fn dot_q4_1(w: &[u8], a: &[Q8Act]) -> f32 {
    let mut acc = 0f32;
    for (b, x) in w.chunks_exact(20).zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += (b[4 + j] & 0xF) as i32 * x.qs[j] as i32;
            sumi += (b[4 + j] >> 4) as i32 * x.qs[j + 16] as i32;
        }
        acc += f16_at(b, 0) * (x.d * sumi as f32) + f16_at(b, 2) * x.s;
    }
    acc
}

/// `Σ_blocks d_w d_a Σ q_w q_a`.
pub(crate) fn dot_q8_0(w: &[u8], a: &[Q8Act]) -> f32 {
    let mut acc = 0f32;
    for (b, x) in w.chunks_exact(34).zip(a) {
        let sumi: i32 = (0..32).map(|j| b[2 + j] as i8 as i32 * x.qs[j] as i32).sum();
        acc += f16_at(b, 0) * (x.d * sumi as f32);
    }
    acc
}

/// Per super-block: `d d_a Σ_sub sc Σ nib*q  -  dmin d_a Σ_sub m Σq`.
pub(crate) fn dot_q4k(w: &[u8], a: &[Q8KAct]) -> f32 {
    let mut acc = 0f32;
    for (b, x) in w.chunks_exact(144).zip(a) {
        let scales = &b[q4k::SCALES..q4k::SCALES + 12];
        let (mut sumi, mut summ) = (0i32, 0i32);
        for sub in 0..8 {
            let (sc, m) = scale_min_k4(sub, scales);
            let q = &b[q4k::QS + 32 * (sub / 2)..];
            let shift = 4 * (sub % 2);
            let dot: i32 = (0..32).map(|l| ((q[l] >> shift) & 0xF) as i32 * x.qs[32 * sub + l] as i32).sum();
            sumi += sc as i32 * dot;
            summ += m as i32 * (x.bsums[2 * sub] as i32 + x.bsums[2 * sub + 1] as i32);
        }
        acc += f16_at(b, q4k::D) * x.d * sumi as f32 - f16_at(b, q4k::DMIN) * x.d * summ as f32;
    }
    acc
}

/// Per super-block: `d d_a (Σ_sub sc Σ q6*q  -  32 Σ_sub sc Σq)` with unsigned `q6 ∈ 0..64`.
pub(crate) fn dot_q6k(w: &[u8], a: &[Q8KAct]) -> f32 {
    let mut acc = 0f32;
    for (b, x) in w.chunks_exact(210).zip(a) {
        let mut sumi = 0i32;
        for half in 0..2 {
            let ql = &b[q6k::QL + 64 * half..];
            let qh = &b[q6k::QH + 32 * half..];
            for k in 0..4 {
                for l in 0..32 {
                    let lo = (ql[l + 32 * (k % 2)] >> (4 * (k / 2))) & 0xF;
                    let hi = (qh[l] >> (2 * k)) & 3;
                    let q = (lo | (hi << 4)) as i32;
                    let sc = b[q6k::SCALES + 8 * half + l / 16 + 2 * k] as i8 as i32;
                    sumi += sc * q * x.qs[128 * half + 32 * k + l] as i32;
                }
            }
        }
        let mut sum_off = 0i32;
        for s in 0..16 {
            sum_off += b[q6k::SCALES + s] as i8 as i32 * x.bsums[s] as i32;
        }
        acc += f16_at(b, q6k::D) * x.d * (sumi - 32 * sum_off) as f32;
    }
    acc
}
