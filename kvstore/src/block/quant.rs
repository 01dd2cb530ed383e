//! Asymmetric min-max group quantization (algorithms.md §5.1) and 4-bit packing.
//!
//! A group of values `x` is stored as codes `q ∈ [0, L]` (`L = 2^b − 1`) and two f16 parameters,
//! `min` and `step`, and reconstructed as `x̂ = min + q·step`.
//!
//! **Why f16 parameters, and how the error bound survives them.** Two f32 parameters per group of
//! 32 cost 2 bits per element, which would make int4 only 2.7× smaller than f16; f16 parameters
//! halve that. Rounding them to nearest could leave part of the group outside the grid, so
//! [`GroupParams::fit`] rounds `min` *down* and `step` *up* (after recomputing the span from the
//! rounded `min`). The grid `[min, min + L·step]` then still covers the group and every element is
//! within `step / 2` of its reconstruction — half of the *stored* step, which exceeds the ideal
//! `(max − min) / L` by at most one f16 ulp of `min` (spread over `L` steps) and a factor
//! `1 + 2⁻¹⁰`, and is never below 2⁻¹⁹ of the group's magnitude (`STEP_FLOOR`: finer grids are not
//! representable in f32). A group whose parameters do not fit f16 (|min| or step above 65504) is refused
//! rather than clamped; such a block should use a raw codec.
//!
//! **Why asymmetric, also for int8.** Keys are grouped per channel, and key channels carry large
//! constant offsets (KIVI's observation, §5.2): a symmetric absmax grid would spend most of its
//! codes on the empty range between 0 and the offset. Min-max costs one more f16 per group
//! (0.5 bit per element at 32) and is never worse than absmax by more than that one code bit.
//!
//! Codes are rounded half-to-even with the `2²³` trick (see `code`), which needs no SSE4.1
//! rounding instruction, so every loop here vectorizes on baseline x86-64.

/// Width of the codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bits {
    /// One code per byte, `L = 255`.
    Eight,
    /// Two codes per byte (low nibble first), `L = 15`.
    Four,
}

impl Bits {
    /// The largest code, `L = 2^b − 1`.
    pub const fn max_code(self) -> u8 {
        match self {
            Bits::Eight => u8::MAX,
            Bits::Four => 15,
        }
    }
}

/// Parameters of one quantization group, both exactly representable in f16 (held as f16 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GroupParams {
    min: u16,
    step: u16,
}

impl GroupParams {
    /// The smallest grid covering `[min, max]` with f16 parameters (see the module docs).
    ///
    /// `None` when `min` or `max` is not finite, `max < min`, or the parameters overflow f16.
    pub fn fit(min: f32, max: f32, bits: Bits) -> Option<Self> {
        if !(min.is_finite() && max.is_finite() && min <= max) {
            return None;
        }
        let floor = min.abs().max(max.abs()) * STEP_FLOOR;
        let min = f16_round_down(min)?;
        // `max ≥ min ≥ f16(min)`, so the span is ≥ 0 (and +0.0 for a constant group).
        let step = (max - f16_to_f32(min)) / f32::from(bits.max_code());
        let step = f16_round_up(if step > floor { step } else { floor })?;
        Some(GroupParams { min, step })
    }

    /// Rebuilds parameters from their stored f16 bits; `None` unless `min` is finite and `step` is
    /// finite and non-negative with a clear sign bit — the only parameters [`GroupParams::fit`]
    /// produces.
    pub fn from_bits(min: u16, step: u16) -> Option<Self> {
        (min & 0x7fff < F16_INF && step < F16_INF).then_some(GroupParams { min, step })
    }

    /// `(min, step)` as stored.
    pub fn to_bits(self) -> (u16, u16) {
        (self.min, self.step)
    }

    /// The value of code 0.
    pub fn min(self) -> f32 {
        f16_to_f32(self.min)
    }

    /// The distance between consecutive codes; 0 for a group whose values all equal [`Self::min`].
    pub fn step(self) -> f32 {
        f16_to_f32(self.step)
    }

    /// `1 / step`, or 0 for a zero step so that every element gets code 0 (no division by zero).
    pub(crate) fn inv_step(self) -> f32 {
        let step = self.step();
        if step > 0.0 { 1.0 / step } else { 0.0 }
    }
}

// f16 <-> f32 in plain integer arithmetic: inlinable and branch-light, unlike a general converter
// that must handle NaN, infinities and round-to-nearest. Parameter fitting runs once per group, so
// it sits on the encoder's hot path.

