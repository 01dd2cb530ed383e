//! The one async interface of a KV tier below the host tier.
//!
//! A tier is a cache, never a source of truth: every block it holds can be recomputed by a
//! prefill. So a tier has no error type. A tier that fails, times out or finds corrupt bytes
//! answers as if the block were absent (and counts why in its own stats); the caller recomputes.
//! This keeps an outage of a shared service (Redis, the kvstore service) from ever failing a
//! request: it only makes requests slower.
//!
//! Batched by design: a prefix run of `n` blocks is one call (one network round trip for a
//! remote tier), never `n` calls.
//!
//! The methods return `impl Future + Send` (native async in traits, no boxing), so a tier can be
//! driven from a spawned tokio task; the price is that `Tier` is not object safe, and code that
//! holds a tier is generic over it (as [`TieredStore`](crate::TieredStore) is).

use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lcserve_common::SequenceHash;

/// Encoded `KVB1` blocks with their identities, as written to a tier in one call.
pub type Blocks = Vec<(SequenceHash, Bytes)>;

/// A tier of the KV store that can be reached asynchronously (a remote cache).
pub trait Tier: Send + Sync + 'static {
    /// How many leading `hashes` the tier holds: because a hash chains every token before it,
    /// that is the length of the cached prefix. A probe: the bytes are not fetched nor
    /// validated, so a corrupt block counts as present until a `get_many` finds it out.
    fn lookup(&self, hashes: &[SequenceHash]) -> impl Future<Output = usize> + Send;

    /// The bytes of each block, in order; `None` for a block that is absent, corrupt or could
    /// not be read in time. Every `Some` has passed the `KVB1` header, identity and checksum
    /// checks, so it can be handed to the decoder as is.
    fn get_many(&self, hashes: &[SequenceHash]) -> impl Future<Output = Vec<Option<Bytes>>> + Send;

    /// Stores the blocks and returns how many of them the tier acknowledged (0 when the write
    /// failed or timed out). Best effort: a lost block is a later miss, never an error; the
    /// count lets a caller that must know (a prefill handing a session to another machine)
    /// tell whether the blocks arrived.
    fn put_many(&self, blocks: Blocks) -> impl Future<Output = usize> + Send;

    /// [`put_many`](Tier::put_many), charging the blocks to `tenant` (an opaque name; empty
    /// is the default tenant) in a tier that keeps per-tenant quotas. Others ignore the name.
    fn put_many_for(&self, tenant: &str, blocks: Blocks) -> impl Future<Output = usize> + Send {
        let _ = tenant;
        self.put_many(blocks)
    }
}

/// Counters of a remote tier since creation. `hits + misses` is the number of blocks asked of
/// `get_many`; `errors` and `timeouts` count operations (any method), `corrupt` blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TierStats {
    /// Blocks returned by `get_many`.
    pub hits: u64,
    /// Blocks asked and not returned (absent, corrupt, or lost to an error or a timeout).
    pub misses: u64,
    /// Operations that failed (connection refused or dropped, an error from the far side).
    pub errors: u64,
    /// Operations that ran past the tier's operation timeout.
    pub timeouts: u64,
    /// Blocks read that failed validation ([`validate`](crate::validate)).
    pub corrupt: u64,
    /// Bytes of valid blocks read.
    pub bytes_read: u64,
    /// Blocks sent in `put_many` calls that the far side acknowledged.
    pub blocks_written: u64,
    /// Bytes of those blocks.
    pub bytes_written: u64,
}

/// The atomic form of [`TierStats`], shared by the clones of a tier handle.
#[derive(Debug, Default)]
pub(crate) struct TierCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub corrupt: AtomicU64,
    pub bytes_read: AtomicU64,
    pub blocks_written: AtomicU64,
    pub bytes_written: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

impl TierCounters {
    pub fn snapshot(&self) -> TierStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TierStats {
            hits: load(&self.hits),
            misses: load(&self.misses),
            errors: load(&self.errors),
            timeouts: load(&self.timeouts),
            corrupt: load(&self.corrupt),
            bytes_read: load(&self.bytes_read),
            blocks_written: load(&self.blocks_written),
            bytes_written: load(&self.bytes_written),
        }
    }

    /// Runs one operation under `timeout`; `None` (counted as an error or a timeout) unless it
    /// succeeded in time.
    pub async fn bounded<T, E>(&self, timeout: Duration, operation: impl Future<Output = Result<T, E>>) -> Option<T> {
        match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(_)) => {
                add(&self.errors, 1);
                None
            }
            Err(_) => {
                add(&self.timeouts, 1);
                None
            }
        }
    }

    /// Counts the outcome of a `get_many` of `asked` blocks.
    pub fn count_read(&self, asked: usize, found: &[Option<Bytes>]) {
        let hits = found.iter().flatten().count();
        add(&self.hits, hits);
        add(&self.misses, asked - hits);
        add(&self.bytes_read, found.iter().flatten().map(|block| block.len()).sum());
    }

    /// Counts `blocks` of `bytes` acknowledged by the far side.
    pub fn count_written(&self, blocks: usize, bytes: usize) {
        add(&self.blocks_written, blocks);
        add(&self.bytes_written, bytes);
    }
}
