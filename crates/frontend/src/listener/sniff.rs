//! Telling HTTP/1 from HTTP/2 by a connection's first bytes, and serving each with hyper's own
//! connection type.
//!
//! hyper-util's `auto` builder tells the two apart by reading the 24 bytes of the HTTP/2 preface
//! and giving them back through its `Rewind`. An HTTP/1 request then reaches hyper in two reads
//! (the 24 bytes, then the rest), and hyper's read buffer, which wants 8 KiB free before each
//! read, is reallocated and copied on the second one: about 10,000 user-space instructions per
//! connection, most of a new connection's cost above bare hyper's. Here the first read takes up
//! to [`FIRST_READ`] bytes (a typical request head) and hyper's first read gets all of them
//! ([`Prefixed`]): an HTTP/1 request is parsed from one read. HTTP/1 connections are served by
//! hyper's HTTP/1 connection directly (with upgrades, for WebSocket pass-through); a connection
//! whose first bytes could be the preface (HTTP/2 with prior knowledge, or over TLS with ALPN
//! `h2`) goes to the `auto` builder as before, which reads the preface again from [`Prefixed`].
//!
//! The first read's buffer ([`FirstBytes`]) is one of a few spares each runtime thread keeps: at
//! 2 KiB it is past glibc's per-thread cache, so a fresh one per connection cost a slow `malloc`,
//! its zeroing and a slow `free`.

use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::server::conn::http1;
use hyper::service::{HttpService, Service};
use hyper::{Request, Response};
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

/// What the first read asks for: a typical request head fits.
pub(super) const FIRST_READ: usize = 2048;

/// How many first-read buffers each runtime thread keeps for the next connections (at most
/// 32 KiB a thread).
const SPARE_BUFFERS: usize = 16;

thread_local! {
    /// This thread's spare first-read buffers, each [`FIRST_READ`] bytes long.
    static SPARES: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An error of a served connection, as hyper-util's `auto` connection gives it.
pub(super) type ServeError = Box<dyn std::error::Error + Send + Sync>;

/// One connection's HTTP: its first bytes read, then hyper's HTTP/1 connection or the `auto`
/// builder's (for HTTP/2) serving it. A future, with hyper's `graceful_shutdown`.
pub(super) struct Served<'a, I, S, B>
where
    S: HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    I: Read + Write + Unpin + Send + 'static,
{
    state: State<'a, I, S, B>,
}

// The HTTP/1 connection is the large variant, and the usual one: the server boxes the whole
// `Served` once (see `accept.rs`), so no variant is boxed on its own.
#[allow(clippy::large_enum_variant)]
enum State<'a, I, S, B>
where
    S: HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    I: Read + Write + Unpin + Send + 'static,
{
    /// Reading the first bytes.
    First {
        io: I,
        service: S,
        buf: FirstBytes,
        http1: &'a http1::Builder,
        auto: &'a auto::Builder<TokioExecutor>,
    },
    /// HTTP/1, served by hyper's connection.
    Http1(http1::UpgradeableConnection<Prefixed<I>, S>),
    /// Possibly HTTP/2: the `auto` builder decides (boxed: rare, and not `Unpin`).
    Auto(Pin<Box<auto::UpgradeableConnection<'a, Prefixed<I>, S, TokioExecutor>>>),
    /// Ended (closed before a byte came, or shut down before the first read).
    Ended,
}

impl<'a, I, S, B> Served<'a, I, S, B>
where
    S: HttpService<hyper::body::Incoming, ResBody = B>,
    B: hyper::body::Body + 'static,
    I: Read + Write + Unpin + Send + 'static,
{
    /// Serve `io` with `service`, with `http1`'s settings for HTTP/1 and `auto`'s for HTTP/2.
    pub(super) fn new(
        io: I,
        service: S,
        http1: &'a http1::Builder,
        auto: &'a auto::Builder<TokioExecutor>,
    ) -> Self {
        Served {
            state: State::First {
                io,
                service,
                buf: FirstBytes::take(),
                http1,
                auto,
            },
        }
    }
}

impl<I, S, B> Served<'_, I, S, B>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Error: Into<ServeError>,
    S::Future: 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<ServeError>,
    I: Read + Write + Unpin + Send + 'static,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    /// Stop taking new requests and end once the ones in progress are answered (before the
    /// first bytes: end now).
    pub(super) fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::First { .. } | State::Ended => self.state = State::Ended,
            State::Http1(conn) => Pin::new(conn).graceful_shutdown(),
            State::Auto(conn) => conn.as_mut().graceful_shutdown(),
        }
    }
}

