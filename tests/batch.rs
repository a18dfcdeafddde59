//! Dynamic batching on warm workers, with real worker processes: under concurrent load a
//! batch-capable app receives batches larger than 1 and never more than `max_batch`, and every
//! client gets its own answer; a failing item answers that item only; an item whose queue
//! deadline passes while its batch waits is answered 504 and never sent; a client gone before
//! the call is skipped; a worker that does not speak the batch format fails each item with 502
//! and keeps serving; and the counters add up.
//!
//! The app is `tests/fixtures/workers/batch_app.py`: it echoes each request's id with the size
//! of the call it came in, and lists every id it received in a file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use serde_json::Value;
use std::collections::BTreeSet;
use support::{request, wait_until, TempDir, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const PATH: &str = "/predict";

/// A server whose `/predict` runs `batch_app.py` with `endpoint` lines, writing what the app
/// received to `seen`.
async fn start(endpoint: &str, seen: &std::path::Path) -> TestServer {
    let toml = format!(
        "[[endpoint]]\npath = \"{PATH}\"\nmethods = [\"POST\"]\nexpected_wait_admission = false\n{endpoint}\n\
         [endpoint.worker]\ncommand = ['python3', '-m', 'fiddler_worker', '{ROOT}/tests/fixtures/workers/batch_app.py']\n\
         env = {{ PYTHONPATH = '{ROOT}/python', FIDDLER_TEST_SEEN = '{}' }}\n",
        seen.display()
    );
    let server = TestServer::launch(&toml)
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    wait_until("the workers are ready", || {
        server.endpoint(PATH).handler_ready().is_ok()
    })
    .await;
    server
}

/// The ids the app received, in order.
fn seen_ids(seen: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(seen)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect()
}

fn assert_counters_add_up(server: &TestServer) {
    let c = server.counters(PATH);
    assert_eq!(
        c.admitted,
        c.completed + c.failed + c.timed_out + c.skipped + c.client_gone,
        "{c:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_load_batches_are_larger_than_one_never_above_max_batch_and_every_client_gets_its_own_answer(
) {
    let dir = TempDir::new("batch-load");
    let seen = dir.path().join("seen");
    let server = start(
        "mode = \"jellyfish\"\nworkers = 2\nmax_batch = 8\nmax_batch_wait_ms = 2000",
        &seen,
    )
    .await;
    let client = server.client();
    // 48 clients at once: six full batches' worth, so no batch is left waiting for company.
    let clients: Vec<_> = (0..48)
        .map(|i| client.spawn(request("POST", PATH, format!("client-{i}"))))
        .collect();
    let mut sizes = Vec::new();
    let mut pids = BTreeSet::new();
    for (i, c) in clients.into_iter().enumerate() {
        let reply = c.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            v["id"],
            format!("client-{i}"),
            "each client gets its own answer"
        );
        sizes.push(v["batch"].as_u64().unwrap());
        pids.insert(v["pid"].as_u64().unwrap());
    }
    let largest = *sizes.iter().max().unwrap();
    assert!(largest > 1, "no batch formed: {sizes:?}");
    assert!(largest <= 8, "a batch above max_batch: {sizes:?}");
    // Every id reached the app exactly once.
    let mut ids = seen_ids(&seen);
    ids.sort();
    let mut want: Vec<String> = (0..48).map(|i| format!("client-{i}")).collect();
    want.sort();
    assert_eq!(ids, want);
    let status = server.status_of(PATH);
    let batch = status.batch.expect("a batching endpoint shows its batches");
    assert_eq!((batch.max_batch, batch.sizes.items), (8, 48));
    assert!(batch.sizes.largest <= 8 && batch.sizes.calls < 48);
    let c = server.counters(PATH);
    assert_eq!((c.admitted, c.completed), (48, 48));
    assert_counters_add_up(&server);
    // /metrics shows them too.
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains(
            "fiddler_crab_batch_items_total{endpoint=\"/predict\",mode=\"jellyfish\"} 48"
        ),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_item_answers_that_item_only() {
    let dir = TempDir::new("batch-fail");
    let seen = dir.path().join("seen");
    let server = start(
        "mode = \"crab\"\nmax_batch = 3\nmax_batch_wait_ms = 5000",
        &seen,
    )
    .await;
    let client = server.client();
    // The batch waits until all three are in (far less than its 5 s bound).
    let replies: Vec<_> = ["a", "fail", "c"]
        .iter()
        .map(|id| client.spawn(request("POST", PATH, *id)))
        .collect();
    let mut got = Vec::new();
    for r in replies {
        got.push(r.await.unwrap());
    }
    for (reply, id) in [(&got[0], "a"), (&got[2], "c")] {
        assert_eq!(reply.status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!((v["id"].as_str(), v["batch"].as_u64()), (Some(id), Some(3)));
    }
    assert_eq!(got[1].status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        got[1]
            .text()
            .starts_with("ValueError: item failed on purpose"),
        "{}",
        got[1].text()
    );
    // The app's 500 is its answer: completed, like any status the app chooses.
    let c = server.counters(PATH);
    assert_eq!((c.admitted, c.completed, c.failed), (3, 3, 0));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_whose_deadline_passes_while_its_batch_waits_is_504_unsent_and_a_gone_client_is_skipped(
) {
    let dir = TempDir::new("batch-deadline");
    let seen = dir.path().join("seen");
    let gate = dir.path().join("open");
    // One worker; a batch waits up to 250 ms to fill, a request at most 300 ms in the queue.
    let server = start(
        "mode = \"crab\"\nmax_batch = 4\nmax_batch_wait_ms = 250\nqueue_timeout_ms = 300",
        &seen,
    )
    .await;
    let client = server.client();
    // `held` occupies the one worker until the test opens the gate.
    let held = client.spawn(request("POST", PATH, format!("hold:{}", gate.display())));
    wait_until("the held request reached the app", || {
        seen_ids(&seen).len() == 1
    })
    .await;
    // `late` queues behind the held one; once its batch is handed over it may wait only until
    // its own deadline, the oldest in the batch. It has waited 100 ms (more than
    // queue_timeout_ms − max_batch_wait_ms) by the time the worker frees up, so that deadline
    // comes during the wait for the batch to fill.
    let late = client.spawn(request("POST", PATH, "late"));
    server.wait_queued(PATH, 1).await;
    // A client that leaves while queued behind both.
    let mut gone = server.client().connect_h1().await;
    let gone_reply = tokio::spawn(async move {
        let _ = gone.try_send(request("POST", PATH, "gone")).await;
    });
    server.wait_queued(PATH, 2).await;
    gone_reply.abort();
    let _ = gone_reply.await;
    // The server has seen it go: the held and the late requests' connections are left.
    server.wait_open_connections(2).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    std::fs::write(&gate, "").unwrap();
    let held = held.await.unwrap();
    assert_eq!(held.status, StatusCode::OK, "{}", held.text());
    let late = late.await.unwrap();
    assert_eq!(late.status, StatusCode::GATEWAY_TIMEOUT, "{}", late.text());
    assert_eq!(late.text(), "waited in queue past queue_timeout_ms\n");
    wait_until("both queued requests are answered", || {
        let c = server.counters(PATH);
        c.answered() == c.admitted
    })
    .await;
    let c = server.counters(PATH);
    assert_eq!(
        (c.admitted, c.completed, c.timed_out, c.skipped),
        (3, 1, 1, 1),
        "{c:?}"
    );
    // Neither the late request nor the gone one was sent to the app.
    assert_eq!(seen_ids(&seen).len(), 1, "{:?}", seen_ids(&seen));
    // The worker still serves.
    let after = client.post(PATH, "after").await;
    assert_eq!(after.status, StatusCode::OK);
    assert_counters_add_up(&server);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_does_not_speak_the_batch_format_fails_each_item_502_and_keeps_serving() {
    // A stdlib http.server: it answers POST /.fiddler/batch with its usual JSON, not a batch.
    let toml = format!(
        "[[endpoint]]\npath = \"{PATH}\"\nmethods = [\"POST\"]\nmode = \"crab\"\nmax_batch = 2\nmax_batch_wait_ms = 1000\n\
         [endpoint.worker]\ncommand = ['python3', '{ROOT}/tests/fixtures/workers/threaded_server.py']\n"
    );
    let server = TestServer::launch(&toml)
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let client = server.client();
    let pair: Vec<_> = (0..2)
        .map(|i| client.spawn(request("POST", PATH, format!("{i}"))))
        .collect();
    for r in pair {
        let reply = r.await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        assert!(
            reply.text().starts_with(
                "malformed batch answer from the worker (POST /.fiddler/batch): item 0: no newline"
            ),
            "{}",
            reply.text()
        );
    }
    let c = server.counters(PATH);
    assert_eq!((c.admitted, c.failed), (2, 2));
    // The same worker still answers a lone request (sent as itself, not as a batch).
    let alone = client.post(PATH, "alone").await;
    assert_eq!(alone.status, StatusCode::OK, "{}", alone.text());
    assert_counters_add_up(&server);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_iris_example_classifies_concurrent_clients_in_batches_each_its_own_flower() {
    let python = format!("{ROOT}/.venv/bin/python3");
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: run `bash scripts/venv.sh` first"
    );
    let toml = format!(
        "[[endpoint]]\npath = \"{PATH}\"\nmethods = [\"POST\"]\nmode = \"crab\"\nmax_batch = 8\nmax_batch_wait_ms = 2000\n\
         [endpoint.worker]\ncommand = ['{python}', '-m', 'fiddler_worker', '{ROOT}/examples/iris/app.py']\n\
         env = {{ PYTHONPATH = '{ROOT}/python', OMP_NUM_THREADS = '1' }}\nready_timeout_ms = 120000\n"
    );
    let server = TestServer::launch(&toml)
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let flowers = [
        ("[5.1, 3.5, 1.4, 0.2]", Some("setosa")),
        ("[6.7, 3.0, 5.2, 2.3]", Some("virginica")),
        ("[1, 2]", None),
    ];
    let client = server.client();
    // 16 clients: two full batches.
    let replies: Vec<_> = (0..16)
        .map(|i| {
            let (features, _) = flowers[i % 3];
            client.spawn(request(
                "POST",
                PATH,
                format!("{{\"features\": {features}}}"),
            ))
        })
        .collect();
    for (i, r) in replies.into_iter().enumerate() {
        let reply = r.await.unwrap();
        let v: Value = serde_json::from_slice(&reply.body).unwrap();
        match flowers[i % 3].1 {
            Some(species) => {
                assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                assert_eq!(v["species"], species);
            }
            // A bad input fails its own request only.
            None => {
                assert_eq!(reply.status, StatusCode::BAD_REQUEST);
                assert!(v["error"].as_str().unwrap().contains("4 numbers"));
            }
        }
    }
    let batch = server.status_of(PATH).batch.unwrap();
    assert_eq!(batch.sizes.items, 16);
    assert!(
        batch.sizes.largest > 1 && batch.sizes.largest <= 8,
        "{batch:?}"
    );
    assert_counters_add_up(&server);
    server.shutdown().await;
}
