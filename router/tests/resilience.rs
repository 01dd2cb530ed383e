//! Placement and failure handling against instant workers: routing policies, retry before the
//! first token, migration mid-stream, cancellation, deadlines, unusable workers.

mod support;

use std::time::Duration;

use lcserve_proto::v1::generate_response::Event;
use lcserve_proto::v1::{self, ErrorCode};
use lcserve_router::{Policy, RouterConfig};
use serde_json::json;
use support::model::{MODEL_ID, model_info, words};
use support::*;

/// The instant worker's output for a prompt: `prompt[k % len]` at position k.
fn echo(prompt: &[u32], n: usize) -> Vec<u32> {
    (0..n).map(|k| prompt[k % prompt.len()]).collect()
}

fn with_bos(ids: impl IntoIterator<Item = u32>) -> Vec<u32> {
    std::iter::once(1).chain(ids).collect()
}

async fn generate(router: &TestRouter, text: &str, max_tokens: u32) -> (Vec<u32>, Event) {
    let mut client = grpc(router).await;
    let (tokens, end) =
        drain(client.generate(text_request(text, max_tokens)).await.expect("generate").into_inner()).await;
    (tokens.iter().map(|t| t.id).collect(), end)
}

#[tokio::test]
async fn round_robin_alternates() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    let router = start_router(RouterConfig { policy: Policy::RoundRobin, ..config(&[], &[&a, &b]) }).await;
    for i in 0..6 {
        generate(&router, &format!("w{}", 10 + i), 1).await;
    }
    assert_eq!((a.generates().len(), b.generates().len()), (3, 3));
}

#[tokio::test]
async fn least_loaded_follows_reported_load() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    a.set(|w| w.load = v1::Load { running: 8, waiting: 2, ..Default::default() });
    let router = start_router(RouterConfig { policy: Policy::LeastLoaded, ..config(&[], &[&a, &b]) }).await;
    tokio::time::sleep(Duration::from_millis(150)).await; // a few polls
    for i in 0..4 {
        generate(&router, &format!("w{}", 10 + i), 1).await;
    }
    assert_eq!((a.generates().len(), b.generates().len()), (0, 4));
}

#[tokio::test]
async fn kv_aware_keeps_a_prefix_on_one_worker_until_its_queue_outweighs_it() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    let router = start_router(config(&[], &[&a, &b])).await;
    let shared_prefix = words(100..112);
    for i in 0..4 {
        generate(&router, &format!("{shared_prefix} w{}", 200 + i), 1).await;
    }
    let counts = (a.generates().len(), b.generates().len());
    assert!(counts == (4, 0) || counts == (0, 4), "a shared prefix sticks to one worker: {counts:?}");
    let (holder, other) = if counts.0 == 4 { (&a, &b) } else { (&b, &a) };
    holder.set(|w| w.load = v1::Load { queued_prefill_tokens: 10_000, ..Default::default() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    generate(&router, &format!("{shared_prefix} w300"), 1).await;
    assert_eq!(other.generates().len(), 1, "a long queue outweighs the cached prefix");
}

#[tokio::test]
async fn kv_aware_sends_the_next_turn_to_the_worker_holding_the_answer() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    let router = start_router(config(&[], &[&a, &b])).await;
    // A one-block prompt and a 40-token answer: nearly all the blocks the next turn can find
    // cached are the answer's.
    let turn_one: Vec<u32> = (100..105).collect();
    let (answer, _) = generate_ids(&router, &turn_one, 40).await;
    let (holder, other) = if a.generates().len() == 1 { (&a, &b) } else { (&b, &a) };
    // Some queued work on the holder: without the answer's blocks the other worker is cheaper.
    holder.set(|w| w.load = v1::Load { queued_prefill_tokens: 8, ..Default::default() });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let turn_two: Vec<u32> = turn_one.iter().chain(&answer).copied().chain([500, 501]).collect();
    generate_ids(&router, &turn_two, 1).await;
    assert_eq!((holder.generates().len(), other.generates().len()), (2, 0), "turn two follows the answer");
}

