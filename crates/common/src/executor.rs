//! The executor contract, and the job runner and dispatcher loop every mode shares.
//!
//! A mode implements [`Executor::run_batch`]: how a handed-off batch's jobs are scheduled (serially,
//! concurrently, ...). Everything a job needs checked or counted lives in [`JobRunner`], so every
//! mode keeps the same guarantees: skip-if-client-gone, queue timeout, exactly one response, panics
//! contained, and one concurrency limit: a job runs only in one of the runner's running slots,
//! which inline runs on the front end take too (see [`JobRunner::run`]).

use crate::batching::{exactly, fill_until, BatchStats, Work};
use crate::body::{BodySink, Producer, StreamError};
use crate::counters::EndpointCounters;
use crate::handler::{Handler, HandlerError, JobRequest, JobResponse};
use crate::histogram::JobHistogram;
use crate::job::{Job, Turn};
use crate::line::Line;
use crate::queue::{Batch, HandoffQueue};
use crate::supervisor::catch_panic;
use config::Mode;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long an idle dispatcher sleeps between looks at its queue's state.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Tries to take a running slot by yielding the thread before waiting to be woken by a slot's
/// release. Inline runs (cheap builtins, microseconds) usually free theirs within these yields;
/// asynchronous runs (an upstream exchange) may hold theirs for as long as the exchange lasts.
const SLOT_YIELDS: u32 = 64;
/// Longest wait for a release's wake-up before another look (a bound, not a poll: a release
/// wakes the waiters at once).
const SLOT_WAIT: Duration = Duration::from_millis(5);

/// Runs handed-off batches. Implemented by the `crab`, `jellyfish` and `adaptive` crates.
///
/// Every job an executor runs goes through [`JobRunner::run`] with the executor's limit, so it
/// runs in one of the runner's running slots, shared with the endpoint's inline runs.
pub trait Executor: Send + Sync + 'static {
    /// The mode, for status and logs.
    fn mode(&self) -> Mode;

    /// Run every job of `batch` through `runner`, in whatever schedule the mode chooses. Called
    /// from the endpoint's dispatcher thread, one batch at a time. A serial mode returns when each
    /// job has been answered; a pool may return once each is handed to a worker, and the next
    /// batch's jobs start beside them within the same concurrency ([`Executor::drain`] waits for
    /// them).
    fn run_batch(&self, batch: &mut Batch, runner: &Arc<JobRunner>);

    /// Wait until every job handed over has been answered: the dispatcher calls it once the
    /// queue is closed and drained, before the endpoint stops. Default: nothing (a mode whose
    /// `run_batch` returns only when its jobs are done).
    fn drain(&self) {}

    /// How many jobs the executor would run at once if handed a batch now (at least 1). Admission
    /// by expected wait divides the queue depth by this, and an inline run needs one of this many
    /// running slots free.
    fn concurrency(&self) -> usize {
        1
    }

    /// True if, right now, a queued job starts as soon as one of [`Executor::concurrency`] jobs
    /// ends (a pool, which takes the next batch while its jobs run), rather than when the batch
    /// ahead of it has ended (a serial mode). Admission by expected wait counts the jobs running
    /// then as ending one by one. Default false.
    fn starts_when_a_worker_frees(&self) -> bool {
        false
    }

    /// True if, right now, a cheap non-blocking handler may run directly on the front end's async
    /// worker (a concurrent mode), when nothing is queued and one of [`Executor::concurrency`]
    /// running slots is free. Default false: serial modes always go through their own thread.
    fn allows_inline(&self) -> bool {
        false
    }

    /// Mode-specific counters for `/status` (for example adaptive routing decisions).
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}

