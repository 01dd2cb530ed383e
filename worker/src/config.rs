//! A worker's settings, validated once at start.

use std::sync::Arc;
use std::time::Duration;

use lcserve_engine::EngineConfig;
use lcserve_kvstore::{Codec, RemoteTierConfig};
use lcserve_svc_kit::Tls;

use crate::error::WorkerError;

/// Which services a worker serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Prefill,
    Decode,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

/// How a worker runs its engine and reaches the KV store.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    pub role: Role,
    /// The model's public name (`ModelInfo.model_id`, OpenAI `model`).
    pub model_id: String,
    pub engine: EngineConfig,
    /// The kvstore service (the shared tier). Without it a worker shares nothing with other
    /// workers: it still reuses its own pool and host tier.
    pub kvstore: Option<RemoteTierConfig>,
    /// Bytes of encoded blocks kept in this worker's RAM (the host tier).
    pub host_cache_bytes: usize,
    /// How blocks are compressed on their way to the store: `raw` reuses bit-exactly, `int8`
    /// (default) halves f16's bytes at ~0.2% attention error, `int4` quarters them.
    pub codec: Codec,
    /// Longest a prefill waits for the shared tier to acknowledge its blocks before answering
    /// (the decode worker recomputes whatever did not arrive).
    pub handoff_timeout: Duration,
    /// Serve TLS with this certificate; with a CA, require client certificates it signed (mTLS:
    /// only the router and fellow services may call).
    pub tls: Option<Arc<Tls>>,
}

impl WorkerConfig {
    pub fn new(role: Role, model_id: impl Into<String>, engine: EngineConfig) -> Self {
        Self {
            role,
            model_id: model_id.into(),
            engine,
            kvstore: None,
            host_cache_bytes: 2 << 30,
            codec: Codec::INT8,
            handoff_timeout: Duration::from_secs(5),
            tls: None,
        }
    }

    pub fn validate(&self) -> Result<(), WorkerError> {
        if self.model_id.is_empty() {
            return Err(WorkerError::Config { field: "model_id", reason: "is empty".into() });
        }
        if let Some(kvstore) = &self.kvstore {
            kvstore.validate().map_err(|e| WorkerError::Config { field: "kvstore", reason: e.to_string() })?;
        }
        Ok(())
    }
}
