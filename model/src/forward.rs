//! The transformer forward pass over a batch of sequences sharing one paged KV arena.
//!
//! All new tokens of the batch (prefill chunks and single decode tokens alike) are stacked into
//! one `[T × hidden]` activation matrix, so every weight matrix is read once per step whatever the
//! batch holds. Attention is the only per-sequence part: each sequence's queries attend to its own
//! blocks through the [`AttentionBackend`], or for a speculative draft tree
//! ([`SequenceInput::draft_tree`]) through hybrid tree attention. Logits are computed only for
//! the rows that ask.

use lcserve_common::{BlockId, TokenId};
use lcserve_kernels::ops::{add_inplace, rms_norm, rope_interleaved, rope_neox, silu_mul};
use lcserve_kernels::{AttnShape, tree_depths};
use rayon::prelude::*;

use crate::attention::AttentionBackend;
use crate::config::{ModelConfig, RopeLayout};
use crate::error::{ModelError, Result};
use crate::kv_arena::KvArena;
use crate::model::Model;

/// Batches of at most this many rows (decode steps, verification) run their sequences'
/// attention in parallel; bigger ones hold prefill chunks, whose attention splits across
/// threads by itself.
const PARALLEL_ATTENTION_MAX_ROWS: usize = 256;

/// Which positions of a sequence's new tokens need next-token logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsWanted {
    /// None (a prefill chunk that is not the last).
    None,
    /// Only after the last new token (the usual case).
    Last,
    /// After every new token (verification, tests).
    All,
}

/// One sequence's part of a forward batch.
#[derive(Clone, Copy, Debug)]
pub struct SequenceInput<'a> {
    /// Tokens to run, at positions `start_pos ..`.
    pub tokens: &'a [TokenId],
    /// Tokens of this sequence already in the KV arena.
    pub start_pos: usize,
    /// The sequence's blocks; must cover `start_pos + tokens.len()` positions.
    pub block_table: &'a [BlockId],
    pub logits: LogitsWanted,
    /// How this sequence's queries attend ([`crate::DenseAttention`] unless it prefills
    /// sparsely or selects its decode keys); a draft tree through its
    /// [`AttentionBackend::attend_draft`].
    pub attention: &'a dyn AttentionBackend,
    /// `Some(parents)` when the tokens are a speculative draft tree rather than a run:
    /// `parents[i]` is the row token `i` follows (an earlier row), `None` for a child of the
    /// last cached token (position `start_pos - 1`). Token `i`'s KV goes to slot
    /// `start_pos + i` as usual, but it is rotated at position `start_pos - 1 + depth` and
    /// attends to the cached prefix plus its own ancestors (hybrid tree attention), so each
    /// row's logits are those of the path that leads to it. A chain (`parents[i] = i - 1`) is
    /// the ordinary causal run, which a dense backend runs as such (`None`); a TokenSelect
    /// backend needs it as a draft to select each row's keys as its decode step would.
    pub draft_tree: Option<&'a [Option<usize>]>,
}

/// Logit rows of a forward step, in batch order.
#[derive(Debug)]
pub struct Logits {
    vocab: usize,
    data: Vec<f32>,
    /// For each row: (index of the sequence in the batch, absolute position of the token the
    /// logits follow).
    rows: Vec<(usize, usize)>,
}

impl Logits {
    /// `rows.len()` rows of `vocab` logits in `data`, with their origins.
    pub(crate) fn new(vocab: usize, data: Vec<f32>, rows: Vec<(usize, usize)>) -> Self {
        Self { vocab, data, rows }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }

    /// (sequence index, position) of row `i`.
    pub fn origin(&self, i: usize) -> (usize, usize) {
        self.rows[i]
    }

    /// The last logit row of sequence `seq`, if it asked for any.
    pub fn last_of(&self, seq: usize) -> Option<&[f32]> {
        self.rows.iter().rposition(|&(s, _)| s == seq).map(|i| self.row(i))
    }

    /// All logit rows of sequence `seq`, in position order.
    pub fn rows_of(&self, seq: usize) -> impl Iterator<Item = &[f32]> {
        self.rows.iter().enumerate().filter(move |(_, (s, _))| *s == seq).map(|(i, _)| self.row(i))
    }
}

/// Per-row bookkeeping of a stacked batch.
pub(crate) struct RowMap {
    /// (sequence index, KV slot position) per row.
    pub origin: Vec<(usize, usize)>,
    /// RoPE position per row: the slot position, except in draft trees (by depth).
    pub rope_pos: Vec<usize>,
    /// First row of each sequence.
    pub first_row: Vec<usize>,
}

