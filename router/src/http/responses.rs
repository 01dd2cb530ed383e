//! `POST /v1/responses`: OpenAI's Responses API over the chat pipeline.
//!
//! The body is rewritten into a chat completion request ([`chat_body`]: `instructions` and
//! `input` into `messages`, `max_output_tokens`, `text.format`, function `tools` and
//! `tool_choice`, `reasoning.effort` into `reasoning_effort`; sampling fields and lcserve's
//! extensions as they are), which runs as any chat
//! does. Its answer comes back reshaped: a `response` object whose `output` holds a `reasoning`
//! item (a thinking model's), a `message` item with the text and a `function_call` item per
//! call; streamed, the API's typed events ([`EventStream`]: `response.created`, …,
//! `response.output_text.delta`, …, `response.completed`). Errors name the Responses field.
//!
//! Answers are stored unless `store` is false ([`store`]): a follow-up names one as its
//! `previous_response_id` and continues that conversation; [`by_id`] reads, lists the input
//! of and forgets one. Refused, as the server cannot honour them: the
//! `conversation` object, OpenAI's built-in tools, non-text inputs, `truncation: "auto"`,
//! `max_tool_calls` and `background`. `include: ["message.output_text.logprobs"]` or
//! `top_logprobs` return the text's logprobs. Fields that change nothing in the answer
//! (`metadata`, `user`, other `include` values, `reasoning.summary`: the `reasoning` item holds
//! the whole reasoning, …) are ignored.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Map, Value, json};
use tracing::Instrument;

pub(super) use by_id::{delete, input_items, retrieve};
use output::{EventStream, Shape};
use store::Context;
pub(crate) use store::ResponseStore;

use super::generate;
use super::openai::{EXTENSION_FIELDS, Kind};
use super::{error_json, json_response};
use crate::Shared;
use crate::auth::Tenant;
use crate::error::RouterError;
use crate::metrics::Endpoint;

/// The `include` value that asks for the text's logprobs.
const LOGPROBS: &str = "message.output_text.logprobs";

/// Request fields a response object repeats back.
const ECHOED: [&str; 10] = [
    "instructions",
    "reasoning",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "text",
    "top_logprobs",
];

/// Fields whose meaning is the chat endpoint's (with [`EXTENSION_FIELDS`]).
const SHARED_FIELDS: [&str; 12] = [
    "model",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "seed",
    "stop",
    "logit_bias",
    "parallel_tool_calls",
];

/// The chat fields errors may name, and the Responses field each came from.
const RENAMED: [(&str, &str); 5] = [
    ("max_completion_tokens", "max_output_tokens"),
    ("max_tokens", "max_output_tokens"),
    ("messages", "input"),
    ("reasoning_effort", "reasoning.effort"),
    ("response_format", "text.format"),
];

pub(super) async fn responses(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    let endpoint = Endpoint::Responses;
    let span = tracing::info_span!("http.request", otel.name = endpoint.as_str(), otel.kind = "server");
    lcserve_svc_kit::propagation::continue_trace(&span, &headers);
    let mut rewritten = None;
    let adapt = async |tenant: &Tenant, bytes: Bytes| {
        let (chat, rest) = chat_body(&bytes, &shared.responses, tenant).await?;
        rewritten = Some(rest);
        Ok(Bytes::from(chat.to_string()))
    };
    let started = generate::start(&shared, &headers, body, Kind::Chat, endpoint, adapt).instrument(span).await;
    let (started, Rewritten { echoed, context }) = match (started, rewritten) {
        (Ok(started), Some(rewritten)) => (started, rewritten),
        (Ok(_), None) => return answer_error(&RouterError::Internal("the body was not rewritten".into())),
        (Err(err), _) => {
            shared.metrics.request(endpoint, err.class().label());
            return answer_error(&err);
        }
    };
    let model = shared.served().map_or_else(|_| String::new(), |model| model.id.clone());
    let shape = Shape::new(model, echoed);
    // Stores the answer, once whole, when the request asked for it: before the client hears
    // of it, so a follow-up at once finds it.
    let mut keep = context.map(|context| {
        let tenant = started.tenant.clone();
        move |response: &Value| store_answer(shared, tenant, response.clone(), context)
    });
    if started.stream {
        let mut events = EventStream::new(shape);
        let opening = events.opening();
        return generate::typed_sse(started, opening, move |chunk| {
            let (events, kept) = match chunk {
                Some(chunk) => (events.chunk(chunk), None),
                None => {
                    let closing = events.finish();
                    let kept = keep.take().zip(closing.last()).map(|(keep, (_, last))| keep(&last["response"]));
                    (closing, kept)
                }
            };
            async move {
                if let Some(kept) = kept {
                    kept.await;
                }
                events
            }
        });
    }
    match generate::collect(started.events, started.shaper).await {
        (200, chat) => {
            let response = shape.whole(&chat);
            if let Some(keep) = keep.take() {
                keep(&response).await;
            }
            json_response(200, response)
        }
        (status, error) => json_response(status, renamed(error)),
    }
}

