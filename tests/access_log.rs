//! The access log of the real binary: every line of the requests it answered is on stderr after a
//! graceful shutdown; with stderr blocked, requests are still answered and the dropped lines are
//! counted in `/metrics`. (The buffer itself, its period and its close are tested in
//! `frontend::access`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use nix::sys::signal::Signal;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::binary::Binary;
use support::{free_port, request, wait_until, Client, TempDir};

const PING: &str = "[[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_line_is_on_stderr_after_a_graceful_shutdown() {
    let dir = TempDir::new("access-log");
    let config = dir.write("serve.toml", PING);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut binary = Binary::start(&["--config", config.to_str().unwrap(), "--listen", &addr]);
    let addr = binary.wait_serving().await;
    let mut conn = Client { addr }.connect_h1().await;
    const N: usize = 300;
    for _ in 0..N {
        assert_eq!(
            conn.send(request("GET", "/ping", "")).await.text(),
            "pong\n"
        );
    }
    drop(conn);
    binary.signal(Signal::SIGTERM);
    wait_until("the binary logged `stopped`", || {
        binary.logged(" stopped").is_some()
    })
    .await;
    wait_until("every access line is on stderr", || {
        binary.count_logged("fiddler_crab::access") >= N
    })
    .await;
    let line = binary.logged("fiddler_crab::access").unwrap();
    assert!(
        line.contains("method=GET") && line.contains("/ping"),
        "{line}"
    );
    assert!(line.contains("status=200"), "{line}");
    assert_eq!(binary.count_logged("fiddler_crab::access"), N);
    assert!(binary.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stderr_blocked_requests_are_answered_and_dropped_lines_counted() {
    let dir = TempDir::new("access-log-blocked");
    let config = dir.write("serve.toml", PING);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // stderr is a pipe nobody reads: once its kernel buffer is full, every write to it blocks.
    let mut child = Command::new(env!("CARGO_BIN_EXE_fiddler_crab"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &addr.to_string(),
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let deadline = Instant::now() + support::PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(child.try_wait().unwrap().is_none(), "the binary exited");
        assert!(Instant::now() < deadline, "the binary never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let client = Client { addr };
    // Enough lines to fill the pipe (64 KiB) and the access log's buffer (512 KiB), then some.
    let dropped = loop {
        // A fresh connection per round: the server caps the requests of one connection.
        let mut conn = client.connect_h1().await;
        for _ in 0..100 {
            assert_eq!(
                conn.send(request("GET", "/ping", "")).await.text(),
                "pong\n"
            );
        }
        let metrics = conn.send(request("GET", "/metrics", "")).await.text();
        let dropped: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("fiddler_crab_access_log_dropped_total "))
            .expect("the dropped counter in /metrics")
            .trim()
            .parse()
            .unwrap();
        if dropped > 0 {
            break dropped;
        }
        assert!(Instant::now() < deadline, "no access line dropped");
    };
    assert!(dropped > 0);
    let _ = child.kill();
    let _ = child.wait();
}
