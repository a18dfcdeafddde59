//! The accept loop out of file descriptors: the real binary under a low `ulimit -n`, flooded
//! with connections it cannot accept, logs one `ERROR` line for the whole spell (each failure
//! after it only at `debug`), never stops accepting, and serves again once descriptors free up.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::binary::Binary;
use support::{free_port, Client, TempDir, PATIENCE};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The binary's open-files limit: enough to start, few enough to run out of quickly.
const OPEN_FILES: u64 = 40;

/// Connections the test opens at once: more than the binary can hold open.
const FLOOD: usize = 80;

/// Failures the test waits to see logged at `debug` before it counts the `ERROR` lines.
const FAILURES: usize = 5;

/// How often an accept error may be logged as an `ERROR` line.
const LOG_EVERY: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_logs_one_error_line_per_period_and_serving_resumes() {
    let dir = TempDir::new("emfile");
    // Long deadlines: the flood's slow connections stay open until the test closes them.
    let config = dir.write(
        "serve.toml",
        "[server]\nheader_read_timeout_ms = 60000\nidle_timeout_ms = 60000\n\n\
         [[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n",
    );
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen = addr.to_string();
    let mut binary = Binary::start_with_open_files(
        &["--config", config.to_str().unwrap(), "--listen", &listen],
        OPEN_FILES,
        "info,frontend=debug",
    );
    binary.wait_listening(addr).await;
    let client = Client { addr };
    assert_eq!(client.get("/ping").await.text(), "pong\n");

    let started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        let mut slow = TcpStream::connect(addr)
            .await
            .expect("connect (the backlog is long)");
        // A first byte of a head that never ends: the listener defers a connection until its
        // first bytes come (TCP_DEFER_ACCEPT), so a silent one would never reach the accept.
        slow.write_all(b"G").await.expect("the first byte");
        flood.push(slow);
    }
    binary.wait_logged("accept failed; pausing").await;
    let deadline = Instant::now() + PATIENCE;
    while binary.count_logged("accept failed again") < FAILURES {
        assert!(
            Instant::now() < deadline,
            "the accept loop stopped retrying:\n{}",
            binary.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let errors = binary.count_logged("accept failed; pausing");
    let periods = started.elapsed().as_secs() / LOG_EVERY.as_secs() + 1;
    assert!(
        errors as u64 <= periods,
        "{errors} ERROR lines in {periods} log period(s):\n{}",
        binary.log()
    );
    let first = binary.logged("accept failed; pausing").unwrap();
    assert!(first.contains("ERROR"), "{first}");
    assert!(first.contains("suppressed=0"), "{first}");

    // Descriptors free up: the loop accepts again, the backlog first, then a new client.
    drop(flood);
    assert_eq!(client.get("/ping").await.text(), "pong\n");
    let log = binary.log();
    let status = binary.stop().await;
    assert!(status.success(), "exit status {status}:\n{log}");
}
