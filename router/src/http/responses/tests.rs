//! The Responses API's translation: request bodies into chat bodies, chat answers and chunks
//! into response objects and events.

use std::time::Duration;

use futures_util::FutureExt;
use serde_json::{Value, json};

use super::{Context, EventStream, ResponseStore, Rewritten, Shape, chat_body, renamed};
use crate::auth::Tenant;
use crate::error::RouterError;
use crate::http::chat_chunks::{delta, reasoning_text_and_two_calls};

/// `body` translated by `tenant`'s router that stores responses in `store`, a memory store
/// (which answers at once).
const HOUR: Duration = Duration::from_secs(3600);

fn translate_as(tenant: &Tenant, body: &Value, store: &ResponseStore) -> Result<(Value, Rewritten), RouterError> {
    chat_body(body.to_string().as_bytes(), store, tenant).now_or_never().expect("a memory store answers at once")
}

fn translate_with(body: &Value, store: &ResponseStore) -> Result<(Value, Rewritten), RouterError> {
    translate_as(&Tenant::anonymous(), body, store)
}

fn translate(body: &Value) -> Result<(Value, Rewritten), RouterError> {
    translate_with(body, &ResponseStore::in_memory(1 << 20, HOUR))
}

fn chat(body: Value) -> Value {
    translate(&body).expect("translates").0
}

fn refused(body: Value) -> (Option<String>, String) {
    match translate(&body) {
        Err(RouterError::BadBody { param, message }) => (param, message),
        other => panic!("{body} was not refused: {other:?}"),
    }
}

#[test]
fn a_responses_body_becomes_the_chat_body_it_means() {
    let body = json!({
        "model": "m", "instructions": "Be brief.", "max_output_tokens": 9, "temperature": 0, "stream": true,
        "top_k": 5, "metadata": {"a": "b"}, "store": true, "previous_response_id": null,
        "reasoning": {"effort": "high", "summary": "auto"},
        "input": [
            {"role": "developer", "content": "Use tools."},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather "}, {"type": "input_text", "text": "in Oslo?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "-3 C"},
        ],
        "tools": [{"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}, "strict": true}],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}},
    });
    let (chat, Rewritten { echoed, context }) = translate(&body).expect("translates");
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Use tools."},
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
        ])
    );
    assert_eq!((&chat["max_completion_tokens"], &chat["top_k"], &chat["model"]), (&json!(9), &json!(5), &json!("m")));
    assert_eq!(chat["reasoning_effort"], "high", "the effort reaches the template as the chat's");
    assert_eq!((&chat["stream"], &chat["stream_options"]), (&json!(true), &json!({"include_usage": true})));
    assert_eq!(
        chat["tools"],
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}])
    );
    assert_eq!(chat["tool_choice"], json!({"type": "function", "function": {"name": "get_weather"}}));
    assert_eq!(
        chat["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": true}})
    );
    assert!(chat.get("metadata").is_none() && chat.get("store").is_none() && chat.get("input").is_none());
    assert_eq!(echoed["instructions"], "Be brief.");
    assert_eq!(echoed["max_output_tokens"], 9);
    assert_eq!(echoed["store"], true);
    assert_eq!(echoed["reasoning"], body["reasoning"]);
    let context = context.expect("stored");
    assert_eq!((Some(&context.items), context.input_from), (body["input"].as_array(), 0), "stored with its input");

    let plain = self::chat(json!({
        "input": "Hi", "text": {"format": {"type": "text"}}, "reasoning": {"effort": null}, "truncation": "disabled",
    }));
    assert_eq!(plain, json!({"messages": [{"role": "user", "content": "Hi"}]}));
}

