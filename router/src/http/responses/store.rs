//! Stored responses, for `previous_response_id` and `GET`/`DELETE /v1/responses/{id}` (and
//! its `input_items`).
//!
//! A response is kept with the conversation that led to it, so a follow-up names it instead of
//! resending the whole history; each is visible only to the tenant that created it. Two
//! places to keep them:
//! - [`memory`]: this router's memory, each kept for `--responses-ttl`, the oldest dropped
//!   sooner once their total size passes the byte budget (`--responses-store-bytes`; 0 stores
//!   nothing). Enough for one router.
//! - [`redis`]: a Redis that every replica of the router reads (`--responses-redis-url`),
//!   each response kept for `--responses-ttl` under `--responses-key-prefix`. Behind a load balancer over several replicas a
//!   follow-up lands anywhere, and only this finds its predecessor.

mod memory;
mod redis;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::RouterConfig;
use crate::auth::Tenant;
use crate::error::RouterError;
use memory::MemoryStore;
use redis::RedisStore;

/// One stored response.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    /// The `response` object, as it was answered.
    pub response: Value,
    context: Context,
}

/// Every input item an answer followed, oldest first: its predecessors' conversation, then
/// its own request's `input`, from `input_from` on.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
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

/// Gives each of the request's own input items an id, and a message's text the parts form, as
/// OpenAI lists them.
fn with_item_ids(mut context: Context) -> Context {
    for fields in context.items.iter_mut().skip(context.input_from).filter_map(Value::as_object_mut) {
        if !fields.contains_key("id") {
            let id = item_id(fields.get("type").and_then(Value::as_str));
            fields.insert("id".into(), Value::String(id));
        }
        if let Some(Value::String(text)) = fields.get("content") {
            let kind = if fields.get("role").is_some_and(|r| r == "assistant") { "output_text" } else { "input_text" };
            let parts = json!([{ "type": kind, "text": text }]);
            fields.insert("content".into(), parts);
        }
    }
    context
}

/// Where responses are kept.
#[derive(Debug)]
pub(crate) struct ResponseStore(Backend);

#[derive(Debug)]
enum Backend {
    Memory(MemoryStore),
    Redis(RedisStore),
}

impl ResponseStore {
    /// A store in this router's memory holding up to `budget` bytes of responses (0 stores
    /// none), each for `ttl`.
    pub fn in_memory(budget: usize, ttl: Duration) -> Self {
        ResponseStore(Backend::Memory(MemoryStore::new(budget, ttl)))
    }

    /// A store in the Redis at `url`, as `config` sets it (TLS, time to live, key prefix).
    /// Needs a Tokio runtime; Redis need not be up yet.
    pub fn in_redis(url: &str, config: &RouterConfig) -> Result<Self, RouterError> {
        Ok(ResponseStore(Backend::Redis(RedisStore::new(url, config)?)))
    }

    pub fn enabled(&self) -> bool {
        match &self.0 {
            Backend::Memory(memory) => memory.enabled(),
            Backend::Redis(_) => true,
        }
    }

    /// Keeps `response` (whose `id` names it) for `tenant`, with the `context` it followed.
    pub async fn put(&self, tenant: &Tenant, response: Value, context: Context) -> Result<(), RouterError> {
        let Some(id) = response["id"].as_str().map(str::to_owned) else {
            return Err(RouterError::Internal("a response to store has no id".into()));
        };
        let stored = Stored { response, context: with_item_ids(context) };
        match &self.0 {
            Backend::Memory(memory) => {
                memory.put(tenant, id, stored);
                Ok(())
            }
            Backend::Redis(redis) => redis.put(tenant, &id, &stored).await,
        }
    }

    /// `tenant`'s response `id`, if stored.
    pub async fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Arc<Stored>>, RouterError> {
        match &self.0 {
            Backend::Memory(memory) => Ok(memory.get(tenant, id)),
            Backend::Redis(redis) => redis.get(tenant, id).await,
        }
    }

