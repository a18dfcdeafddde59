//! Run with `cargo bench --bench admission`.
//!
//! Admission micro-benchmark: nanoseconds and heap allocations per admitted job and per overflowed
//! request, at the queue and at the real front end. Plain `Instant` loops: a warm-up, then several
//! repetitions, median reported; allocations are counted by a counting global allocator
//! (`stats_alloc`, no unsafe code here) over one more repetition. The target for the overflow
//! decision is zero allocations. Without `--bench` (as under `cargo test --benches`) every case
//! runs a handful of iterations only, as a smoke test. See `docs/BENCHMARKS.md`.

use common::admission::{Outcome, Refusal};
use common::counters::EndpointCounters;
use common::endpoint::Endpoint;
use common::handler::{text_response, Handler, HandlerError, JobRequest, JobResponse};
use common::job::Job;
use common::queue::{HandoffQueue, Refused};
use config::Overflow;
use fiddler_crab::config::Config;
use fiddler_crab::{HandlerRegistry, Server};
use frontend::Ignored;
use hyper::{HeaderMap, Method, Uri, Version};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;
use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Queue capacity of the flood benchmark's endpoint.
const FLOOD_QUEUE: usize = 20;

/// How much work each case does.
#[derive(Debug, Clone, Copy)]
struct Scale {
    /// Operations per repetition of an in-memory case.
    iters: u64,
    /// Requests per repetition of a loopback case.
    requests: u64,
    /// Timed repetitions (the median is reported).
    reps: usize,
}

/// One line of the results table.
#[derive(Debug)]
struct Row {
    name: &'static str,
    median_ns: f64,
    min_ns: f64,
    max_ns: f64,
    allocs: f64,
    bytes: f64,
    note: String,
}

fn main() -> anyhow::Result<()> {
    let bench = std::env::args().any(|a| a == "--bench");
    let scale = if bench {
        Scale {
            iters: 1_000_000,
            requests: 2_000,
            reps: 7,
        }
    } else {
        Scale {
            iters: 1_000,
            requests: 10,
            reps: 1,
        }
    };
    let mut rows = vec![
        overflow_has_room(scale),
        overflow_endpoint(scale, Overflow::Ignore)?,
        overflow_endpoint(scale, Overflow::Reject)?,
        admitted_in_thread(scale, FLOOD_QUEUE),
        admitted_in_thread(scale, 1024),
        admitted_cross_thread(scale, FLOOD_QUEUE),
        admitted_cross_thread(scale, 1024),
        condvar_notify_reference(scale),
    ];
    rows.extend(loopback_overflow(scale)?);
    print_table(&rows, bench);
    Ok(())
}

/// Time `reps` repetitions of `op(iters)` after a warm-up, then count allocations over one more.
fn measure(
    name: &'static str,
    scale: Scale,
    iters: u64,
    mut op: impl FnMut(u64),
    note: String,
) -> Row {
    op((iters / 10).max(1));
    let mut samples = Vec::with_capacity(scale.reps);
    for _ in 0..scale.reps {
        let start = Instant::now();
        op(iters);
        samples.push(start.elapsed().as_nanos() as f64 / iters as f64);
    }
    let region = Region::new(GLOBAL);
    op(iters);
    let change = region.change();
    samples.sort_by(f64::total_cmp);
    Row {
        name,
        median_ns: samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN),
        min_ns: samples.first().copied().unwrap_or(f64::NAN),
        max_ns: samples.last().copied().unwrap_or(f64::NAN),
        allocs: change.allocations as f64 / iters as f64,
        bytes: change.bytes_allocated as f64 / iters as f64,
        note,
    }
}

/// A minimal request like the flood's `GET /sleep100`; building it allocates nothing.
fn request() -> JobRequest {
    JobRequest {
        method: Method::GET,
        uri: Uri::from_static("/sleep100"),
        version: Version::HTTP_11,
        headers: HeaderMap::new(),
        body: bytes::Bytes::new(),
        remote_addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        local_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        client: Default::default(),
        upgrade: Default::default(),
        body_stream: Default::default(),
    }
}

/// Fill `queue` to capacity (nothing drains it).
fn fill(queue: &HandoffQueue, counters: &Arc<EndpointCounters>) {
    while queue.has_room() {
        let (job, _waiter) = Job::new(request(), counters.clone());
        if let Err(Refused::Full(job) | Refused::Closed(job)) = queue.try_push(job) {
            job.discard();
            break;
        }
    }
}

