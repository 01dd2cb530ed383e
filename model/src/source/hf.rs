//! Hugging Face model directories: `config.json`, `model.safetensors` (or shards listed in
//! `model.safetensors.index.json`), `tokenizer.json`, `tokenizer_config.json`.
//!
//! Serving an HF checkpoint directly avoids a conversion step, and it is the test oracle for the
//! GGUF path: `export_hf_dir` writes the exact dequantization of a GGUF here, so loading both
//! must give the same model. Safetensors files are memory-mapped and tensors are handed out as
//! byte ranges of the maps (no copy). HF names are translated to GGUF names at open, so the
//! weight loader speaks one vocabulary; the q/k rows stay in HF's rotate-half order, which the
//! config records as [`RopeLayout::Halves`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lcserve_kernels::{QuantType, WeightData};
use lcserve_text::{ChatTemplate, Tokenizer};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use super::{TensorSource, WeightTensor};
use crate::config::{Architecture, ModelConfig, RopeConfig, RopeLayout, RopeScaling, YARN_BETAS, yarn_mscale};
use crate::error::{ModelError, Result};

const CONFIG_FILE: &str = "config.json";
const WEIGHTS_FILE: &str = "model.safetensors";
const INDEX_FILE: &str = "model.safetensors.index.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Whole-model tensors: (HF name, GGUF name).
const GLOBAL_NAMES: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Per-layer tensors: (suffix after `model.layers.{i}.`, suffix after `blk.{i}.`).
const LAYER_NAMES: [(&str, &str); 14] = [
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.k_proj.weight", "attn_k.weight"),
    ("self_attn.v_proj.weight", "attn_v.weight"),
    ("self_attn.q_proj.bias", "attn_q.bias"),
    ("self_attn.k_proj.bias", "attn_k.bias"),
    ("self_attn.v_proj.bias", "attn_v.bias"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    ("self_attn.q_norm.weight", "attn_q_norm.weight"),
    ("self_attn.k_norm.weight", "attn_k_norm.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
];

/// Safetensors files open with the header length as a little-endian u64.
const HEADER_LEN_BYTES: usize = 8;

const HF_LAYER_PREFIX: &str = "model.layers.";
const GGUF_LAYER_PREFIX: &str = "blk.";

/// Buffers some checkpoints save that are recomputed from the config, never weights.
const IGNORED_SUFFIXES: [&str; 1] = ["self_attn.rotary_emb.inv_freq"];

/// Which vocabulary a tensor name is in.
#[derive(Clone, Copy)]
enum Naming {
    Hf,
    Gguf,
}

/// Translates `name` out of the `from` vocabulary into the other one.
fn translate(name: &str, from: Naming) -> Option<String> {
    let orient = |&(hf, gguf): &(&'static str, &'static str)| match from {
        Naming::Hf => (hf, gguf),
        Naming::Gguf => (gguf, hf),
    };
    if let Some((_, to)) = GLOBAL_NAMES.iter().map(orient).find(|(f, _)| *f == name) {
        return Some(to.to_owned());
    }
    let (from_prefix, to_prefix) = orient(&(HF_LAYER_PREFIX, GGUF_LAYER_PREFIX));
    let (layer, suffix) = name.strip_prefix(from_prefix)?.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, to) = LAYER_NAMES.iter().map(orient).find(|(f, _)| *f == suffix)?;
    Some(format!("{to_prefix}{layer}.{to}"))
}

/// `model.layers.3.mlp.up_proj.weight` → `blk.3.ffn_up.weight`; `None` for names with no GGUF
/// counterpart.
fn hf_to_gguf_name(name: &str) -> Option<String> {
    translate(name, Naming::Hf)
}

/// One tensor: where its bytes are and how to read them.
struct Entry {
    map: Arc<Mmap>,
    range: Range<usize>,
    dtype: QuantType,
    shape: Vec<usize>,
}

/// An opened Hugging Face model directory.
pub struct HfSource {
    dir: PathBuf,
    config: ModelConfig,
    /// `config.json` as parsed, for token ids the tokenizer files may omit.
    config_json: Map<String, Value>,
    /// By GGUF name; a `BTreeMap` so names come out sorted.
    tensors: BTreeMap<String, Entry>,
}

impl std::fmt::Debug for HfSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HfSource").field("dir", &self.dir).field("tensors", &self.tensors.len()).finish_non_exhaustive()
    }
}

