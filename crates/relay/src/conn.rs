//! Connections to a worker or an upstream, and the send that never repeats a request that may
//! have been written.
//!
//! A kept-alive connection may have been closed by its server since its last answer: it is
//! checked before use, and a request the closed connection never wrote comes back from hyper
//! (`try_send_request`) and may be sent again on a fresh connection. A request that may have
//! reached the server is never sent twice.
//!
//! A TCP connection keeps a handle on its socket ([`Conn::quick_ack`]): a server with Nagle's
//! algorithm on (Python's `http.server`, cpp-httplib's default) holds the rest of an
//! answer back until the part it wrote first is acknowledged, and a kept-alive connection, which
//! answers arrive on right after a request was sent, delays its acknowledgements by up to 40 ms.

use crate::message::OutBody;
use http_body_util::{BodyExt, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, HOST};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// The sending half of a connection; its driver runs as a task on the caller's runtime.
#[derive(Debug)]
pub struct Conn {
    send: SendRequest<OutBody>,
    /// The TCP socket under it (none over a Unix socket, which has no delayed acknowledgements),
    /// and the `Host` its requests carry if [`connect_as`] gave one (then also over a Unix
    /// socket, without a descriptor). One pointer, so that a connection stays small in the
    /// futures that hold one.
    socket: Option<Arc<Socket>>,
}

impl Conn {
    /// True once the connection is closed (its driver ended): it can carry no more requests.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }

    /// Wait until the connection can take a request (an error: it closed).
    pub async fn ready(&mut self) -> hyper::Result<()> {
        self.send.ready().await
    }

    /// Acknowledge at once what the server sent so far, and go on acknowledging at once while
    /// nothing is sent (Linux's `TCP_QUICKACK`, which leaves the delayed-acknowledgement mode a
    /// request and its answer put the connection in). For an answer whose head came and whose
    /// rest has not: a server with Nagle's algorithm on holds that rest back until its head is
    /// acknowledged, which a kept-alive connection otherwise delays by up to 40 ms per answer
    /// (and per token of a stream of small ones; docs/BENCHMARKS.md 20.2). One `setsockopt`;
    /// nothing over a Unix socket.
    pub fn quick_ack(&self) {
        if let Some(socket) = &self.socket {
            socket.quick_ack();
        }
    }
}

/// `answer` (the reading of an answer's rest, once its head came on `conn`), calling
/// [`Conn::quick_ack`] if its first poll finds it waiting: the rest may be held back by the
/// server until the head is acknowledged. Costs nothing when the rest came with the head.
pub fn ack_if_late<F: Future + Unpin>(answer: F, conn: &Conn) -> AckIfLate<'_, F> {
    AckIfLate {
        answer,
        conn,
        polled: false,
    }
}

/// The future of [`ack_if_late`].
#[derive(Debug)]
pub struct AckIfLate<'a, F> {
    answer: F,
    conn: &'a Conn,
    polled: bool,
}

impl<F: Future + Unpin> Future for AckIfLate<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.answer).poll(cx);
        if polled.is_pending() && !this.polled {
            this.conn.quick_ack();
        }
        this.polled = true;
        polled
    }
}

/// A TCP connection's descriptor, as long as its stream is open (see [`Conn::quick_ack`]), and
/// the `Host` of the connection's requests if it was given one.
#[derive(Debug)]
struct Socket {
    /// Cleared (under the lock) by [`Tcp`]'s drop, before the stream closes the descriptor.
    fd: Mutex<Option<RawFd>>,
    /// The `Host` every request sent on the connection carries instead of its own.
    host: Option<HeaderValue>,
}

impl Socket {
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)] // the crate's one exception: see the SAFETY comment and Cargo.toml
    fn quick_ack(&self) {
        use nix::libc::{c_int, socklen_t};
        let fd = self.fd.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = *fd else { return };
        let on: c_int = 1;
        let size = socklen_t::try_from(std::mem::size_of::<c_int>()).unwrap_or(4);
        // SAFETY: setsockopt(2) reads `size` bytes at the pointer, which points at `on`, a local
        // `c_int` that lives across the call; no memory is written. The descriptor is open: it is
        // the stream's, which clears it under this lock (held across the call) before it closes
        // it. (std's `TcpStreamExt::set_quickack` is unstable, issue 96256; nix lacks the option.)
        // A failure changes nothing but the timing of an acknowledgement: ignored.
        let _ = unsafe {
            nix::libc::setsockopt(
                fd,
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_QUICKACK,
                std::ptr::from_ref(&on).cast(),
                size,
            )
        };
    }

    /// No such option off Linux.
    #[cfg(not(target_os = "linux"))]
    fn quick_ack(&self) {}
}

/// A TCP stream that lets its [`Socket`] handle go before it closes.
struct Tcp {
    stream: TcpStream,
    socket: Arc<Socket>,
}

