//! Responses kept in this router's memory, each for a time to live, the oldest dropped sooner
//! once their total size passes a byte budget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Stored;
use crate::auth::Tenant;
use crate::lock;

struct Entry {
    tenant: Tenant,
    stored: Arc<Stored>,
    /// Approximate bytes held: the JSON text of the response and its context.
    bytes: usize,
    expires: Instant,
}

impl Entry {
    fn visible_to(&self, tenant: &Tenant, now: Instant) -> bool {
        self.tenant == *tenant && now < self.expires
    }
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Entry>,
    /// Ids in the order they were stored, so also the order they expire in (deleted ones may
    /// linger until they reach the front).
    order: VecDeque<String>,
    bytes: usize,
}

impl Entries {
    /// Drops the oldest entry; false if there is none.
    fn drop_oldest(&mut self) -> bool {
        let Some(oldest) = self.order.pop_front() else { return false };
        if let Some(dropped) = self.by_id.remove(&oldest) {
            self.bytes -= dropped.bytes;
        }
        true
    }

    /// Drops the entries that expired by `now`.
    fn drop_expired(&mut self, now: Instant) {
        while let Some(oldest) = self.order.front() {
            if self.by_id.get(oldest).is_some_and(|entry| entry.expires > now) {
                break;
            }
            self.drop_oldest();
        }
    }
}

pub(super) struct MemoryStore {
    budget: usize,
    ttl: Duration,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = lock(&self.entries);
        f.debug_struct("MemoryStore")
            .field("budget", &self.budget)
            .field("ttl", &self.ttl)
            .field("responses", &entries.by_id.len())
            .field("bytes", &entries.bytes)
            .finish()
    }
}

impl MemoryStore {
    pub fn new(budget: usize, ttl: Duration) -> Self {
        MemoryStore { budget, ttl, entries: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Keeps `stored` as `id` for `tenant` until its time to live passes, dropping expired
    /// entries, then the oldest, to make room. One larger than the whole budget is not kept.
    pub fn put(&self, tenant: &Tenant, id: String, stored: Stored) {
        let bytes = stored.response.to_string().len()
            + stored.context.items.iter().map(|item| item.to_string().len()).sum::<usize>();
        if bytes > self.budget {
            tracing::debug!(id, bytes, budget = self.budget, "response larger than the store's budget; not stored");
            return;
        }
        let now = Instant::now();
        let mut entries = lock(&self.entries);
        entries.drop_expired(now);
        while entries.bytes + bytes > self.budget && entries.drop_oldest() {}
        entries.bytes += bytes;
        entries.order.push_back(id.clone());
        let expires = now + self.ttl;
        let entry = Entry { tenant: tenant.clone(), stored: Arc::new(stored), bytes, expires };
        if let Some(replaced) = entries.by_id.insert(id, entry) {
            entries.bytes -= replaced.bytes;
        }
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Option<Arc<Stored>> {
        let now = Instant::now();
        lock(&self.entries)
            .by_id
            .get(id)
            .filter(|entry| entry.visible_to(tenant, now))
            .map(|entry| entry.stored.clone())
    }

    pub fn delete(&self, tenant: &Tenant, id: &str) -> bool {
        let mut entries = lock(&self.entries);
        if !entries.by_id.get(id).is_some_and(|entry| entry.visible_to(tenant, Instant::now())) {
            return false;
        }
        if let Some(dropped) = entries.by_id.remove(id) {
            entries.bytes -= dropped.bytes;
        }
        true
    }
}
