//! Hostile clients that earlier made answers get lost or held slots and buffers: pipelining past
//! the per-connection request cap, a slowloris crowd at the connection limit, and readers that
//! never read.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

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
