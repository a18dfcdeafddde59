//! Upstream endpoints against a fake upstream written here (a hyper server, or raw sockets that
//! misbehave on purpose), on real TCP and Unix sockets: status, headers and body pass through
//! with hop-by-hop headers removed and `X-Forwarded-*` added; connections are kept alive; no more
//! than `workers` requests are ever in flight to the upstream; a down upstream is a fast, clean
//! `502` and is tried again only while nothing was written; health checks turn a down upstream
//! into fast overflow and `/readyz` not ready, and back; prefix endpoints forward everything under
//! them; a streamed answer (Server-Sent Events) reaches the client token by token, and a client
//! that leaves mid-stream closes the upstream connection. Every hold is a gate the test opens;
//! nothing waits on a wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{channel, BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use light::{Light, TrafficLight};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::{read_exactly, read_to_close, request, wait_until, within, TempDir, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A request as the fake upstream saw it.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Bytes,
}

/// What the fake upstream records and what the test controls.
#[derive(Debug)]
struct State {
    seen: Mutex<Vec<Seen>>,
    connections: AtomicUsize,
    /// Connections that ended (closed by the proxy, or by the fake).
    closed: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    healthy: AtomicBool,
    /// A request with `x-hold: N` waits until this is at least N.
    gate: watch::Sender<u32>,
    /// The body of the last `GET /sse`: the test sends its events.
    events: Mutex<Option<channel::Sender<Bytes, Infallible>>>,
    /// The bytes of `POST /upload` bodies received so far, as they come.
    uploaded: Mutex<Vec<u8>>,
}

/// A fake upstream: `GET /health` answers 200 or 503 as the test says; anything else answers
/// `201` with its own hop-by-hop headers, after waiting for the gate if the request says
/// `x-hold`.
struct Fake {
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Fake {
    fn state() -> Arc<State> {
        Arc::new(State {
            seen: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            gate: watch::channel(0).0,
            events: Mutex::new(None),
            uploaded: Mutex::new(Vec::new()),
        })
    }

    async fn tcp() -> (Fake, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Fake::state();
        let s = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting the fake closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, s.clone()));
            }
        });
        (Fake { state, task }, addr)
    }

    fn unix(path: &Path, state: Arc<State>) -> Fake {
        let listener = UnixListener::bind(path).unwrap();
        let s = state.clone();
        let task = tokio::spawn(async move {
            // Dropped with the accept loop: aborting the fake closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                connections.spawn(serve(stream, s.clone()));
            }
        });
        Fake { state, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Release the requests held with `x-hold` up to `level`.
    fn release(&self, level: u32) {
        self.state.gate.send_replace(level);
    }

    fn open_gate(&self) {
        self.release(u32::MAX);
    }

    /// The event stream of the `GET /sse` the fake has received (waits for it).
    async fn events(&self) -> channel::Sender<Bytes, Infallible> {
        wait_until("an event stream at the upstream", || {
            self.state.events.lock().unwrap().is_some()
        })
        .await;
        self.state.events.lock().unwrap().take().unwrap()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S>(stream: S, state: Arc<State>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    state.connections.fetch_add(1, Ordering::SeqCst);
    let s = state.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let state = s.clone();
        async move { Ok::<_, hyper::Error>(answer(req, &state).await) }
    });
    let _ = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
    state.closed.fetch_add(1, Ordering::SeqCst);
}

/// Counts a request in flight at the fake for as long as it lives (its answer may be dropped
/// unfinished when the connection closes).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn new(state: &'a State) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

type FakeBody = BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>, state: &State) -> Response<FakeBody> {
    if req.uri().path() == "/sse" {
        let (events, body) = channel::Channel::new(1);
        *state.events.lock().unwrap() = Some(events);
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(body.boxed())
            .unwrap();
    }
    if req.uri().path() == "/upload" {
        // Read frame by frame, each recorded as it comes; the answer says how the body was
        // framed and whether it ended cleanly.
        let framing = |name: &str| {
            req.headers()
                .get(name)
                .map_or("-".to_string(), |v| v.to_str().unwrap().to_string())
        };
        let framing = format!(
            "content-length {}, transfer-encoding {}",
            framing("content-length"),
            framing("transfer-encoding")
        );
        let mut body = req.into_body();
        let mut ended = "whole";
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        state.uploaded.lock().unwrap().extend_from_slice(&data);
                    }
                }
                Err(_) => {
                    ended = "cut";
                    break;
                }
            }
        }
        let got = state.uploaded.lock().unwrap().len();
        return Response::new(
            Full::new(Bytes::from(format!("{got} bytes {ended}, {framing}"))).boxed(),
        );
    }
    if req.uri().path() == "/health" {
        let status = if state.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let mut resp = Response::new(Full::new(Bytes::from_static(b"health\n")).boxed());
        *resp.status_mut() = status;
        return resp;
    }
    let in_flight = InFlight::new(state);
    let hold: Option<u32> = req
        .headers()
        .get("x-hold")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let uri = parts.uri.to_string();
    state.seen.lock().unwrap().push(Seen {
        headers: parts.headers,
        body,
    });
    if let Some(level) = hold {
        let mut gate = state.gate.subscribe();
        let _ = gate.wait_for(|open| *open >= level).await;
    }
    drop(in_flight);
    Response::builder()
        .status(StatusCode::CREATED)
        .header("x-up", "yes")
        .header("connection", "x-drop")
        .header("x-drop", "secret")
        .header("keep-alive", "timeout=5")
        .body(Full::new(Bytes::from(format!("from upstream {uri}"))).boxed())
        .unwrap()
}

/// A jellyfish endpoint at `path` with 4 workers forwarding to `url`, plus `extra` lines in the
/// `[endpoint.upstream]` table.
fn config(path: &str, url: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nmode = \"jellyfish\"\nworkers = 4\nqueue = 64\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n\
         [endpoint.upstream]\nurl = \"{url}\"\n{extra}\n"
    )
}

/// As [`config`], forwarding to several servers (`urls`).
fn config_servers(path: &str, addrs: &[SocketAddr], extra: &str) -> String {
    let urls: Vec<String> = addrs.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!(
        "[[endpoint]]\npath = \"{path}\"\nmode = \"jellyfish\"\nworkers = 4\nqueue = 64\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n\
         [endpoint.upstream]\nurls = [{}]\n{extra}\n",
        urls.join(", ")
    )
}

fn upstream_status(server: &TestServer, path: &str) -> serde_json::Value {
    server.status_of(path).handler.expect("an upstream status")["upstream"].clone()
}

/// While `/u`'s upstream is unhealthy: a request is refused at once (`503`, saying so) and
/// `/readyz` is not ready; what `/readyz` says.
async fn refused_and_not_ready(server: &TestServer) -> String {
    let reply = server.post("/u", "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.text().contains("upstream is unhealthy"),
        "{}",
        reply.text()
    );
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    ready.text()
}

/// `GET /u` when no connection can be made: a `502 upstream unavailable` after two connects
/// (one resend), counted as one failure; the upstream's `/status` object.
async fn unavailable_after_one_resend(server: &TestServer) -> serde_json::Value {
    let reply = server.get("/u").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.text(), "upstream unavailable\n");
    let up = upstream_status(server, "/u");
    assert_eq!(
        (up["connects"].as_u64(), up["retries"].as_u64()),
        (Some(2), Some(1)),
        "{up}"
    );
    assert_eq!(up["failures"], 1, "{up}");
    up
}

