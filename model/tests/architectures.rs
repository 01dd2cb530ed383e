//! Every architecture the loader accepts, on its tiny random model: `Model::forward` against f64
//! reference math, the GGUF against its exported Hugging Face copy (config, tensors, logits), and
//! the parts that set a family apart (qwen2's q/k/v biases and rotate-half RoPE on unpermuted
//! rows, mistral's 4-to-1 GQA, qwen3's per-head q/k norms and heads wider than `hidden / heads`).

mod support;

use std::path::{Path, PathBuf};

use lcserve_model::{
    Architecture, GgufSource, HfSource, Model, ModelConfig, ModelError, RopeLayout, TensorSource, TinyModelPaths,
    dequantize_vector, write_tiny_model, write_tiny_model_arch,
};
use serde_json::Value;
use support::{Session, max_rel_diff, permute_to_gguf, permuted_heads, prompt, reference::Reference};

const ARCHS: [Architecture; 4] = [Architecture::Llama, Architecture::Mistral, Architecture::Qwen2, Architecture::Qwen3];

/// Relative logit error (max |Δ| over the row / max |logit|) allowed between `Model::forward`
/// with its default exact-f32 activations and the f64 reference, and between the GGUF and its HF
/// copy. Only f32 rounding separates them: measured worst over these tests 5.5e-7 (forward vs
/// reference) and 5.4e-7 (GGUF vs HF), so 1e-4 leaves two orders of margin while a real mistake
/// costs far more (dropping qwen2's k bias alone, the subtlest one here, costs 3e-2).
const F32_TOLERANCE: f32 = 1e-4;

/// Prompt lengths: one token, within a block, across block boundaries (block size 16).
const LENGTHS: [usize; 4] = [1, 7, 33, 130];

fn tiny(arch: Architecture, seed: u64) -> (tempfile::TempDir, TinyModelPaths) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = write_tiny_model_arch(dir.path(), seed, arch).expect("tiny model");
    (dir, paths)
}

fn load(path: &Path) -> Model {
    Model::load(path, &mut |_| {}).expect("load")
}

fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    Session::new(model, 16, tokens.len()).run(tokens, true)
}

fn to_f32(rows: &[Vec<f64>]) -> Vec<Vec<f32>> {
    rows.iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect()
}

/// The worst [`max_rel_diff`] over matching rows.
fn worst_rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter().zip(b).map(|(x, y)| max_rel_diff(x, y)).fold(0f32, f32::max)
}

#[test]
fn forward_matches_reference_math_for_every_architecture() {
    for arch in ARCHS {
        let (_dir, paths) = tiny(arch, 11);
        let model = load(&paths.gguf);
        let reference = Reference::new(&GgufSource::open(&paths.gguf).expect("open"));
        let mut worst = 0f32;
        for len in LENGTHS {
            let tokens = prompt(len, model.config.vocab_size, len as u64);
            let err = worst_rel_diff(&all_logits(&model, &tokens), &to_f32(&reference.logits(&tokens)));
            assert!(err <= F32_TOLERANCE, "{arch:?}, {len} tokens: relative error {err:e}");
            worst = worst.max(err);
        }
        eprintln!("{arch:?}: worst relative logit error vs f64 reference {worst:e}");
    }
}

