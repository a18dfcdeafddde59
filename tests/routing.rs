//! Routing: exact paths, 404 for unknown ones, 405 with `Allow` for a method the endpoint does not
//! take, and `/status` answered by the server itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use support::{request, TestServer};

const ENDPOINTS: &str = r#"
[[endpoint]]
path = "/echo"
methods = ["POST", "PUT"]
builtin = "echo"

[[endpoint]]
path = "/ping"
methods = ["GET", "HEAD"]
builtin = "ping"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_match_exactly_and_unknown_ones_get_404() {
    let server = TestServer::start(ENDPOINTS).await;

    assert_eq!(server.get("/ping").await.text(), "pong\n");
    assert_eq!(server.get("/ping?verbose=1").await.status, StatusCode::OK);
    for path in ["/nope", "/ping/", "/pin", "/ping/x", "/", "/PING"] {
        let reply = server.get(path).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "GET {path}");
    }
    let echoed = server.post("/echo", "hello crab").await;
    assert_eq!(
        (echoed.status, echoed.text()),
        (StatusCode::OK, "hello crab".into())
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_endpoint_does_not_take_gets_405_with_allow() {
    let server = TestServer::start(ENDPOINTS).await;

    let reply = server.get("/echo").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow").as_deref(), Some("POST, PUT"));

    let reply = server.post("/ping", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow").as_deref(), Some("GET, HEAD"));

    let reply = server.client().send(request("DELETE", "/status", "")).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow").as_deref(), Some("GET, HEAD"));

    let put = server.client().send(request("PUT", "/echo", "put")).await;
    assert_eq!((put.status, put.text()), (StatusCode::OK, "put".into()));
    // Refused requests never reach the queue.
    assert_eq!(server.counters("/echo").admitted, 1);
    assert_eq!(server.counters("/ping").admitted, 0);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_json_about_every_endpoint() {
    let server = TestServer::start(ENDPOINTS).await;
    let reply = server.get("/status").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );

    let status = server.status_json().await;
    let endpoints = status["endpoints"].as_object().expect("endpoints object");
    let mut paths: Vec<&String> = endpoints.keys().collect();
    paths.sort();
    assert_eq!(paths, ["/echo", "/ping"]);
    for (path, ep) in endpoints {
        for key in [
            "mode",
            "overflow",
            "queue_depth",
            "queue_capacity",
            "busy",
            "running",
            "restarts",
        ] {
            assert!(!ep[key].is_null(), "{path} has no {key}: {ep}");
        }
        for key in [
            "admitted",
            "completed",
            "failed",
            "timed_out",
            "skipped",
            "overflowed",
            "panics",
        ] {
            assert!(ep["counters"][key].is_u64(), "{path} has no counter {key}");
        }
    }
    assert!(status["children"].is_u64());
    server.shutdown().await;
}

/// More endpoints than the router scans linearly: it looks paths up by hash instead, with the
/// same answers, 405s included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_endpoints_route_by_hash_with_the_same_answers() {
    let mut config = String::new();
    for i in 0..12 {
        config.push_str(&format!(
            "[[endpoint]]\npath = \"/e{i}\"\nmethods = [\"POST\"]\nbuiltin = \"echo\"\n\n"
        ));
    }
    let server = TestServer::start(&config).await;
    for i in 0..12 {
        let path = format!("/e{i}");
        let reply = server.post(&path, format!("body {i}")).await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, format!("body {i}")),
            "{path}"
        );
        let wrong = server.get(&path).await;
        assert_eq!(wrong.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(wrong.header("allow").as_deref(), Some("POST"));
    }
    for path in ["/e12", "/e", "/e1/", "/E1"] {
        assert_eq!(
            server.post(path, "").await.status,
            StatusCode::NOT_FOUND,
            "{path}"
        );
    }
    server.shutdown().await;
}

/// The raw bytes of `METHOD path` with `Connection: close`.
fn raw_request(method: &str, path: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: fiddler.test\r\nConnection: close\r\n\r\n")
        .into_bytes()
}

/// The head (status line and headers, lowercased) and the body of a raw HTTP/1.1 reply.
fn split_reply(bytes: &[u8]) -> (String, Vec<u8>) {
    let at = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head");
    (
        String::from_utf8_lossy(&bytes[..at]).to_ascii_lowercase(),
        bytes[at + 4..].to_vec(),
    )
}

fn content_length(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_is_answered_wherever_get_is_with_the_same_headers_and_no_body() {
    let toml = r#"
[[endpoint]]
path = "/ping"
methods = ["GET"]
builtin = "ping"

[[endpoint]]
path = "/hello"
methods = ["GET"]
expected_wait_admission = false
[endpoint.exec]
command = ["sh", "-c", "printf 'hello from %s' \"$REQUEST_METHOD\""]
"#;
    let server = TestServer::start(toml).await;
    let client = server.client();
    for path in ["/ping", "/hello", "/status", "/metrics"] {
        let (get_head, get_body) = split_reply(&client.raw(&raw_request("GET", path)).await);
        let (head_head, head_body) = split_reply(&client.raw(&raw_request("HEAD", path)).await);
        assert!(
            head_head.starts_with("http/1.1 200"),
            "HEAD {path}: {head_head}"
        );
        assert!(
            head_body.is_empty(),
            "HEAD {path} sent a body: {head_body:?}"
        );
        assert!(!get_body.is_empty(), "GET {path}");
        if path == "/ping" {
            // Same headers, Content-Length included (the exec body names the method, so differs).
            assert_eq!(
                content_length(&head_head),
                content_length(&get_head),
                "{path}"
            );
        }
        assert!(
            content_length(&head_head).is_some(),
            "HEAD {path}: {head_head}"
        );
    }
    // An endpoint listing GET accepts HEAD, and its 405 says so.
    let reply = server.post("/ping", "").await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(reply.header("allow").as_deref(), Some("GET, HEAD"));
    assert_eq!(server.counters("/hello").admitted, 2);
    server.shutdown().await;
}
