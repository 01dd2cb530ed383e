//! Whole-row passes over a vocabulary-sized logits row, written so that the compiler vectorizes
//! them (no calls, no early exits, independent accumulator lanes).
//!
//! The sampler runs these once per sequence per step over 50k–150k entries; written naively
//! (`f32::exp`, a serial max and a serial `f64` sum) they cost about 1 ms per 150k-token row,
//! which would make sampling a batch slower than the model step that produced it.

use super::support::Support;

/// Independent accumulators per reduction, so the adds/compares pipeline and vectorize.
const LANES: usize = 8;

/// NaN becomes `-inf` (never chosen); `+inf` becomes `f32::MAX` (all `+inf` tokens tie).
fn sanitize(x: f32) -> f32 {
    if x.is_nan() {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::MAX
    } else {
        x
    }
}

fn larger(a: f32, b: f32) -> f32 {
    if b > a { b } else { a }
}

/// Sets every entry whose bit in `allowed` is clear to `-inf`: bit `i % 32` of word `i / 32`
/// stands for entry `i`, and entries past the last word count as clear.
pub(super) fn mask_disallowed(row: &mut [f32], allowed: &[u32]) {
    let words = allowed.iter().copied().chain(std::iter::repeat(0));
    for (chunk, word) in row.chunks_mut(32).zip(words) {
        if word == u32::MAX {
            continue;
        }
        for (bit, x) in chunk.iter_mut().enumerate() {
            if word >> bit & 1 == 0 {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// Sanitizes `row` in place and returns its maximum (`-inf` if no entry is finite).
pub(super) fn sanitize_and_max(row: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk) {
            *x = sanitize(*x);
            *lane = larger(*lane, *x);
        }
    }
    let mut max = f32::NEG_INFINITY;
    for x in chunks.into_remainder() {
        *x = sanitize(*x);
        max = larger(max, *x);
    }
    lanes.into_iter().fold(max, larger)
}

/// `out[i] = exp(row[i] - max)` for a sanitized row whose maximum is `max`, so every result is
/// in [0, 1] and the maximum maps to exactly 1.
pub(super) fn exp_shifted(row: &[f32], max: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(row.iter().map(|&x| exp_nonpositive(x - max)));
}

/// Sum in `f64` (a 150k-term `f32` sum would lose ~4 digits).
pub(super) fn sum_f64(values: &[f32]) -> f64 {
    let mut lanes = [0.0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(x);
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    lanes.iter().sum::<f64>() + tail
}

/// Sum of the weights of the tokens in `support`, and how many there are.
pub(super) fn masked_sum(logits: &[f32], weights: &[f32], support: Support) -> (f64, usize) {
    let mut sums = [0.0f64; LANES];
    let mut counts = [0usize; LANES];
    let mut chunks = logits.chunks_exact(LANES).zip(weights.chunks_exact(LANES));
    for (x_chunk, w_chunk) in &mut chunks {
        for (j, (&x, &w)) in x_chunk.iter().zip(w_chunk).enumerate() {
            let inside = support.contains(x, w);
            sums[j] += if inside { f64::from(w) } else { 0.0 };
            counts[j] += usize::from(inside);
        }
    }
    let tail = logits.len() - logits.len() % LANES;
    let mut sum: f64 = sums.iter().sum();
    let mut count: usize = counts.iter().sum();
    for (&x, &w) in logits[tail..].iter().zip(&weights[tail..]) {
        if support.contains(x, w) {
            sum += f64::from(w);
            count += 1;
        }
    }
    (sum, count)
}

/// Below this `exp` is treated as 0: `e^-87` ≈ 1.6e-38 is the smallest normal `f32` range, and
/// a token that much less likely than the best one cannot be drawn from an `f32` distribution.
const EXP_CUTOFF: f32 = -87.0;

/// `e^x` for `x ≤ 0` (including `-inf`, giving 0) within about 2 ulp, branch-free: Cody–Waite
/// range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-5 minimax polynomial for `e^r`
/// (Cephes `expf`), and `2^n` assembled in the exponent bits. `exp_nonpositive(0.0) == 1.0`.
pub(super) fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const ROUND_BITS: i32 = 0x4B40_0000;
    let xc = x.max(EXP_CUTOFF);
    let t = xc * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let n_int = t.to_bits() as i32 - ROUND_BITS;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let poly =
        ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e_r = poly * r * r + r + 1.0;
    // n ∈ [-126, 0], so the biased exponent is in [1, 127]: a normal float.
    let two_n = f32::from_bits(((n_int + 127) << 23) as u32);
    if x < EXP_CUTOFF { 0.0 } else { e_r * two_n }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulp() {
        let mut worst = 0.0f64;
        for i in 0..=1_000_000 {
            let x = -87.0 * i as f32 / 1_000_000.0;
            let want = f64::from(x).exp();
            let got = f64::from(exp_nonpositive(x));
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3.0 * f64::from(f32::EPSILON), "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-0.0), 1.0);
        assert_eq!(exp_nonpositive(-87.5), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_nonpositive(f32::MIN), 0.0);
    }

    #[test]
    fn sanitize_and_max_handles_every_remainder_length() {
        for len in 0..20 {
            let mut row: Vec<f32> = (0..len).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
            if len > 0 {
                row[len / 2] = f32::NAN;
            }
            let want = row.iter().filter(|x| !x.is_nan()).copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(sanitize_and_max(&mut row), want, "len {len}");
            assert!(row.iter().all(|x| !x.is_nan()));
        }
        let mut row = [1.0, f32::INFINITY, f32::NAN];
        assert_eq!(sanitize_and_max(&mut row), f32::MAX);
        assert_eq!(row, [1.0, f32::MAX, f32::NEG_INFINITY]);
    }

    #[test]
    fn masked_sum_counts_only_the_support() {
        for len in 0..40 {
            let logits: Vec<f32> = (0..len).map(|i| i as f32).collect();
            let weights: Vec<f32> = (0..len).map(|i| if i % 3 == 0 { 0.0 } else { 0.5 }).collect();
            let support = Support { min_logit: 5.0, min_weight: f32::MIN_POSITIVE };
            let inside: Vec<_> = (5..len).filter(|i| i % 3 != 0).collect();
            let (sum, count) = masked_sum(&logits, &weights, support);
            assert_eq!(count, inside.len(), "len {len}");
            assert!((sum - 0.5 * inside.len() as f64).abs() < 1e-12, "len {len}");
        }
    }

    #[test]
    fn sum_f64_matches_a_serial_sum() {
        for len in 0..40 {
            let v: Vec<f32> = (0..len).map(|i| 0.1 * i as f32).collect();
            let want: f64 = v.iter().map(|&x| f64::from(x)).sum();
            assert!((sum_f64(&v) - want).abs() < 1e-9, "len {len}");
        }
    }
}
