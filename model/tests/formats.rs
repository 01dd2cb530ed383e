//! GGUF ↔ Hugging Face directory: the tiny model exported to HF and loaded back is the same model
//! (config, every tensor, logits), malformed directories fail with errors naming the problem, the
//! tiny writer is deterministic, and the reference model survives the same round trip. Random
//! models of any shape load with that shape.

mod support;

use std::path::{Path, PathBuf};

use lcserve_model::{
    GgufSource, HfSource, Model, ModelConfig, ModelError, RandomShape, RopeLayout, TensorSource, dequantize_vector,
    export_hf_dir, write_random_model, write_tiny_model,
};
use serde_json::{Value, json};
use support::{Session, argmax, max_rel_diff, permute_to_gguf, permuted_heads, reference_model_path};

fn tiny(seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = write_tiny_model(dir.path(), seed).expect("tiny model");
    (dir, paths.gguf, paths.hf_dir)
}

/// The GGUF config with the HF layout, for comparing the two up to RoPE layout.
fn as_halves(mut config: ModelConfig) -> ModelConfig {
    config.rope.layout = RopeLayout::Halves;
    config
}

#[test]
fn tiny_configs_agree_up_to_rope_layout() {
    let (_dir, gguf_path, hf_dir) = tiny(7);
    let gguf = GgufSource::open(&gguf_path).expect("open gguf").config().expect("gguf config");
    let hf = HfSource::open(&hf_dir).expect("open hf");
    assert_eq!(gguf.rope.layout, RopeLayout::Interleaved);
    assert_eq!(hf.config().rope.layout, RopeLayout::Halves);
    assert_eq!(&as_halves(gguf), hf.config());
    assert_eq!(hf.config().context_length, 4096);
}

#[test]
fn every_hf_tensor_is_the_dequantized_gguf_tensor() {
    let (_dir, gguf_path, hf_dir) = tiny(7);
    let gguf = GgufSource::open(&gguf_path).expect("open gguf");
    let config = gguf.config().expect("config");
    let hf = HfSource::open(&hf_dir).expect("open hf");
    assert_eq!(gguf.tensor_names(), hf.tensor_names());
    for name in gguf.tensor_names() {
        let (g, h) = (gguf.tensor(&name).expect("gguf tensor"), hf.tensor(&name).expect("hf tensor"));
        assert_eq!(g.shape, h.shape, "{name}");
        assert_eq!(h.dtype, lcserve_kernels::QuantType::F32, "{name}");
        let (expected, hf_values) =
            (dequantize_vector(&g).expect("dequantize"), dequantize_vector(&h).expect("read f32"));
        let heads = permuted_heads(&name, &config);
        let hf_in_gguf_order = match heads {
            Some(heads) => {
                // The permutation must really move rows, or this test would prove nothing.
                assert_ne!(hf_values, expected, "{name} was not un-permuted");
                permute_to_gguf(&hf_values, heads, config.head_dim)
            }
            None => hf_values,
        };
        assert!(hf_in_gguf_order == expected, "{name}: HF values differ from the dequantized GGUF");
    }
}

/// A copy of the GGUF at `from` with every tensor stored as F32 (same metadata, same layout).
fn f32_gguf(from: &Path, to: &Path) {
    use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
    let mut file = std::fs::File::open(from).expect("open");
    let content = gguf_file::Content::read(&mut file).expect("read gguf");
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(&str, QTensor)> = names
        .into_iter()
        .map(|name| {
            let values = content
                .tensor(&mut file, name, &candle_core::Device::Cpu)
                .expect("tensor")
                .dequantize(&candle_core::Device::Cpu)
                .expect("dequantize");
            (name.as_str(), QTensor::quantize(&values, GgmlDType::F32).expect("f32"))
        })
        .collect();
    let mut metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    metadata.sort_by_key(|(k, _)| *k);
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut out = std::fs::File::create(to).expect("create");
    gguf_file::write(&mut out, &metadata, &tensor_refs).expect("write gguf");
}

fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    Session::new(model, 16, tokens.len()).run(tokens, true)
}

