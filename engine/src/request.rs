//! What callers send to the engine and what they get back.

use std::time::Duration;

use lcserve_common::{PrefillMode, TokenId};
use lcserve_model::{DEFAULT_REUSE_THRESHOLD, TokenSelection};
use lcserve_text::{ReasoningBlock, StructuredOutput};
use serde::Serialize;

use crate::error::EngineError;
use crate::kv_transfer::{ExportKv, ImportedKv, KvBlock};
use crate::sampler::SamplingParams;
use crate::speculative::Speculation;

/// When to stop generating.
#[derive(Clone, Debug, Default)]
pub struct StopConditions {
    /// Most tokens to generate (≥ 1).
    pub max_tokens: usize,
    /// Token ids that end generation (the model's end-of-sequence ids are added unless
    /// `ignore_eos`). The stop token itself is not part of the text.
    pub stop_token_ids: Vec<TokenId>,
    /// Strings that end generation; the text is cut before the match.
    pub stop_strings: Vec<String>,
    /// Generate until `max_tokens` even past end-of-sequence (benchmarks).
    pub ignore_eos: bool,
    /// No stop token (end-of-sequence or `stop_token_ids`) may be sampled before this many
    /// tokens were generated (vLLM's `min_tokens`); at most `max_tokens`. Stop strings still
    /// apply.
    pub min_tokens: usize,
}

/// One generation request over an already tokenized prompt.
#[derive(Clone, Debug, Default)]
pub struct GenerateRequest {
    pub prompt: Vec<TokenId>,
    pub sampling: SamplingParams,
    pub stop: StopConditions,
    /// Tenant salt folded into the block namespace: tenants never share cached blocks.
    pub cache_salt: Vec<u8>,
    /// Tokens already generated for this request and shown to the client (by a prefill worker,
    /// or by a worker that failed mid-stream): generation continues after them, and they count
    /// against `max_tokens` and in the penalties.
    pub generated: Vec<TokenId>,
    /// KV of the prompt's leading blocks, computed elsewhere.
    pub import: Option<ImportedKv>,
    /// Send copies of the sequence's blocks as they fill.
    pub export: Option<ExportKv>,
    /// Dense or sparse (MInference) attention for this prompt's prefill.
    pub prefill_mode: PrefillMode,
    /// Speculative decoding: which drafter proposes tokens for verification, if any.
    pub speculation: Speculation,
    /// TokenSelect decode (opt-in, lossy): each decode step attends to a selection of the
    /// cached keys instead of all of them.
    pub kv_selection: Option<KvSelection>,
    /// What the generated text must match (JSON schema, regex, choice list, grammar): every
    /// sampling step draws only among the tokens that keep it a prefix of a match, and the
    /// request ends once the match is whole.
    pub structured_output: Option<StructuredOutput>,
    /// A thinking model's reasoning block, which `structured_output` leaves free: the output
    /// is constrained only after the block's end token (see
    /// [`TokenConstraint::after_reasoning`](lcserve_text::TokenConstraint::after_reasoning)).
    /// Ignored without a structured output.
    pub reasoning: Option<ReasoningBlock>,
    /// Report the logprob of each prompt token given the ones before it, with this many most
    /// likely alternatives (at most 20), as [`EngineEvent::PromptLogprobs`] before the first
    /// token. The whole prompt is then computed here: no cached prefix is reused for it, and
    /// it cannot come with [`import`](Self::import)ed KV.
    pub prompt_logprobs: Option<usize>,
    /// A cap on a thinking model's reasoning block (vLLM's `thinking_token_budget`).
    pub reasoning_budget: Option<ReasoningBudget>,
    /// Scheduling priority, lower first (vLLM's convention; 0 by default). Requests of equal
    /// priority are served first come, first served. A request is admitted before any waiting
    /// one of worse priority, gets each step's prefill budget first, and when the batch or the
    /// KV pool is full it preempts (by recompute) the running request of worst priority, if
    /// that is worse than its own. A full queue refuses the waiting request of worst priority
    /// rather than a better one.
    pub priority: i32,
}

/// At most `max_tokens` tokens inside `block`: once the block holds them, the next token is
/// its end token, whatever the model would sample, and the answer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReasoningBudget {
    pub block: ReasoningBlock,
    pub max_tokens: usize,
}

/// Which cached keys a TokenSelect decode step attends to (algorithms.md §3): the first
/// `sink`, the last `window`, and the `budget` keys with the largest soft vote of the layer's
/// query heads. A layer reuses its previous selection while its query stays within
/// `reuse_threshold` cosine similarity of the query that made it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KvSelection {
    pub budget: usize,
    pub sink: usize,
    pub window: usize,
    pub reuse_threshold: f32,
}

