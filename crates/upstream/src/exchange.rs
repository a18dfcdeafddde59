//! One request's exchange with the upstream: the target path, a pooled connection, the send
//! (resent once only if never written), the answer, and every failure as a short answer that
//! names no address (the log and `/status` have the details).
//!
//! A small answer (a declared `Content-Length` up to [`WHOLE_MAX`], or no body) is read whole.
//! Any other answer (Server-Sent Events, chunked token streams, large bodies) is streamed: its
//! head goes to the client at once, and its body chunk by chunk as the upstream sends it, through
//! the bounded channel of [`common::body`], on the executor thread and in the job's running slot.
//! A slow client slows the upstream read; a client that leaves closes the upstream connection.

use crate::Shared;
use common::body::{BodySink, StreamError};
use common::handler::{text_response, HandlerError, JobRequest, JobResponse, ResponseBody};
use config::HostHeader;
use hyper::body::Body as _;
use hyper::body::Bytes;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Response, StatusCode, Uri};
use relay::{BodyError, Conn, Next, Sent};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Largest declared body read whole before it is sent on; anything larger, or of unknown length,
/// is streamed.
pub const WHOLE_MAX: u64 = 64 * 1024;

/// How often a running exchange looks whether its client has gone.
pub(crate) const CLIENT_POLL: Duration = relay::stream::CLIENT_POLL;

/// What a client is told when the upstream cannot be reached.
pub const UNAVAILABLE: &str = "upstream unavailable";

/// Run `req`'s exchange on `runtime`, bounded by `timeout_ms` as a whole (a streamed body's
/// last chunk included); stopped early if the client goes.
pub(crate) fn run(
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
    req: &JobRequest,
) -> Result<JobResponse, HandlerError> {
    let (outgoing, flight, deadline, upgrading) = match prepare(shared, req, req.headers.clone())? {
        Prepared::Send(outgoing, flight, deadline, upgrading) => {
            (outgoing, flight, deadline, upgrading)
        }
        Prepared::Refused(answer) => return Ok(answer),
    };
    let answer = runtime.block_on(async {
        tokio::select! {
            answer = timed(shared, req, outgoing, deadline, upgrading, Side::Io, &flight) => answer,
            () = client_gone(req) => {
                Err(HandlerError::ClientGone("client went away; upstream request abandoned".into()))
            }
        }
    })?;
    answered(shared, runtime, req, answer, flight, deadline, Side::Io)
}

/// [`run`] on the caller's runtime, awaited instead of blocked on: its connections are driven by
/// that runtime too (taken from and given back to the pool's side for it, so an exchange never
/// waits on another runtime's thread). A client that goes drops
/// this future, which drops the connection in use (closing it). A streamed body is produced
/// through the caller's runtime too, by one of its blocking threads (see
/// [`common::handler::Handler::call_async`]), so nothing here needs the handler's I/O thread.
///
/// An `async` block, not an `async fn`: an `async fn` keeps each argument twice in its future
/// (rust-lang/rust#62958), and the request is 328 bytes. The outgoing request (256 bytes) goes
/// down boxed, and the whole answer's read is boxed where it starts. Without the three, this
/// future was 2,168 bytes, boxed and copied per request, past glibc's per-thread cache (1,032
/// bytes); it is 1,016, and a unit test keeps it within.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run_async(
    shared: Arc<Shared>,
    mut req: JobRequest,
) -> impl Future<Output = Result<JobResponse, HandlerError>> + Send {
    async move {
        let runtime = tokio::runtime::Handle::current();
        // Moved, not copied: nothing after `prepare` reads the client's headers.
        let headers = std::mem::take(&mut req.headers);
        let (outgoing, flight, deadline, upgrading) = match prepare(&shared, &req, headers)? {
            Prepared::Send(outgoing, flight, deadline, upgrading) => {
                (outgoing, flight, deadline, upgrading)
            }
            Prepared::Refused(answer) => return Ok(answer),
        };
        let answer = timed(
            &shared,
            &req,
            outgoing,
            deadline,
            upgrading,
            Side::Front,
            &flight,
        )
        .await?;
        answered(
            &shared,
            &runtime,
            &req,
            answer,
            flight,
            deadline,
            Side::Front,
        )
    }
}

