//! Authentication: bearer tokens from a file, per endpoint or server-wide, checked before
//! admission (a flood without credentials never takes a queue slot), `401` with
//! `WWW-Authenticate`, the probes open unless `protect_admin`, the file read again on reload.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use fiddler_crab::config::Config;
use hyper::header::{HeaderValue, AUTHORIZATION};
use hyper::StatusCode;
use std::path::Path;
use support::{request, Reply, TempDir, TestServer};

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
        c.endpoints[0].auth.as_ref().unwrap().bearer_tokens_file,
        Path::new("/t")
    );
}
