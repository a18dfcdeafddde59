//! Jellyfish mode: a small bounded pool that runs a handed-off batch's jobs concurrently.
//!
//! The pool has a fixed number of worker OS threads, each supervised (a worker that dies is
//! replaced). The dispatcher feeds a batch's jobs to the pool, never more at once than the
//! concurrency limit, counting the jobs of earlier batches still running, and returns once every
//! job is handed to a worker: a job that runs for minutes (a WebSocket session, a long stream)
//! leaves the pool's other workers to the jobs that come after it. Jobs keep every guarantee of
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
use std::sync::{Arc, Mutex};

/// Work for a pool worker (one job, or one batch call of up to `max_batch` jobs): run it through
/// the runner within the batch's concurrency limit.
type Task = (Work, Arc<JobRunner>, usize);

/// Runs a batch's jobs on a bounded pool of worker threads.
pub struct JellyfishExecutor {
    workers: usize,
    pool: Pool<Task>,
    /// Tasks handed to the pool and not yet known to be done, across batches (only the
    /// dispatcher submits; the lock is never contended).
    in_flight: Mutex<usize>,
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
        Ok(JellyfishExecutor {
            workers,
            pool,
            in_flight: Mutex::new(0),
        })
    }

    /// The pool size.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Run `batch` with at most `limit` jobs (or batch calls, with `max_batch` above 1) at once
    /// (clamped to 1..=workers), FIFO starts, counting the jobs of earlier batches still
    /// running. Returns once every job is handed to a worker, not when they end: the next batch
    /// may start beside a long job ([`JellyfishExecutor::drain`] waits for them). The limit
    /// holds with the endpoint's inline runs counted in: each job runs in one of the runner's
    /// `limit` running slots.
    pub fn run_limited(&self, batch: &mut Batch, runner: &Arc<JobRunner>, limit: usize) {
        let limit = limit.clamp(1, self.workers);
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // The jobs of earlier batches that ended since.
        while *in_flight > 0 && self.pool.try_done() {
            *in_flight -= 1;
        }
        while let Some(work) = batch.pop_work(runner.max_batch()) {
            self.wait_below(&mut in_flight, limit);
            match self.pool.submit((work, runner.clone(), limit)) {
                Ok(()) => *in_flight += 1,
                // No worker can take it (the pool is gone): run it here rather than lose it.
                Err((work, runner, limit)) => {
                    runner.run_work(work, limit);
                }
            }
        }
    }

    /// Wait until every job handed to the pool has ended.
    pub fn drain(&self) {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        self.wait_below(&mut in_flight, 1);
    }

    /// Wait until fewer than `bound` jobs handed to the pool are running.
    fn wait_below(&self, in_flight: &mut usize, bound: usize) {
        while *in_flight >= bound {
            if !self.pool.wait_done() {
                // No worker is left to end one: nothing counted is running any more.
                *in_flight = 0;
                return;
            }
            *in_flight -= 1;
        }
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

    fn drain(&self) {
        JellyfishExecutor::drain(self);
    }

    fn concurrency(&self) -> usize {
        self.workers
    }

    fn allows_inline(&self) -> bool {
        true
    }

    fn starts_when_a_worker_frees(&self) -> bool {
        true
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("workers", self.workers as u64),
            ("worker_restarts", self.restarts()),
        ]
    }
}
