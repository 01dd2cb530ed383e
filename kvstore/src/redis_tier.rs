//! The shared tier backed by Redis: encoded `KVB1` blocks under a TTL, shared by every worker of
//! a deployment.
//!
//! Why Redis behaves the way it does here:
//! - **One round trip per prefix run.** `get_many` is one `MGET`, `put_many` one pipeline of
//!   `PSETEX key ttl value`, `lookup` one pipeline of `EXISTS`: a 32-block prefix costs one RTT,
//!   not 32. The value goes last on purpose: Redis reads a large final bulk argument straight
//!   into its value, while `SET key value PX ttl` made it copy every block (int8 blocks of the
//!   reference model went from 0.55× to 1.47× `redis-benchmark`'s SET rate).
//! - **Bounded latency.** Every operation runs under [`RedisTierConfig::op_timeout`] (50 ms by
//!   default). Past it the operation counts as a miss and the caller recomputes: a prefill of a
//!   block is cheaper than waiting on a sick Redis. The same holds for errors (Redis down,
//!   refused, out of memory): no [`Tier`] method ever fails.
//! - **Self-healing.** A [`ConnectionManager`] reconnects by itself after a drop, with jittered
//!   exponential backoff capped at [`RedisTierConfig::max_reconnect_delay`]; it is created lazily,
//!   so a worker starts even while Redis is down and begins to share blocks once it is back.
//! - **Nothing read is trusted.** A value must parse as a `KVB1` header naming the requested
//!   hash, have the exact length that header implies, and carry a valid xxh3 checksum. Anything
//!   else (a bit flip, a truncated write, a foreign value under our key) is a miss, is counted as
//!   `corrupt`, and is deleted so that no other worker pays for it again.
//! - **Deployments never mix.** Keys are `key_prefix + hex(hash)`; two deployments (or test runs)
//!   on one Redis use different prefixes. Tenants and models are kept apart by the hash itself
//!   (its namespace), as in every tier.
//! - **AUTH and database** come from the URL (`redis://user:pass@host:6379/2`). `rediss://`
//!   (TLS) needs the `redis` crate's `tokio-rustls-comp` feature, which this build leaves out.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lcserve_common::SequenceHash;
use lcserve_svc_kit::Tls;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::Error;
use crate::block::{Header, check_length_and_checksum, peek_header};
use crate::tier::{Blocks, Tier, TierCounters, TierStats, add};

/// Where and how to reach Redis.
#[derive(Clone)]
pub struct RedisTierConfig {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://` for TLS; credentials are sent
    /// with `AUTH` on connect.
    pub url: String,
    /// For `rediss://`: the CA that signed Redis's certificate (else the system's roots), and a
    /// client certificate when Redis asks for one.
    pub tls: Option<Arc<Tls>>,
    /// Prepended to every key: one per deployment, so that deployments sharing a Redis never
    /// see each other's blocks. E.g. `"lcserve:prod:kv:"`.
    pub key_prefix: String,
    /// Time to live of every block written (`PSETEX`): Redis forgets blocks no one re-wrote.
    pub ttl: Duration,
    /// Budget of one operation, connection included; past it the operation is a miss.
    pub op_timeout: Duration,
    /// Upper bound of the backoff between reconnection attempts.
    pub max_reconnect_delay: Duration,
}

impl RedisTierConfig {
    /// Defaults for `url`: key prefix `lcserve:kv:`, 1 h TTL, 50 ms per operation, reconnection
    /// attempts at most 1 s apart.
    pub fn new(url: impl Into<String>) -> Self {
        RedisTierConfig {
            url: url.into(),
            tls: None,
            key_prefix: "lcserve:kv:".to_owned(),
            ttl: Duration::from_secs(3600),
            op_timeout: Duration::from_millis(50),
            max_reconnect_delay: Duration::from_secs(1),
        }
    }
}

