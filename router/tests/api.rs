//! The router's two fronts against instant workers: OpenAI HTTP (JSON and SSE), gRPC
//! Generation, health, reflection, metrics, auth, and every kind of bad input.

mod support;

use std::time::Duration;

use lcserve_proto::v1::generate_response::Event;
use lcserve_proto::v1::{self, generate_request::Input};
use lcserve_router::RouterConfig;
use serde_json::{Value, json};
use support::model::{BLOCK_SIZE, CONTEXT, MODEL_ID, words};
use support::*;

#[tokio::test]
async fn completion_json_and_sse() {
    let (decode, router) = one_decode().await;
    // "w10 w11 w12" → [<s>, 10, 11, 12]; the instant worker echoes the prompt cyclically.
    let body = json!({ "model": MODEL_ID, "prompt": "w10 w11 w12", "max_tokens": 6 }).to_string();
    let response = post(router.http, "/v1/completions", &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let value = response.json();
    assert_eq!(value["object"], "text_completion");
    assert_eq!(value["model"], MODEL_ID);
    assert_eq!(value["choices"][0]["text"], " w1 w10 w11 w12 w1 w10");
    assert_eq!(value["choices"][0]["finish_reason"], "length");
    assert_eq!(value["choices"][0]["stop_reason"], Value::Null);
    assert_eq!(value["usage"]["prompt_tokens"], 4);
    assert_eq!(value["usage"]["completion_tokens"], 6);
    assert_eq!(value["usage"]["total_tokens"], 10);
    assert_eq!(value["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    assert!(value["usage"]["lcserve"]["cached_tokens_by_tier"].is_object());
    let sent = decode.generates();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].request.as_ref().map(|r| r.prompt.clone()), Some(vec![1, 10, 11, 12]));
    assert!(sent[0].session.is_none() && sent[0].generated.is_empty(), "short prompts go straight to decode");

    let body =
        json!({ "prompt": [20, 21], "max_tokens": 3, "stream": true, "stream_options": { "include_usage": true } });
    let response = post(router.http, "/v1/completions", &body.to_string()).await;
    assert_eq!(response.status, 200);
    assert!(response.content_type.starts_with("text/event-stream"), "{}", response.content_type);
    let data = response.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, " w20 w21 w20");
    let finish = chunks.iter().find(|c| !c["choices"][0]["finish_reason"].is_null()).expect("finish chunk");
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

/// vLLM's `stop_reason` names the request's stop token that ended a choice, whole and streamed.
#[tokio::test]
async fn stop_reason_names_the_stop_token() {
    let (_decode, router) = one_decode().await;
    for stream in [false, true] {
        let body = json!({ "prompt": "w10 w11 w12", "max_tokens": 6, "stop_token_ids": [11], "stream": stream });
        let response = post(router.http, "/v1/completions", &body.to_string()).await;
        assert_eq!(response.status, 200, "{}", response.body);
        let choice = match stream {
            false => response.json()["choices"][0].clone(),
            true => {
                let data = response.sse_data();
                let chunks = data[..data.len() - 1].iter().map(|d| serde_json::from_str::<Value>(d).expect("chunk"));
                chunks.map(|c| c["choices"][0].clone()).find(|c| !c["finish_reason"].is_null()).expect("finish chunk")
            }
        };
        assert_eq!((&choice["finish_reason"], &choice["stop_reason"]), (&json!("stop"), &json!(11)), "{choice}");
    }
    let body = json!({ "messages": [{ "role": "user", "content": "w10" }], "max_tokens": 9, "stop_token_ids": [10] });
    let response = post(router.http, "/v1/chat/completions", &body.to_string()).await;
    let choice = &response.json()["choices"][0];
    assert_eq!((&choice["finish_reason"], &choice["stop_reason"]), (&json!("stop"), &json!(10)), "{choice}");
}

#[tokio::test]
async fn chat_json_and_sse_with_logprobs() {
    let (decode, router) = one_decode().await;
    let messages = json!([{ "role": "system", "content": "w30" }, { "role": "user", "content": [{ "type": "text", "text": "w31" }] }]);
    let body = json!({ "messages": messages, "max_tokens": 4, "logprobs": true, "top_logprobs": 1 });
    let response = post(router.http, "/v1/chat/completions", &body.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let value = response.json();
    assert_eq!(value["object"], "chat.completion");
    // Template: "w3 w30 w6 w4 w31 w6 w5", tokenized without BOS.
    let prompt = decode.generates()[0].request.clone().expect("request").prompt;
    assert_eq!(prompt, vec![3, 30, 6, 4, 31, 6, 5]);
    assert_eq!(value["choices"][0]["message"]["role"], "assistant");
    assert_eq!(value["choices"][0]["message"]["content"], " w3 w30 w6 w4");
    let logprobs = &value["choices"][0]["logprobs"]["content"];
    assert_eq!(logprobs.as_array().map(Vec::len), Some(4));
    assert_eq!(logprobs[0]["token"], "w3");
    assert_eq!(logprobs[0]["top_logprobs"][0]["logprob"], -0.5);

    let body = json!({ "messages": [{ "role": "user", "content": "w40" }], "max_tokens": 2, "stream": true });
    let response = post(router.http, "/v1/chat/completions", &body.to_string()).await;
    let data = response.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, " w4 w40");
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage chunk unless asked");
}

#[tokio::test]
async fn n_choices_each_generate_with_their_own_seed() {
    let (decode, router) = one_decode().await;
    let body = json!({ "prompt": "w10 w11 w12", "max_tokens": 4, "n": 3, "temperature": 0.5, "seed": 7 });
    let response = post(router.http, "/v1/completions", &body.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let value = response.json();
    let choices = value["choices"].as_array().expect("choices");
    assert_eq!(choices.len(), 3);
    for (index, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], index);
        assert_eq!(choice["text"], " w1 w10 w11 w12", "the instant worker echoes the prompt");
        assert_eq!(choice["finish_reason"], "length");
    }
    assert_eq!(value["usage"]["prompt_tokens"], 4, "the prompt counts once");
    assert_eq!(value["usage"]["completion_tokens"], 12);
    let mut seeds: Vec<Option<u64>> = decode
        .generates()
        .iter()
        .map(|g| g.request.as_ref().and_then(|r| r.sampling.as_ref()).and_then(|s| s.seed))
        .collect();
    seeds.sort();
    assert_eq!(seeds, [Some(7), Some(8), Some(9)]);

    let body = json!({
        "messages": [{ "role": "user", "content": "w40" }], "max_tokens": 2, "n": 2,
        "stream": true, "stream_options": { "include_usage": true },
    });
    let response = post(router.http, "/v1/chat/completions", &body.to_string()).await;
    let data = response.sse_data();
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    for index in 0..2 {
        let of_choice: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["index"] == index).collect();
        assert_eq!(of_choice[0]["choices"][0]["delta"]["role"], "assistant", "choice {index} opens with its role");
        let content: String = of_choice.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
        assert_eq!(content, " w4 w40", "choice {index}");
        let finishes = of_choice.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).count();
        assert_eq!(finishes, 1, "choice {index} finishes once");
    }
    let usage = chunks.last().expect("usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn tokenize_counts_what_generation_sends_and_detokenize_reverses_it() {
    let (decode, router) = one_decode().await;
    let tokenized = post(router.http, "/tokenize", &json!({ "prompt": "w10 w11 w12" }).to_string()).await;
    assert_eq!(tokenized.status, 200, "{}", tokenized.body);
    assert_eq!(tokenized.json(), json!({ "count": 4, "max_model_len": CONTEXT, "tokens": [1, 10, 11, 12] }));

    let messages = json!([{ "role": "system", "content": "w30" }, { "role": "user", "content": "w31" }]);
    let chat = post(router.http, "/tokenize", &json!({ "model": MODEL_ID, "messages": messages }).to_string()).await;
    let body = json!({ "messages": messages, "max_tokens": 1 }).to_string();
    assert_eq!(post(router.http, "/v1/chat/completions", &body).await.status, 200);
    let sent = decode.generates()[0].request.clone().expect("request").prompt;
    assert_eq!(chat.json()["tokens"], json!(sent), "the template and tokenizer generation uses");

    // vLLM's switches: no BOS for the text; no generation prompt (`w5`) for the chat, and BOS.
    let bare = json!({ "prompt": "w10 w11 w12", "add_special_tokens": false }).to_string();
    assert_eq!(post(router.http, "/tokenize", &bare).await.json()["tokens"], json!([10, 11, 12]));
    let framed = json!({ "messages": messages, "add_generation_prompt": false, "add_special_tokens": true });
    let framed = post(router.http, "/tokenize", &framed.to_string()).await.json()["tokens"].clone();
    let mut expected = vec![1];
    expected.extend(&sent[..sent.len() - 1]);
    assert_eq!(framed, json!(expected), "the chat {sent:?} framed otherwise");

    // Tools, a call and its result on a template that knows no tools: the tools become a system
    // turn (`w3`) and the result a user turn (`w4`), as generation sends them.
    let tools = json!([{ "type": "function", "function": { "name": "lookup", "parameters": { "type": "object" } } }]);
    let call = json!({ "id": "c1", "type": "function", "function": { "name": "lookup", "arguments": "{}" } });
    let turns = json!([
        { "role": "user", "content": "w31" },
        { "role": "assistant", "content": null, "tool_calls": [call] },
        { "role": "tool", "tool_call_id": "c1", "content": "w77" },
    ]);
    let tokenized = post(router.http, "/tokenize", &json!({ "messages": turns, "tools": tools }).to_string()).await;
    assert_eq!(tokenized.status, 200, "{}", tokenized.body);
    let body = json!({ "messages": turns, "tools": tools, "max_tokens": 1 }).to_string();
    assert_eq!(post(router.http, "/v1/chat/completions", &body).await.status, 200);
    let sent = decode.generates()[1].request.clone().expect("request").prompt;
    assert_eq!(tokenized.json()["tokens"], json!(sent));
    assert_eq!(sent[0], 3, "the tools' system turn: {sent:?}");
    let last_user_turn = sent.iter().rposition(|&t| t == 4).expect("a user turn");
    assert!(sent[last_user_turn..].contains(&77) && sent.ends_with(&[6, 5]), "the result: {sent:?}");

    let text = post(router.http, "/detokenize", &json!({ "tokens": [10, 11, 12] }).to_string()).await;
    assert_eq!((text.status, text.json()["prompt"].clone()), (200, json!(words([10, 11, 12]))));

    let bad = [
        ("/tokenize", json!({}), json!("prompt")),
        ("/tokenize", json!({ "prompt": "w1", "messages": messages }), json!("prompt")),
        ("/tokenize", json!({ "prompt": "w1", "model": "other" }), json!("model")),
        ("/detokenize", json!({ "tokens": [5000] }), json!("tokens")),
        ("/detokenize", json!({ "tokens": "w1" }), json!("tokens")),
    ];
    for (path, body, param) in bad {
        let response = post(router.http, path, &body.to_string()).await;
        assert!(matches!(response.status, 400 | 404), "{path} {body}: {}", response.body);
        assert_eq!(response.json()["error"]["param"], param, "{path} {body}");
    }
}

