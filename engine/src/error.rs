//! The engine's error type.

use crate::block_allocator::{BlockAllocatorError, PoolExhausted};
use crate::sampler::{InvalidSamplingParam, SampleError};

/// Why a request was refused or failed. Variants that stem from the request name the field.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request: {field}: {reason}")]
    InvalidRequest { field: &'static str, reason: String },
    #[error(transparent)]
    InvalidSampling(#[from] InvalidSamplingParam),
    #[error("invalid engine config: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },
    #[error(
        "the request needs {needed_blocks} KV blocks but the pool holds {capacity_blocks} \
         (raise --kv-cache-bytes or shorten the prompt)"
    )]
    TooLargeForPool { needed_blocks: usize, capacity_blocks: usize },
    #[error(transparent)]
    PoolExhausted(#[from] PoolExhausted),
    #[error("KV pool bookkeeping: {0}")]
    Allocator(#[from] BlockAllocatorError),
    #[error("sampling failed: {0}")]
    Sample(#[from] SampleError),
    /// The structured-output matcher failed mid-generation.
    #[error(transparent)]
    StructuredOutput(#[from] lcserve_text::StructuredOutputError),
    #[error("model failed: {0}")]
    Model(String),
    #[error("the engine's queue is full; retry later")]
    Overloaded,
    #[error("the engine has shut down")]
    ShutDown,
}

impl From<lcserve_model::ModelError> for EngineError {
    fn from(e: lcserve_model::ModelError) -> Self {
        Self::Model(e.to_string())
    }
}
