//! The close after a connection's last answer: at once when the client sends nothing more and
//! nothing is unread ([`SharedTcp::close`]), else the lingering close: half-close, then read and
//! discard what the client still sends for a bounded time, so that the close does not reset the
//! connection and destroy answers the client has not read yet.
//!
//! Closing a socket with unread input makes the kernel send RST instead of FIN, and an RST makes
//! the client's kernel drop whatever it received but the client has not read yet. A client that
//! pipelined past `max_requests_per_connection` (1,200 requests against a cap of 1,000) lost all
//! but 34 of its 1,000 answers that way. nginx calls the cure `lingering_close`.
//!
//! The socket is shared ([`SharedTcp`]) so that it outlives hyper's connection: for the lingering
//! close, and for the hold of an overflowed connection (which watches it for the client's close).
//!
//! `TCP_NODELAY` is set lazily, just before the connection's second write (see
//! [`SharedTcp::before_write`]): Nagle's algorithm can only hold back a small segment while
//! earlier data is unacknowledged, so a connection's first write is never delayed, and a
//! connection that writes once (one request, one answer, close) never pays the `setsockopt`.

use bytes::BufMut;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The longest a closed connection lingers, reading and discarding.
pub(super) const LINGER_TIME: Duration = Duration::from_secs(5);

/// The most bytes a lingering connection reads and discards before it closes anyway.
pub(super) const LINGER_BYTES: usize = 1 << 20;

/// A TCP socket shared between hyper (which reads, writes and half-closes it) and the lingering
/// close (which outlives hyper's connection): hyper's end of it is dropped when its connection
/// ends, and the socket stays open until the lingering close drops the other.
#[derive(Debug, Clone)]
pub(crate) struct SharedTcp(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    tcp: TcpStream,
    /// Set by the first `shutdown(SHUT_WR)` (hyper's, or the linger's), so there is one only.
    write_shut: AtomicBool,
    /// How far the connection's writes are: [`NO_WRITE`], [`ONE_WRITE`] or [`NODELAY`].
    writes: AtomicU8,
}

/// [`Shared::writes`]: nothing written yet; the next write cannot be delayed by Nagle.
const NO_WRITE: u8 = 0;
/// [`Shared::writes`]: one write made; `TCP_NODELAY` is set before the next.
const ONE_WRITE: u8 = 1;
/// [`Shared::writes`]: `TCP_NODELAY` is set (or setting it failed: nothing more to try).
const NODELAY: u8 = 2;

impl std::ops::Deref for Shared {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.tcp
    }
}

impl SharedTcp {
    pub(crate) fn new(tcp: TcpStream) -> SharedTcp {
        SharedTcp(Arc::new(Shared {
            tcp,
            write_shut: AtomicBool::new(false),
            writes: AtomicU8::new(NO_WRITE),
        }))
    }

    /// Called before every write: sets `TCP_NODELAY` before the connection's second write.
    ///
    /// Nagle's algorithm (Linux's Minshall variant) holds back a segment smaller than the MSS
    /// only while an earlier small segment is unacknowledged. Before the first write nothing
    /// is in flight, so the first write always leaves at once, and setting `TCP_NODELAY` at
    /// accept bought nothing for a connection that writes once (a connection per request: one
    /// `setsockopt` per request saved). Every later write may follow unacknowledged data: a
    /// keep-alive connection's second answer, a streamed body's chunks after its head, an
    /// HTTP/2 connection's frames after its `SETTINGS`, a TLS connection's answer after its
    /// handshake, an answer after a half-close probe or a `100 Continue`; each gets
    /// `TCP_NODELAY` before it is written (a setsockopt also pushes out anything Nagle held).
    /// One relaxed load per write once set.
    fn before_write(&self) {
        if self.0.writes.load(Ordering::Relaxed) == ONE_WRITE {
            let _ = self.0.tcp.set_nodelay(true);
            self.0.writes.store(NODELAY, Ordering::Relaxed);
        }
    }

