//! Shutdown: the server stops accepting, the running job finishes and its client gets the answer,
//! queued jobs are answered 503, a child still running after the grace period is killed, `run`
//! returns; the real binary exits 0 on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use hyper::StatusCode;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{
    held_job, is_dead, job, read_to_close, registry, wait_until, within, Client, Recorder, TempDir,
    TestServer,
};

const WORK: &str = r#"
[server]
shutdown_grace_ms = 10000

[[endpoint]]
path = "/work"
builtin = "recorder"
queue = 8
expected_wait_admission = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_job_finishes_and_queued_jobs_get_503() {
    let recorder = Recorder::new(Duration::ZERO);
    let mut server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();
    let endpoint = server.endpoint("/work");

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued: Vec<_> = (0..3)
        .map(|i| client.spawn(job("/work", &format!("queued-{i}"))))
        .collect();
    server.wait_queued("/work", 3).await;

    server.begin_shutdown();
    wait_until("the queue is closed", || endpoint.admission().is_closed()).await;
    recorder.gate().release();

    let held = within("the held job's answer", held).await.unwrap();
    assert_eq!((held.status, held.text()), (StatusCode::OK, "held".into()));
    for reply in queued {
        let reply = within("a queued job's answer", reply).await.unwrap();
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    }
    let addr = server.addr;
    server.join().await;

    assert_eq!(recorder.ids(), ["held"], "a queued job ran during shutdown");
    let c = endpoint.counters();
    assert_eq!((c.admitted, c.completed, c.failed), (4, 1, 3));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener still accepts after run returned"
    );
}

/// `docs/ARCHITECTURE.md` and `config/reference.toml` promise that queued jobs are answered 503
/// "at once" on shutdown, not after the running job ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_get_503_while_the_running_job_still_runs() {
    let recorder = Recorder::new(Duration::ZERO);
    let mut server = TestServer::start_with(WORK, &registry("recorder", recorder.clone())).await;
    let client = server.client();

    let held = client.spawn(held_job("/work", "held"));
    recorder.gate().wait_arrived(1).await;
    let queued = client.spawn(job("/work", "queued"));
    server.wait_queued("/work", 1).await;

    server.begin_shutdown();
    let shed = within("the queued job's 503 while the crab is held", queued).await;
    assert_eq!(shed.unwrap().status, StatusCode::SERVICE_UNAVAILABLE);

    recorder.gate().open();
    assert_eq!(held.await.unwrap().status, StatusCode::OK);
    server.join().await;
}

/// The drain waits for the last connection, not for a timer: with a grace period of an hour, `run`
/// is still running while one request is in flight, and returns right after its response is
/// written and its (keep-alive) connection closed, well within the test's patience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_as_soon_as_the_last_connection_closes() {
    let recorder = Recorder::new(Duration::ZERO);
    let toml = WORK.replace("shutdown_grace_ms = 10000", "shutdown_grace_ms = 3600000");
    let mut server = TestServer::start_with(&toml, &registry("recorder", recorder.clone())).await;
    let endpoint = server.endpoint("/work");
    // Keep-alive: only the drain closes this connection after its response.
    let in_flight = server
        .client()
        .open_raw(
            b"POST /work HTTP/1.1\r\nHost: fiddler.test\r\nContent-Length: 0\r\n\
              x-id: last\r\nx-hold: 1\r\n\r\n",
        )
        .await;
    recorder.gate().wait_arrived(1).await;

    server.begin_shutdown();
    wait_until("the queue is closed", || endpoint.admission().is_closed()).await;
    assert!(
        !server.has_stopped(),
        "run returned with a request in flight"
    );
    recorder.gate().open();
    let response = String::from_utf8_lossy(&read_to_close(in_flight).await).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response:?}");
    assert!(response.ends_with("last"), "{response:?}");
    server.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_stops_at_once() {
    let server = TestServer::start("[[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n").await;
    assert_eq!(server.get("/ping").await.status, StatusCode::OK);
    server.shutdown().await;
}

/// Past the grace period the server SIGKILLs every child in its registry (its own: each server
/// keeps one), and every child started afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_still_running_after_the_grace_period_is_killed() {
    let dir = TempDir::new("grace");
    let d = dir.path().display();
    let toml = format!(
        r#"
[server]
shutdown_grace_ms = 300

[[endpoint]]
path = "/slow"
[endpoint.exec]
command = ["sh", "-c", "echo $$ > {d}/leader; sleep 1000 & echo $! > {d}/grandchild; wait"]
timeout_ms = 600000
"#
    );
    let mut server = TestServer::start(&toml).await;
    let running = server.client().spawn(job("/slow", "slow"));
    let pid = |name: &str| {
        std::fs::read_to_string(dir.path().join(name))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
    };
    wait_until("the script wrote both pids", || {
        pid("leader").is_some() && pid("grandchild").is_some()
    })
    .await;

    server.begin_shutdown();
    let reply = within("the killed job's answer", running).await.unwrap();
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    server.join().await;

    for name in ["leader", "grandchild"] {
        let pid = pid(name).unwrap();
        wait_until(&format!("the {name} ({pid}) is dead"), || is_dead(pid)).await;
    }
}

/// A port that was free a moment ago (the binary must be told a real port to be reachable).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_until_sigterm_and_exits_0() {
    let dir = TempDir::new("binary");
    let config = dir.write(
        "serve.toml",
        "[server]\nshutdown_grace_ms = 2000\n\n[[endpoint]]\npath = \"/ping\"\nbuiltin = \"ping\"\n",
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_fiddler_crab"))
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the binary");

    let client = Client { addr };
    let deadline = Instant::now() + support::PATIENCE;
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        if let Some(status) = child.try_wait().expect("poll the child") {
            panic!("the binary exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the binary never listened on {addr}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.get("/ping").await.text(), "pong\n");

    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).expect("send SIGTERM");
    let deadline = Instant::now() + support::PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "the binary did not exit within {:?} of SIGTERM",
                support::PATIENCE
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
}
