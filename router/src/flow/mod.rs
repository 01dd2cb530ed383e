//! The life of one generation request after validation, shared by both fronts.
//!
//! ```text
//! prompt ≥ disagg_min_tokens and a prefill worker is healthy?
//!   yes: Prefill.Run ──(first token, session)──▶ client; finished? done
//!        │ worker failure: once more on another prefill worker, or straight to decode
//!   ▼
//! Decode.Generate{session, generated} ──tokens──▶ client ── Finished(usage) ──▶ client
//!   │ fails before any token reached the client: once more on another decode worker
//!   │ breaks after: migrate — Decode.Generate{no session, generated = tokens so far} elsewhere
//! ```
//!
//! The flow runs as its own task and talks to the front through a bounded channel of
//! [`Event`]s, ending with exactly one terminal event. The front dropping the receiver (client
//! gone) cancels it: worker streams are dropped and every worker involved gets an `Abort`. The
//! request deadline ends it with `DEADLINE_EXCEEDED` the same way.

mod attempt;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lcserve_common::chain_hash;
use lcserve_proto::v1::{self, generate_response::Event};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::Shared;
use crate::config::Policy;
use crate::error::{ErrorClass, RouterError};
use crate::lock;
use crate::metrics::{Endpoint, Path};
use crate::policy::{Candidate, Shape, choose};
use crate::prepare::Prepared;
use crate::registry::{Role, Worker};
use attempt::Failure;

/// Events buffered between the flow and a slow client.
const CHANNEL_EVENTS: usize = 64;
/// Decode workers one request may migrate across after streaming has begun.
const MAX_MIGRATIONS: usize = 3;
/// How long a terminal error waits for room in a full channel before it is dropped.
const TERMINAL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts the flow of a request `received` at that instant; the receiver yields its events,
/// the last one terminal.
pub(crate) fn start(
    shared: Arc<Shared>,
    prepared: Prepared,
    received: Instant,
    deadline: Instant,
    endpoint: Endpoint,
) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel(CHANNEL_EVENTS);
    let started = Instant::now();
    let span = tracing::info_span!(
        "generate",
        request_id = prepared.request_id(),
        prompt_tokens = prepared.prompt_len(),
        endpoint = endpoint.as_str()
    );
    let flow = async move {
        let _in_flight = shared.metrics.in_flight();
        let ctx = Ctx {
            shared: &shared,
            prepared: &prepared,
            tx: &tx,
            received,
            deadline,
            started,
            progress: Mutex::default(),
            involved: Mutex::default(),
        };
        ctx.drive(endpoint).await;
    };
    tokio::spawn(flow.instrument(span));
    rx
}

/// What has reached the client so far.
#[derive(Debug, Default)]
struct Progress {
    tokens: Vec<u32>,
    /// The prompt's logprobs reached the client (a retry must not send them again).
    prompt_logprobs_sent: bool,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

pub(crate) struct Ctx<'a> {
    shared: &'a Shared,
    prepared: &'a Prepared,
    tx: &'a mpsc::Sender<Event>,
    /// When the front received the request (before tokenizing): the router's added latency
    /// and the end-to-end duration count from here.
    received: Instant,
    deadline: Instant,
    started: Instant,
    progress: Mutex<Progress>,
    /// Every worker that received the request, for `Abort` on cancellation.
    involved: Mutex<Vec<Arc<Worker>>>,
}

