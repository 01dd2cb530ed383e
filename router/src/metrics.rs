//! Prometheus metrics of the router, served as text on `/metrics`. Labels are bounded: an
//! endpoint name, a status class, a cache tier, a retry kind, a policy and a path, and the
//! configured worker URLs — never prompts, tenants or request ids.

use std::time::Duration;

use lcserve_proto::v1;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::config::Policy;
use crate::index::SubscriberStats;
use crate::registry::{Health, Worker};

/// Which API a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Endpoint {
    GrpcGenerate,
    GrpcTokenize,
    Completions,
    ChatCompletions,
    Responses,
    Messages,
    /// `/v1/messages/count_tokens`.
    CountTokens,
    Tokenize,
    Detokenize,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::GrpcGenerate => "grpc_generate",
            Endpoint::GrpcTokenize => "grpc_tokenize",
            Endpoint::Completions => "completions",
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Tokenize => "tokenize",
            Endpoint::Detokenize => "detokenize",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabels {
    tier: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    policy: &'static str,
    path: &'static str,
}

/// Where a request's prompt was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// On a prefill worker, handed to a decode worker through the store.
    Disaggregated,
    /// On the decode worker itself (short prompt, or no prefill worker left).
    DecodeOnly,
}

fn policy_label(policy: Policy) -> &'static str {
    match policy {
        Policy::RoundRobin => "round_robin",
        Policy::LeastLoaded => "least_loaded",
        Policy::KvAware => "kv_aware",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    role: &'static str,
    worker: String,
}

/// Every metric, registered once.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    ttft: Histogram,
    tpot: Histogram,
    prompt_tokens: Counter,
    completion_tokens: Counter,
    cached_tokens: Family<TierLabels, Counter>,
    retries: Family<KindLabels, Counter>,
    worker_healthy: Family<WorkerLabels, Gauge>,
    index_blocks: Gauge,
    duration: Histogram,
    in_flight: Gauge,
    decisions: Family<DecisionLabels, Counter>,
    added_latency: Histogram,
    speculative_proposed: Counter,
    speculative_accepted: Counter,
    prefill_density: Histogram,
}

