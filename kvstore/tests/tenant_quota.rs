//! Per-tenant byte quotas: a property test of the policy over a real `HostCache`, then the
//! kvstore service enforcing them end to end (events, stats, the writer never failing).

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use lcserve_common::SequenceHash;
use lcserve_kvstore::{
    HostCache, KvStoreConfig, PinGuard, RemoteTier, RemoteTierConfig, SharedWrite, TenantQuotas, Tier, TieredConfig,
    TieredStore,
};
use lcserve_proto::v1::kv_event::Kind;
use lcserve_proto::v1::kv_store_client::KvStoreClient;
use lcserve_proto::v1::{StatsRequest, SubscribeRequest};
use proptest::prelude::*;
use support::{Service, block, blocks, drained, hashes};

const TENANTS: u8 = 3;
const QUOTA: usize = 200;
const MAX_LEN: usize = 60;
const MAX_PUT: usize = 8;

/// Tenants never share a hash (their salts differ), and a block always has one length.
fn hash(tenant: u8, id: u8) -> SequenceHash {
    let mut bytes = [0; 16];
    bytes[0] = tenant;
    bytes[1] = id;
    SequenceHash(bytes)
}

fn len(tenant: u8, id: u8) -> usize {
    1 + (usize::from(tenant) * 31 + usize::from(id) * 17) % MAX_LEN
}

fn name(tenant: u8) -> String {
    // Tenant 0 is the default tenant (empty name).
    if tenant == 0 { String::new() } else { format!("tenant-{tenant}") }
}

#[derive(Clone, Debug)]
enum Op {
    Put { tenant: u8, ids: Vec<u8> },
    Get { tenant: u8, ids: Vec<u8> },
    Pin { tenant: u8, id: u8 },
    Unpin { index: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let ids = prop::collection::vec(0..30u8, 1..=MAX_PUT);
    prop_oneof![
        6 => (0..TENANTS, ids.clone()).prop_map(|(tenant, ids)| Op::Put { tenant, ids }),
        2 => (0..TENANTS, ids).prop_map(|(tenant, ids)| Op::Get { tenant, ids }),
        1 => (0..TENANTS, 0..30u8).prop_map(|(tenant, id)| Op::Pin { tenant, id }),
        1 => any::<usize>().prop_map(|index| Op::Unpin { index }),
    ]
}

/// The ids of `tenant` the cache holds.
fn held(cache: &HostCache, tenant: u8) -> HashSet<u8> {
    (0..30u8).filter(|id| cache.contains(&hash(tenant, *id))).collect()
}

fn run_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    // Room for every tenant's quota plus one whole put: the global capacity never evicts, so
    // every eviction seen is the quota's doing.
    let cache = HostCache::new(usize::from(TENANTS) * QUOTA + MAX_PUT * MAX_LEN);
    let mut quotas = TenantQuotas::new(QUOTA);
    let mut pins: Vec<(u8, PinGuard)> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Put { tenant, ids } => {
                let before: BTreeMap<u8, HashSet<u8>> = (0..TENANTS).map(|t| (t, held(&cache, t))).collect();
                let mut charged = Vec::new();
                for id in ids {
                    let inserted = cache.insert(hash(*tenant, *id), vec![*id; len(*tenant, *id)].into());
                    prop_assert!(inserted.evicted.is_empty(), "step {step}: the capacity evicted");
                    charged.push((hash(*tenant, *id), len(*tenant, *id)));
                }
                let evicted = quotas.charge(&cache, &name(*tenant), &charged);
                for (t, ids_before) in &before {
                    let now = held(&cache, *t);
                    if t != tenant {
                        prop_assert_eq!(&now, ids_before, "step {}: tenant {} lost blocks to {}", step, t, tenant);
                    }
                }
                let mine = held(&cache, *tenant);
                let gone: HashSet<SequenceHash> = before[tenant]
                    .iter()
                    .chain(ids)
                    .filter(|id| !mine.contains(id))
                    .map(|id| hash(*tenant, *id))
                    .collect();
                let reported: HashSet<SequenceHash> = evicted.iter().map(|removed| removed.hash).collect();
                prop_assert_eq!(reported, gone, "step {}: every eviction is reported", step);
                // LRU within the tenant: a put that fits the quota on its own survives whole,
                // unless pinned blocks take part of the quota.
                let distinct: HashSet<u8> = ids.iter().copied().collect();
                let put_bytes: usize = distinct.iter().map(|id| len(*tenant, *id)).sum();
                if put_bytes <= QUOTA && pins.iter().all(|(t, _)| t != tenant) {
                    prop_assert!(distinct.is_subset(&mine), "step {}: the newest blocks were evicted", step);
                }
            }
            Op::Get { tenant, ids } => {
                let read: Vec<SequenceHash> =
                    ids.iter().map(|id| hash(*tenant, *id)).filter(|h| cache.get(h).is_some()).collect();
                quotas.touch(&read);
            }
            Op::Pin { tenant, id } => {
                if let Some(guard) = cache.pin(&hash(*tenant, *id)) {
                    pins.push((*tenant, guard));
                }
            }
            Op::Unpin { index } => {
                if !pins.is_empty() {
                    pins.swap_remove(index % pins.len());
                }
            }
        }
        for t in 0..TENANTS {
            let bytes: usize = held(&cache, t).iter().map(|id| len(t, *id)).sum();
            prop_assert!(quotas.usage(&name(t)) <= QUOTA, "step {}: tenant {} over quota", step, t);
            prop_assert_eq!(quotas.usage(&name(t)), bytes, "step {}: tenant {} charged what it holds", step, t);
        }
        prop_assert_eq!(cache.stats().evictions, quotas.evictions());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn no_tenant_exceeds_its_quota_and_no_tenant_pays_for_another(ops in prop::collection::vec(op(), 1..200)) {
        run_ops(&ops)?;
    }
}

