//! Unit tests and a model-based randomized test; unwrapping is how a test says "this must
//! succeed".
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

fn h(n: u8) -> SequenceHash {
    SequenceHash([n; 16])
}

fn pool(n: usize) -> BlockAllocator {
    BlockAllocator::new(n).unwrap()
}

#[test]
fn new_pool_is_all_free() {
    let a = pool(4);
    assert_eq!((a.capacity(), a.num_free(), a.num_cached(), a.num_in_use()), (4, 4, 0, 0));
    assert_eq!(a.refcount(BlockId(3)), Some(0));
    assert_eq!(a.refcount(BlockId(4)), None);
    assert_eq!(a.evictions(), 0);
    a.check_invariants();
}

#[test]
fn allocate_hands_out_distinct_blocks_with_refcount_one() {
    let mut a = pool(3);
    let ids: Vec<_> = (0..3).map(|_| a.allocate().unwrap()).collect();
    assert_eq!(ids, vec![BlockId(0), BlockId(1), BlockId(2)]);
    for id in &ids {
        assert_eq!(a.refcount(*id), Some(1));
    }
    assert_eq!(a.num_in_use(), 3);
    a.check_invariants();
}

#[test]
fn exhausted_pool_reports_numbers() {
    let mut a = pool(2);
    a.allocate_many(2).unwrap();
    let err = a.allocate().unwrap_err();
    assert_eq!(err, PoolExhausted { requested: 1, available: 0, in_use: 2, capacity: 2 });
    assert!(err.to_string().contains("2 of 2 blocks in use"), "{err}");
}

#[test]
fn empty_pool_is_always_exhausted() {
    let mut a = pool(0);
    assert!(a.allocate().is_err());
    assert_eq!(a.allocate_many(0).unwrap(), vec![]);
}

#[test]
fn allocate_many_is_all_or_nothing() {
    let mut a = pool(4);
    let first = a.allocate_many(3).unwrap();
    assert_eq!(first.len(), 3);
    let err = a.allocate_many(2).unwrap_err();
    assert_eq!((err.requested, err.available), (2, 1));
    assert_eq!((a.num_free(), a.num_in_use()), (1, 3));
    a.check_invariants();
}

#[test]
fn allocate_many_counts_evictable_blocks() {
    let mut a = pool(2);
    let ids = a.allocate_many(2).unwrap();
    a.register(ids[0], h(1)).unwrap();
    a.release(ids[0]).unwrap();
    assert_eq!(a.num_cached(), 1);
    assert!(a.allocate_many(2).is_err());
    assert_eq!(a.num_cached(), 1, "a failed allocate_many must not evict");
    assert_eq!(a.allocate_many(1).unwrap(), vec![ids[0]]);
    assert_eq!(a.evictions(), 1);
}

#[test]
fn release_of_unregistered_block_frees_it() {
    let mut a = pool(2);
    let id = a.allocate().unwrap();
    a.acquire(id).unwrap();
    assert_eq!(a.refcount(id), Some(2));
    a.release(id).unwrap();
    assert_eq!((a.refcount(id), a.num_in_use()), (Some(1), 1));
    a.release(id).unwrap();
    assert_eq!((a.refcount(id), a.num_free(), a.num_cached()), (Some(0), 2, 0));
    a.check_invariants();
}

#[test]
fn release_of_registered_block_caches_it() {
    let mut a = pool(2);
    let id = a.allocate().unwrap();
    assert_eq!(a.register(id, h(7)).unwrap(), id);
    a.release(id).unwrap();
    assert_eq!((a.num_free(), a.num_cached(), a.num_in_use()), (1, 1, 0));
    assert_eq!(a.hash_of(id), Some(h(7)));
    a.check_invariants();
}

#[test]
fn double_release_is_an_error_and_changes_nothing() {
    let mut a = pool(2);
    let id = a.allocate().unwrap();
    a.release(id).unwrap();
    let err = a.release(id).unwrap_err();
    assert_eq!(err, BlockAllocatorError::NotInUse { op: "release", block: id });
    assert_eq!(a.num_free(), 2);
    // Also for a cached block.
    let id = a.allocate().unwrap();
    a.register(id, h(1)).unwrap();
    a.release(id).unwrap();
    assert!(a.release(id).is_err());
    assert_eq!(a.num_cached(), 1);
    a.check_invariants();
}

