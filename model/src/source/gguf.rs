//! GGUF v2/v3 files: header parsed by candle-core's reader, tensor data memory-mapped in place.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use lcserve_kernels::{QuantType, WeightData};
use memmap2::Mmap;

use super::{TensorSource, WeightTensor};
use crate::config::{Architecture, ModelConfig, RopeConfig, RopeLayout, RopeScaling, YARN_BETAS, yarn_mscale};
use crate::error::{ModelError, Result};

/// An opened GGUF file.
/// Drops a mapped model file's pages from this process's resident memory. Matrices keep
/// decode-ready copies ([`crate::Model::prepare`]), so afterwards the file is read only for the
/// odd embedding row, which faults its page back in; without this, every weight would count
/// twice in resident memory.
pub fn release_resident_pages(mmap: &Mmap) {
    // SAFETY: MADV_DONTNEED on a read-only, file-backed, private mapping only discards clean
    // page-cache references; later reads fault the same bytes back in from the file.
    let _ = unsafe { mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
}

pub struct GgufSource {
    path: PathBuf,
    mmap: Arc<Mmap>,
    content: Content,
}

impl std::fmt::Debug for GgufSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufSource").field("path", &self.path).finish_non_exhaustive()
    }
}

impl GgufSource {
    pub fn open(path: &Path) -> Result<Self> {
        let invalid = |reason: String| ModelError::InvalidGguf { path: path.to_owned(), reason };
        let file = File::open(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        // SAFETY: the file is opened read-only and lcserve never writes model files while serving;
        // a model file truncated underneath a running server is an operator error we cannot guard.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        let content = Content::read(&mut std::io::Cursor::new(&mmap[..])).map_err(|e| invalid(e.to_string()))?;
        let source = Self { path: path.to_owned(), mmap: Arc::new(mmap), content };
        // Every tensor must lie inside the file: catch truncation now, not mid-forward.
        for (name, info) in &source.content.tensor_infos {
            let (start, len) = source.span(info.offset, info.ggml_dtype, info.shape.elem_count());
            if start.checked_add(len).is_none_or(|end| end > source.mmap.len()) {
                return Err(invalid(format!(
                    "tensor {name} needs bytes {start}..{} but the file has {} (truncated?)",
                    start.saturating_add(len),
                    source.mmap.len()
                )));
            }
        }
        Ok(source)
    }

    /// Drops the file's pages from this process's resident memory (see
    /// [`release_resident_pages`]).
    pub fn release_resident_pages(&self) {
        release_resident_pages(&self.mmap);
    }

    /// The mapped file, which the weights' bytes point into.
    pub fn mapping(&self) -> Arc<Mmap> {
        Arc::clone(&self.mmap)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    /// A tensor's type, shape and bytes (no copy).
    fn tensor_at(&self, name: &str) -> Result<WeightTensor> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let dtype = quant_type(name, info.ggml_dtype)?;
        let (start, len) = self.span(info.offset, info.ggml_dtype, info.shape.elem_count());
        Ok(WeightTensor {
            name: name.to_owned(),
            dtype,
            shape: info.shape.dims().to_vec(),
            // `open` checked that every tensor lies inside the file.
            bytes: WeightData::shared(self.mmap.clone(), start, len)
                .map_err(|e| ModelError::TensorData { tensor: name.into(), reason: e.to_string() })?,
        })
    }

    fn span(&self, offset: u64, dtype: GgmlDType, elems: usize) -> (usize, usize) {
        let start = (self.content.tensor_data_offset.saturating_add(offset)) as usize;
        (start, elems / dtype.block_size() * dtype.type_size())
    }

    fn architecture_name(&self) -> Result<&str> {
        self.string("general.architecture")
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.content.metadata.get(key).ok_or_else(|| ModelError::MissingMetadata { key: key.into() })
    }

    pub(crate) fn string(&self, key: &str) -> Result<&str> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|e| ModelError::InvalidMetadata { key: key.into(), reason: e.to_string() })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let value = self.get(key)?;
        let number = match value {
            Value::U8(v) => Some(*v as u64),
            Value::U16(v) => Some(*v as u64),
            Value::U32(v) => Some(*v as u64),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        number.and_then(|n| usize::try_from(n).ok()).ok_or_else(|| ModelError::InvalidMetadata {
            key: key.into(),
            reason: format!("expected a non-negative integer, found {value:?}"),
        })
    }

