//! The kvstore gRPC service: `lcserve.v1.KvStore`, `grpc.health.v1` and reflection on one
//! listener.
//!
//! A library with one entry point, [`run`]`(config, listener, shutdown)`: the binary binds and
//! calls it, and tests call the same function on `127.0.0.1:0`. The store is a [`HostCache`]
//! RAM tier in front of an optional [`RedisTier`], through [`TieredStore`] (write-behind on
//! `Put`, read-through and promotion on `Get`). Every change of the RAM tier's block set is
//! published as a numbered `KvEvent` and kept in a bounded log, so a router mirroring the set
//! can resume after a disconnect, or rebuild from a snapshot when the log has moved on. The
//! RAM tier optionally keeps per-tenant byte quotas ([`TenantQuotas`]). The
//! numbering belongs to a random per-start epoch, so a subscriber notices a restart instead of
//! resuming into a numbering that started over.
//!
//! [`run_with_metrics`] also serves Prometheus `GET /metrics` (`metrics`: the kvstore's series)
//! on a second listener, through [`lcserve_svc_kit::metrics::serve_metrics`].

mod grpc;
mod metrics;
mod store;

use lcserve_svc_kit::{Tls, TlsError};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lcserve_proto::v1::kv_store_server::KvStoreServer;
use tonic::transport::server::TcpIncoming;

use crate::host_cache::HostCache;
use crate::redis_tier::{RedisTier, RedisTierConfig, RedisTierError};
use crate::tenant_quota::TenantQuotas;
use crate::tiered::{TieredConfig, TieredStore};

/// Bytes a `PutBlock` or `GetBlock` message carries besides its block (hash, field tags and
/// lengths), with room to spare: a gRPC message limit is a block limit plus this.
pub const MESSAGE_OVERHEAD_BYTES: usize = 1024;

/// Settings of the kvstore service.
#[derive(Clone, Debug)]
pub struct KvStoreConfig {
    /// Byte budget of the RAM tier (encoded blocks); LRU eviction beyond it.
    pub capacity_bytes: usize,
    /// Largest block a `Put` accepts: bounds the RAM one message can claim (and catches a
    /// client sending the wrong thing long before the checksum would).
    pub max_block_bytes: usize,
    /// Events kept for resuming subscribers. 100k events of ~40 bytes: a few MB, and minutes of
    /// churn at high put rates; a subscriber away longer rebuilds from a snapshot.
    pub event_log_len: usize,
    /// Live events buffered per subscriber before it is cut off as lagging (it then resumes
    /// from the log, so a slow subscriber never slows the writers).
    pub subscriber_buffer: usize,
    /// Longest pin lease a client may ask for: a pinned block cannot be evicted, so a lease
    /// bounds what a vanished client can hold.
    pub max_pin_lease: Duration,
    /// Byte quota of each tenant (named by `PutBlock.tenant`) in the RAM tier; `None` for no
    /// quotas. A tenant over it loses its own least recently used blocks, so one tenant's
    /// burst cannot evict everyone else's prefixes. See [`TenantQuotas`](crate::TenantQuotas).
    pub tenant_quota_bytes: Option<usize>,
    /// The shared tier behind the RAM tier; `None` for RAM only.
    pub redis: Option<RedisTierConfig>,
    /// Write-behind queue of the shared tier.
    pub tiered: TieredConfig,
    /// Serve TLS with this certificate; with a CA, require client certificates it signed (mTLS).
    pub tls: Option<Arc<Tls>>,
}

impl Default for KvStoreConfig {
    fn default() -> Self {
        KvStoreConfig {
            capacity_bytes: 1 << 30,
            max_block_bytes: 64 << 20,
            event_log_len: 100_000,
            subscriber_buffer: 4096,
            max_pin_lease: Duration::from_secs(60),
            tenant_quota_bytes: None,
            redis: None,
            tiered: TieredConfig::default(),
            tls: None,
        }
    }
}

