//! An asynchronous run on the client's connection task ([`Handler::call_async`]): at once in a
//! free running slot, or after its turn in the endpoint's [line](crate::line).
//!
//! Both hold one of the runner's running slots for as long as the handler's future (and its
//! stream) lasts, and count exactly one outcome. A run that waited in the line keeps the queue's
//! promises: its seat holds a unit of the queue's depth, it is served first come first served, it
//! is answered `504` at its queue deadline and `503` at shutdown, and a client that goes before
//! its turn is counted `skipped`. Its queue deadline is kept by the line's keeper (see
//! [`crate::line`]), not by a timer of its own.
//!
//! [`Handler::call_async`]: crate::handler::Handler::call_async

use crate::counters::EndpointCounters;
use crate::executor::{JobRunner, OwnedSlot};
use crate::handler::{HandlerError, HandlerFuture, JobResponse};
use crate::job::{respond, shutting_down, waited_too_long, JobTiming};
use crate::line::{Seat, Standing};
use crate::supervisor::catch_panic;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// An asynchronous run started by [`crate::admission::Admission::try_admit`]: await it on the
/// client's connection task for the one answer (already counted). It runs at once (a free running
/// slot, nothing queued), or first waits for its turn in the endpoint's line. Dropped before it
/// ends, it stops the run (counted `client_gone`) or leaves the line (counted `skipped`), and
/// gives any running slot back.
pub struct DirectRun(pub(crate) Run);

/// The two ways a [`DirectRun`] starts, neither boxed: the handler's (boxed) future and a few
/// fields, one allocation per request fewer than an `async fn` boxed around it. A run that waited
/// becomes `Now` in place when its turn comes.
pub(crate) enum Run {
    /// In a running slot already.
    Now(Direct),
    /// Waiting for its turn in the line first.
    Lined(Lined),
}

impl std::fmt::Debug for DirectRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DirectRun")
    }
}

impl Future for DirectRun {
    type Output = JobResponse;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResponse> {
        let run = match &mut self.0 {
            Run::Now(run) => return Pin::new(run).poll(cx),
            Run::Lined(lined) => match lined.turn(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Turn::Answered(response)) => return Poll::Ready(response),
                Poll::Ready(Turn::Run(run)) => run,
            },
        };
        self.0 = Run::Now(run);
        self.poll(cx)
    }
}

/// Counts `client_gone` if dropped armed: the run's future was dropped before its answer.
struct GoneUnlessAnswered(Option<Arc<EndpointCounters>>);

impl Drop for GoneUnlessAnswered {
    fn drop(&mut self) {
        if let Some(counters) = self.0.take() {
            EndpointCounters::bump(&counters.client_gone);
        }
    }
}

/// Counts `failed` if dropped armed: a stream's producer task was dropped unrun.
struct FailedUnlessRun(Option<Arc<EndpointCounters>>);

impl Drop for FailedUnlessRun {
    fn drop(&mut self) {
        if let Some(counters) = self.0.take() {
            EndpointCounters::bump(&counters.failed);
        }
    }
}

/// A handler's future with its panics turned into `Err(message)`.
struct CatchPanic(HandlerFuture);

impl Future for CatchPanic {
    type Output = Result<Result<JobResponse, HandlerError>, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_panic(|| self.0.as_mut().poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(result)) => Poll::Ready(Ok(result)),
            Err(message) => Poll::Ready(Err(message)),
        }
    }
}

/// One asynchronous run in a slot: the handler's future (a panic answered `500`), its run time
/// recorded, its outcome counted once. A streamed answer is produced on a blocking thread of the
/// current runtime, still in the slot, and counted when it ends (as an executor's stream is).
/// With `timing`, the answer carries its [`JobTiming`], `queue_wait` the time in the line.
/// Dropped before its answer, it drops the handler's future first, then counts `client_gone`,
/// then gives the slot back.
pub(crate) struct Direct {
    call: CatchPanic,
    /// Taken when the call ends.
    rest: Option<Rest>,
}

/// What a [`Direct`] run needs once its call has ended.
struct Rest {
    gone: GoneUnlessAnswered,
    slot: OwnedSlot,
    counters: Arc<EndpointCounters>,
    started: Instant,
    timing: Option<Duration>,
}

impl Direct {
    /// Run `call` in `slot`, started at `started`; `timing` is the time waited in the line when
    /// the answer is to carry its timing.
    pub(crate) fn new(
        slot: OwnedSlot,
        counters: Arc<EndpointCounters>,
        call: HandlerFuture,
        started: Instant,
        timing: Option<Duration>,
    ) -> Direct {
        // A cold endpoint's first run stands in for the job time while it runs (see
        // `JobRunner::job_time`), as an executor's does.
        slot.runner().note_start(started);
        Direct {
            call: CatchPanic(call),
            rest: Some(Rest {
                gone: GoneUnlessAnswered(Some(counters.clone())),
                slot,
                counters,
                started,
                timing,
            }),
        }
    }
}

impl Future for Direct {
    type Output = JobResponse;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<JobResponse> {
        let result = match Pin::new(&mut self.call).poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => return Poll::Pending,
        };
        match self.rest.take() {
            Some(rest) => Poll::Ready(finish(rest, result)),
            // Polled again after its answer: there is no second one.
            None => Poll::Pending,
        }
    }
}