/// Stores `tenant`'s `response`. A failure leaves the answer as it is (it was generated; the
/// client gets it) and is logged: a follow-up naming it will be told it is unknown.
async fn store_answer(shared: Arc<Shared>, tenant: Tenant, response: Value, context: Context) {
    if let Err(err) = shared.responses.put(&tenant, response, context).await {
        tracing::error!(error = %err, "a response was not stored");
    }
}

fn answer_error(err: &RouterError) -> Response {
    let (status, body) = error_json(err);
    json_response(status, renamed(body))
}

/// An error body with the chat field it names replaced by the Responses field.
fn renamed(mut body: Value) -> Value {
    let error = &mut body["error"];
    let Some(param) = error["param"].as_str().map(str::to_owned) else { return body };
    if let Some((chat, ours)) =
        RENAMED.iter().find(|(chat, _)| param == *chat || param.starts_with(&format!("{chat}[")))
    {
        error["param"] = json!(param.replacen(chat, ours, 1));
        if let Some(message) = error["message"].as_str() {
            error["message"] = json!(message.replacen(chat, ours, 1));
        }
    }
    body
}

fn bad(param: &'static str, message: impl Into<String>) -> RouterError {
    RouterError::BadBody { param: Some(param.into()), message: message.into() }
}

fn refused(field: &'static str, reason: &str) -> RouterError {
    RouterError::BadBody { param: Some(field.into()), message: format!("{field}: {reason}") }
}

/// What a Responses body leaves beside its chat body.
#[derive(Debug)]
pub(super) struct Rewritten {
    /// The fields its answer repeats.
    echoed: Map<String, Value>,
    /// When the answer is to be stored: the input items it follows, the previous response's
    /// conversation first.
    context: Option<Context>,
}

