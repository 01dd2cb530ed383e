//! The error type of the GPU path. Missing CUDA libraries are errors like any other: nothing in
//! this module panics because a machine has no GPU or no CUDA installation.

use thiserror::Error;

use super::Arch;

/// Errors of NVRTC compilation and, with feature `cuda`, of the device runtime.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CudaError {
    /// No NVRTC library under any of the names cudarc searches.
    #[error(
        "the NVRTC library (libnvrtc.so.12) is not loadable: install CUDA 12 or the PyPI wheel \
         nvidia-cuda-nvrtc-cu12 and put its lib directory on LD_LIBRARY_PATH, or call cuda::load_nvrtc"
    )]
    NvrtcMissing,
    /// A CUDA library given by path could not be loaded.
    #[error("loading {path}: {detail}")]
    LoadLibrary {
        /// The path given.
        path: String,
        /// The loader's message.
        detail: String,
    },
    /// NVRTC rejected a kernel; `log` is its compiler output.
    #[error("NVRTC could not compile {file} for {arch}:\n{log}")]
    Compile {
        /// The kernel's `.cu` file.
        file: &'static str,
        /// The virtual architecture it was compiled for.
        arch: Arch,
        /// NVRTC's program log.
        log: String,
    },
    /// NVRTC failed outside compilation proper (creating the program, fetching the PTX).
    #[error("NVRTC failed on {file}: {detail}")]
    Nvrtc {
        /// The kernel's `.cu` file.
        file: &'static str,
        /// The failing call and its status.
        detail: String,
    },
    /// The compiled PTX lacks an entry point the catalogue lists.
    #[error("the PTX of {file} has no entry point {entry}")]
    MissingEntryPoint {
        /// The kernel's `.cu` file.
        file: &'static str,
        /// The missing `extern "C"` function.
        entry: &'static str,
    },
    /// The CUDA driver library (libcuda.so.1) is not loadable: no NVIDIA driver on this machine.
    #[error("the CUDA driver library (libcuda.so.1) is not loadable: no NVIDIA driver on this machine")]
    DriverMissing,
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(String),
    /// A cuBLAS call failed (or libcublas could not be loaded).
    #[error("cuBLAS: {0}")]
    Blas(String),
    /// Arguments a kernel cannot run with (shapes, lengths, sizes beyond `i32`).
    #[error("{op}: {detail}")]
    InvalidArgument {
        /// The operation.
        op: &'static str,
        /// What is wrong, with the offending values.
        detail: String,
    },
    /// A kernel reported bad input data (e.g. a non-finite group for the KV codec).
    #[error("{op}: {detail}")]
    BadData {
        /// The operation.
        op: &'static str,
        /// What the kernel found.
        detail: String,
    },
}

/// Result alias of the GPU path.
pub type Result<T, E = CudaError> = std::result::Result<T, E>;
