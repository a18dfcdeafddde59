//! Warm worker processes: one long-lived process per concurrency slot of an endpoint, each
//! serving HTTP/1.1 on its own Unix socket, behind the endpoint's bounded queue.
//!
//! What is expensive to start (an interpreter, a model) starts once per slot instead of once per
//! request. The contract a worker obeys is in `docs/WORKERS.md`; this crate is the server's side:
//!
//! - **Start and readiness.** A worker gets `FIDDLER_WORKER_SOCKET`, `FIDDLER_WORKER_ID` and
//!   `FIDDLER_WORKER_PARENT_PID`; it is *ready* once its socket accepts (and `ready_path` answers
//!   2xx). No request ever goes to a worker that is not ready: a request waits for one (bounded
//!   by the endpoint's `queue_timeout_ms`), and `/readyz` says why the endpoint cannot serve.
//! - **One request at a time** per worker, over one kept-alive connection; with `max_batch`
//!   above 1, one batch at a time (`POST /.fiddler/batch`, one answer per request).
//! - **Faults.** A worker that dies mid-request: that request `502`, the worker restarted with
//!   exponential backoff. A crash loop makes the endpoint refuse new requests as overflow at once.
//!   A request past `timeout_ms`: `504`, the worker's process group SIGTERM, grace, SIGKILL, and a
//!   fresh worker at once.
//! - **Recycling and rolling restarts without a capacity dip**: a worker past `max_requests` (+
//!   jitter) or `max_rss_bytes`, or outdated by a restart (SIGUSR2, a changed `watch` file, a
//!   reload that changed its config), keeps serving until its successor is ready, then stops as
//!   soon as it is idle; successors start one at a time. While the traffic light says memory is
//!   short, a recycle goes the other way: the worker is retired first and its successor starts
//!   once it has exited.
//! - **No orphans**, even if the server is killed with SIGKILL: see [`process`].
//! - **A client that leaves** while its request runs in a worker: the request finishes and its
//!   answer is discarded; the worker stays healthy and is reused (cancelling would cost the
//!   worker's connection and, for most apps, gains nothing once the work has started). A
//!   streamed answer (no `Content-Length`: a generator, server-sent events) is forwarded as it
//!   comes instead; its client leaving mid-stream closes the worker connection, which is how a
//!   worker learns to stop (see `stream`).
//!
//! # Layout
//! - [`WorkerHandler`]: the [`Handler`] an endpoint calls; [`Pools`]: the server's pools by
//!   endpoint, kept across config reloads.
//! - [`pool`]: a running pool, checkout and return of a worker around one request.
//! - `state`: the pool's state and every decision about it, free of I/O.
//! - `supervisor`: the thread that starts, reaps, probes and polls.
//! - [`process`]: spawning a worker that dies with the server; socket directory; memory.
//! - `proxy`: the HTTP/1.1 exchange with a worker, hop-by-hop headers, bounded answers.
//! - `batch`: the batch wire format (`POST /.fiddler/batch`) for an endpoint with `max_batch`.
//! - [`status`]: `/status` and `/metrics` of a pool.
//! - `stream`: a worker's answer without a length, forwarded chunk by chunk.
#![deny(missing_docs)]
// `unsafe_code` is "deny" for this crate (Cargo.toml says why), not the workspace's "forbid":
// the one exception is `process::die_with_parent`.

mod batch;
pub mod pool;
pub mod process;
mod proxy;
mod state;
pub mod status;
mod stream;
mod supervisor;

pub use pool::WorkerPool;
pub use status::PoolStatus;

use children::Registry;
use common::handler::{
    Handler, HandlerError, HandlerSample, JobRequest, JobResponse, ResponseBody,
};
use config::WorkerConfig;
use light::TrafficLight;
use pool::Finished;
use proxy::Exchange;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A request that never reached its worker (the worker had died while idle) is sent to another
/// worker at most this many more times.
const MAX_UNSENT_RETRIES: usize = 3;

/// Runs an endpoint's requests on its warm worker processes. See the [crate docs](crate).
///
/// `handle` blocks its (executor) thread on the pool's own I/O runtime; it is never inline.
#[derive(Debug)]
pub struct WorkerHandler {
    pool: Arc<WorkerPool>,
    config: WorkerConfig,
    slots: usize,
    /// How long a request waits for a ready worker once its turn has come.
    wait_for_worker: Duration,
    released: AtomicBool,
}

