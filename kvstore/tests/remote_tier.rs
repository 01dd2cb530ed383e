//! The remote shared tier (`RemoteTier`) against the real kvstore service on loopback.

mod support;

use bytes::Bytes;
use std::time::{Duration, Instant};

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::{
    BlockMeta, Codec, HostCache, KvStoreConfig, MESSAGE_OVERHEAD_BYTES, RawDtype, RemoteTier, RemoteTierConfig,
    RemoteTierError, SharedWrite, Tier, TierKind, TieredConfig, TieredStore, encode,
};
use support::{Service, block, blocks, drained, hashes};

fn remote(service: &Service, op_timeout: Duration) -> RemoteTier {
    let config = RemoteTierConfig { op_timeout, ..RemoteTierConfig::new(service.endpoint()) };
    RemoteTier::new(&config).expect("valid config")
}

fn tiered(tier: RemoteTier) -> TieredStore<RemoteTier> {
    TieredStore::new(HostCache::new(1 << 20), Some(tier), TieredConfig::default(), &tokio::runtime::Handle::current())
}

#[tokio::test]
async fn a_run_round_trips_through_the_service() {
    let service = Service::start(KvStoreConfig::default()).await;
    let tier = remote(&service, Duration::from_secs(1));
    let run = hashes("tenant", 6, 1);
    assert_eq!(tier.put_many(blocks(&run[..4])).await, 4);
    assert_eq!(tier.lookup(&run).await, 4);
    let got = tier.get_many(&run).await;
    for (i, hash) in run.iter().enumerate() {
        assert_eq!(got[i], (i < 4).then(|| block(*hash)), "block {i}");
    }
    let stats = tier.stats();
    let len = block(run[0]).len() as u64;
    assert_eq!((stats.hits, stats.misses, stats.errors, stats.timeouts, stats.corrupt), (4, 2, 0, 0, 0));
    assert_eq!((stats.bytes_read, stats.blocks_written, stats.bytes_written), (4 * len, 4, 4 * len));
    assert_eq!(tier.get_many(&[]).await, Vec::new());
    assert_eq!(tier.lookup(&run[4..]).await, 0);
}

/// A raw f32 block of 6.3 MB: above gRPC's default 4 MB message limit, as real raw blocks of
/// larger models are.
fn large_block(hash: SequenceHash) -> Bytes {
    let layout = KvLayout { layers: 4, kv_heads: 8, head_dim: 128, block_size: 192 };
    let data: Vec<f32> = (0..layout.elems_per_block()).map(|i| (i % 1013) as f32 * 0.5).collect();
    let meta = BlockMeta { layout, fingerprint: ModelFingerprint([7; 16]), hash };
    encode(&data, &meta, Codec::Raw(RawDtype::F32)).expect("encodes").into()
}

#[tokio::test]
async fn blocks_beyond_grpcs_default_limit_pass_and_blocks_beyond_the_configured_one_are_left_out() {
    let service = Service::start(KvStoreConfig::default()).await;
    let tier = remote(&service, Duration::from_secs(5));
    let run = hashes("tenant", 2, 2);
    let large = large_block(run[0]);
    assert!(large.len() > 4 << 20);
    assert_eq!(tier.put_many(vec![(run[0], large.clone())]).await, 1);
    assert_eq!(tier.get_many(&run[..1]).await, vec![Some(large.clone())]);

    // A client whose limit is below the large block sends the small ones around it.
    let config = RemoteTierConfig {
        max_message_bytes: block(run[1]).len() + MESSAGE_OVERHEAD_BYTES,
        ..RemoteTierConfig::new(service.endpoint())
    };
    let small = RemoteTier::new(&config).expect("valid config");
    let mixed = vec![(run[0], large), (run[1], block(run[1]))];
    assert_eq!(small.put_many(mixed).await, 1);
    assert_eq!(small.stats().errors, 1, "the block too large to send is counted");
    assert_eq!(tier.lookup(&run).await, 2);
}

#[tokio::test]
async fn a_run_written_through_one_tiered_store_is_found_by_another() {
    let service = Service::start(KvStoreConfig::default()).await;
    let writer = tiered(remote(&service, Duration::from_secs(1)));
    let reader = tiered(remote(&service, Duration::from_secs(1)));
    let run = hashes("tenant", 5, 3);
    assert!(writer.put(blocks(&run[..4])).queued);
    drained(&writer, 4).await;
    assert_eq!(writer.shared().map(|tier| tier.stats().blocks_written), Some(4));

    assert_eq!(reader.lookup(&run).await, vec![TierKind::Shared; 4]);
    let fetched = reader.get(&run).await;
    assert_eq!(fetched.sources, vec![TierKind::Shared; 4]);
    assert_eq!(fetched.blocks, run[..4].iter().map(|h| block(*h)).collect::<Vec<_>>());
    assert_eq!(reader.lookup(&run).await, vec![TierKind::Host; 4], "promoted into the reader's host tier");
}

