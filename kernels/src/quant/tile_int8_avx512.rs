//! AVX-512 VNNI register tiles: a group of 16 weight rows in the row-interleaved layout
//! (`vnni`) times `K` rows of 8-bit activations — the small-batch kernel of
//! [`super::Activations::Int8`] on CPUs with AVX-512 VNNI.
//!
//! Per block, activation row and row group: eight `vpdpbusd` (the activation's four-byte
//! runs broadcast to every lane from memory, two chains), one add, one conversion and one FMA
//! with `d_w · d_a`, and for `Q4_1` a second FMA adding `m_w · s_a` (`Q4_0` and `Q8_0` subtract
//! their offset correction from the integer sum instead): 12–13 instructions per 512
//! multiply-adds. The f32 tiles need 32 FMAs for as many, plus dequantizing and a horizontal
//! sum per output; here the lanes are the outputs. The group's weights are unpacked once per
//! block and meet all `K` activation rows.
//!
//! Each unpacked operand pair advances all `2K` integer chains by one step before the next is
//! unpacked, so every `vpdpbusd` has `2K − 1` independent ones between it and its
//! predecessor (five cycles of latency, two issued per cycle), and the activations are read
//! block by block from one run of `K` records ([`VnniActs`]), at constant offsets. With rows
//! one after another (each row's eight steps, then the next row's), activations read row by
//! row and six rows per tile, a product of the `gate`/`up` shape took 108 µs with 16 rows and
//! 13.6 µs with one on one core; now 81 and 10.7 µs (`examples/matmul_bench.rs 1 small`).
//!
//! The activations are quantized 16 blocks of a row at a time ([`quantize_run`]), and
//! [`VnniActs`] keeps each tile's rows together so tiles quantize in parallel; the `down`
//! shape (48 blocks per row) went from 92.9 to 81.5 µs with 16 rows and from 10.7 to 10.0 µs
//! with one, on the same bench.
//!
//! The weight type is a compile-time parameter of the tile, and the first tile over a group
//! prefetches the next group block by block, so the group's first tile does not stall on its
//! loads: a decode step of the reference model's shapes with all weights from DRAM went from
//! 2.94 to 2.39 ms with one stream and from 14.9 to 12.5 ms with 16 (best of five alternated
//! runs of `examples/matmul_bench.rs 2 dram`).
//!
//! **Row invariance**, as for the f32 tiles: each output is one lane of its own accumulator,
//! fed the same instructions block by block whatever `K` is and whatever rows share its
//! group, so a row's product is bitwise the same alone or among other rows of a batch.
//!
//! Every function here requires AVX-512F/BW/VNNI and F16C; callers check with
//! [`crate::simd::has_avx512_vnni`] first. Loops, not closures, build the register arrays
//! (a closure does not inherit `target_feature`).

#[cfg(target_arch = "x86")]
use std::arch::x86::*;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::matmul::{SharedOut, rows_per_task};
use super::types::{QK, QuantType};
use super::vnni::{GROUP_ROWS, TILE_ROWS, VnniActs, VnniWeights};