/// What every mode does with one job: a running slot, the turn checks, the handler call with its
/// panic contained, and the one reply.
pub struct JobRunner {
    endpoint: Arc<str>,
    handler: Arc<dyn Handler>,
    queue: Arc<HandoffQueue>,
    queue_timeout: Duration,
    counters: Arc<EndpointCounters>,
    /// Running slots taken: jobs running now, inline runs included. Every run takes one under a
    /// limit first (see [`JobRunner::run`]), so one cap covers the inline path and the executor.
    running: AtomicUsize,
    /// Executor threads waiting for a slot: a release wakes them through `freed`.
    waiting: AtomicUsize,
    freed: Mutex<()>,
    freed_cv: Condvar,
    /// Moving average of handler run time, in microseconds (0 until the first job ran).
    job_time_us: AtomicU64,
    /// Distribution of handler run times, for `/metrics`.
    job_seconds: Arc<JobHistogram>,
    /// When the latest job started, in µs since `epoch` (0: none yet).
    last_start_us: AtomicU64,
    epoch: Instant,
    /// `max_batch` and `max_batch_wait_ms` (see [`crate::batching`]).
    batch: config::BatchConfig,
    /// Sizes of the handler calls.
    batch_stats: BatchStats,
    /// A batch answer of the wrong length was logged already (logged once per endpoint).
    warned_batch_length: AtomicBool,
    /// Queued asynchronous runs waiting for a slot (see [`crate::line`]): a release hands its
    /// slot to the first of them.
    line: Line,
    /// The executor whose concurrency limits the slots handed to the line (1 without one).
    executor: Option<Arc<dyn Executor>>,
}

