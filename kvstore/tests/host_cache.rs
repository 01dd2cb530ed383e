//! The host tier's rules, one test each, then a model-based property test (every call compared
//! with a naive list-ordered model) and a concurrency test.

use bytes::Bytes;
use std::collections::HashSet;

use lcserve_common::SequenceHash;
use lcserve_kvstore::{BlockRemoved, HostCache, InsertOutcome, Inserted, PinGuard, Rejection, RemovalCause, Stats};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn h(key: u8) -> SequenceHash {
    SequenceHash([key; 16])
}

fn block(key: u8, len: usize) -> Bytes {
    vec![key; len].into()
}

fn stored(cache: &HostCache, key: u8, len: usize) {
    let inserted = cache.insert(h(key), block(key, len));
    assert_eq!(inserted, Inserted { outcome: InsertOutcome::Stored, evicted: vec![] });
}

fn evicted(key: u8, len: usize) -> BlockRemoved {
    BlockRemoved { hash: h(key), len, cause: RemovalCause::Evicted }
}

#[test]
fn get_hits_refresh_and_misses_count() {
    let cache = HostCache::new(100);
    stored(&cache, 1, 10);
    assert_eq!(cache.get(&h(1)).as_deref(), Some(&[1u8; 10][..]));
    assert_eq!(cache.get(&h(2)), None);
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.inserts, stats.blocks, stats.bytes), (1, 1, 1, 1, 10));
}

#[test]
fn eviction_takes_least_recently_used_first_and_reports_each() {
    let cache = HostCache::new(30);
    for key in 1..=3 {
        stored(&cache, key, 10);
    }
    assert!(cache.get(&h(1)).is_some(), "1 becomes most recent; 2 is now the oldest");
    let inserted = cache.insert(h(4), block(4, 15));
    assert_eq!(inserted.outcome, InsertOutcome::Stored);
    assert_eq!(inserted.evicted, vec![evicted(2, 10), evicted(3, 10)]);
    assert!(cache.contains(&h(1)) && cache.contains(&h(4)));
    let stats = cache.stats();
    assert_eq!((stats.bytes, stats.blocks, stats.evictions), (25, 2, 2));
}

#[test]
fn reinsert_keeps_one_copy_and_refreshes_recency() {
    let cache = HostCache::new(20);
    let first = block(1, 10);
    assert_eq!(cache.insert(h(1), first.clone()).outcome, InsertOutcome::Stored);
    stored(&cache, 2, 10);
    let again = cache.insert(h(1), block(1, 10));
    assert_eq!(again, Inserted { outcome: InsertOutcome::AlreadyPresent, evicted: vec![] });
    assert_eq!(cache.get(&h(1)).expect("present").as_ptr(), first.as_ptr(), "the stored copy is kept");
    // 1 was refreshed, so 2 goes first.
    assert_eq!(cache.insert(h(3), block(3, 10)).evicted, vec![evicted(2, 10)]);
    let stats = cache.stats();
    assert_eq!((stats.inserts, stats.duplicates, stats.bytes, stats.blocks, stats.evictions), (3, 1, 20, 2, 1));
}

#[test]
fn a_block_larger_than_the_capacity_is_not_stored_and_evicts_nothing() {
    let cache = HostCache::new(20);
    stored(&cache, 1, 10);
    let inserted = cache.insert(h(2), block(2, 21));
    let rejection = Rejection::LargerThanCapacity { len: 21, capacity: 20 };
    assert_eq!(inserted, Inserted { outcome: InsertOutcome::Rejected(rejection), evicted: vec![] });
    assert!(cache.contains(&h(1)) && !cache.contains(&h(2)));
    let stats = cache.stats();
    assert_eq!((stats.rejected_too_large, stats.rejected(), stats.inserts), (1, 1, 1));
}

#[test]
fn a_block_exactly_the_capacity_fits() {
    let cache = HostCache::new(20);
    stored(&cache, 1, 5);
    assert_eq!(cache.insert(h(2), block(2, 20)).evicted, vec![evicted(1, 5)]);
    assert_eq!(cache.stats().bytes, 20);
}

