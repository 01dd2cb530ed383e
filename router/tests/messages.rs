//! `POST /v1/messages` against an instant worker: Anthropic's `x-api-key` authenticates as a
//! bearer key does, errors come in Anthropic's shape, and `count_tokens` counts what a request
//! would send.

mod support;

use std::net::SocketAddr;

use serde_json::{Value, json};
use support::worker::InstantWorker;
use support::{read, send, start_router_with_keys};

#[tokio::test]
async fn anthropics_clients_are_authenticated_by_x_api_key_and_told_errors_in_their_shape() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router_with_keys(&decode, "sk-alice alice\n").await;
    let ask = |body: Value, key: &'static str| post_with_key(router.http, "/v1/messages", body, key);
    let question = json!({ "max_tokens": 2, "messages": [{ "role": "user", "content": "w10 w11" }] });
    let (status, message) = ask(question.clone(), "sk-alice").await;
    assert_eq!((status, &message["type"], &message["stop_reason"]), (200, &json!("message"), &json!("max_tokens")));
    assert_eq!(message["content"][0]["type"], "text", "{message}");
    assert_eq!(message["usage"]["output_tokens"], 2, "{message}");

    let (status, error) = ask(question, "sk-eve").await;
    assert_eq!(
        (status, &error["type"], &error["error"]["type"]),
        (401, &json!("error"), &json!("authentication_error"))
    );
    let (status, error) = ask(json!({ "messages": [] }), "sk-alice").await;
    assert_eq!((status, &error["error"]["type"]), (400, &json!("invalid_request_error")), "{error}");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("max_tokens")), "{error}");
}

/// The tokens `count_tokens` reports are the prompt tokens a `/v1/messages` request with the
/// same body is charged, and what `/tokenize` gives for the equivalent chat.
#[tokio::test]
async fn count_tokens_counts_the_prompt_a_request_sends() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router_with_keys(&decode, "sk-alice alice\n").await;
    let body = json!({
        "system": "w4 w5",
        "messages": [{ "role": "user", "content": "w10 w11" }, { "role": "assistant", "content": "w12" }, { "role": "user", "content": "w13" }],
    });
    let (status, counted) = post_with_key(router.http, "/v1/messages/count_tokens", body.clone(), "sk-alice").await;
    assert_eq!(status, 200, "{counted}");
    let mut asked = body.clone();
    asked["max_tokens"] = json!(1);
    let (_, message) = post_with_key(router.http, "/v1/messages", asked, "sk-alice").await;
    let charged = &message["usage"]["input_tokens"];
    assert!(counted["input_tokens"].as_u64().is_some_and(|n| n > 0), "{counted}");
    assert_eq!(&counted["input_tokens"], charged, "{counted} vs {message}");
    let chat = json!({ "messages": [
        { "role": "system", "content": "w4 w5" }, { "role": "user", "content": "w10 w11" },
        { "role": "assistant", "content": "w12" }, { "role": "user", "content": "w13" },
    ] });
    let (_, tokenized) = post_with_key(router.http, "/tokenize", chat, "sk-alice").await;
    assert_eq!(counted["input_tokens"], tokenized["count"]);

    let (status, error) = post_with_key(router.http, "/v1/messages/count_tokens", body, "sk-eve").await;
    assert_eq!((status, &error["error"]["type"]), (401, &json!("authentication_error")));
    let (status, error) =
        post_with_key(router.http, "/v1/messages/count_tokens", json!({ "system": "x" }), "sk-alice").await;
    assert_eq!((status, &error["error"]["type"]), (400, &json!("invalid_request_error")), "{error}");
}

/// Posts `body` to `path` with Anthropic's key header; the status and the JSON answer.
async fn post_with_key(router: SocketAddr, path: &str, body: Value, key: &str) -> (u16, Value) {
    let headers = [("content-type", "application/json"), ("x-api-key", key)];
    let response = read(send(router, "POST", path, body.to_string(), &headers).await).await;
    (response.status, serde_json::from_str::<Value>(&response.body).unwrap_or(Value::Null))
}
