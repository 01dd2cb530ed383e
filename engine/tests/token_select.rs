//! TokenSelect decode through the engine: a budget that covers the context is dense decoding
//! exactly; a smaller one attends to exactly sink + budget + window keys per step; bad
//! settings are refused naming the field.

mod support;

use std::sync::Arc;

use lcserve_engine::{EngineError, EngineHandle, GenerateRequest, KvSelection};
use support::{collect, config, greedy, tiny_model, tokens};

fn engine() -> (tempfile::TempDir, EngineHandle) {
    let (dir, model) = tiny_model();
    let engine = EngineHandle::start(Arc::clone(&model), config(16, 512, &model)).expect("start");
    (dir, engine)
}

fn selecting(prompt: Vec<u32>, max_tokens: usize, selection: KvSelection) -> GenerateRequest {
    GenerateRequest { kv_selection: Some(selection), ..greedy(prompt, max_tokens) }
}

#[test]
fn a_budget_covering_the_context_is_dense_decoding() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    for (seed, len) in [(1, 1), (2, 63), (3, 64), (4, 65), (5, 300)] {
        let prompt = tokens(len, vocab, seed);
        let dense = collect(&engine, greedy(prompt.clone(), 16)).expect("dense");
        let selection = KvSelection { budget: 400, sink: 4, window: 8, ..KvSelection::default() };
        let selected = collect(&engine, selecting(prompt, 16, selection)).expect("selected");
        assert_eq!(selected.tokens, dense.tokens, "prompt of {len} tokens");
        assert_eq!(selected.usage.kv_selection_budget, 400);
        assert_eq!(selected.usage.kv_selection_density, 1.0, "prompt of {len} tokens");
        assert_eq!((dense.usage.kv_selection_budget, dense.usage.kv_selection_density), (0, 0.0));
    }
}

#[test]
fn a_small_budget_attends_to_sink_budget_and_window_only() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    let (prompt_len, max_tokens) = (200, 10);
    for reuse_threshold in [1.0, 0.9, -1.0] {
        let selection = KvSelection { budget: 16, sink: 4, window: 8, reuse_threshold };
        let request = selecting(tokens(prompt_len, vocab, 7), max_tokens, selection);
        let done = collect(&engine, request).expect("selected");
        assert_eq!(done.tokens.len(), max_tokens);
        // Decode step j runs position prompt_len + j - 1 over prompt_len + j cached keys.
        let cached: usize = (1..max_tokens).map(|j| prompt_len + j).sum();
        let expected = (28 * (max_tokens - 1)) as f64 / cached as f64;
        let density = done.usage.kv_selection_density;
        assert!((density - expected).abs() < 1e-12, "threshold {reuse_threshold}: {density} vs {expected}");
    }
}

/// TokenSelect's answer is decoded with lossy attention, so its blocks stay private: the next
/// turn reuses only the prompt's blocks (and recomputes the answer exactly), and a dense
/// request's cached answer never replaces a block under TokenSelect decoding.
#[test]
fn token_select_answers_stay_out_of_the_prefix_cache() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    let prompt = tokens(100, vocab, 11);
    let selection = KvSelection { budget: 16, sink: 4, window: 8, ..KvSelection::default() };
    let alone = collect(&engine, selecting(prompt.clone(), 40, selection)).expect("selected").tokens;
    let mut next_turn = prompt.clone();
    next_turn.extend_from_slice(&alone);
    let next = collect(&engine, greedy(next_turn, 1)).expect("next turn");
    assert_eq!(next.usage.cached_tokens, 96, "the prompt's 6 full blocks, none of the answer's");
    // A dense answer to the same prompt is cached, and TokenSelect decodes as before.
    let dense = collect(&engine, greedy(prompt.clone(), 40)).expect("dense");
    let mut dense_turn = prompt.clone();
    dense_turn.extend_from_slice(&dense.tokens);
    assert_eq!(collect(&engine, greedy(dense_turn, 1)).expect("dense turn").usage.cached_tokens, 128);
    assert_eq!(collect(&engine, selecting(prompt, 40, selection)).expect("again").tokens, alone);
}

#[test]
fn bad_selections_are_refused_naming_the_field() {
    let (_dir, engine) = engine();
    let cases = [
        (KvSelection { budget: 0, ..KvSelection::default() }, "kv_selection.budget"),
        (KvSelection { window: 0, ..KvSelection::default() }, "kv_selection.window"),
        (KvSelection { reuse_threshold: 1.5, ..KvSelection::default() }, "kv_selection.reuse_threshold"),
        (KvSelection { reuse_threshold: f32::NAN, ..KvSelection::default() }, "kv_selection.reuse_threshold"),
        (KvSelection { sink: usize::MAX, ..KvSelection::default() }, "kv_selection"),
    ];
    for (selection, field) in cases {
        match engine.submit(selecting(vec![5, 6, 7], 4, selection)) {
            Err(EngineError::InvalidRequest { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{selection:?}: expected an invalid {field}, got {:?}", other.map(|_| ())),
        }
    }
    // The engine keeps serving.
    assert_eq!(collect(&engine, greedy(vec![5, 6, 7], 4)).expect("next").tokens.len(), 4);
}
