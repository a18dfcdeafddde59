//! Exec endpoints: a real child process per request. Raw and CGI output, failures answered 502
//! with a short reason, the time limit (504, whole process group killed), the output cap, an
//! allow-listed environment, and the embedded default's `/wordcount`.
//!
//! Every test shuts its server down: each server has its own registry of children, so one test's
//! shutdown never touches another's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::collections::BTreeMap;
use std::path::Path;
use support::{is_dead, request, wait_until, TempDir, TestServer};

/// An `[[endpoint]]` at `path` running `script` with `sh -c`, plus `extra` lines for its exec table.
fn sh_endpoint(path: &str, script: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nexpected_wait_admission = false\n\
         [endpoint.exec]\ncommand = [\"sh\", \"-c\", '''{script}''']\n{extra}\n\n"
    )
}

/// An `[[endpoint]]` at `path` running `argv` directly, plus `extra` lines for its exec table.
fn argv_endpoint(path: &str, argv: &[&str], extra: &str) -> String {
    let argv: Vec<String> = argv.iter().map(|a| format!("'{a}'")).collect();
    format!(
        "[[endpoint]]\npath = \"{path}\"\nexpected_wait_admission = false\n\
         [endpoint.exec]\ncommand = [{}]\n{extra}\n\n",
        argv.join(", ")
    )
}