/// A Responses API body of `tenant`'s as a chat completion body, its `previous_response_id`
/// read from `store`.
pub(super) async fn chat_body(
    bytes: &[u8],
    store: &ResponseStore,
    tenant: &Tenant,
) -> Result<(Value, Rewritten), RouterError> {
    let Value::Object(mut request) =
        serde_json::from_slice(bytes).map_err(|e| RouterError::BadBody { param: None, message: e.to_string() })?
    else {
        return Err(RouterError::BadBody { param: None, message: "the body must be a JSON object".into() });
    };
    request.retain(|_, value| !value.is_null());
    if request.contains_key("conversation") {
        return Err(refused("conversation", "conversations are not stored here; use previous_response_id"));
    }
    if request.get("background").is_some_and(|b| b != &json!(false)) {
        return Err(refused("background", "responses run in the foreground only"));
    }
    if request.get("truncation").is_some_and(|t| t != "disabled") {
        return Err(refused("truncation", "input is never truncated; a prompt too long is refused"));
    }
    if request.contains_key("max_tool_calls") {
        return Err(refused("max_tool_calls", "a limit on calls is not implemented"));
    }
    let mut echoed: Map<String, Value> =
        ECHOED.iter().filter_map(|&key| Some((key.to_owned(), request.get(key)?.clone()))).collect();
    let keep = match request.remove("store") {
        None => store.enabled(),
        Some(Value::Bool(keep)) => keep && store.enabled(),
        Some(_) => return Err(bad("store", "store: must be a boolean")),
    };
    echoed.insert("store".into(), json!(keep));
    let previous = match request.remove("previous_response_id") {
        None => Vec::new(),
        Some(Value::String(id)) => {
            if !store.enabled() {
                return Err(refused(
                    "previous_response_id",
                    "this router stores no responses; send the whole conversation",
                ));
            }
            let stored = store.get(tenant, &id).await?;
            echoed.insert("previous_response_id".into(), json!(id));
            stored.ok_or(RouterError::UnknownResponse { id, param: Some("previous_response_id") })?.conversation()
        }
        Some(_) => return Err(bad("previous_response_id", "previous_response_id: must be a string")),
    };
    let mut chat: Map<String, Value> = SHARED_FIELDS
        .iter()
        .chain(&EXTENSION_FIELDS)
        .filter_map(|&key| Some((key.to_owned(), request.get(key)?.clone())))
        .collect();
    let mut messages = Vec::new();
    match request.remove("instructions") {
        None => {}
        Some(Value::String(instructions)) => messages.push(json!({ "role": "system", "content": instructions })),
        Some(_) => return Err(bad("instructions", "instructions: must be a string")),
    }
    let input = match request.remove("input") {
        Some(Value::String(text)) => vec![json!({ "type": "message", "role": "user", "content": text })],
        Some(Value::Array(items)) => items,
        Some(_) => return Err(bad("input", "input: must be a string or a list of items")),
        None => return Err(bad("input", "input: is required")),
    };
    // The stored conversation was read when it was stored: indexes name the request's items.
    for item in &previous {
        push_item(&mut messages, 0, item)?;
    }
    for (index, item) in input.iter().enumerate() {
        push_item(&mut messages, index, item)?;
    }
    chat.insert("messages".into(), Value::Array(messages));
    let include = match request.remove("include") {
        None => Vec::new(),
        Some(Value::Array(include)) => include,
        Some(_) => return Err(bad("include", "include: must be a list")),
    };
    let top_logprobs = request.remove("top_logprobs");
    if include.contains(&json!(LOGPROBS)) || top_logprobs.as_ref().is_some_and(|n| n != &json!(0)) {
        chat.insert("logprobs".into(), json!(true));
        chat.extend(top_logprobs.map(|n| ("top_logprobs".to_owned(), n)));
    }
    // The effort reaches the template as the chat's `reasoning_effort`. A summary is not
    // written: the `reasoning` item carries the whole reasoning.
    match request.remove("reasoning") {
        None => {}
        Some(Value::Object(reasoning)) => {
            chat.extend(
                reasoning.get("effort").filter(|e| !e.is_null()).map(|e| ("reasoning_effort".into(), e.clone())),
            );
        }
        Some(_) => return Err(bad("reasoning", "reasoning: must be an object")),
    }
    if let Some(max) = request.remove("max_output_tokens") {
        chat.insert("max_completion_tokens".into(), max);
    }
    if let Some(stream) = request.remove("stream") {
        if stream == true {
            // The final event reports usage.
            chat.insert("stream_options".into(), json!({ "include_usage": true }));
        }
        chat.insert("stream".into(), stream);
    }
    if let Some(tools) = request.remove("tools") {
        chat.insert("tools".into(), chat_tools(tools)?);
    }
    if let Some(choice) = request.remove("tool_choice") {
        chat.insert("tool_choice".into(), chat_tool_choice(choice)?);
    }
    let format = request.get("text").and_then(|text| text.get("format"));
    if let Some(response_format) = format.map(response_format).transpose()?.flatten() {
        chat.insert("response_format".into(), response_format);
    }
    let context =
        keep.then(|| Context { input_from: previous.len(), items: previous.into_iter().chain(input).collect() });
    Ok((Value::Object(chat), Rewritten { echoed, context }))
}