#[test]
fn out_of_range_ids_are_errors() {
    let mut a = pool(1);
    let bad = BlockId(1);
    for err in [a.acquire(bad).unwrap_err(), a.release(bad).unwrap_err()] {
        assert!(matches!(err, BlockAllocatorError::UnknownBlock { capacity: 1, .. }), "{err}");
    }
    assert!(a.register(bad, h(0)).is_err());
    assert_eq!(a.hash_of(bad), None);
    a.check_invariants();
}

#[test]
fn acquire_of_free_block_is_an_error() {
    let mut a = pool(1);
    assert_eq!(a.acquire(BlockId(0)), Err(BlockAllocatorError::AcquireFree { block: BlockId(0) }));
    a.check_invariants();
}

#[test]
fn acquire_revives_a_cached_block() {
    let mut a = pool(1);
    let id = a.allocate().unwrap();
    a.register(id, h(1)).unwrap();
    a.release(id).unwrap();
    a.acquire(id).unwrap();
    assert_eq!((a.num_cached(), a.num_in_use(), a.refcount(id)), (0, 1, Some(1)));
    assert_eq!(a.hash_of(id), Some(h(1)));
    a.check_invariants();
}

#[test]
fn eviction_takes_least_recently_released_block_and_drops_its_hash() {
    let mut a = pool(3);
    let ids = a.allocate_many(3).unwrap();
    for (i, id) in ids.iter().enumerate() {
        a.register(*id, h(i as u8)).unwrap();
    }
    // Release order 1, 0, 2: block 1 is the LRU.
    for i in [1, 0, 2] {
        a.release(ids[i]).unwrap();
    }
    let got = a.allocate().unwrap();
    assert_eq!(got, ids[1]);
    assert_eq!((a.hash_of(got), a.refcount(got), a.evictions()), (None, Some(1), 1));
    assert_eq!(a.peek_prefix_len(&[h(1)]), 0);
    // Reviving block 0 moves it out of the LRU; the next victim is block 2.
    a.acquire(ids[0]).unwrap();
    assert_eq!(a.allocate().unwrap(), ids[2]);
    a.check_invariants();
}

#[test]
fn free_blocks_are_used_before_evicting() {
    let mut a = pool(2);
    let id = a.allocate().unwrap();
    a.register(id, h(1)).unwrap();
    a.release(id).unwrap();
    let other = a.allocate().unwrap();
    assert_ne!(other, id);
    assert_eq!((a.evictions(), a.hash_of(id)), (0, Some(h(1))));
}

#[test]
fn register_duplicate_hash_returns_canonical_block() {
    let mut a = pool(3);
    let first = a.allocate().unwrap();
    let dup = a.allocate().unwrap();
    assert_eq!(a.register(first, h(9)).unwrap(), first);
    assert_eq!(a.register(dup, h(9)).unwrap(), first);
    assert_eq!(a.hash_of(dup), None, "the duplicate must not be registered");
    // Caller protocol: switch to the canonical block, release the duplicate.
    a.acquire(first).unwrap();
    a.release(dup).unwrap();
    assert_eq!((a.refcount(first), a.num_free()), (Some(2), 2));
    a.check_invariants();
}

#[test]
fn register_duplicate_of_cached_block_returns_it() {
    let mut a = pool(2);
    let first = a.allocate().unwrap();
    a.register(first, h(3)).unwrap();
    a.release(first).unwrap();
    let dup = a.allocate().unwrap();
    assert_eq!(a.register(dup, h(3)).unwrap(), first);
    a.acquire(first).unwrap();
    a.release(dup).unwrap();
    assert_eq!((a.num_cached(), a.refcount(first)), (0, Some(1)));
    a.check_invariants();
}

#[test]
fn register_is_idempotent_and_rejects_a_second_hash() {
    let mut a = pool(1);
    let id = a.allocate().unwrap();
    a.register(id, h(1)).unwrap();
    assert_eq!(a.register(id, h(1)).unwrap(), id);
    let err = a.register(id, h(2)).unwrap_err();
    assert_eq!(err, BlockAllocatorError::AlreadyRegistered { block: id, existing: h(1), requested: h(2) });
    assert_eq!(a.peek_prefix_len(&[h(2)]), 0);
    a.check_invariants();
}

#[test]
fn register_requires_an_in_use_block() {
    let mut a = pool(1);
    assert_eq!(a.register(BlockId(0), h(1)), Err(BlockAllocatorError::NotInUse { op: "register", block: BlockId(0) }));
    a.check_invariants();
}

