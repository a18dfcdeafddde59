//! The exchange with one worker: the request as the client sent it, over the worker's kept-alive
//! HTTP/1.1 connection on its Unix socket, and the worker's answer back: read whole (bounded) when
//! the worker declared its length, streamed on (see `crate::stream`) when it did not. The relaying
//! itself (hop-by-hop headers, the one safe resend, bounded bodies) is the `relay` crate's,
//! shared with upstream endpoints.
//!
//! A kept-alive connection may have been closed by the worker since its last answer (gunicorn's
//! sync workers close every connection): it is replaced by a fresh one before sending, and a
//! request the closed connection never wrote is sent again on a fresh one. A request that may
//! have reached the worker is never sent twice.

use common::handler::{JobRequest, JobResponse};
use hyper::header::HeaderValue;
use hyper::Method;
use relay::{BodyError, Forwarding, Sent, Target};
use std::io;
use std::path::Path;

/// The sending half of a worker connection; its driver runs as a task on the pool's runtime.
pub(crate) type Conn = relay::Conn;

/// How an exchange with a worker ended.
#[derive(Debug)]
pub(crate) enum Exchange {
    /// The worker answered; `conn` is the connection if it can carry another request.
    Answered {
        /// The answer, hop-by-hop headers removed.
        response: JobResponse,
        /// The connection, if still open.
        conn: Option<Conn>,
    },
    /// Nothing was sent: no connection to the worker's socket could be made, or a fresh one
    /// closed before the request was written. Safe to send to another worker.
    Unsent(String),
    /// The connection failed once the request may have been sent (the worker died, or closed
    /// it mid-request), or the answer was not valid HTTP.
    Broken(String),
    /// The answer's body exceeded `max_response_bytes`; the connection was dropped.
    TooLarge,
    /// The exchange ran past `timeout_ms` (decided by the caller, which bounds it).
    TimedOut,
    /// The worker's answer has no length (chunked, or until close): its head, hop-by-hop headers
    /// removed, and its body still coming on `conn`, to be streamed (see `crate::stream`).
    Streaming {
        /// Status and headers of the answer.
        head: hyper::http::response::Parts,
        /// The body, still being read.
        body: hyper::body::Incoming,
        /// The connection that carries it.
        conn: Conn,
    },
}

/// Open a connection to the worker listening on `socket`.
pub(crate) async fn connect(socket: &Path) -> io::Result<Conn> {
    relay::connect(&Target::Unix(socket.to_path_buf())).await
}

/// Send `req` to the worker on `socket` over `conn` (or a fresh connection) and read its answer,
/// taking at most `max_response` body bytes. A reused connection that closed before the request
/// was written gets one resend on a fresh one; a fresh one that fails is left to the caller
/// (another worker may take the request).
pub(crate) async fn exchange(
    conn: Option<Conn>,
    socket: &Path,
    req: &JobRequest,
    max_response: usize,
) -> Exchange {
    let conn = relay::usable(conn).await;
    let resends = usize::from(conn.is_some());
    let (sent, _) = relay::send(conn, || connect(socket), Box::new(to_worker(req)), resends).await;
    match sent {
        // No length (a generator's chunks, server-sent events): streamed as it comes. A HEAD
        // answer has no body to stream.
        Sent::Answered { response, conn }
            if req.method != Method::HEAD
                && hyper::body::Body::size_hint(response.body())
                    .exact()
                    .is_none() =>
        {
            let (head, body) = response.into_parts();
            Exchange::Streaming {
                head: relay::answer_head(head, &req.method),
                body,
                conn,
            }
        }
        Sent::Answered { response, conn } => {
            match relay::read_bounded(response, &req.method, max_response).await {
                Ok(response) => Exchange::Answered {
                    response,
                    conn: (!conn.is_closed()).then_some(conn),
                },
                Err(BodyError::TooLarge) => Exchange::TooLarge,
                Err(BodyError::Broken(cause)) => Exchange::Broken(cause),
            }
        }
        Sent::Unsent { cause, connect } if connect => {
            Exchange::Unsent(format!("cannot connect: {cause}"))
        }
        Sent::Unsent { cause, .. } => Exchange::Unsent(cause.to_string()),
        Sent::Broken(cause) => Exchange::Broken(cause),
    }
}

/// The request for the worker: as the client sent it, relayed (see [`relay::outgoing`]).
pub(crate) fn to_worker(req: &JobRequest) -> hyper::Request<relay::message::OutBody> {
    relay::outgoing(req, relay::path_and_query(req), Forwarding::default())
}

/// GET `path` on `conn`: true if the worker answers 2xx.
pub(crate) async fn probe(conn: &mut Conn, path: &str) -> bool {
    let host = HeaderValue::from_static("localhost");
    relay::probe(conn, path, &host)
        .await
        .is_ok_and(|status| status.is_success())
}