/// The queue-level overflow check: one atomic load says "no room", one atomic add counts it.
fn overflow_has_room(scale: Scale) -> Row {
    let queue = HandoffQueue::new(FLOOD_QUEUE);
    let counters = Arc::new(EndpointCounters::default());
    fill(&queue, &counters);
    // Stands in for the endpoint's `overflowed` counter, which only its admission changes.
    let overflowed = AtomicU64::new(0);
    let row = measure(
        "overflow: HandoffQueue::has_room + count overflowed",
        scale,
        scale.iters,
        |n| {
            for _ in 0..n {
                if !black_box(&queue).has_room() {
                    overflowed.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
        format!("queue {FLOOD_QUEUE}, full"),
    );
    drain_and_discard(&queue);
    row
}

/// Holds every job until released, so an endpoint's queue stays full; never longer than a minute.
#[derive(Debug, Default)]
struct Hold {
    released: Mutex<bool>,
    wake: Condvar,
}

impl Hold {
    fn release(&self) {
        *self.released.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }
}

impl Handler for Hold {
    fn handle(&self, _req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        while !*released && Instant::now() < deadline {
            released = match self.wake.wait_timeout(released, Duration::from_millis(100)) {
                Ok((guard, _)) => guard,
                Err(p) => p.into_inner().0,
            };
        }
        Ok(JobResponse::new("held\n".into()))
    }
}

/// True while `endpoint` runs a (held) job and has no room in its queue.
fn held_and_full(endpoint: &Endpoint) -> bool {
    let status = endpoint.status();
    status.busy() && status.queue_depth >= status.queue_capacity
}

/// Wait until `endpoint` runs one job and has a full queue behind it.
fn wait_full(endpoint: &Endpoint) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held_and_full(endpoint) {
        anyhow::ensure!(Instant::now() < deadline, "endpoint did not fill up");
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// The front end's overflow decision, as `frontend/admission.rs` makes it: the endpoint's
/// admission check (which counts a refusal), then the refusal as silence or a `503`.
fn admit_or_overflow(endpoint: &Endpoint) -> Result<Option<JobResponse>, Ignored> {
    match endpoint.admission().check() {
        Ok(()) => Ok(None),
        Err(Refusal::OverflowIgnored) => Err(Ignored),
        Err(
            Refusal::OverflowRejected { retry_after_secs }
            | Refusal::HandlerUnavailable { retry_after_secs },
        ) => {
            let mut resp = text_response(
                hyper::StatusCode::SERVICE_UNAVAILABLE,
                "queue full, retry later",
            );
            resp.headers_mut().insert(
                hyper::header::RETRY_AFTER,
                hyper::header::HeaderValue::from(retry_after_secs),
            );
            Ok(Some(resp))
        }
        Err(Refusal::ShuttingDown) => Ok(Some(text_response(
            hyper::StatusCode::SERVICE_UNAVAILABLE,
            "server shutting down",
        ))),
    }
}

/// The endpoint-level overflow decision on a real, full crab endpoint.
fn overflow_endpoint(scale: Scale, overflow: Overflow) -> anyhow::Result<Row> {
    let text = format!(
        "[[endpoint]]\npath = \"/hold\"\nbuiltin = \"hold\"\nmode = \"crab\"\nqueue = {FLOOD_QUEUE}\n\
         overflow = \"{}\"\nqueue_timeout_ms = 600000\n",
        overflow.as_str()
    );
    let config = Config::from_toml(&text, "admission bench")?;
    let ep = config
        .endpoints
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no endpoint"))?;
    let hold = Arc::new(Hold::default());
    let executor =
        fiddler_crab::executor_for(&ep, &light::TrafficLight::fixed(light::Light::Green))?;
    let endpoint = Endpoint::start(ep, hold.clone(), executor)?;
    // One job to run (and block), then a full queue behind it.
    let mut waiters = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !held_and_full(&endpoint) {
        anyhow::ensure!(Instant::now() < deadline, "endpoint did not fill up");
        if let Outcome::Queued(waiter) = endpoint.admission().try_admit(request(), false) {
            waiters.push(waiter);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    wait_full(&endpoint)?;
    let (name, note) = match overflow {
        Overflow::Ignore => (
            "overflow: Admission::check + overflow decision (ignore)",
            "as admission.rs: Err(Ignored)".to_string(),
        ),
        Overflow::Reject => (
            "overflow: Admission::check + overflow decision (reject)",
            "as admission.rs: 503 + Retry-After built".to_string(),
        ),
    };
    let row = measure(
        name,
        scale,
        scale.iters,
        |n| {
            for _ in 0..n {
                black_box(admit_or_overflow(black_box(&endpoint)).ok());
            }
        },
        note,
    );
    hold.release();
    endpoint.close();
    drop(waiters);
    Ok(row)
}

/// Take and discard every pending job, as an executor that skips them all would.
fn drain_and_discard(queue: &HandoffQueue) {
    if let Some(mut batch) = queue.take_batch(VecDeque::new(), Duration::ZERO) {
        while let Some(job) = batch.pop() {
            job.discard();
        }
    }
}

/// Admitted jobs, one thread: `Job::new` + `try_push` (which counts the admission); whenever the
/// queue is full the same thread takes the batch and pops every job (the executor's side), as
/// `dispatch` does.
fn admitted_in_thread(scale: Scale, capacity: usize) -> Row {
    let queue = HandoffQueue::new(capacity);
    let counters = Arc::new(EndpointCounters::default());
    let mut spare = VecDeque::with_capacity(capacity);
    let name = if capacity == FLOOD_QUEUE {
        "admitted: Job::new + try_push, take_batch in-thread (queue 20)"
    } else {
        "admitted: Job::new + try_push, take_batch in-thread (queue 1024)"
    };
    measure(
        name,
        scale,
        scale.iters,
        |n| {
            for _ in 0..n {
                let (job, waiter) = Job::new(request(), counters.clone());
                if let Err(Refused::Full(job) | Refused::Closed(job)) = queue.try_push(job) {
                    job.discard();
                }
                drop(waiter);
                if !queue.has_room() {
                    if let Some(mut batch) =
                        queue.take_batch(std::mem::take(&mut spare), Duration::ZERO)
                    {
                        while let Some(job) = batch.pop() {
                            job.discard();
                        }
                        spare = batch.into_spare();
                    }
                }
            }
        },
        "per job, hand-off included".to_string(),
    )
}

/// Reference: what `HandoffQueue::try_push`'s `Condvar::notify_one` costs when nobody waits (std's
/// futex condvar makes a `FUTEX_WAKE` system call every time).
fn condvar_notify_reference(scale: Scale) -> Row {
    let condvar = Condvar::new();
    measure(
        "reference: std Condvar::notify_one, no waiter",
        scale,
        scale.iters,
        |n| {
            for _ in 0..n {
                black_box(&condvar).notify_one();
            }
        },
        "paid by every try_push".to_string(),
    )
}

/// Admitted jobs with a real consumer: a second thread takes batches as `dispatch` does and
/// discards the jobs; the producer retries (yielding) whenever the queue is full.
fn admitted_cross_thread(scale: Scale, capacity: usize) -> Row {
    let counters = Arc::new(EndpointCounters::default());
    let retries = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let name = if capacity == FLOOD_QUEUE {
        "admitted: Job::new + try_push, consumer thread (queue 20)"
    } else {
        "admitted: Job::new + try_push, consumer thread (queue 1024)"
    };
    let iters = (scale.iters / 4).max(1);
    let mut row = measure(
        name,
        scale,
        iters,
        |n| {
            let queue = Arc::new(HandoffQueue::new(capacity));
            let consumer = {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let mut spare = VecDeque::with_capacity(capacity);
                    while let Some(mut batch) = queue.take_batch(spare, Duration::from_millis(50)) {
                        while let Some(job) = batch.pop() {
                            job.discard();
                        }
                        spare = batch.into_spare();
                    }
                })
            };
            for _ in 0..n {
                let (mut job, waiter) = Job::new(request(), counters.clone());
                loop {
                    match queue.try_push(job) {
                        Ok(()) => break,
                        Err(Refused::Full(back)) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            job = back;
                            // Yield rather than spin: on a loaded 2-core machine a spinning
                            // producer can keep the consumer off the CPU.
                            std::thread::yield_now();
                        }
                        Err(Refused::Closed(back)) => {
                            back.discard();
                            break;
                        }
                    }
                }
                drop(waiter);
            }
            total.fetch_add(n, Ordering::Relaxed);
            queue.close();
            let _ = consumer.join();
        },
        String::new(),
    );
    let retries = retries.load(Ordering::Relaxed) as f64;
    let total = total.load(Ordering::Relaxed).max(1) as f64;
    row.note = format!(
        "per job; {:.2} full-queue retries per job; allocs include a thread spawn per rep",
        retries / total
    );
    row
}

/// The whole overflow path over loopback: accept, hyper parses the request, router, admission,
/// then close with zero bytes (`ignore`) or a `503` (`reject`). A blocking client on this thread
/// (which allocates nothing per request), the server on a 2-worker tokio runtime; allocations are
/// the whole process's, so they are the server's per-connection cost.
fn loopback_overflow(scale: Scale) -> anyhow::Result<Vec<Row>> {
    let text = "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = 2000\n\
        [[endpoint]]\npath = \"/ignore\"\nmethods = [\"GET\"]\nbuiltin = \"hold\"\nqueue = 1\n\
        overflow = \"ignore\"\nqueue_timeout_ms = 600000\n\
        [[endpoint]]\npath = \"/reject\"\nmethods = [\"GET\"]\nbuiltin = \"hold\"\nqueue = 1\n\
        overflow = \"reject\"\nqueue_timeout_ms = 600000\n";
    let config = Config::from_toml(text, "admission bench")?;
    let hold = Arc::new(Hold::default());
    let mut registry = HandlerRegistry::default();
    registry.register("hold", hold.clone());
    let server = Server::build(&config, &registry)?;
    let app = server.app().clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind(config.server.listen))?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = runtime.spawn(server.run(listener, async move {
        let _ = stop_rx.await;
    }));

    // Two clients per endpoint: one job runs (held), one waits in the queue; they get their
    // answers at release.
    let mut fillers = Vec::new();
    for path in ["/ignore", "/reject", "/ignore", "/reject"] {
        fillers.push(std::thread::spawn(move || exchange(addr, path)));
        std::thread::sleep(Duration::from_millis(20));
    }
    for endpoint in app.endpoints().iter() {
        wait_full(endpoint)?;
    }

    let mut rows = Vec::new();
    for (path, name) in [
        (
            "/ignore",
            "overflow over loopback, whole server path (ignore)",
        ),
        (
            "/reject",
            "overflow over loopback, whole server path (reject)",
        ),
    ] {
        let mut wrong = 0u64;
        let mut row = measure(
            name,
            scale,
            scale.requests,
            |n| {
                for _ in 0..n {
                    match (path, exchange(addr, path)) {
                        ("/ignore", Ok(0)) => {}
                        ("/reject", Ok(503)) => {}
                        _ => wrong += 1,
                    }
                }
            },
            String::new(),
        );
        row.note =
            format!("round trip incl. the client; {wrong} unexpected answers; allocs = server's");
        rows.push(row);
    }
    let overflowed: u64 = app
        .endpoints()
        .iter()
        .map(|e| e.counters().overflowed)
        .sum();

    hold.release();
    for f in fillers {
        let _ = f.join();
    }
    let _ = stop_tx.send(());
    let _ = runtime.block_on(serving);
    if let Some(row) = rows.first_mut() {
        row.note
            .push_str(&format!(" ({overflowed} overflowed in all)"));
    }
    Ok(rows)
}

/// One request on a fresh connection: the status code, or 0 for a close without a byte.
fn exchange(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    stream.set_nodelay(true)?;
    // A static request: formatting one would allocate on the client side.
    let request: &[u8] = if path == "/ignore" {
        b"GET /ignore HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    } else {
        b"GET /reject HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    };
    stream.write_all(request)?;
    let mut buf = [0u8; 1024];
    let mut head = [0u8; 12];
    let mut got = 0usize;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        for &b in buf.iter().take(n) {
            if let Some(slot) = head.get_mut(got) {
                *slot = b;
            }
            got += 1;
        }
    }
    if got == 0 {
        return Ok(0);
    }
    // "HTTP/1.1 503"
    let code = std::str::from_utf8(head.get(9..12).unwrap_or(&[]))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Ok(code)
}

fn print_table(rows: &[Row], bench: bool) {
    if !bench {
        println!("admission bench: smoke run (pass --bench, as `cargo bench` does, to measure)");
    }
    println!(
        "| case | median ns/op | min | max | allocs/op | bytes/op | note |\n|---|---|---|---|---|---|---|"
    );
    for r in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {:.0} | {} |",
            r.name, r.median_ns, r.min_ns, r.max_ns, r.allocs, r.bytes, r.note
        );
    }
}