#[test]
fn lookup_prefix_acquires_the_longest_registered_prefix() {
    let mut a = pool(4);
    let ids = a.allocate_many(3).unwrap();
    for (i, id) in ids.iter().enumerate() {
        a.register(*id, h(i as u8)).unwrap();
    }
    a.release(ids[0]).unwrap(); // cached
    // h(1) is missing from the query's second slot: the chain stops there.
    assert_eq!(a.peek_prefix_len(&[h(0), h(5), h(2)]), 1);
    assert_eq!(a.peek_prefix_len(&[h(0), h(1), h(2), h(3)]), 3);
    assert_eq!(a.peek_prefix_len(&[]), 0);
    assert_eq!(a.num_cached(), 1, "peek must not acquire");

    let got = a.lookup_prefix(&[h(0), h(1), h(2), h(3)]);
    assert_eq!(got, ids);
    assert_eq!(a.num_cached(), 0);
    assert_eq!(a.refcount(ids[0]), Some(1));
    assert_eq!(a.refcount(ids[1]), Some(2));
    assert!(a.lookup_prefix(&[h(4), h(0)]).is_empty());
    a.check_invariants();
}

#[test]
fn capacity_above_id_range_is_rejected() {
    let err = BlockAllocator::new(u32::MAX as usize + 2).unwrap_err();
    assert!(matches!(err, BlockAllocatorError::CapacityTooLarge { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Model-based randomized test.

/// The reference model: per-block refcount and hash, and an explicit LRU list.
#[derive(Debug, Clone)]
struct Model {
    refs: Vec<u32>,
    hash: Vec<Option<SequenceHash>>,
    /// Cached blocks, least recently released first.
    lru: Vec<BlockId>,
    evictions: u64,
}

impl Model {
    fn new(n: usize) -> Self {
        Self { refs: vec![0; n], hash: vec![None; n], lru: Vec::new(), evictions: 0 }
    }

    fn is_cached(&self, id: BlockId) -> bool {
        self.lru.contains(&id)
    }

    fn is_free(&self, id: BlockId) -> bool {
        self.refs[id.0 as usize] == 0 && !self.is_cached(id)
    }

    fn block_of(&self, hash: SequenceHash) -> Option<BlockId> {
        let i = self.hash.iter().position(|h| *h == Some(hash))?;
        Some(BlockId(i as u32))
    }

    fn num_free(&self) -> usize {
        (0..self.refs.len()).filter(|&i| self.is_free(BlockId(i as u32))).count()
    }

    /// Mirrors an allocation the real pool made, checking it picked a legal block.
    fn allocated(&mut self, id: BlockId) {
        let i = id.0 as usize;
        if self.num_free() > 0 {
            assert!(self.is_free(id), "allocated {id:?} which is not free");
        } else {
            assert_eq!(self.lru.first(), Some(&id), "eviction must pick the LRU cached block");
            self.lru.remove(0);
            self.hash[i] = None;
            self.evictions += 1;
        }
        self.refs[i] = 1;
    }

    fn acquire(&mut self, id: BlockId) {
        self.lru.retain(|b| *b != id);
        self.refs[id.0 as usize] += 1;
    }

    fn release(&mut self, id: BlockId) {
        let i = id.0 as usize;
        self.refs[i] -= 1;
        if self.refs[i] == 0 && self.hash[i].is_some() {
            self.lru.push(id);
        }
    }

    fn lookup(&self, hashes: &[SequenceHash]) -> Vec<BlockId> {
        hashes.iter().map_while(|h| self.block_of(*h)).collect()
    }
}

#[derive(Debug, Clone)]
enum Op {
    Allocate,
    AllocateMany(usize),
    Acquire(usize),
    Release(usize),
    /// Register handle `.0` under pool hash `.1`; `.2`: follow the switch-to-canonical protocol.
    Register(usize, u8, bool),
    Lookup(Vec<u8>),
    /// Release a block that has refcount 0 (expected to fail without side effects).
    BadRelease(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Allocate),
        1 => (0usize..4).prop_map(Op::AllocateMany),
        2 => any::<usize>().prop_map(Op::Acquire),
        5 => any::<usize>().prop_map(Op::Release),
        4 => (any::<usize>(), 0u8..12, any::<bool>()).prop_map(|(i, h, p)| Op::Register(i, h, p)),
        3 => prop::collection::vec(0u8..12, 0..5).prop_map(Op::Lookup),
        1 => any::<u32>().prop_map(Op::BadRelease),
    ]
}

fn check_against_model(a: &BlockAllocator, m: &Model) {
    a.check_invariants();
    let cap = m.refs.len();
    let in_use = m.refs.iter().filter(|r| **r > 0).count();
    assert_eq!(a.num_in_use(), in_use);
    assert_eq!(a.num_cached(), m.lru.len());
    assert_eq!(a.num_free(), cap - in_use - m.lru.len());
    assert_eq!(a.evictions(), m.evictions);
    for i in 0..cap {
        let id = BlockId(i as u32);
        assert_eq!(a.refcount(id), Some(m.refs[i]), "refcount of {id:?}");
        assert_eq!(a.hash_of(id), m.hash[i], "hash of {id:?}");
    }
    for n in 0..12 {
        let expect = usize::from(m.block_of(h(n)).is_some());
        assert_eq!(a.peek_prefix_len(&[h(n)]), expect, "registration of h({n})");
    }
    // The allocator's LRU order matches the model's.
    let order: Vec<BlockId> = a.lru.values().copied().collect();
    assert_eq!(order, m.lru);
}

fn run_ops(cap: usize, ops: &[Op]) {
    let mut a = pool(cap);
    let mut m = Model::new(cap);
    // Every reference the "engine" holds; one entry per refcount unit.
    let mut held: Vec<BlockId> = Vec::new();
    for op in ops {
        match op {
            Op::Allocate => match a.allocate() {
                Ok(id) => {
                    m.allocated(id);
                    held.push(id);
                }
                Err(e) => {
                    assert_eq!(m.num_free() + m.lru.len(), 0, "spurious {e}");
                    assert_eq!(e.in_use, cap);
                }
            },
            Op::AllocateMany(n) => match a.allocate_many(*n) {
                Ok(ids) => {
                    assert_eq!(ids.len(), *n);
                    for id in ids {
                        m.allocated(id);
                        held.push(id);
                    }
                }
                Err(e) => assert!(m.num_free() + m.lru.len() < *n, "spurious {e}"),
            },
            Op::Acquire(i) if !held.is_empty() => {
                let id = held[i % held.len()];
                a.acquire(id).unwrap();
                m.acquire(id);
                held.push(id);
            }
            Op::Release(i) if !held.is_empty() => {
                let id = held.swap_remove(i % held.len());
                a.release(id).unwrap();
                m.release(id);
            }
            Op::Register(i, hn, protocol) if !held.is_empty() => {
                let k = i % held.len();
                let id = held[k];
                let hash = h(*hn);
                let got = a.register(id, hash);
                match (m.hash[id.0 as usize], m.block_of(hash)) {
                    (Some(existing), _) if existing == hash => assert_eq!(got, Ok(id)),
                    (Some(existing), _) => assert_eq!(
                        got,
                        Err(BlockAllocatorError::AlreadyRegistered { block: id, existing, requested: hash })
                    ),
                    (None, Some(canonical)) => {
                        assert_eq!(got, Ok(canonical));
                        if *protocol {
                            a.acquire(canonical).unwrap();
                            m.acquire(canonical);
                            a.release(id).unwrap();
                            m.release(id);
                            held[k] = canonical;
                        }
                    }
                    (None, None) => {
                        assert_eq!(got, Ok(id));
                        m.hash[id.0 as usize] = Some(hash);
                    }
                }
            }
            Op::Lookup(chain) => {
                let hashes: Vec<_> = chain.iter().map(|n| h(*n)).collect();
                let expect = m.lookup(&hashes);
                assert_eq!(a.peek_prefix_len(&hashes), expect.len());
                let got = a.lookup_prefix(&hashes);
                assert_eq!(got, expect, "lookup of {chain:?}");
                for id in got {
                    m.acquire(id);
                    held.push(id);
                }
            }
            Op::BadRelease(raw) => {
                let id = BlockId(raw % (cap as u32 + 1));
                if a.refcount(id).unwrap_or(0) == 0 {
                    assert!(a.release(id).is_err());
                }
            }
            Op::Acquire(_) | Op::Release(_) | Op::Register(..) => {}
        }
        check_against_model(&a, &m);
    }
    // Releasing everything leaks nothing: every block is free or cached.
    for id in held.drain(..) {
        a.release(id).unwrap();
        m.release(id);
    }
    check_against_model(&a, &m);
    assert_eq!(a.num_in_use(), 0);
    assert_eq!(a.num_free() + a.num_cached(), cap);
    // And the whole pool can still be allocated.
    assert_eq!(a.allocate_many(cap).unwrap().len(), cap);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_the_model(
        cap in 1usize..9,
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run_ops(cap, &ops);
    }
}
