//! A loaded model: config, weights, tokenizer, chat template and fingerprint.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lcserve_common::{KvLayout, ModelFingerprint};
use lcserve_kernels::ops::RopeTable;
use lcserve_kernels::{Activations, QMatrix};
use lcserve_text::{ChatTemplate, Tokenizer};
use rayon::prelude::*;
use serde::Serialize;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::fingerprint::fingerprint;
use crate::gguf_tokenizer::tokenizer_from_gguf_metadata;
use crate::source::{GgufSource, TensorSource};
use crate::weights::Weights;

/// On-disk format a model was loaded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    Gguf,
    /// A Hugging Face directory: `config.json`, `*.safetensors`, `tokenizer.json`.
    HuggingFace,
}

/// Facts about a loaded model for `lcserve model inspect` and model-info RPCs.
#[derive(Clone, Debug, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub architecture: String,
    pub parameters: u64,
    /// Tensor element types in the file and how many tensors use each.
    pub tensor_types: Vec<(String, usize)>,
    pub context_length: usize,
    pub vocab_size: usize,
    pub has_chat_template: bool,
    pub fingerprint: String,
    pub config: ModelConfig,
}

/// Progress of a load, reported once per layer.
#[derive(Clone, Copy, Debug)]
pub struct LoadProgress {
    pub layers_done: usize,
    pub layers_total: usize,
}

/// A model ready to run.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Arc<Tokenizer>,
    pub chat_template: Option<ChatTemplate>,
    pub fingerprint: ModelFingerprint,
    pub summary: ModelSummary,
    /// How matrix products treat activations: exact f32 (default), or rounded to 8 bits per
    /// block as llama.cpp does (bit-compatible with ggml-family engines, less accurate on models
    /// with activation outliers). Changes the KV bytes, so it is part of the KV namespace.
    pub activations: Activations,
    /// RoPE cos/sin for every position of the context (scaling applied).
    pub(crate) rope: RopeTable,
    /// The mapped GGUF file the weights point into, whose pages [`Model::prepare`] drops
    /// from resident memory once the repacked copies exist.
    mapping: Option<Arc<memmap2::Mmap>>,
}

impl Model {
    /// Loads a GGUF file or a Hugging Face directory.
    pub fn load(path: &Path, progress: &mut dyn FnMut(LoadProgress)) -> Result<Self> {
        if !path.exists() {
            return Err(ModelError::NotFound(path.to_owned()));
        }
        if path.is_dir() {
            let source = crate::source::HfSource::open(path)?;
            let config = source.config().clone();
            let tokenizer = source.tokenizer()?;
            let chat_template = source.chat_template()?;
            Self::assemble(path, ModelFormat::HuggingFace, config, &source, tokenizer, chat_template, progress)
        } else {
            let source = GgufSource::open(path)?;
            let config = source.config()?;
            let tokenizer = tokenizer_from_gguf_metadata(source.metadata())?;
            let chat_template = match source.metadata().get("tokenizer.chat_template") {
                Some(value) => {
                    let text = value.to_string().map_err(|e| ModelError::InvalidMetadata {
                        key: "tokenizer.chat_template".into(),
                        reason: e.to_string(),
                    })?;
                    Some(ChatTemplate::new(text)?)
                }
                None => None,
            };
            let mut model =
                Self::assemble(path, ModelFormat::Gguf, config, &source, tokenizer, chat_template, progress)?;
            source.release_resident_pages();
            model.mapping = Some(source.mapping());
            Ok(model)
        }
    }

    fn assemble(
        path: &Path,
        format: ModelFormat,
        config: ModelConfig,
        source: &dyn TensorSource,
        tokenizer: Tokenizer,
        chat_template: Option<ChatTemplate>,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let layers_total = config.num_layers;
        let weights =
            Weights::load(source, &config, |layers_done| progress(LoadProgress { layers_done, layers_total }))?;
        let fingerprint = fingerprint(&config, source)?;
        let mut parameters = 0u64;
        let mut tensor_types: Vec<(String, usize)> = Vec::new();
        for name in source.tensor_names() {
            let tensor = source.tensor(&name)?;
            parameters += tensor.elem_count() as u64;
            match tensor_types.iter_mut().find(|(t, _)| t == tensor.dtype.name()) {
                Some((_, count)) => *count += 1,
                None => tensor_types.push((tensor.dtype.name().to_owned(), 1)),
            }
        }
        let summary = ModelSummary {
            path: path.to_owned(),
            format,
            architecture: config.architecture.name().to_owned(),
            parameters,
            tensor_types,
            context_length: config.context_length,
            vocab_size: config.vocab_size,
            has_chat_template: chat_template.is_some(),
            fingerprint: fingerprint.to_string(),
            config: config.clone(),
        };
        let rope = config.rope.table(config.head_dim, config.context_length);
        Ok(Self {
            config,
            weights,
            tokenizer: Arc::new(tokenizer),
            chat_template,
            fingerprint,
            summary,
            activations: Activations::F32,
            rope,
            mapping: None,
        })
    }

    /// Changes the context window to `positions`, rebuilding the RoPE table. Past the length
    /// the model was trained for, positions are extrapolated and quality is not guaranteed —
    /// for long-context benchmarks of a short-context model.
    pub fn set_context_length(&mut self, positions: usize) {
        self.config.context_length = positions;
        self.rope = self.config.rope.table(self.config.head_dim, positions);
    }

    /// Keeps only the first `layers` layers (analysis and benchmarks of one layer on real
    /// activations: the model's output is no longer meaningful).
    pub fn truncate_layers(&mut self, layers: usize) {
        self.weights.layers.truncate(layers);
        self.config.num_layers = self.weights.layers.len();
    }

    /// Builds the repacked weight copies the matrix products of [`Model::activations`] read
    /// (in parallel on the current rayon pool), which each product would otherwise build on
    /// first use, inside a request. Engines call it once at start, after the mode is set.
    pub fn prepare(&self) {
        let layers = self.weights.layers.iter();
        let mut matrices: Vec<&QMatrix> = layers
            .flat_map(|l| {
                l.qkv.parts().into_iter().chain([&l.attn_output]).chain(l.gate_up.parts()).chain([&l.ffn_down])
            })
            .collect();
        matrices.push(&self.weights.lm_head);
        matrices.par_iter().for_each(|m| m.prepare(self.activations));
        if let Some(mapping) = &self.mapping {
            crate::source::release_resident_pages(mapping);
        }
    }

    /// The KV block shape of this model at `block_size` tokens per block.
    pub fn kv_layout(&self, block_size: usize) -> KvLayout {
        KvLayout {
            layers: self.config.num_layers,
            kv_heads: self.config.num_kv_heads,
            head_dim: self.config.head_dim,
            block_size,
        }
    }
}
