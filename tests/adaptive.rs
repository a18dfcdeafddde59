//! Adaptive mode under a fixed traffic light: green runs a batch on the whole pool (`workers`),
//! yellow on `yellow_workers`, red serially; each decision is counted per route in `/status`, and
//! flipping the light between batches changes the route of the next one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use std::sync::Arc;
use std::time::Duration;
use support::{held_job, registry, wait_until, Recorder, TestServer};

const WORKERS: usize = 4;
const YELLOW_WORKERS: usize = 2;
const BATCH: usize = 6;

const WORK: &str = r#"
[[endpoint]]
path = "/work"
mode = "adaptive"
workers = 4
yellow_workers = 2
builtin = "recorder"
queue = 32
expected_wait_admission = false
"#;

async fn start(recorder: &Arc<Recorder>, light: &TrafficLight) -> TestServer {
    TestServer::launch(WORK)
        .registry(&registry("recorder", recorder.clone()))
        .light(light)
        .start()
        .await
}

/// Send a held blocker and `BATCH` held jobs, one after another (each admitted before the next
/// is sent, so that admission order is the numbering), check that exactly `expected` of them
/// start at once, let them all finish, and return the peak concurrency the handler saw. (A pool
/// takes each batch as soon as it has handed the last to its workers, so how the jobs fall into
/// batches depends on timing; the light is read for each.)
async fn held_batch(server: &TestServer, recorder: &Recorder, tag: &str, expected: usize) -> usize {
    let client = server.client();
    let gate = recorder.gate();
    let before = gate.arrived().len();
    let admitted = server.counters("/work").admitted;
    recorder.reset_max_active();

    let mut jobs = Vec::with_capacity(BATCH + 1);
    for i in 0..=BATCH {
        let id = match i {
            0 => format!("{tag}-blocker"),
            _ => format!("{tag}-{}", i - 1),
        };
        jobs.push((id.clone(), client.spawn(held_job("/work", &id))));
        wait_until(&format!("{id} admitted"), || {
            server.counters("/work").admitted > admitted + i as u64
        })
        .await;
    }

    gate.wait_arrived(before + expected).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.arrived().len(),
        before + expected,
        "{tag}: more than {expected} jobs started at once"
    );
    for _ in 0..=BATCH {
        gate.release();
    }
    for (id, reply) in jobs {
        let reply = reply.await.unwrap();
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, id));
    }
    recorder.reset_max_active()
}

