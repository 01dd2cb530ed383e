//! The disaggregated stack as separate `lcserve` processes exporting OTLP to a collector started
//! by the test: one request is one trace (spans from the router, the prefill worker, the kvstore
//! and the decode worker, linked by parent ids), and every service pushes its metrics.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::resource::v1::Resource;
use support::{Stack, generate};

/// One received span: its service, name and ids.
#[derive(Clone, Debug)]
struct ReceivedSpan {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
}

/// A gRPC OTLP collector that keeps every span it is sent, and the names of the metrics each
/// service pushed.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    metrics: Arc<Mutex<HashSet<(String, String)>>>,
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut metrics = self.metrics.lock().expect("collector lock");
        for resource_metrics in request.into_inner().resource_metrics {
            let service = service_name(resource_metrics.resource.as_ref());
            for metric in resource_metrics.scope_metrics.into_iter().flat_map(|scope| scope.metrics) {
                metrics.insert((service.clone(), metric.name));
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// The `service.name` of a resource.
fn service_name(resource: Option<&Resource>) -> String {
    resource
        .into_iter()
        .flat_map(|resource| &resource.attributes)
        .find(|attribute| attribute.key == "service.name")
        .and_then(|attribute| match attribute.value.as_ref()?.value.as_ref()? {
            Value::StringValue(name) => Some(name.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("collector lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = service_name(resource_spans.resource.as_ref());
            for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
                spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// One line per span: service, name, trace id, span id, parent id (ids shortened).
fn summary(spans: &[ReceivedSpan]) -> String {
    let short = |id: &[u8]| id.iter().take(3).map(|b| format!("{b:02x}")).collect::<String>();
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} trace={} span={} parent={}",
                s.service,
                s.name,
                short(&s.trace_id),
                short(&s.span_id),
                short(&s.parent_span_id)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_and_every_service_pushes_its_metrics() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind collector");
    let collector_addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let telemetry = ["--otlp-endpoint".to_owned(), format!("http://{collector_addr}")];
    let export_often = [("OTEL_BSP_SCHEDULE_DELAY", "100"), ("OTEL_METRIC_EXPORT_INTERVAL", "200")];
    let stack = Stack::start("http", &telemetry, &export_often);
    let mut client = stack.client(None).await;
    stack.wait_for_both_workers().await;
    assert_eq!(generate(&mut client, 4).await.expect("generate"), 4);

    // The request's trace is the one holding the router's `generate` span. Its stages, each a
    // span: tokenize and route in the router, the prefill chunks and the summarized decode in
    // the workers' engines, block reads and writes in the kvstore. Wait for all of them (each
    // service exports in 100 ms batches).
    let wanted = [
        ("lcserve-router", "tokenize"),
        ("lcserve-router", "route"),
        ("lcserve-router", "prefill"),
        ("lcserve-router", "decode"),
        ("lcserve-prefill", "lcserve.v1.Prefill/Run"),
        ("lcserve-prefill", "engine.prefill_chunk"),
        ("lcserve-decode", "lcserve.v1.Decode/Generate"),
        ("lcserve-decode", "engine.decode"),
        ("lcserve-prefill", "kv.put.shared"),
        ("lcserve-decode", "kv.get.shared"),
        ("lcserve-kvstore", "lcserve.v1.KvStore/Put"),
        ("lcserve-kvstore", "lcserve.v1.KvStore/Get"),
    ];
    let started = Instant::now();
    let trace = loop {
        let spans = collector.spans.lock().expect("collector lock").clone();
        let trace_id =
            spans.iter().find(|s| s.service == "lcserve-router" && s.name == "generate").map(|s| s.trace_id.clone());
        let trace: Vec<ReceivedSpan> = spans.into_iter().filter(|s| Some(&s.trace_id) == trace_id.as_ref()).collect();
        let names: HashSet<(&str, &str)> = trace.iter().map(|s| (s.service.as_str(), s.name.as_str())).collect();
        let missing: Vec<_> = wanted.iter().filter(|w| !names.contains(w)).collect();
        if missing.is_empty() {
            break trace;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the request's trace lacks {missing:?}; all spans received:\n{}",
            summary(&collector.spans.lock().expect("collector lock"))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Linked: one root, every other span's parent is a span of the same trace.
    let ids: HashMap<&[u8], &ReceivedSpan> = trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let roots: Vec<&ReceivedSpan> = trace.iter().filter(|s| s.parent_span_id.is_empty()).collect();
    assert_eq!(roots.len(), 1, "one root span, got {roots:?}");
    assert_eq!(roots[0].service, "lcserve-router");
    for span in &trace {
        if !span.parent_span_id.is_empty() {
            assert!(ids.contains_key(span.parent_span_id.as_slice()), "{span:?}: its parent is not in the trace");
        }
    }
    // Each worker's and the kvstore's spans hang below a span of another service: the trace
    // crossed the process boundary through the gRPC metadata.
    for service in ["lcserve-prefill", "lcserve-kvstore", "lcserve-decode"] {
        let crossed = trace
            .iter()
            .filter(|s| s.service == *service)
            .any(|span| ids.get(span.parent_span_id.as_slice()).is_some_and(|parent| parent.service != span.service));
        assert!(crossed, "no {service} span has a parent in another service: {trace:?}");
    }

    // Every service pushes its metrics over OTLP too, the request's counters among them.
    let wanted = [
        ("lcserve-router", "lcserve_router_requests_total"),
        ("lcserve-router", "lcserve_router_time_to_first_token_seconds"),
        ("lcserve-prefill", "lcserve_worker_requests_total"),
        ("lcserve-decode", "lcserve_worker_step_duration_seconds"),
        ("lcserve-kvstore", "lcserve_kvstore_requests_total"),
    ];
    let started = Instant::now();
    loop {
        let received = collector.metrics.lock().expect("collector lock").clone();
        let missing: Vec<_> =
            wanted.iter().filter(|(s, m)| !received.contains(&((*s).to_owned(), (*m).to_owned()))).collect();
        if missing.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no OTLP metrics {missing:?}; received {received:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
