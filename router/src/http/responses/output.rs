//! A chat answer reshaped for the Responses API: whole, a `response` object
//! ([`Shape::whole`]); streamed, the API's typed events ([`EventStream`]), numbered in order,
//! ending with the same `response` object.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::renamed;
use crate::http::generate::TypedEvent;

/// What every shape of the answer shares: its id, time and the request's echoed fields.
pub(super) struct Shape {
    id: String,
    created_at: u64,
    /// The served model's id.
    model: String,
    echoed: Map<String, Value>,
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

impl Shape {
    pub fn new(model: String, echoed: Map<String, Value>) -> Self {
        let created_at = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self { id: random_id("resp"), created_at, model, echoed }
    }

    /// The `response` object.
    fn object(&self, status: &str, output: Vec<Value>, usage: Option<&Value>) -> Value {
        let mut response = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "model": self.model,
            "output": output,
            "error": null,
            "incomplete_details": if status == "incomplete" { json!({ "reason": "max_output_tokens" }) } else { Value::Null },
            "store": false,
            "tools": [],
            "tool_choice": "auto",
            "parallel_tool_calls": true,
            "text": { "format": { "type": "text" } },
            "metadata": {},
        });
        for (key, value) in &self.echoed {
            response[key] = value.clone();
        }
        if let Some(usage) = usage.filter(|u| u.is_object()) {
            let input = usage["prompt_tokens"].as_u64().unwrap_or(0);
            let output = usage["completion_tokens"].as_u64().unwrap_or(0);
            let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
            let reasoning = usage["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0);
            response["usage"] = json!({
                "input_tokens": input,
                "input_tokens_details": { "cached_tokens": cached },
                "output_tokens": output,
                "output_tokens_details": { "reasoning_tokens": reasoning },
                "total_tokens": input + output,
            });
        }
        response
    }

    /// The whole answer: a chat completion as a `response` object.
    pub fn whole(&self, chat: &Value) -> Value {
        let choice = &chat["choices"][0];
        let message = &choice["message"];
        let mut output = Vec::new();
        if let Some(reasoning) = message["reasoning_content"].as_str() {
            output.push(reasoning_item(&random_id("rs"), reasoning, "completed"));
        }
        if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
            output.push(message_item(&random_id("msg"), text, &text_logprobs(chat), "completed"));
        }
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            let function = &call["function"];
            output.push(call_item(
                &random_id("fc"),
                &call["id"],
                &function["name"],
                &function["arguments"],
                "completed",
            ));
        }
        self.object(status(choice["finish_reason"].as_str()), output, Some(&chat["usage"]))
    }
}

/// The logprobs of a whole chat answer's text, when it was asked for them: those of the
/// tokens after a thinking model's reasoning block (usage counts the block's); none when the
/// answer also called tools, whose tokens are not told apart from the text's.
fn text_logprobs(chat: &Value) -> Vec<Value> {
    let choice = &chat["choices"][0];
    let Some(all) = choice["logprobs"]["content"].as_array() else { return Vec::new() };
    if choice["message"]["tool_calls"].as_array().is_some_and(|calls| !calls.is_empty()) {
        return Vec::new();
    }
    let reasoning = chat["usage"]["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0);
    all.iter().skip(usize::try_from(reasoning).unwrap_or(usize::MAX)).cloned().collect()
}

fn status(finish_reason: Option<&str>) -> &'static str {
    if finish_reason == Some("length") { "incomplete" } else { "completed" }
}

fn reasoning_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "reasoning", "id": id, "summary": [], "status": status,
        "content": [{ "type": "reasoning_text", "text": text }],
    })
}

fn output_text(text: &str, logprobs: &[Value]) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": logprobs })
}

fn message_item(id: &str, text: &str, logprobs: &[Value], status: &str) -> Value {
    let content = [output_text(text, logprobs)];
    json!({ "type": "message", "id": id, "status": status, "role": "assistant", "content": content })
}

fn call_item(id: &str, call_id: &Value, name: &Value, arguments: &Value, status: &str) -> Value {
    json!({ "type": "function_call", "id": id, "call_id": call_id, "name": name, "arguments": arguments, "status": status })
}