/// The smallest step relative to the group's magnitude. A finer grid is not representable in f32
/// (its ulp is 2⁻²³ of the magnitude): `min + q·step` would round off the grid and re-quantizing a
/// reconstruction could change its code. At 2⁻¹⁹ the rounding stays below 1/16 of a step, so
/// `quant(dequant(q)) == q` always holds; only groups whose spread is below f32 resolution notice.
const STEP_FLOOR: f32 = 1.0 / 524_288.0;

/// Bits of f16 +infinity; magnitudes below it are finite.
const F16_INF: u16 = 0x7c00;
/// The largest finite f16.
const F16_MAX: f32 = 65504.0;
/// f32 bits of 2⁻¹⁴, the smallest normal f16.
const F16_MIN_NORMAL_BITS: u32 = 0x3880_0000;
/// Exponent rebias from f32 (127) to f16 (15), in f32 bit position: `112 << 23`.
const REBIAS: u32 = 0x3800_0000;
/// 2²⁴: one f16 subnormal ulp is 2⁻²⁴.
const SUBNORMAL_SCALE: f32 = 16_777_216.0;

/// The f16 bits of `a` (in `[0, 65504]`) rounded toward zero, and whether that lost anything.
#[inline]
fn f16_truncate(a: f32) -> (u16, bool) {
    let bits = a.to_bits();
    if bits >= F16_MIN_NORMAL_BITS {
        (((bits - REBIAS) >> 13) as u16, bits & 0x1fff != 0)
    } else {
        // Scaling by a power of two is exact; the cast truncates (a·2²⁴ < 1024).
        let scaled = a * SUBNORMAL_SCALE;
        let h = scaled as u16;
        (h, f32::from(h) != scaled)
    }
}

/// The largest f16 not above `x` (finite `x`), as bits; `None` below `-65504`.
#[inline]
fn f16_round_down(x: f32) -> Option<u16> {
    if x > F16_MAX {
        return Some(0x7bff);
    }
    if x < -F16_MAX {
        return None;
    }
    let (h, inexact) = f16_truncate(x.abs());
    // Toward zero is down for positives; negatives step one ulp away from zero when inexact (the
    // carry into the exponent is the right next value, f16 bits being ordered like magnitudes).
    Some(if x.is_sign_negative() { 0x8000 | (h + u16::from(inexact)) } else { h })
}

/// The smallest f16 not below `x` (finite, `x ≥ 0`), as bits; `None` above `65504`.
#[inline]
fn f16_round_up(x: f32) -> Option<u16> {
    if x > F16_MAX {
        return None;
    }
    let (h, inexact) = f16_truncate(x.abs());
    Some(h + u16::from(inexact))
}

/// The exact f32 value of finite f16 bits.
#[inline]
fn f16_to_f32(h: u16) -> f32 {
    let magnitude = u32::from(h & 0x7fff);
    let value = if magnitude >= 0x0400 {
        f32::from_bits((magnitude << 13) + REBIAS)
    } else {
        magnitude as f32 / SUBNORMAL_SCALE
    };
    if h & 0x8000 != 0 { -value } else { value }
}

/// Adding `2²³` to a float in `[0, 2²³)` leaves it rounded half-to-even in the low mantissa bits.
const ROUND_MAGIC: f32 = 8_388_608.0;

/// The code of `x`: `round((x − min)·inv)` clamped to `[0, max]`. NaN lands on 0 (callers refuse
/// non-finite groups before this point; the clamp keeps the cast in range regardless).
#[inline(always)]
fn code(x: f32, min: f32, inv: f32, max: f32) -> u8 {
    let v = (x - min) * inv;
    let v = if v > 0.0 { v } else { 0.0 };
    let v = if v < max { v } else { max };
    (v + ROUND_MAGIC).to_bits() as u8
}

/// Codes of one group: `codes[i] = round((x[i] − min) / step)`. Processes `min(x.len(),
/// codes.len())` elements.
pub fn quantize(x: &[f32], params: GroupParams, bits: Bits, codes: &mut [u8]) {
    let (min, inv, max) = (params.min(), params.inv_step(), f32::from(bits.max_code()));
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = code(v, min, inv, max);
    }
}

/// Reconstruction of one group: `out[i] = min + codes[i]·step`. Processes `min(codes.len(),
/// out.len())` elements.
pub fn dequantize(codes: &[u8], params: GroupParams, out: &mut [f32]) {
    let (min, step) = (params.min(), params.step());
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = min + f32::from(c) * step;
    }
}

/// Codes of one row whose elements each have their own group (keys: one group per channel).
pub(crate) fn quantize_columns(row: &[f32], mins: &[f32], invs: &[f32], bits: Bits, codes: &mut [u8]) {
    let max = f32::from(bits.max_code());
    for (((c, &v), &min), &inv) in codes.iter_mut().zip(row).zip(mins).zip(invs) {
        *c = code(v, min, inv, max);
    }
}