/// An address nothing listens on (bound a moment ago, then closed).
async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn status_headers_and_body_pass_through_with_hop_by_hop_headers_removed_and_forwarding_added()
{
    let (fake, addr) = Fake::tcp().await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;

    let req = Request::builder()
        .method("POST")
        .uri("/u?x=1&y=2")
        .header("host", "fiddler.test")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=9")
        .header("proxy-authorization", "Basic eA==")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-custom", "kept")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let reply = server.client().send(req).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.text(), "from upstream /u?x=1&y=2");
    assert_eq!(reply.header("x-up").as_deref(), Some("yes"));
    for hop in ["x-drop", "keep-alive"] {
        assert!(reply.header(hop).is_none(), "{hop} reached the client");
    }

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let h = &seen[0].headers;
    assert_eq!(seen[0].body, "payload");
    assert_eq!(h["host"], "fiddler.test");
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["content-length"], "7");
    for hop in ["x-secret", "keep-alive", "proxy-authorization"] {
        assert!(!h.contains_key(hop), "{hop} reached the upstream");
    }

    // The connection is kept alive for the next request. A `GET` without content goes up
    // without a `Content-Length` (RFC 9110 section 8.6).
    let reply = server.get("/u").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(fake.connections(), 1);
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert!(!seen[1].headers.contains_key("content-length"));
    assert!(!seen[1].headers.contains_key("transfer-encoding"));
    assert_eq!(seen[1].body, "");
    assert_eq!(upstream_status(&server, "/u")["idle_connections"], 1);
    server.shutdown().await;
}

#[tokio::test]
async fn requests_in_flight_to_the_upstream_never_exceed_workers_under_50_clients_at_once_or_queued(
) {
    let (fake, addr) = Fake::tcp().await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;
    let client = server.client();
    let held = |i: usize, level: &str| {
        let mut req = request("POST", "/u", format!("{i}"));
        req.headers_mut().insert("x-hold", level.parse().unwrap());
        client.spawn(req)
    };
    let in_flight = || fake.state.in_flight.load(Ordering::SeqCst);
    // The first 4 find a free running slot and nothing queued: each runs at once on its own
    // connection's task (the direct path), the next 46 queue behind them.
    let mut replies: Vec<_> = (0..4).map(|i| held(i, "1")).collect();
    wait_until("4 requests at the upstream", || in_flight() == 4).await;
    assert_eq!(server.counters("/u").async_runs, 4);
    replies.extend((4..50).map(|i| held(i, "2")));
    server.wait_queued("/u", 46).await;
    // The direct runs end and give their slots back; the queued ones, each waiting on its own
    // connection's task in the endpoint's line, are handed the same 4 slots in turn: never more
    // than 4 at the upstream.
    fake.release(1);
    wait_until("the 4 direct runs answered", || {
        server.counters("/u").completed == 4
    })
    .await;
    fake.open_gate();
    for reply in replies {
        assert_eq!(
            within("a reply", reply).await.unwrap().status,
            StatusCode::CREATED
        );
    }
    let counters = server.counters("/u");
    assert_eq!(counters.admitted, 50);
    assert_eq!(
        counters.async_runs, 50,
        "the other 46 ran on their own tasks too, after their turn"
    );
    assert_eq!(counters.completed, 50);
    assert_eq!(counters.answered(), counters.admitted);
    assert_eq!(fake.seen().len(), 50);
    assert_eq!(fake.state.max_in_flight.load(Ordering::SeqCst), 4);
    assert!(
        fake.connections() <= 4,
        "{} connections",
        fake.connections()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_refused_upstream_is_a_fast_502_that_names_no_address_tried_once_more() {
    let addr = refused_addr().await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;

    let up = unavailable_after_one_resend(&server).await;
    let cause = up["last_error"]["cause"].as_str().unwrap();
    assert!(cause.contains("cannot connect"), "{cause}");
    assert_eq!(server.counters("/u").failed, 1);
    let metrics = server.get("/metrics").await.text();
    for name in [
        "upstream_retries_total",
        "upstream_healthy",
        "upstream_idle_connections",
    ] {
        assert!(
            metrics.contains(&format!("fiddler_crab_{name}")),
            "{name}: {metrics}"
        );
    }
    server.shutdown().await;
}

/// Read from `stream` up to the end of a request head (a bodiless request: nothing after it);
/// false if the stream ended or failed first.
async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// A raw upstream that accepts connections and, per connection, either closes it at once or
/// reads the request head first and then closes it: never an answer.
async fn rude_upstream(read_first: bool) -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if read_first {
                read_head(&mut stream).await;
            }
            drop(stream);
        }
    });
    (addr, connections, task)
}

/// A raw upstream that answers every request on a connection with `answer`, as written.
async fn scripted_upstream(answer: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (addr, task)
}

/// The lines of a raw answer's head, lowercased.
fn head_lines(raw: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(raw).to_lowercase();
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    head.split("\r\n").map(str::to_owned).collect()
}

/// The `Content-Length` lines of a head.
fn content_lengths(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| l.starts_with("content-length:"))
        .map(String::as_str)
        .collect()
}

/// A server in front of a raw upstream that answers `answer`, and the raw answer to a `GET`
/// through it on a fresh connection.
async fn raw_through(answer: &'static [u8]) -> (TestServer, JoinHandle<()>, Vec<u8>) {
    let (addr, task) = scripted_upstream(answer).await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;
    let raw = server
        .client()
        .raw(b"GET /u HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await;
    (server, task, raw)
}

#[tokio::test]
async fn a_whole_answer_keeps_a_length_it_matches_and_is_reframed_when_it_does_not() {
    // Framed by its length: the length reaches the client once, as declared.
    let (server, task, raw) =
        raw_through(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello").await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let lines = head_lines(&raw);
    assert_eq!(lines[0], "http/1.1 200 ok", "{text}");
    assert_eq!(content_lengths(&lines), ["content-length: 5"], "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    // And through a client that checks the framing, twice on one kept-alive upstream connection.
    for _ in 0..2 {
        let reply = server.get("/u").await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "hello".to_owned())
        );
        assert_eq!(reply.header("content-length").as_deref(), Some("5"));
    }
    server.shutdown().await;
    task.abort();

    // Chunked, with a length that lies: the chunked framing wins at the upstream, and the client
    // gets the length of the body read, never the one declared.
    let (server, task, raw) = raw_through(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let lines = head_lines(&raw);
    if lines[0] == "http/1.1 200 ok" {
        assert_eq!(content_lengths(&lines), ["content-length: 5"], "{text}");
        assert!(
            !lines.iter().any(|l| l.starts_with("transfer-encoding")),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    } else {
        // An upstream answer this contradictory may be refused outright: then a clean 502.
        assert_eq!(lines[0], "http/1.1 502 bad gateway", "{text}");
    }
    server.shutdown().await;
    task.abort();
}

/// A raw upstream that answers the first request on each connection with `answer`, as written,
/// then closes the connection.
async fn closing_upstream(answer: &'static [u8]) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await {
                    let _ = stream.write_all(answer).await;
                }
            });
        }
    });
    (addr, task)
}

