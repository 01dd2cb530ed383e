//! The host tier: encoded `KVB1` blocks in worker RAM, bounded by bytes, evicted least recently
//! used first.
//!
//! A block that falls out of the engine's paged pool is worth keeping close: re-reading it from
//! RAM costs a decode, re-computing it costs a prefill. [`HostCache`] keeps the encoded bytes
//! (`Bytes`, so a reader's copy is a reference count, and stays valid after the block leaves
//! the cache) keyed by [`SequenceHash`]. It is synchronous and pure: the async tier trait and the
//! `TieredStore` wrap it, and publish its [`BlockRemoved`] records as KV events.
//!
//! Rules, each one tested in `tests/host_cache.rs`:
//! - **A writer never fails.** [`HostCache::insert`] evicts unpinned blocks, least recently used
//!   first, until the new block fits, and returns every eviction. A block that cannot be stored
//!   (larger than the whole capacity, or not fitting beside the pinned blocks) is *not stored*:
//!   the outcome says why and [`Stats`] counts it, because a cache miss later is the only
//!   consequence. Nothing is evicted for a block that is then rejected.
//! - **One copy per hash.** A hash names its content (and every token before it), so inserting a
//!   hash already present keeps the stored copy and only refreshes its recency.
//! - **Recency** is refreshed by `insert`, `get` and `pin` — the calls that store or hand out
//!   bytes. `contains` and `longest_prefix` are probes: they change neither recency nor stats.
//! - **Pins.** A [`PinGuard`] keeps its block out of eviction until the guard drops (RAII), and
//!   hands out the bytes. Pinned blocks are taken out of the LRU order and re-enter it at their
//!   last-use stamp when the last pin drops. Explicit [`HostCache::remove`] and
//!   [`HostCache::clear`] are invalidations and do remove pinned blocks: the guard keeps its
//!   bytes alive, and a guard of a removed block releases nothing — not even a block later
//!   re-inserted under the same hash (each stored copy has its own id).
//! - **Accounting.** `bytes ≤ capacity` after every call; `bytes` is the sum of the stored
//!   blocks' lengths (bytes kept alive only by readers' `Bytes` handles are not counted).
//!
//! Cost: `HashMap` by hash plus a `BTreeMap` from a monotonically increasing use stamp to the
//! hash of every *unpinned* block, so lookups are O(1), recency updates and each eviction
//! O(log n), and eviction never scans pinned blocks.
//!
//! Concurrency: [`HostCache`] is a cloneable handle to one `std::sync::Mutex`; every critical
//! section is short, allocation-light and never blocks or calls out. If a thread panics while
//! holding the lock, the state is recovered with `PoisonError::into_inner`: no critical section
//! calls code that can panic between two related updates (no indexing, no unwrapping, no user
//! callbacks), so the state is consistent at every point where an unwinding could start.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use lcserve_common::SequenceHash;

/// Why a block left the host tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RemovalCause {
    /// Least recently used, pushed out to make room for an insert (or, by
    /// [`HostCache::evict`], by a policy such as a tenant quota).
    Evicted,
    /// Removed by [`HostCache::remove`].
    Removed,
    /// Removed by [`HostCache::clear`].
    Cleared,
}

/// A block that left the host tier: the kvstore publishes one `BlockRemoved` KV event per record,
/// so the router's prefix index stops routing to a block this worker no longer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRemoved {
    pub hash: SequenceHash,
    /// Encoded length in bytes, as it was counted against the capacity.
    pub len: usize,
    pub cause: RemovalCause,
}

/// Why an insert did not store its block. Never an error to the writer: the block is simply
/// absent, as if evicted at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The block alone exceeds the whole capacity (a misconfigured byte budget, most likely).
    LargerThanCapacity { len: usize, capacity: usize },
    /// The block does not fit beside the pinned blocks, which may not be evicted.
    PinnedFull { len: usize, pinned_bytes: usize, capacity: usize },
}

/// What [`HostCache::insert`] did with the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InsertOutcome {
    /// Stored as a new block.
    Stored,
    /// The hash was already present: its copy was kept and its recency refreshed.
    AlreadyPresent,
    /// Not stored; counted in [`Stats`].
    Rejected(Rejection),
}

/// The result of an insert: its outcome and the blocks evicted for it, least recently used first.
#[must_use = "evicted blocks must be published as KV events"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub outcome: InsertOutcome,
    pub evicted: Vec<BlockRemoved>,
}

