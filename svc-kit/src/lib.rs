//! What every lcserve service shares at its edges.
//!
//! - [`telemetry`]: one [`init`](telemetry::init) per binary — `tracing` to stderr (text or JSON,
//!   level from `RUST_LOG`), and spans exported over OTLP/gRPC when `--otlp-endpoint` (or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`) is set; the returned guard flushes them on drop.
//! - [`propagation`]: W3C trace context across gRPC. Servers open their request span with
//!   [`server_span`](propagation::server_span) (`Server::builder().trace_fn(...)`), which
//!   continues the caller's trace; clients wrap their channel with [`traced`](propagation::traced),
//!   which writes the current span's context into every outgoing call's metadata. One request is
//!   then one trace across router → prefill → kvstore → decode.
//! - [`metrics`]: `GET /metrics` (Prometheus text) for workers and kvstore, and the helpers
//!   their metric families share (status labels, families read at scrape time);
//!   [`otlp_metrics`] pushes the same registries to the OTLP collector.
//! - [`shutdown`]: the signals (SIGTERM, SIGINT) on which a service drains and stops.
//! - [`tls`]: rustls certificates from `--tls-cert/--tls-key/--tls-ca` for gRPC servers (mTLS
//!   between services), the router's HTTPS, and clients of `https://` URLs.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod otlp_metrics;
pub mod propagation;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use propagation::{TracedChannel, server_span, traced};
pub use telemetry::{LogFormat, Telemetry, TelemetryArgs, TelemetryError, log_prompts};
pub use tls::{Tls, TlsArgs, TlsError};
