//! The Messages API's translation: request bodies into chat bodies, chat answers and chunks
//! into messages and events.

use serde_json::{Value, json};

use super::output::{EventStream, whole};
use super::{anthropic_error, chat_body};
use crate::error::RouterError;
use crate::http::chat_chunks::reasoning_text_and_two_calls;

fn refused(body: Value) -> Option<String> {
    match chat_body(body.to_string().as_bytes()) {
        Err(RouterError::BadBody { param, .. }) => param,
        other => panic!("{body} was not refused: {other:?}"),
    }
}

#[test]
fn a_messages_body_becomes_the_chat_body_it_means() {
    let body = json!({
        "model": "m", "max_tokens": 9, "temperature": 0, "top_k": 5, "stream": true, "metadata": {"user_id": "u"},
        "system": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}],
        "stop_sequences": ["\n\n"],
        "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "Call it.", "signature": "s"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "-3 C"}]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
    });
    let chat = chat_body(body.to_string().as_bytes()).expect("translates");
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "-3 C"},
            {"role": "user", "content": "And tomorrow?"},
        ])
    );
    assert_eq!((&chat["max_tokens"], &chat["top_k"], &chat["stop"]), (&json!(9), &json!(5), &json!(["\n\n"])));
    assert_eq!((&chat["stream"], &chat["stream_options"]), (&json!(true), &json!({"include_usage": true})));
    assert_eq!(
        chat["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}])
    );
    assert_eq!((&chat["tool_choice"], &chat["parallel_tool_calls"]), (&json!("required"), &json!(false)));
    assert!(chat.get("metadata").is_none() && chat.get("system").is_none());
    let named = json!({"max_tokens": 1, "messages": [], "tool_choice": {"type": "tool", "name": "f"}});
    let named = chat_body(named.to_string().as_bytes()).expect("translates");
    assert_eq!(named["tool_choice"], json!({"type": "function", "function": {"name": "f"}}));
}

#[test]
fn thinking_settings_become_the_budget_or_the_templates_switch() {
    let with = |thinking: Value| {
        let body = json!({"max_tokens": 9, "messages": [], "thinking": thinking});
        chat_body(body.to_string().as_bytes()).expect("translates")
    };
    let enabled = with(json!({"type": "enabled", "budget_tokens": 2048}));
    assert_eq!((&enabled["thinking_token_budget"], enabled.get("chat_template_kwargs")), (&json!(2048), None));
    let disabled = with(json!({"type": "disabled"}));
    assert_eq!(
        (disabled.get("thinking_token_budget"), &disabled["chat_template_kwargs"]),
        (None, &json!({"enable_thinking": false}))
    );
    let adaptive = with(json!({"type": "adaptive"}));
    assert!(adaptive.get("thinking_token_budget").is_none() && adaptive.get("chat_template_kwargs").is_none());
    // The client's own settings win.
    let body = json!({
        "max_tokens": 9, "messages": [], "thinking": {"type": "disabled"},
        "chat_template_kwargs": {"enable_thinking": true, "x": 1},
    });
    let own = chat_body(body.to_string().as_bytes()).expect("translates");
    assert_eq!(own["chat_template_kwargs"], json!({"enable_thinking": true, "x": 1}));
}

