//! The lcserve engine: one model on one device, serving many sequences at once.
//!
//! - [`EngineHandle`] starts the engine thread and takes requests; each request's
//!   [`EventStream`] yields tokens and one terminal event. Steps run on a compute pool that the
//!   process's engines of equal thread count share, so two engines do not oversubscribe the
//!   cores (`lcserve serve` runs a prefill and a decode engine).
//! - The scheduler (private) runs steps: admit waiting sequences after reusing their longest
//!   cached prefix, stack decode tokens and prefill chunks into one forward pass, sample, stream,
//!   retire. When the pool is full it preempts by recompute. Everything goes in
//!   [`GenerateRequest::priority`] order, first come, first served within a priority. A prompt whose [`PrefillMode`]
//!   resolves to sparse prefills with the model's `SparseAttention` (MInference head patterns
//!   from [`EngineConfig::sparse_patterns`]), in larger chunks, under its own block namespace
//!   ([`EngineHandle::request_namespace`]).
//! - [`BlockAllocator`] is the paged pool's bookkeeping: reference-counted blocks, prefix
//!   retention by chained [`lcserve_common::SequenceHash`], LRU eviction. The K/V bytes live in
//!   the executor (`executor`, private): the model crate's `KvArena` beside `Model::forward` on
//!   the CPU, or, with feature `cuda` and [`EngineDevice::Cuda`], a `DeviceKvPool` in GPU memory
//!   beside `DeviceModel::forward`.
//! - [`ImportedKv`] / [`ExportKv`] (`kv_transfer`): KV in and out of the pool, so workers share
//!   it through the KV store: a request may bring its prompt's leading blocks (and tail) and ask
//!   for copies of its blocks as they fill.
//! - [`speculative`]: lossless speculative decoding. A request's [`Speculation`] picks a
//!   [`Drafter`] (prompt lookup, [`NgramDrafter`], or the caller's) whose chain one forward pass
//!   verifies; and the acceptance rules for sampled drafts and trees — a
//!   [`speculative::DraftTree`] walked against the target's processed distributions (greedy,
//!   speculative sampling, i.i.d. and without-replacement multi-draft trees, deterministic drafts).
//! - [`KvSelection`]: opt-in TokenSelect decode per request — each decode step attends to the
//!   sink, the local window and the best-voted cached keys through the model's
//!   `TokenSelectAttention`, which keeps the sequence's selection cache. It combines with
//!   speculation on the CPU: a draft's rows are verified one by one as TokenSelect decode
//!   steps, so the tokens stay TokenSelect's.
//! - [`Sampler`] turns logits into tokens (greedy, temperature, top-k/p, min-p, penalties,
//!   seeds, logprobs), among the tokens a request's [`StructuredOutput`] allows (its
//!   `TokenConstraint`, kept by the sequence, masks every step and follows every token
//!   emitted, drafts verified included).
//! - `prompt_logprobs` (private): a request's [`GenerateRequest::prompt_logprobs`], scored from
//!   its prefill's logits rows and streamed before its first token.
//! - `keep_awake` (private): for the length of a CPU step the compute pool's other workers
//!   poll for work instead of parking between the forward pass's parallel regions.
//! - [`StepTimesSnapshot`] (`step_times`): a histogram of step durations the engine thread
//!   keeps in atomics, read by [`EngineHandle::step_times`] without a round trip.
//!
//! Nothing here touches the network: services wrap an [`EngineHandle`].

mod block_allocator;
mod config;
mod engine;
mod error;
mod executor;
mod keep_awake;
mod kv_transfer;
mod prompt_logprobs;
mod reasoning_cap;
mod request;
mod sampler;
mod scheduler;
mod sequence;
pub mod speculative;
mod step_times;
mod stop_text;

pub use block_allocator::{BlockAllocator, BlockAllocatorError, PoolExhausted};
pub use config::{
    DEFAULT_DRAFT_WINDOW, DEFAULT_MAX_WAITING, DEFAULT_SPARSE_MIN_TOKENS, EngineConfig, EngineDevice, GpuWeights,
};
pub use engine::{Completion, EngineHandle, EventStream};
pub use error::EngineError;
pub use kv_transfer::{ExportKv, ImportedKv, KvBlock, tail_layout};
pub use lcserve_common::PrefillMode;
pub use lcserve_text::{ReasoningBlock, StructuredOutput};
pub use request::{
    EngineEvent, FinishReason, GenerateRequest, KvSelection, MatchedStop, ReasoningBudget, StopConditions, Timings,
    TokenLogprobs, Usage,
};
pub use sampler::{InvalidSamplingParam, SampleError, SampledToken, Sampler, SamplingParams};
pub use scheduler::EngineStats;
pub use speculative::{
    DEFAULT_DRAFT_NODES, DEFAULT_DRAFT_TOKENS, DraftModelDrafter, Drafter, NgramDrafter, Speculation,
};
pub use step_times::StepTimesSnapshot;
