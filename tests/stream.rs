//! The streamed-body contract through a real server: a handler's producer runs on the executor
//! thread in the job's running slot; its chunks reach the client as they are produced (HTTP/1
//! chunked, HTTP/2 DATA frames); a slow reader blocks the producer at a bound; a client gone or a
//! producer failing mid-stream is counted once, when the stream ends, and a failure truncates the
//! body instead of ending it cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use bytes::Bytes;
use common::body::{ResponseBody, StreamError};
use common::handler::{Handler, HandlerError, JobRequest, JobResponse};
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::{next_chunk, registry, request, wait_until, within, Gate, TestServer};
use tokio::net::TcpStream;

/// Streams `x-chunks` chunks (`chunk-0\n`, ...; or `x-size` bytes each), waiting at its gate
/// before every chunk after the first when `x-gated` is set; fails after `x-fail-after` chunks.
/// Counts chunks it tried to send and chunks sent.
#[derive(Default)]
struct Ticker {
    gate: Arc<Gate>,
    attempted: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    ended: Arc<std::sync::Mutex<Vec<Result<(), StreamError>>>>,
}

fn number(req: &JobRequest, name: &str) -> Option<usize> {
    req.headers.get(name)?.to_str().ok()?.parse().ok()
}

impl Handler for Ticker {
    fn handle(&self, req: &JobRequest) -> Result<JobResponse, HandlerError> {
        let chunks = number(req, "x-chunks").unwrap_or(3);
        let size = number(req, "x-size");
        let fail_after = number(req, "x-fail-after");
        let gated = req.headers.contains_key("x-gated");
        let (gate, attempted, sent, ended) = (
            self.gate.clone(),
            self.attempted.clone(),
            self.sent.clone(),
            self.ended.clone(),
        );
        let big = Bytes::from(vec![b'x'; size.unwrap_or(0)]);
        let body = ResponseBody::stream(move |sink| {
            let result = (|| {
                for n in 0..chunks {
                    if gated && n > 0 {
                        gate.hold(&format!("chunk-{n}"));
                    }
                    if fail_after == Some(n) {
                        return Err(StreamError::Failed("the producer failed".into()));
                    }
                    let chunk = match size {
                        Some(_) => big.clone(),
                        None => Bytes::from(format!("chunk-{n}\n")),
                    };
                    attempted.fetch_add(1, Ordering::SeqCst);
                    sink.send(chunk)?;
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            })();
            ended.lock().unwrap().push(result.clone());
            result
        });
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        Ok(resp)
    }
}

const TOML: &str = r#"
[[endpoint]]
path = "/stream"
mode = "jellyfish"
workers = 1
builtin = "ticker"
queue = 8
"#;

async fn start() -> (TestServer, Arc<Ticker>) {
    let ticker = Arc::new(Ticker::default());
    let server = TestServer::start_with(TOML, &registry("ticker", ticker.clone())).await;
    (server, ticker)
}

fn stream_request(headers: &[(&str, &str)]) -> hyper::Request<http_body_util::Full<Bytes>> {
    let mut req = request("GET", "/stream", Bytes::new());
    for (name, value) in headers {
        req.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_str(value).unwrap(),
        );
    }
    req
}