/// A snapshot of the host tier's gauges and counters (counters are totals since creation).
///
/// Invariants: `bytes ≤ capacity`, `blocks == inserts − evictions − removals`,
/// `pinned_blocks ≤ blocks`, `pinned_bytes ≤ bytes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stats {
    /// The byte budget.
    pub capacity: usize,
    /// Bytes of the stored blocks.
    pub bytes: usize,
    /// Stored blocks.
    pub blocks: usize,
    /// Blocks held by at least one [`PinGuard`].
    pub pinned_blocks: usize,
    /// Bytes of the pinned blocks.
    pub pinned_bytes: usize,
    /// `get`/`pin` calls (and `pin_prefix` blocks) that found their block.
    pub hits: u64,
    /// `get`/`pin` calls (and `pin_prefix` calls stopping short) that did not.
    pub misses: u64,
    /// Blocks stored.
    pub inserts: u64,
    /// Inserts of a hash already present.
    pub duplicates: u64,
    /// Blocks evicted to make room.
    pub evictions: u64,
    /// Blocks removed by `remove` or `clear`.
    pub removals: u64,
    /// Inserts rejected as [`Rejection::LargerThanCapacity`].
    pub rejected_too_large: u64,
    /// Inserts rejected as [`Rejection::PinnedFull`].
    pub rejected_pinned_full: u64,
}

impl Stats {
    /// All inserts that stored nothing.
    pub fn rejected(&self) -> u64 {
        self.rejected_too_large + self.rejected_pinned_full
    }
}

/// The host tier: a cloneable handle; clones share one cache.
#[derive(Clone)]
pub struct HostCache {
    inner: Arc<Mutex<Inner>>,
}

impl HostCache {
    /// An empty cache holding at most `capacity` bytes of encoded blocks.
    pub fn new(capacity: usize) -> Self {
        let inner = Inner {
            capacity,
            entries: HashMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            bytes: 0,
            unpinned_bytes: 0,
            stats: Stats { capacity, ..Stats::default() },
        };
        HostCache { inner: Arc::new(Mutex::new(inner)) }
    }

    /// Stores `bytes` under `hash`, evicting least recently used unpinned blocks as needed.
    /// Never fails: see [`InsertOutcome`] for what happened and [`Inserted::evicted`] for the
    /// events to publish. O(log n) per eviction.
    pub fn insert(&self, hash: SequenceHash, bytes: Bytes) -> Inserted {
        self.lock().insert(hash, bytes)
    }

    /// The block's bytes, refreshing its recency; counts a hit or a miss.
    pub fn get(&self, hash: &SequenceHash) -> Option<Bytes> {
        let mut inner = self.lock();
        let stamp = inner.tick();
        match inner.touch(hash, stamp) {
            Some(entry) => {
                let bytes = entry.bytes.clone();
                inner.stats.hits += 1;
                Some(bytes)
            }
            None => {
                inner.stats.misses += 1;
                None
            }
        }
    }

    /// Whether the block is stored. A probe: no recency change, no stats.
    pub fn contains(&self, hash: &SequenceHash) -> bool {
        self.lock().entries.contains_key(hash)
    }

    /// How many leading `hashes` are stored. Because a hash chains everything before it, the
    /// answer is the length of the cached prefix; a stored block after a gap does not count. A
    /// probe: no recency change, no stats.
    pub fn longest_prefix(&self, hashes: &[SequenceHash]) -> usize {
        let inner = self.lock();
        hashes.iter().take_while(|hash| inner.entries.contains_key(hash)).count()
    }

    /// Pins the block (refreshing its recency) so that it cannot be evicted while the guard
    /// lives; counts a hit or a miss.
    pub fn pin(&self, hash: &SequenceHash) -> Option<PinGuard> {
        let mut inner = self.lock();
        let pinned = inner.pin(hash);
        match &pinned {
            Some(_) => inner.stats.hits += 1,
            None => inner.stats.misses += 1,
        }
        drop(inner);
        pinned.map(|(id, bytes)| self.guard(*hash, id, bytes))
    }

