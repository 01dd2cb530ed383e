//! `QMatrix::matmul`: `out[n × rows] = x[n × cols] · Wᵀ`.
//!
//! **Activations** ([`Activations`]). By default (`F32`) quantized weights multiply the exact
//! f32 activations. `Int8` quantizes the activations to 8 bits per block first, as
//! llama.cpp does (ggml's `q8_0` / `q8_1` / `q8_K`), and runs integer dot products: the
//! results match ggml-family engines on the same file, but on models with large activation
//! outliers (SmolLM2's residual stream reaches several hundred) the rounding moves
//! log-probabilities by tenths of a nat and can flip greedy choices, so it is opt-in.
//!
//! Two algorithms, picked by batch size `n` ([`MatmulKernel::Auto`]), in either mode:
//! * **Small batch** (`n < QMatrix::gemm_min_n()`, decode and short verification batches):
//!   each task takes a chunk of weight rows. `F32` unpacks the weight quants to f32 in
//!   registers and FMAs them with the activations: on AVX-512 CPUs as register tiles of 2–4
//!   weight rows × up to 6 activation rows (`tile_f32_avx512`), on AVX2 ones a weight row at a
//!   time against up to 4 activation rows. `Int8` quantizes the activations once and uses
//!   integer multiply-adds over a row-interleaved copy of the 32-element block types' weights
//!   (`vnni`): on AVX-512 VNNI CPUs as tiles of 16 weight rows (one per lane) × up to 8
//!   activation rows (`tile_int8_avx512`), on AVX2 ones as tiles of 8 weight rows × up to 4
//!   (`tile_int8_avx2`), bitwise the same products; both outrun every other path at every
//!   batch size. K-quants, or CPUs without AVX2, take a weight row at a time.
//! * **Dequantize + GEMM** (`n ≥ gemm_min_n()`, prefill): each task decodes a tile of weight
//!   rows to f32 into a thread-local scratch buffer and runs the `gemm` crate's f32 kernel on
//!   it; decoding cost is amortized over `n`. Float weight types always use this path (f32
//!   weights without a copy), whatever the activation mode.
//!
//! **Batch invariance.** In each mode both algorithms compute the same product — the exact one
//! for `F32`; for `Int8` the GEMM path multiplies the same 8-bit approximation of the
//! activations (and the same f16-rounded `Q4_1` minimum term) that the integer kernels use —
//! so they agree to f32 rounding (~1e-6) and a sequence's logits do not depend on how many
//! rows shared its step: chunked prefill equals one-shot prefill, a cached prefix equals a
//! recomputed one, and a sampled sequence with a seed is reproducible under any load. Within
//! the small-batch kernels the agreement is exact: each row is computed by the same
//! operations whatever else is in the batch, so a row's product is bitwise the same alone,
//! in a speculative verification batch, or among other sequences' decode rows.
//!
//! Parallelism: tasks run on the current rayon pool (the caller installs one with the thread
//! count it wants); `gemm` itself runs single-threaded inside a task.

use std::cell::RefCell;

use gemm::Parallelism;
use rayon::prelude::*;

use super::activation::{Q8Act, Q8KAct, SumRounding, quantize_q8, quantize_q8k};
use super::dot_scalar;
use super::matrix::QMatrix;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
use super::packed::{F32Acts, PackedActs};
use super::types::{QK, QK_K, QuantType};
use crate::error::{KernelError, Result, check_len};

/// How quantized weights meet the activations; see the module docs of `matmul`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activations {
    /// Exact f32 activations (weights dequantized in registers). The default.
    #[default]
    F32,
    /// Activations rounded to 8 bits per block as llama.cpp does, for integer dot products;
    /// matches ggml-family engines at the cost of up to `0.5/127` relative error per block.
    Int8,
}

