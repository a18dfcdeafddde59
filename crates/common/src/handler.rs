//! The handler contract: what runs one admitted request, and how its failure becomes a response.

pub use crate::body::ResponseBody;
use bytes::Bytes;
use hyper::{HeaderMap, Method, Response, StatusCode, Uri, Version};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

/// A handler's asynchronous run of one request (see [`Handler::call_async`]).
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<JobResponse, HandlerError>> + Send>>;

/// What [`Handler::call_async`] makes of a request.
// Both variants are moved once, by value; boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum AsyncCall {
    /// The run, to await.
    Started(HandlerFuture),
    /// No asynchronous run: the request, given back for the queue.
    Declined(JobRequest),
}

/// A request as a handler sees it: fully read, owned, and independent of the connection.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// HTTP method.
    pub method: Method,
    /// Request target (path and query).
    pub uri: Uri,
    /// HTTP version the client spoke.
    pub version: Version,
    /// Request headers as received.
    pub headers: HeaderMap,
    /// The whole body, already bounded by the endpoint's `max_body_bytes`; empty when the body is
    /// left in the client's connection to be forwarded as it arrives ([`JobRequest::body_stream`]).
    pub body: Bytes,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The address of the listener that accepted the connection.
    pub local_addr: SocketAddr,
    /// Whether the client still waits for the answer: a handler that blocks polls
    /// [`ClientWatch::is_gone`] and, once it is true, stops its work and returns
    /// [`HandlerError::ClientGone`]. Never gone where the endpoint says `on_client_gone =
    /// "finish"` (and for [`ClientWatch::default`], which builders of a request use). Once a
    /// streamed answer's head has arrived it no longer changes: a producer asks its
    /// [`crate::body::BodySink`] instead.
    pub client: ClientWatch,
    /// The client's side of an HTTP/1.1 upgrade (a WebSocket handshake), for a handler that
    /// passes upgrades through (upstream endpoints); empty everywhere else.
    pub upgrade: ClientUpgrade,
    /// The body still in the client's connection, for a handler that forwards it as it arrives
    /// (an upstream endpoint with `stream_request_body`); empty everywhere else, where
    /// [`JobRequest::body`] holds it whole.
    pub body_stream: BodyStream,
}

/// The client connection's pending upgrade, taken by the front end from a request that asks for
/// one (`Connection: upgrade`, `Upgrade: ...`) on an endpoint that passes upgrades through. Once
/// the handler answers `101`, [`ClientUpgrade::take`] gives the future of the upgraded
/// connection. Cloning shares the one upgrade: the first `take` gets it.
#[derive(Clone, Default)]
pub struct ClientUpgrade(Option<Arc<std::sync::Mutex<Option<hyper::upgrade::OnUpgrade>>>>);

impl ClientUpgrade {
    /// The pending upgrade of a client's request.
    pub fn new(upgrade: hyper::upgrade::OnUpgrade) -> ClientUpgrade {
        ClientUpgrade(Some(Arc::new(std::sync::Mutex::new(Some(upgrade)))))
    }

    /// True if the request carries an upgrade not yet taken.
    pub fn is_pending(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).is_some())
    }

    /// The upgrade, once: resolves to the client's connection after the `101` was sent.
    pub fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        self.0
            .as_ref()
            .and_then(|slot| slot.lock().unwrap_or_else(|p| p.into_inner()).take())
    }
}

impl std::fmt::Debug for ClientUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientUpgrade")
            .field(&self.is_pending())
            .finish()
    }
}

/// A request body left in the client's connection: taken once by the handler that forwards it,
/// which reads it chunk by chunk as the upstream takes it, bounded by `max_body_bytes` and
/// `body_read_timeout_ms` as a body read whole is, and records here why it stopped short
/// ([`BodyStream::fail`]) so the handler answers that rather than the broken exchange. Cloning
/// shares the one body: the first `take` gets it.
#[derive(Clone, Default)]
pub struct BodyStream(Option<Arc<StreamSlot>>);

struct StreamSlot {
    body: std::sync::Mutex<Option<hyper::body::Incoming>>,
    limit: u64,
    read_timeout: std::time::Duration,
    failed: std::sync::Mutex<Option<BodyFailure>>,
}

impl BodyStream {
    /// The client's `body`, to be forwarded as it arrives: at most `limit` bytes, all of them
    /// within `read_timeout` of the first read.
    pub fn new(
        body: hyper::body::Incoming,
        limit: u64,
        read_timeout: std::time::Duration,
    ) -> BodyStream {
        BodyStream(Some(Arc::new(StreamSlot {
            body: std::sync::Mutex::new(Some(body)),
            limit,
            read_timeout,
            failed: std::sync::Mutex::new(None),
        })))
    }

    /// True if the request's body is left in the connection (taken or not).
    pub fn is_streamed(&self) -> bool {
        self.0.is_some()
    }

