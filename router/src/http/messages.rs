//! `POST /v1/messages`: Anthropic's Messages API over the chat pipeline, for the clients and
//! agents built on Anthropic's SDKs (they authenticate with `x-api-key`, which the router
//! accepts as it does `Authorization: Bearer`).
//!
//! The body is rewritten into a chat completion request ([`chat_body`]: `system` and
//! `messages` — text, `tool_use` and `tool_result` blocks — into chat messages, `max_tokens`,
//! `stop_sequences`, sampling, custom `tools` and `tool_choice`; lcserve's extensions as they
//! are), which runs as any chat does. Its answer comes back as a `message` whose `content`
//! holds a `thinking` block (a thinking model's reasoning), a `text` block and a `tool_use`
//! block per call; streamed, as Anthropic's events ([`EventStream`]). Errors take Anthropic's
//! shape, `{"type": "error", "error": {"type", "message"}}`, with the HTTP status of the chat
//! endpoint's. `thinking` maps onto a thinking model's controls ([`thinking`]). Refused: image
//! and document blocks and Anthropic's server tools. `metadata` changes nothing here and is
//! ignored.
//!
//! `POST /v1/messages/count_tokens` answers `{"input_tokens"}`, the prompt tokens such a body
//! comes to ([`count_tokens`]).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value, json};
use tracing::Instrument;

use output::{EventStream, whole};

use super::openai::{EXTENSION_FIELDS, Kind};
use super::{error_json, json_response};
use super::{generate, tokenize};
use crate::Shared;
use crate::error::RouterError;
use crate::metrics::Endpoint;

/// Fields whose meaning is the chat endpoint's (with [`EXTENSION_FIELDS`]).
const SHARED_FIELDS: [&str; 7] = ["model", "max_tokens", "temperature", "top_p", "top_k", "stream", "seed"];

pub(super) async fn messages(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let endpoint = Endpoint::Messages;
    let span = tracing::info_span!("http.request", otel.name = endpoint.as_str(), otel.kind = "server");
    lcserve_svc_kit::propagation::continue_trace(&span, &headers);
    let adapt = async |_: &_, bytes: Bytes| Ok(Bytes::from(chat_body(&bytes)?.to_string()));
    let started = match generate::start(&shared, &headers, body, Kind::Chat, endpoint, adapt).instrument(span).await {
        Ok(started) => started,
        Err(err) => {
            shared.metrics.request(endpoint, err.class().label());
            let (status, body) = error_json(&err);
            return json_response(status, anthropic_error(&body));
        }
    };
    let model = shared.served().map_or_else(|_| String::new(), |model| model.id.clone());
    if started.stream {
        let mut events = EventStream::new(model);
        let opening = events.opening();
        return generate::typed_sse(started, opening, move |chunk| {
            std::future::ready(match chunk {
                Some(chunk) => events.chunk(chunk),
                None => events.finish(),
            })
        });
    }
    match generate::collect(started.events, started.shaper).await {
        (200, chat) => json_response(200, whole(&model, &chat)),
        (status, error) => json_response(status, anthropic_error(&error)),
    }
}

/// An OpenAI error body in Anthropic's shape, its type from the OpenAI one.
fn anthropic_error(body: &Value) -> Value {
    let error = &body["error"];
    let kind = match (error["type"].as_str(), error["code"].as_str()) {
        (Some("authentication_error"), _) => "authentication_error",
        (Some("rate_limit_error"), _) => "rate_limit_error",
        (_, Some("model_not_found" | "not_found")) => "not_found_error",
        (_, Some("payload_too_large")) => "request_too_large",
        (Some("invalid_request_error"), _) => "invalid_request_error",
        (_, Some("unavailable")) => "overloaded_error",
        _ => "api_error",
    };
    json!({ "type": "error", "error": { "type": kind, "message": error["message"] } })
}

fn bad(param: &str, message: impl Into<String>) -> RouterError {
    let message = message.into();
    RouterError::BadBody { param: Some(param.to_owned()), message: format!("{param}: {message}") }
}

