//! Admission by expected wait: once a job-time estimate exists, a request that would wait longer
//! than `queue_timeout_ms` ((queued + running jobs) ÷ concurrency × job time) is overflow at once,
//! with a `Retry-After` computed from the estimate, and counted in `shed_by_wait`. With
//! `expected_wait_admission = false` the same requests are admitted and time out 504 instead.
//! Before any job finished, the running one's elapsed time stands in for the estimate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use std::sync::Arc;
use std::time::Duration;
use support::{held_job, job, registry, wait_until, Recorder, TestServer};

/// What one ordinary job takes.
const JOB: Duration = Duration::from_millis(400);
const QUEUE_TIMEOUT_MS: u64 = 1000;

fn config(expected_wait_admission: bool) -> String {
    format!(
        r#"
[[endpoint]]
path = "/slow"
mode = "crab"
builtin = "recorder"
queue = 50
overflow = "reject"
queue_timeout_ms = {QUEUE_TIMEOUT_MS}
expected_wait_admission = {expected_wait_admission}
"#
    )
}

async fn start(recorder: &Arc<Recorder>, expected_wait_admission: bool) -> TestServer {
    TestServer::launch(&config(expected_wait_admission))
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

/// Run one ordinary job so the endpoint has a job-time estimate; return it in microseconds.
async fn warm_up(server: &TestServer) -> u64 {
    assert_eq!(server.status_of("/slow").job_time_ms, None);
    let reply = server.client().send(job("/slow", "warm-up")).await;
    assert_eq!(reply.status, StatusCode::OK);
    let ms = server
        .status_of("/slow")
        .job_time_ms
        .expect("a job-time estimate after the first job");
    assert!(ms >= JOB.as_secs_f64() * 1e3, "estimate {ms} ms");
    (ms * 1e3).round() as u64
}

/// How many requests a crab admits behind one running job before the expected wait of the next
/// one ((depth + 1 running) × job time) exceeds the queue timeout.
fn admitted_before_shedding(job_us: u64) -> usize {
    let timeout_us = QUEUE_TIMEOUT_MS * 1000;
    (0..)
        .take_while(|depth| (depth + 1) * job_us <= timeout_us)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_would_wait_past_the_queue_timeout_are_rejected_at_once() {
    let recorder = Recorder::new(JOB);
    let server = start(&recorder, true).await;
    let client = server.client();
    let job_us = warm_up(&server).await;
    let admitted = admitted_before_shedding(job_us);
    assert!(
        admitted >= 1,
        "a {job_us} µs job leaves room for {admitted}"
    );

    // Hold the crab: the estimate stays as it is, and the queue only grows.
    let blocker = client.spawn(held_job("/slow", "blocker"));
    recorder.gate().wait_arrived(1).await;
    let mut queued = Vec::new();
    for i in 0..admitted {
        queued.push(client.spawn(job("/slow", &format!("queued-{i}"))));
        server.wait_queued("/slow", i + 1).await;
    }
    let status = server.status_of("/slow");
    assert!(
        status.expected_wait_ms > QUEUE_TIMEOUT_MS as f64,
        "expected wait {} ms at depth {admitted}",
        status.expected_wait_ms
    );

    let shed = client.send(job("/slow", "shed")).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{shed:?}");
    let retry_after: u64 = shed
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    // The time for the jobs ahead of it (queued, and at most the one running) and itself to
    // drain by the estimate, in whole seconds.
    let secs = |jobs: u64| (job_us * jobs).div_ceil(1_000_000).max(1);
    let queued_and_self = secs(admitted as u64 + 1);
    let with_running = secs(admitted as u64 + 2);
    assert!(
        (queued_and_self..=with_running).contains(&retry_after),
        "Retry-After {retry_after}, estimate {job_us} µs × {admitted} queued + 1 running"
    );
    // Shed while the crab is still held: an immediate outcome, not a wait in the queue.
    assert_eq!(recorder.gate().arrived(), ["blocker"]);
    assert_eq!(server.status_of("/slow").queue_depth, admitted);
    let c = server.counters("/slow");
    assert_eq!((c.overflowed, c.shed_by_wait), (1, 1));
    assert_eq!(c.admitted, 2 + admitted as u64);

    let status = server.status_json().await;
    let counters = &status["endpoints"]["/slow"]["counters"];
    assert_eq!(counters["shed_by_wait"], 1);
    assert_eq!(
        status["endpoints"]["/slow"]["expected_wait_admission"],
        true
    );

    recorder.gate().open();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    for reply in queued {
        // Each ran, or waited past its deadline behind the held crab: either way, answered.
        let status = reply.await.unwrap().status;
        assert!(
            status == StatusCode::OK || status == StatusCode::GATEWAY_TIMEOUT,
            "{status}"
        );
    }
    wait_until("every admitted job has its outcome", || {
        let c = server.counters("/slow");
        c.answered() == c.admitted
    })
    .await;
    assert!(!recorder.ids().contains(&"shed".to_string()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_expected_wait_admission_they_are_admitted_and_time_out_504() {
    let recorder = Recorder::new(JOB);
    let server = start(&recorder, false).await;
    let client = server.client();
    let job_us = warm_up(&server).await;
    let beyond = admitted_before_shedding(job_us) + 2;

    let blocker = client.spawn(held_job("/slow", "blocker"));
    recorder.gate().wait_arrived(1).await;
    let mut queued = Vec::new();
    for i in 0..beyond {
        queued.push(client.spawn(job("/slow", &format!("queued-{i}"))));
        server.wait_queued("/slow", i + 1).await;
    }
    assert!(server.status_of("/slow").expected_wait_ms > QUEUE_TIMEOUT_MS as f64);

    // The crab stays held past every queued job's deadline.
    for reply in queued {
        assert_eq!(reply.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
    }
    let c = server.counters("/slow");
    assert_eq!((c.overflowed, c.shed_by_wait), (0, 0));
    assert_eq!(c.timed_out, beyond as u64);
    let status = server.status_json().await;
    assert_eq!(
        status["endpoints"]["/slow"]["expected_wait_admission"],
        false
    );

    recorder.gate().open();
    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    wait_until("the expired jobs are discarded", || {
        server.status_of("/slow").queue_depth == 0
    })
    .await;
    assert_eq!(recorder.ids(), ["warm-up", "blocker"], "an expired job ran");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_first_job_finishes_its_running_time_stands_in_for_the_estimate() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, true).await;
    let client = server.client();
    let status = server.status_of("/slow");
    assert_eq!((status.job_time_ms, status.expected_wait_ms), (None, 0.0));

    // A cold endpoint whose first job runs long: a request right away is admitted ...
    let first = client.spawn(held_job("/slow", "first"));
    recorder.gate().wait_arrived(1).await;
    let early = client.spawn(job("/slow", "early"));
    server.wait_queued("/slow", 1).await;
    // ... but once the first job has run longer than the queue timeout, nothing is.
    wait_until("the running job outlasts the queue timeout", || {
        server
            .status_of("/slow")
            .job_time_ms
            .is_some_and(|ms| ms > QUEUE_TIMEOUT_MS as f64)
    })
    .await;
    let shed = client.send(job("/slow", "shed")).await;
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE, "{shed:?}");
    assert!(shed.header("retry-after").is_some());
    let c = server.counters("/slow");
    assert_eq!((c.admitted, c.overflowed, c.shed_by_wait), (2, 1, 1));
    assert_eq!(early.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);

    recorder.gate().open();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(recorder.ids(), ["first"]);
    server.shutdown().await;
}
