//! The router: lcserve's public front. It holds no model; it tokenizes, validates, places each
//! request on workers and relays their tokens.
//!
//! ```text
//!  gRPC Generation (grpc)    OpenAI HTTP (http/)
//!            \                 /
//!   auth ─▶ prepare (tokenize + validate + block hashes, on a blocking thread)
//!            │
//!          flow/ ── policy (round-robin | least-loaded | kv-aware)
//!            │        ▲ registry (health + load from GetLoad polls, in-flight counts)
//!            │        ▲ index (shared tier: kvstore events; device tier: what we routed)
//!            ▼
//!   Prefill.Run ─▶ Decode.Generate stream ─▶ events ─▶ client (retry, migration, abort)
//! ```
//!
//! - [`config`]: [`RouterConfig`] and its flags [`RouterArgs`].
//! - `auth`: API keys → tenant → namespace salt.
//! - `model` + `poller`: the served model from the first worker's `GetModelInfo`; every worker
//!   checked against it and polled for load.
//! - `prepare` + `validate`: one validated, tokenized request for both fronts.
//! - `index`, `policy`, `registry`: where the prompt is cached, who is healthy, who is chosen.
//! - `flow`: one request's life, as a task feeding a channel of events.
//! - `grpc`, `http`: the two fronts; `metrics`: Prometheus text on `/metrics`.
//!
//! [`run`] serves both fronts until `shutdown` completes.
#![forbid(unsafe_code)]

mod auth;
pub mod config;
mod error;
mod flow;
mod grpc;
mod http;
mod index;
mod metrics;
mod model;
mod policy;
mod poller;
mod prepare;
mod registry;
mod validate;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use lcserve_proto::v1::{self, generate_response::Event, generation_server::GenerationServer};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::transport::server::TcpIncoming;

pub use config::{Policy, RouterArgs, RouterConfig, parse_duration};
pub use error::{ErrorClass, Field, RouterError};
pub use policy::{DEVICE_CREDIT, SHARED_CREDIT};

use crate::auth::{Auth, Tenant};
use crate::http::ResponseStore;
use crate::index::PrefixIndex;
use crate::metrics::{Endpoint, Metrics};
use crate::model::{ModelSlot, ServedModel};
use crate::registry::{Registry, Role};
use crate::validate::Limits;

/// Locks a mutex, ignoring poisoning: every critical section here leaves its data consistent
/// between statements, so a panic elsewhere does not corrupt it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by both fronts and the background tasks.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: RouterConfig,
    pub auth: Auth,
    pub model: Arc<ModelSlot>,
    pub registry: Registry,
    pub index: PrefixIndex,
    pub metrics: Metrics,
    pub responses: ResponseStore,
}

/// The router's metrics for OTLP export (the HTTP front serves the same on `/metrics`).
impl lcserve_svc_kit::metrics::MetricsSource for Shared {
    async fn refresh(&self) {
        self.metrics.refresh(&self.registry.workers, lock(&self.index.shared).len());
    }

    fn registry(&self) -> &prometheus_client::registry::Registry {
        self.metrics.registry()
    }
}

impl Shared {
    fn new(config: RouterConfig) -> Result<Self, RouterError> {
        let auth = Auth::load(config.api_keys.as_deref())?;
        let registry = Registry::new(&config)?;
        let index = PrefixIndex::new(registry.workers.len(), config.worker_index_blocks);
        let model = Arc::new(ModelSlot::new(config.model_id.clone()));
        let metrics = Metrics::new(&index.subscriber);
        let responses = match &config.responses_redis_url {
            Some(url) => ResponseStore::in_redis(url, &config)?,
            None => ResponseStore::in_memory(config.responses_store_bytes, config.responses_ttl),
        };
        Ok(Shared { config, auth, model, registry, index, metrics, responses })
    }

    /// The served model, or [`RouterError::NotReady`] before a worker has described it.
    pub fn served(&self) -> Result<Arc<ServedModel>, RouterError> {
        self.model.get().ok_or(RouterError::NotReady)
    }

    /// Model described and at least one decode worker healthy.
    pub fn ready(&self) -> bool {
        self.model.get().is_some() && !self.registry.healthy(Role::Decode, &[]).is_empty()
    }

    fn limits(&self, model: &ServedModel) -> Limits {
        Limits {
            context_length: model.context_length,
            vocab_size: model.vocab_size,
            max_tokens_limit: self.config.max_tokens_limit,
            default_max_tokens: self.config.default_max_tokens,
        }
    }

    /// Validates and tokenizes `request`, then starts its flow; errors here happen before any
    /// event, so the fronts can answer them with a status (gRPC) or an error body (HTTP).
    pub async fn start(
        self: Arc<Self>,
        model: Arc<ServedModel>,
        tenant: &Tenant,
        request: v1::GenerateRequest,
        client_timeout: Option<Duration>,
        endpoint: Endpoint,
    ) -> Result<mpsc::Receiver<Event>, RouterError> {
        let admitted = self.admit(model, tenant, request, client_timeout).await?;
        Ok(self.launch(admitted, endpoint))
    }

