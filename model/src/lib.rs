//! Models for lcserve: formats, the GGUF tokenizer, and the forward pass.
//!
//! Data flow: a [`GgufSource`] (GGUF file) or [`HfSource`] (Hugging Face directory) yields
//! memory-mapped tensors by GGUF name → [`Weights`] turns them into typed matrices (fusing
//! q‖k‖v and gate‖up) → [`Model`] bundles them with the [`Tokenizer`], the [`ChatTemplate`] and
//! the [`lcserve_common::ModelFingerprint`] → [`Model::forward`] runs a batch of sequences,
//! writing K/V into a paged [`KvArena`] and attending through each sequence's
//! [`AttentionBackend`] — [`DenseAttention`], [`SparseAttention`] with the model's
//! [`HeadPatterns`] for sparse prefill, or a sequence's [`TokenSelectAttention`] for
//! token-selecting decode.
//!
//! The heavy math lives in `lcserve-kernels`; this crate owns shapes, names and the order of
//! operations. Text handling ([`Tokenizer`], [`ChatTemplate`], [`IncrementalDecoder`]) lives in
//! `lcserve-text`, which links no candle so the router can use it, and is re-exported here; only
//! [`tokenizer_from_gguf_metadata`], which reads candle's GGUF metadata, stays in this crate.

mod attention;
mod config;
#[cfg(feature = "cuda")]
mod cuda;
mod error;
mod export;
mod fingerprint;
mod forward;
mod gguf_tokenizer;
mod kv_arena;
mod model;
mod patterns;
mod random_model;
mod source;
mod tiny;
mod token_select;
mod weights;

pub use attention::{AttentionBackend, DenseAttention, SparseAttention};
pub use config::{Architecture, ModelConfig, RopeConfig, RopeLayout, RopeScaling};
#[cfg(feature = "cuda")]
pub use cuda::{DeviceKvPool, DeviceModel, PendingBlocks};
pub use error::{ModelError, Result};
pub use export::export_hf_dir;
pub use forward::{Logits, LogitsWanted, SequenceInput};
pub use gguf_tokenizer::tokenizer_from_gguf_metadata;
pub use kv_arena::{KvArena, KvDtype, LayerBlocks};
pub use lcserve_kernels::Activations;
pub use lcserve_text::{ChatMessage, ChatTemplate, IncrementalDecoder, SpecialTokens, Tokenizer, TokenizerError};
pub use model::{LoadProgress, Model, ModelFormat, ModelSummary};
pub use patterns::{DEFAULT_PATTERN, HeadPatterns};
pub use random_model::{RandomShape, write_random_model};
pub use source::{GgufSource, HfSource, TensorSource, WeightTensor};
pub use tiny::{TinyModelPaths, write_tiny_model, write_tiny_model_arch};
pub use token_select::{DEFAULT_REUSE_THRESHOLD, SelectionStats, TokenSelectAttention, TokenSelection};
pub use weights::{LayerWeights, Projection, Weights, dequantize_vector};
