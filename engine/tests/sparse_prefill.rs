//! Sparse (MInference) prefill through the engine: per-request modes, the auto threshold,
//! reported density, and the separate block namespace of sparse-prefilled KV.

mod support;

use lcserve_engine::{EngineConfig, EngineError, EngineHandle, GenerateRequest, PrefillMode};
use support::{collect, config, greedy, tiny_model, tokens};

/// An engine whose sparse heads keep a 4-token sink and a 64-token window (written as a
/// patterns file), switching to sparse at 256 prompt tokens under auto.
fn engine_with_window(dir: &tempfile::TempDir) -> EngineHandle {
    let (_model_dir, model) = tiny_model();
    let heads: Vec<String> = (0..model.config.num_heads).map(|h| format!(r#""{h}": ["a_shape", 4, 64]"#)).collect();
    let layer = format!("{{{}}}", heads.join(", "));
    let file = dir.path().join("patterns.json");
    std::fs::write(&file, format!("[{}]", vec![layer; model.config.num_layers].join(", "))).expect("write");
    let config = EngineConfig {
        prefill_chunk: 128,
        sparse_patterns: Some(file),
        sparse_min_tokens: 256,
        ..config(16, 256, &model)
    };
    EngineHandle::start(model, config).expect("start")
}

fn request(prompt: &[u32], mode: PrefillMode) -> GenerateRequest {
    GenerateRequest { prefill_mode: mode, ..greedy(prompt.to_vec(), 4) }
}

#[test]
fn modes_choose_dense_or_sparse_and_report_density() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with_window(&dir);
    let vocab = engine.model().config.vocab_size;
    let long = tokens(600, vocab, 1);
    let short = tokens(200, vocab, 2);

    let dense = collect(&engine, request(&long, PrefillMode::Dense)).expect("dense");
    assert_eq!(dense.usage.prefill_density, 1.0);
    let sparse = collect(&engine, request(&long, PrefillMode::Sparse)).expect("sparse");
    let density = sparse.usage.prefill_density;
    assert!(density > 0.0 && density < 0.5, "a 68-token window over 600 tokens: density {density}");
    assert_eq!(sparse.usage.cached_tokens, 0, "dense-prefilled blocks are not reused by a sparse prefill");

    let auto_long =
        collect(&engine, GenerateRequest { cache_salt: b"other".to_vec(), ..request(&long, PrefillMode::Auto) })
            .expect("auto long");
    assert!(auto_long.usage.prefill_density < 1.0, "auto prefills 600 tokens sparsely");
    let auto_short = collect(&engine, request(&short, PrefillMode::Auto)).expect("auto short");
    assert_eq!(auto_short.usage.prefill_density, 1.0, "auto prefills 200 tokens densely");
    assert!(engine.prefills_sparsely(PrefillMode::Auto, 256) && !engine.prefills_sparsely(PrefillMode::Auto, 255));
}

#[test]
fn sparse_kv_is_reused_only_by_sparse_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_with_window(&dir);
    let prompt = tokens(500, engine.model().config.vocab_size, 3);
    let first = collect(&engine, request(&prompt, PrefillMode::Sparse)).expect("first");
    assert_eq!(first.usage.cached_tokens, 0);
    let again = collect(&engine, request(&prompt, PrefillMode::Sparse)).expect("again");
    assert_eq!(again.usage.cached_tokens, 496, "every full block of the sparse prefill is reused");
    assert_eq!(again.tokens, first.tokens);
    let dense = collect(&engine, request(&prompt, PrefillMode::Dense)).expect("dense");
    assert_eq!(dense.usage.cached_tokens, 0, "sparse-prefilled KV never serves a dense request");
    assert_ne!(
        engine.request_namespace(b"", PrefillMode::Sparse, 500),
        engine.request_namespace(b"", PrefillMode::Dense, 500)
    );
}

#[test]
fn full_budgets_generate_what_dense_does() {
    let (_model_dir, model) = tiny_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("all.json");
    let entry = r#"["vertical_and_slash", 4096, 4096]"#;
    let layer = format!(
        "{{{}}}",
        (0..model.config.num_heads).map(|h| format!(r#""{h}": {entry}"#)).collect::<Vec<_>>().join(",")
    );
    std::fs::write(&file, format!("[{}]", vec![layer; model.config.num_layers].join(","))).expect("write");
    let config = EngineConfig { prefill_chunk: 128, sparse_patterns: Some(file), ..config(16, 256, &model) };
    let engine = EngineHandle::start(model, config).expect("start");
    let prompt = tokens(450, engine.model().config.vocab_size, 4);
    let dense = collect(&engine, GenerateRequest { prefill_mode: PrefillMode::Dense, ..greedy(prompt.clone(), 16) });
    let sparse = collect(&engine, GenerateRequest { prefill_mode: PrefillMode::Sparse, ..greedy(prompt, 16) });
    let (dense, sparse) = (dense.expect("dense"), sparse.expect("sparse"));
    assert_eq!(sparse.tokens, dense.tokens);
    assert_eq!(sparse.usage.prefill_density, 1.0);
}

#[test]
fn a_bad_patterns_file_is_a_config_error() {
    let (_model_dir, model) = tiny_model();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.json");
    std::fs::write(&file, r#"[{"0": ["spiral", 1, 2]}]"#).expect("write");
    let config = EngineConfig { sparse_patterns: Some(file), ..config(16, 64, &model) };
    match EngineHandle::start(model, config) {
        Err(EngineError::InvalidConfig { field: "sparse_patterns", reason }) => {
            assert!(reason.contains("unknown pattern \"spiral\""), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}