#[test]
fn pinned_blocks_are_never_evicted() {
    let cache = HostCache::new(30);
    stored(&cache, 1, 10);
    stored(&cache, 2, 10);
    stored(&cache, 3, 10);
    let guard = cache.pin(&h(1)).expect("stored");
    assert_eq!(guard.hash(), h(1));
    assert_eq!(&guard.bytes()[..], &[1u8; 10][..]);
    // 1 is the oldest by insertion but pinned (and refreshed); 2 and 3 go.
    assert_eq!(cache.insert(h(4), block(4, 20)).evicted, vec![evicted(2, 10), evicted(3, 10)]);
    let stats = cache.stats();
    assert_eq!((stats.pinned_blocks, stats.pinned_bytes, stats.hits), (1, 10, 1));
}

#[test]
fn when_pins_fill_the_cache_the_new_block_is_dropped_not_the_old_ones() {
    let cache = HostCache::new(30);
    stored(&cache, 1, 15);
    stored(&cache, 2, 10);
    let _pin = cache.pin(&h(1)).expect("stored");
    let inserted = cache.insert(h(3), block(3, 16));
    let rejection = Rejection::PinnedFull { len: 16, pinned_bytes: 15, capacity: 30 };
    assert_eq!(inserted, Inserted { outcome: InsertOutcome::Rejected(rejection), evicted: vec![] });
    assert!(cache.contains(&h(2)), "nothing is evicted for an insert that then fails");
    assert_eq!(cache.stats().rejected_pinned_full, 1);
    assert_eq!(cache.insert(h(3), block(3, 15)).evicted, vec![evicted(2, 10)]);
}

#[test]
fn dropping_the_last_guard_makes_the_block_evictable_again() {
    let cache = HostCache::new(20);
    stored(&cache, 1, 10);
    stored(&cache, 2, 10);
    let (a, b) = (cache.pin(&h(1)).expect("stored"), cache.pin(&h(1)).expect("stored"));
    assert!(cache.get(&h(2)).is_some(), "2 is now more recent than 1");
    drop(a);
    assert_eq!(cache.stats().pinned_blocks, 1, "one guard still holds the block");
    assert!(matches!(cache.insert(h(3), block(3, 20)).outcome, InsertOutcome::Rejected(_)));
    drop(b);
    assert_eq!(cache.stats().pinned_blocks, 0);
    // Back in the order at its last use, which is older than 2's.
    assert_eq!(cache.insert(h(3), block(3, 10)).evicted, vec![evicted(1, 10)]);
}

#[test]
fn probes_change_neither_recency_nor_stats() {
    let cache = HostCache::new(30);
    for key in 1..=3 {
        stored(&cache, key, 10);
    }
    assert!(cache.contains(&h(1)));
    assert_eq!(cache.longest_prefix(&[h(1), h(2)]), 2);
    let before = cache.stats();
    assert_eq!((before.hits, before.misses), (0, 0));
    assert_eq!(cache.insert(h(4), block(4, 10)).evicted, vec![evicted(1, 10)]);
}

#[test]
fn longest_prefix_stops_at_the_first_missing_hash() {
    let cache = HostCache::new(100);
    for key in [1, 2, 4] {
        stored(&cache, key, 10);
    }
    assert_eq!(cache.longest_prefix(&[h(1), h(2), h(3), h(4)]), 2);
    assert_eq!(cache.longest_prefix(&[h(3), h(4)]), 0);
    assert_eq!(cache.longest_prefix(&[]), 0);
}

#[test]
fn pin_prefix_pins_the_stored_prefix_at_once() {
    let cache = HostCache::new(100);
    for key in [1, 2, 4] {
        stored(&cache, key, 10);
    }
    let guards = cache.pin_prefix(&[h(1), h(2), h(3), h(4)]);
    assert_eq!(guards.iter().map(PinGuard::hash).collect::<Vec<_>>(), vec![h(1), h(2)]);
    let stats = cache.stats();
    assert_eq!((stats.pinned_blocks, stats.hits, stats.misses), (2, 2, 1));
    drop(guards);
    assert_eq!(cache.stats().pinned_blocks, 0);
}

#[test]
fn remove_and_clear_report_every_block() {
    let cache = HostCache::new(100);
    for key in 1..=3 {
        stored(&cache, key, 10);
    }
    let removed = BlockRemoved { hash: h(2), len: 10, cause: RemovalCause::Removed };
    assert_eq!(cache.remove(&h(2)), Some(removed));
    assert_eq!(cache.remove(&h(2)), None);
    let _pin = cache.pin(&h(3)).expect("stored");
    let mut cleared = cache.clear();
    cleared.sort_by_key(|r| r.hash);
    let expected: Vec<_> = [1, 3].map(|k| BlockRemoved { hash: h(k), len: 10, cause: RemovalCause::Cleared }).into();
    assert_eq!(cleared, expected);
    let stats = cache.stats();
    assert_eq!((stats.blocks, stats.bytes, stats.pinned_blocks, stats.removals, stats.inserts), (0, 0, 0, 3, 3));
}

