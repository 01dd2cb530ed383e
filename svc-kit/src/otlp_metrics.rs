//! OTLP export of a service's Prometheus registry: every `OTEL_METRIC_EXPORT_INTERVAL`
//! (milliseconds, 60 s by default) the registry is encoded as OpenMetrics protobuf and sent to
//! the `--otlp-endpoint` collector as cumulative OTLP metrics — counters as monotonic sums,
//! gauges as gauges, histograms as explicit-bucket histograms — so the same series reach
//! Prometheus by scrape and an OpenTelemetry pipeline by push.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus_client::encoding::prometheus_protobuf::{self, prometheus_data_model as pm};
use prometheus_client::registry::Registry;

use crate::metrics::MetricsSource;

/// Where this process pushes metrics, set once by [`telemetry::init`](crate::telemetry::init).
#[derive(Debug)]
pub(crate) struct Target {
    pub endpoint: String,
    pub service: &'static str,
}

pub(crate) static TARGET: OnceLock<Target> = OnceLock::new();

/// Pushes `source`'s metrics to the OTLP collector every export interval, on the current tokio
/// runtime, for as long as it runs; does nothing when no `--otlp-endpoint` was given.
pub fn push_metrics<S: MetricsSource>(source: Arc<S>) {
    let Some(target) = TARGET.get() else { return };
    let channel = match tonic::transport::Endpoint::from_shared(target.endpoint.clone()) {
        Ok(endpoint) => endpoint.connect_lazy(),
        Err(err) => {
            tracing::warn!(endpoint = %target.endpoint, %err, "OTLP metrics: invalid endpoint; not exporting");
            return;
        }
    };
    let interval = export_interval();
    let started = unix_nanos(SystemTime::now());
    tokio::spawn(async move {
        let mut client = MetricsServiceClient::new(channel);
        loop {
            tokio::time::sleep(interval).await;
            source.refresh().await;
            let request = export_request(source.registry(), target.service, started, unix_nanos(SystemTime::now()));
            if let Err(status) = client.export(request).await {
                tracing::warn!(%status, "OTLP metrics export failed");
            }
        }
    });
}

fn export_interval() -> Duration {
    let millis = std::env::var("OTEL_METRIC_EXPORT_INTERVAL").ok().and_then(|v| v.parse::<u64>().ok());
    Duration::from_millis(millis.filter(|&ms| ms > 0).unwrap_or(60_000))
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The registry's series as one OTLP export of `service`, cumulative since `start` (ns).
pub fn export_request(registry: &Registry, service: &str, start: u64, now: u64) -> ExportMetricsServiceRequest {
    // Encoding into memory fails only on a collector's own error; nothing is exported then.
    let families = prometheus_protobuf::encode(registry).unwrap_or_default();
    let metrics = families.into_iter().filter_map(|family| otlp_metric(family, start, now)).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: vec![attribute("service.name", service)], ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope { name: "lcserve".to_owned(), ..Default::default() }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_owned())) }),
        ..Default::default()
    }
}

