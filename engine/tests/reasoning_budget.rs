//! Reasoning budgets on the tiny model: the block's end token comes once the block holds its
//! budget — after generated tokens replayed from elsewhere too, and under speculative decoding,
//! whose verification samples as plain decoding does.

use std::sync::Arc;

use lcserve_engine::{EngineError, EngineHandle, GenerateRequest, ReasoningBudget, SamplingParams, Speculation};
use lcserve_text::ReasoningBlock;

mod support;
use support::{Oracle, collect, config, greedy, tiny_model, tokens};

/// Two ids the greedy answer never writes, standing for `<think>` and `</think>`.
fn block_outside(answer: &[u32], vocab: usize, opened: bool) -> ReasoningBlock {
    let mut unused = (0..vocab as u32).rev().filter(|id| !answer.contains(id));
    let end = unused.next().expect("an unused id");
    let start = unused.next().expect("another unused id");
    ReasoningBlock { start, end, opened }
}

fn with_budget(mut request: GenerateRequest, block: ReasoningBlock, max_tokens: usize) -> GenerateRequest {
    request.reasoning_budget = Some(ReasoningBudget { block, max_tokens });
    request
}

#[test]
fn the_blocks_end_is_forced_once_the_budget_is_spent() -> Result<(), EngineError> {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    let engine = EngineHandle::start(model.clone(), config(16, 64, &model))?;
    let prompt = tokens(24, vocab, 3);
    let plain = collect(&engine, greedy(prompt.clone(), 12))?.tokens;
    let opened = block_outside(&plain, vocab, true);

    let capped = collect(&engine, with_budget(greedy(prompt.clone(), 12), opened, 3))?.tokens;
    assert_eq!((&capped[..3], capped[3]), (&plain[..3], opened.end), "three tokens of reasoning, then its end");
    assert_eq!(capped.iter().filter(|&&t| t == opened.end).count(), 1, "once closed, nothing more is forced");
    let none = collect(&engine, with_budget(greedy(prompt.clone(), 12), opened, 0))?.tokens;
    assert_eq!(none[0], opened.end, "a zero budget closes the block at once");
    let sampled = GenerateRequest {
        sampling: SamplingParams { temperature: 1.0, seed: Some(7), ..SamplingParams::default() },
        ..greedy(prompt.clone(), 12)
    };
    assert_eq!(collect(&engine, with_budget(sampled, opened, 2))?.tokens[2], opened.end, "sampled alike");

    let unopened = block_outside(&plain, vocab, false);
    let free = collect(&engine, with_budget(greedy(prompt.clone(), 12), unopened, 0))?.tokens;
    assert_eq!(free, plain, "a block the answer never opens caps nothing");

    // Two tokens already shown (by a prefill worker, say) count against the budget.
    let resumed = GenerateRequest { generated: plain[..2].to_vec(), ..greedy(prompt.clone(), 12) };
    let resumed = collect(&engine, with_budget(resumed, opened, 3))?.tokens;
    assert_eq!((resumed[0], resumed[1]), (plain[2], opened.end));

    let outside = ReasoningBlock { end: vocab as u32, ..opened };
    match collect(&engine, with_budget(greedy(prompt, 4), outside, 3)) {
        Err(EngineError::InvalidRequest { field: "reasoning_budget", .. }) => Ok(()),
        other => panic!("a block outside the vocabulary gave {other:?}"),
    }
}

/// Drafts of the uncapped answer are rejected where the cap forces the end token: speculative
/// output equals plain output under the same budget.
#[test]
fn speculative_decoding_keeps_the_cap() -> Result<(), EngineError> {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    let engine = EngineHandle::start(model.clone(), config(16, 256, &model))?;
    for seed in 0..8 {
        let prompt = tokens(20 + seed as usize, vocab, seed);
        let plain = collect(&engine, greedy(prompt.clone(), 16))?.tokens;
        let block = block_outside(&plain, vocab, true);
        let budget = 1 + seed as usize;
        let capped = collect(&engine, with_budget(greedy(prompt.clone(), 16), block, budget))?;
        let oracle = Oracle { prompt_len: prompt.len(), answer: plain };
        for speculation in [Speculation::Drafter(Arc::new(oracle)), Speculation::Ngram, Speculation::Auto] {
            let request = GenerateRequest { speculation, ..greedy(prompt.clone(), 16) };
            let speculative = collect(&engine, with_budget(request, block, budget))?;
            assert_eq!(speculative.tokens, capped.tokens, "seed {seed}");
        }
        assert_eq!(capped.tokens[budget], block.end, "seed {seed}");
    }
    Ok(())
}