/// Row group `group` of `w` times activation rows `i0..i0 + K` of `a`: lane `l` of `out[k]`
/// receives output row `16·group + l` of activation row `i0 + k`,
/// `Σ_blocks d_w d_a Σ q_w q_a (+ m_w s_a)`, for the lanes set in `lanes` (the real rows of a
/// padded last group). The weight type is `Q8` (`Q8_0`), `HAS_M` (`Q4_1`) or neither
/// (`Q4_0`). With `prefetch`, the same blocks of that group (the next one) are fetched into L1
/// as this group's are consumed.
///
/// # Safety
/// AVX-512F/BW/VNNI and F16C must be available; `group` is a row group of `w`, whose type
/// `Q8`/`HAS_M` describe; `a` is quantized for `w`'s type and block count and holds rows
/// `i0..i0 + K`; every `out[k]` is valid for writes of the `lanes` floats and no other thread
/// accesses them.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
unsafe fn tile<const K: usize, const Q8: bool, const HAS_M: bool>(
    w: &VnniWeights,
    group: usize,
    prefetch: Option<&[u8]>,
    a: &VnniActs,
    i0: usize,
    out: [*mut f32; K],
    lanes: __mmask16,
) {
    let ty = VnniWeights::tile_type(Q8, HAS_M);
    debug_assert_eq!(ty, w.ty);
    let (header, stride) = (VnniWeights::header_bytes(ty), VnniWeights::block_stride(ty));
    let rows = w.group(group);
    let nibbles = _mm512_set1_epi8(0xF);
    let mut acc = [_mm512_setzero_ps(); K];
    for (b, acts) in a.tile_blocks::<K>(i0).enumerate().take(w.nb) {
        let block = &rows[b * stride..(b + 1) * stride];
        let p = block.as_ptr();
        if let Some(next) = prefetch {
            VnniWeights::prefetch_block(next, b, stride);
        }
        // SAFETY: a block holds `header` bytes of f16 scales (and minimums) then 256 (4-bit)
        // or 512 (`Q8_0`) quant bytes: every load below stays inside `block`.
        let (wd, wm, q) = unsafe {
            let wd = _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i));
            let wm = if HAS_M { _mm512_cvtph_ps(_mm256_loadu_si256(p.add(32) as *const __m256i)) } else { wd };
            (wd, wm, p.add(header) as *const __m512i)
        };
        // Operand pair by operand pair, every row's two chains advance by one `vpdpbusd`:
        // 2K independent chains in flight, each operand consumed as soon as it is unpacked.
        let mut even = [_mm512_setzero_si512(); K];
        let mut odd = [_mm512_setzero_si512(); K];
        for j in 0..4 {
            // SAFETY: operands `2j` and `2j + 1` lie inside `block` (see above).
            let (lo, hi) = unsafe {
                if Q8 {
                    (_mm512_loadu_si512(q.add(2 * j)), _mm512_loadu_si512(q.add(2 * j + 1)))
                } else {
                    let v = _mm512_loadu_si512(q.add(j));
                    (_mm512_and_si512(v, nibbles), _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibbles))
                }
            };
            for k in 0..K {
                even[k] = _mm512_dpbusd_epi32(even[k], lo, _mm512_set1_epi32(acts[k].run_of_four(2 * j)));
                odd[k] = _mm512_dpbusd_epi32(odd[k], hi, _mm512_set1_epi32(acts[k].run_of_four(2 * j + 1)));
            }
        }
        for k in 0..K {
            let mut sum = _mm512_add_epi32(even[k], odd[k]);
            let term = acts[k].term;
            if !HAS_M {
                sum = _mm512_sub_epi32(sum, _mm512_set1_epi32(term as i32));
            }
            let scale = _mm512_mul_ps(wd, _mm512_set1_ps(acts[k].scale));
            acc[k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, acc[k]);
            if HAS_M {
                acc[k] = _mm512_fmadd_ps(wm, _mm512_set1_ps(f32::from_bits(term)), acc[k]);
            }
        }
    }
    for k in 0..K {
        // SAFETY: the caller guarantees `out[k]` takes the `lanes` floats.
        unsafe { _mm512_mask_storeu_ps(out[k], lanes, acc[k]) };
    }
}

/// Most blocks [`quantize_run`] quantizes at once: the lanes of one register.
pub(crate) const QUANTIZE_RUN: usize = 16;

/// Up to [`QUANTIZE_RUN`] consecutive blocks of one activation row, quantized; entry `j` of
/// each array is block `j`.
#[derive(Default)]
pub(crate) struct QuantizedRun {
    pub q: [[i8; QK]; QUANTIZE_RUN],
    /// The scales, f16 values widened.
    pub d: [f32; QUANTIZE_RUN],
    /// The quants' sums.
    pub sum: [i32; QUANTIZE_RUN],
    /// The sums as the `Q4_1` minimum term, `block_sum(d, sum, SumRounding::F16)`.
    pub f16_sum: [f32; QUANTIZE_RUN],
}

