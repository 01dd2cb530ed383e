//! `POST /v1/responses` against an instant worker: the same answer as the chat endpoint gives,
//! whole and as the Responses API's events; stored answers continued by `previous_response_id`,
//! read (with their input items) and deleted, each tenant's apart, in one router's memory or in
//! a Redis that two router replicas share; errors that name the Responses field.

mod support;

use std::time::Duration;

use lcserve_router::RouterConfig;
use serde_json::{Value, json};
use support::model::MODEL_ID;
use support::worker::InstantWorker;
use support::{config, post, post_as, read, send, start_router, start_router_with_keys};

/// The workspace's one `redis-server` launcher (shared with the end-to-end harness).
#[allow(dead_code)] // TLS and restarts are for other tests
#[path = "../../tests/src/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

#[tokio::test]
async fn a_response_is_the_chat_answer_reshaped_whole_or_streamed() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[], &[&decode])).await;
    let chat = json!({
        "messages": [{ "role": "system", "content": "w40" }, { "role": "user", "content": "w10 w11" }],
        "max_tokens": 4,
    });
    let chat = post(router.http, "/v1/chat/completions", &chat.to_string()).await.json();
    let answer = chat["choices"][0]["message"]["content"].as_str().expect("chat text").to_owned();
    let sent_prompt = || decode.generates().last().and_then(|g| g.request.clone()).expect("request").prompt;
    let chat_prompt = sent_prompt();

    let ask = json!({
        "model": MODEL_ID, "instructions": "w40", "input": "w10 w11", "max_output_tokens": 4, "stream": false,
    });
    let response = post(router.http, "/v1/responses", &ask.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(sent_prompt(), chat_prompt, "instructions and input rendered as the chat's messages");
    let whole = response.json();
    assert_eq!((&whole["object"], &whole["model"]), (&json!("response"), &json!(MODEL_ID)));
    assert_eq!(
        (&whole["status"], &whole["incomplete_details"]["reason"]),
        (&json!("incomplete"), &json!("max_output_tokens"))
    );
    assert_eq!(whole["output"][0]["type"], "message");
    assert_eq!(whole["output"][0]["content"][0]["text"], answer);
    assert_eq!(whole["usage"]["output_tokens"], 4);
    assert_eq!(whole["usage"]["input_tokens"], chat["usage"]["prompt_tokens"]);
    assert_eq!(whole["instructions"], "w40");

    let mut streamed = ask.clone();
    streamed["stream"] = json!(true);
    let response = post(router.http, "/v1/responses", &streamed.to_string()).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert!(response.content_type.starts_with("text/event-stream"), "{}", response.content_type);
    let names: Vec<&str> = response.body.lines().filter_map(|line| line.strip_prefix("event: ")).collect();
    let events: Vec<Value> = response.sse_data().iter().map(|d| serde_json::from_str(d).expect("event")).collect();
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(names, kinds, "each event's name is its type");
    assert_eq!(
        kinds[..4],
        ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
    );
    assert_eq!(
        kinds[kinds.len() - 4..],
        ["response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete",]
    );
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(text, answer);
    let last = &events[events.len() - 1]["response"];
    assert_eq!(
        (&last["output"][0]["content"][0]["text"], &last["usage"]["output_tokens"]),
        (&json!(answer), &json!(4))
    );
}

#[tokio::test]
async fn a_bad_response_request_names_the_responses_field() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[], &[&decode])).await;
    let refused = |body: Value| async move {
        let response = post(router.http, "/v1/responses", &body.to_string()).await;
        let error = response.json()["error"].clone();
        (response.status, error["param"].clone(), error["message"].as_str().unwrap_or_default().to_owned())
    };
    let (status, param, message) = refused(json!({ "input": "w10", "max_output_tokens": 0 })).await;
    assert_eq!((status, param), (400, json!("max_output_tokens")), "{message}");
    assert!(message.starts_with("max_output_tokens:"), "{message}");
    let (status, param, _) = refused(json!({ "input": "w10", "previous_response_id": "resp_1" })).await;
    assert_eq!((status, param), (404, json!("previous_response_id")));
    let (status, param, _) = refused(json!({ "input": [] })).await;
    assert_eq!((status, param), (400, json!("input")));
    let (status, param, _) =
        refused(json!({ "input": "w10", "text": { "format": { "type": "json_schema", "schema": 3 } } })).await;
    assert_eq!((status, param), (400, json!("text.format")));
    assert!(decode.generates().is_empty(), "nothing ran");
}

