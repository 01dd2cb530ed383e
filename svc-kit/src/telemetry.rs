//! One telemetry init per binary: the `tracing` subscriber, the OTLP span exporter, and where
//! [`push_metrics`](crate::otlp_metrics::push_metrics) sends metrics.

use std::sync::OnceLock;

use clap::Args;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Telemetry flags, the same on every subcommand.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Export traces and metrics over OTLP/gRPC to this collector (e.g.
    /// `http://otel-collector:4317`); metrics every `OTEL_METRIC_EXPORT_INTERVAL` ms (60000).
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log line format on stderr.
    #[arg(long, global = true, env = "LCSERVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Allow prompt and completion text in logs and span attributes (off: only lengths and ids).
    #[arg(long, global = true, env = "LCSERVE_LOG_PROMPTS")]
    pub log_prompts: bool,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("--otlp-endpoint {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("starting the exporter's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("a tracing subscriber is already installed in this process")]
    AlreadyInstalled,
}

static LOG_PROMPTS: OnceLock<bool> = OnceLock::new();

/// Whether prompt text may appear in logs and spans (`--log-prompts`); false before [`init`].
pub fn log_prompts() -> bool {
    LOG_PROMPTS.get().copied().unwrap_or(false)
}

/// Keeps the exporter running; dropping it flushes the spans not yet sent.
#[must_use = "dropping the guard stops the exporter"]
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// Drives the exporter's gRPC channel, whatever runtimes the service itself starts and stops.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Nothing to do with a failure while exiting but say it.
            if let Err(err) = provider.shutdown() {
                eprintln!("telemetry: flushing spans failed: {err}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Installs the process-wide subscriber for `service` (its OTLP `service.name`) and the W3C trace
/// context propagator.
pub fn init(service: &'static str, args: &TelemetryArgs) -> Result<Telemetry, TelemetryError> {
    let _ = LOG_PROMPTS.set(args.log_prompts);
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `RUST_LOG` filters the log lines only: traces keep every info span whatever the log level.
    let fmt = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter).boxed(),
        LogFormat::Json => {
            tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed()
        }
    };
    let (provider, runtime) = match args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        Some(endpoint) => {
            let (provider, runtime) = otlp_provider(service, endpoint)?;
            let _ =
                crate::otlp_metrics::TARGET.set(crate::otlp_metrics::Target { endpoint: endpoint.to_owned(), service });
            (Some(provider), Some(runtime))
        }
        None => (None, None),
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer().with_tracer(provider.tracer("lcserve")).with_filter(LevelFilter::INFO)
    });
    tracing_subscriber::registry().with(fmt).with(otel).try_init().map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider, runtime })
}

/// A batch exporter to `endpoint`, its channel living on a small runtime of its own.
fn otlp_provider(
    service: &'static str,
    endpoint: &str,
) -> Result<(SdkTracerProvider, tokio::runtime::Runtime), TelemetryError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("otlp-export")
        .enable_all()
        .build()?;
    let exporter = {
        // The lazily connected channel spawns its worker on the runtime it is built in.
        let _entered = runtime.enter();
        opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|err| TelemetryError::Exporter { endpoint: endpoint.to_owned(), reason: err.to_string() })?
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    Ok((provider, runtime))
}