#[test]
fn gguf_and_hf_copies_give_the_same_logits_for_every_architecture() {
    for arch in ARCHS {
        let (_dir, paths) = tiny(arch, 7);
        let (gguf, hf) = (load(&paths.gguf), load(&paths.hf_dir));
        // Exact math on both sides first: the GGUF (its layout) and the HF copy (rotate-half, q/k
        // rows un-permuted where the GGUF permuted them) must be the same function.
        let gguf_reference = Reference::new(&GgufSource::open(&paths.gguf).expect("open gguf"));
        let hf_source = HfSource::open(&paths.hf_dir).expect("open hf");
        let hf_reference = Reference::with_config(&hf_source, hf_source.config().clone());
        let (mut worst_model, mut worst_reference) = (0f32, 0f32);
        for len in LENGTHS {
            let tokens = prompt(len, gguf.config.vocab_size, 100 + len as u64);
            let err = worst_rel_diff(&all_logits(&gguf, &tokens), &all_logits(&hf, &tokens));
            assert!(err <= F32_TOLERANCE, "{arch:?}, {len} tokens: GGUF vs HF relative logit difference {err:e}");
            worst_model = worst_model.max(err);
            let err = worst_rel_diff(&to_f32(&gguf_reference.logits(&tokens)), &to_f32(&hf_reference.logits(&tokens)));
            assert!(err <= 1e-6, "{arch:?}, {len} tokens: f64 reference GGUF vs HF {err:e}");
            worst_reference = worst_reference.max(err);
        }
        eprintln!(
            "{arch:?}: worst relative logit difference GGUF vs HF: model {worst_model:e}, reference {worst_reference:e}"
        );
    }
}

#[test]
fn configs_agree_up_to_rope_layout_and_carry_each_family_trait() {
    for arch in ARCHS {
        let (_dir, paths) = tiny(arch, 7);
        let gguf = GgufSource::open(&paths.gguf).expect("open gguf").config().expect("gguf config");
        let hf = HfSource::open(&paths.hf_dir).expect("open hf").config().clone();
        let gguf_layout = match arch {
            Architecture::Llama | Architecture::Mistral => RopeLayout::Interleaved,
            Architecture::Qwen2 | Architecture::Qwen3 => RopeLayout::Halves,
        };
        assert_eq!(gguf.rope.layout, gguf_layout, "{arch:?}");
        assert_eq!(hf.rope.layout, RopeLayout::Halves, "{arch:?}");
        let mut gguf_as_halves = gguf.clone();
        gguf_as_halves.rope.layout = RopeLayout::Halves;
        assert_eq!(gguf_as_halves, hf, "{arch:?}");

        assert_eq!(gguf.architecture, arch);
        let (kv_heads, head_dim, theta, bias, tied) = match arch {
            Architecture::Llama => (2, 16, 1e4, false, false),
            Architecture::Mistral => (1, 16, 1e6, false, false),
            Architecture::Qwen2 => (2, 16, 1e6, true, true),
            Architecture::Qwen3 => (2, 32, 1e6, false, true),
        };
        assert_eq!((gguf.num_heads, gguf.num_kv_heads, gguf.head_dim), (4, kv_heads, head_dim), "{arch:?}");
        assert_eq!(gguf.rope.theta, theta, "{arch:?}");
        assert_eq!(gguf.qkv_bias, bias, "{arch:?}");
        assert_eq!(gguf.qk_norm, arch == Architecture::Qwen3, "{arch:?}");
        assert_eq!(gguf.tie_embeddings, tied, "{arch:?}");

        let text = std::fs::read_to_string(paths.hf_dir.join("config.json")).expect("read config.json");
        let json: Value = serde_json::from_str(&text).expect("parse config.json");
        let class = match arch {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        };
        assert_eq!(json["model_type"], arch.name(), "{arch:?}");
        assert_eq!(json["architectures"], serde_json::json!([class]), "{arch:?}");
        assert_eq!(json["tie_word_embeddings"], tied, "{arch:?}");
        // transformers' qwen2 always has q/k/v biases and has no such flag; the others do.
        assert_eq!(json.get("attention_bias"), (arch != Architecture::Qwen2).then_some(&Value::Bool(false)));
    }
}

