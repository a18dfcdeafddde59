//! Connections to a worker or an upstream, and the send that never repeats a request that may
//! have been written.
//!
//! A kept-alive connection may have been closed by its server since its last answer: it is
//! checked before use, and a request the closed connection never wrote comes back from hyper
//! (`try_send_request`) and may be sent again on a fresh connection. A request that may have
//! reached the server is never sent twice.

use crate::message::OutBody;
use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

/// The sending half of a connection; its driver runs as a task on the caller's runtime.
pub type Conn = SendRequest<OutBody>;

/// Largest body read from a probe's answer (it is only drained).
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// Where a server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A TCP host (name or address) and port.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// The runtime a relay's connections run on: one I/O worker thread named `thread_name`, timers
/// and I/O enabled. Build it on a thread that will own it and drop it outside any runtime.
pub fn io_runtime(thread_name: &str) -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(thread_name)
        .enable_all()
        .build()
}

/// Open an HTTP/1.1 connection to `target` (TCP with `TCP_NODELAY`); its driver is spawned on the
/// current runtime.
pub async fn connect(target: &Target) -> io::Result<Conn> {
    match target {
        Target::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            handshake(stream).await
        }
        Target::Unix(path) => handshake(UnixStream::connect(path).await?).await,
    }
}

async fn handshake<S>(stream: S) -> io::Result<Conn>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    // Each message written as one buffer (head and body copied together, one `write`) rather
    // than queued for a vectored write: the queue's bookkeeping cost more than the copy for the
    // small requests this client mostly sends (docs/BENCHMARKS.md 16.4). The buffer keeps its
    // largest size for the connection's life, bounded: hyper buffers body data only while it
    // holds less than its `max_buf_size` (its default, about 408 KiB), and an [`OutBody`] comes in
    // slices of 16 KiB; at most the endpoint's slots of connections are kept.
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        // With upgrades: a `101` hands the connection to the upgrade (a WebSocket session).
        if let Err(e) = conn.with_upgrades().await {
            tracing::trace!(cause = %e, "relay connection ended");
        }
    });
    Ok(sender)
}

/// `conn` if it is still open and ready for a request (a kept-alive connection its server closed
/// meanwhile is dropped).
pub async fn usable(conn: Option<Conn>) -> Option<Conn> {
    match conn {
        Some(mut c) if !c.is_closed() => c.ready().await.is_ok().then_some(c),
        _ => None,
    }
}

/// How a [`send`] ended.
#[derive(Debug)]
pub enum Sent {
    /// The server answered (head read; the body is still to read), on `conn`.
    Answered {
        /// The answer as it came.
        response: Response<hyper::body::Incoming>,
        /// The connection, to reuse once the body is read.
        conn: Conn,
    },
    /// Nothing was written: no connection could be made (`connect` true), or a connection closed
    /// before the request was written. Safe to send elsewhere.
    Unsent {
        /// Why.
        cause: io::Error,
        /// True if the last attempt failed to connect.
        connect: bool,
    },
    /// The connection failed once the request may have been written, or the answer's head was
    /// not valid HTTP. Never sent again.
    Broken(String),
}

/// Send `req` over `conn` (or a connection from `open`), sending it again on a fresh connection
/// at most `resends` times, and only while it was never written: the connection could not be made
/// or closed before writing it (a connection `open` gave up on with `TimedOut` is not retried).
/// Returns how it ended and how many resends it took.
///
/// The request comes boxed: it is 256 bytes, and an `async fn` keeps each argument twice in its
/// future (rust-lang/rust#62958), which is moved at every await above it.
pub async fn send<F, Fut>(
    mut conn: Option<Conn>,
    mut open: F,
    mut req: Box<Request<OutBody>>,
    mut resends: usize,
) -> (Sent, usize)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = io::Result<Conn>>,
{
    let mut used = 0;
    loop {
        let mut sender = match conn.take() {
            Some(c) => c,
            None => match open().await {
                Ok(c) => c,
                // A connection not accepted in time is not tried again: that would double the
                // client's wait on a server too slow to accept.
                Err(cause) if resends == 0 || cause.kind() == io::ErrorKind::TimedOut => {
                    return (
                        Sent::Unsent {
                            cause,
                            connect: true,
                        },
                        used,
                    )
                }
                Err(_) => {
                    resends -= 1;
                    used += 1;
                    continue;
                }
            },
        };
        match sender.try_send_request(*req).await {
            Ok(response) => {
                return (
                    Sent::Answered {
                        response,
                        conn: sender,
                    },
                    used,
                )
            }
            Err(mut e) => match e.take_message() {
                Some(back) if resends > 0 => {
                    resends -= 1;
                    used += 1;
                    *req = back;
                }
                Some(_) => {
                    let cause = io::Error::other(e.into_error());
                    return (
                        Sent::Unsent {
                            cause,
                            connect: false,
                        },
                        used,
                    );
                }
                None => return (Sent::Broken(e.into_error().to_string()), used),
            },
        }
    }
}

/// GET `path` with `Host: host` on `conn`: the answer's status once its body is drained
/// (bounded), or why there is none.
pub async fn probe(conn: &mut Conn, path: &str, host: &HeaderValue) -> Result<StatusCode, String> {
    conn.ready().await.map_err(|e| e.to_string())?;
    let mut req = Request::new(OutBody::default());
    *req.uri_mut() = path.parse::<Uri>().map_err(|e| e.to_string())?;
    req.headers_mut().insert(HOST, host.clone());
    let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    Limited::new(resp.into_body(), PROBE_BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}