/// Which runtime drives a connection: the handler's I/O thread (the executor path, which blocks
/// on it) or the front end's (the asynchronous path). A connection's driver runs where it was
/// opened, so each side reuses only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Io,
    Front,
}

/// Idle kept-alive connections, by the runtime that drives them, each with the time it came back,
/// most recent last.
#[derive(Debug, Default)]
pub struct Idle {
    io: Vec<(Conn, Instant)>,
    front: Vec<(Conn, Instant)>,
}

impl Idle {
    /// Idle connections, both sides.
    pub fn len(&self) -> usize {
        self.io.len() + self.front.len()
    }

    /// True if none is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn side(&mut self, side: Side) -> &mut Vec<(Conn, Instant)> {
        match side {
            Side::Io => &mut self.io,
            Side::Front => &mut self.front,
        }
    }
}

/// A request ready to send, or answered without the upstream.
enum Prepared {
    /// The outgoing request, its in-flight count, the exchange's deadline, and whether it asks
    /// for an upgrade.
    Send(
        Box<hyper::Request<relay::message::OutBody>>,
        InFlight,
        Instant,
        bool,
    ),
    /// Refused here (a path that would leave the prefix).
    Refused(JobResponse),
}

/// The outgoing request for `req`, whose `headers` (the client's) are moved in.
fn prepare(
    shared: &Arc<Shared>,
    req: &JobRequest,
    headers: hyper::HeaderMap,
) -> Result<Prepared, HandlerError> {
    if has_dot_segment(req.uri.path()) {
        // `/llm/../admin` would leave the prefix once the upstream resolves it.
        return Ok(Prepared::Refused(text_response(
            StatusCode::BAD_REQUEST,
            "a path with `.` or `..` segments is not forwarded",
        )));
    }
    let target = target(shared, &req.uri)?;
    let upgrading = req.upgrade.is_pending();
    let protocol = upgrading.then(|| headers.get(UPGRADE).cloned()).flatten();
    let mut outgoing = relay::outgoing_with(req, headers, target, shared.forwarding);
    if upgrading {
        // A WebSocket handshake: `Connection` and `Upgrade` go up again (they are hop-by-hop, and
        // this hop passes the upgrade on).
        if let Some(protocol) = protocol {
            let headers = outgoing.headers_mut();
            headers.insert(UPGRADE, protocol);
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    let server = shared.pick(None, shared.affinity(outgoing.headers()));
    let flight = InFlight::new(shared.clone(), server);
    let stats = &shared.servers[server].stats;
    stats.count(&stats.requests);
    let deadline = Instant::now() + shared.config.timeout;
    Ok(Prepared::Send(
        Box::new(outgoing),
        flight,
        deadline,
        upgrading,
    ))
}

/// The exchange, bounded by `deadline` (kept by the handler's deadline keeper, see
/// [`crate::deadline`], not by a timer of its own). An `async` block, as [`run_async`] and
/// `exchange` are: the arguments are kept once.
#[allow(clippy::manual_async_fn)]
fn timed<'a>(
    shared: &'a Shared,
    req: &'a JobRequest,
    outgoing: Box<hyper::Request<relay::message::OutBody>>,
    deadline: Instant,
    upgrading: bool,
    side: Side,
    flight: &'a InFlight,
) -> impl Future<Output = Result<Answer, HandlerError>> + Send + 'a {
    async move {
        let entry = shared.deadlines.enter(deadline);
        let mut exchange = std::pin::pin!(exchange(shared, req, outgoing, upgrading, side, flight));
        let answer = std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = exchange.as_mut().poll(cx) {
                return Poll::Ready(Some(answer));
            }
            entry.poll_expired(cx).map(|()| None)
        })
        .await;
        answer.unwrap_or_else(|| {
            fail(
                shared,
                flight.server(),
                "no answer within timeout_ms".into(),
            );
            Err(HandlerError::Timeout(
                "upstream did not answer within timeout_ms".into(),
            ))
        })
    }
}

