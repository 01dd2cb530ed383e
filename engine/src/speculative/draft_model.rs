//! `Speculation::Draft`: a separate small model that shares the target's vocabulary proposes
//! greedy continuations.
//!
//! Sliding-window cache: each step the draft model reads only the sequence's last `window`
//! tokens (re-based at position 0 — rotary attention depends on relative positions only) into
//! a scratch arena, then decodes its proposal one token at a time. It keeps no state between
//! steps, so one drafter serves every sequence, holds no memory per sequence, and never goes
//! stale after a rejected draft or a preemption. Greedy drafts are deterministic, so the
//! engine's deterministic-draft verification stays lossless under any sampling settings.

use std::sync::Arc;

use lcserve_common::{BlockId, TokenId};
use lcserve_model::{DenseAttention, KvArena, LogitsWanted, Model, ModelError, SequenceInput};

use super::Drafter;
use crate::error::EngineError;

/// Tokens per block of the scratch arena.
const SCRATCH_BLOCK: usize = 16;

/// Proposes the draft model's greedy continuation of a sequence's recent tokens.
#[derive(Debug)]
pub struct DraftModelDrafter {
    model: Arc<Model>,
    window: usize,
}

impl DraftModelDrafter {
    /// A drafter for `target` reading the last `window` tokens of each sequence. Errors when
    /// the vocabularies differ (token ids would mean different text) or the draft model's
    /// context cannot hold `window` tokens plus a draft.
    pub fn new(draft: Arc<Model>, target: &Model, window: usize) -> Result<Self, EngineError> {
        let invalid = |reason: String| EngineError::InvalidConfig { field: "draft_model", reason };
        let (ours, theirs) = (&draft.tokenizer, &target.tokenizer);
        if draft.config.vocab_size != target.config.vocab_size || ours.vocab_size() != theirs.vocab_size() {
            return Err(invalid(format!(
                "its vocabulary has {} tokens, the target's {}: a draft model must share the target's tokenizer",
                draft.config.vocab_size, target.config.vocab_size
            )));
        }
        if let Some(id) = (0..ours.vocab_size() as u32).find(|&id| ours.id_to_token(id) != theirs.id_to_token(id)) {
            return Err(invalid(format!(
                "token {id} is {:?} there and {:?} in the target: a draft model must share the target's tokenizer",
                ours.id_to_token(id),
                theirs.id_to_token(id)
            )));
        }
        let need = window + super::DEFAULT_DRAFT_TOKENS;
        if window == 0 || need > draft.config.context_length {
            return Err(EngineError::InvalidConfig {
                field: "draft_window",
                reason: format!(
                    "{window} must be positive, and with a draft fit the draft model's context of {}",
                    draft.config.context_length
                ),
            });
        }
        Ok(Self { model: draft, window })
    }

    fn draft(&self, tokens: &[TokenId], max: usize) -> Result<Vec<TokenId>, ModelError> {
        let context = &tokens[tokens.len().saturating_sub(self.window)..];
        let blocks = (context.len() + max).div_ceil(SCRATCH_BLOCK);
        let mut arena = KvArena::new(self.model.kv_layout(SCRATCH_BLOCK), blocks);
        let table: Vec<BlockId> = (0..blocks as u32).map(BlockId).collect();
        let mut proposal = Vec::with_capacity(max);
        let (mut input, mut start) = (context.to_vec(), 0);
        while proposal.len() < max && !input.is_empty() {
            let batch = [SequenceInput {
                tokens: &input,
                start_pos: start,
                block_table: &table,
                logits: LogitsWanted::Last,
                attention: &DenseAttention,
                draft_tree: None,
            }];
            let logits = self.model.forward(&batch, &mut arena)?;
            let Some(row) = logits.last_of(0) else { break };
            let next = argmax(row);
            proposal.push(next);
            start += input.len();
            input = vec![next];
        }
        Ok(proposal)
    }
}

impl Drafter for DraftModelDrafter {
    fn propose(&self, tokens: &[TokenId], max: usize) -> Vec<TokenId> {
        self.draft(tokens, max).unwrap_or_else(|error| {
            tracing::warn!(%error, "draft model failed; decoding this step without a draft");
            Vec::new()
        })
    }
}

/// The first index of the largest logit: a greedy draft token.
pub(crate) fn argmax(row: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as TokenId
}
