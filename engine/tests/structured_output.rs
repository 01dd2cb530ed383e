//! Structured output through the engine with the tiny random model: whatever the model prefers,
//! the text matches the constraint and ends when the match is whole; speculation stays
//! lossless; a resumed request continues where it left off.

mod support;

use std::sync::Arc;

use lcserve_engine::{
    Drafter, EngineError, EngineHandle, FinishReason, GenerateRequest, ReasoningBlock, SamplingParams, Speculation,
    StructuredOutput,
};
use serde_json::Value;
use support::{Oracle, collect, config, greedy, tiny_model, tokens};

const SCHEMA: &str = r#"{"type": "object",
    "properties": {"city": {"type": "string", "maxLength": 6}, "rank": {"type": "integer", "minimum": 0, "maximum": 999},
                   "open": {"type": "boolean"}, "kind": {"enum": ["town", "port"]}},
    "required": ["city", "rank", "open", "kind"], "additionalProperties": false}"#;

fn engine() -> (tempfile::TempDir, EngineHandle, usize) {
    let (dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model)).expect("engine");
    (dir, engine, vocab)
}

/// A request for `output` that stops at end-of-sequence like a client's would.
fn constrained(prompt: Vec<u32>, output: StructuredOutput, sampling: SamplingParams) -> GenerateRequest {
    let mut request = greedy(prompt, 120);
    request.stop.ignore_eos = false;
    request.sampling = sampling;
    request.structured_output = Some(output);
    request
}

fn check_document(text: &str) {
    let value: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(value["city"].as_str().is_some_and(|s| s.chars().count() <= 6), "{text}");
    assert!(value["rank"].as_u64().is_some_and(|r| r <= 999), "{text}");
    assert!(value["open"].is_boolean(), "{text}");
    assert!(matches!(value["kind"].as_str(), Some("town" | "port")), "{text}");
}

#[test]
fn greedy_and_sampled_outputs_are_documents_of_the_schema() -> Result<(), EngineError> {
    let (_dir, engine, vocab) = engine();
    for seed in 0..6 {
        for temperature in [0.0, 1.0] {
            let sampling = SamplingParams { temperature, seed: Some(seed), logprobs: Some(2), ..Default::default() };
            let output = StructuredOutput::JsonSchema(SCHEMA.into());
            let done = collect(&engine, constrained(tokens(20 + seed as usize, vocab, seed), output, sampling))?;
            assert_eq!(done.reason, FinishReason::Stop, "seed {seed}, T {temperature}: {:?}", done.text);
            check_document(&done.text);
        }
    }
    Ok(())
}

#[test]
fn a_whole_match_ends_the_request_even_when_eos_is_ignored() -> Result<(), EngineError> {
    let (_dir, engine, vocab) = engine();
    let choices = vec!["alpha".to_string(), "beta gamma".into()];
    for seed in 0..4 {
        let mut request = greedy(tokens(12, vocab, seed), 50);
        request.sampling = SamplingParams { temperature: 1.0, seed: Some(seed), ..Default::default() };
        request.structured_output = Some(StructuredOutput::Choice(choices.clone()));
        let done = collect(&engine, request)?;
        assert_eq!(done.reason, FinishReason::Stop);
        assert!(choices.contains(&done.text), "{:?}", done.text);
    }
    Ok(())
}

/// Proposes random tokens, most of which the constraint forbids.
#[derive(Debug)]
struct Noise(u32);

impl Drafter for Noise {
    fn propose(&self, tokens: &[u32], max: usize) -> Vec<u32> {
        (0..max as u32).map(|i| (tokens.len() as u32 * 31 + i * 17) % self.0).collect()
    }
}

