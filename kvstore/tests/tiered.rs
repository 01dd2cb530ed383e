//! `TieredStore` over the host tier and a real Redis shared tier.

mod support;

use std::time::{Duration, Instant};

use lcserve_kvstore::{HostCache, RedisTier, RedisTierConfig, TierKind, TieredConfig, TieredStore};
use support::{RedisServer, block, blocks, drained, hashes};

fn store(url: String, queue: usize) -> TieredStore<RedisTier> {
    let config = RedisTierConfig { op_timeout: Duration::from_millis(100), ..RedisTierConfig::new(url) };
    let shared = RedisTier::new(&config).expect("valid config");
    let config = TieredConfig { write_queue_batches: queue };
    TieredStore::new(HostCache::new(1 << 20), Some(shared), config, &tokio::runtime::Handle::current())
}

#[tokio::test]
async fn a_run_put_on_one_worker_is_found_promoted_and_then_served_locally_on_another() {
    let server = RedisServer::start();
    let (writer, reader) = (store(server.url(), 16), store(server.url(), 16));
    let run = hashes("tenant", 5, 1);
    let stored = writer.put(blocks(&run[..4]));
    assert!(stored.queued && stored.evicted.is_empty());
    drained(&writer, 4).await;

    assert_eq!(reader.lookup(&run).await, vec![TierKind::Shared; 4]);
    let fetched = reader.get(&run).await;
    assert_eq!(fetched.sources, vec![TierKind::Shared; 4]);
    assert_eq!(fetched.blocks, run[..4].iter().map(|h| block(*h)).collect::<Vec<_>>());
    let stats = reader.stats();
    assert_eq!((stats.host_hits, stats.host_misses, stats.shared_hits, stats.shared_misses), (0, 5, 4, 1));
    assert_eq!(stats.promoted, 4);

    // Promoted: the next request does not cross the network.
    assert_eq!(reader.lookup(&run).await, vec![TierKind::Host; 4]);
    let again = reader.get(&run[..4]).await;
    assert_eq!(again.sources, vec![TierKind::Host; 4]);
    assert_eq!(reader.shared().map(|s| s.stats().hits), Some(4), "no second shared read");
}

#[tokio::test]
async fn lookup_names_the_tier_of_each_block() {
    let server = RedisServer::start();
    let (writer, reader) = (store(server.url(), 16), store(server.url(), 16));
    let run = hashes("tenant", 4, 2);
    writer.put(blocks(&run));
    drained(&writer, 4).await;
    let _ = reader.host().insert(run[0], block(run[0]));
    let _ = reader.host().insert(run[2], block(run[2]));
    let expected = [TierKind::Host, TierKind::Shared, TierKind::Host, TierKind::Shared];
    assert_eq!(reader.lookup(&run).await, expected);
    let fetched = reader.get(&run).await;
    assert_eq!(fetched.blocks.len(), 4);
    assert_eq!(fetched.sources[0], TierKind::Host);
}

#[tokio::test]
async fn with_redis_down_puts_never_block_and_gets_degrade_to_the_host_tier() {
    let server = RedisServer::start();
    let store = store(server.url(), 2);
    server.kill();
    let runs: Vec<_> = (0..50).map(|seed| hashes("tenant", 2, seed)).collect();
    let started = Instant::now();
    for run in &runs {
        store.put(blocks(run));
    }
    assert!(started.elapsed() < Duration::from_millis(500), "put waited on Redis: {:?}", started.elapsed());
    let stats = store.stats();
    assert!(stats.shared_dropped > 0, "a full queue drops: {stats:?}");
    assert_eq!(stats.shared_queued + stats.shared_dropped, 100);
    assert_eq!(store.host().stats().blocks, 100, "every block is in the host tier");

    let started = Instant::now();
    let mut run = runs[0].clone();
    run.extend(hashes("tenant", 3, 999));
    let fetched = store.get(&run).await;
    assert_eq!(fetched.sources, vec![TierKind::Host; 2], "host prefix, the rest a miss, no error");
    assert_eq!(store.lookup(&run).await, vec![TierKind::Host; 2]);
    assert!(started.elapsed() < Duration::from_millis(2 * 100 + 200), "bounded by the op timeout");
    let redis = store.shared().map(RedisTier::stats).unwrap_or_default();
    assert!(redis.errors + redis.timeouts >= 2, "{redis:?}");
}

