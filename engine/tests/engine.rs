//! The engine end to end on real models: scheduling, prefix reuse, cancellation, preemption,
//! validation.

use std::path::PathBuf;
use std::sync::Arc;

use lcserve_engine::{
    EngineConfig, EngineDevice, EngineError, EngineEvent, EngineHandle, FinishReason, GenerateRequest, GpuWeights,
    MatchedStop, SamplingParams,
};
use lcserve_model::{ChatMessage, Model};

mod support;
use support::{collect, config, greedy, tiny_model, tokens, wait_until};

#[test]
fn reference_model_answers_the_capital_of_france() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct.Q4_1.gguf");
    let path = std::env::var_os("LCSERVE_MODEL_DIR")
        .map_or(path, |d| PathBuf::from(d).join("smollm2-135m-instruct.Q4_1.gguf"));
    if !path.exists() {
        eprintln!("note: {} absent (run scripts/fetch-model); skipping", path.display());
        return;
    }
    let model = Arc::new(Model::load(&path, &mut |_| {}).expect("load"));
    let template = model.chat_template.as_ref().expect("template");
    let text = template
        .render(&[ChatMessage::new("user", "What is the capital of France?")], true, &model.tokenizer)
        .expect("render");
    let prompt = model.tokenizer.encode(&text, false).expect("encode");
    let engine =
        EngineHandle::start(model.clone(), EngineConfig { threads: 2, ..EngineConfig::default() }).expect("engine");
    let mut request = greedy(prompt, 48);
    request.stop.ignore_eos = false;
    let outcome = collect(&engine, request).expect("generate");
    assert!(outcome.text.contains("Paris"), "answer: {:?}", outcome.text);
    assert_eq!(outcome.reason, FinishReason::Stop, "the model ends its answer with <|im_end|>");
}

#[test]
fn prefix_is_reused_by_a_second_request() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model)).expect("engine");
    let shared = tokens(200, model.config.vocab_size, 1);
    let first = collect(&engine, greedy(shared.clone(), 4)).expect("first");
    assert_eq!(first.usage.cached_tokens, 0);
    let before = engine.blocking_stats().expect("stats").prefill_tokens;

    let mut extended = shared.clone();
    extended.extend(tokens(30, model.config.vocab_size, 2));
    let second = collect(&engine, greedy(extended.clone(), 4)).expect("second");
    // 200 shared tokens = 12 full blocks of 16.
    assert_eq!(second.usage.cached_tokens, 192);
    let computed = engine.blocking_stats().expect("stats").prefill_tokens - before;
    assert_eq!(computed as usize, extended.len() - 192, "only the uncached tokens are computed");

    // Reuse is exact: the same request without the cache gives the same tokens.
    let mut fresh = greedy(extended, 4);
    fresh.cache_salt = b"another tenant".to_vec();
    let uncached = collect(&engine, fresh).expect("fresh");
    assert_eq!(uncached.usage.cached_tokens, 0, "a different salt never shares blocks");
    assert_eq!(uncached.tokens, second.tokens);
}

#[test]
fn identical_prompt_reuses_all_but_the_last_block() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model)).expect("engine");
    let prompt = tokens(64, model.config.vocab_size, 3);
    let a = collect(&engine, greedy(prompt.clone(), 3)).expect("a");
    let b = collect(&engine, greedy(prompt, 3)).expect("b");
    assert_eq!(b.usage.cached_tokens, 48, "the last token must run to produce logits");
    assert_eq!(a.tokens, b.tokens);
}

#[test]
fn dropping_the_stream_frees_the_sequence() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 256, &model)).expect("engine");
    let mut stream = engine.submit(greedy(tokens(100, model.config.vocab_size, 4), 3000)).expect("submit");
    assert!(matches!(stream.blocking_next(), Some(EngineEvent::Token { .. })));
    drop(stream);
    wait_until(&engine, "after cancel", |s| s.used_blocks == 0 && s.running == 0);
}