/// `method path` as tenant `key`'s request.
async fn call(router: &support::TestRouter, method: &str, path: &str, body: Option<&Value>, key: &str) -> (u16, Value) {
    let response = match body {
        Some(body) => post_as(router.http, path, &body.to_string(), key).await,
        None => read(send(router.http, method, path, "", &[("authorization", &format!("Bearer {key}"))]).await).await,
    };
    let body = serde_json::from_str(&response.body).unwrap_or(Value::Null);
    (response.status, body)
}

/// Turn 1 of alice's conversation, streamed to the router at `http`: the final event's
/// response, which is what is stored.
async fn streamed_first_turn(http: std::net::SocketAddr) -> Value {
    let first = json!({ "model": MODEL_ID, "input": "w10 w11", "max_output_tokens": 3, "stream": true });
    let response = post_as(http, "/v1/responses", &first.to_string(), "sk-alice").await;
    assert_eq!(response.status, 200, "{}", response.body);
    let last: Value = serde_json::from_str(response.sse_data().last().expect("events")).expect("event");
    last["response"].clone()
}

#[tokio::test]
async fn a_stored_response_is_continued_read_and_deleted_by_its_tenant_only() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router_with_keys(&decode, "sk-alice alice\nsk-bob bob\n").await;
    let sent_prompt = || decode.generates().last().and_then(|g| g.request.clone()).expect("request").prompt;

    // Turn 1, streamed: the final event's response is what is stored.
    let first = &streamed_first_turn(router.http).await;
    let (id, answer) = (first["id"].as_str().expect("id"), first["output"][0]["content"][0]["text"].clone());
    assert_eq!(first["store"], true);
    let (status, stored) = call(&router, "GET", &format!("/v1/responses/{id}"), None, "sk-alice").await;
    assert_eq!((status, &stored), (200, first));

    // Turn 2 names turn 1: the prompt is the chat of both turns.
    let second = json!({ "previous_response_id": id, "input": "w12", "max_output_tokens": 2, "stream": false });
    let (status, follow_up) = call(&router, "POST", "/v1/responses", Some(&second), "sk-alice").await;
    assert_eq!(status, 200, "{follow_up}");
    assert_eq!(follow_up["previous_response_id"], id);
    let whole_chat = json!({ "max_tokens": 2, "messages": [
        { "role": "user", "content": "w10 w11" },
        { "role": "assistant", "content": answer },
        { "role": "user", "content": "w12" },
    ]});
    let continued = sent_prompt();
    assert_eq!(call(&router, "POST", "/v1/chat/completions", Some(&whole_chat), "sk-alice").await.0, 200);
    assert_eq!(continued, sent_prompt(), "the stored conversation, then the new input");
    let items = format!("/v1/responses/{}/input_items", follow_up["id"].as_str().expect("id"));
    let (status, list) = call(&router, "GET", &items, None, "sk-alice").await;
    assert_eq!((status, &list["object"], &list["has_more"]), (200, &json!("list"), &json!(false)), "{list}");
    let data = list["data"].as_array().expect("data");
    assert_eq!(data.len(), 1, "its own input only: {list}");
    let text = json!([{ "type": "input_text", "text": "w12" }]);
    assert_eq!((&data[0]["role"], &data[0]["content"]), (&json!("user"), &text));
    assert!(data[0]["id"].as_str().is_some_and(|id| id.starts_with("msg_")), "{list}");
    assert_eq!(call(&router, "GET", &items, None, "sk-bob").await.0, 404);
    let (status, error) = call(&router, "GET", &format!("{items}?limit=x"), None, "sk-alice").await;
    assert_eq!((status, &error["error"]["param"]), (400, &json!("query")), "{error}");

    // Another tenant sees none of it.
    let path = format!("/v1/responses/{id}");
    assert_eq!(call(&router, "GET", &path, None, "sk-bob").await.0, 404);
    assert_eq!(call(&router, "DELETE", &path, None, "sk-bob").await.0, 404);
    let (status, error) = call(&router, "POST", "/v1/responses", Some(&second), "sk-bob").await;
    assert_eq!((status, &error["error"]["param"]), (404, &json!("previous_response_id")), "{error}");

    // Deleted, it is gone; an unstored answer never was there.
    let (status, deleted) = call(&router, "DELETE", &path, None, "sk-alice").await;
    assert_eq!((status, deleted), (200, json!({ "id": id, "object": "response", "deleted": true })));
    assert_eq!(call(&router, "GET", &path, None, "sk-alice").await.0, 404);
    let unstored = json!({ "input": "w10", "max_output_tokens": 1, "store": false });
    let (_, unstored) = call(&router, "POST", "/v1/responses", Some(&unstored), "sk-alice").await;
    assert_eq!(unstored["store"], false);
    let path = format!("/v1/responses/{}", unstored["id"].as_str().expect("id"));
    let (status, error) = call(&router, "GET", &path, None, "sk-alice").await;
    assert_eq!((status, &error["error"]["code"]), (404, &json!("response_not_found")), "{error}");
}

