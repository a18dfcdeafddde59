//! Hostile clients that earlier made answers get lost or held slots and buffers: pipelining past
//! the per-connection request cap, a slowloris crowd at the connection limit, and readers that
//! never read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;
use support::{read_to_close, wait_until, within, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HALF_CLOSE: &str = r#"
[server]
access_log = false

[[endpoint]]
path = "/ping"
methods = ["GET"]
builtin = "ping"

[[endpoint]]
path = "/echo"
methods = ["POST"]
builtin = "echo"
"#;

/// How many complete HTTP/1.1 responses `raw` holds.
fn responses(raw: &[u8]) -> usize {
    String::from_utf8_lossy(raw).matches("HTTP/1.1 200").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_past_the_request_cap_loses_no_answer_and_ends_with_a_clean_close() {
    // The default cap: 1,000 requests per connection.
    let server = TestServer::start(HALF_CLOSE).await;
    let one = "GET /ping HTTP/1.1\r\nHost: fiddler.test\r\n\r\n";
    // A small receive buffer and a pause before reading: most answers are still in the server's
    // send buffer when it closes, which a reset would destroy.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream.write_all(one.repeat(1200).as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Read to the end: EOF, never a reset (read_to_close would take a reset for an end).
    let mut received = Vec::new();
    let read = tokio::time::timeout(
        support::PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut received),
    )
    .await
    .expect("the server closes the connection");
    assert!(read.is_ok(), "a clean close, not a reset: {read:?}");
    assert_eq!(
        responses(&received),
        1000,
        "every answer the server counted"
    );
    assert_eq!(
        String::from_utf8_lossy(&received)
            .matches("connection: close")
            .count(),
        1,
        "the last answer says close"
    );
    server.shutdown().await;
}

const AT_THE_LIMIT: &str = r#"
[server]
access_log = false
max_connections = 32
header_read_timeout_ms = 30000

[[endpoint]]
path = "/ping"
methods = ["GET"]
builtin = "ping"
"#;

/// A slowloris: half a head, then one more header line every 200 ms, never the end of the head.
/// Returns the bytes the server sent once it closed the connection.
async fn slowloris(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /ping HTTP/1.1\r\nHost: fiddler.test\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return received,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stream.write_all(b"X-Slow: yes\r\n").await.is_err() {
                    return received;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_a_good_client_evicts_a_slowloris() {
    let server = TestServer::start(AT_THE_LIMIT).await;
    let crowd: Vec<_> = (0..32)
        .map(|_| tokio::spawn(slowloris(server.addr)))
        .collect();
    wait_until("the slowloris crowd holds every slot", || {
        server.app.open_connections() == 32
    })
    .await;

    // Without eviction each would wait for the 30 s head deadline (longer than PATIENCE).
    for i in 0..10 {
        let reply = within("a good client's answer", server.client().get("/ping")).await;
        assert_eq!(reply.status, hyper::StatusCode::OK, "good client {i}");
    }

    wait_until("at least one slowloris was evicted", || {
        crowd.iter().any(|task| task.is_finished())
    })
    .await;
    for task in crowd {
        if task.is_finished() {
            let received = task.await.unwrap();
            assert!(received.is_empty(), "an evicted slowloris gets no byte");
        } else {
            task.abort();
        }
    }
    server.shutdown().await;
}

const SEND_TIMEOUT: &str = r#"
[server]
access_log = false
send_timeout_ms = 500

[[endpoint]]
path = "/echo"
methods = ["POST"]
builtin = "echo"
max_body_bytes = 16777216

[[endpoint]]
path = "/ping"
methods = ["GET"]
builtin = "ping"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_is_closed_at_the_send_timeout_and_others_are_answered() {
    let server = TestServer::start(SEND_TIMEOUT).await;
    // 8 MiB to echo, read by nobody: far more than the socket buffers hold (4 KiB on our side).
    let body = vec![b'x'; 8 << 20];
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&body).await.unwrap();
        stalled.push(stream);
    }
    // The idle timeout is 60 s (longer than PATIENCE): only the send deadline closes them.
    wait_until("every stalled reader is closed", || {
        server.app.open_connections() == 0
    })
    .await;
    let reply = within("a good client's answer", server.client().get("/ping")).await;
    assert_eq!(reply.status, hyper::StatusCode::OK);
    // Each stalled client got part of its answer, never all of it, then the close.
    for stream in stalled {
        let received = read_to_close(stream).await;
        assert!(received.len() < body.len(), "{} bytes", received.len());
    }
    server.shutdown().await;
}

/// Answers 1 MiB, whole, at once.
struct Big;

const BIG: usize = 1 << 20;

impl common::handler::Handler for Big {
    fn handle(
        &self,
        _req: &common::handler::JobRequest,
    ) -> Result<common::handler::JobResponse, common::handler::HandlerError> {
        Ok(hyper::Response::new(
            bytes::Bytes::from(vec![b'x'; BIG]).into(),
        ))
    }
}

const SHUT_WINDOW: &str = r#"
[server]
access_log = false
send_timeout_ms = 1500
max_unsent_bytes = 8388608
max_unsent_bytes_per_connection = 1048576

[[endpoint]]
path = "/big"
methods = ["GET"]
builtin = "big"
queue = 256

[[endpoint]]
path = "/ping"
methods = ["GET"]
builtin = "ping"
"#;

/// An HTTP/2 connection that sets `SETTINGS_INITIAL_WINDOW_SIZE = 0`, never opens a window and
/// answers PINGs (h2 does), asking `streams` times for `/big`. Returns its connection's task
/// (which ends when the server closes it) and the streams' answers (`None` if reset), to be kept:
/// dropping one cancels its stream.
async fn shut_window(
    addr: std::net::SocketAddr,
    streams: usize,
) -> (
    tokio::task::JoinHandle<()>,
    Vec<tokio::task::JoinHandle<Option<hyper::Response<h2::RecvStream>>>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..streams {
        let req = hyper::Request::get(format!("http://{addr}/big"))
            .body(())
            .unwrap();
        let (answer, _) = client.send_request(req, true).unwrap();
        answers.push(tokio::spawn(async move { answer.await.ok() }));
        client = client.ready().await.unwrap();
    }
    (conn, answers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_readers_that_keep_their_window_shut_stay_under_the_budget_and_are_closed() {
    let server =
        TestServer::start_with(SHUT_WINDOW, &support::registry("big", Arc::new(Big))).await;
    let mut attackers = Vec::new();
    for _ in 0..4 {
        attackers.push(shut_window(server.addr, 16).await);
    }
    // Every stream gets its head: 200 (its body waiting for a window) or 503 (over a budget).
    let mut heads = Vec::new();
    for (_, answers) in &mut attackers {
        for answer in answers.drain(..) {
            heads.push(within("a stream's head", answer).await.unwrap());
        }
    }
    let statuses: Vec<_> = heads
        .iter()
        .map(|h| h.as_ref().map(|r| r.status()))
        .collect();
    let ok = statuses
        .iter()
        .filter(|s| **s == Some(hyper::StatusCode::OK))
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == Some(hyper::StatusCode::SERVICE_UNAVAILABLE))
        .count();
    assert_eq!(ok + refused, 64, "{statuses:?}");
    assert!(ok >= 4, "each connection's first answer fits: {statuses:?}");
    assert!(refused > 0, "{statuses:?}");
    let held = server.app.unsent_bytes();
    assert!(
        held > 0 && held <= 8 << 20,
        "{held} unsent bytes, 8 MiB budget; {ok} ok, {refused} refused"
    );

    // A good client is answered meanwhile, a large answer included.
    let reply = within("a good client's ping", server.client().get("/ping")).await;
    assert_eq!(reply.status, hyper::StatusCode::OK);
    let h2 = server.client().connect_h2().await;
    let reply = within(
        "a good client's large answer",
        h2.send(support::request("GET", "/big", bytes::Bytes::new())),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.len()),
        (hyper::StatusCode::OK, BIG)
    );

    // The idle timeout is 60 s (longer than PATIENCE), and PINGs are answered: only the send
    // deadline closes them.
    for (conn, _) in attackers {
        within("the attacker's connection closed", conn)
            .await
            .unwrap();
    }
    drop(heads);
    wait_until("every unsent byte released", || {
        server.app.unsent_bytes() == 0
    })
    .await;
    assert_eq!(server.app.unsent_refused(), refused as u64);
    let status = server.status_json().await;
    assert_eq!(status["connections"]["unsent_refused"], refused as u64);
    server.shutdown().await;
}