/// The handler's response to `answer`: whole, a stream relayed by its producer through
/// `runtime`, or an upgraded session spliced through it, in flight until it ends.
fn answered(
    shared: &Arc<Shared>,
    runtime: &tokio::runtime::Handle,
    req: &JobRequest,
    answer: Answer,
    flight: InFlight,
    deadline: Instant,
    side: Side,
) -> Result<JobResponse, HandlerError> {
    match answer {
        Answer::Whole(response) => Ok(response),
        Answer::Stream { head, body, conn } if side == Side::Front => {
            // On the connection's task: polled by the front end as the client takes it, with
            // no thread and no channel between.
            let relayed = Relayed {
                shared: shared.clone(),
                server: flight.server(),
                body,
                conn: Some(conn),
                _flight: flight,
                deadline,
                idle: shared.config.stream_idle_timeout,
                deadline_timer: None,
                idle_timer: None,
                last_chunk: None,
                produced: 0,
            };
            Ok(Response::from_parts(head, ResponseBody::polled(relayed)))
        }
        Answer::Stream { head, body, conn } => {
            let shared = shared.clone();
            let runtime = runtime.clone();
            let relay = move |sink: &mut BodySink| {
                let server = flight.server();
                sink.set_deadline(deadline);
                let streamed = stream(
                    &shared,
                    &runtime,
                    body,
                    (conn, side, server),
                    sink,
                    deadline,
                );
                drop(flight);
                streamed
            };
            Ok(Response::from_parts(head, ResponseBody::stream(relay)))
        }
        Answer::Upgrade { mut response, conn } => {
            let Some(client) = req.upgrade.take() else {
                return Err(HandlerError::Internal(
                    "the upgrade was already taken".into(),
                ));
            };
            let upstream = hyper::upgrade::on(&mut response);
            let (parts, _) = response.into_parts();
            let protocol = parts.headers.get(UPGRADE).cloned();
            let mut head = relay::answer_head(parts, &req.method);
            head.headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            if let Some(protocol) = protocol {
                head.headers.insert(UPGRADE, protocol);
            }
            let shared = shared.clone();
            let runtime = runtime.clone();
            // The session's producer sends no bytes: it holds the running slot while it splices.
            let session = move |sink: &mut BodySink| {
                let server = flight.server();
                let result =
                    crate::upgrade::splice(&shared, server, &runtime, client, upstream, sink);
                drop(flight);
                drop(conn);
                result
            };
            Ok(Response::from_parts(head, ResponseBody::stream(session)))
        }
    }
}

/// Counts a request in flight to its server for as long as it lives: its exchange, then its
/// streamed body if it has one. Moved to another server if the request is sent again there.
///
/// 16 bytes, kept in the exchange's future: the server's index is a `u32` (at most
/// `config::upstream::MAX_SERVERS`), and the flag of a failed connection fits beside it.
struct InFlight {
    shared: Arc<Shared>,
    server: AtomicU32,
    /// A connection to `server` could not be made: the one resend goes to another server.
    refused: AtomicBool,
}

impl InFlight {
    fn new(shared: Arc<Shared>, server: usize) -> InFlight {
        shared.servers[server]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        InFlight {
            shared,
            server: AtomicU32::new(u32::try_from(server).unwrap_or(0)),
            refused: AtomicBool::new(false),
        }
    }

    /// The server the request is at.
    fn server(&self) -> usize {
        self.server.load(Ordering::Relaxed) as usize
    }

