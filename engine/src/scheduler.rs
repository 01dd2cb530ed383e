//! One engine step at a time: admit, batch, run, sample, retire.
//!
//! Every step stacks the one pending token of each decoding sequence with up to
//! `prefill_chunk` prompt tokens of prefilling sequences into a single forward pass (chunked
//! prefill mixed with continuous batching), so long prompts never stall running streams.
//! Blocks for a prompt are allocated at admission after reusing the longest cached prefix;
//! decode allocates a block at each boundary and, when the pool is full, preempts the last
//! running sequence by recompute (its blocks are released, it re-queues in its place and later
//! recomputes — usually from its own now-cached prefix).
//!
//! **Priorities.** Both queues are kept in [`Rank`] order: priority (lower first), then
//! arrival. So a waiting sequence is admitted before any of worse priority, the step's prefill
//! budget goes to the best-ranked prompts first (an interactive prompt is not stuck behind a
//! batch job's long one), and the last running sequence, the one preempted when blocks run out,
//! is the worst-ranked. A waiting sequence that finds the batch or the pool full preempts a
//! running one of strictly worse priority; equal priorities never preempt each other, so with
//! one priority the engine is first come, first served.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use lcserve_common::{BlockId, SequenceHash, TokenId, chain_hash, sequence_hashes};
use lcserve_model::{
    AttentionBackend, DenseAttention, HeadPatterns, Logits, LogitsWanted, Model, SequenceInput, SparseAttention,
};
use lcserve_text::TokenConstraint;
use rayon::prelude::*;

use crate::block_allocator::BlockAllocator;
use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::executor::Executor;
use crate::kv_transfer::ImportedKv;
use crate::request::{EngineEvent, FinishReason, MatchedStop, Timings, TokenLogprobs};
use crate::sampler::SampledToken;
use crate::sequence::{Rank, Sequence};
use crate::speculative::{DEFAULT_DRAFT_NODES, DEFAULT_DRAFT_TOKENS, DraftTree, argmax};

/// Pool and queue occupancy, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    pub capacity_blocks: usize,
    pub free_blocks: usize,
    pub cached_blocks: usize,
    pub used_blocks: usize,
    pub evictions: u64,
    /// Sequences preempted (by recompute) since start: for KV blocks, or for a request of
    /// better priority.
    pub preemptions: u64,
    pub running: usize,
    pub waiting: usize,
    /// Prompt tokens computed by the model since start (cached ones excluded).
    pub prefill_tokens: u64,
    /// Tokens admitted or waiting that still have to run through the model before their
    /// sequences decode: the queued prefill work a router weighs.
    pub queued_prefill_tokens: u64,
}

pub(crate) struct Scheduler {
    model: Arc<Model>,
    config: EngineConfig,
    /// The model's forward and the KV pool, on the CPU or a GPU.
    executor: Executor,
    allocator: BlockAllocator,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    prefill_tokens: u64,
    /// Head patterns of sparse prefill.
    patterns: HeadPatterns,
    /// The arrival number the next enqueued sequence gets.
    next_arrival: u64,
    preemptions: u64,
}

/// What one sequence contributes to a step.
struct Slot {
    seq: usize,
    start: usize,
    len: usize,
    logits: LogitsWanted,
    /// The step samples the sequence's next token from its last row (it ends the pending
    /// tokens and verifies no draft).
    samples: bool,
    /// Draft tokens appended after the pending token for verification (speculative decoding),
    /// in node order; their logits rows follow the pending token's.
    draft: DraftTree,
    /// The draft is the structured output's forced tokens, not the drafter's guess: `auto`
    /// does not count its acceptance as the drafter's.
    forced: bool,
    /// The verification rows' parents when the draft branches (hybrid tree attention) or the
    /// sequence selects its keys (TokenSelect); otherwise a chain runs as an ordinary causal run.
    tree_rows: Option<Vec<Option<usize>>>,
}

impl Slot {
    /// The step ends with a token of the sequence: sampled, or the verification's bonus.
    fn yields_token(&self) -> bool {
        self.samples || !self.draft.is_empty()
    }
}