    /// Pins the longest stored prefix of `hashes` under one lock, so that no eviction can open
    /// a gap between looking the prefix up and pinning it. Each pinned block counts a hit; one
    /// miss is counted when the prefix stops short of `hashes`.
    pub fn pin_prefix(&self, hashes: &[SequenceHash]) -> Vec<PinGuard> {
        let mut inner = self.lock();
        let mut pinned = Vec::new();
        for hash in hashes {
            match inner.pin(hash) {
                Some((id, bytes)) => pinned.push((*hash, id, bytes)),
                None => break,
            }
        }
        inner.stats.hits += pinned.len() as u64;
        if pinned.len() < hashes.len() {
            inner.stats.misses += 1;
        }
        drop(inner);
        pinned.into_iter().map(|(hash, id, bytes)| self.guard(hash, id, bytes)).collect()
    }

    /// Evicts the block if it is stored and unpinned (a policy's choice, e.g. a tenant over
    /// its quota): counted and reported as an eviction. `None` when it is absent or pinned.
    pub fn evict(&self, hash: &SequenceHash) -> Option<BlockRemoved> {
        let mut inner = self.lock();
        if inner.entries.get(hash).is_none_or(|entry| entry.pins > 0) {
            return None;
        }
        let removed = inner.unlink(hash, RemovalCause::Evicted)?;
        inner.stats.evictions += 1;
        Some(removed)
    }

    /// Removes the block, pinned or not (an invalidation); `None` when it was not stored.
    pub fn remove(&self, hash: &SequenceHash) -> Option<BlockRemoved> {
        let mut inner = self.lock();
        let removed = inner.unlink(hash, RemovalCause::Removed)?;
        inner.stats.removals += 1;
        Some(removed)
    }

    /// Removes every block, pinned or not, and returns one record per block (in no particular
    /// order). Counters keep their totals.
    pub fn clear(&self) -> Vec<BlockRemoved> {
        let mut inner = self.lock();
        let removed: Vec<BlockRemoved> = inner
            .entries
            .drain()
            .map(|(hash, entry)| BlockRemoved { hash, len: entry.bytes.len(), cause: RemovalCause::Cleared })
            .collect();
        inner.lru.clear();
        inner.bytes = 0;
        inner.unpinned_bytes = 0;
        inner.stats.removals += removed.len() as u64;
        removed
    }

    /// A consistent snapshot of the gauges and counters.
    pub fn stats(&self) -> Stats {
        self.lock().snapshot()
    }

    /// The byte budget.
    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    fn guard(&self, hash: SequenceHash, id: u64, bytes: Bytes) -> PinGuard {
        PinGuard { cache: Arc::downgrade(&self.inner), hash, id, bytes }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }
}

impl fmt::Debug for HostCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = self.stats();
        f.debug_struct("HostCache")
            .field("capacity", &stats.capacity)
            .field("bytes", &stats.bytes)
            .field("blocks", &stats.blocks)
            .finish_non_exhaustive()
    }
}

/// Keeps one block out of eviction until dropped, and hands out its bytes.
///
/// Holds only a `Weak` reference to the cache: a guard never keeps a dropped cache alive, and
/// releasing on drop takes the lock for a few map operations.
pub struct PinGuard {
    cache: Weak<Mutex<Inner>>,
    hash: SequenceHash,
    /// The pinned copy's id: a guard outliving a `remove` must not unpin a later re-insert.
    id: u64,
    bytes: Bytes,
}

impl PinGuard {
    /// The pinned block's hash.
    pub fn hash(&self) -> SequenceHash {
        self.hash
    }

    /// The pinned block's bytes (valid even if the block was since removed).
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        if let Some(cache) = self.cache.upgrade() {
            lock(&cache).unpin(&self.hash, self.id);
        }
    }
}

impl fmt::Debug for PinGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinGuard").field("hash", &self.hash).field("len", &self.bytes.len()).finish()
    }
}

/// Recovers a poisoned lock: see the module docs for why the state is still consistent.
fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Entry {
    bytes: Bytes,
    /// Last use; the key in `Inner::lru` while unpinned.
    stamp: u64,
    /// The stamp at insertion: unique per stored copy, matched by `PinGuard`s.
    id: u64,
    /// Live guards.
    pins: usize,
}

/// Invariants (kept by every method, checked by the model test through [`Stats`]):
/// `lru` holds exactly the unpinned entries, each under its `stamp`; `bytes` is the sum of all
/// entries' lengths and `unpinned_bytes` that of the unpinned ones; `bytes ≤ capacity`.
struct Inner {
    capacity: usize,
    entries: HashMap<SequenceHash, Entry>,
    /// Eviction order of the unpinned blocks: oldest stamp first.
    lru: BTreeMap<u64, SequenceHash>,
    /// Source of stamps; strictly increasing (2^64 uses will not happen).
    clock: u64,
    bytes: usize,
    unpinned_bytes: usize,
    /// Counters; the gauges in it are filled in by `snapshot`.
    stats: Stats,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Moves the entry to the most recent position and returns it.
    fn touch(&mut self, hash: &SequenceHash, stamp: u64) -> Option<&mut Entry> {
        let entry = self.entries.get_mut(hash)?;
        if entry.pins == 0 {
            self.lru.remove(&entry.stamp);
            self.lru.insert(stamp, *hash);
        }
        entry.stamp = stamp;
        Some(entry)
    }