    /// A fresh connection for the request: to its server, or, after a connection to it could
    /// not be made, to another one (the request moves there).
    fn open(&self) -> Pin<Box<dyn Future<Output = io::Result<Conn>> + Send + '_>> {
        if self.refused.load(Ordering::Relaxed) {
            let to = self.shared.pick(Some(self.server()), None);
            let servers = &self.shared.servers;
            let from = self
                .server
                .swap(u32::try_from(to).unwrap_or(0), Ordering::Relaxed)
                as usize;
            servers[from].in_flight.fetch_sub(1, Ordering::Relaxed);
            servers[to].in_flight.fetch_add(1, Ordering::Relaxed);
        }
        // Boxed: it runs only when no idle connection is usable, and inline it would make every
        // exchange's future (moved and boxed per request) some 450 bytes larger.
        Box::pin(connect(self))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.servers[self.server()]
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// The upstream's answer: read whole, or its head with the body still to stream, or its `101` to
/// an upgrade (the connection it came on is the session's now).
enum Answer {
    Upgrade {
        response: Response<Incoming>,
        conn: Conn,
    },
    Whole(JobResponse),
    Stream {
        head: hyper::http::response::Parts,
        body: Incoming,
        conn: Conn,
    },
}

/// `Some` if the answer to a `method` request with this head is read whole: no body (`HEAD`,
/// 1xx, 204, 304) or a declared length up to [`WHOLE_MAX`]; in it, the declared length, if any.
fn read_whole(method: &Method, response: &Response<Incoming>) -> Option<Option<u64>> {
    let status = response.status();
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = common::handler::declared_length(response.headers());
    (bodiless || declared.is_some_and(|len| len <= WHOLE_MAX)).then_some(declared)
}

/// Relay `body` into `sink` chunk by chunk until it ends (then `conn` is kept for the next
/// request), the client goes, the upstream fails, `timeout_ms` passes (or, once the first chunk
/// came, `stream_idle_timeout_ms` between two), or the body exceeds `max_response_bytes` (then the
/// connection is dropped, which closes it).
fn stream(
    shared: &Shared,
    runtime: &tokio::runtime::Handle,
    mut body: Incoming,
    (conn, side, server): (Conn, Side, usize),
    sink: &mut BodySink,
    deadline: Instant,
) -> Result<(), StreamError> {
    let max = shared.config.max_response_bytes as u64;
    loop {
        // The first bytes are bounded by `timeout_ms` alone; the idle timeout runs between chunks.
        let idle = (sink.produced() > 0).then_some(shared.config.stream_idle_timeout);
        let data = match relay::next_chunk(runtime, &mut body, sink, deadline, idle) {
            Next::Data(data) => data,
            Next::End => {
                checkin(shared, server, conn, side);
                return Ok(());
            }
            Next::ClientGone => return Err(StreamError::ClientGone),
            Next::Broken(cause) => return Err(cut(shared, server, Cut::Broken(cause))),
            Next::Idle => return Err(cut(shared, server, Cut::Idle)),
            Next::Timeout => return Err(cut(shared, server, Cut::Deadline)),
        };
        if sink.produced() + data.len() as u64 > max {
            return Err(cut(shared, server, Cut::TooLarge));
        }
        sink.send(data)?;
    }
}

/// Why a streamed answer was cut short.
enum Cut {
    /// Past `max_response_bytes`.
    TooLarge,
    /// The upstream failed mid-body (the cause, for the log).
    Broken(String),
    /// A pause past `stream_idle_timeout_ms`.
    Idle,
    /// Not finished within `timeout_ms`.
    Deadline,
}

/// Count the cut as a failed exchange (logged with its cause) and say what ends the stream: one
/// wording for both ways a stream is relayed.
fn cut(shared: &Shared, server: usize, why: Cut) -> StreamError {
    let (cause, error) = match why {
        Cut::TooLarge => (
            "answer larger than max_response_bytes".to_string(),
            StreamError::Failed("upstream answer larger than max_response_bytes".into()),
        ),
        Cut::Broken(cause) => (
            format!("reading the streamed answer: {cause}"),
            StreamError::Failed("upstream failed while sending its answer".into()),
        ),
        Cut::Idle => (
            "streamed answer paused past stream_idle_timeout_ms".to_string(),
            StreamError::Timeout("upstream paused past stream_idle_timeout_ms".into()),
        ),
        Cut::Deadline => (
            "streamed answer not finished within timeout_ms".to_string(),
            StreamError::Timeout("upstream did not finish its answer within timeout_ms".into()),
        ),
    };
    fail(shared, server, cause);
    error
}

/// A streamed answer relayed on the client connection's own task ([`Side::Front`]): the same
/// bounds as [`stream`]'s (`timeout_ms` for the whole answer, `stream_idle_timeout_ms` between two
/// chunks once the first came, `max_response_bytes`), polled by the front end chunk by chunk as
/// the client takes them. Dropped before its end (the client went away), it drops the upstream
/// connection, which closes it; at its clean end the connection goes back to the pool.
struct Relayed {
    shared: Arc<Shared>,
    /// The server the answer comes from.
    server: usize,
    body: Incoming,
    /// Taken back into the pool at the clean end.
    conn: Option<Conn>,
    _flight: InFlight,
    /// The end of `timeout_ms`.
    deadline: Instant,
    idle: Duration,
    /// The whole answer's deadline, made the first time the answer has to be waited for (one
    /// that never has to be waited for needs no timer).
    deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The idle timer, made the first time a chunk has to be waited for; pushed back lazily, when
    /// it fires before `last_chunk` + `idle`, not at every chunk.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// When the last chunk came: the idle timeout runs from the first.
    last_chunk: Option<Instant>,
    produced: u64,
}

impl Relayed {
    /// End the stream for `why`, counted (the connection is closed).
    fn failed(&mut self, why: Cut) -> Poll<Option<Result<Bytes, StreamError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(cut(&self.shared, self.server, why))))
    }

    /// True once `idle` has passed since the last chunk (`cx` woken when it will have).
    fn idle_passed(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(last) = self.last_chunk else {
            return false;
        };
        let due = last + self.idle;
        let timer = self
            .idle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            if Instant::now() >= due {
                return true;
            }
            // Fired for an earlier chunk: wait for this one's.
            timer.as_mut().reset(due.into());
        }
    }
}