impl Scheduler {
    pub fn new(model: Arc<Model>, config: EngineConfig, patterns: HeadPatterns) -> Result<Self, EngineError> {
        let layout = model.kv_layout(config.block_size);
        let block_bytes = layout.bytes_per_block(config.pool_dtype().bytes());
        let num_blocks = config.kv_cache_bytes / block_bytes;
        if num_blocks == 0 {
            return Err(EngineError::InvalidConfig {
                field: "kv_cache_bytes",
                reason: format!("{} bytes hold no {block_bytes}-byte KV block", config.kv_cache_bytes),
            });
        }
        let allocator = BlockAllocator::new(num_blocks)?;
        Ok(Self {
            executor: Executor::new(Arc::clone(&model), &config, layout, num_blocks)?,
            allocator,
            model,
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            prefill_tokens: 0,
            patterns,
            next_arrival: 0,
            preemptions: 0,
        })
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn enqueue(&mut self, mut seq: Sequence) {
        seq.rank.arrival = self.next_arrival;
        self.next_arrival += 1;
        // Past the queue's bound (beyond what the next step admits) the engine is overloaded:
        // refused now, a router tries another worker. A better priority than the worst waiting
        // request's, one that has not run yet, takes its place instead.
        let admissible = self.config.max_running.saturating_sub(self.running.len());
        if self.waiting.len() >= self.config.max_waiting + admissible {
            let displaceable = self
                .waiting
                .back()
                .is_some_and(|worst| worst.rank.priority > seq.rank.priority && !worst.was_admitted());
            if !displaceable {
                fail(seq, EngineError::Overloaded);
                return;
            }
            if let Some(worst) = self.waiting.pop_back() {
                fail(worst, EngineError::Overloaded);
            }
        }
        // A sequence that could never fit, even alone at its longest, is refused up front rather
        // than preempting everything and failing later.
        let longest = seq.prompt_len + seq.stop.max_tokens;
        let needed = longest.div_ceil(self.config.block_size);
        if needed > self.allocator.capacity() {
            fail(
                seq,
                EngineError::TooLargeForPool { needed_blocks: needed, capacity_blocks: self.allocator.capacity() },
            );
            return;
        }
        self.insert_waiting(seq);
    }

    /// Queues `seq` behind every waiting sequence of better or equal rank.
    fn insert_waiting(&mut self, seq: Sequence) {
        let at = self.waiting.partition_point(|other| other.rank <= seq.rank);
        self.waiting.insert(at, seq);
    }

    /// Preempts the last running sequence, the worst-ranked, if its priority is worse than
    /// `rank`'s; returns whether it did.
    fn preempt_worse_than(&mut self, rank: Rank) -> bool {
        if self.running.last().is_none_or(|last| last.rank.priority <= rank.priority) {
            return false;
        }
        let Some(mut victim) = self.running.pop() else { return false };
        self.release_blocks(&mut victim);
        victim.reset_kv();
        self.insert_waiting(victim);
        self.preemptions += 1;
        true
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            capacity_blocks: self.allocator.capacity(),
            free_blocks: self.allocator.num_free(),
            cached_blocks: self.allocator.num_cached(),
            used_blocks: self.allocator.num_in_use(),
            evictions: self.allocator.evictions(),
            preemptions: self.preemptions,
            running: self.running.len(),
            waiting: self.waiting.len(),
            prefill_tokens: self.prefill_tokens,
            queued_prefill_tokens: self.running.iter().chain(&self.waiting).map(|s| s.pending() as u64).sum(),
        }
    }

    /// Leading blocks of `hashes` held in the pool.
    pub fn cached_prefix_len(&self, hashes: &[SequenceHash]) -> usize {
        self.allocator.peek_prefix_len(hashes)
    }

    /// Ends every sequence with `error` (shutdown).
    pub fn abort_all(&mut self, error: EngineError) {
        let all: Vec<Sequence> = self.running.drain(..).chain(self.waiting.drain(..)).collect();
        for mut seq in all {
            self.release_blocks(&mut seq);
            fail(seq, error.clone());
        }
    }