    /// The body, once.
    pub fn take(&self) -> Option<hyper::body::Incoming> {
        self.0
            .as_ref()
            .and_then(|slot| slot.body.lock().unwrap_or_else(|p| p.into_inner()).take())
    }

    /// The most bytes the body may have (the endpoint's `max_body_bytes`).
    pub fn limit(&self) -> u64 {
        self.0.as_ref().map_or(0, |slot| slot.limit)
    }

    /// The time the whole body may take from its first read (`body_read_timeout_ms`).
    pub fn read_timeout(&self) -> std::time::Duration {
        self.0
            .as_ref()
            .map_or(std::time::Duration::ZERO, |slot| slot.read_timeout)
    }

    /// Record why the body stopped short (the first reason stands).
    pub fn fail(&self, why: BodyFailure) {
        if let Some(slot) = &self.0 {
            slot.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(why);
        }
    }

    /// Why the body stopped short, if it did.
    pub fn failure(&self) -> Option<BodyFailure> {
        self.0
            .as_ref()
            .and_then(|slot| *slot.failed.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl std::fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("BodyStream")
            .field(&self.is_streamed())
            .finish()
    }
}

/// Why a client's request body could not be read: its answer, the same whether the body was
/// read whole before admission or forwarded as it arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    /// More than `max_body_bytes`: `413`.
    TooLarge,
    /// Not all there within `body_read_timeout_ms`: `408`.
    TooSlow,
    /// The connection failed or the framing was broken: `400`.
    Unreadable,
}

impl BodyFailure {
    /// The answer to a request whose body failed so.
    pub fn response(self) -> JobResponse {
        text_response(self.status(), self.reason())
    }

    /// The status of that answer.
    pub fn status(self) -> StatusCode {
        match self {
            BodyFailure::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BodyFailure::TooSlow => StatusCode::REQUEST_TIMEOUT,
            BodyFailure::Unreadable => StatusCode::BAD_REQUEST,
        }
    }

    /// Its reason, as the answer gives it.
    pub fn reason(self) -> &'static str {
        match self {
            BodyFailure::TooLarge => "request body larger than max_body_bytes",
            BodyFailure::TooSlow => "request body not received in time",
            BodyFailure::Unreadable => "could not read the request body",
        }
    }
}

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for BodyFailure {}

/// Tells a running handler whether the client that asked for its job has gone (HTTP/1 connection
/// closed, HTTP/2 stream reset): cheap to poll (one atomic load), cloneable into helper threads.
#[derive(Debug, Clone, Default)]
pub struct ClientWatch(Option<Arc<crate::job::Ticket>>);

impl ClientWatch {
    /// Watch the client of the job with `ticket`.
    pub(crate) fn of(ticket: Arc<crate::job::Ticket>) -> ClientWatch {
        ClientWatch(Some(ticket))
    }

    /// True once nobody waits for this job's answer any more.
    pub fn is_gone(&self) -> bool {
        self.0.as_ref().is_some_and(|t| t.client_gone())
    }
}

/// What a handler answers with on success (any status it chooses): a whole body, or a streamed
/// one (see [`crate::body`]).
pub type JobResponse = Response<ResponseBody>;

/// Why a handler could not produce a response. Each kind maps to one status and one counter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The program or upstream failed (non-zero exit, signal, bad CGI headers, output cap): `502`.
    #[error("{0}")]
    BadGateway(String),
    /// The run exceeded its time limit and was killed: `504`, counted as timed out.
    #[error("{0}")]
    Timeout(String),
    /// The server is shutting down and the run was stopped: `503`.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else inside the server: `500`.
    #[error("{0}")]
    Internal(String),
    /// The client went away while the job ran and the handler stopped it (see [`ClientWatch`]):
    /// counted as `client_gone`; the answer (`499`, nginx's "client closed request") reaches
    /// nobody but the access log.
    #[error("{0}")]
    ClientGone(String),
}

impl HandlerError {
    /// The status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            HandlerError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            HandlerError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            HandlerError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            HandlerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            HandlerError::ClientGone(_) => {
                StatusCode::from_u16(499).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
        }
    }
}

