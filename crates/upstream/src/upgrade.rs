//! WebSocket (HTTP/1.1 upgrade) sessions passed through to the upstream: once the upstream
//! answered `101`, the producer of the answer's (empty) streamed body splices the client's and the
//! upstream's upgraded connections until either side closes, the session is silent both ways past
//! `websocket_idle_timeout_ms`, or the front end lets go (its client went away, or shutdown). It
//! runs on the executor thread in the job's running slot, so each open session counts against the
//! endpoint's concurrency (`workers`).

use crate::Shared;
use common::body::{BodySink, StreamError};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Splice `client` and `upstream` (both resolving once their `101` went through) until the session
/// ends; see the [module docs](self). Blocks the calling (executor) thread on `runtime`.
pub(crate) fn splice(
    shared: &Shared,
    server: usize,
    runtime: &tokio::runtime::Handle,
    client: OnUpgrade,
    upstream: OnUpgrade,
    sink: &BodySink,
) -> Result<(), StreamError> {
    let idle = shared.config.websocket_idle_timeout;
    runtime.block_on(async {
        let upgraded = tokio::time::timeout(idle, async { (client.await, upstream.await) }).await;
        let (client, upstream) = match upgraded {
            Ok((Ok(client), Ok(upstream))) => (client, upstream),
            Ok((Err(e), _)) => {
                tracing::debug!(endpoint = %shared.endpoint, cause = %e, "client connection not upgraded");
                return Err(StreamError::ClientGone);
            }
            Ok((_, Err(e))) => {
                crate::exchange::fail(
                    shared,
                    server,
                    format!("upstream connection not upgraded: {e}"),
                );
                return Err(StreamError::Failed("upstream upgrade failed".into()));
            }
            Err(_) => {
                return Err(StreamError::Timeout(
                    "upgrade not completed within websocket_idle_timeout_ms".into(),
                ))
            }
        };
        let start = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Tracked::new(TokioIo::new(client), start, last.clone());
        let mut upstream = Tracked::new(TokioIo::new(upstream), start, last.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        let mut ticks = tokio::time::interval(crate::exchange::CLIENT_POLL);
        loop {
            tokio::select! {
                done = &mut copy => {
                    return match done {
                        Ok(_) => Ok(()),
                        // A reset by either side ends the session like a close.
                        Err(e) if is_close(&e) => Ok(()),
                        Err(e) => {
                            tracing::debug!(endpoint = %shared.endpoint, cause = %e, "websocket session failed");
                            Err(StreamError::Failed("websocket session failed".into()))
                        }
                    };
                }
                _ = ticks.tick() => {
                    if sink.is_client_gone() {
                        return Err(StreamError::ClientGone);
                    }
                    // Saturating: a byte moved on another thread since `elapsed` was read.
                    let quiet = (start.elapsed().as_millis() as u64)
                        .saturating_sub(last.load(Ordering::Relaxed));
                    if u128::from(quiet) > idle.as_millis() {
                        return Err(StreamError::Timeout(
                            "websocket session silent past websocket_idle_timeout_ms".into(),
                        ));
                    }
                }
            }
        }
    })
}

fn is_close(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof
    )
}

/// An upgraded connection that stamps `last` (milliseconds since `start`) on every byte moved.
struct Tracked<T> {
    inner: T,
    start: Instant,
    last: Arc<AtomicU64>,
}

impl<T> Tracked<T> {
    fn new(inner: T, start: Instant, last: Arc<AtomicU64>) -> Tracked<T> {
        Tracked { inner, start, last }
    }

    fn moved(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
