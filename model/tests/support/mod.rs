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
        };
        let logits = self.model.forward(&[input], &mut self.arena, &DenseAttention).expect("forward");
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
