//! The *instant worker*: a real tonic server implementing `Prefill` and `Decode` that answers at
//! once with deterministic tokens, for testing (and benchmarking) the router's own logic.
//!
//! Output rule: the token at output position `k` is `prompt[k % prompt.len()]`, spelled
//! `" w{id}"`. A request given `generated` tokens continues at `k = generated.len()`, so a
//! migrated stream continues exactly where the broken one stopped. `max_tokens` counts the
//! `generated` tokens too; EOS (id 2) ends with STOP unless `ignore_eos`. Failures can be
//! injected per worker, and every request, abort and dropped stream is recorded.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lcserve_proto::v1::decode_server::{Decode, DecodeServer};
use lcserve_proto::v1::generate_response::Event;
use lcserve_proto::v1::prefill_server::{Prefill, PrefillServer};
use lcserve_proto::v1::{self, FinishReason};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::model::{EOS, model_info};

/// What a worker does wrong, on purpose.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// `Prefill.Run` fails with UNAVAILABLE.
    pub fail_run: bool,
    /// `Decode.Generate` fails with UNAVAILABLE before its first token.
    pub fail_before_first: bool,
    /// `Decode.Generate` ends at once with an OVERLOADED error event, as an engine past its
    /// queue bound answers.
    pub overloaded: bool,
    /// `Decode.Generate` breaks (UNAVAILABLE status) after streaming this many tokens.
    pub fail_after: Option<usize>,
    /// Pause before each decode token.
    pub token_delay: Duration,
    /// Pause before answering `Prefill.Run`.
    pub run_delay: Duration,
    /// Pause before answering `GetModelInfo` (to order which worker describes the model first).
    pub info_delay: Duration,
    /// Reported as cached prompt tokens (device tier) in usage.
    pub cached_tokens: u32,
    /// Reported by `GetLoad`.
    pub load: v1::Load,
}

/// What a worker saw.
#[derive(Debug, Default)]
pub struct Record {
    pub runs: Mutex<Vec<v1::PrefillRequest>>,
    pub generates: Mutex<Vec<v1::DecodeRequest>>,
    pub aborts: Mutex<Vec<String>>,
    /// Decode streams whose client went away before the end.
    pub dropped_streams: AtomicUsize,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    record: Record,
    info: v1::ModelInfo,
    /// Running decode requests, by id: set to stop them.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A running instant worker; stopped on drop.
pub struct InstantWorker {
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl InstantWorker {
    /// Starts a worker serving both `Prefill` and `Decode`, reporting `role` in its model info.
    pub async fn start(role: &str) -> InstantWorker {
        InstantWorker::start_with(model_info(role)).await
    }

    /// Starts a worker that reports `info`.
    pub async fn start_with(info: v1::ModelInfo) -> InstantWorker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let shared = Arc::new(Shared {
            behaviour: Mutex::default(),
            record: Record::default(),
            info,
            running: Mutex::default(),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = Service(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(PrefillServer::new(service.clone()))
                .add_service(DecodeServer::new(service))
                .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async {
                    let _ = stopped.await;
                })
                .await;
        });
        InstantWorker { url, shared, stop: Some(stop), server }
    }

    pub fn set(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut lock(&self.shared.behaviour));
    }

    pub fn record(&self) -> &Record {
        &self.shared.record
    }

    pub fn runs(&self) -> usize {
        lock(&self.shared.record.runs).len()
    }

    pub fn generates(&self) -> Vec<v1::DecodeRequest> {
        lock(&self.shared.record.generates).clone()
    }

    pub fn aborts(&self) -> Vec<String> {
        lock(&self.shared.record.aborts).clone()
    }
}

impl Drop for InstantWorker {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.server.abort();
    }
}

#[derive(Clone)]
struct Service(Arc<Shared>);

fn token(prompt: &[u32], position: usize) -> v1::Token {
    let id = prompt[position % prompt.len()];
    v1::Token {
        id,
        text: format!(" w{id}"),
        logprob: Some(-0.5),
        top_logprobs: vec![v1::TopLogprob { id, logprob: -0.5 }],
        rank: None,
    }
}

fn usage(request: &v1::WorkerRequest, completion: usize, cached: u32) -> v1::Usage {
    let prompt = request.prompt.len() as u32;
    let cached = cached.min(prompt);
    v1::Usage {
        prompt_tokens: prompt,
        completion_tokens: completion as u32,
        cached_tokens: cached,
        cached: Some(v1::CachedTokens { device: cached, host: 0, shared: 0 }),
        prefill_tokens: prompt - cached,
        ..v1::Usage::default()
    }
}

/// Why generation ends: the finish reason and, as a worker reports it, the request's own stop
/// token that matched.
type End = (FinishReason, Option<u32>);

/// Whether generation ends after the token at `position` (0-based, counting `generated`).
fn ends_after(request: &v1::WorkerRequest, id: u32, position: usize) -> Option<End> {
    let stop = request.stop.clone().unwrap_or_default();
    if stop.stop_token_ids.contains(&id) {
        return Some((FinishReason::Stop, Some(id)));
    }
    if id == EOS && !stop.ignore_eos {
        return Some((FinishReason::Stop, None));
    }
    (position + 1 >= stop.max_tokens.unwrap_or(256) as usize).then_some((FinishReason::Length, None))
}