#[test]
fn what_the_server_cannot_honour_is_refused_by_its_field() {
    let cases = [
        (json!({"input": "Hi", "previous_response_id": 1}), "previous_response_id"),
        (json!({"input": "Hi", "store": "yes"}), "store"),
        (json!({"input": "Hi", "conversation": "conv_1"}), "conversation"),
        (json!({"input": "Hi", "background": true}), "background"),
        (json!({"input": "Hi", "reasoning": "high"}), "reasoning"),
        (json!({"input": "Hi", "include": "message.output_text.logprobs"}), "include"),
        (json!({"input": "Hi", "truncation": "auto"}), "truncation"),
        (json!({"input": "Hi", "max_tool_calls": 1}), "max_tool_calls"),
        (json!({}), "input"),
        (json!({"input": 3}), "input"),
        (json!({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}), "input"),
        (json!({"input": [{"type": "file_search_call"}]}), "input"),
        (json!({"input": [{"type": "function_call", "name": "f"}]}), "input"),
        (json!({"input": "Hi", "tools": [{"type": "web_search"}]}), "tools"),
        (json!({"input": "Hi", "tool_choice": {"type": "web_search"}}), "tool_choice"),
        (json!({"input": "Hi", "text": {"format": {"type": "grammar"}}}), "text.format"),
        (json!({"input": "Hi", "instructions": 3}), "instructions"),
    ];
    for (body, field) in cases {
        assert_eq!(refused(body.clone()).0.as_deref(), Some(field), "{body}");
    }
    assert!(refused(json!({"input": [{"type": "function_call", "name": "f"}]})).1.contains("input[0]: call_id"));
}

#[test]
fn a_follow_up_continues_the_stored_conversation_it_names() {
    let store = ResponseStore::in_memory(1 << 20, HOUR);
    let (_, first) =
        translate_with(&json!({"input": "Weather in Oslo?", "instructions": "Be brief."}), &store).expect("translates");
    let asked = json!({"type": "message", "role": "user", "content": "Weather in Oslo?"});
    let first = first.context.expect("stored");
    assert_eq!(
        first,
        Context { items: vec![asked.clone()], input_from: 0 },
        "instructions are not in the conversation"
    );
    let answer = json!({"type": "message", "id": "msg_1", "status": "completed", "role": "assistant",
                        "content": [{"type": "output_text", "text": "Checking.", "annotations": []}]});
    let call =
        json!({"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "get_weather", "arguments": "{}"});
    let reasoning = json!({"type": "reasoning", "id": "rs_1", "summary": []});
    let response = json!({"id": "resp_1", "object": "response", "output": [reasoning, answer, call]});
    let kept = store.put(&Tenant::anonymous(), response, first).now_or_never();
    kept.expect("a memory store answers at once").expect("stored");

    let follow_up = json!({"previous_response_id": "resp_1", "input": [
        {"type": "function_call_output", "call_id": "c1", "output": "-3 C"},
    ]});
    let (chat, rewritten) = translate_with(&follow_up, &store).expect("translates");
    assert_eq!(
        chat["messages"],
        json!([
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
        ])
    );
    assert_eq!(rewritten.echoed["previous_response_id"], "resp_1");
    let context = rewritten.context.expect("stored");
    assert_eq!((context.items.len(), context.input_from), (5, 4), "the whole conversation, to continue in turn");

    let not_kept = translate_with(&json!({"input": "Hi", "store": false}), &store).expect("translates").1;
    assert_eq!((not_kept.context, &not_kept.echoed["store"]), (None, &json!(false)));

    match translate_with(&json!({"previous_response_id": "resp_2", "input": "Hi"}), &store) {
        Err(RouterError::UnknownResponse { id, param }) => {
            assert_eq!((id.as_str(), param), ("resp_2", Some("previous_response_id")))
        }
        other => panic!("an unknown response was not refused: {other:?}"),
    }
    let elsewhere = translate_as(&Tenant::named("other"), &follow_up, &store);
    assert!(matches!(elsewhere, Err(RouterError::UnknownResponse { .. })), "another tenant's response");
    match translate_with(&follow_up, &ResponseStore::in_memory(0, HOUR)) {
        Err(RouterError::BadBody { param, .. }) => assert_eq!(param.as_deref(), Some("previous_response_id")),
        other => panic!("a router that stores nothing took previous_response_id: {other:?}"),
    }
    let unstored = translate_with(&json!({"input": "Hi"}), &ResponseStore::in_memory(0, HOUR)).expect("translates").1;
    assert_eq!((unstored.context, &unstored.echoed["store"]), (None, &json!(false)));
}

#[test]
fn errors_name_the_responses_field() {
    let error = |param: &str| json!({"error": {"param": param, "message": format!("{param}: must be at least 1")}});
    assert_eq!(
        renamed(error("max_completion_tokens")),
        json!({"error": {"param": "max_output_tokens", "message": "max_output_tokens: must be at least 1"}})
    );
    assert_eq!(renamed(error("messages"))["error"]["param"], "input");
    assert_eq!(renamed(error("response_format"))["error"]["param"], "text.format");
    assert_eq!(renamed(error("reasoning_effort"))["error"]["param"], "reasoning.effort");
    assert_eq!(renamed(error("temperature")), error("temperature"));
}

fn shape() -> Shape {
    let echoed = [("instructions".to_owned(), json!("Be brief."))].into_iter().collect();
    Shape::new("m".into(), echoed)
}

#[test]
fn a_whole_chat_answer_becomes_a_response_object() {
    let answer = json!({
        "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "Checking.", "reasoning_content": "Think.",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}],
        }}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 4},
                  "completion_tokens_details": {"reasoning_tokens": 3}},
    });
    let response = shape().whole(&answer);
    assert_eq!(
        (&response["object"], &response["status"], &response["model"]),
        (&json!("response"), &json!("completed"), &json!("m"))
    );
    assert!(response["id"].as_str().is_some_and(|id| id.starts_with("resp_")));
    assert_eq!(response["instructions"], "Be brief.");
    let output = response["output"].as_array().expect("output");
    let kinds: Vec<&str> = output.iter().filter_map(|item| item["type"].as_str()).collect();
    assert_eq!(kinds, ["reasoning", "message", "function_call"]);
    assert_eq!(output[0]["content"][0]["text"], "Think.");
    assert_eq!(
        output[1]["content"][0],
        json!({"type": "output_text", "text": "Checking.", "annotations": [], "logprobs": []})
    );
    assert_eq!(
        (&output[2]["call_id"], &output[2]["name"], &output[2]["arguments"]),
        (&json!("call_1"), &json!("get_weather"), &json!("{}"))
    );
    assert_eq!(
        response["usage"],
        json!({"input_tokens": 7, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 5,
               "output_tokens_details": {"reasoning_tokens": 3}, "total_tokens": 12})
    );

    let cut =
        json!({"model": "m", "choices": [{"finish_reason": "length", "message": {"content": "Par"}}], "usage": null});
    let response = shape().whole(&cut);
    assert_eq!(
        (&response["status"], &response["incomplete_details"]),
        (&json!("incomplete"), &json!({"reason": "max_output_tokens"}))
    );
}

