//! The queued path of an upstream endpoint: requests that find every running slot taken wait in
//! the endpoint's line, each on its own connection's task, and are handed a slot as one frees,
//! with every promise of the queue: never more than `workers` at the upstream, first come first
//! served, a full queue refused at once, a client that leaves before its turn skipped and
//! counted, `queue_timeout_ms` answered `504`, shutdown answered `503`, and counters that add up.
//! The fake upstream holds each request on a gate the test opens; nothing waits on a wall clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use support::{request, wait_until, within, Reply, TestServer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A fake upstream that records each request's `x-i` in arrival order, counts requests in
/// flight, and holds every request until the test opens its gate.
struct Fake {
    seen: Arc<Mutex<Vec<String>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Fake {
    async fn start() -> (Fake, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let in_flight: Arc<AtomicUsize> = Arc::default();
        let max_in_flight: Arc<AtomicUsize> = Arc::default();
        let gate = watch::channel(false).0;
        let fake_parts = (
            seen.clone(),
            in_flight.clone(),
            max_in_flight.clone(),
            gate.clone(),
        );
        let max = max_in_flight;
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, in_flight, max, gate) =
                    (seen.clone(), in_flight.clone(), max.clone(), gate.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, in_flight, max) = (seen.clone(), in_flight.clone(), max.clone());
                    let mut gate = gate.subscribe();
                    async move {
                        let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        max.fetch_max(now, Ordering::SeqCst);
                        let i = req
                            .headers()
                            .get("x-i")
                            .map(|v| v.to_str().unwrap().to_string())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(i.clone());
                        let _ = req.into_body().collect().await;
                        let _ = gate.wait_for(|open| *open).await;
                        in_flight.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, hyper::Error>(
                            Response::builder()
                                .status(StatusCode::CREATED)
                                .body(Full::new(Bytes::from(format!("answer {i}"))))
                                .unwrap(),
                        )
                    }
                });
                connections.spawn(async move {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let (seen, in_flight, max_in_flight, gate) = fake_parts;
        let fake = Fake {
            seen,
            in_flight,
            max_in_flight,
            gate,
            task,
        };
        (fake, addr)
    }

    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Hold every request from now on again.
    fn close_gate(&self) {
        self.gate.send_replace(false);
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A jellyfish upstream endpoint `/u` with `workers` slots and a queue of `queue`, plus `extra`
/// endpoint lines.
fn config(addr: SocketAddr, workers: usize, queue: usize, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"/u\"\nmode = \"jellyfish\"\nworkers = {workers}\nqueue = {queue}\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n{extra}\n\
         [endpoint.upstream]\nurl = \"http://{addr}\"\n"
    )
}

/// Send `GET /u` with `x-i: i` from a task of its own.
fn spawn_get(server: &TestServer, i: usize) -> JoinHandle<Reply> {
    let mut req = request("GET", "/u", "");
    req.headers_mut()
        .insert("x-i", i.to_string().parse().unwrap());
    server.client().spawn(req)
}

#[tokio::test]
async fn twenty_clients_on_two_slots_all_run_on_their_own_tasks_never_more_than_two_at_the_upstream(
) {
    let (fake, addr) = Fake::start().await;
    let server = TestServer::start(&config(addr, 2, 64, "")).await;
    let replies: Vec<_> = (0..20).map(|i| spawn_get(&server, i)).collect();
    wait_until("2 requests at the upstream", || fake.in_flight() == 2).await;
    server.wait_queued("/u", 18).await;
    let status = server.status_of("/u");
    assert_eq!((status.running, status.queue_depth), (2, 18));
    fake.open_gate();
    for reply in replies {
        let reply = within("a reply", reply).await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(fake.seen().len(), 20);
    let counters = server.counters("/u");
    assert_eq!(counters.admitted, 20);
    assert_eq!(
        counters.async_runs, 20,
        "the 18 queued ones ran on their own tasks too"
    );
    assert_eq!(counters.completed, 20);
    assert_eq!(counters.answered(), counters.admitted);
    let status = server.status_of("/u");
    assert_eq!((status.running, status.queue_depth), (0, 0));
    server.shutdown().await;
}

#[tokio::test]
async fn with_one_slot_queued_requests_reach_the_upstream_in_the_order_they_came() {
    let (fake, addr) = Fake::start().await;
    let server = TestServer::start(&config(addr, 1, 64, "")).await;
    let mut replies = vec![spawn_get(&server, 0)];
    wait_until("the first request at the upstream", || {
        fake.in_flight() == 1
    })
    .await;
    for i in 1..8 {
        replies.push(spawn_get(&server, i));
        server.wait_queued("/u", i).await;
    }
    fake.open_gate();
    for (i, reply) in replies.into_iter().enumerate() {
        let reply = within("a reply", reply).await.unwrap();
        assert_eq!(reply.text(), format!("answer {i}"));
    }
    let order: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    assert_eq!(fake.seen(), order);
    assert_eq!(fake.max_in_flight.load(Ordering::SeqCst), 1);
    server.shutdown().await;
}

#[tokio::test]
async fn a_full_queue_refuses_the_next_request_at_once_with_503() {
    let (fake, addr) = Fake::start().await;
    let server = TestServer::start(&config(addr, 2, 3, "")).await;
    let replies: Vec<_> = (0..5).map(|i| spawn_get(&server, i)).collect();
    wait_until("2 requests at the upstream", || fake.in_flight() == 2).await;
    server.wait_queued("/u", 3).await;
    let refused = server.get("/u").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.text(), "queue full, retry later\n");
    assert!(refused.header("retry-after").is_some());
    fake.open_gate();
    for reply in replies {
        assert_eq!(
            within("a reply", reply).await.unwrap().status,
            StatusCode::CREATED
        );
    }
    let counters = server.counters("/u");
    assert_eq!((counters.admitted, counters.overflowed), (5, 1));
    assert_eq!(counters.completed, 5);
    assert_eq!(counters.answered(), counters.admitted);
    server.shutdown().await;
}

#[tokio::test]
async fn a_queued_request_whose_client_leaves_is_skipped_counted_and_never_sent() {
    let (fake, addr) = Fake::start().await;
    let server = TestServer::start(&config(addr, 1, 8, "")).await;
    let first = spawn_get(&server, 0);
    wait_until("the first request at the upstream", || {
        fake.in_flight() == 1
    })
    .await;
    let leaving = server
        .client()
        .open_raw(b"GET /u HTTP/1.1\r\nHost: fiddler.test\r\nX-I: gone\r\n\r\n")
        .await;
    server.wait_queued("/u", 1).await;
    let staying = spawn_get(&server, 2);
    server.wait_queued("/u", 2).await;
    drop(leaving);
    wait_until("the leaving request skipped", || {
        server.counters("/u").skipped == 1
    })
    .await;
    server.wait_queued("/u", 1).await;
    fake.open_gate();
    assert_eq!(
        within("the first reply", first).await.unwrap().text(),
        "answer 0"
    );
    assert_eq!(
        within("the staying reply", staying).await.unwrap().text(),
        "answer 2"
    );
    assert_eq!(
        fake.seen(),
        ["0", "2"],
        "the leaver never reached the upstream"
    );
    let counters = server.counters("/u");
    assert_eq!(
        (counters.admitted, counters.completed, counters.skipped),
        (3, 2, 1)
    );
    assert_eq!(counters.answered(), counters.admitted);
    assert_eq!(server.status_of("/u").running, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_request_still_queued_at_queue_timeout_is_answered_504_and_frees_its_place() {
    let (fake, addr) = Fake::start().await;
    let server = TestServer::start(&config(addr, 1, 8, "queue_timeout_ms = 200")).await;
    let first = spawn_get(&server, 0);
    wait_until("the first request at the upstream", || {
        fake.in_flight() == 1
    })
    .await;
    let late = within("the queued reply", spawn_get(&server, 1))
        .await
        .unwrap();
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(late.text(), "waited in queue past queue_timeout_ms\n");
    assert_eq!(server.status_of("/u").queue_depth, 0);
    fake.open_gate();
    assert_eq!(
        within("the first reply", first).await.unwrap().status,
        StatusCode::CREATED
    );
    assert_eq!(fake.seen(), ["0"]);
    let counters = server.counters("/u");
    assert_eq!(
        (counters.admitted, counters.completed, counters.timed_out),
        (2, 1, 1)
    );
    assert_eq!(counters.answered(), counters.admitted);
    server.shutdown().await;
}

#[tokio::test]
async fn at_shutdown_a_queued_request_is_answered_503_at_once_and_the_running_one_finishes() {
    let (fake, addr) = Fake::start().await;
    let mut server = TestServer::start(&config(addr, 1, 8, "")).await;
    let first = spawn_get(&server, 0);
    wait_until("the first request at the upstream", || {
        fake.in_flight() == 1
    })
    .await;
    let queued = spawn_get(&server, 1);
    server.wait_queued("/u", 1).await;
    let endpoint = server.endpoint("/u");
    server.begin_shutdown();
    let shed = within("the queued reply", queued).await.unwrap();
    assert_eq!(shed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.text(), "server shutting down\n");
    fake.open_gate();
    assert_eq!(
        within("the first reply", first).await.unwrap().status,
        StatusCode::CREATED
    );
    server.join().await;
    assert_eq!(fake.seen(), ["0"]);
    let counters = endpoint.counters();
    assert_eq!(
        (counters.admitted, counters.completed, counters.failed),
        (2, 1, 1)
    );
    assert_eq!(counters.answered(), counters.admitted);
}

/// An endpoint of `workers` slots with expected-wait admission and a 300 ms queue timeout, whose
/// first request has been at the upstream (held at the gate) for `ms` milliseconds.
async fn one_long_job(workers: usize, ms: u64) -> (Fake, TestServer, JoinHandle<Reply>) {
    let (fake, addr) = Fake::start().await;
    let config = config(addr, workers, 8, "queue_timeout_ms = 300").replace(
        "expected_wait_admission = false",
        "expected_wait_admission = true",
    );
    let server = TestServer::start(&config).await;
    let first = spawn_get(&server, 0);
    wait_until("the first request at the upstream", || {
        fake.in_flight() == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    (fake, server, first)
}

#[tokio::test]
async fn expected_wait_admission_admits_while_a_slot_is_free_and_sheds_once_the_line_is_too_long() {
    // Two slots, jobs that outlast `queue_timeout_ms`. A request that finds a slot free starts
    // at once, so it is admitted however long the running job may take; the first request that
    // would have to wait for a running job to end is shed, with its Retry-After.
    // One job that takes more than twice the queue timeout sets the job time.
    let (fake, server, first) = one_long_job(2, 700).await;
    fake.open_gate();
    assert_eq!(
        within("the first reply", first).await.unwrap().status,
        StatusCode::CREATED
    );
    fake.close_gate();
    let second = spawn_get(&server, 1);
    wait_until("the second request at the upstream", || {
        fake.in_flight() == 1
    })
    .await;
    assert_eq!(
        server.status_of("/u").expected_wait_ms,
        0.0,
        "a slot is free: no wait expected"
    );
    let third = spawn_get(&server, 2);
    wait_until("the third request at the upstream", || {
        fake.in_flight() == 2
    })
    .await;
    assert!(server.status_of("/u").expected_wait_ms > 300.0);
    let fourth = within("the fourth reply", spawn_get(&server, 3))
        .await
        .unwrap();
    assert_eq!(fourth.status, StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = fourth.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    fake.open_gate();
    for (i, reply) in [(1, second), (2, third)] {
        let reply = within("a reply", reply).await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.text(), format!("answer {i}"));
    }
    assert_eq!(fake.seen(), ["0", "1", "2"]);
    let counters = server.counters("/u");
    assert_eq!(
        (
            counters.admitted,
            counters.completed,
            counters.overflowed,
            counters.shed_by_wait
        ),
        (3, 3, 1, 1)
    );
    assert_eq!(counters.answered(), counters.admitted);
    server.shutdown().await;
}

#[tokio::test]
async fn a_cold_upstream_endpoints_first_long_run_stands_in_for_the_job_time() {
    // No job has ended yet: the one running, past the queue timeout already, is the estimate,
    // so a request that could only wait behind it is shed instead of timing out in the line.
    let (fake, server, first) = one_long_job(1, 400).await;
    let second = within("the second reply", spawn_get(&server, 1))
        .await
        .unwrap();
    assert_eq!(second.status, StatusCode::SERVICE_UNAVAILABLE);
    fake.open_gate();
    assert_eq!(
        within("the first reply", first).await.unwrap().status,
        StatusCode::CREATED
    );
    let counters = server.counters("/u");
    assert_eq!(
        (counters.admitted, counters.completed, counters.shed_by_wait),
        (1, 1, 1)
    );
    server.shutdown().await;
}
