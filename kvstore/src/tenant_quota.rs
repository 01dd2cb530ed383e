//! [`TenantQuotas`]: per-tenant byte quotas over one [`HostCache`] shared by many tenants.
//!
//! The shared tier's RAM is one LRU cache. Without quotas one tenant's burst of long prompts
//! evicts every other tenant's prefixes; with a quota, the bytes of each tenant's blocks are
//! bounded, and a tenant over its quota loses its *own* least recently used blocks first.
//!
//! Rules, each checked by the property test in `tests/tenant_quota.rs`:
//! - **Charged to the writer.** A block counts against the tenant whose put first stored it.
//!   (Hashes are namespaced by the tenant's salt, so two tenants storing one hash means one
//!   tenant under two names; the first name keeps it.)
//! - **Never an error to the writer.** A put over quota is stored, then the tenant's oldest
//!   blocks are evicted — possibly the newest ones, when one put alone exceeds the quota — and
//!   reported as [`BlockRemoved`] records to publish as KV events.
//! - **Others are unaffected.** Quota enforcement evicts only blocks of the tenant that wrote;
//!   other tenants lose blocks only to the cache's global capacity, as before.
//! - **Pinned blocks are skipped,** never evicted. They are still within quota afterwards:
//!   every block pinned now was present after an earlier put, which left the tenant within
//!   quota, and pinning adds no bytes. So after every [`TenantQuotas::charge`], each tenant's
//!   usage is at most the quota.
//! - **Only puts are charged.** A block entering the cache another way (promoted from Redis by
//!   a `Get`, which names no tenant) is charged to no one and competes under the global
//!   capacity only.
//!
//! Synchronous and without a lock of its own: the owner serialises the calls (the kvstore
//! service holds it under its state lock) and reports every block that left the cache by
//! other means through [`TenantQuotas::forget`]; a block found missing anyway is forgotten on
//! sight. Cost: O(log n) per block charged, touched or evicted.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use lcserve_common::SequenceHash;

use crate::host_cache::{BlockRemoved, HostCache};

/// Per-tenant byte quotas over a shared [`HostCache`]; see the module docs.
pub struct TenantQuotas {
    quota: usize,
    tenants: HashMap<Arc<str>, Usage>,
    owners: HashMap<SequenceHash, Owner>,
    /// Source of recency stamps, strictly increasing.
    clock: u64,
    evictions: u64,
}

/// One tenant's charged blocks: bytes and recency order (oldest stamp first).
#[derive(Default)]
struct Usage {
    bytes: usize,
    lru: BTreeMap<u64, SequenceHash>,
}

struct Owner {
    tenant: Arc<str>,
    len: usize,
    stamp: u64,
}

impl TenantQuotas {
    /// Quotas of `quota_bytes` per tenant (the same for every tenant, the default one — the
    /// empty name — included).
    pub fn new(quota_bytes: usize) -> Self {
        TenantQuotas { quota: quota_bytes, tenants: HashMap::new(), owners: HashMap::new(), clock: 0, evictions: 0 }
    }

    /// The byte quota of every tenant.
    pub fn quota(&self) -> usize {
        self.quota
    }

    /// Charges the blocks (hash and encoded length) `tenant` has just inserted into `host`,
    /// refreshes the recency of those it already owned, then evicts the tenant's least
    /// recently used unpinned blocks until it is within quota. Returns the evictions.
    pub fn charge(&mut self, host: &HostCache, tenant: &str, blocks: &[(SequenceHash, usize)]) -> Vec<BlockRemoved> {
        let key = self.tenants.get_key_value(tenant).map_or_else(|| Arc::from(tenant), |(key, _)| Arc::clone(key));
        for (hash, len) in blocks {
            if !host.contains(hash) {
                // Rejected, or evicted by the global capacity within this very put.
                self.forget_one(hash);
            } else if !self.touch_one(hash) {
                self.clock += 1;
                let usage = self.tenants.entry(Arc::clone(&key)).or_default();
                usage.bytes += len;
                usage.lru.insert(self.clock, *hash);
                self.owners.insert(*hash, Owner { tenant: Arc::clone(&key), len: *len, stamp: self.clock });
            }
        }
        self.enforce(host, &key)
    }

    /// Refreshes the recency of blocks just read.
    pub fn touch(&mut self, hashes: &[SequenceHash]) {
        for hash in hashes {
            self.touch_one(hash);
        }
    }

    /// Drops the charges of blocks that left the cache by other means (capacity eviction,
    /// removal).
    pub fn forget(&mut self, hashes: impl IntoIterator<Item = SequenceHash>) {
        for hash in hashes {
            self.forget_one(&hash);
        }
    }

    /// Drops every charge (the cache was cleared).
    pub fn clear(&mut self) {
        self.tenants.clear();
        self.owners.clear();
    }

    /// Bytes charged to `tenant`.
    pub fn usage(&self, tenant: &str) -> usize {
        self.tenants.get(tenant).map_or(0, |usage| usage.bytes)
    }

    /// Tenants with at least one charged block.
    pub fn tenants(&self) -> usize {
        self.tenants.len()
    }

    /// The tenant charged for a block, if any.
    pub fn owner(&self, hash: &SequenceHash) -> Option<&str> {
        self.owners.get(hash).map(|owner| &*owner.tenant)
    }

    /// Blocks evicted to enforce quotas, since creation.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Moves an owned block to its tenant's most recent position; false if not owned.
    fn touch_one(&mut self, hash: &SequenceHash) -> bool {
        let Some(owner) = self.owners.get_mut(hash) else { return false };
        self.clock += 1;
        if let Some(usage) = self.tenants.get_mut(&owner.tenant) {
            usage.lru.remove(&owner.stamp);
            usage.lru.insert(self.clock, *hash);
        }
        owner.stamp = self.clock;
        true
    }

    fn forget_one(&mut self, hash: &SequenceHash) {
        let Some(owner) = self.owners.remove(hash) else { return };
        if let Some(usage) = self.tenants.get_mut(&owner.tenant) {
            usage.lru.remove(&owner.stamp);
            usage.bytes -= owner.len;
            if usage.lru.is_empty() {
                self.tenants.remove(&owner.tenant);
            }
        }
    }

    /// Evicts `tenant`'s oldest unpinned blocks until it is within quota.
    fn enforce(&mut self, host: &HostCache, tenant: &str) -> Vec<BlockRemoved> {
        let mut evicted = Vec::new();
        let mut after = 0;
        while let Some(usage) = self.tenants.get(tenant).filter(|usage| usage.bytes > self.quota) {
            let Some((&stamp, &hash)) = usage.lru.range(after..).next() else { break };
            after = stamp + 1;
            match host.evict(&hash) {
                Some(removed) => {
                    self.forget_one(&hash);
                    self.evictions += 1;
                    evicted.push(removed);
                }
                None if !host.contains(&hash) => self.forget_one(&hash),
                None => {} // Pinned: skipped, see the module docs.
            }
        }
        evicted
    }
}

impl fmt::Debug for TenantQuotas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantQuotas")
            .field("quota", &self.quota)
            .field("tenants", &self.tenants.len())
            .field("blocks", &self.owners.len())
            .field("evictions", &self.evictions)
            .finish()
    }
}
