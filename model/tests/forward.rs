//! The forward pass on the tiny random model: against plain reference math, chunked against
//! one-shot prefill, batched against single-sequence decode, and with bad input.

mod support;

use lcserve_common::BlockId;
use lcserve_model::{
    Activations, DenseAttention, GgufSource, KvArena, KvDtype, LogitsWanted, Model, ModelError, SequenceInput,
};
use support::{Session, max_rel_diff, prompt, reference::Reference};

fn tiny_model() -> (tempfile::TempDir, Model) {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = lcserve_model::write_tiny_model(dir.path(), 7).expect("tiny model");
    let model = Model::load(&paths.gguf, &mut |_| {}).expect("load tiny");
    (dir, model)
}

#[test]
fn forward_matches_reference_math() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = lcserve_model::write_tiny_model(dir.path(), 11).expect("tiny model");
    let model = Model::load(&paths.gguf, &mut |_| {}).expect("load");
    let mut int8_model = Model::load(&paths.gguf, &mut |_| {}).expect("load");
    int8_model.activations = Activations::Int8;
    let reference = Reference::new(&GgufSource::open(&paths.gguf).expect("open"));
    let (mut worst_f32, mut worst_int8) = (0f32, 0f32);
    for len in [1, 7, 63, 64, 65, 130] {
        let tokens = prompt(len, model.config.vocab_size, len as u64);
        let ours = Session::new(&model, 16, len).run(&tokens, true);
        let ours_int8 = Session::new(&int8_model, 16, len).run(&tokens, true);
        let expected = reference.logits(&tokens);
        for (pos, ((a, a8), b)) in ours.iter().zip(&ours_int8).zip(&expected).enumerate() {
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            // Exact f32 activations (the default) differ from f64 math by f32 rounding only:
            // measured worst 5.9e-7.
            let err = max_rel_diff(a, &b32);
            worst_f32 = worst_f32.max(err);
            assert!(err < 1e-4, "len {len} pos {pos}: relative error {err}");
            // Activations rounded to 8 bits (as llama.cpp does) bound agreement with exact math
            // at about 1e-2 of the logit range (measured worst 1.5e-2).
            let err = max_rel_diff(a8, &b32);
            worst_int8 = worst_int8.max(err);
            assert!(err < 2e-2, "int8 activations, len {len} pos {pos}: relative error {err}");
        }
    }
    eprintln!("worst relative logit error vs f64 reference: f32 activations {worst_f32:e}, int8 {worst_int8:e}");
}

/// An f16 pool rounds each key and value once (11 significant bits): logits stay close to
/// exact math (measured worst 2.4e-4 relative, against 5.9e-7 with f32 KV).
#[test]
fn f16_kv_stays_close_to_exact_math() {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = lcserve_model::write_tiny_model(dir.path(), 11).expect("tiny model");
    let model = Model::load(&paths.gguf, &mut |_| {}).expect("load");
    let reference = Reference::new(&GgufSource::open(&paths.gguf).expect("open"));
    let mut worst = 0f32;
    for len in [1, 63, 65, 130] {
        let tokens = prompt(len, model.config.vocab_size, len as u64);
        let mut session = Session::new(&model, 16, len);
        session.arena = KvArena::with_dtype(model.kv_layout(16), len.div_ceil(16), KvDtype::F16);
        let ours = session.run(&tokens, true);
        for (pos, (a, b)) in ours.iter().zip(reference.logits(&tokens)).enumerate() {
            let b32: Vec<f32> = b.iter().map(|&v| v as f32).collect();
            let err = max_rel_diff(a, &b32);
            worst = worst.max(err);
            assert!(err < 2e-3, "len {len} pos {pos}: relative error {err}");
        }
    }
    eprintln!("worst relative logit error of f16 KV vs f64 reference: {worst:e}");
}

#[test]
fn chunked_prefill_equals_one_shot() {
    let (_dir, model) = tiny_model();
    let tokens = prompt(1000, model.config.vocab_size, 3);
    let one_shot = Session::new(&model, 64, tokens.len()).run(&tokens, true);
    for chunk in [64, 100, 333] {
        let mut session = Session::new(&model, 64, tokens.len());
        let chunked: Vec<Vec<f32>> = tokens.chunks(chunk).flat_map(|c| session.run(c, true)).collect();
        for (pos, (a, b)) in chunked.iter().zip(&one_shot).enumerate() {
            let err = max_rel_diff(a, b);
            assert!(err <= 1e-4, "chunk {chunk} pos {pos}: relative error {err}");
        }
    }
}

#[test]
fn batched_decode_equals_single_sequence_decode() {
    let (_dir, model) = tiny_model();
    let block_size = 16;
    let prompts: Vec<Vec<u32>> =
        [5usize, 17, 33, 64].iter().map(|&n| prompt(n, model.config.vocab_size, n as u64)).collect();
    let steps = 20;

    // Alone: each sequence in its own session, greedy.
    let mut alone = Vec::new();
    for p in &prompts {
        let mut session = Session::new(&model, block_size, p.len() + steps);
        let mut logits = session.run(p, false);
        let mut rows = Vec::new();
        for _ in 0..steps {
            let row = logits.pop().expect("row");
            let next = support::argmax(&row);
            rows.push(row);
            logits = session.run(&[next], false);
        }
        alone.push(rows);
    }

    // Together: one arena, disjoint block tables, one forward per step for all four.
    let per_seq = (64 + steps).div_ceil(block_size);
    let mut arena = KvArena::new(model.kv_layout(block_size), per_seq * prompts.len());
    let tables: Vec<Vec<BlockId>> =
        (0..prompts.len()).map(|s| (0..per_seq).map(|b| BlockId((s * per_seq + b) as u32)).collect()).collect();
    let mut lens = vec![0usize; prompts.len()];
    let mut pending: Vec<Vec<u32>> = prompts.clone();
    #[allow(clippy::needless_range_loop)] // `step` indexes every sequence's expected rows in lockstep
    for step in 0..steps {
        let inputs: Vec<SequenceInput<'_>> = (0..prompts.len())
            .map(|s| SequenceInput {
                tokens: &pending[s],
                start_pos: lens[s],
                block_table: &tables[s],
                logits: LogitsWanted::Last,
                attention: &DenseAttention,
                draft_tree: None,
            })
            .collect();
        let logits = model.forward(&inputs, &mut arena).expect("forward");
        for s in 0..prompts.len() {
            lens[s] += pending[s].len();
            let row = logits.last_of(s).expect("row");
            let err = max_rel_diff(row, &alone[s][step]);
            assert!(err <= 1e-4, "seq {s} step {step}: relative error {err}");
            pending[s] = vec![support::argmax(row)];
        }
    }
}