fn invalid(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidHfDir { path: path.to_owned(), reason: reason.into() }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("malformed JSON: {e}")))
}

fn read_json_object(path: &Path) -> Result<Map<String, Value>> {
    match read_json(path)? {
        Value::Object(map) => Ok(map),
        other => Err(invalid(path, format!("expected a JSON object, found {}", json_kind(&other)))),
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Typed access to the fields of one JSON object, with errors naming the file and field.
struct Fields<'a> {
    path: &'a Path,
    /// Prefix for nested objects (`rope_scaling.`), empty at the top level.
    prefix: &'a str,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    /// The field, treating `null` as absent (HF configs write `"head_dim": null`).
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn error(&self, key: &str, reason: impl std::fmt::Display) -> ModelError {
        invalid(self.path, format!("field `{}{key}`: {reason}", self.prefix))
    }

    fn missing(&self, key: &str) -> ModelError {
        self.error(key, "missing")
    }

    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.error(key, format!("expected a non-negative integer, found {v}")))
            })
            .transpose()
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.get(key)
            .map(|v| {
                v.as_f64().map(|x| x as f32).ok_or_else(|| self.error(key, format!("expected a number, found {v}")))
            })
            .transpose()
    }

    fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.missing(key))
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| v.as_bool().ok_or_else(|| self.error(key, format!("expected a boolean, found {v}"))))
            .transpose()
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.get(key)
            .map(|v| v.as_str().ok_or_else(|| self.error(key, format!("expected a string, found {v}"))))
            .transpose()
    }

    fn str(&self, key: &str) -> Result<&str> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }
}

/// What the exporter needs to write a directory this source reads back.
impl HfSource {
    pub(crate) const CONFIG_FILE: &str = CONFIG_FILE;
    pub(crate) const WEIGHTS_FILE: &str = WEIGHTS_FILE;
    pub(crate) const TOKENIZER_FILE: &str = TOKENIZER_FILE;
    pub(crate) const TOKENIZER_CONFIG_FILE: &str = TOKENIZER_CONFIG_FILE;
    pub(crate) const HEADER_LEN_BYTES: usize = HEADER_LEN_BYTES;

    /// `blk.3.ffn_up.weight` → `model.layers.3.mlp.up_proj.weight`; `None` for names with no HF
    /// counterpart.
    pub(crate) fn hf_name(gguf_name: &str) -> Option<String> {
        translate(gguf_name, Naming::Gguf)
    }
}

