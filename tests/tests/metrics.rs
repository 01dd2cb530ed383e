//! Prometheus metrics of every service after real traffic through the disaggregated stack, and
//! the Grafana dashboard checked against what the services export.
//!
//! One cluster (router, a prefill and a decode worker, kvstore over Redis) serves three
//! requests — a long prompt with prompt-lookup speculation (disaggregated), the same prompt
//! again (its prefix is reused), and a short one (decode only) — then `/metrics` of each service
//! is scraped over HTTP and parsed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lcserve_proto::v1::{self, generate_request::Input, generate_response::Event};
use lcserve_tests::{Cluster, ClusterConfig};

/// One sample of the Prometheus text format: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text format's sample lines (comments skipped). Label values here never contain
/// `,` or `"` (they are bounded names), so a split is enough.
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
            let value = value.parse().unwrap_or_else(|_| panic!("bad value: {line}"));
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}').unwrap_or_else(|| panic!("unclosed labels: {line}"));
                    let labels = inner
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
                            (key.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
                None => (series, BTreeMap::new()),
            };
            Sample { name: name.to_owned(), labels, value }
        })
        .collect()
}

/// One service's scrape.
struct Scrape {
    service: &'static str,
    samples: Vec<Sample>,
}

impl Scrape {
    fn get(service: &'static str, addr: SocketAddr) -> Scrape {
        let (status, body) = Cluster::http_get(addr, "/metrics").unwrap_or_else(|| panic!("{service}: no answer"));
        assert_eq!(status, 200, "{service} /metrics: {body}");
        Scrape { service, samples: parse(&body) }
    }

    /// Sum of `name` over the samples whose labels include every pair of `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
            .collect();
        assert!(!matching.is_empty(), "{}: no series {name}{labels:?}", self.service);
        matching.iter().map(|s| s.value).sum()
    }

    fn present(&self, name: &str) {
        self.sum(name, &[]);
    }

    fn moved(&self, name: &str, labels: &[(&str, &str)]) {
        let value = self.sum(name, labels);
        assert!(value > 0.0, "{}: {name}{labels:?} is {value} after traffic", self.service);
    }

    /// A histogram observed at least once.
    fn observed(&self, histogram: &str, labels: &[(&str, &str)]) {
        self.moved(&format!("{histogram}_count"), labels);
        self.present(&format!("{histogram}_bucket"));
        self.present(&format!("{histogram}_sum"));
    }

    /// Every worker series carries its role.
    fn all_labelled(&self, key: &str, value: &str) {
        for sample in &self.samples {
            assert_eq!(sample.labels.get(key).map(String::as_str), Some(value), "{}: {sample:?}", self.service);
        }
    }
}

fn request(prompt: &[u32], max_tokens: u32) -> v1::GenerateRequest {
    v1::GenerateRequest {
        input: Some(Input::TokenIds(v1::TokenIds { ids: prompt.to_vec() })),
        stop: Some(v1::StopConditions { max_tokens: Some(max_tokens), ignore_eos: true, ..Default::default() }),
        speculation: v1::Speculation::Ngram as i32,
        ..Default::default()
    }
}

async fn generate(cluster: &Cluster, request: v1::GenerateRequest) -> v1::Usage {
    let mut client = cluster.generation().await;
    let mut stream = client.generate(request).await.expect("generate").into_inner();
    while let Some(response) = stream.message().await.expect("stream") {
        match response.event {
            Some(Event::Finished(finished)) => return finished.usage.unwrap_or_default(),
            Some(Event::Error(error)) => panic!("request failed: {error:?}"),
            _ => {}
        }
    }
    panic!("the stream ended without a terminal event")
}

/// A repetitive natural-language prompt of about `words` tokens: prompt lookup finds drafts.
fn prompt(cluster: &Cluster, words: usize) -> Vec<u32> {
    const WORDS: &[&str] = &["the", "river", "runs", "past", "the", "old", "stone", "bridge", "and"];
    let text: Vec<&str> = (0..words).map(|i| WORDS[i % WORDS.len()]).collect();
    cluster.model.tokenizer.encode(&text.join(" "), false).expect("encode")
}

fn dashboard_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/dashboards/lcserve.json")
}

/// Every PromQL expression of the dashboard (panels nested in rows included).
fn dashboard_exprs(dashboard: &serde_json::Value) -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| walk(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The metric names an expression queries: its identifiers of the `lcserve_` namespace.
fn queried_metrics(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|word| word.starts_with("lcserve_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_dashboard_is_grafana_json_on_the_prometheus_datasource() {
    let text = std::fs::read_to_string(dashboard_path()).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "lcserve");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "prometheus", "panel {}", panel["title"]);
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} queries nothing", panel["title"]);
    }
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.iter().all(|expr| !queried_metrics(expr).is_empty()), "an expression without an lcserve metric");
}

