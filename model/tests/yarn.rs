//! YaRN RoPE scaling (Qwen2.5 / Qwen3's long-context setting) on the tiny qwen2 model: the
//! forward pass against the f64 reference, which computes YaRN's frequencies and attention
//! factor on its own; the same model from GGUF metadata (llama.cpp's keys) and from config.json;
//! the export round trip.

mod support;

use std::path::Path;

use candle_core::quantized::gguf_file;
use lcserve_model::{Architecture, GgufSource, HfSource, Model, RopeScaling, export_hf_dir, write_tiny_model_arch};
use support::{Session, max_rel_diff, prompt, reference::Reference};

/// As `architectures.rs`: f32 rounding is ~1e-6 of the largest logit; a missing scaling costs
/// orders of magnitude more.
const F32_TOLERANCE: f32 = 1e-4;

/// ×4 over an original 4096 positions: on the tiny model's 16-dim heads (θ = 1e6) pairs 0–1 keep
/// their frequency, 4–7 are interpolated and the ramp spans the rest, so every branch of the
/// formula is exercised.
fn tiny_yarn() -> RopeScaling {
    RopeScaling::Yarn {
        factor: 4.0,
        original_max_position: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
        attention_factor: 1.0 + 0.1 * 4f32.ln(),
        truncate: true,
    }
}

/// A copy of the GGUF at `source` with `extra` metadata added.
fn with_metadata(source: &Path, target: &Path, extra: Vec<(String, gguf_file::Value)>) {
    let mut file = std::fs::File::open(source).expect("open gguf");
    let content = gguf_file::Content::read(&mut file).expect("read gguf");
    let tensors: Vec<(String, candle_core::quantized::QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| (name.clone(), content.tensor(&mut file, name, &candle_core::Device::Cpu).expect("tensor")))
        .collect();
    let mut metadata: Vec<(String, gguf_file::Value)> = content.metadata.into_iter().collect();
    metadata.extend(extra);
    let metadata_refs: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &candle_core::quantized::QTensor)> =
        tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut out = std::fs::File::create(target).expect("create");
    gguf_file::write(&mut out, &metadata_refs, &tensor_refs).expect("write gguf");
}

fn all_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    Session::new(model, 16, tokens.len()).run(tokens, true)
}

fn worst(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().zip(b).map(|(x, y)| max_rel_diff(x, y)).fold(0f32, f32::max)
}

#[test]
fn yarn_runs_as_reference_math_from_gguf_metadata_and_config_json_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = write_tiny_model_arch(dir.path(), 5, Architecture::Qwen2).expect("tiny model");
    let yarn_gguf = dir.path().join("yarn.gguf");
    let key = |suffix: &str| format!("qwen2.rope.scaling.{suffix}");
    with_metadata(
        &paths.gguf,
        &yarn_gguf,
        vec![
            (key("type"), gguf_file::Value::String("yarn".into())),
            (key("factor"), gguf_file::Value::F32(4.0)),
            (key("original_context_length"), gguf_file::Value::U32(4096)),
        ],
    );
    let config = GgufSource::open(&yarn_gguf).expect("open").config().expect("config");
    assert_eq!(config.rope.scaling, tiny_yarn());
    assert_eq!(config.context_length, 4 * 4096, "the extended context");

    // The export writes YaRN into config.json, which reads back as the same scaling.
    let hf_dir = dir.path().join("yarn-hf");
    let gguf = GgufSource::open(&yarn_gguf).expect("open");
    let tokenizer = lcserve_model::tokenizer_from_gguf_metadata(gguf.metadata()).expect("tokenizer");
    export_hf_dir(&gguf, &tokenizer, None, &hf_dir).expect("export");
    let hf_config = HfSource::open(&hf_dir).expect("open hf").config().clone();
    assert_eq!((hf_config.rope.scaling.clone(), hf_config.context_length), (tiny_yarn(), 4 * 4096));

    let (from_gguf, from_hf, plain) = (
        Model::load(&yarn_gguf, &mut |_| {}).expect("load"),
        Model::load(&hf_dir, &mut |_| {}).expect("load"),
        Model::load(&paths.gguf, &mut |_| {}).expect("load"),
    );
    let reference = Reference::new(&GgufSource::open(&yarn_gguf).expect("open"));
    let unscaled = Reference::new(&GgufSource::open(&paths.gguf).expect("open"));
    for len in [1, 7, 33, 130] {
        let tokens = prompt(len, from_gguf.config.vocab_size, 40 + len as u64);
        let want: Vec<Vec<f32>> =
            reference.logits(&tokens).iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect();
        let got = all_logits(&from_gguf, &tokens);
        let err = worst(&got, &want);
        assert!(err <= F32_TOLERANCE, "{len} tokens: GGUF model vs reference {err:e}");
        let copy_err = worst(&all_logits(&from_hf, &tokens), &got);
        assert!(copy_err <= F32_TOLERANCE, "{len} tokens: HF copy vs GGUF {copy_err:e}");
        // The scaling matters (past one token, whose attention is over itself alone): without
        // it the logits are another function.
        if len == 1 {
            continue;
        }
        let without: Vec<Vec<f32>> =
            unscaled.logits(&tokens).iter().map(|r| r.iter().map(|&v| v as f32).collect()).collect();
        assert!(worst(&all_logits(&plain, &tokens), &without) <= F32_TOLERANCE);
        let effect = worst(&got, &without);
        assert!(effect > 100.0 * F32_TOLERANCE, "{len} tokens: YaRN changed the logits by only {effect:e}");
        eprintln!("{len} tokens: YaRN vs reference {err:e}, YaRN's effect on the logits {effect:e}");
    }
}

#[test]
fn yarn_metadata_that_cannot_run_as_written_is_refused_by_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = write_tiny_model_arch(dir.path(), 5, Architecture::Qwen2).expect("tiny model");
    let key = |suffix: &str| format!("qwen2.rope.scaling.{suffix}");
    for (name, value) in [("yarn_log_multiplier", 0.1f32), ("yarn_ext_factor", 0.5)] {
        let path = dir.path().join(format!("{name}.gguf"));
        with_metadata(
            &paths.gguf,
            &path,
            vec![
                (key("type"), gguf_file::Value::String("yarn".into())),
                (key("factor"), gguf_file::Value::F32(4.0)),
                (key(name), gguf_file::Value::F32(value)),
            ],
        );
        let err = GgufSource::open(&path).expect("open").config().expect_err("refused");
        assert!(err.to_string().contains(&key(name)), "{err}");
    }
}
