//! Dequantizes a GGUF model into a Hugging Face directory (`config.json`, one F32
//! `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`).
//!
//! Why: the exported directory is the exact dequantization of the GGUF, so serving both must give
//! the same logits up to activation rounding; that makes the HF loader and the GGUF loader test
//! each other, and it lets HF tooling (transformers, candle) inspect a GGUF model.
//!
//! The one non-mechanical step is RoPE layout: llama.cpp's converter permutes the q/k rows of
//! llama/mistral models so each head's rotated pairs sit side by side
//! ([`RopeLayout::Interleaved`]); HF checkpoints rotate halves ([`RopeLayout::Halves`]). The
//! converter sent HF row `half·(d/2) + i` of each head to GGUF row `2i + half`, so export reads
//! `HF[h·d + half·(d/2) + i] = GGUF[h·d + 2i + half]`. qwen2 GGUFs keep the HF layout.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use lcserve_kernels::dequantize_row;
use lcserve_text::Tokenizer;
use safetensors::Dtype;
use safetensors::tensor::{Metadata, TensorInfo};
use serde_json::{Value, json};

use crate::config::{Architecture, ModelConfig, RopeLayout, RopeScaling};
use crate::error::{ModelError, Result};
use crate::source::{GgufSource, HfSource, TensorSource, WeightTensor};

/// Writes `gguf` (with its `tokenizer` and `chat_template`) to `out_dir` as a Hugging Face
/// directory, creating the directory if needed and overwriting the four files it writes.
///
/// Every tensor becomes F32 under its HF name; a tied LM head is left out and recorded as
/// `tie_word_embeddings: true`. Fails on tensors or RoPE settings HF cannot express (for example
/// per-frequency `rope_freqs.weight` divisors) rather than writing a directory that would run a
/// different model.
pub fn export_hf_dir(
    gguf: &GgufSource,
    tokenizer: &Tokenizer,
    chat_template: Option<&str>,
    out_dir: &Path,
) -> Result<()> {
    let config = gguf.config()?;
    let rope_scaling = rope_scaling_json(gguf.path(), &config.rope.scaling)?;
    let mut tensors = Vec::new();
    for name in gguf.tensor_names() {
        let hf_name = HfSource::hf_name(&name).ok_or_else(|| ModelError::InvalidGguf {
            path: gguf.path().to_owned(),
            reason: format!("tensor {name} has no Hugging Face counterpart"),
        })?;
        tensors.push((hf_name, gguf.tensor(&name)?));
    }
    // Sorted by HF name so the file (and its hash) depends only on the model.
    tensors.sort_by(|a, b| a.0.cmp(&b.0));

    std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Io { path: out_dir.to_owned(), source })?;
    let bos = special_token(tokenizer, tokenizer.bos_id());
    let eos = special_token(tokenizer, tokenizer.eos_id());
    let config_json = config_json(&config, rope_scaling, tokenizer.bos_id(), tokenizer.eos_id());
    write_json(&out_dir.join(HfSource::CONFIG_FILE), &config_json)?;
    write_safetensors(&out_dir.join(HfSource::WEIGHTS_FILE), &tensors, &config)?;
    let tokenizer_path = out_dir.join(HfSource::TOKENIZER_FILE);
    std::fs::write(&tokenizer_path, tokenizer.to_json()?)
        .map_err(|source| ModelError::Io { path: tokenizer_path, source })?;
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "chat_template": chat_template,
        "model_max_length": config.context_length,
        "clean_up_tokenization_spaces": false,
    });
    write_json(&out_dir.join(HfSource::TOKENIZER_CONFIG_FILE), &tokenizer_config)
}

fn special_token(tokenizer: &Tokenizer, id: Option<u32>) -> Option<String> {
    id.and_then(|id| tokenizer.id_to_token(id))
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|e| ModelError::InvalidHfDir { path: path.to_owned(), reason: format!("cannot serialize: {e}") })?;
    text.push('\n');
    std::fs::write(path, text).map_err(|source| ModelError::Io { path: path.to_owned(), source })
}

/// An f32 as the JSON number with the same shortest decimal form (`1e-5`, not
/// `9.99999974e-6`), so the file reads as written and parses back to the same f32.
fn f32_json(x: f32) -> Value {
    x.to_string().parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::Null, Value::Number)
}

fn config_json(config: &ModelConfig, rope_scaling: Value, bos: Option<u32>, eos: Option<u32>) -> Value {
    let class = match config.architecture {
        Architecture::Llama => "LlamaForCausalLM",
        Architecture::Mistral => "MistralForCausalLM",
        Architecture::Qwen2 => "Qwen2ForCausalLM",
        Architecture::Qwen3 => "Qwen3ForCausalLM",
    };
    let mut value = json!({
        "architectures": [class],
        "model_type": config.architecture.name(),
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.context_length,
        "rms_norm_eps": f32_json(config.rms_norm_eps),
        "rope_theta": f32_json(config.rope.theta),
        "rope_scaling": rope_scaling,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": eos,
    });
    // transformers' llama/mistral read q/k/v (and o) biases from this flag; qwen2 always has them.
    if config.architecture != Architecture::Qwen2
        && let Value::Object(map) = &mut value
    {
        map.insert("attention_bias".into(), Value::Bool(config.qkv_bias));
    }
    value
}

