//! A job: one admitted request, its one-shot reply, and the state that makes the reply exactly-once.
//!
//! A job is `Queued` until either the executor starts it or the front end's queue deadline expires
//! it; an atomic compare-and-swap decides which, so a job is never both answered `504` and run.
//! A job counts as admitted when it enters the queue ([`crate::queue::HandoffQueue::try_push`]), and
//! then in exactly one outcome: by `respond` (from [`Job::finish`], or from the front end's
//! expiry in [`crate::admission`]), by the executor's skip check, or, if it is dropped unanswered
//! (a crash), by its `Drop`.
//!
//! The same transition out of `Queued` gives the job's queue slot back, exactly once: whoever wins
//! it (the executor starting the job, the front end expiring it, or the drop of a job that never
//! got its turn) releases the slot. So a job answered `504` at its deadline stops counting against
//! the queue at once, not when the executor reaches it.

use crate::counters::EndpointCounters;
use crate::handler::ClientWatch;
use crate::handler::{text_response, HandlerError, JobRequest, JobResponse};
use hyper::StatusCode;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const EXPIRED: u8 = 2;

/// The state a job and its waiting front end share.
#[derive(Debug, Default)]
pub(crate) struct Ticket {
    state: AtomicU8,
    /// The queue's depth counter, once the job holds a slot in it.
    slot: OnceLock<Arc<AtomicUsize>>,
    /// Set when the front end stops waiting for the reply (its client went away).
    gone: AtomicBool,
}

impl Ticket {
    /// True once the front end stopped waiting for this job's reply.
    pub(crate) fn client_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Front end: a guard that marks the client gone when dropped, that is when the wait for the
    /// reply ends, by an answer (then nobody looks any more) or by the client going away.
    pub(crate) fn gone_on_drop(&self) -> GoneOnDrop<'_> {
        GoneOnDrop(self)
    }

    /// Front end, at the queue deadline (or shutdown): expire the job if it has not started. True
    /// if it expired: the front end answers it, its queue slot is free, and the executor will
    /// discard it unrun.
    pub(crate) fn expire(&self) -> bool {
        self.leave_queue(EXPIRED)
    }

    /// The queue: the job now holds one unit of `depth`, released when it leaves the queue.
    fn hold(&self, depth: Arc<AtomicUsize>) {
        let _ = self.slot.set(depth);
    }

    /// True once the job entered a queue (it was admitted).
    fn is_admitted(&self) -> bool {
        self.slot.get().is_some()
    }

    fn start(&self) -> bool {
        self.leave_queue(STARTED)
    }

    /// Move out of `Queued`; the winner of this transition releases the queue slot.
    fn leave_queue(&self, to: u8) -> bool {
        let left = self
            .state
            .compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if left {
            if let Some(depth) = self.slot.get() {
                depth.fetch_sub(1, Ordering::AcqRel);
            }
        }
        left
    }
}

/// Marks its ticket's client gone when dropped (see [`Ticket::gone_on_drop`]).
pub(crate) struct GoneOnDrop<'a>(&'a Ticket);

impl GoneOnDrop<'_> {
    /// Leave the client's state as it is: a streamed answer's head arrived, and from then on the
    /// producer learns of a client that goes away from its sink (`BodySink::send` fails).
    pub(crate) fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for GoneOnDrop<'_> {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::Release);
    }
}

/// One admitted request on its way through the queue to a handler.
#[derive(Debug)]
pub struct Job {
    /// The request (boxed: a queued job is a few words, cheap to move through the queue).
    pub request: Box<JobRequest>,
    /// When the job entered the queue.
    pub admitted_at: Instant,
    ticket: Arc<Ticket>,
    reply: Option<oneshot::Sender<JobResponse>>,
    counters: Arc<EndpointCounters>,
    started_at: Option<Instant>,
}

/// How long a job waited and ran (for a streamed response: until its head was sent); attached to
/// its response's extensions for the access log.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobTiming {
    /// From admission to the start of its turn.
    pub queue_wait: Duration,
    /// From the start of its turn to its answer.
    pub run: Duration,
}

/// The front end's half of a queued job: hand it to [`crate::admission::Admission::wait`] for the
/// one reply.
#[derive(Debug)]
pub struct Waiter {
    /// Shared with the job; used to expire it at the queue deadline.
    pub(crate) ticket: Arc<Ticket>,
    /// Resolves with the response, or with an error if the job was dropped unanswered.
    pub(crate) reply: oneshot::Receiver<JobResponse>,
}

/// What the executor should do with a job whose turn has come.
#[derive(Debug)]
pub enum Turn {
    /// Run it.
    Run(Job),
    /// Already answered or not wanted (expired, client gone, waited too long): counted, nothing to do.
    Done,
}

impl Job {
    /// A new job for `request`, and the front end's waiter for it.
    pub fn new(request: JobRequest, counters: Arc<EndpointCounters>) -> (Job, Waiter) {
        let (tx, rx) = oneshot::channel();
        let ticket = Arc::new(Ticket::default());
        let job = Job {
            request: Box::new(request),
            admitted_at: Instant::now(),
            ticket: ticket.clone(),
            reply: Some(tx),
            counters,
            started_at: None,
        };
        (job, Waiter { ticket, reply: rx })
    }