impl QMatrix {
    /// Batch size from which [`MatmulKernel::Auto`] switches this matrix from the small-batch
    /// kernels to dequantize + f32 GEMM in mode `acts`, measured with
    /// `examples/matmul_bench.rs` on the SmolLM2 shapes. The AVX-512 register tiles dequantize
    /// each weight once per six activation rows and keep up with GEMM to about 96 rows; the
    /// AVX2 f32 kernel does more vector work per weight than the integer one (one int→float
    /// conversion and one FMA per element and row), so GEMM wins earlier there; the `Int8`
    /// GEMM path also pays for rounding the activations. The integer register tiles (AVX-512
    /// VNNI, or AVX2 for the 32-element block types) outrun the GEMM path at every batch size
    /// — with AVX2, 3–4× its throughput from 1 to 256 rows — so a matrix that has them never
    /// switches in `Int8`. Below the threshold a row's product is bitwise independent of the
    /// batch (see the module docs). Float weights always take the GEMM path. Asked about
    /// `Int8`, a matrix builds its interleaved copy (as its first `Int8` product would).
    pub fn gemm_min_n(&self, acts: Activations) -> usize {
        if matches!(self.ty(), QuantType::F32 | QuantType::F16 | QuantType::BF16) {
            return 0;
        }
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        if acts == Activations::Int8 && self.vnni().is_some() {
            return usize::MAX;
        }
        match acts {
            Activations::F32 if crate::simd::has_avx512() => 96,
            Activations::F32 => 24,
            Activations::Int8 => 32,
        }
    }
}

/// Algorithm selection for [`QMatrix::matmul_with`]; `Auto` is what production uses, the
/// others exist so tests and benchmarks can pin and compare paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Small-batch kernels for `n < QMatrix::gemm_min_n()`, dequantize + GEMM otherwise.
    Auto,
    /// The small-batch kernel in portable scalar code.
    Scalar,
    /// The AVX2 small-batch kernels, one weight row at a time (the scalar one where AVX2 is
    /// missing).
    Avx2,
    /// The fastest small-batch kernel this CPU runs: AVX-512 register tiles for f32
    /// activations where available, else [`MatmulKernel::Avx2`].
    Simd,
    /// Weight tiles decoded to f32, multiplied with the `gemm` crate.
    DequantGemm,
}

/// Minimum multiply-adds per rayon task, so task overhead (~µs) stays small against work.
const MIN_TASK_MACS: usize = 48 * 1024;

/// f32 weights per GEMM tile (~256 KiB, so a decoded tile stays in L2 next to gemm's packing).
const GEMM_TILE_ELEMS: usize = 64 * 1024;

impl QMatrix {
    /// `out = x · Wᵀ` where `x` is `n × cols` and `out` is `n × rows`, both row-major, with
    /// exact f32 activations ([`Activations::F32`]): relative error ~1e-6 of `‖x‖·‖w‖`
    /// (f32 accumulation only) on every path.
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        self.matmul_with(Activations::F32, MatmulKernel::Auto, x, n, out)
    }

    /// [`QMatrix::matmul`] in the given activation mode. [`Activations::Int8`] adds at most
    /// `0.5/127` relative error per block of `x` (≤ ~4e-3 of `‖x‖·‖w‖`) for quantized
    /// weights; float weights ignore the mode.
    pub fn matmul_with_activations(&self, acts: Activations, x: &[f32], n: usize, out: &mut [f32]) -> Result<()> {
        self.matmul_with(acts, MatmulKernel::Auto, x, n, out)
    }

    /// [`QMatrix::matmul_with_activations`] with an explicit algorithm. Float weight types
    /// always use the GEMM path.
    pub fn matmul_with(
        &self,
        acts: Activations,
        kernel: MatmulKernel,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<()> {
        let overflow = || KernelError::InvalidShape {
            op: "QMatrix::matmul",
            detail: format!("n={n} overflows with {}x{}", self.rows(), self.cols()),
        };
        check_len("QMatrix::matmul", "x", x.len(), n.checked_mul(self.cols()).ok_or_else(overflow)?)?;
        check_len("QMatrix::matmul", "out", out.len(), n.checked_mul(self.rows()).ok_or_else(overflow)?)?;
        if n == 0 {
            return Ok(());
        }
        let simd = match kernel {
            MatmulKernel::Scalar => false,
            _ => crate::simd::has_avx2_fma(),
        };
        let tiles = simd && kernel != MatmulKernel::Avx2 && crate::simd::has_avx512();
        let small = match kernel {
            MatmulKernel::Auto => n < self.gemm_min_n(acts),
            MatmulKernel::Scalar | MatmulKernel::Avx2 | MatmulKernel::Simd => true,
            MatmulKernel::DequantGemm => false,
        };
        match (self.ty(), acts) {
            (QuantType::F32 | QuantType::F16 | QuantType::BF16, _) => matmul_gemm(self, x, n, out, Activations::F32),
            _ if !small => matmul_gemm(self, x, n, out, acts),
            (_, Activations::F32) => matmul_f32(self, x, n, out, simd, tiles),
            (_, Activations::Int8) => matmul_int(self, x, n, out, simd, simd && kernel != MatmulKernel::Avx2),
        }
        Ok(())
    }
}