/// `activation::quantize_block` with AVX-512, bit for bit, for each block of `x` (a whole
/// number of blocks, at most [`QUANTIZE_RUN`]), into `out`. The blocks' scales, their
/// reciprocals and the f16 roundings are computed for all blocks at once, one lane each: one
/// block at a time they form a chain of two divisions and four f16 conversions that took
/// longer than the rest of the block's work.
///
/// # Safety
/// AVX-512F/BW/VNNI and F16C must be available.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,f16c")]
pub(crate) unsafe fn quantize_run(x: &[f32], out: &mut QuantizedRun) {
    let m = x.len() / QK;
    assert!(x.len() == m * QK && m <= QUANTIZE_RUN, "a run is at most 16 whole blocks");
    let mut amax = [0f32; QUANTIZE_RUN];
    for (a, xb) in amax.iter_mut().zip(x.chunks_exact(QK)) {
        // SAFETY: `xb` holds 32 floats.
        let halves = unsafe { [_mm512_loadu_ps(xb.as_ptr()), _mm512_loadu_ps(xb.as_ptr().add(16))] };
        *a = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(halves[0]), _mm512_abs_ps(halves[1])));
    }
    // SAFETY: the arrays hold 16 floats.
    let d = _mm512_div_ps(unsafe { _mm512_loadu_ps(amax.as_ptr()) }, _mm512_set1_ps(127.0));
    // `1 / d`, and 0 where `d == 0` (true for NaN, as `d != 0.0` is).
    let nonzero = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(d, _mm512_setzero_ps());
    let mut inverse = [0f32; QUANTIZE_RUN];
    // SAFETY: as above.
    unsafe { _mm512_storeu_ps(inverse.as_mut_ptr(), _mm512_maskz_div_ps(nonzero, _mm512_set1_ps(1.0), d)) };
    for (j, xb) in x.chunks_exact(QK).enumerate() {
        let id = _mm512_set1_ps(inverse[j]);
        let mut sum = _mm512_setzero_si512();
        for h in 0..2 {
            // SAFETY: `xb` holds 32 floats.
            let y = _mm512_mul_ps(unsafe { _mm512_loadu_ps(xb.as_ptr().add(16 * h)) }, id);
            // Half away from zero, as the scalar `round_away_i8`: truncate, then step away from
            // zero where the dropped fraction is at least one half.
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let away = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(_mm512_abs_ps(_mm512_sub_ps(y, t)), _mm512_set1_ps(0.5));
            let sign = _mm512_and_si512(_mm512_castps_si512(y), _mm512_set1_epi32(i32::MIN));
            let step = _mm512_castsi512_ps(_mm512_or_si512(sign, _mm512_castps_si512(_mm512_set1_ps(1.0))));
            let r = _mm512_cvttps_epi32(_mm512_mask_add_ps(t, away, t, step));
            sum = _mm512_add_epi32(sum, r);
            // SAFETY: `q[j]` has 32 bytes; this stores 16 of them at `16h`.
            unsafe { _mm_storeu_si128(out.q[j].as_mut_ptr().add(16 * h) as *mut __m128i, _mm512_cvtepi32_epi8(r)) };
        }
        out.sum[j] = _mm512_reduce_add_epi32(sum);
    }
    let d = round_to_f16(d);
    // SAFETY: the arrays hold 16 lanes each.
    unsafe {
        let sums = round_to_f16(_mm512_cvtepi32_ps(_mm512_loadu_si512(out.sum.as_ptr() as *const __m512i)));
        _mm512_storeu_ps(out.d.as_mut_ptr(), d);
        _mm512_storeu_ps(out.f16_sum.as_mut_ptr(), round_to_f16(_mm512_mul_ps(sums, d)));
    }
}

/// Each lane rounded to the nearest f16 (ties to even), widened back.
#[target_feature(enable = "avx512f,f16c")]
fn round_to_f16(v: __m512) -> __m512 {
    _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v))
}

