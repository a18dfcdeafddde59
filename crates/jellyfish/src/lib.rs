//! Jellyfish mode: a small bounded pool that runs a handed-off batch's jobs concurrently.
//!
//! The pool has a fixed number of worker OS threads, each supervised (a worker that dies is
//! replaced). The dispatcher feeds a batch's jobs to the pool, never more at once than the batch's
//! concurrency limit, and returns when every job has been answered. Jobs keep every guarantee of
//! [`common::executor::JobRunner`]: turn checks at start, panics contained, exactly one reply.
//!
//! # Layout
//! - [`pool`]: the generic supervised worker pool with completion signalling.
//! - [`JellyfishExecutor`]: the [`Executor`] for jellyfish mode, and the limited-concurrency batch
//!   runner adaptive mode reuses.
#![deny(missing_docs)]

pub mod pool;

use common::batching::Work;
use common::executor::{Executor, JobRunner};
use common::queue::Batch;
use config::Mode;
use pool::Pool;
use std::sync::Arc;

/// Work for a pool worker (one job, or one batch call of up to `max_batch` jobs): run it through
/// the runner within the batch's concurrency limit.
type Task = (Work, Arc<JobRunner>, usize);

/// Runs a batch's jobs on a bounded pool of worker threads.
pub struct JellyfishExecutor {
    workers: usize,
    pool: Pool<Task>,
}

impl std::fmt::Debug for JellyfishExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JellyfishExecutor")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl JellyfishExecutor {
    /// A pool of `workers` threads (at least 1) named after `name`.
    pub fn new(name: &str, workers: usize) -> std::io::Result<JellyfishExecutor> {
        let workers = workers.max(1);
        let pool = Pool::new(name, workers, |(work, runner, limit): Task| {
            runner.run_work(work, limit);
        })?;
        Ok(JellyfishExecutor { workers, pool })
    }

    /// The pool size.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Run `batch` with at most `limit` jobs (or batch calls, with `max_batch` above 1) at once
    /// (clamped to 1..=workers), FIFO starts. The
    /// limit holds with the endpoint's inline runs counted in: each job runs in one of the
    /// runner's `limit` running slots.
    pub fn run_limited(&self, batch: &mut Batch, runner: &Arc<JobRunner>, limit: usize) {
        let limit = limit.clamp(1, self.workers);
        let mut round = self.pool.round();
        while let Some(work) = batch.pop_work(runner.max_batch()) {
            if round.in_flight() >= limit {
                round.wait_one();
            }
            if let Err((work, runner, limit)) = round.submit((work, runner.clone(), limit)) {
                // No worker can take it (the pool is gone): run it here rather than lose it.
                runner.run_work(work, limit);
            }
        }
        round.wait_all();
    }

    /// Worker replacements so far.
    pub fn restarts(&self) -> u64 {
        self.pool.restarts()
    }
}

impl Executor for JellyfishExecutor {
    fn mode(&self) -> Mode {
        Mode::Jellyfish
    }

    fn run_batch(&self, batch: &mut Batch, runner: &Arc<JobRunner>) {
        self.run_limited(batch, runner, self.workers);
    }

    fn concurrency(&self) -> usize {
        self.workers
    }

    fn allows_inline(&self) -> bool {
        true
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("workers", self.workers as u64),
            ("worker_restarts", self.restarts()),
        ]
    }
}