impl KvStoreConfig {
    /// The gRPC message limit (both directions) that admits every block of `max_block_bytes`:
    /// without it, gRPC's default 4 MB would refuse the raw blocks of larger models before
    /// `max_block_bytes` is even checked. Clients ([`RemoteTierConfig`](crate::RemoteTierConfig))
    /// use the same value.
    pub fn max_message_bytes(&self) -> usize {
        self.max_block_bytes.saturating_add(MESSAGE_OVERHEAD_BYTES)
    }

    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ServiceError> {
        let positive = [
            ("capacity_bytes", self.capacity_bytes),
            ("max_block_bytes", self.max_block_bytes),
            ("event_log_len", self.event_log_len),
            ("subscriber_buffer", self.subscriber_buffer),
            ("tiered.write_queue_batches", self.tiered.write_queue_batches),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ServiceError::Config { field, reason: "must be > 0".into() });
        }
        if self.tenant_quota_bytes == Some(0) {
            return Err(ServiceError::Config { field: "tenant_quota_bytes", reason: "must be > 0 when set".into() });
        }
        if self.max_pin_lease.is_zero() {
            return Err(ServiceError::Config { field: "max_pin_lease", reason: "must be > 0".into() });
        }
        Ok(())
    }
}

/// Why the service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("invalid kvstore config: {field} {reason}")]
    Config { field: &'static str, reason: String },
    #[error("kvstore service needs a tokio runtime")]
    NoRuntime,
    #[error("shared tier: {0}")]
    Redis(#[from] RedisTierError),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// How long a stopping kvstore waits for its queued writes to reach Redis.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the kvstore on `listener` until `shutdown` completes, then drains in-flight calls and
/// writes what is still queued for Redis (at most `FLUSH_TIMEOUT`), so blocks it accepted
/// outlive it.
pub async fn run(
    config: KvStoreConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    run_with_metrics(config, listener, None, shutdown).await
}

/// [`run`], and Prometheus `GET /metrics` on `metrics_listener` when given, until the same
/// `shutdown`.
pub async fn run_with_metrics(
    config: KvStoreConfig,
    listener: tokio::net::TcpListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServiceError> {
    config.validate()?;
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| ServiceError::NoRuntime)?;
    let redis = config.redis.as_ref().map(RedisTier::new).transpose()?;
    let tiered = TieredStore::new(HostCache::new(config.capacity_bytes), redis, config.tiered, &runtime);
    let epoch = store::random_epoch();
    let quotas = config.tenant_quota_bytes.map(TenantQuotas::new);
    let store = Arc::new(store::Store::new(tiered, config.event_log_len, config.subscriber_buffer, epoch, quotas));
    let (stop, stopping) = tokio::sync::watch::channel(());
    let metrics = Arc::new(metrics::KvStoreMetrics::new(&store));
    lcserve_svc_kit::otlp_metrics::push_metrics(Arc::clone(&metrics));
    let metrics_server = metrics_listener.map(|listener| {
        let mut stopped = stopping.clone();
        let stopped = async move {
            let _ = stopped.changed().await;
        };
        tokio::spawn(lcserve_svc_kit::metrics::serve_metrics(listener, Arc::clone(&metrics), stopped))
    });
    let service = grpc::KvStoreService {
        store: Arc::clone(&store),
        max_block_bytes: config.max_block_bytes,
        max_pin_lease: config.max_pin_lease,
        stopping,
        metrics,
    };
    let kv_store = KvStoreServer::new(service)
        .max_decoding_message_size(config.max_message_bytes())
        .max_encoding_message_size(config.max_message_bytes());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<KvStoreServer<grpc::KvStoreService>>().await;
    let (reflection_v1, reflection_v1alpha) = lcserve_proto::reflection_services()?;

    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = config.tls.as_deref().filter(|tls| tls.serves()) {
        server = server.tls_config(tls.grpc_server(true)?)?;
    }
    server
        .trace_fn(lcserve_svc_kit::server_span)
        // Blocks are megabytes: let HTTP/2 windows grow past 64 KiB.
        .http2_adaptive_window(Some(true))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kv_store)
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), async move {
            shutdown.await;
            // Ends the event streams, which would otherwise keep the graceful shutdown waiting.
            stop.send_replace(());
        })
        .await?;
    if tokio::time::timeout(FLUSH_TIMEOUT, store.tiered.flush()).await.is_err() {
        tracing::warn!(timeout = ?FLUSH_TIMEOUT, "stopping before every queued block reached Redis");
    }
    if let Some(server) = metrics_server {
        server.await.map_err(|e| ServiceError::Metrics(std::io::Error::other(e)))?.map_err(ServiceError::Metrics)?;
    }
    Ok(())
}
