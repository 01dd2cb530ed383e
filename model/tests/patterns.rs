//! Sparse prefill head patterns: the JSON file format, and the sparse backend in a real
//! forward pass of the tiny random model.

mod support;

use lcserve_common::BlockId;
use lcserve_kernels::sparse::HeadPattern;
use lcserve_model::{
    AttentionBackend, DEFAULT_PATTERN, DenseAttention, HeadPatterns, KvArena, LogitsWanted, Model, ModelError,
    SequenceInput, SparseAttention,
};
use support::{max_rel_diff, prompt};

fn tiny_model() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = lcserve_model::write_tiny_model(dir.path(), 5).expect("tiny model");
    let model = Model::load(&paths.gguf, &mut |_| {}).expect("load tiny");
    (dir, model)
}

#[test]
fn files_parse_in_both_layouts_and_round_trip() {
    let (_dir, model) = tiny_model();
    let config = &model.config;
    assert!(config.num_layers >= 2 && config.num_heads >= 2, "the test needs two layers and two heads");
    // MInference's own layout: a bare list of per-layer objects.
    let bare = r#"[{"0": ["vertical_and_slash", 30, 800, 0.97], "1": ["stream_llm", 64, 512]},
                   {"1": ["block_sparse", 8, 0, 0.5]}]"#;
    let patterns = HeadPatterns::from_json(bare, config).expect("parses");
    assert_eq!(patterns.layer(0)[0], HeadPattern::VerticalSlash { vertical: 30, slash: 800 });
    assert_eq!(patterns.layer(0)[1], HeadPattern::AShape { n_init: 64, n_local: 512, n_last: 0 });
    assert_eq!(patterns.layer(1)[0], DEFAULT_PATTERN, "heads left out use the default");
    assert_eq!(patterns.layer(1)[1], HeadPattern::BlockSparse { blocks: 8 });
    let again = HeadPatterns::from_json(&patterns.to_json(), config).expect("own output parses");
    assert_eq!(again, patterns);
    assert_eq!(again.hash(), patterns.hash());
    assert_ne!(patterns.hash(), HeadPatterns::default_for(config).hash(), "the hash names the patterns");
}

#[test]
fn bad_files_name_what_is_wrong() {
    let (_dir, model) = tiny_model();
    let config = &model.config;
    let heads = config.num_heads;
    let layers = config.num_layers;
    let cases = [
        ("not json".to_owned(), "expected"),
        (r#"{"format": "other/9", "layers": []}"#.to_owned(), "unknown format"),
        (r#"[{"0": ["diagonal", 1, 2]}]"#.to_owned(), "unknown pattern"),
        (r#"[{"0": ["a_shape", 64, 0]}]"#.to_owned(), "local window must be positive"),
        (r#"[{"0": ["vertical_and_slash", -1, 2]}]"#.to_owned(), "non-negative integer"),
        (r#"[{"x": ["dense"]}]"#.to_owned(), "not an index"),
        (format!(r#"[{{"{heads}": ["dense"]}}]"#), "the model has"),
        (format!("[{}]", vec!["{}"; layers + 1].join(",")), "layers, the model has"),
    ];
    for (text, expected) in cases {
        match HeadPatterns::from_json(&text, config) {
            Err(ModelError::InvalidPatterns(reason)) => {
                assert!(reason.contains(expected), "{text}: {reason:?} lacks {expected:?}")
            }
            other => panic!("{text}: {other:?}"),
        }
    }
    let missing = HeadPatterns::load(std::path::Path::new("/nonexistent/patterns.json"), config);
    assert!(matches!(missing, Err(ModelError::Io { .. })));
}

/// Runs `tokens` through a fresh arena in chunks of `chunk` with `attention`; last logits.
fn run(model: &Model, tokens: &[u32], chunk: usize, attention: &dyn AttentionBackend) -> Vec<f32> {
    let block = 16;
    let mut arena = KvArena::new(model.kv_layout(block), tokens.len().div_ceil(block));
    let table: Vec<BlockId> = (0..tokens.len().div_ceil(block) as u32).map(BlockId).collect();
    let mut logits = Vec::new();
    for start in (0..tokens.len()).step_by(chunk) {
        let piece = &tokens[start..(start + chunk).min(tokens.len())];
        let input = SequenceInput {
            tokens: piece,
            start_pos: start,
            block_table: &table,
            logits: LogitsWanted::Last,
            attention,
            draft_tree: None,
        };
        logits = model.forward(&[input], &mut arena).expect("forward").row(0).to_vec();
    }
    logits
}

#[test]
fn sparse_backend_with_full_budgets_equals_dense_and_counts_what_it_skips() {
    let (_dir, model) = tiny_model();
    let len = 300;
    let tokens = prompt(len, model.config.vocab_size, 3);
    let dense = run(&model, &tokens, 128, &DenseAttention);

    let everything = HeadPatterns::uniform(&model.config, HeadPattern::VerticalSlash { vertical: len, slash: len });
    let backend = SparseAttention::new(&everything);
    let sparse = run(&model, &tokens, 128, &backend);
    let err = max_rel_diff(&sparse, &dense);
    assert!(err < 1e-4, "full budgets: relative error {err}");
    assert_eq!(backend.stats().density(), 1.0);

    let narrow = HeadPatterns::uniform(&model.config, HeadPattern::AShape { n_init: 4, n_local: 64, n_last: 0 });
    let backend = SparseAttention::new(&narrow);
    let logits = run(&model, &tokens, 128, &backend);
    assert!(logits.iter().all(|v| v.is_finite()));
    let density = backend.stats().density();
    assert!(density < 0.8, "a 68-token window over 300 tokens computes little: density {density}");
    // A chunk of fewer than 64 queries (the tail of 300 = 2·128 + 44) is attended densely.
    assert!(backend.stats().computed_pairs > 0);
}