async fn generate_ids(router: &TestRouter, ids: &[u32], max_tokens: u32) -> (Vec<u32>, Event) {
    let request = v1::GenerateRequest {
        input: Some(v1::generate_request::Input::TokenIds(v1::TokenIds { ids: ids.to_vec() })),
        ..text_request("", max_tokens)
    };
    let mut client = grpc(router).await;
    let (tokens, end) = drain(client.generate(request).await.expect("generate").into_inner()).await;
    (tokens.iter().map(|t| t.id).collect(), end)
}

#[tokio::test]
async fn prefill_failure_is_retried_on_another_worker() {
    let (p1, p2) = (InstantWorker::start("prefill").await, InstantWorker::start("prefill").await);
    let decode = InstantWorker::start("decode").await;
    p1.set(|w| w.fail_run = true);
    // Round-robin starts at the first worker: the failing one.
    let router = start_router(RouterConfig { policy: Policy::RoundRobin, ..config(&[&p1, &p2], &[&decode]) }).await;
    let prompt = words(100..120);
    let (ids, end) = generate(&router, &prompt, 4).await;
    assert_eq!(ids, echo(&with_bos(100..120), 4));
    assert!(matches!(end, Event::Finished(_)), "{end:?}");
    assert_eq!((p1.runs(), p2.runs()), (1, 1), "one failure, one retry");
    assert_eq!(metric(router.http, "lcserve_router_retries_total", "kind=\"prefill\"").await, 1.0);
    assert_eq!(decode.generates()[0].generated, vec![1]);
}

#[tokio::test]
async fn without_a_prefill_worker_left_decode_prefills_itself() {
    let prefill = InstantWorker::start("prefill").await;
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[&prefill], &[&decode])).await;
    prefill.set(|w| w.fail_run = true);
    let (ids, _) = generate(&router, &words(100..120), 3).await;
    assert_eq!(ids, echo(&with_bos(100..120), 3));
    let sent = decode.generates();
    assert!(sent[0].session.is_none() && sent[0].generated.is_empty(), "{:?}", sent[0]);
}

#[tokio::test]
async fn decode_failure_before_the_first_token_is_retried_once() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    a.set(|w| w.fail_before_first = true);
    let router = start_router(RouterConfig { policy: Policy::RoundRobin, ..config(&[], &[&a, &b]) }).await;
    let (ids, end) = generate(&router, "w10 w11", 5).await;
    assert_eq!(ids, echo(&[1, 10, 11], 5));
    assert!(matches!(end, Event::Finished(_)));
    assert_eq!((a.generates().len(), b.generates().len()), (1, 1));

    b.set(|w| w.fail_before_first = true);
    tokio::time::sleep(Duration::from_millis(200)).await; // `a` is polled healthy again
    let (ids, end) = generate(&router, "w10 w11", 5).await;
    assert!(ids.is_empty());
    let Event::Error(error) = end else { panic!("expected an error, got {end:?}") };
    assert_eq!(error.code, ErrorCode::Unavailable as i32);
    assert!(error.retryable);
    let response = post(router.http, "/v1/completions", r#"{"prompt":"w10","max_tokens":2}"#).await;
    assert_eq!(response.status, 503, "{}", response.body);
}

#[tokio::test]
async fn a_broken_stream_migrates_to_another_worker() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    a.set(|w| w.fail_after = Some(3));
    let router = start_router(RouterConfig { policy: Policy::RoundRobin, ..config(&[], &[&a, &b]) }).await;
    let (ids, end) = generate(&router, "w10 w11 w12", 10).await;
    assert_eq!(ids, echo(&[1, 10, 11, 12], 10), "the client sees one seamless stream");
    let Event::Finished(finished) = end else { panic!("expected Finished, got {end:?}") };
    assert_eq!(finished.usage.map(|u| u.completion_tokens), Some(10));
    let resumed = &b.generates()[0];
    assert_eq!(resumed.generated, vec![1, 10, 11], "the new worker continues after the streamed tokens");
    assert!(resumed.session.is_none());
    assert_eq!(metric(router.http, "lcserve_router_retries_total", "kind=\"migration\"").await, 1.0);
}

