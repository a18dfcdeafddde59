//! Handlers whose timing the test controls: [`Recorder`] records every run (id, start, end, how
//! many at once) and holds requests marked `x-hold` at its [`Gate`]; [`Panicker`] panics on demand;
//! [`job`], [`held_job`] and [`panicking_job`] are the requests they understand.

use super::client::request;
use super::wait_until;
use bytes::Bytes;
use common::handler::{Handler, HandlerError, JobRequest, JobResponse};
use fiddler_crab::HandlerRegistry;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// `POST path` for a [`Recorder`] job named `id`.
pub fn job(path: &str, id: &str) -> Request<Full<Bytes>> {
    let mut req = request("POST", path, Bytes::new());
    req.headers_mut()
        .insert("x-id", id.parse().expect("an id fit for a header"));
    req
}

/// A [`Recorder`] job that waits on the gate until the test releases it.
pub fn held_job(path: &str, id: &str) -> Request<Full<Bytes>> {
    let mut req = job(path, id);
    req.headers_mut()
        .insert("x-hold", hyper::header::HeaderValue::from_static("1"));
    req
}

/// A [`Recorder`] job whose handler panics.
pub fn panicking_job(path: &str, id: &str) -> Request<Full<Bytes>> {
    let mut req = job(path, id);
    req.headers_mut()
        .insert("x-panic", hyper::header::HeaderValue::from_static("1"));
    req
}

/// A registry with the builtins and `handler` as `builtin = "name"`.
pub fn registry(name: &str, handler: Arc<dyn Handler>) -> HandlerRegistry {
    let mut registry = HandlerRegistry::default();
    registry.register(name, handler);
    registry
}

/// A gate that handler threads wait at until the test lets them through, one at a time.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    arrived: Vec<String>,
    permits: usize,
    open: bool,
}

impl Gate {
    /// Longest a handler waits at the gate, so a failed test does not leave a thread blocked.
    const MAX_HOLD: Duration = Duration::from_secs(60);

    /// Called by a handler: announce `id`, then block until released.
    pub fn hold(&self, id: &str) {
        let mut state = self.lock();
        state.arrived.push(id.to_string());
        self.changed.notify_all();
        let deadline = Instant::now() + Self::MAX_HOLD;
        while !state.open && state.permits == 0 && Instant::now() < deadline {
            state = match self.changed.wait_timeout(state, Duration::from_millis(100)) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        if !state.open && state.permits > 0 {
            state.permits -= 1;
        }
    }

    /// Wait until `n` handlers have arrived at the gate (in total), for example 1: the runner is
    /// now busy with a held job.
    pub async fn wait_arrived(&self, n: usize) {
        wait_until(&format!("{n} jobs arrived at the gate"), || {
            self.lock().arrived.len() >= n
        })
        .await;
    }

    /// Ids in the order they arrived.
    pub fn arrived(&self) -> Vec<String> {
        self.lock().arrived.clone()
    }

    /// Let one waiting (or the next arriving) handler through.
    pub fn release(&self) {
        self.lock().permits += 1;
        self.changed.notify_all();
    }

    /// Let every handler through, now and later.
    pub fn open(&self) {
        self.lock().open = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One run of a [`Recorder`] job.
#[derive(Debug, Clone)]
pub struct Run {
    /// The request's `x-id`.
    pub id: String,
    /// When the handler was entered.
    pub start: Instant,
    /// When the handler returned.
    pub end: Instant,
}

/// A handler that records each run and answers its id. Requests with `x-hold` wait at the
/// [`Gate`]; requests with `x-panic` panic; the others sleep for the configured time.
#[derive(Debug, Default)]
pub struct Recorder {
    runs: Mutex<Vec<Run>>,
    sleep: Duration,
    gate: Gate,
    active: AtomicUsize,
    max_active: AtomicUsize,
}

impl Recorder {
    /// A recorder whose ordinary jobs take `sleep`.
    pub fn new(sleep: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            sleep,
            ..Recorder::default()
        })
    }

    /// The gate held jobs wait at.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Every finished run, in the order they finished.
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The ids of every finished run, in the order they finished.
    pub fn ids(&self) -> Vec<String> {
        self.runs().into_iter().map(|r| r.id).collect()
    }

    /// The most runs that were ever inside the handler at once.
    pub fn max_active(&self) -> usize {
        self.max_active.load(Ordering::SeqCst)
    }

    /// Runs inside the handler now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Start measuring [`Recorder::max_active`] afresh (from the runs inside now), for example
    /// between two batches; returns the peak measured so far.
    pub fn reset_max_active(&self) -> usize {
        self.max_active
            .swap(self.active.load(Ordering::SeqCst), Ordering::SeqCst)
    }
}

impl Handler for Recorder {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let start = Instant::now();
        let now_active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now_active, Ordering::SeqCst);
        let id = req
            .headers
            .get("x-id")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if req.headers.contains_key("x-hold") {
            self.gate.hold(&id);
        } else if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        self.active.fetch_sub(1, Ordering::SeqCst);
        if req.headers.contains_key("x-panic") {
            panic!("deliberate panic in job {id}");
        }
        let end = Instant::now();
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Run {
                id: id.clone(),
                start,
                end,
            });
        Ok(text(StatusCode::OK, id))
    }
}

/// A handler that panics when the body is `panic` and answers `fine` otherwise.
#[derive(Debug, Default)]
pub struct Panicker;

impl Handler for Panicker {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        if req.body.as_ref() == b"panic" {
            panic!("deliberate panic: the body said so");
        }
        Ok(text(StatusCode::OK, "fine".to_string()))
    }
}

fn text(status: StatusCode, body: String) -> JobResponse {
    let mut resp = Response::new(body.into());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}