    /// Runs one step. Errors here are per-sequence and already reported to their callers.
    pub fn step(&mut self) {
        self.drop_abandoned();
        self.admit();
        let slots = self.plan();
        if slots.is_empty() {
            return;
        }
        let started = Instant::now();
        let chunk_spans: Vec<tracing::Span> = slots
            .iter()
            .filter_map(|slot| {
                let seq = &mut self.running[slot.seq];
                if seq.is_prefilling() {
                    return Some(seq.spans.prefill_chunk(slot.start, slot.len, seq.sparse_prefill));
                }
                seq.spans.decode_step();
                None
            })
            .collect();
        // Sequences that prefill sparsely this step get a backend of their own, which counts
        // what it computed.
        let sparse: Vec<Option<SparseAttention<'_>>> = slots
            .iter()
            .map(|slot| {
                let seq = &self.running[slot.seq];
                (seq.sparse_prefill && seq.is_prefilling()).then(|| SparseAttention::new(&self.patterns))
            })
            .collect();
        let result = {
            let inputs: Vec<SequenceInput<'_>> = slots
                .iter()
                .zip(&sparse)
                .map(|(slot, sparse)| {
                    let seq = &self.running[slot.seq];
                    let attention: &dyn AttentionBackend = match (sparse, &seq.token_select) {
                        (Some(sparse), _) => sparse,
                        (None, Some(token_select)) if !seq.is_prefilling() => token_select,
                        _ => &DenseAttention,
                    };
                    SequenceInput {
                        tokens: &seq.tokens[slot.start..slot.start + slot.len],
                        start_pos: slot.start,
                        block_table: &seq.blocks,
                        logits: slot.logits,
                        attention,
                        draft_tree: slot.tree_rows.as_deref(),
                    }
                })
                .collect();
            self.executor.forward(&inputs)
        };
        let sparse_stats: Vec<_> = sparse.iter().map(|s| s.as_ref().map(SparseAttention::stats)).collect();
        drop(sparse);
        drop(chunk_spans);
        let logits = match result {
            Ok(logits) => logits,
            Err(error) => {
                // A model error fails the sequences of this step, not the engine.
                let mut failed: Vec<usize> = slots.iter().map(|s| s.seq).collect();
                failed.sort_unstable();
                for index in failed.into_iter().rev() {
                    let mut seq = self.running.remove(index);
                    self.release_blocks(&mut seq);
                    fail(seq, error.clone());
                }
                return;
            }
        };
        let elapsed = started.elapsed();
        let decode_only = slots.iter().all(|slot| slot.yields_token() && slot.len == slot.draft.len() + 1);
        let mut sampled = sample_rows(&mut self.running, &slots, &logits);

        let mut finished = Vec::new();
        for (batch_index, slot) in slots.iter().enumerate() {
            let seq = &mut self.running[slot.seq];
            if let Some(stats) = &sparse_stats[batch_index] {
                seq.sparse_stats.add(stats);
            }
            if seq.is_prefilling() {
                seq.prefill_time += elapsed;
                self.prefill_tokens += slot.len.min(seq.prompt_len - slot.start) as u64;
            }
            if !slot.draft.is_empty() {
                // Verify first: only accepted drafts become KV that may be cached or exported.
                let rows: Vec<&[f32]> = logits.rows_of(batch_index).collect();
                let accepted_before = seq.speculative_accepted;
                match verify_draft(seq, slot, &rows, &mut self.executor, self.model.config.context_length) {
                    Ok(None) => {}
                    Ok(Some(reason)) => finished.push((slot.seq, Ok(reason))),
                    Err(error) => finished.push((slot.seq, Err(error))),
                }
                if let Some(auto) = &mut seq.auto_draft {
                    if !slot.forced {
                        auto.observe_draft(slot.draft.len(), seq.speculative_accepted - accepted_before);
                    }
                    auto.check_shadow(&seq.tokens);
                    auto.observe_step(slot.draft.len(), elapsed.as_secs_f64(), decode_only);
                }
            } else {
                seq.computed = slot.start + slot.len;
                if slot.logits == LogitsWanted::All
                    && let Some(prompt_logprobs) = seq.prompt_logprobs.as_mut()
                {
                    prompt_logprobs.record(&seq.tokens[..seq.prompt_len], slot.start, logits.rows_of(batch_index));
                    if let Some(scored) = prompt_logprobs.take_complete(seq.prompt_len) {
                        let _ = seq.events.send(EngineEvent::PromptLogprobs(scored));
                    }
                }
            }
            if self.config.prefix_caching {
                register_full_blocks(seq, &mut self.allocator, self.config.block_size);
            }
            let shareable = seq.shareable();
            if let Some(exporter) = &mut seq.exporter {
                let block_size = self.config.block_size;
                // A step that yields a token waits for the copies: blocks go out before it.
                let yields_token = slot.yields_token();
                match exporter.advance(
                    &self.executor,
                    block_size,
                    &seq.tokens,
                    shareable,
                    seq.prompt_len,
                    &seq.blocks,
                    yields_token,
                ) {
                    Ok(blocks) if blocks.is_empty() => {}
                    Ok(blocks) => {
                        let _ = seq.events.send(EngineEvent::Kv(blocks));
                    }
                    Err(error) => {
                        // A GPU pool that cannot be read fails the sequence, whatever its
                        // verification decided.
                        finished.retain(|(index, _)| *index != slot.seq);
                        finished.push((slot.seq, Err(error)));
                        continue;
                    }
                }
            }
            if !slot.draft.is_empty() {
                continue;
            }
            let Some(token) = sampled[batch_index].take() else { continue };
            let decoding = slot.len == 1 && slot.start >= seq.prompt_len;
            match token.and_then(|t| emit(seq, t, self.model.config.context_length)) {
                Ok(None) => {}
                Ok(Some(reason)) => finished.push((slot.seq, Ok(reason))),
                Err(error) => finished.push((slot.seq, Err(error))),
            }
            if let Some(auto) = seq.auto_draft.as_mut().filter(|_| decoding) {
                auto.check_shadow(&seq.tokens);
                auto.observe_step(0, elapsed.as_secs_f64(), decode_only);
            }
        }
        finished.sort_unstable_by_key(|(index, _)| *index);
        for (index, outcome) in finished.into_iter().rev() {
            let mut seq = self.running.remove(index);
            self.release_blocks(&mut seq);
            match outcome {
                Ok(reason) => finish(seq, reason),
                Err(error) => fail(seq, error),
            }
        }
    }

