//! Lossless speculation on the reference model: for ten prompts, greedy output with each real
//! drafter (prompt lookup, `auto`, a draft model, and the model drafting for itself) is
//! token-identical to plain greedy decoding, with exact and with 8-bit activations, and with
//! TokenSelect decoding to plain TokenSelect decoding; a draft model with another vocabulary is
//! refused at start.

use std::sync::Arc;

use lcserve_engine::{
    EngineConfig, EngineError, EngineHandle, GenerateRequest, KvSelection, Speculation, StopConditions,
};
use lcserve_model::{Activations, ChatMessage, Model};
use lcserve_tests::reference_model_path;
use lcserve_text::haystack::{SampleSpec, Task, generate};

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

/// 8-bit activations round each block of a product's input, so a 1-ulp difference between a
/// verification row and the plain decode step can move a rounding and flip a close argmax:
/// verification must reproduce the decode step bit for bit. Checked end to end on chat
/// requests to summarize documents of 700 to 3000 tokens (contexts past several of the
/// attention kernel's key parts), where prompt lookup drafts trees and self-drafting chains.
#[test]
fn drafts_stay_lossless_under_8bit_activations() {
    let model = int8_reference_model();
    let prompts = summary_prompts(&model, &[(700, 1), (1500, 2), (3000, 3)]);
    let engine = EngineHandle::start(Arc::clone(&model), EngineConfig { threads: 2, ..EngineConfig::default() })
        .expect("engine");
    let plain = summarize(&engine, &prompts, Speculation::Off, None);
    for speculation in [Speculation::Ngram, Speculation::SelfDraft] {
        for (i, (got, expected)) in
            summarize(&engine, &prompts, speculation.clone(), None).iter().zip(&plain).enumerate()
        {
            assert_eq!(got.tokens, expected.tokens, "int8 {speculation:?}: document {i}");
        }
    }
}

/// With TokenSelect decoding each verification row selects its keys as its decode step would,
/// so drafts keep TokenSelect's tokens. (Selecting once for all the rows changed this text.)
#[test]
fn drafts_keep_token_select_output() {
    let model = int8_reference_model();
    let prompts = summary_prompts(&model, &[(700, 1), (1500, 2)]);
    let engine = EngineHandle::start(Arc::clone(&model), EngineConfig { threads: 2, ..EngineConfig::default() })
        .expect("engine");
    let selection = Some(KvSelection { budget: 64, sink: 16, window: 32, ..KvSelection::default() });
    let plain = summarize(&engine, &prompts, Speculation::Off, selection);
    assert!(plain.iter().all(|done| done.usage.kv_selection_density < 0.2), "the selection is sparse");
    for speculation in [Speculation::Ngram, Speculation::SelfDraft] {
        let done = summarize(&engine, &prompts, speculation.clone(), selection);
        for (i, (got, expected)) in done.iter().zip(&plain).enumerate() {
            assert_eq!(got.tokens, expected.tokens, "{speculation:?} with TokenSelect: document {i}");
        }
        assert!(done.iter().map(|d| d.usage.speculative_accepted).sum::<usize>() > 0, "{speculation:?} drafted");
    }
}

fn int8_reference_model() -> Arc<Model> {
    let mut model = Model::load(&reference_model_path(), &mut |_| {}).expect("reference model");
    model.activations = Activations::Int8;
    Arc::new(model)
}

/// Chat requests to summarize passkey documents of about `(tokens, seed)`.
fn summary_prompts(model: &Model, documents: &[(usize, u64)]) -> Vec<Vec<u32>> {
    let template = model.chat_template.as_ref().expect("the reference model has a chat template");
    documents
        .iter()
        .map(|&(target_tokens, seed)| {
            let spec = SampleSpec { task: Task::Passkey, seed, depth: 0.5, target_tokens, overhead_tokens: 0 };
            let document = generate(&spec, &model.tokenizer).expect("document").context;
            let ask = format!("{document}\n\nSummarize the text above, quoting its key sentences.");
            let text = template
                .render(&[ChatMessage::new("user", ask)], true, &model.tokenizer)
                .expect("chat template");
            model.tokenizer.encode(&text, false).expect("encode")
        })
        .collect()
}

/// 64 greedy tokens for each prompt, all submitted at once.
fn summarize(
    engine: &EngineHandle,
    prompts: &[Vec<u32>],
    speculation: Speculation,
    kv_selection: Option<KvSelection>,
) -> Vec<lcserve_engine::Completion> {
    let streams: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let stop = StopConditions { max_tokens: 64, ignore_eos: true, ..StopConditions::default() };
            let request = GenerateRequest {
                prompt: prompt.clone(),
                stop,
                speculation: speculation.clone(),
                kv_selection,
                ..GenerateRequest::default()
            };
            engine.submit(request).expect("submit")
        })
        .collect();
    streams.into_iter().map(|s| s.blocking_collect().expect("generate")).collect()
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