impl Ctx<'_> {
    async fn drive(&self, endpoint: Endpoint) {
        let outcome = tokio::select! {
            biased;
            _ = self.tx.closed() => Err(Failure::ClientGone),
            result = tokio::time::timeout_at(self.deadline, self.generate()) => result.unwrap_or_else(|_| {
                let budget = self.deadline.saturating_duration_since(self.started);
                let error = RouterError::DeadlineExceeded(budget).to_event();
                Err(Failure::Fatal(error))
            }),
        };
        let status = match outcome {
            Ok(()) => "ok",
            Err(Failure::ClientGone) => {
                self.abort_all();
                "cancelled"
            }
            Err(Failure::Worker(reason)) => {
                tracing::warn!(request_id = self.prepared.request_id(), %reason, "request failed: no worker left");
                self.terminal(RouterError::Worker(reason).to_event()).await;
                "unavailable"
            }
            Err(Failure::Fatal(error)) => {
                let class = ErrorClass::from_error_code(error.code);
                if class == ErrorClass::DeadlineExceeded {
                    self.abort_all();
                }
                self.terminal(error).await;
                class.label()
            }
        };
        self.shared.metrics.request(endpoint, status);
        self.shared.metrics.duration(self.received.elapsed());
    }

    async fn generate(&self) -> Result<(), Failure> {
        let mut session = None;
        let mut prefill_usage = None;
        // A prompt scored for its logprobs is computed whole by the decode worker.
        let scoring = self.prepared.request.sampling.as_ref().is_some_and(|s| s.prompt_logprobs.is_some());
        let prefilled = if !scoring && self.prepared.prompt_len() >= self.shared.config.disagg_min_tokens {
            self.prefill_phase().await?
        } else {
            None
        };
        let path = if prefilled.is_some() { Path::Disaggregated } else { Path::DecodeOnly };
        self.shared.metrics.decision(self.shared.config.policy, path);
        if let Some(response) = prefilled {
            if let Some(token) = response.first_token {
                self.emit_token(token).await?;
            }
            if let Some(finished) = response.finished {
                return self.finish(finished, response.usage.as_ref()).await;
            }
            session = response.session;
            prefill_usage = response.usage;
        }
        self.decode_phase(session, prefill_usage.as_ref()).await
    }

    /// `Ok(None)`: no (other) prefill worker is healthy, so the decode worker prefills itself.
    async fn prefill_phase(&self) -> Result<Option<v1::PrefillResponse>, Failure> {
        let mut excluded = Vec::new();
        loop {
            let Some(worker) = self.pick(Role::Prefill, &excluded) else { return Ok(None) };
            let _dispatch = worker.dispatch(self.prepared.prompt_len() as u64);
            match self.run_prefill(&worker).await {
                Ok(response) => return Ok(Some(response)),
                Err(Failure::Worker(reason)) if excluded.is_empty() => {
                    tracing::warn!(request_id = self.prepared.request_id(), %reason, "prefill failed; retrying elsewhere");
                    self.shared.metrics.retry("prefill");
                    worker.abort(self.prepared.request_id());
                    excluded.push(worker.index);
                }
                Err(other) => return Err(other),
            }
        }
    }

    async fn decode_phase(
        &self,
        mut session: Option<v1::KvSession>,
        prefill: Option<&v1::Usage>,
    ) -> Result<(), Failure> {
        let (mut excluded, mut retried, mut migrations) = (Vec::new(), false, 0);
        loop {
            let Some(worker) = self.pick(Role::Decode, &excluded) else {
                let reason = if excluded.is_empty() { "no healthy decode worker" } else { "no decode worker left" };
                return Err(Failure::Worker(reason.into()));
            };
            let (generated, scored) = {
                let progress = lock(&self.progress);
                (progress.tokens.clone(), progress.prompt_logprobs_sent)
            };
            let fresh_prompt = if session.is_some() { 0 } else { self.prepared.prompt_len() as u64 };
            let mut request = self.prepared.request.clone();
            if scored && let Some(sampling) = request.sampling.as_mut() {
                // Sent already: the next worker need not score the prompt again.
                sampling.prompt_logprobs = None;
            }
            let request = v1::DecodeRequest { request: Some(request), session: session.take(), generated };
            let mut dispatch = worker.dispatch(fresh_prompt);
            let result = self.stream_decode(&worker, request, &mut || dispatch.prefilled()).await;
            drop(dispatch);
            let reason = match result {
                Ok(finished) => {
                    self.record_answer_blocks(&worker);
                    return self.finish(finished, prefill).await;
                }
                Err(Failure::Worker(reason)) => reason,
                Err(other) => return Err(other),
            };
            worker.abort(self.prepared.request_id());
            excluded.push(worker.index);
            let streamed = lock(&self.progress).tokens.len();
            if streamed == 0 {
                if std::mem::replace(&mut retried, true) {
                    return Err(Failure::Worker(reason));
                }
                self.shared.metrics.retry("decode");
                tracing::warn!(request_id = self.prepared.request_id(), %reason, "decode failed before the first token; retrying elsewhere");
            } else {
                if migrations >= MAX_MIGRATIONS {
                    return Err(Failure::Worker(reason));
                }
                migrations += 1;
                self.shared.metrics.retry("migration");
                tracing::warn!(request_id = self.prepared.request_id(), %reason, streamed, "decode broke mid-stream; migrating");
            }
        }
    }

    /// Chooses a healthy worker of `role` (not in `excluded`) with the configured policy, and
    /// records it as involved and as now holding the prompt's blocks.
    fn pick(&self, role: Role, excluded: &[usize]) -> Option<Arc<Worker>> {
        let workers = self.shared.registry.healthy(role, excluded);
        if workers.is_empty() {
            return None;
        }
        let config = &self.shared.config;
        let route = tracing::info_span!(
            "route",
            role = role.as_str(),
            policy = ?config.policy,
            candidates = workers.len(),
            shared_blocks = tracing::field::Empty,
            chosen = tracing::field::Empty,
        )
        .entered();
        let hashes = &self.prepared.hashes;
        let (shared_blocks, device) = if config.policy == Policy::KvAware {
            let indexes: Vec<usize> = workers.iter().map(|w| w.index).collect();
            let overlap = self.shared.index.overlap(hashes, &indexes);
            (overlap.shared, overlap.device)
        } else {
            (0, vec![0; workers.len()])
        };
        let candidates: Vec<Candidate> = workers.iter().zip(device).map(|(w, blocks)| w.candidate(blocks)).collect();
        let shape = Shape {
            prompt_tokens: self.prepared.prompt_len(),
            block_size: self.prepared.model.block_size,
            shared_blocks,
        };
        let rotation = self.shared.registry.rotate(role);
        let chosen = choose(config.policy, config.queue_weight, &shape, &candidates, rotation)?;
        let worker = Arc::clone(&workers[chosen]);
        route.record("shared_blocks", shared_blocks);
        route.record("chosen", worker.url.as_str());
        self.shared.index.record(worker.index, hashes);
        let mut involved = lock(&self.involved);
        if involved.is_empty() {
            self.shared.metrics.added_latency(self.received.elapsed());
        }
        involved.push(Arc::clone(&worker));
        Some(worker)
    }

    /// The decode worker now holds the answer's blocks too (its engine caches prompt +
    /// generated blocks), and a conversation's next turn starts with them: remember them for
    /// it, so kv-aware routing sends that turn back. The last token's KV is never computed,
    /// so the run ends before it.
    /// The prompt's own full blocks are hashed already; only the blocks after them are.
    fn record_answer_blocks(&self, worker: &Worker) {
        let generated = lock(&self.progress).tokens.clone();
        let prompt = &self.prepared.request.prompt;
        let block_size = self.prepared.model.block_size;
        let prompt_hashes = &self.prepared.hashes;
        let hashed = prompt_hashes.len() * block_size;
        let computed = (prompt.len() + generated.len()).saturating_sub(1);
        if computed < hashed + block_size {
            return;
        }
        let rest: Vec<u32> = prompt[hashed..].iter().chain(&generated).take(computed - hashed).copied().collect();
        let mut parent = prompt_hashes.last().copied().unwrap_or(self.prepared.namespace.root());
        let mut run = prompt_hashes.clone();
        run.extend(rest.chunks_exact(block_size).map(|block| {
            parent = chain_hash(parent, block);
            parent
        }));
        self.shared.index.record(worker.index, &run);
    }

    /// The terminal `Finished`, with usage assembled from both phases: prompt, cache and
    /// prefill figures from the prefill worker when there was one, the rest from decode.
    async fn finish(&self, finished: v1::Finished, prefill: Option<&v1::Usage>) -> Result<(), Failure> {
        let (streamed, first_at, last_at) = {
            let progress = lock(&self.progress);
            (progress.tokens.len(), progress.first_at, progress.last_at)
        };
        let mut usage = finished.usage.unwrap_or_default();
        if let Some(prefill) = prefill {
            usage.cached_tokens = prefill.cached_tokens;
            usage.cached = prefill.cached;
            usage.prefill_tokens = prefill.prefill_tokens;
            usage.prefill_density = prefill.prefill_density;
        }
        usage.prompt_tokens = u32::try_from(self.prepared.prompt_len()).unwrap_or(u32::MAX);
        usage.completion_tokens = usage.completion_tokens.max(u32::try_from(streamed).unwrap_or(u32::MAX));
        if let Some(first) = first_at {
            let ttft = first.saturating_duration_since(self.started);
            usage.time_to_first_token_ms = u32::try_from(ttft.as_millis()).unwrap_or(u32::MAX);
        }
        if let (Some(first), Some(last)) = (first_at, last_at)
            && streamed > 1
        {
            self.shared.metrics.tpot(last.saturating_duration_since(first) / (streamed as u32 - 1));
        }
        self.shared.metrics.usage(&usage);
        self.emit(Event::Finished(v1::Finished { usage: Some(usage), ..finished })).await
    }

    async fn emit(&self, event: Event) -> Result<(), Failure> {
        self.tx.send(event).await.map_err(|_| Failure::ClientGone)
    }

    /// Relays the prompt's logprobs the first time a worker sends them.
    async fn emit_prompt_logprobs(&self, scored: v1::PromptLogprobs) -> Result<(), Failure> {
        if std::mem::replace(&mut lock(&self.progress).prompt_logprobs_sent, true) {
            return Ok(());
        }
        self.emit(Event::PromptLogprobs(scored)).await
    }

    async fn emit_token(&self, token: v1::Token) -> Result<(), Failure> {
        {
            let mut progress = lock(&self.progress);
            let now = Instant::now();
            progress.tokens.push(token.id);
            progress.last_at = Some(now);
            if progress.first_at.is_none() {
                progress.first_at = Some(now);
                self.shared.metrics.ttft(now.saturating_duration_since(self.started));
            }
        }
        self.emit(Event::Token(token)).await
    }

    async fn terminal(&self, error: v1::Error) {
        let _ = tokio::time::timeout(TERMINAL_SEND_TIMEOUT, self.tx.send(Event::Error(error))).await;
    }

    fn abort_all(&self) {
        for worker in lock(&self.involved).iter() {
            worker.abort(self.prepared.request_id());
        }
    }
}
