//! Warm worker endpoints, with real worker processes on real Unix sockets: the same processes
//! answer request after request; nothing reaches a worker before it is ready; one request at a
//! time per worker; a worker that dies or hangs is answered for (502, 504) and replaced; a crash
//! loop turns into fast overflow; recycling and rolling restarts drop nothing; any HTTP/1.1
//! server on the socket works (a stdlib `http.server`, gunicorn); no worker outlives a server
//! killed with SIGKILL; and the counters add up.
//!
//! The apps are in `tests/fixtures/workers/`; `python3 -m fiddler_worker` runs from the
//! repository's `python/` directory. The gunicorn test needs `.venv/bin/gunicorn` in the
//! repository (`.ci/run` creates it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::binary::Binary;
use support::{free_port, is_dead, request, wait_until, Client, TempDir, TestServer};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixture(name: &str) -> String {
    format!("{ROOT}/tests/fixtures/workers/{name}")
}

/// One worker endpoint, written as TOML.
struct Workers {
    path: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    endpoint: Vec<String>,
    worker: Vec<String>,
}

impl Workers {
    /// A crab endpoint at `path` whose workers run `argv`.
    fn command(path: &str, argv: &[&str]) -> Workers {
        Workers {
            path: path.into(),
            argv: argv.iter().map(|a| a.to_string()).collect(),
            env: vec![("PYTHONPATH".into(), format!("{ROOT}/python"))],
            endpoint: vec!["expected_wait_admission = false".into()],
            worker: Vec::new(),
        }
    }

    /// A crab endpoint at `path` serving the fiddler_worker app `file` (a fixture).
    fn app(path: &str, file: &str) -> Workers {
        Workers::command(path, &["python3", "-m", "fiddler_worker", &fixture(file)])
    }

    /// Jellyfish with `n` workers.
    fn jellyfish(self, n: usize) -> Workers {
        self.endpoint(&format!("mode = \"jellyfish\"\nworkers = {n}"))
    }

    /// A line in the `[[endpoint]]` table.
    fn endpoint(mut self, line: &str) -> Workers {
        self.endpoint.push(line.into());
        self
    }

    /// A line in the `[endpoint.worker]` table.
    fn worker(mut self, line: &str) -> Workers {
        self.worker.push(line.into());
        self
    }

    /// A variable for the workers.
    fn env(mut self, name: &str, value: &str) -> Workers {
        self.env.push((name.into(), value.into()));
        self
    }

    fn toml(&self) -> String {
        let argv: Vec<String> = self.argv.iter().map(|a| format!("'{a}'")).collect();
        let env: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k} = '{v}'"))
            .collect();
        format!(
            "[[endpoint]]\npath = \"{}\"\n{}\n[endpoint.worker]\ncommand = [{}]\nenv = {{ {} }}\n{}\n\n",
            self.path,
            self.endpoint.join("\n"),
            argv.join(", "),
            env.join(", "),
            self.worker.join("\n")
        )
    }

    /// A server for this endpoint, with a fixed green light (so the machine's load does not turn
    /// `/readyz` red).
    async fn start(&self) -> TestServer {
        TestServer::launch(&self.toml())
            .light(&TrafficLight::fixed(Light::Green))
            .start()
            .await
    }
}

/// The endpoint's worker pool as `/status` shows it, read directly.
fn pool(server: &TestServer, path: &str) -> Value {
    server
        .status_of(path)
        .handler
        .expect("a worker endpoint has worker status")
}

