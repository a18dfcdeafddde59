//! A running endpoint: its config, handoff queue, counters, and supervised dispatcher thread.

use crate::counters::{CountersSnapshot, EndpointCounters};
use crate::executor::{dispatch, Executor, JobRunner};
use crate::handler::{text_response, Handler, JobRequest, JobResponse};
use crate::job::JobTiming;
use crate::queue::HandoffQueue;
use crate::supervisor::{Backoff, SupervisedThread};
use config::{EndpointConfig, Overflow};
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::StatusCode;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One endpoint with its queue and executor running.
pub struct Endpoint {
    /// Its validated config.
    pub config: EndpointConfig,
    /// Its bounded handoff queue.
    pub queue: Arc<HandoffQueue>,
    /// Its outcome counters.
    pub counters: Arc<EndpointCounters>,
    runner: Arc<JobRunner>,
    executor: Arc<dyn Executor>,
    mode: &'static str,
    inline: bool,
    shutdown: tokio::sync::Notify,
    restarts: Arc<AtomicU64>,
    dispatcher: Mutex<Option<SupervisedThread>>,
}

/// An endpoint's line in `/status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    /// Execution mode.
    pub mode: &'static str,
    /// Overflow policy.
    pub overflow: &'static str,
    /// Jobs admitted and not yet started.
    pub queue_depth: usize,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// True while a job runs.
    pub busy: bool,
    /// Jobs running now.
    pub running: usize,
    /// Times the dispatcher was replaced after a failure.
    pub restarts: u64,
    /// Jobs the executor runs at once now.
    pub concurrency: usize,
    /// Moving estimate of one job's run time, in ms (absent before the first run).
    pub job_time_ms: Option<f64>,
    /// Expected wait of a request admitted now, in ms.
    pub expected_wait_ms: f64,
    /// Whether requests are refused when the expected wait exceeds `queue_timeout_ms`.
    pub expected_wait_admission: bool,
    /// Outcome counters.
    pub counters: CountersSnapshot,
    /// Mode-specific counters (routing decisions, pool restarts).
    pub executor: BTreeMap<&'static str, u64>,
}