#[tokio::test]
async fn operational_endpoints() {
    let (_decode, router) = one_decode().await;
    assert_eq!(get(router.http, "/health").await.status, 200);
    assert_eq!(get(router.http, "/ready").await.status, 200);
    let models = get(router.http, "/v1/models").await.json();
    assert_eq!(models["data"][0]["id"], MODEL_ID);
    assert_eq!(models["data"][0]["max_model_len"], CONTEXT);
    let one = get(router.http, &format!("/v1/models/{MODEL_ID}")).await;
    assert_eq!((one.status, one.json()), (200, models["data"][0].clone()));
    let other = get(router.http, "/v1/models/org/other-model").await;
    assert_eq!((other.status, other.json()["error"]["param"].clone()), (404, json!("model")));
    let missing = get(router.http, "/v1/nothing").await;
    assert_eq!((missing.status, missing.json()["error"]["code"].clone()), (404, json!("not_found")));
    post(router.http, "/v1/completions", r#"{"prompt":"w9","max_tokens":2}"#).await;
    let metrics = get(router.http, "/metrics").await;
    assert!(
        metrics.body.contains("lcserve_router_requests_total{endpoint=\"completions\",status=\"ok\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("lcserve_router_time_to_first_token_seconds_bucket"));
    assert_eq!(metric(router.http, "lcserve_router_worker_healthy", "role=\"decode\"").await, 1.0);
    assert_eq!(metric(router.http, "lcserve_router_completion_tokens_total", "").await, 2.0);
}

#[tokio::test]
async fn the_model_id_can_be_overridden() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(RouterConfig { model_id: Some("house-model".into()), ..config(&[], &[&decode]) }).await;
    assert_eq!(get(router.http, "/v1/models").await.json()["data"][0]["id"], "house-model");
    let ok = post(router.http, "/v1/completions", r#"{"model":"house-model","prompt":"w9","max_tokens":1}"#).await;
    assert_eq!((ok.status, ok.json()["model"].clone()), (200, json!("house-model")));
    let old = post(router.http, "/v1/completions", &format!(r#"{{"model":"{MODEL_ID}","prompt":"w9"}}"#)).await;
    assert_eq!(old.status, 404);
}

#[tokio::test]
async fn not_ready_until_a_worker_answers() {
    let config = RouterConfig {
        decode: vec!["http://127.0.0.1:9".into()],
        poll_interval: Duration::from_millis(20),
        startup_timeout: Duration::from_millis(300),
        ..RouterConfig::default()
    };
    let mut router = spawn_router(config).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(get(router.http, "/health").await.status, 200);
    assert_eq!(get(router.http, "/ready").await.status, 503);
    let response = post(router.http, "/v1/completions", r#"{"prompt":"w9"}"#).await;
    assert_eq!(response.status, 503, "{}", response.body);
    let result = router.outcome().await;
    assert!(matches!(result, Err(lcserve_router::RouterError::NoModelInfo(_))), "{result:?}");
}

/// Each bad request gets its status and names its field; the router keeps serving after.
#[tokio::test]
async fn bad_input_is_rejected_with_the_field() {
    let (_decode, router) = one_decode().await;
    let long_prompt: Vec<u32> = vec![9; CONTEXT as usize];
    let cases: Vec<(&str, String, u16, Value)> = vec![
        ("/v1/completions", "{\"prompt\":".into(), 400, Value::Null),
        ("/v1/completions", "not json".into(), 400, Value::Null),
        ("/v1/completions", json!({}).to_string(), 400, json!("prompt")),
        ("/v1/completions", json!({"prompt": ""}).to_string(), 400, json!("prompt")),
        ("/v1/completions", json!({"prompt": []}).to_string(), 400, json!("prompt")),
        ("/v1/completions", json!({"prompt": [5000]}).to_string(), 400, json!("prompt")),
        ("/v1/completions", json!({"prompt": long_prompt}).to_string(), 400, json!("prompt")),
        ("/v1/completions", json!({"prompt": "w9", "max_tokens": 0}).to_string(), 400, json!("max_tokens")),
        ("/v1/completions", json!({"prompt": "w9", "max_tokens": -1}).to_string(), 400, json!("max_tokens")),
        ("/v1/completions", json!({"prompt": "w9", "max_tokens": 100_000}).to_string(), 400, json!("max_tokens")),
        ("/v1/completions", json!({"prompt": "w9", "max_tokens": CONTEXT}).to_string(), 400, json!("max_tokens")),
        (
            "/v1/completions",
            json!({"prompt": "w9", "max_tokens": 3, "min_tokens": 4}).to_string(),
            400,
            json!("min_tokens"),
        ),
        ("/v1/completions", json!({"prompt": "w9", "temperature": -1}).to_string(), 400, json!("temperature")),
        ("/v1/completions", json!({"prompt": "w9", "top_p": 0}).to_string(), 400, json!("top_p")),
        ("/v1/completions", json!({"prompt": "w9", "top_p": 1.5}).to_string(), 400, json!("top_p")),
        ("/v1/completions", json!({"prompt": "w9", "top_p": "high"}).to_string(), 400, json!("top_p")),
        ("/v1/completions", json!({"prompt": "w9", "top_k": -3}).to_string(), 400, json!("top_k")),
        ("/v1/completions", json!({"prompt": "w9", "top_k": 5000}).to_string(), 400, json!("top_k")),
        ("/v1/completions", json!({"prompt": "w9", "min_p": 2}).to_string(), 400, json!("min_p")),
        ("/v1/completions", json!({"prompt": "w9", "presence_penalty": 3}).to_string(), 400, json!("presence_penalty")),
        (
            "/v1/completions",
            json!({"prompt": "w9", "frequency_penalty": -3}).to_string(),
            400,
            json!("frequency_penalty"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "w9", "repetition_penalty": 0}).to_string(),
            400,
            json!("repetition_penalty"),
        ),
        ("/v1/completions", json!({"prompt": "w9", "logprobs": 21}).to_string(), 400, json!("logprobs")),
        ("/v1/completions", json!({"prompt": "w9", "n": 0}).to_string(), 400, json!("n")),
        ("/v1/completions", json!({"prompt": "w9", "n": 17}).to_string(), 400, json!("n")),
        ("/v1/completions", json!({"prompt": "w9", "logit_bias": {"5000": 1}}).to_string(), 400, json!("logit_bias")),
        ("/v1/completions", json!({"prompt": "w9", "logit_bias": {"5": -101}}).to_string(), 400, json!("logit_bias")),
        (
            "/v1/completions",
            json!({"prompt": "w9", "tools": [{"type": "function", "function": {"name": "f"}}]}).to_string(),
            400,
            json!("tools"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "w9"}], "tools": [{"type": "function"}]}).to_string(),
            400,
            json!("tools[0]"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "w9"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"})
            .to_string(),
            400,
            json!("tool_choice"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "w9"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "function", "function": {"name": "g"}}})
            .to_string(),
            400,
            json!("tool_choice"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "w9"}], "response_format": {"type": "json_object"}})
                .to_string(),
            400,
            json!("response_format"),
        ),
        // The test model's word-level vocabulary has no bytes to constrain: the error names the
        // field that asked, whichever it was.
        ("/v1/completions", json!({"prompt": "w9", "guided_regex": "w[0-9]+"}).to_string(), 400, json!("guided_regex")),
        (
            "/v1/completions",
            json!({"prompt": "w9", "guided_regex": "x", "response_format": {"type": "json_object"}}).to_string(),
            400,
            json!("guided_regex"),
        ),
        ("/v1/completions", json!({"prompt": "w9", "guided_choice": []}).to_string(), 400, json!("guided_choice")),
        (
            "/v1/completions",
            json!({"prompt": "w9", "structured_outputs": {"regex": "x", "grammar": "y"}}).to_string(),
            400,
            json!("structured_outputs"),
        ),
        ("/v1/completions", json!({"prompt": "w9", "prefill_mode": "fast"}).to_string(), 400, json!("prefill_mode")),
        ("/v1/completions", json!({"prompt": "w9", "speculation": "psychic"}).to_string(), 400, json!("speculation")),
        ("/v1/completions", json!({"prompt": "w9", "priority": "high"}).to_string(), 400, json!("priority")),
        ("/v1/completions", json!({"prompt": "w9", "priority": 3_000_000_000u64}).to_string(), 400, json!("priority")),
        ("/v1/completions", json!({"prompt": "w9", "kv_selection": {}}).to_string(), 400, json!("kv_selection.budget")),
        (
            "/v1/completions",
            json!({"prompt": "w9", "kv_selection": {"budget": 0}}).to_string(),
            400,
            json!("kv_selection.budget"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "w9", "kv_selection": {"budget": 8, "window": 0}}).to_string(),
            400,
            json!("kv_selection.window"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "w9", "kv_selection": {"budget": 8, "reuse_threshold": 2}}).to_string(),
            400,
            json!("kv_selection.reuse_threshold"),
        ),
        ("/v1/completions", json!({"prompt": "w9", "stop": vec!["x"; 17]}).to_string(), 400, json!("stop")),
        ("/v1/completions", json!({"prompt": "w9", "stop": ""}).to_string(), 400, json!("stop")),
        ("/v1/completions", json!({"prompt": "w9", "stop": "x".repeat(2000)}).to_string(), 400, json!("stop")),
        ("/v1/completions", json!({"prompt": "w9", "model": "gpt-9"}).to_string(), 404, json!("model")),
        ("/v1/chat/completions", json!({"messages": []}).to_string(), 400, json!("messages")),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "robot", "content": "w9"}]}).to_string(),
            400,
            json!("messages"),
        ),
        ("/v1/chat/completions", json!({"messages": [{"content": "w9"}]}).to_string(), 400, json!("messages[0]")),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "w9"}], "logprobs": true, "top_logprobs": 25}).to_string(),
            400,
            json!("top_logprobs"),
        ),
    ];
    for (path, body, status, param) in &cases {
        let response = post(router.http, path, body).await;
        assert_eq!(response.status, *status, "{path} {body}: {}", response.body);
        let error = &response.json()["error"];
        assert_eq!(&error["param"], param, "{path} {body}: {}", response.body);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        assert!(error["type"].is_string());
    }
    let invalid_utf8 =
        read(send(router.http, "POST", "/v1/completions", &b"{\"prompt\":\"\xff\xfe\"}"[..], &[]).await).await;
    assert_eq!(invalid_utf8.status, 400, "{}", invalid_utf8.body);
    let ok = post(router.http, "/v1/completions", r#"{"prompt":"w9","max_tokens":1}"#).await;
    assert_eq!(ok.status, 200, "the router still serves after bad input: {}", ok.body);
    let bad = metric(router.http, "lcserve_router_requests_total", "status=\"invalid_argument\"").await;
    assert!(bad >= 25.0, "{bad}");
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(RouterConfig { max_body_bytes: 1024, ..config(&[], &[&decode]) }).await;
    let body = json!({ "prompt": "w9 ".repeat(1000) }).to_string();
    let response = post(router.http, "/v1/completions", &body).await;
    assert_eq!(response.status, 413, "{}", response.body);
    assert_eq!(response.json()["error"]["type"], "invalid_request_error");
    // Without Content-Length (chunked), the limit is enforced while reading.
    let chunked = raw_http(router.http, &body).await;
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert_eq!(post(router.http, "/v1/completions", r#"{"prompt":"w9","max_tokens":1}"#).await.status, 200);
}

/// A chunked POST written by hand (hyper's client always knows the length of a full body).
async fn raw_http(addr: std::net::SocketAddr, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = "POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let request = format!("{head}{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

#[tokio::test]
async fn api_keys_gate_both_fronts_and_salt_by_tenant() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router_with_keys(&decode, "# test keys\nsk-alice alice\nsk-bob bob\n").await;
    let body = r#"{"prompt":"w9","max_tokens":1}"#;
    let anonymous = post(router.http, "/v1/completions", body).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["error"]["type"], "authentication_error");
    assert_eq!(post_as(router.http, "/v1/completions", body, "sk-eve").await.status, 401);
    assert_eq!(read(send(router.http, "GET", "/v1/models", "", &[]).await).await.status, 401);
    assert_eq!(post_as(router.http, "/v1/completions", body, "sk-alice").await.status, 200);
    let salted = r#"{"prompt":"w9","max_tokens":1,"cache_salt":"s"}"#;
    assert_eq!(post_as(router.http, "/v1/completions", salted, "sk-alice").await.status, 200);
    assert_eq!(post_as(router.http, "/v1/completions", body, "sk-bob").await.status, 200);
    let salts: Vec<Vec<u8>> =
        decode.generates().iter().map(|g| g.request.clone().expect("request").cache_salt).collect();
    let mut alice = 5u64.to_le_bytes().to_vec();
    alice.extend_from_slice(b"alice");
    alice.extend_from_slice(&0u64.to_le_bytes());
    assert_eq!(salts[0], alice, "tenant salt, length-prefixed");
    assert!(salts[1] != salts[0] && salts[2] != salts[0] && salts[1] != salts[2], "{salts:?}");
    assert_eq!(get(router.http, "/health").await.status, 200);

    let mut client = grpc(&router).await;
    let status = client.generate(text_request("w9", 1)).await.expect_err("unauthenticated");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let mut request = tonic::Request::new(text_request("w9", 1));
    request.metadata_mut().insert("authorization", "Bearer sk-bob".parse().expect("ascii"));
    let (tokens, _) = drain(client.generate(request).await.expect("authorized").into_inner()).await;
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn an_api_key_asks_only_for_the_priorities_it_was_granted() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router_with_keys(&decode, "sk-alice alice\nsk-ops ops min_priority=-10\n").await;
    let ask = |key: &'static str, priority: i32| async move {
        let body = json!({"prompt": "w9", "max_tokens": 1, "priority": priority}).to_string();
        post_as(router.http, "/v1/completions", &body, key).await
    };
    assert_eq!(ask("sk-alice", 5).await.status, 200, "a worse priority is anyone's");
    assert_eq!(ask("sk-alice", 0).await.status, 200);
    let refused = ask("sk-alice", -1).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"]["param"], "priority");
    assert_eq!(ask("sk-ops", -10).await.status, 200, "a key granted better priorities");
    assert_eq!(ask("sk-ops", -11).await.status, 400);
    let priorities: Vec<i32> =
        decode.generates().iter().map(|g| g.request.clone().expect("request").priority).collect();
    assert_eq!(priorities, [5, 0, -10]);

    let mut client = grpc(&router).await;
    let mut request = tonic::Request::new(v1::GenerateRequest { priority: -1, ..text_request("w9", 1) });
    request.metadata_mut().insert("authorization", "Bearer sk-alice".parse().expect("ascii"));
    let status = client.generate(request).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("priority"), "{}", status.message());
}