#[test]
fn speculation_under_a_constraint_is_lossless() -> Result<(), EngineError> {
    let (_dir, engine, vocab) = engine();
    for seed in 0..4 {
        let prompt = tokens(30, vocab, seed);
        let output = StructuredOutput::JsonSchema(SCHEMA.into());
        let sampling = SamplingParams { temperature: 0.8, seed: Some(seed), ..Default::default() };
        let plain = collect(&engine, constrained(prompt.clone(), output.clone(), sampling.clone()))?;
        check_document(&plain.text);
        let oracle = Oracle { prompt_len: prompt.len(), answer: plain.tokens.clone() };
        let drafters: [(&str, Speculation); 3] = [
            ("ngram", Speculation::Ngram),
            ("noise", Speculation::Drafter(Arc::new(Noise(vocab as u32)))),
            ("oracle", Speculation::Drafter(Arc::new(oracle))),
        ];
        for (name, speculation) in drafters {
            let mut request = constrained(prompt.clone(), output.clone(), sampling.clone());
            request.speculation = speculation;
            let drafted = collect(&engine, request)?;
            assert_eq!(drafted.tokens, plain.tokens, "{name}, seed {seed}");
            assert_eq!(drafted.reason, plain.reason, "{name}, seed {seed}");
            if name == "oracle" {
                assert!(drafted.usage.speculative_accepted > 0, "the oracle's drafts are accepted");
            }
        }
    }
    Ok(())
}

/// Proposes nothing: any draft comes from the constraint.
#[derive(Debug)]
struct Silent;

impl Drafter for Silent {
    fn propose(&self, _: &[u32], _: usize) -> Vec<u32> {
        Vec::new()
    }
}

#[test]
fn forced_tokens_are_drafted_and_accepted() -> Result<(), EngineError> {
    let (_dir, engine, vocab) = engine();
    // Digits and brackets have no merges in the tiny vocabulary: one spelling, all forced.
    let output = StructuredOutput::Regex(r"\[0123456789\] (yes|no)".into());
    let prompt = tokens(16, vocab, 4);
    let plain = collect(&engine, constrained(prompt.clone(), output.clone(), SamplingParams::default()))?;
    assert!(plain.text == "[0123456789] yes" || plain.text == "[0123456789] no", "{:?}", plain.text);
    assert_eq!(plain.usage.speculative_proposed, 0, "no speculation asked for, no drafts");
    for speculation in [Speculation::Drafter(Arc::new(Silent)), Speculation::Auto] {
        let mut request = constrained(prompt.clone(), output.clone(), SamplingParams::default());
        request.speculation = speculation;
        let drafted = collect(&engine, request)?;
        assert_eq!(drafted.tokens, plain.tokens);
        assert!(drafted.usage.speculative_accepted >= 10, "the forced run is accepted: {:?}", drafted.usage);
    }
    Ok(())
}

#[test]
fn a_resumed_request_continues_the_match() -> Result<(), EngineError> {
    let (_dir, engine, vocab) = engine();
    let prompt = tokens(25, vocab, 3);
    let output = StructuredOutput::JsonSchema(SCHEMA.into());
    let whole = collect(&engine, constrained(prompt.clone(), output.clone(), SamplingParams::default()))?;
    check_document(&whole.text);
    for cut in [1, whole.tokens.len() / 2, whole.tokens.len() - 2] {
        let mut request = constrained(prompt.clone(), output.clone(), SamplingParams::default());
        request.generated = whole.tokens[..cut].to_vec();
        let rest = collect(&engine, request)?;
        assert_eq!(rest.tokens, whole.tokens[cut..], "resumed after {cut} tokens");
    }
    // Tokens the constraint forbids cannot be resumed from.
    let mut request = constrained(prompt, output, SamplingParams::default());
    request.generated = tokens(3, vocab, 9);
    match collect(&engine, request) {
        Err(EngineError::InvalidRequest { field: "generated", reason }) => {
            assert!(reason.contains("structured output"), "{reason}");
        }
        other => panic!("a resume off the constraint gave {other:?}"),
    }
    Ok(())
}

