//! The idle watchdog: closes a connection that makes no progress while no request is in flight.
//!
//! "Progress" is any byte read from or written to the socket, counted by [`Watched`] (one relaxed
//! add per I/O call, no clock read). At every period the watchdog compares the count with the one
//! it saw a period ago; unchanged, with no request in flight, means idle. So a silent connection
//! (hyper's header timer only starts once it has detected the protocol) is closed after one or two
//! `header_read_timeout` periods; an idle keep-alive or HTTP/2 connection after one or two
//! `idle_timeout` periods; but a slow reader still draining a large response, or a long job
//! running, is never idle.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a connection is doing.
#[derive(Debug, Default)]
pub(super) struct Activity {
    in_flight: AtomicUsize,
    progress: AtomicU64,
    served: AtomicBool,
}

impl Activity {
    fn progressed(&self) {
        self.progress.fetch_add(1, Ordering::Relaxed);
    }
}

/// Marks a request in flight until dropped (answered, or abandoned by a client that left).
pub(super) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(super) fn new(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.served.store(true, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.progressed();
    }
}

/// A socket whose reads and writes count as progress.
pub(super) struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Watched<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Watched<S> {
        Watched { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.progressed();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.progressed();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves when the connection has been idle for a whole period: before its first request the
/// period is `silent`, afterwards `idle`.
pub(super) async fn idle(activity: &Activity, silent: Duration, idle: Duration) {
    let mut seen = activity.progress.load(Ordering::Relaxed);
    loop {
        let period = if activity.served.load(Ordering::Relaxed) {
            idle
        } else {
            silent
        };
        tokio::time::sleep(period).await;
        let now = activity.progress.load(Ordering::Relaxed);
        if now == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
            return;
        }
        seen = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_idle_after_one_quiet_period_and_a_busy_one_never() {
        let silent = Duration::from_secs(2);
        let a = Activity::default();
        let started = tokio::time::Instant::now();
        idle(&a, silent, Duration::from_secs(60)).await;
        assert!(started.elapsed() >= silent && started.elapsed() < silent * 3);

        let busy = Arc::new(Activity::default());
        let request = InFlight::new(&busy);
        let waited =
            tokio::time::timeout(Duration::from_secs(600), idle(&busy, silent, silent)).await;
        assert!(waited.is_err(), "a request in flight is never idle");
        drop(request);
        idle(&busy, silent, silent).await;
    }
}