impl RowMap {
    /// The rows of each sequence that want logits, in batch order.
    pub fn logit_rows(&self, batch: &[SequenceInput<'_>]) -> Vec<usize> {
        let mut selected = Vec::new();
        for (seq_idx, seq) in batch.iter().enumerate() {
            let first = self.first_row[seq_idx];
            let range = match seq.logits {
                LogitsWanted::None => continue,
                LogitsWanted::Last => first + seq.tokens.len() - 1..first + seq.tokens.len(),
                LogitsWanted::All => first..first + seq.tokens.len(),
            };
            selected.extend(range);
        }
        selected
    }
}

impl Model {
    /// Runs `batch` through the model, appending each sequence's new K/V to `arena`.
    pub fn forward(&self, batch: &[SequenceInput<'_>], arena: &mut KvArena) -> Result<Logits> {
        let rows = validate_batch(&self.config, batch, arena.layout().block_size, arena.num_blocks())?;
        let cfg = &self.config;
        let total = rows.origin.len();
        let (hidden, q_dim, kv_dim) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim());
        let qkv_width = q_dim + 2 * kv_dim;
        let shape = AttnShape { n_heads: cfg.num_heads, n_kv_heads: cfg.num_kv_heads, head_dim: cfg.head_dim };

        let mut x = vec![0.0f32; total * hidden];
        for (row, &token) in batch.iter().flat_map(|s| s.tokens).enumerate() {
            self.weights.token_embedding.dequantize_row(token as usize, &mut x[row * hidden..(row + 1) * hidden])?;
        }

        let rope = match cfg.rope.layout {
            RopeLayout::Interleaved => rope_interleaved,
            RopeLayout::Halves => rope_neox,
        };
        let mut h = vec![0.0f32; total * hidden];
        let mut qkv = vec![0.0f32; total * qkv_width];
        let mut attn = vec![0.0f32; total * q_dim];
        let mut proj = vec![0.0f32; total * hidden];
        let mut gate_up = vec![0.0f32; total * 2 * cfg.intermediate_size];
        let mut act = vec![0.0f32; total * cfg.intermediate_size];

        for (layer_idx, layer) in self.weights.layers.iter().enumerate() {
            rms_norm(&x, &layer.attn_norm, cfg.rms_norm_eps, &mut h)?;
            layer.qkv.matmul(self.activations, &h, total, &mut qkv)?;
            if !layer.qkv_bias.is_empty() {
                for row in qkv.chunks_exact_mut(qkv_width) {
                    row.iter_mut().zip(&layer.qkv_bias).for_each(|(v, b)| *v += b);
                }
            }
            if !layer.q_norm.is_empty() {
                let mut scratch = vec![0.0f32; q_dim];
                for values in qkv.chunks_exact_mut(qkv_width) {
                    let (q, kv) = values.split_at_mut(q_dim);
                    for (heads, weight) in [(q, &layer.q_norm), (&mut kv[..kv_dim], &layer.k_norm)] {
                        let unnormed = &mut scratch[..heads.len()];
                        unnormed.copy_from_slice(heads);
                        rms_norm(unnormed, weight, cfg.rms_norm_eps, heads)?;
                    }
                }
            }
            for (values, &pos) in qkv.chunks_exact_mut(qkv_width).zip(&rows.rope_pos) {
                let (q, kv) = values.split_at_mut(q_dim);
                rope(q, cfg.num_heads, cfg.head_dim, &[pos], &self.rope)?;
                rope(&mut kv[..kv_dim], cfg.num_kv_heads, cfg.head_dim, &[pos], &self.rope)?;
            }
            self.write_kv(batch, &rows, &qkv, layer_idx, arena);

            // Each sequence attends to its own blocks, writing its own rows of `attn`; a batch
            // of decode rows (each too small to split across threads) runs sequences in
            // parallel.
            let arena = &*arena;
            let mut outputs = Vec::with_capacity(batch.len());
            let mut rest = &mut attn[..];
            for seq in batch {
                let (head, tail) = rest.split_at_mut(seq.tokens.len() * q_dim);
                outputs.push(head);
                rest = tail;
            }
            let attend = |(seq_idx, (seq, out)): (usize, (&SequenceInput<'_>, &mut &mut [f32]))| -> Result<()> {
                let (first, nq) = (rows.first_row[seq_idx], seq.tokens.len());
                let q_rows = qkv[first * qkv_width..(first + nq) * qkv_width].chunks_exact(qkv_width);
                let q_seq: Vec<f32> = q_rows.flat_map(|r| &r[..q_dim]).copied().collect();
                let len = seq.start_pos + nq;
                let block_size = arena.layout().block_size;
                let blocks = arena.layer_blocks(&seq.block_table[..len.div_ceil(block_size)], layer_idx);
                let kv = blocks.paged(block_size, len);
                match seq.draft_tree {
                    Some(parents) => seq.attention.attend_draft(layer_idx, &q_seq, parents, &kv, &shape, out)?,
                    None => seq.attention.attend(layer_idx, &q_seq, nq, &kv, &shape, out)?,
                }
                Ok(())
            };
            if batch.len() > 1 && total <= PARALLEL_ATTENTION_MAX_ROWS {
                batch.par_iter().zip(outputs.par_iter_mut()).enumerate().try_for_each(attend)?;
            } else {
                batch.iter().zip(outputs.iter_mut()).enumerate().try_for_each(attend)?;
            }

            layer.attn_output.matmul_with_activations(self.activations, &attn, total, &mut proj)?;
            add_inplace(&mut x, &proj)?;
            rms_norm(&x, &layer.ffn_norm, cfg.rms_norm_eps, &mut h)?;
            layer.gate_up.matmul(self.activations, &h, total, &mut gate_up)?;
            let ffn = cfg.intermediate_size;
            for (gu, a) in gate_up.chunks_exact(2 * ffn).zip(act.chunks_exact_mut(ffn)) {
                let (gate, up) = gu.split_at(ffn);
                silu_mul(gate, up, a)?;
            }
            layer.ffn_down.matmul_with_activations(self.activations, &act, total, &mut proj)?;
            add_inplace(&mut x, &proj)?;
        }

        self.lm_head(batch, &rows, &x)
    }

    /// Scatters the rotated keys and the values of every row into the row's block and slot.
    fn write_kv(&self, batch: &[SequenceInput<'_>], rows: &RowMap, qkv: &[f32], layer: usize, arena: &mut KvArena) {
        let (q_dim, kv_dim) = (self.config.q_dim(), self.config.kv_dim());
        let qkv_width = q_dim + 2 * kv_dim;
        let block_size = arena.layout().block_size;
        for (row, &(seq, pos)) in rows.origin.iter().enumerate() {
            let block = batch[seq].block_table[pos / block_size];
            let slot = pos % block_size;
            let values = &qkv[row * qkv_width..(row + 1) * qkv_width];
            let (keys, values) = values[q_dim..].split_at(kv_dim);
            arena.write_position(block, layer, slot, keys, values);
        }
    }

    /// Final norm and LM head over the rows that want logits only.
    fn lm_head(&self, batch: &[SequenceInput<'_>], rows: &RowMap, x: &[f32]) -> Result<Logits> {
        let hidden = self.config.hidden_size;
        let selected = rows.logit_rows(batch);
        let mut gathered = Vec::with_capacity(selected.len() * hidden);
        for &row in &selected {
            gathered.extend_from_slice(&x[row * hidden..(row + 1) * hidden]);
        }
        let mut normed = vec![0.0; gathered.len()];
        rms_norm(&gathered, &self.weights.output_norm, self.config.rms_norm_eps, &mut normed)?;
        let vocab = self.config.vocab_size;
        let mut data = vec![0.0; selected.len() * vocab];
        if !selected.is_empty() {
            self.weights.lm_head.matmul_with_activations(self.activations, &normed, selected.len(), &mut data)?;
        }
        Ok(Logits::new(vocab, data, selected.iter().map(|&r| rows.origin[r]).collect()))
    }
}

/// Checks every batch entry before any KV is written, so a bad request changes nothing; the
/// rows of the stacked batch. `block_size` and `num_blocks` describe the KV pool.
pub(crate) fn validate_batch(
    config: &ModelConfig,
    batch: &[SequenceInput<'_>],
    block_size: usize,
    num_blocks: usize,
) -> Result<RowMap> {
    let vocab = config.vocab_size;
    let mut origin = Vec::new();
    let mut rope_pos = Vec::new();
    let mut first_row = Vec::with_capacity(batch.len());
    for (index, seq) in batch.iter().enumerate() {
        let invalid = |reason: String| ModelError::InvalidBatch { index, reason };
        if seq.tokens.is_empty() {
            return Err(invalid("no tokens".into()));
        }
        let end = seq.start_pos + seq.tokens.len();
        if end > config.context_length {
            return Err(ModelError::ContextExceeded { position: end, context: config.context_length });
        }
        if seq.block_table.len() * block_size < end {
            return Err(invalid(format!(
                "block table covers {} positions, need {end}",
                seq.block_table.len() * block_size
            )));
        }
        if let Some(&b) = seq.block_table.iter().find(|b| b.0 as usize >= num_blocks) {
            return Err(invalid(format!("block {} outside the pool of {} blocks", b.0, num_blocks)));
        }
        if let Some(&token) = seq.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { token, vocab });
        }
        first_row.push(origin.len());
        origin.extend((seq.start_pos..end).map(|pos| (index, pos)));
        match seq.draft_tree {
            None => rope_pos.extend(seq.start_pos..end),
            Some(parents) => {
                if parents.len() != seq.tokens.len() {
                    return Err(invalid(format!(
                        "draft tree of {} rows for {} tokens",
                        parents.len(),
                        seq.tokens.len()
                    )));
                }
                let depths = tree_depths(parents).map_err(|e| invalid(format!("draft tree: {e}")))?;
                if seq.start_pos == 0 && !depths.is_empty() {
                    return Err(invalid("a draft tree needs the token it follows in the cache".into()));
                }
                rope_pos.extend(depths.iter().map(|d| seq.start_pos - 1 + d));
            }
        }
    }
    Ok(RowMap { origin, rope_pos, first_row })
}
