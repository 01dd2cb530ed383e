//! The engine thread and its handle.
//!
//! Each engine has a dedicated OS thread, never an async worker; its steps run on a rayon
//! compute pool that every engine of the process with the same thread count shares.
//! Callers hold an [`EngineHandle`]: `submit` validates a request at the edge and returns an
//! [`EventStream`]; dropping the stream cancels the sequence and frees its blocks at the next
//! step.

use std::collections::BTreeMap;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lcserve_model::{HeadPatterns, Model, TokenSelectAttention, TokenSelection};
use lcserve_text::{
    ReasoningBlock, StructuredOutput, StructuredOutputCompiler, StructuredOutputError, TokenConstraint,
};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use lcserve_common::{Namespace, PrefillMode, SequenceHash, TokenId, sequence_hashes};

use crate::config::{EngineConfig, EngineDevice};
use crate::error::EngineError;
use crate::keep_awake::KeepAwake;
use crate::kv_transfer::{Exporter, ImportedKv, tail_layout};
use crate::prompt_logprobs::PromptLogprobs;
use crate::reasoning_cap::ReasoningCap;
use crate::request::{EngineEvent, FinishReason, GenerateRequest, KvSelection, MatchedStop, Timings, Usage};
use crate::sampler::{MAX_LOGPROBS, Sampler};
use crate::scheduler::{EngineStats, Scheduler};
use crate::sequence::{Rank, Sequence, SequenceSpans};
use crate::speculative::{AutoDraft, DraftModelDrafter, Drafter, Speculation};
use crate::step_times::{StepTimes, StepTimesSnapshot};
use crate::stop_text::StopText;

/// Requests that may wait in the command queue before `submit` reports the engine busy.
const COMMAND_QUEUE: usize = 1024;

enum Command {
    Submit(Box<Sequence>),
    Stats(oneshot::Sender<EngineStats>),
    /// How many leading blocks of a hash run the pool holds.
    Probe(Vec<SequenceHash>, oneshot::Sender<usize>),
}

/// A clonable handle to a running engine. The engine stops when the last handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    commands: SyncSender<Command>,
    model: Arc<Model>,
    config: Arc<EngineConfig>,
    kv_config: Arc<str>,
    /// The KV config of sparse-prefilled sequences: names the head patterns.
    sparse_kv_config: Arc<str>,
    /// Written by the engine thread after every step; read by metrics without a command.
    step_times: Arc<StepTimes>,
    /// The draft model's drafter, when one is configured.
    draft: Option<Arc<dyn Drafter>>,
    /// Compiles structured outputs for the model's tokenizer; built by the first request that
    /// asks for one (indexing the vocabulary takes tens of milliseconds).
    structured_output: Arc<OnceLock<Result<StructuredOutputCompiler, StructuredOutputError>>>,
    _thread: Arc<EngineThread>,
}

impl std::fmt::Debug for EngineHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineHandle").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Joins the engine thread when the last handle goes away.
struct EngineThread(Option<JoinHandle<()>>);

impl Drop for EngineThread {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

/// The events of one request. Dropping it cancels the request.
#[derive(Debug)]
pub struct EventStream {
    events: UnboundedReceiver<EngineEvent>,
}

impl EventStream {
    /// The next event; `None` after the terminal one.
    pub async fn next(&mut self) -> Option<EngineEvent> {
        self.events.recv().await
    }

    /// The next event, blocking the current thread (for synchronous callers, never in async code).
    pub fn blocking_next(&mut self) -> Option<EngineEvent> {
        self.events.blocking_recv()
    }

    /// Reads the stream to its end (exported KV is dropped): for callers that want the whole
    /// answer, not the stream.
    pub async fn collect(mut self) -> Result<Completion, EngineError> {
        let mut completion = Collector::default();
        while let Some(event) = self.next().await {
            if let Some(done) = completion.push(event) {
                return done;
            }
        }
        Err(EngineError::ShutDown)
    }

