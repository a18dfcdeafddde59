//! Response bytes not yet taken by their clients: counted per connection and server-wide, capped by
//! two budgets, and handed to hyper in slices so that what it takes measures what the client
//! accepted.
//!
//! hyper's HTTP/2 server takes a body's next frame and then waits for the stream's flow-control
//! window before taking another; but it hands a whole frame to h2, which buffers all of it whatever
//! the window. [`Sent`] therefore serves a large body in slices of [`SLICE`] bytes (`Bytes::slice`,
//! no copy): the bytes hyper has not taken are the bytes the client has not accepted (give or take
//! one slice per stream), counted in the connection's [`Activity`] and in the server's [`Ledger`]
//! from the moment the answer is made until hyper takes them or the answer is dropped. Each byte
//! taken is progress for the send deadline (see [`crate::connections`]).
//!
//! The budgets (`server.max_unsent_bytes_per_connection`, `server.max_unsent_bytes`) are checked
//! twice, and only against a connection that already has unsent bytes, so a client that reads its
//! answers is always served: before routing (a new request is refused `503` at once) and when the
//! answer is made (an answer over a slice that would take the connection or the server past its
//! budget is replaced by `503`). A body of at most [`SLICE`] bytes is neither counted nor wrapped:
//! the `/ping` path costs a length comparison.

use super::connections::Activity;
use bytes::Bytes;
use common::body::{ResponseBody, StreamError};
use common::handler::text_response;
use hyper::body::{Frame, SizeHint};
use hyper::StatusCode;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Bodies larger than this are served in slices of this size and counted; h2's default frame size.
pub(super) const SLICE: usize = 16 * 1024;

/// The server-wide count of unsent response bytes, its budget, and the answers refused for it.
#[derive(Debug)]
pub(super) struct Ledger {
    bytes: AtomicU64,
    refused: AtomicU64,
    max: u64,
    per_connection: u64,
}

impl Ledger {
    /// A ledger with the server's budget and the per-connection one.
    pub(super) fn new(max: u64, per_connection: u64) -> Ledger {
        Ledger {
            bytes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            max,
            per_connection,
        }
    }

    /// Response bytes made and not yet taken, server-wide.
    pub(super) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Requests and answers refused `503` because of a budget.
    pub(super) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// True if `activity`'s connection may not add `more` unsent bytes: it already has some, and
    /// they would take it past its budget or the server past its own. `more = 0` asks whether a
    /// new request may be taken at all.
    fn over(&self, activity: &Activity, more: u64) -> bool {
        let held = activity.unsent();
        held > 0
            && (held.saturating_add(more) > self.per_connection
                || (more == 0 && held >= self.per_connection)
                || self.bytes().saturating_add(more) > self.max)
    }

    /// Before routing: `Some(503)` if the connection is over a budget.
    pub(super) fn refuse_request(
        &self,
        activity: &Activity,
    ) -> Option<hyper::Response<ResponseBody>> {
        if activity.unsent() == 0 || !self.over(activity, 0) {
            return None;
        }
        Some(self.refusal())
    }

    fn refusal(&self) -> hyper::Response<ResponseBody> {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut resp = text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "earlier answers on this connection are still unread",
        );
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        resp
    }

    /// When the answer is made: replace an answer over a slice that would take the connection or
    /// the server past its budget with `503`.
    ///
    /// In place: the common answer, which fits, is not moved.
    pub(super) fn admit(&self, activity: &Activity, resp: &mut hyper::Response<ResponseBody>) {
        if let Some(bytes) = resp.body().as_full() {
            if bytes.len() > SLICE && self.over(activity, bytes.len() as u64) {
                *resp = self.refusal();
            }
        }
    }

    fn hold(&self, activity: &Activity, bytes: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        activity.hold(bytes);
    }

    fn release(&self, activity: &Activity, bytes: u64, taken: bool) {
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        activity.release(bytes, taken);
    }
}

/// The body hyper sends: a [`ResponseBody`], served in counted slices when it is larger than
/// [`SLICE`] or streamed.
pub struct Sent {
    body: ResponseBody,
    /// `None` for a small whole body: passed through as it is.
    track: Option<Box<Track>>,
}

/// The counted part of a large or streamed body.
struct Track {
    /// Bytes taken from `body` (all of a whole body at once) and not yet handed to hyper.
    rest: Bytes,
    activity: Arc<Activity>,
    ledger: Arc<Ledger>,
}