    /// The request back from a job the queue refused (never admitted), for another endpoint: as
    /// the front end made it, without this job's client watch.
    pub(crate) fn into_request(mut self) -> Box<JobRequest> {
        let unspecified = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
        let blank = JobRequest {
            method: hyper::Method::GET,
            uri: hyper::Uri::default(),
            version: hyper::Version::HTTP_11,
            headers: hyper::HeaderMap::new(),
            body: bytes::Bytes::new(),
            remote_addr: unspecified,
            local_addr: unspecified,
            client: ClientWatch::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        };
        let mut request = std::mem::replace(&mut self.request, Box::new(blank));
        request.client = ClientWatch::default();
        request
    }

    /// Let the handler see when the client goes away while the job runs
    /// ([`JobRequest::client`](crate::handler::JobRequest::client)): `on_client_gone = "stop"`.
    pub fn watch_client(&mut self) {
        self.request.client = ClientWatch::of(self.ticket.clone());
    }

    /// True if the client is gone: nobody waits for the reply.
    pub fn client_gone(&self) -> bool {
        self.reply.as_ref().is_none_or(|tx| tx.is_closed())
    }

    /// The executor's check when the job's turn comes: drop it if the front end already answered
    /// `504`, skip it if the client is gone, shed it (`503`) if the server is `closing`, answer
    /// `504` if it waited longer than `queue_timeout`. Otherwise the job is started: run it.
    pub fn take_turn(mut self, queue_timeout: Duration, closing: bool) -> Turn {
        self.started_at = Some(Instant::now());
        if !self.ticket.start() {
            // Expired by the front end, which answered and counted it.
            self.reply = None;
            return Turn::Done;
        }
        if self.client_gone() {
            EndpointCounters::bump(&self.counters.skipped);
            self.reply = None;
            return Turn::Done;
        }
        if closing {
            self.shed();
            return Turn::Done;
        }
        if self.admitted_at.elapsed() > queue_timeout {
            self.finish(Err(waited_too_long()));
            return Turn::Done;
        }
        Turn::Run(self)
    }

    /// Answer the job and count its outcome. A client that left meanwhile just never reads it.
    pub fn finish(mut self, result: Result<JobResponse, HandlerError>) {
        let timing = self.timing();
        let response = respond(&self.counters, result, Some(timing));
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(response);
        }
    }

    /// Send the head of a streamed response (its body the channel's receiving half), without
    /// counting an outcome: the runner counts it once, when the stream ends.
    pub(crate) fn send_head(mut self, mut response: JobResponse) {
        let timing = self.timing();
        response.extensions_mut().insert(timing);
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(response);
        }
    }

    fn timing(&self) -> JobTiming {
        let now = Instant::now();
        let started = self.started_at.unwrap_or(now);
        JobTiming {
            queue_wait: started.saturating_duration_since(self.admitted_at),
            run: now.saturating_duration_since(started),
        }
    }

    /// The queue admits the job: it holds one unit of the queue's `depth` until it leaves the
    /// queue, and counts as admitted. Called once, before any executor can see the job.
    pub(crate) fn admit(&self, depth: Arc<AtomicUsize>) {
        self.ticket.hold(depth);
        EndpointCounters::bump(&self.counters.admitted);
    }

    /// Forget the job without an answer or an outcome (its waiter sees the reply channel close).
    /// For tests and benchmarks that play the executor; a job the queue refused needs no discard.
    pub fn discard(mut self) {
        self.reply = None;
    }

    /// Answer `503` because the server is shutting down; the job never runs.
    pub fn shed(self) {
        self.finish(Err(shutting_down()));
    }
}

/// The one place a handler's result becomes its response: count the outcome (completed, timed
/// out or failed), turn an error into its plain-text status, attach the timing for the access log.
pub(crate) fn respond(
    counters: &EndpointCounters,
    result: Result<JobResponse, HandlerError>,
    timing: Option<JobTiming>,
) -> JobResponse {
    // One match, the response moved once: a response is a few hundred bytes, and rebuilding the
    // `Result` around it to count it would copy it twice more on every request.
    let mut response = match result {
        // A stream reaching this point would have nobody to produce it (an inline handler's):
        // refuse.
        Ok(response) if response.body().is_unstarted() => failed(
            counters,
            HandlerError::Internal("this handler cannot stream its answer".into()),
        ),
        Ok(response) => {
            EndpointCounters::bump(&counters.completed);
            response
        }
        Err(e) => failed(counters, e),
    };
    if let Some(timing) = timing {
        response.extensions_mut().insert(timing);
    }
    response
}

/// A handler's error counted and turned into its plain-text status.
fn failed(counters: &EndpointCounters, e: HandlerError) -> JobResponse {
    counters.record_error(&e);
    text_response(e.status(), &e.to_string())
}

/// A job shed because the server is shutting down: `503`.
pub(crate) fn shutting_down() -> HandlerError {
    HandlerError::Unavailable("server shutting down".into())
}

/// A job still queued at its deadline: `504`.
pub(crate) fn waited_too_long() -> HandlerError {
    HandlerError::Timeout("waited in queue past queue_timeout_ms".into())
}

impl Drop for Job {
    fn drop(&mut self) {
        // Never got its turn: give its queue slot back.
        self.ticket.leave_queue(EXPIRED);
        // Admitted, and dropped with its reply still pending: a crash unwound past it. The front
        // end sees the closed channel and answers 500; count it here so the sum still adds up.
        // (A job the queue refused was never admitted: nothing to count.)
        if self.reply.is_some() && self.ticket.is_admitted() {
            EndpointCounters::bump(&self.counters.failed);
        }
    }
}

/// Status for a job whose executor dropped it unanswered.
pub(crate) const DROPPED_STATUS: StatusCode = StatusCode::INTERNAL_SERVER_ERROR;
