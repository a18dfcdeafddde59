//! The executor contract, and the job runner and dispatcher loop every mode shares.
//!
//! A mode implements [`Executor::run_batch`]: how a handed-off batch's jobs are scheduled (serially,
//! concurrently, ...). Everything a job needs checked or counted lives in [`JobRunner`], so every
//! mode keeps the same guarantees: skip-if-client-gone, queue timeout, exactly one response, panics
//! contained.

use crate::counters::EndpointCounters;
use crate::handler::{Handler, HandlerError};
use crate::job::{Job, Turn};
use crate::queue::{Batch, HandoffQueue};
use crate::supervisor::catch_panic;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long an idle dispatcher sleeps between looks at its queue's state.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Runs handed-off batches. Implemented by the `crab` and `jellyfish` crates.
pub trait Executor: Send + Sync + 'static {
    /// The mode's name, for status and logs.
    fn mode(&self) -> &'static str;

    /// Run every job of `batch` through `runner`, in whatever schedule the mode chooses, and return
    /// when each has been answered. Called from the endpoint's dispatcher thread, one batch at a time.
    fn run_batch(&self, batch: &mut Batch, runner: &JobRunner);
}

/// What every mode does with one job: the turn checks, the handler call with its panic contained,
/// and the one reply.
pub struct JobRunner {
    endpoint: Arc<str>,
    handler: Arc<dyn Handler>,
    queue: Arc<HandoffQueue>,
    queue_timeout: Duration,
    counters: Arc<EndpointCounters>,
    running: AtomicUsize,
}

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl JobRunner {
    /// A runner for one endpoint.
    pub fn new(
        endpoint: &str,
        handler: Arc<dyn Handler>,
        queue: Arc<HandoffQueue>,
        queue_timeout: Duration,
        counters: Arc<EndpointCounters>,
    ) -> JobRunner {
        JobRunner {
            endpoint: endpoint.into(),
            handler,
            queue,
            queue_timeout,
            counters,
            running: AtomicUsize::new(0),
        }
    }

    /// The job's turn has come: returns it if it should run now; otherwise it has already been
    /// answered or dropped and counted (expired, client gone, too old, shutting down).
    pub fn begin(&self, job: Job) -> Option<Job> {
        match job.take_turn(self.queue_timeout, self.queue.is_closed()) {
            Turn::Run(job) => Some(job),
            Turn::Done => None,
        }
    }

    /// Run a started job on this thread and answer it. A handler panic is answered `500`.
    pub fn run(&self, job: Job) {
        self.running.fetch_add(1, Ordering::Relaxed);
        let result = match catch_panic(|| self.handler.handle(&job.request)) {
            Ok(result) => result,
            Err(message) => {
                EndpointCounters::bump(&self.counters.panics);
                // The panic hook logged it once; this line is only for debugging context.
                tracing::debug!(endpoint = %self.endpoint, %message, "handler panicked; answering 500");
                Err(HandlerError::Internal("handler failed".into()))
            }
        };
        if let Err(e) = &result {
            tracing::debug!(endpoint = %self.endpoint, status = e.status().as_u16(), cause = %e, "job failed");
        }
        job.finish(result);
        self.running.fetch_sub(1, Ordering::Relaxed);
    }

    /// Jobs running right now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// True once the endpoint is shutting down.
    pub fn closing(&self) -> bool {
        self.queue.is_closed()
    }

    /// The endpoint's path.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// The dispatcher loop: wait until jobs are pending, hand the whole batch to the executor, repeat;
/// return when the queue is closed and drained.
pub fn dispatch(queue: &HandoffQueue, executor: &dyn Executor, runner: &JobRunner) {
    let mut spare = VecDeque::new();
    while let Some(mut batch) = queue.take_batch(spare, IDLE_TICK) {
        tracing::trace!(endpoint = %runner.endpoint(), jobs = batch.len(), mode = executor.mode(), "batch handed off");
        executor.run_batch(&mut batch, runner);
        spare = batch.into_spare();
    }
}