#[test]
fn preemption_under_a_small_pool_keeps_outputs_exact() {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..6).map(|i| tokens(40 + 13 * i, vocab, 10 + i as u64)).collect();
    // Alone, with plenty of memory.
    let roomy = EngineHandle::start(model.clone(), config(16, 256, &model)).expect("engine");
    let expected: Vec<Vec<u32>> =
        prompts.iter().map(|p| collect(&roomy, greedy(p.clone(), 40)).expect("alone").tokens).collect();
    // Together, in a pool too small for all of them at once: sequences get preempted.
    let tight = EngineHandle::start(model.clone(), config(16, 14, &model)).expect("engine");
    let streams: Vec<_> = prompts.iter().map(|p| tight.submit(greedy(p.clone(), 40)).expect("submit")).collect();
    for (i, mut stream) in streams.into_iter().enumerate() {
        let mut got = Vec::new();
        loop {
            match stream.blocking_next().expect("event") {
                EngineEvent::Token { id, .. } => got.push(id),
                EngineEvent::Finished { .. } => break,
                EngineEvent::Error(e) => panic!("sequence {i}: {e}"),
                EngineEvent::Kv(_) | EngineEvent::PromptLogprobs(_) => {}
            }
        }
        assert_eq!(got, expected[i], "sequence {i}");
    }
    wait_until(&tight, "after all finished", |s| s.used_blocks == 0);
    assert!(tight.blocking_stats().expect("stats").preemptions > 0, "the pool was too small for all at once");
}

#[test]
fn same_seed_same_sample() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model)).expect("engine");
    let sampled = |seed| {
        let mut request = greedy(tokens(20, model.config.vocab_size, 5), 24);
        request.sampling =
            SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..SamplingParams::default() };
        collect(&engine, request).expect("sample").tokens
    };
    assert_eq!(sampled(42), sampled(42));
    assert_ne!(sampled(42), sampled(43));
}

#[test]
fn stop_strings_cut_the_text() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model)).expect("engine");
    let plain = collect(&engine, greedy(tokens(20, model.config.vocab_size, 6), 30)).expect("plain");
    let chars: Vec<char> = plain.text.chars().collect();
    if chars.len() < 6 {
        return; // nothing printable to stop on
    }
    let stop: String = chars[3..5].iter().collect();
    let mut request = greedy(tokens(20, model.config.vocab_size, 6), 30);
    request.stop.stop_strings = vec![stop.clone()];
    let stopped = collect(&engine, request).expect("stopped");
    assert_eq!((stopped.reason, stopped.matched), (FinishReason::Stop, Some(MatchedStop::String(stop.clone()))));
    assert_eq!(plain.matched, None, "{:?} ended on its own", plain.reason);
    let cut = plain.text.find(&stop).expect("stop occurs");
    assert_eq!(stopped.text, plain.text[..cut]);
}

#[test]
fn bad_requests_name_the_field() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model)).expect("engine");
    let field_of = |request: GenerateRequest| match engine.submit(request) {
        Err(EngineError::InvalidRequest { field, .. }) => field.to_string(),
        Err(EngineError::InvalidSampling(e)) => e.field.to_string(),
        other => panic!("expected a validation error, got {other:?}"),
    };
    assert_eq!(field_of(greedy(vec![], 4)), "prompt");
    let context = model.config.context_length;
    assert_eq!(field_of(greedy(vec![1; context], 4)), "prompt");
    assert_eq!(field_of(greedy(vec![1; 4], 0)), "max_tokens");
    assert_eq!(field_of(greedy(vec![1; 4], context)), "max_tokens");
    assert_eq!(field_of(greedy(vec![model.config.vocab_size as u32], 4)), "prompt");
    let mut hot = greedy(vec![1; 4], 4);
    hot.sampling.temperature = -1.0;
    assert_eq!(field_of(hot), "temperature");
    // The engine keeps serving.
    assert!(collect(&engine, greedy(vec![1; 4], 2)).is_ok());
}

#[test]
fn a_prompt_larger_than_the_pool_is_refused_clearly() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(16, 4, &model)).expect("engine");
    let err = collect(&engine, greedy(tokens(100, model.config.vocab_size, 7), 4)).expect_err("refused");
    assert!(matches!(err, EngineError::TooLargeForPool { .. }), "{err}");
    // The prompt fits, but not with all the tokens it may generate.
    let err = collect(&engine, greedy(tokens(40, model.config.vocab_size, 7), 40)).expect_err("refused");
    assert!(matches!(err, EngineError::TooLargeForPool { needed_blocks: 5, capacity_blocks: 4 }), "{err}");
    assert!(collect(&engine, greedy(tokens(20, model.config.vocab_size, 7), 4)).is_ok(), "still serving");
}

#[test]
fn past_its_queue_bound_the_engine_refuses_new_requests_as_overloaded() {
    let (_dir, model) = tiny_model();
    let config = EngineConfig { max_running: 1, max_waiting: 1, ..config(16, 64, &model) };
    let engine = EngineHandle::start(model.clone(), config).expect("engine");
    let vocab = model.config.vocab_size;
    // One runs (or is about to), one waits, the third is one too many.
    let streams: Vec<_> =
        (0..3).map(|seed| engine.submit(greedy(tokens(20, vocab, seed), 200)).expect("queued")).collect();
    let outcomes: Vec<_> = streams.into_iter().map(|stream| stream.blocking_collect()).collect();
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok(), "{outcomes:?}");
    assert!(matches!(outcomes[2], Err(EngineError::Overloaded)), "{:?}", outcomes[2]);
    assert!(collect(&engine, greedy(tokens(20, vocab, 9), 4)).is_ok(), "served again once the queue drained");
}

