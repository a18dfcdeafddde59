//! A process that escapes its job's process group with `setsid` while holding the job's stdout
//! open. The server is a child subreaper: once the escaped process's parent is gone it is the
//! server's child, and it is killed before the job is answered. So the answer comes at once (no
//! wait for a pipe that never closes), no escaped process outlives its answer or the server's
//! shutdown, and the server's file descriptors come back to their baseline.
//!
//! One test per file's process: the test counts this process's file descriptors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use support::{wait_until, TestServer};

/// Pids of live (not zombie) processes whose argv is exactly `argv`.
fn processes_with_argv(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            (cmdline == want && state != "Z").then_some(pid)
        })
        .collect()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escaped_grandchildren_are_killed_before_the_answer_and_at_shutdown() {
    // A marker no other process has: `sleep` with an odd duration.
    let marker = format!("{}.{}", 3000 + std::process::id() % 1000, 7);
    let toml = format!(
        r#"
[server]
shutdown_grace_ms = 300

[[endpoint]]
path = "/escape"
mode = "jellyfish"
workers = 4
expected_wait_admission = false
[endpoint.exec]
command = ["sh", "-c", "setsid sleep {marker} & echo escaped"]
timeout_ms = 20000

[[endpoint]]
path = "/linger"
mode = "jellyfish"
workers = 2
expected_wait_admission = false
[endpoint.exec]
command = ["sh", "-c", "setsid sleep {marker}1 & sleep 60"]
timeout_ms = 60000
"#
    );
    let server = TestServer::start(&toml).await;
    // Warm up: the runtime's threads and the client's connection exist before the baseline.
    let first = server.post("/escape", "").await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    let baseline = open_fds();

    for _ in 0..10 {
        let reply = server.post("/escape", "").await;
        // Before: 502 "output left open" after a 5 s drain bound. Now: the program's answer.
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        assert_eq!(reply.text(), "escaped\n");
        // Killed and reaped before the answer was sent.
        assert_eq!(processes_with_argv(&["sleep", &marker]), Vec::<i32>::new());
    }
    let counters = server.counters("/escape");
    assert_eq!(counters.completed, 11, "{counters:?}");
    // Pipes and helper threads of every run are gone (the server closes each client's socket
    // just after its answer, so that last fd may take a moment).
    wait_until("fds back at their baseline", || open_fds() <= baseline).await;

    // A job whose escaped child is alive when the server shuts down.
    let lingering = ["sleep", &format!("{marker}1")].map(String::from);
    let client = server.client();
    let job = tokio::spawn(async move {
        client
            .try_send(support::request("POST", "/linger", ""))
            .await
    });
    wait_until("the lingering job's escapee runs", || {
        !processes_with_argv(&[&lingering[0], &lingering[1]]).is_empty()
    })
    .await;
    server.shutdown().await;
    let _ = job.await;
    wait_until("no escaped process after shutdown", || {
        processes_with_argv(&[&lingering[0], &lingering[1]]).is_empty()
    })
    .await;
}
