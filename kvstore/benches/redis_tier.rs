//! Redis tier throughput vs `redis-benchmark` on the same server and value size.
//!
//! `cargo bench -p lcserve-kvstore --bench redis_tier [-- [--quick] [--run N]]`. Starts its own `redis-server`
//! (loopback, free port, persistence off), encodes real SmolLM2-shaped `KVB1` blocks (int8, int4)
//! and measures [`RedisTier`] `put_many` / `get_many` of 16-block runs (one pipeline / one `MGET`
//! per run, one connection, one run in flight: the tier's real path, `get` includes validation),
//! best round of several. Then runs `redis-benchmark -d <block bytes> -t set,get -P 16` with
//! `-c 1` (the matching shape: 16 values in flight on one connection) and `-c 4` (context only).
//! GB/s = value bytes moved per second (keys and protocol overhead not counted, on either side).

use bytes::Bytes;
use std::process::Command;
use std::time::{Duration, Instant};

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::{BlockMeta, Blocks, Codec, RedisTier, RedisTierConfig, Tier, encode};

const LAYOUT: KvLayout = KvLayout { layers: 30, kv_heads: 3, head_dim: 64, block_size: 64 };

/// The workspace's one `redis-server` launcher (shared with the tests).
#[allow(dead_code)]
#[path = "../../tests/src/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

/// `run` distinct valid blocks of `codec` (the hash is in the header, so each block is encoded
/// for its own hash); deterministic KV-like data.
fn blocks(codec: Codec, tag: u8, run: usize) -> Blocks {
    (0..run)
        .map(|i| {
            let mut id = [tag; 16];
            id[0] = i as u8;
            let hash = SequenceHash(id);
            let data: Vec<f32> = (0..LAYOUT.elems_per_block())
                .map(|j| ((j as f32 * 0.618 + i as f32).sin() * 3.0) + (j % LAYOUT.head_dim % 7) as f32 * 0.5)
                .collect();
            let meta = BlockMeta { layout: LAYOUT, fingerprint: ModelFingerprint([7; 16]), hash };
            (hash, Bytes::from(encode(&data, &meta, codec).expect("encodable block")))
        })
        .collect()
}

/// Best GB/s over `rounds` rounds of at least `round_time` each, one `op` (one run) at a time.
async fn best_gbps<T, F: Future<Output = T>>(
    rounds: usize,
    round_time: Duration,
    bytes_per_op: usize,
    mut op: impl FnMut() -> F,
) -> f64 {
    let mut best = 0.0f64;
    for _ in 0..rounds {
        let start = Instant::now();
        let mut ops = 0usize;
        while start.elapsed() < round_time {
            op().await;
            ops += 1;
        }
        best = best.max((ops * bytes_per_op) as f64 / start.elapsed().as_secs_f64() / 1e9);
    }
    best
}

/// `redis-benchmark -t set,get` requests/s: (set, get).
fn redis_benchmark(port: u16, bytes: usize, requests: usize, clients: usize, pipeline: usize) -> (f64, f64) {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-d", &bytes.to_string(), "-t", "set,get"])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string(), "-P", &pipeline.to_string(), "-q"])
        .output()
        .expect("redis-benchmark must be installed");
    // `-q` prints '\r'-ended progress segments ("SET: rps=1240.3 (overall: ...)") and then the
    // result, "SET: 1292.93 requests per second, p50=...": only the latter has a number first.
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = |name: &str| {
        text.split(['\r', '\n'])
            .filter_map(|seg| seg.trim().strip_prefix(name)?.split_whitespace().next()?.parse::<f64>().ok())
            .next_back()
            .unwrap_or_else(|| panic!("no {name} result in redis-benchmark output: {text:?}"))
    };
    (rps("SET:"), rps("GET:"))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    // Blocks per run = redis-benchmark's -P: 16 by default (a typical prefix run).
    let run_len: usize = args
        .iter()
        .position(|a| a == "--run")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(16);
    let (rounds, round_time) = if quick { (2, Duration::from_millis(250)) } else { (4, Duration::from_millis(500)) };
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let mut config = RedisTierConfig::new(format!("redis://127.0.0.1:{}/", server.port));
    config.key_prefix = "lcserve:bench:".to_owned();
    // A 16-block int8 run is ~12 MB: the production 50 ms budget is not what is measured here.
    config.op_timeout = Duration::from_secs(10);

    println!(
        "redis-server {} on 127.0.0.1:{}; ours: RedisTier, 1 connection, {run_len}-block runs (1 pipeline / 1 MGET), 1 run in flight, current-thread tokio; {rounds} rounds x {round_time:?}, best",
        Command::new("redis-server")
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|v| v.split_whitespace().nth(2).map(|v| v.trim_start_matches("v=").to_owned()))
            .unwrap_or_default(),
        server.port,
    );
    println!("redis-benchmark: -t set,get -P {run_len}, -c 1 (same shape) and -c 4 (context)");
    println!(
        "{:<6} {:>11} {:>9} {:>9} | {:>9} {:>9} {:>9} {:>9} | {:>9} {:>9}",
        "codec",
        "block bytes",
        "put GB/s",
        "get GB/s",
        "SET c1",
        "GET c1",
        "SET c4",
        "GET c4",
        "put/SETc1",
        "get/GETc1"
    );
    for (tag, (name, codec)) in [("int8", Codec::INT8), ("int4", Codec::INT4)].into_iter().enumerate() {
        let tier = runtime.block_on(async { RedisTier::new(&config) }).expect("tier config");
        let run = blocks(codec, tag as u8 + 1, run_len);
        let bytes = run[0].1.len();
        let hashes: Vec<SequenceHash> = run.iter().map(|(h, _)| *h).collect();
        let run_bytes = bytes * run_len;
        let (put, get) = runtime.block_on(async {
            tier.put_many(run.clone()).await; // connect + warm
            let put = best_gbps(rounds, round_time, run_bytes, || tier.put_many(run.clone())).await;
            let get = best_gbps(rounds, round_time, run_bytes, || async {
                let got = tier.get_many(&hashes).await;
                assert!(got.iter().all(Option::is_some), "get_many missed");
            })
            .await;
            (put, get)
        });
        let stats = tier.stats();
        assert!(
            stats.errors == 0 && stats.timeouts == 0 && stats.corrupt == 0 && stats.misses == 0,
            "tier failures during the bench: {stats:?}"
        );
        // ~3 GB per redis-benchmark test, a whole number of pipelines.
        let requests = (3_000_000_000 / bytes).max(256).next_multiple_of(run_len);
        let (set1, get1) = redis_benchmark(server.port, bytes, requests, 1, run_len);
        let (set4, get4) = redis_benchmark(server.port, bytes, requests, 4, run_len);
        let gbps = |rps: f64| rps * bytes as f64 / 1e9;
        println!(
            "{:<6} {:>11} {:>9.2} {:>9.2} | {:>9.2} {:>9.2} {:>9.2} {:>9.2} | {:>8.2}x {:>8.2}x",
            name,
            bytes,
            put,
            get,
            gbps(set1),
            gbps(get1),
            gbps(set4),
            gbps(get4),
            put / gbps(set1),
            get / gbps(get1),
        );
    }
}
