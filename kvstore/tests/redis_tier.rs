//! The Redis shared tier against a real `redis-server` (one per test, persistence off).

mod support;

use std::time::{Duration, Instant};

use lcserve_kvstore::{RedisTier, RedisTierConfig, Tier};
use redis::AsyncCommands;
use support::{RedisServer, block, blocks, hashes, raw};

fn tier(server: &RedisServer, prefix: &str) -> RedisTier {
    let config = RedisTierConfig { key_prefix: prefix.to_owned(), ..RedisTierConfig::new(server.url()) };
    RedisTier::new(&config).expect("valid config")
}

#[tokio::test]
async fn a_prefix_run_written_by_one_instance_is_read_by_another() {
    let server = RedisServer::start();
    let (writer, reader) = (tier(&server, "dep:"), tier(&server, "dep:"));
    let run = hashes("tenant", 6, 1);
    writer.put_many(blocks(&run[..4])).await;
    assert_eq!(writer.stats().blocks_written, 4);

    assert_eq!(reader.lookup(&run).await, 4, "the cached prefix ends where the writer stopped");
    let got = reader.get_many(&run).await;
    for (i, hash) in run.iter().enumerate() {
        assert_eq!(got[i], (i < 4).then(|| block(*hash)), "block {i}");
    }
    let stats = reader.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors, stats.timeouts, stats.corrupt), (4, 2, 0, 0, 0));
    assert_eq!(stats.bytes_read, 4 * block(run[0]).len() as u64);

    // A gap ends the prefix even if later blocks are present.
    let mut gapped = run.clone();
    gapped.swap(0, 5);
    assert_eq!(reader.lookup(&gapped).await, 0);
}

#[tokio::test]
async fn corrupt_values_are_misses_deleted_and_counted() {
    let server = RedisServer::start();
    let tier = tier(&server, "dep:");
    let run = hashes("tenant", 4, 2);
    let mut conn = raw(&server).await;
    let mut flipped = block(run[0]).to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    let mut truncated = block(run[1]).to_vec();
    truncated.pop();
    let foreign = block(run[0]).to_vec(); // a valid block, but of another hash
    let planted: [(usize, Vec<u8>); 4] = [(0, flipped), (1, truncated), (2, foreign), (3, b"not a block".to_vec())];
    for (i, bytes) in &planted {
        let () = conn.set(tier.key(&run[*i]), bytes).await.expect("plant");
    }

    assert_eq!(tier.lookup(&run).await, 4, "lookup is a probe: it does not read the bytes");
    assert_eq!(tier.get_many(&run).await, vec![None; 4]);
    let stats = tier.stats();
    assert_eq!((stats.hits, stats.misses, stats.corrupt, stats.errors), (0, 4, 4, 0));
    for hash in &run {
        let exists: bool = conn.exists(tier.key(hash)).await.expect("exists");
        assert!(!exists, "a corrupt value is deleted");
    }
    assert_eq!(tier.lookup(&run).await, 0);
}

#[tokio::test]
async fn a_dead_redis_is_a_bounded_miss_and_a_restarted_one_is_used_again() {
    let server = RedisServer::start();
    let config = RedisTierConfig {
        op_timeout: Duration::from_millis(100),
        max_reconnect_delay: Duration::from_millis(50),
        ..RedisTierConfig::new(server.url())
    };
    let tier = RedisTier::new(&config).expect("valid config");
    let run = hashes("tenant", 3, 3);
    tier.put_many(blocks(&run)).await;
    assert_eq!(tier.lookup(&run).await, 3);

    let port = server.kill();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(tier.get_many(&run).await, vec![None; 3]);
        assert_eq!(tier.lookup(&run).await, 0);
        tier.put_many(blocks(&run)).await;
        assert!(started.elapsed() < Duration::from_millis(3 * 100 + 200), "bounded by the op timeout");
    }
    let down = tier.stats();
    assert!(down.errors + down.timeouts >= 9, "every failed operation is counted: {down:?}");
    assert_eq!(down.blocks_written, 3, "no write is counted while Redis is down");

    // Same port, empty (no persistence): the tier reconnects by itself.
    let _server = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tier.stats().blocks_written < 6 {
        assert!(Instant::now() < deadline, "the tier did not recover: {:?}", tier.stats());
        tier.put_many(blocks(&run)).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tier.get_many(&run).await.iter().flatten().count(), 3);
}

#[tokio::test]
async fn blocks_expire_after_their_ttl() {
    let server = RedisServer::start();
    let config = RedisTierConfig { ttl: Duration::from_millis(150), ..RedisTierConfig::new(server.url()) };
    let tier = RedisTier::new(&config).expect("valid config");
    let run = hashes("tenant", 2, 4);
    tier.put_many(blocks(&run)).await;
    let ttl: i64 = raw(&server).await.pttl(tier.key(&run[0])).await.expect("pttl");
    assert!((1..=150).contains(&ttl), "PX is set: {ttl} ms left");
    assert_eq!(tier.lookup(&run).await, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(tier.lookup(&run).await, 0);
    assert_eq!(tier.get_many(&run).await, vec![None; 2]);
}

#[tokio::test]
async fn deployments_and_namespaces_never_see_each_others_blocks() {
    let server = RedisServer::start();
    let (a, b) = (tier(&server, "prod:"), tier(&server, "staging:"));
    let run = hashes("tenant", 3, 5);
    a.put_many(blocks(&run)).await;
    assert_eq!(a.lookup(&run).await, 3);
    assert_eq!(b.lookup(&run).await, 0, "same hashes, other deployment");
    assert_eq!(b.get_many(&run).await, vec![None; 3]);

    // Same tokens, another tenant: other hashes, so nothing is shared even in one deployment.
    let other_tenant = hashes("other tenant", 3, 5);
    assert!(run.iter().all(|hash| !other_tenant.contains(hash)));
    assert_eq!(a.lookup(&other_tenant).await, 0);
}

#[tokio::test]
async fn configuration_errors_are_typed_and_hide_the_url() {
    let bad = RedisTierConfig::new("not-a-url://secret@host");
    let error = RedisTier::new(&bad).expect_err("invalid URL").to_string();
    assert!(!error.contains("secret"), "{error}");
    let zero = RedisTierConfig { op_timeout: Duration::ZERO, ..RedisTierConfig::new("redis://127.0.0.1/") };
    assert!(RedisTier::new(&zero).is_err());
    assert!(!format!("{bad:?}").contains("secret"));
}