/// One `input` item as chat messages: a message, a call the model made (joined to the
/// assistant turn before it), a call's output; earlier reasoning is dropped, as chat templates
/// drop it.
fn push_item(messages: &mut Vec<Value>, index: usize, item: &Value) -> Result<(), RouterError> {
    let text_field = |name: &str| item.get(name).and_then(Value::as_str).map(str::to_owned);
    let missing = |name: &str| bad("input", format!("input[{index}]: {name} is required"));
    match item.get("type").and_then(Value::as_str).unwrap_or("message") {
        "message" => {
            let role = match text_field("role").ok_or_else(|| missing("role"))?.as_str() {
                "developer" => "system".to_owned(),
                role => role.to_owned(),
            };
            let content = text_of(item.get("content"), index)?;
            messages.push(json!({ "role": role, "content": content }));
        }
        "function_call" => {
            let call = json!({
                "id": text_field("call_id").ok_or_else(|| missing("call_id"))?,
                "type": "function",
                "function": {
                    "name": text_field("name").ok_or_else(|| missing("name"))?,
                    "arguments": text_field("arguments").unwrap_or_else(|| "{}".into()),
                },
            });
            match messages.last_mut().filter(|last| last["role"] == "assistant") {
                Some(turn) => match turn.get_mut("tool_calls").and_then(Value::as_array_mut) {
                    Some(calls) => calls.push(call),
                    None => turn["tool_calls"] = json!([call]),
                },
                None => messages.push(json!({ "role": "assistant", "content": null, "tool_calls": [call] })),
            }
        }
        "function_call_output" => {
            let call_id = text_field("call_id").ok_or_else(|| missing("call_id"))?;
            let output = text_of(item.get("output"), index)?;
            messages.push(json!({ "role": "tool", "tool_call_id": call_id, "content": output }));
        }
        "reasoning" => {}
        other => return Err(bad("input", format!("input[{index}]: items of type {other:?} are not supported"))),
    }
    Ok(())
}

/// The text of a message's content: a string, or text parts joined.
fn text_of(content: Option<&Value>, index: usize) -> Result<String, RouterError> {
    match content {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                (Some("input_text" | "output_text" | "text"), Some(text)) => Ok(text),
                (kind, _) => Err(bad(
                    "input",
                    format!("input[{index}]: content parts of type {} are not supported", kind.unwrap_or("(none)")),
                )),
            })
            .collect(),
        _ => Err(bad("input", format!("input[{index}]: content must be a string or a list of text parts"))),
    }
}

/// Function tools in the chat shape; OpenAI's built-in tools are refused.
fn chat_tools(tools: Value) -> Result<Value, RouterError> {
    let Value::Array(tools) = tools else { return Err(bad("tools", "tools: must be a list")) };
    let tools = tools
        .into_iter()
        .enumerate()
        .map(|(i, mut tool)| match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let function: Map<String, Value> = ["name", "description", "parameters"]
                    .into_iter()
                    .filter_map(|key| Some((key.to_owned(), tool.get_mut(key)?.take())))
                    .collect();
                Ok(json!({ "type": "function", "function": function }))
            }
            other => Err(bad("tools", format!("tools[{i}]: only function tools are served, not {other:?}"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Value::Array(tools))
}

/// `"auto" | "none" | "required" | {"type": "function", "name"}` in the chat shape.
fn chat_tool_choice(choice: Value) -> Result<Value, RouterError> {
    match &choice {
        Value::String(_) => Ok(choice),
        Value::Object(fields) if fields.get("type") == Some(&json!("function")) => match fields.get("name") {
            Some(name) => Ok(json!({ "type": "function", "function": { "name": name } })),
            None => Err(bad("tool_choice", "tool_choice: a function choice needs its name")),
        },
        _ => Err(bad("tool_choice", "tool_choice: must be none, auto, required or a function")),
    }
}

/// `text.format` as a chat `response_format` (`None` for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, RouterError> {
    Ok(match format.get("type").and_then(Value::as_str) {
        Some("text") => None,
        Some("json_object") => Some(json!({ "type": "json_object" })),
        Some("json_schema") => {
            let schema: Map<String, Value> = ["name", "schema", "strict", "description"]
                .into_iter()
                .filter_map(|key| Some((key.to_owned(), format.get(key)?.clone())))
                .collect();
            Some(json!({ "type": "json_schema", "json_schema": schema }))
        }
        _ => return Err(bad("text.format", "text.format: type must be text, json_object or json_schema")),
    })
}

mod by_id;
mod output;
mod store;
#[cfg(test)]
mod tests;
