//! TLS on the store's two network hops, with certificates from a test CA: the kvstore service
//! under mTLS (workers reach it through the remote tier), and Redis over `rediss://`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lcserve_kvstore::{KvStoreConfig, RedisTier, RedisTierConfig, RemoteTier, RemoteTierConfig, Tier};
use lcserve_svc_kit::tls::test_pki::TestCa;
use lcserve_svc_kit::{Tls, TlsArgs};
use support::{RedisServer, Service, block, blocks, hashes};

fn load(args: &TlsArgs) -> Arc<Tls> {
    Tls::load(args).expect("readable certificates").expect("TLS flags given")
}

fn remote(url: &str, tls: Arc<Tls>) -> RemoteTier {
    RemoteTier::new(&RemoteTierConfig { tls: Some(tls), ..RemoteTierConfig::new(url) }).expect("valid config")
}

#[tokio::test]
async fn the_service_under_mtls_serves_workers_with_a_certificate_and_refuses_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "cluster");
    let service =
        Service::start(KvStoreConfig { tls: Some(load(&ca.issue("kvstore"))), ..KvStoreConfig::default() }).await;
    let url = format!("https://localhost:{}", service.addr.port());
    let run = hashes("tenant", 3, 1);

    let worker = remote(&url, load(&ca.issue("worker")));
    assert_eq!(worker.put_many(blocks(&run)).await, 3);
    assert_eq!(worker.get_many(&run).await, run.iter().map(|h| Some(block(*h))).collect::<Vec<_>>());
    assert_eq!(worker.stats().errors, 0);

    // Trusts the CA but has no certificate of its own: mTLS refuses it, so it sees misses.
    let anonymous = remote(&url, load(&TlsArgs { tls_ca: Some(ca.ca_path()), ..TlsArgs::default() }));
    assert_eq!(anonymous.lookup(&run).await, 0);
    assert_eq!(anonymous.get_many(&run).await, vec![None; 3]);
    assert!(anonymous.stats().errors > 0, "{:?}", anonymous.stats());

    // Plain HTTP/2 to the TLS port is refused too.
    let plain = RemoteTier::new(&RemoteTierConfig::new(format!("http://127.0.0.1:{}", service.addr.port())))
        .expect("valid config");
    assert_eq!(plain.lookup(&run).await, 0);
    assert!(plain.stats().errors > 0);
}

#[tokio::test]
async fn redis_over_rediss_verifies_the_server_with_the_configured_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "redis-ca");
    let redis_cert = ca.issue("redis");
    let (cert, key) = (redis_cert.tls_cert.expect("cert"), redis_cert.tls_key.expect("key"));
    let server = RedisServer::start_tls(&cert, &key, &ca.ca_path());
    let url = server.tls_url().expect("TLS port");
    let run = hashes("tenant", 4, 2);

    let config = RedisTierConfig {
        tls: Some(load(&ca.issue("kvstore"))),
        op_timeout: Duration::from_secs(2),
        ..RedisTierConfig::new(url.clone())
    };
    let tier = RedisTier::new(&config).expect("valid config");
    tier.put_many(blocks(&run)).await;
    assert_eq!(tier.stats().blocks_written, 4, "{:?}", tier.stats());
    assert_eq!(tier.lookup(&run).await, 4);
    assert_eq!(tier.get_many(&run).await, run.iter().map(|h| Some(block(*h))).collect::<Vec<_>>());

    // A client trusting another CA does not talk to this Redis.
    let stranger = TestCa::new(dir.path(), "stranger");
    let config = RedisTierConfig { tls: Some(load(&stranger.issue("kvstore"))), ..RedisTierConfig::new(url) };
    let untrusting = RedisTier::new(&config).expect("valid config");
    assert_eq!(untrusting.lookup(&run).await, 0);
    assert!(untrusting.stats().errors + untrusting.stats().timeouts > 0, "{:?}", untrusting.stats());
}
