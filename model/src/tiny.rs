//! A tiny deterministic model for tests and demos (`lcserve model tiny --out DIR`).
//!
//! Why: end-to-end tests need a real model — real GGUF metadata, a real byte-level BPE tokenizer,
//! a chat template, quantized matrices of several types — but cannot download one or spend
//! seconds per forward pass. This writes one in milliseconds from a seed: 2 layers, hidden 64,
//! 4 query heads of 16, FFN 128, a 4096-token context (so long-context paths run) and a
//! 303-token vocabulary (3 ChatML specials, 256 GPT-2 byte tokens, 44 merges). Matrices mix
//! Q8_0 / Q4_1 / Q4_0 so both fused and unfused projections are exercised; norms are F32 near 1.
//! The Hugging Face copy is [`export_hf_dir`] of the GGUF, so the two are the same model.
//!
//! Each supported [`Architecture`] has a variant, written as llama.cpp's converter would write
//! that family, with what sets it apart:
//! - llama ([`write_tiny_model`]): 2 KV heads, θ = 10⁴, untied head, q/k rows in the GGUF's
//!   permuted (interleaved-pair) order;
//! - mistral: 1 KV head (groups of 4), θ = 10⁶, permuted like llama;
//! - qwen2: 2 KV heads, θ = 10⁶, F32 q/k/v biases, a head tied to the embedding, and q/k rows in
//!   Hugging Face order (GGUF qwen2 uses NeoX, rotate-half RoPE).

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Architecture;
use crate::error::{ModelError, Result};
use crate::export::export_hf_dir;
use crate::gguf_tokenizer::tokenizer_from_gguf_metadata;
use crate::source::GgufSource;

const HIDDEN: usize = 64;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 128;
const CONTEXT: usize = 4096;
const RMS_EPS: f32 = 1e-5;

/// What the architectures' tiny models differ in.
struct ArchSpec {
    kv_heads: usize,
    head_dim: usize,
    rope_theta: f32,
    /// F32 `blk.{i}.attn_{q,k,v}.bias`.
    qkv_bias: bool,
    /// F32 `blk.{i}.attn_{q,k}_norm.weight`.
    qk_norm: bool,
    /// No `output.weight`: the LM head is the token embedding.
    tied: bool,
}

impl ArchSpec {
    fn of(arch: Architecture) -> Self {
        let llama = Self {
            kv_heads: 2,
            head_dim: HEAD_DIM,
            rope_theta: 10_000.0,
            qkv_bias: false,
            qk_norm: false,
            tied: false,
        };
        match arch {
            Architecture::Llama => llama,
            Architecture::Mistral => Self { kv_heads: 1, rope_theta: 1_000_000.0, ..llama },
            Architecture::Qwen2 => Self { rope_theta: 1_000_000.0, qkv_bias: true, tied: true, ..llama },
            // Heads twice `hidden / heads`, as Qwen3-0.6B's 16 heads of 128 over 1024.
            Architecture::Qwen3 => {
                Self { head_dim: 2 * HEAD_DIM, rope_theta: 1_000_000.0, qk_norm: true, tied: true, ..llama }
            }
        }
    }
}

/// Special tokens, at ids 0, 1, 2 (BOS = `<|im_start|>`, EOS = `<|im_end|>`, as in SmolLM2).
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const BOS: u32 = 1;
const EOS: u32 = 2;

/// BPE merges in priority order, in GPT-2 byte-unicode form (`Ġ` is a space, `Ċ` a newline);
/// each merge's parts exist by the time it applies.
#[rustfmt::skip]
const MERGES: [(&str, &str); 44] = [
    ("Ġ", "t"), ("h", "e"), ("i", "n"), ("e", "r"), ("a", "n"), ("Ġ", "a"), ("o", "n"),
    ("Ġt", "he"), ("r", "e"), ("o", "u"), ("a", "t"), ("e", "n"), ("Ġ", "s"), ("Ġ", "w"),
    ("i", "s"), ("o", "r"), ("e", "s"), ("Ġ", "o"), ("i", "t"), ("Ġ", "c"), ("a", "r"),
    ("e", "d"), ("Ġ", "b"), ("in", "g"), ("Ġ", "f"), ("Ġ", "m"), ("l", "l"), ("Ġ", "h"),
    ("Ġ", "p"), ("Ġ", "d"), ("Ġa", "n"), ("Ġan", "d"), ("Ġ", "i"), ("Ġo", "f"), ("Ġt", "o"),
    ("Ġ", "is"), ("Ġi", "n"), ("Ġ", "l"), ("Ġ", "n"), ("a", "s"), ("Ġw", "h"), ("o", "w"),
    ("Ċ", "Ċ"), ("Ġ", "y"),
];

/// ChatML, as SmolLM2 and Qwen use it.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Where [`write_tiny_model`] / [`write_tiny_model_arch`] put the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TinyModelPaths {
    /// `OUT/tiny.gguf` (llama) or `OUT/tiny-{arch}.gguf`.
    pub gguf: PathBuf,
    /// `OUT/tiny-hf/` (llama) or `OUT/tiny-{arch}-hf/`, the dequantized Hugging Face copy.
    pub hf_dir: PathBuf,
}

