//! KV import and export: what one engine computes, another continues from, token for token.

use lcserve_common::sequence_hashes;
use lcserve_engine::{
    EngineConfig, EngineError, EngineEvent, EngineHandle, ExportKv, GenerateRequest, ImportedKv, KvBlock, tail_layout,
};
use lcserve_model::KvDtype;

mod support;
use support::{collect, config, greedy, tiny_model, tokens};

const BLOCK: usize = 16;

/// Runs `request` to its end, returning the exported blocks and the generated tokens.
fn run_exporting(engine: &EngineHandle, request: GenerateRequest) -> (Vec<KvBlock>, Vec<u32>) {
    let prompt_len = request.prompt.len();
    let mut stream = engine.submit(request).expect("submit");
    let (mut blocks, mut generated) = (Vec::new(), Vec::new());
    while let Some(event) = stream.blocking_next() {
        match event {
            EngineEvent::Kv(batch) => {
                // The prompt's blocks all arrive before the first token.
                let prompt_blocks = batch.iter().any(|b| b.index * BLOCK + b.tokens <= prompt_len);
                assert!(!prompt_blocks || generated.is_empty(), "prompt KV after the first token");
                blocks.extend(batch);
            }
            EngineEvent::Token { id, .. } => generated.push(id),
            EngineEvent::Finished { .. } => break,
            EngineEvent::Error(e) => panic!("{e}"),
            EngineEvent::PromptLogprobs(_) => panic!("prompt logprobs were not asked for"),
        }
    }
    (blocks, generated)
}

/// Splits exported blocks into full ones and the tail.
fn into_import(blocks: Vec<KvBlock>, first_block: usize) -> ImportedKv {
    let (tails, full): (Vec<_>, Vec<_>) = blocks.into_iter().partition(|b| b.tokens < BLOCK);
    assert!(full.iter().enumerate().all(|(i, b)| b.index == first_block + i), "full blocks in order");
    ImportedKv {
        first_block,
        blocks: full.into_iter().map(|b| b.data).collect(),
        tail: tails.into_iter().next().map(|b| b.data),
    }
}

/// In both KV element types: blocks leave an f16 pool widened to f32 and are rounded back
/// on import, which is exact for values that came from an f16 pool.
#[test]
fn a_prefilled_prompt_continues_on_another_engine_without_computing_it() {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    for (prompt_len, kv_dtype) in
        [1, 15, 16, 17, 63, 64, 65].into_iter().flat_map(|n| [(n, KvDtype::F32), (n, KvDtype::F16)])
    {
        let config = |block_size, blocks, model: &_| EngineConfig {
            kv_dtype: Some(kv_dtype),
            ..config(block_size, blocks, model)
        };
        let prompt = tokens(prompt_len, vocab, prompt_len as u64);
        let reference = collect(
            &EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine"),
            greedy(prompt.clone(), 12),
        )
        .expect("reference")
        .tokens;

        // "Prefill worker": one token, every block and the tail exported.
        let prefill = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
        let mut request = greedy(prompt.clone(), 1);
        request.export = Some(ExportKv { from_block: 0, tail: true });
        let (blocks, first) = run_exporting(&prefill, request);
        assert_eq!(first, reference[..1], "prompt {prompt_len}: first token");
        let hashes = sequence_hashes(prefill.namespace(&[]), &prompt, BLOCK);
        let full: Vec<_> = blocks.iter().filter(|b| b.tokens == BLOCK).map(|b| b.hash).collect();
        assert_eq!(full, hashes, "prompt {prompt_len}: exported hashes are the block identities");
        assert_eq!(blocks.iter().any(|b| b.tokens < BLOCK), prompt_len % BLOCK != 0, "a tail iff partial");

        // "Decode worker": a fresh pool, the KV imported, the first token given.
        let decode = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
        let mut request = greedy(prompt.clone(), 12);
        request.generated = first.clone();
        request.import = Some(into_import(blocks, 0));
        let outcome = collect(&decode, request).expect("decode");
        assert_eq!(outcome.tokens, reference[1..], "prompt {prompt_len}: continuation");
        assert_eq!(outcome.usage.imported_tokens, prompt_len, "prompt {prompt_len}: all imported");
        assert_eq!(outcome.usage.completion_tokens, 12);
        let stats = decode.blocking_stats().expect("stats");
        assert_eq!(stats.prefill_tokens, 0, "prompt {prompt_len}: the decode engine computed no prompt token");
    }
}

