//! The OpenAI-compatible HTTP front (axum on the hyper 1 stack tonic already uses):
//! `POST /v1/completions`, `POST /v1/chat/completions`, `POST /v1/responses` (JSON or SSE;
//! `GET` and `DELETE /v1/responses/{id}` and `GET …/input_items` for the stored ones),
//! Anthropic's `POST /v1/messages` (and `…/count_tokens`),
//! `GET /v1/models`, vLLM's `/tokenize` and `/detokenize`, and the operational `/health`,
//! `/ready`, `/metrics`.
//!
//! Errors use OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status
//! of the error's class (400, 401, 404, 413, 429, 503, 504, ...).

#[cfg(test)]
mod chat_chunks;
mod choices;
mod generate;
mod messages;
mod openai;
mod response;
mod responses;
mod structured;
mod tokenize;
mod tools;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use lcserve_proto::v1;
use serde_json::json;

use crate::Shared;
use crate::auth::{Auth, Tenant};
use crate::error::{ErrorClass, RouterError};
use crate::model::ServedModel;

pub(crate) use responses::ResponseStore;

/// Serves the HTTP front on `listener` until `shutdown`, then drains open requests.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RouterError> {
    let app = Router::new()
        .route("/v1/completions", post(generate::completions))
        .route("/v1/chat/completions", post(generate::chat_completions))
        .route("/v1/responses", post(responses::responses))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses/{id}", get(responses::retrieve).delete(responses::delete))
        .route("/v1/responses/{id}/input_items", get(responses::input_items))
        .route("/v1/models", get(models))
        .route("/v1/models/{*model}", get(model))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(Arc::clone(&shared));
    if let Some(tls) = shared.config.tls.as_deref().filter(|tls| tls.serves()) {
        let config =
            tls.http_server().await.map_err(|err| RouterError::Config { field: "tls", reason: err.to_string() })?;
        return lcserve_svc_kit::tls::serve_https(listener, app, config, shutdown).await.map_err(RouterError::Http);
    }
    // TCP_NODELAY: SSE chunks are small writes that Nagle's algorithm would delay.
    let listener = listener.tap_io(|tcp| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY not set");
        }
    });
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.map_err(RouterError::Http)
}

/// Seconds a client should wait before retrying a request refused as overloaded (429) or
/// unavailable (503); OpenAI's and Anthropic's SDKs read `Retry-After` for their backoff.
const RETRY_AFTER_SECONDS: &str = "1";

fn json_response(status: u16, body: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static(RETRY_AFTER_SECONDS));
    }
    response
}

fn error_type(class: ErrorClass) -> &'static str {
    match class {
        ErrorClass::InvalidArgument | ErrorClass::NotFound | ErrorClass::PayloadTooLarge => "invalid_request_error",
        ErrorClass::Unauthenticated => "authentication_error",
        ErrorClass::Overloaded => "rate_limit_error",
        _ => "server_error",
    }
}

/// The OpenAI error body of `err`, and its status.
pub(crate) fn error_response(err: &RouterError) -> Response {
    let (status, body) = error_json(err);
    json_response(status, body)
}

/// [`error_response`]'s status and body.
pub(crate) fn error_json(err: &RouterError) -> (u16, serde_json::Value) {
    let class = err.class();
    let (param, message) = match err {
        RouterError::BadBody { param, message } => (param.clone(), format!("invalid request body: {message}")),
        RouterError::InvalidArgument { field, reason } => {
            (Some(field.openai_name().to_owned()), format!("{}: {reason}", field.openai_name()))
        }
        RouterError::UnknownResponse { param, .. } => (param.map(str::to_owned), err.to_string()),
        other => (other.field().map(|f| f.openai_name().to_owned()), other.to_string()),
    };
    let code = match err {
        RouterError::UnknownModel { .. } => "model_not_found",
        RouterError::UnknownResponse { .. } => "response_not_found",
        _ => class.label(),
    };
    let body = json!({ "error": { "message": message, "type": error_type(class), "param": param, "code": code } });
    (class.http_status(), body)
}

/// The OpenAI error body of a terminal error event (an error after the request was accepted).
pub(crate) fn event_error_json(error: &v1::Error) -> (u16, serde_json::Value) {
    let class = ErrorClass::from_error_code(error.code);
    let param = (!error.field.is_empty()).then(|| error.field.clone());
    let body = json!({ "error": {
        "message": error.message, "type": error_type(class), "param": param, "code": class.label(),
    }});
    (class.http_status(), body)
}

/// The tenant of an HTTP request: its `Authorization: Bearer KEY`, or else its `x-api-key`
/// (what Anthropic's clients send).
fn tenant(auth: &Auth, headers: &HeaderMap) -> Result<Tenant, RouterError> {
    let value = |name| headers.get(name).and_then(|value: &header::HeaderValue| value.to_str().ok());
    match value(header::AUTHORIZATION) {
        Some(authorization) => auth.authenticate(Some(authorization)),
        None => auth.authenticate_key(value(header::HeaderName::from_static("x-api-key"))),
    }
}

/// The body, at most `limit` bytes: 413 beyond (checked against `Content-Length` first, so an
/// honest oversized upload is refused before it is read).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes, RouterError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(RouterError::BodyTooLarge { limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(RouterError::BodyTooLarge { limit }),
        Err(err) => Err(RouterError::BadBody { param: None, message: format!("reading the body: {err}") }),
    }
}

fn model_json(model: &ServedModel) -> serde_json::Value {
    json!({
        "id": model.id, "object": "model", "created": 0, "owned_by": "lcserve",
        "max_model_len": model.context_length, "block_size": model.block_size,
    })
}

/// `GET /v1/models`: the served model, once a worker has described it.
async fn models(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(err) = tenant(&shared.auth, &headers) {
        return error_response(&err);
    }
    let data: Vec<_> = shared.model.get().map(|model| model_json(&model)).into_iter().collect();
    json_response(200, json!({ "object": "list", "data": data }))
}

/// `GET /v1/models/{model}` (the `openai` clients' `models.retrieve`): the served model by
/// its id, which may contain slashes; another id is 404 naming `model`.
async fn model(State(shared): State<Arc<Shared>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(err) = tenant(&shared.auth, &headers) {
        return error_response(&err);
    }
    match shared.served() {
        Ok(model) if model.id == id => json_response(200, model_json(&model)),
        Ok(model) => error_response(&RouterError::UnknownModel { requested: id, served: model.id.clone() }),
        Err(err) => error_response(&err),
    }
}

async fn health() -> &'static str {
    "ok"
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.ready() {
        return (StatusCode::OK, "ready").into_response();
    }
    let reason = if shared.model.get().is_none() { "model info not loaded" } else { "no healthy decode worker" };
    (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = shared.metrics.render(&shared.registry.workers, crate::lock(&shared.index.shared).len());
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text).into_response()
}

async fn not_found(uri: Uri) -> Response {
    let body = json!({ "error": {
        "message": format!("no route for {}", uri.path()), "type": "invalid_request_error", "param": null, "code": "not_found",
    }});
    json_response(404, body)
}
