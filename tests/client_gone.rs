//! A running exec job whose client goes away (HTTP/1 close, HTTP/2 stream reset) is stopped under
//! `on_client_gone = "stop"` (the default): its program is killed, the endpoint's worker is free for
//! the next request, and it is counted as `client_gone`. Under `"finish"` it runs to its end.
//! Each run is a real `sleep` child, found in /proc by a marker argument.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use support::{request, wait_until, TestServer};
use tokio::io::AsyncWriteExt;

/// A crab endpoint that sleeps for the seconds in its query string, or prints `done` without one.
fn config(on_client_gone: &str) -> String {
    format!(
        r#"[[endpoint]]
path = "/sleep"
mode = "crab"
on_client_gone = "{on_client_gone}"
[endpoint.exec]
command = ["sh", "-c", "case \"$QUERY_STRING\" in '') echo done;; *) exec sleep \"$QUERY_STRING\";; esac"]
timeout_ms = 60000
"#
    )
}

/// True if a `sleep MARKER` process is alive (not a zombie).
fn sleeping(marker: &str) -> bool {
    let wanted = format!("sleep\0{marker}\0");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|entry| {
        let path = entry.path();
        let cmdline = std::fs::read(path.join("cmdline")).unwrap_or_default();
        if !cmdline.starts_with(wanted.as_bytes()) {
            return false;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // The state follows the parenthesised name: a zombie has finished.
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z'))
    })
}

/// A marker unique to this test process and case: a sleep length no other test uses.
fn marker(case: u32) -> String {
    format!("{}.{}{case}", 30, std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_client_that_closes_stops_its_running_job_and_frees_the_worker() {
    let server = TestServer::start(&config("stop")).await;
    let marker = marker(1);
    let mut stream = server
        .client()
        .open_raw(format!("GET /sleep?{marker} HTTP/1.1\r\nHost: fiddler.test\r\n\r\n").as_bytes())
        .await;
    wait_until("the job's sleep runs", || sleeping(&marker)).await;
    stream.shutdown().await.unwrap();
    drop(stream);

    wait_until("the sleep is killed", || !sleeping(&marker)).await;
    wait_until("the job is counted as client_gone", || {
        server.counters("/sleep").client_gone == 1
    })
    .await;
    // The crab worker is free: the next request runs now, not after the 30 s sleep.
    let reply = server.get("/sleep").await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "done\n".into())
    );
    let counters = server.counters("/sleep");
    assert_eq!(
        (counters.admitted, counters.completed, counters.client_gone),
        (2, 1, 1)
    );
    assert_eq!(counters.answered(), counters.admitted, "{counters:?}");
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains(
            "fiddler_crab_requests_client_gone_total{endpoint=\"/sleep\",mode=\"crab\"} 1"
        ),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_reset_stops_its_running_job() {
    let server = TestServer::start(&config("stop")).await;
    let marker = marker(2);
    let h2 = server.client().connect_h2().await;
    let pending = h2.spawn(request("GET", &format!("/sleep?{marker}"), ""));
    wait_until("the job's sleep runs", || sleeping(&marker)).await;
    // Dropping the client's response future resets the stream.
    pending.abort();
    wait_until("the sleep is killed", || !sleeping(&marker)).await;
    wait_until("the job is counted as client_gone", || {
        server.counters("/sleep").client_gone == 1
    })
    .await;
    // The same connection goes on.
    let reply = h2.send(request("GET", "/sleep", "")).await;
    assert_eq!(reply.text(), "done\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_on_client_gone_finish_the_job_runs_to_its_end() {
    let server = TestServer::start(&config("finish")).await;
    // A short sleep with a marker of its own.
    let marker = format!("1.{}3", std::process::id());
    let stream = server
        .client()
        .open_raw(format!("GET /sleep?{marker} HTTP/1.1\r\nHost: fiddler.test\r\n\r\n").as_bytes())
        .await;
    wait_until("the job's sleep runs", || sleeping(&marker)).await;
    drop(stream);
    wait_until("the job completes", || {
        server.counters("/sleep").completed == 1
    })
    .await;
    let counters = server.counters("/sleep");
    assert_eq!(
        (counters.admitted, counters.client_gone),
        (1, 0),
        "{counters:?}"
    );
    server.shutdown().await;
}