impl<I, S, B> Future for Served<'_, I, S, B>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin,
    S::Error: Into<ServeError>,
    S::Future: 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<ServeError>,
    I: Read + Write + Unpin + Send + 'static,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    type Output = Result<(), ServeError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::First { io, buf, .. } => {
                    let mut read = hyper::rt::ReadBuf::new(&mut buf.buf);
                    let polled = Pin::new(io).poll_read(cx, read.unfilled());
                    let n = read.filled().len();
                    if let Err(e) = ready!(polled) {
                        this.state = State::Ended;
                        return Poll::Ready(Err(e.into()));
                    }
                    let State::First {
                        io,
                        service,
                        mut buf,
                        http1,
                        auto,
                    } = std::mem::replace(&mut this.state, State::Ended)
                    else {
                        return Poll::Ready(Ok(()));
                    };
                    if n == 0 {
                        // Closed before a byte: nothing to serve.
                        return Poll::Ready(Ok(()));
                    }
                    buf.filled = n;
                    let first = buf.rest();
                    let http2 = H2_PREFACE.starts_with(&first[..n.min(H2_PREFACE.len())]);
                    let io = Prefixed { io, first: buf };
                    this.state = if http2 {
                        State::Auto(Box::pin(auto.serve_connection_with_upgrades(io, service)))
                    } else {
                        State::Http1(http1.serve_connection(io, service).with_upgrades())
                    };
                }
                State::Http1(conn) => return Pin::new(conn).poll(cx).map_err(Into::into),
                State::Auto(conn) => return conn.as_mut().poll(cx),
                State::Ended => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// A connection's I/O whose first read gives back the bytes read to tell its protocol, all of
/// them at once when the reader has room (hyper's first read has 8 KiB).
pub(super) struct Prefixed<I> {
    io: I,
    first: FirstBytes,
}

/// The bytes of a connection's first read, in a buffer of [`FIRST_READ`] bytes taken from the
/// thread's spares ([`SPARES`]) and given back to the spares of the thread that drops it.
/// Only `buf[taken..filled]` is ever read: the rest may hold an earlier connection's bytes.
struct FirstBytes {
    buf: Box<[u8]>,
    /// How many bytes the first read put in `buf`.
    filled: usize,
    /// How many of them were given to hyper.
    taken: usize,
}

impl FirstBytes {
    /// A spare buffer of this thread's, or a new one.
    fn take() -> FirstBytes {
        let spare = SPARES
            .try_with(|spares| spares.try_borrow_mut().ok().and_then(|mut s| s.pop()))
            .ok()
            .flatten();
        FirstBytes {
            buf: spare.unwrap_or_else(|| vec![0; FIRST_READ].into_boxed_slice()),
            filled: 0,
            taken: 0,
        }
    }

    /// The bytes read and not given to hyper yet.
    fn rest(&self) -> &[u8] {
        self.buf.get(self.taken..self.filled).unwrap_or_default()
    }

    /// Give the buffer back to this thread's spares (dropped if they are full); nothing is left
    /// to give.
    fn give_back(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        self.filled = 0;
        self.taken = 0;
        if buf.len() != FIRST_READ {
            return;
        }
        let _ = SPARES.try_with(|spares| {
            if let Ok(mut spares) = spares.try_borrow_mut() {
                if spares.len() < SPARE_BUFFERS {
                    spares.push(buf);
                }
            }
        });
    }
}

impl Drop for FirstBytes {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<I: Read + Unpin> Read for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let rest = this.first.rest();
        if !rest.is_empty() {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.first.taken += n;
            if this.first.taken == this.first.filled {
                // All given: the buffer goes back to the spares.
                this.first.give_back();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: Write + Unpin> Write for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_prefix_of_the_preface_goes_to_http2() {
        let is_h2 = |first: &[u8]| H2_PREFACE.starts_with(&first[..first.len().min(24)]);
        assert!(is_h2(H2_PREFACE));
        assert!(is_h2(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04"));
        assert!(is_h2(b"PRI * HT"));
        assert!(!is_h2(b"GET /ping HTTP/1.1\r\n\r\n"));
        assert!(!is_h2(b"POST / HTTP/1.1\r\n"));
        assert!(!is_h2(b"PRIX"));
    }

    #[test]
    fn a_spare_first_read_buffer_shows_none_of_the_last_connections_bytes() {
        let mut first = FirstBytes::take();
        first.buf[..5].copy_from_slice(b"GET /");
        first.filled = 5;
        first.taken = 1;
        assert_eq!(first.rest(), b"ET /");
        drop(first);
        let again = FirstBytes::take();
        assert_eq!(again.buf.len(), FIRST_READ);
        assert!(again.rest().is_empty());
    }
}
