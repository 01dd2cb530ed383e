//! Prompt logprobs: scored chunk by chunk inside continuous batching, they equal the log-softmax
//! of one whole-prompt forward pass, arrive once before the first token, and are computed even
//! when the prompt's blocks are cached.

mod support;

use lcserve_common::BlockId;
use lcserve_engine::{EngineConfig, EngineError, EngineEvent, EngineHandle, GenerateRequest, TokenLogprobs};
use lcserve_model::{DenseAttention, KvArena, KvDtype, LogitsWanted, Model, SequenceInput};
use support::{config, greedy, tiny_model, tokens};

const TOP: usize = 3;

/// The log-softmax rows of one forward pass over the whole prompt (f32 KV, no chunks).
fn reference(model: &Model, prompt: &[u32]) -> Vec<Vec<f64>> {
    let block_size = 16;
    let blocks = prompt.len().div_ceil(block_size);
    let mut arena = KvArena::with_dtype(model.kv_layout(block_size), blocks, KvDtype::F32);
    let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
    let input = SequenceInput {
        tokens: prompt,
        start_pos: 0,
        block_table: &table,
        logits: LogitsWanted::All,
        attention: &DenseAttention,
        draft_tree: None,
    };
    let logits = model.forward(&[input], &mut arena).expect("forward");
    logits
        .rows_of(0)
        .map(|row| {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_z = f64::from(max) + row.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln();
            row.iter().map(|&x| f64::from(x) - log_z).collect()
        })
        .collect()
}

/// The request's prompt logprobs, checking that they come once and before any token.
fn scored(engine: &EngineHandle, request: GenerateRequest) -> (Vec<TokenLogprobs>, usize) {
    let mut stream = engine.submit(request).expect("submit");
    let (mut scored, mut tokens) = (None, 0);
    loop {
        match stream.blocking_next().expect("a terminal event") {
            EngineEvent::PromptLogprobs(rows) => {
                assert!(scored.is_none() && tokens == 0, "once, before the first token");
                scored = Some(rows);
            }
            EngineEvent::Token { .. } => tokens += 1,
            EngineEvent::Kv(_) => {}
            EngineEvent::Finished { usage, .. } => return (scored.expect("prompt logprobs"), usage.cached_tokens),
            EngineEvent::Error(error) => panic!("{error}"),
        }
    }
}

fn assert_matches(model: &Model, prompt: &[u32], got: &[TokenLogprobs]) {
    let expected = reference(model, prompt);
    assert_eq!(got.len(), prompt.len() - 1, "one entry per token after the first");
    for (i, entry) in got.iter().enumerate() {
        let row = &expected[i];
        let token = prompt[i + 1] as usize;
        assert!((f64::from(entry.logprob) - row[token]).abs() < 1e-4, "token {}: {entry:?} vs {}", i + 1, row[token]);
        let mut best: Vec<usize> = (0..row.len()).collect();
        best.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let ids: Vec<usize> = entry.top.iter().map(|&(id, _)| id as usize).collect();
        assert_eq!(ids, best[..TOP], "token {}: the top {TOP}", i + 1);
    }
}

fn engine(model: &std::sync::Arc<Model>) -> EngineHandle {
    let config = EngineConfig { prefill_chunk: 16, kv_dtype: Some(KvDtype::F32), ..config(16, 128, model) };
    EngineHandle::start(std::sync::Arc::clone(model), config).expect("engine")
}

#[test]
fn chunked_prompt_logprobs_equal_one_forward_pass_of_the_whole_prompt() {
    let (_dir, model) = tiny_model();
    let engine = engine(&model);
    let vocab = model.config.vocab_size;
    // Several at once, so chunks of different prompts share steps.
    let prompts: Vec<Vec<u32>> = [1usize, 2, 15, 16, 17, 63, 64, 65, 130]
        .iter()
        .enumerate()
        .map(|(seed, &len)| tokens(len, vocab, seed as u64 + 1))
        .collect();
    let streams: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let request = GenerateRequest { prompt_logprobs: Some(TOP), ..greedy(prompt.clone(), 3) };
            std::thread::spawn({
                let engine = engine.clone();
                move || scored(&engine, request)
            })
        })
        .collect();
    for (prompt, stream) in prompts.iter().zip(streams) {
        let (got, cached) = stream.join().expect("request thread");
        assert_eq!(cached, 0);
        assert_matches(&model, prompt, &got);
    }
}

#[test]
fn a_cached_prompt_is_computed_again_to_be_scored() {
    let (_dir, model) = tiny_model();
    let engine = engine(&model);
    let prompt = tokens(100, model.config.vocab_size, 7);
    let first = support::collect(&engine, greedy(prompt.clone(), 2)).expect("first");
    assert_eq!(first.usage.cached_tokens, 0);
    let (got, cached) = scored(&engine, GenerateRequest { prompt_logprobs: Some(TOP), ..greedy(prompt.clone(), 2) });
    assert_eq!(cached, 0, "no cached prefix: its blocks have no logits");
    assert_matches(&model, &prompt, &got);
    let again = support::collect(&engine, greedy(prompt.clone(), 2)).expect("again");
    assert!(again.usage.cached_tokens >= 96, "the cache still serves plain requests: {:?}", again.usage);
    assert_eq!(again.tokens, first.tokens);
}

#[test]
fn too_many_alternatives_are_refused_by_name() {
    let (_dir, model) = tiny_model();
    let engine = engine(&model);
    let request = GenerateRequest { prompt_logprobs: Some(21), ..greedy(vec![1, 2, 3], 1) };
    match engine.submit(request).and_then(lcserve_engine::EventStream::blocking_collect) {
        Err(EngineError::InvalidRequest { field, .. }) => assert_eq!(field, "prompt_logprobs"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn preempted_sequences_score_their_prompts_exactly_once() {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    // Six prompts and their answers in a pool of 14 blocks: sequences get preempted and
    // recompute, before or after their prompt was scored.
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| tokens(40 + 13 * i, vocab, 10 + i as u64)).collect();
    let config = EngineConfig { prefill_chunk: 16, kv_dtype: Some(KvDtype::F32), ..config(16, 28, &model) };
    let tight = EngineHandle::start(std::sync::Arc::clone(&model), config).expect("engine");
    let streams: Vec<_> = prompts
        .iter()
        .map(|prompt| {
            let request = GenerateRequest { prompt_logprobs: Some(TOP), ..greedy(prompt.clone(), 40) };
            let engine = tight.clone();
            std::thread::spawn(move || scored(&engine, request))
        })
        .collect();
    for (prompt, stream) in prompts.iter().zip(streams) {
        let (got, _) = stream.join().expect("request thread");
        assert_matches(&model, prompt, &got);
    }
}