#[tokio::test]
async fn put_through_returns_once_another_machine_can_read_the_blocks() {
    let service = Service::start(KvStoreConfig::default()).await;
    let prefill = tiered(remote(&service, Duration::from_secs(1)));
    let decode = tiered(remote(&service, Duration::from_secs(1)));
    let run = hashes("tenant", 4, 6);
    let written = prefill.put_through(blocks(&run)).await;
    assert_eq!(written.shared, Some(SharedWrite { sent: 4, acknowledged: 4 }));
    assert!(written.shared.is_some_and(|shared| shared.complete()) && written.evicted.is_empty());
    // No waiting on a queue: the hand-off can happen now.
    assert_eq!(decode.get(&run).await.sources, vec![TierKind::Shared; 4]);
    assert_eq!(prefill.lookup(&run).await, vec![TierKind::Host; 4]);
    let stats = prefill.stats();
    assert_eq!((stats.shared_put, stats.shared_acknowledged, stats.shared_queued), (4, 4, 0));
    let empty = prefill.put_through(Vec::new()).await;
    assert_eq!(empty.shared, Some(SharedWrite { sent: 0, acknowledged: 0 }));
}

#[tokio::test]
async fn a_store_that_is_down_is_a_quick_miss_and_a_restarted_one_is_used_again() {
    let service = Service::start(KvStoreConfig::default()).await;
    let op_timeout = Duration::from_millis(200);
    let tier = remote(&service, op_timeout);
    let store = tiered(tier.clone());
    let run = hashes("tenant", 3, 4);
    assert_eq!(tier.put_many(blocks(&run)).await, 3);
    let addr = service.stop().await;

    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(tier.lookup(&run).await, 0);
        assert_eq!(tier.get_many(&run).await, vec![None; 3]);
        assert_eq!(tier.put_many(blocks(&run)).await, 0);
        assert!(store.get(&run).await.blocks.is_empty());
        let written = store.put_through(blocks(&run)).await;
        assert_eq!(written.shared, Some(SharedWrite { sent: 3, acknowledged: 0 }), "known not shared");
        store.host().clear();
        assert!(started.elapsed() < 5 * op_timeout, "bounded by the op timeout: {:?}", started.elapsed());
    }
    let down = tier.stats();
    assert!(down.errors + down.timeouts >= 15, "every failed call is counted: {down:?}");
    assert_eq!(down.blocks_written, 3, "nothing is counted written while the store is down");

    // Same port, empty store: the channel reconnects by itself.
    let _service = Service::start_on(addr, KvStoreConfig::default()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tier.put_many(blocks(&run)).await < 3 {
        assert!(Instant::now() < deadline, "the tier did not recover: {:?}", tier.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.get(&run).await.sources, vec![TierKind::Shared; 3]);
}

#[tokio::test]
async fn a_worker_starts_before_its_store() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("addr")
    };
    let tier = RemoteTier::new(&RemoteTierConfig::new(format!("http://{addr}"))).expect("no connection needed");
    let run = hashes("tenant", 2, 5);
    assert_eq!(tier.lookup(&run).await, 0);
    let _service = Service::start_on(addr, KvStoreConfig::default()).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while tier.put_many(blocks(&run)).await < 2 {
        assert!(Instant::now() < deadline, "never connected: {:?}", tier.stats());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tier.lookup(&run).await, 2);
}

#[tokio::test]
async fn configuration_errors_name_the_field() {
    let bad = |config: RemoteTierConfig| RemoteTier::new(&config).expect_err("invalid");
    let endpoint = |e: &str| RemoteTierConfig::new(e);
    for e in ["not a uri", "https://127.0.0.1:1", "127.0.0.1:50052", "http://user:pw@127.0.0.1:1"] {
        assert!(matches!(bad(endpoint(e)), RemoteTierError::InvalidEndpoint { .. }), "{e}");
    }
    let zero = RemoteTierConfig { op_timeout: Duration::ZERO, ..endpoint("http://127.0.0.1:1") };
    assert_eq!(bad(zero), RemoteTierError::Zero { field: "op_timeout" });
    let zero = RemoteTierConfig { connect_timeout: Duration::ZERO, ..endpoint("http://127.0.0.1:1") };
    assert_eq!(bad(zero), RemoteTierError::Zero { field: "connect_timeout" });
    let small = RemoteTierConfig { max_message_bytes: 10, ..endpoint("http://127.0.0.1:1") };
    assert!(bad(small).to_string().contains("max_message_bytes"));
}

#[test]
fn outside_a_runtime_construction_is_an_error_not_a_panic() {
    let error = RemoteTier::new(&RemoteTierConfig::new("http://127.0.0.1:1")).expect_err("no runtime");
    assert_eq!(error, RemoteTierError::NoRuntime);
}
