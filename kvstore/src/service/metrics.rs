//! The kvstore's Prometheus metrics (`lcserve_kvstore_*`). Requests are counted as they are
//! answered; everything the store already counts (hits, misses and bytes per tier, stored bytes,
//! Redis errors, events, subscribers) is read from it at scrape time by [`StoreCollector`], so
//! there is one source of truth. Labels are bounded: a method name, a gRPC status, a tier, a
//! direction, an event kind.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::{Registry, Unit};

use super::store::Store;
use lcserve_svc_kit::metrics::{MetricsSource, Sample, encode_family};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: &'static str,
}

/// Every metric of one kvstore service.
#[derive(Debug)]
pub(crate) struct KvStoreMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
}

impl KvStoreMetrics {
    pub fn new(store: &Arc<Store>) -> Self {
        let mut registry = Registry::with_prefix("lcserve_kvstore");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "gRPC calls by method and final status", requests.clone());
        if let Some(redis) = store.tiered.shared() {
            registry.register_with_unit(
                "redis_latency",
                "Latency of one Redis command or pipeline (timeouts included)",
                Unit::Seconds,
                redis.latency(),
            );
        }
        registry.register_collector(Box::new(StoreCollector(Arc::clone(store))));
        KvStoreMetrics { registry, requests }
    }

    /// Counts one answered call of `method`.
    pub fn request(&self, method: &'static str, status: &'static str) {
        self.requests.get_or_create(&RequestLabels { method, status }).inc();
    }
}

impl MetricsSource for KvStoreMetrics {
    /// Every series is a counter or read by the collector at encode time.
    async fn refresh(&self) {}

    fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Reads the store's own counters on each scrape.
struct StoreCollector(Arc<Store>);

impl fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let tiered = self.0.tiered.stats();
        let redis = self.0.tiered.shared().map(|redis| redis.stats()).unwrap_or_default();
        let with_redis = self.0.tiered.shared().is_some();
        let per_tier = |host_value, redis_value| -> Vec<Sample> {
            let mut samples = vec![(&[("tier", "host")][..], host_value)];
            if with_redis {
                samples.push((&[("tier", "redis")][..], redis_value));
            }
            samples
        };
        encode_family(
            &mut encoder,
            ("cache_hits", "Blocks served by a tier to Get", MetricType::Counter),
            &per_tier(tiered.host_hits, tiered.shared_hits),
        )?;
        encode_family(
            &mut encoder,
            ("cache_misses", "Blocks asked of a tier by Get that it did not serve", MetricType::Counter),
            &per_tier(tiered.host_misses, tiered.shared_misses),
        )?;
        let mut bytes: Vec<Sample> = vec![
            (&[("tier", "host"), ("direction", "read")], tiered.host_bytes_read),
            (&[("tier", "host"), ("direction", "write")], tiered.host_bytes_written),
        ];
        if with_redis {
            bytes.push((&[("tier", "redis"), ("direction", "read")], redis.bytes_read));
            bytes.push((&[("tier", "redis"), ("direction", "write")], redis.bytes_written));
        }
        encode_family(
            &mut encoder,
            ("bytes", "Block bytes read from and written to a tier", MetricType::Counter),
            &bytes,
        )?;
        let stored = self.0.tiered.host().stats().bytes as u64;
        encode_family(
            &mut encoder,
            ("stored_bytes", "Bytes of blocks held by the RAM tier", MetricType::Gauge),
            &[(&[("tier", "host")], stored)],
        )?;
        encode_family(
            &mut encoder,
            ("redis_errors", "Redis operations that failed or timed out", MetricType::Counter),
            &[(&[], redis.errors + redis.timeouts)],
        )?;
        let (events, subscribers) = self.0.event_stats();
        encode_family(
            &mut encoder,
            ("events", "KV events published, by kind", MetricType::Counter),
            &[
                (&[("kind", "stored")], events.stored),
                (&[("kind", "removed")], events.removed),
                (&[("kind", "cleared")], events.cleared),
            ],
        )?;
        encode_family(
            &mut encoder,
            ("subscribers", "Event subscribers listening live", MetricType::Gauge),
            &[(&[], subscribers as u64)],
        )
    }
}