impl HfSource {
    /// Opens `dir`: parses `config.json`, maps every safetensors file and indexes its tensors.
    /// The tokenizer and chat template are read on demand ([`Self::tokenizer`],
    /// [`Self::chat_template`]).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(ModelError::NotFound(dir.to_owned()));
        }
        let config_path = dir.join(CONFIG_FILE);
        let config_json = read_json_object(&config_path)?;
        let tensors = load_tensors(dir)?;
        let tied = !tensors.contains_key("output.weight");
        let config = parse_config(&config_path, &config_json, tied, tensors.contains_key("blk.0.attn_q.bias"))?;
        Ok(Self { dir: dir.to_owned(), config, config_json, tensors })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The tokenizer from `tokenizer.json`, with BOS/EOS from `tokenizer_config.json` (token
    /// strings) or else `config.json` (token ids).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let path = self.dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(invalid(&path, "missing (an HF model directory needs its tokenizer.json)"));
        }
        let tokenizer = Tokenizer::from_file(&path)?;
        let special = self.special_tokens(&tokenizer)?;
        Ok(tokenizer.with_special_tokens(special.bos, special.eos))
    }

    /// The chat template: `chat_template.jinja` if present, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list of named templates of which `default` is used).
    pub fn chat_template(&self) -> Result<Option<ChatTemplate>> {
        let jinja = self.dir.join(CHAT_TEMPLATE_FILE);
        if jinja.is_file() {
            let text =
                std::fs::read_to_string(&jinja).map_err(|source| ModelError::Io { path: jinja.clone(), source })?;
            return Ok(Some(ChatTemplate::new(&text)?));
        }
        let Some((path, tokenizer_config)) = self.tokenizer_config()? else {
            return Ok(None);
        };
        let text = match tokenizer_config.get("chat_template") {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(text)) => text.as_str(),
            Some(Value::Array(named)) => named_default_template(&path, named)?,
            Some(other) => {
                return Err(invalid(
                    &path,
                    format!("field `chat_template`: expected a string, found {}", json_kind(other)),
                ));
            }
        };
        Ok(Some(ChatTemplate::new(text)?))
    }

    fn tokenizer_config(&self) -> Result<Option<(PathBuf, Map<String, Value>)>> {
        let path = self.dir.join(TOKENIZER_CONFIG_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let map = read_json_object(&path)?;
        Ok(Some((path, map)))
    }

    /// BOS/EOS token ids: token strings in `tokenizer_config.json` win over ids in `config.json`.
    fn special_tokens(&self, tokenizer: &Tokenizer) -> Result<SpecialTokens> {
        let config_path = self.dir.join(CONFIG_FILE);
        let config_fields = Fields { path: &config_path, prefix: "", map: &self.config_json };
        let tokenizer_config = self.tokenizer_config()?;
        let mut special = SpecialTokens::default();
        for (slot, token_key, id_key) in
            [(&mut special.bos, "bos_token", "bos_token_id"), (&mut special.eos, "eos_token", "eos_token_id")]
        {
            if let Some((path, map)) = &tokenizer_config
                && let Some(value) = map.get(token_key).filter(|v| !v.is_null())
            {
                let text = match value {
                    Value::String(s) => s.as_str(),
                    // The `AddedToken` form: {"content": "<s>", "lstrip": false, …}.
                    Value::Object(o) => o.get("content").and_then(Value::as_str).ok_or_else(|| {
                        invalid(path, format!("field `{token_key}`: an object without a string `content`"))
                    })?,
                    other => {
                        return Err(invalid(
                            path,
                            format!("field `{token_key}`: expected a string, found {}", json_kind(other)),
                        ));
                    }
                };
                let id = tokenizer.token_to_id(text).ok_or_else(|| {
                    invalid(path, format!("field `{token_key}`: token {text:?} is not in tokenizer.json"))
                })?;
                *slot = Some(id);
                continue;
            }
            *slot = match config_fields.get(id_key) {
                None => None,
                // `eos_token_id` may be a list (Llama 3); the first is the canonical end token.
                Some(Value::Array(ids)) => ids.first().and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()),
                Some(value) => Some(
                    value
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| config_fields.error(id_key, format!("expected a token id, found {value}")))?,
                ),
            };
        }
        Ok(special)
    }
}

#[derive(Default)]
struct SpecialTokens {
    bos: Option<u32>,
    eos: Option<u32>,
}

fn named_default_template<'a>(path: &Path, named: &'a [Value]) -> Result<&'a str> {
    named
        .iter()
        .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
        .and_then(|t| t.get("template"))
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(path, "field `chat_template`: a list without a `default` template"))
}

/// The architecture config from `config.json`; `tied` says the directory has no `lm_head`,
/// `has_qkv_bias` that it stores a q bias.
fn parse_config(path: &Path, map: &Map<String, Value>, tied: bool, has_qkv_bias: bool) -> Result<ModelConfig> {
    let fields = Fields { path, prefix: "", map };
    let model_type = fields.str("model_type")?;
    let architecture =
        Architecture::parse(model_type).ok_or_else(|| ModelError::UnsupportedArchitecture(model_type.to_owned()))?;
    let hidden_size = fields.usize("hidden_size")?;
    let num_heads = fields.usize("num_attention_heads")?;
    if num_heads == 0 {
        return Err(fields.error("num_attention_heads", "must be positive"));
    }
    let max_position = fields.usize("max_position_embeddings")?;
    let scaling = parse_rope_scaling(&fields, max_position)?;
    let context_length = scaling.context_length(max_position);
    let config = ModelConfig {
        architecture,
        hidden_size,
        num_layers: fields.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads: fields.opt_usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim: fields.opt_usize("head_dim")?.unwrap_or(hidden_size / num_heads),
        intermediate_size: fields.usize("intermediate_size")?,
        vocab_size: fields.usize("vocab_size")?,
        context_length,
        rms_norm_eps: fields.f32("rms_norm_eps")?,
        rope: RopeConfig {
            theta: fields.opt_f32("rope_theta")?.unwrap_or(10_000.0),
            scaling,
            layout: RopeLayout::Halves,
        },
        tie_embeddings: tied || fields.opt_bool("tie_word_embeddings")?.unwrap_or(false),
        // qwen2 always has q/k/v biases; any other family has them exactly when they are stored.
        qkv_bias: architecture == Architecture::Qwen2 || has_qkv_bias,
        qk_norm: architecture == Architecture::Qwen3,
    };
    config.validate().map_err(|reason| invalid(path, reason))?;
    Ok(config)
}

