//! Bookkeeping for the paged KV pool: which block ids are free, in use, or retained for reuse.
//!
//! The engine owns an arena of `capacity` KV blocks indexed by [`BlockId`]; this module decides
//! which ids hold what, and stores no tensors. Keeping it synchronous and pure lets the engine
//! layer RAII guards on top and lets tests drive it through millions of random operations.
//!
//! # Lifecycle of a block
//!
//! ```text
//!            allocate()                       release() to refcount 0, no hash
//!   Free ─────────────────▶ InUse(refs ≥ 1) ─────────────────────────────────▶ Free
//!                             │    ▲
//!   release() to refcount 0,  │    │ acquire() / lookup_prefix()
//!   registered under a hash   ▼    │
//!                           Cached ───── allocate() with no free block left ──▶ InUse (hash dropped)
//! ```
//!
//! A block registered under a [`SequenceHash`] (the chained hash of every token up to the end of
//! the block) keeps its KV after its last user releases it: it becomes *cached*, evictable in
//! least-recently-released order, and a later request with the same prefix finds it through
//! [`BlockAllocator::lookup_prefix`] instead of recomputing it (vLLM / SGLang prefix caching).
//! A hash names exactly one block: the first block registered under it stays canonical and
//! [`BlockAllocator::register`] points later duplicates at it.
//!
//! # Complexity
//!
//! Every operation is O(1) or O(log n) in the pool size (`allocate_many` and `lookup_prefix` are
//! that per block): the free list is a stack, cached blocks sit in a `BTreeMap` keyed by a
//! monotonically increasing release stamp, and hashes resolve through a `HashMap`.

use std::collections::{BTreeMap, HashMap};

use lcserve_common::{BlockId, SequenceHash};
use thiserror::Error;

/// The pool has no free or evictable block left for an allocation.
///
/// Not a bug: the scheduler reacts by preempting or queueing. Nothing was allocated.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error(
    "KV pool exhausted: requested {requested} block(s) but only {available} are free or \
     evictable ({in_use} of {capacity} blocks in use)"
)]
pub struct PoolExhausted {
    /// Blocks the failed call asked for.
    pub requested: usize,
    /// Blocks that were free or cached (evictable) at the time.
    pub available: usize,
    /// Blocks with a refcount above zero.
    pub in_use: usize,
    /// Blocks in the pool.
    pub capacity: usize,
}

/// A misuse of the allocator by its caller. The allocator's state is unchanged when one is
/// returned, so the engine can log it and fail the one request instead of the whole worker.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum BlockAllocatorError {
    /// A pool larger than the [`BlockId`] range.
    #[error("a KV pool of {requested} blocks exceeds the BlockId range (at most {max})")]
    CapacityTooLarge {
        /// Blocks asked for.
        requested: usize,
        /// Largest pool a `u32` id can address.
        max: usize,
    },
    /// A block id outside the pool.
    #[error("{op}: block {} is out of range for a pool of {capacity} blocks", block.0)]
    UnknownBlock {
        /// Operation that was attempted.
        op: &'static str,
        /// The offending id.
        block: BlockId,
        /// Blocks in the pool.
        capacity: usize,
    },
    /// An operation that needs a reference on a block nobody holds (refcount 0), such as a
    /// double release or registering a released block.
    #[error("{op}: block {} is not in use (refcount 0)", block.0)]
    NotInUse {
        /// Operation that was attempted.
        op: &'static str,
        /// The offending id.
        block: BlockId,
    },
    /// `acquire` on a free block: it holds no KV, so a new user must `allocate` instead.
    #[error("acquire: block {} is free; only in-use or cached blocks can be acquired", block.0)]
    AcquireFree {
        /// The offending id.
        block: BlockId,
    },
    /// `acquire` on a block whose refcount would overflow `u32`.
    #[error("acquire: refcount of block {} would overflow", block.0)]
    RefcountOverflow {
        /// The offending id.
        block: BlockId,
    },
    /// `register` of a block that already holds a different prefix. A block's KV never changes
    /// while it is registered, so this is a caller bug.
    #[error("register: block {} already holds {existing}, cannot register it as {requested}", block.0)]
    AlreadyRegistered {
        /// The offending id.
        block: BlockId,
        /// The hash it is registered under.
        existing: SequenceHash,
        /// The hash the caller asked for.
        requested: SequenceHash,
    },
}

/// Where a block is in its lifecycle (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// On the free list; holds no hash.
    Free,
    /// Referenced by `refs ≥ 1` users.
    InUse { refs: u32 },
    /// Refcount 0, registered, retained; `stamp` is its key in the LRU map.
    Cached { stamp: u64 },
}

/// Per-block record. Invariant: `Free ⇒ hash == None`, `Cached ⇒ hash.is_some()`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    state: State,
    hash: Option<SequenceHash>,
}