#[test]
fn imports_continue_the_pooled_prefix_and_gaps_are_ignored() {
    let (_dir, model) = tiny_model();
    let prompt = tokens(5 * BLOCK + 3, model.config.vocab_size, 9);
    let source = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
    let mut request = greedy(prompt.clone(), 1);
    request.export = Some(ExportKv { from_block: 2, tail: false });
    let (blocks, _) = run_exporting(&source, request);
    assert_eq!(blocks.iter().map(|b| b.index).collect::<Vec<_>>(), [2, 3, 4], "from_block skips the first");

    // Blocks 2.. with nothing before them in the pool: a gap, so nothing is imported.
    let engine = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
    let mut request = greedy(prompt.clone(), 4);
    request.import = Some(into_import(blocks.clone(), 2));
    let gap = collect(&engine, request).expect("gap");
    assert_eq!(gap.usage.imported_tokens, 0);

    // Once blocks 0..2 are pooled (the same engine ran the prompt), blocks 2.. continue them.
    let fresh = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
    collect(&fresh, greedy(prompt[..2 * BLOCK + 1].to_vec(), 1)).expect("warm the first two blocks");
    let mut request = greedy(prompt.clone(), 4);
    request.import = Some(into_import(blocks, 2));
    let continued = collect(&fresh, request).expect("continued");
    assert_eq!(continued.usage.cached_tokens, 2 * BLOCK);
    assert_eq!(continued.usage.imported_tokens, 3 * BLOCK);
    assert_eq!(continued.tokens, gap.tokens, "imported KV gives the computed result");
}

#[test]
fn a_stream_resumes_from_tokens_generated_elsewhere() {
    let (_dir, model) = tiny_model();
    let prompt = tokens(40, model.config.vocab_size, 3);
    let engine = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
    let reference = collect(&engine, greedy(prompt.clone(), 20)).expect("reference").tokens;
    let other = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
    for done in [1, 7, 19] {
        let mut request = greedy(prompt.clone(), 20);
        request.generated = reference[..done].to_vec();
        let outcome = collect(&other, request).expect("resumed");
        assert_eq!(outcome.tokens, reference[done..], "after {done} tokens");
        assert_eq!(outcome.usage.completion_tokens, 20);
    }
}

#[test]
fn bad_imports_and_resumes_are_refused_naming_the_field() {
    let (_dir, model) = tiny_model();
    let engine = EngineHandle::start(model.clone(), config(BLOCK, 64, &model)).expect("engine");
    let layout = model.kv_layout(BLOCK);
    let prompt = tokens(2 * BLOCK + 5, model.config.vocab_size, 1);
    let refused = |request: GenerateRequest| match engine.submit(request) {
        Err(EngineError::InvalidRequest { field, .. }) => field,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let with_import = |import: ImportedKv| GenerateRequest { import: Some(import), ..greedy(prompt.clone(), 4) };
    let block = vec![0.0; layout.elems_per_block()];
    assert_eq!(
        refused(with_import(ImportedKv { blocks: vec![vec![0.0; 3]], ..ImportedKv::default() })),
        "import.blocks"
    );
    assert_eq!(
        refused(with_import(ImportedKv { first_block: 1, blocks: vec![block.clone(); 2], tail: None })),
        "import.blocks",
        "past the prompt's full blocks"
    );
    let tail = vec![0.0; tail_layout(&layout, 4).elems_per_block()];
    assert_eq!(refused(with_import(ImportedKv { blocks: vec![], first_block: 0, tail: Some(tail) })), "import.tail");
    let resumed = |generated: Vec<u32>, max_tokens| GenerateRequest { generated, ..greedy(prompt.clone(), max_tokens) };
    assert_eq!(refused(resumed(vec![1, 2, 3], 3)), "generated", "already at max_tokens");
    assert_eq!(refused(resumed(vec![u32::MAX], 3)), "generated", "outside the vocabulary");
}