/// The output item being streamed.
enum Open {
    Reasoning {
        id: String,
        text: String,
    },
    Message {
        id: String,
        text: String,
        /// Its tokens' logprobs, when asked for.
        logprobs: Vec<Value>,
    },
    /// Call `index` of the chat answer.
    Call {
        id: String,
        index: u64,
        call_id: Value,
        name: Value,
        arguments: String,
    },
}

/// A streamed chat answer's chunks as Responses events.
pub(super) struct EventStream {
    shape: Shape,
    sequence: u64,
    /// Finished output items.
    output: Vec<Value>,
    open: Option<Open>,
    finish_reason: Option<String>,
    usage: Option<Value>,
    failed: bool,
    /// Logprobs of tokens whose text has not come yet (held back as a possible tool call, or
    /// closing a reasoning block).
    pending_logprobs: Vec<Value>,
    /// Whether reasoning came and no text since: the pending logprobs are the block's.
    after_reasoning: bool,
}

impl EventStream {
    pub fn new(shape: Shape) -> Self {
        Self {
            shape,
            sequence: 0,
            output: Vec::new(),
            open: None,
            finish_reason: None,
            usage: None,
            failed: false,
            pending_logprobs: Vec::new(),
            after_reasoning: false,
        }
    }

    fn event(&mut self, kind: &'static str, mut body: Value) -> TypedEvent {
        body["type"] = json!(kind);
        body["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        (kind, body)
    }

    /// `response.created` and `response.in_progress`.
    pub fn opening(&mut self) -> Vec<TypedEvent> {
        let response = self.shape.object("in_progress", Vec::new(), None);
        vec![
            self.event("response.created", json!({ "response": response })),
            self.event("response.in_progress", json!({ "response": response })),
        ]
    }

    /// The events of one chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<TypedEvent> {
        let mut events = Vec::new();
        if let Some(error) = chunk.get("error") {
            self.failed = true;
            let error = renamed(json!({ "error": error }))["error"].take();
            let body = json!({ "code": error["code"], "message": error["message"], "param": error["param"] });
            events.push(self.event("error", body));
            return events;
        }
        if chunk["usage"].is_object() {
            self.usage = Some(chunk["usage"].clone());
        }
        let Some(choice) = chunk["choices"].get(0) else { return events };
        let delta = &choice["delta"];
        let logprobs = choice["logprobs"]["content"].as_array().map_or(&[][..], Vec::as_slice);
        if let Some(text) = delta["reasoning_content"].as_str().filter(|t| !t.is_empty()) {
            self.text(&mut events, true, text, Vec::new());
            self.pending_logprobs.clear();
            self.after_reasoning = true;
        } else if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if std::mem::take(&mut self.after_reasoning) {
                self.pending_logprobs.clear();
            }
            self.pending_logprobs.extend_from_slice(logprobs);
            let logprobs = std::mem::take(&mut self.pending_logprobs);
            self.text(&mut events, false, text, logprobs);
        } else {
            self.pending_logprobs.extend_from_slice(logprobs);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            self.call(&mut events, call);
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
        }
        events
    }

    /// Reasoning or message text: opens its item unless it is the one open, then its delta;
    /// message text carries its tokens' `logprobs`.
    fn text(&mut self, events: &mut Vec<TypedEvent>, reasoning: bool, text: &str, logprobs: Vec<Value>) {
        let same = matches!(
            (&self.open, reasoning),
            (Some(Open::Reasoning { .. }), true) | (Some(Open::Message { .. }), false)
        );
        if !same {
            self.close(events);
            let output_index = self.output.len();
            if reasoning {
                let id = random_id("rs");
                let item = json!({ "type": "reasoning", "id": id, "summary": [], "status": "in_progress" });
                events.push(
                    self.event("response.output_item.added", json!({ "output_index": output_index, "item": item })),
                );
                self.open = Some(Open::Reasoning { id, text: String::new() });
            } else {
                let id = random_id("msg");
                let item =
                    json!({ "type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": [] });
                events.push(
                    self.event("response.output_item.added", json!({ "output_index": output_index, "item": item })),
                );
                let part = json!({
                    "item_id": id, "output_index": output_index, "content_index": 0, "part": output_text("", &[]),
                });
                events.push(self.event("response.content_part.added", part));
                self.open = Some(Open::Message { id, text: String::new(), logprobs: Vec::new() });
            }
        }
        let output_index = self.output.len();
        let (kind, id) = match &mut self.open {
            Some(Open::Reasoning { id, text: all }) => {
                all.push_str(text);
                ("response.reasoning_text.delta", id.clone())
            }
            Some(Open::Message { id, text: all, logprobs: all_logprobs }) => {
                all.push_str(text);
                all_logprobs.extend_from_slice(&logprobs);
                ("response.output_text.delta", id.clone())
            }
            _ => return,
        };
        let mut body = json!({ "item_id": id, "output_index": output_index, "content_index": 0, "delta": text });
        if !reasoning {
            body["logprobs"] = json!(logprobs);
        }
        events.push(self.event(kind, body));
    }

    /// A tool-call delta: a new call opens its item, arguments stream as deltas.
    fn call(&mut self, events: &mut Vec<TypedEvent>, call: &Value) {
        let index = call["index"].as_u64().unwrap_or(0);
        if !matches!(&self.open, Some(Open::Call { index: open, .. }) if *open == index) {
            self.close(events);
            let id = random_id("fc");
            let (call_id, name) = (call["id"].clone(), call["function"]["name"].clone());
            let item = call_item(&id, &call_id, &name, &json!(""), "in_progress");
            let added = json!({ "output_index": self.output.len(), "item": item });
            events.push(self.event("response.output_item.added", added));
            self.open = Some(Open::Call { id, index, call_id, name, arguments: String::new() });
        }
        let Some(delta) = call["function"]["arguments"].as_str().filter(|d| !d.is_empty()) else { return };
        let output_index = self.output.len();
        if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
            arguments.push_str(delta);
            let body = json!({ "item_id": id.clone(), "output_index": output_index, "delta": delta });
            events.push(self.event("response.function_call_arguments.delta", body));
        }
    }

    /// Closes the open item: its `done` events, and it joins the output.
    fn close(&mut self, events: &mut Vec<TypedEvent>) {
        let output_index = self.output.len();
        let item = match self.open.take() {
            None => return,
            Some(Open::Reasoning { id, text }) => {
                let done = json!({ "item_id": id, "output_index": output_index, "content_index": 0, "text": text });
                events.push(self.event("response.reasoning_text.done", done));
                reasoning_item(&id, &text, "completed")
            }
            Some(Open::Message { id, text, logprobs }) => {
                let done = json!({
                    "item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": logprobs,
                });
                events.push(self.event("response.output_text.done", done));
                let part = json!({
                    "item_id": id, "output_index": output_index, "content_index": 0, "part": output_text(&text, &logprobs),
                });
                events.push(self.event("response.content_part.done", part));
                message_item(&id, &text, &logprobs, "completed")
            }
            Some(Open::Call { id, call_id, name, arguments, .. }) => {
                let done = json!({ "item_id": id, "output_index": output_index, "name": name, "arguments": arguments });
                events.push(self.event("response.function_call_arguments.done", done));
                call_item(&id, &call_id, &name, &json!(arguments), "completed")
            }
        };
        events.push(self.event("response.output_item.done", json!({ "output_index": output_index, "item": item })));
        self.output.push(item);
    }

    /// The closing events once the chunks have ended: the last item's, then
    /// `response.completed` (`response.incomplete` when cut by `max_output_tokens`). Nothing
    /// after an error.
    pub fn finish(&mut self) -> Vec<TypedEvent> {
        if self.failed {
            return Vec::new();
        }
        let mut events = Vec::new();
        self.close(&mut events);
        let status = status(self.finish_reason.as_deref());
        let response = self.shape.object(status, std::mem::take(&mut self.output), self.usage.as_ref());
        let kind = if status == "incomplete" { "response.incomplete" } else { "response.completed" };
        events.push(self.event(kind, json!({ "response": response })));
        events
    }
}