    /// [`collect`](Self::collect) for synchronous callers.
    pub fn blocking_collect(mut self) -> Result<Completion, EngineError> {
        let mut completion = Collector::default();
        while let Some(event) = self.blocking_next() {
            if let Some(done) = completion.push(event) {
                return done;
            }
        }
        Err(EngineError::ShutDown)
    }
}

/// A request's stream, read to its end.
#[derive(Clone, Debug)]
pub struct Completion {
    pub tokens: Vec<TokenId>,
    /// The text shown to a client, held-back text included.
    pub text: String,
    pub reason: FinishReason,
    /// The request's stop token or string that ended it, if one did.
    pub matched: Option<MatchedStop>,
    pub usage: Usage,
    pub timings: Timings,
}

/// Folds events into a [`Completion`].
#[derive(Default)]
struct Collector {
    tokens: Vec<TokenId>,
    text: String,
}

impl Collector {
    /// Takes one event; the outcome once the terminal one arrives.
    fn push(&mut self, event: EngineEvent) -> Option<Result<Completion, EngineError>> {
        match event {
            EngineEvent::Token { id, text, .. } => {
                self.tokens.push(id);
                self.text.push_str(&text);
                None
            }
            EngineEvent::Kv(_) | EngineEvent::PromptLogprobs(_) => None,
            EngineEvent::Finished { reason, matched, text, usage, timings } => {
                self.text.push_str(&text);
                let (tokens, text) = (std::mem::take(&mut self.tokens), std::mem::take(&mut self.text));
                Some(Ok(Completion { tokens, text, reason, matched, usage, timings }))
            }
            EngineEvent::Error(error) => Some(Err(error)),
        }
    }
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let patterns = match &config.sparse_patterns {
            Some(path) => HeadPatterns::load(path, &model.config)
                .map_err(|e| EngineError::InvalidConfig { field: "sparse_patterns", reason: e.to_string() })?,
            None => HeadPatterns::default_for(&model.config),
        };
        // KV computed on a GPU matches the CPU's only to rounding: it gets its own namespace.
        let device_tag = match config.device {
            EngineDevice::Cpu => String::new(),
            EngineDevice::Cuda { weights, .. } => format!("/cuda-{weights:?}"),
        };
        let kv_tail =
            format!("kv-{}/acts-{:?}/block{}{device_tag}", config.pool_dtype(), model.activations, config.block_size);
        let sparse_kv_config = format!("sparse-{}/{kv_tail}", patterns.hash()).into();
        let pool = compute_pool(config.threads)?;
        if config.device == EngineDevice::Cpu {
            // A GPU engine multiplies with its uploaded copy instead.
            pool.install(|| model.prepare());
        }
        let draft = match &config.draft_model {
            Some(path) => {
                let loaded = Model::load(path, &mut |_| {})
                    .map_err(|e| EngineError::InvalidConfig { field: "draft_model", reason: e.to_string() })?;
                pool.install(|| loaded.prepare());
                let drafter = DraftModelDrafter::new(Arc::new(loaded), &model, config.draft_window)?;
                Some(Arc::new(drafter) as Arc<dyn Drafter>)
            }
            None => None,
        };
        let scheduler = Scheduler::new(model.clone(), config.clone(), patterns)?;
        let (commands, receiver) = sync_channel(COMMAND_QUEUE);
        let step_times = Arc::new(StepTimes::default());
        let engine_step_times = Arc::clone(&step_times);
        // A GPU step waits on the device: workers polling through it would only burn cores.
        let poll_during_steps = config.device == EngineDevice::Cpu;
        let thread = std::thread::Builder::new()
            .name("lcserve-engine".into())
            .spawn(move || run(scheduler, receiver, &pool, &engine_step_times, poll_during_steps))
            .map_err(|e| EngineError::InvalidConfig {
                field: "threads",
                reason: format!("cannot spawn the engine thread: {e}"),
            })?;
        Ok(Self {
            commands,
            // Everything that changes KV bytes keeps caches apart.
            kv_config: format!("dense/{kv_tail}").into(),
            sparse_kv_config,
            model,
            config: Arc::new(config),
            step_times,
            draft,
            structured_output: Arc::default(),
            _thread: Arc::new(EngineThread(Some(thread))),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The block namespace of a tenant's densely prefilled sequences on this engine.
    pub fn namespace(&self, cache_salt: &[u8]) -> Namespace {
        Namespace::new(cache_salt, self.model.fingerprint, &self.kv_config)
    }

    /// Whether a prompt of `prompt_len` tokens prefills sparsely under `mode`. On a GPU engine
    /// only when asked for (`sparse`): the device's sparse path has not yet run on a GPU, so
    /// `auto` keeps a GPU's default prefill dense until it has.
    pub fn prefills_sparsely(&self, mode: PrefillMode, prompt_len: usize) -> bool {
        let on_gpu = self.config.device != EngineDevice::Cpu;
        mode.is_sparse(prompt_len, self.config.sparse_min_tokens) && !(on_gpu && mode == PrefillMode::Auto)
    }

    /// The block namespace of a request: sparse-prefilled KV is not bit-identical to dense KV,
    /// so it lives apart, named by the head patterns.
    pub fn request_namespace(&self, cache_salt: &[u8], mode: PrefillMode, prompt_len: usize) -> Namespace {
        if self.prefills_sparsely(mode, prompt_len) {
            Namespace::new(cache_salt, self.model.fingerprint, &self.sparse_kv_config)
        } else {
            self.namespace(cache_salt)
        }
    }

    /// Validates and queues a request.
    pub fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        let (events, receiver) = unbounded_channel();
        let seq = self.build_sequence(request, events)?;
        self.commands.try_send(Command::Submit(Box::new(seq))).map_err(|e| match e {
            TrySendError::Full(_) => EngineError::Overloaded,
            TrySendError::Disconnected(_) => EngineError::ShutDown,
        })?;
        Ok(EventStream { events: receiver })
    }

    /// Pool and queue occupancy.
    pub async fn stats(&self) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(Command::Stats(tx)).map_err(|_| EngineError::ShutDown)?;
        rx.await.map_err(|_| EngineError::ShutDown)
    }

