//! W3C trace context (`traceparent`, `tracestate`) across gRPC calls.

use opentelemetry::propagation::{Extractor, Injector};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A channel whose calls carry the caller's trace context.
pub type TracedChannel = InterceptedService<Channel, InjectTraceContext>;

/// Wraps `channel` so every call through it carries the current span's trace context.
pub fn traced(channel: Channel) -> TracedChannel {
    InterceptedService::new(channel, InjectTraceContext)
}

/// Writes the current span's context into each outgoing request's metadata.
#[derive(Debug, Clone, Copy)]
pub struct InjectTraceContext;

impl Interceptor for InjectTraceContext {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
        });
        Ok(request)
    }
}

/// The span of one incoming gRPC call, child of the caller's span when the call carries a trace
/// context. Control-plane calls polled every second (health, reflection, `GetLoad`) get none, so
/// they do not flood the trace store with one-span traces.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if is_polled(path) {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
    );
    continue_trace(&span, request.headers());
    span
}

fn is_polled(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.") || path.ends_with("/GetLoad")
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value)) {
            self.0.insert(key, value);
        }
    }
}

/// Reads trace context from HTTP headers (gRPC metadata are HTTP/2 headers).
struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Makes `span` a child of the caller's span when `headers` (an HTTP request's, as on the
/// router's OpenAI API) carry a trace context.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    // Fails only when no OpenTelemetry layer is installed, where there is nothing to link.
    let _ = span.set_parent(parent);
}
