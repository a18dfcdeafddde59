//! Admission: one request in, one outcome out, counted here. The front end only turns the outcome
//! into HTTP.
//!
//! [`Admission::check`] is the O(1) look before a body is read (queue room, the handler's
//! availability, expected wait);
//! [`Admission::try_admit`] then runs a cheap handler inline, or starts an asynchronous handler's
//! run for the caller to await ([`Outcome::Direct`]: at once in a free running slot, or after its
//! turn in the endpoint's line of waiting tasks, see `crate::line`), or puts the job into the
//! handoff queue, or refuses it; [`Admission::wait`] waits for a queued job's one reply, expiring
//! it at its deadline. Every admitted request is counted `admitted` once (when it enters the queue
//! or the line, or when its inline or asynchronous run takes a running slot) and gets exactly one
//! outcome; a refused request is counted `overflowed` once, by [`Admission`] alone.

pub use crate::async_run::DirectRun;
use crate::async_run::{Lined, Run};
use crate::counters::{CountersSnapshot, EndpointCounters};
use crate::executor::{Executor, JobRunner};
use crate::handler::{text_response, AsyncCall, Handler, HandlerFuture, JobRequest, JobResponse};
use crate::job::{
    respond, shutting_down, waited_too_long, GoneOnDrop, Job, JobTiming, Waiter, DROPPED_STATUS,
};
use crate::queue::{HandoffQueue, Refused, SeatRefused};
use config::{EndpointConfig, OnClientGone, Overflow};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    /// Run at once on the caller's thread (a cheap handler with a free running slot and nothing
    /// queued): here is its answer, and (when asked for) its [`JobTiming`], beside the response
    /// rather than in its extensions: an inline answer is the cheapest path, and an extension
    /// costs three allocations.
    Inline(JobResponse, Option<JobTiming>),
    /// Running on the caller's task (an asynchronous handler), at once or once its turn in the
    /// line comes: await it for the answer.
    Direct(DirectRun),
    /// In the handoff queue: [`Admission::wait`] for its reply.
    Queued(Waiter),
    /// Not admitted.
    Refused(Refusal),
    /// Not admitted: a reload retired the endpoint after the request was routed to it. Here is
    /// the request back, for the endpoint now serving its path.
    Retired(Box<JobRequest>),
}

/// Why a request was not admitted, and so how it is answered. Zero allocation to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Overflow under `overflow = "ignore"`: no answer at all (counted in `overflowed`).
    OverflowIgnored,
    /// Overflow under `overflow = "reject"`: `503` with `Retry-After` (counted in `overflowed`).
    OverflowRejected {
        /// The expected wait for the work ahead to drain, in whole seconds (1 to 3600).
        retry_after_secs: u64,
    },
    /// The endpoint is shutting down (or retired): `503`, not counted as overflow.
    ShuttingDown,
    /// Overflow under `overflow = "reject"` because the handler cannot serve any time soon (its
    /// worker processes keep crashing): `503` with `Retry-After` (counted in `overflowed`).
    HandlerUnavailable {
        /// Seconds the client should wait before retrying (1 to 3600).
        retry_after_secs: u64,
    },
}

/// Why there is no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoRoom {
    /// The queue is at capacity.
    Full,
    /// Admitted now, the job would time out in the queue anyway.
    TooSlow,
    /// The handler cannot serve any time soon ([`Handler::available`] is false).
    Unavailable,
}

/// An endpoint's admission: its handoff queue, its running slots (through the job runner), its
/// counters, and the settings that decide between them.
pub struct Admission {
    pub(crate) queue: Arc<HandoffQueue>,
    pub(crate) runner: Arc<JobRunner>,
    pub(crate) executor: Arc<dyn Executor>,
    counters: Arc<EndpointCounters>,
    overflow: Overflow,
    /// `on_client_gone = "stop"`: the handler sees a client that goes away while its job runs.
    stop_when_client_gone: bool,
    queue_timeout: Duration,
    expected_wait_admission: bool,
    /// Wakes the front ends waiting on queued jobs at shutdown.
    shutdown: tokio::sync::Notify,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("runner", &self.runner)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The admission of the endpoint `config`, whose jobs `handler` answers and `executor` runs.
    pub fn new(
        config: &EndpointConfig,
        handler: Arc<dyn Handler>,
        executor: Arc<dyn Executor>,
    ) -> Admission {
        let queue = Arc::new(HandoffQueue::new(config.queue.get()));
        let counters = Arc::new(EndpointCounters::default());
        let runner = Arc::new(
            JobRunner::new(
                &config.path,
                handler,
                queue.clone(),
                config.queue_timeout,
                counters.clone(),
            )
            .with_batching(config.batch)
            .with_executor(executor.clone()),
        );
        Admission {
            queue,
            runner,
            executor,
            counters,
            overflow: config.overflow,
            stop_when_client_gone: config.on_client_gone == OnClientGone::Stop,
            queue_timeout: config.queue_timeout,
            expected_wait_admission: config.expected_wait_admission,
            shutdown: tokio::sync::Notify::new(),
        }
    }

