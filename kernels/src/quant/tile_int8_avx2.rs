//! AVX2 register tiles of 8-bit-activation products: half a row group of the row-interleaved
//! weights (`vnni`: 8 weight rows, one per i32 lane of a 256-bit register) times `K ≤ 4` rows
//! of 8-bit activations — the small-batch kernel of [`super::Activations::Int8`] on AVX2 CPUs
//! without AVX-512 VNNI (AMD Zen 2/3, Intel before Ice Lake).
//!
//! Without `vpdpbusd`, a four-byte run becomes one lane's integer sum in two steps:
//! `vpmaddubsw` multiplies the unsigned weight bytes with the broadcast signed activation
//! bytes and adds pairs into i16 lanes, and `vpmaddwd` with ones adds those pairs into i32
//! lanes. For the 4-bit types the i16 pairs stay far from overflow (`2 · 15 · 127 = 3810`
//! each), so a block's eight operands accumulate in i16 (at most 30480) and one `vpmaddwd`
//! per block and activation row widens them: per block, 8 weight rows and one activation
//! row (256 multiply-adds), 8 `vpmaddubsw`, 8 adds, one `vpmaddwd`, then the same scale steps
//! as the VNNI tiles. `Q8_0`'s unsigned operands (quants plus 128) would overflow an i16
//! pair (`2 · 255 · 127`): its operand is made signed again and multiplied as
//! `|w| · sign(w)·a` (`vpsignb`), each pair widened at once. (Splitting the unsigned quants
//! into two 4-bit operands instead, accumulated in i16 like the 4-bit types, measured 7–43%
//! slower on a `Q8_0` matrix of the `gate`/`up` shape.)
//!
//! The integer block sums are exact, so they equal the VNNI tiles' (`Q8_0` computes `Σ w a`
//! directly where the VNNI tiles subtract their offset correction from `Σ (w + 128) a`), and
//! the float steps after them are the same instructions in the same order: outputs are
//! bitwise those of `tile_int8_avx512`, and, as there, a row's product does not depend on the
//! rows it shares a tile with.
//!
//! [`quantize_block`] is the activation quantizer of these CPUs, bit for bit the scalar one
//! (`activation::quantize_block`) in eight lanes.
//!
//! Every function here requires AVX2, FMA and F16C; callers check with
//! [`crate::simd::has_avx2_fma`] first. Loops, not closures, build the register arrays (a
//! closure does not inherit `target_feature`).

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::matmul::{SharedOut, rows_per_task};
use super::types::{QK, QuantType};
use super::vnni::{ActBlock, GROUP_ROWS, VnniActs, VnniWeights};

/// Weight rows per tile: the i32 lanes of one 256-bit register, half a row group.
const HALF_ROWS: usize = GROUP_ROWS / 2;

/// Most activation rows per tile: `K` f32 accumulators and `K` integer sums beside one
/// unpacked operand pair, the nibble mask and a product in flight fill the 16 registers.
const TILE_ACT_ROWS: usize = 4;

