//! A running pool: its state behind one mutex, the supervisor thread that owns its processes and
//! its I/O runtime, and the checkout and return of a worker around one request.
//!
//! The mutex is held only for bookkeeping, never across a process start, a system call that may
//! block, or network I/O; so `/status`, probes and admission never wait on a worker.

use crate::proxy::{Conn, Exchange};
use crate::state::{Checkout, PoolState};
use crate::status::PoolStatus;
use crate::{process, supervisor};
use children::Registry;
use common::handler::{HandlerError, HandlerSample, JobResponse};
use config::WorkerConfig;
use light::TrafficLight;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a failed exchange waits to learn whether the worker died (its waiter reaps it within
/// milliseconds of its socket closing), to answer "worker exited" rather than a vaguer failure.
const EXIT_WAIT: Duration = Duration::from_secs(1);

/// What the pool's threads share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<PoolState>,
    /// Signalled on every change: requests waiting for a worker, the supervisor, exits.
    changed: Condvar,
    /// Crash-looping with no worker ready, for admission (one atomic load).
    unavailable: AtomicBool,
    /// The server's child registry (workers register there; its shutdown state).
    pub(crate) children: Arc<Registry>,
    /// Set by the supervisor once every worker is gone and the socket directory removed.
    pub(crate) stopped: Arc<AtomicBool>,
}

impl Shared {
    /// Lock the state, taking it over from a thread that panicked while holding it: every state
    /// is valid between two statements.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a change: bump the epoch, refresh the admission flag, wake every waiter.
    pub(crate) fn changed(&self, state: &mut PoolState) {
        state.epoch = state.epoch.wrapping_add(1);
        self.refresh(state);
        self.changed.notify_all();
    }

    /// Refresh the admission flag and wake every waiter, without marking a change for the
    /// supervisor (which calls this after each plan).
    pub(crate) fn notify(&self, state: &PoolState) {
        self.refresh(state);
        self.changed.notify_all();
    }

    /// Refresh the admission flag (time alone can end a crash loop).
    pub(crate) fn refresh(&self, state: &PoolState) {
        self.unavailable
            .store(state.unavailable(Instant::now()), Ordering::Relaxed);
    }

    /// Wait for a change, at most `timeout`.
    pub(crate) fn wait<'a>(
        &self,
        guard: MutexGuard<'a, PoolState>,
        timeout: Duration,
    ) -> MutexGuard<'a, PoolState> {
        match self.changed.wait_timeout(guard, timeout) {
            Ok((guard, _)) => guard,
            Err(poisoned) => poisoned.into_inner().0,
        }
    }
}

/// One endpoint's worker processes. Shared by the handlers of the endpoints that use it (two
/// while a reload replaces the endpoint); closes when the last one releases it.
#[derive(Debug)]
pub struct WorkerPool {
    endpoint: String,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Handle,
}

/// How a request's exchange with its worker ended, for the handler.
#[derive(Debug)]
pub(crate) enum Finished {
    /// The request's answer (or error).
    Done(Result<JobResponse, HandlerError>),
    /// Nothing reached the worker (it was gone): try another; this error if none is left.
    Retry(HandlerError),
}

/// How a streamed answer ended, for [`WorkerPool::stream_ended`].
#[derive(Debug)]
pub(crate) enum StreamEnd {
    /// The whole answer was forwarded; the connection, if it can carry another request.
    Completed(Option<Conn>),
    /// We closed the connection mid-answer (client gone, too large, slow reader).
    Dropped,
    /// The worker paused past `stream_idle_timeout_ms` or ran past `timeout_ms`.
    TimedOut(String),
    /// The connection broke on the worker's side (it died, or ended the answer unterminated).
    Broken(String),
}

/// A worker checked out for one request. Returned with [`WorkerPool::finish`]; if dropped
/// instead (the request's thread unwound), the worker is stopped.
#[derive(Debug)]
pub(crate) struct Lease {
    shared: Arc<Shared>,
    checkout: Checkout,
    config: Arc<WorkerConfig>,
    returned: bool,
}