#[test]
fn evict_takes_one_unpinned_block_and_counts_it_as_an_eviction() {
    let cache = HostCache::new(100);
    stored(&cache, 1, 10);
    stored(&cache, 2, 10);
    let pin = cache.pin(&h(2)).expect("stored");
    assert_eq!(cache.evict(&h(1)), Some(evicted(1, 10)));
    assert_eq!(cache.evict(&h(1)), None, "absent");
    assert_eq!(cache.evict(&h(2)), None, "pinned");
    drop(pin);
    assert_eq!(cache.evict(&h(2)), Some(evicted(2, 10)));
    let stats = cache.stats();
    assert_eq!((stats.blocks, stats.bytes, stats.evictions, stats.removals), (0, 0, 2, 0));
}

#[test]
fn a_stale_guard_keeps_its_bytes_and_never_unpins_a_new_copy() {
    let cache = HostCache::new(20);
    stored(&cache, 1, 10);
    let stale = cache.pin(&h(1)).expect("stored");
    assert!(cache.remove(&h(1)).is_some(), "removal is an invalidation, pinned or not");
    assert_eq!(&stale.bytes()[..], &[1u8; 10][..]);
    stored(&cache, 1, 10);
    let fresh = cache.pin(&h(1)).expect("stored");
    drop(stale);
    assert_eq!(cache.stats().pinned_blocks, 1, "the stale guard released nothing");
    drop(fresh);
    assert_eq!(cache.stats().pinned_blocks, 0);
}

#[test]
fn a_guard_may_outlive_its_cache() {
    let cache = HostCache::new(20);
    stored(&cache, 1, 10);
    let guard = cache.pin(&h(1)).expect("stored");
    drop(cache);
    assert_eq!(guard.bytes().len(), 10);
    drop(guard);
}

#[test]
fn clones_share_one_cache() {
    let cache = HostCache::new(20);
    let other = cache.clone();
    stored(&cache, 1, 10);
    assert!(other.contains(&h(1)));
    assert_eq!(other.capacity(), 20);
}

// ---------------------------------------------------------------------------------------------
// Model-based property test.

const KEYS: u8 = 10;
const CAPACITY: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, usize),
    Get(u8),
    Pin(u8),
    /// Drops the live guard at this index (modulo their count).
    Unpin(usize),
    Remove(u8),
    PinPrefix(u8),
    LongestPrefix(u8),
    Clear,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS;
    prop_oneof![
        8 => (key.clone(), 1..=30usize).prop_map(|(k, len)| Op::Insert(k, len)),
        1 => (key.clone(), 65..=70usize).prop_map(|(k, len)| Op::Insert(k, len)),
        5 => key.clone().prop_map(Op::Get),
        3 => key.clone().prop_map(Op::Pin),
        4 => any::<usize>().prop_map(Op::Unpin),
        1 => key.clone().prop_map(Op::Remove),
        1 => (0..=KEYS).prop_map(Op::PinPrefix),
        1 => (0..=KEYS).prop_map(Op::LongestPrefix),
        1 => Just(Op::Clear),
    ]
}

/// The naive model: a list in recency order (oldest first), scanned linearly.
struct Model {
    order: Vec<ModelEntry>,
    stats: Stats,
    next_id: u64,
}

struct ModelEntry {
    key: u8,
    len: usize,
    id: u64,
    pins: usize,
}

impl Model {
    fn find(&self, key: u8) -> Option<usize> {
        self.order.iter().position(|e| e.key == key)
    }

    /// Moves the entry to the most recent end and returns its new index.
    fn touch(&mut self, key: u8) -> Option<usize> {
        let pos = self.find(key)?;
        let entry = self.order.remove(pos);
        self.order.push(entry);
        Some(self.order.len() - 1)
    }

    fn bytes(&self, pinned_only: bool) -> usize {
        self.order.iter().filter(|e| !pinned_only || e.pins > 0).map(|e| e.len).sum()
    }