impl common::body::Source for Relayed {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, StreamError>>> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers and empty chunks: nothing to forward.
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    let max = self.shared.config.max_response_bytes as u64;
                    if self.produced + data.len() as u64 > max {
                        return self.failed(Cut::TooLarge);
                    }
                    let now = Instant::now();
                    if now >= self.deadline {
                        // A client that reads slowly while the upstream is ready never leaves
                        // the answer waiting: the deadline is looked at with every chunk too.
                        return self.failed(Cut::Deadline);
                    }
                    self.produced += data.len() as u64;
                    self.last_chunk = Some(now);
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(None) => {
                    if let Some(conn) = self.conn.take() {
                        checkin(&self.shared, self.server, conn, Side::Front);
                    }
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => return self.failed(Cut::Broken(e.to_string())),
                Poll::Pending => break,
            }
        }
        let deadline = self.deadline;
        let timer = self
            .deadline_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        if timer.as_mut().poll(cx).is_ready() {
            return self.failed(Cut::Deadline);
        }
        if self.idle_passed(cx) {
            return self.failed(Cut::Idle);
        }
        Poll::Pending
    }
}

/// True if a segment of `path` is `.` or `..`, written plainly or percent-encoded. No
/// allocation: it runs on every forwarded request.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|segment| {
        let mut rest = segment.as_bytes();
        let mut dots = 0;
        while !rest.is_empty() {
            rest = match rest {
                [b'.', more @ ..] => more,
                [b'%', b'2', e, more @ ..] if e.eq_ignore_ascii_case(&b'e') => more,
                _ => return false,
            };
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

/// The request target at the upstream: the URL's base path, then the request's path (without
/// the endpoint's prefix under `strip_prefix`), then its query as sent.
pub fn target_of(base: &str, strip: Option<&str>, uri: &Uri) -> Result<Uri, HandlerError> {
    let path = uri.path();
    let path = match strip.and_then(|prefix| path.strip_prefix(prefix)) {
        Some(rest) if rest.starts_with('/') => rest,
        _ => path,
    };
    let mut target = String::with_capacity(base.len() + path.len() + 1);
    target.push_str(base);
    target.push_str(path);
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    target
        .parse()
        .map_err(|_| HandlerError::Internal("cannot build the upstream request target".into()))
}

fn target(shared: &Shared, uri: &Uri) -> Result<Uri, HandlerError> {
    if shared.config.base_path.is_empty() && shared.strip.is_none() {
        if let Some(pq) = uri.path_and_query() {
            return Ok(Uri::from(pq.clone()));
        }
    }
    target_of(&shared.config.base_path, shared.strip.as_deref(), uri)
}

#[allow(clippy::manual_async_fn)]
fn exchange<'a>(
    shared: &'a Shared,
    req: &'a JobRequest,
    outgoing: Box<hyper::Request<relay::message::OutBody>>,
    upgrading: bool,
    side: Side,
    flight: &'a InFlight,
) -> impl Future<Output = Result<Answer, HandlerError>> + Send + 'a {
    async move {
        let conn = relay::usable(checkout(shared, flight.server(), side)).await;
        let (sent, resent) = relay::send(conn, || flight.open(), outgoing, 1).await;
        let server = flight.server();
        if resent > 0 {
            let stats = &shared.servers[server].stats;
            stats.count(&stats.retries);
        }
        match sent {
            Sent::Answered { response, conn }
                if upgrading && response.status() == StatusCode::SWITCHING_PROTOCOLS =>
            {
                Ok(Answer::Upgrade { response, conn })
            }
            Sent::Answered { response, conn } => {
                let Some(declared) = read_whole(&req.method, &response) else {
                    // Streamed. A body framed by its declared length keeps that length (hyper's
                    // client reads exactly that much, and fails on less); one past
                    // `max_response_bytes` is refused before anything reaches the client.
                    let framed = response.body().size_hint().exact();
                    if framed.is_some_and(|len| len > shared.config.max_response_bytes as u64) {
                        return Err(too_large(shared, server));
                    }
                    let (head, body) = response.into_parts();
                    let head = match framed {
                        Some(_) => relay::answer_head_framed(head, &req.method),
                        None => relay::answer_head(head, &req.method),
                    };
                    // The rest comes in pieces (tokens, events): acknowledged as they come, or a
                    // server with Nagle's algorithm on holds each back up to 40 ms.
                    conn.quick_ack();
                    return Ok(Answer::Stream { head, body, conn });
                };
                // Boxed (480 bytes, from glibc's per-thread cache): inline, it would take the
                // exchange's whole future past that cache.
                let whole = Box::pin(relay::read_bounded_declared(
                    response,
                    &req.method,
                    shared.config.max_response_bytes,
                    declared,
                ));
                // Nearly always the body came with the head and is read at the first poll. If
                // not, the server may be holding it back (Nagle's algorithm) until its head is
                // acknowledged: acknowledged then, not after up to 40 ms.
                match relay::ack_if_late(whole, &conn).await {
                    Ok(response) => {
                        checkin(shared, server, conn, side);
                        Ok(Answer::Whole(response))
                    }
                    Err(BodyError::TooLarge) => Err(too_large(shared, server)),
                    Err(BodyError::Broken(cause)) => {
                        fail(shared, server, cause);
                        Err(HandlerError::BadGateway(
                            "upstream failed while sending its answer".into(),
                        ))
                    }
                }
            }
            Sent::Unsent { cause, connect }
                if connect && cause.kind() == io::ErrorKind::TimedOut =>
            {
                fail(shared, server, "connect timed out".into());
                Err(HandlerError::Timeout(
                    "upstream did not accept the connection in time".into(),
                ))
            }
            Sent::Unsent { cause, connect } => {
                let what = if connect {
                    "cannot connect"
                } else {
                    "connection closed before sending"
                };
                fail(shared, server, format!("{what}: {cause}"));
                Err(HandlerError::BadGateway(UNAVAILABLE.into()))
            }
            Sent::Broken(cause) => {
                // The client's body, forwarded as it came, stopped short (too large, too slow,
                // unreadable): hyper gave the request up, and the answer is the client's fault.
                if let Some(failure) = req.body_stream.failure() {
                    return Ok(Answer::Whole(failure.response()));
                }
                fail(shared, server, cause);
                Err(HandlerError::BadGateway(
                    "upstream closed the connection without answering".into(),
                ))
            }
        }
    }
}

