//! Where a prompt's blocks are cached: the shared tier (exactly, from kvstore events) and each
//! worker's device tier (approximately, from what the router sent it).

mod local;
mod shared;
mod subscriber;

use std::sync::{Arc, Mutex};

use lcserve_common::SequenceHash;

pub(crate) use local::DeviceIndex;
pub(crate) use shared::SharedIndex;
pub(crate) use subscriber::{SubscriberStats, follow};

use crate::lock;

/// Both indexes, shared by request handlers and the kvstore follower.
#[derive(Debug)]
pub(crate) struct PrefixIndex {
    pub shared: Arc<Mutex<SharedIndex>>,
    pub subscriber: Arc<SubscriberStats>,
    device: Mutex<DeviceIndex>,
}

/// How much of one prompt is cached where, in blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Overlap {
    pub shared: usize,
    /// Per worker, by registry index.
    pub device: Vec<usize>,
}

impl PrefixIndex {
    pub fn new(workers: usize, blocks_per_worker: usize) -> Self {
        PrefixIndex {
            shared: Arc::default(),
            subscriber: Arc::default(),
            device: Mutex::new(DeviceIndex::new(workers, blocks_per_worker)),
        }
    }

    /// Overlaps of `hashes` with the shared tier and with each of `workers` (registry indexes).
    pub fn overlap(&self, hashes: &[SequenceHash], workers: &[usize]) -> Overlap {
        let shared = lock(&self.shared).overlap(hashes);
        let device = lock(&self.device);
        Overlap { shared, device: workers.iter().map(|&worker| device.overlap(worker, hashes)).collect() }
    }

    /// Remembers that `worker` now holds the run `hashes`.
    pub fn record(&self, worker: usize, hashes: &[SequenceHash]) {
        lock(&self.device).record(worker, hashes);
    }
}