/// A draft tree's rows equal the logits of running each node's path as a plain run, and once
/// the accepted path's KV is moved into place, decoding continues as if the path had been
/// decoded token by token.
#[test]
fn draft_tree_rows_equal_their_paths() {
    let (_dir, model) = tiny_model();
    let vocab = model.config.vocab_size;
    // Row 0 is the pending token; rows 1-2 branch under it, rows 3-5 continue the branches.
    let parents = [None, Some(0), Some(0), Some(1), Some(2), Some(3)];
    let tokens: Vec<u32> = prompt(parents.len(), vocab, 99);
    let path_of = |mut row: usize| {
        let mut path = vec![row];
        while let Some(parent) = parents[row] {
            path.push(parent);
            row = parent;
        }
        path.reverse();
        path
    };
    for prompt_len in [1, 15, 16, 47] {
        let context = prompt(prompt_len, vocab, prompt_len as u64);
        let mut session = Session::new(&model, 16, prompt_len + parents.len() + 1);
        session.run(&context, false);
        let input = SequenceInput {
            tokens: &tokens,
            start_pos: prompt_len,
            block_table: &session.table,
            logits: LogitsWanted::All,
            attention: &DenseAttention,
            draft_tree: Some(&parents),
        };
        let logits = model.forward(&[input], &mut session.arena).expect("tree forward");
        for row in 0..parents.len() {
            let path: Vec<u32> = path_of(row).iter().map(|&r| tokens[r]).collect();
            let mut plain = Session::new(&model, 16, prompt_len + path.len());
            plain.run(&context, false);
            let expected = plain.run(&path, false).pop().expect("row");
            let err = max_rel_diff(logits.row(row), &expected);
            assert!(err <= 1e-4, "prompt {prompt_len} row {row} (path {path:?}): relative error {err}");
        }

        // Accept rows 0 → 2 → 4: move their KV to consecutive positions and decode on.
        for (depth, row) in [(1, 2), (2, 4)] {
            session.arena.copy_position(&session.table, prompt_len + row, prompt_len + depth);
        }
        session.len = prompt_len + 3;
        let next = session.run(&[tokens[5]], false).pop().expect("row");
        let mut plain = Session::new(&model, 16, prompt_len + 4);
        plain.run(&context, false);
        let expected = plain.run(&[tokens[0], tokens[2], tokens[4], tokens[5]], false).pop().expect("row");
        let err = max_rel_diff(&next, &expected);
        assert!(err <= 1e-4, "prompt {prompt_len}: decoding after the accepted path: relative error {err}");
    }
}

#[test]
fn bad_batches_are_refused_without_touching_the_cache() {
    let (_dir, model) = tiny_model();
    let mut arena = KvArena::new(model.kv_layout(16), 4);
    let table: Vec<BlockId> = (0..4).map(BlockId).collect();
    let run = |arena: &mut KvArena, tokens: &[u32], start_pos: usize, table: &[BlockId]| {
        model.forward(
            &[SequenceInput {
                tokens,
                start_pos,
                block_table: table,
                logits: LogitsWanted::Last,
                attention: &DenseAttention,
                draft_tree: None,
            }],
            arena,
        )
    };
    let vocab = model.config.vocab_size as u32;
    assert!(matches!(run(&mut arena, &[], 0, &table), Err(ModelError::InvalidBatch { .. })));
    assert!(matches!(run(&mut arena, &[vocab], 0, &table), Err(ModelError::TokenOutOfRange { .. })));
    assert!(matches!(run(&mut arena, &[1; 65], 0, &table), Err(ModelError::InvalidBatch { .. })), "table too short");
    assert!(
        matches!(run(&mut arena, &[1], 0, &[BlockId(9)]), Err(ModelError::InvalidBatch { .. })),
        "block outside arena"
    );
    let context = model.config.context_length;
    assert!(matches!(run(&mut arena, &[1], context, &table), Err(ModelError::ContextExceeded { .. })));
    let mut tree = |parents: &[Option<usize>], start_pos: usize| {
        let input = SequenceInput {
            tokens: &[1, 2],
            start_pos,
            block_table: &table,
            logits: LogitsWanted::All,
            attention: &DenseAttention,
            draft_tree: Some(parents),
        };
        model.forward(&[input], &mut arena)
    };
    for (parents, start_pos, why) in [
        (&[None][..], 5, "one parent for two tokens"),
        (&[None, Some(1)][..], 5, "a parent that is not an earlier row"),
        (&[None, Some(0)][..], 0, "nothing cached for the root to follow"),
    ] {
        assert!(matches!(tree(parents, start_pos), Err(ModelError::InvalidBatch { .. })), "{why}");
    }
}
