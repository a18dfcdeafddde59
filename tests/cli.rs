//! The binary as users start it: from any directory with the embedded default, every flag from a
//! `FIDDLER_CRAB_*` variable, `--port` and the `--listen` forms, and `serve` without a config file.
//! Each test runs the real binary on port 0 and reads the bound address from its `serving` line.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::net::SocketAddr;
use std::process::{Command, Output};
use support::binary::Binary;
use support::{request, Client, TempDir};

/// Command-line arguments and environment variables for one run.
type Invocation<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);

const PING: &str =
    "[server]\nlisten = \"127.0.0.1:8080\"\n\n[[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n";

/// Run the binary to completion (for usage errors and printing commands), without the test's own
/// `FIDDLER_CRAB_*` variables.
fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fiddler_crab"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FIDDLER_CRAB_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run the binary")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_serves_wordcount_from_any_directory_without_the_source_tree() {
    let cwd = TempDir::new("anywhere");
    let mut binary = Binary::start_with(&["--listen", "127.0.0.1:0"], |c| {
        c.current_dir(cwd.path());
    });
    let client = Client {
        addr: binary.wait_serving().await,
    };

    let reply = client.post("/wordcount", "one two three\nfour\n").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}\n{}", binary.log());
    let counts: serde_json::Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(
        counts,
        serde_json::json!({"lines": 2, "words": 4, "bytes": 19, "method": "POST"})
    );
    assert!(binary.stop().await.success());

    // Nothing in the default points back to where the binary was built.
    let printed = run(&["default-config"], &[]);
    let printed = String::from_utf8_lossy(&printed.stdout);
    assert!(printed.contains("\"-c\""), "{printed}");
    assert!(!printed.contains(env!("CARGO_MANIFEST_DIR")), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_listen_log_format_and_log_level_come_from_fiddler_crab_variables() {
    let dir = TempDir::new("env");
    let config = dir.write("ping.toml", PING);
    let config = config.to_str().unwrap().to_string();
    let binary = Binary::start_with(&[], |c| {
        c.env("FIDDLER_CRAB_CONFIG", &config)
            .env("FIDDLER_CRAB_LISTEN", "127.0.0.1:0")
            .env("FIDDLER_CRAB_LOG_FORMAT", "json")
            // The variable wins over RUST_LOG: at `error` the serving line would never appear.
            .env("RUST_LOG", "error")
            .env("FIDDLER_CRAB_LOG_LEVEL", "info");
    });

    let line = binary.wait_logged("\"serving\"").await;
    let event: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let addr: SocketAddr = event["fields"]["listen"].as_str().unwrap().parse().unwrap();
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 8080, "FIDDLER_CRAB_LISTEN overrides the file");
    assert_eq!(event["fields"]["endpoints"], 1);
    let client = Client { addr };
    assert_eq!(client.get("/ping").await.text(), "pong\n");
    assert!(binary.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_replaces_the_port_of_listen_whether_given_as_flag_or_variable() {
    // Port 1 is never bound: the port 0 from --port/-p/FIDDLER_CRAB_PORT must replace it.
    let cases: [Invocation<'_>; 3] = [
        (&["--listen", "127.0.0.1:1", "--port", "0"], &[]),
        (&["--listen", "127.0.0.1:1", "-p", "0"], &[]),
        (
            &[],
            &[
                ("FIDDLER_CRAB_LISTEN", "127.0.0.1:1"),
                ("FIDDLER_CRAB_PORT", "0"),
            ],
        ),
    ];
    for (args, env) in cases {
        let mut binary = Binary::start_with(args, |c| {
            c.envs(env.iter().copied());
        });
        let addr = binary.wait_serving().await;
        assert_eq!(addr.ip().to_string(), "127.0.0.1", "{args:?} {env:?}");
        assert_ne!(addr.port(), 1, "{args:?} {env:?}");
        assert_eq!(Client { addr }.get("/ping").await.text(), "pong\n");
        assert!(binary.stop().await.success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_accepts_a_bare_port_for_every_interface_and_a_host_name() {
    let mut all = Binary::start(&["--listen", ":0"]);
    let addr = all.wait_serving().await;
    assert!(addr.ip().is_unspecified() && addr.is_ipv4(), "{addr}");
    let loopback = SocketAddr::from(([127, 0, 0, 1], addr.port()));
    assert_eq!(
        Client { addr: loopback }.get("/ping").await.text(),
        "pong\n"
    );
    assert!(all.stop().await.success());

    let mut named = Binary::start(&["--listen", "localhost:0"]);
    let addr = named.wait_serving().await;
    assert!(addr.ip().is_loopback(), "{addr}");
    assert_eq!(Client { addr }.get("/ping").await.text(), "pong\n");
    assert!(named.stop().await.success());
}

#[test]
fn a_bad_listen_address_port_or_log_level_is_a_usage_error_that_says_what_is_wrong() {
    let cases: [(Invocation<'_>, &str); 6] = [
        ((&["--log-level", "verbose"], &[]), "expected a level"),
        ((&["--listen", "8080"], &[]), "`:8080` or `--port 8080`"),
        ((&["--listen", ":http"], &[]), "`http` is not a port"),
        ((&["--listen", ":65536"], &[]), "`65536` is not a port"),
        (
            (&["--listen", "no-such-host.invalid:80"], &[]),
            "cannot resolve `no-such-host.invalid`",
        ),
        ((&[], &[("FIDDLER_CRAB_PORT", "eighty")]), "--port"),
    ];
    for ((args, env), words) in cases {
        let mut argv = args.to_vec();
        argv.push("check");
        let out = run(&argv, env);
        assert_eq!(out.status.code(), Some(2), "{argv:?} {env:?}: {out:?}");
        assert!(stderr(&out).contains(words), "{argv:?}: {}", stderr(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_each_command_at_its_path_without_a_config_file() {
    let cwd = TempDir::new("serve");
    let mut binary = Binary::start_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "/upper",
            "tr a-z A-Z",
            "/query",
            "printf '%s|%s' \"$REQUEST_METHOD\" \"$QUERY_STRING\"",
        ],
        |c| {
            c.current_dir(cwd.path());
        },
    );
    let client = Client {
        addr: binary.wait_serving().await,
    };

    let reply = client.post("/upper", "quiet crab").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), "QUIET CRAB");
    assert_eq!(client.get("/query?a=1&b=2").await.text(), "GET|a=1&b=2");
    assert_eq!(
        client.send(request("PUT", "/upper", "x")).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(client.get("/other").await.status, StatusCode::NOT_FOUND);
    let status: serde_json::Value =
        serde_json::from_slice(&client.get("/status").await.body).unwrap();
    for path in ["/upper", "/query"] {
        assert_eq!(status["endpoints"][path]["mode"], "crab", "{status}");
    }
    assert!(binary.stop().await.success());
}

#[test]
fn serve_routes_are_checked_like_a_config_file_and_print_as_one() {
    let refused: [(&[&str], &str); 4] = [
        (&["serve", "/a", "date", "/b"], "`/b` has no command"),
        (&["serve", "/a", "  "], "the command for `/a` is empty"),
        (
            &["serve", "/status", "date"],
            "answered by the server itself",
        ),
        (
            &["serve", "/a", "date", "/a", "date"],
            "`/a` is already used",
        ),
    ];
    for (args, words) in refused {
        let out = run(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(stderr(&out).contains(words), "{args:?}: {}", stderr(&out));
    }

    let dir = TempDir::new("serve-config");
    let config = dir.write("ping.toml", PING);
    let out = run(
        &["serve", "--config", config.to_str().unwrap(), "/a", "date"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("drop --config"), "{}", stderr(&out));

    let out = run(
        &["serve", "--print-config", "/q", "echo \"it's\" | wc -c"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let printed = dir.write("printed.toml", &String::from_utf8_lossy(&out.stdout));
    let out = run(&["check", "--config", printed.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/q (crab)"));
}