#[test]
fn gguf_and_hf_copies_give_the_same_logits() {
    let (dir, gguf_path, hf_dir) = tiny(7);
    let hf = Model::load(&hf_dir, &mut |_| {}).expect("load hf");
    let quantized = Model::load(&gguf_path, &mut |_| {}).expect("load gguf");
    // The same GGUF with F32 tensors runs the same arithmetic as the F32 HF copy, so the two
    // differ only by RoPE layout (interleaved + permuted q/k rows vs rotate-half): a strict check
    // of the un-permutation.
    let f32_path = dir.path().join("tiny-f32.gguf");
    f32_gguf(&gguf_path, &f32_path);
    let exact = Model::load(&f32_path, &mut |_| {}).expect("load f32 gguf");
    assert_eq!(exact.config.rope.layout, RopeLayout::Interleaved);
    let long: Vec<u32> = (0..70).map(|i| (i * 37 % 300) as u32).collect();
    let prompts: [&[u32]; 3] = [&[1, 40, 41, 42], &[3, 200, 17, 299, 5, 5, 5, 100, 101, 2], &long];
    let (mut worst_exact, mut worst_quantized) = (0f32, 0f32);
    for tokens in prompts {
        let reference = all_logits(&hf, tokens);
        for (pos, (x, y)) in all_logits(&exact, tokens).iter().zip(&reference).enumerate() {
            let err = max_rel_diff(x, y);
            worst_exact = worst_exact.max(err);
            assert!(
                err < 1e-4,
                "F32 GGUF vs HF, {} tokens, position {pos}: relative logit difference {err}",
                tokens.len()
            );
        }
        for (pos, (x, y)) in all_logits(&quantized, tokens).iter().zip(&reference).enumerate() {
            let err = max_rel_diff(x, y);
            worst_quantized = worst_quantized.max(err);
            // With exact f32 activations (the default) the quantized GGUF computes the same
            // products as its exact dequantization, up to f32 rounding (measured worst 8.3e-7).
            assert!(err < 1e-4, "GGUF vs HF, {} tokens, position {pos}: relative logit difference {err}", tokens.len());
        }
    }
    eprintln!("worst relative logit difference vs HF: F32 GGUF {worst_exact:e}, quantized GGUF {worst_quantized:e}");
}

#[test]
fn tiny_writer_is_deterministic() {
    let (_a, gguf_a, hf_a) = tiny(3);
    let (_b, gguf_b, hf_b) = tiny(3);
    let (_c, gguf_c, _) = tiny(4);
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(read(&gguf_a) == read(&gguf_b), "same seed, different GGUF bytes");
    assert!(read(&gguf_a) != read(&gguf_c), "different seeds, same GGUF bytes");
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(read(&hf_a.join(file)) == read(&hf_b.join(file)), "same seed, different {file}");
    }
}

#[test]
fn random_models_have_their_shape_and_a_seed_fixes_their_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shape = RandomShape { hidden: 128, layers: 2, heads: 4, kv_heads: 2, ffn: 256, vocab: 1000, context: 512 };
    let [a, b, c] = ["a", "b", "c"].map(|name| dir.path().join(format!("{name}.gguf")));
    for (path, seed) in [(&a, 5), (&b, 5), (&c, 6)] {
        write_random_model(path, shape, seed).expect("write random model");
    }
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(read(&a) == read(&b), "same seed, different bytes");
    assert!(read(&a) != read(&c), "different seeds, same bytes");

    let model = Model::load(&a, &mut |_| {}).expect("load random model");
    let cfg = &model.config;
    let loaded = (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size);
    assert_eq!(loaded, (128, 2, 4, 2, 256));
    assert_eq!((cfg.vocab_size, cfg.context_length, cfg.head_dim, cfg.tie_embeddings), (1000, 512, 32, true));
    assert_eq!(model.tokenizer.vocab_size(), 1000);
    // Weights scaled by fan-in keep the logits finite and far from flat: greedy decoding (and a
    // CPU/GPU comparison of it) is not decided by rounding.
    let logits = all_logits(&model, &[1, 17, 400, 999]);
    for row in &logits {
        assert!(row.iter().all(|v| v.is_finite()), "non-finite logits");
        let mut sorted = row.clone();
        sorted.sort_by(|x, y| y.total_cmp(x));
        assert!(sorted[0] - sorted[1] > 1e-3, "top-2 logits tie: {:?}", &sorted[..2]);
        assert!(sorted[0] - sorted[sorted.len() / 2] > 1.0, "flat logits: {:?}", &sorted[..4]);
    }
}