#[tokio::test]
async fn grpc_generate_tokenize_list_models() {
    let prefill = InstantWorker::start("prefill").await;
    let decode = InstantWorker::start("decode").await;
    prefill.set(|b| b.cached_tokens = 8);
    let router = start_router(config(&[&prefill], &[&decode])).await;
    let mut client = grpc(&router).await;

    // 20 prompt tokens ≥ disagg_min_tokens (16): prefill, then decode continues after its token.
    let text = words(100..119);
    let (tokens, end) = drain(client.generate(text_request(&text, 5)).await.expect("generate").into_inner()).await;
    let ids: Vec<u32> = tokens.iter().map(|t| t.id).collect();
    assert_eq!(ids, vec![1, 100, 101, 102, 103]);
    let Event::Finished(finished) = end else { panic!("expected Finished, got {end:?}") };
    let usage = finished.usage.expect("usage");
    assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens), (20, 5, 8));
    assert_eq!(usage.cached.map(|c| c.device), Some(8), "cache figures come from the prefill worker");
    assert_eq!(prefill.runs(), 1);
    let sent = decode.generates();
    assert_eq!(sent[0].generated, vec![1], "decode continues after the prefill's first token");
    assert_eq!(sent[0].session.as_ref().map(|s| s.block_size), Some(BLOCK_SIZE));

    // max_tokens 1 ends at the prefill worker.
    let (tokens, end) = drain(client.generate(text_request(&text, 1)).await.expect("generate").into_inner()).await;
    assert_eq!(tokens.len(), 1);
    assert!(matches!(end, Event::Finished(_)));
    assert_eq!(decode.generates().len(), 1, "no decode call");

    let chat = v1::TokenizeRequest {
        model: String::new(),
        input: Some(v1::tokenize_request::Input::Chat(v1::ChatMessages {
            messages: vec![v1::ChatMessage { role: "user".into(), content: "w50".into(), ..Default::default() }],
            ..Default::default()
        })),
    };
    assert_eq!(client.tokenize(chat.clone()).await.expect("tokenize").into_inner().ids, vec![4, 50, 6, 5]);
    // Extra template variables reach the template.
    let mut greeted = chat;
    if let Some(v1::tokenize_request::Input::Chat(messages)) = &mut greeted.input {
        messages.template_kwargs = Some(r#"{"greeting": 7}"#.into());
    }
    assert_eq!(client.tokenize(greeted).await.expect("tokenize").into_inner().ids, vec![7, 4, 50, 6, 5]);
    let plain =
        v1::TokenizeRequest { model: MODEL_ID.into(), input: Some(v1::tokenize_request::Input::Text("w7 w8".into())) };
    assert_eq!(client.tokenize(plain).await.expect("tokenize").into_inner().ids, vec![1, 7, 8]);
    let models = client.list_models(v1::ListModelsRequest {}).await.expect("models").into_inner().models;
    assert_eq!(models, vec![v1::ModelCard { id: MODEL_ID.into(), context_length: CONTEXT, block_size: BLOCK_SIZE }]);
}