impl WorkerHandler {
    /// Make the pool serve this handler's config and size, if it was adopted from an endpoint a
    /// reload replaces (a config that starts other workers rolls them; any other change applies to
    /// the running ones). A no-op for a fresh pool.
    pub fn activate(&self) {
        self.pool.reconfigure(self.config.clone(), self.slots);
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<WorkerPool> {
        &self.pool
    }

    /// One exchange with a worker, as [`Handler::handle`] makes it: check out a ready worker
    /// (waiting at most `wait_for_worker`), send `req` and read the answer (at most
    /// `max_response` body bytes, within `timeout_ms`), then `check` the answer; a request that
    /// never reached its worker goes to another one. An answer without a length is forwarded as a
    /// stream (unchecked), or refused with the reason in `refuse_unframed`. An answer refused is a broken
    /// exchange (its connection dropped, the worker handled as after any failed exchange).
    fn exchange<T>(
        &self,
        req: &JobRequest,
        max_response: impl Fn(&WorkerConfig) -> usize,
        refuse_unframed: Option<&str>,
        check: impl Fn(&JobResponse, &WorkerConfig) -> Result<T, String>,
    ) -> Result<(JobResponse, Option<T>), HandlerError> {
        let deadline = Instant::now() + self.wait_for_worker;
        let mut attempts = 0;
        loop {
            let mut lease = self.pool.checkout(deadline, self.wait_for_worker)?;
            let config = lease.config().clone();
            let started = Instant::now();
            let conn = lease.take_conn();
            let socket = lease.socket().to_path_buf();
            let exchange = if process::has_exited(lease.pid()) {
                // Died while idle, not yet reaped: nothing is sent to it.
                Exchange::Unsent("the worker had exited".into())
            } else {
                let cap = max_response(&config);
                self.pool.runtime().block_on(async {
                    let exchange = proxy::exchange(conn, &socket, req, cap);
                    tokio::time::timeout(config.timeout, exchange)
                        .await
                        .unwrap_or(Exchange::TimedOut)
                })
            };
            let (mut checked, mut refused) = (None, None);
            let exchange = match exchange {
                // No length (a generator, server-sent events): forwarded as it comes.
                Exchange::Streaming { head, body, conn } if refuse_unframed.is_none() => {
                    let until = started + config.timeout;
                    let stream =
                        stream::WorkerStream::new(self.pool.clone(), lease, body, conn, until);
                    let body = ResponseBody::stream(move |sink| stream.produce(sink));
                    return Ok((JobResponse::from_parts(head, body), None));
                }
                Exchange::Streaming { .. } => {
                    let cause = refuse_unframed.unwrap_or_default().to_string();
                    refused = Some(cause.clone());
                    Exchange::Broken(cause)
                }
                Exchange::Answered { response, conn } => match check(&response, &config) {
                    Ok(value) => {
                        checked = Some(value);
                        Exchange::Answered { response, conn }
                    }
                    Err(cause) => {
                        refused = Some(cause.clone());
                        Exchange::Broken(cause)
                    }
                },
                other => other,
            };
            match (self.pool.finish(lease, exchange), refused) {
                // The worker lives and answered: say what was wrong with the answer.
                (Finished::Done(Err(HandlerError::BadGateway(_))), Some(cause)) => {
                    return Err(HandlerError::BadGateway(cause))
                }
                (Finished::Done(result), _) => return result.map(|r| (r, checked)),
                // Nothing reached that worker (it died idle): another one may take it.
                (Finished::Retry(_), _) if attempts < MAX_UNSENT_RETRIES => attempts += 1,
                (Finished::Retry(error), _) => {
                    return self.pool.shutdown_aware(Err(error)).map(|r| (r, None))
                }
            }
        }
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.pool.release();
        }
    }
}