/// Writes the tiny llama model to `out_dir` (created if needed) as `tiny.gguf` and `tiny-hf/`.
/// The same `seed` always gives byte-identical files.
pub fn write_tiny_model(out_dir: &Path, seed: u64) -> Result<TinyModelPaths> {
    write_tiny_model_arch(out_dir, seed, Architecture::Llama)
}

/// Writes the tiny model of `arch` to `out_dir` (created if needed): llama as `tiny.gguf` and
/// `tiny-hf/` (exactly [`write_tiny_model`]), the others as `tiny-{arch}.gguf` and
/// `tiny-{arch}-hf/`, so every variant can share one directory. The same `seed` and `arch`
/// always give byte-identical files.
pub fn write_tiny_model_arch(out_dir: &Path, seed: u64, arch: Architecture) -> Result<TinyModelPaths> {
    std::fs::create_dir_all(out_dir).map_err(|source| ModelError::Io { path: out_dir.to_owned(), source })?;
    let stem = match arch {
        Architecture::Llama => "tiny".to_owned(),
        other => format!("tiny-{}", other.name()),
    };
    let paths =
        TinyModelPaths { gguf: out_dir.join(format!("{stem}.gguf")), hf_dir: out_dir.join(format!("{stem}-hf")) };
    write_gguf(&paths.gguf, seed, arch)?;
    let gguf = GgufSource::open(&paths.gguf)?;
    let tokenizer = tokenizer_from_gguf_metadata(gguf.metadata())?;
    export_hf_dir(&gguf, &tokenizer, Some(CHAT_TEMPLATE), &paths.hf_dir)?;
    Ok(paths)
}

/// GPT-2's reversible byte → printable-character map (`bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut next_unprintable = 256;
    (0u32..256)
        .map(|b| {
            let code = if printable(b) {
                b
            } else {
                next_unprintable += 1;
                next_unprintable - 1
            };
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect()
}

/// The tiny model's tokens: the specials, the 256 byte tokens, the merges.
pub(crate) fn vocabulary() -> Vec<String> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| (*s).to_owned()).collect();
    tokens.extend(byte_chars().into_iter().map(String::from));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    tokens
}

/// Normal samples by Box–Muller (rand 0.9 has no distributions without `rand_distr`).
struct Gaussian(StdRng);

impl Gaussian {
    fn sample(&mut self, mean: f32, std: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                let u1: f32 = 1.0 - self.0.random::<f32>();
                let u2: f32 = self.0.random();
                mean + std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
            })
            .collect()
    }
}

pub(crate) fn quantized(name: &str, values: Vec<f32>, shape: &[usize], dtype: GgmlDType) -> Result<QTensor> {
    let error = |e: candle_core::Error| ModelError::TensorData { tensor: name.to_owned(), reason: e.to_string() };
    let tensor = Tensor::from_vec(values, shape, &Device::Cpu).map_err(error)?;
    QTensor::quantize(&tensor, dtype).map_err(error)
}

