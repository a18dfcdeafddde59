//! WebSocket upgrades through an upstream endpoint, against a minimal WebSocket echo upstream
//! written here (the handshake, then unmasked text frames echoing the client's masked ones), on
//! real sockets: a message and its echo pass through; with `workers = 1` a second session waits in
//! the queue (no second upstream session) until the first closes; closing the client closes the
//! upstream side and frees the slot; a silent session is closed at `websocket_idle_timeout_ms`;
//! shutdown closes open sessions; counters add up; a session to an `https://` upstream goes
//! through TLS.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::{wait_until, within, TestServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What the echo upstream counts.
#[derive(Debug, Default)]
struct Sessions {
    /// Handshakes answered `101`.
    opened: AtomicUsize,
    /// Sessions whose connection the proxy closed.
    closed: AtomicUsize,
    /// Requests that did not ask for an upgrade.
    plain: AtomicUsize,
}

impl Sessions {
    fn open_now(&self) -> usize {
        self.opened.load(Ordering::SeqCst) - self.closed.load(Ordering::SeqCst)
    }
}

/// A WebSocket echo server: answers a handshake `101` (its `Sec-WebSocket-Accept` is a fixed
/// token, which the test's client only expects back), then echoes each text frame unmasked until
/// the connection closes.
async fn echo_upstream() -> (SocketAddr, Arc<Sessions>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(Sessions::default());
    let counts = sessions.clone();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(echo_session(stream, counts.clone()));
        }
    });
    (addr, sessions, task)
}

async fn echo_session<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, sessions: Arc<Sessions>) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let lower = head.to_ascii_lowercase();
    if !(lower.contains("upgrade: websocket") && lower.contains("connection: upgrade")) {
        sessions.plain.fetch_add(1, Ordering::SeqCst);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nplain")
            .await;
        return;
    }
    stream
        .write_all(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: test-accept\r\n\r\n",
        )
        .await
        .unwrap();
    sessions.opened.fetch_add(1, Ordering::SeqCst);
    while let Some(payload) = read_frame(&mut stream).await {
        if stream.write_all(&frame(&payload, None)).await.is_err() {
            break;
        }
    }
    sessions.closed.fetch_add(1, Ordering::SeqCst);
}

/// The request or response head, up to its blank line (`None` if the connection closed first).
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    Some(String::from_utf8(head).unwrap())
}