#[tokio::test]
async fn grpc_invalid_arguments_name_the_field() {
    let (_decode, router) = one_decode().await;
    let mut client = grpc(&router).await;
    let sampling = |s: v1::SamplingParams| v1::GenerateRequest { sampling: Some(s), ..text_request("w9", 2) };
    let cases = vec![
        (v1::GenerateRequest { input: None, ..text_request("w9", 2) }, tonic::Code::InvalidArgument, "text"),
        (text_request("", 2), tonic::Code::InvalidArgument, "text"),
        (text_request("w9", 0), tonic::Code::InvalidArgument, "stop.max_tokens"),
        (
            sampling(v1::SamplingParams { top_p: Some(2.0), ..Default::default() }),
            tonic::Code::InvalidArgument,
            "sampling.top_p",
        ),
        (
            sampling(v1::SamplingParams { logprobs: Some(30), ..Default::default() }),
            tonic::Code::InvalidArgument,
            "sampling.logprobs",
        ),
        (
            sampling(v1::SamplingParams {
                structured_output: Some(v1::StructuredOutput { kind: None, reasoning: None }),
                ..Default::default()
            }),
            tonic::Code::InvalidArgument,
            "sampling.structured_output",
        ),
        (
            v1::GenerateRequest {
                input: Some(Input::TokenIds(v1::TokenIds { ids: vec![99_999] })),
                ..text_request("", 2)
            },
            tonic::Code::InvalidArgument,
            "token_ids.ids",
        ),
        (v1::GenerateRequest { model: "nope".into(), ..text_request("w9", 2) }, tonic::Code::NotFound, "model"),
    ];
    let chat = |kwargs: &str| v1::GenerateRequest {
        input: Some(Input::Chat(v1::ChatMessages {
            messages: vec![v1::ChatMessage { role: "user".into(), content: "w9".into(), ..Default::default() }],
            template_kwargs: Some(kwargs.into()),
            ..Default::default()
        })),
        ..text_request("", 2)
    };
    let cases = cases.into_iter().chain([
        (chat("[1]"), tonic::Code::InvalidArgument, "chat.template_kwargs"),
        (chat(r#"{"add_generation_prompt": false}"#), tonic::Code::InvalidArgument, "chat.template_kwargs"),
    ]);
    for (request, code, field) in cases {
        let status = client.generate(request).await.expect_err("rejected before the stream");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(field), "{field}: {}", status.message());
    }
    let (tokens, _) = drain(client.generate(text_request("w9", 2)).await.expect("still serving").into_inner()).await;
    assert_eq!(tokens.len(), 2);
}

#[tokio::test]
async fn grpc_health_and_reflection() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let (_decode, router) = one_decode().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", router.grpc))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let service = "lcserve.v1.Generation".to_owned();
    eventually_async(|| {
        let mut health = health.clone();
        let service = service.clone();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
        }
    })
    .await;
    let _ = &mut health;
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("reflection").into_inner();
    let response = responses.message().await.expect("message").expect("a response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("list services") };
    assert!(list.service.iter().any(|s| s.name == "lcserve.v1.Generation"), "{list:?}");
}

