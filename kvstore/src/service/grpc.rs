//! The `lcserve.v1.KvStore` gRPC handlers: validate at the edge (hashes, block size, `KVB1`
//! integrity), then call the [`Store`]. Every error names the field at fault.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use lcserve_common::SequenceHash;
use lcserve_proto::v1::{self, kv_store_server::KvStore};
use lcserve_proto::{ProtoError, hash_to_bytes};
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::metrics::KvStoreMetrics;
use super::store::{NotReplayable, Store};
use crate::tier::Blocks;
use lcserve_svc_kit::metrics::result_label;

/// Longest `PutBlock.tenant` accepted: room for a salt in hex, and a bound on what a client
/// can make the server keep per tenant.
const MAX_TENANT_BYTES: usize = 256;

/// Blocks handed to the store per batch while a `Put` stream arrives: bounds the RAM a stream
/// holds, and keeps one batch one shared-tier round trip.
const PUT_BATCH: usize = 64;

type Block = (SequenceHash, Bytes);
type EventStream = Pin<Box<dyn Stream<Item = Result<v1::KvEvent, Status>> + Send>>;
type BlockStream = Pin<Box<dyn Stream<Item = Result<v1::GetBlock, Status>> + Send>>;

/// The handler set; cheap to clone into tonic.
pub(crate) struct KvStoreService {
    pub store: Arc<Store>,
    pub max_block_bytes: usize,
    pub max_pin_lease: Duration,
    /// Changes once, when the server begins to shut down.
    pub stopping: tokio::sync::watch::Receiver<()>,
    pub metrics: Arc<KvStoreMetrics>,
}

