//! The job-time histogram: doubling buckets from 1 ms, lock-free (an observation is two relaxed
//! atomic adds and a bit count). The front end encodes a [`HistogramSnapshot`] for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Finite buckets: upper bounds 1 ms, 2 ms, 4 ms, … 2^19 ms (about 9 minutes); then `+Inf`.
const FINITE: usize = 20;

/// Run times of the jobs that ran.
#[derive(Debug, Default)]
pub struct JobHistogram {
    /// Per-bucket counts (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; FINITE + 1],
    sum_us: AtomicU64,
}

impl JobHistogram {
    /// Record one run.
    pub fn observe(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        if let Some(bucket) = self.buckets.get(bucket_of(us)) {
            bucket.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// Runs recorded (the sum of the buckets: one counter fewer to bump per run).
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// The buckets (upper bound in seconds, non-cumulative count; `f64::MAX` is `+Inf`), the sum
    /// in seconds and the count, all from one pass so that count and buckets agree.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| (upper_bound(i), n.load(Relaxed)))
            .collect();
        let sum = self.sum_us.load(Relaxed) as f64 / 1e6;
        // The count from the same snapshot as the buckets, so the two always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        HistogramSnapshot {
            sum,
            count,
            buckets,
        }
    }
}

/// A histogram read once, in Prometheus' terms.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound in seconds, count in this bucket), `f64::MAX` standing for `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

/// The bucket of a run of `us` microseconds: the first whose upper bound (1 ms × 2^i) holds it.
fn bucket_of(us: u64) -> usize {
    let ms_ceil = us.div_ceil(1000);
    if ms_ceil <= 1 {
        return 0;
    }
    let i = (64 - (ms_ceil - 1).leading_zeros()) as usize;
    i.min(FINITE)
}

/// Upper bound of bucket `i`, in seconds (`f64::MAX` is `+Inf` to the encoder).
fn upper_bound(i: usize) -> f64 {
    if i >= FINITE {
        f64::MAX
    } else {
        0.001 * (1u64 << i) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_land_in_the_first_bucket_that_holds_them() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1000), 0); // 1 ms ≤ 1 ms
        assert_eq!(bucket_of(1001), 1); // ≤ 2 ms
        assert_eq!(bucket_of(2000), 1);
        assert_eq!(bucket_of(2001), 2); // ≤ 4 ms
        assert_eq!(bucket_of(100_000), 7); // 100 ms ≤ 128 ms
        assert_eq!(bucket_of(u64::MAX), FINITE); // +Inf
        for i in 1..FINITE {
            let bound_us = (upper_bound(i) * 1e6).round() as u64;
            assert_eq!(bucket_of(bound_us), i);
            assert_eq!(bucket_of(bound_us + 1), i + 1);
        }
    }

    #[test]
    fn counts_and_sum_add_up() {
        let h = JobHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(3600));
        assert_eq!(h.count(), 3);
        let per_bucket: u64 = h.buckets.iter().map(|b| b.load(Relaxed)).sum();
        assert_eq!(per_bucket, 3);
        assert_eq!(h.buckets[FINITE].load(Relaxed), 1);
        assert_eq!(h.sum_us.load(Relaxed), 500 + 3000 + 3_600_000_000);
    }
}