async fn eventually_async<F, Fut>(mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(tokio::time::Instant::now() < deadline, "condition never held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn prefill_mode_speculation_kv_selection_and_priority_reach_the_worker() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[], &[&decode])).await;
    for (mode, speculation) in [("dense", "ngram"), ("sparse", "off"), ("auto", "ngram")] {
        let mut body = json!({"prompt": "w9", "max_tokens": 1, "prefill_mode": mode, "speculation": speculation});
        if mode == "sparse" {
            body["kv_selection"] = json!({"budget": 256, "window": 64});
            body["priority"] = json!(-3);
        }
        if mode == "auto" {
            body["priority"] = json!(7);
        }
        assert_eq!(post(router.http, "/v1/completions", &body.to_string()).await.status, 200, "{mode}");
    }
    let requests: Vec<v1::WorkerRequest> =
        decode.generates().iter().map(|g| g.request.clone().expect("request")).collect();
    let modes: Vec<v1::PrefillMode> = requests.iter().map(|r| r.prefill_mode()).collect();
    assert_eq!(modes, [v1::PrefillMode::Dense, v1::PrefillMode::Sparse, v1::PrefillMode::Auto]);
    let speculation: Vec<v1::Speculation> = requests.iter().map(|r| r.speculation()).collect();
    assert_eq!(speculation, [v1::Speculation::Ngram, v1::Speculation::Off, v1::Speculation::Ngram]);
    let selection: Vec<Option<v1::KvSelection>> = requests.iter().map(|r| r.kv_selection).collect();
    let sent = v1::KvSelection { budget: 256, window: Some(64), ..Default::default() };
    assert_eq!(selection, [None, Some(sent), None]);
    let priorities: Vec<i32> = requests.iter().map(|r| r.priority).collect();
    assert_eq!(priorities, [0, -3, 7], "absent means 0");
}

#[tokio::test]
async fn a_batch_of_prompts_answers_each_prompt_n_times_in_openai_order() {
    let (decode, router) = one_decode().await;
    let body = json!({ "prompt": ["w10 w11", "w20"], "max_tokens": 3, "n": 2, "echo": true, "seed": 5 });
    let response = post(router.http, "/v1/completions", &body.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let value = response.json();
    let texts: Vec<(u64, &str)> = value["choices"]
        .as_array()
        .expect("choices")
        .iter()
        .map(|c| (c["index"].as_u64().expect("index"), c["text"].as_str().expect("text")))
        .collect();
    // Choice j of prompt p is p · n + j; each starts with its own prompt (echo).
    let first = "w10 w11 w1 w10 w11";
    let second = "w20 w1 w20 w1";
    assert_eq!(texts, [(0, first), (1, first), (2, second), (3, second)]);
    assert_eq!(value["usage"]["prompt_tokens"], 3 + 2, "each prompt counts once");
    assert_eq!(value["usage"]["completion_tokens"], 12);
    let mut seeds: Vec<(Vec<u32>, Option<u64>)> = decode
        .generates()
        .iter()
        .filter_map(|g| g.request.as_ref())
        .map(|r| (r.prompt.clone(), r.sampling.as_ref().and_then(|s| s.seed)))
        .collect();
    seeds.sort();
    let expected =
        [(vec![1, 10, 11], Some(5)), (vec![1, 10, 11], Some(6)), (vec![1, 20], Some(5)), (vec![1, 20], Some(6))];
    assert_eq!(seeds, expected, "a prompt samples as it would alone, whatever its place in the batch");

    // Streamed token lists: each choice's chunks carry its index, then one usage chunk.
    let body = json!({
        "prompt": [[30, 31], [40], [50]], "max_tokens": 2, "stream": true,
        "stream_options": { "include_usage": true },
    });
    let data = post(router.http, "/v1/completions", &body.to_string()).await.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    for (index, want) in [" w30 w31", " w40 w40", " w50 w50"].into_iter().enumerate() {
        let of_choice: Vec<&Value> = chunks.iter().filter(|c| c["choices"][0]["index"] == index).collect();
        let text: String = of_choice.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
        assert_eq!(text, want, "choice {index}");
        let finishes = of_choice.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).count();
        assert_eq!(finishes, 1, "choice {index} finishes once");
    }
    let usage = &chunks.last().expect("usage chunk")["usage"];
    assert_eq!((&usage["prompt_tokens"], &usage["completion_tokens"]), (&json!(4), &json!(6)));

    // One bad prompt fails the whole batch before anything runs, naming its place.
    let before = decode.generates().len();
    let body = json!({ "prompt": ["w10", ""], "max_tokens": 2 }).to_string();
    let refused = post(router.http, "/v1/completions", &body).await;
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert_eq!(refused.json()["error"]["param"], "prompt");
    let message = refused.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("prompt 1 of the batch") && message.contains("empty"), "{message}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(decode.generates().len(), before, "nothing started");
}

#[tokio::test]
async fn chat_template_kwargs_reach_the_template() {
    let (decode, router) = one_decode().await;
    let messages = json!([{ "role": "user", "content": "w31" }]);
    let body = json!({ "messages": messages, "max_tokens": 1, "chat_template_kwargs": { "greeting": 9 } });
    let response = post(router.http, "/v1/chat/completions", &body.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let prompt = decode.generates()[0].request.clone().expect("request").prompt;
    assert_eq!(prompt, vec![9, 4, 31, 6, 5], "the template's greeting opens the prompt");
    let body = json!({ "messages": messages, "chat_template_kwargs": { "greeting": 9 } });
    let counted = post(router.http, "/tokenize", &body.to_string()).await.json();
    assert_eq!(counted["tokens"], json!([9, 4, 31, 6, 5]), "/tokenize renders them as generation does");

    let refused = |path: &'static str, body: Value| async move {
        let response = post(router.http, path, &body.to_string()).await;
        (response.status, response.json()["error"]["param"].clone())
    };
    let reserved = json!({ "messages": messages, "chat_template_kwargs": { "messages": [] } });
    assert_eq!(refused("/v1/chat/completions", reserved).await, (400, json!("chat_template_kwargs")));
    let completion = json!({ "prompt": "w1", "chat_template_kwargs": { "greeting": 9 } });
    assert_eq!(refused("/v1/completions", completion).await, (400, json!("chat_template_kwargs")));
    // A variable the template fails on is the client's error, named.
    let broken = json!({ "messages": messages, "chat_template_kwargs": { "greeting": "hello" } });
    assert_eq!(refused("/v1/chat/completions", broken).await, (400, json!("chat_template_kwargs")));
}

#[tokio::test]
async fn reasoning_effort_reaches_the_template() {
    let (decode, router) = one_decode().await;
    let messages = json!([{ "role": "user", "content": "w31" }]);
    let prompt_of = async |path: &str, body: Value| {
        let response = post(router.http, path, &body.to_string()).await;
        assert_eq!(response.status, 200, "{}", response.body);
        decode.generates().last().and_then(|g| g.request.clone()).expect("request").prompt
    };
    let high = json!({ "messages": messages, "max_tokens": 1, "reasoning_effort": "high" });
    assert_eq!(prompt_of("/v1/chat/completions", high).await, [33, 4, 31, 6, 5]);
    let low = json!({ "messages": messages, "max_tokens": 1, "reasoning_effort": "low" });
    assert_eq!(prompt_of("/v1/chat/completions", low).await, [32, 4, 31, 6, 5]);
    let both = json!({
        "messages": messages, "max_tokens": 1, "reasoning_effort": "high",
        "chat_template_kwargs": { "reasoning_effort": "low" },
    });
    assert_eq!(prompt_of("/v1/chat/completions", both).await, [32, 4, 31, 6, 5], "the client's template kwargs win");
    let responses =
        json!({ "input": "w31", "max_output_tokens": 1, "reasoning": { "effort": "high", "summary": "auto" } });
    assert_eq!(prompt_of("/v1/responses", responses).await, [33, 4, 31, 6, 5], "the Responses API's effort");

    let refused = |path: &'static str, body: Value| async move {
        let response = post(router.http, path, &body.to_string()).await;
        (response.status, response.json()["error"]["param"].clone())
    };
    let unknown = json!({ "messages": messages, "reasoning_effort": "extreme" });
    assert_eq!(refused("/v1/chat/completions", unknown).await, (400, json!("reasoning_effort")));
    let completion = json!({ "prompt": "w1", "reasoning_effort": "high" });
    assert_eq!(refused("/v1/completions", completion).await, (400, json!("reasoning_effort")));
    let responses = json!({ "input": "w31", "reasoning": { "effort": "extreme" } });
    assert_eq!(refused("/v1/responses", responses).await, (400, json!("reasoning.effort")));
}
