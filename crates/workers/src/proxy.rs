//! The exchange with one worker: the request as the client sent it, over the worker's kept-alive
//! HTTP/1.1 connection on its Unix socket, and the worker's answer back, with hop-by-hop headers
//! handled as a proxy should (RFC 9110 section 7.6.1) and the body bounded: read whole when the
//! worker declared its length, streamed on (see `crate::stream`) when it did not.
//!
//! A kept-alive connection may have been closed by the worker since its last answer (gunicorn's
//! sync workers close every connection): it is replaced by a fresh one before sending, and a
//! request the closed connection never wrote is sent again on a fresh one. A request that may
//! have reached the worker is never sent twice.

use bytes::Bytes;
use common::handler::{JobRequest, JobResponse};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use hyper::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper_util::rt::TokioIo;
use std::io;
use std::path::Path;
use tokio::net::UnixStream;

/// The sending half of a worker connection; its driver runs as a task on the pool's runtime.
pub(crate) type Conn = SendRequest<Full<Bytes>>;

/// Largest body read from a `ready_path` answer (it is only drained).
const PROBE_BODY_LIMIT: usize = 64 * 1024;

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
    let stream = UnixStream::connect(socket).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(cause = %e, "worker connection ended");
        }
    });
    Ok(sender)
}

/// Send `req` to the worker on `socket` over `conn` (or a fresh connection) and read its answer,
/// taking at most `max_response` body bytes.
pub(crate) async fn exchange(
    conn: Option<Conn>,
    socket: &Path,
    req: &JobRequest,
    max_response: usize,
) -> Exchange {
    let mut conn = match conn {
        Some(mut c) if !c.is_closed() => c.ready().await.is_ok().then_some(c),
        _ => None,
    };
    let mut reused = conn.is_some();
    loop {
        let mut sender = match conn.take() {
            Some(c) => c,
            None => match connect(socket).await {
                Ok(c) => c,
                Err(e) => return Exchange::Unsent(format!("cannot connect: {e}")),
            },
        };
        match sender.try_send_request(to_worker(req)).await {
            Ok(resp) => return read_answer(resp, sender, &req.method, max_response).await,
            // Closed under us before a byte was written (the keep-alive race): safe to resend.
            Err(e) if reused && e.message().is_some() => reused = false,
            Err(e) if e.message().is_some() => return Exchange::Unsent(e.into_error().to_string()),
            Err(e) => return Exchange::Broken(e.into_error().to_string()),
        }
    }
}

/// GET `path` on `conn`: true if the worker answers 2xx.
pub(crate) async fn probe(conn: &mut Conn, path: &str) -> bool {
    if conn.ready().await.is_err() {
        return false;
    }
    let mut req = Request::new(Full::new(Bytes::new()));
    *req.uri_mut() = match path.parse::<Uri>() {
        Ok(uri) => uri,
        Err(_) => return false,
    };
    req.headers_mut()
        .insert(HOST, HeaderValue::from_static("localhost"));
    match conn.send_request(req).await {
        Ok(resp) => {
            let ok = resp.status().is_success();
            let drained = Limited::new(resp.into_body(), PROBE_BODY_LIMIT)
                .collect()
                .await;
            ok && drained.is_ok()
        }
        Err(_) => false,
    }
}

async fn read_answer(
    resp: Response<hyper::body::Incoming>,
    sender: Conn,
    method: &Method,
    max_response: usize,
) -> Exchange {
    let (mut parts, body) = resp.into_parts();
    // No length (a generator's chunks, server-sent events): streamed as it comes. A HEAD answer
    // has no body to stream.
    if method != Method::HEAD && hyper::body::Body::size_hint(&body).exact().is_none() {
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(CONTENT_LENGTH);
        parts.version = Version::HTTP_11;
        return Exchange::Streaming {
            head: parts,
            body,
            conn: sender,
        };
    }
    let body = match Limited::new(body, max_response).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Exchange::TooLarge,
        Err(e) => return Exchange::Broken(format!("reading the answer: {e}")),
    };
    strip_hop_by_hop(&mut parts.headers);
    // The front end frames the body it sends; a HEAD answer keeps the length the worker declared.
    if method != Method::HEAD {
        parts.headers.remove(CONTENT_LENGTH);
    }
    parts.version = Version::HTTP_11;
    Exchange::Answered {
        response: Response::from_parts(parts, body.into()),
        conn: (!sender.is_closed()).then_some(sender),
    }
}

/// The request for the worker: method, path and query, headers and body as the client sent them,
/// minus hop-by-hop headers and `Expect` (the body is already here), with `Host` (from the
/// request target if the client sent none, as HTTP/2 clients do), an exact `Content-Length`, and
/// the client's address appended to `X-Forwarded-For`.
pub(crate) fn to_worker(req: &JobRequest) -> Request<Full<Bytes>> {
    let mut headers = req.headers.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(CONTENT_LENGTH);
    headers.remove(EXPECT);
    if !headers.contains_key(HOST) {
        let host = req
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .unwrap_or_else(|| HeaderValue::from_static("localhost"));
        headers.insert(HOST, host);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(req.body.len()));
    let forwarded = HeaderName::from_static("x-forwarded-for");
    let client = req.remote_addr.ip().to_string();
    let chain = match headers.get(&forwarded).and_then(|v| v.to_str().ok()) {
        Some(earlier) => format!("{earlier}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(forwarded, value);
    }
    let mut out = Request::new(Full::new(req.body.clone()));
    *out.method_mut() = req.method.clone();
    *out.uri_mut() = req
        .uri
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    out
}

/// Remove the headers that belong to one connection, not to the message: `Connection` and every
/// header it names, `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = headers(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "upgrade"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-authorization", "Basic x"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-keep", "2"),
            ("content-type", "text/plain"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-keep", "content-type"]);
    }

    #[test]
    fn the_worker_gets_the_path_query_host_length_and_forwarded_for() {
        let req = JobRequest {
            method: Method::POST,
            uri: "http://example.test/predict?x=1".parse().unwrap(),
            version: Version::HTTP_2,
            headers: headers(&[
                ("x-forwarded-for", "10.0.0.1"),
                ("expect", "100-continue"),
                ("content-length", "999"),
                ("connection", "close"),
            ]),
            body: Bytes::from_static(b"abc"),
            remote_addr: ([192, 0, 2, 7], 5555).into(),
            local_addr: ([127, 0, 0, 1], 8080).into(),
            client: Default::default(),
        };
        let out = to_worker(&req);
        assert_eq!(out.method(), Method::POST);
        assert_eq!(out.uri(), "/predict?x=1");
        assert_eq!(out.version(), Version::HTTP_11);
        let h = out.headers();
        assert_eq!(h[HOST], "example.test");
        assert_eq!(h[CONTENT_LENGTH], "3");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.0.2.7");
        assert!(!h.contains_key(EXPECT) && !h.contains_key(CONNECTION));
    }
}