    fn drop_abandoned(&mut self) {
        let mut index = 0;
        while index < self.running.len() {
            if self.running[index].is_abandoned() {
                let mut seq = self.running.remove(index);
                self.release_blocks(&mut seq);
            } else {
                index += 1;
            }
        }
        self.waiting.retain(|seq| !seq.is_abandoned());
    }

    /// Moves waiting sequences to running, best-ranked first, while the batch and the blocks
    /// allow (preempting running sequences of worse priority when they do not), reusing cached
    /// prefixes.
    fn admit(&mut self) {
        let block_size = self.config.block_size;
        while let Some(rank) = self.waiting.front().map(|seq| seq.rank) {
            if self.running.len() >= self.config.max_running {
                if self.preempt_worse_than(rank) {
                    continue;
                }
                break;
            }
            let Some(mut seq) = self.waiting.pop_front() else { break };
            let importing = seq.import.is_some();
            let hashes = if self.config.prefix_caching || importing {
                sequence_hashes(seq.namespace, &seq.tokens, block_size)
            } else {
                Vec::new()
            };
            // A prompt scored for its logprobs runs whole: cached blocks have no logits.
            let scoring = seq.wants_prompt_logits();
            if let Some(prompt_logprobs) = seq.prompt_logprobs.as_mut().filter(|_| scoring) {
                prompt_logprobs.restart();
            }
            let mut cached =
                if self.config.prefix_caching && !scoring { self.allocator.lookup_prefix(&hashes) } else { Vec::new() };
            // The last token must run to produce logits, so its block is never reused.
            let reusable = (seq.tokens.len() - 1) / block_size;
            for extra in cached.drain(reusable.min(cached.len())..) {
                self.release_or_log(extra);
            }
            let needed = seq.tokens.len().div_ceil(block_size) - cached.len();
            match self.allocator.allocate_many(needed) {
                Ok(fresh) => {
                    let device_blocks = cached.len();
                    seq.registered = device_blocks;
                    seq.last_hash = device_blocks.checked_sub(1).map_or(seq.namespace.root(), |i| hashes[i]);
                    seq.computed = device_blocks * block_size;
                    seq.blocks = cached;
                    seq.blocks.extend(fresh);
                    seq.cached_tokens.get_or_insert(seq.computed);
                    if let Some(import) = seq.import.take() {
                        let computed = match write_imported(&mut self.executor, block_size, &seq, import, reusable) {
                            Ok(computed) => computed,
                            Err(error) => {
                                self.release_blocks(&mut seq);
                                fail(seq, error);
                                continue;
                            }
                        };
                        seq.imported_tokens = computed - seq.computed;
                        seq.computed = computed;
                        if self.config.prefix_caching {
                            register_full_blocks(&mut seq, &mut self.allocator, block_size);
                        }
                    }
                    let at = self.running.partition_point(|other| other.rank <= seq.rank);
                    self.running.insert(at, seq);
                }
                Err(exhausted) => {
                    for block in cached {
                        self.release_or_log(block);
                    }
                    if self.preempt_worse_than(seq.rank) {
                        self.insert_waiting(seq);
                        continue;
                    }
                    if self.running.is_empty() {
                        fail(seq, exhausted.into());
                    } else {
                        self.insert_waiting(seq);
                    }
                    break;
                }
            }
        }
    }

