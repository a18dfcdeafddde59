//! Requests the server refuses before queuing: overflow when the queue is full (`ignore` closes
//! the connection without a byte, `reject` answers 503 with `Retry-After`), and bodies over
//! `max_body_bytes` (413, declared or chunked).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use std::time::Duration;
use support::{held_job, job, raw_post, registry, Recorder, TestServer};

fn config(overflow: &str) -> String {
    format!(
        r#"
[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 2
overflow = "{overflow}"
expected_wait_admission = false
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignore_overflow_closes_the_connection_without_a_byte() {
    let recorder = Recorder::new(Duration::ZERO);
    let server =
        TestServer::start_with(&config("ignore"), &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let mut queued = Vec::new();
    for i in 0..2 {
        queued.push(client.spawn(job("/work", &format!("queued-{i}"))));
        server.wait_queued("/work", i + 1).await;
    }

    let answer = server.raw(&raw_post("/work")).await;
    assert!(
        answer.is_empty(),
        "ignored overflow sent {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        client.try_send(job("/work", "also-ignored")).await.is_err(),
        "a hyper client got an answer to an ignored request"
    );
    let counters = server.counters("/work");
    assert_eq!((counters.overflowed, counters.admitted), (2, 3));

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    for reply in queued {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(recorder.ids(), ["held", "queued-0", "queued-1"]);
    assert_eq!(server.post("/work", "").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_overflow_answers_503_with_retry_after_at_once() {
    let recorder = Recorder::new(Duration::ZERO);
    let server =
        TestServer::start_with(&config("reject"), &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued: Vec<_> = (0..2)
        .map(|i| client.spawn(job("/work", &format!("queued-{i}"))))
        .collect();
    server.wait_queued("/work", 2).await;

    let rejected = client.send(job("/work", "rejected")).await;
    assert_eq!(rejected.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = rejected
        .header("retry-after")
        .expect("a Retry-After header")
        .parse()
        .expect("Retry-After in seconds");
    assert!(retry_after >= 1);
    assert_eq!(server.counters("/work").overflowed, 1);

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    for reply in queued {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    assert!(!recorder.ids().contains(&"rejected".to_string()));
    let counters = server.counters("/work");
    assert_eq!((counters.admitted, counters.completed), (3, 3));
    server.shutdown().await;
}

const SMALL_BODIES: &str = r#"
[[endpoint]]
path = "/work"
builtin = "recorder"
max_body_bytes = 1000
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_body_over_the_limit_gets_413_and_is_never_queued() {
    let recorder = Recorder::new(Duration::ZERO);
    let server =
        TestServer::start_with(SMALL_BODIES, &registry("recorder", recorder.clone())).await;

    let too_big = server.post("/work", vec![b'x'; 1001]).await;
    assert_eq!(too_big.status, StatusCode::PAYLOAD_TOO_LARGE);
    let at_limit = server.post("/work", vec![b'x'; 1000]).await;
    assert_eq!(at_limit.status, StatusCode::OK);

    assert_eq!(recorder.runs().len(), 1);
    assert_eq!(server.counters("/work").admitted, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413_and_is_never_queued() {
    let recorder = Recorder::new(Duration::ZERO);
    let server =
        TestServer::start_with(SMALL_BODIES, &registry("recorder", recorder.clone())).await;

    let chunk = "x".repeat(600);
    let request = format!(
        "POST /work HTTP/1.1\r\nHost: fiddler.test\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let answer = String::from_utf8_lossy(&server.raw(request.as_bytes()).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "got {answer:?}");

    let small = format!(
        "POST /work HTTP/1.1\r\nHost: fiddler.test\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let answer = String::from_utf8_lossy(&server.raw(small.as_bytes()).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "got {answer:?}");

    assert_eq!(recorder.runs().len(), 1);
    assert_eq!(server.counters("/work").admitted, 1);
    server.shutdown().await;
}
