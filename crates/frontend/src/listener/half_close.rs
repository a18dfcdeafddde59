//! The half-close: a client that shuts its sending side after a complete HTTP/1 request
//! (`shutdown(SHUT_WR)`, `nc -N`, socat, some proxies) is answered, and one that closed fully is
//! still seen to leave.
//!
//! At the read side both are the same end of input. hyper (with `half_close(false)`) takes it
//! for a client gone and drops the request it is answering. So [`HalfClose`] keeps the end of
//! input from hyper while a request is waiting for its answer or an answer is being written, and
//! tells the two apart with the one thing that differs: a client that closed fully answers data
//! with RST. If a request is waiting for its answer and no byte of it has been written, the
//! probe is an interim `HTTP/1.1 100 Continue` (which every HTTP/1.1 client must accept before
//! the final answer); if an answer is being written, its own bytes are the probe. A reset then
//! ends the connection as before (the job is skipped or stopped, counted `client_gone`), and a
//! half-closed client gets its answer, after which the connection closes (the end of input
//! asks hyper for a graceful close).
//!
//! Not kept from hyper: HTTP/2 (a stream ends with its own `END_STREAM`; the end of input is the
//! end of the connection), and a streamed answer or an upgrade session in progress (no byte can
//! be slipped into its body, and a stream may write nothing for a long time: its client has left).

use super::linger::SharedTcp;
use super::stream::ClientStream;
use crate::connections::Activity;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The probe sent to a client whose end of input came while its request awaits the answer.
const PROBE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A client's stream whose end of input is kept from hyper while answers are due (see the
/// module docs).
pub(super) struct HalfClose {
    inner: ClientStream,
    tcp: SharedTcp,
    activity: Arc<Activity>,
    /// Set once the end of input was kept from hyper: resolves when the peer resets.
    reset: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

/// What the end of input means for the connection at the moment it is read.
#[derive(Debug, PartialEq, Eq)]
enum EndOfInput {
    /// Pass it to hyper: the client is gone (HTTP/2, or a streamed answer in progress).
    Gone,
    /// Keep it from hyper and answer what is due; probe first if `probe`.
    HalfClosed { probe: bool },
}

impl HalfClose {
    pub(super) fn new(inner: ClientStream, tcp: SharedTcp, activity: Arc<Activity>) -> HalfClose {
        HalfClose {
            inner,
            tcp,
            activity,
            reset: None,
        }
    }

    /// Send the probe (nothing is written of the waiting request's answer yet). A write cut
    /// short would corrupt the answer that follows: then the connection ends instead.
    fn probe(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match Pin::new(&mut self.inner).poll_write(cx, PROBE) {
            Poll::Ready(Ok(n)) if n == PROBE.len() => {
                // TLS holds the record until flushed; a flush still pending goes out with the
                // answer.
                if let Poll::Ready(Err(e)) = Pin::new(&mut self.inner).poll_flush(cx) {
                    return Err(e);
                }
                Ok(())
            }
            Poll::Ready(Ok(_)) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "half-close probe cut short",
            )),
            Poll::Ready(Err(e)) => Err(e),
            // The send buffer is full: nothing written, and the answer's bytes will be the probe.
            Poll::Pending => Ok(()),
        }
    }
}

/// Decide what an end of input read now means, from what the connection is doing.
fn end_of_input(activity: &Activity) -> EndOfInput {
    if activity.is_http2() {
        return EndOfInput::Gone;
    }
    if activity.awaiting() > 0 {
        // A `1xx` may not be sent to HTTP/1.0, and a blocked socket may still hold the bytes of
        // an earlier answer: no probe then (the answer's own write meets a reset).
        let probe = !activity.is_http10() && !activity.is_write_blocked();
        return EndOfInput::HalfClosed { probe };
    }
    if activity.in_flight() > 0 {
        return EndOfInput::Gone;
    }
    if !activity.had_request() {
        // No request yet, so no answer can be due: the client sent part of its first head (or
        // nothing) and left. hyper ends the connection at once; kept from it, a partial head
        // would wait for the rest until the head deadline.
        return EndOfInput::Gone;
    }
    // Idle (hyper closes it at once), or an answer made at once and not yet written.
    EndOfInput::HalfClosed { probe: false }
}

impl AsyncRead for HalfClose {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.reset.is_none() {
            let before = buf.filled().len();
            let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
            if read.is_err() || buf.filled().len() > before || buf.remaining() == 0 {
                return Poll::Ready(read);
            }
            match end_of_input(&this.activity) {
                EndOfInput::Gone => return Poll::Ready(Ok(())),
                EndOfInput::HalfClosed { probe } => {
                    tracing::trace!(probe, "client half-closed; answering what is due");
                    if probe {
                        if let Err(e) = this.probe(cx) {
                            return Poll::Ready(Err(e));
                        }
                    }
                    this.reset = Some(Box::pin(this.tcp.clone().reset()));
                    this.activity.close_read();
                    // The connection's task asks hyper for a graceful close on its next poll.
                    cx.waker().wake_by_ref();
                }
            }
        }
        match this.reset.as_mut().map(|reset| reset.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            _ => Poll::Pending,
        }
    }
}

impl AsyncWrite for HalfClose {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    /// hyper shuts the connection's writing side after its last answer. After a plain HTTP/1
    /// client's last request with no body (see [`Activity::client_closes`]) that is left to the
    /// connection's close, which sends the FIN at once when nothing is left to read (see
    /// [`SharedTcp::close`]): one `shutdown` less per connection. A TLS connection sends its
    /// `close_notify` here as always; an upgrade session's shutdown always goes through.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if matches!(this.inner, ClientStream::Plain(..)) && this.activity.client_closes() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::{InFlight, Unanswered};

    #[test]
    fn the_end_of_input_is_kept_from_hyper_while_an_answer_is_due_and_passed_on_mid_stream() {
        let activity = Arc::new(Activity::default());
        assert_eq!(
            end_of_input(&activity),
            EndOfInput::Gone,
            "no request yet: nothing is due"
        );
        activity.request();
        assert_eq!(
            end_of_input(&activity),
            EndOfInput::HalfClosed { probe: false },
            "idle, or an answer made at once"
        );
        let in_flight = InFlight::new(&activity);
        let unanswered = Unanswered::new(&activity);
        assert_eq!(
            end_of_input(&activity),
            EndOfInput::HalfClosed { probe: true },
            "a request waits for its answer"
        );
        activity.saw(hyper::Version::HTTP_10);
        assert_eq!(
            end_of_input(&activity),
            EndOfInput::HalfClosed { probe: false },
            "no 1xx for HTTP/1.0"
        );
        activity.saw(hyper::Version::HTTP_11);
        drop(unanswered);
        assert_eq!(
            end_of_input(&activity),
            EndOfInput::Gone,
            "a streamed answer is being sent"
        );
        drop(in_flight);
        activity.saw(hyper::Version::HTTP_2);
        assert_eq!(end_of_input(&activity), EndOfInput::Gone, "HTTP/2");
    }
}
