//! The shared tier as a worker sees it: the kvstore gRPC service (`lcserve.v1.KvStore`), behind
//! the same [`Tier`] interface as Redis.
//!
//! Why it behaves the way it does:
//! - **A worker starts before the store.** The channel connects lazily on first use and
//!   reconnects by itself after the store goes away; nothing here waits for the store at start.
//! - **Bounded latency.** Every call runs under [`RemoteTierConfig::op_timeout`] (connection
//!   included, itself bounded by `connect_timeout`). An error or a timeout is a miss, counted in
//!   [`RemoteStats`]: recomputing a block is always possible, waiting on a sick store is not.
//!   A `get` that runs out of time keeps the blocks that arrived before the deadline.
//! - **Nothing read is trusted.** Every block streamed back must name the hash at its position
//!   and pass [`validate`] (header, identity, exact length, checksum); a forged or corrupt block
//!   is a miss, counted as `corrupt`, and ends the run (the blocks after it could not be used).
//! - **Large messages.** A raw f32 block of the reference model is ~2.9 MB, larger models' far
//!   more, while gRPC's default limit is 4 MB. The client's limits are
//!   [`RemoteTierConfig::max_message_bytes`]; the service sets the same limit from its own
//!   `max_block_bytes` ([`KvStoreConfig::max_message_bytes`]). A block too large to send is
//!   left out of the put and counted as an error, so the blocks around it still arrive.
//! - **Tenants.** [`Tier::put_many_for`] names the tenant whose byte quota in the service's RAM
//!   tier the blocks count against; [`Tier::put_many`] uses the default tenant.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lcserve_common::SequenceHash;
use lcserve_proto::hash_to_bytes;
use lcserve_proto::v1::{self, kv_store_client::KvStoreClient};
use lcserve_svc_kit::{Tls, TracedChannel, traced};
use tonic::transport::Endpoint;

use crate::redis_tier::validate;
use crate::service::{KvStoreConfig, MESSAGE_OVERHEAD_BYTES};
use crate::tier::{Blocks, Tier, TierCounters, TierStats, add};

/// Where and how to reach the kvstore service.
#[derive(Clone, Debug)]
pub struct RemoteTierConfig {
    /// `http://host:port` of the kvstore service, or `https://` (needs `tls`).
    pub endpoint: String,
    /// For `https://`: the CA that signed the service's certificate, and this client's
    /// certificate (the service requires one under mTLS).
    pub tls: Option<Arc<Tls>>,
    /// Budget of opening a connection; past it the call fails (a miss) and the next call
    /// tries again.
    pub connect_timeout: Duration,
    /// Budget of one call, connecting included; past it the call is a miss.
    pub op_timeout: Duration,
    /// Largest gRPC message sent or received, i.e. largest block plus
    /// [`MESSAGE_OVERHEAD_BYTES`]. Match the service's
    /// [`KvStoreConfig::max_message_bytes`].
    pub max_message_bytes: usize,
}

impl RemoteTierConfig {
    /// Defaults for `endpoint`: 250 ms to connect (a store on the same network answers in
    /// milliseconds, or is down), 1 s per call (a run of large blocks at network speed, well
    /// under the cost of recomputing it), and the message limit of a default service.
    pub fn new(endpoint: impl Into<String>) -> Self {
        RemoteTierConfig {
            endpoint: endpoint.into(),
            tls: None,
            connect_timeout: Duration::from_millis(250),
            op_timeout: Duration::from_secs(1),
            max_message_bytes: KvStoreConfig::default().max_message_bytes(),
        }
    }

    /// Rejects settings that cannot work, naming the field; returns the parsed endpoint.
    pub fn validate(&self) -> Result<Endpoint, RemoteTierError> {
        let invalid = |reason: &str| RemoteTierError::InvalidEndpoint {
            endpoint: self.endpoint.clone(),
            reason: reason.to_owned(),
        };
        let endpoint = lcserve_svc_kit::tls::endpoint(&self.endpoint, self.tls.as_deref()).map_err(|err| {
            RemoteTierError::InvalidEndpoint { endpoint: self.endpoint.clone(), reason: err.to_string() }
        })?;
        let uri = endpoint.uri();
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid("no host"));
        }
        if uri.authority().is_some_and(|authority| authority.as_str().contains('@')) {
            return Err(invalid("credentials in the URI are not supported"));
        }
        if self.connect_timeout.is_zero() {
            return Err(RemoteTierError::Zero { field: "connect_timeout" });
        }
        if self.op_timeout.is_zero() {
            return Err(RemoteTierError::Zero { field: "op_timeout" });
        }
        if self.max_message_bytes <= MESSAGE_OVERHEAD_BYTES {
            return Err(RemoteTierError::TooSmall {
                field: "max_message_bytes",
                value: self.max_message_bytes,
                min: MESSAGE_OVERHEAD_BYTES + 1,
            });
        }
        Ok(endpoint)
    }
}