    /// Validates and tokenizes `request` within its deadline, with a decode worker to take it.
    async fn admit(
        &self,
        model: Arc<ServedModel>,
        tenant: &Tenant,
        request: v1::GenerateRequest,
        client_timeout: Option<Duration>,
    ) -> Result<Admitted, RouterError> {
        let budget = client_timeout.map_or(self.config.request_timeout, |t| t.min(self.config.request_timeout));
        let received = Instant::now();
        let deadline = received + budget;
        let limits = self.limits(&model);
        let prepared = tokio::time::timeout_at(deadline, prepare::prepare(model, limits, tenant, request))
            .await
            .map_err(|_| RouterError::DeadlineExceeded(budget))??;
        if self.registry.healthy(Role::Decode, &[]).is_empty() {
            return Err(RouterError::NoWorker { role: "decode" });
        }
        Ok(Admitted { prepared, received, deadline })
    }

    /// Starts an admitted request's flow.
    fn launch(self: Arc<Self>, admitted: Admitted, endpoint: Endpoint) -> mpsc::Receiver<Event> {
        let Admitted { prepared, received, deadline } = admitted;
        flow::start(self, prepared, received, deadline, endpoint)
    }
}

/// A request that passed validation: prepared for the workers, with its arrival and deadline.
#[derive(Clone, Debug)]
struct Admitted {
    prepared: prepare::Prepared,
    received: Instant,
    deadline: Instant,
}

impl Admitted {
    /// The same request as choice `index` of several (OpenAI `n`), sharing its deadline: a
    /// request id of its own, and its seed, if any, advanced by the index.
    fn choice(&self, index: usize) -> Admitted {
        let mut choice = self.clone();
        let request = &mut choice.prepared.request;
        request.request_id = format!("{}-{index}", request.request_id);
        if let Some(seed) = request.sampling.as_mut().and_then(|s| s.seed.as_mut()) {
            *seed = seed.wrapping_add(index as u64);
        }
        choice
    }
}

/// Accepted connections with `TCP_NODELAY`: tokens are small messages, and Nagle's algorithm
/// would hold each one back until the previous one is acknowledged.
fn incoming(listener: tokio::net::TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Serves the gRPC front on `grpc_listener` and the HTTP front on `http_listener` until
/// `shutdown` completes, then drains in-flight requests.
///
/// Both fronts answer at once (`/health` is up, requests get "not ready"); workers are polled in
/// the background, and the first to answer `GetModelInfo` defines the served model. Fails when
/// none has answered within `config.startup_timeout`, or when a listener fails.
pub async fn run(
    config: RouterConfig,
    http_listener: tokio::net::TcpListener,
    grpc_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    config.validate()?;
    tokio::runtime::Handle::try_current().map_err(|_| RouterError::NoRuntime)?;
    let shared = Arc::new(Shared::new(config)?);
    lcserve_svc_kit::otlp_metrics::push_metrics(Arc::clone(&shared));

    let mut background = JoinSet::new();
    for worker in &shared.registry.workers {
        background.spawn(poller::poll_worker(
            Arc::clone(worker),
            Arc::clone(&shared.model),
            shared.config.poll_interval,
        ));
    }
    if let Some(url) = shared.config.kvstore.clone() {
        let endpoint = shared.config.endpoint("kvstore", &url)?;
        background.spawn(index::follow(
            url,
            endpoint,
            Arc::clone(&shared.index.shared),
            Arc::clone(&shared.index.subscriber),
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<GenerationServer<grpc::GenerationService>>().await;
    let ready_shared = Arc::clone(&shared);
    background.spawn(async move {
        let mut serving = None;
        loop {
            let ready = ready_shared.ready();
            if serving != Some(ready) {
                if ready {
                    health.set_serving::<GenerationServer<grpc::GenerationService>>().await;
                } else {
                    health.set_not_serving::<GenerationServer<grpc::GenerationService>>().await;
                }
                serving = Some(ready);
            }
            tokio::time::sleep(ready_shared.config.poll_interval).await;
        }
    });

    let (reflection_v1, reflection_v1alpha) = lcserve_proto::reflection_services()?;
    let generation = GenerationServer::new(grpc::GenerationService { shared: Arc::clone(&shared) })
        .max_decoding_message_size(shared.config.max_body_bytes);

    let (stop, stopped) = watch::channel(false);
    let signal = move || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = shared.config.tls.as_deref().filter(|tls| tls.serves()) {
        // The public front: TLS without asking clients for certificates (API keys authenticate).
        let config =
            tls.grpc_server(false).map_err(|err| RouterError::Config { field: "tls", reason: err.to_string() })?;
        server = server.tls_config(config)?;
    }
    let grpc = server
        .trace_fn(lcserve_svc_kit::server_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(generation)
        .serve_with_incoming_shutdown(incoming(grpc_listener), signal());
    let http = http::serve(Arc::clone(&shared), http_listener, signal());
    let serving = async {
        let (grpc, http) = tokio::join!(grpc, http);
        grpc?;
        http
    };
    tokio::pin!(serving);
    let startup = async {
        if let Err(err) = shared.model.wait(shared.config.startup_timeout).await {
            return err;
        }
        std::future::pending().await
    };

    let outcome = tokio::select! {
        result = &mut serving => return result,
        err = startup => Err(err),
        () = shutdown => Ok(()),
    };
    stop.send_replace(true);
    let drained = serving.await;
    background.abort_all();
    outcome.and(drained)
}
