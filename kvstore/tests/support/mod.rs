//! Helpers for the tier tests: a real `redis-server` per test, and real `KVB1` blocks.
#![allow(dead_code)] // each test binary uses a different subset

use bytes::Bytes;
use std::time::{Duration, Instant};

use lcserve_common::{KvLayout, ModelFingerprint, Namespace, SequenceHash, sequence_hashes};
use lcserve_kvstore::{BlockMeta, Codec, encode};

/// The workspace's one `redis-server` launcher (shared with the end-to-end harness).
#[path = "../../../tests/src/redis.rs"]
mod redis_server;
pub use redis_server::RedisServer;

pub const LAYOUT: KvLayout = KvLayout { layers: 2, kv_heads: 2, head_dim: 16, block_size: 8 };

/// The hashes of `n` blocks of a prompt in namespace `tenant`.
pub fn hashes(tenant: &str, n: usize, seed: u32) -> Vec<SequenceHash> {
    let namespace = Namespace::new(tenant.as_bytes(), ModelFingerprint([7; 16]), "int8");
    let tokens: Vec<u32> = (0..(n * LAYOUT.block_size) as u32).map(|t| t.wrapping_mul(31).wrapping_add(seed)).collect();
    sequence_hashes(namespace, &tokens, LAYOUT.block_size)
}

/// A valid int8 `KVB1` block of `hash`.
pub fn block(hash: SequenceHash) -> Bytes {
    let data: Vec<f32> = (0..LAYOUT.elems_per_block()).map(|i| (i % 97) as f32 * 0.01 + f32::from(hash.0[0])).collect();
    let meta = BlockMeta { layout: LAYOUT, fingerprint: ModelFingerprint([7; 16]), hash };
    encode(&data, &meta, Codec::INT8).expect("encodable block").into()
}

pub fn blocks(hashes: &[SequenceHash]) -> Vec<(SequenceHash, Bytes)> {
    hashes.iter().map(|h| (*h, block(*h))).collect()
}

/// A raw connection for planting and inspecting values behind the tier's back.
pub async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).expect("url");
    client.get_multiplexed_async_connection().await.expect("connect")
}

/// Waits until the store's background writer has handed `blocks` blocks to the shared tier.
pub async fn drained<S: lcserve_kvstore::Tier>(store: &lcserve_kvstore::TieredStore<S>, blocks: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.stats().shared_put < blocks {
        assert!(Instant::now() < deadline, "write-behind stalled: {:?}", store.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A kvstore service (`lcserve_kvstore::run`) on a loopback port, stopped gracefully on
/// [`Service::stop`] or when dropped.
pub struct Service {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), lcserve_kvstore::ServiceError>>,
}

impl Service {
    /// Starts on `127.0.0.1:0`.
    pub async fn start(config: lcserve_kvstore::KvStoreConfig) -> Service {
        Service::start_on("127.0.0.1:0".parse().expect("addr"), config).await
    }

    /// Starts on `addr` (e.g. the address of a service stopped earlier).
    pub async fn start_on(addr: std::net::SocketAddr, config: lcserve_kvstore::KvStoreConfig) -> Service {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("binds");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(lcserve_kvstore::run(config, listener, async move {
            let _ = stopped.await;
        }));
        Service { addr, stop: Some(stop), task }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the service, waits until it has let go of its port, and returns the address.
    pub async fn stop(mut self) -> std::net::SocketAddr {
        self.stop.take();
        let stopped = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
        stopped.expect("the service stops within 5 s").expect("joins").expect("ran without error");
        self.addr
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.take();
    }
}