/// A thinking model's run on the tiny model, whose delimiters are two of its own tokens: the
/// first one the unconstrained model writes opens the block, and a later one it had not
/// written before closes it, so the block's bounds are known. Inside, the output is the free
/// run's; after, it is what the constraint gives a prompt that ends with the block.
#[test]
fn a_reasoning_block_runs_free_and_only_the_answer_after_it_is_constrained() -> Result<(), EngineError> {
    let (_dir, engine, vocab) = engine();
    let output = StructuredOutput::JsonSchema(SCHEMA.into());
    let request = |prompt: &[u32], reasoning: Option<ReasoningBlock>| {
        let mut request = greedy(prompt.to_vec(), 120);
        request.structured_output = Some(output.clone());
        request.reasoning = reasoning;
        request
    };
    for seed in 0..4 {
        let prompt = tokens(24, vocab, seed);
        let free = collect(&engine, greedy(prompt.clone(), 16))?.tokens;
        let Some(close) = (3..free.len()).find(|&i| !free[..i].contains(&free[i])) else {
            panic!("seed {seed}: the free run {free:?} repeats itself")
        };
        let block = ReasoningBlock { start: free[0], end: free[close], opened: false };
        let answer_after = |block_tokens: &[u32]| {
            let prompt = [&prompt, block_tokens].concat();
            collect(&engine, request(&prompt, None))
        };
        // The answer opens the block with its first token.
        let thought = collect(&engine, request(&prompt, Some(block)))?;
        let answer = answer_after(&free[..=close])?;
        assert_eq!(thought.tokens[..=close], free[..=close], "seed {seed}: the block is written freely");
        assert_eq!(thought.tokens[close + 1..], answer.tokens, "seed {seed}: the answer follows the block");
        assert_eq!((thought.reason, answer.reason), (FinishReason::Stop, FinishReason::Stop));
        check_document(&answer.text);
        // The prompt opened it: the answer starts inside.
        let opened = ReasoningBlock { opened: true, ..block };
        let inside = collect(&engine, request(&prompt, Some(opened)))?;
        assert_eq!(inside.tokens, thought.tokens, "seed {seed}: the same block, opened by the prompt");
        // A request resumed inside the block, at its end or after it (another worker took over)
        // continues as the whole one did.
        for cut in [1, close, close + 1, close + 3] {
            let mut resumed = request(&prompt, Some(block));
            resumed.generated = thought.tokens[..cut].to_vec();
            assert_eq!(collect(&engine, resumed)?.tokens, thought.tokens[cut..], "seed {seed}: resumed after {cut}");
        }
        // Speculation stays lossless across the block's end.
        let oracle = Oracle { prompt_len: prompt.len(), answer: thought.tokens.clone() };
        for speculation in [Speculation::Ngram, Speculation::Drafter(Arc::new(oracle))] {
            let mut drafted = request(&prompt, Some(opened));
            drafted.speculation = speculation;
            assert_eq!(collect(&engine, drafted)?.tokens, thought.tokens, "seed {seed}, speculating");
        }
        // An answer that does not open the block (its start token banned) is constrained from
        // its first token on.
        let unopened = |reasoning| {
            let mut request = request(&prompt, reasoning);
            request.sampling.logit_bias = [(0, -100.0)].into();
            collect(&engine, request)
        };
        let direct = unopened(Some(ReasoningBlock { start: 0, ..block }))?;
        assert_eq!(direct.tokens, unopened(None)?.tokens, "seed {seed}");
    }
    // Delimiters outside the vocabulary are refused by name.
    let outside = ReasoningBlock { start: 0, end: vocab as u32, opened: false };
    match engine.submit(request(&tokens(8, vocab, 1), Some(outside))) {
        Err(EngineError::InvalidRequest { field: "reasoning", reason }) => {
            assert!(reason.contains("outside"), "{reason}")
        }
        other => panic!("a block ending outside the vocabulary gave {other:?}"),
    }
    Ok(())
}

#[test]
fn an_unusable_constraint_is_refused_naming_the_field() {
    let (_dir, engine, vocab) = engine();
    for output in [
        StructuredOutput::Regex("(unclosed".into()),
        StructuredOutput::JsonSchema("[1, 2".into()),
        StructuredOutput::Choice(Vec::new()),
    ] {
        match engine.submit(constrained(tokens(8, vocab, 1), output.clone(), SamplingParams::default())) {
            Err(EngineError::InvalidRequest { field: "structured_output", .. }) => {}
            other => panic!("{output:?} gave {other:?}"),
        }
    }
}
