//! Flags shared by every subcommand that runs a model.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lcserve_engine::{EngineConfig, EngineDevice, GpuWeights, KvSelection};
use lcserve_model::{Activations, KvDtype, Model};

/// File name `scripts/fetch-model` gives the reference model.
const REFERENCE_MODEL: &str = "smollm2-135m-instruct.Q4_1.gguf";

#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// GGUF file or Hugging Face directory [default: the reference model fetched by
    /// scripts/fetch-model, under $LCSERVE_MODEL_DIR or ./models].
    #[arg(long, env = "LCSERVE_MODEL")]
    pub model: Option<PathBuf>,
    /// Activations in matrix products: exact `f32`, or `int8` rounded per 32-value block as
    /// llama.cpp does (matches ggml-family engines bit for bit, less accurate on models with
    /// activation outliers).
    #[arg(long, env = "LCSERVE_ACTIVATIONS", value_enum, default_value_t = ActivationsArg::F32)]
    pub activations: ActivationsArg,
    /// Context window in tokens [default: the model's]. Longer than the model was trained for
    /// extrapolates positions: for long-context benchmarks, not for quality.
    #[arg(long, env = "LCSERVE_CONTEXT_LENGTH")]
    pub context_length: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActivationsArg {
    F32,
    Int8,
}

impl ModelArgs {
    pub fn path(&self) -> PathBuf {
        self.model.clone().unwrap_or_else(|| {
            let dir = std::env::var_os("LCSERVE_MODEL_DIR").map_or_else(|| PathBuf::from("models"), PathBuf::from);
            dir.join(REFERENCE_MODEL)
        })
    }

    /// The model's public name: its file (or directory) name without extension.
    pub fn id(&self) -> String {
        let path = self.path();
        path.file_stem().map_or_else(|| path.display().to_string(), |stem| stem.to_string_lossy().into_owned())
    }

    /// Loads the model, with a progress bar on a terminal.
    pub fn load(&self) -> anyhow::Result<Arc<Model>> {
        let path = self.path();
        if self.model.is_none() && !path.exists() {
            anyhow::bail!("no model at {}: run scripts/fetch-model, or pass --model PATH", path.display());
        }
        let bar = ProgressBar::new(0).with_message(format!("loading {}", path.display()));
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} layers")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut model = Model::load(&path, &mut |p| {
            bar.set_length(p.layers_total as u64);
            bar.set_position(p.layers_done as u64);
        })
        .with_context(|| format!("loading model {}", path.display()))?;
        model.activations = match self.activations {
            ActivationsArg::F32 => Activations::F32,
            ActivationsArg::Int8 => Activations::Int8,
        };
        if let Some(positions) = self.context_length {
            anyhow::ensure!(positions > 0, "--context-length must be positive");
            model.set_context_length(positions);
        }
        // Repack the weights for the chosen mode now, for commands that run the model
        // without an engine too; engines call it again, which costs nothing.
        model.prepare();
        bar.finish_and_clear();
        Ok(Arc::new(model))
    }
}