    /// Picks each running sequence's tokens for this step and makes sure their blocks exist.
    fn plan(&mut self) -> Vec<Slot> {
        // The step's prompt budget: `prefill_chunk` dense tokens or `sparse_prefill_chunk`
        // sparse ones (sparse attention makes a prompt token cheaper), in units where a dense
        // token costs `sparse_prefill_chunk` and a sparse one `prefill_chunk`.
        let (dense_chunk, sparse_chunk) = (self.config.prefill_chunk, self.config.sparse_prefill_chunk);
        let mut budget = dense_chunk * sparse_chunk;
        let mut slots = Vec::new();
        let mut index = 0;
        while index < self.running.len() {
            let seq = &self.running[index];
            let pending = seq.pending();
            // Prompts (and sequences recomputing after preemption) catch up in chunks from the
            // step's budget; decoding sequences run their one pending token.
            let catching_up = pending > 1;
            // A scored prompt keeps every row's logits: its chunks stay dense-sized, whatever its
            // attention, to bound that memory (`prefill_chunk` × vocabulary floats).
            let cheap_rows = seq.sparse_prefill && seq.is_prefilling() && !seq.wants_prompt_logits();
            let cost = if cheap_rows { dense_chunk } else { sparse_chunk };
            let len = if catching_up { pending.min(budget / cost) } else { pending };
            if len == 0 {
                index += 1;
                continue;
            }
            let start = seq.computed;
            let (draft, forced) = if catching_up { (DraftTree::chain(&[]), false) } else { self.propose(index) };
            if !self.ensure_blocks(index, start + len + draft.len()) {
                // `index` was preempted (or failed); the sequence now at `index` is another one.
                continue;
            }
            if catching_up {
                budget -= len * cost;
            }
            let seq = &mut self.running[index];
            let samples = draft.is_empty() && start + len == seq.tokens.len();
            let scoring = seq.wants_prompt_logits() && start < seq.prompt_len;
            let logits = if !draft.is_empty() || scoring {
                LogitsWanted::All
            } else if samples {
                LogitsWanted::Last
            } else {
                LogitsWanted::None
            };
            seq.tokens.extend(draft.nodes().iter().map(|node| node.token));
            seq.speculative_proposed += draft.len();
            // A TokenSelect sequence verifies even a chain as a draft: row by row, as it decodes.
            let as_draft = !draft.is_empty() && (!draft.is_chain() || seq.token_select.is_some());
            let tree_rows = as_draft.then(|| draft.row_parents());
            slots.push(Slot { seq: index, start, len: len + draft.len(), logits, samples, draft, forced, tree_rows });
            index += 1;
        }
        slots
    }