    /// Durations of the engine's steps so far; reads atomics, never waits on the engine.
    pub fn step_times(&self) -> StepTimesSnapshot {
        self.step_times.snapshot()
    }

    /// How many leading full blocks of `tokens` (in `namespace`, see [`Self::request_namespace`]) the pool holds right
    /// now: what a caller need not fetch from a slower tier before submitting. The answer may be
    /// stale by the time the request is admitted; admission then simply computes more.
    pub async fn cached_prefix_blocks(&self, namespace: Namespace, tokens: &[TokenId]) -> Result<usize, EngineError> {
        if !self.config.prefix_caching {
            return Ok(0);
        }
        let hashes = sequence_hashes(namespace, tokens, self.config.block_size);
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(Command::Probe(hashes, tx)).map_err(|_| EngineError::Overloaded)?;
        rx.await.map_err(|_| EngineError::ShutDown)
    }

    /// The KV config string that, with the model fingerprint and a salt, names the block
    /// namespaces of densely prefilled sequences.
    pub fn kv_config(&self) -> &str {
        &self.kv_config
    }

    /// The KV config of sparse-prefilled sequences (it names the head patterns).
    pub fn sparse_kv_config(&self) -> &str {
        &self.sparse_kv_config
    }

    /// [`stats`](Self::stats) for synchronous callers.
    pub fn blocking_stats(&self) -> Result<EngineStats, EngineError> {
        let (tx, rx) = oneshot::channel();
        self.commands.try_send(Command::Stats(tx)).map_err(|_| EngineError::ShutDown)?;
        rx.blocking_recv().map_err(|_| EngineError::ShutDown)
    }