impl Default for KvSelection {
    /// The paper's budget, sink and window (2048, 128, 512) and a 0.9 reuse threshold.
    fn default() -> Self {
        let TokenSelection { budget, sink, window } = TokenSelection::default();
        Self { budget, sink, window, reuse_threshold: DEFAULT_REUSE_THRESHOLD }
    }
}

impl KvSelection {
    pub fn token_selection(&self) -> TokenSelection {
        TokenSelection { budget: self.budget, sink: self.sink, window: self.window }
    }
}

/// Log-probabilities reported with a token.
#[derive(Clone, Debug, Serialize)]
pub struct TokenLogprobs {
    pub logprob: f32,
    /// Most likely alternatives, most likely first.
    pub top: Vec<(TokenId, f32)>,
    /// Of a prompt token: 1 + how many tokens were more likely (vLLM's rank).
    pub rank: Option<u32>,
}

/// Why a sequence ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The context window is full.
    ContextFull,
}

/// What ended a [`FinishReason::Stop`] finish, when it was something the request asked for —
/// vLLM's `stop_reason`. The model's own end-of-sequence token and a completed structured
/// output are neither. Serializes as vLLM does: the token id, or the string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum MatchedStop {
    /// One of the request's `stop_token_ids`.
    Token(TokenId),
    /// One of the request's stop strings.
    String(String),
}

/// Token counts of a finished request.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose KV was found in this engine's pool instead of being computed.
    pub cached_tokens: usize,
    /// Prompt tokens whose KV came with the request ([`GenerateRequest::import`]).
    pub imported_tokens: usize,
    /// Fraction of the prompt's causal (query, key) pairs whose attention was computed during
    /// this engine's prefill: 1 for dense, below 1 when sparse prefill skipped some; 0 when
    /// nothing was prefilled here.
    pub prefill_density: f64,
    /// Draft tokens proposed to the target model by speculative decoding.
    pub speculative_proposed: usize,
    /// Of those, the ones the target model accepted.
    pub speculative_accepted: usize,
    /// The TokenSelect budget the request decoded with; 0 for dense decoding.
    pub kv_selection_budget: usize,
    /// Fraction of the cached keys that TokenSelect decode steps attended to, over layers and
    /// steps (1 while the context fits the budget), counting every verified draft row as a
    /// step; 0 for dense decoding.
    pub kv_selection_density: f64,
    /// Fraction of TokenSelect layer steps that reused the previous selection instead of
    /// scoring every cached key; 0 for dense decoding.
    pub kv_selection_reuse: f64,
}

/// Where the time of a request went.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timings {
    /// Submission to first token.
    pub time_to_first_token: Duration,
    /// Time spent in steps that computed this sequence's prompt.
    pub prefill: Duration,
    /// First token to last.
    pub decode: Duration,
}

impl Timings {
    pub fn prefill_tokens_per_s(&self, computed_prompt_tokens: usize) -> f64 {
        per_second(computed_prompt_tokens, self.prefill)
    }

    pub fn decode_tokens_per_s(&self, completion_tokens: usize) -> f64 {
        // The first token comes from the prefill step; decode steps produce the rest.
        per_second(completion_tokens.saturating_sub(1), self.decode)
    }
}

fn per_second(count: usize, time: Duration) -> f64 {
    if time.is_zero() { 0.0 } else { count as f64 / time.as_secs_f64() }
}

/// What a request's stream yields, in order: the prompt's logprobs when asked for, tokens (and,
/// when exporting, KV blocks, each batch before the token of the step that filled them), then
/// exactly one `Finished` or `Error`.
#[derive(Clone, Debug)]
pub enum EngineEvent {
    /// [`GenerateRequest::prompt_logprobs`]: entry `i` scores prompt token `i + 1` (the first
    /// token follows nothing).
    PromptLogprobs(Vec<TokenLogprobs>),
    /// Copies of blocks that filled up ([`GenerateRequest::export`]).
    Kv(Vec<KvBlock>),
    Token {
        id: TokenId,
        /// Newly completed text (may be empty while a UTF-8 character or a possible stop string
        /// is incomplete).
        text: String,
        logprobs: Option<TokenLogprobs>,
    },
    Finished {
        reason: FinishReason,
        /// The stop token or string that ended a [`FinishReason::Stop`] finish, if the request
        /// named it.
        matched: Option<MatchedStop>,
        /// Text held back at the end (an incomplete stop-string prefix that turned out not to be
        /// one, or a trailing partial character).
        text: String,
        usage: Usage,
        timings: Timings,
    },
    Error(EngineError),
}