fn rope_scaling_json(path: &Path, scaling: &RopeScaling) -> Result<Value> {
    Ok(match scaling {
        RopeScaling::None => Value::Null,
        RopeScaling::Linear { factor } => json!({ "rope_type": "linear", "factor": f32_json(*factor) }),
        RopeScaling::DynamicNtk { factor, original_max_position } => json!({
            "rope_type": "dynamic",
            "factor": f32_json(*factor),
            "original_max_position_embeddings": original_max_position,
        }),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position } => json!({
            "rope_type": "llama3",
            "factor": f32_json(*factor),
            "low_freq_factor": f32_json(*low_freq_factor),
            "high_freq_factor": f32_json(*high_freq_factor),
            "original_max_position_embeddings": original_max_position,
        }),
        RopeScaling::Yarn { factor, original_max_position, beta_fast, beta_slow, attention_factor, truncate } => {
            json!({
                "rope_type": "yarn",
                "factor": f32_json(*factor),
                "original_max_position_embeddings": original_max_position,
                "beta_fast": f32_json(*beta_fast),
                "beta_slow": f32_json(*beta_slow),
                "attention_factor": f32_json(*attention_factor),
                "truncate": truncate,
            })
        }
        RopeScaling::FreqDivisors { .. } => {
            return Err(ModelError::InvalidGguf {
                path: path.to_owned(),
                reason: "RoPE frequency divisors (rope_freqs.weight) have no config.json equivalent".into(),
            });
        }
    })
}

/// Streams the tensors into one F32 safetensors file: the header is known from the shapes alone,
/// so only one dequantized tensor is in memory at a time.
fn write_safetensors(path: &Path, tensors: &[(String, WeightTensor)], config: &ModelConfig) -> Result<()> {
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let mut infos = Vec::with_capacity(tensors.len());
    let mut offset = 0;
    for (hf_name, tensor) in tensors {
        let len = tensor.elem_count() * size_of::<f32>();
        infos.push((
            hf_name.clone(),
            TensorInfo { dtype: Dtype::F32, shape: tensor.shape.clone(), data_offsets: (offset, offset + len) },
        ));
        offset += len;
    }
    let header_error = |e: &dyn std::fmt::Display| ModelError::InvalidHfDir {
        path: path.to_owned(),
        reason: format!("cannot build header: {e}"),
    };
    // transformers refuses safetensors files without a `format` entry.
    let file_metadata = Some([("format".to_owned(), "pt".to_owned())].into_iter().collect());
    let metadata = Metadata::new(file_metadata, infos).map_err(|e| header_error(&e))?;
    let mut header = serde_json::to_vec(&metadata).map_err(|e| header_error(&e))?;
    // The data section starts 8-byte aligned, as the reference writer pads it.
    header.resize(header.len().next_multiple_of(HfSource::HEADER_LEN_BYTES), b' ');

    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    out.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let mut bytes = Vec::new();
    for (_, tensor) in tensors {
        let values = hf_values(tensor, config)?;
        bytes.clear();
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        out.write_all(&bytes).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// The tensor dequantized, with q/k rows moved back to the HF layout where the GGUF permuted them.
fn hf_values(tensor: &WeightTensor, config: &ModelConfig) -> Result<Vec<f32>> {
    let mut values = vec![0.0; tensor.elem_count()];
    dequantize_row(tensor.dtype, tensor.bytes.as_bytes(), &mut values)
        .map_err(|e| ModelError::TensorData { tensor: tensor.name.clone(), reason: e.to_string() })?;
    if config.rope.layout != RopeLayout::Interleaved {
        return Ok(values);
    }
    let heads = if tensor.name.ends_with(".attn_q.weight") || tensor.name.ends_with(".attn_q.bias") {
        config.num_heads
    } else if tensor.name.ends_with(".attn_k.weight") || tensor.name.ends_with(".attn_k.bias") {
        config.num_kv_heads
    } else {
        return Ok(values);
    };
    let rows = heads * config.head_dim;
    if tensor.shape.first() != Some(&rows) {
        let mut expected = tensor.shape.clone();
        if let Some(first) = expected.first_mut() {
            *first = rows;
        }
        return Err(ModelError::TensorShape { tensor: tensor.name.clone(), actual: tensor.shape.clone(), expected });
    }
    Ok(interleaved_to_halves(&values, config.head_dim, values.len() / rows))
}

/// Reorders the rows of a `[heads·d, cols]` matrix (or a `[heads·d]` bias, `cols = 1`) from the
/// pairwise layout to rotate-half: `out[h·d + half·(d/2) + i] = in[h·d + 2i + half]`.
fn interleaved_to_halves(values: &[f32], head_dim: usize, cols: usize) -> Vec<f32> {
    let half_dim = head_dim / 2;
    let mut out = Vec::with_capacity(values.len());
    for head in values.chunks_exact(head_dim * cols) {
        for half in 0..2 {
            for i in 0..half_dim {
                let row = 2 * i + half;
                out.extend_from_slice(&head[row * cols..(row + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::interleaved_to_halves;

    #[test]
    fn unpermute_moves_pairs_to_halves() {
        // Two heads of d = 4, one column: GGUF rows per head are (x0, y0, x1, y1).
        let gguf = [0.0, 10.0, 1.0, 11.0, 2.0, 12.0, 3.0, 13.0];
        assert_eq!(interleaved_to_halves(&gguf, 4, 1), [0.0, 1.0, 10.0, 11.0, 2.0, 3.0, 12.0, 13.0]);
        // Two columns keep each row intact.
        let gguf = [0.0, 0.5, 10.0, 10.5, 1.0, 1.5, 11.0, 11.5];
        assert_eq!(interleaved_to_halves(&gguf, 4, 2), [0.0, 0.5, 1.0, 1.5, 10.0, 10.5, 11.0, 11.5]);
    }
}