/// `HTTP/1.1 200 OK` declaring a `Content-Length` of `declared` and carrying `sent` bytes of body.
fn long_answer(declared: usize, sent: usize) -> &'static [u8] {
    let mut answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + sent, b'x');
    answer.leak()
}

#[tokio::test]
async fn a_streamed_answer_keeps_the_length_it_is_framed_by_and_one_past_max_response_bytes_is_a_502(
) {
    // 100,000 bytes: past the 64 KiB read whole, so streamed, on the connection's task
    // (jellyfish) and from an executor thread (crab).
    const LEN: usize = 100_000;
    for mode in ["jellyfish", "crab"] {
        let toml = |url: &str, extra: &str| {
            config("/u", url, extra).replace(
                "mode = \"jellyfish\"\nworkers = 4",
                &format!("mode = \"{mode}\""),
            )
        };
        // Whole: the declared length reaches HTTP/1.1, HTTP/1.0 and HTTP/2 clients, and the body
        // is all there.
        let (addr, task) = scripted_upstream(long_answer(LEN, LEN)).await;
        let server = TestServer::start(&toml(&format!("http://{addr}"), "")).await;
        let reply = server.get("/u").await;
        assert_eq!(reply.status, StatusCode::OK, "{mode}");
        assert_eq!(reply.header("content-length").as_deref(), Some("100000"));
        assert_eq!(reply.body.len(), LEN, "{mode}");
        let raw = server.raw(b"GET /u HTTP/1.0\r\nHost: t\r\n\r\n").await;
        let lines = head_lines(&raw);
        assert_eq!(
            content_lengths(&lines),
            ["content-length: 100000"],
            "{mode}"
        );
        assert!(
            !lines.iter().any(|l| l.starts_with("transfer-encoding")),
            "{lines:?}"
        );
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(raw.len() - head_end, LEN, "{mode}: the HTTP/1.0 body");
        let reply = server
            .client()
            .connect_h2()
            .await
            .send(request("GET", "/u", ""))
            .await;
        assert_eq!(reply.header("content-length").as_deref(), Some("100000"));
        assert_eq!(reply.body.len(), LEN, "{mode}: over HTTP/2");
        assert_eq!(server.counters("/u").failed, 0, "{mode}");
        server.shutdown().await;
        task.abort();

        // Cut short by the upstream: the client has the length declared and fewer bytes, and
        // the connection ends there; never a clean end of a shorter body.
        let (addr, task) = closing_upstream(long_answer(LEN, LEN / 2)).await;
        let server = TestServer::start(&toml(&format!("http://{addr}"), "")).await;
        let raw = server.raw(b"GET /u HTTP/1.1\r\nHost: t\r\n\r\n").await;
        let lines = head_lines(&raw);
        assert_eq!(lines[0], "http/1.1 200 ok", "{mode}");
        assert_eq!(
            content_lengths(&lines),
            ["content-length: 100000"],
            "{mode}"
        );
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(raw.len() - head_end < LEN, "{mode}: the body was cut short");
        wait_until("the cut counted", || server.counters("/u").failed == 1).await;
        server.shutdown().await;
        task.abort();

        // Declared past max_response_bytes: a 502 at once, nothing of it relayed.
        let (addr, task) = scripted_upstream(long_answer(LEN, LEN)).await;
        let server = TestServer::start(&toml(
            &format!("http://{addr}"),
            "max_response_bytes = 70000",
        ))
        .await;
        let reply = server.get("/u").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{mode}");
        assert_eq!(
            reply.text(),
            "upstream answer larger than max_response_bytes\n",
            "{mode}"
        );
        assert_eq!(server.counters("/u").failed, 1, "{mode}");
        assert_eq!(
            upstream_status(&server, "/u")["last_error"]["cause"],
            "answer larger than max_response_bytes",
            "{mode}"
        );
        server.shutdown().await;
        task.abort();
    }
}

#[tokio::test]
async fn a_request_the_upstream_has_read_is_never_sent_again() {
    let (addr, connections, task) = rude_upstream(true).await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;
    let reply = server.post("/u", "once").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(!reply.text().contains("127.0.0.1"), "{}", reply.text());
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(upstream_status(&server, "/u")["retries"], 0);
    server.shutdown().await;
    task.abort();
}

#[tokio::test]
async fn a_connection_closed_before_the_request_is_read_is_tried_at_most_once_more() {
    let (addr, connections, task) = rude_upstream(false).await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;
    for _ in 0..5 {
        let reply = server.post("/u", "x").await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    }
    // Whether the close came before the request was written (sent again, once) or after (never
    // sent again: the upstream may have read it) is the kernel's timing; either way no request
    // took more than two connections, and each second one is counted as a retry.
    let up = upstream_status(&server, "/u");
    let retries = up["retries"].as_u64().unwrap() as usize;
    assert!(retries <= 5, "{up}");
    wait_until("the upstream saw every connection", || {
        connections.load(Ordering::SeqCst) == 5 + retries
    })
    .await;
    server.shutdown().await;
    task.abort();
}

/// A fake upstream behind a server whose pool keeps idle connections for `ms`.
async fn keeping(ms: u64) -> (Fake, TestServer) {
    let (fake, addr) = Fake::tcp().await;
    let extra = format!("keepalive_timeout_ms = {ms}");
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), &extra)).await;
    (fake, server)
}