impl Metrics {
    pub fn new(subscriber: &SubscriberStats) -> Self {
        let mut registry = Registry::with_prefix("lcserve_router");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Generation requests by endpoint and final status", requests.clone());
        // 5 ms .. ~80 s: a cached short prompt to a cold million-token prefill.
        let ttft = Histogram::new(exponential_buckets(0.005, 2.0, 15));
        registry.register_with_unit("time_to_first_token", "Time to first token", Unit::Seconds, ttft.clone());
        // 1 ms .. ~1 s per token.
        let tpot = Histogram::new(exponential_buckets(0.001, 2.0, 11));
        registry.register_with_unit("time_per_output_token", "Mean time between tokens", Unit::Seconds, tpot.clone());
        let prompt_tokens = Counter::default();
        registry.register("prompt_tokens", "Prompt tokens of finished requests", prompt_tokens.clone());
        let completion_tokens = Counter::default();
        registry.register("completion_tokens", "Generated tokens of finished requests", completion_tokens.clone());
        let cached_tokens = Family::<TierLabels, Counter>::default();
        registry.register("cached_tokens", "Prompt tokens reused from a cache tier", cached_tokens.clone());
        let retries = Family::<KindLabels, Counter>::default();
        // Exported at 0 from the start: a dashboard's rate() needs the series before the first retry.
        for kind in ["prefill", "decode", "migration"] {
            let _ = retries.get_or_create(&KindLabels { kind });
        }
        registry.register(
            "retries",
            "Worker failures recovered from: prefill, decode (before the first token), migration",
            retries.clone(),
        );
        let worker_healthy = Family::<WorkerLabels, Gauge>::default();
        registry.register(
            "worker_healthy",
            "1 when the worker answers polls and serves the model",
            worker_healthy.clone(),
        );
        let index_blocks = Gauge::default();
        registry.register("shared_index_blocks", "Blocks in the shared-tier prefix index", index_blocks.clone());
        registry.register(
            "kvstore_subscriptions",
            "kvstore event subscriptions opened",
            subscriber.subscriptions.clone(),
        );
        registry.register(
            "kvstore_clears",
            "kvstore Cleared events applied (each snapshot starts with one)",
            subscriber.clears.clone(),
        );
        registry.register("kvstore_events", "kvstore events applied to the prefix index", subscriber.events.clone());
        registry.register(
            "kvstore_connected",
            "1 while the kvstore event stream is open",
            subscriber.connected.clone(),
        );
        // 10 ms .. ~5.5 min: a one-token answer to a long generation.
        let duration = Histogram::new(exponential_buckets(0.01, 2.0, 16));
        registry.register_with_unit(
            "request_duration",
            "Time from a validated request to its terminal event",
            Unit::Seconds,
            duration.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Generation requests being served", in_flight.clone());
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "decisions",
            "Requests placed, by policy and path (disaggregated or decode_only)",
            decisions.clone(),
        );
        // 0.1 ms .. ~3 s: the router's own work (tokenize, hash, route) before the first worker call.
        let added_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register_with_unit(
            "added_latency",
            "Time from receiving a request to the first worker call (tokenize, validate, route)",
            Unit::Seconds,
            added_latency.clone(),
        );
        let speculative_proposed = Counter::default();
        registry.register(
            "speculative_proposed_tokens",
            "Draft tokens proposed by speculative decoding in finished requests",
            speculative_proposed.clone(),
        );
        let speculative_accepted = Counter::default();
        registry.register(
            "speculative_accepted_tokens",
            "Draft tokens accepted by the target model in finished requests",
            speculative_accepted.clone(),
        );
        let prefill_density = Histogram::new(linear_buckets(0.1, 0.1, 10));
        registry.register(
            "prefill_density",
            "Fraction of causal attention pairs a request's prefill executed (1 = dense)",
            prefill_density.clone(),
        );
        Metrics {
            registry,
            requests,
            ttft,
            tpot,
            prompt_tokens,
            completion_tokens,
            cached_tokens,
            retries,
            worker_healthy,
            index_blocks,
            duration,
            in_flight,
            decisions,
            added_latency,
            speculative_proposed,
            speculative_accepted,
            prefill_density,
        }
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    pub fn duration(&self, elapsed: Duration) {
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn decision(&self, policy: Policy, path: Path) {
        let path = match path {
            Path::Disaggregated => "disaggregated",
            Path::DecodeOnly => "decode_only",
        };
        self.decisions.get_or_create(&DecisionLabels { policy: policy_label(policy), path }).inc();
    }

    pub fn added_latency(&self, elapsed: Duration) {
        self.added_latency.observe(elapsed.as_secs_f64());
    }

    pub fn request(&self, endpoint: Endpoint, status: &'static str) {
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.as_str(), status }).inc();
    }

    pub fn ttft(&self, elapsed: Duration) {
        self.ttft.observe(elapsed.as_secs_f64());
    }

    pub fn tpot(&self, per_token: Duration) {
        self.tpot.observe(per_token.as_secs_f64());
    }

    pub fn retry(&self, kind: &'static str) {
        self.retries.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn usage(&self, usage: &v1::Usage) {
        self.prompt_tokens.inc_by(u64::from(usage.prompt_tokens));
        self.completion_tokens.inc_by(u64::from(usage.completion_tokens));
        let cached = usage.cached.unwrap_or_default();
        for (tier, tokens) in [("device", cached.device), ("host", cached.host), ("shared", cached.shared)] {
            self.cached_tokens.get_or_create(&TierLabels { tier }).inc_by(u64::from(tokens));
        }
        self.speculative_proposed.inc_by(u64::from(usage.speculative_proposed));
        self.speculative_accepted.inc_by(u64::from(usage.speculative_accepted));
        // 0: nothing was prefilled (the whole prompt came from a cache).
        if usage.prefill_density > 0.0 {
            self.prefill_density.observe(f64::from(usage.prefill_density));
        }
    }

    /// Sets the point-in-time gauges: worker health and the prefix index's size.
    pub fn refresh(&self, workers: &[std::sync::Arc<Worker>], index_blocks: usize) {
        for worker in workers {
            let labels = WorkerLabels { role: worker.role.as_str(), worker: worker.url.clone() };
            self.worker_healthy.get_or_create(&labels).set(i64::from(worker.health() == Health::Healthy));
        }
        self.index_blocks.set(i64::try_from(index_blocks).unwrap_or(i64::MAX));
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The exposition text, with point-in-time gauges refreshed first.
    pub fn render(&self, workers: &[std::sync::Arc<Worker>], index_blocks: usize) -> String {
        self.refresh(workers, index_blocks);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A request in flight; dropping it takes it out of `in_flight_requests`.
#[derive(Debug)]
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}