    /// Called after every write: the first byte written moves [`Shared::writes`] on.
    fn wrote(&self, result: &io::Result<usize>) {
        if matches!(result, Ok(n) if *n > 0) && self.0.writes.load(Ordering::Relaxed) == NO_WRITE {
            self.0.writes.store(ONE_WRITE, Ordering::Relaxed);
        }
    }

    /// Close the connection after hyper's last answer: at once if `quiet` (the client's last
    /// request had no body and asked for the close: it sends nothing more) and the socket holds
    /// no unread input, else with the lingering close ([`SharedTcp::linger`]).
    ///
    /// Closing a socket sends FIN after the bytes written (the kernel goes on sending them),
    /// and RST instead only if unread input is in the receive queue or arrives afterwards: a
    /// quiet client sends none, and the queue is empty if no read readiness came since the last
    /// read drained the socket ([`SharedTcp::poll_read_into`] clears the readiness after a
    /// short read). That is known without a system call: the runtime's readiness, polled once
    /// (with a no-op waker: nothing waits on the socket any more). Input the runtime has not
    /// seen yet can only be a client's that broke its word. This is nginx's rule too: it
    /// lingers only after a body left unread, pipelined input, or a readable socket. Saves a
    /// `shutdown` and a `recvfrom` (the client's EOF) per connection that closes this way.
    ///
    /// Only the last handle's drop closes the socket: the caller's, once hyper's are gone.
    pub(super) async fn close(self, quiet: bool) {
        if quiet && !self.may_have_input() {
            return;
        }
        // Boxed: the linger's state (its discard buffer) would otherwise size the task of every
        // connection, which is copied when the task is spawned and when it finishes.
        Box::pin(self.linger()).await;
    }

    /// True if the runtime saw the socket readable (input, end of input, or an error) since the
    /// last read that drained it, or no read drained it yet.
    fn may_have_input(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.0.poll_read_ready(&mut cx).is_ready()
    }