/// A fresh connection to the request's server, bounded by `connect_timeout_ms` (past it: a
/// `TimedOut` error). If none can be made, the request's `refused` is set and the server is
/// passed over for a while (`Shared::pass_over`).
async fn connect(flight: &InFlight) -> io::Result<Conn> {
    let (shared, server) = (&flight.shared, flight.server());
    let at = &shared.servers[server];
    at.stats.count(&at.stats.connects);
    // With `host_header = "upstream"` every request on it names the server itself.
    let host = match shared.config.host_header {
        HostHeader::Client => None,
        HostHeader::Upstream => Some(at.authority.clone()),
    };
    let conn = match tokio::time::timeout(
        shared.config.connect_timeout,
        relay::connect_as(&at.target, host),
    )
    .await
    {
        Ok(conn) => conn,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    };
    if let Err(e) = &conn {
        // Remembered (not counted as a failed exchange: the resend may yet be answered).
        let cause = if e.kind() == io::ErrorKind::TimedOut {
            "connect timed out".to_string()
        } else {
            format!("cannot connect: {e}")
        };
        shared.pass_over(server, &cause);
        remember(at, cause);
        flight.refused.store(true, Ordering::Relaxed);
    }
    conn
}

/// The most recently used idle connection of `side`, if it has been idle less than
/// `keepalive_timeout_ms`. If it has been idle longer, so have all the others (they came back
/// earlier): all are closed, and the caller opens a fresh one.
fn checkout(shared: &Shared, server: usize, side: Side) -> Option<Conn> {
    let mut idle = shared.servers[server]
        .idle
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let kept = idle.side(side);
    if let Some(conn) = reusable(shared, kept.pop()?) {
        return Some(conn);
    }
    let stale = std::mem::take(kept);
    drop(idle);
    drop(stale);
    None
}

