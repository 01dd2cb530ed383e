//! A streamed chat answer for the tests of the APIs that reshape chat chunks (Responses,
//! Messages).

use serde_json::{Value, json};

/// A chunk of choice 0 carrying `delta`.
pub(super) fn delta(delta: Value) -> Value {
    json!({"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": null}]})
}

/// Reasoning ("Think."), text ("Let me check."), then two calls — `get_weather` with
/// `{"city": "Oslo"}` in two pieces, `get_time` with `{}` — the finish (`tool_calls`) and the
/// usage (3 prompt, 9 completion tokens).
pub(super) fn reasoning_text_and_two_calls() -> Vec<Value> {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, arguments: &str| {
        let mut function = json!({"arguments": arguments});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        let mut call = json!({"index": index, "function": function});
        if let Some(id) = id {
            call["id"] = json!(id);
        }
        delta(json!({"tool_calls": [call]}))
    };
    vec![
        delta(json!({"role": "assistant", "content": ""})),
        delta(json!({"reasoning_content": "Th"})),
        delta(json!({"reasoning_content": "ink."})),
        delta(json!({"content": "Let me "})),
        delta(json!({"content": "check."})),
        call(0, Some("call_1"), Some("get_weather"), "{\"city\":"),
        call(0, None, None, " \"Oslo\"}"),
        call(1, Some("call_2"), Some("get_time"), "{}"),
        json!({"model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        json!({"model": "m", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9}}),
    ]
}