#[test]
fn invalid_config_is_refused() {
    let (_dir, model) = tiny_model();
    let mut bad = config(16, 64, &model);
    bad.block_size = 0;
    assert!(matches!(
        EngineHandle::start(model.clone(), bad),
        Err(EngineError::InvalidConfig { field: "block_size", .. })
    ));
    let mut tiny_pool = config(16, 64, &model);
    tiny_pool.kv_cache_bytes = 10;
    assert!(matches!(
        EngineHandle::start(model.clone(), tiny_pool),
        Err(EngineError::InvalidConfig { field: "kv_cache_bytes", .. })
    ));
    // A GPU engine is refused with a reason, never a panic: this build has no `cuda` feature,
    // and with it this machine has no driver.
    let gpu = EngineConfig { device: "cuda:1".parse().expect("device"), ..config(16, 64, &model) };
    assert_eq!(gpu.device, EngineDevice::Cuda { ordinal: 1, weights: GpuWeights::F32 });
    match EngineHandle::start(model, gpu) {
        Err(EngineError::InvalidConfig { field: "device", reason }) => {
            assert!(reason.contains("cuda") || reason.contains("CUDA"), "{reason}")
        }
        other => panic!("a GPU engine here: {:?}", other.map(|_| ())),
    }
}

#[test]
fn devices_parse_from_their_flag_values() {
    assert_eq!("cpu".parse::<EngineDevice>(), Ok(EngineDevice::Cpu));
    assert_eq!("cuda".parse::<EngineDevice>(), Ok(EngineDevice::Cuda { ordinal: 0, weights: GpuWeights::F32 }));
    let bf16 = "cuda:3".parse::<EngineDevice>().map(|d| d.with_weights(GpuWeights::Bf16));
    assert_eq!(bf16, Ok(EngineDevice::Cuda { ordinal: 3, weights: GpuWeights::Bf16 }));
    for bad in ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1"] {
        let err = bad.parse::<EngineDevice>().expect_err(bad);
        assert!(err.contains("cpu, cuda or cuda:N"), "{bad}: {err}");
    }
}

#[test]
fn min_tokens_holds_back_the_stop_tokens() -> Result<(), EngineError> {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    let engine = EngineHandle::start(model.clone(), config(16, 32, &model))?;
    let prompt = tokens(20, vocab, 8);
    let first = collect(&engine, greedy(prompt.clone(), 12))?.tokens[0];
    let mut request = greedy(prompt.clone(), 12);
    request.stop.stop_token_ids = vec![first];
    let stopped = collect(&engine, request.clone())?;
    // A stop token ends the stream without being streamed, and is named.
    assert_eq!((stopped.tokens.len(), stopped.reason), (0, FinishReason::Stop), "the greedy token is a stop token");
    assert_eq!(stopped.matched, Some(MatchedStop::Token(first)));
    request.stop.min_tokens = 4;
    let held = collect(&engine, request.clone())?;
    assert!(held.tokens.len() >= 4, "four tokens before the stop token at the earliest: {:?}", held.tokens);
    assert!(!held.tokens.contains(&first), "{:?}", held.tokens);
    request.stop.min_tokens = 13;
    match collect(&engine, request) {
        Err(EngineError::InvalidRequest { field: "min_tokens", .. }) => Ok(()),
        other => panic!("min_tokens above max_tokens gave {other:?}"),
    }
}

#[test]
fn engines_sharing_the_compute_threads_take_turns() {
    // Two engines of one process share one compute pool (here of one thread): a long busy
    // period of one must not starve the other.
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    let single = |blocks| EngineConfig { threads: 1, ..config(16, blocks, &model) };
    let busy = EngineHandle::start(model.clone(), single(256)).expect("engine");
    let other = EngineHandle::start(model.clone(), single(64)).expect("engine");
    let mut long = busy.submit(greedy(tokens(30, vocab, 1), 3000)).expect("long");
    assert!(matches!(long.blocking_next(), Some(EngineEvent::Token { .. })), "the long request runs");
    let short = collect(&other, greedy(tokens(30, vocab, 2), 4)).expect("short");
    assert_eq!(short.tokens.len(), 4);
    let stats = busy.blocking_stats().expect("stats");
    assert_eq!(stats.running, 1, "the short request finished while the long one still ran");
}
