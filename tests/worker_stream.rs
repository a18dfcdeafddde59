//! Worker endpoints stream an answer without a length (a `fiddler_worker` generator, server-sent
//! events) to the client as the worker writes it: chunk 1 arrives before the test lets the worker
//! produce chunk 2; a client gone mid-stream closes the worker connection and the same worker
//! serves the next request; a worker pausing past `stream_idle_timeout_ms` cuts the stream short
//! and is replaced. Order is proven with a FIFO the test writes to, never a clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use hyper::StatusCode;
use light::{Light, TrafficLight};
use support::{make_fifo, next_chunk, release_fifo, request, wait_until, TempDir, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A server with one worker endpoint at `/s` serving the stream fixture, plus `worker` lines.
async fn start(worker: &str) -> TestServer {
    let toml = format!(
        "[[endpoint]]\npath = \"/s\"\nexpected_wait_admission = false\n\
         [endpoint.worker]\ncommand = ['python3', '-m', 'fiddler_worker', \
         '{ROOT}/tests/fixtures/workers/stream_app.py']\nenv = {{ PYTHONPATH = '{ROOT}/python' }}\n\
         {worker}\n"
    );
    TestServer::launch(&toml)
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

async fn pid(server: &TestServer) -> u64 {
    let reply = server.get("/s?pid=1").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    json["pid"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_from_a_generator_reach_the_client_one_by_one() {
    let dir = TempDir::new("worker-sse");
    // One FIFO per wait (`gate1`, `gate2`): see `release_fifo`.
    let gates = [make_fifo(&dir, "gate1"), make_fifo(&dir, "gate2")];
    let server = start("").await;
    let worker = pid(&server).await;
    let path = format!(
        "/s?n=3&format=sse&gate={}",
        dir.path().join("gate").display()
    );
    let resp = server
        .client()
        .open(request("GET", &path, Bytes::new()))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let mut text = String::new();
    let mut events = Vec::new();
    let mut gates = gates.iter();
    for n in 0..3 {
        // Event n arrives while the generator waits at the FIFO for the test.
        while !text.contains("\n\n") {
            let chunk = next_chunk(&mut body).await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let (event, rest) = text.split_once("\n\n").unwrap();
        for line in event.lines() {
            events.push(line.strip_prefix("data: ").unwrap().to_string());
        }
        text = rest.to_string();
        assert_eq!(events.len(), n + 1, "{events:?}");
        // Events 1 and 2 each wait at their own gate.
        if let Some(gate) = gates.next() {
            release_fifo(gate).await;
        }
    }
    assert_eq!(events, ["0", "1", "2"]);
    assert!(next_chunk(&mut body).await.is_none(), "a clean end");
    wait_until("the stream is counted", || {
        server.counters("/s").completed == 2
    })
    .await;
    assert_eq!(pid(&server).await, worker, "the same worker serves on");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_closes_the_worker_connection_and_the_worker_serves_on() {
    let dir = TempDir::new("worker-stream-gone");
    let gate = make_fifo(&dir, "gate1");
    let server = start("").await;
    let worker = pid(&server).await;
    // Two chunks: after the client leaves, the generator's one remaining chunk ends it whether or
    // not that write already fails (the first write into a connection the server closed can still
    // succeed locally before the peer's reset arrives; a third chunk would then wait at the FIFO).
    let path = format!("/s?n=2&gate={}", dir.path().join("gate").display());
    let resp = server
        .client()
        .open(request("GET", &path, Bytes::new()))
        .await;
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk 0\n");
    drop(body);
    wait_until("the stream is counted as client gone", || {
        server.counters("/s").client_gone == 1
    })
    .await;
    // The generator learns at its next write that nobody reads any more.
    release_fifo(&gate).await;
    assert_eq!(pid(&server).await, worker, "the same worker serves on");
    let c = server.counters("/s");
    assert_eq!((c.admitted, c.answered()), (3, 3));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_pausing_past_the_idle_timeout_cuts_the_stream_short_and_is_replaced() {
    let dir = TempDir::new("worker-stream-idle");
    // The FIFO chunk 1 waits at, never released.
    make_fifo(&dir, "gate1");
    let server = start("stream_idle_timeout_ms = 300").await;
    let worker = pid(&server).await;
    let path = format!("/s?n=3&gate={}", dir.path().join("gate").display());
    let resp = server
        .client()
        .open(request("GET", &path, Bytes::new()))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk 0\n");
    // The test never opens the gate: the worker pauses past the idle timeout.
    assert!(
        matches!(next_chunk(&mut body).await, Some(Err(_))),
        "a truncated body, not a clean end"
    );
    wait_until("the stream is counted as timed out", || {
        server.counters("/s").timed_out == 1
    })
    .await;
    let replacement = pid(&server).await;
    assert_ne!(replacement, worker, "the paused worker was replaced");
    server.shutdown().await;
}