impl Lease {
    /// The worker's kept-alive connection, if it has one that has been idle less than
    /// `keepalive_timeout_ms` (an older one is dropped, which closes it, here, outside the pool's
    /// lock). A server that closes idle connections itself (gunicorn's threaded workers after
    /// 2 s, uvicorn after 5 s) may close one just as a request is written into it; that request
    /// may have been read, so it could never be sent again: it would be a `502`.
    pub(crate) fn take_conn(&mut self) -> Option<Conn> {
        let entry = self.checkout.conn.take()?;
        relay::within_keepalive(entry, self.config.keepalive_timeout)
    }

    /// The worker's socket.
    pub(crate) fn socket(&self) -> &Path {
        &self.checkout.socket
    }

    /// The worker's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.checkout.pid
    }

    /// The pool's config when the worker was checked out.
    pub(crate) fn config(&self) -> &Arc<WorkerConfig> {
        &self.config
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.returned {
            let mut state = self.shared.lock();
            state.abandoned(self.checkout.key, Instant::now());
            self.shared.changed(&mut state);
        }
    }
}

impl WorkerPool {
    /// Start a pool of `slots` workers of `config` for `endpoint`, used by one handler: its
    /// socket directory, and its supervisor thread, which starts the workers at once. `light`'s
    /// memory level orders recycling (retire first while memory is short).
    pub fn start(
        endpoint: &str,
        config: WorkerConfig,
        slots: usize,
        children: Arc<Registry>,
        light: TrafficLight,
    ) -> io::Result<Arc<WorkerPool>> {
        let dir = process::SocketDir::create(config.socket_dir.as_deref())?;
        let socket_dir = dir.path().display().to_string();
        let shared = Arc::new(Shared {
            state: Mutex::new(PoolState::new(endpoint, config, slots.max(1), light)),
            changed: Condvar::new(),
            unavailable: AtomicBool::new(false),
            children,
            stopped: Arc::new(AtomicBool::new(false)),
        });
        let runtime = supervisor::spawn(endpoint, shared.clone(), dir)?;
        tracing::info!(endpoint, workers = slots, %socket_dir, "worker pool started");
        Ok(Arc::new(WorkerPool {
            endpoint: endpoint.to_string(),
            shared,
            runtime,
        }))
    }

    /// The endpoint the pool serves.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One more handler uses the pool; false if it is already closing (then start a new one).
    pub fn acquire(&self) -> bool {
        let mut state = self.shared.lock();
        if state.closing {
            return false;
        }
        state.users += 1;
        true
    }

    /// A handler is done with the pool; the last one closes it: every worker is stopped once
    /// idle and none is started again.
    pub fn release(&self) {
        let mut state = self.shared.lock();
        state.users = state.users.saturating_sub(1);
        if state.users == 0 && !state.closing {
            state.closing = true;
            tracing::info!(endpoint = %self.endpoint, "worker pool closing");
        }
        self.shared.changed(&mut state);
    }

    /// Serve with `config` and `slots` workers from now on; a changed config replaces every
    /// worker, one at a time (a rolling restart).
    pub fn reconfigure(&self, config: WorkerConfig, slots: usize) {
        let mut state = self.shared.lock();
        state.reconfigure(config, slots.max(1));
        self.shared.changed(&mut state);
    }

    /// Replace every worker, one at a time, each only once its successor is ready.
    pub fn restart(&self, why: &str) {
        let mut state = self.shared.lock();
        if !state.closing {
            state.restart(why);
            self.shared.changed(&mut state);
        }
    }

    /// False while crash-looping with no worker ready (one atomic load).
    pub fn available(&self) -> bool {
        !self.shared.unavailable.load(Ordering::Relaxed)
    }

