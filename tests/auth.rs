//! Authentication: bearer tokens and Basic-auth users from files, per endpoint or server-wide,
//! checked before admission (a flood without credentials never takes a queue slot), `401` with
//! `WWW-Authenticate` for each scheme offered, the probes open unless `protect_admin`, the files
//! read again on reload, credentials never logged.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use fiddler_crab::config::Config;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::StatusCode;
use std::path::Path;
use support::binary::Binary;
use support::{request, Client, Reply, TempDir, TestServer};

fn config(tokens: &Path, extra_server: &str) -> String {
    format!(
        r#"
[server]
{extra_server}
[server.auth]
bearer_tokens_file = "{}"

[[endpoint]]
path = "/work"
methods = ["GET"]
builtin = "ping"

[[endpoint]]
path = "/open"
methods = ["GET"]
builtin = "ping"
auth = false
"#,
        tokens.display()
    )
}

async fn get(server: &TestServer, path: &str, authorization: Option<&str>) -> Reply {
    let mut req = request("GET", path, "");
    if let Some(value) = authorization {
        req.headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
    }
    server.client().send(req).await
}

fn assert_unauthorized(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Bearer realm=\"fiddler_crab\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_get_401_and_never_take_a_queue_slot() {
    let dir = TempDir::new("auth");
    let tokens = dir.write("tokens", "# clients\n\nalpha\n  beta  \n");
    let server = TestServer::start(&config(&tokens, "")).await;

    for authorization in [
        None,
        Some("Bearer wrong"),
        Some("Bearer alph"),
        Some("Basic alpha"),
    ] {
        assert_unauthorized(&get(&server, "/work", authorization).await);
    }
    let flood: Vec<_> = (0..20)
        .map(|_| server.client().spawn(request("GET", "/work", "")))
        .collect();
    for reply in flood {
        assert_unauthorized(&reply.await.unwrap());
    }
    assert_eq!(server.counters("/work").admitted, 0);
    assert_eq!(server.counters("/work").overflowed, 0);
    assert_eq!(server.status_of("/work").queue_depth, 0);
    assert_eq!(server.app.unauthorized(), 24);

    for token in ["alpha", "beta"] {
        let reply = get(&server, "/work", Some(&format!("Bearer {token}"))).await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "pong\n".into())
        );
    }
    assert_eq!(server.counters("/work").admitted, 2);
    // `auth = false` opts out; the probes and metrics stay open by default.
    for path in ["/open", "/healthz", "/metrics", "/status"] {
        assert_eq!(
            get(&server, path, None).await.status,
            StatusCode::OK,
            "{path}"
        );
    }
    let metrics = get(&server, "/metrics", None).await.text();
    assert!(
        metrics.contains("fiddler_crab_requests_unauthorized_total 24"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protect_admin_puts_the_servers_own_paths_behind_the_same_tokens() {
    let dir = TempDir::new("auth-admin");
    let tokens = dir.write("tokens", "alpha\n");
    let server = TestServer::start(&config(&tokens, "protect_admin = true")).await;
    for path in ["/healthz", "/readyz", "/metrics", "/status"] {
        assert_unauthorized(&get(&server, path, None).await);
        // `/readyz` may say 503 on a busy host: the token got past the guard either way.
        let status = get(&server, path, Some("Bearer alpha")).await.status;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_file_is_read_again_on_reload() {
    let dir = TempDir::new("auth-reload");
    let tokens = dir.write("tokens", "alpha\n");
    let toml = config(&tokens, "");
    let server = TestServer::start(&toml).await;
    assert_eq!(
        get(&server, "/work", Some("Bearer alpha")).await.status,
        StatusCode::OK
    );

    dir.write("tokens", "beta\n");
    let summary = server.reload(&toml);
    assert_eq!(summary.kept, 2, "unchanged endpoints keep running");
    assert_unauthorized(&get(&server, "/work", Some("Bearer alpha")).await);
    assert_eq!(
        get(&server, "/work", Some("Bearer beta")).await.status,
        StatusCode::OK
    );

    // A token file that can no longer be read refuses the reload; the tokens in force stay.
    dir.write("tokens", "# nobody\n");
    assert!(server.try_reload(&toml).is_err());
    assert_eq!(
        get(&server, "/work", Some("Bearer beta")).await.status,
        StatusCode::OK
    );
    server.shutdown().await;
}

#[test]
fn auth_switches_need_a_server_table() {
    let ping = "[[endpoint]]\npath = \"/p\"\nbuiltin = \"ping\"\n";
    let e = Config::from_toml(&format!("{ping}auth = true\n"), "t.toml").unwrap_err();
    assert_eq!(e.key, "endpoint[0].auth", "{e}");
    let e = Config::from_toml(&format!("[server]\nprotect_admin = true\n{ping}"), "t.toml")
        .unwrap_err();
    assert_eq!(e.key, "server.protect_admin", "{e}");
    let own = format!("{ping}[endpoint.auth]\nbearer_tokens_file = \"/t\"\n");
    let c = Config::from_toml(&own, "t.toml").unwrap();
    assert_eq!(
        c.endpoints[0]
            .auth
            .as_ref()
            .unwrap()
            .bearer_tokens_file
            .as_deref(),
        Some(Path::new("/t"))
    );
    let e = Config::from_toml(&format!("{ping}[endpoint.auth]\nrealm = \"x\"\n"), "t.toml")
        .unwrap_err();
    assert_eq!(e.key, "endpoint[0].auth", "{e}");
    let bad_realm = format!("{ping}[endpoint.auth]\nbasic_users_file = \"/u\"\nrealm = 'a\"b'\n");
    let e = Config::from_toml(&bad_realm, "t.toml").unwrap_err();
    assert_eq!(e.key, "endpoint[0].auth.realm", "{e}");
}

/// `Authorization: Basic` with base64 of `user:password`.
fn basic(user_password: &str) -> String {
    format!("Basic {}", STANDARD.encode(user_password))
}

fn basic_config(tokens: &Path, users: &Path, own_users: &Path) -> String {
    format!(
        r#"
[server.auth]
bearer_tokens_file = "{}"
basic_users_file = "{}"

[[endpoint]]
path = "/work"
methods = ["GET"]
builtin = "ping"

[[endpoint]]
path = "/staff"
methods = ["GET"]
builtin = "ping"
[endpoint.auth]
basic_users_file = "{}"
realm = "staff only"
"#,
        tokens.display(),
        users.display(),
        own_users.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_from_the_users_file_pass_and_a_flood_without_them_never_takes_a_queue_slot(
) {
    let dir = TempDir::new("auth-basic");
    let tokens = dir.write("tokens", "alpha\n");
    let users = dir.write("users", "# people\nann:s3cret\nbob:pa:ss\n");
    let staff = dir.write("staff", "cy:staffpass\n");
    let server = TestServer::start(&basic_config(&tokens, &users, &staff)).await;

    // Both schemes are offered where both files are configured, Basic alone where only a users
    // file is.
    let both = [
        "Bearer realm=\"fiddler_crab\"",
        "Basic realm=\"fiddler_crab\"",
    ];
    for authorization in [
        None,
        Some(basic("ann:wrong")),
        Some(basic("ann:s3cre")),
        Some(basic("bob:pa")),
        Some(basic("cy:staffpass")),
        Some("Basic !!notbase64".to_string()),
        Some("Bearer s3cret".to_string()),
    ] {
        let reply = get(&server, "/work", authorization.as_deref()).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(
            reply
                .headers
                .get_all("www-authenticate")
                .iter()
                .collect::<Vec<_>>(),
            both
        );
    }
    let reply = get(&server, "/staff", Some(&basic("ann:s3cret"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        reply.header("www-authenticate").as_deref(),
        Some("Basic realm=\"staff only\"")
    );
    let flood: Vec<_> = (0..20)
        .map(|_| {
            let mut req = request("GET", "/work", "");
            req.headers_mut().insert(
                AUTHORIZATION,
                HeaderValue::from_str(&basic("ann:guess")).unwrap(),
            );
            server.client().spawn(req)
        })
        .collect();
    for reply in flood {
        assert_eq!(reply.await.unwrap().status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(server.counters("/work").admitted, 0);
    assert_eq!(server.counters("/staff").admitted, 0);
    assert_eq!(server.status_of("/work").queue_depth, 0);
    assert_eq!(server.app.unauthorized(), 28);

    for authorization in [
        basic("ann:s3cret"),
        basic("bob:pa:ss"),
        "Bearer alpha".into(),
    ] {
        let reply = get(&server, "/work", Some(&authorization)).await;
        assert_eq!(reply.status, StatusCode::OK, "{authorization}");
    }
    let reply = get(&server, "/staff", Some(&basic("cy:staffpass"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(server.counters("/work").admitted, 3);
    assert_eq!(server.counters("/staff").admitted, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_users_file_is_read_again_on_reload_and_a_bad_one_is_refused() {
    let dir = TempDir::new("auth-basic-reload");
    let tokens = dir.write("tokens", "alpha\n");
    let users = dir.write("users", "ann:one\n");
    let staff = dir.write("staff", "cy:staffpass\n");
    let toml = basic_config(&tokens, &users, &staff);
    let server = TestServer::start(&toml).await;
    let status = |reply: Reply| reply.status;
    assert_eq!(
        status(get(&server, "/work", Some(&basic("ann:one"))).await),
        StatusCode::OK
    );

    dir.write("users", "ann:two\n");
    server.reload(&toml);
    assert_eq!(
        status(get(&server, "/work", Some(&basic("ann:one"))).await),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        status(get(&server, "/work", Some(&basic("ann:two"))).await),
        StatusCode::OK
    );

    // A malformed line refuses the reload, naming the line and not its content.
    dir.write("users", "ann:three\nnocolonsecret\n");
    let e = server.try_reload(&toml).unwrap_err().to_string();
    assert!(e.contains("line 2") && !e.contains("nocolonsecret"), "{e}");
    assert_eq!(
        status(get(&server, "/work", Some(&basic("ann:two"))).await),
        StatusCode::OK
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_credentials_never_reach_the_log() {
    let dir = TempDir::new("auth-basic-log");
    let tokens = dir.write("tokens", "alpha\n");
    let users = dir.write("users", "ann:s3cret\n");
    let staff = dir.write("staff", "cy:staffpass\n");
    let config = dir.write("auth.toml", &basic_config(&tokens, &users, &staff));
    let mut binary = Binary::start_with(
        &[
            "--config",
            config.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        |command| {
            command.env("RUST_LOG", "debug");
        },
    );
    let client = Client {
        addr: binary.wait_serving().await,
    };
    for (authorization, expected) in [
        (basic("ann:s3cret"), StatusCode::OK),
        (basic("ann:wrongpass"), StatusCode::UNAUTHORIZED),
    ] {
        let mut req = request("GET", "/work", "");
        req.headers_mut().insert(
            AUTHORIZATION,
            HeaderValue::from_str(&authorization).unwrap(),
        );
        assert_eq!(client.send(req).await.status, expected);
    }
    binary.wait_logged("401").await;
    let log = binary.log();
    for secret in [
        "s3cret",
        "wrongpass",
        &basic("ann:s3cret")[6..],
        &basic("ann:wrongpass")[6..],
    ] {
        assert!(!log.contains(secret), "{secret} in {log}");
    }
    assert!(binary.stop().await.success());
}

#[test]
fn check_reports_an_unreadable_or_malformed_users_file_by_key_without_its_content() {
    let dir = TempDir::new("auth-check");
    let good = dir.write("good", "ann:s3cret\n");
    let bad = dir.write("bad", "ann:s3cret\nnocolonsecret\n");
    let text = format!(
        r#"
[server.auth]
basic_users_file = "{missing}"

[[endpoint]]
path = "/a"
builtin = "ping"
[endpoint.auth]
basic_users_file = "{bad}"

[[endpoint]]
path = "/b"
builtin = "ping"
[endpoint.auth]
bearer_tokens_file = "{good}"
basic_users_file = "{good}"
"#,
        missing = dir.path().join("missing").display(),
        bad = bad.display(),
        good = good.display(),
    );
    let file = dir.write("t.toml", &text);
    let file = file.to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fiddler_crab"))
        .args(["check", "--config", file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        format!("{file}: server.auth.basic_users_file: "),
        format!("{file}: endpoint[0].auth.basic_users_file: "),
        "line 2: expected `user:password`".to_string(),
        "cannot read".to_string(),
    ] {
        assert!(stderr.contains(&expected), "{expected:?} not in:\n{stderr}");
    }
    assert!(!stderr.contains("endpoint[1]"), "{stderr}");
    assert!(!stderr.contains("nocolonsecret"), "{stderr}");
}