#[test]
fn sharded_directory_reads_like_one_file() {
    let (dir, _, hf_dir) = tiny(7);
    let single = HfSource::open(&hf_dir).expect("open");
    let sharded_dir = dir.path().join("sharded");
    copy_dir(&hf_dir, &sharded_dir);
    std::fs::remove_file(sharded_dir.join("model.safetensors")).expect("remove");
    let bytes = std::fs::read(hf_dir.join("model.safetensors")).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut names: Vec<String> = tensors.names().into_iter().map(str::to_owned).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (shard, part) in [("model-00001-of-00002.safetensors", first), ("model-00002-of-00002.safetensors", second)] {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
            part.iter().map(|n| (n.clone(), tensors.tensor(n).expect("tensor"))).collect();
        safetensors::serialize_to_file(views, None, &sharded_dir.join(shard)).expect("write shard");
        for name in part {
            weight_map.insert(name.clone(), json!(shard));
        }
    }
    write_json(&sharded_dir.join("model.safetensors.index.json"), &json!({ "metadata": {}, "weight_map": weight_map }));
    let sharded = HfSource::open(&sharded_dir).expect("open sharded");
    assert_eq!(sharded.config(), single.config());
    assert_eq!(sharded.tensor_names(), single.tensor_names());
    for name in single.tensor_names() {
        let (a, b) = (single.tensor(&name).expect("tensor"), sharded.tensor(&name).expect("tensor"));
        assert_eq!(a.shape, b.shape);
        assert!(a.bytes.as_bytes() == b.bytes.as_bytes(), "{name} differs between layouts");
    }
}

// ---- malformed directories ----------------------------------------------------------------

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).expect("json")).expect("write json");
}

