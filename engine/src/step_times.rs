//! [`StepTimes`]: how long the engine's steps take, as a fixed-bucket histogram of atomics the
//! engine thread writes and anyone reads without asking the engine (a metrics scrape must not
//! queue behind a long prefill step).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds: 0.5 ms doubling to ~16 s (a decode step of a small
/// model up to a long-context prefill chunk); slower steps land in the implicit `+Inf` bucket.
const STEP_BUCKETS_SECONDS: [f64; 16] = {
    let mut bounds = [0.0; 16];
    let mut i = 0;
    let mut bound = 0.0005;
    while i < bounds.len() {
        bounds[i] = bound;
        bound *= 2.0;
        i += 1;
    }
    bounds
};

/// Step durations since the engine started. Written by the engine thread only.
#[derive(Debug, Default)]
pub(crate) struct StepTimes {
    /// Steps per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; STEP_BUCKETS_SECONDS.len() + 1],
    total_nanos: AtomicU64,
}

/// A read of [`StepTimes`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimesSnapshot {
    /// `(upper bound in seconds, steps in this bucket)`, not cumulative; the last bound is
    /// `f64::INFINITY`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl StepTimes {
    pub fn record(&self, step: Duration) {
        let seconds = step.as_secs_f64();
        let bucket =
            STEP_BUCKETS_SECONDS.iter().position(|&bound| seconds <= bound).unwrap_or(STEP_BUCKETS_SECONDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
        self.total_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StepTimesSnapshot {
        let bounds = STEP_BUCKETS_SECONDS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> =
            bounds.zip(&self.buckets).map(|(bound, count)| (bound, count.load(Ordering::Relaxed))).collect();
        StepTimesSnapshot {
            count: buckets.iter().map(|(_, count)| count).sum(),
            sum_seconds: self.total_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            buckets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_land_in_the_first_bucket_that_holds_them() {
        let times = StepTimes::default();
        times.record(Duration::from_micros(100));
        times.record(Duration::from_millis(3));
        times.record(Duration::from_secs(60));
        let snapshot = times.snapshot();
        assert_eq!(snapshot.count, 3);
        assert!((snapshot.sum_seconds - 60.0031).abs() < 1e-9);
        let nonzero: Vec<(f64, u64)> = snapshot.buckets.iter().copied().filter(|(_, n)| *n > 0).collect();
        assert_eq!(nonzero, [(0.0005, 1), (0.004, 1), (f64::INFINITY, 1)]);
    }
}
