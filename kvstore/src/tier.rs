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

use std::future::Future;
use std::sync::Arc;

use lcserve_common::SequenceHash;

/// Encoded `KVB1` blocks with their identities, as written to a tier in one call.
pub type Blocks = Vec<(SequenceHash, Arc<[u8]>)>;

/// A tier of the KV store that can be reached asynchronously (a remote cache).
pub trait Tier: Send + Sync + 'static {
    /// How many leading `hashes` the tier holds: because a hash chains every token before it,
    /// that is the length of the cached prefix. A probe: the bytes are not fetched nor
    /// validated, so a corrupt block counts as present until a `get_many` finds it out.
    fn lookup(&self, hashes: &[SequenceHash]) -> impl Future<Output = usize> + Send;

    /// The bytes of each block, in order; `None` for a block that is absent, corrupt or could
    /// not be read in time. Every `Some` has passed the `KVB1` header, identity and checksum
    /// checks, so it can be handed to the decoder as is.
    fn get_many(&self, hashes: &[SequenceHash]) -> impl Future<Output = Vec<Option<Arc<[u8]>>>> + Send;

    /// Stores the blocks. Best effort: a failure loses them, which later reads see as misses.
    fn put_many(&self, blocks: Blocks) -> impl Future<Output = ()> + Send;
}
