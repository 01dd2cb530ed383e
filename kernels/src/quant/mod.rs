//! Quantized weight matrices in GGUF block layouts and their matmuls.
//!
//! * [`types`]: [`QuantType`] and block geometry.
//! * [`legacy`], [`kquants`]: scalar reference codecs, bit-exact with ggml.
//! * [`dot_f32_avx2`]: weight row · exact f32 activations, quants unpacked to f32 in
//!   registers (the default [`Activations::F32`] mode); [`tile_f32_avx512`]: the same
//!   product as register tiles of several weight and activation rows, on AVX-512 CPUs.
//! * [`activation`]: 8-bit quantization of activations for the opt-in integer kernels
//!   ([`Activations::Int8`]); [`dot_scalar`], [`dot_avx2`]: their row·activation dot products;
//!   [`tile_int8_avx512`] and [`tile_int8_avx2`]: register tiles of them on AVX-512 VNNI and
//!   on AVX2 CPUs, over the row-interleaved weights and matching activations of [`vnni`].
//! * [`packed`]: the repacked layout the AVX2 kernels of both modes use for the 32-element
//!   block types, and the matching activation layouts.
//! * [`matrix`]: [`QMatrix`] and its storage [`WeightData`].
//! * [`matmul`]: the drivers — small-batch kernels for decode, dequantize + f32 GEMM for
//!   large batches, in either activation mode.

mod activation;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod dot_avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod dot_f32_avx2;
mod dot_scalar;
mod kquants;
mod legacy;
mod matmul;
mod matrix;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod packed;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod tile_f32_avx512;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod tile_int8_avx2;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod tile_int8_avx512;
mod types;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
mod vnni;

pub use matmul::{Activations, MatmulKernel};
pub use matrix::{QMatrix, WeightData};
pub use types::{QK, QK_K, QuantType};

use crate::error::{KernelError, Result, check_len};

/// Decodes one row of `ty` elements from `bytes` into `out` (`out.len()` elements) with
/// ggml's scalar formulas. Errors if `out.len()` is not a whole number of blocks or `bytes`
/// is not exactly one such row.
pub fn dequantize_row(ty: QuantType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let need = ty.row_bytes(out.len())?;
    check_len("dequantize_row", "bytes", bytes.len(), need)?;
    dequantize_row_unchecked(ty, bytes, out);
    Ok(())
}

/// [`dequantize_row`] after validation (lengths already consistent).
pub(crate) fn dequantize_row_unchecked(ty: QuantType, bytes: &[u8], out: &mut [f32]) {
    match ty {
        QuantType::F32 => legacy::dequant_f32(bytes, out),
        QuantType::F16 => legacy::dequant_f16(bytes, out),
        QuantType::BF16 => legacy::dequant_bf16(bytes, out),
        QuantType::Q4_0 => legacy::dequant_q4_0(bytes, out),
        QuantType::Q4_1 => legacy::dequant_q4_1(bytes, out),
        QuantType::Q8_0 => legacy::dequant_q8_0(bytes, out),
        QuantType::Q4K => kquants::dequant_q4k(bytes, out),
        QuantType::Q6K => kquants::dequant_q6k(bytes, out),
    }
}

/// Encodes `x` as one row of `ty` with ggml's reference quantizers (`quantize_row_*_ref`),
/// byte-identical to ggml. Supported: `F32`, `F16`, `BF16`, `Q4_0`, `Q4_1`, `Q8_0`; K-quant
/// encoders (ggml's iterative scale search) are not provided and return `UnsupportedType`.
pub fn quantize_row(ty: QuantType, x: &[f32], out: &mut [u8]) -> Result<()> {
    let need = ty.row_bytes(x.len())?;
    check_len("quantize_row", "out", out.len(), need)?;
    match ty {
        QuantType::F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(x) {
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        QuantType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::f16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        QuantType::BF16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&half::bf16::from_f32(*v).to_bits().to_le_bytes());
            }
        }
        QuantType::Q4_0 => legacy::quant_q4_0(x, out),
        QuantType::Q4_1 => legacy::quant_q4_1(x, out),
        QuantType::Q8_0 => legacy::quant_q8_0(x, out),
        QuantType::Q4K | QuantType::Q6K => {
            return Err(KernelError::UnsupportedType { id: ty.ggml_id(), name: ty.name() });
        }
    }
    Ok(())
}

/// [`quantize_row`] for `Q8_0`.
pub fn quantize_row_q8_0(x: &[f32], out: &mut [u8]) -> Result<()> {
    quantize_row(QuantType::Q8_0, x, out)
}

/// [`quantize_row`] for `Q4_0`.
pub fn quantize_row_q4_0(x: &[f32], out: &mut [u8]) -> Result<()> {
    quantize_row(QuantType::Q4_0, x, out)
}

/// [`quantize_row`] for `Q4_1`.
pub fn quantize_row_q4_1(x: &[f32], out: &mut [u8]) -> Result<()> {
    quantize_row(QuantType::Q4_1, x, out)
}