impl fmt::Debug for RedisTierConfig {
    /// Leaves the URL out: it may carry a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTierConfig")
            .field("tls", &self.tls)
            .field("key_prefix", &self.key_prefix)
            .field("ttl", &self.ttl)
            .field("op_timeout", &self.op_timeout)
            .field("max_reconnect_delay", &self.max_reconnect_delay)
            .finish_non_exhaustive()
    }
}

/// Why a [`RedisTier`] could not be built. Only configuration can fail: reaching Redis never
/// does (see the module docs).
#[derive(Debug, thiserror::Error)]
pub enum RedisTierError {
    /// The URL does not parse (the message never includes the URL: it may carry a password).
    #[error("invalid Redis URL: {0}")]
    InvalidUrl(#[source] redis::RedisError),
    #[error("{field} must be positive")]
    Zero { field: &'static str },
}

/// The client of `url`; `rediss://` verifies Redis with `tls`'s CA (else the system's roots)
/// and presents its certificate. Shared with the router, which keeps stored responses in Redis.
pub fn redis_client(url: &str, tls: Option<&Tls>) -> Result<redis::Client, redis::RedisError> {
    let Some(tls) = tls.filter(|_| url.starts_with("rediss://")) else {
        lcserve_svc_kit::tls::install_crypto_provider();
        return redis::Client::open(url);
    };
    let certificates = redis::TlsCertificates {
        client_tls: tls
            .identity_pem()
            .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.to_vec(), client_key: key.to_vec() }),
        root_cert: tls.ca_pem().map(<[u8]>::to_vec),
    };
    redis::Client::build_with_tls(url, certificates)
}

/// Counters of a [`RedisTier`]; `corrupt` values were also deleted.
pub type RedisStats = TierStats;

/// The Redis shared tier: a cheap `Clone` handle (clones share the connection and the stats).
#[derive(Clone)]
pub struct RedisTier {
    conn: ConnectionManager,
    key_prefix: Arc<str>,
    ttl_ms: u64,
    op_timeout: Duration,
    stats: Arc<TierCounters>,
    /// Seconds per command or pipeline, failed and timed-out ones included.
    latency: Histogram,
}

/// Buckets of [`RedisTier::latency`]: 0.1 ms doubling to ~0.4 s, past any sane operation
/// timeout (50 ms by default).
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 13))
}

impl RedisTier {
    /// Validates the config and prepares the connection without opening it (it opens on first
    /// use, and reopens by itself), so this succeeds while Redis is down. Must be called within
    /// a Tokio runtime: the connection manager spawns its housekeeping task on it.
    pub fn new(config: &RedisTierConfig) -> Result<Self, RedisTierError> {
        let ttl_ms = u64::try_from(config.ttl.as_millis()).unwrap_or(u64::MAX);
        if ttl_ms == 0 {
            return Err(RedisTierError::Zero { field: "ttl" });
        }
        if config.op_timeout.is_zero() {
            return Err(RedisTierError::Zero { field: "op_timeout" });
        }
        let client = redis_client(&config.url, config.tls.as_deref()).map_err(RedisTierError::InvalidUrl)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.op_timeout))
            .set_response_timeout(Some(config.op_timeout))
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(config.max_reconnect_delay)
            .set_number_of_retries(3);
        let conn =
            ConnectionManager::new_lazy_with_config(client, manager_config).map_err(RedisTierError::InvalidUrl)?;
        Ok(RedisTier {
            conn,
            key_prefix: config.key_prefix.as_str().into(),
            ttl_ms,
            op_timeout: config.op_timeout,
            stats: Arc::default(),
            latency: latency_histogram(),
        })
    }

    /// The Redis key of a block: the deployment's prefix and the hash in hex.
    pub fn key(&self, hash: &SequenceHash) -> String {
        format!("{}{hash}", self.key_prefix)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RedisStats {
        self.stats.snapshot()
    }

    /// The latency histogram of Redis operations (a handle: clones observe the same
    /// buckets), for a metrics registry.
    pub fn latency(&self) -> Histogram {
        self.latency.clone()
    }

    /// Runs one command or pipeline under the operation timeout; `None` (counted) on error or
    /// timeout. Its latency is observed either way.
    async fn run<T: redis::FromRedisValue>(&self, query: impl Query) -> Option<T> {
        let mut conn = self.conn.clone();
        let started = std::time::Instant::now();
        let result = self.stats.bounded(self.op_timeout, query.query(&mut conn)).await;
        self.latency.observe(started.elapsed().as_secs_f64());
        result
    }
}