impl Sent {
    /// Wrap `body`, made for the connection of `activity`: a small whole body as it is, anything
    /// else counted.
    pub(super) fn new(
        mut body: ResponseBody,
        activity: &Arc<Activity>,
        ledger: &Arc<Ledger>,
    ) -> Sent {
        let rest = match &mut body {
            ResponseBody::Full(bytes) if bytes.len() <= SLICE => return Sent { body, track: None },
            ResponseBody::Full(bytes) => std::mem::take(bytes),
            _ => Bytes::new(),
        };
        ledger.hold(activity, rest.len() as u64);
        Sent {
            body,
            track: Some(Box::new(Track {
                rest,
                activity: activity.clone(),
                ledger: ledger.clone(),
            })),
        }
    }
}

impl Drop for Track {
    fn drop(&mut self) {
        if !self.rest.is_empty() {
            self.ledger
                .release(&self.activity, self.rest.len() as u64, false);
        }
    }
}

impl Track {
    /// The next slice of `rest` (which is not empty), counted as taken.
    fn slice(&mut self) -> Bytes {
        let piece = self.rest.split_to(self.rest.len().min(SLICE));
        self.ledger
            .release(&self.activity, piece.len() as u64, true);
        piece
    }
}

impl hyper::body::Body for Sent {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        let Some(track) = this.track.as_mut() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        if track.rest.is_empty() {
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            match frame.into_data() {
                Ok(data) if data.len() > SLICE => {
                    track.ledger.hold(&track.activity, data.len() as u64);
                    track.rest = data;
                }
                Ok(data) => {
                    // A small streamed chunk goes as it is, counted as taken (progress).
                    track.activity.took(data.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            }
        }
        Poll::Ready(Some(Ok(Frame::data(track.slice()))))
    }

    fn is_end_stream(&self) -> bool {
        self.track.as_ref().is_none_or(|t| t.rest.is_empty()) && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let Some(track) = &self.track else {
            return inner;
        };
        let rest = track.rest.len() as u64;
        match inner.exact() {
            Some(exact) => SizeHint::with_exact(exact + rest),
            None => {
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + rest);
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    fn poll(body: &mut Sent) -> Option<Bytes> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
            _ => None,
        }
    }

    #[test]
    fn a_large_body_goes_in_counted_slices_and_a_small_one_untouched() {
        let ledger = Arc::new(Ledger::new(1 << 20, 1 << 20));
        let activity = Arc::new(Activity::default());
        let mut small = Sent::new(ResponseBody::from("pong\n"), &activity, &ledger);
        assert!(small.track.is_none());
        assert_eq!(ledger.bytes(), 0);
        assert_eq!(poll(&mut small).as_deref(), Some(&b"pong\n"[..]));

        let len = 2 * SLICE + 10;
        let mut big = Sent::new(ResponseBody::from(vec![7u8; len]), &activity, &ledger);
        assert_eq!(big.size_hint().exact(), Some(len as u64));
        assert_eq!(
            (ledger.bytes(), activity.unsent()),
            (len as u64, len as u64)
        );
        assert_eq!(poll(&mut big).map(|b| b.len()), Some(SLICE));
        assert_eq!(ledger.bytes(), (SLICE + 10) as u64);
        assert!(!big.is_end_stream());
        drop(big);
        assert_eq!(
            (ledger.bytes(), activity.unsent()),
            (0, 0),
            "released on drop"
        );
    }

    #[test]
    fn over_a_budget_only_a_connection_that_holds_unsent_bytes_is_refused() {
        let ledger = Arc::new(Ledger::new(3 * SLICE as u64 + 1, 2 * SLICE as u64));
        let (holder, fresh) = (Arc::new(Activity::default()), Arc::new(Activity::default()));
        let big = || hyper::Response::new(ResponseBody::from(vec![0u8; 2 * SLICE]));
        let admit = |activity: &Activity| {
            let mut resp = big();
            ledger.admit(activity, &mut resp);
            resp
        };
        // One answer of any size always fits a connection that holds nothing.
        let held = Sent::new(admit(&holder).into_body(), &holder, &ledger);
        assert!(ledger.refuse_request(&holder).is_some(), "at its budget");
        assert!(ledger.refuse_request(&fresh).is_none());
        assert_eq!(admit(&holder).status(), StatusCode::SERVICE_UNAVAILABLE);
        // Over the server's budget, a connection that holds nothing is still served.
        let other = Sent::new(admit(&fresh).into_body(), &fresh, &ledger);
        assert!(ledger.bytes() > ledger.max);
        assert_eq!(admit(&fresh).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ledger.refused(), 3);
        drop((held, other));
        assert!(ledger.refuse_request(&holder).is_none());
        assert_eq!(admit(&holder).status(), StatusCode::OK);
    }
}
