//! Helpers for the tier tests: a real `redis-server` per test, and real `KVB1` blocks.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lcserve_common::{KvLayout, ModelFingerprint, Namespace, SequenceHash, sequence_hashes};
use lcserve_kvstore::{BlockMeta, Codec, encode};

/// A `redis-server` on a loopback port, persistence off; killed on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts on a free port. Redis refuses `--port 0`, so the port is found by binding
    /// `127.0.0.1:0` and releasing it just before the start.
    pub fn start() -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        RedisServer::start_on(port)
    }

    /// Starts on `port` (e.g. the port of a server killed earlier) and waits for `PING`.
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (see .ci/run)");
        let server = RedisServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !server.pings() {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer PING");
            std::thread::sleep(Duration::from_millis(10));
        }
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn pings(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL, like a crash) and waits until it is gone.
    pub fn kill(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const LAYOUT: KvLayout = KvLayout { layers: 2, kv_heads: 2, head_dim: 16, block_size: 8 };

/// The hashes of `n` blocks of a prompt in namespace `tenant`.
pub fn hashes(tenant: &str, n: usize, seed: u32) -> Vec<SequenceHash> {
    let namespace = Namespace::new(tenant.as_bytes(), ModelFingerprint([7; 16]), "int8");
    let tokens: Vec<u32> = (0..(n * LAYOUT.block_size) as u32).map(|t| t.wrapping_mul(31).wrapping_add(seed)).collect();
    sequence_hashes(namespace, &tokens, LAYOUT.block_size)
}

/// A valid int8 `KVB1` block of `hash`.
pub fn block(hash: SequenceHash) -> Arc<[u8]> {
    let data: Vec<f32> = (0..LAYOUT.elems_per_block()).map(|i| (i % 97) as f32 * 0.01 + f32::from(hash.0[0])).collect();
    let meta = BlockMeta { layout: LAYOUT, fingerprint: ModelFingerprint([7; 16]), hash };
    encode(&data, &meta, Codec::INT8).expect("encodable block").into()
}

pub fn blocks(hashes: &[SequenceHash]) -> Vec<(SequenceHash, Arc<[u8]>)> {
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
