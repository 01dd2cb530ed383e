//! [`Worker`]: one engine, its KV bridge to the store, and what both services share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lcserve_common::{PrefillMode, SequenceHash, TokenId, chain_hash, sequence_hashes};
use lcserve_engine::{EngineError, EngineHandle, EventStream, GenerateRequest, ImportedKv};
use lcserve_model::Model;
use lcserve_proto::v1;
use tokio::sync::oneshot;

use crate::config::WorkerConfig;
use crate::convert::Sources;
use crate::error::WorkerError;
use crate::kv_bridge::{Found, KvBridge};
use crate::metrics::WorkerMetrics;

/// An engine serving one role, with its side of the KV store.
#[derive(Debug)]
pub struct Worker {
    pub(crate) config: WorkerConfig,
    pub(crate) engine: EngineHandle,
    pub(crate) bridge: Arc<KvBridge>,
    pub(crate) metrics: WorkerMetrics,
    aborts: Arc<Aborts>,
}

/// What a request starts from: the KV of its prompt found in the store, to import.
pub(crate) struct Prepared {
    /// Chained hashes of the prompt's full blocks.
    pub hashes: Vec<SequenceHash>,
    pub import: Option<ImportedKv>,
    pub sources: Sources,
}

impl Worker {
    /// Starts the engine for `model`. Must run inside a tokio runtime (the store's write-behind
    /// task lives on it).
    pub fn start(model: Arc<Model>, config: WorkerConfig) -> Result<Arc<Self>, WorkerError> {
        config.validate()?;
        let layout = model.kv_layout(config.engine.block_size);
        let fingerprint = model.fingerprint;
        let engine = EngineHandle::start(model, config.engine.clone())?;
        let bridge = Arc::new(KvBridge::new(&config, layout, fingerprint)?);
        let metrics = WorkerMetrics::new(config.role, &engine, bridge.store());
        Ok(Arc::new(Self { config, engine, bridge, metrics, aborts: Arc::default() }))
    }

    pub fn engine(&self) -> &EngineHandle {
        &self.engine
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Submits `request` to the engine. A structured output is compiled at submission (and the
    /// first one indexes the vocabulary, tens of milliseconds): that happens on a blocking
    /// thread, not on the async worker.
    pub(crate) async fn submit(&self, request: GenerateRequest) -> Result<EventStream, EngineError> {
        if request.structured_output.is_none() {
            return self.engine.submit(request);
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.submit(request))
            .await
            .map_err(|e| EngineError::Model(format!("submitting task: {e}")))?
    }

    /// Finds the prompt's KV beyond what the pool holds: the store's longest run after it, and
    /// the session's inline tail when every full block is then available. Without `reuse` (the
    /// prompt is to be computed whole) it only hashes the prompt's blocks.
    pub(crate) async fn prepare(
        &self,
        salt: &[u8],
        mode: PrefillMode,
        prompt: &[TokenId],
        tail: Option<&[u8]>,
        reuse: bool,
    ) -> Prepared {
        let block_size = self.config.engine.block_size;
        let namespace = self.engine.request_namespace(salt, mode, prompt.len());
        let hashes = sequence_hashes(namespace, prompt, block_size);
        let (pooled, found) = if reuse {
            let pooled = self.engine.cached_prefix_blocks(namespace, prompt).await.unwrap_or(0).min(hashes.len());
            self.metrics.device_lookup(pooled, hashes.len());
            (pooled, self.bridge.fetch(&hashes[pooled..]).await)
        } else {
            (0, Found::default())
        };
        let sources = Sources { host_blocks: found.host, block_size };
        let complete = reuse && pooled + found.blocks.len() == hashes.len();
        let tail = tail.filter(|_| complete && !prompt.len().is_multiple_of(block_size)).and_then(|bytes| {
            let parent = hashes.last().copied().unwrap_or(namespace.root());
            let hash = chain_hash(parent, &prompt[hashes.len() * block_size..]);
            self.bridge.decode_tail(bytes, hash, prompt.len() % block_size)
        });
        let import = (!found.blocks.is_empty() || tail.is_some()).then_some(ImportedKv {
            first_block: pooled,
            blocks: found.blocks,
            tail,
        });
        Prepared { hashes, import, sources }
    }

    /// Registers a running request under its id so `Abort` can reach it; the registration ends
    /// when the guard drops.
    pub(crate) fn track(&self, request_id: &str) -> (AbortGuard, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let key = (!request_id.is_empty()).then(|| request_id.to_owned());
        // Without an id nothing can abort the request: the guard keeps the sender, silent.
        let unreachable = match &key {
            Some(key) => {
                self.aborts.lock().insert(key.clone(), tx);
                None
            }
            None => Some(tx),
        };
        (AbortGuard { aborts: Arc::clone(&self.aborts), key, _unreachable: unreachable }, rx)
    }

    /// Waits, at most `timeout`, until the blocks this worker computed have been sent to the
    /// shared tier (`KvBridge::flush`); whether that finished in time. For a worker whose
    /// server has stopped: the next turns of its last conversations, served elsewhere, then
    /// find their prompts and answers instead of computing them again.
    pub async fn flush_exports(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.bridge.flush()).await.is_ok()
    }

    pub(crate) fn abort(&self, request_id: &str) -> bool {
        self.aborts.lock().remove(request_id).is_some_and(|tx| tx.send(()).is_ok())
    }

    pub(crate) async fn load(&self) -> Result<v1::Load, WorkerError> {
        let stats = self.engine.stats().await?;
        Ok(v1::Load {
            running: stats.running as u32,
            waiting: stats.waiting as u32,
            capacity_blocks: stats.capacity_blocks as u64,
            free_blocks: stats.free_blocks as u64,
            cached_blocks: stats.cached_blocks as u64,
            queued_prefill_tokens: stats.queued_prefill_tokens,
            prefill_tokens_total: stats.prefill_tokens,
        })
    }

    pub(crate) fn model_info(&self) -> Result<v1::ModelInfo, WorkerError> {
        let model = self.engine.model();
        let tokenizer = &model.tokenizer;
        Ok(v1::ModelInfo {
            model_id: self.config.model_id.clone(),
            fingerprint: model.fingerprint.0.to_vec(),
            kv_config: self.engine.kv_config().to_owned(),
            block_size: self.config.engine.block_size as u32,
            context_length: model.config.context_length as u32,
            vocab_size: model.config.vocab_size as u32,
            tokenizer_json: tokenizer.to_json().map_err(|e| WorkerError::Tokenizer(e.to_string()))?,
            chat_template: model.chat_template.as_ref().map(|t| t.source().to_owned()).unwrap_or_default(),
            eos_token_ids: tokenizer.eos_ids().to_vec(),
            bos_token_id: tokenizer.bos_id(),
            add_bos: tokenizer.add_bos(),
            role: self.config.role.name().to_owned(),
            sparse_kv_config: self.engine.sparse_kv_config().to_owned(),
            sparse_min_tokens: u32::try_from(self.config.engine.sparse_min_tokens).unwrap_or(u32::MAX),
        })
    }
}

/// Running requests by id, for `Abort`.
#[derive(Debug, Default)]
struct Aborts(Mutex<HashMap<String, oneshot::Sender<()>>>);

impl Aborts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Sender<()>>> {
        // A panic while holding this short lock leaves a valid map; keep serving.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Removes a request from [`Aborts`] when it ends.
pub(crate) struct AbortGuard {
    aborts: Arc<Aborts>,
    key: Option<String>,
    _unreachable: Option<oneshot::Sender<()>>,
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.aborts.lock().remove(key);
        }
    }
}
