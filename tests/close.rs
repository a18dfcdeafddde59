//! How a connection ends after its last answer: at once after a client's last request with no
//! body (it sends nothing more), lingering whenever unread input may follow (a body the answer
//! did not wait for, input sent after a close request); and answers after a connection's first
//! still arrive (`TCP_NODELAY` is set before the second write, not at accept).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{request, within, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

const CONFIG: &str = r#"
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
max_body_bytes = 1000
"#;

/// Read until the server's FIN; a reset fails the test (it would have destroyed unread answers).
async fn read_to_eof(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = within("the server's close", stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "a clean close, not a reset: {read:?}");
    String::from_utf8(received).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_last_request_asks_for_the_close_is_let_go_at_once() {
    let server = TestServer::start(CONFIG).await;
    for last in [
        "GET /ping HTTP/1.1\r\nHost: fiddler.test\r\nConnection: close\r\n\r\n",
        "GET /ping HTTP/1.1\r\nHost: fiddler.test\r\nConnection: keep-alive, Close\r\n\r\n",
        "GET /ping HTTP/1.0\r\n\r\n",
    ] {
        let mut stream = server.client().open_raw(last.as_bytes()).await;
        let answer = read_to_eof(&mut stream).await;
        assert!(answer.starts_with("HTTP/1."), "{last:?}: {answer:?}");
        assert!(answer.ends_with("pong\n"), "{last:?}: {answer:?}");
        // The FIN came with the socket's close, not a lingering half-close: a byte sent now
        // reaches a closed socket, which answers with a reset.
        stream.write_all(b"x").await.unwrap();
        let ready = within(
            "the reset of a closed socket",
            stream.ready(Interest::ERROR),
        )
        .await;
        assert!(ready.unwrap().is_error(), "{last:?}");
    }
    server.wait_open_connections(0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_sent_before_a_large_body_was_read_reaches_the_client_intact() {
    // 413 is answered from the declared length, before a byte of the body is read; the client
    // sends the whole body anyway and only then reads. With a small send buffer, the body's
    // write completes only if the server reads it: the close lingers, reading and discarding.
    // Closing at once would reset the connection (the write fails, the answer is lost).
    const BODY: usize = 512 * 1024;
    let server = TestServer::start(CONFIG).await;
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n"
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    within("the body's write", stream.write_all(&vec![b'x'; BODY]))
        .await
        .expect("the server reads the body it did not wait for, never resets");
    let answer = read_to_eof(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    assert!(
        answer.ends_with("request body larger than max_body_bytes\n"),
        "{answer:?}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_more_after_its_close_request_still_gets_its_answer() {
    // Not what a client may do (nothing may follow a close request), but its answer is not
    // destroyed: the unread input makes the close linger.
    let server = TestServer::start(CONFIG).await;
    let mut sent =
        b"GET /ping HTTP/1.1\r\nHost: fiddler.test\r\nConnection: close\r\n\r\n".to_vec();
    sent.extend(std::iter::repeat_n(b'x', 256 * 1024));
    let mut stream = server.client().open_raw(&sent).await;
    let answer = read_to_eof(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.ends_with("pong\n"), "{answer:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_on_a_kept_open_connection_arrives_and_a_close_request_ends_it() {
    let server = TestServer::start(CONFIG).await;
    let mut conn = server.client().connect_h1().await;
    for i in 0..3 {
        let reply = conn.send(request("GET", "/ping", "")).await;
        assert_eq!(reply.text(), "pong\n", "answer {i}");
        let reply = conn
            .send(request("POST", "/echo", format!("body {i}")))
            .await;
        assert_eq!(reply.text(), format!("body {i}"), "echo {i}");
    }
    let mut last = request("GET", "/ping", "");
    last.headers_mut()
        .insert("connection", "close".parse().unwrap());
    assert_eq!(conn.send(last).await.text(), "pong\n");
    conn.closed().await;
    server.wait_open_connections(0).await;
    server.shutdown().await;
}
