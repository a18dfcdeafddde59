//! A client that half-closes after a complete request (`shutdown(SHUT_WR)`, what `nc -N`, socat
//! and some proxies do) is answered: an inline builtin, an exec endpoint with a real child, a
//! queued job waiting behind a running one, two pipelined requests, and over TLS (close_notify).
//! A client that closes fully while its job waits is still seen to leave (see also `tests/queue.rs`
//! and `tests/client_gone.rs`), and one that sends part of its first head and leaves (fully or
//! half-closed) is closed at once, not at the head deadline.
//!
//! An answer may be preceded by `HTTP/1.1 100 Continue`: the probe that tells a half-closed client
//! from one that closed fully (see `docs/HARDENING.md`, "Closing without losing answers").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use light::{Light, TrafficLight};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;
use support::tls::{fixture, trusting_test_ca, Https, HTTP1};
use support::{held_job, registry, Recorder, TestServer, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connections per endpoint: the issue's count.
const CONNECTIONS: usize = 100;

const CONFIG: &str = r#"
[[endpoint]]
path = "/ping"
mode = "jellyfish"
builtin = "ping"

[[endpoint]]
path = "/cat"
queue = 128
expected_wait_admission = false
[endpoint.exec]
command = ["cat"]

[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 128
queue_timeout_ms = 60000
expected_wait_admission = false
"#;

async fn start(recorder: &std::sync::Arc<Recorder>) -> TestServer {
    TestServer::launch(CONFIG)
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

/// One connection: send `request`, shut the sending side (FIN), read until the server closes.
/// Blocking std I/O, bounded by [`PATIENCE`] per read.
fn half_closed_exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).expect("write the request");
    stream.shutdown(Shutdown::Write).expect("half-close");
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("read the answer until the server closes");
    answer
}

/// `CONNECTIONS` half-closed exchanges at once, each on its own connection; `request(i)` is the
/// i-th request. Returns the raw bytes each one received, in order of `i`.
async fn half_closed_crowd(addr: SocketAddr, request: impl Fn(usize) -> Vec<u8>) -> Vec<Vec<u8>> {
    let exchanges: Vec<_> = (0..CONNECTIONS)
        .map(|i| {
            let request = request(i);
            tokio::task::spawn_blocking(move || half_closed_exchange(addr, &request))
        })
        .collect();
    let mut answers = Vec::new();
    for exchange in exchanges {
        answers.push(exchange.await.unwrap());
    }
    answers
}

/// The final answers in `raw`, in order, as (status, body): interim `1xx` answers are skipped,
/// bodies are framed by `Content-Length`.
fn answers(mut raw: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("an incomplete head: {:?}", String::from_utf8_lossy(raw)));
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        raw = &raw[end + 4..];
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        if (100..200).contains(&status) {
            continue;
        }
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
        assert!(raw.len() >= length, "a short body after {head:?}");
        out.push((status, raw[..length].to_vec()));
        raw = &raw[length..];
    }
    out
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: fiddler.test\r\n\r\n").into_bytes()
}

