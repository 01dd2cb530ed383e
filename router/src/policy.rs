//! Worker choice: pure functions of what the registry and the prefix index report.
//!
//! **kv-aware cost** of sending a prompt of `P` tokens to a worker:
//!
//! ```text
//! cost = P − DEVICE_CREDIT·(device-cached tokens) − SHARED_CREDIT·(further shared-tier tokens)
//!        + queue_weight · (queued prefill tokens)
//! ```
//!
//! Blocks in the worker's own pool are free to reuse ([`DEVICE_CREDIT`] = 1). Blocks only in the
//! shared tier must still cross the network and be decompressed, which costs roughly a tenth of
//! recomputing them at long context ([`SHARED_CREDIT`] = 0.9); since every worker can reach the
//! shared tier, its credit only matters relative to device hits. The queue term turns a worker's
//! backlog into the same unit (tokens of prefill to wait for). Lowest cost wins; ties go to the
//! worker with fewer running sequences, then to the next one in round-robin order, so a burst of
//! identical requests spreads instead of piling onto the first worker.

use crate::config::Policy;

/// Credit for a prompt token whose KV is in the worker's own device tier.
pub const DEVICE_CREDIT: f64 = 1.0;
/// Credit for a prompt token whose KV is (only) in the shared tier.
pub const SHARED_CREDIT: f64 = 0.9;

/// What a policy knows of one healthy worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Candidate {
    /// Running + waiting sequences.
    pub sequences: u64,
    /// Prompt tokens admitted but not yet computed.
    pub queued_tokens: u64,
    /// Leading prompt blocks believed to be in this worker's device tier.
    pub device_blocks: usize,
}

/// The request being placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub prompt_tokens: usize,
    pub block_size: usize,
    /// Leading prompt blocks in the shared tier.
    pub shared_blocks: usize,
}

/// Kv-aware cost of `candidate` for `shape` (see the module docs).
pub(crate) fn kv_cost(shape: &Shape, candidate: &Candidate, queue_weight: f64) -> f64 {
    let prompt = shape.prompt_tokens;
    let device = (candidate.device_blocks * shape.block_size).min(prompt);
    let shared = (shape.shared_blocks * shape.block_size).min(prompt).saturating_sub(device);
    let uncached = prompt as f64 - DEVICE_CREDIT * device as f64 - SHARED_CREDIT * shared as f64;
    uncached + queue_weight * candidate.queued_tokens as f64
}

/// The index in `candidates` of the worker to use; `None` when there are none. `rotation`
/// (a counter advanced per request) picks the round-robin worker and breaks ties.
pub(crate) fn choose(
    policy: Policy,
    queue_weight: f64,
    shape: &Shape,
    candidates: &[Candidate],
    rotation: usize,
) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    let order = (0..n).map(|i| (rotation + i) % n);
    let key = |c: &Candidate| -> (f64, f64) {
        match policy {
            Policy::RoundRobin => (0.0, 0.0),
            Policy::LeastLoaded => (c.sequences as f64, c.queued_tokens as f64),
            Policy::KvAware => (kv_cost(shape, c, queue_weight), c.sequences as f64),
        }
    };
    let mut best: Option<(usize, (f64, f64))> = None;
    for i in order {
        let k = key(&candidates[i]);
        if best.is_none_or(|(_, b)| k.0 < b.0 || (k.0 == b.0 && k.1 < b.1)) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const SHAPE: Shape = Shape { prompt_tokens: 1000, block_size: 100, shared_blocks: 0 };

    fn idle(device_blocks: usize) -> Candidate {
        Candidate { device_blocks, ..Candidate::default() }
    }

    #[test]
    fn round_robin_cycles() {
        let c = vec![idle(0); 3];
        let picks: Vec<_> = (0..6).map(|r| choose(Policy::RoundRobin, 1.0, &SHAPE, &c, r)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
        assert_eq!(choose(Policy::KvAware, 1.0, &SHAPE, &[], 0), None);
    }

    #[test]
    fn least_loaded_prefers_fewer_sequences_then_fewer_queued_tokens() {
        let c = vec![
            Candidate { sequences: 3, ..idle(9) },
            Candidate { sequences: 1, queued_tokens: 500, ..idle(0) },
            Candidate { sequences: 1, queued_tokens: 100, ..idle(0) },
        ];
        assert_eq!(choose(Policy::LeastLoaded, 1.0, &SHAPE, &c, 0), Some(2));
    }

    #[test]
    fn kv_aware_follows_the_cache_until_the_queue_outweighs_it() {
        let c = vec![idle(0), idle(8), idle(4)];
        assert_eq!(choose(Policy::KvAware, 1.0, &SHAPE, &c, 0), Some(1));
        // 800 cached tokens are worth less than 900 queued ones.
        let busy = vec![idle(0), Candidate { queued_tokens: 900, ..idle(8) }];
        assert_eq!(choose(Policy::KvAware, 1.0, &SHAPE, &busy, 0), Some(0));
        // ...unless queued work is weighted down.
        assert_eq!(choose(Policy::KvAware, 0.5, &SHAPE, &busy, 0), Some(1));
    }

    #[test]
    fn shared_tier_credit_is_below_device_credit() {
        let shape = Shape { shared_blocks: 10, ..SHAPE };
        assert!((kv_cost(&shape, &idle(0), 1.0) - 100.0).abs() < 1e-9, "1000 - 0.9 * 1000");
        assert_eq!(kv_cost(&shape, &idle(10), 1.0), 0.0);
        assert_eq!(choose(Policy::KvAware, 1.0, &shape, &[idle(0), idle(3)], 0), Some(1));
    }

    /// Properties over random fleets: the choice is a valid index; kv-aware never picks a
    /// worker whose cost is beaten by another; with all else equal, ties rotate.
    #[test]
    fn random_fleets() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..2000 {
            let n = rng.random_range(1..8);
            let shape = Shape {
                prompt_tokens: rng.random_range(1..5000),
                block_size: 64,
                shared_blocks: rng.random_range(0..80),
            };
            let c: Vec<Candidate> = (0..n)
                .map(|_| Candidate {
                    sequences: rng.random_range(0..10),
                    queued_tokens: rng.random_range(0..4000),
                    device_blocks: rng.random_range(0..80),
                })
                .collect();
            let weight = rng.random_range(0.0..2.0);
            let rotation = rng.random_range(0..100);
            for policy in [Policy::RoundRobin, Policy::LeastLoaded, Policy::KvAware] {
                let pick = choose(policy, weight, &shape, &c, rotation).expect("non-empty");
                assert!(pick < n);
            }
            let pick = choose(Policy::KvAware, weight, &shape, &c, rotation).expect("non-empty");
            let best = c.iter().map(|x| kv_cost(&shape, x, weight)).fold(f64::INFINITY, f64::min);
            assert_eq!(kv_cost(&shape, &c[pick], weight), best);
        }
        let same = vec![idle(2); 4];
        let picks: Vec<_> = (0..4).map(|r| choose(Policy::KvAware, 1.0, &SHAPE, &same, r)).collect();
        assert_eq!(picks, [0, 1, 2, 3].map(Some));
    }
}
