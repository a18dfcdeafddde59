//! Hardening at the HTTP layer: oversized heads (431), ambiguous framing (Content-Length with
//! Transfer-Encoding, conflicting Content-Lengths), a cap on requests per connection, slow bodies
//! (408) and heads that never complete (closed at `header_read_timeout_ms`), a slowloris crowd
//! that does not starve a well-behaved client, and HTTP/2 `ignore` overflow that resets one
//! stream without harming the others on the same connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{held_job, job, read_to_close, registry, request, Recorder, TestServer, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HEADER_READ_TIMEOUT: Duration = Duration::from_millis(600);

const STRICT: &str = r#"
[server]
max_header_bytes = 8192
max_requests_per_connection = 2
header_read_timeout_ms = 600
body_read_timeout_ms = 400

[[endpoint]]
path = "/echo"
builtin = "echo"
"#;

async fn strict() -> TestServer {
    TestServer::launch(STRICT)
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

/// The status code of the first response in `raw`, if any.
fn first_status(raw: &[u8]) -> Option<u16> {
    let text = String::from_utf8_lossy(raw);
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// How many responses `raw` holds.
fn responses(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw).matches("HTTP/1.1 ").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_header_bytes_gets_431() {
    let server = strict().await;
    let big = format!(
        "GET /echo HTTP/1.1\r\nHost: fiddler.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(9000)
    );
    let answer = server.raw(big.as_bytes()).await;
    assert_eq!(
        first_status(&answer),
        Some(431),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let fits = format!(
        "GET /echo HTTP/1.1\r\nHost: fiddler.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(4000)
    );
    assert_eq!(first_status(&server.raw(fits.as_bytes()).await), Some(200));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_larger_io_buffers_a_head_over_max_header_bytes_still_gets_431() {
    // hyper's buffers (64 KiB) would take the head; the router keeps the limit.
    let server = TestServer::launch(&STRICT.replace(
        "max_header_bytes = 8192",
        "max_header_bytes = 8192\nio_buffer_bytes = 65536",
    ))
    .light(&TrafficLight::fixed(Light::Green))
    .start()
    .await;
    let head = |filler: usize| {
        format!(
            "GET /echo HTTP/1.1\r\nHost: fiddler.test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(filler)
        )
    };
    for (filler, status) in [(9000, 431), (4000, 200), (8200, 431), (70_000, 431)] {
        let answer = server.raw(head(filler).as_bytes()).await;
        assert_eq!(
            first_status(&answer),
            Some(status),
            "{filler}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // A large body still goes through whole.
    let body = vec![b'x'; 200_000];
    let mut req = request("POST", "/echo", body.clone());
    req.headers_mut()
        .insert("content-type", "application/octet-stream".parse().unwrap());
    let reply = server.client().send(req).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), body.len());
    server.shutdown().await;
}

/// A message carrying both framings (a smuggling attempt through some proxy): hyper drops the
/// Content-Length, reads the body as chunked (RFC 9112 6.3) and closes the connection after the
/// response, so nothing can be smuggled behind it: exactly one response, then the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_second_request() {
    let server = strict().await;
    for head in [
        "Content-Length: 4\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
    ] {
        let raw = format!(
            "POST /echo HTTP/1.1\r\nHost: fiddler.test\r\n{head}\r\n\r\n\
             0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: fiddler.test\r\n\r\n"
        );
        let answer = server.raw(raw.as_bytes()).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(responses(&answer), 1, "{head:?}:\n{text}");
        assert!(
            !text.contains("404"),
            "the smuggled request was answered:\n{text}"
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_get_400() {
    let server = strict().await;
    for head in [
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 5, 6",
        "Content-Length: -5",
        "Content-Length: 5x",
    ] {
        let raw = format!("POST /echo HTTP/1.1\r\nHost: fiddler.test\r\n{head}\r\n\r\nhello!");
        let answer = server.raw(raw.as_bytes()).await;
        assert_eq!(first_status(&answer), Some(400), "{head:?}");
        assert_eq!(responses(&answer), 1);
    }
    assert_eq!(server.counters("/echo").admitted, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_request_a_connection_may_carry_says_close_and_the_socket_closes() {
    let server = strict().await;
    let mut conn = server.client().connect_h1().await;
    let first = conn.send(request("GET", "/echo", "")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.header("connection"), None);
    let second = conn.send(request("GET", "/echo", "")).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.header("connection").as_deref(), Some("close"));
    conn.closed().await;

    // Pipelined: two answers, then the server closes; the third request is never served.
    let one = "GET /echo HTTP/1.1\r\nHost: fiddler.test\r\n\r\n";
    let answer = server.raw(one.repeat(3).as_bytes()).await;
    assert_eq!(
        responses(&answer),
        2,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_slower_than_body_read_timeout_gets_408() {
    let server = strict().await;
    let mut stream = server
        .client()
        .open_raw(b"POST /echo HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: 10\r\n\r\nab")
        .await;
    let mut head = [0u8; 12];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut head))
        .await
        .expect("an answer before PATIENCE")
        .expect("a response head");
    assert_eq!(&head, b"HTTP/1.1 408");
    assert_eq!(server.counters("/echo").admitted, 0, "never queued");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_completes_is_closed_after_header_read_timeout() {
    let server = strict().await;
    let started = Instant::now();
    let stream = server
        .client()
        .open_raw(b"GET /echo HTTP/1.1\r\nHost: fiddler.test\r\n")
        .await;
    let answer = read_to_close(stream).await;
    assert!(
        first_status(&answer).is_none_or(|s| s == 408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        started.elapsed() >= HEADER_READ_TIMEOUT / 2,
        "closed after {:?}, before the header read timeout",
        started.elapsed()
    );
    server.shutdown().await;
}

/// A connection that sends nothing at all, or only the start of the HTTP/2 preface, is still in
/// hyper-util's protocol detection, where no timer runs: it must be closed like a stalled head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_header_read_timeout() {
    let server = strict().await;
    for opening in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
        let stream = server.client().open_raw(opening).await;
        let answer = read_to_close(stream).await;
        assert!(answer.is_empty() || first_status(&answer) == Some(408));
    }
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

/// A connection that has sent nothing is kept by the kernel (`TCP_DEFER_ACCEPT` for the head
/// deadline): the server never accepts it meanwhile, so it holds no connection slot, and it is
/// served as soon as its request comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_accepted_only_with_its_first_bytes() {
    // A head deadline past the test's patience: a silent connection accepted at once would stay
    // open (and counted) for all of it.
    let server = TestServer::start(
        "[server]\nheader_read_timeout_ms = 120000\n\n\
         [[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n",
    )
    .await;
    // An answer first: the accept loop runs, so its listener defers (a connection that completed
    // its handshake before the option was set would already be in the accept queue).
    assert_eq!(server.get("/ping").await.text(), "pong\n");
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    // Served meanwhile, and the silent connection is not among those open.
    assert_eq!(server.get("/ping").await.text(), "pong\n");
    server.wait_open_connections(0).await;
    silent
        .write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(silent).await;
    assert_eq!(first_status(&answer), Some(200), "{answer:?}");
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

const SLOWLORIS: &str = r#"
[server]
max_connections = 1024
header_read_timeout_ms = 1500

[[endpoint]]
path = "/work"
mode = "jellyfish"
workers = 2
builtin = "recorder"
queue = 64
"#;

/// One attacker: opens a connection and sends its request head a byte every `every` until `until`.
/// Returns whether it connected, and whether the server closed the connection on it.
async fn slow_client(addr: std::net::SocketAddr, every: Duration, until: Instant) -> (bool, bool) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return (false, false);
    };
    let head = b"GET /work HTTP/1.1\r\nHost: fiddler.test\r\nX-Slow: ";
    let mut buf = [0u8; 512];
    let mut sent = 0;
    while Instant::now() < until {
        let byte = head.get(sent).copied().unwrap_or(b'z');
        sent += 1;
        if stream.write_all(&[byte]).await.is_err() {
            return (true, true);
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                // Closed, reset, or answered (408): the server is done with this one.
                Ok(_) | Err(_) => return (true, true),
            },
            () = tokio::time::sleep(every) => {}
        }
    }
    (true, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_crowd_does_not_starve_a_well_behaved_client() {
    const ATTACKERS: usize = 300;
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::launch(SLOWLORIS)
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let client = server.client();

    let until = Instant::now() + Duration::from_secs(4);
    let attack: Vec<_> = (0..ATTACKERS)
        .map(|_| tokio::spawn(slow_client(server.addr, Duration::from_millis(500), until)))
        .collect();

    let answered = Arc::new(AtomicUsize::new(0));
    let mut n = 0;
    while Instant::now() < until {
        let asked = Instant::now();
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            client.try_send(job("/work", &format!("good-{n}"))),
        )
        .await
        .unwrap_or_else(|_| panic!("request {n} not answered within 5 s under the attack"))
        .unwrap_or_else(|e| panic!("request {n} failed under the attack: {e}"));
        assert_eq!(reply.status, StatusCode::OK, "request {n}");
        assert!(asked.elapsed() < Duration::from_secs(5));
        answered.fetch_add(1, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (mut connected, mut cut_off) = (0, 0);
    for attacker in attack {
        let (c, closed) = support::within("an attacker to stop", attacker)
            .await
            .unwrap();
        connected += usize::from(c);
        cut_off += usize::from(closed);
    }
    assert!(
        answered.load(Ordering::Relaxed) >= 5,
        "{answered:?} answered"
    );
    assert_eq!(connected, ATTACKERS);
    assert_eq!(
        cut_off, ATTACKERS,
        "every slow head is cut off at header_read_timeout_ms"
    );
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

const H2_IGNORE: &str = r#"
[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 1
overflow = "ignore"
expected_wait_admission = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_ignore_overflow_resets_only_that_stream() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::launch(H2_IGNORE)
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let h2 = server.client().connect_h2().await;

    let held = h2.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued = h2.spawn(job("/work", "queued"));
    server.wait_queued("/work", 1).await;

    let overflow = h2.try_send(job("/work", "overflow")).await;
    assert!(
        overflow.is_err(),
        "the overflowed stream was answered: {overflow:?}"
    );
    assert_eq!(server.counters("/work").overflowed, 1);

    // The same connection carries on.
    assert!(h2.is_open());
    let status = h2.send(request("GET", "/status", "")).await;
    assert_eq!(status.status, StatusCode::OK);
    assert_eq!(status.version, hyper::Version::HTTP_2);
    let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(json["endpoints"]["/work"]["counters"]["overflowed"], 1);

    recorder.gate().open();
    for (id, reply) in [("held", held), ("queued", queued)] {
        let reply = reply
            .await
            .unwrap()
            .expect("an answer on the same connection");
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, id.to_string())
        );
    }
    let after = h2.send(job("/work", "after")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(recorder.ids(), ["held", "queued", "after"]);
    server.shutdown().await;
}

const SLOW_READER: &str = r#"
[server]
idle_timeout_ms = 400
header_read_timeout_ms = 400

[[endpoint]]
path = "/echo"
methods = ["POST"]
builtin = "echo"
max_body_bytes = 33554432
"#;

/// A client that reads a large response slowly keeps its connection, on plain HTTP as on TLS:
/// the idle watchdog counts bytes moving on the socket, not only requests answered, so a response
/// that takes many `idle_timeout_ms` to drain arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_large_response_gets_all_of_it() {
    const SIZE: usize = 24 * 1024 * 1024;
    let server = TestServer::start(SLOW_READER).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![b'x'; SIZE]).await.unwrap();
    // About 3 s to drain: 256 KiB every 30 ms, more than seven idle_timeout_ms periods.
    let started = Instant::now();
    let mut received = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let mut chunk = 0;
        while chunk < buf.len() {
            match stream.read(&mut buf[chunk..]).await.unwrap() {
                0 => break,
                n => chunk += n,
            }
        }
        if chunk == 0 {
            break;
        }
        received += chunk;
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(started.elapsed() < PATIENCE * 4, "still reading");
    }
    assert!(
        started.elapsed() > Duration::from_millis(400) * 2,
        "the response drained within two idle periods; the test proves nothing"
    );
    // Head plus the whole echoed body.
    assert!(
        received > SIZE,
        "received {received} of more than {SIZE} bytes"
    );
    assert_eq!(server.counters("/echo").completed, 1);
    server.shutdown().await;
}