    fn build_sequence(
        &self,
        request: GenerateRequest,
        events: UnboundedSender<EngineEvent>,
    ) -> Result<Sequence, EngineError> {
        let model_config = &self.model.config;
        let context = model_config.context_length;
        let prompt_len = request.prompt.len();
        if prompt_len == 0 {
            return Err(EngineError::InvalidRequest { field: "prompt", reason: "is empty".into() });
        }
        let resumed = request.generated.len();
        if prompt_len + resumed >= context {
            return Err(EngineError::InvalidRequest {
                field: "prompt",
                reason: format!(
                    "{prompt_len} tokens (+ {resumed} generated) leave no room in the context of {context} tokens"
                ),
            });
        }
        for (field, ids) in [("prompt", &request.prompt), ("generated", &request.generated)] {
            if let Some(&token) = ids.iter().find(|&&t| t as usize >= model_config.vocab_size) {
                return Err(EngineError::InvalidRequest {
                    field,
                    reason: format!("token id {token} is outside the vocabulary of {} tokens", model_config.vocab_size),
                });
            }
        }
        let mut stop = request.stop;
        if stop.max_tokens == 0 {
            return Err(EngineError::InvalidRequest { field: "max_tokens", reason: "must be at least 1".into() });
        }
        if stop.min_tokens > stop.max_tokens {
            return Err(EngineError::InvalidRequest {
                field: "min_tokens",
                reason: format!("{} exceeds max_tokens {}", stop.min_tokens, stop.max_tokens),
            });
        }
        if resumed >= stop.max_tokens {
            return Err(EngineError::InvalidRequest {
                field: "generated",
                reason: format!("{resumed} tokens already reach max_tokens {}", stop.max_tokens),
            });
        }
        if prompt_len + stop.max_tokens > context {
            return Err(EngineError::InvalidRequest {
                field: "max_tokens",
                reason: format!(
                    "{prompt_len} prompt tokens + {} exceed the context of {context} tokens",
                    stop.max_tokens
                ),
            });
        }
        if let Some(import) = &request.import {
            self.check_import(import, prompt_len)?;
        }
        if let Some(top) = request.prompt_logprobs {
            if top > MAX_LOGPROBS {
                return Err(EngineError::InvalidRequest {
                    field: "prompt_logprobs",
                    reason: format!("{top} alternatives: at most {MAX_LOGPROBS}"),
                });
            }
            if request.import.is_some() {
                return Err(EngineError::InvalidRequest {
                    field: "prompt_logprobs",
                    reason: "the prompt must be computed here to score it, not imported".into(),
                });
            }
        }
        let requested_stop_tokens = stop.stop_token_ids.len();
        if !stop.ignore_eos {
            stop.stop_token_ids.extend(self.model.tokenizer.eos_ids());
        }
        let on_gpu = self.config.device != EngineDevice::Cpu;
        if on_gpu && request.kv_selection.is_some() && !matches!(request.speculation, Speculation::Off) {
            return Err(EngineError::InvalidRequest {
                field: "speculation",
                reason: SPECULATION_WITH_SELECTION.into(),
            });
        }
        let self_drafting = matches!(request.speculation, Speculation::SelfDraft);
        let sampler = Sampler::new(request.sampling, model_config.vocab_size)?;
        let token_select = request.kv_selection.map(|s| self.token_select(&s)).transpose()?;
        let layers = model_config.num_layers;
        let self_draft = self_drafting
            .then(|| TokenSelectAttention::drafting(SELF_DRAFT_SELECTION, layers, SELF_DRAFT_REFRESH))
            .transpose()?;
        let sparse_prefill = self.prefills_sparsely(request.prefill_mode, prompt_len);
        let namespace = self.request_namespace(&request.cache_salt, request.prefill_mode, prompt_len);
        if let Some(budget) = &request.reasoning_budget {
            let block = budget.block;
            if let Some(id) = [block.start, block.end].into_iter().find(|&id| id as usize >= model_config.vocab_size) {
                return Err(EngineError::InvalidRequest {
                    field: "reasoning_budget",
                    reason: format!("block token {id} is outside the vocabulary of {}", model_config.vocab_size),
                });
            }
        }
        let mut reasoning_cap = request.reasoning_budget.map(ReasoningCap::new);
        let mut text = StopText::new(self.model.tokenizer.clone(), stop.stop_strings.clone());
        let mut constraint =
            request.structured_output.as_ref().map(|output| self.constraint(output, request.reasoning)).transpose()?;
        for &token in &request.generated {
            // The text of these tokens was shown already; only the state matters.
            let matched = match &mut constraint {
                Some(constraint) => {
                    let allowed = constraint.allowed().is_ok_and(|allowed| allowed.contains(token));
                    if !allowed || constraint.accept(token).is_err() {
                        return Err(EngineError::InvalidRequest {
                            field: "generated",
                            reason: format!("token {token} does not follow the structured output"),
                        });
                    }
                    constraint.is_finished()
                }
                None => false,
            };
            if let Some(cap) = &mut reasoning_cap {
                cap.advance(token);
            }
            if stop.stop_token_ids.contains(&token) || text.push(token)?.matched.is_some() || matched {
                return Err(EngineError::InvalidRequest {
                    field: "generated",
                    reason: "already ends the request (a stop token, stop string or whole structured output)".into(),
                });
            }
        }
        let mut tokens = request.prompt;
        tokens.extend_from_slice(&request.generated);
        Ok(Sequence {
            rank: Rank { priority: request.priority, arrival: 0 },
            tokens,
            prompt_len,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            last_hash: namespace.root(),
            namespace,
            sampler,
            constraint,
            stop,
            requested_stop_tokens,
            matched_stop: None,
            reasoning_cap,
            text,
            events,
            cached_tokens: None,
            import: request.import,
            imported_tokens: 0,
            exporter: request.export.map(|export| Exporter::new(export, namespace.root())),
            submitted: Instant::now(),
            first_token_at: None,
            prefill_time: Duration::ZERO,
            sparse_prefill,
            sparse_stats: Default::default(),
            drafter: match request.speculation {
                Speculation::Draft => Some(self.draft.clone().ok_or_else(|| EngineError::InvalidRequest {
                    field: "speculation",
                    reason: "draft needs a draft model, and this engine has none (--draft-model)".into(),
                })?),
                _ => request.speculation.drafter(),
            },
            auto_draft: matches!(request.speculation, Speculation::Auto).then(AutoDraft::default),
            speculative_proposed: 0,
            speculative_accepted: 0,
            token_select,
            self_draft,
            prompt_logprobs: request.prompt_logprobs.map(PromptLogprobs::new),
            spans: SequenceSpans::new(tracing::Span::current()),
        })
    }

