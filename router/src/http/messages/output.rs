//! A chat answer reshaped for the Messages API: whole, a `message` ([`whole`]); streamed,
//! Anthropic's events ([`EventStream`]): `message_start`, then per content block
//! `content_block_start`, its deltas and `content_block_stop`, then `message_delta` with the
//! stop reason and usage, and `message_stop`.

use serde_json::{Value, json};

use super::anthropic_error;
use crate::http::generate::TypedEvent;

fn message_id() -> String {
    format!("msg_{:032x}", rand::random::<u128>())
}

/// Anthropic's stop reason and stop sequence for a chat choice's finish (its `finish_reason`,
/// and vLLM's `stop_reason` naming the stop string that matched).
fn stop(choice: &Value) -> (&'static str, Value) {
    match (choice["finish_reason"].as_str(), choice["stop_reason"].as_str()) {
        (Some("length"), _) => ("max_tokens", Value::Null),
        (Some("tool_calls"), _) => ("tool_use", Value::Null),
        (_, Some(sequence)) => ("stop_sequence", json!(sequence)),
        _ => ("end_turn", Value::Null),
    }
}

/// Anthropic's usage from the chat's: input tokens exclude those read from the cache.
fn usage(chat: &Value) -> Value {
    let prompt = chat["prompt_tokens"].as_u64().unwrap_or(0);
    let cached = chat["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0).min(prompt);
    json!({
        "input_tokens": prompt - cached,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
        "output_tokens": chat["completion_tokens"].as_u64().unwrap_or(0),
    })
}

/// A call's arguments (JSON text) as the `input` object of a `tool_use` block.
fn input(arguments: &Value) -> Value {
    arguments.as_str().and_then(|text| serde_json::from_str(text).ok()).unwrap_or_else(|| json!({}))
}

/// The whole answer: a chat completion as a `message`.
pub(super) fn whole(model: &str, chat: &Value) -> Value {
    let choice = &chat["choices"][0];
    let message = &choice["message"];
    let mut content = Vec::new();
    if let Some(thinking) = message["reasoning_content"].as_str() {
        content.push(json!({ "type": "thinking", "thinking": thinking, "signature": "" }));
    }
    if let Some(text) = message["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({ "type": "text", "text": text }));
    }
    for call in message["tool_calls"].as_array().into_iter().flatten() {
        let function = &call["function"];
        content.push(
            json!({ "type": "tool_use", "id": call["id"], "name": function["name"], "input": input(&function["arguments"]) }),
        );
    }
    let (stop_reason, stop_sequence) = stop(choice);
    json!({
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": usage(&chat["usage"]),
    })
}

/// The content block being streamed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    Thinking,
    Text,
    /// Call `index` of the chat answer.
    ToolUse(u64),
}

/// A streamed chat answer's chunks as Anthropic's events.
pub(super) struct EventStream {
    model: String,
    /// Blocks opened so far; the last one is open unless `open` is false.
    blocks: usize,
    open: Option<Block>,
    /// The stop reason and sequence, once the finish arrived.
    stop: Option<(&'static str, Value)>,
    usage: Option<Value>,
    failed: bool,
}

impl EventStream {
    pub fn new(model: String) -> Self {
        Self { model, blocks: 0, open: None, stop: None, usage: None, failed: false }
    }

    fn event(kind: &'static str, mut body: Value) -> TypedEvent {
        body["type"] = json!(kind);
        (kind, body)
    }

    /// `message_start`, with an empty message.
    pub fn opening(&mut self) -> Vec<TypedEvent> {
        let message = json!({
            "id": message_id(), "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": null, "stop_sequence": null, "usage": usage(&Value::Null),
        });
        vec![Self::event("message_start", json!({ "message": message }))]
    }

    /// The events of one chat chunk.
    pub fn chunk(&mut self, chunk: &Value) -> Vec<TypedEvent> {
        let mut events = Vec::new();
        if chunk.get("error").is_some() {
            self.failed = true;
            let error = anthropic_error(chunk);
            events.push(Self::event("error", json!({ "error": error["error"] })));
            return events;
        }
        if chunk["usage"].is_object() {
            self.usage = Some(chunk["usage"].clone());
        }
        let Some(choice) = chunk["choices"].get(0) else { return events };
        let delta = &choice["delta"];
        if let Some(thinking) = delta["reasoning_content"].as_str().filter(|t| !t.is_empty()) {
            self.open_block(
                &mut events,
                Block::Thinking,
                json!({ "type": "thinking", "thinking": "", "signature": "" }),
            );
            events.push(self.delta(json!({ "type": "thinking_delta", "thinking": thinking })));
        }
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.open_block(&mut events, Block::Text, json!({ "type": "text", "text": "" }));
            events.push(self.delta(json!({ "type": "text_delta", "text": text })));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let block = Block::ToolUse(call["index"].as_u64().unwrap_or(0));
            let start = json!({ "type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {} });
            self.open_block(&mut events, block, start);
            if let Some(partial) = call["function"]["arguments"].as_str().filter(|a| !a.is_empty()) {
                events.push(self.delta(json!({ "type": "input_json_delta", "partial_json": partial })));
            }
        }
        if choice["finish_reason"].is_string() {
            self.stop = Some(stop(choice));
        }
        events
    }

    /// Opens `block` (closing the open one) unless it is the one open.
    fn open_block(&mut self, events: &mut Vec<TypedEvent>, block: Block, start: Value) {
        if self.open == Some(block) {
            return;
        }
        self.close(events);
        let index = self.blocks;
        events.push(Self::event("content_block_start", json!({ "index": index, "content_block": start })));
        self.blocks += 1;
        self.open = Some(block);
    }

    fn delta(&self, delta: Value) -> TypedEvent {
        Self::event("content_block_delta", json!({ "index": self.blocks - 1, "delta": delta }))
    }

    fn close(&mut self, events: &mut Vec<TypedEvent>) {
        if self.open.take().is_some() {
            events.push(Self::event("content_block_stop", json!({ "index": self.blocks - 1 })));
        }
    }

    /// The closing events once the chunks have ended: the open block's stop, `message_delta`
    /// and `message_stop`. Nothing after an error.
    pub fn finish(&mut self) -> Vec<TypedEvent> {
        if self.failed {
            return Vec::new();
        }
        let mut events = Vec::new();
        self.close(&mut events);
        let (stop_reason, stop_sequence) = self.stop.take().unwrap_or(("end_turn", Value::Null));
        let delta = json!({ "stop_reason": stop_reason, "stop_sequence": stop_sequence });
        let usage = usage(self.usage.as_ref().unwrap_or(&Value::Null));
        events.push(Self::event("message_delta", json!({ "delta": delta, "usage": usage })));
        events.push(Self::event("message_stop", json!({})));
        events
    }
}