    /// Whether a request may be admitted now, before its body is read: room in the queue, a
    /// handler that can serve soon, and an expected wait within the queue timeout. A refusal is counted. O(1): a few atomic loads, no
    /// lock, no allocation.
    #[inline]
    pub fn check(&self) -> Result<(), Refusal> {
        if !self.queue.has_room() {
            return Err(if self.queue.is_closed() {
                Refusal::ShuttingDown
            } else {
                self.overflowed(NoRoom::Full)
            });
        }
        if !self.runner.handler().available() {
            return Err(self.overflowed(NoRoom::Unavailable));
        }
        if self.expected_wait_admission && self.expected_wait() > self.queue_timeout {
            return Err(self.overflowed(NoRoom::TooSlow));
        }
        Ok(())
    }

    /// Admit `request`: run it inline if it may (a cheap handler, a concurrent mode, nothing
    /// queued, a running slot free), else start its asynchronous run (an asynchronous handler:
    /// at once, or after its turn in the line), else put it into the queue, else refuse it;
    /// counted either way. With `timing`, the answer comes with its [`JobTiming`] for the access
    /// log: beside an inline answer, in the response's extensions otherwise.
    pub fn try_admit(&self, request: JobRequest, timing: bool) -> Outcome {
        if let Some((answer, run)) = self.try_inline(&request) {
            let timing = timing.then_some(JobTiming {
                queue_wait: Duration::ZERO,
                run,
            });
            return Outcome::Inline(answer, timing);
        }
        let request = match self.try_direct(request, timing) {
            Direct::Run(run) => return Outcome::Direct(run),
            Direct::Refused(refusal) => return Outcome::Refused(refusal),
            Direct::Declined(request) => request,
        };
        let (mut job, waiter) = Job::new(request, self.counters.clone());
        if self.stop_when_client_gone {
            job.watch_client();
        }
        match self.queue.try_push(job) {
            Ok(()) => Outcome::Queued(waiter),
            Err(Refused::Full(_)) => Outcome::Refused(self.overflowed(NoRoom::Full)),
            Err(Refused::Closed(job)) if self.is_retired() => Outcome::Retired(job.into_request()),
            Err(Refused::Closed(_)) => Outcome::Refused(Refusal::ShuttingDown),
        }
    }

    /// The inline run: in one of the same running slots the executor's jobs take, so inline and
    /// pool runs together never exceed the executor's concurrency. No lock, no allocation, no
    /// clock read beyond the handler's timing.
    fn try_inline(&self, request: &JobRequest) -> Option<(JobResponse, Duration)> {
        // Nothing queued, so FIFO order is kept.
        if self.queue.depth() != 0
            || !self.runner.handler_is_inline()
            || !self.executor.allows_inline()
        {
            return None;
        }
        let slot = self.runner.try_claim(self.executor.concurrency())?;
        // Admitted once it has its slot, so no outcome is ever counted ahead of its admission.
        EndpointCounters::bump(&self.counters.admitted);
        let (result, run) = self.runner.call(&slot, request);
        drop(slot);
        Some((respond(&self.counters, result, None), run))
    }