/// Reference-counted block ids with prefix retention and LRU eviction.
///
/// Invariants (checked by the tests after every operation):
/// `num_free() + num_cached() + num_in_use() == capacity()`; every registered hash maps to
/// exactly one block and that block's `hash_of` is the hash; free blocks hold no hash.
#[derive(Debug)]
pub struct BlockAllocator {
    /// Indexed by `BlockId.0`.
    slots: Vec<Slot>,
    /// Free ids, popped from the end; seeded so that a fresh pool hands out 0, 1, 2, …
    free: Vec<BlockId>,
    /// Cached blocks by release stamp: the first entry is the least recently released.
    lru: BTreeMap<u64, BlockId>,
    /// Canonical block for each registered hash (in-use or cached).
    by_hash: HashMap<SequenceHash, BlockId>,
    /// Next release stamp; strictly increasing, so LRU order is release order.
    next_stamp: u64,
    /// Cached blocks reclaimed by `allocate`, for metrics.
    evictions: u64,
}

impl BlockAllocator {
    /// A pool of `num_blocks` blocks, all free.
    pub fn new(num_blocks: usize) -> Result<Self, BlockAllocatorError> {
        let max = u32::MAX as usize + 1;
        if num_blocks > max {
            return Err(BlockAllocatorError::CapacityTooLarge { requested: num_blocks, max });
        }
        let free = (0..num_blocks)
            .rev()
            // In range: checked against the u32 range above.
            .map(|i| BlockId(i as u32))
            .collect();
        Ok(Self {
            slots: vec![Slot { state: State::Free, hash: None }; num_blocks],
            free,
            lru: BTreeMap::new(),
            by_hash: HashMap::new(),
            next_stamp: 0,
            evictions: 0,
        })
    }

    /// Blocks in the pool.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Blocks on the free list (holding nothing).
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks with refcount 0 that keep their KV for reuse and can be evicted.
    pub fn num_cached(&self) -> usize {
        self.lru.len()
    }

    /// Blocks with a refcount above zero.
    pub fn num_in_use(&self) -> usize {
        self.capacity() - self.num_free() - self.num_cached()
    }

    /// Blocks an allocation could obtain right now (free plus evictable).
    pub fn num_available(&self) -> usize {
        self.num_free() + self.num_cached()
    }

    /// Cached blocks reclaimed by allocations since the pool was created.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The refcount of `id` (0 for free and cached blocks), or `None` outside the pool.
    pub fn refcount(&self, id: BlockId) -> Option<u32> {
        self.slots.get(id.0 as usize).map(|slot| match slot.state {
            State::InUse { refs } => refs,
            State::Free | State::Cached { .. } => 0,
        })
    }

    /// The hash `id` is registered under, if any.
    pub fn hash_of(&self, id: BlockId) -> Option<SequenceHash> {
        self.slots.get(id.0 as usize).and_then(|slot| slot.hash)
    }

    /// Takes a block with refcount 1: a free one if any, else the least recently released cached
    /// block, whose hash registration is dropped (its KV will be overwritten).
    pub fn allocate(&mut self) -> Result<BlockId, PoolExhausted> {
        self.take_block().ok_or_else(|| self.exhausted(1))
    }

    /// Takes `n` blocks, or none if fewer than `n` are available.
    pub fn allocate_many(&mut self, n: usize) -> Result<Vec<BlockId>, PoolExhausted> {
        if n > self.num_available() {
            return Err(self.exhausted(n));
        }
        let mut blocks = Vec::with_capacity(n);
        while blocks.len() < n {
            match self.take_block() {
                Some(id) => blocks.push(id),
                // Unreachable given the check above; undo rather than leak if it ever happens.
                None => {
                    for id in blocks {
                        // Each id was just allocated with refcount 1, so release cannot fail.
                        let _ = self.release(id);
                    }
                    return Err(self.exhausted(n));
                }
            }
        }
        Ok(blocks)
    }

    /// Adds a reference to an in-use or cached block (a cached block leaves the LRU).
    pub fn acquire(&mut self, id: BlockId) -> Result<(), BlockAllocatorError> {
        let slot = self.slot(id, "acquire")?;
        match slot.state {
            State::Free => Err(BlockAllocatorError::AcquireFree { block: id }),
            State::InUse { refs } => {
                let refs = refs.checked_add(1).ok_or(BlockAllocatorError::RefcountOverflow { block: id })?;
                self.slots[id.0 as usize].state = State::InUse { refs };
                Ok(())
            }
            State::Cached { stamp } => {
                self.lru.remove(&stamp);
                self.slots[id.0 as usize].state = State::InUse { refs: 1 };
                Ok(())
            }
        }
    }

    /// Drops a reference. At refcount 0 a registered block becomes cached (most recently
    /// released); an unregistered one returns to the free list.
    pub fn release(&mut self, id: BlockId) -> Result<(), BlockAllocatorError> {
        let slot = self.slot(id, "release")?;
        let State::InUse { refs } = slot.state else {
            return Err(BlockAllocatorError::NotInUse { op: "release", block: id });
        };
        let state = if refs > 1 {
            State::InUse { refs: refs - 1 }
        } else if slot.hash.is_some() {
            let stamp = self.next_stamp;
            self.next_stamp += 1;
            self.lru.insert(stamp, id);
            State::Cached { stamp }
        } else {
            self.free.push(id);
            State::Free
        };
        self.slots[id.0 as usize].state = state;
        Ok(())
    }