/// Output pointer shared by tasks that write disjoint elements of a strided output.
#[derive(Clone, Copy)]
pub(super) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: `SharedOut` is only a pointer; every user writes a set of indices disjoint from all
// other tasks (distinct weight rows), and the borrow of `out` outlives the parallel section.
unsafe impl Send for SharedOut {}
// SAFETY: as above — concurrent tasks never touch the same element.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    pub(super) fn new(out: &mut [f32]) -> Self {
        Self { ptr: out.as_mut_ptr(), len: out.len() }
    }

    /// # Safety
    /// No other thread may access `idx` concurrently.
    #[inline]
    pub(super) unsafe fn write(self, idx: usize, v: f32) {
        assert!(idx < self.len, "SharedOut index {idx} out of {}", self.len);
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe { *self.ptr.add(idx) = v }
    }

    /// The start of `idx..idx + len`, checked to lie inside the output, for a kernel that
    /// stores straight from registers; its writes carry [`Self::write`]'s contract.
    #[inline]
    pub(super) fn run(self, idx: usize, len: usize) -> *mut f32 {
        assert!(idx + len <= self.len, "SharedOut run {idx}+{len} out of {}", self.len);
        // SAFETY: in bounds (checked above).
        unsafe { self.ptr.add(idx) }
    }
}

/// Rows per task: enough tasks for load balance (≈4 per thread), each with ≥ MIN_TASK_MACS.
pub(super) fn rows_per_task(rows: usize, macs_per_row: usize, granule: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let balance = rows.div_ceil(threads * 4);
    let work = MIN_TASK_MACS.div_ceil(macs_per_row.max(1));
    balance.max(work).max(1).div_ceil(granule) * granule
}