    /// The draft for decoding sequence `index`: what its drafter proposes, no deeper than
    /// [`DEFAULT_DRAFT_TOKENS`] and the tokens it may still generate (the step emits one more
    /// than it accepts), with at most [`DEFAULT_DRAFT_NODES`] nodes that fit the context, and
    /// under `auto` the chain length that pays. An `auto` sequence that does not draft keeps a
    /// shadow proposal to learn the drafter's acceptance.
    fn propose(&mut self, index: usize) -> (DraftTree, bool) {
        let context_length = self.model.config.context_length;
        let seq = &mut self.running[index];
        let room_tokens = seq.stop.max_tokens.saturating_sub(seq.generated().len() + 1);
        let room_context = context_length.saturating_sub(seq.tokens.len() + 1);
        // A TokenSelect sequence's draft rows must lie within its window (see
        // `TokenSelectAttention::attend_draft`; the pending token's row is one of them), and
        // it drafts only after its prompt: a prompt token's step is prefill, attended densely.
        let room_window = match &seq.token_select {
            Some(_) if seq.is_prefilling() => 0,
            Some(token_select) => token_select.selection().window - 1,
            None => usize::MAX,
        };
        let max = DEFAULT_DRAFT_TOKENS.min(room_tokens).min(room_context).min(room_window);
        if max == 0 {
            return (DraftTree::chain(&[]), false);
        }
        let speculating = seq.drafter.is_some() || seq.self_draft.is_some();
        if let Some(constraint) = seq.constraint.as_mut().filter(|_| speculating) {
            // What the structured output forces next (a key, punctuation) is a draft the model
            // nearly always accepts, whatever the drafter would guess.
            let mut forced = constraint.forced_tokens();
            if !forced.is_empty() {
                forced.truncate(max);
                return (DraftTree::chain(&forced), true);
            }
        }
        if seq.self_draft.is_some() {
            return (DraftTree::chain(&self.self_draft(index, max)), false);
        }
        let Some(drafter) = &seq.drafter else { return (DraftTree::chain(&[]), false) };
        let Some(auto) = seq.auto_draft.as_mut() else {
            // A drafter is held to the depth it was asked for.
            return (
                drafter.propose_tree(&seq.tokens, max, DEFAULT_DRAFT_NODES.min(room_context)).truncated(max),
                false,
            );
        };
        let wanted = auto.draft_len(max);
        if wanted == 0 {
            if auto.wants_shadow() {
                auto.set_shadow(seq.tokens.len(), drafter.propose(&seq.tokens, max));
            }
            return (DraftTree::chain(&[]), false);
        }
        let mut draft = drafter.propose(&seq.tokens, wanted);
        draft.truncate(wanted);
        (DraftTree::chain(&draft), false)
    }

    /// Up to `max` greedy draft tokens from the target model itself attending through the
    /// sequence's constant-budget TokenSelect backend (`Speculation::SelfDraft`). Pass `i` runs
    /// the token at position `computed + i` and writes its KV where the verification pass will
    /// write the exact KV again, before anything reads it (the backend's window covers those
    /// positions; its selection, kept across cycles, never includes them). Drafts fewer
    /// tokens rather than preempt another sequence for the blocks.
    fn self_draft(&mut self, index: usize, max: usize) -> Vec<TokenId> {
        let block_size = self.config.block_size;
        let start = self.running[index].computed;
        let mut draft_len = max;
        while self.running[index].blocks.len() * block_size < start + draft_len {
            match self.allocator.allocate() {
                Ok(block) => self.running[index].blocks.push(block),
                Err(_) => draft_len = self.running[index].blocks.len() * block_size - start,
            }
        }
        let Self { executor, running, .. } = self;
        let seq = &running[index];
        let Some(attention) = &seq.self_draft else { return Vec::new() };
        let mut draft = Vec::with_capacity(draft_len);
        let mut input = seq.tokens[start];
        while draft.len() < draft_len {
            let batch = [SequenceInput {
                tokens: std::slice::from_ref(&input),
                start_pos: start + draft.len(),
                block_table: &seq.blocks,
                logits: LogitsWanted::Last,
                attention,
                draft_tree: None,
            }];
            match executor.forward(&batch) {
                Ok(logits) => match logits.last_of(0) {
                    Some(row) => input = argmax(row),
                    None => break,
                },
                Err(error) => {
                    tracing::warn!(%error, "self-drafting failed; verifying the drafts so far");
                    break;
                }
            }
            draft.push(input);
        }
        draft
    }