fn parse_rope_scaling(fields: &Fields<'_>, max_position: usize) -> Result<RopeScaling> {
    let Some(value) = fields.get("rope_scaling") else {
        return Ok(RopeScaling::None);
    };
    let map =
        value.as_object().ok_or_else(|| fields.error("rope_scaling", format!("expected an object, found {value}")))?;
    let scaling = Fields { path: fields.path, prefix: "rope_scaling.", map };
    // Newer configs say `rope_type`, older ones `type`.
    let kind = match scaling.opt_str("rope_type")? {
        Some(kind) => kind,
        None => scaling.opt_str("type")?.ok_or_else(|| scaling.missing("rope_type"))?,
    };
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: scaling.f32("factor")? },
        "dynamic" => RopeScaling::DynamicNtk {
            factor: scaling.f32("factor")?,
            original_max_position: scaling.opt_usize("original_max_position_embeddings")?.unwrap_or(max_position),
        },
        "llama3" => RopeScaling::Llama3 {
            factor: scaling.f32("factor")?,
            low_freq_factor: scaling.f32("low_freq_factor")?,
            high_freq_factor: scaling.f32("high_freq_factor")?,
            original_max_position: scaling.usize("original_max_position_embeddings")?,
        },
        "yarn" => parse_yarn(&scaling, max_position)?,
        other => {
            return Err(scaling.error(
                "rope_type",
                format!("unsupported RoPE scaling {other:?} (supported: default, linear, dynamic, llama3, yarn)"),
            ));
        }
    })
}

/// YaRN as transformers reads it: without `factor`, the ratio of `max_position_embeddings` to
/// the original (DeepSeek's configs); without `attention_factor`, `mscale` over
/// `mscale_all_dim` when both are given, else `0.1 ln(factor) + 1`.
fn parse_yarn(scaling: &Fields<'_>, max_position: usize) -> Result<RopeScaling> {
    let original = scaling.opt_usize("original_max_position_embeddings")?.unwrap_or(max_position);
    if original == 0 {
        return Err(scaling.error("original_max_position_embeddings", "must be positive"));
    }
    let factor = match scaling.opt_f32("factor")? {
        Some(factor) => factor,
        None => (max_position as f64 / original as f64) as f32,
    };
    let attention_factor = match scaling.opt_f32("attention_factor")? {
        Some(given) => given,
        None => match (scaling.opt_f32("mscale")?, scaling.opt_f32("mscale_all_dim")?) {
            (Some(m), Some(all)) if m != 0.0 && all != 0.0 => yarn_mscale(factor, m) / yarn_mscale(factor, all),
            _ => yarn_mscale(factor, 1.0),
        },
    };
    // transformers treats 0 as absent here (`get("beta_fast") or 32`).
    let beta = |name, default| Ok::<_, ModelError>(scaling.opt_f32(name)?.filter(|&b| b != 0.0).unwrap_or(default));
    Ok(RopeScaling::Yarn {
        factor,
        original_max_position: original,
        beta_fast: beta("beta_fast", YARN_BETAS.0)?,
        beta_slow: beta("beta_slow", YARN_BETAS.1)?,
        attention_factor,
        truncate: scaling.opt_bool("truncate")?.unwrap_or(true),
    })
}

