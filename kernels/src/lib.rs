//! CPU compute kernels of lcserve's transformer forward pass.
//!
//! Map of the crate (data flows top to bottom in one layer of a forward pass):
//!
//! * [`ops`] — elementwise and row-wise helpers: RMSNorm, RoPE (interleaved and NeoX) from a
//!   precomputed [`ops::RopeTable`], SiLU·up, softmax, residual add.
//! * [`quant`] — weights. [`QMatrix`] holds a GGUF-layout matrix (`F32`, `F16`, `BF16`,
//!   `Q4_0`, `Q4_1`, `Q8_0`, `Q4_K`, `Q6_K`), owned or memory-mapped ([`WeightData`]);
//!   `QMatrix::matmul` computes `x · Wᵀ` with exact f32 activations: weights unpacked to f32
//!   in registers for small batches (decode, memory-bound) and dequantize + f32 GEMM for
//!   large ones (prefill). [`Activations::Int8`] (via `QMatrix::matmul_with_activations`)
//!   opts into llama.cpp-style 8-bit activations and integer kernels instead.
//! * [`attention`] — causal attention of a chunk of queries over a paged KV cache
//!   ([`PagedKv`]), flash-style (online softmax, no N×N scores), with optional
//!   log-sum-exp output and [`merge_lse`] to combine partial results.
//!   [`tree_attention`] verifies a speculative draft tree (prefix + ancestor mask).
//! * [`sparse`] — sparse prefill attention (MInference): per-head patterns (A-shape,
//!   vertical-slash, block-sparse), their online index builders, and the block-sparse kernel
//!   over key ranges + columns, with the mask emulator and masked-attention oracles.
//! * [`token_select`] — sparse decode attention (TokenSelect): a per-layer soft vote of all
//!   query heads picks the keys to attend (plus sinks and a recent window), attention runs
//!   over just those keys, and a selection cache reuses the pick across similar queries.
//! * [`cuda`] (features `nvrtc`, `cuda`) — the GPU twins of these kernels in CUDA C, compiled
//!   at run time by NVRTC.
//!
//! SIMD paths (AVX2 + FMA + F16C, and AVX-512 register tiles where the CPU has it: the
//! int8 matmuls, and attention over many query rows at once) are chosen at run time with
//! [`simd::has_avx2_fma`] and its siblings; every kernel has a portable scalar path. Work is spread over the
//! *current* rayon pool, so the caller decides the thread count by installing a pool.
//! Every entry point validates shapes and returns [`KernelError`] instead of panicking.

pub mod attention;
#[cfg(feature = "nvrtc")]
pub mod cuda;
mod error;
pub mod ops;
pub mod quant;
pub mod simd;
pub mod sparse;
pub mod token_select;

pub use attention::{AttnShape, KvBlocks, PagedKv, attention, attention_naive, merge_lse, tree_attention, tree_depths};
pub use error::{KernelError, Result};
pub use quant::{Activations, MatmulKernel, QMatrix, QuantType, WeightData, dequantize_row, quantize_row};
