//! The contract every fiddler_crab mode and handler obeys.
//!
//! A request goes to its endpoint's [`admission::Admission`], which runs a cheap handler inline,
//! admits the job into the bounded [`queue::HandoffQueue`] in O(1), or treats it as overflow, and
//! counts the outcome; an idle executor takes the whole pending batch and runs it; the handler's
//! answer goes back to the waiting connection through a one-shot channel. Nothing here runs a
//! mode: `crab`, `jellyfish` and `adaptive` implement [`executor::Executor`].
//!
//! # Layout
//! - [`handler`]: the handler trait and the request/response types handlers see.
//! - [`body`]: a response body, whole or streamed from the executor thread through a bounded
//!   channel.
//! - [`builtin`]: the `ping` and `echo` handlers.
//! - [`job`]: a job, its exactly-once reply and its outcome counting.
//! - [`counters`]: per-endpoint counters that add up.
//! - [`histogram`]: the lock-free job-time histogram behind `/metrics`.
//! - [`queue`]: the bounded handoff queue and the batches it hands over.
//! - [`batching`]: dynamic batching: units of work, the wait for a batch to fill, batch sizes.
//! - [`executor`]: the executor trait, the per-job runner (its running slots cap inline and
//!   executor runs together) and the dispatcher loop.
//! - [`admission`]: one request in, one counted outcome out (inline, asynchronous, queued,
//!   refused), and the wait for a queued job's reply.
//! - `async_run`: an asynchronous handler's run on the client's connection task, at once or after
//!   its turn in the line.
//! - `line`: the queued asynchronous runs waiting, each on its own task, for a running slot.
//! - [`endpoint`]: a running endpoint: config, admission, supervised dispatcher, status.
//! - [`supervisor`]: restart-with-backoff for threads and tasks; the panic hook.
#![deny(missing_docs)]

pub mod admission;
mod async_run;
pub mod batching;
pub mod body;
pub mod builtin;
pub mod counters;
pub mod endpoint;
pub mod executor;
pub mod handler;
pub mod histogram;
pub mod job;
mod line;
pub mod queue;
pub mod supervisor;
