//! The GPU path: CUDA C kernels compiled at run time by NVRTC, each the twin of a CPU kernel of
//! this crate.
//!
//! * [`catalogue`] — every kernel of `kernels/cuda/*.cu`: name, source, entry points.
//! * [`compile`] — [`compile_ptx`] through cudarc's dynamically loaded NVRTC ([`Compiler`] for
//!   include directories, [`load_nvrtc`] for a library outside the loader's paths) and the
//!   [`PtxCache`] keyed by kernel and architecture.
//!
//! With feature `cuda`, the device runtime: f32 launchers that validate their arguments and
//! return [`CudaError`] rather than panicking (built only with that feature, hence unlinked):
//!
//! * `device` — a `Device`: context, compute and copy streams, kernels loaded per device from
//!   the PTX cache.
//! * `transfer` — `Device::download_async`: copies to the host on the copy stream
//!   (`PendingDownload`), beside the compute stream's work.
//! * `ops` — `rms_norm`, `rope`, `silu_mul`, the residual `add` and bias `add_rows`.
//! * `gemm` — `Blas::matmul` through cuBLAS over a `DeviceMatrix` of f32 or bf16 weights.
//! * `attention` — `DevicePagedKv` (a pool of blocks + a block table) and `attention()`
//!   (prefill and split-key decode), `attention_tensor_cores` (bf16 prefill on tensor cores),
//!   `tree_attention`, `selected_attention`,
//!   `sparse_attention`, `merge_lse`.
//! * `select` — `select_tokens`, TokenSelect's scoring, soft vote and top-k.
//! * `kv` — the KV store's int8/int4 codecs (`kv_encode`, `kv_decode`), block
//!   `gather_blocks` / `scatter_blocks`, `write_positions` (new tokens' K/V into the pool) and
//!   `copy_position` (a draft node's K/V to its place on the accepted path).
//!
//! Feature `nvrtc` builds the first two (no CUDA needed to build or to compile kernels); feature
//! `cuda` adds the device runtime on top. cudarc loads every CUDA library at run time, so both
//! build and link on machines without CUDA, and a missing library is a [`CudaError`].

#[cfg(feature = "cuda")]
pub mod attention;
pub mod catalogue;
pub mod compile;
#[cfg(feature = "cuda")]
pub mod device;
mod error;
#[cfg(feature = "cuda")]
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod kv;
#[cfg(feature = "cuda")]
mod launch;
#[cfg(feature = "cuda")]
pub mod ops;
#[cfg(feature = "cuda")]
pub mod select;
#[cfg(feature = "cuda")]
pub mod sparse_index;
#[cfg(feature = "cuda")]
pub mod transfer;

#[cfg(feature = "cuda")]
pub use attention::{
    DeviceBlockTable, DevicePagedKv, MAX_HEAD_DIM, attention, attention_tensor_cores, merge_lse, selected_attention,
    sparse_attention, tensor_core_attention_runs, tree_attention,
};
pub use catalogue::{KERNELS, Kernel, kernel};
pub use compile::{Arch, Compiler, PtxCache, compile_ptx, load_nvrtc, nvrtc_available};
/// Device buffers, and views of their ranges, as the launchers take them.
#[cfg(feature = "cuda")]
pub use cudarc::driver::{CudaSlice, CudaViewMut};
#[cfg(feature = "cuda")]
pub use device::{Device, driver_available};
pub use error::{CudaError, Result};
#[cfg(feature = "cuda")]
pub use gemm::{Blas, DeviceMatrix, WeightType};
#[cfg(feature = "cuda")]
pub use kv::{
    EncodedSide, KvBits, KvLayout, KvSide, copy_position, gather_blocks, kv_decode, kv_encode, scatter_blocks,
    write_positions,
};
#[cfg(feature = "cuda")]
pub use ops::{DevicePositions, DeviceRope, RopeStyle, add, add_rows, rms_norm, rope, silu_mul};
#[cfg(feature = "cuda")]
pub use select::select_tokens;
#[cfg(feature = "cuda")]
pub use sparse_index::{build_indices, pooled_blocks, vertical_slash_sums};
#[cfg(feature = "cuda")]
pub use transfer::PendingDownload;