    /// Marks the full, in-use block `id` as holding the KV of the prefix named by `hash`, and
    /// returns the canonical block for `hash`.
    ///
    /// If another block is already registered under `hash`, that block stays canonical, `id` is
    /// left unregistered, and the other block's id is returned: the caller should `acquire` it and
    /// `release` its duplicate. Registering a block again under the hash it already has is a
    /// no-op returning `id`.
    pub fn register(&mut self, id: BlockId, hash: SequenceHash) -> Result<BlockId, BlockAllocatorError> {
        let slot = self.slot(id, "register")?;
        if !matches!(slot.state, State::InUse { .. }) {
            return Err(BlockAllocatorError::NotInUse { op: "register", block: id });
        }
        match slot.hash {
            Some(existing) if existing == hash => return Ok(id),
            Some(existing) => {
                return Err(BlockAllocatorError::AlreadyRegistered { block: id, existing, requested: hash });
            }
            None => {}
        }
        if let Some(&canonical) = self.by_hash.get(&hash) {
            return Ok(canonical);
        }
        self.by_hash.insert(hash, id);
        self.slots[id.0 as usize].hash = Some(hash);
        Ok(id)
    }

    /// The blocks of the longest prefix of `hashes` that is registered (in use or cached), each
    /// acquired for the caller (refcount +1; cached blocks leave the LRU). Stops at the first
    /// hash that is not registered, since a chained hash is useless without its predecessors.
    pub fn lookup_prefix(&mut self, hashes: &[SequenceHash]) -> Vec<BlockId> {
        let mut blocks = Vec::with_capacity(self.peek_prefix_len(hashes));
        for hash in hashes {
            let Some(&id) = self.by_hash.get(hash) else { break };
            // A registered block is in use or cached, so acquire fails only on refcount
            // overflow; end the prefix there rather than hand out an unacquired block.
            if self.acquire(id).is_err() {
                break;
            }
            blocks.push(id);
        }
        blocks
    }

    /// How many leading `hashes` [`lookup_prefix`](Self::lookup_prefix) would return, without
    /// acquiring anything (for routing and admission decisions).
    pub fn peek_prefix_len(&self, hashes: &[SequenceHash]) -> usize {
        hashes.iter().take_while(|hash| self.by_hash.contains_key(hash)).count()
    }

    /// Pops a free block, else evicts the LRU cached one; `None` if neither exists.
    fn take_block(&mut self) -> Option<BlockId> {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                let (_, id) = self.lru.pop_first()?;
                let slot = &mut self.slots[id.0 as usize];
                if let Some(hash) = slot.hash.take() {
                    self.by_hash.remove(&hash);
                }
                self.evictions += 1;
                id
            }
        };
        self.slots[id.0 as usize].state = State::InUse { refs: 1 };
        Some(id)
    }

    fn slot(&self, id: BlockId, op: &'static str) -> Result<Slot, BlockAllocatorError> {
        self.slots.get(id.0 as usize).copied().ok_or(BlockAllocatorError::UnknownBlock {
            op,
            block: id,
            capacity: self.capacity(),
        })
    }

    fn exhausted(&self, requested: usize) -> PoolExhausted {
        PoolExhausted {
            requested,
            available: self.num_available(),
            in_use: self.num_in_use(),
            capacity: self.capacity(),
        }
    }

    /// Checks every structural invariant against the per-block records; panics on violation.
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut free = 0;
        let mut cached = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let id = BlockId(i as u32);
            match slot.state {
                State::Free => {
                    free += 1;
                    assert!(slot.hash.is_none(), "free block {i} holds a hash");
                    assert!(self.free.contains(&id), "free block {i} missing from free list");
                }
                State::InUse { refs } => assert!(refs > 0, "in-use block {i} with refcount 0"),
                State::Cached { stamp } => {
                    cached += 1;
                    assert!(slot.hash.is_some(), "cached block {i} holds no hash");
                    assert_eq!(self.lru.get(&stamp), Some(&id), "cached block {i} not in LRU");
                }
            }
            if let Some(hash) = slot.hash {
                assert_eq!(self.by_hash.get(&hash), Some(&id), "hash of block {i} not mapped back");
            }
        }
        assert_eq!(free, self.free.len(), "free list has duplicates or in-use blocks");
        assert_eq!(cached, self.lru.len(), "LRU has stale entries");
        for (hash, id) in &self.by_hash {
            assert_eq!(self.slots[id.0 as usize].hash, Some(*hash), "map entry {hash} is stale");
        }
        assert_eq!(self.num_free() + self.num_cached() + self.num_in_use(), self.capacity());
    }
}

#[cfg(test)]
mod tests;