    /// A fresh matcher for a request's structured output (after its reasoning block, if it
    /// has one), compiling the vocabulary's index first if no request has yet.
    fn constraint(
        &self,
        output: &StructuredOutput,
        reasoning: Option<ReasoningBlock>,
    ) -> Result<TokenConstraint, EngineError> {
        let invalid = |field, e: StructuredOutputError| EngineError::InvalidRequest { field, reason: e.to_string() };
        let compiled = self
            .structured_output
            .get_or_init(|| StructuredOutputCompiler::new(&self.model.tokenizer))
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|compiler| compiler.compile(output));
        let constraint = compiled.map_err(|e| invalid("structured_output", e))?;
        match reasoning {
            Some(block) => constraint.after_reasoning(block).map_err(|e| invalid("reasoning", e)),
            None => Ok(constraint),
        }
    }

    /// The decode attention of a TokenSelect request, after checking its settings.
    fn token_select(&self, selection: &KvSelection) -> Result<TokenSelectAttention, EngineError> {
        let invalid = |field, reason: &str| EngineError::InvalidRequest { field, reason: reason.into() };
        if selection.budget == 0 {
            return Err(invalid("kv_selection.budget", "must be at least 1"));
        }
        if selection.window == 0 {
            return Err(invalid("kv_selection.window", "must be at least 1 (each query sees its own key)"));
        }
        if !(-1.0..=1.0).contains(&selection.reuse_threshold) {
            return Err(invalid("kv_selection.reuse_threshold", "must be a cosine in [-1, 1]"));
        }
        let kept = selection.sink.checked_add(selection.budget).and_then(|k| k.checked_add(selection.window));
        if kept.is_none() {
            return Err(invalid("kv_selection", "sink + budget + window overflows"));
        }
        let layers = self.model.config.num_layers;
        Ok(TokenSelectAttention::new(selection.token_selection(), layers, selection.reuse_threshold)?)
    }

    /// Imported blocks must have the pool's layout and lie within the prompt.
    fn check_import(&self, import: &ImportedKv, prompt_len: usize) -> Result<(), EngineError> {
        let layout = self.model.kv_layout(self.config.block_size);
        let full_blocks = prompt_len / layout.block_size;
        let end = import.first_block.saturating_add(import.blocks.len());
        if end > full_blocks {
            return Err(EngineError::InvalidRequest {
                field: "import.blocks",
                reason: format!("blocks up to {end} exceed the prompt's {full_blocks} full blocks"),
            });
        }
        if let Some(i) = import.blocks.iter().position(|b| b.len() != layout.elems_per_block()) {
            return Err(EngineError::InvalidRequest {
                field: "import.blocks",
                reason: format!(
                    "block {i} has {} elements, the pool's blocks {}",
                    import.blocks[i].len(),
                    layout.elems_per_block()
                ),
            });
        }
        if let Some(tail) = &import.tail {
            let expected = tail_layout(&layout, prompt_len % layout.block_size).elems_per_block();
            if expected == 0 || tail.len() != expected {
                return Err(EngineError::InvalidRequest {
                    field: "import.tail",
                    reason: format!("{} elements, expected {expected} for the prompt's partial block", tail.len()),
                });
            }
        }
        Ok(())
    }
}

/// What a self-drafting pass attends to: a constant budget of the cached keys whatever the
/// context length (the LongSpec / MagicDec idea of a constant-memory drafter).
const SELF_DRAFT_SELECTION: TokenSelection = TokenSelection { budget: 512, sink: 16, window: 128 };
/// Tokens after which a self-drafting layer selects again; in between, its passes reuse the
/// selection and read it from a contiguous copy, so scoring every cached key is paid about
/// once per ten draft cycles instead of once per cycle.
const SELF_DRAFT_REFRESH: usize = 64;

