//! Exec endpoints with `stream = true`: stdout reaches the client as the program writes it, after
//! the CGI headers; a client gone mid-stream kills the process group; the idle timeout and the
//! output cap cut a stream short (truncated, never a clean end); a program failing before its
//! head is still answered 502. Order is proven with a FIFO the test writes to, never a clock.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use hyper::StatusCode;
use support::binary::Binary;
use support::{
    is_dead, make_fifo, next_chunk, release_fifo, request, wait_until, within, Client, TempDir,
    TestServer,
};

/// A streaming `[[endpoint]]` at `path` running `script` with `sh -c`, plus `extra` exec lines.
fn streaming(path: &str, script: &str, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"{path}\"\nmode = \"jellyfish\"\nworkers = 2\n\
         expected_wait_admission = false\n\
         [endpoint.exec]\ncommand = [\"sh\", \"-c\", '''{script}''']\nstream = true\n{extra}\n\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_line_reaches_the_client_as_the_program_prints_it_after_the_cgi_headers() {
    let dir = TempDir::new("exec-stream-order");
    // One FIFO per wait: see `release_fifo`.
    let gates = [make_fifo(&dir, "gate1"), make_fifo(&dir, "gate2")];
    let script = format!(
        "printf 'Content-Type: text/event-stream\\r\\nX-Run: 1\\r\\n\\r\\n'; echo 'data: one'; echo; \
         read x < {gate1}; echo 'data: two'; echo; read x < {gate2}; echo 'data: three'; echo",
        gate1 = gates[0].display(),
        gate2 = gates[1].display()
    );
    let server = TestServer::start(&streaming("/sse", &script, "output = \"cgi\"")).await;
    let resp = server
        .client()
        .open(request("GET", "/sse", Bytes::new()))
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["x-run"], "1");
    assert_eq!(resp.headers()["transfer-encoding"], "chunked");
    let mut body = resp.into_body();
    let mut events = Vec::new();
    let mut text = String::new();
    // Event 1 arrives while the program waits at the first FIFO for the test.
    let mut gates = gates.iter();
    for released in 0..3 {
        while !text.contains("\n\n") {
            let chunk = next_chunk(&mut body).await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        let (event, rest) = text.split_once("\n\n").unwrap();
        events.push(event.strip_prefix("data: ").unwrap().to_string());
        text = rest.to_string();
        assert_eq!(events.len(), released + 1, "{events:?}");
        if let Some(gate) = gates.next() {
            release_fifo(gate).await;
        }
    }
    assert_eq!(events, ["one", "two", "three"]);
    assert!(next_chunk(&mut body).await.is_none(), "a clean end");
    wait_until("the stream is counted", || {
        server.counters("/sse").completed == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_kills_the_program_and_the_server_goes_on() {
    let dir = TempDir::new("exec-stream-gone");
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > {pid}; echo line1; exec sleep 1000",
        pid = pid_file.display()
    );
    let toml = streaming("/gone", &script, "") + &streaming("/ok", "echo fine", "");
    let server = TestServer::start(&toml).await;
    let resp = server
        .client()
        .open(request("GET", "/gone", Bytes::new()))
        .await;
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "line1\n");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!is_dead(pid), "the program runs while the client reads");
    drop(body);
    wait_until("the program is killed", || is_dead(pid)).await;
    wait_until("the stream is counted as client gone", || {
        server.counters("/gone").client_gone == 1
    })
    .await;
    let c = server.counters("/gone");
    assert_eq!((c.admitted, c.completed, c.answered()), (1, 0, 1));
    assert_eq!(server.get("/ok").await.text(), "fine\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_and_the_output_cap_cut_a_stream_short() {
    let dir = TempDir::new("exec-stream-limits");
    let gate = make_fifo(&dir, "gate");
    let toml = streaming(
        "/idle",
        "echo line1; exec sleep 1000",
        "stream_idle_timeout_ms = 300",
    ) + &streaming(
        "/big",
        &format!(
            "echo line1; read x < {}; head -c 100000 /dev/zero",
            gate.display()
        ),
        "max_output_bytes = 1000",
    );
    let server = TestServer::start(&toml).await;
    for path in ["/idle", "/big"] {
        let resp = server
            .client()
            .open(request("GET", path, Bytes::new()))
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "the head went out first");
        let mut body = resp.into_body();
        assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "line1\n");
        if path == "/big" {
            release_fifo(&gate).await;
        }
        let mut received = 6;
        let cut = loop {
            match next_chunk(&mut body).await {
                Some(Ok(chunk)) => received += chunk.len(),
                Some(Err(_)) => break true,
                None => break false,
            }
        };
        assert!(cut, "{path}: the body is truncated, not cleanly ended");
        assert!(received <= 1000, "{path}: {received} bytes passed the cap");
    }
    wait_until("both streams are counted", || {
        server.counters("/idle").timed_out == 1 && server.counters("/big").failed == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_failing_before_its_head_is_answered_502_and_a_short_one_whole() {
    let toml = streaming("/fail", "echo oops >&2; exit 3", "")
        + &streaming(
            "/short",
            "printf 'Status: 201\\n\\nmade'",
            "output = \"cgi\"",
        );
    let server = TestServer::start(&toml).await;
    let reply = server.get("/fail").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().contains("status 3"), "{reply:?}");
    let reply = server.get("/short").await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.text(), "made");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_line_of_a_stream_is_written_when_it_ends_with_its_bytes_and_completion() {
    let dir = TempDir::new("exec-stream-log");
    let toml = streaming("/done", "echo line1; echo line2", "")
        + &streaming("/gone", "echo line1; exec sleep 1000", "");
    let config = dir.write("serve.toml", &toml);
    let binary = Binary::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
    ]);
    let serving = binary.wait_logged("\"serving\"").await;
    let serving: serde_json::Value = serde_json::from_str(&serving).unwrap();
    let addr = serving["fields"]["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let client = Client { addr };
    assert_eq!(client.get("/done").await.text(), "line1\nline2\n");
    let resp = client.open(request("GET", "/gone", Bytes::new())).await;
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "line1\n");
    drop(body);
    for (path, bytes, completed) in [("/done", 12, true), ("/gone", 6, false)] {
        let access_line = || {
            binary
                .log()
                .lines()
                .find(|l| {
                    l.contains("fiddler_crab::access")
                        && l.contains(&format!("\"path\":\"{path}\""))
                })
                .map(str::to_string)
        };
        wait_until("the stream's access line", || access_line().is_some()).await;
        let line = access_line().unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["target"], "fiddler_crab::access", "{line}");
        assert_eq!(event["fields"]["bytes"], bytes, "{line}");
        assert_eq!(event["fields"]["completed"], completed, "{line}");
    }
    assert!(binary.stop().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_blocks_the_program_at_a_bound_then_it_completes() {
    const BLOCK: usize = 64 * 1024;
    const BLOCKS: usize = 1600; // 100 MiB: far more than every buffer on the way together
    let dir = TempDir::new("exec-stream-slow");
    let count = dir.path().join("count");
    // The program counts the 64 KiB blocks it has written, in a file the test reads.
    let program = format!(
        "import sys\nb = b'x' * {BLOCK}\nfor i in range({BLOCKS}):\n    sys.stdout.buffer.write(b)\n    \
         sys.stdout.buffer.flush()\n    open('{count}', 'w').write(str(i + 1))\n",
        count = count.display()
    );
    let script = dir.write("writer.py", &program);
    let toml = format!(
        "[[endpoint]]\npath = \"/big\"\nexpected_wait_admission = false\n\
         [endpoint.exec]\ncommand = [\"python3\", \"{}\"]\nstream = true\n\
         max_output_bytes = 200000000\n",
        script.display()
    );
    let server = TestServer::start(&toml).await;
    let resp = server
        .client()
        .open(request("GET", "/big", Bytes::new()))
        .await;
    let written = || -> usize {
        std::fs::read_to_string(&count)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    };
    // The client reads nothing: the program's writes block once every buffer on the way is
    // full, and its count stands still (20 looks in a row), short of the whole output.
    let (mut last, mut still) = (usize::MAX, 0);
    wait_until("the program blocks", || {
        let now = written();
        still = if now == last && now > 0 { still + 1 } else { 0 };
        last = now;
        still >= 20 || now == BLOCKS
    })
    .await;
    let blocked_at = written();
    assert!(
        blocked_at < BLOCKS && blocked_at * BLOCK < 48 * 1024 * 1024,
        "{blocked_at} blocks written for a client that reads nothing"
    );
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(chunk) = next_chunk(&mut body).await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, BLOCK * BLOCKS);
    wait_until("the stream is counted", || {
        server.counters("/big").completed == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_stream_open_kills_the_program_and_ends_the_stream_cut_short() {
    let dir = TempDir::new("exec-stream-shutdown");
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > {pid}; echo line1; exec sleep 1000",
        pid = pid_file.display()
    );
    let toml = format!(
        "[server]\nshutdown_grace_ms = 100\n{}",
        streaming("/long", &script, "")
    );
    let server = TestServer::start(&toml).await;
    let resp = server
        .client()
        .open(request("GET", "/long", Bytes::new()))
        .await;
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "line1\n");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let stopped = tokio::spawn(server.shutdown());
    assert!(
        matches!(next_chunk(&mut body).await, Some(Err(_))),
        "the stream is cut short, not cleanly ended"
    );
    within("the server to stop", stopped).await.unwrap();
    assert!(is_dead(pid), "the program was killed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_does_not_bound_the_wait_for_the_first_bytes() {
    let dir = TempDir::new("exec-stream-first");
    let gate = make_fifo(&dir, "gate");
    let script = format!("read x < {}; echo first", gate.display());
    let server =
        TestServer::start(&streaming("/slow", &script, "stream_idle_timeout_ms = 100")).await;
    let reply = server.client().spawn(request("GET", "/slow", Bytes::new()));
    // Give a wrongly applied idle timeout every chance to fire (this only ever fails a broken
    // limit, never a slow machine), then let the program write.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    release_fifo(&gate).await;
    let reply = within("the answer", reply).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.text(), "first\n");
    server.shutdown().await;
}