/// Small-batch path with exact f32 activations. The 32-element block types use their
/// repacked rows: AVX-512 register tiles when `tiles`, else the AVX2 kernels; everything else
/// (K-quants, or no AVX2) decodes each weight row once into a per-task buffer and dots it
/// with every activation row.
fn matmul_f32(m: &QMatrix, x: &[f32], n: usize, out: &mut [f32], simd: bool, tiles: bool) {
    let cols = m.cols();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if tiles && let Some(p) = m.packed() {
        avx512::matmul_tiles(p, m.rows(), &F32Acts::new(x, n, cols, false), n, out);
        return;
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd && let Some(p) = m.packed() {
        let acts = F32Acts::new(x, n, cols, p.ty != QuantType::Q8_0);
        if n == 1 {
            avx2::single_row_f32(p, m.rows(), &acts, out);
            return;
        }
        drive(m, n, out, 0, |_, r, res| {
            for (i, group) in res.chunks_mut(4).enumerate() {
                avx2::packed_f32(p, r, &acts, 4 * i, group);
            }
        });
        return;
    }
    drive(m, n, out, cols, |w, r, res| {
        super::dequantize_row_unchecked(m.ty(), m.row(r), w);
        for (o, xr) in res.iter_mut().zip(x.chunks_exact(cols)) {
            *o = dot_f32(w, xr, simd);
        }
    });
}

/// f32 dot product, AVX2 when `simd` (which the caller only sets after detection).
fn dot_f32(a: &[f32], b: &[f32], simd: bool) -> f32 {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd {
        // SAFETY: `simd` is only true when `has_avx2_fma()` succeeded.
        return unsafe { crate::simd::avx2::dot(a, b) };
    }
    let _ = simd;
    crate::simd::scalar::dot(a, b)
}

/// Small-batch path with 8-bit activations (integer dot products): with `tiles`, the
/// register tiles over the row-interleaved weights (AVX-512 VNNI where the CPU has it, else
/// AVX2), else the AVX2 kernels a weight row at a time.
fn matmul_int(m: &QMatrix, x: &[f32], n: usize, out: &mut [f32], simd: bool, tiles: bool) {
    let cols = m.cols();
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if tiles && let Some(w) = m.vnni() {
        let acts = super::vnni::VnniActs::quantize(x, n, cols, m.ty());
        if crate::simd::has_avx512_vnni() {
            super::tile_int8_avx512::matmul_tiles(w, &acts, n, out);
        } else {
            super::tile_int8_avx2::matmul_tiles(w, &acts, n, out);
        }
        return;
    }
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if simd && let Some(p) = m.packed() {
        let acts = PackedActs::quantize(x, n, cols, SumRounding::for_weights(m.ty()));
        drive(m, n, out, 0, |_, r, res| {
            for (i, group) in res.chunks_mut(4).enumerate() {
                avx2::packed(p, r, &acts, 4 * i, group);
            }
        });
        return;
    }
    match m.ty() {
        QuantType::Q4_0 | QuantType::Q4_1 | QuantType::Q8_0 => {
            let nb = cols / QK;
            let mut acts = vec![Q8Act::ZERO; n * nb];
            let rounding = SumRounding::for_weights(m.ty());
            quantize_acts(x, cols, &mut acts, nb, |x, a| quantize_q8(x, a, rounding));
            let dot = match m.ty() {
                QuantType::Q4_0 => dot_scalar::dot_q4_0,
                QuantType::Q4_1 => dot_scalar::dot_q4_1,
                _ => dot_scalar::dot_q8_0,
            };
            drive(m, n, out, 0, |_, r, res| {
                for (o, a) in res.iter_mut().zip(acts.chunks_exact(nb)) {
                    *o = dot(m.row(r), a);
                }
            });
        }
        QuantType::Q4K | QuantType::Q6K => {
            let nb = cols / QK_K;
            let mut acts = vec![Q8KAct::ZERO; n * nb];
            quantize_acts(x, cols, &mut acts, nb, quantize_q8k);
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            if simd {
                let q4k = m.ty() == QuantType::Q4K;
                drive(m, n, out, 0, |_, r, res| {
                    for (i, group) in res.chunks_mut(4).enumerate() {
                        avx2::kquant(q4k, m.row(r), &acts, nb, 4 * i, group);
                    }
                });
                return;
            }
            let dot = if m.ty() == QuantType::Q4K { dot_scalar::dot_q4k } else { dot_scalar::dot_q6k };
            drive(m, n, out, 0, |_, r, res| {
                for (o, a) in res.iter_mut().zip(acts.chunks_exact(nb)) {
                    *o = dot(m.row(r), a);
                }
            });
        }
        QuantType::F32 | QuantType::F16 | QuantType::BF16 => matmul_gemm(m, x, n, out, Activations::Int8),
    }
    let _ = (simd, tiles);
}

fn quantize_acts<A: Send>(x: &[f32], cols: usize, acts: &mut [A], nb: usize, f: impl Fn(&[f32], &mut [A]) + Sync) {
    if x.len() >= 4 * cols {
        acts.par_chunks_mut(nb).zip(x.par_chunks(cols)).for_each(|(a, x)| f(x, a));
    } else {
        acts.chunks_mut(nb).zip(x.chunks(cols)).for_each(|(a, x)| f(x, a));
    }
}

/// Runs `dot(scratch, r, res)` — weight row `r` against all `n` activation rows, results in
/// `res` — for every weight row, tasks owning chunks of rows. `scratch` is a per-task buffer
/// of `scratch_len` floats (for kernels that decode a row first).
fn drive(
    m: &QMatrix,
    n: usize,
    out: &mut [f32],
    scratch_len: usize,
    dot: impl Fn(&mut [f32], usize, &mut [f32]) + Sync,
) {
    let rows = m.rows();
    let chunk = rows_per_task(rows, m.cols() * n, 4);
    let dst = SharedOut::new(out);
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|t| {
        let mut buf = vec![0f32; scratch_len + n];
        let (scratch, res) = buf.split_at_mut(scratch_len);
        for r in t * chunk..rows.min((t + 1) * chunk) {
            dot(scratch, r, res);
            for (i, &v) in res.iter().enumerate() {
                // SAFETY: element (i, r) belongs to weight row `r`, owned by this task.
                unsafe { dst.write(i * rows + r, v) };
            }
        }
    });
}