/// The end of a [`Direct`] run whose call returned `result`.
fn finish(rest: Rest, result: Result<Result<JobResponse, HandlerError>, String>) -> JobResponse {
    let Rest {
        mut gone,
        slot,
        counters,
        started,
        timing,
    } = rest;
    let runner = slot.runner().clone();
    let result = match result {
        Ok(result) => result,
        Err(message) => {
            EndpointCounters::bump(&counters.panics);
            tracing::debug!(endpoint = %runner.endpoint(), %message, "handler panicked; answering 500");
            Err(HandlerError::Internal("handler failed".into()))
        }
    };
    gone.0 = None;
    if let Err(e) = &result {
        tracing::debug!(endpoint = %runner.endpoint(), status = e.status().as_u16(), cause = %e, "job failed");
    }
    let queue_wait = timing.unwrap_or_default();
    let timing = timing.is_some();
    let run_timing = |run| JobTiming { queue_wait, run };
    let mut response = match result {
        Ok(response) if response.body().is_stream() => response,
        other => {
            let took = started.elapsed();
            runner.record_job_time(took);
            drop(slot);
            return respond(&counters, other, timing.then(|| run_timing(took)));
        }
    };
    // A polled stream is produced by the front end's polls on this task: settled (its outcome
    // counted, its run time recorded, the slot given back) when it ends, however it ends.
    if response.body().is_polled() {
        let settled_counters = counters.clone();
        let settle: crate::body::Settle = Box::new(move |outcome, panicked| {
            let runner = slot.runner();
            if panicked {
                EndpointCounters::bump(&settled_counters.panics);
            }
            match outcome {
                Ok(()) => tracing::debug!(endpoint = %runner.endpoint(), "stream completed"),
                Err(e) => {
                    tracing::debug!(endpoint = %runner.endpoint(), cause = %e, "stream ended early")
                }
            }
            settled_counters.record(outcome);
            runner.record_job_time(started.elapsed());
            drop(slot);
        });
        if !response.body_mut().settle_with(settle) {
            // Settled by someone else already: nobody answers for it here (the slot went back
            // with the closure).
            return respond(
                &counters,
                Err(HandlerError::Internal(
                    "the stream was already taken".into(),
                )),
                None,
            );
        }
        if timing {
            response
                .extensions_mut()
                .insert(run_timing(started.elapsed()));
        }
        return response;
    }
    let Some((producer, sink)) = response.body_mut().start() else {
        runner.record_job_time(started.elapsed());
        drop(slot);
        return respond(
            &counters,
            Ok(response),
            timing.then(|| run_timing(started.elapsed())),
        );
    };
    if timing {
        response
            .extensions_mut()
            .insert(run_timing(started.elapsed()));
    }
    // A stream's producer blocks between chunks: not on the connection's task. The slot moves
    // with it and is given back when the stream ends.
    // A runtime shutting down may drop the task unrun: its stream then ends aborted and is
    // counted failed, so the counters still add up.
    let unrun = FailedUnlessRun(Some(counters));
    tokio::task::spawn_blocking(move || {
        let mut unrun = unrun;
        unrun.0 = None;
        let runner = slot.runner();
        runner.stream(producer, sink);
        runner.record_job_time(started.elapsed());
        drop(slot);
    });
    response
}

/// A queued asynchronous run: its seat in the line, until its turn (then a [`Direct`] run in
/// the slot it was granted), its queue deadline (`504`), or shutdown (`503`). See the [module
/// docs](self). Dropped unserved (its client went away before its turn), it leaves the line,
/// counts `skipped`, and gives back its queue depth, or the running slot it was just granted.
pub(crate) struct Lined {
    runner: Arc<JobRunner>,
    seat: Arc<Seat>,
    /// Taken when served: run, or answered here.
    call: Option<HandlerFuture>,
    admitted_at: Instant,
    timing: bool,
}

/// How a [`Lined`] run's wait ended.
pub(crate) enum Turn {
    /// Answered without running (`504` or `503`, counted).
    Answered(JobResponse),
    /// Its turn: the run in its granted slot.
    Run(Direct),
}

impl Lined {
    /// A run waiting in `seat` of `runner`'s line since `admitted_at`; with `timing`, its answer
    /// carries its [`JobTiming`].
    pub(crate) fn new(
        runner: Arc<JobRunner>,
        seat: Arc<Seat>,
        call: HandlerFuture,
        admitted_at: Instant,
        timing: bool,
    ) -> Lined {
        Lined {
            runner,
            seat,
            call: Some(call),
            admitted_at,
            timing,
        }
    }

    /// The end of the wait, once the seat moved.
    fn turn(&mut self, cx: &mut Context<'_>) -> Poll<Turn> {
        let counters = self.runner.counters();
        let answer = match self.seat.standing_or_wake(cx.waker()) {
            Standing::Waiting | Standing::Left => return Poll::Pending,
            Standing::Granted => {
                let Some(call) = self.call.take() else {
                    return Poll::Pending;
                };
                let started = Instant::now();
                EndpointCounters::bump(&counters.async_runs);
                let slot = OwnedSlot::granted(self.runner.clone());
                let waited = self
                    .timing
                    .then(|| started.saturating_duration_since(self.admitted_at));
                return Poll::Ready(Turn::Run(Direct::new(
                    slot,
                    counters.clone(),
                    call,
                    started,
                    waited,
                )));
            }
            Standing::Shed => shutting_down(),
            Standing::Expired => waited_too_long(),
        };
        if self.call.take().is_none() {
            return Poll::Pending;
        }
        Poll::Ready(Turn::Answered(respond(counters, Err(answer), None)))
    }
}

impl Drop for Lined {
    fn drop(&mut self) {
        if self.call.is_none() {
            // Run or answered: nothing left to undo.
            return;
        }
        let left = self.seat.leave();
        if left {
            self.runner.line().remove(&self.seat);
            self.runner.release_seat();
        } else if self.seat.standing() == Standing::Granted {
            // Granted as the client went: the slot goes on to the next seat.
            drop(OwnedSlot::granted(self.runner.clone()));
        }
        EndpointCounters::bump(&self.runner.counters().skipped);
    }
}