fn write_gguf(path: &Path, seed: u64, arch: Architecture) -> Result<()> {
    use GgmlDType::{F32, Q4_0, Q4_1, Q8_0};
    let spec = ArchSpec::of(arch);
    let (kv_heads, head_dim) = (spec.kv_heads, spec.head_dim);
    let tokens = vocabulary();
    let vocab = tokens.len();
    let mut rng = Gaussian(StdRng::seed_from_u64(seed));

    // Matrix types per layer: (q, k, v, output, gate, up, down). Layer 0 fuses q‖k‖v and
    // gate‖up; layer 1 mixes types so the loader keeps them separate.
    let layer_types = [[Q4_1, Q4_1, Q4_1, Q4_0, Q8_0, Q8_0, Q4_1], [Q4_0, Q8_0, Q4_1, Q8_0, Q4_1, Q4_0, Q8_0]];
    let mut tensors = vec![(
        "token_embd.weight".to_owned(),
        quantized("token_embd.weight", rng.sample(0.0, 0.5, vocab * HIDDEN), &[vocab, HIDDEN], Q8_0)?,
    )];
    for (layer, types) in layer_types.iter().enumerate() {
        let [q, k, v, o, gate, up, down] = *types;
        let specs = [
            ("attn_norm.weight", vec![HIDDEN], F32, 1.0, 0.05),
            ("attn_q.weight", vec![HEADS * head_dim, HIDDEN], q, 0.0, 0.08),
            ("attn_k.weight", vec![kv_heads * head_dim, HIDDEN], k, 0.0, 0.08),
            ("attn_v.weight", vec![kv_heads * head_dim, HIDDEN], v, 0.0, 0.08),
            ("attn_output.weight", vec![HIDDEN, HEADS * head_dim], o, 0.0, 0.08),
            ("ffn_norm.weight", vec![HIDDEN], F32, 1.0, 0.05),
            ("ffn_gate.weight", vec![FFN, HIDDEN], gate, 0.0, 0.08),
            ("ffn_up.weight", vec![FFN, HIDDEN], up, 0.0, 0.08),
            ("ffn_down.weight", vec![HIDDEN, FFN], down, 0.0, 0.05),
        ];
        for (suffix, shape, dtype, mean, std) in specs {
            let name = format!("blk.{layer}.{suffix}");
            let values = rng.sample(mean, std, shape.iter().product());
            tensors.push((name.clone(), quantized(&name, values, &shape, dtype)?));
        }
        // Drawn after the layer's matrices so the llama model's bytes do not depend on them.
        // Large enough (std 0.3, like the sizeable k biases of real qwen2 checkpoints) that
        // dropping them visibly changes the logits.
        if spec.qkv_bias {
            for (suffix, rows) in [("attn_q.bias", HEADS), ("attn_k.bias", kv_heads), ("attn_v.bias", kv_heads)] {
                let name = format!("blk.{layer}.{suffix}");
                let values = rng.sample(0.0, 0.3, rows * head_dim);
                tensors.push((name.clone(), quantized(&name, values, &[rows * head_dim], F32)?));
            }
        }
        // Spread as widely as real qwen3 q/k norms (which range over ~0.5–2), so dropping
        // them visibly changes the logits.
        if spec.qk_norm {
            for suffix in ["attn_q_norm.weight", "attn_k_norm.weight"] {
                let name = format!("blk.{layer}.{suffix}");
                let values = rng.sample(1.0, 0.4, head_dim);
                tensors.push((name.clone(), quantized(&name, values, &[head_dim], F32)?));
            }
        }
    }
    if !spec.tied {
        tensors.push((
            "output.weight".to_owned(),
            quantized("output.weight", rng.sample(0.0, 0.1, vocab * HIDDEN), &[vocab, HIDDEN], Q8_0)?,
        ));
    }
    // Last, because its 256 bytes need no alignment padding: the file ends where the data ends,
    // so cutting even one byte truncates a tensor (what truncation tests rely on).
    tensors.push((
        "output_norm.weight".to_owned(),
        quantized("output_norm.weight", rng.sample(1.0, 0.05, HIDDEN), &[HIDDEN], F32)?,
    ));

    let name = match arch {
        Architecture::Llama => "lcserve-tiny".to_owned(),
        other => format!("lcserve-tiny-{}", other.name()),
    };
    let dims = Dims {
        hidden: HIDDEN,
        layers: LAYERS,
        heads: HEADS,
        kv_heads,
        head_dim,
        ffn: FFN,
        context: CONTEXT,
        rope_theta: spec.rope_theta,
    };
    write_gguf_file(path, &metadata(arch, name, &dims, tokens), &tensors)
}

/// The dimensions a GGUF's metadata states.
pub(crate) struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub context: usize,
    pub rope_theta: f32,
}

/// The metadata of a model of `arch` with these dimensions and the tiny model's tokenizer over
/// `tokens` ([`vocabulary`], possibly extended), ChatML template included.
pub(crate) fn metadata(arch: Architecture, name: String, dims: &Dims, tokens: Vec<String>) -> Vec<(String, Value)> {
    let u32_value = |n: usize| Value::U32(n as u32);
    let vocab = tokens.len();
    let token_types = (0..vocab).map(|id| Value::I32(if id < SPECIALS.len() { 3 } else { 1 })).collect();
    let arch_name = arch.name();
    let key = |suffix: &str| format!("{arch_name}.{suffix}");
    vec![
        ("general.architecture".into(), Value::String(arch_name.into())),
        ("general.name".into(), Value::String(name)),
        (key("context_length"), u32_value(dims.context)),
        (key("embedding_length"), u32_value(dims.hidden)),
        (key("block_count"), u32_value(dims.layers)),
        (key("feed_forward_length"), u32_value(dims.ffn)),
        (key("attention.head_count"), u32_value(dims.heads)),
        (key("attention.head_count_kv"), u32_value(dims.kv_heads)),
        (key("attention.key_length"), u32_value(dims.head_dim)),
        (key("attention.value_length"), u32_value(dims.head_dim)),
        (key("attention.layer_norm_rms_epsilon"), Value::F32(RMS_EPS)),
        (key("rope.dimension_count"), u32_value(dims.head_dim)),
        (key("rope.freq_base"), Value::F32(dims.rope_theta)),
        (key("vocab_size"), u32_value(vocab)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.tokens".into(), Value::Array(tokens.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type".into(), Value::Array(token_types)),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(BOS)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(EOS)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String(CHAT_TEMPLATE.into())),
    ]
}

/// Writes `metadata` and `tensors` as a GGUF file at `path`.
pub(crate) fn write_gguf_file(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) -> Result<()> {
    let metadata_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let io = |source| ModelError::Io { path: path.to_owned(), source };
    let mut out = BufWriter::new(File::create(path).map_err(io)?);
    gguf_file::write(&mut out, &metadata_refs, &tensor_refs)
        .map_err(|e| ModelError::InvalidGguf { path: path.to_owned(), reason: format!("writing failed: {e}") })?;
    std::io::Write::flush(&mut out).map_err(io)
}