/// Weight of the newest run in the job-time moving average, as 1/N.
const JOB_TIME_SMOOTHING: u64 = 8;

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
            waiting: AtomicUsize::new(0),
            freed: Mutex::new(()),
            freed_cv: Condvar::new(),
            job_time_us: AtomicU64::new(0),
            job_seconds: Arc::new(JobHistogram::default()),
            last_start_us: AtomicU64::new(0),
            epoch: Instant::now(),
            batch: config::BatchConfig::default(),
            batch_stats: BatchStats::default(),
            warned_batch_length: AtomicBool::new(false),
            line: Line::default(),
            executor: None,
        }
    }

    /// The runner whose line of queued asynchronous runs takes slots under `executor`'s
    /// concurrency (see `crate::line`).
    pub fn with_executor(mut self, executor: Arc<dyn Executor>) -> JobRunner {
        self.executor = Some(executor);
        self
    }

    /// The line of queued asynchronous runs.
    pub(crate) fn line(&self) -> &Line {
        &self.line
    }

    /// The endpoint's counters.
    pub(crate) fn counters(&self) -> &Arc<EndpointCounters> {
        &self.counters
    }

    /// Give back the queue depth a seat in the line held.
    pub(crate) fn release_seat(&self) {
        self.queue.release_seat();
    }

    /// Hand free running slots (under the executor's concurrency now) to the seats at the front
    /// of the line, waking each. Cheap when nobody waits: one atomic load.
    pub(crate) fn grant_waiting(&self) {
        if self.line.is_empty() {
            return;
        }
        let limit = self
            .executor
            .as_ref()
            .map_or(1, |executor| executor.concurrency())
            .max(1);
        self.line.grant(
            || self.take_slot(limit),
            || {
                self.running.fetch_sub(1, Ordering::SeqCst);
            },
            || self.queue.release_seat(),
        );
    }

    /// The runner with the endpoint's dynamic batching (default: none).
    pub fn with_batching(mut self, batch: config::BatchConfig) -> JobRunner {
        self.batch = batch;
        self
    }

    /// Jobs one handler call takes at most (`max_batch`; 1 is no batching).
    pub fn max_batch(&self) -> usize {
        self.batch.max.get()
    }

    /// The endpoint's batching setting.
    pub fn batching(&self) -> config::BatchConfig {
        self.batch
    }

    /// Sizes of the handler calls so far.
    pub fn batch_stats(&self) -> &BatchStats {
        &self.batch_stats
    }

    /// Run a unit of work popped by [`Batch::pop_work`] in one of at most `limit` running slots.
    /// True if the handler ran (for at least one of its jobs).
    pub fn run_work(&self, work: Work, limit: usize) -> bool {
        match work {
            Work::One(job) => self.run(job, limit),
            Work::Many(jobs) => self.run_many(jobs, limit),
        }
    }

    /// A batch's jobs in one running slot: each job's turn checks (expired, client gone, too old,
    /// shutting down: answered or dropped and counted there), then one call for the jobs still
    /// wanted ([`Handler::handle`] for a lone survivor, [`Handler::handle_batch`] otherwise), then
    /// one answer per job. A batch's answers are whole bodies: a streamed one is answered `500`
    /// (see [`Handler::handle_batch`]). True if the handler ran.
    fn run_many(&self, jobs: Vec<Job>, limit: usize) -> bool {
        let slot = self.claim(limit);
        let closing = self.queue.is_shedding();
        let mut wanted: Vec<Job> = jobs
            .into_iter()
            .filter_map(|job| match job.take_turn(self.queue_timeout, closing) {
                Turn::Run(job) => Some(job),
                Turn::Done => None,
            })
            .collect();
        if wanted.len() <= 1 {
            let Some(job) = wanted.pop() else {
                return false;
            };
            // A lone survivor is a plain call, and may stream its answer.
            self.run_started(slot, job);
            return true;
        }
        let results = self.call_batch(&slot, &wanted);
        drop(slot);
        for (job, result) in wanted.into_iter().zip(results) {
            job.finish(result);
        }
        true
    }

    /// One [`Handler::handle_batch`] call for `jobs` in a slot already taken: timed as one run, a
    /// panic answered `500` for every job, and exactly one result per job.
    fn call_batch(
        &self,
        _slot: &RunningSlot<'_>,
        jobs: &[Job],
    ) -> Vec<Result<JobResponse, HandlerError>> {
        let started = Instant::now();
        self.note_start(started);
        let requests: Vec<&JobRequest> = jobs.iter().map(|j| j.request.as_ref()).collect();
        let n = requests.len();
        self.batch_stats.record(n);
        let results = match catch_panic(|| self.handler.handle_batch(&requests)) {
            Ok(results) => results,
            Err(message) => {
                EndpointCounters::bump(&self.counters.panics);
                tracing::debug!(endpoint = %self.endpoint, %message, jobs = n, "handler panicked in a batch; answering 500 to each job");
                return (0..n)
                    .map(|_| Err(HandlerError::Internal("handler failed".into())))
                    .collect();
            }
        };
        let (results, wrong) = exactly(results, n);
        if wrong && !self.warned_batch_length.swap(true, Ordering::Relaxed) {
            tracing::warn!(endpoint = %self.endpoint, jobs = n, "the handler's batch answer had the wrong number of results; each job without one is answered 500 (logged once)");
        }
        self.record_job_time(started.elapsed());
        results
    }

    /// Before any job has finished, remember when the latest started (see [`JobRunner::job_time`]).
    pub(crate) fn note_start(&self, started: Instant) {
        if self.job_time_us.load(Ordering::Relaxed) == 0 {
            let since_epoch = started.saturating_duration_since(self.epoch).as_micros();
            self.last_start_us.store(
                u64::try_from(since_epoch).unwrap_or(u64::MAX).max(1),
                Ordering::Relaxed,
            );
        }
    }

    /// Run a job whose turn has come, as one of at most `limit` jobs running at once (inline runs
    /// included): wait for a free running slot, then the turn checks (expired, client gone, too
    /// old, shutting down: answered or dropped and counted there), then the handler with its
    /// panic turned into `500`, then the one answer. A streamed answer's head is sent at once and
    /// its body produced here, still in the slot, so concurrency caps cover streams; its outcome
    /// is counted when it ends. True if the handler ran.
    pub fn run(&self, job: Job, limit: usize) -> bool {
        let slot = self.claim(limit);
        let job = match job.take_turn(self.queue_timeout, self.queue.is_shedding()) {
            Turn::Run(job) => job,
            Turn::Done => return false,
        };
        self.run_started(slot, job);
        true
    }

    /// A started job in its running slot: the handler, then the answer (a streamed one produced
    /// here, still in the slot), then the slot given back.
    fn run_started(&self, slot: RunningSlot<'_>, job: Job) {
        let started = Instant::now();
        let (result, _took) = self.call(&slot, &job.request);
        let mut response = match result {
            Ok(response) => response,
            Err(e) => {
                drop(slot);
                job.finish(Err(e));
                return;
            }
        };
        let Some((producer, sink)) = response.body_mut().start() else {
            drop(slot);
            job.finish(Ok(response));
            return;
        };
        job.send_head(response);
        self.stream(producer, sink);
        self.record_job_time(started.elapsed());
        drop(slot);
    }

    /// Produce a streamed body on this thread, in the job's running slot, after its head was
    /// sent: the producer's panic contained, the end given to the receiver (clean, or an abort),
    /// and the stream's one outcome counted.
    pub(crate) fn stream(&self, producer: Producer, mut sink: BodySink) {
        let outcome = match catch_panic(|| producer(&mut sink)) {
            Ok(outcome) => outcome,
            Err(message) => {
                EndpointCounters::bump(&self.counters.panics);
                tracing::debug!(endpoint = %self.endpoint, %message, "stream producer panicked; aborting the response");
                Err(StreamError::Failed("handler failed".into()))
            }
        };
        match &outcome {
            Ok(()) => {
                tracing::debug!(endpoint = %self.endpoint, bytes = sink.produced(), "stream completed")
            }
            Err(e) => {
                tracing::debug!(endpoint = %self.endpoint, bytes = sink.produced(), cause = %e, "stream ended early")
            }
        }
        sink.finish(&outcome);
        self.counters.record(&outcome);
    }

    /// A running slot if fewer than `limit` are taken now (`None` otherwise). Lock-free: one
    /// compare-and-swap.
    pub(crate) fn try_claim(&self, limit: usize) -> Option<RunningSlot<'_>> {
        self.take_slot(limit).then(|| RunningSlot(self))
    }

    /// One slot under `limit` taken, if there was one. Sequentially consistent with
    /// [`JobRunner::release_slot`], so a waiter that found none is woken by the next release.
    fn take_slot(&self, limit: usize) -> bool {
        self.running
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Give a slot back: wake the executor threads waiting for one, if any, or else hand it to
    /// the first seat of the line, if any.
    fn release_slot(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let _held = self.freed.lock().unwrap_or_else(|p| p.into_inner());
            self.freed_cv.notify_all();
        } else {
            self.grant_waiting();
        }
    }

    /// Like [`JobRunner::try_claim`], but the slot holds the runner and may live in a future or
    /// move to another thread (an asynchronous run and its stream).
    pub(crate) fn try_claim_owned(self: &Arc<Self>, limit: usize) -> Option<OwnedSlot> {
        self.take_slot(limit).then(|| OwnedSlot(self.clone()))
    }

    /// A running slot under `limit`, waiting for one if all are taken. An executor runs at most
    /// `limit` jobs of its own at once, so what it can find taken is inline runs (microseconds:
    /// it yields) or asynchronous runs (it sleeps until a release wakes it).
    fn claim(&self, limit: usize) -> RunningSlot<'_> {
        let limit = limit.max(1);
        for _ in 0..SLOT_YIELDS {
            if let Some(slot) = self.try_claim(limit) {
                return slot;
            }
            std::thread::yield_now();
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let mut held = self.freed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(slot) = self.try_claim(limit) {
                if self.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
                    // Releases skipped the line while this thread waited: other slots may be free.
                    self.grant_waiting();
                }
                return slot;
            }
            held = match self.freed_cv.wait_timeout(held, SLOT_WAIT) {
                Ok((held, _)) => held,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Call the handler for `request` on this thread, in a slot already taken: time it, and turn
    /// a panic into `500`. Returns the result and the run time; the caller answers and counts.
    pub(crate) fn call(
        &self,
        _slot: &RunningSlot<'_>,
        request: &JobRequest,
    ) -> (Result<JobResponse, HandlerError>, Duration) {
        let started = Instant::now();
        self.note_start(started);
        if self.batch.max.get() > 1 {
            self.batch_stats.record(1);
        }
        let result = match catch_panic(|| self.handler.handle(request)) {
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
        let took = started.elapsed();
        // A stream's run time is recorded when it ends (see `run`).
        if !result.as_ref().is_ok_and(|r| r.body().is_stream()) {
            self.record_job_time(took);
        }
        (result, took)
    }

    /// True if the handler may run on the caller's async worker (see [`Handler::is_inline`]).
    pub fn handler_is_inline(&self) -> bool {
        self.handler.is_inline()
    }

    /// The handler this runner calls.
    pub fn handler(&self) -> &Arc<dyn Handler> {
        &self.handler
    }

    /// The run-time histogram (a shared handle).
    pub fn job_seconds(&self) -> Arc<JobHistogram> {
        self.job_seconds.clone()
    }

    pub(crate) fn record_job_time(&self, took: Duration) {
        self.job_seconds.observe(took);
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        // A plain load and store, not a compare-and-swap loop: when two jobs finish at the same
        // instant one sample may be lost, which a moving average does not notice.
        let old = self.job_time_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - old / JOB_TIME_SMOOTHING + sample / JOB_TIME_SMOOTHING
        };
        self.job_time_us.store(new, Ordering::Relaxed);
    }

    /// The moving estimate of one job's run time. Before any job has finished, the time the
    /// latest job has been running is a lower bound and stands in (so a cold endpoint whose first
    /// job runs for minutes does not admit a whole queue that could only time out); `None` before
    /// any job started.
    pub fn job_time(&self) -> Option<Duration> {
        match self.job_time_us.load(Ordering::Relaxed) {
            0 if self.running() > 0 => match self.last_start_us.load(Ordering::Relaxed) {
                0 => None,
                start => {
                    let started = self.epoch + Duration::from_micros(start);
                    Some(started.elapsed()).filter(|d| !d.is_zero())
                }
            },
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Jobs running right now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// True once the endpoint is shutting down (pending jobs are shed, pace waits cut short).
    pub fn closing(&self) -> bool {
        self.queue.is_shedding()
    }

    /// The endpoint's path.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

/// One taken running slot of a [`JobRunner`]; given back when dropped, also when a panic unwinds
/// past it.
#[derive(Debug)]
pub(crate) struct RunningSlot<'a>(&'a JobRunner);

impl Drop for RunningSlot<'_> {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}

/// One taken running slot that owns its runner (see [`JobRunner::try_claim_owned`]); given back
/// when dropped, also when the future holding it is dropped.
#[derive(Debug)]
pub(crate) struct OwnedSlot(Arc<JobRunner>);

impl OwnedSlot {
    /// The slot [`JobRunner::grant_waiting`] took on behalf of a seat of the line, now held by
    /// that seat's run.
    pub(crate) fn granted(runner: Arc<JobRunner>) -> OwnedSlot {
        OwnedSlot(runner)
    }

    /// The runner whose slot this is.
    pub(crate) fn runner(&self) -> &Arc<JobRunner> {
        &self.0
    }
}

impl Drop for OwnedSlot {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}

/// The dispatcher loop: wait until jobs are pending, hand the whole batch to the executor, repeat;
/// return when the queue is closed and drained and every job handed over has been answered.
pub fn dispatch(queue: &HandoffQueue, executor: &dyn Executor, runner: &Arc<JobRunner>) {
    let mut spare = VecDeque::new();
    while let Some(mut batch) = queue.take_batch(spare, IDLE_TICK) {
        wait_for_handler(queue, runner);
        fill(queue, &mut batch, runner);
        tracing::trace!(endpoint = %runner.endpoint(), jobs = batch.len(), mode = %executor.mode(), "batch handed off");
        executor.run_batch(&mut batch, runner);
        spare = batch.into_spare();
    }
    executor.drain();
}

/// Dynamic batching: a handed-off batch smaller than `max_batch` waits for more jobs, at most
/// `max_batch_wait_ms` and never past its oldest job's queue deadline (see
/// [`crate::batching`]); shutdown or a retirement ends the wait at once.
pub(crate) fn fill(queue: &HandoffQueue, batch: &mut Batch, runner: &JobRunner) {
    let config::BatchConfig { max, wait } = runner.batching();
    if max.get() <= 1 || wait.is_zero() || batch.len() >= max.get() {
        return;
    }
    let until = fill_until(
        Instant::now(),
        wait,
        batch.oldest_admitted(),
        runner.queue_timeout,
    );
    queue.top_up(batch, max.get(), until);
}

/// Hold a handed-off batch while the handler cannot serve yet but will (worker processes still
/// starting: [`Handler::ready`] is `Err` while [`Handler::available`] is true): its jobs keep
/// waiting as queued jobs (their queue deadline still applies), so a job's run time never
/// includes the handler's start-up. Shutdown ends the wait, and so does a handler that becomes
/// unavailable (its jobs are then answered at once).
fn wait_for_handler(queue: &HandoffQueue, runner: &JobRunner) {
    let handler = runner.handler();
    while handler.ready().is_err() && handler.available() && !queue.is_shedding() {
        std::thread::sleep(READY_POLL);
    }
}

/// How often a dispatcher holding a batch looks again whether its handler is ready.
const READY_POLL: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::JobResponse;
    use std::sync::mpsc;
    use std::sync::Mutex;

    /// Blocks each call until the test sends on its channel.
    struct Held(Mutex<mpsc::Receiver<()>>);

    impl Handler for Held {
        fn handle(&self, _req: &JobRequest) -> Result<JobResponse, HandlerError> {
            let _ = self.0.lock().unwrap().recv();
            Ok(JobResponse::new(crate::body::ResponseBody::empty()))
        }
    }

    fn request() -> JobRequest {
        JobRequest {
            method: hyper::Method::GET,
            uri: hyper::Uri::from_static("/x"),
            version: hyper::Version::HTTP_11,
            headers: hyper::HeaderMap::new(),
            body: bytes::Bytes::new(),
            remote_addr: ([127, 0, 0, 1], 1).into(),
            local_addr: ([127, 0, 0, 1], 2).into(),
            client: Default::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        }
    }

    #[test]
    fn before_any_job_finished_the_running_one_bounds_the_estimate_from_below() {
        let (release, held) = mpsc::channel();
        let runner = Arc::new(JobRunner::new(
            "/x",
            Arc::new(Held(Mutex::new(held))),
            Arc::new(HandoffQueue::new(4)),
            Duration::from_secs(1),
            Arc::new(EndpointCounters::default()),
        ));
        assert_eq!(runner.job_time(), None, "nothing started: no estimate");
        let r = runner.clone();
        let worker = std::thread::spawn(move || {
            let slot = r.try_claim(1).unwrap();
            r.call(&slot, &request()).0.is_ok()
        });
        while runner.running() == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(20));
        let while_running = runner
            .job_time()
            .expect("a running job gives a lower bound");
        assert!(
            while_running >= Duration::from_millis(20),
            "{while_running:?}"
        );
        release.send(()).unwrap();
        assert!(worker.join().unwrap());
        assert_eq!(runner.running(), 0, "the slot is given back");
        // Finished: the moving average takes over.
        let done = runner.job_time().unwrap();
        assert!(done >= Duration::from_millis(20), "{done:?}");
        assert_eq!(runner.running(), 0);
    }
}