/// A command or a pipeline: both are sent the same way.
trait Query: Send {
    fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Query for redis::Pipeline {
    fn query<T: redis::FromRedisValue>(
        &self,
        conn: &mut ConnectionManager,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(conn)
    }
}

impl Tier for RedisTier {
    async fn lookup(&self, hashes: &[SequenceHash]) -> usize {
        if hashes.is_empty() {
            return 0;
        }
        let mut pipe = redis::pipe();
        for hash in hashes {
            pipe.exists(self.key(hash));
        }
        let present: Vec<bool> = self.run(pipe).await.unwrap_or_default();
        present.iter().take_while(|present| **present).count()
    }

    async fn get_many(&self, hashes: &[SequenceHash]) -> Vec<Option<Bytes>> {
        if hashes.is_empty() {
            return Vec::new();
        }
        let keys: Vec<String> = hashes.iter().map(|hash| self.key(hash)).collect();
        let values: Option<Vec<Option<Vec<u8>>>> = self.run(redis::cmd("MGET").arg(&keys).to_owned()).await;
        let values = values.filter(|values| values.len() == hashes.len()).unwrap_or_default();
        let mut out = vec![None; hashes.len()];
        let mut corrupt = Vec::new();
        for ((slot, (hash, key)), value) in out.iter_mut().zip(hashes.iter().zip(keys)).zip(values) {
            let Some(value) = value else { continue };
            match validate(&value, hash) {
                Ok(_) => *slot = Some(Bytes::from(value)),
                Err(_) => corrupt.push(key),
            }
        }
        self.stats.count_read(hashes.len(), &out);
        if !corrupt.is_empty() {
            add(&self.stats.corrupt, corrupt.len());
            // Awaited, not spawned: the caller already has its answer shape, and a failed delete
            // only means the next reader finds (and deletes) the value again.
            let _: Option<()> = self.run(redis::cmd("DEL").arg(&corrupt).to_owned()).await;
        }
        out
    }

    async fn put_many(&self, blocks: Blocks) -> usize {
        if blocks.is_empty() {
            return 0;
        }
        let mut pipe = redis::pipe();
        let mut bytes = 0;
        for (hash, value) in &blocks {
            bytes += value.len();
            pipe.cmd("PSETEX").arg(self.key(hash)).arg(self.ttl_ms).arg(&value[..]).ignore();
        }
        if self.run::<()>(pipe).await.is_none() {
            return 0;
        }
        self.stats.count_written(blocks.len(), bytes);
        blocks.len()
    }
}

impl fmt::Debug for RedisTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("key_prefix", &self.key_prefix)
            .field("ttl_ms", &self.ttl_ms)
            .field("op_timeout", &self.op_timeout)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Checks that `bytes` is a whole `KVB1` block of `hash` with a valid checksum, without decoding
/// the payload: header parse, identity, exact length, xxh3-64 — O(len) at tens of GB/s.
///
/// The payload's group parameters are left to the decoder, which checks them anyway; what this
/// rules out is every value that is not, byte for byte, the block that was written.
pub fn validate(bytes: &[u8], hash: &SequenceHash) -> Result<Header, Error> {
    let header = peek_header(bytes)?;
    if header.hash != *hash {
        return Err(Error::HashMismatch { expected: *hash, found: header.hash });
    }
    check_length_and_checksum(bytes, &header)?;
    Ok(header)
}