    /// The asynchronous run ([`Handler::call_async`]): in one of the same running slots, held by
    /// the returned future until its answer (or its stream) ends: at once if a slot is free and
    /// nothing is queued, else after its turn in the line (see [`crate::line`]), which holds a
    /// unit of the queue's depth like a queued job. Only on an `on_client_gone = "stop"`
    /// endpoint: a client that goes drops the future, which stops the run or leaves the line.
    fn try_direct(&self, request: JobRequest, timing: bool) -> Direct {
        // A closed endpoint's handler is not called here.
        if !self.starts_when_a_slot_frees() || self.queue.is_closed() {
            return Direct::Declined(request);
        }
        // Nothing queued, so FIFO order is kept.
        let slot = if self.queue.depth() == 0 {
            self.runner.try_claim_owned(self.executor.concurrency())
        } else {
            None
        };
        // Without a slot, its seat in the line first, while the request is still in hand: a full
        // queue makes no future, and a queue a reload retired since the look above gives the
        // request back through the queue's refusal (`Outcome::Retired`).
        let seated = slot.is_none();
        if seated {
            match self.queue.reserve_seat() {
                Ok(()) => {}
                Err(SeatRefused::Full) => {
                    return Direct::Refused(self.overflowed(NoRoom::Full));
                }
                Err(SeatRefused::Closed) => return Direct::Declined(request),
            }
        }
        // The future does nothing until first polled: made now, it runs once it holds a slot.
        let call = match self.runner.handler().call_async(request) {
            AsyncCall::Started(call) => call,
            // A slot taken goes back as it drops; a seat, here.
            AsyncCall::Declined(request) => {
                if seated {
                    self.queue.release_seat();
                }
                return Direct::Declined(request);
            }
        };
        let Some(slot) = slot else {
            return self.line_up(call, timing);
        };
        EndpointCounters::bump(&self.counters.admitted);
        EndpointCounters::bump(&self.counters.async_runs);
        Direct::Run(DirectRun(Run::Now(crate::async_run::Direct::new(
            slot,
            self.counters.clone(),
            call,
            Instant::now(),
            timing.then_some(Duration::ZERO),
        ))))
    }

    /// A seat at the back of the line for `call`, holding the unit of the queue's depth already
    /// reserved for it (admitted and counted now), or the refusal of a closed line.
    fn line_up(&self, call: HandlerFuture, timing: bool) -> Direct {
        let line = self.runner.line();
        if !line.kept(&self.runner) {
            tracing::error!(endpoint = %self.runner.endpoint(), "an asynchronous run was queued outside a runtime; refused");
            self.queue.release_seat();
            return Direct::Refused(Refusal::ShuttingDown);
        }
        let admitted_at = Instant::now();
        let Some(seat) = line.join(admitted_at + self.queue_timeout) else {
            self.queue.release_seat();
            return Direct::Refused(Refusal::ShuttingDown);
        };
        EndpointCounters::bump(&self.counters.admitted);
        // A slot freed since the look above is not missed.
        self.runner.grant_waiting();
        Direct::Run(DirectRun(Run::Lined(Lined::new(
            self.runner.clone(),
            seat,
            call,
            admitted_at,
            timing,
        ))))
    }

    /// Count an overflow and say how to answer it.
    fn overflowed(&self, why: NoRoom) -> Refusal {
        if why == NoRoom::TooSlow {
            EndpointCounters::bump(&self.counters.shed_by_wait);
        }
        EndpointCounters::bump(&self.counters.overflowed);
        match (self.overflow, why) {
            (Overflow::Ignore, _) => Refusal::OverflowIgnored,
            (Overflow::Reject, NoRoom::Unavailable) => Refusal::HandlerUnavailable {
                retry_after_secs: self.retry_after_secs(),
            },
            (Overflow::Reject, _) => Refusal::OverflowRejected {
                retry_after_secs: self.retry_after_secs(),
            },
        }
    }

    /// Wait for a queued job's one reply. At the queue deadline, a job that has not started is
    /// expired and answered `504`; at shutdown, at once, `503` (counted here: timed out, failed).
    /// A started job is bounded by its handler's own limits. A job its executor dropped unanswered
    /// (already counted as failed) is answered `500`.
    pub async fn wait(&self, waiter: Waiter) -> JobResponse {
        let Waiter { ticket, mut reply } = waiter;
        // Dropped with this future: a client that goes away while its job runs is seen by the
        // handler (`ClientWatch`) on an `on_client_gone = "stop"` endpoint.
        let gone = ticket.gone_on_drop();
        let shutdown = self.shutdown.notified();
        tokio::pin!(shutdown);
        shutdown.as_mut().enable();
        let expired = if self.queue.is_shedding() {
            shutting_down()
        } else {
            tokio::select! {
                biased;
                answer = &mut reply => return delivered(answer, gone),
                () = &mut shutdown => shutting_down(),
                () = tokio::time::sleep(self.queue_timeout) => waited_too_long(),
            }
        };
        if ticket.expire() {
            // Not started: answered here, and the executor will discard it unrun.
            return respond(&self.counters, Err(expired), None);
        }
        delivered(reply.await, gone)
    }

