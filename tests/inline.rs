//! Inline runs beside the executor's: a cheap handler runs on the front end's worker when nothing
//! is queued and a running slot is free, and one cap covers inline and pool runs together. Every
//! request's outcome (inline, queued, overflow) is counted once, so the counters add up under
//! concurrent load.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use common::handler::{Handler, HandlerError, JobRequest, JobResponse};
use hyper::{Response, StatusCode};
use light::{Light, TrafficLight};
use std::sync::Arc;
use std::time::Duration;
use support::{held_job, job, registry, wait_until, within, Gate, Recorder, Reply, TestServer};

/// A [`Recorder`] that may run inline (as the cheap builtins do), to mix inline and pool runs of
/// one handler that counts how many run at once.
///
/// Unlike a real inline handler it blocks (1 ms, or at the gate until the test opens it), so an
/// inline run leaves its tokio worker through `block_in_place`: a worker blocked in place keeps
/// the task in its LIFO slot (often the next connection's, just spawned by the accept loop) from
/// every other worker, and the held runs would stall the very requests the test sends next.
struct InlineRecorder(Arc<Recorder>);

impl Handler for InlineRecorder {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::task::block_in_place(|| self.0.handle(req))
        } else {
            self.0.handle(req)
        }
    }

    fn is_inline(&self) -> bool {
        true
    }
}

/// Inline-capable; answers which way it ran. An inline run (on a tokio worker) answers `inline`
/// at once; a run on an executor thread waits at the gate, then answers `queued`.
#[derive(Default)]
struct WhichPath {
    gate: Gate,
}

impl Handler for WhichPath {
    fn handle(&self, _req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let path = if tokio::runtime::Handle::try_current().is_ok() {
            "inline"
        } else {
            self.gate.hold("queued");
            "queued"
        };
        Ok(Response::new(Bytes::from_static(path.as_bytes()).into()))
    }

    fn is_inline(&self) -> bool {
        true
    }
}

/// What the clients saw, by kind.
#[derive(Debug, Default)]
struct Tally {
    inline: u64,
    queued: u64,
    rejected: u64,
}

impl Tally {
    fn add(&mut self, reply: &Reply) {
        match (reply.status, reply.text().as_str()) {
            (StatusCode::OK, "inline") => self.inline += 1,
            (StatusCode::OK, "queued") => self.queued += 1,
            (StatusCode::SERVICE_UNAVAILABLE, "queue full, retry later\n") => self.rejected += 1,
            _ => panic!("unexpected answer {reply:?}"),
        }
    }

