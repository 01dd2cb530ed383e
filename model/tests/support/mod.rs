//! Helpers shared by the model crate's integration tests.
#![allow(dead_code)]

pub mod reference;

use std::path::PathBuf;

use lcserve_common::BlockId;
use lcserve_model::{DenseAttention, KvArena, LogitsWanted, Model, SequenceInput};

/// The reference model fetched by `scripts/fetch-model`, or `None` (with a note) when absent.
pub fn reference_model_path() -> Option<PathBuf> {
    let dir = std::env::var_os("LCSERVE_MODEL_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"), PathBuf::from);
    let path = dir.join("smollm2-135m-instruct.Q4_1.gguf");
    if path.exists() {
        Some(path)
    } else {
        eprintln!("note: {} is absent (run scripts/fetch-model); skipping", path.display());
        None
    }
}

/// One sequence run step by step through `Model::forward` with its own arena.
pub struct Session<'m> {
    pub model: &'m Model,
    pub arena: KvArena,
    pub table: Vec<BlockId>,
    pub len: usize,
}

impl<'m> Session<'m> {
    pub fn new(model: &'m Model, block_size: usize, capacity_tokens: usize) -> Self {
        let blocks = capacity_tokens.div_ceil(block_size);
        Self {
            model,
            arena: KvArena::new(model.kv_layout(block_size), blocks),
            table: (0..blocks as u32).map(BlockId).collect(),
            len: 0,
        }
    }

    /// Runs `tokens` and returns the logits after each of them (`all`) or after the last.
    pub fn run(&mut self, tokens: &[u32], all: bool) -> Vec<Vec<f32>> {
        let input = SequenceInput {
            tokens,
            start_pos: self.len,
            block_table: &self.table,
            logits: if all { LogitsWanted::All } else { LogitsWanted::Last },
            attention: &DenseAttention,
            draft_tree: None,
        };
        let logits = self.model.forward(&[input], &mut self.arena).expect("forward");
        self.len += tokens.len();
        (0..logits.len()).map(|i| logits.row(i).to_vec()).collect()
    }
}

pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln() + max;
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// max |a - b| / max(|b|, tiny): relative error of a whole row.
pub fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// A deterministic pseudo-random prompt of `len` tokens below `vocab`.
pub fn prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Heads whose rows llama.cpp permutes in tensor `name` (query or key projections), if any.
pub fn permuted_heads(name: &str, config: &lcserve_model::ModelConfig) -> Option<usize> {
    if name.contains(".attn_q.") {
        Some(config.num_heads)
    } else if name.contains(".attn_k.") {
        Some(config.num_kv_heads)
    } else {
        None
    }
}

/// llama.cpp's q/k permutation, applied to HF-ordered rows: GGUF row `h·d + 2i + half` is HF row
/// `h·d + half·(d/2) + i`. Written independently of the exporter's inverse.
pub fn permute_to_gguf(hf: &[f32], heads: usize, head_dim: usize) -> Vec<f32> {
    let cols = hf.len() / (heads * head_dim);
    let mut out = vec![0.0; hf.len()];
    for h in 0..heads {
        for half in 0..2 {
            for i in 0..head_dim / 2 {
                let src = h * head_dim + half * (head_dim / 2) + i;
                let dst = h * head_dim + 2 * i + half;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}