/// Safe entry points to the AVX2 kernels. Only reached when `has_avx2_fma()` succeeded
/// (the `simd` flag, and `packed` only exists on such CPUs); activation buffers are built by
/// the caller for exactly this matrix's block count, and `res` holds 1..=4 results.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx2 {
    use rayon::prelude::*;

    use super::super::activation::Q8KAct;
    use super::super::dot_avx2::{self, ActRow};
    use super::super::dot_f32_avx2::{self, F32Row};
    use super::super::packed::{F32Acts, Packed, PackedActs};
    use super::super::types::QuantType;
    use super::{SharedOut, rows_per_task};

    /// Dispatches a group of 1..=4 activation rows to the const-generic kernel `$f`.
    macro_rules! by_k {
        ($res:expr, $rows:expr, |$a:ident| $call:expr) => {{
            let r = $rows;
            match $res.len() {
                1 => {
                    let $a = [r(0)];
                    $res.copy_from_slice(&$call)
                }
                2 => {
                    let $a = [r(0), r(1)];
                    $res.copy_from_slice(&$call)
                }
                3 => {
                    let $a = [r(0), r(1), r(2)];
                    $res.copy_from_slice(&$call)
                }
                _ => {
                    let $a = [r(0), r(1), r(2), r(3)];
                    $res.copy_from_slice(&$call)
                }
            }
        }};
    }

    pub(super) fn packed_f32(p: &Packed, r: usize, acts: &F32Acts, g0: usize, res: &mut [f32]) {
        let w = p.row(r);
        let rows = |j: usize| -> F32Row<'_> { acts.row(g0 + j) };
        // SAFETY: see module doc — CPU support checked, `w` is a packed row of `p`, and the
        // activation rows were laid out for the same column count, with block sums for the
        // 4-bit types.
        unsafe {
            if p.ty == QuantType::Q8_0 {
                by_k!(res, rows, |a| dot_f32_avx2::dot_packed_q8([w], p.nb, p.nb8, a)[0])
            } else {
                let has_m = p.ty == QuantType::Q4_1;
                by_k!(res, rows, |a| dot_f32_avx2::dot_packed_q4([w], p.nb, p.nb8, has_m, a)[0])
            }
        }
    }

    /// Weight rows per kernel call of [`single_row_f32`].
    const SINGLE_ROW_GROUP: usize = 4;

    /// `out = x · Wᵀ` for the one activation row of `acts` (a decode step of one sequence):
    /// tasks own chunks of weight rows and take them [`SINGLE_ROW_GROUP`] per kernel call,
    /// which shares a call's overhead and its horizontal sums' latency among the rows and
    /// prefetches the rows a few calls ahead (`dot_f32_avx2`). Each output is computed exactly
    /// as alone, so a sequence's product is the same bits here and in a batch.
    pub(super) fn single_row_f32(p: &Packed, rows: usize, acts: &F32Acts, out: &mut [f32]) {
        let chunk = rows_per_task(rows, p.nb * 32, SINGLE_ROW_GROUP);
        let dst = SharedOut::new(out);
        (0..rows.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let (mut r, end) = (t * chunk, rows.min((t + 1) * chunk));
            let mut res = [0f32; SINGLE_ROW_GROUP];
            while r < end {
                let span = if end - r >= SINGLE_ROW_GROUP { SINGLE_ROW_GROUP } else { 1 };
                if span == SINGLE_ROW_GROUP {
                    packed_f32_rows::<SINGLE_ROW_GROUP>(p, r, acts, &mut res);
                } else {
                    packed_f32_rows::<1>(p, r, acts, &mut res[..1]);
                }
                for (j, &v) in res[..span].iter().enumerate() {
                    // SAFETY: weight row `r + j` belongs to this task.
                    unsafe { dst.write(r + j, v) };
                }
                r += span;
            }
        });
    }

    /// Weight rows `r..r + R` against the single activation row of `acts`, results in `res`.
    fn packed_f32_rows<const R: usize>(p: &Packed, r: usize, acts: &F32Acts, res: &mut [f32]) {
        let w: [&[u8]; R] = std::array::from_fn(|j| p.row(r + j));
        let a = [acts.row(0)];
        // SAFETY: as in `packed_f32`.
        let out = unsafe {
            if p.ty == QuantType::Q8_0 {
                dot_f32_avx2::dot_packed_q8::<R, 1>(w, p.nb, p.nb8, a)
            } else {
                dot_f32_avx2::dot_packed_q4::<R, 1>(w, p.nb, p.nb8, p.ty == QuantType::Q4_1, a)
            }
        };
        for (o, v) in res.iter_mut().zip(out) {
            *o = v[0];
        }
    }

    pub(super) fn packed(p: &Packed, r: usize, acts: &PackedActs, g0: usize, res: &mut [f32]) {
        let w = p.row(r);
        let rows = |j: usize| -> ActRow<'_> { acts.row(g0 + j) };
        // SAFETY: see module doc — CPU support checked, `w` is a packed row of `p`, and the
        // activation rows were quantized with the same column count.
        unsafe {
            if p.ty == QuantType::Q8_0 {
                by_k!(res, rows, |a| dot_avx2::dot_packed_q8(w, p.nb, p.nb8, a))
            } else {
                let has_m = p.ty == QuantType::Q4_1;
                by_k!(res, rows, |a| dot_avx2::dot_packed_q4(w, p.nb, p.nb8, has_m, a))
            }
        }
    }

    pub(super) fn kquant(q4k: bool, w: &[u8], acts: &[Q8KAct], nb: usize, g0: usize, res: &mut [f32]) {
        let rows = |j: usize| &acts[(g0 + j) * nb..(g0 + j + 1) * nb];
        // SAFETY: see module doc — CPU support checked, each activation row has `nb`
        // super-blocks, the same as `w`.
        unsafe {
            if q4k {
                by_k!(res, rows, |a| dot_avx2::dot_q4k(w, a))
            } else {
                by_k!(res, rows, |a| dot_avx2::dot_q6k(w, a))
            }
        }
    }
}