/// Reconstruction of one row whose elements each have their own group.
pub(crate) fn dequantize_columns(codes: &[u8], mins: &[f32], steps: &[f32], out: &mut [f32]) {
    for (((o, &c), &min), &step) in out.iter_mut().zip(codes).zip(mins).zip(steps) {
        *o = min + f32::from(c) * step;
    }
}

/// Running per-column minimum, maximum and finiteness over the rows of one key token group.
#[derive(Debug)]
pub(crate) struct ColumnRange {
    pub(crate) min: Vec<f32>,
    pub(crate) max: Vec<f32>,
    /// `Σ x·0`: 0 while every value seen is finite, NaN after an infinity or a NaN.
    nonfinite: Vec<f32>,
}

impl ColumnRange {
    pub(crate) fn new(width: usize) -> Self {
        ColumnRange { min: vec![0.0; width], max: vec![0.0; width], nonfinite: vec![0.0; width] }
    }

    pub(crate) fn reset(&mut self) {
        self.min.fill(f32::INFINITY);
        self.max.fill(f32::NEG_INFINITY);
        self.nonfinite.fill(0.0);
    }

    pub(crate) fn update(&mut self, row: &[f32]) {
        let columns = self.min.iter_mut().zip(self.max.iter_mut()).zip(self.nonfinite.iter_mut());
        for (((mn, mx), bad), &v) in columns.zip(row) {
            *mn = if v < *mn { v } else { *mn };
            *mx = if v > *mx { v } else { *mx };
            *bad += v * 0.0;
        }
    }

    /// Whether column `c` saw only finite values.
    pub(crate) fn finite(&self, c: usize) -> bool {
        self.nonfinite.get(c).is_some_and(|&bad| bad == 0.0)
    }
}

/// `(min, max)` of a non-empty group, or `None` if it holds a non-finite value.
pub(crate) fn min_max(x: &[f32]) -> Option<(f32, f32)> {
    const LANES: usize = 8;
    let (chunks, tail) = x.as_chunks::<LANES>();
    let mut mn = [f32::INFINITY; LANES];
    let mut mx = [f32::NEG_INFINITY; LANES];
    let mut bad = [0.0f32; LANES];
    for chunk in chunks {
        for (((lo, hi), nf), &v) in mn.iter_mut().zip(mx.iter_mut()).zip(bad.iter_mut()).zip(chunk) {
            *lo = if v < *lo { v } else { *lo };
            *hi = if v > *hi { v } else { *hi };
            *nf += v * 0.0;
        }
    }
    for (((lo, hi), nf), &v) in mn.iter_mut().zip(mx.iter_mut()).zip(bad.iter_mut()).zip(tail) {
        *lo = if v < *lo { v } else { *lo };
        *hi = if v > *hi { v } else { *hi };
        *nf += v * 0.0;
    }
    let min = mn.into_iter().fold(f32::INFINITY, |a, b| if b < a { b } else { a });
    let max = mx.into_iter().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
    (bad.into_iter().sum::<f32>() == 0.0 && min <= max).then_some((min, max))
}

/// Bytes needed for `codes` 4-bit codes.
pub const fn packed_len(codes: usize) -> usize {
    codes.div_ceil(2)
}

/// Packs 4-bit codes two per byte, code `2i` in the low nibble of byte `i`, `2i + 1` in the high
/// nibble; an odd count leaves the last high nibble 0. Codes must be `< 16`; higher bits are
/// dropped. Writes `min(packed.len(), packed_len(codes.len()))` bytes.
pub fn pack_nibbles(codes: &[u8], packed: &mut [u8]) {
    let (pairs, tail) = codes.as_chunks::<2>();
    for (p, &[lo, hi]) in packed.iter_mut().zip(pairs) {
        *p = (lo & 0x0f) | (hi << 4);
    }
    if let (Some(&lo), Some(p)) = (tail.first(), packed.get_mut(pairs.len())) {
        *p = lo & 0x0f;
    }
}

/// Inverse of [`pack_nibbles`]: fills `codes` (its length is the code count) from `packed`.
/// Returns whether the padding nibble of an odd count is 0 (always true for an even count), so
/// that a decoder can refuse non-canonical bytes.
pub fn unpack_nibbles(packed: &[u8], codes: &mut [u8]) -> bool {
    let (pairs, tail) = codes.as_chunks_mut::<2>();
    for (pair, &p) in pairs.iter_mut().zip(packed) {
        *pair = [p & 0x0f, p >> 4];
    }
    match (tail.first_mut(), packed.get(pairs.len())) {
        (Some(c), Some(&p)) => {
            *c = p & 0x0f;
            p >> 4 == 0
        }
        _ => true,
    }
}