    fn insert(&mut self, key: u8, len: usize) -> Inserted {
        if self.touch(key).is_some() {
            self.stats.duplicates += 1;
            return Inserted { outcome: InsertOutcome::AlreadyPresent, evicted: vec![] };
        }
        let pinned_bytes = self.bytes(true);
        let rejection = if len > CAPACITY {
            self.stats.rejected_too_large += 1;
            Rejection::LargerThanCapacity { len, capacity: CAPACITY }
        } else if pinned_bytes + len > CAPACITY {
            self.stats.rejected_pinned_full += 1;
            Rejection::PinnedFull { len, pinned_bytes, capacity: CAPACITY }
        } else {
            let mut evicted = vec![];
            while self.bytes(false) + len > CAPACITY {
                let pos = self.order.iter().position(|e| e.pins == 0).expect("unpinned bytes suffice");
                let victim = self.order.remove(pos);
                evicted.push(BlockRemoved { hash: h(victim.key), len: victim.len, cause: RemovalCause::Evicted });
            }
            self.stats.evictions += evicted.len() as u64;
            self.stats.inserts += 1;
            self.next_id += 1;
            self.order.push(ModelEntry { key, len, id: self.next_id, pins: 0 });
            return Inserted { outcome: InsertOutcome::Stored, evicted };
        };
        Inserted { outcome: InsertOutcome::Rejected(rejection), evicted: vec![] }
    }

    /// Pins `key`, returning the pinned copy's id.
    fn pin(&mut self, key: u8) -> Option<u64> {
        let pos = self.touch(key)?;
        self.order[pos].pins += 1;
        Some(self.order[pos].id)
    }

    fn snapshot(&self) -> Stats {
        Stats {
            capacity: CAPACITY,
            bytes: self.bytes(false),
            blocks: self.order.len(),
            pinned_blocks: self.order.iter().filter(|e| e.pins > 0).count(),
            pinned_bytes: self.bytes(true),
            ..self.stats
        }
    }
}