/// `POST /v1/messages/count_tokens`: the input tokens of a Messages request (which needs no
/// `max_tokens` here), rendered with the chat template, its tools and the generation prompt
/// as `/v1/messages` renders them — what Anthropic's `messages.count_tokens` asks, and agents
/// use to keep their conversations within the context.
pub(super) async fn count_tokens(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bytes = tokenize::read_authenticated(&shared, &headers, body).await?;
        let chat = chat_request(body_object(&bytes)?)?;
        let body =
            serde_json::from_value(chat).map_err(|e| RouterError::BadBody { param: None, message: e.to_string() })?;
        tokenize::tokens_of(&shared, body).await
    }
    .await;
    tokenize::record(&shared, Endpoint::CountTokens, &result);
    match result {
        Ok(tokens) => json_response(200, json!({ "input_tokens": tokens.len() })),
        Err(err) => {
            let (status, body) = error_json(&err);
            json_response(status, anthropic_error(&body))
        }
    }
}

/// A Messages API body as a chat completion body.
pub(super) fn chat_body(bytes: &[u8]) -> Result<Value, RouterError> {
    let request = body_object(bytes)?;
    if !request.contains_key("max_tokens") {
        return Err(bad("max_tokens", "is required"));
    }
    chat_request(request)
}

/// The body's fields, those set to null left out.
fn body_object(bytes: &[u8]) -> Result<Map<String, Value>, RouterError> {
    let Value::Object(mut request) =
        serde_json::from_slice(bytes).map_err(|e| RouterError::BadBody { param: None, message: e.to_string() })?
    else {
        return Err(RouterError::BadBody { param: None, message: "the body must be a JSON object".into() });
    };
    request.retain(|_, value| !value.is_null());
    Ok(request)
}

/// The chat body a Messages request's fields mean.
fn chat_request(mut request: Map<String, Value>) -> Result<Value, RouterError> {
    let mut chat: Map<String, Value> = SHARED_FIELDS
        .iter()
        .chain(&EXTENSION_FIELDS)
        .filter_map(|&key| Some((key.to_owned(), request.get(key)?.clone())))
        .collect();
    if request.get("stream") == Some(&json!(true)) {
        // The closing `message_delta` reports usage.
        chat.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    if let Some(stop) = request.remove("stop_sequences") {
        chat.insert("stop".into(), stop);
    }
    if let Some(setting) = request.remove("thinking") {
        thinking(&mut chat, &setting)?;
    }
    let mut messages = Vec::new();
    match request.remove("system") {
        None => {}
        Some(system) => messages.push(json!({ "role": "system", "content": text_of(&system, "system")? })),
    }
    let Some(Value::Array(turns)) = request.remove("messages") else {
        return Err(bad("messages", "must be a list of messages"));
    };
    for (index, turn) in turns.iter().enumerate() {
        push_turn(&mut messages, turn, &format!("messages[{index}]"))?;
    }
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = request.remove("tools") {
        chat.insert("tools".into(), chat_tools(&tools)?);
    }
    if let Some(choice) = request.remove("tool_choice") {
        let (choice, parallel) = chat_tool_choice(&choice)?;
        chat.insert("tool_choice".into(), choice);
        chat.extend(parallel.map(|parallel| ("parallel_tool_calls".to_owned(), json!(parallel))));
    }
    Ok(Value::Object(chat))
}

/// Anthropic's `thinking` setting on a thinking model: `enabled` caps its reasoning block at
/// `budget_tokens` (vLLM's `thinking_token_budget`); `disabled` asks its template not to think
/// (Qwen3's `enable_thinking: false`); `adaptive` leaves it to the model. The client's own
/// `thinking_token_budget` or `enable_thinking` win.
fn thinking(chat: &mut Map<String, Value>, setting: &Value) -> Result<(), RouterError> {
    match setting["type"].as_str() {
        Some("enabled") => {
            let budget = setting["budget_tokens"].as_u64().filter(|&n| n <= u64::from(u32::MAX));
            let budget = budget.ok_or_else(|| bad("thinking.budget_tokens", "must be a non-negative integer"))?;
            chat.entry("thinking_token_budget").or_insert(json!(budget));
        }
        Some("disabled") => {
            let kwargs = chat.entry("chat_template_kwargs").or_insert_with(|| json!({}));
            if let Some(kwargs) = kwargs.as_object_mut() {
                kwargs.entry("enable_thinking").or_insert(json!(false));
            }
        }
        Some("adaptive") => {}
        _ => return Err(bad("thinking.type", "must be enabled, disabled or adaptive")),
    }
    Ok(())
}

/// One turn as chat messages: a user turn's `tool_result` blocks become `tool` messages (before
/// its text), an assistant turn's `tool_use` blocks its calls; `thinking` blocks are dropped,
/// as chat templates drop earlier reasoning.
fn push_turn(messages: &mut Vec<Value>, turn: &Value, at: &str) -> Result<(), RouterError> {
    let role = match turn["role"].as_str() {
        Some(role @ ("user" | "assistant")) => role,
        _ => return Err(bad(at, "role must be user or assistant")),
    };
    let blocks = match &turn["content"] {
        Value::String(text) => vec![json!({ "type": "text", "text": text })],
        Value::Array(blocks) => blocks.clone(),
        _ => return Err(bad(at, "content must be a string or a list of blocks")),
    };
    let (mut text, mut calls) = (String::new(), Vec::new());
    for (index, block) in blocks.iter().enumerate() {
        let at = format!("{at}.content[{index}]");
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().ok_or_else(|| bad(&at, "text is required"))?),
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": block["id"].as_str().ok_or_else(|| bad(&at, "id is required"))?,
                "type": "function",
                "function": {
                    "name": block["name"].as_str().ok_or_else(|| bad(&at, "name is required"))?,
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
            Some("tool_result") if role == "user" => messages.push(json!({
                "role": "tool",
                "tool_call_id": block["tool_use_id"].as_str().ok_or_else(|| bad(&at, "tool_use_id is required"))?,
                "content": block.get("content").map_or(Ok(String::new()), |content| text_of(content, &at))?,
            })),
            Some("thinking" | "redacted_thinking") => {}
            other => return Err(bad(&at, format!("blocks of type {} are not supported", other.unwrap_or("(none)")))),
        }
    }
    match (role, calls.is_empty()) {
        ("assistant", false) => messages.push(json!({ "role": role, "content": text, "tool_calls": calls })),
        (_, _) if !text.is_empty() || role == "assistant" => messages.push(json!({ "role": role, "content": text })),
        _ => {}
    }
    Ok(())
}