    fn total(&self) -> u64 {
        self.inline + self.queued + self.rejected
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inline_and_pool_runs_together_never_exceed_the_workers() {
    let recorder = Recorder::new(Duration::from_millis(1));
    let toml = r#"
[[endpoint]]
path = "/work"
mode = "jellyfish"
workers = 2
builtin = "recorder"
queue = 64
expected_wait_admission = false
"#;
    let server = TestServer::launch(toml)
        .registry(&registry(
            "recorder",
            Arc::new(InlineRecorder(recorder.clone())),
        ))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let client = server.client();
    let gate = recorder.gate();

    // Nothing queued and a slot free: the first two run inline, each holding a slot (and a tokio
    // worker) at the gate.
    let mut inline = Vec::new();
    for (n, id) in ["inline-0", "inline-1"].into_iter().enumerate() {
        inline.push(client.spawn(held_job("/work", id)));
        gate.wait_arrived(n + 1).await;
    }
    assert_eq!(server.status_of("/work").running, 2);
    assert_eq!(server.status_of("/work").queue_depth, 0, "both ran inline");

    // Both slots taken: the next two are queued and handed to the pool, whose workers must wait
    // for a slot rather than start a third and a fourth run.
    let pooled: Vec<_> = ["pooled-0", "pooled-1"]
        .iter()
        .map(|id| client.spawn(held_job("/work", id)))
        .collect();
    wait_until("the two are queued (or, wrongly, running)", || {
        server.status_of("/work").queue_depth == 2 || gate.arrived().len() > 2
    })
    .await;
    // Give a wrong pool every chance to start them (this only ever fails a broken cap).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (arrived, active) = (gate.arrived(), recorder.active());
    // Let the held runs go before asserting, so a failure does not leave tokio workers blocked.
    gate.open();
    assert_eq!(arrived, ["inline-0", "inline-1"]);
    assert_eq!(active, 2);
    for reply in inline {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    for reply in pooled {
        assert_eq!(reply.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(recorder.max_active(), 2);

    // Many clients at once: inline and pool runs mix, and the cap still holds.
    let mut load = Vec::new();
    for c in 0..24 {
        load.push(tokio::spawn(async move {
            for n in 0..5 {
                let reply = client.send(job("/work", &format!("load-{c}-{n}"))).await;
                assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            }
        }));
    }
    for task in load {
        within("the load to be served", task).await.unwrap();
    }
    assert!(
        recorder.max_active() <= 2,
        "{} runs at once with 2 workers",
        recorder.max_active()
    );
    let c = server.counters("/work");
    assert_eq!((c.admitted, c.completed), (124, 124));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_add_up_across_inline_queued_and_overflow_under_concurrent_load() {
    const QUEUE: usize = 4;
    let handler = Arc::new(WhichPath::default());
    let light = TrafficLight::fixed(Light::Green);
    let toml = format!(
        r#"
[[endpoint]]
path = "/work"
mode = "adaptive"
workers = 2
yellow_workers = 1
builtin = "which"
queue = {QUEUE}
overflow = "reject"
queue_timeout_ms = 60000
"#
    );
    let server = TestServer::launch(&toml)
        .registry(&registry("which", handler.clone()))
        .light(&light)
        .start()
        .await;
    let client = server.client();
    let mut seen = Tally::default();

    // Green, nothing queued: every request runs inline (two tokio workers, two slots).
    let replies: Vec<_> = (0..16)
        .map(|n| client.spawn(job("/work", &format!("green-{n}"))))
        .collect();
    for reply in replies {
        let reply = reply.await.unwrap();
        assert_eq!(reply.text(), "inline");
        seen.add(&reply);
    }

    // Red: no inline runs. One job holds the crab, the queue fills, the rest overflow at once.
    light.set(Light::Red);
    let held = client.spawn(job("/work", "held"));
    handler.gate.wait_arrived(1).await;
    let queued: Vec<_> = (0..QUEUE)
        .map(|n| client.spawn(job("/work", &format!("queued-{n}"))))
        .collect();
    server.wait_queued("/work", QUEUE).await;
    for _ in 0..12 {
        let reply = client.send(job("/work", "overflow")).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
        seen.add(&reply);
    }
    handler.gate.open();
    for reply in std::iter::once(held).chain(queued) {
        let reply = reply.await.unwrap();
        assert_eq!(reply.text(), "queued");
        seen.add(&reply);
    }

    // Many clients while the light flips: inline, queued and overflow interleave.
    let flipper = {
        let light = light.clone();
        tokio::spawn(async move {
            for n in 0.. {
                light.set(if n % 2 == 0 { Light::Green } else { Light::Red });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut load = Vec::new();
    for c in 0..32 {
        load.push(tokio::spawn(async move {
            let mut seen = Tally::default();
            for n in 0..10 {
                seen.add(&client.send(job("/work", &format!("load-{c}-{n}"))).await);
            }
            seen
        }));
    }
    for task in load {
        let part = within("the load to be answered", task).await.unwrap();
        seen.inline += part.inline;
        seen.queued += part.queued;
        seen.rejected += part.rejected;
    }
    flipper.abort();

    wait_until("every admitted request has its outcome", || {
        let c = server.counters("/work");
        c.answered() == c.admitted
    })
    .await;
    let c = server.counters("/work");
    assert_eq!(seen.total(), 16 + 1 + QUEUE as u64 + 12 + 320);
    assert_eq!(c.admitted, seen.inline + seen.queued, "{c:?} {seen:?}");
    assert_eq!(c.completed, c.admitted, "{c:?}");
    assert_eq!((c.failed, c.timed_out, c.skipped), (0, 0, 0), "{c:?}");
    assert_eq!(
        c.overflowed, seen.rejected,
        "each overflow counted once: {c:?}"
    );
    assert_eq!(c.admitted + c.overflowed, seen.total());
    assert!(seen.inline >= 16 && seen.queued > QUEUE as u64 && seen.rejected >= 12);
    server.shutdown().await;
}
