//! An approximate index of what each worker holds in its own device tier.
//!
//! Workers publish no events for their paged pools, so the router remembers the block hashes of
//! the prompts it sent to each worker, and of the prompt + answer runs its decode workers
//! finished (a conversation's next turn starts with them), in a bounded LRU per worker. It over-estimates when a
//! worker evicted a block since, and under-estimates blocks another router put there; either way
//! the cost is one worse placement, never a wrong answer.

use std::collections::{BTreeMap, HashMap};

use lcserve_common::SequenceHash;

/// A set of hashes with least-recently-used eviction beyond `capacity`. Insert and lookup are
/// O(log n): a hash map to the last-use stamp, and an ordered map from stamp to hash.
#[derive(Debug)]
pub(crate) struct LruSet {
    capacity: usize,
    stamps: HashMap<SequenceHash, u64>,
    order: BTreeMap<u64, SequenceHash>,
    clock: u64,
}

impl LruSet {
    pub fn new(capacity: usize) -> Self {
        LruSet { capacity: capacity.max(1), stamps: HashMap::new(), order: BTreeMap::new(), clock: 0 }
    }

    /// Marks `hash` as just used, evicting the least recently used one when over capacity.
    pub fn touch(&mut self, hash: SequenceHash) {
        self.clock += 1;
        if let Some(old) = self.stamps.insert(hash, self.clock) {
            self.order.remove(&old);
        }
        self.order.insert(self.clock, hash);
        while self.stamps.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.stamps.remove(&oldest);
        }
    }

    pub fn contains(&self, hash: &SequenceHash) -> bool {
        self.stamps.contains_key(hash)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.stamps.len()
    }
}

/// One [`LruSet`] per worker, addressed by the worker's registry index.
#[derive(Debug)]
pub(crate) struct DeviceIndex {
    workers: Vec<LruSet>,
}

impl DeviceIndex {
    pub fn new(workers: usize, capacity: usize) -> Self {
        DeviceIndex { workers: (0..workers).map(|_| LruSet::new(capacity)).collect() }
    }

    /// Remembers that `worker` computed or loaded these blocks (a prompt's run, in order).
    /// The run is touched back to front, leaving its head the most recent, so under pressure a
    /// run loses its tail first — the part least likely to be shared.
    pub fn record(&mut self, worker: usize, hashes: &[SequenceHash]) {
        if let Some(set) = self.workers.get_mut(worker) {
            for hash in hashes.iter().rev() {
                set.touch(*hash);
            }
        }
    }

    /// Leading blocks of `hashes` that `worker` is believed to hold.
    pub fn overlap(&self, worker: usize, hashes: &[SequenceHash]) -> usize {
        self.workers.get(worker).map_or(0, |set| hashes.iter().take_while(|hash| set.contains(hash)).count())
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn hash(i: u16) -> SequenceHash {
        let mut bytes = [0u8; 16];
        bytes[..2].copy_from_slice(&i.to_le_bytes());
        SequenceHash(bytes)
    }

    /// Against a naive LRU (a Vec, most recent last): same members after every operation.
    #[test]
    fn matches_a_naive_lru() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let capacity = rng.random_range(1..16);
            let (mut lru, mut model) = (LruSet::new(capacity), Vec::<SequenceHash>::new());
            for _ in 0..400 {
                let h = hash(rng.random_range(0..24));
                lru.touch(h);
                model.retain(|x| *x != h);
                model.push(h);
                if model.len() > capacity {
                    model.remove(0);
                }
                assert_eq!(lru.len(), model.len(), "seed {seed}");
                for i in 0..24 {
                    assert_eq!(lru.contains(&hash(i)), model.contains(&hash(i)), "seed {seed} hash {i}");
                }
            }
        }
    }

    #[test]
    fn overlap_is_per_worker_and_prefix_only() {
        let mut index = DeviceIndex::new(2, 100);
        let run: Vec<SequenceHash> = (0..6).map(hash).collect();
        index.record(0, &run[..4]);
        assert_eq!(index.overlap(0, &run), 4);
        assert_eq!(index.overlap(1, &run), 0);
        assert_eq!(index.overlap(7, &run), 0, "unknown worker");
        let mut gap = run.clone();
        gap[1] = hash(99);
        assert_eq!(index.overlap(0, &gap), 1);
    }

    #[test]
    fn pressure_evicts_the_tail_of_a_run_first() {
        let mut index = DeviceIndex::new(1, 4);
        let run: Vec<SequenceHash> = (0..6).map(hash).collect();
        index.record(0, &run);
        assert_eq!(index.overlap(0, &run), 4, "the head survives");
    }
}
