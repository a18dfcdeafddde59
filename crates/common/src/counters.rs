//! Per-endpoint counters that add up: admitted = completed + failed + timed_out + skipped +
//! client_gone.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Outcome counters of one endpoint. Every admitted job is counted in exactly one outcome.
///
/// Only this crate changes them, each in one place per outcome: `admitted` where a job enters the
/// queue or an inline or asynchronous run takes its running slot (also `async_runs` for the latter); `completed` / `failed` / `timed_out` where a
/// result becomes a response (`job::respond`); `skipped` at a job's turn; `failed` also for a job
/// dropped unanswered; `overflowed` and `shed_by_wait` where [`crate::admission::Admission`]
/// refuses. Everyone else reads a [`CountersSnapshot`].
#[derive(Debug, Default)]
pub struct EndpointCounters {
    /// See [`CountersSnapshot::admitted`].
    pub(crate) admitted: AtomicU64,
    /// See [`CountersSnapshot::completed`].
    pub(crate) completed: AtomicU64,
    /// See [`CountersSnapshot::failed`].
    pub(crate) failed: AtomicU64,
    /// See [`CountersSnapshot::timed_out`].
    pub(crate) timed_out: AtomicU64,
    /// See [`CountersSnapshot::skipped`].
    pub(crate) skipped: AtomicU64,
    /// See [`CountersSnapshot::client_gone`].
    pub(crate) client_gone: AtomicU64,
    /// See [`CountersSnapshot::overflowed`].
    pub(crate) overflowed: AtomicU64,
    /// See [`CountersSnapshot::panics`].
    pub(crate) panics: AtomicU64,
    /// See [`CountersSnapshot::shed_by_wait`].
    pub(crate) shed_by_wait: AtomicU64,
    /// See [`CountersSnapshot::async_runs`].
    pub(crate) async_runs: AtomicU64,
}

/// A point-in-time copy of [`EndpointCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CountersSnapshot {
    /// Admitted: entered the handoff queue, or ran inline in a free running slot.
    pub admitted: u64,
    /// Ran and answered by the handler (any status the handler chose).
    pub completed: u64,
    /// Answered with an error: handler failure (502/500), a panic, or shutdown (503).
    pub failed: u64,
    /// Answered `504`: waited past `queue_timeout_ms`, or ran past the handler's time limit.
    pub timed_out: u64,
    /// Not run because the client had gone before the job's turn came.
    pub skipped: u64,
    /// Stopped while running because the client went away (`on_client_gone = "stop"`).
    pub client_gone: u64,
    /// Found the queue full: ignored or rejected. Not admitted, so outside the sum above.
    pub overflowed: u64,
    /// Handler panics caught (each also counted in `failed`).
    pub panics: u64,
    /// Overflowed because the expected wait already exceeded the queue timeout (also in
    /// `overflowed`).
    pub shed_by_wait: u64,
    /// Admitted and run asynchronously on the client's connection task, at once or after a turn
    /// in the endpoint's line, never on an executor thread
    /// ([`crate::handler::Handler::call_async`]). Also in `admitted`, beside the executor's and
    /// inline runs.
    pub async_runs: u64,
}

impl EndpointCounters {
    /// Add one to `counter`.
    #[inline]
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Count one answered job by its result: completed, timed out, or failed.
    pub(crate) fn record<T, E: OutcomeKind>(&self, result: &Result<T, E>) {
        match result {
            Ok(_) => Self::bump(&self.completed),
            Err(e) => self.record_error(e),
        }
    }

    /// Count one job that ended in `error`: timed out, client gone, or failed.
    pub(crate) fn record_error<E: OutcomeKind>(&self, error: &E) {
        let counter = if error.is_timeout() {
            &self.timed_out
        } else if error.is_client_gone() {
            &self.client_gone
        } else {
            &self.failed
        };
        Self::bump(counter);
    }

    /// Read every counter.
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            admitted: self.admitted.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            timed_out: self.timed_out.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            client_gone: self.client_gone.load(Relaxed),
            overflowed: self.overflowed.load(Relaxed),
            panics: self.panics.load(Relaxed),
            shed_by_wait: self.shed_by_wait.load(Relaxed),
            async_runs: self.async_runs.load(Relaxed),
        }
    }
}

impl CountersSnapshot {
    /// Admitted jobs that have an outcome.
    pub fn answered(&self) -> u64 {
        self.completed + self.failed + self.timed_out + self.skipped + self.client_gone
    }
}

/// How an error is counted.
pub trait OutcomeKind {
    /// True if the outcome counts as timed out rather than failed.
    fn is_timeout(&self) -> bool;

    /// True if the job was stopped because its client went away.
    fn is_client_gone(&self) -> bool {
        false
    }
}

impl OutcomeKind for crate::handler::HandlerError {
    fn is_timeout(&self) -> bool {
        matches!(self, crate::handler::HandlerError::Timeout(_))
    }

    fn is_client_gone(&self) -> bool {
        matches!(self, crate::handler::HandlerError::ClientGone(_))
    }
}
