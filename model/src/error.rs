//! The one error type of the model crate.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model. Variants name the operation and the
/// offending values so the message alone tells an operator what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("model path {0} does not exist")]
    NotFound(PathBuf),
    #[error("{path} is not a valid GGUF file: {reason}")]
    InvalidGguf { path: PathBuf, reason: String },
    #[error("{path} is not a valid Hugging Face model directory: {reason}")]
    InvalidHfDir { path: PathBuf, reason: String },
    #[error("unsupported model architecture {0:?} (supported: llama, mistral, qwen2)")]
    UnsupportedArchitecture(String),
    #[error("unsupported tensor type {dtype} for tensor {tensor}")]
    UnsupportedTensorType { tensor: String, dtype: String },
    #[error("missing metadata {key}")]
    MissingMetadata { key: String },
    #[error("invalid metadata {key}: {reason}")]
    InvalidMetadata { key: String, reason: String },
    #[error("missing tensor {0}")]
    MissingTensor(String),
    #[error("tensor {tensor} has shape {actual:?}, expected {expected:?}")]
    TensorShape { tensor: String, actual: Vec<usize>, expected: Vec<usize> },
    #[error("tensor {tensor}: {reason}")]
    TensorData { tensor: String, reason: String },
    #[error("token id {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, vocab: usize },
    #[error("position {position} is beyond the context length {context}")]
    ContextExceeded { position: usize, context: usize },
    #[error("batch entry {index}: {reason}")]
    InvalidBatch { index: usize, reason: String },
    #[error(transparent)]
    Tokenizer(#[from] lcserve_text::TokenizerError),
    #[error("invalid head patterns: {0}")]
    InvalidPatterns(String),
    #[error("kernel failed: {0}")]
    Kernel(#[from] lcserve_kernels::KernelError),
    #[cfg(feature = "cuda")]
    #[error("GPU: {0}")]
    Device(#[from] lcserve_kernels::cuda::CudaError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
