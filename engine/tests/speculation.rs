//! Speculative decoding through the engine: whatever the drafter proposes, greedy output is
//! token-identical to plain greedy decoding, and the KV it leaves behind is the same; with
//! TokenSelect decoding, to plain TokenSelect decoding.

mod support;

use std::sync::Arc;

use lcserve_engine::speculative::DraftTree;
use lcserve_engine::{
    DEFAULT_DRAFT_TOKENS, Drafter, EngineConfig, EngineError, EngineHandle, GenerateRequest, KvSelection, NgramDrafter,
    Speculation,
};
use support::{Oracle, collect, config, greedy, tiny_model, tokens};

/// A branching tree that hides the greedy continuation behind a decoy at every level: each
/// path node's first child is a wrong token (with a wrong grandchild), its second the right
/// one. Every path token is accepted from a slot off the path, so its KV has to move.
#[derive(Debug)]
struct DecoyTree {
    oracle: Oracle,
    vocab: u32,
}

impl Drafter for DecoyTree {
    fn propose(&self, tokens: &[u32], max: usize) -> Vec<u32> {
        self.oracle.propose(tokens, max)
    }

    fn propose_tree(&self, tokens: &[u32], max_depth: usize, max_nodes: usize) -> DraftTree {
        let path = self.oracle.propose(tokens, max_depth);
        let mut nodes = Vec::new();
        let mut at = None;
        for (level, &token) in path.iter().enumerate() {
            // The decoy's child lies one deeper than the level's path token.
            if nodes.len() + 3 > max_nodes || level + 2 > max_depth {
                break;
            }
            let decoy = (token + 1) % self.vocab;
            nodes.push((at, decoy));
            nodes.push((Some(nodes.len() - 1), token));
            nodes.push((at, token));
            at = Some(nodes.len() - 1);
        }
        DraftTree::from_parents(&nodes).expect("parents come first")
    }
}

/// Proposes pseudo-random tokens: nearly every draft is rejected.
#[derive(Debug)]
struct Noise {
    vocab: u32,
}

impl Drafter for Noise {
    fn propose(&self, tokens: &[u32], max: usize) -> Vec<u32> {
        let seed = (tokens.len() as u32).wrapping_mul(2_654_435_761);
        (0..max as u32).map(|i| (seed ^ i.wrapping_mul(40_503)) % self.vocab).collect()
    }
}

fn engine() -> (tempfile::TempDir, EngineHandle) {
    let (dir, model) = tiny_model();
    let engine = EngineHandle::start(Arc::clone(&model), config(16, 1024, &model)).expect("start");
    (dir, engine)
}

/// A prompt that repeats itself, so prompt lookup has something to copy.
fn repetitive_prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let motif = tokens(5 + (seed as usize % 11), vocab, seed);
    motif.iter().cycle().take(len).copied().collect()
}

#[test]
fn greedy_output_is_identical_whatever_the_drafter() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..100u64)
        .map(|seed| {
            if seed % 2 == 0 {
                repetitive_prompt(20 + seed as usize, vocab, seed)
            } else {
                tokens(10 + seed as usize, vocab, seed)
            }
        })
        .collect();
    let max_tokens = 24;
    let plain: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| engine.submit(greedy(p.clone(), max_tokens)).expect("submit"))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|stream| stream.blocking_collect().expect("plain").tokens)
        .collect();

    let (mut ngram_proposed, mut ngram_accepted) = (0, 0);
    for name in ["oracle", "decoys", "noise", "ngram", "auto", "self"] {
        // All at once: speculating and plain sequences share batches.
        let streams: Vec<_> = prompts
            .iter()
            .zip(&plain)
            .enumerate()
            .map(|(i, (p, answer))| {
                let speculation = match name {
                    _ if i % 5 == 4 => Speculation::Off,
                    "oracle" => Speculation::Drafter(Arc::new(Oracle { prompt_len: p.len(), answer: answer.clone() })),
                    "decoys" => Speculation::Drafter(Arc::new(DecoyTree {
                        oracle: Oracle { prompt_len: p.len(), answer: answer.clone() },
                        vocab: vocab as u32,
                    })),
                    "noise" => Speculation::Drafter(Arc::new(Noise { vocab: vocab as u32 })),
                    "auto" => Speculation::Auto,
                    "self" => Speculation::SelfDraft,
                    _ => Speculation::Ngram,
                };
                engine.submit(GenerateRequest { speculation, ..greedy(p.clone(), max_tokens) }).expect("submit")
            })
            .collect();
        for (i, (stream, expected)) in streams.into_iter().zip(&plain).enumerate() {
            let done = stream.blocking_collect().expect(name);
            assert_eq!(&done.tokens, expected, "{name}: prompt {i}");
            assert_eq!(done.usage.completion_tokens, max_tokens);
            let (proposed, accepted) = (done.usage.speculative_proposed, done.usage.speculative_accepted);
            assert!(accepted <= proposed);
            match name {
                "oracle" if i % 5 != 4 => {
                    assert_eq!(accepted, proposed, "prompt {i}: the oracle is always right");
                    // Each step emits its accepted drafts plus one; the first token comes from
                    // the prefill, unless the prompt was cached but its last token (whose step
                    // then speculates too).
                    let rest = max_tokens - 1;
                    let least = rest - rest.div_ceil(DEFAULT_DRAFT_TOKENS + 1);
                    assert!(
                        accepted >= least,
                        "prompt {i}: {accepted} accepted, {DEFAULT_DRAFT_TOKENS} drafts per step"
                    );
                }
                "decoys" if i % 5 != 4 => {
                    // One node of each level of three is on the path.
                    assert!(3 * accepted <= proposed, "prompt {i}: {accepted} accepted of {proposed}");
                    assert!(accepted >= (max_tokens - 1) / 2, "prompt {i}: {accepted} accepted of {proposed}");
                }
                "ngram" => {
                    ngram_proposed += proposed;
                    ngram_accepted += accepted;
                }
                _ => {}
            }
        }
    }
    assert!(ngram_proposed > 0 && ngram_accepted > 0, "ngram {ngram_accepted}/{ngram_proposed}");
}

