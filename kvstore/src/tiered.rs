//! [`TieredStore`]: the host tier in front of an optional shared tier, behind one API.
//!
//! ```text
//! put ──▶ host tier (at once) ──▶ bounded queue ──▶ background task ──▶ shared tier
//! get ──▶ host tier ──(rest of the run)──▶ shared tier ──hits promoted──▶ host tier
//! ```
//!
//! Why it is shaped this way:
//! - **Writers never wait on the network** — unless they ask to. A `put` lands in the host tier synchronously and is
//!   handed to a bounded queue drained by one tokio task. When the queue is full (the shared tier
//!   is slow or down) the batch is dropped and counted: the block is still in the host tier, and
//!   a later miss elsewhere only costs a recompute. Neither `put` nor the queue ever blocks.
//! - **Write-through when a hand-off depends on it.** `put_through` lands the blocks in the host
//!   tier and awaits the shared tier's acknowledgement (bounded by the tier's own timeout): a
//!   prefill worker must know its blocks are shared before it hands the session to a decode
//!   worker on another machine. It reports what it knows and never fails.
//! - **Prefix runs, one round trip.** `lookup` and `get` take the whole run of hashes; the part
//!   the host tier lacks goes to the shared tier in one call.
//! - **Promotion.** A block read from the shared tier is inserted into the host tier, so the next
//!   request on this worker does not cross the network.
//! - **Host-tier removals are reported**, never swallowed: evictions caused by a `put` or a
//!   promotion come back to the caller as [`BlockRemoved`] records, to publish as KV events.
//! - **Flush before stopping.** `flush` waits until the shared tier has taken every batch
//!   queued before it: a worker that stops writes out the blocks of its last answers, the ones
//!   their next turns reuse, instead of dropping them with the queue.
//! - **Without a shared tier** (one machine, `lcserve serve`) the store is the host tier alone,
//!   with no task and no queue.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use lcserve_common::SequenceHash;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use tracing::field::Empty;

use crate::host_cache::{BlockRemoved, HostCache};
use crate::tier::{Blocks, Tier};

/// Which tier holds (or served) a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierKind {
    Host,
    Shared,
}

/// Settings of a [`TieredStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TieredConfig {
    /// Put batches waiting for the shared tier; past it, new batches are dropped (and counted).
    /// A batch is one `put` call, i.e. one prefix run.
    pub write_queue_batches: usize,
}

impl Default for TieredConfig {
    /// 1024 batches: seconds of prefill output at typical rates, a bounded amount of RAM (the
    /// blocks are shared `Arc`s, mostly also held by the host tier).
    fn default() -> Self {
        TieredConfig { write_queue_batches: 1024 }
    }
}

/// The blocks a `get` found: the longest available prefix of the hashes asked for.
#[derive(Clone, Debug, Default)]
pub struct Fetched {
    /// Encoded bytes of `hashes[..blocks.len()]`.
    pub blocks: Vec<Bytes>,
    /// Where each block came from.
    pub sources: Vec<TierKind>,
    /// Host-tier blocks evicted to make room for promoted ones: publish as KV events.
    pub evicted: Vec<BlockRemoved>,
}

/// What a `put` did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stored {
    /// Host-tier blocks evicted to make room: publish as KV events.
    pub evicted: Vec<BlockRemoved>,
    /// Whether the batch was queued for the shared tier (`false`: no shared tier, or the queue
    /// was full and the batch was dropped).
    pub queued: bool,
}

/// What a [`TieredStore::put_through`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WrittenThrough {
    /// Host-tier blocks evicted to make room: publish as KV events.
    pub evicted: Vec<BlockRemoved>,
    /// The shared tier's answer; `None` when there is no shared tier (one machine: the host
    /// tier is all there is, and the blocks are in it).
    pub shared: Option<SharedWrite>,
}

/// How a shared tier answered a write it was awaited for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SharedWrite {
    /// Blocks sent.
    pub sent: usize,
    /// Blocks the shared tier acknowledged holding; 0 when it failed or timed out.
    pub acknowledged: usize,
}