#[tokio::test]
async fn a_crashed_worker_mid_stream_migrates_too() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    a.set(|w| w.token_delay = Duration::from_millis(30));
    // The router reaches `a` through a proxy whose connections can be cut, as a crash would.
    let path_to_a = proxy::Proxy::start(&a.url).await;
    let config = RouterConfig { policy: Policy::RoundRobin, ..config(&[], &[&a, &b]) };
    let config = RouterConfig { decode: vec![path_to_a.url.clone(), b.url.clone()], ..config };
    let router = start_router(config).await;
    let mut client = grpc(&router).await;
    let mut stream = client.generate(text_request("w10 w11 w12", 12)).await.expect("generate").into_inner();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        if let Some(Event::Token(token)) = stream.message().await.expect("message").and_then(|m| m.event) {
            ids.push(token.id);
        }
    }
    path_to_a.cut();
    let (rest, end) = drain(stream).await;
    ids.extend(rest.iter().map(|t| t.id));
    assert!(matches!(end, Event::Finished(_)), "{end:?}");
    assert_eq!(ids, echo(&[1, 10, 11, 12], 12));
    assert!(b.generates()[0].generated.len() >= 2);
}

#[tokio::test]
async fn an_overloaded_worker_sends_the_request_elsewhere_and_stays_in_rotation() {
    let (a, b) = (InstantWorker::start("decode").await, InstantWorker::start("decode").await);
    a.set(|w| w.overloaded = true);
    let router = start_router(RouterConfig { policy: Policy::RoundRobin, ..config(&[], &[&a, &b]) }).await;
    for _ in 0..2 {
        let (ids, end) = generate(&router, "w10 w11", 5).await;
        assert_eq!(ids, echo(&[1, 10, 11], 5));
        assert!(matches!(end, Event::Finished(_)), "{end:?}");
    }
    let asked = a.generates().len();
    assert!(asked >= 1 && b.generates().len() == 2, "each asked {asked} time(s) of `a` went on to `b`");
    a.set(|w| w.overloaded = false);
    for _ in 0..2 {
        generate(&router, "w10 w11", 5).await;
    }
    assert!(a.generates().len() > asked, "busy is not broken: it is still in rotation");

    // The whole fleet overloaded: a retryable error, 503 over HTTP.
    a.set(|w| w.overloaded = true);
    b.set(|w| w.overloaded = true);
    let (ids, end) = generate(&router, "w10 w11", 5).await;
    assert!(ids.is_empty());
    let Event::Error(error) = end else { panic!("expected an error, got {end:?}") };
    assert!(error.retryable && error.message.contains("queue is full"), "{error:?}");
    let response = post(router.http, "/v1/completions", r#"{"prompt":"w10","max_tokens":2}"#).await;
    assert_eq!(response.status, 503, "{}", response.body);
    assert_eq!(response.retry_after.as_deref(), Some("1"), "clients are told when to come back");
}

#[tokio::test]
async fn with_no_worker_left_the_stream_ends_with_a_retryable_error() {
    let decode = InstantWorker::start("decode").await;
    decode.set(|w| w.fail_after = Some(2));
    let router = start_router(config(&[], &[&decode])).await;
    let (ids, end) = generate(&router, "w10 w11", 8).await;
    assert_eq!(ids.len(), 2);
    let Event::Error(error) = end else { panic!("expected an error, got {end:?}") };
    assert_eq!((error.code, error.retryable), (ErrorCode::Unavailable as i32, true));
    // The same over SSE: an error chunk, then [DONE].
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = json!({ "prompt": "w10 w11", "max_tokens": 8, "stream": true }).to_string();
    let data = post(router.http, "/v1/completions", &body).await.sse_data();
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data[data.len() - 2].contains("\"error\""), "{data:?}");
}