/// The pool's entries (one per process, and per slot without one).
fn workers(server: &TestServer, path: &str) -> Vec<Value> {
    pool(server, path)["workers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Pids of the workers ready (idle or busy) now.
fn ready_pids(server: &TestServer, path: &str) -> BTreeSet<u64> {
    workers(server, path)
        .iter()
        .filter(|w| matches!(w["state"].as_str(), Some("ready" | "busy")))
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

/// Wait until `n` workers are ready and nothing else is in the pool; their pids.
async fn wait_ready(server: &TestServer, path: &str, n: usize) -> BTreeSet<u64> {
    wait_until(&format!("{n} workers ready at {path}"), || {
        let all = workers(server, path);
        all.len() == n && all.iter().all(|w| w["state"] == "ready")
    })
    .await;
    ready_pids(server, path)
}

fn json(reply: &support::Reply) -> Value {
    serde_json::from_slice(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} {}", reply.status, reply.text()))
}

fn pid_of(reply: &support::Reply) -> u64 {
    json(reply)["pid"]
        .as_u64()
        .expect("the app answers its pid")
}

fn gone(pid: u64) -> bool {
    is_dead(i32::try_from(pid).unwrap())
}

/// True once our child `pid` has exited, reaped or not (what the server checks before sending).
fn exited(pid: u64) -> bool {
    use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    match waitid(Id::Pid(Pid::from_raw(i32::try_from(pid).unwrap())), flags) {
        Ok(WaitStatus::StillAlive) => false,
        Ok(_) => true,
        Err(_) => true,
    }
}

fn sigkill(pid: u64) {
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();
}

/// Assert every admitted request has exactly one outcome.
fn assert_counters_add_up(server: &TestServer, path: &str) {
    let c = server.counters(path);
    assert_eq!(
        c.admitted,
        c.completed + c.failed + c.timed_out + c.skipped,
        "{c:?}"
    );
}

/// Clients sending `POST path` in a loop until `stop` is set; each returns what it got back.
fn load(
    client: Client,
    path: &str,
    clients: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(StatusCode, String)>>> {
    (0..clients)
        .map(|_| {
            let (stop, path) = (stop.clone(), path.to_string());
            tokio::spawn(async move {
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let reply = client.send(request("POST", &path, "")).await;
                    got.push((reply.status, reply.text()));
                }
                got
            })
        })
        .collect()
}

/// Stop the load and gather every reply.
async fn gather(
    stop: &Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<Vec<(StatusCode, String)>>>,
) -> Vec<(StatusCode, String)> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.unwrap());
    }
    all
}

