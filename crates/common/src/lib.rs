//! The contract every fiddler_crab mode and handler obeys.
//!
//! A request is admitted into its endpoint's bounded [`queue::HandoffQueue`] in O(1) or treated
//! as overflow; an idle executor takes the whole pending batch and runs it; the handler's answer
//! goes back to the waiting connection through a one-shot channel. Nothing here knows which modes
//! exist: `crab` and `jellyfish` implement [`executor::Executor`].
//!
//! # Layout
//! - [`handler`]: the handler trait and the request/response types handlers see.
//! - [`builtin`]: the `ping` and `echo` handlers.
//! - [`job`]: a job, its exactly-once reply and its outcome counting.
//! - [`counters`]: per-endpoint counters that add up.
//! - [`histogram`]: the lock-free job-time histogram behind `/metrics`.
//! - [`queue`]: the bounded handoff queue and the batches it hands over.
//! - [`executor`]: the executor trait, the per-job runner and the dispatcher loop.
//! - [`endpoint`]: a running endpoint (queue, runner, supervised dispatcher), admission.
//! - [`supervisor`]: restart-with-backoff for threads and tasks; the panic hook.
#![deny(missing_docs)]

pub mod builtin;
pub mod counters;
pub mod endpoint;
pub mod executor;
pub mod handler;
pub mod histogram;
pub mod job;
pub mod queue;
pub mod supervisor;
