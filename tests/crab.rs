//! Crab mode: one job at a time, in admission order, with `pace_ms` between the end of one job
//! and the start of the next; a panicking handler is answered 500 and the crab carries on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use support::{held_job, job, registry, Panicker, Recorder, Run, TestServer};

const WORK: &str = r#"
[[endpoint]]
path = "/work"
mode = "crab"
builtin = "recorder"
queue = 16
expected_wait_admission = false
"#;

/// No run starts before the previous one ended.
fn assert_serial(runs: &[Run]) {
    for pair in runs.windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "{} and {} overlapped",
            pair[0].id,
            pair[1].id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_one_at_a_time_in_admission_order() {
    let recorder = Recorder::new(Duration::from_millis(10));
    let server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let first = client.spawn(held_job("/work", "first"));
    recorder.gate().wait_arrived(1).await;
    let mut queued = Vec::new();
    for i in 0..6 {
        let id = format!("job-{i}");
        queued.push((id.clone(), client.spawn(job("/work", &id))));
        server.wait_queued("/work", i + 1).await;
    }
    recorder.gate().release();

    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    for (id, reply) in queued {
        let reply = reply.await.unwrap();
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, id));
    }
    let runs = recorder.runs();
    let expected: Vec<String> = std::iter::once("first".to_string())
        .chain((0..6).map(|i| format!("job-{i}")))
        .collect();
    assert_eq!(recorder.ids(), expected, "runs out of admission order");
    assert_serial(&runs);
    assert_eq!(recorder.max_active(), 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_concurrent_clients_is_served_one_job_at_a_time() {
    let recorder = Recorder::new(Duration::from_millis(5));
    let server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let burst: Vec<_> = (0..12)
        .map(|i| client.spawn(job("/work", &format!("burst-{i}"))))
        .collect();
    for reply in burst {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }

    assert_eq!(recorder.runs().len(), 12);
    assert_serial(&recorder.runs());
    assert_eq!(recorder.max_active(), 1);
    let counters = server.counters("/work");
    assert_eq!((counters.admitted, counters.completed), (12, 12));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pace_separates_the_end_of_one_job_from_the_start_of_the_next() {
    let pace = Duration::from_millis(150);
    let recorder = Recorder::new(Duration::ZERO);
    let toml = format!("{WORK}pace_ms = {}\n", pace.as_millis());
    let server = TestServer::start_with(&toml, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    // Queued behind a held job: paced within one handed-off batch.
    let first = client.spawn(held_job("/work", "first"));
    recorder.gate().wait_arrived(1).await;
    let second = client.spawn(job("/work", "second"));
    server.wait_queued("/work", 1).await;
    let third = client.spawn(job("/work", "third"));
    server.wait_queued("/work", 2).await;
    recorder.gate().release();
    for reply in [first, second, third] {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    // Sent after the queue emptied: paced across batches too.
    assert_eq!(
        client.send(job("/work", "fourth")).await.status,
        StatusCode::OK
    );

    let runs = recorder.runs();
    assert_eq!(recorder.ids(), ["first", "second", "third", "fourth"]);
    for pair in runs.windows(2) {
        let gap = pair[1].start.saturating_duration_since(pair[0].end);
        assert!(
            gap >= pace,
            "{} started {gap:?} after {} ended; pace is {pace:?}",
            pair[1].id,
            pair[0].id
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_is_answered_500_and_the_crab_carries_on() {
    let toml = r#"
[[endpoint]]
path = "/fragile"
builtin = "panicker"
"#;
    let server = TestServer::start_with(toml, &registry("panicker", Arc::new(Panicker))).await;

    let crashed = server.post("/fragile", "panic").await;
    assert_eq!(crashed.status, StatusCode::INTERNAL_SERVER_ERROR);
    let next = server.post("/fragile", "calm").await;
    assert_eq!((next.status, next.text()), (StatusCode::OK, "fine".into()));
    let again = server.post("/fragile", "panic").await;
    assert_eq!(again.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(server.post("/fragile", "calm").await.status, StatusCode::OK);

    let counters = server.counters("/fragile");
    assert_eq!(
        (counters.completed, counters.failed, counters.panics),
        (2, 2, 2)
    );
    let status = server.status_json().await;
    let fragile = &status["endpoints"]["/fragile"];
    assert_eq!(fragile["counters"]["panics"], 2);
    assert_eq!(
        fragile["restarts"], 0,
        "a handler panic restarted the dispatcher"
    );
    server.shutdown().await;
}
