//! `POST /v1/completions` and `POST /v1/chat/completions`: authenticate, read and parse the body,
//! start the shared flow of each of the `n` choices, then answer with one JSON body or an SSE
//! stream ending `data: [DONE]` once every choice has finished (or at the first error).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use lcserve_proto::v1::{self, generate_response::Event};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::choices::{self, ChoiceEvent};
use super::openai::{self, Kind};
use super::response::Shaper;
use super::{authorization, error_response, event_error_json, json_response, read_body};
use crate::Shared;
use crate::error::RouterError;
use crate::metrics::Endpoint;

/// SSE comment lines keep idle connections (a long prefill) open through proxies.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub(super) async fn completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    respond(shared, headers, body, Kind::Completion).await
}

pub(super) async fn chat_completions(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    respond(shared, headers, body, Kind::Chat).await
}

async fn respond(shared: Arc<Shared>, headers: HeaderMap, body: Body, kind: Kind) -> Response {
    let endpoint = match kind {
        Kind::Completion => Endpoint::Completions,
        Kind::Chat => Endpoint::ChatCompletions,
    };
    // The request's root span, or a child of the caller's when it sent a `traceparent`.
    let span = tracing::info_span!("http.request", otel.name = endpoint.as_str(), otel.kind = "server");
    lcserve_svc_kit::propagation::continue_trace(&span, &headers);
    match start(&shared, &headers, body, kind, endpoint).instrument(span).await {
        Ok((events, shaper, true)) => stream(events, shaper).into_response(),
        Ok((events, shaper, false)) => collect(events, shaper).await,
        Err(err) => {
            shared.metrics.request(endpoint, err.class().label());
            error_response(&err)
        }
    }
}

/// Everything before the first event; errors here are plain HTTP errors.
async fn start(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
    endpoint: Endpoint,
) -> Result<(mpsc::Receiver<ChoiceEvent>, Shaper, bool), RouterError> {
    let tenant = shared.auth.authenticate(authorization(headers))?;
    let bytes = read_body(headers, body, shared.config.max_body_bytes).await?;
    let parsed = openai::parse(&bytes).map_err(|(param, message)| RouterError::BadBody { param, message })?;
    let (requests, mut options) = parsed.into_generate(kind)?;
    let model = shared.served()?;
    if let Some(template) = &model.template {
        options.tool_calling = options.tool_calling.in_format(template.call_format());
    }
    let (choices, stream, structured_output_field) = (options.choices, options.stream, options.structured_output_field);
    let thinks = model.template.as_ref().is_some_and(|t| t.thinks());
    let (id, tokenizer) = (model.id.clone(), model.tokenizer.clone());
    let started = choices::start(shared, model, &tenant, requests, choices, endpoint)
        .await
        .map_err(|e| e.naming_structured_output(structured_output_field))?;
    let reasoning = thinks.then_some(started.opened_reasoning.as_slice());
    let shaper = Shaper::new(kind, &id, options, tokenizer, reasoning);
    Ok((started.events, shaper, stream))
}

/// Every choice's finish, in choice order, once all have one.
fn all_finished(finished: &[Option<v1::Finished>]) -> Option<Vec<&v1::Finished>> {
    finished.iter().map(Option::as_ref).collect()
}

async fn collect(mut events: mpsc::Receiver<ChoiceEvent>, mut shaper: Shaper) -> Response {
    let n = shaper.choices();
    let mut tokens = vec![Vec::new(); n];
    let mut finished = vec![None; n];
    while let Some((index, event)) = events.recv().await {
        match event {
            Event::Token(token) => tokens[index].push(token),
            Event::PromptLogprobs(scored) => shaper.record_prompt(index, scored),
            Event::Finished(done) => {
                finished[index] = Some(done);
                if let Some(all) = all_finished(&finished) {
                    return json_response(200, shaper.complete(&tokens, &all));
                }
            }
            Event::Error(error) => {
                let (status, body) = event_error_json(&error);
                return json_response(status, body);
            }
        }
    }
    error_response(&RouterError::Internal("the request ended without a result".into()))
}

/// State of one SSE response: chunks ready to send, then more from the choices' flows.
struct SseState {
    events: mpsc::Receiver<ChoiceEvent>,
    shaper: Shaper,
    ready: VecDeque<SseEvent>,
    /// Each choice's finish, once it has one.
    finished: Vec<Option<v1::Finished>>,
    done: bool,
}

fn data(value: &serde_json::Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

impl SseState {
    /// Turns the next flow event into chunks; false once the stream is over.
    async fn advance(&mut self) -> bool {
        if self.done {
            return false;
        }
        match self.events.recv().await {
            Some((index, Event::Token(token))) => {
                if let Some(chunk) = self.shaper.token_chunk(index, &token) {
                    self.ready.push_back(data(&chunk));
                }
            }
            Some((index, Event::PromptLogprobs(scored))) => {
                if let Some(chunk) = self.shaper.prompt_chunk(index, &scored) {
                    self.ready.push_back(data(&chunk));
                }
            }
            Some((index, Event::Finished(finished))) => {
                let chunk = self.shaper.finish_chunk(index, &finished);
                self.ready.push_back(data(&chunk));
                self.finished[index] = Some(finished);
                if let Some(all) = all_finished(&self.finished) {
                    if let Some(usage) = self.shaper.usage_chunk(&all) {
                        self.ready.push_back(data(&usage));
                    }
                    self.finish();
                }
            }
            Some((_, Event::Error(error))) => {
                self.ready.push_back(data(&event_error_json(&error).1));
                self.finish();
            }
            None => {
                let error = RouterError::Internal("the request ended without a result".into()).to_event();
                self.ready.push_back(data(&event_error_json(&error).1));
                self.finish();
            }
        }
        true
    }

    fn finish(&mut self) {
        self.ready.push_back(SseEvent::default().data("[DONE]"));
        self.done = true;
    }
}

/// The SSE response. Dropping it (client gone) drops the receiver, which cancels the flow.
fn stream(
    events: mpsc::Receiver<ChoiceEvent>,
    shaper: Shaper,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let ready: VecDeque<SseEvent> = shaper.opening_chunks().iter().map(data).collect();
    let finished = vec![None; shaper.choices()];
    let state = SseState { events, shaper, ready, finished, done: false };
    let chunks = futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.ready.pop_front() {
                return Some((Ok(chunk), state));
            }
            if !state.advance().await {
                return None;
            }
        }
    });
    Sse::new(chunks).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}