fn invalid(err: ProtoError) -> Status {
    Status::invalid_argument(err.to_string())
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl KvStoreService {
    /// Counts the outcome of one call of `method` and passes it on.
    fn counted<T>(&self, method: &'static str, result: Result<T, Status>) -> Result<T, Status> {
        self.metrics.request(method, result_label(&result));
        result
    }

    /// The block's identity and bytes, and its tenant.
    fn check_block(&self, index: usize, block: v1::PutBlock) -> Result<(Block, String), Status> {
        let hash = SequenceHash::try_from(&block)
            .map_err(|err| Status::invalid_argument(format!("PutBlock #{index}: {err}")))?;
        if block.tenant.len() > MAX_TENANT_BYTES {
            return Err(Status::invalid_argument(format!(
                "PutBlock #{index}: tenant: {} bytes exceeds {MAX_TENANT_BYTES}",
                block.tenant.len()
            )));
        }
        if block.block.len() > self.max_block_bytes {
            return Err(Status::invalid_argument(format!(
                "PutBlock #{index}: block: {} bytes exceeds max_block_bytes {}",
                block.block.len(),
                self.max_block_bytes
            )));
        }
        crate::redis_tier::validate(&block.block, &hash).map_err(|err| {
            Status::invalid_argument(format!("PutBlock #{index}: block: not a valid KVB1 block of hash {hash}: {err}"))
        })?;
        Ok(((hash, Bytes::from(block.block)), block.tenant))
    }
}

#[tonic::async_trait]
impl KvStore for KvStoreService {
    async fn lookup(&self, request: Request<v1::LookupRequest>) -> Result<Response<v1::LookupResponse>, Status> {
        let result = async {
            let hashes = Vec::<SequenceHash>::try_from(request.get_ref()).map_err(invalid)?;
            let cached = self.store.tiered.lookup(&hashes).await.len();
            Ok(Response::new(v1::LookupResponse { cached_blocks: count(cached) }))
        }
        .await;
        self.counted("lookup", result)
    }

    async fn put(&self, request: Request<Streaming<v1::PutBlock>>) -> Result<Response<v1::PutResponse>, Status> {
        let result = async {
            let mut stream = request.into_inner();
            let (mut stored, mut seen, mut batch, mut tenant): (usize, usize, Blocks, String) =
                (0, 0, Vec::new(), String::new());
            // Blocks before an invalid one are kept: each stands alone, and a prefix is still useful.
            // A batch has one tenant (a stream normally has one too).
            while let Some(block) = stream.message().await? {
                let (block, block_tenant) = self.check_block(seen, block)?;
                seen += 1;
                if block_tenant != tenant {
                    stored += self.store.put(&tenant, std::mem::take(&mut batch));
                    tenant = block_tenant;
                }
                batch.push(block);
                if batch.len() >= PUT_BATCH {
                    stored += self.store.put(&tenant, std::mem::take(&mut batch));
                }
            }
            stored += self.store.put(&tenant, batch);
            Ok(Response::new(v1::PutResponse { stored: count(stored), rejected: count(seen - stored) }))
        }
        .await;
        self.counted("put", result)
    }

    type GetStream = BlockStream;

    async fn get(&self, request: Request<v1::GetRequest>) -> Result<Response<Self::GetStream>, Status> {
        let result = async {
            let hashes = Vec::<SequenceHash>::try_from(request.get_ref()).map_err(invalid)?;
            let blocks = self.store.get(&hashes).await;
            // A block from Redis larger than this server's limit could not be sent: the run ends there.
            let messages: Vec<Result<v1::GetBlock, Status>> = hashes
                .iter()
                .zip(blocks)
                .take_while(|(_, block)| block.len() <= self.max_block_bytes)
                .map(|(hash, block)| Ok(v1::GetBlock { hash: hash_to_bytes(*hash), block: block.to_vec() }))
                .collect();
            let stream: BlockStream = Box::pin(tokio_stream::iter(messages));
            Ok(Response::new(stream))
        }
        .await;
        self.counted("get", result)
    }

    async fn pin(&self, request: Request<v1::PinRequest>) -> Result<Response<v1::PinResponse>, Status> {
        let result = async {
            let hashes = Vec::<SequenceHash>::try_from(request.get_ref()).map_err(invalid)?;
            let lease = Duration::from_millis(u64::from(request.get_ref().lease_ms));
            if lease.is_zero() || lease > self.max_pin_lease {
                return Err(Status::invalid_argument(format!(
                    "lease_ms: {} is outside 1..={}",
                    lease.as_millis(),
                    self.max_pin_lease.as_millis()
                )));
            }
            let (pin_id, pinned) = self.store.pin(&hashes, lease);
            Ok(Response::new(v1::PinResponse { pin_id, pinned: count(pinned) }))
        }
        .await;
        self.counted("pin", result)
    }

    async fn unpin(&self, request: Request<v1::UnpinRequest>) -> Result<Response<v1::UnpinResponse>, Status> {
        let result = async {
            let released = self.store.unpin(request.get_ref().pin_id);
            Ok(Response::new(v1::UnpinResponse { released }))
        }
        .await;
        self.counted("unpin", result)
    }

    async fn clear(&self, _request: Request<v1::ClearRequest>) -> Result<Response<v1::ClearResponse>, Status> {
        let result = async { Ok(Response::new(v1::ClearResponse { removed: count(self.store.clear()) })) }.await;
        self.counted("clear", result)
    }

    async fn stats(&self, _request: Request<v1::StatsRequest>) -> Result<Response<v1::StatsResponse>, Status> {
        let result = async {
            let host = self.store.tiered.host().stats();
            let tiered = self.store.tiered.stats();
            let (oldest_sequence, last_sequence, epoch) = self.store.sequences();
            let quotas = self.store.quota_stats();
            let n = |v: usize| v as u64;
            Ok(Response::new(v1::StatsResponse {
                capacity_bytes: n(host.capacity),
                bytes: n(host.bytes),
                blocks: n(host.blocks),
                pinned_blocks: n(host.pinned_blocks),
                pinned_bytes: n(host.pinned_bytes),
                active_pins: n(self.store.active_pins()),
                host_hits: tiered.host_hits,
                host_misses: tiered.host_misses,
                inserts: host.inserts,
                evictions: host.evictions,
                removals: host.removals,
                rejected: host.rejected(),
                shared_hits: tiered.shared_hits,
                shared_misses: tiered.shared_misses,
                shared_dropped: tiered.shared_dropped,
                last_sequence,
                oldest_sequence,
                shared_tier: self.store.tiered.shared().is_some(),
                epoch,
                tenant_quota_bytes: quotas.quota_bytes,
                quota_evictions: quotas.evictions,
                tenants: quotas.tenants,
            }))
        }
        .await;
        self.counted("stats", result)
    }

    type SubscribeEventsStream = EventStream;

    async fn subscribe_events(
        &self,
        request: Request<v1::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeEventsStream>, Status> {
        let result = async {
            let v1::SubscribeRequest { from_sequence, snapshot, epoch } = *request.get_ref();
            let subscription = self.store.subscribe(from_sequence, epoch, snapshot).map_err(|gone| {
                Status::failed_precondition(match gone {
                    NotReplayable::Gap { from, oldest, last } => format!(
                        "from_sequence: events after {from} are not in the log (it holds {oldest}..={last}); resubscribe with snapshot"
                    ),
                    NotReplayable::OtherEpoch { asked, current } => format!(
                        "epoch: {asked} is not this server's epoch {current} (it restarted, its sequence numbers with it); resubscribe with snapshot"
                    ),
                })
            })?;
            let backlog = tokio_stream::iter(subscription.backlog.into_iter().map(Ok));
            // A subscriber too slow for the live buffer has missed events: end its stream with an
            // error (tonic stops at the first one) so it resumes from its last sequence number.
            let live = BroadcastStream::new(subscription.live).map(|event| {
                event.map_err(|BroadcastStreamRecvError::Lagged(missed)| {
                    Status::failed_precondition(format!(
                        "subscriber fell {missed} events behind; resubscribe from_sequence or with snapshot"
                    ))
                })
            });
            // Ends at shutdown: an open stream would hold the server's graceful shutdown forever.
            let stopping = WatchStream::from_changes(self.stopping.clone()).map(|_| None);
            let events = backlog.chain(live).map(Some).merge(stopping).map_while(|event| event);
            let events: EventStream = Box::pin(events);
            Ok(Response::new(events))
        }
        .await;
        self.counted("subscribe_events", result)
    }
}