/// Runs one request to completion on the calling (blocking) thread.
///
/// Handlers are called from executor threads, never from the async front end, so they may block.
/// They must bound their own run time; a panic is caught by the executor and answered `500`.
pub trait Handler: Send + Sync + 'static {
    /// Produce the response for `req`. A streamed body ([`ResponseBody::stream`]) is produced
    /// after this returns, on the same thread and still in the job's running slot; its producer
    /// bounds its own time ([`crate::body::BodySink::set_deadline`]). An inline handler
    /// ([`Handler::is_inline`]) answers with a whole body: a stream from it is answered `500`.
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError>;

    /// Produce one result per request of `reqs`, in order, from one call: a handler that can
    /// batch (see [`Handler::can_batch`]) runs them together (one worker, one vectorised model
    /// call). Each item stands alone: an error answers its own request only. Each answer has a
    /// whole body ([`ResponseBody::Full`]): a streamed one is answered `500`. The executor calls
    /// this only with two or more requests, in one running slot; a result list of the wrong
    /// length is answered `500` for each request without a result. The default calls
    /// [`Handler::handle`] for each request in turn.
    fn handle_batch(&self, reqs: &[&JobRequest]) -> Vec<Result<JobResponse, HandlerError>> {
        reqs.iter().map(|req| self.handle(req)).collect()
    }

    /// True if [`Handler::handle_batch`] runs a batch in one call, so an endpoint with
    /// `max_batch` above 1 is worth it. Default false.
    fn can_batch(&self) -> bool {
        false
    }

    /// True if the handler is cheap and never blocks (microseconds, no I/O), so that in a
    /// concurrent mode it may run directly on the front end's async worker when a pool slot is
    /// free and nothing is queued: a direct handoff with no thread hop. Default false.
    fn is_inline(&self) -> bool {
        false
    }

    /// An asynchronous run of `req` that waits without blocking (network I/O only, bounded in time
    /// by the handler): on an `on_client_gone = "stop"` endpoint of a concurrent mode, the front
    /// end awaits it on the connection's own task instead of handing the job to an executor thread
    /// (no thread hop): at once when a running slot is free and nothing is queued, else once the
    /// request's turn in the endpoint's line comes (a queued request waiting on its own task,
    /// handed a slot as one frees). The future must do nothing until first polled (as an `async`
    /// block's does): it is made at admission and first polled once it holds its slot. The slot
    /// is held until the future ends (for a streamed answer, until its stream ends, produced as by
    /// [`Handler::handle`] but on a blocking thread of the front end's runtime); a future dropped
    /// before it ends (its client went away) is counted `client_gone`. [`AsyncCall::Declined`]
    /// gives the request back: no asynchronous run, the job goes through the queue and an
    /// executor thread. Default declined.
    fn call_async(&self, req: JobRequest) -> AsyncCall {
        AsyncCall::Declined(req)
    }

    /// True if [`Handler::call_async`] may start runs: only then does admission take a running
    /// slot to offer it one, so the admission of every other handler stays a queue push with no
    /// slot taken and given back. Default false.
    fn runs_async(&self) -> bool {
        false
    }

    /// False while the handler cannot serve any time soon (for example every worker process keeps
    /// crashing): admission then treats new requests as overflow at once instead of queueing them.
    /// Called on every admission: must be a few atomic loads at most. Default true.
    fn available(&self) -> bool {
        true
    }

    /// Whether the handler can serve now, for `/readyz`; `Err` says why not (for example no
    /// worker process has finished starting). Must never wait on work. Default ready.
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }

    /// Handler-specific state for the endpoint's line in `/status` (for example its worker
    /// processes). Must never wait on work. Default none.
    fn status(&self) -> Option<serde_json::Value> {
        None
    }

    /// Handler-specific numbers for `/metrics`. Must never wait on work. Default none.
    fn samples(&self) -> Vec<HandlerSample> {
        Vec::new()
    }

    /// Read again the files the handler's config names (an upstream's trusted roots and client
    /// certificate): called by a reload that keeps the endpoint unchanged, as one that replaces
    /// it reads them anew, so that renewed files are taken without a restart. `Err` says why;
    /// the handler then keeps what it had. Default nothing to read.
    fn reload_files(&self) -> Result<(), String> {
        Ok(())
    }

    /// The endpoint will call this handler no more: its queue was closed and every admitted job
    /// answered (shutdown, or a reload replaced the endpoint). Release what the handler holds.
    /// Default nothing.
    fn close(&self) {}
}

/// One number a handler exports to `/metrics`, under the endpoint's labels plus its own.
#[derive(Debug, Clone, PartialEq)]
pub struct HandlerSample {
    /// Metric name, without the server's prefix (for example `worker_requests`).
    pub name: &'static str,
    /// One-line help text.
    pub help: &'static str,
    /// A counter (only ever grows) or a gauge.
    pub counter: bool,
    /// Labels beyond `endpoint` and `mode` (for example the worker's slot).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: i64,
}

/// The `Content-Length` a message's `headers` declare (their first value), if it is valid. The
/// front end reads it before a request's body; the relay, of an upstream's or a worker's answer.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A plain-text response with `status` and a short reason line: the shape of every error we send.
pub fn text_response(status: StatusCode, reason: &str) -> JobResponse {
    let mut body = String::with_capacity(reason.len() + 1);
    body.push_str(reason);
    body.push('\n');
    let mut resp = Response::new(ResponseBody::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