/// Send `req` on a fresh HTTP/1.1 connection: the response head, its body still streaming.
async fn open_h1(
    server: &TestServer,
    req: hyper::Request<http_body_util::Full<Bytes>>,
) -> Response<hyper::body::Incoming> {
    server.client().open(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_reaches_the_client_chunk_by_chunk_as_it_is_produced() {
    let (server, ticker) = start().await;
    let resp = open_h1(
        &server,
        stream_request(&[("x-chunks", "3"), ("x-gated", "1")]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()
            .get("transfer-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("chunked")
    );
    let mut body = resp.into_body();
    // Chunk 1 arrives while the producer waits at the gate for chunk 2.
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-0\n");
    ticker.gate.wait_arrived(1).await;
    assert_eq!(ticker.sent.load(Ordering::SeqCst), 1);
    ticker.gate.release();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-1\n");
    ticker.gate.release();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-2\n");
    assert!(next_chunk(&mut body).await.is_none(), "a clean end");
    wait_until("the stream is counted", || {
        server.counters("/stream").completed == 1
    })
    .await;
    let c = server.counters("/stream");
    assert_eq!((c.admitted, c.answered()), (1, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_holds_its_running_slot_until_it_ends() {
    let (server, ticker) = start().await;
    let first = open_h1(
        &server,
        stream_request(&[("x-chunks", "2"), ("x-gated", "1")]),
    )
    .await;
    ticker.gate.wait_arrived(1).await;
    // One worker: a second request waits in the queue while the first stream is produced.
    let client = server.client();
    let second = client.spawn(stream_request(&[("x-chunks", "1")]));
    server.wait_queued("/stream", 1).await;
    assert_eq!(server.status_of("/stream").running, 1);
    ticker.gate.release();
    let body = within("the first body", first.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "chunk-0\nchunk-1\n");
    let second = within("the second reply", second).await.unwrap();
    assert_eq!(second.text(), "chunk-0\n");
    wait_until("both streams are counted", || {
        server.counters("/stream").completed == 2
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_blocks_the_producer_at_a_bound_and_completes_once_it_reads() {
    const CHUNK: usize = 64 * 1024;
    const CHUNKS: usize = 1600; // 100 MiB: far more than every buffer on the way together
    let (server, ticker) = start().await;
    let chunks = CHUNKS.to_string();
    let size = CHUNK.to_string();
    let resp = open_h1(
        &server,
        stream_request(&[("x-chunks", &chunks), ("x-size", &size)]),
    )
    .await;
    // The client reads nothing: the producer fills the channel, hyper's buffer and the sockets'
    // buffers, then blocks in `send`, its count standing still.
    let mut last = usize::MAX;
    wait_until("the producer blocks in send", || {
        let (sent, attempted) = (
            ticker.sent.load(Ordering::SeqCst),
            ticker.attempted.load(Ordering::SeqCst),
        );
        let blocked = attempted == sent + 1 && sent == last;
        last = sent;
        blocked
    })
    .await;
    let blocked_at = ticker.sent.load(Ordering::SeqCst);
    assert!(
        blocked_at * CHUNK < 48 * 1024 * 1024,
        "{blocked_at} chunks produced for a reader that reads nothing"
    );
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(chunk) = next_chunk(&mut body).await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, CHUNK * CHUNKS);
    assert_eq!(ticker.sent.load(Ordering::SeqCst), CHUNKS);
    wait_until("the stream is counted", || {
        server.counters("/stream").completed == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_stops_the_producer_and_is_counted_once() {
    let (server, ticker) = start().await;
    let resp = open_h1(
        &server,
        stream_request(&[("x-chunks", "3"), ("x-gated", "1")]),
    )
    .await;
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-0\n");
    ticker.gate.wait_arrived(1).await;
    // The client leaves; the connection closes.
    drop(body);
    server.wait_open_connections(0).await;
    ticker.gate.open();
    wait_until("the producer ends", || {
        !ticker.ended.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        ticker.ended.lock().unwrap().as_slice(),
        [Err(StreamError::ClientGone)]
    );
    wait_until("the stream is counted", || {
        server.counters("/stream").client_gone == 1
    })
    .await;
    let c = server.counters("/stream");
    assert_eq!((c.admitted, c.completed, c.answered()), (1, 0, 1));
    // The server goes on.
    let reply = server
        .client()
        .send(stream_request(&[("x-chunks", "1")]))
        .await;
    assert_eq!(reply.text(), "chunk-0\n");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_failing_mid_stream_truncates_the_body() {
    let (server, ticker) = start().await;
    let resp = open_h1(
        &server,
        stream_request(&[("x-chunks", "3"), ("x-fail-after", "1"), ("x-gated", "1")]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK, "the head was already sent");
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-0\n");
    ticker.gate.wait_arrived(1).await;
    ticker.gate.release();
    match next_chunk(&mut body).await {
        // Cut off in the middle of the chunked body: never the final zero-length chunk.
        Some(Err(_)) => {}
        other => panic!("a truncated body ends in an error, not {other:?}"),
    }
    wait_until("the stream is counted", || {
        server.counters("/stream").failed == 1
    })
    .await;
    let c = server.counters("/stream");
    assert_eq!((c.admitted, c.completed, c.answered()), (1, 0, 1));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_data_frames_as_they_are_produced() {
    let (server, ticker) = start().await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut req = stream_request(&[("x-chunks", "2"), ("x-gated", "1")]);
    *req.version_mut() = hyper::Version::HTTP_2;
    *req.uri_mut() = format!("http://{}/stream", server.addr).parse().unwrap();
    let resp = within("the response head", sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-0\n");
    ticker.gate.wait_arrived(1).await;
    ticker.gate.release();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-1\n");
    let end = next_chunk(&mut body).await;
    assert!(end.is_none(), "{end:?}");
    wait_until("the stream is counted", || {
        server.counters("/stream").completed == 1
    })
    .await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_pausing_longer_than_the_connection_idle_timeout_keeps_its_connection() {
    let ticker = Arc::new(Ticker::default());
    let toml = format!("[server]\nidle_timeout_ms = 100\n{TOML}");
    let server = TestServer::start_with(&toml, &registry("ticker", ticker.clone())).await;
    let resp = open_h1(
        &server,
        stream_request(&[("x-chunks", "2"), ("x-gated", "1")]),
    )
    .await;
    let mut body = resp.into_body();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-0\n");
    ticker.gate.wait_arrived(1).await;
    // Give a sweep that took the paused stream for an idle connection every chance to close it
    // (this only ever fails a broken sweep, never a slow machine).
    tokio::time::sleep(Duration::from_millis(500)).await;
    ticker.gate.release();
    assert_eq!(next_chunk(&mut body).await.unwrap().unwrap(), "chunk-1\n");
    assert!(next_chunk(&mut body).await.is_none(), "a clean end");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_reader_that_keeps_its_window_shut_is_closed_at_the_send_timeout() {
    let ticker = Arc::new(Ticker::default());
    let toml = format!("[server]\nsend_timeout_ms = 500\n{TOML}");
    let server = TestServer::start_with(&toml, &registry("ticker", ticker.clone())).await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 0, never a WINDOW_UPDATE; h2 answers PINGs.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let closed = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = hyper::Request::get(format!("http://{}/stream", server.addr))
        .header("x-chunks", "64")
        .header("x-size", "65536")
        .body(())
        .unwrap();
    let (answer, _) = client.send_request(req, true).unwrap();
    let head = within("the stream's head", answer).await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    // The idle timeout is 60 s: only the send deadline closes it, and the producer learns it.
    within("the connection closed by the server", closed)
        .await
        .unwrap();
    wait_until("the producer ends", || {
        !ticker.ended.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        ticker.ended.lock().unwrap().as_slice(),
        [Err(StreamError::ClientGone)]
    );
    wait_until("every unsent byte released", || {
        server.app.unsent_bytes() == 0
    })
    .await;
    drop(head);
    server.shutdown().await;
}