fn post(path: &str, headers: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: fiddler.test\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn recorder_job(id: &str) -> Vec<u8> {
    post("/work", &format!("x-id: {id}\r\n"), "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_is_answered_inline_and_by_a_child() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder).await;
    let addr = server.addr;

    for raw in half_closed_crowd(addr, |_| get("/ping")).await {
        assert_eq!(answers(&raw), [(200, b"pong\n".to_vec())]);
    }
    let cat = half_closed_crowd(addr, |i| post("/cat", "", &format!("line {i}\n"))).await;
    for (i, raw) in cat.iter().enumerate() {
        assert_eq!(answers(raw), [(200, format!("line {i}\n").into_bytes())]);
    }
    // HTTP/1.0 may not be sent the `100 Continue` probe: answered all the same.
    let http10 = b"POST /cat HTTP/1.0\r\nContent-Length: 6\r\n\r\nold h\n".to_vec();
    let raw = tokio::task::spawn_blocking(move || half_closed_exchange(addr, &http10))
        .await
        .unwrap();
    assert!(raw.starts_with(b"HTTP/1.0 200"), "{raw:?}");
    assert_eq!(answers(&raw), [(200, b"old h\n".to_vec())]);
    let c = server.counters("/cat");
    assert_eq!(
        (c.admitted, c.completed, c.client_gone, c.skipped),
        (CONNECTIONS as u64 + 1, CONNECTIONS as u64 + 1, 0, 0)
    );
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_whose_job_waits_behind_a_running_one_is_answered() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder).await;
    let addr = server.addr;
    let held = server.client().spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;

    let crowd = tokio::spawn(half_closed_crowd(addr, |i| {
        recorder_job(&format!("job{i}"))
    }));
    server.wait_queued("/work", CONNECTIONS).await;
    recorder.gate().release();
    assert_eq!(held.await.unwrap().text(), "held");
    for (i, raw) in crowd.await.unwrap().iter().enumerate() {
        assert_eq!(answers(raw), [(200, format!("job{i}").into_bytes())]);
    }
    let c = server.counters("/work");
    assert_eq!(
        (c.admitted, c.completed, c.skipped, c.client_gone),
        (CONNECTIONS as u64 + 1, CONNECTIONS as u64 + 1, 0, 0)
    );
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelined_requests_then_a_half_close_get_both_answers() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder).await;
    let addr = server.addr;

    let pings = [get("/ping"), get("/ping")].concat();
    let raw = tokio::task::spawn_blocking(move || half_closed_exchange(addr, &pings))
        .await
        .unwrap();
    assert_eq!(
        answers(&raw),
        [(200, b"pong\n".to_vec()), (200, b"pong\n".to_vec())]
    );

    // Two queued jobs behind a running one.
    let held = server.client().spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let jobs = [recorder_job("first"), recorder_job("second")].concat();
    let exchange = tokio::task::spawn_blocking(move || half_closed_exchange(addr, &jobs));
    server.wait_queued("/work", 1).await;
    recorder.gate().release();
    assert_eq!(held.await.unwrap().text(), "held");
    let raw = exchange.await.unwrap();
    assert_eq!(
        answers(&raw),
        [(200, b"first".to_vec()), (200, b"second".to_vec())]
    );
    assert_eq!(recorder.ids(), ["held", "first", "second"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_fully_while_its_job_waits_is_still_gone() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder).await;
    let held = server.client().spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    server.wait_open_connections(1).await;

    // Half-closed first, then closed fully once its job is queued: still a client gone.
    let mut leaving = server.client().open_raw(&recorder_job("leaving")).await;
    leaving.shutdown().await.unwrap();
    server.wait_queued("/work", 1).await;
    drop(leaving);
    server.wait_open_connections(1).await;

    recorder.gate().release();
    assert_eq!(held.await.unwrap().text(), "held");
    support::wait_until("the abandoned job is skipped", || {
        server.counters("/work").skipped == 1
    })
    .await;
    assert_eq!(recorder.ids(), ["held"]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_sends_close_notify_after_its_request_is_answered() {
    let recorder = Recorder::new(Duration::ZERO);
    let store =
        frontend::tls::CertStore::from_pem_files(&fixture("a.pem"), &fixture("a.key")).unwrap();
    let server = TestServer::launch(CONFIG)
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .tls(frontend::Tls::new(store, PATIENCE, None))
        .start()
        .await;
    let https = Https::new(server.addr, trusting_test_ca(HTTP1));
    for path in ["/ping", "/cat"] {
        let mut tls = https.handshake().await.unwrap();
        let request = if path == "/ping" {
            get(path)
        } else {
            post(path, "", "over TLS\n")
        };
        tls.write_all(&request).await.unwrap();
        // close_notify, then FIN.
        tls.shutdown().await.unwrap();
        let mut raw = Vec::new();
        support::within("the answer over TLS", tls.read_to_end(&mut raw))
            .await
            .unwrap();
        let body: &[u8] = if path == "/ping" {
            b"pong\n"
        } else {
            b"over TLS\n"
        };
        assert_eq!(answers(&raw), [(200, body.to_vec())], "{path}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_part_of_its_first_head_and_leaves_is_closed_at_once() {
    // A head deadline far past the test's patience: only the end of input can close these.
    let server = TestServer::start(
        "[server]\nheader_read_timeout_ms = 120000\n\n\
         [[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n",
    )
    .await;
    for close in [Shutdown::Both, Shutdown::Write] {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(b"GET /pi").await.unwrap();
        server.wait_open_connections(1).await;
        if close == Shutdown::Both {
            drop(stream);
        } else {
            // Half-closed: no request was read, so no answer is due; the server closes, and
            // the client reads the end of the stream without a byte.
            stream.shutdown().await.unwrap();
            let mut rest = Vec::new();
            let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await;
            assert!(matches!(read, Ok(Ok(0))), "{read:?} {rest:?}");
        }
        server.wait_open_connections(0).await;
    }
    assert_eq!(server.get("/ping").await.text(), "pong\n");
    server.shutdown().await;
}