fn run_ops(ops: &[Op]) -> Result<(), TestCaseError> {
    let cache = HostCache::new(CAPACITY);
    let mut model = Model { order: vec![], stats: Stats { capacity: CAPACITY, ..Stats::default() }, next_id: 0 };
    // Live guards with the model's (key, id) of the copy each one pins.
    let mut guards: Vec<(PinGuard, u8, u64)> = vec![];
    let mut reported = 0u64;
    let prefix = |n: u8| (0..n).map(h).collect::<Vec<_>>();
    for op in ops {
        match *op {
            Op::Insert(key, len) => {
                let got = cache.insert(h(key), block(key, len));
                reported += got.evicted.len() as u64;
                prop_assert_eq!(got, model.insert(key, len), "{:?}", op);
            }
            Op::Get(key) => {
                let want = model.touch(key).map(|pos| model.order[pos].len);
                match want {
                    Some(_) => model.stats.hits += 1,
                    None => model.stats.misses += 1,
                }
                let (got, want) = (cache.get(&h(key)), want.map(|len| vec![key; len]));
                prop_assert_eq!(got.as_deref(), want.as_deref(), "{:?}", op);
            }
            Op::Pin(key) => {
                let id = model.pin(key);
                match id {
                    Some(_) => model.stats.hits += 1,
                    None => model.stats.misses += 1,
                }
                let guard = cache.pin(&h(key));
                prop_assert_eq!(guard.is_some(), id.is_some(), "{:?}", op);
                if let (Some(guard), Some(id)) = (guard, id) {
                    guards.push((guard, key, id));
                }
            }
            Op::Unpin(index) if !guards.is_empty() => {
                let (guard, key, id) = guards.swap_remove(index % guards.len());
                drop(guard);
                if let Some(entry) = model.order.iter_mut().find(|e| e.key == key && e.id == id) {
                    entry.pins -= 1;
                }
            }
            Op::Unpin(_) => {}
            Op::Remove(key) => {
                let want = model.find(key).map(|pos| model.order.remove(pos)).map(|e| BlockRemoved {
                    hash: h(e.key),
                    len: e.len,
                    cause: RemovalCause::Removed,
                });
                model.stats.removals += u64::from(want.is_some());
                let got = cache.remove(&h(key));
                reported += u64::from(got.is_some());
                prop_assert_eq!(got, want);
            }
            Op::PinPrefix(n) => {
                let ids: Vec<u64> = (0..n).map_while(|key| model.pin(key)).collect();
                model.stats.hits += ids.len() as u64;
                model.stats.misses += u64::from(ids.len() < usize::from(n));
                let got = cache.pin_prefix(&prefix(n));
                prop_assert_eq!(got.len(), ids.len());
                for ((guard, key), id) in got.into_iter().zip(0..).zip(ids) {
                    prop_assert_eq!(guard.hash(), h(key));
                    guards.push((guard, key, id));
                }
            }
            Op::LongestPrefix(n) => {
                let want = (0..n).take_while(|key| model.find(*key).is_some()).count();
                prop_assert_eq!(cache.longest_prefix(&prefix(n)), want);
            }
            Op::Clear => {
                let want: HashSet<BlockRemoved> = model
                    .order
                    .drain(..)
                    .map(|e| BlockRemoved { hash: h(e.key), len: e.len, cause: RemovalCause::Cleared })
                    .collect();
                model.stats.removals += want.len() as u64;
                let got = cache.clear();
                reported += got.len() as u64;
                prop_assert_eq!(got.len(), want.len(), "each block reported once");
                prop_assert_eq!(got.into_iter().collect::<HashSet<_>>(), want);
            }
        }
        let stats = cache.stats();
        prop_assert_eq!(stats, model.snapshot(), "after {:?}", op);
        prop_assert!(stats.bytes <= stats.capacity);
        prop_assert_eq!(stats.blocks as u64, stats.inserts - stats.evictions - stats.removals);
        prop_assert_eq!(reported, stats.evictions + stats.removals, "every removal reported exactly once");
        for key in 0..KEYS {
            prop_assert_eq!(cache.contains(&h(key)), model.find(key).is_some());
        }
    }
    drop(guards);
    prop_assert_eq!(cache.stats().pinned_blocks, 0, "every guard released its pin");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn host_cache_matches_the_model(ops in prop::collection::vec(op(), 1..400)) {
        run_ops(&ops)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Concurrency.

/// Every key has one length, so the stored bytes can be recomputed from `contains` alone.
fn key_len(key: u8) -> usize {
    16 + usize::from(key) * 7 % 90
}

#[test]
fn concurrent_writers_readers_and_pinners_leave_consistent_stats() {
    const THREADS: u64 = 4;
    const OPS: usize = 20_000;
    let cache = HostCache::new(2_000);
    let handles: Vec<_> = (0..THREADS)
        .map(|seed| {
            let cache = cache.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(seed);
                let (mut lookups, mut stored, mut removed) = (0u64, [0i64; 64], [0i64; 64]);
                let mut guards = vec![];
                for _ in 0..OPS {
                    let key = rng.random_range(0..64u8);
                    match rng.random_range(0..10) {
                        0..=3 => {
                            let inserted = cache.insert(h(key), block(key, key_len(key)));
                            stored[usize::from(key)] += i64::from(inserted.outcome == InsertOutcome::Stored);
                            for r in inserted.evicted {
                                removed[usize::from(r.hash.0[0])] += 1;
                            }
                        }
                        4..=6 => {
                            lookups += 1;
                            if let Some(bytes) = cache.get(&h(key)) {
                                assert_eq!(bytes.len(), key_len(key));
                            }
                        }
                        7 => {
                            lookups += 1;
                            guards.extend(cache.pin(&h(key)));
                        }
                        8 if !guards.is_empty() => drop(guards.swap_remove(rng.random_range(0..guards.len()))),
                        8 => {}
                        _ => {
                            if let Some(r) = cache.remove(&h(key)) {
                                removed[usize::from(r.hash.0[0])] += 1;
                            }
                        }
                    }
                    if guards.len() > 8 {
                        guards.remove(0);
                    }
                }
                (lookups, stored, removed)
            })
        })
        .collect();
    let (mut lookups, mut net) = (0, [0i64; 64]);
    for handle in handles {
        let (l, stored, removed) = handle.join().expect("worker thread");
        lookups += l;
        for key in 0..64 {
            net[key] += stored[key] - removed[key];
        }
    }
    let stats = cache.stats();
    assert_eq!(stats.hits + stats.misses, lookups);
    assert_eq!(stats.pinned_blocks, 0, "all guards dropped");
    assert!(stats.bytes <= stats.capacity);
    assert_eq!(stats.blocks as u64, stats.inserts - stats.evictions - stats.removals);
    let mut bytes = 0;
    for key in 0..64u8 {
        let present = cache.contains(&h(key));
        assert_eq!(net[usize::from(key)], i64::from(present), "key {key}: stores minus removals");
        bytes += if present { key_len(key) } else { 0 };
    }
    assert_eq!((stats.bytes, stats.blocks), (bytes, net.iter().sum::<i64>() as usize));
    assert!(stats.evictions > 0 && stats.hits > 0 && stats.removals > 0, "the test exercised eviction: {stats:?}");
}
