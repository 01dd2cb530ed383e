//! Between the engine's f32 blocks and the store's encoded ones.
//!
//! The worker's [`TieredStore`] is its host tier (encoded blocks in RAM) in front of the kvstore
//! service (the shared tier, when configured). Encoding and decoding run on tokio's blocking
//! pool: a block of the reference model is ~3 MB of f32, milliseconds of work. Exports run in
//! the background, tracked, so a worker that stops can [`KvBridge::flush`] them first.

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::task::TaskTracker;

use lcserve_common::{KvLayout, ModelFingerprint, SequenceHash};
use lcserve_engine::{KvBlock, tail_layout};
use lcserve_kvstore::{
    BlockMeta, Blocks, Codec, HostCache, RemoteTier, TierKind, TieredConfig, TieredStore, WrittenThrough, decode,
    encode,
};

use crate::config::WorkerConfig;
use crate::error::WorkerError;

/// Prompt blocks found in the store, decoded for the engine.
#[derive(Debug, Default)]
pub(crate) struct Found {
    pub blocks: Vec<Vec<f32>>,
    /// How many of them came from the host tier (the rest: the shared tier).
    pub host: usize,
}

#[derive(Debug)]
pub(crate) struct KvBridge {
    store: TieredStore<RemoteTier>,
    layout: KvLayout,
    fingerprint: ModelFingerprint,
    codec: Codec,
    /// Exports still encoding.
    exports: TaskTracker,
}

impl KvBridge {
    pub fn new(config: &WorkerConfig, layout: KvLayout, fingerprint: ModelFingerprint) -> Result<Self, WorkerError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| WorkerError::Config { field: "runtime", reason: "needs a tokio runtime".into() })?;
        let shared = config
            .kvstore
            .as_ref()
            .map(RemoteTier::new)
            .transpose()
            .map_err(|e| WorkerError::Config { field: "kvstore", reason: e.to_string() })?;
        let host = HostCache::new(config.host_cache_bytes);
        let store = TieredStore::new(host, shared, TieredConfig::default(), &runtime);
        Ok(Self { store, layout, fingerprint, codec: config.codec, exports: TaskTracker::new() })
    }

    /// The store itself, for its counters.
    pub fn store(&self) -> &TieredStore<RemoteTier> {
        &self.store
    }

    pub fn has_shared_tier(&self) -> bool {
        self.store.shared().is_some()
    }

    /// Leading blocks of `hashes` the shared tier holds (0 without one).
    pub async fn shared_prefix(&self, hashes: &[SequenceHash]) -> usize {
        match self.store.shared() {
            Some(shared) => lcserve_kvstore::Tier::lookup(shared, hashes).await,
            None => 0,
        }
    }

    /// Leading blocks of `hashes` held by any tier of the store.
    pub async fn stored_prefix(&self, hashes: &[SequenceHash]) -> usize {
        self.store.lookup(hashes).await.len()
    }

    /// The longest run of `hashes` the store can serve, decoded. A block that fails to decode
    /// (corrupt, or another model's) ends the run and leaves the host tier; the engine computes
    /// it instead.
    pub async fn fetch(&self, hashes: &[SequenceHash]) -> Found {
        if hashes.is_empty() {
            return Found::default();
        }
        let fetched = self.store.get(hashes).await;
        let (layout, fingerprint) = (self.layout, self.fingerprint);
        let metas: Vec<BlockMeta> = hashes.iter().map(|&hash| BlockMeta { layout, fingerprint, hash }).collect();
        let encoded = fetched.blocks;
        let decoded = tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(encoded.len());
            for (bytes, meta) in encoded.iter().zip(&metas) {
                match decode(bytes, meta) {
                    Ok(block) => out.push(block.data),
                    Err(_) => break,
                }
            }
            out
        })
        .await
        .unwrap_or_default();
        if let Some(bad) = hashes.get(decoded.len()).filter(|_| decoded.len() < fetched.sources.len()) {
            self.store.host().remove(bad);
        }
        let sources = &fetched.sources[..decoded.len()];
        Found { host: sources.iter().filter(|s| **s == TierKind::Host).count(), blocks: decoded }
    }

    /// Encodes exported blocks and stores them (host tier, then the shared tier's write
    /// queue), in the background.
    pub fn export(self: &Arc<Self>, blocks: Vec<KvBlock>) {
        let bridge = Arc::clone(self);
        self.exports.spawn(async move {
            let encoded = bridge.encode(blocks).await;
            bridge.store.put(encoded);
        });
    }

    /// Waits until every export started so far is encoded and has been sent to the shared
    /// tier: what a worker that stops does last, so the blocks of its last answers (what their
    /// next turns reuse) outlive it. Exports started later are still taken.
    pub async fn flush(&self) {
        self.exports.close();
        self.exports.wait().await;
        self.exports.reopen();
        self.store.flush().await;
    }

    /// Encodes exported blocks (full ones only) for the store, off the async workers.
    pub async fn encode(&self, blocks: Vec<KvBlock>) -> Blocks {
        let (layout, fingerprint, codec) = (self.layout, self.fingerprint, self.codec);
        tokio::task::spawn_blocking(move || {
            blocks
                .into_iter()
                .filter(|block| block.tokens == layout.block_size)
                .filter_map(|block| {
                    let meta = BlockMeta { layout, fingerprint, hash: block.hash };
                    // A block the codec refuses (non-finite KV) is simply not shared.
                    encode(&block.data, &meta, codec).ok().map(|bytes| (block.hash, Bytes::from(bytes)))
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// Stores blocks and waits until the shared tier holds them (or `timeout` passes).
    pub async fn put_through(&self, blocks: Blocks, timeout: std::time::Duration) -> Option<WrittenThrough> {
        tokio::time::timeout(timeout, self.store.put_through(blocks)).await.ok()
    }

    /// The prompt's partial last block as KVB1 bytes (raw f32: it travels once, inline).
    pub fn encode_tail(&self, tail: &KvBlock) -> Option<Vec<u8>> {
        let meta = BlockMeta {
            layout: tail_layout(&self.layout, tail.tokens),
            fingerprint: self.fingerprint,
            hash: tail.hash,
        };
        encode(&tail.data, &meta, Codec::Raw(lcserve_kvstore::RawDtype::F32)).ok()
    }

    /// Decodes an inline tail of `tokens` tokens named `hash`; `None` if it does not match.
    pub fn decode_tail(&self, bytes: &[u8], hash: SequenceHash, tokens: usize) -> Option<Vec<f32>> {
        let meta = BlockMeta { layout: tail_layout(&self.layout, tokens), fingerprint: self.fingerprint, hash };
        decode(bytes, &meta).ok().map(|block| block.data)
    }
}
