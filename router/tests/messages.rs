//! `POST /v1/messages` against an instant worker: Anthropic's `x-api-key` authenticates as a
//! bearer key does, and errors come in Anthropic's shape.

mod support;

use serde_json::{Value, json};
use support::worker::InstantWorker;
use support::{read, send, start_router_with_keys};

#[tokio::test]
async fn anthropics_clients_are_authenticated_by_x_api_key_and_told_errors_in_their_shape() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router_with_keys(&decode, "sk-alice alice\n").await;
    let ask = |body: Value, key: &'static str| {
        let body = body.to_string();
        async move {
            let headers = [("content-type", "application/json"), ("x-api-key", key)];
            let response = read(send(router.http, "POST", "/v1/messages", body, &headers).await).await;
            (response.status, serde_json::from_str::<Value>(&response.body).unwrap_or(Value::Null))
        }
    };
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