/// The safetensors files of `dir` and the tensors each must hold (`None`: whatever it holds).
fn weight_files(dir: &Path) -> Result<Vec<(PathBuf, Option<Vec<String>>)>> {
    let index_path = dir.join(INDEX_FILE);
    if !index_path.is_file() {
        let single = dir.join(WEIGHTS_FILE);
        if !single.is_file() {
            return Err(invalid(dir, format!("neither {WEIGHTS_FILE} nor {INDEX_FILE} is present")));
        }
        return Ok(vec![(single, None)]);
    }
    let index = read_json_object(&index_path)?;
    let weight_map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(&index_path, "field `weight_map`: missing or not an object"))?;
    let mut shards: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (tensor, file) in weight_map {
        let file = file.as_str().ok_or_else(|| {
            invalid(&index_path, format!("field `weight_map.{tensor}`: expected a file name, found {file}"))
        })?;
        // Shards are siblings of the index; a path that leaves the directory is not a shard.
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." {
            return Err(invalid(
                &index_path,
                format!("field `weight_map.{tensor}`: {file:?} is not a file name in the directory"),
            ));
        }
        shards.entry(file).or_default().push(tensor.clone());
    }
    if shards.is_empty() {
        return Err(invalid(&index_path, "field `weight_map`: lists no tensors"));
    }
    shards
        .into_iter()
        .map(|(file, tensors)| {
            let path = dir.join(file);
            if !path.is_file() {
                return Err(invalid(
                    &index_path,
                    format!("shard {file} (holding {}) is missing", tensors.first().map_or("", String::as_str)),
                ));
            }
            Ok((path, Some(tensors)))
        })
        .collect()
}

/// Maps every safetensors file of `dir` and indexes its tensors by GGUF name.
fn load_tensors(dir: &Path) -> Result<BTreeMap<String, Entry>> {
    let mut tensors = BTreeMap::new();
    for (path, expected) in weight_files(dir)? {
        let file = File::open(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        // SAFETY: the file is opened read-only and lcserve never writes model files while serving;
        // a model file truncated underneath a running server is an operator error we cannot guard.
        let map =
            Arc::new(unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.clone(), source })?);
        let entries = index_safetensors(&path, &map)?;
        if let Some(expected) = expected
            && let Some(absent) = expected.iter().find(|name| !entries.contains_key(name.as_str()))
        {
            return Err(invalid(&path, format!("tensor {absent} is listed in {INDEX_FILE} but not stored here")));
        }
        for (hf_name, (range, dtype, shape)) in entries {
            if IGNORED_SUFFIXES.iter().any(|s| hf_name.ends_with(s)) {
                continue;
            }
            let gguf_name = hf_to_gguf_name(&hf_name).ok_or_else(|| {
                invalid(&path, format!("tensor {hf_name} is not part of a llama/mistral/qwen2 model"))
            })?;
            let dtype = quant_type(&hf_name, dtype)?;
            if tensors.insert(gguf_name, Entry { map: map.clone(), range, dtype, shape }).is_some() {
                return Err(invalid(&path, format!("tensor {hf_name} is stored twice")));
            }
        }
    }
    Ok(tensors)
}

type RawEntry = (Range<usize>, Dtype, Vec<usize>);

/// Tensors of one safetensors file by HF name: byte range within the file, dtype and shape.
fn index_safetensors(path: &Path, bytes: &[u8]) -> Result<HashMap<String, RawEntry>> {
    // `read_metadata` checks that the header parses, that the tensors tile the data section
    // exactly up to the end of the file and that each size matches its shape and dtype, so every
    // range below lies inside the file.
    let (header_len, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| invalid(path, format!("bad safetensors header: {e}")))?;
    let data_start = HEADER_LEN_BYTES + header_len;
    Ok(metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let (start, end) = info.data_offsets;
            (name, (data_start + start..data_start + end, info.dtype, info.shape.clone()))
        })
        .collect())
}

fn quant_type(tensor: &str, dtype: Dtype) -> Result<QuantType> {
    Ok(match dtype {
        Dtype::F32 => QuantType::F32,
        Dtype::F16 => QuantType::F16,
        Dtype::BF16 => QuantType::BF16,
        other => {
            return Err(ModelError::UnsupportedTensorType { tensor: tensor.to_owned(), dtype: format!("{other:?}") });
        }
    })
}

impl TensorSource for HfSource {
    fn tensor(&self, name: &str) -> Result<WeightTensor> {
        let entry = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        Ok(WeightTensor {
            name: name.to_owned(),
            dtype: entry.dtype,
            shape: entry.shape.clone(),
            // `open` checked (through the safetensors header) that every tensor lies in its file.
            bytes: WeightData::shared(entry.map.clone(), entry.range.start, entry.range.len())
                .map_err(|e| ModelError::TensorData { tensor: name.into(), reason: e.to_string() })?,
        })
    }

    fn has_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
}
