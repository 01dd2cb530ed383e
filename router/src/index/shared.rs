//! The mirror of the kvstore's block set, fed by its numbered events.

use std::collections::HashSet;

use lcserve_common::SequenceHash;

/// One change of the kvstore's block set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IndexEvent {
    Stored(SequenceHash),
    Removed(SequenceHash),
    /// Every block is gone (a `Clear`, or the start of a snapshot).
    Cleared,
}

/// The set of blocks the shared tier holds, as far as events have told.
///
/// Invariant: after applying every event of a subscription in order, `blocks` equals the
/// server's set as of `last_sequence`. Events at or before `last_sequence` are not re-applied,
/// except snapshot events, which share one sequence number and start with `Cleared`.
#[derive(Debug, Default)]
pub(crate) struct SharedIndex {
    blocks: HashSet<SequenceHash>,
    last_sequence: Option<u64>,
    /// The server's epoch (a new one after a restart): sequence numbers of different epochs
    /// cannot be compared, so a change means "rebuild".
    epoch: Option<u64>,
}

impl SharedIndex {
    /// Applies one event numbered `sequence`.
    pub fn apply(&mut self, sequence: u64, event: IndexEvent) {
        match event {
            IndexEvent::Stored(hash) => {
                self.blocks.insert(hash);
            }
            IndexEvent::Removed(hash) => {
                self.blocks.remove(&hash);
            }
            IndexEvent::Cleared => self.blocks.clear(),
        }
        self.last_sequence = Some(sequence);
    }

    /// Notes the server's epoch; a different one than before drops the mirror (and the resume
    /// point), since its sequence numbers no longer mean anything.
    pub fn observe_epoch(&mut self, epoch: u64) {
        if self.epoch.is_some_and(|known| known != epoch) {
            self.blocks.clear();
            self.last_sequence = None;
        }
        self.epoch = Some(epoch);
    }

    /// Where a resumed subscription should start: `(from_sequence, epoch)`.
    pub fn resume_point(&self) -> (Option<u64>, Option<u64>) {
        (self.last_sequence, self.epoch)
    }

    /// How many leading blocks of `hashes` the shared tier holds (a run is useful only up to its
    /// first missing block). O(result + 1) lookups.
    pub fn overlap(&self, hashes: &[SequenceHash]) -> usize {
        hashes.iter().take_while(|hash| self.blocks.contains(hash)).count()
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn hash(i: u8) -> SequenceHash {
        SequenceHash([i; 16])
    }

    /// Random event streams against a plain set: membership and prefix overlap always agree.
    #[test]
    fn mirrors_a_random_event_stream() {
        for seed in 0..20 {
            let mut rng = StdRng::seed_from_u64(seed);
            let (mut index, mut model) = (SharedIndex::default(), HashSet::new());
            for sequence in 1..500u64 {
                let h = hash(rng.random_range(0..32));
                let event = match rng.random_range(0..20) {
                    0 => IndexEvent::Cleared,
                    1..=12 => IndexEvent::Stored(h),
                    _ => IndexEvent::Removed(h),
                };
                match event {
                    IndexEvent::Stored(h) => model.insert(h),
                    IndexEvent::Removed(h) => model.remove(&h),
                    IndexEvent::Cleared => {
                        model.clear();
                        true
                    }
                };
                index.apply(sequence, event);
                assert_eq!(index.len(), model.len(), "seed {seed}");
                let run: Vec<SequenceHash> = (0..8).map(|_| hash(rng.random_range(0..32))).collect();
                let expected = run.iter().take_while(|h| model.contains(h)).count();
                assert_eq!(index.overlap(&run), expected, "seed {seed}");
                assert_eq!(index.resume_point().0, Some(sequence));
            }
        }
    }

    #[test]
    fn a_new_epoch_starts_over() {
        let mut index = SharedIndex::default();
        index.observe_epoch(1);
        index.apply(5, IndexEvent::Stored(hash(1)));
        index.observe_epoch(1);
        assert_eq!(index.resume_point(), (Some(5), Some(1)));
        index.observe_epoch(2);
        assert_eq!(index.resume_point(), (None, Some(2)));
        assert_eq!(index.len(), 0);
    }
}
