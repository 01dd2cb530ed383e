//! A request inside the engine: its tokens, its blocks, and where it is in its life.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lcserve_common::{BlockId, Namespace, SequenceHash, TokenId};
use lcserve_kernels::sparse::SparseStats;
use lcserve_model::TokenSelectAttention;
use lcserve_text::TokenConstraint;
use tokio::sync::mpsc::UnboundedSender;

use crate::error::EngineError;
use crate::kv_transfer::{Exporter, ImportedKv};
use crate::prompt_logprobs::PromptLogprobs;
use crate::reasoning_cap::ReasoningCap;
use crate::request::{EngineEvent, MatchedStop, StopConditions, Usage};
use crate::sampler::{SampledToken, Sampler};
use crate::speculative::{AutoDraft, Drafter};
use crate::stop_text::StopText;

/// Where a sequence stands in the scheduler's queues: better (lower) priority first, then
/// earlier arrival. Both queues are kept in this order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Rank {
    pub priority: i32,
    /// Order of arrival at the scheduler, which sets it.
    pub arrival: u64,
}

pub(crate) struct Sequence {
    pub rank: Rank,
    /// Prompt followed by generated tokens.
    pub tokens: Vec<TokenId>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the arena (a prefix of `tokens`).
    pub computed: usize,
    /// Block table: block `i` holds positions `i*B .. (i+1)*B`.
    pub blocks: Vec<BlockId>,
    /// Leading blocks registered in the prefix cache, and the hash of the last of them.
    pub registered: usize,
    pub last_hash: SequenceHash,
    pub namespace: Namespace,
    pub sampler: Sampler,
    /// The structured output the tokens must follow, at the position after the last token.
    pub constraint: Option<TokenConstraint>,
    pub stop: StopConditions,
    /// The first this many of `stop.stop_token_ids` are the request's own; the rest are the
    /// model's end-of-sequence tokens.
    pub requested_stop_tokens: usize,
    /// The request's stop token or string that ended the sequence.
    pub matched_stop: Option<MatchedStop>,
    /// The request's reasoning budget, following the answer through its reasoning block.
    pub reasoning_cap: Option<ReasoningCap>,
    pub text: StopText,
    pub events: UnboundedSender<EngineEvent>,
    /// Prompt tokens served from the prefix cache at (first) admission.
    pub cached_tokens: Option<usize>,
    /// KV that came with the request; consumed at first admission.
    pub import: Option<ImportedKv>,
    /// Prompt tokens whose KV was imported at first admission.
    pub imported_tokens: usize,
    pub exporter: Option<Exporter>,
    pub submitted: Instant,
    pub first_token_at: Option<Instant>,
    /// Wall time of steps that computed this sequence's prompt.
    pub prefill_time: Duration,
    /// The prompt prefills with sparse attention (and its blocks live in the sparse namespace).
    pub sparse_prefill: bool,
    /// What sparse prefill computed so far.
    pub sparse_stats: SparseStats,
    /// Proposes draft tokens while decoding (speculative decoding); `None` = plain decoding.
    pub drafter: Option<Arc<dyn Drafter>>,
    /// Each step's draft length under `Speculation::Auto`; `None` drafts as much as proposed.
    pub auto_draft: Option<AutoDraft>,
    /// Draft tokens proposed and accepted so far.
    pub speculative_proposed: usize,
    pub speculative_accepted: usize,
    /// The decode attention of a TokenSelect request, with its selection cache.
    pub token_select: Option<TokenSelectAttention>,
    /// The constant-budget attention of `Speculation::SelfDraft`'s drafting passes.
    pub self_draft: Option<TokenSelectAttention>,
    /// The prompt's logprobs, gathered while it prefills, when the request asked for them.
    pub prompt_logprobs: Option<PromptLogprobs>,
    pub spans: SequenceSpans,
}

/// The sequence's part of its request's trace: each prefill chunk is a span; decoding is one
/// span summarizing its steps (a span per token would swamp the trace store).
pub(crate) struct SequenceSpans {
    /// The submitter's span (the worker's request span): the parent of the others.
    request: tracing::Span,
    decode: Option<tracing::Span>,
    decode_steps: usize,
}

impl SequenceSpans {
    pub fn new(request: tracing::Span) -> Self {
        SequenceSpans { request, decode: None, decode_steps: 0 }
    }

    /// The span of one prefill chunk: open it before the step, drop it after.
    pub fn prefill_chunk(&self, start: usize, tokens: usize, sparse: bool) -> tracing::Span {
        tracing::info_span!(parent: &self.request, "engine.prefill_chunk", start, tokens, sparse)
    }

    /// Counts a decode step, opening the decode span at the first.
    pub fn decode_step(&mut self) {
        self.decode_steps += 1;
        if self.decode.is_none() {
            let span = tracing::info_span!(
                parent: &self.request,
                "engine.decode",
                steps = tracing::field::Empty,
                tokens = tracing::field::Empty,
                speculative_accepted = tracing::field::Empty,
            );
            self.decode = Some(span);
        }
    }