    /// `Err` with the reason while no worker is ready.
    pub fn ready(&self) -> Result<(), String> {
        let state = self.shared.lock();
        // A closing pool answers its requests at once (503): nothing to wait for.
        if state.ready_count() > 0 || state.closing {
            return Ok(());
        }
        let now = Instant::now();
        Err(if state.crash_loop(now) {
            format!(
                "no worker ready: crash loop ({} exits within crash_loop_window_ms; last: {})",
                state.recent_exits(now),
                state.last_exit().unwrap_or("unknown")
            )
        } else if state.exits_total > 0 {
            format!(
                "no worker ready: restarting (last: {})",
                state.last_exit().unwrap_or("unknown")
            )
        } else {
            format!("no worker ready yet ({} starting)", state.slots)
        })
    }

    /// The pool's line in `/status`.
    pub fn status(&self) -> PoolStatus {
        PoolStatus::of(&self.shared.lock(), Instant::now())
    }

    /// The pool's numbers for `/metrics`.
    pub fn samples(&self) -> Vec<HandlerSample> {
        crate::status::samples(&self.shared.lock(), Instant::now())
    }

    /// The pool's I/O runtime (driven by its own thread).
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// Check out an idle, ready worker for one request, waiting until `deadline` at most (`wait`
    /// is that bound as configured, for the message). Fails at once while the pool is closed or
    /// crash-looping with no worker ready.
    pub(crate) fn checkout(
        &self,
        deadline: Instant,
        wait: Duration,
    ) -> Result<Lease, HandlerError> {
        let mut state = self.shared.lock();
        loop {
            if state.closing {
                return Err(HandlerError::Unavailable("server shutting down".into()));
            }
            if let Some(checkout) = state.checkout() {
                return Ok(Lease {
                    shared: self.shared.clone(),
                    config: state.config.clone(),
                    checkout,
                    returned: false,
                });
            }
            let now = Instant::now();
            if state.unavailable(now) {
                return Err(HandlerError::Unavailable(format!(
                    "no worker available: {} exits within crash_loop_window_ms (last: {})",
                    state.recent_exits(now),
                    state.last_exit().unwrap_or("unknown")
                )));
            }
            if now >= deadline {
                return Err(HandlerError::Timeout(format!(
                    "no worker became ready within {} ms",
                    wait.as_millis()
                )));
            }
            state = self.shared.wait(state, deadline - now);
        }
    }

    /// Return the worker after its exchange and turn the exchange into the request's answer, or
    /// into a retry on another worker when nothing reached this one.
    pub(crate) fn finish(&self, mut lease: Lease, exchange: Exchange) -> Finished {
        lease.returned = true;
        let key = lease.checkout.key;
        let config = lease.config.clone();
        let result = match exchange {
            Exchange::Answered { response, conn } => {
                let rss = config
                    .max_rss_bytes
                    .and_then(|_| process::rss_bytes(lease.checkout.pid));
                let mut state = self.shared.lock();
                state.answered(key, Instant::now(), rss, conn);
                self.shared.changed(&mut state);
                Ok(response)
            }
            Exchange::TimedOut => {
                let mut state = self.shared.lock();
                state.timed_out(key, Instant::now());
                self.shared.changed(&mut state);
                tracing::warn!(endpoint = %self.endpoint, pid = lease.checkout.pid, timeout_ms = config.timeout.as_millis() as u64, "worker ran past timeout_ms; stopping it");
                Err(HandlerError::Timeout(format!(
                    "worker ran past timeout_ms ({} ms) and was replaced",
                    config.timeout.as_millis()
                )))
            }
            Exchange::TooLarge => {
                let mut state = self.shared.lock();
                state.answer_dropped(key, Instant::now());
                self.shared.changed(&mut state);
                Err(HandlerError::BadGateway(format!(
                    "worker answer larger than max_response_bytes ({})",
                    config.max_response_bytes
                )))
            }
            Exchange::Unsent(cause) => {
                // The worker is out (dead, or its socket broken); the request never reached it.
                let error = self.failed(key, true, &cause);
                tracing::debug!(endpoint = %self.endpoint, pid = lease.checkout.pid, %cause, "request not sent to its worker; trying another");
                return Finished::Retry(error);
            }
            Exchange::Broken(cause) => Err(self.failed(key, false, &cause)),
            // The handler streams these itself (`crate::stream`); one reaching here is dropped.
            Exchange::Streaming { .. } => {
                let mut state = self.shared.lock();
                state.answer_dropped(key, Instant::now());
                self.shared.changed(&mut state);
                Err(HandlerError::Internal(
                    "a streamed answer was not streamed".into(),
                ))
            }
        };
        Finished::Done(self.shutdown_aware(result))
    }