/// Half `half` of row group `group` of `w` times activation rows `i0..i0 + K` of `a`: lane `l`
/// of `out[k]` receives output row `16·group + 8·half + l` of activation row `i0 + k`,
/// `Σ_blocks d_w d_a Σ q_w q_a (+ m_w s_a)`, for the first `lanes` lanes. The weight type is
/// `Q8` (`Q8_0`), `HAS_M` (`Q4_1`) or neither (`Q4_0`). With `prefetch`, the same blocks of
/// that group (the next one) are fetched into L1 as this group's are consumed.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `group` is a row group of `w`, whose type `Q8` /
/// `HAS_M` describe; `a` is quantized for `w`'s type and block count and holds rows
/// `i0..i0 + K` within one of its tiles; every `out[k]` is valid for writes of `lanes ≤ 8`
/// floats and no other thread accesses them.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const K: usize, const Q8: bool, const HAS_M: bool>(
    w: &VnniWeights,
    group: usize,
    half: usize,
    prefetch: Option<&[u8]>,
    a: &VnniActs,
    i0: usize,
    out: [*mut f32; K],
    lanes: usize,
) {
    let ty = VnniWeights::tile_type(Q8, HAS_M);
    debug_assert_eq!(ty, w.ty);
    let (header, stride) = (VnniWeights::header_bytes(ty), VnniWeights::block_stride(ty));
    let rows = w.group(group);
    let nibbles = _mm256_set1_epi8(0xF);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); K];
    for (b, acts) in a.tile_blocks::<K>(i0).enumerate().take(w.nb) {
        let block = &rows[b * stride..(b + 1) * stride];
        let p = block.as_ptr();
        if let Some(next) = prefetch {
            VnniWeights::prefetch_block(next, b, stride);
        }
        // SAFETY: a block holds 16 f16 scales (and for `Q4_1` 16 minimums) then, per operand
        // line, 64 bytes of which this half reads 32: every load stays inside `block`.
        let (wd, wm, q) = unsafe {
            let wd = _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * half) as *const __m128i));
            let wm = if HAS_M { _mm256_cvtph_ps(_mm_loadu_si128(p.add(32 + 16 * half) as *const __m128i)) } else { wd };
            (wd, wm, p.add(header + 32 * half))
        };
        let sums = if Q8 {
            // SAFETY: as above, eight operand lines.
            unsafe { q8_block_sums::<K>(q, acts, ones) }
        } else {
            // SAFETY: as above, four operand lines.
            unsafe { q4_block_sums::<K>(q, acts, nibbles, ones) }
        };
        for k in 0..K {
            let mut sum = sums[k];
            if !HAS_M && !Q8 {
                sum = _mm256_sub_epi32(sum, _mm256_set1_epi32(acts[k].term as i32));
            }
            let scale = _mm256_mul_ps(wd, _mm256_set1_ps(acts[k].scale));
            acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc[k]);
            if HAS_M {
                acc[k] = _mm256_fmadd_ps(wm, _mm256_set1_ps(f32::from_bits(acts[k].term)), acc[k]);
            }
        }
    }
    for k in 0..K {
        if lanes == HALF_ROWS {
            // SAFETY: the caller guarantees `out[k]` takes 8 floats.
            unsafe { _mm256_storeu_ps(out[k], acc[k]) };
        } else {
            let mut all = [0f32; HALF_ROWS];
            // SAFETY: `all` holds 8 floats.
            unsafe { _mm256_storeu_ps(all.as_mut_ptr(), acc[k]) };
            // SAFETY: the caller guarantees `out[k]` takes `lanes` floats.
            unsafe { std::ptr::copy_nonoverlapping(all.as_ptr(), out[k], lanes) };
        }
    }
}

/// The 4-bit types' integer block sums `Σ q_w q_a` of 8 weight rows (lanes) for each of `K`
/// activation rows: operand line `j` at `q + 64 j` holds operands `2j` (low nibbles) and
/// `2j + 1` (high nibbles); each unpacked pair advances every row's i16 sum before the next.
///
/// # Safety
/// AVX2 must be available and `q + 64 j .. + 32` readable for `j < 4`.
#[target_feature(enable = "avx2")]
unsafe fn q4_block_sums<const K: usize>(
    q: *const u8,
    acts: &[ActBlock; K],
    nibbles: __m256i,
    ones: __m256i,
) -> [__m256i; K] {
    let mut pairs = [_mm256_setzero_si256(); K];
    for j in 0..4 {
        // SAFETY: the caller guarantees the line is readable.
        let v = unsafe { _mm256_loadu_si256(q.add(64 * j) as *const __m256i) };
        let lo = _mm256_and_si256(v, nibbles);
        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(v), nibbles);
        for k in 0..K {
            let even = _mm256_maddubs_epi16(lo, _mm256_set1_epi32(acts[k].run_of_four(2 * j)));
            let odd = _mm256_maddubs_epi16(hi, _mm256_set1_epi32(acts[k].run_of_four(2 * j + 1)));
            pairs[k] = _mm256_add_epi16(pairs[k], _mm256_add_epi16(even, odd));
        }
    }
    let mut sums = [_mm256_setzero_si256(); K];
    for k in 0..K {
        sums[k] = _mm256_madd_epi16(pairs[k], ones);
    }
    sums
}

