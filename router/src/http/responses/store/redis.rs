//! Responses kept in Redis, shared by every router replica of a deployment: a follow-up's
//! `previous_response_id` may land on any replica. Each is one JSON value under
//! `{prefix}{tenant}:{id}` (so another tenant's lookup is a plain miss; the prefix is one per
//! deployment), written with a time to live; Redis's own memory policy bounds the whole (under
//! `allkeys-lru`, as the deployments run it, the least recently used go first).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Stored;
use crate::RouterConfig;
use crate::auth::Tenant;
use crate::error::RouterError;

/// Budget of one connection attempt or command: past it the request fails with 503 (a Redis
/// that slow is down for a client waiting on it).
const OP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone)]
pub(super) struct RedisStore {
    conn: ConnectionManager,
    key_prefix: Arc<str>,
    ttl_ms: u64,
}

impl fmt::Debug for RedisStore {
    /// Leaves the connection (and its URL, which may carry a password) out.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key_prefix", &self.key_prefix)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

fn unavailable(err: redis::RedisError) -> RouterError {
    RouterError::ResponseStore(err.to_string())
}

impl RedisStore {
    /// Prepares the connection without opening it (it opens on first use and reopens by
    /// itself), so the router starts while Redis is down. Needs a Tokio runtime.
    pub fn new(url: &str, config: &RouterConfig) -> Result<Self, RouterError> {
        let config_error = |reason: String| RouterError::Config { field: "responses_redis_url", reason };
        let client =
            lcserve_kvstore::redis_client(url, config.tls.as_deref()).map_err(|err| config_error(err.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(OP_TIMEOUT))
            .set_response_timeout(Some(OP_TIMEOUT))
            .set_max_delay(Duration::from_secs(1))
            .set_number_of_retries(2);
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config)
            .map_err(|err| config_error(err.to_string()))?;
        let ttl_ms = u64::try_from(config.responses_ttl.as_millis()).unwrap_or(u64::MAX);
        Ok(RedisStore { conn, key_prefix: config.responses_key_prefix.as_str().into(), ttl_ms })
    }

    fn key(&self, tenant: &Tenant, id: &str) -> String {
        format!("{}{}:{id}", self.key_prefix, tenant.name)
    }

    pub async fn put(&self, tenant: &Tenant, id: &str, stored: &Stored) -> Result<(), RouterError> {
        let value = serde_json::to_vec(stored).map_err(|err| RouterError::Internal(err.to_string()))?;
        let mut command = redis::cmd("PSETEX");
        command.arg(self.key(tenant, id)).arg(self.ttl_ms).arg(value);
        command.query_async::<()>(&mut self.conn.clone()).await.map_err(unavailable)
    }

    /// `tenant`'s response `id`; a value that does not read as one is a miss (and logged).
    pub async fn get(&self, tenant: &Tenant, id: &str) -> Result<Option<Arc<Stored>>, RouterError> {
        let mut command = redis::cmd("GET");
        command.arg(self.key(tenant, id));
        let value: Option<Vec<u8>> = command.query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        let Some(value) = value else { return Ok(None) };
        match serde_json::from_slice(&value) {
            Ok(stored) => Ok(Some(Arc::new(stored))),
            Err(err) => {
                tracing::warn!(id, error = %err, "a stored response in Redis does not parse; treated as missing");
                Ok(None)
            }
        }
    }

    pub async fn delete(&self, tenant: &Tenant, id: &str) -> Result<bool, RouterError> {
        let mut command = redis::cmd("DEL");
        command.arg(self.key(tenant, id));
        let deleted: u64 = command.query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(deleted > 0)
    }
}