/// Why a TokenSelect request (`kv_selection`) cannot speculate on a GPU: its draft rows are
/// verified one by one, each selecting as its decode step would, on the CPU only.
const SPECULATION_WITH_SELECTION: &str = "must be off with kv_selection on a GPU: a TokenSelect draft is \
     verified row by row, each row selecting its keys as its decode step would, on the CPU only";

/// The compute pool of `threads` threads that every engine of this process with that many
/// threads shares, so that engines in one process (`lcserve serve` runs a prefill and a decode
/// engine) take turns on the same cores instead of oversubscribing them. With a pool each, a
/// decode step beside a long prefill took 12.8 ms instead of 4.4 on two cores: each pool's
/// parallel regions waited for threads the other pool's work had descheduled.
fn compute_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>, EngineError> {
    static POOLS: Mutex<BTreeMap<usize, Weak<rayon::ThreadPool>>> = Mutex::new(BTreeMap::new());
    let mut pools = POOLS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(pool) = pools.get(&threads).and_then(Weak::upgrade) {
        return Ok(pool);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("lcserve-compute-{i}"))
        .build()
        .map_err(|e| EngineError::InvalidConfig { field: "threads", reason: e.to_string() })?;
    let pool = Arc::new(pool);
    pools.insert(threads, Arc::downgrade(&pool));
    Ok(pool)
}

/// Longest a busy engine drives from a worker of the compute pool before it queues again
/// behind the pool's other work: with more busy engines than threads, they take turns slice by
/// slice (a step is never cut short), for one thread handoff per slice.
const DRIVE_SLICE: Duration = Duration::from_millis(50);

/// Why [`run_steps`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    /// Nothing left to run.
    Idle,
    /// [`DRIVE_SLICE`] is over.
    SliceOver,
    /// Every handle is gone; every sequence has ended.
    Stopped,
}

/// The engine loop. Idle, it blocks for a command off the compute pool, which the process's
/// other engines then have to themselves; busy, it steps on a worker of the pool, one
/// [`DRIVE_SLICE`] at a time ([`run_steps`]), with the pool's other workers helping. Two busy
/// engines each drive from a worker of their own and steal each other's parallel work while
/// they wait: about half the cores each, all of them alone.
fn run(
    scheduler: Scheduler,
    commands: Receiver<Command>,
    pool: &rayon::ThreadPool,
    step_times: &StepTimes,
    poll_during_steps: bool,
) {
    let (mut scheduler, mut commands) = (scheduler, commands);
    loop {
        if scheduler.is_idle() {
            match commands.recv() {
                Ok(command) => handle(&mut scheduler, command),
                Err(_) => return,
            }
            if scheduler.is_idle() {
                continue;
            }
        }
        let pause;
        (scheduler, commands, pause) = pool.install(move || {
            let pause = run_steps(&mut scheduler, &commands, step_times, poll_during_steps);
            (scheduler, commands, pause)
        });
        if pause == Pause::Stopped {
            return;
        }
    }
}

/// Steps, draining commands between steps, for one [`DRIVE_SLICE`] or until there is nothing
/// to run. With `poll_during_steps` the pool's other workers poll for work through each step
/// ([`KeepAwake`]).
fn run_steps(
    scheduler: &mut Scheduler,
    commands: &Receiver<Command>,
    step_times: &StepTimes,
    poll_during_steps: bool,
) -> Pause {
    let slice = Instant::now();
    loop {
        loop {
            match commands.try_recv() {
                Ok(command) => handle(scheduler, command),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    scheduler.abort_all(EngineError::ShutDown);
                    return Pause::Stopped;
                }
            }
        }
        if scheduler.is_idle() {
            return Pause::Idle;
        }
        if slice.elapsed() >= DRIVE_SLICE {
            return Pause::SliceOver;
        }
        let started = Instant::now();
        let awake = if poll_during_steps { KeepAwake::start() } else { None };
        scheduler.step();
        drop(awake);
        step_times.record(started.elapsed());
    }
}

fn handle(scheduler: &mut Scheduler, command: Command) {
    match command {
        Command::Submit(seq) => scheduler.enqueue(*seq),
        Command::Stats(reply) => {
            let _ = reply.send(scheduler.stats());
        }
        Command::Probe(hashes, reply) => {
            let _ = reply.send(scheduler.cached_prefix_len(&hashes));
        }
    }
}
