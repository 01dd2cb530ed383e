//! The shared-tier prefix index against the real kvstore service: initial snapshot, resume
//! after a broken connection (replay, no snapshot), and a rebuild after a kvstore restart
//! (a new epoch). Observed through the router's metrics, as an operator would.

mod support;

use std::time::Duration;

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_kvstore::{BlockMeta, Codec, KvStoreConfig, encode};
use lcserve_proto::v1::PutBlock;
use lcserve_proto::v1::kv_store_client::KvStoreClient;
use lcserve_router::RouterConfig;
use support::proxy::Proxy;
use support::*;
use tokio::sync::oneshot;

const LAYOUT: KvLayout = KvLayout { layers: 1, kv_heads: 1, head_dim: 4, block_size: 4 };

fn hash(i: u8) -> SequenceHash {
    SequenceHash([i; 16])
}

struct KvStore {
    url: String,
    _stop: oneshot::Sender<()>,
}

async fn start_kvstore() -> KvStore {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(lcserve_kvstore::run(KvStoreConfig::default(), listener, async {
        let _ = stopped.await;
    }));
    KvStore { url, _stop: stop }
}

// PutBlock grows optional fields (a tenant) that this test leaves at their defaults.
#[allow(clippy::needless_update)]
async fn put(kvstore: &KvStore, ids: &[u8]) {
    let mut client = KvStoreClient::connect(kvstore.url.clone()).await.expect("kvstore connect");
    let blocks: Vec<PutBlock> = ids
        .iter()
        .map(|&i| {
            let data: Vec<f32> = (0..LAYOUT.elems_per_block()).map(|j| j as f32 + f32::from(i)).collect();
            let meta = BlockMeta { layout: LAYOUT, fingerprint: ModelFingerprint([7; 16]), hash: hash(i) };
            let block = encode(&data, &meta, Codec::INT8).expect("encode");
            PutBlock { hash: hash(i).0.to_vec(), block, ..Default::default() }
        })
        .collect();
    let stored = client.put(tokio_stream::iter(blocks)).await.expect("put").into_inner().stored;
    assert_eq!(stored as usize, ids.len());
}

/// Waits until the metric reaches `value`.
async fn metric_reaches(router: &TestRouter, name: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(router.http, name, "").await;
        if now == value {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} stayed at {now}, expected {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_index_follows_the_kvstore_across_disconnects_and_restarts() {
    let first = start_kvstore().await;
    let path = Proxy::start(&first.url).await;
    put(&first, &[1, 2, 3]).await;
    let decode = InstantWorker::start("decode").await;
    let router = start_router(RouterConfig { kvstore: Some(path.url.clone()), ..config(&[], &[&decode]) }).await;

    metric_reaches(&router, "lcserve_router_shared_index_blocks", 3.0).await;
    metric_reaches(&router, "lcserve_router_kvstore_connected", 1.0).await;
    assert_eq!(metric(router.http, "lcserve_router_kvstore_subscriptions_total", "").await, 1.0);
    assert_eq!(metric(router.http, "lcserve_router_kvstore_clears_total", "").await, 1.0, "the initial snapshot");
    put(&first, &[4]).await;
    metric_reaches(&router, "lcserve_router_shared_index_blocks", 4.0).await;

    // A broken connection: blocks stored meanwhile arrive by replay, without a new snapshot.
    path.cut();
    metric_reaches(&router, "lcserve_router_kvstore_connected", 0.0).await;
    put(&first, &[5, 6]).await;
    path.restore(&first.url);
    metric_reaches(&router, "lcserve_router_shared_index_blocks", 6.0).await;
    assert_eq!(metric(router.http, "lcserve_router_kvstore_subscriptions_total", "").await, 2.0);
    assert_eq!(metric(router.http, "lcserve_router_kvstore_clears_total", "").await, 1.0, "resumed, not rebuilt");

    // The kvstore restarts empty (a new epoch): the index is rebuilt from its snapshot.
    let second = start_kvstore().await;
    put(&second, &[9]).await;
    path.cut();
    path.restore(&second.url);
    metric_reaches(&router, "lcserve_router_shared_index_blocks", 1.0).await;
    assert_eq!(metric(router.http, "lcserve_router_kvstore_clears_total", "").await, 2.0);

    // Requests are unaffected throughout.
    let response = post(router.http, "/v1/completions", r#"{"prompt":"w10 w11 w12 w13","max_tokens":2}"#).await;
    assert_eq!(response.status, 200, "{}", response.body);
}