/// A fresh copy of the tiny HF directory with `config.json` edited by `edit`.
fn with_config(
    root: &Path,
    hf_dir: &Path,
    case: &str,
    edit: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> PathBuf {
    let dir = root.join(case);
    copy_dir(hf_dir, &dir);
    let text = std::fs::read_to_string(dir.join("config.json")).expect("read config");
    let mut config: Value = serde_json::from_str(&text).expect("parse config");
    edit(config.as_object_mut().expect("object"));
    write_json(&dir.join("config.json"), &config);
    dir
}

fn open_err(dir: &Path) -> ModelError {
    HfSource::open(dir).expect_err("opening must fail")
}

/// The error names `file` and every one of `words`.
fn assert_names(err: &ModelError, file: &str, words: &[&str]) {
    let message = err.to_string();
    assert!(message.contains(file), "error does not name {file}: {message}");
    for word in words {
        assert!(message.contains(word), "error does not mention {word:?}: {message}");
    }
}

#[test]
fn missing_config_fields_are_named() {
    let (dir, _, hf_dir) = tiny(7);
    for field in [
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "vocab_size",
        "max_position_embeddings",
        "rms_norm_eps",
        "model_type",
    ] {
        let case = with_config(dir.path(), &hf_dir, field, |c| {
            c.remove(field);
        });
        let err = open_err(&case);
        assert!(matches!(err, ModelError::InvalidHfDir { .. }), "{field}: {err}");
        assert_names(&err, "config.json", &[field, "missing"]);
    }
    let case = with_config(dir.path(), &hf_dir, "negative", |c| {
        c.insert("hidden_size".into(), json!(-64));
    });
    assert_names(&open_err(&case), "config.json", &["hidden_size", "-64"]);
    let case = with_config(dir.path(), &hf_dir, "arch", |c| {
        c.insert("model_type".into(), json!("gpt_neox"));
    });
    assert!(matches!(open_err(&case), ModelError::UnsupportedArchitecture(name) if name == "gpt_neox"));
    let case = dir.path().join("no-config");
    copy_dir(&hf_dir, &case);
    std::fs::write(case.join("config.json"), "{ not json").expect("write");
    assert_names(&open_err(&case), "config.json", &["malformed JSON"]);
    std::fs::remove_file(case.join("config.json")).expect("remove");
    assert_names(&open_err(&case), "config.json", &[]);
}

#[test]
fn optional_config_fields_take_their_defaults() {
    let (dir, _, hf_dir) = tiny(7);
    let case = with_config(dir.path(), &hf_dir, "defaults", |c| {
        c.insert("num_key_value_heads".into(), Value::Null);
        c.remove("head_dim");
        c.remove("rope_theta");
        c.remove("tie_word_embeddings");
    });
    let config = HfSource::open(&case).expect("open").config().clone();
    assert_eq!(config.num_kv_heads, config.num_heads);
    assert_eq!(config.head_dim, config.hidden_size / config.num_heads);
    assert_eq!(config.rope.theta, 10_000.0);
    assert!(!config.tie_embeddings, "lm_head.weight is present, so the head is untied");

    // Without lm_head.weight the head is tied, whatever the config says.
    let case = dir.path().join("tied");
    copy_dir(&hf_dir, &case);
    rewrite_weights(&case, |name| name != "lm_head.weight");
    let tied = HfSource::open(&case).expect("open");
    assert!(tied.config().tie_embeddings);
    assert!(!tied.has_tensor("output.weight"));
    Model::load(&case, &mut |_| {}).expect("a tied directory loads");
}

/// Rewrites `dir/model.safetensors` keeping the tensors `keep` accepts.
fn rewrite_weights(dir: &Path, keep: impl Fn(&str) -> bool) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        tensors.tensors().into_iter().filter(|(name, _)| keep(name)).collect();
    safetensors::serialize_to_file(kept, None, &path).expect("write");
}

#[test]
fn rope_scaling_variants_parse_and_unknown_ones_are_refused() {
    use lcserve_model::RopeScaling;
    let (dir, _, hf_dir) = tiny(7);
    let cases = [
        (json!({"type": "linear", "factor": 2.0}), RopeScaling::Linear { factor: 2.0 }),
        (
            json!({"rope_type": "dynamic", "factor": 4.0}),
            RopeScaling::DynamicNtk { factor: 4.0, original_max_position: 4096 },
        ),
        (
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}),
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position: 1024,
            },
        ),
        (json!({"rope_type": "default"}), RopeScaling::None),
        (Value::Null, RopeScaling::None),
        // Qwen2.5's long-context setting, with the paper's defaults filled in.
        (
            json!({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}),
            RopeScaling::Yarn {
                factor: 4.0,
                original_max_position: 4096,
                beta_fast: 32.0,
                beta_slow: 1.0,
                attention_factor: 1.0 + 0.1 * 4f32.ln(),
                truncate: true,
            },
        ),
        // DeepSeek's: no factor (max_position_embeddings over the original), its own mscales.
        (
            json!({"rope_type": "yarn", "original_max_position_embeddings": 1024, "mscale": 0.707, "mscale_all_dim": 0.707,
                   "beta_fast": 16, "truncate": false}),
            RopeScaling::Yarn {
                factor: 4.0,
                original_max_position: 1024,
                beta_fast: 16.0,
                beta_slow: 1.0,
                attention_factor: 1.0,
                truncate: false,
            },
        ),
    ];
    for (i, (json, expected)) in cases.into_iter().enumerate() {
        let case = with_config(dir.path(), &hf_dir, &format!("rope{i}"), |c| {
            c.insert("rope_scaling".into(), json);
        });
        assert_eq!(HfSource::open(&case).expect("open").config().rope.scaling, expected);
    }
    // YaRN runs on the extended context when the config states the original one.
    let case = with_config(dir.path(), &hf_dir, "yarn-context", |c| {
        c.insert("rope_scaling".into(), json!({"rope_type": "yarn", "factor": 4.0}));
    });
    assert_eq!(HfSource::open(&case).expect("open").config().context_length, 4 * 4096);
    let case = with_config(dir.path(), &hf_dir, "longrope", |c| {
        c.insert("rope_scaling".into(), json!({"rope_type": "longrope", "factor": 4.0}));
    });
    assert_names(&open_err(&case), "config.json", &["rope_scaling", "longrope"]);
    let case = with_config(dir.path(), &hf_dir, "yarn-zero", |c| {
        c.insert(
            "rope_scaling".into(),
            json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}),
        );
    });
    assert_names(&open_err(&case), "config.json", &["rope_scaling.original_max_position_embeddings"]);
    let case = with_config(dir.path(), &hf_dir, "llama3-partial", |c| {
        c.insert("rope_scaling".into(), json!({"rope_type": "llama3", "factor": 8.0}));
    });
    assert_names(&open_err(&case), "config.json", &["rope_scaling.low_freq_factor", "missing"]);
}