/// One family (named as in the text format) as an OTLP metric; `None` for kinds lcserve does
/// not export (summaries, untyped).
fn otlp_metric(family: pm::MetricFamily, start: u64, now: u64) -> Option<Metric> {
    let kind = pm::MetricType::try_from(family.r#type).ok()?;
    let attributes = |metric: &pm::Metric| metric.label.iter().map(|l| attribute(&l.name, &l.value)).collect();
    let number = |metric: &pm::Metric, value: f64| NumberDataPoint {
        attributes: attributes(metric),
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = match kind {
        pm::MetricType::Counter => metric::Data::Sum(Sum {
            data_points: family.metric.iter().filter_map(|m| Some(number(m, m.counter.as_ref()?.value))).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative.into(),
            is_monotonic: true,
        }),
        pm::MetricType::Gauge => metric::Data::Gauge(Gauge {
            data_points: family.metric.iter().filter_map(|m| Some(number(m, m.gauge.as_ref()?.value))).collect(),
        }),
        pm::MetricType::Histogram => metric::Data::Histogram(Histogram {
            data_points: family
                .metric
                .iter()
                .filter_map(|m| Some(histogram_point(attributes(m), m.histogram.as_ref()?, start, now)))
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative.into(),
        }),
        _ => return None,
    };
    Some(Metric {
        name: family.name,
        description: family.help,
        unit: family.unit,
        data: Some(data),
        ..Default::default()
    })
}

/// Prometheus buckets are cumulative with inclusive upper bounds, the last one unbounded
/// (`+Inf` or `f64::MAX`); OTLP wants the count of each bucket, with the finite bounds as
/// `explicit_bounds` and one more bucket above the last.
fn histogram_point(attributes: Vec<KeyValue>, histogram: &pm::Histogram, start: u64, now: u64) -> HistogramDataPoint {
    let mut explicit_bounds = Vec::with_capacity(histogram.bucket.len());
    let mut bucket_counts = Vec::with_capacity(histogram.bucket.len() + 1);
    let mut below = 0;
    for bucket in &histogram.bucket {
        bucket_counts.push(bucket.cumulative_count.saturating_sub(below));
        below = bucket.cumulative_count;
        if bucket.upper_bound.is_finite() && bucket.upper_bound != f64::MAX {
            explicit_bounds.push(bucket.upper_bound);
        }
    }
    if bucket_counts.len() == explicit_bounds.len() {
        // No unbounded bucket was listed: it holds whatever the bounded ones do not.
        bucket_counts.push(histogram.sample_count.saturating_sub(below));
    }
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        count: histogram.sample_count,
        sum: Some(histogram.sample_sum),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge as PromGauge;
    use prometheus_client::metrics::histogram::Histogram as PromHistogram;

    use super::*;

    #[test]
    fn counters_gauges_and_histograms_become_cumulative_otlp_metrics() {
        let mut registry = Registry::with_prefix("svc");
        let requests = Counter::<u64>::default();
        registry.register("requests", "Requests", requests.clone());
        let queue = PromGauge::<i64>::default();
        registry.register("queue", "Queue", queue.clone());
        let latency = PromHistogram::new([0.1, 1.0]);
        registry.register("latency", "Latency", latency.clone());
        requests.inc_by(7);
        queue.set(3);
        for value in [0.05, 0.5, 0.7, 5.0] {
            latency.observe(value);
        }

        let request = export_request(&registry, "lcserve-test", 10, 20);
        let resource = &request.resource_metrics[0];
        assert_eq!(resource.resource.as_ref().expect("resource").attributes[0].key, "service.name");
        let metrics = &resource.scope_metrics[0].metrics;
        let find = |name: &str| metrics.iter().find(|m| m.name == name).and_then(|m| m.data.clone()).expect(name);
        let value = |point: &NumberDataPoint| point.value;
        match find("svc_requests_total") {
            Data::Sum(sum) => {
                assert!(sum.is_monotonic);
                assert_eq!(value(&sum.data_points[0]), Some(number_data_point::Value::AsDouble(7.0)));
                assert_eq!((sum.data_points[0].start_time_unix_nano, sum.data_points[0].time_unix_nano), (10, 20));
            }
            other => panic!("{other:?}"),
        }
        match find("svc_queue") {
            Data::Gauge(gauge) => {
                assert_eq!(value(&gauge.data_points[0]), Some(number_data_point::Value::AsDouble(3.0)))
            }
            other => panic!("{other:?}"),
        }
        match find("svc_latency") {
            Data::Histogram(histogram) => {
                let point = &histogram.data_points[0];
                assert_eq!(point.explicit_bounds, vec![0.1, 1.0]);
                assert_eq!(point.bucket_counts, vec![1, 2, 1], "≤0.1, (0.1, 1], above 1");
                assert_eq!(point.count, 4);
                assert!((point.sum.expect("sum") - 6.25).abs() < 1e-9);
            }
            other => panic!("{other:?}"),
        }
    }
}
