//! The disaggregated stack as separate `lcserve` processes (kvstore, prefill, decode, router)
//! on loopback, killed on drop.
#![allow(dead_code)] // each test binary uses a different part

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lcserve_proto::v1::generation_client::GenerationClient;
use lcserve_proto::v1::{self, generate_request::Input, generate_response::Event};
use lcserve_svc_kit::Tls;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A loopback address nobody listens on right now.
fn free_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    format!("127.0.0.1:{port}")
}

/// A child process killed when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

/// Starts `lcserve <args> <common>` with `env`.
fn lcserve(args: &[String], common: &[String], env: &[(&str, &str)]) -> Service {
    let child = Command::new(env!("CARGO_BIN_EXE_lcserve"))
        .args(args)
        .args(common)
        .envs(env.iter().copied())
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn lcserve");
    Service(child)
}

/// kvstore, one prefill and one decode worker (16-token blocks, the reference model) and a
/// router disaggregating prompts of 16+ tokens. Services reach each other at
/// `<scheme>://localhost:<port>`.
pub struct Stack {
    /// The router's gRPC address, `<scheme>://localhost:<port>`.
    pub grpc_url: String,
    /// The decode worker's URL.
    pub decode_url: String,
    /// The router's HTTP front (plain HTTP when the scheme is `http`).
    http: String,
    _services: Vec<Service>,
}

impl Stack {
    /// Starts every service with `common` flags and `env` added (telemetry, TLS).
    pub fn start(scheme: &str, common: &[String], env: &[(&str, &str)]) -> Stack {
        let model = lcserve_tests::reference_model_path();
        let model = model.to_str().expect("utf-8 model path");
        let [kvstore, prefill, decode, http, grpc] = [(); 5].map(|()| free_addr());
        let url = |addr: &str| format!("{scheme}://localhost:{}", addr.rsplit(':').next().expect("port"));
        let (kvstore_url, prefill_url, decode_url, grpc_url) = (url(&kvstore), url(&prefill), url(&decode), url(&grpc));
        let worker = |role: &str, listen: &str| {
            owned(&[role, "--model", model, "--block-size", "16", "--kvstore", &kvstore_url, "--listen", listen])
        };
        let router = owned(&[
            "router",
            "--http",
            &http,
            "--grpc",
            &grpc,
            "--prefill",
            &prefill_url,
            "--decode",
            &decode_url,
            "--kvstore",
            &kvstore_url,
            "--disagg-min-tokens",
            "16",
        ]);
        let services = vec![
            lcserve(&owned(&["kvstore", "--listen", &kvstore]), common, env),
            lcserve(&worker("prefill", &prefill), common, env),
            lcserve(&worker("decode", &decode), common, env),
            lcserve(&router, common, env),
        ];
        Stack { grpc_url, decode_url, http, _services: services }
    }

    /// A client of the router's gRPC front once the router reports itself serving — the model
    /// described and a decode worker healthy (`tls`: the client side of an `https://` front).
    pub async fn client(&self, tls: Option<&Tls>) -> GenerationClient<tonic::transport::Channel> {
        let started = Instant::now();
        let service = "lcserve.v1.Generation".to_owned();
        loop {
            if let Ok(channel) = connect(&self.grpc_url, tls).await {
                let mut health = HealthClient::new(channel.clone());
                let check = health.check(HealthCheckRequest { service: service.clone() }).await;
                if check.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                    return GenerationClient::new(channel);
                }
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the router did not become ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the router counts both workers healthy in its `/metrics` (plain-HTTP stacks):
    /// the router serves once a decode worker is up, and a request routed before it has seen the
    /// prefill worker would be prefilled by the decode worker instead.
    pub async fn wait_for_both_workers(&self) {
        let addr = self.http.parse().expect("router HTTP address");
        let started = Instant::now();
        loop {
            let scrape = tokio::task::spawn_blocking(move || lcserve_tests::Cluster::http_get(addr, "/metrics"));
            let healthy = scrape.await.expect("scrape task").map_or(0, |(_, body)| {
                body.lines().filter(|l| l.starts_with("lcserve_router_worker_healthy{") && l.ends_with(" 1")).count()
            });
            if healthy == 2 {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "the router never saw both workers healthy");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A channel to `url` (TLS per [`lcserve_svc_kit::tls::endpoint`]); the error as text.
pub async fn connect(url: &str, tls: Option<&Tls>) -> Result<tonic::transport::Channel, String> {
    let endpoint = lcserve_svc_kit::tls::endpoint(url, tls).map_err(|e| e.to_string())?;
    endpoint.connect().await.map_err(|e| format!("{e:?}"))
}

/// Generates `max_tokens` tokens for a prompt long enough to be disaggregated; the completion
/// token count of the terminal usage.
pub async fn generate(
    client: &mut GenerationClient<tonic::transport::Channel>,
    max_tokens: u32,
) -> Result<u32, tonic::Status> {
    let prompt = "Tell me a short story about a lighthouse keeper who finds a message in a bottle on the shore.";
    let request = v1::GenerateRequest {
        input: Some(Input::Text(prompt.to_owned())),
        stop: Some(v1::StopConditions { max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }),
        ..Default::default()
    };
    let mut stream = client.generate(request).await?.into_inner();
    let mut completion = None;
    while let Some(response) = stream.message().await? {
        if let Some(Event::Finished(done)) = response.event {
            completion = done.usage.map(|usage| usage.completion_tokens);
        }
    }
    completion.ok_or_else(|| tonic::Status::internal("no Finished event with usage"))
}
