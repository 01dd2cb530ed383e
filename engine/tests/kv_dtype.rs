//! The f16 KV pool: twice the blocks in the same bytes, a block namespace of its own, prefix
//! reuse and speculative decoding as exact over it as over f32.

use std::sync::Arc;

use lcserve_engine::{EngineConfig, EngineError, EngineHandle, GenerateRequest, KvSelection, Speculation};
use lcserve_model::KvDtype;

mod support;
use support::{collect, config, greedy, tiny_model, tokens};

fn f16_engine(blocks: usize) -> (tempfile::TempDir, EngineHandle) {
    let (dir, model) = tiny_model();
    let config = EngineConfig { kv_dtype: Some(KvDtype::F16), ..config(16, blocks, &model) };
    (dir, EngineHandle::start(Arc::clone(&model), config).expect("start"))
}

#[test]
fn f16_pools_hold_twice_the_blocks_under_their_own_namespace() {
    let (_dir, model) = tiny_model();
    let f32_engine = EngineHandle::start(
        Arc::clone(&model),
        EngineConfig { kv_dtype: Some(KvDtype::F32), ..config(16, 64, &model) },
    )
    .expect("f32 engine");
    let f16_engine = EngineHandle::start(
        Arc::clone(&model),
        EngineConfig { kv_dtype: Some(KvDtype::F16), ..config(16, 64, &model) },
    )
    .expect("f16 engine");
    let capacity = |engine: &EngineHandle| engine.blocking_stats().expect("stats").capacity_blocks;
    // `config` sizes the pool for 64 blocks of the default type, f16.
    assert_eq!(capacity(&f16_engine), 64);
    assert_eq!(capacity(&f32_engine), 32);
    // Rounded KV must never be served to an f32 engine as its own, nor the reverse.
    assert_ne!(f32_engine.namespace(&[]), f16_engine.namespace(&[]));
    assert!(f16_engine.kv_config().contains("kv-f16"), "{}", f16_engine.kv_config());
}

/// f16 unless asked otherwise on the CPU; f32 on a GPU, whose pool stores nothing else, so a
/// GPU engine needs no flag — and one asking for f16 there is refused, naming the field.
#[test]
fn the_pool_defaults_to_f16_on_the_cpu_and_to_f32_on_a_gpu() {
    let cpu = EngineConfig::default();
    assert_eq!(cpu.pool_dtype(), KvDtype::F16);
    assert_eq!(EngineConfig { kv_dtype: Some(KvDtype::F32), ..cpu.clone() }.pool_dtype(), KvDtype::F32);
    let gpu = EngineConfig { device: "cuda".parse().expect("device"), ..cpu };
    assert_eq!(gpu.pool_dtype(), KvDtype::F32);
    assert!(gpu.validate().is_ok());
    let gpu_f16 = EngineConfig { kv_dtype: Some(KvDtype::F16), ..gpu };
    assert!(matches!(gpu_f16.validate(), Err(EngineError::InvalidConfig { field: "kv_dtype", .. })));

    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(Arc::clone(&model), config(16, 64, &model)).expect("default engine");
    assert!(engine.kv_config().contains("kv-f16"), "{}", engine.kv_config());
}

#[test]
fn a_repeated_prompt_reuses_its_f16_blocks_and_decodes_the_same() {
    let (_dir, engine) = f16_engine(256);
    let vocab = engine.model().config.vocab_size;
    for prompt_len in [17, 64, 100] {
        let prompt = tokens(prompt_len, vocab, prompt_len as u64);
        let first = collect(&engine, greedy(prompt.clone(), 16)).expect("first");
        let again = collect(&engine, greedy(prompt, 16)).expect("again");
        assert_eq!(first.usage.cached_tokens, 0);
        // The last prompt token always runs, for its logits.
        let reusable = (prompt_len - 1) / 16 * 16;
        assert_eq!(again.usage.cached_tokens, reusable, "prompt {prompt_len}: full blocks reused");
        assert_eq!(again.tokens, first.tokens, "prompt {prompt_len}");
    }
}

/// Drafts are verified over the same f16 keys that decoding reads, so greedy speculation
/// keeps plain decoding's tokens, dense and with TokenSelect.
#[test]
fn greedy_speculation_over_f16_kv_keeps_plain_decodings_tokens() {
    let (_dir, engine) = f16_engine(1024);
    let vocab = engine.model().config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..24u64)
        .map(|seed| {
            let motif = tokens(5 + seed as usize % 7, vocab, seed);
            motif.iter().cycle().take(30 + 9 * seed as usize).copied().collect()
        })
        .collect();
    let selections = [None, Some(KvSelection { budget: 16, sink: 4, window: 8, ..KvSelection::default() })];
    for kv_selection in selections {
        let request = |prompt: &Vec<u32>, speculation| GenerateRequest {
            speculation,
            kv_selection,
            ..greedy(prompt.clone(), 24)
        };
        let plain: Vec<Vec<u32>> =
            prompts.iter().map(|p| collect(&engine, request(p, Speculation::Off)).expect("plain").tokens).collect();
        for (name, speculation) in
            [("ngram", Speculation::Ngram), ("self", Speculation::SelfDraft), ("auto", Speculation::Auto)]
        {
            let streams: Vec<_> =
                prompts.iter().map(|p| engine.submit(request(p, speculation.clone())).expect("submit")).collect();
            let mut accepted = 0;
            for (i, (stream, expected)) in streams.into_iter().zip(&plain).enumerate() {
                let done = stream.blocking_collect().expect(name);
                assert_eq!(&done.tokens, expected, "{name}, selection {kv_selection:?}: prompt {i}");
                accepted += done.usage.speculative_accepted;
            }
            assert!(accepted > 0, "{name}, selection {kv_selection:?}: no draft was ever accepted");
        }
    }
}