/// Each drafter over TokenSelect decoding, with contexts from within the selection to far
/// beyond it, windows that hold a whole draft or cap its depth, and reuse thresholds that
/// always, sometimes and never reuse: the tokens are plain TokenSelect decoding's.
#[test]
fn greedy_token_select_output_is_identical_whatever_the_drafter() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    let prompts: Vec<Vec<u32>> = (0..20u64)
        .map(|seed| {
            let len = 20 + 17 * seed as usize;
            if seed % 2 == 0 { repetitive_prompt(len, vocab, seed) } else { tokens(len, vocab, seed) }
        })
        .collect();
    let max_tokens = 24;
    let selections = [
        KvSelection { budget: 16, sink: 4, window: 8, reuse_threshold: 0.9 },
        KvSelection { budget: 24, sink: 2, window: 4, reuse_threshold: -1.0 },
        KvSelection { budget: 40, sink: 0, window: 32, reuse_threshold: 1.0 },
    ];
    for selection in selections {
        let request = |prompt: &Vec<u32>, speculation| GenerateRequest {
            speculation,
            kv_selection: Some(selection),
            ..greedy(prompt.clone(), max_tokens)
        };
        let plain: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| engine.submit(request(p, Speculation::Off)).expect("submit"))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|stream| stream.blocking_collect().expect("plain").tokens)
            .collect();
        for name in ["off", "oracle", "decoys", "noise", "ngram", "auto", "self"] {
            let streams: Vec<_> = prompts
                .iter()
                .zip(&plain)
                .map(|(p, answer)| {
                    let oracle = Oracle { prompt_len: p.len(), answer: answer.clone() };
                    let speculation = match name {
                        "oracle" => Speculation::Drafter(Arc::new(oracle)),
                        "decoys" => Speculation::Drafter(Arc::new(DecoyTree { oracle, vocab: vocab as u32 })),
                        "noise" => Speculation::Drafter(Arc::new(Noise { vocab: vocab as u32 })),
                        "auto" => Speculation::Auto,
                        "self" => Speculation::SelfDraft,
                        "off" => Speculation::Off,
                        _ => Speculation::Ngram,
                    };
                    engine.submit(request(p, speculation)).expect("submit")
                })
                .collect();
            for (i, (stream, expected)) in streams.into_iter().zip(&plain).enumerate() {
                let done = stream.blocking_collect().expect(name);
                assert_eq!(&done.tokens, expected, "{name}, {selection:?}: prompt {i}");
                let (proposed, accepted) = (done.usage.speculative_proposed, done.usage.speculative_accepted);
                if name == "oracle" {
                    assert!(accepted == proposed && accepted >= max_tokens / 2, "prompt {i}: {accepted}/{proposed}");
                }
            }
        }
    }
}

#[test]
fn speculation_stops_exactly_at_max_tokens_and_leaves_correct_kv() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    let prompt = repetitive_prompt(60, vocab, 3);
    for max_tokens in [1, 2, 3, 7] {
        let plain = collect(&engine, greedy(prompt.clone(), max_tokens)).expect("plain");
        let spec =
            collect(&engine, GenerateRequest { speculation: Speculation::Ngram, ..greedy(prompt.clone(), max_tokens) });
        let spec = spec.expect("spec");
        assert_eq!(spec.tokens, plain.tokens, "max_tokens {max_tokens}");
        assert_eq!(spec.tokens.len(), max_tokens);
    }
    // The next turn reuses the speculating turn's cached blocks: they must hold the KV of the
    // accepted tokens, not of rejected drafts.
    let first = collect(
        &engine,
        GenerateRequest {
            speculation: Speculation::Ngram,
            cache_salt: b"turns".to_vec(),
            ..greedy(prompt.clone(), 40)
        },
    )
    .expect("turn 1");
    let mut next = prompt.clone();
    next.extend(&first.tokens);
    next.extend(tokens(9, vocab, 77));
    let reused = collect(&engine, GenerateRequest { cache_salt: b"turns".to_vec(), ..greedy(next.clone(), 16) })
        .expect("turn 2");
    assert!(reused.usage.cached_tokens >= 96, "cached {}", reused.usage.cached_tokens);
    let fresh = collect(&engine, GenerateRequest { cache_salt: b"fresh".to_vec(), ..greedy(next, 16) }).expect("fresh");
    assert_eq!(reused.tokens, fresh.tokens);
}

