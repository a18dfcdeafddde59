//! Admission in HTTP: the request goes to its endpoint's [`common::admission::Admission`], and
//! the outcome comes back as a response (or as silence, for ignored overflow). Deciding and
//! counting are the admission's; reading the body and speaking HTTP are the front end's.
//!
//! Order of checks, cheapest first: declared body size (`413`), `Admission::check` (a few atomic
//! loads; a full queue is overflow before a single body byte is read), body read (bounded in size
//! and time), then `Admission::try_admit`: inline answer, direct (an asynchronous run awaited here),
//! queued (wait for the reply), or refused.

use super::app::App;
use super::{Answer, Body, Ignored, Pending, Step};
use common::admission::{Outcome, Refusal};
use common::endpoint::Endpoint;
use common::handler::{
    declared_length, text_response, BodyFailure, BodyStream, ClientUpgrade, JobRequest,
};
use config::HandlerConfig;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// How many times a request is routed again after a reload retired its endpoint under it (see
/// [`admit`]); past that (reloads without pause) the retired endpoint's `503` is the answer.
const REROUTES: u8 = 3;

/// Admit `req` into `endpoint`'s queue and wait for its reply. Decided synchronously up to the
/// first thing that has to wait: a body to read or a queued job's reply (then a boxed future).
///
/// A reload swaps the routing table, then retires the endpoints it dropped (they admit nothing
/// new). A request routed by the table it replaced, just before, reaches a retired endpoint: it is
/// routed again by the current table (`reroutes` counts the times) rather than refused `503` as if
/// the server were shutting down; one whose body was being read meanwhile goes to the endpoint now
/// serving its path, if that endpoint would take it.
pub(super) fn admit(
    app: &Arc<App>,
    endpoint: &Arc<Endpoint>,
    req: Request<Incoming>,
    (remote, local): (SocketAddr, SocketAddr),
    reroutes: u8,
) -> Step {
    let (body_read_timeout, timing) = (app.server.body_read_timeout, app.server.access_log);
    let max_body = endpoint.config.max_body_bytes;
    // No body (most GETs: no Content-Length, or 0) needs no Content-Length lookup.
    let bodiless = hyper::body::Body::is_end_stream(req.body());
    if !bodiless && declared_length(req.headers()).is_some_and(|len| len > max_body) {
        return Step::Now(Ok(too_large()));
    }
    if let Err(refusal) = endpoint.admission().check() {
        if matches!(refusal, Refusal::ShuttingDown)
            && reroutes < REROUTES
            && endpoint.admission().is_retired()
        {
            return super::router::reroute(app, req, remote, local, reroutes + 1);
        }
        return Step::Now(refused(refusal));
    }
    let (parts, body) = req.into_parts();
    // No body (most GETs): no timer, no collector, no allocation. A body left in the connection
    // (`stream_request_body`) is read by the upstream exchange as it forwards it, bounded as a
    // body read here would be.
    if bodiless || streams_request_body(endpoint) {
        let stream = if bodiless {
            BodyStream::default()
        } else {
            BodyStream::new(body, max_body, body_read_timeout)
        };
        let body = (bytes::Bytes::new(), stream);
        return enqueue(app, endpoint, timing, parts, body, remote, local);
    }
    let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
    let endpoint = endpoint.clone();
    let app = app.clone();
    Step::Later(Pending::Boxed(Box::pin(async move {
        let body = match read_body(body, limit, body_read_timeout).await {
            Ok(body) => body,
            Err(resp) => return Ok(resp),
        };
        let endpoint = if endpoint.admission().is_retired() {
            match app.successor(&parts.method, &parts.uri, &parts.headers, Some(body.len())) {
                Ok(next) => next,
                Err(answer) => return Ok(*answer),
            }
        } else {
            endpoint
        };
        let body = (body, BodyStream::default());
        match enqueue(&app, &endpoint, timing, parts, body, remote, local) {
            Step::Now(answer) => answer,
            // Answered later after all (its body was read first): the timing goes where every
            // later answer's goes.
            Step::Inline(mut answer, timing) => {
                if let (Ok(resp), Some(timing)) = (answer.as_mut(), timing) {
                    resp.extensions_mut().insert(timing);
                }
                answer
            }
            Step::Later(pending) => pending.await,
        }
    })))
}