/// Every reply was a 200; the pids that answered.
fn all_ok(replies: &[(StatusCode, String)]) -> BTreeSet<u64> {
    let failed: Vec<_> = replies
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        replies.len()
    );
    replies
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<Value>(body).unwrap()["pid"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn the_example_workers_config_is_valid() {
    let config = fiddler_crab::config::Config::from_file(std::path::Path::new(&format!(
        "{ROOT}/config/workers.toml"
    )))
    .unwrap();
    assert!(config
        .endpoints
        .iter()
        .all(|e| matches!(e.handler, fiddler_crab::config::HandlerConfig::Worker(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_workers_answer_many_requests_from_the_same_processes() {
    let server = Workers::app("/pid", "pid_app.py")
        .jellyfish(2)
        .start()
        .await;
    let started = wait_ready(&server, "/pid", 2).await;

    let mut pids = BTreeSet::new();
    for round in 0..5 {
        let replies: Vec<_> = (0..4)
            .map(|i| {
                server
                    .client()
                    .spawn(request("POST", &format!("/pid?r={round}-{i}"), "x"))
            })
            .collect();
        for reply in replies {
            let reply = reply.await.unwrap();
            assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
            assert_eq!(json(&reply)["body"], "x");
            pids.insert(pid_of(&reply));
        }
    }
    assert!(pids.is_subset(&started), "{pids:?} not among {started:?}");
    let served: u64 = workers(&server, "/pid")
        .iter()
        .map(|w| w["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(served, 20, "no process per request: the two served all");
    assert!(workers(&server, "/pid").iter().all(|w| w["restarts"] == 0));
    assert_eq!(server.counters("/pid").completed, 20);
    server.shutdown().await;
    for pid in started {
        wait_until("the workers to exit after shutdown", || gone(pid)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_a_slow_setup_and_readyz_says_why() {
    let server = Workers::command(
        "/slow",
        &[
            "python3",
            "-m",
            "fiddler_worker",
            &format!("{ROOT}/examples/slow_setup/app.py"),
        ],
    )
    .env("SLOW_SETUP_S", "1.5")
    .start()
    .await;

    // Not ready: the probe says which endpoint and why; status answers meanwhile.
    let readyz = server.get("/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        readyz.text().contains("/slow") && readyz.text().contains("no worker ready"),
        "{}",
        readyz.text()
    );
    let status = server.status_json().await;
    assert_eq!(
        status["endpoints"]["/slow"]["handler"]["workers"][0]["state"],
        "starting"
    );

    // A request sent now waits for the worker, and is answered by it once its setup is done.
    let reply = server.post("/slow", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let w = &workers(&server, "/slow")[0];
    assert_eq!(w["pid"].as_u64(), Some(pid_of(&reply)));
    assert!(
        w["ready_ms"].as_f64().unwrap() >= 1500.0,
        "ready before its setup() returned: {w}"
    );
    assert_eq!(server.get("/readyz").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_never_runs_two_requests_at_once() {
    // The stdlib server runs each connection on its own thread: it would run two at once.
    let server = Workers::command("/t", &["python3", &fixture("threaded_server.py")])
        .jellyfish(2)
        .start()
        .await;
    let started = wait_ready(&server, "/t", 2).await;
    let replies: Vec<_> = (0..16)
        .map(|_| server.client().spawn(request("POST", "/t?sleep=0.05", "")))
        .collect();
    let mut pids = BTreeSet::new();
    for reply in replies {
        let reply = reply.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let body = json(&reply);
        assert_eq!(body["max_in_flight"], 1, "two requests at once in {body}");
        pids.insert(body["pid"].as_u64().unwrap());
    }
    assert!(pids.is_subset(&started));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdlib_http_server_works_unchanged_and_hop_by_hop_headers_stay_on_their_hop() {
    let server = Workers::command("/t", &["python3", &fixture("threaded_server.py")])
        .start()
        .await;
    let mut req = request("POST", "/t?x=1&y=two", "hello");
    let h = req.headers_mut();
    h.insert("connection", "keep-alive, X-Drop".parse().unwrap());
    h.insert("x-drop", "1".parse().unwrap());
    h.insert("x-keep", "2".parse().unwrap());
    h.insert("proxy-authorization", "Basic eDp5".parse().unwrap());
    h.insert("te", "trailers".parse().unwrap());
    let reply = server.client().send(req).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let seen = json(&reply);
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["target"], "/t?x=1&y=two");
    assert_eq!(seen["body"], "hello");
    let headers = &seen["headers"];
    assert_eq!(headers["x-keep"], "2");
    assert_eq!(headers["host"], "fiddler.test");
    assert_eq!(headers["content-length"], "5");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    for hop in ["x-drop", "proxy-authorization", "te"] {
        assert!(
            headers.get(hop).is_none(),
            "{hop} reached the worker: {headers}"
        );
    }
    // The worker's own hop-by-hop headers stay on its hop too.
    assert_eq!(reply.header("x-worker").as_deref(), Some("threaded"));
    assert_eq!(reply.header("x-hop"), None);
    assert_eq!(reply.header("keep-alive"), None);
    assert_eq!(
        reply.header("content-type").as_deref(),
        Some("application/json")
    );
    server.shutdown().await;
}

/// The number of the worker's connection that carried `reply` (threaded_server.py's count).
fn connection_of(reply: &support::Reply) -> u64 {
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    json(reply)["connection"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_worker_connection_is_used_only_within_keepalive_timeout_ms() {
    let threaded = |keepalive: u64| {
        Workers::command("/t", &["python3", &fixture("threaded_server.py")])
            .worker(&format!("keepalive_timeout_ms = {keepalive}"))
    };
    // Well within: the readiness check's connection carries every request.
    let server = threaded(600000).start().await;
    wait_ready(&server, "/t", 1).await;
    for _ in 0..3 {
        assert_eq!(connection_of(&server.get("/t").await), 1);
    }
    server.shutdown().await;

    // Idle past it: a fresh connection for the next request.
    let server = threaded(100).start().await;
    wait_ready(&server, "/t", 1).await;
    let first = connection_of(&server.get("/t").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connection_of(&server.get("/t").await), first + 1);
    server.shutdown().await;

    // Zero: a fresh connection per request.
    let server = threaded(0).start().await;
    wait_ready(&server, "/t", 1).await;
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        seen.insert(connection_of(&server.get("/t").await));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    server.shutdown().await;

    // Why: a worker that closes a kept-alive connection as a request is written into it (here,
    // every second request on a connection) may have read that request, so it is never sent
    // again and the client gets a 502. A connection replaced once idle past the limit never
    // meets that close.
    let closing = |keepalive: u64| threaded(keepalive).env("ONE_ANSWER_PER_CONNECTION", "1");
    let server = closing(600000).start().await;
    wait_ready(&server, "/t", 1).await;
    connection_of(&server.get("/t").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = server.get("/t").await;
    assert_eq!(lost.status, StatusCode::BAD_GATEWAY, "{}", lost.text());
    assert_counters_add_up(&server, "/t");
    server.shutdown().await;

    let server = closing(100).start().await;
    wait_ready(&server, "/t", 1).await;
    let first = connection_of(&server.get("/t").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connection_of(&server.get("/t").await), first + 1);
    assert_counters_add_up(&server, "/t");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_that_fails_its_health_check_is_replaced_before_a_request_meets_it() {
    // Checked whenever idle 1 ms: the checks run between requests and never take one's place
    // (each may take health_timeout_ms, 5 s by default).
    let server = Workers::command("/t", &["python3", &fixture("threaded_server.py")])
        .worker("health_path = \"/health\"\nhealth_interval_ms = 1")
        .start()
        .await;
    let pid = *wait_ready(&server, "/t", 1).await.first().unwrap();
    for _ in 0..50 {
        let reply = server.get("/t").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(pid_of(&reply), pid, "{}", pool(&server, "/t"));
    }
    assert_eq!(
        workers(&server, "/t")[0]["requests"],
        50,
        "checks are not requests"
    );
    assert_eq!(pool(&server, "/t")["health_failures"], 0);
    assert_counters_add_up(&server, "/t");
    server.shutdown().await;

    // A worker that hangs while idle is replaced on its next check, not found by a request that
    // would wait timeout_ms (a minute here) for its 504.
    let server = Workers::command("/t", &["python3", &fixture("threaded_server.py")])
        .worker("health_path = \"/health\"\nhealth_interval_ms = 300\nhealth_timeout_ms = 300")
        .worker("timeout_ms = 60000")
        .start()
        .await;
    wait_ready(&server, "/t", 1).await;
    let hung = pid_of(&server.get("/t?freeze=1").await);
    wait_until("the hung worker replaced", || {
        let ready = ready_pids(&server, "/t");
        !ready.is_empty() && !ready.contains(&hung)
    })
    .await;
    let reply = server.get("/t").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_ne!(pid_of(&reply), hung);
    wait_until("the hung worker gone", || gone(hung)).await;
    assert_eq!(pool(&server, "/t")["health_failures"], 1);
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("fiddler_crab_worker_health_failures_total{") && l.ends_with(" 1")
        ),
        "{metrics}"
    );
    let why = pool(&server, "/t").to_string();
    assert!(
        why.contains(
            "failed its health check (no answer to GET /health within health_timeout_ms (300 ms))"
        ),
        "{why}"
    );
    assert_counters_add_up(&server, "/t");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_request_answers_502_and_is_replaced() {
    let server = Workers::app("/pid", "pid_app.py")
        .worker("restart_backoff_ms = 50")
        .start()
        .await;
    let first = *wait_ready(&server, "/pid", 1).await.first().unwrap();

    let pending = server.client().spawn(request("POST", "/pid?sleep=30", ""));
    wait_until("the worker to be busy", || {
        workers(&server, "/pid")[0]["state"] == "busy"
    })
    .await;
    sigkill(first);
    let reply = pending.await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().contains("worker exited"), "{}", reply.text());
    assert!(reply.text().contains("SIGKILL"), "{}", reply.text());

    // The next request is served by a fresh worker.
    let next = server.post("/pid", "").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_ne!(pid_of(&next), first);
    let w = &workers(&server, "/pid")[0];
    assert_eq!(w["restarts"], 1);
    assert!(w["last_exit"].as_str().unwrap().contains("SIGKILL"), "{w}");
    let c = server.counters("/pid");
    assert_eq!((c.completed, c.failed), (1, 1));
    assert_counters_add_up(&server, "/pid");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_dies_while_idle_costs_no_request() {
    let server = Workers::app("/pid", "pid_app.py")
        .worker("restart_backoff_ms = 50")
        .start()
        .await;
    let first = *wait_ready(&server, "/pid", 1).await.first().unwrap();
    sigkill(first);
    // Wait until it has fully exited (every thread), as its waiter would see it; it may or may
    // not be reaped yet.
    wait_until("the worker to have exited", || exited(first)).await;
    // Whether the pool has noticed yet or not: nothing is sent to the dead worker, so the
    // request goes to its replacement.
    let reply = server.post("/pid", "").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_ne!(pid_of(&reply), first);
    assert_eq!(server.counters("/pid").completed, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_timeout_ms_answers_504_and_the_whole_group_is_killed() {
    let dir = TempDir::new("worker-timeout");
    let child_file = dir.path().join("child.pid");
    let server = Workers::app("/pid", "pid_app.py")
        .worker("timeout_ms = 700\nkill_grace_ms = 500")
        .start()
        .await;
    let first = *wait_ready(&server, "/pid", 1).await.first().unwrap();

    let reply = server
        .post(&format!("/pid?sleep=60&child={}", child_file.display()), "")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("timeout_ms"), "{}", reply.text());

    // The worker and what it started in its group are gone.
    let grandchild: u64 = std::fs::read_to_string(&child_file)
        .expect("the app wrote its child's pid")
        .trim()
        .parse()
        .unwrap();
    wait_until("the worker and its child to be gone", || {
        gone(first) && gone(grandchild)
    })
    .await;

    // A fresh worker serves the next request.
    let next = server.post("/pid", "").await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text());
    assert_ne!(pid_of(&next), first);
    let c = server.counters("/pid");
    assert_eq!((c.completed, c.timed_out), (1, 1));
    assert_counters_add_up(&server, "/pid");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_recycles_workers_without_a_failed_request_under_load() {
    let server = Workers::app("/pid", "pid_app.py")
        .jellyfish(2)
        .endpoint("queue = 50")
        .worker("max_requests = 5\nmax_requests_jitter = 2")
        .start()
        .await;
    let started = wait_ready(&server, "/pid", 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(server.client(), "/pid?sleep=0.01", 3, &stop);
    // Load until both first workers have been recycled and their successors serve.
    wait_until("both first workers to be recycled", || {
        started.iter().all(|p| gone(*p))
    })
    .await;
    let before = server.counters("/pid").completed;
    wait_until("the successors to serve", || {
        server.counters("/pid").completed >= before + 4
    })
    .await;
    let replies = gather(&stop, clients).await;
    let pids = all_ok(&replies);
    assert!(pids.len() >= 3, "no recycling seen: {pids:?}");
    assert!(pids.iter().any(|p| !started.contains(p)));
    for w in workers(&server, "/pid")
        .iter()
        .filter(|w| w["restarts"] != 0)
    {
        assert!(
            w["last_exit"]
                .as_str()
                .is_some_and(|e| e.contains("max_requests")),
            "{w}"
        );
    }
    assert_eq!(
        pool(&server, "/pid")["exits"],
        0,
        "recycling is not a failure"
    );
    assert_counters_add_up(&server, "/pid");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_memory_is_short_a_recycled_worker_exits_before_its_successor_starts() {
    // The worker process is a shell that outlives SIGTERM by half a second (the app in it stops
    // at once), so a successor started too early would be seen beside it.
    let app = format!(
        "trap \"sleep 0.5; exit 0\" TERM; python3 -m fiddler_worker {} & wait",
        fixture("pid_app.py")
    );
    let light = TrafficLight::fixed(Light::Green);
    light.set_memory(Light::Red);
    let server = TestServer::launch(
        &Workers::command("/pid", &["sh", "-c", &app])
            .worker("max_requests = 2\nkill_grace_ms = 5000")
            .toml(),
    )
    .light(&light)
    .start()
    .await;
    let first = *wait_ready(&server, "/pid", 1).await.first().unwrap();
    for _ in 0..2 {
        assert_eq!(
            server.client().post("/pid", "").await.status,
            StatusCode::OK
        );
    }
    // Its last request answered, it retires; the next request waits in the queue meanwhile.
    let third = server.client().spawn(request("POST", "/pid", ""));
    let mut saw_it_retiring_alone = false;
    while !third.is_finished() {
        let all = workers(&server, "/pid");
        let pids: Vec<u64> = all.iter().filter_map(|w| w["pid"].as_u64()).collect();
        if pids.iter().any(|p| *p != first) {
            assert!(
                exited(first),
                "a successor started beside the retiring worker: {all:?}"
            );
        } else if all.iter().any(|w| w["state"] == "retiring") {
            saw_it_retiring_alone = true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(third.await.unwrap().status, StatusCode::OK);
    assert!(saw_it_retiring_alone, "the worker was never seen retiring");
    assert!(exited(first));
    let now = wait_ready(&server, "/pid", 1).await;
    assert!(!now.contains(&first));
    let slot = &workers(&server, "/pid")[0];
    assert!(
        slot["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("max_requests")),
        "{slot}"
    );
    assert_eq!(
        pool(&server, "/pid")["exits"],
        0,
        "recycling is not a failure"
    );
    assert_counters_add_up(&server, "/pid");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_load_drops_nothing() {
    let server = Workers::app("/pid", "pid_app.py")
        .jellyfish(2)
        .endpoint("queue = 50")
        .start()
        .await;
    let old = wait_ready(&server, "/pid", 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(server.client(), "/pid?sleep=0.01", 3, &stop);
    assert_eq!(server.restart_workers(), 1);
    wait_until("every worker to be replaced", || {
        let all = workers(&server, "/pid");
        all.len() == 2
            && all
                .iter()
                .all(|w| w["generation"] == 2 && w["state"] != "starting")
            && old.iter().all(|p| gone(*p))
    })
    .await;
    // A little more load on the new workers, then stop.
    let before = server.counters("/pid").completed;
    wait_until("the new workers to serve", || {
        server.counters("/pid").completed >= before + 4
    })
    .await;
    let replies = gather(&stop, clients).await;
    let pids = all_ok(&replies);
    assert!(pids.iter().any(|p| !old.contains(p)), "{pids:?}");
    assert!(replies.len() > 4);
    assert_eq!(pool(&server, "/pid")["exits"], 0);
    assert_counters_add_up(&server, "/pid");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_visible_and_the_endpoint_answers_at_once() {
    let server = Workers::command("/crash", &["python3", "-c", "import sys; sys.exit(3)"])
        .endpoint("overflow = \"reject\"")
        .worker("restart_backoff_ms = 20\nmax_restart_backoff_ms = 200\ncrash_loop_exits = 3")
        .start()
        .await;
    wait_until("a crash loop", || {
        pool(&server, "/crash")["crash_loop"] == true
    })
    .await;

    let status = server.status_json().await;
    let w = &status["endpoints"]["/crash"]["handler"]["workers"][0];
    assert!(
        w["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("exited before ready") && e.contains("status 3")),
        "{w}"
    );
    assert!(w["restarts"].as_u64().unwrap() >= 2, "{w}");

    // Overflow at once, not a wait in the queue for a worker that will not come.
    let reply = server.post("/crash", "").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.text().contains("workers keep failing"),
        "{}",
        reply.text()
    );
    let c = server.counters("/crash");
    assert_eq!((c.admitted, c.overflowed), (0, 1));

    let readyz = server.get("/readyz").await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(readyz.text().contains("crash loop"), "{}", readyz.text());
    let metrics = server.get("/metrics").await.text();
    assert!(
        metrics.contains("fiddler_crab_workers_crash_loop{endpoint=\"/crash\",mode=\"crab\"} 1"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gunicorn_serves_unchanged_as_a_worker() {
    let gunicorn = format!("{ROOT}/.venv/bin/gunicorn");
    assert!(
        std::path::Path::new(&gunicorn).exists(),
        "{gunicorn} is missing: create the test venv with \
         `python3 -m venv .venv && .venv/bin/pip install gunicorn` (.ci/run does)"
    );
    let script = format!(
        "exec {gunicorn} --bind unix:$FIDDLER_WORKER_SOCKET --workers 1 --chdir {} --log-level warning wsgi_app:app",
        fixture("")
    );
    let server = Workers::command("/g", &["sh", "-c", &script])
        .worker("ready_timeout_ms = 30000")
        .start()
        .await;
    let arbiter = *wait_ready(&server, "/g", 1).await.first().unwrap();
    // gunicorn's sync worker closes every connection: each request needs a fresh one.
    let mut pids = BTreeSet::new();
    for i in 0..10 {
        let reply = server.get(&format!("/g?i={i}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(json(&reply)["path"], "/g");
        pids.insert(pid_of(&reply));
    }
    assert_eq!(
        pids.len(),
        1,
        "one gunicorn worker served them all: {pids:?}"
    );
    assert!(!pids.contains(&arbiter), "the arbiter forks its worker");
    assert_eq!(workers(&server, "/g")[0]["requests"], 10);
    server.shutdown().await;
    wait_until("gunicorn to exit", || gone(arbiter)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_worker_config_rolls_the_workers_instead_of_starting_cold() {
    let make = |version: &str| {
        Workers::app("/pid", "pid_app.py")
            .jellyfish(2)
            .env("APP_VERSION", version)
            .toml()
    };
    let server = TestServer::launch(&make("1"))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let old = wait_ready(&server, "/pid", 2).await;

    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(server.client(), "/pid?sleep=0.01", 2, &stop);
    let summary = server.reload(&make("2"));
    assert_eq!((summary.started, summary.retired), (1, 1));
    // The new endpoint serves at once with the old workers while their successors start.
    wait_until("every worker to be replaced", || {
        let all = workers(&server, "/pid");
        all.len() == 2
            && all
                .iter()
                .all(|w| w["generation"] == 2 && w["state"] != "starting")
            && old.iter().all(|p| gone(*p))
    })
    .await;
    let replies = gather(&stop, clients).await;
    all_ok(&replies);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_only_timeouts_and_checks_keeps_the_workers_and_applies_them() {
    let make = |worker: &str| {
        Workers::command("/t", &["python3", &fixture("threaded_server.py")])
            .worker(worker)
            .toml()
    };
    let server = TestServer::launch(&make("timeout_ms = 30000"))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await;
    let pids = wait_ready(&server, "/t", 1).await;
    let reply = server.get("/t?sleep=0.5").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // A shorter timeout_ms and health checks: the same process, no successor started (a model
    // is not loaded again for them).
    server.reload(&make(
        "timeout_ms = 200\nhealth_path = \"/health\"\nhealth_interval_ms = 50\nhealth_timeout_ms = 300",
    ));
    assert_eq!(pool(&server, "/t")["generation"], 1, "no rolling restart");
    assert_eq!(ready_pids(&server, "/t"), pids);
    assert!(workers(&server, "/t")
        .iter()
        .all(|w| w["generation"] == 1 && w["state"] != "starting"));

    // And both apply to it: checked while idle (a hung worker is replaced)...
    let hung = pid_of(&server.get("/t?freeze=1").await);
    wait_until("the hung worker replaced by its failed check", || {
        let ready = ready_pids(&server, "/t");
        !ready.is_empty() && !ready.contains(&hung)
    })
    .await;
    assert_eq!(pool(&server, "/t")["health_failures"], 1);
    // ...and a request past the new timeout_ms is 504.
    let reply = server.get("/t?sleep=0.5").await;
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_watch_file_rolls_the_workers() {
    let dir = TempDir::new("worker-watch");
    let watched = dir.path().join("model.bin");
    std::fs::write(&watched, "v1").unwrap();
    let server = Workers::app("/pid", "pid_app.py")
        .worker(&format!("watch = ['{}']", watched.display()))
        .start()
        .await;
    let old = *wait_ready(&server, "/pid", 1).await.first().unwrap();
    std::fs::write(&watched, "version 2").unwrap();
    wait_until("the worker to be replaced", || {
        let all = workers(&server, "/pid");
        all.len() == 1 && all[0]["generation"] == 2 && all[0]["state"] == "ready"
    })
    .await;
    let reply = server.post("/pid", "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_ne!(pid_of(&reply), old);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admitted_request_gets_exactly_one_answer_and_the_counters_add_up() {
    let server = Workers::app("/pid", "pid_app.py")
        .worker("timeout_ms = 1500\nkill_grace_ms = 200\nmax_response_bytes = 1000\nrestart_backoff_ms = 20")
        .start()
        .await;
    wait_ready(&server, "/pid", 1).await;
    let cases = [
        ("/pid", StatusCode::OK),
        ("/pid?exit=3", StatusCode::BAD_GATEWAY),
        ("/pid", StatusCode::OK),
        ("/pid?sleep=30", StatusCode::GATEWAY_TIMEOUT),
        ("/pid?big=5000", StatusCode::BAD_GATEWAY),
        ("/pid?big=10", StatusCode::OK),
    ];
    for (path, want) in cases {
        let reply = server.post(path, "").await;
        assert_eq!(reply.status, want, "{path}: {}", reply.text());
    }
    let c = server.counters("/pid");
    assert_eq!(c.admitted, 6);
    assert_eq!((c.completed, c.failed, c.timed_out), (3, 2, 1));
    assert_counters_add_up(&server, "/pid");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_outlives_a_server_killed_with_sigkill() {
    let dir = TempDir::new("worker-orphan");
    let port = free_port();
    let config = dir.path().join("workers.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\n\n{}",
        Workers::app("/pid", "pid_app.py").toml()
    );
    std::fs::write(&config, toml).unwrap();
    let mut binary = Binary::start(&["--config", config.to_str().unwrap()]);
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    binary.wait_listening(addr).await;
    let client = Client { addr };

    let ready_pid = |status: &Value| {
        status["endpoints"]["/pid"]["handler"]["workers"]
            .as_array()
            .and_then(|w| w.first().cloned())
            .filter(|w| w["state"] == "ready")
            .and_then(|w| w["pid"].as_u64())
    };
    let status_of = || async move {
        serde_json::from_slice::<Value>(&client.get("/status").await.body).unwrap()
    };
    let mut first = None;
    for _ in 0..2000 {
        first = ready_pid(&status_of().await);
        if first.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first = first.unwrap_or_else(|| panic!("no worker became ready:\n{}", binary.log()));

    // SIGUSR2: the worker is replaced by a fresh one (a rolling restart).
    binary.signal(Signal::SIGUSR2);
    let mut second = None;
    for _ in 0..2000 {
        second = ready_pid(&status_of().await).filter(|p| *p != first);
        if second.is_some() && gone(first) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second =
        second.unwrap_or_else(|| panic!("SIGUSR2 did not replace the worker:\n{}", binary.log()));
    assert_eq!(client.post("/pid", "").await.status, StatusCode::OK);

    binary.signal(Signal::SIGKILL);
    wait_until("the worker to die with its server", || gone(second)).await;
}