/// The text of a `system` prompt or a `tool_result`'s content: a string, or text blocks joined.
fn text_of(content: &Value, at: &str) -> Result<String, RouterError> {
    match content {
        Value::String(text) => Ok(text.clone()),
        Value::Array(blocks) => blocks
            .iter()
            .map(|block| match (block["type"].as_str(), block["text"].as_str()) {
                (Some("text"), Some(text)) => Ok(text),
                (kind, _) => Err(bad(at, format!("blocks of type {} are not supported", kind.unwrap_or("(none)")))),
            })
            .collect(),
        _ => Err(bad(at, "must be a string or a list of text blocks")),
    }
}

/// Custom tools in the chat shape; Anthropic's server tools are refused.
fn chat_tools(tools: &Value) -> Result<Value, RouterError> {
    let Value::Array(tools) = tools else { return Err(bad("tools", "must be a list")) };
    let tools = tools
        .iter()
        .enumerate()
        .map(|(i, tool)| match (tool["type"].as_str(), tool["name"].as_str()) {
            (None | Some("custom"), Some(name)) => {
                let mut function =
                    json!({ "name": name, "parameters": tool.get("input_schema").unwrap_or(&json!({})) });
                if let Some(description) = tool.get("description") {
                    function["description"] = description.clone();
                }
                Ok(json!({ "type": "function", "function": function }))
            }
            (Some(kind), _) if kind != "custom" => {
                Err(bad(&format!("tools[{i}]"), format!("only custom tools are served, not {kind:?}")))
            }
            _ => Err(bad(&format!("tools[{i}]"), "name is required")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(tools))
}

/// `{"type": "auto" | "any" | "tool" | "none"}` as the chat's `tool_choice`, and its
/// `disable_parallel_tool_use` as `parallel_tool_calls`.
fn chat_tool_choice(choice: &Value) -> Result<(Value, Option<bool>), RouterError> {
    let parallel = choice["disable_parallel_tool_use"].as_bool().map(|disable| !disable);
    let chat = match choice["type"].as_str() {
        Some("auto") => json!("auto"),
        Some("any") => json!("required"),
        Some("none") => json!("none"),
        Some("tool") => match choice["name"].as_str() {
            Some(name) => json!({ "type": "function", "function": { "name": name } }),
            None => return Err(bad("tool_choice", "a tool choice needs its name")),
        },
        _ => return Err(bad("tool_choice", "type must be auto, any, tool or none")),
    };
    Ok((chat, parallel))
}

mod output;
#[cfg(test)]
mod tests;
