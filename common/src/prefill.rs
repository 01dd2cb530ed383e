//! How a request's prompt is prefilled — decided the same way by the router (which hashes
//! blocks for placement) and the engine (which computes them).

use serde::{Deserialize, Serialize};

/// Dense or sparse (MInference) attention for a prompt's prefill. Decoding is always dense.
/// Sparse-prefilled KV is not bit-identical to dense KV, so the two live in different block
/// namespaces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefillMode {
    /// Exact attention.
    Dense,
    /// Sparse attention with the worker's head patterns, whatever the prompt length.
    Sparse,
    /// Sparse when the prompt has at least the worker's `sparse_min_tokens` tokens.
    #[default]
    Auto,
}

impl PrefillMode {
    /// Whether a prompt of `prompt_len` tokens prefills sparsely on a worker whose threshold
    /// is `sparse_min_tokens`.
    pub fn is_sparse(self, prompt_len: usize, sparse_min_tokens: usize) -> bool {
        match self {
            Self::Dense => false,
            Self::Sparse => true,
            Self::Auto => prompt_len >= sparse_min_tokens,
        }
    }
}

impl std::str::FromStr for PrefillMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dense" => Ok(Self::Dense),
            "sparse" => Ok(Self::Sparse),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown prefill mode {other:?} (expected dense, sparse or auto)")),
        }
    }
}
