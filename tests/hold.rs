//! The hold (`server.overflow_hold_ms`): an HTTP/1 connection whose request overflowed an `ignore`
//! endpoint is held, unanswered and unread, until its deadline, then closed without a byte.
//!
//! What is proved, on real sockets, plain and over TLS: the held client receives no byte and its
//! connection stays open until the deadline, then ends with nothing read; a good client is served
//! meanwhile; a client that closes first frees its slot at once; at `max_connections` a held
//! connection is the first evicted, so a good client is never kept out by one; the drain ends a
//! hold at once; and the counters add up (one ignored overflow, one held connection).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use frontend::tls::CertStore;
use frontend::Tls;
use hyper::StatusCode;
use light::{Light, TrafficLight};
use std::time::{Duration, Instant};
use support::tls::{fixture, trusting_test_ca, Https, HTTP1};
use support::{held_job, job, read_to_close, registry, wait_until, within, Recorder, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The short hold of the deadline tests.
const HOLD: Duration = Duration::from_millis(300);

/// A hold no test waits for: only eviction, the client's close or the drain end it.
const LONG_HOLD: Duration = Duration::from_secs(60);

/// A crab endpoint with a queue of one that ignores overflow, and a ping endpoint beside it.
fn config(hold: Duration, max_connections: usize) -> String {
    format!(
        r#"
[server]
overflow_hold_ms = {}
max_connections = {max_connections}
# Only the hold may close a connection in these tests.
header_read_timeout_ms = 60000

[[endpoint]]
path = "/work"
builtin = "recorder"
mode = "crab"
queue = 1
overflow = "ignore"
expected_wait_admission = false

[[endpoint]]
path = "/ping"
builtin = "ping"
"#,
        hold.as_millis()
    )
}

/// A keep-alive `POST path` with an empty body.
fn keep_alive_post(path: &str) -> Vec<u8> {
    format!("POST {path} HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: 0\r\n\r\n").into_bytes()
}

/// Read one response (head and a `Content-Length` body) from a keep-alive connection.
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> String {
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = within("a response", stream.read(&mut chunk)).await.unwrap();
        assert!(
            n > 0,
            "closed after {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// True if the server has neither sent a byte on `tcp` nor closed it.
fn still_open(tcp: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Fill `/work`: one job running (held at the gate), one queued. Returns their reply handles.
async fn fill(
    server: &TestServer,
    recorder: &Recorder,
) -> Vec<tokio::task::JoinHandle<support::Reply>> {
    let client = server.client();
    let running = client.spawn(held_job("/work", "running"));
    recorder.gate().wait_arrived(1).await;
    let queued = client.spawn(job("/work", "queued"));
    server.wait_queued("/work", 1).await;
    vec![running, queued]
}

/// Open the gate and check that the running and the queued job were answered.
async fn drain_work(recorder: &Recorder, replies: Vec<tokio::task::JoinHandle<support::Reply>>) {
    recorder.gate().open();
    for reply in replies {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
}

/// Wait until `n` connections have been held so far (whether or not their hold has ended: a short
/// hold may end before a loaded machine looks).
async fn wait_held_total(server: &TestServer, n: u64) {
    let app = server.app.clone();
    wait_until(&format!("{n} connections held so far"), || {
        app.hold().snapshot().held_total == n
    })
    .await;
}

/// Wait until exactly `n` connections are held now.
async fn wait_held(server: &TestServer, n: u64) {
    let app = server.app.clone();
    wait_until(&format!("{n} connections held"), || {
        app.hold().snapshot().held == n
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowed_keep_alive_connection_gets_no_byte_and_stays_open_until_the_hold_deadline() {
    let recorder = Recorder::new(Duration::ZERO);
    let server =
        TestServer::start_with(&config(HOLD, 64), &registry("recorder", recorder.clone())).await;
    let replies = fill(&server, &recorder).await;

    // A keep-alive client, served once, whose next request overflows.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET /ping HTTP/1.1\r\nHost: fiddler.test\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut tcp).await.starts_with("HTTP/1.1 200"));
    let sent = Instant::now();
    tcp.write_all(&keep_alive_post("/work")).await.unwrap();
    wait_held_total(&server, 1).await;

    // Meanwhile a good client is served, and the held one has received nothing: its connection is
    // still open, unless (on a loaded machine) the hold is already over.
    assert_eq!(server.get("/ping").await.status, StatusCode::OK);
    let status = server.status_json().await;
    assert_eq!(status["overflow_hold"]["held_total"], 1, "{status}");
    let open = still_open(&tcp);
    assert!(
        open || sent.elapsed() >= HOLD,
        "the held connection was answered or closed before its deadline"
    );

    let answer = read_to_close(tcp).await;
    let held_for = sent.elapsed();
    assert!(
        answer.is_empty(),
        "the held client was sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        held_for >= HOLD,
        "closed after {held_for:?}, before the {HOLD:?} hold"
    );
    wait_held(&server, 0).await;

    // Counted once as ignored overflow, once as a held connection; nothing else.
    let hold = server.app.hold().snapshot();
    assert_eq!(
        (hold.held_total, hold.client_closed, hold.evicted),
        (1, 0, 0)
    );
    assert_eq!(server.counters("/work").overflowed, 1);
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains("fiddler_crab_overflow_held_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fiddler_crab_overflow_held_connections 0"),
        "{metrics}"
    );

    drain_work(&recorder, replies).await;
    let counters = server.counters("/work");
    assert_eq!(
        (counters.admitted, counters.completed, counters.overflowed),
        (2, 2, 1)
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_connection_whose_client_closes_is_freed_at_once() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::start_with(
        &config(LONG_HOLD, 64),
        &registry("recorder", recorder.clone()),
    )
    .await;
    let replies = fill(&server, &recorder).await;

    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&keep_alive_post("/work")).await.unwrap();
    wait_held(&server, 1).await;
    // More input on a held connection is left unread; it does not end the hold.
    tcp.write_all(&keep_alive_post("/work")).await.unwrap();
    assert_eq!(server.get("/ping").await.status, StatusCode::OK);
    assert_eq!(server.app.hold().snapshot().held, 1);

    drop(tcp);
    wait_held(&server, 0).await;
    assert_eq!(server.app.hold().snapshot().client_closed, 1);
    // The running and the queued job keep their connections; the held one's slot is free.
    server.wait_open_connections(2).await;
    assert_eq!(
        server.counters("/work").overflowed,
        1,
        "the unread request was never parsed"
    );

    drain_work(&recorder, replies).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_max_connections_a_held_connection_is_evicted_first_and_a_good_client_is_served() {
    let recorder = Recorder::new(Duration::ZERO);
    // Three slots: the running job's connection, the queued job's, and one held.
    let server = TestServer::start_with(
        &config(LONG_HOLD, 3),
        &registry("recorder", recorder.clone()),
    )
    .await;
    let replies = fill(&server, &recorder).await;
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(&keep_alive_post("/work")).await.unwrap();
    wait_held(&server, 1).await;
    server.wait_open_connections(3).await;

    // Every slot is taken: the good client gets the held connection's.
    assert_eq!(server.get("/ping").await.status, StatusCode::OK);
    assert!(read_to_close(held).await.is_empty());
    let hold = server.app.hold().snapshot();
    assert_eq!((hold.held_total, hold.held, hold.evicted), (1, 0, 1));

    // Held again, then the drain ends the hold at once (the hold itself is a minute).
    let mut held = TcpStream::connect(server.addr).await.unwrap();
    held.write_all(&keep_alive_post("/work")).await.unwrap();
    wait_held(&server, 1).await;
    drain_work(&recorder, replies).await;
    let shutdown = tokio::spawn(server.shutdown());
    assert!(read_to_close(held).await.is_empty());
    within("the shutdown", shutdown).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_an_overflowed_connection_is_held_without_a_byte_until_the_deadline() {
    let recorder = Recorder::new(Duration::ZERO);
    let store = CertStore::from_pem_files(&fixture("a.pem"), &fixture("a.key")).unwrap();
    let server = TestServer::launch(&config(HOLD, 64))
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .tls(Tls::new(store, Duration::from_secs(600), None))
        .start()
        .await;
    let https = Https::new(server.addr, trusting_test_ca(HTTP1));
    let tls_job = |headers: &'static str| {
        let https = https.clone();
        tokio::spawn(async move {
            let mut tls = https.handshake().await.unwrap();
            let head = format!(
                "POST /work HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: 0\r\n\r\n"
            );
            tls.write_all(head.as_bytes()).await.unwrap();
            read_response(&mut tls).await
        })
    };
    let running = tls_job("x-id: running\r\nx-hold: 1\r\n");
    recorder.gate().wait_arrived(1).await;
    let queued = tls_job("x-id: queued\r\n");
    server.wait_queued("/work", 1).await;

    // One handshake, one answer, then a request that overflows on the same TLS connection.
    let mut tls = https.handshake().await.unwrap();
    tls.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut tls).await.starts_with("HTTP/1.1 200"));
    let sent = Instant::now();
    tls.write_all(&keep_alive_post("/work")).await.unwrap();
    tls.flush().await.unwrap();
    wait_held_total(&server, 1).await;
    assert_eq!(https.get("/ping").await.status, StatusCode::OK);

    // Closed at the deadline with no application byte (and no close_notify: the socket is simply
    // closed, which the client sees as an end without one).
    let mut received = Vec::new();
    let end = within("the end of the hold", read_all(&mut tls, &mut received)).await;
    let held_for = sent.elapsed();
    assert!(
        received.is_empty(),
        "the held client was sent {:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof),
        "{end:?}"
    );
    assert!(
        held_for >= HOLD,
        "closed after {held_for:?}, before the {HOLD:?} hold"
    );
    wait_held(&server, 0).await;
    assert_eq!(server.app.hold().snapshot().held_total, 1);
    assert_eq!(server.counters("/work").overflowed, 1);

    recorder.gate().open();
    assert!(running.await.unwrap().starts_with("HTTP/1.1 200"));
    assert!(queued.await.unwrap().starts_with("HTTP/1.1 200"));
    server.shutdown().await;
}

/// Read until the end of `stream`; the error, if it ended with one.
async fn read_all(
    stream: &mut (impl AsyncRead + AsyncWrite + Unpin),
    received: &mut Vec<u8>,
) -> std::io::Result<()> {
    let mut chunk = [0u8; 1024];
    loop {
        match stream.read(&mut chunk).await? {
            0 => return Ok(()),
            n => received.extend_from_slice(&chunk[..n]),
        }
    }
}