/// A connection kept idle since its `since`, if that was less than `keepalive_timeout_ms` ago
/// (else it is dropped, which closes it): the pool's and the health check's rule.
pub(crate) fn reusable(shared: &Shared, entry: (Conn, Instant)) -> Option<Conn> {
    relay::within_keepalive(entry, shared.config.keepalive_timeout)
}

/// `conn` as kept idle from now, if it is open and connections are kept at all
/// (`keepalive_timeout_ms` above zero).
pub(crate) fn kept(shared: &Shared, conn: Conn) -> Option<(Conn, Instant)> {
    (!conn.is_closed() && !shared.config.keepalive_timeout.is_zero())
        .then(|| (conn, Instant::now()))
}

/// Keep `conn` (driven by `side`'s runtime) for the next request if it is open, connections are
/// kept at all (`keepalive_timeout_ms` above zero) and the idle set has room.
fn checkin(shared: &Shared, server: usize, conn: Conn, side: Side) {
    let Some(entry) = kept(shared, conn) else {
        return;
    };
    let mut idle = shared.servers[server]
        .idle
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if idle.len() < shared.max_idle {
        idle.side(side).push(entry);
    }
}

/// A declared or read answer past `max_response_bytes`: counted, and its `502`.
fn too_large(shared: &Shared, server: usize) -> HandlerError {
    fail(
        shared,
        server,
        "answer larger than max_response_bytes".into(),
    );
    HandlerError::BadGateway("upstream answer larger than max_response_bytes".into())
}