    fn f32(&self, key: &str) -> Result<f32> {
        match self.get(key)? {
            Value::F32(v) => Ok(*v),
            Value::F64(v) => Ok(*v as f32),
            other => Err(ModelError::InvalidMetadata {
                key: key.into(),
                reason: format!("expected a float, found {other:?}"),
            }),
        }
    }

    fn optional<T>(&self, key: &str, read: impl Fn(&Self, &str) -> Result<T>) -> Result<Option<T>> {
        if self.content.metadata.contains_key(key) { read(self, key).map(Some) } else { Ok(None) }
    }

    /// The model's architecture config from `{arch}.*` metadata and tensor shapes.
    pub fn config(&self) -> Result<ModelConfig> {
        let arch_name = self.architecture_name()?;
        let architecture =
            Architecture::parse(arch_name).ok_or_else(|| ModelError::UnsupportedArchitecture(arch_name.to_owned()))?;
        let key = |suffix: &str| format!("{arch_name}.{suffix}");
        let hidden_size = self.usize(&key("embedding_length"))?;
        let num_heads = self.usize(&key("attention.head_count"))?;
        let num_kv_heads = self.optional(&key("attention.head_count_kv"), Self::usize)?.unwrap_or(num_heads);
        let head_dim = match self.optional(&key("attention.key_length"), Self::usize)? {
            Some(d) => d,
            None if num_heads > 0 => hidden_size / num_heads,
            None => {
                return Err(ModelError::InvalidMetadata {
                    key: key("attention.head_count"),
                    reason: "must be positive".into(),
                });
            }
        };
        let embedding = self.tensor("token_embd.weight")?;
        let vocab_size = embedding.shape.first().copied().unwrap_or(0);
        let rope_theta = self.optional(&key("rope.freq_base"), Self::f32)?.unwrap_or(10_000.0);
        let stated_context = self.usize(&key("context_length"))?;
        let scaling = self.rope_scaling(arch_name, stated_context)?;
        let context_length = scaling.context_length(stated_context);
        let config = ModelConfig {
            architecture,
            hidden_size,
            num_layers: self.usize(&key("block_count"))?,
            num_heads,
            num_kv_heads,
            head_dim,
            intermediate_size: self.usize(&key("feed_forward_length"))?,
            vocab_size,
            context_length,
            rms_norm_eps: self.optional(&key("attention.layer_norm_rms_epsilon"), Self::f32)?.unwrap_or(1e-5),
            rope: RopeConfig {
                theta: rope_theta,
                scaling,
                // llama.cpp's converter permutes llama/mistral q/k rows for its "normal" (pairwise)
                // RoPE; qwen2 and qwen3 keep the Hugging Face layout and use NeoX-style RoPE.
                layout: match architecture {
                    Architecture::Llama | Architecture::Mistral => RopeLayout::Interleaved,
                    Architecture::Qwen2 | Architecture::Qwen3 => RopeLayout::Halves,
                },
            },
            tie_embeddings: !self.has_tensor("output.weight"),
            qkv_bias: self.has_tensor("blk.0.attn_q.bias"),
            qk_norm: architecture == Architecture::Qwen3,
        };
        config.validate().map_err(|reason| ModelError::InvalidGguf { path: self.path.clone(), reason })?;
        Ok(config)
    }

