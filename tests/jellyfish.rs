//! Jellyfish mode: a handed-off batch runs on a bounded pool, concurrently but never more than
//! `workers` jobs at once; every job is answered exactly once and the counters add up; a handler
//! panic is answered 500 and the pool keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use support::{held_job, job, panicking_job, registry, wait_until, within, Recorder, TestServer};

const WORKERS: usize = 3;

fn config(queue: usize) -> String {
    format!(
        r#"
[[endpoint]]
path = "/work"
mode = "jellyfish"
workers = {WORKERS}
builtin = "recorder"
queue = {queue}
expected_wait_admission = false
"#
    )
}

async fn start(recorder: &Arc<Recorder>, queue: usize) -> TestServer {
    TestServer::launch(&config(queue))
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_concurrently_never_more_than_workers_and_a_long_one_holds_only_its_own_worker() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, 16).await;
    let client = server.client();
    let gate = recorder.gate();

    // A long job holds one worker, and only that one: a job that comes while it runs is taken
    // in the next batch and runs at once on another worker, instead of waiting for the long
    // one's batch to end.
    let blocker = client.spawn(held_job("/work", "blocker"));
    gate.wait_arrived(1).await;
    let quick = within("the quick job", client.spawn(job("/work", "quick")))
        .await
        .unwrap();
    assert_eq!(
        (quick.status, quick.text()),
        (StatusCode::OK, "quick".into())
    );
    assert_eq!(recorder.active(), 1, "the long job still runs");

    let batch: Vec<_> = (0..8)
        .map(|i| {
            let id = format!("job-{i}");
            (id.clone(), client.spawn(held_job("/work", &id)))
        })
        .collect();
    // The pool fills up to its size, the long job counted in, and no further.
    gate.wait_arrived(WORKERS).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.arrived().len(),
        WORKERS,
        "more jobs started than workers"
    );
    assert_eq!(recorder.active(), WORKERS);
    assert_eq!(server.status_of("/work").running, WORKERS);
    // Each finished job frees exactly one slot for the next one.
    for k in 1..=9 - WORKERS {
        gate.release();
        gate.wait_arrived(WORKERS + k).await;
        assert!(
            recorder.max_active() <= WORKERS,
            "{} jobs ran at once",
            recorder.max_active()
        );
    }
    gate.open();

    assert_eq!(blocker.await.unwrap().status, StatusCode::OK);
    for (id, reply) in batch {
        let reply = reply.await.unwrap();
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, id));
    }
    assert_eq!(recorder.max_active(), WORKERS);
    let ids = recorder.ids();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        (ids.len(), unique.len()),
        (10, 10),
        "a job ran twice: {ids:?}"
    );

    let c = server.counters("/work");
    assert_eq!((c.admitted, c.completed, c.answered()), (10, 10, 10));
    assert_eq!((c.failed, c.overflowed, c.panics), (0, 0, 0));
    let status = server.status_json().await;
    let work = &status["endpoints"]["/work"];
    assert_eq!(work["mode"], "jellyfish");
    assert_eq!(work["concurrency"], WORKERS);
    assert_eq!(work["executor"]["workers"], WORKERS);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_of_a_burst_is_answered_exactly_once_and_the_counters_add_up() {
    let recorder = Recorder::new(Duration::from_millis(5));
    let server = start(&recorder, 64).await;
    let client = server.client();

    let burst: Vec<_> = (0..40)
        .map(|i| {
            let id = format!("burst-{i}");
            (id.clone(), client.spawn(job("/work", &id)))
        })
        .collect();
    for (id, reply) in burst {
        let reply = reply.await.unwrap();
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, id));
    }

    let mut ids = recorder.ids();
    ids.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("burst-{i}")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every job runs exactly once");
    assert!(
        recorder.max_active() <= WORKERS,
        "{}",
        recorder.max_active()
    );
    let c = server.counters("/work");
    assert_eq!((c.admitted, c.completed, c.answered()), (40, 40, 40));
    wait_until("the pool is idle", || {
        server.status_of("/work").running == 0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_is_answered_500_and_the_pool_keeps_serving() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, 16).await;
    let client = server.client();

    // Panicking and ordinary jobs, sent together.
    let mixed: Vec<_> = (0..6)
        .map(|i| {
            let id = format!("mixed-{i}");
            let req = if i % 2 == 0 {
                panicking_job("/work", &id)
            } else {
                job("/work", &id)
            };
            (i, id, client.spawn(req))
        })
        .collect();
    for (i, id, reply) in mixed {
        let reply = reply.await.unwrap();
        if i % 2 == 0 {
            assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{id}");
        } else {
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, id));
        }
    }

    // The pool still serves a full batch afterwards.
    let after: Vec<_> = (0..6)
        .map(|i| client.spawn(job("/work", &format!("after-{i}"))))
        .collect();
    for reply in after {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }

    let c = server.counters("/work");
    assert_eq!((c.admitted, c.completed, c.failed, c.panics), (12, 9, 3, 3));
    assert_eq!(c.answered(), c.admitted);
    let status = server.status_json().await;
    let work = &status["endpoints"]["/work"];
    assert_eq!(
        work["restarts"], 0,
        "a handler panic restarted the dispatcher"
    );
    assert_eq!(
        work["executor"]["worker_restarts"], 0,
        "a handler panic killed a worker"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_expected_wait_counts_the_running_jobs_as_ending_one_by_one() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, 16).await;
    let client = server.client();
    let gate = recorder.gate();
    let mut held: Vec<_> = (0..WORKERS - 1)
        .map(|i| client.spawn(held_job("/work", &format!("held-{i}"))))
        .collect();
    gate.wait_arrived(WORKERS - 1).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    // A worker is free: a new job would start at once.
    assert_eq!(server.status_of("/work").expected_wait_ms, 0.0);
    // Every worker busy: a new job starts when the first of them ends, a third of a job time
    // on average, not when all have.
    held.push(client.spawn(held_job("/work", "last")));
    gate.wait_arrived(WORKERS).await;
    let status = server.status_of("/work");
    let job = status.job_time_ms.unwrap();
    assert!(
        status.expected_wait_ms > 0.0 && status.expected_wait_ms <= job / WORKERS as f64 + 1.0,
        "expected wait {} ms for a job time of {job} ms",
        status.expected_wait_ms
    );
    gate.open();
    for reply in held {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    server.shutdown().await;
}
