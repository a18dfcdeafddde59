//! The door on the public listener: while every queue is full and ignores overflow, the server
//! accepts no new connection work (a connection waits unanswered, the admin listener still answers
//! probes); when a queue has room again, the waiting connections are served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::time::Duration;
use support::{held_job, job, registry, wait_until, Recorder, TestServer};

const WORK: &str = r#"
[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 1
overflow = "ignore"
expected_wait_admission = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_door_closes_while_the_only_queue_is_full_and_reopens_when_it_has_room() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::launch(WORK)
        .registry(&registry("recorder", recorder.clone()))
        .admin()
        .start()
        .await;
    let client = server.client();
    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued = client.spawn(job("/work", "queued"));
    server.wait_queued("/work", 1).await;

    // A new connection is accepted by the kernel (and held at the door) and gets nothing.
    // (One only: the door lets a connection in when a queue has room, it reserves no slot, so
    // two let in together could race for one slot and one be ignored.)
    let mut waiting = client.spawn(job("/work", "waiting"));
    wait_until("the door closed", || {
        server.app.door().snapshot().closed >= 1
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(200), &mut waiting)
            .await
            .is_err(),
        "a connection got an answer while the door was closed"
    );
    // Probes on the admin listener are answered all the while.
    assert_eq!(
        server.admin_client().get("/healthz").await.status,
        StatusCode::OK
    );
    let metrics = server.admin_client().get("/metrics").await.text();
    assert!(
        metrics.contains("fiddler_crab_door_closed_total "),
        "{metrics}"
    );
    // Nothing reached admission while the door was closed: no overflow.
    assert_eq!(server.counters("/work").overflowed, 0);

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
    let counters = server.counters("/work");
    assert_eq!((counters.admitted, counters.completed), (3, 3));
    assert_eq!(counters.overflowed, 0);
    let door = server.app.door().snapshot();
    assert!(door.closed >= 1 && door.closed_micros > 0, "{door:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_admin_listener_the_door_stays_open_and_ignore_still_closes() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();
    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued = client.spawn(job("/work", "queued"));
    server.wait_queued("/work", 1).await;
    // The probes share this listener: the door must not shut them out.
    assert_eq!(server.get("/healthz").await.status, StatusCode::OK);
    assert!(client.try_send(job("/work", "ignored")).await.is_err());
    assert_eq!(server.counters("/work").overflowed, 1);
    assert_eq!(server.app.door().snapshot().closed, 0);
    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    assert_eq!(queued.await.unwrap().status, StatusCode::OK);
    server.shutdown().await;
}
