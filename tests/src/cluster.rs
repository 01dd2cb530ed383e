//! [`Cluster`]: kvstore (+ Redis), workers and router, each on its own runtime. The kvstore and
//! every worker also serve Prometheus `GET /metrics` on a port of their own, as `lcserve
//! kvstore|prefill|decode --metrics-listen` does; the router serves it on its HTTP address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lcserve_engine::EngineConfig;
use lcserve_kvstore::{Codec, KvStoreConfig, RawDtype, RedisTierConfig, RemoteTierConfig};
use lcserve_model::Model;
use lcserve_proto::v1::generation_client::GenerationClient;
use lcserve_router::{Policy, RouterConfig};
use lcserve_worker::{Role, Worker, WorkerConfig, WorkerError};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::redis::RedisServer;

/// The reference model fetched by `scripts/fetch-model`.
pub fn reference_model_path() -> PathBuf {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/smollm2-135m-instruct.Q4_1.gguf");
    std::env::var_os("LCSERVE_MODEL_DIR").map_or(default, |d| PathBuf::from(d).join("smollm2-135m-instruct.Q4_1.gguf"))
}

/// The shape of a test deployment.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub prefill_workers: usize,
    pub decode_workers: usize,
    pub block_size: usize,
    pub codec: Codec,
    pub redis: bool,
    pub policy: Policy,
    pub disagg_min_tokens: usize,
    pub api_keys: Option<PathBuf>,
}

impl Default for ClusterConfig {
    /// One prefill and one decode worker, 16-token blocks (so 8 blocks are a short prompt),
    /// lossless blocks, Redis behind the kvstore, every prompt of 32+ tokens disaggregated.
    fn default() -> Self {
        Self {
            prefill_workers: 1,
            decode_workers: 1,
            block_size: 16,
            codec: Codec::Raw(RawDtype::F32),
            redis: true,
            policy: Policy::KvAware,
            disagg_min_tokens: 32,
            api_keys: None,
        }
    }
}

/// A running worker.
#[allow(missing_debug_implementations)]
pub struct Node {
    pub url: String,
    /// Where the worker serves `GET /metrics`.
    pub metrics: SocketAddr,
    pub worker: Arc<Worker>,
    runtime: Option<Runtime>,
    /// Its server's shutdown signal (what SIGTERM is to `lcserve decode`).
    stop: Option<oneshot::Sender<()>>,
    served: Option<JoinHandle<Result<(), WorkerError>>>,
}

impl Node {
    /// Sends the worker the shutdown signal SIGTERM sends `lcserve prefill|decode`: it takes no
    /// new requests and finishes those in flight (see [`Node::stopped`]).
    pub fn drain(&mut self) {
        self.stop.take();
    }

    /// Waits at most `timeout` for the worker's `run` to return after [`Node::drain`], then
    /// ends its runtime as the process's exit would; `run`'s result, `None` if it was still
    /// running.
    pub fn stopped(&mut self, timeout: Duration) -> Option<Result<(), WorkerError>> {
        let (runtime, served) = (self.runtime.as_ref()?, self.served.take()?);
        let result = runtime.block_on(async { tokio::time::timeout(timeout, served).await.ok() });
        self.kill();
        result.map(|joined| joined.expect("the worker's run does not panic"))
    }