    fn rope_scaling(&self, arch: &str, context_length: usize) -> Result<RopeScaling> {
        if self.has_tensor("rope_freqs.weight") {
            let tensor = self.tensor("rope_freqs.weight")?;
            let divisors = crate::weights::dequantize_vector(&tensor)?;
            return Ok(RopeScaling::FreqDivisors { divisors });
        }
        let kind = self.optional(&format!("{arch}.rope.scaling.type"), |s, k| s.string(k).map(str::to_owned))?;
        let factor = self.optional(&format!("{arch}.rope.scaling.factor"), Self::f32)?;
        let original = self
            .optional(&format!("{arch}.rope.scaling.original_context_length"), Self::usize)?
            .unwrap_or(context_length);
        Ok(match (kind.as_deref(), factor) {
            (None | Some("none"), _) | (_, None) => RopeScaling::None,
            (Some("linear"), Some(factor)) => RopeScaling::Linear { factor },
            (Some("dynamic"), Some(factor)) => RopeScaling::DynamicNtk { factor, original_max_position: original },
            (Some("yarn"), Some(factor)) => self.yarn(arch, factor, original)?,
            (Some(other), _) => {
                return Err(ModelError::InvalidMetadata {
                    key: format!("{arch}.rope.scaling.type"),
                    reason: format!("unsupported RoPE scaling {other:?} (supported: none, linear, dynamic, yarn)"),
                });
            }
        })
    }

    /// YaRN as llama.cpp records it: its betas when given, the attention factor `0.1 ln(factor)
    /// + 1` times `yarn_attn_factor`. DeepSeek's log multiplier and a partial ramp
    /// (`yarn_ext_factor` other than 1) are refused rather than run wrong.
    fn yarn(&self, arch: &str, factor: f32, original: usize) -> Result<RopeScaling> {
        let key = |suffix: &str| format!("{arch}.rope.scaling.{suffix}");
        for (name, neutral) in [("yarn_log_multiplier", 0.0), ("yarn_ext_factor", 1.0)] {
            if let Some(value) = self.optional(&key(name), Self::f32)?
                && value != neutral
                && !(name == "yarn_ext_factor" && value < 0.0)
            {
                return Err(ModelError::InvalidMetadata {
                    key: key(name),
                    reason: format!("YaRN with {name} {value} is not supported"),
                });
            }
        }
        let attention_factor = self.optional(&key("yarn_attn_factor"), Self::f32)?.unwrap_or(1.0);
        Ok(RopeScaling::Yarn {
            factor,
            original_max_position: original,
            beta_fast: self.optional(&key("yarn_beta_fast"), Self::f32)?.unwrap_or(YARN_BETAS.0),
            beta_slow: self.optional(&key("yarn_beta_slow"), Self::f32)?.unwrap_or(YARN_BETAS.1),
            attention_factor: yarn_mscale(factor, 1.0) * attention_factor,
            // llama.cpp rounds the ramp's bounds outwards.
            truncate: true,
        })
    }
}

impl TensorSource for GgufSource {
    fn tensor(&self, name: &str) -> Result<WeightTensor> {
        self.tensor_at(name)
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    fn tensor_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.content.tensor_infos.keys().cloned().collect();
        names.sort_unstable();
        names
    }
}

fn quant_type(tensor: &str, dtype: GgmlDType) -> Result<QuantType> {
    Ok(match dtype {
        GgmlDType::F32 => QuantType::F32,
        GgmlDType::F16 => QuantType::F16,
        GgmlDType::BF16 => QuantType::BF16,
        GgmlDType::Q4_0 => QuantType::Q4_0,
        GgmlDType::Q4_1 => QuantType::Q4_1,
        GgmlDType::Q8_0 => QuantType::Q8_0,
        GgmlDType::Q4K => QuantType::Q4K,
        GgmlDType::Q6K => QuantType::Q6K,
        other => return Err(ModelError::UnsupportedTensorType { tensor: tensor.into(), dtype: format!("{other:?}") }),
    })
}