fn finished((reason, stop_token): End, usage: v1::Usage) -> v1::Finished {
    let matched_stop = stop_token.map(v1::finished::MatchedStop::StopToken);
    v1::Finished { reason: reason as i32, text: String::new(), usage: Some(usage), matched_stop }
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<v1::GenerateResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Prefill for Service {
    async fn run(&self, request: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        let message = request.into_inner();
        lock(&self.0.record.runs).push(message.clone());
        let behaviour = lock(&self.0.behaviour).clone();
        if !behaviour.run_delay.is_zero() {
            tokio::time::sleep(behaviour.run_delay).await;
        }
        if behaviour.fail_run {
            return Err(Status::unavailable("injected prefill failure"));
        }
        let request = message.request.ok_or_else(|| Status::invalid_argument("request: missing"))?;
        let first = token(&request.prompt, 0);
        let usage = usage(&request, 1, behaviour.cached_tokens);
        let finished = ends_after(&request, first.id, 0).map(|end| finished(end, usage));
        let session = v1::KvSession { block_size: self.0.info.block_size, block_hashes: Vec::new(), tail_block: None };
        Ok(Response::new(v1::PrefillResponse {
            session: Some(session),
            first_token: Some(first),
            finished,
            usage: Some(usage),
        }))
    }

    async fn abort(&self, request: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        Ok(Response::new(self.abort_request(request.into_inner().request_id)))
    }

    async fn get_load(&self, _: Request<v1::GetLoadRequest>) -> Result<Response<v1::Load>, Status> {
        Ok(Response::new(lock(&self.0.behaviour).load))
    }

    async fn get_model_info(&self, _: Request<v1::GetModelInfoRequest>) -> Result<Response<v1::ModelInfo>, Status> {
        self.model_info().await
    }
}

impl Service {
    async fn model_info(&self) -> Result<Response<v1::ModelInfo>, Status> {
        let delay = lock(&self.0.behaviour).info_delay;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok(Response::new(self.0.info.clone()))
    }

    fn abort_request(&self, request_id: String) -> v1::AbortResponse {
        let flag = lock(&self.0.running).get(&request_id).cloned();
        lock(&self.0.record.aborts).push(request_id);
        if let Some(flag) = &flag {
            flag.store(true, Ordering::Relaxed);
        }
        v1::AbortResponse { aborted: flag.is_some() }
    }

    async fn produce(
        shared: Arc<Shared>,
        message: v1::DecodeRequest,
        tx: mpsc::Sender<Result<v1::GenerateResponse, Status>>,
    ) {
        let behaviour = lock(&shared.behaviour).clone();
        let Some(request) = message.request else { return };
        let aborted = Arc::new(AtomicBool::new(false));
        lock(&shared.running).insert(request.request_id.clone(), Arc::clone(&aborted));
        let send = |event| tx.send(Ok(v1::GenerateResponse { event: Some(event) }));
        let mut position = message.generated.len();
        let mut sent = 0;
        // Prompt logprobs: token `i` scores `-i`, ranks 1, with itself as its one alternative.
        if request.sampling.as_ref().is_some_and(|s| s.prompt_logprobs.is_some()) {
            let tokens = (0u8..)
                .zip(&request.prompt)
                .map(|(i, &id)| {
                    let logprob = (i > 0).then_some(-f32::from(i));
                    let top_logprobs = logprob.map(|logprob| v1::TopLogprob { id, logprob }).into_iter().collect();
                    v1::Token { id, text: String::new(), logprob, top_logprobs, rank: logprob.map(|_| 1) }
                })
                .collect();
            let _ = send(Event::PromptLogprobs(v1::PromptLogprobs { tokens })).await;
        }
        if behaviour.overloaded {
            let error = v1::Error {
                code: v1::ErrorCode::Overloaded.into(),
                retryable: true,
                message: "the engine's queue is full; retry later".into(),
                field: String::new(),
            };
            let _ = send(Event::Error(error)).await;
            return;
        }
        let outcome = loop {
            if aborted.load(Ordering::Relaxed) {
                break Ok(());
            }
            if behaviour.fail_before_first && sent == 0 || behaviour.fail_after.is_some_and(|n| sent >= n) {
                break tx.send(Err(Status::unavailable("injected decode failure"))).await;
            }
            if !behaviour.token_delay.is_zero() {
                tokio::time::sleep(behaviour.token_delay).await; // sleep(0) still waits a timer tick
            }
            let next = token(&request.prompt, position);
            let end = ends_after(&request, next.id, position);
            if send(Event::Token(next)).await.is_err() {
                shared.record.dropped_streams.fetch_add(1, Ordering::Relaxed);
                break Ok(());
            }
            sent += 1;
            position += 1;
            if let Some(end) = end {
                break send(Event::Finished(finished(end, usage(&request, position, behaviour.cached_tokens)))).await;
            }
        };
        if outcome.is_err() {
            shared.record.dropped_streams.fetch_add(1, Ordering::Relaxed);
        }
        lock(&shared.running).remove(&request.request_id);
    }
}

#[tonic::async_trait]
impl Decode for Service {
    type GenerateStream = EventStream;

    async fn generate(&self, request: Request<v1::DecodeRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let message = request.into_inner();
        lock(&self.0.record.generates).push(message.clone());
        if message.request.as_ref().is_none_or(|r| r.prompt.is_empty()) {
            return Err(Status::invalid_argument("request.prompt: empty"));
        }
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(Service::produce(Arc::clone(&self.0), message, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, request: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        Ok(Response::new(self.abort_request(request.into_inner().request_id)))
    }

    async fn get_load(&self, _: Request<v1::GetLoadRequest>) -> Result<Response<v1::Load>, Status> {
        Ok(Response::new(lock(&self.0.behaviour).load))
    }

    async fn get_model_info(&self, _: Request<v1::GetModelInfoRequest>) -> Result<Response<v1::ModelInfo>, Status> {
        self.model_info().await
    }
}
