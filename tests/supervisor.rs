//! A dispatcher that fails outside any handler is replaced by its supervisor: the jobs of the
//! failed batch are answered 500 (never left hanging), the restart is counted, and the endpoint
//! keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use common::builtin::Ping;
use common::endpoint::Endpoint;
use common::executor::{Executor, JobRunner};
use common::queue::Batch;
use config::{Config, Mode};
use exec::Registry;
use frontend::{serve, App};
use light::{Light, TrafficLight};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serial, but the first batch it is handed makes it fail mid-batch (a bug outside any handler).
struct FailsOnce {
    batches: AtomicUsize,
}

impl Executor for FailsOnce {
    fn mode(&self) -> Mode {
        Mode::Crab
    }

    fn run_batch(&self, batch: &mut Batch, runner: &Arc<JobRunner>) {
        if self.batches.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("deliberate dispatcher failure");
        }
        while let Some(job) = batch.pop() {
            runner.run(job, 1);
        }
    }
}

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dispatcher_is_replaced_and_its_batch_answered_500() {
    let config = Config::from_toml(
        "[[endpoint]]\npath = \"/p\"\nmethods = [\"GET\"]\nmode = \"crab\"\nbuiltin = \"ping\"\n",
        "test.toml",
    )
    .unwrap();
    let executor = Arc::new(FailsOnce {
        batches: AtomicUsize::new(0),
    });
    let endpoint = Endpoint::start(config.endpoints[0].clone(), Arc::new(Ping), executor).unwrap();
    let app = Arc::new(App::new(
        config.server.clone(),
        vec![endpoint.clone()],
        Arc::new(Registry::new()),
        TrafficLight::fixed(Light::Green),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, app, async {
        let _ = stopped.await;
    }));

    let within = |f| tokio::time::timeout(Duration::from_secs(20), f);
    let first = within(get(addr, "/p"))
        .await
        .expect("the failed batch's job was left hanging");
    assert!(first.starts_with("HTTP/1.1 500"), "{first}");

    // The replacement serves the next request.
    let second = within(get(addr, "/p")).await.unwrap();
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert!(second.ends_with("pong\n"), "{second}");

    let status = endpoint.status();
    assert_eq!(status.restarts, 1);
    let c = status.counters;
    assert_eq!((c.admitted, c.completed, c.failed), (2, 1, 1));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap();
}