/// Why a [`RemoteTier`] could not be built. Only configuration can fail: reaching the store
/// never does (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteTierError {
    #[error("endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("{field} must be positive")]
    Zero { field: &'static str },
    #[error("{field} = {value} is below the minimum {min}")]
    TooSmall { field: &'static str, value: usize, min: usize },
    #[error("the remote tier must be created inside a tokio runtime (its channel runs a task on it)")]
    NoRuntime,
}

/// Counters of a [`RemoteTier`]. `corrupt` blocks were served by the store but failed
/// validation here (a forged or damaged block); `errors` also counts blocks too large to send.
pub type RemoteStats = TierStats;

/// The kvstore service as a shared tier: a cheap `Clone` handle (clones share the channel and
/// the stats).
#[derive(Clone)]
pub struct RemoteTier {
    client: KvStoreClient<TracedChannel>,
    endpoint: Arc<str>,
    op_timeout: Duration,
    max_block_bytes: usize,
    stats: Arc<TierCounters>,
}

impl RemoteTier {
    /// Validates the config and prepares the channel without connecting (it connects on first
    /// use and reconnects by itself), so this succeeds while the store is down. Must be called
    /// inside a tokio runtime.
    pub fn new(config: &RemoteTierConfig) -> Result<Self, RemoteTierError> {
        let endpoint = config.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| RemoteTierError::NoRuntime)?;
        let channel = endpoint
            .connect_timeout(config.connect_timeout)
            .timeout(config.op_timeout)
            // Blocks are megabytes: let HTTP/2 grow its windows to the bandwidth-delay product
            // instead of stalling every 64 KiB.
            .http2_adaptive_window(true)
            .connect_lazy();
        let client = KvStoreClient::new(traced(channel))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        Ok(RemoteTier {
            client,
            endpoint: config.endpoint.as_str().into(),
            op_timeout: config.op_timeout,
            max_block_bytes: config.max_message_bytes - MESSAGE_OVERHEAD_BYTES,
            stats: Arc::default(),
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RemoteStats {
        self.stats.snapshot()
    }
}

impl Tier for RemoteTier {
    async fn lookup(&self, hashes: &[SequenceHash]) -> usize {
        if hashes.is_empty() {
            return 0;
        }
        let request = v1::LookupRequest { hashes: hashes.iter().map(|hash| hash_to_bytes(*hash)).collect() };
        let mut client = self.client.clone();
        let found = self.stats.bounded(self.op_timeout, client.lookup(request)).await;
        found.map_or(0, |response| (response.into_inner().cached_blocks as usize).min(hashes.len()))
    }

    async fn get_many(&self, hashes: &[SequenceHash]) -> Vec<Option<Bytes>> {
        let mut out: Vec<Option<Bytes>> = vec![None; hashes.len()];
        if hashes.is_empty() {
            return out;
        }
        let request = v1::GetRequest { hashes: hashes.iter().map(|hash| hash_to_bytes(*hash)).collect() };
        let mut client = self.client.clone();
        let mut corrupt = 0;
        // The store streams the longest held prefix, in order: message i is hashes[i].
        let read = async {
            let mut stream = client.get(request).await?.into_inner();
            for (slot, hash) in out.iter_mut().zip(hashes) {
                let Some(message) = stream.message().await? else { break };
                if message.hash != hash.0 || validate(&message.block, hash).is_err() {
                    corrupt += 1;
                    break;
                }
                *slot = Some(Bytes::from(message.block));
            }
            Ok::<(), tonic::Status>(())
        };
        // On a timeout or an error midway, the blocks that arrived in time are kept.
        let _: Option<()> = self.stats.bounded(self.op_timeout, read).await;
        add(&self.stats.corrupt, corrupt);
        self.stats.count_read(hashes.len(), &out);
        out
    }

    async fn put_many(&self, blocks: Blocks) -> usize {
        self.put_many_for("", blocks).await
    }

    /// Charges the blocks to `tenant`'s byte quota in the service's RAM tier (the worker
    /// passes its tenant's salt, e.g. in hex; at most 256 bytes, or the service refuses the
    /// put).
    async fn put_many_for(&self, tenant: &str, blocks: Blocks) -> usize {
        let (fits, too_large): (Vec<_>, Vec<_>) =
            blocks.into_iter().partition(|(_, block)| block.len() <= self.max_block_bytes);
        add(&self.stats.errors, too_large.len());
        if fits.is_empty() {
            return 0;
        }
        let (sent, bytes) = (fits.len(), fits.iter().map(|(_, block)| block.len()).sum());
        let tenant = tenant.to_owned();
        // Each message is built as the stream is sent: one extra copy of one block at a time.
        let messages = tokio_stream::iter(fits.into_iter().map(move |(hash, block)| v1::PutBlock {
            hash: hash_to_bytes(hash),
            block: block.to_vec(),
            tenant: tenant.clone(),
        }));
        let mut client = self.client.clone();
        let Some(response) = self.stats.bounded(self.op_timeout, client.put(messages)).await else { return 0 };
        let stored = (response.into_inner().stored as usize).min(sent);
        self.stats.count_written(stored, bytes);
        stored
    }
}

impl fmt::Debug for RemoteTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteTier")
            .field("endpoint", &self.endpoint)
            .field("op_timeout", &self.op_timeout)
            .field("max_block_bytes", &self.max_block_bytes)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