    /// Stops the worker like a crash: its runtime is torn down with every connection on it.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A whole deployment; dropping it stops everything.
#[allow(missing_debug_implementations)]
pub struct Cluster {
    pub model: Arc<Model>,
    pub config: ClusterConfig,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub kvstore: String,
    /// Where the kvstore serves `GET /metrics`.
    pub kvstore_metrics: SocketAddr,
    pub prefill: Vec<Node>,
    pub decode: Vec<Node>,
    runtimes: Vec<Runtime>,
    _redis: Option<RedisServer>,
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime")
}

impl Cluster {
    /// Starts a deployment of the reference model and waits until the router answers.
    pub fn start(config: ClusterConfig) -> Cluster {
        let model = Arc::new(
            Model::load(&reference_model_path(), &mut |_| {}).expect("reference model: run scripts/fetch-model"),
        );
        let redis = config.redis.then(RedisServer::start);

        let kv_runtime = runtime();
        let (kv_listener, kv_metrics_listener) = kv_runtime.block_on(async { (bind().await, bind().await) });
        let kvstore = format!("http://{}", kv_listener.local_addr().expect("addr"));
        let kvstore_metrics = kv_metrics_listener.local_addr().expect("addr");
        let kv_config = KvStoreConfig {
            redis: redis.as_ref().map(|r| RedisTierConfig::new(r.url().as_str())),
            ..KvStoreConfig::default()
        };
        kv_runtime.spawn(lcserve_kvstore::run_with_metrics(
            kv_config,
            kv_listener,
            Some(kv_metrics_listener),
            std::future::pending(),
        ));

        let start_node = |role| {
            let engine = EngineConfig {
                block_size: config.block_size,
                kv_cache_bytes: 512 << 20,
                threads: 2,
                ..EngineConfig::default()
            };
            let worker_config = WorkerConfig {
                kvstore: Some(RemoteTierConfig::new(&kvstore)),
                codec: config.codec,
                host_cache_bytes: 256 << 20,
                ..WorkerConfig::new(role, "smollm2", engine)
            };
            let rt = runtime();
            let (worker, listener, metrics_listener) = rt.block_on(async {
                let worker = Worker::start(Arc::clone(&model), worker_config).expect("worker");
                (worker, bind().await, bind().await)
            });
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let metrics = metrics_listener.local_addr().expect("addr");
            let (stop, stopped) = oneshot::channel::<()>();
            let served = rt.spawn(lcserve_worker::run(Arc::clone(&worker), listener, async move {
                let _ = stopped.await;
            }));
            rt.spawn(lcserve_svc_kit::metrics::serve_metrics(
                metrics_listener,
                Arc::clone(&worker),
                std::future::pending(),
            ));
            Node { url, metrics, worker, runtime: Some(rt), stop: Some(stop), served: Some(served) }
        };
        let prefill: Vec<Node> = (0..config.prefill_workers).map(|_| start_node(Role::Prefill)).collect();
        let decode: Vec<Node> = (0..config.decode_workers).map(|_| start_node(Role::Decode)).collect();

        let router_runtime = runtime();
        let (http, grpc) = router_runtime.block_on(async { (bind().await, bind().await) });
        let (http_addr, grpc_addr) = (http.local_addr().expect("addr"), grpc.local_addr().expect("addr"));
        let router_config = RouterConfig {
            prefill: prefill.iter().map(|n| n.url.clone()).collect(),
            decode: decode.iter().map(|n| n.url.clone()).collect(),
            kvstore: Some(kvstore.clone()),
            policy: config.policy,
            disagg_min_tokens: config.disagg_min_tokens,
            api_keys: config.api_keys.clone(),
            poll_interval: Duration::from_millis(100),
            ..RouterConfig::default()
        };
        router_runtime.spawn(async move {
            if let Err(error) = lcserve_router::run(router_config, http, grpc, std::future::pending()).await {
                panic!("router: {error}");
            }
        });
        let cluster = Cluster {
            model,
            config,
            http: http_addr,
            grpc: grpc_addr,
            kvstore,
            kvstore_metrics,
            prefill,
            decode,
            runtimes: vec![router_runtime, kv_runtime],
            _redis: redis,
        };
        cluster.wait_ready();
        cluster
    }

    /// Status code and body of a plain `GET path` (HTTP/1.1 with `Connection: close`, so the body
    /// is everything after the head; no client library needed for a probe or a scrape).
    pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.get(9..12)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_owned();
        Some((status, body))
    }

    /// A runtime for the test's own client code.
    pub fn client_runtime(&self) -> Runtime {
        runtime()
    }

    /// A gRPC `Generation` client of the router.
    pub async fn generation(&self) -> GenerationClient<Channel> {
        let channel =
            Channel::from_shared(format!("http://{}", self.grpc)).expect("url").connect().await.expect("connect");
        GenerationClient::new(channel)
    }

    /// Waits until the router's `/ready` says yes and it has seen every worker healthy: one
    /// decode worker is enough to be ready, but a test that expects the prefill worker to take
    /// its first prompt must not race the router's first poll of it.
    fn wait_ready(&self) {
        let workers = self.prefill.len() + self.decode.len();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_status(self.http, "/ready") == Some(200) && self.healthy_workers() == workers {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the router never became ready with all {workers} workers healthy");
    }

    /// How many workers the router's `/metrics` reports healthy.
    fn healthy_workers(&self) -> usize {
        let Some((200, body)) = Cluster::http_get(self.http, "/metrics") else { return 0 };
        body.lines().filter(|l| l.starts_with("lcserve_router_worker_healthy{") && l.ends_with(" 1")).count()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.prefill.iter_mut().chain(&mut self.decode) {
            node.kill();
        }
        for runtime in self.runtimes.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// Status code of a plain `GET path`.
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    Cluster::http_get(addr, path).map(|(status, _)| status)
}