/// `out = x · Wᵀ` for the `n` rows of `acts`: tasks own chunks of row groups, and every group
/// meets every tile of activation rows while its weights are in L1. Only called after
/// [`crate::simd::has_avx512_vnni`] succeeded, with `acts` quantized for `w`.
pub(super) fn matmul_tiles(w: &VnniWeights, acts: &VnniActs, n: usize, out: &mut [f32]) {
    let rows = w.rows;
    let chunk = rows_per_task(rows, w.nb * QK * n, GROUP_ROWS) / GROUP_ROWS;
    let dst = SharedOut::new(out);
    let groups = w.groups();
    (0..groups.div_ceil(chunk)).into_par_iter().for_each(|t| {
        for group in t * chunk..groups.min((t + 1) * chunk) {
            let next = (group + 1 < groups).then(|| w.group(group + 1));
            for i0 in (0..n).step_by(TILE_ROWS) {
                let prefetch = if i0 == 0 { next } else { None };
                run_tile(w, group, prefetch, acts, i0, (n - i0).min(TILE_ROWS), dst, rows);
            }
        }
    });
}

/// Runs the tile of row group `group` × activation rows `i0..i0 + k` of `a`, writing the
/// group's real output rows to `dst` (`n × rows`, row-major).
#[allow(clippy::too_many_arguments)]
fn run_tile(
    w: &VnniWeights,
    group: usize,
    prefetch: Option<&[u8]>,
    a: &VnniActs,
    i0: usize,
    k: usize,
    dst: SharedOut,
    rows: usize,
) {
    let lanes = (rows - group * GROUP_ROWS).min(GROUP_ROWS);
    let mask = ((1u32 << lanes) - 1) as u16;
    macro_rules! run {
        ($k:literal) => {{
            // Output rows `16·group..` of the batch rows belong to this task's row groups.
            let out = std::array::from_fn(|i| dst.run((i0 + i) * rows + group * GROUP_ROWS, lanes));
            // SAFETY: VNNI support was checked by the caller; `group` is a row group of `w`,
            // the type parameters are `w`'s type, `a` is quantized for it, and each
            // `out` run holds `lanes` floats that only this task writes.
            unsafe {
                match w.ty {
                    QuantType::Q8_0 => tile::<$k, true, false>(w, group, prefetch, a, i0, out, mask),
                    QuantType::Q4_1 => tile::<$k, false, true>(w, group, prefetch, a, i0, out, mask),
                    _ => tile::<$k, false, false>(w, group, prefetch, a, i0, out, mask),
                }
            }
        }};
    }
    match k {
        1 => run!(1),
        2 => run!(2),
        3 => run!(3),
        4 => run!(4),
        5 => run!(5),
        6 => run!(6),
        7 => run!(7),
        _ => run!(8),
    }
}

#[cfg(test)]
mod tests {
    use super::super::activation::{self, SumRounding};
    use super::*;

    /// The AVX-512 quantizer must give the scalar one's bytes, scale and sums exactly, in runs
    /// of every length from 1 to 16 blocks: random blocks over many magnitudes, zeros, signed
    /// zeros, and blocks whose scaled values are exact halves (the rounding ties).
    #[test]
    fn quantize_run_matches_the_scalar_quantizer_bit_for_bit() {
        if !crate::simd::has_avx512_vnni() {
            return;
        }
        let blocks = activation::quantizer_test_blocks();
        let (mut start, mut len) = (0, 1);
        let mut run = QuantizedRun::default();
        while start < blocks.len() {
            let xs: Vec<f32> = blocks[start..(start + len).min(blocks.len())].concat();
            // SAFETY: VNNI support checked above.
            unsafe { quantize_run(&xs, &mut run) };
            for (j, xb) in xs.chunks_exact(QK).enumerate() {
                let mut want = [0i8; QK];
                let (d, s) = activation::quantize_block(xb, &mut want, SumRounding::Exact);
                assert_eq!(run.q[j], want, "quants of {xb:?}");
                assert_eq!(run.d[j].to_bits(), d.to_bits(), "scale of {xb:?}");
                let d16 = half::f16::from_f32(run.d[j]);
                let exact = activation::block_sum(d16, run.sum[j], SumRounding::Exact);
                assert_eq!(exact.to_bits(), s.to_bits(), "sum of {xb:?}");
                let f16_sum = activation::block_sum(d16, run.sum[j], SumRounding::F16);
                assert_eq!(run.f16_sum[j].to_bits(), f16_sum.to_bits(), "f16 sum of {xb:?}");
            }
            start += len;
            len = len % QUANTIZE_RUN + 1;
        }
    }
}
