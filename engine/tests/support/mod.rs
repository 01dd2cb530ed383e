//! Helpers shared by the engine's integration tests: a tiny random model, pool configs, prompts,
//! and running a request to its end.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lcserve_engine::{
    Completion, Drafter, EngineConfig, EngineError, EngineHandle, GenerateRequest, SamplingParams, StopConditions,
};
use lcserve_model::Model;

/// Proposes a known answer (the greedy continuation, say): every draft is accepted.
#[derive(Debug)]
pub struct Oracle {
    pub prompt_len: usize,
    pub answer: Vec<u32>,
}

impl Drafter for Oracle {
    fn propose(&self, tokens: &[u32], max: usize) -> Vec<u32> {
        let done = tokens.len() - self.prompt_len;
        self.answer[done.min(self.answer.len())..].iter().take(max).copied().collect()
    }
}

pub fn collect(engine: &EngineHandle, request: GenerateRequest) -> Result<Completion, EngineError> {
    engine.submit(request)?.blocking_collect()
}

pub fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        sampling: SamplingParams::default(),
        stop: StopConditions { max_tokens, ignore_eos: true, ..StopConditions::default() },
        cache_salt: Vec::new(),
        ..GenerateRequest::default()
    }
}

pub fn tiny_model() -> (tempfile::TempDir, Arc<Model>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = lcserve_model::write_tiny_model(dir.path(), 5).expect("tiny model");
    let model = Model::load(&paths.gguf, &mut |_| {}).expect("load tiny");
    (dir, Arc::new(model))
}

pub fn config(block_size: usize, blocks: usize, model: &Model) -> EngineConfig {
    // Room for `blocks` blocks of the default element type.
    let block_bytes = model.kv_layout(block_size).bytes_per_block(EngineConfig::default().pool_dtype().bytes());
    EngineConfig {
        block_size,
        kv_cache_bytes: blocks * block_bytes,
        prefill_chunk: 48,
        max_running: 8,
        threads: 2,
        ..EngineConfig::default()
    }
}

pub fn tokens(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    (0..len as u64).map(|i| ((i * 7919 + seed * 104_729) % vocab as u64) as u32).collect()
}

pub fn wait_until(engine: &EngineHandle, what: &str, done: impl Fn(&lcserve_engine::EngineStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = engine.blocking_stats().expect("stats");
        if done(&stats) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: stats stayed {stats:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