    /// Expected queue wait of a request admitted now: (queued + running jobs) ÷ concurrency × job
    /// time. Zero until a first job has run. With dynamic batching, a handler call of k jobs
    /// costs about one call's time (the job time is measured per call), so the jobs ahead are
    /// divided by the recent mean batch size too: (queued + running) ÷ (concurrency × mean
    /// batch size) × call time. Under overload batches fill to `max_batch`, which is when the
    /// estimate matters.
    ///
    /// Where a request starts the moment a slot frees (an asynchronous run: at once with a slot
    /// free and nothing queued, else at its turn in the line), a slot free means no wait, and
    /// only the jobs that must end before its turn count: (queued + running + 1 − concurrency) ÷
    /// concurrency × job time. So too for a pool's queued job (jellyfish, adaptive off red),
    /// which starts as soon as a worker frees ([`Executor::starts_when_a_worker_frees`]). For a
    /// serial executor's (crab, adaptive on red) the running ones count whole: it runs a batch to
    /// its end before taking the next.
    pub fn expected_wait(&self) -> Duration {
        // Everything ahead of a new job: the queued ones and the ones running now.
        let ahead = self.queue.depth() + self.runner.running();
        if ahead == 0 {
            return Duration::ZERO;
        }
        let concurrency = self.concurrency().max(1);
        let ahead = if self.starts_when_a_slot_frees() || self.executor.starts_when_a_worker_frees()
        {
            if ahead < concurrency {
                return Duration::ZERO;
            }
            ahead + 1 - concurrency
        } else {
            ahead
        };
        let Some(job_time) = self.runner.job_time() else {
            return Duration::ZERO;
        };
        let ahead = u32::try_from(ahead).unwrap_or(u32::MAX);
        let concurrency = u32::try_from(concurrency).unwrap_or(u32::MAX);
        let per_slot = job_time.saturating_mul(ahead) / concurrency;
        if self.runner.max_batch() > 1 {
            per_slot.div_f64(self.runner.batch_stats().mean_size())
        } else {
            per_slot
        }
    }

    /// Whether this endpoint's requests take the asynchronous run of [`Admission::try_direct`],
    /// which starts as soon as a slot is free (a WebSocket upgrade, declined there, is the
    /// exception and is not worth a look at the request).
    fn starts_when_a_slot_frees(&self) -> bool {
        self.stop_when_client_gone
            && self.runner.handler().runs_async()
            && self.executor.allows_inline()
    }

    /// Seconds a rejected client should wait before retrying: the expected wait for the work
    /// ahead of it to drain (see [`Admission::expected_wait`]), at least 1, at most an hour.
    pub fn retry_after_secs(&self) -> u64 {
        self.expected_wait().as_secs_f64().ceil().clamp(1.0, 3600.0) as u64
    }

    /// Jobs the executor runs at once now.
    pub fn concurrency(&self) -> usize {
        self.executor.concurrency()
    }

    /// Jobs admitted and not yet started.
    pub fn queue_depth(&self) -> usize {
        self.queue.depth()
    }

    /// The queue's capacity.
    pub fn queue_capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// Jobs running now (inline runs included).
    pub fn running(&self) -> usize {
        self.runner.running()
    }

    /// True once nothing new is admitted (shutdown, or retired after a reload).
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// True once a config reload has retired this endpoint (it admits nothing new and runs what
    /// it had admitted), as opposed to shutdown: a request that reaches it was routed by the
    /// table the reload replaced, and belongs to the endpoint now serving its path.
    pub fn is_retired(&self) -> bool {
        self.queue.is_closed() && !self.queue.is_shedding()
    }

    /// The counters now.
    pub fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Shutdown: admit nothing new; queued jobs are answered `503` at once (their waiting front
    /// ends are woken); the running ones finish.
    pub(crate) fn close(&self) {
        self.queue.close_and_shed();
        self.runner.line().shed(|| self.queue.release_seat());
        self.shutdown.notify_waiters();
    }

    /// Retired after a config reload: admit nothing new, run every queued job.
    pub(crate) fn retire(&self) {
        self.queue.close();
    }
}

/// What [`Admission::try_direct`] did with a request.
// Both variants are moved once, by value; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Direct {
    Run(DirectRun),
    Refused(Refusal),
    Declined(JobRequest),
}

/// The reply a queued job's executor sent, or `500` if it dropped the job unanswered.
fn delivered(
    answer: Result<JobResponse, tokio::sync::oneshot::error::RecvError>,
    gone: GoneOnDrop<'_>,
) -> JobResponse {
    match answer {
        Ok(response) if response.body().is_stream() => {
            gone.disarm();
            response
        }
        Ok(response) => response,
        Err(_) => text_response(DROPPED_STATUS, "the job's executor failed"),
    }
}