/// The AVX-512 small-batch path with exact f32 activations; see `tile_f32_avx512`. Only
/// reached when `has_avx512()` succeeded.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod avx512 {
    use rayon::prelude::*;

    use super::super::packed::{F32Acts, Packed};
    use super::super::tile_f32_avx512::{tile_q4, tile_q8};
    use super::super::types::QuantType;
    use super::{SharedOut, rows_per_task};

    /// Weight rows per block of the row loop; every activation group passes over one block
    /// before the next, so the block is read from memory once and then stays in L1.
    const ROW_BLOCK: usize = 8;
    /// Most activation rows per register tile.
    const ACT_GROUP: usize = 6;
    /// A tile's rows are read interleaved, which the hardware prefetcher does not follow, so
    /// each tile prefetches the rows this many tiles ahead.
    const PREFETCH_TILES: usize = 8;

    /// Weight rows per tile for `k` activation rows, measured with `examples/matmul_bench.rs`
    /// on the SmolLM2 shapes: two rows keep the `2k` accumulators and the `2k` activation
    /// vectors of a block pair within the 32 registers up to `k = 6`; three activation rows
    /// leave room for four.
    fn tile_rows(k: usize) -> usize {
        if k == 3 { 4 } else { 2 }
    }

    /// `out = x · Wᵀ` for the `n` rows of `acts`: tasks own chunks of weight rows, and every
    /// block of rows meets every group of activation rows.
    pub(super) fn matmul_tiles(p: &Packed, rows: usize, acts: &F32Acts, n: usize, out: &mut [f32]) {
        let chunk = rows_per_task(rows, p.nb * 32 * n, ROW_BLOCK);
        let dst = SharedOut::new(out);
        (0..rows.div_ceil(chunk)).into_par_iter().for_each(|t| {
            let (r0, r1) = (t * chunk, rows.min((t + 1) * chunk));
            for block in (r0..r1).step_by(ROW_BLOCK) {
                let block_end = (block + ROW_BLOCK).min(r1);
                for i0 in (0..n).step_by(ACT_GROUP) {
                    let k = (n - i0).min(ACT_GROUP);
                    let mut r = block;
                    while r < block_end {
                        let span = if block_end - r >= tile_rows(k) { tile_rows(k) } else { 1 };
                        tile(p, r, span, acts, i0, k, dst, rows);
                        r += span;
                    }
                }
            }
        });
    }

    /// Computes the tile of weight rows `r..r + span` × activation rows `i0..i0 + k` and
    /// writes it to `dst` (`n × rows`, row-major).
    #[allow(clippy::too_many_arguments)]
    fn tile(p: &Packed, r: usize, span: usize, acts: &F32Acts, i0: usize, k: usize, dst: SharedOut, rows: usize) {
        let (q8, has_m) = (p.ty == QuantType::Q8_0, p.ty == QuantType::Q4_1);
        let ahead = PREFETCH_TILES * span * p.row_stride;
        macro_rules! run {
            ($r:literal, $k:literal) => {{
                let w: [&[u8]; $r] = std::array::from_fn(|j| p.row(r + j));
                let x: [&[f32]; $k] = std::array::from_fn(|j| acts.row(i0 + j).1);
                // SAFETY: AVX-512 support was checked by the caller; `w` are packed rows of
                // `p` and `x` rows laid out for the same column count (even-padded).
                let res = unsafe {
                    if q8 {
                        tile_q8::<$r, $k>(w, p.nb, p.nb8, x, ahead)
                    } else {
                        tile_q4::<$r, $k>(w, p.nb, p.nb8, has_m, x, ahead)
                    }
                };
                for (i, out_row) in res.iter().enumerate() {
                    for (j, &v) in out_row.iter().enumerate() {
                        // SAFETY: weight row r + j belongs to this task.
                        unsafe { dst.write((i0 + i) * rows + r + j, v) };
                    }
                }
            }};
        }
        match (span, k) {
            (2, 1) => run!(2, 1),
            (2, 2) => run!(2, 2),
            (4, 3) => run!(4, 3),
            (2, 4) => run!(2, 4),
            (2, 5) => run!(2, 5),
            (2, 6) => run!(2, 6),
            (_, 1) => run!(1, 1),
            (_, 2) => run!(1, 2),
            (_, 3) => run!(1, 3),
            (_, 4) => run!(1, 4),
            (_, 5) => run!(1, 5),
            _ => run!(1, 6),
        }
    }
}