/// `Q8_0`'s integer block sums `Σ q_w q_a` (signed weights), as [`q4_block_sums`]: operand
/// `c` at `q + 64 c` holds the quants plus 128.
///
/// # Safety
/// AVX2 must be available and `q + 64 c .. + 32` readable for `c < 8`.
#[target_feature(enable = "avx2")]
unsafe fn q8_block_sums<const K: usize>(q: *const u8, acts: &[ActBlock; K], ones: __m256i) -> [__m256i; K] {
    let mut sums = [_mm256_setzero_si256(); K];
    let bias = _mm256_set1_epi8(i8::MIN);
    for c in 0..8 {
        // SAFETY: the caller guarantees the line is readable.
        let signed = _mm256_xor_si256(unsafe { _mm256_loadu_si256(q.add(64 * c) as *const __m256i) }, bias);
        let magnitude = _mm256_abs_epi8(signed);
        for k in 0..K {
            let a = _mm256_sign_epi8(_mm256_set1_epi32(acts[k].run_of_four(c)), signed);
            let pairs = _mm256_maddubs_epi16(magnitude, a);
            sums[k] = _mm256_add_epi32(sums[k], _mm256_madd_epi16(pairs, ones));
        }
    }
    sums
}

/// `activation::quantize_block`'s quants of one 32-element block, bit for bit, with AVX2:
/// returns the unrounded scale `d = max|x| / 127` and the quants' sum, from which the caller
/// takes the f16 scale and the block's terms exactly as the scalar quantizer does.
///
/// # Safety
/// AVX2 must be available.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_block(xb: &[f32; QK], q: &mut [i8; QK]) -> (f32, i32) {
    let magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX));
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let mut v = [_mm256_setzero_ps(); 4];
    let mut abs = [_mm256_setzero_ps(); 4];
    for i in 0..4 {
        // SAFETY: `xb` holds 32 floats, four registers.
        v[i] = unsafe { _mm256_loadu_ps(xb.as_ptr().add(8 * i)) };
        abs[i] = _mm256_and_ps(v[i], magnitude);
    }
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if d != 0.0 { 1.0 / d } else { 0.0 });
    // Half away from zero, as the scalar `round_away_i8`: truncate, then step away from zero
    // where the dropped fraction is at least one half.
    let mut r = [_mm256_setzero_si256(); 4];
    for i in 0..4 {
        let y = _mm256_mul_ps(v[i], id);
        let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
        let away = _mm256_cmp_ps::<_CMP_GE_OQ>(_mm256_and_ps(_mm256_sub_ps(y, t), magnitude), _mm256_set1_ps(0.5));
        let step = _mm256_or_ps(_mm256_and_ps(y, sign), _mm256_set1_ps(1.0));
        r[i] = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(away, step)));
    }
    let sum = _mm256_add_epi32(_mm256_add_epi32(r[0], r[1]), _mm256_add_epi32(r[2], r[3]));
    let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum)));
    // The packs interleave 128-bit lanes; the permutation restores element order.
    let packed = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
    let ordered = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // SAFETY: `q` holds 32 bytes.
    unsafe { _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, ordered) };
    (d, sum)
}

/// `out = x · Wᵀ` for the `n` rows of `acts`: tasks own chunks of row groups, and each half
/// group meets every activation row while its weights are in L1; a group's first tile
/// prefetches the next group, so that the first tile over it does not stall on its loads
/// (a decode step of the reference model's shapes from DRAM, one thread, three alternated
/// runs of `examples/matmul_bench.rs 1 dram`: 6.98–7.16 → 6.45–6.85 ms with one stream,
/// 37.2–41.8 → 34.7–38.4 ms with 16). Only called after
/// [`crate::simd::has_avx2_fma`] succeeded, with `acts` quantized for `w`.
pub(super) fn matmul_tiles(w: &VnniWeights, acts: &VnniActs, n: usize, out: &mut [f32]) {
    let rows = w.rows;
    let chunk = rows_per_task(rows, w.nb * QK * n, GROUP_ROWS) / GROUP_ROWS;
    let dst = SharedOut::new(out);
    let groups = w.groups();
    (0..groups.div_ceil(chunk)).into_par_iter().for_each(|t| {
        for group in t * chunk..groups.min((t + 1) * chunk) {
            let next = (group + 1 < groups).then(|| w.group(group + 1));
            for half in 0..2 {
                let first = group * GROUP_ROWS + half * HALF_ROWS;
                if first >= rows {
                    break;
                }
                let lanes = (rows - first).min(HALF_ROWS);
                for i0 in (0..n).step_by(TILE_ACT_ROWS) {
                    let prefetch = if half == 0 && i0 == 0 { next } else { None };
                    let tile = Tile { group, half, prefetch, i0, k: (n - i0).min(TILE_ACT_ROWS), first, lanes };
                    run_tile(w, &tile, acts, dst, rows);
                }
            }
        }
    });
}