    /// Forgets `tenant`'s response `id`; false if there was none.
    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<bool, RouterError> {
        match &self.0 {
            Backend::Memory(memory) => Ok(memory.delete(tenant, id)),
            Backend::Redis(redis) => redis.delete(tenant, id).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A context of one earlier item.
    fn hi() -> Context {
        Context { items: vec![json!("hi")], input_from: 1 }
    }

    fn response(id: &str, text: &str) -> Value {
        json!({ "id": id, "object": "response", "output": [{ "type": "message", "content": text }] })
    }

    async fn put(store: &ResponseStore, tenant: &Tenant, response: Value, context: Context) {
        store.put(tenant, response, context).await.expect("a memory store never fails");
    }

    async fn get(store: &ResponseStore, tenant: &Tenant, id: &str) -> Option<Arc<Stored>> {
        store.get(tenant, id).await.expect("a memory store never fails")
    }

    async fn delete(store: &ResponseStore, tenant: &Tenant, id: &str) -> bool {
        store.delete(tenant, id).await.expect("a memory store never fails")
    }

    #[tokio::test]
    async fn responses_are_kept_per_tenant_and_the_oldest_dropped_past_the_budget() {
        let (alice, bob) = (Tenant::named("alice"), Tenant::named("bob"));
        let one = response("resp_1", "one");
        let size = one.to_string().len() + json!("hi").to_string().len();
        let store = ResponseStore::in_memory(2 * size + 1, HOUR);
        put(&store, &alice, one.clone(), hi()).await;
        let stored = get(&store, &alice, "resp_1").await.expect("stored");
        assert_eq!(stored.conversation(), [json!("hi"), one["output"][0].clone()]);
        assert!(get(&store, &bob, "resp_1").await.is_none(), "another tenant's");
        assert!(!delete(&store, &bob, "resp_1").await, "another tenant's");

        put(&store, &alice, response("resp_2", "two"), hi()).await;
        put(&store, &alice, response("resp_3", "six"), hi()).await;
        assert!(get(&store, &alice, "resp_1").await.is_none(), "the oldest made room");
        assert!(get(&store, &alice, "resp_2").await.is_some() && get(&store, &alice, "resp_3").await.is_some());

        assert!(delete(&store, &alice, "resp_2").await);
        assert!(get(&store, &alice, "resp_2").await.is_none() && !delete(&store, &alice, "resp_2").await);
        put(&store, &alice, response("resp_4", "for"), hi()).await;
        assert!(get(&store, &alice, "resp_3").await.is_some(), "a deletion freed its room");

        let huge = ResponseStore::in_memory(8, HOUR);
        put(&huge, &alice, one, Context::default()).await;
        assert!(get(&huge, &alice, "resp_1").await.is_none(), "larger than the budget");
        assert!(!ResponseStore::in_memory(0, HOUR).enabled());
    }

    #[tokio::test]
    async fn a_response_is_gone_once_its_time_to_live_has_passed() {
        let alice = Tenant::named("alice");
        let one = response("resp_1", "one");
        let size = one.to_string().len() + json!("hi").to_string().len();
        let store = ResponseStore::in_memory(2 * size + 1, Duration::from_millis(200));
        put(&store, &alice, one, hi()).await;
        assert!(get(&store, &alice, "resp_1").await.is_some());
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(get(&store, &alice, "resp_1").await.is_none(), "expired");
        assert!(!delete(&store, &alice, "resp_1").await, "nothing left to delete");

        put(&store, &alice, response("resp_2", "two"), hi()).await;
        put(&store, &alice, response("resp_3", "six"), hi()).await;
        assert!(
            get(&store, &alice, "resp_2").await.is_some() && get(&store, &alice, "resp_3").await.is_some(),
            "the expired response made room, not the live ones"
        );
    }

    #[tokio::test]
    async fn a_responses_own_input_items_get_ids() {
        let tenant = Tenant::anonymous();
        let earlier = json!({ "type": "message", "role": "user", "content": "Weather?" });
        let output = json!({ "type": "function_call_output", "call_id": "c1", "output": "-3 C" });
        let named = json!({ "type": "message", "id": "msg_mine", "role": "user", "content": "Thanks" });
        let thanks = json!([{ "type": "input_text", "text": "Thanks" }]);
        let store = ResponseStore::in_memory(1 << 20, HOUR);
        let items = vec![earlier.clone(), output, named.clone()];
        put(&store, &tenant, response("resp_1", "ok"), Context { items, input_from: 1 }).await;
        let stored = get(&store, &tenant, "resp_1").await.expect("stored");
        let input = stored.input_items();
        assert_eq!(input.len(), 2);
        assert!(input[0]["id"].as_str().is_some_and(|id| id.starts_with("fco_")), "{}", input[0]);
        assert_eq!((&input[1]["id"], &input[1]["content"]), (&named["id"], &thanks), "an id the client gave is kept");
        assert_eq!(stored.conversation()[0], earlier, "the earlier conversation is as it was stored");
    }
}
