//! The kvstore service with Redis behind it: a real `redis-server`, the real service on
//! loopback, and the `RemoteTier` a worker would use as the client.

mod support;

use std::time::{Duration, Instant};

use lcserve_kvstore::{KvStoreConfig, RedisTierConfig, RemoteTier, RemoteTierConfig, Tier};
use lcserve_proto::v1::StatsRequest;
use lcserve_proto::v1::kv_store_client::KvStoreClient;
use redis::AsyncCommands;
use support::{RedisServer, Service, block, blocks, hashes, raw};

const PREFIX: &str = "test:svc:";

fn config(redis: &RedisServer) -> KvStoreConfig {
    let redis = RedisTierConfig { key_prefix: PREFIX.to_owned(), ..RedisTierConfig::new(redis.url()) };
    KvStoreConfig { redis: Some(redis), ..KvStoreConfig::default() }
}

fn client(service: &Service) -> RemoteTier {
    RemoteTier::new(&RemoteTierConfig::new(service.endpoint())).expect("valid config")
}

async fn stats(service: &Service) -> lcserve_proto::v1::StatsResponse {
    let mut client = KvStoreClient::connect(service.endpoint()).await.expect("connects");
    client.stats(StatsRequest {}).await.expect("stats").into_inner()
}

#[tokio::test]
async fn blocks_put_through_the_service_land_in_redis_and_a_fresh_service_reads_them_through() {
    let redis = RedisServer::start();
    let first = Service::start(config(&redis)).await;
    let run = hashes("tenant", 4, 1);
    assert_eq!(client(&first).put_many(blocks(&run)).await, 4);

    // Write-behind: the service acknowledges once its RAM tier holds the blocks, Redis follows.
    let mut conn = raw(&redis).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    for hash in &run {
        let key = format!("{PREFIX}{hash}");
        loop {
            let stored: Option<Vec<u8>> = conn.get(&key).await.expect("get");
            if let Some(stored) = stored {
                assert_eq!(stored, block(*hash).to_vec(), "the bytes in Redis are the block");
                break;
            }
            assert!(Instant::now() < deadline, "{key} never reached Redis");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    first.stop().await;

    // A fresh instance has an empty RAM tier: lookup and get go through to Redis.
    let second = Service::start(config(&redis)).await;
    assert!(stats(&second).await.shared_tier);
    let tier = client(&second);
    let mut asked = run.clone();
    asked.extend(hashes("tenant", 1, 99));
    assert_eq!(tier.lookup(&asked).await, 4);
    let got = tier.get_many(&asked).await;
    assert_eq!(got, run.iter().map(|h| Some(block(*h))).chain([None]).collect::<Vec<_>>());
    let after = stats(&second).await;
    assert_eq!((after.shared_hits, after.shared_misses, after.blocks), (4, 1, 4), "promoted into RAM");

    // Promoted: a second read does not go to Redis.
    tier.get_many(&run).await;
    let again = stats(&second).await;
    assert_eq!((again.shared_hits, again.host_hits), (4, 4));
}

/// A process's runtime: `shutdown_background` ends its tasks as the process's exit would.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime")
}

#[test]
fn a_stopping_service_writes_every_accepted_block_to_redis_first() {
    let redis = RedisServer::start();
    let (service_runtime, client_runtime) = (runtime(), runtime());
    let listener = service_runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("binds");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut config = config(&redis);
    if let Some(redis) = &mut config.redis {
        redis.op_timeout = Duration::from_secs(5);
    }
    let served = service_runtime.spawn(lcserve_kvstore::run(config, listener, async move {
        let _ = stopped.await;
    }));

    // Redis holds writes back for a while: the blocks are accepted into the RAM tier and wait
    // in the write-behind queue when the stop comes.
    let runs: Vec<_> = (0..16).map(|seed| hashes("tenant", 4, 500 + seed)).collect();
    client_runtime.block_on(async {
        let mut conn = raw(&redis).await;
        let _: () =
            redis::cmd("CLIENT").arg("PAUSE").arg(300).arg("WRITE").query_async(&mut conn).await.expect("pause");
        let tier = RemoteTier::new(&RemoteTierConfig::new(endpoint)).expect("valid config");
        for run in &runs {
            assert_eq!(tier.put_many(blocks(run)).await, 4);
        }
    });
    drop(stop);
    service_runtime.block_on(served).expect("joins").expect("ran without error");
    service_runtime.shutdown_background();

    client_runtime.block_on(async {
        let mut conn = raw(&redis).await;
        for hash in runs.iter().flatten() {
            let stored: Option<Vec<u8>> = conn.get(format!("{PREFIX}{hash}")).await.expect("get");
            assert!(stored.as_deref() == Some(&block(*hash)[..]), "block {hash} was accepted, then lost on stop");
        }
    });
}

#[tokio::test]
async fn with_redis_down_the_service_still_serves_its_ram_tier() {
    let redis = RedisServer::start();
    let service = Service::start(config(&redis)).await;
    redis.kill();
    let tier = client(&service);
    let run = hashes("tenant", 3, 2);
    assert_eq!(tier.put_many(blocks(&run)).await, 3, "RAM takes the write; Redis is behind a queue");
    assert_eq!(tier.get_many(&run).await.iter().flatten().count(), 3);
    let started = Instant::now();
    assert_eq!(tier.lookup(&hashes("tenant", 2, 3)).await, 0, "a miss in RAM and in the dead Redis");
    assert!(started.elapsed() < Duration::from_millis(500), "bounded by the Redis op timeout");
}
