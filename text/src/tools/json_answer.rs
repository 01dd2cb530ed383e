//! Whole answers of calls in the JSON formats of Llama 3.1–3.3 and Mistral's v3 templates:
//! `{"name": ..., "parameters" | "arguments": {...}}` objects (Llama 3: several separated by
//! `;`) or arrays of them (Mistral), after the model's call tag (`<|python_tag|>`,
//! `[TOOL_CALLS]`, special tokens usually left out of the text) or not. What the streaming
//! reader (`super::json_calls`) cannot stream, it holds and parses here.

use serde_json::Value;

use super::{GeneratedCall, Tool, generated_call};

/// Llama 3.1–3.3's call tag.
pub(super) const LLAMA3_TAG: &str = "<|python_tag|>";
/// Mistral's v3 call tag.
pub(super) const MISTRAL_TAG: &str = "[TOOL_CALLS]";

/// The calls of `text`, after `tag` or not; `None` unless every JSON value in it is a call of
/// one of `tools` or an array of such calls.
pub(super) fn parse_calls(text: &str, tag: &str, tools: &[Tool]) -> Option<Vec<GeneratedCall>> {
    let text = text.trim_start();
    let mut rest = text.strip_prefix(tag).unwrap_or(text).trim_start();
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let mut values = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        match values.next()?.ok()? {
            Value::Array(items) => {
                for item in items {
                    calls.push(generated_call(item, Some(tools))?);
                }
            }
            call => calls.push(generated_call(call, Some(tools))?),
        }
        rest = rest[values.byte_offset()..].trim_start();
        rest = rest.strip_prefix(';').unwrap_or(rest).trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}