#[test]
fn ngram_drafter_copies_what_followed_the_last_match() {
    let drafter = NgramDrafter::default();
    assert_eq!(drafter.propose(&[1, 2, 3, 4, 5, 1, 2, 3], 2), vec![4, 5], "trigram match");
    assert_eq!(drafter.propose(&[9, 1, 2, 7, 8, 3, 1, 2], 3), vec![7, 8, 3], "bigram match, latest occurrence");
    assert_eq!(drafter.propose(&[5, 6, 5, 7, 5], 4), vec![7, 5], "unigram: the latest 5 before the end");
    assert_eq!(drafter.propose(&[1, 2, 3], 4), Vec::<u32>::new(), "no repeat, no guess");
    assert_eq!(drafter.propose(&[4], 4), Vec::<u32>::new());
}

#[test]
fn ngram_tree_merges_the_continuations_of_recent_matches() {
    let drafter = NgramDrafter::default();
    let shape = |tree: &DraftTree| tree.nodes().iter().map(|n| (n.parent, n.token)).collect::<Vec<_>>();
    // "7" occurred twice before the end: latest first, then the older one, sharing the "1".
    let tree = drafter.propose_tree(&[7, 1, 2, 7, 1, 3, 7], 3, 12);
    assert_eq!(shape(&tree), [(None, 1), (Some(0), 3), (Some(1), 7), (Some(0), 2), (Some(3), 7)]);
    // Only the longest matching n-gram counts: "2 3" matches twice, "3" alone would add a third.
    let tree = drafter.propose_tree(&[2, 3, 9, 3, 5, 2, 3, 8, 2, 3], 2, 12);
    assert_eq!(shape(&tree), [(None, 8), (Some(0), 2), (None, 9), (Some(2), 3)]);
    // The node budget cuts the later branches, never the latest match's path.
    let tree = drafter.propose_tree(&[2, 3, 9, 3, 5, 2, 3, 8, 2, 3], 2, 3);
    assert_eq!(shape(&tree), [(None, 8), (Some(0), 2), (None, 9)]);
    assert!(drafter.propose_tree(&[1, 2, 3], 4, 12).is_empty(), "no repeat, no guess");
    let chain = drafter.propose_tree(&[1, 2, 3, 1, 2], 4, 12);
    assert!(chain.is_chain() && chain.len() == 3, "one match is a chain");
}

#[test]
fn a_draft_model_drafts_losslessly_and_is_required_for_draft() {
    let (dir, model) = tiny_model();
    // The target's own weights as the draft model, with a window that holds every sequence
    // here: its drafts are the target's own greedy tokens.
    let config =
        EngineConfig { draft_model: Some(dir.path().join("tiny.gguf")), draft_window: 128, ..config(16, 1024, &model) };
    let drafting = EngineHandle::start(Arc::clone(&model), config).expect("start with a draft model");
    let vocab = model.config.vocab_size;
    let (mut proposed, mut accepted) = (0, 0);
    for seed in 0..12u64 {
        let prompt = tokens(20 + 7 * seed as usize, vocab, seed);
        let plain = collect(&drafting, greedy(prompt.clone(), 24)).expect("plain");
        let request = GenerateRequest { speculation: Speculation::Draft, ..greedy(prompt, 24) };
        let drafted = collect(&drafting, request).expect("draft");
        assert_eq!(drafted.tokens, plain.tokens, "seed {seed}");
        proposed += drafted.usage.speculative_proposed;
        accepted += drafted.usage.speculative_accepted;
    }
    assert!(10 * accepted >= 9 * proposed, "its own weights draft its tokens: {accepted} of {proposed}");

    let (_dir, without) = engine();
    match without.submit(GenerateRequest { speculation: Speculation::Draft, ..greedy(vec![5, 6], 4) }) {
        Err(EngineError::InvalidRequest { field, .. }) => assert_eq!(field, "speculation"),
        other => panic!("expected an invalid speculation, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn self_drafting_over_a_long_context_stays_lossless() {
    let (_dir, engine) = engine();
    let vocab = engine.model().config.vocab_size;
    // Past the self-drafter's 656-key budget, so its drafting passes attend sparsely.
    for (seed, len) in [(1, 700), (2, 1000)] {
        let prompt = repetitive_prompt(len, vocab, seed);
        let plain = collect(&engine, greedy(prompt.clone(), 20)).expect("plain");
        let request = GenerateRequest { speculation: Speculation::SelfDraft, ..greedy(prompt, 20) };
        let drafted = collect(&engine, request).expect("self");
        assert_eq!(drafted.tokens, plain.tokens, "{len}-token prompt");
        assert!(drafted.usage.speculative_proposed > 0);
    }
}
