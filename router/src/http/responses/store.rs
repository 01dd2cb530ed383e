//! Stored responses, for `previous_response_id` and `GET`/`DELETE /v1/responses/{id}` (and
//! its `input_items`).
//!
//! A response is kept with the conversation that led to it, so a follow-up names it instead of
//! resending the whole history. Entries live in this router's memory, each visible only to the
//! tenant that created it, the oldest dropped once their total size passes the byte budget
//! (`--responses-store-bytes`; 0 stores nothing). Several router replicas do not share them: a
//! deployment that spreads one conversation over replicas sends the whole history instead.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::auth::Tenant;
use crate::lock;

/// One stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    tenant: Tenant,
    /// The `response` object, as it was answered.
    pub response: Value,
    context: Context,
    /// Approximate bytes held: the JSON text of the response and the context.
    bytes: usize,
}

/// Every input item an answer followed, oldest first: its predecessors' conversation, then
/// its own request's `input`, from `input_from` on.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Context {
    pub items: Vec<Value>,
    pub input_from: usize,
}

impl Stored {
    /// The conversation a follow-up continues: the context, then this response's output.
    pub fn conversation(&self) -> Vec<Value> {
        let output = self.response["output"].as_array().into_iter().flatten();
        self.context.items.iter().chain(output).cloned().collect()
    }

    /// The items of the request's own `input`, each with an id, a message's text as a part.
    pub fn input_items(&self) -> &[Value] {
        &self.context.items[self.context.input_from.min(self.context.items.len())..]
    }
}

/// An id for an input item of type `kind` that came without one, prefixed as OpenAI's.
fn item_id(kind: Option<&str>) -> String {
    let prefix = match kind {
        Some("function_call") => "fc",
        Some("function_call_output") => "fco",
        Some("reasoning") => "rs",
        _ => "msg",
    };
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

#[derive(Debug, Default)]
struct Entries {
    by_id: HashMap<String, Arc<Stored>>,
    /// Ids in the order they were stored (deleted ones may linger until they reach the front).
    order: VecDeque<String>,
    bytes: usize,
}

#[derive(Debug)]
pub(crate) struct ResponseStore {
    budget: usize,
    entries: Mutex<Entries>,
}

impl ResponseStore {
    /// A store holding up to `budget` bytes of responses; 0 stores none.
    pub fn new(budget: usize) -> Self {
        Self { budget, entries: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// Keeps `response` (whose `id` names it) for `tenant`, dropping the oldest entries to make
    /// room. One larger than the whole budget is not kept.
    pub fn put(&self, tenant: &Tenant, response: Value, mut context: Context) {
        let Some(id) = response["id"].as_str().map(str::to_owned) else { return };
        for fields in context.items.iter_mut().skip(context.input_from).filter_map(Value::as_object_mut) {
            if !fields.contains_key("id") {
                let id = item_id(fields.get("type").and_then(Value::as_str));
                fields.insert("id".into(), Value::String(id));
            }
            if let Some(Value::String(text)) = fields.get("content") {
                let kind =
                    if fields.get("role").is_some_and(|r| r == "assistant") { "output_text" } else { "input_text" };
                let parts = json!([{ "type": kind, "text": text }]);
                fields.insert("content".into(), parts);
            }
        }
        let bytes = response.to_string().len() + context.items.iter().map(|item| item.to_string().len()).sum::<usize>();
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
        let stored = Arc::new(Stored { tenant: tenant.clone(), response, context, bytes });
        entries.bytes += bytes;
        entries.order.push_back(id.clone());
        if let Some(replaced) = entries.by_id.insert(id, stored) {
            entries.bytes -= replaced.bytes;
        }
    }

    /// `tenant`'s response `id`, if stored.
    pub fn get(&self, tenant: &Tenant, id: &str) -> Option<Arc<Stored>> {
        lock(&self.entries).by_id.get(id).filter(|stored| stored.tenant == *tenant).cloned()
    }

    /// Forgets `tenant`'s response `id`; false if there was none.
    pub fn delete(&self, tenant: &Tenant, id: &str) -> bool {
        let mut entries = lock(&self.entries);
        if !entries.by_id.get(id).is_some_and(|stored| stored.tenant == *tenant) {
            return false;
        }
        if let Some(dropped) = entries.by_id.remove(id) {
            entries.bytes -= dropped.bytes;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context of one earlier item.
    fn hi() -> Context {
        Context { items: vec![json!("hi")], input_from: 1 }
    }

    fn response(id: &str, text: &str) -> Value {
        json!({ "id": id, "object": "response", "output": [{ "type": "message", "content": text }] })
    }

    #[test]
    fn responses_are_kept_per_tenant_and_the_oldest_dropped_past_the_budget() {
        let (alice, bob) = (Tenant(Arc::from("alice")), Tenant(Arc::from("bob")));
        let one = response("resp_1", "one");
        let size = one.to_string().len() + json!("hi").to_string().len();
        let store = ResponseStore::new(2 * size + 1);
        store.put(&alice, one.clone(), hi());
        let stored = store.get(&alice, "resp_1").expect("stored");
        assert_eq!(stored.conversation(), [json!("hi"), one["output"][0].clone()]);
        assert!(store.get(&bob, "resp_1").is_none(), "another tenant's");
        assert!(!store.delete(&bob, "resp_1"), "another tenant's");

        store.put(&alice, response("resp_2", "two"), hi());
        store.put(&alice, response("resp_3", "six"), hi());
        assert!(store.get(&alice, "resp_1").is_none(), "the oldest made room");
        assert!(store.get(&alice, "resp_2").is_some() && store.get(&alice, "resp_3").is_some());

        assert!(store.delete(&alice, "resp_2"));
        assert!(store.get(&alice, "resp_2").is_none() && !store.delete(&alice, "resp_2"));
        store.put(&alice, response("resp_4", "for"), hi());
        assert!(store.get(&alice, "resp_3").is_some(), "a deletion freed its room");

        let huge = ResponseStore::new(8);
        huge.put(&alice, one, Context::default());
        assert!(huge.get(&alice, "resp_1").is_none(), "larger than the budget");
        assert!(!ResponseStore::new(0).enabled());
    }

    #[test]
    fn a_responses_own_input_items_get_ids() {
        let tenant = Tenant::anonymous();
        let earlier = json!({ "type": "message", "role": "user", "content": "Weather?" });
        let output = json!({ "type": "function_call_output", "call_id": "c1", "output": "-3 C" });
        let named = json!({ "type": "message", "id": "msg_mine", "role": "user", "content": "Thanks" });
        let thanks = json!([{ "type": "input_text", "text": "Thanks" }]);
        let store = ResponseStore::new(1 << 20);
        let items = vec![earlier.clone(), output, named.clone()];
        store.put(&tenant, response("resp_1", "ok"), Context { items, input_from: 1 });
        let stored = store.get(&tenant, "resp_1").expect("stored");
        let input = stored.input_items();
        assert_eq!(input.len(), 2);
        assert!(input[0]["id"].as_str().is_some_and(|id| id.starts_with("fco_")), "{}", input[0]);
        assert_eq!((&input[1]["id"], &input[1]["content"]), (&named["id"], &thanks), "an id the client gave is kept");
        assert_eq!(stored.conversation()[0], earlier, "the earlier conversation is as it was stored");
    }
}