#[derive(Debug, Clone, Args)]
pub struct EngineArgs {
    /// Tokens per KV block.
    #[arg(long, env = "LCSERVE_BLOCK_SIZE", default_value_t = 64)]
    pub block_size: usize,
    /// Bytes of memory for the paged KV pool.
    #[arg(long, env = "LCSERVE_KV_CACHE_BYTES", default_value_t = 1 << 30)]
    pub kv_cache_bytes: usize,
    /// Element type of the KV pool: `f16` (twice the tokens in the same bytes, about half the
    /// memory traffic of long-context decoding; each key and value rounded once) or `f32`
    /// (exact) [default: f16 on the CPU, f32 with `--device cuda`, whose pool is f32 only].
    #[arg(long, env = "LCSERVE_KV_DTYPE")]
    pub kv_dtype: Option<KvDtype>,
    /// Most prompt tokens computed per step (chunked prefill).
    #[arg(long, env = "LCSERVE_PREFILL_CHUNK", default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Most sequences decoded together.
    #[arg(long, env = "LCSERVE_MAX_RUNNING", default_value_t = 32)]
    pub max_running: usize,
    /// Most requests waiting beyond those the next step runs; past it new requests are refused
    /// as overloaded (retryable: the router tries another worker) instead of queueing.
    #[arg(long, env = "LCSERVE_MAX_WAITING", default_value_t = lcserve_engine::DEFAULT_MAX_WAITING)]
    pub max_waiting: usize,
    /// Compute threads [default: all cores].
    #[arg(long, env = "LCSERVE_THREADS")]
    pub threads: Option<usize>,
    /// Sparse prefill head patterns, as written by `lcserve calibrate` [default: vertical-slash
    /// with 1000 verticals and 2048 slashes for every head].
    #[arg(long, env = "LCSERVE_SPARSE_PATTERNS")]
    pub patterns: Option<PathBuf>,
    /// Most prompt tokens of a sparse prefill computed per step (a step holds --prefill-chunk
    /// dense tokens or this many sparse ones).
    #[arg(long, env = "LCSERVE_SPARSE_PREFILL_CHUNK", default_value_t = 2048)]
    pub sparse_prefill_chunk: usize,
    /// Prompts of at least this many tokens prefill sparsely when their prefill mode is auto.
    #[arg(long, env = "LCSERVE_SPARSE_MIN_TOKENS", default_value_t = lcserve_engine::DEFAULT_SPARSE_MIN_TOKENS)]
    pub sparse_min_tokens: usize,
    /// A small GGUF model sharing the target's vocabulary, for `--speculation draft`.
    #[arg(long, env = "LCSERVE_DRAFT_MODEL")]
    pub draft_model: Option<PathBuf>,
    /// Recent tokens the draft model reads each step (its sliding-window cache).
    #[arg(long, env = "LCSERVE_DRAFT_WINDOW", default_value_t = lcserve_engine::DEFAULT_DRAFT_WINDOW)]
    pub draft_window: usize,
    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`
    /// (every request feature runs there: sparse prefill, token selection and speculation
    /// included, but not token selection and speculation in the same request).
    #[arg(long, env = "LCSERVE_DEVICE", default_value = "cpu")]
    pub device: EngineDevice,
    /// How a GPU stores the weights: `f32` (the CPU's values) or `bf16` (half the memory).
    #[arg(long, env = "LCSERVE_GPU_WEIGHTS", value_enum, default_value_t = GpuWeightsArg::F32)]
    pub gpu_weights: GpuWeightsArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuWeightsArg {
    F32,
    Bf16,
}

impl EngineArgs {
    pub fn config(&self) -> EngineConfig {
        let defaults = EngineConfig::default();
        EngineConfig {
            block_size: self.block_size,
            kv_cache_bytes: self.kv_cache_bytes,
            kv_dtype: self.kv_dtype,
            prefill_chunk: self.prefill_chunk,
            max_running: self.max_running,
            max_waiting: self.max_waiting,
            threads: self.threads.unwrap_or(defaults.threads),
            prefix_caching: defaults.prefix_caching,
            sparse_patterns: self.patterns.clone(),
            sparse_min_tokens: self.sparse_min_tokens,
            sparse_prefill_chunk: self.sparse_prefill_chunk,
            draft_model: self.draft_model.clone(),
            draft_window: self.draft_window,
            device: self.device.with_weights(match self.gpu_weights {
                GpuWeightsArg::F32 => GpuWeights::F32,
                GpuWeightsArg::Bf16 => GpuWeights::Bf16,
            }),
        }
    }
}

/// TokenSelect decode flags (opt-in, lossy): `--kv-selection-budget` turns it on.
#[derive(Debug, Clone, Args)]
pub struct KvSelectionArgs {
    /// Decode with TokenSelect: each step of a layer attends to this many best-voted cached
    /// keys plus the sink and the local window [default: dense decoding].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub kv_selection_budget: Option<u64>,
    /// Leading keys TokenSelect always keeps (attention sinks).
    #[arg(long, requires = "kv_selection_budget", default_value_t = KvSelection::default().sink)]
    pub kv_selection_sink: usize,
    /// Trailing keys TokenSelect always keeps (the local window).
    #[arg(long, requires = "kv_selection_budget", default_value_t = KvSelection::default().window)]
    pub kv_selection_window: usize,
    /// A layer reuses its last selection while its query's cosine similarity to the query
    /// that made it stays at or above this.
    #[arg(long, requires = "kv_selection_budget", default_value_t = KvSelection::default().reuse_threshold)]
    pub kv_selection_reuse: f32,
}

impl KvSelectionArgs {
    pub fn selection(&self) -> Option<KvSelection> {
        self.kv_selection_budget.map(|budget| KvSelection {
            budget: budget as usize,
            sink: self.kv_selection_sink,
            window: self.kv_selection_window,
            reuse_threshold: self.kv_selection_reuse,
        })
    }
}