impl Handler for WorkerHandler {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        self.exchange(req, |c| c.max_response_bytes, None, |_, _| Ok(()))
            .map(|(response, _)| response)
    }

    /// One `POST /.fiddler/batch` to one worker (see docs/WORKERS.md), bounded by `timeout_ms`
    /// for the whole batch; its answer holds one response per request, each at most
    /// `max_response_bytes`. A malformed answer fails every request with `502`.
    fn handle_batch(&self, reqs: &[&JobRequest]) -> Vec<Result<JobResponse, HandlerError>> {
        let n = reqs.len();
        let request = batch::encode(reqs);
        let cap = |c: &WorkerConfig| {
            c.max_response_bytes
                .saturating_add(batch::ITEM_HEAD_ALLOWANCE)
                .saturating_mul(n)
        };
        let malformed = "malformed batch answer from the worker (POST /.fiddler/batch)";
        let unframed = format!("{malformed}: it has no Content-Length");
        let decoded = self.exchange(&request, cap, Some(&unframed), |answer, config| {
            batch::decode(answer, n, config.max_response_bytes)
                .map_err(|why| format!("{malformed}: {why}"))
        });
        match decoded {
            Ok((_, Some(items))) => items
                .into_iter()
                .map(|item| item.map_err(HandlerError::BadGateway))
                .collect(),
            Ok((_, None)) => {
                let e = HandlerError::Internal("batch answer lost".into());
                (0..n).map(|_| Err(e.clone())).collect()
            }
            Err(e) => {
                tracing::debug!(endpoint = %self.pool.endpoint(), jobs = n, cause = %e, "batch failed");
                (0..n).map(|_| Err(e.clone())).collect()
            }
        }
    }

    fn can_batch(&self) -> bool {
        true
    }

    fn available(&self) -> bool {
        self.pool.available()
    }

    fn ready(&self) -> Result<(), String> {
        self.pool.ready()
    }

    fn status(&self) -> Option<serde_json::Value> {
        serde_json::to_value(self.pool.status()).ok()
    }

    fn samples(&self) -> Vec<HandlerSample> {
        self.pool.samples()
    }

    fn close(&self) {
        self.release();
    }
}

impl Drop for WorkerHandler {
    fn drop(&mut self) {
        self.release();
    }
}

/// The server's worker pools, by endpoint path. A pool outlives a config reload that replaces its
/// endpoint: the new endpoint's handler adopts it (and rolls its workers if their config
/// changed), so a reload never waits for a model to load again.
#[derive(Debug)]
pub struct Pools {
    children: Arc<Registry>,
    /// The server's traffic light, for the pools' recycling order.
    light: TrafficLight,
    pools: Mutex<HashMap<String, Weak<WorkerPool>>>,
    /// The stopped flag of every pool started and not yet seen stopped.
    running: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Pools {
    /// No pools yet; workers will register in `children`, and recycle by retiring first while
    /// `light` says memory is short.
    pub fn new(children: Arc<Registry>, light: TrafficLight) -> Pools {
        Pools {
            children,
            light,
            pools: Mutex::new(HashMap::new()),
            running: Mutex::new(Vec::new()),
        }
    }

    /// A handler for the endpoint at `path` with `slots` workers of `config`, waiting at most
    /// `wait_for_worker` for a ready worker. Adopts the endpoint's running pool if there is one
    /// (call [`WorkerHandler::activate`] once the endpoint serves); otherwise starts a pool.
    pub fn handler(
        &self,
        path: &str,
        config: &WorkerConfig,
        slots: usize,
        wait_for_worker: Duration,
    ) -> std::io::Result<Arc<WorkerHandler>> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, pool| pool.strong_count() > 0);
        let adopted = pools
            .get(path)
            .and_then(Weak::upgrade)
            .filter(|pool| pool.acquire());
        let pool = match adopted {
            Some(pool) => pool,
            None => {
                let pool = WorkerPool::start(
                    path,
                    config.clone(),
                    slots,
                    self.children.clone(),
                    self.light.clone(),
                )?;
                pools.insert(path.to_string(), Arc::downgrade(&pool));
                let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
                running.retain(|stopped| !stopped.load(Ordering::Acquire));
                running.push(pool.stopped_flag());
                pool
            }
        };
        Ok(Arc::new(WorkerHandler {
            pool,
            config: config.clone(),
            slots: slots.max(1),
            wait_for_worker,
            released: AtomicBool::new(false),
        }))
    }

    /// Restart every pool's workers, one at a time each (SIGUSR2). Returns how many pools.
    pub fn restart_all(&self, why: &str) -> usize {
        let pools: Vec<Arc<WorkerPool>> = self
            .pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for pool in &pools {
            pool.restart(why);
        }
        pools.len()
    }

    /// True once every pool has stopped (after shutdown closed them: workers gone, socket
    /// directories removed).
    pub fn all_stopped(&self) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .all(|stopped| stopped.load(Ordering::Acquire))
    }

    /// After shutdown: wait until every pool has stopped, at most `bound`.
    pub async fn wait_stopped(&self, bound: Duration) {
        let deadline = tokio::time::Instant::now() + bound;
        while !self.all_stopped() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.all_stopped() {
            tracing::warn!(
                bound_ms = bound.as_millis() as u64,
                "worker pools still stopping; leaving them"
            );
        }
    }

    /// The running pool of the endpoint at `path`, if any.
    pub fn get(&self, path: &str) -> Option<Arc<WorkerPool>> {
        self.pools
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .and_then(Weak::upgrade)
    }
}
