//! The kvstore gRPC service end to end: the real server on `127.0.0.1:0`, a real tonic client.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::{BlockMeta, Codec, KvStoreConfig, encode};
use lcserve_proto::v1::kv_event::Kind;
use lcserve_proto::v1::kv_store_client::KvStoreClient;
use lcserve_proto::v1::{self, GetRequest, LookupRequest, PutBlock, StatsRequest, SubscribeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::Service;
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
    service: Service,
}

async fn connect(service: &Service) -> (KvStoreClient<Channel>, Channel) {
    let channel = Channel::from_shared(service.endpoint()).expect("uri").connect().await.expect("connects");
    (KvStoreClient::new(channel.clone()), channel)
}

async fn start(config: KvStoreConfig) -> Server {
    let service = Service::start(config).await;
    let (client, channel) = connect(&service).await;
    Server { client, channel, service }
}

impl Server {
    /// Stops the server and starts a fresh one (empty, new epoch) on the same port.
    async fn restart(self, config: KvStoreConfig) -> Server {
        let Server { client, channel, service } = self;
        drop((client, channel));
        let service = Service::start_on(service.stop().await, config).await;
        let (client, channel) = connect(&service).await;
        Server { client, channel, service }
    }
}

async fn put(client: &mut KvStoreClient<Channel>, ids: &[u8]) -> v1::PutResponse {
    let blocks: Vec<PutBlock> =
        ids.iter().map(|&i| PutBlock { hash: hash(i).0.to_vec(), block: block(i), tenant: String::new() }).collect();
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

/// Where a subscriber is: the last event it applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Cursor {
    sequence: u64,
    epoch: Option<u64>,
}

impl Cursor {
    fn resume(self, snapshot: bool) -> SubscribeRequest {
        SubscribeRequest { from_sequence: Some(self.sequence), epoch: self.epoch, snapshot }
    }
}

/// Applies events until the stream stays quiet; returns where it stopped.
async fn drain(stream: &mut Streaming<v1::KvEvent>, set: &mut HashSet<Vec<u8>>, mut at: Cursor) -> Cursor {
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), stream.message()).await.map(|m| m.expect("event"))
    {
        apply(set, &event);
        at = Cursor { sequence: event.sequence, epoch: Some(event.epoch) };
    }
    at
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
        .subscribe_events(SubscribeRequest { from_sequence: None, epoch: None, snapshot: false })
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
async fn resumed_and_snapshot_subscribers_end_with_the_server_set_across_restarts() {
    let len = block(0).len();
    let config = KvStoreConfig { capacity_bytes: 5 * len, ..KvStoreConfig::default() };
    let mut server = start(config.clone()).await;
    let mut rng = StdRng::seed_from_u64(7);
    let mut mirror = HashSet::new();
    let first = SubscribeRequest { from_sequence: None, epoch: None, snapshot: true };
    let mut stream = server.client.subscribe_events(first).await.expect("sub").into_inner();
    let mut at = drain(&mut stream, &mut mirror, Cursor::default()).await;
    let mut restarts = 0;
    for round in 0..12 {
        drop(stream);
        if rng.random_bool(0.3) {
            server = server.restart(config.clone()).await;
            restarts += 1;
            let err = server.client.subscribe_events(at.resume(false)).await.expect_err("numbering restarted");
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert!(err.message().contains("epoch"), "{}", err.message());
        }
        // Sometimes past the old sequence number: a resume by number alone would then replay
        // the wrong events.
        for _ in 0..rng.random_range(1..(at.sequence as usize + 4)) {
            if rng.random_bool(0.1) {
                server.client.clear(v1::ClearRequest {}).await.expect("clear");
            } else {
                let ids: Vec<u8> = (0..rng.random_range(1..4)).map(|_| rng.random_range(0..20)).collect();
                put(&mut server.client, &ids).await;
            }
        }
        stream = server.client.subscribe_events(at.resume(true)).await.expect("resume").into_inner();
        at = drain(&mut stream, &mut mirror, at).await;
        assert_eq!(mirror, held(&mut server.client, 20).await, "round {round}");
        let stats = server.client.stats(StatsRequest {}).await.expect("stats").into_inner();
        assert_eq!(at, Cursor { sequence: stats.last_sequence, epoch: Some(stats.epoch) }, "round {round}");
    }
    assert!(restarts >= 2, "the seed must exercise restarts: {restarts}");
    let mut fresh = HashSet::new();
    let mut snap = server.client.subscribe_events(first).await.expect("snapshot").into_inner();
    drain(&mut snap, &mut fresh, Cursor::default()).await;
    assert_eq!(fresh, mirror);
}

#[tokio::test]
async fn a_resume_into_a_restarted_servers_numbering_is_a_snapshot_not_a_replay() {
    let config = KvStoreConfig::default();
    let mut server = start(config.clone()).await;
    put(&mut server.client, &[1]).await;
    let old = server.client.stats(StatsRequest {}).await.expect("stats").into_inner();
    server = server.restart(config).await;
    put(&mut server.client, &[2]).await;
    put(&mut server.client, &[3]).await;
    let new = server.client.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_ne!(old.epoch, new.epoch);
    assert!(new.last_sequence > old.last_sequence, "the old number is valid in the new numbering");
    let at = Cursor { sequence: old.last_sequence, epoch: Some(old.epoch) };
    let mut stream = server.client.subscribe_events(at.resume(true)).await.expect("sub").into_inner();
    let mut set = HashSet::from([hash(1).0.to_vec()]);
    drain(&mut stream, &mut set, at).await;
    assert_eq!(set, HashSet::from([hash(2).0.to_vec(), hash(3).0.to_vec()]), "block 1 died with the old server");
}

#[tokio::test]
async fn shutdown_ends_event_streams_instead_of_waiting_on_them() {
    let mut server = start(KvStoreConfig::default()).await;
    let live = SubscribeRequest { from_sequence: None, epoch: None, snapshot: false };
    let mut stream = server.client.subscribe_events(live).await.expect("sub").into_inner();
    put(&mut server.client, &[1]).await;
    assert!(stream.message().await.expect("event").is_some());
    let Server { service, .. } = server;
    service.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(1), stream.message()).await.expect("the stream ends");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

#[tokio::test]
async fn a_resume_past_the_log_asks_for_a_snapshot() {
    let mut server = start(KvStoreConfig { event_log_len: 2, ..KvStoreConfig::default() }).await;
    put(&mut server.client, &[1, 2, 3, 4]).await;
    let err = server
        .client
        .subscribe_events(SubscribeRequest { from_sequence: Some(0), epoch: None, snapshot: false })
        .await
        .err();
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
    let blocks = vec![PutBlock { hash: hash(1).0.to_vec(), block: block(1), tenant: String::new() }];
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