/// Assert a short plain-text 502 whose reason mentions `word`.
fn assert_bad_gateway(reply: &support::Reply, word: &str) {
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{reply:?}");
    assert!(
        reply
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{reply:?}"
    );
    let reason = reply.text();
    assert!(reason.len() < 300, "a long 502 body: {reason:?}");
    assert!(
        reason.contains(word),
        "{reason:?} does not mention {word:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_output_is_the_body_with_the_configured_content_type() {
    let toml = sh_endpoint(
        "/hello",
        r#"printf 'hello from %s' "$REQUEST_METHOD""#,
        "content_type = \"text/x-crab\"",
    ) + &argv_endpoint(
        "/cat",
        &["cat"],
        "content_type = \"application/octet-stream\"",
    );
    let server = TestServer::start(&toml).await;

    let hello = server.post("/hello", "").await;
    assert_eq!(hello.status, StatusCode::OK);
    assert_eq!(hello.text(), "hello from POST");
    assert_eq!(hello.header("content-type").as_deref(), Some("text/x-crab"));

    let body: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let echoed = server.post("/cat", body.clone()).await;
    assert_eq!(echoed.status, StatusCode::OK);
    assert_eq!(
        echoed.body.as_ref(),
        body.as_slice(),
        "stdin did not reach stdout intact"
    );
    assert_eq!(server.counters("/cat").completed, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgi_output_sets_status_content_type_and_headers() {
    let toml = sh_endpoint(
        "/created",
        r"printf 'Status: 201 Created\nContent-Type: x/y\nX-Foo: y\n\nbody'",
        "output = \"cgi\"",
    ) + &sh_endpoint(
        "/plain",
        r"printf 'X-Only: header\r\n\r\njust the body'",
        "output = \"cgi\"\ncontent_type = \"text/x-default\"",
    );
    let server = TestServer::start(&toml).await;

    let created = server.post("/created", "").await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.header("content-type").as_deref(), Some("x/y"));
    assert_eq!(created.header("x-foo").as_deref(), Some("y"));
    assert!(
        created.header("status").is_none(),
        "Status leaked as a header"
    );
    assert_eq!(created.text(), "body");

    let plain = server.get("/plain").await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(
        plain.header("content-type").as_deref(),
        Some("text/x-default")
    );
    assert_eq!(plain.header("x-only").as_deref(), Some("header"));
    assert_eq!(plain.text(), "just the body");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_program_is_answered_502_with_a_short_reason() {
    let toml = sh_endpoint("/exit3", "echo partial; exit 3", "")
        + &sh_endpoint("/killed", "kill -9 $$", "")
        + &argv_endpoint("/missing", &["/nonexistent/fiddler-crab-program"], "")
        + &sh_endpoint(
            "/no-blank-line",
            "printf 'no header block here'",
            "output = \"cgi\"",
        )
        + &sh_endpoint(
            "/bad-status",
            r"printf 'Status: lots\n\nbody'",
            "output = \"cgi\"",
        );
    let server = TestServer::start(&toml).await;

    assert_bad_gateway(&server.post("/exit3", "").await, "3");
    assert_bad_gateway(&server.post("/killed", "").await, "signal");
    let missing = server.post("/missing", "").await;
    assert_bad_gateway(&missing, "cannot start the program");
    assert!(
        !missing.text().contains('/'),
        "a server path shown: {missing:?}"
    );
    assert_bad_gateway(&server.post("/no-blank-line", "").await, "");
    assert_bad_gateway(&server.post("/bad-status", "").await, "");

    for path in [
        "/exit3",
        "/killed",
        "/missing",
        "/no-blank-line",
        "/bad-status",
    ] {
        let c = server.counters(path);
        assert_eq!((c.admitted, c.failed, c.completed), (1, 1, 0), "{path}");
    }
    // The crab carries on after each failure.
    assert_bad_gateway(&server.post("/exit3", "").await, "3");
    server.shutdown().await;
}

fn read_pid(file: &Path) -> i32 {
    let text = std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("the script did not write {}: {e}", file.display()));
    text.trim().parse().expect("a pid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_past_its_time_limit_gets_504_and_its_whole_group_dies() {
    let dir = TempDir::new("timeout");
    let d = dir.path().display();
    // The leader waits on a grandchild; /stubborn also ignores SIGTERM (inherited by the
    // grandchild), so only the SIGKILL after kill_grace_ms ends it.
    let script = |tag: &str, prelude: &str| {
        format!("{prelude}echo $$ > {d}/{tag}.leader; sleep 1000 & echo $! > {d}/{tag}.grandchild; wait")
    };
    let limits = "timeout_ms = 1000\nkill_grace_ms = 300";
    let toml = sh_endpoint("/slow", &script("slow", ""), limits)
        + &sh_endpoint("/stubborn", &script("stubborn", "trap '' TERM; "), limits);
    let server = TestServer::start(&toml).await;

    for tag in ["slow", "stubborn"] {
        let path = format!("/{tag}");
        let reply = server.post(&path, "").await;
        assert_eq!(
            reply.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{path}: {reply:?}"
        );
        assert!(reply.text().contains("timeout_ms"), "{path}: {reply:?}");

        let leader = read_pid(&dir.path().join(format!("{tag}.leader")));
        let grandchild = read_pid(&dir.path().join(format!("{tag}.grandchild")));
        wait_until(&format!("{path}'s leader {leader} is dead"), || {
            is_dead(leader)
        })
        .await;
        wait_until(&format!("{path}'s grandchild {grandchild} is dead"), || {
            is_dead(grandchild)
        })
        .await;
        let c = server.counters(&path);
        assert_eq!((c.admitted, c.timed_out), (1, 1), "{path}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_over_max_output_bytes_is_502() {
    let cap = "max_output_bytes = 100";
    let toml = argv_endpoint("/endless", &["yes"], cap)
        + &argv_endpoint("/just-over", &["head", "-c", "101", "/dev/zero"], cap)
        + &argv_endpoint("/at-cap", &["head", "-c", "100", "/dev/zero"], cap);
    let server = TestServer::start(&toml).await;

    assert_bad_gateway(&server.get("/endless").await, "max_output_bytes");
    assert_bad_gateway(&server.get("/just-over").await, "max_output_bytes");
    let at_cap = server.get("/at-cap").await;
    assert_eq!((at_cap.status, at_cap.body.len()), (StatusCode::OK, 100));
    server.shutdown().await;
}

/// `NAME=value` lines into a map.
fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_sees_cgi_variables_and_only_allowed_server_variables() {
    const ALWAYS: [&str; 3] = ["PATH", "LANG", "HOME"];
    let server_env: BTreeMap<String, String> = std::env::vars()
        .filter(|(_, v)| !v.contains('\n'))
        .collect();
    // One server variable passed on request, if the test environment has a spare one.
    let passed = server_env
        .keys()
        .find(|k| !ALWAYS.contains(&k.as_str()))
        .cloned();
    let pass_env = passed
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = argv_endpoint(
        "/env",
        &["env"],
        &format!("pass_env = [{pass_env}]\nenv = {{ FIDDLER_SET = \"from-config\" }}"),
    );
    let server = TestServer::start(&toml).await;

    let mut req = request("GET", "/env?a=1&b=two", "");
    req.headers_mut().insert("x-foo", "bar".parse().unwrap());
    let reply = server.client().send(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let child = parse_env(&reply.text());

    for (name, value) in [
        ("GATEWAY_INTERFACE", "CGI/1.1"),
        ("REQUEST_METHOD", "GET"),
        ("QUERY_STRING", "a=1&b=two"),
        ("SCRIPT_NAME", "/env"),
        ("HTTP_X_FOO", "bar"),
        ("FIDDLER_SET", "from-config"),
    ] {
        assert_eq!(child.get(name).map(String::as_str), Some(value), "{name}");
    }
    assert_eq!(
        child.get("SERVER_PORT"),
        Some(&server.addr.port().to_string())
    );
    assert!(child.contains_key("PATH"));
    if let Some(passed) = &passed {
        assert_eq!(
            child.get(passed),
            server_env.get(passed),
            "pass_env {passed}"
        );
    }
    for name in server_env.keys() {
        let allowed = ALWAYS.contains(&name.as_str()) || Some(name) == passed.as_ref();
        if !allowed && !name.starts_with("HTTP_") {
            assert!(
                !child.contains_key(name),
                "the server's {name} leaked into the child"
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_child_runs_in_the_configured_directory() {
    let dir = TempDir::new("cwd");
    let toml = argv_endpoint(
        "/pwd",
        &["pwd"],
        &format!("cwd = '{}'", dir.path().display()),
    );
    let server = TestServer::start(&toml).await;
    let reply = server.get("/pwd").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let reported = std::fs::canonicalize(reply.text().trim()).unwrap();
    assert_eq!(reported, std::fs::canonicalize(dir.path()).unwrap());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_wordcount() {
    let server = TestServer::start(&fiddler_crab::default_config_text()).await;

    let reply = server.post("/wordcount", "one two three\nfour\n").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    let counts: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(
        counts,
        serde_json::json!({"lines": 2, "words": 4, "bytes": 19, "method": "POST"})
    );
    assert_eq!(server.get("/ping").await.text(), "pong\n");
    assert_eq!(server.post("/echo", "back").await.text(), "back");
    assert_eq!(
        server.get("/wordcount").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    server.shutdown().await;
}