/// Hand the request to the endpoint's admission and answer its outcome: an inline answer at
/// once, an asynchronous run's or a queued job's answer later, or the refusal.
fn enqueue(
    app: &Arc<App>,
    endpoint: &Arc<Endpoint>,
    timing: bool,
    mut parts: hyper::http::request::Parts,
    (body, body_stream): (bytes::Bytes, BodyStream),
    remote: SocketAddr,
    local: SocketAddr,
) -> Step {
    let upgrade = client_upgrade(endpoint, &mut parts);
    let request = JobRequest {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
        remote_addr: remote,
        local_addr: local,
        client: Default::default(),
        upgrade,
        body_stream,
    };
    admit_request(app, endpoint, timing, request, false)
}

/// [`enqueue`]'s request, built: admitted, or (retired by a reload since it was routed, once)
/// handed to the endpoint now serving its path.
fn admit_request(
    app: &Arc<App>,
    endpoint: &Arc<Endpoint>,
    timing: bool,
    request: JobRequest,
    retried: bool,
) -> Step {
    match endpoint.admission().try_admit(request, timing) {
        Outcome::Retired(request) => {
            if retried {
                return Step::Now(refused(Refusal::ShuttingDown));
            }
            // A body left in the connection goes only where it would be left too.
            let body_len = (!request.body_stream.is_streamed()).then_some(request.body.len());
            match app.successor(&request.method, &request.uri, &request.headers, body_len) {
                Ok(next) => admit_request(app, &next, timing, *request, true),
                Err(answer) => Step::Now(Ok(*answer)),
            }
        }
        Outcome::Inline(answer, timing) => Step::Inline(Ok(answer), timing),
        // Awaited on this connection's task: dropped with it if the client goes. Already boxed:
        // awaited as it is, not boxed again.
        Outcome::Direct(run) => Step::Later(Pending::Direct(run)),
        Outcome::Queued(waiter) => {
            let endpoint = endpoint.clone();
            Step::Later(Pending::Boxed(Box::pin(async move {
                Ok(endpoint.admission().wait(waiter).await)
            })))
        }
        Outcome::Refused(refusal) => Step::Now(refused(refusal)),
    }
}

/// True if `endpoint` forwards a request's body as it arrives (an upstream endpoint with
/// `stream_request_body`) rather than taking it whole.
pub(super) fn streams_request_body(endpoint: &Endpoint) -> bool {
    matches!(&endpoint.config.handler, HandlerConfig::Upstream(u) if u.stream_request_body)
}

/// The client connection's pending upgrade, for an upstream endpoint (which passes WebSocket
/// upgrades through) and an HTTP/1.1 request that asks for one; empty otherwise, so any other
/// endpoint answers an upgrade request as a plain request. HTTP/2's extended CONNECT is not served.
fn client_upgrade(endpoint: &Endpoint, parts: &mut hyper::http::request::Parts) -> ClientUpgrade {
    let upstream = matches!(endpoint.config.handler, HandlerConfig::Upstream(_));
    // hyper leaves an `OnUpgrade` only on a request that asks for an upgrade (or a `CONNECT`):
    // looking for it first spares every other request a header lookup.
    if !upstream
        || parts.version != hyper::Version::HTTP_11
        || parts
            .extensions
            .get::<hyper::upgrade::OnUpgrade>()
            .is_none()
        || !parts.headers.contains_key(hyper::header::UPGRADE)
    {
        return ClientUpgrade::default();
    }
    parts
        .extensions
        .remove::<hyper::upgrade::OnUpgrade>()
        .map_or_else(ClientUpgrade::default, ClientUpgrade::new)
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
        Ok(Err(_)) => Err(BodyFailure::Unreadable.response()),
        Err(_) => Err(BodyFailure::TooSlow.response()),
    }
}

/// A request that was not admitted: silence (ignored overflow) or a `503`, with `Retry-After` for
/// rejected overflow.
fn refused(refusal: Refusal) -> Answer {
    match refusal {
        Refusal::OverflowIgnored => Err(Ignored),
        Refusal::OverflowRejected { retry_after_secs } => {
            let mut resp = error(StatusCode::SERVICE_UNAVAILABLE, "queue full, retry later");
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            Ok(resp)
        }
        Refusal::HandlerUnavailable { retry_after_secs } => {
            let mut resp = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "endpoint unavailable (its workers keep failing or its upstream is unhealthy), retry later",
            );
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            Ok(resp)
        }
        Refusal::ShuttingDown => Ok(shutting_down()),
    }
}

/// `503 server shutting down`: what a closed endpoint answers.
pub(super) fn shutting_down() -> Response<Body> {
    error(StatusCode::SERVICE_UNAVAILABLE, "server shutting down")
}

fn too_large() -> Response<Body> {
    BodyFailure::TooLarge.response()
}

fn error(status: StatusCode, reason: &str) -> Response<Body> {
    text_response(status, reason)
}