#[test]
fn unsupported_tensor_dtype_is_named() {
    let (dir, _, hf_dir) = tiny(7);
    let case = dir.path().join("i32");
    copy_dir(&hf_dir, &case);
    let norm: Vec<u8> = (0..64i32).flat_map(i32::to_le_bytes).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![64], &norm).expect("view");
    safetensors::serialize_to_file([("model.norm.weight", view)], None, &case.join("model.safetensors"))
        .expect("write");
    let err = open_err(&case);
    assert!(
        matches!(&err, ModelError::UnsupportedTensorType { tensor, dtype } if tensor == "model.norm.weight" && dtype == "I32"),
        "{err}"
    );
}

#[test]
fn unknown_tensor_names_are_refused() {
    let (dir, _, hf_dir) = tiny(7);
    let case = dir.path().join("extra");
    copy_dir(&hf_dir, &case);
    let bytes = vec![0u8; 64 * 4];
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64], &bytes).expect("view");
    safetensors::serialize_to_file(
        [("model.layers.0.self_attn.o_proj.bias", view)],
        None,
        &case.join("model.safetensors"),
    )
    .expect("write");
    assert_names(&open_err(&case), "model.safetensors", &["model.layers.0.self_attn.o_proj.bias"]);
}

#[test]
fn missing_shard_is_named() {
    let (dir, _, hf_dir) = tiny(7);
    let case = dir.path().join("shards");
    copy_dir(&hf_dir, &case);
    std::fs::rename(case.join("model.safetensors"), case.join("model-00001-of-00002.safetensors")).expect("rename");
    let bytes = std::fs::read(case.join("model-00001-of-00002.safetensors")).expect("read");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut weight_map: serde_json::Map<String, Value> =
        tensors.names().into_iter().map(|n| (n.to_owned(), json!("model-00001-of-00002.safetensors"))).collect();
    weight_map.insert("lm_head.weight".into(), json!("model-00002-of-00002.safetensors"));
    write_json(&case.join("model.safetensors.index.json"), &json!({ "weight_map": weight_map }));
    let err = open_err(&case);
    assert_names(&err, "model.safetensors.index.json", &["model-00002-of-00002.safetensors", "missing"]);

    // A shard named in the index must hold the tensors the index puts there.
    weight_map.insert("lm_head.weight".into(), json!("model-00001-of-00002.safetensors"));
    weight_map.insert("model.layers.9.mlp.up_proj.weight".into(), json!("model-00001-of-00002.safetensors"));
    write_json(&case.join("model.safetensors.index.json"), &json!({ "weight_map": weight_map }));
    assert_names(&open_err(&case), "model-00001-of-00002.safetensors", &["model.layers.9.mlp.up_proj.weight"]);

    // No weights at all.
    std::fs::remove_file(case.join("model.safetensors.index.json")).expect("remove");
    assert_names(&open_err(&case), "model.safetensors", &[]);
}