/// One tile's place: half `half` of row group `group` (output rows `first..first + lanes`)
/// × activation rows `i0..i0 + k`, and the group to prefetch, if any.
#[derive(Clone, Copy)]
struct Tile<'a> {
    group: usize,
    half: usize,
    prefetch: Option<&'a [u8]>,
    i0: usize,
    k: usize,
    first: usize,
    lanes: usize,
}

/// Runs tile `t` of `w` × `a`, writing its outputs to `dst` (`n × rows`, row-major).
fn run_tile(w: &VnniWeights, t: &Tile<'_>, a: &VnniActs, dst: SharedOut, rows: usize) {
    let Tile { group, half, prefetch, i0, k, first, lanes } = *t;
    macro_rules! run {
        ($k:literal) => {{
            let out = std::array::from_fn(|i| dst.run((i0 + i) * rows + first, lanes));
            // SAFETY: AVX2/FMA/F16C support was checked by the caller; `group` is a row group
            // of `w`, the type parameters are `w`'s type, `a` is quantized for it and `i0` is
            // a multiple of 4 (so rows `i0..i0 + k` share one of `a`'s 8-row tiles), and each
            // `out` run holds `lanes` floats that only this task writes.
            unsafe {
                match w.ty {
                    QuantType::Q8_0 => tile::<$k, true, false>(w, group, half, prefetch, a, i0, out, lanes),
                    QuantType::Q4_1 => tile::<$k, false, true>(w, group, half, prefetch, a, i0, out, lanes),
                    _ => tile::<$k, false, false>(w, group, half, prefetch, a, i0, out, lanes),
                }
            }
        }};
    }
    match k {
        1 => run!(1),
        2 => run!(2),
        3 => run!(3),
        _ => run!(4),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::super::activation::{self, SumRounding};
    use super::*;
    use crate::quant::QMatrix;

    /// The float steps the tiles take per block, one output at a time in scalar code, from
    /// integer sums computed the plain way: the tiles must match this bit for bit.
    fn reference(m: &QMatrix, acts: &VnniActs, x_rows: usize, out: &mut [f32]) {
        let rows = m.rows();
        let nb = m.cols() / QK;
        let ty = m.ty();
        for i in 0..x_rows {
            for r in 0..rows {
                let row = m.row(r);
                let mut acc = 0f32;
                for b in 0..nb {
                    let block = &row[b * ty.block_bytes()..(b + 1) * ty.block_bytes()];
                    let a = acts.block(i, b);
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let weight = |e: usize| -> i32 {
                        match ty {
                            QuantType::Q8_0 => block[2 + e] as i8 as i32,
                            _ => {
                                let qs = if ty == QuantType::Q4_1 { &block[4..20] } else { &block[2..18] };
                                ((qs[e % 16] >> (4 * (e / 16))) & 0xF) as i32
                            }
                        }
                    };
                    let mut sum: i32 = (0..QK).map(|e| weight(e) * a.q[e] as i32).sum();
                    if ty == QuantType::Q4_0 {
                        sum -= a.term as i32;
                    }
                    acc = (sum as f32).mul_add(d * a.scale, acc);
                    if ty == QuantType::Q4_1 {
                        let m = half::f16::from_le_bytes([block[2], block[3]]).to_f32();
                        acc = m.mul_add(f32::from_bits(a.term), acc);
                    }
                }
                out[i * rows + r] = acc;
            }
        }
    }

    /// Every type, awkward row counts (partial halves and groups) and activation row counts
    /// (partial tiles of 4 and of 8), values over many magnitudes, and Q8_0 quants at ±127
    /// and -128 (the `vpsignb` edge): bitwise the reference.
    #[test]
    fn tiles_match_the_scalar_steps_bit_for_bit() {
        if !crate::simd::has_avx2_fma() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(17);
        for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            for (rows, cols) in [(1, 32), (7, 64), (8, 96), (9, 32), (16, 64), (17, 160), (67, 576), (131, 96)] {
                let values: Vec<f32> =
                    (0..rows * cols).map(|i| rng.random_range(-1.0f32..1.0) * 10f32.powi((i % 7) as i32 - 3)).collect();
                let mut bytes = QMatrix::quantize(ty, rows, cols, &values).expect("valid shape").bytes().to_vec();
                if ty == QuantType::Q8_0 {
                    // ggml's quantizer stops at ±127; a file may hold -128.
                    bytes[2] = i8::MIN as u8;
                }
                let m = QMatrix::new(ty, rows, cols, bytes).expect("valid shape");
                let w = m.vnni().expect("AVX2 builds the interleaved copy");
                for n in [1, 2, 3, 4, 5, 8, 9, 13, 16, 17] {
                    let mut x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-3.0f32..3.0)).collect();
                    x[0] = 1000.0;
                    let acts = VnniActs::quantize(&x, n, cols, ty);
                    let mut want = vec![0f32; n * rows];
                    reference(&m, &acts, n, &mut want);
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_tiles(w, &acts, n, &mut got);
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), e.to_bits(), "{ty:?} {rows}x{cols} n={n} element {i}: {g} vs {e}");
                    }
                }
            }
        }
    }

    /// The AVX2 quantizer gives the scalar one's quants, scale and sum exactly, on
    /// `activation::quantizer_test_blocks` (rounding ties and signed zeros among them).
    #[test]
    fn quantize_block_matches_the_scalar_quantizer_bit_for_bit() {
        if !crate::simd::has_avx2_fma() {
            return;
        }
        let blocks = activation::quantizer_test_blocks();
        for xb in &blocks {
            let (mut q, mut want) = ([0i8; QK], [0i8; QK]);
            // SAFETY: AVX2 support checked above.
            let (d, sum) = unsafe { quantize_block(xb, &mut q) };
            let (want_d, want_s) = activation::quantize_block(xb, &mut want, SumRounding::Exact);
            assert_eq!(q, want, "quants of {xb:?}");
            let d16 = half::f16::from_f32(d);
            assert_eq!(d16.to_f32().to_bits(), want_d.to_bits(), "scale of {xb:?}");
            assert_eq!(sum, want.iter().map(|&q| q as i32).sum::<i32>(), "sum of {xb:?}");
            assert_eq!(activation::block_sum(d16, sum, SumRounding::Exact).to_bits(), want_s.to_bits());
        }
    }

    /// Where both exist, the AVX2 and AVX-512 VNNI tiles give the same bits.
    #[test]
    fn tiles_match_the_vnni_tiles() {
        if !crate::simd::has_avx512_vnni() {
            return;
        }
        let mut rng = StdRng::seed_from_u64(23);
        for ty in [QuantType::Q4_0, QuantType::Q4_1, QuantType::Q8_0] {
            let (rows, cols, n) = (67, 576, 13);
            let values: Vec<f32> = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let m = QMatrix::quantize(ty, rows, cols, &values).expect("valid shape");
            let w = m.vnni().expect("built");
            let x: Vec<f32> = (0..n * cols).map(|_| rng.random_range(-3.0f32..3.0)).collect();
            let acts = VnniActs::quantize(&x, n, cols, ty);
            let (mut avx2, mut vnni) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
            matmul_tiles(w, &acts, n, &mut avx2);
            super::super::tile_int8_avx512::matmul_tiles(w, &acts, n, &mut vnni);
            assert!(avx2.iter().zip(&vnni).all(|(a, b)| a.to_bits() == b.to_bits()), "{ty:?}");
        }
    }
}
