//! Responses kept in this router's memory, the oldest dropped once their total size passes a
//! byte budget.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::Stored;
use crate::auth::Tenant;
use crate::lock;

struct Entry {
    tenant: Tenant,
    stored: Arc<Stored>,
    /// Approximate bytes held: the JSON text of the response and its context.
    bytes: usize,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Entry>,
    /// Ids in the order they were stored (deleted ones may linger until they reach the front).
    order: VecDeque<String>,
    bytes: usize,
}

pub(super) struct MemoryStore {
    budget: usize,
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = lock(&self.entries);
        f.debug_struct("MemoryStore")
            .field("budget", &self.budget)
            .field("responses", &entries.by_id.len())
            .field("bytes", &entries.bytes)
            .finish()
    }
}

impl MemoryStore {
    pub fn new(budget: usize) -> Self {
        MemoryStore { budget, entries: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Keeps `stored` as `id` for `tenant`, dropping the oldest entries to make room. One
    /// larger than the whole budget is not kept.
    pub fn put(&self, tenant: &Tenant, id: String, stored: Stored) {
        let bytes = stored.response.to_string().len()
            + stored.context.items.iter().map(|item| item.to_string().len()).sum::<usize>();
        if bytes > self.budget {
            tracing::debug!(id, bytes, budget = self.budget, "response larger than the store's budget; not stored");
            return;
        }
        let mut entries = lock(&self.entries);
        while entries.bytes + bytes > self.budget {
            let Some(oldest) = entries.order.pop_front() else { break };
            if let Some(dropped) = entries.by_id.remove(&oldest) {
                entries.bytes -= dropped.bytes;
            }
        }
        entries.bytes += bytes;
        entries.order.push_back(id.clone());
        let entry = Entry { tenant: tenant.clone(), stored: Arc::new(stored), bytes };
        if let Some(replaced) = entries.by_id.insert(id, entry) {
            entries.bytes -= replaced.bytes;
        }
    }

    pub fn get(&self, tenant: &Tenant, id: &str) -> Option<Arc<Stored>> {
        lock(&self.entries).by_id.get(id).filter(|entry| entry.tenant == *tenant).map(|entry| entry.stored.clone())
    }

    pub fn delete(&self, tenant: &Tenant, id: &str) -> bool {
        let mut entries = lock(&self.entries);
        if !entries.by_id.get(id).is_some_and(|entry| entry.tenant == *tenant) {
            return false;
        }
        if let Some(dropped) = entries.by_id.remove(id) {
            entries.bytes -= dropped.bytes;
        }
        true
    }
}
