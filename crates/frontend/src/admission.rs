//! Admission: a request enters its endpoint's handoff queue in O(1) or is overflow; then the front
//! end waits for the one reply, answering `504` itself if the job is still queued at its deadline.
//!
//! Order of checks, cheapest first: declared body size (`413`), queue room (one atomic load; a
//! full queue is overflow before a single body byte is read), body read (bounded in size and time),
//! then the real O(1) admission.

use super::{to_body, Answer, Body, Ignored, Step};
use common::counters::EndpointCounters;
use common::endpoint::{Admission, Endpoint};
use common::handler::{text_response, JobRequest};
use common::job::{Job, Waiter, DROPPED_STATUS};
use common::queue::Refused;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Admit `req` into `endpoint`'s queue and wait for its reply. Decided synchronously up to the
/// first thing that has to wait: a body to read or a queued job's reply (then a boxed future).
pub(super) fn admit(
    endpoint: &Arc<Endpoint>,
    body_read_timeout: Duration,
    timing: bool,
    req: Request<Incoming>,
    remote: SocketAddr,
    local: SocketAddr,
) -> Step {
    let max_body = endpoint.config.max_body_bytes;
    // No body (most GETs: no Content-Length, or 0) needs no Content-Length lookup.
    let bodiless = hyper::body::Body::is_end_stream(req.body());
    if !bodiless && declared_length(&req).is_some_and(|len| len > max_body) {
        return Step::Now(Ok(too_large()));
    }
    match endpoint.admission() {
        Admission::Open => {}
        refused => return Step::Now(overflow(endpoint, refused)),
    }
    let (parts, body) = req.into_parts();
    if bodiless {
        // No body (most GETs): no timer, no collector, no allocation.
        return enqueue(endpoint, timing, parts, bytes::Bytes::new(), remote, local);
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let endpoint = endpoint.clone();
    Step::Later(Box::pin(async move {
        let body = match read_body(body, limit, body_read_timeout).await {
            Ok(body) => body,
            Err(resp) => return Ok(resp),
        };
        match enqueue(&endpoint, timing, parts, body, remote, local) {
            Step::Now(answer) => answer,
            Step::Later(pending) => pending.await,
        }
    }))
}

/// Run the job inline if it may (a cheap handler, a free slot, nothing queued), else push it into
/// the queue and wait for its reply.
fn enqueue(
    endpoint: &Arc<Endpoint>,
    timing: bool,
    parts: hyper::http::request::Parts,
    body: bytes::Bytes,
    remote: SocketAddr,
    local: SocketAddr,
) -> Step {
    let request = JobRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
        remote_addr: remote,
        local_addr: local,
    };
    if let Some(resp) = endpoint.try_inline(&request, timing) {
        return Step::Now(Ok(to_body(resp)));
    }
    let counters = &endpoint.counters;
    let (job, waiter) = Job::new(request, counters.clone());
    // Counted before the push so that no outcome can be counted ahead of its admission.
    EndpointCounters::bump(&counters.admitted);
    match endpoint.queue.try_push(job) {
        Ok(()) => {
            let endpoint = endpoint.clone();
            Step::Later(Box::pin(async move { wait(&endpoint, waiter).await }))
        }
        Err(refused) => {
            counters.admitted.fetch_sub(1, Ordering::Relaxed);
            let job = match refused {
                Refused::Full(job) | Refused::Closed(job) => job,
            };
            job.discard();
            Step::Now(overflow(endpoint, Admission::Full))
        }
    }
}

/// The whole body, bounded in size (`413`) and time (`408`).
async fn read_body(
    body: Incoming,
    limit: usize,
    timeout: Duration,
) -> Result<bytes::Bytes, Response<Body>> {
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Ok(Err(_)) => Err(error(
            StatusCode::BAD_REQUEST,
            "could not read the request body",
        )),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time",
        )),
    }
}

/// Wait for the job's one reply. At the queue deadline, expire it if it has not started (`504`);
/// at shutdown, likewise, at once (`503`). A started job is bounded by its handler's own limits.
async fn wait(endpoint: &Endpoint, waiter: Waiter) -> Answer {
    let Waiter { ticket, mut reply } = waiter;
    let shutdown = endpoint.shutdown_notified();
    tokio::pin!(shutdown);
    shutdown.as_mut().enable();
    let (counter, status, reason) = if endpoint.queue.is_shedding() {
        (
            &endpoint.counters.failed,
            StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
        )
    } else {
        tokio::select! {
            biased;
            answer = &mut reply => return Ok(delivered(answer)),
            () = &mut shutdown => {
                (&endpoint.counters.failed, StatusCode::SERVICE_UNAVAILABLE, "server shutting down")
            }
            () = tokio::time::sleep(endpoint.config.queue_timeout) => {
                (&endpoint.counters.timed_out, StatusCode::GATEWAY_TIMEOUT, "waited in queue past queue_timeout_ms")
            }
        }
    };
    if ticket.expire() {
        // Not started: answered here, and the executor will discard it unrun.
        EndpointCounters::bump(counter);
        return Ok(error(status, reason));
    }
    Ok(delivered(reply.await))
}

fn delivered(
    answer: Result<Response<bytes::Bytes>, tokio::sync::oneshot::error::RecvError>,
) -> Response<Body> {
    match answer {
        Ok(resp) => to_body(resp),
        // The job was dropped unanswered by a failing executor (already counted as failed).
        Err(_) => error(DROPPED_STATUS, "the job's executor failed"),
    }
}

/// A request that found no room: silence (ignore overflow) or a `503`.
fn overflow(endpoint: &Endpoint, refused: Admission) -> Answer {
    endpoint.refuse(refused).map(to_body).ok_or(Ignored)
}

fn declared_length(req: &Request<Incoming>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn too_large() -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "request body larger than max_body_bytes",
    )
}

fn error(status: StatusCode, reason: &str) -> Response<Body> {
    to_body(text_response(status, reason))
}