    fn insert(&mut self, hash: SequenceHash, bytes: Bytes) -> Inserted {
        let stamp = self.tick();
        if self.touch(&hash, stamp).is_some() {
            self.stats.duplicates += 1;
            return Inserted { outcome: InsertOutcome::AlreadyPresent, evicted: Vec::new() };
        }
        let len = bytes.len();
        let capacity = self.capacity;
        let pinned_bytes = self.bytes - self.unpinned_bytes;
        let rejection = if len > capacity {
            self.stats.rejected_too_large += 1;
            Rejection::LargerThanCapacity { len, capacity }
        } else if len > capacity - pinned_bytes {
            // Checked before evicting anything: no block is lost for an insert that then fails.
            self.stats.rejected_pinned_full += 1;
            Rejection::PinnedFull { len, pinned_bytes, capacity }
        } else {
            let evicted = self.make_room(len);
            self.entries.insert(hash, Entry { bytes, stamp, id: stamp, pins: 0 });
            self.lru.insert(stamp, hash);
            self.bytes += len;
            self.unpinned_bytes += len;
            self.stats.inserts += 1;
            return Inserted { outcome: InsertOutcome::Stored, evicted };
        };
        Inserted { outcome: InsertOutcome::Rejected(rejection), evicted: Vec::new() }
    }

    /// Evicts unpinned blocks, oldest first, until `len` more bytes fit. The caller checked that
    /// the unpinned bytes suffice, so the LRU order cannot run dry first.
    fn make_room(&mut self, len: usize) -> Vec<BlockRemoved> {
        let mut evicted = Vec::new();
        while self.bytes + len > self.capacity {
            let Some(victim) = self.lru.first_key_value().map(|(_, hash)| *hash) else { break };
            if let Some(removed) = self.unlink(&victim, RemovalCause::Evicted) {
                self.stats.evictions += 1;
                evicted.push(removed);
            }
        }
        evicted
    }

    /// Takes the entry out of every structure and the byte counts.
    fn unlink(&mut self, hash: &SequenceHash, cause: RemovalCause) -> Option<BlockRemoved> {
        let entry = self.entries.remove(hash)?;
        let len = entry.bytes.len();
        self.bytes -= len;
        if entry.pins == 0 {
            self.lru.remove(&entry.stamp);
            self.unpinned_bytes -= len;
        }
        Some(BlockRemoved { hash: *hash, len, cause })
    }

    /// Adds a pin (refreshing recency) and returns the copy's id and bytes.
    fn pin(&mut self, hash: &SequenceHash) -> Option<(u64, Bytes)> {
        let stamp = self.tick();
        let entry = self.touch(hash, stamp)?;
        entry.pins += 1;
        let (first_pin, id, bytes) = (entry.pins == 1, entry.id, entry.bytes.clone());
        if first_pin {
            self.lru.remove(&stamp);
            self.unpinned_bytes -= bytes.len();
        }
        Some((id, bytes))
    }

    /// Drops one pin of copy `id`; the last one puts the block back in the LRU order at its
    /// last-use stamp. A guard of a copy no longer stored releases nothing.
    fn unpin(&mut self, hash: &SequenceHash, id: u64) {
        let Some(entry) = self.entries.get_mut(hash) else { return };
        if entry.id != id || entry.pins == 0 {
            return;
        }
        entry.pins -= 1;
        if entry.pins == 0 {
            let (stamp, len) = (entry.stamp, entry.bytes.len());
            self.lru.insert(stamp, *hash);
            self.unpinned_bytes += len;
        }
    }

    fn snapshot(&self) -> Stats {
        Stats {
            capacity: self.capacity,
            bytes: self.bytes,
            blocks: self.entries.len(),
            pinned_blocks: self.entries.len() - self.lru.len(),
            pinned_bytes: self.bytes - self.unpinned_bytes,
            ..self.stats
        }
    }
}
