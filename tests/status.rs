//! `GET /status`: answered by the front end while the executor is busy, and its counters add up:
//! admitted = completed + failed + timed_out + skipped, with overflow counted beside them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::time::Duration;
use support::{held_job, job, panicking_job, raw_post, registry, wait_until, Recorder, TestServer};

const WORK: &str = r#"
[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 2
overflow = "reject"
queue_timeout_ms = 1500
expected_wait_admission = false

[[endpoint]]
path = "/ping"
builtin = "ping"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_job_holds_the_crab() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued = client.spawn(job("/work", "queued"));
    server.wait_queued("/work", 1).await;

    let status = server.status_json().await;
    let work = &status["endpoints"]["/work"];
    assert_eq!(work["busy"], true);
    assert_eq!(work["running"], 1);
    assert_eq!(work["queue_depth"], 1);
    assert_eq!(work["queue_capacity"], 2);
    assert_eq!(work["mode"], "crab");
    assert_eq!(work["overflow"], "reject");
    assert_eq!(work["counters"]["admitted"], 2);
    assert_eq!(work["counters"]["completed"], 0);
    assert_eq!(status["endpoints"]["/ping"]["busy"], false);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_ms"].is_u64());
    // The two waiting clients and this status request.
    assert!(
        status["connections"]["open"].as_u64().unwrap() >= 3,
        "{status}"
    );
    assert_eq!(status["connections"]["max"], 1024);
    // Other endpoints are not stuck behind it either.
    assert_eq!(server.get("/ping").await.text(), "pong\n");

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
    wait_until("the crab is idle", || !server.status_of("/work").busy()).await;
    let status = server.status_json().await;
    assert_eq!(status["endpoints"]["/work"]["busy"], false);
    assert_eq!(status["endpoints"]["/work"]["counters"]["completed"], 2);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_add_up_after_a_mixed_run() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    // Completed, then failed by a panic.
    assert_eq!(client.send(job("/work", "ok")).await.status, StatusCode::OK);
    let crashed = client.send(panicking_job("/work", "crash")).await;
    assert_eq!(crashed.status, StatusCode::INTERNAL_SERVER_ERROR);

    // Hold the crab; queue one job whose client then leaves (skipped) ...
    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    server.wait_open_connections(1).await;
    let leaving = client.open_raw(&raw_post("/work")).await;
    server.wait_queued("/work", 1).await;
    drop(leaving);
    server.wait_open_connections(1).await;

    // ... and one that waits past queue_timeout_ms (timed out), which gives its queue slot back
    // at once. One more live job fills the queue again (the leaver still holds its slot until its
    // turn), so the next request is overflow.
    let late = client.send(job("/work", "late")).await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        server.status_of("/work").queue_depth,
        1,
        "the expired job left the queue"
    );
    let filler = client.spawn(job("/work", "filler"));
    server.wait_queued("/work", 2).await;
    let rejected = client.send(job("/work", "rejected")).await;
    assert_eq!(rejected.status, StatusCode::SERVICE_UNAVAILABLE);

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(filler.await.unwrap().status, StatusCode::OK);
    server.wait_queued("/work", 0).await;
    wait_until("every admitted job has its outcome", || {
        let c = server.counters("/work");
        c.answered() == c.admitted
    })
    .await;

    assert_eq!(recorder.ids(), ["ok", "held", "filler"]);
    let c = server.counters("/work");
    assert_eq!(
        (c.admitted, c.completed, c.failed, c.timed_out, c.skipped),
        (6, 3, 1, 1, 1)
    );
    assert_eq!((c.overflowed, c.panics), (1, 1));

    let status = server.status_json().await;
    let counters = &status["endpoints"]["/work"]["counters"];
    for (name, value) in [
        ("admitted", c.admitted),
        ("completed", c.completed),
        ("failed", c.failed),
        ("timed_out", c.timed_out),
        ("skipped", c.skipped),
        ("overflowed", c.overflowed),
        ("panics", c.panics),
    ] {
        assert_eq!(counters[name], value, "/status counter {name}");
    }
    server.shutdown().await;
}