thread_local! {
    /// Per-thread f32 tile buffer of the GEMM path, reused across calls so large tiles do not
    /// hit the allocator (and fresh page faults) on every matmul.
    static TILE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The f32 weights themselves when they can be used in place (f32, aligned, little-endian).
fn f32_view(m: &QMatrix) -> Option<&[f32]> {
    if m.ty() != QuantType::F32 || cfg!(target_endian = "big") {
        return None;
    }
    // SAFETY: every bit pattern is a valid f32; `align_to` only yields the aligned middle.
    let (pre, mid, post) = unsafe { m.bytes().align_to::<f32>() };
    (pre.is_empty() && post.is_empty()).then_some(mid)
}

fn matmul_gemm(m: &QMatrix, x: &[f32], n: usize, out: &mut [f32], acts: Activations) {
    let cols = m.cols();
    // In `Int8` mode quantized weights multiply the integer path's 8-bit activations (module
    // docs), and a `Q4_1` minimum is applied separately against the f16-rounded block sums the
    // integer path uses. `F32` mode (and float weights) multiplies `x` itself.
    let int8 = acts == Activations::Int8 && !matches!(m.ty(), QuantType::F32 | QuantType::F16 | QuantType::BF16);
    let q4_1 = int8 && m.ty() == QuantType::Q4_1;
    let rounded;
    let mut sums = Vec::new();
    let x = if int8 {
        let k_quants = matches!(m.ty(), QuantType::Q4K | QuantType::Q6K);
        let nb = cols / QK;
        let mut buf = vec![0f32; x.len()];
        let mut block_sums = vec![0f32; if q4_1 { n * nb } else { 0 }];
        if q4_1 {
            buf.par_chunks_mut(cols)
                .zip(x.par_chunks(cols))
                .zip(block_sums.par_chunks_mut(nb))
                .for_each(|((o, xr), s)| super::activation::dequantize_q8_into(xr, false, o, Some(s)));
        } else {
            buf.par_chunks_mut(cols)
                .zip(x.par_chunks(cols))
                .for_each(|(o, xr)| super::activation::dequantize_q8_into(xr, k_quants, o, None));
        }
        rounded = buf;
        sums = block_sums;
        &rounded[..]
    } else {
        x
    };
    let rows = m.rows();
    let max_tile = (GEMM_TILE_ELEMS / cols).max(8);
    let tile = rows_per_task(rows, cols * n, 8).min(max_tile);
    let dst = SharedOut::new(out);
    let direct = f32_view(m);
    (0..rows.div_ceil(tile)).into_par_iter().for_each(|t| {
        let (r0, r1) = (t * tile, rows.min((t + 1) * tile));
        if let Some(w) = direct {
            gemm_tile(&w[r0 * cols..r1 * cols], x, n, cols, dst, r0, rows);
            return;
        }
        let run = |buf: &mut Vec<f32>| {
            buf.resize((r1 - r0) * cols, 0.0);
            for (r, o) in (r0..r1).zip(buf.chunks_exact_mut(cols)) {
                decode_row(m, r, !q4_1, o);
            }
            gemm_tile(buf, x, n, cols, dst, r0, rows);
            if q4_1 {
                add_q4_1_minimums(m, &sums, n, dst, r0, r1);
            }
        };
        TILE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => run(&mut buf),
            Err(_) => run(&mut Vec::new()),
        });
    });
}

