//! Engine settings, validated once at start.

use std::path::PathBuf;

use lcserve_model::KvDtype;
use serde::{Deserialize, Serialize};

use crate::error::EngineError;

/// Default `sparse_min_tokens`: where sparse prefill starts paying for its index building on
/// CPU (see `lcserve bench engine --prefill-mode`).
pub const DEFAULT_SPARSE_MIN_TOKENS: usize = 8192;

/// Default `draft_window`: enough recent text for a small model's next few tokens.
pub const DEFAULT_DRAFT_WINDOW: usize = 128;

/// Default `max_waiting`: minutes of work for a CPU engine, never reached in normal operation.
pub const DEFAULT_MAX_WAITING: usize = 1024;

/// Where an engine runs its model and keeps its KV pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineDevice {
    /// The CPU, with the compute threads of `threads`.
    #[default]
    Cpu,
    /// GPU `ordinal` (feature `cuda`; a build without it refuses this at start). Every
    /// attention of the CPU runs there too: dense, draft trees, sparse prefill (when a request
    /// asks for `sparse`; `auto` stays dense there) and token selection (so self-drafting).
    Cuda { ordinal: usize, weights: GpuWeights },
}

impl std::str::FromStr for EngineDevice {
    type Err = String;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`, with f32 weights ([`EngineDevice::with_weights`]
    /// changes them).
    fn from_str(s: &str) -> Result<Self, String> {
        let cuda = |ordinal| Self::Cuda { ordinal, weights: GpuWeights::F32 };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse) {
                Some(Ok(ordinal)) => Ok(cuda(ordinal)),
                _ => Err(format!("{s:?} is not cpu, cuda or cuda:N")),
            },
        }
    }
}

impl EngineDevice {
    /// The same device with its weights stored as `weights` (no change on the CPU).
    pub fn with_weights(self, weights: GpuWeights) -> Self {
        match self {
            Self::Cpu => Self::Cpu,
            Self::Cuda { ordinal, .. } => Self::Cuda { ordinal, weights },
        }
    }
}

/// How a GPU engine stores its weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuWeights {
    /// The CPU path's dequantized values, f32 products.
    #[default]
    F32,
    /// Half the memory and bandwidth, tensor-core products with f32 accumulation.
    Bf16,
}

/// How an engine uses its model and memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EngineConfig {
    /// Tokens per KV block; one value per deployment (block hashes depend on it).
    pub block_size: usize,
    /// Bytes of KV memory the paged pool may use (rounded down to whole blocks).
    pub kv_cache_bytes: usize,
    /// Element type of the KV pool; `None` takes the device's default ([`Self::pool_dtype`]).
    /// f16 holds twice the tokens in `kv_cache_bytes` and halves what long-context decoding
    /// reads, rounding each key and value once; f32 keeps them exact. The GPU pool is f32.
    #[serde(default)]
    pub kv_dtype: Option<KvDtype>,
    /// Most prompt tokens computed in one step; long prompts are prefilled in chunks so decoding
    /// sequences keep getting steps in between.
    pub prefill_chunk: usize,
    /// Most sequences decoded together in one step.
    pub max_running: usize,
    /// Most requests waiting beyond those the next step can run; past it a new request is
    /// refused at once ([`EngineError::Overloaded`], retryable) instead of queueing without
    /// bound, so a router sends it elsewhere and an overloaded fleet answers promptly.
    pub max_waiting: usize,
    /// Compute threads: the size of the rayon pool the engine steps on, shared with the
    /// process's other engines of this size.
    pub threads: usize,
    /// Keep finished sequences' full blocks findable by hash until evicted.
    pub prefix_caching: bool,
    /// Sparse prefill head patterns (a JSON file, `lcserve calibrate` writes one); `None` uses
    /// `lcserve_model::DEFAULT_PATTERN` for every head.
    pub sparse_patterns: Option<PathBuf>,
    /// Prompts of at least this many tokens prefill sparsely under `PrefillMode::Auto`.
    pub sparse_min_tokens: usize,
    /// Most prompt tokens of a sparse prefill computed in one step. Sparse attention makes a
    /// token cheaper, so a step fits more of them; and each chunk re-estimates its indices from
    /// its last 64 queries, a cost that shrinks with larger chunks. A step's budget is
    /// `prefill_chunk` dense tokens or this many sparse ones.
    pub sparse_prefill_chunk: usize,
    /// A small GGUF model sharing the target's vocabulary, loaded at start, for requests that
    /// speculate with `Speculation::Draft`.
    pub draft_model: Option<PathBuf>,
    /// Recent tokens the draft model reads each step (its sliding-window cache).
    pub draft_window: usize,
    /// Where the model runs and the KV pool lives.
    pub device: EngineDevice,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            block_size: 64,
            kv_cache_bytes: 1 << 30,
            kv_dtype: None,
            prefill_chunk: 512,
            max_running: 32,
            max_waiting: DEFAULT_MAX_WAITING,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            prefix_caching: true,
            sparse_patterns: None,
            sparse_min_tokens: DEFAULT_SPARSE_MIN_TOKENS,
            sparse_prefill_chunk: 2048,
            draft_model: None,
            draft_window: DEFAULT_DRAFT_WINDOW,
            device: EngineDevice::Cpu,
        }
    }
}

impl EngineConfig {
    /// The pool's element type: `kv_dtype` if set, else f16 on the CPU — llama.cpp's default
    /// cache type too; rounding a key to f16 moves the reference model's logits by 2.4e-4 at
    /// most, far below what its 4-bit weights do — and f32 on a GPU, whose pool stores
    /// nothing else.
    pub fn pool_dtype(&self) -> KvDtype {
        self.kv_dtype.unwrap_or(match self.device {
            EngineDevice::Cpu => KvDtype::F16,
            EngineDevice::Cuda { .. } => KvDtype::F32,
        })
    }

    pub fn validate(&self) -> Result<(), EngineError> {
        let positive = [
            ("block_size", self.block_size),
            ("kv_cache_bytes", self.kv_cache_bytes),
            ("prefill_chunk", self.prefill_chunk),
            ("sparse_prefill_chunk", self.sparse_prefill_chunk),
            ("max_running", self.max_running),
            ("max_waiting", self.max_waiting),
            ("threads", self.threads),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(EngineError::InvalidConfig { field, reason: "must be positive".into() });
        }
        if self.prefill_chunk.checked_mul(self.sparse_prefill_chunk).is_none() {
            return Err(EngineError::InvalidConfig {
                field: "sparse_prefill_chunk",
                reason: format!("{} x prefill_chunk {} overflows", self.sparse_prefill_chunk, self.prefill_chunk),
            });
        }
        if let Some(dtype) = self.kv_dtype
            && dtype != KvDtype::F32
            && self.device != EngineDevice::Cpu
        {
            return Err(EngineError::InvalidConfig {
                field: "kv_dtype",
                reason: format!("{dtype} KV is a CPU pool option; the GPU pool stores f32"),
            });
        }
        if self.block_size > 4096 {
            return Err(EngineError::InvalidConfig {
                field: "block_size",
                reason: format!("{} exceeds 4096", self.block_size),
            });
        }
        Ok(())
    }
}
