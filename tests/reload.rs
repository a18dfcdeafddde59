//! Config reload: an unchanged endpoint keeps its queue (and counters), a changed one gets a fresh
//! queue while the old one runs every job it admitted, a removed one answers 404 to new requests;
//! a reload that cannot be built changes nothing. The real binary reloads on SIGHUP, refusing an
//! invalid file and keeping the config it serves.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use light::{Light, TrafficLight};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    free_port, held_job, job, registry, wait_until, within, Client, Recorder, TempDir, TestServer,
};

fn endpoint(path: &str, queue: usize) -> String {
    format!(
        r#"
[[endpoint]]
path = "{path}"
builtin = "recorder"
queue = {queue}
expected_wait_admission = false
"#
    )
}

async fn start(recorder: &Arc<Recorder>, toml: &str) -> TestServer {
    TestServer::launch(toml)
        .registry(&registry("recorder", recorder.clone()))
        .light(&TrafficLight::fixed(Light::Green))
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_endpoint_keeps_its_queue_and_its_counters() {
    let recorder = Recorder::new(Duration::ZERO);
    let before = endpoint("/keep", 8) + &endpoint("/change", 8) + &endpoint("/gone", 8);
    let server = start(&recorder, &before).await;
    let client = server.client();
    assert_eq!(client.send(job("/keep", "k1")).await.status, StatusCode::OK);
    let kept = server.endpoint("/keep");

    let after = endpoint("/keep", 8) + &endpoint("/change", 4) + &endpoint("/new", 8);
    let summary = server.reload(&after);
    assert_eq!(
        (summary.kept, summary.started, summary.retired),
        (1, 2, 2),
        "{summary:?}"
    );
    assert!(!summary.server_changed);

    assert!(Arc::ptr_eq(&kept, &server.endpoint("/keep")), "same queue");
    assert_eq!(client.send(job("/keep", "k2")).await.status, StatusCode::OK);
    let c = server.counters("/keep");
    assert_eq!((c.admitted, c.completed), (2, 2), "the counters continue");
    assert_eq!(client.send(job("/new", "n1")).await.status, StatusCode::OK);
    assert_eq!(server.status_of("/change").queue_capacity, 4);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_endpoint_gets_a_fresh_queue_and_the_old_one_runs_what_it_admitted() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, &endpoint("/change", 8)).await;
    let client = server.client();

    let held = client.spawn(held_job("/change", "old-held"));
    recorder.gate().wait_arrived(1).await;
    let mut queued = Vec::new();
    for i in 0..2 {
        let id = format!("old-queued-{i}");
        queued.push((id.clone(), client.spawn(job("/change", &id))));
        server.wait_queued("/change", i + 1).await;
    }
    let old = server.endpoint("/change");

    let summary = server.reload(&endpoint("/change", 4));
    assert_eq!((summary.kept, summary.started, summary.retired), (0, 1, 1));
    let fresh = server.endpoint("/change");
    assert!(
        !Arc::ptr_eq(&old, &fresh),
        "a changed endpoint kept its queue"
    );
    assert!(old.admission().is_closed(), "the old queue still admits");
    assert_eq!(fresh.admission().queue_capacity(), 4);
    assert_eq!(fresh.counters().admitted, 0);
    assert_eq!(server.status_json().await["draining_endpoints"], 1);

    // New requests go to the fresh queue and its own executor, past the held old one.
    let reply = client.send(job("/change", "new-0")).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "new-0".into())
    );
    assert_eq!(fresh.counters().admitted, 1);

    recorder.gate().release();
    let held = within("the held old job", held).await.unwrap();
    assert_eq!(
        (held.status, held.text()),
        (StatusCode::OK, "old-held".into())
    );
    for (id, reply) in queued {
        let reply = within("a job queued on the old endpoint", reply)
            .await
            .unwrap();
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, id));
    }
    let c = old.counters();
    assert_eq!(
        (c.admitted, c.completed),
        (3, 3),
        "nothing admitted was lost"
    );
    wait_until("the old endpoint stops", || old.is_stopped()).await;
    assert_eq!(server.status_json().await["draining_endpoints"], 0);
    assert_eq!(
        recorder.ids(),
        ["new-0", "old-held", "old-queued-0", "old-queued-1"]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_endpoint_answers_404_and_finishes_its_running_job() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, &(endpoint("/stay", 8) + &endpoint("/gone", 8))).await;
    let client = server.client();

    let held = client.spawn(held_job("/gone", "held"));
    recorder.gate().wait_arrived(1).await;
    let gone = server.endpoint("/gone");
    let summary = server.reload(&endpoint("/stay", 8));
    assert_eq!((summary.kept, summary.started, summary.retired), (1, 0, 1));

    assert_eq!(
        client.send(job("/gone", "late")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client.send(job("/stay", "stay")).await.status,
        StatusCode::OK
    );
    let status = server.status_json().await;
    assert!(status["endpoints"]["/gone"].is_null(), "{status}");

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    wait_until("the removed endpoint stops", || gone.is_stopped()).await;
    assert!(!recorder.ids().contains(&"late".to_string()));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_cannot_be_built_changes_nothing() {
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, &endpoint("/work", 8)).await;
    let before = server.endpoint("/work");

    let unknown = endpoint("/work", 4) + "\n[[endpoint]]\npath = \"/x\"\nbuiltin = \"nope\"\n";
    let refused = server.try_reload(&unknown).expect_err("an unknown builtin");
    assert!(refused.to_string().contains("nope"), "{refused}");

    assert!(Arc::ptr_eq(&before, &server.endpoint("/work")));
    assert!(!before.admission().is_closed());
    assert_eq!(server.post("/work", "").await.status, StatusCode::OK);
    assert_eq!(server.post("/x", "").await.status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

/// The real binary, killed if the test ends before it exits; its stderr collected line by line.
struct Binary {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Binary {
    fn start(config: &std::path::Path, addr: std::net::SocketAddr) -> Binary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_fiddler_crab"))
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg(addr.to_string())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the binary");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stderr.take().expect("stderr piped");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        Binary { child, stderr }
    }

    fn logged(&self, words: &str) -> bool {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(words))
    }

    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    fn signal(&self, signal: Signal) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, signal).expect("signal the binary");
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_refuses_an_invalid_config_on_sighup_and_applies_a_valid_one() {
    let dir = TempDir::new("sighup");
    let ping = "[[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n";
    let file = dir.write("serve.toml", ping);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut binary = Binary::start(&file, addr);
    let client = Client { addr };
    let deadline = Instant::now() + support::PATIENCE;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = binary.child.try_wait().unwrap() {
            panic!(
                "the binary exited before listening: {status}\n{}",
                binary.log()
            );
        }
        assert!(Instant::now() < deadline, "the binary never listened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.get("/ping").await.text(), "pong\n");

    // Invalid: a queue of 0, and an /echo that must not appear.
    std::fs::write(
        &file,
        format!("{ping}queue = 0\n[[endpoint]]\npath = \"/echo\"\nbuiltin = \"echo\"\n"),
    )
    .unwrap();
    binary.signal(Signal::SIGHUP);
    wait_until("the refusal is logged", || {
        binary.logged("config reload refused")
    })
    .await;
    assert!(
        binary.logged("queue"),
        "the refusal names the key:\n{}",
        binary.log()
    );
    assert_eq!(client.get("/ping").await.text(), "pong\n");
    assert_eq!(client.get("/echo").await.status, StatusCode::NOT_FOUND);

    // Valid: /echo is served from the next request on.
    std::fs::write(
        &file,
        format!("{ping}[[endpoint]]\npath = \"/echo\"\nbuiltin = \"echo\"\n"),
    )
    .unwrap();
    binary.signal(Signal::SIGHUP);
    wait_until("the reload is logged", || binary.logged("config reloaded")).await;
    let echoed = client
        .send(support::request("POST", "/echo", "hello"))
        .await;
    assert_eq!(
        (echoed.status, echoed.text()),
        (StatusCode::OK, "hello".into())
    );
    assert_eq!(client.get("/ping").await.text(), "pong\n");

    binary.signal(Signal::SIGTERM);
    let deadline = Instant::now() + support::PATIENCE;
    let status = loop {
        if let Some(status) = binary.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", binary.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_body_was_being_read_when_its_endpoint_was_retired_goes_to_its_successor() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // What the reload puts at the path, and the answer the request gets: run by the new
    // endpoint, or refused as it would be had it come after the reload (never `503`).
    let cases = [
        (endpoint("/change", 4), "200", "slow"),
        (
            endpoint("/change", 4) + "methods = [\"GET\"]\n",
            "405",
            "method not allowed here\n",
        ),
        (
            endpoint("/change", 4) + "max_body_bytes = 4\n",
            "413",
            "request body larger than max_body_bytes\n",
        ),
        (endpoint("/other", 4), "404", "no endpoint at this path\n"),
    ];
    for (reloaded, status, ends) in cases {
        let recorder = Recorder::new(Duration::ZERO);
        let server = start(&recorder, &endpoint("/change", 8)).await;
        let old = server.endpoint("/change");
        // The head and half the body: routed to the endpoint, its body being read.
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"POST /change HTTP/1.1\r\nhost: t\r\nx-id: slow\r\ncontent-length: 8\r\n\
                  connection: close\r\n\r\nhalf",
            )
            .await
            .unwrap();
        // Time for the server to read the head and start on the body (no counter shows that; on
        // a machine too slow for it the request is routed after the reload, and gets the same
        // answer).
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A reload retires the endpoint (its queue changes) while the body is on its way.
        let summary = server.reload(&reloaded);
        assert_eq!((summary.started, summary.retired), (1, 1));
        assert!(old.admission().is_closed());
        stream.write_all(b"more").await.unwrap();
        let mut answer = Vec::new();
        within("the answer", stream.read_to_end(&mut answer))
            .await
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(answer.ends_with(ends), "{answer}");
        // The retired endpoint admitted nothing; the new one ran it, or nothing did.
        assert_eq!(old.counters().admitted, 0);
        let ran: &[&str] = if status == "200" { &["slow"] } else { &[] };
        assert_eq!(recorder.ids(), ran, "{status}");
        server.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_endpoint_gives_a_request_it_cannot_queue_back_whole() {
    use common::admission::Outcome;
    use common::handler::JobRequest;
    let recorder = Recorder::new(Duration::ZERO);
    let server = start(&recorder, &endpoint("/change", 8)).await;
    let old = server.endpoint("/change");
    server.reload(&endpoint("/change", 4));
    assert!(old.admission().is_retired());
    // As if routed to it just before the reload, and pushed just after.
    let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let mut headers = hyper::HeaderMap::new();
    headers.insert("x-id", "late".parse().unwrap());
    let request = JobRequest {
        method: hyper::Method::POST,
        uri: "/change?q=1".parse().unwrap(),
        version: hyper::Version::HTTP_11,
        headers,
        body: bytes::Bytes::from_static(b"body"),
        remote_addr: addr,
        local_addr: addr,
        client: Default::default(),
        upgrade: Default::default(),
        body_stream: Default::default(),
    };
    let Outcome::Retired(back) = old.admission().try_admit(request, false) else {
        panic!("a retired endpoint did not give the request back");
    };
    assert_eq!(back.uri, "/change?q=1");
    assert_eq!(back.headers["x-id"], "late");
    assert_eq!(&back.body[..], b"body");
    assert_eq!(old.counters().admitted, 0, "never admitted there");
    server.shutdown().await;
}
