//! Prometheus text exposition for the services that are not the router (workers, kvstore): a
//! small axum listener answering `GET /metrics` next to the service's gRPC port, and the
//! helpers they share to fill it.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`: Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// A service's metrics: a registry, and the point-in-time gauges to refresh (which may take an
/// await) before each scrape or OTLP push.
pub trait MetricsSource: Send + Sync + 'static {
    fn refresh(&self) -> impl Future<Output = ()> + Send;
    fn registry(&self) -> &Registry;
}

/// Serves `GET /metrics` from `source` on `listener` until `shutdown` completes.
pub async fn serve_metrics<S: MetricsSource>(
    listener: tokio::net::TcpListener,
    source: Arc<S>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(metrics::<S>)).with_state(source);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn metrics<S: MetricsSource>(State(source): State<Arc<S>>) -> Response {
    source.refresh().await;
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], encode_text(source.registry())).into_response()
}

/// `registry` in the Prometheus text format.
fn encode_text(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut text, registry);
    text
}

/// The `status` label of a gRPC outcome: `ok`, or the code in snake case (a bounded set).
pub fn status_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid_argument",
        DeadlineExceeded => "deadline_exceeded",
        NotFound => "not_found",
        AlreadyExists => "already_exists",
        PermissionDenied => "permission_denied",
        ResourceExhausted => "resource_exhausted",
        FailedPrecondition => "failed_precondition",
        Aborted => "aborted",
        OutOfRange => "out_of_range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data_loss",
        Unauthenticated => "unauthenticated",
    }
}

/// The `status` label of a handler's result.
pub fn result_label<T>(result: &Result<T, tonic::Status>) -> &'static str {
    status_label(result.as_ref().map_or_else(tonic::Status::code, |_| tonic::Code::Ok))
}

/// One sample of a family: its labels and value.
pub type Sample = (&'static [(&'static str, &'static str)], u64);

/// Encodes a family of counters (`name_total`) or gauges from values read at scrape time
/// (for a [`Collector`](prometheus_client::collector::Collector) over counters a component
/// already keeps).
pub fn encode_family(
    encoder: &mut DescriptorEncoder,
    (name, help, kind): (&str, &str, MetricType),
    samples: &[Sample],
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let metric = family.encode_family(labels)?;
        match kind {
            MetricType::Gauge => ConstGauge::new(i64::try_from(*value).unwrap_or(i64::MAX)).encode(metric)?,
            _ => ConstCounter::new(*value).encode(metric)?,
        }
    }
    Ok(())
}
