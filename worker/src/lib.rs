//! The worker services of lcserve: an engine behind gRPC, sharing KV through the tiered store.
//!
//! ```text
//!            Prefill.Run                                   Decode.Generate (stream)
//! router ──────────────▶ prefill worker                ┌──▶ decode worker ──tokens──▶ router
//!                         │ import cached prefix ◀─┐    │     │ import prompt KV ◀─┐
//!                         │ compute the rest       │    │     │ decode, stream      │
//!                         └─ blocks ─put_through─▶ store ─get┘     └─ blocks ─put──▶ store
//!                            first token + session (hashes, inline tail) ──▶ router ──┘
//! ```
//!
//! - [`Worker`] (`worker`): one [`EngineHandle`](lcserve_engine::EngineHandle) plus the KV bridge;
//!   `prepare` finds the prompt's KV beyond the engine's own pool (host tier, then the shared
//!   tier) and turns it into an engine import; request ids for `Abort`; load and model info.
//! - `kv_bridge`: engine f32 blocks ⇄ `KVB1` bytes in a [`TieredStore`](lcserve_kvstore::TieredStore)
//!   whose shared tier is the kvstore service; codec work on the blocking pool.
//! - `prefill`: the `Prefill` service — one-token engine run with export, write-through to the
//!   shared tier, session + first token back.
//! - `decode`: the `Decode` service — import, continue after tokens generated elsewhere (a
//!   prefill's first token, or a failed worker's stream), stream events, put finished blocks.
//! - `convert`, `error`: wire ⇄ engine types; errors classified once into gRPC codes and
//!   terminal events.
//! - `metrics`: the `lcserve_worker_*` Prometheus series; a [`Worker`] is a
//!   [`MetricsSource`](lcserve_svc_kit::metrics::MetricsSource) for `lcserve_svc_kit::metrics::serve_metrics`.
//! - [`run`]: serves a worker's role with health and reflection until shutdown, then sends the
//!   blocks it computed last to the shared tier before it returns.
#![forbid(unsafe_code)]

mod config;
mod convert;
mod decode;
mod error;
mod kv_bridge;
mod metrics;
mod prefill;
mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lcserve_proto::v1::decode_server::DecodeServer;
use lcserve_proto::v1::prefill_server::PrefillServer;
use tonic::transport::server::TcpIncoming;

pub use config::{Role, WorkerConfig};
pub use error::WorkerError;
pub use worker::Worker;

/// Largest gRPC message a worker sends or takes: a prefill response carries the prompt's tail
/// block inline as raw f32 (up to one block: 16 MB for a Llama-3-8B-sized model).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// How long a stopping worker waits for its last blocks to reach the shared tier.
const EXPORT_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `worker`'s role on `listener` until `shutdown` completes and the requests in flight
/// have ended, then flushes the worker's KV exports to the shared tier (at most
/// `EXPORT_FLUSH_TIMEOUT`): the blocks of its last answers, which the next turns reuse.
pub async fn run(
    worker: Arc<Worker>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    lcserve_svc_kit::otlp_metrics::push_metrics(Arc::clone(&worker));
    let (health, health_service) = tonic_health::server::health_reporter();
    let (reflection_v1, reflection_v1alpha) = lcserve_proto::reflection_services()?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = worker.config.tls.as_deref().filter(|tls| tls.serves()) {
        server = server.tls_config(tls.grpc_server(true)?)?;
    }
    let router = server
        .trace_fn(lcserve_svc_kit::server_span)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let router = match worker.config.role {
        Role::Prefill => {
            health.set_serving::<PrefillServer<prefill::PrefillService>>().await;
            router.add_service(
                PrefillServer::new(prefill::PrefillService(Arc::clone(&worker)))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
        }
        Role::Decode => {
            health.set_serving::<DecodeServer<decode::DecodeService>>().await;
            router.add_service(
                DecodeServer::new(decode::DecodeService(Arc::clone(&worker)))
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES),
            )
        }
    };
    // Nagle off: a stream sends one small message per token.
    router.serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), shutdown).await?;
    if !worker.flush_exports(EXPORT_FLUSH_TIMEOUT).await {
        tracing::warn!(timeout = ?EXPORT_FLUSH_TIMEOUT, "stopping before every exported block reached the shared tier");
    }
    Ok(())
}
