//! Lossless speculation on the reference model: for ten prompts, greedy output with each real
//! drafter (prompt lookup, `auto`, a draft model, and the model drafting for itself) is
//! token-identical to plain greedy decoding; a draft model with another vocabulary is refused
//! at start.

use std::sync::Arc;

use lcserve_engine::{EngineConfig, EngineError, EngineHandle, GenerateRequest, Speculation, StopConditions};
use lcserve_model::Model;
use lcserve_tests::reference_model_path;

const PROMPTS: [&str; 10] = [
    "The capital of France is",
    "List the days of the week: Monday, Tuesday,",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Repeat after me: the quick brown fox jumps over the lazy dog. The quick brown fox",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
    "The three primary colors are red, blue and",
    "Translate to French: Good morning, how are you?",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "A haiku about winter:\n",
];

fn greedy(model: &Model, prompt: &str, speculation: Speculation) -> GenerateRequest {
    GenerateRequest {
        prompt: model.tokenizer.encode(prompt, true).expect("encode"),
        stop: StopConditions { max_tokens: 16, ignore_eos: true, ..StopConditions::default() },
        speculation,
        ..GenerateRequest::default()
    }
}

#[test]
fn every_drafter_reproduces_plain_greedy_output() {
    let path = reference_model_path();
    let model = Arc::new(Model::load(&path, &mut |_| {}).expect("reference model"));
    // The target as its own draft model, reading 32 recent tokens: mostly right, not always.
    let config = EngineConfig { threads: 2, draft_model: Some(path), draft_window: 32, ..EngineConfig::default() };
    let engine = EngineHandle::start(Arc::clone(&model), config).expect("engine");
    let run = |speculation: fn() -> Speculation| {
        let streams: Vec<_> =
            PROMPTS.iter().map(|p| engine.submit(greedy(&model, p, speculation())).expect("submit")).collect();
        streams.into_iter().map(|s| s.blocking_collect().expect("generate")).collect::<Vec<_>>()
    };
    let plain = run(|| Speculation::Off);
    for (name, speculation) in [
        ("ngram", (|| Speculation::Ngram) as fn() -> Speculation),
        ("auto", || Speculation::Auto),
        ("draft", || Speculation::Draft),
        ("self", || Speculation::SelfDraft),
    ] {
        let done = run(speculation);
        for ((got, expected), prompt) in done.iter().zip(&plain).zip(PROMPTS) {
            assert_eq!(got.tokens, expected.tokens, "{name}: {prompt:?}");
        }
        let proposed: usize = done.iter().map(|d| d.usage.speculative_proposed).sum();
        let accepted: usize = done.iter().map(|d| d.usage.speculative_accepted).sum();
        assert!(accepted <= proposed);
        if name != "auto" {
            assert!(accepted > 0, "{name}: {accepted} of {proposed} drafts accepted");
        }
        if name == "draft" || name == "self" {
            assert!(2 * accepted > proposed, "its own draft model: {accepted} of {proposed} accepted");
        }
    }
}

#[test]
fn a_draft_model_with_another_vocabulary_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tiny = lcserve_model::write_tiny_model(dir.path(), 0).expect("tiny model");
    let model = Arc::new(Model::load(&reference_model_path(), &mut |_| {}).expect("reference model"));
    let config = EngineConfig { threads: 1, draft_model: Some(tiny.gguf), ..EngineConfig::default() };
    match EngineHandle::start(model, config) {
        Err(EngineError::InvalidConfig { field, reason }) => {
            assert_eq!(field, "draft_model");
            assert!(reason.contains("share the target's tokenizer"), "{reason}");
        }
        other => panic!("expected an invalid draft_model, got {:?}", other.map(|_| ())),
    }
}
