//! What the binary logs in JSON: the access line's query (redacted as configured) and user agent,
//! never a credential; a successful program's stderr at info.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use hyper::StatusCode;
use std::net::SocketAddr;
use support::binary::Binary;
use support::{request, Client, TempDir};

const CONFIG: &str = r#"
[server]
access_log_redact_query = ["token"]

[[endpoint]]
path = "/ping"
builtin = "ping"

[[endpoint]]
path = "/inline"
mode = "jellyfish"
builtin = "ping"

[[endpoint]]
path = "/chatty"
expected_wait_admission = false
[endpoint.exec]
command = ["sh", "-c", "echo 'said on stderr' >&2; echo fine"]
"#;

/// The binary on [`CONFIG`] in `dir`, logging JSON, with `extra` arguments; and a client of it.
async fn start_json(dir: &TempDir, extra: &[&str]) -> (Binary, Client) {
    let config = dir.write("logs.toml", CONFIG);
    let mut args = vec![
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    let binary = Binary::start(&args);
    let serving = binary.wait_logged("\"serving\"").await;
    let serving: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr: SocketAddr = serving["fields"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    (binary, Client { addr })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_carry_the_redacted_query_and_user_agent_and_stderr_is_logged_at_info() {
    let dir = TempDir::new("logs");
    let (binary, client) = start_json(&dir, &[]).await;

    let mut req = request("GET", "/ping?token=s3cret&page=2", "");
    req.headers_mut()
        .insert(USER_AGENT, HeaderValue::from_static("crab-test/1.0"));
    req.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer hush-hush"));
    assert_eq!(client.send(req).await.status, StatusCode::OK);
    let line = binary.wait_logged("fiddler_crab::access").await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["target"], "fiddler_crab::access", "{line}");
    assert_eq!(event["fields"]["query"], "token=REDACTED&page=2", "{line}");
    assert_eq!(event["fields"]["user_agent"], "crab-test/1.0", "{line}");
    assert_eq!(event["fields"]["status"], 200, "{line}");
    assert_eq!(event["fields"]["mode"], "crab", "{line}");
    assert!(event["fields"]["run_ms"].as_f64().is_some(), "{line}");
    // An inline answer's timing reaches its line too (it travels beside the response).
    assert_eq!(client.get("/inline").await.status, StatusCode::OK);
    let line = binary.wait_logged("\"path\":\"/inline\",\"status\"").await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["fields"]["mode"], "jellyfish", "{line}");
    assert_eq!(event["fields"]["queue_wait_ms"], 0.0, "{line}");
    assert!(event["fields"]["run_ms"].as_f64().is_some(), "{line}");
    assert!(event["fields"]["total_ms"].as_f64().is_some(), "{line}");
    assert!(!binary.log().contains("s3cret") && !binary.log().contains("hush-hush"));

    assert_eq!(client.post("/chatty", "").await.text(), "fine\n");
    let line = binary.wait_logged("said on stderr").await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["fields"]["message"], "program finished", "{line}");
    assert!(binary.stop().await.success());
}

/// The log filter decides whether access lines are written, as for any other target: off here,
/// while the rest of the log goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_follow_the_log_filter() {
    let dir = TempDir::new("logs-filter");
    let (binary, client) =
        start_json(&dir, &["--log-level", "info,fiddler_crab::access=off"]).await;
    assert_eq!(client.get("/ping").await.status, StatusCode::OK);
    assert_eq!(client.post("/chatty", "").await.text(), "fine\n");
    binary.wait_logged("said on stderr").await;
    // A graceful stop writes every buffered access line: none was buffered.
    let (status, log) = binary.stop_with_log().await;
    assert!(status.success(), "{log}");
    assert!(log.contains("said on stderr"), "{log}");
    assert!(!log.contains("fiddler_crab::access"), "{log}");
}

/// Every JSON log line is an object whose fields are JSON-typed: numbers and booleans as such, and
/// no string holding a JSON array or object (the old `endpoints` field did).
fn assert_typed(line: &str) -> serde_json::Value {
    let event: serde_json::Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let fields = event["fields"]
        .as_object()
        .unwrap_or_else(|| panic!("{line}"));
    for (name, value) in fields {
        if let Some(text) = value.as_str() {
            let nested = serde_json::from_str::<serde_json::Value>(text)
                .is_ok_and(|v| v.is_array() || v.is_object());
            assert!(!nested, "field {name} is JSON text in a string: {line}");
            assert!(
                !text.starts_with("Some("),
                "field {name} is debug-formatted: {line}"
            );
        }
    }
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_one_startup_line_per_endpoint_with_typed_fields() {
    let dir = TempDir::new("logs-json");
    let tokens = dir.write("tokens", "alpha\n");
    let config = dir.write(
        "json.toml",
        &format!(
            r#"
[[endpoint]]
path = "/ping"
builtin = "ping"

[[endpoint]]
path = "/upper"
methods = ["POST"]
mode = "jellyfish"
workers = 3
queue = 7
overflow = "reject"
[endpoint.exec]
command = ["tr", "a-z", "A-Z"]
[endpoint.auth]
bearer_tokens_file = "{}"

[[endpoint]]
path = "/warm"
mode = "adaptive"
workers = 2
[endpoint.worker]
command = ["sh", "-c", "exec sleep 60"]
"#,
            tokens.display()
        ),
    );
    let binary = Binary::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let serving = assert_typed(&binary.wait_logged("\"serving\"").await);
    assert_eq!(serving["fields"]["endpoints"], 3);
    assert_eq!(serving["fields"]["scheme"], "http");
    let addr: SocketAddr = serving["fields"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(Client { addr }.get("/ping").await.text(), "pong\n");
    binary.wait_logged("fiddler_crab::access").await;

    let lines: Vec<String> = binary.log().lines().map(str::to_string).collect();
    let events: Vec<serde_json::Value> = lines.iter().map(|l| assert_typed(l)).collect();
    let endpoint = |path: &str| {
        events
            .iter()
            .find(|e| e["fields"]["message"] == "endpoint" && e["fields"]["path"] == path)
            .unwrap_or_else(|| panic!("no endpoint line for {path}: {lines:#?}"))["fields"]
            .clone()
    };
    let expected = [
        (
            "/ping",
            "GET,HEAD,POST",
            "crab",
            1,
            100,
            "ignore",
            "builtin",
            "ping",
            false,
        ),
        (
            "/upper",
            "POST",
            "jellyfish",
            3,
            7,
            "reject",
            "exec",
            "tr",
            true,
        ),
        (
            "/warm",
            "GET,HEAD,POST",
            "adaptive",
            2,
            100,
            "ignore",
            "worker",
            "sh",
            false,
        ),
    ];
    for (path, methods, mode, concurrency, queue, overflow, handler, runs, auth) in expected {
        let fields = endpoint(path);
        assert_eq!(fields["methods"], methods, "{fields}");
        assert_eq!(fields["mode"], mode, "{fields}");
        assert_eq!(fields["concurrency"], concurrency, "{fields}");
        assert_eq!(fields["queue"], queue, "{fields}");
        assert_eq!(fields["overflow"], overflow, "{fields}");
        assert_eq!(fields["handler"], handler, "{fields}");
        assert_eq!(fields["runs"], runs, "{fields}");
        assert_eq!(fields["auth"], auth, "{fields}");
    }
    assert!(binary.stop().await.success());
}