    /// Closes the decode span with the sequence's totals.
    pub fn close(&mut self, usage: &Usage) {
        if let Some(span) = self.decode.take() {
            span.record("steps", self.decode_steps);
            span.record("tokens", usage.completion_tokens);
            span.record("speculative_accepted", usage.speculative_accepted);
        }
    }
}

impl Sequence {
    pub fn generated(&self) -> &[TokenId] {
        &self.tokens[self.prompt_len..]
    }

    /// Draws the next token from `row`, among the tokens the constraint allows and, before
    /// `min_tokens`, no stop token (unless the constraint allows nothing else).
    pub fn sample_next(&mut self, row: &[f32]) -> Result<SampledToken, EngineError> {
        let constrained = self.constraint.as_mut().map(TokenConstraint::allowed).transpose()?;
        let constrained = constrained.as_ref().map(|a| a.words());
        // A spent reasoning budget closes the block, whatever else holds.
        let forced = self.reasoning_cap.as_ref().and_then(ReasoningCap::forced).map(|end| only(end, row.len()));
        let too_early = forced.is_none() && self.generated().len() < self.stop.min_tokens;
        let without_stops = too_early.then(|| self.without_stop_tokens(constrained, row.len()));
        let allowed = forced.as_deref().or(without_stops.as_deref()).or(constrained);
        let (prompt, generated) = self.tokens.split_at(self.prompt_len);
        Ok(self.sampler.sample_among(row, prompt, generated, allowed)?)
    }

    /// `allowed` (every token of a `vocab`-token row when `None`) less the stop tokens, unless
    /// that leaves nothing.
    fn without_stop_tokens(&self, allowed: Option<&[u32]>, vocab: usize) -> Vec<u32> {
        let all = allowed.map_or_else(|| vec![u32::MAX; vocab.div_ceil(32)], <[u32]>::to_vec);
        let mut words = all.clone();
        for &token in &self.stop.stop_token_ids {
            if let Some(word) = words.get_mut(token as usize / 32) {
                *word &= !(1 << (token % 32));
            }
        }
        if words.iter().all(|&w| w == 0) { all } else { words }
    }

    /// Tokens still to be run through the model.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Tokens whose KV any request with the same tokens would compute, so it may be shared
    /// (prefix cache, export): every computed one, except that TokenSelect decoding's
    /// positions after the prompt are its own, lossy, and stay private. Sharing them would also
    /// let a dense request's block replace one mid-decode, changing TokenSelect's tokens.
    pub fn shareable(&self) -> usize {
        if self.token_select.is_some() { self.computed.min(self.prompt_len) } else { self.computed }
    }

    pub fn is_prefilling(&self) -> bool {
        self.computed < self.prompt_len
    }

    /// The prompt must run with its logits rows, for its logprobs.
    pub fn wants_prompt_logits(&self) -> bool {
        self.prompt_logprobs.as_ref().is_some_and(PromptLogprobs::wanted)
    }

    /// The caller dropped its stream: cancel.
    pub fn is_abandoned(&self) -> bool {
        self.events.is_closed()
    }

    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated().len(),
            cached_tokens: self.cached_tokens.unwrap_or(0),
            imported_tokens: self.imported_tokens,
            prefill_density: match (self.prefill_time.is_zero(), self.sparse_prefill) {
                (true, _) => 0.0,
                (false, true) => self.sparse_stats.density(),
                (false, false) => 1.0,
            },
            speculative_proposed: self.speculative_proposed,
            speculative_accepted: self.speculative_accepted,
            kv_selection_budget: self.token_select.as_ref().map_or(0, |t| t.selection().budget),
            kv_selection_density: self.token_select.as_ref().map_or(0.0, |t| t.stats().density()),
            kv_selection_reuse: self.token_select.as_ref().map_or(0.0, |t| t.stats().reuse()),
        }
    }

    /// The sequence was admitted before (it has been preempted since if it waits).
    pub fn was_admitted(&self) -> bool {
        self.cached_tokens.is_some()
    }

    /// Forgets all KV (after preemption): the caller has released `blocks`.
    pub fn reset_kv(&mut self) {
        self.blocks.clear();
        self.computed = 0;
        self.registered = 0;
        self.last_hash = self.namespace.root();
        for attention in self.token_select.iter().chain(&self.self_draft) {
            attention.reset();
        }
    }
}

/// The allowed-token words (one bit per token id) of a `vocab`-token row that allow `token`
/// alone.
fn only(token: TokenId, vocab: usize) -> Vec<u32> {
    let mut words = vec![0; vocab.div_ceil(32)];
    if let Some(word) = words.get_mut(token as usize / 32) {
        *word |= 1 << (token % 32);
    }
    words
}
