//! RFC 9112 strictness where hyper is lenient: `Host` exactly once on HTTP/1.1, and
//! `Transfer-Encoding` exactly one `chunked`, refused before routing so no handler ever sees such a
//! request; HTTP/2 (with `:authority`, no `Host`) is unaffected. Raw requests on real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use support::{request, TestServer};

const ECHO: &str = "[[endpoint]]\npath = \"/echo\"\nbuiltin = \"echo\"\nmethods = [\"POST\"]\n";

/// The status line of a raw response.
fn status_of(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    text.lines().next().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_repeated_host_gets_400_and_reaches_no_handler() {
    let server = TestServer::start(ECHO).await;
    let client = server.client();
    let cases: [(&str, &[u8]); 3] = [
        (
            "no Host",
            b"POST /echo HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "two Host",
            b"POST /echo HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\nContent-Length: 2\r\n\r\nhi",
        ),
        (
            "two Host on HTTP/1.0",
            b"POST /echo HTTP/1.0\r\nHost: a.test\r\nHost: b.test\r\nContent-Length: 2\r\n\r\nhi",
        ),
    ];
    for (what, raw) in cases {
        let response = client.raw(raw).await;
        assert!(
            status_of(&response).contains(" 400 "),
            "{what}: {}",
            String::from_utf8_lossy(&response)
        );
    }
    // HTTP/1.0 may omit Host; one Host is fine.
    let response = client
        .raw(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    assert!(status_of(&response).contains(" 200 "), "{response:?}");
    let response = client
        .raw(b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        .await;
    assert!(status_of(&response).contains(" 200 "), "{response:?}");
    assert_eq!(server.counters("/echo").admitted, 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_codings_other_than_one_final_chunked_are_refused_before_any_handler() {
    let server = TestServer::start(ECHO).await;
    let client = server.client();
    let body = "5\r\nhello\r\n0\r\n\r\n";
    let cases = [
        ("x, chunked", "501"),
        ("identity, chunked", "501"),
        ("gzip, chunked", "501"),
        ("chunked, chunked", "400"),
        ("chunked, gzip", "400"),
        ("gzip", "400"),
    ];
    for (codings, status) in cases {
        let raw = format!(
            "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: {codings}\r\n\r\n{body}"
        );
        let response = client.raw(raw.as_bytes()).await;
        let line = status_of(&response);
        assert!(
            line.contains(&format!(" {status} ")),
            "Transfer-Encoding: {codings}: {}",
            String::from_utf8_lossy(&response)
        );
        assert!(
            !String::from_utf8_lossy(&response).contains("hello"),
            "{codings}"
        );
    }
    // The same coding split over two header lines is refused too.
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
    );
    assert!(status_of(&client.raw(raw.as_bytes()).await).contains(" 501 "));
    assert_eq!(server.counters("/echo").admitted, 0);

    // Exactly one chunked is the ordinary case.
    let raw = format!(
        "POST /echo HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: Chunked\r\nConnection: close\r\n\r\n{body}"
    );
    let response = client.raw(raw.as_bytes()).await;
    assert!(status_of(&response).contains(" 200 "), "{response:?}");
    assert!(String::from_utf8_lossy(&response).ends_with("hello"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_carry_authority_instead_of_host_and_are_served() {
    let server = TestServer::start(ECHO).await;
    let h2 = server.client().connect_h2().await;
    // The support client removes Host and sends the authority as `:authority`.
    let reply = h2.send(request("POST", "/echo", "hi")).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), "hi");
    server.shutdown().await;
}

/// The first read tells HTTP/1 from HTTP/2's preface (`PRI * HTTP/2.0…`). A request whose first
/// bytes arrive alone and could begin the preface (`P` of `POST`, even `PRI`), or a head cut in
/// the middle, is still read as the HTTP/1 request it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_first_bytes_come_alone_is_still_http1() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = TestServer::start(
        "[[endpoint]]\npath = \"/echo\"\nbuiltin = \"echo\"\nmethods = [\"POST\", \"PRI\"]\n",
    )
    .await;
    for (first, rest) in [
        ("P", "OST /echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"),
        ("PRI", " /echo HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"),
        ("POST /ec", "ho HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        tcp.write_all(first.as_bytes()).await.unwrap();
        tcp.flush().await.unwrap();
        tokio::task::yield_now().await;
        tcp.write_all(rest.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        support::within("the answer", tcp.read_to_end(&mut response)).await.unwrap();
        let text = String::from_utf8_lossy(&response);
        assert!(status_of(&response).contains(" 200 "), "{first:?}: {text}");
        assert!(text.ends_with("hi"), "{first:?}: {text}");
    }
}