/// A final text frame with a short `payload`, masked with `mask` if given (a client's frames are).
fn frame(payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![0x81, payload.len() as u8];
    match mask {
        Some(mask) => {
            out[1] |= 0x80;
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// The payload of the next (short) frame, unmasked; `None` once the connection closed.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.ok()?;
    let len = usize::from(header[1] & 0x7f);
    assert!(len < 126, "only short frames here");
    let mask = if header[1] & 0x80 != 0 {
        let mut mask = [0u8; 4];
        stream.read_exact(&mut mask).await.ok()?;
        Some(mask)
    } else {
        None
    };
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some(payload)
}

/// A `jellyfish` upstream endpoint at `/ws` with `workers` slots.
fn config(addr: SocketAddr, workers: usize, extra: &str) -> String {
    format!(
        "[[endpoint]]\npath = \"/ws\"\nmode = \"jellyfish\"\nworkers = {workers}\nqueue = 8\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n\
         [endpoint.upstream]\nurl = \"http://{addr}\"\n{extra}\n"
    )
}

const HANDSHAKE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: fiddler.test\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

/// Send the handshake on a fresh connection.
async fn start_handshake(server: &TestServer) -> TcpStream {
    server.client().open_raw(HANDSHAKE).await
}

/// Read the answer to the handshake and check it is the upstream's `101`.
async fn switched(stream: &mut TcpStream) {
    let head = within("the 101", read_head(stream))
        .await
        .expect("an answer");
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(
        lower.contains("sec-websocket-accept: test-accept"),
        "{head}"
    );
}

/// Send `text` as a masked frame and read its echo.
async fn echo(stream: &mut TcpStream, text: &str) {
    stream
        .write_all(&frame(text.as_bytes(), Some([1, 2, 3, 4])))
        .await
        .unwrap();
    let back = within("the echo", read_frame(stream))
        .await
        .expect("an echo");
    assert_eq!(back, text.as_bytes());
}

/// Wait until the server closes `stream` (reads to its end).
async fn closed_by_server(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let _ = within("the close", stream.read_to_end(&mut rest)).await;
}

#[tokio::test]
async fn a_websocket_echo_passes_through_and_closing_the_client_closes_the_upstream_side() {
    let (addr, sessions, upstream) = echo_upstream().await;
    let server = TestServer::start(&config(addr, 2, "")).await;

    let mut ws = start_handshake(&server).await;
    switched(&mut ws).await;
    echo(&mut ws, "hello").await;
    echo(&mut ws, "again").await;
    assert_eq!(sessions.opened.load(Ordering::SeqCst), 1);
    // The session holds its connection's slot and its job's running slot.
    assert_eq!(server.app.open_connections(), 1);
    assert_eq!(server.status_of("/ws").running, 1);

    drop(ws);
    wait_until("the upstream side closed", || {
        sessions.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("the session counted", || {
        server.counters("/ws").completed == 1
    })
    .await;
    server.wait_open_connections(0).await;
    let c = server.counters("/ws");
    assert_eq!((c.admitted, c.completed, c.failed), (1, 1, 0));

    // A plain request on the same endpoint is still a plain request.
    let reply = server.get("/ws").await;
    assert_eq!(reply.text(), "plain");
    server.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn with_one_worker_a_second_session_waits_in_the_queue_until_the_first_closes() {
    let (addr, sessions, upstream) = echo_upstream().await;
    let server = TestServer::start(&config(addr, 1, "")).await;

    let mut first = start_handshake(&server).await;
    switched(&mut first).await;
    echo(&mut first, "one").await;

    // The second waits in the queue: no second upstream session while the first is open.
    let mut second = start_handshake(&server).await;
    server.wait_queued("/ws", 1).await;
    assert_eq!(sessions.opened.load(Ordering::SeqCst), 1);

    drop(first);
    switched(&mut second).await;
    echo(&mut second, "two").await;
    assert_eq!(sessions.opened.load(Ordering::SeqCst), 2);
    assert_eq!(
        sessions.open_now(),
        1,
        "the first session's upstream side is closed"
    );

    drop(second);
    wait_until("both sessions counted", || {
        server.counters("/ws").completed == 2
    })
    .await;
    wait_until("both upstream sides closed", || sessions.open_now() == 0).await;
    let c = server.counters("/ws");
    assert_eq!((c.admitted, c.completed, c.overflowed), (2, 2, 0));
    server.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn a_silent_session_is_closed_at_its_idle_timeout_and_counted_timed_out() {
    let (addr, sessions, upstream) = echo_upstream().await;
    let server = TestServer::start(&config(addr, 1, "websocket_idle_timeout_ms = 200")).await;

    let mut ws = start_handshake(&server).await;
    switched(&mut ws).await;
    echo(&mut ws, "then silence").await;
    closed_by_server(&mut ws).await;
    wait_until("the upstream side closed", || sessions.open_now() == 0).await;
    wait_until("the session counted", || {
        server.counters("/ws").timed_out == 1
    })
    .await;

    // The slot is free: the next session is served.
    let mut next = start_handshake(&server).await;
    switched(&mut next).await;
    echo(&mut next, "next").await;
    drop(next);
    wait_until("the next session counted", || {
        server.counters("/ws").completed == 1
    })
    .await;
    server.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn shutdown_closes_an_open_session() {
    let (addr, sessions, upstream) = echo_upstream().await;
    let mut server = TestServer::start(&config(addr, 1, "")).await;

    let mut ws = start_handshake(&server).await;
    switched(&mut ws).await;
    echo(&mut ws, "before shutdown").await;
    server.begin_shutdown();
    closed_by_server(&mut ws).await;
    wait_until("the upstream side closed", || sessions.open_now() == 0).await;
    wait_until("the session counted", || {
        let c = server.counters("/ws");
        c.completed + c.client_gone == 1
    })
    .await;
    let c = server.counters("/ws");
    assert_eq!((c.admitted, c.failed, c.timed_out), (1, 0, 0), "{c:?}");
    server.join().await;
    upstream.abort();
}

#[tokio::test]
async fn a_reload_that_retires_another_endpoint_leaves_open_sessions_and_new_ones_alone() {
    let (addr, sessions, upstream) = echo_upstream().await;
    let other = |queue: usize| {
        format!("[[endpoint]]\npath = \"/other\"\nbuiltin = \"ping\"\nqueue = {queue}\n")
    };
    let server = TestServer::start(&(config(addr, 1, "") + &other(8))).await;
    let mut before = start_handshake(&server).await;
    switched(&mut before).await;
    echo(&mut before, "before").await;
    // `/other` changes: the reload retires its endpoint (it keeps `/ws`'s).
    let summary = server.reload(&(config(addr, 1, "") + &other(4)));
    assert_eq!((summary.kept, summary.retired), (1, 1), "{summary:?}");
    // A session looks whether the server is shutting down every 100 ms: a few looks later, it
    // is open still, and so is one opened after the reload.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    echo(&mut before, "still").await;
    assert_eq!(sessions.closed.load(Ordering::SeqCst), 0);
    drop(before);
    let mut after = start_handshake(&server).await;
    switched(&mut after).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    echo(&mut after, "open").await;
    assert_eq!(sessions.closed.load(Ordering::SeqCst), 1);
    drop(after);
    server.shutdown().await;
    upstream.abort();
}

#[tokio::test]
async fn websocket_sessions_spread_over_several_servers_each_held_in_flight_until_it_closes() {
    let (a, a_sessions, a_task) = echo_upstream().await;
    let (b, b_sessions, b_task) = echo_upstream().await;
    let config = format!(
        "[[endpoint]]\npath = \"/ws\"\nmode = \"jellyfish\"\nworkers = 4\nqueue = 8\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n\
         [endpoint.upstream]\nurls = [\"http://{a}\", \"http://{b}\"]\n"
    );
    let server = TestServer::start(&config).await;
    // Four sessions at once: each server holds two, each counted in flight while open.
    let mut open = Vec::new();
    for i in 0..4 {
        let mut ws = start_handshake(&server).await;
        switched(&mut ws).await;
        echo(&mut ws, &format!("hello {i}")).await;
        open.push(ws);
    }
    assert_eq!((a_sessions.open_now(), b_sessions.open_now()), (2, 2));
    let up = server.status_of("/ws").handler.expect("an upstream status")["upstream"].clone();
    assert_eq!(up["servers"][0]["in_flight"], 2, "{up}");
    assert_eq!(up["servers"][1]["in_flight"], 2, "{up}");
    drop(open);
    wait_until("every session closed at both servers", || {
        a_sessions.open_now() + b_sessions.open_now() == 0
    })
    .await;
    wait_until("the sessions counted", || {
        server.counters("/ws").completed == 4
    })
    .await;
    server.shutdown().await;
    a_task.abort();
    b_task.abort();
}

/// [`echo_upstream`] behind TLS, with the test certificate `a.pem` (`localhost`, `127.0.0.1`).
async fn echo_upstream_tls() -> (SocketAddr, Arc<Sessions>, JoinHandle<()>) {
    let acceptor = support::tls::server_a(None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = Arc::new(Sessions::default());
    let counts = sessions.clone();
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, counts) = (acceptor.clone(), counts.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    echo_session(tls, counts).await;
                }
            });
        }
    });
    (addr, sessions, task)
}

#[tokio::test]
async fn a_websocket_session_to_an_https_upstream_goes_through_tls() {
    let (addr, sessions, upstream) = echo_upstream_tls().await;
    let ca = support::tls::fixture("ca.pem");
    let config = format!(
        "[[endpoint]]\npath = \"/ws\"\nmode = \"jellyfish\"\nworkers = 2\nqueue = 8\n\
         overflow = \"reject\"\nexpected_wait_admission = false\n\
         [endpoint.upstream]\nurl = \"https://localhost:{}\"\ntls_ca_file = {}\n",
        addr.port(),
        toml::Value::String(ca.display().to_string())
    );
    let server = TestServer::start(&config).await;
    let mut ws = start_handshake(&server).await;
    switched(&mut ws).await;
    echo(&mut ws, "hello over TLS").await;
    echo(&mut ws, "again").await;
    assert_eq!(sessions.opened.load(Ordering::SeqCst), 1);
    drop(ws);
    wait_until("the upstream side closed", || {
        sessions.closed.load(Ordering::SeqCst) == 1
    })
    .await;
    wait_until("the session counted", || {
        server.counters("/ws").completed == 1
    })
    .await;
    server.shutdown().await;
    upstream.abort();
}