#[test]
fn what_the_server_cannot_honour_is_refused_by_its_field() {
    let user = |content: Value| json!({"max_tokens": 1, "messages": [{"role": "user", "content": content}]});
    let image = json!([{"type": "image", "source": {"type": "base64", "data": "x"}}]);
    let cases = [
        (json!({"messages": []}), "max_tokens"),
        (json!({"max_tokens": 1}), "messages"),
        (json!({"max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}), "messages[0]"),
        (user(image), "messages[0].content[0]"),
        (user(json!([{"type": "tool_use", "id": "t", "name": "f"}])), "messages[0].content[0]"),
        (user(json!(3)), "messages[0]"),
        (
            json!({"max_tokens": 1, "messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
            "tools[0]",
        ),
        (json!({"max_tokens": 1, "messages": [], "tool_choice": {"type": "tool"}}), "tool_choice"),
        (json!({"max_tokens": 1, "messages": [], "system": 3}), "system"),
        (json!({"max_tokens": 1, "messages": [], "thinking": {"type": "on"}}), "thinking.type"),
        (json!({"max_tokens": 1, "messages": [], "thinking": {"type": "enabled"}}), "thinking.budget_tokens"),
    ];
    for (body, field) in cases {
        assert_eq!(refused(body.clone()).as_deref(), Some(field), "{body}");
    }
}

#[test]
fn a_whole_chat_answer_becomes_a_message() {
    let chat = json!({
        "choices": [{"finish_reason": "tool_calls", "message": {
            "content": "Checking.", "reasoning_content": "Think.",
            "tool_calls": [{"id": "call_1", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}],
        }}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 4}},
    });
    let message = whole("m", &chat);
    assert!(message["id"].as_str().is_some_and(|id| id.starts_with("msg_")));
    assert_eq!(
        (&message["type"], &message["role"], &message["model"]),
        (&json!("message"), &json!("assistant"), &json!("m"))
    );
    assert_eq!(
        message["content"],
        json!([
            {"type": "thinking", "thinking": "Think.", "signature": ""},
            {"type": "text", "text": "Checking."},
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        ])
    );
    assert_eq!(message["stop_reason"], "tool_use");
    assert_eq!(
        message["usage"],
        json!({"input_tokens": 3, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 0, "output_tokens": 5})
    );
    let cut = json!({"choices": [{"finish_reason": "length", "message": {"content": "Par"}}]});
    assert_eq!(whole("m", &cut)["stop_reason"], "max_tokens");
    let stopped = json!({"choices": [{"finish_reason": "stop", "stop_reason": "\n\n", "message": {"content": "Par"}}]});
    let stopped = whole("m", &stopped);
    assert_eq!((&stopped["stop_reason"], &stopped["stop_sequence"]), (&json!("stop_sequence"), &json!("\n\n")));
    let ended = json!({"choices": [{"finish_reason": "stop", "stop_reason": null, "message": {"content": "Par."}}]});
    let ended = whole("m", &ended);
    assert_eq!((&ended["stop_reason"], &ended["stop_sequence"]), (&json!("end_turn"), &Value::Null));
}

#[test]
fn a_matched_stop_string_ends_the_stream_as_a_stop_sequence() {
    let mut events = EventStream::new("m".into());
    let mut all = events.opening();
    all.extend(events.chunk(&json!({"choices": [{"index": 0, "delta": {"content": "Par"}, "finish_reason": null}]})));
    let finish = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]});
    all.extend(events.chunk(&finish));
    all.extend(events.finish());
    let (kind, closing) = &all[all.len() - 2];
    assert_eq!(*kind, "message_delta");
    assert_eq!(closing["delta"], json!({"stop_reason": "stop_sequence", "stop_sequence": "END"}));
}

#[test]
fn streamed_chunks_become_anthropics_events() {
    let chunks = reasoning_text_and_two_calls();
    let mut events = EventStream::new("m".into());
    let mut all = events.opening();
    for chunk in &chunks {
        all.extend(events.chunk(chunk));
    }
    all.extend(events.finish());
    let kinds: Vec<&str> = all.iter().map(|(kind, _)| *kind).collect();
    let block = ["content_block_start", "content_block_delta", "content_block_delta", "content_block_stop"];
    let expected: Vec<&str> = ["message_start"]
        .into_iter()
        .chain(block)
        .chain(block)
        .chain(block)
        .chain(["content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop"])
        .collect();
    assert_eq!(kinds, expected);
    assert!(all.iter().all(|(kind, body)| body["type"] == *kind), "each body names its type");
    let starts: Vec<(Value, Value)> = all
        .iter()
        .filter(|(kind, _)| *kind == "content_block_start")
        .map(|(_, body)| (body["index"].clone(), body["content_block"]["type"].clone()))
        .collect();
    assert_eq!(
        starts,
        [
            (json!(0), json!("thinking")),
            (json!(1), json!("text")),
            (json!(2), json!("tool_use")),
            (json!(3), json!("tool_use"))
        ]
    );
    let json_deltas: String = all
        .iter()
        .filter(|(_, body)| body["index"] == 2)
        .filter_map(|(_, body)| body["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json_deltas, "{\"city\": \"Oslo\"}");
    let closing = &all[all.len() - 2].1;
    assert_eq!(closing["delta"]["stop_reason"], "tool_use");
    assert_eq!((&closing["usage"]["input_tokens"], &closing["usage"]["output_tokens"]), (&json!(3), &json!(9)));

    // An error ends the events.
    let mut failing = EventStream::new("m".into());
    let error = json!({"error": {"message": "max_tokens: too many", "type": "invalid_request_error", "code": "invalid_argument"}});
    let events = failing.chunk(&error);
    assert_eq!(
        events[0].1,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: too many"}})
    );
    assert!(failing.finish().is_empty());
    assert_eq!(
        anthropic_error(&json!({"error": {"type": "authentication_error"}}))["error"]["type"],
        "authentication_error"
    );
}
