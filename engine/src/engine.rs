//! The engine thread and its handle.
//!
//! The model runs on one dedicated OS thread (plus its rayon pool), never on async workers.
//! Callers hold an [`EngineHandle`]: `submit` validates a request at the edge and returns an
//! [`EventStream`]; dropping the stream cancels the sequence and frees its blocks at the next
//! step.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lcserve_model::Model;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio::sync::oneshot;

use lcserve_common::Namespace;

use crate::config::EngineConfig;
use crate::error::EngineError;
use crate::request::{EngineEvent, GenerateRequest};
use crate::sampler::Sampler;
use crate::scheduler::{EngineStats, Scheduler};
use crate::sequence::Sequence;
use crate::stop_text::StopText;

/// Requests that may wait in the command queue before `submit` reports the engine busy.
const COMMAND_QUEUE: usize = 1024;

enum Command {
    Submit(Box<Sequence>),
    Stats(oneshot::Sender<EngineStats>),
}

/// A clonable handle to a running engine. The engine stops when the last handle is dropped.
#[derive(Clone)]
pub struct EngineHandle {
    commands: SyncSender<Command>,
    model: Arc<Model>,
    config: Arc<EngineConfig>,
    kv_config: Arc<str>,
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
}

impl EngineHandle {
    /// Starts the engine thread for `model`.
    pub fn start(model: Arc<Model>, config: EngineConfig) -> Result<Self, EngineError> {
        config.validate()?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.threads)
            .thread_name(|i| format!("lcserve-compute-{i}"))
            .build()
            .map_err(|e| EngineError::InvalidConfig { field: "threads", reason: e.to_string() })?;
        let scheduler = Scheduler::new(model.clone(), config.clone())?;
        let (commands, receiver) = sync_channel(COMMAND_QUEUE);
        let thread = std::thread::Builder::new()
            .name("lcserve-engine".into())
            .spawn(move || pool.install(|| run(scheduler, receiver)))
            .map_err(|e| EngineError::InvalidConfig {
                field: "threads",
                reason: format!("cannot spawn the engine thread: {e}"),
            })?;
        Ok(Self {
            commands,
            // Everything that changes KV bytes keeps caches apart.
            kv_config: format!("dense/kv-f32/acts-{:?}/block{}", model.activations, config.block_size).into(),
            model,
            config: Arc::new(config),
            _thread: Arc::new(EngineThread(Some(thread))),
        })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The block namespace of a tenant on this engine.
    pub fn namespace(&self, cache_salt: &[u8]) -> Namespace {
        Namespace::new(cache_salt, self.model.fingerprint, &self.kv_config)
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
        if prompt_len >= context {
            return Err(EngineError::InvalidRequest {
                field: "prompt",
                reason: format!("{prompt_len} tokens leave no room in the context of {context} tokens"),
            });
        }
        if let Some(&token) = request.prompt.iter().find(|&&t| t as usize >= model_config.vocab_size) {
            return Err(EngineError::InvalidRequest {
                field: "prompt",
                reason: format!("token id {token} is outside the vocabulary of {} tokens", model_config.vocab_size),
            });
        }
        let mut stop = request.stop;
        if stop.max_tokens == 0 {
            return Err(EngineError::InvalidRequest { field: "max_tokens", reason: "must be at least 1".into() });
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
        if !stop.ignore_eos {
            stop.stop_token_ids.extend(self.model.tokenizer.eos_ids());
        }
        let sampler = Sampler::new(request.sampling, model_config.vocab_size)?;
        let namespace = self.namespace(&request.cache_salt);
        let text = StopText::new(self.model.tokenizer.clone(), stop.stop_strings.clone());
        Ok(Sequence {
            tokens: request.prompt,
            prompt_len,
            computed: 0,
            blocks: Vec::new(),
            registered: 0,
            last_hash: namespace.root(),
            namespace,
            sampler,
            stop,
            text,
            events,
            cached_tokens: None,
            submitted: Instant::now(),
            first_token_at: None,
            prefill_time: Duration::ZERO,
        })
    }
}

/// The engine loop: block for commands while idle, otherwise step and drain commands between
/// steps.
fn run(mut scheduler: Scheduler, commands: Receiver<Command>) {
    let handle = |scheduler: &mut Scheduler, command: Command| match command {
        Command::Submit(seq) => scheduler.enqueue(*seq),
        Command::Stats(reply) => {
            let _ = reply.send(scheduler.stats());
        }
    };
    loop {
        if scheduler.is_idle() {
            match commands.recv() {
                Ok(command) => handle(&mut scheduler, command),
                Err(_) => return,
            }
        }
        loop {
            match commands.try_recv() {
                Ok(command) => handle(&mut scheduler, command),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    scheduler.abort_all(EngineError::ShutDown);
                    return;
                }
            }
        }
        scheduler.step();
    }
}
