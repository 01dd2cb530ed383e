//! The kvstore gRPC service end to end: the real server on `127.0.0.1:0`, a real tonic client.

use std::collections::HashSet;
use std::time::Duration;

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::{BlockMeta, Codec, KvStoreConfig, encode, run};
use lcserve_proto::v1::kv_event::Kind;
use lcserve_proto::v1::kv_store_client::KvStoreClient;
use lcserve_proto::v1::{self, GetRequest, LookupRequest, PutBlock, StatsRequest, SubscribeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const LAYOUT: KvLayout = KvLayout { layers: 2, kv_heads: 2, head_dim: 8, block_size: 4 };

fn hash(i: u8) -> SequenceHash {
    SequenceHash([i; 16])
}

fn block(i: u8) -> Vec<u8> {
    let data: Vec<f32> = (0..LAYOUT.elems_per_block()).map(|j| (j as f32 * 0.37 + f32::from(i)).sin()).collect();
    let meta = BlockMeta { layout: LAYOUT, fingerprint: ModelFingerprint([9; 16]), hash: hash(i) };
    encode(&data, &meta, Codec::INT8).expect("encodes")
}

struct Server {
    client: KvStoreClient<Channel>,
    channel: Channel,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(config: KvStoreConfig) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(run(config, listener, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connects");
    Server { client: KvStoreClient::new(channel.clone()), channel, _stop: stop }
}

async fn put(client: &mut KvStoreClient<Channel>, ids: &[u8]) -> v1::PutResponse {
    let blocks: Vec<PutBlock> = ids.iter().map(|&i| PutBlock { hash: hash(i).0.to_vec(), block: block(i) }).collect();
    client.put(tokio_stream::iter(blocks)).await.expect("put").into_inner()
}

fn apply(set: &mut HashSet<Vec<u8>>, event: &v1::KvEvent) {
    match event.kind.as_ref().expect("kind") {
        Kind::Stored(stored) => set.insert(stored.hash.clone()),
        Kind::Removed(removed) => set.remove(&removed.hash),
        Kind::Cleared(_) => {
            set.clear();
            true
        }
    };
}

/// Applies events until the stream stays quiet; returns the last sequence seen.
async fn drain(stream: &mut Streaming<v1::KvEvent>, set: &mut HashSet<Vec<u8>>, mut last: u64) -> u64 {
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await.map(|m| m.expect("event"))
    {
        apply(set, &event);
        last = event.sequence;
    }
    last
}

async fn held(client: &mut KvStoreClient<Channel>, pool: u8) -> HashSet<Vec<u8>> {
    let mut set = HashSet::new();
    for i in 0..pool {
        let found = client.lookup(LookupRequest { hashes: vec![hash(i).0.to_vec()] }).await.expect("lookup");
        if found.into_inner().cached_blocks == 1 {
            set.insert(hash(i).0.to_vec());
        }
    }
    set
}

#[tokio::test]
async fn a_run_put_is_found_and_streamed_back_byte_identical() {
    let mut server = start(KvStoreConfig::default()).await;
    let ids = [1, 2, 3, 4];
    assert_eq!(put(&mut server.client, &ids).await, v1::PutResponse { stored: 4, rejected: 0 });
    let mut run: Vec<Vec<u8>> = ids.iter().map(|&i| hash(i).0.to_vec()).collect();
    run.push(hash(99).0.to_vec());
    let found = server.client.lookup(LookupRequest { hashes: run.clone() }).await.expect("lookup").into_inner();
    assert_eq!(found.cached_blocks, 4);
    let mut stream = server.client.get(GetRequest { hashes: run }).await.expect("get").into_inner();
    let mut got = Vec::new();
    while let Some(block) = stream.message().await.expect("block") {
        got.push(block);
    }
    assert_eq!(got.len(), 4, "stops at the first missing block");
    for (got, &i) in got.iter().zip(&ids) {
        assert_eq!((got.hash.clone(), got.block.clone()), (hash(i).0.to_vec(), block(i)));
    }
}

#[tokio::test]
async fn eviction_publishes_block_removed() {
    let len = block(0).len();
    let mut server = start(KvStoreConfig { capacity_bytes: 3 * len, ..KvStoreConfig::default() }).await;
    let mut events = server
        .client
        .subscribe_events(SubscribeRequest { from_sequence: None, snapshot: false })
        .await
        .expect("sub")
        .into_inner();
    // Two calls: events are changes of the held set, so a block stored and evicted within one
    // `Put` was never held as far as a subscriber can tell, and produces no event.
    put(&mut server.client, &[1, 2, 3]).await;
    put(&mut server.client, &[4, 5]).await;
    let mut removed = Vec::new();
    let mut set = HashSet::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), events.message()).await.map(|m| m.expect("ev"))
    {
        if let Some(Kind::Removed(r)) = &event.kind {
            removed.push(r.hash.clone());
        }
        apply(&mut set, &event);
    }
    assert_eq!(removed, vec![hash(1).0.to_vec(), hash(2).0.to_vec()], "LRU order");
    assert_eq!(set, held(&mut server.client, 10).await);
}

#[tokio::test]
async fn resumed_and_snapshot_subscribers_end_with_the_server_set() {
    let len = block(0).len();
    let mut server = start(KvStoreConfig { capacity_bytes: 5 * len, ..KvStoreConfig::default() }).await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut mirror = HashSet::new();
    let mut stream = server
        .client
        .subscribe_events(SubscribeRequest { from_sequence: None, snapshot: true })
        .await
        .expect("sub")
        .into_inner();
    let mut last = drain(&mut stream, &mut mirror, 0).await;
    for round in 0..6 {
        drop(stream);
        for _ in 0..rng.random_range(1..8) {
            if rng.random_bool(0.1) {
                server.client.clear(v1::ClearRequest {}).await.expect("clear");
            } else {
                let ids: Vec<u8> = (0..rng.random_range(1..4)).map(|_| rng.random_range(0..20)).collect();
                put(&mut server.client, &ids).await;
            }
        }
        stream = server
            .client
            .subscribe_events(SubscribeRequest { from_sequence: Some(last), snapshot: false })
            .await
            .expect("resume")
            .into_inner();
        last = drain(&mut stream, &mut mirror, last).await;
        assert_eq!(mirror, held(&mut server.client, 20).await, "round {round}");
    }
    let mut fresh = HashSet::new();
    let mut snap = server
        .client
        .subscribe_events(SubscribeRequest { from_sequence: None, snapshot: true })
        .await
        .expect("snapshot")
        .into_inner();
    drain(&mut snap, &mut fresh, 0).await;
    assert_eq!(fresh, mirror);
}

#[tokio::test]
async fn a_resume_past_the_log_asks_for_a_snapshot() {
    let mut server = start(KvStoreConfig { event_log_len: 2, ..KvStoreConfig::default() }).await;
    put(&mut server.client, &[1, 2, 3, 4]).await;
    let err = server.client.subscribe_events(SubscribeRequest { from_sequence: Some(0), snapshot: false }).await.err();
    let err = err.expect("not replayable");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("snapshot"), "{}", err.message());
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let mut server = start(KvStoreConfig { max_block_bytes: 64, ..KvStoreConfig::default() }).await;
    let err = server.client.lookup(LookupRequest { hashes: vec![vec![0; 16], vec![0; 3]] }).await.expect_err("bad");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("hashes[1]"), "{}", err.message());
    let blocks = vec![PutBlock { hash: hash(1).0.to_vec(), block: block(1) }];
    let err = server.client.put(tokio_stream::iter(blocks)).await.expect_err("too large");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("max_block_bytes"), "{}", err.message());
    let err = server.client.pin(v1::PinRequest { hashes: vec![], lease_ms: 0 }).await.expect_err("no lease");
    assert!(err.code() == Code::InvalidArgument && err.message().contains("lease_ms"), "{}", err.message());
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_service() {
    let server = start(KvStoreConfig::default()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "lcserve.v1.KvStore".into() })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(status.status(), tonic_health::pb::health_check_response::ServingStatus::Serving);

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut reflection = ServerReflectionClient::new(server.channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses =
        reflection.server_reflection_info(tokio_stream::iter([request])).await.expect("refl").into_inner();
    let response = responses.message().await.expect("response").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else { panic!("list") };
    assert!(list.service.iter().any(|s| s.name == "lcserve.v1.KvStore"), "{:?}", list.service);
    let stats = server.client.clone().stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!(stats.last_sequence, 0);
}

#[tokio::test]
async fn pins_are_released_by_unpin_or_when_their_lease_runs_out() {
    let mut server = start(KvStoreConfig::default()).await;
    put(&mut server.client, &[1, 2]).await;
    let run = vec![hash(1).0.to_vec(), hash(2).0.to_vec(), hash(3).0.to_vec()];
    let long = server.client.pin(v1::PinRequest { hashes: run.clone(), lease_ms: 60_000 }).await.expect("pin");
    let long = long.into_inner();
    assert_eq!(long.pinned, 2, "the held prefix");
    let short = server.client.pin(v1::PinRequest { hashes: run, lease_ms: 50 }).await.expect("pin").into_inner();
    assert_eq!(server.client.stats(StatsRequest {}).await.expect("stats").into_inner().active_pins, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = server.client.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!((stats.active_pins, stats.pinned_blocks), (1, 2), "the short lease expired");
    let unpin = |pin_id| v1::UnpinRequest { pin_id };
    assert!(!server.client.unpin(unpin(short.pin_id)).await.expect("unpin").into_inner().released);
    assert!(server.client.unpin(unpin(long.pin_id)).await.expect("unpin").into_inner().released);
    let stats = server.client.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!((stats.active_pins, stats.pinned_blocks), (0, 0));
}
