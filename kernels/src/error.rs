//! The crate's single error type. Every variant names the operation that failed and the
//! values that made it fail, so a caller can log it without extra context.

use thiserror::Error;

/// Errors returned by every fallible kernel entry point. Kernels validate shapes before
/// touching memory, so a malformed model or a caller bug surfaces here instead of a panic.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KernelError {
    /// A GGML tensor type id this crate cannot compute with.
    #[error("unsupported GGML tensor type {name} (id {id})")]
    UnsupportedType {
        /// The raw GGML type id.
        id: u32,
        /// ggml's name for the type ("unknown" if the id is not a known ggml type).
        name: &'static str,
    },
    /// A row length that is not a whole number of quantization blocks.
    #[error("{op}: {cols} columns is not a multiple of the {ty} block size {block}")]
    RaggedRow {
        /// Operation that was attempted.
        op: &'static str,
        /// Quantization type name.
        ty: &'static str,
        /// Requested number of columns.
        cols: usize,
        /// Elements per block of `ty`.
        block: usize,
    },
    /// A buffer whose length does not match the shape it was given with.
    #[error("{op}: {what} has length {got}, expected {expected}")]
    LengthMismatch {
        /// Operation that was attempted.
        op: &'static str,
        /// Which argument was wrong.
        what: &'static str,
        /// Length received.
        got: usize,
        /// Length the shape implies.
        expected: usize,
    },
    /// A shape parameter that is invalid on its own (zero, not divisible, out of range).
    #[error("{op}: invalid shape: {detail}")]
    InvalidShape {
        /// Operation that was attempted.
        op: &'static str,
        /// Human-readable description containing the offending values.
        detail: String,
    },
}

/// Crate-wide result alias.
pub type Result<T, E = KernelError> = std::result::Result<T, E>;

/// Returns `LengthMismatch` unless `got == expected`.
pub(crate) fn check_len(op: &'static str, what: &'static str, got: usize, expected: usize) -> Result<()> {
    if got == expected { Ok(()) } else { Err(KernelError::LengthMismatch { op, what, got, expected }) }
}
