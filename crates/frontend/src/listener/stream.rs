//! A client's byte stream, plain TCP or TLS, as one I/O type, so that every connection is served
//! by one code path whatever its listener.

use super::linger::SharedTcp;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::server::TlsStream;

/// A client connection after the accept (and the TLS handshake, for HTTPS).
pub(crate) enum ClientStream {
    /// Plain HTTP, with what the first read brought in and the reader has not taken yet.
    Plain(SharedTcp, FirstRead),
    /// HTTPS. Boxed: the TLS state is about a kilobyte, which a plain connection should not carry.
    Tls(Box<TlsStream<SharedTcp>>),
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s, first) => first.poll_read(s, cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

/// The first read of a plain connection is made into a buffer of [`FIRST_READ`] bytes when the
/// reader asks for less: hyper's protocol detection asks for the 24 bytes of the HTTP/2 preface
/// first, and without this every connection paid a `recvfrom` for those 24 bytes and another for
/// the rest of the request head. The buffer is freed once the reader has taken it.
#[derive(Debug, Default)]
pub(crate) enum FirstRead {
    /// Nothing read yet.
    #[default]
    Unread,
    /// Read, not all taken: the bytes and how many were taken.
    Held(Vec<u8>, usize),
    /// Taken: reads go to the socket.
    Done,
}

/// The size of the first read's buffer: a typical request head fits.
const FIRST_READ: usize = 2048;

impl FirstRead {
    fn poll_read(
        &mut self,
        tcp: &mut SharedTcp,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match self {
                FirstRead::Done => return Pin::new(tcp).poll_read(cx, buf),
                FirstRead::Unread if buf.remaining() >= FIRST_READ => {
                    *self = FirstRead::Done;
                }
                FirstRead::Unread => {
                    let mut held = Vec::with_capacity(FIRST_READ);
                    std::task::ready!(tcp.poll_read_into(cx, &mut held))?;
                    if held.is_empty() {
                        // End of stream (or nothing): the reader sees it as it is.
                        *self = FirstRead::Done;
                        return Poll::Ready(Ok(()));
                    }
                    *self = FirstRead::Held(held, 0);
                }
                FirstRead::Held(held, taken) => {
                    let rest = held.get(*taken..).unwrap_or_default();
                    let n = rest.len().min(buf.remaining());
                    buf.put_slice(&rest[..n]);
                    *taken += n;
                    if *taken >= held.len() {
                        *self = FirstRead::Done;
                    }
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s, _) => Pin::new(s).poll_write(cx, data),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s, _) => Pin::new(s).poll_write_vectored(cx, bufs),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            ClientStream::Plain(s, _) => s.is_write_vectored(),
            ClientStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s, _) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