#[test]
fn hf_tensors_are_the_gguf_tensors_permuted_only_where_the_gguf_permuted_them() {
    for arch in ARCHS {
        let (_dir, paths) = tiny(arch, 7);
        let gguf = GgufSource::open(&paths.gguf).expect("open gguf");
        let config = gguf.config().expect("config");
        let hf = HfSource::open(&paths.hf_dir).expect("open hf");
        let names = gguf.tensor_names();
        assert_eq!(names, hf.tensor_names(), "{arch:?}");
        let has = |name: &str| names.iter().any(|n| n == name);
        assert_eq!(has("blk.1.attn_k.bias"), arch == Architecture::Qwen2, "{arch:?}");
        assert_eq!(has("blk.1.attn_q_norm.weight"), arch == Architecture::Qwen3, "{arch:?}");
        let tied = matches!(arch, Architecture::Qwen2 | Architecture::Qwen3);
        assert_eq!(has("output.weight"), !tied, "{arch:?}");
        for name in &names {
            let (g, h) = (gguf.tensor(name).expect("gguf tensor"), hf.tensor(name).expect("hf tensor"));
            assert_eq!(g.shape, h.shape, "{arch:?} {name}");
            let (expected, hf_values) =
                (dequantize_vector(&g).expect("dequantize"), dequantize_vector(&h).expect("f32"));
            let heads = permuted_heads(name, &config);
            let hf_in_gguf_order = match (heads, config.rope.layout) {
                (Some(heads), RopeLayout::Interleaved) => {
                    assert_ne!(hf_values, expected, "{arch:?} {name} was not un-permuted");
                    permute_to_gguf(&hf_values, heads, config.head_dim)
                }
                // qwen2 GGUFs keep HF's row order: the exporter must copy them as they are.
                _ => hf_values,
            };
            assert!(hf_in_gguf_order == expected, "{arch:?} {name}: HF values differ from the dequantized GGUF");
        }
    }
}

#[test]
fn qwen2_biases_are_applied() {
    let (_dir, paths) = tiny(Architecture::Qwen2, 11);
    let source = GgufSource::open(&paths.gguf).expect("open");
    let config = source.config().expect("config");
    let model = load(&paths.gguf);
    assert!(model.weights.layers.iter().all(|l| l.qkv_bias.len() == config.q_dim() + 2 * config.kv_dim()));
    let mut unbiased = load(&paths.gguf);
    for layer in &mut unbiased.weights.layers {
        layer.qkv_bias.iter_mut().for_each(|b| *b = 0.0);
    }
    // The reference with the biases ignored is the model with them zeroed, and far from the model.
    let no_bias_reference = Reference::with_config(&source, ModelConfig { qkv_bias: false, ..config.clone() });
    let tokens = prompt(40, model.config.vocab_size, 5);
    let (with, without) = (all_logits(&model, &tokens), all_logits(&unbiased, &tokens));
    let err = worst_rel_diff(&without, &to_f32(&no_bias_reference.logits(&tokens)));
    assert!(err <= F32_TOLERANCE, "zeroed biases vs reference without biases: {err:e}");
    let effect = worst_rel_diff(&with, &without);
    eprintln!("qwen2: dropping the q/k/v biases changes logits by {effect:e} (relative)");
    assert!(effect > 0.05, "the biases barely matter ({effect:e}): is the test model exercising them?");

    // Each of q, k and v matters on its own (a bias added to the wrong rows would show here).
    let (q_dim, kv_dim) = (config.q_dim(), config.kv_dim());
    for (part, range) in [("q", 0..q_dim), ("k", q_dim..q_dim + kv_dim), ("v", q_dim + kv_dim..q_dim + 2 * kv_dim)] {
        let mut partial = load(&paths.gguf);
        for layer in &mut partial.weights.layers {
            layer.qkv_bias[range.clone()].iter_mut().for_each(|b| *b = 0.0);
        }
        let effect = worst_rel_diff(&with, &all_logits(&partial, &tokens));
        eprintln!("qwen2: dropping the {part} bias changes logits by {effect:e} (relative)");
        assert!(effect > 1e-3, "dropping the {part} bias changes nothing ({effect:e})");
    }
}