impl Drop for Tcp {
    fn drop(&mut self) {
        *self.socket.fd.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The stream under a TLS or Unix socket connection: one type for both, so that hyper's client
/// (its dispatcher, its codec) is built twice, for plain TCP and for this, not three times
/// (28 kB less in the binary, docs/SIZE.md). Plain TCP, the hot path of a proxy, keeps a type of
/// its own: the match per read and write cost the hop 67–238 instructions per request (up to
/// 0.8%) when it went through here too (docs/BENCHMARKS.md 22.2).
enum Stream {
    /// Boxed: a TLS stream carries rustls's connection state (about 1 kB).
    Tls(Box<tokio_rustls::client::TlsStream<Tcp>>),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tls(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Largest body read from a probe's answer (it is only drained).
const PROBE_BODY_LIMIT: usize = 64 * 1024;

/// Where a server listens.
#[derive(Debug, Clone)]
pub enum Target {
    /// A TCP host (name or address) and port, in TLS if `tls` says how.
    Tcp {
        /// Host name or IP address.
        host: String,
        /// Port.
        port: u16,
        /// TLS over the connection (an `https://` server), or none.
        tls: Option<TlsTo>,
    },
    /// A Unix socket path.
    Unix(PathBuf),
}

/// TLS to a server: the client's settings (trusted roots, ALPN `http/1.1`, session resumption)
/// and the name its certificate must be valid for, also sent as SNI.
#[derive(Clone)]
pub struct TlsTo {
    /// Replaced by [`TlsTo::set_config`] (a reload's renewed files); read once per connection.
    connector: Arc<std::sync::RwLock<tokio_rustls::TlsConnector>>,
    name: ServerName<'static>,
}

impl TlsTo {
    /// TLS with `config` to a server that must prove it is `name`.
    pub fn new(config: Arc<rustls::ClientConfig>, name: ServerName<'static>) -> TlsTo {
        TlsTo {
            connector: Arc::new(std::sync::RwLock::new(config.into())),
            name,
        }
    }

    /// New connections (and this one's clones') take `config` from now on; open ones keep the
    /// settings they were made with.
    pub fn set_config(&self, config: Arc<rustls::ClientConfig>) {
        *self.connector.write().unwrap_or_else(|p| p.into_inner()) = config.into();
    }

    fn connector(&self) -> tokio_rustls::TlsConnector {
        self.connector
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl std::fmt::Debug for TlsTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTo")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A TLS handshake that failed: the server's certificate was not trusted or not valid for its
/// name, no protocol version or cipher was shared, or the server closed the connection.
#[derive(Debug)]
struct TlsFailed(io::Error);

impl std::fmt::Display for TlsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS handshake failed: {}", self.0)
    }
}

impl std::error::Error for TlsFailed {}

/// True if `e` is a failed TLS handshake (from [`connect`]).
pub fn is_tls_failure(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<TlsFailed>())
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

/// Open an HTTP/1.1 connection to `target` (TCP with `TCP_NODELAY`, in TLS if the target says);
/// its driver is spawned on the current runtime. A TLS handshake that fails is an error
/// [`is_tls_failure`] tells apart, saying why.
pub async fn connect(target: &Target) -> io::Result<Conn> {
    connect_as(target, None).await
}

/// [`connect`], with every request [`send`] sends on the connection carrying `Host: host` (the
/// server's own name) instead of its own, if `host` is given. It stays with the connection: a
/// request sent again on another server's connection takes that server's.
pub async fn connect_as(target: &Target, host: Option<HeaderValue>) -> io::Result<Conn> {
    match target {
        Target::Tcp {
            host: name,
            port,
            tls,
        } => {
            let stream = TcpStream::connect((name.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            let socket = Arc::new(Socket {
                fd: Mutex::new(Some(stream.as_raw_fd())),
                host,
            });
            let tcp = Tcp {
                stream,
                socket: socket.clone(),
            };
            let send = match tls {
                None => handshake(tcp).await?,
                Some(tls) => {
                    let stream = tls
                        .connector()
                        .connect(tls.name.clone(), tcp)
                        .await
                        .map_err(|e| io::Error::new(e.kind(), TlsFailed(e)))?;
                    handshake(Stream::Tls(Box::new(stream))).await?
                }
            };
            Ok(Conn {
                send,
                socket: Some(socket),
            })
        }
        Target::Unix(path) => Ok(Conn {
            send: handshake(Stream::Unix(UnixStream::connect(path).await?)).await?,
            socket: host.map(|host| {
                Arc::new(Socket {
                    fd: Mutex::new(None),
                    host: Some(host),
                })
            }),
        }),
    }
}

async fn handshake<S>(stream: S) -> io::Result<SendRequest<OutBody>>
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

/// `conn`, kept idle since `since`, if that was less than `keepalive` ago (else it is dropped,
/// which closes it): a server that closes idle connections itself may be closing an older one
/// as a request is written into it, and that request, perhaps read, could not be sent again.
/// The rule of upstream pools, worker connections and both health checks.
#[inline]
pub fn within_keepalive((conn, since): (Conn, Instant), keepalive: Duration) -> Option<Conn> {
    (since.elapsed() < keepalive).then_some(conn)
}

/// A health check: GET `path` with `Host: host` on `kept` (if [`within_keepalive`] and still
/// open), else on a fresh connection to `target`. A check lost on a kept connection (its
/// server closed it as the check was written) goes once more on a fresh one: the check is ours
/// and reads nothing. The answer's status and the connection it came on.
pub async fn probe_kept(
    kept: Option<(Conn, Instant)>,
    keepalive: Duration,
    target: &Target,
    path: &str,
    host: &HeaderValue,
) -> Result<(StatusCode, Conn), String> {
    let kept = kept.and_then(|entry| within_keepalive(entry, keepalive));
    if let Some(mut conn) = usable(kept).await {
        if let Ok(status) = probe(&mut conn, path, host).await {
            return Ok((status, conn));
        }
    }
    let mut conn = connect(target).await.map_err(|e| {
        if is_tls_failure(&e) {
            "TLS handshake failed".to_string()
        } else {
            format!("cannot connect: {}", e.kind())
        }
    })?;
    let status = probe(&mut conn, path, host)
        .await
        .map_err(|_| "no valid answer".to_string())?;
    Ok((status, conn))
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
        if let Some(host) = sender.socket.as_ref().and_then(|s| s.host.as_ref()) {
            req.headers_mut().insert(HOST, host.clone());
        }
        match sender.send.try_send_request(*req).await {
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
    let resp = conn
        .send
        .send_request(req)
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    Limited::new(resp.into_body(), PROBE_BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The socket's `TCP_QUICKACK` as the kernel reports it: 1 while it acknowledges at once
    /// (not in its delayed-acknowledgement, "pingpong", mode).
    #[allow(unsafe_code)] // test only: reads the option back
    fn quick_ack_of(fd: RawFd) -> i32 {
        use nix::libc::{c_int, socklen_t};
        let mut value: c_int = -1;
        let mut size = socklen_t::try_from(std::mem::size_of::<c_int>()).unwrap_or(4);
        // SAFETY: getsockopt(2) writes at most `size` bytes into `value`, a local `c_int`, and
        // its length into `size`; both outlive the call.
        let done = unsafe {
            nix::libc::getsockopt(
                fd,
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_QUICKACK,
                std::ptr::from_mut(&mut value).cast(),
                &mut size,
            )
        };
        assert_eq!(done, 0, "{}", io::Error::last_os_error());
        value
    }

    /// Put the socket in its delayed-acknowledgement mode, as a request and its answer do.
    #[allow(unsafe_code)] // test only
    fn delay_acks(fd: RawFd) {
        let off: nix::libc::c_int = 0;
        // SAFETY: as in `Socket::quick_ack`: reads `off`, a local that outlives the call.
        let done = unsafe {
            nix::libc::setsockopt(
                fd,
                nix::libc::IPPROTO_TCP,
                nix::libc::TCP_QUICKACK,
                std::ptr::from_ref(&off).cast(),
                4,
            )
        };
        assert_eq!(done, 0, "{}", io::Error::last_os_error());
    }

    #[tokio::test]
    async fn quick_ack_reaches_a_tcp_connections_socket_and_never_outlives_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let target = Target::Tcp {
            host: "127.0.0.1".into(),
            port,
            tls: None,
        };
        let conn = connect(&target).await.unwrap();
        let _server_side = accepted.await.unwrap().unwrap();
        let socket = conn.socket.clone().unwrap();
        let fd = socket.fd.lock().unwrap().unwrap();

        delay_acks(fd);
        assert_eq!(quick_ack_of(fd), 0, "delayed acknowledgements");
        conn.quick_ack();
        assert_eq!(quick_ack_of(fd), 1, "acknowledging at once");

        // The descriptor is let go before the stream closes it: a later quick_ack can never
        // reach another socket that took its number.
        drop(conn);
        let mut waited = Duration::ZERO;
        while socket.fd.lock().unwrap().is_some() {
            assert!(waited < Duration::from_secs(10), "the driver never ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += Duration::from_millis(10);
        }
    }

    #[tokio::test]
    async fn a_unix_connection_has_no_socket_to_acknowledge_on() {
        let dir = std::env::temp_dir().join(format!("relay-quickack-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = tokio::net::UnixListener::bind(&dir).unwrap();
        let accepted = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let conn = connect(&Target::Unix(dir.clone())).await.unwrap();
        let _server_side = accepted.await.unwrap().unwrap();
        assert!(conn.socket.is_none());
        conn.quick_ack();
        let _ = std::fs::remove_file(&dir);
    }
}
