//! `POST /v1/completions` and `POST /v1/chat/completions`: authenticate, read and parse the body,
//! start the shared flow of each of the `n` choices, then answer with one JSON body or an SSE
//! stream ending `data: [DONE]` once every choice has finished (or at the first error).
//! [`super::responses`] and [`super::messages`] run the same steps and reshape what they
//! answer ([`typed_sse`] for their streams).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use lcserve_proto::v1::{self, generate_response::Event};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::choices::{self, ChoiceEvent};
use super::openai::{self, Kind};
use super::response::Shaper;
use super::{error_json, error_response, event_error_json, json_response, read_body};
use crate::Shared;
use crate::auth::Tenant;
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
    match start(&shared, &headers, body, kind, endpoint, async |_, bytes| Ok(bytes)).instrument(span).await {
        Ok(started) if started.stream => stream(started.events, started.shaper).into_response(),
        Ok(started) => {
            let (status, body) = collect(started.events, started.shaper).await;
            json_response(status, body)
        }
        Err(err) => {
            shared.metrics.request(endpoint, err.class().label());
            error_response(&err)
        }
    }
}

/// A started request: its choices' merged events, the shaper of their chunks, whether the
/// client asked for a stream, and whose request it is.
pub(super) struct Started {
    pub events: mpsc::Receiver<ChoiceEvent>,
    pub shaper: Shaper,
    pub stream: bool,
    pub tenant: Tenant,
}

/// Everything before the first event; errors here are plain HTTP errors. `adapt` turns the
/// tenant's body into the endpoint's own (the identity but for [`super::responses`]).
pub(super) async fn start(
    shared: &Arc<Shared>,
    headers: &HeaderMap,
    body: Body,
    kind: Kind,
    endpoint: Endpoint,
    adapt: impl AsyncFnOnce(&Tenant, Bytes) -> Result<Bytes, RouterError>,
) -> Result<Started, RouterError> {
    let tenant = super::tenant(&shared.auth, headers)?;
    let bytes = adapt(&tenant, read_body(headers, body, shared.config.max_body_bytes).await?).await?;
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
    Ok(Started { events: started.events, shaper, stream, tenant })
}

/// Every choice's finish, in choice order, once all have one.
fn all_finished(finished: &[Option<v1::Finished>]) -> Option<Vec<&v1::Finished>> {
    finished.iter().map(Option::as_ref).collect()
}

/// The whole (non-streaming) answer: its HTTP status and body.
pub(super) async fn collect(mut events: mpsc::Receiver<ChoiceEvent>, mut shaper: Shaper) -> (u16, Value) {
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
                    return (200, shaper.complete(&tokens, &all));
                }
            }
            Event::Error(error) => return event_error_json(&error),
        }
    }
    error_json(&RouterError::Internal("the request ended without a result".into()))
}

/// State of one response's chunks: those ready to send, then more from the choices' flows.
struct ChunkState {
    events: mpsc::Receiver<ChoiceEvent>,
    shaper: Shaper,
    ready: VecDeque<Value>,
    /// Each choice's finish, once it has one.
    finished: Vec<Option<v1::Finished>>,
    done: bool,
}

impl ChunkState {
    /// Turns the next flow event into chunks; false once there are no more.
    async fn advance(&mut self) -> bool {
        if self.done {
            return false;
        }
        match self.events.recv().await {
            Some((index, Event::Token(token))) => self.ready.extend(self.shaper.token_chunk(index, &token)),
            Some((index, Event::PromptLogprobs(scored))) => {
                self.ready.extend(self.shaper.prompt_chunk(index, &scored));
            }
            Some((index, Event::Finished(finished))) => {
                let chunk = self.shaper.finish_chunk(index, &finished);
                self.ready.push_back(chunk);
                self.finished[index] = Some(finished);
                if let Some(all) = all_finished(&self.finished) {
                    self.ready.extend(self.shaper.usage_chunk(&all));
                    self.done = true;
                }
            }
            Some((_, Event::Error(error))) => {
                self.ready.push_back(event_error_json(&error).1);
                self.done = true;
            }
            None => {
                let error = RouterError::Internal("the request ended without a result".into()).to_event();
                self.ready.push_back(event_error_json(&error).1);
                self.done = true;
            }
        }
        true
    }
}

/// A streamed answer's chunks, as chat and completion SSE `data` carry them: the opening
/// chunks, tokens, each choice's finish, the usage chunk when asked for, or an `{"error"}`
/// object that ends them. Dropping the stream (client gone) drops the receiver, which cancels
/// the flow.
fn chunks(events: mpsc::Receiver<ChoiceEvent>, shaper: Shaper) -> impl futures_util::Stream<Item = Value> {
    let ready: VecDeque<Value> = shaper.opening_chunks().into_iter().collect();
    let finished = vec![None; shaper.choices()];
    let state = ChunkState { events, shaper, ready, finished, done: false };
    futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.ready.pop_front() {
                return Some((chunk, state));
            }
            if !state.advance().await {
                return None;
            }
        }
    })
}

/// The SSE response: every chunk, then `data: [DONE]`.
fn stream(
    events: mpsc::Receiver<ChoiceEvent>,
    shaper: Shaper,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let data = |chunk: Value| Ok(SseEvent::default().data(chunk.to_string()));
    let done = futures_util::stream::once(async { Ok(SseEvent::default().data("[DONE]")) });
    Sse::new(chunks(events, shaper).map(data).chain(done)).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// An event of an API whose stream is typed events (the Responses and Messages APIs): its
/// type, the SSE event's name, and its body.
pub(super) type TypedEvent = (&'static str, Value);

/// The SSE answer of such an API: `opening`, then the events `reshape` makes of each chat
/// chunk, then of the end (`None`); each chunk's are sent once its future is ready (the end's
/// may first store the answer).
pub(super) fn typed_sse<Reshaped>(
    started: Started,
    opening: Vec<TypedEvent>,
    mut reshape: impl FnMut(Option<&Value>) -> Reshaped + Send + 'static,
) -> Response
where
    Reshaped: Future<Output = Vec<TypedEvent>> + Send + 'static,
{
    let reshaped = chunks(started.events, started.shaper)
        .map(Some)
        .chain(futures_util::stream::once(async { None }))
        .then(move |chunk| reshape(chunk.as_ref()))
        .flat_map(futures_util::stream::iter);
    let events = futures_util::stream::iter(opening)
        .chain(reshaped)
        .map(|(kind, body)| Ok::<_, Infallible>(SseEvent::default().event(kind).data(body.to_string())));
    Sse::new(events).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response()
}
