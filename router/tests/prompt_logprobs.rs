//! Prompt logprobs against instant workers: `echo` with `logprobs` (OpenAI's legacy scoring,
//! streamed or whole, `max_tokens: 0`) and vLLM's `prompt_logprobs`, each scored by a decode
//! worker.

mod support;

use serde_json::{Value, json};
use support::model::words;
use support::*;

#[tokio::test]
async fn echo_returns_the_prompt_with_its_logprobs_scored_by_a_decode_worker() {
    let prefill = InstantWorker::start("prefill").await;
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[&prefill], &[&decode])).await;
    // 20 prompt tokens ≥ disagg_min_tokens (16), yet a scored prompt skips the prefill worker.
    let prompt = words(100..119);
    let body = json!({ "prompt": prompt, "max_tokens": 2, "echo": true, "logprobs": 1 }).to_string();
    let response = post(router.http, "/v1/completions", &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let choice = &response.json()["choices"][0];
    assert_eq!(choice["text"], format!("{prompt} w1 w100"), "the prompt, then the answer");
    let logprobs = &choice["logprobs"];
    assert_eq!(logprobs["tokens"].as_array().map(Vec::len), Some(22), "20 prompt tokens, 2 generated");
    assert_eq!(logprobs["token_logprobs"][0], Value::Null, "the first token follows nothing");
    assert_eq!(logprobs["top_logprobs"][0], Value::Null);
    assert_eq!((&logprobs["token_logprobs"][1], &logprobs["token_logprobs"][19]), (&json!(-1.0), &json!(-19.0)));
    assert_eq!(logprobs["top_logprobs"][1], json!({ "w100": -1.0 }));
    assert_eq!(prefill.runs(), 0);
    let sent = decode.generates();
    assert!(sent[0].session.is_none());
    assert_eq!(sent[0].request.as_ref().and_then(|r| r.sampling.as_ref()?.prompt_logprobs), Some(1));

    // Streamed: the first chunk echoes the prompt with its logprobs.
    let body = json!({ "prompt": prompt, "max_tokens": 2, "echo": true, "logprobs": 0, "stream": true });
    let data = post(router.http, "/v1/completions", &body.to_string()).await.sse_data();
    let first: Value = serde_json::from_str(&data[0]).expect("chunk");
    assert_eq!(first["choices"][0]["text"], prompt);
    assert_eq!(first["choices"][0]["logprobs"]["token_logprobs"].as_array().map(Vec::len), Some(20));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).expect("chunk")["choices"][0]["text"].as_str().unwrap_or("").to_owned()
        })
        .collect();
    assert_eq!(text, format!("{prompt} w1 w100"));

    // `max_tokens: 0` answers with the scored prompt alone, streamed or whole.
    let body = json!({ "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1 }).to_string();
    let value = post(router.http, "/v1/completions", &body).await.json();
    let choice = &value["choices"][0];
    assert_eq!((&choice["text"], &choice["finish_reason"]), (&json!(prompt), &json!("length")), "{value}");
    assert_eq!(choice["logprobs"]["token_logprobs"].as_array().map(Vec::len), Some(20), "{value}");
    assert_eq!((&value["usage"]["prompt_tokens"], &value["usage"]["completion_tokens"]), (&json!(20), &json!(0)));
    let body = json!({ "prompt": prompt, "max_tokens": 0, "echo": true, "stream": true });
    let data = post(router.http, "/v1/completions", &body.to_string()).await.sse_data();
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).expect("chunk")).collect();
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, prompt);
    assert_eq!(chunks.last().map(|c| &c["choices"][0]["finish_reason"]), Some(&json!("length")));

    // Without logprobs nothing is scored; chat has no echo.
    let body = json!({ "prompt": "w10 w11", "max_tokens": 1, "echo": true }).to_string();
    assert_eq!(post(router.http, "/v1/completions", &body).await.json()["choices"][0]["text"], "w10 w11 w1");
    let last = decode.generates().pop().and_then(|g| g.request).and_then(|r| r.sampling);
    assert_eq!(last.map(|s| s.prompt_logprobs), Some(None));
    let chat = json!({ "messages": [{ "role": "user", "content": "w9" }], "echo": true }).to_string();
    let refused = post(router.http, "/v1/chat/completions", &chat).await;
    assert_eq!((refused.status, &refused.json()["error"]["param"]), (400, &json!("echo")));
}

#[tokio::test]
async fn vllms_prompt_logprobs_come_in_vllms_shape_for_completions_and_chats() {
    let (decode, router) = one_decode().await;
    let body = json!({ "prompt": "w10 w11", "max_tokens": 1, "prompt_logprobs": 1 }).to_string();
    let value = post(router.http, "/v1/completions", &body).await.json();
    let choice = &value["choices"][0];
    // [<s>, 10, 11]: the first follows nothing; token `i` scores `-i` with rank 1.
    let expected = json!([
        null,
        { "10": { "logprob": -1.0, "rank": 1, "decoded_token": "w10" } },
        { "11": { "logprob": -2.0, "rank": 1, "decoded_token": "w11" } },
    ]);
    assert_eq!(choice["prompt_logprobs"], expected, "{value}");
    assert_eq!((&choice["text"], &choice["logprobs"]), (&json!(" w1"), &Value::Null), "no echo, no logprobs");
    let sent = decode.generates().pop().and_then(|g| g.request).and_then(|r| r.sampling);
    assert_eq!(sent.and_then(|s| s.prompt_logprobs), Some(1));

    let chat = json!({ "messages": [{ "role": "user", "content": "w9" }], "max_tokens": 1, "prompt_logprobs": 0 });
    let value = post(router.http, "/v1/chat/completions", &chat.to_string()).await.json();
    let scored = value["prompt_logprobs"].as_array().expect("beside the choices");
    assert_eq!(scored[0], Value::Null);
    assert!(scored[1..].iter().all(|p| p.as_object().is_some_and(|p| p.len() == 1)), "the token alone: {value}");

    let streamed = json!({ "prompt": "w10", "prompt_logprobs": 1, "stream": true }).to_string();
    let refused = post(router.http, "/v1/completions", &streamed).await;
    assert_eq!((refused.status, &refused.json()["error"]["param"]), (400, &json!("prompt_logprobs")));
}