#[test]
fn truncated_safetensors_is_refused() {
    let (dir, _, hf_dir) = tiny(7);
    let bytes = std::fs::read(hf_dir.join("model.safetensors")).expect("read");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    for keep in [4, 8, 8 + header_len / 2, 8 + header_len, bytes.len() - 1] {
        let case = dir.path().join(format!("cut{keep}"));
        copy_dir(&hf_dir, &case);
        std::fs::write(case.join("model.safetensors"), &bytes[..keep]).expect("write");
        let err = open_err(&case);
        assert!(matches!(err, ModelError::InvalidHfDir { .. }), "keep {keep}: {err}");
        assert_names(&err, "model.safetensors", &["safetensors"]);
    }
}

#[test]
fn tokenizer_and_chat_template_come_back() {
    let (_dir, gguf_path, hf_dir) = tiny(7);
    let gguf = Model::load(&gguf_path, &mut |_| {}).expect("load gguf");
    let hf = HfSource::open(&hf_dir).expect("open hf");
    let tokenizer = hf.tokenizer().expect("tokenizer");
    let text = "the cat is on the mat, and <|im_start|>what then?";
    for add_special in [false, true] {
        assert_eq!(
            tokenizer.encode(text, add_special).expect("encode"),
            gguf.tokenizer.encode(text, add_special).expect("encode")
        );
    }
    assert_eq!(tokenizer.bos_id(), gguf.tokenizer.bos_id());
    assert_eq!(tokenizer.eos_id(), gguf.tokenizer.eos_id());
    assert!(hf.chat_template().expect("template").is_some());
}

// ---- the reference model --------------------------------------------------------------------

#[test]
fn reference_model_round_trips_through_hf() {
    let Some(path) = reference_model_path() else { return };
    let gguf = GgufSource::open(&path).expect("open reference");
    let tokenizer = lcserve_model::tokenizer_from_gguf_metadata(gguf.metadata()).expect("tokenizer");
    let template = gguf.metadata().get("tokenizer.chat_template").and_then(|v| v.to_string().ok()).cloned();
    let out = tempfile::tempdir().expect("tempdir");
    export_hf_dir(&gguf, &tokenizer, template.as_deref(), out.path()).expect("export");

    let hf = HfSource::open(out.path()).expect("open exported");
    assert_eq!(&as_halves(gguf.config().expect("config")), hf.config());
    let hf_tokenizer = hf.tokenizer().expect("tokenizer");
    let sentence = "The quick brown fox jumps over the lazy dog. Ünïcödé, 12345 and <|im_end|> too!";
    for add_special in [false, true] {
        assert_eq!(
            hf_tokenizer.encode(sentence, add_special).expect("encode"),
            tokenizer.encode(sentence, add_special).expect("encode")
        );
    }
    assert_eq!(hf_tokenizer.bos_id(), tokenizer.bos_id());
    assert_eq!(hf_tokenizer.eos_id(), tokenizer.eos_id());
    assert!(hf.chat_template().expect("template").is_some() == template.is_some());
    assert_eq!(hf.tensor_names(), gguf.tensor_names());
    for name in gguf.tensor_names() {
        assert_eq!(
            hf.tensor(&name).expect("hf tensor").shape,
            gguf.tensor(&name).expect("gguf tensor").shape,
            "{name}"
        );
    }

    // Same weights, so the same next token, and logits equal up to f32 rounding (exact f32
    // activations are the default; measured 1.3e-6).
    let gguf_model = Model::load(&path, &mut |_| {}).expect("load gguf");
    let hf_model = Model::load(out.path(), &mut |_| {}).expect("load hf");
    let tokens = tokenizer.encode(sentence, false).expect("encode");
    let a = Session::new(&gguf_model, 16, tokens.len()).run(&tokens, false);
    let b = Session::new(&hf_model, 16, tokens.len()).run(&tokens, false);
    let err = max_rel_diff(&a[0], &b[0]);
    eprintln!("reference model: relative logit difference GGUF vs HF {err:e}");
    assert!(err < 1e-4, "relative logit difference {err}");
    assert_eq!(argmax(&a[0]), argmax(&b[0]));
}