/// Event types, and the final response, of `chunks` streamed.
fn stream(chunks: &[Value]) -> (Vec<&'static str>, Value, Vec<Value>) {
    let mut events = EventStream::new(shape());
    let mut all = events.opening();
    for chunk in chunks {
        all.extend(events.chunk(chunk));
    }
    all.extend(events.finish());
    let sequence: Vec<u64> = all.iter().filter_map(|(_, body)| body["sequence_number"].as_u64()).collect();
    assert_eq!(sequence, (0..all.len() as u64).collect::<Vec<_>>(), "numbered in order");
    let last = all.last().map(|(_, body)| body["response"].clone()).unwrap_or_default();
    let kinds = all.iter().map(|(kind, _)| *kind).collect();
    (kinds, last, all.into_iter().map(|(_, body)| body).collect())
}

#[test]
fn streamed_chunks_become_the_apis_events_and_the_same_response() {
    let chunks = reasoning_text_and_two_calls();
    let (kinds, response, bodies) = stream(&chunks);
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta",
            "response.reasoning_text.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    assert_eq!(bodies[0]["response"]["status"], "in_progress");
    assert_eq!(bodies[11]["text"], "Let me check.");
    assert_eq!((&bodies[17]["arguments"], &bodies[17]["output_index"]), (&json!("{\"city\": \"Oslo\"}"), &json!(2)));
    let whole = shape().whole(&json!({
        "model": "m",
        "choices": [{"finish_reason": "tool_calls", "message": {
            "content": "Let me check.", "reasoning_content": "Think.",
            "tool_calls": [
                {"id": "call_1", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}},
                {"id": "call_2", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        }}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9},
    }));
    let without_ids = |response: &Value| {
        let mut response = response.clone();
        for item in response["output"].as_array_mut().into_iter().flatten() {
            item["id"] = Value::Null;
        }
        (response["output"].clone(), response["usage"].clone(), response["status"].clone())
    };
    assert_eq!(without_ids(&response), without_ids(&whole), "streamed or whole, the same response");

    // Cut by max_output_tokens; an error ends the events.
    let (kinds, response, _) =
        stream(&[delta(json!({"content": "Par"})), json!({"choices": [{"delta": {}, "finish_reason": "length"}]})]);
    assert_eq!(kinds.last(), Some(&"response.incomplete"));
    assert_eq!(response["incomplete_details"]["reason"], "max_output_tokens");
    let failure = json!({"error": {"param": "max_completion_tokens", "message": "max_completion_tokens: too many", "code": "invalid_argument"}});
    let (kinds, _, bodies) = stream(&[failure]);
    assert_eq!(kinds, ["response.created", "response.in_progress", "error"]);
    assert_eq!(
        (&bodies[2]["param"], &bodies[2]["message"]),
        (&json!("max_output_tokens"), &json!("max_output_tokens: too many"))
    );
}

#[test]
fn the_texts_logprobs_come_back_when_asked_for() {
    let include = json!({"input": "Hi", "include": ["message.output_text.logprobs", "reasoning.encrypted_content"]});
    let with_top = json!({"input": "Hi", "top_logprobs": 3});
    let (include, with_top) = (chat(include), chat(with_top));
    assert_eq!((&include["logprobs"], &include["top_logprobs"]), (&json!(true), &Value::Null));
    assert_eq!((&with_top["logprobs"], &with_top["top_logprobs"]), (&json!(true), &json!(3)));
    assert!(chat(json!({"input": "Hi", "top_logprobs": 0})).get("logprobs").is_none());

    // Whole: the tokens after the reasoning block's three are the text's.
    let entry = |token: &str| json!({"token": token, "logprob": -0.5, "bytes": token.as_bytes(), "top_logprobs": []});
    let tokens: Vec<Value> = ["<think>", "Hm", "</think>", "Par", "is"].map(entry).into();
    let answer = json!({
        "model": "m",
        "choices": [{"finish_reason": "stop", "logprobs": {"content": tokens},
                     "message": {"content": "Paris", "reasoning_content": "Hm"}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 3}},
    });
    let response = shape().whole(&answer);
    assert_eq!(response["output"][1]["content"][0]["logprobs"], json!(tokens[3..]));

    // Streamed: each text delta carries its tokens', the block's and held-back ones sorted out.
    let chunk = |delta: Value, token: &Value| json!({"choices": [{"index": 0, "delta": delta, "logprobs": {"content": [token]}, "finish_reason": null}]});
    let chunks = [
        chunk(json!({}), &tokens[0]),
        chunk(json!({"reasoning_content": "Hm"}), &tokens[1]),
        chunk(json!({}), &tokens[2]),
        chunk(json!({"content": "Par"}), &tokens[3]),
        chunk(json!({}), &tokens[4]),
        json!({"choices": [{"index": 0, "delta": {"content": "is"}, "finish_reason": "stop"}]}),
    ];
    let (_, response, bodies) = stream(&chunks);
    let deltas: Vec<&Value> =
        bodies.iter().filter(|b| b["type"] == "response.output_text.delta").map(|b| &b["logprobs"]).collect();
    assert_eq!(deltas, [&json!([tokens[3]]), &json!([tokens[4]])]);
    assert_eq!(response["output"][1]["content"][0]["logprobs"], json!(tokens[3..]));
}