    /// Send FIN once every byte written is on its way, then read and discard until the client
    /// closes its side, [`LINGER_BYTES`] have been read, [`LINGER_TIME`] has passed, or an error.
    pub(super) async fn linger(self) {
        self.0.shutdown_write();
        let discard = async {
            // Small: nearly always the client's FIN comes and nothing is read (a 4 KiB buffer
            // was a 4 KiB memset per connection).
            let mut chunk = [0u8; 512];
            let mut read = 0usize;
            while read < LINGER_BYTES {
                if self.0.readable().await.is_err() {
                    return;
                }
                match self.0.try_read(&mut chunk) {
                    Ok(0) => return,
                    Ok(n) => read += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, discard).await;
    }
}

impl SharedTcp {
    /// Resolves once the socket reports an error: the peer reset the connection. A client that
    /// closed fully (not just its sending side) answers any data sent to it with RST.
    pub(super) async fn reset(self) {
        let _ = self.0.ready(Interest::ERROR).await;
    }
}

impl Shared {
    /// `shutdown(SHUT_WR)`: FIN after the bytes already written, once (hyper shuts a connection
    /// it closes, and the linger after it would only get `ENOTCONN`). An error (the peer reset)
    /// leaves nothing to do.
    fn shutdown_write(&self) {
        use std::os::fd::AsRawFd;
        if !self.write_shut.swap(true, Ordering::Relaxed) {
            let _ =
                nix::sys::socket::shutdown(self.tcp.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        }
    }
}

impl SharedTcp {
    /// Read into the spare part of `buf` (hyper's `ReadBuf`), as
    /// uninitialised memory: zeroing it first would cost a memset of hyper's whole spare buffer
    /// (kilobytes) per request. Nothing added means end of stream.
    ///
    /// A read that returns less than there was room for has drained the socket: it reports
    /// "would block" to the outer `try_io`, which clears the readiness it saw before the read
    /// (as tokio's own `TcpStream::poll_read` does), so the next read waits for the next
    /// readiness event instead of making a `recvfrom` that can only fail with EAGAIN: one
    /// system call less per request.
    pub(super) fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        buf: &mut impl BufMut,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let room = buf.chunk_mut().len();
            let mut short = false;
            let read = self.0.try_io(Interest::READABLE, || {
                let n = self.0.try_read_buf(buf)?;
                if n > 0 && n < room {
                    short = true;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match read {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(_) if short => return Poll::Ready(Ok(())),
                // The readiness was cleared: the next poll_read_ready registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl SharedTcp {
    /// Resolves once the client has closed (FIN) or reset its side, without reading a byte: for a
    /// held connection (see [`crate::hold`]). Waits on the socket's readiness, which the runtime
    /// watches anyway; input that arrives meanwhile is left unread (its readiness is cleared, so
    /// it wakes this task once per arrival, never in a loop).
    pub(super) async fn closed(&self) {
        loop {
            match self.0.ready(Interest::READABLE).await {
                Ok(ready) if !ready.is_read_closed() && !ready.is_error() => {
                    // Not closed, only readable: forget this readiness and wait for the next.
                    let _ = self.0.try_io(Interest::READABLE, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                }
                _ => return,
            }
        }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll_read_into(cx, buf)
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            self.before_write();
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => {
                    self.wrote(&result);
                    return Poll::Ready(result);
                }
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            self.before_write();
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => {
                    self.wrote(&result);
                    return Poll::Ready(result);
                }
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.shutdown_write();
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A connected pair on 127.0.0.1: the server's end wrapped, and the client's.
    async fn pair() -> (SharedTcp, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (SharedTcp::new(accepted.unwrap().0), client.unwrap())
    }

    #[tokio::test]
    async fn tcp_nodelay_is_set_before_the_second_write_and_not_for_the_first() {
        let (mut server, mut client) = pair().await;
        assert!(!server.0.nodelay().unwrap(), "not at accept");
        server.write_all(b"first").await.unwrap();
        assert!(
            !server.0.nodelay().unwrap(),
            "a first write is never delayed"
        );
        let vectored = [io::IoSlice::new(b"sec"), io::IoSlice::new(b"ond")];
        let n = server.write_vectored(&vectored).await.unwrap();
        assert_eq!(n, 6);
        assert!(server.0.nodelay().unwrap(), "set before the second write");
        let mut got = [0u8; 11];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"firstsecond");
    }

    #[tokio::test]
    async fn a_quiet_close_with_nothing_unread_closes_at_once_and_input_left_lingers() {
        // Nothing unread since a short read: closed at once (the client reads EOF, and a byte it
        // sends after is answered with a reset: the server's socket is gone).
        let (mut server, mut client) = pair().await;
        client.write_all(b"request").await.unwrap();
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"request");
        server.write_all(b"answer").await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), server.close(true))
            .await
            .expect("closed at once");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer");
        client.write_all(b"more").await.unwrap();
        let ready = tokio::time::timeout(Duration::from_secs(20), client.ready(Interest::ERROR))
            .await
            .expect("the closed socket resets the client's late input");
        assert!(ready.unwrap().is_error());

        // Input arrived after the last read: the close lingers, reading it, and ends at the
        // client's close.
        let (mut server, mut client) = pair().await;
        client.write_all(b"request").await.unwrap();
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"request");
        client.write_all(b"unexpected").await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), server.0.readable())
            .await
            .unwrap()
            .unwrap();
        server.write_all(b"answer").await.unwrap();
        let closing = tokio::spawn(server.close(true));
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, b"answer", "FIN after the answer, no reset");
        assert!(!closing.is_finished(), "lingering until the client's close");
        drop(client);
        tokio::time::timeout(Duration::from_secs(20), closing)
            .await
            .expect("the linger ends at the client's close")
            .unwrap();
    }
}