impl SharedWrite {
    /// Whether every block sent is known to be in the shared tier.
    pub fn complete(&self) -> bool {
        self.acknowledged == self.sent
    }
}

/// Per-tier counters of a [`TieredStore`] (totals since creation, in blocks unless named bytes).
/// A tier's `misses` are blocks asked of it by `get` that it did not serve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TieredStats {
    pub host_hits: u64,
    pub host_misses: u64,
    pub host_bytes_read: u64,
    /// Bytes of blocks written into the host tier: puts and promoted shared hits.
    pub host_bytes_written: u64,
    pub shared_hits: u64,
    pub shared_misses: u64,
    pub shared_bytes_read: u64,
    /// Shared-tier hits inserted into the host tier.
    pub promoted: u64,
    /// Blocks handed to the write queue.
    pub shared_queued: u64,
    /// Blocks dropped because the queue was full.
    pub shared_dropped: u64,
    /// Blocks passed to the shared tier's `put_many`, by the background task or by
    /// `put_through` (the tier's own stats say whether they arrived).
    pub shared_put: u64,
    /// Blocks a `put_through` sent that the shared tier acknowledged.
    pub shared_acknowledged: u64,
}

#[derive(Default)]
struct Counters {
    host_hits: AtomicU64,
    host_misses: AtomicU64,
    host_bytes_read: AtomicU64,
    host_bytes_written: AtomicU64,
    shared_hits: AtomicU64,
    shared_misses: AtomicU64,
    shared_bytes_read: AtomicU64,
    promoted: AtomicU64,
    shared_queued: AtomicU64,
    shared_dropped: AtomicU64,
    shared_put: AtomicU64,
    shared_acknowledged: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn bytes_of<'a>(blocks: impl IntoIterator<Item = &'a Bytes>) -> usize {
    blocks.into_iter().map(|block| block.len()).sum()
}

/// One `put` waiting for the shared tier, with the tenant it is charged to.
struct Batch {
    tenant: Arc<str>,
    blocks: Blocks,
    /// The span of the `put` that queued the batch: the write's span is its child, so a
    /// request's trace shows its blocks reaching the shared tier.
    queued_by: tracing::Span,
}

/// What the write queue carries.
enum Queued {
    Batch(Batch),
    /// Answered once every batch queued before it has been written.
    Flush(oneshot::Sender<()>),
}

/// The shared tier and the sending half of its write queue.
struct Shared<S> {
    tier: Arc<S>,
    queue: mpsc::Sender<Queued>,
}

/// The tiered KV block store: host tier first, then the optional shared tier `S`.
///
/// A cloneable handle; clones share the tiers, the queue and the stats. The background writer
/// stops once every handle is dropped and the queue is drained.
pub struct TieredStore<S> {
    host: HostCache,
    shared: Option<Arc<Shared<S>>>,
    stats: Arc<Counters>,
}

impl<S> Clone for TieredStore<S> {
    fn clone(&self) -> Self {
        TieredStore { host: self.host.clone(), shared: self.shared.clone(), stats: Arc::clone(&self.stats) }
    }
}

impl<S: Tier> TieredStore<S> {
    /// A store over `host` and, if given, `shared`, whose writer task is spawned on `runtime`
    /// (injected rather than found, so a missing runtime is a type error, never a panic).
    pub fn new(host: HostCache, shared: Option<S>, config: TieredConfig, runtime: &tokio::runtime::Handle) -> Self {
        let stats = Arc::new(Counters::default());
        let shared = shared.map(|tier| {
            let tier = Arc::new(tier);
            let (queue, receiver) = mpsc::channel(config.write_queue_batches.max(1));
            runtime.spawn(write_behind(Arc::clone(&tier), receiver, Arc::clone(&stats)));
            Arc::new(Shared { tier, queue })
        });
        TieredStore { host, shared, stats }
    }

    /// The host tier.
    pub fn host(&self) -> &HostCache {
        &self.host
    }

