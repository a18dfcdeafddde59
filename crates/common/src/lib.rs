//! The contract every fiddler_crab mode obeys, and the shared front end.
//!
//! A request is admitted into its endpoint's bounded [`queue::HandoffQueue`] in O(1) or treated
//! as overflow; an idle executor takes the whole pending batch and runs it; the handler's answer
//! goes back to the waiting connection through a one-shot channel. Nothing here knows which modes
//! exist: `crab` and `jellyfish` implement [`executor::Executor`].
//!
//! # Layout
//! - [`config`]: the TOML config, raw and validated.
//! - [`handler`]: the handler trait and the request/response types handlers see.
//! - [`builtin`]: the `ping` and `echo` handlers.
//! - [`job`]: a job, its exactly-once reply and its outcome counting.
//! - [`counters`]: per-endpoint counters that add up.
//! - [`histogram`]: the lock-free job-time histogram behind `/metrics`.
//! - [`queue`]: the bounded handoff queue and the batches it hands over.
//! - [`executor`]: the executor trait, the per-job runner and the dispatcher loop.
//! - [`endpoint`]: a running endpoint (queue, runner, supervised dispatcher), admission.
//! - [`exec`]: the external-program (CGI/1.1) handler and the child registry.
//! - [`supervisor`]: restart-with-backoff for threads and tasks; the panic hook.
//! - [`light`]: the traffic light (CPU, memory, pressure; cgroup-aware) and its sampler.
//! - [`readiness`]: `/readyz` with hysteresis.
//! - [`tls`]: HTTPS: certificate store (reloadable), rustls config, bounded handshake.
//! - [`frontend`]: accept loop, router, admission, `/status`, `/metrics`, access log.
#![deny(missing_docs)]

pub mod builtin;
pub mod config;
pub mod counters;
pub mod endpoint;
pub mod exec;
pub mod executor;
pub mod frontend;
pub mod handler;
pub mod histogram;
pub mod job;
pub mod light;
pub mod queue;
pub mod readiness;
pub mod supervisor;
pub mod tls;