#[tokio::test]
async fn client_disconnect_aborts_the_worker_request() {
    let decode = InstantWorker::start("decode").await;
    decode.set(|w| w.token_delay = Duration::from_millis(20));
    let router = start_router(config(&[], &[&decode])).await;

    let mut client = grpc(&router).await;
    let mut stream = client.generate(text_request("w10 w11", 1000)).await.expect("generate").into_inner();
    stream.message().await.expect("first").expect("a token");
    drop(stream);
    eventually("gRPC cancel to reach the worker", || !decode.aborts().is_empty()).await;
    eventually("the worker stream to be dropped", || {
        decode.record().dropped_streams.load(std::sync::atomic::Ordering::Relaxed) >= 1
    })
    .await;

    let body = json!({ "model": MODEL_ID, "prompt": "w10 w11", "max_tokens": 1000, "stream": true }).to_string();
    let mut response =
        send(router.http, "POST", "/v1/completions", body, &[("content-type", "application/json")]).await;
    use http_body_util::BodyExt;
    response.body_mut().frame().await.expect("a chunk").expect("ok");
    drop(response);
    eventually("SSE cancel to reach the worker", || decode.aborts().len() >= 2).await;

    // A non-streaming client that hangs up while the answer is being generated.
    let body = json!({ "prompt": "w10 w11", "max_tokens": 1000 }).to_string();
    let addr = router.http;
    let waiting = tokio::spawn(async move { post(addr, "/v1/completions", &body).await });
    eventually("the request to reach the worker", || decode.generates().len() >= 3).await;
    waiting.abort();
    eventually("JSON cancel to reach the worker", || decode.aborts().len() >= 3).await;
    assert!(metric(router.http, "lcserve_router_requests_total", "status=\"cancelled\"").await >= 3.0);
}

/// With `n` choices, a client that hangs up while choice 0 still waits for its first token
/// cancels it at once, and the other choices never start.
#[tokio::test]
async fn a_client_gone_before_the_first_token_cancels_every_choice() {
    let decode = InstantWorker::start("decode").await;
    decode.set(|w| w.token_delay = Duration::from_secs(30));
    let router = start_router(config(&[], &[&decode])).await;
    let body = json!({ "prompt": "w10 w11", "max_tokens": 4, "n": 3 }).to_string();
    let addr = router.http;
    let waiting = tokio::spawn(async move { post(addr, "/v1/completions", &body).await });
    eventually("choice 0 to reach the worker", || !decode.generates().is_empty()).await;
    waiting.abort();
    eventually("the cancel to reach the worker before any token", || !decode.aborts().is_empty()).await;
    assert_eq!(decode.generates().len(), 1, "choices 1 and 2 never started");
}

#[tokio::test]
async fn deadlines_end_requests_and_abort_workers() {
    let decode = InstantWorker::start("decode").await;
    decode.set(|w| w.token_delay = Duration::from_millis(50));
    let router =
        start_router(RouterConfig { request_timeout: Duration::from_millis(300), ..config(&[], &[&decode]) }).await;
    let response = post(router.http, "/v1/completions", r#"{"prompt":"w10","max_tokens":100}"#).await;
    assert_eq!(response.status, 504, "{}", response.body);
    eventually("the worker to be aborted", || !decode.aborts().is_empty()).await;

    // A client's grpc-timeout shortens the router's own budget.
    let router = start_router(config(&[], &[&decode])).await;
    let mut client = grpc(&router).await;
    let mut request = tonic::Request::new(text_request("w10", 100));
    request.set_timeout(Duration::from_millis(200));
    let (tokens, end) = drain(client.generate(request).await.expect("generate").into_inner()).await;
    assert!(tokens.len() < 100);
    let Event::Error(error) = end else { panic!("expected DEADLINE_EXCEEDED, got {end:?}") };
    assert_eq!(error.code, ErrorCode::DeadlineExceeded as i32);
}

#[tokio::test]
async fn workers_serving_another_model_are_not_used() {
    let good = InstantWorker::start("decode").await;
    let other = InstantWorker::start_with(v1::ModelInfo { fingerprint: vec![8; 16], ..model_info("decode") }).await;
    other.set(|w| w.info_delay = Duration::from_millis(300)); // the good worker defines the model
    let router = start_router_ready(config(&[], &[&good, &other])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..4 {
        generate(&router, &format!("w{}", 10 + i), 1).await;
    }
    assert_eq!((good.generates().len(), other.generates().len()), (4, 0));
    let healthy = format!("worker=\"{}\"", other.url);
    assert_eq!(metric(router.http, "lcserve_router_worker_healthy", &healthy).await, 0.0);
}

#[tokio::test]
async fn shutdown_drains_and_returns() {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[], &[&decode])).await;
    generate(&router, "w10", 2).await;
    router.shutdown().await.expect("clean shutdown");
}
