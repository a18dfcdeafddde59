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
path = "/chatty"
expected_wait_admission = false
[endpoint.exec]
command = ["sh", "-c", "echo 'said on stderr' >&2; echo fine"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_lines_carry_the_redacted_query_and_user_agent_and_stderr_is_logged_at_info() {
    let dir = TempDir::new("logs");
    let config = dir.write("logs.toml", CONFIG);
    let binary = Binary::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let serving = binary.wait_logged("\"serving\"").await;
    let serving: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr: SocketAddr = serving["fields"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = Client { addr };

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
    assert!(!binary.log().contains("s3cret") && !binary.log().contains("hush-hush"));

    assert_eq!(client.post("/chatty", "").await.text(), "fine\n");
    let line = binary.wait_logged("said on stderr").await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(event["level"], "INFO", "{line}");
    assert_eq!(event["fields"]["message"], "program finished", "{line}");
    assert!(binary.stop().await.success());
}