    /// The shared tier, if any (e.g. for its own stats).
    pub fn shared(&self) -> Option<&S> {
        self.shared.as_deref().map(|shared| &*shared.tier)
    }

    /// Where each block of the longest cached prefix of `hashes` lives (the length is the prefix
    /// length), preferring the host tier. At most one shared-tier round trip; a probe, so no
    /// stats, no recency change, and no validation of shared bytes (a `get` may still miss).
    pub async fn lookup(&self, hashes: &[SequenceHash]) -> Vec<TierKind> {
        let in_host = self.host.longest_prefix(hashes);
        let mut found = vec![TierKind::Host; in_host];
        if let Some(shared) = &self.shared
            && in_host < hashes.len()
        {
            let rest = &hashes[in_host..];
            let in_shared = shared.tier.lookup(rest).await;
            found.extend(
                rest.iter()
                    .take(in_shared)
                    .map(|hash| if self.host.contains(hash) { TierKind::Host } else { TierKind::Shared }),
            );
        }
        found
    }

    /// The longest prefix of `hashes` the tiers can serve: from the host tier while it has the
    /// blocks, then the rest of the run from the shared tier in one round trip. Shared hits are
    /// promoted into the host tier.
    pub async fn get(&self, hashes: &[SequenceHash]) -> Fetched {
        let mut fetched = Fetched::default();
        for hash in hashes {
            match self.host.get(hash) {
                Some(block) => {
                    fetched.blocks.push(block);
                    fetched.sources.push(TierKind::Host);
                }
                None => break,
            }
        }
        let in_host = fetched.blocks.len();
        add(&self.stats.host_hits, in_host);
        add(&self.stats.host_misses, hashes.len() - in_host);
        add(&self.stats.host_bytes_read, bytes_of(&fetched.blocks));
        let rest = &hashes[in_host..];
        let Some(shared) = self.shared.as_ref().filter(|_| !rest.is_empty()) else { return fetched };
        let span = tracing::info_span!("kv.get.shared", blocks = rest.len(), hits = Empty);
        let from_shared: Vec<Bytes> =
            shared.tier.get_many(rest).instrument(span.clone()).await.into_iter().map_while(|block| block).collect();
        span.record("hits", from_shared.len());
        add(&self.stats.shared_hits, from_shared.len());
        add(&self.stats.shared_misses, rest.len() - from_shared.len());
        add(&self.stats.shared_bytes_read, bytes_of(&from_shared));
        for (hash, block) in rest.iter().zip(from_shared) {
            let inserted = self.host.insert(*hash, block.clone());
            fetched.evicted.extend(inserted.evicted);
            add(&self.stats.promoted, 1);
            add(&self.stats.host_bytes_written, block.len());
            fetched.blocks.push(block);
            fetched.sources.push(TierKind::Shared);
        }
        fetched
    }

    /// Stores blocks in the host tier now and queues them for the shared tier. Never blocks and
    /// never fails: a full queue drops the batch for the shared tier (counted).
    pub fn put(&self, blocks: Blocks) -> Stored {
        self.put_for("", blocks)
    }

    /// [`put`](Self::put), charging the blocks to `tenant` in a shared tier with per-tenant
    /// quotas ([`Tier::put_many_for`]). The host tier does not account per tenant.
    pub fn put_for(&self, tenant: &str, blocks: Blocks) -> Stored {
        let mut stored = Stored { evicted: self.insert_host(&blocks), queued: false };
        if let Some(shared) = &self.shared
            && !blocks.is_empty()
        {
            let n = blocks.len();
            let batch = Batch { tenant: tenant.into(), blocks, queued_by: tracing::Span::current() };
            match shared.queue.try_send(Queued::Batch(batch)) {
                Ok(()) => {
                    add(&self.stats.shared_queued, n);
                    stored.queued = true;
                }
                Err(_) => add(&self.stats.shared_dropped, n),
            }
        }
        stored
    }