#[test]
fn every_service_exports_its_series_after_traffic_and_the_dashboard_queries_only_those() {
    let cluster = Cluster::start(ClusterConfig::default());
    let rt = cluster.client_runtime();
    let long = prompt(&cluster, 150);
    let short = prompt(&cluster, 12);
    assert!(long.len() >= cluster.config.disagg_min_tokens && short.len() < cluster.config.disagg_min_tokens);
    let first = rt.block_on(generate(&cluster, request(&long, 16)));
    let again = rt.block_on(generate(&cluster, request(&long, 16)));
    rt.block_on(generate(&cluster, request(&short, 8)));
    assert!(again.cached_tokens > first.cached_tokens, "the second request reuses the prefix: {again:?}");

    // The kvstore writes to Redis behind its answers: wait for the write-behind to land.
    let deadline = Instant::now() + Duration::from_secs(20);
    let kvstore = loop {
        let scrape = Scrape::get("kvstore", cluster.kvstore_metrics);
        if scrape.sum("lcserve_kvstore_bytes_total", &[("tier", "redis"), ("direction", "write")]) > 0.0
            || Instant::now() > deadline
        {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let router = Scrape::get("router", cluster.http);
    router.moved("lcserve_router_requests_total", &[("status", "ok")]);
    for histogram in [
        "lcserve_router_time_to_first_token_seconds",
        "lcserve_router_time_per_output_token_seconds",
        "lcserve_router_request_duration_seconds",
        "lcserve_router_added_latency_seconds",
        "lcserve_router_prefill_density",
    ] {
        router.observed(histogram, &[]);
    }
    router.present("lcserve_router_in_flight_requests");
    router.moved("lcserve_router_decisions_total", &[("policy", "kv_aware"), ("path", "disaggregated")]);
    router.moved("lcserve_router_decisions_total", &[("policy", "kv_aware"), ("path", "decode_only")]);
    router.moved("lcserve_router_prompt_tokens_total", &[]);
    router.moved("lcserve_router_completion_tokens_total", &[]);
    router.moved("lcserve_router_cached_tokens_total", &[]);
    router.moved("lcserve_router_speculative_proposed_tokens_total", &[]);
    router.present("lcserve_router_speculative_accepted_tokens_total");
    router.present("lcserve_router_retries_total");
    router.moved("lcserve_router_worker_healthy", &[("role", "prefill")]);
    router.moved("lcserve_router_worker_healthy", &[("role", "decode")]);
    router.present("lcserve_router_shared_index_blocks");
    router.moved("lcserve_router_kvstore_events_total", &[]);

    let prefill = Scrape::get("prefill", cluster.prefill[0].metrics);
    let decode = Scrape::get("decode", cluster.decode[0].metrics);
    for (worker, role) in [(&prefill, "prefill"), (&decode, "decode")] {
        worker.all_labelled("role", role);
        worker.moved("lcserve_worker_requests_total", &[("status", "ok")]);
        for gauge in
            ["lcserve_worker_queue_depth", "lcserve_worker_running_sequences", "lcserve_worker_kv_pool_blocks_used"]
        {
            worker.present(gauge);
        }
        worker.moved("lcserve_worker_kv_pool_blocks_free", &[]);
        worker.observed("lcserve_worker_step_duration_seconds", &[]);
        worker.moved("lcserve_worker_generated_tokens_total", &[]);
        worker.present("lcserve_worker_cache_misses_total");
        worker.present("lcserve_worker_speculative_proposed_tokens_total");
        worker.present("lcserve_worker_speculative_accepted_tokens_total");
        worker.present("lcserve_worker_preemptions_total");
    }
    // The repeated prompt is found in the prefill worker's own pool; its blocks went to the
    // shared tier, and the decode worker read them from there.
    prefill.moved("lcserve_worker_cache_hits_total", &[("tier", "device")]);
    prefill.moved("lcserve_worker_cache_bytes_total", &[("tier", "shared"), ("direction", "write")]);
    prefill.observed("lcserve_worker_prefill_density", &[]);
    decode.moved("lcserve_worker_cache_hits_total", &[]);
    decode.moved("lcserve_worker_cache_bytes_total", &[("direction", "read")]);
    decode.moved("lcserve_worker_speculative_proposed_tokens_total", &[]);

    kvstore.moved("lcserve_kvstore_requests_total", &[("method", "put"), ("status", "ok")]);
    kvstore.moved("lcserve_kvstore_requests_total", &[("method", "get"), ("status", "ok")]);
    kvstore.moved("lcserve_kvstore_cache_hits_total", &[]);
    kvstore.present("lcserve_kvstore_cache_misses_total");
    kvstore.moved("lcserve_kvstore_bytes_total", &[("tier", "host"), ("direction", "write")]);
    kvstore.moved("lcserve_kvstore_bytes_total", &[("tier", "redis"), ("direction", "write")]);
    kvstore.moved("lcserve_kvstore_stored_bytes", &[("tier", "host")]);
    kvstore.present("lcserve_kvstore_redis_errors_total");
    kvstore.observed("lcserve_kvstore_redis_latency_seconds", &[]);
    kvstore.moved("lcserve_kvstore_events_total", &[("kind", "stored")]);
    kvstore.moved("lcserve_kvstore_subscribers", &[]);

    let exported: BTreeSet<&str> =
        [&router, &prefill, &decode, &kvstore].iter().flat_map(|s| &s.samples).map(|s| s.name.as_str()).collect();
    let text = std::fs::read_to_string(dashboard_path()).expect("read the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queried: BTreeSet<String> = dashboard_exprs(&dashboard).iter().flat_map(|e| queried_metrics(e)).collect();
    assert!(queried.len() > 30, "the dashboard queries {} metrics", queried.len());
    let missing: Vec<&String> = queried.iter().filter(|name| !exported.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries series no service exports: {missing:?}");
}