#[tokio::test]
async fn router_replicas_share_the_responses_stored_in_redis() {
    let redis = RedisServer::start();
    let decode = InstantWorker::start("decode").await;
    let mut keys = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut keys, b"sk-alice alice\nsk-bob bob\n").expect("write keys");
    let replica = || RouterConfig {
        api_keys: Some(keys.path().to_owned()),
        responses_redis_url: Some(redis.url()),
        responses_ttl: Duration::from_secs(60),
        responses_key_prefix: "test:responses:".into(),
        // Nothing in memory: whatever a replica finds, it found in Redis.
        responses_store_bytes: 0,
        ..config(&[], &[&decode])
    };
    let (a, b) = (start_router(replica()).await, start_router(replica()).await);
    let sent_prompt = || decode.generates().last().and_then(|g| g.request.clone()).expect("request").prompt;

    // Turn 1 on replica a, streamed; b reads it back as a answered it.
    let first = &streamed_first_turn(a.http).await;
    let id = first["id"].as_str().expect("id");
    let path = format!("/v1/responses/{id}");
    assert_eq!(call(&b, "GET", &path, None, "sk-alice").await, (200, first.clone()));

    // Redis holds it under alice's key, with the deployment's prefix, for the configured time.
    let client = redis::Client::open(redis.url()).expect("url");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let ttl: i64 =
        redis::cmd("PTTL").arg(format!("test:responses:alice:{id}")).query_async(&mut conn).await.expect("PTTL");
    assert!((1..=60_000).contains(&ttl), "time to live {ttl} ms");

    // Turn 2 on b continues it exactly as a would.
    let second = json!({ "previous_response_id": id, "input": "w12", "max_output_tokens": 2 });
    let (status, on_b) = call(&b, "POST", "/v1/responses", Some(&second), "sk-alice").await;
    assert_eq!((status, &on_b["previous_response_id"]), (200, &json!(id)), "{on_b}");
    let continued_on_b = sent_prompt();
    assert_eq!(call(&a, "POST", "/v1/responses", Some(&second), "sk-alice").await.0, 200);
    assert_eq!(continued_on_b, sent_prompt(), "both replicas continue the same conversation");
    let items = format!("/v1/responses/{}/input_items", on_b["id"].as_str().expect("id"));
    let (status, list) = call(&a, "GET", &items, None, "sk-alice").await;
    assert_eq!((status, list["data"].as_array().map(Vec::len)), (200, Some(1)), "{list}");

    // Another tenant finds nothing on either replica; a deletion on one holds on the other.
    assert_eq!(call(&b, "GET", &path, None, "sk-bob").await.0, 404);
    let (status, error) = call(&b, "POST", "/v1/responses", Some(&second), "sk-bob").await;
    assert_eq!((status, &error["error"]["param"]), (404, &json!("previous_response_id")), "{error}");
    assert_eq!(call(&a, "DELETE", &path, None, "sk-bob").await.0, 404);
    assert_eq!(call(&a, "DELETE", &path, None, "sk-alice").await.0, 200);
    assert_eq!(call(&b, "GET", &path, None, "sk-alice").await.0, 404);

    // Redis gone: reads are a clear 503, and an answer is still given (only its storing fails).
    redis.kill();
    let (status, error) = call(&a, "GET", &items.replace("/input_items", ""), None, "sk-alice").await;
    assert_eq!(status, 503, "{error}");
    assert!(error["error"]["message"].as_str().is_some_and(|m| m.contains("response store")), "{error}");
    let (status, error) = call(&b, "POST", "/v1/responses", Some(&second), "sk-alice").await;
    assert_eq!(status, 503, "a follow-up cannot be continued without its predecessor: {error}");
    let fresh = json!({ "input": "w10", "max_output_tokens": 1 });
    let (status, answered) = call(&a, "POST", "/v1/responses", Some(&fresh), "sk-alice").await;
    assert_eq!((status, &answered["status"]), (200, &json!("incomplete")), "{answered}");
}
