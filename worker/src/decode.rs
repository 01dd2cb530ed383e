//! The `Decode` service: continue a prefilled session (or prefill a short prompt here), stream
//! the tokens, and leave the finished blocks of prompt and answer in the store for the next turn.

use std::sync::Arc;
use std::time::Instant;

use lcserve_common::TokenId;
use lcserve_engine::{EngineEvent, EventStream, ExportKv, GenerateRequest};
use lcserve_proto::v1;
use lcserve_proto::v1::generate_response::Event;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::convert::{self, Parts, Sources};
use crate::error;
use crate::worker::{AbortGuard, Worker};

/// Events buffered between the engine and a slow client; the engine never waits on it (its own
/// channel is unbounded), this only paces the forwarding task.
const STREAM_BUFFER: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct DecodeService(pub Arc<Worker>);

type EventResult = Result<v1::GenerateResponse, Status>;

impl DecodeService {
    async fn start(
        &self,
        request: Request<v1::DecodeRequest>,
    ) -> Result<Response<ReceiverStream<EventResult>>, Status> {
        let worker = &self.0;
        let started = Instant::now();
        let v1::DecodeRequest { request, session, generated } = request.into_inner();
        let Parts { request_id, request } = convert::parts(request)?;
        let tail = session.as_ref().and_then(|s| s.tail_block.as_deref());
        // A prompt scored for its logprobs is computed whole: nothing to fetch.
        let scoring = request.prompt_logprobs.is_some();
        let prepared = worker.prepare(&request.cache_salt, request.prefill_mode, &request.prompt, tail, !scoring).await;
        let stored = worker.bridge.stored_prefix(&prepared.hashes).await;
        let resumed = !generated.is_empty();
        let prompt = if scoring { request.prompt.clone() } else { Vec::new() };
        let events = worker
            .submit(GenerateRequest {
                generated,
                import: prepared.import,
                export: Some(ExportKv { from_block: stored, tail: false }),
                ..request
            })
            .await
            .map_err(|e| error::status(&e))?;
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (registered, aborted) = worker.track(&request_id);
        let forward = Forward { worker: Arc::clone(worker), sources: prepared.sources, started, resumed, prompt };
        tokio::spawn(forward.run(events, tx, aborted, registered).instrument(tracing::info_span!("stream")));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl v1::decode_server::Decode for DecodeService {
    type GenerateStream = ReceiverStream<EventResult>;

    async fn generate(&self, request: Request<v1::DecodeRequest>) -> Result<Response<Self::GenerateStream>, Status> {
        let result = self.start(request).await;
        // A stream that started is counted when it ends (`Forward::run`).
        if let Err(status) = &result {
            self.0.metrics.request(lcserve_svc_kit::metrics::status_label(status.code()));
        }
        result
    }

    async fn abort(&self, request: Request<v1::AbortRequest>) -> Result<Response<v1::AbortResponse>, Status> {
        Ok(Response::new(v1::AbortResponse { aborted: self.0.abort(&request.into_inner().request_id) }))
    }

    async fn get_load(&self, _: Request<v1::GetLoadRequest>) -> Result<Response<v1::Load>, Status> {
        self.0.load().await.map(Response::new).map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn get_model_info(&self, _: Request<v1::GetModelInfoRequest>) -> Result<Response<v1::ModelInfo>, Status> {
        self.0.model_info().map(Response::new).map_err(|e| Status::internal(e.to_string()))
    }
}

/// Moves one request's engine events to its gRPC stream.
struct Forward {
    worker: Arc<Worker>,
    sources: Sources,
    started: Instant,
    /// The request continues tokens streamed elsewhere: its first token here is not the
    /// client's first token.
    resumed: bool,
    /// The prompt, when its logprobs are reported.
    prompt: Vec<TokenId>,
}

impl Forward {
    /// Runs until the terminal event, a client that went away, or an abort. Returning drops the
    /// engine stream, which cancels the sequence and frees its blocks at the next step.
    async fn run(
        self,
        events: EventStream,
        tx: mpsc::Sender<EventResult>,
        aborted: oneshot::Receiver<()>,
        registered: AbortGuard,
    ) {
        let worker = Arc::clone(&self.worker);
        let status = self.forward(events, tx, aborted, registered).await;
        worker.metrics.request(status);
    }

    /// [`run`](Self::run)'s loop; returns the request's `status` label.
    async fn forward(
        self,
        mut events: EventStream,
        tx: mpsc::Sender<EventResult>,
        mut aborted: oneshot::Receiver<()>,
        _registered: AbortGuard,
    ) -> &'static str {
        let mut first_token_ms = None;
        loop {
            let event = tokio::select! {
                event = events.next() => event,
                Ok(()) = &mut aborted => return "cancelled",
                _ = tx.closed() => return "cancelled",
            };
            let Some(event) = event else { return "unavailable" };
            let out = match event {
                EngineEvent::Kv(blocks) => {
                    self.worker.bridge.export(blocks);
                    continue;
                }
                EngineEvent::PromptLogprobs(scored) => {
                    Event::PromptLogprobs(convert::prompt_logprobs(&self.prompt, scored))
                }
                EngineEvent::Token { id, text, logprobs } => {
                    first_token_ms.get_or_insert_with(|| self.millis_since_start());
                    Event::Token(convert::token(id, text, logprobs))
                }
                EngineEvent::Finished { reason, matched, text, usage, .. } => {
                    let ttft =
                        if self.resumed { 0 } else { first_token_ms.unwrap_or_else(|| self.millis_since_start()) };
                    self.worker.metrics.finished(&usage);
                    let usage = convert::usage(&usage, self.sources, ttft);
                    let finished = convert::finished(reason, matched, text, usage);
                    let _ = tx.send(Ok(convert::event(Event::Finished(finished)))).await;
                    return "ok";
                }
                EngineEvent::Error(e) => {
                    let _ = tx.send(Ok(convert::event(Event::Error(error::error_event(&e))))).await;
                    return lcserve_svc_kit::metrics::status_label(error::classify(&e).code);
                }
            };
            if tx.send(Ok(convert::event(out))).await.is_err() {
                return "cancelled";
            }
        }
    }

    fn millis_since_start(&self) -> u32 {
        self.started.elapsed().as_millis().min(u32::MAX as u128) as u32
    }
}
