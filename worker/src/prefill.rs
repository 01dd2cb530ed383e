//! The `Prefill` service: compute a prompt's KV once, leave it in the shared tier, and hand the
//! decode side a session and the first token.
//!
//! The engine runs the request with `max_tokens = 1` and exports every block the shared tier
//! lacks (plus the partial tail), each before the token. Full blocks are written through to the
//! shared tier — awaited, so a decode worker elsewhere finds them — and the tail travels inline
//! in the response. Whatever the shared tier failed to take, the decode worker recomputes.

use std::sync::Arc;
use std::time::Instant;

use lcserve_engine::{EngineEvent, ExportKv, FinishReason, GenerateRequest, KvBlock, MatchedStop, StopConditions};
use lcserve_proto::{hash_to_bytes, v1};
use tonic::{Request, Response, Status};

use crate::convert::{self, Parts};
use crate::error;
use crate::worker::Worker;

#[derive(Debug, Clone)]
pub(crate) struct PrefillService(pub Arc<Worker>);

/// What the engine produced for a prefill.
#[derive(Default)]
struct Outcome {
    blocks: Vec<KvBlock>,
    first: Option<v1::Token>,
    finished: Option<Ended>,
}

/// The engine's terminal event.
struct Ended {
    reason: FinishReason,
    matched: Option<MatchedStop>,
    held_back: String,
    usage: lcserve_engine::Usage,
}

impl PrefillService {
    async fn prefill(&self, request: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        let worker = &self.0;
        let started = Instant::now();
        let Parts { request_id, request } = convert::parts(request.into_inner().request)?;
        if request.prompt_logprobs.is_some() {
            let reason = "prompt_logprobs: prompts are scored by a decode worker, which computes them whole";
            return Err(Status::invalid_argument(reason));
        }
        let (_registered, aborted) = worker.track(&request_id);
        let prepared = worker.prepare(&request.cache_salt, request.prefill_mode, &request.prompt, None, true).await;
        let shared_has = worker.bridge.shared_prefix(&prepared.hashes).await;
        let max_tokens = request.stop.max_tokens;
        let submitted = worker
            .submit(GenerateRequest {
                stop: StopConditions { max_tokens: 1, ..request.stop },
                import: prepared.import,
                export: worker.bridge.has_shared_tier().then_some(ExportKv { from_block: shared_has, tail: true }),
                ..request
            })
            .await
            .map_err(|e| error::status(&e))?;
        let outcome = tokio::select! {
            outcome = collect(submitted) => outcome?,
            Ok(()) = aborted => return Err(Status::cancelled("aborted")),
        };
        let Some(Ended { reason, matched, held_back, usage }) = outcome.finished else {
            return Err(Status::internal("the engine ended the prefill without a terminal event"));
        };
        worker.metrics.finished(&usage);
        let (full, tails): (Vec<_>, Vec<_>) =
            outcome.blocks.into_iter().partition(|b| b.tokens == worker.config.engine.block_size);
        let encoded = worker.bridge.encode(full).await;
        if !encoded.is_empty() {
            worker.bridge.put_through(encoded, worker.config.handoff_timeout).await;
        }
        let tail_block = tails.first().and_then(|tail| worker.bridge.encode_tail(tail));
        // Only a real end is final: hitting the `max_tokens = 1` set here is not.
        let done = reason != FinishReason::Length || max_tokens <= 1 || outcome.first.is_none();
        let ttft = started.elapsed().as_millis().min(u32::MAX as u128) as u32;
        let usage = convert::usage(&usage, prepared.sources, ttft);
        Ok(Response::new(v1::PrefillResponse {
            session: Some(v1::KvSession {
                block_size: worker.config.engine.block_size as u32,
                block_hashes: prepared.hashes.iter().map(|h| hash_to_bytes(*h)).collect(),
                tail_block,
            }),
            first_token: outcome.first,
            finished: done.then(|| convert::finished(reason, matched, held_back, usage)),
            usage: Some(usage),
        }))
    }
}

#[tonic::async_trait]
impl v1::prefill_server::Prefill for PrefillService {
    async fn run(&self, request: Request<v1::PrefillRequest>) -> Result<Response<v1::PrefillResponse>, Status> {
        let result = self.prefill(request).await;
        self.0.metrics.request(lcserve_svc_kit::metrics::result_label(&result));
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

/// Reads the engine's events to the terminal one.
async fn collect(mut events: lcserve_engine::EventStream) -> Result<Outcome, Status> {
    let mut outcome = Outcome::default();
    while let Some(event) = events.next().await {
        match event {
            EngineEvent::Kv(blocks) => outcome.blocks.extend(blocks),
            // Refused above: a prefill worker never scores a prompt.
            EngineEvent::PromptLogprobs(_) => {}
            EngineEvent::Token { id, text, logprobs } => outcome.first = Some(convert::token(id, text, logprobs)),
            EngineEvent::Finished { reason, matched, text, usage, .. } => {
                outcome.finished = Some(Ended { reason, matched, held_back: text, usage });
                break;
            }
            EngineEvent::Error(e) => return Err(error::status(&e)),
        }
    }
    Ok(outcome)
}