/// Count a failed exchange with `server` and remember its cause for `/status`; log it with the
/// server's URL.
pub(crate) fn fail(shared: &Shared, server: usize, cause: String) {
    let at = &shared.servers[server];
    at.stats.count(&at.stats.failures);
    tracing::warn!(endpoint = %shared.endpoint, upstream = %at.url, cause = %cause, "upstream exchange failed");
    remember(at, cause);
}

/// Remember `cause` as `server`'s last error, for `/status`.
pub(crate) fn remember(server: &crate::Server, cause: String) {
    *server.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some((cause, Instant::now()));
}

/// Resolves once the client that waits for `req` has gone (never, if nobody watches).
async fn client_gone(req: &JobRequest) {
    while !req.client.is_gone() {
        tokio::time::sleep(CLIENT_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The asynchronous exchange's future is boxed per request: past glibc's per-thread cache
    /// (1,032 bytes) every box and free takes the allocator's slow path (BENCHMARKS 14.4).
    #[test]
    fn the_asynchronous_exchange_fits_the_allocators_per_thread_cache() {
        let toml = r#"
[[endpoint]]
path = "/u"
[endpoint.upstream]
url = "http://127.0.0.1:9"
"#;
        let config = config::Config::from_toml(toml, "test.toml").unwrap();
        let config::HandlerConfig::Upstream(upstream) = &config.endpoints[0].handler else {
            panic!("not an upstream endpoint");
        };
        let handler = crate::UpstreamHandler::start("/u", false, upstream, 1, false).unwrap();
        let req = JobRequest {
            method: Method::GET,
            uri: "/u".parse().unwrap(),
            version: hyper::Version::HTTP_11,
            headers: hyper::HeaderMap::new(),
            body: Default::default(),
            remote_addr: ([127, 0, 0, 1], 1).into(),
            local_addr: ([127, 0, 0, 1], 2).into(),
            client: Default::default(),
            upgrade: Default::default(),
            body_stream: Default::default(),
        };
        let exchange = run_async(handler.shared.clone(), req);
        let size = std::mem::size_of_val(&exchange);
        assert!(size <= 1032, "the exchange's future is {size} bytes");
    }

    #[test]
    fn the_target_keeps_or_strips_the_prefix_and_keeps_the_query() {
        let uri: Uri = "/llm/v1/models?x=1&y".parse().unwrap();
        let t = |base, strip| target_of(base, strip, &uri).unwrap().to_string();
        assert_eq!(t("", None), "/llm/v1/models?x=1&y");
        assert_eq!(t("", Some("/llm")), "/v1/models?x=1&y");
        assert_eq!(t("/base", Some("/llm")), "/base/v1/models?x=1&y");
        let root: Uri = "/llm/".parse().unwrap();
        assert_eq!(target_of("", Some("/llm"), &root).unwrap(), "/");
    }

    #[test]
    fn dot_segments_are_found_plain_or_encoded() {
        for path in [
            "/llm/../admin",
            "/llm/./x",
            "/llm/%2E%2e/admin",
            "/llm/..",
            "/a/.%2E/b",
        ] {
            assert!(has_dot_segment(path), "{path}");
        }
        for path in [
            "/llm/v1/models",
            "/llm/.well-known/x",
            "/llm/a..b",
            "/",
            "/...",
            "/%2",
            "/%2f",
        ] {
            assert!(!has_dot_segment(path), "{path}");
        }
    }
}
