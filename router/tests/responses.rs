//! `POST /v1/responses` against an instant worker: the same answer as the chat endpoint gives,
//! whole and as the Responses API's events, and errors that name the Responses field.

mod support;

use serde_json::{Value, json};
use support::model::MODEL_ID;
use support::worker::InstantWorker;
use support::{config, post, start_router};

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
    assert_eq!((status, param), (400, json!("previous_response_id")));
    let (status, param, _) = refused(json!({ "input": [] })).await;
    assert_eq!((status, param), (400, json!("input")));
    let (status, param, _) =
        refused(json!({ "input": "w10", "text": { "format": { "type": "json_schema", "schema": 3 } } })).await;
    assert_eq!((status, param), (400, json!("text.format")));
    assert!(decode.generates().is_empty(), "nothing ran");
}
