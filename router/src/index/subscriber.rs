//! Follows the kvstore's `SubscribeEvents` stream into a [`SharedIndex`].
//!
//! The first subscription asks for a snapshot. After a disconnect it resumes from the last
//! sequence number applied and its epoch, with `snapshot` set as the fallback for when the
//! server's log has moved on or the server restarted (a new epoch): the server then sends
//! `Cleared` and the whole set again, which the index applies like any other events.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lcserve_proto::v1::kv_event::Kind;
use lcserve_proto::v1::kv_store_client::KvStoreClient;
use lcserve_proto::v1::{self, SubscribeRequest};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tonic::transport::Endpoint;

use super::shared::{IndexEvent, SharedIndex};
use crate::lock;

/// First and longest pause between subscription attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Snapshots of large stores are large messages streams, but each event is small; this only
/// guards against a broken peer.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Counters of the subscriber (registered as metrics).
#[derive(Debug, Default)]
pub(crate) struct SubscriberStats {
    /// Subscriptions the server accepted.
    pub subscriptions: Counter,
    /// `Cleared` events applied (each snapshot starts with one).
    pub clears: Counter,
    /// Events applied.
    pub events: Counter,
    /// 1 while a subscription is open.
    pub connected: Gauge,
}

/// Keeps `index` in step with the kvstore at `url`, forever (the caller drops the future to
/// stop). Never returns an error: a kvstore outage only makes the index stale.
pub(crate) async fn follow(
    url: String,
    endpoint: Endpoint,
    index: Arc<Mutex<SharedIndex>>,
    stats: Arc<SubscriberStats>,
) {
    let endpoint = endpoint
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let mut backoff = BACKOFF_MIN;
    loop {
        let applied_before = stats.events.get();
        let result = subscribe_once(&endpoint, &index, &stats).await;
        stats.connected.set(0);
        match result {
            Ok(()) => tracing::info!(%url, "kvstore event stream ended; resubscribing"),
            Err(status) => tracing::warn!(%url, %status, "kvstore event stream failed; resubscribing"),
        }
        if stats.events.get() > applied_before {
            backoff = BACKOFF_MIN;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn subscribe_once(
    endpoint: &Endpoint,
    index: &Mutex<SharedIndex>,
    stats: &SubscriberStats,
) -> Result<(), tonic::Status> {
    let channel = endpoint.connect().await.map_err(|err| tonic::Status::unavailable(err.to_string()))?;
    let mut client = KvStoreClient::new(channel).max_decoding_message_size(MAX_EVENT_BYTES);
    let (from_sequence, epoch) = lock(index).resume_point();
    // The epoch makes a restarted server (whose numbering restarted) answer with a snapshot
    // instead of replaying its own, unrelated, events after our sequence number.
    let request = SubscribeRequest { from_sequence, snapshot: true, epoch: from_sequence.and(epoch) };
    let mut stream = client.subscribe_events(request).await?.into_inner();
    stats.subscriptions.inc();
    stats.connected.set(1);
    while let Some(event) = stream.message().await? {
        let Some(change) = convert(&event) else { continue };
        if change == IndexEvent::Cleared {
            stats.clears.inc();
        }
        {
            let mut index = lock(index);
            // 0: a server from before epochs existed.
            if event.epoch != 0 {
                index.observe_epoch(event.epoch);
            }
            index.apply(event.sequence, change);
        }
        stats.events.inc();
    }
    Ok(())
}

fn convert(event: &v1::KvEvent) -> Option<IndexEvent> {
    let converted = match event.kind.as_ref()? {
        Kind::Stored(stored) => lcserve_proto::hash_from_bytes("stored.hash", &stored.hash).map(IndexEvent::Stored),
        Kind::Removed(removed) => {
            lcserve_proto::hash_from_bytes("removed.hash", &removed.hash).map(IndexEvent::Removed)
        }
        Kind::Cleared(_) => Ok(IndexEvent::Cleared),
    };
    converted.map_err(|err| tracing::warn!(sequence = event.sequence, %err, "skipping a malformed kvstore event")).ok()
}