/// The adaptive decision counters in `/status`: green, yellow, red batches.
async fn decisions(server: &TestServer) -> (u64, u64, u64) {
    let status = server.status_json().await;
    let executor = &status["endpoints"]["/work"]["executor"];
    let n = |key: &str| {
        executor[key]
            .as_u64()
            .unwrap_or_else(|| panic!("no {key} in {executor}"))
    };
    (
        n("batches_green_jellyfish"),
        n("batches_yellow_jellyfish"),
        n("batches_red_crab"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn green_runs_a_batch_on_the_whole_pool() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Green);
    let server = start(&recorder, &light).await;

    assert_eq!(
        held_batch(&server, &recorder, "green", WORKERS).await,
        WORKERS
    );
    // Every batch went to the pool (how many batches the seven jobs made depends on timing).
    let (green, yellow, red) = decisions(&server).await;
    assert!(
        green >= 2 && (yellow, red) == (0, 0),
        "{green} {yellow} {red}"
    );
    let status = server.status_json().await;
    assert_eq!(status["light"]["light"], "green");
    assert_eq!(status["light"]["fixed"], true);
    let work = &status["endpoints"]["/work"];
    assert_eq!(work["mode"], "adaptive");
    assert_eq!(work["concurrency"], WORKERS);
    assert_eq!(work["executor"]["workers"], WORKERS);
    assert_eq!(work["executor"]["yellow_workers"], YELLOW_WORKERS);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yellow_runs_a_batch_on_yellow_workers() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Yellow);
    let server = start(&recorder, &light).await;

    assert_eq!(
        held_batch(&server, &recorder, "yellow", YELLOW_WORKERS).await,
        YELLOW_WORKERS
    );
    let (green, yellow, red) = decisions(&server).await;
    assert!(
        yellow >= 2 && (green, red) == (0, 0),
        "{green} {yellow} {red}"
    );
    assert_eq!(server.status_of("/work").concurrency, YELLOW_WORKERS);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_runs_a_batch_serially_in_admission_order() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Red);
    let server = start(&recorder, &light).await;

    assert_eq!(held_batch(&server, &recorder, "red", 1).await, 1);
    let expected: Vec<String> = std::iter::once("red-blocker".to_string())
        .chain((0..BATCH).map(|i| format!("red-{i}")))
        .collect();
    assert_eq!(recorder.ids(), expected, "red runs out of admission order");
    for pair in recorder.runs().windows(2) {
        assert!(
            pair[0].end <= pair[1].start,
            "{} and {} overlapped",
            pair[0].id,
            pair[1].id
        );
    }
    assert_eq!(decisions(&server).await, (0, 0, 2));
    assert_eq!(server.status_of("/work").concurrency, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_the_light_between_batches_changes_the_route() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Green);
    let server = start(&recorder, &light).await;

    assert_eq!(
        held_batch(&server, &recorder, "green", WORKERS).await,
        WORKERS
    );
    let (green, _, _) = decisions(&server).await;
    assert_eq!(decisions(&server).await, (green, 0, 0));

    light.set(Light::Yellow);
    assert_eq!(server.status_json().await["light"]["light"], "yellow");
    assert_eq!(
        held_batch(&server, &recorder, "yellow", YELLOW_WORKERS).await,
        YELLOW_WORKERS
    );
    let (_, yellow, _) = decisions(&server).await;
    assert!(yellow >= 2, "{yellow}");
    assert_eq!(decisions(&server).await, (green, yellow, 0));

    light.set(Light::Red);
    assert_eq!(held_batch(&server, &recorder, "red", 1).await, 1);
    // Red runs each batch serially, so the blocker's batch and the six behind it.
    assert_eq!(decisions(&server).await, (green, yellow, 2));

    light.set(Light::Green);
    assert_eq!(
        held_batch(&server, &recorder, "green-again", WORKERS).await,
        WORKERS
    );
    let (again, _, _) = decisions(&server).await;
    assert!(again >= green + 2, "{again} after {green}");
    assert_eq!(decisions(&server).await, (again, yellow, 2));

    let c = server.counters("/work");
    let jobs = 4 * (BATCH as u64 + 1);
    assert_eq!((c.admitted, c.completed, c.answered()), (jobs, jobs, jobs));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_red_batch_waits_for_the_pools_jobs_still_running() {
    let recorder = Recorder::new(Duration::ZERO);
    let light = TrafficLight::fixed(Light::Green);
    let server = start(&recorder, &light).await;
    let client = server.client();
    let gate = recorder.gate();

    // Two jobs running on the pool under green.
    let pooled: Vec<_> = (0..2)
        .map(|i| client.spawn(held_job("/work", &format!("pooled-{i}"))))
        .collect();
    gate.wait_arrived(2).await;
    // Red: one at a time, so the next job does not start beside them.
    light.set(Light::Red);
    let red = client.spawn(held_job("/work", "red"));
    wait_until("the red job admitted", || {
        server.counters("/work").admitted == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        gate.arrived().len(),
        2,
        "the red job started beside the pool's"
    );
    gate.release();
    gate.release();
    for reply in pooled {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    gate.wait_arrived(3).await;
    gate.release();
    assert_eq!(red.await.unwrap().status, StatusCode::OK);
    assert!(recorder.max_active() <= 2);
    server.shutdown().await;
}