/// Weight row `r` as f32 for the GEMM path, from the repacked copy where there is one (so the
/// GGUF bytes are not read on the hot path). `with_minimum == false` leaves out a `Q4_1` row's
/// minimum, which the int8 path adds separately.
fn decode_row(m: &QMatrix, r: usize, with_minimum: bool, out: &mut [f32]) {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    if let Some(packed) = m.packed() {
        packed.dequantize_row(r, with_minimum, out);
        return;
    }
    if with_minimum || m.ty() != QuantType::Q4_1 {
        super::dequantize_row_unchecked(m.ty(), m.row(r), out);
    } else {
        super::legacy::dequant_q4_1_scaled(m.row(r), out);
    }
}

/// `out[i, r] += Σ_b m[r, b] · s[i, b]` for weight rows `r0..r1`: the `Q4_1` minimum term of
/// the GEMM path, with the integer path's rounded block sums `s`.
fn add_q4_1_minimums(m: &QMatrix, sums: &[f32], n: usize, dst: SharedOut, r0: usize, r1: usize) {
    let (rows, nb) = (m.rows(), m.cols() / QK);
    for r in r0..r1 {
        let mins: Vec<f32> = m.row(r).chunks_exact(20).map(|b| super::legacy::f16_at(b, 2)).collect();
        for i in 0..n {
            let term: f32 = mins.iter().zip(&sums[i * nb..(i + 1) * nb]).map(|(a, b)| a * b).sum();
            let idx = i * rows + r;
            assert!(idx < dst.len);
            // SAFETY: `idx` is in bounds (asserted) and column `r` belongs to this task's tile.
            unsafe { *dst.ptr.add(idx) += term };
        }
    }
}

/// `out[:, r0..r0 + tr] = x · wᵀ` for a tile `w` of `tr` weight rows.
fn gemm_tile(w: &[f32], x: &[f32], n: usize, cols: usize, dst: SharedOut, r0: usize, rows: usize) {
    let tr = w.len() / cols;
    assert!(x.len() >= n * cols && r0 + tr <= rows && (n - 1) * rows + r0 + tr <= dst.len);
    // SAFETY: bounds asserted above: lhs `x` is n×cols (row stride cols), rhs is `w` read
    // transposed (column stride cols), dst is the n×tr window at column r0 of the n×rows
    // output; this task is the only writer of columns r0..r0+tr.
    unsafe {
        gemm::gemm(
            n,
            tr,
            cols,
            dst.ptr.add(r0),
            1,
            rows as isize,
            false,
            x.as_ptr(),
            1,
            cols as isize,
            w.as_ptr(),
            cols as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}
