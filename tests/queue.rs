//! What happens to a job while it waits in the handoff queue: it expires at `queue_timeout_ms`
//! (the front end answers 504 and the job never runs), or its client leaves (the job is skipped).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::time::Duration;
use support::{held_job, job, raw_post, registry, Recorder, TestServer};

const WORK: &str = r#"
[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 4
queue_timeout_ms = 300
expected_wait_admission = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_still_queued_at_its_deadline_gets_504_and_never_runs() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;

    let late = client.send(job("/work", "late")).await;
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(late.text().contains("queue_timeout_ms"), "{late:?}");
    assert_eq!(server.counters("/work").timed_out, 1);

    recorder.gate().release();
    let held = held.await.unwrap();
    assert_eq!((held.status, held.text()), (StatusCode::OK, "held".into()));
    server.wait_queued("/work", 0).await;

    let after = client.send(job("/work", "after")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(recorder.ids(), ["held", "after"], "the expired job ran");

    let counters = server.counters("/work");
    assert_eq!(
        (counters.admitted, counters.completed, counters.timed_out),
        (3, 2, 1)
    );
    assert_eq!(counters.answered(), counters.admitted);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_client_left_before_its_turn_is_skipped() {
    let recorder = Recorder::new(Duration::ZERO);
    let toml = WORK.replace("queue_timeout_ms = 300", "queue_timeout_ms = 30000");
    let server = TestServer::start_with(&toml, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    server.wait_open_connections(1).await;

    let leaving = client.open_raw(&raw_post("/work")).await;
    server.wait_queued("/work", 1).await;
    drop(leaving);
    server.wait_open_connections(1).await;

    recorder.gate().release();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    server.wait_queued("/work", 0).await;
    support::wait_until("the queued job is skipped", || {
        server.counters("/work").skipped == 1
    })
    .await;

    let after = client.send(job("/work", "after")).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(recorder.ids(), ["held", "after"], "the abandoned job ran");
    let counters = server.counters("/work");
    assert_eq!(
        (counters.admitted, counters.completed, counters.skipped),
        (3, 2, 1)
    );
    server.shutdown().await;
}