/// Whether a request may enter the queue now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Room, and the expected wait is within the queue timeout.
    Open,
    /// Overflow: the queue is at capacity.
    Full,
    /// Overflow: admitted now, the job would time out in the queue anyway.
    TooSlow,
    /// Shutting down.
    Closed,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.config.path)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Start an endpoint: its queue, and its dispatcher thread under a supervisor.
    pub fn start(
        config: EndpointConfig,
        handler: Arc<dyn Handler>,
        executor: Arc<dyn Executor>,
    ) -> std::io::Result<Arc<Endpoint>> {
        let queue = Arc::new(HandoffQueue::new(config.queue.get()));
        let counters = Arc::new(EndpointCounters::default());
        let runner = Arc::new(JobRunner::new(
            &config.path,
            handler,
            queue.clone(),
            config.queue_timeout,
            counters.clone(),
        ));
        let mode = executor.mode();
        let (q, r, x) = (queue.clone(), runner.clone(), executor.clone());
        let thread_name = format!("fc-{}{}", mode, config.path.replace('/', "-"));
        let dispatcher = SupervisedThread::spawn(&thread_name, Backoff::default(), move || {
            dispatch(&q, x.as_ref(), &r);
        })?;
        Ok(Arc::new(Endpoint {
            config,
            queue,
            counters,
            inline: runner.handler_is_inline(),
            shutdown: tokio::sync::Notify::new(),
            runner,
            executor,
            mode,
            restarts: dispatcher.restart_counter(),
            dispatcher: Mutex::new(Some(dispatcher)),
        }))
    }

    /// Whether a new request may be admitted now. O(1): a few atomic loads, no lock, no allocation.
    #[inline]
    pub fn admission(&self) -> Admission {
        if !self.queue.has_room() {
            return if self.queue.is_closed() {
                Admission::Closed
            } else {
                Admission::Full
            };
        }
        if self.config.expected_wait_admission && self.expected_wait() > self.config.queue_timeout {
            return Admission::TooSlow;
        }
        Admission::Open
    }

    /// Run a cheap handler directly on the caller's async worker if it may: a concurrent mode with
    /// a free slot and nothing queued (so FIFO order is kept). `None`: go through the queue.
    /// Counted like a queued job: admitted, then exactly one outcome.
    /// With `timing`, the response carries a [`JobTiming`] extension for the access log.
    pub fn try_inline(&self, request: &JobRequest, timing: bool) -> Option<JobResponse> {
        if !self.inline || self.queue.depth() != 0 || !self.executor.allows_inline() {
            return None;
        }
        // Counted as admitted first, so no outcome is ever counted ahead of its admission.
        EndpointCounters::bump(&self.counters.admitted);
        let started = timing.then(Instant::now);
        let Some(result) = self
            .runner
            .call_if_below(self.executor.concurrency(), request)
        else {
            self.counters.admitted.fetch_sub(1, Ordering::Relaxed);
            return None;
        };
        self.counters.record(&result);
        let mut resp = result.unwrap_or_else(|e| text_response(e.status(), &e.to_string()));
        if let Some(started) = started {
            resp.extensions_mut().insert(JobTiming {
                queue_wait: Duration::ZERO,
                run: started.elapsed(),
            });
        }
        Some(resp)
    }

    /// The answer to a request that [`Endpoint::admission`] refused, counted: `None` means
    /// silence (`ignore` overflow: the front end closes the connection); otherwise a `503`, with
    /// `Retry-After` from the expected wait for `reject`, or because the server is shutting down
    /// (not counted as overflow).
    pub fn refuse(&self, refused: Admission) -> Option<JobResponse> {
        if refused == Admission::Closed || self.queue.is_closed() {
            return Some(text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "server shutting down",
            ));
        }
        if refused == Admission::TooSlow {
            EndpointCounters::bump(&self.counters.shed_by_wait);
        }
        EndpointCounters::bump(&self.counters.overflowed);
        match self.config.overflow {
            Overflow::Ignore => None,
            Overflow::Reject => {
                let mut resp =
                    text_response(StatusCode::SERVICE_UNAVAILABLE, "queue full, retry later");
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(self.retry_after_secs()));
                Some(resp)
            }
        }
    }

    /// Expected queue wait of a request admitted now: (queued + running jobs) ÷ concurrency × job
    /// time. Zero until a first job has run.
    pub fn expected_wait(&self) -> Duration {
        // Everything ahead of a new job: the queued ones and the ones running now.
        let ahead = self.queue.depth() + self.runner.running();
        if ahead == 0 {
            return Duration::ZERO;
        }
        let Some(job_time) = self.runner.job_time() else {
            return Duration::ZERO;
        };
        let ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
        let concurrency = u32::try_from(self.executor.concurrency().max(1)).unwrap_or(u32::MAX);
        job_time.saturating_mul(ahead) / concurrency
    }

    /// Seconds a rejected client should wait before retrying: the expected wait for the work
    /// ahead of it to drain (see [`Endpoint::expected_wait`]), at least 1, at most an hour.
    pub fn retry_after_secs(&self) -> u64 {
        self.expected_wait().as_secs_f64().ceil().clamp(1.0, 3600.0) as u64
    }

    /// The endpoint's status line.
    pub fn status(&self) -> EndpointStatus {
        let running = self.runner.running();
        EndpointStatus {
            concurrency: self.executor.concurrency(),
            job_time_ms: self.runner.job_time().map(|d| d.as_secs_f64() * 1e3),
            expected_wait_ms: self.expected_wait().as_secs_f64() * 1e3,
            expected_wait_admission: self.config.expected_wait_admission,
            executor: self.executor.counters().into_iter().collect(),
            mode: self.mode,
            overflow: self.config.overflow.as_str(),
            queue_depth: self.queue.depth(),
            queue_capacity: self.queue.capacity(),
            busy: running > 0,
            running,
            restarts: self.restarts.load(Ordering::Relaxed),
            counters: self.counters.snapshot(),
        }
    }

    /// The endpoint's run-time histogram.
    pub fn job_seconds(&self) -> Arc<crate::histogram::JobHistogram> {
        self.runner.job_seconds()
    }

    /// The mode's name.
    pub fn mode(&self) -> &'static str {
        self.mode
    }

    /// Shutdown: new requests get `503`, queued jobs are answered `503` at once (their waiting
    /// front ends are woken), the running ones finish.
    pub fn close(&self) {
        self.queue.close_and_shed();
        self.shutdown.notify_waiters();
    }

    /// Resolves when [`Endpoint::close`] is called after it was enabled (check
    /// `queue.is_shedding()` after enabling, for a close that came first).
    pub fn shutdown_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.shutdown.notified()
    }

    /// Retire after a config reload: admit nothing new, run every queued job, then stop.
    pub fn retire(&self) {
        self.queue.close();
    }

    /// True once the dispatcher has drained and stopped.
    pub fn is_stopped(&self) -> bool {
        self.dispatcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|d| d.is_finished())
    }
}