#[tokio::test]
async fn without_a_shared_tier_the_store_is_the_host_tier() {
    let store: TieredStore<RedisTier> =
        TieredStore::new(HostCache::new(1 << 20), None, TieredConfig::default(), &tokio::runtime::Handle::current());
    let run = hashes("tenant", 3, 3);
    let stored = store.put(blocks(&run[..2]));
    assert!(!stored.queued);
    let written = store.put_through(blocks(&run[2..])).await;
    assert_eq!(written.shared, None, "no shared tier: nothing to wait for");
    assert!(store.host().contains(&run[2]));
    store.host().remove(&run[2]);
    assert_eq!(store.lookup(&run).await, vec![TierKind::Host; 2]);
    assert_eq!(store.get(&run).await.blocks.len(), 2);
}

#[tokio::test]
async fn promotions_report_host_evictions() {
    let server = RedisServer::start();
    let writer = store(server.url(), 16);
    let run = hashes("tenant", 4, 4);
    writer.put(blocks(&run));
    drained(&writer, 4).await;
    let len = block(run[0]).len();
    let config = RedisTierConfig::new(server.url());
    let shared = RedisTier::new(&config).expect("valid config");
    let small = TieredStore::new(
        HostCache::new(2 * len),
        Some(shared),
        TieredConfig::default(),
        &tokio::runtime::Handle::current(),
    );
    let fetched = small.get(&run).await;
    assert_eq!(fetched.blocks.len(), 4, "served even when the host tier cannot keep them all");
    assert_eq!(fetched.evicted.len(), 2);
}

#[tokio::test]
async fn put_through_awaits_redis() {
    let server = RedisServer::start();
    let (writer, reader) = (store(server.url(), 16), store(server.url(), 16));
    let run = hashes("tenant", 3, 5);
    let written = writer.put_through(blocks(&run)).await;
    assert!(written.shared.is_some_and(|shared| shared.complete() && shared.sent == 3), "{written:?}");
    assert_eq!(reader.lookup(&run).await, vec![TierKind::Shared; 3], "readable without waiting");
    server.kill();
    let written = writer.put_through(blocks(&hashes("tenant", 2, 6))).await;
    assert_eq!(written.shared.map(|shared| (shared.sent, shared.acknowledged)), Some((2, 0)));
}

#[tokio::test]
async fn flush_returns_once_every_queued_batch_is_in_redis() {
    let server = RedisServer::start();
    let (writer, reader) = (store(server.url(), 64), store(server.url(), 64));
    let runs: Vec<_> = (0..20).map(|seed| hashes("tenant", 3, 100 + seed)).collect();
    for run in &runs {
        assert!(writer.put(blocks(run)).queued);
    }
    writer.flush().await;
    assert_eq!(writer.stats().shared_put, 60, "every queued block was sent before flush returned");
    for run in &runs {
        assert_eq!(reader.lookup(run).await, vec![TierKind::Shared; 3], "readable elsewhere at once");
    }

    // With Redis gone each write gives up after the op timeout, and so does the flush.
    server.kill();
    writer.put(blocks(&hashes("tenant", 2, 200)));
    let started = Instant::now();
    writer.flush().await;
    assert!(started.elapsed() < Duration::from_secs(2), "flush is bounded by the writes' timeout");
    assert_eq!(writer.stats().shared_put, 62);

    let alone: TieredStore<RedisTier> =
        TieredStore::new(HostCache::new(1 << 20), None, TieredConfig::default(), &tokio::runtime::Handle::current());
    alone.put(blocks(&hashes("tenant", 1, 300)));
    alone.flush().await;
}