    /// Waits until the shared tier has been sent every batch queued before this call, each
    /// write bounded by the tier's own timeout (a batch it refused or timed out on counts as
    /// done: the host tier still has it). Returns at once without a shared tier. Waits for room
    /// in a full queue, so a caller that must stop bounds it with a timeout of its own.
    pub async fn flush(&self) {
        let Some(shared) = &self.shared else { return };
        let (done, flushed) = oneshot::channel();
        if shared.queue.send(Queued::Flush(done)).await.is_ok() {
            // The writer stops only with the last handle, and this one is alive.
            let _ = flushed.await;
        }
    }

    /// Stores blocks in the host tier now, then writes them to the shared tier and waits for
    /// its answer (bounded by the tier's own operation timeout). Never fails: a shared tier
    /// that is down answers 0 acknowledged, and the caller decides (e.g. hands off anyway and
    /// lets the receiver recompute, or retries). The blocks bypass the write-behind queue; a
    /// `put` of the same blocks still queued writes the same bytes again, which is harmless.
    ///
    /// Cancel-safe in the weak sense: dropping the future abandons the shared write (the
    /// blocks stay in the host tier).
    pub async fn put_through(&self, blocks: Blocks) -> WrittenThrough {
        self.put_through_for("", blocks).await
    }

    /// [`put_through`](Self::put_through), charging the blocks to `tenant` in a shared tier
    /// with per-tenant quotas: a tenant over quota may see fewer blocks acknowledged.
    pub async fn put_through_for(&self, tenant: &str, blocks: Blocks) -> WrittenThrough {
        let evicted = self.insert_host(&blocks);
        let Some(shared) = &self.shared else { return WrittenThrough { evicted, shared: None } };
        let sent = blocks.len();
        let span = tracing::info_span!("kv.put.shared", blocks = sent, acknowledged = Empty);
        let acknowledged = match sent {
            0 => 0,
            _ => shared.tier.put_many_for(tenant, blocks).instrument(span.clone()).await.min(sent),
        };
        span.record("acknowledged", acknowledged);
        add(&self.stats.shared_put, sent);
        add(&self.stats.shared_acknowledged, acknowledged);
        WrittenThrough { evicted, shared: Some(SharedWrite { sent, acknowledged }) }
    }

    /// Inserts every block into the host tier; returns the blocks evicted for them.
    fn insert_host(&self, blocks: &Blocks) -> Vec<BlockRemoved> {
        add(&self.stats.host_bytes_written, bytes_of(blocks.iter().map(|(_, block)| block)));
        blocks.iter().flat_map(|(hash, block)| self.host.insert(*hash, block.clone()).evicted).collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TieredStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let s = &self.stats;
        TieredStats {
            host_hits: load(&s.host_hits),
            host_misses: load(&s.host_misses),
            host_bytes_read: load(&s.host_bytes_read),
            host_bytes_written: load(&s.host_bytes_written),
            shared_hits: load(&s.shared_hits),
            shared_misses: load(&s.shared_misses),
            shared_bytes_read: load(&s.shared_bytes_read),
            promoted: load(&s.promoted),
            shared_queued: load(&s.shared_queued),
            shared_dropped: load(&s.shared_dropped),
            shared_put: load(&s.shared_put),
            shared_acknowledged: load(&s.shared_acknowledged),
        }
    }
}

/// Drains the write queue into the shared tier, one batch at a time (each bounded by the tier's
/// own timeout), until every sender is gone; answers a flush when it reaches it.
async fn write_behind<S: Tier>(tier: Arc<S>, mut queue: mpsc::Receiver<Queued>, stats: Arc<Counters>) {
    while let Some(queued) = queue.recv().await {
        let Batch { tenant, blocks, queued_by } = match queued {
            Queued::Batch(batch) => batch,
            Queued::Flush(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let n = blocks.len();
        let span = tracing::info_span!(parent: &queued_by, "kv.put.shared", blocks = n, acknowledged = Empty);
        let acknowledged = tier.put_many_for(&tenant, blocks).instrument(span.clone()).await;
        span.record("acknowledged", acknowledged);
        add(&stats.shared_put, n);
    }
}

impl<S> fmt::Debug for TieredStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredStore")
            .field("host", &self.host)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}