    /// Grows sequence `index`'s block table to cover `positions`, preempting the last running
    /// sequences (the worst-ranked) when the pool is full. Returns false if `index` itself had
    /// to leave.
    fn ensure_blocks(&mut self, index: usize, positions: usize) -> bool {
        let needed = positions.div_ceil(self.config.block_size);
        while self.running[index].blocks.len() < needed {
            match self.allocator.allocate() {
                Ok(block) => self.running[index].blocks.push(block),
                Err(exhausted) => {
                    let victim = self.running.len() - 1;
                    let mut seq = self.running.remove(victim);
                    self.release_blocks(&mut seq);
                    if victim == index && self.running.is_empty() {
                        fail(seq, exhausted.into());
                    } else {
                        seq.reset_kv();
                        self.insert_waiting(seq);
                        self.preemptions += 1;
                    }
                    if victim == index {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn release_blocks(&mut self, seq: &mut Sequence) {
        for block in seq.blocks.drain(..) {
            self.release_or_log(block);
        }
    }

    fn release_or_log(&mut self, block: BlockId) {
        release_logged(&mut self.allocator, block);
    }
}

/// Releases `block`; a failure is a bookkeeping bug that leaves the allocator unchanged, so it
/// is reported and serving goes on.
fn release_logged(allocator: &mut BlockAllocator, block: BlockId) {
    if let Err(error) = allocator.release(block) {
        eprintln!("lcserve-engine: {error}");
    }
}

/// Registers the sequence's newly filled shareable blocks under their chained hashes, switching
/// to an identical block another sequence registered first.
fn register_full_blocks(seq: &mut Sequence, allocator: &mut BlockAllocator, block_size: usize) {
    let full = seq.shareable() / block_size;
    while seq.registered < full {
        let i = seq.registered;
        let hash = chain_hash(seq.last_hash, &seq.tokens[i * block_size..(i + 1) * block_size]);
        let own = seq.blocks[i];
        match allocator.register(own, hash) {
            Ok(canonical) if canonical != own => {
                if allocator.acquire(canonical).is_ok() {
                    seq.blocks[i] = canonical;
                    release_logged(allocator, own);
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
        seq.registered += 1;
        seq.last_hash = hash;
    }
}

/// Writes the imported KV that continues the sequence's pooled prefix into its fresh blocks
/// (never past block `reusable`), and returns how many tokens now have KV. Imported blocks that
/// start after a gap are of no use and are dropped.
fn write_imported(
    executor: &mut Executor,
    block_size: usize,
    seq: &Sequence,
    import: ImportedKv,
    reusable: usize,
) -> Result<usize, EngineError> {
    let mut ready = seq.computed / block_size;
    if import.first_block > ready {
        return Ok(seq.computed);
    }
    for data in import.blocks.iter().skip(ready - import.first_block) {
        if ready >= reusable {
            return Ok(ready * block_size);
        }
        executor.write_block(seq.blocks[ready], block_size, data)?;
        ready += 1;
    }
    let tail = seq.prompt_len % block_size;
    // A tail is usable when every full block before it is there and a token after it (one
    // already generated) is left to run for logits.
    Ok(match import.tail {
        Some(data) if ready == seq.prompt_len / block_size && tail > 0 && seq.tokens.len() > seq.prompt_len => {
            executor.write_block(seq.blocks[ready], tail, &data)?;
            seq.prompt_len
        }
        _ => ready * block_size,
    })
}

/// The next token of every slot that yields one without a draft to verify, by batch index.
/// Rows are sampled in parallel across the pool (each sequence has its own sampler and RNG, so
/// the tokens do not depend on the order): a sampled row costs several passes over the
/// vocabulary, which a batch of 16 streams would otherwise wait for on one thread.
fn sample_rows(
    running: &mut [Sequence],
    slots: &[Slot],
    logits: &Logits,
) -> Vec<Option<Result<SampledToken, EngineError>>> {
    let mut batch_index_of = vec![None; running.len()];
    for (batch_index, slot) in slots.iter().enumerate() {
        if slot.samples {
            batch_index_of[slot.seq] = Some(batch_index);
        }
    }
    let sampled: Vec<_> = running
        .par_iter_mut()
        .zip(batch_index_of)
        .filter_map(|(seq, batch_index)| {
            let batch_index = batch_index?;
            let row = logits.last_of(batch_index)?;
            Some((batch_index, seq.sample_next(row)))
        })
        .collect();
    let mut by_batch_index: Vec<_> = slots.iter().map(|_| None).collect();
    for (batch_index, token) in sampled {
        by_batch_index[batch_index] = Some(token);
    }
    by_batch_index
}

/// Samples the next token from `row` and [`emit`]s it.
fn sample_and_emit(
    seq: &mut Sequence,
    row: &[f32],
    context_length: usize,
) -> Result<Option<FinishReason>, EngineError> {
    let sampled = seq.sample_next(row)?;
    emit(seq, sampled, context_length)
}

/// Appends the sampled token, streams it, and says whether the sequence is done.
fn emit(seq: &mut Sequence, sampled: SampledToken, context_length: usize) -> Result<Option<FinishReason>, EngineError> {
    seq.tokens.push(sampled.token);
    if let Some(cap) = &mut seq.reasoning_cap {
        cap.advance(sampled.token);
    }
    let now = Instant::now();
    seq.first_token_at.get_or_insert(now);
    if let Some(at) = seq.stop.stop_token_ids.iter().position(|&t| t == sampled.token) {
        seq.matched_stop = (at < seq.requested_stop_tokens).then_some(MatchedStop::Token(sampled.token));
        return Ok(Some(FinishReason::Stop));
    }
    if let Some(constraint) = &mut seq.constraint {
        constraint.accept(sampled.token)?;
    }
    let step = seq.text.push(sampled.token)?;
    let logprobs = sampled.logprob.map(|logprob| TokenLogprobs { logprob, top: sampled.top_logprobs, rank: None });
    let _ = seq.events.send(EngineEvent::Token { id: sampled.token, text: step.delta, logprobs });
    let matched = seq.constraint.as_ref().is_some_and(TokenConstraint::is_finished);
    let stopped = step.matched.is_some();
    seq.matched_stop = step.matched.map(MatchedStop::String);
    Ok(if stopped || matched {
        Some(FinishReason::Stop)
    } else if seq.generated().len() >= seq.stop.max_tokens {
        Some(FinishReason::Length)
    } else if seq.tokens.len() >= context_length {
        Some(FinishReason::ContextFull)
    } else {
        None
    })
}

/// Verifies the draft tree appended after the pending token: samples from the pending token's
/// row, moves to the child drafted with the sampled token and samples from its row, and so on;
/// the first sample no child matches (or the sample at a leaf) is the step's own token. Each
/// accepted node's KV moves from its slot to its place on the path. Leaves `tokens` =
/// committed + emitted and `computed` = the positions whose KV this pass wrote for tokens that
/// stayed (see [`crate::Speculation`] for why this is lossless).
fn verify_draft(
    seq: &mut Sequence,
    slot: &Slot,
    rows: &[&[f32]],
    executor: &mut Executor,
    context_length: usize,
) -> Result<Option<FinishReason>, EngineError> {
    let tree = &slot.draft;
    // The pending token (the tree's root) sits at `committed - 1`, node `i` at `committed + i`.
    let committed = slot.start + slot.len - tree.len();
    seq.tokens.truncate(committed);
    seq.computed = committed;
    let mut at = None;
    loop {
        let row = rows.get(at.map_or(0, |node| node + 1)).ok_or_else(|| {
            EngineError::Model(format!("forward gave {} logit rows for a draft of {} nodes", rows.len(), tree.len()))
        })?;
        let finished = sample_and_emit(seq, row, context_length)?;
        let sampled = seq.tokens.last().copied();
        let child = tree.children(at).iter().copied().find(|&c| Some(tree.nodes()[c].token) == sampled);
        if let Some(child) = child {
            let depth = tree.nodes()[child].depth;
            if child + 1 != depth {
                executor.copy_position(&seq.blocks, committed + child, committed - 1 + depth)?;
            }
            seq.computed += 1;
            seq.speculative_accepted += 1;
            at = Some(child);
        }
        if finished.is_some() || child.is_none() {
            if let Some(token_select) = &seq.token_select {
                // The last row run as a decode step: the pending token's or an accepted node's.
                token_select.accept_draft_row(at.map_or(0, |node| node + 1));
            }
            return Ok(finished);
        }
    }
}

fn finish(mut seq: Sequence, reason: FinishReason) {
    let usage = seq.usage();
    seq.spans.close(&usage);
    let text = seq.text.finish().unwrap_or_default();
    let now = Instant::now();
    let first = seq.first_token_at.unwrap_or(now);
    let timings =
        Timings { time_to_first_token: first - seq.submitted, prefill: seq.prefill_time, decode: now - first };
    let matched = seq.matched_stop.take();
    let _ = seq.events.send(EngineEvent::Finished { reason, matched, text, usage, timings });
}

fn fail(mut seq: Sequence, error: EngineError) {
    seq.spans.close(&seq.usage());
    let _ = seq.events.send(EngineEvent::Error(error));
}