    /// Return the worker after a streamed answer ended, as `end` says: completed (the connection
    /// kept if it can carry another request), cut short on our side (the connection was closed:
    /// the client went away, the answer passed `max_response_bytes`, the client read too slowly;
    /// the worker lives on and gets a fresh connection), past a time limit (the worker is
    /// replaced), or broken on the worker's side.
    pub(crate) fn stream_ended(&self, mut lease: Lease, end: StreamEnd) {
        lease.returned = true;
        let key = lease.checkout.key;
        match end {
            StreamEnd::Completed(conn) => {
                let rss = lease
                    .config
                    .max_rss_bytes
                    .and_then(|_| process::rss_bytes(lease.checkout.pid));
                let mut state = self.shared.lock();
                state.answered(key, Instant::now(), rss, conn);
                self.shared.changed(&mut state);
            }
            StreamEnd::Dropped => {
                let mut state = self.shared.lock();
                state.answer_dropped(key, Instant::now());
                self.shared.changed(&mut state);
            }
            StreamEnd::TimedOut(why) => {
                let mut state = self.shared.lock();
                state.timed_out(key, Instant::now());
                self.shared.changed(&mut state);
                tracing::warn!(endpoint = %self.endpoint, pid = lease.checkout.pid, cause = %why, "worker stream past its time limit; stopping the worker");
            }
            StreamEnd::Broken(cause) => {
                let _ = self.failed(key, false, &cause);
            }
        }
    }

    /// During shutdown every failure is the shutdown's: `503`.
    pub(crate) fn shutdown_aware(
        &self,
        result: Result<JobResponse, HandlerError>,
    ) -> Result<JobResponse, HandlerError> {
        if result.is_err() && self.shared.children.shutting_down() {
            return Err(HandlerError::Unavailable("server shutting down".into()));
        }
        result
    }

    /// The exchange failed: wait (bounded) to learn whether the worker died, and say which.
    fn failed(&self, key: u64, unreachable: bool, cause: &str) -> HandlerError {
        let deadline = Instant::now() + EXIT_WAIT;
        let mut state = self.shared.lock();
        let exit = loop {
            match state.exit_of(key) {
                Some(Some(how)) => break Some(how),
                None => break Some("gone".to_string()),
                Some(None) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            state = self.shared.wait(state, deadline - now);
        };
        let error = match exit {
            Some(how) => {
                state.failed_dead(key);
                HandlerError::BadGateway(format!("worker exited mid-request ({how})"))
            }
            None => {
                state.failed_alive(key, Instant::now(), unreachable);
                HandlerError::BadGateway(format!("worker connection failed: {cause}"))
            }
        };
        self.shared.changed(&mut state);
        error
    }

    /// A flag that turns true once the pool has stopped: every worker gone, its socket directory
    /// removed, its supervisor thread ended.
    pub fn stopped_flag(&self) -> Arc<AtomicBool> {
        self.shared.stopped.clone()
    }

    /// Pids of the worker processes alive now (for tests and tools).
    pub fn pids(&self) -> Vec<u32> {
        let state = self.shared.lock();
        state
            .workers
            .iter()
            .filter(|w| w.exit.is_none())
            .map(|w| w.pid)
            .collect()
    }

    /// The socket paths of the live workers (for tests).
    pub fn sockets(&self) -> Vec<PathBuf> {
        let state = self.shared.lock();
        state.workers.iter().map(|w| w.socket.clone()).collect()
    }
}

impl Drop for WorkerPool {
    /// The last handle is gone: close (a no-op if the handlers already released it).
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if !state.closing {
            state.closing = true;
            self.shared.changed(&mut state);
        }
    }
}