#[tokio::test]
async fn an_idle_connection_is_used_only_within_keepalive_timeout_ms() {
    // Well within: one connection for requests in a row.
    let (fake, server) = keeping(600000).await;
    for _ in 0..3 {
        assert_eq!(server.get("/u").await.status, StatusCode::CREATED);
    }
    assert_eq!(fake.connections(), 1);
    server.shutdown().await;
    drop(fake);

    // Idle past it: closed instead of used, and a fresh one opened.
    let (fake, server) = keeping(100).await;
    assert_eq!(server.get("/u").await.status, StatusCode::CREATED);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(server.get("/u").await.status, StatusCode::CREATED);
    assert_eq!(fake.connections(), 2);
    wait_until("the stale connection closed", || {
        fake.state.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(upstream_status(&server, "/u")["retries"], 0);
    server.shutdown().await;
    drop(fake);

    // Zero: a connection per request, none kept.
    let (fake, server) = keeping(0).await;
    for _ in 0..3 {
        assert_eq!(server.get("/u").await.status, StatusCode::CREATED);
    }
    assert_eq!(fake.connections(), 3);
    wait_until("every connection closed", || {
        fake.state.closed.load(Ordering::SeqCst) == 3
    })
    .await;
    assert_eq!(upstream_status(&server, "/u")["idle_connections"], 0);
    server.shutdown().await;
}

/// A raw upstream that answers `200 ok` to the first request on each connection, then reads the
/// next request and closes the connection without answering it (as a server that closes an idle
/// connection just as a request is written into it).
async fn one_answer_upstream() -> (SocketAddr, Arc<AtomicUsize>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                for answered in [false, true] {
                    if !read_head(&mut stream).await || answered {
                        return;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections, task)
}

#[tokio::test]
async fn a_health_check_lost_on_a_kept_alive_connection_is_made_again_on_a_fresh_one() {
    // Every second check meets a connection its server closes under it: each is made again on a
    // fresh connection, so the upstream never counts as down and no check is recorded failed.
    let (addr, connections, task) = one_answer_upstream().await;
    let server = TestServer::start(&config(
        "/u",
        &format!("http://{addr}"),
        "health_path = \"/health\"\nhealth_interval_ms = 20",
    ))
    .await;
    wait_until("five checks on fresh connections", || {
        connections.load(Ordering::SeqCst) >= 5
    })
    .await;
    let up = upstream_status(&server, "/u");
    assert_eq!(up["health"], "healthy", "{up}");
    assert!(up["last_error"].is_null(), "{up}");
    server.shutdown().await;
    task.abort();
}

#[tokio::test]
async fn the_whole_exchange_is_bounded_by_timeout_ms() {
    // Jellyfish runs the exchange on the client's connection task, crab on an executor thread
    // that blocks on the handler's I/O runtime: one deadline keeper serves both, for every
    // exchange in turn.
    for mode in ["jellyfish", "crab"] {
        let (fake, addr) = Fake::tcp().await;
        let toml = config("/u", &format!("http://{addr}"), "timeout_ms = 200").replace(
            "mode = \"jellyfish\"\nworkers = 4",
            &format!("mode = \"{mode}\""),
        );
        let server = TestServer::start(&toml).await;
        for n in 1..=2 {
            let mut req = request("GET", "/u", "");
            req.headers_mut().insert("x-hold", "1".parse().unwrap());
            let reply = server.client().send(req).await;
            assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{mode}");
            assert_eq!(reply.text(), "upstream did not answer within timeout_ms\n");
            assert_eq!(server.counters("/u").timed_out, n, "{mode}");
        }
        // An exchange that answers in time is not cut short by the ones that expired.
        assert_eq!(server.get("/u").await.status, StatusCode::CREATED, "{mode}");
        fake.open_gate();
        server.shutdown().await;
    }
}

#[tokio::test]
async fn an_exchange_in_flight_when_its_endpoint_closes_still_ends_at_timeout_ms() {
    let (fake, addr) = Fake::tcp().await;
    let mut server =
        TestServer::start(&config("/u", &format!("http://{addr}"), "timeout_ms = 300")).await;
    let mut req = request("GET", "/u", "");
    req.headers_mut().insert("x-hold", "1".parse().unwrap());
    let reply = server.client().spawn(req);
    wait_until("the upstream holds the request", || {
        fake.state.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    // Shutdown closes the endpoint at once (nothing is queued) and with it the handler's I/O
    // thread, while the exchange waits on the connection's own task: its deadline still holds,
    // well before the shutdown's grace would cut the connection.
    server.begin_shutdown();
    let reply = reply.await.unwrap();
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.text(), "upstream did not answer within timeout_ms\n");
    fake.open_gate();
    server.join().await;
}

#[tokio::test]
async fn a_client_that_leaves_closes_its_upstream_connection() {
    let (fake, addr) = Fake::tcp().await;
    let server = TestServer::start(&config("/u", &format!("http://{addr}"), "")).await;
    let client = server
        .client()
        .open_raw(b"GET /u HTTP/1.1\r\nHost: fiddler.test\r\nX-Hold: 1\r\n\r\n")
        .await;
    wait_until("the request at the upstream", || {
        fake.state.in_flight.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(client);
    wait_until("the upstream connection closed", || {
        fake.state.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("the job counted as client_gone", || {
        server.counters("/u").client_gone == 1
    })
    .await;
    assert_eq!(fake.state.in_flight.load(Ordering::SeqCst), 0);
    // It ran on the direct path: the dropped exchange gave its slot back, counted once.
    let counters = server.counters("/u");
    assert_eq!((counters.admitted, counters.async_runs), (1, 1));
    assert_eq!(counters.answered(), 1);
    assert_eq!(server.endpoint("/u").admission().running(), 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_prefix_endpoint_forwards_everything_under_it_with_the_query() {
    let (fake, addr) = Fake::tcp().await;
    let url = format!("http://{addr}");
    let toml = format!(
        "{}{}{}",
        config("/llm/", &url, ""),
        config("/strip/", &format!("{url}/base"), "strip_prefix = true"),
        config("/llm/exact", &url, "")
            .replace("\"/llm/exact\"", "\"/llm/exact\"\nmethods = [\"POST\"]"),
    );
    let server = TestServer::start(&toml).await;

    let reply = server.get("/llm/v1/models?limit=2").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.text(), "from upstream /llm/v1/models?limit=2");
    let reply = server.get("/strip/v1/models?a=b").await;
    assert_eq!(reply.text(), "from upstream /base/v1/models?a=b");
    // An exact endpoint wins over the prefix above it: its methods apply.
    assert_eq!(
        server.get("/llm/exact").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // Outside every prefix, or leaving it with dot segments: never forwarded.
    assert_eq!(server.get("/llm").await.status, StatusCode::NOT_FOUND);
    assert_eq!(server.get("/other").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        server.get("/llm/../status").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(fake.seen().len(), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_health_checked_unix_socket_upstream_going_down_is_overflow_and_not_ready_until_it_returns(
) {
    let dir = TempDir::new("up");
    let socket: PathBuf = dir.path().join("up.sock");
    let state = Fake::state();
    let fake = Fake::unix(&socket, state.clone());
    let url = format!("unix:{}", socket.display());
    let server = TestServer::launch(&config(
        "/u",
        &url,
        "health_path = \"/health\"\nhealth_interval_ms = 20",
    ))
    .light(&TrafficLight::fixed(Light::Green))
    .start()
    .await;
    wait_until("the upstream checked healthy", || {
        server.endpoint("/u").handler_ready().is_ok()
    })
    .await;
    let reply = server.post("/u", "over unix").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(fake.seen()[0].body, "over unix");
    let r = server.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Down: its health check fails; new requests are refused at once, /readyz says why.
    state.healthy.store(false, Ordering::SeqCst);
    wait_until("the upstream checked unhealthy", || {
        upstream_status(&server, "/u")["health"] == "unhealthy"
    })
    .await;
    let why = refused_and_not_ready(&server).await;
    assert!(
        why.contains("/u: upstream unhealthy (health check answered 503)"),
        "{why}"
    );

    // Gone altogether, then back on the same socket.
    drop(fake);
    std::fs::remove_file(&socket).unwrap();
    state.healthy.store(true, Ordering::SeqCst);
    wait_until("the failed connect recorded", || {
        upstream_status(&server, "/u")["last_error"]["cause"]
            .as_str()
            .is_some_and(|c| c.contains("cannot connect"))
    })
    .await;
    assert!(!server
        .get("/readyz")
        .await
        .text()
        .contains(&socket.display().to_string()));
    let fake = Fake::unix(&socket, state.clone());
    wait_until("the upstream checked healthy again", || {
        upstream_status(&server, "/u")["health"] == "healthy"
    })
    .await;
    assert_eq!(server.post("/u", "back").await.status, StatusCode::CREATED);
    let r = server.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    drop(fake);
    server.shutdown().await;
}

/// `GET path` on a fresh connection to `addr`: the answer's head, with its body still to read
/// frame by frame.
async fn open_stream(addr: SocketAddr, path: &str) -> Response<Incoming> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    within(
        "the streamed answer's head",
        sender.send_request(request("GET", path, "")),
    )
    .await
    .unwrap()
}

/// The upstream sends one event, `data: TOKEN`; the client must receive exactly it.
async fn token(events: &mut channel::Sender<Bytes, Infallible>, body: &mut Incoming, token: &str) {
    let event = format!("data: {token}\n\n");
    events.send_data(Bytes::from(event.clone())).await.unwrap();
    read_exactly(body, &event).await;
}

#[tokio::test]
async fn server_sent_events_reach_the_client_one_by_one_as_the_upstream_sends_them() {
    let (fake, addr) = Fake::tcp().await;
    let server = TestServer::start(&config("/sse", &format!("http://{addr}"), "")).await;

    let response = open_stream(server.addr, "/sse").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut events = fake.events().await;

    // Token 2 is not sent until the client has token 1: nothing is held back to be sent in bulk.
    token(&mut events, &mut body, "token1").await;
    token(&mut events, &mut body, "token2").await;
    // Run on the direct path (a free slot, nothing queued), its slot held while it streams.
    assert_eq!(server.counters("/sse").async_runs, 1);
    assert_eq!(server.endpoint("/sse").admission().running(), 1);
    drop(events);
    let end = within("the end of the stream", body.frame()).await;
    assert!(end.is_none(), "{end:?}");

    wait_until("the stream counted as completed", || {
        server.counters("/sse").completed == 1
    })
    .await;
    wait_until("its slot given back", || {
        server.endpoint("/sse").admission().running() == 0
    })
    .await;
    // Its connection went back to the pool.
    wait_until("the connection idle again", || {
        upstream_status(&server, "/sse")["idle_connections"] == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_closes_the_upstream_connection() {
    let (fake, addr) = Fake::tcp().await;
    let server = TestServer::start(&config("/sse", &format!("http://{addr}"), "")).await;

    let mut body = open_stream(server.addr, "/sse").await.into_body();
    let mut events = fake.events().await;
    token(&mut events, &mut body, "token1").await;
    drop(body);

    wait_until("the upstream connection closed", || {
        fake.state.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("the stream counted as client_gone", || {
        server.counters("/sse").client_gone == 1
    })
    .await;
    assert_eq!(upstream_status(&server, "/sse")["in_flight"], 0);
    wait_until("its slot given back", || {
        server.endpoint("/sse").admission().running() == 0
    })
    .await;
    assert_eq!(server.counters("/sse").answered(), 1);
    server.shutdown().await;
}

#[test]
fn check_names_an_upstream_whose_socket_directory_is_missing() {
    use fiddler_crab::config::Config;
    let missing = config("/u", "unix:/nonexistent-fiddler-dir/up.sock", "");
    let problems =
        fiddler_crab::check_files(&Config::from_toml(&missing, "t.toml").unwrap(), "t.toml");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "endpoint[0].upstream.url");
    assert!(
        problems[0].problem.contains("does not exist"),
        "{}",
        problems[0]
    );
    // An upstream that is not running yet is no problem: its health check says when it is.
    let down = config("/u", "http://127.0.0.1:1", "");
    let problems =
        fiddler_crab::check_files(&Config::from_toml(&down, "t.toml").unwrap(), "t.toml");
    assert!(problems.is_empty(), "{problems:?}");
    // Of several servers, each is checked and named by its place in `urls`.
    let several = "[[endpoint]]\npath = \"/u\"\n[endpoint.upstream]\n\
        urls = [\"http://127.0.0.1:1\", \"unix:/nonexistent-fiddler-dir/up.sock\"]\n";
    let problems =
        fiddler_crab::check_files(&Config::from_toml(several, "t.toml").unwrap(), "t.toml");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].key, "endpoint[0].upstream.urls[1]");
}

/// Read `body` to its end, which must be an abort (the connection closed before the final
/// chunk), never a clean end.
async fn cut_short(body: &mut Incoming) {
    loop {
        match within("the end of the stream", body.frame()).await {
            Some(Ok(_)) => continue,
            Some(Err(_)) => return,
            None => panic!("the stream ended cleanly; it should have been cut short"),
        }
    }
}

#[tokio::test]
async fn a_streamed_answer_is_cut_at_max_response_bytes_at_the_idle_timeout_and_at_timeout_ms() {
    // Jellyfish relays the stream on the client connection's task, crab on an executor thread:
    // both keep the same three bounds, each counted once and the upstream connection closed.
    for mode in ["jellyfish", "crab"] {
        let endpoint = |extra: &str| {
            config("/sse", "http://ADDR", extra).replace(
                "mode = \"jellyfish\"\nworkers = 4",
                &format!("mode = \"{mode}\""),
            )
        };
        let cases = [
            (
                "max_response_bytes = 20\nstream_idle_timeout_ms = 60000",
                "failed",
            ),
            ("stream_idle_timeout_ms = 200", "idle"),
            (
                "timeout_ms = 400\nstream_idle_timeout_ms = 60000",
                "deadline",
            ),
        ];
        for (extra, case) in cases {
            let (fake, addr) = Fake::tcp().await;
            let toml = endpoint(extra).replace("ADDR", &addr.to_string());
            let server = TestServer::start(&toml).await;
            let mut body = open_stream(server.addr, "/sse").await.into_body();
            let mut events = fake.events().await;
            // 15 bytes: within every bound.
            token(&mut events, &mut body, "token1").await;
            let (mut ticker, mut kept) = (None, None);
            match case {
                // 30 bytes in all: past max_response_bytes.
                "failed" => {
                    let _ = events.send_data(Bytes::from("data: token2\n\n")).await;
                }
                // Chunks that keep coming, each well within the idle timeout, until the deadline.
                "deadline" => {
                    ticker = Some(tokio::spawn(async move {
                        for _ in 0..200 {
                            if events.send_data(Bytes::from(": tick\n\n")).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    }));
                }
                // Nothing more, the stream kept open: the idle timeout.
                _ => kept = Some(events),
            }
            cut_short(&mut body).await;
            if let Some(ticker) = ticker {
                ticker.abort();
            }
            drop(kept);
            let counted = |c: common::counters::CountersSnapshot| match case {
                "failed" => c.failed,
                _ => c.timed_out,
            };
            wait_until("the stream counted", || {
                counted(server.counters("/sse")) == 1
            })
            .await;
            assert_eq!(server.counters("/sse").answered(), 1, "{mode} {case}");
            // Jellyfish: on the connection's task (the polled stream); crab: on its thread.
            assert_eq!(
                server.counters("/sse").async_runs,
                u64::from(mode == "jellyfish"),
                "{mode} {case}"
            );
            wait_until("the upstream connection closed", || {
                fake.state.closed.load(Ordering::SeqCst) == 1
            })
            .await;
            wait_until("its slot given back", || {
                server.endpoint("/sse").admission().running() == 0
            })
            .await;
            assert_eq!(
                upstream_status(&server, "/sse")["in_flight"],
                0,
                "{mode} {case}"
            );
            server.shutdown().await;
        }
    }
}

/// Open a connection to `server` and write a `POST /u/upload` with the header line `framing`
/// and the start of its body, `first`; the upstream must then have received `upstream_has`
/// while the client still holds the rest.
async fn start_upload(
    server: &TestServer,
    fake: &Fake,
    framing: &str,
    first: &str,
    upstream_has: &[u8],
) -> tokio::net::TcpStream {
    fake.state.uploaded.lock().unwrap().clear();
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /u/upload HTTP/1.1\r\nHost: fiddler.test\r\nConnection: close\r\n{framing}\r\n\r\n{first}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    wait_until("the body's first bytes at the upstream", || {
        fake.state.uploaded.lock().unwrap().as_slice() == upstream_has
    })
    .await;
    stream
}

/// An upstream endpoint at `/u/` (prefix stripped, jellyfish or crab `mode`) forwarding request
/// bodies as they arrive, with `endpoint` lines in the endpoint's table and `server` lines in
/// `[server]`.
async fn streaming_server(
    addr: SocketAddr,
    mode: &str,
    endpoint: &str,
    server: &str,
) -> TestServer {
    let toml = config(
        "/u/",
        &format!("http://{addr}"),
        "stream_request_body = true\nstrip_prefix = true",
    )
    .replace("queue = 64\n", &format!("queue = 64\n{endpoint}\n"))
    .replace(
        "mode = \"jellyfish\"\nworkers = 4",
        &format!("mode = \"{mode}\""),
    );
    TestServer::start(&format!("[server]\n{server}\n{toml}")).await
}

#[tokio::test]
async fn with_stream_request_body_the_upstream_reads_a_body_as_the_client_sends_it() {
    // Jellyfish forwards on the client connection's task, crab from its executor thread.
    for mode in ["jellyfish", "crab"] {
        let (fake, addr) = Fake::tcp().await;
        let server = streaming_server(addr, mode, "", "").await;
        let cases = [
            (
                "Transfer-Encoding: chunked",
                "5\r\nhello\r\n",
                "6\r\n world\r\n0\r\n\r\n",
                "11 bytes whole, content-length -, transfer-encoding chunked",
            ),
            (
                "Content-Length: 11",
                "hello",
                " world",
                "11 bytes whole, content-length 11, transfer-encoding -",
            ),
        ];
        for (framing, first, rest, told) in cases {
            // The upstream has the first part while the client still holds the rest.
            let mut stream = start_upload(&server, &fake, framing, first, b"hello").await;
            stream.write_all(rest.as_bytes()).await.unwrap();
            let answer =
                String::from_utf8(within("the answer", read_to_close(stream)).await).unwrap();
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "{mode} {framing}: {answer}"
            );
            assert!(answer.ends_with(told), "{mode} {framing}: {answer}");
        }
        // A body larger than hyper's read buffer, in one write: every byte, in order.
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        fake.state.uploaded.lock().unwrap().clear();
        let reply = server
            .client()
            .send(request("POST", "/u/upload", big.clone()))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(*fake.state.uploaded.lock().unwrap(), big);
        // From an HTTP/2 client, whose body comes in DATA frames.
        fake.state.uploaded.lock().unwrap().clear();
        let reply = server
            .client()
            .connect_h2()
            .await
            .send(request("POST", "/u/upload", "over h2"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(
            reply.text().starts_with("7 bytes whole"),
            "{}",
            reply.text()
        );
        let counters = server.counters("/u/");
        assert_eq!((counters.answered(), counters.failed), (4, 0), "{mode}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_streamed_request_body_is_bounded_by_max_body_bytes_and_body_read_timeout_ms_as_a_read_one_is(
) {
    let (fake, addr) = Fake::tcp().await;
    let server = streaming_server(
        addr,
        "jellyfish",
        "max_body_bytes = 8",
        "body_read_timeout_ms = 300",
    )
    .await;
    // Past max_body_bytes after the upstream had the first five bytes: 413, the upstream's read
    // cut short.
    let mut stream = start_upload(
        &server,
        &fake,
        "Transfer-Encoding: chunked",
        "5\r\nhello\r\n",
        b"hello",
    )
    .await;
    stream.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(within("the 413", read_to_close(stream)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.ends_with("request body larger than max_body_bytes\n"),
        "{answer}"
    );
    // Declared too large: 413 before anything is sent up.
    let reply = server
        .client()
        .send(request("POST", "/u/upload", "0123456789"))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Not all there within body_read_timeout_ms: 408.
    let stream = start_upload(&server, &fake, "Content-Length: 8", "hel", b"hel").await;
    let answer = String::from_utf8(within("the 408", read_to_close(stream)).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.ends_with("request body not received in time\n"),
        "{answer}"
    );
    // A client that leaves mid-body: the upstream connection is closed.
    let closed = fake.state.closed.load(Ordering::SeqCst);
    let stream = start_upload(&server, &fake, "Content-Length: 8", "he", b"he").await;
    drop(stream);
    wait_until("the upstream connection closed", || {
        fake.state.closed.load(Ordering::SeqCst) > closed
    })
    .await;
    // None of it is the upstream's failure, and the endpoint goes on.
    wait_until("every slot given back", || {
        server.endpoint("/u/").admission().running() == 0
    })
    .await;
    assert_eq!(upstream_status(&server, "/u/")["failures"], 0);
    fake.state.uploaded.lock().unwrap().clear();
    let reply = server
        .client()
        .send(request("POST", "/u/upload", "fine"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply.text().starts_with("4 bytes whole"),
        "{}",
        reply.text()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn several_servers_take_turns_share_the_slots_by_fewest_in_flight_and_show_in_status() {
    let (a, a_addr) = Fake::tcp().await;
    let (b, b_addr) = Fake::tcp().await;
    let server = TestServer::start(&config_servers("/u", &[a_addr, b_addr], "")).await;

    // One at a time, both idle: they take turns.
    post_created(&server, 20).await;
    assert_eq!((a.seen().len(), b.seen().len()), (10, 10));

    // Many at once: the endpoint's 4 slots bound them all together, and each request goes to
    // the server with the fewest in flight, so each holds 2 while the gate is shut.
    let replies = held_at_two(&server, &a, &b, 12, None).await;
    let up = upstream_status(&server, "/u");
    assert_eq!(up["in_flight"], 4, "{up}");
    assert_eq!(up["servers"][0]["in_flight"], 2, "{up}");
    assert_eq!(up["servers"][1]["in_flight"], 2, "{up}");
    release_created(&a, &b, replies).await;
    assert_eq!(a.seen().len() + b.seen().len(), 32);
    assert!(a.state.max_in_flight.load(Ordering::SeqCst) <= 3);
    assert!(b.state.max_in_flight.load(Ordering::SeqCst) <= 3);

    let up = upstream_status(&server, "/u");
    assert_eq!(up["url"], format!("http://{a_addr}, http://{b_addr}"));
    assert_eq!(up["requests"], 32, "{up}");
    assert_eq!(up["health"], "off");
    let servers = up["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["url"], format!("http://{a_addr}"));
    assert_eq!(servers[0]["requests"], a.seen().len(), "{up}");
    assert_eq!(servers[1]["requests"], b.seen().len(), "{up}");
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains(&format!("server=\"http://{b_addr}\"")),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn weights_share_the_turns_and_the_slots_in_proportion() {
    let (a, a_addr) = Fake::tcp().await;
    let (b, b_addr) = Fake::tcp().await;
    let server =
        TestServer::start(&config_servers("/u", &[a_addr, b_addr], "weights = [3, 1]")).await;

    // One at a time, both idle: three turns for the first to one for the second.
    post_created(&server, 20).await;
    assert_eq!((a.seen().len(), b.seen().len()), (15, 5));

    // Many at once: fewest in flight for its weight, so the 4 slots sit 3 + 1.
    let replies = held_split(&server, (&a, &b), 12, None, (3, 1)).await;
    let up = upstream_status(&server, "/u");
    assert_eq!(up["servers"][0]["weight"], 3, "{up}");
    assert_eq!(up["servers"][1]["weight"], 1, "{up}");
    release_created(&a, &b, replies).await;
    assert_eq!(a.seen().len() + b.seen().len(), 32);
    server.shutdown().await;
}

#[tokio::test]
async fn host_header_upstream_names_the_server_a_request_went_to_even_after_a_resend() {
    let refused = refused_addr().await;
    let (b, b_addr) = Fake::tcp().await;
    let server = TestServer::start(&config_servers(
        "/u",
        &[refused, b_addr],
        "health_interval_ms = 10000\nhost_header = \"upstream\"",
    ))
    .await;
    // The first pick is the refusing server: the request is sent again, to the other, and
    // carries the other's name, not the first's.
    post_created(&server, 3).await;
    let up = upstream_status(&server, "/u");
    assert_eq!(up["servers"][1]["retries"], 1, "{up}");
    let hosts: Vec<String> = b
        .seen()
        .iter()
        .map(|s| s.headers["host"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts, vec![b_addr.to_string(); 3]);
    server.shutdown().await;
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_passed_over_and_its_requests_go_to_the_others() {
    let refused = refused_addr().await;
    let (b, b_addr) = Fake::tcp().await;
    // The refusing server is passed over for health_interval_ms (10 s here) once it refused.
    let server = TestServer::start(&config_servers(
        "/u",
        &[refused, b_addr],
        "health_interval_ms = 10000",
    ))
    .await;
    post_created(&server, 20).await;
    assert_eq!(b.seen().len(), 20);
    let up = upstream_status(&server, "/u");
    let first = &up["servers"][0];
    // Tried once: its refusal sent that request on to the other server, and later requests
    // went there straight away.
    assert_eq!(first["connects"], 1, "{up}");
    assert_eq!(up["servers"][1]["retries"], 1, "{up}");
    let cause = first["last_error"]["cause"].as_str().unwrap();
    assert!(cause.contains("cannot connect"), "{cause}");
    let passed_over = first["passed_over_ms"].as_u64().unwrap();
    assert!(passed_over > 0 && passed_over <= 10_000, "{up}");
    assert_eq!(up["servers"][1]["passed_over_ms"], 0, "{up}");
    let metrics = server.get("/metrics").await.text();
    for (url, flag) in [(refused.to_string(), 1), (b_addr.to_string(), 0)] {
        let line = format!("server=\"http://{url}\"}} {flag}");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("fiddler_crab_upstream_passed_over{") && l.ends_with(&line)),
            "{line}: {metrics}"
        );
    }
    // Not a failed exchange: every request was answered.
    assert_eq!(up["failures"], 0, "{up}");
    assert_eq!(server.counters("/u").failed, 0);
    server.shutdown().await;

    // Every server refusing: a 502 after one resend, as with one server.
    let (one, two) = (refused_addr().await, refused_addr().await);
    let server = TestServer::start(&config_servers("/u", &[one, two], "")).await;
    let up = unavailable_after_one_resend(&server).await;
    assert_eq!(up["servers"][0]["connects"], 1, "{up}");
    assert_eq!(up["servers"][1]["connects"], 1, "{up}");
    server.shutdown().await;
}

/// Two fake servers behind `/u` (`urls`), health-checked every 20 ms, with `extra` lines in the
/// `[endpoint.upstream]` table; returned once both are checked healthy.
async fn two_checked_servers(extra: &str) -> (AddrFake, AddrFake, TestServer) {
    let (a, a_addr) = Fake::tcp().await;
    let (b, b_addr) = Fake::tcp().await;
    let server = TestServer::launch(&config_servers(
        "/u",
        &[a_addr, b_addr],
        &format!("health_path = \"/health\"\nhealth_interval_ms = 20\n{extra}"),
    ))
    .light(&TrafficLight::fixed(Light::Green))
    .start()
    .await;
    wait_until("both servers checked healthy", || {
        server_health(&server, 0) == "healthy" && server_health(&server, 1) == "healthy"
    })
    .await;
    let a = AddrFake {
        fake: a,
        addr: a_addr,
    };
    let b = AddrFake {
        fake: b,
        addr: b_addr,
    };
    (a, b, server)
}

/// A fake server and its address.
struct AddrFake {
    fake: Fake,
    addr: SocketAddr,
}

impl std::ops::Deref for AddrFake {
    type Target = Fake;
    fn deref(&self) -> &Fake {
        &self.fake
    }
}

/// The health of `server`'s `i`th upstream server (`/u`), as `/status` shows it.
fn server_health(server: &TestServer, i: usize) -> serde_json::Value {
    upstream_status(server, "/u")["servers"][i]["health"].clone()
}

#[tokio::test]
async fn an_unhealthy_server_gets_no_requests_and_every_server_unhealthy_is_overflow() {
    let (a, b, server) = two_checked_servers("").await;

    // One down: it is passed over, the endpoint stays ready.
    set_health(&server, &a, 0, false).await;
    post_created(&server, 10).await;
    assert_eq!((a.seen().len(), b.seen().len()), (0, 10));
    assert_eq!(upstream_status(&server, "/u")["health"], "healthy");
    let r = server.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    // Both down: refused at once as overflow, not ready, and why, naming no address.
    set_health(&server, &b, 1, false).await;
    let why = refused_and_not_ready(&server).await;
    assert!(
        why.contains("/u: no upstream server ready (urls[0]: upstream unhealthy (health check answered 503); urls[1]: upstream unhealthy (health check answered 503))"),
        "{why}"
    );
    assert!(!why.contains(&a.addr.to_string()), "{why}");
    assert_eq!(upstream_status(&server, "/u")["health"], "unhealthy");

    // One back: it takes every request.
    set_health(&server, &a, 0, true).await;
    post_created(&server, 4).await;
    assert_eq!((a.seen().len(), b.seen().len()), (4, 10));
    let r = server.get("/readyz").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    server.shutdown().await;
}

/// Make `fake`, `server`'s `i`th upstream server, answer its health checks as `healthy` says,
/// and wait until `/status` shows it so.
async fn set_health(server: &TestServer, fake: &Fake, i: usize, healthy: bool) {
    fake.state.healthy.store(healthy, Ordering::SeqCst);
    let want = if healthy { "healthy" } else { "unhealthy" };
    wait_until(&format!("server {i} checked {want}"), || {
        server_health(server, i) == want
    })
    .await;
}

/// `n` requests to `/u` at once, held at the fakes' gate (each with `x-session: session` if
/// given): waits until the endpoint's 4 slots are in use and asserts they went 2 and 2 to the
/// two servers. Their replies, to await after [`release_created`].
async fn held_at_two(
    server: &TestServer,
    a: &Fake,
    b: &Fake,
    n: usize,
    session: Option<&str>,
) -> Vec<JoinHandle<support::Reply>> {
    held_split(server, (a, b), n, session, (2, 2)).await
}

/// As [`held_at_two`], asserting the 4 slots went `split` to the two servers.
async fn held_split(
    server: &TestServer,
    (a, b): (&Fake, &Fake),
    n: usize,
    session: Option<&str>,
    split: (usize, usize),
) -> Vec<JoinHandle<support::Reply>> {
    let client = server.client();
    let replies = (0..n)
        .map(|i| {
            let mut req = request("POST", "/u", format!("held {i}"));
            req.headers_mut().insert("x-hold", "1".parse().unwrap());
            if let Some(session) = session {
                req.headers_mut()
                    .insert("x-session", session.parse().unwrap());
            }
            client.spawn(req)
        })
        .collect();
    let in_flight = |f: &Fake| f.state.in_flight.load(Ordering::SeqCst);
    wait_until("4 held requests at the servers", || {
        in_flight(a) + in_flight(b) == 4
    })
    .await;
    assert_eq!((in_flight(a), in_flight(b)), split);
    replies
}

/// Open both fakes' gates; every one of `replies` is `201`.
async fn release_created(a: &Fake, b: &Fake, replies: Vec<JoinHandle<support::Reply>>) {
    a.open_gate();
    b.open_gate();
    for reply in replies {
        assert_eq!(
            within("a reply", reply).await.unwrap().status,
            StatusCode::CREATED
        );
    }
}

/// `n` requests to `/u`, one after another, each answered `201`.
async fn post_created(server: &TestServer, n: usize) {
    for i in 0..n {
        let reply = server.post("/u", format!("{i}")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
}

#[tokio::test]
async fn an_affinity_header_keeps_each_session_on_one_server_within_its_share_and_moves_only_a_downed_servers_sessions(
) {
    let (a, b, server) = two_checked_servers("affinity_header = \"X-Session\"").await;
    let client = server.client();
    // Sends a request of `session`, tagged `tag`; which server saw it.
    let send = |session: usize, tag: &str| {
        let body = format!("s{session} {tag}");
        let mut req = request("POST", "/u", body.clone());
        req.headers_mut()
            .insert("x-session", format!("s{session}").parse().unwrap());
        let reply = client.spawn(req);
        let (a, b) = (&a, &b);
        async move {
            assert_eq!(
                within("a reply", reply).await.unwrap().status,
                StatusCode::CREATED
            );
            let saw = |f: &Fake| f.seen().iter().any(|s| s.body == body.as_bytes());
            match (saw(a), saw(b)) {
                (true, false) => 0,
                (false, true) => 1,
                other => panic!("{body} seen by {other:?}"),
            }
        }
    };
    // A session's first request is placed by load (here, with nothing in flight, by turns), its
    // later ones follow it: each session stays on one server, and both servers get sessions.
    let mut home = Vec::new();
    for session in 0..16 {
        let first = send(session, "first").await;
        for k in 0..3 {
            assert_eq!(
                send(session, &format!("again {k}")).await,
                first,
                "s{session}"
            );
        }
        home.push(first);
    }
    assert_eq!(home.iter().filter(|&&at| at == 0).count(), 8, "{home:?}");

    // The first server down: its sessions move to the other, the other's stay.
    set_health(&server, &a, 0, false).await;
    for session in 0..16 {
        assert_eq!(send(session, "while down").await, 1, "s{session}");
    }
    // Back: the moved sessions stay where their history now is; new ones are placed by load
    // again (here, with nothing in flight, by turns).
    set_health(&server, &a, 0, true).await;
    for session in 0..16 {
        assert_eq!(send(session, "back").await, 1, "s{session}");
    }
    let new: Vec<usize> = {
        let mut new = Vec::new();
        for session in 16..20 {
            new.push(send(session, "new").await);
        }
        new
    };
    assert!(new.contains(&0) && new.contains(&1), "{new:?}");

    // One session sending many at once: its server takes its share of the 4 slots (2), the
    // other server the rest, instead of all 4 stacking on one server.
    let held = held_at_two(&server, &a, &b, 6, Some("s0")).await;
    release_created(&a, &b, held).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_passed_over_is_logged_once_per_spell_not_per_request() {
    use support::binary::Binary;
    let refused = refused_addr().await;
    let (b, b_addr) = Fake::tcp().await;
    let dir = TempDir::new("passed-over");
    let config = dir.write(
        "serve.toml",
        &config_servers("/u", &[refused, b_addr], "health_interval_ms = 10000"),
    );
    let listen = format!("127.0.0.1:{}", support::free_port());
    let mut binary = Binary::start(&["--config", config.to_str().unwrap(), "--listen", &listen]);
    let addr = binary.wait_serving().await;
    let client = support::Client { addr };
    for i in 0..10 {
        let reply = client.post("/u", format!("{i}")).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    }
    assert_eq!(b.seen().len(), 10);
    let line = binary.wait_logged("upstream server passed over").await;
    assert!(line.contains(&format!("http://{refused}")), "{line}");
    assert!(line.contains("cannot connect"), "{line}");
    assert_eq!(
        binary.count_logged("upstream server passed over"),
        1,
        "{}",
        binary.log()
    );
    // Answered by the other server: no failed exchange is logged.
    assert_eq!(binary.count_logged("upstream exchange failed"), 0);
}

#[tokio::test]
async fn a_reload_adds_a_server_while_requests_are_in_flight_and_loses_none() {
    let (a, a_addr) = Fake::tcp().await;
    let (b, b_addr) = Fake::tcp().await;
    let server = TestServer::start(&config_servers("/u", &[a_addr], "")).await;
    // Two requests held at the first server across the reload.
    let client = server.client();
    let held: Vec<_> = (0..2)
        .map(|i| {
            let mut req = request("POST", "/u", format!("held {i}"));
            req.headers_mut().insert("x-hold", "1".parse().unwrap());
            client.spawn(req)
        })
        .collect();
    wait_until("2 requests at the first server", || {
        a.state.in_flight.load(Ordering::SeqCst) == 2
    })
    .await;

    let summary = server.reload(&config_servers("/u", &[a_addr, b_addr], ""));
    assert_eq!((summary.started, summary.retired), (1, 1));
    // New requests go to both servers (the old endpoint's 2 still held at the first).
    post_created(&server, 10).await;
    assert!(b.seen().len() >= 5, "{} at the second", b.seen().len());
    let up = upstream_status(&server, "/u");
    assert_eq!(up["servers"].as_array().map(Vec::len), Some(2), "{up}");

    // The held requests are answered by the retired endpoint, as it drains.
    release_created(&a, &b, held).await;
    assert_eq!(a.seen().len() + b.seen().len(), 12);
    server.shutdown().await;
}
