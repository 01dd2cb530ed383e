//! Router test harness: instant workers, the real router on `127.0.0.1:0`, and small HTTP and
//! gRPC clients.
#![allow(dead_code)] // each test binary uses a different subset

pub mod model;
pub mod proxy;
pub mod worker;

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use lcserve_proto::v1::generation_client::GenerationClient;
use lcserve_proto::v1::{self, generate_response::Event};
use lcserve_router::{RouterConfig, RouterError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub use worker::InstantWorker;

/// Polls `condition` every 10 ms for up to 10 s.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Test defaults: fast polls, a low disaggregation threshold (16 tokens).
pub fn config(prefill: &[&InstantWorker], decode: &[&InstantWorker]) -> RouterConfig {
    RouterConfig {
        prefill: prefill.iter().map(|w| w.url.clone()).collect(),
        decode: decode.iter().map(|w| w.url.clone()).collect(),
        disagg_min_tokens: 16,
        poll_interval: Duration::from_millis(50),
        startup_timeout: Duration::from_secs(10),
        ..RouterConfig::default()
    }
}

/// A running router; stopped on drop.
pub struct TestRouter {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), RouterError>>>,
}

impl TestRouter {
    /// What `run` returned (waits for it, at most 10 s).
    pub async fn outcome(&mut self) -> Result<(), RouterError> {
        let handle = self.handle.take().expect("outcome asked once");
        tokio::time::timeout(Duration::from_secs(10), handle).await.expect("run returns").expect("run task")
    }

    /// Signals shutdown and waits for `run` to drain and return.
    pub async fn shutdown(mut self) -> Result<(), RouterError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.outcome().await
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = &self.handle {
            handle.abort();
        }
    }
}

/// A router over one instant decode worker, and that worker.
pub async fn one_decode() -> (InstantWorker, TestRouter) {
    let decode = InstantWorker::start("decode").await;
    let router = start_router(config(&[], &[&decode])).await;
    (decode, router)
}

/// A router over `decode` that admits the keys of `keys`, a keys file's text (`KEY TENANT`
/// lines; the router reads the file as it starts).
pub async fn start_router_with_keys(decode: &InstantWorker, keys: &str) -> TestRouter {
    let mut file = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut file, keys.as_bytes()).expect("write keys");
    start_router(RouterConfig { api_keys: Some(file.path().to_owned()), ..config(&[], &[decode]) }).await
}

/// Starts the router and waits until every configured worker is healthy.
pub async fn start_router(config: RouterConfig) -> TestRouter {
    let workers = (config.prefill.len() + config.decode.len()) as f64;
    let router = start_router_ready(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(router.http, "lcserve_router_worker_healthy", "").await < workers {
        assert!(tokio::time::Instant::now() < deadline, "workers never all became healthy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router
}

/// Starts the router and waits until `/ready` (one decode worker healthy).
pub async fn start_router_ready(config: RouterConfig) -> TestRouter {
    let router = spawn_router(config).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while get(router.http, "/ready").await.status != 200 {
        assert!(tokio::time::Instant::now() < deadline, "router never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    router
}

/// Starts the router without waiting for anything.
pub async fn spawn_router(config: RouterConfig) -> TestRouter {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind grpc");
    let (http_addr, grpc_addr) = (http.local_addr().expect("addr"), grpc.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(lcserve_router::run(config, http, grpc, async {
        let _ = stopped.await;
    }));
    TestRouter { http: http_addr, grpc: grpc_addr, stop: Some(stop), handle: Some(handle) }
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub content_type: String,
    pub retry_after: Option<String>,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.body.lines().filter_map(|line| line.strip_prefix("data: ")).map(str::to_owned).collect()
    }
}

thread_local! {
    /// One pooled client per thread: each test has its own thread and runtime, and a pooled
    /// connection must not outlive the runtime that drives it.
    static CLIENT: Client<HttpConnector, Full<Bytes>> = {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new()).build(connector)
    };
}

fn client() -> Client<HttpConnector, Full<Bytes>> {
    CLIENT.with(Client::clone)
}

/// Sends a request and returns the response with its body still streaming.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> hyper::Response<Incoming> {
    let mut request = hyper::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).expect("request");
    client().request(request).await.expect("HTTP request")
}

pub async fn read(response: hyper::Response<Incoming>) -> HttpResponse {
    let status = response.status().as_u16();
    let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (content_type, retry_after) = (header("content-type").unwrap_or_default(), header("retry-after"));
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    HttpResponse { status, content_type, retry_after, body: String::from_utf8_lossy(&bytes).into_owned() }
}

pub async fn post(addr: SocketAddr, path: &str, body: &str) -> HttpResponse {
    read(send(addr, "POST", path, body.to_owned(), &[("content-type", "application/json")]).await).await
}

pub async fn post_as(addr: SocketAddr, path: &str, body: &str, key: &str) -> HttpResponse {
    let auth = format!("Bearer {key}");
    read(
        send(addr, "POST", path, body.to_owned(), &[("content-type", "application/json"), ("authorization", &auth)])
            .await,
    )
    .await
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    read(send(addr, "GET", path, Bytes::new(), &[]).await).await
}

/// The value of an unlabelled metric, or the sum over its label sets matching `labels`.
pub async fn metric(addr: SocketAddr, name: &str, labels: &str) -> f64 {
    let text = get(addr, "/metrics").await.body;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            series == &name
                || series.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') && rest.contains(labels))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum()
}

pub async fn grpc(router: &TestRouter) -> GenerationClient<Channel> {
    GenerationClient::connect(format!("http://{}", router.grpc)).await.expect("gRPC connect")
}

/// A text completion request for the gRPC API.
pub fn text_request(text: &str, max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(v1::generate_request::Input::Text(text.into())),
        stop: Some(v1::StopConditions { max_tokens: Some(max_tokens), ..Default::default() }),
        ..Default::default()
    }
}

/// Every event of a gRPC stream: the tokens, then the terminal event.
pub async fn drain(mut stream: tonic::Streaming<v1::GenerateResponse>) -> (Vec<v1::Token>, Event) {
    let mut tokens = Vec::new();
    while let Some(message) = stream.message().await.expect("stream") {
        match message.event.expect("event") {
            Event::Token(token) => tokens.push(token),
            terminal => return (tokens, terminal),
        }
    }
    panic!("stream ended without a terminal event");
}