#[test]
fn a_block_that_left_by_other_means_is_forgotten() {
    let cache = HostCache::new(1000);
    let mut quotas = TenantQuotas::new(100);
    let _ = cache.insert(hash(1, 1), vec![0; 40].into());
    assert!(quotas.charge(&cache, "a", &[(hash(1, 1), 40)]).is_empty());
    assert_eq!((quotas.usage("a"), quotas.owner(&hash(1, 1))), (40, Some("a")));
    let _ = cache.remove(&hash(1, 1));
    quotas.forget([hash(1, 1)]);
    assert_eq!((quotas.usage("a"), quotas.tenants()), (0, 0));
    // A charge for a block the cache did not keep charges nothing.
    assert!(quotas.charge(&cache, "a", &[(hash(1, 2), 40)]).is_empty());
    assert_eq!(quotas.usage("a"), 0);
}

// ---------------------------------------------------------------------------------------------
// The service.

fn tier(service: &Service) -> RemoteTier {
    RemoteTier::new(&RemoteTierConfig::new(service.endpoint())).expect("valid config")
}

#[tokio::test]
async fn the_service_evicts_a_tenant_over_quota_from_its_own_blocks_and_publishes_it() {
    let len = block(hashes("x", 1, 0)[0]).len();
    let config =
        KvStoreConfig { tenant_quota_bytes: Some(3 * len), capacity_bytes: 100 * len, ..KvStoreConfig::default() };
    let service = Service::start(config).await;
    let tier = tier(&service);
    let mut client = KvStoreClient::connect(service.endpoint()).await.expect("connects");
    let live = SubscribeRequest { from_sequence: None, epoch: None, snapshot: false };
    let mut events = client.subscribe_events(live).await.expect("subscribes").into_inner();

    let (a, b) = (hashes("a", 5, 1), hashes("b", 2, 2));
    assert_eq!(tier.put_many_for("b", blocks(&b)).await, 2);
    assert_eq!(tier.put_many_for("a", blocks(&a[..3])).await, 3);
    // Over quota: a's oldest two go, the writer is not refused, b keeps everything.
    assert_eq!(tier.put_many_for("a", blocks(&a[3..])).await, 2);
    assert_eq!(tier.lookup(&a[2..]).await, 3);
    assert_eq!(tier.lookup(&a[..2]).await, 0);
    assert_eq!(tier.lookup(&b).await, 2);

    let mut removed = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), events.message()).await.map(|m| m.expect("event"))
    {
        if let Some(Kind::Removed(gone)) = event.kind {
            removed.push(gone.hash);
        }
    }
    assert_eq!(removed, vec![a[0].0.to_vec(), a[1].0.to_vec()], "published, oldest first");
    let stats = client.stats(StatsRequest {}).await.expect("stats").into_inner();
    assert_eq!((stats.tenant_quota_bytes, stats.quota_evictions, stats.tenants), (3 * len as u64, 2, 2));

    // One put larger than the quota keeps its newest blocks and reports the rest as not held.
    let big = hashes("c", 5, 3);
    assert_eq!(tier.put_many_for("c", blocks(&big)).await, 3);
    assert_eq!(tier.lookup(&big[2..]).await, 3);

    // Through a worker's TieredStore: both write paths carry the tenant.
    let handle = tokio::runtime::Handle::current();
    let store = TieredStore::new(HostCache::new(1 << 20), Some(tier.clone()), TieredConfig::default(), &handle);
    let d = hashes("d", 4, 5);
    let written = store.put_through_for("d", blocks(&d)).await;
    assert_eq!(written.shared, Some(SharedWrite { sent: 4, acknowledged: 3 }), "the worker learns of the quota");
    let e = hashes("e", 4, 6);
    assert!(store.put_for("e", blocks(&e)).queued);
    drained(&store, 8).await;
    assert_eq!((tier.lookup(&e[..1]).await, tier.lookup(&e[1..]).await), (0, 3));
}

#[tokio::test]
async fn a_tenant_name_too_long_is_refused_naming_the_field() {
    let service = Service::start(KvStoreConfig::default()).await;
    let mut client = KvStoreClient::connect(service.endpoint()).await.expect("connects");
    let run = hashes("a", 1, 4);
    let message =
        lcserve_proto::v1::PutBlock { hash: run[0].0.to_vec(), block: block(run[0]).to_vec(), tenant: "t".repeat(300) };
    let err = client.put(tokio_stream::iter([message])).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("tenant"), "{}", err.message());
    let zero = KvStoreConfig { tenant_quota_bytes: Some(0), ..KvStoreConfig::default() };
    assert!(zero.validate().expect_err("invalid").to_string().contains("tenant_quota_bytes"));
}