/// A copy of the HF directory at `from` without the tensors `drop` picks.
fn hf_copy_without(from: &Path, to: &Path, drop: impl Fn(&str) -> bool) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    let bytes = std::fs::read(from.join("model.safetensors")).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.tensors().into_iter().filter(|(name, _)| !drop(name)).collect();
    safetensors::serialize_to_file(kept, None, &to.join("model.safetensors")).expect("write");
    to.to_owned()
}

#[test]
fn qwen2_without_its_biases_is_refused() {
    let (dir, paths) = tiny(Architecture::Qwen2, 7);
    let stripped = hf_copy_without(&paths.hf_dir, &dir.path().join("no-bias"), |name| name.ends_with(".bias"));
    let err = Model::load(&stripped, &mut |_| {}).expect_err("qwen2 needs its q/k/v biases");
    assert!(matches!(&err, ModelError::MissingTensor(name) if name == "blk.0.attn_q.bias"), "{err}");
}

#[test]
fn qwen3_normalizes_each_query_and_key_head() {
    let (dir, paths) = tiny(Architecture::Qwen3, 11);
    let source = GgufSource::open(&paths.gguf).expect("open");
    let config = source.config().expect("config");
    assert!(config.q_dim() != config.hidden_size, "the test model's heads are wider than hidden / heads");
    let model = load(&paths.gguf);
    let tokens = prompt(40, model.config.vocab_size, 5);
    let with = all_logits(&model, &tokens);
    // Unit norm weights leave only the normalization itself; dropping it as well (the
    // reference without `qk_norm`) is qwen2-style attention over raw q and k.
    let mut unit = load(&paths.gguf);
    for layer in &mut unit.weights.layers {
        layer.q_norm.iter_mut().chain(&mut layer.k_norm).for_each(|w| *w = 1.0);
    }
    let unnormalized = Reference::with_config(&source, ModelConfig { qk_norm: false, ..config.clone() });
    let raw = to_f32(&unnormalized.logits(&tokens));
    for (what, logits) in [("unit norm weights", all_logits(&unit, &tokens)), ("no normalization", raw)] {
        let effect = worst_rel_diff(&with, &logits);
        eprintln!("qwen3: {what} changes logits by {effect:e} (relative)");
        assert!(effect > 1e-2, "{what} barely matters ({effect:e}): is the test model exercising the norms?");
    }
    let stripped = hf_copy_without(&paths.hf_dir, &dir.path().join("no-k-norm"), |n| n.ends_with("k_norm.weight"));
    let err = Model::load(&stripped, &mut |_| {}).expect_err("qwen3 needs its k norms");
    assert!(matches!(&err, ModelError::MissingTensor(name) if name == "blk.0.attn_k_norm.weight"), "{err}");
}

#[test]
fn every_variant_is_deterministic_and_llama_is_the_default() {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // All variants can share one directory: write them all there, then compare each with a
    // copy written alone.
    let shared = tempfile::tempdir().expect("tempdir");
    let together: Vec<TinyModelPaths> =
        ARCHS.iter().map(|&arch| write_tiny_model_arch(shared.path(), 3, arch).expect("tiny model")).collect();
    for (arch, b) in ARCHS.into_iter().zip(&together) {
        let (_a, a) = tiny(arch, 3);
        assert!(read(&a.gguf) == read(&b.gguf), "{arch:?}: same seed, different GGUF bytes");
        for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
            assert!(read(&a.hf_dir.join(file)) == read(&b.hf_dir.join(file)), "{arch:?}: same seed, different {file}");
        }
        assert_eq!(GgufSource::open(&b.gguf).expect("open").config().expect("config").architecture, arch);
    }
    let default = write_tiny_model(&shared.path().join("default"), 3).expect("tiny model");
    assert!(read(&default.gguf) == read(&together[0].gguf), "write_tiny_model is not the llama variant");
}
